//! `device_tamper`: a `tamper` or `removal` alarm appears (edge-triggered).

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::{Alarm, AlertKind, Reading};

use crate::ctx::{Ctx, evidence};
use crate::kinds::Dev;

/// State of one device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DeviceTamper {
    active: bool,
    last_fired_ms: Option<i64>,
    /// Time of the last incident raised from late data: the live readings of the same incident
    /// may arrive after it and must not raise it again.
    late_fired_ms: Option<i64>,
}

fn tamper_alarms(r: &Reading) -> Vec<&'static str> {
    [Alarm::Tamper, Alarm::Removal]
        .into_iter()
        .filter(|a| r.alarm_set.contains(*a))
        .map(Alarm::as_str)
        .collect()
}

impl DeviceTamper {
    /// Handles an in-order reading.
    pub fn on_reading(&mut self, r: &Reading, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        if !ctx.rules.device_tamper.enabled {
            return;
        }
        let alarms = tamper_alarms(r);
        let window = crate::config::secs_ms(ctx.rules.late_known_window_s);
        let raised_late = self
            .late_fired_ms
            .is_some_and(|t| r.ts_ms >= t && r.ts_ms - t <= window);
        if !alarms.is_empty() && !self.active && !raised_late {
            self.fire(r, &alarms, dev, ctx);
        }
        if !alarms.is_empty() {
            self.late_fired_ms = None;
        }
        self.active = !alarms.is_empty();
    }

    /// Handles a late reading: raises only if no tamper incident is known near its time.
    pub fn on_late(&mut self, r: &Reading, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        if !ctx.rules.device_tamper.enabled {
            return;
        }
        let alarms = tamper_alarms(r);
        let window = crate::config::secs_ms(ctx.rules.late_known_window_s);
        let known = self
            .last_fired_ms
            .is_some_and(|t| (r.ts_ms - t).abs() <= window);
        if !alarms.is_empty() && !known {
            self.fire(r, &alarms, dev, ctx);
            self.late_fired_ms = Some(r.ts_ms);
        }
    }

    fn fire(&mut self, r: &Reading, alarms: &[&str], dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        ctx.instant(
            AlertKind::DeviceTamper,
            dev.id,
            r.ts_ms,
            evidence(json!({ "alarms": alarms })),
        );
        self.last_fired_ms = Some(self.last_fired_ms.map_or(r.ts_ms, |t| t.max(r.ts_ms)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RulesConfig;
    use crate::fences::FenceIndex;
    use crate::kinds::testing::{dev, reading, summary, with_ctx};
    use schemas::{DeviceClass, Phase};

    #[test]
    fn fires_on_the_edge_only() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let mut k = DeviceTamper::default();
        let dev = dev(DeviceClass::Wired);
        let mut t = reading(10);
        t.alarm_set.insert(Alarm::Removal);
        let mut t2 = t.clone();
        t2.ts_ms = 20_000;
        let mut t3 = t.clone();
        t3.ts_ms = 40_000;
        let out = with_ctx(&rules, &fences, &[], None, |ctx| {
            k.on_reading(&t, dev, ctx);
            k.on_reading(&t2, dev, ctx);
            k.on_reading(&reading(30), dev, ctx);
            k.on_reading(&t3, dev, ctx);
            let mut late = t.clone();
            late.ts_ms = 5_000;
            k.on_late(&late, dev, ctx);
        });
        assert_eq!(
            summary(&out),
            vec![
                (AlertKind::DeviceTamper, Phase::Instant, 10),
                (AlertKind::DeviceTamper, Phase::Instant, 40)
            ]
        );
        assert_eq!(out[0].evidence["alarms"], json!(["removal"]));
    }

    #[test]
    fn late_alarm_of_an_unknown_incident_is_backfilled() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let mut k = DeviceTamper::default();
        let dev = dev(DeviceClass::Wired);
        let mut late = reading(10);
        late.alarm_set.insert(Alarm::Tamper);
        let out = with_ctx(&rules, &fences, &[], None, |ctx| {
            ctx.backfill = true;
            k.on_late(&late, dev, ctx);
            k.on_late(&late, dev, ctx);
        });
        assert_eq!(out.len(), 1);
        assert!(out[0].backfill);
    }
}
