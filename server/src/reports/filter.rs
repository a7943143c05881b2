//! Query strings of the fleet endpoint and the dashboard: parsing and filtering a [`FleetView`].

use super::fleet::FleetView;

/// Device states a `state=` filter accepts. `pending` stands for every state that is
/// neither `succeeded` nor `failed` (overdue included), as in the stage counts.
pub const STATES: &[&str] = &[
    "succeeded",
    "failed",
    "pending",
    "overdue",
    "staged",
    "declined",
    "installed_pending_reboot",
    "not_reported",
];

/// The filters of `GET /v1/reports/fleet` (and of the dashboard).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetQuery {
    /// Only this campaign (and devices it counts).
    pub campaign: Option<String>,
    /// Only devices in this state (in `campaign`, if given; else in any campaign).
    pub state: Option<String>,
    /// Only devices in this wave (1-based).
    pub wave: Option<u32>,
}

/// Why a filter cannot be applied to a view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FilterError {
    /// No published campaign has this id.
    UnknownCampaign(String),
    /// The campaign has no such wave.
    NoSuchWave {
        /// The campaign.
        campaign: String,
        /// The wave asked for.
        wave: u32,
    },
}

impl std::fmt::Display for FilterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FilterError::UnknownCampaign(id) => write!(f, "no published campaign {id:?}"),
            FilterError::NoSuchWave { campaign, wave } => {
                write!(f, "campaign {campaign:?} has no wave {wave}")
            }
        }
    }
}

/// The `key=value` pairs of a query string, percent-decoded (`+` is a space), in order.
pub fn params(query: &str) -> Result<Vec<(String, String)>, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((super::percent_decode(k)?, super::percent_decode(v)?))
        })
        .collect()
}

impl FleetQuery {
    /// Reads the filters from `pairs`; `extra` names further parameters the caller
    /// handles itself. Unknown or repeated parameters, empty values, an unknown state
    /// and a wave that is not a positive number are errors.
    pub fn from_params(pairs: &[(String, String)], extra: &[&str]) -> Result<FleetQuery, String> {
        let mut q = FleetQuery::default();
        let mut seen: Vec<&str> = Vec::new();
        for (k, v) in pairs {
            if seen.contains(&k.as_str()) {
                return Err(format!("parameter {k:?} is given more than once"));
            }
            seen.push(k);
            if extra.contains(&k.as_str()) {
                continue;
            }
            let known = matches!(k.as_str(), "campaign" | "state" | "wave");
            if !known {
                let mut names = vec!["campaign", "state", "wave"];
                names.extend_from_slice(extra);
                return Err(format!(
                    "unknown parameter {k:?}; the parameters are {}",
                    names.join(", ")
                ));
            }
            if v.is_empty() {
                return Err(format!("parameter {k:?} is empty"));
            }
            match k.as_str() {
                "campaign" => q.campaign = Some(v.clone()),
                "state" => {
                    if !STATES.contains(&v.as_str()) {
                        return Err(format!(
                            "unknown state {v:?}; the states are {}",
                            STATES.join(", ")
                        ));
                    }
                    q.state = Some(v.clone());
                }
                _ => {
                    let wave = v
                        .parse::<u32>()
                        .ok()
                        .filter(|w| *w >= 1)
                        .filter(|_| v.bytes().all(|b| b.is_ascii_digit()))
                        .ok_or_else(|| format!("wave {v:?} is not a wave number (1, 2, …)"))?;
                    q.wave = Some(wave);
                }
            }
        }
        Ok(q)
    }

    /// Reads the filters of a whole query string (no other parameter allowed).
    pub fn parse(query: Option<&str>) -> Result<FleetQuery, String> {
        FleetQuery::from_params(&params(query.unwrap_or(""))?, &[])
    }

    /// Whether any filter is set.
    pub fn is_empty(&self) -> bool {
        self == &FleetQuery::default()
    }

    fn state_matches(&self, state: &str) -> bool {
        match self.state.as_deref() {
            None => true,
            Some("pending") => state != "succeeded" && state != "failed",
            Some(s) => s == state,
        }
    }

    /// Applies the filters: with `campaign`, only that campaign is listed, and each
    /// device lists only its state in it; devices are kept when one of their campaign
    /// states matches every filter given (campaign, state, and stage `wave N`).
    pub fn apply(&self, mut view: FleetView) -> Result<FleetView, FilterError> {
        if self.is_empty() {
            return Ok(view);
        }
        if let Some(id) = &self.campaign {
            let Some(c) = view.campaigns.iter().find(|c| &c.id == id) else {
                return Err(FilterError::UnknownCampaign(id.clone()));
            };
            if let Some(wave) = self.wave {
                if !c.stages.iter().any(|s| s.wave == Some(wave)) {
                    return Err(FilterError::NoSuchWave {
                        campaign: id.clone(),
                        wave,
                    });
                }
            }
            view.campaigns.retain(|c| &c.id == id);
        }
        let stage = self.wave.map(|w| format!("wave {w}"));
        view.devices.retain_mut(|d| {
            if let Some(id) = &self.campaign {
                d.campaigns.retain(|c| &c.campaign == id);
            }
            d.campaigns.iter().any(|c| {
                self.state_matches(&c.state) && stage.as_ref().is_none_or(|s| &c.stage == s)
            })
        });
        Ok(view)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fleet_query_reads_every_filter_percent_decoded() {
        let q = FleetQuery::parse(Some("campaign=player%2D2.1&state=failed&wave=2")).unwrap();
        assert_eq!(
            q,
            FleetQuery {
                campaign: Some("player-2.1".into()),
                state: Some("failed".into()),
                wave: Some(2),
            }
        );
        assert!(FleetQuery::parse(None).unwrap().is_empty());
        assert!(FleetQuery::parse(Some("")).unwrap().is_empty());
    }

    #[test]
    fn fleet_query_refuses_what_it_cannot_mean() {
        for (query, needle) in [
            ("state=broken", "unknown state \"broken\""),
            ("wave=0", "not a wave number"),
            ("wave=+1", "not a wave number"),
            ("wave=two", "not a wave number"),
            ("wave=99999999999", "not a wave number"),
            ("campaign=", "is empty"),
            ("campaign=a&campaign=b", "more than once"),
            ("colour=red", "unknown parameter \"colour\""),
            ("campaign=%zz", "bad percent-escape"),
        ] {
            let e = FleetQuery::parse(Some(query)).unwrap_err();
            assert!(e.contains(needle), "{query}: {e}");
        }
    }

    #[test]
    fn extra_parameters_are_left_to_the_caller() {
        let pairs = params("q=kiosk&wave=1").unwrap();
        let q = FleetQuery::from_params(&pairs, &["q", "token"]).unwrap();
        assert_eq!(q.wave, Some(1));
        assert!(FleetQuery::from_params(&pairs, &[]).is_err());
    }
}
