//! `location_jump`: two consecutive accepted fixes far apart at an impossible speed (a cloned
//! or relocated tracker). Accepted fixes are already confirmed by their successor, so a
//! single drift fix never gets here.

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::AlertKind;

use crate::ctx::{Ctx, evidence};
use crate::kinds::Dev;
use crate::position::Step;

/// Stateless: the decision needs only the step.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct LocationJump;

impl LocationJump {
    /// Handles an accepted fix; `gap` suppresses the rule across an offline gap.
    pub fn on_step(&mut self, step: &Step, gap: bool, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        let rules = &ctx.rules.location_jump;
        let Some(prev) = step.prev.filter(|_| rules.enabled && !gap) else {
            return;
        };
        // The step's own distance first: almost every step stops here, before the two
        // distances of the confirmation.
        if step.dist_m < rules.min_distance_m {
            return;
        }
        let speed = step.speed_kmh();
        // The next valid fix must confirm the new place (SPEC §4a), not be back at the old one:
        // a drift fix slow enough on the way back is no outlier but is no jump either.
        let confirmed = || step.next.distance_m(&step.fix) < step.next.distance_m(&prev);
        if speed > rules.min_speed_kmh && confirmed() {
            ctx.instant(
                AlertKind::LocationJump,
                dev.id,
                step.fix.ts_ms,
                evidence(json!({
                    "distance_m": step.dist_m.round(),
                    "dt_s": step.dt_ms / 1000,
                    "speed_kmh": speed.round(),
                    "from_lat": prev.lat,
                    "from_lon": prev.lon,
                })),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RulesConfig;
    use crate::fences::FenceIndex;
    use crate::kinds::testing::{dev, with_ctx};
    use crate::packed::Packed;
    use crate::position::Fix;
    use schemas::DeviceClass;

    fn step(dist_m: f64, dt_s: i64) -> Step {
        let fix = Fix {
            ts_ms: dt_s * 1000,
            lat: 31.0,
            lon: 121.0,
            device: 0,
            ignition: None,
            speed_kmh: Packed::NONE,
        };
        Step {
            prev: Some(Fix {
                ts_ms: 0,
                lat: 31.0 - dist_m / 111_195.0,
                ..fix
            }),
            fix,
            next: fix,
            dist_m,
            dt_ms: dt_s * 1000,
            counted: false,
            counted_m: 0.0,
        }
    }

    #[test]
    fn fires_on_far_fast_steps_only() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let dev = dev(DeviceClass::Wired);
        let out = with_ctx(&rules, &fences, &[], None, |ctx| {
            let mut k = LocationJump;
            k.on_step(&step(20_000.0, 60), false, dev, ctx);
            k.on_step(&step(20_000.0, 600), false, dev, ctx);
            k.on_step(&step(4_000.0, 10), false, dev, ctx);
            k.on_step(&step(90_000.0, 60), true, dev, ctx);
            let mut back = step(20_000.0, 60);
            back.next = back.prev.unwrap();
            k.on_step(&back, false, dev, ctx);
        });
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].evidence["distance_m"], json!(20_000.0));
    }
}
