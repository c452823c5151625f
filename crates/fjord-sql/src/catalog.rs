//! Fjord's names as SQL's: tenant = catalog, namespace = schema, stream =
//! table. A query sees its principal's tenant (node administrators see
//! every tenant), and in it only the streams its principal may read:
//! others are not there, as if they did not exist.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::catalog::{CatalogProvider, CatalogProviderList, SchemaProvider};
use datafusion::datasource::TableProvider;
use datafusion::error::{DataFusionError, Result};
use fjord_auth::{Action, Principal, Resource};
use fjord_core::{NamespaceName, StreamName, StreamRef, TenantName};

use crate::continuous::view::{ViewTable, Views};
use crate::table::{BrokerRef, StreamTable};

/// The catalogs one principal can see.
#[derive(Debug)]
pub struct Catalogs {
    broker: Arc<BrokerRef>,
    principal: Arc<Principal>,
    views: Arc<Views>,
    /// Schemas a session adds beside the namespaces (`pg_catalog`).
    extra: Arc<Extra>,
}

/// Schemas registered by the session, in every tenant's catalog.
type Extra = parking_lot::RwLock<std::collections::BTreeMap<String, Arc<dyn SchemaProvider>>>;

impl Catalogs {
    pub fn new(broker: Arc<BrokerRef>, principal: Arc<Principal>, views: Arc<Views>) -> Self {
        Catalogs {
            broker,
            principal,
            views,
            extra: Arc::default(),
        }
    }

    fn visible(&self, tenant: &TenantName) -> bool {
        *tenant == self.principal.tenant || self.broker.0.is_node_admin(&self.principal)
    }
}

impl CatalogProviderList for Catalogs {
    fn register_catalog(
        &self,
        _name: String,
        _catalog: Arc<dyn CatalogProvider>,
    ) -> Option<Arc<dyn CatalogProvider>> {
        // Catalogs are tenants: created through the admin API.
        None
    }

    fn catalog_names(&self) -> Vec<String> {
        if !self.broker.0.is_node_admin(&self.principal) {
            return vec![self.principal.tenant.to_string()];
        }
        self.broker
            .0
            .list_tenants()
            .map(|ts| ts.into_iter().map(|t| t.name.to_string()).collect())
            .unwrap_or_default()
    }

    fn catalog(&self, name: &str) -> Option<Arc<dyn CatalogProvider>> {
        let tenant = TenantName::new(name).ok()?;
        if !self.visible(&tenant) || self.broker.0.get_tenant(&tenant).is_err() {
            return None;
        }
        Some(Arc::new(TenantCatalog {
            broker: self.broker.clone(),
            principal: self.principal.clone(),
            views: self.views.clone(),
            extra: self.extra.clone(),
            tenant,
        }))
    }
}

/// One tenant: its namespaces are the schemas.
#[derive(Debug)]
pub struct TenantCatalog {
    broker: Arc<BrokerRef>,
    principal: Arc<Principal>,
    views: Arc<Views>,
    extra: Arc<Extra>,
    tenant: TenantName,
}

impl CatalogProvider for TenantCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .broker
            .0
            .list_namespaces(&self.tenant)
            .map(|ns| ns.into_iter().map(|n| n.name.to_string()).collect())
            .unwrap_or_default();
        names.extend(self.extra.read().keys().cloned());
        names
    }

    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> Result<Option<Arc<dyn SchemaProvider>>> {
        Ok(self.extra.write().insert(name.to_string(), schema))
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if let Some(s) = self.extra.read().get(name) {
            return Some(s.clone());
        }
        let namespace = NamespaceName::new(name).ok()?;
        self.broker.0.get_namespace(&self.tenant, &namespace).ok()?;
        Some(Arc::new(NamespaceSchema {
            broker: self.broker.clone(),
            principal: self.principal.clone(),
            views: self.views.clone(),
            tenant: self.tenant.clone(),
            namespace,
        }))
    }
}

/// One namespace: its streams are the tables.
#[derive(Debug)]
pub struct NamespaceSchema {
    broker: Arc<BrokerRef>,
    principal: Arc<Principal>,
    views: Arc<Views>,
    tenant: TenantName,
    namespace: NamespaceName,
}

impl NamespaceSchema {
    fn readable(&self, stream: &str) -> bool {
        self.broker.0.authorize(
            &self.principal,
            &self.tenant,
            Action::Subscribe,
            Resource::Stream {
                namespace: self.namespace.as_str(),
                stream,
                topic: None,
            },
        )
    }

    fn stream_ref(&self, name: &str) -> Option<StreamRef> {
        Some(StreamRef {
            tenant: self.tenant.clone(),
            namespace: self.namespace.clone(),
            stream: StreamName::new(name).ok()?,
        })
    }
}

#[async_trait]
impl SchemaProvider for NamespaceSchema {
    fn table_names(&self) -> Vec<String> {
        self.broker
            .0
            .list_streams(&self.tenant, &self.namespace)
            .map(|ss| {
                ss.into_iter()
                    .map(|s| s.name.to_string())
                    .filter(|s| self.readable(s))
                    .collect()
            })
            .unwrap_or_default()
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>, DataFusionError> {
        let Some(sref) = self.stream_ref(name) else {
            return Ok(None);
        };
        if !self.broker.0.stream_exists(&sref) || !self.readable(name) {
            return Ok(None);
        }
        // A materialized view reads as its rows, not its stream's records.
        if let Some(info) = self.views.get(&sref) {
            return Ok(Some(Arc::new(ViewTable {
                broker: self.broker.clone(),
                stream: sref,
                info,
            })));
        }
        Ok(Some(Arc::new(StreamTable::new(self.broker.clone(), sref))))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.stream_ref(name)
            .is_some_and(|s| self.broker.0.stream_exists(&s) && self.readable(name))
    }
}
