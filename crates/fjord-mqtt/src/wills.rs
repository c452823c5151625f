//! Wills: published when a connection ends without a clean DISCONNECT, at
//! once or after their Will Delay Interval (MQTT 5.0 §3.1.3.2.2), unless
//! the client is back by then (MQTT-3.1.3-9).
//!
//! A will waiting out its delay is kept in the session's stored record
//! (the delay never outlasts the session, so only persistent sessions have
//! one), so a broker restart does not lose it: at start, wills already due
//! are published before expired sessions are dropped, the others are
//! rescheduled.

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use fjord_core::time::now_ms;
use fjord_core::StreamRef;

use crate::codec::{self, LastWill, Packet, Protocol, Publish};
use crate::mapping::TopicMap;
use crate::record::to_record;
use crate::session_store::{StoredSession, StoredWill};
use crate::space::Space;

/// The will as a 5.0 PUBLISH (one codec for its topic, payload, QoS, retain
/// flag and properties), for the stored session.
pub(crate) fn to_stored(will: &LastWill, due_ms: i64) -> StoredWill {
    let mut props = will.properties.clone();
    // A will property only: not part of the publication.
    props.will_delay_interval = None;
    let p = Packet::Publish(Publish {
        dup: false,
        qos: will.qos,
        retain: will.retain,
        topic: will.topic.clone(),
        packet_id: (will.qos != codec::QoS::AtMostOnce).then_some(1),
        payload: will.payload.clone(),
        properties: props,
    });
    let mut buf = BytesMut::new();
    codec::encode(&p, Protocol::V5, &mut buf);
    StoredWill {
        due_ms,
        publish: buf.to_vec(),
    }
}

fn from_stored(w: &StoredWill) -> Option<LastWill> {
    let mut buf = BytesMut::from(&w.publish[..]);
    match codec::decode(&mut buf, Some(Protocol::V5), usize::MAX) {
        Ok(Some(Packet::Publish(p))) => Some(LastWill {
            topic: p.topic,
            payload: p.payload,
            qos: p.qos,
            retain: p.retain,
            properties: p.properties,
        }),
        _ => None,
    }
}

/// Stores the will's message (and, retained, makes it the topic's
/// retained message).
pub(crate) async fn publish(shared: &Space, map: &TopicMap, client_id: &str, will: LastWill) {
    let sref = StreamRef {
        tenant: shared.tenant.clone(),
        namespace: shared.namespace.clone(),
        stream: map.stream_for(&will.topic),
    };
    let retain = will.retain.then(|| {
        to_record(
            &will.topic,
            will.qos,
            true,
            will.payload.clone(),
            &will.properties,
            client_id,
        )
    });
    let rec = to_record(
        &will.topic,
        will.qos,
        will.retain,
        will.payload,
        &will.properties,
        client_id,
    );
    let r = match shared.broker.ensure_stream(&sref) {
        Ok(()) => shared
            .broker
            .produce(&sref, vec![rec], None)
            .await
            .map(|_| ()),
        Err(e) => Err(e),
    };
    let r = match (r, retain) {
        (Ok(()), Some(rec)) => shared.retained.set(rec).await,
        (r, _) => r,
    };
    if let Err(e) = r {
        tracing::warn!(client = %client_id, error = %e, "will not published");
    }
}

fn stored_session(shared: &Space, client_id: &str) -> Option<StoredSession> {
    let bytes = shared
        .broker
        .meta()
        .get_session(&shared.tenant, client_id)
        .ok()??;
    serde_json::from_slice(&bytes).ok()
}

/// Whether the stored session still holds the will due at `due_ms` (a
/// client that came back, or left again with a new will, replaced it).
fn still_pending(shared: &Space, client_id: &str, due_ms: i64) -> bool {
    stored_session(shared, client_id)
        .and_then(|s| s.pending_will)
        .is_some_and(|w| w.due_ms == due_ms)
}

/// Removes the pending will from the stored session once published.
fn clear(shared: &Space, client_id: &str, due_ms: i64) {
    let Some(mut s) = stored_session(shared, client_id) else {
        return;
    };
    if s.pending_will.as_ref().is_some_and(|w| w.due_ms == due_ms) {
        s.pending_will = None;
        if let Ok(bytes) = serde_json::to_vec(&s) {
            let _ = shared
                .broker
                .meta()
                .put_session(&shared.tenant, client_id, &bytes);
        }
    }
}

/// Publishes the will at `due_ms` unless its client is back by then.
pub(crate) fn schedule(shared: Arc<Space>, client_id: String, will: LastWill, due_ms: i64) {
    tokio::spawn(async move {
        let wait = due_ms.saturating_sub(now_ms()).max(0) as u64;
        tokio::time::sleep(Duration::from_millis(wait)).await;
        if shared.registry.is_connected(&client_id) || !still_pending(&shared, &client_id, due_ms) {
            return;
        }
        let map = shared.topic_map();
        publish(&shared, &map, &client_id, will).await;
        clear(&shared, &client_id, due_ms);
    });
}

/// At start: publishes the stored wills already due, schedules the rest.
pub(crate) async fn restore(shared: &Arc<Space>) {
    let Ok(sessions) = shared.broker.meta().list_sessions(&shared.tenant) else {
        return;
    };
    let now = now_ms();
    let map = shared.topic_map();
    for (client_id, bytes) in sessions {
        let Ok(s) = serde_json::from_slice::<StoredSession>(&bytes) else {
            continue;
        };
        let Some(stored) = s.pending_will else {
            continue;
        };
        let Some(will) = from_stored(&stored) else {
            tracing::warn!(client = %client_id, "stored will unreadable; dropped");
            clear(shared, &client_id, stored.due_ms);
            continue;
        };
        if stored.due_ms <= now {
            publish(shared, &map, &client_id, will).await;
            clear(shared, &client_id, stored.due_ms);
        } else {
            schedule(shared.clone(), client_id, will, stored.due_ms);
        }
    }
}
