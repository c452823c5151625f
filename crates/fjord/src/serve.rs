//! `fjord serve`: opens the broker (recovering every partition), binds the
//! listeners, serves until SIGTERM or SIGINT, then drains and fsyncs.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use fjord_broker::{Broker, BrokerConfig};
use tokio::net::TcpListener;

use crate::config::{Config, Listen};
use fjord_auth::{ClientAuth, Peer, TlsContext, TlsListen};

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

/// Binds a listener that is on; `None` for one set to `off`.
async fn bind_on(what: &str, listen: Listen, key: &str) -> Result<Option<TcpListener>> {
    let Some(addr) = listen.addr() else {
        return Ok(None);
    };
    let flag = format!("--{}", key.replace(['.', '_'], "-"));
    let env = format!("FJORD_{}", key.to_uppercase().replace('.', "__"));
    bind(what, addr, &flag, &env).await.map(Some)
}

/// Binds a TLS listener when `[tls]` names a certificate and the listener
/// is on.
async fn bind_tls(
    what: &str,
    tls: &Option<Arc<TlsContext>>,
    listen: Listen,
    key: &str,
    client_auth: ClientAuth,
) -> Result<Option<(TcpListener, TlsListen)>> {
    let Some(ctx) = tls else {
        return Ok(None);
    };
    ctx.check_mode(client_auth)
        .with_context(|| format!("{key}: client certificates"))?;
    Ok(bind_on(what, listen, key).await?.map(|l| {
        (
            l,
            TlsListen {
                ctx: ctx.clone(),
                client_auth,
            },
        )
    }))
}

fn local(l: &Option<TcpListener>) -> String {
    l.as_ref()
        .and_then(|l| l.local_addr().ok())
        .map_or_else(|| "off".to_string(), |a| a.to_string())
}

fn local_tls(l: &Option<(TcpListener, TlsListen)>) -> String {
    l.as_ref()
        .and_then(|(l, _)| l.local_addr().ok())
        .map_or_else(|| "off".to_string(), |a| a.to_string())
}

pub async fn run(config: Config) -> Result<()> {
    // Handlers first: a SIGTERM that arrives while the node starts must
    // shut it down cleanly, not kill it (the default action).
    let signals = Signals::install()?;
    let tls = if config.tls.enabled() {
        Some(TlsContext::load(config.tls.clone()).context("loading the [tls] certificate files")?)
    } else {
        None
    };
    let http = bind_on("HTTP", config.http.addr, "http.addr").await?;
    let https = bind_tls(
        "HTTPS",
        &tls,
        config.http.tls_addr,
        "http.tls_addr",
        config.http.tls_client_auth,
    )
    .await?;
    let mqtt = bind_on("MQTT", config.mqtt.addr, "mqtt.addr").await?;
    let mqtt_ws = bind_on("MQTT over WebSocket", config.mqtt.ws_addr, "mqtt.ws_addr").await?;
    let mqtts = bind_tls(
        "MQTT over TLS",
        &tls,
        config.mqtt.tls_addr,
        "mqtt.tls_addr",
        config.mqtt.tls_client_auth,
    )
    .await?;
    let mqtt_wss = bind_tls(
        "MQTT over secure WebSocket",
        &tls,
        config.mqtt.wss_addr,
        "mqtt.wss_addr",
        config.mqtt.tls_client_auth,
    )
    .await?;
    let kafka = bind_on("Kafka", config.kafka.addr, "kafka.addr").await?;
    let kafka_tls = bind_tls(
        "Kafka over TLS",
        &tls,
        config.kafka.tls_addr,
        "kafka.tls_addr",
        config.kafka.tls_client_auth,
    )
    .await?;
    let pg = bind_on("PostgreSQL", config.sql.pg_addr, "sql.pg_addr").await?;
    let pg_tls = match (&tls, &pg) {
        (Some(ctx), Some(_)) => {
            ctx.check_mode(config.sql.pg_tls_client_auth)
                .context("sql.pg_tls_client_auth")?;
            Some(fjord_auth::TlsListen {
                ctx: ctx.clone(),
                client_auth: config.sql.pg_tls_client_auth,
            })
        }
        _ => None,
    };
    let pg_at = local(&pg);
    let tls_reloader = tls.as_ref().map(|t| t.spawn_reloader());
    let mut bc = BrokerConfig::new(&config.data_dir);
    bc.defaults = config.resolved_defaults();
    bc.auth = config.auth.clone();
    bc.limits = config.limits.clone();
    bc.key_file = config.encryption.key_file.clone();
    bc.append_queue_depth = config.storage.append_queue_depth.max(1);
    bc.inflight_bytes_max = config.memory.inflight_bytes_max.max(64 * 1024);
    bc.maintenance_interval =
        Duration::from_millis(config.storage.maintenance_interval_ms.max(100));
    let broker: Arc<Broker> = Broker::open(bc)
        .await
        .with_context(|| format!("opening the data directory {}", config.data_dir.display()))?;
    let maintenance = broker.spawn_maintenance();
    let audit_writer = broker.spawn_audit_writer();
    let (http_at, https_at) = (local(&http), local_tls(&https));
    let (mqtt_at, mqtt_ws_at) = (local(&mqtt), local(&mqtt_ws));
    let (mqtts_at, mqtt_wss_at) = (local_tls(&mqtts), local_tls(&mqtt_wss));
    let (kafka_at, kafka_tls_at) = (local(&kafka), local_tls(&kafka_tls));
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
    let mut mqtt_listeners = Vec::new();
    for (tcp, websocket) in [(mqtt, false), (mqtt_ws, true)] {
        if let Some(tcp) = tcp {
            mqtt_listeners.push(fjord_mqtt::server::Listener {
                tcp,
                websocket,
                tls: None,
            });
        }
    }
    for (l, websocket) in [(mqtts, false), (mqtt_wss, true)] {
        if let Some((tcp, tls)) = l {
            mqtt_listeners.push(fjord_mqtt::server::Listener {
                tcp,
                websocket,
                tls: Some(tls),
            });
        }
    }
    let mqtt_server =
        fjord_mqtt::server::start(mqtt_listeners, broker.clone(), mqtt_config, stop_rx.clone())
            .await
            .context("loading MQTT retained messages")?;
    let mut kafka_listeners = Vec::new();
    if let Some(tcp) = kafka {
        let advertised = advertised(
            &config.kafka.advertised_addr,
            tcp.local_addr()?,
            "kafka.advertised_addr",
        )?;
        kafka_listeners.push(fjord_kafka::Listener {
            tcp,
            tls: None,
            advertised,
        });
    }
    if let Some((tcp, tls)) = kafka_tls {
        let advertised = advertised(
            &config.kafka.tls_advertised_addr,
            tcp.local_addr()?,
            "kafka.tls_advertised_addr",
        )?;
        kafka_listeners.push(fjord_kafka::Listener {
            tcp,
            tls: Some(tls),
            advertised,
        });
    }
    let kafka_server = fjord_kafka::start(
        kafka_listeners,
        broker.clone(),
        kafka_config(&config),
        stop_rx.clone(),
    );
    tracing::info!(
        http = %http_at,
        https = %https_at,
        mqtt = %mqtt_at,
        mqtt_ws = %mqtt_ws_at,
        mqtts = %mqtts_at,
        mqtt_wss = %mqtt_wss_at,
        kafka = %kafka_at,
        kafka_tls = %kafka_tls_at,
        postgres = %pg_at,
        data_dir = %config.data_dir.display(),
        version = env!("CARGO_PKG_VERSION"),
        "fjord is ready"
    );
    let metrics = broker.metrics().clone();
    let tls_admin = tls.as_ref().map(|ctx| {
        let view = |name: &str, at: &str, client_auth: ClientAuth| {
            fjord_http::security_api::TlsListenerView {
                name: name.to_string(),
                addr: at.to_string(),
                client_auth,
            }
        };
        fjord_http::security_api::TlsAdmin {
            ctx: ctx.clone(),
            listeners: [
                view("https", &https_at, config.http.tls_client_auth),
                view("mqtts", &mqtts_at, config.mqtt.tls_client_auth),
                view("mqtt_wss", &mqtt_wss_at, config.mqtt.tls_client_auth),
                view("kafka_tls", &kafka_tls_at, config.kafka.tls_client_auth),
            ]
            .into_iter()
            .filter(|l| l.addr != "off")
            .collect(),
        }
    });
    let sql = fjord_sql::SqlEngine::with_memory(broker.clone(), config.sql.memory_bytes as usize);
    sql.start_queries().await;
    let pg_server = pg.map(|tcp| {
        tokio::spawn(fjord_sql::pg::serve(
            tcp,
            sql.clone(),
            broker.clone(),
            pg_tls,
            stop_rx.clone(),
        ))
    });
    let app = fjord_http::router_with(
        broker.clone(),
        tls_admin,
        Some(Arc::new(crate::sql_http::HttpSql(sql.clone()))),
    );
    let mut servers = tokio::task::JoinSet::new();
    if let Some(http) = http {
        let listener = axum::serve::ListenerExt::tap_io(
            fjord_http::listener::PlainListener::new(http, broker.clone()),
            move |_| {
                metrics.connections_total.with_label_values(&["http"]).inc();
            },
        );
        let (app, mut stop) = (app.clone(), stop_rx.clone());
        servers.spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
    }
    if let Some((tcp, tls)) = https {
        let metrics = broker.metrics().clone();
        let listener = axum::serve::ListenerExt::tap_io(
            fjord_http::listener::TlsListener::new(tcp, tls, broker.clone())?,
            move |_| {
                metrics
                    .connections_total
                    .with_label_values(&["https"])
                    .inc();
            },
        );
        let (app, mut stop) = (app.clone(), stop_rx.clone());
        servers.spawn(async move {
            axum::serve(listener, app.into_make_service_with_connect_info::<Peer>())
                .with_graceful_shutdown(async move {
                    let _ = stop.wait_for(|s| *s).await;
                })
                .await
        });
    }
    let mut server = tokio::spawn(async move {
        if servers.is_empty() {
            // No HTTP listener: nothing here ends the node.
            std::future::pending::<()>().await;
        }
        while let Some(r) = servers.join_next().await {
            r.map_err(std::io::Error::other)??;
        }
        Ok::<(), std::io::Error>(())
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
    if let Some(pg) = pg_server {
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, pg).await;
    }
    // Each continuous query appends what it has and takes a last
    // checkpoint before the log closes.
    sql.stop_queries().await;
    // Events of the last moments reach the audit stream before it closes
    // (they are in the log either way).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while broker.audit_pending() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    audit_writer.abort();
    broker.shutdown().await;
    maintenance.abort();
    if let Some(r) = tls_reloader {
        r.abort();
    }
    tracing::info!("all partitions flushed and fsynced; bye");
    Ok(())
}

/// What Kafka clients of a listener are told to connect to: the configured
/// address, else the listener's, with the host name for a wildcard bind.
fn advertised(
    configured: &str,
    local: std::net::SocketAddr,
    key: &str,
) -> Result<fjord_kafka::Advertised> {
    let (host, port) = if configured.is_empty() {
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
        let (h, p) = configured
            .rsplit_once(':')
            .with_context(|| format!("{key} must be host:port"))?;
        let port: u16 = p
            .parse()
            .with_context(|| format!("{key}: the port is not a number"))?;
        (h.trim_matches(['[', ']']).to_string(), port)
    };
    Ok(fjord_kafka::Advertised { host, port })
}

fn kafka_config(config: &Config) -> fjord_kafka::KafkaConfig {
    fjord_kafka::KafkaConfig {
        node_id: 0,
        cluster_id: "fjord".to_string(),
        max_request_bytes: config.kafka.max_request_bytes.max(1024 * 1024),
        auth_timeout: Duration::from_millis(config.kafka.auth_timeout_ms.max(100)),
        sasl: match config.kafka.sasl {
            crate::config::SaslSetting::Optional => fjord_kafka::sasl::SaslMode::Optional,
            crate::config::SaslSetting::Required => fjord_kafka::sasl::SaslMode::Required,
        },
    }
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
