//! Kafka topic configs ↔ Fjord stream policies: the settings both have.

use fjord_core::policy::Compaction;
use fjord_core::policy::ResolvedPolicy;
use fjord_core::Policy;

/// Applies one Kafka topic config to `policy`; `Err` names why it cannot
/// be (an unknown key, or a value out of range).
pub fn apply(policy: &mut Policy, key: &str, value: Option<&str>) -> Result<(), String> {
    let Some(v) = value else {
        // A null value resets the key to the default (inherit).
        return reset(policy, key);
    };
    let int = |v: &str| {
        v.trim()
            .parse::<i64>()
            .map_err(|_| format!("{key}: {v:?} is not a number"))
    };
    match key {
        "retention.ms" => policy.retention_ms = Some(int(v)?),
        "retention.bytes" => policy.retention_bytes = Some(int(v)?),
        "max.message.bytes" => {
            policy.max_message_bytes =
                Some(u64::try_from(int(v)?).map_err(|_| format!("{key} must be positive"))?)
        }
        "segment.bytes" => {
            policy.segment_bytes =
                Some(u64::try_from(int(v)?).map_err(|_| format!("{key} must be positive"))?)
        }
        "segment.ms" => policy.segment_ms = Some(int(v)?),
        "cleanup.policy" => {
            policy.compaction = Some(match v.trim() {
                "delete" => Compaction::None,
                "compact" | "compact,delete" | "delete,compact" => Compaction::LatestPerKey,
                other => {
                    return Err(format!(
                        "cleanup.policy {other:?}: expected delete or compact"
                    ))
                }
            })
        }
        other => return Err(format!("topic config {other:?} is not supported")),
    }
    Ok(())
}

/// The topic configs that map onto a stream policy, in the order they are
/// described.
pub const TOPIC_KEYS: &[&str] = &[
    "cleanup.policy",
    "max.message.bytes",
    "retention.bytes",
    "retention.ms",
    "segment.bytes",
    "segment.ms",
];

/// Kafka's config value types (DescribeConfigs v3+).
pub mod kind {
    pub const BOOLEAN: i8 = 1;
    pub const STRING: i8 = 2;
    pub const INT: i8 = 3;
    pub const LONG: i8 = 5;
    pub const LIST: i8 = 7;
}

/// One described config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: &'static str,
    pub value: String,
    /// Set on the stream itself (Kafka: a dynamic topic config); otherwise
    /// inherited from the namespace or the node defaults.
    pub explicit: bool,
    pub read_only: bool,
    pub kind: i8,
}

fn cleanup(c: Compaction) -> &'static str {
    match c {
        Compaction::None => "delete",
        Compaction::LatestPerKey => "compact",
    }
}

/// A topic's configs: the policy-backed ones with their effective values,
/// then fixed facts of how Fjord stores batches (read-only).
pub fn describe(own: &Policy, eff: &ResolvedPolicy) -> Vec<Entry> {
    let e = |name, value: String, explicit, kind| Entry {
        name,
        value,
        explicit,
        read_only: false,
        kind,
    };
    let fixed = |name, value: &str, kind| Entry {
        name,
        value: value.to_string(),
        explicit: false,
        read_only: true,
        kind,
    };
    vec![
        e(
            "cleanup.policy",
            cleanup(eff.compaction).into(),
            own.compaction.is_some(),
            kind::LIST,
        ),
        e(
            "max.message.bytes",
            eff.max_message_bytes.to_string(),
            own.max_message_bytes.is_some(),
            kind::INT,
        ),
        e(
            "retention.bytes",
            eff.retention_bytes.to_string(),
            own.retention_bytes.is_some(),
            kind::LONG,
        ),
        e(
            "retention.ms",
            eff.retention_ms.to_string(),
            own.retention_ms.is_some(),
            kind::LONG,
        ),
        e(
            "segment.bytes",
            eff.segment_bytes.to_string(),
            own.segment_bytes.is_some(),
            kind::INT,
        ),
        e(
            "segment.ms",
            eff.segment_ms.to_string(),
            own.segment_ms.is_some(),
            kind::LONG,
        ),
        // Batches are kept as the producer compressed them, and stamped
        // with the append time.
        fixed("compression.type", "producer", kind::STRING),
        fixed("message.timestamp.type", "LogAppendTime", kind::STRING),
        fixed("min.insync.replicas", "1", kind::INT),
    ]
}

/// The node's defaults as broker configs (read-only: they come from the
/// Fjord configuration file).
pub fn describe_broker(defaults: &ResolvedPolicy, node_id: i32) -> Vec<Entry> {
    let fixed = |name, value: String, kind| Entry {
        name,
        value,
        explicit: false,
        read_only: true,
        kind,
    };
    vec![
        fixed("broker.id", node_id.to_string(), kind::INT),
        fixed(
            "auto.create.topics.enable",
            defaults.kafka_auto_create_topics.to_string(),
            kind::BOOLEAN,
        ),
        fixed(
            "log.cleanup.policy",
            cleanup(defaults.compaction).into(),
            kind::LIST,
        ),
        fixed(
            "log.retention.bytes",
            defaults.retention_bytes.to_string(),
            kind::LONG,
        ),
        fixed(
            "log.retention.ms",
            defaults.retention_ms.to_string(),
            kind::LONG,
        ),
        fixed(
            "log.segment.bytes",
            defaults.segment_bytes.to_string(),
            kind::INT,
        ),
        fixed(
            "message.max.bytes",
            defaults.max_message_bytes.to_string(),
            kind::INT,
        ),
        fixed(
            "num.partitions",
            defaults.partitions_default.to_string(),
            kind::INT,
        ),
    ]
}

/// IncrementalAlterConfigs' APPEND and SUBTRACT, for the one list-valued
/// config: `cleanup.policy` (`delete`, `compact`, or both, which Fjord
/// treats as compact).
pub fn edit_list(
    policy: &mut Policy,
    eff: &ResolvedPolicy,
    key: &str,
    value: &str,
    append: bool,
) -> Result<(), String> {
    if key != "cleanup.policy" {
        return Err(format!("{key} is not a list; use SET"));
    }
    let mut items: Vec<String> = vec![cleanup(policy.compaction.unwrap_or(eff.compaction)).into()];
    for v in value.split(',').map(str::trim).filter(|v| !v.is_empty()) {
        if append {
            if !items.iter().any(|i| i == v) {
                items.push(v.to_string());
            }
        } else {
            items.retain(|i| i != v);
        }
    }
    let joined = if items.is_empty() {
        "delete".to_string()
    } else {
        items.join(",")
    };
    apply(policy, key, Some(&joined))
}

fn reset(policy: &mut Policy, key: &str) -> Result<(), String> {
    match key {
        "retention.ms" => policy.retention_ms = None,
        "retention.bytes" => policy.retention_bytes = None,
        "max.message.bytes" => policy.max_message_bytes = None,
        "segment.bytes" => policy.segment_bytes = None,
        "segment.ms" => policy.segment_ms = None,
        "cleanup.policy" => policy.compaction = None,
        other => return Err(format!("topic config {other:?} is not supported")),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_configs_map_onto_policies() {
        let mut p = Policy::default();
        apply(&mut p, "retention.ms", Some("60000")).unwrap();
        apply(&mut p, "cleanup.policy", Some("compact")).unwrap();
        apply(&mut p, "max.message.bytes", Some("2048")).unwrap();
        assert_eq!(p.retention_ms, Some(60000));
        assert_eq!(p.compaction, Some(Compaction::LatestPerKey));
        assert_eq!(p.max_message_bytes, Some(2048));
        assert!(apply(&mut p, "min.insync.replicas", Some("2")).is_err());
        assert!(apply(&mut p, "retention.ms", Some("soon")).is_err());
        apply(&mut p, "retention.ms", None).unwrap();
        assert_eq!(p.retention_ms, None);
    }

    #[test]
    fn described_values_are_effective_and_say_where_they_come_from() {
        let mut own = Policy::default();
        apply(&mut own, "retention.ms", Some("1000")).unwrap();
        let eff = own.resolve(&ResolvedPolicy::default());
        let d = describe(&own, &eff);
        let get = |n: &str| d.iter().find(|e| e.name == n).unwrap().clone();
        assert_eq!(get("retention.ms").value, "1000");
        assert!(get("retention.ms").explicit);
        assert_eq!(get("cleanup.policy").value, "delete");
        assert!(!get("cleanup.policy").explicit);
        assert!(get("message.timestamp.type").read_only);
        for k in TOPIC_KEYS {
            assert!(d.iter().any(|e| e.name == *k), "{k} described");
        }
    }

    #[test]
    fn cleanup_policy_appends_and_subtracts() {
        let eff = ResolvedPolicy::default();
        let mut p = Policy::default();
        edit_list(&mut p, &eff, "cleanup.policy", "compact", true).unwrap();
        assert_eq!(p.compaction, Some(Compaction::LatestPerKey));
        edit_list(&mut p, &eff, "cleanup.policy", "compact", false).unwrap();
        assert_eq!(p.compaction, Some(Compaction::None));
        assert!(edit_list(&mut p, &eff, "retention.ms", "1", true).is_err());
    }
}
