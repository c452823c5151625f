//! Walking a segment file batch by batch: the recovery scan and index
//! rebuilding both use it.

use std::fs::File;
use std::os::unix::fs::FileExt;

use fjord_core::batch::{self, BatchHeader, HEADER_LEN};

use crate::index::{OffsetEntry, TimeEntry};
use crate::INDEX_INTERVAL_BYTES;

/// What a scan found.
#[derive(Debug, Default)]
pub struct ScanResult {
    /// Bytes from the start that hold whole, valid batches.
    pub valid_len: u64,
    pub next_offset: Option<i64>,
    pub max_ts: Option<i64>,
    pub first_ts: Option<i64>,
    /// Base offset of the last whole batch.
    pub last_base: Option<i64>,
    pub batches: u64,
    pub index: Vec<OffsetEntry>,
    pub time_index: Vec<TimeEntry>,
    /// Why the scan stopped before the end of the file, if it did.
    pub stop_reason: Option<String>,
}

const READ_CHUNK: usize = 1 << 20;

/// Scans `file` (of `file_len` bytes) from the start, checking each batch's
/// framing, magic, CRC and that offsets only grow, and rebuilding the sparse
/// indexes on the way. It stops at the first invalid or incomplete batch.
pub fn scan_segment(file: &File, file_len: u64, base_offset: i64) -> std::io::Result<ScanResult> {
    let mut r = ScanResult::default();
    let mut pos: u64 = 0;
    let mut buf: Vec<u8> = Vec::new();
    let mut buf_start: u64 = 0;
    let mut since_index: u64 = INDEX_INTERVAL_BYTES; // index the first batch
    let mut expected_min = base_offset;
    while pos < file_len {
        // Make sure the header is in the buffer.
        let need_header = (pos + HEADER_LEN as u64).min(file_len);
        if need_header > buf_start + buf.len() as u64 || pos < buf_start {
            buf_start = pos;
            let len = (READ_CHUNK as u64).min(file_len - pos) as usize;
            buf.resize(len, 0);
            file.read_exact_at(&mut buf, pos)?;
        }
        let at = (pos - buf_start) as usize;
        let h = match BatchHeader::parse(&buf[at..]) {
            Ok(h) => h,
            Err(e) => {
                r.stop_reason = Some(format!("batch header at byte {pos}: {e}"));
                break;
            }
        };
        let total = h.total_len() as u64;
        if pos + total > file_len {
            r.stop_reason = Some(format!(
                "batch at byte {pos} claims {total} bytes, only {} remain",
                file_len - pos
            ));
            break;
        }
        if pos + total > buf_start + buf.len() as u64 {
            buf_start = pos;
            let len = (READ_CHUNK as u64).max(total).min(file_len - pos) as usize;
            buf.resize(len, 0);
            file.read_exact_at(&mut buf, pos)?;
        }
        let at = (pos - buf_start) as usize;
        let whole = &buf[at..at + total as usize];
        if let Err(e) = batch::verify_crc(whole) {
            r.stop_reason = Some(format!("batch at byte {pos}: {e}"));
            break;
        }
        if h.base_offset < expected_min || h.base_offset - base_offset > u32::MAX as i64 {
            r.stop_reason = Some(format!(
                "batch at byte {pos} has base offset {} below {expected_min}",
                h.base_offset
            ));
            break;
        }
        if since_index >= INDEX_INTERVAL_BYTES {
            let rel = (h.base_offset - base_offset) as u32;
            r.index.push(OffsetEntry {
                rel_offset: rel,
                position: pos as u32,
            });
            r.time_index.push(TimeEntry {
                ts_ms: h.publish_ts().max(r.max_ts.unwrap_or(i64::MIN)),
                rel_offset: rel,
            });
            since_index = 0;
        }
        since_index += total;
        r.first_ts.get_or_insert(h.publish_ts());
        r.max_ts = Some(r.max_ts.map_or(h.publish_ts(), |m| m.max(h.publish_ts())));
        r.next_offset = Some(h.next_offset());
        r.last_base = Some(h.base_offset);
        expected_min = h.next_offset();
        r.batches += 1;
        pos += total;
        r.valid_len = pos;
    }
    Ok(r)
}
