//! Any bytes as the active segment of a partition: opening it never panics,
//! cuts the file to whole valid batches, and everything left reads back.
#![no_main]

use fjord_core::policy::ResolvedPolicy;
use fjord_log::{LogStore, PartitionLog};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join(format!("{:020}.log", 0)), data).expect("write segment");
    let Ok((log, report)) = PartitionLog::open(dir.path(), ResolvedPolicy::default()) else { return };
    assert!(report.truncated_bytes as usize <= data.len());
    let end = log.next_offset();
    let mut offset = log.start_offset();
    while offset < end {
        let r = log.read(offset, 1 << 20, end).expect("a recovered log reads back");
        assert!(r.next_offset > offset, "reads make progress");
        offset = r.next_offset;
    }
});
