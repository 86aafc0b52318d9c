//! `tow_suspected`: the device raises a `tow` alarm, or the vehicle's accepted position moves
//! away from where it was parked while its readings say the ignition is off. Fires once per
//! parking; a gap (see docs/rules.md) re-anchors instead of firing.

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::{Alarm, AlertKind, Reading};

use crate::ctx::{Ctx, evidence};
use crate::kinds::Dev;
use crate::packed::Packed;
use crate::position::{Fix, Step};

/// State of one vehicle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TowSuspected {
    anchor: Option<Fix>,
    fired_this_parking: bool,
    /// Bit `i` set while device `i` reports the `tow` alarm (edge detection).
    alarm_devices: u64,
    last_alarm_fired_ms: Packed<i64>,
}

impl TowSuspected {
    /// Handles an in-order reading of device `device` for the alarm path.
    pub fn on_reading(&mut self, r: &Reading, device: u16, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        if !ctx.rules.tow_suspected.enabled {
            return;
        }
        let bit = 1u64 << (device % 64);
        let present = r.alarm_set.contains(Alarm::Tow);
        if present && self.alarm_devices & bit == 0 && !self.fired_this_parking {
            self.fire_alarm(r, dev, ctx);
            self.fired_this_parking = self.anchor.is_some();
        }
        if present {
            self.alarm_devices |= bit;
        } else {
            self.alarm_devices &= !bit;
        }
    }

    /// Handles a late reading: a `tow` alarm raises only if no tow incident is known near it.
    pub fn on_late(&mut self, r: &Reading, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        let window = crate::config::secs_ms(ctx.rules.late_known_window_s);
        let known = self
            .last_alarm_fired_ms
            .get()
            .is_some_and(|t| (r.ts_ms - t).abs() <= window);
        if ctx.rules.tow_suspected.enabled && r.alarm_set.contains(Alarm::Tow) && !known {
            self.fire_alarm(r, dev, ctx);
        }
    }

    fn fire_alarm(&mut self, r: &Reading, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        ctx.instant(
            AlertKind::TowSuspected,
            dev.id,
            r.ts_ms,
            evidence(json!({ "alarm": "tow" })),
        );
        self.last_alarm_fired_ms = Packed::some(
            self.last_alarm_fired_ms
                .get()
                .map_or(r.ts_ms, |t| t.max(r.ts_ms)),
        );
    }

    /// Handles an accepted fix. `gap` is true when the step from the previous accepted fix
    /// spans more than the device's offline threshold. Fixes of devices that never report
    /// ignition (wireless units) are ignored: they can neither arm nor reset the rule.
    pub fn on_step(&mut self, step: &Step, gap: bool, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        let rules = &ctx.rules.tow_suspected;
        if !rules.enabled || !dev.reports_ignition {
            return;
        }
        let fix = step.fix;
        if fix.ignition != Some(false) {
            self.anchor = None;
            self.fired_this_parking = false;
            return;
        }
        let anchor = match self.anchor {
            Some(a) if !gap => a,
            _ => {
                self.anchor = Some(fix);
                self.fired_this_parking = false;
                return;
            }
        };
        if self.fired_this_parking {
            return;
        }
        let moved_m = anchor.distance_m(&fix);
        // One fix is not enough (SPEC §4a): the next fix must also be away, ignition off. It
        // is measured only when this one is away.
        let confirmed = || {
            step.next.ignition == Some(false) && anchor.distance_m(&step.next) >= rules.distance_m
        };
        if moved_m >= rules.distance_m && confirmed() {
            ctx.instant(
                AlertKind::TowSuspected,
                dev.id,
                fix.ts_ms,
                evidence(json!({
                    "moved_m": moved_m.round(),
                    "parked_lat": anchor.lat,
                    "parked_lon": anchor.lon,
                    "parked_since": schemas::time::rfc3339_ms(anchor.ts_ms),
                    "distance_m": rules.distance_m,
                })),
            );
            self.fired_this_parking = true;
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

    fn step(ts_s: i64, lat: f64, ignition: Option<bool>) -> Step {
        Step::lone(Fix {
            ts_ms: ts_s * 1000,
            lat,
            lon: 121.0,
            device: 0,
            ignition,
            speed_kmh: Packed::NONE,
        })
    }

    fn run(steps: &[(Step, bool)]) -> Vec<(AlertKind, Phase, i64)> {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let mut k = TowSuspected::default();
        let dev = dev(DeviceClass::Wired);
        summary(&with_ctx(&rules, &fences, &[], None, |ctx| {
            for (s, gap) in steps {
                k.on_step(s, *gap, dev, ctx);
            }
        }))
    }

    #[test]
    fn moving_with_ignition_off_fires_once() {
        let out = run(&[
            (step(0, 31.0, Some(true)), false),
            (step(60, 31.0, Some(false)), false),
            (step(120, 31.001, Some(false)), false),
            (step(180, 31.004, Some(false)), false),
            (step(240, 31.01, Some(false)), false),
        ]);
        assert_eq!(out, vec![(AlertKind::TowSuspected, Phase::Instant, 180)]);
    }

    #[test]
    fn a_single_fix_away_is_not_confirmed() {
        let mut away = step(120, 31.01, Some(false));
        away.next = step(180, 31.0, Some(false)).fix;
        let mut driven = step(240, 31.02, Some(false));
        driven.next = step(300, 31.03, Some(true)).fix;
        let out = run(&[
            (step(0, 31.0, Some(true)), false),
            (step(60, 31.0, Some(false)), false),
            (away, false),
            (step(180, 31.0, Some(false)), false),
            (driven, false),
        ]);
        assert!(out.is_empty(), "{out:?}");
    }

    #[test]
    fn unknown_ignition_and_gaps_never_fire() {
        assert!(
            run(&[
                (step(0, 31.0, None), false),
                (step(60, 31.1, None), false),
                (step(120, 31.2, None), false),
            ])
            .is_empty()
        );
        assert!(
            run(&[
                (step(0, 31.0, Some(false)), false),
                (step(9000, 31.2, Some(false)), true),
                (step(9060, 31.2, Some(false)), false),
            ])
            .is_empty()
        );
    }
}
