//! The JSON shapes of records on the HTTP and WebSocket APIs, and their
//! conversion from and to stored records. Pure: no I/O.
//!
//! Producing: `value` is any JSON; a JSON string is stored as its UTF-8 text,
//! anything else as compact JSON. `value_base64` stores exact bytes. Keys:
//! `key` (UTF-8) or `key_base64`. Headers: an object of strings, or an
//! ordered array of `{"key", "value" | "value_base64"}`.
//!
//! Consuming (`format=json`, the default): a value that parses as JSON is
//! embedded as JSON, else valid UTF-8 is a JSON string, else it comes as
//! `value_base64`. `format=base64` always gives exact bytes as `value_base64`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use bytes::Bytes;
use fjord_core::{Header, Record, RecordInput};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ApiError;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordIn {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub key_base64: Option<String>,
    #[serde(default)]
    pub value: Option<Value>,
    #[serde(default)]
    pub value_base64: Option<String>,
    #[serde(default)]
    pub headers: Option<HeadersIn>,
    /// Event time, ms since the epoch.
    #[serde(default)]
    pub event_ts: Option<i64>,
    /// Echoed in WebSocket acks to correlate them.
    #[serde(default)]
    pub id: Option<Value>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum HeadersIn {
    Map(serde_json::Map<String, Value>),
    List(Vec<HeaderIn>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderIn {
    pub key: String,
    #[serde(default)]
    pub value: Option<String>,
    #[serde(default)]
    pub value_base64: Option<String>,
}

/// A produce body: one record, or `{"records": [...]}`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum ProduceBody {
    Many {
        records: Vec<RecordIn>,
        #[serde(default)]
        partition: Option<u32>,
    },
    One(Box<RecordIn>),
}

fn b64(field: &str, s: &str) -> Result<Bytes, ApiError> {
    B64.decode(s).map(Bytes::from).map_err(|e| {
        ApiError::bad_request(
            "invalid_argument",
            format!("{field} is not valid base64: {e}"),
        )
    })
}

impl RecordIn {
    pub fn into_input(self) -> Result<RecordInput, ApiError> {
        let key = match (self.key, self.key_base64) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "invalid_argument",
                    "give `key` or `key_base64`, not both",
                ))
            }
            (Some(k), None) => Some(Bytes::from(k)),
            (None, Some(k)) => Some(b64("key_base64", &k)?),
            (None, None) => None,
        };
        let value = match (self.value, self.value_base64) {
            (Some(_), Some(_)) => {
                return Err(ApiError::bad_request(
                    "invalid_argument",
                    "give `value` or `value_base64`, not both",
                ))
            }
            (Some(Value::String(s)), None) => Some(Bytes::from(s)),
            (Some(Value::Null), None) => None,
            (Some(v), None) => Some(Bytes::from(serde_json::to_vec(&v).unwrap_or_default())),
            (None, Some(v)) => Some(b64("value_base64", &v)?),
            (None, None) => None,
        };
        let headers = match self.headers {
            None => Vec::new(),
            Some(HeadersIn::Map(m)) => m
                .into_iter()
                .map(|(k, v)| match v {
                    Value::String(s) => Ok(Header::new(k, s)),
                    Value::Null => Ok(Header {
                        key: k,
                        value: None,
                    }),
                    other => Err(ApiError::bad_request(
                        "invalid_argument",
                        format!("header {k:?} must be a string, got {other}"),
                    )),
                })
                .collect::<Result<_, _>>()?,
            Some(HeadersIn::List(l)) => l
                .into_iter()
                .map(|h| {
                    let value = match (h.value, h.value_base64) {
                        (Some(v), None) => Some(Bytes::from(v)),
                        (None, Some(v)) => Some(b64("header value_base64", &v)?),
                        (None, None) => None,
                        (Some(_), Some(_)) => {
                            return Err(ApiError::bad_request(
                                "invalid_argument",
                                "a header has `value` or `value_base64`, not both",
                            ))
                        }
                    };
                    Ok(Header { key: h.key, value })
                })
                .collect::<Result<_, _>>()?,
        };
        Ok(RecordInput {
            key,
            value,
            headers,
            event_ts: self.event_ts,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ValueFormat {
    #[default]
    Json,
    Base64,
}

#[derive(Debug, Serialize)]
pub struct HeaderOut {
    pub key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct RecordOut {
    pub partition: u32,
    pub offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key_base64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_base64: Option<String>,
    pub headers: Vec<HeaderOut>,
    pub publish_ts: i64,
    pub event_ts: i64,
}

fn text_or_b64(b: &Bytes, format: ValueFormat) -> (Option<String>, Option<String>) {
    match (format, std::str::from_utf8(b)) {
        (ValueFormat::Json, Ok(s)) => (Some(s.to_string()), None),
        _ => (None, Some(B64.encode(b))),
    }
}

pub fn record_out(partition: u32, r: Record, format: ValueFormat) -> RecordOut {
    let (key, key_base64) = r
        .key
        .as_ref()
        .map_or((None, None), |k| text_or_b64(k, format));
    let (value, value_base64) = match (&r.value, format) {
        (None, _) => (Some(Value::Null), None),
        (Some(v), ValueFormat::Base64) => (None, Some(B64.encode(v))),
        (Some(v), ValueFormat::Json) => match serde_json::from_slice::<Value>(v) {
            Ok(j) if !j.is_string() => (Some(j), None),
            _ => match std::str::from_utf8(v) {
                Ok(s) => (Some(Value::String(s.to_string())), None),
                Err(_) => (None, Some(B64.encode(v))),
            },
        },
    };
    let headers = r
        .headers
        .into_iter()
        .map(|h| {
            let (value, value_base64) = h
                .value
                .as_ref()
                .map_or((None, None), |v| text_or_b64(v, ValueFormat::Json));
            HeaderOut {
                key: h.key,
                value,
                value_base64,
            }
        })
        .collect();
    RecordOut {
        partition,
        offset: r.offset,
        key,
        key_base64,
        value,
        value_base64,
        headers,
        publish_ts: r.publish_ts,
        event_ts: r.event_ts,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_by_their_kind() {
        let r: RecordIn =
            serde_json::from_str(r#"{"key":"k","value":{"t":21.5},"headers":{"unit":"C"}}"#)
                .unwrap();
        let inp = r.into_input().unwrap();
        assert_eq!(inp.value.as_deref(), Some(&br#"{"t":21.5}"#[..]));
        let rec = Record {
            offset: 3,
            key: inp.key,
            value: inp.value,
            headers: inp.headers,
            publish_ts: 1,
            event_ts: 1,
        };
        let out = serde_json::to_value(record_out(0, rec, ValueFormat::Json)).unwrap();
        assert_eq!(out["value"]["t"], 21.5);
        assert_eq!(out["key"], "k");
        assert_eq!(out["headers"][0]["value"], "C");
    }

    #[test]
    fn binary_values_come_back_exact() {
        let r: RecordIn = serde_json::from_str(r#"{"value_base64":"AP8="}"#).unwrap();
        let inp = r.into_input().unwrap();
        assert_eq!(inp.value.as_deref(), Some(&[0u8, 255][..]));
        let rec = Record {
            offset: 0,
            key: None,
            value: inp.value,
            headers: vec![],
            publish_ts: 1,
            event_ts: 1,
        };
        let out = serde_json::to_value(record_out(0, rec, ValueFormat::Json)).unwrap();
        assert_eq!(out["value_base64"], "AP8=");
    }

    #[test]
    fn unknown_fields_and_bad_base64_are_refused() {
        assert!(serde_json::from_str::<RecordIn>(r#"{"valu":1}"#).is_err());
        let r: RecordIn = serde_json::from_str(r#"{"value_base64":"!!"}"#).unwrap();
        assert!(r.into_input().is_err());
    }
}
