//! Audit events: who proved (or failed to prove) what, who was refused,
//! who changed what, who hit a quota. The broker writes each one as a
//! structured log line (target `fjord::audit`) and appends it to the audit
//! stream of tenant `system`.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditKind {
    AuthSuccess,
    AuthFailure,
    Denied,
    AdminChange,
    QuotaExceeded,
    Banned,
}

impl AuditKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuditKind::AuthSuccess => "auth_success",
            AuditKind::AuthFailure => "auth_failure",
            AuditKind::Denied => "denied",
            AuditKind::AdminChange => "admin_change",
            AuditKind::QuotaExceeded => "quota_exceeded",
            AuditKind::Banned => "banned",
        }
    }
}

/// One event, as stored (JSON) in the audit stream.
#[derive(Debug, Clone, Serialize)]
pub struct AuditEvent {
    pub ts_ms: i64,
    pub kind: AuditKind,
    pub protocol: String,
    /// `tenant:user`, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub principal: Option<String>,
    /// The tenant acted in (or the one a login named).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    /// What was attempted (`publish`, `PUT /v1/tenants/acme/users/bob`,
    /// `CreateTopics`, `scram-sha-256` …).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub action: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub resource: String,
    /// Outcome or reason, free text; never a secret.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

impl AuditEvent {
    pub fn new(kind: AuditKind, protocol: &str) -> Self {
        Self {
            ts_ms: fjord_core::time::now_ms(),
            kind,
            protocol: protocol.to_string(),
            principal: None,
            tenant: None,
            peer: None,
            action: String::new(),
            resource: String::new(),
            detail: String::new(),
        }
    }

    pub fn principal(mut self, p: &crate::Principal) -> Self {
        self.principal = Some(p.name());
        self.tenant = Some(p.tenant.to_string());
        self
    }

    pub fn tenant(mut self, t: impl Into<String>) -> Self {
        self.tenant = Some(t.into());
        self
    }

    pub fn peer(mut self, addr: std::net::SocketAddr) -> Self {
        self.peer = Some(addr.to_string());
        self
    }

    pub fn action(mut self, a: impl Into<String>) -> Self {
        self.action = a.into();
        self
    }

    pub fn resource(mut self, r: impl Into<String>) -> Self {
        self.resource = r.into();
        self
    }

    pub fn detail(mut self, d: impl Into<String>) -> Self {
        self.detail = d.into();
        self
    }
}
