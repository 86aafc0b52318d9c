//! The four archived datasets and how their rows are buffered: each open partition appends
//! every pushed row straight into columns matching the dataset's declared schema in
//! [`schemas::arrow`] (Arrow builders, or plain vectors for telemetry's numbers, times and
//! flags), so the writer keeps about 100 bytes a telemetry row instead of the row itself. At
//! roll time the columns become a [`RecordBatch`] in arrival order and [`file_order`] gives the
//! permutation that sorts it into file order.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use arrow_array::builder::{
    ArrayBuilder, BinaryBuilder, BooleanBuilder, Date32Builder, Float64Builder, ListBuilder,
    StringBuilder, TimestampMicrosecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Float32Type, Float64Type, TimestampMicrosecondType, UInt16Type, UInt32Type,
    UInt64Type,
};
use arrow_array::{
    Array, ArrayRef, ArrowPrimitiveType, BooleanArray, PrimitiveArray, RecordBatch, StringArray,
    UInt64Array,
};
use arrow_schema::{ArrowError, DataType, SchemaRef};
use chrono::{DateTime, NaiveDate};
use parquet::basic::Encoding;
use schemas::time::{DAY_MS, HOUR_MS};
use schemas::{Alert, DailyFeatures, Record, Reject};

/// A local day ends at most this long after the UTC midnight that ends the same date: in the
/// westernmost zone, UTC−12. Once the pipeline clock is that far past a date, every vehicle's
/// day of that date has closed and only revisions (late data) can follow.
const WESTMOST_OFFSET_MS: i64 = 12 * HOUR_MS;

/// The archive datasets (SPEC §6), each a top-level directory under the root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Dataset {
    /// Accepted telemetry, partitioned by the UTC date and hour of `ts`.
    Telemetry,
    /// Alerts, partitioned by the UTC date and hour of `event_time`.
    Alerts,
    /// Rejected messages, partitioned by the UTC date and hour of `received_at`.
    Rejects,
    /// Daily features, partitioned by their (local) `date` only.
    FeaturesDaily,
}

impl Dataset {
    /// Every dataset, in the writer's order.
    pub(super) const ALL: [Dataset; 4] = [
        Dataset::Telemetry,
        Dataset::Alerts,
        Dataset::Rejects,
        Dataset::FeaturesDaily,
    ];

    /// The directory name of the dataset.
    pub(super) fn dir(self) -> &'static str {
        match self {
            Dataset::Telemetry => "telemetry",
            Dataset::Alerts => "alerts",
            Dataset::Rejects => "rejects",
            Dataset::FeaturesDaily => "features_daily",
        }
    }

    /// Length of one partition in ms: partition `key` holds the rows whose
    /// [`Columns::partition_ms`] is in `key * span .. (key + 1) * span`.
    pub(super) fn span_ms(self) -> i64 {
        match self {
            Dataset::FeaturesDaily => DAY_MS,
            Dataset::Telemetry | Dataset::Alerts | Dataset::Rejects => HOUR_MS,
        }
    }

    /// The hive partition directories of partition `key`: `date=YYYY-MM-DD/hour=HH`, or
    /// `date=YYYY-MM-DD` for the daily dataset (SPEC §6).
    pub(super) fn partition_dirs(self, key: i64) -> String {
        let start =
            DateTime::from_timestamp_millis(key.saturating_mul(self.span_ms())).unwrap_or_default();
        match self {
            Dataset::FeaturesDaily => format!("date={}", start.format("%Y-%m-%d")),
            Dataset::Telemetry | Dataset::Alerts | Dataset::Rejects => {
                format!(
                    "date={}/hour={}",
                    start.format("%Y-%m-%d"),
                    start.format("%H")
                )
            }
        }
    }

    /// Whether the pipeline clock at `clock_ms` has passed partition `key`: whatever arrives
    /// for it from now on is late data, so its buffered rows can be written. `rejects` are
    /// partitioned by arrival, not event time, so the clock never closes them.
    pub(super) fn closed_at(self, key: i64, clock_ms: i64) -> bool {
        let end = (key + 1).saturating_mul(self.span_ms());
        match self {
            Dataset::Telemetry | Dataset::Alerts => end <= clock_ms,
            Dataset::FeaturesDaily => end.saturating_add(WESTMOST_OFFSET_MS) <= clock_ms,
            Dataset::Rejects => false,
        }
    }
}

/// The column builders of one open partition of a dataset: rows are appended as they are
/// pushed and become one batch, in arrival order, when the partition is rolled.
pub(super) trait Columns {
    /// The row type pushed into the dataset.
    type Row;
    /// The dataset the rows go to.
    const DATASET: Dataset;
    /// Leaf column indices the rows are sorted by, declared as Parquet `sorting_columns`:
    /// an optional string column, then a `Timestamp(Microsecond)` column or a `Date32` and a
    /// `UInt32` column (see [`file_order`]).
    const SORT_COLUMNS: &'static [i32];
    /// High-cardinality columns written without dictionary encoding (times, coordinates,
    /// counters, raw bytes), each with the encoding that suits its values.
    const NO_DICTIONARY: &'static [(&'static str, Encoding)];

    /// The declared Arrow schema of the dataset.
    fn schema() -> SchemaRef;

    /// A time (epoch ms) in the row's partition (see [`Dataset::span_ms`]): its event or
    /// arrival time, or the start of its day.
    fn partition_ms(row: &Self::Row) -> i64;

    /// Empty builders with room for about `rows` rows.
    fn with_capacity(rows: usize) -> Self;

    /// Appends `row`; returns a cheap estimate of its uncompressed Arrow size: a fixed part per
    /// row plus the lengths of its strings.
    fn push(&mut self, row: &Self::Row) -> u64;

    /// Rows appended so far.
    fn len(&self) -> usize;

    /// The appended rows as one batch, in arrival order.
    fn finish(self) -> Result<RecordBatch, ArrowError>;
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
fn opt_len(s: Option<&str>) -> u64 {
    s.map_or(0, len)
}

/// A builder for the archive's `Timestamp(Microsecond, "UTC")` columns.
fn timestamps(capacity: usize) -> TimestampMicrosecondBuilder {
    TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC")
}

/// A string builder for `rows` values of about `bytes_per_row` bytes each.
fn strings(rows: usize, bytes_per_row: usize) -> StringBuilder {
    StringBuilder::with_capacity(rows, rows.saturating_mul(bytes_per_row))
}

/// A nullable primitive column being filled, its values and validity in plain vectors: a row
/// takes a few instructions where Arrow's builder, whose `append_option` is not inlined and
/// keeps validity as bits, takes ~50. Telemetry fills 17 such columns a reading (a byte of
/// validity per row instead of a bit while the partition is open); its columns that always
/// have a value (times, `backfill`) are plain vectors without validity.
struct Nullable<T: ArrowPrimitiveType> {
    values: Vec<T::Native>,
    valid: Vec<bool>,
}

impl<T: ArrowPrimitiveType> Nullable<T> {
    fn with_capacity(rows: usize) -> Self {
        Self {
            values: Vec::with_capacity(rows),
            valid: Vec::with_capacity(rows),
        }
    }

    fn append_option(&mut self, value: Option<T::Native>) {
        self.values.push(value.unwrap_or_default());
        self.valid.push(value.is_some());
    }

    /// The column as an array; without a validity buffer when every value is there, as
    /// Arrow's builder makes it.
    fn finish(self) -> PrimitiveArray<T> {
        let nulls = self.valid.contains(&false).then(|| self.valid.into());
        PrimitiveArray::new(self.values.into(), nulls)
    }
}

/// A column of UTC timestamps (microseconds) that always have a value.
fn utc_micros(values: Vec<i64>) -> PrimitiveArray<TimestampMicrosecondType> {
    PrimitiveArray::new(values.into(), None).with_timezone("UTC")
}

/// A nullable Boolean column being filled, for the same reason as [`Nullable`].
struct NullableBool(Vec<Option<bool>>);

impl NullableBool {
    fn with_capacity(rows: usize) -> Self {
        Self(Vec::with_capacity(rows))
    }

    fn append_option(&mut self, value: Option<bool>) {
        self.0.push(value);
    }

    fn finish(self) -> BooleanArray {
        BooleanArray::from(self.0)
    }
}

/// Builders of the `telemetry` columns, in [`schemas::arrow::TELEMETRY`] order.
pub(super) struct TelemetryColumns {
    vehicle_id: StringBuilder,
    loan_id: StringBuilder,
    device_id: StringBuilder,
    ts: Vec<i64>,
    received_at: Vec<i64>,
    seq: Nullable<UInt64Type>,
    backfill: Vec<bool>,
    lat: Nullable<Float64Type>,
    lon: Nullable<Float64Type>,
    fix: NullableBool,
    gnss_speed_kmh: Nullable<Float32Type>,
    heading: Nullable<Float32Type>,
    alt_m: Nullable<Float32Type>,
    hdop: Nullable<Float32Type>,
    sats: Nullable<UInt16Type>,
    ignition: NullableBool,
    speed_kmh: Nullable<Float32Type>,
    odometer_km: Nullable<Float64Type>,
    rpm: Nullable<Float32Type>,
    vin: StringBuilder,
    mil: NullableBool,
    dtc_count: Nullable<UInt32Type>,
    dist_since_clear_km: Nullable<Float64Type>,
    dist_mil_km: Nullable<Float64Type>,
    engine_hours: Nullable<Float64Type>,
    ext_v: Nullable<Float32Type>,
    battery_pct: Nullable<Float32Type>,
    alarms: ListBuilder<StringBuilder>,
}

impl Columns for TelemetryColumns {
    type Row = Record;
    const DATASET: Dataset = Dataset::Telemetry;
    const SORT_COLUMNS: &'static [i32] = &[0, 3];
    /// Sorted by vehicle and time, a vehicle's times and sequence numbers grow in small
    /// steps (delta-packed to a few bits each) and its coordinates share their leading bytes
    /// (split into byte streams, so that zstd finds them): the files shrink by 18 %.
    /// Odometers and counters repeat their value while parked, which zstd finds as it is.
    const NO_DICTIONARY: &'static [(&'static str, Encoding)] = &[
        ("ts", Encoding::DELTA_BINARY_PACKED),
        ("received_at", Encoding::DELTA_BINARY_PACKED),
        ("seq", Encoding::DELTA_BINARY_PACKED),
        ("lat", Encoding::BYTE_STREAM_SPLIT),
        ("lon", Encoding::BYTE_STREAM_SPLIT),
        ("odometer_km", Encoding::PLAIN),
        ("dist_since_clear_km", Encoding::PLAIN),
        ("dist_mil_km", Encoding::PLAIN),
        ("engine_hours", Encoding::PLAIN),
    ];

    fn schema() -> SchemaRef {
        Arc::clone(&schemas::arrow::TELEMETRY)
    }

    fn partition_ms(row: &Record) -> i64 {
        row.reading.ts_ms
    }

    fn with_capacity(n: usize) -> Self {
        Self {
            vehicle_id: strings(n, 12),
            loan_id: strings(n, 12),
            device_id: strings(n, 15),
            ts: Vec::with_capacity(n),
            received_at: Vec::with_capacity(n),
            seq: Nullable::with_capacity(n),
            backfill: Vec::with_capacity(n),
            lat: Nullable::with_capacity(n),
            lon: Nullable::with_capacity(n),
            fix: NullableBool::with_capacity(n),
            gnss_speed_kmh: Nullable::with_capacity(n),
            heading: Nullable::with_capacity(n),
            alt_m: Nullable::with_capacity(n),
            hdop: Nullable::with_capacity(n),
            sats: Nullable::with_capacity(n),
            ignition: NullableBool::with_capacity(n),
            speed_kmh: Nullable::with_capacity(n),
            odometer_km: Nullable::with_capacity(n),
            rpm: Nullable::with_capacity(n),
            vin: strings(n, 17),
            mil: NullableBool::with_capacity(n),
            dtc_count: Nullable::with_capacity(n),
            dist_since_clear_km: Nullable::with_capacity(n),
            dist_mil_km: Nullable::with_capacity(n),
            engine_hours: Nullable::with_capacity(n),
            ext_v: Nullable::with_capacity(n),
            battery_pct: Nullable::with_capacity(n),
            alarms: ListBuilder::with_capacity(StringBuilder::new(), n),
        }
    }

    fn push(&mut self, row: &Record) -> u64 {
        let r = &*row.reading;
        self.vehicle_id.append_value(&row.vehicle_id);
        self.loan_id.append_option(row.loan_id.as_deref());
        self.device_id.append_value(&r.device_id);
        self.ts.push(micros(r.ts_ms));
        self.received_at.push(micros(r.received_at_ms));
        self.seq.append_option(r.seq);
        self.backfill.push(r.backfill);
        let g = r.gnss.as_ref();
        self.lat.append_option(g.and_then(|g| g.lat));
        self.lon.append_option(g.and_then(|g| g.lon));
        self.fix.append_option(g.map(|g| g.fix));
        self.gnss_speed_kmh
            .append_option(g.and_then(|g| g.speed_kmh));
        self.heading.append_option(g.and_then(|g| g.heading));
        self.alt_m.append_option(g.and_then(|g| g.alt_m));
        self.hdop.append_option(g.and_then(|g| g.hdop));
        self.sats.append_option(g.and_then(|g| g.sats));
        self.ignition.append_option(r.ignition);
        self.speed_kmh.append_option(r.speed_kmh);
        self.odometer_km.append_option(r.odometer_km);
        let o = r.obd.as_ref();
        let vin = o.and_then(|o| o.vin.as_ref());
        self.rpm.append_option(o.and_then(|o| o.rpm));
        self.vin.append_option(vin);
        self.mil.append_option(o.and_then(|o| o.mil));
        self.dtc_count.append_option(o.and_then(|o| o.dtc_count));
        self.dist_since_clear_km
            .append_option(o.and_then(|o| o.dist_since_clear_km));
        self.dist_mil_km
            .append_option(o.and_then(|o| o.dist_mil_km));
        self.engine_hours
            .append_option(o.and_then(|o| o.engine_hours));
        let p = r.power.as_ref();
        self.ext_v.append_option(p.and_then(|p| p.ext_v));
        self.battery_pct
            .append_option(p.and_then(|p| p.battery_pct));
        let mut alarm_bytes = 0;
        for alarm in &r.alarms {
            self.alarms.values().append_value(alarm);
            alarm_bytes += len(alarm) + 4;
        }
        self.alarms.append(true);
        // A row's fixed-width values (110 bytes), the validity bytes of the nullable columns
        // (17) and flags (4), and the string and list offsets (20).
        151 + len(&row.vehicle_id)
            + opt_len(row.loan_id.as_deref())
            + len(&r.device_id)
            + opt_len(vin.map(String::as_str))
            + alarm_bytes
    }

    fn len(&self) -> usize {
        self.ts.len()
    }

    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.vehicle_id.finish()),
            Arc::new(self.loan_id.finish()),
            Arc::new(self.device_id.finish()),
            Arc::new(utc_micros(self.ts)),
            Arc::new(utc_micros(self.received_at)),
            Arc::new(self.seq.finish()),
            Arc::new(BooleanArray::from(self.backfill)),
            Arc::new(self.lat.finish()),
            Arc::new(self.lon.finish()),
            Arc::new(self.fix.finish()),
            Arc::new(self.gnss_speed_kmh.finish()),
            Arc::new(self.heading.finish()),
            Arc::new(self.alt_m.finish()),
            Arc::new(self.hdop.finish()),
            Arc::new(self.sats.finish()),
            Arc::new(self.ignition.finish()),
            Arc::new(self.speed_kmh.finish()),
            Arc::new(self.odometer_km.finish()),
            Arc::new(self.rpm.finish()),
            Arc::new(self.vin.finish()),
            Arc::new(self.mil.finish()),
            Arc::new(self.dtc_count.finish()),
            Arc::new(self.dist_since_clear_km.finish()),
            Arc::new(self.dist_mil_km.finish()),
            Arc::new(self.engine_hours.finish()),
            Arc::new(self.ext_v.finish()),
            Arc::new(self.battery_pct.finish()),
            Arc::new(self.alarms.finish()),
        ];
        RecordBatch::try_new(Self::schema(), columns)
    }
}

/// Builders of the `alerts` columns, in [`schemas::arrow::ALERTS`] order; `evidence` is
/// rendered as JSON text on push, so the writer keeps no reference to the caller's alert.
pub(super) struct AlertColumns {
    alert_id: StringBuilder,
    kind: StringBuilder,
    phase: StringBuilder,
    severity: StringBuilder,
    vehicle_id: StringBuilder,
    loan_id: StringBuilder,
    device_id: StringBuilder,
    event_time: TimestampMicrosecondBuilder,
    detected_at: TimestampMicrosecondBuilder,
    lat: Float64Builder,
    lon: Float64Builder,
    backfill: BooleanBuilder,
    evidence: StringBuilder,
}

impl Columns for AlertColumns {
    type Row = Alert;
    const DATASET: Dataset = Dataset::Alerts;
    const SORT_COLUMNS: &'static [i32] = &[4, 7];
    const NO_DICTIONARY: &'static [(&'static str, Encoding)] = &[
        ("alert_id", Encoding::PLAIN),
        ("event_time", Encoding::PLAIN),
        ("detected_at", Encoding::PLAIN),
        ("lat", Encoding::PLAIN),
        ("lon", Encoding::PLAIN),
    ];

    fn schema() -> SchemaRef {
        Arc::clone(&schemas::arrow::ALERTS)
    }

    fn partition_ms(row: &Alert) -> i64 {
        row.event_time_ms
    }

    fn with_capacity(n: usize) -> Self {
        Self {
            alert_id: strings(n, 32),
            kind: strings(n, 12),
            phase: strings(n, 6),
            severity: strings(n, 6),
            vehicle_id: strings(n, 12),
            loan_id: strings(n, 12),
            device_id: strings(n, 15),
            event_time: timestamps(n),
            detected_at: timestamps(n),
            lat: Float64Builder::with_capacity(n),
            lon: Float64Builder::with_capacity(n),
            backfill: BooleanBuilder::with_capacity(n),
            evidence: strings(n, 64),
        }
    }

    fn push(&mut self, row: &Alert) -> u64 {
        let evidence = serde_json::to_string(&row.evidence)
            .expect("a map of string keys to JSON values always serializes");
        self.alert_id.append_value(&row.alert_id);
        self.kind.append_value(row.kind.as_str());
        self.phase.append_value(row.phase.as_str());
        self.severity.append_value(row.severity.as_str());
        self.vehicle_id.append_value(&row.vehicle_id);
        self.loan_id.append_option(row.loan_id.as_deref());
        self.device_id.append_value(&row.device_id);
        self.event_time.append_value(micros(row.event_time_ms));
        self.detected_at.append_value(micros(row.detected_at_ms));
        self.lat.append_option(row.lat);
        self.lon.append_option(row.lon);
        self.backfill.append_value(row.backfill);
        self.evidence.append_value(&evidence);
        // Seven string offsets, four 8-byte values, validity bits.
        64 + len(&row.alert_id)
            + len(row.kind.as_str())
            + len(row.phase.as_str())
            + len(row.severity.as_str())
            + len(&row.vehicle_id)
            + opt_len(row.loan_id.as_deref())
            + len(&row.device_id)
            + len(&evidence)
    }

    fn len(&self) -> usize {
        self.event_time.len()
    }

    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.alert_id.finish()),
            Arc::new(self.kind.finish()),
            Arc::new(self.phase.finish()),
            Arc::new(self.severity.finish()),
            Arc::new(self.vehicle_id.finish()),
            Arc::new(self.loan_id.finish()),
            Arc::new(self.device_id.finish()),
            Arc::new(self.event_time.finish()),
            Arc::new(self.detected_at.finish()),
            Arc::new(self.lat.finish()),
            Arc::new(self.lon.finish()),
            Arc::new(self.backfill.finish()),
            Arc::new(self.evidence.finish()),
        ];
        RecordBatch::try_new(Self::schema(), columns)
    }
}

/// Builders of the `rejects` columns, in [`schemas::arrow::REJECTS`] order.
pub(super) struct RejectColumns {
    received_at: TimestampMicrosecondBuilder,
    reason: StringBuilder,
    detail: StringBuilder,
    device_id: StringBuilder,
    ts: TimestampMicrosecondBuilder,
    raw: BinaryBuilder,
}

impl Columns for RejectColumns {
    type Row = Reject;
    const DATASET: Dataset = Dataset::Rejects;
    const SORT_COLUMNS: &'static [i32] = &[0];
    const NO_DICTIONARY: &'static [(&'static str, Encoding)] = &[
        ("received_at", Encoding::PLAIN),
        ("ts", Encoding::PLAIN),
        ("raw", Encoding::PLAIN),
    ];

    fn schema() -> SchemaRef {
        Arc::clone(&schemas::arrow::REJECTS)
    }

    fn partition_ms(row: &Reject) -> i64 {
        row.received_at_ms
    }

    fn with_capacity(n: usize) -> Self {
        Self {
            received_at: timestamps(n),
            reason: strings(n, 16),
            detail: strings(n, 32),
            device_id: strings(n, 15),
            ts: timestamps(n),
            raw: BinaryBuilder::with_capacity(n, n.saturating_mul(64)),
        }
    }

    fn push(&mut self, row: &Reject) -> u64 {
        self.received_at.append_value(micros(row.received_at_ms));
        self.reason.append_value(&row.reason);
        self.detail.append_value(&row.detail);
        self.device_id.append_option(row.device_id.as_deref());
        self.ts.append_option(row.ts_ms.map(micros));
        self.raw.append_value(&row.raw);
        // Two timestamps, four offsets, validity bits.
        34 + len(&row.reason)
            + len(&row.detail)
            + opt_len(row.device_id.as_deref())
            + row.raw.len() as u64
    }

    fn len(&self) -> usize {
        self.received_at.len()
    }

    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.received_at.finish()),
            Arc::new(self.reason.finish()),
            Arc::new(self.detail.finish()),
            Arc::new(self.device_id.finish()),
            Arc::new(self.ts.finish()),
            Arc::new(self.raw.finish()),
        ];
        RecordBatch::try_new(Self::schema(), columns)
    }
}

/// Days since the epoch of a row's local `date` (its `Date32` value and partition). A `date`
/// that is not `YYYY-MM-DD` (which the fleet never emits) falls back to the UTC day of
/// `first_ts`, within a day of it, so the row is still archived.
fn epoch_days(row: &DailyFeatures) -> i32 {
    NaiveDate::parse_from_str(&row.date, "%Y-%m-%d").map_or_else(
        |_| i32::try_from(row.first_ts.div_euclid(DAY_MS)).unwrap_or_default(),
        |date| date.to_epoch_days(),
    )
}

/// Builders of the `features_daily` columns, in [`schemas::arrow::FEATURES_DAILY`] order.
pub(super) struct FeaturesColumns {
    vehicle_id: StringBuilder,
    loan_id: StringBuilder,
    date: Date32Builder,
    revision: UInt32Builder,
    odometer_start_km: Float64Builder,
    odometer_end_km: Float64Builder,
    odometer_km: Float64Builder,
    gnss_km: Float64Builder,
    driving_minutes: Float64Builder,
    trips: UInt32Builder,
    max_speed_kmh: Float64Builder,
    harsh_accel: UInt32Builder,
    harsh_brake: UInt32Builder,
    night_km: Float64Builder,
    mil_km: Float64Builder,
    dtc_count_max: UInt32Builder,
    messages: UInt64Builder,
    first_ts: TimestampMicrosecondBuilder,
    last_ts: TimestampMicrosecondBuilder,
    km_7d: Float64Builder,
    km_30d: Float64Builder,
    projected_annual_km: Float64Builder,
    odo_gnss_ratio_30d: Float64Builder,
}

impl Columns for FeaturesColumns {
    type Row = DailyFeatures;
    const DATASET: Dataset = Dataset::FeaturesDaily;
    /// `(vehicle_id, date, revision)`: a vehicle's days in order, revisions after the row
    /// they revise.
    const SORT_COLUMNS: &'static [i32] = &[0, 2, 3];
    const NO_DICTIONARY: &'static [(&'static str, Encoding)] = &[
        ("odometer_start_km", Encoding::PLAIN),
        ("odometer_end_km", Encoding::PLAIN),
        ("first_ts", Encoding::PLAIN),
        ("last_ts", Encoding::PLAIN),
    ];

    fn schema() -> SchemaRef {
        Arc::clone(&schemas::arrow::FEATURES_DAILY)
    }

    fn partition_ms(row: &DailyFeatures) -> i64 {
        i64::from(epoch_days(row)) * DAY_MS
    }

    fn with_capacity(n: usize) -> Self {
        let floats = || Float64Builder::with_capacity(n);
        let counts = || UInt32Builder::with_capacity(n);
        Self {
            vehicle_id: strings(n, 12),
            loan_id: strings(n, 12),
            date: Date32Builder::with_capacity(n),
            revision: counts(),
            odometer_start_km: floats(),
            odometer_end_km: floats(),
            odometer_km: floats(),
            gnss_km: floats(),
            driving_minutes: floats(),
            trips: counts(),
            max_speed_kmh: floats(),
            harsh_accel: counts(),
            harsh_brake: counts(),
            night_km: floats(),
            mil_km: floats(),
            dtc_count_max: counts(),
            messages: UInt64Builder::with_capacity(n),
            first_ts: timestamps(n),
            last_ts: timestamps(n),
            km_7d: floats(),
            km_30d: floats(),
            projected_annual_km: floats(),
            odo_gnss_ratio_30d: floats(),
        }
    }

    fn push(&mut self, row: &DailyFeatures) -> u64 {
        self.vehicle_id.append_value(&row.vehicle_id);
        self.loan_id.append_option(row.loan_id.as_deref());
        self.date.append_value(epoch_days(row));
        self.revision.append_value(row.revision);
        self.odometer_start_km.append_option(row.odometer_start_km);
        self.odometer_end_km.append_option(row.odometer_end_km);
        self.odometer_km.append_option(row.odometer_km);
        self.gnss_km.append_value(row.gnss_km);
        self.driving_minutes.append_value(row.driving_minutes);
        self.trips.append_value(row.trips);
        self.max_speed_kmh.append_option(row.max_speed_kmh);
        self.harsh_accel.append_value(row.harsh_accel);
        self.harsh_brake.append_value(row.harsh_brake);
        self.night_km.append_value(row.night_km);
        self.mil_km.append_value(row.mil_km);
        self.dtc_count_max.append_option(row.dtc_count_max);
        self.messages.append_value(row.messages);
        self.first_ts.append_value(micros(row.first_ts));
        self.last_ts.append_value(micros(row.last_ts));
        self.km_7d.append_value(row.km_7d);
        self.km_30d.append_value(row.km_30d);
        self.projected_annual_km
            .append_value(row.projected_annual_km);
        self.odo_gnss_ratio_30d
            .append_option(row.odo_gnss_ratio_30d);
        // Twelve floats, four 32-bit and three 64-bit integers, the date, two string offsets,
        // validity bits.
        156 + len(&row.vehicle_id) + opt_len(row.loan_id.as_deref())
    }

    fn len(&self) -> usize {
        self.date.len()
    }

    fn finish(mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.vehicle_id.finish()),
            Arc::new(self.loan_id.finish()),
            Arc::new(self.date.finish()),
            Arc::new(self.revision.finish()),
            Arc::new(self.odometer_start_km.finish()),
            Arc::new(self.odometer_end_km.finish()),
            Arc::new(self.odometer_km.finish()),
            Arc::new(self.gnss_km.finish()),
            Arc::new(self.driving_minutes.finish()),
            Arc::new(self.trips.finish()),
            Arc::new(self.max_speed_kmh.finish()),
            Arc::new(self.harsh_accel.finish()),
            Arc::new(self.harsh_brake.finish()),
            Arc::new(self.night_km.finish()),
            Arc::new(self.mil_km.finish()),
            Arc::new(self.dtc_count_max.finish()),
            Arc::new(self.messages.finish()),
            Arc::new(self.first_ts.finish()),
            Arc::new(self.last_ts.finish()),
            Arc::new(self.km_7d.finish()),
            Arc::new(self.km_30d.finish()),
            Arc::new(self.projected_annual_km.finish()),
            Arc::new(self.odo_gnss_ratio_30d.finish()),
        ];
        RecordBatch::try_new(Self::schema(), columns)
    }
}

/// The permutation that puts `batch` (rows in arrival order) in file order: by the
/// `sort_columns` (an optional string column, then the columns of [`ordered_numbers`]), ties
/// in arrival order; `None` when the rows already are in file order.
///
/// Sorting moves small fixed-size keys, not rows: each string becomes a `u128` with the same
/// order (the string's bytes and length packed when it has at most [`PACKED`] bytes, else its
/// rank among the distinct strings), the other columns one `i64`, then
/// `(string key, number, index)` triples are sorted, so string comparisons do not chase
/// pointers `n log n` times.
pub(super) fn file_order(batch: &RecordBatch, sort_columns: &[i32]) -> Option<UInt64Array> {
    let (group, numeric) = match sort_columns.split_first() {
        Some((&first, rest)) if batch.column(first as usize).data_type() == &DataType::Utf8 => {
            (Some(first), rest)
        }
        _ => (None, sort_columns),
    };
    let numbers = ordered_numbers(batch, numeric);
    let mut keys: Vec<(u128, i64, u64)> = match group {
        None => numbers.iter().zip(0..).map(|(&t, i)| (0, t, i)).collect(),
        Some(group) => {
            let strings = batch.column(group as usize).as_string::<i32>();
            string_keys(strings)
                .into_iter()
                .zip(numbers.iter())
                .zip(0..)
                .map(|((g, &t), i)| (g, t, i))
                .collect()
        }
    };
    if keys.is_sorted() {
        return None;
    }
    keys.sort_unstable();
    Some(keys.into_iter().map(|(_, _, index)| index).collect())
}

/// The non-string sort `columns` as one `i64` per row with the same order: a
/// `Timestamp(Microsecond)` column as it is (borrowed, the common case), or a `Date32` and a
/// `UInt32` column packed as `day << 32 | n` (the signed day in the high half keeps the order,
/// the unsigned `n` fills the low half).
///
/// # Panics
///
/// On any other column list: the datasets' sort columns are constants, checked by the tests.
fn ordered_numbers<'a>(batch: &'a RecordBatch, columns: &[i32]) -> Cow<'a, [i64]> {
    let column = |index: i32| batch.column(index as usize);
    match *columns {
        [time] => Cow::Borrowed(
            column(time)
                .as_primitive::<TimestampMicrosecondType>()
                .values(),
        ),
        [day, n] => {
            let days = column(day).as_primitive::<Date32Type>().values();
            let ns = column(n).as_primitive::<UInt32Type>().values();
            Cow::Owned(
                days.iter()
                    .zip(ns.iter())
                    .map(|(&day, &n)| (i64::from(day) << 32) | i64::from(n))
                    .collect(),
            )
        }
        _ => unreachable!("sort columns end in a timestamp or a date and a count"),
    }
}

/// Strings of at most this many bytes are packed into their sort key.
const PACKED: usize = 15;

/// One `u128` per string, ordered as the strings are (nulls as `""`).
///
/// When every string has at most [`PACKED`] bytes, the key is the bytes zero-padded to 15,
/// big-endian, then the length: zero padding alone would tie `"a"` and `"a\0"`, the length
/// breaks such ties the way string order does (a prefix first). Otherwise each distinct string
/// gets its rank (one hash lookup per row, one sort of the distinct strings).
fn string_keys(strings: &StringArray) -> Vec<u128> {
    let offsets = strings.value_offsets();
    let bytes = strings.value_data();
    let longest = offsets.windows(2).map(|w| w[1] - w[0]).max().unwrap_or(0);
    if longest as usize <= PACKED {
        return offsets
            .windows(2)
            .map(|w| {
                let value = &bytes[w[0] as usize..w[1] as usize];
                let mut key = [0; 16];
                key[..value.len()].copy_from_slice(value);
                key[PACKED] = value.len() as u8;
                u128::from_be_bytes(key)
            })
            .collect();
    }
    let mut ids: HashMap<&str, usize> = HashMap::new();
    let mut keys: Vec<u128> = Vec::with_capacity(strings.len());
    for index in 0..strings.len() {
        let next = ids.len();
        keys.push(*ids.entry(strings.value(index)).or_insert(next) as u128);
    }
    let mut groups: Vec<(&str, usize)> = ids.into_iter().collect();
    groups.sort_unstable();
    let mut rank = vec![0; groups.len()];
    for (r, &(_, id)) in groups.iter().enumerate() {
        rank[id] = r as u128;
    }
    for key in &mut keys {
        *key = rank[*key as usize];
    }
    keys
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_select::take::take_record_batch;
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

    /// `rows` as one batch, in the given order.
    fn batch(rows: &[Record]) -> RecordBatch {
        let mut columns = TelemetryColumns::with_capacity(0);
        for row in rows {
            columns.push(row);
        }
        columns.finish().unwrap()
    }

    /// `batch` in file order, as the writer encodes it.
    fn sorted(batch: &RecordBatch, sort_columns: &[i32]) -> RecordBatch {
        match file_order(batch, sort_columns) {
            Some(order) => take_record_batch(batch, &order).unwrap(),
            None => batch.clone(),
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
        let arrival = batch(&rows);
        let order = file_order(&arrival, TelemetryColumns::SORT_COLUMNS).unwrap();
        assert_eq!(
            order.values().to_vec(),
            [2, 3, 1, 0],
            "ties keep arrival order"
        );
        let batch = sorted(&arrival, TelemetryColumns::SORT_COLUMNS);
        assert_eq!(batch.schema(), TelemetryColumns::schema());
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
        assert!(file_order(&batch, TelemetryColumns::SORT_COLUMNS).is_none());
    }

    /// The file order of the row-based writer: a stable sort of the rows by (vehicle, ts).
    fn reference(rows: &[Record]) -> RecordBatch {
        let mut refs: Vec<&Record> = rows.iter().collect();
        refs.sort_by(|a, b| {
            (&*a.vehicle_id, a.reading.ts_ms).cmp(&(&*b.vehicle_id, b.reading.ts_ms))
        });
        let mut columns = TelemetryColumns::with_capacity(rows.len());
        for row in refs {
            columns.push(row);
        }
        columns.finish().unwrap()
    }

    /// Mixed rows over `ids`: repeated and tied keys (told apart by `seq`), times out of order.
    fn mixed(ids: &[&str]) -> Vec<Record> {
        (0..600_u64)
            .map(|i| {
                let id = ids[(i * 7 % ids.len() as u64) as usize];
                let mut row = record(id, ((i * 37) % 50) as i64 - 20);
                row.reading.seq = Some(i);
                row
            })
            .collect()
    }

    #[test]
    fn sorted_columns_equal_the_row_sort_for_short_ids() {
        let ids = [
            "B",
            "A",
            "A\0",
            "AB",
            "",
            "A\0\0",
            "VHSH00001",
            "VHSH00010",
            "VHSH0001",
            "869491514656371",
            "869491514656370",
            "車両1",
            "\u{7f}",
            "ÿ",
        ];
        let rows = mixed(&ids);
        assert_eq!(
            sorted(&batch(&rows), TelemetryColumns::SORT_COLUMNS),
            reference(&rows)
        );
    }

    #[test]
    fn sorted_columns_equal_the_row_sort_for_long_ids() {
        let ids = [
            "B",
            "A",
            "VEHICLE-LONG-ID-0001",
            "VEHICLE-LONG-ID-0002",
            "VEHICLE-LONG-ID-00010",
            "VEHICLE-LONG-ID-",
            "869491514656371",
            "8694915146563710",
            "",
        ];
        let rows = mixed(&ids);
        assert_eq!(
            sorted(&batch(&rows), TelemetryColumns::SORT_COLUMNS),
            reference(&rows)
        );
    }

    #[test]
    fn rows_in_file_order_are_not_permuted() {
        let rows: Vec<Record> = (0..10).map(|i| record("V", i)).collect();
        assert!(file_order(&batch(&rows), TelemetryColumns::SORT_COLUMNS).is_none());
    }

    #[test]
    fn rejects_sort_by_arrival_time_only() {
        let mut columns = RejectColumns::with_capacity(0);
        for received_at_ms in [5, 3, 5, 1] {
            columns.push(&Reject {
                reason: "invalid_json".into(),
                detail: format!("{received_at_ms}"),
                device_id: None,
                ts_ms: None,
                received_at_ms,
                raw: vec![],
            });
        }
        let batch = columns.finish().unwrap();
        let order = file_order(&batch, RejectColumns::SORT_COLUMNS).unwrap();
        assert_eq!(order.values().to_vec(), [3, 1, 0, 2]);
    }

    #[test]
    fn features_sort_by_vehicle_then_date_then_revision() {
        let row = |vehicle: &str, date: &str, revision: u32| DailyFeatures {
            vehicle_id: vehicle.into(),
            date: date.into(),
            revision,
            messages: 1,
            ..DailyFeatures::default()
        };
        // Dates before the epoch (negative days) and the largest revision keep their order.
        let rows = [
            row("B", "2026-11-28", 0),
            row("A", "2026-11-29", 0),
            row("A", "2026-11-28", u32::MAX),
            row("A", "1969-12-31", 3),
            row("A", "2026-11-28", 1),
            row("A", "1969-12-31", 0),
            row("A", "2026-11-28", 1),
        ];
        let mut columns = FeaturesColumns::with_capacity(0);
        for r in &rows {
            columns.push(r);
        }
        let batch = columns.finish().unwrap();
        assert_eq!(batch.schema(), FeaturesColumns::schema());
        let order = file_order(&batch, FeaturesColumns::SORT_COLUMNS).unwrap();
        assert_eq!(order.values().to_vec(), [5, 3, 4, 6, 2, 1, 0]);
        assert_eq!(
            batch.column(2).as_primitive::<Date32Type>().value(3),
            -1,
            "1969-12-31"
        );
    }

    #[test]
    fn estimates_grow_with_strings() {
        let small = record("A", 0);
        let mut big = record("A", 0);
        big.reading.alarms.push("x".repeat(100));
        let mut columns = TelemetryColumns::with_capacity(2);
        let small = columns.push(&small);
        let big = columns.push(&big);
        assert!(big >= small + 100);
        assert_eq!(columns.len(), 2);
    }
}
