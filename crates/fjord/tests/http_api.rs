//! End-to-end tests of the HTTP API against the real binary with `reqwest`.

mod common;

use std::time::Duration;

use common::{http, Node};
use serde_json::{json, Value};

async fn call(
    c: &reqwest::Client,
    method: reqwest::Method,
    url: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = c.request(method, url);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        },
    )
}

#[tokio::test]
async fn admin_produce_consume_and_positions_survive_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::start(tmp.path());
    let c = http();
    let u = node.url.clone();
    use reqwest::Method as M;

    // Tenants and namespaces.
    let (s, v) = call(&c, M::GET, &format!("{u}/v1/tenants"), None).await;
    assert_eq!(s, 200);
    assert_eq!(v["tenants"][0]["name"], "public");
    let (s, _) = call(
        &c,
        M::POST,
        &format!("{u}/v1/tenants"),
        Some(json!({"name": "acme"})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, v) = call(
        &c,
        M::POST,
        &format!("{u}/v1/tenants/acme/namespaces"),
        Some(
            json!({"name": "plant1", "policy": {"durability": "always", "retention_ms": 3600000}}),
        ),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let (s, v) = call(&c, M::GET, &format!("{u}/v1/tenants/acme/namespaces"), None).await;
    assert_eq!(s, 200);
    assert_eq!(
        v["namespaces"].as_array().unwrap().len(),
        2,
        "default and plant1: {v}"
    );

    // A stream inherits the namespace policy and overrides some of it.
    let (s, v) = call(
        &c,
        M::POST,
        &format!("{u}/v1/streams/acme/plant1"),
        Some(json!({"name": "Temps", "partitions": 4, "policy": {"retention_ms": 60000}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["effective_policy"]["durability"], "always");
    assert_eq!(v["effective_policy"]["retention_ms"], 60000);
    assert_eq!(v["partition_details"].as_array().unwrap().len(), 4);

    // Produce: a batch with keys, headers, event time, JSON and binary values.
    let base = format!("{u}/v1/streams/acme/plant1/Temps");
    let (s, v) = call(&c, M::POST, &format!("{base}/records"), Some(json!({"records": [
        {"key": "dev-1", "value": {"t": 21.5}, "headers": {"unit": "C"}, "event_ts": 1700000000000i64},
        {"key": "dev-1", "value": "plain text"},
        {"key": "dev-1", "value_base64": "AAEC/w=="},
        {"key": "dev-1", "value": {"t": 22.0}, "headers": [{"key": "a", "value": "1"}, {"key": "a", "value": "2"}]},
    ]}))).await;
    assert_eq!(s, 200, "{v}");
    let offsets = v["offsets"].as_array().unwrap();
    let p = offsets[0]["partition"].as_u64().unwrap();
    assert!(
        offsets.iter().all(|o| o["partition"].as_u64() == Some(p)),
        "one key, one partition: {v}"
    );
    assert_eq!(
        offsets
            .iter()
            .map(|o| o["offset"].as_i64().unwrap())
            .collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
    // Kafka's murmur2 picks the partition: murmur2("dev-1") & 0x7fffffff % 4.
    assert_eq!(
        p as u32,
        fjord_core::partitioner::partition_for_key(b"dev-1", 4)
    );

    // Binary body.
    let resp = c
        .post(format!("{base}/records?key=dev-1"))
        .header("content-type", "application/octet-stream")
        .body(vec![0u8, 159, 146, 150])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let (s, v) = call(
        &c,
        M::GET,
        &format!("{base}/records?partition={p}&from=earliest"),
        None,
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let recs = v["records"].as_array().unwrap();
    assert_eq!(recs.len(), 5);
    assert_eq!(recs[0]["value"]["t"], 21.5);
    assert_eq!(recs[0]["headers"][0]["key"], "unit");
    assert_eq!(recs[0]["event_ts"], 1700000000000i64);
    assert!(recs[0]["publish_ts"].as_i64().unwrap() > 1700000000000i64);
    assert_eq!(recs[1]["value"], "plain text");
    assert_eq!(
        recs[1]["event_ts"], recs[1]["publish_ts"],
        "no event time: equals publish time"
    );
    assert_eq!(recs[2]["value_base64"], "AAEC/w==");
    assert_eq!(
        recs[3]["headers"],
        json!([{"key": "a", "value": "1"}, {"key": "a", "value": "2"}])
    );
    assert_eq!(recs[4]["value_base64"], "AJ+Slg==");
    assert_eq!(v["next_offset"], 5);
    assert_eq!(v["high_watermark"], 5);

    // Exact bytes with format=base64.
    let (_, v) = call(
        &c,
        M::GET,
        &format!("{base}/records?partition={p}&offset=1&max_records=1&format=base64"),
        None,
    )
    .await;
    assert_eq!(v["records"][0]["value_base64"], "cGxhaW4gdGV4dA==");
    assert_eq!(v["next_offset"], 2);

    // By time: everything was published after this instant.
    let (_, v) = call(
        &c,
        M::GET,
        &format!("{base}/records?partition={p}&timestamp=1700000000000"),
        None,
    )
    .await;
    assert_eq!(v["records"].as_array().unwrap().len(), 5);
    let far = fjord_core::time::now_ms() + 3_600_000;
    let (_, v) = call(
        &c,
        M::GET,
        &format!("{base}/records?partition={p}&timestamp={far}"),
        None,
    )
    .await;
    assert_eq!(v["records"].as_array().unwrap().len(), 0);

    // Long poll: a reader waiting at the end wakes on the next append.
    let reader = {
        let c = c.clone();
        let url = format!("{base}/records?partition={p}&offset=5&wait_ms=20000");
        tokio::spawn(async move {
            c.get(url)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (s, _) = call(
        &c,
        M::POST,
        &format!("{base}/records"),
        Some(json!({"key": "dev-1", "value": "late"})),
    )
    .await;
    assert_eq!(s, 200);
    let v = tokio::time::timeout(Duration::from_secs(15), reader)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(v["records"][0]["value"], "late");

    // Named consumer positions.
    let (s, v) = call(
        &c,
        M::PUT,
        &format!("{base}/consumers/app-1"),
        Some(json!({"offsets": [{"partition": p, "offset": 4}]})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, v) = call(
        &c,
        M::GET,
        &format!("{base}/records?partition={p}&consumer=app-1"),
        None,
    )
    .await;
    assert_eq!(v["records"][0]["offset"], 4);

    // Describe shows offsets, sizes and consumers.
    let (_, d) = call(&c, M::GET, &base, None).await;
    assert_eq!(d["partition_details"][p as usize]["end_offset"], 6);
    assert!(d["size_bytes"].as_u64().unwrap() > 0);
    assert_eq!(d["consumers"][0]["name"], "app-1");

    // Metrics expose what happened.
    let m = c
        .get(format!("{u}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(
            r#"fjord_appended_records_total{namespace="plant1",stream="Temps",tenant="acme"} 6"#
        ),
        "{m}"
    );
    assert!(m.contains("fjord_consumer_lag{consumer=\"app-1\""), "{m}");
    assert!(m.contains("fjord_fsync_seconds_bucket"), "{m}");

    // Restart: data, policies and positions are all still there.
    assert!(node.terminate().success());
    let node = Node::start(tmp.path());
    let u = node.url.clone();
    let base = format!("{u}/v1/streams/acme/plant1/Temps");
    let (_, v) = call(
        &c,
        M::GET,
        &format!("{base}/records?partition={p}&from=earliest"),
        None,
    )
    .await;
    assert_eq!(v["records"].as_array().unwrap().len(), 6);
    assert_eq!(v["records"][5]["value"], "late");
    let (_, v) = call(&c, M::GET, &format!("{base}/consumers/app-1"), None).await;
    assert_eq!(v["offsets"][0]["offset"], 4);
    let (_, d) = call(&c, M::GET, &base, None).await;
    assert_eq!(d["effective_policy"]["durability"], "always");

    // Policy change through the namespace applies to the stream.
    let (s, v) = call(
        &c,
        M::PUT,
        &format!("{u}/v1/tenants/acme/namespaces/plant1"),
        Some(json!({"policy": {"durability": "os"}})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let (_, d) = call(&c, M::GET, &base, None).await;
    assert_eq!(d["effective_policy"]["durability"], "os");

    // Grow partitions, then delete the stream and the tenant.
    let (s, d) = call(&c, M::PATCH, &base, Some(json!({"partitions": 6}))).await;
    assert_eq!(s, 200, "{d}");
    assert_eq!(d["partitions"], 6);
    let (s, v) = call(&c, M::DELETE, &format!("{u}/v1/tenants/acme"), None).await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("not_empty")));
    let (s, _) = call(&c, M::DELETE, &base, None).await;
    assert_eq!(s, 204);
    let (s, _) = call(&c, M::GET, &base, None).await;
    assert_eq!(s, 404);
    let (s, _) = call(&c, M::DELETE, &format!("{u}/v1/tenants/acme"), None).await;
    assert_eq!(s, 204);
}

#[tokio::test]
async fn bad_input_gets_clear_errors_and_the_node_keeps_serving() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let c = http();
    let u = node.url.clone();
    use reqwest::Method as M;
    let (s, _) = call(
        &c,
        M::POST,
        &format!("{u}/v1/streams/public/default"),
        Some(json!({"name": "s", "policy": {"max_message_bytes": 1000}})),
    )
    .await;
    assert_eq!(s, 201);
    let rec = format!("{u}/v1/streams/public/default/s/records");

    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (
            c.post(&rec)
                .header("content-type", "application/json")
                .body("{not json"),
            400,
            "invalid_json",
        ),
        (
            c.post(&rec).json(&json!({"value": 1, "surprise": true})),
            400,
            "invalid_json",
        ),
        (
            c.post(&rec).json(&json!({"value_base64": "***"})),
            400,
            "invalid_argument",
        ),
        (
            c.post(&rec).json(&json!({"records": []})),
            400,
            "invalid_argument",
        ),
        (
            c.post(format!("{u}/v1/streams/public/default/nope/records"))
                .json(&json!({"value": 1})),
            404,
            "not_found",
        ),
        (
            c.post(&rec).json(&json!({"value": "x".repeat(5000)})),
            413,
            "message_too_large",
        ),
        (
            c.post(format!("{u}/v1/streams/public/default"))
                .json(&json!({"name": "bad.name"})),
            400,
            "invalid_name",
        ),
        (
            c.post(format!("{u}/v1/streams/public/default"))
                .json(&json!({"name": "ok", "partitions": 0})),
            400,
            "invalid_argument",
        ),
        (
            c.post(format!("{u}/v1/streams/public/default"))
                .json(&json!({"name": "ok", "policy": {"durability": "never"}})),
            400,
            "invalid_json",
        ),
        (
            c.post(format!("{u}/v1/tenants"))
                .json(&json!({"name": "UPPER"})),
            400,
            "invalid_name",
        ),
        (
            c.post(format!("{u}/v1/streams/public/default"))
                .json(&json!({"name": "s"})),
            409,
            "already_exists",
        ),
        (c.get(format!("{rec}?partition=9")), 404, "not_found"),
        (
            c.get(format!("{rec}?offset=99")),
            416,
            "offset_out_of_range",
        ),
        (
            c.get(format!("{rec}?offset=1&from=latest")),
            400,
            "invalid_argument",
        ),
        (c.get(format!("{rec}?offset=abc")), 400, "invalid_argument"),
        (
            c.get(format!("{u}/v1/nothing-here")),
            404,
            "route_not_found",
        ),
        (c.put(format!("{u}/v1/tenants")), 405, "method_not_allowed"),
        (
            c.put(format!("{rec}/../consumers/x"))
                .json(&json!({"offsets": [{"partition": 0, "offset": 5}]})),
            400,
            "invalid_argument",
        ),
    ];
    for (i, (req, status, code)) in cases.into_iter().enumerate() {
        let resp = req.send().await.unwrap();
        let got = resp.status().as_u16();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        assert_eq!(
            (got, body["error"]["code"].as_str()),
            (status, Some(code)),
            "case {i}: {body}"
        );
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "case {i}"
        );
    }
    // Still serving, nothing stored by the refused requests.
    let (s, v) = call(&c, M::POST, &rec, Some(json!({"value": "fine"}))).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["offsets"][0]["offset"], 0);
}

#[tokio::test]
async fn a_taken_port_fails_start_with_a_clear_message() {
    let tmp = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = std::process::Command::new(common::bin())
        .args(["serve", "--data-dir"])
        .arg(tmp.path())
        .args([
            "--http-addr",
            &addr,
            "--mqtt-addr",
            &format!("127.0.0.1:{}", common::free_port()),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let port = addr.rsplit(':').next().unwrap();
    assert!(
        err.contains(&format!("port {port} is already in use")) && err.contains("--http-addr"),
        "{err}"
    );
}

#[tokio::test]
async fn health_readiness_and_ephemeral_streams() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let c = http();
    let u = node.url.clone();
    use reqwest::Method as M;
    assert_eq!(call(&c, M::GET, &format!("{u}/healthz"), None).await.0, 200);
    assert_eq!(call(&c, M::GET, &format!("{u}/readyz"), None).await.0, 200);
    let (s, v) = call(
        &c,
        M::POST,
        &format!("{u}/v1/streams/public/default"),
        Some(json!({"name": "live", "policy": {"ephemeral": true, "ephemeral_bytes_max": 65536}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    for chunk in 0..20 {
        let records: Vec<Value> = (0..50)
            .map(|i| json!({"value": format!("{:0200}", chunk * 50 + i)}))
            .collect();
        let (s, _) = call(
            &c,
            M::POST,
            &format!("{u}/v1/streams/public/default/live/records"),
            Some(json!({"records": records})),
        )
        .await;
        assert_eq!(s, 200);
    }
    let (_, d) = call(
        &c,
        M::GET,
        &format!("{u}/v1/streams/public/default/live"),
        None,
    )
    .await;
    assert!(d["size_bytes"].as_u64().unwrap() <= 65536, "{d}");
    assert!(
        d["partition_details"][0]["start_offset"].as_i64().unwrap() > 0,
        "oldest dropped: {d}"
    );
    assert_eq!(d["partition_details"][0]["end_offset"], 1000);
    let (_, v) = call(
        &c,
        M::GET,
        &format!("{u}/v1/streams/public/default/live/records?from=earliest&max_records=10000"),
        None,
    )
    .await;
    let last = v["records"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["value"], format!("{:0200}", 999));
    // Changing how a stream is stored is refused, clearly.
    let (s, v) = call(
        &c,
        M::PATCH,
        &format!("{u}/v1/streams/public/default/live"),
        Some(json!({"policy": {"ephemeral": false}})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_argument"))
    );
}

#[tokio::test]
async fn the_memory_budget_makes_bursts_wait_not_fail() {
    let tmp = tempfile::tempdir().unwrap();
    let budget = 3 * 1024 * 1024;
    let node = Node::start_with(tmp.path(), &[], |cmd| {
        cmd.env("FJORD_MEMORY__INFLIGHT_BYTES_MAX", budget.to_string());
    });
    let c = http();
    let u = node.url.clone();
    let (s, _) = call(
        &c,
        reqwest::Method::POST,
        &format!("{u}/v1/streams/public/default"),
        Some(json!({"name": "burst", "partitions": 4, "policy": {"max_message_bytes": 2000000}})),
    )
    .await;
    assert_eq!(s, 201);
    // 24 concurrent bodies of ~1 MiB: 24 MiB against a 3 MiB budget.
    let mut tasks = Vec::new();
    for i in 0..24 {
        let c = c.clone();
        let url = format!("{u}/v1/streams/public/default/burst/records");
        tasks.push(tokio::spawn(async move {
            let r = c
                .post(url)
                .json(&json!({"key": format!("k{i}"), "value": "v".repeat(1_000_000)}))
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 200);
    }
    // A body that could never fit is refused with the protocol's error.
    let r = c
        .post(format!("{u}/v1/streams/public/default/burst/records"))
        .json(&json!({"value": "v".repeat(4_000_000)}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["error"]["code"], "message_too_large");
    let m = c
        .get(format!("{u}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains(&format!("fjord_memory_budget_bytes {budget}")),
        "{m}"
    );
    assert!(m.contains("fjord_memory_reserved_bytes 0"), "{m}");
    let (_, d) = call(
        &c,
        reqwest::Method::GET,
        &format!("{u}/v1/streams/public/default/burst"),
        None,
    )
    .await;
    let total: i64 = d["partition_details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["end_offset"].as_i64().unwrap())
        .sum();
    assert_eq!(total, 24);
}

#[tokio::test]
async fn deduplication_within_the_window_survives_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::start(tmp.path());
    let c = http();
    let u = node.url.clone();
    use reqwest::Method as M;
    let (s, v) = call(
        &c,
        M::POST,
        &format!("{u}/v1/streams/public/default"),
        Some(json!({"name": "once", "partitions": 2, "policy": {"dedup_window_ms": 600000}})),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let url = format!("{u}/v1/streams/public/default/once/records");
    let rec = |id: &str, v: &str| json!({"key": "meter-1", "value": v, "headers": [{"key": "fjord.dedup_id", "value": id}]});

    let (_, first) = call(
        &c,
        M::POST,
        &url,
        Some(json!({"records": [rec("r1", "a"), rec("r2", "b"), rec("r1", "a-again")]})),
    )
    .await;
    let o = &first["offsets"];
    assert_eq!(o[0]["duplicate"], Value::Null);
    assert_eq!(o[2]["duplicate"], true, "{first}");
    assert_eq!(o[2]["offset"], o[0]["offset"]);
    // A retry of a whole request: nothing new stored, same offsets.
    let (_, retry) = call(
        &c,
        M::POST,
        &url,
        Some(json!({"records": [rec("r1", "a"), rec("r2", "b")]})),
    )
    .await;
    assert_eq!(retry["offsets"][0]["offset"], o[0]["offset"]);
    assert_eq!(retry["offsets"][1]["offset"], o[1]["offset"]);
    assert_eq!(retry["offsets"][1]["duplicate"], true);
    // Concurrent producers of one id: exactly one is stored.
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let c = c.clone();
        let url = url.clone();
        let body = json!({"records": [rec("r3", "c")]});
        tasks.push(tokio::spawn(async move {
            c.post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        }));
    }
    let mut offsets = std::collections::BTreeSet::new();
    let mut stored = 0;
    for t in tasks {
        let v = t.await.unwrap();
        offsets.insert(v["offsets"][0]["offset"].as_i64().unwrap());
        if v["offsets"][0]["duplicate"].is_null() {
            stored += 1;
        }
    }
    assert_eq!((offsets.len(), stored), (1, 1));
    // Records without an id are never duplicates.
    for _ in 0..2 {
        let (_, v) = call(
            &c,
            M::POST,
            &url,
            Some(json!({"key": "meter-1", "value": "no id"})),
        )
        .await;
        assert_eq!(v["offsets"][0]["duplicate"], Value::Null);
    }

    // After a restart the window is rebuilt from the log.
    assert!(node.terminate().success());
    let node = Node::start(tmp.path());
    let url = format!("{}/v1/streams/public/default/once/records", node.url);
    let (_, v) = call(
        &c,
        M::POST,
        &url,
        Some(json!({"records": [rec("r2", "b")]})),
    )
    .await;
    assert_eq!(
        (
            v["offsets"][0]["offset"].clone(),
            v["offsets"][0]["duplicate"].clone()
        ),
        (o[1]["offset"].clone(), json!(true)),
        "{v}"
    );
    let p = o[0]["partition"].as_u64().unwrap();
    let (_, all) = call(
        &c,
        M::GET,
        &format!("{url}?partition={p}&from=earliest"),
        None,
    )
    .await;
    let values: Vec<&str> = all["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["value"].as_str().unwrap())
        .collect();
    assert_eq!(values, ["a", "b", "c", "no id", "no id"]);

    // By key instead of an id header.
    let (s, _) = call(
        &c,
        M::POST,
        &format!("{}/v1/streams/public/default", node.url),
        Some(json!({"name": "latest", "policy": {"dedup_window_ms": 600000, "dedup_by": "key"}})),
    )
    .await;
    assert_eq!(s, 201);
    let url = format!("{}/v1/streams/public/default/latest/records", node.url);
    let (_, a) = call(&c, M::POST, &url, Some(json!({"key": "k", "value": 1}))).await;
    let (_, b) = call(&c, M::POST, &url, Some(json!({"key": "k", "value": 2}))).await;
    assert_eq!(b["offsets"][0]["duplicate"], true);
    assert_eq!(b["offsets"][0]["offset"], a["offsets"][0]["offset"]);
    // A bad window is refused.
    let (s, v) = call(
        &c,
        M::POST,
        &format!("{}/v1/streams/public/default", node.url),
        Some(json!({"name": "bad", "policy": {"dedup_window_ms": 0}})),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_argument"))
    );
}

#[tokio::test]
async fn logs_are_json_lines_when_asked() {
    use std::io::Read;
    let tmp = tempfile::tempdir().unwrap();
    let mut node = Node::start_with(
        tmp.path(),
        &["--log-format", "json", "--log-level", "info"],
        |cmd| {
            cmd.stderr(std::process::Stdio::piped());
        },
    );
    let mut err = node.child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    assert!(node.terminate().success());
    let stderr = reader.join().unwrap();
    let port = node.addr.rsplit(':').next().unwrap().to_string();
    let lines: Vec<Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let ready = lines
        .iter()
        .find(|l| l["fields"]["message"] == "fjord is ready")
        .expect("a ready line");
    assert_eq!(ready["level"], "INFO");
    assert_eq!(ready["fields"]["http"], format!("127.0.0.1:{port}"));
    assert!(lines.iter().any(|l| l["fields"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("flushed and fsynced"))));
}

#[tokio::test]
async fn users_are_kept_per_tenant_without_their_passwords() {
    let tmp = tempfile::tempdir().unwrap();
    let node = Node::start(tmp.path());
    let c = http();
    let u = node.url.clone();
    use reqwest::Method as M;
    let put = |pw: &str| Some(json!({ "password": pw }));
    // The tenant must exist; a short password is refused.
    let (s, _) = call(
        &c,
        M::PUT,
        &format!("{u}/v1/tenants/acme/users/alice"),
        put("long enough"),
    )
    .await;
    assert_eq!(s, 404);
    let (s, _) = call(
        &c,
        M::POST,
        &format!("{u}/v1/tenants"),
        Some(json!({"name": "acme"})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, v) = call(
        &c,
        M::PUT,
        &format!("{u}/v1/tenants/acme/users/alice"),
        put("short"),
    )
    .await;
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (400, Some("invalid_argument"))
    );
    let (s, v) = call(
        &c,
        M::PUT,
        &format!("{u}/v1/tenants/acme/users/a:b"),
        put("long enough"),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    let (s, v) = call(
        &c,
        M::PUT,
        &format!("{u}/v1/tenants/acme/users/alice"),
        put("long enough"),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["name"], "alice");
    assert!(!v.to_string().contains("argon2"), "no hash shown: {v}");
    let (s, v) = call(&c, M::GET, &format!("{u}/v1/tenants/acme/users"), None).await;
    assert_eq!(s, 200);
    assert_eq!(v["users"].as_array().unwrap().len(), 1);
    assert!(!v.to_string().contains("argon2"));
    let (s, _) = call(
        &c,
        M::DELETE,
        &format!("{u}/v1/tenants/acme/users/alice"),
        None,
    )
    .await;
    assert_eq!(s, 204);
    let (s, _) = call(
        &c,
        M::DELETE,
        &format!("{u}/v1/tenants/acme/users/alice"),
        None,
    )
    .await;
    assert_eq!(s, 404);
}
