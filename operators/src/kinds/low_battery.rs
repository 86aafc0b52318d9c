//! `low_battery`: the backup battery is below the threshold; closes with hysteresis.

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::{AlertKind, Reading};

use crate::ctx::{Ctx, evidence};
use crate::kinds::Dev;

/// State of one device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LowBattery {
    open_since: Option<i64>,
}

impl LowBattery {
    /// Handles an in-order reading.
    pub fn on_reading(&mut self, r: &Reading, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        let rules = &ctx.rules.low_battery;
        let Some(pct) = r.battery_pct().filter(|_| rules.enabled) else {
            return;
        };
        match self.open_since {
            None if pct < rules.below_pct => {
                ctx.open(
                    AlertKind::LowBattery,
                    dev.class,
                    dev.id,
                    r.ts_ms,
                    evidence(json!({ "battery_pct": pct, "below_pct": rules.below_pct })),
                );
                self.open_since = Some(r.ts_ms);
            }
            Some(since) if pct >= rules.close_at_pct => {
                ctx.close(
                    AlertKind::LowBattery,
                    dev.class,
                    dev.id,
                    since,
                    r.ts_ms,
                    evidence(json!({ "battery_pct": pct })),
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
    use schemas::{DeviceClass, Phase, Power};

    #[test]
    fn opens_below_and_closes_with_hysteresis() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let mut k = LowBattery::default();
        let dev = dev(DeviceClass::Wireless);
        let out = with_ctx(&rules, &fences, &[], None, |ctx| {
            for (ts, pct) in [(0, 40.0), (10, 14.0), (20, 16.0), (30, 13.0), (40, 25.0)] {
                let r = Reading {
                    power: Some(Power {
                        ext_v: None,
                        battery_pct: Some(pct),
                    }),
                    ..reading(ts)
                };
                k.on_reading(&r, dev, ctx);
            }
        });
        assert_eq!(
            summary(&out),
            vec![
                (AlertKind::LowBattery, Phase::Open, 10),
                (AlertKind::LowBattery, Phase::Close, 40)
            ]
        );
        assert_eq!(out[0].severity, schemas::Severity::Low);
    }
}
