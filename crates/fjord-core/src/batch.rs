//! Kafka RecordBatch v2 (magic 2): the format of every batch Fjord stores,
//! on disk and in memory (ARCHITECTURE §2).
//!
//! Layout (big endian), byte offsets from the start of the batch:
//!
//! ```text
//!  0 baseOffset i64        | set by the log at append (outside the CRC)
//!  8 batchLength i32       | bytes after this field
//! 12 partitionLeaderEpoch  | i32, outside the CRC
//! 16 magic i8 = 2
//! 17 crc u32               | CRC-32C of bytes 21..end
//! 21 attributes i16        | bits 0-2 codec, bit 3 timestamp type, 4 txn, 5 control
//! 23 lastOffsetDelta i32
//! 27 baseTimestamp i64
//! 35 maxTimestamp i64
//! 43 producerId i64, 51 producerEpoch i16, 53 baseSequence i32
//! 57 recordCount i32
//! 61 records
//! ```
//!
//! Fjord keeps two times per record. The producer's event time is the record
//! timestamp (`baseTimestamp + timestampDelta`); the broker's publish time is
//! written into `maxTimestamp` with the timestamp-type bit set to
//! LogAppendTime, exactly as a Kafka broker does for a topic with
//! `message.timestamp.type=LogAppendTime`. So a batch produced by any client
//! is stored as sent, only its base offset, publish time and CRC rewritten.

use std::ops::ControlFlow;

use bytes::Bytes;

use crate::record::{Header, Record, RecordInput};
use crate::varint::{get_varint, get_varlong, put_varint, put_varlong, varlong_len};
use crate::CoreError;

pub const HEADER_LEN: usize = 61;
/// Bytes needed to learn a batch's offset and total length.
pub const LOG_OVERHEAD: usize = 12;
pub const MAGIC: i8 = 2;
/// Kafka's marker for "no timestamp".
pub const NO_TIMESTAMP: i64 = -1;
const CRC_START: usize = 21;
const ATTR_TIMESTAMP_LOG_APPEND: i16 = 1 << 3;
const ATTR_CODEC_MASK: i16 = 0x07;
/// A sanity bound on one batch: larger claims are corruption, not data.
pub const BATCH_LEN_MAX: usize = 256 * 1024 * 1024;

/// Producer identity carried by a batch (idempotence; -1 when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProducerInfo {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
}

impl Default for ProducerInfo {
    fn default() -> Self {
        Self {
            producer_id: -1,
            producer_epoch: -1,
            base_sequence: -1,
        }
    }
}

/// The fixed-size header of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer: ProducerInfo,
    pub record_count: i32,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2 bytes"))
}

/// The total length (`12 + batchLength`) of the batch starting at `buf`,
/// from its first 12 bytes alone. Used to frame batches in a byte stream.
pub fn peek_total_len(buf: &[u8]) -> Result<usize, CoreError> {
    if buf.len() < LOG_OVERHEAD {
        return Err(CoreError::Truncated {
            needed: LOG_OVERHEAD,
            available: buf.len(),
        });
    }
    let len = be_i32(buf, 8);
    if len < (HEADER_LEN - LOG_OVERHEAD) as i32 || len as usize > BATCH_LEN_MAX {
        return Err(CoreError::BadLength(len));
    }
    Ok(LOG_OVERHEAD + len as usize)
}

impl BatchHeader {
    /// Parses the header; checks magic and length, not the CRC.
    pub fn parse(buf: &[u8]) -> Result<Self, CoreError> {
        let total = peek_total_len(buf)?;
        if buf.len() < HEADER_LEN {
            return Err(CoreError::Truncated {
                needed: HEADER_LEN,
                available: buf.len(),
            });
        }
        let magic = buf[16] as i8;
        if magic != MAGIC {
            return Err(CoreError::BadMagic(magic));
        }
        let h = Self {
            base_offset: be_i64(buf, 0),
            batch_length: (total - LOG_OVERHEAD) as i32,
            partition_leader_epoch: be_i32(buf, 12),
            magic,
            crc: u32::from_be_bytes(buf[17..21].try_into().expect("4 bytes")),
            attributes: be_i16(buf, 21),
            last_offset_delta: be_i32(buf, 23),
            base_timestamp: be_i64(buf, 27),
            max_timestamp: be_i64(buf, 35),
            producer: ProducerInfo {
                producer_id: be_i64(buf, 43),
                producer_epoch: be_i16(buf, 51),
                base_sequence: be_i32(buf, 53),
            },
            record_count: be_i32(buf, 57),
        };
        if h.last_offset_delta < 0 || h.record_count < 0 {
            return Err(CoreError::MalformedRecord(
                "negative record count or offset delta",
            ));
        }
        Ok(h)
    }

    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }
    /// The offset the next batch in the log starts at.
    pub fn next_offset(&self) -> i64 {
        self.last_offset() + 1
    }
    pub fn compression(&self) -> u8 {
        (self.attributes & ATTR_CODEC_MASK) as u8
    }
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & ATTR_TIMESTAMP_LOG_APPEND != 0
    }
    pub fn is_control(&self) -> bool {
        self.attributes & (1 << 5) != 0
    }
    /// The broker's publish time for every record of this batch.
    pub fn publish_ts(&self) -> i64 {
        self.max_timestamp
    }
}

/// Verifies the batch's CRC-32C over bytes 21..end. `batch` must be exactly
/// one whole batch.
pub fn verify_crc(batch: &[u8]) -> Result<(), CoreError> {
    let h = BatchHeader::parse(batch)?;
    if batch.len() < h.total_len() {
        return Err(CoreError::Truncated {
            needed: h.total_len(),
            available: batch.len(),
        });
    }
    let computed = crc32c::crc32c(&batch[CRC_START..h.total_len()]);
    if computed != h.crc {
        return Err(CoreError::CrcMismatch {
            stored: h.crc,
            computed,
        });
    }
    Ok(())
}

/// Writes the base offset (not covered by the CRC).
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[0..8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Stamps the broker's publish time: LogAppendTime bit plus `maxTimestamp`,
/// then recomputes the CRC, as a Kafka broker does on append.
pub fn set_publish_ts(batch: &mut [u8], publish_ts: i64) {
    let attrs = be_i16(batch, 21) | ATTR_TIMESTAMP_LOG_APPEND;
    batch[21..23].copy_from_slice(&attrs.to_be_bytes());
    batch[35..43].copy_from_slice(&publish_ts.to_be_bytes());
    let crc = crc32c::crc32c(&batch[CRC_START..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

/// Verifies a whole incoming batch's CRC, then stamps its base offset and
/// the broker's publish time (LogAppendTime) and writes the new CRC. Two
/// hardware CRC passes; cheaper than `crc32c_combine`, which showed up at
/// 15 % of an append profile.
pub fn verify_and_stamp(
    batch: &mut [u8],
    base_offset: i64,
    publish_ts: i64,
) -> Result<BatchHeader, CoreError> {
    let h = BatchHeader::parse(batch)?;
    if batch.len() != h.total_len() {
        return Err(CoreError::BadLength(h.batch_length));
    }
    verify_crc(batch)?;
    set_base_offset(batch, base_offset);
    set_publish_ts(batch, publish_ts);
    BatchHeader::parse(batch)
}

/// Encodes records into one uncompressed batch. Offsets are `base_offset`,
/// `base_offset + 1`, …; `publish_ts` is stamped as LogAppendTime.
pub fn encode(
    base_offset: i64,
    publish_ts: i64,
    producer: ProducerInfo,
    records: &[RecordInput],
) -> Vec<u8> {
    let deltas: Vec<i32> = (0..records.len() as i32).collect();
    encode_with_deltas(base_offset, publish_ts, producer, records, &deltas)
}

/// Encodes records with explicit offset deltas (compaction keeps original
/// offsets, leaving gaps). `deltas` must be strictly increasing and as long as
/// `records`.
pub fn encode_with_deltas(
    base_offset: i64,
    publish_ts: i64,
    producer: ProducerInfo,
    records: &[RecordInput],
    deltas: &[i32],
) -> Vec<u8> {
    assert_eq!(records.len(), deltas.len(), "one offset delta per record");
    // A record without an event time carries Kafka's NO_TIMESTAMP (-1) and
    // reads back with its publish time.
    let base_ts = records
        .first()
        .and_then(|r| r.event_ts)
        .unwrap_or(NO_TIMESTAMP);
    let mut body: Vec<u8> =
        Vec::with_capacity(records.iter().map(|r| r.approx_size()).sum::<usize>() + HEADER_LEN);
    body.resize(HEADER_LEN, 0);
    for (r, &delta) in records.iter().zip(deltas) {
        // The length prefix comes first, so compute it, then write the
        // fields straight into the batch (no per-record buffer).
        let ts_delta = r.event_ts.unwrap_or(NO_TIMESTAMP).wrapping_sub(base_ts);
        let len = 1
            + varlong_len(ts_delta)
            + varlong_len(delta as i64)
            + bytes_len(r.key.as_deref())
            + bytes_len(r.value.as_deref())
            + varlong_len(r.headers.len() as i64)
            + r.headers
                .iter()
                .map(|h| bytes_len(Some(h.key.as_bytes())) + bytes_len(h.value.as_deref()))
                .sum::<usize>();
        put_varlong(&mut body, len as i64);
        let start = body.len();
        body.push(0); // record attributes, unused
        put_varlong(&mut body, ts_delta);
        put_varint(&mut body, delta);
        put_bytes(&mut body, r.key.as_deref());
        put_bytes(&mut body, r.value.as_deref());
        put_varint(&mut body, r.headers.len() as i32);
        for h in &r.headers {
            put_bytes(&mut body, Some(h.key.as_bytes()));
            put_bytes(&mut body, h.value.as_deref());
        }
        debug_assert_eq!(body.len() - start, len, "record length prefix");
    }
    let total = body.len();
    let b = &mut body[..];
    b[0..8].copy_from_slice(&base_offset.to_be_bytes());
    b[8..12].copy_from_slice(&((total - LOG_OVERHEAD) as i32).to_be_bytes());
    b[12..16].copy_from_slice(&(-1i32).to_be_bytes());
    b[16] = MAGIC as u8;
    b[21..23].copy_from_slice(&ATTR_TIMESTAMP_LOG_APPEND.to_be_bytes());
    let last_delta = deltas.last().copied().unwrap_or(0);
    b[23..27].copy_from_slice(&last_delta.to_be_bytes());
    b[27..35].copy_from_slice(&base_ts.to_be_bytes());
    b[35..43].copy_from_slice(&publish_ts.to_be_bytes());
    b[43..51].copy_from_slice(&producer.producer_id.to_be_bytes());
    b[51..53].copy_from_slice(&producer.producer_epoch.to_be_bytes());
    b[53..57].copy_from_slice(&producer.base_sequence.to_be_bytes());
    b[57..61].copy_from_slice(&(records.len() as i32).to_be_bytes());
    let crc = crc32c::crc32c(&b[CRC_START..]);
    b[17..21].copy_from_slice(&crc.to_be_bytes());
    body
}

fn bytes_len(v: Option<&[u8]>) -> usize {
    v.map_or(1, |b| varlong_len(b.len() as i64) + b.len())
}

fn put_bytes(buf: &mut Vec<u8>, v: Option<&[u8]>) {
    match v {
        None => put_varint(buf, -1),
        Some(v) => {
            put_varlong(buf, v.len() as i64);
            buf.extend_from_slice(v);
        }
    }
}

/// Upper bound of the encoded size of one record, for limits checked before
/// encoding.
pub fn record_size_estimate(r: &RecordInput) -> usize {
    let len = |v: Option<usize>| v.map_or(1, |n| varlong_len(n as i64) + n);
    1 + 10
        + 5
        + len(r.key.as_ref().map(|k| k.len()))
        + len(r.value.as_ref().map(|v| v.len()))
        + 5
        + r.headers
            .iter()
            .map(|h| len(Some(h.key.len())) + len(h.value.as_ref().map(|v| v.len())))
            .sum::<usize>()
        + 10
}

fn get_slice<'a>(buf: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, CoreError> {
    let len = get_varint(buf, pos)?;
    if len < 0 {
        return Ok(None);
    }
    let end = pos
        .checked_add(len as usize)
        .filter(|&e| e <= buf.len())
        .ok_or(CoreError::MalformedRecord(
            "field runs past the end of the batch",
        ))?;
    let v = &buf[*pos..end];
    *pos = end;
    Ok(Some(v))
}

/// One record of a batch, borrowed from the batch's (or its inflated
/// section's) memory: what readers that copy records elsewhere (into Arrow
/// columns) walk without an allocation per record.
#[derive(Debug, Clone, Copy)]
pub struct RecordView<'a> {
    pub offset: i64,
    pub publish_ts: i64,
    pub event_ts: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    /// The encoded headers (already walked once: well formed).
    headers: &'a [u8],
    header_count: usize,
}

impl<'a> RecordView<'a> {
    /// The record, owned: its key, value and header values share
    /// `memory`, the buffer the view borrows from.
    pub fn to_record(&self, memory: &Bytes) -> Result<Record, CoreError> {
        let headers = self
            .headers()
            .map(|(k, value)| {
                let key = std::str::from_utf8(k)
                    .map_err(|_| CoreError::HeaderKeyUtf8)?
                    .to_string();
                Ok(Header {
                    key,
                    value: value.map(|v| memory.slice_ref(v)),
                })
            })
            .collect::<Result<Vec<_>, CoreError>>()?;
        Ok(Record {
            offset: self.offset,
            key: self.key.map(|k| memory.slice_ref(k)),
            value: self.value.map(|x| memory.slice_ref(x)),
            headers,
            publish_ts: self.publish_ts,
            event_ts: self.event_ts,
        })
    }

    /// Each header's key bytes and value, in order.
    pub fn headers(&self) -> impl Iterator<Item = (&'a [u8], Option<&'a [u8]>)> + 'a {
        let buf = self.headers;
        let mut pos = 0usize;
        (0..self.header_count).map_while(move |_| {
            let k = get_slice(buf, &mut pos).ok()??;
            let v = get_slice(buf, &mut pos).ok()?;
            Some((k, v))
        })
    }
}

/// A whole batch's header and records section (inflated if it was
/// compressed; `None` for a control batch, which holds no user records).
fn records_section(batch: &Bytes) -> Result<(BatchHeader, Option<(Bytes, usize)>), CoreError> {
    let h = BatchHeader::parse(batch)?;
    if batch.len() < h.total_len() {
        return Err(CoreError::Truncated {
            needed: h.total_len(),
            available: batch.len(),
        });
    }
    if h.is_control() {
        return Ok((h, None));
    }
    let section = if h.compression() == crate::compression::NONE {
        (batch.slice(0..h.total_len()), HEADER_LEN)
    } else {
        let section = &batch[HEADER_LEN..h.total_len()];
        (crate::compression::decompress(h.compression(), section)?, 0)
    };
    Ok((h, Some(section)))
}

/// Calls `f` on every record of one whole batch, in order, borrowing keys,
/// values and headers from it (a compressed batch is inflated first).
/// Control batches hold no user records. Header keys are not checked as
/// UTF-8 here ([`decode_records`] does).
///
/// `f` also gets the memory the view borrows from, to keep parts of it
/// ([`RecordView::to_record`]); it breaks to stop the walk there (the rest
/// of the batch is not decoded).
pub fn for_each_record(
    batch: &Bytes,
    mut f: impl FnMut(&Bytes, RecordView<'_>) -> ControlFlow<()>,
) -> Result<(), CoreError> {
    match records_section(batch)? {
        (h, Some((body, pos))) => walk(&h, &body, pos, |v| Ok(f(&body, v))),
        (_, None) => Ok(()),
    }
}

/// The records of `body` from `pos`, as the batch header `h` counts them,
/// until `f` breaks.
fn walk(
    h: &BatchHeader,
    body: &[u8],
    mut pos: usize,
    mut f: impl FnMut(RecordView<'_>) -> Result<ControlFlow<()>, CoreError>,
) -> Result<(), CoreError> {
    for _ in 0..h.record_count {
        let len = get_varint(body, &mut pos)?;
        if len < 0 {
            return Err(CoreError::MalformedRecord("negative record length"));
        }
        let end = pos
            .checked_add(len as usize)
            .filter(|&e| e <= body.len())
            .ok_or(CoreError::MalformedRecord(
                "record runs past the end of the batch",
            ))?;
        let rec = &body[..end];
        let mut p = pos + 1; // skip record attributes
        if p > end {
            return Err(CoreError::MalformedRecord("empty record"));
        }
        let ts_delta = get_varlong(rec, &mut p)?;
        let off_delta = get_varint(rec, &mut p)?;
        let key = get_slice(rec, &mut p)?;
        let value = get_slice(rec, &mut p)?;
        let n_headers = get_varint(rec, &mut p)?;
        if n_headers < 0 || n_headers as usize > len as usize {
            return Err(CoreError::MalformedRecord("bad header count"));
        }
        let headers_at = p;
        for _ in 0..n_headers {
            get_slice(rec, &mut p)?.ok_or(CoreError::MalformedRecord("null header key"))?;
            get_slice(rec, &mut p)?;
        }
        if p != end {
            return Err(CoreError::MalformedRecord(
                "record length disagrees with its fields",
            ));
        }
        pos = end;
        let ts = h.base_timestamp.wrapping_add(ts_delta);
        let publish_ts = if h.is_log_append_time() {
            h.max_timestamp
        } else {
            ts
        };
        let event_ts = if ts == NO_TIMESTAMP { publish_ts } else { ts };
        let view = RecordView {
            offset: h.base_offset + off_delta as i64,
            publish_ts,
            event_ts,
            key,
            value,
            headers: &rec[headers_at..end],
            header_count: n_headers as usize,
        };
        if f(view)?.is_break() {
            return Ok(());
        }
    }
    if pos != body.len() {
        return Err(CoreError::MalformedRecord(
            "trailing bytes after the last record",
        ));
    }
    Ok(())
}

/// Decodes every record of one whole batch. An uncompressed batch's keys,
/// values and headers share `batch`'s memory; a compressed one is inflated
/// first (gzip, snappy, lz4, zstd) and its records share that buffer.
/// Control batches (transaction markers) hold no user records: none are
/// returned.
pub fn decode_records(batch: &Bytes) -> Result<Vec<Record>, CoreError> {
    let (h, Some((body, pos))) = records_section(batch)? else {
        return Ok(Vec::new());
    };
    // Each record takes at least 7 bytes, which bounds the allocation below
    // whatever count a corrupt header claims.
    let cap = (h.record_count.max(0) as usize).min(body.len() / 7);
    let mut out = Vec::with_capacity(cap);
    walk(&h, &body, pos, |v| {
        out.push(v.to_record(&body)?);
        Ok(ControlFlow::Continue(()))
    })?;
    Ok(out)
}

/// Checks that a client's batch decodes record by record (inflating it if
/// compressed) with offset deltas 0, 1, 2, … matching its header, as a
/// Kafka broker validates on append: a batch that other protocols could
/// not read must not be stored.
pub fn validate_records(batch: &Bytes) -> Result<(), CoreError> {
    let h = BatchHeader::parse(batch)?;
    if h.is_control() {
        return Ok(());
    }
    let records = decode_records(batch)?;
    if records.is_empty() {
        return Err(CoreError::MalformedRecord("a batch without records"));
    }
    for (i, r) in records.iter().enumerate() {
        if r.offset != h.base_offset + i as i64 {
            return Err(CoreError::MalformedRecord(
                "offset deltas are not 0, 1, 2, …",
            ));
        }
    }
    if h.last_offset_delta as usize != records.len() - 1 {
        return Err(CoreError::MalformedRecord(
            "last offset delta disagrees with the record count",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_input() -> impl Strategy<Value = RecordInput> {
        (
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..32)),
            proptest::option::of(proptest::collection::vec(any::<u8>(), 0..300)),
            proptest::collection::vec(
                (
                    "[a-z.]{0,10}",
                    proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16)),
                ),
                0..4,
            ),
            proptest::option::of(0i64..4_000_000_000_000),
        )
            .prop_map(|(k, v, hs, ts)| RecordInput {
                key: k.map(Bytes::from),
                value: v.map(Bytes::from),
                headers: hs
                    .into_iter()
                    .map(|(k, v)| Header {
                        key: k,
                        value: v.map(Bytes::from),
                    })
                    .collect(),
                event_ts: ts,
            })
    }

    proptest! {
        #[test]
        fn round_trip(records in proptest::collection::vec(arb_input(), 1..20), base in 0i64..1<<40, now in 0i64..4_000_000_000_000) {
            let batch = Bytes::from(encode(base, now, ProducerInfo::default(), &records));
            verify_crc(&batch).unwrap();
            let h = BatchHeader::parse(&batch).unwrap();
            prop_assert_eq!(h.total_len(), batch.len());
            prop_assert_eq!(h.record_count as usize, records.len());
            prop_assert_eq!(h.next_offset(), base + records.len() as i64);
            let out = decode_records(&batch).unwrap();
            for (i, (inp, rec)) in records.iter().zip(&out).enumerate() {
                prop_assert_eq!(rec.offset, base + i as i64);
                prop_assert_eq!(&rec.key, &inp.key);
                prop_assert_eq!(&rec.value, &inp.value);
                prop_assert_eq!(&rec.headers, &inp.headers);
                prop_assert_eq!(rec.publish_ts, now);
                prop_assert_eq!(rec.event_ts, inp.event_ts.unwrap_or(now));
            }
        }

        #[test]
        fn decoding_garbage_never_panics(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            let b = Bytes::from(data);
            let _ = BatchHeader::parse(&b);
            let _ = verify_crc(&b);
            let _ = decode_records(&b);
        }

        #[test]
        fn any_flipped_bit_is_caught(records in proptest::collection::vec(arb_input(), 1..5), bit in any::<usize>()) {
            let mut batch = encode(0, 1, ProducerInfo::default(), &records);
            // Only bytes covered by the CRC: from 21 on.
            let covered = (batch.len() - CRC_START) * 8;
            let bit = bit % covered;
            batch[CRC_START + bit / 8] ^= 1 << (bit % 8);
            prop_assert!(verify_crc(&batch).is_err());
        }
    }

    /// The same batch with its record section compressed by `codec`, as a
    /// Kafka producer would send it.
    fn compressed(plain: &[u8], codec: u8) -> Bytes {
        let section = crate::compression::compress(codec, &plain[HEADER_LEN..]);
        let mut b = plain[..HEADER_LEN].to_vec();
        b.extend_from_slice(&section);
        let len = (b.len() - LOG_OVERHEAD) as i32;
        b[8..12].copy_from_slice(&len.to_be_bytes());
        let attrs = be_i16(&b, 21) | codec as i16;
        b[21..23].copy_from_slice(&attrs.to_be_bytes());
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        Bytes::from(b)
    }

    #[test]
    fn compressed_batches_decode_like_plain_ones() {
        let records: Vec<RecordInput> = (0..50)
            .map(|i| RecordInput {
                key: Some(Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(format!("reading {i} ").repeat(20))),
                headers: vec![Header {
                    key: "h".into(),
                    value: Some(Bytes::from_static(b"v")),
                }],
                event_ts: Some(1_000 + i),
            })
            .collect();
        let plain = encode(7, 2_000, ProducerInfo::default(), &records);
        let want = decode_records(&Bytes::from(plain.clone())).unwrap();
        use crate::compression::{GZIP, LZ4, SNAPPY};
        for codec in [GZIP, SNAPPY, LZ4] {
            let b = compressed(&plain, codec);
            verify_crc(&b).unwrap();
            assert!(b.len() < plain.len());
            assert_eq!(decode_records(&b).unwrap(), want, "codec {codec}");
        }
    }

    #[test]
    fn batches_that_cannot_be_read_are_not_valid() {
        let r = [RecordInput {
            value: Some(Bytes::from_static(b"v")),
            ..Default::default()
        }];
        let good = encode(0, 10, ProducerInfo::default(), &r);
        validate_records(&Bytes::from(good.clone())).unwrap();
        // Claims gzip, holds plain records: the CRC is right, the data not.
        let mut bad = good.clone();
        let attrs = be_i16(&bad, 21) | crate::compression::GZIP as i16;
        bad[21..23].copy_from_slice(&attrs.to_be_bytes());
        let crc = crc32c::crc32c(&bad[CRC_START..]);
        bad[17..21].copy_from_slice(&crc.to_be_bytes());
        assert!(validate_records(&Bytes::from(bad)).is_err());
        // A last offset delta that promises more records than there are.
        let mut bad = good;
        bad[23..27].copy_from_slice(&5i32.to_be_bytes());
        assert!(validate_records(&Bytes::from(bad)).is_err());
    }

    #[test]
    fn control_batches_hold_no_user_records() {
        let r = [RecordInput {
            value: Some(Bytes::from_static(b"marker")),
            ..Default::default()
        }];
        let mut b = encode(0, 10, ProducerInfo::default(), &r);
        let attrs = be_i16(&b, 21) | (1 << 5);
        b[21..23].copy_from_slice(&attrs.to_be_bytes());
        assert!(decode_records(&Bytes::from(b)).unwrap().is_empty());
    }

    #[test]
    fn rewriting_offset_and_publish_time_keeps_crc_valid() {
        let r = [RecordInput {
            value: Some(Bytes::from_static(b"v")),
            event_ts: Some(5),
            ..Default::default()
        }];
        let mut b = encode(0, 10, ProducerInfo::default(), &r);
        set_base_offset(&mut b, 42);
        set_publish_ts(&mut b, 99);
        verify_crc(&b).unwrap();
        let recs = decode_records(&Bytes::from(b)).unwrap();
        assert_eq!(recs[0].offset, 42);
        assert_eq!(recs[0].publish_ts, 99);
        assert_eq!(recs[0].event_ts, 5);
    }

    #[test]
    fn verify_and_stamp_matches_the_two_step_path() {
        let r = [RecordInput {
            value: Some(Bytes::from(vec![3u8; 5000])),
            event_ts: Some(5),
            ..Default::default()
        }];
        let mut a = encode(0, 10, ProducerInfo::default(), &r);
        let mut b = a.clone();
        set_base_offset(&mut a, 42);
        set_publish_ts(&mut a, 99);
        let h = verify_and_stamp(&mut b, 42, 99).unwrap();
        assert_eq!(a, b);
        assert_eq!(h.base_offset, 42);
        verify_crc(&b).unwrap();
        b[100] ^= 1;
        assert!(matches!(
            verify_and_stamp(&mut b, 0, 0),
            Err(CoreError::CrcMismatch { .. })
        ));
    }

    /// Found by the `batch_decode` fuzzer: a CreateTime batch (as a Kafka
    /// producer may send before the log stamps it) with a record timestamp of
    /// -1 reads as "no time" for both times, not as a time in 1969.
    #[test]
    fn create_time_batch_without_timestamps() {
        let r = [RecordInput {
            value: Some(Bytes::from_static(b"v")),
            ..Default::default()
        }];
        let mut b = encode(0, 10, ProducerInfo::default(), &r);
        // Clear the LogAppendTime bit, as a Kafka producer's batch has it.
        b[22] &= !(ATTR_TIMESTAMP_LOG_APPEND as u8);
        let crc = crc32c::crc32c(&b[CRC_START..]);
        b[17..21].copy_from_slice(&crc.to_be_bytes());
        let rec = &decode_records(&Bytes::from(b.clone())).unwrap()[0];
        assert_eq!((rec.event_ts, rec.publish_ts), (NO_TIMESTAMP, NO_TIMESTAMP));
        // Once the log stamps it, the publish time stands in for both.
        let h = verify_and_stamp(&mut b, 3, 99).unwrap();
        assert!(h.is_log_append_time());
        let rec = &decode_records(&Bytes::from(b)).unwrap()[0];
        assert_eq!((rec.offset, rec.event_ts, rec.publish_ts), (3, 99, 99));
    }

    #[test]
    fn gaps_in_offsets_survive() {
        let r = vec![
            RecordInput {
                value: Some(Bytes::from_static(b"a")),
                ..Default::default()
            };
            2
        ];
        let b = Bytes::from(encode_with_deltas(
            100,
            1,
            ProducerInfo::default(),
            &r,
            &[0, 7],
        ));
        let recs = decode_records(&b).unwrap();
        assert_eq!(recs[1].offset, 107);
        assert_eq!(BatchHeader::parse(&b).unwrap().next_offset(), 108);
    }
}
