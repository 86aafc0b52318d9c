//! Noise that must raise nothing (SPEC §4a): drift outliers, no-fix repeats, short tunnels,
//! stretches of unknown ignition, exact duplicates, swapped neighbours, late messages, short
//! back-filled batches, RFC 3339 `ts`, unknown fields and alarms. Noise never touches a
//! message inside an incident window (with a margin), so incidents stay clean.

use rand::RngExt;
use rand::rngs::SmallRng;

use super::geo::{self, LatLon};
use super::msg::{
    AL_UNKNOWN, F_BACKFILL, F_BATCHED, F_DRIFT, F_DUPLICATED, F_EXTRA, F_LATE, F_NOISE,
    F_TS_STRING, Gnss, Motion, Msg,
};
use super::timeline::{Clock, HOUR, MIN, Trip};

/// Time ranges noise keeps away from.
pub(crate) struct Quiet(pub Vec<(i64, i64)>);

impl Quiet {
    /// Whether `ts` is outside every range (widened by 2 h).
    pub(crate) fn free(&self, ts: i64) -> bool {
        self.0
            .iter()
            .all(|(a, b)| ts < a - 2 * HOUR || ts > b + 2 * HOUR)
    }
}

fn usable(m: &Msg, quiet: &Quiet) -> bool {
    m.plain() && quiet.free(m.ts)
}

fn stale_copy(m: &Msg, ts: i64) -> Msg {
    let mut c = m.clone();
    c.ts = ts;
    c.gnss = Gnss::NoFixStale;
    c.hdop = 9.9;
    c.sats = (ts % 4) as u8;
    c.flags = F_NOISE;
    c.alarms = 0;
    c
}

/// Adds content noise to a primary device's messages (before sequence numbers): drift
/// outliers and no-fix repeats while parked, garage starts, tunnels, unknown ignition.
/// Inserted messages are appended; the caller re-sorts by `ts`.
pub(crate) fn content(
    msgs: &mut Vec<Msg>,
    trips: &[Trip],
    quiet: &Quiet,
    clock: Clock,
    level: f64,
    rng: &mut SmallRng,
) {
    let p = |x: f64| (x * level).min(1.0);
    let mut added = Vec::new();
    for i in 1..msgs.len().saturating_sub(1) {
        let (prev, m, next) = (&msgs[i - 1], &msgs[i], &msgs[i + 1]);
        if m.motion != Motion::Parked
            || next.motion != Motion::Parked
            || prev.motion != Motion::Parked
            || !usable(m, quiet)
            || !next.plain()
            || !m.has_fix()
        {
            continue;
        }
        let room = next.ts - m.ts;
        if room >= 4 * MIN && rng.random_bool(p(0.0012)) {
            let dist = rng.random_range(5_000.0..50_000.0f64);
            let dt = ((dist / 600.0 * 3.6) as i64 * 1000).clamp(5_000, 60_000);
            let home = LatLon::new(m.lat, m.lon);
            let far = geo::offset(home, rng.random_range(0.0..360.0), dist);
            let mut b = m.clone();
            b.ts = m.ts + dt;
            b.lat = super::fleet::round6(far.lat);
            b.lon = super::fleet::round6(far.lon);
            b.hdop = (rng.random_range(2.5..4.8f32) * 10.0).round() / 10.0;
            b.sats = 4;
            b.flags = F_NOISE | F_DRIFT;
            let mut c = m.clone();
            c.ts = b.ts + dt;
            c.flags = F_NOISE;
            added.push(b);
            added.push(c);
            msgs[i].flags |= F_NOISE;
            msgs[i + 1].flags |= F_NOISE;
        } else if room >= 5 * MIN && rng.random_bool(p(0.002)) {
            let stale = (prev.lat, prev.lon);
            let extra = rng.random_range(0..=2);
            let m = &mut msgs[i];
            m.gnss = Gnss::NoFixStale;
            (m.lat, m.lon) = stale;
            m.hdop = 9.9;
            m.sats = 2;
            m.flags |= F_NOISE;
            let mut t = m.ts;
            for _ in 0..extra {
                t += rng.random_range(60_000..120_000);
                added.push(stale_copy(m, t));
            }
        }
    }
    for trip in trips.iter().filter(|t| !t.script) {
        let lo = msgs.partition_point(|m| m.ts < trip.dep);
        let hi = msgs.partition_point(|m| m.ts < trip.arr);
        if hi >= msgs.len() || lo == 0 || !usable(&msgs[lo], quiet) || !usable(&msgs[hi], quiet) {
            continue;
        }
        if rng.random_bool(p(0.05)) {
            let n = rng.random_range(1..=3);
            let dep = &msgs[lo];
            for k in 1..=n {
                let ts = dep.ts - k * 60_000;
                if ts > msgs[lo - 1].ts + 30_000 {
                    let mut g = stale_copy(dep, ts);
                    g.motion = Motion::Driving;
                    g.ignition = Some(true);
                    added.push(g);
                }
            }
            msgs[lo].flags |= F_NOISE;
        }
        if hi - lo >= 12 && rng.random_bool(p(0.08)) {
            let n = rng.random_range(1..=4);
            let s = rng.random_range(lo + 2..hi - 2 - n);
            if msgs[s..s + n].iter().all(|m| usable(m, quiet)) {
                for m in &mut msgs[s..s + n] {
                    m.gnss = Gnss::NoFixBare;
                    m.flags |= F_NOISE;
                }
            }
        }
    }
    if rng.random_bool(p(0.12)) {
        let from = rng.random_range(clock.start..(clock.end - 10 * HOUR).max(clock.start + 1));
        let to = from + rng.random_range(2 * HOUR..10 * HOUR);
        for m in msgs.iter_mut() {
            if m.ts >= from && m.ts < to && quiet.free(m.ts) {
                m.ignition = None;
            }
        }
    }
    msgs.extend(added);
}

/// Sets arrival times (event time plus a small transport delay, in order per device) and
/// adds delivery noise: back-filled batches after short radio gaps, late messages, swapped
/// neighbours, duplicates, RFC 3339 `ts`, unknown fields and alarms. `trips` is empty for a
/// wireless unit.
pub(crate) fn delivery(
    msgs: &mut [Msg],
    trips: &[Trip],
    quiet: &Quiet,
    level: f64,
    rng: &mut SmallRng,
) {
    let p = |x: f64| (x * level).min(1.0);
    let mut last = i64::MIN;
    for m in msgs.iter_mut() {
        m.arrival = (m.ts + rng.random_range(300..4_000)).max(last + 1);
        last = m.arrival;
    }
    for trip in trips.iter().filter(|t| !t.script) {
        let lo = msgs.partition_point(|m| m.ts < trip.dep);
        let hi = msgs.partition_point(|m| m.ts < trip.arr);
        if hi >= msgs.len() || hi - lo < 16 || !rng.random_bool(p(0.04)) {
            continue;
        }
        let n = rng.random_range(3..=10usize).min(hi - lo - 8);
        let s = rng.random_range(lo + 3..=hi - 3 - n);
        if msgs[s - 1..=s + n].iter().all(|m| usable(m, quiet)) {
            for m in &mut msgs[s..s + n] {
                m.flags |= F_BATCHED | F_BACKFILL | F_NOISE;
            }
        }
    }
    let wireless = trips.is_empty();
    for i in 1..msgs.len().saturating_sub(1) {
        if !usable(&msgs[i], quiet) {
            continue;
        }
        let neighbours_plain = msgs[i - 1].plain() && msgs[i + 1].plain();
        // Whether the pipeline sees a late message as late depends on its ingest epochs; with
        // neighbours at most 10 min apart, leaving it out opens no GNSS gap (a gap restarts
        // `odometer_mismatch` windows), so either way the alerts are the same.
        if !wireless
            && neighbours_plain
            && msgs[i + 1].ts - msgs[i - 1].ts <= 10 * MIN
            && rng.random_bool(p(0.001))
        {
            let m = &mut msgs[i];
            m.flags |= F_LATE | F_NOISE;
            if rng.random_bool(0.5) {
                m.flags |= F_BACKFILL;
            }
            m.arrival = m.ts + rng.random_range(5 * MIN..30 * MIN);
            continue;
        }
        if !wireless
            && msgs[i + 1].plain()
            && quiet.free(msgs[i + 1].ts)
            && msgs[i + 1].ts - msgs[i].ts <= 60_000
            && rng.random_bool(p(0.0015))
        {
            let (a, b) = (msgs[i].arrival, msgs[i + 1].arrival);
            msgs[i].arrival = b;
            msgs[i + 1].arrival = a;
            msgs[i].flags |= F_NOISE;
            msgs[i + 1].flags |= F_NOISE;
            continue;
        }
        let m = &mut msgs[i];
        if rng.random_bool(p(if wireless { 0.01 } else { 0.002 })) {
            m.flags |= F_DUPLICATED;
        }
        if rng.random_bool(p(0.005)) {
            m.flags |= F_TS_STRING;
        }
        if rng.random_bool(p(0.01)) {
            m.flags |= F_EXTRA;
        }
        if !wireless && rng.random_bool(p(0.003)) {
            m.alarms |= AL_UNKNOWN;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_ranges_have_margins() {
        let q = Quiet(vec![(10 * HOUR, 11 * HOUR)]);
        assert!(q.free(7 * HOUR));
        assert!(!q.free(9 * HOUR));
        assert!(!q.free(12 * HOUR + MIN));
        assert!(q.free(13 * HOUR + MIN));
    }
}
