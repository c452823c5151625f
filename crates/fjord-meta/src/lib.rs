//! Fjord metadata (ARCHITECTURE §5): tenants, namespaces with their policies,
//! streams with their partition counts and policy overrides, and the
//! committed positions of named consumers.
//!
//! Everything sits behind the [`MetaStore`] trait so cluster mode can put it
//! in etcd; [`EmbeddedStore`] keeps it in a transactional `redb` file in the
//! data directory, fsynced on every commit.

mod embedded;
mod error;
mod model;

pub use embedded::EmbeddedStore;
pub use error::MetaError;
pub use model::{
    NamespaceInfo, Quotas, ScramVerifier, StreamInfo, TenantInfo, TenantSettings, UserInfo,
};

use fjord_core::{NamespaceName, Policy, StreamRef, TenantName};

/// A named consumer and its committed `(partition, offset)` pairs.
pub type ConsumerOffsets = (String, Vec<(u32, i64)>);

/// The metadata operations the broker needs. Every method is one atomic
/// transaction.
pub trait MetaStore: Send + Sync {
    fn create_tenant(&self, tenant: &TenantInfo) -> Result<(), MetaError>;
    fn get_tenant(&self, name: &TenantName) -> Result<TenantInfo, MetaError>;
    /// Replaces an existing tenant's record (its settings).
    fn update_tenant(&self, tenant: &TenantInfo) -> Result<(), MetaError>;
    fn list_tenants(&self) -> Result<Vec<TenantInfo>, MetaError>;
    /// Refused while the tenant still has streams.
    fn delete_tenant(&self, name: &TenantName) -> Result<(), MetaError>;

    fn create_namespace(&self, ns: &NamespaceInfo) -> Result<(), MetaError>;
    fn get_namespace(
        &self,
        tenant: &TenantName,
        ns: &NamespaceName,
    ) -> Result<NamespaceInfo, MetaError>;
    fn list_namespaces(&self, tenant: &TenantName) -> Result<Vec<NamespaceInfo>, MetaError>;
    fn set_namespace_policy(
        &self,
        tenant: &TenantName,
        ns: &NamespaceName,
        policy: &Policy,
    ) -> Result<NamespaceInfo, MetaError>;
    /// Refused while the namespace still has streams.
    fn delete_namespace(&self, tenant: &TenantName, ns: &NamespaceName) -> Result<(), MetaError>;

    fn create_stream(&self, stream: &StreamInfo) -> Result<(), MetaError>;
    fn get_stream(&self, stream: &StreamRef) -> Result<StreamInfo, MetaError>;
    fn list_streams(
        &self,
        tenant: &TenantName,
        ns: &NamespaceName,
    ) -> Result<Vec<StreamInfo>, MetaError>;
    fn list_all_streams(&self) -> Result<Vec<StreamInfo>, MetaError>;
    fn update_stream(&self, stream: &StreamInfo) -> Result<(), MetaError>;
    /// Deletes the stream and every committed position on it.
    fn delete_stream(&self, stream: &StreamRef) -> Result<(), MetaError>;

    /// Stores positions of `consumer` on `stream`, atomically for all given
    /// partitions.
    fn commit_offsets(
        &self,
        stream: &StreamRef,
        consumer: &str,
        offsets: &[(u32, i64)],
    ) -> Result<(), MetaError>;
    fn committed_offsets(
        &self,
        stream: &StreamRef,
        consumer: &str,
    ) -> Result<Vec<(u32, i64)>, MetaError>;
    /// Forgets `consumer`'s positions on `stream`: the given partitions, or
    /// all of them. Returns how many were removed.
    fn delete_offsets(
        &self,
        stream: &StreamRef,
        consumer: &str,
        partitions: Option<&[u32]>,
    ) -> Result<usize, MetaError>;
    /// Every consumer of `stream` with its positions.
    fn list_consumers(&self, stream: &StreamRef) -> Result<Vec<ConsumerOffsets>, MetaError>;

    /// Creates or replaces a user (its tenant must exist).
    fn put_user(&self, user: &UserInfo) -> Result<(), MetaError>;
    fn get_user(&self, tenant: &TenantName, name: &str) -> Result<Option<UserInfo>, MetaError>;
    fn delete_user(&self, tenant: &TenantName, name: &str) -> Result<(), MetaError>;
    fn list_users(&self, tenant: &TenantName) -> Result<Vec<UserInfo>, MetaError>;

    /// Protocol sessions that outlive their connection (MQTT persistent
    /// sessions), stored opaquely under `(tenant, client id)`.
    fn put_session(
        &self,
        tenant: &TenantName,
        client_id: &str,
        state: &[u8],
    ) -> Result<(), MetaError>;
    fn get_session(
        &self,
        tenant: &TenantName,
        client_id: &str,
    ) -> Result<Option<Vec<u8>>, MetaError>;
    fn delete_session(&self, tenant: &TenantName, client_id: &str) -> Result<(), MetaError>;
    /// Every session of `tenant`: `(client id, state)`.
    fn list_sessions(&self, tenant: &TenantName) -> Result<Vec<(String, Vec<u8>)>, MetaError>;

    /// A tenant's access rules, stored opaquely under `(tenant, rule id)`;
    /// the tenant must exist.
    fn put_acl(&self, tenant: &TenantName, id: &str, rule: &[u8]) -> Result<(), MetaError>;
    fn delete_acl(&self, tenant: &TenantName, id: &str) -> Result<(), MetaError>;
    /// Every rule of `tenant`: `(id, rule)`, by id.
    fn list_acls(&self, tenant: &TenantName) -> Result<Vec<(String, Vec<u8>)>, MetaError>;

    /// A tenant's continuous queries, stored opaquely under `(tenant,
    /// name)`; the tenant must exist.
    fn put_query(&self, tenant: &TenantName, name: &str, def: &[u8]) -> Result<(), MetaError>;
    /// Removes a query and its checkpoint.
    fn delete_query(&self, tenant: &TenantName, name: &str) -> Result<(), MetaError>;
    /// Every query of `tenant`: `(name, definition)`, by name.
    fn list_queries(&self, tenant: &TenantName) -> Result<Vec<(String, Vec<u8>)>, MetaError>;
    /// A query's latest checkpoint (its state with its source offsets),
    /// replaced atomically; the query must exist.
    fn put_checkpoint(
        &self,
        tenant: &TenantName,
        name: &str,
        checkpoint: &[u8],
    ) -> Result<(), MetaError>;
    fn get_checkpoint(&self, tenant: &TenantName, name: &str)
        -> Result<Option<Vec<u8>>, MetaError>;
}

/// Creates tenant `public` with namespace `default` if they are missing.
pub fn ensure_defaults(store: &dyn MetaStore, now_ms: i64) -> Result<(), MetaError> {
    let public = TenantName::new(fjord_core::names::PUBLIC_TENANT).expect("valid");
    match store.create_tenant(&TenantInfo {
        name: public,
        created_ms: now_ms,
        settings: Default::default(),
    }) {
        Ok(()) | Err(MetaError::AlreadyExists { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Consumer names: 1–200 printable ASCII characters without `/`.
/// User names: 1-128 of `[A-Za-z0-9._@-]` (no `:`, which separates the
/// tenant in `tenant:user` logins, and no `/`).
pub fn validate_user_name(name: &str) -> Result<(), MetaError> {
    if name.is_empty()
        || name.len() > 128
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b))
    {
        return Err(MetaError::Invalid(format!(
            "user name {name:?} must be 1-128 characters of A-Z a-z 0-9 . _ @ -"
        )));
    }
    Ok(())
}

pub fn validate_consumer_name(name: &str) -> Result<(), MetaError> {
    if name.is_empty()
        || name.len() > 200
        || !name.bytes().all(|b| (0x21..0x7f).contains(&b) && b != b'/')
    {
        return Err(MetaError::Invalid(format!(
            "consumer name {name:?} must be 1-200 printable ASCII characters without '/' or spaces"
        )));
    }
    Ok(())
}
