//! The internal record: one validated telemetry reading (SPEC §2), plus the identity the
//! registry gave it.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Kind of tracker, from the registry (SPEC §3). It picks the offline threshold and the
/// severity of `offline`; unregistered devices are treated as `Wired`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DeviceClass {
    /// Wired GNSS unit powered by the vehicle.
    #[default]
    Wired,
    /// OBD-II dongle.
    Obd,
    /// Battery-powered "wireless" unit that reports rarely.
    Wireless,
}

impl DeviceClass {
    /// Parses the registry's `device_class` column.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "wired" => Some(Self::Wired),
            "obd" => Some(Self::Obd),
            "wireless" => Some(Self::Wireless),
            _ => None,
        }
    }

    /// The registry spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Wired => "wired",
            Self::Obd => "obd",
            Self::Wireless => "wireless",
        }
    }
}

/// Device-raised alarms that rules react to (SPEC §2). Other names are kept as strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Alarm {
    /// External power removed.
    PowerCut = 1 << 0,
    /// Supply voltage low.
    LowVoltage = 1 << 1,
    /// Case opened / tamper switch.
    Tamper = 1 << 2,
    /// Device removed from its mount.
    Removal = 1 << 3,
    /// GNSS antenna disconnected.
    GnssAntennaCut = 1 << 4,
    /// GNSS jamming detected by the receiver.
    Jamming = 1 << 5,
    /// Tow / illegal displacement detected by the device.
    Tow = 1 << 6,
    /// Ignition without authorisation.
    IllegalIgnition = 1 << 7,
    /// Crash detected.
    Collision = 1 << 8,
    /// Panic button.
    Sos = 1 << 9,
}

impl Alarm {
    /// Every known alarm, in bit order.
    pub const ALL: [Alarm; 10] = [
        Alarm::PowerCut,
        Alarm::LowVoltage,
        Alarm::Tamper,
        Alarm::Removal,
        Alarm::GnssAntennaCut,
        Alarm::Jamming,
        Alarm::Tow,
        Alarm::IllegalIgnition,
        Alarm::Collision,
        Alarm::Sos,
    ];

    /// The wire name of the alarm.
    pub fn as_str(self) -> &'static str {
        match self {
            Alarm::PowerCut => "power_cut",
            Alarm::LowVoltage => "low_voltage",
            Alarm::Tamper => "tamper",
            Alarm::Removal => "removal",
            Alarm::GnssAntennaCut => "gnss_antenna_cut",
            Alarm::Jamming => "jamming",
            Alarm::Tow => "tow",
            Alarm::IllegalIgnition => "illegal_ignition",
            Alarm::Collision => "collision",
            Alarm::Sos => "sos",
        }
    }

    /// Looks up a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// The set of known alarms a message carried, as bits.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AlarmSet(pub u16);

impl AlarmSet {
    /// Whether `alarm` is in the set.
    pub fn contains(self, alarm: Alarm) -> bool {
        self.0 & alarm as u16 != 0
    }

    /// Adds `alarm`.
    pub fn insert(&mut self, alarm: Alarm) {
        self.0 |= alarm as u16;
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// The `gnss` object. `lat`/`lon` are absent on some no-fix messages.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Gnss {
    /// Latitude, WGS-84 degrees.
    pub lat: Option<f64>,
    /// Longitude, WGS-84 degrees.
    pub lon: Option<f64>,
    /// `false` means the receiver had no valid fix; absent means valid.
    pub fix: bool,
    /// Ground speed from the receiver.
    pub speed_kmh: Option<f32>,
    /// Course over ground, degrees.
    pub heading: Option<f32>,
    /// Altitude, metres.
    pub alt_m: Option<f32>,
    /// Horizontal dilution of precision.
    pub hdop: Option<f32>,
    /// Satellites used.
    pub sats: Option<u16>,
}

/// The `obd` object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Obd {
    /// Engine speed, rpm.
    pub rpm: Option<f32>,
    /// VIN read over OBD (mode 09 PID 02).
    pub vin: Option<String>,
    /// Malfunction indicator lamp.
    pub mil: Option<bool>,
    /// Number of stored trouble codes.
    pub dtc_count: Option<u32>,
    /// Distance since codes were cleared (PID 0x31), km.
    pub dist_since_clear_km: Option<f64>,
    /// Distance travelled with the MIL on (PID 0x21), km.
    pub dist_mil_km: Option<f64>,
    /// Engine run time, hours.
    pub engine_hours: Option<f64>,
}

/// The `power` object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Power {
    /// External supply voltage, volts.
    pub ext_v: Option<f32>,
    /// Backup battery charge, percent.
    pub battery_pct: Option<f32>,
}

/// One validated telemetry reading, as the device sent it (SPEC §2).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// Tracker id.
    pub device_id: String,
    /// Event time, epoch milliseconds.
    pub ts_ms: i64,
    /// Per-device sequence number.
    pub seq: Option<u64>,
    /// Buffered data uploaded late.
    pub backfill: bool,
    /// GNSS block, if any.
    pub gnss: Option<Gnss>,
    /// Ignition state; `None` = not reported.
    pub ignition: Option<bool>,
    /// Vehicle (OBD) speed.
    pub speed_kmh: Option<f32>,
    /// Vehicle odometer.
    pub odometer_km: Option<f64>,
    /// OBD block, if any.
    pub obd: Option<Obd>,
    /// Power block, if any.
    pub power: Option<Power>,
    /// Known alarms, as bits.
    pub alarm_set: AlarmSet,
    /// Every alarm name as sent, known or not (passed through to the archive).
    pub alarms: Vec<String>,
    /// Hash of the message's raw JSON, for content de-duplication.
    pub content_hash: u64,
    /// When lienwatch received the message, epoch milliseconds.
    pub received_at_ms: i64,
}

impl Reading {
    /// The position, if this reading has a usable fix: `fix` true, lat/lon present and
    /// `hdop` ≤ `max_hdop` when given (SPEC §4a).
    pub fn valid_position(&self, max_hdop: f32) -> Option<(f64, f64)> {
        let g = self.gnss.as_ref()?;
        if !g.fix || g.hdop.is_some_and(|h| h > max_hdop) {
            return None;
        }
        Some((g.lat?, g.lon?))
    }

    /// External supply voltage, if reported.
    pub fn ext_v(&self) -> Option<f32> {
        self.power.as_ref()?.ext_v
    }

    /// Backup battery percent, if reported.
    pub fn battery_pct(&self) -> Option<f32> {
        self.power.as_ref()?.battery_pct
    }
}

/// A reading with the identity the registry resolved for its device (SPEC §3).
///
/// The ids are the registry's own, shared: identifying a reading copies no string.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// Vehicle the device belongs to (its `device_id` when unregistered).
    #[serde(with = "crate::shared_str")]
    pub vehicle_id: Arc<str>,
    /// Loan of the vehicle; `None` when unregistered.
    #[serde(with = "crate::shared_str::option")]
    pub loan_id: Option<Arc<str>>,
    /// Tracker class (`Wired` when unregistered).
    pub class: DeviceClass,
    /// Whether the device is in the registry.
    pub registered: bool,
    /// Position of the message in the input (line number in replay), used to process a
    /// vehicle's messages in arrival order whatever worker decoded them.
    pub ingest_seq: u64,
    /// The reading itself, boxed: a record is moved many times on its way through the
    /// dataflow, and moving a pointer is cheaper than moving ~330 bytes.
    pub reading: Box<Reading>,
}
