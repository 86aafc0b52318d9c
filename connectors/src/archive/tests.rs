//! Tests of the archive writer: files are read back from a temporary directory.

use std::fs::File;
use std::path::{Path as FsPath, PathBuf};

use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Float64Type, TimestampMicrosecondType, UInt32Type, UInt64Type,
};
use arrow_array::{Array, RecordBatch};
use arrow_schema::SchemaRef;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Encoding, Type as PhysicalType};
use schemas::time::{DAY_MS, HOUR_MS};
use schemas::{AlertKind, Gnss, Phase, Reading, Severity};
use serde_json::{Map, Value};

use super::*;
use object_store::PutPayload;

/// 2026-11-28T08:00:00Z.
const BASE_MS: i64 = 1_795_852_800_000;

fn config(root: &FsPath) -> ArchiveConfig {
    ArchiveConfig {
        root: root.to_str().unwrap().into(),
        row_group_rows: 500,
        ..Default::default()
    }
}

fn record(vehicle: &str, ts_ms: i64) -> Record {
    Record {
        vehicle_id: vehicle.into(),
        loan_id: Some(format!("L-{vehicle}").into()),
        class: Default::default(),
        registered: true,
        ingest_seq: 0,
        reading: Box::new(Reading {
            device_id: format!("D-{vehicle}"),
            ts_ms,
            seq: Some(7),
            gnss: Some(Gnss {
                lat: Some(31.23),
                lon: Some(121.47),
                fix: true,
                speed_kmh: Some(42.5),
                ..Default::default()
            }),
            odometer_km: Some(45_210.4),
            alarms: vec!["power_cut".into()],
            received_at_ms: ts_ms + 40,
            ..Default::default()
        }),
    }
}

fn alert(vehicle: &str, event_time_ms: i64) -> Alert {
    let mut evidence = Map::new();
    evidence.insert("gap_s".into(), Value::from(1800));
    Alert {
        alert_id: schemas::alert::alert_id(vehicle, AlertKind::Offline, event_time_ms),
        kind: AlertKind::Offline,
        phase: Phase::Open,
        severity: Severity::High,
        vehicle_id: vehicle.into(),
        loan_id: None,
        device_id: format!("D-{vehicle}"),
        event_time_ms,
        detected_at_ms: event_time_ms + 1000,
        lat: None,
        lon: Some(121.0),
        backfill: false,
        evidence,
    }
}

fn reject(received_at_ms: i64) -> Reject {
    Reject {
        reason: "invalid_json".into(),
        detail: "expected value at line 1 column 1".into(),
        device_id: None,
        ts_ms: None,
        received_at_ms,
        raw: vec![0xff, b'{'],
    }
}

/// A features row of `vehicle` for local `date` (days after 2026-11-28), revision `revision`.
fn features(vehicle: &str, day: i64, revision: u32) -> DailyFeatures {
    let date =
        chrono::NaiveDate::from_ymd_opt(2026, 11, 28).unwrap() + chrono::Days::new(day as u64);
    let first_ts = BASE_MS + day * DAY_MS;
    DailyFeatures {
        vehicle_id: vehicle.into(),
        loan_id: Some(format!("L-{vehicle}")),
        date: date.format("%Y-%m-%d").to_string(),
        revision,
        odometer_start_km: Some(45_210.4),
        odometer_end_km: None,
        odometer_km: None,
        gnss_km: 12.5,
        driving_minutes: 31.0,
        trips: 2,
        max_speed_kmh: Some(88.0),
        harsh_accel: 1,
        harsh_brake: 0,
        night_km: 0.0,
        mil_km: 0.0,
        dtc_count_max: None,
        messages: 120 + u64::from(revision),
        first_ts,
        last_ts: first_ts + 3 * HOUR_MS,
        km_7d: 80.0,
        km_30d: 300.0,
        projected_annual_km: 3650.0,
        odo_gnss_ratio_30d: None,
    }
}

/// Every file under `dir`, recursively.
fn files(dir: &FsPath) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

/// Checks one file against `schema` and the writer settings; returns its batches.
fn read_file(path: &FsPath, schema: &SchemaRef, max_rows: usize) -> Vec<RecordBatch> {
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap();
    assert_eq!(
        builder.schema().fields(),
        schema.fields(),
        "{}",
        path.display()
    );
    for group in builder.metadata().row_groups() {
        assert!(group.num_rows() as usize <= max_rows);
        assert!(group.sorting_columns().is_some());
        for column in group.columns() {
            assert!(matches!(column.compression(), Compression::ZSTD(_)));
        }
    }
    builder.build().unwrap().map(Result::unwrap).collect()
}

/// (dataset, date, hour) of an archive file path.
fn partition_of(root: &FsPath, path: &FsPath) -> (String, String, String) {
    let rel = path
        .strip_prefix(root)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    let parts: Vec<&str> = rel.split('/').collect();
    assert_eq!(parts.len(), 4, "{rel}");
    assert!(
        parts[3].starts_with("part-") && parts[3].ends_with(".parquet"),
        "{rel}"
    );
    assert!(file_epoch(&rel).is_some(), "{rel}");
    let date = parts[1].strip_prefix("date=").unwrap().to_owned();
    let hour = parts[2].strip_prefix("hour=").unwrap().to_owned();
    (parts[0].to_owned(), date, hour)
}

#[test]
fn writes_partitioned_sorted_zstd_files() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = ArchiveWriter::open(&config(dir.path()), 0, 3).unwrap();
    // 3000 readings over three hours, pushed out of order, 1000 per hour.
    for i in 0..3000_i64 {
        let k = (i * 7) % 3000;
        let vehicle = format!("V{:02}", (i * 31) % 50);
        writer.push_telemetry(record(&vehicle, BASE_MS + k * 3600));
    }
    for i in 0..20 {
        writer.push_alert(&alert(&format!("V{:02}", 19 - i), BASE_MS + i * 9 * 60_000));
    }
    for i in 0..10 {
        writer.push_reject(reject(BASE_MS + 3 * HOUR_MS + 10 - i));
    }
    let stats = writer.finish().unwrap();
    assert_eq!(stats.telemetry_rows, 3000);
    assert_eq!(stats.alert_rows, 20);
    assert_eq!(stats.reject_rows, 10);
    // Telemetry: 3 hours; alerts over 0..171 min: 3 hours; rejects: 1 hour.
    assert_eq!(stats.files, 7);

    let all = files(dir.path());
    assert_eq!(all.len(), 7, "no staging or partial files remain: {all:?}");
    assert_eq!(
        all.iter()
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum::<u64>(),
        stats.bytes
    );
    let mut telemetry_per_hour = Vec::new();
    for path in &all {
        let (dataset, date, hour) = partition_of(dir.path(), path);
        assert_eq!(date, "2026-11-28");
        match dataset.as_str() {
            "telemetry" => {
                let batches = read_file(path, &schemas::arrow::TELEMETRY, 500);
                let mut keys = Vec::new();
                for batch in &batches {
                    let ids = batch.column(0).as_string::<i32>();
                    let ts = batch.column(3).as_primitive::<TimestampMicrosecondType>();
                    for row in 0..batch.num_rows() {
                        keys.push((ids.value(row).to_owned(), ts.value(row)));
                    }
                }
                assert!(keys.is_sorted(), "{}", path.display());
                let first_hour = 8 + (keys[0].1 / 1000 - BASE_MS) / HOUR_MS;
                assert!(
                    keys.iter()
                        .all(|k| 8 + (k.1 / 1000 - BASE_MS) / HOUR_MS == first_hour)
                );
                assert_eq!(format!("{first_hour:02}"), hour);
                telemetry_per_hour.push((hour, keys.len()));
            }
            "alerts" => {
                let batches = read_file(path, &schemas::arrow::ALERTS, 500);
                let batch = &batches[0];
                let ids = batch.column(4).as_string::<i32>();
                let ids: Vec<&str> = ids.iter().flatten().collect();
                assert!(ids.is_sorted());
                let evidence: Value =
                    serde_json::from_str(batch.column(12).as_string::<i32>().value(0)).unwrap();
                assert_eq!(evidence["gap_s"], 1800);
                assert_eq!(batch.column(1).as_string::<i32>().value(0), "offline");
            }
            "rejects" => {
                assert_eq!(hour, "11");
                let batches = read_file(path, &schemas::arrow::REJECTS, 500);
                let received = batches[0]
                    .column(0)
                    .as_primitive::<TimestampMicrosecondType>();
                assert_eq!(received.len(), 10);
                assert!(received.values().is_sorted());
                assert_eq!(
                    batches[0].column(5).as_binary::<i32>().value(0),
                    [0xff, b'{']
                );
            }
            other => panic!("unexpected dataset {other}"),
        }
    }
    telemetry_per_hour.sort();
    assert_eq!(
        telemetry_per_hour,
        vec![
            ("08".into(), 1000),
            ("09".into(), 1000),
            ("10".into(), 1000)
        ]
    );
}

#[test]
fn rolls_full_partitions_by_size() {
    let dir = tempfile::tempdir().unwrap();
    let config = ArchiveConfig {
        max_file_bytes: 20_000,
        ..config(dir.path())
    };
    let mut writer = ArchiveWriter::open(&config, 0, 0).unwrap();
    for i in 0..1000 {
        writer.push_telemetry(record(&format!("V{}", i % 10), BASE_MS + i));
    }
    let stats = writer.finish().unwrap();
    assert_eq!(stats.telemetry_rows, 1000);
    let all = files(dir.path());
    assert!(all.len() >= 5, "{} files", all.len());
    assert_eq!(stats.files, all.len() as u64);
    let rows: usize = all
        .iter()
        .flat_map(|p| read_file(p, &schemas::arrow::TELEMETRY, 500))
        .map(|b| b.num_rows())
        .sum();
    assert_eq!(rows, 1000);
}

#[test]
fn memory_budget_rolls_the_largest_partition() {
    let dir = tempfile::tempdir().unwrap();
    let config = ArchiveConfig {
        max_file_bytes: 20_000,
        ..config(dir.path())
    };
    let mut writer = ArchiveWriter::open(&config, 0, 0).unwrap();
    // 24 hours with ~15 KB each: no partition fills, the budget (40 KB) forces rolls.
    for i in 0..24 * 80 {
        writer.push_telemetry(record("V", BASE_MS + (i % 24) * HOUR_MS));
        assert!(writer.buffered_bytes <= writer.budget_bytes);
    }
    let stats = writer.finish().unwrap();
    assert_eq!(stats.telemetry_rows, 24 * 80);
}

#[test]
fn rolls_partitions_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let config = ArchiveConfig {
        max_file_age_s: 60,
        ..config(dir.path())
    };
    let mut writer = ArchiveWriter::open(&config, 0, 0).unwrap();
    let opened = writer.clock_ms;
    writer.push_telemetry(record("V", BASE_MS));
    writer.roll_due(opened + 59_000).unwrap();
    assert_eq!(writer.out.seq, 0, "not due yet");
    // Stamped with the clock of the last `roll_due`.
    writer.push_alert(&alert("V", BASE_MS));
    writer.roll_due(opened + 60_000).unwrap();
    assert_eq!(writer.out.seq, 1, "only the telemetry partition is due");
    writer.roll_due(opened + 119_000).unwrap();
    assert_eq!(writer.out.seq, 2, "now the alerts partition too");
    writer.push_telemetry(record("V", BASE_MS + 1));
    let stats = writer.finish().unwrap();
    assert_eq!(stats.files, 3);
    assert_eq!(stats.telemetry_rows, 2);
}

#[test]
fn rolls_hours_the_event_clock_has_passed() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = ArchiveWriter::open(&config(dir.path()), 0, 0).unwrap();
    let hour0 = BASE_MS - BASE_MS.rem_euclid(HOUR_MS);
    for h in 0..3 {
        writer.push_telemetry(record("V", hour0 + h * HOUR_MS + 10));
        writer.push_alert(&alert("V", hour0 + h * HOUR_MS + 20));
    }
    writer.roll_event_time(hour0 + 2 * HOUR_MS - 1).unwrap();
    assert_eq!(
        writer.out.seq, 2,
        "hour 0 of both datasets; hour 1 is not over"
    );
    writer.roll_event_time(hour0 + 2 * HOUR_MS).unwrap();
    assert_eq!(writer.out.seq, 4, "hour 1 is over too");
    writer.push_telemetry(record("V", hour0 + 5));
    let stats = writer.finish().unwrap();
    assert_eq!(stats.files, 7, "late row of hour 0 in a file of its own");
    assert_eq!(stats.telemetry_rows, 4);
    let telemetry_files = files(dir.path())
        .into_iter()
        .filter(|p| partition_of(dir.path(), p).0 == "telemetry")
        .count();
    assert_eq!(telemetry_files, 4);
}

#[test]
fn writers_and_runs_never_overwrite_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let run = |worker| {
        let mut writer = ArchiveWriter::open(&config, 1, worker).unwrap();
        for i in 0..100 {
            writer.push_telemetry(record("V", BASE_MS + i * 60_000));
        }
        writer.finish().unwrap()
    };
    let first = [run(0), run(1)];
    let second = run(0);
    for stats in first.iter().chain([&second]) {
        assert_eq!((stats.files, stats.telemetry_rows), (2, 100));
    }
    let all = files(dir.path());
    assert_eq!(all.len(), 6, "{all:?}");
    let names: std::collections::HashSet<_> = all.iter().map(|p| p.file_name()).collect();
    assert_eq!(names.len(), 6);
    assert!(all.iter().all(|p| {
        let name = p.file_name().unwrap().to_str().unwrap();
        name.starts_with("part-1-0-") || name.starts_with("part-1-1-")
    }));
}

#[test]
fn upload_failures_are_retried_then_reported() {
    let dir = tempfile::tempdir().unwrap();
    // A plain file where the `alerts` directory must go makes every alert put fail.
    std::fs::write(dir.path().join("alerts"), b"").unwrap();
    let mut writer = ArchiveWriter::open(&config(dir.path()), 0, 0).unwrap();
    writer.push_telemetry(record("V", BASE_MS));
    writer.push_alert(&alert("V", BASE_MS));
    match writer.finish_within(Duration::from_millis(1500)) {
        Err(ArchiveError::Upload {
            failed,
            path,
            attempts,
            ..
        }) => {
            // 200, 400, 800 ms between attempts, then the bound.
            assert_eq!(failed, 1);
            assert!((3..=5).contains(&attempts), "{attempts}");
            assert!(
                path.starts_with("alerts/date=2026-11-28/hour=08/"),
                "{path}"
            );
        }
        other => panic!("expected an upload error, got {other:?}"),
    }
    assert_eq!(files(&dir.path().join("telemetry")).len(), 1);
}

#[test]
fn rejects_bad_configs() {
    let dir = tempfile::tempdir().unwrap();
    let bad_level = ArchiveConfig {
        zstd_level: 99,
        ..config(dir.path())
    };
    assert!(matches!(
        ArchiveWriter::open(&bad_level, 0, 0),
        Err(ArchiveError::Config(_))
    ));
    let gcs = ArchiveConfig {
        root: "gs://bucket/prefix".into(),
        ..Default::default()
    };
    assert!(matches!(
        ArchiveWriter::open(&gcs, 0, 0),
        Err(ArchiveError::UnsupportedRoot(_))
    ));
    let nested = dir.path().join("a/b");
    let file_url = ArchiveConfig {
        root: format!("file://{}", nested.display()),
        ..Default::default()
    };
    ArchiveWriter::open(&file_url, 0, 0)
        .unwrap()
        .finish()
        .unwrap();
    assert!(nested.is_dir());
}

#[test]
fn run_tokens_are_unique_and_base36() {
    let a = run_token(1_795_852_800_000);
    let b = run_token(1_795_852_800_000);
    assert_ne!(a, b);
    assert_eq!(a.len(), 8);
    assert!(
        a.bytes()
            .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase())
    );
}

#[test]
fn features_go_to_daily_partitions_sorted_by_vehicle_date_revision() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = ArchiveWriter::open(&config(dir.path()), 0, 2).unwrap();
    // Two dates, pushed as a fleet emits them: days closing vehicle by vehicle, then
    // revisions of the first date after late data.
    for day in 0..2 {
        for v in ["V2", "V0", "V1"] {
            writer.push_features(&features(v, day, 0));
        }
    }
    writer.push_features(&features("V1", 0, 2));
    writer.push_features(&features("V1", 0, 1));
    let stats = writer.finish().unwrap();
    assert_eq!((stats.files, stats.features_rows), (2, 8));

    let all = files(dir.path());
    let mut dates = Vec::new();
    for path in &all {
        let rel = path.strip_prefix(dir.path()).unwrap().to_str().unwrap();
        let parts: Vec<&str> = rel.split('/').collect();
        assert_eq!(parts.len(), 3, "no hour level: {rel}");
        assert_eq!(parts[0], "features_daily");
        assert!(parts[2].starts_with("part-0-2-") && parts[2].ends_with(".parquet"));
        assert_eq!(file_epoch(rel), Some(0));
        let date = parts[1].strip_prefix("date=").unwrap();
        dates.push(date.to_owned());
        let batches = read_file(path, &schemas::arrow::FEATURES_DAILY, 500);
        assert_eq!(batches.len(), 1);
        let batch = &batches[0];
        let ids = batch.column(0).as_string::<i32>();
        let days = batch.column(2).as_primitive::<Date32Type>();
        let revisions = batch.column(3).as_primitive::<UInt32Type>();
        let keys: Vec<(&str, i32, u32)> = (0..batch.num_rows())
            .map(|r| (ids.value(r), days.value(r), revisions.value(r)))
            .collect();
        let day = chrono::NaiveDate::parse_from_str(date, "%Y-%m-%d")
            .unwrap()
            .to_epoch_days();
        assert!(keys.iter().all(|k| k.1 == day), "{rel}: {keys:?}");
        let order: Vec<(&str, u32)> = keys.iter().map(|k| (k.0, k.2)).collect();
        if date == "2026-11-28" {
            assert_eq!(
                order,
                [("V0", 0), ("V1", 0), ("V1", 1), ("V1", 2), ("V2", 0)]
            );
        } else {
            assert_eq!(order, [("V0", 0), ("V1", 0), ("V2", 0)]);
        }
        // Values and nulls of the first row (V0, revision 0) as pushed.
        let base = chrono::NaiveDate::from_ymd_opt(2026, 11, 28)
            .unwrap()
            .to_epoch_days();
        let pushed = features("V0", i64::from(day - base), 0);
        let float = |column: usize| batch.column(column).as_primitive::<Float64Type>().value(0);
        assert_eq!(batch.column(1).as_string::<i32>().value(0), "L-V0");
        assert_eq!(Some(float(4)), pushed.odometer_start_km);
        assert_eq!(float(7), pushed.gnss_km);
        assert_eq!(float(21), pushed.projected_annual_km);
        for nullable in [5, 6, 15, 22] {
            assert!(batch.column(nullable).is_null(0), "column {nullable}");
        }
        assert_eq!(batch.column(9).as_primitive::<UInt32Type>().value(0), 2);
        assert_eq!(batch.column(16).as_primitive::<UInt64Type>().value(0), 120);
        let ts = |column: usize| {
            batch
                .column(column)
                .as_primitive::<TimestampMicrosecondType>()
                .value(0)
        };
        assert_eq!(
            (ts(17), ts(18)),
            (pushed.first_ts * 1000, pushed.last_ts * 1000)
        );
    }
    dates.sort();
    assert_eq!(dates, ["2026-11-28", "2026-11-29"]);
}

#[test]
fn feature_dates_roll_once_the_clock_passed_them_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = ArchiveWriter::open(&config(dir.path()), 0, 0).unwrap();
    let midnight = BASE_MS - BASE_MS.rem_euclid(DAY_MS);
    writer.push_features(&features("V", 0, 0));
    // The date has ended in UTC but not yet at UTC−12.
    writer
        .roll_event_time(midnight + DAY_MS + 12 * HOUR_MS - 1)
        .unwrap();
    assert_eq!(writer.out.seq, 0);
    writer
        .roll_event_time(midnight + DAY_MS + 12 * HOUR_MS)
        .unwrap();
    assert_eq!(writer.out.seq, 1);
    // A revision after the date closed starts a new file in the same partition.
    writer.push_features(&features("V", 0, 1));
    let stats = writer.finish().unwrap();
    assert_eq!((stats.files, stats.features_rows), (2, 2));
    let all = files(&dir.path().join("features_daily/date=2026-11-28"));
    assert_eq!(all.len(), 2);
}

#[test]
fn a_malformed_feature_date_files_the_row_under_its_first_reading() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = ArchiveWriter::open(&config(dir.path()), 0, 0).unwrap();
    let mut row = features("V", 1, 0);
    row.date = "29/11/2026".into();
    writer.push_features(&row);
    assert_eq!(writer.finish().unwrap().features_rows, 1);
    assert_eq!(
        files(&dir.path().join("features_daily/date=2026-11-29")).len(),
        1
    );
}

/// A writer on `config`'s local root retrying uploads within milliseconds.
fn fast_writer(config: &ArchiveConfig) -> ArchiveWriter {
    let store = open_store(&config.root, &config.s3).unwrap();
    ArchiveWriter::open_on(
        store,
        config,
        Compression::ZSTD(ZstdLevel::try_new(3).unwrap()),
        (0, 0),
        upload::Backoff {
            first: Duration::from_millis(2),
            max: Duration::from_millis(20),
        },
    )
    .unwrap()
}

/// (dataset, epoch) of every file under `dir`, sorted.
fn epochs(dir: &FsPath) -> Vec<(String, Option<u64>)> {
    let mut out: Vec<_> = files(dir)
        .iter()
        .map(|p| {
            let rel = p.strip_prefix(dir).unwrap().to_str().unwrap();
            (rel.split('/').next().unwrap().to_owned(), file_epoch(rel))
        })
        .collect();
    out.sort();
    out
}

#[test]
fn file_epochs_parse_from_names_of_this_format_only() {
    let dir = "telemetry/date=2026-11-28/hour=08";
    assert_eq!(
        file_epoch(&format!("{dir}/part-0-3-mifx2kqo-e42-000007.parquet")),
        Some(42)
    );
    assert_eq!(file_epoch("part-10-0-e-e0-1234567.parquet"), Some(0));
    // Before epochs were named: the run token may well start with an e.
    assert_eq!(
        file_epoch(&format!("{dir}/part-0-3-mifx2kqo-000007.parquet")),
        None
    );
    assert_eq!(
        file_epoch(&format!("{dir}/part-0-3-e5-000007.parquet")),
        None
    );
    for other in [
        "part-0-3-r-e42-000007.parquet#1",
        "part-0-3-r-e-000007.parquet",
        "part-0-3-r-e4x-000007.parquet",
        "part-0-3-r-x42-000007.parquet",
        "part-0-3-r-e42-7-1.parquet",
        "notes-0-3-r-e42-000007.parquet",
        "part-0-3-r-e99999999999999999999-1.parquet",
    ] {
        assert_eq!(file_epoch(other), None, "{other}");
    }
}

#[test]
fn files_carry_the_epoch_their_partition_opened_at() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = ArchiveWriter::open(&config(dir.path()), 0, 0).unwrap();
    writer.set_epoch(5);
    writer.push_telemetry(record("V", BASE_MS));
    writer.set_epoch(7);
    writer.push_telemetry(record("V", BASE_MS + 1));
    writer.push_telemetry(record("V", BASE_MS + HOUR_MS));
    writer.push_alert(&alert("V", BASE_MS));
    assert_eq!(writer.roll_all().unwrap(), 3);
    assert_eq!(writer.roll_all().unwrap(), 3, "nothing open");
    writer.set_epoch(9);
    writer.push_telemetry(record("V", BASE_MS + 2));
    assert_eq!(writer.roll_all().unwrap(), 4);
    writer.set_epoch(12);
    writer.push_reject(reject(BASE_MS));
    writer.push_features(&features("V", 0, 0));
    let stats = writer.finish().unwrap();
    assert_eq!((stats.files, stats.telemetry_rows), (6, 4));
    let mut hour_08: Vec<_> = files(&dir.path().join("telemetry/date=2026-11-28/hour=08"))
        .iter()
        .map(|p| file_epoch(p.to_str().unwrap()))
        .collect();
    hour_08.sort();
    assert_eq!(
        hour_08,
        [Some(5), Some(9)],
        "the second row joined the open file"
    );
    assert_eq!(
        epochs(dir.path()),
        [
            ("alerts".into(), Some(7)),
            ("features_daily".into(), Some(12)),
            ("rejects".into(), Some(12)),
            ("telemetry".into(), Some(5)),
            ("telemetry".into(), Some(7)),
            ("telemetry".into(), Some(9)),
        ]
    );
}

#[test]
fn roll_all_marks_are_published_only_once_the_store_takes_them() {
    let dir = tempfile::tempdir().unwrap();
    let config = config(dir.path());
    let mut writer = fast_writer(&config);
    let progress = writer.progress();
    writer.push_telemetry(record("V", BASE_MS));
    let first = writer.roll_all().unwrap();
    assert_eq!(first, 1);
    assert!(progress.wait_published(first, Duration::from_secs(20)));

    // The store fails for `alerts` (a plain file where its directory must go).
    std::fs::write(dir.path().join("alerts"), b"").unwrap();
    writer.push_alert(&alert("V", BASE_MS));
    writer.push_telemetry(record("V", BASE_MS + 1));
    let second = writer.roll_all().unwrap();
    assert_eq!(second, 3);
    let start = std::time::Instant::now();
    while progress.failed_attempts() < 10 {
        assert!(start.elapsed() < Duration::from_secs(20), "no retries");
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(progress.published(first) && !progress.published(second));
    assert!(progress.degraded() && degraded());
    // The worker is not held up meanwhile.
    writer.push_telemetry(record("V", BASE_MS + 2));
    assert_eq!(writer.roll_all().unwrap(), 4);

    std::fs::remove_file(dir.path().join("alerts")).unwrap();
    assert!(progress.wait_published(4, Duration::from_secs(20)));
    assert!(!progress.degraded() && !progress.failed());
    let stats = writer.finish().unwrap();
    assert_eq!(
        (stats.files, stats.alert_rows, stats.telemetry_rows),
        (4, 1, 3)
    );
}

/// Writes files of epochs 1 to 4 in every dataset through a writer on `store`, and an older
/// file without an epoch, plus an object that is no archive file.
fn write_epochs(store: Arc<dyn ObjectStore>, config: &ArchiveConfig) {
    let mut writer = ArchiveWriter::open_on(
        Arc::clone(&store),
        config,
        Compression::ZSTD(ZstdLevel::try_new(3).unwrap()),
        (1, 2),
        upload::Backoff::DEFAULT,
    )
    .unwrap();
    for epoch in 1..=4 {
        writer.set_epoch(epoch);
        let ms = BASE_MS + epoch as i64 * HOUR_MS;
        writer.push_telemetry(record("V", ms));
        writer.push_alert(&alert("V", ms));
        writer.push_reject(reject(ms));
        writer.push_features(&features("V", epoch as i64, 0));
        writer.roll_all().unwrap();
    }
    assert_eq!(writer.finish().unwrap().files, 16);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for key in [
        "telemetry/date=2026-11-28/hour=08/part-0-0-mifx2kqo-000000.parquet",
        "alerts/README",
    ] {
        runtime
            .block_on(store.put(&Path::from(key), PutPayload::from_static(b"x")))
            .unwrap();
    }
}

/// Every key in `store`, sorted.
fn keys(store: &dyn ObjectStore) -> Vec<String> {
    use futures::TryStreamExt;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut keys: Vec<String> = runtime
        .block_on(store.list(None).try_collect::<Vec<_>>())
        .unwrap()
        .into_iter()
        .map(|m| m.location.to_string())
        .collect();
    keys.sort();
    keys
}

/// Checks `discard` (from epoch 3) on a store holding [`write_epochs`].
fn check_discard(
    store: &dyn ObjectStore,
    discard: impl Fn(u64) -> Result<Vec<String>, ArchiveError>,
) {
    let before = keys(store);
    assert_eq!(before.len(), 18, "{before:?}");
    let deleted = discard(3).unwrap();
    assert_eq!(deleted.len(), 8, "{deleted:?}");
    assert!(deleted.is_sorted());
    assert!(
        deleted
            .iter()
            .all(|k| file_epoch(k).is_some_and(|e| e >= 3) && k.contains("/part-1-2-")),
        "{deleted:?}"
    );
    for dataset in ["telemetry/", "alerts/", "rejects/", "features_daily/"] {
        assert_eq!(deleted.iter().filter(|k| k.starts_with(dataset)).count(), 2);
    }
    let after = keys(store);
    assert_eq!(after.len(), 10, "{after:?}");
    assert!(after.iter().all(|k| !deleted.contains(k)));
    assert!(
        after
            .iter()
            .any(|k| k.ends_with("-mifx2kqo-000000.parquet"))
    );
    assert!(after.iter().any(|k| k == "alerts/README"));
    assert_eq!(
        after.iter().filter(|k| file_epoch(k).is_some()).count(),
        8,
        "epochs 1 and 2 stay"
    );
    assert!(discard(3).unwrap().is_empty(), "nothing left to discard");
    assert_eq!(discard(0).unwrap().len(), 8);
    assert_eq!(keys(store).len(), 2, "only what has no epoch stays");
}

#[test]
fn discard_from_epoch_removes_the_files_a_restart_replays() {
    let dir = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let empty = config(empty.path());
    let config = config(dir.path());
    let store = open_store(&config.root, &config.s3).unwrap();
    write_epochs(Arc::clone(&store), &config);
    check_discard(store.as_ref(), |epoch| discard_from_epoch(&config, epoch));
    // A root that has no datasets yet.
    assert!(discard_from_epoch(&empty, 0).unwrap().is_empty());
}

/// The S3 server `scripts/services start` runs on loopback (moto, bucket `lienwatch`).
const S3_ENDPOINT: &str = "http://127.0.0.1:9000";

/// A fresh prefix of the `lienwatch` bucket on the loopback S3 server, opened with the
/// test credentials moto accepts.
fn s3_store(label: &str) -> (ArchiveConfig, Arc<dyn ObjectStore>) {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let rest = format!(
        "lienwatch/tests/connectors-{label}-{}-{nanos}",
        std::process::id()
    );
    let config = ArchiveConfig {
        root: format!("s3://{rest}"),
        s3: S3Options {
            endpoint: Some(S3_ENDPOINT.into()),
            region: Some("us-east-1".into()),
            path_style: true,
            ca_file: None,
        },
        row_group_rows: 500,
        ..Default::default()
    };
    let builder = AmazonS3Builder::new()
        .with_access_key_id("test")
        .with_secret_access_key("testtest");
    let store = open_s3_with(builder, &config.root, &rest, &config.s3).unwrap_or_else(|e| {
        panic!(
            "no S3 server at {S3_ENDPOINT} ({e}): run `scripts/services start` (scripts/test does)"
        )
    });
    (config, store)
}

#[test]
fn discard_from_epoch_on_s3() {
    let (config, store) = s3_store("discard");
    write_epochs(Arc::clone(&store), &config);
    check_discard(store.as_ref(), |epoch| {
        discard_in(store.as_ref(), epoch).map_err(|source| ArchiveError::Discard {
            root: config.root.clone(),
            source,
        })
    });
}

#[test]
fn telemetry_times_and_coordinates_are_written_in_their_encodings_and_read_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let mut writer = ArchiveWriter::open(&config(dir.path()), 0, 0).unwrap();
    let mut expected = Vec::new();
    for i in 0..900_i64 {
        let vehicle = format!("V{}", i % 3);
        let mut row = record(&vehicle, BASE_MS + i * 3_917);
        row.reading.seq = (i % 11 != 0).then_some(i as u64 * 3);
        if i % 7 == 0 {
            row.reading.gnss = None;
        } else if let Some(g) = row.reading.gnss.as_mut() {
            g.lat = Some(31.23 + i as f64 * 1e-5);
            g.lon = Some(-121.47 - i as f64 * 3e-6);
        }
        let g = row.reading.gnss.as_ref();
        expected.push((
            vehicle,
            row.reading.ts_ms * 1000,
            row.reading.seq,
            g.and_then(|g| g.lat),
            g.and_then(|g| g.lon),
        ));
        writer.push_telemetry(row);
    }
    writer.finish().unwrap();
    expected.sort_by(|a, b| (&a.0, a.1).cmp(&(&b.0, b.1)));

    let all = files(dir.path());
    assert_eq!(all.len(), 1);
    let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(&all[0]).unwrap()).unwrap();
    for column in builder.metadata().row_group(0).columns() {
        let name = column.column_path().string();
        let encodings = column.encodings().collect::<Vec<_>>();
        match TelemetryColumns::NO_DICTIONARY
            .iter()
            .find(|(n, _)| *n == name)
        {
            Some(&(_, encoding)) => assert!(
                encodings.contains(&encoding) && !encodings.contains(&Encoding::RLE_DICTIONARY),
                "{name}: {encodings:?}"
            ),
            None => assert!(
                column.column_type() == PhysicalType::BOOLEAN
                    || encodings.contains(&Encoding::RLE_DICTIONARY),
                "{name}: {encodings:?}"
            ),
        }
    }
    let batches: Vec<RecordBatch> = builder.build().unwrap().map(Result::unwrap).collect();
    let mut read = Vec::new();
    for batch in &batches {
        let vehicles = batch.column(0).as_string::<i32>();
        let ts = batch.column(3).as_primitive::<TimestampMicrosecondType>();
        let seq = batch.column(5).as_primitive::<UInt64Type>();
        let lat = batch.column(7).as_primitive::<Float64Type>();
        let lon = batch.column(8).as_primitive::<Float64Type>();
        for i in 0..batch.num_rows() {
            read.push((
                vehicles.value(i).to_owned(),
                ts.value(i),
                seq.is_valid(i).then(|| seq.value(i)),
                lat.is_valid(i).then(|| lat.value(i)),
                lon.is_valid(i).then(|| lon.value(i)),
            ));
        }
    }
    assert_eq!(read, expected);
}
