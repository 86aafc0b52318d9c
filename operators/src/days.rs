//! Local days of a vehicle (docs/rules.md "Local days, history and baselines"): the day a
//! time falls in, the accumulator of the day's features, and the rings of past days and
//! nights the baseline kinds compare against. Everything here is constant work per reading.

use std::collections::VecDeque;

use chrono::{Days, NaiveDate, NaiveTime, TimeZone};
use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use schemas::{DailyFeatures, Reading};

use crate::geo::haversine_m;
use crate::packed::Packed;

/// Days in the ring of past days: the longest window any feature or kind looks back.
pub const RING_DAYS: usize = 30;

/// Hour (local) whose position is the night location.
const NIGHT_SAMPLE_HOUR: u32 = 3;

/// Local-day boundaries of one day in one time zone: local midnight as epoch milliseconds,
/// the other instants as milliseconds after it (24 bytes: kept for every day open to
/// revision).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayBounds {
    /// Local midnight.
    pub start_ms: i64,
    /// Days since 1970-01-01 of the local date.
    pub day: i32,
    /// End of the night window, after `start_ms`.
    night_end: i32,
    /// The night-location instant (03:00 local), after `start_ms`.
    night_sample: i32,
    /// The next local midnight, after `start_ms`.
    end: i32,
}

/// `ts_ms - start_ms`: days are at most 25 hours long, far inside `i32` milliseconds.
fn offset(start_ms: i64, ts_ms: i64) -> i32 {
    i32::try_from(ts_ms.saturating_sub(start_ms)).unwrap_or(if ts_ms < start_ms {
        i32::MIN
    } else {
        i32::MAX
    })
}

fn epoch_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(1970, 1, 1).unwrap_or_default()
}

/// Epoch ms of `hour`:00 local on `date`; in a DST gap, the first local time after it.
fn local_ms(tz: Tz, date: NaiveDate, hour: u32) -> i64 {
    for h in hour..hour + 3 {
        let time = NaiveTime::from_hms_opt(h % 24, 0, 0).unwrap_or_default();
        let date = if h >= 24 { date + Days::new(1) } else { date };
        if let Some(t) = tz.from_local_datetime(&date.and_time(time)).earliest() {
            return t.timestamp_millis();
        }
    }
    date.and_time(NaiveTime::MIN).and_utc().timestamp_millis() + i64::from(hour) * 3_600_000
}

impl DayBounds {
    /// The local day of `ts_ms` in `tz`, with a night window ending at `night_end_hour`.
    pub fn of(tz: Tz, ts_ms: i64, night_end_hour: u32) -> Self {
        let date = tz
            .timestamp_millis_opt(ts_ms)
            .single()
            .map_or_else(epoch_date, |t| t.date_naive());
        Self::on(tz, date, night_end_hour)
    }

    fn on(tz: Tz, date: NaiveDate, night_end_hour: u32) -> Self {
        let next = date + Days::new(1);
        let start_ms = local_ms(tz, date, 0);
        Self {
            day: i32::try_from((date - epoch_date()).num_days()).unwrap_or_default(),
            start_ms,
            night_end: offset(start_ms, local_ms(tz, date, night_end_hour.min(23))),
            night_sample: offset(start_ms, local_ms(tz, date, NIGHT_SAMPLE_HOUR)),
            end: offset(start_ms, local_ms(tz, next, 0)),
        }
    }

    /// End of the night window.
    pub fn night_end_ms(&self) -> i64 {
        self.start_ms + i64::from(self.night_end)
    }

    /// The night-location instant (03:00 local).
    pub fn night_sample_ms(&self) -> i64 {
        self.start_ms + i64::from(self.night_sample)
    }

    /// The next local midnight.
    pub fn end_ms(&self) -> i64 {
        self.start_ms + i64::from(self.end)
    }

    /// The following local day.
    pub fn next(&self, tz: Tz, night_end_hour: u32) -> Self {
        Self::on(tz, self.date() + Days::new(1), night_end_hour)
    }

    /// Whether `ts_ms` falls in this day.
    pub fn contains(&self, ts_ms: i64) -> bool {
        (self.start_ms..self.end_ms()).contains(&ts_ms)
    }

    /// The local date.
    pub fn date(&self) -> NaiveDate {
        epoch_date() + Days::new(u64::try_from(self.day).unwrap_or_default())
    }
}

/// The features of one local day being accumulated (docs/rules.md "Daily features"). Kept
/// for the open day and every emitted day still open to revision, so it is compact (120
/// bytes): times as milliseconds after local midnight, "none" as a sentinel value.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DayAcc {
    /// The day.
    pub bounds: DayBounds,
    /// GNSS distance, metres.
    pub gnss_m: f64,
    /// GNSS distance in the night window, metres.
    pub night_m: f64,
    mil_m: f64,
    /// The earliest odometer reading, km (NaN = none; readings are finite).
    odometer_first_km: f64,
    /// The latest odometer reading, km (NaN = none).
    odometer_last_km: f64,
    /// Times of the two odometer readings, ms after `bounds.start_ms`.
    odometer_first_at: i32,
    odometer_last_at: i32,
    /// Time of the earliest and latest reading, ms after `bounds.start_ms` (`i32::MAX` and
    /// `i32::MIN` while `messages` is 0).
    first_at: i32,
    last_at: i32,
    driving_ms: u32,
    messages: u32,
    trips: u32,
    harsh_accel: u32,
    harsh_brake: u32,
    /// Emissions so far (0 = not yet emitted).
    pub emitted: u32,
    /// The highest speed, km/h (`-inf` = none; speeds are finite).
    max_speed_kmh: f32,
    dtc_count_max: Option<u32>,
    /// Changed since its last emission.
    pub dirty: bool,
}

/// What a counted or uncounted step adds to its day.
#[derive(Clone, Copy, Debug)]
pub struct StepShare {
    /// Time of the step's later fix.
    pub ts_ms: i64,
    /// Whether the step is driven distance (not jitter, a gap or a jump).
    pub counted: bool,
    /// Distance counted, metres.
    pub counted_m: f64,
    /// Duration of the step.
    pub dt_ms: i64,
    /// Whether the vehicle's malfunction lamp was on.
    pub mil: bool,
}

impl DayAcc {
    /// An empty day.
    pub fn new(bounds: DayBounds) -> Self {
        Self {
            bounds,
            gnss_m: 0.0,
            night_m: 0.0,
            mil_m: 0.0,
            odometer_first_km: f64::NAN,
            odometer_last_km: f64::NAN,
            odometer_first_at: 0,
            odometer_last_at: 0,
            first_at: i32::MAX,
            last_at: i32::MIN,
            driving_ms: 0,
            messages: 0,
            trips: 0,
            harsh_accel: 0,
            harsh_brake: 0,
            emitted: 0,
            max_speed_kmh: f32::NEG_INFINITY,
            dtc_count_max: None,
            dirty: false,
        }
    }

    /// Adds an accepted reading's order-free contributions (in order or late). Every reading
    /// changes the row (`messages`), so an emitted day is due again. The reading falls in
    /// the day.
    pub fn note_reading(&mut self, r: &Reading) {
        self.dirty |= self.emitted > 0;
        self.messages = self.messages.saturating_add(1);
        let at = offset(self.bounds.start_ms, r.ts_ms);
        self.first_at = self.first_at.min(at);
        self.last_at = self.last_at.max(at);
        if let Some(km) = r.odometer_km.filter(|k| k.is_finite()) {
            if self.odometer_first_km.is_nan() || at < self.odometer_first_at {
                (self.odometer_first_at, self.odometer_first_km) = (at, km);
            }
            if self.odometer_last_km.is_nan() || at >= self.odometer_last_at {
                (self.odometer_last_at, self.odometer_last_km) = (at, km);
            }
        }
        let speed = r
            .speed_kmh
            .or_else(|| r.gnss.as_ref().and_then(|g| g.speed_kmh))
            .filter(|s| s.is_finite());
        if let Some(s) = speed {
            self.max_speed_kmh = self.max_speed_kmh.max(s);
        }
        if let Some(n) = r.obd.as_ref().and_then(|o| o.dtc_count) {
            self.dtc_count_max = Some(self.dtc_count_max.map_or(n, |m| m.max(n)));
        }
    }

    /// Adds a step of the in-order position chain ending in this day; `in_trip` says whether
    /// the step before it was driven (a trip through midnight counts on its first day).
    pub fn note_step(&mut self, step: &StepShare, in_trip: bool) {
        if step.counted {
            self.gnss_m += step.counted_m;
            let dt_ms =
                u32::try_from(step.dt_ms).unwrap_or(if step.dt_ms < 0 { 0 } else { u32::MAX });
            self.driving_ms = self.driving_ms.saturating_add(dt_ms);
            if step.ts_ms < self.bounds.night_end_ms() {
                self.night_m += step.counted_m;
            }
            if step.mil {
                self.mil_m += step.counted_m;
            }
            if !in_trip {
                self.trips += 1;
            }
        }
    }

    /// Counts a harsh acceleration (`true`) or braking.
    pub fn note_harsh(&mut self, accel: bool) {
        if accel {
            self.harsh_accel += 1;
        } else {
            self.harsh_brake += 1;
        }
    }

    /// Odometer distance of the day, km.
    pub fn odometer_km(&self) -> Option<f64> {
        Some(self.odometer_end_km()? - self.odometer_start_km()?)
    }

    fn odometer_start_km(&self) -> Option<f64> {
        Some(self.odometer_first_km).filter(|k| !k.is_nan())
    }

    fn odometer_end_km(&self) -> Option<f64> {
        Some(self.odometer_last_km).filter(|k| !k.is_nan())
    }

    /// Time of the earliest reading (`i64::MAX` without one).
    fn first_ts(&self) -> i64 {
        if self.messages == 0 {
            i64::MAX
        } else {
            self.bounds.start_ms + i64::from(self.first_at)
        }
    }

    /// Time of the latest reading (`i64::MIN` without one).
    fn last_ts(&self) -> i64 {
        if self.messages == 0 {
            i64::MIN
        } else {
            self.bounds.start_ms + i64::from(self.last_at)
        }
    }

    /// Whether the day saw any accepted reading.
    pub fn has_data(&self) -> bool {
        self.messages > 0
    }

    /// The row, with the rolling columns from `ring` (which already holds this day).
    pub fn row(
        &self,
        vehicle_id: &str,
        loan_id: Option<&str>,
        ring: &DayRing,
        history_days: i32,
    ) -> DailyFeatures {
        // Distances to the millimetre, windows (kept as f32 in the ring) to the metre, so
        // the rows read as sent and do not carry float noise.
        let km = |m: f64| round(m / 1000.0, 1e6);
        let window = ring.window(self.bounds.day, 30);
        let km_30d = round(window.gnss_km, 1e3);
        let span = f64::from(history_days.clamp(0, 29) + 1);
        DailyFeatures {
            vehicle_id: vehicle_id.to_owned(),
            loan_id: loan_id.map(str::to_owned),
            date: self.bounds.date().format("%Y-%m-%d").to_string(),
            revision: self.emitted,
            odometer_start_km: self.odometer_start_km(),
            odometer_end_km: self.odometer_end_km(),
            odometer_km: self.odometer_km().map(|k| round(k, 1e6)),
            gnss_km: km(self.gnss_m),
            driving_minutes: round(f64::from(self.driving_ms) / 60_000.0, 1e6),
            trips: self.trips,
            max_speed_kmh: (self.max_speed_kmh > f32::NEG_INFINITY)
                .then(|| decimal(self.max_speed_kmh)),
            harsh_accel: self.harsh_accel,
            harsh_brake: self.harsh_brake,
            night_km: km(self.night_m),
            mil_km: km(self.mil_m),
            dtc_count_max: self.dtc_count_max,
            messages: u64::from(self.messages),
            first_ts: self.first_ts(),
            last_ts: self.last_ts(),
            km_7d: round(ring.window(self.bounds.day, 7).gnss_km, 1e3),
            km_30d,
            projected_annual_km: round(km_30d * 365.0 / span, 1e3),
            odo_gnss_ratio_30d: (km_30d >= 1.0 && window.odometer_days > 0)
                .then(|| round(window.odometer_km / km_30d, 1e6)),
        }
    }

    /// The day's entry in the ring of past days.
    pub fn summary(&self) -> DaySummary {
        DaySummary {
            gnss_km: (self.gnss_m / 1000.0) as f32,
            night_km: (self.night_m / 1000.0) as f32,
            odometer_km: self.odometer_km().map_or(f32::NAN, |k| k as f32),
        }
    }
}

fn round(v: f64, scale: f64) -> f64 {
    (v * scale).round() / scale
}

/// An `f32` reading as its shortest decimal (`37.1`, not `37.099998474121094`).
fn decimal(v: f32) -> f64 {
    v.to_string().parse().unwrap_or(f64::from(v))
}

/// What the ring keeps of a past day.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DaySummary {
    /// GNSS distance, km.
    pub gnss_km: f32,
    /// GNSS distance in the night window, km.
    pub night_km: f32,
    /// Odometer distance, km (NaN when the day had no odometer).
    pub odometer_km: f32,
}

impl DaySummary {
    const EMPTY: Self = Self {
        gnss_km: 0.0,
        night_km: 0.0,
        odometer_km: f32::NAN,
    };
}

/// Sums over a window of days.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct WindowSums {
    /// GNSS km.
    pub gnss_km: f64,
    /// Night-window km.
    pub night_km: f64,
    /// Odometer km of the days that had an odometer.
    pub odometer_km: f64,
    /// Days with an odometer.
    pub odometer_days: u32,
}

/// The last [`RING_DAYS`] closed local days, newest last; days without data are empty.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct DayRing {
    newest: Packed<i32>,
    days: VecDeque<DaySummary>,
}

impl DayRing {
    /// Records closed day `day` (after every day before it).
    pub fn push(&mut self, day: i32, summary: DaySummary) {
        if let Some(newest) = self.newest.get() {
            let empty = usize::try_from(day - newest - 1)
                .unwrap_or(0)
                .min(RING_DAYS);
            for _ in 0..empty {
                self.push_one(DaySummary::EMPTY);
            }
        }
        self.push_one(summary);
        self.newest = Packed::some(day);
    }

    fn push_one(&mut self, summary: DaySummary) {
        if self.days.len() == RING_DAYS {
            self.days.pop_front();
        }
        self.days.reserve_exact(RING_DAYS - self.days.len());
        self.days.push_back(summary);
    }

    /// Replaces the entry of a day still in the ring (a revised day).
    pub fn replace(&mut self, day: i32, summary: DaySummary) {
        if let Some(i) = self.index(day) {
            self.days[i] = summary;
        }
    }

    fn index(&self, day: i32) -> Option<usize> {
        let back = usize::try_from(self.newest.get()? - day).ok()?;
        self.days.len().checked_sub(back + 1)
    }

    /// Sums over the `n` days ending with `last_day`.
    pub fn window(&self, last_day: i32, n: i32) -> WindowSums {
        let mut sums = WindowSums::default();
        for day in last_day - n + 1..=last_day {
            if let Some(d) = self.index(day).map(|i| self.days[i]) {
                sums.gnss_km += f64::from(d.gnss_km);
                sums.night_km += f64::from(d.night_km);
                if d.odometer_km.is_finite() {
                    sums.odometer_km += f64::from(d.odometer_km);
                    sums.odometer_days += 1;
                }
            }
        }
        sums
    }
}

/// Distances of the last active days (newest last), for the median of `mileage_anomaly`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ActiveDays {
    days: VecDeque<f32>,
    /// The median, computed when a day is added (it is read on every driven step).
    median_km: Packed<f64>,
}

impl ActiveDays {
    /// Records a closed day's distance if it was active.
    pub fn push(&mut self, km: f32, min_km: f64, keep: usize) {
        if f64::from(km) >= min_km {
            if self.days.len() >= keep {
                self.days.pop_front();
            }
            self.days
                .reserve_exact(keep.saturating_sub(self.days.len()));
            self.days.push_back(km);
            self.median_km = median(&self.days).into();
        }
    }

    /// Active days recorded.
    pub fn len(&self) -> usize {
        self.days.len()
    }

    /// Whether none was recorded.
    pub fn is_empty(&self) -> bool {
        self.days.is_empty()
    }

    /// Median distance (mean of the middle two for an even count).
    pub fn median_km(&self) -> Option<f64> {
        self.median_km.get()
    }
}

fn median(days: &VecDeque<f32>) -> Option<f64> {
    let mut v: Vec<f64> = days.iter().map(|k| f64::from(*k)).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Night locations (newest last).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NightLocations(VecDeque<(f32, f32)>);

impl NightLocations {
    /// Records a night location, keeping the last `keep`.
    pub fn push(&mut self, lat: f64, lon: f64, keep: usize) {
        if self.0.len() >= keep {
            self.0.pop_front();
        }
        self.0.reserve_exact(keep.saturating_sub(self.0.len()));
        self.0.push_back((lat as f32, lon as f32));
    }

    /// Home: the location with the most others within `cluster_m` (the latest on ties),
    /// and that count including itself.
    pub fn home(&self, cluster_m: f64) -> Option<((f64, f64), usize)> {
        let points: Vec<(f64, f64)> = self
            .0
            .iter()
            .map(|(a, b)| (f64::from(*a), f64::from(*b)))
            .collect();
        let mut best: Option<((f64, f64), usize)> = None;
        // Over a cluster's few hundred metres a flat projection is exact to well under a
        // metre, and 30 × 30 distances a night stay cheap.
        let m_per_deg = haversine_m(0.0, 0.0, 1.0, 0.0);
        let r2 = (cluster_m / m_per_deg).powi(2);
        for p in &points {
            let cos_lat = p.0.to_radians().cos();
            let n = points
                .iter()
                .filter(|q| (q.0 - p.0).powi(2) + ((q.1 - p.1) * cos_lat).powi(2) <= r2)
                .count();
            if best.is_none_or(|(_, m)| n >= m) {
                best = Some((*p, n));
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn day_bounds_follow_the_time_zone() {
        // 2025-11-29T16:30Z is 00:30 on the 30th in Shanghai.
        let b = DayBounds::of(Tz::Asia__Shanghai, 1_764_433_800_000, 5);
        assert_eq!(b.date().to_string(), "2025-11-30");
        assert_eq!(b.start_ms, 1_764_432_000_000);
        assert_eq!(b.night_sample_ms() - b.start_ms, 3 * 3_600_000);
        assert_eq!(b.end_ms() - b.start_ms, 86_400_000);
        assert!(b.contains(1_764_433_800_000));
        assert_eq!(b.next(Tz::Asia__Shanghai, 5).start_ms, b.end_ms());
        // A DST day in New York has 23 hours.
        let spring = DayBounds::of(Tz::America__New_York, 1_773_000_000_000, 5);
        assert_eq!(spring.date().to_string(), "2026-03-08");
        assert_eq!(spring.end_ms() - spring.start_ms, 23 * 3_600_000);
    }

    #[test]
    fn ring_windows_count_missing_days_as_empty() {
        let mut ring = DayRing::default();
        let s = |km| DaySummary {
            gnss_km: km,
            night_km: 0.0,
            odometer_km: km,
        };
        ring.push(10, s(5.0));
        ring.push(12, s(7.0));
        assert_eq!(ring.window(12, 7).gnss_km, 12.0);
        assert_eq!(ring.window(12, 2).gnss_km, 7.0);
        ring.replace(10, s(6.0));
        assert_eq!(ring.window(12, 3).gnss_km, 13.0);
        ring.push(12 + 40, s(1.0));
        assert_eq!(ring.window(52, 30).gnss_km, 1.0);
    }

    #[test]
    fn median_and_home() {
        let mut a = ActiveDays::default();
        for km in [3.0, 50.0, 10.0, 0.5, 20.0] {
            a.push(km, 1.0, 28);
        }
        assert_eq!(a.len(), 4);
        assert_eq!(a.median_km(), Some(15.0));
        let mut n = NightLocations::default();
        for _ in 0..5 {
            n.push(31.0, 121.0, 30);
        }
        n.push(31.2, 121.0, 30);
        let (home, count) = n.home(500.0).unwrap();
        assert_eq!(count, 5);
        assert!((home.0 - 31.0).abs() < 1e-6);
    }
}
