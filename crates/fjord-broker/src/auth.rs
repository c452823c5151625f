//! Users and authentication, shared by every protocol. One identity model
//! ([`fjord_auth::Principal`]) whatever the proof: a password (argon2id
//! hash), a SCRAM exchange (verifiers derived when the password is set), a
//! JWT, a client certificate, or none where the tenant admits anonymous
//! clients. Protocol front-ends turn the outcome into their own signal
//! (Kafka SASL_AUTHENTICATION_FAILED, MQTT CONNACK 0x86, HTTP 401, …).

use std::sync::OnceLock;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use fjord_auth::scram::{self, Mechanism, Verifier};
pub use fjord_auth::{parse_login, Method, Principal};
use fjord_core::names::PUBLIC_TENANT;
use fjord_core::TenantName;
use fjord_meta::{MetaError, ScramVerifier, UserInfo};
use serde::Serialize;
use thiserror::Error;

use crate::{now_ms, Broker, BrokerError};

/// Shortest password accepted.
pub const PASSWORD_MIN_CHARS: usize = 8;

/// A user as the admin API shows it (never the hash or verifiers).
#[derive(Debug, Clone, Serialize)]
pub struct UserView {
    pub tenant: TenantName,
    pub name: String,
    pub roles: Vec<String>,
    pub quotas: fjord_meta::Quotas,
    pub created_ms: i64,
}

impl From<UserInfo> for UserView {
    fn from(u: UserInfo) -> Self {
        UserView {
            tenant: u.tenant,
            name: u.name,
            roles: u.roles,
            quotas: u.quotas,
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
    #[error("authentication failed: {0}")]
    BadToken(String),
    #[error("authentication failed: the client certificate names {0:?}, which is not tenant:user of an existing tenant")]
    BadCertificate(String),
    #[error("authentication required: tenant {0} does not admit anonymous clients")]
    AnonymousRefused(TenantName),
    #[error(transparent)]
    Broker(#[from] BrokerError),
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

/// How long a successful password check is remembered.
const LOGIN_CACHE_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// Remembered checks at most (then the cache starts over).
const LOGIN_CACHE_MAX: usize = 10_000;

/// Successful password checks, remembered for a minute so repeated logins
/// (HTTP Basic sends the password with every request; devices reconnect in
/// storms) do not each pay argon2. Keyed by a keyed digest of login and
/// password, never the password; forgotten whenever a user changes. Only
/// right passwords are ever remembered, so a wrong one always costs a full
/// check.
pub(crate) struct LoginCache {
    key: [u8; 32],
    entries:
        parking_lot::Mutex<std::collections::HashMap<[u8; 32], (Principal, std::time::Instant)>>,
}

impl Default for LoginCache {
    fn default() -> Self {
        use argon2::password_hash::rand_core::RngCore;
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Self {
            key,
            entries: Default::default(),
        }
    }
}

impl LoginCache {
    fn get(&self, login: &str, password: &str) -> Option<Principal> {
        let d = fjord_auth::identity::login_digest(&self.key, login, password);
        let e = self.entries.lock();
        e.get(&d)
            .filter(|(_, at)| at.elapsed() < LOGIN_CACHE_TTL)
            .map(|(p, _)| p.clone())
    }

    fn put(&self, login: &str, password: &str, p: &Principal) {
        let d = fjord_auth::identity::login_digest(&self.key, login, password);
        let mut e = self.entries.lock();
        if e.len() >= LOGIN_CACHE_MAX {
            e.clear();
        }
        e.insert(d, (p.clone(), std::time::Instant::now()));
    }

    pub(crate) fn clear(&self) {
        self.entries.lock().clear();
    }
}

/// Role names: 1–64 of `[a-z0-9_-]`.
fn validate_role(r: &str) -> Result<(), BrokerError> {
    if r.is_empty()
        || r.len() > 64
        || !r
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
    {
        return Err(BrokerError::Invalid(format!(
            "role {r:?} must be 1-64 characters of a-z 0-9 _ -"
        )));
    }
    Ok(())
}

fn principal(tenant: TenantName, u: &UserInfo, method: Method) -> Principal {
    Principal {
        tenant,
        user: u.name.clone(),
        roles: u.roles.clone(),
        method,
    }
}

impl Broker {
    /// Creates the user, or sets a new password (and, when given, roles)
    /// for an existing one. Slow (argon2id and PBKDF2): call it off the
    /// async workers.
    pub fn set_user(
        &self,
        tenant: &TenantName,
        name: &str,
        password: &str,
        roles: Option<Vec<String>>,
        quotas: Option<fjord_meta::Quotas>,
    ) -> Result<UserView, BrokerError> {
        if password.chars().count() < PASSWORD_MIN_CHARS {
            return Err(BrokerError::Invalid(format!(
                "a password has at least {PASSWORD_MIN_CHARS} characters"
            )));
        }
        if let Some(roles) = &roles {
            roles.iter().try_for_each(|r| validate_role(r))?;
        }
        let hash = Argon2::default()
            .hash_password(password.as_bytes(), &SaltString::generate(&mut OsRng))
            .map_err(|e| BrokerError::Storage(format!("hashing the password: {e}")))?
            .to_string();
        let scram = Mechanism::ALL
            .iter()
            .map(|&m| {
                let v = Verifier::derive(m, password, scram::DEFAULT_ITERATIONS);
                ScramVerifier {
                    mechanism: m.name().to_string(),
                    salt: v.salt,
                    iterations: v.iterations,
                    stored_key: v.stored_key,
                    server_key: v.server_key,
                }
            })
            .collect();
        let existing = self.meta.get_user(tenant, name)?;
        let user = UserInfo {
            tenant: tenant.clone(),
            name: name.to_string(),
            password_hash: hash,
            created_ms: existing.as_ref().map_or_else(now_ms, |u| u.created_ms),
            quotas: quotas
                .or_else(|| existing.as_ref().map(|u| u.quotas))
                .unwrap_or_default(),
            roles: roles
                .or_else(|| existing.map(|u| u.roles))
                .unwrap_or_default(),
            scram,
        };
        self.meta.put_user(&user)?;
        self.quotas.forget_limits(tenant);
        // An old password must stop working at once.
        self.logins.clear();
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
        self.meta.delete_user(tenant, name)?;
        self.logins.clear();
        Ok(())
    }

    fn find_user(&self, login: &str) -> Result<Option<(TenantName, UserInfo)>, BrokerError> {
        Ok(match parse_login(login) {
            Some((tenant, user)) if fjord_meta::validate_user_name(user).is_ok() => {
                self.meta.get_user(&tenant, user)?.map(|u| (tenant, u))
            }
            _ => None,
        })
    }

    /// Checks a login name and password. Deliberately slow (argon2id):
    /// call it off the async workers.
    pub fn authenticate(&self, login: &str, password: &str) -> Result<Principal, AuthError> {
        if let Some(p) = self.logins.get(login, password) {
            return Ok(p);
        }
        let found = self.find_user(login)?;
        let hash = found
            .as_ref()
            .map_or(decoy_hash(), |(_, u)| u.password_hash.as_str());
        let ok = PasswordHash::new(hash).is_ok_and(|h| {
            Argon2::default()
                .verify_password(password.as_bytes(), &h)
                .is_ok()
        });
        match found {
            Some((tenant, u)) if ok => {
                let p = principal(tenant, &u, Method::Password);
                self.logins.put(login, password, &p);
                Ok(p)
            }
            _ => Err(AuthError::BadCredentials),
        }
    }

    /// The SCRAM verifier of a login for `mech`, and who it is, or a decoy
    /// (and `None`) for an unknown user, so the exchange looks the same.
    pub fn scram_lookup(
        &self,
        mech: Mechanism,
        login: &str,
    ) -> Result<(Option<Principal>, Verifier), BrokerError> {
        let found = self.find_user(login)?.and_then(|(tenant, u)| {
            let v = u.scram.iter().find(|v| v.mechanism == mech.name())?;
            let verifier = Verifier {
                salt: v.salt.clone(),
                iterations: v.iterations,
                stored_key: v.stored_key.clone(),
                server_key: v.server_key.clone(),
            };
            Some((principal(tenant, &u, Method::Scram), verifier))
        });
        Ok(match found {
            Some((p, v)) => (Some(p), v),
            None => (None, Verifier::decoy(mech, login)),
        })
    }

    /// Checks a JWT; its tenant must exist.
    pub fn authenticate_token(&self, token: &str) -> Result<Principal, AuthError> {
        let verifier = self.tokens.as_ref().ok_or_else(|| {
            AuthError::BadToken(fjord_auth::TokenError::NotConfigured.to_string())
        })?;
        let p = verifier
            .verify(token)
            .map_err(|e| AuthError::BadToken(e.to_string()))?;
        match self.meta.get_tenant(&p.tenant) {
            Ok(_) => Ok(p),
            Err(MetaError::NotFound { .. }) => Err(AuthError::BadToken(
                "the token's tenant does not exist".into(),
            )),
            Err(e) => Err(BrokerError::from(e).into()),
        }
    }

    /// Signs a development token (HS256 secret configured).
    pub fn issue_token(
        &self,
        tenant: &TenantName,
        user: &str,
        roles: &[String],
        ttl_s: u64,
    ) -> Result<String, BrokerError> {
        self.meta.get_tenant(tenant)?;
        let verifier = self.tokens.as_ref().ok_or_else(|| {
            BrokerError::Invalid(fjord_auth::TokenError::NotConfigured.to_string())
        })?;
        verifier
            .issue(tenant, user, roles, ttl_s)
            .map_err(|e| BrokerError::Invalid(e.to_string()))
    }

    /// The principal a verified client certificate names: `tenant:user`
    /// (or `user`, in `public`) of an existing tenant; roles come from the
    /// user record when one exists.
    pub fn authenticate_certificate(&self, identity: &str) -> Result<Principal, AuthError> {
        let bad = || AuthError::BadCertificate(identity.to_string());
        let (tenant, user) = parse_login(identity).ok_or_else(bad)?;
        fjord_meta::validate_user_name(user).map_err(|_| bad())?;
        match self.meta.get_tenant(&tenant) {
            Ok(_) => {}
            Err(MetaError::NotFound { .. }) => return Err(bad()),
            Err(e) => return Err(BrokerError::from(e).into()),
        }
        let roles = self
            .meta
            .get_user(&tenant, user)
            .map_err(BrokerError::from)?
            .map(|u| u.roles)
            .unwrap_or_default();
        Ok(Principal {
            tenant,
            user: user.to_string(),
            roles,
            method: Method::Certificate,
        })
    }

    /// Whether `tenant` admits clients that prove no identity: the node's
    /// `auth.anonymous` and the tenant's own setting (unset: only
    /// `public`).
    pub fn anonymous_allowed(&self, tenant: &TenantName) -> bool {
        self.config.auth.anonymous
            && self.meta.get_tenant(tenant).is_ok_and(|t| {
                t.settings
                    .anonymous
                    .unwrap_or(t.name.as_str() == PUBLIC_TENANT)
            })
    }

    /// The anonymous principal of `tenant`, where it is admitted.
    pub fn anonymous(&self, tenant: &TenantName) -> Result<Principal, AuthError> {
        if self.anonymous_allowed(tenant) {
            Ok(Principal::anonymous(tenant.clone()))
        } else {
            Err(AuthError::AnonymousRefused(tenant.clone()))
        }
    }

    /// The anonymous principal of `public`, where it is admitted (clients
    /// that name no tenant).
    pub fn anonymous_public(&self) -> Result<Principal, AuthError> {
        self.anonymous(&TenantName::new(PUBLIC_TENANT).expect("valid"))
    }
}
