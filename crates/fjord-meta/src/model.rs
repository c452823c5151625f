//! The metadata records, stored as JSON so fields can be added later.

use fjord_core::{NamespaceName, Policy, StreamName, StreamRef, TenantName};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantInfo {
    pub name: TenantName,
    pub created_ms: i64,
    /// Security settings; absent in records written before they existed.
    #[serde(default)]
    pub settings: TenantSettings,
}

/// A tenant's own security settings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSettings {
    /// Whether clients that prove no identity may act in this tenant
    /// (subject to the node's `auth.anonymous`). Unset: only `public` does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<bool>,
    /// What requests no ACL rule decides get: `allow` or `deny`. Unset: the
    /// node's `auth.acl_default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_default: Option<String>,
    /// Limits on the whole tenant.
    #[serde(default)]
    pub quotas: Quotas,
}

/// Quotas of a tenant or a user; unset: no limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    /// Open connections (MQTT, Kafka) at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connections: Option<u64>,
    /// Records published per second (every protocol).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_msgs_per_s: Option<u64>,
    /// Record bytes published per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_bytes_per_s: Option<u64>,
    /// Live MQTT subscriptions at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscriptions: Option<u64>,
    /// Bytes stored by the tenant's streams at most (tenant quota only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_bytes: Option<u64>,
}

/// A user of a tenant, who proves itself with a password. Only what
/// checks a password is stored: its argon2 hash (PHC string) and the SCRAM
/// verifiers (RFC 5802: salt, iterations, StoredKey, ServerKey).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInfo {
    pub tenant: TenantName,
    pub name: String,
    pub password_hash: String,
    pub created_ms: i64,
    /// Roles that ACL rules grant rights to.
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub scram: Vec<ScramVerifier>,
    /// Limits on this user's connections and publishing.
    #[serde(default)]
    pub quotas: Quotas,
}

/// What a SCRAM mechanism needs to check a client proof, never the
/// password itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScramVerifier {
    /// `SCRAM-SHA-256` or `SCRAM-SHA-512`.
    pub mechanism: String,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
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
