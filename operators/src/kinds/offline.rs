//! `offline`: a device sends nothing for longer than its class allows. Timer-driven on the
//! pipeline clock; closes on the next in-order reading with the gap and the displacement.

use serde::{Deserialize, Serialize};
use serde_json::json;

use schemas::AlertKind;

use crate::config::RulesConfig;
use crate::ctx::{Ctx, evidence};
use crate::geo::haversine_m;
use crate::kinds::Dev;

/// State of one device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Offline {
    open_since: Option<i64>,
}

impl Offline {
    /// When the timer is due: the last in-order reading plus the class threshold, unless an
    /// incident is already open.
    pub fn due(&self, last_ts: Option<i64>, dev: Dev<'_>, rules: &RulesConfig) -> Option<i64> {
        if !rules.offline.enabled || self.open_since.is_some() {
            return None;
        }
        Some(last_ts?.saturating_add(rules.offline_after_ms(dev.class)))
    }

    /// Fires the timer at `now` if due.
    pub fn on_timer(&mut self, now: i64, last_ts: Option<i64>, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        let Some(due) = self.due(last_ts, dev, ctx.rules) else {
            return;
        };
        if due > now {
            return;
        }
        let threshold_s = ctx.rules.offline_after_ms(dev.class) / 1000;
        ctx.open(
            AlertKind::Offline,
            dev.class,
            dev.id,
            due,
            evidence(json!({
                "last_seen": last_ts.map(schemas::time::rfc3339_ms),
                "threshold_s": threshold_s,
                "device_class": dev.class.as_str(),
            })),
        );
        self.open_since = Some(due);
    }

    /// Handles an in-order reading: closes an open incident. `last` is the device's previous
    /// reading time and last fix; `fix` the position in this reading, if any.
    pub fn on_reading(
        &mut self,
        ts_ms: i64,
        last: (Option<i64>, Option<(f64, f64)>),
        fix: Option<(f64, f64)>,
        dev: Dev<'_>,
        ctx: &mut Ctx<'_>,
    ) {
        let Some(since) = self.open_since.take() else {
            return;
        };
        let displacement_m = match (last.1, fix) {
            (Some(a), Some(b)) => Some(haversine_m(a.0, a.1, b.0, b.1).round()),
            _ => None,
        };
        ctx.close(
            AlertKind::Offline,
            dev.class,
            dev.id,
            since,
            ts_ms,
            evidence(json!({
                "gap_s": last.0.map(|l| (ts_ms - l) / 1000),
                "displacement_m": displacement_m,
            })),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fences::FenceIndex;
    use crate::kinds::testing::{dev, summary, with_ctx};
    use schemas::{DeviceClass, Phase};

    #[test]
    fn opens_at_threshold_and_closes_with_displacement() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let mut k = Offline::default();
        let dev = dev(DeviceClass::Obd);
        let out = with_ctx(&rules, &fences, &[], None, |ctx| {
            assert_eq!(k.due(Some(1_000), dev, ctx.rules), Some(1_801_000));
            k.on_timer(1_800_999, Some(1_000), dev, ctx);
            k.on_timer(1_801_000, Some(1_000), dev, ctx);
            assert_eq!(k.due(Some(1_000), dev, ctx.rules), None);
            k.on_reading(
                7_201_000,
                (Some(1_000), Some((31.0, 121.0))),
                Some((31.1, 121.0)),
                dev,
                ctx,
            );
        });
        assert_eq!(
            summary(&out),
            vec![
                (AlertKind::Offline, Phase::Open, 1801),
                (AlertKind::Offline, Phase::Close, 7201)
            ]
        );
        assert_eq!(out[0].alert_id, out[1].alert_id);
        assert_eq!(out[1].evidence["gap_s"], json!(7200));
        let d = out[1].evidence["displacement_m"].as_f64().unwrap();
        assert!((d - 11_120.0).abs() < 50.0, "{d}");
    }

    #[test]
    fn wireless_is_medium_with_its_own_threshold() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let mut k = Offline::default();
        let dev = Dev {
            id: "W1",
            class: DeviceClass::Wireless,
            reports_ignition: true,
        };
        let out = with_ctx(&rules, &fences, &[], None, |ctx| {
            k.on_timer(10 * 3_600_000, Some(0), dev, ctx);
            k.on_timer(26 * 3_600_000, Some(0), dev, ctx);
        });
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].severity, schemas::Severity::Medium);
    }
}
