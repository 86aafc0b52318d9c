//! Arrow schemas of the archive datasets (SPEC §6). Column names follow SPEC §2 flattened
//! (`gnss.lat` → `lat`); the GNSS speed becomes `gnss_speed_kmh` because `speed_kmh` is the
//! vehicle (OBD) speed. Timestamps are `Timestamp(Microsecond, "UTC")`.

use std::sync::{Arc, LazyLock};

use arrow_schema::{DataType, Field, Schema, SchemaRef, TimeUnit};

fn ts_type() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

/// Schema of the `telemetry` dataset: one row per accepted message.
pub static TELEMETRY: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("vehicle_id", DataType::Utf8, false),
        Field::new("loan_id", DataType::Utf8, true),
        Field::new("device_id", DataType::Utf8, false),
        Field::new("ts", ts_type(), false),
        Field::new("received_at", ts_type(), false),
        Field::new("seq", DataType::UInt64, true),
        Field::new("backfill", DataType::Boolean, false),
        Field::new("lat", DataType::Float64, true),
        Field::new("lon", DataType::Float64, true),
        Field::new("fix", DataType::Boolean, true),
        Field::new("gnss_speed_kmh", DataType::Float32, true),
        Field::new("heading", DataType::Float32, true),
        Field::new("alt_m", DataType::Float32, true),
        Field::new("hdop", DataType::Float32, true),
        Field::new("sats", DataType::UInt16, true),
        Field::new("ignition", DataType::Boolean, true),
        Field::new("speed_kmh", DataType::Float32, true),
        Field::new("odometer_km", DataType::Float64, true),
        Field::new("rpm", DataType::Float32, true),
        Field::new("vin", DataType::Utf8, true),
        Field::new("mil", DataType::Boolean, true),
        Field::new("dtc_count", DataType::UInt32, true),
        Field::new("dist_since_clear_km", DataType::Float64, true),
        Field::new("dist_mil_km", DataType::Float64, true),
        Field::new("engine_hours", DataType::Float64, true),
        Field::new("ext_v", DataType::Float32, true),
        Field::new("battery_pct", DataType::Float32, true),
        Field::new(
            "alarms",
            DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
            false,
        ),
    ]))
});

/// Schema of the `alerts` dataset: one row per alert (evidence as a JSON string).
pub static ALERTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("alert_id", DataType::Utf8, false),
        Field::new("kind", DataType::Utf8, false),
        Field::new("phase", DataType::Utf8, false),
        Field::new("severity", DataType::Utf8, false),
        Field::new("vehicle_id", DataType::Utf8, false),
        Field::new("loan_id", DataType::Utf8, true),
        Field::new("device_id", DataType::Utf8, false),
        Field::new("event_time", ts_type(), false),
        Field::new("detected_at", ts_type(), false),
        Field::new("lat", DataType::Float64, true),
        Field::new("lon", DataType::Float64, true),
        Field::new("backfill", DataType::Boolean, false),
        Field::new("evidence", DataType::Utf8, false),
    ]))
});

/// Schema of the `rejects` dataset: one row per rejected message or batch element.
pub static REJECTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        Field::new("received_at", ts_type(), false),
        Field::new("reason", DataType::Utf8, false),
        Field::new("detail", DataType::Utf8, false),
        Field::new("device_id", DataType::Utf8, true),
        Field::new("ts", ts_type(), true),
        Field::new("raw", DataType::Binary, false),
    ]))
});
