//! Per-message stage costs: decoding (single object and batch) and risk-fence lookup with
//! 100 / 10 000 / 100 000 fences.
//!
//! Run: `cargo bench -p benches --bench stages`.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

use operators::fences::FenceIndex;
use schemas::{DecodeLimits, decode_payload};

const MESSAGE: &str = r#"{"device_id":"860123456789012","ts":1764403200000,"seq":88120,"gnss":{"lat":31.2304,"lon":121.4737,"fix":true,"speed_kmh":42.5,"heading":90,"hdop":0.9,"sats":11},"ignition":true,"speed_kmh":41,"odometer_km":45210.4,"obd":{"rpm":1800,"vin":"LSVAU2180N2183294","mil":false,"dtc_count":0},"power":{"ext_v":12.6,"battery_pct":97},"alarms":[]}"#;

fn decode(c: &mut Criterion) {
    let limits = DecodeLimits::default();
    let mut group = c.benchmark_group("decode");
    group.throughput(Throughput::Elements(1));
    group.bench_function("object", |b| {
        let mut out = Vec::with_capacity(1);
        b.iter(|| {
            out.clear();
            decode_payload(black_box(MESSAGE.as_bytes()), None, 0, &limits, &mut out);
        })
    });
    let batch = format!("[{}]", [MESSAGE; 10].join(","));
    group.throughput(Throughput::Elements(10));
    group.bench_function("batch_of_10", |b| {
        let mut out = Vec::with_capacity(10);
        b.iter(|| {
            out.clear();
            decode_payload(black_box(batch.as_bytes()), None, 0, &limits, &mut out);
        })
    });
    group.finish();
}

/// `n` risk circles and squares on a grid around Shanghai, ~1 km apart.
fn fences(n: usize) -> FenceIndex {
    let side = (n as f64).sqrt().ceil() as usize;
    let features: Vec<String> = (0..n)
        .map(|i| {
            let lat = 30.0 + (i / side) as f64 * 0.01;
            let lon = 120.0 + (i % side) as f64 * 0.01;
            if i % 2 == 0 {
                format!(
                    r#"{{"type":"Feature","properties":{{"id":"f{i}","role":"risk","radius_m":300}},"geometry":{{"type":"Point","coordinates":[{lon},{lat}]}}}}"#
                )
            } else {
                let d = 0.003;
                format!(
                    r#"{{"type":"Feature","properties":{{"id":"f{i}","role":"risk"}},"geometry":{{"type":"Polygon","coordinates":[[[{a},{b}],[{c},{b}],[{c},{e}],[{a},{e}],[{a},{b}]]]}}}}"#,
                    a = lon - d,
                    b = lat - d,
                    c = lon + d,
                    e = lat + d
                )
            }
        })
        .collect();
    let text = format!(
        r#"{{"type":"FeatureCollection","features":[{}]}}"#,
        features.join(",")
    );
    FenceIndex::from_geojson_str(&text, "bench").expect("valid generated fences")
}

fn fence_lookup(c: &mut Criterion) {
    let mut group = c.benchmark_group("risk_fences_at");
    group.throughput(Throughput::Elements(1));
    for n in [100, 10_000, 100_000] {
        let index = fences(n);
        let mut out = Vec::new();
        let mut i = 0u64;
        group.bench_function(format!("{n}_fences"), |b| {
            b.iter_batched(
                || {
                    i = i
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let lat = 30.0 + (i >> 40) as f64 / (1u64 << 24) as f64 * 3.0;
                    let lon = 120.0 + ((i >> 16) & 0xff_ffff) as f64 / (1u64 << 24) as f64 * 3.0;
                    (lat, lon)
                },
                |(lat, lon)| index.risk_fences_at(lat, lon, &mut out),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group!(stages, decode, fence_lookup);
criterion_main!(stages);
