//! Quotas with real clients: a noisy tenant's MQTT publishers are slowed
//! (flow control) while another tenant's go at full speed and nothing is
//! lost; Kafka producers over a byte rate are throttled yet every record
//! arrives; HTTP answers 429 with Retry-After; connection and subscription
//! quotas answer MQTT 5's 0x97; a tenant at its storage quota is refused.

mod common;

use std::time::Duration;

use common::{http, Node};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

const ADMIN: &str = "the node admin's password";

fn node(dir: &std::path::Path) -> Node {
    let admin = dir.join("admin-password");
    std::fs::write(&admin, ADMIN).unwrap();
    Node::start_with(&dir.join("data"), &[], |cmd| {
        cmd.env("FJORD_AUTH__ADMIN_PASSWORD_FILE", &admin);
    })
}

async fn admin(node: &Node, method: reqwest::Method, path: &str, body: Value) -> Value {
    let r = http()
        .request(method, format!("{}{path}", node.url))
        .basic_auth("system:admin", Some(ADMIN))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap_or(Value::Null)
}

async fn tenant(node: &Node, name: &str, quotas: Value, user_quotas: Value) {
    use reqwest::Method as M;
    admin(node, M::POST, "/v1/tenants", json!({ "name": name })).await;
    admin(
        node,
        M::PATCH,
        &format!("/v1/tenants/{name}"),
        json!({ "quotas": quotas }),
    )
    .await;
    admin(
        node,
        M::PUT,
        &format!("/v1/tenants/{name}/users/dev"),
        json!({"password": "dev-password", "quotas": user_quotas}),
    )
    .await;
}

async fn stored(node: &Node, tenant: &str, stream: &str) -> usize {
    let d = admin(
        node,
        reqwest::Method::GET,
        &format!("/v1/streams/{tenant}/default/{stream}"),
        Value::Null,
    )
    .await;
    d["partition_details"]
        .as_array()
        .map(|ps| {
            ps.iter()
                .map(|p| p["end_offset"].as_i64().unwrap_or(0) as usize)
                .sum()
        })
        .unwrap_or(0)
}

/// Publishes `n` QoS 1 messages as `tenant:dev` to the MQTT listener at
/// `mqtt`; returns when all are acknowledged.
async fn publish_all(mqtt: String, tenant: &'static str, n: usize) {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let (h, p) = mqtt.rsplit_once(':').unwrap();
    let mut o = MqttOptions::new(format!("{tenant}-pub"), h, p.parse().unwrap());
    o.set_credentials(format!("{tenant}:dev"), "dev-password");
    o.set_keep_alive(Duration::from_secs(30));
    o.set_inflight(100);
    let (c, mut ev) = AsyncClient::new(o, 200);
    tokio::spawn(async move {
        for i in 0..n {
            c.publish("load/x", QoS::AtLeastOnce, false, format!("m{i}"))
                .await
                .unwrap();
        }
    });
    let mut acked = 0;
    while acked < n {
        let e = tokio::time::timeout(Duration::from_secs(60), ev.poll())
            .await
            .expect("progress")
            .expect("connection ok");
        if let Event::Incoming(Packet::PubAck(_)) = e {
            acked += 1;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_tenant_is_throttled_and_another_is_not() {
    let tmp = tempfile::tempdir().unwrap();
    let node = node(tmp.path());
    tenant(
        &node,
        "noisy",
        json!({"publish_msgs_per_s": 100}),
        json!({}),
    )
    .await;
    tenant(&node, "quiet", json!({}), json!({})).await;
    let noisy = tokio::spawn(publish_all(node.mqtt.clone(), "noisy", 1000));
    publish_all(node.mqtt.clone(), "quiet", 1000).await;
    // When the quiet tenant is done, the noisy one is far from it: one
    // second's burst plus 100/s since.
    let noisy_so_far = stored(&node, "noisy", "load").await;
    assert_eq!(stored(&node, "quiet", "load").await, 1000);
    assert!(
        noisy_so_far < 800,
        "noisy tenant not held back: {noisy_so_far}"
    );
    // Held back, not dropped: every message arrives.
    tokio::time::timeout(Duration::from_secs(60), noisy)
        .await
        .expect("noisy publisher finishes")
        .unwrap();
    assert_eq!(stored(&node, "noisy", "load").await, 1000);
    let text = common::metrics_as(&node.url, Some(("system:admin", ADMIN))).await;
    assert!(
        text.contains(
            "fjord_quota_exceeded_total{protocol=\"mqtt\",quota=\"publish_rate\",tenant=\"noisy\"}"
        ),
        "{text}"
    );
    assert!(
        !text.contains("tenant=\"quiet\",quota")
            && !text.contains("quota=\"publish_rate\",tenant=\"quiet\"")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_producers_are_throttled_without_loss_and_http_gets_429() {
    let tmp = tempfile::tempdir().unwrap();
    let node = node(tmp.path());
    tenant(
        &node,
        "acme",
        json!({"publish_bytes_per_s": 50000}),
        json!({"publish_msgs_per_s": 5}),
    )
    .await;
    for stream in ["web", "kstream"] {
        admin(
            &node,
            reqwest::Method::POST,
            "/v1/streams/acme/default",
            json!({ "name": stream }),
        )
        .await;
    }
    // The user's own rate (5 records/s) is the tighter one for HTTP.
    let url = format!("{}/v1/streams/acme/default/web/records", node.url);
    let mut limited = None;
    for i in 0..20 {
        let r = http()
            .post(&url)
            .basic_auth("acme:dev", Some("dev-password"))
            .json(&json!({ "value": format!("v{i}") }))
            .send()
            .await
            .unwrap();
        if r.status() == 429 {
            limited = Some(r);
            break;
        }
        assert!(r.status().is_success(), "{}", r.status());
    }
    let r = limited.expect("a 429 within 20 quick requests");
    let retry: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry >= 1, "{retry}");
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "quota_exceeded");
    // Kafka: the tenant's 50 kB/s byte rate, 300 kB to send.
    admin(
        &node,
        reqwest::Method::PUT,
        "/v1/tenants/acme/users/svc",
        json!({"password": "svc-password"}),
    )
    .await;
    let p: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &node.kafka)
        .set("broker.address.family", "v4")
        .set("security.protocol", "sasl_plaintext")
        .set("sasl.mechanism", "SCRAM-SHA-256")
        .set("sasl.username", "acme:svc")
        .set("sasl.password", "svc-password")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let payload = vec![b'x'; 1024];
    let sends: Vec<_> = (0..300)
        .map(|i| {
            let key = format!("k{i}");
            // Queued (copied) by librdkafka; the delivery report follows.
            p.send_result(FutureRecord::to("kstream").key(&key).payload(&payload))
                .map_err(|(e, _)| e)
                .expect("queued")
        })
        .collect();
    for s in sends {
        s.await
            .expect("a delivery report")
            .expect("delivered despite the throttle");
    }
    assert_eq!(stored(&node, "acme", "kstream").await, 300);
    let text = common::metrics_as(&node.url, Some(("system:admin", ADMIN))).await;
    assert!(
        text.contains(
            "fjord_quota_exceeded_total{protocol=\"kafka\",quota=\"publish_rate\",tenant=\"acme\"}"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_subscription_and_storage_quotas() {
    use rumqttc::v5::mqttbytes::v5::ConnectReturnCode;
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
    let tmp = tempfile::tempdir().unwrap();
    let node = node(tmp.path());
    tenant(
        &node,
        "acme",
        json!({"storage_bytes": 1}),
        json!({"connections": 1, "subscriptions": 1}),
    )
    .await;
    let (h, p) = node.mqtt.rsplit_once(':').unwrap();
    let opts = |id: &str| {
        let mut o = MqttOptions::new(id, h, p.parse().unwrap());
        o.set_credentials("acme:dev", "dev-password");
        o
    };
    let (c1, mut ev1) = AsyncClient::new(opts("one"), 10);
    loop {
        if let Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::ConnAck(_)) =
            ev1.poll().await.unwrap()
        {
            break;
        }
    }
    // A second connection of the user: 0x97.
    let (_c2, mut ev2) = AsyncClient::new(opts("two"), 10);
    let err = loop {
        match ev2.poll().await {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            err,
            ConnectionError::ConnectionRefused(ConnectReturnCode::QuotaExceeded)
        ),
        "{err:?}"
    );
    // One subscription allowed, the second refused with 0x97.
    c1.subscribe("a/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    c1.subscribe("b/#", rumqttc::v5::mqttbytes::QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut codes = Vec::new();
    while codes.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), ev1.poll())
            .await
            .expect("an answer")
        {
            Ok(Event::Incoming(rumqttc::v5::mqttbytes::v5::Packet::SubAck(a))) => {
                codes.push(format!("{:?}", a.return_codes))
            }
            Ok(_) => {}
            Err(e) => codes.push(format!("{e:?}")),
        }
    }
    // rumqttc reports a refused SUBACK as an error of its loop.
    assert!(codes.iter().any(|c| c.contains("Success")), "{codes:?}");
    assert!(
        codes.iter().any(|c| c.contains("QuotaExceeded")),
        "{codes:?}"
    );
    // Storage: one write goes in; once measured (every 5 s) the tenant is
    // at its quota and writes are refused with 507.
    admin(
        &node,
        reqwest::Method::POST,
        "/v1/streams/acme/default",
        json!({ "name": "s" }),
    )
    .await;
    let url = format!("{}/v1/streams/acme/default/s/records", node.url);
    let post = || {
        http()
            .post(&url)
            .basic_auth("acme:dev", Some("dev-password"))
            .json(&json!({"value": "x"}))
            .send()
    };
    assert!(post().await.unwrap().status().is_success());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let r = post().await.unwrap();
        if r.status() == 507 {
            let body: Value = r.json().await.unwrap();
            assert_eq!(body["error"]["code"], "quota_exceeded");
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never refused");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
