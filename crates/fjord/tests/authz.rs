//! Authorisation with real clients: ACL rules of a tenant that denies by
//! default, checked on MQTT (5.0 PUBACK/SUBACK 0x87, 3.1.1 publish
//! acknowledged and dropped, SUBACK 0x80), Kafka (TOPIC_ and
//! GROUP_AUTHORIZATION_FAILED through librdkafka) and HTTP (401/403); and
//! one tenant's principals kept out of another's streams on every
//! protocol.

mod common;

use std::time::Duration;

use common::{http, poll_until, Node};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use serde_json::{json, Value};

const ADMIN: &str = "the node admin's password";

fn node(dir: &std::path::Path) -> Node {
    let admin = dir.join("admin-password");
    std::fs::write(&admin, ADMIN).unwrap();
    Node::start_with(&dir.join("data"), &[], |cmd| {
        cmd.env("FJORD_AUTH__ADMIN_PASSWORD_FILE", &admin)
            // Production-like: anonymous clients may not administer.
            .env("FJORD_AUTH__ANONYMOUS_ADMIN", "false");
    })
}

/// An admin request as `system:admin`; the status and body.
async fn admin(node: &Node, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let r = http()
        .request(method, format!("{}{path}", node.url))
        .basic_auth("system:admin", Some(ADMIN))
        .json(&body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn setup(node: &Node) {
    use reqwest::Method as M;
    for t in ["acme", "globex"] {
        let (s, _) = admin(node, M::POST, "/v1/tenants", json!({ "name": t })).await;
        assert_eq!(s, 201);
    }
    let (s, b) = admin(
        node,
        M::PATCH,
        "/v1/tenants/acme",
        json!({"acl_default": "deny"}),
    )
    .await;
    assert_eq!(s, 200, "{b}");
    for (t, u, roles) in [
        ("acme", "device1", json!(["devices"])),
        ("acme", "dash", json!([])),
        ("acme", "root", json!(["admin"])),
        ("globex", "bob", json!([])),
    ] {
        let (s, b) = admin(
            node,
            M::PUT,
            &format!("/v1/tenants/{t}/users/{u}"),
            json!({"password": format!("{u}-password"), "roles": roles}),
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }
    for rule in [
        json!({"principal": "role:devices", "resource": "topic:plant/+/temp", "actions": ["publish"]}),
        json!({"principal": "user:dash", "resource": "stream:default/plant", "actions": ["subscribe"]}),
        json!({"principal": "user:dash", "resource": "group:dash-*", "actions": ["subscribe"]}),
    ] {
        let (s, b) = admin(node, M::POST, "/v1/tenants/acme/acls", rule).await;
        assert_eq!(s, 201, "{b}");
    }
    // A malformed rule is refused.
    let (s, _) = admin(
        node,
        M::POST,
        "/v1/tenants/acme/acls",
        json!({"principal": "somebody", "resource": "tenant", "actions": ["admin"]}),
    )
    .await;
    assert_eq!(s, 400);
}

fn v5_opts(node: &Node, id: &str, login: &str) -> rumqttc::v5::MqttOptions {
    let (h, p) = node.mqtt.rsplit_once(':').unwrap();
    let mut o = rumqttc::v5::MqttOptions::new(id, h, p.parse().unwrap());
    o.set_credentials(
        login,
        format!("{}-password", login.rsplit(':').next().unwrap()),
    );
    o.set_keep_alive(Duration::from_secs(5));
    o
}

async fn v5_until(ev: &mut rumqttc::v5::EventLoop, mut f: impl FnMut(&rumqttc::v5::Event) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let e = tokio::time::timeout_at(deadline, ev.poll())
            .await
            .expect("an event in time")
            .expect("connection ok");
        if f(&e) {
            return;
        }
    }
}

/// Polls until a SUBACK; its reason codes, printed.
async fn v5_suback(ev: &mut rumqttc::v5::EventLoop) -> String {
    use rumqttc::v5::mqttbytes::v5::Packet;
    let mut code = String::new();
    v5_until(ev, |e| {
        if let rumqttc::v5::Event::Incoming(Packet::SubAck(a)) = e {
            code = format!("{:?}", a.return_codes);
            true
        } else {
            false
        }
    })
    .await;
    code
}

/// Polls until the loop fails; its error, printed.
async fn v5_error(ev: &mut rumqttc::v5::EventLoop) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        match tokio::time::timeout_at(deadline, ev.poll())
            .await
            .expect("an event in time")
        {
            Ok(_) => {}
            Err(e) => return format!("{e:?}"),
        }
    }
}

/// Values stored in partition 0 of acme's `stream`, read as `acme:root`.
async fn stored_values(node: &Node, stream: &str) -> Vec<String> {
    let r = http()
        .get(format!(
            "{}/v1/streams/acme/default/{stream}/records?partition=0&offset=0",
            node.url
        ))
        .basic_auth("acme:root", Some("root-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let page: Value = r.json().await.unwrap();
    page["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["value"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_acls_refuse_with_the_protocols_own_signals() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::Event;
    let tmp = tempfile::tempdir().unwrap();
    let node = node(tmp.path());
    setup(&node).await;
    // 5.0: the allowed topic is acknowledged, the other one refused 0x87
    // (rumqttc reports a refused PUBACK/SUBACK as the end of its loop).
    let (c, mut ev) = rumqttc::v5::AsyncClient::new(v5_opts(&node, "d1", "acme:device1"), 10);
    c.publish("plant/l1/temp", QoS::AtLeastOnce, false, "plant/l1/temp")
        .await
        .unwrap();
    let mut reason = None;
    v5_until(&mut ev, |e| {
        if let Event::Incoming(Packet::PubAck(a)) = e {
            reason = Some(a.reason);
            true
        } else {
            false
        }
    })
    .await;
    assert_eq!(reason, Some(PubAckReason::Success));
    c.publish("plant/l1/hum", QoS::AtLeastOnce, false, "plant/l1/hum")
        .await
        .unwrap();
    let refused = v5_error(&mut ev).await;
    assert!(
        refused.contains("PubAckFail") && refused.contains("NotAuthorized"),
        "{refused}"
    );
    // Subscribing beyond the rules: 0x87.
    let (c, mut ev) = rumqttc::v5::AsyncClient::new(v5_opts(&node, "d1", "acme:device1"), 10);
    c.subscribe("plant/#", QoS::AtLeastOnce).await.unwrap();
    let refused = v5_error(&mut ev).await;
    assert!(refused.contains("NotAuthorized"), "{refused}");
    // 3.1.1: the refused publish is acknowledged and dropped
    // (MQTT-3.3.5-2); a refused subscription gets 0x80.
    let (h, p) = node.mqtt.rsplit_once(':').unwrap();
    let mut o = rumqttc::MqttOptions::new("d1-311", h, p.parse().unwrap());
    o.set_credentials("acme:device1", "device1-password");
    let (c4, mut ev4) = rumqttc::AsyncClient::new(o, 10);
    c4.publish("plant/l2/hum", rumqttc::QoS::AtLeastOnce, false, "dropped")
        .await
        .unwrap();
    poll_until(&mut ev4, |e| {
        matches!(e, rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_)))
    })
    .await;
    c4.subscribe("plant/#", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    let mut code = String::new();
    poll_until(&mut ev4, |e| {
        if let rumqttc::Event::Incoming(rumqttc::Packet::SubAck(a)) = e {
            code = format!("{:?}", a.return_codes);
            true
        } else {
            false
        }
    })
    .await;
    assert!(code.contains("Failure"), "{code}");
    // Only the allowed publication was stored.
    assert_eq!(stored_values(&node, "plant").await, ["plant/l1/temp"]);
    // The dashboard may subscribe to the stream.
    let (d, mut dev) = rumqttc::v5::AsyncClient::new(v5_opts(&node, "dash", "acme:dash"), 10);
    d.subscribe("plant/#", QoS::AtLeastOnce).await.unwrap();
    let code = v5_suback(&mut dev).await;
    assert!(code.contains("Success"), "{code}");
    revoking_a_rule_stops_a_live_subscription(&node, &d, &mut dev).await;
    let metrics = common::metrics_as(&node.url, Some(("system:admin", ADMIN))).await;
    let series = "fjord_authorization_denials_total{action=\"publish\",protocol=\"mqtt\"} ";
    let denied: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix(series))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {metrics}"));
    assert!(denied >= 2.0, "{denied}");
}

/// The dashboard (`dash`, subscribed to `plant/#`) receives plant
/// readings until the rule that let it subscribe is deleted; from then on
/// it receives none, while what it may still read keeps arriving.
async fn revoking_a_rule_stops_a_live_subscription(
    node: &Node,
    dash: &rumqttc::v5::AsyncClient,
    dev: &mut rumqttc::v5::EventLoop,
) {
    use reqwest::Method as M;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::Event;
    let (s, b) = admin(
        node,
        M::POST,
        "/v1/tenants/acme/acls",
        json!({"principal": "user:dash", "resource": "stream:default/alerts", "actions": ["subscribe"]}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    dash.subscribe("alerts/#", QoS::AtLeastOnce).await.unwrap();
    let code = v5_suback(dev).await;
    assert!(code.contains("Success"), "{code}");
    // Published by an administrator (role admin may do anything).
    let (root, mut rev) = rumqttc::v5::AsyncClient::new(v5_opts(node, "root", "acme:root"), 10);
    let publish = |topic: &'static str| {
        let root = root.clone();
        async move {
            root.publish(topic, QoS::AtLeastOnce, false, topic)
                .await
                .unwrap()
        }
    };
    let mut received = Vec::new();
    let mut record = |e: &Event, until: &str| {
        if let Event::Incoming(Packet::Publish(p)) = e {
            received.push(String::from_utf8_lossy(&p.payload).to_string());
        }
        received.last().is_some_and(|l| l == until)
    };
    publish("plant/l3/temp").await;
    tokio::spawn(async move { while rev.poll().await.is_ok() {} });
    v5_until(dev, |e| record(e, "plant/l3/temp")).await;
    // Revoke: the stream rule goes.
    let (_, list) = admin(node, M::GET, "/v1/tenants/acme/acls", Value::Null).await;
    let id = list["acls"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["principal"] == "user:dash" && r["resource"] == "stream:default/plant")
        .and_then(|r| r["id"].as_str())
        .unwrap_or_else(|| panic!("the dashboard's rule in {list}"))
        .to_string();
    let (s, _) = admin(
        node,
        M::DELETE,
        &format!("/v1/tenants/acme/acls/{id}"),
        Value::Null,
    )
    .await;
    assert!(s == 200 || s == 204, "{s}");
    publish("plant/l4/temp").await;
    // Stored, hence published, before the alert.
    poll_until_stored(node, "plant/l4/temp").await;
    publish("alerts/a1").await;
    v5_until(dev, |e| record(e, "alerts/a1")).await;
    // Different streams are read apart: give a wrongly delivered reading
    // time to arrive after the alert.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            if let Ok(e) = dev.poll().await {
                record(&e, "");
            }
        }
    })
    .await;
    assert_eq!(received, ["plant/l3/temp", "alerts/a1"]);
}

async fn poll_until_stored(node: &Node, value: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !stored_values(node, "plant")
        .await
        .iter()
        .any(|v| v == value)
    {
        assert!(tokio::time::Instant::now() < deadline, "{value} not stored");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn scram(node: &Node, login: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &node.kafka)
        .set("broker.address.family", "v4")
        .set("security.protocol", "sasl_plaintext")
        .set("sasl.mechanism", "SCRAM-SHA-256")
        .set("sasl.username", login)
        .set(
            "sasl.password",
            format!("{}-password", login.rsplit(':').next().unwrap()),
        )
        .set("log_level", "2");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_and_http_acls_and_tenant_isolation() {
    let tmp = tempfile::tempdir().unwrap();
    let node = node(tmp.path());
    setup(&node).await;
    // acme:root (admin role) creates and fills the stream over Kafka.
    let root: FutureProducer = scram(&node, "acme:root").create().unwrap();
    for i in 0..10 {
        root.send(
            FutureRecord::to("plant").key("k").payload(&format!("r{i}")),
            Duration::from_secs(30),
        )
        .await
        .expect("root may write");
    }
    // The device's rule is on MQTT topics: Kafka writes are refused.
    let device: FutureProducer = scram(&node, "acme:device1")
        .set("message.timeout.ms", "5000")
        .create()
        .unwrap();
    let err = device
        .send(
            FutureRecord::to("plant").key("k").payload("no"),
            Duration::from_secs(30),
        )
        .await
        .expect_err("refused");
    assert!(
        matches!(
            err.0,
            KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed)
        ),
        "{err:?}"
    );
    // The dashboard reads in a group it may use ...
    let reader = |group: &str| -> StreamConsumer {
        scram(&node, "acme:dash")
            .set("group.id", group)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap()
    };
    let ok = reader("dash-1");
    ok.subscribe(&["plant"]).unwrap();
    let mut got = Vec::new();
    while got.len() < 10 {
        let m = tokio::time::timeout(Duration::from_secs(30), ok.recv())
            .await
            .expect("a message in time")
            .expect("allowed");
        got.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
    }
    assert_eq!(got, (0..10).map(|i| format!("r{i}")).collect::<Vec<_>>());
    // ... and is refused another group.
    let denied = reader("other");
    denied.subscribe(&["plant"]).unwrap();
    let err = tokio::time::timeout(Duration::from_secs(30), denied.recv())
        .await
        .expect("an answer in time")
        .expect_err("group refused");
    assert!(
        format!("{err:?}").contains("GroupAuthorizationFailed"),
        "{err:?}"
    );
    // Tenant isolation: globex:bob's metadata has no acme stream, and the
    // name `plant` in his tenant is a different (empty) stream.
    let bob: FutureProducer = scram(&node, "globex:bob").create().unwrap();
    let md = bob
        .client()
        .fetch_metadata(None, Duration::from_secs(10))
        .unwrap();
    assert!(md.topics().iter().all(|t| t.name() != "plant"));
    // HTTP: 401 without credentials (acme admits no anonymous clients, and
    // anonymous clients administer nothing here), 403 for the wrong
    // principal or tenant, 200 for the right one.
    let url = format!(
        "{}/v1/streams/acme/default/plant/records?partition=0&offset=0",
        node.url
    );
    let c = http();
    let anon = c.get(&url).send().await.unwrap();
    assert_eq!(anon.status(), 403, "anonymous public principal in acme");
    let wrong = c
        .get(&url)
        .basic_auth("acme:dash", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    assert!(wrong.headers().contains_key("www-authenticate"));
    let other_tenant = c
        .get(&url)
        .basic_auth("globex:bob", Some("bob-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(other_tenant.status(), 403);
    let write = c
        .post(format!(
            "{}/v1/streams/acme/default/plant/records",
            node.url
        ))
        .basic_auth("acme:dash", Some("dash-password"))
        .json(&json!({"records": [{"value": "x"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(write.status(), 403);
    let read = c
        .get(&url)
        .basic_auth("acme:dash", Some("dash-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), 200);
    // Listing tenants shows a tenant's principal only its own.
    let list: Value = c
        .get(format!("{}/v1/tenants", node.url))
        .basic_auth("globex:bob", Some("bob-password"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = list["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["globex"]);
    let metrics = c
        .get(format!("{}/metrics", node.url))
        .basic_auth("globex:bob", Some("bob-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), 403, "metrics are the node admin's");
    // The audit trail, read by the node admin over HTTP: logins that
    // worked and failed, denials, administration.
    let audit_url = format!(
        "{}/v1/streams/system/default/audit/records?partition=0&offset=0&max_records=1000",
        node.url
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let want = ["auth_success", "auth_failure", "denied", "admin_change"];
    loop {
        let r = c
            .get(&audit_url)
            .basic_auth("system:admin", Some(ADMIN))
            .send()
            .await
            .unwrap();
        let page: Value = if r.status() == 200 {
            r.json().await.unwrap()
        } else {
            Value::Null
        };
        let kinds: Vec<String> = page["records"]
            .as_array()
            .map(|rs| {
                rs.iter()
                    .filter_map(|r| r["value"]["kind"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if want.iter().all(|k| kinds.iter().any(|x| x == k)) {
            // No secret is ever in the trail.
            assert!(!page.to_string().contains("dash-password"));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "audit kinds: {kinds:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A tenant's admin cannot read it.
    let r = c
        .get(&audit_url)
        .basic_auth("acme:root", Some("root-password"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    // Over Kafka, as the node admin.
    let reader: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &node.kafka)
        .set("broker.address.family", "v4")
        .set("security.protocol", "sasl_plaintext")
        .set("sasl.mechanism", "SCRAM-SHA-512")
        .set("sasl.username", "system:admin")
        .set("sasl.password", ADMIN)
        .set("group.id", "auditors")
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    reader.subscribe(&["audit"]).unwrap();
    let m = tokio::time::timeout(Duration::from_secs(30), reader.recv())
        .await
        .expect("an audit record in time")
        .unwrap();
    let event: Value = serde_json::from_slice(m.payload().unwrap()).unwrap();
    assert!(event["kind"].is_string(), "{event}");
}

/// A WebSocket opened under a rule is cut when the rule goes: the
/// subscriber gets `forbidden` instead of the next record, the publisher
/// `forbidden` for its next frame; both are closed with 1008.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websockets_lose_a_revoked_grant() {
    use futures_util::SinkExt;
    use reqwest::Method as M;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    use tokio_tungstenite::tungstenite::Message;
    let tmp = tempfile::tempdir().unwrap();
    let node = node(tmp.path());
    setup(&node).await;
    for name in ["plant", "notes"] {
        let (s, b) = admin(
            &node,
            M::POST,
            "/v1/streams/acme/default",
            json!({ "name": name }),
        )
        .await;
        assert_eq!(s, 201, "{b}");
    }
    let (s, b) = admin(
        &node,
        M::POST,
        "/v1/tenants/acme/acls",
        json!({"principal": "user:dash", "resource": "stream:default/notes", "actions": ["publish"]}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (h, p) = node.addr.rsplit_once(':').unwrap();
    let open = |path: &str| {
        let mut req = format!("ws://{h}:{p}/v1/streams/acme/default/{path}")
            .into_client_request()
            .unwrap();
        use base64::Engine;
        let basic = base64::engine::general_purpose::STANDARD.encode("acme:dash:dash-password");
        req.headers_mut()
            .insert("authorization", format!("Basic {basic}").parse().unwrap());
        tokio_tungstenite::connect_async(req)
    };
    let (mut sub, _) = open("plant/ws?from=earliest").await.unwrap();
    let (mut publ, _) = open("notes/ws?mode=publish").await.unwrap();
    assert!(next_json(&mut sub).await["subscribed"].is_array());
    let produce = |value: &'static str| {
        let url = format!("{}/v1/streams/acme/default/plant/records", node.url);
        async move {
            let r = http()
                .post(url)
                .basic_auth("acme:root", Some("root-password"))
                .json(&json!({"records": [{"value": value}]}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
        }
    };
    produce("before").await;
    assert_eq!(next_json(&mut sub).await["value"], "before");
    publ.send(Message::text(r#"{"value": "n1", "id": 1}"#))
        .await
        .unwrap();
    let ack = next_json(&mut publ).await;
    assert_eq!(ack["ack"]["id"], 1, "{ack}");
    // Revoke both of dash's stream rules.
    let (_, list) = admin(&node, M::GET, "/v1/tenants/acme/acls", Value::Null).await;
    for rule in list["acls"].as_array().unwrap() {
        if rule["principal"] == "user:dash"
            && rule["resource"].as_str().unwrap().starts_with("stream:")
        {
            let path = format!("/v1/tenants/acme/acls/{}", rule["id"].as_str().unwrap());
            let (s, _) = admin(&node, M::DELETE, &path, Value::Null).await;
            assert!(s == 200 || s == 204, "{s}");
        }
    }
    produce("after").await;
    let e = next_json(&mut sub).await;
    assert_eq!(e["error"]["code"], "forbidden", "{e}");
    match next_frame(&mut sub).await {
        Some(Ok(Message::Close(Some(f)))) => assert_eq!(u16::from(f.code), 1008),
        other => panic!("a close frame, not {other:?}"),
    }
    publ.send(Message::text(r#"{"value": "n2", "id": 2}"#))
        .await
        .unwrap();
    let e = next_json(&mut publ).await;
    assert_eq!(
        (&e["error"]["code"], &e["id"]),
        (&json!("forbidden"), &json!(2)),
        "{e}"
    );
    // Nothing of the refused frame was stored.
    assert_eq!(stored_values(&node, "notes").await, ["n1"]);
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn next_frame(
    ws: &mut Ws,
) -> Option<Result<tokio_tungstenite::tungstenite::Message, tokio_tungstenite::tungstenite::Error>>
{
    use futures_util::StreamExt;
    tokio::time::timeout(Duration::from_secs(20), ws.next())
        .await
        .expect("a frame in time")
}

async fn next_json(ws: &mut Ws) -> Value {
    match next_frame(ws).await {
        Some(Ok(tokio_tungstenite::tungstenite::Message::Text(t))) => {
            serde_json::from_str(t.as_str()).unwrap()
        }
        other => panic!("a text frame, not {other:?}"),
    }
}
