//! SCRAM-SHA-256 and SCRAM-SHA-512 (RFC 5802, RFC 7677), server side: the
//! verifiers kept instead of passwords, and the two-round exchange that
//! Kafka SASL and MQTT 5 enhanced authentication carry. Pure: no I/O, no
//! store; the caller looks the user up between the rounds.
//!
//! Channel binding is not offered (`n` or `y` GS2 flags only), and SCRAM
//! extensions (Kafka's `tokenauth`) are refused.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256, Sha512};
use thiserror::Error;

/// Iterations for new verifiers (RFC 7677's minimum, Kafka's default).
pub const DEFAULT_ITERATIONS: u32 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mechanism {
    Sha256,
    Sha512,
}

impl Mechanism {
    pub fn name(self) -> &'static str {
        match self {
            Mechanism::Sha256 => "SCRAM-SHA-256",
            Mechanism::Sha512 => "SCRAM-SHA-512",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "SCRAM-SHA-256" => Some(Mechanism::Sha256),
            "SCRAM-SHA-512" => Some(Mechanism::Sha512),
            _ => None,
        }
    }

    pub const ALL: [Mechanism; 2] = [Mechanism::Sha256, Mechanism::Sha512];

    fn hmac(self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha256 => {
                let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Mechanism::Sha512 => {
                let mut m = Hmac::<Sha512>::new_from_slice(key).expect("any key length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    fn hash(self, data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::Sha256 => Sha256::digest(data).to_vec(),
            Mechanism::Sha512 => Sha512::digest(data).to_vec(),
        }
    }

    fn salted_password(self, password: &str, salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Mechanism::Sha256 => {
                let mut out = [0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut out);
                out.to_vec()
            }
            Mechanism::Sha512 => {
                let mut out = [0u8; 64];
                pbkdf2::pbkdf2_hmac::<Sha512>(password.as_bytes(), salt, iterations, &mut out);
                out.to_vec()
            }
        }
    }
}

/// What the server keeps per user and mechanism.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl Verifier {
    /// Derives the verifier of `password` with a fresh random salt.
    pub fn derive(mech: Mechanism, password: &str, iterations: u32) -> Self {
        let mut salt = vec![0u8; 16];
        rand::rngs::OsRng.fill_bytes(&mut salt);
        Self::derive_with_salt(mech, password, salt, iterations)
    }

    pub fn derive_with_salt(
        mech: Mechanism,
        password: &str,
        salt: Vec<u8>,
        iterations: u32,
    ) -> Self {
        let salted = mech.salted_password(password, &salt, iterations);
        let client_key = mech.hmac(&salted, b"Client Key");
        Self {
            stored_key: mech.hash(&client_key),
            server_key: mech.hmac(&salted, b"Server Key"),
            salt,
            iterations,
        }
    }

    /// A verifier no proof matches, for unknown users: the exchange runs
    /// the same way, so it does not tell which names exist.
    pub fn decoy(mech: Mechanism, username: &str) -> Self {
        // A salt stable per name, so asking twice does not reveal a decoy.
        let salt = mech.hash(format!("fjord-decoy:{username}").as_bytes())[..16].to_vec();
        let mut random = vec![0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut random);
        Self {
            salt,
            iterations: DEFAULT_ITERATIONS,
            stored_key: mech.hash(&random),
            server_key: random,
        }
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("SCRAM extensions are not supported")]
    Extension,
    #[error("the client's nonce does not match")]
    Nonce,
    #[error("authentication failed: unknown user or wrong password")]
    BadProof,
}

/// The client's first message, parsed.
#[derive(Debug)]
pub struct ClientFirst {
    pub username: String,
    gs2_header: String,
    bare: String,
    client_nonce: String,
}

fn decode_saslname(s: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in the user name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Parses `gs2-header client-first-message-bare`.
pub fn parse_client_first(msg: &[u8]) -> Result<ClientFirst, ScramError> {
    let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
    let mut parts = msg.splitn(3, ',');
    let flag = parts.next().ok_or(ScramError::Malformed("empty"))?;
    let authzid = parts.next().ok_or(ScramError::Malformed("no GS2 header"))?;
    let bare = parts
        .next()
        .ok_or(ScramError::Malformed("no client-first-message-bare"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed("bad GS2 flag")),
    }
    if !authzid.is_empty() && !authzid.starts_with("a=") {
        return Err(ScramError::Malformed("bad authzid"));
    }
    let mut username = None;
    let mut nonce = None;
    for (i, attr) in bare.split(',').enumerate() {
        match (i, attr.split_at_checked(2)) {
            (0, Some(("m=", _))) => return Err(ScramError::Extension),
            (0, Some(("n=", v))) => username = Some(decode_saslname(v)?),
            (1, Some(("r=", v))) if !v.is_empty() => nonce = Some(v.to_string()),
            (0 | 1, _) => return Err(ScramError::Malformed("expected n=user,r=nonce")),
            // Extensions after the nonce (Kafka's tokenauth=true).
            _ => return Err(ScramError::Extension),
        }
    }
    let (Some(username), Some(client_nonce)) = (username, nonce) else {
        return Err(ScramError::Malformed("expected n=user,r=nonce"));
    };
    if client_nonce
        .bytes()
        .any(|b| !(0x21..=0x7e).contains(&b) || b == b',')
    {
        return Err(ScramError::Malformed("bad nonce"));
    }
    Ok(ClientFirst {
        username,
        gs2_header: format!("{flag},{authzid},"),
        bare: bare.to_string(),
        client_nonce,
    })
}

/// The exchange after the server's first message.
#[derive(Debug)]
pub struct Exchange {
    mech: Mechanism,
    verifier: Verifier,
    first: ClientFirst,
    server_first: String,
    nonce: String,
}

impl Exchange {
    /// Answers the client's first message with the user's verifier (a
    /// decoy for an unknown user): returns the server-first message.
    pub fn start(mech: Mechanism, first: ClientFirst, verifier: Verifier) -> (Self, Vec<u8>) {
        let mut r = [0u8; 18];
        rand::rngs::OsRng.fill_bytes(&mut r);
        let nonce = format!("{}{}", first.client_nonce, B64.encode(r));
        let server_first = format!(
            "r={nonce},s={},i={}",
            B64.encode(&verifier.salt),
            verifier.iterations
        );
        let out = server_first.clone().into_bytes();
        (
            Self {
                mech,
                verifier,
                first,
                server_first,
                nonce,
            },
            out,
        )
    }

    pub fn username(&self) -> &str {
        &self.first.username
    }

    /// Checks the client's final message; the server-final message
    /// (`v=ServerSignature`) when the proof is right.
    pub fn finish(self, msg: &[u8]) -> Result<Vec<u8>, ScramError> {
        let msg = std::str::from_utf8(msg).map_err(|_| ScramError::Malformed("not UTF-8"))?;
        let (without_proof, proof) = msg
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or(ScramError::Malformed("no channel binding attribute"))?;
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or(ScramError::Malformed("no nonce"))?;
        if attrs.next().is_some() {
            return Err(ScramError::Extension);
        }
        let cbind = B64
            .decode(cbind)
            .map_err(|_| ScramError::Malformed("channel binding is not base64"))?;
        if cbind != self.first.gs2_header.as_bytes() {
            return Err(ScramError::ChannelBinding);
        }
        if nonce != self.nonce {
            return Err(ScramError::Nonce);
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let auth_message = format!(
            "{},{},{}",
            self.first.bare, self.server_first, without_proof
        );
        let m = self.mech;
        let signature = m.hmac(&self.verifier.stored_key, auth_message.as_bytes());
        if proof.len() != signature.len() {
            return Err(ScramError::BadProof);
        }
        let client_key: Vec<u8> = proof.iter().zip(&signature).map(|(a, b)| a ^ b).collect();
        let computed = m.hash(&client_key);
        // Constant-time comparison: no early exit on the first difference.
        let diff = computed
            .iter()
            .zip(&self.verifier.stored_key)
            .fold(0u8, |d, (a, b)| d | (a ^ b));
        if diff != 0 || computed.len() != self.verifier.stored_key.len() {
            return Err(ScramError::BadProof);
        }
        let server_signature = m.hmac(&self.verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3's example exchange (SCRAM-SHA-256, user "user",
    /// password "pencil").
    #[test]
    fn rfc7677_example() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = Verifier::derive_with_salt(Mechanism::Sha256, "pencil", salt, 4096);
        let first = parse_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(first.username, "user");
        let ex = Exchange {
            mech: Mechanism::Sha256,
            verifier: v,
            server_first: "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            first,
        };
        let fin = ex
            .finish(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        assert_eq!(
            fin,
            b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=".to_vec()
        );
    }

    /// A client computation, for the round trip below.
    fn client_final(
        mech: Mechanism,
        password: &str,
        first_bare: &str,
        server_first: &str,
    ) -> String {
        let mut parts = server_first.split(',');
        let nonce = &parts.next().unwrap()[2..];
        let salt = B64.decode(&parts.next().unwrap()[2..]).unwrap();
        let iterations: u32 = parts.next().unwrap()[2..].parse().unwrap();
        let salted = mech.salted_password(password, &salt, iterations);
        let client_key = mech.hmac(&salted, b"Client Key");
        let stored = mech.hash(&client_key);
        let without = format!("c=biws,r={nonce}");
        let auth = format!("{first_bare},{server_first},{without}");
        let sig = mech.hmac(&stored, auth.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
        format!("{without},p={}", B64.encode(proof))
    }

    #[test]
    fn both_mechanisms_accept_the_right_password_only() {
        for mech in Mechanism::ALL {
            let v = Verifier::derive(mech, "s3cret-pass", DEFAULT_ITERATIONS);
            for (pw, ok) in [("s3cret-pass", true), ("wrong-pass", false)] {
                let first = parse_client_first(b"n,,n=acme:alice,r=abcdef").unwrap();
                assert_eq!(first.username, "acme:alice");
                let (ex, sf) = Exchange::start(mech, first, v.clone());
                let cf = client_final(
                    mech,
                    pw,
                    "n=acme:alice,r=abcdef",
                    std::str::from_utf8(&sf).unwrap(),
                );
                assert_eq!(ex.finish(cf.as_bytes()).is_ok(), ok, "{mech:?} {pw}");
            }
        }
    }

    #[test]
    fn malformed_and_unsupported_first_messages() {
        assert_eq!(
            parse_client_first(b"p=tls-unique,,n=u,r=x").unwrap_err(),
            ScramError::ChannelBinding
        );
        assert_eq!(
            parse_client_first(b"n,,n=u,r=x,tokenauth=true").unwrap_err(),
            ScramError::Extension
        );
        assert!(parse_client_first(b"n,,r=x").is_err());
        assert!(parse_client_first(b"garbage").is_err());
        assert!(parse_client_first(b"n,,n=a=ZZb,r=x").is_err());
        assert_eq!(
            parse_client_first(b"n,,n=a=2Cb=3Dc,r=x").unwrap().username,
            "a,b=c"
        );
    }
}
