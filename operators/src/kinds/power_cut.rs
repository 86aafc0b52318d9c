//! `power_cut`: external power removed (device alarm, or supply falling below the cut
//! voltage after a healthy reading); closes when supply is back or on two clean readings.

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::{Alarm, AlertKind, Reading};

use crate::ctx::{Ctx, evidence};
use crate::kinds::Dev;
use crate::packed::Packed;

/// State of one device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PowerCut {
    open_since: Packed<i64>,
    /// The previous reading carried the alarm (the alarm opens on its edge).
    alarm_before: bool,
    last_ext_v: Packed<f32>,
    clean_streak: u8,
}

impl PowerCut {
    /// Handles an in-order reading.
    pub fn on_reading(&mut self, r: &Reading, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        let rules = &ctx.rules.power_cut;
        if !rules.enabled {
            return;
        }
        let ext_v = r.ext_v();
        let alarm = r.alarm_set.contains(Alarm::PowerCut);
        let low = ext_v.is_some_and(|v| v < rules.cut_below_v);
        match self.open_since.get() {
            None => {
                let dropped = low
                    && self
                        .last_ext_v
                        .get()
                        .is_some_and(|p| p >= rules.supply_ok_v);
                if (alarm && !self.alarm_before) || dropped {
                    ctx.open(
                        AlertKind::PowerCut,
                        dev.class,
                        dev.id,
                        r.ts_ms,
                        evidence(json!({
                            "alarm": alarm,
                            "ext_v": ext_v,
                            "previous_ext_v": self.last_ext_v.get(),
                            "cut_below_v": rules.cut_below_v,
                        })),
                    );
                    self.open_since = Packed::some(r.ts_ms);
                    self.clean_streak = 0;
                }
            }
            Some(since) => {
                let restored = ext_v.is_some_and(|v| v >= rules.supply_ok_v);
                if !alarm && !low {
                    self.clean_streak = self.clean_streak.saturating_add(1);
                } else {
                    self.clean_streak = 0;
                }
                if restored || self.clean_streak >= 2 {
                    ctx.close(
                        AlertKind::PowerCut,
                        dev.class,
                        dev.id,
                        since,
                        r.ts_ms,
                        evidence(json!({
                            "ext_v": ext_v,
                            "duration_s": (r.ts_ms - since) / 1000,
                        })),
                    );
                    self.open_since = Packed::NONE;
                }
            }
        }
        if ext_v.is_some() {
            self.last_ext_v = ext_v.into();
        }
        self.alarm_before = alarm;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RulesConfig;
    use crate::fences::FenceIndex;
    use crate::kinds::testing::{dev, reading, summary, with_ctx};
    use schemas::{DeviceClass, Phase, Power};

    fn volts(ts: i64, v: f32) -> Reading {
        Reading {
            power: Some(Power {
                ext_v: Some(v),
                battery_pct: None,
            }),
            ..reading(ts)
        }
    }

    fn run(readings: &[Reading]) -> Vec<(AlertKind, Phase, i64)> {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let mut k = PowerCut::default();
        let dev = dev(DeviceClass::Wired);
        summary(&with_ctx(&rules, &fences, &[], None, |ctx| {
            for r in readings {
                k.on_reading(r, dev, ctx);
            }
        }))
    }

    #[test]
    fn voltage_drop_opens_and_restore_closes() {
        let out = run(&[
            volts(0, 12.6),
            volts(10, 0.2),
            volts(20, 0.1),
            volts(30, 12.5),
        ]);
        assert_eq!(
            out,
            vec![
                (AlertKind::PowerCut, Phase::Open, 10),
                (AlertKind::PowerCut, Phase::Close, 30)
            ]
        );
    }

    #[test]
    fn low_voltage_without_healthy_history_is_not_a_cut() {
        assert!(run(&[volts(0, 2.0), volts(10, 1.0)]).is_empty());
    }

    #[test]
    fn a_lingering_alarm_with_supply_back_does_not_flap() {
        let mut r = volts(0, 12.6);
        r.alarm_set.insert(Alarm::PowerCut);
        let lingering: Vec<Reading> = (0..10)
            .map(|i| Reading {
                ts_ms: i * 10_000,
                ..r.clone()
            })
            .collect();
        assert_eq!(
            run(&lingering),
            vec![
                (AlertKind::PowerCut, Phase::Open, 0),
                (AlertKind::PowerCut, Phase::Close, 10)
            ]
        );
    }

    #[test]
    fn alarm_opens_and_two_clean_readings_close() {
        let mut cut = reading(5);
        cut.alarm_set.insert(Alarm::PowerCut);
        let out = run(&[cut.clone(), cut, reading(15), reading(25)]);
        assert_eq!(
            out,
            vec![
                (AlertKind::PowerCut, Phase::Open, 5),
                (AlertKind::PowerCut, Phase::Close, 25)
            ]
        );
    }
}
