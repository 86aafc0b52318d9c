//! Incident overlays: changes to a vehicle's device messages that do not change where the
//! vehicle goes (alarms, silences, voltages, odometer and OBD values, reported VINs).
//! Scripted incidents (movement) are run by the timeline builder;
//! [`JammingNoFix`](Scenario::JammingNoFix) runs a script and then blanks fixes here.

use rand::RngExt;
use rand::rngs::SmallRng;

use super::fleet::Vehicle;
use super::msg::{
    AL_ANTENNA_CUT, AL_JAMMING, AL_POWER_CUT, AL_REMOVAL, AL_TAMPER, AL_TOW, F_BACKFILL, F_BATCHED,
    F_INCIDENT, Gnss, Motion, Msg, VinSel,
};
use super::plan::Scenario;
use super::timeline::{Clock, HOUR, MIN, Trip};

/// The streams of one vehicle an overlay may change.
pub(crate) struct Streams<'a> {
    /// Primary device messages, in event-time order.
    pub primary: &'a mut Vec<Msg>,
    /// Wireless unit messages, if any.
    pub wireless: Option<&'a mut Vec<Msg>>,
    /// Messages to insert into the primary stream afterwards (buffered readings).
    pub extra: &'a mut Vec<Msg>,
    /// The primary track's trips.
    pub trips: &'a [Trip],
}

fn idx_at(msgs: &[Msg], ts: i64) -> usize {
    msgs.partition_point(|m| m.ts < ts)
}

fn between(rng: &mut SmallRng, lo: i64, hi: i64) -> i64 {
    if hi > lo {
        rng.random_range(lo..hi)
    } else {
        lo
    }
}

struct Day<'a> {
    v: &'a Vehicle,
    clock: Clock,
    d: u32,
}

impl Day<'_> {
    fn start(&self) -> i64 {
        self.clock.local(self.v, self.d, 0)
    }

    fn end(&self) -> i64 {
        self.clock.local(self.v, self.d + 1, 0)
    }

    /// The night's parking before the first trip of the day: `(from, to)` with margins.
    fn night(&self, trips: &[Trip]) -> Option<(i64, i64)> {
        let day0 = self.start();
        let first = trips.iter().find(|t| t.dep >= day0)?;
        let prev = trips
            .iter()
            .rev()
            .find(|t| t.arr < day0)
            .map_or(self.clock.start, |t| t.arr);
        let from = (day0 + 30 * MIN).max(prev + 30 * MIN);
        let to = first.dep - 20 * MIN;
        (to - from >= 3 * HOUR).then_some((from, to))
    }

    /// The first background trip of the day and the one after it.
    fn first_trip(&self, trips: &[Trip]) -> Option<(Trip, Option<Trip>)> {
        let day0 = self.start();
        let i = trips
            .iter()
            .position(|t| t.dep >= day0 && t.dep < self.end() && !t.script)?;
        Some((trips[i], trips.get(i + 1).copied()))
    }
}

/// Index range of the driving messages of `trip` (departure to arrival, inclusive).
fn trip_range(msgs: &[Msg], trip: &Trip) -> (usize, usize) {
    (idx_at(msgs, trip.dep), idx_at(msgs, trip.arr))
}

fn mark(msgs: &mut [Msg]) {
    for m in msgs {
        m.flags |= F_INCIDENT;
    }
}

/// Applies the overlay of `scenario` on local day `d`; returns the affected time range, or
/// `None` when the day offers no suitable moment (then nothing was changed).
pub(crate) fn apply(
    scenario: Scenario,
    v: &Vehicle,
    clock: Clock,
    d: u32,
    s: Streams<'_>,
    rng: &mut SmallRng,
) -> Option<(i64, i64)> {
    let day = Day { v, clock, d };
    let msgs = s.primary;
    match scenario {
        Scenario::PowerCutAlarm | Scenario::PowerCutVoltage => {
            let (a, b) = day.night(s.trips)?;
            let dur = rng.random_range(30..150) * MIN;
            let t1 = between(rng, a, b - dur - 20 * MIN);
            let (i0, i1) = (idx_at(msgs, t1), idx_at(msgs, t1 + dur));
            if i1 < i0 + 2 || msgs[i1].ts > b {
                return None;
            }
            for (k, m) in msgs[i0..i1].iter_mut().enumerate() {
                m.ext_v = (rng.random_range(0.0..0.6f32) * 100.0).round() / 100.0;
                m.battery = (m.battery - (k / 3) as f32).max(60.0);
            }
            if scenario == Scenario::PowerCutAlarm {
                msgs[i0].alarms |= AL_POWER_CUT;
            }
            mark(&mut msgs[i0..=i1]);
            Some((msgs[i0].ts, msgs[i1].ts))
        }
        Scenario::PowerCutSilent => {
            let (a, b) = day.night(s.trips)?;
            let i0 = idx_at(msgs, between(rng, a, a + 60 * MIN));
            let kept = rng.random_range(1..=2);
            for m in &mut msgs[i0..i0 + kept] {
                m.ext_v = (rng.random_range(0.0..0.6f32) * 100.0).round() / 100.0;
            }
            if rng.random_bool(0.5) {
                msgs[i0].alarms |= AL_POWER_CUT;
            }
            let last = msgs[i0 + kept - 1].ts;
            let ir = idx_at(msgs, last + rng.random_range(40..90) * MIN);
            if msgs[ir].ts > b {
                return None;
            }
            msgs.drain(i0 + kept..ir);
            let ir = i0 + kept;
            mark(&mut msgs[i0..=ir]);
            Some((msgs[i0].ts, msgs[ir].ts))
        }
        Scenario::Tamper | Scenario::Removal | Scenario::TowAlarm => {
            let (a, b) = day.night(s.trips)?;
            let i = idx_at(msgs, between(rng, a, b - 40 * MIN));
            let n = if scenario == Scenario::TowAlarm {
                rng.random_range(1..=2)
            } else {
                rng.random_range(1..=3)
            };
            let bit = match scenario {
                Scenario::Tamper => AL_TAMPER,
                Scenario::Removal => AL_REMOVAL,
                _ => AL_TOW,
            };
            for m in &mut msgs[i..i + n] {
                m.alarms |= bit;
            }
            mark(&mut msgs[i..=i + n]);
            Some((msgs[i].ts, msgs[i + n].ts))
        }
        Scenario::TamperBackfill | Scenario::TowAlarmBackfill => {
            let day0 = day.start();
            let long_trip = s.trips.iter().find(|t| {
                let (lo, hi) = trip_range(msgs, t);
                t.dep >= day0 && t.dep < day.end() && !t.script && hi - lo >= 16
            });
            match long_trip {
                Some(trip) if scenario == Scenario::TamperBackfill => {
                    let (lo, hi) = trip_range(msgs, trip);
                    let n = rng.random_range(3..=10usize).min(hi - lo - 8);
                    let start = rng.random_range(lo + 3..=hi - 3 - n);
                    for m in &mut msgs[start..start + n] {
                        m.flags |= F_BATCHED | F_BACKFILL;
                    }
                    msgs[start + rng.random_range(0..n)].alarms |= AL_TAMPER;
                    mark(&mut msgs[start..=start + n]);
                    Some((msgs[start - 1].ts, msgs[start + n].ts))
                }
                _ => {
                    let (a, b) = day.night(s.trips)?;
                    let i = idx_at(msgs, between(rng, a, b - 40 * MIN));
                    let (t0, t1) = (msgs[i].ts, msgs[i + 1].ts);
                    let n = rng.random_range(3..=4);
                    let bit = if scenario == Scenario::TamperBackfill {
                        AL_TAMPER
                    } else {
                        AL_TOW
                    };
                    for k in 1..=n {
                        let mut m = msgs[i].clone();
                        m.ts = t0 + (t1 - t0) * k / (n + 1);
                        m.flags |= F_BATCHED | F_BACKFILL | F_INCIDENT;
                        if k == 2 {
                            m.alarms |= bit;
                        }
                        s.extra.push(m);
                    }
                    mark(&mut msgs[i..=i + 1]);
                    Some((t0, t1))
                }
            }
        }
        Scenario::OfflineParked => {
            let (a, b) = day.night(s.trips)?;
            let silence = rng.random_range(60..(((b - a) / MIN) - 30).clamp(61, 240)) * MIN;
            let i0 = idx_at(msgs, between(rng, a, b - silence - 15 * MIN)).max(1);
            let ir = idx_at(msgs, msgs[i0 - 1].ts + silence);
            if msgs[ir].ts > b || ir <= i0 {
                return None;
            }
            msgs.drain(i0..ir);
            mark(&mut msgs[i0 - 1..=i0]);
            Some((msgs[i0 - 1].ts, msgs[i0].ts))
        }
        Scenario::OfflineDisplaced => {
            let (a, _) = day.night(s.trips)?;
            let (trip, next) = day.first_trip(s.trips)?;
            let s0 = (trip.dep - rng.random_range(25..60) * MIN).max(a);
            let mut s1 = trip.arr + rng.random_range(20..60) * MIN;
            if let Some(n) = next {
                s1 = s1.min(n.dep - 10 * MIN);
            }
            if s1 < trip.arr + 5 * MIN || s1 - s0 < 45 * MIN {
                return None;
            }
            let (i0, i1) = (idx_at(msgs, s0), idx_at(msgs, s1));
            msgs.drain(i0..i1);
            mark(&mut msgs[i0 - 1..=i0]);
            Some((msgs[i0 - 1].ts, msgs[i0].ts))
        }
        Scenario::OfflineWireless => {
            let w = s.wireless?;
            let i = idx_at(w, day.start() + HOUR);
            let until = w.get(i)?.ts + rng.random_range(30 * 60..40 * 60) * MIN;
            let j = idx_at(w, until);
            if j >= w.len() || j <= i + 1 {
                return None;
            }
            w.drain(i + 1..j);
            mark(&mut w[i..=i + 1]);
            Some((w[i].ts, w[i + 1].ts))
        }
        Scenario::JammingAlarm | Scenario::AntennaCut => {
            let bit = if scenario == Scenario::JammingAlarm {
                AL_JAMMING
            } else {
                AL_ANTENNA_CUT
            };
            let day0 = day.start();
            let trip = s.trips.iter().find(|t| {
                let (lo, hi) = trip_range(msgs, t);
                t.dep >= day0 && t.dep < day.end() && !t.script && hi - lo >= 12
            });
            let (i, n, gnss) = match trip {
                Some(t) if rng.random_bool(0.5) => {
                    let (lo, hi) = trip_range(msgs, t);
                    (
                        rng.random_range(lo + 2..hi - 6),
                        rng.random_range(2..=4),
                        Gnss::NoFixBare,
                    )
                }
                _ => {
                    let (a, b) = day.night(s.trips)?;
                    let i = idx_at(msgs, between(rng, a, b - 40 * MIN));
                    (i, rng.random_range(1..=2), Gnss::NoFixStale)
                }
            };
            for m in &mut msgs[i..i + n] {
                m.alarms |= bit;
                m.gnss = gnss;
            }
            mark(&mut msgs[i..=i + n]);
            Some((msgs[i].ts, msgs[i + n].ts))
        }
        Scenario::JammingNoFix => {
            let day0 = day.start();
            let trip = s.trips.iter().find(|t| t.script && t.dep >= day0)?;
            let (lo, hi) = trip_range(msgs, trip);
            let start = lo + rng.random_range(4..7);
            let want = msgs[start].ts + rng.random_range(12 * MIN + 30_000..16 * MIN);
            let end = idx_at(msgs, want).min(hi - 4);
            if msgs[end].ts - msgs[start].ts < 12 * MIN {
                return None;
            }
            let stale = rng.random_bool(0.5);
            let (lat, lon) = (msgs[start - 1].lat, msgs[start - 1].lon);
            for m in &mut msgs[start..end] {
                if stale {
                    m.gnss = Gnss::NoFixStale;
                    m.lat = lat;
                    m.lon = lon;
                } else {
                    m.gnss = Gnss::NoFixBare;
                }
            }
            mark(&mut msgs[start..=end]);
            Some((msgs[start].ts, msgs[end].ts))
        }
        Scenario::LowBatteryWireless => {
            let w = s.wireless?;
            let i = idx_at(w, day.start() + 6 * HOUR);
            if i < 3 || i + 2 >= w.len() {
                return None;
            }
            w[i - 2].battery = rng.random_range(20..=23) as f32;
            w[i - 1].battery = rng.random_range(16..=18) as f32;
            w[i].battery = rng.random_range(10..=14) as f32;
            let replaced = idx_at(w, w[i].ts + 20 * HOUR);
            if replaced >= w.len() {
                return None;
            }
            let mut level = w[i].battery;
            for m in &mut w[i + 1..replaced] {
                level = (level - 1.0).max(5.0);
                m.battery = level;
            }
            let fresh = rng.random_range(95..=100) as f32;
            let base = w[replaced].battery;
            for m in &mut w[replaced..] {
                m.battery = (fresh - (base - m.battery)).max(25.0);
            }
            mark(&mut w[i - 2..=replaced]);
            Some((w[i - 2].ts, w[replaced].ts))
        }
        Scenario::LowBatteryWired => {
            let (a, b) = day.night(s.trips)?;
            let i0 = idx_at(msgs, between(rng, a, a + 60 * MIN));
            let drive = i0
                + msgs[i0..]
                    .iter()
                    .position(|m| m.motion == Motion::Driving)?;
            if drive < i0 + 6 || msgs[i0 + 5].ts > b {
                return None;
            }
            for (k, level) in [45.0, 33.0, 24.0, 17.0].into_iter().enumerate() {
                msgs[i0 + k].battery = level;
            }
            for m in &mut msgs[i0 + 4..drive] {
                m.battery = rng.random_range(10..=14) as f32;
            }
            let full = msgs[drive].battery;
            for (k, m) in msgs[drive..].iter_mut().take(8).enumerate() {
                m.battery = (22.0 + 12.0 * k as f32).min(full);
            }
            mark(&mut msgs[i0..=drive]);
            Some((msgs[i0].ts, msgs[drive].ts))
        }
        Scenario::OdometerRollback => {
            let (trip, _) = day.first_trip(s.trips)?;
            let i = idx_at(msgs, trip.dep);
            let odometer = msgs[i].odometer;
            if odometer < 5_200.0 {
                return None;
            }
            let drop = rng
                .random_range(5_000.0..(odometer * 0.6).clamp(5_001.0, 60_000.0))
                .min(odometer - 100.0);
            for m in &mut msgs[i..] {
                m.odometer = ((m.odometer - drop) * 10.0).round() / 10.0;
            }
            mark(&mut msgs[i..=i + 1]);
            Some((msgs[i - 1].ts, msgs[i + 1].ts))
        }
        Scenario::DtcCleared => {
            let (trip, _) = day.first_trip(s.trips)?;
            let i = idx_at(msgs, trip.dep);
            let cleared = msgs[i].dist_clear;
            if cleared < 5.0 {
                return None;
            }
            for m in &mut msgs[i..] {
                m.dist_clear = ((m.dist_clear - cleared) * 10.0).round() / 10.0;
                m.mil = false;
                m.dtc = 0;
                m.dist_mil = 0.0;
            }
            mark(&mut msgs[i..=i]);
            Some((msgs[i - 1].ts, msgs[i].ts))
        }
        Scenario::VinMismatch | Scenario::ClonedVin => {
            let (trip, _) = day.first_trip(s.trips)?;
            let i0 = idx_at(msgs, trip.dep);
            let i1 = idx_at(msgs, day.end());
            if i1 >= msgs.len() {
                return None;
            }
            let vin = if scenario == Scenario::VinMismatch {
                VinSel::Foreign
            } else {
                VinSel::Cloned
            };
            for m in &mut msgs[i0..i1] {
                m.vin = vin;
            }
            mark(&mut msgs[i0..=i1]);
            Some((msgs[i0].ts, msgs[i1].ts))
        }
        Scenario::DoublePledge => {
            // Nothing to change: the registry makes the vehicle's first reading a duplicate
            // claim. Marking it keeps noise away from it.
            let first = msgs.first_mut()?;
            mark(std::slice::from_mut(first));
            Some((first.ts, first.ts))
        }
        Scenario::TowMovement
        | Scenario::LocationJump
        | Scenario::GeofenceExit
        | Scenario::RiskEnter
        | Scenario::RiskDwell
        | Scenario::StationaryLong
        | Scenario::MileageBlocker
        | Scenario::OdometerFast
        | Scenario::ResidenceChange
        | Scenario::LongDrive
        | Scenario::NightDrive => None,
    }
}
