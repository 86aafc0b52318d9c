//! What a checkpoint costs the epoch after it, when every vehicle changes in that epoch.
//!
//! A checkpoint's fleet snapshot is encoded a slice at a time after its epoch
//! (`Fleet::begin_snapshot`), and a vehicle about to change before its turn is kept first,
//! as it was at the checkpoint. Live, with event time = wall time and the SPEC's 2-min
//! reorder window, nearly every vehicle gets a reading within seconds of a checkpoint, and
//! the readings of a vehicle with two trackers wait in its reorder buffers for the window:
//! that keeping is then most of the snapshot's work, in the seconds after the barrier
//! (`benches/README.md`, *Checkpoints without a stop*).
//!
//! The fleet: 2 000 vehicles with two trackers each (a wired one and a second one), a day of
//! [`VehicleFeed::realistic_day`] history on both, then 2 minutes at a reading every 4 s from
//! each tracker, in epochs of 4 s of event time: 30 readings per tracker wait in its buffer
//! at the end, as live at about 0.5 readings/s per vehicle. Each timed iteration restores
//! that fleet (untimed) and runs one more epoch with one reading from every tracker:
//! `no_checkpoint` as is, `after_checkpoint` with a snapshot begun just before. The
//! difference is what keeping 2 000 changed vehicles costs. Uses mimalloc, the `lienwatch`
//! binary's global allocator.
//!
//! Run: `cargo bench -p benches --bench checkpoint`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;

use benches::feed::VehicleFeed;
use operators::config::RulesConfig;
use operators::fences::FenceIndex;
use operators::fleet::{Fleet, FleetOutputs, TopTimes};
use operators::registry::Registry;
use schemas::{DeviceClass, Record};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const VEHICLES: u64 = 2_000;
/// Event time between two readings of a tracker in the last two minutes, and between epochs.
const STEP_MS: i64 = 4_000;

/// The second tracker's id: the first one's with another prefix, same length.
fn second_device(device_id: &str) -> String {
    format!("87{}", &device_id[2..])
}

/// `record` as read by the vehicle's second tracker.
fn from_second(record: &Record) -> Record {
    let mut copy = record.clone();
    let reading = &mut *copy.reading;
    reading.device_id = second_device(&reading.device_id);
    reading.content_hash ^= 1;
    copy
}

struct Feeder {
    fleet: Fleet,
    ingest_seq: u64,
}

impl Feeder {
    /// One epoch of `records`: numbered in input order, sampled, run.
    fn epoch(&mut self, mut records: Vec<Record>) -> FleetOutputs {
        let mut top = TopTimes::default();
        for r in &mut records {
            self.ingest_seq += 1;
            r.ingest_seq = self.ingest_seq;
            top.offer(
                xxhash_rust::xxh3::xxh3_64(r.reading.device_id.as_bytes()),
                r.reading.ts_ms,
            );
        }
        let mut out = FleetOutputs::default();
        self.fleet.run_epoch(records, &[top.take()], 0, &mut out);
        out
    }
}

/// The fleet described above, as snapshot bytes, its registry and the records of the timed
/// epoch.
fn fleet_in_the_window() -> (Vec<u8>, Arc<Registry>, Vec<Record>) {
    let feeds: Vec<VehicleFeed> = (0..VEHICLES)
        .map(|i| VehicleFeed::new(i, DeviceClass::Wired))
        .collect();
    let mut csv =
        String::from("vehicle_id,loan_id,device_id,vin,device_class,permitted_fences,timezone\n");
    for f in &feeds {
        csv.push_str(&f.registry_row());
        csv.push_str(
            &f.registry_row()
                .replacen(&f.device_id, &second_device(&f.device_id), 1),
        );
    }
    let registry = Arc::new(Registry::from_csv_str(&csv, "generated").expect("registry"));
    let mut feeder = Feeder {
        fleet: Fleet::new(
            RulesConfig::default(),
            Arc::clone(&registry),
            Arc::new(FenceIndex::empty()),
        ),
        ingest_seq: 0,
    };
    // Day 0 on both trackers, every vehicle's readings merged by time in minute epochs.
    let mut day: Vec<Record> = Vec::new();
    let mut seq = 0;
    for mut f in feeds.iter().cloned() {
        let mut records = Vec::new();
        f.realistic_day(0, &mut seq, &mut records);
        day.extend(records.iter().map(from_second));
        day.extend(records);
    }
    day.sort_by_key(|r| r.reading.ts_ms);
    let last_ts = day.last().map_or(0, |r| r.reading.ts_ms);
    for minute in day.chunk_by(|a, b| a.reading.ts_ms / 60_000 == b.reading.ts_ms / 60_000) {
        feeder.epoch(minute.to_vec());
    }
    // Two minutes and one step more at a reading every step from each tracker: the last
    // window's worth waits in the buffers.
    let template: Vec<Record> = {
        let mut next = Vec::new();
        for mut f in feeds.iter().cloned() {
            let mut records = Vec::new();
            f.realistic_day(1, &mut seq, &mut records);
            next.push(records.swap_remove(0));
        }
        next
    };
    let at = |k: i64| -> Vec<Record> {
        template
            .iter()
            .flat_map(|r| {
                let mut first = r.clone();
                first.reading.ts_ms = last_ts + k * STEP_MS;
                first.reading.seq = None;
                let second = from_second(&first);
                [first, second]
            })
            .collect()
    };
    let window_steps = RulesConfig::default().reorder_window_ms() / STEP_MS;
    for k in 1..=window_steps + 1 {
        feeder.epoch(at(k));
    }
    assert!(feeder.fleet.stats.accepted > 0, "nothing was fed");
    let bytes = feeder.fleet.snapshot().expect("snapshot");
    (bytes, registry, at(window_steps + 2))
}

fn after_checkpoint(c: &mut Criterion) {
    let (bytes, registry, next) = fleet_in_the_window();
    let restore = || Feeder {
        fleet: Fleet::restore(
            RulesConfig::default(),
            Arc::clone(&registry),
            Arc::new(FenceIndex::empty()),
            &[&bytes],
            |_| true,
        )
        .expect("restore"),
        ingest_seq: 1 << 40,
    };
    let mut group = c.benchmark_group("checkpoint");
    group.sample_size(20);
    group.throughput(Throughput::Elements(VEHICLES));
    for begun in [false, true] {
        let name = if begun {
            "after_checkpoint"
        } else {
            "no_checkpoint"
        };
        group.bench_function(format!("epoch_changing_every_vehicle/{name}"), |b| {
            b.iter_batched(
                || {
                    let mut feeder = restore();
                    if begun {
                        feeder.fleet.begin_snapshot(1);
                    }
                    (feeder, next.clone())
                },
                |(mut feeder, next)| {
                    let out = feeder.epoch(black_box(next));
                    // Dropped after the measurement, as the pipeline hands them on.
                    (feeder, out)
                },
                BatchSize::LargeInput,
            )
        });
    }
    group.finish();
}

criterion_group!(checkpoint, after_checkpoint);
criterion_main!(checkpoint);
