//! `night_movement`: the vehicle drives in the small hours although it practically never
//! does — a typical sign of a car being moved away to be hidden or sold.

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::AlertKind;

use crate::ctx::{Ctx, evidence};
use crate::days::WindowSums;
use crate::kinds::Dev;

/// State of one vehicle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NightMovement {
    /// The local day whose night it last fired in.
    fired_day: Option<i32>,
}

impl NightMovement {
    /// Checks tonight's distance after a step ending at `ts_ms` in the night window of local
    /// day `day`; `past` sums the days before it, `history_days` counts them.
    #[allow(clippy::too_many_arguments)]
    pub fn on_night_distance(
        &mut self,
        day: i32,
        tonight_km: f64,
        past: WindowSums,
        history_days: i32,
        ts_ms: i64,
        dev: Dev<'_>,
        ctx: &mut Ctx<'_>,
    ) {
        let rules = &ctx.rules.night_movement;
        if !rules.enabled
            || self.fired_day == Some(day)
            || history_days < i32::try_from(rules.min_history_days).unwrap_or(i32::MAX)
            || tonight_km < rules.min_km
        {
            return;
        }
        let share_pct = if past.gnss_km > 0.0 {
            100.0 * past.night_km / past.gnss_km
        } else {
            0.0
        };
        if share_pct < rules.max_share_pct {
            self.fired_day = Some(day);
            let ev = evidence(json!({
                "night_km": tonight_km,
                "past_night_share_pct": share_pct,
                "past_km": past.gnss_km,
                "window_days": rules.window_days,
                "max_share_pct": rules.max_share_pct,
            }));
            ctx.instant(AlertKind::NightMovement, dev.id, ts_ms, ev);
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
    fn fires_once_a_night_only_for_a_day_driver() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let dev = dev(DeviceClass::Wired);
        let day_driver = WindowSums {
            gnss_km: 900.0,
            night_km: 10.0,
            ..WindowSums::default()
        };
        let night_driver = WindowSums {
            night_km: 100.0,
            ..day_driver
        };
        let mut k = NightMovement::default();
        let out = with_ctx(&rules, &fences, &[], None, |ctx| {
            k.on_night_distance(20, 4.9, day_driver, 20, 1, dev, ctx);
            k.on_night_distance(20, 6.0, night_driver, 20, 2, dev, ctx);
            k.on_night_distance(20, 6.0, day_driver, 13, 3, dev, ctx);
            k.on_night_distance(20, 6.0, day_driver, 20, 4, dev, ctx);
            k.on_night_distance(20, 9.0, day_driver, 20, 5, dev, ctx);
            k.on_night_distance(21, 9.0, day_driver, 21, 6, dev, ctx);
        });
        let times: Vec<i64> = out.iter().map(|a| a.event_time_ms).collect();
        assert_eq!(times, vec![4, 6]);
    }
}
