//! Fjord's security layer, shared by every protocol front-end: TLS for the
//! listeners, and (growing with the security issue) identities, ACLs,
//! quotas and audit events. Protocol crates turn its answers into their own
//! signals; it knows nothing about any protocol.

pub mod acl;
pub mod audit;
pub mod guard;
pub mod identity;
pub mod jwt;
pub mod listener;
pub mod quota;
pub mod scram;
pub mod tls;

pub use acl::{Acl, AclRule, Action, Effect, Resource};
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
    /// Whether anonymous HTTP clients may use the admin API on every tenant
    /// (the development default; production turns it off with `anonymous`).
    pub anonymous_admin: bool,
    /// What requests no ACL rule decides get, in tenants that do not say.
    pub acl_default: Effect,
    /// A file holding the password of `system:admin`, the node's first
    /// administrator, set at every start (empty: no such user is made).
    pub admin_password_file: std::path::PathBuf,
    /// JWT bearer tokens.
    pub tokens: TokenSettings,
}

impl Default for AuthSettings {
    fn default() -> Self {
        Self {
            anonymous: true,
            anonymous_admin: true,
            acl_default: Effect::Allow,
            admin_password_file: std::path::PathBuf::new(),
            tokens: TokenSettings::default(),
        }
    }
}
