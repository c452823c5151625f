//! SASL on the Kafka listener: SaslHandshake (v0: raw tokens follow; v1:
//! SaslAuthenticate requests follow) and the PLAIN mechanism (RFC 4616)
//! against Fjord's users. A successful login moves the connection into the
//! user's tenant; a failed one is answered, then the connection closes, as
//! a Kafka broker does.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{SaslHandshakeRequest, SaslHandshakeResponse};
use kafka_protocol::protocol::StrBytes;

pub const MECHANISMS: &[&str] = &["PLAIN"];

/// Whether clients must authenticate (`kafka.sasl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaslMode {
    /// SASL is offered; a client that does not use it is anonymous, in the
    /// listener's tenant.
    #[default]
    Optional,
    /// Every request but ApiVersions, SaslHandshake and SaslAuthenticate
    /// closes the connection until the client has logged in.
    Required,
}

/// Where a connection is in the exchange.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// No handshake yet.
    Start,
    /// Handshake v0: the next frame is a raw PLAIN token.
    RawToken,
    /// Handshake v1: a SaslAuthenticate request comes next.
    Authenticate,
    Done,
}

pub fn handshake(
    state: &mut State,
    req: &SaslHandshakeRequest,
    version: i16,
) -> SaslHandshakeResponse {
    let mut r = SaslHandshakeResponse::default();
    r.mechanisms = MECHANISMS
        .iter()
        .map(|m| StrBytes::from_static_str(m))
        .collect();
    if *state != State::Start {
        r.error_code = ResponseError::IllegalSaslState.code();
    } else if !MECHANISMS.contains(&&*req.mechanism) {
        r.error_code = ResponseError::UnsupportedSaslMechanism.code();
    } else {
        *state = if version == 0 {
            State::RawToken
        } else {
            State::Authenticate
        };
    }
    r
}

/// The login name and password of a PLAIN token
/// (`[authzid] NUL authcid NUL passwd`); an authorization identity other
/// than the authentication one is refused (no impersonation).
pub fn parse_plain(token: &[u8]) -> Result<(String, String), &'static str> {
    let mut parts = token.split(|&b| b == 0);
    let (Some(authz), Some(authc), Some(pass), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("a PLAIN token has three NUL-separated parts");
    };
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|_| "PLAIN fields are UTF-8");
    let (authz, authc, pass) = (text(authz)?, text(authc)?, text(pass)?);
    if !authz.is_empty() && authz != authc {
        return Err("acting as another identity is not allowed");
    }
    if authc.is_empty() {
        return Err("empty user name");
    }
    Ok((authc, pass))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_tokens() {
        assert_eq!(
            parse_plain(b"\0acme:alice\0secret pw").unwrap(),
            ("acme:alice".to_string(), "secret pw".to_string())
        );
        assert!(parse_plain(b"acme:alice\0acme:alice\0pw").is_ok());
        assert!(parse_plain(b"bob\0acme:alice\0pw").is_err());
        assert!(parse_plain(b"\0alice").is_err());
        assert!(parse_plain(b"\0\0pw").is_err());
        assert!(parse_plain(b"\0a\0b\0c").is_err());
    }

    #[test]
    fn handshake_states() {
        let mut st = State::Start;
        let mut req = SaslHandshakeRequest::default();
        req.mechanism = StrBytes::from_static_str("SCRAM-SHA-256");
        assert_eq!(handshake(&mut st, &req, 1).error_code, 33);
        assert_eq!(st, State::Start);
        req.mechanism = StrBytes::from_static_str("PLAIN");
        assert_eq!(handshake(&mut st, &req, 1).error_code, 0);
        assert_eq!(st, State::Authenticate);
        assert_eq!(handshake(&mut st, &req, 1).error_code, 34);
    }
}
