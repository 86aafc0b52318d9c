//! End to end, the daily features (SPEC §5): a simulated fleet, with back-filled copies of
//! some readings appended days late, replayed through the `lienwatch` command line. The rows
//! must equal a batch computation by DuckDB over the archived telemetry (every accepted
//! reading), and exactly the vehicle-days the late readings reached are emitted again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, ensure};
use pipeline::simulate::{SimOptions, SimOutputs, simulate};
use serde_json::Value;
use tests::duckdb_rows;

const DAY_MS: i64 = 86_400_000;

/// UTC offset (hours) of the time zones the simulator uses; none of them has DST.
fn offset_h(tz: &str) -> Result<i64> {
    match tz {
        "" | "Asia/Shanghai" | "Asia/Hong_Kong" => Ok(8),
        "Asia/Urumqi" => Ok(6),
        other => anyhow::bail!("the test knows no offset for {other}"),
    }
}

/// Device → (vehicle, UTC offset) from the registry.
fn devices(csv: &Path) -> Result<BTreeMap<String, (String, i64)>> {
    let text = std::fs::read_to_string(csv)?;
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split(',').collect();
        ensure!(f.len() >= 7, "registry line {line:?}");
        out.insert(f[2].to_owned(), (f[0].to_owned(), offset_h(f[6])?));
    }
    Ok(out)
}

fn local_date(ts_ms: i64, offset_h: i64) -> String {
    civil_date((ts_ms + offset_h * 3_600_000).div_euclid(DAY_MS))
}

/// `YYYY-MM-DD` of a day number since 1970-01-01 (Howard Hinnant's civil-from-days).
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Appends back-filled copies of every 400th reading from between 2.5 and 2 days before the
/// end (closed, and within `revision_days`); returns the (vehicle, date) pairs they reach.
fn append_backfill(
    messages: &Path,
    devices: &BTreeMap<String, (String, i64)>,
) -> Result<BTreeSet<(String, String)>> {
    // The simulator writes some invalid UTF-8 lines on purpose.
    let bytes = std::fs::read(messages)?;
    let readings: Vec<Value> = bytes
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Value>(l).ok())
        .filter(|v| v["ts"].is_i64() && v["seq"].is_u64())
        .collect();
    let end = readings
        .iter()
        .filter_map(|v| v["ts"].as_i64())
        .max()
        .unwrap_or(0);
    let window = end - 5 * DAY_MS / 2..end - 2 * DAY_MS;
    let mut reached = BTreeSet::new();
    let mut extra = String::new();
    for v in readings
        .iter()
        .filter(|v| window.contains(&v["ts"].as_i64().unwrap_or(0)))
        .step_by(400)
    {
        let Some((vehicle, offset)) = v["device_id"].as_str().and_then(|d| devices.get(d)) else {
            continue;
        };
        let mut copy = v.clone();
        let ts = v["ts"].as_i64().unwrap_or(0) + 1;
        copy["ts"] = ts.into();
        copy["seq"] = (v["seq"].as_u64().unwrap_or(0) + 1_000_000_000).into();
        copy["backfill"] = true.into();
        extra += &copy.to_string();
        extra.push('\n');
        reached.insert((vehicle.clone(), local_date(ts, *offset)));
    }
    let mut all = bytes;
    all.extend_from_slice(extra.as_bytes());
    std::fs::write(messages, all)?;
    Ok(reached)
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64()
}

#[test]
fn features_equal_a_batch_computation_and_revise_exactly_the_late_days() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let sim = SimOutputs::beside(&dir.path().join("fleet.jsonl"));
    let options = SimOptions {
        seed: 20_261_129,
        vehicles: 30,
        days: 6,
        ..SimOptions::default()
    };
    simulate(&options, &sim).context("simulating")?;
    let devices = devices(&sim.vehicles_csv)?;
    let late_days = append_backfill(&sim.messages, &devices)?;
    ensure!(
        late_days.len() >= 5,
        "only {} late vehicle-days",
        late_days.len()
    );

    let features = dir.path().join("features.jsonl");
    let archive = dir.path().join("archive");
    let path = |p: &Path| p.display().to_string();
    pipeline::cli::run_from(vec![
        "lienwatch".to_owned(),
        "replay".to_owned(),
        "--input".to_owned(),
        path(&sim.messages),
        "--vehicles".to_owned(),
        path(&sim.vehicles_csv),
        "--fences".to_owned(),
        path(&sim.fences),
        "--features-out".to_owned(),
        path(&features),
        "--archive".to_owned(),
        path(&archive),
        "-w".to_owned(),
        "2".to_owned(),
    ])?;

    let rows = tests::read_alert_values(&features)?;
    let mut last: BTreeMap<(String, String), &Value> = BTreeMap::new();
    let mut emissions: BTreeMap<(String, String), u64> = BTreeMap::new();
    for row in &rows {
        let key = (
            row["vehicle_id"].as_str().unwrap_or_default().to_owned(),
            row["date"].as_str().unwrap_or_default().to_owned(),
        );
        *emissions.entry(key.clone()).or_default() += 1;
        last.insert(key, row);
    }
    let revised: BTreeSet<(String, String)> = emissions
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(k, _)| k.clone())
        .collect();
    ensure!(
        revised == late_days,
        "revised {revised:?}\nlate {late_days:?}"
    );
    for (key, row) in &last {
        ensure!(
            row["revision"].as_u64() == Some(emissions[key] - 1),
            "{key:?}: revision {} after {} emissions",
            row["revision"],
            emissions[key]
        );
    }

    // The batch: per vehicle and local date over the archived telemetry; DuckDB rows come
    // as arrays in the order of the SELECT.
    let offsets: Vec<String> = devices
        .values()
        .map(|(vehicle, h)| format!("('{vehicle}', {h})"))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let sql = format!(
        "WITH t AS (
           SELECT vehicle_id, epoch_ms(ts) AS ms, odometer_km, dtc_count,
                  coalesce(speed_kmh, gnss_speed_kmh) AS speed,
                  (DATE '1970-01-01' + CAST((epoch_ms(ts) + coalesce(o.h, 8) * 3600000) // 86400000 AS INTEGER))::VARCHAR AS date
           FROM read_parquet('{root}/telemetry/**/*.parquet', hive_partitioning = 1)
           LEFT JOIN (VALUES {values}) o(v, h) ON o.v = vehicle_id)
         SELECT vehicle_id, date, count(*) AS messages, min(ms) AS first_ms, max(ms) AS last_ms,
                arg_min(odometer_km, ms) FILTER (WHERE odometer_km IS NOT NULL) AS odo_start,
                arg_max(odometer_km, ms) FILTER (WHERE odometer_km IS NOT NULL) AS odo_end,
                max(speed)::DOUBLE AS max_speed, max(dtc_count) AS dtc_max
         FROM t GROUP BY vehicle_id, date ORDER BY vehicle_id, date",
        root = archive.display(),
        values = offsets.join(", "),
    );
    let batch = duckdb_rows(&sql)?;
    let mut last_date: BTreeMap<String, String> = BTreeMap::new();
    for b in &batch {
        let vehicle = b[0].as_str().unwrap_or_default().to_owned();
        let date = b[1].as_str().unwrap_or_default().to_owned();
        let entry = last_date.entry(vehicle).or_default();
        if date > *entry {
            *entry = date;
        }
    }
    let mut compared = 0;
    for b in &batch {
        let key = (
            b[0].as_str().unwrap_or_default().to_owned(),
            b[1].as_str().unwrap_or_default().to_owned(),
        );
        let Some(row) = last.get(&key) else {
            // Only each vehicle's last day may still be open.
            ensure!(last_date[&key.0] == key.1, "no row for {key:?}");
            continue;
        };
        compared += 1;
        let ts = |field: &str| row[field].as_str().and_then(tests::parse_time);
        ensure!(row["messages"] == b[2], "{key:?}: {row} vs {b}");
        ensure!(
            ts("first_ts") == b[3].as_i64(),
            "{key:?}: first_ts {row} vs {b}"
        );
        ensure!(
            ts("last_ts") == b[4].as_i64(),
            "{key:?}: last_ts {row} vs {b}"
        );
        ensure!(
            number(&row["odometer_start_km"]) == number(&b[5]),
            "{key:?}: odometer start {row} vs {b}"
        );
        ensure!(
            number(&row["odometer_end_km"]) == number(&b[6]),
            "{key:?}: odometer end {row} vs {b}"
        );
        let speed = |v: &Value| number(v).map(|s| (s * 10.0).round());
        ensure!(
            speed(&row["max_speed_kmh"]) == speed(&b[7]),
            "{key:?}: max speed {row} vs {b}"
        );
        ensure!(row["dtc_count_max"] == b[8], "{key:?}: dtc {row} vs {b}");
    }
    ensure!(
        compared == last.len(),
        "{} rows, {compared} compared",
        last.len()
    );
    eprintln!(
        "{compared} vehicle-days equal to the batch; {} revised, exactly the {} reached by late data",
        revised.len(),
        late_days.len()
    );
    Ok(())
}
