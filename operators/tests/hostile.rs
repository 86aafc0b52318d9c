//! Hostile input through the whole per-vehicle chain (issue 5, deliverable 5): payloads that
//! are huge, deeply nested, truncated, mutated, with extreme numbers, timestamps in 1970 and
//! 2500, and batches of up to 10 000 elements are decoded and run through a fleet with every
//! rule and the daily features on. Nothing may panic, and every message is accounted for:
//! each decoded element is a reading or a reject, and each reading is accepted, a duplicate,
//! or rejected by the fleet.
//!
//! In the test suite it runs 48 cases; a long run is
//! `PROPTEST_CASES=55000 cargo test --release -p operators --test hostile -- --nocapture`
//! (1.1 M payloads, 17 M readings, 7 minutes on 2 cores; it prints the totals).

use std::sync::Arc;

use operators::config::RulesConfig;
use operators::dataflow::id_key;
use operators::fences::FenceIndex;
use operators::fleet::{EpochSample, Fleet, FleetOutputs, TopTimes};
use operators::registry::Registry;
use proptest::prelude::*;
use schemas::{DecodeLimits, decode_payload};

/// 2026-11-01T00:00Z.
const T0: i64 = 1_793_491_200_000;

/// A plausible reading of one of a few devices, with every field set from `v`.
fn reading(device: u8, ts: &str, seq: &str, lat: &str, lon: &str, v: &str) -> String {
    format!(
        r#"{{"device_id":"D{device}","ts":{ts},"seq":{seq},"backfill":{bf},
        "gnss":{{"lat":{lat},"lon":{lon},"fix":true,"speed_kmh":{v},"heading":{v},"hdop":{v},"sats":3}},
        "ignition":{ign},"speed_kmh":{v},"odometer_km":{v},
        "obd":{{"rpm":{v},"vin":"VIN{device}","mil":true,"dtc_count":2,"dist_since_clear_km":{v}}},
        "power":{{"ext_v":{v},"battery_pct":{v}}},"alarms":["power_cut","tow","x"]}}"#,
        bf = device.is_multiple_of(3),
        ign = device.is_multiple_of(2),
    )
}

/// Numbers a hostile or broken tracker might send, as JSON text.
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        (-200.0f64..200.0).prop_map(|f| f.to_string()),
        Just("0".to_owned()),
        Just("-0.0".to_owned()),
        Just("1e308".to_owned()),
        Just("-1e308".to_owned()),
        Just("5e-324".to_owned()),
        Just("18446744073709551615".to_owned()),
        Just("-9223372036854775808".to_owned()),
        Just("1e400".to_owned()),
        Just("\"NaN\"".to_owned()),
        Just("null".to_owned()),
        Just("[1,2]".to_owned()),
    ]
}

/// Event times: near the fleet's, 1970, 2500, past 9999, negative, strings.
fn timestamp() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => (0i64..3 * 86_400_000).prop_map(|d| (T0 + d).to_string()),
        1 => Just("0".to_owned()),
        1 => Just("16725225600000".to_owned()),
        1 => Just("253402300800000".to_owned()),
        1 => Just("-1".to_owned()),
        1 => Just("9223372036854775807".to_owned()),
        1 => Just("\"2026-11-01T08:00:00+08:00\"".to_owned()),
        1 => Just("\"2500-01-01T00:00:00Z\"".to_owned()),
        1 => Just("\"yesterday\"".to_owned()),
        1 => Just("1.5e12".to_owned()),
    ]
}

fn seq() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => (0u64..50).prop_map(|s| s.to_string()),
        1 => Just("18446744073709551615".to_owned()),
        1 => Just("-3".to_owned()),
        1 => Just("null".to_owned()),
    ]
}

fn valid() -> impl Strategy<Value = String> {
    (0u8..6, timestamp(), seq(), number(), number(), number())
        .prop_map(|(d, ts, seq, lat, lon, v)| reading(d, &ts, &seq, &lat, &lon, &v))
}

/// One MQTT payload or replay line.
fn payload() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Plausible readings with extreme values.
        8 => valid().prop_map(String::into_bytes),
        // Batches, now and then of 10 000 elements.
        2 => prop::collection::vec(valid(), 1..20).prop_map(|v| format!("[{}]", v.join(",")).into_bytes()),
        1 => (valid(), prop_oneof![Just(10_000usize), 0usize..300])
            .prop_map(|(v, n)| format!("[{}]", vec![v; n].join(",")).into_bytes()),
        // Truncated and mutated readings.
        3 => (valid(), any::<prop::sample::Index>())
            .prop_map(|(v, i)| v.as_bytes()[..i.index(v.len())].to_vec()),
        3 => (valid(), prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8))
            .prop_map(|(v, flips)| {
                let mut b = v.into_bytes();
                for (i, byte) in flips {
                    let at = i.index(b.len());
                    b[at] = byte;
                }
                b
            }),
        // Deeply nested, huge, or not JSON at all.
        1 => (1usize..5_000).prop_map(|depth| format!("{}1{}", "[".repeat(depth), "]".repeat(depth)).into_bytes()),
        1 => (1usize..5_000).prop_map(|depth| {
            format!(r#"{{"device_id":"D1","ts":{T0},"gnss":{}{}}}"#, r#"{"a":"#.repeat(depth), "}".repeat(depth)).into_bytes()
        }),
        1 => (1usize..200_000).prop_map(|n| format!(r#"{{"device_id":"{}","ts":{T0}}}"#, "x".repeat(n)).into_bytes()),
        1 => prop::collection::vec(any::<u8>(), 0..512),
        1 => Just(b"[]".to_vec()),
        1 => Just(Vec::new()),
    ]
}

/// What a run decoded.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    payloads: u64,
    readings: u64,
    rejects: u64,
}

/// Decodes the payloads, runs them through one fleet in epochs of `epoch` payloads, and
/// checks the accounting.
fn run(payloads: &[Vec<u8>], epoch: usize) -> Result<Totals, TestCaseError> {
    let unregistered = Arc::new(Registry::empty());
    let mut fleet = Fleet::new(
        RulesConfig::default(),
        Arc::clone(&unregistered),
        Arc::new(FenceIndex::empty()),
    );
    let limits = DecodeLimits::default();
    let (mut readings, mut rejects) = (0u64, 0u64);
    let mut decoded = Vec::new();
    for (e, chunk) in payloads.chunks(epoch.max(1)).enumerate() {
        let mut records = Vec::new();
        let mut top = TopTimes::default();
        for (i, payload) in chunk.iter().enumerate() {
            let before = decoded.len();
            decode_payload(payload, None, T0, &limits, &mut decoded);
            prop_assert!(decoded.len() > before, "a payload vanished");
            for (k, item) in decoded.drain(..).enumerate() {
                match item {
                    Ok(r) => {
                        readings += 1;
                        top.offer(id_key(&r.device_id), r.ts_ms);
                        let ingest_seq = ((e * epoch + i) as u64) << 16 | k as u64;
                        records.push(unregistered.identify(r, ingest_seq));
                    }
                    Err(reject) => {
                        rejects += 1;
                        prop_assert!(reject.raw.len() <= limits.max_reject_raw_bytes);
                        prop_assert!(!reject.reason.is_empty());
                    }
                }
            }
        }
        let samples: Vec<EpochSample> = vec![top.take()];
        let mut out = FleetOutputs::default();
        fleet.run_epoch(records, &samples, T0, &mut out);
        rejects += out.rejects.len() as u64;
    }
    let mut out = FleetOutputs::default();
    fleet.finish(T0, &mut out);
    let s = fleet.stats;
    prop_assert_eq!(
        s.accepted + s.duplicates + s.future,
        readings,
        "readings {} = accepted {} + duplicates {} + future {}",
        readings,
        s.accepted,
        s.duplicates,
        s.future
    );
    prop_assert!(rejects >= s.future);
    Ok(Totals {
        payloads: payloads.len() as u64,
        readings,
        rejects,
    })
}

/// Cases in the test suite; `PROPTEST_CASES` sets another number.
const SUITE_CASES: u32 = 48;

#[test]
fn hostile_payloads_are_accounted_for_and_never_panic() {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(SUITE_CASES);
    // Outside the `proptest!` macro the runner knows no source file to keep failures in.
    let config = ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    };
    let mut runner = proptest::test_runner::TestRunner::new(config);
    let totals = std::cell::Cell::new(Totals::default());
    let strategy = (prop::collection::vec(payload(), 1..40), 1usize..12);
    let result = runner.run(&strategy, |(payloads, epoch)| {
        let counted = run(&payloads, epoch)?;
        let t = totals.get();
        totals.set(Totals {
            payloads: t.payloads + payloads.len() as u64,
            readings: t.readings + counted.readings,
            rejects: t.rejects + counted.rejects,
        });
        Ok(())
    });
    let t = totals.get();
    eprintln!(
        "{cases} cases: {} payloads, {} readings, {} rejects (shrinking runs included)",
        t.payloads, t.readings, t.rejects
    );
    if let Err(e) = result {
        panic!("{e}");
    }
}
