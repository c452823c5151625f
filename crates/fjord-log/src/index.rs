//! Sparse offset and time indexes of one segment.
//!
//! The offset index maps a relative offset to the byte position of the batch
//! that starts there (8 bytes per entry: u32 relative offset, u32 position).
//! The time index maps a publish time to the relative offset of the batch
//! appended at that time (12 bytes: i64 ms, u32 relative offset). Publish
//! times never decrease within a partition, so both are sorted and a binary
//! search finds the floor entry. Both are hints: a lookup lands at or before
//! the target and the caller scans forward; a damaged index is rebuilt.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OffsetEntry {
    pub rel_offset: u32,
    pub position: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimeEntry {
    pub ts_ms: i64,
    pub rel_offset: u32,
}

pub const OFFSET_ENTRY_LEN: usize = 8;
pub const TIME_ENTRY_LEN: usize = 12;

impl OffsetEntry {
    pub fn encode(&self) -> [u8; OFFSET_ENTRY_LEN] {
        let mut b = [0u8; OFFSET_ENTRY_LEN];
        b[..4].copy_from_slice(&self.rel_offset.to_be_bytes());
        b[4..].copy_from_slice(&self.position.to_be_bytes());
        b
    }
}

impl TimeEntry {
    pub fn encode(&self) -> [u8; TIME_ENTRY_LEN] {
        let mut b = [0u8; TIME_ENTRY_LEN];
        b[..8].copy_from_slice(&self.ts_ms.to_be_bytes());
        b[8..].copy_from_slice(&self.rel_offset.to_be_bytes());
        b
    }
}

/// Decodes an offset index file; `None` if it is not a valid index of a
/// segment of `segment_len` bytes (then it is rebuilt).
pub fn decode_offsets(buf: &[u8], segment_len: u64) -> Option<Vec<OffsetEntry>> {
    if !buf.len().is_multiple_of(OFFSET_ENTRY_LEN) {
        return None;
    }
    let mut out: Vec<OffsetEntry> = Vec::with_capacity(buf.len() / OFFSET_ENTRY_LEN);
    for c in buf.chunks_exact(OFFSET_ENTRY_LEN) {
        let e = OffsetEntry {
            rel_offset: u32::from_be_bytes(c[..4].try_into().ok()?),
            position: u32::from_be_bytes(c[4..].try_into().ok()?),
        };
        if e.position as u64 >= segment_len {
            return None;
        }
        if let Some(p) = out.last() {
            if e.rel_offset <= p.rel_offset || e.position <= p.position {
                return None;
            }
        }
        out.push(e);
    }
    Some(out)
}

pub fn decode_times(buf: &[u8]) -> Option<Vec<TimeEntry>> {
    if !buf.len().is_multiple_of(TIME_ENTRY_LEN) {
        return None;
    }
    let mut out: Vec<TimeEntry> = Vec::with_capacity(buf.len() / TIME_ENTRY_LEN);
    for c in buf.chunks_exact(TIME_ENTRY_LEN) {
        let e = TimeEntry {
            ts_ms: i64::from_be_bytes(c[..8].try_into().ok()?),
            rel_offset: u32::from_be_bytes(c[8..].try_into().ok()?),
        };
        if let Some(p) = out.last() {
            if e.ts_ms < p.ts_ms || e.rel_offset < p.rel_offset {
                return None;
            }
        }
        out.push(e);
    }
    Some(out)
}

/// Position of the last indexed batch starting at or before `rel_offset`.
pub fn floor_position(index: &[OffsetEntry], rel_offset: u32) -> u64 {
    let i = index.partition_point(|e| e.rel_offset <= rel_offset);
    if i == 0 {
        0
    } else {
        index[i - 1].position as u64
    }
}

/// Relative offset of the last indexed batch published strictly before `ts`.
pub fn floor_time(index: &[TimeEntry], ts_ms: i64) -> Option<u32> {
    let i = index.partition_point(|e| e.ts_ms < ts_ms);
    if i == 0 {
        None
    } else {
        Some(index[i - 1].rel_offset)
    }
}
