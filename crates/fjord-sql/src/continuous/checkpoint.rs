//! A continuous query's checkpoint (pure): where it has read to, its
//! watermark, the state of its open windows, and the results it was about
//! to append. Written before those results are appended, so after a crash
//! the query knows both what it had read and what it may have written.
//!
//! Layout: `FJCQ1`, a u32 (big-endian) length and the JSON header, then per
//! open window a u32 length and an Arrow IPC stream of its state.

use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::arrow::ipc::writer::StreamWriter;
use serde::{Deserialize, Serialize};

use super::aggregate::WindowSnapshot;

const MAGIC: &[u8] = b"FJCQ1";

/// Results of one epoch for one partition of one stream.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Pending {
    /// `namespace/stream`.
    pub stream: String,
    pub partition: u32,
    /// The partition's end when the checkpoint was taken: the epoch's
    /// records, if any were appended, are at or after it.
    pub from_offset: i64,
    pub records: Vec<PendingRecord>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PendingRecord {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key: Option<String>,
    /// The value when it is text (always, for JSON rows).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub text: Option<String>,
    /// The value when it is not text.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bytes: Option<Vec<u8>>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub event_ts: Option<i64>,
}

/// Counters carried across restarts.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    pub rows_in: u64,
    pub rows_out: u64,
    pub late_rows: u64,
    pub failed_rows: u64,
    pub skipped_records: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Header {
    /// Incremented by every checkpoint.
    pub epoch: u64,
    /// The next offset to read, per source partition.
    pub offsets: Vec<i64>,
    /// The latest event time seen, per source partition.
    pub max_ts: Vec<Option<i64>>,
    pub watermark: Option<i64>,
    /// Each open window: its start, and whether it fired already.
    pub windows: Vec<(i64, bool)>,
    /// Each open window's end, for sessions (whose end is not fixed).
    #[serde(default)]
    pub ends: Vec<Option<i64>>,
    pub pending: Vec<Pending>,
    pub counters: Counters,
    /// Joining two streams: how many of `offsets` are the first stream's
    /// partitions (the rest are the second's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<usize>,
    /// Joining two streams: per partition, the offset of the oldest read
    /// still buffered (a restart reads from there to rebuild the buffers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retain: Vec<i64>,
}

#[derive(Debug)]
pub struct Checkpoint {
    pub header: Header,
    pub windows: Vec<WindowSnapshot>,
}

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("not a checkpoint of a continuous query")]
    Magic,
    #[error("checkpoint truncated")]
    Truncated,
    #[error("checkpoint header: {0}")]
    Header(#[from] serde_json::Error),
    #[error("checkpoint state: {0}")]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
}

pub fn encode(c: &Checkpoint) -> Result<Vec<u8>, CheckpointError> {
    let mut header = c.header.clone();
    header.windows = c.windows.iter().map(|w| (w.start, w.fired)).collect();
    header.ends = c.windows.iter().map(|w| w.end).collect();
    let json = serde_json::to_vec(&header)?;
    let mut out = Vec::with_capacity(json.len() + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(json.len() as u32).to_be_bytes());
    out.extend_from_slice(&json);
    for w in &c.windows {
        let mut ipc = Vec::new();
        {
            let mut writer = StreamWriter::try_new(&mut ipc, &w.batch.schema())?;
            writer.write(&w.batch)?;
            writer.finish()?;
        }
        out.extend_from_slice(&(ipc.len() as u32).to_be_bytes());
        out.extend_from_slice(&ipc);
    }
    Ok(out)
}

pub fn decode(mut b: &[u8]) -> Result<Checkpoint, CheckpointError> {
    if !b.starts_with(MAGIC) {
        return Err(CheckpointError::Magic);
    }
    b = &b[MAGIC.len()..];
    let json = chunk(&mut b)?;
    let header: Header = serde_json::from_slice(json)?;
    let mut windows = Vec::with_capacity(header.windows.len());
    for (i, &(start, fired)) in header.windows.iter().enumerate() {
        let end = header.ends.get(i).copied().flatten();
        let ipc = chunk(&mut b)?;
        let mut reader = StreamReader::try_new(ipc, None)?;
        let batch = reader.next().ok_or(CheckpointError::Truncated)??;
        windows.push(WindowSnapshot {
            start,
            end,
            fired,
            batch,
        });
    }
    Ok(Checkpoint { header, windows })
}

fn chunk<'a>(b: &mut &'a [u8]) -> Result<&'a [u8], CheckpointError> {
    if b.len() < 4 {
        return Err(CheckpointError::Truncated);
    }
    let n = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let rest = &b[4..];
    if rest.len() < n {
        return Err(CheckpointError::Truncated);
    }
    let (c, after) = rest.split_at(n);
    *b = after;
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::{Float64Array, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::arrow::record_batch::RecordBatch;
    use std::sync::Arc;

    #[test]
    fn round_trip() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("c0", DataType::Utf8, true),
            Field::new("c1", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(vec!["d1", "d2"])),
                Arc::new(Float64Array::from(vec![1.5, 2.5])),
            ],
        )
        .unwrap();
        let c = Checkpoint {
            header: Header {
                epoch: 7,
                offsets: vec![10, 20],
                max_ts: vec![Some(5), None],
                watermark: Some(3),
                windows: Vec::new(),
                ends: Vec::new(),
                pending: vec![Pending {
                    stream: "default/avg".into(),
                    partition: 1,
                    from_offset: 4,
                    records: vec![PendingRecord {
                        key: Some("d1".into()),
                        text: Some("{}".into()),
                        bytes: None,
                        event_ts: Some(9),
                    }],
                }],
                counters: Counters {
                    rows_in: 30,
                    ..Default::default()
                },
                joined: Some(1),
                retain: vec![8, 20],
            },
            windows: vec![WindowSnapshot {
                start: 1000,
                end: Some(1500),
                fired: true,
                batch: batch.clone(),
            }],
        };
        let bytes = encode(&c).unwrap();
        let back = decode(&bytes).unwrap();
        assert_eq!(back.header.epoch, 7);
        assert_eq!(back.header.windows, vec![(1000, true)]);
        assert_eq!(back.windows[0].end, Some(1500));
        assert_eq!(back.header.pending, c.header.pending);
        assert_eq!(back.windows[0].batch, batch);
        assert!(matches!(
            decode(&bytes[..bytes.len() - 3]),
            Err(CheckpointError::Truncated)
        ));
        assert!(matches!(decode(b"nope"), Err(CheckpointError::Magic)));
    }
}
