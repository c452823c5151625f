//! Continuous queries on an embedded broker: windowed aggregates over
//! out-of-order and late readings checked against a brute-force
//! computation, late rows in a side stream, alerts from a filter, restart
//! from a checkpoint, and the errors of statements that cannot run.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{anonymous, Lcg};
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::UInt64Type;
use fjord_broker::{Broker, BrokerConfig, Position};
use fjord_core::{Policy, Record, RecordInput, StreamRef};
use fjord_sql::{SqlEngine, SqlErrorKind};

async fn broker(dir: &std::path::Path) -> Arc<Broker> {
    Broker::open(BrokerConfig::new(dir)).await.unwrap()
}

fn stream(name: &str) -> StreamRef {
    StreamRef::new("public", "default", name).unwrap()
}

fn reading(device: u32, temp: f64, event_ts: i64) -> RecordInput {
    RecordInput {
        key: Some(Bytes::from(format!("dev-{device}"))),
        value: Some(Bytes::from(format!(
            r#"{{"device":"dev-{device}","temp":{temp}}}"#
        ))),
        headers: Vec::new(),
        event_ts: Some(event_ts),
    }
}

/// Every record of a stream, partition by partition.
async fn read_all(b: &Broker, s: &StreamRef) -> Vec<Record> {
    let mut out = Vec::new();
    for p in 0..b.partition_count(s).unwrap() {
        let mut at = b.resolve(s, p, Position::Earliest).await.unwrap();
        loop {
            let f = b
                .fetch(s, p, Position::Offset(at), 10_000, 16 << 20, Duration::ZERO)
                .await
                .unwrap();
            if f.records.is_empty() {
                break;
            }
            at = f.next_offset;
            out.extend(f.records);
        }
    }
    out
}

fn json(r: &Record) -> serde_json::Value {
    serde_json::from_slice(r.value.as_deref().unwrap()).unwrap()
}

/// `SHOW QUERIES`' counter `column` of query `name`.
async fn counter(sql: &SqlEngine, name: &str, column: &str) -> u64 {
    let r = sql.query(anonymous(), "SHOW QUERIES").await.unwrap();
    let b = &r.batches[0];
    let names = b.column_by_name("name").unwrap().as_string::<i32>();
    let row = (0..b.num_rows())
        .find(|&i| names.value(i) == name)
        .unwrap_or_else(|| panic!("no query {name}"));
    b.column_by_name(column)
        .unwrap()
        .as_primitive::<UInt64Type>()
        .value(row)
}

async fn wait_for(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[derive(Default, Debug, PartialEq)]
struct Agg {
    n: u64,
    sum: f64,
    min: f64,
    max: f64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tumbling_averages_match_a_brute_force_computation() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let sql = SqlEngine::new(b.clone());
    let src = stream("readings");
    b.create_stream(&src, Some(2), Policy::default()).unwrap();
    sql.query(
        anonymous(),
        "CREATE STREAM avg_temp WITH (out_of_orderness = '2 seconds', start = 'earliest', \
         late_rows = 'late_readings', idle_timeout = 'none') AS \
         SELECT tumble(_event_ts, INTERVAL '1 second') AS window_start, \
                json_get_str(value, 'device') AS device, \
                count(*) AS n, avg(json_get_float(value, 'temp')) AS avg_temp, \
                min(json_get_float(value, 'temp')) AS min_temp, \
                max(json_get_float(value, 'temp')) AS max_temp \
         FROM readings \
         GROUP BY tumble(_event_ts, INTERVAL '1 second'), json_get_str(value, 'device')",
    )
    .await
    .unwrap();

    // Six devices, a reading every 50 ms each for 20 s, arriving up to
    // 1.9 s out of order (within the 2 s bound: never late).
    let base = 1_700_000_000_000i64;
    let mut rng = Lcg(7);
    let mut events: Vec<(u32, f64, i64)> = Vec::new();
    for step in 0..400i64 {
        for d in 0..6u32 {
            let temp = (rng.next() % 4000) as f64 / 100.0;
            events.push((d, temp, base + step * 50));
        }
    }
    // Shuffle locally: each reading moves later by up to 1.9 s of arrival.
    let mut arrival: Vec<(i64, usize)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.2 + (rng.next() % 1900) as i64, i))
        .collect();
    arrival.sort();
    let mut max_seen = i64::MIN;
    for chunk in arrival.chunks(37) {
        let batch: Vec<(u32, RecordInput)> = chunk
            .iter()
            .map(|&(_, i)| {
                let (d, t, ts) = events[i];
                (d, reading(d, t, ts))
            })
            .collect();
        for (_, r) in &batch {
            let ts = r.event_ts.unwrap();
            assert!(
                ts > max_seen.saturating_sub(2000),
                "the data itself keeps the bound"
            );
            max_seen = max_seen.max(ts);
        }
        for p in 0..2u32 {
            let part: Vec<RecordInput> = batch
                .iter()
                .filter(|(d, _)| d % 2 == p)
                .map(|(_, r)| r.clone())
                .collect();
            b.produce(&src, part, Some(p)).await.unwrap();
        }
    }
    let on_time = events.len() as u64;
    wait_for("the readings to be read", async || {
        counter(&sql, "default.avg_temp", "rows_in").await == on_time
    })
    .await;
    // Now late: readings for windows long closed (the watermark is at
    // about base + 20 s - 2 s), in both partitions.
    let late = vec![
        reading(0, 99.0, base + 1_000),
        reading(1, 98.0, base + 5_500),
        reading(2, 97.0, base + 15_999),
    ];
    for r in &late {
        let d: u32 = std::str::from_utf8(&r.key.clone().unwrap()[4..])
            .unwrap()
            .parse()
            .unwrap();
        b.produce(&src, vec![r.clone()], Some(d % 2)).await.unwrap();
    }
    // Then time moves on in both partitions: every window of the readings
    // closes (the flush rows' own windows stay open).
    for p in 0..2u32 {
        b.produce(&src, vec![reading(100 + p, 0.0, base + 60_000)], Some(p))
            .await
            .unwrap();
    }

    // Brute force: every on-time reading, by window and device.
    let mut expected: BTreeMap<(i64, String), Agg> = BTreeMap::new();
    for &(d, t, ts) in &events {
        let a = expected
            .entry((ts - ts.rem_euclid(1000), format!("dev-{d}")))
            .or_insert(Agg {
                min: f64::MAX,
                max: f64::MIN,
                ..Agg::default()
            });
        a.n += 1;
        a.sum += t;
        a.min = a.min.min(t);
        a.max = a.max.max(t);
    }
    let out = stream("avg_temp");
    wait_for("every window's results", async || {
        read_all(&b, &out).await.len() == expected.len()
    })
    .await;
    let results = read_all(&b, &out).await;
    let mut seen = BTreeMap::new();
    for r in &results {
        let v = json(r);
        let start = chrono::DateTime::parse_from_rfc3339(v["window_start"].as_str().unwrap())
            .unwrap_or_else(|e| panic!("{v}: {e}"))
            .timestamp_millis();
        let device = v["device"].as_str().unwrap().to_string();
        // A window's result carries its last millisecond as event time.
        assert_eq!(r.event_ts, start + 999);
        let key = (start, device);
        let want = expected
            .get(&key)
            .unwrap_or_else(|| panic!("unexpected result {v}"));
        assert_eq!(v["n"].as_u64(), Some(want.n), "{v}");
        let avg = v["avg_temp"].as_f64().unwrap();
        assert!(
            (avg - want.sum / want.n as f64).abs() < 1e-9,
            "{v} vs {want:?}"
        );
        assert_eq!(v["min_temp"].as_f64(), Some(want.min), "{v}");
        assert_eq!(v["max_temp"].as_f64(), Some(want.max), "{v}");
        assert!(seen.insert(key, ()).is_none(), "duplicate result {v}");
    }
    assert_eq!(seen.len(), expected.len());

    // The late readings: counted, and in the side stream as published.
    assert_eq!(counter(&sql, "default.avg_temp", "late_rows").await, 3);
    let side = read_all(&b, &stream("late_readings")).await;
    let mut temps: Vec<f64> = side
        .iter()
        .map(|r| json(r)["temp"].as_f64().unwrap())
        .collect();
    temps.sort_by(f64::total_cmp);
    assert_eq!(temps, vec![97.0, 98.0, 99.0]);
    sql.stop_queries().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hopping_windows_with_a_having_alert_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let src = stream("vibration");
    let base = 1_800_000_000_000i64;
    // Readings every 100 ms for 12 s from one device: 10 per second.
    // Device 2 exceeds 50 in seconds 3 and 7 only.
    let level = |ts: i64| {
        let s = (ts - base) / 1000;
        if s == 3 || s == 7 {
            80.0
        } else {
            10.0
        }
    };
    let query = "CREATE STREAM shaking WITH (start = 'earliest', idle_timeout = 'none') AS \
        SELECT hop(_event_ts, INTERVAL '2 seconds', INTERVAL '4 seconds') AS window_start, \
               count(*) FILTER (WHERE json_get_float(value, 'temp') > 50) AS hot, \
               count(*) AS n \
        FROM vibration GROUP BY 1 HAVING count(*) FILTER (WHERE json_get_float(value, 'temp') > 50) >= 5";
    {
        let b = broker(dir.path()).await;
        let sql = SqlEngine::new(b.clone());
        b.create_stream(&src, Some(1), Policy::default()).unwrap();
        sql.query(anonymous(), query).await.unwrap();
        let first: Vec<RecordInput> = (0..60)
            .map(|i| reading(2, level(base + i * 100), base + i * 100))
            .collect();
        b.produce(&src, first, None).await.unwrap();
        wait_for("the first half", async || {
            counter(&sql, "default.shaking", "rows_in").await == 60
        })
        .await;
        // Stopped mid-way: windows are open, state is in the checkpoint.
        sql.stop_queries().await;
        b.shutdown().await;
    }
    let b = broker(dir.path()).await;
    let sql = SqlEngine::new(b.clone());
    sql.start_queries().await;
    let rest: Vec<RecordInput> = (60..120)
        .map(|i| reading(2, level(base + i * 100), base + i * 100))
        .collect();
    b.produce(&src, rest, None).await.unwrap();
    b.produce(&src, vec![reading(2, 0.0, base + 30_000)], None)
        .await
        .unwrap();
    // Hopping windows of 4 s every 2 s holding a hot second: starting at
    // base+0 and +2 (second 3), +4 and +6 (second 7).
    let out = stream("shaking");
    // Its read counter moves after what the rows closed is appended.
    wait_for("every row read", async || {
        counter(&sql, "default.shaking", "rows_in").await == 121
    })
    .await;
    let results = read_all(&b, &out).await;
    let starts: Vec<i64> = results
        .iter()
        .map(|r| {
            let v = json(r);
            assert_eq!(v["hot"].as_u64(), Some(10), "{v}");
            assert_eq!(v["n"].as_u64(), Some(40), "{v}");
            chrono::DateTime::parse_from_rfc3339(v["window_start"].as_str().unwrap())
                .unwrap()
                .timestamp_millis()
                - base
        })
        .collect();
    assert_eq!(starts, vec![0, 2000, 4000, 6000]);
    sql.stop_queries().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_passes_matching_records_through() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let sql = SqlEngine::new(b.clone());
    let src = stream("plant1");
    b.create_stream(&src, Some(2), Policy::default()).unwrap();
    // Before the query: not read (it starts at the end by default).
    b.produce(&src, vec![reading(1, 90.0, 1)], None)
        .await
        .unwrap();
    sql.query(
        anonymous(),
        "CREATE STREAM too_hot AS SELECT _key, _event_ts, value FROM plant1 \
         WHERE json_get_float(value, 'temp') > 30",
    )
    .await
    .unwrap();
    let batch: Vec<RecordInput> = (0..100)
        .map(|i| reading(i % 7, (i % 50) as f64, 1000 + i as i64))
        .collect();
    b.produce(&src, batch.clone(), None).await.unwrap();
    let want: Vec<&RecordInput> = batch
        .iter()
        .filter(|r| {
            let v: serde_json::Value = serde_json::from_slice(r.value.as_deref().unwrap()).unwrap();
            v["temp"].as_f64().unwrap() > 30.0
        })
        .collect();
    let out = stream("too_hot");
    wait_for("the hot readings", async || {
        read_all(&b, &out).await.len() >= want.len()
    })
    .await;
    let got = read_all(&b, &out).await;
    assert_eq!(got.len(), want.len());
    let mut got_values: Vec<(Option<Bytes>, Option<Bytes>, i64)> = got
        .iter()
        .map(|r| (r.key.clone(), r.value.clone(), r.event_ts))
        .collect();
    let mut want_values: Vec<(Option<Bytes>, Option<Bytes>, i64)> = want
        .iter()
        .map(|r| (r.key.clone(), r.value.clone(), r.event_ts.unwrap()))
        .collect();
    got_values.sort();
    want_values.sort();
    assert_eq!(got_values, want_values, "passed through unchanged");
    sql.stop_queries().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_that_cannot_run_say_why() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let sql = SqlEngine::new(b.clone());
    b.create_stream(&stream("a"), Some(1), Policy::default())
        .unwrap();
    b.create_stream(&stream("b"), Some(1), Policy::default())
        .unwrap();
    let fails = |q: &'static str| {
        let sql = sql.clone();
        async move { sql.query(anonymous(), q).await.expect_err(q) }
    };
    let e = fails("CREATE STREAM x AS SELECT row_number() OVER (ORDER BY _offset) FROM a").await;
    assert_eq!(e.kind, SqlErrorKind::NotSupported, "{e}");
    assert!(e.message.contains("OVER"), "{e}");
    let e = fails("CREATE STREAM x AS SELECT 1").await;
    assert_eq!(e.kind, SqlErrorKind::NotSupported, "{e}");
    let e = fails("CREATE STREAM x AS SELECT * FROM a ORDER BY _offset").await;
    assert_eq!(e.kind, SqlErrorKind::NotSupported, "{e}");
    let e = fails("CREATE STREAM x AS SELECT * FROM a JOIN b ON a._key = b._key").await;
    assert_eq!(e.kind, SqlErrorKind::NotSupported, "{e}");
    assert!(e.message.contains("time bound"), "{e}");
    let e = fails(
        "CREATE STREAM x AS SELECT * FROM a LEFT JOIN b ON a._key = b._key \
         AND b._event_ts BETWEEN a._event_ts AND a._event_ts + INTERVAL '1 second'",
    )
    .await;
    assert!(e.message.contains("INNER"), "{e}");
    let e = fails(
        "CREATE STREAM x WITH (late_rows = 'late') AS SELECT * FROM a JOIN b ON a._key = b._key \
         AND b._event_ts BETWEEN a._event_ts AND a._event_ts + INTERVAL '1 second'",
    )
    .await;
    assert!(e.message.contains("late_rows"), "{e}");
    let e = fails("CREATE STREAM x AS SELECT time_bucket_gapfill(INTERVAL '1 minute', _event_ts, now(), now()) AS m, count(*) FROM a GROUP BY m").await;
    assert_eq!(e.kind, SqlErrorKind::NotSupported, "{e}");
    assert!(e.message.contains("gap filling"), "{e}");
    let e = fails("CREATE STREAM b AS SELECT value FROM a").await;
    assert_eq!(e.kind, SqlErrorKind::DuplicateObject, "{e}");
    let e = fails("CREATE STREAM x WITH (colour = 'red') AS SELECT value FROM a").await;
    assert!(e.message.contains("unknown option colour"), "{e}");
    // A mistake in the SELECT is placed in the whole statement.
    let e = fails("CREATE STREAM x AS\nSELECT nope FROM a").await;
    assert_eq!(e.kind, SqlErrorKind::UndefinedColumn, "{e}");
    assert_eq!(e.line, Some(2), "{e:?}");
    let e = fails("DROP STREAM a").await;
    assert_eq!(e.kind, SqlErrorKind::WrongObjectType, "{e}");
    let e = fails("DROP STREAM nothing_here").await;
    assert_eq!(e.kind, SqlErrorKind::UndefinedObject, "{e}");
    sql.query(anonymous(), "DROP STREAM IF EXISTS nothing_here")
        .await
        .unwrap();
    // Nothing was created by the failures.
    assert!(!b.stream_exists(&stream("x")));
    // A query, dropped: its stream goes with it.
    sql.query(anonymous(), "CREATE STREAM copy AS SELECT value FROM a")
        .await
        .unwrap();
    assert!(b.stream_exists(&stream("copy")));
    sql.query(anonymous(), "DROP STREAM copy").await.unwrap();
    assert!(!b.stream_exists(&stream("copy")));
    let r = sql.query(anonymous(), "SHOW QUERIES").await.unwrap();
    assert_eq!(r.rows(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialized_views_keep_the_newest_row_per_group() {
    use datafusion::arrow::datatypes::{Float64Type, Int64Type};
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let sql = SqlEngine::new(b.clone());
    let src = stream("readings");
    b.create_stream(&src, Some(2), Policy::default()).unwrap();
    sql.query(
        anonymous(),
        "CREATE MATERIALIZED VIEW latest AS \
         SELECT json_get_str(value, 'device') AS device, \
                max(json_get_float(value, 'temp')) AS max_temp, count(*) AS n, \
                last_value(json_get_float(value, 'temp') ORDER BY _event_ts) AS last_temp \
         FROM readings GROUP BY 1",
    )
    .await
    .unwrap();
    sql.query(
        anonymous(),
        "CREATE MATERIALIZED VIEW per_second WITH (idle_timeout = 'none') AS \
         SELECT tumble(_event_ts, INTERVAL '1 second') AS second, json_get_str(value, 'device') AS device, \
                avg(json_get_float(value, 'temp')) AS avg_temp \
         FROM readings GROUP BY 1, 2",
    )
    .await
    .unwrap();
    // A changelog: each update of a group as a record keyed by it.
    sql.query(
        anonymous(),
        "CREATE STREAM counts AS SELECT json_get_str(value, 'device') AS device, count(*) AS n \
         FROM readings GROUP BY 1",
    )
    .await
    .unwrap();
    let mut want: BTreeMap<String, (f64, i64, f64)> = BTreeMap::new();
    for round in 0..5i64 {
        let batch: Vec<RecordInput> = (0..40i64)
            .map(|i| {
                let d = (i % 4) as u32;
                let t = ((i * 7 + round * 13) % 40) as f64;
                let ts = 10_000 + round * 40 + i;
                let e = want.entry(format!("dev-{d}")).or_insert((f64::MIN, 0, 0.0));
                e.0 = e.0.max(t);
                e.1 += 1;
                e.2 = t;
                reading(d, t, ts)
            })
            .collect();
        b.produce(&src, batch, None).await.unwrap();
    }
    let q = "SELECT device, max_temp, n, last_temp FROM latest ORDER BY device";
    wait_for("the view to catch up", async || {
        let r = sql.query(anonymous(), q).await.unwrap();
        r.rows() == 4
            && r.batches
                .iter()
                .flat_map(|b| b.column(2).as_primitive::<Int64Type>().values().to_vec())
                .sum::<i64>()
                == 200
    })
    .await;
    let r = sql.query(anonymous(), q).await.unwrap();
    let b0 = &r.batches[0];
    for (i, (device, (max, n, last))) in want.iter().enumerate() {
        assert_eq!(b0.column(0).as_string::<i32>().value(i), device);
        assert_eq!(b0.column(1).as_primitive::<Float64Type>().value(i), *max);
        assert_eq!(b0.column(2).as_primitive::<Int64Type>().value(i), *n);
        assert_eq!(b0.column(3).as_primitive::<Float64Type>().value(i), *last);
    }
    // The changelog's newest record per device holds its count.
    let newest = async || {
        let mut newest: BTreeMap<Bytes, serde_json::Value> = BTreeMap::new();
        for r in read_all(&b, &stream("counts")).await {
            newest.insert(r.key.clone().unwrap(), json(&r));
        }
        newest
    };
    wait_for("the changelog", async || {
        newest()
            .await
            .values()
            .map(|v| v["n"].as_i64().unwrap())
            .sum::<i64>()
            == 200
    })
    .await;
    let newest = newest().await;
    assert_eq!(newest.len(), 4);
    for (k, v) in &newest {
        assert_eq!(v["device"].as_str().unwrap().as_bytes(), &k[..]);
        assert_eq!(v["n"].as_i64(), Some(50), "{v}");
    }
    // A windowed view: typed rows per second and device, once the
    // watermark closes the seconds.
    b.produce(&src, vec![reading(0, 0.0, 60_000)], Some(0))
        .await
        .unwrap();
    b.produce(&src, vec![reading(1, 0.0, 60_000)], Some(1))
        .await
        .unwrap();
    let q = "SELECT count(*) FROM per_second WHERE second < TIMESTAMP '1970-01-01T00:01:00Z'";
    wait_for("the windowed view", async || {
        let r = sql.query(anonymous(), q).await.unwrap();
        r.batches[0].column(0).as_primitive::<Int64Type>().value(0) == 4
    })
    .await;
    sql.query(anonymous(), "DROP MATERIALIZED VIEW latest")
        .await
        .unwrap();
    let e = sql
        .query(anonymous(), "SELECT * FROM latest")
        .await
        .unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::UndefinedTable);
    sql.stop_queries().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_query_streams_new_rows_until_dropped() {
    use futures_util::StreamExt;
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let sql = SqlEngine::new(b.clone());
    let src = stream("plant1");
    b.create_stream(&src, Some(2), Policy::default()).unwrap();
    b.produce(&src, vec![reading(1, 99.0, 1)], None)
        .await
        .unwrap();
    let fjord_sql::Outcome::Push(mut rows) = sql
        .execute(
            anonymous(),
            "SELECT json_get_str(value, 'device') AS device FROM plant1 \
             WHERE json_get_float(value, 'temp') > 30 EMIT CHANGES",
        )
        .await
        .unwrap()
    else {
        panic!("not a push query")
    };
    for (d, t) in [(2, 31.0), (3, 5.0), (4, 45.0)] {
        b.produce(&src, vec![reading(d, t, 2)], None).await.unwrap();
        // One by one: each its own read.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let batch = tokio::time::timeout(Duration::from_secs(10), rows.next())
            .await
            .expect("rows as they come")
            .unwrap()
            .unwrap();
        let col = batch.column(0).as_string::<i32>();
        got.extend(col.iter().map(|v| v.unwrap().to_string()));
    }
    got.sort();
    assert_eq!(got, ["dev-2", "dev-4"]);
    drop(rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_windows_match_a_brute_force_computation_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let src = stream("usage");
    let base = 1_900_000_000_000i64;
    let gap = 2_000i64;
    // Five machines; bursts of use with pauses, some longer than the gap.
    let mut rng = Lcg(11);
    let mut events: Vec<(u32, i64, i64)> = Vec::new(); // machine, ts, watts
    for m in 0..5u32 {
        let mut ts = base + (rng.next() % 1000) as i64;
        for _ in 0..120 {
            events.push((m, ts, (rng.next() % 500) as i64));
            ts += if rng.next().is_multiple_of(10) {
                2_500 + (rng.next() % 3000) as i64
            } else {
                50 + (rng.next() % 900) as i64
            };
        }
    }
    // Arrival: up to 1.5 s out of order (the query allows 1.5 s).
    let mut arrival: Vec<(i64, usize)> = events
        .iter()
        .enumerate()
        .map(|(i, e)| (e.1 + (rng.next() % 1500) as i64, i))
        .collect();
    arrival.sort();
    let order: Vec<usize> = arrival.iter().map(|a| a.1).collect();
    let record = |i: usize| {
        let (m, ts, w) = events[i];
        RecordInput {
            key: Some(Bytes::from(format!("m-{m}"))),
            value: Some(Bytes::from(format!(r#"{{"watts":{w}}}"#))),
            headers: Vec::new(),
            event_ts: Some(ts),
        }
    };
    let produce = async |b: &Broker, idx: &[usize]| {
        for chunk in idx.chunks(29) {
            for p in 0..2u32 {
                let part: Vec<RecordInput> = chunk
                    .iter()
                    .filter(|&&i| events[i].0 % 2 == p)
                    .map(|&i| record(i))
                    .collect();
                b.produce(&src, part, Some(p)).await.unwrap();
            }
        }
    };
    let half = order.len() / 2;
    {
        let b = broker(dir.path()).await;
        let sql = SqlEngine::new(b.clone());
        b.create_stream(&src, Some(2), Policy::default()).unwrap();
        sql.query(
            anonymous(),
            "CREATE STREAM use_sessions WITH (start = 'earliest', out_of_orderness = '1500 ms', \
             idle_timeout = 'none') AS \
             SELECT session(_event_ts, INTERVAL '2 seconds') AS started, _key AS machine, \
                    count(*) AS n, sum(json_get_int(value, 'watts')) AS watts, \
                    max(_event_ts) AS last_use \
             FROM usage GROUP BY 1, 2",
        )
        .await
        .unwrap();
        produce(&b, &order[..half]).await;
        wait_for("the first half", async || {
            counter(&sql, "default.use_sessions", "rows_in").await == half as u64
        })
        .await;
        sql.stop_queries().await;
        b.shutdown().await;
    }
    let b = broker(dir.path()).await;
    let sql = SqlEngine::new(b.clone());
    sql.start_queries().await;
    produce(&b, &order[half..]).await;
    for p in 0..2u32 {
        b.produce(
            &src,
            vec![RecordInput {
                key: Some(Bytes::from(format!("flush-{p}"))),
                value: Some(Bytes::from(r#"{"watts":0}"#)),
                headers: Vec::new(),
                event_ts: Some(base + 3_600_000),
            }],
            Some(p),
        )
        .await
        .unwrap();
    }
    // Brute force: per machine, sorted, split where the pause reaches the gap.
    let mut expected: BTreeMap<(String, i64), (u64, i64, i64)> = BTreeMap::new();
    for m in 0..5u32 {
        let mut mine: Vec<&(u32, i64, i64)> = events.iter().filter(|e| e.0 == m).collect();
        mine.sort_by_key(|e| e.1);
        let mut start = mine[0].1;
        let mut acc = (0u64, 0i64, 0i64);
        let mut prev = mine[0].1;
        for e in mine {
            if e.1 - prev >= gap {
                expected.insert((format!("m-{m}"), start), acc);
                start = e.1;
                acc = (0, 0, 0);
            }
            acc.0 += 1;
            acc.1 += e.2;
            acc.2 = e.1;
            prev = e.1;
        }
        expected.insert((format!("m-{m}"), start), acc);
    }
    let out = stream("use_sessions");
    // Its read counter moves after what the rows closed is appended.
    wait_for("every row read", async || {
        counter(&sql, "default.use_sessions", "rows_in").await == events.len() as u64 + 2
    })
    .await;
    let results = read_all(&b, &out).await;
    assert_eq!(results.len(), expected.len(), "each session once");
    for r in &results {
        let v = json(r);
        let ts = |f: &str| {
            chrono::DateTime::parse_from_rfc3339(v[f].as_str().unwrap())
                .unwrap()
                .timestamp_millis()
        };
        let key = (v["machine"].as_str().unwrap().to_string(), ts("started"));
        let (n, watts, last) = expected
            .get(&key)
            .unwrap_or_else(|| panic!("unexpected session {v}"));
        assert_eq!(v["n"].as_u64(), Some(*n), "{v}");
        assert_eq!(v["watts"].as_i64(), Some(*watts), "{v}");
        assert_eq!(ts("last_use"), *last, "{v}");
        // The session ends a gap after its last use.
        assert_eq!(r.event_ts, last + gap - 1, "{v}");
    }
    assert_eq!(counter(&sql, "default.use_sessions", "late_rows").await, 0);
    sql.stop_queries().await;
}

fn device(name: &str, site: &str, limit: f64) -> RecordInput {
    RecordInput {
        key: Some(Bytes::from(name.to_string())),
        value: Some(Bytes::from(format!(
            r#"{{"site":"{site}","limit":{limit}}}"#
        ))),
        headers: Vec::new(),
        event_ts: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_join_tables_as_they_are_when_each_batch_is_processed() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let sql = SqlEngine::new(b.clone());
    let readings = stream("readings");
    b.create_stream(&readings, Some(2), Policy::default())
        .unwrap();
    // Device metadata: a compacted stream, the newest record per device.
    let devices = stream("devices");
    let table = Policy {
        compaction: Some(fjord_core::Compaction::LatestPerKey),
        ..Policy::default()
    };
    b.create_stream(&devices, Some(2), table).unwrap();
    let mut gone = device("dev-2", "west", 10.0);
    b.produce(
        &devices,
        vec![
            device("dev-0", "north", 50.0),
            device("dev-1", "south", 30.0),
            device("dev-1", "south", 40.0),
            gone.clone(),
        ],
        None,
    )
    .await
    .unwrap();
    gone.value = None;
    b.produce(&devices, vec![gone], None).await.unwrap();

    // An alert per reading over its device's limit, with the site.
    sql.query(
        anonymous(),
        "CREATE STREAM alerts AS \
         SELECT r._key AS _key, json_get_float(r.value, 'temp') AS temp, json_get_str(d.value, 'site') AS site \
         FROM readings r JOIN devices d ON r._key = d._key \
         WHERE json_get_float(r.value, 'temp') > json_get_float(d.value, 'limit')",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // Readings of known devices only (a semi-join).
    sql.query(
        anonymous(),
        "CREATE STREAM known AS SELECT r._key AS _key, json_get_float(r.value, 'temp') AS temp \
         FROM readings r WHERE r._key IN (SELECT _key FROM devices)",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // Readings per site, unknown devices counted under no site.
    sql.query(
        anonymous(),
        "CREATE MATERIALIZED VIEW per_site AS \
         SELECT json_get_str(d.value, 'site') AS site, count(*) AS n \
         FROM readings r LEFT JOIN devices d ON r._key = d._key GROUP BY 1",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    b.produce(
        &readings,
        vec![
            reading(0, 55.0, 1), // over north's 50
            reading(0, 45.0, 2),
            reading(1, 35.0, 3), // under the newest limit, 40
            reading(1, 45.0, 4), // over it
            reading(2, 99.0, 5), // a deleted device
            reading(3, 99.0, 6), // an unknown one
        ],
        None,
    )
    .await
    .unwrap();
    wait_for("the readings", async || {
        counter(&sql, "default.alerts", "rows_in").await == 6
            && counter(&sql, "default.per_site", "rows_in").await == 6
    })
    .await;
    // The table changes: later readings see it.
    b.produce(&devices, vec![device("dev-3", "east", 0.0)], None)
        .await
        .unwrap();
    b.produce(&readings, vec![reading(3, 1.0, 7)], None)
        .await
        .unwrap();
    wait_for("the alert of the new device", async || {
        read_all(&b, &stream("alerts")).await.len() >= 3
    })
    .await;
    let mut alerts: Vec<(String, f64, String)> = read_all(&b, &stream("alerts"))
        .await
        .iter()
        .map(|r| {
            let v = json(r);
            (
                String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap(),
                v["temp"].as_f64().unwrap(),
                v["site"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    alerts.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        alerts,
        vec![
            ("dev-0".to_string(), 55.0, "north".to_string()),
            ("dev-1".to_string(), 45.0, "south".to_string()),
            ("dev-3".to_string(), 1.0, "east".to_string()),
        ]
    );
    // A device's limit raised, then a reading between the old limit and
    // the new one: no alert (the table read on from where it was).
    b.produce(&devices, vec![device("dev-0", "north", 100.0)], None)
        .await
        .unwrap();
    b.produce(&readings, vec![reading(0, 60.0, 8)], None)
        .await
        .unwrap();
    wait_for("the reading under the new limit", async || {
        counter(&sql, "default.alerts", "rows_in").await == 8
    })
    .await;
    assert_eq!(read_all(&b, &stream("alerts")).await.len(), 3);
    let per_site = async || -> Vec<(String, i64)> {
        let r = sql
            .query(
                anonymous(),
                "SELECT coalesce(site, '-') AS site, n FROM per_site ORDER BY site",
            )
            .await
            .unwrap();
        r.batches
            .iter()
            .flat_map(|b| {
                let s = b.column(0).as_string::<i32>().clone();
                let n = b
                    .column(1)
                    .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
                    .clone();
                (0..b.num_rows())
                    .map(|i| (s.value(i).to_string(), n.value(i)))
                    .collect::<Vec<_>>()
            })
            .collect()
    };
    wait_for("the known devices' readings", async || {
        read_all(&b, &stream("known")).await.len() >= 6
    })
    .await;
    let mut known: Vec<(String, f64)> = read_all(&b, &stream("known"))
        .await
        .iter()
        .map(|r| {
            (
                String::from_utf8(r.key.clone().unwrap().to_vec()).unwrap(),
                json(r)["temp"].as_f64().unwrap(),
            )
        })
        .collect();
    known.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let want: Vec<(String, f64)> = [
        ("dev-0", 45.0),
        ("dev-0", 55.0),
        ("dev-0", 60.0),
        ("dev-1", 35.0),
        ("dev-1", 45.0),
        ("dev-3", 1.0),
    ]
    .iter()
    .map(|(k, t)| (k.to_string(), *t))
    .collect();
    assert_eq!(known, want);
    wait_for("the per-site counts", async || {
        per_site().await.iter().map(|r| r.1).sum::<i64>() == 8
    })
    .await;
    let got = per_site().await;
    // dev-2 (deleted) and dev-3's first reading (unknown then) have no
    // site; dev-3's second reading is east.
    assert_eq!(
        got,
        vec![
            ("-".to_string(), 2),
            ("east".to_string(), 1),
            ("north".to_string(), 3),
            ("south".to_string(), 2),
        ]
    );

    // A materialized view is a table too.
    let checks = stream("checks");
    b.create_stream(&checks, Some(1), Policy::default())
        .unwrap();
    sql.query(
        anonymous(),
        "CREATE STREAM answers AS SELECT v.site AS site, v.n AS n \
         FROM checks c JOIN per_site v ON json_get_str(c.value, 'site') = v.site",
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    b.produce(
        &checks,
        vec![RecordInput {
            key: None,
            value: Some(Bytes::from_static(br#"{"site":"north"}"#)),
            headers: Vec::new(),
            event_ts: None,
        }],
        None,
    )
    .await
    .unwrap();
    wait_for("the answer", async || {
        !read_all(&b, &stream("answers")).await.is_empty()
    })
    .await;
    let answers = read_all(&b, &stream("answers")).await;
    assert_eq!(answers.len(), 1);
    assert_eq!(
        json(&answers[0]),
        serde_json::json!({"site": "north", "n": 3})
    );

    // Joins that would repeat table rows, or join two streams, are refused.
    for q in [
        "CREATE STREAM x AS SELECT d._key FROM readings r RIGHT JOIN devices d ON r._key = d._key",
        "CREATE STREAM x AS SELECT r._key FROM readings r JOIN checks c ON r._key = c._key",
        "CREATE STREAM x AS SELECT r._key FROM devices r JOIN devices c ON r._key = c._key",
    ] {
        let e = sql.query(anonymous(), q).await.unwrap_err();
        assert_eq!(e.kind, SqlErrorKind::NotSupported, "{q}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuous_query_windows_typed_columns_of_a_schema() {
    let dir = tempfile::tempdir().unwrap();
    let b = broker(dir.path()).await;
    let sql = SqlEngine::new(b.clone());
    let src = stream("typed");
    let schema: fjord_core::StreamSchema = serde_json::from_value(serde_json::json!({
        "format": "json-schema",
        "definition": {
            "type": "object",
            "properties": {
                "device": {"type": "string"},
                "temp": {"type": "number"},
                "at": {"type": "string", "format": "date-time"}
            },
            "required": ["device", "temp", "at"]
        }
    }))
    .unwrap();
    let policy = Policy {
        schema: Some(schema),
        ..Policy::default()
    };
    b.create_stream(&src, Some(2), policy).unwrap();
    // Windows follow the reading's own time (`at`), not the record's.
    sql.query(
        anonymous(),
        "CREATE STREAM typed_avg WITH (start = 'earliest', idle_timeout = 'none') AS \
         SELECT tumble(at, INTERVAL '1 second') AS window_start, device, \
                count(*) AS n, avg(temp) AS avg_temp \
         FROM typed GROUP BY tumble(at, INTERVAL '1 second'), device",
    )
    .await
    .unwrap();
    let base = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z").unwrap();
    let mut records = Vec::new();
    // Two devices, 10 readings a second each for 3 s, then one reading
    // 5 s later that closes the windows.
    for i in 0..60i64 {
        let device = format!("d{}", i % 2);
        let at = base + chrono::Duration::milliseconds(i / 2 * 100);
        records.push(RecordInput {
            key: Some(Bytes::from(device.clone())),
            value: Some(Bytes::from(
                serde_json::json!({"device": device, "temp": i as f64, "at": at.to_rfc3339()})
                    .to_string(),
            )),
            headers: Vec::new(),
            event_ts: None,
        });
    }
    let closer = base + chrono::Duration::seconds(8);
    records.push(RecordInput {
        key: Some(Bytes::from("d0")),
        value: Some(Bytes::from(
            serde_json::json!({"device": "d0", "temp": 0.0, "at": closer.to_rfc3339()}).to_string(),
        )),
        headers: Vec::new(),
        event_ts: None,
    });
    b.produce(&src, records, Some(0)).await.unwrap();
    let out = stream("typed_avg");
    wait_for("three windows per device", async || {
        read_all(&b, &out).await.len() >= 6
    })
    .await;
    let mut got: Vec<(String, i64, u64, f64)> = read_all(&b, &out)
        .await
        .iter()
        .map(|r| {
            let v = json(r);
            (
                v["device"].as_str().unwrap().to_string(),
                chrono::DateTime::parse_from_rfc3339(v["window_start"].as_str().unwrap())
                    .unwrap()
                    .timestamp_millis(),
                v["n"].as_u64().unwrap(),
                v["avg_temp"].as_f64().unwrap(),
            )
        })
        .collect();
    got.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));
    // Brute force: reading i is in second i / 20, of device i % 2.
    let mut want = Vec::new();
    for d in 0..2i64 {
        for sec in 0..3i64 {
            let temps: Vec<f64> = (0..60i64)
                .filter(|i| i % 2 == d && i / 20 == sec)
                .map(|i| i as f64)
                .collect();
            let start = base.timestamp_millis() + sec * 1000;
            want.push((
                format!("d{d}"),
                start,
                temps.len() as u64,
                temps.iter().sum::<f64>() / temps.len() as f64,
            ));
        }
    }
    assert_eq!(got, want);
    sql.stop_queries().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streams_join_on_a_time_interval_exactly_once_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let doors = stream("doors");
    let temps = stream("temps");
    let base = 1_800_000_000_000i64;
    let mut rng = Lcg(11);
    // Four devices over 20 s: a door opens now and then, a reading every
    // 250 ms; each stream arrives up to 900 ms out of order.
    let mut door_events = Vec::new();
    let mut readings = Vec::new();
    for d in 0..4u32 {
        let mut t = base + (rng.next() % 1500) as i64;
        while t < base + 20_000 {
            door_events.push((d, 0.0, t));
            t += 700 + (rng.next() % 2500) as i64;
        }
        for i in 0..80i64 {
            readings.push((d, (rng.next() % 400) as f64 / 10.0, base + i * 250));
        }
    }
    let mut arrive = |events: &mut Vec<(u32, f64, i64)>| {
        let mut keyed: Vec<(i64, (u32, f64, i64))> = events
            .iter()
            .map(|e| (e.2 + (rng.next() % 900) as i64, *e))
            .collect();
        keyed.sort_by_key(|k| k.0);
        *events = keyed.into_iter().map(|k| k.1).collect();
    };
    arrive(&mut door_events);
    arrive(&mut readings);
    // Brute force: every pair of one device with the reading 0..=2 s after
    // the door opened.
    let mut want: Vec<(String, i64, i64, f64)> = Vec::new();
    for &(d, _, opened) in &door_events {
        for &(rd, temp, at) in &readings {
            if rd == d && at >= opened && at <= opened + 2000 {
                want.push((format!("dev-{d}"), opened, at, temp));
            }
        }
    }
    want.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert!(want.len() > 100, "{}", want.len());
    let mut per_window: BTreeMap<(i64, String), u64> = BTreeMap::new();
    for (d, opened, ..) in &want {
        *per_window
            .entry(((opened - base) / 5000 * 5000, d.clone()))
            .or_default() += 1;
    }

    let pairs =
        "CREATE STREAM after_open WITH (start = 'earliest', out_of_orderness = '1 second', \
                 idle_timeout = 'none') AS \
        SELECT d._key AS device, d._event_ts AS opened, t._event_ts AS read_at, \
               json_get_float(t.value, 'temp') AS temp \
        FROM doors d JOIN temps t ON d._key = t._key \
         AND t._event_ts BETWEEN d._event_ts AND d._event_ts + INTERVAL '2 seconds'";
    let counts = "CREATE STREAM readings_after_open WITH (start = 'earliest', \
                  out_of_orderness = '1 second', idle_timeout = 'none') AS \
        SELECT tumble(d._event_ts, INTERVAL '5 seconds') AS window_start, d._key AS device, \
               count(*) AS n \
        FROM doors d JOIN temps t ON d._key = t._key \
         AND t._event_ts BETWEEN d._event_ts AND d._event_ts + INTERVAL '2 seconds' \
        GROUP BY 1, 2";
    let half_doors = door_events.len() / 2;
    let half_readings = readings.len() / 2;
    let to_inputs = |es: &[(u32, f64, i64)]| -> Vec<RecordInput> {
        es.iter().map(|&(d, t, ts)| reading(d, t, ts)).collect()
    };
    {
        let b = broker(dir.path()).await;
        let sql = SqlEngine::new(b.clone());
        b.create_stream(&doors, Some(2), Policy::default()).unwrap();
        b.create_stream(&temps, Some(2), Policy::default()).unwrap();
        sql.query(anonymous(), pairs).await.unwrap();
        sql.query(anonymous(), counts).await.unwrap();
        for chunk in door_events[..half_doors].chunks(7) {
            b.produce(&doors, to_inputs(chunk), None).await.unwrap();
        }
        for chunk in readings[..half_readings].chunks(50) {
            b.produce(&temps, to_inputs(chunk), None).await.unwrap();
        }
        let n = (half_doors + half_readings) as u64;
        wait_for("the first half", async || {
            counter(&sql, "default.after_open", "rows_in").await == n
                && counter(&sql, "default.readings_after_open", "rows_in").await == n
        })
        .await;
        // Stopped with rows of both sides still waiting for partners.
        sql.stop_queries().await;
        b.shutdown().await;
    }
    let b = broker(dir.path()).await;
    let sql = SqlEngine::new(b.clone());
    sql.start_queries().await;
    for chunk in door_events[half_doors..].chunks(7) {
        b.produce(&doors, to_inputs(chunk), None).await.unwrap();
    }
    for chunk in readings[half_readings..].chunks(50) {
        b.produce(&temps, to_inputs(chunk), None).await.unwrap();
    }
    // Far later rows in every partition move the watermark past all
    // windows (device 9 is left out of the comparison).
    for p in 0..2 {
        b.produce(&doors, vec![reading(9, 0.0, base + 60_000)], Some(p))
            .await
            .unwrap();
        b.produce(&temps, vec![reading(9, 0.0, base + 60_000)], Some(p))
            .await
            .unwrap();
    }
    let pairs_out = stream("after_open");
    wait_for("every pair", async || {
        read_all(&b, &pairs_out).await.len() >= want.len() + 4
    })
    .await;
    let ms = |v: &serde_json::Value| {
        chrono::DateTime::parse_from_rfc3339(v.as_str().unwrap())
            .unwrap()
            .timestamp_millis()
    };
    let mut got: Vec<(String, i64, i64, f64)> = read_all(&b, &pairs_out)
        .await
        .iter()
        .map(json)
        .filter(|v| v["device"] != "dev-9")
        .map(|v| {
            (
                v["device"].as_str().unwrap().to_string(),
                ms(&v["opened"]),
                ms(&v["read_at"]),
                v["temp"].as_f64().unwrap(),
            )
        })
        .collect();
    got.sort_by(|a, b| a.partial_cmp(b).unwrap());
    assert_eq!(got.len(), want.len(), "no pair lost, none twice");
    assert_eq!(got, want);

    let counts_out = stream("readings_after_open");
    wait_for("every window", async || {
        read_all(&b, &counts_out)
            .await
            .iter()
            .filter(|r| json(r)["device"] != "dev-9")
            .count()
            >= per_window.len()
    })
    .await;
    let got: BTreeMap<(i64, String), u64> = read_all(&b, &counts_out)
        .await
        .iter()
        .map(json)
        .filter(|v| v["device"] != "dev-9")
        .map(|v| {
            (
                (
                    ms(&v["window_start"]) - base,
                    v["device"].as_str().unwrap().to_string(),
                ),
                v["n"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, per_window);
    assert_eq!(
        counter(&sql, "default.readings_after_open", "late_rows").await,
        0
    );
    sql.stop_queries().await;
}

/// The approximate and order-sensitive aggregates keep their state in the
/// checkpoint: windows open across a restart come out as one pass over the
/// same readings computes them (DataFusion ad hoc), and the exact ones as
/// the test computes them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sketch_and_ordered_aggregates_survive_a_restart() {
    use datafusion::arrow::datatypes::Float64Type;
    let dir = tempfile::tempdir().unwrap();
    let src = stream("meter");
    let base = 1_900_000_000_000i64;
    // Second s has devices 0..s+3, each reporting at 10 ms steps; temps
    // spread so percentiles are not trivial.
    let mut events: Vec<(u32, f64, i64)> = Vec::new();
    for s in 0..4i64 {
        for step in 0..20i64 {
            let d = (step % (s + 3)) as u32;
            let temp = ((s * 37 + step * 13) % 50) as f64 + 0.5;
            events.push((d, temp, base + s * 1000 + step * 40));
        }
    }
    let select = "SELECT tumble(_event_ts, INTERVAL '1 second') AS window_start, \
                  approx_distinct(_key) AS devices, \
                  count(DISTINCT _key) AS devices_exact, \
                  approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY json_get_float(value, 'temp')) AS p50, \
                  first_value(json_get_float(value, 'temp') ORDER BY _event_ts) AS first_temp, \
                  last_value(json_get_float(value, 'temp') ORDER BY _event_ts) AS last_temp, \
                  sum(json_get_float(value, 'temp')) AS total \
                  FROM meter";
    let create = format!(
        "CREATE STREAM meter_stats WITH (start = 'earliest', idle_timeout = 'none') AS {select} GROUP BY 1"
    );
    let input = |e: &[(u32, f64, i64)]| -> Vec<RecordInput> {
        e.iter().map(|&(d, t, ts)| reading(d, t, ts)).collect()
    };
    let half = 50; // mid-way through second 2
    {
        let b = broker(dir.path()).await;
        let sql = SqlEngine::new(b.clone());
        b.create_stream(&src, Some(1), Policy::default()).unwrap();
        sql.query(anonymous(), &create).await.unwrap();
        b.produce(&src, input(&events[..half]), None).await.unwrap();
        wait_for("the first half", async || {
            counter(&sql, "default.meter_stats", "rows_in").await == half as u64
        })
        .await;
        sql.stop_queries().await;
        b.shutdown().await;
    }
    let b = broker(dir.path()).await;
    let sql = SqlEngine::new(b.clone());
    sql.start_queries().await;
    b.produce(&src, input(&events[half..]), None).await.unwrap();
    // A reading far later closes every window.
    b.produce(&src, vec![reading(0, 0.0, base + 60_000)], None)
        .await
        .unwrap();
    wait_for("every row read", async || {
        counter(&sql, "default.meter_stats", "rows_in").await == events.len() as u64 + 1
    })
    .await;
    let got: Vec<serde_json::Value> = read_all(&b, &stream("meter_stats"))
        .await
        .iter()
        .map(json)
        .collect();
    assert_eq!(got.len(), 4, "{got:?}");

    // One pass over the same readings, ad hoc.
    let adhoc = sql
        .query(
            anonymous(),
            &format!(
                "{select} WHERE _event_ts < to_timestamp_millis({}) GROUP BY 1 ORDER BY 1",
                base + 4000
            ),
        )
        .await
        .unwrap();
    let mut one_pass = Vec::new();
    for batch in &adhoc.batches {
        let devices = batch.column(1).as_primitive::<UInt64Type>();
        let p50 = batch.column(3).as_primitive::<Float64Type>();
        for i in 0..batch.num_rows() {
            one_pass.push((devices.value(i), p50.value(i)));
        }
    }
    assert_eq!(one_pass.len(), 4);

    for (s, row) in got.iter().enumerate() {
        let window: Vec<&(u32, f64, i64)> = events
            .iter()
            .filter(|e| (e.2 - base) / 1000 == s as i64)
            .collect();
        let distinct = window
            .iter()
            .map(|e| e.0)
            .collect::<std::collections::BTreeSet<_>>()
            .len() as u64;
        let total: f64 = window.iter().map(|e| e.1).sum();
        assert_eq!(row["devices_exact"].as_u64(), Some(distinct), "{row}");
        assert_eq!(row["devices"].as_u64(), Some(one_pass[s].0), "{row}");
        assert!(one_pass[s].0.abs_diff(distinct) <= 1, "{row}");
        assert_eq!(row["p50"].as_f64(), Some(one_pass[s].1), "{row}");
        assert_eq!(row["first_temp"].as_f64(), Some(window[0].1), "{row}");
        assert_eq!(
            row["last_temp"].as_f64(),
            Some(window[window.len() - 1].1),
            "{row}"
        );
        assert!(
            (row["total"].as_f64().unwrap() - total).abs() < 1e-9,
            "{row}"
        );
    }
    sql.stop_queries().await;
}
