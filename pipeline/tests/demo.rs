//! `lienwatch demo` end to end: the embedded broker, the simulator publishing over MQTT and
//! the service raise the alerts `lienwatch replay` raises on the same fleet, and archive every
//! accepted reading. Needs the `embedded-broker` feature (`scripts/test` runs it).
#![cfg(feature = "embedded-broker")]

use anyhow::{Result, ensure};

use pipeline::demo::{DemoOptions, demo};
use pipeline::simulate::SimOptions;

#[test]
fn demo_raises_what_replay_raises() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let options = DemoOptions {
        dir: dir.path().to_path_buf(),
        sim: SimOptions {
            vehicles: 16,
            days: 3,
            seed: 5,
            ..SimOptions::default()
        },
        rate_per_s: 5_000.0,
    };
    let live = demo(&options)?;
    let fleet = dir.path().join("demo/fleet.jsonl");
    let replayed = dir.path().join("replay-alerts.jsonl");
    pipeline::cli::run_from(
        [
            "lienwatch",
            "replay",
            "--input",
            &fleet.display().to_string(),
            "--vehicles",
            &dir.path()
                .join("demo/fleet.vehicles.csv")
                .display()
                .to_string(),
            "--fences",
            &dir.path()
                .join("demo/fleet.fences.geojson")
                .display()
                .to_string(),
            "--alerts-out",
            &replayed.display().to_string(),
            "--no-archive",
        ]
        .map(String::from)
        .to_vec(),
    )?;
    let key = |path: &std::path::Path| -> Result<Vec<(String, String, String)>> {
        let mut keys: Vec<_> = tests::read_alert_values(path)?
            .iter()
            .map(|a| {
                let field = |k: &str| a[k].as_str().unwrap_or_default().to_owned();
                (field("alert_id"), field("phase"), field("event_time"))
            })
            .collect();
        keys.sort();
        Ok(keys)
    };
    let (want, got) = (key(&replayed)?, key(&dir.path().join("alerts.jsonl"))?);
    ensure!(!want.is_empty(), "the demo fleet raised no alerts");
    ensure!(
        got == want,
        "demo alerts {} differ from replay's {}",
        got.len(),
        want.len()
    );
    ensure!(live.archive.telemetry_rows == live.accepted && live.accepted > 0);
    let archived = tests::parquet_rows(&dir.path().join("archive/telemetry"))?;
    ensure!(
        archived == live.accepted,
        "{archived} rows archived, {} accepted",
        live.accepted
    );
    Ok(())
}
