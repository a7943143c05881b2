//! tough-bench-client: what a tough user writes to fetch one target over HTTP.
//!
//! ```text
//! tough-bench-client --root TRUSTED_ROOT --metadata-url URL --targets-url URL \
//!                    --datastore DIR --out FILE [--initial-backoff-ms N] TARGET_NAME
//! ```
//! Loads the repository with tough's `RepositoryLoader` (trusted root, datastore dir,
//! HTTP transport with tough's default retry settings, safe expiration enforcement), then
//! streams one target through `Repository::read_target` (length and hash checked by tough)
//! into FILE. Exit status 0 on success, 1 on any error, 2 on usage errors, 3 when the
//! target is not in the repository.
//!
//! Note on `--initial-backoff-ms`: tough 0.24's `HttpTransport` sleeps for its initial
//! backoff (default 100 ms) before the *first* try of every request too, not only before
//! retries, so every metadata file costs at least 100 ms of wall time. By default this
//! client keeps that (it is what a tough user gets); `--initial-backoff-ms 0` sets
//! `HttpTransportBuilder::initial_backoff(0)` to measure tough without that sleep.

use std::process::ExitCode;
use std::time::Duration;

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tough::{HttpTransport, HttpTransportBuilder, RepositoryLoader, TargetName};
use url::Url;

struct Args {
    root: String,
    metadata_url: String,
    targets_url: String,
    datastore: String,
    out: String,
    target: String,
    initial_backoff_ms: Option<u64>,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let (mut root, mut md, mut tg, mut ds, mut out, mut target) =
        (None, None, None, None, None, None);
    let mut initial_backoff_ms = None;
    while let Some(a) = it.next() {
        let mut val = |name: &str| it.next().ok_or(format!("{name} needs a value"));
        match a.as_str() {
            "--root" => root = Some(val("--root")?),
            "--metadata-url" => md = Some(val("--metadata-url")?),
            "--targets-url" => tg = Some(val("--targets-url")?),
            "--datastore" => ds = Some(val("--datastore")?),
            "--out" => out = Some(val("--out")?),
            "--initial-backoff-ms" => {
                let v = val("--initial-backoff-ms")?;
                initial_backoff_ms = Some(v.parse().map_err(|e| format!("{v}: {e}"))?);
            }
            s if s.starts_with("--") => return Err(format!("unknown option {s}")),
            _ if target.is_none() => target = Some(a),
            _ => return Err("exactly one TARGET_NAME".into()),
        }
    }
    let need = |v: Option<String>, n: &str| v.ok_or(format!("{n} is required"));
    Ok(Args {
        root: need(root, "--root")?,
        metadata_url: need(md, "--metadata-url")?,
        targets_url: need(tg, "--targets-url")?,
        datastore: need(ds, "--datastore")?,
        out: need(out, "--out")?,
        target: need(target, "TARGET_NAME")?,
        initial_backoff_ms,
    })
}

/// tough joins file names onto the base URLs, so they must end with '/'.
fn dir_url(s: &str) -> Result<Url, String> {
    let s = if s.ends_with('/') {
        s.to_string()
    } else {
        format!("{s}/")
    };
    Url::parse(&s).map_err(|e| format!("{s}: {e}"))
}

async fn run(args: Args) -> Result<bool, String> {
    let root = tokio::fs::read(&args.root)
        .await
        .map_err(|e| format!("{}: {e}", args.root))?;
    tokio::fs::create_dir_all(&args.datastore)
        .await
        .map_err(|e| format!("{}: {e}", args.datastore))?;
    let transport = match args.initial_backoff_ms {
        None => HttpTransport::default(),
        Some(ms) => HttpTransportBuilder::new()
            .initial_backoff(Duration::from_millis(ms))
            .build(),
    };
    let repo = RepositoryLoader::new(
        &root,
        dir_url(&args.metadata_url)?,
        dir_url(&args.targets_url)?,
    )
    .transport(transport)
    .datastore(&args.datastore)
    .load()
    .await
    .map_err(|e| format!("loading the repository: {e}"))?;
    let name = TargetName::new(&args.target).map_err(|e| format!("{}: {e}", args.target))?;
    let Some(mut stream) = repo
        .read_target(&name)
        .await
        .map_err(|e| format!("{}: {e}", args.target))?
    else {
        return Ok(false);
    };
    // Write to a temporary name and rename only after the stream ended without error
    // (tough checks length and sha256 as the last chunk is read).
    let tmp = format!("{}.part", args.out);
    let mut f = tokio::fs::File::create(&tmp)
        .await
        .map_err(|e| format!("{tmp}: {e}"))?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| format!("{}: {e}", args.target))?;
        f.write_all(&chunk)
            .await
            .map_err(|e| format!("{tmp}: {e}"))?;
    }
    f.sync_all().await.map_err(|e| format!("{tmp}: {e}"))?;
    drop(f);
    tokio::fs::rename(&tmp, &args.out)
        .await
        .map_err(|e| format!("{}: {e}", args.out))?;
    Ok(true)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("tough-bench-client: {e}");
            return ExitCode::from(2);
        }
    };
    // tough is async; a current-thread runtime is what a one-shot CLI needs.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tough-bench-client: tokio: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("tough-bench-client: target not found in the repository");
            ExitCode::from(3)
        }
        Err(e) => {
            eprintln!("tough-bench-client: error: {e}");
            ExitCode::from(1)
        }
    }
}
