//! `geofence_exit`: the vehicle leaves the union of its permitted fences (two consecutive
//! accepted fixes outside, or one far outside) and closes on re-entry by the same rule.

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::AlertKind;

use crate::ctx::{Ctx, evidence};
use crate::kinds::Dev;
use crate::position::{Fix, Step};

/// State of one vehicle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GeofenceExit {
    open_since: Option<i64>,
    /// First fix of the current run on the other side of the boundary, and the run length.
    streak: Option<(Fix, u32)>,
}

impl GeofenceExit {
    /// Handles an accepted fix. `device_id` names the device of a fix by its index.
    pub fn on_step<'d>(
        &mut self,
        step: &Step,
        device_id: impl Fn(u16) -> Dev<'d>,
        ctx: &mut Ctx<'_>,
    ) {
        let rules = &ctx.rules.geofence_exit;
        if !rules.enabled || ctx.permitted.is_empty() {
            return;
        }
        let fix = step.fix;
        let outside_m = ctx
            .fences
            .union_signed_distance_m(ctx.permitted, fix.lat, fix.lon);
        let crossed = if self.open_since.is_none() {
            outside_m > 0.0
        } else {
            outside_m <= 0.0
        };
        if !crossed {
            self.streak = None;
            return;
        }
        let (first, run) = match self.streak {
            Some((first, run)) => (first, run + 1),
            None => (fix, 1),
        };
        self.streak = Some((first, run));
        if run < rules.confirm_fixes && outside_m.abs() <= rules.far_m {
            return;
        }
        self.streak = None;
        let dev = device_id(first.device);
        let saved = ctx.position.replace((first.lat, first.lon));
        let permitted: Vec<&str> = ctx
            .permitted
            .iter()
            .map(|i| ctx.fences.fence(*i).id.as_str())
            .collect();
        let ev = evidence(json!({
            "distance_outside_m": outside_m.round(),
            "permitted_fences": permitted,
            "fixes": run,
        }));
        match self.open_since.take() {
            None => {
                ctx.open(AlertKind::GeofenceExit, dev.class, dev.id, first.ts_ms, ev);
                self.open_since = Some(first.ts_ms);
            }
            Some(since) => {
                ctx.close(
                    AlertKind::GeofenceExit,
                    dev.class,
                    dev.id,
                    since,
                    first.ts_ms,
                    ev,
                );
            }
        }
        ctx.position = saved;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RulesConfig;
    use crate::fences::FenceIndex;
    use crate::kinds::testing::{summary, with_ctx};
    use schemas::{DeviceClass, Phase};

    const FENCE: &str = r#"{"type":"FeatureCollection","features":[{"type":"Feature",
        "properties":{"id":"city","role":"permitted"},
        "geometry":{"type":"Polygon","coordinates":[[[121.0,31.0],[121.1,31.0],[121.1,31.1],[121.0,31.1],[121.0,31.0]]]}}]}"#;

    fn run(lats: &[f64]) -> Vec<(AlertKind, Phase, i64)> {
        let rules = RulesConfig::default();
        let fences = FenceIndex::from_geojson_str(FENCE, "test").unwrap();
        let permitted = [fences.lookup("city").unwrap()];
        let mut k = GeofenceExit::default();
        let dev = |_| Dev {
            id: "D1",
            class: DeviceClass::Wired,
        };
        summary(&with_ctx(&rules, &fences, &permitted, None, |ctx| {
            for (i, lat) in lats.iter().enumerate() {
                let step = Step {
                    prev: None,
                    fix: Fix {
                        ts_ms: i as i64 * 60_000,
                        lat: *lat,
                        lon: 121.05,
                        device: 0,
                        ignition: Some(true),
                        speed_kmh: Some(50.0),
                    },
                    dist_m: 0.0,
                    dt_ms: 0,
                };
                k.on_step(&step, dev, ctx);
            }
        }))
    }

    #[test]
    fn two_fixes_outside_open_two_inside_close() {
        // 31.1005 is ~55 m outside; 31.05 inside.
        let out = run(&[
            31.05, 31.1005, 31.05, 31.1005, 31.1006, 31.05, 31.0995, 31.099,
        ]);
        assert_eq!(
            out,
            vec![
                (AlertKind::GeofenceExit, Phase::Open, 180),
                (AlertKind::GeofenceExit, Phase::Close, 300)
            ]
        );
    }

    #[test]
    fn one_fix_far_outside_is_enough() {
        let out = run(&[31.05, 31.2, 31.21]);
        assert_eq!(out, vec![(AlertKind::GeofenceExit, Phase::Open, 60)]);
    }
}
