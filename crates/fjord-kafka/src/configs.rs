//! Kafka topic configs ↔ Fjord stream policies: the settings both have.

use fjord_core::policy::Compaction;
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
}
