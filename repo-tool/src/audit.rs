//! `petrel-repo verify`: checks a whole published tree the way a client would — root chain,
//! timestamp, snapshot, every targets role and every target file — and reports every
//! problem found instead of stopping at the first.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use chrono::Utc;
use petrel_client::tuf::schema::tree;
use petrel_client::tuf::schema::{
    check_target_path, encode_role_name, DelegatedRole, Hashes, Key, KeyId, MetaFile, Metadata,
    RawSigned, Root, Signed, Snapshot, SnapshotTree, SuccinctRoles, Targets, Timestamp,
};
use petrel_client::tuf::verify::verify_threshold;
use ring::digest;

use crate::error::{Error, Result};
use crate::publish::target_tree_path;

/// The outcome of a tree audit.
#[derive(Debug, Default)]
pub struct AuditReport {
    /// Human-readable problems; empty means the tree is good.
    pub problems: Vec<String>,
    /// The root version reached.
    pub root_version: u64,
    /// Targets roles checked.
    pub roles_checked: usize,
    /// Target files checked.
    pub targets_checked: usize,
}

impl fmt::Display for AuditReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "root v{}, {} targets role(s), {} target file(s) checked",
            self.root_version, self.roles_checked, self.targets_checked
        )?;
        if self.problems.is_empty() {
            writeln!(f, "ok: clients will accept this tree")
        } else {
            for p in &self.problems {
                writeln!(f, "problem: {p}")?;
            }
            Ok(())
        }
    }
}

/// How a role on a delegation chain was delegated.
#[derive(Clone)]
enum Link {
    /// A named delegation with paths or hash prefixes.
    Named(DelegatedRole),
    /// One of a set of succinct hashed bins.
    Bin(SuccinctRoles),
}

/// A targets role waiting to be checked: its name, the chain of roles and delegations
/// leading to it, and the keys and threshold its delegator gives it.
type Pending = (
    String,
    Vec<String>,
    Vec<Link>,
    Vec<KeyId>,
    u32,
    BTreeMap<KeyId, Key>,
);

struct Auditor {
    tree: PathBuf,
    report: AuditReport,
}

fn sha(alg: &str, bytes: &[u8]) -> Option<String> {
    let a = match alg {
        "sha256" => &digest::SHA256,
        "sha512" => &digest::SHA512,
        _ => return None,
    };
    Some(hex::encode(digest::digest(a, bytes)))
}

impl Auditor {
    fn problem(&mut self, p: String) {
        self.report.problems.push(p);
    }

    fn read(&mut self, rel: &str) -> Option<Vec<u8>> {
        match std::fs::read(self.tree.join(rel)) {
            Ok(b) => Some(b),
            Err(e) => {
                self.problem(format!("{rel}: {e}"));
                None
            }
        }
    }

    /// Parses, checks the type and threshold signature; returns the metadata if it parses.
    fn load<T: Metadata>(
        &mut self,
        rel: &str,
        role: &str,
        bytes: &[u8],
        authorities: &[(&[KeyId], u32, &BTreeMap<KeyId, Key>)],
    ) -> Option<Signed<T>> {
        let raw = match RawSigned::from_bytes(bytes) {
            Ok(r) => r,
            Err(e) => {
                self.problem(format!("{rel}: {e}"));
                return None;
            }
        };
        let canonical = match raw.canonical_signed() {
            Ok(c) => c,
            Err(e) => {
                self.problem(format!("{rel}: {e}"));
                return None;
            }
        };
        for (ids, threshold, keys) in authorities {
            if let Err(e) =
                verify_threshold(role, &canonical, &raw.signatures, ids, *threshold, keys)
            {
                self.problem(format!("{rel}: signatures: {e}"));
            }
        }
        match raw.typed::<T>() {
            Ok(s) => {
                if s.signed.expires().0 <= Utc::now() {
                    self.problem(format!(
                        "{rel}: {role} v{} expired at {}",
                        s.signed.version(),
                        s.signed.expires()
                    ));
                }
                Some(s)
            }
            Err(e) => {
                self.problem(format!("{rel}: {e}"));
                None
            }
        }
    }

    fn check_meta(&mut self, rel: &str, bytes: &[u8], meta: &MetaFile) {
        if let Some(len) = meta.length {
            if len != bytes.len() as u64 {
                self.problem(format!(
                    "{rel}: length {} but referenced with length {len}",
                    bytes.len()
                ));
            }
        }
        if let Some(h) = &meta.hashes {
            self.check_hashes(rel, bytes, h);
        }
    }

    fn check_hashes(&mut self, rel: &str, bytes: &[u8], hashes: &Hashes) {
        let mut supported = 0;
        for (alg, want) in hashes {
            if let Some(got) = sha(alg, bytes) {
                supported += 1;
                if &got != want {
                    self.problem(format!("{rel}: {alg} is {got}, metadata says {want}"));
                }
            }
        }
        if supported == 0 {
            self.problem(format!(
                "{rel}: no supported hash algorithm listed (sha256 or sha512)"
            ));
        }
    }
}

/// Audits the tree at `tree`, starting from the trusted root at `root` (or, if `None`, the
/// tree's own `metadata/1.root.json`, trusted on first use).
pub fn audit_tree(tree: &Path, root: Option<&Path>) -> Result<AuditReport> {
    let mut a = Auditor {
        tree: tree.to_path_buf(),
        report: AuditReport::default(),
    };
    let root_rel = "metadata/1.root.json".to_string();
    let root_bytes = match root {
        Some(p) => std::fs::read(p).map_err(|e| Error::io(p, e))?,
        None => {
            std::fs::read(tree.join(&root_rel)).map_err(|e| Error::io(tree.join(&root_rel), e))?
        }
    };
    let raw = RawSigned::from_bytes(&root_bytes)
        .and_then(RawSigned::typed::<Root>)
        .map_err(|source| Error::Schema {
            path: root
                .map(Path::to_path_buf)
                .unwrap_or_else(|| tree.join(&root_rel)),
            source,
        })?;
    let mut trusted = raw.signed;
    {
        let r = trusted.role("root").expect("validated").clone();
        let keys = trusted.keys.clone();
        a.load::<Root>(
            "trusted root",
            "root",
            &root_bytes,
            &[(&r.keyids, r.threshold, &keys)],
        );
    }
    // Root chain.
    for _ in 0..1024 {
        let next = trusted.version + 1;
        let rel = format!("metadata/{next}.root.json");
        let Ok(bytes) = std::fs::read(tree.join(&rel)) else {
            break;
        };
        let old = trusted.role("root").expect("validated").clone();
        let old_keys = trusted.keys.clone();
        let Some(parsed) = a.load::<Root>(
            &rel,
            "root",
            &bytes,
            &[(&old.keyids, old.threshold, &old_keys)],
        ) else {
            break;
        };
        let new = parsed.signed.role("root").expect("validated").clone();
        let canonical = RawSigned::from_bytes(&bytes)
            .and_then(|r| r.canonical_signed())
            .unwrap_or_default();
        if let Err(e) = verify_threshold(
            "root",
            &canonical,
            &parsed.signatures,
            &new.keyids,
            new.threshold,
            &parsed.signed.keys,
        ) {
            a.problem(format!("{rel}: not signed by its own root keys: {e}"));
        }
        if parsed.signed.version != next {
            a.problem(format!(
                "{rel}: version {} in a file named for {next}",
                parsed.signed.version
            ));
            break;
        }
        trusted = parsed.signed;
    }
    a.report.root_version = trusted.version;
    if trusted.expires.0 <= Utc::now() {
        a.problem(format!(
            "root v{} expired at {}",
            trusted.version, trusted.expires
        ));
    }
    let consistent = trusted.consistent_snapshot();
    let role_keys = |r: &str| trusted.role(r).expect("validated").clone();

    // Timestamp.
    let ts_rel = "metadata/timestamp.json";
    let Some(ts_bytes) = a.read(ts_rel) else {
        return Ok(a.report);
    };
    let tk = role_keys("timestamp");
    let Some(ts) = a.load::<Timestamp>(
        ts_rel,
        "timestamp",
        &ts_bytes,
        &[(&tk.keyids, tk.threshold, &trusted.keys)],
    ) else {
        return Ok(a.report);
    };
    // Snapshot.
    let sm = ts.signed.snapshot_meta().clone();
    let snap_rel = if consistent {
        format!("metadata/{}.snapshot.json", sm.version)
    } else {
        "metadata/snapshot.json".into()
    };
    let Some(snap_bytes) = a.read(&snap_rel) else {
        return Ok(a.report);
    };
    a.check_meta(&snap_rel, &snap_bytes, &sm);
    let sk = role_keys("snapshot");
    let Some(snap) = a.load::<Snapshot>(
        &snap_rel,
        "snapshot",
        &snap_bytes,
        &[(&sk.keyids, sk.threshold, &trusted.keys)],
    ) else {
        return Ok(a.report);
    };
    if snap.signed.version != sm.version {
        a.problem(format!(
            "{snap_rel}: version {} but timestamp references {}",
            snap.signed.version, sm.version
        ));
    }
    // The snapshot tree, when the timestamp pins one: signed by the snapshot keys, the
    // same role versions as the snapshot, every node present with the bytes its name says.
    match ts.signed.snapshot_tree_meta() {
        None => {}
        Some(Err(e)) => a.problem(format!("{ts_rel}: {e}")),
        Some(Ok(tm)) => {
            let head_rel = format!(
                "metadata/{}/{}",
                tree::TREE_DIR,
                tree::head_file_name(tm.version)
            );
            if let Some(head_bytes) = a.read(&head_rel) {
                a.check_meta(&head_rel, &head_bytes, &tm);
                if let Some(head) = a.load::<SnapshotTree>(
                    &head_rel,
                    "snapshot",
                    &head_bytes,
                    &[(&sk.keyids, sk.threshold, &trusted.keys)],
                ) {
                    let roles: BTreeMap<String, MetaFile> = snap
                        .signed
                        .meta
                        .iter()
                        .filter_map(|(n, m)| {
                            Some((n.strip_suffix(".json")?.to_string(), m.clone()))
                        })
                        .collect();
                    let built = tree::build(&roles);
                    if built.root != head.signed.root {
                        a.problem(format!(
                            "{head_rel}: its tree (root {}) does not list the role versions of {snap_rel} (whose tree has root {})",
                            head.signed.root, built.root
                        ));
                    }
                    for (hash, bytes) in &built.nodes {
                        let rel =
                            format!("metadata/{}/{}", tree::TREE_DIR, tree::node_file_name(hash));
                        match std::fs::read(tree.join(&rel)) {
                            Ok(b) if &b == bytes => {}
                            Ok(_) => a.problem(format!(
                                "{rel}: its bytes do not hash to its name; publish again"
                            )),
                            Err(_) => a.problem(format!(
                                "{rel}: missing (a node of the snapshot tree); publish again"
                            )),
                        }
                    }
                }
            }
        }
    }

    // Targets roles, depth-first from targets; each verified with its delegator's keys.
    let tkeys = role_keys("targets");
    let mut stack: Vec<Pending> = vec![(
        "targets".into(),
        vec![],
        vec![],
        tkeys.keyids.clone(),
        tkeys.threshold,
        trusted.keys.clone(),
    )];
    let mut seen = BTreeSet::new();
    // Whether some role could not be checked (so its delegations are unknown).
    let mut incomplete = false;
    while let Some((role, chain, links, ids, threshold, keys)) = stack.pop() {
        if !seen.insert(role.clone()) {
            continue;
        }
        let Some(meta) = snap.signed.role_meta(&role).cloned() else {
            incomplete = true;
            a.problem(format!(
                "role {role:?} is delegated but not listed in snapshot v{}",
                snap.signed.version
            ));
            continue;
        };
        let rel = if consistent {
            format!("metadata/{}.{}.json", meta.version, encode_role_name(&role))
        } else {
            format!("metadata/{}.json", encode_role_name(&role))
        };
        let Some(bytes) = a.read(&rel) else {
            incomplete = true;
            continue;
        };
        a.check_meta(&rel, &bytes, &meta);
        let Some(t) = a.load::<Targets>(&rel, &role, &bytes, &[(&ids, threshold, &keys)]) else {
            incomplete = true;
            continue;
        };
        a.report.roles_checked += 1;
        if t.signed.version != meta.version {
            a.problem(format!(
                "{rel}: version {} but snapshot references {}",
                t.signed.version, meta.version
            ));
        }
        for (name, tf) in &t.signed.targets {
            if let Err(e) = check_target_path(name) {
                a.problem(format!("target {name:?} in role {role:?}: {e}"));
                continue;
            }
            for (i, link) in links.iter().enumerate() {
                match link {
                    Link::Named(d) if !d.matches(name) => {
                        a.problem(format!(
                            "target {name:?} in role {role:?} is outside the paths delegated to {:?} ({:?}); clients ignore it",
                            chain[i],
                            d.paths.clone().unwrap_or_default()
                        ));
                        break;
                    }
                    Link::Bin(s) if s.bin_for_target(name) != chain[i] => {
                        a.problem(format!(
                            "target {name:?} in role {role:?} is under hashed bin {:?}, but its path hash puts it in bin {:?}; clients ignore it",
                            chain[i],
                            s.bin_for_target(name)
                        ));
                        break;
                    }
                    _ => {}
                }
            }
            let tree_path = |digest: &str| {
                target_tree_path(consistent, name, digest)
                    .display()
                    .to_string()
            };
            let trel = tree_path(tf.hashes.values().next().map_or("", String::as_str));
            a.report.targets_checked += 1;
            let Some(bytes) = a.read(&trel) else { continue };
            if bytes.len() as u64 != tf.length {
                a.problem(format!(
                    "{trel}: {} bytes, metadata says {}",
                    bytes.len(),
                    tf.length
                ));
            }
            a.check_hashes(&trel, &bytes, &tf.hashes);
            if consistent {
                // One copy per listed hash: a client may name the file by any of them.
                for (alg, h) in tf.hashes.iter().skip(1) {
                    let other = tree_path(h);
                    match std::fs::metadata(a.tree.join(&other)) {
                        Ok(m) if m.len() == tf.length => {}
                        Ok(m) => a.problem(format!("{other}: {} bytes, metadata says {}", m.len(), tf.length)),
                        Err(_) => a.problem(format!(
                            "{other}: missing; clients that name targets by their {alg} hash get 404"
                        )),
                    }
                }
            }
        }
        if let Some(d) = &t.signed.delegations {
            let children: Vec<(String, Link, Vec<KeyId>, u32)> = match &d.succinct_roles {
                Some(s) => s
                    .bin_names()
                    .map(|n| (n, Link::Bin(s.clone()), s.keyids.clone(), s.threshold))
                    .collect(),
                None => d
                    .roles
                    .iter()
                    .flatten()
                    .map(|r| {
                        (
                            r.name.clone(),
                            Link::Named(r.clone()),
                            r.keyids.clone(),
                            r.threshold,
                        )
                    })
                    .collect(),
            };
            for (name, link, cids, cthreshold) in children.into_iter().rev() {
                let mut c = chain.clone();
                c.push(name.clone());
                let mut l = links.clone();
                l.push(link);
                stack.push((name, c, l, cids, cthreshold, d.keys.clone()));
            }
        }
    }
    for name in snap.signed.meta.keys() {
        let role = name.trim_end_matches(".json");
        // A role that could not be checked hides its delegations: do not blame them.
        if !seen.contains(role) && !incomplete {
            a.problem(format!(
                "snapshot lists {name} but no role delegates {role:?}"
            ));
        }
    }
    Ok(a.report)
}
