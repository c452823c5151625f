//! Authentication and authorisation of every HTTP request, in one place:
//! each route's requirement is read off its method and path ([`need`]), so
//! no handler can forget a check.
//!
//! Credentials: `Authorization: Basic` (`tenant:user` and password),
//! `Authorization: Bearer <JWT>`, an `access_token` query parameter (for
//! browsers' WebSockets, which cannot set headers; RFC 6750 §2.3), or a
//! verified client certificate. Without any, the request is anonymous in
//! the tenant its path names (or `public`), where that tenant admits
//! anonymous clients. Missing or wrong credentials: 401 with
//! `WWW-Authenticate`; a principal without the right: 403.

use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use fjord_auth::acl::{Action, Resource};
use fjord_auth::{Peer, Principal};
use fjord_broker::auth::AuthError;
use fjord_broker::Broker;
use fjord_core::TenantName;

use crate::error::ApiError;
use crate::AppState;

/// What a request needs.
#[derive(Debug, PartialEq, Eq)]
enum Need<'a> {
    /// Probes and the API description.
    Open,
    /// Node administrators only (tenants, metrics).
    NodeAdmin,
    /// Any authenticated principal (lists filtered to what it may see).
    Anyone,
    In {
        tenant: &'a str,
        action: Action,
        resource: Res<'a>,
        /// A consumer group the request also acts as.
        group: Option<String>,
    },
}

#[derive(Debug, PartialEq, Eq)]
enum Res<'a> {
    Tenant,
    Namespace(&'a str),
    Stream(&'a str, &'a str),
}

fn query_param<'a>(query: Option<&'a str>, name: &str) -> Option<&'a str> {
    query?
        .split('&')
        .find_map(|kv| kv.strip_prefix(name)?.strip_prefix('='))
}

fn need<'a>(method: &Method, path: &'a str, query: Option<&'a str>) -> Need<'a> {
    let seg: Vec<&str> = path.trim_matches('/').split('/').collect();
    let read = method == Method::GET || method == Method::HEAD;
    let in_tenant = |tenant, action, resource| Need::In {
        tenant,
        action,
        resource,
        group: None,
    };
    match seg.as_slice() {
        ["healthz"] | ["readyz"] | ["v1", "openapi.json"] => Need::Open,
        ["metrics"] | ["v1", "admin", ..] => Need::NodeAdmin,
        ["v1", "tenants"] if read => Need::Anyone,
        ["v1", "tenants"] => Need::NodeAdmin,
        ["v1", "tenants", _] if method == Method::DELETE => Need::NodeAdmin,
        ["v1", "tenants", t] if read => in_tenant(t, Action::Describe, Res::Tenant),
        ["v1", "tenants", t, "namespaces", ns] if read => {
            in_tenant(t, Action::Describe, Res::Namespace(ns))
        }
        ["v1", "tenants", t, "namespaces"] if read => in_tenant(t, Action::Describe, Res::Tenant),
        // Users, rules, tokens, namespaces: the tenant's administration.
        ["v1", "tenants", t, ..] => in_tenant(t, Action::Admin, Res::Tenant),
        ["v1", "streams", t, ns] if read => in_tenant(t, Action::Describe, Res::Namespace(ns)),
        ["v1", "streams", t, ns] => in_tenant(t, Action::Admin, Res::Namespace(ns)),
        ["v1", "streams", t, ns, s] if read => in_tenant(t, Action::Describe, Res::Stream(ns, s)),
        ["v1", "streams", t, ns, s] => in_tenant(t, Action::Admin, Res::Stream(ns, s)),
        ["v1", "streams", t, ns, s, "records"] if read => Need::In {
            tenant: t,
            action: Action::Subscribe,
            resource: Res::Stream(ns, s),
            group: query_param(query, "consumer").map(str::to_string),
        },
        ["v1", "streams", t, ns, s, "records"] => in_tenant(t, Action::Publish, Res::Stream(ns, s)),
        ["v1", "streams", t, ns, s, "consumers"] => {
            in_tenant(t, Action::Describe, Res::Stream(ns, s))
        }
        ["v1", "streams", t, ns, s, "consumers", c] => Need::In {
            tenant: t,
            action: if read {
                Action::Describe
            } else {
                Action::Subscribe
            },
            resource: Res::Stream(ns, s),
            group: Some(c.to_string()),
        },
        // A WebSocket publishes (`mode=publish`) or subscribes.
        ["v1", "streams", t, ns, s, "ws"] if query_param(query, "mode") == Some("publish") => {
            in_tenant(t, Action::Publish, Res::Stream(ns, s))
        }
        ["v1", "streams", t, ns, s, "ws"] => Need::In {
            tenant: t,
            action: Action::Subscribe,
            resource: Res::Stream(ns, s),
            group: query_param(query, "consumer").map(str::to_string),
        },
        // SQL: any principal; the catalog shows each only the streams it
        // may read.
        ["v1", "sql"] | ["v1", "sql", "ws"] => Need::Anyone,
        // Anything else is a 404 or 405 from the router; it needs a
        // principal all the same (nothing is learnt without one).
        _ => Need::Anyone,
    }
}

/// Basic credentials `tenant:user:password`, or `user:password` for a
/// user of `public` (whose password then holds no colon): the login and
/// the password.
fn basic_login(decoded: &str) -> Option<(String, String)> {
    let mut parts = decoded.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(t), Some(u), Some(pw)) => Some((format!("{t}:{u}"), pw.to_string())),
        (Some(u), Some(pw), None) => Some((u.to_string(), pw.to_string())),
        _ => None,
    }
}

/// Takes `access_token` out of the query once it has been checked, so
/// handlers (and anything they log) never see the credential.
fn strip_access_token(req: &mut Request) {
    let Some(q) = req.uri().query() else { return };
    if !q.split('&').any(|kv| kv.starts_with("access_token=")) {
        return;
    }
    let rest: Vec<&str> = q
        .split('&')
        .filter(|kv| !kv.starts_with("access_token="))
        .collect();
    let path_and_query = if rest.is_empty() {
        req.uri().path().to_string()
    } else {
        format!("{}?{}", req.uri().path(), rest.join("&"))
    };
    let mut parts = req.uri().clone().into_parts();
    if let Ok(pq) = path_and_query.parse() {
        parts.path_and_query = Some(pq);
        if let Ok(uri) = axum::http::Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
}

fn unauthorized(why: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", why).into_response();
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        header::HeaderValue::from_static("Basic realm=\"fjord\", Bearer realm=\"fjord\""),
    );
    r
}

fn forbidden(p: &Principal, what: &str) -> Response {
    ApiError::new(
        StatusCode::FORBIDDEN,
        "forbidden",
        format!("{} may not {what}", p.name()),
    )
    .into_response()
}

/// What a request offers to prove who sent it.
struct Creds {
    authorization: Option<String>,
    access_token: Option<String>,
    peer: Option<Peer>,
}

impl Creds {
    fn of(req: &Request) -> Self {
        Self {
            authorization: req
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string),
            access_token: query_param(req.uri().query(), "access_token").map(str::to_string),
            peer: req
                .extensions()
                .get::<ConnectInfo<Peer>>()
                .map(|c| c.0.clone()),
        }
    }
}

/// Who sent the request; `Err` is the 401 to answer.
async fn authenticate(
    broker: &Arc<Broker>,
    creds: Creds,
    path_tenant: Option<&str>,
) -> Result<Principal, Response> {
    let auth = creds.authorization.as_deref();
    let token = creds.access_token.as_deref();
    let outcome = match (auth, token) {
        (Some(h), _) => {
            let (scheme, value) = h.split_once(' ').unwrap_or((h, ""));
            if scheme.eq_ignore_ascii_case("basic") {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(value.trim())
                    .ok()
                    .and_then(|b| String::from_utf8(b).ok());
                let Some((login, password)) = decoded.as_deref().and_then(basic_login) else {
                    return Err(unauthorized("malformed Basic credentials"));
                };
                let b = broker.clone();
                tokio::task::spawn_blocking(move || b.authenticate(&login, &password))
                    .await
                    .unwrap_or(Err(AuthError::BadCredentials))
            } else if scheme.eq_ignore_ascii_case("bearer") {
                broker.authenticate_token(value.trim())
            } else {
                return Err(unauthorized("use Basic or Bearer authentication"));
            }
        }
        (None, Some(t)) => broker.authenticate_token(t),
        (None, None) => {
            let cert = creds.peer.as_ref().and_then(|p| p.cert_identity.clone());
            match cert {
                Some(id) => broker.authenticate_certificate(&id),
                None => match path_tenant.and_then(|t| TenantName::new(t).ok()) {
                    Some(t) if broker.anonymous_allowed(&t) => Ok(Principal::anonymous(t)),
                    _ => broker.anonymous_public(),
                },
            }
        }
    };
    outcome.map_err(|e| {
        let peer = creds
            .peer
            .as_ref()
            .map(|p| p.addr.to_string())
            .unwrap_or_default();
        tracing::warn!(peer = %peer, error = %e, "http authentication refused");
        if let Some(p) = &creds.peer {
            broker.audit(fjord_broker::audit::login_event(
                false,
                "http",
                p.addr,
                if creds.authorization.is_some() || creds.access_token.is_some() {
                    "credentials"
                } else {
                    "anonymous"
                },
                None,
                &e.to_string(),
            ));
        }
        if let Some(p) = &creds.peer {
            if !matches!(e, AuthError::AnonymousRefused(_)) {
                broker.login_failed(p.addr.ip(), "http");
            }
        }
        broker
            .metrics()
            .protocol_errors
            .with_label_values(&["http", "auth_failed"])
            .inc();
        unauthorized(&e.to_string())
    })
}

/// The middleware: authenticates, checks the route's requirement, and
/// hands the handler the principal (as a request extension).
pub async fn check(State(s): State<AppState>, mut req: Request, next: Next) -> Response {
    let path = req.uri().path().to_string();
    let query = req.uri().query().map(str::to_string);
    let need = need(req.method(), &path, query.as_deref());
    if need == Need::Open {
        return next.run(req).await;
    }
    let path_tenant = match &need {
        Need::In { tenant, .. } => Some(*tenant),
        _ => None,
    };
    let p = match authenticate(&s.broker, Creds::of(&req), path_tenant).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let b = &s.broker;
    let allowed = match &need {
        Need::Open | Need::Anyone => true,
        Need::NodeAdmin => {
            let ok = b.is_node_admin(&p);
            if !ok {
                b.metrics()
                    .denials
                    .with_label_values(&["http", "admin"])
                    .inc();
            }
            ok
        }
        Need::In {
            tenant,
            action,
            resource,
            group,
        } => match TenantName::new(*tenant) {
            // A malformed name: the handler answers 400.
            Err(_) => true,
            Ok(t) => {
                let resource = match resource {
                    Res::Tenant => Resource::Tenant,
                    Res::Namespace(ns) => Resource::Namespace(ns),
                    Res::Stream(ns, st) => Resource::Stream {
                        namespace: ns,
                        stream: st,
                        topic: None,
                    },
                };
                b.authorize_for("http", &p, &t, *action, resource)
                    && group.as_deref().is_none_or(|g| {
                        b.authorize_for("http", &p, &t, Action::Subscribe, Resource::Group(g))
                    })
            }
        },
    };
    if !allowed {
        let what = match &need {
            Need::In { action, .. } => format!("{} {path}", action.as_str()),
            _ => format!("use {path}"),
        };
        return forbidden(&p, &what);
    }
    let changes = !matches!(*req.method(), Method::GET | Method::HEAD)
        && (need == Need::NodeAdmin
            || matches!(
                need,
                Need::In {
                    action: Action::Admin,
                    ..
                }
            ));
    strip_access_token(&mut req);
    let p = Arc::new(p);
    req.extensions_mut().insert(p.clone());
    let method = req.method().clone();
    let r = next.run(req).await;
    if changes {
        // Administration is audited with its outcome (never its body:
        // passwords go through here).
        b.audit(
            fjord_auth::audit::AuditEvent::new(fjord_auth::audit::AuditKind::AdminChange, "http")
                .principal(&p)
                .action(format!("{method} {path}"))
                .detail(r.status().as_u16().to_string()),
        );
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_logins() {
        assert_eq!(
            basic_login("acme:alice:pw:with:colons"),
            Some(("acme:alice".into(), "pw:with:colons".into()))
        );
        assert_eq!(basic_login("bob:pw"), Some(("bob".into(), "pw".into())));
        assert_eq!(basic_login("nocolon"), None);
    }

    #[test]
    fn routes_map_to_requirements() {
        let get = Method::GET;
        let post = Method::POST;
        assert_eq!(need(&get, "/healthz", None), Need::Open);
        assert_eq!(need(&get, "/metrics", None), Need::NodeAdmin);
        assert_eq!(need(&post, "/v1/tenants", None), Need::NodeAdmin);
        assert_eq!(need(&get, "/v1/tenants", None), Need::Anyone);
        assert_eq!(
            need(&Method::PUT, "/v1/tenants/acme/users/bob", None),
            Need::In {
                tenant: "acme",
                action: Action::Admin,
                resource: Res::Tenant,
                group: None
            }
        );
        assert_eq!(
            need(&post, "/v1/streams/acme/default/t/records", None),
            Need::In {
                tenant: "acme",
                action: Action::Publish,
                resource: Res::Stream("default", "t"),
                group: None
            }
        );
        assert_eq!(
            need(
                &get,
                "/v1/streams/acme/default/t/records",
                Some("consumer=c1&x=1")
            ),
            Need::In {
                tenant: "acme",
                action: Action::Subscribe,
                resource: Res::Stream("default", "t"),
                group: Some("c1".into())
            }
        );
        assert_eq!(
            need(&get, "/v1/streams/acme/default/t/ws", Some("mode=publish")),
            Need::In {
                tenant: "acme",
                action: Action::Publish,
                resource: Res::Stream("default", "t"),
                group: None
            }
        );
        assert_eq!(
            need(&get, "/v1/streams/acme/default/t/ws", Some("from=earliest")),
            Need::In {
                tenant: "acme",
                action: Action::Subscribe,
                resource: Res::Stream("default", "t"),
                group: None
            }
        );
        assert_eq!(
            need(&Method::DELETE, "/v1/streams/acme/default/t", None),
            Need::In {
                tenant: "acme",
                action: Action::Admin,
                resource: Res::Stream("default", "t"),
                group: None
            }
        );
    }
}
