//! `petrel-conformance`: the client-under-test CLI for TUF conformance suites.
//!
//! ```text
//! petrel-conformance --metadata-dir DIR init TRUSTED_ROOT
//! petrel-conformance --metadata-dir DIR --metadata-url URL refresh
//! petrel-conformance --metadata-dir DIR --metadata-url URL --target-name PATH [--target-name PATH …]
//!                    --target-base-url URL --target-dir DIR download
//! ```
//! Exit status 0 on success, 1 on any failure (2 for usage errors). Logs go to stderr;
//! `-v`/`-vv` or `RUST_LOG` make them more verbose.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use petrel_client::fetch::{AutoTransport, HttpConfig};
use petrel_client::tuf::updater::{local_target_file_name, Updater, UpdaterConfig};
use tracing::info;

#[derive(Parser, Debug)]
#[command(
    name = "petrel-conformance",
    version,
    about = "Petrel TUF client-under-test CLI"
)]
struct Cli {
    /// Directory holding the trusted metadata (root.json, timestamp.json, …).
    #[arg(long, global = true)]
    metadata_dir: Option<PathBuf>,
    /// Base URL of the repository's metadata (http://, https:// or file://).
    #[arg(long, global = true)]
    metadata_url: Option<String>,
    /// Target path to download (repeatable; downloaded in order).
    #[arg(long = "target-name", global = true)]
    target_names: Vec<String>,
    /// Base URL of the repository's targets.
    #[arg(long, global = true)]
    target_base_url: Option<String>,
    /// Directory to store downloaded targets in (flat, percent-encoded file names).
    #[arg(long, global = true)]
    target_dir: Option<PathBuf>,
    /// Extra CA certificates (PEM) to trust for https:// URLs.
    #[arg(long, global = true)]
    extra_ca: Option<PathBuf>,
    /// More logging (-v: debug, -vv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Install TRUSTED_ROOT as the trusted root (no network access).
    Init {
        /// The initial trusted root.json.
        trusted_root: PathBuf,
    },
    /// Refresh top-level metadata.
    Refresh,
    /// Refresh, then download each --target-name into --target-dir.
    Download,
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "info",
        1 => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .init();
}

fn required<T: Clone>(v: &Option<T>, flag: &str) -> Result<T, String> {
    v.clone()
        .ok_or_else(|| format!("{flag} is required for this command"))
}

fn updater(cli: &Cli, metadata_dir: PathBuf) -> Result<Updater, String> {
    let metadata_url = required(&cli.metadata_url, "--metadata-url")?;
    let mut config = UpdaterConfig::new(metadata_url);
    config.target_base_url = cli.target_base_url.clone();
    let http = HttpConfig {
        extra_ca_pem: cli.extra_ca.clone(),
        ..HttpConfig::default()
    };
    Updater::new(config, AutoTransport::new(http), metadata_dir).map_err(|e| e.to_string())
}

fn run(cli: &Cli) -> Result<(), String> {
    let metadata_dir = required(&cli.metadata_dir, "--metadata-dir")?;
    match &cli.command {
        Command::Init { trusted_root } => {
            let bytes = std::fs::read(trusted_root)
                .map_err(|e| format!("{}: {e}", trusted_root.display()))?;
            Updater::init_trusted_root(&metadata_dir, &bytes).map_err(|e| e.to_string())
        }
        Command::Refresh => updater(cli, metadata_dir)?
            .refresh()
            .map_err(|e| e.to_string()),
        Command::Download => {
            let target_dir = required(&cli.target_dir, "--target-dir")?;
            required(&cli.target_base_url, "--target-base-url")?;
            if cli.target_names.is_empty() {
                return Err("--target-name is required for download".into());
            }
            let mut updater = updater(cli, metadata_dir)?;
            updater.refresh().map_err(|e| e.to_string())?;
            std::fs::create_dir_all(&target_dir)
                .map_err(|e| format!("{}: {e}", target_dir.display()))?;
            for name in &cli.target_names {
                let info = updater
                    .get_target_info(name)
                    .map_err(|e| e.to_string())?
                    .ok_or_else(|| format!("target {name:?} not found in trusted metadata"))?;
                let local =
                    target_dir.join(local_target_file_name(name).map_err(|e| e.to_string())?);
                if updater
                    .find_cached_target(&info, &local)
                    .map_err(|e| e.to_string())?
                {
                    info!(
                        "{name:?} is already in {}: not downloading",
                        local.display()
                    );
                    continue;
                }
                updater
                    .download_target(&info, &local)
                    .map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("petrel-conformance: error: {e}");
            ExitCode::from(1)
        }
    }
}
