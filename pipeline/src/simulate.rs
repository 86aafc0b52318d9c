//! `lienwatch simulate`: a deterministic fleet generator with injected incidents.
//!
//! It writes four files: the telemetry as JSON Lines in arrival order (SPEC §2, one payload
//! per line, `device_id` in the payload), the reference data `vehicles.csv` and
//! `fences.geojson` (SPEC §3), and a truth file listing every opening or instant alert that
//! docs/rules.md raises on that telemetry. The same options give byte-identical files.
//!
//! # What is in the data
//! - A fleet of pledged vehicles around six Chinese cities (local time zones), each with a
//!   wired or OBD tracker and sometimes a battery "wireless" unit reporting every 4–12 h; a
//!   few trackers are not in the registry. Vehicles commute and run errands along their own
//!   routes in their local time; while parked the tracker sends a heartbeat every 5–10 min
//!   (ignition off, with a fix), while driving a fix every 30 s at 20–110 km/h. Odometer,
//!   `dist_since_clear_km` and engine hours grow with the distance driven.
//! - Permitted fences (a city polygon and a metro circle per city; most vehicles list one,
//!   some none) and a few hundred small risk fences placed away from every background route.
//! - Incidents of the 19 kinds of docs/rules.md, each on its own vehicle-day: power cuts
//!   (alarm, voltage, or followed by silence, which is also `offline`), tamper and removal
//!   alarms (live or inside a back-filled batch), tows (by alarm, or towed ≥ 1 km with the
//!   ignition off), silences (parked; across a trip, reappearing far away, which raises no
//!   tow or jump; 30–40 h for wireless units), jamming (alarm, or 12–16 min without fix
//!   while driving), teleports, exits from the permitted region (out overnight), brief and
//!   long risk-fence visits (a long visit also raises `risk_zone_enter`), 80 h parkings, low
//!   batteries, odometer rollbacks, days with a mileage blocker or a too fast odometer,
//!   cleared trouble codes, foreign VINs and cloned VINs of other pledged vehicles (also
//!   `vin_mismatch`). Once vehicles have 14 days of history: three nights parked 8–40 km
//!   from home, days of driving far beyond their usual distance, drives around 01:00.
//!   Double pledges are in the registry: pairs of vehicles under different loans with one
//!   VIN, each raising `duplicate_collateral` at its first reading.
//! - Noise that must raise nothing (SPEC §4a): drift outliers, no-fix repeats, tunnels,
//!   unknown ignition, duplicates, swapped and late messages, back-filled batches, RFC 3339
//!   `ts`, unknown fields and alarms, blank lines, and malformed lines with known reject
//!   reasons (`invalid_json`, `invalid_utf8`, `missing_device_id`, `missing_ts`,
//!   `lat_out_of_range`, `lon_out_of_range`, `future_ts`, `invalid_ts`).
//!
//! # The truth file
//! One JSON object per line, sorted by time: `vehicle_id`, `device_id`, `kind`, `phase`
//! (`open` or `instant`), `event_time_ms` (as rules.md defines `event_time`),
//! `tolerance_ms` (3× the report interval, at least 120 s), `backfill` (raised from late
//! data) and `scenario` (the incident behind it). It is computed by evaluating the rules over
//! the generated messages, not taken from the plan; the unit tests check that both agree
//! exactly, i.e. that background traffic and noise raise nothing.
//!
//! Published live, timestamps must not lie more than a day in the future of the service's
//! wall clock: the default start is 2026-10-05 00:00 Asia/Shanghai, so the default 28 days
//! end on 2026-11-02.

mod fleet;
mod geo;
mod incident;
mod msg;
mod noise;
mod plan;
mod timeline;
mod truth;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use serde_json::json;
use xxhash_rust::xxh3::xxh3_64;

use fleet::{DevClass, Fleet};
use msg::{F_BATCHED, F_DUPLICATED, Msg, Omit};
use plan::{Incident, Scenario};
use timeline::{Clock, DayKind, HOUR};
use truth::Truth;

/// One day in milliseconds.
const DAY: i64 = 24 * HOUR;

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimOptions {
    /// Seed of every random choice: the same options give the same files.
    pub seed: u64,
    /// Number of vehicles.
    pub vehicles: usize,
    /// Number of days.
    pub days: u32,
    /// First instant, epoch milliseconds (should be a local midnight in Asia/Shanghai).
    pub start_ms: i64,
    /// Incidents per alert kind; `None` = one per 150 vehicle-days (at least one). Incidents
    /// need vehicle-days: each vehicle offers `days - 2` of them, so some may not fit; the
    /// baseline kinds (`residence_change`, `mileage_anomaly`, `night_movement`) need 14 days
    /// of history first and only fit runs of 17 days or more.
    pub incidents_per_kind: Option<usize>,
    /// Approximate number of risk fences.
    pub risk_fences: usize,
    /// Noise rate multiplier (0 = no noise, 1 = default rates).
    pub noise: f64,
    /// Malformed lines per reject reason; `None` = 3 + one per 100 vehicle-days.
    pub malformed_per_reason: Option<usize>,
}

impl Default for SimOptions {
    fn default() -> Self {
        Self {
            seed: 1,
            vehicles: 100,
            days: 28,
            start_ms: 1_791_129_600_000,
            incidents_per_kind: None,
            risk_fences: 300,
            noise: 1.0,
            malformed_per_reason: None,
        }
    }
}

/// The files a simulation writes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SimOutputs {
    /// Telemetry, JSON Lines in arrival order.
    pub messages: PathBuf,
    /// Expected alerts, JSON Lines.
    pub truth: PathBuf,
    /// Vehicle registry (SPEC §3).
    pub vehicles_csv: PathBuf,
    /// Fences (SPEC §3).
    pub fences: PathBuf,
}

impl SimOutputs {
    /// Derives the sibling paths from the messages path: `F.jsonl` → `F.truth.jsonl`,
    /// `F.vehicles.csv`, `F.fences.geojson` (a path without the `.jsonl` extension gets the
    /// suffixes appended).
    pub fn beside(messages: &Path) -> Self {
        let base = if messages.extension().is_some_and(|e| e == "jsonl") {
            messages.with_extension("")
        } else {
            messages.to_path_buf()
        };
        let sibling = |suffix: &str| {
            let mut s = base.clone().into_os_string();
            s.push(suffix);
            PathBuf::from(s)
        };
        Self {
            messages: messages.to_path_buf(),
            truth: sibling(".truth.jsonl"),
            vehicles_csv: sibling(".vehicles.csv"),
            fences: sibling(".fences.geojson"),
        }
    }
}

/// What a simulation wrote.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SimSummary {
    /// Lines of the messages file, blank and malformed ones included.
    pub lines: u64,
    /// Readings the pipeline should accept and archive: every valid reading (batch
    /// elements one by one), without duplicates and `future_ts` rejects.
    pub readings: u64,
    /// Rejects the pipeline should count, by SPEC reject reason name.
    pub bad_lines: BTreeMap<String, u64>,
    /// Exact duplicate lines (of valid single-message lines).
    pub duplicates: u64,
    /// Expected alerts (truth lines) by kind.
    pub incidents: BTreeMap<String, u64>,
}

/// Why a simulation failed.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The options make no sense.
    #[error("invalid simulation options: {0}")]
    Options(String),
    /// Writing an output file failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Derives an independent seed for one part of the simulation.
pub(crate) fn sub_seed(seed: u64, label: &str, index: u64) -> u64 {
    let mut key = Vec::with_capacity(label.len() + 16);
    key.extend_from_slice(&seed.to_le_bytes());
    key.extend_from_slice(label.as_bytes());
    key.extend_from_slice(&index.to_le_bytes());
    xxh3_64(&key)
}

/// A malformed line and the reject reason it must get.
#[derive(Clone, Debug)]
enum Bad {
    /// A message cut short (`invalid_json`).
    Truncated { dev: u32, msg: Box<Msg>, keep: f64 },
    /// Not JSON at all (`invalid_json`).
    Text(&'static str),
    /// Invalid UTF-8 inside a string (`invalid_utf8`).
    Utf8 { dev: u32, ts: i64 },
    /// No or empty `device_id` (`missing_device_id`).
    NoDevice {
        dev: u32,
        msg: Box<Msg>,
        empty: bool,
    },
    /// No `ts` (`missing_ts`).
    NoTs { dev: u32, msg: Box<Msg> },
    /// Latitude or longitude out of range (`lat_out_of_range`, `lon_out_of_range`).
    Range { dev: u32, msg: Box<Msg> },
    /// `ts` days after the data (`future_ts`).
    Future { dev: u32, msg: Box<Msg> },
    /// `"ts":"soon"` (`invalid_ts`).
    SoonTs { dev: u32, msg: Box<Msg> },
}

const TEXT_LINES: [&str; 4] = [
    "HTTP/1.1 502 Bad Gateway",
    "ERROR upstream connection reset by peer",
    "<html><body>gateway timeout</body></html>",
    "device 8612 reboot",
];

const REASONS: [&str; 8] = [
    "invalid_json",
    "invalid_utf8",
    "missing_device_id",
    "missing_ts",
    "lat_out_of_range",
    "lon_out_of_range",
    "future_ts",
    "invalid_ts",
];

/// One line of the messages file, placed by arrival time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Line {
    Msg { dev: u32, idx: u32 },
    Dup { dev: u32, idx: u32 },
    Batch { dev: u32, idx: u32, len: u32 },
    Bad(u32),
    Blank(u32),
}

/// Everything generated, before writing.
struct Generated {
    fleet: Fleet,
    incidents: Vec<Incident>,
    streams: Vec<Vec<Msg>>,
    bad: Vec<(&'static str, i64, Bad)>,
    lines: Vec<(i64, Line)>,
    truth: Vec<Truth>,
}

fn check(options: &SimOptions) -> Result<(), SimError> {
    let fail = |s: &str| Err(SimError::Options(s.to_owned()));
    if options.vehicles == 0 {
        return fail("vehicles must be at least 1");
    }
    if options.days == 0 || options.days > 366 {
        return fail("days must be between 1 and 366");
    }
    if !(0.0..=20.0).contains(&options.noise) {
        return fail("noise must be between 0 and 20");
    }
    if options.start_ms < 0 {
        return fail("start_ms must not be negative");
    }
    Ok(())
}

fn build_vehicle(
    fleet: &Fleet,
    vi: usize,
    clock: Clock,
    days: u32,
    incidents: &mut [Incident],
    options: &SimOptions,
) -> Vec<(u32, Vec<Msg>)> {
    let v = &fleet.vehicles[vi];
    let mut rng = SmallRng::seed_from_u64(sub_seed(options.seed, "vehicle", vi as u64));
    let mut kinds = vec![DayKind::Normal; days as usize + 1];
    for (i, inc) in incidents.iter().enumerate() {
        let d = inc.day as usize;
        kinds[d] = if inc.scenario.is_script() {
            DayKind::Script(i)
        } else {
            DayKind::Busy
        };
        for k in kinds
            .iter_mut()
            .skip(d + 1)
            .take(inc.scenario.span_days() as usize - 1)
        {
            *k = DayKind::Busy;
        }
    }
    for d in 1..kinds.len() - 1 {
        let calm = |k: DayKind| k == DayKind::Normal;
        if calm(kinds[d - 1]) && calm(kinds[d]) && calm(kinds[d + 1]) && rng.random_bool(0.07) {
            kinds[d] = DayKind::Idle;
        }
    }
    let track = timeline::build_track(fleet, vi, clock, &kinds, incidents, options.seed);
    let trips = track.trips;
    let mut primary = track.msgs;
    let mut wireless = v
        .wireless()
        .map(|_| timeline::wireless_msgs(&primary, clock, &mut rng));
    let mut extra = Vec::new();
    for inc in incidents.iter_mut() {
        let overlay = !inc.scenario.is_script() || inc.scenario == Scenario::JammingNoFix;
        if !overlay || (inc.scenario.is_script() && inc.window.is_none()) {
            continue;
        }
        let streams = incident::Streams {
            primary: &mut primary,
            wireless: wireless.as_mut(),
            extra: &mut extra,
            trips: &trips,
        };
        let window = incident::apply(inc.scenario, v, clock, inc.day, streams, &mut rng);
        inc.window = match (inc.window, window) {
            (Some(script), Some(w)) => Some((script.0.min(w.0), script.1.max(w.1))),
            (_, w) => w,
        };
    }
    primary.extend(extra);
    primary.sort_by_key(|m| m.ts);
    let quiet = noise::Quiet(incidents.iter().filter_map(|i| i.window).collect());
    noise::content(&mut primary, &trips, &quiet, clock, options.noise, &mut rng);
    primary.sort_by_key(|m| m.ts);
    let mut out = vec![(v.primary(), primary)];
    if let (Some(d), Some(w)) = (v.wireless(), wireless) {
        out.push((d, w));
    }
    for (d, msgs) in &mut out {
        let first_seq = rng.random_range(1..60_000u64);
        for (k, m) in msgs.iter_mut().enumerate() {
            m.seq = first_seq + k as u64;
        }
        let trips: &[timeline::Trip] = if *d == v.primary() { &trips } else { &[] };
        noise::delivery(msgs, trips, &quiet, options.noise, &mut rng);
    }
    out
}

fn generate(options: &SimOptions) -> Result<Generated, SimError> {
    check(options)?;
    let fleet = Fleet::generate(options.seed, options.vehicles, options.risk_fences);
    let clock = Clock {
        start: options.start_ms,
        end: options.start_ms + i64::from(options.days) * DAY,
    };
    let vehicle_days = options.vehicles * options.days as usize;
    let per_kind = options
        .incidents_per_kind
        .unwrap_or((vehicle_days / 150).max(1));
    let first_day = |v: &fleet::Vehicle| {
        (1..=options.days + 1)
            .find(|d| clock.local(v, *d, 0) >= clock.start + 20 * HOUR)
            .unwrap_or(options.days + 1)
    };
    let last_day = |v: &fleet::Vehicle| {
        (0..=options.days)
            .rev()
            .find(|d| clock.local(v, d + 1, 0) <= clock.end - 20 * HOUR)
            .unwrap_or(0)
    };
    let mut rng = SmallRng::seed_from_u64(sub_seed(options.seed, "plan", 0));
    let mut incidents = plan::schedule(&fleet, per_kind, first_day, last_day, &mut rng);
    let mut streams: Vec<Vec<Msg>> = vec![Vec::new(); fleet.devices.len()];
    let mut rest: &mut [Incident] = &mut incidents;
    for vi in 0..fleet.vehicles.len() {
        let n = rest.iter().take_while(|i| i.vehicle as usize == vi).count();
        let (mine, tail) = rest.split_at_mut(n);
        rest = tail;
        for (d, msgs) in build_vehicle(&fleet, vi, clock, options.days, mine, options) {
            streams[d as usize] = msgs;
        }
    }
    let max_ts = streams
        .iter()
        .filter_map(|s| s.iter().map(|m| m.ts).max())
        .max()
        .unwrap_or(clock.end);
    let truth = truth::evaluate(&fleet, &streams, false, max_ts - 120_000);
    let per_reason = options
        .malformed_per_reason
        .unwrap_or(3 + vehicle_days / 100);
    let bad = malformed(&fleet, &streams, clock, per_reason, options.seed);
    let lines = arrange(&streams, &bad, options.seed);
    Ok(Generated {
        fleet,
        incidents,
        streams,
        bad,
        lines,
        truth,
    })
}

/// Picks a random plain message (device, message) with `ts` in `[from, to)`.
fn template(
    streams: &[Vec<Msg>],
    fleet: &Fleet,
    from: i64,
    to: i64,
    rng: &mut SmallRng,
) -> Option<(u32, Msg)> {
    (0..100_000).find_map(|_| {
        let d = rng.random_range(0..streams.len());
        let s = &streams[d];
        if s.is_empty() || fleet.devices[d].class == DevClass::Wireless {
            return None;
        }
        let m = &s[rng.random_range(0..s.len())];
        (m.plain() && m.ts >= from && m.ts < to).then(|| (d as u32, m.clone()))
    })
}

/// Malformed lines: `per_reason` of each reason, placed near a random real message (the
/// `future_ts` ones in the second half of the run, away from the first ingest epochs).
fn malformed(
    fleet: &Fleet,
    streams: &[Vec<Msg>],
    clock: Clock,
    per_reason: usize,
    seed: u64,
) -> Vec<(&'static str, i64, Bad)> {
    let mut rng = SmallRng::seed_from_u64(sub_seed(seed, "malformed", 0));
    let mut out = Vec::new();
    let mid = clock.start + (clock.end - clock.start) / 2;
    for reason in REASONS {
        for k in 0..per_reason {
            let (from, to) = if reason == "future_ts" {
                (mid, clock.end)
            } else {
                (clock.start, clock.end)
            };
            let Some((dev, mut m)) = template(streams, fleet, from, to, &mut rng) else {
                continue;
            };
            let arrival = m.arrival + rng.random_range(1..3_000);
            m.flags &= !F_DUPLICATED;
            let msg = Box::new(m.clone());
            let bad = match reason {
                "invalid_json" if k % 3 == 2 => Bad::Text(TEXT_LINES[k / 3 % TEXT_LINES.len()]),
                "invalid_json" => Bad::Truncated {
                    dev,
                    msg,
                    keep: rng.random_range(0.15..0.9),
                },
                "invalid_utf8" => Bad::Utf8 { dev, ts: m.ts },
                "missing_device_id" => Bad::NoDevice {
                    dev,
                    msg,
                    empty: k % 2 == 1,
                },
                "missing_ts" => Bad::NoTs { dev, msg },
                "lat_out_of_range" => {
                    let mut m = m;
                    m.lat = if k % 2 == 0 { 1.0 } else { -1.0 } * rng.random_range(90.5..99.0);
                    m.gnss = msg::Gnss::Fix;
                    Bad::Range {
                        dev,
                        msg: Box::new(m),
                    }
                }
                "lon_out_of_range" => {
                    let mut m = m;
                    m.lon = if k % 2 == 0 { 1.0 } else { -1.0 } * rng.random_range(180.5..200.0);
                    m.gnss = msg::Gnss::Fix;
                    Bad::Range {
                        dev,
                        msg: Box::new(m),
                    }
                }
                "future_ts" => {
                    let mut m = m;
                    m.ts = clock.end + 3 * DAY + rng.random_range(0..2 * DAY);
                    Bad::Future {
                        dev,
                        msg: Box::new(m),
                    }
                }
                _ => Bad::SoonTs { dev, msg },
            };
            out.push((reason, arrival, bad));
        }
    }
    out
}

/// Places every line by arrival time.
fn arrange(streams: &[Vec<Msg>], bad: &[(&'static str, i64, Bad)], seed: u64) -> Vec<(i64, Line)> {
    let mut rng = SmallRng::seed_from_u64(sub_seed(seed, "arrange", 0));
    let mut lines = Vec::with_capacity(streams.iter().map(Vec::len).sum::<usize>() + bad.len());
    let mut total = 0u64;
    for (d, msgs) in streams.iter().enumerate() {
        let dev = d as u32;
        let mut k = 0;
        while k < msgs.len() {
            let m = &msgs[k];
            if m.is(F_BATCHED) {
                let len = msgs[k..].iter().take_while(|m| m.is(F_BATCHED)).count();
                let after = msgs.get(k + len).map_or(m.arrival, |n| n.arrival);
                let at = after + rng.random_range(5_000..60_000);
                lines.push((
                    at,
                    Line::Batch {
                        dev,
                        idx: k as u32,
                        len: len as u32,
                    },
                ));
                k += len;
                continue;
            }
            lines.push((m.arrival, Line::Msg { dev, idx: k as u32 }));
            if m.is(F_DUPLICATED) {
                lines.push((
                    m.arrival + rng.random_range(1..8_000),
                    Line::Dup { dev, idx: k as u32 },
                ));
            }
            total += 1;
            k += 1;
        }
    }
    for (i, (_, arrival, _)) in bad.iter().enumerate() {
        lines.push((*arrival, Line::Bad(i as u32)));
    }
    if let (Some(lo), Some(hi)) = (
        lines.iter().map(|l| l.0).min(),
        lines.iter().map(|l| l.0).max(),
    ) {
        for i in 0..(3 + total / 20_000) {
            lines.push((rng.random_range(lo..=hi), Line::Blank(i as u32)));
        }
    }
    lines.sort_unstable();
    lines
}

fn io_err(path: &Path) -> impl Fn(io::Error) -> SimError + '_ {
    move |source| SimError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_bad(buf: &mut Vec<u8>, g: &Generated, bad: &Bad) {
    let fleet = &g.fleet;
    let ctx = |dev: &u32| {
        let d = &fleet.devices[*dev as usize];
        (d, &fleet.vehicles[d.vehicle as usize])
    };
    let no_seq = Omit {
        seq: true,
        ..Omit::default()
    };
    match bad {
        Bad::Truncated { dev, msg, keep } => {
            let (d, v) = ctx(dev);
            msg::write_msg(buf, msg, d, v, no_seq);
            let cut = ((buf.len() as f64 * keep) as usize).clamp(2, buf.len() - 2);
            buf.truncate(cut);
        }
        Bad::Text(t) => buf.extend_from_slice(t.as_bytes()),
        Bad::Utf8 { dev, ts } => {
            let (d, _) = ctx(dev);
            buf.extend_from_slice(b"{\"device_id\":\"");
            buf.extend_from_slice(d.id.as_bytes());
            buf.extend_from_slice(b"\",\"ts\":");
            msg::push_i64(buf, *ts);
            buf.extend_from_slice(b",\"note\":\"caf\xc3\x28 \xff\"}");
        }
        Bad::NoDevice { dev, msg, empty } => {
            let (d, v) = ctx(dev);
            if *empty {
                buf.extend_from_slice(b"{\"device_id\":\"\",");
                let start = buf.len();
                msg::write_msg(
                    buf,
                    msg,
                    d,
                    v,
                    Omit {
                        device_id: true,
                        ..no_seq
                    },
                );
                buf.remove(start);
            } else {
                msg::write_msg(
                    buf,
                    msg,
                    d,
                    v,
                    Omit {
                        device_id: true,
                        ..no_seq
                    },
                );
            }
        }
        Bad::NoTs { dev, msg } => {
            let (d, v) = ctx(dev);
            msg::write_msg(buf, msg, d, v, Omit { ts: true, ..no_seq });
        }
        Bad::Range { dev, msg } | Bad::Future { dev, msg } => {
            let (d, v) = ctx(dev);
            msg::write_msg(buf, msg, d, v, no_seq);
        }
        Bad::SoonTs { dev, msg } => {
            let (d, v) = ctx(dev);
            let mut tail = Vec::new();
            msg::write_msg(&mut tail, msg, d, v, Omit { ts: true, ..no_seq });
            let split = tail
                .iter()
                .position(|c| *c == b',')
                .map_or(tail.len(), |p| p + 1);
            buf.extend_from_slice(&tail[..split]);
            buf.extend_from_slice(b"\"ts\":\"soon\",");
            buf.extend_from_slice(&tail[split..]);
        }
    }
}

fn write_messages(g: &Generated, path: &Path) -> Result<u64, SimError> {
    let file = File::create(path).map_err(io_err(path))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut buf = Vec::with_capacity(2048);
    let fleet = &g.fleet;
    for (_, line) in &g.lines {
        buf.clear();
        match *line {
            Line::Msg { dev, idx } | Line::Dup { dev, idx } => {
                let d = &fleet.devices[dev as usize];
                let v = &fleet.vehicles[d.vehicle as usize];
                msg::write_msg(
                    &mut buf,
                    &g.streams[dev as usize][idx as usize],
                    d,
                    v,
                    Omit::default(),
                );
            }
            Line::Batch { dev, idx, len } => {
                let d = &fleet.devices[dev as usize];
                let v = &fleet.vehicles[d.vehicle as usize];
                buf.push(b'[');
                for (k, m) in g.streams[dev as usize][idx as usize..(idx + len) as usize]
                    .iter()
                    .enumerate()
                {
                    if k > 0 {
                        buf.push(b',');
                    }
                    msg::write_msg(&mut buf, m, d, v, Omit::default());
                }
                buf.push(b']');
            }
            Line::Bad(i) => write_bad(&mut buf, g, &g.bad[i as usize].2),
            Line::Blank(_) => {}
        }
        buf.push(b'\n');
        out.write_all(&buf).map_err(io_err(path))?;
    }
    out.flush().map_err(io_err(path))?;
    Ok(g.lines.len() as u64)
}

/// The incident that explains an expected alert, if any.
fn scenario_of(g: &Generated, t: &Truth) -> Option<Scenario> {
    g.incidents
        .iter()
        .find(|i| {
            i.vehicle == t.vehicle
                && i.scenario.expected().contains(&t.kind)
                && i.window
                    .is_some_and(|(a, b)| t.ts >= a - HOUR && t.ts <= b + HOUR)
        })
        .map(|i| i.scenario)
}

fn write_truth(g: &Generated, path: &Path) -> Result<(), SimError> {
    let file = File::create(path).map_err(io_err(path))?;
    let mut out = BufWriter::new(file);
    for t in &g.truth {
        let v = &g.fleet.vehicles[t.vehicle as usize];
        let line = json!({
            "vehicle_id": v.id,
            "device_id": g.fleet.devices[t.device as usize].id,
            "kind": t.kind.as_str(),
            "phase": truth::phase(t.kind),
            "event_time_ms": t.ts,
            "tolerance_ms": t.tolerance,
            "backfill": t.backfill,
            "scenario": scenario_of(g, t).map_or("unplanned", Scenario::label),
        });
        writeln!(out, "{line}").map_err(io_err(path))?;
    }
    out.flush().map_err(io_err(path))
}

fn write_with(
    path: &Path,
    f: impl FnOnce(&mut BufWriter<File>) -> io::Result<()>,
) -> Result<(), SimError> {
    let file = File::create(path).map_err(io_err(path))?;
    let mut out = BufWriter::new(file);
    f(&mut out).and_then(|()| out.flush()).map_err(io_err(path))
}

/// Generates a fleet and writes the four output files.
///
/// # Errors
/// [`SimError::Options`] for nonsensical options, [`SimError::Io`] when a file can not be
/// written.
pub fn simulate(options: &SimOptions, outputs: &SimOutputs) -> Result<SimSummary, SimError> {
    let g = generate(options)?;
    let lines = write_messages(&g, &outputs.messages)?;
    write_truth(&g, &outputs.truth)?;
    write_with(&outputs.vehicles_csv, |o| g.fleet.write_vehicles_csv(o))?;
    write_with(&outputs.fences, |o| g.fleet.write_fences_geojson(o))?;
    let mut bad_lines = BTreeMap::new();
    for (reason, _, _) in &g.bad {
        *bad_lines.entry((*reason).to_owned()).or_insert(0) += 1;
    }
    let mut incidents = BTreeMap::new();
    for t in &g.truth {
        *incidents.entry(t.kind.as_str().to_owned()).or_insert(0) += 1;
    }
    let all = g.streams.iter().flatten();
    Ok(SimSummary {
        lines,
        readings: all.clone().count() as u64,
        bad_lines,
        duplicates: all.filter(|m| m.is(F_DUPLICATED)).count() as u64,
        incidents,
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use schemas::{AlertKind, DecodeLimits, decode_payload};

    use super::*;
    use msg::{F_INCIDENT, F_TS_STRING};

    fn small() -> SimOptions {
        SimOptions {
            seed: 7,
            vehicles: 24,
            days: 6,
            incidents_per_kind: Some(3),
            risk_fences: 60,
            malformed_per_reason: Some(2),
            ..SimOptions::default()
        }
    }

    fn run(options: &SimOptions, dir: &Path) -> (SimSummary, SimOutputs) {
        let outputs = SimOutputs::beside(&dir.join("fleet.jsonl"));
        (simulate(options, &outputs).unwrap(), outputs)
    }

    #[test]
    fn outputs_sit_beside_the_messages() {
        let o = SimOutputs::beside(Path::new("/tmp/x/run.jsonl"));
        assert_eq!(o.truth, Path::new("/tmp/x/run.truth.jsonl"));
        assert_eq!(o.vehicles_csv, Path::new("/tmp/x/run.vehicles.csv"));
        assert_eq!(o.fences, Path::new("/tmp/x/run.fences.geojson"));
        let o = SimOutputs::beside(Path::new("run.json"));
        assert_eq!(o.truth, Path::new("run.json.truth.jsonl"));
    }

    #[test]
    fn rejects_bad_options() {
        let bad = SimOptions {
            vehicles: 0,
            ..SimOptions::default()
        };
        let out = SimOutputs::beside(Path::new("/nonexistent/x.jsonl"));
        assert!(matches!(simulate(&bad, &out), Err(SimError::Options(_))));
        let ok = SimOptions {
            vehicles: 2,
            days: 1,
            ..SimOptions::default()
        };
        assert!(matches!(simulate(&ok, &out), Err(SimError::Io { .. })));
    }

    #[test]
    fn same_seed_same_bytes() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (sa, oa) = run(&small(), a.path());
        let (sb, ob) = run(&small(), b.path());
        assert_eq!(sa, sb);
        for (x, y) in [
            (&oa.messages, &ob.messages),
            (&oa.truth, &ob.truth),
            (&oa.vehicles_csv, &ob.vehicles_csv),
            (&oa.fences, &ob.fences),
        ] {
            assert_eq!(
                std::fs::read(x).unwrap(),
                std::fs::read(y).unwrap(),
                "{x:?}"
            );
        }
        let other = SimOptions { seed: 8, ..small() };
        let c = tempfile::tempdir().unwrap();
        let (_, oc) = run(&other, c.path());
        assert_ne!(
            std::fs::read(&oa.messages).unwrap(),
            std::fs::read(&oc.messages).unwrap()
        );
    }

    #[test]
    fn summary_matches_files_and_lines_decode_as_declared() {
        let dir = tempfile::tempdir().unwrap();
        let options = small();
        let (summary, outputs) = run(&options, dir.path());
        let data = std::fs::read(&outputs.messages).unwrap();
        let lines: Vec<&[u8]> = data.split(|b| *b == b'\n').collect();
        assert_eq!(lines.last(), Some(&&b""[..]));
        assert_eq!(lines.len() as u64 - 1, summary.lines);
        let end = options.start_ms + i64::from(options.days) * DAY;
        let mut ok = 0u64;
        let mut future = 0u64;
        let mut rejects: BTreeMap<String, u64> = BTreeMap::new();
        let mut seen: HashMap<&[u8], u32> = HashMap::new();
        let mut out = Vec::new();
        for line in &lines[..lines.len() - 1] {
            if line.is_empty() {
                continue;
            }
            *seen.entry(line).or_default() += 1;
            out.clear();
            decode_payload(line, None, 0, &DecodeLimits::default(), &mut out);
            for r in out.drain(..) {
                match r {
                    Ok(reading) if reading.ts_ms > end + 2 * DAY => future += 1,
                    Ok(reading) => {
                        assert!(reading.ts_ms >= options.start_ms && reading.ts_ms <= end);
                        ok += 1;
                    }
                    Err(reject) => *rejects.entry(reject.reason).or_default() += 1,
                }
            }
        }
        rejects.insert("future_ts".into(), future);
        assert_eq!(rejects, summary.bad_lines);
        assert!(REASONS.iter().all(|r| summary.bad_lines[*r] == 2));
        assert_eq!(ok, summary.readings + summary.duplicates);
        let dups = seen.values().filter(|n| **n > 1).count() as u64;
        assert_eq!(dups, summary.duplicates);
        assert!(summary.duplicates > 0);
        let truth = std::fs::read_to_string(&outputs.truth).unwrap();
        let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
        for line in truth.lines() {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            *by_kind
                .entry(v["kind"].as_str().unwrap().to_owned())
                .or_default() += 1;
            assert!(v["tolerance_ms"].as_i64().unwrap() >= 120_000);
            assert!(v["event_time_ms"].as_i64().is_some());
        }
        assert_eq!(by_kind, summary.incidents);
    }

    /// Every expected alert is explained by a planned incident, and every realised incident
    /// raises exactly the alerts its scenario implies: background and noise raise nothing.
    fn assert_truth_matches_plan(g: &Generated) {
        let mut problems = Vec::new();
        let mut used = vec![Vec::new(); g.incidents.len()];
        for t in &g.truth {
            let hit = g.incidents.iter().position(|i| {
                i.vehicle == t.vehicle
                    && i.scenario.expected().contains(&t.kind)
                    && i.window
                        .is_some_and(|(a, b)| t.ts >= a - HOUR && t.ts <= b + HOUR)
            });
            match hit {
                Some(i) => used[i].push(t.kind),
                None => problems.push(format!(
                    "unplanned {} on {} at {}",
                    t.kind.as_str(),
                    g.fleet.vehicles[t.vehicle as usize].id,
                    schemas::time::rfc3339_ms(t.ts)
                )),
            }
        }
        for (i, inc) in g.incidents.iter().enumerate() {
            let mut want: Vec<AlertKind> = if inc.window.is_some() {
                inc.scenario.expected().to_vec()
            } else {
                Vec::new()
            };
            want.sort();
            used[i].sort();
            if want != used[i] {
                problems.push(format!(
                    "{:?} on {} day {}: expected {want:?}, got {:?}",
                    inc.scenario, g.fleet.vehicles[inc.vehicle as usize].id, inc.day, used[i]
                ));
            }
        }
        assert!(problems.is_empty(), "{}", problems.join("\n"));
    }

    #[test]
    fn truth_is_exactly_the_plan_and_late_data_changes_nothing() {
        for (seed, vehicles, days) in [(3, 60, 8), (4, 60, 8), (5, 90, 6), (6, 40, 22)] {
            let options = SimOptions {
                seed,
                vehicles,
                days,
                incidents_per_kind: Some(8),
                ..SimOptions::default()
            };
            let g = generate(&options).unwrap();
            assert_truth_matches_plan(&g);
            let realised = g.incidents.iter().filter(|i| i.window.is_some()).count();
            assert!(realised * 20 >= g.incidents.len() * 19, "{realised}");
            let max_ts = options.start_ms + i64::from(options.days) * DAY;
            let with_late = truth::evaluate(&g.fleet, &g.streams, true, max_ts - 120_000);
            let without = truth::evaluate(&g.fleet, &g.streams, false, max_ts - 120_000);
            assert_eq!(with_late, without);
            let marked = g
                .streams
                .iter()
                .flatten()
                .filter(|m| m.is(F_INCIDENT))
                .count();
            assert!(marked > 0);
            let strings = g
                .streams
                .iter()
                .flatten()
                .filter(|m| m.is(F_TS_STRING))
                .count();
            assert!(strings > 0);
        }
    }

    #[test]
    fn default_run_has_every_kind() {
        let g = generate(&SimOptions::default()).unwrap();
        assert_truth_matches_plan(&g);
        for kind in AlertKind::ALL {
            let n = g.truth.iter().filter(|t| t.kind == kind).count();
            assert!(n >= 10, "{} only {n}", kind.as_str());
        }
    }
}
