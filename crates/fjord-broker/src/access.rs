//! Authorisation, shared by every protocol: a tenant's ACL rules (stored in
//! the metadata store, compiled once and cached), the decision for one
//! request, and tenant isolation (a principal only ever acts in its own
//! tenant, except node administrators: `admin` role in tenant `system`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use fjord_auth::acl::{Acl, AclRule, Action, Effect, Resource, ADMIN_ROLE};
use fjord_auth::Principal;
use fjord_core::TenantName;
use serde::Serialize;

use crate::{Broker, BrokerError};

/// The tenant of node administrators and of the audit stream.
pub const SYSTEM_TENANT: &str = "system";

/// A stored rule with its id, as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct AclEntry {
    pub id: String,
    #[serde(flatten)]
    pub rule: AclRule,
}

/// Compiled rules per tenant.
#[derive(Default)]
pub(crate) struct AclCache {
    by_tenant: parking_lot::RwLock<HashMap<TenantName, Arc<Acl>>>,
    /// Bumped whenever any tenant's rules change: long-lived grants (a
    /// subscription) compare it with the one they were checked under.
    generation: AtomicU64,
}

fn parse_default(s: Option<&str>, node: Effect) -> Effect {
    match s {
        Some("deny") => Effect::Deny,
        Some("allow") => Effect::Allow,
        _ => node,
    }
}

impl Broker {
    /// The tenant's compiled rules.
    pub fn acl(&self, tenant: &TenantName) -> Arc<Acl> {
        if let Some(a) = self.acls.by_tenant.read().get(tenant) {
            return a.clone();
        }
        let generation = self.acl_generation();
        let default = parse_default(
            self.meta
                .get_tenant(tenant)
                .ok()
                .and_then(|t| t.settings.acl_default)
                .as_deref(),
            self.config.auth.acl_default,
        );
        let rules: Vec<AclRule> = self
            .meta
            .list_acls(tenant)
            .unwrap_or_default()
            .iter()
            .filter_map(|(_, b)| serde_json::from_slice(b).ok())
            .collect();
        let acl = Arc::new(Acl::new(&rules, default));
        let mut cache = self.acls.by_tenant.write();
        // Rules that changed while these were read are not cached (the
        // next call reads them again).
        if self.acl_generation() == generation {
            cache.insert(tenant.clone(), acl.clone());
        }
        acl
    }

    /// Forgets the tenant's compiled rules (they changed).
    pub(crate) fn acl_changed(&self, tenant: &TenantName) {
        // Both under the lock: a reader filling the cache sees either
        // neither (and its entry is removed here) or both (and keeps it out).
        let mut cache = self.acls.by_tenant.write();
        cache.remove(tenant);
        self.acls.generation.fetch_add(1, Ordering::Release);
    }

    /// Changes with every change of any tenant's rules (or its default):
    /// whoever holds a grant checked under an older value checks it again.
    pub fn acl_generation(&self) -> u64 {
        self.acls.generation.load(Ordering::Acquire)
    }

    /// Connection limits and the failed-login ban.
    pub fn guard(&self) -> &Arc<fjord_auth::guard::Guard> {
        &self.guard
    }

    /// Counts a refused login from `ip` towards its ban.
    pub fn login_failed(&self, ip: std::net::IpAddr, protocol: &str) {
        if self.guard.login_failed(ip) {
            self.metrics.bans.inc();
            tracing::warn!(%ip, protocol, "address banned after repeated failed logins");
            self.audit(
                fjord_auth::audit::AuditEvent::new(fjord_auth::audit::AuditKind::Banned, protocol)
                    .resource(ip.to_string())
                    .detail("repeated failed logins"),
            );
        }
    }

    /// Reports a closed-on-accept connection.
    pub fn connection_refused(
        &self,
        listener: &str,
        why: fjord_auth::guard::Refused,
        addr: std::net::SocketAddr,
    ) {
        self.metrics
            .refused_connections
            .with_label_values(&[listener, why.as_str()])
            .inc();
        tracing::debug!(peer = %addr, listener, reason = why.as_str(), "connection refused");
    }

    /// Whether `p` administers the whole node.
    pub fn is_node_admin(&self, p: &Principal) -> bool {
        (p.tenant.as_str() == SYSTEM_TENANT && p.roles.iter().any(|r| r == ADMIN_ROLE))
            || (p.is_anonymous() && self.config.auth.anonymous_admin && self.config.auth.anonymous)
    }

    /// Whether `p` may do `action` on `resource` of `tenant`: its own
    /// tenant's rules decide; another tenant is out of reach except for
    /// node administrators.
    pub fn authorize(
        &self,
        p: &Principal,
        tenant: &TenantName,
        action: Action,
        resource: Resource<'_>,
    ) -> bool {
        if &p.tenant != tenant {
            return self.is_node_admin(p);
        }
        self.is_node_admin(p) || self.acl(tenant).check(p, action, resource)
    }

    /// [`Broker::authorize`], counting a denial under `protocol` and
    /// logging it.
    pub fn authorize_for(
        &self,
        protocol: &str,
        p: &Principal,
        tenant: &TenantName,
        action: Action,
        resource: Resource<'_>,
    ) -> bool {
        let ok = self.authorize(p, tenant, action, resource);
        if !ok {
            self.metrics
                .denials
                .with_label_values(&[protocol, action.as_str()])
                .inc();
            let what = format!("{resource:?}");
            self.audit_sampled(
                format!("denied/{}/{}/{what}", p.name(), action.as_str()),
                || {
                    fjord_auth::audit::AuditEvent::new(
                        fjord_auth::audit::AuditKind::Denied,
                        protocol,
                    )
                    .principal(p)
                    .tenant(tenant.to_string())
                    .action(action.as_str())
                    .resource(what.clone())
                },
            );
        }
        ok
    }

    pub fn list_acls(&self, tenant: &TenantName) -> Result<Vec<AclEntry>, BrokerError> {
        self.meta.get_tenant(tenant)?;
        Ok(self
            .meta
            .list_acls(tenant)?
            .into_iter()
            .filter_map(|(id, b)| {
                Some(AclEntry {
                    id,
                    rule: serde_json::from_slice(&b).ok()?,
                })
            })
            .collect())
    }

    /// Adds a rule; its id.
    pub fn add_acl(&self, tenant: &TenantName, rule: AclRule) -> Result<AclEntry, BrokerError> {
        rule.validate()
            .map_err(|e| BrokerError::Invalid(e.to_string()))?;
        // Ids sort in creation order.
        let id = format!(
            "{:013x}{:04x}",
            crate::now_ms(),
            self.acl_seq
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                & 0xffff
        );
        let bytes = serde_json::to_vec(&rule)
            .map_err(|e| BrokerError::Storage(format!("encoding the rule: {e}")))?;
        self.meta.put_acl(tenant, &id, &bytes)?;
        self.acl_changed(tenant);
        Ok(AclEntry { id, rule })
    }

    pub fn delete_acl(&self, tenant: &TenantName, id: &str) -> Result<(), BrokerError> {
        self.meta.delete_acl(tenant, id)?;
        self.acl_changed(tenant);
        Ok(())
    }

    /// The `system` tenant (node administrators, the audit stream), and
    /// `system:admin` when `auth.admin_password_file` names its password.
    pub(crate) fn ensure_system_tenant(&self) -> Result<(), BrokerError> {
        let system = TenantName::new(SYSTEM_TENANT).expect("valid");
        if self.meta.get_tenant(&system).is_err() {
            match self.create_tenant(&system) {
                Ok(_) | Err(BrokerError::AlreadyExists { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        let file = &self.config.auth.admin_password_file;
        if !file.as_os_str().is_empty() {
            let pw = std::fs::read_to_string(file).map_err(|e| {
                BrokerError::Invalid(format!("auth.admin_password_file {}: {e}", file.display()))
            })?;
            self.set_user(
                &system,
                "admin",
                pw.trim_end_matches(['\r', '\n']),
                Some(vec![ADMIN_ROLE.to_string()]),
                None,
            )?;
        }
        Ok(())
    }

    /// Changes a tenant's security settings (anonymous access, the ACL
    /// default).
    pub fn set_tenant_settings(
        &self,
        tenant: &TenantName,
        anonymous: Option<Option<bool>>,
        acl_default: Option<Option<String>>,
        quotas: Option<fjord_meta::Quotas>,
    ) -> Result<fjord_meta::TenantInfo, BrokerError> {
        let mut t = self.meta.get_tenant(tenant)?;
        if let Some(q) = quotas {
            t.settings.quotas = q;
        }
        if let Some(a) = anonymous {
            t.settings.anonymous = a;
        }
        if let Some(d) = acl_default {
            if let Some(v) = &d {
                if v != "allow" && v != "deny" {
                    return Err(BrokerError::Invalid(format!(
                        "acl_default must be allow or deny, not {v:?}"
                    )));
                }
            }
            t.settings.acl_default = d;
        }
        self.meta.update_tenant(&t)?;
        self.acl_changed(tenant);
        self.quotas.forget_limits(tenant);
        Ok(t)
    }
}
