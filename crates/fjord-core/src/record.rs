//! Records as producers hand them in and as readers get them back.

use bytes::Bytes;

/// One header: an ordered `(string, bytes)` pair. Kafka allows a null value,
/// so `value` is optional.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub key: String,
    pub value: Option<Bytes>,
}

impl Header {
    pub fn new(key: impl Into<String>, value: impl Into<Bytes>) -> Self {
        Self {
            key: key.into(),
            value: Some(value.into()),
        }
    }
}

/// What a producer supplies. The broker assigns the offset and `publish_ts`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecordInput {
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    /// Producer-side event time in ms; `None` means "same as publish time".
    pub event_ts: Option<i64>,
}

impl RecordInput {
    /// Bytes this record adds to a batch, roughly; used for size limits.
    pub fn approx_size(&self) -> usize {
        let h: usize = self
            .headers
            .iter()
            .map(|h| h.key.len() + h.value.as_ref().map_or(0, |v| v.len()) + 4)
            .sum();
        self.key.as_ref().map_or(0, |k| k.len())
            + self.value.as_ref().map_or(0, |v| v.len())
            + h
            + 16
    }
}

/// A stored record, decoded from its batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    pub headers: Vec<Header>,
    /// Set by the broker when the batch was appended.
    pub publish_ts: i64,
    /// Set by the producer; equals `publish_ts` when the producer gave none.
    pub event_ts: i64,
}
