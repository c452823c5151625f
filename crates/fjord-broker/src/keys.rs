//! Encryption-at-rest keys: per tenant, from the node's key file (TOML, a
//! list of base64 32-byte keys per tenant, the current one first):
//!
//! ```toml
//! acme = ["q0c9…=", "older key…="]
//! ```
//!
//! The file is read at start; keys are never logged (errors name the
//! tenant and the problem, not the value).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use fjord_core::TenantName;
use fjord_log::crypt::KeyRing;

use crate::BrokerError;

pub(crate) type Keys = HashMap<TenantName, Arc<KeyRing>>;

pub(crate) fn load(path: &Path) -> Result<Keys, BrokerError> {
    if path.as_os_str().is_empty() {
        return Ok(Keys::new());
    }
    let bad = |what: String| {
        BrokerError::Invalid(format!("encryption.key_file {}: {what}", path.display()))
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let table: HashMap<String, Vec<String>> = toml::from_str(&text).map_err(|e| {
        bad(format!(
            "not `tenant = [\"base64 key\", …]` TOML: {}",
            e.message()
        ))
    })?;
    let mut keys = Keys::new();
    for (tenant, list) in table {
        let name = TenantName::new(tenant.as_str()).map_err(|e| bad(e.to_string()))?;
        let mut raw = Vec::with_capacity(list.len());
        for (i, k) in list.iter().enumerate() {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(k.trim())
                .map_err(|_| bad(format!("key {} of tenant {tenant} is not base64", i + 1)))?;
            let key: [u8; 32] = bytes.try_into().map_err(|_| {
                bad(format!(
                    "key {} of tenant {tenant} is not 32 bytes (AES-256)",
                    i + 1
                ))
            })?;
            raw.push(key);
        }
        if let Some(ring) = KeyRing::new(&raw) {
            keys.insert(name, Arc::new(ring));
        }
    }
    Ok(keys)
}
