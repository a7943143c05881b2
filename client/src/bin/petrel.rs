//! `petrel`: the device agent.
//!
//! ```text
//! petrel init --root ROOT.json          provision the trusted root
//! petrel check [--explain] [--json]     refresh, decide, show what happens next
//! petrel status [--json]                device, group, inventory, campaigns, waves, consent, staging
//! petrel update [--json]                refresh, decide, download and install what is due, report
//! petrel run [--interval 30s]           the resident agent: update, sleep until it matters, repeat
//! petrel recover                        finish or undo an interrupted install (at boot)
//! petrel consent list|show|accept|acknowledge|decline|postpone|token …
//! petrel device-key                     the report signing key's public half (PEM)
//! ```
//! Exit status: 0 on success; 1 when an install failed or was rolled back, a download was
//! not the signed bytes, or any other error (the message says what to do); 2 for usage
//! errors; 3 for a temporary problem of the network, the repository's server or the
//! device (tried again later); 4 when another petrel command holds the state directory.
//! See `docs/agent.md` and `docs/device.md`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use chrono::{DateTime, Duration, Utc};
use clap::{Args, Parser, Subcommand};
use petrel_client::agent::config::DEFAULT_CONFIG_PATH;
use petrel_client::agent::{
    daemon, render, Agent, AgentConfig, AgentError, Answer, InstallResult, RunStatus, StatePaths,
    UpdateHooks,
};
use petrel_client::consent::AdminConsentToken;
use petrel_client::manifest::UtcTime;

const AFTER_HELP: &str = "\
Examples:
  petrel init --root /media/usb/root.json
  petrel check
  petrel check --explain
  petrel update
  petrel status
  petrel consent list --locale de
  petrel consent accept player-2.1 --sha256 3f2a9c01

Files: the configuration (default /etc/petrel/device.toml, or --config / PETREL_CONFIG) names
the repository, the state directory, the device profile and the inventory source.
See docs/device.md.";

#[derive(Parser, Debug)]
#[command(
    name = "petrel",
    version,
    about = "Petrel device agent: verifies the signed repository (TUF), decides on the device what applies, and asks for consent",
    after_help = AFTER_HELP
)]
struct Cli {
    /// The device configuration file.
    #[arg(long, global = true, env = "PETREL_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// More logging on stderr (-v: info, -vv: debug, -vvv: trace). RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,
    /// Log format on stderr: `text` (default) or `json` (one object per line, for journald
    /// and log shippers).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Provision the trusted root (the out-of-band first step; no network access).
    #[command(after_help = "\
Example:
  petrel init --root /media/usb/root.json

The root must be signed by a threshold of its own root keys. It is stored as
<state_dir>/metadata/root.json; the state directory (staging/, state.json) is created.
Refuses to replace an existing root unless --force.")]
    Init {
        /// The trusted root.json, obtained out of band.
        #[arg(long, value_name = "ROOT.json")]
        root: PathBuf,
        /// Replace an existing trusted root (re-provisioning only).
        #[arg(long)]
        force: bool,
    },
    /// Refresh the signed metadata, decide, and print each campaign's status and next step.
    #[command(after_help = "\
Examples:
  petrel check
  petrel check --explain
  petrel check --json | jq '.decision.campaigns[] | {id, status: .status.status}'
  petrel check --at 2030-03-06T00:00:00Z     # what if it were then?

Fetches only this device's assignment bin, its group manifest, the campaign manifests
and the artifacts' signed lengths and hashes; downloads no artifact. Remembers the
revisions seen (a lower one later is refused as a rollback).")]
    Check {
        /// Print the full reasoning: every rule for every campaign, and the next actions.
        #[arg(long, conflicts_with = "json")]
        explain: bool,
        #[command(flatten)]
        common: DecideArgs,
    },
    /// Device id, group, inventory, and per campaign: state, wave and opening time, consent.
    #[command(after_help = "\
Examples:
  petrel status
  petrel status --json")]
    Status {
        #[command(flatten)]
        common: DecideArgs,
    },
    /// Refresh, decide, download what is due into staging, install what is due (all or
    /// nothing, after refreshing and deciding again), queue and send reports.
    #[command(after_help = "\
Examples:
  petrel update
  petrel update --json

Run it from a timer, or use `petrel run`. It downloads only in a campaign's download
window and installs only in its apply window, with the consent the campaign needs; there
is no flag to install outside the window. `petrel check --at INSTANT` shows what a later
run would do. Exit status 1 when an install failed or was rolled back, or a download was
not the signed bytes; 3 for a temporary problem (network, server, disk space); 4 when
another petrel update or petrel run is running.")]
    Update {
        /// Machine-readable JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// The resident agent: recover, then update, sleep until the next poll or the next
    /// instant that matters (a wave, a window, a deadline), and repeat until SIGTERM/SIGINT.
    #[command(after_help = "\
Examples:
  petrel run
  petrel run --interval 30s --log-format json

Polls timestamp.json every poll.interval (device.toml [poll], default 1h, with a random
jitter of up to poll.jitter, default a tenth of it). Network problems are retried with
exponential backoff from 5 s up to the poll interval; verification failures wait for the
next poll. SIGTERM or SIGINT stops it between steps (an install in progress completes or
rolls back first; a download stops and resumes at the next start) and it exits 0. Only
one `petrel run` or `petrel update` runs per state directory: a second exits with status
4. Between cycles, `petrel check`, `status` and `consent` work as usual.")]
    Run {
        /// Poll interval instead of poll.interval (30s, 15m, 1h).
        #[arg(long, value_name = "DURATION", value_parser = parse_std_duration)]
        interval: Option<std::time::Duration>,
        /// Stop after this many cycles (for scripts and tests).
        #[arg(long, value_name = "N", hide = true)]
        cycles: Option<u64>,
    },
    /// Finish or undo an interrupted install, and nothing else (no network). Run at boot
    /// before the applications start (dist/systemd/petrel-recover.service), so no
    /// application ever starts on a half-installed set.
    #[command(after_help = "\
Example:
  petrel recover

A set interrupted before its commit point is undone; after it, the new set is put in
place and its hooks and health check run at the agent's next start (the previous set is
kept until the health check passes).")]
    Recover,
    /// Print the public half of the device's report signing key (PEM), for enrollment at
    /// the report endpoint. Creates the key on first use (<state_dir>/device.key).
    #[command(after_help = "\
Example:
  petrel device-key > kiosk-0042.pub.pem")]
    DeviceKey,
    /// System image slots: which one runs, what each holds, the bootloader's view.
    #[command(
        subcommand,
        after_help = "\
Examples:
  petrel slots status
  petrel slots status --json
  petrel slots boot --init     (a simulated board: the file bootloader only)

See docs/images.md."
    )]
    Slots(SlotsCommand),
    /// Apply a delta file to a base file (what the agent does when it stages a delta; for
    /// testing deltas offline). Needs no configuration.
    #[command(after_help = "\
Examples:
  petrel delta-apply app-2.0.bin app.delta -o app-2.1.bin
  petrel delta-apply --streaming app-2.0.bin app.delta -o app-2.1.bin
  petrel delta-apply suite-5.0/ suite.delta -o suite-5.1/

The format is read from the delta's first bytes (zstd-patch, zstd-chunked, bsdiff-zstd,
exec-bsdiff). A directory as the base takes a tree delta (petrel-repo delta-file of two
directories) and writes the new tree into the directory OUT, every file checked against
the manifest the delta carries. The base and the delta are memory-mapped unless --streaming, which reads
with bounded buffers (raw-flash devices); both keep anonymous memory under 8 MiB.
zstd-patch deltas need a map above 4 MiB of base and result. See docs/device.md.")]
    DeltaApply {
        /// The installed bytes the delta starts from (a directory, for a tree delta: OUT is
        /// then the directory written).
        base: PathBuf,
        /// The delta.
        delta: PathBuf,
        /// Where to write the result.
        #[arg(short, long, value_name = "FILE")]
        out: PathBuf,
        /// No memory maps: positioned reads and bounded buffers.
        #[arg(long)]
        streaming: bool,
    },
    /// Consent: list pending requests, show a notice, answer it.
    #[command(
        subcommand,
        after_help = "\
Examples:
  petrel consent list
  petrel consent show player-2.1 --locale de
  petrel consent accept player-2.1 --sha256 3f2a9c01
  petrel consent postpone player-2.1 --for 4h

Answers are appended to <state_dir>/consent.log, bound to the SHA-256 of the campaign's
offer (its notice, payload, consent policy and stage, method and forced set): a new
revision that changes only the rollout state, schedule or waves keeps the answer; a
changed offer asks again."
    )]
    Consent(ConsentCommand),
}

#[derive(Subcommand, Debug)]
enum SlotsCommand {
    /// The slots, the booted one, the bootloader's variables and what each slot holds.
    Status {
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Power on a simulated board (slots.bootloader = "file"): what a bootloader does at
    /// boot (the first slot in the order with tries left loses one and boots). Prints the
    /// slot booted; exits 1 when no slot has tries left.
    Boot {
        /// Create the boot state (slot A booted, every slot with slots.attempts tries) if
        /// there is none, instead of powering on.
        #[arg(long)]
        init: bool,
    },
}

#[derive(Args, Debug)]
struct DecideArgs {
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    json: bool,
    /// Decide as if it were this instant (YYYY-MM-DDTHH:MM:SSZ); TUF expiry still uses the
    /// real clock.
    #[arg(long, value_name = "INSTANT", value_parser = parse_instant)]
    at: Option<DateTime<Utc>>,
}

#[derive(Args, Debug)]
struct Bound {
    /// The campaign id.
    campaign: String,
    /// The offer hash (or the manifest hash) shown by `petrel consent show` (full, or at
    /// least 8 hex digits): refuses to record the answer if what is offered changed since.
    #[arg(long, value_name = "HASH")]
    sha256: Option<String>,
}

#[derive(Subcommand, Debug)]
enum ConsentCommand {
    /// List the consent requests waiting for an answer.
    #[command(after_help = "\
Examples:
  petrel consent list
  petrel consent list --locale de --json")]
    List {
        /// Show notices in this locale (default: the profile's).
        #[arg(long)]
        locale: Option<String>,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Show a campaign's notice, what it changes on this device, and how to answer.
    #[command(after_help = "\
Example:
  petrel consent show player-2.1 --locale de")]
    Show {
        /// The campaign id.
        campaign: String,
        /// Show the notice in this locale (default: the profile's).
        #[arg(long)]
        locale: Option<String>,
        /// Machine-readable JSON.
        #[arg(long)]
        json: bool,
    },
    /// Agree to the campaign (policies required and acknowledge).
    #[command(after_help = "\
Example:
  petrel consent accept player-2.1 --sha256 3f2a9c01")]
    Accept {
        #[command(flatten)]
        bound: Bound,
        /// The locale the notice was shown in (recorded).
        #[arg(long)]
        locale: Option<String>,
    },
    /// Acknowledge the campaign (policy acknowledge).
    #[command(after_help = "\
Example:
  petrel consent acknowledge fonts-2024 --sha256 3f2a9c01")]
    Acknowledge {
        #[command(flatten)]
        bound: Bound,
        /// The locale the notice was shown in (recorded).
        #[arg(long)]
        locale: Option<String>,
    },
    /// Refuse the campaign (policy required); a changed campaign asks again.
    #[command(after_help = "\
Example:
  petrel consent decline player-2.1 --sha256 3f2a9c01")]
    Decline {
        #[command(flatten)]
        bound: Bound,
        /// The locale the notice was shown in (recorded).
        #[arg(long)]
        locale: Option<String>,
    },
    /// Ask again later (within the campaign's bound and before its deadline).
    #[command(after_help = "\
Examples:
  petrel consent postpone player-2.1 --for 4h
  petrel consent postpone player-2.1 --until 2030-03-12T08:00:00Z --sha256 3f2a9c01

Without --for or --until: one day. A postponement never reaches past the consent
deadline; it is shortened to the deadline if it would.")]
    Postpone {
        #[command(flatten)]
        bound: Bound,
        /// How long: 30m, 4h, 2d, 1d12h.
        #[arg(long = "for", value_name = "DURATION", value_parser = parse_duration, conflicts_with = "until")]
        for_: Option<Duration>,
        /// Until this instant (YYYY-MM-DDTHH:MM:SSZ).
        #[arg(long, value_name = "INSTANT", value_parser = parse_instant)]
        until: Option<DateTime<Utc>>,
    },
    /// Record an administrator consent token (policy administrator); it is verified first.
    #[command(after_help = "\
Example:
  petrel consent token fleet-owner-upgrade /media/usb/consent-token.json")]
    Token {
        /// The campaign id.
        campaign: String,
        /// The token file (JSON, signed by the campaign's administrator keys).
        token: PathBuf,
    },
}

mod progress {
    //! Progress bars for downloads on a terminal (one per target).
    use std::cell::RefCell;
    use std::collections::BTreeMap;

    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    use petrel_client::tuf::updater::DownloadProgress;

    /// The bars of one run (none when not on a terminal).
    pub struct Bars {
        on: bool,
        bars: RefCell<BTreeMap<String, ProgressBar>>,
    }

    impl Bars {
        /// Bars that draw only when `on`.
        pub fn new(on: bool) -> Bars {
            Bars {
                on,
                bars: RefCell::new(BTreeMap::new()),
            }
        }

        /// Shows `p`.
        pub fn update(&self, p: &DownloadProgress) {
            if !self.on {
                return;
            }
            let mut bars = self.bars.borrow_mut();
            let bar = bars.entry(p.target.to_string()).or_insert_with(|| {
                let b = ProgressBar::with_draw_target(Some(p.total), ProgressDrawTarget::stderr());
                b.set_style(
                    ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
                    )
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                let name = p.target.rsplit('/').next().unwrap_or(p.target).to_string();
                b.set_message(name);
                b
            });
            bar.set_position(p.bytes);
            if p.bytes >= p.total {
                bar.finish();
            }
        }

        /// Ends every bar.
        pub fn finish(&self) {
            for b in self.bars.borrow().values() {
                b.finish();
            }
        }
    }
}

fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    UtcTime::parse(s).map(|t| t.0)
}

/// A duration like `30m`, `4h`, `2d` or `1d12h` (the configuration's rule).
fn parse_duration(s: &str) -> Result<Duration, String> {
    let d = petrel_client::agent::config::parse_duration(s)?;
    Duration::from_std(d).map_err(|e| format!("{s:?}: {e}"))
}

fn parse_std_duration(s: &str) -> Result<std::time::Duration, String> {
    petrel_client::agent::config::parse_duration(s)
}

fn init_logging(verbose: u8, format: LogFormat, daemon: bool) {
    // The resident agent and JSON logs (for log shippers) say what they do by default;
    // a command at a terminal only warns.
    let default = match (verbose, daemon || format == LogFormat::Json) {
        (0, false) => "warn",
        (0, true) | (1, _) => "info",
        (2, _) => "debug",
        _ => "trace",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// An error with the exit status it ends the command with.
struct Failure {
    message: String,
    code: u8,
}

impl From<AgentError> for Failure {
    fn from(e: AgentError) -> Failure {
        Failure {
            code: e.exit_code(),
            message: e.to_string(),
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(
        cli.verbose,
        cli.log_format,
        matches!(cli.command, Command::Run { .. }),
    );
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            if !f.message.is_empty() {
                eprintln!("petrel: {}", f.message);
            }
            ExitCode::from(f.code)
        }
    }
}

fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialize")
    );
}

fn run(cli: Cli) -> Result<(), Failure> {
    if let Command::DeltaApply {
        base,
        delta,
        out,
        streaming,
    } = &cli.command
    {
        return delta_apply(base, delta, out, *streaming);
    }
    let config = AgentConfig::load(&cli.config)?;
    match cli.command {
        Command::Init { root, force } => {
            let r = Agent::init_file(&config, &root, force)?;
            println!(
                "{} trusted root version {} in {}",
                if r.replaced {
                    "Replaced the"
                } else {
                    "Installed the"
                },
                r.root_version,
                r.state_dir.join("metadata").display()
            );
            println!("Next: petrel check");
        }
        Command::Check { explain, common } => {
            let agent = Agent::open(config)?;
            let ev = agent.evaluate(common.at)?;
            if common.json {
                print_json(&render::check_json(&ev));
            } else if explain {
                print!("{}", ev.decision.explain());
            } else {
                print!("{}", render::check_text(&agent, &ev));
            }
        }
        Command::Status { common } => {
            let agent = Agent::open(config)?;
            let ev = agent.evaluate(common.at)?;
            if common.json {
                print_json(&render::status_json(&agent, &ev));
            } else {
                print!("{}", render::status_text(&agent, &ev));
            }
        }
        Command::Update { json } => {
            let _runner = StatePaths::new(&config.state_dir).lock_runner()?;
            let mut agent = Agent::open(config)?;
            let stop = daemon::stop_flag();
            let tty = !json && std::io::IsTerminal::is_terminal(&std::io::stderr());
            let bars = progress::Bars::new(tty);
            let mut log = daemon::ProgressLog::default();
            let out = agent.update_with(
                None,
                UpdateHooks {
                    progress: Some(Box::new(
                        |p| {
                            if tty {
                                bars.update(p)
                            } else {
                                log.record(p)
                            }
                        },
                    )),
                    stop: Some(&stop),
                    ..UpdateHooks::default()
                },
            )?;
            bars.finish();
            if json {
                print_json(&render::update_json(&out));
            } else {
                print!("{}", render::update_text(&agent, &out));
            }
            match out.status() {
                RunStatus::Ok => {}
                RunStatus::Failed => {
                    return Err(Failure {
                        message: "an install failed or was rolled back, or a download was not the signed bytes (see above); a rolled-back revision is not tried again".into(),
                        code: 1,
                    })
                }
                RunStatus::Temporary => {
                    return Err(Failure {
                        message: "a temporary problem of the network, the repository's server or the device kept something from being done (see above); the next run tries again".into(),
                        code: 3,
                    })
                }
            }
        }
        Command::Run { interval, cycles } => {
            let stop = daemon::stop_flag();
            let options = daemon::RunOptions {
                interval,
                max_cycles: cycles,
            };
            tracing::info!(
                config = %cli.config.display(),
                "petrel run: starting (version {})",
                env!("CARGO_PKG_VERSION")
            );
            let n = daemon::run(config, &options, &stop, &mut log_cycle)?;
            tracing::info!(cycles = n, "petrel run: stopped");
        }
        Command::Recover => {
            let agent = Agent::open_with(config, false)?;
            match agent.recovered() {
                Some(r) => println!("{}", render::recovery_text(r)),
                None => println!("Nothing to recover: no install was interrupted."),
            }
        }
        Command::Slots(c) => slots(&config, c)?,
        Command::DeviceKey => {
            print!("{}", Agent::device_key_pem(&config)?);
        }
        Command::Consent(c) => consent(config, c)?,
        Command::DeltaApply { .. } => unreachable!("handled before the configuration is read"),
    }
    Ok(())
}

/// `petrel slots …`.
fn slots(config: &AgentConfig, c: SlotsCommand) -> Result<(), Failure> {
    use petrel_client::agent::config::BootloaderConfig;
    use petrel_client::agent::install::bootloader::{FileBootState, FileBootloader};
    use petrel_client::agent::install::slot::Slots;
    let Some(sc) = &config.slots else {
        return Err(Failure {
            message: format!(
                "{} has no [slots]: this device installs no system images (docs/images.md)",
                config.path.display()
            ),
            code: 2,
        });
    };
    match c {
        SlotsCommand::Status { json } => {
            let slots = Slots::new(sc, &config.reboot, &StatePaths::new(&config.state_dir));
            let v = render::slots_json(&slots);
            if json {
                print_json(&v);
            } else {
                print!("{}", render::slots_text(&slots, &v));
            }
        }
        SlotsCommand::Boot { init } => {
            let BootloaderConfig::File { path } = &sc.bootloader else {
                return Err(Failure {
                    message: "petrel slots boot simulates a board: it needs slots.bootloader = \"file\"; a real board's bootloader boots it".into(),
                    code: 2,
                });
            };
            let b = FileBootloader::new(path);
            if init {
                if path.exists() {
                    println!("{} exists; left as it is", path.display());
                } else {
                    b.save(&FileBootState::new(sc.attempts))
                        .map_err(|m| Failure {
                            message: m,
                            code: 1,
                        })?;
                    println!("Created {}: slot A booted", path.display());
                }
                return Ok(());
            }
            let mut s = b.load().map_err(|m| Failure {
                message: m,
                code: 1,
            })?;
            let booted = s.power_on();
            b.save(&s).map_err(|m| Failure {
                message: m,
                code: 1,
            })?;
            match booted {
                Some(slot) => println!("{slot}"),
                None => {
                    return Err(Failure {
                        message: "no slot has tries left: the board does not boot".into(),
                        code: 1,
                    })
                }
            }
        }
    }
    Ok(())
}

/// Logs one cycle of `petrel run` (structured fields for the JSON log format).
fn log_cycle(agent: Option<&Agent>, c: &daemon::Cycle) {
    let next = render::ts(c.next_at);
    match &c.result {
        Ok(out) => {
            if let Some(r) = &out.recovered {
                tracing::warn!(cycle = c.number, "{}", render::recovery_text(r));
            }
            for s in &out.staged {
                tracing::info!(
                    cycle = c.number,
                    campaign = %s.campaign,
                    revision = s.revision,
                    downloaded = s.downloaded.len(),
                    bytes = s.bytes,
                    error = s.error.as_deref().unwrap_or(""),
                    "staging"
                );
            }
            for i in &out.installs {
                let result = serde_json::to_value(i.result).unwrap_or_default();
                let result = result.as_str().unwrap_or("");
                if matches!(
                    i.result,
                    InstallResult::Installed | InstallResult::NotInstalled
                ) {
                    tracing::info!(cycle = c.number, campaign = %i.campaign, revision = i.revision, result, "{}", i.reason);
                } else {
                    tracing::warn!(cycle = c.number, campaign = %i.campaign, revision = i.revision, result, "{}", i.reason);
                }
            }
            for r in &out.reports {
                tracing::info!(cycle = c.number, campaign = %r.campaign, result = %r.result, report_id = %r.report_id, "report queued: {}", r.reason);
            }
            if let Some(s) = &out.sent {
                tracing::info!(cycle = c.number, "reports: {s}");
            }
            for p in &out.problems {
                tracing::warn!(cycle = c.number, "problem (tried again): {p}");
            }
            if let Some(d) = &out.decision {
                for camp in &d.campaigns {
                    tracing::debug!(cycle = c.number, campaign = %camp.id, status = camp.status.kind(), "{}", render::status_phrase(&camp.status));
                }
            }
            let _ = agent;
            tracing::info!(cycle = c.number, status = ?out.status(), next = %next, why = c.why, "cycle done; next at {next} ({})", c.why);
        }
        Err(e) => {
            tracing::warn!(cycle = c.number, next = %next, why = c.why, "cycle failed: {e}; next at {next} ({})", c.why);
        }
    }
}

fn consent(config: AgentConfig, cmd: ConsentCommand) -> Result<(), Failure> {
    let mut agent = Agent::open(config)?;
    let locale = match &cmd {
        ConsentCommand::List { locale, .. }
        | ConsentCommand::Show { locale, .. }
        | ConsentCommand::Accept { locale, .. }
        | ConsentCommand::Acknowledge { locale, .. }
        | ConsentCommand::Decline { locale, .. } => locale.clone(),
        _ => None,
    };
    if let Some(l) = &locale {
        agent.set_locale(l)?;
    }
    let mut ev = agent.evaluate(None)?;
    let (bound, answer) = match cmd {
        ConsentCommand::List { json, .. } => {
            let reqs = agent.pending_consent(&ev);
            if json {
                print_json(&serde_json::Value::Array(
                    reqs.iter().map(render::consent_request_json).collect(),
                ));
            } else {
                print!("{}", render::consent_list_text(&reqs));
            }
            return Ok(());
        }
        ConsentCommand::Show { campaign, json, .. } => {
            let entry = ev.entry(&campaign)?;
            let req = agent.consent_request(&ev, entry);
            if json {
                print_json(&render::consent_request_json(&req));
            } else {
                print!(
                    "{}",
                    render::consent_show_text(&ev, &req, locale.as_deref())
                );
            }
            return Ok(());
        }
        ConsentCommand::Accept { bound, .. } => (bound, Answer::Accept),
        ConsentCommand::Acknowledge { bound, .. } => (bound, Answer::Acknowledge),
        ConsentCommand::Decline { bound, .. } => (bound, Answer::Decline),
        ConsentCommand::Postpone { bound, for_, until } => {
            let now = petrel_client::agent::now_seconds();
            let mut until = until.unwrap_or(now + for_.unwrap_or(Duration::days(1)));
            let deadline = ev
                .entry(&bound.campaign)?
                .manifest
                .consent
                .deadline
                .map(|d| d.0);
            if let Some(d) = deadline.filter(|d| until > *d && *d > now) {
                println!("Shortened to the consent deadline {}.", render::ts(d));
                until = d;
            }
            (bound, Answer::Postpone { until })
        }
        ConsentCommand::Token { campaign, token } => {
            let bytes = std::fs::read(&token).map_err(|e| {
                AgentError::Refused(format!("cannot read the token {}: {e}", token.display()))
            })?;
            let t = AdminConsentToken::from_json(&bytes)
                .map_err(|e| AgentError::Refused(format!("{}: {e}", token.display())))?;
            (
                Bound {
                    campaign,
                    sha256: None,
                },
                Answer::Token(Box::new(t)),
            )
        }
    };
    let event = agent.answer(&mut ev, &bound.campaign, bound.sha256.as_deref(), answer)?;
    let bound_to = match &event.offer_sha256 {
        Some(o) => format!("offer sha256 {}, ", o.short()),
        None => String::new(),
    };
    println!(
        "Recorded: {} of campaign {} revision {} ({bound_to}manifest sha256 {}) at {}.",
        event.action.name(),
        event.campaign,
        event.revision,
        event.manifest_sha256.short(),
        event.at
    );
    if let Some(c) = ev.decision.campaign(&bound.campaign) {
        println!(
            "Now: {}; next: {}",
            render::status_phrase(&c.status),
            render::next_step(c)
        );
    }
    Ok(())
}

/// `petrel delta-apply`: one delta applied to one base, outside any repository.
fn delta_apply(base: &Path, delta: &Path, out: &Path, streaming: bool) -> Result<(), Failure> {
    use petrel_client::delta;
    let fail = |message: String| Failure { message, code: 1 };
    let open = |p: &Path| std::fs::File::open(p).map_err(|e| fail(format!("{}: {e}", p.display())));
    if base.is_dir() {
        return tree_delta_apply(base, delta, out, streaming);
    }
    let (b, d) = (open(base)?, open(delta)?);
    let mut head = [0u8; 16];
    let n = std::io::Read::read(&mut &d, &mut head)
        .map_err(|e| fail(format!("{}: {e}", delta.display())))?;
    std::io::Seek::seek(&mut &d, std::io::SeekFrom::Start(0))
        .map_err(|e| fail(format!("{}: {e}", delta.display())))?;
    let format = delta::sniff_format(&head[..n]).ok_or_else(|| {
        fail(format!(
            "{}: not a delta this version reads (its first bytes name none of {})",
            delta.display(),
            delta::FORMATS.join(", ")
        ))
    })?;
    let base_len = b
        .metadata()
        .map_err(|e| fail(format!("{}: {e}", base.display())))?
        .len();
    // Read and write: the mapped mode writes the result through a shared map of it.
    let o = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(out)
        .map_err(|e| fail(format!("{}: {e}", out.display())))?;
    let mode = if streaming {
        delta::ApplyMode::Streaming
    } else {
        delta::ApplyMode::Mmap
    };
    let n = delta::apply_file(format, &b, base_len, &d, delta::MAX_APPLY_OUTPUT, mode, &o)
        .map_err(|e| {
            // What was written is no result: remove it rather than leave it to be mistaken
            // for one (and give its space back).
            drop(std::fs::remove_file(out));
            fail(format!(
                "applying {} ({format}) to {}: {e}",
                delta.display(),
                base.display()
            ))
        })?;
    eprintln!(
        "petrel: wrote {} ({n} bytes) from {format} delta",
        out.display()
    );
    Ok(())
}

/// `petrel delta-apply TREE_DIR DELTA -o OUT_DIR`: a tree delta applied to an installed
/// tree (its manifest taken from the directory as it is), unpacked into OUT_DIR, every file
/// checked against the new manifest the delta carries.
fn tree_delta_apply(base: &Path, delta: &Path, out: &Path, streaming: bool) -> Result<(), Failure> {
    use petrel_client::tree;
    let fail = |message: String| Failure { message, code: 1 };
    let scanned = tree::scan(base).map_err(|e| fail(format!("{}: {e}", base.display())))?;
    let manifest = scanned.manifest.to_bytes();
    let want = tree::delta::named_manifest_sha256(delta)
        .map_err(|e| fail(format!("{}: {e}", delta.display())))?;
    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let scratch =
        tempfile::tempdir_in(parent).map_err(|e| fail(format!("{}: {e}", parent.display())))?;
    let container = scratch.path().join("tree.ptree");
    let mut c = std::fs::File::options()
        .create_new(true)
        .read(true)
        .write(true)
        .open(&container)
        .map_err(|e| fail(format!("{}: {e}", container.display())))?;
    let mode = if streaming {
        petrel_client::delta::ApplyMode::Streaming
    } else {
        petrel_client::delta::ApplyMode::Mmap
    };
    let done = tree::delta::apply(
        delta,
        &tree::delta::Base {
            root: base,
            manifest: &manifest,
        },
        &want,
        mode,
        scratch.path(),
        None,
        &mut c,
    )
    .map_err(|e| {
        fail(format!(
            "applying {} to {}: {e}",
            delta.display(),
            base.display()
        ))
    })?;
    tree::unpack(&container, &want, out).map_err(|e| fail(format!("{}: {e}", out.display())))?;
    eprintln!(
        "petrel: wrote the tree {} from the tree delta: {} file(s) unchanged, {} from file deltas, {} added",
        out.display(),
        done.copied,
        done.deltas,
        done.added
    );
    Ok(())
}
