//! `odometer_rollback`: the odometer goes back by more than the threshold and the next
//! reading confirms it; a single low reading is a glitch and raises nothing.

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::{AlertKind, Reading};

use crate::ctx::{Ctx, evidence};
use crate::kinds::Dev;
use crate::kinds::forward_counter::ForwardCounter;

/// State of one device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct OdometerRollback {
    odometer: ForwardCounter,
}

impl OdometerRollback {
    /// Handles an in-order reading.
    pub fn on_reading(&mut self, r: &Reading, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        let rules = &ctx.rules.odometer_rollback;
        let Some(km) = r.odometer_km.filter(|k| rules.enabled && k.is_finite()) else {
            return;
        };
        if let Some(d) = self.odometer.observe(r.ts_ms, km, rules.min_drop_km) {
            let ev = evidence(json!({
                "before_km": d.before,
                "after_km": d.after,
                "confirmed_km": d.confirmed_by,
                "drop_km": d.before - d.after,
                "min_drop_km": rules.min_drop_km,
            }));
            ctx.instant(AlertKind::OdometerRollback, dev.id, d.at_ms, ev);
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

    fn run(kms: &[f64]) -> Vec<(AlertKind, Phase, i64)> {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let mut k = OdometerRollback::default();
        let dev = dev(DeviceClass::Obd);
        summary(&with_ctx(&rules, &fences, &[], None, |ctx| {
            for (i, km) in kms.iter().enumerate() {
                let r = Reading {
                    odometer_km: Some(*km),
                    ..reading(i as i64 * 10)
                };
                k.on_reading(&r, dev, ctx);
            }
        }))
    }

    #[test]
    fn confirmed_rollback_fires_at_the_first_low_reading() {
        assert_eq!(
            run(&[50_000.0, 50_001.0, 20_000.0, 20_000.5, 20_001.0]),
            vec![(AlertKind::OdometerRollback, Phase::Instant, 20)]
        );
    }

    #[test]
    fn single_glitch_spike_and_small_jitter_are_quiet() {
        assert!(run(&[50_000.0, 0.0, 50_001.0, 50_000.5, 50_002.0]).is_empty());
        assert!(run(&[45_210.0, 45_210.5, 999_999.0, 45_211.0, 45_211.5]).is_empty());
    }
}
