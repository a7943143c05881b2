//! `petrel run`: the resident agent. It holds the state directory for its whole life,
//! recovers first, then runs one cycle ([`Agent::update`]) after another and sleeps in
//! between until the earlier of the next poll (`[poll]`, with jitter) and the next
//! instant the decision engine names (a wave opening, a download or apply window opening,
//! a deadline). Network problems are retried with exponential backoff (capped at the poll
//! interval); verification failures wait for the normal poll. SIGTERM and SIGINT stop it
//! between steps: an install in progress completes or rolls back first, a download stops
//! and stays resumable.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::update::{RunStatus, UpdateHooks, UpdateOutcome};
use super::{now_seconds, Agent, AgentConfig, AgentError};

/// The first delay after a network problem; doubled after each further one.
pub const FIRST_BACKOFF: Duration = Duration::from_secs(5);

/// Settings of [`run`].
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Overrides `poll.interval` (and the jitter becomes a tenth of it).
    pub interval: Option<Duration>,
    /// Stop after this many cycles (`None`: until stopped).
    pub max_cycles: Option<u64>,
}

/// What one cycle of the resident agent did, for logs and callers.
#[derive(Debug)]
pub struct Cycle {
    /// The cycle's number, from 1.
    pub number: u64,
    /// What the update did, or the error that stopped it.
    pub result: Result<UpdateOutcome, AgentError>,
    /// When the next cycle starts.
    pub next_at: DateTime<Utc>,
    /// Why then (`poll`, `wake`, `backoff`).
    pub why: &'static str,
}

/// A flag that SIGTERM and SIGINT raise (registered once per process). They also write
/// to a pipe that [`run`]'s sleep waits on, so the resident agent sleeps without waking up
/// until the next instant that matters or a signal.
pub fn stop_flag() -> Arc<AtomicBool> {
    signals().0.clone()
}

fn signals() -> &'static (Arc<AtomicBool>, Option<std::os::unix::net::UnixStream>) {
    static SIGNALS: std::sync::OnceLock<(Arc<AtomicBool>, Option<std::os::unix::net::UnixStream>)> =
        std::sync::OnceLock::new();
    SIGNALS.get_or_init(|| {
        let f = Arc::new(AtomicBool::new(false));
        let pipe = std::os::unix::net::UnixStream::pair().ok();
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            if let Err(e) = signal_hook::flag::register(sig, f.clone()) {
                tracing::warn!("cannot handle signal {sig}: {e}");
            }
            if let Some((_, w)) = &pipe {
                if let Ok(w) = w.try_clone() {
                    let _ = signal_hook::low_level::pipe::register(sig, w);
                }
            }
        }
        let read = pipe.and_then(|(r, _w)| {
            // The write end stays open in the signal handlers' registrations.
            r.set_nonblocking(true).ok().map(|()| r)
        });
        (f, read)
    })
}

/// Runs the resident agent until `stop` is raised (or `max_cycles`), calling `on_cycle`
/// after each cycle (with the agent of the cycle, when it could be opened). Takes the
/// runner lock for its whole life ([`super::StatePaths::lock_runner`]); recovery is the
/// first step, and an error there ends the run.
pub fn run(
    config: AgentConfig,
    options: &RunOptions,
    stop: &AtomicBool,
    on_cycle: &mut dyn FnMut(Option<&Agent>, &Cycle),
) -> Result<u64, AgentError> {
    let paths = super::StatePaths::new(&config.state_dir);
    let _runner = paths.lock_runner()?;
    // The first open recovers from an interrupted install before anything else; an error
    // there (not provisioned, a damaged journal) ends the run.
    drop(Agent::open(config.clone())?);
    let poll = {
        let mut p = config.poll;
        if let Some(i) = options.interval {
            p.interval = i;
            p.jitter = i / 10;
        }
        p
    };
    let mut backoff = FIRST_BACKOFF.min(poll.interval);
    let mut cycles = 0u64;
    loop {
        if stop.load(Ordering::SeqCst) {
            break;
        }
        cycles += 1;
        // The agent (and its lock) is held for one cycle only, so `petrel check`,
        // `status` and `consent` work while the resident agent sleeps.
        let mut agent = match Agent::open(config.clone()) {
            Ok(a) => a,
            Err(e) => {
                let next = now_seconds() + chrono::Duration::from_std(backoff).unwrap_or_default();
                backoff = (backoff * 2).min(poll.interval);
                on_cycle(
                    None,
                    &Cycle {
                        number: cycles,
                        result: Err(e),
                        next_at: next,
                        why: "backoff",
                    },
                );
                if options.max_cycles.is_some_and(|m| cycles >= m) {
                    break;
                }
                sleep_until(next, stop);
                continue;
            }
        };
        let mut progress = ProgressLog::default();
        let result = agent.update_with(
            None,
            UpdateHooks {
                stop: Some(stop),
                progress: Some(Box::new(move |p| progress.record(p))),
                ..UpdateHooks::default()
            },
        );
        let now = now_seconds();
        let network = match &result {
            Err(e) => e.exit_code() == 3,
            Ok(out) => out.status() == RunStatus::Temporary || out.reports_pending,
        };
        let wake_at = result
            .as_ref()
            .ok()
            .and_then(|o| o.decision.as_ref())
            .and_then(|d| d.wake_at);
        let (next, why) = schedule(
            now,
            poll.interval + jitter(poll.jitter),
            wake_at,
            network.then_some(backoff),
        );
        backoff = next_backoff(backoff, network, poll.interval);
        let cycle = Cycle {
            number: cycles,
            result,
            next_at: next,
            why,
        };
        on_cycle(Some(&agent), &cycle);
        drop(agent);
        if options.max_cycles.is_some_and(|m| cycles >= m) {
            break;
        }
        sleep_until(next, stop);
    }
    Ok(cycles)
}

/// Logs download progress as structured records (`download progress` with target, bytes,
/// total, resumed): when a download starts, at most every [`ProgressLog::EVERY`] while it
/// runs, and when it completes.
#[derive(Debug, Default)]
pub struct ProgressLog {
    last: Option<(String, Instant)>,
}

impl ProgressLog {
    /// The least time between two records of one download.
    pub const EVERY: Duration = Duration::from_secs(5);

    /// Takes one progress report.
    pub fn record(&mut self, p: &crate::tuf::updater::DownloadProgress) {
        let due = match &self.last {
            Some((t, at)) if t == p.target => at.elapsed() >= Self::EVERY || p.bytes >= p.total,
            _ => true,
        };
        if due {
            tracing::info!(
                target_path = p.target,
                bytes = p.bytes,
                total = p.total,
                resumed = p.resumed,
                "download progress: {} {} of {} bytes{}",
                p.target,
                p.bytes,
                p.total,
                if p.resumed > 0 {
                    format!(" (resumed at {})", p.resumed)
                } else {
                    String::new()
                }
            );
            self.last = Some((p.target.to_string(), Instant::now()));
        }
    }
}

/// When the next cycle starts, and why: the next poll (`poll` from now), unless the
/// decision names an earlier instant at which something changes by itself (`wake`), or a
/// network problem asks to try again sooner (`backoff`, its delay). A verification failure
/// is not a network problem: it waits for the next poll.
pub fn schedule(
    now: DateTime<Utc>,
    poll: Duration,
    wake_at: Option<DateTime<Utc>>,
    backoff: Option<Duration>,
) -> (DateTime<Utc>, &'static str) {
    let mut next = now + chrono::Duration::from_std(poll).unwrap_or(chrono::Duration::hours(1));
    let mut why = "poll";
    if let Some(w) = wake_at.filter(|w| *w > now && *w < next) {
        next = w;
        why = "wake";
    }
    if let Some(b) = backoff {
        let b = now + chrono::Duration::from_std(b).unwrap_or_default();
        if b < next {
            next = b;
            why = "backoff";
        }
    }
    (next, why)
}

/// The delay before retrying after the next network problem: doubled after each one, up to
/// the poll interval; back to [`FIRST_BACKOFF`] after a cycle without one.
pub fn next_backoff(current: Duration, network_problem: bool, poll: Duration) -> Duration {
    if network_problem {
        (current * 2).min(poll)
    } else {
        FIRST_BACKOFF.min(poll)
    }
}

/// A random delay in `[0, max]`.
fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    let mut b = [0u8; 8];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    let ms = u64::from_le_bytes(b) % (max.as_millis() as u64 + 1);
    Duration::from_millis(ms)
}

/// Sleeps until `t` (wall clock), waking early when `stop` is raised. Waits on the signal
/// pipe in slices of at most a minute (re-reading the clock after each, so a clock set
/// forward, e.g. by NTP at boot, is followed); without the pipe, in slices of a second.
fn sleep_until(t: DateTime<Utc>, stop: &AtomicBool) {
    let started = Instant::now();
    let pipe = signals().1.as_ref();
    loop {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let left = (t - Utc::now()).to_std().unwrap_or_default();
        if left.is_zero() || started.elapsed() > Duration::from_secs(366 * 86400) {
            return;
        }
        match pipe {
            Some(p) => {
                let slice = left.min(Duration::from_secs(60));
                let timeout = rustix::event::Timespec {
                    tv_sec: slice.as_secs() as i64,
                    tv_nsec: i64::from(slice.subsec_nanos()),
                };
                let mut fds = [rustix::event::PollFd::new(p, rustix::event::PollFlags::IN)];
                if let Ok(n) = rustix::event::poll(&mut fds, Some(&timeout)) {
                    if n > 0 {
                        let mut buf = [0u8; 64];
                        let _ = std::io::Read::read(&mut &*p, &mut buf);
                    }
                }
            }
            None => std::thread::sleep(left.min(Duration::from_secs(1))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_agent_sleeps_until_the_earlier_of_the_next_poll_and_the_next_instant_that_matters() {
        let now = DateTime::from_timestamp(1_900_000_000, 0).unwrap();
        let hour = Duration::from_secs(3600);
        let window = now + chrono::Duration::seconds(90);
        assert_eq!(
            schedule(now, hour, None, None),
            (now + chrono::Duration::hours(1), "poll")
        );
        assert_eq!(schedule(now, hour, Some(window), None), (window, "wake"));
        // A wake-up in the past or after the poll changes nothing.
        assert_eq!(
            schedule(now, hour, Some(now - chrono::Duration::seconds(1)), None).1,
            "poll"
        );
        assert_eq!(
            schedule(now, hour, Some(now + chrono::Duration::hours(2)), None).1,
            "poll"
        );
        // A network problem tries again sooner, but never later than the poll.
        assert_eq!(
            schedule(now, hour, Some(window), Some(Duration::from_secs(5))),
            (now + chrono::Duration::seconds(5), "backoff")
        );
        assert_eq!(
            schedule(now, hour, Some(window), Some(Duration::from_secs(7200))),
            (window, "wake")
        );
    }

    #[test]
    fn the_backoff_doubles_from_five_seconds_and_is_capped_at_the_poll_interval() {
        let poll = Duration::from_secs(60);
        let mut b = next_backoff(Duration::from_secs(3600), false, poll);
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(b.as_secs());
            b = next_backoff(b, true, poll);
        }
        assert_eq!(seen, [5, 10, 20, 40, 60, 60]);
        assert_eq!(
            next_backoff(b, false, poll),
            FIRST_BACKOFF,
            "reset after a good cycle"
        );
        let fast = Duration::from_secs(2);
        assert_eq!(
            next_backoff(FIRST_BACKOFF, false, fast),
            fast,
            "never beyond the poll"
        );
    }
}
