//! Gap filling (`time_bucket_gapfill`, `locf`, `interpolate`) over a
//! stored stream with missing and out-of-order points, checked against a
//! brute-force resampling computed here.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use common::{anonymous, Lcg};
use datafusion::arrow::array::{Array, AsArray};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float64Type, Int64Type, TimeUnit};
use datafusion::arrow::record_batch::RecordBatch;
use fjord_broker::{Broker, BrokerConfig};
use fjord_core::{Policy, RecordInput, StreamRef};
use fjord_sql::{SqlEngine, SqlErrorKind};

const MINUTE: i64 = 60_000;
/// 2026-01-01T00:00:00Z.
const T0: i64 = 1_767_225_600_000;
const MINUTES: i64 = 30;

fn reading(device: u32, temp: f64, event_ts: i64) -> RecordInput {
    RecordInput {
        key: Some(Bytes::from(format!("dev-{device}"))),
        value: Some(Bytes::from(format!(
            r#"{{"device":"dev-{device}","temp":{temp}}}"#
        ))),
        headers: vec![],
        event_ts: Some(event_ts),
    }
}

async fn setup(dir: &std::path::Path) -> (Arc<Broker>, Arc<SqlEngine>) {
    let b = Broker::open(BrokerConfig::new(dir)).await.unwrap();
    let s = StreamRef::new("public", "default", "readings").unwrap();
    b.create_stream(&s, Some(2), Policy::default()).unwrap();
    let sql = SqlEngine::new(b.clone());
    (b, sql)
}

fn rows(batches: &[RecordBatch]) -> Vec<Vec<Option<String>>> {
    let mut out = Vec::new();
    for b in batches {
        let cols: Vec<_> = b
            .columns()
            .iter()
            .map(|c| cast(c, &DataType::Utf8).unwrap())
            .collect();
        for i in 0..b.num_rows() {
            out.push(
                cols.iter()
                    .map(|c| {
                        c.is_valid(i)
                            .then(|| c.as_string::<i32>().value(i).to_string())
                    })
                    .collect(),
            );
        }
    }
    out
}

fn close(got: Option<f64>, want: Option<f64>) -> bool {
    match (got, want) {
        (Some(g), Some(w)) => (g - w).abs() < 1e-9,
        (None, None) => true,
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gaps_are_filled_as_a_brute_force_resampling_says() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, sql) = setup(tmp.path()).await;
    let s = StreamRef::new("public", "default", "readings").unwrap();
    // Three devices; each minute has a reading with probability ~1/2 (device
    // 2 none for the first six minutes), some minutes two; published in a
    // shuffled order. One reading falls before the range.
    let mut rng = Lcg(7);
    let mut points: Vec<(u32, i64, f64)> = Vec::new();
    for device in 0..3u32 {
        for m in 0..MINUTES {
            if (device == 2 && m < 6) || rng.next().is_multiple_of(2) {
                continue;
            }
            for _ in 0..1 + rng.next() % 2 {
                let ts = T0 + m * MINUTE + (rng.next() % MINUTE as u64) as i64;
                let temp = (rng.next() % 1000) as f64 / 10.0;
                points.push((device, ts, temp));
            }
        }
    }
    points.push((0, T0 - 1, 999.0));
    for i in (1..points.len()).rev() {
        points.swap(i, rng.next() as usize % (i + 1));
    }
    let records: Vec<RecordInput> = points.iter().map(|&(d, ts, t)| reading(d, t, ts)).collect();
    b.produce(&s, records, None).await.unwrap();

    // Brute force: the mean per device and minute, then each gap carried
    // forward and drawn as a line between the known neighbours.
    let mut sums: BTreeMap<(u32, i64), (f64, f64)> = BTreeMap::new();
    for &(d, ts, t) in points.iter().filter(|p| p.1 >= T0) {
        let e = sums.entry((d, (ts - T0) / MINUTE)).or_default();
        e.0 += t;
        e.1 += 1.0;
    }
    let mut want = Vec::new();
    for d in 0..3u32 {
        let raw: Vec<Option<f64>> = (0..MINUTES)
            .map(|m| sums.get(&(d, m)).map(|(s, n)| s / n))
            .collect();
        for m in 0..MINUTES as usize {
            let before = (0..=m).rev().find_map(|k| raw[k].map(|v| (k, v)));
            let after = (m..MINUTES as usize).find_map(|k| raw[k].map(|v| (k, v)));
            let line = match (before, after) {
                (Some((k0, v0)), Some((k1, v1))) if k1 > k0 => {
                    Some(v0 + (v1 - v0) * (m - k0) as f64 / (k1 - k0) as f64)
                }
                (Some((k0, v0)), _) if k0 == m => Some(v0),
                _ => None,
            };
            want.push((d, m as i64, raw[m], before.map(|b| b.1), line));
        }
    }

    let q = format!(
        "SELECT json_get_str(value, 'device') AS device,
                time_bucket_gapfill(INTERVAL '1 minute', _event_ts) AS minute,
                avg(json_get_float(value, 'temp')) AS raw,
                locf(avg(json_get_float(value, 'temp'))) AS held,
                interpolate(avg(json_get_float(value, 'temp'))) AS line
         FROM readings
         WHERE _event_ts >= to_timestamp_millis({T0}) AND _event_ts < to_timestamp_millis({})
         GROUP BY device, minute ORDER BY device, minute",
        T0 + MINUTES * MINUTE
    );
    let r = sql
        .query(anonymous(), &q)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut got = Vec::new();
    for batch in &r.batches {
        let device = cast(batch.column(0), &DataType::Utf8).unwrap();
        let minute = cast(
            batch.column(1),
            &DataType::Timestamp(TimeUnit::Millisecond, None),
        )
        .unwrap();
        let minute = cast(&minute, &DataType::Int64).unwrap();
        let f = |c: usize| batch.column(c).as_primitive::<Float64Type>().clone();
        let (raw, held, line) = (f(2), f(3), f(4));
        for i in 0..batch.num_rows() {
            let v = |a: &datafusion::arrow::array::Float64Array| a.is_valid(i).then(|| a.value(i));
            got.push((
                device.as_string::<i32>().value(i).to_string(),
                minute.as_primitive::<Int64Type>().value(i),
                v(&raw),
                v(&held),
                v(&line),
            ));
        }
    }
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (g, w) in got.iter().zip(&want) {
        let ok = g.0 == format!("dev-{}", w.0)
            && g.1 == T0 + w.1 * MINUTE
            && close(g.2, w.2)
            && close(g.3, w.3)
            && close(g.4, w.4);
        assert!(ok, "got {g:?}, want {w:?}");
    }
    // There were gaps to fill, and device 2 starts with some.
    assert!(want.iter().any(|w| w.2.is_none() && w.3.is_some()));
    assert!(want.iter().any(|w| w.2.is_none() && w.4.is_some()));
    assert!(want[2 * MINUTES as usize].3.is_none());

    // EXPLAIN shows the filling step.
    let r = sql
        .query(anonymous(), &format!("EXPLAIN {q}"))
        .await
        .unwrap();
    let plan: String = rows(&r.batches)
        .into_iter()
        .flat_map(|r| r.into_iter().flatten())
        .collect::<Vec<_>>()
        .join("\n");
    assert!(
        plan.contains("GapFill") && plan.contains("GapFillExec"),
        "{plan}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_ranges_empty_streams_and_mistakes() {
    let tmp = tempfile::tempdir().unwrap();
    let (b, sql) = setup(tmp.path()).await;
    let s = StreamRef::new("public", "default", "readings").unwrap();
    let range = |from: i64, to: i64| {
        format!(
            "to_timestamp_millis({}), to_timestamp_millis({})",
            T0 + from,
            T0 + to
        )
    };
    // No other group column: the one series is the grid, even before any
    // data arrives.
    let q = format!(
        "SELECT time_bucket_gapfill(INTERVAL '10 minutes', _event_ts, {}) AS b, count(*) AS n
         FROM readings GROUP BY b ORDER BY b",
        range(0, 30 * MINUTE)
    );
    let r = sql.query(anonymous(), &q).await.unwrap();
    let empty: Vec<Option<String>> = rows(&r.batches).into_iter().map(|r| r[1].clone()).collect();
    assert_eq!(empty, vec![None, None, None]);
    b.produce(
        &s,
        vec![
            reading(1, 1.5, T0 + 25 * MINUTE),
            reading(1, 2.0, T0 + 21 * MINUTE),
            reading(1, 3.0, T0 + MINUTE),
        ],
        None,
    )
    .await
    .unwrap();
    let r = sql.query(anonymous(), &q).await.unwrap();
    let counts: Vec<Option<String>> = rows(&r.batches).into_iter().map(|r| r[1].clone()).collect();
    assert_eq!(counts, vec![Some("1".into()), None, Some("2".into())]);
    // Integers interpolate to whole numbers; BETWEEN includes its end's
    // bucket.
    let q = format!(
        "SELECT time_bucket_gapfill(INTERVAL '10 minutes', _event_ts) AS b,
                interpolate(CAST(sum(json_get_float(value, 'temp')) * 10 AS BIGINT)) AS s
         FROM readings
         WHERE _event_ts BETWEEN to_timestamp_millis({T0}) AND to_timestamp_millis({})
         GROUP BY b ORDER BY b",
        T0 + 30 * MINUTE
    );
    let r = sql
        .query(anonymous(), &q)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let s: Vec<Option<String>> = rows(&r.batches).into_iter().map(|r| r[1].clone()).collect();
    assert_eq!(
        s,
        vec![
            Some("30".into()),
            Some("33".into()),
            Some("35".into()),
            None
        ]
    );

    for (q, says) in [
        (
            "SELECT time_bucket_gapfill(INTERVAL '1 minute', _event_ts) AS m, count(*) FROM readings GROUP BY m"
                .to_string(),
            "time range",
        ),
        (
            "SELECT locf(count(*)) FROM readings".to_string(),
            "time_bucket_gapfill",
        ),
        (
            format!(
                "SELECT time_bucket_gapfill(INTERVAL '1 minute', _event_ts, {}) AS m, interpolate(max(json_get_str(value, 'device'))) FROM readings GROUP BY m",
                range(0, MINUTE)
            ),
            "interpolate() draws lines between numbers",
        ),
        (
            format!(
                "SELECT time_bucket_gapfill(INTERVAL '1 second', _event_ts, {}) AS m, count(*) FROM readings GROUP BY m",
                range(0, 365 * 24 * 60 * MINUTE)
            ),
            "narrow the time range",
        ),
        (
            "SELECT time_bucket_gapfill(INTERVAL '1 minute', _event_ts) FROM readings".to_string(),
            "GROUP BY",
        ),
    ] {
        let e = sql.query(anonymous(), &q).await.unwrap_err();
        assert!(e.message.contains(says), "{q}: {e:?}");
        assert_ne!(e.kind, SqlErrorKind::Execution, "{q}: {e:?}");
    }
}
