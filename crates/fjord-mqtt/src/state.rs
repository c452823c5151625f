//! The small per-connection state machines of MQTT, kept pure so the
//! session that owns the socket stays thin: topic aliases both ways (5.0
//! §3.3.2.3.4), packet identifiers, the Receive Maximum flow-control window
//! (§4.9) and QoS 2 receipt (§4.3.3).
//!
//! Each starts empty and allocates only when used, so an idle connection
//! costs a few dozen bytes here.

use std::collections::{HashMap, HashSet};

use crate::codec::reason;

/// Aliases the client sets on its PUBLISH packets.
#[derive(Debug, Default)]
pub struct InboundAliases {
    /// Our Topic Alias Maximum, sent in CONNACK; 0 means none allowed.
    max: u16,
    map: HashMap<u16, String>,
}

impl InboundAliases {
    pub fn new(max: u16) -> Self {
        Self {
            max,
            map: HashMap::new(),
        }
    }

    /// The topic a PUBLISH is for, setting or using its alias. Errors are
    /// the reason codes to disconnect with.
    pub fn resolve(&mut self, topic: &str, alias: Option<u16>) -> Result<String, u8> {
        let Some(alias) = alias else {
            return Ok(topic.to_string());
        };
        if alias == 0 || alias > self.max {
            return Err(reason::TOPIC_ALIAS_INVALID);
        }
        if topic.is_empty() {
            return self.map.get(&alias).cloned().ok_or(reason::PROTOCOL_ERROR);
        }
        self.map.insert(alias, topic.to_string());
        Ok(topic.to_string())
    }
}

/// Aliases we set on PUBLISH packets to the client (up to its Topic Alias
/// Maximum). Topics get aliases first come, first served; once all are
/// given out, further topics are sent in full.
#[derive(Debug, Default)]
pub struct OutboundAliases {
    max: u16,
    map: HashMap<String, u16>,
}

impl OutboundAliases {
    pub fn new(max: u16) -> Self {
        Self {
            max,
            map: HashMap::new(),
        }
    }

    /// `(alias, send the topic too)` for a PUBLISH to `topic`.
    pub fn assign(&mut self, topic: &str) -> (Option<u16>, bool) {
        if let Some(&a) = self.map.get(topic) {
            return (Some(a), false);
        }
        let next = self.map.len() as u16 + 1;
        if self.max == 0 || next > self.max {
            return (None, true);
        }
        self.map.insert(topic.to_string(), next);
        (Some(next), true)
    }
}

/// Packet identifiers of our outgoing QoS 1/2 PUBLISH packets.
#[derive(Debug, Default)]
pub struct PacketIds {
    next: u16,
    in_use: HashSet<u16>,
}

impl PacketIds {
    /// A free non-zero identifier, or `None` when all 65,535 are in use.
    pub fn allocate(&mut self) -> Option<u16> {
        if self.in_use.len() >= u16::MAX as usize {
            return None;
        }
        loop {
            self.next = self.next.wrapping_add(1);
            if self.next == 0 {
                continue;
            }
            if self.in_use.insert(self.next) {
                return Some(self.next);
            }
        }
    }

    /// Frees `id`; false if it was not in use (an unexpected acknowledgement).
    pub fn release(&mut self, id: u16) -> bool {
        self.in_use.remove(&id)
    }

    /// Marks `id` used (restoring a persisted session).
    pub fn reserve(&mut self, id: u16) -> bool {
        id != 0 && self.in_use.insert(id)
    }

    pub fn in_flight(&self) -> usize {
        self.in_use.len()
    }
}

/// The Receive Maximum window in one direction: at most `max` QoS 1/2
/// publications unacknowledged at once.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    max: u16,
    used: u16,
}

impl Window {
    pub fn new(max: u16) -> Self {
        Self {
            max: max.max(1),
            used: 0,
        }
    }

    /// Takes a slot: false when the window is full (outbound: wait;
    /// inbound: the client broke the limit, RECEIVE_MAXIMUM_EXCEEDED).
    pub fn acquire(&mut self) -> bool {
        if self.used >= self.max {
            return false;
        }
        self.used += 1;
        true
    }

    pub fn release(&mut self) {
        self.used = self.used.saturating_sub(1);
    }

    pub fn available(&self) -> u16 {
        self.max - self.used
    }
}

/// QoS 2 PUBLISH packets received and stored, waiting for PUBREL. A
/// retransmitted PUBLISH with an identifier in here is not stored again
/// (exactly once).
#[derive(Debug, Default)]
pub struct Qos2Received {
    ids: HashSet<u16>,
}

impl Qos2Received {
    /// True the first time `id` is seen (store the message); false for a
    /// retransmission (answer PUBREC again, store nothing).
    pub fn first_receipt(&mut self, id: u16) -> bool {
        self.ids.insert(id)
    }

    /// PUBREL: forget `id`. False when unknown (PUBCOMP with
    /// PACKET_IDENTIFIER_NOT_FOUND in 5.0).
    pub fn release(&mut self, id: u16) -> bool {
        self.ids.remove(&id)
    }

    pub fn pending(&self) -> impl Iterator<Item = u16> + '_ {
        self.ids.iter().copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inbound_aliases() {
        let mut a = InboundAliases::new(2);
        assert_eq!(a.resolve("t/1", None), Ok("t/1".into()));
        assert_eq!(a.resolve("t/1", Some(1)), Ok("t/1".into()));
        assert_eq!(a.resolve("", Some(1)), Ok("t/1".into()));
        assert_eq!(a.resolve("", Some(2)), Err(reason::PROTOCOL_ERROR));
        assert_eq!(a.resolve("t/2", Some(3)), Err(reason::TOPIC_ALIAS_INVALID));
        assert_eq!(a.resolve("t/2", Some(0)), Err(reason::TOPIC_ALIAS_INVALID));
        // Reassigning an alias to another topic is allowed.
        assert_eq!(a.resolve("t/9", Some(1)), Ok("t/9".into()));
        assert_eq!(a.resolve("", Some(1)), Ok("t/9".into()));
        let mut none = InboundAliases::new(0);
        assert_eq!(none.resolve("t", Some(1)), Err(reason::TOPIC_ALIAS_INVALID));
    }

    #[test]
    fn outbound_aliases() {
        let mut a = OutboundAliases::new(1);
        assert_eq!(a.assign("x"), (Some(1), true));
        assert_eq!(a.assign("x"), (Some(1), false));
        assert_eq!(a.assign("y"), (None, true));
        assert_eq!(OutboundAliases::new(0).assign("x"), (None, true));
    }

    #[test]
    fn packet_ids_skip_zero_and_ids_in_use() {
        let mut p = PacketIds::default();
        assert_eq!(p.allocate(), Some(1));
        assert!(p.reserve(2));
        assert_eq!(p.allocate(), Some(3));
        assert!(p.release(1));
        assert!(!p.release(1));
        p.next = u16::MAX - 1;
        assert_eq!(p.allocate(), Some(u16::MAX));
        assert_eq!(p.allocate(), Some(1), "wraps past 0");
    }

    #[test]
    fn packet_ids_run_out() {
        let mut p = PacketIds::default();
        for _ in 0..u16::MAX {
            assert!(p.allocate().is_some());
        }
        assert_eq!(p.allocate(), None);
        p.release(77);
        assert_eq!(p.allocate(), Some(77));
    }

    #[test]
    fn window_and_qos2() {
        let mut w = Window::new(2);
        assert!(w.acquire() && w.acquire());
        assert!(!w.acquire());
        w.release();
        assert_eq!(w.available(), 1);
        let mut q = Qos2Received::default();
        assert!(q.first_receipt(5));
        assert!(!q.first_receipt(5), "a retransmission is not stored twice");
        assert!(q.release(5));
        assert!(!q.release(5));
        assert!(q.first_receipt(5), "after PUBREL the id may be used again");
    }
}
