//! `fjord serve`: opens the broker (recovering every partition), binds the
//! listeners, serves until SIGTERM or SIGINT, then drains and fsyncs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use fjord_broker::{Broker, BrokerConfig};
use tokio::net::TcpListener;

use crate::config::Config;

/// How long in-flight requests (long polls, WebSockets) get after a signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

pub fn init_logging(c: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_new(&c.log.level)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if c.log.format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Binds `addr`, turning "address in use" into a message that names the
/// port and the setting that moves it.
async fn bind(
    what: &str,
    addr: std::net::SocketAddr,
    flag: &str,
    env: &str,
) -> Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        let hint = format!("change it with {flag}, {env}, or in the config file");
        if e.kind() == std::io::ErrorKind::AddrInUse {
            anyhow::anyhow!(
                "cannot listen for {what} on {addr}: port {} is already in use; {hint}",
                addr.port()
            )
        } else {
            anyhow::anyhow!("cannot listen for {what} on {addr}: {e}; {hint}")
        }
    })
}

pub async fn run(config: Config) -> Result<()> {
    // Handlers first: a SIGTERM that arrives while the node starts must
    // shut it down cleanly, not kill it (the default action).
    let signals = Signals::install()?;
    let http = bind("HTTP", config.http.addr, "--http-addr", "FJORD_HTTP__ADDR").await?;
    let mqtt = bind("MQTT", config.mqtt.addr, "--mqtt-addr", "FJORD_MQTT__ADDR").await?;
    let mqtt_ws = bind(
        "MQTT over WebSocket",
        config.mqtt.ws_addr,
        "--mqtt-ws-addr",
        "FJORD_MQTT__WS_ADDR",
    )
    .await?;
    let kafka = bind(
        "Kafka",
        config.kafka.addr,
        "--kafka-addr",
        "FJORD_KAFKA__ADDR",
    )
    .await?;
    let mut bc = BrokerConfig::new(&config.data_dir);
    bc.defaults = config.resolved_defaults();
    bc.append_queue_depth = config.storage.append_queue_depth.max(1);
    bc.inflight_bytes_max = config.memory.inflight_bytes_max.max(64 * 1024);
    bc.maintenance_interval =
        Duration::from_millis(config.storage.maintenance_interval_ms.max(100));
    let broker: Arc<Broker> = Broker::open(bc)
        .await
        .with_context(|| format!("opening the data directory {}", config.data_dir.display()))?;
    let maintenance = broker.spawn_maintenance();
    let http_local = http.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let mqtt_local = mqtt.local_addr().map(|a| a.to_string()).unwrap_or_default();
    let mqtt_ws_local = mqtt_ws
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mqtt_config = fjord_mqtt::server::MqttConfig {
        max_packet_bytes: config.mqtt.max_packet_bytes.max(1024),
        connect_timeout: Duration::from_millis(config.mqtt.connect_timeout_ms.max(100)),
        receive_maximum: config.mqtt.receive_maximum.max(1),
        outbound_inflight_max: config.mqtt.outbound_inflight_max.max(1),
        topic_alias_maximum: config.mqtt.topic_alias_maximum,
        session_expiry_max: Duration::from_secs(config.mqtt.session_expiry_max_s),
        keep_alive_max: config.mqtt.keep_alive_max_s,
        ..Default::default()
    };
    let mqtt_server = fjord_mqtt::server::start(
        mqtt,
        Some(mqtt_ws),
        broker.clone(),
        mqtt_config,
        stop_rx.clone(),
    )
    .await
    .context("loading MQTT retained messages")?;
    let kafka_local = kafka.local_addr().context("the Kafka listener's address")?;
    let kafka_server = fjord_kafka::start(
        kafka,
        broker.clone(),
        kafka_config(&config, kafka_local)?,
        stop_rx.clone(),
    );
    tracing::info!(
        kafka = %kafka_local,
        data_dir = %config.data_dir.display(),
        http = %http_local,
        mqtt = %mqtt_local,
        mqtt_ws = %mqtt_ws_local,
        version = env!("CARGO_PKG_VERSION"),
        "fjord is ready"
    );
    let metrics = broker.metrics().clone();
    let app = fjord_http::router(broker.clone());
    let listener = axum::serve::ListenerExt::tap_io(http, move |_| {
        metrics.connections_total.with_label_values(&["http"]).inc();
    });
    let mut server = tokio::spawn(async move {
        let mut stop = stop_rx;
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await
    });
    tokio::select! {
        sig = signals.wait() => tracing::info!(signal = sig, "shutting down"),
        r = &mut server => {
            r.context("HTTP server task")?.context("HTTP server")?;
        }
    }
    let _ = stop_tx.send(true);
    if tokio::time::timeout(DRAIN_TIMEOUT, &mut server)
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish within {DRAIN_TIMEOUT:?}; closing them");
        server.abort();
    }
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, mqtt_server).await;
    let _ = tokio::time::timeout(DRAIN_TIMEOUT, kafka_server).await;
    broker.shutdown().await;
    maintenance.abort();
    tracing::info!("all partitions flushed and fsynced; bye");
    Ok(())
}

/// What Kafka clients are told to connect to: the configured advertised
/// address, else the listener's, with the host name for a wildcard bind.
fn kafka_config(config: &Config, local: std::net::SocketAddr) -> Result<fjord_kafka::KafkaConfig> {
    let (host, port) = if config.kafka.advertised_addr.is_empty() {
        let host = if local.ip().is_unspecified() {
            std::fs::read_to_string("/etc/hostname")
                .map(|h| h.trim().to_string())
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".to_string())
        } else {
            local.ip().to_string()
        };
        (host, local.port())
    } else {
        let (h, p) = config
            .kafka
            .advertised_addr
            .rsplit_once(':')
            .context("kafka.advertised_addr must be host:port")?;
        let port: u16 = p
            .parse()
            .context("kafka.advertised_addr: the port is not a number")?;
        (h.trim_matches(['[', ']']).to_string(), port)
    };
    Ok(fjord_kafka::KafkaConfig {
        tenant: fjord_core::TenantName::new(fjord_core::names::PUBLIC_TENANT)
            .expect("valid tenant name"),
        advertised_host: host,
        advertised_port: port,
        node_id: 0,
        cluster_id: "fjord".to_string(),
        max_request_bytes: config.kafka.max_request_bytes.max(1024 * 1024),
        sasl: match config.kafka.sasl {
            crate::config::SaslSetting::Optional => fjord_kafka::sasl::SaslMode::Optional,
            crate::config::SaslSetting::Required => fjord_kafka::sasl::SaslMode::Required,
        },
    })
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
        })
    }

    async fn wait(mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
