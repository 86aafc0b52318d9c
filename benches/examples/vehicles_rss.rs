//! Memory of per-vehicle state (issue 4): N vehicles in one `Fleet`, each fed a compact but
//! complete history, then the process's resident memory per vehicle.
//!
//! ```sh
//! cargo run --release -p benches --example vehicles_rss -- 100000            # 32 days
//! cargo run --release -p benches --example vehicles_rss -- 1000000 --days 20
//! ```
//!
//! What it does:
//! 1. builds a registry of N vehicles, one tracker each (`configs/vehicles.csv` columns, loan
//!    id, 17-character VIN, `Asia/Shanghai`), and notes the RSS;
//! 2. feeds one `Fleet` `--days` (default 32) local days of [`VehicleFeed::compact_phase`]
//!    readings, four a day per vehicle: 03:00 parked (the night location is taken) and a
//!    1.2-km drive at 09:00 (an active day; on day 0 with a fix every 30 s, so the reorder
//!    buffer grows as it does while driving). 31 days fill every ring: 30 closed days, 30
//!    night locations, 28 active days; each ring takes its full room at its first entry, so
//!    the RSS no longer grows after the first days (printed as it goes: `--days 20` gives the
//!    same bytes per vehicle in a third of the time). The vehicles
//!    report in chunks of N/100 whose times are 60 s apart, one ingest epoch per chunk, so
//!    the clock moves as in a replay and no reading is late. Records are made on a second
//!    thread. The trackers are registered as `wireless` so that four readings a day raise no
//!    `offline`; the class changes no state. Daily features rows are switched off
//!    (`[rules.features] enabled = false`) so that N rows at each midnight do not pile up
//!    here; the days and rings they come from are kept all the same;
//! 3. prints VmRSS and VmHWM (`/proc/self/status`) and the RSS per vehicle over the process
//!    with the registry (the fleet's state) and over the empty process;
//! 4. for calibration, feeds one `VehicleState` alone the same compact days, and another one
//!    the realistic days of the `history` bench (heartbeats every 5–10 min, commutes with
//!    fixes every 30 s), prints their serde_json size (through `JsonlWriter`, the only JSON
//!    serializer the benches crate has) with the size of each part, and the heap per vehicle
//!    computed from the type sizes, the lengths in the JSON and the allocation rules of the
//!    state (devices, rings, the days kept for revision and the `odometer_mismatch`
//!    checkpoints sized exactly, a drained reorder buffer freed, kinds at rest not boxed,
//!    other `Vec`s growing 0, 4, 8, 16, …), rounded up to mimalloc's size classes.

#![allow(clippy::print_stdout)]

use std::mem::size_of;
use std::sync::Arc;
use std::sync::mpsc::sync_channel;
use std::time::Instant;

use benches::feed::{
    COMPACT_PHASE_MIN, DAY_MS, DAY0_MS, Fed, MIN_MS, VehicleFeed, compact_readings,
};
use connectors::JsonlWriter;
use operators::baseline::Baseline;
use operators::config::RulesConfig;
use operators::days::{ActiveDays, DayAcc, DayRing, DaySummary, NightLocations};
use operators::dedup::Dedup;
use operators::fences::FenceIndex;
use operators::fleet::{EpochSample, Fleet, FleetOutputs, TopTimes};
use operators::kinds::{
    device_tamper::DeviceTamper, dtc_cleared::DtcCleared, gnss_jamming::GnssJamming,
    low_battery::LowBattery, odometer_mismatch::OdometerMismatch,
    odometer_rollback::OdometerRollback, offline::Offline, power_cut::PowerCut,
    risk_zone_dwell::RiskZoneDwell, risk_zone_enter::RiskZoneEnter,
    stationary_long::StationaryLong, tow_suspected::TowSuspected, vin_mismatch::VinMismatch,
};
use operators::position::{Fix, PositionChain};
use operators::registry::Registry;
use operators::vehicle::{Env, Outputs, Profile, TypeSizes, VehicleState};
use schemas::{DailyFeatures, DeviceClass, Record};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Chunks per phase, and the time between two chunks (more than a drive minus the reorder
/// window, so the next chunk is never behind the clock).
const CHUNKS: u64 = 100;
const CHUNK_STEP_MS: i64 = 60_000;

fn usage() -> ! {
    eprintln!("usage: vehicles_rss VEHICLES [--days DAYS]");
    std::process::exit(2)
}

/// `VmRSS` and `VmHWM` of this process, KiB.
fn memory_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// One ingest epoch: the chunk's records and the source's sample.
type Epoch = (Vec<Record>, EpochSample, i64, bool);

fn main() {
    let mut args = std::env::args().skip(1);
    let mut vehicles: Option<u64> = None;
    let mut days: i64 = 32;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--days" => {
                days = args
                    .next()
                    .and_then(|d| d.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            _ => vehicles = Some(a.parse().unwrap_or_else(|_| usage())),
        }
    }
    let Some(n) = vehicles.filter(|n| *n > 0) else {
        usage()
    };
    let (rss_empty, _) = memory_kib();
    println!(
        "vehicles {n}, days {days}; empty process: VmRSS {:.1} MiB",
        mib(rss_empty)
    );

    let mut csv = String::from(VehicleFeed::REGISTRY_HEADER);
    for i in 0..n {
        csv.push_str(&VehicleFeed::new(i, DeviceClass::Wireless).registry_row());
    }
    let registry = Registry::from_csv_str(&csv, "generated").expect("valid generated registry");
    drop(csv);
    let (rss_registry, _) = memory_kib();
    println!(
        "registry of {} vehicles: VmRSS {:.1} MiB",
        registry.vehicle_count(),
        mib(rss_registry)
    );

    let mut rules = RulesConfig::default();
    rules.features.enabled = false;
    let mut fleet = Fleet::new(rules, Arc::new(registry), Arc::new(FenceIndex::empty()));

    let chunk = n.div_ceil(CHUNKS);
    let (tx, rx) = sync_channel::<Epoch>(1);
    let producer = std::thread::spawn(move || {
        let mut ingest_seq = 0;
        for day in 0..days {
            for phase in 0..2 {
                for (c, first) in (0..n).step_by(chunk as usize).enumerate() {
                    let offset = c as i64 * CHUNK_STEP_MS;
                    let last = first + chunk >= n;
                    let mut records = Vec::with_capacity((chunk * 7) as usize);
                    let mut top = TopTimes::default();
                    for i in first..(first + chunk).min(n) {
                        let mut feed = VehicleFeed::new(i, DeviceClass::Wireless);
                        let from = records.len();
                        feed.compact_phase(day, phase, offset, &mut ingest_seq, &mut records);
                        for r in &records[from..] {
                            top.offer(i, r.reading.ts_ms);
                        }
                    }
                    let wall = DAY0_MS
                        + day * DAY_MS
                        + offset
                        + COMPACT_PHASE_MIN[phase as usize] * MIN_MS;
                    let end_of_day = phase == 1 && last;
                    if tx.send((records, top.take(), wall, end_of_day)).is_err() {
                        return;
                    }
                }
            }
        }
    });

    let started = Instant::now();
    let mut out = FleetOutputs::default();
    let (mut alerts, mut day, mut busy) = (0usize, 0, 0.0);
    for (records, sample, wall, end_of_day) in rx {
        let t = Instant::now();
        fleet.run_epoch(records, &[sample], wall, &mut out);
        alerts += out.vehicle.alerts.len();
        out = FleetOutputs::default();
        busy += t.elapsed().as_secs_f64();
        if end_of_day {
            day += 1;
            if day % 2 == 0 || day == days {
                let (rss, hwm) = memory_kib();
                println!(
                    "  day {day:3}: {:6.1} s, VmRSS {:8.1} MiB, VmHWM {:8.1} MiB",
                    started.elapsed().as_secs_f64(),
                    mib(rss),
                    mib(hwm)
                );
            }
        }
    }
    producer.join().expect("producer thread");
    fleet.finish(DAY0_MS + days * DAY_MS, &mut out);
    drop(out);
    let elapsed = started.elapsed().as_secs_f64();
    let stats = fleet.stats;
    let readings = n * compact_readings(days);
    println!(
        "fed {readings} readings in {elapsed:.1} s, {:.0} ns/reading in the fleet ({busy:.1} s): {stats:?}, {alerts} alerts",
        busy * 1e9 / readings as f64
    );
    assert_eq!(stats.accepted, readings, "every reading accepted");
    assert_eq!(stats.late + stats.duplicates + stats.future, 0);

    let (rss, hwm) = memory_kib();
    let per = |base: u64| (rss.saturating_sub(base) * 1024) as f64 / n as f64;
    println!("RESULT vehicles {n}");
    println!("  VmRSS {:.1} MiB, VmHWM {:.1} MiB", mib(rss), mib(hwm));
    println!(
        "  per vehicle: {:.0} B over the process with the registry (fleet state), {:.0} B over the empty process (with the registry)",
        per(rss_registry),
        per(rss_empty)
    );
    drop(fleet);

    calibration(days);
}

/// Requested bytes rounded up to mimalloc's size class (8-byte steps to 64 B, then four
/// classes per power of two).
fn mi_size(bytes: usize) -> usize {
    if bytes == 0 {
        return 0;
    }
    let words = bytes.div_ceil(8);
    if words <= 8 {
        return words * 8;
    }
    let b = usize::BITS - 1 - (words - 1).leading_zeros();
    let step = 1usize << (b - 2);
    words.div_ceil(step) * step * 8
}

/// Capacity a `Vec`/`VecDeque` of `size`-byte elements has after growing one push at a time
/// to `len` elements: 0, then 4 (1 above 1 KiB elements), doubling.
fn grown_capacity(len: usize, size: usize) -> usize {
    if len == 0 {
        return 0;
    }
    let mut cap = if size > 1024 { 1 } else { 4 };
    while cap < len {
        cap *= 2;
    }
    cap
}

/// Feeds a vehicle the compact days, one epoch per phase, as the fleet does.
fn compact_state(days: i64, env: &Env<'_>) -> VehicleState {
    let mut feed = VehicleFeed::new(7, DeviceClass::Wireless);
    let mut state = VehicleState::new(Arc::clone(&feed.vehicle_id), feed.profile());
    let (mut ingest_seq, mut max_ts, mut clock) = (0, i64::MIN, None);
    for day in 0..days {
        for phase in 0..2 {
            let mut records = Vec::new();
            feed.compact_phase(day, phase, 0, &mut ingest_seq, &mut records);
            let mut out = Outputs::default();
            for r in records {
                max_ts = max_ts.max(r.reading.ts_ms);
                state.arrive(r, clock, env, &mut out);
            }
            let c = max_ts - env.rules.reorder_window_ms();
            clock = Some(c);
            state.advance(c, env, &mut out);
        }
    }
    state.flush(env, &mut Outputs::default());
    state
}

/// Feeds a vehicle the realistic days of the `history` bench, one epoch per reading.
fn realistic_state(days: i64, env: &Env<'_>) -> VehicleState {
    let mut feed = VehicleFeed::new(7, DeviceClass::Wired);
    let mut fed = Fed::new(VehicleState::new(
        Arc::clone(&feed.vehicle_id),
        feed.profile(),
    ));
    let mut ingest_seq = 0;
    for day in 0..days {
        let mut records = Vec::new();
        feed.realistic_day(day, &mut ingest_seq, &mut records);
        fed.feed(records, env, &mut Outputs::default());
    }
    fed.state.flush(env, &mut Outputs::default());
    fed.state
}

fn calibration(days: i64) {
    let rules = RulesConfig::default();
    let fences = FenceIndex::empty();
    let env = Env {
        rules: &rules,
        fences: &fences,
        registry: &Registry::empty(),
        detected_at_ms: 0,
    };
    let sizes = Sizes::new();
    sizes.print();
    for (name, state, buffer_peak) in [
        ("compact feed", compact_state(days, &env), 7),
        ("realistic feed", realistic_state(days, &env), 5),
    ] {
        let json = to_json(&state);
        let value = json::parse(&json);
        println!(
            "\nONE VEHICLE, {name}, {days} days: serde_json {} B",
            json.len()
        );
        json::print_parts(&value, "", 0, 2);
        sizes.heap(&value, buffer_peak);
    }
}

/// The serde_json text of `state` (via `JsonlWriter`, which writes one object per line).
fn to_json(state: &VehicleState) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("state.jsonl");
    let writer = JsonlWriter::create(&path).expect("create");
    writer.write(std::slice::from_ref(state)).expect("write");
    writer.flush().expect("flush");
    let mut text = std::fs::read(&path).expect("read back");
    text.pop();
    text
}

/// Sizes of the state's types. `DeviceState`, `DeviceKinds` and `VehicleKinds` are private to
/// `operators::vehicle`, which reports their `size_of` ([`TypeSizes`]); the sum of the
/// vehicle's fields is checked against `size_of::<VehicleState>()`.
struct Sizes(TypeSizes);

fn round8(n: usize) -> usize {
    n.div_ceil(8) * 8
}

impl Sizes {
    fn new() -> Self {
        Self(TypeSizes::new())
    }

    fn print(&self) {
        let t = &self.0;
        // vehicle_id, profile, devices, chain, kinds, baseline, claimed_registration,
        // buffered.
        let vehicle_state = round8(
            size_of::<Box<str>>()
                + size_of::<Profile>()
                + size_of::<Vec<u8>>()
                + size_of::<PositionChain>()
                + t.vehicle_kinds
                + size_of::<Baseline>()
                + size_of::<bool>()
                + size_of::<usize>(),
        );
        println!("\nTYPE SIZES (size_of, bytes)");
        let rows: [(&str, usize); 28] = [
            ("VehicleState", size_of::<VehicleState>()),
            ("  (sum of its fields)", vehicle_state),
            ("  Profile", size_of::<Profile>()),
            ("  PositionChain", size_of::<PositionChain>()),
            ("    Fix", size_of::<Fix>()),
            ("  VehicleKinds", t.vehicle_kinds),
            ("    TowSuspected", size_of::<TowSuspected>()),
            ("    StationaryLong", size_of::<StationaryLong>()),
            (
                "    GeofenceExit (boxed while it has state)",
                t.geofence_exit,
            ),
            (
                "    RiskZoneEnter + RiskZoneDwell (boxed while they have state)",
                t.risk_zones,
            ),
            ("      RiskZoneEnter", size_of::<RiskZoneEnter>()),
            ("      RiskZoneDwell", size_of::<RiskZoneDwell>()),
            ("  Baseline", size_of::<Baseline>()),
            ("    DayAcc (the open day, inline)", size_of::<DayAcc>()),
            ("    DayRing", size_of::<DayRing>()),
            ("    ActiveDays", size_of::<ActiveDays>()),
            ("    NightLocations", size_of::<NightLocations>()),
            ("DeviceState", t.device_state),
            ("  Dedup", size_of::<Dedup>()),
            ("  DeviceKinds", t.device_kinds),
            ("    PowerCut", size_of::<PowerCut>()),
            ("    OdometerRollback", size_of::<OdometerRollback>()),
            ("    OdometerMismatch", size_of::<OdometerMismatch>()),
            ("    DtcCleared", size_of::<DtcCleared>()),
            (
                "    DeviceTamper + Offline + GnssJamming + LowBattery + VinMismatch (boxed while one has state)",
                t.device_incidents,
            ),
            ("Record (a buffered reading)", size_of::<Record>()),
            ("DailyFeatures (a row)", size_of::<DailyFeatures>()),
            ("(sum of the 5 boxed device kinds)", {
                size_of::<DeviceTamper>()
                    + size_of::<Offline>()
                    + size_of::<GnssJamming>()
                    + size_of::<LowBattery>()
                    + size_of::<VinMismatch>()
            }),
        ];
        for (name, size) in rows {
            println!("  {name:<52} {size:5}");
        }
    }

    /// The heap of one vehicle whose serde_json is `v`; `buffer_peak` is the most readings
    /// its reorder buffer held at once (the feed's, the buffer is empty at the end).
    fn heap(&self, v: &json::Value, buffer_peak: usize) {
        let str_len = |path: &[&str]| v.get(path).map_or(0, json::Value::str_len);
        let arr_len = |path: &[&str]| v.get(path).map_or(0, json::Value::arr_len);
        let devices = arr_len(&["devices"]);
        let mut parts: Vec<(String, usize, usize)> = Vec::new();
        let mut part = |name: String, len: usize, elem: usize, cap: usize| {
            let bytes = cap * elem;
            let label = if elem == 1 {
                format!("{name} ({len} B)")
            } else {
                format!("{name} ({len} of {elem} B, room for {cap})")
            };
            parts.push((label, bytes, mi_size(bytes)));
        };
        let s = |n| (n, 1, n);
        let ds = self.0.device_state;
        part("devices: Vec<DeviceState>".into(), devices, ds, devices);
        for d in 0..devices {
            let i = d.to_string();
            let dev = |rest: &[&'static str]| {
                let mut p = vec!["devices", i.as_str()];
                p.extend_from_slice(rest);
                p
            };
            let rec = size_of::<Record>();
            part(
                format!(
                    "devices[{d}].buffer: Vec<Record> (peak {buffer_peak}, freed when drained)"
                ),
                0,
                rec,
                0,
            );
            let (len, elem, cap) = s(str_len(&dev(&["reported_vin"])));
            part(format!("devices[{d}].reported_vin"), len, elem, cap);
            // Room for exactly the checkpoints kept.
            let cps = arr_len(&dev(&["kinds", "odometer_mismatch", "checkpoints"]));
            part(
                format!("devices[{d}].kinds.odometer_mismatch.checkpoints"),
                cps,
                24,
                cps,
            );
            // Boxed state, present only mid-incident (`null` otherwise).
            for (name, rest, size) in [
                (
                    "kinds.incidents",
                    &["kinds", "incidents"][..],
                    self.0.device_incidents,
                ),
                // `Suspect`: two (time, odometer, GNSS metres) marks.
                (
                    "kinds.odometer_mismatch.suspect",
                    &["kinds", "odometer_mismatch", "suspect"],
                    48,
                ),
            ] {
                let boxed = v.get(&dev(rest)).is_some_and(json::Value::is_obj);
                part(
                    format!("devices[{d}].{name} (boxed)"),
                    usize::from(boxed),
                    size,
                    usize::from(boxed),
                );
            }
        }
        for (name, path, size) in [
            (
                "kinds.geofence_exit",
                &["kinds", "geofence_exit"][..],
                self.0.geofence_exit,
            ),
            ("kinds.risk", &["kinds", "risk"], self.0.risk_zones),
        ] {
            let boxed = v.get(path).is_some_and(json::Value::is_obj);
            part(
                format!("{name} (boxed)"),
                usize::from(boxed),
                size,
                usize::from(boxed),
            );
        }
        let acc = size_of::<DayAcc>();
        // `None` = grows one push at a time; `Some(n)` = room for `n` from the first entry;
        // `Some(0)` = room for exactly its entries.
        for (name, path, elem, room) in [
            (
                "baseline.closed: Vec<DayAcc>",
                &["baseline", "closed"][..],
                acc,
                Some(0),
            ),
            (
                "baseline.ahead: Vec<DayAcc>",
                &["baseline", "ahead"],
                acc,
                None,
            ),
            (
                "baseline.ring: VecDeque<DaySummary>",
                &["baseline", "ring", "days"],
                size_of::<DaySummary>(),
                Some(30),
            ),
            (
                "baseline.active: VecDeque<f32>",
                &["baseline", "active", "days"],
                4,
                Some(28),
            ),
            (
                "baseline.nights: VecDeque<(f32, f32)>",
                &["baseline", "nights"],
                8,
                Some(30),
            ),
        ] {
            let len = arr_len(path);
            let cap = match room {
                Some(0) => len,
                Some(n) if len > 0 => n,
                Some(_) => 0,
                None => grown_capacity(len, elem),
            };
            part(name.into(), len, elem, cap);
        }
        let (req, rounded): (usize, usize) =
            parts.iter().fold((0, 0), |(a, b), p| (a + p.1, b + p.2));
        let inline = size_of::<VehicleState>();
        println!(
            "  heap of the vehicle (requested B, mimalloc size class B; the vehicle, loan, device and registered VIN strings are the registry's):"
        );
        for (name, bytes, mi) in &parts {
            if *bytes > 0 {
                println!("    {name:<78} {bytes:5} {mi:5}");
            }
        }
        println!("    {:<78} {req:5} {rounded:5}", "total heap");
        println!(
            "  VehicleState inline {inline} B + heap {rounded} B = {} B per vehicle, before the fleet's index and timers",
            inline + rounded
        );
    }
}

/// Just enough JSON to find the parts of a serialized state and their sizes.
mod json {
    /// A JSON value and the bytes its text took.
    pub struct Value {
        pub bytes: usize,
        pub kind: Kind,
    }

    pub enum Kind {
        Scalar,
        Str(usize),
        Arr(Vec<Value>),
        Obj(Vec<(String, Value)>),
    }

    impl Value {
        /// The value at `path` (object keys, array indices as numbers).
        pub fn get(&self, path: &[&str]) -> Option<&Value> {
            let Some((first, rest)) = path.split_first() else {
                return Some(self);
            };
            let next = match &self.kind {
                Kind::Obj(fields) => fields.iter().find(|(k, _)| k == first).map(|(_, v)| v),
                Kind::Arr(items) => first.parse::<usize>().ok().and_then(|i| items.get(i)),
                _ => None,
            }?;
            next.get(rest)
        }

        pub fn str_len(&self) -> usize {
            match self.kind {
                Kind::Str(n) => n,
                _ => 0,
            }
        }

        pub fn is_obj(&self) -> bool {
            matches!(self.kind, Kind::Obj(_))
        }

        pub fn arr_len(&self) -> usize {
            match &self.kind {
                Kind::Arr(items) => items.len(),
                _ => 0,
            }
        }
    }

    pub fn parse(text: &[u8]) -> Value {
        let mut p = Parser { text, at: 0 };
        p.value()
    }

    /// Prints the fields of objects down to `depth`, with their JSON bytes (and lengths of
    /// arrays).
    pub fn print_parts(v: &Value, name: &str, level: usize, depth: usize) {
        if level > 0 {
            let len = match &v.kind {
                Kind::Arr(items) => format!(" ({} entries)", items.len()),
                _ => String::new(),
            };
            println!(
                "  {:indent$}{name:<w$} {:6} B{len}",
                "",
                v.bytes,
                indent = 2 * (level - 1),
                w = 44 - 2 * (level - 1)
            );
        }
        if level == depth {
            return;
        }
        match &v.kind {
            Kind::Obj(fields) => {
                for (k, f) in fields {
                    print_parts(f, k, level + 1, depth);
                }
            }
            Kind::Arr(items) if name == "devices" => {
                for (i, item) in items.iter().enumerate() {
                    print_parts(item, &format!("[{i}]"), level + 1, depth + 1);
                }
            }
            _ => {}
        }
    }

    struct Parser<'a> {
        text: &'a [u8],
        at: usize,
    }

    impl Parser<'_> {
        fn peek(&self) -> u8 {
            self.text.get(self.at).copied().unwrap_or(b'\0')
        }

        fn value(&mut self) -> Value {
            let start = self.at;
            let kind = match self.peek() {
                b'{' => {
                    self.at += 1;
                    let mut fields = Vec::new();
                    while self.peek() != b'}' {
                        let key = self.string();
                        self.at += 1; // ':'
                        fields.push((key, self.value()));
                        if self.peek() == b',' {
                            self.at += 1;
                        }
                    }
                    self.at += 1;
                    Kind::Obj(fields)
                }
                b'[' => {
                    self.at += 1;
                    let mut items = Vec::new();
                    while self.peek() != b']' {
                        items.push(self.value());
                        if self.peek() == b',' {
                            self.at += 1;
                        }
                    }
                    self.at += 1;
                    Kind::Arr(items)
                }
                b'"' => Kind::Str(self.string().len()),
                _ => {
                    while !matches!(self.peek(), b',' | b'}' | b']' | b'\0') {
                        self.at += 1;
                    }
                    Kind::Scalar
                }
            };
            Value {
                bytes: self.at - start,
                kind,
            }
        }

        /// A string without escapes (the state's strings are ids, VINs and time zones).
        fn string(&mut self) -> String {
            self.at += 1;
            let start = self.at;
            while self.peek() != b'"' {
                self.at += 1;
            }
            let s = String::from_utf8_lossy(&self.text[start..self.at]).into_owned();
            self.at += 1;
            s
        }
    }
}
