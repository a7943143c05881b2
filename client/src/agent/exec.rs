//! Bounded external commands (hooks, installer, inventory): limits that always hold.

use std::io::{self, Read};
use std::process::ExitStatus;
use std::time::Duration;

/// How much of a command's standard error is kept for error messages and the log.
pub const STDERR_CAP: usize = 16 * 1024;
/// How long, after the command itself exited, its output pipes may stay open (held by
/// processes it left behind) before the rest of its process group is killed.
pub const EXIT_GRACE: Duration = Duration::from_millis(200);

/// What to do with a command's standard output.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stdout {
    /// Connected to `/dev/null`.
    Discard,
    /// Captured; more than `cap` bytes kill the command ([`CommandError::OutputTooLarge`]).
    Capture {
        /// The most bytes accepted.
        cap: usize,
    },
}

/// A command to run with [`run_bounded`].
#[derive(Clone, Debug)]
pub struct CommandSpec {
    /// The program, then its arguments.
    pub argv: Vec<String>,
    /// Variables added to the agent's environment.
    pub env: Vec<(String, String)>,
    /// The time limit of the whole run.
    pub timeout: Duration,
    /// What to do with standard output.
    pub stdout: Stdout,
    /// How much of standard error is kept (the rest is read and dropped).
    pub stderr_cap: usize,
    /// [`EXIT_GRACE`] unless changed.
    pub grace: Duration,
}

impl CommandSpec {
    /// `argv` (program first) within `timeout`; stdout discarded, [`STDERR_CAP`] bytes of
    /// stderr kept, [`EXIT_GRACE`].
    pub fn new(argv: &[String], timeout: Duration) -> CommandSpec {
        CommandSpec {
            argv: argv.to_vec(),
            env: Vec::new(),
            timeout,
            stdout: Stdout::Discard,
            stderr_cap: STDERR_CAP,
            grace: EXIT_GRACE,
        }
    }

    /// Appends an argument.
    pub fn arg(mut self, arg: impl Into<String>) -> CommandSpec {
        self.argv.push(arg.into());
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, key: impl Into<String>, value: impl Into<String>) -> CommandSpec {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Captures standard output, up to `cap` bytes.
    pub fn capture_stdout(mut self, cap: usize) -> CommandSpec {
        self.stdout = Stdout::Capture { cap };
        self
    }

    /// The program (for messages); empty when `argv` is.
    pub fn program(&self) -> &str {
        self.argv.first().map(String::as_str).unwrap_or("")
    }
}

/// What a successful run produced.
#[derive(Debug)]
pub struct CommandOutput {
    /// The exit status (a success).
    pub status: ExitStatus,
    /// Standard output ([`Stdout::Capture`]; empty with [`Stdout::Discard`]).
    pub stdout: Vec<u8>,
    /// Standard error, trimmed, at most `stderr_cap` bytes (marked when cut).
    pub stderr: String,
    /// The command exited but processes it left behind still held its output open after
    /// the grace; they were killed with the rest of its process group.
    pub leftovers_killed: bool,
}

/// Why a command did not succeed. Every message names the program and quotes its
/// (trimmed) standard error, when it wrote any.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// It could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// The program.
        program: String,
        /// Why.
        source: io::Error,
    },
    /// It passed its time limit; its whole process group was killed.
    #[error("{program} did not finish within {}; killed it and its process group{}", fmt_limit(*.limit), quote(.stderr))]
    TimedOut {
        /// The program.
        program: String,
        /// The limit.
        limit: Duration,
        /// Its standard error so far.
        stderr: String,
    },
    /// Its standard output passed the cap; its whole process group was killed at once.
    #[error("{program} printed more than {cap} bytes on its standard output (the cap); killed it and its process group{}", quote(.stderr))]
    OutputTooLarge {
        /// The program.
        program: String,
        /// The cap, in bytes.
        cap: usize,
        /// Its standard error so far.
        stderr: String,
    },
    /// It exited unsuccessfully (or was killed by a signal).
    #[error("{program} exited with {status}{}", quote(.stderr))]
    Failed {
        /// The program.
        program: String,
        /// The exit status.
        status: ExitStatus,
        /// Its standard error.
        stderr: String,
    },
    /// Waiting for it or reading its output failed (it was killed).
    #[error("running {program}: {source}")]
    Io {
        /// The program.
        program: String,
        /// Why.
        source: io::Error,
    },
}

fn quote(stderr: &str) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stderr: {stderr:?}")
    }
}

fn fmt_limit(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

/// Runs `spec` with limits that hold whatever the command does:
///
/// * it runs in its own process group with no input; at the time limit the whole group
///   (the command and every descendant that stayed in it) is killed with SIGKILL and the
///   command reaped;
/// * stdout is read up to its cap: past it, the group is killed at once
///   ([`CommandError::OutputTooLarge`]); stderr is kept up to its cap and the rest read
///   and dropped, so neither pipe ever blocks the command;
/// * when the command itself exits, its pipes get [`CommandSpec::grace`] to close, then the
///   rest of its process group is killed and the run returns with what was captured. So
///   **background processes a command leaves behind are killed**: a hook must not start
///   daemons (the service manager starts applications, not the hook). A descendant that
///   left the group (`setsid`) is out of reach, and only the pipes it holds are closed.
///
/// A non-zero exit status is [`CommandError::Failed`].
#[cfg(unix)]
pub fn run_bounded(spec: &CommandSpec) -> Result<CommandOutput, CommandError> {
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    use std::time::Instant;

    let program = spec.program().to_string();
    if program.is_empty() {
        return Err(CommandError::Spawn {
            program: "(no program)".into(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "the command is empty"),
        });
    }
    let mut cmd = Command::new(&program);
    cmd.args(&spec.argv[1..])
        .stdin(Stdio::null())
        .stdout(match spec.stdout {
            Stdout::Discard => Stdio::null(),
            Stdout::Capture { .. } => Stdio::piped(),
        })
        .stderr(Stdio::piped())
        .process_group(0);
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().map_err(|source| CommandError::Spawn {
        program: program.clone(),
        source,
    })?;
    let mut group = Group::new(child);
    let stdout_cap = match spec.stdout {
        Stdout::Discard => 0,
        Stdout::Capture { cap } => cap,
    };
    let mut out = Pipe::new(group.child.stdout.take(), stdout_cap);
    let mut err = Pipe::new(group.child.stderr.take(), spec.stderr_cap);
    let io_err = |source: io::Error| CommandError::Io {
        program: program.clone(),
        source,
    };

    let deadline = Instant::now() + spec.timeout;
    let mut exited_at: Option<Instant> = None;
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let now = Instant::now();
        let until = match exited_at {
            Some(at) => {
                if (out.closed() && err.closed()) || now >= at + spec.grace {
                    break;
                }
                at + spec.grace
            }
            None if now >= deadline => {
                let _ = group.kill_and_reap();
                return Err(CommandError::TimedOut {
                    program,
                    limit: spec.timeout,
                    stderr: err.text(),
                });
            }
            None => deadline,
        };
        let (out_ready, err_ready) =
            wait_readable(&out, &err, (until - now).min(TICK)).map_err(io_err)?;
        if out_ready {
            out.read_once(&mut chunk);
        }
        if err_ready {
            err.read_once(&mut chunk);
        }
        if out.over {
            let _ = group.kill_and_reap();
            return Err(CommandError::OutputTooLarge {
                program,
                cap: stdout_cap,
                stderr: err.text(),
            });
        }
        if exited_at.is_none() && group.has_exited().map_err(io_err)? {
            exited_at = Some(Instant::now());
        }
    }
    let leftovers_killed = !(out.closed() && err.closed());
    // Whatever is left of the group goes, pipes open or not.
    let status = group.kill_and_reap().map_err(io_err)?;
    let stderr = err.text();
    if leftovers_killed {
        tracing::warn!(
            "{program} exited but processes it left behind still held its output open: killed them (a hook must not leave processes behind)"
        );
    }
    if !status.success() {
        return Err(CommandError::Failed {
            program,
            status,
            stderr,
        });
    }
    Ok(CommandOutput {
        status,
        stdout: out.buf,
        stderr,
        leftovers_killed,
    })
}

/// Without Unix process groups the limits cannot be made to hold: refused.
#[cfg(not(unix))]
pub fn run_bounded(spec: &CommandSpec) -> Result<CommandOutput, CommandError> {
    Err(CommandError::Spawn {
        program: spec.program().to_string(),
        source: io::Error::new(
            io::ErrorKind::Unsupported,
            "bounded commands need a Unix system",
        ),
    })
}

/// How often the runner looks whether the command exited.
#[cfg(unix)]
const TICK: Duration = Duration::from_millis(10);

/// The command's process group; dropped, it kills and reaps whatever is left.
#[cfg(unix)]
struct Group {
    child: std::process::Child,
    pgid: rustix::process::Pid,
    reaped: bool,
}

#[cfg(unix)]
impl Group {
    fn new(child: std::process::Child) -> Group {
        // `process_group(0)`: the group id is the child's pid. The child is reaped only
        // after the group was killed, so the id cannot name another group meanwhile.
        let pgid = rustix::process::Pid::from_child(&child);
        Group {
            child,
            pgid,
            reaped: false,
        }
    }

    /// Whether the command exited, without reaping it (it stays a zombie, holding its pid
    /// and so the group id, until [`Group::kill_and_reap`]).
    #[cfg(any(target_os = "linux", target_os = "android"))]
    fn has_exited(&mut self) -> io::Result<bool> {
        use rustix::process::{waitid, WaitId, WaitIdOptions};
        let opts = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
        Ok(waitid(WaitId::Pid(self.pgid), opts)?.is_some())
    }

    /// Whether the command exited (reaping it).
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    fn has_exited(&mut self) -> io::Result<bool> {
        Ok(self.child.try_wait()?.is_some())
    }

    /// SIGKILL to the whole group, then reaps the command.
    fn kill_and_reap(&mut self) -> io::Result<ExitStatus> {
        // ESRCH: nothing left of the group.
        let _ = rustix::process::kill_process_group(self.pgid, rustix::process::Signal::KILL);
        let status = self.child.wait();
        self.reaped = true;
        status
    }
}

#[cfg(unix)]
impl Drop for Group {
    fn drop(&mut self) {
        if !self.reaped {
            let _ = self.kill_and_reap();
        }
    }
}

/// One output pipe and what was read from it.
#[cfg(unix)]
struct Pipe<R> {
    fd: Option<R>,
    buf: Vec<u8>,
    cap: usize,
    /// More than `cap` bytes arrived.
    over: bool,
}

#[cfg(unix)]
impl<R: Read> Pipe<R> {
    fn new(fd: Option<R>, cap: usize) -> Pipe<R> {
        Pipe {
            fd,
            buf: Vec::new(),
            cap,
            over: false,
        }
    }

    fn closed(&self) -> bool {
        self.fd.is_none()
    }

    /// One read (the pipe was reported readable, so it does not block). Bytes past the cap
    /// are dropped; end of file or an error closes the pipe.
    fn read_once(&mut self, chunk: &mut [u8]) {
        let Some(fd) = self.fd.as_mut() else { return };
        match fd.read(chunk) {
            Ok(0) => self.fd = None,
            Ok(n) => {
                let take = n.min(self.cap.saturating_sub(self.buf.len()));
                self.buf.extend_from_slice(&chunk[..take]);
                self.over |= take < n;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => self.fd = None,
        }
    }

    /// The bytes as trimmed text, marked when cut at the cap.
    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.buf).trim().to_string();
        if self.over {
            format!("{text}… (cut at {} bytes)", self.cap)
        } else {
            text
        }
    }
}

/// Waits up to `wait` for either open pipe to be readable (or closed).
#[cfg(unix)]
fn wait_readable<A: std::os::fd::AsFd, B: std::os::fd::AsFd>(
    a: &Pipe<A>,
    b: &Pipe<B>,
    wait: Duration,
) -> io::Result<(bool, bool)> {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let mut fds = Vec::with_capacity(2);
    let mut slot = [None, None];
    if let Some(fd) = &a.fd {
        slot[0] = Some(fds.len());
        fds.push(PollFd::new(fd, PollFlags::IN));
    }
    if let Some(fd) = &b.fd {
        slot[1] = Some(fds.len());
        fds.push(PollFd::new(fd, PollFlags::IN));
    }
    if fds.is_empty() {
        std::thread::sleep(wait);
        return Ok((false, false));
    }
    let timeout = Timespec::try_from(wait).unwrap_or(Timespec {
        tv_sec: 0,
        tv_nsec: 10_000_000,
    });
    match poll(&mut fds, Some(&timeout)) {
        Ok(_) => {}
        Err(e) if e == rustix::io::Errno::INTR => return Ok((false, false)),
        Err(e) => return Err(e.into()),
    }
    let ready = |s: Option<usize>| s.is_some_and(|i| !fds[i].revents().is_empty());
    Ok((ready(slot[0]), ready(slot[1])))
}

/// Runs a hook command: `argv` then `args`, with `env`, no input, at most `timeout`; it
/// must exit 0. Its output goes to the agent's log (stderr is quoted on failure).
pub fn run_hook(
    argv: &[String],
    args: &[&str],
    env: &[(&str, String)],
    timeout: Duration,
) -> Result<(), String> {
    let mut spec = CommandSpec::new(argv, timeout);
    for a in args {
        spec = spec.arg(*a);
    }
    for (k, v) in env {
        spec = spec.env(*k, v.as_str());
    }
    let out = run_bounded(&spec).map_err(|e| e.to_string())?;
    if !out.stderr.is_empty() {
        tracing::info!("{}: {}", spec.program(), out.stderr);
    }
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::sync::mpsc;
    use std::time::Instant;

    fn sh(script: &str) -> Vec<String> {
        vec!["sh".into(), "-c".into(), script.into()]
    }

    /// Runs `f` on a thread; fails the test (instead of hanging it) past `limit`.
    fn within<T: Send + 'static>(
        limit: Duration,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> (T, Duration) {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let started = Instant::now();
            let r = f();
            let _ = tx.send((r, started.elapsed()));
        });
        rx.recv_timeout(limit)
            .unwrap_or_else(|_| panic!("did not return within {limit:?}"))
    }

    /// A file a script writes a pid into; dropped, it kills that process (test hygiene).
    struct PidFile {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    impl PidFile {
        fn new() -> PidFile {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("pid");
            PidFile { _dir: dir, path }
        }

        fn pid(&self) -> u32 {
            let text = std::fs::read_to_string(&self.path).unwrap();
            text.trim().parse().unwrap()
        }
    }

    impl Drop for PidFile {
        fn drop(&mut self) {
            if let Ok(t) = std::fs::read_to_string(&self.path) {
                let _ = std::process::Command::new("sh")
                    .args(["-c", &format!("kill -9 {} 2>/dev/null", t.trim())])
                    .status();
            }
        }
    }

    /// `kill -0` says the process exists and it is not a zombie waiting to be reaped.
    fn running(pid: u32) -> bool {
        let exists = std::process::Command::new("sh")
            .args(["-c", &format!("kill -0 {pid} 2>/dev/null")])
            .status()
            .unwrap()
            .success();
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        });
        exists && !zombie
    }

    fn gone_soon(pid: u32) -> bool {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(2) {
            if !running(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn pidfile_env(p: &Path) -> [(&'static str, String); 1] {
        [("PIDFILE", p.to_string_lossy().into_owned())]
    }

    #[test]
    fn a_hook_leaving_a_background_process_returns_promptly_and_the_process_is_killed() {
        let pf = PidFile::new();
        let env = pidfile_env(&pf.path);
        let (r, took) = within(Duration::from_secs(10), move || {
            run_hook(
                &sh(r#"sleep 1000 & echo $! > "$PIDFILE"; exit 0"#),
                &[],
                &env,
                Duration::from_secs(30),
            )
        });
        assert_eq!(r, Ok(()));
        assert!(took < Duration::from_secs(3), "took {took:?}");
        let pid = pf.pid();
        assert!(gone_soon(pid), "background process {pid} still runs");
    }

    #[test]
    fn a_command_that_never_exits_is_killed_at_the_limit_with_its_children() {
        let pf = PidFile::new();
        let env = pidfile_env(&pf.path);
        let (r, took) = within(Duration::from_secs(10), move || {
            run_hook(
                &sh(r#"sleep 1000 & echo $! > "$PIDFILE"; sleep 1000"#),
                &[],
                &env,
                Duration::from_secs(1),
            )
        });
        let e = r.unwrap_err();
        assert!(e.contains("sh did not finish within 1 s"), "{e}");
        assert!(
            took >= Duration::from_secs(1) && took < Duration::from_secs(3),
            "took {took:?}"
        );
        let pid = pf.pid();
        assert!(gone_soon(pid), "child {pid} still runs");
    }

    #[test]
    fn output_past_the_cap_kills_the_whole_group_at_once() {
        let pf = PidFile::new();
        let spec = CommandSpec::new(
            &sh(r#"sleep 1000 & echo $! > "$PIDFILE"; exec yes"#),
            Duration::from_secs(30),
        )
        .env("PIDFILE", pf.path.to_string_lossy())
        .capture_stdout(1000);
        let (r, took) = within(Duration::from_secs(10), move || run_bounded(&spec));
        match r {
            Err(CommandError::OutputTooLarge { cap: 1000, .. }) => {}
            other => panic!("{other:?}"),
        }
        assert!(took < Duration::from_secs(3), "took {took:?}");
        assert!(gone_soon(pf.pid()));
    }

    #[test]
    fn stderr_is_quoted_trimmed_on_failure() {
        let spec = CommandSpec::new(
            &sh("echo '  the disk is full  ' >&2; exit 3"),
            Duration::from_secs(10),
        );
        let e = run_bounded(&spec).unwrap_err();
        assert!(
            matches!(&e, CommandError::Failed { status, .. } if status.code() == Some(3)),
            "{e:?}"
        );
        let msg = e.to_string();
        assert_eq!(
            msg, r#"sh exited with exit status: 3; stderr: "the disk is full""#,
            "{msg}"
        );
    }

    #[test]
    fn stderr_is_capped_and_drained_so_a_chatty_command_never_blocks() {
        // 1 MB on stderr: far more than a pipe holds.
        let spec = CommandSpec::new(
            &sh("head -c 1000000 /dev/zero | tr '\\0' x >&2; exit 1"),
            Duration::from_secs(10),
        );
        let (r, took) = within(Duration::from_secs(15), move || run_bounded(&spec));
        match r {
            Err(CommandError::Failed { stderr, .. }) => {
                assert!(stderr.len() < STDERR_CAP + 64, "{}", stderr.len());
                assert!(stderr.ends_with("(cut at 16384 bytes)"), "{stderr:.40}");
            }
            other => panic!("{other:?}"),
        }
        assert!(took < Duration::from_secs(5), "took {took:?}");
    }

    #[test]
    fn a_non_zero_exit_status_is_an_error_and_zero_is_not() {
        let e = run_bounded(&CommandSpec::new(
            &["false".into()],
            Duration::from_secs(10),
        ))
        .unwrap_err();
        assert!(
            matches!(&e, CommandError::Failed { program, status, .. }
                if program == "false" && status.code() == Some(1)),
            "{e:?}"
        );
        assert!(e.to_string().starts_with("false exited with"), "{e}");
        let ok = run_bounded(&CommandSpec::new(&["true".into()], Duration::from_secs(10))).unwrap();
        assert!(ok.status.success());
        assert!(!ok.leftovers_killed);
    }

    #[test]
    fn stdout_is_captured_and_a_missing_program_is_named() {
        let spec = CommandSpec::new(&sh("printf hello; echo note >&2"), Duration::from_secs(10))
            .capture_stdout(5);
        let out = run_bounded(&spec).unwrap();
        assert_eq!(out.stdout, b"hello");
        assert_eq!(out.stderr, "note");
        let e = run_bounded(&CommandSpec::new(
            &["/nonexistent/petrel-hook".into()],
            Duration::from_secs(10),
        ))
        .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot run /nonexistent/petrel-hook:"),
            "{e}"
        );
    }
}
