//! `vin_mismatch`: the VIN read over OBD is not the VIN registered for the vehicle (the
//! tracker was moved to another car).

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::{AlertKind, Reading};

use crate::ctx::{Ctx, evidence};
use crate::kinds::Dev;

/// State of one device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct VinMismatch {
    open_since: Option<i64>,
}

impl VinMismatch {
    /// Handles an in-order reading.
    pub fn on_reading(&mut self, r: &Reading, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        if !ctx.rules.vin_mismatch.enabled {
            return;
        }
        let (Some(reported), Some(registered)) = (
            r.obd
                .as_ref()
                .and_then(|o| o.vin.as_deref())
                .filter(|v| !v.is_empty()),
            ctx.registered_vin,
        ) else {
            return;
        };
        match self.open_since {
            None if reported != registered => {
                let ev = evidence(json!({
                    "reported_vin": reported,
                    "registered_vin": registered,
                }));
                ctx.open(AlertKind::VinMismatch, dev.class, dev.id, r.ts_ms, ev);
                self.open_since = Some(r.ts_ms);
            }
            Some(since) if reported == registered => {
                let ev = evidence(json!({ "reported_vin": reported }));
                ctx.close(
                    AlertKind::VinMismatch,
                    dev.class,
                    dev.id,
                    since,
                    r.ts_ms,
                    ev,
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
    use schemas::{DeviceClass, Obd, Phase};

    #[test]
    fn opens_on_foreign_vin_and_closes_on_the_registered_one() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let mut k = VinMismatch::default();
        let dev = dev(DeviceClass::Obd);
        let vin = |ts, v: &str| Reading {
            obd: Some(Obd {
                vin: Some(v.into()),
                ..Obd::default()
            }),
            ..reading(ts)
        };
        let out = with_ctx(&rules, &fences, &[], Some("VIN_A"), |ctx| {
            k.on_reading(&vin(0, "VIN_A"), dev, ctx);
            k.on_reading(&vin(10, "VIN_B"), dev, ctx);
            k.on_reading(&reading(15), dev, ctx);
            k.on_reading(&vin(20, "VIN_B"), dev, ctx);
            k.on_reading(&vin(30, "VIN_A"), dev, ctx);
        });
        assert_eq!(
            summary(&out),
            vec![
                (AlertKind::VinMismatch, Phase::Open, 10),
                (AlertKind::VinMismatch, Phase::Close, 30)
            ]
        );
        assert_eq!(out[0].evidence["reported_vin"], "VIN_B");
    }
}
