//! Policies of a namespace, overridable per stream (ARCHITECTURE §2).
//!
//! A [`Policy`] is a set of optional settings. The effective settings of a
//! stream are its own policy layered over its namespace's, layered over the
//! node defaults: [`Policy::merged_over`] then [`Policy::resolve`].

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// When an append counts as durable, and therefore when it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Durability {
    /// fsync before every acknowledgement (concurrent appends share one fsync).
    Always,
    /// Acknowledged once written; fsynced in the background at most every
    /// `ms` and at most `ms` after the write (a bounded loss window on power
    /// failure, as Kafka's `flush.ms`).
    Interval { ms: u64 },
    /// Acknowledged once written to the OS page cache; the OS flushes.
    Os,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Durability::Always => f.write_str("always"),
            Durability::Os => f.write_str("os"),
            Durability::Interval { ms } => write!(f, "interval({ms})"),
        }
    }
}

impl FromStr for Durability {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        match s {
            "always" => return Ok(Durability::Always),
            "os" => return Ok(Durability::Os),
            _ => {}
        }
        let inner = s
            .strip_prefix("interval(")
            .and_then(|r| r.strip_suffix(')'))
            .map(|r| r.trim().trim_end_matches("ms"));
        match inner.and_then(|ms| ms.parse::<u64>().ok()) {
            Some(ms) if (1..=60_000).contains(&ms) => Ok(Durability::Interval { ms }),
            _ => Err(format!(
                "invalid durability {s:?}: expected \"always\", \"os\" or \"interval(<1..60000 ms>)\""
            )),
        }
    }
}

impl Serialize for Durability {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Durability {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Log compaction mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Compaction {
    #[default]
    None,
    /// Keep only the newest record of each key (current state per device).
    LatestPerKey,
}

/// What identifies a record for deduplication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum DedupBy {
    /// The value of header `fjord.dedup_id` (records without it are never
    /// duplicates).
    #[default]
    Id,
    /// The record key (keyless records are never duplicates).
    Key,
}

/// The header that carries a record's deduplication id.
pub const DEDUP_ID_HEADER: &str = "fjord.dedup_id";

/// One MQTT topic mapping rule: topics matching `filter` are stored in
/// `stream` (ARCHITECTURE §3). Rules are tried in order; unmatched topics
/// follow the default rule (first topic level names the stream).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttTopicRule {
    pub filter: String,
    pub stream: crate::StreamName,
}

/// Rules per namespace at most.
pub const MQTT_TOPIC_RULES_MAX: usize = 1000;

/// A stream's value schema: the SQL columns its values become, and, when
/// `enforce` is set, the shape every appended value must have (a value that
/// does not fit is refused with the protocol's own error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "kebab-case", deny_unknown_fields)]
pub enum StreamSchema {
    /// JSON values described by a JSON Schema; its top-level `properties`
    /// are the columns.
    JsonSchema {
        definition: serde_json::Value,
        #[serde(default = "enforced")]
        enforce: bool,
    },
    /// Avro binary values written with this schema (a record's fields are
    /// the columns; any other schema is one column `value`).
    Avro {
        /// The schema as JSON (or a string holding it).
        definition: serde_json::Value,
        #[serde(default)]
        framing: AvroFraming,
        #[serde(default = "enforced")]
        enforce: bool,
    },
    /// Columns declared over JSON values, never enforced: a value or field
    /// that does not fit reads as NULL.
    JsonColumns { columns: Vec<DeclaredColumn> },
}

fn enforced() -> bool {
    true
}

/// How an Avro value is framed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AvroFraming {
    /// A bare datum, or Avro's single-object encoding (`C3 01`, then the
    /// schema's fingerprint) when the value starts with it.
    #[default]
    Auto,
    /// Confluent's wire format: a zero byte and a 4-byte schema id before
    /// the datum (the id is not checked against a registry).
    Confluent,
}

/// One column declared over JSON values.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeclaredColumn {
    pub name: String,
    /// `bigint`, `double`, `text`, `boolean`, `timestamp` or `json`.
    #[serde(rename = "type")]
    pub ty: String,
    /// A JSON Pointer (RFC 6901) into the value; `/<name>` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Optional settings; `None` means "inherit".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub durability: Option<Durability>,
    /// Memory only: a bounded ring that drops its oldest records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral: Option<bool>,
    /// Bytes the in-memory ring of an ephemeral partition holds at most.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ephemeral_bytes_max: Option<u64>,
    /// Delete whole segments older than this; -1 keeps forever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_ms: Option<i64>,
    /// Delete the oldest segments while a partition is larger; -1 is unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_bytes: Option<i64>,
    /// Records older than this are no longer delivered to readers; -1 never expires.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_ttl_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compaction: Option<Compaction>,
    /// Drop a record whose dedup id was appended to the same partition
    /// within this window (answering with the original's offset); -1 is off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_window_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedup_by: Option<DedupBy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_message_bytes: Option<u64>,
    /// Partitions of a stream created without an explicit count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions_default: Option<u32>,
    /// Roll the active segment past this size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_bytes: Option<u64>,
    /// Roll the active segment once it is this old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment_ms: Option<i64>,
    /// MQTT topic → stream rules (meaningful on a namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mqtt_topic_rules: Option<Vec<MqttTopicRule>>,
    /// Kafka clients may create a stream by naming it (Metadata with
    /// auto-creation allowed, Produce); meaningful on a namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka_auto_create_topics: Option<bool>,
    /// Encrypt batches on disk (AES-256-GCM under the tenant's key from
    /// the node's key file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypted: Option<bool>,
    /// The values' schema (checked by the broker when the policy is set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<StreamSchema>,
}

/// Every setting with a concrete value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResolvedPolicy {
    pub durability: Durability,
    pub ephemeral: bool,
    pub ephemeral_bytes_max: u64,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub message_ttl_ms: i64,
    pub compaction: Compaction,
    pub dedup_window_ms: i64,
    pub dedup_by: DedupBy,
    pub max_message_bytes: u64,
    pub partitions_default: u32,
    pub segment_bytes: u64,
    pub segment_ms: i64,
    pub mqtt_topic_rules: Vec<MqttTopicRule>,
    pub kafka_auto_create_topics: bool,
    #[serde(default)]
    pub encrypted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schema: Option<StreamSchema>,
}

impl Default for ResolvedPolicy {
    /// The node defaults of the embedded configuration.
    fn default() -> Self {
        Self {
            durability: Durability::Interval { ms: 5 },
            ephemeral: false,
            ephemeral_bytes_max: 16 * 1024 * 1024,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            message_ttl_ms: -1,
            compaction: Compaction::None,
            dedup_window_ms: -1,
            dedup_by: DedupBy::Id,
            max_message_bytes: 1024 * 1024,
            partitions_default: 1,
            segment_bytes: 128 * 1024 * 1024,
            segment_ms: 24 * 3600 * 1000,
            mqtt_topic_rules: Vec::new(),
            // As Kafka's `auto.create.topics.enable`.
            kafka_auto_create_topics: true,
            encrypted: false,
            schema: None,
        }
    }
}

/// Limits on settings, checked when a policy is stored.
pub const PARTITIONS_MAX: u32 = 1024;
pub const MAX_MESSAGE_BYTES_MAX: u64 = 64 * 1024 * 1024;
/// A week: the window is held in memory, so it is bounded.
pub const DEDUP_WINDOW_MS_MAX: i64 = 7 * 24 * 3600 * 1000;

impl Policy {
    /// `self`'s settings where set, otherwise `base`'s.
    pub fn merged_over(&self, base: &Policy) -> Policy {
        macro_rules! pick {
            ($($f:ident),*) => { Policy { $($f: self.$f.clone().or_else(|| base.$f.clone())),* } };
        }
        pick!(
            durability,
            ephemeral,
            ephemeral_bytes_max,
            retention_ms,
            retention_bytes,
            message_ttl_ms,
            compaction,
            dedup_window_ms,
            dedup_by,
            max_message_bytes,
            partitions_default,
            segment_bytes,
            segment_ms,
            mqtt_topic_rules,
            kafka_auto_create_topics,
            encrypted,
            schema
        )
    }

    pub fn resolve(&self, defaults: &ResolvedPolicy) -> ResolvedPolicy {
        ResolvedPolicy {
            durability: self.durability.unwrap_or(defaults.durability),
            ephemeral: self.ephemeral.unwrap_or(defaults.ephemeral),
            ephemeral_bytes_max: self
                .ephemeral_bytes_max
                .unwrap_or(defaults.ephemeral_bytes_max),
            retention_ms: self.retention_ms.unwrap_or(defaults.retention_ms),
            retention_bytes: self.retention_bytes.unwrap_or(defaults.retention_bytes),
            message_ttl_ms: self.message_ttl_ms.unwrap_or(defaults.message_ttl_ms),
            compaction: self.compaction.unwrap_or(defaults.compaction),
            dedup_window_ms: self.dedup_window_ms.unwrap_or(defaults.dedup_window_ms),
            dedup_by: self.dedup_by.unwrap_or(defaults.dedup_by),
            max_message_bytes: self.max_message_bytes.unwrap_or(defaults.max_message_bytes),
            partitions_default: self
                .partitions_default
                .unwrap_or(defaults.partitions_default),
            segment_bytes: self.segment_bytes.unwrap_or(defaults.segment_bytes),
            segment_ms: self.segment_ms.unwrap_or(defaults.segment_ms),
            mqtt_topic_rules: self
                .mqtt_topic_rules
                .clone()
                .unwrap_or_else(|| defaults.mqtt_topic_rules.clone()),
            kafka_auto_create_topics: self
                .kafka_auto_create_topics
                .unwrap_or(defaults.kafka_auto_create_topics),
            encrypted: self.encrypted.unwrap_or(defaults.encrypted),
            schema: self.schema.clone().or_else(|| defaults.schema.clone()),
        }
    }

    /// Checks every set value is within its bounds; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        fn range<T: PartialOrd + fmt::Display + Copy>(
            key: &str,
            v: Option<T>,
            lo: T,
            hi: T,
        ) -> Result<(), String> {
            match v {
                Some(v) if v < lo || v > hi => Err(format!("{key} = {v} is outside {lo}..={hi}")),
                _ => Ok(()),
            }
        }
        range(
            "partitions_default",
            self.partitions_default,
            1,
            PARTITIONS_MAX,
        )?;
        range(
            "max_message_bytes",
            self.max_message_bytes,
            1,
            MAX_MESSAGE_BYTES_MAX,
        )?;
        range("segment_bytes", self.segment_bytes, 4096, 1 << 32)?;
        range("segment_ms", self.segment_ms, 1000, i64::MAX)?;
        range(
            "ephemeral_bytes_max",
            self.ephemeral_bytes_max,
            4096,
            1 << 36,
        )?;
        range("retention_ms", self.retention_ms, -1, i64::MAX)?;
        range("retention_bytes", self.retention_bytes, -1, i64::MAX)?;
        range("message_ttl_ms", self.message_ttl_ms, -1, i64::MAX)?;
        range(
            "dedup_window_ms",
            self.dedup_window_ms,
            -1,
            DEDUP_WINDOW_MS_MAX,
        )?;
        if let Some(rules) = &self.mqtt_topic_rules {
            if rules.len() > MQTT_TOPIC_RULES_MAX {
                return Err(format!(
                    "mqtt_topic_rules: {} rules, at most {MQTT_TOPIC_RULES_MAX}",
                    rules.len()
                ));
            }
            for (i, r) in rules.iter().enumerate() {
                if crate::topic::shared(&r.filter).is_some() {
                    return Err(format!(
                        "mqtt_topic_rules[{i}]: {:?} is a shared subscription, not a topic filter",
                        r.filter
                    ));
                }
                crate::topic::validate_filter(&r.filter).map_err(|e| {
                    format!(
                        "mqtt_topic_rules[{i}]: topic filter {:?} is invalid ({e:?})",
                        r.filter
                    )
                })?;
            }
        }
        if self.dedup_window_ms == Some(0) {
            return Err("dedup_window_ms = 0: use -1 to turn deduplication off".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durability_parses_and_prints() {
        for s in ["always", "os", "interval(20)"] {
            let d: Durability = s.parse().unwrap();
            assert_eq!(d.to_string(), s);
        }
        assert_eq!("interval(5ms)".parse(), Ok(Durability::Interval { ms: 5 }));
        assert!("interval(0)".parse::<Durability>().is_err());
        assert!("sometimes".parse::<Durability>().is_err());
    }

    #[test]
    fn stream_overrides_namespace_overrides_defaults() {
        let ns = Policy {
            retention_ms: Some(1000),
            durability: Some(Durability::Always),
            ..Default::default()
        };
        let st = Policy {
            retention_ms: Some(5),
            ..Default::default()
        };
        let r = st.merged_over(&ns).resolve(&ResolvedPolicy::default());
        assert_eq!(r.retention_ms, 5);
        assert_eq!(r.durability, Durability::Always);
        assert_eq!(
            r.max_message_bytes,
            ResolvedPolicy::default().max_message_bytes
        );
    }

    #[test]
    fn json_form_is_stable() {
        let p: Policy =
            serde_json::from_str(r#"{"durability":"interval(10)","compaction":"latest-per-key"}"#)
                .unwrap();
        assert_eq!(p.compaction, Some(Compaction::LatestPerKey));
        assert!(serde_json::from_str::<Policy>(r#"{"nope":1}"#).is_err());
        assert!(Policy {
            partitions_default: Some(0),
            ..Default::default()
        }
        .validate()
        .is_err());
    }
}
