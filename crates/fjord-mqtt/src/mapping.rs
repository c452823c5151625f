//! MQTT topic ↔ stream mapping (ARCHITECTURE §3).
//!
//! A namespace holds ordered rules `topic filter → stream`. A topic goes to
//! the stream of the first rule whose filter matches it; when none matches,
//! the default rule applies: the first topic level names the stream
//! (`plant1/line4/temp` → `plant1`), and a first level that is not a valid
//! stream name (empty, `$`-prefixed, spaces, non-ASCII, too long) goes to the
//! namespace's fallback stream `mqtt` — never an error. The full topic rides
//! in header `mqtt.topic`; records written by other protocols are routed by
//! `<stream>` or `<stream>/<key>` (UTF-8 keys).
//!
//! For a subscription the map answers which streams can hold matching
//! records: a superset is fine (the session still filters by topic), a
//! missing stream would lose messages, so every doubt widens the answer.

use std::collections::BTreeSet;

use fjord_core::{Header, StreamName};
use thiserror::Error;

use crate::codec::topic;

/// The stream topics go to when their first level cannot name one.
pub const FALLBACK_STREAM: &str = "mqtt";
/// Streams of a namespace that topics never map to (they hold broker
/// state, such as retained messages).
pub const RESERVED_STREAMS: &[&str] = &[crate::retained::RETAINED_STREAM, SYS_STREAM];

/// The ephemeral stream holding the broker's `$SYS/…` statistics.
pub const SYS_STREAM: &str = "mqtt-sys";

/// The header holding a record's full MQTT topic.
pub const TOPIC_HEADER: &str = "mqtt.topic";

/// A namespace's rule, as stored in its policy (`mqtt_topic_rules`).
pub use fjord_core::policy::MqttTopicRule as MappingRule;

#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MappingError {
    #[error("mapping rule {index}: topic filter {filter:?} is invalid ({reason:?})")]
    BadFilter {
        index: usize,
        filter: String,
        reason: topic::TopicError,
    },
    #[error("mapping rule {index}: shared subscriptions ({filter:?}) cannot be mapping rules")]
    SharedFilter { index: usize, filter: String },
}

/// Which streams a subscription must read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// Every stream of the namespace, including ones created later.
    All,
    Streams(BTreeSet<StreamName>),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TopicMap {
    rules: Vec<MappingRule>,
}

fn fallback() -> StreamName {
    StreamName::new(FALLBACK_STREAM).expect("valid stream name")
}

impl TopicMap {
    pub fn new(rules: Vec<MappingRule>) -> Result<Self, MappingError> {
        for (index, r) in rules.iter().enumerate() {
            if topic::shared(&r.filter).is_some() {
                return Err(MappingError::SharedFilter {
                    index,
                    filter: r.filter.clone(),
                });
            }
            topic::validate_filter(&r.filter).map_err(|reason| MappingError::BadFilter {
                index,
                filter: r.filter.clone(),
                reason,
            })?;
        }
        Ok(Self { rules })
    }

    pub fn rules(&self) -> &[MappingRule] {
        &self.rules
    }

    /// The stream a PUBLISH to `topic` is stored in.
    pub fn stream_for(&self, topic_name: &str) -> StreamName {
        if let Some(r) = self
            .rules
            .iter()
            .find(|r| topic::matches(&r.filter, topic_name))
        {
            return r.stream.clone();
        }
        default_stream(topic_name)
    }

    /// The streams that can hold records matching subscription `filter`
    /// (already validated, not shared).
    pub fn streams_for_filter(&self, filter: &str) -> Selection {
        let mut out = BTreeSet::new();
        for r in &self.rules {
            if overlaps(&r.filter, filter) {
                out.insert(r.stream.clone());
            }
        }
        // The default rule: what can the first level of a matching topic be?
        let first = filter.split('/').next().unwrap_or("");
        match first {
            "+" | "#" => return Selection::All,
            literal => {
                out.insert(default_stream(literal));
            }
        }
        Selection::Streams(out)
    }
}

/// The default rule alone.
pub fn default_stream(topic_name: &str) -> StreamName {
    let first = topic_name.split('/').next().unwrap_or("");
    if first == "$SYS" {
        return StreamName::new(SYS_STREAM).expect("valid stream name");
    }
    if first.starts_with('$') || RESERVED_STREAMS.contains(&first) {
        return fallback();
    }
    StreamName::new(first).unwrap_or_else(|_| fallback())
}

/// Whether some topic matches both filters.
pub fn overlaps(a: &str, b: &str) -> bool {
    let mut x = a.split('/');
    let mut y = b.split('/');
    loop {
        match (x.next(), y.next()) {
            (Some("#"), _) | (_, Some("#")) => return true,
            (None, None) => return true,
            (Some(p), Some(q)) if p == "+" || q == "+" || p == q => {}
            _ => return false,
        }
    }
}

/// The MQTT topic of a stored record: its `mqtt.topic` header, else
/// `<stream>/<key>` for a UTF-8 key that makes a valid topic, else
/// `<stream>`.
pub fn routing_topic(stream: &str, key: Option<&[u8]>, headers: &[Header]) -> String {
    if let Some(t) = headers
        .iter()
        .find(|h| h.key == TOPIC_HEADER)
        .and_then(|h| h.value.as_deref())
        .and_then(|v| std::str::from_utf8(v).ok())
    {
        return t.to_string();
    }
    match key.and_then(|k| std::str::from_utf8(k).ok()) {
        Some(k) if !k.is_empty() && !k.contains(['+', '#', '\0']) => format!("{stream}/{k}"),
        _ => stream.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(n: &str) -> StreamName {
        StreamName::new(n).unwrap()
    }

    #[test]
    fn default_rule_and_fallback() {
        let m = TopicMap::default();
        assert_eq!(m.stream_for("plant1/line4/temp"), s("plant1"));
        assert_eq!(m.stream_for("Plant-1"), s("Plant-1"));
        assert_eq!(m.stream_for("/leading/slash"), s("mqtt"));
        assert_eq!(m.stream_for("$SYS/broker"), s("mqtt-sys"));
        assert_eq!(m.stream_for("$other/x"), s("mqtt"));
        assert_eq!(m.stream_for("has space/x"), s("mqtt"));
        assert_eq!(m.stream_for("température/x"), s("mqtt"));
        assert_eq!(m.stream_for("a.b/c"), s("mqtt"));
        assert_eq!(m.stream_for(&"x".repeat(65)), s("mqtt"));
        assert_eq!(m.stream_for("mqtt-retained/x"), s("mqtt"), "reserved");
    }

    #[test]
    fn first_matching_rule_wins() {
        let m = TopicMap::new(vec![
            MappingRule {
                filter: "factory/+/alarms/#".into(),
                stream: s("alarms"),
            },
            MappingRule {
                filter: "factory/#".into(),
                stream: s("telemetry"),
            },
        ])
        .unwrap();
        assert_eq!(m.stream_for("factory/f1/alarms/fire"), s("alarms"));
        assert_eq!(m.stream_for("factory/f1/temp"), s("telemetry"));
        assert_eq!(m.stream_for("other/x"), s("other"));
    }

    #[test]
    fn bad_rules_are_refused() {
        let bad = TopicMap::new(vec![MappingRule {
            filter: "a/#/b".into(),
            stream: s("x"),
        }]);
        assert!(matches!(bad, Err(MappingError::BadFilter { index: 0, .. })));
        let shared = TopicMap::new(vec![MappingRule {
            filter: "$share/g/a".into(),
            stream: s("x"),
        }]);
        assert!(matches!(shared, Err(MappingError::SharedFilter { .. })));
    }

    #[test]
    fn subscriptions_read_every_stream_that_can_match() {
        let m = TopicMap::new(vec![MappingRule {
            filter: "factory/+/alarms/#".into(),
            stream: s("alarms"),
        }])
        .unwrap();
        assert_eq!(m.streams_for_filter("#"), Selection::All);
        assert_eq!(m.streams_for_filter("+/x"), Selection::All);
        let sel = |v: &[&str]| Selection::Streams(v.iter().map(|n| s(n)).collect());
        assert_eq!(m.streams_for_filter("plant1/+/temp"), sel(&["plant1"]));
        assert_eq!(
            m.streams_for_filter("factory/f1/#"),
            sel(&["alarms", "factory"])
        );
        assert_eq!(m.streams_for_filter("factory/f1/temp"), sel(&["factory"]));
        assert_eq!(m.streams_for_filter("$SYS/#"), sel(&["mqtt-sys"]));
    }

    /// Whatever a topic maps to is among the streams a matching filter reads.
    #[test]
    fn selection_never_misses_a_publish() {
        let m = TopicMap::new(vec![
            MappingRule {
                filter: "a/+/c".into(),
                stream: s("r1"),
            },
            MappingRule {
                filter: "b/#".into(),
                stream: s("r2"),
            },
        ])
        .unwrap();
        let topics = [
            "a/b/c", "a/x/c", "a/b", "b", "b/c/d", "c/d", "$SYS/x", " /y", "/", "a",
        ];
        let filters = [
            "#", "+", "a/#", "a/+/c", "a/b/+", "b/+", "+/c", "c/#", "$SYS/#", "/", "+/+",
        ];
        for t in topics {
            for f in filters {
                if topic::matches(f, t) {
                    let stream = m.stream_for(t);
                    match m.streams_for_filter(f) {
                        Selection::All => {}
                        Selection::Streams(set) => assert!(
                            set.contains(&stream),
                            "{t} → {stream} not read by {f}: {set:?}"
                        ),
                    }
                }
            }
        }
    }

    #[test]
    fn routing_topics_of_other_protocols() {
        assert_eq!(routing_topic("s", None, &[]), "s");
        assert_eq!(routing_topic("s", Some(b"dev-1"), &[]), "s/dev-1");
        assert_eq!(routing_topic("s", Some(&[0xff]), &[]), "s");
        assert_eq!(routing_topic("s", Some(b"a/+"), &[]), "s");
        let h = [Header::new(TOPIC_HEADER, "plant1/line4/temp")];
        assert_eq!(routing_topic("plant1", Some(b"k"), &h), "plant1/line4/temp");
    }
}
