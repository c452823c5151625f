//! Who a connection is: one model for every protocol and every way of
//! proving it (password, SCRAM, token, client certificate, or nothing where
//! the tenant allows anonymous access).

use fjord_core::names::PUBLIC_TENANT;
use fjord_core::TenantName;
use serde::Serialize;

/// The user name of anonymous principals (in ACL rules: `anonymous`).
pub const ANONYMOUS: &str = "anonymous";

/// How a principal proved itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Anonymous,
    Password,
    Scram,
    Token,
    Certificate,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Anonymous => "anonymous",
            Method::Password => "password",
            Method::Scram => "scram",
            Method::Token => "token",
            Method::Certificate => "certificate",
        }
    }
}

/// An authenticated identity: a user of a tenant with roles.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    pub tenant: TenantName,
    pub user: String,
    pub roles: Vec<String>,
    pub method: Method,
}

impl Principal {
    pub fn anonymous(tenant: TenantName) -> Self {
        Self {
            tenant,
            user: ANONYMOUS.to_string(),
            roles: Vec::new(),
            method: Method::Anonymous,
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.method == Method::Anonymous
    }

    /// `tenant:user`, as logins and audit events spell it.
    pub fn name(&self) -> String {
        format!("{}:{}", self.tenant, self.user)
    }
}

/// Splits a login name `tenant:user` (or `user`, in tenant `public`) into
/// tenant and user; `None` when the tenant part is not a tenant name.
pub fn parse_login(login: &str) -> Option<(TenantName, &str)> {
    let (tenant, user) = login.split_once(':').unwrap_or((PUBLIC_TENANT, login));
    Some((TenantName::new(tenant).ok()?, user))
}

/// A keyed digest of a login and its password, for remembering checks
/// that succeeded without keeping the password (HMAC-SHA-256 under a
/// per-process random key).
pub fn login_digest(key: &[u8; 32], login: &str, password: &str) -> [u8; 32] {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    m.update(login.as_bytes());
    m.update(&[0]);
    m.update(password.as_bytes());
    m.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_names() {
        let (t, u) = parse_login("acme:alice").unwrap();
        assert_eq!((t.as_str(), u), ("acme", "alice"));
        let (t, u) = parse_login("bob").unwrap();
        assert_eq!((t.as_str(), u), ("public", "bob"));
        assert!(parse_login("Not A Tenant:x").is_none());
    }
}
