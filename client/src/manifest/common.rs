//! Value types shared by the manifest formats: instants, local times of day, daily windows,
//! post-install states, manifest hashes, and the identifier rules.

use std::fmt;

use chrono::{DateTime, SecondsFormat, Timelike, Utc};
use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::tuf::schema::parse_datetime;

/// A UTC instant with one-second precision, written `YYYY-MM-DDTHH:MM:SSZ`.
///
/// In TOML it may be written as a string or as a native offset date-time
/// (`not_before = 2030-03-01T00:00:00Z`); a local date-time without an offset is refused,
/// since it would mean a different instant on every device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct UtcTime(pub DateTime<Utc>);

impl UtcTime {
    /// Parses `YYYY-MM-DDTHH:MM:SSZ` (or any RFC 3339 form with an offset); sub-second
    /// digits are dropped.
    pub fn parse(s: &str) -> Result<UtcTime, String> {
        let t = parse_datetime(s).map_err(|_| {
            format!("{s:?} is not a date-time with an offset, like 2030-03-01T00:00:00Z")
        })?;
        Ok(UtcTime(t.with_nanosecond(0).unwrap_or(t)))
    }
}

impl From<DateTime<Utc>> for UtcTime {
    fn from(t: DateTime<Utc>) -> Self {
        UtcTime(t.with_nanosecond(0).unwrap_or(t))
    }
}

impl fmt::Display for UtcTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.to_rfc3339_opts(SecondsFormat::Secs, true))
    }
}

impl Serialize for UtcTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

/// The key under which the `toml` crate passes native date-times through serde.
const TOML_DATETIME_KEY: &str = "$__toml_private_datetime";

impl<'de> Deserialize<'de> for UtcTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UtcTime;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a UTC date-time such as \"2030-03-01T00:00:00Z\"")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<UtcTime, E> {
                UtcTime::parse(s).map_err(E::custom)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UtcTime, A::Error> {
                match map.next_entry::<String, String>()? {
                    Some((k, v)) if k == TOML_DATETIME_KEY => {
                        if !(v.ends_with('Z')
                            || v.ends_with('z')
                            || v.len() > 19 && v[19..].contains(['+', '-']))
                        {
                            return Err(de::Error::custom(format!(
                                "{v} has no UTC offset; write it as {v}Z (or with +hh:mm)"
                            )));
                        }
                        UtcTime::parse(&v).map_err(de::Error::custom)
                    }
                    _ => Err(de::Error::custom("expected a date-time")),
                }
            }
        }
        d.deserialize_any(V)
    }
}

/// A time of day in device-local time, written `HH:MM` (00:00 to 23:59).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LocalTime {
    minutes: u16,
}

impl LocalTime {
    /// `hour:minute`, if valid.
    pub fn new(hour: u32, minute: u32) -> Option<LocalTime> {
        (hour < 24 && minute < 60).then_some(LocalTime {
            minutes: (hour * 60 + minute) as u16,
        })
    }

    /// Parses `HH:MM`.
    pub fn parse(s: &str) -> Result<LocalTime, String> {
        let bad = || format!("{s:?} is not a time of day HH:MM (00:00 to 23:59)");
        let (h, m) = s.split_once(':').ok_or_else(bad)?;
        if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
            return Err(bad());
        }
        LocalTime::new(h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?).ok_or_else(bad)
    }

    /// Minutes since midnight.
    pub fn minutes(self) -> u32 {
        self.minutes as u32
    }

    /// Seconds since midnight.
    pub fn seconds(self) -> u32 {
        self.minutes as u32 * 60
    }
}

impl fmt::Display for LocalTime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:02}:{:02}", self.minutes / 60, self.minutes % 60)
    }
}

impl Serialize for LocalTime {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for LocalTime {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        LocalTime::parse(&s).map_err(de::Error::custom)
    }
}

const DAY: i64 = 24 * 3600;

/// A daily window `[start, end)` in device-local time. When `end` is earlier than `start`
/// the window wraps midnight (`23:00`–`02:00` is open from 23:00 to 02:00 the next day).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DailyWindow {
    /// Opening time (inclusive).
    pub start: LocalTime,
    /// Closing time (exclusive).
    pub end: LocalTime,
}

impl DailyWindow {
    /// Whether the window wraps midnight.
    pub fn wraps_midnight(&self) -> bool {
        self.end < self.start
    }

    /// Whether the window is open at `seconds_of_day` (device-local, 0..86400).
    pub fn is_open_at(&self, seconds_of_day: u32) -> bool {
        let (s, e) = (self.start.seconds(), self.end.seconds());
        if s <= e {
            s <= seconds_of_day && seconds_of_day < e
        } else {
            seconds_of_day >= s || seconds_of_day < e
        }
    }

    /// Whether the window is open at `now`, for a device whose local time is UTC plus
    /// `utc_offset_minutes`.
    pub fn is_open(&self, now: DateTime<Utc>, utc_offset_minutes: i32) -> bool {
        self.is_open_at(local_seconds_of_day(now, utc_offset_minutes))
    }

    /// The next instant at or after `now` at which the window is open: `now` itself if it
    /// is open.
    pub fn next_open(&self, now: DateTime<Utc>, utc_offset_minutes: i32) -> DateTime<Utc> {
        let tod = local_seconds_of_day(now, utc_offset_minutes);
        if self.is_open_at(tod) {
            return now;
        }
        let wait = (self.start.seconds() as i64 - tod as i64).rem_euclid(DAY);
        now + chrono::Duration::seconds(wait)
    }

    /// When the window that is open at `now` closes (`None` if it is closed at `now`).
    pub fn closes_at(&self, now: DateTime<Utc>, utc_offset_minutes: i32) -> Option<DateTime<Utc>> {
        let tod = local_seconds_of_day(now, utc_offset_minutes);
        if !self.is_open_at(tod) {
            return None;
        }
        let mut wait = (self.end.seconds() as i64 - tod as i64).rem_euclid(DAY);
        if wait == 0 {
            wait = DAY;
        }
        Some(now + chrono::Duration::seconds(wait))
    }

    fn validate(&self) -> Result<(), String> {
        if self.start == self.end {
            return Err(format!(
                "start and end are both {}: an empty window never opens (leave the window out to allow any time)",
                self.start
            ));
        }
        Ok(())
    }
}

impl fmt::Display for DailyWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.start, self.end)?;
        if self.wraps_midnight() {
            f.write_str(" (wraps midnight)")?;
        }
        Ok(())
    }
}

/// Seconds since local midnight at `now` for a device at UTC + `utc_offset_minutes`.
/// Sub-second parts are ignored.
pub fn local_seconds_of_day(now: DateTime<Utc>, utc_offset_minutes: i32) -> u32 {
    (now.timestamp() + utc_offset_minutes as i64 * 60).rem_euclid(DAY) as u32
}

pub(crate) fn validate_window(w: &Option<DailyWindow>) -> Result<(), String> {
    w.as_ref().map_or(Ok(()), DailyWindow::validate)
}

/// What an application should be doing after it is installed.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum PostInstall {
    /// Leave it as it was (running stays running, stopped stays stopped).
    #[default]
    Keep,
    /// Start it.
    Start,
    /// Stop it.
    Stop,
}

impl fmt::Display for PostInstall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PostInstall::Keep => "keep",
            PostInstall::Start => "start",
            PostInstall::Stop => "stop",
        })
    }
}

/// The SHA-256 of the exact bytes of a manifest, in lowercase hex. It equals the `sha256`
/// TUF signs for the target. Administrator tokens name it, and consent records keep it
/// next to the [`OfferHash`] they are bound to (records of agents that predate the offer
/// binding are bound to it alone).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ManifestHash(pub String);

impl ManifestHash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> ManifestHash {
        ManifestHash(sha256_hex(bytes))
    }

    /// Parses 64 lowercase hex characters.
    pub fn parse(s: &str) -> Result<ManifestHash, String> {
        check_sha256_hex(s)?;
        Ok(ManifestHash(s.to_string()))
    }

    /// The first 12 hex characters, for messages.
    pub fn short(&self) -> &str {
        self.0.get(..12).unwrap_or(&self.0)
    }
}

impl fmt::Display for ManifestHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The SHA-256 of the canonical JSON of a campaign's offer ([`super::CampaignOffer`]): the
/// part of the campaign a consent answer agrees to (notice, payload, consent policy and
/// stage, method, forced set). Consent records are bound to it, so a new revision that
/// changes only the state, the schedule or the rollout keeps the consent given.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OfferHash(pub String);

impl OfferHash {
    /// The hash of an offer's canonical bytes.
    pub fn of(bytes: &[u8]) -> OfferHash {
        OfferHash(sha256_hex(bytes))
    }

    /// Parses 64 lowercase hex characters.
    pub fn parse(s: &str) -> Result<OfferHash, String> {
        check_sha256_hex(s)?;
        Ok(OfferHash(s.to_string()))
    }

    /// The first 12 hex characters, for messages.
    pub fn short(&self) -> &str {
        self.0.get(..12).unwrap_or(&self.0)
    }
}

impl fmt::Display for OfferHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(ring::digest::digest(&ring::digest::SHA256, bytes))
}

/// Checks 64 lowercase hex characters.
pub fn check_sha256_hex(s: &str) -> Result<(), String> {
    if s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(format!(
            "{s:?} is not a SHA-256 in lowercase hex (64 characters)"
        ))
    }
}

/// Checks an identifier (group, campaign, application, device type, …): 1 to 128
/// characters from `A-Z a-z 0-9 . _ -`, starting with a letter or digit. Identifiers are
/// case-sensitive and safe in file names and target paths.
pub fn check_id(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 128 {
        return Err(format!("{} characters is more than 128", s.len()));
    }
    if !s.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(format!("{s:?} must start with a letter or digit"));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "{s:?} contains {c:?}; use only letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Checks a selector value (device type, vendor, region, hardware component, licence, …):
/// like [`check_id`] but `:` and `/` are allowed too (`gpu:t4`, `eu/west`).
pub fn check_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("must not be empty".into());
    }
    if s.len() > 128 {
        return Err(format!("{} characters is more than 128", s.len()));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':' | '/' | '+')))
    {
        return Err(format!("{s:?} contains {c:?}"));
    }
    Ok(())
}

/// Checks an application version: 1 to 64 printable characters without spaces. Versions
/// are compared for equality only; Petrel never orders them.
pub fn check_version(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("version must not be empty".into());
    }
    if s.len() > 64 {
        return Err(format!("version {s:?} is longer than 64 characters"));
    }
    if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "version {s:?} contains whitespace or a control character"
        ));
    }
    Ok(())
}

/// Quotes a map key for a field path when it is not a bare TOML key (`apps."acme.player"`).
pub fn key(k: &str) -> String {
    if !k.is_empty()
        && k.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        k.to_string()
    } else {
        format!("{k:?}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        UtcTime::parse(s).unwrap().0
    }

    #[test]
    fn local_time_parsing() {
        assert_eq!(LocalTime::parse("00:00").unwrap().minutes(), 0);
        assert_eq!(LocalTime::parse("23:59").unwrap().minutes(), 1439);
        for bad in ["24:00", "1:00", "12:60", "12-00", "ab:cd", "", "12:00:00"] {
            assert!(LocalTime::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn wrapping_window_opens_across_midnight() {
        let w = DailyWindow {
            start: LocalTime::parse("23:00").unwrap(),
            end: LocalTime::parse("02:00").unwrap(),
        };
        assert!(w.is_open(t("2030-01-01T23:30:00Z"), 0));
        assert!(w.is_open(t("2030-01-02T01:59:59Z"), 0));
        assert!(!w.is_open(t("2030-01-02T02:00:00Z"), 0));
        assert_eq!(
            w.next_open(t("2030-01-02T02:00:00Z"), 0),
            t("2030-01-02T23:00:00Z")
        );
        assert_eq!(
            w.closes_at(t("2030-01-01T23:30:00Z"), 0),
            Some(t("2030-01-02T02:00:00Z"))
        );
        // UTC+2: 21:30 UTC is 23:30 local.
        assert!(w.is_open(t("2030-01-01T21:30:00Z"), 120));
        // UTC-5: 05:00 UTC is 00:00 local.
        assert!(w.is_open(t("2030-01-01T05:00:00Z"), -300));
    }

    #[test]
    fn ids_and_versions() {
        assert!(check_id("acme.player-2_x").is_ok());
        for bad in ["", ".x", "a/b", "a b", "ü"] {
            assert!(check_id(bad).is_err(), "{bad}");
        }
        assert!(check_version("2.1.0+build.7").is_ok());
        assert!(check_version("2.1 beta").is_err());
        assert_eq!(key("acme.player"), "\"acme.player\"");
        assert_eq!(key("player"), "player");
    }

    #[test]
    fn utc_times_drop_subseconds_and_print_z() {
        assert_eq!(
            UtcTime::parse("2030-01-01T00:00:00.7Z")
                .unwrap()
                .to_string(),
            "2030-01-01T00:00:00Z"
        );
        assert_eq!(
            UtcTime::parse("2030-01-01T01:00:00+01:00")
                .unwrap()
                .to_string(),
            "2030-01-01T00:00:00Z"
        );
        assert!(UtcTime::parse("2030-01-01").is_err());
    }
}
