//! The report database: SQLite (bundled), WAL, `synchronous=FULL`, versioned schema;
//! enrolled device keys and the reports devices sent.

use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::{DateTime, Utc};
use petrel_client::report::{ReportResult, SignedReport};
use petrel_client::tuf::schema::Key;
use rusqlite::{params, Connection, ErrorCode, OpenFlags, OptionalExtension};

use super::summary::{summarize, ReportRow, RolloutSummary};

/// The schema version this code writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 2;

/// A report whose claimed time is further than this from when the server received it
/// is flagged (`clock_skewed`): the device's clock is wrong, or the time is made up.
pub const CLOCK_SKEW_LIMIT: chrono::Duration = chrono::Duration::hours(24);

const SCHEMA: &str = "
CREATE TABLE devices (
    device_id   TEXT PRIMARY KEY,
    keyid       TEXT NOT NULL,
    public_key  TEXT NOT NULL,          -- the TUF key object, JSON
    enrolled_at TEXT NOT NULL
);
CREATE TABLE reports (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    report_id   TEXT NOT NULL UNIQUE,
    device_id   TEXT NOT NULL,
    campaign    TEXT NOT NULL,
    revision    INTEGER NOT NULL,
    wave        INTEGER,
    result      TEXT NOT NULL,
    reason      TEXT NOT NULL,
    time        TEXT NOT NULL,          -- device clock, RFC 3339
    received_at TEXT NOT NULL,          -- server clock, RFC 3339
    body        BLOB NOT NULL,          -- the signed report exactly as received
    clock_skewed INTEGER NOT NULL DEFAULT 0  -- 1: time is > 24 h from received_at
);
CREATE INDEX reports_by_campaign ON reports (campaign, device_id);
";

/// Version 1 to 2: the clock-skew flag, computed for the reports already stored.
const MIGRATE_1_TO_2: &str =
    "ALTER TABLE reports ADD COLUMN clock_skewed INTEGER NOT NULL DEFAULT 0;";

/// Why the database could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another connection held a lock for longer than the busy timeout.
    #[error(
        "report database {path} is locked by another process (gave up after the busy timeout)"
    )]
    Busy {
        /// The database file.
        path: PathBuf,
    },
    /// The disk (or the configured size cap) is full.
    #[error("report database {path} is full (disk full or size cap reached)")]
    Full {
        /// The database file.
        path: PathBuf,
    },
    /// The database was written by a newer version, or is not a report database.
    #[error("report database {path}: {reason}")]
    Schema {
        /// The database file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A device id is already enrolled (use replace to change its key).
    #[error("device {0:?} is already enrolled with another key (use --replace to change it)")]
    AlreadyEnrolled(String),
    /// Any other SQLite error.
    #[error("report database {path}: {source}")]
    Sqlite {
        /// The database file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: rusqlite::Error,
    },
}

/// Settings of a writable report database.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    /// How long a statement waits for another connection's lock before giving up.
    pub busy_timeout: Duration,
    /// Upper bound of the database size in bytes (`PRAGMA max_page_count`); reaching it
    /// makes inserts fail like a full disk. `None`: no cap besides the disk.
    pub max_db_bytes: Option<u64>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            busy_timeout: Duration::from_secs(5),
            max_db_bytes: None,
        }
    }
}

/// An enrolled device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EnrolledDevice {
    /// The device id.
    pub device_id: String,
    /// Its key id.
    pub keyid: String,
    /// When it was enrolled (RFC 3339).
    pub enrolled_at: String,
}

/// What an enrollment did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Enrolled {
    /// A new device.
    New,
    /// The device was already enrolled with this key: nothing changed.
    Unchanged,
    /// The device's key was replaced.
    Replaced,
}

/// What storing a report did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// Stored and committed.
    Stored,
    /// A report with this id was already stored; nothing changed.
    Duplicate,
}

/// A connection to the report database.
#[derive(Debug)]
pub struct ReportStore {
    conn: Connection,
    path: PathBuf,
    /// The schema version of the open database.
    version: i64,
}

impl ReportStore {
    /// Opens (creating if needed) the database read-write: WAL journal,
    /// `synchronous=FULL` (a commit is on disk before it returns), the busy timeout and
    /// size cap from `opts`, and the schema created or checked.
    pub fn open(path: impl AsRef<Path>, opts: &StoreOptions) -> Result<ReportStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_WRITE
                | OpenFlags::SQLITE_OPEN_CREATE
                | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sqlite_err(&path, e))?;
        let store = ReportStore {
            conn,
            path,
            version: SCHEMA_VERSION,
        };
        store.configure(opts.busy_timeout)?;
        // Schema first, so a database that is not ours is refused before anything changes.
        store.migrate()?;
        store
            .conn
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(|e| store.err(e))?;
        store
            .conn
            .pragma_update(None, "synchronous", "FULL")
            .map_err(|e| store.err(e))?;
        if let Some(max) = opts.max_db_bytes {
            let page: i64 = store
                .conn
                .pragma_query_value(None, "page_size", |r| r.get(0))
                .map_err(|e| store.err(e))?;
            let pages = i64::try_from(max / page.max(1) as u64)
                .unwrap_or(i64::MAX)
                .max(1);
            store
                .conn
                .pragma_update(None, "max_page_count", pages)
                .map_err(|e| store.err(e))?;
        }
        Ok(store)
    }

    /// Opens an existing database read-only (for `rollout status`); never creates or
    /// changes anything.
    pub fn open_read_only(path: impl AsRef<Path>) -> Result<ReportStore, StoreError> {
        let path = path.as_ref().to_path_buf();
        if !path.exists() {
            return Err(StoreError::Schema {
                path,
                reason: "no such file".into(),
            });
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| sqlite_err(&path, e))?;
        let mut store = ReportStore {
            conn,
            path,
            version: SCHEMA_VERSION,
        };
        store.configure(Duration::from_secs(5))?;
        let version = store.user_version()?;
        // A version 1 database (from an older server) is read as it is: read-only
        // never migrates, and the skew flag is computed from the stored times.
        if !(1..=SCHEMA_VERSION).contains(&version) {
            return Err(store.schema_err(version));
        }
        store.version = version;
        Ok(store)
    }

    fn configure(&self, busy: Duration) -> Result<(), StoreError> {
        self.conn.busy_timeout(busy).map_err(|e| self.err(e))
    }

    fn user_version(&self) -> Result<i64, StoreError> {
        self.conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .map_err(|e| self.err(e))
    }

    fn schema_err(&self, version: i64) -> StoreError {
        StoreError::Schema {
            path: self.path.clone(),
            reason: if version > SCHEMA_VERSION {
                format!(
                    "schema version {version} is newer than this petrel-server ({SCHEMA_VERSION}); upgrade petrel-server"
                )
            } else {
                format!("not a report database (schema version {version})")
            },
        }
    }

    fn migrate(&self) -> Result<(), StoreError> {
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let version = self.user_version()?;
        match version {
            0 => {
                let tables: i64 = tx
                    .query_row(
                        "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                        [],
                        |r| r.get(0),
                    )
                    .map_err(|e| self.err(e))?;
                if tables != 0 {
                    return Err(StoreError::Schema {
                        path: self.path.clone(),
                        reason: "holds tables but no Petrel schema version; not a report database"
                            .into(),
                    });
                }
                tx.execute_batch(SCHEMA).map_err(|e| self.err(e))?;
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(|e| self.err(e))?;
            }
            1 => {
                tx.execute_batch(MIGRATE_1_TO_2).map_err(|e| self.err(e))?;
                let skewed: Vec<i64> = {
                    let mut stmt = tx
                        .prepare("SELECT seq, time, received_at FROM reports")
                        .map_err(|e| self.err(e))?;
                    let rows = stmt
                        .query_map([], |r| {
                            Ok((
                                r.get::<_, i64>(0)?,
                                r.get::<_, String>(1)?,
                                r.get::<_, String>(2)?,
                            ))
                        })
                        .map_err(|e| self.err(e))?;
                    let mut out = Vec::new();
                    for row in rows {
                        let (seq, time, received) = row.map_err(|e| self.err(e))?;
                        if skewed_text(&time, &received) {
                            out.push(seq);
                        }
                    }
                    out
                };
                for seq in skewed {
                    tx.execute("UPDATE reports SET clock_skewed = 1 WHERE seq = ?1", [seq])
                        .map_err(|e| self.err(e))?;
                }
                tx.pragma_update(None, "user_version", SCHEMA_VERSION)
                    .map_err(|e| self.err(e))?;
            }
            SCHEMA_VERSION => {}
            other => return Err(self.schema_err(other)),
        }
        tx.commit().map_err(|e| self.err(e))
    }

    fn err(&self, e: rusqlite::Error) -> StoreError {
        sqlite_err(&self.path, e)
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Enrolls `device_id` with public key `key`. Re-enrolling with the same key changes
    /// nothing; another key is refused unless `replace`.
    pub fn enroll(
        &self,
        device_id: &str,
        key: &Key,
        replace: bool,
    ) -> Result<Enrolled, StoreError> {
        let keyid = key.key_id().0;
        let json = serde_json::to_string(key).expect("keys serialize");
        let tx = self.conn.unchecked_transaction().map_err(|e| self.err(e))?;
        let existing: Option<String> = tx
            .query_row(
                "SELECT keyid FROM devices WHERE device_id = ?1",
                [device_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let outcome = match existing {
            Some(k) if k == keyid => return Ok(Enrolled::Unchanged),
            Some(_) if !replace => return Err(StoreError::AlreadyEnrolled(device_id.into())),
            Some(_) => Enrolled::Replaced,
            None => Enrolled::New,
        };
        tx.execute(
            "INSERT INTO devices (device_id, keyid, public_key, enrolled_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(device_id) DO UPDATE SET keyid = excluded.keyid,
                 public_key = excluded.public_key, enrolled_at = excluded.enrolled_at",
            params![device_id, keyid, json, now()],
        )
        .map_err(|e| self.err(e))?;
        tx.commit().map_err(|e| self.err(e))?;
        Ok(outcome)
    }

    /// Every enrolled device, by id.
    pub fn devices(&self) -> Result<Vec<EnrolledDevice>, StoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT device_id, keyid, enrolled_at FROM devices ORDER BY device_id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(EnrolledDevice {
                    device_id: r.get(0)?,
                    keyid: r.get(1)?,
                    enrolled_at: r.get(2)?,
                })
            })
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The enrolled public key of `device_id`.
    pub fn device_key(&self, device_id: &str) -> Result<Option<Key>, StoreError> {
        let json: Option<String> = self
            .conn
            .prepare_cached("SELECT public_key FROM devices WHERE device_id = ?1")
            .and_then(|mut s| s.query_row([device_id], |r| r.get(0)).optional())
            .map_err(|e| self.err(e))?;
        json.map(|j| {
            serde_json::from_str(&j).map_err(|e| StoreError::Schema {
                path: self.path.clone(),
                reason: format!("enrolled key of device {device_id:?} is unreadable: {e}"),
            })
        })
        .transpose()
    }

    /// Stores a verified report (and the exact bytes received) in one committed
    /// transaction. A report whose id is already stored is not stored again.
    ///
    /// The server's clock at this moment is stored as the receive time, which orders a
    /// device's reports; a claimed time further than [`CLOCK_SKEW_LIMIT`] from it is
    /// flagged.
    pub fn insert(&self, report: &SignedReport, body: &[u8]) -> Result<Inserted, StoreError> {
        self.insert_received_at(report, body, Utc::now())
    }

    /// [`ReportStore::insert`] with the receive time given (for tests and imports).
    pub fn insert_received_at(
        &self,
        report: &SignedReport,
        body: &[u8],
        received_at: DateTime<Utc>,
    ) -> Result<Inserted, StoreError> {
        let r = &report.signed;
        let skewed = is_skewed(r.time, received_at);
        let changed = self
            .conn
            .prepare_cached(
                "INSERT INTO reports (report_id, device_id, campaign, revision, wave, result,
                     reason, time, received_at, body, clock_skewed)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
                 ON CONFLICT(report_id) DO NOTHING",
            )
            .and_then(|mut s| {
                s.execute(params![
                    r.report_id,
                    r.device_id,
                    r.campaign,
                    i64::try_from(r.revision).unwrap_or(i64::MAX),
                    r.wave,
                    r.result.as_str(),
                    r.reason,
                    r.time.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
                    received_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    body,
                    skewed,
                ])
            })
            .map_err(|e| self.err(e))?;
        Ok(if changed == 1 {
            Inserted::Stored
        } else {
            Inserted::Duplicate
        })
    }

    /// Number of stored reports.
    pub fn report_count(&self) -> Result<u64, StoreError> {
        let n: i64 = self
            .conn
            .query_row("SELECT count(*) FROM reports", [], |r| r.get(0))
            .map_err(|e| self.err(e))?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Each device's latest received report (any campaign), as stored: device id → body.
    pub fn latest_bodies(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT device_id, body FROM reports
                 WHERE seq IN (SELECT max(seq) FROM reports GROUP BY device_id)
                 ORDER BY device_id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(|e| self.err(e))?;
        rows.collect::<Result<_, _>>().map_err(|e| self.err(e))
    }

    /// The summary rows of every stored report (of one campaign if given).
    pub fn rows(&self, campaign: Option<&str>) -> Result<Vec<ReportRow>, StoreError> {
        // Version 1 has no stored flag: it is computed below from the two times.
        let sql = if self.version >= 2 {
            "SELECT seq, device_id, campaign, revision, wave, result, reason, time,
                 received_at, clock_skewed
             FROM reports WHERE ?1 IS NULL OR campaign = ?1"
        } else {
            "SELECT seq, device_id, campaign, revision, wave, result, reason, time,
                 received_at, NULL
             FROM reports WHERE ?1 IS NULL OR campaign = ?1"
        };
        let mut stmt = self.conn.prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([campaign], |r| {
                let result: String = r.get(5)?;
                let time: String = r.get(7)?;
                let received: String = r.get(8)?;
                let flag: Option<bool> = r.get(9)?;
                let revision: i64 = r.get(3)?;
                Ok((
                    ReportRow {
                        seq: r.get(0)?,
                        device_id: r.get(1)?,
                        campaign: r.get(2)?,
                        revision: u64::try_from(revision).unwrap_or(0),
                        wave: r.get(4)?,
                        result: ReportResult::Succeeded,
                        reason: r.get(6)?,
                        time: DateTime::<Utc>::MIN_UTC,
                        received_at: DateTime::<Utc>::MIN_UTC,
                        clock_skewed: false,
                    },
                    result,
                    time,
                    received,
                    flag,
                ))
            })
            .map_err(|e| self.err(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (mut row, result, time, received, flag) = row.map_err(|e| self.err(e))?;
            row.result = result.parse().map_err(|e: String| StoreError::Schema {
                path: self.path.clone(),
                reason: format!("report {}: {e}", row.seq),
            })?;
            row.time = self.parse_time(row.seq, &time)?;
            row.received_at = self.parse_time(row.seq, &received)?;
            row.clock_skewed = flag.unwrap_or_else(|| is_skewed(row.time, row.received_at));
            out.push(row);
        }
        Ok(out)
    }

    fn parse_time(&self, seq: i64, text: &str) -> Result<DateTime<Utc>, StoreError> {
        DateTime::parse_from_rfc3339(text)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| StoreError::Schema {
                path: self.path.clone(),
                reason: format!("report {seq}: bad time {text:?}: {e}"),
            })
    }

    /// The rollout summary (of one campaign if given).
    pub fn summary(&self, campaign: Option<&str>) -> Result<RolloutSummary, StoreError> {
        Ok(summarize(self.rows(campaign)?, campaign))
    }
}

/// True when a claimed time is further than [`CLOCK_SKEW_LIMIT`] from the receive time.
pub fn is_skewed(claimed: DateTime<Utc>, received_at: DateTime<Utc>) -> bool {
    (claimed - received_at).abs() > CLOCK_SKEW_LIMIT
}

/// [`is_skewed`] on stored RFC 3339 text; unreadable times count as skewed.
fn skewed_text(claimed: &str, received_at: &str) -> bool {
    match (
        DateTime::parse_from_rfc3339(claimed),
        DateTime::parse_from_rfc3339(received_at),
    ) {
        (Ok(c), Ok(r)) => is_skewed(c.with_timezone(&Utc), r.with_timezone(&Utc)),
        _ => true,
    }
}

fn now() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn sqlite_err(path: &Path, e: rusqlite::Error) -> StoreError {
    let path = path.to_path_buf();
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked) => StoreError::Busy { path },
        Some(ErrorCode::DiskFull) => StoreError::Full { path },
        _ => StoreError::Sqlite { path, source: e },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_commits_durably_in_wal_and_refuses_newer_schemas() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("r.db");
        let store = ReportStore::open(&path, &StoreOptions::default()).unwrap();
        let mode: String = store
            .conn
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        // 2 = FULL: every commit is synced before it returns (NORMAL would be 1).
        let sync: i64 = store
            .conn
            .pragma_query_value(None, "synchronous", |r| r.get(0))
            .unwrap();
        assert_eq!(sync, 2);
        store
            .conn
            .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(store);
        let err = ReportStore::open(&path, &StoreOptions::default()).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
        let err = ReportStore::open_read_only(&path).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }

    /// The version 1 schema, as older servers created it.
    const SCHEMA_V1: &str = "
        CREATE TABLE devices (device_id TEXT PRIMARY KEY, keyid TEXT NOT NULL,
            public_key TEXT NOT NULL, enrolled_at TEXT NOT NULL);
        CREATE TABLE reports (seq INTEGER PRIMARY KEY AUTOINCREMENT,
            report_id TEXT NOT NULL UNIQUE, device_id TEXT NOT NULL, campaign TEXT NOT NULL,
            revision INTEGER NOT NULL, wave INTEGER, result TEXT NOT NULL,
            reason TEXT NOT NULL, time TEXT NOT NULL, received_at TEXT NOT NULL,
            body BLOB NOT NULL);
        CREATE INDEX reports_by_campaign ON reports (campaign, device_id);
        INSERT INTO reports (report_id, device_id, campaign, revision, wave, result, reason,
            time, received_at, body) VALUES
            ('a', 'd1', 'c', 1, NULL, 'succeeded', '', '2099-01-01T00:00:00Z',
                '2026-11-22T06:00:00Z', x''),
            ('b', 'd1', 'c', 1, NULL, 'failed', 'boom', '2026-11-22T07:00:00Z',
                '2026-11-22T07:00:05Z', x'');
        PRAGMA user_version = 1;
    ";

    #[test]
    fn version_1_databases_are_read_as_they_are_and_migrated_by_the_writer() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("v1.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch(SCHEMA_V1)
            .unwrap();
        let check = |store: &ReportStore| {
            let rows = store.rows(None).unwrap();
            let flags: Vec<bool> = rows.iter().map(|r| r.clock_skewed).collect();
            assert_eq!(flags, vec![true, false]);
            let c = store.summary(None).unwrap().campaigns.remove(0);
            // The later received report wins over the one dated 2099.
            assert_eq!((c.counts.failed, c.counts.succeeded), (1, 0));
            assert_eq!(c.counts.clock_skewed, 1);
        };
        // Read-only: nothing changes on disk.
        check(&ReportStore::open_read_only(&path).unwrap());
        let v: i64 = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .unwrap();
        assert_eq!(v, 1);
        // The writer migrates: the column is added and filled in.
        let store = ReportStore::open(&path, &StoreOptions::default()).unwrap();
        assert_eq!(store.user_version().unwrap(), SCHEMA_VERSION);
        let stored: Vec<i64> = store
            .conn
            .prepare("SELECT clock_skewed FROM reports ORDER BY seq")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(stored, vec![1, 0]);
        check(&store);
        drop(store);
        check(&ReportStore::open_read_only(&path).unwrap());
    }

    #[test]
    fn a_foreign_database_is_not_taken_over() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("other.db");
        Connection::open(&path)
            .unwrap()
            .execute_batch("CREATE TABLE t (x)")
            .unwrap();
        let err = ReportStore::open(&path, &StoreOptions::default()).unwrap_err();
        assert!(err.to_string().contains("not a report database"), "{err}");
        let mode: String = Connection::open(&path)
            .unwrap()
            .pragma_query_value(None, "journal_mode", |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "delete", "left unchanged");
    }
}
