//! Users and password authentication, shared by every protocol: a login
//! name `tenant:user` (or `user`, in tenant `public`) and a password,
//! checked against the user's argon2id hash. Protocol front-ends turn the
//! outcome into their own signal (Kafka SASL_AUTHENTICATION_FAILED, …).

use std::sync::OnceLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use fjord_core::names::PUBLIC_TENANT;
use fjord_core::TenantName;
use fjord_meta::UserInfo;
use serde::Serialize;
use thiserror::Error;

use crate::{now_ms, Broker, BrokerError};

/// Shortest password accepted.
pub const PASSWORD_MIN_CHARS: usize = 8;

/// Who a connection proved to be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: TenantName,
    pub user: String,
}

/// A user as the admin API shows it (never the hash).
#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    pub tenant: TenantName,
    pub name: String,
    pub created_ms: i64,
}

impl From<UserInfo> for UserView {
    fn from(u: UserInfo) -> Self {
        UserView {
            tenant: u.tenant,
            name: u.name,
            created_ms: u.created_ms,
        }
    }
}

#[derive(Debug, Error)]
pub enum AuthError {
    /// Unknown tenant or user, or a wrong password: deliberately one case,
    /// so a client cannot learn which names exist.
    #[error("authentication failed: unknown user or wrong password")]
    BadCredentials,
    #[error(transparent)]
    Broker(#[from] BrokerError),
}

/// Splits a login name into tenant and user.
pub fn parse_login(login: &str) -> Option<(TenantName, &str)> {
    let (tenant, user) = login.split_once(':').unwrap_or((PUBLIC_TENANT, login));
    Some((TenantName::new(tenant).ok()?, user))
}

/// A hash to verify against when the user does not exist, so that an
/// unknown name costs as much time as a wrong password.
fn decoy_hash() -> &'static str {
    static DECOY: OnceLock<String> = OnceLock::new();
    DECOY.get_or_init(|| {
        Argon2::default()
            .hash_password(b"decoy password", &SaltString::generate(&mut OsRng))
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

impl Broker {
    /// Creates the user, or sets a new password for an existing one.
    pub fn set_user_password(
        &self,
        tenant: &TenantName,
        name: &str,
        password: &str,
    ) -> Result<UserView, BrokerError> {
        if password.chars().count() < PASSWORD_MIN_CHARS {
            return Err(BrokerError::Invalid(format!(
                "a password has at least {PASSWORD_MIN_CHARS} characters"
            )));
        }
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
            .map_err(|e| BrokerError::Storage(format!("hashing the password: {e}")))?
            .to_string();
        let created_ms = self
            .meta
            .get_user(tenant, name)?
            .map_or_else(now_ms, |u| u.created_ms);
        let user = UserInfo {
            tenant: tenant.clone(),
            name: name.to_string(),
            password_hash: hash,
            created_ms,
        };
        self.meta.put_user(&user)?;
        Ok(user.into())
    }

    pub fn list_users(&self, tenant: &TenantName) -> Result<Vec<UserView>, BrokerError> {
        self.meta.get_tenant(tenant)?;
        Ok(self
            .meta
            .list_users(tenant)?
            .into_iter()
            .map(UserView::from)
            .collect())
    }

    pub fn delete_user(&self, tenant: &TenantName, name: &str) -> Result<(), BrokerError> {
        Ok(self.meta.delete_user(tenant, name)?)
    }

    /// Checks a login name and password. Deliberately slow (argon2id):
    /// call it off the async workers.
    pub fn authenticate(&self, login: &str, password: &str) -> Result<Principal, AuthError> {
        let found = match parse_login(login) {
            Some((tenant, user)) if fjord_meta::validate_user_name(user).is_ok() => self
                .meta
                .get_user(&tenant, user)
                .map_err(BrokerError::from)?
                .map(|u| (tenant, u)),
            _ => None,
        };
        let hash = found
            .as_ref()
            .map_or(decoy_hash(), |(_, u)| u.password_hash.as_str());
        let ok = PasswordHash::new(hash).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        });
        match found {
            Some((tenant, u)) if ok => Ok(Principal {
                tenant,
                user: u.name,
            }),
            _ => Err(AuthError::BadCredentials),
        }
    }
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
