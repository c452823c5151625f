//! Starting and stopping the brokers under test, each as its own process
//! on loopback with a fresh data directory, so no run inherits another's
//! state or memory.

use std::fmt;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Fjord,
    Mosquitto,
    Nats,
}

impl Kind {
    pub fn parse(s: &str) -> Result<Kind> {
        Ok(match s {
            "fjord" => Kind::Fjord,
            "mosquitto" => Kind::Mosquitto,
            "nats" | "nats-server" => Kind::Nats,
            other => bail!("unknown broker {other:?}: expected fjord, mosquitto or nats"),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Fjord => "fjord",
            Kind::Mosquitto => "mosquitto",
            Kind::Nats => "nats-server",
        }
    }

    /// The version the peer reports, for the report's header.
    pub fn version(self, fjord_exe: &Path) -> String {
        let (prog, arg) = match self {
            Kind::Fjord => (fjord_exe.to_string_lossy().into_owned(), "--version"),
            Kind::Mosquitto => ("mosquitto".to_string(), "-h"),
            Kind::Nats => ("nats-server".to_string(), "--version"),
        };
        match Command::new(&prog).arg(arg).output() {
            Ok(o) => {
                let text = String::from_utf8_lossy(&o.stdout).into_owned()
                    + &String::from_utf8_lossy(&o.stderr);
                text.lines().next().unwrap_or("").trim().to_string()
            }
            Err(e) => format!("not runnable: {e}"),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a run wants the broker tuned: each peer gets its best setting for
/// the scenario (Mosquitto's `set_tcp_nodelay` only helps latency).
#[derive(Debug, Clone, Copy, Default)]
pub struct Tuning {
    pub low_latency: bool,
}

pub struct Broker {
    pub kind: Kind,
    /// The MQTT listener.
    pub addr: SocketAddr,
    /// The Kafka listener (Fjord only).
    pub kafka: Option<SocketAddr>,
    child: Child,
    _dir: PathBuf,
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl Broker {
    pub fn start(kind: Kind, fjord_exe: &Path, work: &Path, tuning: Tuning) -> Result<Broker> {
        let dir = work.join(format!(
            "{}-{}",
            kind.name(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let port = free_port()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let kafka: Option<SocketAddr> = match kind {
            Kind::Fjord => Some(([127, 0, 0, 1], free_port()?).into()),
            _ => None,
        };
        let mut cmd = match kind {
            Kind::Fjord => {
                let mut c = Command::new(fjord_exe);
                c.arg("serve")
                    .arg("--data-dir")
                    .arg(dir.join("data"))
                    .arg("--http-addr")
                    .arg(format!("127.0.0.1:{}", free_port()?))
                    .arg("--mqtt-addr")
                    .arg(addr.to_string())
                    .arg("--mqtt-ws-addr")
                    .arg(format!("127.0.0.1:{}", free_port()?))
                    .arg("--kafka-addr")
                    .arg(kafka.map(|a| a.to_string()).unwrap_or_default())
                    .arg("--log-level")
                    .arg("warn")
                    .env("FJORD_SQL__PG_ADDR", format!("127.0.0.1:{}", free_port()?));
                c
            }
            Kind::Mosquitto => {
                // Defaults except: no queue cap that would drop QoS 1
                // messages while the subscriber is behind (a run that
                // loses messages fails), and nodelay for latency runs.
                let conf = dir.join("mosquitto.conf");
                let text = format!(
                    "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n\
                     max_queued_messages 0\nlog_dest none\nset_tcp_nodelay {}\n",
                    tuning.low_latency
                );
                std::fs::write(&conf, text)?;
                let mut c = Command::new("mosquitto");
                c.arg("-c").arg(&conf);
                c
            }
            Kind::Nats => {
                let conf = dir.join("nats.conf");
                let text = format!(
                    "listen: 127.0.0.1:{}\nserver_name: fjord-bench\n\
                     jetstream {{\n  store_dir: {:?}\n}}\n\
                     mqtt {{\n  listen: 127.0.0.1:{port}\n}}\n",
                    free_port()?,
                    dir.join("js").to_string_lossy()
                );
                std::fs::write(&conf, text)?;
                let mut c = Command::new("nats-server");
                c.arg("-c").arg(&conf);
                c
            }
        };
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(std::fs::File::create(dir.join("stderr.log"))?));
        let child = cmd
            .spawn()
            .with_context(|| format!("starting {} (is it installed?)", kind.name()))?;
        let mut b = Broker {
            kind,
            addr,
            kafka,
            child,
            _dir: dir,
        };
        b.wait_ready()?;
        Ok(b)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                let log = std::fs::read_to_string(self._dir.join("stderr.log")).unwrap_or_default();
                bail!("{} exited at start ({status}): {log}", self.kind.name());
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} did not listen on {} within 20 s",
                    self.kind.name(),
                    self.addr
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size in bytes, from /proc.
    pub fn rss_bytes(&self) -> Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        for line in status.lines() {
            if let Some(rest) = line.strip_prefix("VmRSS:") {
                let kb: u64 = rest
                    .trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse()
                    .context("VmRSS")?;
                return Ok(kb * 1024);
            }
        }
        bail!("no VmRSS for pid {}", self.pid())
    }

    /// CPU time (user + system) the broker has used so far.
    pub fn cpu_time(&self) -> Result<Duration> {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid()))?;
        // Fields after the parenthesised command name; utime and stime are
        // the 14th and 15th fields of the whole line.
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let f: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Ok(Duration::from_millis((ticks(11) + ticks(12)) * 1000 / hz))
    }

    pub fn alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_dir_all(&self._dir);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}
