//! One segment: `<base offset>.log` plus its `.index` and `.timeindex`.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use fjord_core::batch::BatchHeader;

use crate::index::{self, OffsetEntry, TimeEntry, OFFSET_ENTRY_LEN, TIME_ENTRY_LEN};
use crate::scan::{scan_segment, ScanResult};
use crate::{LogError, INDEX_INTERVAL_BYTES};

pub fn log_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.log"))
}
fn index_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.index"))
}
fn time_path(dir: &Path, base: i64) -> PathBuf {
    dir.join(format!("{base:020}.timeindex"))
}

/// The base offset a segment file name encodes, if it is a segment.
pub fn parse_log_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

pub struct Segment {
    pub base_offset: i64,
    /// Offset after the last batch (meaningful for the active segment).
    pub next_offset: i64,
    pub size: u64,
    /// Largest publish time in the segment; `None` when empty.
    pub max_ts: Option<i64>,
    /// Publish time of the first batch, for rolling by age.
    pub first_ts: Option<i64>,
    last_base: Option<i64>,
    dir: PathBuf,
    file: Arc<File>,
    index: Vec<OffsetEntry>,
    time_index: Vec<TimeEntry>,
    /// Bytes appended since the last index entry.
    since_index: u64,
    /// Position up to which writeback has been started.
    written_back: u64,
}

/// Writeback is started once this much has been written since the last
/// start: per small append, each start is an I/O submission of its own
/// (on a VM, an exit per virtio kick), which cost more than the write.
const WRITEBACK_CHUNK: u64 = 1024 * 1024;

fn open_rw(path: &Path, create: bool) -> Result<File, LogError> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(create)
        .truncate(false)
        .open(path)
        .map_err(|e| LogError::io("open", path, e))
}

impl Segment {
    /// Creates an empty segment (the new active one).
    pub fn create(dir: &Path, base_offset: i64) -> Result<Self, LogError> {
        let path = log_path(dir, base_offset);
        let file = open_rw(&path, true)?;
        file.set_len(0)
            .map_err(|e| LogError::io("truncate", &path, e))?;
        // Stale index files of an earlier segment at this offset must not
        // outlive it; the new ones are written when the segment is sealed.
        for p in [index_path(dir, base_offset), time_path(dir, base_offset)] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io("remove", p, e)),
            }
        }
        Ok(Self {
            base_offset,
            next_offset: base_offset,
            size: 0,
            max_ts: None,
            first_ts: None,
            last_base: None,
            dir: dir.to_path_buf(),
            file: Arc::new(file),
            index: Vec::new(),
            time_index: Vec::new(),
            since_index: INDEX_INTERVAL_BYTES,
            written_back: 0,
        })
    }

    /// Opens an existing segment. The active (last) segment is always scanned
    /// and its torn tail truncated; a sealed one is scanned only when its
    /// indexes are missing or damaged. Returns the bytes truncated, if any,
    /// and why.
    pub fn open(
        dir: &Path,
        base_offset: i64,
        active: bool,
    ) -> Result<(Self, Option<(u64, String)>), LogError> {
        let path = log_path(dir, base_offset);
        let file = open_rw(&path, false)?;
        let len = file
            .metadata()
            .map_err(|e| LogError::io("stat", &path, e))?
            .len();
        let mut seg = Self {
            base_offset,
            next_offset: base_offset,
            size: len,
            max_ts: None,
            first_ts: None,
            last_base: None,
            dir: dir.to_path_buf(),
            file: Arc::new(file),
            index: Vec::new(),
            time_index: Vec::new(),
            since_index: 0,
            written_back: 0,
        };
        let mut truncated = None;
        let loaded = if active { None } else { seg.load_indexes() };
        match loaded {
            Some((idx, times)) => {
                seg.max_ts = times.last().map(|t| t.ts_ms);
                seg.first_ts = times.first().map(|t| t.ts_ms);
                seg.index = idx;
                seg.time_index = times;
                seg.next_offset = seg.last_batch_next_offset()?;
            }
            None => {
                let scan = scan_segment(&seg.file, len, base_offset)
                    .map_err(|e| LogError::io("scan", &path, e))?;
                if scan.valid_len < len {
                    let reason = scan.stop_reason.clone().unwrap_or_default();
                    if !active {
                        // A sealed segment was fsynced when it was sealed; damage
                        // here is not a torn write, so it is not silently cut.
                        return Err(LogError::Corrupt {
                            path,
                            position: scan.valid_len,
                            reason,
                        });
                    }
                    seg.file
                        .set_len(scan.valid_len)
                        .map_err(|e| LogError::io("truncate torn tail of", &path, e))?;
                    seg.file
                        .sync_all()
                        .map_err(|e| LogError::io("fsync", &path, e))?;
                    truncated = Some((len - scan.valid_len, reason));
                    seg.size = scan.valid_len;
                }
                seg.apply_scan(scan);
                seg.write_indexes()?;
            }
        }
        if active {
            seg.since_index = if seg.size == 0 {
                INDEX_INTERVAL_BYTES
            } else {
                seg.size - seg.index.last().map_or(0, |e| e.position as u64)
            };
        }
        Ok((seg, truncated))
    }

    fn apply_scan(&mut self, scan: ScanResult) {
        self.next_offset = scan.next_offset.unwrap_or(self.base_offset);
        self.max_ts = scan.max_ts;
        self.first_ts = scan.first_ts;
        self.last_base = scan.last_base;
        self.index = scan.index;
        self.time_index = scan.time_index;
    }

    fn load_indexes(&self) -> Option<(Vec<OffsetEntry>, Vec<TimeEntry>)> {
        let idx = fs::read(index_path(&self.dir, self.base_offset)).ok()?;
        let times = fs::read(time_path(&self.dir, self.base_offset)).ok()?;
        let idx = index::decode_offsets(&idx, self.size)?;
        let times = index::decode_times(&times)?;
        // A non-empty segment always indexes its first batch.
        if self.size > 0 && (idx.first().map(|e| e.position) != Some(0) || times.is_empty()) {
            return None;
        }
        Some((idx, times))
    }

    /// Finds the next offset of a sealed segment by walking from its last
    /// index entry (at most one index interval of headers).
    fn last_batch_next_offset(&self) -> Result<i64, LogError> {
        let mut pos = self.index.last().map_or(0, |e| e.position as u64);
        let mut next = self.base_offset;
        let mut hdr = [0u8; fjord_core::batch::HEADER_LEN];
        while pos < self.size {
            self.file
                .read_exact_at(&mut hdr, pos)
                .map_err(|e| LogError::io("read", self.path(), e))?;
            let h = BatchHeader::parse(&hdr).map_err(|e| self.corrupt(pos, e.to_string()))?;
            next = h.next_offset();
            pos += h.total_len() as u64;
        }
        Ok(next)
    }

    /// The sparse time index may miss the newest batches; a final entry for
    /// the largest publish time lets a reopened segment know its `max_ts`
    /// without a scan (retention depends on it).
    fn close_time_index(&mut self) {
        if let (Some(max), Some(last)) = (self.max_ts, self.last_base) {
            if self.time_index.last().is_none_or(|t| t.ts_ms < max) {
                let rel = (last - self.base_offset) as u32;
                let rel = rel.max(self.time_index.last().map_or(0, |t| t.rel_offset));
                self.time_index.push(TimeEntry {
                    ts_ms: max,
                    rel_offset: rel,
                });
            }
        }
    }

    fn write_indexes(&mut self) -> Result<(), LogError> {
        self.close_time_index();
        let mut idx = Vec::with_capacity(self.index.len() * OFFSET_ENTRY_LEN);
        for e in &self.index {
            idx.extend_from_slice(&e.encode());
        }
        let mut times = Vec::with_capacity(self.time_index.len() * TIME_ENTRY_LEN);
        for e in &self.time_index {
            times.extend_from_slice(&e.encode());
        }
        let ip = index_path(&self.dir, self.base_offset);
        fs::write(&ip, idx).map_err(|e| LogError::io("write", ip, e))?;
        let tp = time_path(&self.dir, self.base_offset);
        fs::write(&tp, times).map_err(|e| LogError::io("write", tp, e))?;
        Ok(())
    }

    /// Writes both index files whole and fsyncs them.
    fn write_indexes_durably(&mut self) -> Result<(), LogError> {
        self.write_indexes()?;
        for p in [
            index_path(&self.dir, self.base_offset),
            time_path(&self.dir, self.base_offset),
        ] {
            File::open(&p)
                .and_then(|f| f.sync_all())
                .map_err(|e| LogError::io("fsync", p, e))?;
        }
        Ok(())
    }

    pub fn path(&self) -> PathBuf {
        log_path(&self.dir, self.base_offset)
    }

    pub fn file(&self) -> Arc<File> {
        self.file.clone()
    }

    pub fn corrupt(&self, position: u64, reason: String) -> LogError {
        LogError::Corrupt {
            path: self.path(),
            position,
            reason,
        }
    }

    /// Appends a run of whole batches whose offsets are already assigned,
    /// with one vectored write. On a failed write the partial bytes are cut
    /// off again, so the segment stays a sequence of whole batches, and no
    /// batch of the run counts as appended.
    ///
    /// The active segment's indexes live in memory and reach the disk when
    /// the segment is sealed or checkpointed: recovery rebuilds them for the
    /// active segment anyway, so writing them per append would be waste.
    pub fn append_run(
        &mut self,
        batches: &[&[u8]],
        headers: &[BatchHeader],
    ) -> Result<(), LogError> {
        debug_assert_eq!(batches.len(), headers.len());
        let pos = self.size;
        if let Err(e) = write_all_vectored_at(&self.file, batches, pos) {
            let err = LogError::io("write", self.path(), e);
            if let Err(e2) = self.file.set_len(pos) {
                return Err(LogError::Corrupt {
                    path: self.path(),
                    position: pos,
                    reason: format!(
                        "write failed ({err}) and the partial write could not be cut off: {e2}"
                    ),
                });
            }
            return Err(err);
        }
        let end = pos + batches.iter().map(|b| b.len() as u64).sum::<u64>();
        self.written_back = self.written_back.min(pos);
        if end - self.written_back >= WRITEBACK_CHUNK {
            start_writeback(
                &self.file,
                self.written_back,
                (end - self.written_back) as usize,
            );
            self.written_back = end;
        }
        let mut at = pos;
        for (batch, h) in batches.iter().zip(headers) {
            debug_assert_eq!(h.total_len(), batch.len());
            debug_assert!(h.base_offset >= self.next_offset);
            self.next_offset = h.next_offset();
            self.last_base = Some(h.base_offset);
            let ts = h.publish_ts();
            self.first_ts.get_or_insert(ts);
            self.max_ts = Some(self.max_ts.map_or(ts, |m| m.max(ts)));
            if self.since_index >= INDEX_INTERVAL_BYTES {
                let rel = (h.base_offset - self.base_offset) as u32;
                self.index.push(OffsetEntry {
                    rel_offset: rel,
                    position: at as u32,
                });
                self.time_index.push(TimeEntry {
                    ts_ms: self.max_ts.unwrap_or(ts),
                    rel_offset: rel,
                });
                self.since_index = 0;
            }
            self.since_index += batch.len() as u64;
            at += batch.len() as u64;
        }
        self.size = at;
        Ok(())
    }

    pub fn read_at(&self, pos: u64, len: usize) -> Result<Vec<u8>, LogError> {
        pread_exact(&self.file, pos, len).map_err(|e| LogError::io("read", self.path(), e))
    }

    /// Byte position to start scanning at for `offset`.
    pub fn position_for(&self, offset: i64) -> u64 {
        if offset <= self.base_offset {
            return 0;
        }
        let rel = (offset - self.base_offset).min(u32::MAX as i64) as u32;
        index::floor_position(&self.index, rel)
    }

    /// Offset to start scanning at for the first batch published at or
    /// after `ts_ms`.
    pub fn offset_floor_for_time(&self, ts_ms: i64) -> i64 {
        index::floor_time(&self.time_index, ts_ms)
            .map_or(self.base_offset, |rel| self.base_offset + rel as i64)
    }

    /// Makes everything written so far durable: data fsynced, index files
    /// rewritten whole and fsynced. Appends may go on afterwards.
    pub fn checkpoint(&mut self) -> Result<(), LogError> {
        self.sync()?;
        self.write_indexes_durably()
    }

    /// Makes the segment immutable (at roll).
    pub fn seal(&mut self) -> Result<(), LogError> {
        self.checkpoint()
    }

    pub fn sync(&self) -> Result<(), LogError> {
        self.file
            .sync_data()
            .map_err(|e| LogError::io("fsync", self.path(), e))
    }

    pub fn delete(self) -> Result<(), LogError> {
        for p in [
            self.path(),
            index_path(&self.dir, self.base_offset),
            time_path(&self.dir, self.base_offset),
        ] {
            match fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(LogError::io("delete", p, e)),
            }
        }
        Ok(())
    }

    /// Replaces this sealed segment's contents by `batches` (compaction). The
    /// new file is written and fsynced beside the old one, then renamed over
    /// it, so a crash leaves either the old or the new segment, whole.
    pub fn rewrite(&mut self, batches: &[Vec<u8>]) -> Result<(), LogError> {
        let tmp = self
            .dir
            .join(format!("{:020}.log.cleaned", self.base_offset));
        {
            let f = File::create(&tmp).map_err(|e| LogError::io("create", &tmp, e))?;
            let mut pos = 0u64;
            for b in batches {
                f.write_all_at(b, pos)
                    .map_err(|e| LogError::io("write", &tmp, e))?;
                pos += b.len() as u64;
            }
            f.sync_all().map_err(|e| LogError::io("fsync", &tmp, e))?;
        }
        let path = self.path();
        fs::rename(&tmp, &path).map_err(|e| LogError::io("rename", &tmp, e))?;
        let file = open_rw(&path, false)?;
        let len = file
            .metadata()
            .map_err(|e| LogError::io("stat", &path, e))?
            .len();
        let scan = scan_segment(&file, len, self.base_offset)
            .map_err(|e| LogError::io("scan", &path, e))?;
        if scan.valid_len != len {
            return Err(LogError::Corrupt {
                path,
                position: scan.valid_len,
                reason: "compacted segment failed its own check".into(),
            });
        }
        let next = self.next_offset;
        self.file = Arc::new(file);
        self.size = len;
        self.written_back = 0;
        self.apply_scan(scan);
        // Keep the original end: offsets of removed records are not reused.
        self.next_offset = next;
        self.write_indexes_durably()
    }
}

/// Asks the kernel to start writing `len` bytes at `pos` to disk now,
/// without waiting (`sync_file_range(SYNC_FILE_RANGE_WRITE)`, what RocksDB
/// calls `bytes_per_sync`). Dirty data then never piles up for a later fsync
/// to write all at once: measured here, the final flush of an `os` run went
/// from most of the run to a few percent of it, and batched appends from
/// ~60 % to ~75-100 % of raw bandwidth. A hint only: errors are ignored, the
/// fsync that follows reports real ones.
fn start_writeback(file: &File, pos: u64, len: usize) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on a file descriptor we own; no memory is
    // passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            pos as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// `pwritev` until every byte of `bufs` is written at `pos`.
fn write_all_vectored_at(file: &File, bufs: &[&[u8]], mut pos: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    const IOV_MAX: usize = 1024;
    let mut first = 0usize; // buffers fully written
    let mut skip = 0usize; // bytes of bufs[first] already written
    while first < bufs.len() {
        let iov: Vec<libc::iovec> = bufs[first..]
            .iter()
            .take(IOV_MAX)
            .enumerate()
            .map(|(i, b)| {
                let b = if i == 0 { &b[skip..] } else { b };
                libc::iovec {
                    iov_base: b.as_ptr() as *mut libc::c_void,
                    iov_len: b.len(),
                }
            })
            .collect();
        // SAFETY: every iovec points into a live slice of `bufs`, which
        // outlives the call; pwritev only reads them.
        let n = unsafe {
            libc::pwritev(
                file.as_raw_fd(),
                iov.as_ptr(),
                iov.len() as libc::c_int,
                pos as libc::off_t,
            )
        };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let mut n = n as usize;
        pos += n as u64;
        while n > 0 && first < bufs.len() {
            let left = bufs[first].len() - skip;
            if n >= left {
                n -= left;
                first += 1;
                skip = 0;
            } else {
                skip += n;
                n = 0;
            }
        }
        while first < bufs.len() && bufs[first].len() == skip {
            first += 1;
            skip = 0;
        }
    }
    Ok(())
}

/// fsync a directory so created, renamed or deleted entries survive a crash.
pub fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io("fsync directory", dir, e))
}

/// `len` bytes of `file` from `pos`, read into a fresh buffer without
/// zeroing it first (reads are most of a query's I/O; the kernel copies
/// into the buffer anyway).
fn pread_exact(file: &File, pos: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len);
    while buf.len() < len {
        let want = len - buf.len();
        let offset = libc::off_t::try_from(pos + buf.len() as u64)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
        let spare = buf.spare_capacity_mut();
        // SAFETY: `spare` is the vector's unused capacity, at least `want`
        // bytes (the capacity is at least `len`); pread writes at most
        // `want` bytes there.
        let n = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast::<libc::c_void>(),
                want,
                offset,
            )
        };
        match n {
            n if n > 0 => {
                // SAFETY: pread initialized the `n <= want` bytes after the
                // current length.
                unsafe { buf.set_len(buf.len() + n as usize) };
            }
            0 => return Err(std::io::ErrorKind::UnexpectedEof.into()),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vectored_write_handles_more_buffers_than_iov_max_and_empty_ones() {
        let dir = tempfile::tempdir().unwrap();
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("v"))
            .unwrap();
        let bufs: Vec<Vec<u8>> = (0..3000u32)
            .map(|i| vec![(i % 251) as u8; (i % 7) as usize])
            .collect();
        let slices: Vec<&[u8]> = bufs.iter().map(|b| b.as_slice()).collect();
        write_all_vectored_at(&f, &slices, 5).unwrap();
        let want: Vec<u8> = std::iter::repeat_n(0u8, 5).chain(bufs.concat()).collect();
        assert_eq!(fs::read(dir.path().join("v")).unwrap(), want);
    }
}
