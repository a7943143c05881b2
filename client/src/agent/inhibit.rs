//! Device-side preconditions (`[inhibit]` in device.toml): files whose presence, or a
//! command whose failure, means "not now" ("the machine is vending", "battery below
//! 30 %"). Checked at every evaluation, so before each download and before each install.

use super::config::InhibitConfig;
use super::exec::{run_bounded, CommandError, CommandSpec};

/// The largest output of an inhibit command that is read (its first line is the reason).
const MAX_OUTPUT: usize = 4096;

/// Why the device says to wait now, or `None` when nothing holds it back.
pub fn check(cfg: &InhibitConfig) -> Option<String> {
    for f in &cfg.files {
        if f.exists() {
            // Only the start of the file is read: its first line is the reason.
            let mut head = Vec::new();
            let _ = std::fs::File::open(f).and_then(|file| {
                std::io::Read::read_to_end(&mut std::io::Read::take(file, 512), &mut head)
            });
            let detail = String::from_utf8_lossy(&head)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
                .filter(|l| !l.is_empty() && l.len() <= 200);
            return Some(match detail {
                Some(d) => format!("{} is present: {d}", f.display()),
                None => format!("{} is present", f.display()),
            });
        }
    }
    let argv = cfg.command.as_ref()?;
    let spec = CommandSpec::new(argv, cfg.timeout).capture_stdout(MAX_OUTPUT);
    match run_bounded(&spec) {
        Ok(_) => None,
        Err(CommandError::Failed { status, stderr, .. }) => {
            // The reason is the first line the command wrote (on standard error; standard
            // output is not kept for a failed command).
            let why = stderr.lines().next().unwrap_or("").trim().to_string();
            Some(if why.is_empty() {
                format!("{} exited with {status}", argv[0])
            } else {
                format!("{} says: {why}", argv[0])
            })
        }
        Err(e) => Some(format!("the inhibit check could not run ({e})")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn cfg(files: Vec<std::path::PathBuf>, command: Option<&str>) -> InhibitConfig {
        InhibitConfig {
            files,
            command: command.map(|c| vec!["sh".to_string(), "-c".into(), c.into()]),
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn a_present_inhibit_file_holds_the_device_back_and_says_why() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("vending");
        assert_eq!(check(&cfg(vec![f.clone()], None)), None);
        std::fs::write(&f, "selling a coffee\n").unwrap();
        let why = check(&cfg(vec![f.clone()], None)).unwrap();
        assert!(
            why.contains("vending is present: selling a coffee"),
            "{why}"
        );
    }

    #[test]
    fn a_failing_inhibit_command_holds_the_device_back_with_its_message() {
        assert_eq!(check(&cfg(vec![], Some("exit 0"))), None);
        let why = check(&cfg(vec![], Some("echo 'battery at 12 %' >&2; exit 1"))).unwrap();
        assert!(why.contains("battery at 12 %"), "{why}");
        let why = check(&cfg(vec![], Some("exit 2"))).unwrap();
        assert!(why.contains("exited with"), "{why}");
    }
}
