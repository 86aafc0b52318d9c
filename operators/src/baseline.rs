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
use crate::position::{Fix, Step};

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
    first_day: Option<i32>,
    /// The first local day whose 03:00 came after the first reading.
    first_night_day: Option<i32>,
    /// The open day.
    today: Option<DayAcc>,
    /// Emitted days that late data may still revise, oldest first.
    closed: Vec<DayAcc>,
    ring: DayRing,
    active: ActiveDays,
    nights: NightLocations,
    /// The last local day whose night location was taken.
    sampled_day: Option<i32>,
    /// The vehicle's last reported malfunction lamp.
    mil: bool,
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
        self.today.as_ref().map(|t| t.bounds.end_ms)
    }

    /// Whether emitted days wait to be emitted again.
    pub fn has_revisions(&self) -> bool {
        self.closed.iter().any(|d| d.dirty)
    }

    fn open(&mut self, tz: Tz, ts_ms: i64, rules: &RulesConfig) -> &mut DayAcc {
        let bounds = DayBounds::of(tz, ts_ms, night_end_hour(rules));
        if self.first_day.is_none() {
            self.first_day = Some(bounds.day);
            let after_sample = ts_ms > bounds.night_sample_ms;
            self.first_night_day = Some(bounds.day + i32::from(after_sample));
        }
        self.today.insert(DayAcc::new(bounds))
    }

    /// Days of history on local day `day`.
    fn history_days(&self, day: i32) -> i32 {
        self.first_day.map_or(0, |f| day - f)
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
        let (day, sample_ms) = (bounds.day, bounds.night_sample_ms);
        if r.ts_ms < sample_ms || self.sampled_day.is_some_and(|s| s >= day) {
            return;
        }
        self.sampled_day = Some(day);
        let rules = &ctx.rules.residence_change;
        let max_age = (rules.max_fix_age_h * 3_600_000.0) as i64;
        if let Some(fix) = last_fix.filter(|f| (sample_ms - max_age..=sample_ms).contains(&f.ts_ms))
        {
            let nights = self.first_night_day.map_or(0, |f| day - f).max(0);
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
        row: &RowIdentity<'_>,
        rules: &RulesConfig,
        rows: &mut Vec<DailyFeatures>,
    ) {
        if self
            .today
            .as_ref()
            .is_some_and(|t| r.ts_ms >= t.bounds.end_ms)
        {
            self.close(row, rules, rows);
        }
        if let Some(mil) = r.obd.as_ref().and_then(|o| o.mil) {
            self.mil = mil;
        }
        self.note_reading(r, tz, rules);
    }

    /// Adds an accepted reading's order-free contributions to its day: the open day, or an
    /// emitted day still open to revision. Late readings older than that change no row.
    pub fn note_reading(&mut self, r: &Reading, tz: Tz, rules: &RulesConfig) {
        let Some(today) = self.today.as_mut() else {
            self.open(tz, r.ts_ms, rules).note_reading(r);
            return;
        };
        if r.ts_ms >= today.bounds.start_ms {
            // A back-filled reading past the open day still counts in the open day's totals.
            today.note_reading(r);
            return;
        }
        if let Some(day) = self.closed.iter_mut().find(|d| d.bounds.contains(r.ts_ms))
            && day.note_reading(r)
        {
            self.ring.replace(day.bounds.day, day.summary());
        }
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
            counted_m: step.counted_m,
            dt_ms: step.dt_ms,
            mil: self.mil,
        };
        let Some(today) = self.today.as_mut() else {
            return;
        };
        if !today.bounds.contains(share.ts_ms) {
            // The held fix of a day the clock already closed: a revision if it moved.
            if let Some(day) = self
                .closed
                .iter_mut()
                .find(|d| d.bounds.contains(share.ts_ms))
            {
                day.note_step(&share);
                day.dirty |= share.counted_m > 0.0;
                self.ring.replace(day.bounds.day, day.summary());
            }
            return;
        }
        today.note_step(&share);
        if share.counted_m <= 0.0 {
            return;
        }
        let (day, today_km) = (today.bounds.day, today.gnss_m / 1000.0);
        let night = (share.ts_ms < today.bounds.night_end_ms).then_some(today.night_m / 1000.0);
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
        row: &RowIdentity<'_>,
        rules: &RulesConfig,
        rows: &mut Vec<DailyFeatures>,
    ) {
        if self.close_due().is_some_and(|end| end <= clock_ms) {
            self.close(row, rules, rows);
        }
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
    }

    fn close(&mut self, row: &RowIdentity<'_>, rules: &RulesConfig, rows: &mut Vec<DailyFeatures>) {
        let Some(day) = self.today.take() else {
            return;
        };
        let summary = day.summary();
        self.ring.push(day.bounds.day, summary);
        self.active.push(
            summary.gnss_km,
            rules.mileage_anomaly.active_day_km,
            rules.mileage_anomaly.window_days as usize,
        );
        let oldest = day.bounds.day - i32::try_from(rules.features.revision_days).unwrap_or(0);
        self.closed.retain(|d| d.bounds.day >= oldest);
        if day.has_data() {
            self.closed.push(day);
            let last = self.closed.len() - 1;
            self.emit(last, row, rules, rows);
        }
    }
}
