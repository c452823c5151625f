//! TLS on every listener with real clients: rumqttc over TLS and secure
//! WebSocket, librdkafka over SSL with client certificates, reqwest over
//! HTTPS; mutual TLS required and refused; certificates replaced on disk
//! taking effect without a restart; TLS below 1.2 refused (openssl).
//! Certificates are generated per test (rcgen), never committed.

mod common;

use std::time::Duration;

use common::pki::{Ca, Issued, TlsPorts};
use common::{poll_until, Node};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

/// A node with TLS on, `extra` environment on top.
fn tls_node(
    dir: &std::path::Path,
    server: &Issued,
    ca: &Ca,
    extra: &[(&str, &str)],
) -> (Node, TlsPorts) {
    Node::start_tls(&dir.join("data"), |ports| {
        let mut env = ports.env(server, ca);
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        env
    })
}

fn port_of(addr: &str) -> u16 {
    addr.rsplit_once(':').unwrap().1.parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_over_tls_and_secure_websocket_meet() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "fjord-test");
    let server = ca.server(tmp.path(), "server");
    let (node, ports) = tls_node(tmp.path(), &server, &ca, &[]);
    let trust = || TlsConfiguration::Simple {
        ca: ca.pem().into_bytes(),
        alpn: None,
        client_auth: None,
    };
    // Subscriber over wss://…/mqtt.
    let wss_port = port_of(&ports.mqtt_wss);
    let mut o = MqttOptions::new(
        "wss-sub",
        format!("wss://localhost:{wss_port}/mqtt"),
        wss_port,
    );
    o.set_transport(Transport::Wss(trust()));
    o.set_keep_alive(Duration::from_secs(5));
    let (sub, mut sub_ev) = AsyncClient::new(o, 100);
    sub.subscribe("secure/#", QoS::AtLeastOnce).await.unwrap();
    poll_until(&mut sub_ev, |e| {
        matches!(e, Event::Incoming(Packet::SubAck(_)))
    })
    .await;
    // Publisher over mqtts.
    let mut o = MqttOptions::new("tls-pub", "localhost", port_of(&ports.mqtts));
    o.set_transport(Transport::Tls(trust()));
    o.set_keep_alive(Duration::from_secs(5));
    let (publisher, mut pub_ev) = AsyncClient::new(o, 100);
    tokio::spawn(async move { while pub_ev.poll().await.is_ok() {} });
    for i in 0..50 {
        publisher
            .publish("secure/a", QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .unwrap();
    }
    let mut got = Vec::new();
    poll_until(&mut sub_ev, |e| {
        if let Event::Incoming(Packet::Publish(p)) = e {
            got.push(String::from_utf8(p.payload.to_vec()).unwrap());
        }
        got.len() == 50
    })
    .await;
    let want: Vec<String> = (0..50).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want);
    // The same records are in the stream, readable over plain HTTP.
    let page = common::get_json(&format!(
        "{}/v1/streams/public/default/secure/records?partition=0&offset=0&max_records=100",
        node.url
    ))
    .await;
    assert_eq!(page["records"].as_array().map(Vec::len), Some(50), "{page}");
    // Plain MQTT on the TLS port is not a TLS handshake: the connection is
    // closed and counted.
    let mut o = MqttOptions::new("plain-on-tls", "127.0.0.1", port_of(&ports.mqtts));
    o.set_keep_alive(Duration::from_secs(5));
    let (_c, mut ev) = AsyncClient::new(o, 10);
    let r = tokio::time::timeout(Duration::from_secs(10), ev.poll())
        .await
        .expect("an answer in time");
    assert!(r.is_err(), "{r:?}");
    let refused = common::metric(
        &node.url,
        "fjord_protocol_errors_total{protocol=\"mqtt\",reason=\"tls_handshake\"}",
    )
    .await;
    assert!(refused >= 1.0, "{refused}");
}

fn kafka_tls(bootstrap: &str, ca: &Ca, client: Option<&Issued>) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", ca.pem_file.display().to_string())
        .set("log_level", "2");
    if let Some(id) = client {
        c.set(
            "ssl.certificate.location",
            id.cert_file.display().to_string(),
        )
        .set("ssl.key.location", id.key_file.display().to_string());
    }
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_tls_with_required_client_certificates() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "fjord-test");
    let server = ca.server(tmp.path(), "server");
    let device = ca.client(tmp.path(), "device", "sensor-1");
    let stranger_ca = Ca::new(tmp.path(), "stranger");
    let stranger = stranger_ca.client(tmp.path(), "stranger", "sensor-1");
    let (node, ports) = tls_node(
        tmp.path(),
        &server,
        &ca,
        &[("FJORD_KAFKA__TLS_CLIENT_AUTH", "required")],
    );
    common::create_stream(&node, "telemetry", 2).await;
    let bootstrap = ports.kafka_tls.clone();
    let producer: FutureProducer = kafka_tls(&bootstrap, &ca, Some(&device))
        .set("linger.ms", "5")
        .create()
        .unwrap();
    for i in 0..100 {
        let key = format!("dev-{}", i % 4);
        let value = format!("reading {i}");
        producer
            .send(
                FutureRecord::to("telemetry").key(&key).payload(&value),
                Duration::from_secs(30),
            )
            .await
            .expect("delivered over TLS");
    }
    let consumer: StreamConsumer = kafka_tls(&bootstrap, &ca, Some(&device))
        .set("group.id", "tls-readers")
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    for p in 0..2 {
        tpl.add_partition_offset("telemetry", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&tpl).unwrap();
    let mut values = Vec::new();
    while values.len() < 100 {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a message in time")
            .unwrap();
        values.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
    }
    values.sort_by_key(|v| v[8..].parse::<u32>().unwrap());
    let want: Vec<String> = (0..100).map(|i| format!("reading {i}")).collect();
    assert_eq!(values, want);
    // Without a certificate, or with one from another CA, the handshake
    // fails and no metadata is ever served.
    for client in [None, Some(&stranger)] {
        let c: rdkafka::producer::BaseProducer =
            kafka_tls(&bootstrap, &ca, client).create().unwrap();
        let md = tokio::task::spawn_blocking(move || {
            rdkafka::producer::Producer::client(&c).fetch_metadata(None, Duration::from_secs(3))
        })
        .await
        .unwrap();
        assert!(
            md.is_err(),
            "metadata served to a client without a valid certificate"
        );
    }
    let refused = common::metric(
        &node.url,
        "fjord_protocol_errors_total{protocol=\"kafka\",reason=\"tls_handshake\"}",
    )
    .await;
    assert!(refused >= 2.0, "{refused}");
}

fn https_client(ca_pem: &str, identity: Option<&Issued>) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .use_rustls_tls()
        .tls_built_in_root_certs(false)
        .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
        .timeout(Duration::from_secs(10));
    if let Some(id) = identity {
        let pem = format!("{}{}", id.cert_pem, id.key_pem);
        b = b.identity(reqwest::Identity::from_pem(pem.as_bytes()).unwrap());
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_requires_client_certificates_when_configured() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "fjord-test");
    let server = ca.server(tmp.path(), "server");
    // The certificate names the node administrator (`system:admin`, made
    // with its role by auth.admin_password_file).
    let admin = ca.client(tmp.path(), "admin", "system:admin");
    let pw = tmp.path().join("admin-password");
    std::fs::write(&pw, "an admin password").unwrap();
    let pw = pw.display().to_string();
    let (_node, ports) = tls_node(
        tmp.path(),
        &server,
        &ca,
        &[
            ("FJORD_HTTP__TLS_CLIENT_AUTH", "required"),
            ("FJORD_AUTH__ADMIN_PASSWORD_FILE", &pw),
            ("FJORD_AUTH__ANONYMOUS_ADMIN", "false"),
        ],
    );
    let url = format!("https://localhost:{}/v1/tenants", port_of(&ports.https));
    let r = https_client(&ca.pem(), Some(&admin))
        .get(&url)
        .send()
        .await
        .expect("served over mutual TLS");
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(body.to_string().contains("public"), "{body}");
    let refused = https_client(&ca.pem(), None).get(&url).send().await;
    assert!(
        refused.is_err(),
        "served without a client certificate: {refused:?}"
    );
    // The admin API shows the certificate and listeners, and reloads.
    let base = format!("https://localhost:{}", port_of(&ports.https));
    let c = https_client(&ca.pem(), Some(&admin));
    let status: serde_json::Value = c
        .get(format!("{base}/v1/admin/tls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["enabled"], true, "{status}");
    assert!(status["certificate"]["subject"]
        .as_str()
        .unwrap()
        .contains("localhost"));
    let https = status["listeners"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"] == "https")
        .cloned()
        .unwrap();
    assert_eq!(https["client_auth"], "required");
    let r = c
        .post(format!("{base}/v1/admin/tls/reload"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewed_certificates_apply_without_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let old_ca = Ca::new(tmp.path(), "old");
    let server = old_ca.server(tmp.path(), "server");
    let (_node, ports) = tls_node(
        tmp.path(),
        &server,
        &old_ca,
        &[("FJORD_TLS__RELOAD_INTERVAL_MS", "200")],
    );
    let url = format!("https://localhost:{}/healthz", port_of(&ports.https));
    assert_eq!(
        https_client(&old_ca.pem(), None)
            .get(&url)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    // The certificate is renewed by a new CA, in place.
    let new_ca = Ca::new(tmp.path(), "new");
    new_ca.server(tmp.path(), "server");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        // A fresh client per attempt: no pooled connection from before.
        if https_client(&new_ca.pem(), None)
            .get(&url)
            .send()
            .await
            .is_ok()
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the renewed certificate was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(https_client(&old_ca.pem(), None)
        .get(&url)
        .send()
        .await
        .is_err());
}

/// Runs `openssl s_client` with `version_flag`; whether the handshake
/// succeeded.
fn openssl_handshake(addr: &str, version_flag: &str) -> bool {
    let out = std::process::Command::new("openssl")
        .args(["s_client", "-connect", addr, version_flag])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("the openssl command line tool");
    out.status.success() && String::from_utf8_lossy(&out.stdout).contains("Cipher is")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_1_2_and_1_3_are_offered() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "fjord-test");
    let server = ca.server(tmp.path(), "server");
    let (_node, ports) = tls_node(tmp.path(), &server, &ca, &[]);
    for addr in [&ports.mqtts, &ports.kafka_tls, &ports.https] {
        assert!(openssl_handshake(addr, "-tls1_3"), "{addr} TLS 1.3");
        assert!(openssl_handshake(addr, "-tls1_2"), "{addr} TLS 1.2");
        assert!(
            !openssl_handshake(addr, "-tls1_1"),
            "{addr} TLS 1.1 accepted"
        );
    }
}
