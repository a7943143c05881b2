//! `petrel-server` command line: parses options, sets up logging and runs the server.

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
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
  petrel-server serve --root ./tree --max-connections 256 --header-read-timeout 5s --idle-timeout 15s";

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

    /// Connections served at once; more connections wait in the listen backlog.
    #[arg(long, value_name = "N", default_value_t = Limits::default().max_connections)]
    max_connections: usize,

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => match serve(args) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("petrel-server: error: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
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
            max_header_bytes: args.max_header_bytes,
            header_read_timeout: args.header_read_timeout,
            idle_timeout: args.idle_timeout,
            shutdown_grace: args.shutdown_grace,
        },
    };
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
