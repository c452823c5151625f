//! Runs the real `fjord` binary for end-to-end tests.

#![allow(dead_code)]

pub mod pki;

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Node {
    pub child: Child,
    pub url: String,
    pub addr: String,
    /// host:port of the MQTT listener.
    pub mqtt: String,
    /// host:port of the MQTT over WebSocket listener.
    pub mqtt_ws: String,
    pub kafka: String,
    /// host:port of the PostgreSQL wire protocol listener.
    pub pg: String,
    pub data_dir: PathBuf,
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_fjord")
}

impl Node {
    /// Starts a node on a free port over `data_dir` and waits until ready.
    pub fn start(data_dir: &Path) -> Node {
        Self::start_with(data_dir, &[], |_| {})
    }

    /// Starts a node with `extra` flags, `tweak` applied to its command.
    ///
    /// Ports are picked free and then bound by the node, so another process
    /// (an outgoing client connection, say) can take one in between; a node
    /// that exits at start is therefore retried with new ports.
    pub fn start_with(data_dir: &Path, extra: &[&str], tweak: impl Fn(&mut Command)) -> Node {
        for _ in 0..5 {
            if let Some(node) = Self::try_start(data_dir, extra, &tweak) {
                return node;
            }
        }
        panic!("fjord did not start over {}", data_dir.display());
    }

    /// Like [`Node::start_with`], with TLS listeners on ports picked anew
    /// for every attempt; `env` gives the environment for those ports.
    pub fn start_tls(
        data_dir: &Path,
        env: impl Fn(&pki::TlsPorts) -> Vec<(String, String)>,
    ) -> (Node, pki::TlsPorts) {
        for _ in 0..5 {
            let ports = pki::TlsPorts::pick();
            let vars = env(&ports);
            if let Some(node) = Self::try_start(data_dir, &[], |cmd| {
                cmd.envs(vars.iter().cloned());
            }) {
                return (node, ports);
            }
        }
        panic!("fjord did not start over {}", data_dir.display());
    }

    /// One attempt: `None` when the node exited at start (a port taken).
    fn try_start(data_dir: &Path, extra: &[&str], tweak: impl Fn(&mut Command)) -> Option<Node> {
        {
            let addr = format!("127.0.0.1:{}", free_port());
            let mqtt = format!("127.0.0.1:{}", free_port());
            let mqtt_ws = format!("127.0.0.1:{}", free_port());
            let kafka = format!("127.0.0.1:{}", free_port());
            let pg = format!("127.0.0.1:{}", free_port());
            let mut cmd = Command::new(bin());
            cmd.args(["serve", "--data-dir"])
                .arg(data_dir)
                .args([
                    "--http-addr",
                    &addr,
                    "--mqtt-addr",
                    &mqtt,
                    "--mqtt-ws-addr",
                    &mqtt_ws,
                    "--kafka-addr",
                    &kafka,
                ])
                .args(if extra.contains(&"--log-level") {
                    &[][..]
                } else {
                    &["--log-level", "warn"][..]
                })
                .args(extra)
                .env_remove("FJORD_URL")
                .env("FJORD_SQL__PG_ADDR", &pg)
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            tweak(&mut cmd);
            let child = cmd.spawn().expect("spawn fjord");
            let mut node = Node {
                child,
                url: format!("http://{addr}"),
                addr,
                mqtt,
                mqtt_ws,
                kafka,
                pg,
                data_dir: data_dir.to_path_buf(),
            };
            node.wait_ready().then_some(node)
        }
    }

    /// Waits until the node answers ready (true) or exits (false).
    pub fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if probe_ok(&format!("{}/readyz", self.url)) {
                return true;
            }
            if self.child.try_wait().ok().flatten().is_some() {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("fjord at {} did not become ready", self.url);
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "fjord did not exit after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking readiness probe over a raw socket, so the helpers need no
/// blocking HTTP client.
pub fn probe_ok(url: &str) -> bool {
    use std::io::{Read, Write};
    let rest = url.trim_start_matches("http://");
    let (host, path) = rest.split_once('/').unwrap_or((rest, ""));
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(
        format!("GET /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .is_err()
    {
        return false;
    }
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    buf.starts_with("HTTP/1.1 200")
}

pub fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Creates stream `name` in `public/default` over the HTTP admin API.
pub async fn create_stream(node: &Node, name: &str, partitions: u32) {
    let r = http()
        .post(format!("{}/v1/streams/public/default", node.url))
        .json(&serde_json::json!({"name": name, "partitions": partitions}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 201, "{}", r.text().await.unwrap());
}

/// GETs `url` and parses the JSON answer.
pub async fn get_json(url: &str) -> serde_json::Value {
    http().get(url).send().await.unwrap().json().await.unwrap()
}

async fn metrics_text(url: &str) -> String {
    metrics_as(url, None).await
}

/// `/metrics`, as `login` (`(tenant:user, password)`) when given.
pub async fn metrics_as(url: &str, login: Option<(&str, &str)>) -> String {
    let mut req = http().get(format!("{url}/metrics"));
    if let Some((user, password)) = login {
        req = req.basic_auth(user, Some(password));
    }
    req.send().await.unwrap().text().await.unwrap()
}

/// The sum of every sample of metric `name` (over all its labels).
pub async fn metric_sum(url: &str, name: &str) -> f64 {
    metrics_text(url)
        .await
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The value of the first sample of `series` (name and labels, as printed)
/// in the node's `/metrics`.
pub async fn metric(url: &str, series: &str) -> f64 {
    let text = metrics_text(url).await;
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no sample of {series} in:\n{text}"))
}

/// Polls a v3.1.1 event loop until `f` says stop, with a deadline.
pub async fn poll_until(ev: &mut rumqttc::EventLoop, mut f: impl FnMut(&rumqttc::Event) -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let e = tokio::time::timeout_at(deadline, ev.poll())
            .await
            .expect("an MQTT event in time")
            .expect("connection ok");
        if f(&e) {
            return;
        }
    }
}
