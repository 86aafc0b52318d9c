//! `stationary_long`: online but not moved beyond the radius for the threshold. Timer-driven;
//! if the vehicle is offline when the timer is due, the next reading that finds it online and
//! still in place opens the incident. Closes on the first accepted fix beyond the radius.

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::AlertKind;

use crate::config::RulesConfig;
use crate::ctx::{Ctx, evidence};
use crate::geo::haversine_m;
use crate::kinds::Dev;
use crate::packed::Packed;
use crate::position::{Fix, Step};

/// State of one vehicle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StationaryLong {
    anchor: Option<Fix>,
    open_since: Packed<i64>,
    /// The timer came due while the vehicle was offline; a reading will decide.
    awaiting_reading: bool,
}

fn after_ms(rules: &RulesConfig) -> i64 {
    (rules.stationary_long.after_h * 3_600_000.0).round() as i64
}

impl StationaryLong {
    /// When the timer is due.
    pub fn due(&self, rules: &RulesConfig) -> Option<i64> {
        if !rules.stationary_long.enabled || self.open_since.is_some() || self.awaiting_reading {
            return None;
        }
        Some(self.anchor?.ts_ms.saturating_add(after_ms(rules)))
    }

    /// Fires the timer at `now`; `online` tells whether the vehicle is online then. `held` is
    /// the valid fix the chain still holds (released, not yet confirmed): if it already shows
    /// the vehicle away from the anchor, the incident waits for that fix to be decided.
    pub fn on_timer<'d>(
        &mut self,
        now: i64,
        online: bool,
        held: Option<&Fix>,
        device_id: impl Fn(u16) -> Dev<'d>,
        ctx: &mut Ctx<'_>,
    ) {
        let Some(due) = self.due(ctx.rules).filter(|d| *d <= now) else {
            return;
        };
        let moved = match (self.anchor, held) {
            (Some(a), Some(h)) => {
                h.ts_ms <= now && a.distance_m(h) > ctx.rules.stationary_long.radius_m
            }
            _ => false,
        };
        if moved {
            self.awaiting_reading = true;
        } else if online {
            self.open(due, device_id, ctx);
        } else {
            self.awaiting_reading = true;
        }
    }

    /// Handles an in-order reading at `ts_ms` (the vehicle is online by definition) with its
    /// position, if valid: a vehicle that reappears elsewhere has not been stationary.
    pub fn on_reading<'d>(
        &mut self,
        ts_ms: i64,
        fix: Option<(f64, f64)>,
        device_id: impl Fn(u16) -> Dev<'d>,
        ctx: &mut Ctx<'_>,
    ) {
        // Only a timer that came due while offline waits for a reading (never while the kind
        // is off: it has no timer then).
        if !self.awaiting_reading || self.open_since.is_some() {
            return;
        }
        let moved = match (self.anchor, fix) {
            (Some(a), Some((lat, lon))) => {
                haversine_m(a.lat, a.lon, lat, lon) > ctx.rules.stationary_long.radius_m
            }
            _ => false,
        };
        if !moved {
            self.awaiting_reading = false;
            self.open(ts_ms, device_id, ctx);
        }
    }

    fn open<'d>(&mut self, at: i64, device_id: impl Fn(u16) -> Dev<'d>, ctx: &mut Ctx<'_>) {
        let Some(anchor) = self.anchor else {
            return;
        };
        let dev = device_id(anchor.device);
        let ev = evidence(json!({
            "since": schemas::time::rfc3339_ms(anchor.ts_ms),
            "stationary_h": (at - anchor.ts_ms) as f64 / 3_600_000.0,
            "radius_m": ctx.rules.stationary_long.radius_m,
        }));
        let saved = ctx.position.replace((anchor.lat, anchor.lon));
        ctx.open(AlertKind::StationaryLong, dev.class, dev.id, at, ev);
        ctx.position = saved;
        self.open_since = Packed::some(at);
    }

    /// Handles an accepted fix: moving beyond the radius re-anchors and closes.
    pub fn on_step(&mut self, step: &Step, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        if !ctx.rules.stationary_long.enabled && self.open_since.is_none() {
            // Off: no anchor to keep (an incident opened before it was switched off still
            // closes on moving).
            self.anchor = None;
            self.awaiting_reading = false;
            return;
        }
        let fix = step.fix;
        let Some(anchor) = self.anchor else {
            self.anchor = Some(fix);
            return;
        };
        let moved_m = anchor.distance_m(&fix);
        if moved_m <= ctx.rules.stationary_long.radius_m {
            // The stop starts at its first parked fix, not at the last fix of the approach,
            // so parking jitter is measured from where the vehicle actually stands.
            if self.open_since.is_none() && !anchor.parked() && fix.parked() {
                self.anchor = Some(fix);
            }
            return;
        }
        if let Some(since) = self.open_since.take() {
            let ev = evidence(json!({
                "moved_m": moved_m.round(),
                "stationary_h": (fix.ts_ms - anchor.ts_ms) as f64 / 3_600_000.0,
            }));
            ctx.close(
                AlertKind::StationaryLong,
                dev.class,
                dev.id,
                since,
                fix.ts_ms,
                ev,
            );
        }
        self.anchor = Some(fix);
        self.awaiting_reading = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fences::FenceIndex;
    use crate::kinds::testing::{dev, summary, with_ctx};
    use schemas::{DeviceClass, Phase};

    fn step(ts_h: i64, lat: f64) -> Step {
        Step::lone(Fix {
            ts_ms: ts_h * 3_600_000,
            lat,
            lon: 121.0,
            device: 0,
            ignition: Some(false),
            speed_kmh: Packed::NONE,
        })
    }

    #[test]
    fn opens_after_72_hours_online_and_closes_on_moving() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let mut k = StationaryLong::default();
        let dev = dev(DeviceClass::Wired);
        let out = with_ctx(&rules, &fences, &[], None, |ctx| {
            k.on_step(&step(0, 31.0), dev, ctx);
            k.on_step(&step(10, 31.001), dev, ctx);
            assert_eq!(k.due(ctx.rules), Some(72 * 3_600_000));
            k.on_timer(72 * 3_600_000, true, None, |_| dev, ctx);
            k.on_step(&step(80, 31.01), dev, ctx);
        });
        assert_eq!(
            summary(&out),
            vec![
                (AlertKind::StationaryLong, Phase::Open, 72 * 3600),
                (AlertKind::StationaryLong, Phase::Close, 80 * 3600)
            ]
        );
    }

    #[test]
    fn a_held_fix_away_from_the_anchor_defers_the_incident() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let mut k = StationaryLong::default();
        let dev = dev(DeviceClass::Wired);
        let out = with_ctx(&rules, &fences, &[], None, |ctx| {
            k.on_step(&step(0, 31.0), dev, ctx);
            let away = step(71, 31.05).fix;
            k.on_timer(72 * 3_600_000, true, Some(&away), |_| dev, ctx);
            k.on_step(&step(71, 31.05), dev, ctx);
        });
        assert!(out.is_empty(), "{:?}", summary(&out));
    }

    #[test]
    fn offline_when_due_waits_for_a_reading() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let mut k = StationaryLong::default();
        let dev = dev(DeviceClass::Wired);
        let out = with_ctx(&rules, &fences, &[], None, |ctx| {
            k.on_step(&step(0, 31.0), dev, ctx);
            k.on_timer(72 * 3_600_000, false, None, |_| dev, ctx);
            assert_eq!(k.due(ctx.rules), None);
            k.on_reading(75 * 3_600_000, Some((31.0005, 121.0)), |_| dev, ctx);
        });
        assert_eq!(
            summary(&out),
            vec![(AlertKind::StationaryLong, Phase::Open, 75 * 3600)]
        );
    }
}
