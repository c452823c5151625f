//! The metadata records, stored as JSON so fields can be added later.

use fjord_core::{NamespaceName, Policy, StreamName, StreamRef, TenantName};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantInfo {
    pub name: TenantName,
    pub created_ms: i64,
}

/// A user of a tenant, who proves itself with a password. Only the
/// password's argon2 hash (PHC string) is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub tenant: TenantName,
    pub name: String,
    pub password_hash: String,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamespaceInfo {
    pub tenant: TenantName,
    pub name: NamespaceName,
    #[serde(default)]
    pub policy: Policy,
    pub created_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    pub tenant: TenantName,
    pub namespace: NamespaceName,
    pub name: StreamName,
    pub partitions: u32,
    /// Overrides of the namespace policy.
    #[serde(default)]
    pub policy: Policy,
    pub created_ms: i64,
}

impl StreamInfo {
    pub fn stream_ref(&self) -> StreamRef {
        StreamRef {
            tenant: self.tenant.clone(),
            namespace: self.namespace.clone(),
            stream: self.name.clone(),
        }
    }
}
