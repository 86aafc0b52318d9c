//! `odometer_mismatch`: over a sliding window of GNSS distance, the odometer ran much slower
//! (a mileage blocker) or faster than the vehicle moved. Odometer values count once the next
//! reading confirms them; the window restarts across GNSS gaps and odometer drops, and two
//! consecutive out-of-band evaluations are needed, so glitches and rollbacks raise nothing here.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::AlertKind;

use crate::ctx::{Ctx, evidence};
use crate::kinds::Dev;
use crate::packed::{Niche, Packed};

/// Consecutive odometer values further apart than this (km) do not confirm each other.
const CONFIRM_SPAN_KM: f64 = 2_000.0;

/// An odometer value with the vehicle's GNSS distance when it was read.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Mark {
    ts_ms: i64,
    odometer_km: f64,
    gnss_m: f64,
}

/// No mark: `i64::MIN` as its time.
impl Niche for Mark {
    const NONE: Self = Self {
        ts_ms: i64::MIN,
        odometer_km: 0.0,
        gnss_m: 0.0,
    };
    fn is_none(&self) -> bool {
        self.ts_ms == i64::MIN
    }
}

/// An out-of-band evaluation waiting for the next one to confirm it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
struct Suspect {
    from: Mark,
    to: Mark,
}

/// State of one device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OdometerMismatch {
    pending: Packed<Mark>,
    checkpoints: VecDeque<Mark>,
    /// The vehicle's count of GNSS gaps when the window started.
    breaks: u32,
    /// Boxed: set only between a first out-of-range window and the next check.
    suspect: Option<Box<Suspect>>,
    quiet_until: Packed<i64>,
}

impl OdometerMismatch {
    /// Handles an in-order reading with odometer `km`; `gnss_m` and `breaks` are the
    /// vehicle's GNSS distance and gap count so far.
    pub fn on_odometer(
        &mut self,
        ts_ms: i64,
        km: f64,
        gnss_m: f64,
        breaks: u32,
        dev: Dev<'_>,
        ctx: &mut Ctx<'_>,
    ) {
        let rules = &ctx.rules.odometer_mismatch;
        if !rules.enabled || !km.is_finite() {
            return;
        }
        let mark = Mark {
            ts_ms,
            odometer_km: km,
            gnss_m,
        };
        let confirmed = std::mem::replace(&mut self.pending, Packed::some(mark))
            .get()
            .filter(|p| {
                km >= p.odometer_km - ctx.rules.odometer_rollback.min_drop_km
                    && km <= p.odometer_km + CONFIRM_SPAN_KM
            });
        if let Some(p) = confirmed {
            self.on_confirmed(p, breaks, dev, ctx);
        }
    }

    fn restart(&mut self, breaks: u32) {
        self.checkpoints.clear();
        self.suspect = None;
        self.breaks = breaks;
    }

    fn on_confirmed(&mut self, m: Mark, breaks: u32, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        let rules = &ctx.rules.odometer_mismatch;
        if let Some(until) = self.quiet_until.get() {
            if m.ts_ms < until {
                return;
            }
            self.quiet_until = Packed::NONE;
            self.restart(breaks);
        }
        let dropped = self.checkpoints.back().is_some_and(|c| {
            m.odometer_km < c.odometer_km - ctx.rules.odometer_rollback.min_drop_km
        });
        if breaks != self.breaks || dropped {
            self.restart(breaks);
        }
        let window_m = rules.window_km * 1000.0;
        let start = self
            .checkpoints
            .iter()
            .rev()
            .find(|c| m.gnss_m - c.gnss_m >= window_m)
            .copied();
        if let Some(from) = start {
            let ratio = (m.odometer_km - from.odometer_km) / ((m.gnss_m - from.gnss_m) / 1000.0);
            if ratio < rules.min_ratio || ratio > rules.max_ratio {
                match self.suspect.take() {
                    Some(first) => {
                        self.fire(*first, dev, ctx);
                        return;
                    }
                    None => self.suspect = Some(Box::new(Suspect { from, to: m })),
                }
            } else {
                self.suspect = None;
            }
        }
        let spaced = self
            .checkpoints
            .back()
            .is_none_or(|c| m.gnss_m - c.gnss_m >= rules.checkpoint_km * 1000.0);
        if spaced {
            // Enough checkpoints that one is always at least a window behind the newest.
            let keep = (rules.window_km / rules.checkpoint_km.max(1.0)).ceil() as usize + 2;
            while self.checkpoints.len() >= keep {
                self.checkpoints.pop_front();
            }
            // Room for the checkpoints kept (at most `keep`), not the doubling growth's next
            // power of two: a few reallocations in a device's life, and a vehicle that drives
            // little keeps little.
            self.checkpoints.reserve_exact(1);
            self.checkpoints.push_back(m);
        }
    }

    fn fire(&mut self, s: Suspect, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        let rules = &ctx.rules.odometer_mismatch;
        let odometer_km = s.to.odometer_km - s.from.odometer_km;
        let gnss_km = (s.to.gnss_m - s.from.gnss_m) / 1000.0;
        let ev = evidence(json!({
            "odometer_from_km": s.from.odometer_km,
            "odometer_to_km": s.to.odometer_km,
            "odometer_km": odometer_km,
            "gnss_km": gnss_km,
            "ratio": odometer_km / gnss_km,
            "min_ratio": rules.min_ratio,
            "max_ratio": rules.max_ratio,
            "window_start": schemas::time::rfc3339_ms(s.from.ts_ms),
        }));
        ctx.instant(AlertKind::OdometerMismatch, dev.id, s.to.ts_ms, ev);
        self.quiet_until = Packed::some(s.to.ts_ms + crate::config::secs_ms(rules.rearm_after_s));
        self.restart(self.breaks);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RulesConfig;
    use crate::fences::FenceIndex;
    use crate::kinds::testing::{dev, summary, with_ctx};
    use schemas::{DeviceClass, Phase};

    /// Drives `legs` of (km of GNSS distance, odometer km per GNSS km), one reading per km,
    /// one reading a minute; `glitch` replaces the odometer of that reading index by 0.
    fn run(legs: &[(u32, f64)], glitch: Option<usize>) -> Vec<(AlertKind, Phase, i64)> {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let mut k = OdometerMismatch::default();
        let dev = dev(DeviceClass::Obd);
        summary(&with_ctx(&rules, &fences, &[], None, |ctx| {
            let (mut odo, mut gnss_m, mut i) = (50_000.0, 0.0, 0usize);
            for &(km, factor) in legs {
                for _ in 0..km {
                    gnss_m += 1000.0;
                    odo += factor;
                    let value = if glitch == Some(i) { 0.0 } else { odo };
                    k.on_odometer(i as i64 * 60_000, value, gnss_m, 0, dev, ctx);
                    i += 1;
                }
            }
        }))
    }

    #[test]
    fn a_blocker_fires_once_and_normal_driving_never() {
        let quiet = run(&[(400, 1.05)], Some(150));
        assert!(quiet.is_empty(), "{quiet:?}");
        // 150 km normal, then blocked at 0.4: the window ratio drops below 0.8 once about
        // 40 km of the 100 km are blocked; confirmed one reading later.
        let out = run(&[(150, 1.05), (120, 0.4), (30, 1.05)], None);
        assert_eq!(out.len(), 1, "{out:?}");
        let at_km = out[0].2 / 60;
        assert!((180..=200).contains(&at_km), "{out:?}");
        // Too fast (a clocked odometer) fires too.
        assert_eq!(run(&[(150, 1.0), (80, 2.5)], None).len(), 1);
    }

    #[test]
    fn a_rollback_restarts_the_window() {
        let out = run(&[(150, 1.0), (1, -5_000.0), (150, 1.0)], None);
        assert!(out.is_empty(), "{out:?}");
    }
}
