//! Alerts (SPEC §4): one per incident with `open`/`close`, or `instant`.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use xxhash_rust::xxh3::xxh3_128;

/// Alert kinds (SPEC §4). The snake_case names are the `kind` field.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    /// External power removed.
    PowerCut,
    /// Tamper or removal alarm.
    DeviceTamper,
    /// Moved while parked with ignition off, or device tow alarm.
    TowSuspected,
    /// No message for longer than the device class allows.
    Offline,
    /// Jamming alarm, or no fix while driving.
    GnssJamming,
    /// Implausible jump between consecutive fixes.
    LocationJump,
    /// Left the permitted fences.
    GeofenceExit,
    /// Entered a risk fence.
    RiskZoneEnter,
    /// Stayed in a risk fence too long.
    RiskZoneDwell,
    /// Not moved for days while online.
    StationaryLong,
    /// Odometer went backwards.
    OdometerRollback,
    /// Odometer disagrees with GNSS distance.
    OdometerMismatch,
    /// Trouble codes cleared.
    DtcCleared,
    /// OBD VIN differs from the registered VIN.
    VinMismatch,
    /// One VIN under two loans.
    DuplicateCollateral,
    /// Backup battery low.
    LowBattery,
    /// Night location moved away from home.
    ResidenceChange,
    /// Unusual daily distance.
    MileageAnomaly,
    /// Driving at night, unusually.
    NightMovement,
}

impl AlertKind {
    /// Every kind, in SPEC order.
    pub const ALL: [AlertKind; 19] = [
        AlertKind::PowerCut,
        AlertKind::DeviceTamper,
        AlertKind::TowSuspected,
        AlertKind::Offline,
        AlertKind::GnssJamming,
        AlertKind::LocationJump,
        AlertKind::GeofenceExit,
        AlertKind::RiskZoneEnter,
        AlertKind::RiskZoneDwell,
        AlertKind::StationaryLong,
        AlertKind::OdometerRollback,
        AlertKind::OdometerMismatch,
        AlertKind::DtcCleared,
        AlertKind::VinMismatch,
        AlertKind::DuplicateCollateral,
        AlertKind::LowBattery,
        AlertKind::ResidenceChange,
        AlertKind::MileageAnomaly,
        AlertKind::NightMovement,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::PowerCut => "power_cut",
            AlertKind::DeviceTamper => "device_tamper",
            AlertKind::TowSuspected => "tow_suspected",
            AlertKind::Offline => "offline",
            AlertKind::GnssJamming => "gnss_jamming",
            AlertKind::LocationJump => "location_jump",
            AlertKind::GeofenceExit => "geofence_exit",
            AlertKind::RiskZoneEnter => "risk_zone_enter",
            AlertKind::RiskZoneDwell => "risk_zone_dwell",
            AlertKind::StationaryLong => "stationary_long",
            AlertKind::OdometerRollback => "odometer_rollback",
            AlertKind::OdometerMismatch => "odometer_mismatch",
            AlertKind::DtcCleared => "dtc_cleared",
            AlertKind::VinMismatch => "vin_mismatch",
            AlertKind::DuplicateCollateral => "duplicate_collateral",
            AlertKind::LowBattery => "low_battery",
            AlertKind::ResidenceChange => "residence_change",
            AlertKind::MileageAnomaly => "mileage_anomaly",
            AlertKind::NightMovement => "night_movement",
        }
    }

    /// Looks up a snake_case name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == s)
    }
}

/// Where an alert stands in its incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// The incident starts.
    Open,
    /// The incident ended.
    Close,
    /// An incident without duration.
    Instant,
}

impl Phase {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Open => "open",
            Phase::Close => "close",
            Phase::Instant => "instant",
        }
    }
}

/// Severity of an alert.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Act now.
    Critical,
    /// Act today.
    High,
    /// Review.
    Medium,
    /// For the record.
    Low,
}

impl Severity {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Critical => "critical",
            Severity::High => "high",
            Severity::Medium => "medium",
            Severity::Low => "low",
        }
    }
}

/// One alert (SPEC §4). Times are epoch milliseconds inside and RFC 3339 UTC on the wire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Alert {
    /// Deterministic incident id, see [`alert_id`].
    pub alert_id: String,
    /// Kind of incident.
    pub kind: AlertKind,
    /// Open, close or instant.
    pub phase: Phase,
    /// Severity.
    pub severity: Severity,
    /// Vehicle.
    pub vehicle_id: String,
    /// Loan; null for unregistered devices.
    pub loan_id: Option<String>,
    /// Device whose message (or silence) triggered the alert.
    pub device_id: String,
    /// When the condition happened.
    #[serde(rename = "event_time", with = "crate::time::serde_rfc3339")]
    pub event_time_ms: i64,
    /// When lienwatch emitted the alert.
    #[serde(rename = "detected_at", with = "crate::time::serde_rfc3339")]
    pub detected_at_ms: i64,
    /// Last valid latitude at `event_time`.
    pub lat: Option<f64>,
    /// Last valid longitude at `event_time`.
    pub lon: Option<f64>,
    /// Raised from late or back-filled data.
    pub backfill: bool,
    /// Figures that justify the alert.
    pub evidence: Map<String, Value>,
}

/// The deterministic alert id: a 128-bit hash of (vehicle_id, kind, incident start time),
/// as 32 hex digits. `open` and `close` of one incident share it; a replay or a restart
/// yields the same id.
pub fn alert_id(vehicle_id: &str, kind: AlertKind, incident_start_ms: i64) -> String {
    let mut key = Vec::with_capacity(vehicle_id.len() + 40);
    key.extend_from_slice(vehicle_id.as_bytes());
    key.push(0);
    key.extend_from_slice(kind.as_str().as_bytes());
    key.push(0);
    key.extend_from_slice(&incident_start_ms.to_le_bytes());
    format!("{:032x}", xxh3_128(&key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alert_ids_are_deterministic_and_distinct() {
        let a = alert_id("V1", AlertKind::Offline, 1000);
        assert_eq!(a, alert_id("V1", AlertKind::Offline, 1000));
        assert_eq!(a.len(), 32);
        assert_ne!(a, alert_id("V1", AlertKind::Offline, 1001));
        assert_ne!(a, alert_id("V1", AlertKind::PowerCut, 1000));
        assert_ne!(a, alert_id("V2", AlertKind::Offline, 1000));
    }

    #[test]
    fn alert_json_matches_spec() {
        let alert = Alert {
            alert_id: alert_id("V1", AlertKind::PowerCut, 1_764_403_200_000),
            kind: AlertKind::PowerCut,
            phase: Phase::Open,
            severity: Severity::Critical,
            vehicle_id: "V1".into(),
            loan_id: None,
            device_id: "D1".into(),
            event_time_ms: 1_764_403_200_000,
            detected_at_ms: 1_764_403_201_000,
            lat: Some(31.2),
            lon: None,
            backfill: false,
            evidence: Map::new(),
        };
        let v: Value = serde_json::to_value(&alert).unwrap();
        assert_eq!(v["kind"], "power_cut");
        assert_eq!(v["phase"], "open");
        assert_eq!(v["severity"], "critical");
        assert_eq!(v["event_time"], "2025-11-29T08:00:00.000Z");
        assert_eq!(v["loan_id"], Value::Null);
        let back: Alert = serde_json::from_value(v).unwrap();
        assert_eq!(back, alert);
        for kind in AlertKind::ALL {
            assert_eq!(AlertKind::parse(kind.as_str()), Some(kind));
        }
    }
}
