//! The disk store of one partition: an ordered set of segments, the last one
//! active.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use fjord_core::batch::{self, BatchHeader, HEADER_LEN};
use fjord_core::policy::{Compaction, ResolvedPolicy};
use fjord_core::RecordInput;

use crate::crypt::{self, KeyRing};
use crate::segment::{parse_log_name, sync_dir, Segment};
use crate::store::{AppendInfo, LogStore, MaintenanceReport, ReadResult};
use crate::LogError;

/// Tombstones (null values) of a compacted partition are kept this long after
/// their publish time, so consumers catching up still see the delete.
pub const TOMBSTONE_RETENTION_MS: i64 = 24 * 3600 * 1000;

/// Validates a batch from a producer and stamps its base offset and publish
/// time (verifying its CRC on the way).
pub(crate) fn stamp(batch: &mut [u8], base: i64, publish_ts: i64) -> Result<BatchHeader, LogError> {
    let h = BatchHeader::parse(batch)?;
    if h.record_count < 1 || h.last_offset_delta != h.record_count - 1 {
        return Err(LogError::InvalidBatch(
            fjord_core::CoreError::MalformedRecord("record count and last offset delta disagree"),
        ));
    }
    Ok(batch::verify_and_stamp(batch, base, publish_ts)?)
}

/// A copy of `e` for another batch that failed the same way (`LogError`
/// holds an `io::Error`, which is not `Clone`).
fn same_error(e: &LogError) -> LogError {
    match e {
        LogError::Io { op, path, source } => LogError::Io {
            op,
            path: path.clone(),
            source: match source.raw_os_error() {
                Some(code) => std::io::Error::from_raw_os_error(code),
                None => std::io::Error::new(source.kind(), source.to_string()),
            },
        },
        LogError::Corrupt {
            path,
            position,
            reason,
        } => LogError::Corrupt {
            path: path.clone(),
            position: *position,
            reason: reason.clone(),
        },
        other => LogError::Poisoned(other.to_string()),
    }
}

/// Bytes read from a segment in one syscall at most (a read asks for no
/// more than its budget: 1 MiB for live readers, a Kafka Fetch's
/// partition limit for Kafka).
const READ_CHUNK_BYTES_MAX: usize = 16 << 20;

/// What recovery did when the partition was opened.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RecoveryReport {
    pub segments: usize,
    pub truncated_bytes: u64,
    pub truncate_reason: Option<String>,
    pub next_offset: i64,
}

pub struct PartitionLog {
    dir: PathBuf,
    segments: BTreeMap<i64, Segment>,
    policy: ResolvedPolicy,
    last_publish_ts: i64,
    poisoned: Option<String>,
    /// The tenant's keys, when the node has some (policy `encrypted` seals
    /// new batches with them; sealed batches always need them to be read).
    keys: Option<Arc<KeyRing>>,
}

impl PartitionLog {
    /// Opens (or creates) the partition in `dir`, recovering its tail.
    pub fn open(dir: &Path, policy: ResolvedPolicy) -> Result<(Self, RecoveryReport), LogError> {
        fs::create_dir_all(dir).map_err(|e| LogError::io("create directory", dir, e))?;
        let mut bases = Vec::new();
        for entry in fs::read_dir(dir).map_err(|e| LogError::io("list", dir, e))? {
            let entry = entry.map_err(|e| LogError::io("list", dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(base) = parse_log_name(&name) {
                bases.push(base);
            } else if name.ends_with(".cleaned") {
                // An interrupted compaction: the original is still in place.
                let _ = fs::remove_file(entry.path());
            }
        }
        bases.sort_unstable();
        let mut report = RecoveryReport {
            segments: bases.len(),
            ..Default::default()
        };
        let mut segments = BTreeMap::new();
        for (i, &base) in bases.iter().enumerate() {
            let active = i + 1 == bases.len();
            let (seg, truncated) = Segment::open(dir, base, active)?;
            if let Some((bytes, reason)) = truncated {
                report.truncated_bytes = bytes;
                report.truncate_reason = Some(reason);
            }
            segments.insert(base, seg);
        }
        if segments.is_empty() {
            segments.insert(0, Segment::create(dir, 0)?);
            sync_dir(dir)?;
        }
        let last_publish_ts = segments
            .values()
            .filter_map(|s| s.max_ts)
            .max()
            .unwrap_or(i64::MIN);
        let log = Self {
            dir: dir.to_path_buf(),
            segments,
            policy,
            last_publish_ts,
            poisoned: None,
            keys: None,
        };
        report.next_offset = log.next_offset();
        Ok((log, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn active(&self) -> &Segment {
        self.segments
            .values()
            .next_back()
            .expect("a partition always has an active segment")
    }

    fn active_mut(&mut self) -> &mut Segment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a partition always has an active segment")
    }

    /// Gives the partition its tenant's keys.
    pub fn set_keys(&mut self, keys: Option<Arc<KeyRing>>) {
        self.keys = keys;
    }

    /// Seals `batches` when the policy asks for encryption; refuses when it
    /// does and there is no key (never a silent plain write).
    fn seal_all<'a>(
        &self,
        batches: impl Iterator<Item = &'a [u8]>,
    ) -> Result<Option<Vec<Vec<u8>>>, LogError> {
        if !self.policy.encrypted {
            return Ok(None);
        }
        let keys = self.keys.as_ref().ok_or_else(|| {
            LogError::Encryption(
                "the stream's policy asks for encryption but the key file has no key for its tenant"
                    .into(),
            )
        })?;
        batches
            .map(|b| keys.seal(b))
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }

    /// A batch as read from disk, opened if it was sealed.
    fn opened(&self, b: Bytes) -> Result<Bytes, LogError> {
        if !crypt::is_sealed(&b) {
            return Ok(b);
        }
        let keys = self.keys.as_ref().ok_or_else(|| {
            LogError::Encryption("an encrypted batch, and no key for its tenant".into())
        })?;
        keys.open(&b).map(Bytes::from)
    }

    /// Base offset of the active segment: compaction never touches records
    /// at or after it.
    pub fn active_base_offset(&self) -> i64 {
        self.active().base_offset
    }

    /// Writes the pending run to the active segment and records each
    /// batch's result. On failure every batch of the run gets the error.
    fn write_run(
        &mut self,
        batches: &[Vec<u8>],
        run: &mut Vec<(usize, BatchHeader)>,
        results: &mut [Option<Result<AppendInfo, LogError>>],
        publish_ts: i64,
    ) -> Result<(), LogError> {
        if run.is_empty() {
            return Ok(());
        }
        let sealed = match self.seal_all(run.iter().map(|(i, _)| batches[*i].as_slice())) {
            Ok(s) => s,
            Err(e) => {
                for (i, _) in run.drain(..) {
                    results[i] = Some(Err(same_error(&e)));
                }
                return Err(e);
            }
        };
        let (slices, headers): (Vec<&[u8]>, Vec<BatchHeader>) = match &sealed {
            None => (
                run.iter().map(|(i, _)| batches[*i].as_slice()).collect(),
                run.iter().map(|(_, h)| *h).collect(),
            ),
            Some(sealed) => {
                let mut hs = Vec::with_capacity(sealed.len());
                for b in sealed {
                    hs.push(BatchHeader::parse(b)?);
                }
                (sealed.iter().map(Vec::as_slice).collect(), hs)
            }
        };
        match self.active_mut().append_run(&slices, &headers) {
            Ok(()) => {
                self.last_publish_ts = publish_ts;
                for (i, h) in run.drain(..) {
                    results[i] = Some(Ok(AppendInfo {
                        base_offset: h.base_offset,
                        last_offset: h.last_offset(),
                        publish_ts,
                        bytes: h.total_len(),
                    }));
                }
                Ok(())
            }
            Err(e) => {
                if matches!(e, LogError::Corrupt { .. }) {
                    self.poisoned = Some(e.to_string());
                }
                for (i, _) in run.drain(..) {
                    results[i] = Some(Err(same_error(&e)));
                }
                Err(e)
            }
        }
    }

    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// Seals the active segment and starts a new one at the next offset.
    pub fn roll(&mut self) -> Result<(), LogError> {
        if self.active().size == 0 {
            return Ok(());
        }
        let next = self.next_offset();
        self.active_mut().seal()?;
        let seg = Segment::create(&self.dir, next)?;
        self.segments.insert(next, seg);
        sync_dir(&self.dir)
    }

    /// Locates the segment holding `offset` (or the first one after it).
    fn segment_for(&self, offset: i64) -> Option<&Segment> {
        self.segments
            .range(..=offset)
            .next_back()
            .map(|(_, s)| s)
            .or_else(|| self.segments.values().next())
    }

    /// Reads batches of one segment starting at the batch holding `offset`.
    /// Returns `true` when the segment (or the readable part of it) is
    /// exhausted, `false` when the byte budget stopped it first.
    fn read_segment(
        &self,
        seg: &Segment,
        offset: i64,
        budget: usize,
        high_watermark: i64,
        out: &mut Vec<Bytes>,
        spans: &mut Vec<Bytes>,
    ) -> Result<bool, LogError> {
        let mut pos = seg.position_for(offset);
        let mut hdr = [0u8; HEADER_LEN];
        let mut used = 0usize;
        // The size of the batch at `pos`, once its header has been read.
        let mut next_total = None;
        // Walk headers to the batch that holds `offset`.
        while pos < seg.size {
            let chunk = seg.read_at(pos, HEADER_LEN.min((seg.size - pos) as usize))?;
            hdr[..chunk.len()].copy_from_slice(&chunk);
            let h = BatchHeader::parse(&hdr[..chunk.len()])
                .map_err(|e| seg.corrupt(pos, e.to_string()))?;
            if h.base_offset >= high_watermark {
                return Ok(true);
            }
            if h.next_offset() <= offset {
                pos += h.total_len() as u64;
                continue;
            }
            next_total = Some(h.total_len());
            break;
        }
        // Read a run of whole batches in one go. Bytes read but not taken
        // (the start of a batch that does not fit) are read again by the
        // next call: a batch known not to fit is not read at all.
        while pos < seg.size && (used < budget || out.is_empty()) {
            let mut want = budget
                .saturating_sub(used)
                .clamp(HEADER_LEN, READ_CHUNK_BYTES_MAX)
                .min((seg.size - pos) as usize);
            if let Some(total) = next_total.take() {
                if out.is_empty() && total > want {
                    // The first batch is larger than the budget: it is
                    // served whole, read once.
                    want = total.min((seg.size - pos) as usize);
                } else if used + total > budget && !out.is_empty() {
                    return Ok(false);
                }
            }
            let buf = Bytes::from(seg.read_at(pos, want)?);
            let mut at = 0usize;
            let mut took_any = false;
            // Where the batches taken from `buf` end: they are one span.
            let mut taken_from = 0usize;
            while at + HEADER_LEN <= buf.len() {
                let h = BatchHeader::parse(&buf[at..])
                    .map_err(|e| seg.corrupt(pos + at as u64, e.to_string()))?;
                if h.base_offset >= high_watermark {
                    if taken_from < at {
                        spans.push(buf.slice(taken_from..at));
                    }
                    return Ok(true);
                }
                let total = h.total_len();
                if at + total > buf.len() {
                    if out.is_empty() && !took_any {
                        // The first batch is larger than the budget: serve it whole.
                        let whole = Bytes::from(seg.read_at(pos + at as u64, total)?);
                        batch::verify_crc(&whole)
                            .map_err(|e| seg.corrupt(pos + at as u64, e.to_string()))?;
                        let whole = self.opened(whole)?;
                        spans.push(whole.clone());
                        out.push(whole);
                        used += total;
                        at += total;
                        taken_from = at;
                    } else {
                        next_total = Some(total);
                    }
                    break;
                }
                let b = buf.slice(at..at + total);
                batch::verify_crc(&b).map_err(|e| seg.corrupt(pos + at as u64, e.to_string()))?;
                if crypt::is_sealed(&b) {
                    // An opened batch is its own buffer: the file bytes
                    // around it are not what readers get.
                    if taken_from < at {
                        spans.push(buf.slice(taken_from..at));
                    }
                    let plain = self.opened(b)?;
                    spans.push(plain.clone());
                    out.push(plain);
                    took_any = true;
                    used += total;
                    at += total;
                    taken_from = at;
                    continue;
                }
                out.push(b);
                took_any = true;
                used += total;
                at += total;
            }
            if at == 0 {
                return Ok(false);
            }
            if taken_from < at {
                spans.push(buf.slice(taken_from..at));
            }
            pos += at as u64;
            if used >= budget {
                return Ok(pos >= seg.size);
            }
        }
        Ok(pos >= seg.size)
    }

    fn scan_for_time(&self, seg: &Segment, ts_ms: i64) -> Result<Option<i64>, LogError> {
        let start = seg.offset_floor_for_time(ts_ms);
        let mut pos = seg.position_for(start);
        while pos < seg.size {
            let hdr = seg.read_at(pos, HEADER_LEN.min((seg.size - pos) as usize))?;
            let h = BatchHeader::parse(&hdr).map_err(|e| seg.corrupt(pos, e.to_string()))?;
            if h.next_offset() > start && h.publish_ts() >= ts_ms {
                return Ok(Some(h.base_offset.max(self.start_offset())));
            }
            pos += h.total_len() as u64;
        }
        Ok(None)
    }

    fn apply_retention(
        &mut self,
        now_ms: i64,
        report: &mut MaintenanceReport,
    ) -> Result<(), LogError> {
        let p = self.policy.clone();
        // Time: drop sealed segments whose newest record is past retention.
        if p.retention_ms >= 0 {
            while self.segments.len() > 1 {
                let first = self.segments.values().next().expect("non-empty");
                match first.max_ts {
                    Some(ts) if now_ms.saturating_sub(ts) > p.retention_ms => {
                        self.delete_first(report)?
                    }
                    None => self.delete_first(report)?,
                    _ => break,
                }
            }
        }
        if p.retention_bytes >= 0 {
            // As Kafka does: delete the oldest segment only while what remains
            // still holds at least `retention_bytes`.
            while self.segments.len() > 1 {
                let first_size = self.segments.values().next().map_or(0, |s| s.size);
                if self.size_bytes() - first_size < p.retention_bytes as u64 {
                    break;
                }
                self.delete_first(report)?;
            }
        }
        Ok(())
    }

    fn delete_first(&mut self, report: &mut MaintenanceReport) -> Result<(), LogError> {
        let (_, seg) = self.segments.pop_first().expect("non-empty");
        report.segments_deleted += 1;
        report.bytes_deleted += seg.size;
        seg.delete()?;
        sync_dir(&self.dir)
    }

    /// `latest-per-key` compaction of the sealed segments: a keyed record
    /// survives only if no later record has its key. Compressed batches are
    /// kept as they are (they cannot be split without recompressing).
    fn compact(&mut self, now_ms: i64, report: &mut MaintenanceReport) -> Result<(), LogError> {
        if self.segments.len() < 2 {
            return Ok(());
        }
        // Latest offset of every key over the whole log, active segment too.
        let mut latest: HashMap<Bytes, i64> = HashMap::new();
        let end = self.next_offset();
        let mut offset = self.start_offset();
        while offset < end {
            let r = self.read(offset, 4 << 20, end)?;
            for b in &r.batches {
                for rec in batch::decode_records(b)? {
                    if let Some(k) = rec.key {
                        latest.insert(k, rec.offset);
                    }
                }
            }
            if r.next_offset <= offset {
                break;
            }
            offset = r.next_offset;
        }
        let sealed: Vec<i64> = self
            .segments
            .keys()
            .copied()
            .take(self.segments.len() - 1)
            .collect();
        for base in sealed {
            let seg = &self.segments[&base];
            let mut batches_out: Vec<Vec<u8>> = Vec::new();
            let mut dropped = 0u64;
            let mut r_out = Vec::new();
            self.read_segment(seg, base, usize::MAX, end, &mut r_out, &mut Vec::new())?;
            for b in r_out {
                let h = BatchHeader::parse(&b)?;
                if h.compression() != 0 || h.is_control() {
                    batches_out.push(b.to_vec());
                    continue;
                }
                let recs = batch::decode_records(&b)?;
                let n = recs.len();
                let mut keep = Vec::with_capacity(n);
                let mut deltas = Vec::with_capacity(n);
                for rec in recs {
                    let superseded = rec
                        .key
                        .as_ref()
                        .is_some_and(|k| latest.get(k).is_some_and(|&o| o > rec.offset));
                    let expired_tombstone = rec.key.is_some()
                        && rec.value.is_none()
                        && now_ms.saturating_sub(rec.publish_ts) > TOMBSTONE_RETENTION_MS;
                    if superseded || expired_tombstone {
                        dropped += 1;
                        continue;
                    }
                    deltas.push((rec.offset - h.base_offset) as i32);
                    keep.push(RecordInput {
                        key: rec.key,
                        value: rec.value,
                        headers: rec.headers,
                        event_ts: Some(rec.event_ts),
                    });
                }
                if keep.len() == n {
                    batches_out.push(b.to_vec());
                } else if !keep.is_empty() {
                    batches_out.push(batch::encode_with_deltas(
                        h.base_offset,
                        h.publish_ts(),
                        h.producer,
                        &keep,
                        &deltas,
                    ));
                }
            }
            if dropped == 0 {
                continue;
            }
            let batches_out = match self.seal_all(batches_out.iter().map(Vec::as_slice))? {
                Some(sealed) => sealed,
                None => batches_out,
            };
            let seg = self.segments.get_mut(&base).expect("segment exists");
            seg.rewrite(&batches_out)?;
            report.segments_compacted += 1;
            report.records_compacted += dropped;
        }
        Ok(())
    }
}

impl LogStore for PartitionLog {
    /// Stamps every batch, then writes runs of them with one vectored write
    /// per segment touched. A batch that fails validation fails alone; a
    /// failed write fails its run and every batch after it.
    fn append_group(
        &mut self,
        batches: &mut [Vec<u8>],
        now_ms: i64,
    ) -> Vec<Result<AppendInfo, LogError>> {
        let mut results: Vec<Option<Result<AppendInfo, LogError>>> =
            std::iter::repeat_with(|| None)
                .take(batches.len())
                .collect();
        if let Some(why) = &self.poisoned {
            return batches
                .iter()
                .map(|_| Err(LogError::Poisoned(why.clone())))
                .collect();
        }
        // Publish times never go backwards within a partition, so the time
        // index stays sorted even when the wall clock steps back.
        let publish_ts = now_ms.max(self.last_publish_ts);
        let mut next = self.next_offset();
        let mut run: Vec<(usize, BatchHeader)> = Vec::new();
        let mut run_bytes = 0u64;
        let mut failure: Option<LogError> = None;
        for i in 0..batches.len() {
            if let Some(e) = &failure {
                results[i] = Some(Err(same_error(e)));
                continue;
            }
            let h = match stamp(&mut batches[i], next, publish_ts) {
                Ok(h) => h,
                Err(e) => {
                    results[i] = Some(Err(e));
                    continue;
                }
            };
            let needs_roll = {
                let a = self.active();
                let size = a.size + run_bytes;
                let first_ts = a.first_ts.or(if run.is_empty() {
                    None
                } else {
                    Some(publish_ts)
                });
                (size > 0
                    && (size + h.total_len() as u64 > self.policy.segment_bytes
                        || size + h.total_len() as u64 >= u32::MAX as u64))
                    || first_ts
                        .is_some_and(|t| publish_ts.saturating_sub(t) >= self.policy.segment_ms)
            };
            if needs_roll {
                if let Err(e) = self
                    .write_run(batches, &mut run, &mut results, publish_ts)
                    .and_then(|()| self.roll())
                {
                    results[i] = Some(Err(same_error(&e)));
                    failure = Some(e);
                    continue;
                }
                run_bytes = 0;
            }
            run_bytes += h.total_len() as u64;
            next = h.next_offset();
            run.push((i, h));
        }
        if failure.is_none() {
            if let Err(e) = self.write_run(batches, &mut run, &mut results, publish_ts) {
                failure = Some(e);
            }
        }
        drop(failure);
        results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| Err(LogError::Poisoned("batch was not processed".into()))))
            .collect()
    }

    fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        high_watermark: i64,
    ) -> Result<ReadResult, LogError> {
        let start = self.start_offset();
        let end = high_watermark.min(self.next_offset());
        if offset < start || offset > end {
            return Err(LogError::OffsetOutOfRange {
                requested: offset,
                start,
                end,
            });
        }
        let mut out: Vec<Bytes> = Vec::new();
        let mut spans: Vec<Bytes> = Vec::new();
        let mut next = offset;
        if offset < end {
            let first_base = self.segment_for(offset).map_or(0, |s| s.base_offset);
            let mut used = 0usize;
            for seg in self.segments.range(first_base..).map(|(_, s)| s) {
                let before = out.len();
                let exhausted = self.read_segment(
                    seg,
                    next,
                    max_bytes.saturating_sub(used),
                    end,
                    &mut out,
                    &mut spans,
                )?;
                used += out[before..].iter().map(|b| b.len()).sum::<usize>();
                if let Some(last) = out.last() {
                    next = BatchHeader::parse(last)?.next_offset().max(next);
                }
                if next >= end || used >= max_bytes || !exhausted {
                    break;
                }
            }
            if out.is_empty() {
                // Only gaps left by compaction lie between `offset` and the end.
                next = end;
            }
        }
        Ok(ReadResult {
            batches: out,
            spans,
            next_offset: next,
            start_offset: start,
            high_watermark: end,
        })
    }

    fn offset_for_time(&self, ts_ms: i64) -> Result<Option<i64>, LogError> {
        for seg in self.segments.values() {
            if seg.max_ts.is_some_and(|m| m >= ts_ms) {
                return self.scan_for_time(seg, ts_ms);
            }
        }
        Ok(None)
    }

    fn start_offset(&self) -> i64 {
        self.segments.keys().next().copied().unwrap_or(0)
    }

    fn next_offset(&self) -> i64 {
        self.active().next_offset
    }

    fn size_bytes(&self) -> u64 {
        self.segments.values().map(|s| s.size).sum()
    }

    fn sync_target(&self) -> Option<Arc<File>> {
        Some(self.active().file())
    }

    fn maintain(&mut self, now_ms: i64) -> Result<MaintenanceReport, LogError> {
        let mut report = MaintenanceReport::default();
        let a = self.active();
        let expired = a
            .first_ts
            .is_some_and(|t| now_ms.saturating_sub(t) >= self.policy.segment_ms)
            || (self.policy.retention_ms >= 0
                && a.max_ts
                    .is_some_and(|t| now_ms.saturating_sub(t) > self.policy.retention_ms));
        if expired {
            self.roll()?;
            report.rolled = true;
        }
        self.apply_retention(now_ms, &mut report)?;
        if self.policy.compaction == Compaction::LatestPerKey {
            self.compact(now_ms, &mut report)?;
        }
        Ok(report)
    }

    fn set_policy(&mut self, policy: ResolvedPolicy) {
        self.policy = policy;
    }

    fn poison(&mut self, why: &str) {
        self.poisoned.get_or_insert_with(|| why.to_string());
    }

    fn flush_all(&mut self) -> Result<(), LogError> {
        self.active_mut().checkpoint()
    }
}
