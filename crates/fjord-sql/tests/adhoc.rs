//! Ad-hoc SQL over stored streams, on an embedded broker: columns, JSON
//! payloads, pushdown of time/offset/partition bounds (checked in the
//! scan's own row count from EXPLAIN ANALYZE), tenant isolation, errors.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use common::anonymous;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::{Float64Type, Int64Type};
use fjord_auth::{Method, Principal};
use fjord_broker::{Broker, BrokerConfig};
use fjord_core::{Header, Policy, RecordInput, StreamRef, TenantName};
use fjord_sql::{SqlEngine, SqlErrorKind};

async fn broker(dir: &std::path::Path) -> Arc<Broker> {
    let mut config = BrokerConfig::new(dir);
    // Production-like: anonymous clients of `public` do not administer the
    // node (node administrators see every tenant).
    config.auth.anonymous_admin = false;
    Broker::open(config).await.unwrap()
}

fn reading(device: usize, temp: f64, event_ts: i64) -> RecordInput {
    RecordInput {
        key: Some(Bytes::from(format!("dev-{device}"))),
        value: Some(Bytes::from(format!(
            r#"{{"device":"dev-{device}","temp":{temp}}}"#
        ))),
        headers: vec![Header {
            key: "mqtt.topic".into(),
            value: Some(Bytes::from(format!("plant1/dev-{device}/temp"))),
        }],
        event_ts: Some(event_ts),
    }
}

async fn scalar_i64(sql: &SqlEngine, q: &str) -> i64 {
    let r = sql
        .query(anonymous(), q)
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"));
    r.batches[0].column(0).as_primitive::<Int64Type>().value(0)
}

/// The rows the scan produced, from EXPLAIN ANALYZE.
async fn scanned(sql: &SqlEngine, q: &str) -> usize {
    let r = sql
        .query(anonymous(), &format!("EXPLAIN ANALYZE {q}"))
        .await
        .unwrap();
    let plan: String = r.batches[0]
        .column(1)
        .as_string::<i32>()
        .iter()
        .flatten()
        .collect();
    let mut total = 0;
    for line in plan.lines().filter(|l| l.contains("StreamScanExec")) {
        let rows = line
            .split("output_rows=")
            .nth(1)
            .map(|r| {
                r.chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<String>()
            })
            .and_then(|r| r.parse::<usize>().ok())
            .unwrap_or(0);
        total += rows;
    }
    assert!(plan.contains("StreamScanExec"), "{plan}");
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adhoc_queries_read_streams_as_tables() {
    let tmp = tempfile::tempdir().unwrap();
    let b = broker(tmp.path()).await;
    let s = StreamRef::new("public", "default", "plant1").unwrap();
    b.create_stream(&s, Some(2), Policy::default()).unwrap();
    // 200 readings, 100 per partition, in two appends a few ms apart.
    let mut expected_sum = 0.0;
    for half in 0..2 {
        for p in 0..2u32 {
            let records: Vec<RecordInput> = (0..50)
                .map(|i| {
                    let n = half * 100 + p as usize * 50 + i;
                    let temp = (n % 17) as f64 + 0.5;
                    expected_sum += temp;
                    reading(n % 10, temp, 1_000_000 + n as i64)
                })
                .collect();
            b.produce(&s, records, Some(p)).await.unwrap();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let sql = SqlEngine::new(b.clone());
    assert_eq!(scalar_i64(&sql, "SELECT count(*) FROM plant1").await, 200);
    // Fully qualified: tenant (catalog), namespace (schema), stream.
    assert_eq!(
        scalar_i64(&sql, r#"SELECT count(*) FROM public."default".plant1"#).await,
        200
    );
    // JSON payloads through datafusion-functions-json.
    let r = sql
        .query(
            anonymous(),
            "SELECT sum(json_get_float(value, 'temp')) FROM plant1",
        )
        .await
        .unwrap();
    let sum = r.batches[0]
        .column(0)
        .as_primitive::<Float64Type>()
        .value(0);
    assert!((sum - expected_sum).abs() < 1e-6, "{sum} vs {expected_sum}");
    // System columns.
    let r = sql
        .query(
            anonymous(),
            "SELECT _partition, _offset, _key, _topic, _event_ts, _headers \
             FROM plant1 WHERE _partition = 1 ORDER BY _offset LIMIT 1",
        )
        .await
        .unwrap();
    let row = &r.batches[0];
    assert_eq!(row.num_rows(), 1);
    assert_eq!(
        row.column(0)
            .as_primitive::<datafusion::arrow::datatypes::Int32Type>()
            .value(0),
        1
    );
    assert_eq!(row.column(1).as_primitive::<Int64Type>().value(0), 0);
    assert_eq!(row.column(2).as_string::<i32>().value(0), "dev-0");
    assert_eq!(
        row.column(3).as_string::<i32>().value(0),
        "plant1/dev-0/temp"
    );
    assert_eq!(
        row.column(4)
            .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>()
            .value(0),
        1_000_050
    );
    assert!(row
        .column(5)
        .as_string::<i32>()
        .value(0)
        .contains("mqtt.topic"));

    // Pushdown: the scan reads only what the bounds allow.
    assert_eq!(scanned(&sql, "SELECT count(*) FROM plant1").await, 200);
    assert_eq!(
        scanned(&sql, "SELECT count(*) FROM plant1 WHERE _partition = 0").await,
        100
    );
    assert_eq!(
        scanned(
            &sql,
            "SELECT count(*) FROM plant1 WHERE _partition = 0 AND _offset >= 90"
        )
        .await,
        10
    );
    assert_eq!(
        scanned(
            &sql,
            "SELECT count(*) FROM plant1 WHERE _offset BETWEEN 10 AND 19"
        )
        .await,
        20
    );
    // Time: the second half was appended after the first (publish times
    // grow along a partition); its first publish time splits the stream.
    let r = sql
        .query(
            anonymous(),
            "SELECT min(_publish_ts) AS t FROM plant1 WHERE _offset >= 50",
        )
        .await
        .unwrap();
    let t = r.batches[0]
        .column(0)
        .as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>()
        .value(0);
    let since =
        format!("SELECT count(*) FROM plant1 WHERE _publish_ts >= to_timestamp_millis({t})");
    assert_eq!(scalar_i64(&sql, &since).await, 100);
    assert_eq!(scanned(&sql, &since).await, 100);
    let before =
        format!("SELECT count(*) FROM plant1 WHERE _publish_ts < to_timestamp_millis({t})");
    assert_eq!(scalar_i64(&sql, &before).await, 100);
    // Nothing can match: nothing is read.
    assert_eq!(
        scanned(&sql, "SELECT count(*) FROM plant1 WHERE _partition = 7").await,
        0
    );
    // Event-time filters are applied, not pushed (event times are the
    // producer's, in any order).
    assert_eq!(
        scalar_i64(
            &sql,
            "SELECT count(*) FROM plant1 WHERE _event_ts >= to_timestamp_millis(1000150)"
        )
        .await,
        50
    );
    // EXPLAIN works.
    let r = sql
        .query(anonymous(), "EXPLAIN SELECT * FROM plant1")
        .await
        .unwrap();
    assert!(r.rows() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_streams_and_errors_say_where() {
    let tmp = tempfile::tempdir().unwrap();
    let b = broker(tmp.path()).await;
    b.create_tenant(&TenantName::new("acme").unwrap()).unwrap();
    let secret = StreamRef::new("acme", "default", "secret").unwrap();
    b.create_stream(&secret, Some(1), Policy::default())
        .unwrap();
    b.produce(&secret, vec![reading(1, 1.0, 1)], None)
        .await
        .unwrap();
    let mine = StreamRef::new("public", "default", "mine").unwrap();
    b.create_stream(&mine, Some(1), Policy::default()).unwrap();
    let sql = SqlEngine::new(b.clone());
    // From public, acme's stream is not there, qualified or not.
    for q in [
        "SELECT * FROM secret",
        r#"SELECT * FROM acme."default".secret"#,
    ] {
        let e = sql.query(anonymous(), q).await.unwrap_err();
        assert_eq!(e.kind, SqlErrorKind::UndefinedTable, "{q}: {e:?}");
    }
    let r = sql
        .query(anonymous(), "SELECT table_catalog, table_name FROM information_schema.tables WHERE table_schema = 'default'")
        .await
        .unwrap();
    let names: Vec<String> = r
        .batches
        .iter()
        .flat_map(|b| {
            (0..b.num_rows())
                .map(|i| {
                    format!(
                        "{}.{}",
                        b.column(0).as_string::<i32>().value(i),
                        b.column(1).as_string::<i32>().value(i)
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(names, ["public.mine"]);
    // acme's own user reads it.
    let acme = Arc::new(Principal {
        tenant: TenantName::new("acme").unwrap(),
        user: "dash".into(),
        roles: vec![],
        method: Method::Password,
    });
    let r = sql
        .query(acme, "SELECT count(*) FROM secret")
        .await
        .unwrap();
    assert_eq!(
        r.batches[0].column(0).as_primitive::<Int64Type>().value(0),
        1
    );
    // Errors: kind and place.
    let e = sql
        .query(anonymous(), "SELECT * FRM mine")
        .await
        .unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::Syntax, "{e:?}");
    assert!(e.line.is_some() && e.column.is_some(), "{e:?}");
    let e = sql
        .query(anonymous(), "SELECT nope FROM mine")
        .await
        .unwrap_err();
    assert_eq!(e.kind, SqlErrorKind::UndefinedColumn, "{e:?}");
    // DataFusion's own DDL and file access are refused.
    for q in [
        "CREATE EXTERNAL TABLE x STORED AS CSV LOCATION '/etc/passwd'",
        "COPY (SELECT 1) TO '/tmp/out.csv'",
    ] {
        assert!(sql.query(anonymous(), q).await.is_err(), "{q}");
    }
}
