//! `fjord`: the server and its command-line client in one binary.
//!
//! `fjord` or `fjord serve` runs a node; every other subcommand talks to a
//! running node over its HTTP API (`--url`, default `http://127.0.0.1:8080`).

mod admin_cli;
mod alloc;
mod client;
mod config;
mod serve;
mod sql_bench;
mod sql_cli;
mod sql_http;

#[global_allocator]
static ALLOCATOR: alloc::ReserveLarge = alloc::ReserveLarge;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "fjord",
    version,
    about = "Fjord: the IoT messaging and data platform"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Args, Default)]
pub struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, global = false)]
    config: Option<PathBuf>,
    /// Data directory (default ./fjord-data).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// HTTP listener address (default 0.0.0.0:8080).
    #[arg(long)]
    http_addr: Option<SocketAddr>,
    /// MQTT listener address (default 0.0.0.0:1883).
    #[arg(long)]
    mqtt_addr: Option<SocketAddr>,
    /// MQTT over WebSocket listener address (default 0.0.0.0:8083).
    #[arg(long)]
    mqtt_ws_addr: Option<SocketAddr>,
    /// Kafka listener address (default 0.0.0.0:9092).
    #[arg(long)]
    kafka_addr: Option<SocketAddr>,
    /// Log format: text or json.
    #[arg(long)]
    log_format: Option<String>,
    /// Log filter, e.g. info or fjord_log=debug,info.
    #[arg(long)]
    log_level: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (the default when no subcommand is given).
    Serve(ServeArgs),
    /// Create, list, describe and delete streams.
    Stream {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        cmd: client::StreamCmd,
    },
    /// Run SQL on a node's streams: `-c 'SELECT …'`, statements on stdin,
    /// or an interactive shell.
    Sql(sql_cli::SqlArgs),
    /// Produce records: one per line of stdin (or --file).
    Produce(client::ProduceArgs),
    /// Consume records, optionally following the tail.
    Consume(client::ConsumeArgs),
    /// Drive MQTT load against Fjord and peer brokers; print a table of ratios.
    Bench(fjord_bench::BenchArgs),
    /// MQTT settings of a namespace.
    Mqtt {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        cmd: client::MqttCmd,
    },
    /// Users, their passwords, roles and quotas.
    User {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        cmd: admin_cli::UserCmd,
    },
    /// ACL rules of a tenant.
    Acl {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        cmd: admin_cli::AclCmd,
    },
    /// Tenants, their security settings and quotas.
    Tenant {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        cmd: admin_cli::TenantCmd,
    },
    /// Development tokens (JWT).
    Token {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        cmd: admin_cli::TokenCmd,
    },
    /// The node's TLS certificate and listeners.
    Tls {
        #[command(flatten)]
        conn: client::Conn,
        #[command(subcommand)]
        cmd: admin_cli::TlsCmd,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Bench(args)) = cli.command {
        // The harness runs its own threads and runtime; brokers are children.
        return match bench(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async move {
        match cli.command {
            None => serve_cmd(cli.serve).await,
            Some(Command::Serve(a)) => serve_cmd(a).await,
            Some(Command::Stream { conn, cmd }) => client::stream(conn, cmd).await,
            Some(Command::Produce(a)) => client::produce(a).await,
            Some(Command::Sql(a)) => sql_cli::sql(a).await,
            Some(Command::Consume(a)) => client::consume(a).await,
            Some(Command::Mqtt { conn, cmd }) => client::mqtt(conn, cmd).await,
            Some(Command::User { conn, cmd }) => admin_cli::user(conn, cmd).await,
            Some(Command::Acl { conn, cmd }) => admin_cli::acl(conn, cmd).await,
            Some(Command::Tenant { conn, cmd }) => admin_cli::tenant(conn, cmd).await,
            Some(Command::Token { conn, cmd }) => admin_cli::token(conn, cmd).await,
            Some(Command::Tls { conn, cmd }) => admin_cli::tls(conn, cmd).await,
            Some(Command::Bench(_)) => unreachable!("handled before the runtime starts"),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn serve_cmd(a: ServeArgs) -> anyhow::Result<()> {
    let flags = config::FlagOverrides {
        data_dir: a.data_dir,
        http_addr: a.http_addr,
        mqtt_addr: a.mqtt_addr,
        mqtt_ws_addr: a.mqtt_ws_addr,
        kafka_addr: a.kafka_addr,
        log_format: a.log_format,
        log_level: a.log_level,
    };
    let c = config::Config::load(a.config.as_ref(), flags)?;
    serve::init_logging(&c);
    serve::run(c).await
}

/// `fjord bench`: the protocol scenarios in the harness, then the SQL ones
/// (i, j) on an embedded node.
fn bench(mut args: fjord_bench::BenchArgs) -> anyhow::Result<()> {
    let wanted = |x: &str| args.scenarios.iter().any(|s| s.trim() == x);
    let (continuous, adhoc) = (wanted("i"), wanted("j"));
    args.scenarios.retain(|s| !matches!(s.trim(), "i" | "j"));
    if !args.scenarios.is_empty() {
        fjord_bench::run(args.clone())?;
    }
    if !continuous && !adhoc {
        return Ok(());
    }
    let sizes = if args.quick {
        sql_bench::Sizes::quick()
    } else {
        sql_bench::Sizes::full()
    };
    let work = match &args.work_dir {
        Some(d) => d.join("sql"),
        None => std::env::temp_dir().join(format!("fjord-bench-sql-{}", std::process::id())),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let (c, a) = rt.block_on(async {
        let c = if continuous {
            eprintln!("▸ (i) continuous aggregate");
            let dir = work.join("continuous");
            std::fs::create_dir_all(&dir)?;
            Some(sql_bench::continuous(&dir, &sizes).await)
        } else {
            None
        };
        let a = if adhoc {
            eprintln!("▸ (j) ad-hoc aggregate against DataFusion over Parquet");
            let dir = work.join("adhoc");
            std::fs::create_dir_all(&dir)?;
            Some(sql_bench::adhoc(&dir, &sizes).await)
        } else {
            None
        };
        anyhow::Ok((c, a))
    })?;
    rt.shutdown_timeout(std::time::Duration::from_secs(5));
    let _ = std::fs::remove_dir_all(&work);
    let report = sql_bench::report(c.as_ref(), a.as_ref());
    println!("{report}");
    if let Some(out) = &args.out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)?;
        f.write_all(report.as_bytes())?;
    }
    Ok(())
}
