//! Named fault points: the places where the agent's durable state changes (refresh,
//! download, staging, re-check, install, health check, rollback, report), numbered as
//! they are reached, so crash tests can stop the real binary at any of them.
//!
//! Off unless `PETREL_FAULT_LOG` or `PETREL_FAULT_STOP_AT` is set in the environment:
//! * `PETREL_FAULT_LOG=FILE` appends `N PHASE WHAT` for every point reached;
//! * `PETREL_FAULT_STOP_AT=N` makes the agent print `petrel: fault point N reached` on
//!   stderr at point N and then wait, doing nothing, until it is killed (crash tests send
//!   SIGKILL then, so the process dies exactly there, as in a power cut).

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

struct Settings {
    log: Option<std::path::PathBuf>,
    stop_at: Option<u64>,
}

fn settings() -> &'static Settings {
    static S: OnceLock<Settings> = OnceLock::new();
    S.get_or_init(|| Settings {
        log: std::env::var_os("PETREL_FAULT_LOG").map(Into::into),
        stop_at: std::env::var("PETREL_FAULT_STOP_AT")
            .ok()
            .and_then(|v| v.parse().ok()),
    })
}

static COUNT: AtomicU64 = AtomicU64::new(0);

/// Marks a fault point in `phase` (`refresh`, `download`, `stage`, `recheck`, `apply`,
/// `report`, …); `what` says where exactly.
pub fn point(phase: &str, what: &str) {
    let s = settings();
    if s.log.is_none() && s.stop_at.is_none() {
        return;
    }
    let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(path) = &s.log {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{n} {phase} {what}");
        }
    }
    if s.stop_at == Some(n) {
        eprintln!("petrel: fault point {n} reached ({phase}: {what})");
        let _ = std::io::stderr().flush();
        // Bounded: a crash test kills the process long before this ends.
        for _ in 0..600 {
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        std::process::exit(86);
    }
}
