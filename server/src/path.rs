//! Request-path validation: turns a raw request target into a safe, classified tree path.
//!
//! Nothing here touches the file system. The rules are deliberately strict because the
//! only clients are TUF clients fetching well-known names:
//!
//! * the path must be absolute (`/…`), contain no backslash, NUL or control byte;
//! * percent-escapes are decoded once, but an escape may not produce `.`, `/`, `\`, `%`,
//!   NUL or a control byte (those can only be spelled literally, and then the segment
//!   rules below apply to them);
//! * segments may not be empty (`//`, trailing `/`), `.` or `..`;
//! * segments that start with `.` or end with `.tmp` are temporary/hidden files that
//!   `petrel-repo publish` is still writing: they are answered as not found;
//! * only `metadata/…` and `targets/…` are part of the tree; anything else is not found.

use std::fmt;

/// Longest request path accepted (bytes, still encoded); well below `PATH_MAX`.
pub const MAX_PATH_BYTES: usize = 2048;
/// Longest path segment that can name a file (`NAME_MAX` on common file systems).
pub const MAX_SEGMENT_BYTES: usize = 255;

/// Which part of the tree a request addresses, which decides its caching policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `metadata/<N>.<role>.json`: a consistent-snapshot (versioned) metadata file; also
    /// `metadata/snapshot-tree/<sha256>.json`, a snapshot tree node named by its hash.
    VersionedMetadata,
    /// Any other metadata file, e.g. `timestamp.json` or the unversioned `root.json`.
    UnversionedMetadata,
    /// `targets/…/<hex hash>.<name>`: a consistent-snapshot target file.
    HashedTarget,
    /// A file under `targets/` whose name carries no hash prefix (a tree published
    /// without consistent snapshots); its content may change under the same name.
    UnhashedTarget,
}

impl FileKind {
    /// True when the bytes behind this name can never change (safe to cache forever).
    pub fn is_immutable(self) -> bool {
        matches!(self, FileKind::VersionedMetadata | FileKind::HashedTarget)
    }
}

/// A validated path relative to the tree root, with its classification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreePath {
    relative: String,
    kind: FileKind,
}

impl TreePath {
    /// The decoded path relative to the tree root, `/`-separated, e.g. `metadata/root.json`.
    pub fn relative(&self) -> &str {
        &self.relative
    }

    /// The caching class of the file.
    pub fn kind(&self) -> FileKind {
        self.kind
    }

    /// The last segment (the file name).
    pub fn file_name(&self) -> &str {
        self.relative.rsplit('/').next().unwrap_or("")
    }

    /// The `Content-Type` to serve this file with.
    pub fn content_type(&self) -> &'static str {
        content_type_for(self.file_name())
    }
}

/// Why a request path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path is malformed or tries to escape the tree (answered 400).
    Invalid(&'static str),
    /// The path is well formed but names nothing servable (answered 404): a hidden or
    /// temporary file, a directory-like path, or something outside `metadata/` and `targets/`.
    NotServed,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathError::Invalid(why) => write!(f, "invalid request path: {why}"),
            PathError::NotServed => f.write_str("not found"),
        }
    }
}

impl std::error::Error for PathError {}

/// The `Content-Type` for a file name: `application/json` for `.json`, otherwise
/// `application/octet-stream`.
pub fn content_type_for(file_name: &str) -> &'static str {
    if file_name.ends_with(".json") {
        "application/json"
    } else {
        "application/octet-stream"
    }
}

/// True for names `petrel-repo publish` (or an editor) uses while writing: a leading `.`
/// or a `.tmp` suffix. Such files are never served.
pub fn is_temporary_name(segment: &str) -> bool {
    segment.starts_with('.') || segment.ends_with(".tmp")
}

/// Validate and classify the path component of a request target (query already removed).
pub fn parse_request_path(raw: &str) -> Result<TreePath, PathError> {
    let Some(rest) = raw.strip_prefix('/') else {
        return Err(PathError::Invalid("path must start with '/'"));
    };
    if rest.is_empty() {
        // `GET /`: there is no index and no listing.
        return Err(PathError::NotServed);
    }
    if rest.len() > MAX_PATH_BYTES {
        return Err(PathError::Invalid("path too long"));
    }
    let decoded = percent_decode_strict(rest)?;

    let mut segments = Vec::new();
    for segment in decoded.split('/') {
        if segment.is_empty() {
            return Err(PathError::Invalid("empty path segment"));
        }
        if segment == "." || segment == ".." {
            return Err(PathError::Invalid("dot segment"));
        }
        if segment.len() > MAX_SEGMENT_BYTES {
            return Err(PathError::NotServed);
        }
        segments.push(segment);
    }
    if segments.iter().any(|s| is_temporary_name(s)) {
        return Err(PathError::NotServed);
    }
    if segments.len() < 2 {
        return Err(PathError::NotServed);
    }
    let file_name = segments[segments.len() - 1];
    let kind = match segments[0] {
        "metadata" => {
            let tree_node = segments.len() == 3
                && segments[1] == "snapshot-tree"
                && is_content_addressed_name(file_name);
            if is_versioned_metadata_name(file_name) || tree_node {
                FileKind::VersionedMetadata
            } else {
                FileKind::UnversionedMetadata
            }
        }
        "targets" => {
            if is_hash_prefixed_name(file_name) {
                FileKind::HashedTarget
            } else {
                FileKind::UnhashedTarget
            }
        }
        _ => return Err(PathError::NotServed),
    };
    Ok(TreePath {
        relative: decoded,
        kind,
    })
}

/// `<digits>.<something>.json`, e.g. `3.root.json`, `12.snapshot.json`, `7.bin-0a.json`.
pub fn is_versioned_metadata_name(name: &str) -> bool {
    let Some((version, rest)) = name.split_once('.') else {
        return false;
    };
    !version.is_empty()
        && version.bytes().all(|b| b.is_ascii_digit())
        && rest.len() > ".json".len()
        && rest.ends_with(".json")
}

/// `<64 lowercase hex digits>.json`: a snapshot tree node (`metadata/snapshot-tree/`),
/// named by the SHA-256 of its bytes, so it never changes.
pub fn is_content_addressed_name(name: &str) -> bool {
    name.strip_suffix(".json").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// `<64 or 128 hex digits>.<name>`: the consistent-snapshot name of a target
/// (sha256 or sha512 prefix).
pub fn is_hash_prefixed_name(name: &str) -> bool {
    let Some((hash, rest)) = name.split_once('.') else {
        return false;
    };
    (hash.len() == 64 || hash.len() == 128)
        && hash.bytes().all(|b| b.is_ascii_hexdigit())
        && !rest.is_empty()
}

/// Decode `%XX` escapes once, refusing anything that could change how the path splits or
/// that no legitimate target name contains.
fn percent_decode_strict(raw: &str) -> Result<String, PathError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        match b {
            b'\\' => return Err(PathError::Invalid("backslash")),
            0 => return Err(PathError::Invalid("NUL byte")),
            b if b.is_ascii_control() => return Err(PathError::Invalid("control byte")),
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                let (Some(hi), Some(lo)) = (hi, lo) else {
                    return Err(PathError::Invalid("malformed percent-escape"));
                };
                let decoded = hi << 4 | lo;
                match decoded {
                    b'.' => return Err(PathError::Invalid("percent-encoded dot")),
                    b'/' => return Err(PathError::Invalid("percent-encoded slash")),
                    b'\\' => return Err(PathError::Invalid("percent-encoded backslash")),
                    b'%' => return Err(PathError::Invalid("percent-encoded percent sign")),
                    d if d.is_ascii_control() => {
                        return Err(PathError::Invalid("percent-encoded control byte"))
                    }
                    d => out.push(d),
                }
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| PathError::Invalid("path is not UTF-8"))
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn classifies_metadata_and_targets() {
        let p = parse_request_path("/metadata/3.root.json").unwrap();
        assert_eq!(p.kind(), FileKind::VersionedMetadata);
        assert_eq!(p.content_type(), "application/json");
        let p = parse_request_path("/metadata/timestamp.json").unwrap();
        assert_eq!(p.kind(), FileKind::UnversionedMetadata);
        // Snapshot tree nodes are named by their hash; heads are versioned.
        let p = parse_request_path(&format!("/metadata/snapshot-tree/{H}.json")).unwrap();
        assert_eq!(p.kind(), FileKind::VersionedMetadata);
        let p = parse_request_path("/metadata/snapshot-tree/7.head.json").unwrap();
        assert_eq!(p.kind(), FileKind::VersionedMetadata);
        let p = parse_request_path(&format!("/metadata/{H}.json")).unwrap();
        assert_eq!(
            p.kind(),
            FileKind::UnversionedMetadata,
            "a role named like a hash"
        );
        let p = parse_request_path("/metadata/root.json").unwrap();
        assert_eq!(p.kind(), FileKind::UnversionedMetadata);
        let p = parse_request_path(&format!("/targets/apps/a/1/{H}.app.bin")).unwrap();
        assert_eq!(p.kind(), FileKind::HashedTarget);
        assert_eq!(p.content_type(), "application/octet-stream");
        assert_eq!(p.file_name(), format!("{H}.app.bin"));
        let p = parse_request_path("/targets/plain.bin").unwrap();
        assert_eq!(p.kind(), FileKind::UnhashedTarget);
    }

    #[test]
    fn decodes_harmless_escapes() {
        let p = parse_request_path("/targets/a%20b.bin").unwrap();
        assert_eq!(p.relative(), "targets/a b.bin");
    }

    #[test]
    fn refuses_traversal_and_encodings() {
        for raw in [
            "/metadata/../x",
            "/metadata/./root.json",
            "/..",
            "/metadata/%2e%2e/x",
            "/metadata/%2E%2E/x",
            "/metadata%2froot.json",
            "/metadata%2Froot.json",
            "/metadata%5croot.json",
            "/metadata\\root.json",
            "/metadata//root.json",
            "/metadata/root.json/",
            "/metadata/root.json%00",
            "/metadata/%252e%252e",
            "/metadata/%zz",
            "/metadata/%2",
            "/metadata/%ff",
            "metadata/root.json",
        ] {
            assert!(
                matches!(parse_request_path(raw), Err(PathError::Invalid(_))),
                "{raw} was not refused as invalid"
            );
        }
    }

    #[test]
    fn hides_temporary_and_foreign_paths() {
        for raw in [
            "/",
            "/metadata",
            "/targets",
            "/metadata/.timestamp.json",
            "/metadata/timestamp.json.tmp",
            "/targets/.staging/x.bin",
            "/keys/root.pem",
            "/%6Beys/root.pem",
        ] {
            assert_eq!(parse_request_path(raw), Err(PathError::NotServed), "{raw}");
        }
    }

    #[test]
    fn versioned_and_hashed_name_rules() {
        assert!(is_versioned_metadata_name("1.root.json"));
        assert!(is_versioned_metadata_name("12.bin-0a.json"));
        assert!(!is_versioned_metadata_name("root.json"));
        assert!(!is_versioned_metadata_name("1..json"));
        assert!(!is_versioned_metadata_name("x1.root.json"));
        assert!(is_hash_prefixed_name(&format!("{H}.x")));
        assert!(!is_hash_prefixed_name(&format!("{H}.")));
        assert!(!is_hash_prefixed_name("abc.x"));
    }
}
