//! `residence_change`: the vehicle spends nights far from its home cluster — the borrower
//! moved away, or the car was handed over. Night locations come from [`crate::days`].

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::AlertKind;

use crate::ctx::{Ctx, evidence};
use crate::days::NightLocations;
use crate::geo::haversine_m;
use crate::kinds::Dev;

/// State of one vehicle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ResidenceChange {
    /// Consecutive nights away so far.
    away: u32,
    /// Fired for the current absence (re-arms on a night at home).
    fired: bool,
}

impl ResidenceChange {
    /// Handles the night location `at` sampled at `sample_ms`, with `nights` of history
    /// before it and the previous night locations; records it afterwards.
    pub fn on_night(
        &mut self,
        sample_ms: i64,
        at: (f64, f64),
        nights: u32,
        locations: &mut NightLocations,
        dev: Dev<'_>,
        ctx: &mut Ctx<'_>,
    ) {
        let rules = &ctx.rules.residence_change;
        let keep = rules.history_nights as usize;
        // Home comes from the nights before this one; it is only needed once history counts.
        let home = (rules.enabled && nights >= rules.min_history_nights)
            .then(|| locations.home(rules.cluster_m))
            .flatten();
        locations.push(at.0, at.1, keep);
        let Some((home, home_nights)) = home else {
            return;
        };
        let distance_m = haversine_m(home.0, home.1, at.0, at.1);
        if distance_m <= rules.distance_m {
            self.away = 0;
            self.fired = false;
            return;
        }
        self.away += 1;
        if self.away >= rules.nights && !self.fired {
            self.fired = true;
            let ev = evidence(json!({
                "home_lat": home.0,
                "home_lon": home.1,
                "home_nights": home_nights,
                "night_lat": at.0,
                "night_lon": at.1,
                "distance_m": distance_m.round(),
                "nights_away": self.away,
                "min_distance_m": rules.distance_m,
            }));
            let saved = ctx.position.replace(at);
            ctx.instant(AlertKind::ResidenceChange, dev.id, sample_ms, ev);
            ctx.position = saved;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RulesConfig;
    use crate::fences::FenceIndex;
    use crate::kinds::testing::{dev, summary, with_ctx};
    use schemas::{DeviceClass, Phase};

    fn run(nights: &[(f64, f64)]) -> Vec<(AlertKind, Phase, i64)> {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let mut k = ResidenceChange::default();
        let mut locations = NightLocations::default();
        let dev = dev(DeviceClass::Wired);
        summary(&with_ctx(&rules, &fences, &[], None, |ctx| {
            for (n, at) in nights.iter().enumerate() {
                k.on_night(
                    n as i64 * 86_400_000,
                    *at,
                    n as u32,
                    &mut locations,
                    dev,
                    ctx,
                );
            }
        }))
    }

    const HOME: (f64, f64) = (31.0, 121.0);
    const AWAY: (f64, f64) = (31.2, 121.0);

    #[test]
    fn three_nights_away_after_two_weeks_fire_once() {
        let mut nights = vec![HOME; 15];
        nights.extend([AWAY; 6]);
        assert_eq!(
            run(&nights),
            vec![(AlertKind::ResidenceChange, Phase::Instant, 17 * 86_400)]
        );
        // Back home re-arms; away again fires again.
        nights.extend([HOME; 2]);
        nights.extend([AWAY; 3]);
        assert_eq!(run(&nights).len(), 2);
    }

    #[test]
    fn too_little_history_or_short_trips_are_quiet() {
        let mut early = vec![HOME; 5];
        early.extend([AWAY; 5]);
        assert!(run(&early).is_empty());
        let mut trips = vec![HOME; 15];
        for _ in 0..4 {
            trips.extend([AWAY, AWAY, HOME]);
        }
        assert!(run(&trips).is_empty());
    }
}
