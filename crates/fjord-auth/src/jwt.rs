//! JWT bearer tokens: HS256 (a shared secret), RS256 and ES256 (public
//! keys from a PEM file or a JWKS file). Issuer, audience, expiry and
//! not-before are checked; the claims name the tenant (`tenant` by
//! default), the user (`sub`) and the roles (`roles`: an array, or a
//! space-separated string). `none` and every other algorithm are refused,
//! and a key is only ever used with its own algorithm family, so a public
//! key can never be abused as an HMAC secret.

use std::path::{Path, PathBuf};

use fjord_core::TenantName;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::identity::{Method, Principal};

/// Token settings (`[auth.tokens]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenSettings {
    /// File holding the HS256 secret (its bytes, surrounding whitespace
    /// trimmed; at least 32 bytes). Also what development tokens are
    /// signed with.
    pub hs256_secret_file: PathBuf,
    /// PEM file of RSA and EC public keys (RS256, ES256).
    pub public_keys_file: PathBuf,
    /// JWKS file (RFC 7517) of RSA and EC public keys.
    pub jwks_file: PathBuf,
    /// Required `iss` when not empty.
    pub issuer: String,
    /// Required `aud` when not empty.
    pub audience: String,
    /// The claim naming the tenant.
    pub tenant_claim: String,
    /// The claim listing the roles.
    pub roles_claim: String,
    /// Clock skew allowed on `exp` and `nbf`, seconds.
    pub leeway_s: u64,
}

impl Default for TokenSettings {
    fn default() -> Self {
        Self {
            hs256_secret_file: PathBuf::new(),
            public_keys_file: PathBuf::new(),
            jwks_file: PathBuf::new(),
            issuer: String::new(),
            audience: String::new(),
            tenant_claim: "tenant".into(),
            roles_claim: "roles".into(),
            leeway_s: 30,
        }
    }
}

impl TokenSettings {
    pub fn enabled(&self) -> bool {
        [
            &self.hs256_secret_file,
            &self.public_keys_file,
            &self.jwks_file,
        ]
        .iter()
        .any(|p| !p.as_os_str().is_empty())
    }
}

#[derive(Debug, Error)]
pub enum TokenError {
    #[error("reading {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {what}")]
    Key { path: PathBuf, what: String },
    #[error("token refused: {0}")]
    Invalid(String),
    #[error("tokens are not configured on this node ([auth.tokens])")]
    NotConfigured,
    #[error("issuing tokens needs an HS256 secret (auth.tokens.hs256_secret_file)")]
    NoSecret,
}

/// One verification key: its algorithm and, from a JWKS, its key id.
struct Key {
    alg: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
}

/// Checks tokens against the configured keys.
pub struct TokenVerifier {
    settings: TokenSettings,
    keys: Vec<Key>,
    secret: Option<Vec<u8>>,
}

/// Shortest HS256 secret accepted: the hash's output size (RFC 7518 §3.2).
const SECRET_MIN_BYTES: usize = 32;

fn read(path: &Path) -> Result<Vec<u8>, TokenError> {
    std::fs::read(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn key_error(path: &Path, what: impl Into<String>) -> TokenError {
    TokenError::Key {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// The PEM blocks of a file, each with its armour.
fn pem_blocks(text: &str) -> Vec<String> {
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN ") {
        let Some(end_marker) = rest[start..].find("-----END ") else {
            break;
        };
        let tail = &rest[start + end_marker..];
        let end = tail[9..].find("-----").map_or(tail.len(), |i| 9 + i + 5);
        blocks.push(rest[start..start + end_marker + end].to_string());
        rest = &rest[start + end_marker + end..];
    }
    blocks
}

impl TokenVerifier {
    /// Loads the configured keys; `None` when tokens are not configured.
    pub fn load(settings: &TokenSettings) -> Result<Option<Self>, TokenError> {
        if !settings.enabled() {
            return Ok(None);
        }
        let mut keys = Vec::new();
        let mut secret = None;
        if !settings.hs256_secret_file.as_os_str().is_empty() {
            let path = &settings.hs256_secret_file;
            let raw = read(path)?;
            let s = raw.trim_ascii().to_vec();
            if s.len() < SECRET_MIN_BYTES {
                return Err(key_error(
                    path,
                    format!("an HS256 secret has at least {SECRET_MIN_BYTES} bytes"),
                ));
            }
            keys.push(Key {
                alg: Algorithm::HS256,
                kid: None,
                key: DecodingKey::from_secret(&s),
            });
            secret = Some(s);
        }
        if !settings.public_keys_file.as_os_str().is_empty() {
            let path = &settings.public_keys_file;
            let text = String::from_utf8(read(path)?)
                .map_err(|_| key_error(path, "not a PEM text file"))?;
            let blocks = pem_blocks(&text);
            if blocks.is_empty() {
                return Err(key_error(path, "holds no PEM public key"));
            }
            for b in blocks {
                let bytes = b.as_bytes();
                let key = if let Ok(k) = DecodingKey::from_rsa_pem(bytes) {
                    Key {
                        alg: Algorithm::RS256,
                        kid: None,
                        key: k,
                    }
                } else if let Ok(k) = DecodingKey::from_ec_pem(bytes) {
                    Key {
                        alg: Algorithm::ES256,
                        kid: None,
                        key: k,
                    }
                } else {
                    return Err(key_error(
                        path,
                        "a block is neither an RSA nor an EC (P-256) public key",
                    ));
                };
                keys.push(key);
            }
        }
        if !settings.jwks_file.as_os_str().is_empty() {
            let path = &settings.jwks_file;
            let set: jsonwebtoken::jwk::JwkSet = serde_json::from_slice(&read(path)?)
                .map_err(|e| key_error(path, format!("not a JWKS document: {e}")))?;
            for jwk in &set.keys {
                use jsonwebtoken::jwk::AlgorithmParameters as P;
                let alg = match &jwk.algorithm {
                    P::RSA(_) => Algorithm::RS256,
                    P::EllipticCurve(_) => Algorithm::ES256,
                    _ => continue,
                };
                let key = DecodingKey::from_jwk(jwk)
                    .map_err(|e| key_error(path, format!("unusable key: {e}")))?;
                keys.push(Key {
                    alg,
                    kid: jwk.common.key_id.clone(),
                    key,
                });
            }
        }
        if keys.is_empty() {
            return Err(TokenError::NotConfigured);
        }
        Ok(Some(Self {
            settings: settings.clone(),
            keys,
            secret,
        }))
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        v.leeway = self.settings.leeway_s;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp", "sub"]);
        if self.settings.issuer.is_empty() {
            v.iss = None;
        } else {
            v.set_issuer(&[&self.settings.issuer]);
        }
        if self.settings.audience.is_empty() {
            v.validate_aud = false;
        } else {
            v.set_audience(&[&self.settings.audience]);
        }
        v
    }

    /// The principal a token names, once its signature and claims check.
    pub fn verify(&self, token: &str) -> Result<Principal, TokenError> {
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| TokenError::Invalid(format!("not a JWT: {e}")))?;
        if !matches!(
            header.alg,
            Algorithm::HS256 | Algorithm::RS256 | Algorithm::ES256
        ) {
            return Err(TokenError::Invalid(format!(
                "algorithm {:?} is not accepted (HS256, RS256, ES256 are)",
                header.alg
            )));
        }
        let candidates = self.keys.iter().filter(|k| {
            k.alg == header.alg
                && match (&header.kid, &k.kid) {
                    (Some(want), Some(have)) => want == have,
                    _ => true,
                }
        });
        let validation = self.validation(header.alg);
        let mut last = TokenError::Invalid(format!("no {:?} key to check it with", header.alg));
        for k in candidates {
            match jsonwebtoken::decode::<serde_json::Map<String, serde_json::Value>>(
                token,
                &k.key,
                &validation,
            ) {
                Ok(data) => return self.principal(&data.claims),
                Err(e) => {
                    use jsonwebtoken::errors::ErrorKind as K;
                    let signature = matches!(e.kind(), K::InvalidSignature);
                    last = TokenError::Invalid(e.to_string());
                    if !signature {
                        // Claims are wrong whatever the key: stop here.
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }

    fn principal(
        &self,
        claims: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<Principal, TokenError> {
        let user = claims
            .get("sub")
            .and_then(|v| v.as_str())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| TokenError::Invalid("the `sub` claim names no user".into()))?;
        let tc = &self.settings.tenant_claim;
        let tenant = claims
            .get(tc)
            .and_then(|v| v.as_str())
            .ok_or_else(|| TokenError::Invalid(format!("no `{tc}` claim naming the tenant")))?;
        let tenant = TenantName::new(tenant)
            .map_err(|e| TokenError::Invalid(format!("`{tc}` claim: {e}")))?;
        let roles = match claims.get(&self.settings.roles_claim) {
            None | Some(serde_json::Value::Null) => Vec::new(),
            Some(serde_json::Value::String(s)) => {
                s.split_whitespace().map(str::to_string).collect()
            }
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| TokenError::Invalid("roles must be strings".into()))?,
            Some(_) => return Err(TokenError::Invalid("roles must be strings".into())),
        };
        Ok(Principal {
            tenant,
            user: user.to_string(),
            roles,
            method: Method::Token,
        })
    }

    /// Signs an HS256 token (development and tests; production tokens come
    /// from the identity provider).
    pub fn issue(
        &self,
        tenant: &TenantName,
        user: &str,
        roles: &[String],
        ttl_s: u64,
    ) -> Result<String, TokenError> {
        let secret = self.secret.as_ref().ok_or(TokenError::NoSecret)?;
        let now = fjord_core::time::now_ms() / 1000;
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), user.into());
        claims.insert(self.settings.tenant_claim.clone(), tenant.as_str().into());
        claims.insert(self.settings.roles_claim.clone(), roles.into());
        claims.insert("iat".into(), now.into());
        claims.insert("exp".into(), (now + ttl_s as i64).into());
        if !self.settings.issuer.is_empty() {
            claims.insert("iss".into(), self.settings.issuer.clone().into());
        }
        if !self.settings.audience.is_empty() {
            claims.insert("aud".into(), self.settings.audience.clone().into());
        }
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .map_err(|e| TokenError::Invalid(e.to_string()))
    }
}

/// Whether `s` looks like a compact JWT (three base64url parts), so a
/// password field holding a token is checked as one.
pub fn looks_like_jwt(s: &str) -> bool {
    let parts: Vec<&str> = s.split('.').collect();
    parts.len() == 3
        && parts[0].starts_with("eyJ")
        && parts.iter().all(|p| {
            !p.is_empty()
                && p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef-test";

    fn hs_verifier(dir: &Path) -> TokenVerifier {
        std::fs::write(dir.join("secret"), SECRET).unwrap();
        TokenVerifier::load(&TokenSettings {
            hs256_secret_file: dir.join("secret"),
            issuer: "fjord-test".into(),
            audience: "fjord".into(),
            ..Default::default()
        })
        .unwrap()
        .unwrap()
    }

    fn sign(claims: serde_json::Value, alg: Algorithm, key: &EncodingKey) -> String {
        jsonwebtoken::encode(&Header::new(alg), &claims, key).unwrap()
    }

    fn now() -> i64 {
        fjord_core::time::now_ms() / 1000
    }

    #[test]
    fn issued_tokens_verify_with_tenant_and_roles() {
        let dir = tempfile::tempdir().unwrap();
        let v = hs_verifier(dir.path());
        let t = v
            .issue(
                &TenantName::new("acme").unwrap(),
                "sensor-1",
                &["devices".into()],
                60,
            )
            .unwrap();
        assert!(looks_like_jwt(&t));
        let p = v.verify(&t).unwrap();
        assert_eq!(p.tenant.as_str(), "acme");
        assert_eq!(p.user, "sensor-1");
        assert_eq!(p.roles, vec!["devices".to_string()]);
        assert_eq!(p.method, Method::Token);
    }

    #[test]
    fn expired_wrong_issuer_wrong_audience_and_wrong_key_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let v = hs_verifier(dir.path());
        let key = EncodingKey::from_secret(SECRET.as_bytes());
        let base = serde_json::json!({
            "sub": "u", "tenant": "acme", "iss": "fjord-test", "aud": "fjord",
            "exp": now() + 60,
        });
        let with = |k: &str, val: serde_json::Value| {
            let mut c = base.clone();
            c[k] = val;
            c
        };
        assert!(v
            .verify(&sign(base.clone(), Algorithm::HS256, &key))
            .is_ok());
        for bad in [
            with("exp", (now() - 3600).into()),
            with("iss", "someone-else".into()),
            with("aud", "other".into()),
            with("nbf", (now() + 3600).into()),
            with("tenant", "Not Valid".into()),
        ] {
            let t = sign(bad.clone(), Algorithm::HS256, &key);
            assert!(v.verify(&t).is_err(), "accepted {bad}");
        }
        let other = EncodingKey::from_secret(b"another secret of enough length!!!!");
        assert!(v
            .verify(&sign(base.clone(), Algorithm::HS256, &other))
            .is_err());
        // Unsigned and HS384 tokens are refused outright.
        let unsigned = format!(
            "eyJhbGciOiJub25lIn0.{}.",
            base64_url(&serde_json::to_vec(&base).unwrap())
        );
        assert!(v.verify(&unsigned).is_err());
        assert!(v.verify(&sign(base, Algorithm::HS384, &key)).is_err());
    }

    fn base64_url(b: &[u8]) -> String {
        const T: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let mut s = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16
                | (*c.get(1).unwrap_or(&0) as u32) << 8
                | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..=c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        s
    }

    #[test]
    fn es256_public_keys_from_pem() {
        let dir = tempfile::tempdir().unwrap();
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        std::fs::write(dir.path().join("keys.pem"), kp.public_key_pem()).unwrap();
        let v = TokenVerifier::load(&TokenSettings {
            public_keys_file: dir.path().join("keys.pem"),
            ..Default::default()
        })
        .unwrap()
        .unwrap();
        let enc = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        let claims =
            serde_json::json!({"sub": "d1", "tenant": "acme", "roles": "a b", "exp": now() + 60});
        let p = v
            .verify(&sign(claims.clone(), Algorithm::ES256, &enc))
            .unwrap();
        assert_eq!(p.roles, vec!["a".to_string(), "b".to_string()]);
        // Another key pair's signature is refused.
        let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let enc = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
        assert!(v.verify(&sign(claims, Algorithm::ES256, &enc)).is_err());
    }

    #[test]
    fn short_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("s"), "short").unwrap();
        assert!(TokenVerifier::load(&TokenSettings {
            hs256_secret_file: dir.path().join("s"),
            ..Default::default()
        })
        .is_err());
    }
}
