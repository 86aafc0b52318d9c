//! Per-reading cost of one vehicle after 30 and after 180 days of history (issue 4): the
//! baselines and daily features are kept incrementally, so the cost of a reading must not
//! depend on how long the vehicle has been reporting.
//!
//! The vehicle is fed [`VehicleFeed::realistic_day`]s (one tracker; parked heartbeats every
//! 5–10 min, a 30-min commute out and back with a fix every 30 s, odometer, OBD, power: about
//! 300 readings a day) through `VehicleState::arrive` + `advance`, the clock following the
//! newest event time minus the reorder window after every reading (one epoch per reading, as
//! in the vehicle's own tests). The history is fed first, untimed; each timed iteration takes a
//! clone of the warmed state and feeds it the next day's readings (00:00 to 24:00 local, so
//! the previous day closes, a features row goes out and the 03:00 night location is taken).
//! Throughput is in readings: criterion's time per iteration divided by the readings of the
//! day is the cost per reading. Every day has the same shape (306 readings), so both
//! histories time the same work. Uses mimalloc, the `lienwatch` binary's global allocator.
//!
//! `baseline/*` times the two largest fixed-size pieces of baseline work on their own: the
//! home of `residence_change` over 30 night locations (once per vehicle and night) and the
//! median of 28 active days of `mileage_anomaly` (once per counted GNSS step).
//!
//! Run: `cargo bench -p benches --bench history`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;
use std::sync::Arc;

use benches::feed::{Fed, VehicleFeed};
use operators::config::RulesConfig;
use operators::days::{ActiveDays, NightLocations};
use operators::fences::FenceIndex;
use operators::registry::Registry;
use operators::vehicle::{Env, Outputs, VehicleState};
use schemas::{DeviceClass, Record};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A vehicle after `days` days of history, and the readings of the day after.
fn warmed(days: i64, env: &Env<'_>) -> (Fed, Vec<Record>) {
    let mut feed = VehicleFeed::new(7, DeviceClass::Wired);
    let mut fed = Fed::new(VehicleState::new(
        Arc::clone(&feed.vehicle_id),
        feed.profile(),
    ));
    let mut ingest_seq = 0;
    let (mut alerts, mut rows) = (0, 0);
    for day in 0..days {
        let mut records = Vec::new();
        feed.realistic_day(day, &mut ingest_seq, &mut records);
        let mut out = Outputs::default();
        fed.feed(records, env, &mut out);
        alerts += out.alerts.len();
        rows += out.features.len();
    }
    assert_eq!(alerts, 0, "the quiet history raised alerts");
    assert_eq!(rows as i64, days - 1, "one features row per closed day");
    let mut next = Vec::new();
    feed.realistic_day(days, &mut ingest_seq, &mut next);
    (fed, next)
}

fn history(c: &mut Criterion) {
    let rules = RulesConfig::default();
    let fences = FenceIndex::empty();
    let env = Env {
        rules: &rules,
        fences: &fences,
        registry: &Registry::empty(),
        detected_at_ms: 0,
    };
    let mut group = c.benchmark_group("history");
    for days in [30, 180] {
        let (fed, next) = warmed(days, &env);
        group.throughput(Throughput::Elements(next.len() as u64));
        group.bench_function(format!("next_day_after_{days}_days"), |b| {
            b.iter_batched(
                || (fed.clone(), next.clone()),
                |(mut fed, next)| {
                    let mut out = Outputs::default();
                    fed.feed(black_box(next), &env, &mut out);
                    // Dropped after the measurement, as the pipeline hands them on.
                    (fed, out)
                },
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

/// The two bounded-but-not-small pieces of baseline work: the home of `residence_change`
/// over the last 30 night locations (once per vehicle and night), and the median of the last
/// 28 active days of `mileage_anomaly` (once per counted step).
fn baseline_parts(c: &mut Criterion) {
    let rules = RulesConfig::default();
    let mut group = c.benchmark_group("baseline");
    let mut nights = NightLocations::default();
    for i in 0..30 {
        // Home most nights, a second place ~3 km away every fourth.
        let away = if i % 4 == 3 { 0.03 } else { 0.0 };
        nights.push(31.2304 + away + i as f64 * 1e-5, 121.4737, 30);
    }
    let cluster_m = rules.residence_change.cluster_m;
    group.bench_function("night_locations_home_30", |b| {
        b.iter(|| black_box(&nights).home(cluster_m))
    });
    let mut active = ActiveDays::default();
    for i in 0..28 {
        active.push(30.0 + (i * 7 % 11) as f32, 1.0, 28);
    }
    group.bench_function("active_days_median_28", |b| {
        b.iter(|| black_box(&active).median_km())
    });
    group.finish();
}

criterion_group!(benches, history, baseline_parts);
criterion_main!(benches);
