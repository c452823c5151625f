//! SASL on the Kafka listener: SaslHandshake (v0: raw tokens follow; v1:
//! SaslAuthenticate requests follow) and the mechanisms PLAIN (RFC 4616),
//! SCRAM-SHA-256 / SCRAM-SHA-512 (RFC 5802, 7677) and OAUTHBEARER (RFC 7628,
//! a JWT checked against the node's token keys), all against Fjord's one
//! identity model. A successful login moves the connection into the
//! principal's tenant; a failed one is answered, then the connection
//! closes, as a Kafka broker does.

use fjord_auth::scram::{self, Mechanism as ScramMech};
use fjord_auth::Principal;
use fjord_broker::Broker;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{SaslHandshakeRequest, SaslHandshakeResponse};
use kafka_protocol::protocol::StrBytes;

pub const MECHANISMS: &[&str] = &["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"];

/// Whether clients must authenticate (`kafka.sasl`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SaslMode {
    /// SASL is offered; a client that does not use it is anonymous (where
    /// `public` admits anonymous clients) or identified by its TLS client
    /// certificate.
    #[default]
    Optional,
    /// Every request but ApiVersions, SaslHandshake and SaslAuthenticate
    /// closes the connection until the client has logged in.
    Required,
}

/// The mechanism a handshake chose.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mech {
    Plain,
    Scram(ScramMech),
    OAuthBearer,
}

impl Mech {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "PLAIN" => Some(Mech::Plain),
            "OAUTHBEARER" => Some(Mech::OAuthBearer),
            n => ScramMech::from_name(n).map(Mech::Scram),
        }
    }
}

/// Where a connection is in the exchange.
#[derive(Debug)]
pub enum State {
    /// No handshake yet.
    Start,
    /// Handshake v0: the next frames are raw tokens of this mechanism.
    RawToken(Conversation),
    /// Handshake v1: SaslAuthenticate requests come next.
    Authenticate(Conversation),
    Done,
}

impl State {
    pub fn raw(&self) -> bool {
        matches!(self, State::RawToken(_))
    }

    pub fn conversation(&mut self) -> Option<&mut Conversation> {
        match self {
            State::RawToken(c) | State::Authenticate(c) => Some(c),
            _ => None,
        }
    }
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
    if !matches!(state, State::Start) {
        r.error_code = ResponseError::IllegalSaslState.code();
    } else if let Some(mech) = Mech::from_name(&req.mechanism) {
        let c = Conversation::new(mech);
        *state = if version == 0 {
            State::RawToken(c)
        } else {
            State::Authenticate(c)
        };
    } else {
        r.error_code = ResponseError::UnsupportedSaslMechanism.code();
    }
    r
}

/// One mechanism's rounds.
#[derive(Debug)]
pub struct Conversation {
    mech: Mech,
    /// SCRAM after the server's first message: the exchange and who the
    /// user is (`None`: unknown, the exchange runs against a decoy).
    scram: Option<(scram::Exchange, Option<Principal>)>,
}

/// What a round ends with.
pub enum Step {
    /// Send this challenge; another client message follows.
    Continue(Vec<u8>),
    /// Logged in; send this last server message (may be empty).
    Done(Principal, Vec<u8>),
    Failed(String),
}

impl Conversation {
    fn new(mech: Mech) -> Self {
        Self { mech, scram: None }
    }

    /// Takes the client's next message.
    pub async fn step(&mut self, broker: &std::sync::Arc<Broker>, token: &[u8]) -> Step {
        match self.mech {
            Mech::Plain => {
                let (user, password) = match parse_plain(token) {
                    Ok(x) => x,
                    Err(e) => return Step::Failed(e.to_string()),
                };
                let b = broker.clone();
                match tokio::task::spawn_blocking(move || b.authenticate(&user, &password)).await {
                    Ok(Ok(p)) => Step::Done(p, Vec::new()),
                    Ok(Err(e)) => Step::Failed(e.to_string()),
                    Err(e) => Step::Failed(format!("authentication task: {e}")),
                }
            }
            Mech::OAuthBearer => match parse_oauthbearer(token) {
                Ok(jwt) => match broker.authenticate_token(&jwt) {
                    Ok(p) => Step::Done(p, Vec::new()),
                    Err(e) => Step::Failed(e.to_string()),
                },
                Err(e) => Step::Failed(e.to_string()),
            },
            Mech::Scram(m) => match self.scram.take() {
                None => {
                    let first = match scram::parse_client_first(token) {
                        Ok(f) => f,
                        Err(e) => return Step::Failed(e.to_string()),
                    };
                    let (who, verifier) = match broker.scram_lookup(m, &first.username) {
                        Ok(x) => x,
                        Err(e) => return Step::Failed(e.to_string()),
                    };
                    let (ex, server_first) = scram::Exchange::start(m, first, verifier);
                    self.scram = Some((ex, who));
                    Step::Continue(server_first)
                }
                Some((ex, who)) => match (ex.finish(token), who) {
                    (Ok(server_final), Some(p)) => Step::Done(p, server_final),
                    (Ok(_), None) | (Err(scram::ScramError::BadProof), _) => {
                        Step::Failed("authentication failed: unknown user or wrong password".into())
                    }
                    (Err(e), _) => Step::Failed(e.to_string()),
                },
            },
        }
    }
}

/// The bearer token of an OAUTHBEARER initial response
/// (`gs2-header %x01 auth=Bearer <token> %x01 … %x01`).
pub fn parse_oauthbearer(msg: &[u8]) -> Result<String, &'static str> {
    let text = std::str::from_utf8(msg).map_err(|_| "OAUTHBEARER messages are UTF-8")?;
    let (gs2, rest) = text
        .split_once('\x01')
        .ok_or("an OAUTHBEARER message has a GS2 header and key/value pairs")?;
    if !(gs2.starts_with("n,") || gs2.starts_with("y,")) {
        return Err("channel binding is not supported");
    }
    rest.split('\x01')
        .find_map(|kv| kv.strip_prefix("auth="))
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("bearer")
                .then(|| token.trim().to_string())
        })
        .filter(|t| !t.is_empty())
        .ok_or("no `auth=Bearer <token>` pair")
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
        req.mechanism = StrBytes::from_static_str("GSSAPI");
        assert_eq!(handshake(&mut st, &req, 1).error_code, 33);
        assert!(matches!(st, State::Start));
        req.mechanism = StrBytes::from_static_str("SCRAM-SHA-512");
        assert_eq!(handshake(&mut st, &req, 1).error_code, 0);
        assert!(matches!(st, State::Authenticate(_)));
        assert_eq!(handshake(&mut st, &req, 1).error_code, 34);
    }

    #[test]
    fn oauthbearer_messages() {
        assert_eq!(
            parse_oauthbearer(b"n,,\x01auth=Bearer abc.def.ghi\x01\x01").unwrap(),
            "abc.def.ghi"
        );
        assert_eq!(
            parse_oauthbearer(b"n,a=user,\x01host=x\x01auth=bearer t\x01\x01").unwrap(),
            "t"
        );
        assert!(parse_oauthbearer(b"n,,\x01auth=Basic x\x01\x01").is_err());
        assert!(parse_oauthbearer(b"p=tls-unique,,\x01auth=Bearer t\x01\x01").is_err());
        assert!(parse_oauthbearer(b"garbage").is_err());
    }
}
