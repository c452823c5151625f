//! Property test of the storage engine against a model: random sequences of
//! appends, rolls, retention, compaction, torn writes and restarts keep every
//! acknowledged record, in order, with the right offsets and timestamps.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use fjord_core::batch::{self, ProducerInfo};
use fjord_core::policy::{Compaction, ResolvedPolicy};
use fjord_core::RecordInput;
use fjord_log::{LogStore, PartitionLog};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Append(Vec<(Option<u8>, Vec<u8>)>),
    /// Several batches in one group (one vectored write per segment).
    AppendGroup(Vec<Vec<(Option<u8>, Vec<u8>)>>),
    Roll,
    Restart,
    RetainBytes(u64),
    RetainTime(i64),
    Compact,
    TornTail(Vec<u8>),
    Tick(i64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => proptest::collection::vec((proptest::option::of(0u8..6), proptest::collection::vec(any::<u8>(), 0..120)), 1..6).prop_map(Op::Append),
        3 => proptest::collection::vec(
            proptest::collection::vec((proptest::option::of(0u8..6), proptest::collection::vec(any::<u8>(), 0..120)), 1..4),
            1..6
        ).prop_map(Op::AppendGroup),
        1 => Just(Op::Roll),
        2 => Just(Op::Restart),
        1 => (200u64..3000).prop_map(Op::RetainBytes),
        1 => (0i64..50).prop_map(Op::RetainTime),
        2 => Just(Op::Compact),
        1 => proptest::collection::vec(any::<u8>(), 1..80).prop_map(Op::TornTail),
        2 => (0i64..20).prop_map(Op::Tick),
    ]
}

#[derive(Debug, Clone)]
struct Rec {
    offset: i64,
    key: Option<Vec<u8>>,
    value: Vec<u8>,
    publish_ts: i64,
    event_ts: i64,
}

fn policy() -> ResolvedPolicy {
    ResolvedPolicy {
        segment_bytes: 700,
        retention_ms: -1,
        retention_bytes: -1,
        segment_ms: i64::MAX / 2,
        ..ResolvedPolicy::default()
    }
}

fn read_all(log: &PartitionLog) -> Vec<Rec> {
    let mut out = Vec::new();
    let end = log.next_offset();
    let mut off = log.start_offset();
    while off < end {
        let r = log.read(off, 1000, end).expect("read");
        assert_spans_match(&r);
        // The budget holds, but for a first batch larger than it.
        let bytes: usize = r.batches.iter().map(|b| b.len()).sum();
        assert!(r.batches.len() <= 1 || bytes <= 1000, "{bytes} bytes read");
        for b in &r.batches {
            for rec in batch::decode_records(b).expect("decode") {
                if rec.offset >= off {
                    out.push(Rec {
                        offset: rec.offset,
                        key: rec.key.map(|k| k.to_vec()),
                        value: rec.value.map(|v| v.to_vec()).unwrap_or_default(),
                        publish_ts: rec.publish_ts,
                        event_ts: rec.event_ts,
                    });
                }
            }
        }
        assert!(r.next_offset > off, "reads make progress");
        off = r.next_offset;
    }
    out
}

/// `spans` hold exactly the bytes of `batches`, in order.
fn assert_spans_match(r: &fjord_log::ReadResult) {
    let batches: Vec<u8> = r.batches.iter().flat_map(|b| b.to_vec()).collect();
    let spans: Vec<u8> = r.spans.iter().flat_map(|b| b.to_vec()).collect();
    assert!(batches == spans, "spans differ from batches");
    assert!(r.spans.len() <= r.batches.len());
}

fn check(log: &PartitionLog, model: &[Rec], next: i64) {
    assert_eq!(log.next_offset(), next, "next offset");
    // One large read too: many batches, few spans.
    assert_spans_match(&log.read(log.start_offset(), 1 << 20, next).expect("read"));
    let got = read_all(log);
    let got_view: Vec<_> = got
        .iter()
        .map(|r| (r.offset, &r.key, &r.value, r.publish_ts, r.event_ts))
        .collect();
    let want_view: Vec<_> = model
        .iter()
        .map(|r| (r.offset, &r.key, &r.value, r.publish_ts, r.event_ts))
        .collect();
    if got_view != want_view {
        let i = got_view
            .iter()
            .zip(&want_view)
            .position(|(a, b)| a != b)
            .unwrap_or(got_view.len().min(want_view.len()));
        panic!(
            "records differ at index {i} (got {} records, want {}): got {:?} want {:?}",
            got_view.len(),
            want_view.len(),
            got_view.get(i).map(|r| (r.0, r.1, r.3, r.4)),
            want_view.get(i).map(|r| (r.0, r.1, r.3, r.4))
        );
    }
}

fn encode(recs: &[(Option<u8>, Vec<u8>)], now: i64) -> (Vec<RecordInput>, Vec<u8>) {
    let inputs: Vec<RecordInput> = recs
        .iter()
        .enumerate()
        .map(|(i, (k, v))| RecordInput {
            key: k.map(|k| Bytes::from(vec![k])),
            value: Some(Bytes::from(v.clone())),
            headers: vec![],
            event_ts: if i % 2 == 0 { Some(now - 5) } else { None },
        })
        .collect();
    let b = batch::encode(0, 0, ProducerInfo::default(), &inputs);
    (inputs, b)
}

fn record(model: &mut Vec<Rec>, inputs: &[RecordInput], base: i64, now: i64) {
    for (i, inp) in inputs.iter().enumerate() {
        model.push(Rec {
            offset: base + i as i64,
            key: inp.key.as_ref().map(|k| k.to_vec()),
            value: inp.value.as_ref().unwrap().to_vec(),
            publish_ts: now,
            event_ts: inp.event_ts.unwrap_or(now),
        });
    }
}

/// The key of the encrypted runs.
fn keys() -> Option<std::sync::Arc<fjord_log::crypt::KeyRing>> {
    fjord_log::crypt::KeyRing::new(&[[9u8; 32]]).map(std::sync::Arc::new)
}

fn reopen(dir: &Path, p: ResolvedPolicy) -> PartitionLog {
    let mut log = PartitionLog::open(dir, p.clone()).expect("reopen").0;
    if p.encrypted {
        log.set_keys(keys());
    }
    log
}

fn run(ops: Vec<Op>) {
    run_with(ops, false)
}

/// Every operation, on a plain or an encrypted partition.
fn run_with(ops: Vec<Op>, encrypted: bool) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("p0");
    let mut p = policy();
    p.encrypted = encrypted;
    let mut log = reopen(&dir, p.clone());
    let mut model: Vec<Rec> = Vec::new();
    let mut next = 0i64;
    let mut now = 1_000i64;
    for op in ops {
        match op {
            Op::Append(recs) => {
                let (inputs, mut b) = encode(&recs, now);
                let info = log.append(&mut b, now).expect("append");
                assert_eq!(info.base_offset, next);
                record(&mut model, &inputs, next, now);
                next += inputs.len() as i64;
            }
            Op::AppendGroup(groups) => {
                let encoded: Vec<_> = groups.iter().map(|recs| encode(recs, now)).collect();
                let mut batches: Vec<Vec<u8>> = encoded.iter().map(|(_, b)| b.clone()).collect();
                let results = log.append_group(&mut batches, now);
                for ((inputs, _), r) in encoded.iter().zip(results) {
                    let info = r.expect("append in a group");
                    assert_eq!(info.base_offset, next);
                    record(&mut model, inputs, next, now);
                    next += inputs.len() as i64;
                }
            }
            Op::Roll => log.roll().unwrap(),
            Op::Restart => {
                drop(log);
                log = reopen(&dir, p.clone());
            }
            Op::Tick(ms) => now += ms,
            Op::RetainBytes(n) => {
                p.retention_bytes = n as i64;
                log.set_policy(p.clone());
                log.maintain(now).unwrap();
                p.retention_bytes = -1;
                log.set_policy(p.clone());
                let start = log.start_offset();
                model.retain(|r| r.offset >= start);
                assert!(log.size_bytes() >= n.min(log.size_bytes()));
            }
            Op::RetainTime(ms) => {
                p.retention_ms = ms;
                p.segment_ms = i64::MAX / 2;
                log.set_policy(p.clone());
                log.maintain(now).unwrap();
                p.retention_ms = -1;
                log.set_policy(p.clone());
                let start = log.start_offset();
                // Only records past retention may have gone.
                assert!(model
                    .iter()
                    .filter(|r| r.offset < start)
                    .all(|r| now - r.publish_ts > ms));
                model.retain(|r| r.offset >= start);
            }
            Op::Compact => {
                let active_base = log.active_base_offset();
                p.compaction = Compaction::LatestPerKey;
                log.set_policy(p.clone());
                log.maintain(now).unwrap();
                p.compaction = Compaction::None;
                log.set_policy(p.clone());
                let mut latest: HashMap<Vec<u8>, i64> = HashMap::new();
                for r in &model {
                    if let Some(k) = &r.key {
                        latest.insert(k.clone(), r.offset);
                    }
                }
                model.retain(|r| {
                    r.offset >= active_base || r.key.as_ref().is_none_or(|k| latest[k] == r.offset)
                });
            }
            Op::TornTail(garbage) => {
                let active = dir.join(format!("{:020}.log", log.active_base_offset()));
                drop(log);
                let mut f = OpenOptions::new().append(true).open(&active).unwrap();
                f.write_all(&garbage).unwrap();
                drop(f);
                let (mut l, report) = PartitionLog::open(&dir, p.clone()).unwrap();
                assert_eq!(report.truncated_bytes, garbage.len() as u64, "{report:?}");
                if encrypted {
                    l.set_keys(keys());
                }
                log = l;
            }
        }
        check(&log, &model, next);
    }
    // Finally everything survives one more restart.
    drop(log);
    let log = reopen(&dir, p);
    check(&log, &model, next);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn log_keeps_every_acknowledged_record(ops in proptest::collection::vec(op(), 1..60)) {
        run(ops);
    }

    /// The same with every batch sealed on disk (encryption at rest):
    /// recovery, retention, compaction and reads see plain batches.
    #[test]
    fn encrypted_log_keeps_every_acknowledged_record(ops in proptest::collection::vec(op(), 1..60)) {
        run_with(ops, true);
    }
}

#[test]
fn regression_compaction_then_append() {
    let v = |n: usize| vec![7u8; n];
    run(vec![
        Op::Append(vec![
            (None, v(91)),
            (None, v(108)),
            (None, v(76)),
            (None, v(62)),
        ]),
        Op::Append(vec![(None, v(50)), (Some(1), v(37)), (Some(1), v(55))]),
        Op::Append(vec![
            (Some(2), v(95)),
            (Some(3), v(120)),
            (Some(5), v(38)),
            (Some(3), v(26)),
            (Some(1), v(70)),
        ]),
        Op::Compact,
        Op::Append(vec![
            (Some(5), v(82)),
            (None, v(14)),
            (None, v(103)),
            (None, v(28)),
        ]),
    ]);
}
