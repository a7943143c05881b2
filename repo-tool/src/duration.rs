//! Human durations for expiry settings: `90d`, `12h`, `2w`, `30m`, `45s`.

use chrono::Duration;

/// Parses `<n><unit>` with unit `s`, `m`, `h`, `d` or `w`.
pub fn parse(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: i64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. 90d, 12h, 2w"))?;
    let d = match unit {
        "s" => Duration::try_seconds(n),
        "m" => Duration::try_minutes(n),
        "h" => Duration::try_hours(n),
        "d" | "" => Duration::try_days(n),
        "w" => Duration::try_weeks(n),
        _ => None,
    };
    match d {
        Some(d) if n > 0 => Ok(d),
        _ => Err(format!(
            "invalid duration {s:?}: expected a positive number with unit s, m, h, d or w"
        )),
    }
}

/// Formats a duration in the largest whole unit.
pub fn format(d: Duration) -> String {
    let s = d.num_seconds();
    for (unit, len) in [("w", 604_800), ("d", 86_400), ("h", 3_600), ("m", 60)] {
        if s % len == 0 && s >= len {
            return format!("{}{unit}", s / len);
        }
    }
    format!("{s}s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_units_and_round_trips() {
        for s in ["90d", "12h", "2w", "30m", "45s"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
        assert_eq!(parse("7").unwrap(), Duration::days(7));
        assert!(parse("0d").is_err());
        assert!(parse("-1d").is_err());
        assert!(parse("3y").is_err());
    }
}
