//! `Range: bytes=…` parsing and resolution against a file length (RFC 9110 §14).
//!
//! Only a single range is honoured. A header listing several ranges is ignored and the
//! whole file is served with 200 (RFC 9110 allows a server to ignore `Range`); so is a
//! syntactically invalid header or a unit other than `bytes`.

/// What to do with a request's `Range` header for a file of a given length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeDecision {
    /// Serve the whole file with 200 (no header, invalid header, or several ranges).
    Full,
    /// Serve the inclusive byte range `start..=end` with 206.
    Partial {
        /// First byte offset (inclusive).
        start: u64,
        /// Last byte offset (inclusive).
        end: u64,
    },
    /// Answer 416 with `Content-Range: bytes */LEN`.
    Unsatisfiable,
}

/// Resolve a `Range` header value against a representation of `len` bytes.
pub fn resolve_range(header: Option<&str>, len: u64) -> RangeDecision {
    let Some(value) = header else {
        return RangeDecision::Full;
    };
    let value = value.trim();
    let Some(spec) = strip_prefix_ignore_case(value, "bytes=") else {
        return RangeDecision::Full;
    };
    if spec.contains(',') {
        // Several ranges: documented choice is to ignore the header.
        return RangeDecision::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeDecision::Full;
    };
    let (first, last) = (first.trim(), last.trim());
    if first.is_empty() {
        // Suffix range `-n`: the last n bytes.
        let Some(n) = parse_u64(last) else {
            return RangeDecision::Full;
        };
        if n == 0 || len == 0 {
            return RangeDecision::Unsatisfiable;
        }
        let n = n.min(len);
        return RangeDecision::Partial {
            start: len - n,
            end: len - 1,
        };
    }
    let Some(start) = parse_u64(first) else {
        return RangeDecision::Full;
    };
    let end = if last.is_empty() {
        None
    } else {
        match parse_u64(last) {
            Some(e) if e >= start => Some(e),
            // `a-b` with b < a, or garbage: invalid, so ignored.
            _ => return RangeDecision::Full,
        }
    };
    if start >= len {
        return RangeDecision::Unsatisfiable;
    }
    let end = end.map_or(len - 1, |e| e.min(len - 1));
    RangeDecision::Partial { start, end }
}

fn parse_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn strip_prefix_ignore_case<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

#[cfg(test)]
mod tests {
    use super::RangeDecision::*;
    use super::*;

    #[test]
    fn single_ranges() {
        assert_eq!(resolve_range(None, 10), Full);
        assert_eq!(
            resolve_range(Some("bytes=0-4"), 10),
            Partial { start: 0, end: 4 }
        );
        assert_eq!(
            resolve_range(Some("bytes=5-"), 10),
            Partial { start: 5, end: 9 }
        );
        assert_eq!(
            resolve_range(Some("bytes=-3"), 10),
            Partial { start: 7, end: 9 }
        );
        assert_eq!(
            resolve_range(Some("bytes=-30"), 10),
            Partial { start: 0, end: 9 }
        );
        assert_eq!(
            resolve_range(Some("bytes=8-100"), 10),
            Partial { start: 8, end: 9 }
        );
        assert_eq!(
            resolve_range(Some("Bytes=1-1"), 10),
            Partial { start: 1, end: 1 }
        );
    }

    #[test]
    fn unsatisfiable_and_ignored() {
        assert_eq!(resolve_range(Some("bytes=10-"), 10), Unsatisfiable);
        assert_eq!(resolve_range(Some("bytes=10-20"), 10), Unsatisfiable);
        assert_eq!(resolve_range(Some("bytes=-0"), 10), Unsatisfiable);
        assert_eq!(resolve_range(Some("bytes=0-"), 0), Unsatisfiable);
        assert_eq!(resolve_range(Some("bytes=-5"), 0), Unsatisfiable);
        assert_eq!(resolve_range(Some("bytes=0-1,3-4"), 10), Full);
        assert_eq!(resolve_range(Some("bytes=5-2"), 10), Full);
        assert_eq!(resolve_range(Some("items=0-1"), 10), Full);
        assert_eq!(resolve_range(Some("bytes=x-1"), 10), Full);
        assert_eq!(resolve_range(Some("bytes=+1-2"), 10), Full);
        assert_eq!(resolve_range(Some("bytes=-"), 10), Full);
        assert_eq!(resolve_range(Some("bytes=99999999999999999999-"), 10), Full);
    }
}
