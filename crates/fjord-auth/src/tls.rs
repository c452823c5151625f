//! TLS for every listener: the node's certificate and key (and, for mutual
//! TLS, the client CA bundle) loaded from PEM files and reloaded when the
//! files change, so a renewed certificate takes effect without a restart.
//!
//! Only TLS 1.3 and 1.2 with rustls' default suites (ECDHE key exchange,
//! AEAD ciphers) are offered. A listener asks for the client-certificate
//! mode it wants ([`ClientAuth`]); a verified client certificate's subject
//! (CN or a SAN, [`IdentityFrom`]) becomes the connection's identity.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use parking_lot::Mutex;
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncWrite};

/// Whether a listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// No client certificates: identity comes from passwords or tokens.
    #[default]
    None,
    /// A client may present a certificate signed by the client CA; one that
    /// does is identified by it, one that does not logs in otherwise.
    Optional,
    /// Every client must present a certificate signed by the client CA.
    Required,
}

/// Which part of a client certificate names the identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IdentityFrom {
    /// The subject's common name.
    #[default]
    Cn,
    /// The first subject alternative name that is a DNS name, e-mail
    /// address or URI.
    San,
}

/// Where the node's TLS material lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// PEM certificate chain, leaf first. Empty: TLS listeners stay off.
    pub cert_file: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
    /// PEM bundle of CAs whose client certificates are accepted (mTLS).
    pub client_ca_file: PathBuf,
    /// Which part of a client certificate is the identity.
    pub identity: IdentityFrom,
    /// How often the files are checked for changes, milliseconds.
    pub reload_interval_ms: u64,
}

impl Default for TlsSettings {
    fn default() -> Self {
        Self {
            cert_file: PathBuf::new(),
            key_file: PathBuf::new(),
            client_ca_file: PathBuf::new(),
            identity: IdentityFrom::Cn,
            reload_interval_ms: 10_000,
        }
    }
}

impl TlsSettings {
    /// Whether a certificate is configured at all.
    pub fn enabled(&self) -> bool {
        !self.cert_file.as_os_str().is_empty()
    }
}

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Pem { path: PathBuf, what: String },
    #[error("the TLS configuration is unusable: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificates are asked for but tls.client_ca_file is not set")]
    NoClientCa,
    #[error("client CA bundle: {0}")]
    ClientCa(String),
    #[error("TLS handshake: {0}")]
    Handshake(std::io::Error),
    #[error("no TLS handshake within {0:?}")]
    HandshakeTimeout(Duration),
}

/// What changed-file detection compares: modification time and length of
/// each file.
type Stamp = Vec<Option<(SystemTime, u64)>>;

struct Loaded {
    /// When these files were read (ms since the epoch).
    loaded_ms: i64,
    stamp: Stamp,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    client_roots: Option<Arc<RootCertStore>>,
    /// Server configurations built so far, by client mode and ALPN list.
    built: HashMap<(ClientAuth, Vec<Vec<u8>>), Arc<ServerConfig>>,
}

/// The node's TLS material, shared by every TLS listener.
pub struct TlsContext {
    settings: TlsSettings,
    loaded: Mutex<Loaded>,
    /// Why the last reload was refused, if it was.
    last_error: Mutex<Option<String>>,
}

/// What the admin API shows of the TLS material (never the key).
#[derive(Debug, Clone, Serialize)]
pub struct TlsStatus {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: PathBuf,
    pub identity: IdentityFrom,
    pub loaded_ms: i64,
    pub subject: String,
    pub dns_names: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    pub chain_len: usize,
    pub client_cas: usize,
    pub last_reload_error: Option<String>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn stamp_of(paths: &[&Path]) -> Stamp {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn certs_from(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_path_buf(),
            what: format!("not a PEM certificate list: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Pem {
            path: path.to_path_buf(),
            what: "holds no certificate".into(),
        });
    }
    Ok(certs)
}

impl TlsContext {
    /// Loads the files once; an error here stops the node from starting.
    pub fn load(settings: TlsSettings) -> Result<Arc<Self>, TlsError> {
        let loaded = Self::read_files(&settings)?;
        Ok(Arc::new(Self {
            settings,
            loaded: Mutex::new(loaded),
            last_error: Mutex::new(None),
        }))
    }

    pub fn settings(&self) -> &TlsSettings {
        &self.settings
    }

    fn paths(settings: &TlsSettings) -> Vec<&Path> {
        let mut p = vec![settings.cert_file.as_path(), settings.key_file.as_path()];
        if !settings.client_ca_file.as_os_str().is_empty() {
            p.push(settings.client_ca_file.as_path());
        }
        p
    }

    fn read_files(settings: &TlsSettings) -> Result<Loaded, TlsError> {
        let stamp = stamp_of(&Self::paths(settings));
        let chain = certs_from(&settings.cert_file)?;
        let key_pem = read(&settings.key_file)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::Pem {
            path: settings.key_file.clone(),
            what: format!("no usable private key: {e}"),
        })?;
        let client_roots = if settings.client_ca_file.as_os_str().is_empty() {
            None
        } else {
            let mut roots = RootCertStore::empty();
            for c in certs_from(&settings.client_ca_file)? {
                roots
                    .add(c)
                    .map_err(|e| TlsError::ClientCa(e.to_string()))?;
            }
            Some(Arc::new(roots))
        };
        let loaded = Loaded {
            loaded_ms: fjord_core::time::now_ms(),
            stamp,
            chain,
            key: Arc::new(key),
            client_roots,
            built: HashMap::new(),
        };
        // Build one configuration now, so a key that does not match the
        // certificate is reported at load, not at the first handshake.
        build(&loaded, ClientAuth::None, &[])?;
        Ok(loaded)
    }

    /// Re-reads the files if any changed since the last load. A broken new
    /// set is reported and the previous one stays in use.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp_of(&Self::paths(&self.settings));
        if now == self.loaded.lock().stamp {
            return Ok(false);
        }
        self.reload().map(|()| true)
    }

    /// Re-reads the files now (the admin API's reload); a broken set is
    /// refused and the previous one stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        match Self::read_files(&self.settings) {
            Ok(fresh) => {
                *self.loaded.lock() = fresh;
                *self.last_error.lock() = None;
                Ok(())
            }
            Err(e) => {
                *self.last_error.lock() = Some(e.to_string());
                Err(e)
            }
        }
    }

    /// The certificate in use and where it came from.
    pub fn status(&self) -> TlsStatus {
        let l = self.loaded.lock();
        let leaf = l
            .chain
            .first()
            .and_then(|c| x509_parser::parse_x509_certificate(c.as_ref()).ok())
            .map(|(_, c)| c);
        let dns_names = leaf
            .as_ref()
            .and_then(|c| c.subject_alternative_name().ok().flatten())
            .map(|san| {
                san.value
                    .general_names
                    .iter()
                    .map(|n| n.to_string())
                    .collect()
            })
            .unwrap_or_default();
        TlsStatus {
            cert_file: self.settings.cert_file.clone(),
            key_file: self.settings.key_file.clone(),
            client_ca_file: self.settings.client_ca_file.clone(),
            identity: self.settings.identity,
            loaded_ms: l.loaded_ms,
            subject: leaf
                .as_ref()
                .map(|c| c.subject().to_string())
                .unwrap_or_default(),
            dns_names,
            not_before: leaf
                .as_ref()
                .map(|c| c.validity().not_before.to_string())
                .unwrap_or_default(),
            not_after: leaf
                .as_ref()
                .map(|c| c.validity().not_after.to_string())
                .unwrap_or_default(),
            chain_len: l.chain.len(),
            client_cas: l.client_roots.as_ref().map_or(0, |r| r.len()),
            last_reload_error: self.last_error.lock().clone(),
        }
    }

    /// Checks the files every `reload_interval_ms` until the context is
    /// dropped.
    pub fn spawn_reloader(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        let every = Duration::from_millis(self.settings.reload_interval_ms.max(100));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tick.tick().await;
                let Some(ctx) = weak.upgrade() else { return };
                match ctx.reload_if_changed() {
                    Ok(true) => tracing::info!(
                        cert = %ctx.settings.cert_file.display(),
                        "TLS certificate files changed; new connections use them"
                    ),
                    Ok(false) => {}
                    Err(e) => tracing::error!(
                        error = %e,
                        "TLS certificate files changed but cannot be used; keeping the previous ones"
                    ),
                }
            }
        })
    }

    /// The server configuration for a listener.
    pub fn server_config(
        &self,
        mode: ClientAuth,
        alpn: &[&[u8]],
    ) -> Result<Arc<ServerConfig>, TlsError> {
        let alpn: Vec<Vec<u8>> = alpn.iter().map(|a| a.to_vec()).collect();
        let mut loaded = self.loaded.lock();
        if let Some(c) = loaded.built.get(&(mode, alpn.clone())) {
            return Ok(c.clone());
        }
        let c = build(&loaded, mode, &alpn)?;
        loaded.built.insert((mode, alpn), c.clone());
        Ok(c)
    }

    /// Checks that a listener's mode can be served (client CA present).
    pub fn check_mode(&self, mode: ClientAuth) -> Result<(), TlsError> {
        self.server_config(mode, &[]).map(|_| ())
    }

    /// Runs the server side of a handshake on `io` within `timeout`, and
    /// names the client's certificate identity when it presented one.
    pub async fn accept<IO: AsyncRead + AsyncWrite + Unpin>(
        &self,
        io: IO,
        mode: ClientAuth,
        alpn: &[&[u8]],
        timeout: Duration,
    ) -> Result<(tokio_rustls::server::TlsStream<IO>, Option<String>), TlsError> {
        let config = self.server_config(mode, alpn)?;
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let stream = tokio::time::timeout(timeout, acceptor.accept(io))
            .await
            .map_err(|_| TlsError::HandshakeTimeout(timeout))?
            .map_err(TlsError::Handshake)?;
        let identity = stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|leaf| identity_of(leaf.as_ref(), self.settings.identity));
        Ok((stream, identity))
    }
}

fn build(
    loaded: &Loaded,
    mode: ClientAuth,
    alpn: &[Vec<u8>],
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match mode {
        ClientAuth::None => builder.with_no_client_auth(),
        ClientAuth::Optional | ClientAuth::Required => {
            let roots = loaded.client_roots.clone().ok_or(TlsError::NoClientCa)?;
            let v = WebPkiClientVerifier::builder_with_provider(roots, provider());
            let v = if mode == ClientAuth::Optional {
                v.allow_unauthenticated()
            } else {
                v
            };
            builder.with_client_cert_verifier(
                v.build().map_err(|e| TlsError::ClientCa(e.to_string()))?,
            )
        }
    };
    let mut config = builder.with_single_cert(loaded.chain.clone(), loaded.key.clone_key())?;
    config.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(config))
}

/// The identity a client certificate names (see [`IdentityFrom`]).
pub fn identity_of(der: &[u8], from: IdentityFrom) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    match from {
        IdentityFrom::Cn => cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_string),
        IdentityFrom::San => cert
            .subject_alternative_name()
            .ok()
            .flatten()?
            .value
            .general_names
            .iter()
            .find_map(|n| match n {
                GeneralName::DNSName(s) | GeneralName::RFC822Name(s) | GeneralName::URI(s) => {
                    Some(s.to_string())
                }
                _ => None,
            }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write_pair(dir: &Path, name: &str) -> TlsSettings {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        TlsSettings {
            cert_file: dir.join("cert.pem"),
            key_file: dir.join("key.pem"),
            ..Default::default()
        }
    }

    #[test]
    fn loads_and_reloads_only_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let s = write_pair(dir.path(), "localhost");
        let ctx = TlsContext::load(s).unwrap();
        assert!(!ctx.reload_if_changed().unwrap());
        let first = ctx.server_config(ClientAuth::None, &[]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        write_pair(dir.path(), "other");
        assert!(ctx.reload_if_changed().unwrap());
        let second = ctx.server_config(ClientAuth::None, &[]).unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
    }

    #[test]
    fn broken_files_keep_the_previous_config() {
        let dir = tempfile::tempdir().unwrap();
        let s = write_pair(dir.path(), "localhost");
        let ctx = TlsContext::load(s).unwrap();
        let before = ctx.server_config(ClientAuth::None, &[]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), "not a certificate").unwrap();
        assert!(ctx.reload_if_changed().is_err());
        let after = ctx.server_config(ClientAuth::None, &[]).unwrap();
        assert!(Arc::ptr_eq(&before, &after));
    }

    #[test]
    fn mismatched_key_is_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let s = write_pair(dir.path(), "localhost");
        let other = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&s.key_file, other.serialize_pem()).unwrap();
        assert!(TlsContext::load(s).is_err());
    }

    #[test]
    fn client_modes_need_a_ca() {
        let dir = tempfile::tempdir().unwrap();
        let ctx = TlsContext::load(write_pair(dir.path(), "localhost")).unwrap();
        assert!(matches!(
            ctx.check_mode(ClientAuth::Required),
            Err(TlsError::NoClientCa)
        ));
    }

    #[test]
    fn identity_from_cn_or_san() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["device-7.example".to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "acme:sensor-1");
        let cert = p.self_signed(&key).unwrap();
        assert_eq!(
            identity_of(cert.der(), IdentityFrom::Cn).as_deref(),
            Some("acme:sensor-1")
        );
        assert_eq!(
            identity_of(cert.der(), IdentityFrom::San).as_deref(),
            Some("device-7.example")
        );
    }
}
