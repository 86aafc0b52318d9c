//! One simulated telemetry message, compact in memory, and its JSON Lines rendering
//! (SPEC §2), written by hand into a reused buffer.

use chrono::{DateTime, SecondsFormat};

use super::fleet::{DevClass, Device, Vehicle};

/// Alarm bit: `power_cut`.
pub(crate) const AL_POWER_CUT: u16 = 1;
/// Alarm bit: `tamper`.
pub(crate) const AL_TAMPER: u16 = 1 << 1;
/// Alarm bit: `removal`.
pub(crate) const AL_REMOVAL: u16 = 1 << 2;
/// Alarm bit: `jamming`.
pub(crate) const AL_JAMMING: u16 = 1 << 3;
/// Alarm bit: `gnss_antenna_cut`.
pub(crate) const AL_ANTENNA_CUT: u16 = 1 << 4;
/// Alarm bit: `tow`.
pub(crate) const AL_TOW: u16 = 1 << 5;
/// Alarm bit: one name lienwatch does not know (passed through, raises nothing).
pub(crate) const AL_UNKNOWN: u16 = 1 << 6;

const ALARM_NAMES: [(u16, &str); 6] = [
    (AL_POWER_CUT, "power_cut"),
    (AL_TAMPER, "tamper"),
    (AL_REMOVAL, "removal"),
    (AL_JAMMING, "jamming"),
    (AL_ANTENNA_CUT, "gnss_antenna_cut"),
    (AL_TOW, "tow"),
];
const UNKNOWN_ALARMS: [&str; 5] = [
    "door_open",
    "overspeed",
    "harsh_brake",
    "acc_on",
    "vibration",
];

/// Flag: the payload carries `"backfill":true`.
pub(crate) const F_BACKFILL: u16 = 1;
/// Flag: delivered inside a batch (JSON array) line.
pub(crate) const F_BATCHED: u16 = 1 << 1;
/// Flag: delivered 5–30 min after its slot (may or may not be late for the pipeline).
pub(crate) const F_LATE: u16 = 1 << 2;
/// Flag: `ts` written as an RFC 3339 string.
pub(crate) const F_TS_STRING: u16 = 1 << 3;
/// Flag: carries unknown extra fields.
pub(crate) const F_EXTRA: u16 = 1 << 4;
/// Flag: written twice (exact duplicate line).
pub(crate) const F_DUPLICATED: u16 = 1 << 5;
/// Flag: touched or created by noise injection.
pub(crate) const F_NOISE: u16 = 1 << 6;
/// Flag: touched or created by an incident.
pub(crate) const F_INCIDENT: u16 = 1 << 7;
/// Flag: a drift outlier fix.
pub(crate) const F_DRIFT: u16 = 1 << 8;

/// What the `gnss` object says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Gnss {
    /// A valid fix.
    Fix,
    /// `fix:false` repeating the last known lat/lon.
    NoFixStale,
    /// `fix:false` without lat/lon.
    NoFixBare,
}

/// The motion state behind a message (ground truth, not sent).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Motion {
    /// Parked, engine off.
    Parked,
    /// Driving (engine on), including the departure and arrival messages.
    Driving,
    /// Towed with the engine off.
    Towed,
}

/// Which VIN an OBD message reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VinSel {
    /// The registered VIN.
    Registered,
    /// The vehicle's foreign VIN (`vin_mismatch` incidents).
    Foreign,
    /// Another pledged vehicle's VIN (cloned-VIN `duplicate_collateral` incidents).
    Cloned,
}

/// One message of one device.
#[derive(Clone, Debug)]
pub(crate) struct Msg {
    /// Event time, epoch ms.
    pub ts: i64,
    /// Position in the output (arrival time), epoch ms.
    pub arrival: i64,
    /// Sequence number (assigned once the device's messages are final).
    pub seq: u64,
    /// Latitude (rounded to 6 decimals).
    pub lat: f64,
    /// Longitude (rounded to 6 decimals).
    pub lon: f64,
    /// Fix state.
    pub gnss: Gnss,
    /// Ground truth motion.
    pub motion: Motion,
    /// GNSS speed, km/h.
    pub speed: f32,
    /// Course, degrees.
    pub heading: u16,
    /// HDOP.
    pub hdop: f32,
    /// Satellites.
    pub sats: u8,
    /// Altitude, metres.
    pub alt: f32,
    /// Reported ignition; `None` omits the field.
    pub ignition: Option<bool>,
    /// OBD vehicle speed, km/h (OBD units only).
    pub obd_speed: f32,
    /// Odometer, km (wired and OBD units).
    pub odometer: f64,
    /// Engine rpm (OBD).
    pub rpm: u16,
    /// Reported VIN (OBD).
    pub vin: VinSel,
    /// Distance since codes cleared, km (OBD).
    pub dist_clear: f64,
    /// Distance with MIL on, km (OBD).
    pub dist_mil: f64,
    /// Engine hours (OBD).
    pub engine_h: f64,
    /// Stored trouble codes (OBD).
    pub dtc: u8,
    /// MIL lit (OBD).
    pub mil: bool,
    /// External supply volts (wired and OBD units).
    pub ext_v: f32,
    /// Backup / main battery percent.
    pub battery: f32,
    /// Alarm bits (`AL_*`).
    pub alarms: u16,
    /// Flags (`F_*`).
    pub flags: u16,
}

impl Msg {
    /// Whether the message has a valid fix.
    pub(crate) fn has_fix(&self) -> bool {
        self.gnss == Gnss::Fix
    }

    /// Whether the flag is set.
    pub(crate) fn is(&self, flag: u16) -> bool {
        self.flags & flag != 0
    }

    /// Whether noise may touch this message.
    pub(crate) fn plain(&self) -> bool {
        self.flags & (F_NOISE | F_INCIDENT | F_BATCHED | F_LATE | F_DUPLICATED) == 0
    }
}

/// Appends the decimal digits of `n`.
pub(crate) fn push_u64(buf: &mut Vec<u8>, mut n: u64) {
    let mut tmp = [0u8; 20];
    let mut i = tmp.len();
    loop {
        i -= 1;
        tmp[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    buf.extend_from_slice(&tmp[i..]);
}

/// Appends a signed integer.
pub(crate) fn push_i64(buf: &mut Vec<u8>, n: i64) {
    if n < 0 {
        buf.push(b'-');
    }
    push_u64(buf, n.unsigned_abs());
}

/// Appends `v` with exactly `decimals` decimals (at most 6).
pub(crate) fn push_fixed(buf: &mut Vec<u8>, v: f64, decimals: u32) {
    let scale = 10u64.pow(decimals);
    let scaled = (v * scale as f64).round();
    if scaled < 0.0 {
        buf.push(b'-');
    }
    let n = scaled.abs() as u64;
    push_u64(buf, n / scale);
    if decimals > 0 {
        buf.push(b'.');
        let frac = n % scale;
        let mut div = scale / 10;
        while div > 0 {
            buf.push(b'0' + ((frac / div) % 10) as u8);
            div /= 10;
        }
    }
}

/// Appends `"key":`.
fn key(buf: &mut Vec<u8>, k: &str) {
    buf.push(b'"');
    buf.extend_from_slice(k.as_bytes());
    buf.extend_from_slice(b"\":");
}

fn push_bool(buf: &mut Vec<u8>, b: bool) {
    buf.extend_from_slice(if b { b"true" } else { b"false" });
}

/// Appends the RFC 3339 form of `ts` (UTC `Z` or the vehicle's local offset).
pub(crate) fn push_rfc3339(buf: &mut Vec<u8>, ts: i64, vehicle: &Vehicle) {
    let utc = DateTime::from_timestamp_millis(ts).unwrap_or_default();
    let s = if ts % 2 == 0 {
        utc.to_rfc3339_opts(SecondsFormat::Millis, true)
    } else {
        utc.with_timezone(&vehicle.tz)
            .to_rfc3339_opts(SecondsFormat::Millis, false)
    };
    buf.extend_from_slice(s.as_bytes());
}

/// Which parts of a message to write.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Omit {
    /// Leave out `device_id`.
    pub device_id: bool,
    /// Leave out `ts`.
    pub ts: bool,
    /// Leave out `seq`.
    pub seq: bool,
}

/// Writes the JSON object of `m` (no newline).
pub(crate) fn write_msg(buf: &mut Vec<u8>, m: &Msg, dev: &Device, vehicle: &Vehicle, omit: Omit) {
    buf.push(b'{');
    if !omit.device_id {
        key(buf, "device_id");
        buf.push(b'"');
        buf.extend_from_slice(dev.id.as_bytes());
        buf.extend_from_slice(b"\",");
    }
    if !omit.ts {
        key(buf, "ts");
        if m.is(F_TS_STRING) {
            buf.push(b'"');
            push_rfc3339(buf, m.ts, vehicle);
            buf.push(b'"');
        } else {
            push_i64(buf, m.ts);
        }
        buf.push(b',');
    }
    if dev.has_seq && !omit.seq {
        key(buf, "seq");
        push_u64(buf, m.seq);
        buf.push(b',');
    }
    if m.is(F_BACKFILL) {
        buf.extend_from_slice(b"\"backfill\":true,");
    }
    key(buf, "gnss");
    buf.push(b'{');
    if m.gnss != Gnss::NoFixBare {
        key(buf, "lat");
        push_fixed(buf, m.lat, 6);
        buf.push(b',');
        key(buf, "lon");
        push_fixed(buf, m.lon, 6);
        buf.push(b',');
    }
    key(buf, "fix");
    push_bool(buf, m.has_fix());
    if m.has_fix() {
        buf.push(b',');
        key(buf, "speed_kmh");
        push_fixed(buf, f64::from(m.speed), 1);
        buf.push(b',');
        key(buf, "heading");
        push_u64(buf, u64::from(m.heading));
        buf.push(b',');
        key(buf, "alt_m");
        push_fixed(buf, f64::from(m.alt), 1);
    }
    buf.push(b',');
    key(buf, "hdop");
    push_fixed(buf, f64::from(m.hdop), 1);
    buf.push(b',');
    key(buf, "sats");
    push_u64(buf, u64::from(m.sats));
    buf.push(b'}');
    if dev.class != DevClass::Wireless {
        if let Some(ign) = m.ignition {
            buf.extend_from_slice(b",\"ignition\":");
            push_bool(buf, ign);
        }
        if dev.class == DevClass::Obd {
            buf.extend_from_slice(b",\"speed_kmh\":");
            push_fixed(buf, f64::from(m.obd_speed), 0);
        }
        buf.extend_from_slice(b",\"odometer_km\":");
        push_fixed(buf, m.odometer, 1);
        if dev.class == DevClass::Obd {
            buf.extend_from_slice(b",\"obd\":{\"rpm\":");
            push_u64(buf, u64::from(m.rpm));
            buf.extend_from_slice(b",\"vin\":\"");
            buf.extend_from_slice(vehicle.reported_vin(m.vin).as_bytes());
            buf.extend_from_slice(b"\",\"mil\":");
            push_bool(buf, m.mil);
            buf.extend_from_slice(b",\"dtc_count\":");
            push_u64(buf, u64::from(m.dtc));
            buf.extend_from_slice(b",\"dist_since_clear_km\":");
            push_fixed(buf, m.dist_clear, 1);
            buf.extend_from_slice(b",\"dist_mil_km\":");
            push_fixed(buf, m.dist_mil, 1);
            buf.extend_from_slice(b",\"engine_hours\":");
            push_fixed(buf, m.engine_h, 1);
            buf.push(b'}');
        }
        buf.extend_from_slice(b",\"power\":{\"ext_v\":");
        push_fixed(buf, f64::from(m.ext_v), 2);
        buf.extend_from_slice(b",\"battery_pct\":");
        push_fixed(buf, f64::from(m.battery), 0);
        buf.push(b'}');
    } else {
        buf.extend_from_slice(b",\"power\":{\"battery_pct\":");
        push_fixed(buf, f64::from(m.battery), 0);
        buf.push(b'}');
    }
    if dev.class != DevClass::Wireless || m.alarms != 0 {
        buf.extend_from_slice(b",\"alarms\":[");
        let mut first = true;
        for (bit, name) in ALARM_NAMES {
            if m.alarms & bit != 0 {
                if !first {
                    buf.push(b',');
                }
                first = false;
                buf.push(b'"');
                buf.extend_from_slice(name.as_bytes());
                buf.push(b'"');
            }
        }
        if m.alarms & AL_UNKNOWN != 0 {
            if !first {
                buf.push(b',');
            }
            buf.push(b'"');
            let name = UNKNOWN_ALARMS[(m.ts / 1000) as usize % UNKNOWN_ALARMS.len()];
            buf.extend_from_slice(name.as_bytes());
            buf.push(b'"');
        }
        buf.push(b']');
    }
    if let Some(fw) = dev.firmware {
        buf.extend_from_slice(b",\"firmware\":\"");
        buf.extend_from_slice(fw.as_bytes());
        buf.push(b'"');
    }
    if m.is(F_EXTRA) {
        buf.extend_from_slice(b",\"rssi\":-");
        push_u64(buf, 60 + (m.ts / 1000 % 40) as u64);
        buf.extend_from_slice(b",\"cell\":{\"mcc\":460,\"mnc\":");
        push_u64(buf, (m.ts / 7 % 12) as u64);
        buf.extend_from_slice(b",\"lac\":");
        push_u64(buf, 4000 + (m.ts % 9000) as u64);
        buf.extend_from_slice(b"},\"tags\":[\"v2\",null]");
    }
    buf.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_point_formatting() {
        let mut b = Vec::new();
        push_fixed(&mut b, 31.2304, 6);
        b.push(b' ');
        push_fixed(&mut b, -0.05, 1);
        b.push(b' ');
        push_fixed(&mut b, -0.04, 1);
        b.push(b' ');
        push_fixed(&mut b, 12.006, 2);
        b.push(b' ');
        push_fixed(&mut b, 97.4, 0);
        b.push(b' ');
        push_i64(&mut b, -1234);
        assert_eq!(
            String::from_utf8(b).unwrap(),
            "31.230400 -0.1 0.0 12.01 97 -1234"
        );
    }
}
