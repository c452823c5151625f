//! What a persistent MQTT session keeps while its client is away (MQTT 5.0
//! §4.1, 3.1.1 §4.1): subscriptions, and per partition the cursor from
//! which delivery resumes — the queued messages are simply the log after
//! it (ARCHITECTURE §4), nothing is copied per subscriber — plus the QoS 2
//! exchanges still open in either direction. Stored as JSON in the
//! MetaStore under (tenant, client id).

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSession {
    /// Session Expiry Interval, seconds.
    pub expiry_s: u32,
    /// When the client went away; `None` while connected (a crash of the
    /// broker then counts from the restart).
    pub disconnected_ms: Option<i64>,
    pub subscriptions: Vec<StoredSubscription>,
    pub cursors: Vec<StoredCursor>,
    /// Inbound QoS 2 packet ids stored but not yet released (PUBREL).
    pub qos2_received: Vec<u16>,
    /// Outbound QoS 2 packet ids the client received (PUBREC) whose PUBREL
    /// is owed; resent on resume (MQTT-4.4.0-1).
    pub pubrel_pending: Vec<u16>,
    /// A will waiting out its delay after the connection ended.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_will: Option<StoredWill>,
}

/// A will and when it is due; the will is kept as the MQTT 5.0 PUBLISH it
/// becomes (topic, payload, QoS, retain and properties in one codec).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredWill {
    pub due_ms: i64,
    pub publish: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredSubscription {
    pub filter: String,
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub id: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredCursor {
    pub stream: String,
    pub partition: u32,
    /// Delivery resumes here: every record before it was acknowledged.
    pub cursor: i64,
    /// Records from `cursor` up to here were sent before (resent with DUP).
    pub next: i64,
}

impl StoredSession {
    pub fn expired(&self, now_ms: i64) -> bool {
        self.disconnected_ms
            .is_some_and(|d| now_ms.saturating_sub(d) >= self.expiry_s as i64 * 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_counts_from_the_disconnect() {
        let mut s = StoredSession {
            expiry_s: 10,
            ..Default::default()
        };
        assert!(!s.expired(1_000_000), "connected sessions do not expire");
        s.disconnected_ms = Some(1_000);
        assert!(!s.expired(10_999));
        assert!(s.expired(11_000));
    }
}
