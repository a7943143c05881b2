//! `petrel-server` command line: parses options, sets up logging and runs the server.

#![forbid(unsafe_code)]

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use petrel_server::reports::{Enrolled, ReportStore, ReportsConfig, StoreOptions};
use petrel_server::{parse_duration, Limits, Server, ServerConfig};
use tracing_subscriber::EnvFilter;

const TOP_EXAMPLES: &str = "\
Example:
  petrel-server serve --root ./tree --listen 127.0.0.1:8080 --access-log";

const SERVE_EXAMPLES: &str = "\
Examples:
  # Serve ./tree on a fixed port, logging every request to stderr
  petrel-server serve --root ./tree --listen 127.0.0.1:8080 --access-log

  # Let the OS pick a port; the first stdout line tells which
  petrel-server serve --root ./tree --listen 127.0.0.1:0
  # -> listening on http://127.0.0.1:41234

  # Tighter limits for a small device-facing mirror
  petrel-server serve --root ./tree --max-connections 256 --header-read-timeout 5s --idle-timeout 15s

  # Also take signed device reports on POST /v1/reports
  petrel-server serve --root ./tree --reports-db /var/lib/petrel/reports.db";

const ENROLL_EXAMPLES: &str = "\
Example:
  petrel-server enroll --reports-db /var/lib/petrel/reports.db --device kiosk-0042 --public-key kiosk-0042.pub.pem";

/// Serve a Petrel static tree (metadata/ and targets/) over HTTP.
#[derive(Debug, Parser)]
#[command(name = "petrel-server", version, about, after_help = TOP_EXAMPLES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the tree at --root (GET/HEAD only) until SIGINT or SIGTERM.
    #[command(after_help = SERVE_EXAMPLES)]
    Serve(ServeArgs),
    /// Enroll a device for reports: store its id and public key in the report database.
    #[command(after_help = ENROLL_EXAMPLES)]
    Enroll(EnrollArgs),
    /// List the devices enrolled in the report database.
    Enrolled {
        /// The report database.
        #[arg(long, value_name = "PATH")]
        reports_db: PathBuf,
    },
}

#[derive(Debug, Args)]
struct EnrollArgs {
    /// The report database (created if missing).
    #[arg(long, value_name = "PATH")]
    reports_db: PathBuf,
    /// The device id, exactly as the device puts it in its reports.
    #[arg(long, value_name = "ID")]
    device: String,
    /// The public half of the device's report key (PEM, `-----BEGIN PUBLIC KEY-----`).
    #[arg(long, value_name = "FILE")]
    public_key: PathBuf,
    /// Replace the key of an already enrolled device (e.g. after a device reset).
    #[arg(long)]
    replace: bool,
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Tree root: the directory holding metadata/ and targets/.
    #[arg(long, value_name = "DIR")]
    root: PathBuf,

    /// Address to listen on (port 0 picks a free port; the bound address is printed).
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Log one line per request to stderr: method path status bytes duration.
    #[arg(long)]
    access_log: bool,

    /// Connections served at once. At the cap, a new connection is accepted and the
    /// longest-idle (else the slowest) open connection is closed to make room.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections)]
    max_connections: usize,

    /// Connections one peer address (IPv6: one /64) may hold at once; 0 turns the cap
    /// off (do so behind a reverse proxy, where every connection has its address).
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections_per_ip)]
    max_connections_per_ip: usize,

    /// Header read deadline while at least half the connection slots are taken.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    busy_header_read_timeout: Duration,

    /// Memory all downloads together may hold in file chunks above 16 KiB; beyond it
    /// downloads go on in 16 KiB chunks.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().stream_buffer_bytes)]
    stream_buffer_bytes: usize,

    /// Largest accepted request head in bytes; larger gets 431.
    #[arg(long, value_name = "BYTES", default_value_t = Limits::default().max_header_bytes)]
    max_header_bytes: usize,

    /// Time allowed to send a complete request head (also bounds keep-alive idling).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    header_read_timeout: Duration,

    /// Close a connection on which no byte moved in either direction for this long.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    idle_timeout: Duration,

    /// On SIGINT/SIGTERM, how long in-flight requests may take to finish.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    shutdown_grace: Duration,

    /// Runtime worker threads (default: one per CPU core).
    #[arg(long, value_name = "N")]
    workers: Option<usize>,

    /// Enable POST /v1/reports, storing signed device reports in this SQLite database
    /// (created if missing), and the views of them: GET /v1/reports/summary,
    /// GET /v1/reports/fleet and the read-only dashboard at /dashboard. Off by default.
    #[arg(long, value_name = "PATH")]
    reports_db: Option<PathBuf>,

    /// Largest accepted report body; larger gets 413.
    #[arg(long, value_name = "BYTES", default_value_t = petrel_server::reports::DEFAULT_MAX_BODY)]
    reports_max_body: usize,

    /// How long a report write waits for another process's database lock before the
    /// report is answered 503 (the device retries later).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    reports_busy_timeout: Duration,

    /// Cap the report database at this many bytes; beyond it reports get 503 like on a
    /// full disk.
    #[arg(long, value_name = "BYTES")]
    reports_max_db_bytes: Option<u64>,

    /// Require `Authorization: Bearer TOKEN` for GET /v1/reports/summary and
    /// /v1/reports/fleet, and the token for /dashboard (open /dashboard?token=TOKEN once;
    /// it is then kept in a cookie). Prefer the environment variable to keep the token out
    /// of the process list.
    #[arg(
        long,
        value_name = "TOKEN",
        env = "PETREL_REPORTS_READ_TOKEN",
        hide_env_values = true
    )]
    reports_read_token: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(args),
        Command::Enroll(args) => enroll(args),
        Command::Enrolled { reports_db } => enrolled(&reports_db),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("petrel-server: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn enroll(args: EnrollArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.public_key).map_err(|e| {
        anyhow::anyhow!("cannot read public key {}: {e}", args.public_key.display())
    })?;
    let key = petrel_client::report::public_key_from_pem(&text)
        .map_err(|e| anyhow::anyhow!("{}: {e}", args.public_key.display()))?;
    anyhow::ensure!(
        !args.device.is_empty()
            && args.device.len() <= 256
            && !args.device.chars().any(char::is_control),
        "--device must be 1 to 256 characters without control characters"
    );
    let store = ReportStore::open(&args.reports_db, &StoreOptions::default())?;
    let keyid = key.key_id();
    let what = match store.enroll(&args.device, &key, args.replace)? {
        Enrolled::New => "enrolled",
        Enrolled::Unchanged => "already enrolled with this key",
        Enrolled::Replaced => "re-enrolled with a new key",
    };
    println!("device {}: {what} (key {keyid})", args.device);
    Ok(())
}

fn enrolled(db: &std::path::Path) -> anyhow::Result<()> {
    let store = ReportStore::open_read_only(db)?;
    let devices = store.devices()?;
    let mut out = std::io::stdout().lock();
    if devices.is_empty() {
        writeln!(out, "no devices enrolled")?;
    }
    for d in devices {
        writeln!(out, "{}  {}  {}", d.device_id, d.keyid, d.enrolled_at)?;
    }
    Ok(())
}

fn init_logging(access_log: bool) {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    if access_log {
        if let Ok(directive) = "petrel_server::access=info".parse() {
            filter = filter.add_directive(directive);
        }
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(args.access_log);
    let config = ServerConfig {
        root: args.root,
        listen: args.listen,
        access_log: args.access_log,
        limits: Limits {
            max_connections: args.max_connections,
            max_connections_per_ip: args.max_connections_per_ip,
            max_header_bytes: args.max_header_bytes,
            header_read_timeout: args.header_read_timeout,
            busy_header_read_timeout: args.busy_header_read_timeout,
            stream_buffer_bytes: args.stream_buffer_bytes,
            idle_timeout: args.idle_timeout,
            shutdown_grace: args.shutdown_grace,
        },
        reports: args.reports_db.map(|db| ReportsConfig {
            max_body_bytes: args.reports_max_body,
            busy_timeout: args.reports_busy_timeout,
            max_db_bytes: args.reports_max_db_bytes,
            read_token: args.reports_read_token.filter(|t| !t.is_empty()),
            ..ReportsConfig::new(db)
        }),
    };
    raise_open_file_limit(config.limits.max_connections);
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime.enable_all();
    if let Some(n) = args.workers {
        anyhow::ensure!(n > 0, "--workers must be at least 1");
        runtime.worker_threads(n);
    }
    let runtime = runtime.build()?;
    runtime.block_on(async move {
        let server = Server::bind(config).await?;
        {
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on http://{}", server.local_addr())?;
            out.flush()?;
        }
        server.serve(shutdown_signal()).await?;
        Ok(())
    })
}

/// Each connection can hold a socket and an open file: raise the soft limit on open
/// files to the hard limit (as far as needed), and warn when even that is too low.
fn raise_open_file_limit(max_connections: usize) {
    let want = (max_connections as u64)
        .saturating_mul(2)
        .saturating_add(64);
    #[cfg(target_os = "linux")]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut lim = getrlimit(Resource::Nofile);
        let soft = lim.current.unwrap_or(u64::MAX);
        if soft < want {
            let hard = lim.maximum.unwrap_or(u64::MAX);
            lim.current = Some(want.min(hard));
            if let Err(e) = setrlimit(Resource::Nofile, lim) {
                tracing::warn!(error = %e, "cannot raise the open-file limit");
            }
        }
        let now = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
        if now < want {
            tracing::warn!(
                limit = now,
                wanted = want,
                "open-file limit below twice --max-connections; the server sheds connections when it runs out"
            );
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = want;
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {}
        () = term => {}
    }
}
