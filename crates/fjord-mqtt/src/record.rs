//! MQTT PUBLISH ↔ Fjord record (ARCHITECTURE §2–§3). Pure.
//!
//! A PUBLISH becomes a record keyed by its topic, with the payload as value
//! and the MQTT facts in headers, so any reader (HTTP, Kafka) can rebuild the
//! original message:
//!
//! | header | holds |
//! |---|---|
//! | `mqtt.topic` | the full topic |
//! | `mqtt.qos` | `0`, `1` or `2` as published |
//! | `mqtt.retain` | `1` when the retain flag was set |
//! | `mqtt.client` | the publishing client id (for No Local) |
//! | `mqtt.content_type`, `mqtt.response_topic`, `mqtt.correlation_data`, `mqtt.payload_format` | 5.0 properties |
//! | `mqtt.message_expiry` | 5.0 Message Expiry Interval, seconds, from the publish time |
//! | `mqtt.user.<name>` | each 5.0 user property, in order |

use bytes::Bytes;
use fjord_core::{Header, Record, RecordInput};

use crate::codec::{Properties, QoS};
use crate::mapping::{routing_topic, TOPIC_HEADER};

pub const QOS_HEADER: &str = "mqtt.qos";
pub const RETAIN_HEADER: &str = "mqtt.retain";
pub const CLIENT_HEADER: &str = "mqtt.client";
pub const CONTENT_TYPE_HEADER: &str = "mqtt.content_type";
pub const RESPONSE_TOPIC_HEADER: &str = "mqtt.response_topic";
pub const CORRELATION_DATA_HEADER: &str = "mqtt.correlation_data";
pub const PAYLOAD_FORMAT_HEADER: &str = "mqtt.payload_format";
pub const MESSAGE_EXPIRY_HEADER: &str = "mqtt.message_expiry";
pub const USER_HEADER_PREFIX: &str = "mqtt.user.";

/// The record a PUBLISH is stored as.
pub fn to_record(
    topic: &str,
    qos: QoS,
    retain: bool,
    payload: Bytes,
    props: &Properties,
    client_id: &str,
) -> RecordInput {
    let mut headers = vec![
        Header::new(TOPIC_HEADER, topic.to_string()),
        Header::new(QOS_HEADER, (qos as u8).to_string()),
        Header::new(CLIENT_HEADER, client_id.to_string()),
    ];
    if retain {
        headers.push(Header::new(RETAIN_HEADER, "1"));
    }
    if let Some(v) = &props.content_type {
        headers.push(Header::new(CONTENT_TYPE_HEADER, v.clone()));
    }
    if let Some(v) = &props.response_topic {
        headers.push(Header::new(RESPONSE_TOPIC_HEADER, v.clone()));
    }
    if let Some(v) = &props.correlation_data {
        headers.push(Header::new(CORRELATION_DATA_HEADER, v.clone()));
    }
    if let Some(v) = props.payload_format_indicator {
        headers.push(Header::new(PAYLOAD_FORMAT_HEADER, v.to_string()));
    }
    if let Some(v) = props.message_expiry_interval {
        headers.push(Header::new(MESSAGE_EXPIRY_HEADER, v.to_string()));
    }
    for (k, v) in &props.user {
        headers.push(Header::new(format!("{USER_HEADER_PREFIX}{k}"), v.clone()));
    }
    RecordInput {
        key: Some(Bytes::copy_from_slice(topic.as_bytes())),
        value: Some(payload),
        headers,
        event_ts: None,
    }
}

/// A stored record as MQTT sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub topic: String,
    pub qos: QoS,
    pub retain: bool,
    pub payload: Bytes,
    pub client_id: Option<String>,
    /// 5.0 properties to forward (message expiry already reduced by the
    /// time the record has waited).
    pub properties: Properties,
    /// False when the message expired before delivery.
    pub live: bool,
}

fn text(v: &Option<Bytes>) -> Option<String> {
    v.as_deref()
        .and_then(|b| std::str::from_utf8(b).ok())
        .map(str::to_string)
}

/// Reads a record of `stream` (written by any protocol) as an MQTT message.
/// Records from other protocols are QoS 1 (they were stored durably) on
/// their routing topic.
pub fn from_record(stream: &str, r: &Record, now_ms: i64) -> Message {
    let mut props = Properties::default();
    let mut qos = QoS::AtLeastOnce;
    let mut retain = false;
    let mut client_id = None;
    let mut live = true;
    for h in &r.headers {
        match h.key.as_str() {
            QOS_HEADER => {
                if let Some(q) = text(&h.value)
                    .and_then(|t| t.parse::<u8>().ok())
                    .and_then(QoS::from_u8)
                {
                    qos = q;
                }
            }
            RETAIN_HEADER => retain = text(&h.value).as_deref() == Some("1"),
            CLIENT_HEADER => client_id = text(&h.value),
            CONTENT_TYPE_HEADER => props.content_type = text(&h.value),
            RESPONSE_TOPIC_HEADER => props.response_topic = text(&h.value),
            CORRELATION_DATA_HEADER => props.correlation_data = h.value.clone(),
            PAYLOAD_FORMAT_HEADER => {
                props.payload_format_indicator = text(&h.value).and_then(|t| t.parse().ok())
            }
            MESSAGE_EXPIRY_HEADER => {
                if let Some(secs) = text(&h.value).and_then(|t| t.parse::<u32>().ok()) {
                    let waited = (now_ms.saturating_sub(r.publish_ts) / 1000).max(0) as u32;
                    live = waited < secs;
                    props.message_expiry_interval = Some(secs.saturating_sub(waited));
                }
            }
            k => {
                if let (Some(name), Some(v)) = (k.strip_prefix(USER_HEADER_PREFIX), text(&h.value))
                {
                    props.user.push((name.to_string(), v));
                }
            }
        }
    }
    Message {
        topic: routing_topic(stream, r.key.as_deref(), &r.headers),
        qos,
        retain,
        payload: r.value.clone().unwrap_or_default(),
        client_id,
        properties: props,
        live,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(input: RecordInput, publish_ts: i64) -> Record {
        Record {
            offset: 0,
            key: input.key,
            value: input.value,
            headers: input.headers,
            publish_ts,
            event_ts: publish_ts,
        }
    }

    #[test]
    fn a_publish_survives_the_round_trip() {
        let props = Properties {
            content_type: Some("application/json".into()),
            response_topic: Some("reply/here".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            payload_format_indicator: Some(1),
            message_expiry_interval: Some(60),
            user: vec![("a".into(), "1".into()), ("a".into(), "2".into())],
            ..Default::default()
        };
        let rec = to_record(
            "plant1/line4/temp",
            QoS::ExactlyOnce,
            true,
            Bytes::from_static(b"21.5"),
            &props,
            "dev-7",
        );
        assert_eq!(rec.key.as_deref(), Some(&b"plant1/line4/temp"[..]));
        let m = from_record("plant1", &stored(rec, 10_000), 25_000);
        assert_eq!(m.topic, "plant1/line4/temp");
        assert_eq!((m.qos, m.retain, m.live), (QoS::ExactlyOnce, true, true));
        assert_eq!(m.client_id.as_deref(), Some("dev-7"));
        assert_eq!(
            m.properties.message_expiry_interval,
            Some(45),
            "reduced by the 15 s waited"
        );
        assert_eq!(m.properties.user, props.user);
        assert_eq!(m.properties.correlation_data, props.correlation_data);
    }

    #[test]
    fn expired_messages_are_marked() {
        let props = Properties {
            message_expiry_interval: Some(5),
            ..Default::default()
        };
        let rec = to_record("t", QoS::AtMostOnce, false, Bytes::new(), &props, "c");
        assert!(!from_record("t", &stored(rec, 0), 6_000).live);
    }

    #[test]
    fn records_from_other_protocols() {
        let r = Record {
            offset: 3,
            key: Some(Bytes::from_static(b"dev-1")),
            value: Some(Bytes::from_static(b"{}")),
            headers: vec![],
            publish_ts: 0,
            event_ts: 0,
        };
        let m = from_record("sensors", &r, 0);
        assert_eq!(
            (m.topic.as_str(), m.qos, m.retain),
            ("sensors/dev-1", QoS::AtLeastOnce, false)
        );
    }
}
