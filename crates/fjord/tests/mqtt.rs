//! MQTT with a real client nobody here wrote (`rumqttc`, 3.1.1 and 5.0
//! APIs): publish into streams, live subscriptions with wildcards, QoS 0/1/2,
//! MQTT ↔ HTTP both ways, and bad input that closes only its connection.

mod common;

use std::io::{Read, Write};
use std::time::Duration;

use common::{http, metric, poll_until, Node};
use serde_json::{json, Value};

fn host_port(node: &Node) -> (String, u16) {
    let (h, p) = node.mqtt.rsplit_once(':').unwrap();
    (h.to_string(), p.parse().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v311_publish_subscribe_and_cross_protocol() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let (host, port) = host_port(&node);

    let mut sub_opts = MqttOptions::new("sub-1", host.clone(), port);
    sub_opts.set_keep_alive(Duration::from_secs(5));
    let (sub, mut sub_ev) = AsyncClient::new(sub_opts, 100);
    sub.subscribe("plant1/+/temp", QoS::AtLeastOnce)
        .await
        .unwrap();
    poll_until(&mut sub_ev, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await;

    let mut pub_opts = MqttOptions::new("pub-1", host.clone(), port);
    pub_opts.set_keep_alive(Duration::from_secs(5));
    let (publisher, mut pub_ev) = AsyncClient::new(pub_opts, 200);
    // Drive the publisher's event loop for the whole test, counting acks.
    let (acks_tx, mut acks) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(e) = pub_ev.poll().await {
            if let Event::Incoming(Packet::PubAck(_)) = e {
                let _ = acks_tx.send(());
            }
        }
    });
    for i in 0..50 {
        publisher
            .publish(
                "plant1/line4/temp",
                QoS::AtLeastOnce,
                false,
                format!("t{i}"),
            )
            .await
            .unwrap();
        publisher
            .publish("plant1/line4/hum", QoS::AtMostOnce, false, "no match")
            .await
            .unwrap();
        publisher
            .publish("plant2/line4/temp", QoS::AtMostOnce, false, "no match")
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    poll_until(&mut sub_ev, |e| {
        if let Event::Incoming(Packet::Publish(p)) = e {
            assert_eq!(p.topic, "plant1/line4/temp");
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
        got.len() == 50
    })
    .await;
    assert_eq!(
        got,
        (0..50).map(|i| format!("t{i}")).collect::<Vec<_>>(),
        "all, once, in order"
    );
    for _ in 0..50 {
        tokio::time::timeout(Duration::from_secs(20), acks.recv())
            .await
            .unwrap()
            .unwrap();
    }

    // MQTT → HTTP: the stream named by the first level holds the messages,
    // topic and QoS in headers, keyed by topic.
    let c = http();
    // QoS 0 publishes have no acknowledgement to wait for: poll until the
    // last of them is stored (with a deadline).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let v: Value = loop {
        let v: Value = c
            .get(format!(
                "{}/v1/streams/public/default/plant1/records?from=earliest&max_records=1000",
                node.url
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if v["records"].as_array().unwrap().len() >= 100 || tokio::time::Instant::now() > deadline {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let recs = v["records"].as_array().unwrap();
    assert_eq!(recs.len(), 100);
    let first = recs.iter().find(|r| r["value"] == "t0").unwrap();
    assert_eq!(first["key"], "plant1/line4/temp");
    let header = |r: &Value, k: &str| {
        r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h["key"] == k)
            .map(|h| h["value"].clone())
    };
    assert_eq!(
        header(first, "mqtt.topic"),
        Some(json!("plant1/line4/temp"))
    );
    assert_eq!(header(first, "mqtt.qos"), Some(json!("1")));

    // HTTP → MQTT: a record keyed `line9/temp` routes as `plant1/line9/temp`.
    let r = c
        .post(format!(
            "{}/v1/streams/public/default/plant1/records",
            node.url
        ))
        .json(&json!({"key": "line9/temp", "value": "from http"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    poll_until(&mut sub_ev, |e| match e {
        Event::Incoming(Packet::Publish(p)) => {
            assert_eq!(
                (p.topic.as_str(), &p.payload[..]),
                ("plant1/line9/temp", &b"from http"[..])
            );
            true
        }
        _ => false,
    })
    .await;

    // A wildcard subscription also sees streams created after it.
    sub.subscribe("#", QoS::AtMostOnce).await.unwrap();
    poll_until(&mut sub_ev, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await;
    publisher
        .publish("brand-new/x", QoS::AtLeastOnce, false, "fresh")
        .await
        .unwrap();
    poll_until(&mut sub_ev, |e| matches!(e, Event::Incoming(Packet::Publish(p)) if p.topic == "brand-new/x" && &p.payload[..] == b"fresh")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_properties_and_qos2() {
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let (host, port) = host_port(&node);
    let mut opts = MqttOptions::new("v5-sub", host.clone(), port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (sub, mut sub_ev) = AsyncClient::new(opts, 100);
    sub.subscribe("sensors/#", QoS::ExactlyOnce).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Event::Incoming(Packet::SubAck(a)) = tokio::time::timeout_at(deadline, sub_ev.poll())
            .await
            .unwrap()
            .unwrap()
        {
            assert_eq!(a.return_codes.len(), 1);
            break;
        }
    }
    let mut opts = MqttOptions::new("v5-pub", host, port);
    opts.set_keep_alive(Duration::from_secs(5));
    let (publisher, mut pub_ev) = AsyncClient::new(opts, 100);
    tokio::spawn(async move { while pub_ev.poll().await.is_ok() {} });
    let props = PublishProperties {
        content_type: Some("application/json".into()),
        response_topic: Some("replies/1".into()),
        correlation_data: Some(bytes::Bytes::from_static(b"corr")),
        user_properties: vec![
            ("site".into(), "north".into()),
            ("site".into(), "south".into()),
        ],
        ..Default::default()
    };
    publisher
        .publish_with_properties(
            "sensors/t1",
            QoS::ExactlyOnce,
            false,
            r#"{"t":1}"#,
            props.clone(),
        )
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Packet::Publish(p)) =
            tokio::time::timeout_at(deadline, sub_ev.poll())
                .await
                .unwrap()
                .unwrap()
        {
            assert_eq!(&p.topic[..], b"sensors/t1");
            assert_eq!(p.qos, QoS::ExactlyOnce);
            let got = p.properties.expect("properties forwarded");
            assert_eq!(got.content_type, props.content_type);
            assert_eq!(got.response_topic, props.response_topic);
            assert_eq!(got.correlation_data, props.correlation_data);
            assert_eq!(got.user_properties, props.user_properties);
            break;
        }
    }
}

/// Raw bytes: what a broken or hostile client sends.
fn raw(node: &Node) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(&node.mqtt).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s
}

fn closed(mut s: std::net::TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    rest
}

const CONNECT_V311: [u8; 16] = [
    0x10, 14, 0, 4, b'M', b'Q', b'T', b'T', 4, 0b10, 0, 30, 0, 2, b'c', b'1',
];
const CONNECT_V5: [u8; 17] = [
    0x10, 15, 0, 4, b'M', b'Q', b'T', b'T', 5, 0b10, 0, 30, 0, 0, 2, b'c', b'2',
];

#[tokio::test]
async fn bad_input_closes_only_that_connection() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start_with(tmp.path(), &[], |cmd| {
        cmd.env("FJORD_MQTT__CONNECT_TIMEOUT_MS", "300");
    });

    // A CONNECT that never finishes (slowloris) is dropped after the
    // connect timeout.
    let mut s = raw(&node);
    s.write_all(&CONNECT_V311[..5]).unwrap();
    let started = std::time::Instant::now();
    assert!(closed(s).is_empty());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "closed by the connect timeout"
    );

    // Not MQTT at all.
    let mut s = raw(&node);
    s.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
    assert!(closed(s).is_empty());

    // Unsupported protocol level: CONNACK "unacceptable protocol version".
    let mut s = raw(&node);
    let mut c = CONNECT_V311;
    c[8] = 9;
    s.write_all(&c).unwrap();
    assert_eq!(closed(s), [0x20, 2, 0, 1]);

    // 3.1.1: a wildcard in a PUBLISH topic closes the connection.
    let mut s = raw(&node);
    s.write_all(&CONNECT_V311).unwrap();
    s.write_all(&[0x30, 5, 0, 3, b'a', b'/', b'#']).unwrap();
    let rest = closed(s);
    assert_eq!(&rest[..4], &[0x20, 2, 0, 0], "CONNACK, then the close");
    assert_eq!(rest.len(), 4);

    // 5.0: the same gets DISCONNECT "topic name invalid" (0x90) first.
    let mut s = raw(&node);
    s.write_all(&CONNECT_V5).unwrap();
    s.write_all(&[0x30, 6, 0, 3, b'a', b'/', b'+', 0]).unwrap();
    let rest = closed(s);
    let connack_len = 2 + rest[1] as usize;
    assert_eq!(rest[connack_len], 0xe0, "a DISCONNECT follows the CONNACK");
    assert_eq!(rest[connack_len + 2], 0x90);

    // Invalid UTF-8 in a topic: malformed (0x81).
    let mut s = raw(&node);
    s.write_all(&CONNECT_V5).unwrap();
    s.write_all(&[0x30, 4, 0, 1, 0xff, 0]).unwrap();
    let rest = closed(s);
    let connack_len = 2 + rest[1] as usize;
    assert_eq!((rest[connack_len], rest[connack_len + 2]), (0xe0, 0x81));

    // A bad packet right behind a good one in the same read is not skipped.
    let mut s = raw(&node);
    s.write_all(&CONNECT_V5).unwrap();
    s.write_all(&[0xc0, 0, 0x30, 6, 0, 3, b'a', b'/', b'#', 0])
        .unwrap();
    let rest = closed(s);
    let connack_len = 2 + rest[1] as usize;
    assert_eq!(
        &rest[connack_len..connack_len + 2],
        &[0xd0, 0],
        "PINGRESP first"
    );
    assert_eq!(
        (rest[connack_len + 2], rest[connack_len + 4]),
        (0xe0, 0x90),
        "then DISCONNECT 0x90"
    );

    // A packet before CONNECT.
    let mut s = raw(&node);
    s.write_all(&[0xc0, 0]).unwrap();
    assert!(closed(s).is_empty());

    // The broker still serves.
    let mut s = raw(&node);
    s.write_all(&CONNECT_V311).unwrap();
    s.write_all(&[0xc0, 0]).unwrap();
    let mut buf = [0u8; 6];
    s.read_exact(&mut buf).unwrap();
    assert_eq!(buf, [0x20, 2, 0, 0, 0xd0, 0], "CONNACK then PINGRESP");

    // The closes are counted, by reason.
    let bad_topics = common::metric(
        &node.url,
        "fjord_protocol_errors_total{protocol=\"mqtt\",reason=\"0x90\"}",
    )
    .await;
    assert!(bad_topics >= 2.0, "{bad_topics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_messages_set_clear_and_survive_restart() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::start(tmp.path());

    async fn client(node: &Node, id: &str) -> (AsyncClient, rumqttc::EventLoop) {
        let (host, port) = host_port(node);
        let mut o = MqttOptions::new(id, host, port);
        o.set_keep_alive(Duration::from_secs(5));
        AsyncClient::new(o, 100)
    }
    async fn publish_acked(node: &Node, topic: &str, payload: &str, retain: bool) {
        let (c, mut ev) = client(node, "setter").await;
        c.publish(topic, QoS::AtLeastOnce, retain, payload.to_string())
            .await
            .unwrap();
        poll_until(&mut ev, |e| matches!(e, Event::Incoming(Packet::PubAck(_)))).await;
        c.disconnect().await.unwrap();
        let _ = tokio::time::timeout(Duration::from_secs(5), async {
            while ev.poll().await.is_ok() {}
        })
        .await;
    }
    /// Subscribes and returns the first message that arrives.
    async fn first_after_subscribe(
        node: &Node,
        id: &str,
        filter: &str,
        then_publish: Option<&str>,
    ) -> rumqttc::Publish {
        let (c, mut ev) = client(node, id).await;
        c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
        poll_until(&mut ev, |e| matches!(e, Event::Incoming(Packet::SubAck(_)))).await;
        if let Some(t) = then_publish {
            publish_acked(node, t, "marker", false).await;
        }
        let mut got = None;
        poll_until(&mut ev, |e| {
            if let Event::Incoming(Packet::Publish(p)) = e {
                got = Some(p.clone());
                true
            } else {
                false
            }
        })
        .await;
        got.unwrap()
    }

    publish_acked(&node, "state/dev1", "on", true).await;
    let p = first_after_subscribe(&node, "s1", "state/+", None).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("state/dev1", &b"on"[..], true)
    );

    // An empty retained payload clears it; a new subscriber then gets only
    // what is published after it subscribed.
    publish_acked(&node, "state/dev1", "", true).await;
    let p = first_after_subscribe(&node, "s2", "state/#", Some("state/marker")).await;
    assert_eq!((p.topic.as_str(), p.retain), ("state/marker", false));

    // Retained messages survive a restart.
    publish_acked(&node, "state/dev2", "off", true).await;
    assert!(node.terminate().success());
    let node = Node::start(tmp.path());
    let p = first_after_subscribe(&node, "s3", "state/+", None).await;
    assert_eq!(
        (p.topic.as_str(), &p.payload[..], p.retain),
        ("state/dev2", &b"off"[..], true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_websocket_meets_mqtt_over_tcp() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, Transport};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    // A WebSocket subscriber (rumqttc takes the ws:// URL as the host).
    let (ws_host, ws_port) = node.mqtt_ws.rsplit_once(':').unwrap();
    let mut o = MqttOptions::new(
        "ws-sub",
        format!("ws://{ws_host}:{ws_port}/mqtt"),
        ws_port.parse().unwrap(),
    );
    o.set_transport(Transport::Ws);
    o.set_keep_alive(Duration::from_secs(5));
    let (sub, mut sub_ev) = AsyncClient::new(o, 100);
    sub.subscribe("ws/#", QoS::AtLeastOnce).await.unwrap();
    poll_until(&mut sub_ev, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await;
    // A TCP publisher.
    let (host, port) = host_port(&node);
    let mut o = MqttOptions::new("tcp-pub", host, port);
    o.set_keep_alive(Duration::from_secs(5));
    let (publisher, mut pub_ev) = AsyncClient::new(o, 100);
    tokio::spawn(async move { while pub_ev.poll().await.is_ok() {} });
    for i in 0..20 {
        publisher
            .publish("ws/a", QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    poll_until(&mut sub_ev, |e| {
        if let Event::Incoming(Packet::Publish(p)) = e {
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
        got.len() == 20
    })
    .await;
    assert_eq!(got, (0..20).map(|i| format!("m{i}")).collect::<Vec<_>>());

    // Wrong path or no `mqtt` subprotocol: refused at the handshake.
    let err = tokio_tungstenite::connect_async(format!("ws://{}/elsewhere", node.mqtt_ws))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("404"), "{err}");
    let err = tokio_tungstenite::connect_async(format!("ws://{}/mqtt", node.mqtt_ws))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("400"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topic_mapping_rules_from_the_admin_api_and_cli() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    // Through the CLI.
    let out = std::process::Command::new(common::bin())
        .args([
            "mqtt",
            "rules",
            "default",
            "--set",
            "factory/+/alarms/#=alarms",
            "--set",
            "factory/#=telemetry",
        ])
        .env("FJORD_URL", &node.url)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let shown = String::from_utf8(out.stdout).unwrap();
    assert_eq!(
        shown,
        "factory/+/alarms/#\t→ alarms\nfactory/#\t→ telemetry\n"
    );
    // A bad rule is refused by the admin API with a clear error.
    let r = http()
        .put(format!("{}/v1/tenants/public/namespaces/default", node.url))
        .json(&json!({"policy": {"mqtt_topic_rules": [{"filter": "a/#/b", "stream": "x"}]}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.text().await.unwrap().contains("mqtt_topic_rules[0]"));

    let (host, port) = host_port(&node);
    let mut o = MqttOptions::new("rules", host, port);
    o.set_keep_alive(Duration::from_secs(5));
    let (c, mut ev) = AsyncClient::new(o, 100);
    c.subscribe("factory/#", QoS::AtLeastOnce).await.unwrap();
    poll_until(&mut ev, |e| matches!(e, Event::Incoming(Packet::SubAck(_)))).await;
    c.publish("factory/f1/alarms/fire", QoS::AtLeastOnce, false, "fire!")
        .await
        .unwrap();
    c.publish("factory/f1/temp", QoS::AtLeastOnce, false, "20C")
        .await
        .unwrap();
    let mut topics = Vec::new();
    poll_until(&mut ev, |e| {
        if let Event::Incoming(Packet::Publish(p)) = e {
            topics.push(p.topic.clone());
        }
        topics.len() == 2
    })
    .await;
    topics.sort();
    assert_eq!(topics, ["factory/f1/alarms/fire", "factory/f1/temp"]);
    // Each landed in the stream its rule names.
    for (stream, value) in [("alarms", "fire!"), ("telemetry", "20C")] {
        let v: Value = http()
            .get(format!(
                "{}/v1/streams/public/default/{stream}/records?from=earliest",
                node.url
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(v["records"][0]["value"], value, "{stream}: {v}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_sessions_queue_in_the_log_and_survive_restart() {
    use rumqttc::{AsyncClient, ConnAck, Event, MqttOptions, Packet, QoS};
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::start(tmp.path());

    fn options(node: &Node, id: &str, clean: bool) -> MqttOptions {
        let (host, port) = host_port(node);
        let mut o = MqttOptions::new(id, host, port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_clean_session(clean);
        o
    }
    /// Connects and returns the client, its loop and CONNACK's session present.
    async fn connect(
        node: &Node,
        id: &str,
        clean: bool,
    ) -> (AsyncClient, rumqttc::EventLoop, bool) {
        let (c, mut ev) = AsyncClient::new(options(node, id, clean), 100);
        let mut present = None;
        poll_until(&mut ev, |e| {
            if let Event::Incoming(Packet::ConnAck(ConnAck {
                session_present, ..
            })) = e
            {
                present = Some(*session_present);
                true
            } else {
                false
            }
        })
        .await;
        (c, ev, present.unwrap())
    }
    async fn publish_n(node: &Node, from: usize, n: usize) {
        let (c, mut ev, _) = connect(node, "producer", true).await;
        for i in from..from + n {
            c.publish("dev/a", QoS::AtLeastOnce, false, format!("m{i}"))
                .await
                .unwrap();
        }
        let mut acked = 0;
        poll_until(&mut ev, |e| {
            if matches!(e, Event::Incoming(Packet::PubAck(_))) {
                acked += 1;
            }
            acked == n
        })
        .await;
    }
    async fn receive(ev: &mut rumqttc::EventLoop, n: usize) -> Vec<String> {
        let mut got = Vec::new();
        poll_until(ev, |e| {
            if let Event::Incoming(Packet::Publish(p)) = e {
                got.push(String::from_utf8(p.payload.to_vec()).unwrap());
            }
            got.len() == n
        })
        .await;
        got
    }

    // Subscribe in a persistent session, then go away.
    let (c, mut ev, present) = connect(&node, "field-1", false).await;
    assert!(!present);
    c.subscribe("dev/+", QoS::AtLeastOnce).await.unwrap();
    poll_until(&mut ev, |e| matches!(e, Event::Incoming(Packet::SubAck(_)))).await;
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while ev.poll().await.is_ok() {}
    })
    .await;

    // Messages published while it is away wait in the log.
    publish_n(&node, 0, 10).await;
    let (c, mut ev, present) = connect(&node, "field-1", false).await;
    assert!(present, "the session is there");
    assert_eq!(
        receive(&mut ev, 10).await,
        (0..10).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while ev.poll().await.is_ok() {}
    })
    .await;

    // And across a broker restart.
    publish_n(&node, 10, 5).await;
    assert!(node.terminate().success());
    let node = Node::start(tmp.path());
    let (c, mut ev, present) = connect(&node, "field-1", false).await;
    assert!(present, "the session survived the restart");
    assert_eq!(
        receive(&mut ev, 5).await,
        (10..15).map(|i| format!("m{i}")).collect::<Vec<_>>()
    );
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while ev.poll().await.is_ok() {}
    })
    .await;

    // A clean session discards it.
    let (_c, _ev, present) = connect(&node, "field-1", true).await;
    assert!(!present);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wills_and_session_takeover() {
    use rumqttc::{AsyncClient, Event, LastWill, MqttOptions, Packet, QoS};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let (host, port) = host_port(&node);
    let opts = |id: &str| {
        let mut o = MqttOptions::new(id, host.clone(), port);
        o.set_keep_alive(Duration::from_secs(5));
        o
    };
    let (watcher, mut wev) = AsyncClient::new(opts("watcher"), 100);
    watcher
        .subscribe("wills/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    poll_until(&mut wev, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await;

    // A client that vanishes without DISCONNECT leaves its will behind.
    let mut o = opts("fragile");
    o.set_last_will(LastWill::new(
        "wills/fragile",
        "gone",
        QoS::AtLeastOnce,
        false,
    ));
    let (_fragile, mut fev) = AsyncClient::new(o, 10);
    poll_until(&mut fev, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await;
    drop(fev); // the socket closes, no DISCONNECT
    poll_until(&mut wev, |e| matches!(e, Event::Incoming(Packet::Publish(p)) if p.topic == "wills/fragile" && &p.payload[..] == b"gone")).await;

    // A clean DISCONNECT discards the will.
    let mut o = opts("polite");
    o.set_last_will(LastWill::new(
        "wills/polite",
        "should not appear",
        QoS::AtLeastOnce,
        false,
    ));
    let (polite, mut pev) = AsyncClient::new(o, 10);
    poll_until(&mut pev, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await;
    polite.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while pev.poll().await.is_ok() {}
    })
    .await;

    // Takeover: a second connection with the same client id closes the first.
    let (_first, mut ev1) = AsyncClient::new(opts("twin"), 10);
    poll_until(&mut ev1, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await;
    let (_second, mut ev2) = AsyncClient::new(opts("twin"), 10);
    poll_until(&mut ev2, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if ev1.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the first connection was closed");

    // Only the vanished client's will was published.
    let publisher_marker = {
        let (m, mut mev) = AsyncClient::new(opts("marker"), 10);
        tokio::spawn(async move { while mev.poll().await.is_ok() {} });
        m
    };
    publisher_marker
        .publish("wills/marker", QoS::AtLeastOnce, false, "end")
        .await
        .unwrap();
    let mut next = None;
    poll_until(&mut wev, |e| {
        if let Event::Incoming(Packet::Publish(p)) = e {
            next = Some(p.topic.clone());
            true
        } else {
            false
        }
    })
    .await;
    assert_eq!(
        next.as_deref(),
        Some("wills/marker"),
        "no will from the polite client"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_subscriptions_spread_and_hand_over() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let (host, port) = host_port(&node);
    let opts = |id: &str| {
        let mut o = MqttOptions::new(id, host.clone(), port);
        o.set_keep_alive(Duration::from_secs(5));
        o
    };
    // Two members of group "workers"; each acknowledges what it gets.
    let (tx, mut got) = tokio::sync::mpsc::unbounded_channel::<(usize, String)>();
    let mut members = Vec::new();
    for m in 0..2 {
        let (c, mut ev) = AsyncClient::new(opts(&format!("worker-{m}")), 100);
        c.subscribe("$share/workers/jobs/+", QoS::AtLeastOnce)
            .await
            .unwrap();
        poll_until(&mut ev, |e| matches!(e, Event::Incoming(Packet::SubAck(_)))).await;
        let tx = tx.clone();
        members.push((
            c,
            tokio::spawn(async move {
                while let Ok(e) = ev.poll().await {
                    if let Event::Incoming(Packet::Publish(p)) = e {
                        let _ = tx.send((m, String::from_utf8(p.payload.to_vec()).unwrap()));
                    }
                }
            }),
        ));
    }
    let (publisher, mut pev) = AsyncClient::new(opts("boss"), 100);
    tokio::spawn(async move { while pev.poll().await.is_ok() {} });
    for i in 0..40 {
        publisher
            .publish("jobs/build", QoS::AtLeastOnce, false, format!("job{i}"))
            .await
            .unwrap();
    }
    let mut seen = std::collections::BTreeMap::new();
    let mut per_member = [0usize; 2];
    while seen.len() < 40 {
        let (m, job) = tokio::time::timeout(Duration::from_secs(20), got.recv())
            .await
            .expect("all jobs delivered")
            .unwrap();
        per_member[m] += 1;
        assert!(
            seen.insert(job.clone(), m).is_none(),
            "{job} delivered twice"
        );
    }
    assert!(
        per_member[0] > 0 && per_member[1] > 0,
        "spread over both members: {per_member:?}"
    );

    // One member leaves; the other gets everything after.
    let (c0, t0) = members.remove(0);
    c0.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), t0).await;
    for i in 40..50 {
        publisher
            .publish("jobs/build", QoS::AtLeastOnce, false, format!("job{i}"))
            .await
            .unwrap();
    }
    while seen.len() < 50 {
        let (m, job) = tokio::time::timeout(Duration::from_secs(20), got.recv())
            .await
            .expect("jobs after the leave")
            .unwrap();
        if seen.insert(job.clone(), m).is_none() {
            assert_eq!(m, 1, "{job} went to the member that left");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sys_topics_report_broker_statistics() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let (host, port) = host_port(&node);
    let mut o = MqttOptions::new("sys-reader", host.clone(), port);
    o.set_keep_alive(Duration::from_secs(5));
    let (c, mut ev) = AsyncClient::new(o, 100);
    c.subscribe("$SYS/broker/#", QoS::AtMostOnce).await.unwrap();
    let mut version = None;
    poll_until(&mut ev, |e| {
        if let Event::Incoming(Packet::Publish(p)) = e {
            if p.topic == "$SYS/broker/version" {
                version = Some(String::from_utf8(p.payload.to_vec()).unwrap());
                return true;
            }
        }
        false
    })
    .await;
    assert_eq!(version.as_deref(), Some(env!("CARGO_PKG_VERSION")));
    // "#" does not see $SYS (MQTT-4.7.2-1), and clients cannot publish there.
    let mut o = MqttOptions::new("intruder", host, port);
    o.set_keep_alive(Duration::from_secs(5));
    let (bad, mut bev) = AsyncClient::new(o, 10);
    bad.publish("$SYS/broker/version", QoS::AtLeastOnce, false, "fake")
        .await
        .unwrap();
    let refused = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if bev.poll().await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(refused.is_ok(), "a publish to $SYS closes the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn v5_message_expiry_while_the_session_is_away() {
    use rumqttc::v5::mqttbytes::v5::{ConnectProperties, Packet, PublishProperties};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let (host, port) = host_port(&node);
    let session_opts = || {
        let mut o = MqttOptions::new("expiring", host.clone(), port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_clean_start(false);
        o.set_connect_properties(ConnectProperties {
            session_expiry_interval: Some(60),
            ..ConnectProperties::new()
        });
        o
    };
    let deadline = || tokio::time::Instant::now() + Duration::from_secs(20);
    // Subscribe in a 5.0 session that outlives the connection, then leave.
    let (c, mut ev) = AsyncClient::new(session_opts(), 100);
    c.subscribe("exp/#", QoS::AtLeastOnce).await.unwrap();
    let d = deadline();
    while !matches!(
        tokio::time::timeout_at(d, ev.poll())
            .await
            .unwrap()
            .unwrap(),
        Event::Incoming(Packet::SubAck(_))
    ) {}
    c.disconnect().await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while ev.poll().await.is_ok() {}
    })
    .await;

    // While it is away: one message that expires in 1 s, one that lasts.
    let mut o = MqttOptions::new("exp-pub", host.clone(), port);
    o.set_keep_alive(Duration::from_secs(5));
    let (p, mut pev) = AsyncClient::new(o, 100);
    let short = PublishProperties {
        message_expiry_interval: Some(1),
        ..Default::default()
    };
    let long = PublishProperties {
        message_expiry_interval: Some(600),
        ..Default::default()
    };
    p.publish_with_properties("exp/short", QoS::AtLeastOnce, false, "gone soon", short)
        .await
        .unwrap();
    p.publish_with_properties("exp/long", QoS::AtLeastOnce, false, "still here", long)
        .await
        .unwrap();
    let d = deadline();
    let mut acked = 0;
    while acked < 2 {
        if let Event::Incoming(Packet::PubAck(_)) = tokio::time::timeout_at(d, pev.poll())
            .await
            .unwrap()
            .unwrap()
        {
            acked += 1;
        }
    }
    // Expiry is a matter of time passing.
    tokio::time::sleep(Duration::from_millis(2100)).await;

    let (_c, mut ev) = AsyncClient::new(session_opts(), 100);
    let d = deadline();
    let first = loop {
        if let Event::Incoming(Packet::Publish(p)) = tokio::time::timeout_at(d, ev.poll())
            .await
            .unwrap()
            .unwrap()
        {
            break p;
        }
    };
    assert_eq!(
        &first.topic[..],
        b"exp/long",
        "the expired message is not delivered"
    );
    let left = first
        .properties
        .and_then(|p| p.message_expiry_interval)
        .expect("remaining expiry forwarded");
    assert!(left > 0 && left <= 600, "{left}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_too_large_for_its_stream_is_refused_in_the_ack() {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let r = http()
        .post(format!("{}/v1/streams/public/default", node.url))
        .json(&json!({"name": "small", "policy": {"max_message_bytes": 1000}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let (host, port) = host_port(&node);
    let mut o = MqttOptions::new("big-sender", host, port);
    o.set_keep_alive(Duration::from_secs(5));
    let (c, mut ev) = AsyncClient::new(o, 10);
    c.publish("small/x", QoS::AtLeastOnce, false, vec![b'x'; 5000])
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    // rumqttc reports a negative PUBACK as an error of its event loop.
    let refused = loop {
        match tokio::time::timeout_at(deadline, ev.poll()).await.unwrap() {
            Err(rumqttc::v5::ConnectionError::MqttState(rumqttc::v5::StateError::PubAckFail {
                reason,
            })) => break reason,
            Err(e) => panic!("{e}"),
            Ok(_) => {}
        }
    };
    assert_eq!(
        refused,
        rumqttc::v5::mqttbytes::v5::PubAckReason::ImplementationSpecificError
    );
    // A message that fits is stored.
    let (host, port) = host_port(&node);
    let mut o = MqttOptions::new("small-sender", host, port);
    o.set_keep_alive(Duration::from_secs(5));
    let (c2, mut ev2) = AsyncClient::new(o, 10);
    c2.publish("small/x", QoS::AtLeastOnce, false, "fits")
        .await
        .unwrap();
    loop {
        if let Event::Incoming(Packet::PubAck(a)) = tokio::time::timeout_at(deadline, ev2.poll())
            .await
            .unwrap()
            .unwrap()
        {
            assert_eq!(a.reason, rumqttc::v5::mqttbytes::v5::PubAckReason::Success);
            break;
        }
    }
    // Only the one that fits was stored.
    let v: Value = http()
        .get(format!(
            "{}/v1/streams/public/default/small/records?from=earliest",
            node.url
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["records"].as_array().unwrap().len(), 1);
}

/// An ephemeral stream and a subscriber that stops reading: QoS 0 traffic is
/// dropped for it (the ring keeps the newest), counted in `/metrics`, the
/// broker does not buffer without bound, and once it reads again it gets
/// the newest messages, in order. Other subscribers are not held back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ephemeral_qos0_to_a_slow_subscriber_is_dropped_and_counted() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let (s, v) = {
        let r = http()
            .post(format!("{}/v1/streams/public/default", node.url))
            .json(&json!({"name": "fast", "policy": {"ephemeral": true, "ephemeral_bytes_max": 262144}}))
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.text().await.unwrap())
    };
    assert_eq!(s, 201, "{v}");

    // The slow subscriber: subscribes, then does not read its socket.
    let mut slow = raw(&node);
    slow.write_all(&CONNECT_V311).unwrap();
    let mut ack = [0u8; 4];
    slow.read_exact(&mut ack).unwrap();
    assert_eq!(ack, [0x20, 2, 0, 0]);
    slow.write_all(&[0x82, 11, 0, 1, 0, 6, b'f', b'a', b's', b't', b'/', b'#', 0])
        .unwrap();
    let mut suback = [0u8; 5];
    slow.read_exact(&mut suback).unwrap();
    assert_eq!(suback, [0x90, 3, 0, 1, 0]);

    // A subscriber that keeps up, to see the end of the run.
    let (host, port) = host_port(&node);
    let (fast_sub, mut fev) = AsyncClient::new(MqttOptions::new("keeps-up", &host, port), 10);
    fast_sub.subscribe("fast/#", QoS::AtMostOnce).await.unwrap();
    poll_until(&mut fev, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await;

    let n = 20_000usize;
    let (publisher, mut pev) = AsyncClient::new(MqttOptions::new("firehose", &host, port), 100);
    tokio::spawn(async move { while pev.poll().await.is_ok() {} });
    tokio::spawn(async move {
        for i in 0..n {
            let payload = format!("{i:08}{}", "x".repeat(1000));
            publisher
                .publish("fast/t", QoS::AtMostOnce, false, payload)
                .await
                .unwrap();
        }
    });
    // The keeping-up subscriber sees the last message.
    let last = format!("{:08}", n - 1);
    poll_until(&mut fev, |e| {
        matches!(e, Event::Incoming(Packet::Publish(p)) if p.payload.starts_with(last.as_bytes()))
    })
    .await;

    // Drops for the slow one are counted, and the broker held no backlog
    // of its own for it beyond the ring and the bounded queues.
    let skipped = metric(
        &node.url,
        "fjord_subscriber_skipped_records_total{protocol=\"mqtt\"}",
    )
    .await;
    assert!(skipped > 0.0, "drops counted");

    // Reading again, the slow subscriber gets what the socket and the
    // queues held, then, after a gap, the newest messages in order.
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = Vec::new();
    let mut seqs = Vec::new();
    let mut chunk = vec![0u8; 1 << 16];
    while seqs.last() != Some(&(n - 1)) {
        let k = slow
            .read(&mut chunk)
            .expect("the slow subscriber's stream goes on");
        assert!(k > 0, "connection kept");
        buf.extend_from_slice(&chunk[..k]);
        // Split whole PUBLISH packets (QoS 0: header, length, topic, payload).
        loop {
            if buf.len() < 2 {
                break;
            }
            let (mut len, mut mult, mut i) = (0usize, 1usize, 1usize);
            loop {
                let b = buf[i];
                len += (b & 0x7f) as usize * mult;
                mult *= 128;
                i += 1;
                if b & 0x80 == 0 || i >= buf.len() {
                    break;
                }
            }
            if buf.len() < i + len {
                break;
            }
            let body = &buf[i..i + len];
            let tlen = u16::from_be_bytes([body[0], body[1]]) as usize;
            let seq: usize = std::str::from_utf8(&body[2 + tlen..2 + tlen + 8])
                .unwrap()
                .parse()
                .unwrap();
            seqs.push(seq);
            buf.drain(..i + len);
        }
    }
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "in order, no repeats");
    eprintln!(
        "slow subscriber got {} of {n}; skipped metric {skipped}",
        seqs.len()
    );
    assert!(seqs.len() < n, "some were dropped: got {}", seqs.len());
}

/// On a stream with durability `always`, each PUBACK waits for an fsync
/// that covers the message: one message at a time, by the time each ack
/// arrives one more fsync has completed. With `os` the same acks need none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn puback_waits_for_the_fsync_the_durability_policy_asks_for() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    for (name, durability) in [("safe", "always"), ("quick", "os")] {
        let r = http()
            .post(format!("{}/v1/streams/public/default", node.url))
            .json(&json!({"name": name, "policy": {"durability": durability}}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 201);
    }
    let (host, port) = host_port(&node);
    let (c, mut ev) = AsyncClient::new(MqttOptions::new("careful", &host, port), 10);
    poll_until(&mut ev, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await;
    let fsyncs = || metric(&node.url, "fjord_fsync_seconds_count");
    let n = 20;
    let mut counts = Vec::new();
    for stream in ["safe", "quick"] {
        let before = fsyncs().await;
        for i in 0..n {
            c.publish(
                format!("{stream}/m"),
                QoS::AtLeastOnce,
                false,
                format!("{i}"),
            )
            .await
            .unwrap();
            poll_until(&mut ev, |e| matches!(e, Event::Incoming(Packet::PubAck(_)))).await;
            if stream == "safe" {
                // Completed fsyncs are counted before the ack is released.
                let done = fsyncs().await - before;
                assert!(
                    done >= (i + 1) as f64,
                    "ack {i} arrived after {done} fsyncs"
                );
            }
        }
        counts.push(fsyncs().await - before);
    }
    assert!(
        counts[0] >= n as f64,
        "always: {} fsyncs for {n} acks",
        counts[0]
    );
    assert!(
        counts[1] < n as f64 / 2.0,
        "os: {} fsyncs for {n} acks",
        counts[1]
    );
}

/// MQTT-3.1.2-24: a client silent for 1.5 × its keep alive is cut (its
/// will published, as for a network failure); one that keeps pinging stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_client_is_cut_after_one_and_a_half_keep_alives() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let (host, port) = host_port(&node);
    let mut o = MqttOptions::new("watcher", host.clone(), port);
    o.set_keep_alive(Duration::from_secs(5));
    let (watcher, mut wev) = AsyncClient::new(o, 100);
    watcher
        .subscribe("wills/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    poll_until(&mut wev, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await;
    // A well-behaved client with a 1 s keep alive (rumqttc pings).
    let mut o = MqttOptions::new("pinger", host.clone(), port);
    o.set_keep_alive(Duration::from_secs(1));
    let (_pinger, mut pev) = AsyncClient::new(o, 10);
    poll_until(&mut pev, |e| {
        matches!(e, Event::Incoming(Packet::ConnAck(_)))
    })
    .await;
    let pinging = tokio::spawn(async move {
        let mut pongs = 0;
        loop {
            match pev.poll().await {
                Ok(Event::Incoming(Packet::PingResp)) => pongs += 1,
                Ok(_) => {}
                Err(e) => return (pongs, Some(e.to_string())),
            }
            if pongs == 4 {
                return (pongs, None);
            }
        }
    });
    // A silent one: CONNECT with keep alive 1 s and a will, then nothing.
    let mut connect = vec![0x10, 0];
    connect.extend_from_slice(&[0, 4, b'M', b'Q', b'T', b'T', 4, 0b0000_0110, 0, 1]);
    for field in [&b"silent"[..], b"wills/silent", b"gone quiet"] {
        connect.extend_from_slice(&(field.len() as u16).to_be_bytes());
        connect.extend_from_slice(field);
    }
    connect[1] = (connect.len() - 2) as u8;
    let silent = tokio::task::spawn_blocking({
        let mqtt = node.mqtt.clone();
        move || {
            let mut s = std::net::TcpStream::connect(mqtt).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(&connect).unwrap();
            let mut connack = [0u8; 4];
            s.read_exact(&mut connack).unwrap();
            assert_eq!(connack, [0x20, 2, 0, 0]);
            let since = std::time::Instant::now();
            // Blocks until the server closes the socket.
            let rest = closed(s);
            (since.elapsed(), rest)
        }
    });
    let (silent_for, rest) = silent.await.unwrap();
    assert!(
        rest.is_empty(),
        "3.1.1 has no DISCONNECT from the server: {rest:?}"
    );
    assert!(
        silent_for >= Duration::from_millis(1400) && silent_for < Duration::from_secs(5),
        "cut after {silent_for:?}, not 1.5 s (+ the sweep)"
    );
    poll_until(&mut wev, |e| {
        matches!(e, Event::Incoming(Packet::Publish(p)) if p.topic == "wills/silent" && &p.payload[..] == b"gone quiet")
    })
    .await;
    // The pinger saw four PINGRESPs (over 3 s and more) and was never cut.
    let (pongs, error) = tokio::time::timeout(Duration::from_secs(20), pinging)
        .await
        .unwrap()
        .unwrap();
    assert_eq!((pongs, error), (4, None));
}
