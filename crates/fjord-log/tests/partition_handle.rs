//! The async partition handle: acknowledgements per durability, long-poll
//! reads that wake on append, reads by time, torn-tail recovery and the
//! ephemeral ring's bounded memory.

use std::fs::OpenOptions;
use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use fjord_core::batch::{self, ProducerInfo};
use fjord_core::policy::ResolvedPolicy;
use fjord_core::{Durability, RecordInput};
use fjord_log::{Partition, PartitionLog, PartitionOptions};

fn batch_of(values: &[&str]) -> Vec<u8> {
    let recs: Vec<RecordInput> = values
        .iter()
        .map(|v| RecordInput {
            value: Some(Bytes::copy_from_slice(v.as_bytes())),
            ..Default::default()
        })
        .collect();
    batch::encode(0, 0, ProducerInfo::default(), &recs)
}

fn values(r: &fjord_log::ReadResult) -> Vec<String> {
    r.batches
        .iter()
        .flat_map(|b| batch::decode_records(b).unwrap())
        .map(|r| String::from_utf8(r.value.unwrap().to_vec()).unwrap())
        .collect()
}

#[tokio::test]
async fn every_durability_acknowledges_and_survives_reopen() {
    for d in [
        Durability::Always,
        Durability::Interval { ms: 3 },
        Durability::Os,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let policy = ResolvedPolicy {
            durability: d,
            ..Default::default()
        };
        let (p, _) =
            Partition::open_disk(tmp.path(), policy.clone(), PartitionOptions::default()).unwrap();
        let mut tasks = Vec::new();
        for i in 0..50 {
            let p = p.clone();
            tasks.push(tokio::spawn(async move {
                p.append(batch_of(&[&format!("m{i}")])).await.unwrap()
            }));
        }
        let mut offsets: Vec<i64> = Vec::new();
        for t in tasks {
            offsets.push(t.await.unwrap().base_offset);
        }
        offsets.sort();
        assert_eq!(offsets, (0..50).collect::<Vec<_>>(), "{d}");
        assert_eq!(p.high_watermark(), 50);
        p.flush().await.unwrap();
        drop(p);
        let (log, report) = PartitionLog::open(tmp.path(), policy).unwrap();
        assert_eq!(report.next_offset, 50);
        assert_eq!(report.truncated_bytes, 0);
        drop(log);
    }
}

#[tokio::test]
async fn long_poll_wakes_on_append() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, _) = Partition::open_disk(
        tmp.path(),
        ResolvedPolicy::default(),
        PartitionOptions::default(),
    )
    .unwrap();
    let reader = {
        let p = p.clone();
        tokio::spawn(async move { p.read(0, 1 << 20, Duration::from_secs(30)).await.unwrap() })
    };
    tokio::task::yield_now().await;
    p.append(batch_of(&["hello"])).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(values(&r), ["hello"]);
    assert_eq!(r.next_offset, 1);
    // Nothing new: a zero wait answers at once, empty.
    let r = p.read(1, 1 << 20, Duration::ZERO).await.unwrap();
    assert!(r.batches.is_empty());
    // Past the end is an error naming the range.
    let e = p.read(5, 100, Duration::ZERO).await.unwrap_err();
    assert!(e.to_string().contains("0..1"), "{e}");
}

#[tokio::test]
async fn reads_by_publish_time() {
    let tmp = tempfile::tempdir().unwrap();
    let (p, _) = Partition::open_disk(
        tmp.path(),
        ResolvedPolicy::default(),
        PartitionOptions::default(),
    )
    .unwrap();
    let a = p.append(batch_of(&["a"])).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let b = p.append(batch_of(&["b"])).await.unwrap();
    assert!(b.publish_ts > a.publish_ts);
    assert_eq!(p.offset_for_time(a.publish_ts).await.unwrap(), Some(0));
    assert_eq!(p.offset_for_time(a.publish_ts + 1).await.unwrap(), Some(1));
    assert_eq!(p.offset_for_time(b.publish_ts + 1).await.unwrap(), None);
}

#[tokio::test]
async fn torn_tail_is_truncated_and_earlier_records_intact() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = ResolvedPolicy {
        durability: Durability::Always,
        ..Default::default()
    };
    {
        let (p, _) =
            Partition::open_disk(tmp.path(), policy.clone(), PartitionOptions::default()).unwrap();
        for i in 0..10 {
            p.append(batch_of(&[&format!("r{i}"), "x"])).await.unwrap();
        }
        p.flush().await.unwrap();
    }
    // A half-written batch: a valid header prefix, then the power went out.
    let whole = batch_of(&["never acknowledged"]);
    let mut f = OpenOptions::new()
        .append(true)
        .open(tmp.path().join(format!("{:020}.log", 0)))
        .unwrap();
    f.write_all(&whole[..whole.len() / 2]).unwrap();
    drop(f);
    let (p, report) =
        Partition::open_disk(tmp.path(), policy, PartitionOptions::default()).unwrap();
    assert_eq!(report.truncated_bytes, (whole.len() / 2) as u64);
    assert_eq!(report.next_offset, 20);
    let r = p.read(0, 1 << 20, Duration::ZERO).await.unwrap();
    let v = values(&r);
    assert_eq!(v.len(), 20);
    assert_eq!(v[18], "r9");
    // And the log takes new appends after the cut.
    assert_eq!(
        p.append(batch_of(&["after"])).await.unwrap().base_offset,
        20
    );
}

#[tokio::test]
async fn missing_indexes_are_rebuilt() {
    let tmp = tempfile::tempdir().unwrap();
    let policy = ResolvedPolicy {
        segment_bytes: 4096,
        ..Default::default()
    };
    {
        let (p, _) =
            Partition::open_disk(tmp.path(), policy.clone(), PartitionOptions::default()).unwrap();
        for i in 0..200 {
            p.append(batch_of(&[&format!("{i:0100}")])).await.unwrap();
        }
        p.flush().await.unwrap();
    }
    for e in std::fs::read_dir(tmp.path()).unwrap() {
        let path = e.unwrap().path();
        if path
            .extension()
            .is_some_and(|x| x == "index" || x == "timeindex")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    let (p, report) =
        Partition::open_disk(tmp.path(), policy, PartitionOptions::default()).unwrap();
    assert!(report.segments > 3, "{report:?}");
    assert_eq!(report.next_offset, 200);
    let r = p.read(150, 1 << 20, Duration::ZERO).await.unwrap();
    assert_eq!(values(&r)[0], format!("{:0100}", 150));
}

#[tokio::test]
async fn ephemeral_ring_stays_bounded_and_drops_oldest() {
    let policy = ResolvedPolicy {
        ephemeral: true,
        ephemeral_bytes_max: 8192,
        ..Default::default()
    };
    let p = Partition::open_memory(policy, PartitionOptions::default());
    for i in 0..1000 {
        p.append(batch_of(&[&format!("{i:0100}")])).await.unwrap();
    }
    assert!(p.size_bytes() <= 8192);
    assert!(p.start_offset() > 900);
    let r = p
        .read(p.start_offset(), 1 << 20, Duration::ZERO)
        .await
        .unwrap();
    let v = values(&r);
    assert_eq!(v.last().unwrap(), &format!("{:0100}", 999));
    assert!(p.read(0, 100, Duration::ZERO).await.is_err());
}

#[tokio::test]
async fn interval_acknowledges_on_write_and_fsyncs_soon_after() {
    let tmp = tempfile::tempdir().unwrap();
    let fsyncs = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let seen = fsyncs.clone();
    let opts = PartitionOptions {
        fsync_observer: Some(std::sync::Arc::new(move |_| {
            seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        })),
        ..PartitionOptions::default()
    };
    let policy = ResolvedPolicy {
        durability: Durability::Interval { ms: 20 },
        ..Default::default()
    };
    let (p, _) = Partition::open_disk(tmp.path(), policy, opts).unwrap();
    for i in 0..5 {
        p.append(batch_of(&[&format!("v{i}")])).await.unwrap();
    }
    // Visible at once...
    assert_eq!(p.high_watermark(), 5);
    // ...and fsynced within the interval (polled with a generous deadline).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while fsyncs.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no fsync followed the writes"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Nothing written since: once the writes are covered, fsyncs stop. (An
    // absence can only be checked over a window of time.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = fsyncs.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fsyncs.load(std::sync::atomic::Ordering::SeqCst), after);
}
