//! Phased rollout on the device: the per-device, per-campaign seed and the wave it selects.

use chrono::{DateTime, Utc};

use crate::manifest::{CampaignManifest, FLEET_BP};

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
    /// Beyond the last wave's share: not in this rollout (yet).
    Beyond {
        /// The share the last wave reaches.
        covered_bp: u32,
    },
}

impl Position {
    /// When the device's turn comes (`None`: already at any time, or never for
    /// [`Position::AfterCanaries`] / [`Position::Beyond`]).
    pub fn opens_at(&self) -> Option<DateTime<Utc>> {
        match self {
            Position::Canary { opens_at } | Position::Everyone { opens_at } => *opens_at,
            Position::Wave { opens_at, .. } => Some(*opens_at),
            Position::AfterCanaries | Position::Beyond { .. } => None,
        }
    }

    /// Whether the device's turn has come at `now`. Monotone: once true, true at every
    /// later instant (for the same manifest).
    pub fn is_open(&self, now: DateTime<Utc>) -> bool {
        match self {
            Position::AfterCanaries | Position::Beyond { .. } => false,
            _ => self.opens_at().is_none_or(|t| now >= t),
        }
    }
}

/// The device's position in `campaign`'s rollout.
pub fn position(campaign: &CampaignManifest, device_id: &str, is_canary: bool) -> Position {
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
    let bp = seed_bp(wave_seed(device_id, &campaign.id));
    match r.waves.iter().position(|w| bp < w.share_bp) {
        Some(index) => {
            let start = r.waves[index].start.0;
            Position::Wave {
                index,
                opens_at: not_before.map_or(start, |nb| nb.max(start)),
            }
        }
        None => Position::Beyond {
            covered_bp: r.waves.last().map_or(0, |w| w.share_bp),
        },
    }
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
