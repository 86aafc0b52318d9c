//! The three archived row types and how each becomes an Arrow [`RecordBatch`] matching its
//! declared schema in [`schemas::arrow`]: the partitioning time, the sort order, a cheap size
//! estimate and the column builders.

use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    BinaryBuilder, BooleanBuilder, Float32Builder, Float64Builder, ListBuilder, StringBuilder,
    TimestampMicrosecondBuilder, UInt16Builder, UInt32Builder, UInt64Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, SchemaRef};
use schemas::{Alert, AlertKind, Phase, Record, Reject, Severity};

/// The archive datasets (SPEC §6), each a top-level directory under the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dataset {
    /// Accepted telemetry, partitioned by `ts`.
    Telemetry,
    /// Alerts, partitioned by `event_time`.
    Alerts,
    /// Rejected messages, partitioned by `received_at`.
    Rejects,
}

impl Dataset {
    /// The directory name of the dataset.
    pub(super) fn dir(self) -> &'static str {
        match self {
            Dataset::Telemetry => "telemetry",
            Dataset::Alerts => "alerts",
            Dataset::Rejects => "rejects",
        }
    }
}

/// A row type the archive buffers and encodes.
pub(super) trait ArchiveRow: Sized {
    /// The dataset the rows go to.
    const DATASET: Dataset;
    /// Leaf column indices the rows are sorted by, declared as Parquet `sorting_columns`.
    const SORT_COLUMNS: &'static [i32];
    /// High-cardinality columns written without dictionary encoding (raw floats, times, bytes).
    const PLAIN_COLUMNS: &'static [&'static str];

    /// The declared Arrow schema of the dataset.
    fn schema() -> SchemaRef;

    /// The event time (epoch ms) that picks the row's date/hour partition.
    fn partition_ms(&self) -> i64;

    /// A cheap estimate of the row's uncompressed Arrow size: a fixed part per row plus the
    /// lengths of its strings.
    fn estimated_bytes(&self) -> u64;

    /// The file order ([`Self::SORT_COLUMNS`]): a string (`""` when the dataset sorts by
    /// time only), then a time in ms.
    fn sort_key(&self) -> (&str, i64);

    /// Builds one batch from `rows`, in order.
    fn to_batch(rows: &[&Self]) -> Result<RecordBatch, ArrowError>;
}

/// Epoch milliseconds as the archive's microseconds; saturates instead of overflowing.
fn micros(ms: i64) -> i64 {
    ms.saturating_mul(1000)
}

/// A string's length as a size estimate.
fn len(s: &str) -> u64 {
    s.len() as u64
}

/// An optional string's length (0 when absent).
fn opt_len(s: Option<&String>) -> u64 {
    s.map_or(0, |s| len(s))
}

/// A builder for the archive's `Timestamp(Microsecond, "UTC")` columns.
fn timestamps(capacity: usize) -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC")
}

impl ArchiveRow for Record {
    const DATASET: Dataset = Dataset::Telemetry;
    const SORT_COLUMNS: &'static [i32] = &[0, 3];
    const PLAIN_COLUMNS: &'static [&'static str] = &[
        "ts",
        "received_at",
        "lat",
        "lon",
        "odometer_km",
        "dist_since_clear_km",
        "dist_mil_km",
        "engine_hours",
    ];

    fn schema() -> SchemaRef {
        Arc::clone(&schemas::arrow::TELEMETRY)
    }

    fn partition_ms(&self) -> i64 {
        self.reading.ts_ms
    }

    fn estimated_bytes(&self) -> u64 {
        // Fixed-width columns, offsets and validity bits come to about 136 bytes a row.
        let r = &self.reading;
        136 + len(&self.vehicle_id)
            + opt_len(self.loan_id.as_ref())
            + len(&r.device_id)
            + opt_len(r.obd.as_ref().and_then(|o| o.vin.as_ref()))
            + r.alarms.iter().map(|a| len(a) + 4).sum::<u64>()
    }

    fn sort_key(&self) -> (&str, i64) {
        (&self.vehicle_id, self.reading.ts_ms)
    }

    fn to_batch(rows: &[&Self]) -> Result<RecordBatch, ArrowError> {
        let n = rows.len();
        let id_bytes: usize = rows.iter().map(|r| r.vehicle_id.len()).sum();
        let mut vehicle_id = StringBuilder::with_capacity(n, id_bytes);
        let mut loan_id = StringBuilder::with_capacity(n, id_bytes);
        let mut device_id = StringBuilder::with_capacity(n, id_bytes);
        let mut ts = timestamps(n);
        let mut received_at = timestamps(n);
        let mut seq = UInt64Builder::with_capacity(n);
        let mut backfill = BooleanBuilder::with_capacity(n);
        let mut lat = Float64Builder::with_capacity(n);
        let mut lon = Float64Builder::with_capacity(n);
        let mut fix = BooleanBuilder::with_capacity(n);
        let mut gnss_speed_kmh = Float32Builder::with_capacity(n);
        let mut heading = Float32Builder::with_capacity(n);
        let mut alt_m = Float32Builder::with_capacity(n);
        let mut hdop = Float32Builder::with_capacity(n);
        let mut sats = UInt16Builder::with_capacity(n);
        let mut ignition = BooleanBuilder::with_capacity(n);
        let mut speed_kmh = Float32Builder::with_capacity(n);
        let mut odometer_km = Float64Builder::with_capacity(n);
        let mut rpm = Float32Builder::with_capacity(n);
        let mut vin = StringBuilder::new();
        let mut mil = BooleanBuilder::with_capacity(n);
        let mut dtc_count = UInt32Builder::with_capacity(n);
        let mut dist_since_clear_km = Float64Builder::with_capacity(n);
        let mut dist_mil_km = Float64Builder::with_capacity(n);
        let mut engine_hours = Float64Builder::with_capacity(n);
        let mut ext_v = Float32Builder::with_capacity(n);
        let mut battery_pct = Float32Builder::with_capacity(n);
        let mut alarms = ListBuilder::with_capacity(StringBuilder::new(), n);

        for &row in rows {
            let r = &row.reading;
            vehicle_id.append_value(&row.vehicle_id);
            loan_id.append_option(row.loan_id.as_deref());
            device_id.append_value(&r.device_id);
            ts.append_value(micros(r.ts_ms));
            received_at.append_value(micros(r.received_at_ms));
            seq.append_option(r.seq);
            backfill.append_value(r.backfill);
            let g = r.gnss.as_ref();
            lat.append_option(g.and_then(|g| g.lat));
            lon.append_option(g.and_then(|g| g.lon));
            fix.append_option(g.map(|g| g.fix));
            gnss_speed_kmh.append_option(g.and_then(|g| g.speed_kmh));
            heading.append_option(g.and_then(|g| g.heading));
            alt_m.append_option(g.and_then(|g| g.alt_m));
            hdop.append_option(g.and_then(|g| g.hdop));
            sats.append_option(g.and_then(|g| g.sats));
            ignition.append_option(r.ignition);
            speed_kmh.append_option(r.speed_kmh);
            odometer_km.append_option(r.odometer_km);
            let o = r.obd.as_ref();
            rpm.append_option(o.and_then(|o| o.rpm));
            vin.append_option(o.and_then(|o| o.vin.as_deref()));
            mil.append_option(o.and_then(|o| o.mil));
            dtc_count.append_option(o.and_then(|o| o.dtc_count));
            dist_since_clear_km.append_option(o.and_then(|o| o.dist_since_clear_km));
            dist_mil_km.append_option(o.and_then(|o| o.dist_mil_km));
            engine_hours.append_option(o.and_then(|o| o.engine_hours));
            let p = r.power.as_ref();
            ext_v.append_option(p.and_then(|p| p.ext_v));
            battery_pct.append_option(p.and_then(|p| p.battery_pct));
            for alarm in &r.alarms {
                alarms.values().append_value(alarm);
            }
            alarms.append(true);
        }

        let columns: Vec<ArrayRef> = vec![
            Arc::new(vehicle_id.finish()),
            Arc::new(loan_id.finish()),
            Arc::new(device_id.finish()),
            Arc::new(ts.finish()),
            Arc::new(received_at.finish()),
            Arc::new(seq.finish()),
            Arc::new(backfill.finish()),
            Arc::new(lat.finish()),
            Arc::new(lon.finish()),
            Arc::new(fix.finish()),
            Arc::new(gnss_speed_kmh.finish()),
            Arc::new(heading.finish()),
            Arc::new(alt_m.finish()),
            Arc::new(hdop.finish()),
            Arc::new(sats.finish()),
            Arc::new(ignition.finish()),
            Arc::new(speed_kmh.finish()),
            Arc::new(odometer_km.finish()),
            Arc::new(rpm.finish()),
            Arc::new(vin.finish()),
            Arc::new(mil.finish()),
            Arc::new(dtc_count.finish()),
            Arc::new(dist_since_clear_km.finish()),
            Arc::new(dist_mil_km.finish()),
            Arc::new(engine_hours.finish()),
            Arc::new(ext_v.finish()),
            Arc::new(battery_pct.finish()),
            Arc::new(alarms.finish()),
        ];
        RecordBatch::try_new(Self::schema(), columns)
    }
}

/// An alert as archived: the [`Alert`] fields with `evidence` already rendered as JSON text,
/// so the writer keeps no reference to the caller's alert.
#[derive(Debug)]
pub(super) struct AlertRow {
    alert_id: String,
    kind: AlertKind,
    phase: Phase,
    severity: Severity,
    vehicle_id: String,
    loan_id: Option<String>,
    device_id: String,
    event_time_ms: i64,
    detected_at_ms: i64,
    lat: Option<f64>,
    lon: Option<f64>,
    backfill: bool,
    evidence: String,
}

impl From<&Alert> for AlertRow {
    fn from(alert: &Alert) -> Self {
        Self {
            alert_id: alert.alert_id.clone(),
            kind: alert.kind,
            phase: alert.phase,
            severity: alert.severity,
            vehicle_id: alert.vehicle_id.clone(),
            loan_id: alert.loan_id.clone(),
            device_id: alert.device_id.clone(),
            event_time_ms: alert.event_time_ms,
            detected_at_ms: alert.detected_at_ms,
            lat: alert.lat,
            lon: alert.lon,
            backfill: alert.backfill,
            evidence: serde_json::to_string(&alert.evidence)
                .expect("a map of string keys to JSON values always serializes"),
        }
    }
}

impl ArchiveRow for AlertRow {
    const DATASET: Dataset = Dataset::Alerts;
    const SORT_COLUMNS: &'static [i32] = &[4, 7];
    const PLAIN_COLUMNS: &'static [&'static str] =
        &["alert_id", "event_time", "detected_at", "lat", "lon"];

    fn schema() -> SchemaRef {
        Arc::clone(&schemas::arrow::ALERTS)
    }

    fn partition_ms(&self) -> i64 {
        self.event_time_ms
    }

    fn estimated_bytes(&self) -> u64 {
        // Seven string offsets, four 8-byte values, validity bits.
        64 + len(&self.alert_id)
            + len(self.kind.as_str())
            + len(self.phase.as_str())
            + len(self.severity.as_str())
            + len(&self.vehicle_id)
            + opt_len(self.loan_id.as_ref())
            + len(&self.device_id)
            + len(&self.evidence)
    }

    fn sort_key(&self) -> (&str, i64) {
        (&self.vehicle_id, self.event_time_ms)
    }

    fn to_batch(rows: &[&Self]) -> Result<RecordBatch, ArrowError> {
        let n = rows.len();
        let mut alert_id = StringBuilder::with_capacity(n, 32 * n);
        let mut kind = StringBuilder::new();
        let mut phase = StringBuilder::new();
        let mut severity = StringBuilder::new();
        let mut vehicle_id = StringBuilder::new();
        let mut loan_id = StringBuilder::new();
        let mut device_id = StringBuilder::new();
        let mut event_time = timestamps(n);
        let mut detected_at = timestamps(n);
        let mut lat = Float64Builder::with_capacity(n);
        let mut lon = Float64Builder::with_capacity(n);
        let mut backfill = BooleanBuilder::with_capacity(n);
        let mut evidence = StringBuilder::new();
        for &row in rows {
            alert_id.append_value(&row.alert_id);
            kind.append_value(row.kind.as_str());
            phase.append_value(row.phase.as_str());
            severity.append_value(row.severity.as_str());
            vehicle_id.append_value(&row.vehicle_id);
            loan_id.append_option(row.loan_id.as_deref());
            device_id.append_value(&row.device_id);
            event_time.append_value(micros(row.event_time_ms));
            detected_at.append_value(micros(row.detected_at_ms));
            lat.append_option(row.lat);
            lon.append_option(row.lon);
            backfill.append_value(row.backfill);
            evidence.append_value(&row.evidence);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(alert_id.finish()),
            Arc::new(kind.finish()),
            Arc::new(phase.finish()),
            Arc::new(severity.finish()),
            Arc::new(vehicle_id.finish()),
            Arc::new(loan_id.finish()),
            Arc::new(device_id.finish()),
            Arc::new(event_time.finish()),
            Arc::new(detected_at.finish()),
            Arc::new(lat.finish()),
            Arc::new(lon.finish()),
            Arc::new(backfill.finish()),
            Arc::new(evidence.finish()),
        ];
        RecordBatch::try_new(Self::schema(), columns)
    }
}

impl ArchiveRow for Reject {
    const DATASET: Dataset = Dataset::Rejects;
    const SORT_COLUMNS: &'static [i32] = &[0];
    const PLAIN_COLUMNS: &'static [&'static str] = &["received_at", "ts", "raw"];

    fn schema() -> SchemaRef {
        Arc::clone(&schemas::arrow::REJECTS)
    }

    fn partition_ms(&self) -> i64 {
        self.received_at_ms
    }

    fn estimated_bytes(&self) -> u64 {
        // Two timestamps, four offsets, validity bits.
        34 + len(&self.reason)
            + len(&self.detail)
            + opt_len(self.device_id.as_ref())
            + self.raw.len() as u64
    }

    fn sort_key(&self) -> (&str, i64) {
        ("", self.received_at_ms)
    }

    fn to_batch(rows: &[&Self]) -> Result<RecordBatch, ArrowError> {
        let n = rows.len();
        let raw_bytes: usize = rows.iter().map(|r| r.raw.len()).sum();
        let mut received_at = timestamps(n);
        let mut reason = StringBuilder::new();
        let mut detail = StringBuilder::new();
        let mut device_id = StringBuilder::new();
        let mut ts = timestamps(n);
        let mut raw = BinaryBuilder::with_capacity(n, raw_bytes);
        for &row in rows {
            received_at.append_value(micros(row.received_at_ms));
            reason.append_value(&row.reason);
            detail.append_value(&row.detail);
            device_id.append_option(row.device_id.as_deref());
            ts.append_option(row.ts_ms.map(micros));
            raw.append_value(&row.raw);
        }
        let columns: Vec<ArrayRef> = vec![
            Arc::new(received_at.finish()),
            Arc::new(reason.finish()),
            Arc::new(detail.finish()),
            Arc::new(device_id.finish()),
            Arc::new(ts.finish()),
            Arc::new(raw.finish()),
        ];
        RecordBatch::try_new(Self::schema(), columns)
    }
}

/// The indices of `rows` in file order: by [`ArchiveRow::sort_key`], ties in arrival order.
///
/// Sorting moves small integer keys, not rows: each distinct key string gets a rank (one
/// hash lookup per row, one sort of the distinct strings), then `(rank, time, index)`
/// triples are sorted, so string comparisons do not chase pointers `n log n` times.
pub(super) fn file_order<R: ArchiveRow>(rows: &[R]) -> Vec<usize> {
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut keys: Vec<(usize, i64, usize)> = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        let (group, time) = row.sort_key();
        let next = ids.len();
        keys.push((*ids.entry(group).or_insert(next), time, index));
    }
    let mut groups: Vec<(&str, usize)> = ids.into_iter().collect();
    groups.sort_unstable();
    let mut rank = vec![0; groups.len()];
    for (r, &(_, id)) in groups.iter().enumerate() {
        rank[id] = r;
    }
    for key in &mut keys {
        key.0 = rank[key.0];
    }
    keys.sort_unstable();
    keys.into_iter().map(|(_, _, index)| index).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::cast::AsArray;
    use arrow_array::types::TimestampMicrosecondType;
    use schemas::{Gnss, Reading};

    fn record(vehicle: &str, ts_ms: i64) -> Record {
        Record {
            vehicle_id: vehicle.into(),
            loan_id: None,
            class: Default::default(),
            registered: false,
            ingest_seq: 0,
            reading: Box::new(Reading {
                device_id: format!("D-{vehicle}"),
                ts_ms,
                gnss: Some(Gnss {
                    lat: Some(31.0),
                    lon: None,
                    fix: true,
                    ..Default::default()
                }),
                alarms: vec!["tow".into(), "custom".into()],
                received_at_ms: ts_ms + 5,
                ..Default::default()
            }),
        }
    }

    #[test]
    fn telemetry_batch_matches_schema_and_values() {
        let rows = vec![
            record("B", 2),
            record("A", 9),
            record("A", 1),
            record("A", 1),
        ];
        let order = file_order(&rows);
        assert_eq!(order, [2, 3, 1, 0], "ties keep arrival order");
        let sorted: Vec<&Record> = order.iter().map(|&i| &rows[i]).collect();
        let batch = Record::to_batch(&sorted).unwrap();
        assert_eq!(batch.schema(), Record::schema());
        let ids = batch.column(0).as_string::<i32>();
        assert_eq!(
            ids.iter().flatten().collect::<Vec<_>>(),
            vec!["A", "A", "A", "B"]
        );
        let ts = batch.column(3).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.values().to_vec(), vec![1000, 1000, 9000, 2000]);
        assert!(batch.column(8).is_null(0), "lon absent");
        assert!(batch.column(9).is_valid(0), "fix present with gnss");
        let alarms = batch.column(27).as_list::<i32>();
        assert_eq!(alarms.value(0).len(), 2);
    }

    #[test]
    fn estimates_grow_with_strings() {
        let small = record("A", 0);
        let mut big = record("A", 0);
        big.reading.alarms.push("x".repeat(100));
        assert!(big.estimated_bytes() >= small.estimated_bytes() + 100);
    }
}
