//! Automatic deltas at publish (`[deltas]` in `petrel-repo.toml`): which earlier versions of
//! each artifact a group manifest names get a delta to it, built through [`crate::delta`]
//! and staged before `publish` signs anything, and undone if that publish fails.
//!
//! The definition (docs/repository.md, Automatic deltas):
//!
//! * Every application entry of every usable group manifest (the newest state: staged,
//!   else published) names a version `V` and its artifact target `T`. When `T` contains
//!   `V` as a whole word (a path segment, as in `apps/<vendor>/<app>/<version>/<file>`, or
//!   delimited by characters other than ASCII letters and digits, as in `app-2.1.bin`), the
//!   *versions of that artifact* are the targets the repository lists (found as a device
//!   finds them) whose path is `T` with `V` replaced, everywhere it occurs so, by another
//!   version string. An artifact whose path does not contain its version has no earlier
//!   versions to find and gets no automatic delta.
//! * The versions of an artifact are ordered by [`version_order`]. Each version a group
//!   names gets a delta from each of the `previous` versions just before it, unless the
//!   artifact is smaller than `min_size`, the base has the same bytes, the delta is already
//!   listed with matching metadata, or it is larger than `max_ratio` of the artifact.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use petrel_client::delta::{self as format, DeltaMeta};
use petrel_client::tuf::pattern;

use crate::delta::{self, DeltaOptions, DeltaOutcome};
use crate::editor::Editor;
use crate::error::{Error, Result};
use crate::fsutil;
use crate::manifests::{self, lookup, Listing};
use crate::workspace::{DeltaSettings, Workspace, SETTINGS_FILE};

/// One delta between two versions of an artifact.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AutoDelta {
    /// The base: the earlier version's target path.
    pub from: String,
    /// The artifact: the target path of the version a group names.
    pub to: String,
    /// The delta's target path (`deltas/<new sha256>/<old sha256>.zst`).
    pub name: String,
    /// The delta's length.
    pub length: u64,
    /// The artifact's length.
    pub result_length: u64,
}

/// What the automatic deltas of one publish came to.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AutoDeltaReport {
    /// Deltas built and staged, in the order built.
    pub built: Vec<AutoDelta>,
    /// Deltas built but larger than `max_ratio` of their artifact: not staged.
    pub too_large: Vec<AutoDelta>,
    /// Deltas already listed with matching metadata: not built again.
    pub already_listed: usize,
    /// Artifacts named by a group that are smaller than `min_size`: no deltas.
    pub below_min_size: usize,
    /// The `max_ratio` the deltas were held to.
    pub max_ratio: f64,
}

impl fmt::Display for AutoDeltaReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for d in &self.built {
            writeln!(
                f,
                "delta {}: {} -> {}, {} bytes instead of {}",
                d.name, d.from, d.to, d.length, d.result_length
            )?;
        }
        for d in &self.too_large {
            writeln!(
                f,
                "delta too large, not published: {} -> {}: {} bytes is more than max_ratio {} of the artifact's {} bytes",
                d.from, d.to, d.length, self.max_ratio, d.result_length
            )?;
        }
        write!(
            f,
            "deltas: {} built, {} already listed, {} too large, {} artifact(s) under min_size",
            self.built.len(),
            self.already_listed,
            self.too_large.len(),
            self.below_min_size
        )
    }
}

/// The automatic deltas staged for one publish, and how to take them back.
#[derive(Debug)]
pub struct Staged {
    /// What was built and staged.
    pub report: AutoDeltaReport,
    undo: Undo,
}

impl Staged {
    /// Puts the staged roles the deltas changed back as they were before
    /// [`stage_for_publish`] (for a publish that failed before it was decided).
    pub fn undo(self) -> Result<()> {
        self.undo.restore()
    }
}

/// Builds and stages the automatic deltas of the workspace's `[deltas]` settings; `None`
/// when they are off (`previous = 0`). Every delta is built and checked before the next;
/// if one fails, the deltas staged so far are taken back and the error names the artifact
/// and the base. Nothing is signed or published here.
pub fn stage_for_publish(ws: &Workspace) -> Result<Option<Staged>> {
    let settings = &ws.settings.deltas;
    if !settings.enabled() {
        return Ok(None);
    }
    let plan = plan(ws, settings)?;
    let mut report = AutoDeltaReport {
        already_listed: plan.already_listed,
        below_min_size: plan.below_min_size,
        max_ratio: settings.max_ratio,
        ..AutoDeltaReport::default()
    };
    let mut undo = Undo::default();
    match build(ws, &plan, settings.max_ratio, &mut report, &mut undo) {
        Ok(()) => Ok(Some(Staged { report, undo })),
        Err(e) => {
            undo.restore()?;
            Err(e)
        }
    }
}

/// One delta to build.
#[derive(Clone, Debug)]
struct Pair {
    from: String,
    to: String,
    name: String,
}

/// What to build, and what needs nothing.
#[derive(Debug, Default)]
struct Plan {
    /// The role the deltas are added to.
    role: String,
    pairs: Vec<Pair>,
    already_listed: usize,
    below_min_size: usize,
}

/// Finds the pairs of the definition (module documentation), without building anything.
fn plan(ws: &Workspace, settings: &DeltaSettings) -> Result<Plan> {
    let groups = manifests::list_groups(ws)?;
    let mut ed = Editor::new(ws);
    let role = match &settings.role {
        Some(r) if r == "targets" || ed.has_role(r)? => r.clone(),
        Some(r) => {
            return Err(Error::Settings {
                path: ws.dir().join(SETTINGS_FILE),
                reason: format!(
                    "deltas.role: {r:?} is not a targets role of this repository; delegate it first (petrel-repo delegate --to {r} …) or leave role out"
                ),
            })
        }
        None if ed.has_role(delta::DEFAULT_ROLE)? => delta::DEFAULT_ROLE.to_string(),
        None => "targets".to_string(),
    };
    // Artifact path template → the versions groups name.
    let mut series: BTreeMap<Template, BTreeSet<String>> = BTreeMap::new();
    for g in &groups.groups {
        for app in g.apps.values() {
            if let Some(t) = Template::new(&app.target, &app.version) {
                series.entry(t).or_default().insert(app.version.clone());
            }
        }
    }
    let mut out = Plan {
        role,
        ..Plan::default()
    };
    let mut small: BTreeSet<String> = BTreeSet::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    for (template, named) in &series {
        let mut versions: Vec<(String, Listing)> =
            versions_listed(&mut ed, template)?.into_iter().collect();
        versions.sort_by(|a, b| version_order(&a.0, &b.0));
        for v in named {
            let Some(at) = versions.iter().position(|(w, _)| w == v) else {
                // Not listed: publish reports that, not this.
                continue;
            };
            let result = &versions[at].1;
            if result.file.length < settings.min_size {
                small.insert(result.name.clone());
                continue;
            }
            let result_sha = &result.file.hashes["sha256"];
            for (_, base) in &versions[at.saturating_sub(settings.previous)..at] {
                let base_sha = &base.file.hashes["sha256"];
                if base_sha == result_sha {
                    continue;
                }
                let name = format::target_path(result_sha, base_sha);
                if !seen.insert(name.clone()) {
                    continue;
                }
                if already_listed(&mut ed, &name, base, result)? {
                    out.already_listed += 1;
                    continue;
                }
                out.pairs.push(Pair {
                    from: base.name.clone(),
                    to: result.name.clone(),
                    name,
                });
            }
        }
    }
    out.below_min_size = small.len();
    Ok(out)
}

/// Whether a device finds the delta `name` with metadata for exactly this base and result.
fn already_listed(
    ed: &mut Editor<'_>,
    name: &str,
    base: &Listing,
    result: &Listing,
) -> Result<bool> {
    let Some(l) = lookup::find(ed, name)? else {
        return Ok(false);
    };
    Ok(match DeltaMeta::from_custom(l.file.custom.as_ref()) {
        Ok(m) => {
            m.check_path(name).is_ok()
                && m.base_sha256 == base.file.hashes["sha256"]
                && m.base_length == base.file.length
                && m.result_sha256 == result.file.hashes["sha256"]
                && m.result_length == result.file.length
        }
        Err(_) => false,
    })
}

/// Builds the planned deltas one by one through [`delta::make_deltas`], taking back (from
/// `undo`) each one that is too large.
fn build(
    ws: &Workspace,
    plan: &Plan,
    max_ratio: f64,
    report: &mut AutoDeltaReport,
    undo: &mut Undo,
) -> Result<()> {
    let mut ed = Editor::new(ws);
    for p in &plan.pairs {
        let dest = ed.destination_role(&plan.role, &p.name)?;
        let path = ws.staged_path(&dest);
        let before = read_optional(&path)?;
        undo.remember(&path, &before);
        let outcomes = delta::make_deltas(
            ws,
            &DeltaOptions {
                from: vec![p.from.clone()],
                to: p.to.clone(),
                role: Some(plan.role.clone()),
                ..Default::default()
            },
        )
        .map_err(|e| {
            Error::target(
                &p.to,
                format!(
                    "building the automatic delta from {} ([deltas] in {SETTINGS_FILE}): {e}",
                    p.from
                ),
            )
        })?;
        for outcome in outcomes {
            let (length, result_length, staged_in) = match outcome {
                DeltaOutcome::Added {
                    length,
                    result_length,
                    role,
                    ..
                } => (length, result_length, Some(role)),
                DeltaOutcome::Skipped {
                    length,
                    result_length,
                    ..
                } => (length, result_length, None),
            };
            let d = AutoDelta {
                from: p.from.clone(),
                to: p.to.clone(),
                name: p.name.clone(),
                length,
                result_length,
            };
            match staged_in {
                Some(role) if role != dest => {
                    return Err(Error::target(
                        &p.name,
                        format!("was placed in role {role:?}, not {dest:?} as planned"),
                    ))
                }
                Some(_) if (length as f64) <= max_ratio * result_length as f64 => {
                    report.built.push(d)
                }
                Some(_) => {
                    restore(&path, &before)?;
                    report.too_large.push(d);
                }
                None => report.too_large.push(d),
            }
        }
    }
    Ok(())
}

/// Each staged role file the deltas changed, as it was before the first change (`None`:
/// the role had no staged changes).
#[derive(Debug, Default)]
struct Undo {
    before: BTreeMap<PathBuf, Option<Vec<u8>>>,
}

impl Undo {
    fn remember(&mut self, path: &std::path::Path, bytes: &Option<Vec<u8>>) {
        self.before
            .entry(path.to_path_buf())
            .or_insert_with(|| bytes.clone());
    }

    fn restore(&self) -> Result<()> {
        for (path, bytes) in &self.before {
            restore(path, bytes)?;
        }
        Ok(())
    }
}

fn read_optional(path: &std::path::Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

fn restore(path: &std::path::Path, bytes: &Option<Vec<u8>>) -> Result<()> {
    match bytes {
        Some(b) => fsutil::write_atomic(path, b),
        None => match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(Error::io(path, e)),
        },
    }
}

/// Version → listing of every version of the artifact `template` describes that a device
/// finds (with a sha256). Only roles whose delegated paths can hold such names are read.
fn versions_listed(ed: &mut Editor<'_>, template: &Template) -> Result<BTreeMap<String, Listing>> {
    let mut names = BTreeSet::new();
    let mut stack = vec!["targets".to_string()];
    let mut visited = BTreeSet::new();
    while let Some(role) = stack.pop() {
        if !visited.insert(role.clone()) || !ed.has_role(&role)? {
            continue;
        }
        let t = ed.targets(&role)?;
        names.extend(
            t.targets
                .keys()
                .filter(|n| template.version_in(n).is_some())
                .cloned(),
        );
        if let Some(d) = &t.delegations {
            if d.succinct_roles.is_some() {
                stack.extend(d.role_names());
            }
            for r in d.roles.iter().flatten() {
                let relevant = match (&r.paths, &r.path_hash_prefixes) {
                    (Some(p), _) => p.iter().any(|p| template.may_match(p)),
                    (None, Some(_)) => true,
                    (None, None) => false,
                };
                if relevant {
                    stack.push(r.name.clone());
                }
            }
        }
    }
    let mut out = BTreeMap::new();
    for name in names {
        let version = template
            .version_in(&name)
            .expect("only matching names are kept")
            .to_string();
        // Listed where a device finds it (a name shadowed elsewhere is not what it gets).
        if let Some(l) = lookup::find(ed, &name)? {
            if l.file.hashes.contains_key("sha256") {
                out.insert(version, l);
            }
        }
    }
    Ok(out)
}

/// An artifact's target path with its version taken out: the pieces around each place
/// the version occurs as a whole word.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Template {
    /// At least two pieces; a version goes between each two.
    pieces: Vec<String>,
}

impl Template {
    /// The template of `target` for `version`, if the path contains it as a whole word.
    fn new(target: &str, version: &str) -> Option<Template> {
        if version.is_empty() || version.contains('/') {
            return None;
        }
        let word_edge = |c: Option<char>| c.is_none_or(|c| !c.is_ascii_alphanumeric());
        let mut pieces = Vec::new();
        let mut last = 0;
        for (i, _) in target.match_indices(version) {
            let end = i + version.len();
            if word_edge(target[..i].chars().next_back()) && word_edge(target[end..].chars().next())
            {
                pieces.push(target[last..i].to_string());
                last = end;
            }
        }
        if pieces.is_empty() {
            return None;
        }
        pieces.push(target[last..].to_string());
        Some(Template { pieces })
    }

    /// The version `name` is this template with, if it is one: the same string in every
    /// place, without `/`, and a valid version.
    fn version_in<'n>(&self, name: &'n str) -> Option<&'n str> {
        let slots = self.pieces.len() - 1;
        let fixed: usize = self.pieces.iter().map(String::len).sum();
        let extra = name.len().checked_sub(fixed)?;
        if extra == 0 || extra % slots != 0 {
            return None;
        }
        let len = extra / slots;
        let start = self.pieces[0].len();
        let version = name.get(start..start + len)?;
        let mut rest = name;
        for (i, piece) in self.pieces.iter().enumerate() {
            rest = rest.strip_prefix(piece.as_str())?;
            if i < slots {
                rest = rest.strip_prefix(version)?;
            }
        }
        (rest.is_empty()
            && !version.contains('/')
            && petrel_client::manifest::check_version(version).is_ok())
        .then_some(version)
    }

    /// Whether a delegation path pattern may match some name of this template (segment by
    /// segment; a segment holding the version may match anything).
    fn may_match(&self, pattern: &str) -> bool {
        let marked = self.pieces.join("\0");
        let mut p = pattern.split('/');
        let mut t = marked.split('/');
        loop {
            match (p.next(), t.next()) {
                (None, None) => return true,
                (Some(ps), Some(ts)) => {
                    if !ts.contains('\0') && !pattern::matches(ps, ts) {
                        return false;
                    }
                }
                _ => return false,
            }
        }
    }
}

/// The order of versions that picks the bases of automatic deltas (devices compare
/// versions for equality only). Like semantic versioning, generalised: a `+build` suffix
/// is compared last and a `-pre-release` sorts before its release (`2.0.0-rc.1` before
/// `2.0.0`); within each part, runs of digits compare as numbers (`1.10` after `1.9`),
/// other runs as text, and a number before text. Versions equal so far (`1.0`, `1.00`)
/// compare as strings, so different versions are never equal.
pub fn version_order(a: &str, b: &str) -> Ordering {
    fn parts(v: &str) -> (&str, Option<&str>, &str) {
        let (main, build) = v.split_once('+').unwrap_or((v, ""));
        match main.split_once('-') {
            Some((release, pre)) => (release, Some(pre), build),
            None => (main, None, build),
        }
    }
    let (ra, pa, ba) = parts(a);
    let (rb, pb, bb) = parts(b);
    natural(ra, rb)
        .then_with(|| match (pa, pb) {
            (None, None) => Ordering::Equal,
            (None, Some(_)) => Ordering::Greater,
            (Some(_), None) => Ordering::Less,
            (Some(x), Some(y)) => natural(x, y),
        })
        .then_with(|| natural(ba, bb))
        .then_with(|| a.cmp(b))
}

/// Compares runs of digits as numbers and other runs as text; a number sorts before text,
/// and a prefix before what extends it.
fn natural(a: &str, b: &str) -> Ordering {
    fn runs(s: &str) -> impl Iterator<Item = &str> {
        let mut rest = s;
        std::iter::from_fn(move || {
            let first = rest.chars().next()?;
            let digits = first.is_ascii_digit();
            let end = rest
                .find(|c: char| c.is_ascii_digit() != digits)
                .unwrap_or(rest.len());
            let (run, tail) = rest.split_at(end);
            rest = tail;
            Some(run)
        })
    }
    let is_number = |r: &str| r.bytes().next().is_some_and(|c| c.is_ascii_digit());
    let mut x = runs(a);
    let mut y = runs(b);
    loop {
        let o = match (x.next(), y.next()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(p), Some(q)) => match (is_number(p), is_number(q)) {
                (true, true) => {
                    let p = p.trim_start_matches('0');
                    let q = q.trim_start_matches('0');
                    p.len().cmp(&q.len()).then_with(|| p.cmp(q))
                }
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                (false, false) => p.cmp(q),
            },
        };
        if o != Ordering::Equal {
            return o;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_order_numerically_with_pre_releases_first() {
        let mut v = vec![
            "1.10",
            "1.9",
            "2.0.0",
            "2.0.0-rc.2",
            "2.0.0-rc.10",
            "1.0",
            "v3",
            "1.9.1",
            "10",
            "2.0.0+b1",
        ];
        v.sort_by(|a, b| version_order(a, b));
        assert_eq!(
            v,
            [
                "1.0",
                "1.9",
                "1.9.1",
                "1.10",
                "2.0.0-rc.2",
                "2.0.0-rc.10",
                "2.0.0",
                "2.0.0+b1",
                "10",
                "v3"
            ]
        );
        assert_eq!(version_order("1.0", "1.00"), "1.0".cmp("1.00"));
        assert_eq!(version_order("2024-05-01", "2024-06-01"), Ordering::Less);
        assert_eq!(version_order("1.2", "1.2"), Ordering::Equal);
    }

    #[test]
    fn templates_take_the_version_out_as_a_whole_word() {
        let t = Template::new("apps/acme/app/2.1/app-2.1.bin", "2.1").unwrap();
        assert_eq!(t.version_in("apps/acme/app/2.0/app-2.0.bin"), Some("2.0"));
        assert_eq!(
            t.version_in("apps/acme/app/2.10/app-2.10.bin"),
            Some("2.10")
        );
        assert_eq!(t.version_in("apps/acme/app/2.0/app-2.1.bin"), None);
        assert_eq!(t.version_in("apps/acme/app/a/b/app-a/b.bin"), None);
        assert_eq!(t.version_in("apps/acme/app//app-.bin"), None);
        // Inside a word the version is part of the name, not a version.
        let t = Template::new("apps/acme1/app/1/app.bin", "1").unwrap();
        assert_eq!(t.pieces, ["apps/acme1/app/", "/app.bin"]);
        assert_eq!(t.version_in("apps/acme1/app/2/app.bin"), Some("2"));
        assert_eq!(t.version_in("apps/acme2/app/2/app.bin"), None);
        assert!(Template::new("apps/acme/app/v2.1/app.bin", "2.1").is_none());
        assert!(Template::new("apps/acme/app/latest/app.bin", "2.1").is_none());
    }

    #[test]
    fn delegations_are_followed_only_where_versions_can_be() {
        let t = Template::new("apps/acme/app/2.1/app.bin", "2.1").unwrap();
        assert!(t.may_match("apps/acme/*/*/*"));
        assert!(t.may_match("apps/*/app/2.*/*.bin"));
        assert!(!t.may_match("apps/other/*/*/*"));
        assert!(!t.may_match("apps/acme/*/*"));
        assert!(!t.may_match("deltas/*/*"));
    }
}
