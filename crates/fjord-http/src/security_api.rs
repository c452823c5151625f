//! A tenant's security administration over HTTP: ACL rules, its own
//! settings (anonymous access, the ACL default) and development tokens.
//! Every route here needs `admin` on the tenant (see `access`).

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use fjord_auth::AclRule;
use fjord_core::TenantName;
use serde::Deserialize;

use crate::admin::parse_json;
use crate::error::ApiResult;
use crate::AppState;

pub async fn list_acls(
    State(s): State<AppState>,
    Path(t): Path<String>,
) -> ApiResult<impl IntoResponse> {
    let rules = s.broker.list_acls(&TenantName::new(t)?)?;
    Ok(Json(serde_json::json!({ "acls": rules })))
}

pub async fn add_acl(
    State(s): State<AppState>,
    Path(t): Path<String>,
    body: crate::memory::RawBody,
) -> ApiResult<impl IntoResponse> {
    let rule: AclRule = parse_json(&crate::memory::body_bytes(body)?)?;
    let entry = s.broker.add_acl(&TenantName::new(t)?, rule)?;
    Ok((StatusCode::CREATED, Json(entry)))
}

pub async fn delete_acl(
    State(s): State<AppState>,
    Path((t, id)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    s.broker.delete_acl(&TenantName::new(t)?, &id)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `PATCH /v1/tenants/{t}`: fields present are set (`null` unsets).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantPatch {
    #[serde(default, with = "patch")]
    anonymous: Option<Option<bool>>,
    #[serde(default, with = "patch")]
    acl_default: Option<Option<String>>,
    /// Replaces the tenant's quotas.
    #[serde(default)]
    quotas: Option<fjord_meta::Quotas>,
}

/// A field that may be absent (unchanged), `null` (unset) or a value.
mod patch {
    use serde::{Deserialize, Deserializer};
    pub fn deserialize<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
        d: D,
    ) -> Result<Option<Option<T>>, D::Error> {
        Option::<T>::deserialize(d).map(Some)
    }
}

pub async fn patch_tenant(
    State(s): State<AppState>,
    Path(t): Path<String>,
    body: crate::memory::RawBody,
) -> ApiResult<impl IntoResponse> {
    let p: TenantPatch = parse_json(&crate::memory::body_bytes(body)?)?;
    let t =
        s.broker
            .set_tenant_settings(&TenantName::new(t)?, p.anonymous, p.acl_default, p.quotas)?;
    Ok(Json(t))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    user: String,
    #[serde(default)]
    roles: Vec<String>,
    /// Lifetime in seconds (default one hour, at most 30 days).
    #[serde(default)]
    ttl_s: Option<u64>,
}

/// Signs an HS256 token for a user of the tenant (development: production
/// tokens come from the identity provider).
pub async fn issue_token(
    State(s): State<AppState>,
    Path(t): Path<String>,
    body: crate::memory::RawBody,
) -> ApiResult<impl IntoResponse> {
    let req: TokenRequest = parse_json(&crate::memory::body_bytes(body)?)?;
    let ttl = req.ttl_s.unwrap_or(3600).clamp(1, 30 * 24 * 3600);
    let token = s
        .broker
        .issue_token(&TenantName::new(t)?, &req.user, &req.roles, ttl)?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "token": token, "expires_in_s": ttl })),
    ))
}

/// The node's TLS material and what each TLS listener asks of clients.
#[derive(Clone)]
pub struct TlsAdmin {
    pub ctx: std::sync::Arc<fjord_auth::TlsContext>,
    pub listeners: Vec<TlsListenerView>,
}

#[derive(Clone, serde::Serialize)]
pub struct TlsListenerView {
    pub name: String,
    pub addr: String,
    pub client_auth: fjord_auth::ClientAuth,
}

fn tls_view(tls: &Option<TlsAdmin>) -> serde_json::Value {
    match tls {
        None => serde_json::json!({ "enabled": false }),
        Some(t) => serde_json::json!({
            "enabled": true,
            "certificate": t.ctx.status(),
            "listeners": t.listeners,
        }),
    }
}

/// `GET /v1/admin/tls` (node admins): the certificate in use (subject,
/// names, validity, when loaded, the last reload error) and the listeners.
pub async fn tls_status(State(s): State<AppState>) -> impl IntoResponse {
    Json(tls_view(&s.tls))
}

/// `POST /v1/admin/tls/reload` (node admins): re-reads the PEM files now
/// instead of at the next check; a broken set is refused (400) and the
/// previous certificate stays in use.
pub async fn tls_reload(State(s): State<AppState>) -> ApiResult<impl IntoResponse> {
    let Some(t) = &s.tls else {
        return Err(crate::error::ApiError::bad_request(
            "invalid_argument",
            "TLS is not configured on this node ([tls] cert_file)",
        ));
    };
    t.ctx
        .reload()
        .map_err(|e| crate::error::ApiError::bad_request("invalid_argument", e.to_string()))?;
    Ok(Json(tls_view(&s.tls)))
}
