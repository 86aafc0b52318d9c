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
use crate::position::{Fix, Step};

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
    /// The last late fix, if it was inside risk fences.
    late_inside: Option<LateInside>,
}

/// A late fix inside risk fences, waiting for the next late fix to confirm it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct LateInside {
    ts_ms: i64,
    device: u16,
    at: (f64, f64),
    fences: Vec<FenceIdx>,
}

/// Two late fixes further apart than this do not confirm each other.
const LATE_CONFIRM_MS: i64 = 15 * 60_000;

impl RiskZoneEnter {
    /// Whether the state is the default: no visit, entry or late visit.
    pub fn at_rest(&self) -> bool {
        self.visits.is_empty() && self.entries.is_empty() && self.late_inside.is_none()
    }

    /// Appends the fences the state refers to.
    pub(crate) fn fence_refs(&self, out: &mut Vec<FenceIdx>) {
        out.extend(self.visits.iter().map(|v| v.fence));
        out.extend(self.entries.iter().map(|(f, _)| *f));
        if let Some(late) = &self.late_inside {
            out.extend(&late.fences);
        }
    }

    /// Renumbers the fences the state refers to (a restore onto another fence index); what
    /// `map` drops is forgotten: a visit of a fence that is gone ends without a trace.
    pub(crate) fn remap_fences(&mut self, map: &impl Fn(FenceIdx) -> Option<FenceIdx>) {
        let mut seen = Vec::with_capacity(self.visits.len());
        self.visits.retain_mut(|v| match map(v.fence) {
            // Two old fences may now be one (a retired id that came back): one visit each.
            Some(f) if !seen.contains(&f) => {
                seen.push(f);
                v.fence = f;
                true
            }
            _ => false,
        });
        self.entries = self
            .entries
            .iter()
            .filter_map(|&(f, t)| Some((map(f)?, t)))
            .collect();
        if let Some(late) = self.late_inside.as_mut() {
            late.fences = late.fences.iter().filter_map(|&f| map(f)).collect();
            late.fences.sort_unstable();
            late.fences.dedup();
            if late.fences.is_empty() {
                self.late_inside = None;
            }
        }
    }

    /// Handles a late (or back-filled) valid fix. A visit seen only in late data raises
    /// `risk_zone_enter` marked `backfill` when two consecutive late fixes are inside the
    /// fence (one fix could be drift) and no visit of that fence is known near that time.
    pub fn on_late_fix<'d>(
        &mut self,
        fix: &Fix,
        inside: &[FenceIdx],
        device_id: impl Fn(u16) -> Dev<'d>,
        ctx: &mut Ctx<'_>,
    ) {
        let known_ms = crate::config::secs_ms(ctx.rules.late_known_window_s);
        if let Some(first) = self.late_inside.take()
            && ctx.rules.risk_zone_enter.enabled
            && (fix.ts_ms - first.ts_ms).abs() <= LATE_CONFIRM_MS
        {
            let first_ms = first.ts_ms;
            for &fence in inside.iter().filter(|f| first.fences.contains(f)) {
                let known = self.visits.iter().any(|v| v.fence == fence)
                    || self
                        .entries
                        .iter()
                        .any(|&(f, t)| f == fence && (t - first_ms).abs() <= known_ms);
                if known {
                    continue;
                }
                self.entries.push((fence, first_ms));
                let saved = ctx.position.replace(first.at);
                self.raise(fence, first_ms, device_id(first.device).id, ctx);
                ctx.position = saved;
            }
        }
        if !inside.is_empty() {
            self.late_inside = Some(LateInside {
                ts_ms: fix.ts_ms,
                device: fix.device,
                at: (fix.lat, fix.lon),
                fences: inside.to_vec(),
            });
        }
    }

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
        // In-order entries are at accepted fixes, so an entry after the previous one was
        // raised from late data filling the gap before this fix: the stay it found goes on
        // with this fix and is not raised again.
        let gap_from_ms = step.prev.map_or(i64::MIN, |p| p.ts_ms);
        let known_ms = crate::config::secs_ms(ctx.rules.late_known_window_s);
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
            let raised_late = self.entries.iter().any(|&(f, t)| {
                f == fence && t > gap_from_ms && t <= fix.ts_ms && fix.ts_ms - t <= known_ms
            });
            if raised_late {
                continue;
            }
            self.entries.push((fence, fix.ts_ms));
            if rules.enabled {
                self.raise(fence, fix.ts_ms, device_id(fix.device).id, ctx);
            }
        }
    }

    /// Emits the entry into `fence` at `at_ms`, with the fence and the recent entries.
    fn raise(&self, fence: FenceIdx, at_ms: i64, device_id: &str, ctx: &mut Ctx<'_>) {
        let f = ctx.fences.fence(fence);
        let entries = self.entries.iter().filter(|(e, _)| *e == fence).count();
        let ev = evidence(json!({
            "fence_id": f.id,
            "category": f.category,
            "name": f.name,
            "entries_30d": entries,
        }));
        ctx.instant(AlertKind::RiskZoneEnter, device_id, at_ms, ev);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RulesConfig;
    use crate::fences::FenceIndex;
    use crate::kinds::testing::with_ctx;
    use crate::packed::Packed;
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
            let mut prev = None;
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
                let step = Step {
                    prev,
                    ..Step::lone(Fix {
                        ts_ms: i as i64 * 60_000,
                        lat,
                        lon: 121.0,
                        device: 0,
                        ignition: None,
                        speed_kmh: Packed::NONE,
                    })
                };
                let inside: Vec<_> = if inside { vec![pawn] } else { vec![] };
                k.on_step(&step, &inside, dev, ctx, &mut left);
                prev = Some(step.fix);
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

    #[test]
    fn a_visit_seen_only_in_late_data_raises_once_marked_backfill() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::from_geojson_str(FENCES, "test").unwrap();
        let pawn = fences.lookup("pawn").unwrap();
        let mut k = RiskZoneEnter::default();
        let dev = |_| Dev {
            id: "D1",
            class: DeviceClass::Wired,
            reports_ignition: true,
        };
        let fix = |min: i64| Fix {
            ts_ms: min * 60_000,
            lat: 31.0,
            lon: 121.0,
            device: 0,
            ignition: None,
            speed_kmh: Packed::NONE,
        };
        let out = with_ctx(&rules, &fences, &[], None, |ctx| {
            ctx.backfill = true;
            // A single late fix inside is not enough (drift).
            k.on_late_fix(&fix(0), &[pawn], dev, ctx);
            k.on_late_fix(&fix(1), &[], dev, ctx);
            // Two consecutive ones are; more fixes of the same visit add nothing.
            k.on_late_fix(&fix(100), &[pawn], dev, ctx);
            k.on_late_fix(&fix(101), &[pawn], dev, ctx);
            k.on_late_fix(&fix(102), &[pawn], dev, ctx);
        });
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].event_time_ms, 100 * 60_000);
        assert!(out[0].backfill);
    }

    #[test]
    fn a_stay_raised_from_late_data_goes_on_with_the_next_in_order_fix() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::from_geojson_str(FENCES, "test").unwrap();
        let pawn = fences.lookup("pawn").unwrap();
        let dev = |_| Dev {
            id: "D1",
            class: DeviceClass::Wired,
            reports_ignition: true,
        };
        let fix = |min: i64, lat: f64| Fix {
            ts_ms: min * 60_000,
            lat,
            lon: 121.0,
            device: 0,
            ignition: None,
            speed_kmh: Packed::NONE,
        };
        let step = |prev: i64, at: i64| Step {
            prev: Some(fix(prev, 31.1)),
            ..Step::lone(fix(at, 31.0))
        };
        // The tracker was offline from minute 10; its buffered fixes (minutes 20, 21) show the
        // car at the pawn shop, and the first live fix (minute 30) is still there.
        let run = |live: Step| {
            let mut k = RiskZoneEnter::default();
            let mut left = Vec::new();
            with_ctx(&rules, &fences, &[], None, |ctx| {
                ctx.backfill = true;
                k.on_late_fix(&fix(20, 31.0), &[pawn], dev, ctx);
                k.on_late_fix(&fix(21, 31.0), &[pawn], dev, ctx);
                ctx.backfill = false;
                k.on_step(&live, &[pawn], dev, ctx, &mut left);
            })
        };
        let out = run(step(10, 30));
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].backfill);
        // A live fix after the late ones' gap is a visit of its own.
        let out = run(step(25, 30));
        assert_eq!(out.len(), 2, "{out:?}");
        assert_eq!(out[1].event_time_ms, 30 * 60_000);
        assert!(!out[1].backfill);
    }
}
