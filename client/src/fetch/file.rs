//! `file://` transport for USB sticks and air-gapped mirrors; refuses path traversal, and reads from an offset by seeking.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::PathBuf;

use super::{decode_path_segment, FetchError, PlainSink, RangeSink, Ranged, Transport};

/// Reads `file://` URLs from the local file system, in bounded chunks.
///
/// Only absolute URLs with an empty host or `localhost` are accepted. Each path segment is
/// percent-decoded, and a segment that decodes to `.`, `..`, or contains `/`, `\` or NUL is
/// refused, so a target or role name can never reach outside the mirror's directory tree.
#[derive(Clone, Debug)]
pub struct FileTransport {
    chunk_size: usize,
}

impl Default for FileTransport {
    fn default() -> Self {
        FileTransport::new()
    }
}

impl FileTransport {
    /// A transport copying in 64 KiB chunks.
    pub fn new() -> Self {
        FileTransport {
            chunk_size: 64 * 1024,
        }
    }
}

/// Maps a `file://` URL to a local path, refusing anything that could traverse directories.
pub fn file_url_to_path(url: &str) -> Result<PathBuf, FetchError> {
    let bad = |reason: &str| FetchError::BadUrl {
        url: url.to_string(),
        reason: reason.to_string(),
    };
    let rest = match url.get(..7) {
        Some(s) if s.eq_ignore_ascii_case("file://") => &url[7..],
        _ => return Err(bad("not a file:// URL")),
    };
    let path = if let Some(p) = rest.strip_prefix("localhost/") {
        p
    } else if let Some(p) = rest.strip_prefix('/') {
        p
    } else {
        return Err(bad(
            "only local file:// URLs (empty host or localhost) are supported",
        ));
    };
    if path.contains(['?', '#']) {
        return Err(bad("query strings and fragments are not supported"));
    }
    let mut out = PathBuf::from("/");
    for seg in path.split('/') {
        if seg.is_empty() {
            continue;
        }
        let decoded = decode_path_segment(seg).ok_or_else(|| bad("malformed %-escape"))?;
        let s = String::from_utf8(decoded).map_err(|_| bad("path is not UTF-8"))?;
        if s == "." || s == ".." {
            return Err(bad("path traversal (`.` or `..` segment)"));
        }
        if s.contains(['/', '\\', '\0']) {
            return Err(bad(
                "path traversal (encoded separator or NUL in a segment)",
            ));
        }
        out.push(s);
    }
    Ok(out)
}

impl Transport for FileTransport {
    fn fetch(&self, url: &str, max_len: u64, sink: &mut dyn Write) -> Result<u64, FetchError> {
        self.fetch_from(url, 0, max_len, &mut PlainSink(sink))
            .map(|r| r.written)
    }

    /// Honours the offset by seeking; an offset at or past the end of the file (other than
    /// 0) is [`FetchError::RangeNotSatisfiable`], as an HTTP server answers 416.
    fn fetch_from(
        &self,
        url: &str,
        offset: u64,
        max_len: u64,
        sink: &mut dyn RangeSink,
    ) -> Result<Ranged, FetchError> {
        let path = file_url_to_path(url)?;
        let io_err = |source: io::Error| FetchError::Io {
            url: url.to_string(),
            source,
        };
        let mut file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(FetchError::NotFound {
                    url: url.to_string(),
                })
            }
            Err(e) => return Err(io_err(e)),
        };
        let meta = file.metadata().map_err(io_err)?;
        if meta.is_dir() {
            return Err(FetchError::NotFound {
                url: url.to_string(),
            });
        }
        let too_large = || FetchError::TooLarge {
            url: url.to_string(),
            max_len,
        };
        if meta.len() > max_len {
            return Err(too_large());
        }
        if offset > 0 {
            if offset >= meta.len() {
                return Err(FetchError::RangeNotSatisfiable {
                    url: url.to_string(),
                    offset,
                    length: Some(meta.len()),
                });
            }
            file.seek(SeekFrom::Start(offset)).map_err(io_err)?;
        }
        sink.start_at(offset).map_err(io_err)?;
        let mut buf = vec![0u8; self.chunk_size];
        let mut written = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(io_err(e)),
            };
            // The file may grow while we read it.
            if offset + written + n as u64 > max_len {
                return Err(too_large());
            }
            sink.write_all(&buf[..n]).map_err(io_err)?;
            written += n as u64;
        }
        Ok(Ranged {
            start: offset,
            written,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traversal_is_refused() {
        for url in [
            "file:///srv/repo/../etc/passwd",
            "file:///srv/repo/%2E%2E/etc/passwd",
            "file:///srv/repo/a%2F..%2F..%2Fetc",
            "file:///srv/repo/./x",
            "file:///srv/repo/x%00y",
            "file://evil.example/x",
            "file:relative/x",
        ] {
            assert!(
                matches!(file_url_to_path(url), Err(FetchError::BadUrl { .. })),
                "{url} must be refused"
            );
        }
    }

    #[test]
    fn plain_and_encoded_paths_map_to_files() {
        assert_eq!(
            file_url_to_path("file:///srv/repo/a%20b.json").unwrap(),
            PathBuf::from("/srv/repo/a b.json")
        );
        assert_eq!(
            file_url_to_path("file://localhost/srv/x").unwrap(),
            PathBuf::from("/srv/x")
        );
    }

    #[test]
    fn reads_bounded_and_reports_missing_and_too_large() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.bin");
        std::fs::write(&p, vec![7u8; 200_000]).unwrap();
        let url = format!("file://{}", p.display());
        let t = FileTransport::new();
        let mut out = Vec::new();
        assert_eq!(t.fetch(&url, 200_000, &mut out).unwrap(), 200_000);
        assert_eq!(out.len(), 200_000);
        let mut out = Vec::new();
        assert!(matches!(
            t.fetch(&url, 199_999, &mut out),
            Err(FetchError::TooLarge { .. })
        ));
        assert!(out.is_empty());
        let missing = format!("file://{}/nope.json", dir.path().display());
        assert!(matches!(
            t.fetch(&missing, 10, &mut Vec::new()),
            Err(FetchError::NotFound { .. })
        ));
    }

    #[test]
    fn fetch_from_seeks_to_the_offset_and_bounds_the_whole_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.bin");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &data).unwrap();
        let url = format!("file://{}", p.display());
        let t = FileTransport::new();
        let mut out = Vec::new();
        let r = t.fetch_from(&url, 150_000, 200_000, &mut out).unwrap();
        assert_eq!(
            r,
            Ranged {
                start: 150_000,
                written: 50_000
            }
        );
        assert_eq!(out, &data[150_000..]);
        assert!(matches!(
            t.fetch_from(&url, 150_000, 199_999, &mut Vec::new()),
            Err(FetchError::TooLarge { .. })
        ));
        assert!(matches!(
            t.fetch_from(&url, 200_000, 300_000, &mut Vec::new()),
            Err(FetchError::RangeNotSatisfiable {
                offset: 200_000,
                length: Some(200_000),
                ..
            })
        ));
    }
}
