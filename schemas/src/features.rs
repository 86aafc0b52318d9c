//! Daily valuation features (SPEC §5): one row per vehicle and local day, emitted when the
//! day closes on the pipeline clock and again, with `revision` + 1, when late data changes it.

use serde::{Deserialize, Serialize};

/// One vehicle-day of features. Distances are kilometres; times epoch milliseconds inside,
/// RFC 3339 in JSON.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DailyFeatures {
    /// Vehicle.
    pub vehicle_id: String,
    /// Loan (null if unregistered).
    pub loan_id: Option<String>,
    /// Local date in the vehicle's time zone, `YYYY-MM-DD`.
    pub date: String,
    /// 0 for the first emission; +1 for each re-emission after late data changed the day.
    pub revision: u32,
    /// Odometer of the day's earliest reading that has one.
    pub odometer_start_km: Option<f64>,
    /// Odometer of the day's latest reading that has one.
    pub odometer_end_km: Option<f64>,
    /// `odometer_end_km - odometer_start_km`.
    pub odometer_km: Option<f64>,
    /// GNSS distance (docs/rules.md) of the steps ending in the day.
    pub gnss_km: f64,
    /// Minutes of the steps counted in `gnss_km`.
    pub driving_minutes: f64,
    /// Runs of counted steps (a trip ends at a step that is not counted).
    pub trips: u32,
    /// Largest reported speed (OBD, else GNSS).
    pub max_speed_kmh: Option<f64>,
    /// Harsh accelerations between close readings of one device.
    pub harsh_accel: u32,
    /// Harsh brakings between close readings of one device.
    pub harsh_brake: u32,
    /// GNSS distance of the steps ending in the night window (00:00–05:00 local).
    pub night_km: f64,
    /// GNSS distance of the steps ending while the malfunction lamp was on.
    pub mil_km: f64,
    /// Largest `obd.dtc_count`.
    pub dtc_count_max: Option<u32>,
    /// Accepted readings of the day (in order and late; duplicates excluded).
    pub messages: u64,
    /// Earliest reading.
    #[serde(with = "crate::time::serde_rfc3339")]
    pub first_ts: i64,
    /// Latest reading.
    #[serde(with = "crate::time::serde_rfc3339")]
    pub last_ts: i64,
    /// `gnss_km` of this day and the 6 before it.
    pub km_7d: f64,
    /// `gnss_km` of this day and the 29 before it.
    pub km_30d: f64,
    /// `km_30d` scaled to a year over the days of history in the 30-day window.
    pub projected_annual_km: f64,
    /// Odometer distance over GNSS distance in the 30-day window (null below 1 km).
    pub odo_gnss_ratio_30d: Option<f64>,
}
