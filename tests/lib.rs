//! Shared helpers for the end-to-end tests: reading a simulator truth file and an alerts
//! JSON Lines file, scoring alerts against the truth per kind, and validating alerts
//! against SPEC §4.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use serde_json::Value;

/// One expected alert from a simulator truth file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct TruthEntry {
    /// Vehicle the alert is for.
    pub vehicle_id: String,
    /// Device whose message (or silence) raises it.
    pub device_id: String,
    /// Alert kind.
    pub kind: String,
    /// Expected `event_time`, epoch ms.
    pub event_time_ms: i64,
    /// How far the alert's `event_time` may be from `event_time_ms`, ms.
    pub tolerance_ms: i64,
    /// The incident scenario behind it, when the truth file names one.
    #[serde(default)]
    pub scenario: Option<String>,
}

/// The fields of an alert the scorer needs, parsed from a SPEC §4 object.
#[derive(Clone, Debug, PartialEq)]
pub struct AlertRecord {
    /// Incident id.
    pub alert_id: String,
    /// Kind.
    pub kind: String,
    /// `open`, `close` or `instant`.
    pub phase: String,
    /// Vehicle.
    pub vehicle_id: String,
    /// Device.
    pub device_id: String,
    /// `event_time`, epoch ms.
    pub event_time_ms: i64,
    /// `backfill` flag.
    pub backfill: bool,
}

fn read_lines(path: &Path) -> Result<Vec<(usize, String)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| (i + 1, l.to_owned()))
        .collect())
}

/// Reads a truth file (JSON Lines of [`TruthEntry`]).
pub fn read_truth(path: &Path) -> Result<Vec<TruthEntry>> {
    read_lines(path)?
        .into_iter()
        .map(|(n, l)| serde_json::from_str(&l).with_context(|| format!("{}:{n}", path.display())))
        .collect()
}

/// Reads an alerts JSON Lines file as raw JSON values (for [`validate_alerts`]).
pub fn read_alert_values(path: &Path) -> Result<Vec<Value>> {
    read_lines(path)?
        .into_iter()
        .map(|(n, l)| serde_json::from_str(&l).with_context(|| format!("{}:{n}", path.display())))
        .collect()
}

/// Parses RFC 3339 into epoch ms.
pub fn parse_time(s: &str) -> Option<i64> {
    schemas::time::parse_rfc3339_ms(s)
}

impl AlertRecord {
    /// Extracts the scored fields of one alert object.
    pub fn from_value(v: &Value) -> Result<Self> {
        let s = |k: &str| -> Result<String> {
            v.get(k)
                .and_then(Value::as_str)
                .map(str::to_owned)
                .with_context(|| format!("alert without string field {k:?}: {v}"))
        };
        let time = s("event_time")?;
        Ok(Self {
            alert_id: s("alert_id")?,
            kind: s("kind")?,
            phase: s("phase")?,
            vehicle_id: s("vehicle_id")?,
            device_id: s("device_id")?,
            event_time_ms: parse_time(&time)
                .with_context(|| format!("event_time {time:?} is not RFC 3339"))?,
            backfill: v.get("backfill").and_then(Value::as_bool).unwrap_or(false),
        })
    }
}

/// Reads an alerts JSON Lines file into [`AlertRecord`]s.
pub fn read_alerts(path: &Path) -> Result<Vec<AlertRecord>> {
    read_alert_values(path)?
        .iter()
        .map(AlertRecord::from_value)
        .collect()
}

/// Recall and precision of one kind.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KindScore {
    /// Expected alerts.
    pub truth: usize,
    /// Opening or instant alerts emitted.
    pub alerts: usize,
    /// Expected alerts matched one-to-one by an emitted one.
    pub matched: usize,
}

impl KindScore {
    /// matched / truth (1 when nothing was expected).
    pub fn recall(&self) -> f64 {
        if self.truth == 0 {
            1.0
        } else {
            self.matched as f64 / self.truth as f64
        }
    }

    /// matched / alerts (1 when nothing was emitted).
    pub fn precision(&self) -> f64 {
        if self.alerts == 0 {
            1.0
        } else {
            self.matched as f64 / self.alerts as f64
        }
    }
}

/// An expected alert that was not emitted, or an emitted one nothing expected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mismatch {
    /// Vehicle.
    pub vehicle_id: String,
    /// Kind.
    pub kind: String,
    /// Event time, epoch ms.
    pub time_ms: i64,
    /// Device, and the scenario or the alert id.
    pub detail: String,
}

/// The result of [`score`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Score {
    /// Per kind.
    pub kinds: BTreeMap<String, KindScore>,
    /// Expected alerts without a match.
    pub misses: Vec<Mismatch>,
    /// Emitted alerts without a match.
    pub false_alarms: Vec<Mismatch>,
}

/// Matches opening and instant alerts to truth entries of the same vehicle and kind whose
/// time is within the entry's tolerance, one to one (each entry takes the closest free
/// alert); close alerts are not scored.
pub fn score(truth: &[TruthEntry], alerts: &[AlertRecord]) -> Score {
    let mut out = Score::default();
    let mut pool: HashMap<(&str, &str), Vec<(i64, usize)>> = HashMap::new();
    for (i, a) in alerts
        .iter()
        .enumerate()
        .filter(|(_, a)| a.phase != "close")
    {
        pool.entry((a.vehicle_id.as_str(), a.kind.as_str()))
            .or_default()
            .push((a.event_time_ms, i));
        out.kinds.entry(a.kind.clone()).or_default().alerts += 1;
    }
    let mut used = vec![false; alerts.len()];
    let mut order: Vec<&TruthEntry> = truth.iter().collect();
    order.sort_by_key(|t| (t.event_time_ms, t.vehicle_id.as_str(), t.kind.as_str()));
    for t in order {
        let k = out.kinds.entry(t.kind.clone()).or_default();
        k.truth += 1;
        let best = pool
            .get(&(t.vehicle_id.as_str(), t.kind.as_str()))
            .into_iter()
            .flatten()
            .filter(|(ts, i)| !used[*i] && (ts - t.event_time_ms).abs() <= t.tolerance_ms)
            .min_by_key(|(ts, i)| ((ts - t.event_time_ms).abs(), *i));
        match best {
            Some((_, i)) => {
                used[*i] = true;
                k.matched += 1;
            }
            None => out.misses.push(Mismatch {
                vehicle_id: t.vehicle_id.clone(),
                kind: t.kind.clone(),
                time_ms: t.event_time_ms,
                detail: format!("{} {}", t.device_id, t.scenario.as_deref().unwrap_or("")),
            }),
        }
    }
    for (i, a) in alerts.iter().enumerate() {
        if a.phase != "close" && !used[i] {
            out.false_alarms.push(Mismatch {
                vehicle_id: a.vehicle_id.clone(),
                kind: a.kind.clone(),
                time_ms: a.event_time_ms,
                detail: format!("{} {}", a.device_id, a.alert_id),
            });
        }
    }
    out.false_alarms
        .sort_by(|a, b| (&a.kind, a.time_ms).cmp(&(&b.kind, b.time_ms)));
    out.misses
        .sort_by(|a, b| (&a.kind, a.time_ms).cmp(&(&b.kind, b.time_ms)));
    out
}

impl Score {
    /// A readable table: per-kind counts, recall and precision, then every miss and false
    /// alarm (vehicle, kind, time) for debugging.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "{:<22} {:>6} {:>7} {:>8} {:>7} {:>9}",
            "kind", "truth", "alerts", "matched", "recall", "precision"
        );
        for (kind, k) in &self.kinds {
            let _ = writeln!(
                s,
                "{:<22} {:>6} {:>7} {:>8} {:>7.3} {:>9.3}",
                kind,
                k.truth,
                k.alerts,
                k.matched,
                k.recall(),
                k.precision()
            );
        }
        for (title, list) in [
            ("misses", &self.misses),
            ("false alarms", &self.false_alarms),
        ] {
            let _ = writeln!(s, "{title}: {}", list.len());
            for m in list {
                let _ = writeln!(
                    s,
                    "  {:<18} {:<20} {}  {}",
                    m.vehicle_id,
                    m.kind,
                    schemas::time::rfc3339_ms(m.time_ms),
                    m.detail
                );
            }
        }
        s
    }

    /// Kinds among `kinds` whose recall or precision is below the minimum, described.
    pub fn failures(&self, kinds: &[&str], min_recall: f64, min_precision: f64) -> Vec<String> {
        kinds
            .iter()
            .filter_map(|kind| {
                let k = self.kinds.get(*kind).cloned().unwrap_or_default();
                if k.truth == 0 {
                    return Some(format!("{kind}: nothing expected, nothing to score"));
                }
                (k.recall() < min_recall || k.precision() < min_precision).then(|| {
                    format!(
                        "{kind}: recall {:.3} precision {:.3}",
                        k.recall(),
                        k.precision()
                    )
                })
            })
            .collect()
    }
}

/// Kinds SPEC §4 gives the `instant` phase (all others open and close).
const INSTANT_KINDS: [&str; 11] = [
    "device_tamper",
    "tow_suspected",
    "location_jump",
    "risk_zone_enter",
    "odometer_rollback",
    "odometer_mismatch",
    "dtc_cleared",
    "duplicate_collateral",
    "residence_change",
    "mileage_anomaly",
    "night_movement",
];

/// The severities SPEC §4 allows for `kind` (`None` for an unknown kind).
fn severities(kind: &str) -> Option<&'static [&'static str]> {
    Some(match kind {
        "power_cut"
        | "device_tamper"
        | "tow_suspected"
        | "odometer_rollback"
        | "vin_mismatch"
        | "duplicate_collateral" => &["critical"],
        "offline" => &["high", "medium"],
        "gnss_jamming" | "location_jump" | "geofence_exit" | "risk_zone_dwell"
        | "odometer_mismatch" | "residence_change" => &["high"],
        "risk_zone_enter" | "stationary_long" | "mileage_anomaly" | "night_movement" => &["medium"],
        "dtc_cleared" | "low_battery" => &["low"],
        _ => return None,
    })
}

/// Checks every alert against SPEC §4: required fields and their types, known kind,
/// phase allowed for the kind, severity of the kind, RFC 3339 times, lat/lon in range,
/// each `(alert_id, phase)` once, and every `close` preceded by an `open` with the same
/// `alert_id` (and kind and vehicle). Returns the problems found, each naming the line.
pub fn validate_alerts(alerts: &[Value]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut opened: HashMap<String, (String, String)> = HashMap::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    for (i, a) in alerts.iter().enumerate() {
        let line = i + 1;
        let mut bad = |msg: String| problems.push(format!("alert {line}: {msg}"));
        let Some(obj) = a.as_object() else {
            bad("not a JSON object".into());
            continue;
        };
        let string = |k: &str| obj.get(k).and_then(Value::as_str);
        for k in [
            "alert_id",
            "kind",
            "phase",
            "severity",
            "vehicle_id",
            "device_id",
        ] {
            if string(k).is_none_or(str::is_empty) {
                bad(format!("{k} missing or not a non-empty string"));
            }
        }
        match obj.get("loan_id") {
            Some(Value::String(_) | Value::Null) => {}
            _ => bad("loan_id missing or neither a string nor null".into()),
        }
        for k in ["event_time", "detected_at"] {
            if string(k).and_then(parse_time).is_none() {
                bad(format!("{k} missing or not RFC 3339"));
            }
        }
        for (k, limit) in [("lat", 90.0), ("lon", 180.0)] {
            match obj.get(k) {
                Some(Value::Null) => {}
                Some(Value::Number(n)) if n.as_f64().is_some_and(|x| x.abs() <= limit) => {}
                _ => bad(format!(
                    "{k} missing, not a number or null, or out of range"
                )),
            }
        }
        if !obj.get("backfill").is_some_and(Value::is_boolean) {
            bad("backfill missing or not a boolean".into());
        }
        if !obj.get("evidence").is_some_and(Value::is_object) {
            bad("evidence missing or not an object".into());
        }
        let kind = string("kind").unwrap_or_default();
        let phase = string("phase").unwrap_or_default();
        let severity = string("severity").unwrap_or_default();
        let id = string("alert_id").unwrap_or_default().to_owned();
        let vehicle = string("vehicle_id").unwrap_or_default().to_owned();
        match severities(kind) {
            None => bad(format!("unknown kind {kind:?}")),
            Some(allowed) if !allowed.contains(&severity) => {
                bad(format!(
                    "severity {severity:?} for {kind} (SPEC: {allowed:?})"
                ));
            }
            Some(_) => {}
        }
        let instant = INSTANT_KINDS.contains(&kind);
        match phase {
            "instant" if instant => {}
            "open" | "close" if !instant => {}
            "open" | "close" | "instant" => bad(format!("phase {phase} for {kind}")),
            _ => bad(format!("unknown phase {phase:?}")),
        }
        if !seen.insert((id.clone(), phase.to_owned())) {
            bad(format!("alert_id {id} with phase {phase} appears twice"));
        }
        match phase {
            "open" => {
                opened.insert(id, (kind.to_owned(), vehicle));
            }
            "close" => match opened.get(&id) {
                None => bad(format!("close of {id} without an earlier open")),
                Some((k, v)) if k != kind || *v != vehicle => {
                    bad(format!(
                        "close of {id} is {kind}/{vehicle}, its open {k}/{v}"
                    ));
                }
                Some(_) => {}
            },
            _ => {}
        }
    }
    problems
}

/// Counts the rows of every `*.parquet` file under `dir` (recursively) by decoding them
/// with the parquet Arrow reader; 0 when `dir` does not exist.
pub fn parquet_rows(dir: &Path) -> Result<u64> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let mut rows = 0u64;
    if !dir.exists() {
        return Ok(0);
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("listing {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let file = std::fs::File::open(&path)
                    .with_context(|| format!("opening {}", path.display()))?;
                let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                    .and_then(|b| b.build())
                    .with_context(|| format!("reading {}", path.display()))?;
                for batch in reader {
                    rows += batch
                        .with_context(|| format!("decoding {}", path.display()))?
                        .num_rows() as u64;
                }
            }
        }
    }
    Ok(rows)
}

/// The parts of a replay `--summary-out` file the tests check.
#[derive(Clone, Debug, Deserialize)]
pub struct ReplaySummary {
    /// Rejects by reason.
    pub rejects: BTreeMap<String, u64>,
    /// All rejects.
    pub rejects_total: u64,
    /// Readings accepted and archived.
    pub accepted: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Alerts by kind (all phases).
    pub alerts: BTreeMap<String, u64>,
    /// Archive counters.
    pub archive: ArchiveSummary,
}

/// Archive counters of a replay summary.
#[derive(Clone, Debug, Deserialize)]
pub struct ArchiveSummary {
    /// Telemetry rows written.
    pub telemetry_rows: u64,
    /// Alert rows written.
    pub alert_rows: u64,
    /// Reject rows written.
    pub reject_rows: u64,
    /// Files written.
    pub files: u64,
}

/// Reads a replay summary JSON file.
pub fn read_summary(path: &Path) -> Result<ReplaySummary> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// Fails with the table when any of `kinds` is below the minimum recall or precision.
pub fn assert_scores(
    score: &Score,
    kinds: &[&str],
    min_recall: f64,
    min_precision: f64,
) -> Result<()> {
    let failures = score.failures(kinds, min_recall, min_precision);
    if failures.is_empty() {
        Ok(())
    } else {
        bail!("{}\n{}", failures.join("\n"), score.table())
    }
}

/// Runs `sql` in DuckDB (the `.venv` made by `scripts/python-env`) and returns the rows as
/// JSON arrays, one per line — the archive is read exactly as SPEC §6 tells analysts to.
pub fn duckdb_rows(sql: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    duckdb_rows_with("", sql)
}

/// Like [`duckdb_rows`], after running the Python `setup` with the connection as `con`
/// (e.g. loading httpfs and an S3 secret).
pub fn duckdb_rows_with(setup: &str, sql: &str) -> anyhow::Result<Vec<serde_json::Value>> {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv/bin/python");
    anyhow::ensure!(
        python.exists(),
        "{} is missing: run scripts/python-env (scripts/test does)",
        python.display()
    );
    let script = format!(
        "import duckdb, json, sys\n\
         con = duckdb.connect(config={{'autoinstall_known_extensions': False, 'autoload_known_extensions': False}})\n\
         con.execute('SET enable_progress_bar = false')\n\
         {setup}\
         for row in con.sql(sys.argv[1]).fetchall():\n    \
         print(json.dumps([str(v) if not isinstance(v, (int, float, str, type(None))) else v for v in row]))\n"
    );
    let out = std::process::Command::new(&python)
        .args(["-c", &script, sql])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "duckdb failed on {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)?
        .lines()
        .map(|l| serde_json::from_str(l).with_context(|| format!("DuckDB printed {l:?}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn truth(v: &str, kind: &str, t: i64) -> TruthEntry {
        TruthEntry {
            vehicle_id: v.into(),
            device_id: "D".into(),
            kind: kind.into(),
            event_time_ms: t,
            tolerance_ms: 120_000,
            scenario: None,
        }
    }

    fn alert(id: &str, v: &str, kind: &str, phase: &str, t: i64) -> AlertRecord {
        AlertRecord {
            alert_id: id.into(),
            kind: kind.into(),
            phase: phase.into(),
            vehicle_id: v.into(),
            device_id: "D".into(),
            event_time_ms: t,
            backfill: false,
        }
    }

    #[test]
    fn scores_one_to_one_within_tolerance() {
        let t = vec![
            truth("V1", "offline", 1_000_000),
            truth("V1", "offline", 9_000_000),
            truth("V2", "power_cut", 5_000_000),
        ];
        let a = vec![
            alert("a", "V1", "offline", "open", 1_100_000),
            alert("b", "V1", "offline", "open", 1_050_000),
            alert("a", "V1", "offline", "close", 2_000_000),
            alert("c", "V1", "offline", "open", 9_500_000),
            alert("d", "V2", "power_cut", "open", 5_000_000),
            alert("e", "V3", "power_cut", "open", 5_000_000),
        ];
        let s = score(&t, &a);
        let off = &s.kinds["offline"];
        assert_eq!((off.truth, off.alerts, off.matched), (2, 3, 1));
        assert!((off.recall() - 0.5).abs() < 1e-9);
        assert!((off.precision() - 1.0 / 3.0).abs() < 1e-9);
        let pc = &s.kinds["power_cut"];
        assert_eq!((pc.truth, pc.alerts, pc.matched), (1, 2, 1));
        assert_eq!(s.misses.len(), 1);
        assert_eq!(s.misses[0].time_ms, 9_000_000);
        let fa: Vec<&str> = s
            .false_alarms
            .iter()
            .map(|m| m.vehicle_id.as_str())
            .collect();
        assert_eq!(fa, vec!["V1", "V1", "V3"]);
        assert!(
            s.false_alarms[0].detail.ends_with(" a"),
            "closest alert b matched"
        );
        let table = s.table();
        assert!(table.contains("offline") && table.contains("misses: 1"));
        assert!(table.contains("false alarms: 3"));
        assert_eq!(s.failures(&["power_cut"], 0.95, 0.4), Vec::<String>::new());
        assert_eq!(
            s.failures(&["offline", "gnss_jamming"], 0.95, 0.95).len(),
            2
        );
        assert!(assert_scores(&s, &["offline"], 0.95, 0.95).is_err());
        assert!(assert_scores(&s, &["power_cut"], 1.0, 0.5).is_ok());
    }

    #[test]
    fn empty_kinds_score_perfectly() {
        let k = KindScore::default();
        assert_eq!((k.recall(), k.precision()), (1.0, 1.0));
    }

    fn valid(id: &str, kind: &str, phase: &str, severity: &str) -> Value {
        json!({
            "alert_id": id, "kind": kind, "phase": phase, "severity": severity,
            "vehicle_id": "V1", "loan_id": null, "device_id": "D1",
            "event_time": "2026-11-02T08:00:00.000Z", "detected_at": "2026-11-02T08:00:01Z",
            "lat": 31.2, "lon": null, "backfill": false, "evidence": {}
        })
    }

    #[test]
    fn validates_spec_alerts() {
        let good = vec![
            valid("a", "offline", "open", "medium"),
            valid("b", "tow_suspected", "instant", "critical"),
            valid("a", "offline", "close", "medium"),
        ];
        assert_eq!(validate_alerts(&good), Vec::<String>::new());
        let mut missing = valid("c", "power_cut", "open", "critical");
        missing.as_object_mut().unwrap().remove("evidence");
        missing["event_time"] = json!("yesterday");
        missing["lat"] = json!(91.0);
        let bad = vec![
            valid("x", "offline", "close", "high"),
            valid("y", "tow_suspected", "open", "critical"),
            valid("z", "power_cut", "open", "low"),
            valid("w", "teleport", "instant", "high"),
            missing,
            valid("b", "tow_suspected", "instant", "critical"),
            valid("b", "tow_suspected", "instant", "critical"),
            json!([1]),
        ];
        let problems = validate_alerts(&bad);
        let has = |needle: &str| problems.iter().any(|p| p.contains(needle));
        assert!(
            has("alert 1: close of x without an earlier open"),
            "{problems:?}"
        );
        assert!(has("alert 2: phase open for tow_suspected"));
        assert!(has("alert 3: severity \"low\" for power_cut"));
        assert!(has("alert 4: unknown kind \"teleport\""));
        assert!(has("alert 5: event_time missing or not RFC 3339"));
        assert!(has("alert 5: evidence missing"));
        assert!(has("alert 5: lat missing"));
        assert!(has("alert 7: alert_id b with phase instant appears twice"));
        assert!(has("alert 8: not a JSON object"));
        let mixed = vec![
            valid("m", "offline", "open", "high"),
            valid("m", "power_cut", "close", "critical"),
        ];
        assert_eq!(validate_alerts(&mixed).len(), 1);
    }

    #[test]
    fn reads_truth_and_alerts() {
        let dir = tempfile::tempdir().unwrap();
        let t = dir.path().join("t.jsonl");
        std::fs::write(
            &t,
            "{\"vehicle_id\":\"V\",\"device_id\":\"D\",\"kind\":\"offline\",\"event_time_ms\":5,\
             \"tolerance_ms\":120000,\"phase\":\"open\",\"scenario\":\"offline_parked\"}\n\n",
        )
        .unwrap();
        let read = read_truth(&t).unwrap();
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].scenario.as_deref(), Some("offline_parked"));
        let a = dir.path().join("a.jsonl");
        let line = valid("a", "offline", "open", "high").to_string();
        std::fs::write(&a, format!("{line}\n")).unwrap();
        let alerts = read_alerts(&a).unwrap();
        assert_eq!(alerts[0].event_time_ms, 1_793_606_400_000);
        assert_eq!(read_alert_values(&a).unwrap().len(), 1);
        std::fs::write(&a, "{\"kind\":\"offline\"}\n").unwrap();
        assert!(read_alerts(&a).is_err());
        assert_eq!(parquet_rows(&dir.path().join("none")).unwrap(), 0);
        let s = dir.path().join("s.json");
        std::fs::write(
            &s,
            r#"{"rejects":{"invalid_json":2},"rejects_total":2,"accepted":10,"duplicates":1,
                "alerts":{"offline":2},"archive":{"telemetry_rows":10,"alert_rows":2,
                "reject_rows":2,"files":3,"bytes":99},"workers":2}"#,
        )
        .unwrap();
        let summary = read_summary(&s).unwrap();
        assert_eq!(summary.rejects["invalid_json"], 2);
        assert_eq!(summary.archive.files, 3);
    }
}
