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
