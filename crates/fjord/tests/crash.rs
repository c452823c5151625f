//! Crash safety against the real binary: with `durability = always`,
//! producers write over HTTP while the node is killed with SIGKILL at a
//! random moment. After each restart every record whose produce call
//! succeeded must be there, byte for byte, at its offset and in order, and
//! the log must accept new appends.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::{http, Node};
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use std::sync::Mutex;

const PRODUCERS: usize = 4;
const ROUNDS: usize = 5;

/// (partition, offset) → value bytes, of every acknowledged record.
type Acked = Arc<Mutex<HashMap<(u32, i64), (usize, u64, Vec<u8>)>>>;

async fn produce_until_error(
    c: reqwest::Client,
    url: String,
    producer: usize,
    acked: Acked,
    seed: u64,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut seq: u64 = 0;
    loop {
        let n = rng.gen_range(1..8);
        let mut values = Vec::new();
        let records: Vec<Value> = (0..n)
            .map(|i| {
                let mut v = format!("p{producer}-s{}-", seq + i as u64).into_bytes();
                let len = rng.gen_range(0..300);
                v.extend((0..len).map(|_| rng.gen::<u8>()));
                values.push(v.clone());
                json!({"key": format!("producer-{producer}"), "value_base64": B64.encode(&v)})
            })
            .collect();
        let resp = match c.post(&url).json(&json!({"records": records})).send().await {
            Ok(r) => r,
            Err(_) => return, // the node died: this call's outcome is unknown
        };
        if !resp.status().is_success() {
            return;
        }
        let Ok(body) = resp.json::<Value>().await else {
            return;
        };
        let mut a = acked.lock().unwrap();
        for (i, o) in body["offsets"].as_array().unwrap().iter().enumerate() {
            let key = (
                o["partition"].as_u64().unwrap() as u32,
                o["offset"].as_i64().unwrap(),
            );
            assert!(
                a.insert(key, (producer, seq + i as u64, values[i].clone()))
                    .is_none(),
                "offset {key:?} acknowledged twice"
            );
        }
        seq += n as u64;
    }
}

async fn read_partition(c: &reqwest::Client, base: &str, p: u32) -> Vec<(i64, Vec<u8>)> {
    let mut out = Vec::new();
    let mut next = 0i64;
    loop {
        let v: Value = c
            .get(format!(
                "{base}/records?partition={p}&offset={next}&format=base64&max_records=10000"
            ))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let recs = v["records"].as_array().unwrap();
        for r in recs {
            out.push((
                r["offset"].as_i64().unwrap(),
                B64.decode(r["value_base64"].as_str().unwrap()).unwrap(),
            ));
        }
        next = v["next_offset"].as_i64().unwrap();
        if next >= v["high_watermark"].as_i64().unwrap() {
            return out;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_never_loses_an_acknowledged_record() {
    let tmp = tempfile::tempdir().unwrap();
    let c = http();
    let acked: Acked = Arc::new(Mutex::new(HashMap::new()));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0x5EED);
    for round in 0..ROUNDS {
        let mut node = Node::start(tmp.path());
        let base = format!("{}/v1/streams/public/default/crash", node.url);
        if round == 0 {
            let r = c
                .post(format!("{}/v1/streams/public/default", node.url))
                .json(&json!({"name": "crash", "partitions": 3, "policy": {"durability": "always", "segment_bytes": 65536}}))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 201);
        }
        let mut tasks = Vec::new();
        for p in 0..PRODUCERS {
            tasks.push(tokio::spawn(produce_until_error(
                c.clone(),
                format!("{base}/records"),
                round * PRODUCERS + p,
                acked.clone(),
                rng.gen(),
            )));
        }
        let kill_after = Duration::from_millis(rng.gen_range(100..1200));
        tokio::time::sleep(kill_after).await;
        node.kill9();
        for t in tasks {
            t.await.unwrap();
        }

        let node = Node::start(tmp.path());
        let base = format!("{}/v1/streams/public/default/crash", node.url);
        let acked_now = acked.lock().unwrap().clone();
        assert!(
            !acked_now.is_empty(),
            "round {round}: nothing was acknowledged before the kill"
        );
        let mut stored: HashMap<(u32, i64), Vec<u8>> = HashMap::new();
        for p in 0..3u32 {
            let recs = read_partition(&c, &base, p).await;
            for w in recs.windows(2) {
                assert!(w[1].0 > w[0].0, "offsets strictly increase");
            }
            for (o, v) in recs {
                stored.insert((p, o), v);
            }
        }
        for (key, (producer, seq, value)) in &acked_now {
            let got = stored.get(key).unwrap_or_else(|| panic!("round {round}: acknowledged record {key:?} (producer {producer} seq {seq}) is gone"));
            assert_eq!(got, value, "round {round}: record {key:?} changed");
        }
        // Per producer, acknowledged sequence numbers follow offsets.
        let mut by_producer: HashMap<usize, Vec<(i64, u64)>> = HashMap::new();
        for ((_, o), (producer, seq, _)) in
            acked_now.iter().filter(|(_, (p, _, _))| *p != usize::MAX)
        {
            by_producer.entry(*producer).or_default().push((*o, *seq));
        }
        for (_, mut v) in by_producer {
            v.sort();
            assert!(
                v.windows(2).all(|w| w[0].1 < w[1].1),
                "round {round}: order broken"
            );
        }
        // The log takes new appends after recovery.
        let r = c
            .post(format!("{base}/records"))
            .json(&json!({"key": "after", "value": "x"}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "round {round}");
        let body: Value = r.json().await.unwrap();
        let key = (
            body["offsets"][0]["partition"].as_u64().unwrap() as u32,
            body["offsets"][0]["offset"].as_i64().unwrap(),
        );
        acked
            .lock()
            .unwrap()
            .insert(key, (usize::MAX, 0, b"x".to_vec()));
        eprintln!(
            "round {round}: killed after {kill_after:?}, {} acknowledged records verified",
            acked_now.len()
        );
        drop(node);
    }
}
