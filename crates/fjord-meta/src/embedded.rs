//! The embedded [`MetaStore`]: one `redb` database file, one table per kind,
//! keys built from names joined by `/` (names cannot hold `/`, so a prefix
//! range lists the children of a parent exactly).

use std::path::Path;

use fjord_core::names::DEFAULT_NAMESPACE;
use fjord_core::{NamespaceName, Policy, StreamRef, TenantName};
use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{
    ConsumerOffsets, MetaError, MetaStore, NamespaceInfo, StreamInfo, TenantInfo, UserInfo,
};

const TENANTS: TableDefinition<&str, &[u8]> = TableDefinition::new("tenants");
const NAMESPACES: TableDefinition<&str, &[u8]> = TableDefinition::new("namespaces");
const STREAMS: TableDefinition<&str, &[u8]> = TableDefinition::new("streams");
/// Key `tenant/ns/stream/consumer/partition` → committed offset.
const CURSORS: TableDefinition<&str, i64> = TableDefinition::new("cursors");
/// Key `tenant/user` → [`UserInfo`].
const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
/// Key `tenant/client id` → opaque session state.
const SESSIONS: TableDefinition<&str, &[u8]> = TableDefinition::new("sessions");
const ACLS: TableDefinition<&str, &[u8]> = TableDefinition::new("acls");
/// Key `tenant/query` → opaque query definition.
const QUERIES: TableDefinition<&str, &[u8]> = TableDefinition::new("queries");
/// Key `tenant/query` → the query's latest checkpoint.
const CHECKPOINTS: TableDefinition<&str, &[u8]> = TableDefinition::new("checkpoints");

pub struct EmbeddedStore {
    db: Database,
}

fn enc<T: Serialize>(v: &T) -> Result<Vec<u8>, MetaError> {
    Ok(serde_json::to_vec(v)?)
}

fn dec<T: DeserializeOwned>(b: &[u8]) -> Result<T, MetaError> {
    Ok(serde_json::from_slice(b)?)
}

/// The half-open key range of every key starting with `prefix`.
fn prefix_range(prefix: &str) -> (String, String) {
    // '/' + 1 == '0': everything under "a/" sorts below "a0".
    let mut end = prefix.to_string();
    end.pop();
    end.push('0');
    (prefix.to_string(), end)
}

fn stream_key(s: &StreamRef) -> String {
    format!("{}/{}/{}", s.tenant, s.namespace, s.stream)
}

impl EmbeddedStore {
    /// Opens (or creates) `meta.redb` under `dir`.
    pub fn open(dir: &Path) -> Result<Self, MetaError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| MetaError::Storage(format!("create {}: {e}", dir.display())))?;
        let path = dir.join("meta.redb");
        let db = Database::create(&path)
            .map_err(|e| MetaError::Storage(format!("open {}: {e}", path.display())))?;
        let tx = db.begin_write()?;
        tx.open_table(TENANTS)?;
        tx.open_table(NAMESPACES)?;
        tx.open_table(STREAMS)?;
        tx.open_table(CURSORS)?;
        tx.open_table(SESSIONS)?;
        tx.open_table(USERS)?;
        tx.open_table(ACLS)?;
        tx.open_table(QUERIES)?;
        tx.open_table(CHECKPOINTS)?;
        tx.commit()?;
        Ok(Self { db })
    }

    fn get<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        key: &str,
    ) -> Result<Option<T>, MetaError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table)?;
        let v = t.get(key)?;
        v.map(|g| dec(g.value())).transpose()
    }

    fn list<T: DeserializeOwned>(
        &self,
        table: TableDefinition<&str, &[u8]>,
        prefix: Option<&str>,
    ) -> Result<Vec<T>, MetaError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table)?;
        let mut out = Vec::new();
        match prefix {
            Some(p) => {
                let (a, b) = prefix_range(p);
                for item in t.range(a.as_str()..b.as_str())? {
                    let (_, v) = item?;
                    out.push(dec(v.value())?);
                }
            }
            None => {
                for item in t.iter()? {
                    let (_, v) = item?;
                    out.push(dec(v.value())?);
                }
            }
        }
        Ok(out)
    }
}

impl MetaStore for EmbeddedStore {
    fn create_tenant(&self, tenant: &TenantInfo) -> Result<(), MetaError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(TENANTS)?;
            if t.get(tenant.name.as_str())?.is_some() {
                return Err(MetaError::AlreadyExists {
                    kind: "tenant",
                    name: tenant.name.to_string(),
                });
            }
            t.insert(tenant.name.as_str(), enc(tenant)?.as_slice())?;
            let ns = NamespaceInfo {
                tenant: tenant.name.clone(),
                name: NamespaceName::new(DEFAULT_NAMESPACE).expect("valid"),
                policy: Policy::default(),
                created_ms: tenant.created_ms,
            };
            let mut n = tx.open_table(NAMESPACES)?;
            n.insert(
                format!("{}/{}", ns.tenant, ns.name).as_str(),
                enc(&ns)?.as_slice(),
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn get_tenant(&self, name: &TenantName) -> Result<TenantInfo, MetaError> {
        self.get(TENANTS, name.as_str())?
            .ok_or_else(|| MetaError::NotFound {
                kind: "tenant",
                name: name.to_string(),
            })
    }

    fn update_tenant(&self, tenant: &TenantInfo) -> Result<(), MetaError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(TENANTS)?;
            if t.get(tenant.name.as_str())?.is_none() {
                return Err(MetaError::NotFound {
                    kind: "tenant",
                    name: tenant.name.to_string(),
                });
            }
            t.insert(tenant.name.as_str(), enc(tenant)?.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    fn list_tenants(&self) -> Result<Vec<TenantInfo>, MetaError> {
        self.list(TENANTS, None)
    }

    fn delete_tenant(&self, name: &TenantName) -> Result<(), MetaError> {
        let tx = self.db.begin_write()?;
        {
            let mut t = tx.open_table(TENANTS)?;
            if t.remove(name.as_str())?.is_none() {
                return Err(MetaError::NotFound {
                    kind: "tenant",
                    name: name.to_string(),
                });
            }
            let (a, b) = prefix_range(&format!("{name}/"));
            let s = tx.open_table(STREAMS)?;
            let n_streams = s.range(a.as_str()..b.as_str())?.count();
            if n_streams > 0 {
                return Err(MetaError::NotEmpty {
                    kind: "tenant",
                    name: name.to_string(),
                    detail: format!("it has {n_streams} stream(s); delete them first"),
                });
            }
            // Its namespaces, users, rules and sessions go with it.
            for table in [NAMESPACES, USERS, ACLS, SESSIONS, QUERIES, CHECKPOINTS] {
                let mut n = tx.open_table(table)?;
                let keys: Vec<String> = n
                    .range(a.as_str()..b.as_str())?
                    .map(|r| r.map(|(k, _)| k.value().to_string()))
                    .collect::<Result<_, _>>()?;
                for k in keys {
                    n.remove(k.as_str())?;
                }
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn create_namespace(&self, ns: &NamespaceInfo) -> Result<(), MetaError> {
        let key = format!("{}/{}", ns.tenant, ns.name);
        let tx = self.db.begin_write()?;
        {
            if tx.open_table(TENANTS)?.get(ns.tenant.as_str())?.is_none() {
                return Err(MetaError::NotFound {
                    kind: "tenant",
                    name: ns.tenant.to_string(),
                });
            }
            let mut n = tx.open_table(NAMESPACES)?;
            if n.get(key.as_str())?.is_some() {
                return Err(MetaError::AlreadyExists {
                    kind: "namespace",
                    name: key,
                });
            }
            n.insert(key.as_str(), enc(ns)?.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    fn get_namespace(
        &self,
        tenant: &TenantName,
        ns: &NamespaceName,
    ) -> Result<NamespaceInfo, MetaError> {
        let key = format!("{tenant}/{ns}");
        self.get(NAMESPACES, &key)?.ok_or(MetaError::NotFound {
            kind: "namespace",
            name: key,
        })
    }

    fn list_namespaces(&self, tenant: &TenantName) -> Result<Vec<NamespaceInfo>, MetaError> {
        self.get_tenant(tenant)?;
        self.list(NAMESPACES, Some(&format!("{tenant}/")))
    }

    fn set_namespace_policy(
        &self,
        tenant: &TenantName,
        ns: &NamespaceName,
        policy: &Policy,
    ) -> Result<NamespaceInfo, MetaError> {
        let key = format!("{tenant}/{ns}");
        let tx = self.db.begin_write()?;
        let info = {
            let mut n = tx.open_table(NAMESPACES)?;
            let mut info: NamespaceInfo = match n.get(key.as_str())? {
                Some(v) => dec(v.value())?,
                None => {
                    return Err(MetaError::NotFound {
                        kind: "namespace",
                        name: key,
                    })
                }
            };
            info.policy = policy.clone();
            n.insert(key.as_str(), enc(&info)?.as_slice())?;
            info
        };
        tx.commit()?;
        Ok(info)
    }

    fn delete_namespace(&self, tenant: &TenantName, ns: &NamespaceName) -> Result<(), MetaError> {
        let key = format!("{tenant}/{ns}");
        let tx = self.db.begin_write()?;
        {
            let (a, b) = prefix_range(&format!("{key}/"));
            let n_streams = tx
                .open_table(STREAMS)?
                .range(a.as_str()..b.as_str())?
                .count();
            if n_streams > 0 {
                return Err(MetaError::NotEmpty {
                    kind: "namespace",
                    name: key,
                    detail: format!("it has {n_streams} stream(s); delete them first"),
                });
            }
            if tx.open_table(NAMESPACES)?.remove(key.as_str())?.is_none() {
                return Err(MetaError::NotFound {
                    kind: "namespace",
                    name: key,
                });
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn create_stream(&self, stream: &StreamInfo) -> Result<(), MetaError> {
        let key = stream_key(&stream.stream_ref());
        let tx = self.db.begin_write()?;
        {
            let ns_key = format!("{}/{}", stream.tenant, stream.namespace);
            if tx.open_table(NAMESPACES)?.get(ns_key.as_str())?.is_none() {
                return Err(MetaError::NotFound {
                    kind: "namespace",
                    name: ns_key,
                });
            }
            let mut s = tx.open_table(STREAMS)?;
            if s.get(key.as_str())?.is_some() {
                return Err(MetaError::AlreadyExists {
                    kind: "stream",
                    name: key,
                });
            }
            s.insert(key.as_str(), enc(stream)?.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    fn get_stream(&self, stream: &StreamRef) -> Result<StreamInfo, MetaError> {
        let key = stream_key(stream);
        self.get(STREAMS, &key)?.ok_or(MetaError::NotFound {
            kind: "stream",
            name: key,
        })
    }

    fn list_streams(
        &self,
        tenant: &TenantName,
        ns: &NamespaceName,
    ) -> Result<Vec<StreamInfo>, MetaError> {
        self.get_namespace(tenant, ns)?;
        self.list(STREAMS, Some(&format!("{tenant}/{ns}/")))
    }

    fn list_all_streams(&self) -> Result<Vec<StreamInfo>, MetaError> {
        self.list(STREAMS, None)
    }

    fn update_stream(&self, stream: &StreamInfo) -> Result<(), MetaError> {
        let key = stream_key(&stream.stream_ref());
        let tx = self.db.begin_write()?;
        {
            let mut s = tx.open_table(STREAMS)?;
            if s.get(key.as_str())?.is_none() {
                return Err(MetaError::NotFound {
                    kind: "stream",
                    name: key,
                });
            }
            s.insert(key.as_str(), enc(stream)?.as_slice())?;
        }
        tx.commit()?;
        Ok(())
    }

    fn delete_stream(&self, stream: &StreamRef) -> Result<(), MetaError> {
        let key = stream_key(stream);
        let tx = self.db.begin_write()?;
        {
            if tx.open_table(STREAMS)?.remove(key.as_str())?.is_none() {
                return Err(MetaError::NotFound {
                    kind: "stream",
                    name: key,
                });
            }
            let (a, b) = prefix_range(&format!("{key}/"));
            let mut c = tx.open_table(CURSORS)?;
            let keys: Vec<String> = c
                .range(a.as_str()..b.as_str())?
                .map(|r| r.map(|(k, _)| k.value().to_string()))
                .collect::<Result<_, _>>()?;
            for k in keys {
                c.remove(k.as_str())?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn commit_offsets(
        &self,
        stream: &StreamRef,
        consumer: &str,
        offsets: &[(u32, i64)],
    ) -> Result<(), MetaError> {
        crate::validate_consumer_name(consumer)?;
        let key = stream_key(stream);
        let tx = self.db.begin_write()?;
        {
            let info: StreamInfo = match tx.open_table(STREAMS)?.get(key.as_str())? {
                Some(v) => dec(v.value())?,
                None => {
                    return Err(MetaError::NotFound {
                        kind: "stream",
                        name: key,
                    })
                }
            };
            let mut c = tx.open_table(CURSORS)?;
            for &(p, off) in offsets {
                if p >= info.partitions {
                    return Err(MetaError::Invalid(format!(
                        "partition {p} does not exist: stream {key} has {} partition(s)",
                        info.partitions
                    )));
                }
                if off < 0 {
                    return Err(MetaError::Invalid(format!("offset {off} is negative")));
                }
                c.insert(format!("{key}/{consumer}/{p}").as_str(), off)?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn committed_offsets(
        &self,
        stream: &StreamRef,
        consumer: &str,
    ) -> Result<Vec<(u32, i64)>, MetaError> {
        crate::validate_consumer_name(consumer)?;
        let prefix = format!("{}/{consumer}/", stream_key(stream));
        let tx = self.db.begin_read()?;
        let c = tx.open_table(CURSORS)?;
        let (a, b) = prefix_range(&prefix);
        let mut out = Vec::new();
        for item in c.range(a.as_str()..b.as_str())? {
            let (k, v) = item?;
            if let Some(p) = k.value().rsplit('/').next().and_then(|p| p.parse().ok()) {
                out.push((p, v.value()));
            }
        }
        out.sort_unstable();
        Ok(out)
    }

    fn delete_offsets(
        &self,
        stream: &StreamRef,
        consumer: &str,
        partitions: Option<&[u32]>,
    ) -> Result<usize, MetaError> {
        crate::validate_consumer_name(consumer)?;
        let prefix = format!("{}/{consumer}/", stream_key(stream));
        let tx = self.db.begin_write()?;
        let removed;
        {
            let mut c = tx.open_table(CURSORS)?;
            let keys: Vec<String> = match partitions {
                Some(ps) => ps.iter().map(|p| format!("{prefix}{p}")).collect(),
                None => {
                    let (a, b) = prefix_range(&prefix);
                    c.range(a.as_str()..b.as_str())?
                        .map(|r| r.map(|(k, _)| k.value().to_string()))
                        .collect::<Result<_, _>>()?
                }
            };
            let mut n = 0;
            for k in keys {
                if c.remove(k.as_str())?.is_some() {
                    n += 1;
                }
            }
            removed = n;
        }
        tx.commit()?;
        Ok(removed)
    }

    fn list_consumers(&self, stream: &StreamRef) -> Result<Vec<ConsumerOffsets>, MetaError> {
        let prefix = format!("{}/", stream_key(stream));
        let tx = self.db.begin_read()?;
        let c = tx.open_table(CURSORS)?;
        let (a, b) = prefix_range(&prefix);
        let mut out: Vec<ConsumerOffsets> = Vec::new();
        for item in c.range(a.as_str()..b.as_str())? {
            let (k, v) = item?;
            let rest = &k.value()[prefix.len()..];
            let Some((consumer, p)) = rest.rsplit_once('/') else {
                continue;
            };
            let Ok(p) = p.parse::<u32>() else { continue };
            match out.last_mut() {
                Some((name, list)) if name == consumer => list.push((p, v.value())),
                _ => out.push((consumer.to_string(), vec![(p, v.value())])),
            }
        }
        for (_, list) in &mut out {
            list.sort_unstable();
        }
        Ok(out)
    }

    fn put_user(&self, user: &UserInfo) -> Result<(), MetaError> {
        crate::validate_user_name(&user.name)?;
        let tx = self.db.begin_write()?;
        {
            if tx.open_table(TENANTS)?.get(user.tenant.as_str())?.is_none() {
                return Err(MetaError::NotFound {
                    kind: "tenant",
                    name: user.tenant.to_string(),
                });
            }
            tx.open_table(USERS)?.insert(
                format!("{}/{}", user.tenant, user.name).as_str(),
                enc(user)?.as_slice(),
            )?;
        }
        tx.commit()?;
        Ok(())
    }

    fn get_user(&self, tenant: &TenantName, name: &str) -> Result<Option<UserInfo>, MetaError> {
        crate::validate_user_name(name)?;
        self.get(USERS, &format!("{tenant}/{name}"))
    }

    fn delete_user(&self, tenant: &TenantName, name: &str) -> Result<(), MetaError> {
        crate::validate_user_name(name)?;
        let tx = self.db.begin_write()?;
        let removed = tx
            .open_table(USERS)?
            .remove(format!("{tenant}/{name}").as_str())?
            .is_some();
        if !removed {
            return Err(MetaError::NotFound {
                kind: "user",
                name: format!("{tenant}:{name}"),
            });
        }
        tx.commit()?;
        Ok(())
    }

    fn list_users(&self, tenant: &TenantName) -> Result<Vec<UserInfo>, MetaError> {
        self.list(USERS, Some(&format!("{tenant}/")))
    }

    fn put_session(
        &self,
        tenant: &TenantName,
        client_id: &str,
        state: &[u8],
    ) -> Result<(), MetaError> {
        let tx = self.db.begin_write()?;
        tx.open_table(SESSIONS)?
            .insert(format!("{tenant}/{client_id}").as_str(), state)?;
        tx.commit()?;
        Ok(())
    }

    fn get_session(
        &self,
        tenant: &TenantName,
        client_id: &str,
    ) -> Result<Option<Vec<u8>>, MetaError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(SESSIONS)?;
        let v = t.get(format!("{tenant}/{client_id}").as_str())?;
        Ok(v.map(|g| g.value().to_vec()))
    }

    fn delete_session(&self, tenant: &TenantName, client_id: &str) -> Result<(), MetaError> {
        let tx = self.db.begin_write()?;
        tx.open_table(SESSIONS)?
            .remove(format!("{tenant}/{client_id}").as_str())?;
        tx.commit()?;
        Ok(())
    }

    fn list_sessions(&self, tenant: &TenantName) -> Result<Vec<(String, Vec<u8>)>, MetaError> {
        self.list_raw(SESSIONS, tenant)
    }

    fn put_acl(&self, tenant: &TenantName, id: &str, rule: &[u8]) -> Result<(), MetaError> {
        let tx = self.db.begin_write()?;
        {
            if tx.open_table(TENANTS)?.get(tenant.as_str())?.is_none() {
                return Err(MetaError::NotFound {
                    kind: "tenant",
                    name: tenant.to_string(),
                });
            }
            tx.open_table(ACLS)?
                .insert(format!("{tenant}/{id}").as_str(), rule)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn delete_acl(&self, tenant: &TenantName, id: &str) -> Result<(), MetaError> {
        let tx = self.db.begin_write()?;
        {
            let removed = tx
                .open_table(ACLS)?
                .remove(format!("{tenant}/{id}").as_str())?
                .is_some();
            if !removed {
                return Err(MetaError::NotFound {
                    kind: "ACL rule",
                    name: id.to_string(),
                });
            }
        }
        tx.commit()?;
        Ok(())
    }

    fn list_acls(&self, tenant: &TenantName) -> Result<Vec<(String, Vec<u8>)>, MetaError> {
        self.list_raw(ACLS, tenant)
    }

    fn put_query(&self, tenant: &TenantName, name: &str, def: &[u8]) -> Result<(), MetaError> {
        let tx = self.db.begin_write()?;
        {
            if tx.open_table(TENANTS)?.get(tenant.as_str())?.is_none() {
                return Err(MetaError::NotFound {
                    kind: "tenant",
                    name: tenant.to_string(),
                });
            }
            tx.open_table(QUERIES)?
                .insert(format!("{tenant}/{name}").as_str(), def)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn delete_query(&self, tenant: &TenantName, name: &str) -> Result<(), MetaError> {
        let key = format!("{tenant}/{name}");
        let tx = self.db.begin_write()?;
        {
            let removed = tx.open_table(QUERIES)?.remove(key.as_str())?.is_some();
            if !removed {
                return Err(MetaError::NotFound {
                    kind: "query",
                    name: name.to_string(),
                });
            }
            tx.open_table(CHECKPOINTS)?.remove(key.as_str())?;
        }
        tx.commit()?;
        Ok(())
    }

    fn list_queries(&self, tenant: &TenantName) -> Result<Vec<(String, Vec<u8>)>, MetaError> {
        self.list_raw(QUERIES, tenant)
    }

    fn put_checkpoint(
        &self,
        tenant: &TenantName,
        name: &str,
        checkpoint: &[u8],
    ) -> Result<(), MetaError> {
        let key = format!("{tenant}/{name}");
        let tx = self.db.begin_write()?;
        {
            if tx.open_table(QUERIES)?.get(key.as_str())?.is_none() {
                return Err(MetaError::NotFound {
                    kind: "query",
                    name: name.to_string(),
                });
            }
            tx.open_table(CHECKPOINTS)?
                .insert(key.as_str(), checkpoint)?;
        }
        tx.commit()?;
        Ok(())
    }

    fn get_checkpoint(
        &self,
        tenant: &TenantName,
        name: &str,
    ) -> Result<Option<Vec<u8>>, MetaError> {
        let tx = self.db.begin_read()?;
        let t = tx.open_table(CHECKPOINTS)?;
        let key = format!("{tenant}/{name}");
        Ok(t.get(key.as_str())?.map(|v| v.value().to_vec()))
    }
}

impl EmbeddedStore {
    /// Opaque records of `tenant` in `table`: `(key without the tenant
    /// prefix, bytes)`.
    fn list_raw(
        &self,
        table: TableDefinition<&str, &[u8]>,
        tenant: &TenantName,
    ) -> Result<Vec<(String, Vec<u8>)>, MetaError> {
        let prefix = format!("{tenant}/");
        let tx = self.db.begin_read()?;
        let t = tx.open_table(table)?;
        let (a, b) = prefix_range(&prefix);
        let mut out = Vec::new();
        for item in t.range(a.as_str()..b.as_str())? {
            let (k, v) = item?;
            out.push((k.value()[prefix.len()..].to_string(), v.value().to_vec()));
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fjord_core::{Durability, StreamName};

    fn stream(t: &str, ns: &str, s: &str, partitions: u32) -> StreamInfo {
        StreamInfo {
            tenant: TenantName::new(t).unwrap(),
            namespace: NamespaceName::new(ns).unwrap(),
            name: StreamName::new(s).unwrap(),
            partitions,
            policy: Policy::default(),
            created_ms: 1,
        }
    }

    #[test]
    fn users_belong_to_their_tenant_and_go_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let acme = TenantName::new("acme").unwrap();
        let user = |name: &str| UserInfo {
            tenant: acme.clone(),
            name: name.into(),
            password_hash: "$argon2id$x".into(),
            created_ms: 1,
            roles: vec!["devices".into()],
            scram: Vec::new(),
            quotas: Default::default(),
        };
        // No tenant, no user.
        assert!(matches!(
            s.put_user(&user("alice")),
            Err(MetaError::NotFound { .. })
        ));
        s.create_tenant(&TenantInfo {
            name: acme.clone(),
            created_ms: 1,
            settings: Default::default(),
        })
        .unwrap();
        s.put_user(&user("alice")).unwrap();
        s.put_user(&user("bob")).unwrap();
        assert!(
            s.put_user(&user("a:b")).is_err(),
            "':' separates tenant and user"
        );
        assert_eq!(s.get_user(&acme, "alice").unwrap(), Some(user("alice")));
        let public = TenantName::new("public").unwrap();
        assert_eq!(s.get_user(&public, "alice").unwrap(), None);
        assert_eq!(s.list_users(&acme).unwrap().len(), 2);
        s.delete_user(&acme, "bob").unwrap();
        assert!(s.delete_user(&acme, "bob").is_err());
        s.delete_tenant(&acme).unwrap();
        s.create_tenant(&TenantInfo {
            name: acme.clone(),
            created_ms: 2,
            settings: Default::default(),
        })
        .unwrap();
        assert_eq!(
            s.get_user(&acme, "alice").unwrap(),
            None,
            "deleted with the tenant"
        );
    }

    #[test]
    fn everything_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = EmbeddedStore::open(dir.path()).unwrap();
            crate::ensure_defaults(&s, 1).unwrap();
            crate::ensure_defaults(&s, 2).unwrap();
            let p = Policy {
                durability: Some(Durability::Always),
                ..Default::default()
            };
            s.set_namespace_policy(
                &TenantName::new("public").unwrap(),
                &NamespaceName::new("default").unwrap(),
                &p,
            )
            .unwrap();
            s.create_stream(&stream("public", "default", "temps", 3))
                .unwrap();
            let r = stream("public", "default", "temps", 3).stream_ref();
            s.commit_offsets(&r, "app-1", &[(0, 5), (2, 9)]).unwrap();
        }
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let t = TenantName::new("public").unwrap();
        let ns = s
            .get_namespace(&t, &NamespaceName::new("default").unwrap())
            .unwrap();
        assert_eq!(ns.policy.durability, Some(Durability::Always));
        let r = stream("public", "default", "temps", 3).stream_ref();
        assert_eq!(s.get_stream(&r).unwrap().partitions, 3);
        assert_eq!(
            s.committed_offsets(&r, "app-1").unwrap(),
            vec![(0, 5), (2, 9)]
        );
        assert_eq!(
            s.list_consumers(&r).unwrap(),
            vec![("app-1".to_string(), vec![(0, 5), (2, 9)])]
        );
    }

    #[test]
    fn refusals_name_the_object() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        crate::ensure_defaults(&s, 1).unwrap();
        let e = s
            .create_stream(&stream("public", "nope", "x", 1))
            .unwrap_err();
        assert_eq!(e.to_string(), "namespace public/nope does not exist");
        s.create_stream(&stream("public", "default", "x", 1))
            .unwrap();
        let e = s
            .create_stream(&stream("public", "default", "x", 1))
            .unwrap_err();
        assert_eq!(e.to_string(), "stream public/default/x already exists");
        let e = s
            .delete_tenant(&TenantName::new("public").unwrap())
            .unwrap_err();
        assert!(matches!(e, MetaError::NotEmpty { .. }), "{e}");
        let r = stream("public", "default", "x", 1).stream_ref();
        assert!(s.commit_offsets(&r, "c", &[(1, 0)]).is_err());
        assert!(s.commit_offsets(&r, "bad name", &[(0, 0)]).is_err());
        s.delete_stream(&r).unwrap();
        s.delete_tenant(&TenantName::new("public").unwrap())
            .unwrap();
        assert!(s.list_tenants().unwrap().is_empty());
    }

    #[test]
    fn sessions_are_kept_per_tenant() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        let a = TenantName::new("a").unwrap();
        let ab = TenantName::new("a-b").unwrap();
        s.put_session(&a, "dev/1", b"one").unwrap();
        s.put_session(&ab, "dev/2", b"two").unwrap();
        assert_eq!(
            s.get_session(&a, "dev/1").unwrap().as_deref(),
            Some(&b"one"[..])
        );
        assert_eq!(
            s.list_sessions(&a).unwrap(),
            vec![("dev/1".to_string(), b"one".to_vec())]
        );
        s.delete_session(&a, "dev/1").unwrap();
        assert_eq!(s.get_session(&a, "dev/1").unwrap(), None);
        assert_eq!(s.list_sessions(&ab).unwrap().len(), 1);
    }

    #[test]
    fn prefixes_do_not_leak_between_similar_names() {
        let dir = tempfile::tempdir().unwrap();
        let s = EmbeddedStore::open(dir.path()).unwrap();
        for t in ["a", "a-b", "ab"] {
            s.create_tenant(&TenantInfo {
                name: TenantName::new(t).unwrap(),
                created_ms: 0,
                settings: Default::default(),
            })
            .unwrap();
        }
        let ns = s.list_namespaces(&TenantName::new("a").unwrap()).unwrap();
        assert_eq!(ns.len(), 1);
        s.create_stream(&stream("a", "default", "s", 1)).unwrap();
        s.create_stream(&stream("a", "default", "s-2", 1)).unwrap();
        s.create_stream(&stream("ab", "default", "s", 1)).unwrap();
        assert_eq!(
            s.list_streams(
                &TenantName::new("a").unwrap(),
                &NamespaceName::new("default").unwrap()
            )
            .unwrap()
            .len(),
            2
        );
    }
}
