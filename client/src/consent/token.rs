//! Administrator consent tokens: a small signed JSON document by which the fleet's
//! administrator or owner agrees to a campaign for some devices, given to the devices out of
//! band (provisioning, a management console, a USB stick).
//!
//! ```json
//! {
//!   "signed": {
//!     "kind": "consent-token", "schema_version": 1,
//!     "campaign": "player-2.1", "manifest_sha256": "<64 hex>",
//!     "offer_sha256": "<64 hex, optional: also later revisions with this offer>",
//!     "devices": ["<hex(SHA-256(\"petrel-consent-v1\" || 0x00 || device_id))>"],
//!     "issued": "2030-03-01T00:00:00Z", "expires": "2030-04-01T00:00:00Z"
//!   },
//!   "signatures": [{"keyid": "<key id>", "sig": "<hex>"}]
//! }
//! ```
//!
//! Signatures cover the canonical JSON of `signed`. Instead of `devices`, a token may carry
//! a `selector` (the same fields as a campaign's `applies_to`).

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::decide::applicability::match_selectors;
use crate::decide::DeviceProfile;
use crate::manifest::{
    check_id, check_sha256_hex, salted_device_hash, Assignment, CampaignManifest, ConsentPolicy,
    ManifestHash, OfferHash, Problems, Selectors, UtcTime, ValidationError, SCHEMA_VERSION,
};
use crate::tuf::canonical;
use crate::tuf::keys::{KeyError, KeySource};
use crate::tuf::schema::{KeyId, Signature, Unrecognized};
use crate::tuf::verify::verify_threshold;

/// The salt of device hashes in consent tokens (part of the format).
pub const CONSENT_TOKEN_SALT: &str = "petrel-consent-v1";

/// The `kind` of a consent token.
pub const CONSENT_TOKEN_KIND: &str = "consent-token";

/// The signed part of an administrator consent token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentTokenBody {
    /// Always `consent-token`.
    pub kind: String,
    /// Always [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The campaign agreed to.
    pub campaign: String,
    /// SHA-256 of the exact campaign manifest agreed to.
    pub manifest_sha256: ManifestHash,
    /// SHA-256 of the campaign's offer ([`CampaignManifest::offer_sha256`]), if the token
    /// also counts for every later manifest of the campaign with the same offer (a new
    /// revision that only halts, resumes or widens the rollout). Absent: this exact
    /// manifest only. Agents that predate the field refuse a token that carries it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offer_sha256: Option<OfferHash>,
    /// Devices, as `hex(SHA-256("petrel-consent-v1" || 0x00 || device_id))`.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub devices: BTreeSet<String>,
    /// Or: every device matching these selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<Selectors>,
    /// When it was issued.
    pub issued: UtcTime,
    /// It is void at and after this instant.
    pub expires: UtcTime,
    /// Free text (who agreed, ticket number, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// A signed administrator consent token.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdminConsentToken {
    /// The signatures over the canonical JSON of `signed`.
    pub signatures: Vec<Signature>,
    /// The token.
    pub signed: ConsentTokenBody,
}

impl ConsentTokenBody {
    /// A token body for `campaign` (bound to `manifest_sha256`) and explicit device ids.
    pub fn for_devices<'a>(
        campaign: &str,
        manifest_sha256: ManifestHash,
        device_ids: impl IntoIterator<Item = &'a str>,
        issued: DateTime<Utc>,
        expires: DateTime<Utc>,
    ) -> ConsentTokenBody {
        ConsentTokenBody {
            kind: CONSENT_TOKEN_KIND.into(),
            schema_version: SCHEMA_VERSION,
            campaign: campaign.into(),
            manifest_sha256,
            offer_sha256: None,
            devices: device_ids
                .into_iter()
                .map(AdminConsentToken::device_hash)
                .collect(),
            selector: None,
            issued: issued.into(),
            expires: expires.into(),
            note: None,
        }
    }

    /// Checks the structure.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let mut p = Problems::new();
        if self.kind != CONSENT_TOKEN_KIND {
            p.push(
                "signed.kind",
                format!("is {:?}, expected {CONSENT_TOKEN_KIND:?}", self.kind),
            );
        }
        if self.schema_version != SCHEMA_VERSION {
            p.push(
                "signed.schema_version",
                format!("unknown schema version {}", self.schema_version),
            );
        }
        p.check("signed.campaign", check_id(&self.campaign));
        p.check(
            "signed.manifest_sha256",
            check_sha256_hex(&self.manifest_sha256.0),
        );
        if let Some(o) = &self.offer_sha256 {
            p.check("signed.offer_sha256", check_sha256_hex(&o.0));
        }
        match (self.devices.is_empty(), &self.selector) {
            (true, None) => p.push(
                "signed.devices",
                "a token names devices (hashed) or a selector",
            ),
            (false, Some(_)) => p.push(
                "signed.selector",
                "a token names devices or a selector, not both",
            ),
            _ => {}
        }
        for d in &self.devices {
            p.check("signed.devices", check_sha256_hex(d));
        }
        if let Some(s) = &self.selector {
            s.validate_into("signed.selector", &mut p);
        }
        if self.expires <= self.issued {
            p.push("signed.expires", "is not after issued");
        }
        p.finish("consent token")
    }
}

impl AdminConsentToken {
    /// The hash a token uses for `device_id`.
    pub fn device_hash(device_id: &str) -> String {
        salted_device_hash(CONSENT_TOKEN_SALT, device_id)
    }

    /// Signs `body` with each of `signers`.
    pub fn sign(
        body: ConsentTokenBody,
        signers: &[&dyn KeySource],
    ) -> Result<AdminConsentToken, KeyError> {
        let msg = canonical::to_canonical(&body).map_err(|e| KeyError::Sign(e.to_string()))?;
        let mut signatures = Vec::new();
        for s in signers {
            signatures.push(Signature {
                keyid: s.key_id().clone(),
                sig: hex::encode(s.sign(&msg)?),
                unrecognized: Unrecognized::new(),
            });
        }
        Ok(AdminConsentToken {
            signatures,
            signed: body,
        })
    }

    /// Parses a token and checks its structure (not its signatures: see
    /// [`AdminConsentToken::verify`]).
    pub fn from_json(bytes: &[u8]) -> Result<AdminConsentToken, ValidationError> {
        if bytes.len() > 1024 * 1024 {
            return Err(ValidationError::new(
                "consent token",
                "",
                "larger than 1 MiB",
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(bytes)
            .map_err(|e| ValidationError::new("consent token", "", format!("not JSON: {e}")))?;
        if let Some(n) = v.pointer("/signed/schema_version") {
            if n.as_u64() != Some(SCHEMA_VERSION as u64) {
                return Err(ValidationError::new(
                    "consent token",
                    "signed.schema_version",
                    format!("unknown schema version {n}; this client reads only {SCHEMA_VERSION}"),
                ));
            }
        }
        let t: AdminConsentToken = serde_json::from_value(v)
            .map_err(|e| ValidationError::new("consent token", "", e.to_string()))?;
        t.signed.validate()?;
        Ok(t)
    }

    /// The token as JSON bytes.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("token serializes")
    }

    /// Verifies the token for `campaign` (whose exact bytes hash to `manifest_sha256`), this
    /// device, at `now`: structure, campaign id and manifest hash (or, with
    /// `offer_sha256`, the campaign's offer hash), expiry, that the device
    /// is named or matches the selector, and a threshold of signatures by the campaign's
    /// administrator keys. Returns why it does not count.
    pub fn verify(
        &self,
        campaign: &CampaignManifest,
        manifest_sha256: &ManifestHash,
        profile: &DeviceProfile,
        assignment: Option<&Assignment>,
        now: DateTime<Utc>,
    ) -> Result<(), String> {
        let b = &self.signed;
        b.validate().map_err(|e| e.to_string())?;
        if campaign.consent.policy != ConsentPolicy::Administrator {
            return Err(format!(
                "campaign {} uses consent policy {:?}, not administrator",
                campaign.id,
                campaign.consent.policy.as_str()
            ));
        }
        if b.campaign != campaign.id {
            return Err(format!(
                "the token is for campaign {:?}, not {:?}",
                b.campaign, campaign.id
            ));
        }
        if b.manifest_sha256 != *manifest_sha256 {
            match &b.offer_sha256 {
                None => {
                    return Err(format!(
                        "the token is for manifest {}, the campaign is now {} (a changed campaign needs a new token, or a token with offer_sha256 to cover later revisions with the same offer)",
                        b.manifest_sha256.short(),
                        manifest_sha256.short()
                    ))
                }
                Some(o) => {
                    let offer = campaign.offer_sha256();
                    if *o != offer {
                        return Err(format!(
                            "the token is for offer {}, the campaign's offer is now {} (its notice, payload, consent policy or method changed: a new token is needed)",
                            o.short(),
                            offer.short()
                        ));
                    }
                }
            }
        }
        if now >= b.expires.0 {
            return Err(format!("the token expired at {}", b.expires));
        }
        if now < b.issued.0 {
            return Err(format!("the token is issued in the future ({})", b.issued));
        }
        if let Some(sel) = &b.selector {
            match_selectors(sel, profile, assignment, &campaign.id).map_err(|bad| {
                format!(
                    "the device does not match the token's selector: {}",
                    bad.join("; ")
                )
            })?;
        } else if !b.devices.contains(&Self::device_hash(&profile.id)) {
            return Err("the token does not name this device".into());
        }
        let msg = canonical::to_canonical(b).map_err(|e| e.to_string())?;
        let keys = &campaign.consent.administrator_keys;
        let keyids: Vec<KeyId> = keys.keys().cloned().collect();
        verify_threshold(
            "administrator consent",
            &msg,
            &self.signatures,
            &keyids,
            campaign.consent.administrator_threshold,
            keys,
        )
        .map_err(|e| e.to_string())?;
        Ok(())
    }
}
