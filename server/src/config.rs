//! Server configuration: what to serve, where to listen, and the robustness limits.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Smallest header limit accepted (hyper cannot buffer less than 8 KiB per read, and a
/// header limit far below that would reject ordinary clients).
pub const MIN_MAX_HEADER_BYTES: usize = 1024;

/// Resource limits that keep slow or hostile clients from exhausting the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once. A connection that arrives when all are taken is
    /// accepted at once, and the connection most likely to be hostile is closed to make
    /// room (the one waiting longest for a request head, else the slowest download;
    /// see `conns.rs`), so no one waits in the kernel's listen backlog behind attackers.
    pub max_connections: usize,
    /// Connections one peer address may hold at once (IPv6: one /64); a further one
    /// from that peer closes the same peer's oldest idle or slowest connection. `0`
    /// turns the per-peer cap off (needed behind a reverse proxy, where every
    /// connection comes from the proxy's address).
    pub max_connections_per_ip: usize,
    /// Largest request head (request line + headers) accepted; larger gets 431 and the
    /// connection is closed.
    pub max_header_bytes: usize,
    /// Time a client has to deliver a complete request head, counted from when the
    /// server starts waiting for it (also between requests on a kept-alive connection).
    pub header_read_timeout: Duration,
    /// The header read deadline while the server is busy (at least half of
    /// `max_connections` open): a connection waiting for a request head longer than
    /// this is closed, whatever `header_read_timeout` says.
    pub busy_header_read_timeout: Duration,
    /// Bytes of file content all streaming responses together may hold in chunks
    /// larger than [`crate::body::MIN_CHUNK_SIZE`]. A download that cannot get budget
    /// streams in minimum-size chunks, so the budget bounds memory, never progress.
    pub stream_buffer_bytes: usize,
    /// A connection on which no byte moved in either direction for this long is closed
    /// (idle keep-alive connections and clients that stopped reading a download).
    pub idle_timeout: Duration,
    /// On shutdown, how long in-flight requests may take to finish before their
    /// connections are dropped.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            max_connections_per_ip: 256,
            max_header_bytes: 16 * 1024,
            header_read_timeout: Duration::from_secs(10),
            busy_header_read_timeout: Duration::from_secs(1),
            stream_buffer_bytes: 64 * 1024 * 1024,
            idle_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

impl Limits {
    /// Check the limits are usable; returns a human-readable reason otherwise.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_connections == 0 {
            return Err("max connections must be at least 1".into());
        }
        if self.max_header_bytes < MIN_MAX_HEADER_BYTES {
            return Err(format!(
                "max header bytes must be at least {MIN_MAX_HEADER_BYTES}"
            ));
        }
        if self.header_read_timeout.is_zero()
            || self.busy_header_read_timeout.is_zero()
            || self.idle_timeout.is_zero()
        {
            return Err("timeouts must be greater than zero".into());
        }
        Ok(())
    }
}

/// Everything the server needs to run.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Root of the Petrel tree (the directory holding `metadata/` and `targets/`).
    pub root: PathBuf,
    /// Address to listen on; port 0 picks a free port.
    pub listen: SocketAddr,
    /// Emit one access-log line per request through `tracing` (target
    /// `petrel_server::access`).
    pub access_log: bool,
    /// Robustness limits.
    pub limits: Limits,
    /// The report endpoint (`POST /v1/reports`); `None` (the default) leaves it off.
    pub reports: Option<crate::reports::ReportsConfig>,
}

impl ServerConfig {
    /// A configuration with default limits and no access log.
    pub fn new(root: impl AsRef<Path>, listen: SocketAddr) -> Self {
        ServerConfig {
            root: root.as_ref().to_path_buf(),
            listen,
            access_log: false,
            limits: Limits::default(),
            reports: None,
        }
    }
}

/// Parse a duration such as `10s`, `500ms`, `2m` or a bare number of seconds (`1.5`).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (number, unit_secs) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let value: f64 = number
        .trim()
        .parse()
        .map_err(|_| format!("invalid duration {s:?} (examples: 10s, 500ms, 2m)"))?;
    if !value.is_finite() || value < 0.0 {
        return Err(format!("invalid duration {s:?}"));
    }
    Duration::try_from_secs_f64(value * unit_secs)
        .map_err(|e| format!("invalid duration {s:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn limits_validate() {
        assert!(Limits::default().validate().is_ok());
        let l = Limits {
            max_connections: 0,
            ..Limits::default()
        };
        assert!(l.validate().is_err());
    }
}
