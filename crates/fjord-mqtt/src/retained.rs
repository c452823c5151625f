//! Retained messages (MQTT-3.3.1-5 … -11): a compacted stream per namespace,
//! `mqtt-retained`, keyed by topic, plus an in-memory index of the newest
//! message per topic, rebuilt from the stream when the listener starts
//! (ARCHITECTURE §4). An empty retained payload deletes (a tombstone, so
//! compaction removes it from the stream too).
//!
//! The index holds one record per retained topic; its size is the number of
//! topics with a retained message.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fjord_broker::{Broker, BrokerError, Position};
use fjord_core::policy::Compaction;
use fjord_core::{NamespaceName, Policy, Record, RecordInput, StreamName, StreamRef, TenantName};
use parking_lot::RwLock;

use crate::codec::topic;
use crate::mapping::TOPIC_HEADER;

pub const RETAINED_STREAM: &str = "mqtt-retained";

pub struct Retained {
    broker: Arc<Broker>,
    stream: StreamRef,
    /// topic → the newest retained record (with its offset, so concurrent
    /// updates settle on the log's order).
    index: RwLock<HashMap<String, Record>>,
}

impl Retained {
    /// Loads the namespace's retained messages.
    pub async fn open(
        broker: Arc<Broker>,
        tenant: TenantName,
        namespace: NamespaceName,
    ) -> Result<Self, BrokerError> {
        let stream = StreamRef {
            tenant,
            namespace,
            stream: StreamName::new(RETAINED_STREAM).expect("valid name"),
        };
        let r = Self {
            broker,
            stream,
            index: RwLock::new(HashMap::new()),
        };
        if r.broker.stream_exists(&r.stream) {
            let mut next = r.broker.resolve(&r.stream, 0, Position::Earliest).await?;
            loop {
                let f = r
                    .broker
                    .fetch(
                        &r.stream,
                        0,
                        Position::Offset(next),
                        10_000,
                        4 << 20,
                        Duration::ZERO,
                    )
                    .await?;
                for rec in f.records {
                    r.apply(rec);
                }
                if f.next_offset <= next || f.next_offset >= f.high_watermark {
                    break;
                }
                next = f.next_offset;
            }
        }
        Ok(r)
    }

    fn apply(&self, rec: Record) {
        let Some(t) = rec
            .headers
            .iter()
            .find(|h| h.key == TOPIC_HEADER)
            .and_then(|h| h.value.as_deref())
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(str::to_string)
        else {
            return;
        };
        let mut index = self.index.write();
        if index.get(&t).is_some_and(|old| old.offset > rec.offset) {
            return;
        }
        if rec.value.as_ref().is_none_or(|v| v.is_empty()) {
            index.remove(&t);
        } else {
            index.insert(t, rec);
        }
    }

    /// Stores (or, with an empty payload, deletes) the retained message of
    /// `rec`'s topic; returns once durable.
    pub async fn set(&self, mut rec: RecordInput) -> Result<(), BrokerError> {
        self.broker.ensure_stream_with(
            &self.stream,
            Some(1),
            Policy {
                compaction: Some(Compaction::LatestPerKey),
                retention_ms: Some(-1),
                ..Default::default()
            },
        )?;
        if rec.value.as_ref().is_some_and(|v| v.is_empty()) {
            rec.value = None;
        }
        let stored = rec.clone();
        let produced = self
            .broker
            .produce(&self.stream, vec![rec], Some(0))
            .await?;
        let p = produced
            .first()
            .copied()
            .ok_or_else(|| BrokerError::Storage("no offset for a retained message".into()))?;
        self.apply(Record {
            offset: p.offset,
            key: stored.key,
            value: stored.value,
            headers: stored.headers,
            publish_ts: p.publish_ts,
            event_ts: p.publish_ts,
        });
        Ok(())
    }

    /// Retained messages whose topic matches `filter`.
    pub fn matching(&self, filter: &str) -> Vec<Record> {
        self.index
            .read()
            .iter()
            .filter(|(t, _)| topic::matches(filter, t))
            .map(|(_, r)| r.clone())
            .collect()
    }

    pub fn stream_name(&self) -> &StreamName {
        &self.stream.stream
    }
}
