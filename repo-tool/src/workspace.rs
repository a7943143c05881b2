//! The repository workspace on disk: settings, private keys, staged and current metadata,
//! the content store, and the path of the published tree.
//!
//! ```text
//! <repo>/petrel-repo.toml   settings (expiries, consistent snapshots, tree location)
//! <repo>/keys/<keyid>.pem   private keys, PKCS#8 PEM (move root keys offline!)
//! <repo>/keys/<keyid>.pkcs11  the pkcs11: URI of a key kept in an HSM or token
//! <repo>/metadata/          the current signed metadata of every role (last publish)
//! <repo>/staged/            roles changed since, waiting to be signed and published
//! <repo>/content/<sha256>   a copy of every target file, hashed while it was copied
//! <repo>/tree/              the static tree that clients read (configurable)
//! ```

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use chrono::{DateTime, Duration, Utc};
use petrel_client::tuf::keys::{KeySource, PrivateKey};
use petrel_client::tuf::schema::{encode_role_name, KeyId, Metadata, RawSigned, Signed};
use serde::{Deserialize, Serialize};

use crate::duration;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::keyfile::KeyRef;
use crate::pkcs11::{self, Pkcs11Key};

/// Name of the settings file at the root of a workspace.
pub const SETTINGS_FILE: &str = "petrel-repo.toml";

/// Workspace settings, stored in `petrel-repo.toml`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// How long each role's metadata stays valid after it is signed.
    #[serde(default)]
    pub expiry: ExpirySettings,
    /// Whether clients fetch versioned metadata and hash-prefixed targets.
    #[serde(default = "yes")]
    pub consistent_snapshot: bool,
    /// Where the static tree is written, relative to the workspace.
    #[serde(default = "default_tree")]
    pub tree: PathBuf,
    /// Hex digits of assignment bin names (`assign/<bin>.json`): 1 to 6, default 2 (256
    /// bins). Chosen once per repository; devices must be configured with the same value.
    #[serde(
        default = "default_assign_bin_digits",
        skip_serializing_if = "is_default_assign_bin_digits"
    )]
    pub assign_bin_digits: usize,
    /// How manifests are laid out for large fleets (docs/scale.md).
    #[serde(default, skip_serializing_if = "Layout::is_default")]
    pub layout: Layout,
    /// Where `publish` uploads the tree after writing it (an S3-compatible object store).
    #[serde(default, skip_serializing_if = "PublishSettings::is_default")]
    pub publish: PublishSettings,
    /// Deltas `publish` builds by itself (docs/repository.md, Automatic deltas).
    #[serde(default, skip_serializing_if = "DeltaSettings::is_default")]
    pub deltas: DeltaSettings,
}

/// `[publish]`: the object store `petrel-repo publish` uploads the tree to (docs/cli.md).
/// Credentials come from the usual `AWS_*` environment variables, never from this file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishSettings {
    /// `s3://BUCKET/PREFIX`; unset: publish writes the local tree only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<String>,
    /// The store's endpoint URL for S3-compatible stores other than AWS, e.g.
    /// `http://127.0.0.1:9000`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// The bucket's region (default: `AWS_REGION`/`AWS_DEFAULT_REGION`, else `us-east-1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Allow a plain-HTTP endpoint that is not on the loopback interface.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_http: bool,
}

impl PublishSettings {
    fn is_default(&self) -> bool {
        *self == PublishSettings::default()
    }
}

/// `[deltas]`: the deltas `petrel-repo publish` builds by itself, from earlier versions of
/// each artifact a group manifest names to that artifact (docs/repository.md, Automatic
/// deltas).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeltaSettings {
    /// How many earlier versions of an artifact get a delta to each version a group names
    /// (0, the default: no automatic deltas).
    #[serde(default, deserialize_with = "deserialize_version_count")]
    pub previous: usize,
    /// Artifacts smaller than this many bytes get no delta (default 65536).
    #[serde(
        default = "default_delta_min_size",
        deserialize_with = "deserialize_byte_count"
    )]
    pub min_size: u64,
    /// A delta larger than this share of its artifact is not published (more than 0, at
    /// most 1; default 0.5).
    #[serde(default = "default_delta_max_ratio")]
    pub max_ratio: f64,
    /// The role to list the deltas in (default: `deltas` if the repository has that role,
    /// else `targets`, as for `petrel-repo delta`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

impl Default for DeltaSettings {
    fn default() -> Self {
        DeltaSettings {
            previous: 0,
            min_size: default_delta_min_size(),
            max_ratio: default_delta_max_ratio(),
            role: None,
        }
    }
}

impl DeltaSettings {
    fn is_default(&self) -> bool {
        *self == DeltaSettings::default()
    }

    /// Whether `publish` builds deltas at all.
    pub fn enabled(&self) -> bool {
        self.previous > 0
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if !(self.max_ratio > 0.0 && self.max_ratio <= 1.0) {
            return Err(format!(
                "deltas.max_ratio: {} is not a share of the artifact: give a number more than 0 and at most 1, e.g. max_ratio = 0.5",
                self.max_ratio
            ));
        }
        if let Some(role) = &self.role {
            if role.is_empty() || ["root", "snapshot", "timestamp"].contains(&role.as_str()) {
                return Err(format!(
                    "deltas.role: {role:?} is not a targets role: name `targets` or a delegated role, e.g. role = \"deltas\""
                ));
            }
        }
        Ok(())
    }
}

fn default_delta_min_size() -> u64 {
    64 * 1024
}

fn default_delta_max_ratio() -> f64 {
    0.5
}

/// `deltas.previous`: a whole number of versions (see [`deserialize_count`]).
fn deserialize_version_count<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<usize, D::Error> {
    let n = deserialize_count(d, "deltas.previous", "versions", "previous = 2")?;
    usize::try_from(n)
        .map_err(|_| serde::de::Error::custom(format!("deltas.previous: {n} versions is too many")))
}

/// `deltas.min_size`: a whole number of bytes (see [`deserialize_count`]).
fn deserialize_byte_count<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> std::result::Result<u64, D::Error> {
    deserialize_count(d, "deltas.min_size", "bytes", "min_size = 65536")
}

/// A whole number of `unit` for the setting `key`; anything else (a negative number, a
/// fraction, a string such as `"64KiB"`) is refused with the key, the value and `example`.
fn deserialize_count<'de, D: serde::Deserializer<'de>>(
    d: D,
    key: &'static str,
    unit: &'static str,
    example: &'static str,
) -> std::result::Result<u64, D::Error> {
    struct Count {
        key: &'static str,
        unit: &'static str,
        example: &'static str,
    }
    impl Count {
        fn refuse<E: serde::de::Error>(&self, shown: String) -> E {
            E::custom(format!(
                "{}: {shown} is not a number of {}: give a whole number, 0 or more, without a unit or quotes, e.g. {}",
                self.key, self.unit, self.example
            ))
        }
    }
    impl serde::de::Visitor<'_> for Count {
        type Value = u64;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a whole number of {}", self.unit)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> std::result::Result<u64, E> {
            Ok(v)
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> std::result::Result<u64, E> {
            u64::try_from(v).map_err(|_| self.refuse(v.to_string()))
        }
        fn visit_f64<E: serde::de::Error>(self, v: f64) -> std::result::Result<u64, E> {
            Err(self.refuse(v.to_string()))
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> std::result::Result<u64, E> {
            Err(self.refuse(format!("{v:?}")))
        }
        fn visit_bool<E: serde::de::Error>(self, v: bool) -> std::result::Result<u64, E> {
            Err(self.refuse(v.to_string()))
        }
    }
    d.deserialize_any(Count { key, unit, example })
}

/// `[layout]`: hashed bins under the conventional manifest roles, and the campaign index.
/// Bins are chosen when a conventional role is first created; changing them later does not
/// re-bin an existing role.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Layout {
    /// Publish the snapshot tree beside `snapshot.json` and pin it in the timestamp
    /// (default true), so devices read a few small nodes per role they use instead of the
    /// whole snapshot. Off: a standard TUF repository and nothing more.
    #[serde(default = "yes")]
    pub snapshot_tree: bool,
    /// Succinct hashed bins (TAP 15) under `groups` (a power of two; 0: one role).
    #[serde(default)]
    pub groups_bins: u64,
    /// Succinct hashed bins under `campaigns`.
    #[serde(default)]
    pub campaigns_bins: u64,
    /// Succinct hashed bins under `assign`.
    #[serde(default)]
    pub assign_bins: u64,
    /// Succinct hashed bins under `index`.
    #[serde(default)]
    pub index_bins: u64,
    /// Publish the campaign index (`index/fleet.json`, `index/groups/<group>.json`), so a
    /// device reads only the campaigns that can concern its group.
    #[serde(default)]
    pub campaign_index: bool,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            snapshot_tree: true,
            groups_bins: 0,
            campaigns_bins: 0,
            assign_bins: 0,
            index_bins: 0,
            campaign_index: false,
        }
    }
}

impl Layout {
    fn is_default(&self) -> bool {
        *self == Layout::default()
    }

    /// The bins configured under a conventional role (0: none).
    pub fn bins_for(&self, role: &str) -> u64 {
        match role {
            "groups" => self.groups_bins,
            "campaigns" => self.campaigns_bins,
            "assign" => self.assign_bins,
            "index" => self.index_bins,
            _ => 0,
        }
    }
}

fn default_assign_bin_digits() -> usize {
    petrel_client::manifest::DEFAULT_BIN_DIGITS
}

fn is_default_assign_bin_digits(d: &usize) -> bool {
    *d == default_assign_bin_digits()
}

fn yes() -> bool {
    true
}

fn default_tree() -> PathBuf {
    PathBuf::from("tree")
}

/// Expiry durations per role, e.g. `"365d"`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpirySettings {
    /// Root metadata.
    pub root: String,
    /// Top-level targets metadata.
    pub targets: String,
    /// Snapshot metadata.
    pub snapshot: String,
    /// Timestamp metadata.
    pub timestamp: String,
    /// Every delegated targets role.
    pub delegated: String,
}

impl Default for ExpirySettings {
    fn default() -> Self {
        ExpirySettings {
            root: "365d".into(),
            targets: "90d".into(),
            snapshot: "7d".into(),
            timestamp: "1d".into(),
            delegated: "90d".into(),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            expiry: ExpirySettings::default(),
            consistent_snapshot: true,
            tree: default_tree(),
            assign_bin_digits: default_assign_bin_digits(),
            layout: Layout::default(),
            publish: PublishSettings::default(),
            deltas: DeltaSettings::default(),
        }
    }
}

impl Settings {
    /// The expiry duration for `role`.
    pub fn expiry_for(&self, role: &str) -> Result<Duration> {
        let s = match role {
            "root" => &self.expiry.root,
            "targets" => &self.expiry.targets,
            "snapshot" => &self.expiry.snapshot,
            "timestamp" => &self.expiry.timestamp,
            _ => &self.expiry.delegated,
        };
        duration::parse(s).map_err(|e| Error::Settings {
            path: PathBuf::from(SETTINGS_FILE),
            reason: format!("expiry.{role}: {e}"),
        })
    }

    fn validate(&self, path: &Path) -> Result<()> {
        if !(1..=petrel_client::manifest::MAX_BIN_DIGITS).contains(&self.assign_bin_digits) {
            return Err(Error::Settings {
                path: path.to_path_buf(),
                reason: format!(
                    "assign_bin_digits: {} is not between 1 and {}",
                    self.assign_bin_digits,
                    petrel_client::manifest::MAX_BIN_DIGITS
                ),
            });
        }
        for (name, bins) in [
            ("groups_bins", self.layout.groups_bins),
            ("campaigns_bins", self.layout.campaigns_bins),
            ("assign_bins", self.layout.assign_bins),
            ("index_bins", self.layout.index_bins),
        ] {
            if bins != 0 && (!(2..=65536).contains(&bins) || !bins.is_power_of_two()) {
                return Err(Error::Settings {
                    path: path.to_path_buf(),
                    reason: format!(
                        "layout.{name}: {bins} is not 0 or a power of two from 2 to 65536"
                    ),
                });
            }
        }
        self.deltas.validate().map_err(|reason| Error::Settings {
            path: path.to_path_buf(),
            reason,
        })?;
        for role in ["root", "targets", "snapshot", "timestamp", "delegated"] {
            self.expiry_for(role).map_err(|e| Error::Settings {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        }
        Ok(())
    }
}

/// An open repository workspace. Holds an exclusive lock for its lifetime, so two
/// commands never edit the same workspace at once.
pub struct Workspace {
    dir: PathBuf,
    /// The workspace settings.
    pub settings: Settings,
    keys_dir: PathBuf,
    extra_keys: Vec<KeyRef>,
    now: DateTime<Utc>,
    _lock: fs::File,
}

impl std::fmt::Debug for Workspace {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workspace").field("dir", &self.dir).finish()
    }
}

impl Workspace {
    /// Creates a new, empty workspace in `dir` (which must not already hold one).
    pub fn create(dir: &Path, settings: Settings) -> Result<Workspace> {
        let settings_path = dir.join(SETTINGS_FILE);
        if settings_path.exists() {
            return Err(Error::State(format!(
                "{} already holds a repository workspace ({} exists)",
                dir.display(),
                settings_path.display()
            )));
        }
        settings.validate(&settings_path)?;
        for sub in ["keys", "metadata", "staged", "content"] {
            let p = dir.join(sub);
            fs::create_dir_all(&p).map_err(|e| Error::io(&p, e))?;
        }
        let text = toml::to_string_pretty(&settings).expect("settings serialize");
        fsutil::write_atomic(&settings_path, text.as_bytes())?;
        Workspace::open(dir)
    }

    /// Opens an existing workspace.
    pub fn open(dir: &Path) -> Result<Workspace> {
        let settings_path = dir.join(SETTINGS_FILE);
        let text = fs::read_to_string(&settings_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::State(format!(
                    "{} is not a repository workspace (no {SETTINGS_FILE}); create one with `petrel-repo init`",
                    dir.display()
                ))
            } else {
                Error::io(&settings_path, e)
            }
        })?;
        let settings: Settings = toml::from_str(&text).map_err(|e| Error::Settings {
            path: settings_path.clone(),
            reason: e.to_string(),
        })?;
        settings.validate(&settings_path)?;
        let lock_path = dir.join(".lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| Error::io(&lock_path, e))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(Error::State(format!(
                    "another petrel-repo command is working on {}; try again when it finishes",
                    dir.display()
                )))
            }
            Err(fs::TryLockError::Error(e)) => return Err(Error::io(&lock_path, e)),
        }
        Ok(Workspace {
            keys_dir: dir.join("keys"),
            dir: dir.to_path_buf(),
            settings,
            extra_keys: Vec::new(),
            now: Utc::now(),
            _lock: lock,
        })
    }

    /// The workspace directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The time this command treats as "now" (fixed when the workspace was opened).
    pub fn now(&self) -> DateTime<Utc> {
        self.now
    }

    /// Overrides "now" (deterministic fixtures, tests).
    pub fn set_now(&mut self, now: DateTime<Utc>) {
        self.now = now;
    }

    /// Uses another directory for private keys.
    pub fn set_keys_dir(&mut self, dir: PathBuf) {
        self.keys_dir = dir;
    }

    /// Adds individual private key files to sign with (e.g. an offline root key).
    pub fn add_key_files(&mut self, files: Vec<PathBuf>) {
        self.extra_keys.extend(files.into_iter().map(KeyRef::File));
    }

    /// Adds keys to sign with: private key files or `pkcs11:` URIs of token keys.
    pub fn add_key_refs(&mut self, keys: Vec<KeyRef>) {
        self.extra_keys.extend(keys);
    }

    /// Where the static tree is written.
    pub fn tree_dir(&self) -> PathBuf {
        self.dir.join(&self.settings.tree)
    }

    /// Directory of current (last published) metadata.
    pub fn metadata_dir(&self) -> PathBuf {
        self.dir.join("metadata")
    }

    /// Directory of staged metadata.
    pub fn staged_dir(&self) -> PathBuf {
        self.dir.join("staged")
    }

    /// Directory of the content store.
    pub fn content_dir(&self) -> PathBuf {
        self.dir.join("content")
    }

    /// The private keys directory.
    pub fn keys_dir(&self) -> &Path {
        &self.keys_dir
    }

    fn role_file(dir: &Path, role: &str) -> PathBuf {
        dir.join(format!("{}.json", encode_role_name(role)))
    }

    /// Path of a role's staged file.
    pub fn staged_path(&self, role: &str) -> PathBuf {
        Self::role_file(&self.staged_dir(), role)
    }

    /// Path of a role's current (published) file.
    pub fn current_path(&self, role: &str) -> PathBuf {
        Self::role_file(&self.metadata_dir(), role)
    }

    fn read_role<T: Metadata>(path: &Path) -> Result<Option<Signed<T>>> {
        match fs::read(path) {
            Ok(bytes) => parse_role(path, &bytes).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(path, e)),
        }
    }

    /// The last published metadata of a role, if it was ever published.
    pub fn published<T: Metadata>(&self, role: &str) -> Result<Option<Signed<T>>> {
        Self::read_role(&self.current_path(role))
    }

    /// The staged metadata of a role, if it has unpublished changes.
    pub fn staged<T: Metadata>(&self, role: &str) -> Result<Option<Signed<T>>> {
        Self::read_role(&self.staged_path(role))
    }

    /// The newest metadata of a role: staged if it has changes, else published.
    pub fn latest<T: Metadata>(&self, role: &str) -> Result<Option<Signed<T>>> {
        match self.staged(role)? {
            Some(s) => Ok(Some(s)),
            None => self.published(role),
        }
    }

    /// Writes a role's staged metadata.
    pub fn stage<T: Metadata>(&self, role: &str, signed: &Signed<T>) -> Result<()> {
        let path = self.staged_path(role);
        let bytes = signed.to_file_bytes().map_err(|source| Error::Schema {
            path: path.clone(),
            source,
        })?;
        fsutil::write_atomic(&path, &bytes)
    }

    /// Names of all roles with staged changes.
    pub fn staged_roles(&self) -> Result<Vec<String>> {
        list_roles(&self.staged_dir())
    }

    /// Names of all published roles.
    pub fn published_roles(&self) -> Result<Vec<String>> {
        list_roles(&self.metadata_dir())
    }

    /// Saves a generated private key as `keys/<keyid>.pem` (mode 0600).
    pub fn save_private_key(&self, key: &PrivateKey, pem: &str) -> Result<PathBuf> {
        let path = self.keys_dir.join(format!("{}.pem", key.key_id()));
        fsutil::write_atomic_mode(&path, pem.as_bytes(), fsutil::PRIVATE_MODE)?;
        Ok(path)
    }

    /// Records where a token key lives as `keys/<keyid>.pkcs11` (its URI), so signing
    /// finds it like a key file. The URI names the PIN's source, never holds the PIN
    /// unless it was given with `pin-value`.
    pub fn save_key_reference(&self, key: &Pkcs11Key) -> Result<PathBuf> {
        let path = self
            .keys_dir
            .join(format!("{}.{}", key.key_id(), pkcs11::REFERENCE_EXT));
        let text = format!(
            "# petrel-repo: key {} on PKCS#11 token {:?}\n{}\n",
            key.key_id(),
            key.token_label(),
            key.uri().as_given()
        );
        fsutil::write_atomic_mode(&path, text.as_bytes(), fsutil::PRIVATE_MODE)?;
        Ok(path)
    }

    /// Loads every available private key whose id is in `keyids`: from the keys directory
    /// (`<keyid>.pem`, or `<keyid>.pkcs11` for a token key) and from the extra keys given
    /// on the command line.
    pub fn signing_keys(&self, keyids: &[KeyId]) -> Result<Vec<Box<dyn KeySource>>> {
        let mut out: BTreeMap<KeyId, Box<dyn KeySource>> = BTreeMap::new();
        for id in keyids {
            let path = self.keys_dir.join(format!("{id}.pem"));
            if path.exists() {
                let k = load_private_key(&path)?;
                if k.key_id() != id {
                    return Err(Error::Key {
                        path,
                        source: petrel_client::tuf::keys::KeyError::Private(format!(
                            "file is named for key {id} but holds key {}",
                            k.key_id()
                        )),
                    });
                }
                out.insert(id.clone(), Box::new(k));
                continue;
            }
            let path = self
                .keys_dir
                .join(format!("{id}.{}", pkcs11::REFERENCE_EXT));
            if path.exists() {
                let uri = pkcs11::read_reference(&path)?;
                let k = pkcs11::open(&uri)?;
                if k.key_id() != id {
                    return Err(Error::Usage(format!(
                        "{}: is named for key {id} but {uri} is key {}; the token holds another \
                         key under that name now",
                        path.display(),
                        k.key_id()
                    )));
                }
                out.insert(id.clone(), Box::new(k));
            }
        }
        for key in &self.extra_keys {
            let k = key.signer()?;
            if keyids.contains(k.key_id()) {
                out.insert(k.key_id().clone(), k);
            }
        }
        Ok(out.into_values().collect())
    }
}

/// Parses a workspace metadata file (`path` is for errors) with the checks of
/// [`RawSigned::typed`]: the `_type` must match and [`Metadata::validate`] must pass.
///
/// Workspace files are read straight into the typed structs, without building a JSON
/// tree first (much less work for a role with 100 000 targets). Whatever that
/// does not accept goes through `RawSigned` as before, so errors are unchanged.
pub fn parse_role<T: Metadata>(path: &Path, bytes: &[u8]) -> Result<Signed<T>> {
    if let Ok(s) = serde_json::from_slice::<Signed<T>>(bytes) {
        if s.signed.type_field() == T::TYPE && s.signed.validate().is_ok() {
            return Ok(s);
        }
    }
    RawSigned::from_bytes(bytes)
        .and_then(RawSigned::typed::<T>)
        .map_err(|source| Error::Schema {
            path: path.to_path_buf(),
            source,
        })
}

/// Loads a PKCS#8 PEM private key, naming the file in errors.
pub fn load_private_key(path: &Path) -> Result<PrivateKey> {
    let text = read_key_text(path)?;
    PrivateKey::from_pem(&text).map_err(|source| Error::Key {
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a key file as text. A file that is not text (a DER key, a key store, a file
/// given by mistake) gets an error naming it and the key formats that are read.
pub fn read_key_text(path: &Path) -> Result<String> {
    let bytes = fs::read(path).map_err(|e| Error::io(path, e))?;
    String::from_utf8(bytes).map_err(|e| {
        Error::Usage(format!(
            "{}: not a key file petrel-repo reads: it is binary ({} bytes, not text at byte {}), and keys are PEM (PKCS#8 `PRIVATE KEY` or `PUBLIC KEY`) or TUF key JSON. A DER key converts with `openssl pkey -inform DER -in {} -out key.pem`",
            path.display(),
            e.as_bytes().len(),
            e.utf8_error().valid_up_to(),
            path.display()
        ))
    })
}

fn list_roles(dir: &Path) -> Result<Vec<String>> {
    let mut out = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(Error::io(dir, e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(stem) = name.strip_suffix(".json") {
            if !stem.starts_with('.') {
                out.push(decode_role_name(stem));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reverses [`encode_role_name`].
pub fn decode_role_name(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_names_round_trip_through_file_names() {
        for name in ["targets", "bins-0a", "../evil", "a/b", ".x", "ünï"] {
            assert_eq!(decode_role_name(&encode_role_name(name)), name);
        }
    }

    /// The direct parse of workspace files gives what the parse through a JSON tree gave,
    /// and the same errors (wrong `_type`, invalid metadata).
    #[test]
    fn roles_parse_as_through_raw_json_with_the_same_errors() {
        use petrel_client::tuf::schema::{Root, Snapshot, Targets};
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/good/repo/metadata");
        let old = |bytes: &[u8]| RawSigned::from_bytes(bytes).and_then(RawSigned::typed::<Targets>);
        let targets = fs::read(dir.join("1.targets.json")).unwrap();
        let fast = parse_role::<Targets>(&dir, &targets).unwrap();
        let slow = old(&targets).unwrap();
        assert_eq!(fast.signed, slow.signed);
        assert_eq!(fast.signatures.len(), slow.signatures.len());
        assert_eq!(
            fast.canonical_signed().unwrap(),
            slow.canonical_signed().unwrap()
        );
        let wrong = parse_role::<Snapshot>(&dir, &targets)
            .unwrap_err()
            .to_string();
        let want = RawSigned::from_bytes(&targets)
            .and_then(RawSigned::typed::<Snapshot>)
            .unwrap_err()
            .to_string();
        assert!(wrong.contains(&want), "{wrong} / {want}");
        // Version 0 parses as JSON but fails validation: the old error is reported.
        let mut v: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("1.root.json")).unwrap()).unwrap();
        v["signed"]["version"] = 0.into();
        let bytes = serde_json::to_vec(&v).unwrap();
        let err = parse_role::<Root>(&dir, &bytes).unwrap_err().to_string();
        assert!(err.contains("version must be at least 1"), "{err}");
    }

    #[test]
    fn a_second_command_on_the_same_workspace_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let _ws = Workspace::create(dir.path(), Settings::default()).unwrap();
        let err = Workspace::open(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains("another petrel-repo command"),
            "{err}"
        );
    }
}
