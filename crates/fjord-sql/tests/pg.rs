//! The PostgreSQL wire protocol with a client nobody here wrote
//! (`tokio-postgres`): simple and extended queries, typed parameters,
//! logins (anonymous in `public`, a tenant's user with its password, wrong
//! passwords and unknown databases refused), errors with SQLSTATEs.

use std::sync::Arc;

use bytes::Bytes;
use fjord_broker::{Broker, BrokerConfig};
use fjord_core::{Policy, RecordInput, StreamRef, TenantName};
use fjord_sql::SqlEngine;
use tokio_postgres::{NoTls, SimpleQueryMessage};

struct Server {
    port: u16,
    _stop: tokio::sync::watch::Sender<bool>,
    broker: Arc<Broker>,
}

async fn server(dir: &std::path::Path) -> Server {
    let mut config = BrokerConfig::new(dir);
    config.auth.anonymous_admin = false;
    let broker = Broker::open(config).await.unwrap();
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let (stop, shutdown) = tokio::sync::watch::channel(false);
    let engine = SqlEngine::new(broker.clone());
    tokio::spawn(fjord_sql::pg::serve(
        tcp,
        engine,
        broker.clone(),
        None,
        shutdown,
    ));
    Server {
        port,
        _stop: stop,
        broker,
    }
}

async fn connect(port: u16, params: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, conn) =
        tokio_postgres::connect(&format!("host=127.0.0.1 port={port} {params}"), NoTls).await?;
    tokio::spawn(conn);
    Ok(client)
}

async fn readings(b: &Broker, tenant: &str, n: usize) {
    let s = StreamRef::new(tenant, "default", "plant1").unwrap();
    b.create_stream(&s, Some(1), Policy::default()).unwrap();
    let records = (0..n)
        .map(|i| RecordInput {
            key: Some(Bytes::from(format!("dev-{}", i % 4))),
            value: Some(Bytes::from(format!(r#"{{"temp":{}}}"#, i as f64 / 2.0))),
            headers: vec![],
            event_ts: Some(1_700_000_000_000 + i as i64 * 1000),
        })
        .collect();
    b.produce(&s, records, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simple_and_extended_queries_with_parameters() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path()).await;
    readings(&srv.broker, "public", 40).await;
    // Anonymous in `public`: any user name that is no user there.
    let c = connect(srv.port, "user=grafana dbname=public")
        .await
        .unwrap();
    // Simple protocol, several statements, and what drivers send unasked.
    let msgs = c
        .simple_query("SET application_name = 'test'; SELECT count(*) AS n FROM plant1; SHOW transaction_isolation")
        .await
        .unwrap();
    let values: Vec<String> = msgs
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
            _ => None,
        })
        .collect();
    assert_eq!(values, ["40", "read committed"]);
    // Extended protocol with typed parameters.
    let rows = c
        .query(
            "SELECT _key, count(*) AS n, avg(json_get_float(value, 'temp')) AS t \
             FROM plant1 WHERE _offset >= $1 AND _key <> $2 GROUP BY _key ORDER BY _key",
            &[&10i64, &"dev-3"],
        )
        .await
        .unwrap();
    let got: Vec<(String, i64)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    // Offsets 10–39, key = offset % 4, dev-3 left out.
    let expect: Vec<(String, i64)> = (0..3)
        .map(|k| {
            (
                format!("dev-{k}"),
                (10..40).filter(|i| i % 4 == k).count() as i64,
            )
        })
        .collect();
    assert_eq!(got, expect);
    let avg: f64 = rows[0].get(2);
    // dev-0 from offset 10: offsets 12, 16, …, 36, temperature offset / 2.
    let expect: Vec<f64> = (10..40)
        .filter(|i| i % 4 == 0)
        .map(|i| i as f64 / 2.0)
        .collect();
    assert!((avg - expect.iter().sum::<f64>() / expect.len() as f64).abs() < 1e-9);
    // Timestamps come back as timestamps.
    let row = c
        .query_one("SELECT _event_ts FROM plant1 WHERE _offset = $1", &[&0i64])
        .await
        .unwrap();
    let ts: chrono::DateTime<chrono::Utc> = row.get(0);
    assert_eq!(ts.timestamp_millis(), 1_700_000_000_000);
    // A prepared statement reused with other values.
    let st = c
        .prepare("SELECT count(*) FROM plant1 WHERE _offset < $1")
        .await
        .unwrap();
    for (bound, n) in [(5i64, 5i64), (20, 20), (100, 40)] {
        let r = c.query_one(&st, &[&bound]).await.unwrap();
        assert_eq!(r.get::<_, i64>(0), n);
    }
    // Errors carry SQLSTATEs (and the connection stays usable).
    let e = c.simple_query("SELECT * FROM nowhere").await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42P01"), "{e:?}");
    let e = c.simple_query("SELEC 1").await.unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42601"), "{e:?}");
    assert_eq!(
        c.query_one("SELECT 1::BIGINT", &[])
            .await
            .unwrap()
            .get::<_, i64>(0),
        1
    );
}

/// The server's first authentication request to a client starting up as
/// `user` on `database`: its code and the rest of its body.
async fn auth_request(port: u16, user: &str, database: &str) -> (i32, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut sock = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let mut body = 196_608i32.to_be_bytes().to_vec(); // protocol 3.0
    for (k, v) in [("user", user), ("database", database)] {
        body.extend_from_slice(k.as_bytes());
        body.push(0);
        body.extend_from_slice(v.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = ((body.len() + 4) as i32).to_be_bytes().to_vec();
    msg.extend_from_slice(&body);
    sock.write_all(&msg).await.unwrap();
    let mut head = [0u8; 5];
    sock.read_exact(&mut head).await.unwrap();
    assert_eq!(head[0], b'R', "an authentication request");
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut rest = vec![0u8; len - 4];
    sock.read_exact(&mut rest).await.unwrap();
    let code = i32::from_be_bytes([rest[0], rest[1], rest[2], rest[3]]);
    (code, rest[4..].to_vec())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_follow_the_identity_model() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path()).await;
    let acme = TenantName::new("acme").unwrap();
    srv.broker.create_tenant(&acme).unwrap();
    srv.broker
        .set_user(&acme, "dash", "dash-password", None, None)
        .unwrap();
    readings(&srv.broker, "acme", 3).await;
    // acme admits no anonymous clients: a user and its password.
    let c = connect(srv.port, "user=dash password=dash-password dbname=acme")
        .await
        .unwrap();
    let n: i64 = c
        .query_one("SELECT count(*) FROM plant1", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 3);
    // That login was SCRAM-SHA-256, as the server asks a user — and an
    // unknown name, so a refusal tells nothing of who exists.
    for user in ["dash", "nobody"] {
        let (code, body) = auth_request(srv.port, user, "acme").await;
        assert_eq!(code, 10, "AuthenticationSASL for {user}");
        assert_eq!(body, b"SCRAM-SHA-256\0\0", "{user}");
    }
    let e = connect(srv.port, "user=dash password=wrong dbname=acme")
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("28P01"), "{e:?}");
    let e = connect(srv.port, "user=nobody password=x dbname=acme")
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("28P01"), "{e:?}");
    let e = connect(srv.port, "user=x dbname=nosuchtenant")
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("3D000"), "{e:?}");
    // From public, acme's stream is not there.
    let c = connect(srv.port, "user=someone dbname=public")
        .await
        .unwrap();
    let e = c
        .simple_query(r#"SELECT * FROM acme."default".plant1"#)
        .await
        .unwrap_err();
    assert_eq!(e.code().map(|c| c.code()), Some("42P01"), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_queries_stream_rows_until_the_client_cancels() {
    use futures_util::StreamExt;
    use std::time::Duration;
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path()).await;
    readings(&srv.broker, "public", 4).await;
    let c = connect(srv.port, "user=dashboard dbname=public")
        .await
        .unwrap();
    // Extended protocol, rows read as they arrive.
    let rows = c
        .query_raw(
            "SELECT _key, json_get_float(value, 'temp') AS temp FROM plant1 \
             WHERE json_get_float(value, 'temp') >= $1 EMIT CHANGES",
            [30.0f64],
        )
        .await;
    // Parameters are not for push queries (they plan once, run forever):
    // the error says so, and the connection goes on.
    assert!(rows.is_err());
    let rows = c
        .query_raw(
            "SELECT _key, json_get_float(value, 'temp') AS temp FROM plant1 \
             WHERE json_get_float(value, 'temp') >= 30 EMIT CHANGES",
            std::iter::empty::<i32>(),
        )
        .await
        .unwrap();
    let mut rows = Box::pin(rows);
    let s = StreamRef::new("public", "default", "plant1").unwrap();
    // Stored before the query started: not in it.
    let hot = |d: &str, t: f64| RecordInput {
        key: Some(Bytes::from(d.to_string())),
        value: Some(Bytes::from(format!(r#"{{"temp":{t}}}"#))),
        headers: vec![],
        event_ts: None,
    };
    // The client has the statement bound before the server starts it; a
    // push query sees what is published once it runs: probes until one
    // comes back.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        assert!(
            std::time::Instant::now() < deadline,
            "the push query never started"
        );
        srv.broker
            .produce(&s, vec![hot("probe", 99.0)], None)
            .await
            .unwrap();
        if let Ok(row) = tokio::time::timeout(Duration::from_millis(200), rows.next()).await {
            assert_eq!(row.unwrap().unwrap().get::<_, String>(0), "probe");
            break;
        }
    }
    for (d, t) in [("dev-1", 31.0), ("dev-2", 12.0), ("dev-3", 40.5)] {
        srv.broker.produce(&s, vec![hot(d, t)], None).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < 2 {
        let row = tokio::time::timeout(Duration::from_secs(10), rows.next())
            .await
            .expect("rows come as they are published")
            .unwrap()
            .unwrap();
        if row.get::<_, String>(0) == "probe" {
            continue;
        }
        got.push((row.get::<_, String>(0), row.get::<_, f64>(1)));
    }
    assert_eq!(
        got,
        [("dev-1".to_string(), 31.0), ("dev-3".to_string(), 40.5)]
    );
    // The client cancels: the query ends with 57014.
    c.cancel_token().cancel_query(NoTls).await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(10), rows.next())
        .await
        .expect("the cancel ends the query");
    let e = end.unwrap().unwrap_err();
    assert_eq!(e.code().unwrap().code(), "57014", "{e}");
    // The connection is still there for the next query.
    let n: i64 = c
        .query_one("SELECT count(*) FROM plant1 WHERE _key <> 'probe'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 7);
    // Over the simple protocol, a push query must run alone.
    let e = c
        .simple_query("SELECT 1; SELECT value FROM plant1 EMIT CHANGES")
        .await
        .unwrap_err();
    assert_eq!(e.code().unwrap().code(), "0A000", "{e}");
}

/// What Grafana's PostgreSQL data source sends: its version probe, its
/// schema browser's catalog queries, and panels' queries with its macros
/// expanded (`$__timeFilter`, `$__timeGroupAlias`, `$__time`), over both
/// query protocols (lib/pq's simple, pgx's extended).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grafana_queries_run() {
    let tmp = tempfile::tempdir().unwrap();
    let srv = server(tmp.path()).await;
    readings(&srv.broker, "public", 120).await;
    let c = connect(srv.port, "user=grafana dbname=public")
        .await
        .unwrap();
    let queries = [
        "SELECT current_setting('server_version_num')::int/100 as version",
        "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'",
        "SELECT schema_name AS \"name\" FROM information_schema.schemata WHERE schema_name NOT IN ('information_schema', 'pg_catalog', 'pg_toast', '_timescaledb_cache') ORDER BY schema_name",
        "SELECT quote_ident(table_name) AS \"table\" FROM information_schema.tables WHERE quote_ident(table_schema) = '\"default\"' ORDER BY 1",
        "SELECT CASE WHEN quote_ident(table_schema) IN (SELECT CASE WHEN trim(s[i]) = '\"$user\"' THEN user ELSE trim(s[i]) END FROM generate_series(array_lower(string_to_array(current_setting('search_path'),','),1), array_upper(string_to_array(current_setting('search_path'),','),1)) as i, string_to_array(current_setting('search_path'),',') s) THEN quote_ident(table_name) ELSE quote_ident(table_schema) || '.' || quote_ident(table_name) END AS \"table\" FROM information_schema.tables WHERE quote_ident(table_schema) NOT IN ('information_schema', 'pg_catalog') ORDER BY 1",
        "SELECT quote_ident(column_name) AS \"column\", data_type AS \"type\" FROM information_schema.columns WHERE CASE WHEN array_length(parse_ident('plant1'),1) = 2 THEN quote_ident(table_schema) = (parse_ident('plant1'))[1] AND quote_ident(table_name) = (parse_ident('plant1'))[2] ELSE quote_ident(table_name) = 'plant1' END",
        "SELECT floor(extract(epoch from _event_ts)/60)*60 AS \"time\", avg(json_get_float(value, 'temp')) AS temp FROM plant1 WHERE _event_ts BETWEEN '2023-11-14T22:00:00Z' AND '2023-11-14T23:00:00.5Z' GROUP BY 1 ORDER BY 1",
        "SELECT _event_ts AS \"time\", _key AS metric, json_get_float(value, 'temp') AS temp FROM plant1 WHERE _event_ts BETWEEN '2023-11-14T22:14:00Z' AND '2023-11-14T22:15:00Z' ORDER BY 1",
        "SELECT extract(epoch from _event_ts) as \"time\", count(*) FROM \"default\".plant1 WHERE _event_ts >= '2023-11-14T22:00:00Z' GROUP BY 1 ORDER BY 1 LIMIT 3",
    ];
    // Each query's rows as text, by both protocols (which must agree).
    let mut answers = Vec::new();
    for q in queries {
        let rows: Vec<Vec<Option<String>>> = c
            .simple_query(q)
            .await
            .unwrap_or_else(|e| panic!("{q}: {e:?}"))
            .iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect())
                }
                _ => None,
            })
            .collect();
        let extended = c
            .query(q, &[])
            .await
            .unwrap_or_else(|e| panic!("{q}: {e:?}"));
        assert_eq!(extended.len(), rows.len(), "{q}");
        answers.push(rows);
    }
    let col = |a: &Vec<Vec<Option<String>>>, i: usize| -> Vec<String> {
        a.iter().map(|r| r[i].clone().unwrap_or_default()).collect()
    };
    assert_eq!(col(&answers[0], 0), ["1600"]);
    assert!(answers[1].is_empty(), "no TimescaleDB");
    assert!(col(&answers[2], 0).contains(&"default".to_string()));
    assert_eq!(col(&answers[3], 0), ["plant1"]);
    // (datafusion-pg-catalog answers the search-path lookup with no
    // schema, so Grafana lists tables qualified — a name it can query.)
    assert_eq!(col(&answers[4], 0), ["\"default\".plant1"]);
    let columns = col(&answers[5], 0);
    assert_eq!(columns.len(), 9, "{columns:?}");
    assert!(columns.contains(&"_event_ts".to_string()), "{columns:?}");
    // 120 readings a second apart from 22:13:20 (temp i/2): 40, 60 and 20
    // a minute.
    assert_eq!(
        answers[6],
        [
            ["1699999980.0", "9.75"],
            ["1700000040.0", "34.75"],
            ["1700000100.0", "54.75"]
        ]
        .map(|r| r.map(|v| Some(v.to_string())).to_vec())
    );
    assert_eq!(answers[7].len(), 61);
    assert_eq!(answers[8].len(), 3);
    let e = c
        .simple_query("SELECT current_setting('no_such_thing')")
        .await
        .unwrap_err();
    assert!(
        format!("{e:?}").contains("unrecognized configuration parameter"),
        "{e:?}"
    );
    let r = c
        .simple_query("SELECT current_setting('no_such_thing', true) IS NULL")
        .await
        .unwrap();
    assert!(matches!(&r[1], SimpleQueryMessage::Row(row) if row.get(0) == Some("t")));
}
