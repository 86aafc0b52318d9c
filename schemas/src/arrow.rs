//! Arrow schemas of the archive datasets (SPEC §6). Column names follow SPEC §2 flattened
//! (`gnss.lat` → `lat`); the GNSS speed becomes `gnss_speed_kmh` because `speed_kmh` is the
//! vehicle (OBD) speed. Timestamps are `Timestamp(Microsecond, "UTC")`; the local day of a
//! `features_daily` row is a `Date32`.

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

/// Schema of the `features_daily` dataset: one row per vehicle, local day and revision, the
/// columns of SPEC §5 in that order (nullable where [`crate::DailyFeatures`] has an `Option`).
pub static FEATURES_DAILY: LazyLock<SchemaRef> = LazyLock::new(|| {
    let km = |name| Field::new(name, DataType::Float64, false);
    let km_or_null = |name| Field::new(name, DataType::Float64, true);
    let count = |name| Field::new(name, DataType::UInt32, false);
    Arc::new(Schema::new(vec![
        Field::new("vehicle_id", DataType::Utf8, false),
        Field::new("loan_id", DataType::Utf8, true),
        Field::new("date", DataType::Date32, false),
        Field::new("revision", DataType::UInt32, false),
        km_or_null("odometer_start_km"),
        km_or_null("odometer_end_km"),
        km_or_null("odometer_km"),
        km("gnss_km"),
        Field::new("driving_minutes", DataType::Float64, false),
        count("trips"),
        Field::new("max_speed_kmh", DataType::Float64, true),
        count("harsh_accel"),
        count("harsh_brake"),
        km("night_km"),
        km("mil_km"),
        Field::new("dtc_count_max", DataType::UInt32, true),
        Field::new("messages", DataType::UInt64, false),
        Field::new("first_ts", ts_type(), false),
        Field::new("last_ts", ts_type(), false),
        km("km_7d"),
        km("km_30d"),
        km("projected_annual_km"),
        Field::new("odo_gnss_ratio_30d", DataType::Float64, true),
    ]))
});

#[cfg(test)]
mod tests {
    use super::*;

    /// The `features_daily` columns are the SPEC §5 columns, in order, and the JSON row has
    /// exactly the same fields.
    #[test]
    fn features_daily_columns_follow_the_spec_and_the_row() {
        let spec = "vehicle_id, loan_id, date, revision, odometer_start_km, odometer_end_km, \
                    odometer_km, gnss_km, driving_minutes, trips, max_speed_kmh, harsh_accel, \
                    harsh_brake, night_km, mil_km, dtc_count_max, messages, first_ts, last_ts, \
                    km_7d, km_30d, projected_annual_km, odo_gnss_ratio_30d";
        let names: Vec<&str> = FEATURES_DAILY
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, spec.split(", ").collect::<Vec<_>>());
        let row = crate::DailyFeatures {
            vehicle_id: "V".into(),
            date: "2026-11-28".into(),
            revision: 0,
            messages: 1,
            ..crate::DailyFeatures::default()
        };
        let json = serde_json::to_value(&row).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut sorted_names = names.clone();
        keys.sort_unstable();
        sorted_names.sort_unstable();
        assert_eq!(keys, sorted_names);
        // Every `Option` of the row is `None` here: the nullable columns are the null fields.
        for field in FEATURES_DAILY.fields() {
            assert_eq!(
                field.is_nullable(),
                json[field.name()].is_null(),
                "{}",
                field.name()
            );
        }
    }
}
