//! Authorisation: ACL rules of a tenant, and the decision for one request.
//!
//! A rule is *principal × resource pattern × actions → allow | deny*:
//!
//! * principal: `user:<name>`, `role:<role>`, `anonymous` or `*`;
//! * resource: `tenant` (everything of the tenant), `namespace:<ns>`,
//!   `stream:<ns>/<glob>`, `topic:<MQTT filter>`, `group:<glob>` (consumer
//!   groups, named cursors, MQTT share names);
//! * actions: `publish`, `subscribe`, `describe`, `admin`.
//!
//! A request is allowed when a matching rule allows it and none denies it
//! (deny wins). With no matching rule the built-in role `admin` is allowed
//! everything in its tenant, and everyone else gets the tenant's default
//! (`allow` unless configured `deny`). `publish` and `subscribe` imply
//! `describe` of the same resource, as Kafka's WRITE and READ imply
//! DESCRIBE. Tenants never share anything: rules only ever see requests of
//! their own tenant's principals on their own tenant's resources (the
//! caller checks the tenant first).

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::identity::Principal;

/// The built-in role allowed everything in its tenant.
pub const ADMIN_ROLE: &str = "admin";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Publish,
    Subscribe,
    Describe,
    Admin,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Publish => "publish",
            Action::Subscribe => "subscribe",
            Action::Describe => "describe",
            Action::Admin => "admin",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    #[default]
    Allow,
    Deny,
}

/// One rule as the admin API and the store hold it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AclRule {
    pub principal: String,
    pub resource: String,
    pub actions: Vec<Action>,
    #[serde(default)]
    pub effect: Effect,
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AclError {
    #[error("principal {0:?} must be user:<name>, role:<role>, anonymous or *")]
    Principal(String),
    #[error("resource {0:?} must be tenant, namespace:<ns>, stream:<ns>/<glob>, topic:<filter> or group:<glob>")]
    Resource(String),
    #[error("a rule names at least one action")]
    NoActions,
}

/// What a request touches. An MQTT publish names both its topic and the
/// stream the topic maps to; a rule on either applies.
#[derive(Debug, Clone, Copy)]
pub enum Resource<'a> {
    /// The tenant itself (users, ACLs, namespaces, listing).
    Tenant,
    Namespace(&'a str),
    Stream {
        namespace: &'a str,
        stream: &'a str,
        /// The MQTT topic (publish) or filter (subscribe), when MQTT.
        topic: Option<&'a str>,
    },
    Group(&'a str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Who {
    User(String),
    Role(String),
    Anonymous,
    Anyone,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Tenant,
    Namespace(String),
    Stream(String, String),
    Topic(String),
    Group(String),
}

#[derive(Debug, Clone)]
struct Compiled {
    who: Who,
    pattern: Pattern,
    actions: Vec<Action>,
    effect: Effect,
}

impl AclRule {
    fn compile(&self) -> Result<Compiled, AclError> {
        let who = match self.principal.as_str() {
            "*" => Who::Anyone,
            "anonymous" => Who::Anonymous,
            p => match p.split_once(':') {
                Some(("user", u)) if !u.is_empty() => Who::User(u.to_string()),
                Some(("role", r)) if !r.is_empty() => Who::Role(r.to_string()),
                _ => return Err(AclError::Principal(p.to_string())),
            },
        };
        let bad = || AclError::Resource(self.resource.clone());
        let pattern = match self.resource.split_once(':') {
            None if self.resource == "tenant" => Pattern::Tenant,
            Some(("namespace", ns)) if !ns.is_empty() => Pattern::Namespace(ns.to_string()),
            Some(("stream", s)) => {
                let (ns, st) = s.split_once('/').ok_or_else(bad)?;
                if ns.is_empty() || st.is_empty() {
                    return Err(bad());
                }
                Pattern::Stream(ns.to_string(), st.to_string())
            }
            Some(("topic", f)) if valid_filter(f) => Pattern::Topic(f.to_string()),
            Some(("group", g)) if !g.is_empty() => Pattern::Group(g.to_string()),
            _ => return Err(bad()),
        };
        if self.actions.is_empty() {
            return Err(AclError::NoActions);
        }
        Ok(Compiled {
            who,
            pattern,
            actions: self.actions.clone(),
            effect: self.effect,
        })
    }

    /// Checks the rule's form.
    pub fn validate(&self) -> Result<(), AclError> {
        self.compile().map(|_| ())
    }
}

fn valid_filter(f: &str) -> bool {
    !f.is_empty()
        && f.split('/').enumerate().all(|(i, level)| {
            let last = i == f.split('/').count() - 1;
            match level {
                "#" => last,
                "+" => true,
                l => !l.contains(['#', '+']),
            }
        })
}

/// `*` any run of characters, `?` one character.
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, s) = (pattern.as_bytes(), s.as_bytes());
    let (mut pi, mut si, mut star, mut mark) = (0, 0, None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Whether every topic `sub` matches is matched by `rule` (for a topic
/// name, simply whether `rule` matches it).
fn filter_covers(rule: &str, sub: &str) -> bool {
    let mut r = rule.split('/');
    let mut s = sub.split('/');
    loop {
        match (r.next(), s.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(l)) => {
                if l == "#" {
                    return false;
                }
            }
            (Some(a), Some(b)) => {
                if a != b {
                    return false;
                }
            }
            (None, None) => return true,
            _ => return false,
        }
    }
}

impl Compiled {
    fn applies_to(&self, p: &Principal) -> bool {
        match &self.who {
            Who::Anyone => true,
            Who::Anonymous => p.is_anonymous(),
            Who::User(u) => !p.is_anonymous() && &p.user == u,
            Who::Role(r) => p.roles.iter().any(|x| x == r),
        }
    }

    fn covers(&self, r: &Resource<'_>) -> bool {
        match (&self.pattern, r) {
            (Pattern::Tenant, _) => true,
            (Pattern::Namespace(ns), Resource::Namespace(n)) => ns == n,
            (Pattern::Namespace(ns), Resource::Stream { namespace: n, .. }) => ns == n,
            (
                Pattern::Stream(ns, g),
                Resource::Stream {
                    namespace, stream, ..
                },
            ) => (ns == "*" || ns == namespace) && glob(g, stream),
            (Pattern::Topic(f), Resource::Stream { topic: Some(t), .. }) => filter_covers(f, t),
            (Pattern::Group(g), Resource::Group(name)) => glob(g, name),
            _ => false,
        }
    }

    fn grants(&self, action: Action) -> bool {
        self.actions.contains(&action)
            || (action == Action::Describe
                && self
                    .actions
                    .iter()
                    .any(|a| matches!(a, Action::Publish | Action::Subscribe)))
    }
}

/// A tenant's rules, compiled once and shared by every check.
#[derive(Debug, Clone, Default)]
pub struct Acl {
    rules: Vec<Compiled>,
    default: Effect,
}

impl Acl {
    /// Compiles `rules` (already validated when stored; an invalid one is
    /// skipped, never widened).
    pub fn new(rules: &[AclRule], default: Effect) -> Self {
        Self {
            rules: rules.iter().filter_map(|r| r.compile().ok()).collect(),
            default,
        }
    }

    /// Whether nothing can be denied: no rules and an allowing default (the
    /// check then costs nothing).
    pub fn allows_everything(&self) -> bool {
        self.rules.is_empty() && self.default == Effect::Allow
    }

    pub fn check(&self, p: &Principal, action: Action, resource: Resource<'_>) -> bool {
        let mut allowed = false;
        for r in &self.rules {
            if r.applies_to(p) && r.grants(action) && r.covers(&resource) {
                match r.effect {
                    Effect::Deny => return false,
                    Effect::Allow => allowed = true,
                }
            }
        }
        allowed || p.roles.iter().any(|r| r == ADMIN_ROLE) || self.default == Effect::Allow
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Method;
    use fjord_core::TenantName;

    fn who(user: &str, roles: &[&str]) -> Principal {
        Principal {
            tenant: TenantName::new("acme").unwrap(),
            user: user.into(),
            roles: roles.iter().map(|r| r.to_string()).collect(),
            method: Method::Password,
        }
    }

    fn rule(principal: &str, resource: &str, actions: &[Action], effect: Effect) -> AclRule {
        AclRule {
            principal: principal.into(),
            resource: resource.into(),
            actions: actions.to_vec(),
            effect,
        }
    }

    fn stream<'a>(s: &'a str, topic: Option<&'a str>) -> Resource<'a> {
        Resource::Stream {
            namespace: "default",
            stream: s,
            topic,
        }
    }

    #[test]
    fn deny_by_default_with_grants_by_topic_stream_and_role() {
        use Action::*;
        let acl = Acl::new(
            &[
                rule(
                    "role:devices",
                    "topic:plant1/+/temp",
                    &[Publish],
                    Effect::Allow,
                ),
                rule(
                    "user:dash",
                    "stream:default/plant*",
                    &[Subscribe],
                    Effect::Allow,
                ),
                rule("*", "stream:default/secret", &[Subscribe], Effect::Deny),
                rule("user:dash", "group:dash-*", &[Subscribe], Effect::Allow),
            ],
            Effect::Deny,
        );
        let device = who("d1", &["devices"]);
        assert!(acl.check(&device, Publish, stream("plant1", Some("plant1/l4/temp"))));
        assert!(!acl.check(&device, Publish, stream("plant1", Some("plant1/l4/hum"))));
        assert!(!acl.check(&device, Subscribe, stream("plant1", Some("plant1/+/temp"))));
        // Publishing implies describing.
        assert!(acl.check(&device, Describe, stream("plant1", Some("plant1/l4/temp"))));
        let dash = who("dash", &[]);
        assert!(acl.check(&dash, Subscribe, stream("plant17", None)));
        assert!(acl.check(&dash, Subscribe, Resource::Group("dash-main")));
        assert!(!acl.check(&dash, Subscribe, Resource::Group("other")));
        assert!(!acl.check(&dash, Admin, Resource::Tenant));
        // Deny wins, even over the admin role.
        let admin = who("root", &["admin"]);
        assert!(acl.check(&admin, Admin, Resource::Tenant));
        assert!(!acl.check(&admin, Subscribe, stream("secret", None)));
    }

    #[test]
    fn subscription_filters_must_be_covered() {
        let acl = Acl::new(
            &[rule(
                "*",
                "topic:a/+/c",
                &[Action::Subscribe],
                Effect::Allow,
            )],
            Effect::Deny,
        );
        let p = who("u", &[]);
        assert!(acl.check(&p, Action::Subscribe, stream("a", Some("a/b/c"))));
        assert!(acl.check(&p, Action::Subscribe, stream("a", Some("a/+/c"))));
        assert!(!acl.check(&p, Action::Subscribe, stream("a", Some("a/#"))));
        assert!(!acl.check(&p, Action::Subscribe, stream("a", Some("a/b/c/d"))));
    }

    #[test]
    fn anonymous_rules_and_open_default() {
        let acl = Acl::new(
            &[rule("anonymous", "tenant", &[Action::Admin], Effect::Deny)],
            Effect::Allow,
        );
        let anon = Principal::anonymous(TenantName::new("public").unwrap());
        assert!(!acl.check(&anon, Action::Admin, Resource::Tenant));
        assert!(acl.check(&anon, Action::Publish, stream("x", None)));
        assert!(acl.check(&who("u", &[]), Action::Admin, Resource::Tenant));
        assert!(Acl::default().allows_everything());
    }

    #[test]
    fn malformed_rules_are_refused() {
        for (p, r) in [
            ("someone", "tenant"),
            ("user:", "tenant"),
            ("*", "stream:nons"),
            ("*", "topic:a/#/b"),
            ("*", "bucket:x"),
        ] {
            assert!(
                rule(p, r, &[Action::Publish], Effect::Allow)
                    .validate()
                    .is_err(),
                "{p} {r}"
            );
        }
        assert_eq!(
            rule("*", "tenant", &[], Effect::Allow).validate(),
            Err(AclError::NoActions)
        );
    }

    #[test]
    fn globs() {
        assert!(glob("plant*", "plant"));
        assert!(glob("plant*", "plant42"));
        assert!(glob("p?ant", "plant"));
        assert!(glob("*-main", "dash-main"));
        assert!(!glob("plant*", "plan"));
        assert!(glob("*", ""));
    }
}
