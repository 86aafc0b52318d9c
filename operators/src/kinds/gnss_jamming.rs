//! `gnss_jamming`: a jamming or antenna-cut alarm, or no valid fix for a while although the
//! vehicle is driving (ignition on, OBD speed above the threshold).

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::{Alarm, AlertKind, Reading};

use crate::config::secs_ms;
use crate::ctx::{Ctx, evidence};
use crate::kinds::Dev;

/// State of one device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GnssJamming {
    open_since: Option<i64>,
    no_fix_since: Option<i64>,
}

impl GnssJamming {
    /// Handles an in-order reading; `valid_fix` tells whether it carried a usable position.
    pub fn on_reading(&mut self, r: &Reading, valid_fix: bool, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        let rules = &ctx.rules.gnss_jamming;
        if !rules.enabled {
            return;
        }
        let alarm =
            r.alarm_set.contains(Alarm::Jamming) || r.alarm_set.contains(Alarm::GnssAntennaCut);
        let driving =
            r.ignition == Some(true) && r.speed_kmh.is_some_and(|s| s > rules.min_speed_kmh);
        // A reading without a `gnss` block says nothing about the receiver (an OBD-only
        // message): it neither starts nor ends a streak.
        let no_fix = r.gnss.is_some() && !valid_fix;
        if valid_fix || r.ignition == Some(false) {
            self.no_fix_since = None;
        } else if no_fix && driving && self.no_fix_since.is_none() {
            self.no_fix_since = Some(r.ts_ms);
        }
        let streak = self
            .no_fix_since
            .filter(|s| no_fix && driving && r.ts_ms - s >= secs_ms(rules.no_fix_s));
        match self.open_since {
            None if alarm || streak.is_some() => {
                ctx.open(
                    AlertKind::GnssJamming,
                    dev.class,
                    dev.id,
                    r.ts_ms,
                    evidence(json!({
                        "alarm": alarm,
                        "no_fix_since": streak.map(schemas::time::rfc3339_ms),
                        "no_fix_s": streak.map(|s| (r.ts_ms - s) / 1000),
                        "speed_kmh": r.speed_kmh,
                    })),
                );
                self.open_since = Some(r.ts_ms);
            }
            Some(since) if valid_fix && !alarm => {
                ctx.close(
                    AlertKind::GnssJamming,
                    dev.class,
                    dev.id,
                    since,
                    r.ts_ms,
                    evidence(json!({ "duration_s": (r.ts_ms - since) / 1000 })),
                );
                self.open_since = None;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RulesConfig;
    use crate::fences::FenceIndex;
    use crate::kinds::testing::{dev, reading, summary, with_ctx};
    use schemas::{DeviceClass, Phase};

    fn drive(ts: i64, ignition: Option<bool>, speed: f32) -> Reading {
        Reading {
            ignition,
            speed_kmh: Some(speed),
            gnss: Some(schemas::Gnss {
                fix: false,
                ..schemas::Gnss::default()
            }),
            ..reading(ts)
        }
    }

    #[test]
    fn readings_without_gnss_are_neutral() {
        let steps: Vec<_> = (0..40)
            .map(|i| {
                let mut r = drive(i * 30, Some(true), 60.0);
                r.gnss = None;
                (r, false)
            })
            .collect();
        assert!(run(&steps).is_empty());
    }

    fn run(steps: &[(Reading, bool)]) -> Vec<(AlertKind, Phase, i64)> {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let mut k = GnssJamming::default();
        let dev = dev(DeviceClass::Wired);
        summary(&with_ctx(&rules, &fences, &[], None, |ctx| {
            for (r, fix) in steps {
                k.on_reading(r, *fix, dev, ctx);
            }
        }))
    }

    #[test]
    fn ten_minutes_without_fix_while_driving() {
        let mut steps: Vec<_> = (0..=22)
            .map(|i| (drive(i * 30, Some(true), 60.0), false))
            .collect();
        steps.push((drive(700, Some(true), 60.0), true));
        assert_eq!(
            run(&steps),
            vec![
                (AlertKind::GnssJamming, Phase::Open, 600),
                (AlertKind::GnssJamming, Phase::Close, 700)
            ]
        );
    }

    #[test]
    fn no_fix_while_parked_or_unknown_ignition_is_quiet() {
        let parked: Vec<_> = (0..40)
            .map(|i| (drive(i * 30, Some(false), 0.0), false))
            .collect();
        assert!(run(&parked).is_empty());
        let unknown: Vec<_> = (0..40)
            .map(|i| (drive(i * 30, None, 50.0), false))
            .collect();
        assert!(run(&unknown).is_empty());
    }

    #[test]
    fn short_tunnel_is_quiet() {
        let mut steps: Vec<_> = (0..10)
            .map(|i| (drive(i * 30, Some(true), 60.0), false))
            .collect();
        steps.push((drive(300, Some(true), 60.0), true));
        steps.extend((11..30).map(|i| (drive(i * 30, Some(true), 60.0), i % 2 == 0)));
        assert!(run(&steps).is_empty());
    }

    #[test]
    fn alarm_opens() {
        let mut r = reading(5);
        r.alarm_set.insert(Alarm::GnssAntennaCut);
        assert_eq!(
            run(&[(r, true), (reading(10), true)]),
            vec![
                (AlertKind::GnssJamming, Phase::Open, 5),
                (AlertKind::GnssJamming, Phase::Close, 10)
            ]
        );
    }
}
