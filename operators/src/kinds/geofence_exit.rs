//! `geofence_exit`: the vehicle leaves the union of its permitted fences (two consecutive
//! accepted fixes outside, or one far outside) and closes on re-entry by the same rule.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::json;

use schemas::AlertKind;

use crate::ctx::{Ctx, evidence};
use crate::kinds::Dev;
use crate::position::{Fix, Step};

/// State of one vehicle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct GeofenceExit {
    open_since: Option<i64>,
    /// The last `next` fix and whether it is outside the permitted fences, reused when that
    /// fix is accepted.
    #[serde(deserialize_with = "next_outside")]
    next_outside: Option<(Fix, bool)>,
}

impl crate::kinds::AtRest for GeofenceExit {
    fn at_rest(&self) -> bool {
        self.open_since.is_none() && self.next_outside.is_none()
    }
}

/// Reads the last `next` fix of a snapshot: with its side from version 5 on, with its signed
/// distance (positive outside) before.
fn next_outside<'de, D: Deserializer<'de>>(d: D) -> Result<Option<(Fix, bool)>, D::Error> {
    if crate::snapshot::body_version() >= 5 {
        return Option::deserialize(d);
    }
    let next = Option::<(Fix, f64)>::deserialize(d)?;
    Ok(next.map(|(fix, distance)| (fix, distance > 0.0)))
}

impl GeofenceExit {
    /// Handles an accepted fix. `device_id` names the device of a fix by its index.
    ///
    /// A fix on the other side of the boundary decides when the next valid fix is on that
    /// side too: that is the "two consecutive fixes" rule, and it is also the confirmation a
    /// single fix far outside needs (SPEC §4a), so a drift fix never opens or closes it.
    /// Which side a fix is on is all a step needs; distances are measured for the alert.
    pub fn on_step<'d>(
        &mut self,
        step: &Step,
        device_id: impl Fn(u16) -> Dev<'d>,
        ctx: &mut Ctx<'_>,
    ) {
        if !ctx.rules.geofence_exit.enabled || ctx.permitted.is_empty() {
            return;
        }
        let outside = |f: &Fix| ctx.fences.union_outside(ctx.permitted, f.lat, f.lon);
        let fix = step.fix;
        let here_outside = match self.next_outside {
            Some((f, side)) if f == fix => side,
            _ => outside(&fix),
        };
        let next_outside = outside(&step.next);
        self.next_outside = Some((step.next, next_outside));
        // Opening needs both fixes outside, closing both inside.
        let outside_wanted = self.open_since.is_none();
        if here_outside != outside_wanted || next_outside != outside_wanted {
            return;
        }
        let distance = |f: &Fix| {
            ctx.fences
                .union_signed_distance_m(ctx.permitted, f.lat, f.lon)
        };
        let (here, next) = (distance(&fix), distance(&step.next));
        let dev = device_id(fix.device);
        let permitted: Vec<&str> = ctx
            .permitted
            .iter()
            .map(|i| ctx.fences.fence(*i).id.as_str())
            .collect();
        let ev = evidence(json!({
            "distance_outside_m": here.round(),
            "next_distance_outside_m": next.round(),
            "permitted_fences": permitted,
        }));
        match self.open_since.take() {
            None => {
                ctx.open(AlertKind::GeofenceExit, dev.class, dev.id, fix.ts_ms, ev);
                self.open_since = Some(fix.ts_ms);
            }
            Some(since) => {
                ctx.close(
                    AlertKind::GeofenceExit,
                    dev.class,
                    dev.id,
                    since,
                    fix.ts_ms,
                    ev,
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RulesConfig;
    use crate::fences::FenceIndex;
    use crate::kinds::testing::{summary, with_ctx};
    use crate::packed::Packed;
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
            reports_ignition: true,
        };
        let fixes: Vec<Fix> = lats
            .iter()
            .enumerate()
            .map(|(i, lat)| Fix {
                ts_ms: i as i64 * 60_000,
                lat: *lat,
                lon: 121.05,
                device: 0,
                ignition: Some(true),
                speed_kmh: Packed::some(50.0),
            })
            .collect();
        summary(&with_ctx(&rules, &fences, &permitted, None, |ctx| {
            for pair in fixes.windows(2) {
                let step = Step {
                    next: pair[1],
                    ..Step::lone(pair[0])
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
    fn a_fix_far_outside_confirmed_by_the_next_opens() {
        let out = run(&[31.05, 31.2, 31.21]);
        assert_eq!(out, vec![(AlertKind::GeofenceExit, Phase::Open, 60)]);
    }

    #[test]
    fn a_single_drift_fix_outside_is_quiet() {
        assert!(run(&[31.05, 31.2, 31.05, 31.05]).is_empty());
    }
}
