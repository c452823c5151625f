//! Kafka topic names ↔ Fjord streams: `stream` is a stream of the
//! namespace `default`, `namespace.stream` one of another namespace, both
//! within the connection's tenant.

use fjord_core::names::DEFAULT_NAMESPACE;
use fjord_core::{NamespaceName, StreamName, StreamRef, TenantName};

/// The stream a topic names, or `None` for a name that is not valid.
pub fn stream_for_topic(tenant: &TenantName, topic: &str) -> Option<StreamRef> {
    let (ns, stream) = match topic.split_once('.') {
        Some((ns, stream)) => (ns, stream),
        None => (DEFAULT_NAMESPACE, topic),
    };
    Some(StreamRef {
        tenant: tenant.clone(),
        namespace: NamespaceName::new(ns).ok()?,
        stream: StreamName::new(stream).ok()?,
    })
}

/// The topic name of a stream.
pub fn topic_for_stream(s: &StreamRef) -> String {
    if s.namespace.as_str() == DEFAULT_NAMESPACE {
        s.stream.to_string()
    } else {
        format!("{}.{}", s.namespace, s.stream)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_map_to_streams_and_back() {
        let t = TenantName::new("public").unwrap();
        let s = stream_for_topic(&t, "sensors").unwrap();
        assert_eq!(
            (s.namespace.as_str(), s.stream.as_str()),
            ("default", "sensors")
        );
        assert_eq!(topic_for_stream(&s), "sensors");
        let s = stream_for_topic(&t, "plant.alarms").unwrap();
        assert_eq!(
            (s.namespace.as_str(), s.stream.as_str()),
            ("plant", "alarms")
        );
        assert_eq!(topic_for_stream(&s), "plant.alarms");
        assert!(stream_for_topic(&t, "").is_none());
        assert!(stream_for_topic(&t, "bad name").is_none());
    }
}
