//! Fjord's HTTP front-end (axum): admin CRUD for tenants, namespaces and
//! streams; produce and consume; WebSocket publish and subscribe; Prometheus
//! metrics, health and readiness probes; and the OpenAPI document.
//!
//! Handlers only parse, call the broker and shape the answer: every rule
//! (names, sizes, durability) lives in the broker and below.

mod access;
mod admin;
mod codec;
mod error;
pub mod listener;
mod memory;
mod ops;
mod records;
pub mod security_api;
pub mod sql;
mod ws;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{delete, get, post, put};
use axum::Router;
use fjord_broker::Broker;

pub use error::ApiError;

/// The OpenAPI 3 document of this API.
pub const OPENAPI_JSON: &str = include_str!("openapi.json");

/// Bodies larger than this are refused before they are read whole.
pub const BODY_BYTES_MAX: usize = 64 * 1024 * 1024 + 1024 * 1024;

#[derive(Clone)]
pub struct AppState {
    pub broker: Arc<Broker>,
    /// The node's TLS material and listeners, for the admin API.
    pub tls: Option<security_api::TlsAdmin>,
    /// SQL, when the node runs it (`POST /v1/sql`).
    pub sql: Option<Arc<dyn sql::SqlService>>,
}

/// The whole HTTP API.
pub fn router(broker: Arc<Broker>) -> Router {
    router_with_tls(broker, None)
}

/// The whole HTTP API, with the node's TLS listeners shown and reloadable
/// through `/v1/admin/tls`.
pub fn router_with_tls(broker: Arc<Broker>, tls: Option<security_api::TlsAdmin>) -> Router {
    router_with(broker, tls, None)
}

/// The whole HTTP API, with TLS administration and SQL when given.
pub fn router_with(
    broker: Arc<Broker>,
    tls: Option<security_api::TlsAdmin>,
    sql: Option<Arc<dyn sql::SqlService>>,
) -> Router {
    let state = AppState { broker, tls, sql };
    Router::new()
        .route("/healthz", get(ops::healthz))
        .route("/readyz", get(ops::readyz))
        .route("/metrics", get(ops::metrics))
        .route("/v1/openapi.json", get(ops::openapi))
        .route(
            "/v1/tenants",
            get(admin::list_tenants).post(admin::create_tenant),
        )
        .route(
            "/v1/tenants/{tenant}",
            get(admin::get_tenant)
                .patch(security_api::patch_tenant)
                .delete(admin::delete_tenant),
        )
        .route(
            "/v1/tenants/{tenant}/acls",
            get(security_api::list_acls).post(security_api::add_acl),
        )
        .route(
            "/v1/tenants/{tenant}/acls/{id}",
            delete(security_api::delete_acl),
        )
        .route(
            "/v1/tenants/{tenant}/tokens",
            post(security_api::issue_token),
        )
        .route("/v1/admin/tls", get(security_api::tls_status))
        .route("/v1/admin/tls/reload", post(security_api::tls_reload))
        .route("/v1/tenants/{tenant}/users", get(admin::list_users))
        .route(
            "/v1/tenants/{tenant}/users/{user}",
            put(admin::put_user).delete(admin::delete_user),
        )
        .route(
            "/v1/tenants/{tenant}/namespaces",
            get(admin::list_namespaces).post(admin::create_namespace),
        )
        .route(
            "/v1/tenants/{tenant}/namespaces/{namespace}",
            get(admin::get_namespace)
                .put(admin::put_namespace)
                .delete(admin::delete_namespace),
        )
        .route(
            "/v1/streams/{tenant}/{namespace}",
            get(admin::list_streams).post(admin::create_stream),
        )
        .route(
            "/v1/streams/{tenant}/{namespace}/{stream}",
            get(admin::describe_stream)
                .patch(admin::update_stream)
                .delete(admin::delete_stream),
        )
        .route(
            "/v1/streams/{tenant}/{namespace}/{stream}/records",
            get(records::consume).post(records::produce),
        )
        .route(
            "/v1/streams/{tenant}/{namespace}/{stream}/consumers",
            get(records::list_consumers),
        )
        .route(
            "/v1/streams/{tenant}/{namespace}/{stream}/consumers/{consumer}",
            get(records::get_consumer).put(records::commit_consumer),
        )
        .route(
            "/v1/streams/{tenant}/{namespace}/{stream}/ws",
            get(ws::upgrade),
        )
        .route("/v1/sql", post(sql::run))
        .route("/v1/sql/ws", get(sql::push))
        .fallback(ops::not_found)
        .method_not_allowed_fallback(ops::method_not_allowed)
        .layer(DefaultBodyLimit::max(BODY_BYTES_MAX))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            memory::reserve_body,
        ))
        // Outermost: nothing is read or reserved for a request refused.
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::check,
        ))
        .with_state(state)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// Every route the router serves is in the OpenAPI document and every
    /// documented operation is routed (the live side of this check, that
    /// each documented operation answers with a documented status, is in the
    /// binary's `openapi` test).
    #[test]
    fn openapi_lists_exactly_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(super::OPENAPI_JSON).expect("valid JSON");
        let mut documented = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for m in ["get", "post", "put", "patch", "delete"] {
                if item.get(m).is_some() {
                    documented.insert((path.clone(), m.to_string()));
                }
            }
        }
        let src = include_str!("lib.rs");
        let router_src = &src
            [src.find("pub fn router").expect("router")..src.find("#[cfg(test)]").expect("tests")];
        let mut routed = BTreeSet::new();
        for chunk in router_src.split(".route(").skip(1) {
            let chunk = &chunk[..chunk.find(".fallback").unwrap_or(chunk.len())];
            let path = chunk.split('"').nth(1).expect("a path literal").to_string();
            for m in ["get", "post", "put", "patch", "delete"] {
                let call = format!("{m}(");
                let called = chunk.match_indices(&call).any(|(i, _)| {
                    i > 0 && matches!(chunk.as_bytes()[i - 1], b' ' | b'.' | b'\n' | b'(')
                });
                if called {
                    routed.insert((path.clone(), m.to_string()));
                }
            }
        }
        assert_eq!(routed, documented);
    }
}
