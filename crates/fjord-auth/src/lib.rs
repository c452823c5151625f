//! Fjord's security layer, shared by every protocol front-end: TLS for the
//! listeners, and (growing with the security issue) identities, ACLs,
//! quotas and audit events. Protocol crates turn its answers into their own
//! signals; it knows nothing about any protocol.

pub mod identity;
pub mod jwt;
pub mod listener;
pub mod scram;
pub mod tls;

pub use identity::{parse_login, Method, Principal};
pub use jwt::{TokenError, TokenSettings, TokenVerifier};
pub use tls::{ClientAuth, IdentityFrom, TlsContext, TlsError, TlsSettings};

use std::net::SocketAddr;
use std::sync::Arc;

/// What the transport knows about the other end of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// Whether the connection is encrypted.
    pub tls: bool,
    /// The verified client certificate's identity (mutual TLS).
    pub cert_identity: Option<String>,
}

impl Peer {
    pub fn plain(addr: SocketAddr) -> Self {
        Self {
            addr,
            tls: false,
            cert_identity: None,
        }
    }
}

/// A listener's TLS: the node's material and the client-certificate mode.
#[derive(Clone)]
pub struct TlsListen {
    pub ctx: Arc<TlsContext>,
    pub client_auth: ClientAuth,
}

/// The `[auth]` section: how identities are proved on this node.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSettings {
    /// Whether clients that prove no identity are admitted at all (into
    /// tenants whose settings allow it: `public` unless changed). `false`
    /// turns anonymous access off everywhere.
    pub anonymous: bool,
    /// JWT bearer tokens.
    pub tokens: TokenSettings,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            anonymous: true,
            tokens: TokenSettings::default(),
        }
    }
}
