//! Node configuration: the embedded defaults of ARCHITECTURE §1, overridden
//! by a TOML file (`--config`), then `FJORD_*` environment variables (nested
//! keys joined by `__`, e.g. `FJORD_HTTP__ADDR`), then command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use fjord_auth::ClientAuth;
use fjord_core::policy::ResolvedPolicy;
use fjord_core::Policy;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where streams and metadata live.
    pub data_dir: PathBuf,
    pub http: HttpConfig,
    pub mqtt: MqttListenerConfig,
    pub kafka: KafkaListenerConfig,
    pub log: LogConfig,
    /// Certificate and key of every TLS listener (off while `cert_file` is
    /// empty), and the client CA for mutual TLS.
    pub tls: fjord_auth::TlsSettings,
    /// How clients prove who they are: anonymous access, JWT keys.
    pub auth: fjord_auth::AuthSettings,
    /// Connection limits (global, per IP) and the failed-login ban.
    pub limits: fjord_auth::guard::GuardSettings,
    /// Keys of encryption at rest.
    pub encryption: EncryptionConfig,
    pub storage: StorageConfig,
    pub memory: MemoryConfig,
    pub sql: SqlConfig,
    /// Node-wide policy defaults; namespaces and streams override them.
    pub defaults: Policy,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// REST, WebSocket, admin, metrics and probes.
    pub addr: Listen,
    /// The same over HTTPS (needs `[tls]`).
    pub tls_addr: Listen,
    /// Client certificates on the HTTPS listener: none, optional, required.
    pub tls_client_auth: ClientAuth,
}

/// A listener's address, or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Listen {
    On(SocketAddr),
    Off,
}

impl Listen {
    pub fn addr(&self) -> Option<SocketAddr> {
        match self {
            Listen::On(a) => Some(*a),
            Listen::Off => None,
        }
    }
}

impl TryFrom<String> for Listen {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("off") {
            return Ok(Listen::Off);
        }
        s.trim()
            .parse()
            .map(Listen::On)
            .map_err(|_| format!("{s:?} is neither host:port (e.g. 0.0.0.0:1883) nor `off`"))
    }
}

impl From<Listen> for String {
    fn from(l: Listen) -> String {
        match l {
            Listen::On(a) => a.to_string(),
            Listen::Off => "off".into(),
        }
    }
}

fn on(addr: &str) -> Listen {
    Listen::On(addr.parse().expect("valid address"))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttListenerConfig {
    /// MQTT 3.1.1 and 5.0 over TCP.
    pub addr: Listen,
    /// MQTT over WebSocket (path `/mqtt`, subprotocol `mqtt`).
    pub ws_addr: Listen,
    /// MQTT over TLS (needs `[tls]`).
    pub tls_addr: Listen,
    /// MQTT over secure WebSocket (needs `[tls]`).
    pub wss_addr: Listen,
    /// Client certificates on the two TLS listeners.
    pub tls_client_auth: ClientAuth,
    /// Largest MQTT packet accepted (advertised as Maximum Packet Size).
    pub max_packet_bytes: u32,
    /// A connection must send CONNECT within this time.
    pub connect_timeout_ms: u64,
    /// Unacknowledged QoS 1/2 publications a client may have towards us
    /// (advertised as Receive Maximum).
    pub receive_maximum: u16,
    /// Our unacknowledged QoS 1/2 deliveries per client at most.
    pub outbound_inflight_max: u16,
    /// Topic aliases a 5.0 client may use towards us.
    pub topic_alias_maximum: u16,
    /// Longest a persistent session outlives its connection.
    pub session_expiry_max_s: u64,
    /// Longest keep alive a client may ask for (seconds; 0: no maximum).
    /// 5.0 clients asking for more, or none, are given this as Server Keep
    /// Alive; 3.1.1 clients are refused.
    pub keep_alive_max_s: u16,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaListenerConfig {
    /// Kafka's wire protocol.
    pub addr: Listen,
    /// `host:port` clients are told to connect to (Metadata); empty: the
    /// listener's address, or the machine's host name when it listens on
    /// every interface.
    pub advertised_addr: String,
    /// Kafka over TLS (`security.protocol=SSL` / `SASL_SSL`; needs `[tls]`).
    pub tls_addr: Listen,
    /// What clients of the TLS listener are told to connect to.
    pub tls_advertised_addr: String,
    /// Client certificates on the TLS listener.
    pub tls_client_auth: ClientAuth,
    /// Largest request accepted (Kafka's `socket.request.max.bytes`).
    pub max_request_bytes: usize,
    /// SASL logins: `optional` (clients that do not log in are identified
    /// by their certificate, or anonymous where allowed) or `required`.
    pub sasl: SaslSetting,
    /// A connection that must log in has this long to do so.
    pub auth_timeout_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SaslSetting {
    Optional,
    Required,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptionConfig {
    /// TOML file of per-tenant AES-256 keys (`tenant = ["base64", …]`,
    /// current first); streams with policy `encrypted` need their tenant's.
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: String,
    /// A `tracing` filter, e.g. `info` or `fjord=debug,info`.
    pub level: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    /// Appends queued per partition before producers wait (back pressure).
    pub append_queue_depth: usize,
    /// How often retention, age rolls and compaction run.
    pub maintenance_interval_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryConfig {
    /// Message bytes in flight at most (request bodies, fetches); beyond it
    /// new work waits instead of allocating.
    pub inflight_bytes_max: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlConfig {
    /// The PostgreSQL wire protocol (psql, psycopg, JDBC, Grafana); TLS on
    /// the same port when `[tls]` is set (clients ask with `sslmode`).
    pub pg_addr: Listen,
    /// Client certificates on the PostgreSQL listener's TLS.
    pub pg_tls_client_auth: ClientAuth,
    /// Memory all SQL queries of the node may hold together; a query that
    /// needs more fails ("resources exhausted") instead of growing the node.
    pub memory_bytes: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("./fjord-data"),
            http: HttpConfig {
                addr: on("0.0.0.0:8080"),
                tls_addr: on("0.0.0.0:8443"),
                tls_client_auth: ClientAuth::None,
            },
            mqtt: MqttListenerConfig {
                addr: on("0.0.0.0:1883"),
                ws_addr: on("0.0.0.0:8083"),
                tls_addr: on("0.0.0.0:8883"),
                wss_addr: on("0.0.0.0:8084"),
                tls_client_auth: ClientAuth::None,
                max_packet_bytes: 1024 * 1024 + 64 * 1024,
                connect_timeout_ms: 10_000,
                receive_maximum: 1024,
                outbound_inflight_max: 1024,
                topic_alias_maximum: 64,
                session_expiry_max_s: 7 * 24 * 3600,
                keep_alive_max_s: 0,
            },
            kafka: KafkaListenerConfig {
                addr: on("0.0.0.0:9092"),
                advertised_addr: String::new(),
                tls_addr: on("0.0.0.0:9093"),
                tls_advertised_addr: String::new(),
                tls_client_auth: ClientAuth::None,
                max_request_bytes: 100 * 1024 * 1024,
                sasl: SaslSetting::Optional,
                auth_timeout_ms: 10_000,
            },
            log: LogConfig {
                format: "text".into(),
                level: "info".into(),
            },
            tls: fjord_auth::TlsSettings::default(),
            auth: fjord_auth::AuthSettings::default(),
            limits: Default::default(),
            encryption: EncryptionConfig::default(),
            storage: StorageConfig {
                append_queue_depth: 1024,
                maintenance_interval_ms: 30_000,
            },
            memory: MemoryConfig {
                inflight_bytes_max: 512 * 1024 * 1024,
            },
            sql: SqlConfig {
                pg_addr: on("0.0.0.0:5433"),
                pg_tls_client_auth: ClientAuth::None,
                memory_bytes: fjord_sql::MEMORY_DEFAULT as u64,
            },
            defaults: Policy::default(),
        }
    }
}

/// Values given on the command line; `None` leaves the layer below.
#[derive(Debug, Default, Serialize)]
pub struct FlagOverrides {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mqtt_ws_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kafka_addr: Option<SocketAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_format: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_level: Option<String>,
}

impl Config {
    pub fn load(file: Option<&PathBuf>, flags: FlagOverrides) -> anyhow::Result<Self> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = file {
            if !f.exists() {
                anyhow::bail!("config file {} does not exist", f.display());
            }
            fig = fig.merge(Toml::file(f));
        }
        // The CLI's own variables are not node settings.
        fig = fig.merge(
            Env::prefixed("FJORD_")
                .split("__")
                .ignore(&["url", "user", "password", "token", "ca_cert"]),
        );
        if let Some(d) = flags.data_dir {
            fig = fig.merge(("data_dir", d));
        }
        if let Some(a) = flags.http_addr {
            fig = fig.merge(("http.addr", a));
        }
        if let Some(a) = flags.mqtt_addr {
            fig = fig.merge(("mqtt.addr", a));
        }
        if let Some(a) = flags.mqtt_ws_addr {
            fig = fig.merge(("mqtt.ws_addr", a));
        }
        if let Some(a) = flags.kafka_addr {
            fig = fig.merge(("kafka.addr", a));
        }
        if let Some(f) = flags.log_format {
            fig = fig.merge(("log.format", f));
        }
        if let Some(l) = flags.log_level {
            fig = fig.merge(("log.level", l));
        }
        let c: Config = fig.extract()?;
        c.defaults
            .validate()
            .map_err(|e| anyhow::anyhow!("[defaults]: {e}"))?;
        if c.log.format != "text" && c.log.format != "json" {
            anyhow::bail!(
                "log.format must be `text` or `json`, not {:?}",
                c.log.format
            );
        }
        Ok(c)
    }

    pub fn resolved_defaults(&self) -> ResolvedPolicy {
        self.defaults.resolve(&ResolvedPolicy::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("fjord.toml");
        std::fs::write(&f, "data_dir = \"/from/file\"\n[http]\naddr = \"127.0.0.1:1\"\n[defaults]\ndurability = \"always\"\n").unwrap();
        let c = Config::load(
            Some(&f),
            FlagOverrides {
                http_addr: Some("127.0.0.1:2".parse().unwrap()),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/from/file"));
        assert_eq!(c.http.addr.addr().map(|a| a.port()), Some(2));
        assert_eq!(
            c.resolved_defaults().durability,
            fjord_core::Durability::Always
        );
    }

    #[test]
    fn listeners_turn_off_and_tls_reads_its_section() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("fjord.toml");
        std::fs::write(
            &f,
            "[mqtt]\naddr = \"off\"\ntls_client_auth = \"required\"\n[tls]\ncert_file = \"/c.pem\"\nkey_file = \"/k.pem\"\n",
        )
        .unwrap();
        let c = Config::load(Some(&f), FlagOverrides::default()).unwrap();
        assert_eq!(c.mqtt.addr, Listen::Off);
        assert_eq!(c.mqtt.tls_client_auth, ClientAuth::Required);
        assert!(c.tls.enabled());
        std::fs::write(&f, "[mqtt]\naddr = \"nowhere\"\n").unwrap();
        let e = Config::load(Some(&f), FlagOverrides::default()).unwrap_err();
        assert!(e.to_string().contains("nor `off`"), "{e}");
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("fjord.toml");
        std::fs::write(&f, "data_dri = \"x\"\n").unwrap();
        assert!(Config::load(Some(&f), FlagOverrides::default()).is_err());
        std::fs::write(&f, "[defaults]\ndurability = \"sometimes\"\n").unwrap();
        let e = Config::load(Some(&f), FlagOverrides::default()).unwrap_err();
        assert!(e.to_string().contains("durability"), "{e}");
    }
}
