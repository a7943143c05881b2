//! Scoped keys: capabilities carried by a delegation, and their enforcement along the
//! delegation chain.
//!
//! A delegated role object (in its delegator's signed targets metadata) may carry
//! `"petrel_capabilities": {...}`. Each field that is present *restricts* what manifests
//! signed by that role may do; an absent field restricts nothing at that level. A manifest
//! is accepted only if it satisfies the capabilities of **every** delegation on the chain
//! from `targets` to the role that signed it (their intersection). Capabilities a client
//! cannot parse (a malformed object, an unknown field or schema version) reject every
//! manifest of that role: a restriction that cannot be understood cannot be enforced.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::common::*;
use super::{
    AssignmentBin, CampaignManifest, ConsentPolicy, GroupManifest, ManifestKind, Method, Problems,
    ValidationError, SCHEMA_VERSION,
};
use crate::tuf::schema::{DelegatedRole, SuccinctRoles, Unrecognized};
use crate::tuf::updater::TrustedMetadata;

/// The field of a delegated role object that holds its capabilities.
pub const CAPABILITIES_FIELD: &str = "petrel_capabilities";

/// What manifests signed by a role may do. `None` (or `false`) fields do not restrict.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Manifest kinds the role may publish.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kinds: Option<BTreeSet<ManifestKind>>,
    /// Consent policies its campaigns may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_policies: Option<BTreeSet<ConsentPolicy>>,
    /// Methods its campaigns may use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods: Option<BTreeSet<Method>>,
    /// Groups it may publish manifests for, target with campaigns, or assign devices to.
    /// A campaign must name its groups (payload group or `applies_to.groups`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<BTreeSet<String>>,
    /// Applications its group manifests may list and its campaigns may deliver or remove.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub apps: Option<BTreeSet<String>>,
    /// Its campaigns must restrict `applies_to.device_types` to a subset of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_types: Option<BTreeSet<String>>,
    /// Same for `applies_to.device_classes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_classes: Option<BTreeSet<String>>,
    /// Same for `applies_to.vendors`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendors: Option<BTreeSet<String>>,
    /// Same for `applies_to.regions`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regions: Option<BTreeSet<String>>,
    /// Same for `applies_to.channels`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub channels: Option<BTreeSet<String>>,
    /// Same for `applies_to.licences`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub licences: Option<BTreeSet<String>>,
    /// Its campaigns must set `applies_to.assigned_only` (explicitly enrolled devices only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub explicit_devices_only: bool,
    /// Manifests of the role are refused at and after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<UtcTime>,
}

fn meet<T: Ord + Clone>(a: &Option<BTreeSet<T>>, b: &Option<BTreeSet<T>>) -> Option<BTreeSet<T>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.intersection(b).cloned().collect()),
        (Some(x), None) | (None, Some(x)) => Some(x.clone()),
        (None, None) => None,
    }
}

fn list<T: fmt::Display>(set: &BTreeSet<T>) -> String {
    if set.is_empty() {
        return "nothing".into();
    }
    set.iter()
        .map(|v| v.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Capabilities {
    /// Capabilities that restrict nothing.
    pub fn unrestricted() -> Capabilities {
        Capabilities {
            schema_version: SCHEMA_VERSION,
            ..Capabilities::default()
        }
    }

    /// Parses capabilities authored as TOML (the same fields as the JSON form).
    pub fn from_toml(text: &str) -> Result<Capabilities, ValidationError> {
        let c: Capabilities = toml::from_str(text).map_err(|e| {
            ValidationError::new("capabilities", "", e.message().trim().to_string())
        })?;
        c.validate()?;
        Ok(c)
    }

    /// Parses the JSON value of a `petrel_capabilities` field.
    pub fn from_value(v: &Value) -> Result<Capabilities, ValidationError> {
        if let Some(n) = v.get("schema_version") {
            if n.as_u64() != Some(SCHEMA_VERSION as u64) {
                return Err(ValidationError::new(
                    "capabilities",
                    "schema_version",
                    format!("unknown schema version {n}; this client reads only {SCHEMA_VERSION}"),
                ));
            }
        }
        let c: Capabilities = serde_json::from_value(v.clone())
            .map_err(|e| ValidationError::new("capabilities", "", e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// The JSON value to put under [`CAPABILITIES_FIELD`].
    pub fn to_value(&self) -> Value {
        serde_json::to_value(self).expect("capabilities serialize")
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut p = Problems::new();
        if self.schema_version != SCHEMA_VERSION {
            p.push(
                "schema_version",
                format!("unknown schema version {}", self.schema_version),
            );
        }
        for (name, set) in [("groups", &self.groups), ("apps", &self.apps)] {
            for v in set.iter().flatten() {
                p.check(name, check_id(v));
            }
        }
        for (name, set) in self.selector_limits() {
            for v in set.iter().flatten() {
                p.check(name, check_label(v));
            }
        }
        p.finish("capabilities")
    }

    fn selector_limits(&self) -> [(&'static str, &Option<BTreeSet<String>>); 6] {
        [
            ("device_types", &self.device_types),
            ("device_classes", &self.device_classes),
            ("vendors", &self.vendors),
            ("regions", &self.regions),
            ("channels", &self.channels),
            ("licences", &self.licences),
        ]
    }

    /// The intersection: what is allowed by both.
    pub fn intersect(&self, other: &Capabilities) -> Capabilities {
        Capabilities {
            schema_version: SCHEMA_VERSION,
            kinds: meet(&self.kinds, &other.kinds),
            consent_policies: meet(&self.consent_policies, &other.consent_policies),
            methods: meet(&self.methods, &other.methods),
            groups: meet(&self.groups, &other.groups),
            apps: meet(&self.apps, &other.apps),
            device_types: meet(&self.device_types, &other.device_types),
            device_classes: meet(&self.device_classes, &other.device_classes),
            vendors: meet(&self.vendors, &other.vendors),
            regions: meet(&self.regions, &other.regions),
            channels: meet(&self.channels, &other.channels),
            licences: meet(&self.licences, &other.licences),
            explicit_devices_only: self.explicit_devices_only || other.explicit_devices_only,
            expires: match (self.expires, other.expires) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }

    /// Whether nothing is restricted.
    pub fn is_unrestricted(&self) -> bool {
        *self == Capabilities::unrestricted()
    }

    /// A one-line summary (`campaigns only; consent required; methods normal; …`).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        if let Some(k) = &self.kinds {
            parts.push(format!("kinds {}", list(k)));
        }
        if let Some(c) = &self.consent_policies {
            parts.push(format!("consent {}", list(c)));
        }
        if let Some(m) = &self.methods {
            parts.push(format!("methods {}", list(m)));
        }
        if let Some(g) = &self.groups {
            parts.push(format!("groups {}", list(g)));
        }
        if let Some(a) = &self.apps {
            parts.push(format!("apps {}", list(a)));
        }
        for (name, set) in self.selector_limits() {
            if let Some(s) = set {
                parts.push(format!("{name} {}", list(s)));
            }
        }
        if self.explicit_devices_only {
            parts.push("explicit devices only".into());
        }
        if let Some(e) = self.expires {
            parts.push(format!("until {e}"));
        }
        if parts.is_empty() {
            "unrestricted".into()
        } else {
            parts.join("; ")
        }
    }

    fn check_common(&self, kind: ManifestKind, now: DateTime<Utc>) -> Result<(), (String, String)> {
        if let Some(e) = self.expires {
            if now >= e.0 {
                return Err(("expires".into(), format!("its capabilities expired at {e}")));
            }
        }
        if let Some(k) = &self.kinds {
            if !k.contains(&kind) {
                return Err((
                    "kinds".into(),
                    format!(
                        "may not publish {}s (may publish: {})",
                        kind.describe(),
                        list(k)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks a campaign manifest against this one level. Returns the capability field
    /// and the reason on refusal.
    pub fn check_campaign(
        &self,
        c: &CampaignManifest,
        now: DateTime<Utc>,
    ) -> Result<(), (String, String)> {
        self.check_common(ManifestKind::Campaign, now)?;
        if let Some(allowed) = &self.consent_policies {
            if !allowed.contains(&c.consent.policy) {
                return Err((
                    "consent_policies".into(),
                    format!(
                        "may publish consent policies {} only; the campaign uses {:?}",
                        list(allowed),
                        c.consent.policy.as_str()
                    ),
                ));
            }
        }
        if let Some(allowed) = &self.methods {
            if !allowed.contains(&c.method) {
                return Err((
                    "methods".into(),
                    format!(
                        "may publish methods {} only; the campaign is {:?}",
                        list(allowed),
                        c.method.as_str()
                    ),
                ));
            }
        }
        if let Some(allowed) = &self.groups {
            match c.target_groups() {
                None => {
                    return Err((
                        "groups".into(),
                        format!(
                            "may target groups {} only; the campaign targets every group (set payload.group or applies_to.groups)",
                            list(allowed)
                        ),
                    ))
                }
                Some(g) => {
                    let outside: BTreeSet<&String> = g.difference(allowed).collect();
                    if !outside.is_empty() {
                        return Err((
                            "groups".into(),
                            format!(
                                "may target groups {} only; the campaign targets {}",
                                list(allowed),
                                outside.into_iter().cloned().collect::<Vec<_>>().join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        if let Some(allowed) = &self.apps {
            let touched: BTreeSet<&String> = c
                .payload
                .apps
                .keys()
                .chain(c.payload.remove.iter())
                .collect();
            let outside: Vec<&str> = touched
                .into_iter()
                .filter(|a| !allowed.contains(*a))
                .map(|s| s.as_str())
                .collect();
            if !outside.is_empty() {
                return Err((
                    "apps".into(),
                    format!(
                        "may deliver apps {} only; the campaign delivers {}",
                        list(allowed),
                        outside.join(", ")
                    ),
                ));
            }
        }
        let sel = &c.applies_to;
        let campaign_lists = [
            &sel.device_types,
            &sel.device_classes,
            &sel.vendors,
            &sel.regions,
            &sel.channels,
            &sel.licences,
        ];
        for ((name, allowed), used) in self.selector_limits().into_iter().zip(campaign_lists) {
            let Some(allowed) = allowed else { continue };
            if used.is_empty() {
                return Err((
                    name.to_string(),
                    format!(
                        "may target {name} {} only; the campaign sets no applies_to.{name}, so it targets every one",
                        list(allowed)
                    ),
                ));
            }
            let outside: BTreeSet<&String> = used.difference(allowed).collect();
            if !outside.is_empty() {
                return Err((
                    name.to_string(),
                    format!(
                        "may target {name} {} only; the campaign targets {}",
                        list(allowed),
                        outside.into_iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                ));
            }
        }
        if self.explicit_devices_only && !sel.assigned_only {
            return Err((
                "explicit_devices_only".into(),
                "may target explicitly enrolled devices only; the campaign does not set applies_to.assigned_only"
                    .into(),
            ));
        }
        Ok(())
    }

    /// Checks a group manifest against this one level.
    pub fn check_group(
        &self,
        g: &GroupManifest,
        now: DateTime<Utc>,
    ) -> Result<(), (String, String)> {
        self.check_common(ManifestKind::Group, now)?;
        if let Some(allowed) = &self.groups {
            if !allowed.contains(&g.id) {
                return Err((
                    "groups".into(),
                    format!("may publish groups {} only, not {:?}", list(allowed), g.id),
                ));
            }
        }
        if let Some(allowed) = &self.apps {
            let outside: Vec<&str> = g
                .apps
                .keys()
                .filter(|a| !allowed.contains(*a))
                .map(|s| s.as_str())
                .collect();
            if !outside.is_empty() {
                return Err((
                    "apps".into(),
                    format!(
                        "may list apps {} only; the group lists {}",
                        list(allowed),
                        outside.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Checks an assignment bin against this one level.
    pub fn check_assignment(
        &self,
        b: &AssignmentBin,
        now: DateTime<Utc>,
    ) -> Result<(), (String, String)> {
        self.check_common(ManifestKind::Assign, now)?;
        if let Some(allowed) = &self.groups {
            let outside: Vec<&str> = b
                .groups()
                .into_iter()
                .filter(|g| !allowed.contains(*g))
                .collect();
            if !outside.is_empty() {
                return Err((
                    "groups".into(),
                    format!(
                        "may assign devices to groups {} only; the bin assigns to {}",
                        list(allowed),
                        outside.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Reads and writes the capabilities of a delegation ([`DelegatedRole`] or succinct bins),
/// kept in the object's unrecognized fields.
pub trait RoleCapabilities {
    /// The object's unrecognized fields.
    fn extra(&self) -> &Unrecognized;
    /// The object's unrecognized fields, mutably.
    fn extra_mut(&mut self) -> &mut Unrecognized;

    /// The capabilities: `Ok(None)` when the delegation carries none (unrestricted).
    fn capabilities(&self) -> Result<Option<Capabilities>, ValidationError> {
        self.extra()
            .get(CAPABILITIES_FIELD)
            .map(Capabilities::from_value)
            .transpose()
    }

    /// Sets (or with `None` removes) the capabilities.
    fn set_capabilities(&mut self, caps: Option<&Capabilities>) {
        match caps {
            Some(c) => {
                self.extra_mut()
                    .insert(CAPABILITIES_FIELD.into(), c.to_value());
            }
            None => {
                self.extra_mut().remove(CAPABILITIES_FIELD);
            }
        }
    }
}

impl RoleCapabilities for DelegatedRole {
    fn extra(&self) -> &Unrecognized {
        &self.unrecognized
    }
    fn extra_mut(&mut self) -> &mut Unrecognized {
        &mut self.unrecognized
    }
}

impl RoleCapabilities for SuccinctRoles {
    fn extra(&self) -> &Unrecognized {
        &self.unrecognized
    }
    fn extra_mut(&mut self) -> &mut Unrecognized {
        &mut self.unrecognized
    }
}

/// What one delegation on the chain grants.
// Chains are a handful of links long; boxing the capabilities would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Grant {
    /// No capabilities field: no restriction beyond TUF paths.
    Unrestricted,
    /// These capabilities.
    Restricted(Capabilities),
    /// A capabilities field this client cannot read: every manifest is refused.
    Unreadable(String),
}

/// One delegation of a chain: the delegated role and what it was granted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChainLink {
    /// The delegated role's name.
    pub role: String,
    /// Who delegated it.
    pub delegator: String,
    /// What the delegation grants.
    pub grant: Grant,
}

/// The capabilities along a delegation chain, from `targets` to the role that signed a
/// manifest.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CapabilityChain {
    /// The delegated roles, top-down (the top-level `targets` role has no link).
    pub links: Vec<ChainLink>,
}

/// A manifest exceeds what its signing chain allows.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("refused by the capabilities of role {role:?} ({field}): {reason}")]
pub struct CapabilityViolation {
    /// The delegated role whose capabilities forbid it.
    pub role: String,
    /// The capability field that forbids it.
    pub field: String,
    /// Why.
    pub reason: String,
}

impl CapabilityChain {
    /// A chain with no delegations (a manifest signed by top-level targets).
    pub fn top_level() -> CapabilityChain {
        CapabilityChain::default()
    }

    /// A chain with one delegation from `targets` (handy for tests and simple setups).
    pub fn single(role: impl Into<String>, caps: Option<Capabilities>) -> CapabilityChain {
        CapabilityChain {
            links: vec![ChainLink {
                role: role.into(),
                delegator: "targets".into(),
                grant: caps.map_or(Grant::Unrestricted, Grant::Restricted),
            }],
        }
    }

    /// Reads the capabilities of each delegation on `chain` (as in
    /// [`crate::tuf::updater::TargetInfo::delegation_chain`]) from the trusted metadata: for
    /// each role after `targets`, its delegated role object in its delegator.
    pub fn from_trusted(
        trusted: &TrustedMetadata,
        chain: &[String],
    ) -> Result<CapabilityChain, String> {
        let mut links = Vec::new();
        if chain.first().map(String::as_str) != Some("targets") {
            return Err(format!(
                "delegation chain {chain:?} does not start at targets"
            ));
        }
        for pair in chain.windows(2) {
            let (parent, child) = (&pair[0], &pair[1]);
            let delegator = trusted
                .role(parent)
                .ok_or_else(|| format!("role {parent:?} of the delegation chain is not loaded"))?;
            let delegations = delegator
                .signed
                .delegations
                .as_ref()
                .ok_or_else(|| format!("role {parent:?} delegates nothing"))?;
            let read = |r: Result<Option<Capabilities>, ValidationError>| match r {
                Ok(None) => Grant::Unrestricted,
                Ok(Some(c)) => Grant::Restricted(c),
                Err(e) => Grant::Unreadable(e.to_string()),
            };
            let grant = if let Some(role) = delegations
                .roles
                .iter()
                .flatten()
                .find(|r| &r.name == child)
            {
                read(role.capabilities())
            } else if let Some(s) = delegations
                .succinct_roles
                .as_ref()
                .filter(|s| s.is_bin(child))
            {
                read(s.capabilities())
            } else {
                return Err(format!("role {parent:?} does not delegate to {child:?}"));
            };
            links.push(ChainLink {
                role: child.clone(),
                delegator: parent.clone(),
                grant,
            });
        }
        Ok(CapabilityChain { links })
    }

    /// The intersection of every level (`None` if some level is unreadable).
    pub fn effective(&self) -> Option<Capabilities> {
        let mut acc = Capabilities::unrestricted();
        for l in &self.links {
            match &l.grant {
                Grant::Unrestricted => {}
                Grant::Restricted(c) => acc = acc.intersect(c),
                Grant::Unreadable(_) => return None,
            }
        }
        Some(acc)
    }

    /// The role that signed the manifest (`targets` for an empty chain).
    pub fn signer(&self) -> &str {
        self.links.last().map_or("targets", |l| l.role.as_str())
    }

    /// A one-line description: `campaigns (unrestricted) → partner-acme (consent required; …)`.
    pub fn describe(&self) -> String {
        if self.links.is_empty() {
            return "targets (top-level, unrestricted)".into();
        }
        self.links
            .iter()
            .map(|l| match &l.grant {
                Grant::Unrestricted => format!("{} (unrestricted)", l.role),
                Grant::Restricted(c) => format!("{} ({})", l.role, c.summary()),
                Grant::Unreadable(e) => format!("{} (unreadable capabilities: {e})", l.role),
            })
            .collect::<Vec<_>>()
            .join(" -> ")
    }

    fn check_each(
        &self,
        f: impl Fn(&Capabilities) -> Result<(), (String, String)>,
    ) -> Result<(), CapabilityViolation> {
        for l in &self.links {
            let r = match &l.grant {
                Grant::Unrestricted => Ok(()),
                Grant::Restricted(c) => f(c),
                Grant::Unreadable(e) => Err((
                    CAPABILITIES_FIELD.to_string(),
                    format!(
                        "its capabilities cannot be read, so nothing it signs is accepted: {e}"
                    ),
                )),
            };
            r.map_err(|(field, reason)| CapabilityViolation {
                role: l.role.clone(),
                field,
                reason,
            })?;
        }
        Ok(())
    }

    /// Checks a campaign manifest against every level of the chain; the first level (from
    /// the top) that forbids it is named.
    pub fn check_campaign(
        &self,
        c: &CampaignManifest,
        now: DateTime<Utc>,
    ) -> Result<(), CapabilityViolation> {
        self.check_each(|caps| caps.check_campaign(c, now))
    }

    /// Checks a group manifest against every level of the chain.
    pub fn check_group(
        &self,
        g: &GroupManifest,
        now: DateTime<Utc>,
    ) -> Result<(), CapabilityViolation> {
        self.check_each(|caps| caps.check_group(g, now))
    }

    /// Checks an assignment bin against every level of the chain.
    pub fn check_assignment(
        &self,
        b: &AssignmentBin,
        now: DateTime<Utc>,
    ) -> Result<(), CapabilityViolation> {
        self.check_each(|caps| caps.check_assignment(b, now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    fn t(s: &str) -> DateTime<Utc> {
        UtcTime::parse(s).unwrap().0
    }

    fn partner() -> Capabilities {
        Capabilities::from_toml(
            r#"
schema_version = 1
kinds = ["campaign"]
consent_policies = ["required"]
methods = ["normal"]
groups = ["kiosk-eu"]
vendors = ["acme"]
expires = 2031-01-01T00:00:00Z
"#,
        )
        .unwrap()
    }

    fn campaign(extra: &str, consent: &str) -> CampaignManifest {
        CampaignManifest::from_toml(&format!(
            r#"
kind = "campaign"
schema_version = 1
id = "c"
revision = 1
state = "active"
{extra}
[notice.en]
title = "t"
body = "b"
severity = "info"
[consent]
policy = "{consent}"
[applies_to]
vendors = ["acme"]
[payload]
group = {{ id = "kiosk-eu", revision = 1 }}
"#
        ))
        .unwrap()
    }

    #[test]
    fn a_partner_key_opens_the_door_but_cannot_start_the_engine() {
        let chain = CapabilityChain::single("partner-acme", Some(partner()));
        let now = t("2030-01-01T00:00:00Z");
        chain
            .check_campaign(&campaign("", "required"), now)
            .unwrap();
        let e = chain
            .check_campaign(&campaign("", "none"), now)
            .unwrap_err();
        assert_eq!(e.field, "consent_policies");
        assert!(e.to_string().contains("\"none\""), "{e}");
        let forced = campaign(
            "method = \"forced\"\nforced_from = { \"a\" = [\"1\"] }",
            "required",
        );
        assert_eq!(
            chain.check_campaign(&forced, now).unwrap_err().field,
            "methods"
        );
        let e = chain
            .check_campaign(&campaign("", "required"), t("2031-01-01T00:00:00Z"))
            .unwrap_err();
        assert_eq!(e.field, "expires");
        let mut g = GroupManifest::new("kiosk-eu");
        g.revision = 2;
        assert_eq!(chain.check_group(&g, now).unwrap_err().field, "kinds");
    }

    #[test]
    fn every_level_of_the_chain_counts() {
        let mut top = Capabilities::unrestricted();
        top.groups = Some(BTreeSet::from(["kiosk-us".to_string()]));
        let chain = CapabilityChain {
            links: vec![
                ChainLink {
                    role: "campaigns".into(),
                    delegator: "targets".into(),
                    grant: Grant::Restricted(top),
                },
                ChainLink {
                    role: "partner-acme".into(),
                    delegator: "campaigns".into(),
                    grant: Grant::Restricted(partner()),
                },
            ],
        };
        let e = chain
            .check_campaign(&campaign("", "required"), t("2030-01-01T00:00:00Z"))
            .unwrap_err();
        assert_eq!(e.role, "campaigns");
        assert_eq!(chain.effective().unwrap().groups, Some(BTreeSet::new()));
    }

    #[test]
    fn unreadable_capabilities_refuse_everything() {
        let mut role = DelegatedRole {
            name: "p".into(),
            keyids: vec![],
            threshold: 1,
            terminating: true,
            paths: Some(vec!["campaigns/*".into()]),
            path_hash_prefixes: None,
            unrecognized: Unrecognized::new(),
        };
        assert_eq!(role.capabilities().unwrap(), None);
        role.set_capabilities(Some(&partner()));
        assert_eq!(role.capabilities().unwrap(), Some(partner()));
        role.unrecognized.insert(
            CAPABILITIES_FIELD.into(),
            serde_json::json!({"schema_version": 1, "may_fly": true}),
        );
        assert!(role.capabilities().is_err());
        role.unrecognized.insert(
            CAPABILITIES_FIELD.into(),
            serde_json::json!({"schema_version": 2}),
        );
        assert!(role
            .capabilities()
            .unwrap_err()
            .to_string()
            .contains("schema version 2"));
    }

    #[test]
    fn intersection_is_the_meet() {
        let mut a = Capabilities::unrestricted();
        a.consent_policies = Some(BTreeSet::from([
            ConsentPolicy::Required,
            ConsentPolicy::None,
        ]));
        a.expires = Some(UtcTime::parse("2031-01-01T00:00:00Z").unwrap());
        let mut b = Capabilities::unrestricted();
        b.consent_policies = Some(BTreeSet::from([
            ConsentPolicy::Required,
            ConsentPolicy::Acknowledge,
        ]));
        b.explicit_devices_only = true;
        let m = a.intersect(&b);
        assert_eq!(
            m.consent_policies,
            Some(BTreeSet::from([ConsentPolicy::Required]))
        );
        assert!(m.explicit_devices_only);
        assert_eq!(m.expires, a.expires);
        assert_eq!(a.intersect(&Capabilities::unrestricted()), a);
    }
}
