//! A tenant's MQTT world: its connected client ids, retained messages,
//! shared-subscription groups and stored sessions. Clients of two tenants
//! never meet: equal client ids, topics and share names of two tenants are
//! different things, each in its own space. Spaces open on the first
//! connection of their tenant (and at start for tenants with stored
//! sessions, whose wills and expiries must run).

use std::sync::Arc;

use fjord_broker::{Broker, BrokerError};
use fjord_core::{NamespaceName, TenantName};

use crate::retained::Retained;
use crate::server::Registry;

pub struct Space {
    pub broker: Arc<Broker>,
    pub tenant: TenantName,
    /// The namespace MQTT topics map into.
    pub namespace: NamespaceName,
    pub registry: Registry,
    pub retained: Retained,
    pub groups: crate::groups::Groups,
}

impl Space {
    /// Loads the tenant's retained messages; publishes wills that fell due
    /// while nobody served the tenant and drops expired sessions.
    pub async fn open(
        broker: Arc<Broker>,
        tenant: TenantName,
        namespace: NamespaceName,
    ) -> Result<Arc<Space>, BrokerError> {
        let retained = Retained::open(broker.clone(), tenant.clone(), namespace.clone()).await?;
        let groups = crate::groups::Groups::new(broker.clone(), tenant.clone(), namespace.clone());
        let space = Arc::new(Space {
            broker,
            tenant,
            namespace,
            registry: Registry::default(),
            retained,
            groups,
        });
        // Wills due while the node was down go out before their (expired)
        // sessions are dropped.
        crate::wills::restore(&space).await;
        space.drop_expired_sessions();
        Ok(space)
    }

    /// The namespace's topic mapping rules as they are now (a change
    /// applies to connections made after it).
    pub fn topic_map(&self) -> crate::mapping::TopicMap {
        self.broker
            .get_namespace(&self.tenant, &self.namespace)
            .ok()
            .and_then(|ns| {
                crate::mapping::TopicMap::new(
                    ns.policy.resolve(self.broker.defaults()).mqtt_topic_rules,
                )
                .ok()
            })
            .unwrap_or_default()
    }

    /// Sessions whose expiry passed while nobody served them.
    fn drop_expired_sessions(&self) {
        let now = fjord_core::time::now_ms();
        let meta = self.broker.meta();
        let Ok(sessions) = meta.list_sessions(&self.tenant) else {
            return;
        };
        for (client_id, state) in sessions {
            let expired = serde_json::from_slice::<crate::session_store::StoredSession>(&state)
                .map_or(true, |s| s.expired(now));
            if expired {
                let _ = meta.delete_session(&self.tenant, &client_id);
            }
        }
    }
}
