//! SQL over HTTP on a running node: readings published over MQTT (rumqttc)
//! are queryable as soon as they are acknowledged; JSON, CSV and Arrow
//! results; errors that say where; what a tenant may not read is not there.

mod common;

use std::time::Duration;

use common::{http, poll_until, Node};
use serde_json::{json, Value};

async fn sql(node: &Node, body: Value, login: Option<(&str, &str)>) -> reqwest::Response {
    let mut r = http().post(format!("{}/v1/sql", node.url)).json(&body);
    if let Some((u, p)) = login {
        r = r.basic_auth(u, Some(p));
    }
    r.send().await.unwrap()
}

async fn rows(node: &Node, q: &str) -> Vec<Value> {
    let r = sql(node, json!({ "sql": q }), None).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{q}: {body}");
    body["rows"].as_array().unwrap().clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_readings_are_queryable_once_acknowledged() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let (h, p) = node.mqtt.rsplit_once(':').unwrap();
    let mut o = MqttOptions::new("sensor-gw", h, p.parse().unwrap());
    o.set_keep_alive(Duration::from_secs(5));
    let (c, mut ev) = AsyncClient::new(o, 100);
    let mut expected = std::collections::BTreeMap::<String, (u32, f64)>::new();
    for i in 0..60u32 {
        let device = format!("dev-{}", i % 3);
        let temp = 20.0 + (i % 7) as f64;
        let e = expected.entry(device.clone()).or_default();
        e.0 += 1;
        e.1 += temp;
        c.publish(
            format!("plant1/{device}/temp"),
            QoS::AtLeastOnce,
            false,
            json!({"device": device, "temp": temp}).to_string(),
        )
        .await
        .unwrap();
    }
    let mut acked = 0;
    poll_until(&mut ev, |e| {
        if matches!(e, Event::Incoming(Packet::PubAck(_))) {
            acked += 1;
        }
        acked == 60
    })
    .await;
    // Acknowledged means stored: visible to SQL at once, no waiting.
    let got = rows(
        &node,
        "SELECT json_get_str(value, 'device') AS device, count(*) AS n, \
         avg(json_get_float(value, 'temp')) AS avg_temp \
         FROM plant1 GROUP BY 1 ORDER BY 1",
    )
    .await;
    assert_eq!(got.len(), 3, "{got:?}");
    for row in &got {
        let (n, sum) = expected[row["device"].as_str().unwrap()];
        assert_eq!(row["n"], n);
        let avg = row["avg_temp"].as_f64().unwrap();
        assert!((avg - sum / n as f64).abs() < 1e-9, "{row}");
    }
    // The routing topic is a column.
    let got = rows(&node, "SELECT DISTINCT _topic FROM plant1 ORDER BY _topic").await;
    assert_eq!(got[0]["_topic"], "plant1/dev-0/temp");

    // CSV and Arrow IPC.
    let r = http()
        .post(format!("{}/v1/sql?format=csv", node.url))
        .header("content-type", "text/plain")
        .body("SELECT count(*) AS n FROM plant1")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-type"], "text/csv; charset=utf-8");
    assert_eq!(r.text().await.unwrap(), "n\n60\n");
    let r = sql(
        &node,
        json!({"sql": "SELECT _offset FROM plant1 ORDER BY _offset LIMIT 5", "format": "arrow"}),
        None,
    )
    .await;
    assert_eq!(
        r.headers()["content-type"],
        "application/vnd.apache.arrow.stream"
    );
    let bytes = r.bytes().await.unwrap();
    let reader =
        fjord_sql::datafusion::arrow::ipc::reader::StreamReader::try_new(&bytes[..], None).unwrap();
    let n: usize = reader.map(|b| b.unwrap().num_rows()).sum();
    assert_eq!(n, 5);

    // Errors say what and where.
    let r = sql(&node, json!({"sql": "SELECT count(*)\nFRM plant1"}), None).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "syntax_error", "{e}");
    assert_eq!(e["error"]["line"], 2, "{e}");
    let r = sql(&node, json!({"sql": "SELECT * FROM nowhere"}), None).await;
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "undefined_table", "{e}");
    let r = sql(&node, json!({"sql": "SELECT 1", "format": "xml"}), None).await;
    assert_eq!(r.status(), 400);
}

/// Runs one statement over HTTP and fails the test if it fails.
async fn exec(node: &Node, q: &str) -> Value {
    let r = sql(node, json!({ "sql": q }), None).await;
    let status = r.status();
    let body: Value = r.json().await.unwrap();
    assert_eq!(status, 200, "{q}: {body}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_of_a_continuous_query_reach_mqtt_and_kafka_subscribers() {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::Message;
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    common::create_stream(&node, "plant1", 2).await;

    // Created over the PostgreSQL protocol, as an analyst would.
    let (pg, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=analyst dbname=public",
            node.pg.rsplit_once(':').unwrap().1
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    pg.batch_execute(
        "CREATE STREAM too_hot AS SELECT json_get_str(value, 'device') AS _key, value \
         FROM plant1 WHERE json_get_float(value, 'temp') > 30",
    )
    .await
    .unwrap();
    // Three hot readings of one device within a second: a windowed alert.
    pg.batch_execute(
        "CREATE STREAM hot_3x WITH (idle_timeout = '300 ms') AS \
         SELECT tumble(_event_ts, INTERVAL '2 seconds') AS window_start, \
                json_get_str(value, 'device') AS device, count(*) AS times \
         FROM plant1 WHERE json_get_float(value, 'temp') > 30 \
         GROUP BY 1, 2 HAVING count(*) >= 3",
    )
    .await
    .unwrap();
    let shown = pg.query("SHOW QUERIES", &[]).await.unwrap();
    let names: Vec<String> = shown.iter().map(|r| r.get("name")).collect();
    assert_eq!(names, ["default.hot_3x", "default.too_hot"]);

    // A dashboard subscribes over MQTT before the readings come.
    let (h, p) = node.mqtt.rsplit_once(':').unwrap();
    let mut o = MqttOptions::new("dashboard", h, p.parse().unwrap());
    o.set_keep_alive(Duration::from_secs(5));
    let (sub, mut sub_ev) = AsyncClient::new(o, 100);
    sub.subscribe("too_hot/#", QoS::AtLeastOnce).await.unwrap();
    poll_until(&mut sub_ev, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await;

    // Sensors publish over MQTT: dev-9 is hot three times, others once.
    let mut o = MqttOptions::new("sensors", h, p.parse().unwrap());
    o.set_keep_alive(Duration::from_secs(5));
    let (c, mut ev) = AsyncClient::new(o, 100);
    let readings = [
        ("dev-1", 21.0),
        ("dev-9", 35.5),
        ("dev-2", 31.0),
        ("dev-9", 36.0),
        ("dev-1", 22.0),
        ("dev-9", 37.5),
    ];
    for (d, t) in readings {
        c.publish(
            format!("plant1/{d}/temp"),
            QoS::AtLeastOnce,
            false,
            json!({"device": d, "temp": t}).to_string(),
        )
        .await
        .unwrap();
    }
    let mut acked = 0;
    poll_until(&mut ev, |e| {
        if matches!(e, Event::Incoming(Packet::PubAck(_))) {
            acked += 1;
        }
        acked == readings.len()
    })
    .await;

    // Every hot reading reaches the MQTT dashboard, unchanged, on topic
    // too_hot/<device>.
    let mut got = Vec::new();
    poll_until(&mut sub_ev, |e| {
        if let Event::Incoming(Packet::Publish(p)) = e {
            let v: Value = serde_json::from_slice(&p.payload).unwrap();
            got.push((p.topic.clone(), v["temp"].as_f64().unwrap()));
        }
        got.len() == 4
    })
    .await;
    got.sort_by(|a, b| a.1.total_cmp(&b.1));
    assert_eq!(
        got,
        [
            ("too_hot/dev-2".to_string(), 31.0),
            ("too_hot/dev-9".to_string(), 35.5),
            ("too_hot/dev-9".to_string(), 36.0),
            ("too_hot/dev-9".to_string(), 37.5)
        ]
    );

    // And a Kafka consumer reads the same alerts, then the windowed one.
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &node.kafka)
        .set("broker.address.family", "v4")
        .set("group.id", "alerting")
        .set("auto.offset.reset", "earliest")
        .set("log_level", "3")
        .create()
        .unwrap();
    consumer.subscribe(&["too_hot", "hot_3x"]).unwrap();
    let mut hot = 0;
    let mut windowed = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while hot < 4 || windowed.is_empty() {
        assert!(std::time::Instant::now() < deadline, "alerts not consumed");
        let Ok(m) = tokio::time::timeout(Duration::from_millis(500), consumer.recv()).await else {
            continue;
        };
        let m = m.unwrap();
        let v: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
        match m.topic() {
            "too_hot" => {
                assert!(v["temp"].as_f64().unwrap() > 30.0, "{v}");
                hot += 1;
            }
            _ => windowed.push(v),
        }
    }
    drop(consumer);
    // dev-9's three hot readings fell in one or two windows; only a window
    // with all three alerts (dev-2 was hot once).
    assert!(
        windowed
            .iter()
            .all(|v| v["device"] == "dev-9" && v["times"] == 3),
        "{windowed:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_continuous_query_killed_twice_writes_each_result_exactly_once() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::start(tmp.path());
    common::create_stream(&node, "meter", 2).await;
    exec(
        &node,
        "CREATE STREAM per_second WITH (start = 'earliest', idle_timeout = 'none') AS \
         SELECT tumble(_event_ts, INTERVAL '1 second') AS ws, _key AS device, \
                count(*) AS n, sum(json_get_int(value, 'v')) AS total \
         FROM meter GROUP BY 1, 2",
    )
    .await;
    let base = 1_750_000_000_000i64;
    let mut expected = std::collections::BTreeMap::<(i64, String), (u64, i64)>::new();
    let mut i = 0i64;
    for round in 0..3 {
        for _ in 0..20 {
            let mut batch = Vec::new();
            for _ in 0..200 {
                let device = format!("dev-{}", i % 8);
                let ts = base + i * 3;
                let e = expected
                    .entry((ts - ts.rem_euclid(1000), device.clone()))
                    .or_default();
                e.0 += 1;
                e.1 += i;
                batch.push(json!({"key": device, "value": {"v": i}, "event_ts": ts}));
                i += 1;
            }
            let r = http()
                .post(format!(
                    "{}/v1/streams/public/default/meter/records",
                    node.url
                ))
                .json(&json!({ "records": batch }))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
        }
        if round < 2 {
            // Killed while the query is at work on what was just stored.
            node.kill9();
            node = Node::start(tmp.path());
        }
    }
    // Time moves past every window in both partitions.
    for p in 0..2 {
        let r = http()
            .post(format!(
                "{}/v1/streams/public/default/meter/records?partition={p}",
                node.url
            ))
            .json(&json!({"records": [{"key": "flush", "value": {"v": 0}, "event_ts": base + 600_000}]}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Every record read (12,000 and the two flushes): the query's read
    // counter moves only after what those rows closed is appended.
    let read = async |node: &Node| exec(node, "SHOW QUERIES").await["rows"][0]["rows_in"].as_u64();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while read(&node).await != Some(12_002) {
        assert!(std::time::Instant::now() < deadline, "results missing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let got = rows(&node, "SELECT value FROM per_second").await;
    assert_eq!(got.len(), expected.len(), "no result twice, none missing");
    let mut seen = std::collections::BTreeSet::new();
    for r in got {
        let v: Value = serde_json::from_str(r["value"].as_str().unwrap()).unwrap();
        let ws = chrono::DateTime::parse_from_rfc3339(v["ws"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        let key = (ws, v["device"].as_str().unwrap().to_string());
        let (n, total) = expected[&key];
        assert_eq!(v["n"].as_u64(), Some(n), "{v}");
        assert_eq!(v["total"].as_i64(), Some(total), "{v}");
        assert!(seen.insert(key), "duplicate {v}");
    }
    let shown = exec(&node, "SHOW QUERIES").await;
    assert_eq!(shown["rows"][0]["state"], "running", "{shown}");
    assert_eq!(shown["rows"][0]["late_rows"], 0, "{shown}");
    // And in /metrics, counted across the restarts.
    let out = common::metric(
        &node.url,
        r#"fjord_sql_query_rows_out_total{query="default.per_second",tenant="public"}"#,
    )
    .await;
    assert_eq!(out as usize, expected.len());
    let read = common::metric(
        &node.url,
        r#"fjord_sql_query_rows_in_total{query="default.per_second",tenant="public"}"#,
    )
    .await;
    assert!(read >= 12_002.0, "{read}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_query_streams_over_a_websocket_until_closed() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    common::create_stream(&node, "plant1", 1).await;
    let q = "SELECT _key AS device, json_get_float(value, 'temp') AS temp FROM plant1 \
             WHERE json_get_float(value, 'temp') > 30 EMIT CHANGES";
    // Over POST: refused with a pointer to the WebSocket.
    let r = sql(&node, json!({ "sql": q }), None).await;
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert_eq!(e["error"]["code"], "push_query", "{e}");
    // A wrong push query is refused before the upgrade, with its place.
    let bad = reqwest::Url::parse_with_params(
        &format!("ws://{}/v1/sql/ws", node.addr),
        &[("sql", "SELECT nope FROM plant1 EMIT CHANGES")],
    )
    .unwrap();
    match tokio_tungstenite::connect_async(bad.as_str()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
            assert_eq!(r.status(), 404)
        }
        other => panic!("{other:?}"),
    }
    let url =
        reqwest::Url::parse_with_params(&format!("ws://{}/v1/sql/ws", node.addr), &[("sql", q)])
            .unwrap();
    let (mut ws, _) = tokio_tungstenite::connect_async(url.as_str())
        .await
        .unwrap();
    // Published once the query runs (it starts with the upgrade).
    let publish = |device: &'static str, temp: f64| {
        let url = format!("{}/v1/streams/public/default/plant1/records", node.url);
        async move {
            let r = http()
                .post(url)
                .json(&json!({"records": [{"key": device, "value": {"temp": temp}}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    // The query started before the upgrade was answered.
    publish("dev-1", 35.0).await;
    publish("dev-2", 20.0).await;
    publish("dev-3", 41.0).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        let m = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .expect("rows as they come")
            .unwrap()
            .unwrap();
        let Message::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(&t).unwrap();
        for row in v["rows"].as_array().unwrap() {
            got.push((
                row["device"].as_str().unwrap().to_string(),
                row["temp"].as_f64().unwrap(),
            ));
        }
    }
    assert_eq!(
        got,
        [("dev-1".to_string(), 35.0), ("dev-3".to_string(), 41.0)]
    );
    ws.send(Message::Close(None)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_mqtt_streams_joined_on_a_time_interval_reach_an_mqtt_subscriber() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    common::create_stream(&node, "doors", 2).await;
    common::create_stream(&node, "temps", 2).await;
    let (pg, conn) = tokio_postgres::connect(
        &format!(
            "host=127.0.0.1 port={} user=analyst dbname=public",
            node.pg.rsplit_once(':').unwrap().1
        ),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    // Readings over 30 °C within 2 s after the device's door opened.
    pg.batch_execute(
        "CREATE STREAM warm_after_open WITH (idle_timeout = '300 ms') AS \
         SELECT json_get_str(d.value, 'device') AS _key, \
                json_get_float(t.value, 'temp') AS temp \
         FROM doors d JOIN temps t \
           ON json_get_str(d.value, 'device') = json_get_str(t.value, 'device') \
          AND t._event_ts BETWEEN d._event_ts AND d._event_ts + INTERVAL '2 seconds' \
         WHERE json_get_float(t.value, 'temp') > 30",
    )
    .await
    .unwrap();

    let (h, p) = node.mqtt.rsplit_once(':').unwrap();
    let mut o = MqttOptions::new("ops-dashboard", h, p.parse().unwrap());
    o.set_keep_alive(Duration::from_secs(5));
    let (sub, mut sub_ev) = AsyncClient::new(o, 100);
    sub.subscribe("warm_after_open/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    poll_until(&mut sub_ev, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await;

    // Publish-time event times: a door opens, then readings arrive; dev-2's
    // door stays shut.
    let mut o = MqttOptions::new("site-gw", h, p.parse().unwrap());
    o.set_keep_alive(Duration::from_secs(5));
    let (c, mut ev) = AsyncClient::new(o, 100);
    let publish = |topic: &str, body: Value| {
        let c = c.clone();
        let topic = topic.to_string();
        async move {
            c.publish(topic, QoS::AtLeastOnce, false, body.to_string())
                .await
                .unwrap()
        }
    };
    publish("doors/dev-1", json!({"device": "dev-1", "open": true})).await;
    publish("temps/dev-1", json!({"device": "dev-1", "temp": 31.5})).await;
    publish("temps/dev-1", json!({"device": "dev-1", "temp": 12.0})).await;
    publish("temps/dev-2", json!({"device": "dev-2", "temp": 35.0})).await;
    publish("temps/dev-1", json!({"device": "dev-1", "temp": 33.0})).await;
    let mut acked = 0;
    poll_until(&mut ev, |e| {
        if matches!(e, Event::Incoming(Packet::PubAck(_))) {
            acked += 1;
        }
        acked == 5
    })
    .await;

    let mut got = Vec::new();
    poll_until(&mut sub_ev, |e| {
        if let Event::Incoming(Packet::Publish(p)) = e {
            let v: Value = serde_json::from_slice(&p.payload).unwrap();
            got.push((p.topic.clone(), v["temp"].as_f64().unwrap()));
        }
        got.len() == 2
    })
    .await;
    got.sort_by(|a, b| a.1.total_cmp(&b.1));
    assert_eq!(
        got,
        [
            ("warm_after_open/dev-1".to_string(), 31.5),
            ("warm_after_open/dev-1".to_string(), 33.0)
        ]
    );
    // Nothing more: dev-2 had no open door, 12 °C is not warm.
    let rows = pg
        .query("SELECT count(*) AS n FROM warm_after_open", &[])
        .await
        .unwrap();
    assert_eq!(rows[0].get::<_, i64>("n"), 2);
}
