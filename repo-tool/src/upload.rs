//! Uploading the published tree to an S3-compatible object store (`publish --to s3://…`):
//! what the bucket already has, the crash-safe upload order, and each object's headers.
//!
//! The tree is uploaded in phases, each finished before the next begins: target files;
//! versioned and content-addressed metadata (everything under `metadata/` but the three
//! names below); `metadata/<N>.root.json` and then `metadata/root.json`; `timestamp.json`
//! last. A device polling the bucket mid-upload therefore sees the previous repository:
//! nothing it can reach from the old `timestamp.json` changes, and the new one is put only
//! once everything it names is in place. One listing of the prefix tells what the bucket
//! holds: an object under an immutable name (a hash-prefixed target of a consistent tree,
//! `<N>.<role>.json`, a content-addressed snapshot-tree node) with the local size is
//! skipped; one under a mutable name is skipped only when its ETag is the MD5 of the local
//! file. An immutable name holding other bytes (another size, or for versioned metadata
//! another MD5) belongs to another repository: nothing is uploaded then. An interrupted
//! upload is finished by running it again, which uploads only what is missing.
//! `Cache-Control` and `Content-Type` follow petrel-server's rules (docs/server.md), so the
//! bucket, or a CDN in front of it, serves what petrel-server would.

use std::collections::HashMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use md5::{Digest, Md5};
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, BackoffConfig, ClientConfigKey, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, RetryConfig,
};
use petrel_server::path::{
    content_type_for, is_content_addressed_name, is_hash_prefixed_name, is_temporary_name,
    is_versioned_metadata_name, FileKind,
};
use petrel_server::static_files::cache_control_for;

use crate::error::{Error, Result};
use crate::workspace::{PublishSettings, SETTINGS_FILE};

/// Uploads running at once.
pub const IN_FLIGHT: usize = 8;
/// Files up to this size are put in one request; larger ones in parts of [`PART_SIZE`].
pub const SINGLE_PUT_MAX: u64 = 16 * 1024 * 1024;
/// The part size of a multipart upload (S3 wants at least 5 MiB for all parts but the last).
pub const PART_SIZE: usize = 8 * 1024 * 1024;
/// Time allowed for one request, a part of a large file included.
const REQUEST_TIMEOUT: &str = "300s";

/// A bucket and a key prefix: `s3://BUCKET/PREFIX`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Destination {
    /// The bucket name.
    pub bucket: String,
    /// The key prefix, without leading or trailing `/` (empty: the bucket's top level).
    pub prefix: String,
}

impl Destination {
    /// Parses `s3://BUCKET` or `s3://BUCKET/PREFIX` (a trailing `/` is ignored).
    pub fn parse(url: &str) -> std::result::Result<Destination, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?} is not an s3://BUCKET/PREFIX URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let prefix = prefix.trim_end_matches('/');
        if bucket.is_empty() {
            return Err(format!("{url:?} names no bucket (s3://BUCKET/PREFIX)"));
        }
        if !bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-._".contains(&b))
        {
            return Err(format!(
                "{url:?}: {bucket:?} is not a bucket name (lowercase letters, digits, '-', '.')"
            ));
        }
        if !prefix.is_empty() {
            ObjectPath::parse(prefix).map_err(|e| format!("{url:?}: bad key prefix: {e}"))?;
        }
        Ok(Destination {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The object key of a tree path (`metadata/root.json` → `PREFIX/metadata/root.json`).
    pub fn key(&self, tree_path: &str) -> String {
        if self.prefix.is_empty() {
            tree_path.to_string()
        } else {
            format!("{}/{tree_path}", self.prefix)
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Where and how to upload: the command line's flags over the `[publish]` settings, over
/// the `AWS_*` environment variables.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UploadOptions {
    /// The bucket and prefix.
    pub to: Destination,
    /// The endpoint URL of a store other than AWS (else `AWS_ENDPOINT`, else AWS's).
    pub endpoint: Option<String>,
    /// The region (else `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`).
    pub region: Option<String>,
    /// Whether a plain-HTTP endpoint is allowed (always for a loopback address).
    pub allow_http: bool,
}

impl UploadOptions {
    /// The upload asked for by the flags or, without `--to`, by the `[publish]` settings;
    /// `None` when neither names a destination.
    pub fn resolve(
        settings: &PublishSettings,
        to: Option<&str>,
        endpoint: Option<&str>,
        region: Option<&str>,
        allow_http: bool,
    ) -> Result<Option<UploadOptions>> {
        let settings_error = |reason: String| Error::Settings {
            path: PathBuf::from(SETTINGS_FILE),
            reason,
        };
        let dest = match (to, &settings.to) {
            (Some(url), _) => {
                Destination::parse(url).map_err(|e| Error::Usage(format!("--to: {e}")))?
            }
            (None, Some(url)) => {
                Destination::parse(url).map_err(|e| settings_error(format!("publish.to: {e}")))?
            }
            (None, None) => {
                if endpoint.is_some() || region.is_some() || allow_http {
                    return Err(Error::Usage(
                        "--endpoint, --region and --allow-http need --to s3://BUCKET/PREFIX \
                         (or `to` in the [publish] section of petrel-repo.toml)"
                            .into(),
                    ));
                }
                return Ok(None);
            }
        };
        let opts = UploadOptions {
            to: dest,
            endpoint: endpoint
                .map(str::to_string)
                .or_else(|| settings.endpoint.clone()),
            region: region
                .map(str::to_string)
                .or_else(|| settings.region.clone()),
            allow_http: allow_http || settings.allow_http,
        };
        if let Some(e) = &opts.endpoint {
            let plain = e.starts_with("http://");
            if !plain && !e.starts_with("https://") {
                return Err(Error::Usage(format!(
                    "endpoint {e:?} is not an http:// or https:// URL"
                )));
            }
            if plain && !opts.allow_http && !is_loopback_url(e) {
                return Err(Error::Usage(format!(
                    "endpoint {e} is plain HTTP: pass --allow-http or set allow_http = true \
                     in [publish] to use it anyway (credentials' signatures and the tree then \
                     travel unencrypted), or use https://"
                )));
            }
        }
        Ok(Some(opts))
    }
}

/// `http://127.x.y.z…`, `http://[::1]…` or `http://localhost…`.
fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost"
        || host == "::1"
        || host
            .parse::<std::net::Ipv4Addr>()
            .is_ok_and(|a| a.is_loopback())
}

/// What an upload did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UploadReport {
    /// The bucket and prefix uploaded to.
    pub to: String,
    /// Objects put.
    pub uploaded: usize,
    /// Files the bucket already had (same name and size, or same content).
    pub skipped: usize,
    /// Bytes put.
    pub bytes: u64,
}

impl fmt::Display for UploadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "uploaded {} object(s), {} bytes, to {}; skipped {} already there",
            self.uploaded, self.bytes, self.to, self.skipped
        )
    }
}

/// The upload phases, in order: each is finished before the next begins.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Phase {
    /// Everything under `targets/`.
    Targets,
    /// Metadata other than the three below: versioned roles, snapshot-tree nodes and
    /// heads, and the unversioned roles of a tree without consistent snapshots.
    Metadata,
    /// `metadata/<N>.root.json`.
    VersionedRoot,
    /// `metadata/root.json`.
    Root,
    /// `metadata/timestamp.json`, last.
    Timestamp,
}

/// One file of the tree to upload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TreeFile {
    /// Path relative to the tree, `/`-separated (`targets/apps/…`).
    pub path: String,
    /// Its size.
    pub size: u64,
    /// Its upload phase.
    pub phase: Phase,
    /// Whether the name never gets other bytes (versioned or content-addressed).
    pub immutable: bool,
    /// Whether the name carries the hash of the bytes (a hash-prefixed target of a
    /// consistent tree, a snapshot-tree node): an object of that name and size holds them.
    pub content_addressed: bool,
    /// The `Cache-Control` it is served with.
    pub cache_control: &'static str,
    /// The `Content-Type` it is served with.
    pub content_type: &'static str,
}

impl TreeFile {
    /// Classifies a tree path (`consistent`: the root's `consistent_snapshot`).
    pub fn classify(path: &str, size: u64, consistent: bool) -> TreeFile {
        let (top, rest) = path.split_once('/').unwrap_or(("", path));
        let name = rest.rsplit('/').next().unwrap_or(rest);
        let in_subdir = rest.contains('/');
        let (kind, phase, node) = if top == "targets" {
            let kind = if is_hash_prefixed_name(name) {
                FileKind::HashedTarget
            } else {
                FileKind::UnhashedTarget
            };
            (kind, Phase::Targets, false)
        } else {
            let versioned = is_versioned_metadata_name(name);
            // A snapshot tree node is named by its hash: served (and cached) as immutable.
            let node = rest == format!("snapshot-tree/{name}") && is_content_addressed_name(name);
            let kind = if versioned || node {
                FileKind::VersionedMetadata
            } else {
                FileKind::UnversionedMetadata
            };
            let phase = match (in_subdir, name) {
                (false, "timestamp.json") => Phase::Timestamp,
                (false, "root.json") => Phase::Root,
                (false, n) if versioned && n.split_once('.').map(|p| p.1) == Some("root.json") => {
                    Phase::VersionedRoot
                }
                _ => Phase::Metadata,
            };
            (kind, phase, node)
        };
        // Without consistent snapshots a target name is reused for new content, whatever
        // it looks like.
        let hashed_target = kind == FileKind::HashedTarget && consistent;
        // A snapshot tree node is named by its hash: it never changes either.
        let content_addressed = node || hashed_target;
        let immutable =
            content_addressed || (kind.is_immutable() && kind != FileKind::HashedTarget);
        TreeFile {
            path: path.to_string(),
            size,
            phase,
            immutable,
            content_addressed,
            cache_control: cache_control_for(kind),
            content_type: content_type_for(name),
        }
    }
}

/// What the bucket holds under a name: size and ETag, from the listing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Existing {
    /// The object's size.
    pub size: u64,
    /// Its ETag as listed (quotes included or not).
    pub e_tag: Option<String>,
}

/// What to do with one file of the tree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Put it.
    Upload,
    /// The bucket already has it.
    Skip,
    /// The bucket holds other bytes under a name that never changes: another
    /// repository's file, which is not overwritten (caches may hold it for a year).
    Conflict(String),
}

/// What to do with `file`, given what the bucket has under its name. `local_md5`
/// computes the local file's MD5 (hex), only asked for when the ETag can decide.
pub fn decide(
    file: &TreeFile,
    existing: Option<&Existing>,
    local_md5: impl FnOnce() -> Result<String>,
) -> Result<Decision> {
    let Some(existing) = existing else {
        return Ok(Decision::Upload);
    };
    // A plain MD5 ETag (one-part upload, no KMS encryption) tells the content; a
    // multipart `…-N` tag does not.
    let md5 = existing
        .e_tag
        .as_deref()
        .map(|t| t.trim_matches('"'))
        .filter(|t| t.len() == 32 && t.bytes().all(|b| b.is_ascii_hexdigit()));
    if file.immutable {
        if existing.size != file.size {
            return Ok(Decision::Conflict(format!(
                "{} bytes instead of {}",
                existing.size, file.size
            )));
        }
        if file.content_addressed {
            return Ok(Decision::Skip);
        }
        return Ok(match md5 {
            Some(tag) if !local_md5()?.eq_ignore_ascii_case(tag) => {
                Decision::Conflict(format!("other bytes of the same size (MD5 {tag})"))
            }
            _ => Decision::Skip,
        });
    }
    if existing.size != file.size {
        return Ok(Decision::Upload);
    }
    Ok(match md5 {
        Some(tag) if local_md5()?.eq_ignore_ascii_case(tag) => Decision::Skip,
        _ => Decision::Upload,
    })
}

/// Every file of the tree's `metadata/` and `targets/`, classified, in upload order
/// (files a publish is still writing, names starting with `.` or ending in `.tmp`, are
/// left out, as petrel-server leaves them out).
pub fn tree_files(tree: &Path) -> Result<Vec<(TreeFile, PathBuf)>> {
    let root_path = tree.join("metadata/root.json");
    if !root_path.exists() {
        return Err(Error::State(format!(
            "{} is missing: nothing has been published yet (run `petrel-repo publish`)",
            root_path.display()
        )));
    }
    let root = crate::fsutil::read(&root_path)?;
    let consistent = serde_json::from_slice::<serde_json::Value>(&root)
        .map_err(|e| Error::State(format!("{}: not JSON: {e}", root_path.display())))?["signed"]
        ["consistent_snapshot"]
        .as_bool()
        .unwrap_or(false);
    let mut files = Vec::new();
    for top in ["targets", "metadata"] {
        let dir = tree.join(top);
        if !dir.exists() {
            continue;
        }
        for entry in walkdir::WalkDir::new(&dir).sort_by_file_name() {
            let entry = entry.map_err(|e| {
                let path = e.path().unwrap_or(&dir).to_path_buf();
                Error::io(path, e.into())
            })?;
            if !entry.file_type().is_file() {
                continue;
            }
            let rel = entry
                .path()
                .strip_prefix(tree)
                .expect("walked below the tree");
            let mut parts = Vec::new();
            for c in rel.components() {
                let s = c.as_os_str().to_str().ok_or_else(|| {
                    Error::State(format!(
                        "{}: the name is not UTF-8 and cannot be an object key",
                        entry.path().display()
                    ))
                })?;
                parts.push(s);
            }
            if parts.iter().any(|p| is_temporary_name(p)) {
                continue;
            }
            let size = entry
                .metadata()
                .map_err(|e| Error::io(entry.path(), e.into()))?
                .len();
            files.push((
                TreeFile::classify(&parts.join("/"), size, consistent),
                entry.path().to_path_buf(),
            ));
        }
    }
    files.sort_by(|a, b| (a.0.phase, &a.0.path).cmp(&(b.0.phase, &b.0.path)));
    Ok(files)
}

/// Uploads the tree at `tree` as [the module documentation](self) describes. On failure
/// the error names the object, the bucket and the likely fix; what was put stays, and the
/// next run puts only what is missing. Runs its own async runtime: not to be called from
/// within one.
pub fn upload_tree(tree: &Path, opts: &UploadOptions) -> Result<UploadReport> {
    let files = tree_files(tree)?;
    let store = build_store(opts)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::State(format!("cannot start the upload runtime: {e}")))?;
    let dest = &opts.to;

    // 1. One listing of the prefix.
    let existing = runtime.block_on(list_existing(&store, dest))?;

    // 2. What to put.
    let mut report = UploadReport {
        to: dest.to_string(),
        ..UploadReport::default()
    };
    let mut todo: Vec<(TreeFile, PathBuf)> = Vec::new();
    let mut conflicts = Vec::new();
    for (file, local) in files {
        match decide(&file, existing.get(&file.path), || md5_hex(&local))? {
            Decision::Upload => todo.push((file, local)),
            Decision::Skip => report.skipped += 1,
            Decision::Conflict(why) => conflicts.push(format!("{} ({why})", dest.key(&file.path))),
        }
    }
    if !conflicts.is_empty() {
        let shown = conflicts.len().min(5);
        return Err(Error::State(format!(
            "bucket {} already holds other bytes than the tree under {} name(s) that never \
             change, e.g. {}; nothing was uploaded\nhint: the prefix seems to hold another \
             repository's files: upload to an empty prefix, or remove what is there first \
             (files under these names are never overwritten: caches keep them for a year)",
            dest.bucket,
            conflicts.len(),
            conflicts[..shown].join(", ")
        )));
    }
    tracing::info!(
        "{} file(s) to upload to {dest}, {} already there",
        todo.len(),
        report.skipped
    );

    // 3. Phase by phase, a bounded number at a time.
    let uploaded = AtomicUsize::new(0);
    let bytes = AtomicU64::new(0);
    let result = runtime.block_on(async {
        let mut rest = todo.as_slice();
        while let Some((first, _)) = rest.first() {
            let phase = first.phase;
            let n = rest.iter().take_while(|(f, _)| f.phase == phase).count();
            let (batch, next) = rest.split_at(n);
            rest = next;
            tracing::debug!("upload phase {phase:?}: {n} object(s)");
            upload_batch(&store, dest, batch, &uploaded, &bytes).await?;
        }
        Ok::<(), Error>(())
    });
    report.uploaded = uploaded.load(Ordering::SeqCst);
    report.bytes = bytes.load(Ordering::SeqCst);
    result.map_err(|e| {
        Error::State(format!(
            "{e}\n{} object(s) were uploaded before the failure; timestamp.json goes up \
             last, so until the upload finishes the bucket serves the previous repository: \
             fix the cause and run `petrel-repo publish` again, which uploads only what is \
             missing",
            report.uploaded
        ))
    })?;
    Ok(report)
}

fn build_store(opts: &UploadOptions) -> Result<AmazonS3> {
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(&opts.to.bucket)
        .with_retry(RetryConfig {
            backoff: BackoffConfig {
                init_backoff: Duration::from_millis(100),
                max_backoff: Duration::from_secs(5),
                base: 2.0,
            },
            max_retries: 5,
            retry_timeout: Duration::from_secs(120),
        })
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::Timeout),
            REQUEST_TIMEOUT,
        );
    if let Some(e) = &opts.endpoint {
        b = b.with_endpoint(e);
        if e.starts_with("http://") {
            b = b.with_allow_http(true);
        }
    }
    if let Some(r) = &opts.region {
        b = b.with_region(r);
    }
    if opts.allow_http {
        b = b.with_allow_http(true);
    }
    b.build().map_err(|e| {
        Error::Usage(format!(
            "cannot use bucket {} (endpoint {}): {e}",
            opts.to.bucket,
            opts.endpoint.as_deref().unwrap_or("AWS's")
        ))
    })
}

async fn list_existing(store: &AmazonS3, dest: &Destination) -> Result<HashMap<String, Existing>> {
    let prefix = if dest.prefix.is_empty() {
        None
    } else {
        Some(ObjectPath::parse(&dest.prefix).expect("checked when parsed"))
    };
    let listed: Vec<object_store::ObjectMeta> = store
        .list(prefix.as_ref())
        .try_collect()
        .await
        .map_err(|e| {
            let what = match dest.prefix.as_str() {
                "" => "listing the objects".to_string(),
                p => format!("listing the objects under {p}/"),
            };
            store_error(dest, &what, &e)
        })?;
    let strip = if dest.prefix.is_empty() {
        String::new()
    } else {
        format!("{}/", dest.prefix)
    };
    Ok(listed
        .into_iter()
        .filter_map(|m| {
            let rel = m.location.as_ref().strip_prefix(&strip)?.to_string();
            Some((
                rel,
                Existing {
                    size: m.size,
                    e_tag: m.e_tag,
                },
            ))
        })
        .collect())
}

async fn upload_batch(
    store: &AmazonS3,
    dest: &Destination,
    batch: &[(TreeFile, PathBuf)],
    uploaded: &AtomicUsize,
    bytes: &AtomicU64,
) -> Result<()> {
    let failed = AtomicBool::new(false);
    let results: Vec<Result<()>> = futures::stream::iter(batch)
        .map(|(file, local)| {
            let failed = &failed;
            async move {
                // After a failure, what has not started yet is left for the next run.
                if failed.load(Ordering::SeqCst) {
                    return Ok(());
                }
                let r = put_file(store, dest, file, local).await;
                match &r {
                    Ok(()) => {
                        uploaded.fetch_add(1, Ordering::SeqCst);
                        bytes.fetch_add(file.size, Ordering::SeqCst);
                    }
                    Err(_) => failed.store(true, Ordering::SeqCst),
                }
                r
            }
        })
        .buffer_unordered(IN_FLIGHT)
        .collect()
        .await;
    results.into_iter().collect()
}

async fn put_file(
    store: &AmazonS3,
    dest: &Destination,
    file: &TreeFile,
    local: &Path,
) -> Result<()> {
    let key = dest.key(&file.path);
    let location = ObjectPath::parse(&key).map_err(|e| {
        Error::State(format!(
            "{}: cannot be named as an object key in bucket {}: {e}",
            local.display(),
            dest.bucket
        ))
    })?;
    let mut attributes = Attributes::new();
    attributes.insert(Attribute::CacheControl, file.cache_control.into());
    attributes.insert(Attribute::ContentType, file.content_type.into());
    if file.size <= SINGLE_PUT_MAX {
        let data = tokio::fs::read(local)
            .await
            .map_err(|e| Error::io(local, e))?;
        let opts = PutOptions {
            attributes,
            ..PutOptions::default()
        };
        store
            .put_opts(&location, PutPayload::from(data), opts)
            .await
            .map_err(|e| store_error(dest, &format!("uploading object {key}"), &e))?;
        return Ok(());
    }
    let opts = PutMultipartOptions {
        attributes,
        ..PutMultipartOptions::default()
    };
    let mut upload = store
        .put_multipart_opts(&location, opts)
        .await
        .map_err(|e| store_error(dest, &format!("starting the upload of object {key}"), &e))?;
    let parts = async {
        use tokio::io::AsyncReadExt;
        let mut f = tokio::fs::File::open(local)
            .await
            .map_err(|e| Error::io(local, e))?;
        let mut left = file.size;
        while left > 0 {
            let n = left.min(PART_SIZE as u64) as usize;
            let mut buf = vec![0u8; n];
            f.read_exact(&mut buf)
                .await
                .map_err(|e| Error::io(local, e))?;
            left -= n as u64;
            upload
                .put_part(PutPayload::from(buf))
                .await
                .map_err(|e| store_error(dest, &format!("uploading a part of object {key}"), &e))?;
        }
        upload.complete().await.map_err(|e| {
            store_error(dest, &format!("completing the upload of object {key}"), &e)
        })?;
        Ok::<(), Error>(())
    }
    .await;
    if parts.is_err() {
        // Parts already stored cost space until aborted (or a lifecycle rule removes them).
        let _ = upload.abort().await;
    }
    parts
}

fn md5_hex(path: &Path) -> Result<String> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Md5::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// An object store error, with the object, the bucket and the likely fix.
fn store_error(dest: &Destination, doing: &str, e: &object_store::Error) -> Error {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        let shown = s.to_string();
        if !text.contains(&shown) {
            text.push_str(": ");
            text.push_str(&shown);
        }
        source = s.source();
    }
    let lower = text.to_ascii_lowercase();
    let bucket = &dest.bucket;
    let hint = if matches!(
        e,
        object_store::Error::Unauthenticated { .. } | object_store::Error::PermissionDenied { .. }
    ) || [
        "accessdenied",
        "invalidaccesskeyid",
        "signaturedoesnotmatch",
        "credential",
        "expiredtoken",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        "check the credentials: AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and \
         AWS_SESSION_TOKEN for temporary ones) must name a key that may list and write the \
         bucket"
            .to_string()
    } else if matches!(e, object_store::Error::NotFound { .. }) || lower.contains("nosuchbucket") {
        format!(
            "bucket {bucket} may not exist: create it, or check the bucket in --to (or \
             [publish] to), the region and the endpoint"
        )
    } else if [
        "connect",
        "dns",
        "timed out",
        "timeout",
        "connection",
        "error sending request",
    ]
    .iter()
    .any(|w| lower.contains(w))
    {
        "cannot reach the store: check the endpoint (--endpoint, [publish] endpoint or \
         AWS_ENDPOINT) and that the store is up and reachable"
            .to_string()
    } else {
        format!(
            "check the endpoint, the credentials (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) \
             and that bucket {bucket} exists"
        )
    };
    Error::State(format!("{doing} in bucket {bucket}: {text}\nhint: {hint}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn parses_destinations() {
        let d = Destination::parse("s3://bucket/a/b/").unwrap();
        assert_eq!(d.bucket, "bucket");
        assert_eq!(d.prefix, "a/b");
        assert_eq!(d.key("metadata/root.json"), "a/b/metadata/root.json");
        assert_eq!(d.to_string(), "s3://bucket/a/b");
        let d = Destination::parse("s3://bucket").unwrap();
        assert_eq!(d.key("metadata/root.json"), "metadata/root.json");
        assert_eq!(d.to_string(), "s3://bucket");
        for bad in [
            "bucket/x",
            "s3:///x",
            "s3://Bucket/x",
            "s3://b/a//c",
            "https://b/x",
        ] {
            assert!(Destination::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn classifies_phases_and_headers() {
        let immutable = "public, max-age=31536000, immutable";
        let f = TreeFile::classify(&format!("targets/apps/a/{H}.app.bin"), 3, true);
        assert_eq!(
            (f.phase, f.immutable, f.cache_control, f.content_type),
            (Phase::Targets, true, immutable, "application/octet-stream")
        );
        // Without consistent snapshots the name may be reused: compared by content.
        let f = TreeFile::classify(&format!("targets/apps/a/{H}.app.bin"), 3, false);
        assert!(!f.immutable);
        let f = TreeFile::classify("targets/apps/a/app.bin", 3, false);
        assert_eq!((f.immutable, f.cache_control), (false, "no-cache"));
        let f = TreeFile::classify("metadata/7.targets.json", 3, true);
        assert_eq!(
            (f.phase, f.immutable, f.cache_control, f.content_type),
            (Phase::Metadata, true, immutable, "application/json")
        );
        let f = TreeFile::classify("metadata/3.root.json", 3, true);
        assert_eq!((f.phase, f.immutable), (Phase::VersionedRoot, true));
        let f = TreeFile::classify("metadata/root.json", 3, true);
        assert_eq!(
            (f.phase, f.immutable, f.cache_control),
            (Phase::Root, false, "no-cache")
        );
        let f = TreeFile::classify("metadata/timestamp.json", 3, true);
        assert_eq!(
            (f.phase, f.immutable, f.cache_control),
            (Phase::Timestamp, false, "no-cache")
        );
        let f = TreeFile::classify("metadata/snapshot.json", 3, false);
        assert_eq!((f.phase, f.immutable), (Phase::Metadata, false));
        // Snapshot-tree nodes are named by their hash; heads are versioned. Both are
        // immutable, as petrel-server serves them.
        let f = TreeFile::classify(&format!("metadata/snapshot-tree/{H}.json"), 3, true);
        assert_eq!(
            (f.phase, f.immutable, f.cache_control),
            (Phase::Metadata, true, "public, max-age=31536000, immutable")
        );
        let f = TreeFile::classify("metadata/snapshot-tree/4.head.json", 3, true);
        assert_eq!(
            (f.phase, f.immutable, f.cache_control),
            (Phase::Metadata, true, immutable)
        );
        // Not the top-level files: a subdirectory's `timestamp.json` is plain metadata.
        let f = TreeFile::classify("metadata/x/timestamp.json", 3, true);
        assert_eq!(f.phase, Phase::Metadata);
    }

    #[test]
    fn decides_what_to_upload() {
        use Decision::*;
        let versioned = TreeFile::classify("metadata/2.targets.json", 10, true);
        let hashed = TreeFile::classify(&format!("targets/a/{H}.app.bin"), 10, true);
        let node = TreeFile::classify(&format!("metadata/snapshot-tree/{H}.json"), 10, true);
        let mutable = TreeFile::classify("metadata/timestamp.json", 10, true);
        let have = |size, tag: Option<&str>| Existing {
            size,
            e_tag: tag.map(str::to_string),
        };
        fn md5() -> Result<String> {
            Ok("0cc175b9c0f1b6a831c399e269772661".to_string())
        }
        fn never() -> Result<String> {
            panic!("no MD5 needed")
        }
        let same = have(10, Some("\"0cc175b9c0f1b6a831c399e269772661\""));
        let other = have(10, Some("\"00000000000000000000000000000000\""));
        let multipart = have(10, Some("\"0cc175b9c0f1b6a831c399e269772661-2\""));
        let decide = |f: &TreeFile, e: Option<&Existing>, m: fn() -> Result<String>| {
            decide(f, e, m).unwrap()
        };
        // Immutable names: skipped by size; a content-addressed one needs no MD5.
        assert_eq!(decide(&versioned, None, never), Upload);
        assert_eq!(decide(&hashed, Some(&other), never), Skip);
        assert_eq!(decide(&node, Some(&multipart), never), Skip);
        assert_eq!(decide(&versioned, Some(&have(10, None)), never), Skip);
        assert_eq!(decide(&versioned, Some(&multipart), never), Skip);
        assert_eq!(decide(&versioned, Some(&same), md5), Skip);
        assert!(matches!(decide(&versioned, Some(&other), md5), Conflict(_)));
        assert!(matches!(
            decide(&hashed, Some(&have(11, None)), never),
            Conflict(_)
        ));
        // Mutable names: by content.
        assert_eq!(decide(&mutable, Some(&same), md5), Skip);
        assert_eq!(decide(&mutable, Some(&other), md5), Upload);
        assert_eq!(decide(&mutable, Some(&multipart), never), Upload);
        assert_eq!(decide(&mutable, Some(&have(10, None)), never), Upload);
        assert_eq!(
            decide(&mutable, Some(&have(9, Some("\"x\""))), never),
            Upload
        );
    }

    #[test]
    fn loopback_endpoints() {
        for url in [
            "http://127.0.0.1:9000",
            "http://127.1.2.3/",
            "http://localhost:9000",
            "http://[::1]:9000",
        ] {
            assert!(is_loopback_url(url), "{url}");
        }
        for url in [
            "http://10.0.0.1:9000",
            "http://example.com",
            "http://[::2]:1",
        ] {
            assert!(!is_loopback_url(url), "{url}");
        }
    }

    #[test]
    fn resolves_flags_over_settings() {
        let settings = PublishSettings {
            to: Some("s3://from-settings/p".into()),
            endpoint: Some("https://store.example".into()),
            region: Some("eu-west-1".into()),
            allow_http: false,
        };
        let o = UploadOptions::resolve(&settings, None, None, None, false)
            .unwrap()
            .unwrap();
        assert_eq!(o.to.bucket, "from-settings");
        assert_eq!(o.endpoint.as_deref(), Some("https://store.example"));
        let o = UploadOptions::resolve(
            &settings,
            Some("s3://flag/q"),
            Some("http://127.0.0.1:9000"),
            None,
            false,
        )
        .unwrap()
        .unwrap();
        assert_eq!((o.to.bucket.as_str(), o.to.prefix.as_str()), ("flag", "q"));
        assert_eq!(o.region.as_deref(), Some("eu-west-1"));
        assert!(UploadOptions::resolve(
            &PublishSettings::default(),
            Some("s3://b"),
            Some("http://10.1.2.3:9000"),
            None,
            false
        )
        .is_err());
        assert!(UploadOptions::resolve(
            &PublishSettings::default(),
            Some("s3://b"),
            Some("http://10.1.2.3:9000"),
            None,
            true
        )
        .is_ok());
        assert_eq!(
            UploadOptions::resolve(&PublishSettings::default(), None, None, None, false).unwrap(),
            None
        );
        assert!(UploadOptions::resolve(
            &PublishSettings::default(),
            None,
            Some("https://x"),
            None,
            false
        )
        .is_err());
    }
}
