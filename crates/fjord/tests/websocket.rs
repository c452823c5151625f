//! WebSocket publish (acks) and subscribe (earliest, latest, offset, time,
//! live tail) with `tokio-tungstenite`.

mod common;

use std::time::Duration;

use common::{create_stream, http, Node};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(node: &Node, stream: &str, query: &str) -> Ws {
    let url = format!(
        "ws://{}/v1/streams/public/default/{stream}/ws?{query}",
        node.addr
    );
    tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connects")
        .0
}

async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let m = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("a frame in time")
            .expect("open")
            .expect("frame");
        match m {
            Message::Text(t) => return serde_json::from_str(t.as_str()).unwrap(),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("unexpected frame {other:?}"),
        }
    }
}

#[tokio::test]
async fn publish_acks_every_frame_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    create_stream(&node, "ws", 1).await;
    let mut ws = connect(&node, "ws", "mode=publish").await;
    for i in 0..200 {
        ws.send(Message::Text(
            json!({"id": i, "key": "k", "value": {"n": i}})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    }
    ws.send(Message::Binary(vec![0u8, 1, 2, 255].into()))
        .await
        .unwrap();
    ws.send(Message::Text("{broken".into())).await.unwrap();
    ws.send(Message::Text(
        json!({"id": "big", "value": "x".repeat(2 << 20)})
            .to_string()
            .into(),
    ))
    .await
    .unwrap();
    ws.send(Message::Text(
        json!({"id": "after", "value": "ok"}).to_string().into(),
    ))
    .await
    .unwrap();
    for i in 0..200 {
        let a = next_json(&mut ws).await;
        assert_eq!(a["ack"]["id"], i, "{a}");
        assert_eq!(a["ack"]["seq"], i);
        assert_eq!(a["ack"]["offset"], i);
    }
    let a = next_json(&mut ws).await;
    assert_eq!(
        (a["ack"]["seq"].as_i64(), a["ack"]["offset"].as_i64()),
        (Some(200), Some(200)),
        "{a}"
    );
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["seq"].as_i64(), e["error"]["code"].as_str()),
        (Some(201), Some("invalid_json")),
        "{e}"
    );
    let e = next_json(&mut ws).await;
    assert_eq!(
        (e["id"].as_str(), e["error"]["code"].as_str()),
        (Some("big"), Some("message_too_large")),
        "{e}"
    );
    let a = next_json(&mut ws).await;
    assert_eq!(
        (a["ack"]["id"].as_str(), a["ack"]["offset"].as_i64()),
        (Some("after"), Some(201)),
        "{a}"
    );
    ws.close(None).await.unwrap();

    // Everything acknowledged is readable over HTTP.
    let v: Value = http()
        .get(format!(
            "{}/v1/streams/public/default/ws/records?from=earliest&max_records=1000",
            node.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let recs = v["records"].as_array().unwrap();
    assert_eq!(recs.len(), 202);
    assert_eq!(recs[7]["value"]["n"], 7);
    assert_eq!(recs[200]["value_base64"], "AAEC/w==");
}

#[tokio::test]
async fn subscribe_from_every_kind_of_position_and_follow_live() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    create_stream(&node, "feed", 2).await;
    let c = http();
    let produce = |vals: Vec<&str>| {
        let c = c.clone();
        let url = format!("{}/v1/streams/public/default/feed/records", node.url);
        let records: Vec<Value> = vals
            .iter()
            .map(|v| json!({"key": "dev", "value": v}))
            .collect();
        async move {
            let r = c
                .post(url)
                .json(&json!({"records": records}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            r.json::<Value>().await.unwrap()
        }
    };
    let first = produce(vec!["a", "b", "c"]).await;
    let p = first["offsets"][0]["partition"].as_u64().unwrap();
    let t_mid = fjord_core::time::now_ms() + 1;
    tokio::time::sleep(Duration::from_millis(5)).await;
    produce(vec!["d"]).await;

    // From earliest over all partitions.
    let mut ws = connect(&node, "feed", "from=earliest").await;
    assert_eq!(
        next_json(&mut ws).await["subscribed"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let mut vals = Vec::new();
    for _ in 0..4 {
        vals.push(
            next_json(&mut ws).await["value"]
                .as_str()
                .unwrap()
                .to_string(),
        );
    }
    assert_eq!(vals, ["a", "b", "c", "d"]);
    // ...and it follows the tail.
    produce(vec!["e"]).await;
    assert_eq!(next_json(&mut ws).await["value"], "e");

    // Open WebSockets are counted.
    let open = common::metric(&node.url, "fjord_connections{protocol=\"websocket\"}").await;
    assert!(open >= 1.0, "{open}");

    // From an offset.
    let mut ws2 = connect(&node, "feed", &format!("partition={p}&offset=2")).await;
    assert_eq!(next_json(&mut ws2).await["subscribed"][0]["offset"], 2);
    assert_eq!(next_json(&mut ws2).await["value"], "c");

    // From a time.
    let mut ws3 = connect(&node, "feed", &format!("partition={p}&timestamp={t_mid}")).await;
    assert_eq!(next_json(&mut ws3).await["subscribed"][0]["offset"], 3);
    assert_eq!(next_json(&mut ws3).await["value"], "d");

    // From latest: only what comes next.
    let mut ws4 = connect(&node, "feed", "from=latest").await;
    let hello = next_json(&mut ws4).await;
    assert!(
        hello["subscribed"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s["partition"] == p && s["offset"] == 5),
        "{hello}"
    );
    produce(vec!["f"]).await;
    let v = next_json(&mut ws4).await;
    assert_eq!(
        (v["value"].as_str(), v["offset"].as_i64()),
        (Some("f"), Some(5))
    );

    // Bad requests are refused before the upgrade, with a status.
    let err = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/streams/public/default/nope/ws",
        node.addr
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    let err = tokio_tungstenite::connect_async(format!(
        "ws://{}/v1/streams/public/default/feed/ws?mode=sideways",
        node.addr
    ))
    .await
    .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
}

#[tokio::test]
async fn a_slow_subscriber_of_an_ephemeral_stream_is_told_what_it_missed() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let c = http();
    let r = c
        .post(format!("{}/v1/streams/public/default", node.url))
        .json(&json!({"name": "live", "policy": {"ephemeral": true, "ephemeral_bytes_max": 65536}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let mut ws = connect(&node, "live", "from=earliest").await;
    assert!(next_json(&mut ws).await["subscribed"].is_array());
    // Produce far more than the ring, the subscriber's queue and the socket
    // buffers hold, without reading.
    let url = format!("{}/v1/streams/public/default/live/records", node.url);
    for chunk in 0..40 {
        let records: Vec<Value> = (0..500)
            .map(|i| json!({"value": format!("{chunk}-{i}-{}", "x".repeat(1000))}))
            .collect();
        let r = c
            .post(&url)
            .json(&json!({"records": records}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // Reading now: the subscriber gets what was still there, learns of the
    // gap, and goes on; it never sees an offset twice or out of order.
    let mut last = -1i64;
    let mut skipped = None;
    while skipped.is_none() {
        let v = next_json(&mut ws).await;
        if let Some(s) = v.get("skipped") {
            assert!(s["to"].as_i64().unwrap() > s["from"].as_i64().unwrap());
            skipped = Some(s.clone());
        } else {
            let o = v["offset"].as_i64().unwrap();
            assert!(o > last);
            last = o;
        }
    }
    let n = common::metric(
        &node.url,
        "fjord_subscriber_skipped_records_total{protocol=\"websocket\"}",
    )
    .await;
    assert!(n > 0.0, "{n}");
}
