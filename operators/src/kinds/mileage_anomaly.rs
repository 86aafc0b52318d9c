//! `mileage_anomaly`: today's GNSS distance is far above the vehicle's usual active day —
//! a car driven across the country, rented out, or used as a taxi.

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::AlertKind;

use crate::ctx::{Ctx, evidence};
use crate::days::ActiveDays;
use crate::kinds::Dev;

/// State of one vehicle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct MileageAnomaly {
    /// The local day it last fired on.
    fired_day: Option<i32>,
}

impl MileageAnomaly {
    /// Checks local day `day`'s distance so far after a step ending at `ts_ms`.
    pub fn on_distance(
        &mut self,
        day: i32,
        today_km: f64,
        active: &ActiveDays,
        ts_ms: i64,
        dev: Dev<'_>,
        ctx: &mut Ctx<'_>,
    ) {
        let rules = &ctx.rules.mileage_anomaly;
        if !rules.enabled
            || self.fired_day == Some(day)
            || active.len() < rules.min_active_days as usize
        {
            return;
        }
        let Some(median) = active.median_km() else {
            return;
        };
        let threshold = (rules.factor * median).max(median + rules.margin_km);
        if today_km > threshold {
            self.fired_day = Some(day);
            let ev = evidence(json!({
                "today_km": today_km,
                "median_km": median,
                "threshold_km": threshold,
                "active_days": active.len(),
            }));
            ctx.instant(AlertKind::MileageAnomaly, dev.id, ts_ms, ev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RulesConfig;
    use crate::fences::FenceIndex;
    use crate::kinds::testing::{dev, with_ctx};
    use schemas::DeviceClass;

    #[test]
    fn fires_once_per_day_above_the_threshold_after_warm_up() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let dev = dev(DeviceClass::Wired);
        let mut active = ActiveDays::default();
        let mut k = MileageAnomaly::default();
        let out = with_ctx(&rules, &fences, &[], None, |ctx| {
            for _ in 0..13 {
                active.push(40.0, 1.0, 28);
            }
            k.on_distance(20, 500.0, &active, 1, dev, ctx);
            active.push(40.0, 1.0, 28);
            k.on_distance(21, 330.0, &active, 2, dev, ctx);
            k.on_distance(21, 341.0, &active, 3, dev, ctx);
            k.on_distance(21, 600.0, &active, 4, dev, ctx);
            k.on_distance(22, 345.0, &active, 5, dev, ctx);
        });
        let times: Vec<i64> = out.iter().map(|a| a.event_time_ms).collect();
        assert_eq!(times, vec![3, 5]);
        assert_eq!(out[0].evidence["threshold_km"], 340.0);
    }
}
