//! Phased rollout on the device: the per-device, per-campaign seed and the wave it selects.
//!
//! A device belongs to the first wave that selects it: every selector the wave sets
//! matches the device (matched by [`check_selectors`], the code that matches a campaign's
//! `applies_to`), and the device's seed falls below the wave's `share_bp`, if it sets one.
//! Only the device's own profile and id go in: its wave never depends on any other device.

use chrono::{DateTime, Utc};

use crate::decide::applicability::{check_selectors, SelectorCheck};
use crate::decide::profile::DeviceProfile;
use crate::manifest::{CampaignManifest, Wave, FLEET_BP};

/// The device's stable seed for a campaign: the first 8 bytes (big-endian) of
/// `SHA-256(device_id || 0x00 || campaign_id)`. The same every time, different per campaign
/// so that the same devices are not always first.
pub fn wave_seed(device_id: &str, campaign_id: &str) -> u64 {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(device_id.as_bytes());
    ctx.update(&[0]);
    ctx.update(campaign_id.as_bytes());
    let d = ctx.finish();
    let mut b = [0u8; 8];
    b.copy_from_slice(&d.as_ref()[..8]);
    u64::from_be_bytes(b)
}

/// The seed as a fraction of the fleet in `[0, 1)`.
pub fn seed_fraction(seed: u64) -> f64 {
    seed as f64 / 18_446_744_073_709_551_616.0
}

/// The seed in basis points, `0..10000`: `floor(seed / 2^64 * 10000)`, computed exactly.
pub fn seed_bp(seed: u64) -> u32 {
    ((seed as u128 * FLEET_BP as u128) >> 64) as u32
}

/// Where a device stands in a campaign's rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Position {
    /// A canary device in a campaign with a canary stage: goes first.
    Canary {
        /// When it may start (the campaign's `not_before`, if any).
        opens_at: Option<DateTime<Utc>>,
    },
    /// Not a canary, and the canaries have not passed yet.
    AfterCanaries,
    /// In wave `index` (0-based), which opens at `opens_at`.
    Wave {
        /// 0-based wave index.
        index: usize,
        /// Opening instant (the wave's start, or `not_before` if later).
        opens_at: DateTime<Utc>,
    },
    /// No waves: everyone at once.
    Everyone {
        /// When (the campaign's `not_before`, if any).
        opens_at: Option<DateTime<Utc>>,
    },
    /// Beyond the last wave's share: not in this rollout (yet). Only for waves by share
    /// alone.
    Beyond {
        /// The share the last wave reaches.
        covered_bp: u32,
    },
    /// Waves select by device attributes, and none selects this device: not in this
    /// rollout (until a revision adds a wave for it).
    NoWave {
        /// Why, in words (`region eu-west matches no wave's regions`).
        reason: String,
    },
    /// A gated rollout: the device is in wave `index` (0-based), which opens only when
    /// `rollout advance` finds the stage before it healthy and signs a revision that
    /// opens it.
    Gated {
        /// 0-based wave index.
        index: usize,
    },
}

impl Position {
    /// When the device's turn comes (`None`: already at any time, or never for
    /// [`Position::AfterCanaries`] / [`Position::Beyond`]).
    pub fn opens_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Position::Canary { opens_at } | Position::Everyone { opens_at } => *opens_at,
            Position::Wave { opens_at, .. } => Some(*opens_at),
            Position::AfterCanaries
            | Position::Beyond { .. }
            | Position::NoWave { .. }
            | Position::Gated { .. } => None,
        }
    }

    /// Whether the device's turn has come at `now`. Monotone: once true, true at every
    /// later instant (for the same manifest).
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        match self {
            Position::AfterCanaries
            | Position::Beyond { .. }
            | Position::NoWave { .. }
            | Position::Gated { .. } => false,
            _ => self.opens_at().is_none_or(|t| now >= t),
        }
    }
}

/// How one wave judged the device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaveCheck {
    /// Each selector the wave sets, matched against the device.
    pub selectors: Vec<SelectorCheck>,
    /// The wave's share, if it sets one, and whether the device's seed falls below it.
    pub share: Option<(u32, bool)>,
}

impl WaveCheck {
    /// Whether the wave selects the device.
    pub fn selects(&self) -> bool {
        self.selectors.iter().all(|c| c.matched) && self.share.is_none_or(|(_, inside)| inside)
    }

    /// Why the wave selects the device, short (`region eu-west; seed 4.2 % below 10 %`).
    pub fn why_in(&self, seed_bp: u32) -> String {
        let mut parts: Vec<String> = self.selectors.iter().map(|c| c.device.clone()).collect();
        if let Some((bp, _)) = self.share {
            parts.push(format!(
                "the device's seed {} is below its share {}",
                percent(seed_bp),
                percent(bp)
            ));
        }
        if parts.is_empty() {
            parts.push("every device not in an earlier wave".into());
        }
        parts.join("; ")
    }

    /// Why the wave does not select the device.
    pub fn why_not(&self, seed_bp: u32) -> String {
        let mut parts: Vec<String> = self
            .selectors
            .iter()
            .filter(|c| !c.matched)
            .map(|c| c.detail.clone())
            .collect();
        if let Some((bp, false)) = self.share {
            parts.push(format!(
                "the device's seed {} is not below its share {}",
                percent(seed_bp),
                percent(bp)
            ));
        }
        parts.join("; ")
    }
}

/// Matches one wave against the device (`seed_bp`: the device's seed for the campaign).
pub fn check_wave(wave: &Wave, profile: &DeviceProfile, seed_bp: u32) -> WaveCheck {
    WaveCheck {
        selectors: check_selectors(&wave.selectors(), profile, None, "", "the wave"),
        share: wave.share_bp.map(|bp| (bp, seed_bp < bp)),
    }
}

/// The first wave of `campaign` that selects the device (0-based), with every wave's
/// judgement up to it (all of them when none does).
pub fn place(
    campaign: &CampaignManifest,
    profile: &DeviceProfile,
) -> (Option<usize>, Vec<WaveCheck>) {
    let bp = seed_bp(wave_seed(&profile.id, &campaign.id));
    let mut checks = Vec::new();
    for w in &campaign.rollout.waves {
        let c = check_wave(w, profile, bp);
        let selects = c.selects();
        checks.push(c);
        if selects {
            return (Some(checks.len() - 1), checks);
        }
    }
    (None, checks)
}

/// Why no wave of `campaign` selects the device, given every wave's judgement.
pub fn no_wave_reason(campaign: &CampaignManifest, checks: &[WaveCheck], seed_bp: u32) -> String {
    let waves = &campaign.rollout.waves;
    // One selector every wave sets and none matches: say so in one line.
    let first_field = checks.first().and_then(|c| {
        c.selectors
            .iter()
            .find(|s| {
                !s.matched
                    && checks
                        .iter()
                        .all(|o| o.selectors.iter().any(|x| x.field == s.field && !x.matched))
            })
            .cloned()
    });
    if let Some(s) = first_field {
        return if s.device.starts_with("no ") {
            format!(
                "the device has {}, and every wave selects by {}",
                s.device, s.field
            )
        } else {
            format!("{} matches no wave's {}", s.device, s.field)
        };
    }
    let matching: Vec<usize> = checks
        .iter()
        .enumerate()
        .filter(|(_, c)| c.selectors.iter().all(|s| s.matched))
        .map(|(i, _)| i)
        .collect();
    if !matching.is_empty() {
        let list: Vec<String> = matching
            .iter()
            .map(|i| format!("wave {} ({})", i + 1, waves[*i].describe()))
            .collect();
        return format!(
            "the device's seed {} is not below the share of any wave it matches: {}",
            percent(seed_bp),
            list.join(", ")
        );
    }
    checks
        .iter()
        .enumerate()
        .map(|(i, c)| {
            format!(
                "wave {} ({}): {}",
                i + 1,
                waves[i].describe(),
                c.why_not(seed_bp)
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// The device's position in `campaign`'s rollout.
pub fn position(campaign: &CampaignManifest, profile: &DeviceProfile, is_canary: bool) -> Position {
    let r = &campaign.rollout;
    let not_before = campaign.schedule.not_before.map(|t| t.0);
    if r.canary {
        if is_canary {
            return Position::Canary {
                opens_at: not_before,
            };
        }
        if !r.canary_passed {
            return Position::AfterCanaries;
        }
    }
    if r.waves.is_empty() {
        return Position::Everyone {
            opens_at: not_before,
        };
    }
    match place(campaign, profile) {
        (Some(index), _) => {
            let opened = index < r.opened.len() || (index == 0 && !r.canary);
            if r.gates.is_some() && !opened {
                return Position::Gated { index };
            }
            let start = r.waves[index].start.0;
            Position::Wave {
                index,
                opens_at: not_before.map_or(start, |nb| nb.max(start)),
            }
        }
        (None, checks) if r.has_selectors() => Position::NoWave {
            reason: no_wave_reason(
                campaign,
                &checks,
                seed_bp(wave_seed(&profile.id, &campaign.id)),
            ),
        },
        (None, _) => Position::Beyond {
            covered_bp: r.waves.iter().map(Wave::share_or_all).max().unwrap_or(0),
        },
    }
}

/// What passes the canary stage (`wave: None`) or opens wave `wave` (0-based) of a gated
/// rollout, in words, with the figures `rollout advance` last signed for the stage before
/// it: `opens when wave 1 has ≥ 95 % succeeded and ≤ 5 % failed (now 71 % succeeded, 2 %
/// failed of 48 devices, signed 2026-12-02 10:00:00 UTC)`. `None` without gates.
pub fn gate_condition(campaign: &CampaignManifest, wave: Option<usize>) -> Option<String> {
    let r = &campaign.rollout;
    let g = r.gates.as_ref()?;
    let soak = |secs: u64| {
        if secs == 0 {
            String::new()
        } else {
            format!(", for at least {} after it opened", human_secs(secs))
        }
    };
    let (stage, mut text) = match wave {
        None | Some(0) if r.canary => (
            "canaries".to_string(),
            format!(
                "opens when at least {} canary device(s) succeeded and at most {} failed{}",
                g.canary_min_succeeded,
                g.canary_max_failed,
                soak(g.canary_soak_secs)
            ),
        ),
        None | Some(0) => {
            return Some(format!(
                "opens at its start, {}",
                r.waves
                    .first()
                    .map_or("now".into(), |w| w.start.to_string())
            ))
        }
        Some(k) => (
            format!("wave {k}"),
            format!(
                "opens when wave {k} has ≥ {} succeeded and ≤ {} failed{}",
                percent(g.wave_min_succeeded_bp),
                percent(g.wave_max_failed_bp),
                soak(g.wave_soak_secs)
            ),
        ),
    };
    match &r.progress {
        Some(p) if p.stage == stage => {
            let failed = crate::manifest::share_bp(p.failed, p.devices);
            let overdue = if p.overdue > 0 {
                format!(", {} overdue", p.overdue)
            } else {
                String::new()
            };
            if stage == "canaries" {
                text.push_str(&format!(
                    " (now {} succeeded, {} failed{overdue} of {} canaries, signed {})",
                    p.succeeded, p.failed, p.devices, p.evaluated_at
                ));
            } else {
                text.push_str(&format!(
                    " (now {} succeeded, {} failed{overdue} of {} device(s), signed {})",
                    percent(p.succeeded_bp()),
                    percent(failed),
                    p.devices,
                    p.evaluated_at
                ));
            }
        }
        _ => text.push_str(" (no figures signed yet)"),
    }
    Some(text)
}

/// `5400` → `1 h 30 min`; `45` → `45 s`.
pub fn human_secs(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    let mut parts = Vec::new();
    if d > 0 {
        parts.push(format!("{d} d"));
    }
    if h > 0 {
        parts.push(format!("{h} h"));
    }
    if m > 0 {
        parts.push(format!("{m} min"));
    }
    if s > 0 || parts.is_empty() {
        parts.push(format!("{s} s"));
    }
    parts.join(" ")
}

/// `1234` bp → `12.34 %`.
pub fn percent(bp: u32) -> String {
    if bp.is_multiple_of(100) {
        format!("{} %", bp / 100)
    } else {
        format!("{}.{:02} %", bp / 100, bp % 100)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_matches_the_documented_construction() {
        let d = ring::digest::digest(&ring::digest::SHA256, b"dev-1\0camp-a");
        let expect = u64::from_be_bytes(d.as_ref()[..8].try_into().unwrap());
        assert_eq!(wave_seed("dev-1", "camp-a"), expect);
        assert_ne!(wave_seed("dev-1", "camp-a"), wave_seed("dev-1", "camp-b"));
        assert_eq!(seed_bp(0), 0);
        assert_eq!(seed_bp(u64::MAX), 9999);
        assert_eq!(seed_bp(1 << 63), 5000);
        assert_eq!(percent(1234), "12.34 %");
        assert_eq!(percent(100), "1 %");
    }
}
