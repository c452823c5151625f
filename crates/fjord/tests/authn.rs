//! Authentication across protocols with real clients: MQTT user/password,
//! a JWT as the password, client certificates and anonymous access
//! (rumqttc); Kafka SASL PLAIN, SCRAM-SHA-256/512 and OAUTHBEARER
//! (librdkafka); MQTT 5 SCRAM enhanced authentication (the `scram` crate's
//! client — no widely used MQTT client implements the AUTH exchange, so its
//! few packets are framed here). Wrong credentials are refused with each
//! protocol's own code, and tenants never see each other's messages.

mod common;

use std::time::Duration;

use common::pki::Ca;
use common::{http, poll_until, Node};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{BaseProducer, FutureProducer, FutureRecord, Producer};
use serde_json::json;

const SECRET: &str = "a-test-secret-of-at-least-32-bytes!";
const ADMIN_PASSWORD: &str = "the node admin's password";

/// A node with HS256 tokens on, `env` on top.
fn node_with(dir: &std::path::Path, env: &[(&str, &str)]) -> Node {
    let secret = dir.join("jwt-secret");
    std::fs::write(&secret, SECRET).unwrap();
    let admin = dir.join("admin-password");
    std::fs::write(&admin, ADMIN_PASSWORD).unwrap();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Node::start_with(&dir.join("data"), &[], |cmd| {
        cmd.env("FJORD_AUTH__TOKENS__HS256_SECRET_FILE", &secret)
            .env("FJORD_AUTH__ADMIN_PASSWORD_FILE", &admin)
            .envs(env.iter().cloned());
    })
}

async fn tenant_with_user(node: &Node, tenant: &str, user: &str, password: &str) {
    let c = http();
    let r = c
        .post(format!("{}/v1/tenants", node.url))
        .basic_auth("system:admin", Some(ADMIN_PASSWORD))
        .json(&json!({ "name": tenant }))
        .send()
        .await
        .unwrap();
    assert!(
        r.status().is_success() || r.status() == 409,
        "{}",
        r.status()
    );
    let r = c
        .put(format!("{}/v1/tenants/{tenant}/users/{user}", node.url))
        .basic_auth("system:admin", Some(ADMIN_PASSWORD))
        .json(&json!({ "password": password }))
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
}

fn token(tenant: &str, user: &str, exp_offset_s: i64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": user, "tenant": tenant, "exp": now + exp_offset_s}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn mqtt_opts(node_mqtt: &str, id: &str, login: Option<(&str, &str)>) -> rumqttc::MqttOptions {
    let (h, p) = node_mqtt.rsplit_once(':').unwrap();
    let mut o = rumqttc::MqttOptions::new(id, h, p.parse().unwrap());
    o.set_keep_alive(Duration::from_secs(5));
    if let Some((u, pw)) = login {
        o.set_credentials(u, pw);
    }
    o
}

/// The CONNACK outcome of a v3.1.1 connection attempt.
async fn connect_outcome(o: rumqttc::MqttOptions) -> Result<(), rumqttc::ConnectReturnCode> {
    let (_c, mut ev) = rumqttc::AsyncClient::new(o, 10);
    // rumqttc's default gives the CONNACK 5 s; a machine running the whole
    // suite at once can take longer.
    let mut n = ev.network_options();
    n.set_connection_timeout(30);
    ev.set_network_options(n);
    loop {
        match tokio::time::timeout(Duration::from_secs(40), ev.poll())
            .await
            .expect("an answer in time")
        {
            Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return Ok(()),
            Ok(_) => {}
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => return Err(code),
            Err(e) => panic!("unexpected: {e:?}"),
        }
    }
}

/// A subscriber to `filter` with its own event loop; returns the payloads
/// it receives on a channel.
async fn subscriber(
    o: rumqttc::MqttOptions,
    filter: &str,
) -> (
    rumqttc::AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use rumqttc::{Event, Packet, QoS};
    let (c, mut ev) = rumqttc::AsyncClient::new(o, 100);
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    poll_until(&mut ev, |e| matches!(e, Event::Incoming(Packet::SubAck(_)))).await;
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok(e) = ev.poll().await {
            if let Event::Incoming(Packet::Publish(p)) = e {
                let _ = tx.send(String::from_utf8_lossy(&p.payload).into_owned());
            }
        }
    });
    (c, rx)
}

async fn publish_one(o: rumqttc::MqttOptions, topic: &str, payload: &str) {
    use rumqttc::{Event, Packet, QoS};
    let (c, mut ev) = rumqttc::AsyncClient::new(o, 10);
    c.publish(topic, QoS::AtLeastOnce, false, payload.to_string())
        .await
        .unwrap();
    poll_until(&mut ev, |e| matches!(e, Event::Incoming(Packet::PubAck(_)))).await;
    c.disconnect().await.unwrap();
}

/// Everything `rx` receives within `quiet` after the `want`ed messages.
async fn exactly(rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>, want: &[&str]) {
    let mut got = Vec::new();
    while got.len() < want.len() {
        let m = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a message in time")
            .unwrap();
        got.push(m);
    }
    // Nothing more (another tenant's message would arrive about now).
    if let Ok(Some(extra)) = tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
        got.push(extra);
    }
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_logins_put_clients_in_their_tenant_and_tenants_apart() {
    use rumqttc::ConnectReturnCode as Code;
    let tmp = tempfile::tempdir().unwrap();
    let node = node_with(tmp.path(), &[]);
    tenant_with_user(&node, "acme", "alice", "alice-password").await;
    tenant_with_user(&node, "globex", "bob", "bob-password1").await;
    let m = node.mqtt.as_str();
    // Wrong password, unknown user, unknown tenant, user without password,
    // expired or foreign token: bad user name or password (3.1.1 code 4).
    for (u, pw) in [
        ("acme:alice", "wrong-password"),
        ("acme:mallory", "alice-password"),
        ("nowhere:alice", "alice-password"),
        ("acme:alice", token("acme", "alice", -3600).as_str()),
    ] {
        assert_eq!(
            connect_outcome(mqtt_opts(m, "x", Some((u, pw)))).await,
            Err(Code::BadUserNamePassword),
            "{u}/{pw}"
        );
    }
    let forged = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({"sub": "alice", "tenant": "acme", "exp": 4_000_000_000i64}),
        &jsonwebtoken::EncodingKey::from_secret(b"not the node's secret, long enough"),
    )
    .unwrap();
    assert_eq!(
        connect_outcome(mqtt_opts(m, "x", Some(("any", &forged)))).await,
        Err(Code::BadUserNamePassword)
    );
    // Three subscribers with the same client id and filter, one per tenant:
    // a password login, a token login, an anonymous one.
    let (_a, mut acme_rx) = subscriber(
        mqtt_opts(m, "dev", Some(("acme:alice", "alice-password"))),
        "plant/#",
    )
    .await;
    let globex_token = token("globex", "bob", 600);
    let (_g, mut globex_rx) = subscriber(
        mqtt_opts(m, "dev", Some(("ignored", &globex_token))),
        "plant/#",
    )
    .await;
    let (_p, mut public_rx) = subscriber(mqtt_opts(m, "dev", None), "plant/#").await;
    publish_one(
        mqtt_opts(m, "p1", Some(("acme:alice", "alice-password"))),
        "plant/1",
        "acme reading",
    )
    .await;
    publish_one(
        mqtt_opts(m, "p2", Some(("globex:bob", "bob-password1"))),
        "plant/1",
        "globex reading",
    )
    .await;
    publish_one(mqtt_opts(m, "p3", None), "plant/1", "public reading").await;
    exactly(&mut acme_rx, &["acme reading"]).await;
    exactly(&mut globex_rx, &["globex reading"]).await;
    exactly(&mut public_rx, &["public reading"]).await;
    // The stream of each tenant holds its own record only.
    for (tenant, want) in [("acme", "acme reading"), ("globex", "globex reading")] {
        let page = common::get_json(&format!(
            "{}/v1/streams/{tenant}/default/plant/records?partition=0&offset=0",
            node.url
        ))
        .await;
        let values: Vec<String> = page["records"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["value"].as_str().unwrap_or_default().to_string())
            .collect();
        assert_eq!(values, vec![want.to_string()], "{tenant}: {page}");
    }
    let refused = common::metric(
        &node.url,
        "fjord_protocol_errors_total{protocol=\"mqtt\",reason=\"auth_failed\"}",
    )
    .await;
    assert!(refused >= 5.0, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_name_the_mqtt_and_kafka_principal() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = Ca::new(tmp.path(), "fjord-test");
    let server = ca.server(tmp.path(), "server");
    let device = ca.client(tmp.path(), "device", "acme:sensor-9");
    let nobody = ca.client(tmp.path(), "nobody", "nowhere:sensor-9");
    let admin = tmp.path().join("admin-password");
    std::fs::write(&admin, ADMIN_PASSWORD).unwrap();
    let (node, ports) = Node::start_tls(&tmp.path().join("data"), |ports| {
        let mut env = ports.env(&server, &ca);
        env.push(("FJORD_MQTT__TLS_CLIENT_AUTH".into(), "optional".into()));
        env.push(("FJORD_KAFKA__TLS_CLIENT_AUTH".into(), "required".into()));
        env.push((
            "FJORD_AUTH__ADMIN_PASSWORD_FILE".into(),
            admin.display().to_string(),
        ));
        env
    });
    tenant_with_user(&node, "acme", "alice", "alice-password").await;
    let tls = |id: &common::pki::Issued| rumqttc::TlsConfiguration::Simple {
        ca: ca.pem().into_bytes(),
        alpn: None,
        client_auth: Some((
            id.cert_pem.clone().into_bytes(),
            id.key_pem.clone().into_bytes(),
        )),
    };
    let port: u16 = ports.mqtts.rsplit_once(':').unwrap().1.parse().unwrap();
    let mut o = rumqttc::MqttOptions::new("cert-dev", "localhost", port);
    o.set_transport(rumqttc::Transport::Tls(tls(&device)));
    publish_one(o, "cells/1", "from a certificate").await;
    let page = common::get_json(&format!(
        "{}/v1/streams/acme/default/cells/records?partition=0&offset=0",
        node.url
    ))
    .await;
    assert_eq!(page["records"][0]["value"], "from a certificate", "{page}");
    // A certificate naming a tenant that does not exist is refused.
    let mut o = rumqttc::MqttOptions::new("cert-nobody", "localhost", port);
    o.set_transport(rumqttc::Transport::Tls(tls(&nobody)));
    assert_eq!(
        connect_outcome(o).await,
        Err(rumqttc::ConnectReturnCode::BadUserNamePassword)
    );
    // Kafka over mutual TLS: the certificate's tenant is where it writes.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &ports.kafka_tls)
        .set("broker.address.family", "v4")
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", ca.pem_file.display().to_string())
        .set(
            "ssl.certificate.location",
            device.cert_file.display().to_string(),
        )
        .set("ssl.key.location", device.key_file.display().to_string())
        .create()
        .unwrap();
    producer
        .send(
            FutureRecord::to("cells").key("k").payload("over kafka"),
            Duration::from_secs(30),
        )
        .await
        .expect("delivered");
    let page = common::get_json(&format!(
        "{}/v1/streams/acme/default/cells/records?partition=0&offset=0",
        node.url
    ))
    .await;
    let values: Vec<&str> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["value"].as_str())
        .collect();
    assert!(values.contains(&"over kafka"), "{page}");
}

fn sasl_config(bootstrap: &str, mechanism: &str, login: &str, password: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("broker.address.family", "v4")
        .set("security.protocol", "sasl_plaintext")
        .set("sasl.mechanism", mechanism)
        .set("sasl.username", login)
        .set("sasl.password", password)
        .set("log_level", "2");
    c
}

fn metadata_ok<C: rdkafka::producer::ProducerContext>(p: &BaseProducer<C>) -> bool {
    p.client()
        .fetch_metadata(None, Duration::from_secs(5))
        .is_ok()
}

/// Supplies librdkafka's OAUTHBEARER token.
struct Bearer(String);

impl rdkafka::ClientContext for Bearer {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;
    fn generate_oauth_token(
        &self,
        _config: Option<&str>,
    ) -> Result<rdkafka::client::OAuthToken, Box<dyn std::error::Error>> {
        Ok(rdkafka::client::OAuthToken {
            token: self.0.clone(),
            principal_name: "whoever".into(),
            lifetime_ms: (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)?
                .as_millis()
                + 600_000) as i64,
        })
    }
}

impl rdkafka::producer::ProducerContext for Bearer {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &rdkafka::message::DeliveryResult<'_>, _: ()) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_scram_and_oauthbearer_log_into_the_principals_tenant() {
    let tmp = tempfile::tempdir().unwrap();
    let node = node_with(tmp.path(), &[("FJORD_KAFKA__SASL", "required")]);
    tenant_with_user(&node, "acme", "alice", "alice-password").await;
    let k = node.kafka.clone();
    for mech in ["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN"] {
        let good: FutureProducer = sasl_config(&k, mech, "acme:alice", "alice-password")
            .create()
            .unwrap();
        good.send(
            FutureRecord::to("logins").key(mech).payload(mech),
            Duration::from_secs(30),
        )
        .await
        .unwrap_or_else(|e| panic!("{mech}: {e:?}"));
        for (login, pw) in [
            ("acme:alice", "wrong-password"),
            ("acme:nobody", "alice-password"),
        ] {
            let bad: BaseProducer = sasl_config(&k, mech, login, pw).create().unwrap();
            let ok = tokio::task::spawn_blocking(move || metadata_ok(&bad))
                .await
                .unwrap();
            assert!(!ok, "{mech} admitted {login}");
        }
    }
    // OAUTHBEARER: a valid token logs in; an expired one does not.
    let bearer = |t: String| {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &k)
            .set("broker.address.family", "v4")
            .set("security.protocol", "sasl_plaintext")
            .set("sasl.mechanism", "OAUTHBEARER")
            .set("log_level", "2");
        (c, Bearer(t))
    };
    let (c, ctx) = bearer(token("acme", "svc", 600));
    let p: FutureProducer<Bearer> = c.create_with_context(ctx).unwrap();
    p.send(
        FutureRecord::to("logins")
            .key("oauth")
            .payload("OAUTHBEARER"),
        Duration::from_secs(30),
    )
    .await
    .expect("OAUTHBEARER login");
    let (c, ctx) = bearer(token("acme", "svc", -3600));
    let expired: BaseProducer<Bearer> = c.create_with_context(ctx).unwrap();
    let ok = tokio::task::spawn_blocking(move || metadata_ok(&expired))
        .await
        .unwrap();
    assert!(!ok, "an expired token logged in");
    // All four logins wrote into acme.
    let page = common::get_json(&format!(
        "{}/v1/streams/acme/default/logins/records?partition=0&offset=0",
        node.url
    ))
    .await;
    let mut values: Vec<&str> = page["records"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["value"].as_str())
        .collect();
    values.sort();
    assert_eq!(
        values,
        ["OAUTHBEARER", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"],
        "{page}"
    );
    let refused = common::metric(
        &node.url,
        "fjord_protocol_errors_total{protocol=\"kafka\",reason=\"sasl_failed\"}",
    )
    .await;
    assert!(refused >= 7.0, "{refused}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_access_turns_off_with_one_setting() {
    let tmp = tempfile::tempdir().unwrap();
    let node = node_with(tmp.path(), &[("FJORD_AUTH__ANONYMOUS", "false")]);
    tenant_with_user(&node, "acme", "alice", "alice-password").await;
    let m = node.mqtt.as_str();
    assert_eq!(
        connect_outcome(mqtt_opts(m, "anon", None)).await,
        Err(rumqttc::ConnectReturnCode::NotAuthorized)
    );
    assert_eq!(
        connect_outcome(mqtt_opts(
            m,
            "alice",
            Some(("acme:alice", "alice-password"))
        ))
        .await,
        Ok(())
    );
    // MQTT 5: reason 0x87 Not authorized.
    let (h, p) = m.rsplit_once(':').unwrap();
    let o = rumqttc::v5::MqttOptions::new("anon5", h, p.parse().unwrap());
    let (_c, mut ev) = rumqttc::v5::AsyncClient::new(o, 10);
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), ev.poll())
            .await
            .expect("an answer")
        {
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(
        matches!(
            err,
            rumqttc::v5::ConnectionError::ConnectionRefused(
                rumqttc::v5::mqttbytes::v5::ConnectReturnCode::NotAuthorized
            )
        ),
        "{err:?}"
    );
    // Kafka without SASL serves nothing.
    let k = node.kafka.clone();
    let anon: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", &k)
        .set("broker.address.family", "v4")
        .set("log_level", "2")
        .create()
        .unwrap();
    let ok = tokio::task::spawn_blocking(move || metadata_ok(&anon))
        .await
        .unwrap();
    assert!(!ok, "anonymous Kafka client served");
    let alice: BaseProducer = sasl_config(&k, "SCRAM-SHA-256", "acme:alice", "alice-password")
        .create()
        .unwrap();
    let ok = tokio::task::spawn_blocking(move || metadata_ok(&alice))
        .await
        .unwrap();
    assert!(ok, "a logged-in Kafka client refused");
}

/// Minimal MQTT 5 framing for the enhanced-authentication exchange.
mod raw5 {
    pub fn varint(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.push(b);
            if n == 0 {
                return;
            }
        }
    }

    fn string(s: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&(s.len() as u16).to_be_bytes());
        out.extend_from_slice(s);
    }

    fn auth_props(method: &str, data: &[u8]) -> Vec<u8> {
        let mut p = vec![0x15];
        string(method.as_bytes(), &mut p);
        p.push(0x16);
        string(data, &mut p);
        let mut out = Vec::new();
        varint(p.len(), &mut out);
        out.extend(p);
        out
    }

    fn packet(first: u8, body: Vec<u8>) -> Vec<u8> {
        let mut out = vec![first];
        varint(body.len(), &mut out);
        out.extend(body);
        out
    }

    pub fn connect(client_id: &str, method: &str, data: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        string(b"MQTT", &mut b);
        b.push(5);
        b.push(0x02);
        b.extend_from_slice(&30u16.to_be_bytes());
        b.extend(auth_props(method, data));
        string(client_id.as_bytes(), &mut b);
        packet(0x10, b)
    }

    pub fn auth(method: &str, data: &[u8]) -> Vec<u8> {
        let mut b = vec![0x18];
        b.extend(auth_props(method, data));
        packet(0xF0, b)
    }

    /// Reads one packet: (type nibble, reason code, authentication data).
    pub async fn read(s: &mut tokio::net::TcpStream) -> (u8, u8, Option<Vec<u8>>) {
        use tokio::io::AsyncReadExt;
        let first = s.read_u8().await.unwrap();
        let (mut len, mut shift) = (0usize, 0);
        loop {
            let b = s.read_u8().await.unwrap();
            len |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        let kind = first >> 4;
        // CONNACK: flags, reason; AUTH: reason.
        let mut i = if kind == 2 { 1 } else { 0 };
        let reason = body[i];
        i += 1;
        let (mut plen, mut shift) = (0usize, 0);
        loop {
            let b = body[i];
            i += 1;
            plen |= ((b & 0x7f) as usize) << shift;
            shift += 7;
            if b & 0x80 == 0 {
                break;
            }
        }
        let end = i + plen;
        let mut data = None;
        while i < end {
            let id = body[i];
            i += 1;
            let n = || u16::from_be_bytes([body[i], body[i + 1]]) as usize;
            match id {
                0x15 | 0x16 | 0x1F => {
                    let n = n();
                    if id == 0x16 {
                        data = Some(body[i + 2..i + 2 + n].to_vec());
                    }
                    i += 2 + n;
                }
                // Other CONNACK properties this exchange may carry.
                0x21 | 0x22 => i += 2,
                0x27 | 0x11 => i += 4,
                0x24 | 0x25 | 0x28 | 0x29 | 0x2A => i += 1,
                0x12 | 0x1A | 0x1C => i += 2 + n(),
                0x26 => {
                    let n = n();
                    let v = u16::from_be_bytes([body[i + 2 + n], body[i + 3 + n]]) as usize;
                    i += 4 + n + v;
                }
                other => panic!("unexpected property {other:#x}"),
            }
        }
        (kind, reason, data)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt5_scram_sha_256_enhanced_authentication() {
    use tokio::io::AsyncWriteExt;
    let tmp = tempfile::tempdir().unwrap();
    let node = node_with(tmp.path(), &[]);
    tenant_with_user(&node, "acme", "alice", "alice-password").await;
    for (password, ok) in [("alice-password", true), ("not-her-password", false)] {
        let client = scram::ScramClient::new("acme:alice", password, None);
        let (server_first_step, client_first) = client.client_first();
        let mut s = tokio::net::TcpStream::connect(&node.mqtt).await.unwrap();
        s.write_all(&raw5::connect(
            "scram-dev",
            "SCRAM-SHA-256",
            client_first.as_bytes(),
        ))
        .await
        .unwrap();
        let (kind, reason, data) = raw5::read(&mut s).await;
        assert_eq!((kind, reason), (15, 0x18), "AUTH continue");
        let server_first = String::from_utf8(data.unwrap()).unwrap();
        let (server_final_step, client_final) = server_first_step
            .handle_server_first(&server_first)
            .unwrap()
            .client_final();
        s.write_all(&raw5::auth("SCRAM-SHA-256", client_final.as_bytes()))
            .await
            .unwrap();
        let (kind, reason, data) = raw5::read(&mut s).await;
        assert_eq!(kind, 2, "CONNACK");
        if ok {
            assert_eq!(reason, 0, "success");
            // The server proves it knows the verifier too.
            let server_final = String::from_utf8(data.unwrap()).unwrap();
            server_final_step
                .handle_server_final(&server_final)
                .expect("the server's signature checks");
        } else {
            assert_eq!(reason, 0x86, "bad user name or password");
        }
    }
    // An unknown method: 0x8C Bad authentication method.
    let mut s = tokio::net::TcpStream::connect(&node.mqtt).await.unwrap();
    s.write_all(&raw5::connect("k", "KERBEROS", b"x"))
        .await
        .unwrap();
    let (kind, reason, _) = raw5::read(&mut s).await;
    assert_eq!((kind, reason), (2, 0x8C));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_ban_the_address_and_the_ban_lifts() {
    use rumqttc::ConnectReturnCode as Code;
    let tmp = tempfile::tempdir().unwrap();
    let node = node_with(
        tmp.path(),
        &[
            // Loopback is exempt by default; this test is the attacker.
            ("FJORD_LIMITS__BAN_EXEMPT", "[]"),
            ("FJORD_LIMITS__BAN_AFTER_FAILURES", "3"),
            ("FJORD_LIMITS__BAN_S", "3"),
        ],
    );
    tenant_with_user(&node, "acme", "alice", "alice-password").await;
    let m = node.mqtt.as_str();
    for _ in 0..3 {
        assert_eq!(
            connect_outcome(mqtt_opts(
                m,
                "guess",
                Some(("acme:alice", "guess-password"))
            ))
            .await,
            Err(Code::BadUserNamePassword)
        );
    }
    // Banned: even the right password is turned away at accept.
    let (_c, mut ev) = rumqttc::AsyncClient::new(
        mqtt_opts(m, "right", Some(("acme:alice", "alice-password"))),
        10,
    );
    let r = tokio::time::timeout(Duration::from_secs(10), ev.poll())
        .await
        .expect("an answer");
    assert!(r.is_err(), "a banned address was served: {r:?}");
    // The ban lifts.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    assert_eq!(
        connect_outcome(mqtt_opts(
            m,
            "right",
            Some(("acme:alice", "alice-password"))
        ))
        .await,
        Ok(())
    );
    let text = common::metrics_as(&node.url, Some(("system:admin", ADMIN_PASSWORD))).await;
    assert!(text.contains("fjord_auth_bans_total 1"), "{text}");
    assert!(
        text.contains("fjord_connections_refused_total{listener=\"mqtt\",reason=\"banned\"} 1"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_per_address_are_limited() {
    use tokio::io::AsyncReadExt;
    let tmp = tempfile::tempdir().unwrap();
    let node = node_with(tmp.path(), &[("FJORD_LIMITS__MAX_CONNECTIONS_PER_IP", "4")]);
    let mut open = Vec::new();
    for _ in 0..4 {
        open.push(tokio::net::TcpStream::connect(&node.kafka).await.unwrap());
    }
    // The fifth is closed at once.
    let mut fifth = tokio::net::TcpStream::connect(&node.kafka).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), fifth.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0, "the fifth connection stayed open");
    // A place frees when a connection ends (once the node has seen it end:
    // retried with a deadline, not after a fixed wait).
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut again = tokio::net::TcpStream::connect(&node.kafka).await.unwrap();
        let r = tokio::time::timeout(Duration::from_millis(500), again.read(&mut buf)).await;
        if r.is_err() {
            break; // still open: the place was given again
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a freed place was not given again: {r:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_bearer_tokens_rs256_and_websocket_access_tokens() {
    let tmp = tempfile::tempdir().unwrap();
    // An RSA key pair made here with openssl; the node trusts its public half.
    let private = tmp.path().join("rsa.key");
    let public = tmp.path().join("rsa.pub.pem");
    let run = |args: &[&str]| {
        let s = std::process::Command::new("openssl")
            .args(args)
            .status()
            .unwrap();
        assert!(s.success(), "openssl {args:?}");
    };
    run(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        private.to_str().unwrap(),
    ]);
    run(&[
        "pkey",
        "-in",
        private.to_str().unwrap(),
        "-pubout",
        "-out",
        public.to_str().unwrap(),
    ]);
    let public_env = public.display().to_string();
    let node = node_with(
        tmp.path(),
        &[
            ("FJORD_AUTH__TOKENS__PUBLIC_KEYS_FILE", &public_env),
            ("FJORD_AUTH__ANONYMOUS_ADMIN", "false"),
        ],
    );
    tenant_with_user(&node, "acme", "alice", "alice-password").await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let rs256 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256),
        &json!({"sub": "svc", "tenant": "acme", "exp": now + 600}),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(&private).unwrap()).unwrap(),
    )
    .unwrap();
    let list = |token: String| {
        let url = format!("{}/v1/tenants", node.url);
        async move { http().get(url).bearer_auth(token).send().await.unwrap() }
    };
    let r = list(rs256.clone()).await;
    assert_eq!(r.status(), 200);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["tenants"][0]["name"], "acme", "{body}");
    assert_eq!(body["tenants"].as_array().unwrap().len(), 1, "{body}");
    // Expired, or signed by someone else: 401 with a challenge.
    for bad in [token("acme", "svc", -3600), {
        // The signature's last character changed (never to itself).
        let mut t = rs256.clone();
        let last = t.pop();
        t.push(if last == Some('A') { 'B' } else { 'A' });
        t
    }] {
        let r = list(bad).await;
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("www-authenticate"));
    }
    // A browser's WebSocket cannot set headers: the token rides in the URL.
    let (h, p) = node.addr.rsplit_once(':').unwrap();
    let ws = |q: &str| format!("ws://{h}:{p}/v1/streams/acme/default/feed/ws?from=earliest{q}");
    let (s, _) = admin_call(
        &node,
        reqwest::Method::POST,
        "/v1/streams/acme/default",
        json!({"name": "feed"}),
    )
    .await;
    assert_eq!(s, 201);
    let ok = tokio_tungstenite::connect_async(ws(&format!("&access_token={rs256}"))).await;
    assert!(ok.is_ok(), "{ok:?}");
    let refused = tokio_tungstenite::connect_async(ws("")).await;
    let status = match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(r)) => r.status().as_u16(),
        other => panic!("{other:?}"),
    };
    assert_eq!(status, 403, "anonymous clients may not read acme");
}

async fn admin_call(
    node: &Node,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = http()
        .request(method, format!("{}{path}", node.url))
        .basic_auth("system:admin", Some(ADMIN_PASSWORD))
        .json(&body)
        .send()
        .await
        .unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_connections_that_never_log_in_are_closed() {
    use tokio::io::AsyncReadExt;
    let tmp = tempfile::tempdir().unwrap();
    let node = node_with(
        tmp.path(),
        &[
            ("FJORD_KAFKA__SASL", "required"),
            ("FJORD_KAFKA__AUTH_TIMEOUT_MS", "500"),
        ],
    );
    let mut s = tokio::net::TcpStream::connect(&node.kafka).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
        .await
        .expect("closed by the node")
        .unwrap_or(0);
    assert_eq!(n, 0);
    let timeouts = common::metric(
        &node.url,
        "fjord_protocol_errors_total{protocol=\"kafka\",reason=\"auth_timeout\"}",
    )
    .await;
    assert!(timeouts >= 1.0, "{timeouts}");
}
