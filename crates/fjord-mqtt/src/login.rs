//! Who an MQTT client is, decided between CONNECT and CONNACK:
//!
//! 1. 5.0 enhanced authentication (Authentication Method `SCRAM-SHA-256`
//!    or `SCRAM-SHA-512`): the SCRAM exchange over AUTH packets, the
//!    server's final message in CONNACK's Authentication Data.
//! 2. User Name and Password: `tenant:user` (or `user`, in `public`) and
//!    its password, or any user name with a JWT as the password.
//! 3. A verified client certificate (mutual TLS): its CN or SAN.
//! 4. Nothing: anonymous, in `public`, where allowed.
//!
//! A refusal is a CONNACK with the protocol's code (5.0: 0x86 bad user
//! name or password, 0x87 not authorized, 0x8C bad authentication method;
//! 3.1.1: 4 or 5), then the connection closes.

use bytes::{Bytes, BytesMut};
use fjord_auth::scram::{self, Mechanism};
use fjord_auth::{Peer, Principal};
use fjord_broker::auth::AuthError;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::codec::{self, reason, Auth, ConnAck, Connect, Packet, Properties, Protocol};
use crate::connection::{write_out, ConnError};
use crate::server::Shared;

/// How the CONNECT's authentication ended.
pub(crate) enum Login {
    /// Admitted; for enhanced authentication, the data CONNACK carries.
    Admitted(std::sync::Arc<Principal>, Option<Bytes>),
    /// Refused: CONNACK sent, the connection ends.
    Refused,
}

/// A refusal's CONNACK codes (5.0, 3.1.1) and the metric reason.
fn refusal(e: &AuthError) -> (u8, u8, &'static str) {
    match e {
        AuthError::BadCredentials | AuthError::BadToken(_) | AuthError::BadCertificate(_) => (
            reason::BAD_USER_NAME_OR_PASSWORD,
            reason::v311::BAD_USER_NAME_OR_PASSWORD,
            "auth_failed",
        ),
        AuthError::AnonymousRefused(_) => (
            reason::NOT_AUTHORIZED,
            reason::v311::NOT_AUTHORIZED,
            "auth_required",
        ),
        AuthError::Broker(_) => (
            reason::SERVER_UNAVAILABLE,
            reason::v311::SERVER_UNAVAILABLE,
            "auth_unavailable",
        ),
    }
}

async fn refuse<W: AsyncWrite + Unpin>(
    shared: &Shared,
    c: &Connect,
    peer: &Peer,
    wr: &mut W,
    e: AuthError,
) -> Result<Login, ConnError> {
    let (v5, v311, why) = refusal(&e);
    shared.broker.audit(
        fjord_broker::audit::login_event(
            false,
            "mqtt",
            peer.addr,
            method_of(c, peer),
            None,
            &e.to_string(),
        )
        .resource(c.username.clone().unwrap_or_default()),
    );
    if why == "auth_failed" {
        shared.broker.login_failed(peer.addr.ip(), "mqtt");
    }
    tracing::warn!(peer = %peer.addr, client = %c.client_id, error = %e, "mqtt login refused");
    crate::connection::count_error(shared, why);
    send_connack(
        c.protocol,
        if c.protocol == Protocol::V5 { v5 } else { v311 },
        wr,
    )
    .await?;
    Ok(Login::Refused)
}

async fn send_connack<W: AsyncWrite + Unpin>(
    protocol: Protocol,
    code: u8,
    wr: &mut W,
) -> Result<(), ConnError> {
    let mut out = BytesMut::new();
    codec::encode(
        &Packet::ConnAck(ConnAck {
            session_present: false,
            code,
            properties: Properties::default(),
        }),
        protocol,
        &mut out,
    );
    write_out(wr, &out).await?;
    Ok(())
}

/// The way CONNECT `c` tries to prove itself, for the audit trail.
fn method_of(c: &Connect, peer: &Peer) -> &'static str {
    match (
        &c.properties.authentication_method,
        &c.password,
        &peer.cert_identity,
    ) {
        (Some(_), _, _) => "scram",
        (None, Some(p), _) if fjord_auth::jwt::looks_like_jwt(&String::from_utf8_lossy(p)) => {
            "token"
        }
        (None, Some(_), _) => "password",
        (None, None, Some(_)) => "certificate",
        (None, None, None) => "anonymous",
    }
}

/// Runs the checks above for CONNECT `c`.
pub(crate) async fn login<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    shared: &Shared,
    peer: &Peer,
    c: &Connect,
    rd: &mut R,
    wr: &mut W,
    inbuf: &mut BytesMut,
) -> Result<Login, ConnError> {
    let broker = &shared.broker;
    if let Some(method) = &c.properties.authentication_method {
        let Some(mech) = Mechanism::from_name(method) else {
            tracing::warn!(peer = %peer.addr, method = %method, "mqtt authentication method refused");
            crate::connection::count_error(shared, "auth_method");
            send_connack(c.protocol, reason::BAD_AUTHENTICATION_METHOD, wr).await?;
            return Ok(Login::Refused);
        };
        return match scram_exchange(shared, mech, c, rd, wr, inbuf).await? {
            Ok((p, server_final)) => {
                admitted(shared, peer, &p);
                Ok(Login::Admitted(std::sync::Arc::new(p), Some(server_final)))
            }
            Err(e) => refuse(shared, c, peer, wr, e).await,
        };
    }
    let outcome = match (&c.username, &c.password) {
        (Some(user), Some(password)) => {
            let password = String::from_utf8_lossy(password).into_owned();
            if fjord_auth::jwt::looks_like_jwt(&password) {
                broker
                    .authenticate_token(&password)
                    .map(std::sync::Arc::new)
            } else {
                let (broker, user) = (broker.clone(), user.clone());
                tokio::task::spawn_blocking(move || broker.authenticate(&user, &password))
                    .await
                    .map_err(|e| std::io::Error::other(format!("authentication task: {e}")))?
                    .map(std::sync::Arc::new)
            }
        }
        _ => match (&peer.cert_identity, &c.username) {
            (Some(id), _) => broker.authenticate_certificate(id).map(std::sync::Arc::new),
            // A user name without a password proves nothing.
            (None, Some(_)) => Err(AuthError::BadCredentials),
            // One shared principal for every anonymous client (idle
            // connections stay small).
            (None, None) => broker.anonymous_public().map(|_| shared.anonymous.clone()),
        },
    };
    match outcome {
        Ok(p) => {
            admitted(shared, peer, &p);
            Ok(Login::Admitted(p, None))
        }
        Err(e) => refuse(shared, c, peer, wr, e).await,
    }
}

/// A login that proved an identity: audited, and its address's failures
/// forgotten (anonymous connections prove nothing and are not audited).
fn admitted(shared: &Shared, peer: &Peer, p: &Principal) {
    if p.is_anonymous() {
        return;
    }
    shared.broker.guard().login_succeeded(peer.addr.ip());
    shared.broker.audit(fjord_broker::audit::login_event(
        true,
        "mqtt",
        peer.addr,
        p.method.as_str(),
        Some(p),
        "",
    ));
}

/// SCRAM over CONNECT / AUTH / AUTH / CONNACK (MQTT 5.0 §4.12).
async fn scram_exchange<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    shared: &Shared,
    mech: Mechanism,
    c: &Connect,
    rd: &mut R,
    wr: &mut W,
    inbuf: &mut BytesMut,
) -> Result<Result<(Principal, Bytes), AuthError>, ConnError> {
    let first = c.properties.authentication_data.as_deref().unwrap_or(&[]);
    let first = match scram::parse_client_first(first) {
        Ok(f) => f,
        Err(e) => return Ok(Err(AuthError::BadToken(e.to_string()))),
    };
    let (who, verifier) = shared
        .broker
        .scram_lookup(mech, &first.username)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    let (exchange, server_first) = scram::Exchange::start(mech, first, verifier);
    let props = Properties {
        authentication_method: Some(mech.name().to_string()),
        authentication_data: Some(Bytes::from(server_first)),
        ..Default::default()
    };
    let mut out = BytesMut::new();
    codec::encode(
        &Packet::Auth(Auth {
            reason: reason::CONTINUE_AUTHENTICATION,
            properties: props,
        }),
        Protocol::V5,
        &mut out,
    );
    write_out(wr, &out).await?;
    let max = shared.config.max_packet_bytes as usize;
    let answer = tokio::time::timeout(shared.config.connect_timeout, async {
        loop {
            if let Some(p) = codec::decode(inbuf, Some(Protocol::V5), max)? {
                return Ok::<_, ConnError>(p);
            }
            if rd.read_buf(inbuf).await? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
    })
    .await
    .map_err(|_| ConnError::ConnectTimeout)??;
    let Packet::Auth(a) = answer else {
        return Err(codec::DecodeError::Protocol("expected AUTH during authentication").into());
    };
    if a.reason != reason::CONTINUE_AUTHENTICATION
        || a.properties.authentication_method.as_deref() != Some(mech.name())
    {
        // MQTT-4.12.0-4 / -5: a different method is a protocol error.
        return Err(codec::DecodeError::Protocol("AUTH with another method").into());
    }
    let client_final = a.properties.authentication_data.as_deref().unwrap_or(&[]);
    let username = exchange.username().to_string();
    match (exchange.finish(client_final), who) {
        (Ok(server_final), Some(p)) => Ok(Ok((p, Bytes::from(server_final)))),
        (Ok(_), None) | (Err(scram::ScramError::BadProof), _) => {
            tracing::debug!(user = %username, "scram proof refused");
            Ok(Err(AuthError::BadCredentials))
        }
        (Err(e), _) => Ok(Err(AuthError::BadToken(e.to_string()))),
    }
}
