//! Parquet archive writer cost per telemetry row: pushes N = 200 000 realistic telemetry
//! records (2 000 vehicles, about 25 fields mostly set, as the simulator sends them) spread
//! over 4 hours, in arrival order, into an [`ArchiveWriter`] on a temporary directory, telling
//! it the event clock every 1 000 rows as the replay does, then finishes it (sorting, Arrow,
//! Parquet + zstd, create-only puts). Throughput is in rows, so criterion's time per element
//! is the ns per row; building the input rows is not timed, dropping them is (the writer
//! drops each pushed row, as in the pipeline).
//!
//! Three measurements of the same work: `telemetry_200k_rows_4h` is wall-clock time (including
//! the wait for the uploader thread at `finish`); `telemetry_200k_rows_4h_worker_cpu` is the
//! CPU time of the pushing thread alone (Linux `/proc/thread-self/schedstat`), i.e. what the
//! archive costs a timely worker: buffering rows in Arrow builders (sorting, Parquet and zstd
//! run on the uploader thread); `telemetry_200k_rows_4h_process_cpu` is the CPU time of the
//! whole process (`/proc/self/stat`, 10-ms ticks), i.e. all of it.
//!
//! The directory is under `/dev/shm` when there is one, so the puts' fsyncs cost no disk
//! latency (which only added noise). Uses mimalloc, the `lienwatch` binary's global allocator.
//!
//! Run: `cargo bench -p benches --bench archive`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use connectors::{ArchiveConfig, ArchiveWriter};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use schemas::{Gnss, Obd, Power, Reading, Record};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Rows per iteration.
const ROWS: usize = 200_000;
/// Vehicles in the fleet.
const VEHICLES: usize = 2_000;
/// 2026-11-28T08:00:00Z.
const BASE_MS: i64 = 1_795_852_800_000;
/// The rows cover this many ms (4 hours).
const SPAN_MS: i64 = 4 * 3_600_000;

/// A small deterministic generator (xorshift), so every run archives the same rows.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `ROWS` records in arrival order: every vehicle reports at a regular interval with a little
/// jitter and 1 % of the rows arrive up to 10 minutes late (backfill).
fn records() -> Vec<Record> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let per_vehicle = ROWS / VEHICLES;
    let step = SPAN_MS / per_vehicle as i64;
    let mut rows = Vec::with_capacity(ROWS);
    for k in 0..per_vehicle {
        for v in 0..VEHICLES {
            let jitter = (rng.unit() * step as f64) as i64;
            let backfill = rng.next().is_multiple_of(100);
            let late = if backfill {
                (rng.unit() * 600_000.0) as i64
            } else {
                0
            };
            let ts_ms = BASE_MS + k as i64 * step + jitter - late;
            let moving = !rng.next().is_multiple_of(3);
            let speed = if moving {
                20.0 + rng.unit() * 80.0
            } else {
                0.0
            } as f32;
            let has_obd = !v.is_multiple_of(4);
            rows.push(Record {
                vehicle_id: format!("VHSH{v:05}").into(),
                loan_id: (!v.is_multiple_of(10))
                    .then(|| format!("LN2026{:06}", 100_000 + v).into()),
                class: Default::default(),
                registered: !v.is_multiple_of(10),
                ingest_seq: rows.len() as u64,
                reading: Box::new(Reading {
                    device_id: format!("86{:013}", 1_234_567 * v as u64 + 11),
                    ts_ms,
                    seq: Some((v * 7_919 % 60_000 + k) as u64),
                    backfill,
                    gnss: Some(Gnss {
                        lat: Some(22.5 + rng.unit() * 8.0),
                        lon: Some(104.0 + rng.unit() * 10.0),
                        fix: true,
                        speed_kmh: Some(speed),
                        heading: Some((rng.next() % 360) as f32),
                        alt_m: Some((rng.unit() * 500.0) as f32),
                        hdop: Some(0.6 + (rng.next() % 10) as f32 / 10.0),
                        sats: Some(5 + (rng.next() % 8) as u16),
                    }),
                    ignition: Some(moving),
                    speed_kmh: has_obd.then_some(speed),
                    odometer_km: Some(100_000.0 + v as f64 * 13.7 + k as f64 * 0.4),
                    obd: has_obd.then(|| Obd {
                        rpm: Some(if moving { 1500.0 + speed * 10.0 } else { 0.0 }),
                        vin: Some(format!("LVSYJKX67SY{:06}", v)),
                        mil: Some(v.is_multiple_of(17)),
                        dtc_count: Some(if v.is_multiple_of(17) { 2 } else { 0 }),
                        dist_since_clear_km: Some(19_000.0 + k as f64 * 0.4),
                        dist_mil_km: Some(0.0),
                        engine_hours: Some(4_000.0 + k as f64 * 0.01),
                    }),
                    power: Some(Power {
                        ext_v: Some(12.0 + (rng.next() % 80) as f32 / 100.0),
                        battery_pct: Some(80.0 + (rng.next() % 20) as f32),
                    }),
                    alarm_set: Default::default(),
                    alarms: if rng.next().is_multiple_of(200) {
                        vec!["power_cut".into()]
                    } else {
                        Vec::new()
                    },
                    content_hash: rng.next(),
                    received_at_ms: ts_ms + late + 40 + (rng.next() % 500) as i64,
                }),
            });
        }
    }
    rows
}

/// A fresh temporary directory, in memory when possible.
fn scratch_dir() -> tempfile::TempDir {
    let shm = std::path::Path::new("/dev/shm");
    if shm.is_dir() {
        tempfile::tempdir_in(shm).unwrap()
    } else {
        tempfile::tempdir().unwrap()
    }
}

/// CPU time the calling thread has run, from `/proc/thread-self/schedstat` (Linux; ns).
fn thread_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    let ns = stat.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// CPU time of the whole process, from `/proc/self/stat` (Linux; utime + stime in ticks of
/// 10 ms).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces) end with ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}

/// Pushes `rows` into a writer on `dir` as the replay does, with zstd at `level`, and
/// finishes it; returns the bytes written.
fn archive_rows(rows: Vec<Record>, dir: &tempfile::TempDir, level: i32) -> u64 {
    let config = ArchiveConfig {
        root: dir.path().to_str().unwrap().into(),
        zstd_level: level,
        ..Default::default()
    };
    let mut writer = ArchiveWriter::open(&config, 0, 0).unwrap();
    let mut clock = i64::MIN;
    for (i, record) in rows.into_iter().enumerate() {
        clock = clock.max(record.reading.ts_ms);
        writer.push_telemetry(record);
        if i % 1_000 == 999 {
            writer.roll_event_time(clock - 60_000).unwrap();
        }
    }
    let stats = writer.finish().unwrap();
    assert_eq!(stats.telemetry_rows, ROWS as u64);
    black_box(stats).bytes
}

/// Runs `iters` archives of fresh copies of `rows` at zstd `level`; sums what `clock` says
/// each took.
fn timed(rows: &[Record], level: i32, iters: u64, clock: impl Fn() -> Duration) -> Duration {
    let mut total = Duration::ZERO;
    for _ in 0..iters {
        let (input, dir) = (rows.to_vec(), scratch_dir());
        let start = clock();
        archive_rows(input, &dir, level);
        total += clock() - start;
    }
    total
}

fn archive(c: &mut Criterion) {
    let rows = records();
    let mut group = c.benchmark_group("archive");
    group.sample_size(30);
    group.measurement_time(Duration::from_secs(10));
    group.throughput(Throughput::Elements(ROWS as u64));
    let epoch = Instant::now();
    group.bench_function("telemetry_200k_rows_4h", |b| {
        b.iter_custom(|iters| timed(&rows, 3, iters, || epoch.elapsed()))
    });
    // The worker's CPU at each zstd level (the uploader thread's sorting, encoding and put
    // are not counted), the process's, and the bytes each level writes.
    if thread_cpu().is_some() && process_cpu().is_some() {
        for level in [1, 3] {
            let bytes = archive_rows(rows.to_vec(), &scratch_dir(), level);
            eprintln!("zstd level {level}: {bytes} bytes for {ROWS} rows");
            let name = format!("telemetry_200k_rows_4h_worker_cpu/zstd{level}");
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    timed(&rows, level, iters, || thread_cpu().unwrap_or_default())
                })
            });
            let name = format!("telemetry_200k_rows_4h_process_cpu/zstd{level}");
            group.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    timed(&rows, level, iters, || process_cpu().unwrap_or_default())
                })
            });
        }
    }
    group.finish();
}

criterion_group!(benches, archive);
criterion_main!(benches);
