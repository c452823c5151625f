//! Helpers the SQL test files share.

#![allow(dead_code)]

use std::sync::Arc;

use fjord_auth::Principal;
use fjord_core::TenantName;

/// Tenant `public`'s anonymous client.
pub fn anonymous() -> Arc<Principal> {
    Arc::new(Principal::anonymous(TenantName::new("public").unwrap()))
}

/// A small deterministic generator (no dependency, same data every run,
/// so a failure replays).
pub struct Lcg(pub u64);

impl Lcg {
    pub fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}
