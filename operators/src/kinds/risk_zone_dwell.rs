//! `risk_zone_dwell`: inside a risk fence continuously for the dwell threshold (the fence's
//! `dwell_min`, else the configured one). Timer-driven: it opens when the pipeline clock
//! passes entry + dwell even if no message arrives; it closes when the visit ends.

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::AlertKind;

use crate::config::RulesConfig;
use crate::ctx::{Ctx, evidence};
use crate::fences::{FenceIdx, FenceIndex};
use crate::kinds::Dev;
use crate::kinds::risk_zone_enter::{Left, Visit};
use crate::position::Fix;

/// State of one vehicle: the visits whose dwell incident is open, with its start.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RiskZoneDwell {
    open: Vec<(FenceIdx, i64)>,
    /// Visits whose threshold passed while the held fix was outside: decided by the next
    /// accepted fix.
    held: Vec<FenceIdx>,
}

fn dwell_ms(fence: FenceIdx, rules: &RulesConfig, fences: &FenceIndex) -> i64 {
    let minutes = fences
        .fence(fence)
        .dwell_min
        .unwrap_or(rules.risk_zone_dwell.dwell_min);
    (minutes * 60_000.0).round() as i64
}

impl RiskZoneDwell {
    fn is_open_or_held(&self, fence: FenceIdx) -> bool {
        self.open.iter().any(|(f, _)| *f == fence) || self.held.contains(&fence)
    }

    /// Whether the state is the default: no incident open or held.
    pub fn at_rest(&self) -> bool {
        self.open.is_empty() && self.held.is_empty()
    }

    /// Appends the fences the state refers to.
    pub(crate) fn fence_refs(&self, out: &mut Vec<FenceIdx>) {
        out.extend(self.open.iter().map(|(f, _)| *f));
        out.extend(&self.held);
    }

    /// Renumbers the fences the state refers to (a restore onto another fence index); what
    /// `map` drops is forgotten: an open incident of a fence that is gone gets no `close`.
    pub(crate) fn remap_fences(&mut self, map: &impl Fn(FenceIdx) -> Option<FenceIdx>) {
        let mut open: Vec<(FenceIdx, i64)> = Vec::with_capacity(self.open.len());
        for &(f, since) in &self.open {
            if let Some(f) = map(f).filter(|f| open.iter().all(|(o, _)| o != f)) {
                open.push((f, since));
            }
        }
        self.open = open;
        let mut held: Vec<FenceIdx> = Vec::with_capacity(self.held.len());
        for &f in &self.held {
            if let Some(f) = map(f).filter(|f| !held.contains(f)) {
                held.push(f);
            }
        }
        self.held = held;
    }

    /// A fix was accepted: held visits are decided now (they left, or their timer runs again).
    pub fn on_step(&mut self) {
        self.held.clear();
    }

    /// The earliest time a current visit reaches its dwell threshold.
    pub fn due(&self, visits: &[Visit], rules: &RulesConfig, fences: &FenceIndex) -> Option<i64> {
        if !rules.risk_zone_dwell.enabled {
            return None;
        }
        visits
            .iter()
            .filter(|v| !self.is_open_or_held(v.fence))
            .map(|v| {
                v.entered_ms
                    .saturating_add(dwell_ms(v.fence, rules, fences))
            })
            .min()
    }

    /// Opens the incidents of visits whose threshold is `≤ now`. `held` is the valid fix the
    /// chain still holds (released, not yet confirmed): a visit it already shows left waits
    /// for that fix to be decided.
    pub fn on_timer<'d>(
        &mut self,
        now: i64,
        visits: &[Visit],
        held: Option<&Fix>,
        device_id: impl Fn(u16) -> Dev<'d>,
        ctx: &mut Ctx<'_>,
    ) {
        if !ctx.rules.risk_zone_dwell.enabled {
            return;
        }
        for v in visits {
            let due = v
                .entered_ms
                .saturating_add(dwell_ms(v.fence, ctx.rules, ctx.fences));
            if due > now || self.is_open_or_held(v.fence) {
                continue;
            }
            let leaving_before_due = v.outside_since().is_some_and(|t| t <= due);
            let left = leaving_before_due
                || held.is_some_and(|h| {
                    h.ts_ms <= due && ctx.fences.signed_distance_m(v.fence, h.lat, h.lon) > 0.0
                });
            if left {
                self.held.push(v.fence);
                continue;
            }
            let f = ctx.fences.fence(v.fence);
            let ev = evidence(json!({
                "fence_id": f.id,
                "category": f.category,
                "name": f.name,
                "entered_at": schemas::time::rfc3339_ms(v.entered_ms),
                "dwell_min": dwell_ms(v.fence, ctx.rules, ctx.fences) / 60_000,
            }));
            let dev = device_id(v.device);
            let saved = ctx.position.replace(v.at);
            ctx.open(AlertKind::RiskZoneDwell, dev.class, dev.id, due, ev);
            ctx.position = saved;
            self.open.push((v.fence, due));
        }
    }

    /// Closes the incident of a visit that ended.
    pub fn on_left<'d>(
        &mut self,
        left: &Left,
        device_id: impl Fn(u16) -> Dev<'d>,
        ctx: &mut Ctx<'_>,
    ) {
        let Some(pos) = self.open.iter().position(|(f, _)| *f == left.visit.fence) else {
            return;
        };
        let (fence, since) = self.open.swap_remove(pos);
        let dev = device_id(left.visit.device);
        let ev = evidence(json!({
            "fence_id": ctx.fences.fence(fence).id,
            "dwell_s": (left.left_ms - left.visit.entered_ms) / 1000,
        }));
        ctx.close(
            AlertKind::RiskZoneDwell,
            dev.class,
            dev.id,
            since,
            left.left_ms,
            ev,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kinds::risk_zone_enter::RiskZoneEnter;
    use crate::kinds::testing::{summary, with_ctx};
    use crate::packed::Packed;
    use crate::position::Step;
    use schemas::{DeviceClass, Phase};

    const FENCES: &str = r#"{"type":"FeatureCollection","features":[{"type":"Feature",
        "properties":{"id":"yard","role":"risk","category":"second_mortgage","radius_m":300,"dwell_min":20},
        "geometry":{"type":"Point","coordinates":[121.0,31.0]}}]}"#;

    fn step(
        ts_min: i64,
        inside: bool,
        yard: FenceIdx,
        visits: &mut RiskZoneEnter,
        dwell: &mut RiskZoneDwell,
        ctx: &mut Ctx<'_>,
    ) {
        let dev = |_| Dev {
            id: "D1",
            class: DeviceClass::Wired,
            reports_ignition: true,
        };
        let s = Step::lone(Fix {
            ts_ms: ts_min * 60_000,
            lat: if inside { 31.0 } else { 31.1 },
            lon: 121.0,
            device: 0,
            ignition: None,
            speed_kmh: Packed::NONE,
        });
        let mut left = Vec::new();
        let inside = if inside { vec![yard] } else { vec![] };
        visits.on_step(&s, &inside, dev, ctx, &mut left);
        for l in &left {
            dwell.on_left(l, dev, ctx);
        }
    }

    #[test]
    fn opens_at_entry_plus_dwell_and_closes_on_leaving() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::from_geojson_str(FENCES, "test").unwrap();
        let yard = fences.lookup("yard").unwrap();
        let mut visits = RiskZoneEnter::default();
        let mut dwell = RiskZoneDwell::default();
        let dev = |_| Dev {
            id: "D1",
            class: DeviceClass::Wired,
            reports_ignition: true,
        };
        let out = with_ctx(&rules, &fences, &[], None, |ctx| {
            step(0, true, yard, &mut visits, &mut dwell, ctx);
            assert_eq!(
                dwell.due(&visits.visits, ctx.rules, ctx.fences),
                Some(20 * 60_000)
            );
            dwell.on_timer(19 * 60_000, &visits.visits, None, dev, ctx);
            dwell.on_timer(25 * 60_000, &visits.visits, None, dev, ctx);
            assert_eq!(dwell.due(&visits.visits, ctx.rules, ctx.fences), None);
            step(50, false, yard, &mut visits, &mut dwell, ctx);
            step(51, false, yard, &mut visits, &mut dwell, ctx);
        });
        assert_eq!(
            summary(&out),
            vec![
                (AlertKind::RiskZoneEnter, Phase::Instant, 0),
                (AlertKind::RiskZoneDwell, Phase::Open, 20 * 60),
                (AlertKind::RiskZoneDwell, Phase::Close, 50 * 60)
            ]
        );
        assert_eq!(out[1].alert_id, out[2].alert_id);
    }
}
