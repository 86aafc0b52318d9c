//! `risk_zone_enter`: the first accepted fix inside a risk fence (one alert per fence and
//! visit). Also tracks the visits themselves, which `risk_zone_dwell` times: a visit ends
//! after consecutive accepted fixes outside the fence.

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::AlertKind;
use schemas::time::DAY_MS;

use crate::ctx::{Ctx, evidence};
use crate::fences::FenceIdx;
use crate::kinds::Dev;
use crate::position::Step;

/// A current stay inside one risk fence.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Visit {
    /// The fence.
    pub fence: FenceIdx,
    /// Time of the first accepted fix inside.
    pub entered_ms: i64,
    /// Device of that fix.
    pub device: u16,
    /// Position of that fix.
    pub at: (f64, f64),
    /// Time of the first fix of the current run outside, and the run length.
    outside: Option<(i64, u32)>,
}

impl Visit {
    /// Time of the first fix of the current run outside the fence, if the vehicle may be
    /// leaving (the visit ends when the run is long enough).
    pub fn outside_since(&self) -> Option<i64> {
        self.outside.map(|(since, _)| since)
    }
}

/// A visit that just ended.
#[derive(Clone, Debug, PartialEq)]
pub struct Left {
    /// The visit.
    pub visit: Visit,
    /// Time of the first fix outside.
    pub left_ms: i64,
}

/// State of one vehicle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RiskZoneEnter {
    /// Current visits.
    pub visits: Vec<Visit>,
    /// Entries of the last `history_days`, for the `entries_30d` evidence.
    entries: Vec<(FenceIdx, i64)>,
}

impl RiskZoneEnter {
    /// Handles an accepted fix. `inside` lists the risk fences containing it (ascending);
    /// visits that end are appended to `left`.
    pub fn on_step<'d>(
        &mut self,
        step: &Step,
        inside: &[FenceIdx],
        device_id: impl Fn(u16) -> Dev<'d>,
        ctx: &mut Ctx<'_>,
        left: &mut Vec<Left>,
    ) {
        let rules = &ctx.rules.risk_zone_enter;
        let fix = step.fix;
        let leave_fixes = rules.leave_fixes.max(1);
        self.visits.retain_mut(|v| {
            if inside.binary_search(&v.fence).is_ok() {
                v.outside = None;
                return true;
            }
            let (since, run) = v.outside.map_or((fix.ts_ms, 1), |(s, r)| (s, r + 1));
            if run >= leave_fixes {
                left.push(Left {
                    visit: v.clone(),
                    left_ms: since,
                });
                return false;
            }
            v.outside = Some((since, run));
            true
        });
        let horizon = fix.ts_ms - i64::from(rules.history_days) * DAY_MS;
        self.entries.retain(|(_, t)| *t >= horizon);
        for &fence in inside {
            if self.visits.iter().any(|v| v.fence == fence) {
                continue;
            }
            self.visits.push(Visit {
                fence,
                entered_ms: fix.ts_ms,
                device: fix.device,
                at: (fix.lat, fix.lon),
                outside: None,
            });
            self.entries.push((fence, fix.ts_ms));
            if !rules.enabled {
                continue;
            }
            let f = ctx.fences.fence(fence);
            let entries = self.entries.iter().filter(|(e, _)| *e == fence).count();
            let ev = evidence(json!({
                "fence_id": f.id,
                "category": f.category,
                "name": f.name,
                "entries_30d": entries,
            }));
            ctx.instant(
                AlertKind::RiskZoneEnter,
                device_id(fix.device).id,
                fix.ts_ms,
                ev,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RulesConfig;
    use crate::fences::FenceIndex;
    use crate::kinds::testing::with_ctx;
    use crate::position::Fix;
    use schemas::DeviceClass;

    const FENCES: &str = r#"{"type":"FeatureCollection","features":[{"type":"Feature",
        "properties":{"id":"pawn","role":"risk","category":"pawn_shop","name":"Pawn","radius_m":300},
        "geometry":{"type":"Point","coordinates":[121.0,31.0]}}]}"#;

    #[test]
    fn one_alert_per_visit_and_leaving_needs_two_fixes() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::from_geojson_str(FENCES, "test").unwrap();
        let pawn = fences.lookup("pawn").unwrap();
        let mut k = RiskZoneEnter::default();
        let dev = |_| Dev {
            id: "D1",
            class: DeviceClass::Wired,
            reports_ignition: true,
        };
        let mut left = Vec::new();
        let out = with_ctx(&rules, &fences, &[], None, |ctx| {
            for (i, (lat, inside)) in [
                (31.1, false),
                (31.0, true),
                (31.0, true),
                (31.1, false),
                (31.0, true),
                (31.1, false),
                (31.1, false),
                (31.0, true),
            ]
            .into_iter()
            .enumerate()
            {
                let step = Step::lone(Fix {
                    ts_ms: i as i64 * 60_000,
                    lat,
                    lon: 121.0,
                    device: 0,
                    ignition: None,
                    speed_kmh: None,
                });
                let inside: Vec<_> = if inside { vec![pawn] } else { vec![] };
                k.on_step(&step, &inside, dev, ctx, &mut left);
            }
        });
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].event_time_ms, 60_000);
        assert_eq!(out[1].event_time_ms, 420_000);
        assert_eq!(out[0].evidence["category"], "pawn_shop");
        assert_eq!(out[1].evidence["entries_30d"], 2);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].left_ms, 300_000);
    }
}
