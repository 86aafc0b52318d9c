//! `dtc_cleared`: `obd.dist_since_clear_km` drops, so trouble codes were cleared (or the
//! battery disconnected).

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::{AlertKind, Reading};

use crate::ctx::{Ctx, evidence};
use crate::kinds::Dev;
use crate::kinds::forward_counter::ForwardCounter;

/// State of one device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DtcCleared {
    since_clear: ForwardCounter,
}

impl DtcCleared {
    /// Handles an in-order reading.
    pub fn on_reading(&mut self, r: &Reading, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        let rules = &ctx.rules.dtc_cleared;
        let Some(km) = r
            .obd
            .as_ref()
            .and_then(|o| o.dist_since_clear_km)
            .filter(|k| rules.enabled && k.is_finite())
        else {
            return;
        };
        if let Some(d) = self.since_clear.observe(r.ts_ms, km, rules.min_drop_km) {
            let ev = evidence(json!({
                "before_km": d.before,
                "after_km": d.after,
                "dtc_count": r.obd.as_ref().and_then(|o| o.dtc_count),
            }));
            ctx.instant(AlertKind::DtcCleared, dev.id, d.at_ms, ev);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RulesConfig;
    use crate::fences::FenceIndex;
    use crate::kinds::testing::{dev, reading, summary, with_ctx};
    use schemas::{DeviceClass, Obd, Phase};

    #[test]
    fn drop_fires_once() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let mut k = DtcCleared::default();
        let dev = dev(DeviceClass::Obd);
        let out = with_ctx(&rules, &fences, &[], None, |ctx| {
            for (ts, km) in [(0, 800.0), (10, 801.0), (20, 0.0), (30, 0.4), (40, 0.3)] {
                let r = Reading {
                    obd: Some(Obd {
                        dist_since_clear_km: Some(km),
                        ..Obd::default()
                    }),
                    ..reading(ts)
                };
                k.on_reading(&r, dev, ctx);
            }
        });
        assert_eq!(
            summary(&out),
            vec![(AlertKind::DtcCleared, Phase::Instant, 20)]
        );
    }
}
