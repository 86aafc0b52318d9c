//! The per-vehicle position chain (SPEC §4a "Fix quality", "GNSS distance"): valid fixes of
//! all the vehicle's devices, in event-time order, held one fix back so a drift outlier can
//! be recognised by its successor. Position rules only ever see accepted fixes, which makes
//! every position alert confirmed by the following fix.

use serde::{Deserialize, Serialize};

use crate::config::RulesConfig;
use crate::geo::{haversine_m, implied_speed_kmh};
use crate::packed::Packed;

/// Below this distance an implied speed is not trusted: two devices of one vehicle may report
/// the same second a few metres apart.
const MIN_FAST_STEP_M: f64 = 100.0;

/// A valid fix of one of the vehicle's devices.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Fix {
    /// Event time.
    pub ts_ms: i64,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
    /// Index of the reporting device in the vehicle's device list.
    pub device: u16,
    /// Ignition reported with the fix; `None` = unknown.
    pub ignition: Option<bool>,
    /// Speed reported with the fix (OBD, else GNSS).
    pub speed_kmh: Packed<f32>,
}

impl Fix {
    /// Whether the vehicle was parked at this fix: ignition explicitly off, or standing still.
    pub fn parked(&self) -> bool {
        self.ignition == Some(false) || self.speed_kmh.get().is_some_and(|s| s < 5.0)
    }

    /// Great-circle distance to another fix.
    pub fn distance_m(&self, other: &Fix) -> f64 {
        haversine_m(self.lat, self.lon, other.lat, other.lon)
    }
}

/// A newly accepted fix, the accepted fix before it and the valid fix after it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Step {
    /// The previous accepted fix, if any.
    pub prev: Option<Fix>,
    /// The fix just accepted.
    pub fix: Fix,
    /// The valid fix that followed it (and decided it was no outlier): rules that fire on a
    /// single fix check that it confirms the new position (SPEC §4a).
    pub next: Fix,
    /// Distance from `prev`, metres (0 without `prev`).
    pub dist_m: f64,
    /// Time since `prev`, milliseconds (0 without `prev`).
    pub dt_ms: i64,
    /// Whether the step is driven distance (not jitter, a gap or a jump).
    pub counted: bool,
    /// What the step added to the GNSS distance, metres.
    pub counted_m: f64,
}

impl Step {
    /// A step without neighbours (tests of single kinds).
    #[cfg(test)]
    pub fn lone(fix: Fix) -> Self {
        Self {
            prev: None,
            fix,
            next: fix,
            dist_m: 0.0,
            dt_ms: 0,
            counted: false,
            counted_m: 0.0,
        }
    }

    /// Implied speed from `prev`, km/h.
    pub fn speed_kmh(&self) -> f64 {
        implied_speed_kmh(self.dist_m, self.dt_ms.max(1000))
    }
}

/// The chain state of one vehicle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PositionChain {
    pending: Option<Fix>,
    accepted: Option<Fix>,
    /// GNSS distance driven so far, metres.
    pub distance_m: f64,
    /// Steps left out of the distance as displacement (gaps, jumps) so far: a ratio of
    /// odometer to GNSS distance is meaningful only between two equal counts. (`u32`s pack
    /// the chain in 8 bytes less; bincode writes both widths alike, and a vehicle would need
    /// centuries of readings to count past them.)
    pub breaks: u32,
    /// Drift outliers dropped so far.
    pub outliers: u32,
}

fn fast(a: &Fix, b: &Fix, limit_kmh: f64) -> bool {
    fast_over(a.distance_m(b), a, b, limit_kmh)
}

/// [`fast`] with the distance from `a` to `b` already known.
fn fast_over(d: f64, a: &Fix, b: &Fix, limit_kmh: f64) -> bool {
    d > MIN_FAST_STEP_M && implied_speed_kmh(d, (b.ts_ms - a.ts_ms).abs().max(1000)) > limit_kmh
}

impl PositionChain {
    /// The last accepted fix.
    pub fn last_accepted(&self) -> Option<&Fix> {
        self.accepted.as_ref()
    }

    /// The valid fix held back until the next one decides it.
    pub fn held(&self) -> Option<&Fix> {
        self.pending.as_ref()
    }

    /// Feeds the next valid fix. Returns the step of the fix this one confirmed, if the held
    /// fix was not a drift outlier.
    pub fn push(&mut self, fix: Fix, rules: &RulesConfig) -> Option<Step> {
        let held = self.pending.replace(fix)?;
        let Some(prev) = self.accepted.replace(held) else {
            return Some(Step {
                prev: None,
                fix: held,
                next: fix,
                dist_m: 0.0,
                dt_ms: 0,
                counted: false,
                counted_m: 0.0,
            });
        };
        // The one distance from the accepted fix to the held one, for the drift test, the
        // step and its judgement.
        let dist_m = prev.distance_m(&held);
        let limit = rules.drift_speed_kmh;
        if fast_over(dist_m, &prev, &held, limit) && fast(&held, &fix, limit) {
            self.accepted = Some(prev);
            self.outliers += 1;
            return None;
        }
        let mut step = Step {
            prev: Some(prev),
            fix: held,
            next: fix,
            dist_m,
            dt_ms: held.ts_ms - prev.ts_ms,
            counted: false,
            counted_m: 0.0,
        };
        match judge(&prev, &held, dist_m, rules) {
            Judged::Displaced => self.breaks += 1,
            Judged::Jitter => {}
            Judged::Driven => {
                step.counted = true;
                step.counted_m = dist_m;
                self.distance_m += dist_m;
            }
        }
        Some(step)
    }

    /// What the held fix's step will add once the next fix accepts it: `(time, counted,
    /// metres, duration)`. Known already: a fix that may still turn out to be a drift outlier
    /// is fast from its predecessor, and such a step is displacement either way.
    pub fn held_step(&self, rules: &RulesConfig) -> Option<(i64, bool, f64, i64)> {
        let held = self.pending?;
        let Some(prev) = &self.accepted else {
            return Some((held.ts_ms, false, 0.0, 0));
        };
        let d = prev.distance_m(&held);
        let driven = judge(prev, &held, d, rules) == Judged::Driven;
        let dist = if driven { d } else { 0.0 };
        Some((held.ts_ms, driven, dist, held.ts_ms - prev.ts_ms))
    }
}

/// How a step between accepted fixes counts in the GNSS distance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Judged {
    /// Driven distance.
    Driven,
    /// Standing still: steps below `jitter_m` while parked.
    Jitter,
    /// A gap, or a step too fast to drive (a jump): displacement, not driving.
    Displaced,
}

/// Judges the step from `prev` to `fix`, `dist_m` apart.
fn judge(prev: &Fix, fix: &Fix, dist_m: f64, rules: &RulesConfig) -> Judged {
    let dt_ms = fix.ts_ms - prev.ts_ms;
    if dt_ms > crate::config::secs_ms(rules.distance_gap_s)
        || fast_over(dist_m, prev, fix, rules.drift_speed_kmh)
    {
        Judged::Displaced
    } else if dist_m < rules.jitter_m && prev.parked() && fix.parked() {
        Judged::Jitter
    } else {
        Judged::Driven
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fix(ts_s: i64, lat: f64, lon: f64) -> Fix {
        Fix {
            ts_ms: ts_s * 1000,
            lat,
            lon,
            device: 0,
            ignition: Some(false),
            speed_kmh: Packed::some(0.0),
        }
    }

    #[test]
    fn single_drift_fix_is_dropped() {
        let rules = RulesConfig::default();
        let mut c = PositionChain::default();
        assert!(c.push(fix(0, 31.0, 121.0), &rules).is_none());
        assert!(c.push(fix(60, 31.0, 121.0001), &rules).is_some());
        // 20 km away for one fix, then back.
        assert!(c.push(fix(120, 31.18, 121.0), &rules).is_some());
        assert!(
            c.push(fix(180, 31.0, 121.0002), &rules).is_none(),
            "drift fix must be dropped"
        );
        assert_eq!(c.outliers, 1);
        let step = c.push(fix(240, 31.0, 121.0), &rules).unwrap();
        assert!(step.dist_m < 30.0);
        assert!(c.distance_m < 30.0, "jitter while parked is no distance");
    }

    #[test]
    fn confirmed_relocation_is_accepted() {
        let rules = RulesConfig::default();
        let mut c = PositionChain::default();
        c.push(fix(0, 31.0, 121.0), &rules);
        c.push(fix(60, 31.0, 121.0), &rules);
        assert!(c.push(fix(120, 31.5, 121.0), &rules).is_some());
        let step = c.push(fix(180, 31.5, 121.001), &rules).unwrap();
        assert!(step.dist_m > 50_000.0);
        assert!(step.speed_kmh() > 250.0);
    }

    #[test]
    fn gaps_are_displacement_not_distance() {
        let rules = RulesConfig::default();
        let mut c = PositionChain::default();
        c.push(fix(0, 31.0, 121.0), &rules);
        c.push(fix(3600, 31.01, 121.0), &rules);
        c.push(fix(3660, 31.01, 121.0), &rules);
        assert_eq!(c.distance_m, 0.0);
    }
}
