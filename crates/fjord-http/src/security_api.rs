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
