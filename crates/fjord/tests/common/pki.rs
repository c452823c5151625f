//! A throw-away PKI for TLS tests, generated at test time (nothing is
//! committed): a CA, a server certificate for localhost/127.0.0.1 and
//! client certificates, written as PEM files.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

pub struct Ca {
    pub cert: rcgen::Certificate,
    key: KeyPair,
    pub pem_file: PathBuf,
}

/// A certificate and key on disk.
pub struct Issued {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        p.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = p.self_signed(&key).unwrap();
        let pem_file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&pem_file, cert.pem()).unwrap();
        Ca {
            cert,
            key,
            pem_file,
        }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// A server certificate for `localhost` and 127.0.0.1, written to
    /// `<stem>.pem` / `<stem>.key`.
    pub fn server(&self, dir: &Path, stem: &str) -> Issued {
        let mut p = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        p.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        p.distinguished_name.push(DnType::CommonName, "localhost");
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        self.issue(dir, stem, p)
    }

    /// A client certificate whose common name is `cn`.
    pub fn client(&self, dir: &Path, stem: &str, cn: &str) -> Issued {
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(dir, stem, p)
    }

    fn issue(&self, dir: &Path, stem: &str, p: CertificateParams) -> Issued {
        let key = KeyPair::generate().unwrap();
        let cert = p.signed_by(&key, &self.cert, &self.key).unwrap();
        let (cert_pem, key_pem) = (cert.pem(), key.serialize_pem());
        let cert_file = dir.join(format!("{stem}.pem"));
        let key_file = dir.join(format!("{stem}.key"));
        // Key first: a reloading node that sees the new certificate must
        // find its key already there.
        std::fs::write(&key_file, &key_pem).unwrap();
        std::fs::write(&cert_file, &cert_pem).unwrap();
        Issued {
            cert_file,
            key_file,
            cert_pem,
            key_pem,
        }
    }
}

/// Environment for a node serving TLS with `server` and trusting client
/// certificates of `client_ca`, with every TLS listener on a free port.
pub struct TlsPorts {
    pub mqtts: String,
    pub mqtt_wss: String,
    pub kafka_tls: String,
    pub https: String,
}

impl TlsPorts {
    pub fn pick() -> TlsPorts {
        let p = || format!("127.0.0.1:{}", super::free_port());
        TlsPorts {
            mqtts: p(),
            mqtt_wss: p(),
            kafka_tls: p(),
            https: p(),
        }
    }

    pub fn env(&self, server: &Issued, client_ca: &Ca) -> Vec<(String, String)> {
        let s = |v: &Path| v.display().to_string();
        [
            ("FJORD_TLS__CERT_FILE", s(&server.cert_file)),
            ("FJORD_TLS__KEY_FILE", s(&server.key_file)),
            ("FJORD_TLS__CLIENT_CA_FILE", s(&client_ca.pem_file)),
            ("FJORD_MQTT__TLS_ADDR", self.mqtts.clone()),
            ("FJORD_MQTT__WSS_ADDR", self.mqtt_wss.clone()),
            ("FJORD_KAFKA__TLS_ADDR", self.kafka_tls.clone()),
            ("FJORD_HTTP__TLS_ADDR", self.https.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }
}
