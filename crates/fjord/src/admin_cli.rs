//! The security administration commands of the CLI: users and roles, ACL
//! rules, tenant settings and quotas, development tokens, TLS status. Each
//! is one call of the node's admin API, so each needs the `admin` right
//! there (log in with `--user tenant:user` and FJORD_PASSWORD, or
//! `--token`).

use std::io::BufRead;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use reqwest::Method;
use serde_json::{json, Map, Value};

use crate::client::{print_json, Client, Conn};

#[derive(Subcommand)]
pub enum UserCmd {
    /// Create a user or set its password (read from the first line of
    /// stdin, or --password-file), roles and quotas.
    Set {
        /// `tenant:user`.
        login: String,
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// A role; repeat for several. Absent: the roles stay as they are.
        #[arg(long = "role")]
        roles: Vec<String>,
        /// A quota `name=value` (connections, publish_msgs_per_s,
        /// publish_bytes_per_s, subscriptions); repeatable.
        #[arg(long = "quota", value_parser = parse_quota)]
        quotas: Vec<(String, u64)>,
    },
    List {
        tenant: String,
    },
    Delete {
        /// `tenant:user`.
        login: String,
    },
}

#[derive(Subcommand)]
pub enum AclCmd {
    /// Add a rule: PRINCIPAL (user:<name>, role:<role>, anonymous, *) may
    /// (or, with --deny, may not) do ACTIONs on RESOURCE (tenant,
    /// namespace:<ns>, stream:<ns>/<glob>, topic:<filter>, group:<glob>).
    Add {
        tenant: String,
        #[arg(long)]
        principal: String,
        #[arg(long)]
        resource: String,
        /// publish, subscribe, describe, admin; repeatable.
        #[arg(long = "action", required = true)]
        actions: Vec<String>,
        #[arg(long)]
        deny: bool,
    },
    List {
        tenant: String,
    },
    Delete {
        tenant: String,
        id: String,
    },
}

#[derive(Subcommand)]
pub enum TenantCmd {
    Create {
        name: String,
    },
    List,
    /// Show a tenant, or change its security settings.
    Settings {
        name: String,
        /// Admit anonymous clients: true, false, or default (only public).
        #[arg(long)]
        anonymous: Option<String>,
        /// What requests no ACL rule decides get: allow, deny, or default.
        #[arg(long)]
        acl_default: Option<String>,
        /// A tenant quota `name=value` (connections, publish_msgs_per_s,
        /// publish_bytes_per_s, subscriptions, storage_bytes); repeatable;
        /// replaces the tenant's quotas.
        #[arg(long = "quota", value_parser = parse_quota)]
        quotas: Vec<(String, u64)>,
    },
    Delete {
        name: String,
    },
}

#[derive(Subcommand)]
pub enum TokenCmd {
    /// Sign a development JWT for `tenant:user` (the node needs an HS256
    /// secret).
    Issue {
        login: String,
        #[arg(long = "role")]
        roles: Vec<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
    },
}

#[derive(Subcommand)]
pub enum TlsCmd {
    /// The certificate in use and the TLS listeners.
    Status,
    /// Re-read the certificate files now.
    Reload,
}

fn parse_quota(s: &str) -> Result<(String, u64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("quota {s:?} is not name=value"))?;
    let v = v
        .parse()
        .map_err(|_| format!("quota {k}: {v:?} is not a whole number"))?;
    Ok((k.to_string(), v))
}

fn split_login(login: &str) -> Result<(&str, &str)> {
    login
        .split_once(':')
        .with_context(|| format!("{login:?} is not tenant:user"))
}

fn quotas_json(q: &[(String, u64)]) -> Value {
    Value::Object(
        q.iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<Map<_, _>>(),
    )
}

/// `true`/`false` → that, `default` → null (unset).
fn tri(v: &str, what: &str, allowed: &[&str]) -> Result<Value> {
    match v {
        "default" => Ok(Value::Null),
        "true" => Ok(json!(true)),
        "false" => Ok(json!(false)),
        other if allowed.contains(&other) => Ok(json!(other)),
        other => bail!("--{what} {other:?}: use {} or default", allowed.join(", ")),
    }
}

pub async fn user(conn: Conn, cmd: UserCmd) -> Result<()> {
    let c = Client::new(&conn)?;
    match cmd {
        UserCmd::Set {
            login,
            password_file,
            roles,
            quotas,
        } => {
            let (t, u) = split_login(&login)?;
            let password = match password_file {
                Some(f) => std::fs::read_to_string(&f)
                    .with_context(|| format!("reading {}", f.display()))?,
                None => {
                    let mut line = String::new();
                    std::io::stdin()
                        .lock()
                        .read_line(&mut line)
                        .context("reading the password from stdin")?;
                    line
                }
            };
            let mut body = json!({ "password": password.trim_end_matches(['\r', '\n']) });
            if !roles.is_empty() {
                body["roles"] = json!(roles);
            }
            if !quotas.is_empty() {
                body["quotas"] = quotas_json(&quotas);
            }
            let v = c
                .call(
                    Method::PUT,
                    &format!("/v1/tenants/{t}/users/{u}"),
                    Some(body),
                )
                .await?;
            print_json(&v);
        }
        UserCmd::List { tenant } => print_json(
            &c.call(Method::GET, &format!("/v1/tenants/{tenant}/users"), None)
                .await?,
        ),
        UserCmd::Delete { login } => {
            let (t, u) = split_login(&login)?;
            c.call(Method::DELETE, &format!("/v1/tenants/{t}/users/{u}"), None)
                .await?;
        }
    }
    Ok(())
}

pub async fn acl(conn: Conn, cmd: AclCmd) -> Result<()> {
    let c = Client::new(&conn)?;
    match cmd {
        AclCmd::Add {
            tenant,
            principal,
            resource,
            actions,
            deny,
        } => {
            let body = json!({
                "principal": principal,
                "resource": resource,
                "actions": actions,
                "effect": if deny { "deny" } else { "allow" },
            });
            print_json(
                &c.call(
                    Method::POST,
                    &format!("/v1/tenants/{tenant}/acls"),
                    Some(body),
                )
                .await?,
            );
        }
        AclCmd::List { tenant } => print_json(
            &c.call(Method::GET, &format!("/v1/tenants/{tenant}/acls"), None)
                .await?,
        ),
        AclCmd::Delete { tenant, id } => {
            c.call(
                Method::DELETE,
                &format!("/v1/tenants/{tenant}/acls/{id}"),
                None,
            )
            .await?;
        }
    }
    Ok(())
}

pub async fn tenant(conn: Conn, cmd: TenantCmd) -> Result<()> {
    let c = Client::new(&conn)?;
    match cmd {
        TenantCmd::Create { name } => print_json(
            &c.call(Method::POST, "/v1/tenants", Some(json!({ "name": name })))
                .await?,
        ),
        TenantCmd::List => print_json(&c.call(Method::GET, "/v1/tenants", None).await?),
        TenantCmd::Settings {
            name,
            anonymous,
            acl_default,
            quotas,
        } => {
            let mut patch = Map::new();
            if let Some(a) = anonymous {
                patch.insert("anonymous".into(), tri(&a, "anonymous", &[])?);
            }
            if let Some(d) = acl_default {
                patch.insert(
                    "acl_default".into(),
                    tri(&d, "acl-default", &["allow", "deny"])?,
                );
            }
            if !quotas.is_empty() {
                patch.insert("quotas".into(), quotas_json(&quotas));
            }
            let path = format!("/v1/tenants/{name}");
            let v = if patch.is_empty() {
                c.call(Method::GET, &path, None).await?
            } else {
                c.call(Method::PATCH, &path, Some(Value::Object(patch)))
                    .await?
            };
            print_json(&v);
        }
        TenantCmd::Delete { name } => {
            c.call(Method::DELETE, &format!("/v1/tenants/{name}"), None)
                .await?;
        }
    }
    Ok(())
}

pub async fn token(conn: Conn, cmd: TokenCmd) -> Result<()> {
    let c = Client::new(&conn)?;
    match cmd {
        TokenCmd::Issue { login, roles, ttl } => {
            let (t, u) = split_login(&login)?;
            let v = c
                .call(
                    Method::POST,
                    &format!("/v1/tenants/{t}/tokens"),
                    Some(json!({ "user": u, "roles": roles, "ttl_s": ttl })),
                )
                .await?;
            // The token alone, ready for FJORD_TOKEN or an MQTT password.
            println!("{}", v["token"].as_str().unwrap_or_default());
        }
    }
    Ok(())
}

pub async fn tls(conn: Conn, cmd: TlsCmd) -> Result<()> {
    let c = Client::new(&conn)?;
    let v = match cmd {
        TlsCmd::Status => c.call(Method::GET, "/v1/admin/tls", None).await?,
        TlsCmd::Reload => c.call(Method::POST, "/v1/admin/tls/reload", None).await?,
    };
    print_json(&v);
    Ok(())
}
