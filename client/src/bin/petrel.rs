//! `petrel`: the device agent.
//!
//! ```text
//! petrel init --root ROOT.json          provision the trusted root
//! petrel check [--explain] [--json]     refresh, decide, show what happens next
//! petrel status [--json]                device, group, inventory, campaigns, waves, consent, staging
//! petrel update [--json]                refresh, decide, download and install what is due, report
//! petrel consent list|show|accept|acknowledge|decline|postpone|token …
//! petrel device-key                     the report signing key's public half (PEM)
//! ```
//! Exit status: 0 on success, 1 on any error (the message says what to do), 2 for usage
//! errors. See `docs/device.md`.

use std::path::PathBuf;
use std::process::ExitCode;

use chrono::{DateTime, Duration, Utc};
use clap::{Args, Parser, Subcommand};
use petrel_client::agent::config::DEFAULT_CONFIG_PATH;
use petrel_client::agent::{render, Agent, AgentConfig, AgentError, Answer};
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
    #[command(subcommand)]
    command: Command,
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

Run it from a timer (e.g. every 15 minutes). It downloads only in a campaign's download
window and installs only in its apply window, with the consent the campaign needs; there
is no flag to install outside the window. `petrel check --at INSTANT` shows what a later
run would do. Exit status 1 when a download or an install attempt failed.")]
    Update {
        /// Machine-readable JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Print the public half of the device's report signing key (PEM), for enrollment at
    /// the report endpoint. Creates the key on first use (<state_dir>/device.key).
    #[command(after_help = "\
Example:
  petrel device-key > kiosk-0042.pub.pem")]
    DeviceKey,
    /// Consent: list pending requests, show a notice, answer it.
    #[command(
        subcommand,
        after_help = "\
Examples:
  petrel consent list
  petrel consent show player-2.1 --locale de
  petrel consent accept player-2.1 --sha256 3f2a9c01
  petrel consent postpone player-2.1 --for 4h

Answers are appended to <state_dir>/consent.log, bound to the SHA-256 of the exact
campaign manifest shown; a changed campaign asks again."
    )]
    Consent(ConsentCommand),
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
    /// The manifest hash shown by `petrel consent show` (full, or at least 8 hex digits):
    /// refuses to record the answer if the campaign changed since.
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

fn parse_instant(s: &str) -> Result<DateTime<Utc>, String> {
    UtcTime::parse(s).map(|t| t.0)
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration like 30m, 4h, 2d or 1d12h");
    let mut total = 0i64;
    let mut num = String::new();
    for ch in s.trim().chars() {
        if ch.is_ascii_digit() {
            num.push(ch);
            continue;
        }
        let n: i64 = num.parse().map_err(|_| bad())?;
        num.clear();
        let unit = match ch {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => return Err(bad()),
        };
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(bad)?;
    }
    if !num.is_empty() || total <= 0 || total > 366 * 86400 {
        return Err(bad());
    }
    Ok(Duration::seconds(total))
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        2 => "debug",
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("petrel: {e}");
            ExitCode::FAILURE
        }
    }
}

fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialize")
    );
}

fn run(cli: Cli) -> Result<(), AgentError> {
    let config = AgentConfig::load(&cli.config)?;
    match cli.command {
        Command::Init { root, force } => {
            let bytes = std::fs::read(&root).map_err(|e| {
                AgentError::Refused(format!("cannot read the root {}: {e}", root.display()))
            })?;
            let r = Agent::init(&config, &bytes, force)?;
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
            let mut agent = Agent::open(config)?;
            let out = agent.update(None)?;
            if json {
                print_json(&render::update_json(&out));
            } else {
                print!("{}", render::update_text(&agent, &out));
            }
            if out.failed() {
                return Err(AgentError::Refused(
                    "a download or an install failed (see above); the next run tries again".into(),
                ));
            }
        }
        Command::DeviceKey => {
            print!("{}", Agent::device_key_pem(&config)?);
        }
        Command::Consent(c) => consent(config, c)?,
    }
    Ok(())
}

fn consent(config: AgentConfig, cmd: ConsentCommand) -> Result<(), AgentError> {
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
    println!(
        "Recorded: {} of campaign {} revision {} (manifest sha256 {}) at {}.",
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
