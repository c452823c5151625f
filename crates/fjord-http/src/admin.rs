//! Admin CRUD: tenants, namespaces (with their policies) and streams.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use bytes::Bytes;
use std::sync::Arc;

use fjord_auth::Principal;
use fjord_core::{NamespaceName, Policy, StreamRef, TenantName};
use serde::de::DeserializeOwned;
use serde::Deserialize;

use crate::error::{ApiError, ApiResult};
use crate::AppState;

/// Parses a JSON body with an error that says where it went wrong.
pub fn parse_json<T: DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("request body: {e}")))
}

pub fn stream_ref(t: &str, ns: &str, s: &str) -> ApiResult<StreamRef> {
    Ok(StreamRef::new(t, ns, s)?)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateTenant {
    name: String,
}

/// Every tenant for node administrators; a tenant's own principals see
/// only their tenant.
pub async fn list_tenants(
    State(s): State<AppState>,
    who: Option<axum::Extension<Arc<Principal>>>,
) -> ApiResult<impl IntoResponse> {
    let all = s.broker.list_tenants()?;
    let visible: Vec<_> = match who {
        Some(p) if !s.broker.is_node_admin(&p) => {
            all.into_iter().filter(|t| t.name == p.tenant).collect()
        }
        _ => all,
    };
    Ok(Json(serde_json::json!({ "tenants": visible })))
}

pub async fn create_tenant(
    State(s): State<AppState>,
    body: crate::memory::RawBody,
) -> ApiResult<impl IntoResponse> {
    let req: CreateTenant = parse_json(&crate::memory::body_bytes(body)?)?;
    let t = s.broker.create_tenant(&TenantName::new(req.name)?)?;
    Ok((StatusCode::CREATED, Json(t)))
}

pub async fn get_tenant(
    State(s): State<AppState>,
    Path(t): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.broker.get_tenant(&TenantName::new(t)?)?))
}

pub async fn delete_tenant(
    State(s): State<AppState>,
    Path(t): Path<String>,
) -> ApiResult<impl IntoResponse> {
    s.broker.delete_tenant(&TenantName::new(t)?)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SetPassword {
    password: String,
    /// Roles ACL rules grant rights to; absent: unchanged (none for a new
    /// user).
    #[serde(default)]
    roles: Option<Vec<String>>,
    /// The user's quotas; absent: unchanged (none for a new user).
    #[serde(default)]
    quotas: Option<fjord_meta::Quotas>,
}

pub async fn list_users(
    State(s): State<AppState>,
    Path(t): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(
        serde_json::json!({"users": s.broker.list_users(&TenantName::new(t)?)?}),
    ))
}

/// Creates the user or sets its password. Argon2 hashing is slow by
/// design: it runs off the async workers.
pub async fn put_user(
    State(s): State<AppState>,
    Path((t, user)): Path<(String, String)>,
    body: crate::memory::RawBody,
) -> ApiResult<impl IntoResponse> {
    let req: SetPassword = parse_json(&crate::memory::body_bytes(body)?)?;
    let tenant = TenantName::new(t)?;
    let view = tokio::task::spawn_blocking(move || {
        s.broker
            .set_user(&tenant, &user, &req.password, req.roles, req.quotas)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "storage_error",
            format!("hashing task: {e}"),
        )
    })??;
    Ok(Json(view))
}

pub async fn delete_user(
    State(s): State<AppState>,
    Path((t, user)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    s.broker.delete_user(&TenantName::new(t)?, &user)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateNamespace {
    name: String,
    #[serde(default)]
    policy: Policy,
}

pub async fn list_namespaces(
    State(s): State<AppState>,
    Path(t): Path<String>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(
        serde_json::json!({"namespaces": s.broker.list_namespaces(&TenantName::new(t)?)?}),
    ))
}

pub async fn create_namespace(
    State(s): State<AppState>,
    Path(t): Path<String>,
    body: crate::memory::RawBody,
) -> ApiResult<impl IntoResponse> {
    let req: CreateNamespace = parse_json(&crate::memory::body_bytes(body)?)?;
    let ns = s.broker.create_namespace(
        &TenantName::new(t)?,
        &NamespaceName::new(req.name)?,
        req.policy,
    )?;
    Ok((StatusCode::CREATED, Json(ns)))
}

pub async fn get_namespace(
    State(s): State<AppState>,
    Path((t, ns)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(s.broker.get_namespace(
        &TenantName::new(t)?,
        &NamespaceName::new(ns)?,
    )?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutNamespace {
    policy: Policy,
}

/// Replaces the namespace's policy; streams pick it up at once.
pub async fn put_namespace(
    State(s): State<AppState>,
    Path((t, ns)): Path<(String, String)>,
    body: crate::memory::RawBody,
) -> ApiResult<impl IntoResponse> {
    let req: PutNamespace = parse_json(&crate::memory::body_bytes(body)?)?;
    Ok(Json(s.broker.set_namespace_policy(
        &TenantName::new(t)?,
        &NamespaceName::new(ns)?,
        req.policy,
    )?))
}

pub async fn delete_namespace(
    State(s): State<AppState>,
    Path((t, ns)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    s.broker
        .delete_namespace(&TenantName::new(t)?, &NamespaceName::new(ns)?)?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateStream {
    name: String,
    #[serde(default)]
    partitions: Option<u32>,
    #[serde(default)]
    policy: Policy,
}

pub async fn list_streams(
    State(s): State<AppState>,
    Path((t, ns)): Path<(String, String)>,
) -> ApiResult<impl IntoResponse> {
    Ok(Json(
        serde_json::json!({"streams": s.broker.list_streams(&TenantName::new(t)?, &NamespaceName::new(ns)?)?}),
    ))
}

pub async fn create_stream(
    State(s): State<AppState>,
    Path((t, ns)): Path<(String, String)>,
    body: crate::memory::RawBody,
) -> ApiResult<impl IntoResponse> {
    let req: CreateStream = parse_json(&crate::memory::body_bytes(body)?)?;
    let r = stream_ref(&t, &ns, &req.name)?;
    let d = s.broker.create_stream(&r, req.partitions, req.policy)?;
    Ok((StatusCode::CREATED, Json(d)))
}

pub async fn describe_stream(
    State(s): State<AppState>,
    Path((t, ns, st)): Path<(String, String, String)>,
) -> ApiResult<impl IntoResponse> {
    let r = stream_ref(&t, &ns, &st)?;
    let mut d = serde_json::to_value(s.broker.describe_stream(&r)?).unwrap_or_default();
    let consumers: Vec<serde_json::Value> = s
        .broker
        .consumers(&r)?
        .into_iter()
        .map(|(name, offsets)| {
            serde_json::json!({
                "name": name,
                "offsets": offsets.iter().map(|(p, o)| serde_json::json!({"partition": p, "offset": o})).collect::<Vec<_>>(),
            })
        })
        .collect();
    d["consumers"] = serde_json::Value::Array(consumers);
    Ok(Json(d))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateStream {
    #[serde(default)]
    partitions: Option<u32>,
    #[serde(default)]
    policy: Option<Policy>,
}

pub async fn update_stream(
    State(s): State<AppState>,
    Path((t, ns, st)): Path<(String, String, String)>,
    body: crate::memory::RawBody,
) -> ApiResult<impl IntoResponse> {
    let req: UpdateStream = parse_json(&crate::memory::body_bytes(body)?)?;
    let r = stream_ref(&t, &ns, &st)?;
    Ok(Json(s.broker.update_stream(
        &r,
        req.partitions,
        req.policy,
    )?))
}

pub async fn delete_stream(
    State(s): State<AppState>,
    Path((t, ns, st)): Path<(String, String, String)>,
) -> ApiResult<impl IntoResponse> {
    s.broker.delete_stream(&stream_ref(&t, &ns, &st)?).await?;
    Ok(StatusCode::NO_CONTENT)
}
