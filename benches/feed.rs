//! Synthetic telemetry of one vehicle for the history benchmark and the memory harness: a
//! single tracker (15-digit IMEI) with GNSS, ignition, OBD speed, odometer, OBD block (VIN,
//! MIL, trouble codes, distance since clear) and power, in `Asia/Shanghai` (the default time
//! zone of unregistered vehicles and the one the registry rows below name).
//!
//! Two day shapes:
//! - [`VehicleFeed::realistic_day`]: parked heartbeats every 5–10 min, a 30-min commute out at
//!   07:45 and back at 17:30 with a fix every 30 s (about 300 readings a day);
//! - [`VehicleFeed::compact_phase`]: four readings a day (one at 03:00, a 1.2-km drive at
//!   09:00), enough to fill every ring of the baselines of a million vehicles in minutes.

use std::sync::Arc;

use operators::vehicle::{Env, Outputs, Profile, VehicleState};
use schemas::{DeviceClass, Gnss, Obd, Power, Reading, Record};

/// 2026-06-01T00:00:00+08:00, local midnight of day 0.
pub const DAY0_MS: i64 = 1_780_243_200_000;
/// One day in milliseconds.
pub const DAY_MS: i64 = 86_400_000;
/// One minute in milliseconds.
pub const MIN_MS: i64 = 60_000;

/// Home of every vehicle (People's Square, Shanghai); vehicles are spread around it.
const HOME: (f64, f64) = (31.2304, 121.4737);
/// Local start of the phases of [`VehicleFeed::compact_phase`], minutes after midnight.
pub const COMPACT_PHASE_MIN: [i64; 2] = [180, 540];
/// Latitude step of one 30-s fix at ~36 km/h (300 m).
const DRIVE_STEP_DEG: f64 = 0.0027;

/// Readings of the first `days` days of [`VehicleFeed::compact_phase`].
pub fn compact_readings(days: i64) -> u64 {
    match days {
        ..=0 => 0,
        d => 7 + (d as u64 - 1) * 4,
    }
}

/// splitmix64: a deterministic hash for jitter.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Characters of the generated VINs (no I, O, Q).
const VIN_CHARS: &[u8; 33] = b"ABCDEFGHJKLMNPRSTUVWXYZ0123456789";

/// Where a vehicle's feed starts: sequence number, odometers, home.
struct Origin {
    seq: u64,
    odometer_km: f64,
    since_clear_km: f64,
    lat: f64,
    lon: f64,
}

impl Origin {
    fn of(index: u64) -> Self {
        let h = mix(index);
        Self {
            seq: h % 50_000,
            odometer_km: 20_000.0 + (h % 80_000) as f64,
            since_clear_km: 500.0 + (h % 3_000) as f64,
            // Homes on a ~20 km grid around the centre.
            lat: HOME.0 + ((h >> 8) % 200) as f64 * 0.001 - 0.1,
            lon: HOME.1 + ((h >> 16) % 200) as f64 * 0.001 - 0.1,
        }
    }
}

/// One vehicle with one tracker and what its next reading continues from.
#[derive(Clone, Debug)]
pub struct VehicleFeed {
    /// `VH` + 8 digits.
    pub vehicle_id: Arc<str>,
    /// `LN` + 10 digits.
    pub loan_id: Arc<str>,
    /// 15-digit IMEI.
    pub device_id: String,
    /// 17-character VIN (also reported over OBD).
    pub vin: String,
    /// Tracker class.
    pub class: DeviceClass,
    index: u64,
    seq: u64,
    odometer_km: f64,
    since_clear_km: f64,
    lat: f64,
    lon: f64,
}

/// Whether the vehicle is driving at a reading.
#[derive(Clone, Copy, PartialEq)]
enum Motion {
    Parked,
    Driving,
}

impl VehicleFeed {
    /// Vehicle number `index` of the fleet, parked at its home.
    pub fn new(index: u64, class: DeviceClass) -> Self {
        let h = mix(index);
        let vin_tail: String = (0..8)
            .map(|i| char::from(VIN_CHARS[((h >> (i * 5)) % 33) as usize]))
            .collect();
        let o = Origin::of(index);
        Self {
            vehicle_id: format!("VH{index:08}").into(),
            loan_id: format!("LN{:010}", 2_026_000_000 + index).into(),
            device_id: format!("86{:013}", 7_731_000_000_000 + index),
            vin: format!("LSVAU2180{vin_tail}"),
            class,
            index,
            seq: o.seq,
            odometer_km: o.odometer_km,
            since_clear_km: o.since_clear_km,
            lat: o.lat,
            lon: o.lon,
        }
    }

    /// The registry row of the vehicle (`configs/vehicles.csv` columns).
    pub fn registry_row(&self) -> String {
        format!(
            "{},{},{},{},{},,Asia/Shanghai\n",
            self.vehicle_id,
            self.loan_id,
            self.device_id,
            self.vin,
            self.class.as_str()
        )
    }

    /// The registry header.
    pub const REGISTRY_HEADER: &'static str =
        "vehicle_id,loan_id,device_id,vin,device_class,permitted_fences,timezone\n";

    /// The next reading at `ts_ms`, after moving `dlat` degrees north.
    fn reading(&mut self, ts_ms: i64, motion: Motion, dlat: f64, ingest_seq: u64) -> Record {
        self.seq += 1;
        let h = mix(self.index ^ (self.seq << 20));
        let driving = motion == Motion::Driving;
        self.lat += dlat;
        let km = dlat.abs() * 111.2;
        self.odometer_km += km * 1.02;
        self.since_clear_km += km * 1.02;
        // Parked fixes wander by a few metres; driving speed varies between 30 and 42 km/h.
        let jitter = ((h % 7) as f64 - 3.0) * 0.000_01;
        let speed = if driving { 30.0 + (h % 13) as f32 } else { 0.0 };
        let reading = Reading {
            device_id: self.device_id.clone(),
            ts_ms,
            seq: Some(self.seq),
            backfill: false,
            gnss: Some(Gnss {
                lat: Some(self.lat + jitter),
                lon: Some(self.lon + jitter),
                fix: true,
                speed_kmh: Some(speed),
                heading: Some(if dlat >= 0.0 { 0.0 } else { 180.0 }),
                alt_m: Some(8.0),
                hdop: Some(0.8 + (h % 5) as f32 * 0.1),
                sats: Some(9 + (h % 4) as u16),
            }),
            ignition: Some(driving),
            speed_kmh: Some(speed),
            odometer_km: Some((self.odometer_km * 10.0).round() / 10.0),
            obd: Some(Obd {
                rpm: Some(if driving { 1_800.0 } else { 0.0 }),
                vin: Some(self.vin.clone()),
                mil: Some(false),
                dtc_count: Some(0),
                dist_since_clear_km: Some((self.since_clear_km * 10.0).round() / 10.0),
                dist_mil_km: Some(0.0),
                engine_hours: None,
            }),
            power: Some(Power {
                ext_v: Some(if driving { 13.9 } else { 12.6 }),
                battery_pct: Some(97.0),
            }),
            content_hash: h,
            received_at_ms: ts_ms + 400,
            ..Reading::default()
        };
        Record {
            vehicle_id: Arc::clone(&self.vehicle_id),
            loan_id: Some(Arc::clone(&self.loan_id)),
            class: self.class,
            registered: true,
            ingest_seq,
            reading: Box::new(reading),
        }
    }

    /// A realistic day `day` (0 = [`DAY0_MS`]): parked heartbeats every 5–10 min from
    /// midnight, a 30-min commute out at 07:45 and back at 17:30 with a fix every 30 s (18 km
    /// each way). `ingest_seq` numbers the readings in input order.
    pub fn realistic_day(&mut self, day: i64, ingest_seq: &mut u64, out: &mut Vec<Record>) {
        let start = DAY0_MS + day * DAY_MS;
        let legs = [
            (start + (7 * 60 + 45) * MIN_MS, DRIVE_STEP_DEG),
            (start + (17 * 60 + 30) * MIN_MS, -DRIVE_STEP_DEG),
        ];
        // The same shape every day (so days of any history compare like for like): the
        // heartbeat gaps depend on the vehicle and the reading's number in the day only.
        let mut k = 0u64;
        let mut gap = |index: u64| {
            k += 1;
            (300 + mix(index ^ (k << 32)) % 301) as i64 * 1000
        };
        // The first heartbeat at midnight: no gap over 10 min breaks the GNSS distance.
        let mut t = start;
        let mut next = |feed: &mut Self, ts, motion, dlat| {
            *ingest_seq += 1;
            out.push(feed.reading(ts, motion, dlat, *ingest_seq));
        };
        for (depart, dlat) in legs {
            while t < depart {
                next(self, t, Motion::Parked, 0.0);
                t += gap(self.index);
            }
            t = depart;
            for _ in 0..60 {
                next(self, t, Motion::Driving, dlat);
                t += 30_000;
            }
            next(self, t, Motion::Parked, 0.0);
            t += gap(self.index);
        }
        while t < start + DAY_MS {
            next(self, t, Motion::Parked, 0.0);
            t += gap(self.index);
        }
    }

    /// Puts the vehicle where the compact feed has it before phase `phase` of day `day`, so a
    /// harness can make the feed of a vehicle afresh whenever it needs it instead of keeping
    /// a million of them.
    fn rewind_compact(&mut self, day: i64, phase: u32) {
        let fresh = Origin::of(self.index);
        let drive_km = 4.0 * DRIVE_STEP_DEG * 111.2 * 1.02;
        let before = compact_readings(day) + u64::from(phase > 0);
        self.seq = fresh.seq + before;
        self.odometer_km = fresh.odometer_km + day as f64 * drive_km;
        self.since_clear_km = fresh.since_clear_km + day as f64 * drive_km;
        let away = day % 2 == 1;
        self.lat = fresh.lat + if away { 4.0 * DRIVE_STEP_DEG } else { 0.0 };
    }

    /// Phase `phase` of compact day `day`, `offset_ms` after the phase's local time
    /// ([`COMPACT_PHASE_MIN`]):
    /// - 0: 03:00, parked; the night location is taken (the last accepted fix is the
    ///   previous day's);
    /// - 1: 09:00, a 1.2-km drive (north on even days, back on odd ones) and a parked reading
    ///   that confirms its last fix the same day. On day 0 the drive has a fix every 30 s
    ///   and its six readings arrive together, so the reorder buffer grows as it does while
    ///   driving (and keeps its room); later days have a fix at the start and one 2 min
    ///   later (36 km/h).
    ///
    /// Four readings a day (seven on day 0): [`compact_readings`].
    pub fn compact_phase(
        &mut self,
        day: i64,
        phase: u32,
        offset_ms: i64,
        ingest_seq: &mut u64,
        out: &mut Vec<Record>,
    ) {
        self.rewind_compact(day, phase);
        let start = DAY0_MS + day * DAY_MS + offset_ms;
        let mut next = |feed: &mut Self, ts, motion, dlat| {
            *ingest_seq += 1;
            out.push(feed.reading(ts, motion, dlat, *ingest_seq));
        };
        if phase == 0 {
            next(
                self,
                start + COMPACT_PHASE_MIN[0] * MIN_MS,
                Motion::Parked,
                0.0,
            );
            return;
        }
        let t = start + COMPACT_PHASE_MIN[1] * MIN_MS;
        let dlat = if day % 2 == 0 {
            DRIVE_STEP_DEG
        } else {
            -DRIVE_STEP_DEG
        };
        next(self, t, Motion::Driving, 0.0);
        if day == 0 {
            for k in 1..5 {
                next(self, t + k * 30_000, Motion::Driving, dlat);
            }
        } else {
            next(self, t + 120_000, Motion::Driving, 4.0 * dlat);
        }
        next(self, t + 150_000, Motion::Parked, 0.0);
    }
}

impl VehicleFeed {
    /// The registry facts of this vehicle: its loan and VIN.
    pub fn profile(&self) -> Profile {
        Profile {
            loan_id: Some(Arc::clone(&self.loan_id)),
            vin: Some(self.vin.as_str().into()),
            ..Profile::default()
        }
    }
}

/// A vehicle, its pipeline clock and the newest event time seen: fed records in order, the
/// clock following event time (minus the reorder window) after each one.
#[derive(Clone)]
pub struct Fed {
    /// The vehicle.
    pub state: VehicleState,
    clock: Option<i64>,
    max_ts: i64,
}

impl Fed {
    /// A vehicle nothing was fed yet.
    pub fn new(state: VehicleState) -> Self {
        Self {
            state,
            clock: None,
            max_ts: i64::MIN,
        }
    }

    /// Feeds `records` in order, advancing the clock after each one.
    pub fn feed(&mut self, records: Vec<Record>, env: &Env<'_>, out: &mut Outputs) {
        let window = env.rules.reorder_window_ms();
        for record in records {
            self.max_ts = self.max_ts.max(record.reading.ts_ms);
            self.state.arrive(record, self.clock, env, out);
            let clock = self.max_ts - window;
            self.clock = Some(clock);
            self.state.advance(clock, env, out);
        }
    }
}
