//! What a rule sees while it runs: the settings, the fences, the vehicle's identity, and the
//! alert output. Rules build alerts only through [`Ctx`], so ids, severities and positions are
//! filled in one way everywhere.

use serde_json::{Map, Value};

use schemas::alert::alert_id;
use schemas::{Alert, AlertKind, DeviceClass, Phase, Severity};

use crate::config::RulesConfig;
use crate::fences::{FenceIdx, FenceIndex};

/// The context of one rule invocation.
pub struct Ctx<'a> {
    /// Rule settings.
    pub rules: &'a RulesConfig,
    /// Risk and permitted fences.
    pub fences: &'a FenceIndex,
    /// The vehicle's permitted fences (empty = unrestricted).
    pub permitted: &'a [FenceIdx],
    /// The vehicle's registered VIN.
    pub registered_vin: Option<&'a str>,
    /// Vehicle id.
    pub vehicle_id: &'a str,
    /// Loan id, if registered.
    pub loan_id: Option<&'a str>,
    /// Last valid position of the vehicle at the time being processed.
    pub position: Option<(f64, f64)>,
    /// Whether the data being processed is late or back-filled.
    pub backfill: bool,
    /// Wall-clock time stamped on emitted alerts.
    pub detected_at_ms: i64,
    /// Where alerts go.
    pub alerts: &'a mut Vec<Alert>,
}

/// Default severity of a kind (SPEC §4); `offline` depends on the device class.
pub fn severity(kind: AlertKind, class: DeviceClass) -> Severity {
    use AlertKind::*;
    match kind {
        PowerCut | DeviceTamper | TowSuspected | OdometerRollback | VinMismatch
        | DuplicateCollateral => Severity::Critical,
        Offline if class == DeviceClass::Wireless => Severity::Medium,
        Offline | GnssJamming | LocationJump | GeofenceExit | RiskZoneDwell | OdometerMismatch
        | ResidenceChange => Severity::High,
        RiskZoneEnter | StationaryLong | MileageAnomaly | NightMovement => Severity::Medium,
        DtcCleared | LowBattery => Severity::Low,
    }
}

/// Builds the evidence object from a `serde_json::json!` object literal. Fractions are
/// rounded to 6 decimals (about 0.1 m in degrees), so readings kept as `f32` read as sent
/// (`12.3`, not `12.300000190734863`).
pub fn evidence(value: Value) -> Map<String, Value> {
    match round_fractions(value) {
        Value::Object(map) => map,
        other => {
            let mut map = Map::new();
            map.insert("value".to_owned(), other);
            map
        }
    }
}

fn round_fractions(value: Value) -> Value {
    match value {
        Value::Number(n) if n.is_f64() => n
            .as_f64()
            .and_then(|f| serde_json::Number::from_f64((f * 1e6).round() / 1e6))
            .map_or(Value::Null, Value::Number),
        Value::Array(items) => Value::Array(items.into_iter().map(round_fractions).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (k, round_fractions(v)))
                .collect(),
        ),
        other => other,
    }
}

impl Ctx<'_> {
    /// Emits an alert. `incident_start_ms` identifies the incident (the open's or instant's
    /// event time); `event_time_ms` is when this phase happened.
    #[allow(clippy::too_many_arguments)]
    pub fn emit(
        &mut self,
        kind: AlertKind,
        phase: Phase,
        class: DeviceClass,
        device_id: &str,
        incident_start_ms: i64,
        event_time_ms: i64,
        evidence: Map<String, Value>,
    ) {
        let (lat, lon) = self.position.unzip();
        self.alerts.push(Alert {
            alert_id: alert_id(self.vehicle_id, kind, incident_start_ms),
            kind,
            phase,
            severity: severity(kind, class),
            vehicle_id: self.vehicle_id.to_owned(),
            loan_id: self.loan_id.map(str::to_owned),
            device_id: device_id.to_owned(),
            event_time_ms,
            detected_at_ms: self.detected_at_ms,
            lat,
            lon,
            backfill: self.backfill,
            evidence,
        });
    }

    /// Emits an `instant` alert at `event_time_ms`.
    pub fn instant(
        &mut self,
        kind: AlertKind,
        device_id: &str,
        event_time_ms: i64,
        evidence: Map<String, Value>,
    ) {
        self.emit(
            kind,
            Phase::Instant,
            DeviceClass::Wired,
            device_id,
            event_time_ms,
            event_time_ms,
            evidence,
        );
    }

    /// Emits the `open` of an incident starting at `event_time_ms`.
    pub fn open(
        &mut self,
        kind: AlertKind,
        class: DeviceClass,
        device_id: &str,
        event_time_ms: i64,
        evidence: Map<String, Value>,
    ) {
        self.emit(
            kind,
            Phase::Open,
            class,
            device_id,
            event_time_ms,
            event_time_ms,
            evidence,
        );
    }

    /// Emits the `close` of the incident opened at `opened_ms`.
    pub fn close(
        &mut self,
        kind: AlertKind,
        class: DeviceClass,
        device_id: &str,
        opened_ms: i64,
        event_time_ms: i64,
        evidence: Map<String, Value>,
    ) {
        self.emit(
            kind,
            Phase::Close,
            class,
            device_id,
            opened_ms,
            event_time_ms,
            evidence,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn evidence_rounds_f32_noise() {
        let e = evidence(json!({ "ext_v": 12.3f32, "n": 3, "nested": [0.27f32], "s": "x" }));
        assert_eq!(
            Value::Object(e),
            json!({ "ext_v": 12.3, "n": 3, "nested": [0.27], "s": "x" })
        );
    }
}
