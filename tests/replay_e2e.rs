//! End to end: simulate a fleet with injected incidents, replay it through the `lienwatch`
//! command line (`pipeline::cli::run_from`), and check the alerts against the simulator's
//! truth, the counters against the simulator's summary, and the Parquet archive.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};
use pipeline::simulate::{SimOptions, SimOutputs, SimSummary, simulate};
use tests::{
    AlertRecord, assert_scores, duckdb_rows, parquet_rows, read_alert_values, read_alerts,
    read_summary, read_truth, score, validate_alerts,
};

/// The 19 kinds of docs/rules.md, all scored.
const KINDS: [&str; 19] = [
    "power_cut",
    "device_tamper",
    "tow_suspected",
    "offline",
    "gnss_jamming",
    "location_jump",
    "geofence_exit",
    "risk_zone_enter",
    "risk_zone_dwell",
    "stationary_long",
    "odometer_rollback",
    "odometer_mismatch",
    "dtc_cleared",
    "vin_mismatch",
    "duplicate_collateral",
    "low_battery",
    "residence_change",
    "mileage_anomaly",
    "night_movement",
];

/// 40 vehicles over 26 days (about 290 000 lines): the baseline kinds need 14 days of
/// history, so their incidents fall on days 15–24. 22 incidents of each kind, so that one
/// miss or one false alarm per kind still passes 0.95.
fn scored() -> SimOptions {
    SimOptions {
        seed: 20_261_102,
        vehicles: 40,
        days: 26,
        incidents_per_kind: Some(22),
        ..SimOptions::default()
    }
}

/// The worker-count check replays twice: a smaller fleet over the same days, with incidents
/// of every kind, keeps the test quick.
fn small() -> SimOptions {
    SimOptions {
        vehicles: 16,
        incidents_per_kind: Some(5),
        ..scored()
    }
}

fn simulated(dir: &Path, options: &SimOptions) -> Result<(SimOutputs, SimSummary)> {
    let outputs = SimOutputs::beside(&dir.join("fleet.jsonl"));
    let summary = simulate(options, &outputs).context("simulating the fleet")?;
    Ok((outputs, summary))
}

/// What one replay wrote.
struct Replayed {
    alerts: PathBuf,
    archive: PathBuf,
    summary: PathBuf,
}

fn replay(sim: &SimOutputs, dir: &Path, workers: usize) -> Result<Replayed> {
    let out = Replayed {
        alerts: dir.join(format!("alerts-w{workers}.jsonl")),
        archive: dir.join(format!("archive-w{workers}")),
        summary: dir.join(format!("summary-w{workers}.json")),
    };
    let path = |p: &Path| p.display().to_string();
    let args = vec![
        "lienwatch".to_owned(),
        "replay".to_owned(),
        "--input".to_owned(),
        path(&sim.messages),
        "--vehicles".to_owned(),
        path(&sim.vehicles_csv),
        "--fences".to_owned(),
        path(&sim.fences),
        "--alerts-out".to_owned(),
        path(&out.alerts),
        "--archive".to_owned(),
        path(&out.archive),
        "-w".to_owned(),
        workers.to_string(),
        "--summary-out".to_owned(),
        path(&out.summary),
    ];
    pipeline::cli::run_from(args).with_context(|| format!("replay with -w {workers}"))?;
    Ok(out)
}

#[test]
fn replay_finds_the_injected_incidents() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (sim, expected) = simulated(dir.path(), &scored())?;
    for kind in KINDS {
        let n = expected.incidents.get(kind).copied().unwrap_or(0);
        ensure!(n >= 20, "the simulation has only {n} {kind} incidents");
    }
    let run = replay(&sim, dir.path(), 2)?;

    let values = read_alert_values(&run.alerts)?;
    let problems = validate_alerts(&values);
    ensure!(
        problems.is_empty(),
        "{} invalid alerts:\n{}",
        problems.len(),
        problems.join("\n")
    );
    let truth = read_truth(&sim.truth)?;
    let alerts = read_alerts(&run.alerts)?;
    let scored = score(&truth, &alerts);
    eprintln!("{}", scored.table());
    assert_scores(&scored, &KINDS, 0.95, 0.95)?;

    let summary = read_summary(&run.summary)?;
    let nonzero = |m: &BTreeMap<String, u64>| -> BTreeMap<String, u64> {
        m.iter()
            .filter(|(_, n)| **n > 0)
            .map(|(k, n)| (k.clone(), *n))
            .collect()
    };
    ensure!(
        nonzero(&summary.rejects) == nonzero(&expected.bad_lines),
        "rejects {:?}, simulated bad lines {:?}",
        summary.rejects,
        expected.bad_lines
    );
    ensure!(summary.rejects_total == expected.bad_lines.values().sum::<u64>());
    ensure!(
        summary.duplicates == expected.duplicates,
        "duplicates {} != simulated {}",
        summary.duplicates,
        expected.duplicates
    );
    ensure!(
        summary.accepted == expected.readings,
        "accepted {} != simulated readings {}",
        summary.accepted,
        expected.readings
    );
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    for a in &alerts {
        *by_kind.entry(a.kind.clone()).or_default() += 1;
    }
    ensure!(
        summary.alerts == by_kind,
        "summary alerts {:?} != alerts file {by_kind:?}",
        summary.alerts
    );

    let telemetry = parquet_rows(&run.archive.join("telemetry"))?;
    ensure!(
        telemetry == summary.accepted && telemetry == summary.archive.telemetry_rows,
        "telemetry parquet rows {telemetry}, accepted {}, archive.telemetry_rows {}",
        summary.accepted,
        summary.archive.telemetry_rows
    );
    let rejects = parquet_rows(&run.archive.join("rejects"))?;
    ensure!(
        rejects == summary.rejects_total && rejects == summary.archive.reject_rows,
        "rejects parquet rows {rejects}, rejects_total {}, archive.reject_rows {}",
        summary.rejects_total,
        summary.archive.reject_rows
    );
    let alert_rows = parquet_rows(&run.archive.join("alerts"))?;
    ensure!(
        alert_rows == alerts.len() as u64 && alert_rows == summary.archive.alert_rows,
        "alerts parquet rows {alert_rows}, alerts file {}, archive.alert_rows {}",
        alerts.len(),
        summary.archive.alert_rows
    );
    ensure!(summary.archive.files > 0, "no archive files");

    // Analysts read the archive with DuckDB as SPEC §6 says: hive partitions, typed columns.
    let root = run.archive.display();
    let rows = duckdb_rows(&format!(
        "SELECT count(*), count(DISTINCT vehicle_id), min(date)::VARCHAR, typeof(any_value(ts)), \
         typeof(any_value(hour)) FROM read_parquet('{root}/telemetry/**/*.parquet', hive_partitioning=1)"
    ))?;
    ensure!(
        rows[0][0] == serde_json::json!(summary.accepted),
        "duckdb telemetry rows {:?} != accepted {}",
        rows[0][0],
        summary.accepted
    );
    ensure!(
        rows[0][3] == "TIMESTAMP WITH TIME ZONE",
        "ts is {:?}",
        rows[0][3]
    );
    let per_kind = duckdb_rows(&format!(
        "SELECT kind, count(*) FROM read_parquet('{root}/alerts/**/*.parquet', hive_partitioning=1) \
         GROUP BY kind ORDER BY kind"
    ))?;
    let duck: BTreeMap<String, u64> = per_kind
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap_or("").to_owned(),
                r[1].as_u64().unwrap_or(0),
            )
        })
        .collect();
    ensure!(
        duck == by_kind,
        "duckdb alerts {duck:?} != alerts file {by_kind:?}"
    );
    Ok(())
}

/// The identity of an alert, without `detected_at`.
type Key = (String, String, String, String, String, i64);

fn keys(alerts: &[AlertRecord]) -> Vec<Key> {
    let mut k: Vec<Key> = alerts
        .iter()
        .map(|a| {
            (
                a.alert_id.clone(),
                a.kind.clone(),
                a.phase.clone(),
                a.vehicle_id.clone(),
                a.device_id.clone(),
                a.event_time_ms,
            )
        })
        .collect();
    k.sort();
    k
}

#[test]
fn worker_count_does_not_change_alerts() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let (sim, _) = simulated(dir.path(), &small())?;
    let one = keys(&read_alerts(&replay(&sim, dir.path(), 1)?.alerts)?);
    let two = keys(&read_alerts(&replay(&sim, dir.path(), 2)?.alerts)?);
    ensure!(!one.is_empty(), "no alerts at all");
    let only_one: Vec<&Key> = one
        .iter()
        .filter(|k| two.binary_search(k).is_err())
        .collect();
    let only_two: Vec<&Key> = two
        .iter()
        .filter(|k| one.binary_search(k).is_err())
        .collect();
    ensure!(
        one == two,
        "-w 1 and -w 2 differ:\nonly with -w 1: {only_one:#?}\nonly with -w 2: {only_two:#?}"
    );
    Ok(())
}
