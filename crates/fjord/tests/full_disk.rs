//! A full disk stops acknowledgements, never corrupts data: produce fails
//! with `storage_full` (HTTP 507), the node keeps serving reads, and after a
//! restart with room every acknowledged record is intact and appends resume.
//!
//! The disk is a small tmpfs when this process may mount one (root, as in
//! CI); otherwise the node runs under a file-size limit (RLIMIT_FSIZE), which
//! fails writes the same way (EFBIG) at the same place in the code.

mod common;

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use common::{http, Node};
use serde_json::{json, Value};

fn mount_tmpfs(dir: &Path, size: &str) -> bool {
    Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn remount(dir: &Path, size: &str) {
    let ok = Command::new("mount")
        .args(["-o", &format!("remount,size={size}")])
        .arg(dir)
        .status()
        .unwrap()
        .success();
    assert!(ok, "remount tmpfs");
}

struct Unmount<'a>(&'a Path, bool);
impl Drop for Unmount<'_> {
    fn drop(&mut self) {
        if self.1 {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
}

const FSIZE_LIMIT: u64 = 8 << 20;

#[tokio::test]
async fn a_full_disk_refuses_appends_and_damages_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // FULL_DISK_TEST_NO_MOUNT=1 exercises the file-size-limit variant.
    let tmpfs = std::env::var_os("FULL_DISK_TEST_NO_MOUNT").is_none() && mount_tmpfs(&data, "12m");
    let _unmount = Unmount(&data, tmpfs);
    eprintln!(
        "full disk by {}",
        if tmpfs {
            "a 12 MiB tmpfs"
        } else {
            "RLIMIT_FSIZE"
        }
    );

    let mut node = Node::start_with(&data, &[], |cmd| {
        if !tmpfs {
            unsafe {
                cmd.pre_exec(|| {
                    libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                    let lim = libc::rlimit {
                        rlim_cur: FSIZE_LIMIT,
                        rlim_max: FSIZE_LIMIT,
                    };
                    if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    });
    let c = http();
    let r = c
        .post(format!("{}/v1/streams/public/default", node.url))
        .json(
            &json!({"name": "fill", "policy": {"durability": "always", "segment_bytes": 67108864}}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let url = format!("{}/v1/streams/public/default/fill/records", node.url);
    let mut acked: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut refusal = None;
    for round in 0..10_000u32 {
        let values: Vec<Vec<u8>> = (0..16u32)
            .map(|i| {
                format!("{round}-{i}-")
                    .into_bytes()
                    .into_iter()
                    .chain(std::iter::repeat_n(b'z', 4000))
                    .collect()
            })
            .collect();
        let records: Vec<Value> = values
            .iter()
            .map(|v| json!({"value_base64": B64.encode(v)}))
            .collect();
        let resp = c
            .post(&url)
            .json(&json!({"records": records}))
            .send()
            .await
            .unwrap();
        if resp.status().is_success() {
            let body: Value = resp.json().await.unwrap();
            for (o, v) in body["offsets"].as_array().unwrap().iter().zip(values) {
                acked.push((o["offset"].as_i64().unwrap(), v));
            }
        } else {
            refusal = Some((resp.status().as_u16(), resp.json::<Value>().await.unwrap()));
            break;
        }
    }
    let (status, body) = refusal.expect("the disk never filled");
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (507, Some("storage_full")),
        "{body}"
    );
    assert!(acked.len() > 100, "only {} records fit", acked.len());

    // Still serving: probes and reads answer, and nothing acknowledged is missing.
    assert!(common::probe_ok(&format!("{}/readyz", node.url)));
    let check = |node_url: String, acked: Vec<(i64, Vec<u8>)>| {
        let c = c.clone();
        async move {
            let mut next = 0i64;
            let mut got: Vec<(i64, Vec<u8>)> = Vec::new();
            loop {
                let v: Value = c.get(format!("{node_url}/v1/streams/public/default/fill/records?offset={next}&format=base64&max_records=10000")).send().await.unwrap().json().await.unwrap();
                for r in v["records"].as_array().unwrap() {
                    got.push((
                        r["offset"].as_i64().unwrap(),
                        B64.decode(r["value_base64"].as_str().unwrap()).unwrap(),
                    ));
                }
                next = v["next_offset"].as_i64().unwrap();
                if next >= v["high_watermark"].as_i64().unwrap() {
                    break;
                }
            }
            assert_eq!(
                got.len(),
                acked.len(),
                "exactly the acknowledged records are stored"
            );
            assert!(
                got == acked,
                "stored records differ from the acknowledged ones"
            );
        }
    };
    check(node.url.clone(), acked.clone()).await;

    // Make room, restart: everything intact, appends resume after the last.
    assert!(node.terminate().success() || !tmpfs, "clean exit");
    drop(node);
    if tmpfs {
        remount(&data, "64m");
    }
    let node = Node::start(&data);
    check(node.url.clone(), acked.clone()).await;
    let r: Value = c
        .post(format!(
            "{}/v1/streams/public/default/fill/records",
            node.url
        ))
        .json(&json!({"value": "room again"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        r["offsets"][0]["offset"].as_i64().unwrap(),
        acked.len() as i64
    );
}
