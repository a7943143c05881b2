//! Validators (ETag, Last-Modified) and conditional-request evaluation (RFC 9110 §13).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::header::{
    HeaderMap, IF_MATCH, IF_MODIFIED_SINCE, IF_NONE_MATCH, IF_RANGE, IF_UNMODIFIED_SINCE,
};

/// The validators of one open file, computed from its handle's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validators {
    /// Strong entity tag including the quotes: size, mtime (seconds.nanoseconds) and
    /// inode in hex, e.g. `"21b-6920f4d1.1e2a3b4c-98e081"`.
    pub etag: String,
    /// Modification time in whole seconds since the Unix epoch (HTTP dates have
    /// one-second resolution), if the file system reports one.
    pub last_modified_secs: Option<u64>,
}

impl Validators {
    /// Derive validators from a file's length, modification time and inode number.
    ///
    /// The tag is strong: `petrel-repo publish` replaces files by atomic rename, which
    /// always yields a new inode, and an in-place rewrite changes mtime and usually size.
    pub fn new(len: u64, modified: Option<SystemTime>, inode: u64) -> Self {
        let since_epoch = modified.and_then(|m| m.duration_since(UNIX_EPOCH).ok());
        let (secs, nanos) = since_epoch.map_or((0, 0), |d| (d.as_secs(), d.subsec_nanos()));
        Validators {
            etag: format!("\"{len:x}-{secs:x}.{nanos:x}-{inode:x}\""),
            last_modified_secs: since_epoch.map(|d| d.as_secs()),
        }
    }

    /// The `Last-Modified` header value, if the modification time is known.
    pub fn last_modified_header(&self) -> Option<String> {
        self.last_modified_secs
            .map(|s| httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(s)))
    }
}

/// Outcome of evaluating the request preconditions for a GET or HEAD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Precondition {
    /// Serve the representation normally.
    Proceed,
    /// Answer 304 Not Modified.
    NotModified,
    /// Answer 412 Precondition Failed.
    Failed,
}

/// Evaluate `If-Match`, `If-Unmodified-Since`, `If-None-Match` and `If-Modified-Since`
/// in the order RFC 9110 §13.2.2 prescribes (for GET and HEAD).
pub fn evaluate_preconditions(headers: &HeaderMap, v: &Validators) -> Precondition {
    if headers.contains_key(IF_MATCH) {
        let matched = header_strs(headers, IF_MATCH).any(|s| list_matches(s, &v.etag, true));
        if !matched {
            return Precondition::Failed;
        }
    } else if let Some(since) = header_date(headers, IF_UNMODIFIED_SINCE) {
        if let Some(lm) = v.last_modified_secs {
            if lm > since {
                return Precondition::Failed;
            }
        }
    }

    if headers.contains_key(IF_NONE_MATCH) {
        let matched = header_strs(headers, IF_NONE_MATCH).any(|s| list_matches(s, &v.etag, false));
        if matched {
            return Precondition::NotModified;
        }
    } else if let Some(since) = header_date(headers, IF_MODIFIED_SINCE) {
        if let Some(lm) = v.last_modified_secs {
            if lm <= since {
                return Precondition::NotModified;
            }
        }
    }
    Precondition::Proceed
}

/// Whether a `Range` header may be honoured given `If-Range` (RFC 9110 §13.1.5): true
/// when there is no `If-Range`, or when it names the current strong ETag or exact
/// `Last-Modified` date. Otherwise the full representation must be sent.
pub fn if_range_allows_partial(headers: &HeaderMap, v: &Validators) -> bool {
    let Some(value) = headers.get(IF_RANGE) else {
        return true;
    };
    let Ok(value) = value.to_str() else {
        return false;
    };
    let value = value.trim();
    if value.starts_with('"') || value.starts_with("W/") {
        // A weak tag never matches here; a strong one must be identical.
        return value == v.etag;
    }
    match (parse_date(value), v.last_modified_secs) {
        (Some(date), Some(lm)) => date == lm,
        _ => false,
    }
}

fn header_strs<'a>(
    headers: &'a HeaderMap,
    name: http::header::HeaderName,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .get_all(name)
        .into_iter()
        .filter_map(|v| v.to_str().ok())
}

fn header_date(headers: &HeaderMap, name: http::header::HeaderName) -> Option<u64> {
    parse_date(headers.get(name)?.to_str().ok()?)
}

fn parse_date(s: &str) -> Option<u64> {
    let t = httpdate::parse_http_date(s.trim()).ok()?;
    t.duration_since(UNIX_EPOCH).ok().map(|d| d.as_secs())
}

/// Does the entity-tag list `list` (`*` or `tag, W/tag, …`) match `ours` (a strong
/// tag)? `strong` selects strong comparison (weak tags in the list never match).
fn list_matches(list: &str, ours: &str, strong: bool) -> bool {
    let ours_opaque = ours.trim_matches('"');
    let mut rest = list.trim();
    if rest == "*" {
        return true;
    }
    // Bounded: every iteration consumes at least one byte.
    while !rest.is_empty() {
        rest = rest.trim_start_matches(|c: char| c == ',' || c.is_ascii_whitespace());
        if rest.is_empty() {
            break;
        }
        let weak = rest.starts_with("W/");
        if weak {
            rest = &rest[2..];
        }
        let Some(after_quote) = rest.strip_prefix('"') else {
            return false; // malformed list
        };
        let Some(close) = after_quote.find('"') else {
            return false;
        };
        let opaque = &after_quote[..close];
        if opaque == ours_opaque && !(strong && weak) {
            return true;
        }
        rest = &after_quote[close + 1..];
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn v() -> Validators {
        Validators::new(
            10,
            Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            42,
        )
    }

    fn with(name: http::header::HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn etag_lists() {
        let tag = v().etag;
        assert!(list_matches(&tag, &tag, true));
        assert!(list_matches(&format!("\"x\", {tag}"), &tag, true));
        assert!(list_matches(&format!("W/{tag}"), &tag, false));
        assert!(!list_matches(&format!("W/{tag}"), &tag, true));
        assert!(list_matches("*", &tag, true));
        assert!(!list_matches("\"other\"", &tag, false));
        assert!(!list_matches("garbage", &tag, false));
    }

    #[test]
    fn precondition_order() {
        let val = v();
        assert_eq!(
            evaluate_preconditions(&with(IF_NONE_MATCH, &val.etag), &val),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate_preconditions(&with(IF_MATCH, "\"nope\""), &val),
            Precondition::Failed
        );
        let lm = val.last_modified_header().unwrap();
        assert_eq!(
            evaluate_preconditions(&with(IF_MODIFIED_SINCE, &lm), &val),
            Precondition::NotModified
        );
        assert_eq!(
            evaluate_preconditions(
                &with(IF_MODIFIED_SINCE, "Thu, 01 Jan 2015 00:00:00 GMT"),
                &val
            ),
            Precondition::Proceed
        );
        assert_eq!(
            evaluate_preconditions(
                &with(IF_UNMODIFIED_SINCE, "Thu, 01 Jan 2015 00:00:00 GMT"),
                &val
            ),
            Precondition::Failed
        );
    }

    #[test]
    fn if_range() {
        let val = v();
        assert!(if_range_allows_partial(&HeaderMap::new(), &val));
        assert!(if_range_allows_partial(&with(IF_RANGE, &val.etag), &val));
        assert!(!if_range_allows_partial(&with(IF_RANGE, "\"old\""), &val));
        let weak = format!("W/{}", val.etag);
        assert!(!if_range_allows_partial(&with(IF_RANGE, &weak), &val));
        let lm = val.last_modified_header().unwrap();
        assert!(if_range_allows_partial(&with(IF_RANGE, &lm), &val));
    }
}
