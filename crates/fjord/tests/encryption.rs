//! Encryption at rest: a stream with policy `encrypted` keeps no plain
//! record on disk, reads back whole over HTTP and Kafka (librdkafka), and
//! after a restart; a tenant without a key cannot turn it on; without the
//! key file the node refuses to serve the sealed records instead of
//! serving garbage.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{http, Node};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{json, Value};

const ADMIN: &str = "the node admin's password";
const MARKER: &str = "TOP-SECRET-READING";

fn start(dir: &Path, with_keys: bool) -> Node {
    let admin = dir.join("admin-password");
    std::fs::write(&admin, ADMIN).unwrap();
    let keys = dir.join("keys.toml");
    // 32 bytes, base64: a test key, generated here, never committed.
    std::fs::write(
        &keys,
        "acme = [\"MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY=\"]\n",
    )
    .unwrap();
    Node::start_with(&dir.join("data"), &[], |cmd| {
        cmd.env("FJORD_AUTH__ADMIN_PASSWORD_FILE", &admin);
        if with_keys {
            cmd.env("FJORD_ENCRYPTION__KEY_FILE", &keys);
        }
    })
}

async fn call(node: &Node, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
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

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Whether any file of the data directory whose path contains `part`
/// holds `needle`.
fn on_disk(data: &Path, part: &str, needle: &str) -> bool {
    let mut files = Vec::new();
    files_under(data, &mut files);
    files
        .iter()
        .filter(|p| p.to_string_lossy().contains(part))
        .any(|p| {
            std::fs::read(p)
                .unwrap()
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        })
}

async fn values(node: &Node, stream: &str) -> (u16, Vec<String>) {
    let (s, page) = call(
        node,
        reqwest::Method::GET,
        &format!("/v1/streams/acme/default/{stream}/records?partition=0&offset=0&max_records=100"),
        Value::Null,
    )
    .await;
    let v = page["records"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .filter_map(|r| r["value"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    (s, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encrypted_streams_keep_nothing_plain_on_disk() {
    use reqwest::Method as M;
    let tmp = tempfile::tempdir().unwrap();
    let mut node = start(tmp.path(), true);
    for t in ["acme", "globex"] {
        assert_eq!(
            call(&node, M::POST, "/v1/tenants", json!({ "name": t }))
                .await
                .0,
            201
        );
    }
    let (s, b) = call(
        &node,
        M::POST,
        "/v1/streams/acme/default",
        json!({"name": "vault", "policy": {"encrypted": true}}),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(
        call(
            &node,
            M::POST,
            "/v1/streams/acme/default",
            json!({"name": "open"})
        )
        .await
        .0,
        201
    );
    // No key for globex: refused up front.
    let (s, b) = call(
        &node,
        M::POST,
        "/v1/streams/globex/default",
        json!({"name": "vault", "policy": {"encrypted": true}}),
    )
    .await;
    assert_eq!(s, 400, "{b}");
    assert!(b.to_string().contains("key"), "{b}");
    let want: Vec<String> = (0..20).map(|i| format!("{MARKER}-{i}")).collect();
    for stream in ["vault", "open"] {
        let records: Vec<Value> = want.iter().map(|v| json!({ "value": v })).collect();
        let (s, b) = call(
            &node,
            M::POST,
            &format!("/v1/streams/acme/default/{stream}/records"),
            json!({ "records": records }),
        )
        .await;
        assert_eq!(s, 200, "{b}");
    }
    // Kafka writes too (its batches go to disk as sent, then sealed).
    call(
        &node,
        M::PUT,
        "/v1/tenants/acme/users/svc",
        json!({"password": "svc-password"}),
    )
    .await;
    let kafka = |c: &mut ClientConfig| {
        c.set("bootstrap.servers", &node.kafka)
            .set("broker.address.family", "v4")
            .set("security.protocol", "sasl_plaintext")
            .set("sasl.mechanism", "SCRAM-SHA-256")
            .set("sasl.username", "acme:svc")
            .set("sasl.password", "svc-password");
    };
    let mut pc = ClientConfig::new();
    kafka(&mut pc);
    let producer: FutureProducer = pc.create().unwrap();
    producer
        .send(
            FutureRecord::to("vault")
                .key("k")
                .payload(&format!("{MARKER}-kafka")),
            Duration::from_secs(30),
        )
        .await
        .expect("delivered");
    // Read back whole over HTTP …
    let (s, got) = values(&node, "vault").await;
    assert_eq!(s, 200);
    let mut expect = want.clone();
    expect.push(format!("{MARKER}-kafka"));
    assert_eq!(got, expect);
    // … and over Kafka (fetch serves opened batches).
    let mut cc = ClientConfig::new();
    kafka(&mut cc);
    cc.set("group.id", "vault-readers")
        .set("auto.offset.reset", "earliest");
    let consumer: StreamConsumer = cc.create().unwrap();
    consumer.subscribe(&["vault"]).unwrap();
    let mut via_kafka = Vec::new();
    while via_kafka.len() < expect.len() {
        let m = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("a record in time")
            .unwrap();
        via_kafka.push(String::from_utf8(m.payload().unwrap().to_vec()).unwrap());
    }
    assert_eq!(via_kafka, expect);
    // Clients go before the node does (librdkafka waits for a gone
    // broker when it closes).
    drop(consumer);
    drop(producer);
    // On disk: the plain stream shows its records, the encrypted one none.
    let data = node.data_dir.clone();
    assert!(
        on_disk(&data, "/open/", MARKER),
        "the control stream should be plain"
    );
    assert!(
        !on_disk(&data, "/vault/", MARKER),
        "plain text in an encrypted stream's files"
    );
    // After a restart, still readable.
    assert!(node.terminate().success());
    drop(node);
    node = start(tmp.path(), true);
    assert_eq!(values(&node, "vault").await.1, expect);
    assert!(!on_disk(&data, "/vault/", MARKER));
    // Without the key file the sealed records are not served.
    assert!(node.terminate().success());
    drop(node);
    let node = start(tmp.path(), false);
    let (s, b) = values(&node, "vault").await;
    assert!(
        s >= 500,
        "sealed records served without their key: {s} {b:?}"
    );
    assert_eq!(values(&node, "open").await.1, want);
}
