//! The truth: a small, single-threaded reading of docs/rules.md run over the generated
//! messages, so the expected alerts are what the rules say about exactly these messages
//! (not what the incident plan intended). Only opening and instant alerts are produced.
//!
//! It keeps whole histories where the pipeline keeps rings: the simulated runs are short.
//!
//! In-order data is every message except back-filled ones (batches, `backfill: true`) and,
//! unless `include_late`, messages delivered late: whether the pipeline sees a late message
//! without `backfill` as late depends on its ingest epochs, and the generator makes both
//! readings give the same alerts (a unit test checks it).

use std::collections::HashMap;

use chrono::{Datelike, Days, NaiveDate, TimeZone};
use chrono_tz::Tz;
use schemas::AlertKind;

use super::fleet::{DevClass, Fleet, Role};
use super::geo::{self, LatLon};
use super::msg::{
    AL_ANTENNA_CUT, AL_JAMMING, AL_POWER_CUT, AL_REMOVAL, AL_TAMPER, AL_TOW, F_BACKFILL, F_BATCHED,
    F_LATE, Msg, VinSel,
};

/// `late_known_window_s` of rules.md, ms.
const LATE_KNOWN_MS: i64 = 21_600_000;
/// `drift_speed_kmh` and the `location_jump` speed of rules.md.
const JUMP_KMH: f64 = 250.0;
/// `stationary_long` duration of rules.md, ms.
const STATIONARY_MS: i64 = 72 * 3_600_000;
/// Below this step length an implied speed is not trusted (two devices of one vehicle may
/// report the same second a few metres apart), as in the pipeline's position chain.
const MIN_FAST_STEP_M: f64 = 100.0;
/// Parked steps shorter than this are jitter, not distance (rules.md "GNSS distance").
const JITTER_M: f64 = 30.0;
/// Steps across a longer gap are displacement, not distance, ms.
const DISTANCE_GAP_MS: i64 = 600_000;
/// `odometer_mismatch` window of GNSS distance, km.
const ODO_WINDOW_KM: f64 = 100.0;
/// `odometer_mismatch` checkpoint spacing, km.
const ODO_CHECKPOINT_KM: f64 = 10.0;
/// `odometer_mismatch` band of odometer / GNSS distance.
const ODO_RATIO: (f64, f64) = (0.8, 1.5);
/// `odometer_mismatch` re-arm delay, ms.
const ODO_REARM_MS: i64 = 86_400_000;
/// Days (active days, nights) of history the baseline kinds need.
const MIN_HISTORY: usize = 14;
/// Days (active days) the baseline kinds look back.
const BASELINE_DAYS: usize = 28;
/// `residence_change`: a night location further from home is away, metres.
const AWAY_M: f64 = 5_000.0;
/// `residence_change`: consecutive nights away that fire.
const AWAY_NIGHTS: u32 = 3;
/// `residence_change`: radius of the home cluster, metres.
const CLUSTER_M: f64 = 500.0;
/// `residence_change`: night locations home is chosen from.
const HOME_NIGHTS: usize = 30;
/// `residence_change`: the oldest fix that is a night location, ms.
const NIGHT_FIX_MAX_AGE_MS: i64 = 86_400_000;
/// `night_movement`: distance in the night window that fires, km.
const NIGHT_KM: f64 = 5.0;
/// `night_movement`: largest share of the past days' distance in the night window.
const NIGHT_SHARE: f64 = 0.02;

/// One expected alert.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Truth {
    /// Vehicle index.
    pub vehicle: u32,
    /// Device index.
    pub device: u32,
    /// Kind.
    pub kind: AlertKind,
    /// `event_time` as rules.md defines it, epoch ms.
    pub ts: i64,
    /// Matching tolerance, ms.
    pub tolerance: i64,
    /// Raised from late data.
    pub backfill: bool,
}

/// The phase of the first alert of `kind` (instant kinds have no close).
pub(crate) fn phase(kind: AlertKind) -> &'static str {
    match kind {
        AlertKind::DeviceTamper
        | AlertKind::TowSuspected
        | AlertKind::LocationJump
        | AlertKind::RiskZoneEnter
        | AlertKind::OdometerRollback
        | AlertKind::OdometerMismatch
        | AlertKind::DtcCleared
        | AlertKind::DuplicateCollateral
        | AlertKind::ResidenceChange
        | AlertKind::MileageAnomaly
        | AlertKind::NightMovement => "instant",
        _ => "open",
    }
}

fn tolerance(spacing: i64) -> i64 {
    (3 * spacing).clamp(120_000, 1_800_000)
}

fn speed_kmh(a: LatLon, b: LatLon, dt_ms: i64) -> f64 {
    let d = geo::distance_m(a, b);
    if dt_ms <= 0 {
        return if d > 0.0 { f64::INFINITY } else { 0.0 };
    }
    d * 3600.0 / dt_ms as f64
}

/// Whether the step `a` → `b` is faster than a car drives (a jump, not distance).
fn fast(a: LatLon, b: LatLon, dt_ms: i64) -> bool {
    geo::distance_m(a, b) > MIN_FAST_STEP_M && speed_kmh(a, b, dt_ms) > JUMP_KMH
}

/// A local date of one vehicle and the instants the baseline kinds use.
#[derive(Clone, Copy)]
struct LocalDay {
    /// Days since 0001-01-01 of the local date.
    number: i64,
    /// 03:00, the night-location instant.
    night_sample: i64,
    /// 05:00, the end of the night window.
    night_end: i64,
    /// The next midnight.
    end: i64,
}

impl LocalDay {
    fn of(tz: Tz, ts: i64) -> Self {
        let date = tz
            .timestamp_millis_opt(ts)
            .single()
            .map(|t| t.date_naive())
            .unwrap_or_default();
        let at = |d: NaiveDate, hour: u32| {
            tz.from_local_datetime(&d.and_hms_opt(hour, 0, 0).unwrap_or_default())
                .earliest()
                .map_or(0, |t| t.timestamp_millis())
        };
        Self {
            number: i64::from(date.num_days_from_ce()),
            night_sample: at(date, 3),
            night_end: at(date, 5),
            end: at(date + Days::new(1), 0),
        }
    }
}

/// An odometer value with the vehicle's GNSS distance when it was read.
#[derive(Clone, Copy)]
struct Mark {
    ts: i64,
    odometer: f64,
    gnss_m: f64,
}

/// `odometer_mismatch` state of one device.
#[derive(Default)]
struct OdoWindow {
    pending: Option<Mark>,
    /// Confirmed values at least a checkpoint apart, newest last; the window starts at one.
    checkpoints: Vec<Mark>,
    /// The vehicle's GNSS gap count when the window started.
    breaks: u64,
    /// Time of an out-of-band evaluation waiting for the next one.
    suspect: Option<(i64, i64)>,
    quiet_until: Option<i64>,
}

impl OdoWindow {
    /// An in-order reading's odometer; returns `(event_time, tolerance)` when the value it
    /// confirms makes the second out-of-band evaluation in a row.
    fn reading(&mut self, mark: Mark, breaks: u64, tol: i64) -> Option<(i64, i64)> {
        let confirmed = self.pending.replace(mark).filter(|p| {
            mark.odometer >= p.odometer - 1.0 && mark.odometer <= p.odometer + 2_000.0
        })?;
        self.confirmed(confirmed, breaks, tol)
    }

    fn restart(&mut self, breaks: u64) {
        self.checkpoints.clear();
        self.suspect = None;
        self.breaks = breaks;
    }

    fn confirmed(&mut self, m: Mark, breaks: u64, tol: i64) -> Option<(i64, i64)> {
        if let Some(until) = self.quiet_until {
            if m.ts < until {
                return None;
            }
            self.quiet_until = None;
            self.restart(breaks);
        }
        let dropped = self
            .checkpoints
            .last()
            .is_some_and(|c| m.odometer < c.odometer - 1.0);
        if breaks != self.breaks || dropped {
            self.restart(breaks);
        }
        let window_m = ODO_WINDOW_KM * 1000.0;
        if let Some(from) = self
            .checkpoints
            .iter()
            .rev()
            .find(|c| m.gnss_m - c.gnss_m >= window_m)
        {
            let ratio = (m.odometer - from.odometer) / ((m.gnss_m - from.gnss_m) / 1000.0);
            if ratio < ODO_RATIO.0 || ratio > ODO_RATIO.1 {
                if let Some(first) = self.suspect.take() {
                    self.quiet_until = Some(first.0 + ODO_REARM_MS);
                    self.restart(breaks);
                    return Some(first);
                }
                self.suspect = Some((m.ts, tol));
            } else {
                self.suspect = None;
            }
        }
        if self
            .checkpoints
            .last()
            .is_none_or(|c| m.gnss_m - c.gnss_m >= ODO_CHECKPOINT_KM * 1000.0)
        {
            self.checkpoints.push(m);
        }
        None
    }
}

/// A closed local day: its number, GNSS km and night-window km.
type PastDay = (i64, f64, f64);

/// The vehicle's distance, local days and night locations (rules.md "Local days, history
/// and baselines").
struct Baselines {
    tz: Tz,
    /// GNSS distance so far, metres.
    gnss_m: f64,
    /// Steps across gaps and jumps so far (they restart `odometer_mismatch` windows).
    breaks: u64,
    first_day: Option<i64>,
    day: Option<LocalDay>,
    day_km: f64,
    night_km: f64,
    /// `mileage_anomaly` threshold of the current day, if the history suffices.
    limit_km: Option<f64>,
    /// Whether the past days allow `night_movement` tonight.
    quiet_nights: bool,
    mileage_fired: bool,
    night_fired: bool,
    past: Vec<PastDay>,
    /// The next 03:00 whose night location is still to be taken.
    next_sample: Option<i64>,
    samples: usize,
    locations: Vec<LatLon>,
    away: u32,
    residence_armed: bool,
}

impl Baselines {
    fn new(tz: Tz) -> Self {
        Self {
            tz,
            gnss_m: 0.0,
            breaks: 0,
            first_day: None,
            day: None,
            day_km: 0.0,
            night_km: 0.0,
            limit_km: None,
            quiet_nights: false,
            mileage_fired: false,
            night_fired: false,
            past: Vec::new(),
            next_sample: None,
            samples: 0,
            locations: Vec::new(),
            away: 0,
            residence_armed: true,
        }
    }

    /// Moves the current local day to the one of `ts`, closing the one before.
    fn day_at(&mut self, ts: i64) -> LocalDay {
        match self.day {
            Some(d) if ts < d.end => return d,
            Some(d) => self.past.push((d.number, self.day_km, self.night_km)),
            None => {}
        }
        let d = LocalDay::of(self.tz, ts);
        self.day = Some(d);
        (self.day_km, self.night_km) = (0.0, 0.0);
        (self.mileage_fired, self.night_fired) = (false, false);
        let mut active: Vec<f64> = self
            .past
            .iter()
            .filter(|p| p.1 >= 1.0)
            .rev()
            .take(BASELINE_DAYS)
            .map(|p| p.1)
            .collect();
        active.sort_by(f64::total_cmp);
        let n = active.len();
        self.limit_km = (n >= MIN_HISTORY).then(|| {
            let median = if n % 2 == 1 {
                active[n / 2]
            } else {
                (active[n / 2 - 1] + active[n / 2]) / 2.0
            };
            (3.0 * median).max(median + 300.0)
        });
        let recent = self
            .past
            .iter()
            .filter(|p| p.0 >= d.number - BASELINE_DAYS as i64);
        let (total, night) = recent.fold((0.0, 0.0), |(t, n), p| (t + p.1, n + p.2));
        let history = self.first_day.map_or(0, |f| d.number - f);
        self.quiet_nights =
            history >= MIN_HISTORY as i64 && (total <= 0.0 || night / total < NIGHT_SHARE);
        d
    }

    /// Counts a step ending at `ts`; returns the kinds whose threshold it crosses.
    fn step(&mut self, ts: i64, metres: f64) -> Vec<AlertKind> {
        let day = self.day_at(ts);
        self.gnss_m += metres;
        self.day_km += metres / 1000.0;
        let mut fired = Vec::new();
        if !self.mileage_fired && self.limit_km.is_some_and(|l| self.day_km > l) {
            self.mileage_fired = true;
            fired.push(AlertKind::MileageAnomaly);
        }
        if ts < day.night_end {
            self.night_km += metres / 1000.0;
            if !self.night_fired && self.quiet_nights && self.night_km >= NIGHT_KM {
                self.night_fired = true;
                fired.push(AlertKind::NightMovement);
            }
        }
        fired
    }

    /// A reading at `ts` with `last` the last accepted fix: takes the night locations of the
    /// 03:00 instants it passed and returns the instant `residence_change` fires at, if any.
    fn nights(&mut self, ts: i64, last: Option<Fix>) -> Option<i64> {
        if self.first_day.is_none() {
            self.first_day = Some(self.day_at(ts).number);
        }
        let mut sample = *self.next_sample.get_or_insert_with(|| {
            let d = LocalDay::of(self.tz, ts);
            if ts <= d.night_sample {
                d.night_sample
            } else {
                LocalDay::of(self.tz, d.end).night_sample
            }
        });
        let mut fired = None;
        while ts > sample {
            self.samples += 1;
            let location = last
                .filter(|f| f.ts <= sample && sample - f.ts <= NIGHT_FIX_MAX_AGE_MS)
                .map(|f| f.p);
            if let Some(p) = location
                && self.night(p)
            {
                fired = Some(sample);
            }
            sample = LocalDay::of(self.tz, sample + 86_400_000).night_sample;
        }
        self.next_sample = Some(sample);
        fired
    }

    /// A night location; whether it completes a run of nights away from home.
    fn night(&mut self, p: LatLon) -> bool {
        let recent = &self.locations[self.locations.len().saturating_sub(HOME_NIGHTS)..];
        let home = recent
            .iter()
            .enumerate()
            .map(|(i, q)| {
                let n = recent
                    .iter()
                    .filter(|r| geo::distance_m(*q, **r) <= CLUSTER_M)
                    .count();
                (n, i)
            })
            .max()
            .map(|(_, i)| recent[i]);
        self.locations.push(p);
        let Some(home) = home.filter(|_| self.samples >= MIN_HISTORY) else {
            return false;
        };
        if geo::distance_m(home, p) <= AWAY_M {
            self.away = 0;
            self.residence_armed = true;
            return false;
        }
        self.away += 1;
        if self.away >= AWAY_NIGHTS && self.residence_armed {
            self.residence_armed = false;
            return true;
        }
        false
    }
}

#[derive(Default)]
struct DevState {
    last_ts: Option<i64>,
    prev_ext_v: Option<f32>,
    power_open: bool,
    power_clear_run: u8,
    tamper_prev: bool,
    tow_prev: bool,
    jam_open: bool,
    jam_streak: Option<i64>,
    battery_open: bool,
    odo_last: Option<f64>,
    odo_pending: Option<(i64, i64)>,
    dtc_last: Option<f64>,
    vin_open: bool,
    vin_last: Option<VinSel>,
    odo_window: OdoWindow,
}

#[derive(Clone, Copy)]
struct Fix {
    ts: i64,
    p: LatLon,
    dev: u32,
    ign: Option<bool>,
    /// OBD speed, else GNSS speed, km/h.
    speed: f32,
    spacing: i64,
}

impl Fix {
    /// Parked for the jitter rule: ignition off, or standing still.
    fn parked(&self) -> bool {
        self.ign == Some(false) || self.speed < 5.0
    }
}

struct Visit {
    fence: u32,
    entry: Fix,
    outside_run: u8,
    dwell_fired: bool,
}

#[derive(Default)]
struct PosState {
    held: Option<Fix>,
    last: Option<Fix>,
    tow_anchor: Option<LatLon>,
    tow_dirty: bool,
    tow_fired: bool,
    st_anchor: Option<Fix>,
    st_done: bool,
    st_pending: bool,
    outside: bool,
    out_first: Option<Fix>,
    in_first: Option<Fix>,
    visits: Vec<Visit>,
}

struct Vehicle<'a> {
    fleet: &'a Fleet,
    vi: u32,
    devs: Vec<(u32, DevClass, DevState)>,
    pos: PosState,
    baselines: Baselines,
    /// Loans registered per VIN, fleet-wide.
    loans_of: &'a HashMap<&'a str, Vec<&'a str>>,
    /// Whether a reading was processed (the first claims the registered VIN).
    seen: bool,
    /// VINs this vehicle's claims already met another loan on.
    duplicated: Vec<String>,
    out: &'a mut Vec<Truth>,
}

impl Vehicle<'_> {
    fn fire(&mut self, device: u32, kind: AlertKind, ts: i64, tolerance: i64) {
        self.out.push(Truth {
            vehicle: self.vi,
            device,
            kind,
            ts,
            tolerance,
            backfill: false,
        });
    }

    fn class_of(&self, dev: u32) -> DevClass {
        self.devs
            .iter()
            .find(|d| d.0 == dev)
            .map_or(DevClass::Wired, |d| d.1)
    }

    fn online(&self, at: i64) -> bool {
        self.devs.iter().any(|(_, class, s)| {
            s.last_ts
                .is_some_and(|t| t <= at && at - t <= class.offline_after_ms())
        })
    }

    /// Timers of the position rules that fall due before `ts`.
    fn timers_before(&mut self, ts: i64) {
        let mut fired = Vec::new();
        for v in &mut self.pos.visits {
            let due = v.entry.ts + self.fleet.fences[v.fence as usize].dwell_ms();
            if !v.dwell_fired && due < ts {
                v.dwell_fired = true;
                fired.push((v.entry.dev, due, tolerance(v.entry.spacing)));
            }
        }
        for (dev, due, tol) in fired {
            self.fire(dev, AlertKind::RiskZoneDwell, due, tol);
        }
        if let Some(a) = self.pos.st_anchor {
            let due = a.ts + STATIONARY_MS;
            if !self.pos.st_done && !self.pos.st_pending && due < ts {
                if self.online(due) {
                    self.pos.st_done = true;
                    self.fire(a.dev, AlertKind::StationaryLong, due, tolerance(a.spacing));
                } else {
                    self.pos.st_pending = true;
                }
            }
        }
    }

    /// A claim of `vin` by this vehicle (rules.md `duplicate_collateral`). Owners are the
    /// registered vehicles with the VIN: the simulator never lets two vehicles report one
    /// unregistered VIN, so earlier claimers never own one.
    fn claim(&mut self, vin: &str, dev: u32, ts: i64, tol: i64) {
        let vehicle = &self.fleet.vehicles[self.vi as usize];
        let Some(loan) = vehicle.loan_id.as_deref() else {
            return;
        };
        let other_loan = self
            .loans_of
            .get(vin)
            .is_some_and(|loans| loans.iter().any(|l| *l != loan));
        if other_loan && !self.duplicated.iter().any(|v| v == vin) {
            self.duplicated.push(vin.to_owned());
            self.fire(dev, AlertKind::DuplicateCollateral, ts, tol);
        }
    }

    fn reading(&mut self, di: usize, m: &Msg, registered_vin: bool) {
        self.timers_before(m.ts);
        let dev = self.devs[di].0;
        if self.pos.st_pending {
            self.pos.st_pending = false;
            self.pos.st_done = true;
            self.fire(dev, AlertKind::StationaryLong, m.ts, 120_000);
        }
        if !self.seen {
            self.seen = true;
            let vin = &self.fleet.vehicles[self.vi as usize].vin;
            self.claim(vin, dev, m.ts, 120_000);
        }
        if let Some(at) = self.baselines.nights(m.ts, self.pos.last) {
            self.fire(dev, AlertKind::ResidenceChange, at, 120_000);
        }
        let class = self.devs[di].1;
        let s = &mut self.devs[di].2;
        let spacing = s.last_ts.map_or(120_000, |t| m.ts - t);
        let tol = tolerance(spacing);
        let mut fired: Vec<AlertKind> = Vec::new();
        let mut rollback = None;
        if class != DevClass::Wireless {
            let alarm = m.alarms & AL_POWER_CUT != 0;
            let low = m.ext_v < 3.0;
            if !s.power_open {
                if alarm || (low && s.prev_ext_v.is_some_and(|p| p >= 9.0)) {
                    s.power_open = true;
                    s.power_clear_run = 0;
                    fired.push(AlertKind::PowerCut);
                }
            } else if m.ext_v >= 9.0 {
                s.power_open = false;
            } else if !alarm && !low {
                s.power_clear_run += 1;
                if s.power_clear_run >= 2 {
                    s.power_open = false;
                }
            } else {
                s.power_clear_run = 0;
            }
            s.prev_ext_v = Some(m.ext_v);
            let o = m.odometer;
            match s.odo_last {
                Some(last) if o < last - 1.0 => match s.odo_pending.take() {
                    Some(first) => {
                        rollback = Some(first);
                        s.odo_last = Some(o);
                    }
                    None => s.odo_pending = Some((m.ts, tol)),
                },
                _ => {
                    s.odo_pending = None;
                    s.odo_last = Some(o);
                }
            }
        }
        let tamper = m.alarms & (AL_TAMPER | AL_REMOVAL) != 0;
        if tamper && !s.tamper_prev {
            fired.push(AlertKind::DeviceTamper);
        }
        s.tamper_prev = tamper;
        let tow = m.alarms & AL_TOW != 0;
        if tow && !s.tow_prev {
            fired.push(AlertKind::TowSuspected);
        }
        s.tow_prev = tow;
        let jam = m.alarms & (AL_JAMMING | AL_ANTENNA_CUT) != 0;
        if jam && !s.jam_open {
            s.jam_open = true;
            fired.push(AlertKind::GnssJamming);
        }
        let valid = m.has_fix() && m.hdop <= 5.0;
        if valid {
            if s.jam_open && !jam {
                s.jam_open = false;
            }
            s.jam_streak = None;
        } else if m.ignition == Some(true) && class == DevClass::Obd && m.obd_speed > 5.0 {
            let start = *s.jam_streak.get_or_insert(m.ts);
            if !s.jam_open && m.ts - start >= 600_000 {
                s.jam_open = true;
                fired.push(AlertKind::GnssJamming);
            }
        } else if m.ignition == Some(false) {
            s.jam_streak = None;
        }
        if !s.battery_open && m.battery < 15.0 {
            s.battery_open = true;
            fired.push(AlertKind::LowBattery);
        } else if s.battery_open && m.battery >= 20.0 {
            s.battery_open = false;
        }
        if class == DevClass::Obd {
            if s.dtc_last.is_some_and(|l| m.dist_clear < l - 0.5) {
                fired.push(AlertKind::DtcCleared);
            }
            s.dtc_last = Some(m.dist_clear);
            if registered_vin {
                if m.vin != VinSel::Registered && !s.vin_open {
                    s.vin_open = true;
                    fired.push(AlertKind::VinMismatch);
                } else if m.vin == VinSel::Registered {
                    s.vin_open = false;
                }
            }
        }
        let new_vin = (class == DevClass::Obd && s.vin_last != Some(m.vin)).then_some(m.vin);
        if new_vin.is_some() {
            s.vin_last = new_vin;
        }
        s.last_ts = Some(m.ts);
        for kind in fired {
            self.fire(dev, kind, m.ts, tol);
        }
        if let Some((ts, tol)) = rollback {
            self.fire(dev, AlertKind::OdometerRollback, ts, tol);
        }
        if let Some(vin) = new_vin {
            let vin = self.fleet.vehicles[self.vi as usize]
                .reported_vin(vin)
                .to_owned();
            self.claim(&vin, dev, m.ts, tol);
        }
        if valid {
            self.fix(Fix {
                ts: m.ts,
                p: LatLon::new(m.lat, m.lon),
                dev,
                ign: m.ignition,
                speed: if class == DevClass::Obd {
                    m.obd_speed
                } else {
                    m.speed
                },
                spacing,
            });
        }
        if class != DevClass::Wireless {
            let mark = Mark {
                ts: m.ts,
                odometer: m.odometer,
                gnss_m: self.baselines.gnss_m,
            };
            let breaks = self.baselines.breaks;
            if let Some((ts, tol)) = self.devs[di].2.odo_window.reading(mark, breaks, tol) {
                self.fire(dev, AlertKind::OdometerMismatch, ts, tol);
            }
        }
    }

    /// A valid fix: resolves the held one (drift outlier or accepted), then holds this one.
    fn fix(&mut self, new: Fix) {
        if let Some(b) = self.pos.held.take() {
            let outlier = self.pos.last.is_some_and(|a| {
                speed_kmh(a.p, b.p, b.ts - a.ts) > JUMP_KMH
                    && speed_kmh(b.p, new.p, new.ts - b.ts) > JUMP_KMH
            });
            if !outlier {
                self.accept(b);
            }
        }
        self.pos.held = Some(new);
    }

    fn accept(&mut self, f: Fix) {
        let prev = self.pos.last.replace(f);
        let class = self.class_of(f.dev);
        let gap = prev.is_some_and(|p| f.ts - p.ts > class.offline_after_ms());
        let tol = tolerance(f.spacing);
        if let Some(p) = prev {
            let (d, dt) = (geo::distance_m(p.p, f.p), f.ts - p.ts);
            if !gap && d >= 5_000.0 && speed_kmh(p.p, f.p, dt) > JUMP_KMH {
                self.fire(f.dev, AlertKind::LocationJump, f.ts, tol);
            }
            if dt > DISTANCE_GAP_MS || fast(p.p, f.p, dt) {
                self.baselines.breaks += 1;
            } else if d >= JITTER_M || !(p.parked() && f.parked()) {
                for kind in self.baselines.step(f.ts, d) {
                    self.fire(f.dev, kind, f.ts, tol);
                }
            }
        }
        let pos = &mut self.pos;
        if gap {
            pos.tow_anchor = (f.ign == Some(false)).then_some(f.p);
            pos.tow_dirty = f.ign != Some(false);
            pos.tow_fired = false;
        } else {
            match f.ign {
                Some(true) => {
                    pos.tow_fired = false;
                    pos.tow_dirty = true;
                }
                None => pos.tow_dirty = true,
                Some(false) => match pos.tow_anchor {
                    Some(a) if !pos.tow_dirty => {
                        if !pos.tow_fired && geo::distance_m(a, f.p) >= 300.0 {
                            pos.tow_fired = true;
                            self.fire(f.dev, AlertKind::TowSuspected, f.ts, tol);
                        }
                    }
                    _ => {
                        pos.tow_anchor = Some(f.p);
                        pos.tow_dirty = false;
                    }
                },
            }
        }
        let fleet = self.fleet;
        let vehicle = &fleet.vehicles[self.vi as usize];
        if let Some(d) = fleet.permitted_distance_m(vehicle, f.p) {
            let pos = &mut self.pos;
            if !pos.outside {
                if d > 0.0 {
                    // The exit is the first fix outside, even when the next one is the
                    // first more than 1 km out.
                    let first = if let Some(o) = pos.out_first {
                        Some(o)
                    } else if d > 1_000.0 {
                        Some(f)
                    } else {
                        pos.out_first = Some(f);
                        None
                    };
                    if let Some(o) = first {
                        pos.outside = true;
                        pos.out_first = None;
                        self.fire(o.dev, AlertKind::GeofenceExit, o.ts, tolerance(o.spacing));
                    }
                } else {
                    pos.out_first = None;
                }
            } else if d <= 0.0 {
                if -d > 1_000.0 || pos.in_first.is_some() {
                    pos.outside = false;
                    pos.in_first = None;
                } else {
                    pos.in_first = Some(f);
                }
            } else {
                pos.in_first = None;
            }
        }
        let inside: Vec<u32> = fleet.risk_at(f.p).collect();
        self.pos.visits.retain_mut(|v| {
            if inside.contains(&v.fence) {
                v.outside_run = 0;
            } else {
                v.outside_run += 1;
            }
            v.outside_run < 2
        });
        for fence in inside {
            debug_assert_eq!(fleet.fences[fence as usize].role, Role::Risk);
            if !self.pos.visits.iter().any(|v| v.fence == fence) {
                self.pos.visits.push(Visit {
                    fence,
                    entry: f,
                    outside_run: 0,
                    dwell_fired: false,
                });
                self.fire(f.dev, AlertKind::RiskZoneEnter, f.ts, tol);
            }
        }
        let pos = &mut self.pos;
        match pos.st_anchor {
            Some(a) if geo::distance_m(a.p, f.p) <= 200.0 => {}
            _ => {
                pos.st_anchor = Some(f);
                pos.st_done = false;
                pos.st_pending = false;
            }
        }
    }
}

/// Evaluates rules.md over `streams` (messages per device, each in event-time order).
///
/// `watermark_end` is the pipeline clock after the last input (largest event time minus
/// the reorder window); timers due by then fire.
pub(crate) fn evaluate(
    fleet: &Fleet,
    streams: &[Vec<Msg>],
    include_late: bool,
    watermark_end: i64,
) -> Vec<Truth> {
    let mut out = Vec::new();
    let in_order = |m: &Msg| {
        m.flags & (F_BATCHED | F_BACKFILL) == 0 && (include_late || m.flags & F_LATE == 0)
    };
    let mut loans_of: HashMap<&str, Vec<&str>> = HashMap::new();
    for v in &fleet.vehicles {
        if let Some(loan) = &v.loan_id {
            loans_of.entry(v.vin.as_str()).or_default().push(loan);
        }
    }
    for (vi, v) in fleet.vehicles.iter().enumerate() {
        let mut refs: Vec<(i64, i64, usize, usize)> = Vec::new();
        for (di, d) in v.devices.iter().enumerate() {
            for (k, m) in streams[*d as usize].iter().enumerate() {
                if in_order(m) {
                    refs.push((m.ts, m.arrival, di, k));
                }
            }
        }
        refs.sort_unstable();
        let mut state = Vehicle {
            fleet,
            vi: vi as u32,
            devs: v
                .devices
                .iter()
                .map(|d| (*d, fleet.devices[*d as usize].class, DevState::default()))
                .collect(),
            pos: PosState::default(),
            baselines: Baselines::new(v.tz),
            loans_of: &loans_of,
            seen: false,
            duplicated: Vec::new(),
            out: &mut out,
        };
        for (_, _, di, k) in refs {
            let dev = v.devices[di];
            let registered = fleet.devices[dev as usize].registered;
            state.reading(di, &streams[dev as usize][k], registered);
        }
        state.timers_before(watermark_end + 1);
        for d in &v.devices {
            let class = fleet.devices[*d as usize].class;
            let after = class.offline_after_ms();
            let mut last: Option<i64> = None;
            for m in streams[*d as usize].iter().filter(|m| in_order(m)) {
                if let Some(l) = last.filter(|l| l + after < m.ts) {
                    out.push(Truth {
                        vehicle: vi as u32,
                        device: *d,
                        kind: AlertKind::Offline,
                        ts: l + after,
                        tolerance: 120_000,
                        backfill: false,
                    });
                }
                last = Some(m.ts);
            }
            if let Some(l) = last.filter(|l| l + after <= watermark_end) {
                out.push(Truth {
                    vehicle: vi as u32,
                    device: *d,
                    kind: AlertKind::Offline,
                    ts: l + after,
                    tolerance: 120_000,
                    backfill: false,
                });
            }
        }
    }
    let mut late: Vec<(i64, u32, usize)> = Vec::new();
    for (d, msgs) in streams.iter().enumerate() {
        for (k, m) in msgs.iter().enumerate() {
            if !in_order(m) && m.alarms & (AL_TAMPER | AL_REMOVAL | AL_TOW) != 0 {
                late.push((m.arrival, d as u32, k));
            }
        }
    }
    late.sort_unstable();
    for (_, d, k) in late {
        let m = &streams[d as usize][k];
        let vehicle = fleet.devices[d as usize].vehicle;
        for (bits, kind) in [
            (AL_TAMPER | AL_REMOVAL, AlertKind::DeviceTamper),
            (AL_TOW, AlertKind::TowSuspected),
        ] {
            let known = out
                .iter()
                .any(|t| t.device == d && t.kind == kind && (t.ts - m.ts).abs() <= LATE_KNOWN_MS);
            if m.alarms & bits != 0 && !known {
                out.push(Truth {
                    vehicle,
                    device: d,
                    kind,
                    ts: m.ts,
                    tolerance: 120_000,
                    backfill: true,
                });
            }
        }
    }
    out.sort_by_key(|a| (a.ts, a.vehicle, a.kind));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::msg::{Gnss, Motion};

    fn msg(ts: i64, lat: f64, lon: f64, ign: Option<bool>) -> Msg {
        Msg {
            ts,
            arrival: ts,
            seq: 0,
            lat,
            lon,
            gnss: Gnss::Fix,
            motion: Motion::Parked,
            speed: 0.0,
            heading: 0,
            hdop: 1.0,
            sats: 9,
            alt: 0.0,
            ignition: ign,
            obd_speed: 0.0,
            odometer: 1000.0,
            rpm: 0,
            vin: VinSel::Registered,
            dist_clear: 100.0,
            dist_mil: 0.0,
            engine_h: 1.0,
            dtc: 0,
            mil: false,
            ext_v: 12.5,
            battery: 95.0,
            alarms: 0,
            flags: 0,
        }
    }

    fn single_vehicle() -> (Fleet, usize) {
        let fleet = Fleet::generate(8, 6, 0);
        let vi = fleet
            .vehicles
            .iter()
            .position(|v| v.devices.len() == 1 && v.permitted.is_empty())
            .expect("an unrestricted vehicle with one device");
        (fleet, vi)
    }

    fn run(fleet: &Fleet, vi: usize, msgs: Vec<Msg>) -> Vec<(AlertKind, i64)> {
        let mut streams: Vec<Vec<Msg>> = vec![Vec::new(); fleet.devices.len()];
        let last = msgs.last().map_or(0, |m| m.ts);
        streams[fleet.vehicles[vi].primary() as usize] = msgs;
        evaluate(fleet, &streams, false, last - 120_000)
            .into_iter()
            .map(|t| (t.kind, t.ts))
            .collect()
    }

    #[test]
    fn drift_outlier_is_ignored_but_a_confirmed_jump_fires() {
        let (fleet, vi) = single_vehicle();
        let home = fleet.vehicles[vi].places[0];
        let far = geo::offset(home, 90.0, 20_000.0);
        let m = |ts, p: LatLon, ign| msg(ts, p.lat, p.lon, ign);
        let drift = vec![
            m(0, home, Some(false)),
            m(300_000, home, Some(false)),
            m(330_000, far, Some(false)),
            m(360_000, home, Some(false)),
            m(660_000, home, Some(false)),
        ];
        assert!(run(&fleet, vi, drift).is_empty());
        let jump = vec![
            m(0, home, Some(true)),
            m(30_000, home, Some(true)),
            m(60_000, far, Some(true)),
            m(90_000, geo::offset(far, 90.0, 300.0), Some(true)),
            m(120_000, geo::offset(far, 90.0, 600.0), Some(true)),
        ];
        assert_eq!(
            run(&fleet, vi, jump),
            vec![(AlertKind::LocationJump, 60_000)]
        );
    }

    #[test]
    fn tow_needs_ignition_off_and_no_gap() {
        let (fleet, vi) = single_vehicle();
        let home = fleet.vehicles[vi].places[0];
        let m = |ts, d: f64, ign| {
            let p = geo::offset(home, 0.0, d);
            msg(ts, p.lat, p.lon, ign)
        };
        let towed = vec![
            m(0, 0.0, Some(false)),
            m(30_000, 150.0, Some(false)),
            m(60_000, 320.0, Some(false)),
            m(90_000, 500.0, Some(false)),
            m(120_000, 700.0, Some(false)),
        ];
        assert_eq!(
            run(&fleet, vi, towed),
            vec![(AlertKind::TowSuspected, 60_000)]
        );
        let gap = vec![
            m(0, 0.0, Some(false)),
            m(600_000, 0.0, Some(false)),
            m(5_000_000, 8_000.0, Some(false)),
            m(5_300_000, 8_000.0, Some(false)),
        ];
        assert_eq!(run(&fleet, vi, gap), vec![(AlertKind::Offline, 2_400_000)]);
        let unknown = vec![
            m(0, 0.0, None),
            m(30_000, 500.0, None),
            m(60_000, 900.0, None),
            m(90_000, 1_200.0, None),
        ];
        assert!(run(&fleet, vi, unknown).is_empty());
    }

    #[test]
    fn device_rules() {
        let (fleet, vi) = single_vehicle();
        let home = fleet.vehicles[vi].places[0];
        let mut msgs: Vec<Msg> = (0..12)
            .map(|k| msg(k * 300_000, home.lat, home.lon, Some(false)))
            .collect();
        msgs[2].ext_v = 0.2;
        msgs[3].ext_v = 0.3;
        msgs[4].alarms = AL_TAMPER;
        msgs[5].alarms = AL_TAMPER;
        msgs[6].battery = 12.0;
        msgs[7].battery = 18.0;
        for m in &mut msgs[8..] {
            m.odometer = 500.0;
        }
        msgs[11].odometer = 400.0;
        msgs[10].odometer = 2000.0;
        let got = run(&fleet, vi, msgs);
        assert_eq!(
            got,
            vec![
                (AlertKind::PowerCut, 600_000),
                (AlertKind::DeviceTamper, 1_200_000),
                (AlertKind::LowBattery, 1_800_000),
                (AlertKind::OdometerRollback, 2_400_000),
            ]
        );
    }

    const DAY_MS: i64 = 86_400_000;

    /// Parked readings every 5 min at `p` over `[from, to)`.
    fn parked(from: i64, to: i64, p: LatLon, odometer: f64) -> Vec<Msg> {
        (from..to)
            .step_by(300_000)
            .map(|ts| Msg {
                odometer,
                ..msg(ts, p.lat, p.lon, Some(false))
            })
            .collect()
    }

    /// Drives `km` east from `p` at 60 km/h from `from`, a fix every 30 s, the odometer
    /// counting `rate` km per km from `odometer`.
    fn drive(from: i64, p: LatLon, km: f64, odometer: f64, rate: f64) -> Vec<Msg> {
        (1..=(km * 2.0) as i64)
            .map(|k| {
                let q = geo::offset(p, 90.0, k as f64 * 500.0);
                Msg {
                    speed: 60.0,
                    odometer: odometer + k as f64 * 0.5 * rate,
                    ..msg(from + k * 30_000, q.lat, q.lon, Some(true))
                }
            })
            .collect()
    }

    /// Days of a 30 km drive at 10:00 local, parked in between; returns the messages, the
    /// final position, odometer and the midnight after the last day.
    fn routine(tz: Tz, start: i64, days: i64, home: LatLon) -> (Vec<Msg>, LatLon, f64, i64) {
        let (mut msgs, mut p, mut odo) = (Vec::new(), home, 1000.0);
        let mut midnight = LocalDay::of(tz, start).end - DAY_MS;
        for _ in 0..days {
            let dep = midnight + 10 * 3_600_000;
            msgs.extend(parked(
                msgs.last().map_or(midnight, |m: &Msg| m.ts + 300_000),
                dep,
                p,
                odo,
            ));
            msgs.extend(drive(dep, p, 30.0, odo, 1.05));
            let last = msgs.last().unwrap();
            (p, odo) = (LatLon::new(last.lat, last.lon), last.odometer);
            midnight += DAY_MS;
        }
        (msgs, p, odo, midnight)
    }

    fn kinds(got: &[(AlertKind, i64)], kind: AlertKind) -> Vec<i64> {
        got.iter().filter(|g| g.0 == kind).map(|g| g.1).collect()
    }

    #[test]
    fn mileage_and_night_movement_need_history_and_cross_their_thresholds() {
        let (fleet, vi) = single_vehicle();
        let v = &fleet.vehicles[vi];
        let (mut msgs, p, odo, midnight) = routine(v.tz, 1_793_548_800_000, 16, v.places[0]);
        // Day 16: 400 km, crossing max(3 × 30, 30 + 300) = 330 km after 661 steps of 500 m.
        let dep = midnight + 8 * 3_600_000;
        msgs.extend(parked(msgs.last().unwrap().ts + 300_000, dep, p, odo));
        msgs.extend(drive(dep, p, 400.0, odo, 1.05));
        let last = msgs.last().unwrap().clone();
        let p = LatLon::new(last.lat, last.lon);
        // Day 17, 01:00: 10 km, crossing 5 km after 10 steps.
        let night = midnight + DAY_MS + 3_600_000;
        msgs.extend(parked(last.ts + 300_000, night, p, last.odometer));
        msgs.extend(drive(night, p, 10.0, last.odometer, 1.05));
        let end = msgs.last().unwrap().ts;
        msgs.extend(parked(end + 300_000, end + 2 * 3_600_000, p, last.odometer));
        let got = run(&fleet, vi, msgs);
        assert_eq!(
            kinds(&got, AlertKind::MileageAnomaly),
            vec![dep + 661 * 30_000]
        );
        assert_eq!(
            kinds(&got, AlertKind::NightMovement),
            vec![night + 10 * 30_000]
        );
        // The same drives on day 8 have too little history.
        let (mut early, p, odo, midnight) = routine(v.tz, 1_793_548_800_000, 8, v.places[0]);
        early.extend(drive(midnight + 3_600_000, p, 400.0, odo, 1.05));
        let got = run(&fleet, vi, early);
        assert!(kinds(&got, AlertKind::MileageAnomaly).is_empty());
        assert!(kinds(&got, AlertKind::NightMovement).is_empty());
    }

    #[test]
    fn residence_change_fires_at_03_00_of_the_third_night_away() {
        let (fleet, vi) = single_vehicle();
        let v = &fleet.vehicles[vi];
        let home = v.places[0];
        let start = LocalDay::of(v.tz, 1_793_548_800_000).end;
        let moved = start + 16 * DAY_MS + 12 * 3_600_000;
        let mut msgs = parked(start, moved, home, 1000.0);
        msgs.extend(drive(moved, home, 10.0, 1000.0, 1.05));
        let last = msgs.last().unwrap().clone();
        let away = LatLon::new(last.lat, last.lon);
        msgs.extend(parked(
            last.ts + 300_000,
            moved + 5 * DAY_MS,
            away,
            last.odometer,
        ));
        let got = run(&fleet, vi, msgs);
        let third = LocalDay::of(v.tz, moved + 3 * DAY_MS).night_sample;
        assert_eq!(kinds(&got, AlertKind::ResidenceChange), vec![third]);
    }

    #[test]
    fn odometer_mismatch_needs_a_full_window_and_fires_once() {
        let (fleet, vi) = single_vehicle();
        let home = fleet.vehicles[vi].places[0];
        let normal = drive(0, home, 400.0, 1000.0, 1.05);
        assert!(kinds(&run(&fleet, vi, normal), AlertKind::OdometerMismatch).is_empty());
        for rate in [0.4, 2.5] {
            let mut msgs = drive(0, home, 150.0, 1000.0, 1.05);
            let last = msgs.last().unwrap().clone();
            let p = LatLon::new(last.lat, last.lon);
            msgs.extend(drive(last.ts, p, 150.0, last.odometer, rate));
            let got = kinds(&run(&fleet, vi, msgs), AlertKind::OdometerMismatch);
            assert_eq!(got.len(), 1, "{rate}: {got:?}");
            // After 150 km, within the first 60 km at the wrong rate.
            assert!(
                (150 * 60_000..210 * 60_000).contains(&got[0]),
                "{rate}: {got:?}"
            );
        }
    }

    #[test]
    fn duplicate_collateral_once_per_vehicle_and_vin() {
        let fleet = Fleet::generate(6, 80, 0);
        let (a, _) = fleet.double_pledged[0];
        let a = a as usize;
        let home = fleet.vehicles[a].places[0];
        let got = run(&fleet, a, parked(0, 3_600_000, home, 1000.0));
        assert_eq!(kinds(&got, AlertKind::DuplicateCollateral), vec![0]);
        let cloner = (0..fleet.vehicles.len())
            .find(|i| {
                let v = &fleet.vehicles[*i];
                v.cloned_vin.is_some()
                    && fleet.devices[v.primary() as usize].class == DevClass::Obd
                    && fleet
                        .double_pledged
                        .iter()
                        .all(|(x, y)| *x as usize != *i && *y as usize != *i)
            })
            .unwrap();
        let home = fleet.vehicles[cloner].places[0];
        let mut msgs = parked(0, 6 * 3_600_000, home, 1000.0);
        // From 01:00 and from 03:00, for half an hour each.
        for i in (12..18).chain(36..42) {
            msgs[i].vin = VinSel::Cloned;
        }
        let got = run(&fleet, cloner, msgs);
        assert_eq!(kinds(&got, AlertKind::DuplicateCollateral), vec![3_600_000]);
        assert_eq!(
            kinds(&got, AlertKind::VinMismatch),
            vec![3_600_000, 3 * 3_600_000]
        );
    }
}
