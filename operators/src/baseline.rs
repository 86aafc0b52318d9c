//! A vehicle's local days, daily features and behaviour baselines (docs/rules.md "Local days,
//! history and baselines" and "Daily features"), and the three baseline kinds that compare
//! today with them: `residence_change`, `mileage_anomaly`, `night_movement`.
//!
//! The vehicle calls in at fixed points: every accepted reading (in order or late), every
//! step of the position chain, and when the pipeline clock moves. Work per call is constant;
//! the rings hold at most 30 entries.

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use schemas::{DailyFeatures, Reading};

use crate::config::{RulesConfig, secs_ms};
use crate::ctx::Ctx;
use crate::days::{ActiveDays, DayAcc, DayBounds, DayRing, NightLocations, StepShare};
use crate::kinds::{
    Dev, mileage_anomaly::MileageAnomaly, night_movement::NightMovement,
    residence_change::ResidenceChange,
};
use crate::packed::Packed;
use crate::position::{Fix, PositionChain, Step};

/// Identity of the rows a vehicle emits.
pub struct RowIdentity<'a> {
    /// Vehicle id.
    pub vehicle_id: &'a str,
    /// Loan id.
    pub loan_id: Option<&'a str>,
}

/// Days, features and baselines of one vehicle.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    /// Local day of the first reading.
    first_day: Packed<i32>,
    /// The first local day whose 03:00 came after the first reading.
    first_night_day: Packed<i32>,
    /// The open day.
    today: Option<DayAcc>,
    /// End of the last closed day: older readings never open a day again.
    closed_until_ms: i64,
    /// Days after the open one that late readings reached first.
    ahead: Vec<DayAcc>,
    /// Emitted days that late data may still revise, oldest first.
    closed: Vec<DayAcc>,
    ring: DayRing,
    active: ActiveDays,
    nights: NightLocations,
    /// The last local day whose night location was taken.
    sampled_day: Packed<i32>,
    /// The vehicle's last reported malfunction lamp.
    mil: bool,
    /// Whether the chain's last step was driven.
    in_trip: bool,
    /// Whether a day in `closed` waits to be emitted again. The fleet asks for every reading
    /// (twice), so it is kept here instead of being looked for in the days on the heap, a
    /// cache miss each time. Not written: a restore counts it again.
    #[serde(skip)]
    revisions: bool,
    /// The time of the chain's held step, added when its day closed before the next fix
    /// decided it (so it is not added again).
    added_early: Packed<i64>,
    residence_change: ResidenceChange,
    mileage_anomaly: MileageAnomaly,
    night_movement: NightMovement,
}

fn night_end_hour(rules: &RulesConfig) -> u32 {
    rules.night_movement.end_hour
}

impl Baseline {
    /// The open day's end, when the clock must close it.
    pub fn close_due(&self) -> Option<i64> {
        self.today.as_ref().map(|t| t.bounds.end_ms())
    }

    /// Whether emitted days wait to be emitted again.
    pub fn has_revisions(&self) -> bool {
        debug_assert_eq!(self.revisions, self.closed.iter().any(|d| d.dirty));
        self.revisions
    }

    /// Counts the days waiting to be emitted again (after a restore).
    pub fn recount_revisions(&mut self) {
        self.revisions = self.closed.iter().any(|d| d.dirty);
    }

    /// Opens the day of in-order reading `ts_ms`. Days before it that only late readings
    /// reached are closed first (the clock is past them), in order, so they get rows too.
    fn open(
        &mut self,
        tz: Tz,
        ts_ms: i64,
        chain: &PositionChain,
        row: &RowIdentity<'_>,
        rules: &RulesConfig,
        rows: &mut Vec<DailyFeatures>,
    ) {
        let bounds = DayBounds::of(tz, ts_ms, night_end_hour(rules));
        self.ahead.sort_by_key(|d| d.bounds.day);
        while self
            .ahead
            .first()
            .is_some_and(|d| d.bounds.day < bounds.day)
        {
            let day = self.ahead.remove(0);
            if self.first_day.is_none() {
                self.first_day = Packed::some(day.bounds.day);
                self.first_night_day = Packed::some(day.bounds.day + 1);
            }
            self.today = Some(day);
            self.close(chain, row, rules, rows);
        }
        if self.first_day.is_none() {
            self.first_day = Packed::some(bounds.day);
            let after_sample = ts_ms > bounds.night_sample_ms();
            self.first_night_day = Packed::some(bounds.day + i32::from(after_sample));
        }
        let day = match self.ahead.first().filter(|d| d.bounds.day == bounds.day) {
            Some(_) => self.ahead.remove(0),
            None => DayAcc::new(bounds),
        };
        self.today = Some(day);
    }

    /// Days of history on local day `day`.
    fn history_days(&self, day: i32) -> i32 {
        self.first_day.get().map_or(0, |f| day - f)
    }

    /// Bounds of the local day of `ts_ms` (cached for the open day).
    fn bounds_of(&self, tz: Tz, ts_ms: i64, rules: &RulesConfig) -> DayBounds {
        match &self.today {
            Some(t) if t.bounds.contains(ts_ms) => t.bounds,
            _ => DayBounds::of(tz, ts_ms, night_end_hour(rules)),
        }
    }

    /// An in-order reading about to be processed: once a reading is past 03:00 local, the
    /// vehicle's last accepted fix is that night's location.
    pub fn before_reading(
        &mut self,
        r: &Reading,
        tz: Tz,
        last_fix: Option<&Fix>,
        dev: Dev<'_>,
        ctx: &mut Ctx<'_>,
    ) {
        if self.first_day.is_none() {
            return;
        }
        let bounds = self.bounds_of(tz, r.ts_ms, ctx.rules);
        let (day, sample_ms) = (bounds.day, bounds.night_sample_ms());
        if r.ts_ms < sample_ms || self.sampled_day.get().is_some_and(|s| s >= day) {
            return;
        }
        self.sampled_day = Packed::some(day);
        let rules = &ctx.rules.residence_change;
        let max_age = (rules.max_fix_age_h * 3_600_000.0) as i64;
        if let Some(fix) = last_fix.filter(|f| (sample_ms - max_age..=sample_ms).contains(&f.ts_ms))
        {
            let nights = self.first_night_day.get().map_or(0, |f| day - f).max(0);
            self.residence_change.on_night(
                sample_ms,
                (fix.lat, fix.lon),
                u32::try_from(nights).unwrap_or(0),
                &mut self.nights,
                dev,
                ctx,
            );
        }
    }

    /// An in-order reading was processed (after its step, which may still belong to the
    /// open day): closes the open day if the reading is past it, then adds the reading.
    pub fn after_reading(
        &mut self,
        r: &Reading,
        tz: Tz,
        chain: &PositionChain,
        row: &RowIdentity<'_>,
        rules: &RulesConfig,
        rows: &mut Vec<DailyFeatures>,
    ) {
        if self
            .today
            .as_ref()
            .is_some_and(|t| r.ts_ms >= t.bounds.end_ms())
        {
            self.close(chain, row, rules, rows);
        }
        if self.today.is_none() {
            self.open(tz, r.ts_ms, chain, row, rules, rows);
        }
        if let Some(mil) = r.obd.as_ref().and_then(|o| o.mil) {
            self.mil = mil;
        }
        self.note_reading(r, tz, rules);
    }

    /// Adds an accepted reading's order-free contributions to its day: the open day, or an
    /// emitted day still open to revision. Late readings older than that change no row.
    pub fn note_reading(&mut self, r: &Reading, tz: Tz, rules: &RulesConfig) {
        if let Some(today) = self.today.as_mut() {
            if today.bounds.contains(r.ts_ms) {
                today.note_reading(r);
                return;
            }
            if r.ts_ms >= today.bounds.end_ms() {
                self.note_ahead(r, tz, rules);
                return;
            }
        } else if r.ts_ms >= self.closed_until_ms {
            // Only in-order readings open days: the buffers may still hold earlier ones.
            self.note_ahead(r, tz, rules);
            return;
        }
        if let Some(day) = self.closed.iter_mut().find(|d| d.bounds.contains(r.ts_ms)) {
            day.note_reading(r);
            self.revisions |= day.dirty;
            self.ring.replace(day.bounds.day, day.summary());
        }
    }

    /// A late reading of a day after the open one, or of any day before the first in-order
    /// reading (back-filled while the reorder buffers still hold earlier data): kept aside
    /// until in-order data opens that day or a later one.
    fn note_ahead(&mut self, r: &Reading, tz: Tz, rules: &RulesConfig) {
        if let Some(day) = self.ahead.iter_mut().find(|d| d.bounds.contains(r.ts_ms)) {
            day.note_reading(r);
            return;
        }
        let mut day = DayAcc::new(DayBounds::of(tz, r.ts_ms, night_end_hour(rules)));
        day.note_reading(r);
        self.ahead.push(day);
    }

    /// Notes a harsh acceleration or braking between two readings of one device.
    pub fn note_speed_change(&mut self, prev: (i64, f32), now: (i64, f32), rules: &RulesConfig) {
        let f = &rules.features;
        let dt_ms = now.0 - prev.0;
        if dt_ms <= 0 || dt_ms > secs_ms(f.harsh_max_gap_s) {
            return;
        }
        let mps2 = f64::from(now.1 - prev.1) / 3.6 / (dt_ms as f64 / 1000.0);
        if let Some(today) = self.today.as_mut().filter(|t| t.bounds.contains(now.0)) {
            if mps2 >= f.harsh_accel_mps2 {
                today.note_harsh(true);
            } else if -mps2 >= f.harsh_brake_mps2 {
                today.note_harsh(false);
            }
        }
    }

    /// A step of the position chain: adds it to its day and runs the distance baselines.
    pub fn on_step(&mut self, step: &Step, dev: Dev<'_>, ctx: &mut Ctx<'_>) {
        let share = StepShare {
            ts_ms: step.fix.ts_ms,
            counted: step.counted,
            counted_m: step.counted_m,
            dt_ms: step.dt_ms,
            mil: self.mil,
        };
        let in_trip = std::mem::replace(&mut self.in_trip, share.counted);
        if self.added_early.take() == Some(share.ts_ms) {
            return;
        }
        let Some(today) = self.today.as_mut() else {
            return;
        };
        if !today.bounds.contains(share.ts_ms) {
            // A step into a day that closed before the step was known (late data, or a fix
            // that was no outlier after all): a revision if it moved.
            if let Some(day) = self
                .closed
                .iter_mut()
                .find(|d| d.bounds.contains(share.ts_ms))
            {
                day.note_step(&share, in_trip);
                day.dirty |= share.counted;
                self.revisions |= day.dirty;
                self.ring.replace(day.bounds.day, day.summary());
            }
            return;
        }
        today.note_step(&share, in_trip);
        if !share.counted {
            return;
        }
        let (day, today_km) = (today.bounds.day, today.gnss_m / 1000.0);
        let night = (share.ts_ms < today.bounds.night_end_ms()).then_some(today.night_m / 1000.0);
        self.mileage_anomaly
            .on_distance(day, today_km, &self.active, share.ts_ms, dev, ctx);
        if let Some(tonight_km) = night {
            let window = i32::try_from(ctx.rules.night_movement.window_days).unwrap_or(28);
            let past = self.ring.window(day - 1, window);
            let history = self.history_days(day);
            self.night_movement.on_night_distance(
                day,
                tonight_km,
                past,
                history,
                share.ts_ms,
                dev,
                ctx,
            );
        }
    }

    /// Closes the open day if the clock passed its end, and emits the rows late data
    /// revised.
    pub fn on_clock(
        &mut self,
        clock_ms: i64,
        chain: &PositionChain,
        row: &RowIdentity<'_>,
        rules: &RulesConfig,
        rows: &mut Vec<DailyFeatures>,
    ) {
        if self.close_due().is_some_and(|end| end <= clock_ms) {
            self.close(chain, row, rules, rows);
        }
        self.emit_revisions(row, rules, rows);
    }

    fn emit_revisions(
        &mut self,
        row: &RowIdentity<'_>,
        rules: &RulesConfig,
        rows: &mut Vec<DailyFeatures>,
    ) {
        for i in 0..self.closed.len() {
            if self.closed[i].dirty {
                self.emit(i, row, rules, rows);
            }
        }
    }

    fn emit(
        &mut self,
        i: usize,
        row: &RowIdentity<'_>,
        rules: &RulesConfig,
        rows: &mut Vec<DailyFeatures>,
    ) {
        let history = self.history_days(self.closed[i].bounds.day);
        let day = &mut self.closed[i];
        day.dirty = false;
        if rules.features.enabled {
            rows.push(day.row(row.vehicle_id, row.loan_id, &self.ring, history));
        }
        day.emitted += 1;
        self.recount_revisions();
    }

    /// Closes the open day. A step the chain still holds back in this day is added now: it
    /// is already known (see [`PositionChain::held_step`]).
    fn close(
        &mut self,
        chain: &PositionChain,
        row: &RowIdentity<'_>,
        rules: &RulesConfig,
        rows: &mut Vec<DailyFeatures>,
    ) {
        let Some(mut day) = self.today.take() else {
            return;
        };
        let held = chain.held_step(rules).filter(|h| day.bounds.contains(h.0));
        if let Some((ts_ms, counted, counted_m, dt_ms)) = held {
            let share = StepShare {
                ts_ms,
                counted,
                counted_m,
                dt_ms,
                mil: self.mil,
            };
            day.note_step(&share, self.in_trip);
            self.in_trip = counted;
            self.added_early = Packed::some(ts_ms);
        }
        self.closed_until_ms = day.bounds.end_ms();
        let summary = day.summary();
        self.ring.push(day.bounds.day, summary);
        self.active.push(
            summary.gnss_km,
            rules.mileage_anomaly.active_day_km,
            rules.mileage_anomaly.window_days as usize,
        );
        // Revisions waiting for the end of the epoch go out now if their day is about to be
        // dropped: a long epoch can close several days.
        self.emit_revisions(row, rules, rows);
        // The open day will be the next one: keep the `revision_days` days before it.
        let oldest = day.bounds.day + 1 - i32::try_from(rules.features.revision_days).unwrap_or(0);
        self.closed.retain(|d| d.bounds.day >= oldest);
        if day.has_data() {
            // Room for exactly the days kept (`revision_days`, at least the one just closed),
            // taken at once: growing one day at a time would leave the smaller blocks behind
            // as holes in the allocator's pages.
            let keep = usize::try_from(rules.features.revision_days)
                .unwrap_or(0)
                .max(1);
            self.closed
                .reserve_exact(keep.saturating_sub(self.closed.len()));
            self.closed.push(day);
            let last = self.closed.len() - 1;
            self.emit(last, row, rules, rows);
        }
    }
}

#[cfg(test)]
mod reference {
    //! The daily features of a vehicle fed reading by reading, in epochs, with back-filled
    //! readings arriving days late, against a plain batch computation over the same readings:
    //! sort, walk the fixes, sum per local day.

    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use schemas::{DeviceClass, Gnss, Obd, Record};

    use super::*;
    use crate::fences::FenceIndex;
    use crate::geo::{haversine_m, implied_speed_kmh};
    use crate::registry::{DEFAULT_TIMEZONE, Registry};
    use crate::vehicle::{Env, Outputs, Profile, VehicleState};

    /// 2025-11-01T00:00+08:00.
    const T0: i64 = 1_761_926_400_000;
    const MIN: i64 = 60_000;

    #[derive(Clone, Debug)]
    struct DayPlan {
        skip: bool,
        /// (departure minute of the day, fixes of 30 s, degrees per fix, harsh start).
        trips: Vec<(i64, u32, f64, bool)>,
        backfills: Vec<(i64, u32)>,
    }

    fn day_plan() -> impl Strategy<Value = DayPlan> {
        (
            prop::bool::weighted(0.1),
            prop::collection::vec(
                (
                    prop_oneof![1 => 30i64..280, 6 => 360i64..1300],
                    2u32..40,
                    0.0005f64..0.006,
                    prop::bool::weighted(0.2),
                ),
                0..3,
            ),
            prop::collection::vec((0i64..1400, 0u32..3), 0..2),
        )
            .prop_map(|(skip, trips, backfills)| DayPlan {
                skip,
                trips,
                backfills,
            })
    }

    fn reading(seq: u64, ts_ms: i64, lat: f64, speed: f32, odometer: f64) -> Reading {
        Reading {
            device_id: "D1".into(),
            ts_ms,
            seq: Some(seq),
            gnss: Some(Gnss {
                lat: Some(lat),
                lon: Some(121.0),
                fix: true,
                hdop: Some(1.0),
                ..Gnss::default()
            }),
            ignition: Some(speed > 0.0),
            speed_kmh: Some(speed),
            odometer_km: Some((odometer * 10.0).round() / 10.0),
            obd: Some(Obd {
                dtc_count: Some((seq % 7) as u32),
                mil: Some(seq.is_multiple_of(11)),
                ..Obd::default()
            }),
            content_hash: seq,
            ..Reading::default()
        }
    }

    /// In-order readings of the plan, and back-filled copies with the day they arrive after.
    fn readings(plan: &[DayPlan]) -> (Vec<Reading>, Vec<(usize, Reading)>) {
        let (mut out, mut late) = (Vec::new(), Vec::new());
        let (mut lat, mut odo, mut seq) = (31.0, 40_000.0, 0u64);
        for (d, day) in plan.iter().enumerate() {
            let day0 = T0 + d as i64 * 1440 * MIN;
            if day.skip {
                continue;
            }
            let mut trips = day.trips.clone();
            trips.sort_by_key(|t| t.0);
            let mut t = day0 + 7 * MIN;
            for &(dep, fixes, step, harsh) in &trips {
                let dep = day0 + dep * MIN;
                while t + 10 * MIN < dep {
                    seq += 1;
                    out.push(reading(seq, t, lat, 0.0, odo));
                    t += 10 * MIN;
                }
                t = t.max(dep);
                for k in 0..fixes {
                    lat += step;
                    odo += step * 111.2 * 1.05;
                    seq += 1;
                    let speed = if harsh && k == 1 { 0.0 } else { 60.0 };
                    let dt = if harsh && k < 2 { 5_000 } else { 30_000 };
                    out.push(reading(seq, t, lat, speed, odo));
                    t += dt;
                }
            }
            while t < day0 + 1440 * MIN - 5 * MIN {
                seq += 1;
                out.push(reading(seq, t, lat, 0.0, odo));
                t += 10 * MIN;
            }
            for &(minute, after) in &day.backfills {
                seq += 1;
                let mut r = reading(seq, day0 + minute * MIN + 7_000, lat + 0.01, 95.0, odo);
                r.backfill = true;
                r.obd.as_mut().expect("obd").dtc_count = Some(40);
                late.push((d + after as usize, r));
            }
        }
        (out, late)
    }

    fn record(r: Reading, i: usize) -> Record {
        Record {
            vehicle_id: "V1".into(),
            loan_id: Some("L1".into()),
            class: DeviceClass::Obd,
            registered: true,
            ingest_seq: i as u64,
            reading: Box::new(r),
        }
    }

    /// Feeds the readings in epochs of `epoch` readings; back-filled ones are inserted after
    /// the first reading of their arrival day. Returns the last row of each date and the
    /// number of rows per date.
    fn run(
        readings: Vec<Reading>,
        late: Vec<(usize, Reading)>,
        epoch: usize,
    ) -> (BTreeMap<String, DailyFeatures>, BTreeMap<String, u32>) {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let env = Env {
            rules: &rules,
            fences: &fences,
            registry: &Registry::empty(),
            detected_at_ms: 0,
        };
        let mut arrivals: Vec<Reading> = Vec::new();
        let mut late = late;
        for r in readings {
            let day = ((r.ts_ms - T0) / (1440 * MIN)) as usize;
            arrivals.push(r);
            let (now, later): (Vec<_>, Vec<_>) = late.into_iter().partition(|(d, _)| *d <= day);
            arrivals.extend(now.into_iter().map(|(_, r)| r));
            late = later;
        }
        arrivals.extend(late.into_iter().map(|(_, r)| r));
        let mut v = VehicleState::new(
            "V1".into(),
            Profile {
                loan_id: Some("L1".into()),
                ..Profile::default()
            },
        );
        let mut out = Outputs::default();
        let (mut clock, mut max_ts) = (None, i64::MIN);
        for (i, r) in arrivals.into_iter().enumerate() {
            if !r.backfill {
                max_ts = max_ts.max(r.ts_ms);
            }
            v.arrive(record(r, i), clock, &env, &mut out);
            if i % epoch == epoch - 1 {
                let c = max_ts - rules.reorder_window_ms();
                clock = Some(c);
                v.advance(c, &env, &mut out);
            }
        }
        v.advance(max_ts - rules.reorder_window_ms(), &env, &mut out);
        let mut last = BTreeMap::new();
        let mut count = BTreeMap::new();
        for row in out.features {
            *count.entry(row.date.clone()).or_default() += 1;
            last.insert(row.date.clone(), row);
        }
        (last, count)
    }

    #[derive(Default, Debug)]
    struct Day {
        gnss_m: f64,
        night_m: f64,
        mil_m: f64,
        driving_ms: i64,
        trips: u32,
        messages: u64,
        first_ts: i64,
        last_ts: i64,
        odometer: Option<((i64, f64), (i64, f64))>,
        max_speed: f32,
        dtc_max: u32,
        harsh_accel: u32,
        harsh_brake: u32,
    }

    /// The batch computation: every reading's order-free columns, and the GNSS distance of
    /// the in-order fixes (back-filled readings are late, so they add no distance).
    fn batch(readings: &[Reading], late: &[(usize, Reading)]) -> BTreeMap<String, Day> {
        let date = |ts: i64| DayBounds::of(DEFAULT_TIMEZONE, ts, 5);
        let mut days: BTreeMap<String, Day> = BTreeMap::new();
        let key = |ts: i64| date(ts).date().to_string();
        let all = readings.iter().chain(late.iter().map(|(_, r)| r));
        for r in all {
            let d = days.entry(key(r.ts_ms)).or_insert_with(|| Day {
                first_ts: i64::MAX,
                last_ts: i64::MIN,
                ..Day::default()
            });
            d.messages += 1;
            d.first_ts = d.first_ts.min(r.ts_ms);
            d.last_ts = d.last_ts.max(r.ts_ms);
            let o = (r.ts_ms, r.odometer_km.unwrap_or_default());
            d.odometer = Some(match d.odometer {
                None => (o, o),
                Some((a, b)) => (
                    if o.0 < a.0 { o } else { a },
                    if o.0 >= b.0 { o } else { b },
                ),
            });
            d.max_speed = d.max_speed.max(r.speed_kmh.unwrap_or_default());
            d.dtc_max = d
                .dtc_max
                .max(r.obd.as_ref().and_then(|o| o.dtc_count).unwrap_or(0));
        }
        let mut sorted: Vec<&Reading> = readings.iter().collect();
        sorted.sort_by_key(|r| r.ts_ms);
        for w in sorted.windows(2) {
            let (a, b) = (w[0], w[1]);
            let dt = b.ts_ms - a.ts_ms;
            if dt <= 10_000 {
                let mps2 = f64::from(b.speed_kmh.unwrap_or(0.0) - a.speed_kmh.unwrap_or(0.0))
                    / 3.6
                    / (dt as f64 / 1000.0);
                let d = days.get_mut(&key(b.ts_ms)).expect("day");
                d.harsh_accel += u32::from(mps2 >= 3.0);
                d.harsh_brake += u32::from(-mps2 >= 3.5);
            }
        }
        // The chain: every fix is accepted once a later fix exists (no drift outliers here);
        // the step into fix k is counted unless jitter, gap or jump.
        let mut in_trip = false;
        let mut mil = false;
        for k in 1..sorted.len().saturating_sub(1) {
            let (a, b) = (sorted[k - 1], sorted[k]);
            if let Some(m) = b.obd.as_ref().and_then(|o| o.mil) {
                mil = m;
            }
            let (la, lb) = (
                a.gnss.as_ref().and_then(|g| g.lat),
                b.gnss.as_ref().and_then(|g| g.lat),
            );
            let dist = haversine_m(la.unwrap_or(0.0), 121.0, lb.unwrap_or(0.0), 121.0);
            let dt = b.ts_ms - a.ts_ms;
            let parked = |r: &Reading| r.speed_kmh.is_some_and(|s| s < 5.0);
            let counted = !(dist < 30.0 && parked(a) && parked(b))
                && dt <= 600_000
                && !(dist > 100.0 && implied_speed_kmh(dist, dt.max(1000)) > 250.0);
            let bounds = date(b.ts_ms);
            let d = days.get_mut(&key(b.ts_ms)).expect("day");
            if counted {
                d.gnss_m += dist;
                d.driving_ms += dt;
                if b.ts_ms < bounds.night_end_ms() {
                    d.night_m += dist;
                }
                if mil {
                    d.mil_m += dist;
                }
                d.trips += u32::from(!in_trip);
            }
            in_trip = counted;
        }
        days
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn features_equal_a_batch_computation(
            plan in prop::collection::vec(day_plan(), 6..40),
            epoch in prop_oneof![Just(1usize), 7usize..300],
        ) {
            let (readings, late) = readings(&plan);
            let (rows, counts) = run(readings.clone(), late.clone(), epoch);
            let expected = batch(&readings, &late);
            let late_days: std::collections::BTreeSet<String> = late
                .iter()
                .map(|(_, r)| DayBounds::of(DEFAULT_TIMEZONE, r.ts_ms, 5).date().to_string())
                .collect();
            // The rows are rounded to the millimetre.
            let near = |a: f64, b: f64| (a - b).abs() < 1e-5;
            let mut gnss_by_day = BTreeMap::new();
            for (date, row) in &rows {
                let e = &expected[date];
                prop_assert_eq!(row.messages, e.messages, "{}", date);
                prop_assert_eq!((row.first_ts, row.last_ts), (e.first_ts, e.last_ts));
                let (first, last) = e.odometer.expect("odometer");
                prop_assert_eq!(row.odometer_start_km, Some(first.1));
                prop_assert_eq!(row.odometer_end_km, Some(last.1));
                prop_assert_eq!(row.max_speed_kmh, Some(f64::from(e.max_speed)));
                prop_assert_eq!(row.dtc_count_max, Some(e.dtc_max));
                prop_assert!(near(row.gnss_km, e.gnss_m / 1000.0), "{date}: {} vs {}", row.gnss_km, e.gnss_m / 1000.0);
                prop_assert!(near(row.night_km, e.night_m / 1000.0), "{date} night");
                prop_assert!(near(row.mil_km, e.mil_m / 1000.0), "{date} mil");
                prop_assert!(near(row.driving_minutes, e.driving_ms as f64 / 60_000.0), "{date}: {} vs {}", row.driving_minutes, e.driving_ms as f64 / 60_000.0);
                prop_assert_eq!(row.trips, e.trips, "{} trips", date);
                prop_assert_eq!((row.harsh_accel, row.harsh_brake), (e.harsh_accel, e.harsh_brake));
                // A day is emitted again only if late data reached it.
                if !late_days.contains(date) {
                    prop_assert_eq!(counts[date], 1, "{} emitted {} times", date, counts[date]);
                }
                prop_assert_eq!(row.revision + 1, counts[date]);
                gnss_by_day.insert(date.clone(), row.gnss_km);
            }
            // Rolling windows: the last row's km_7d is the sum of its week.
            if let Some((date, row)) = rows.iter().last() {
                let end = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d").expect("date");
                let week: f64 = gnss_by_day
                    .iter()
                    .filter(|(d, _)| {
                        let d = chrono::NaiveDate::parse_from_str(d, "%Y-%m-%d").expect("date");
                        (0..7).contains(&(end - d).num_days())
                    })
                    .map(|(_, km)| km)
                    .sum();
                prop_assert!((row.km_7d - week).abs() < 1e-3, "{} vs {}", row.km_7d, week);
            }
        }
    }
}
