//! Event times are epoch milliseconds (`i64`) everywhere inside lienwatch; these helpers turn
//! them into the RFC 3339 UTC strings of the alert JSON and back.

use chrono::{DateTime, SecondsFormat, Utc};

/// Milliseconds in one minute, hour and day, for readable arithmetic on event times.
pub const MINUTE_MS: i64 = 60_000;
/// Milliseconds in one hour.
pub const HOUR_MS: i64 = 3_600_000;
/// Milliseconds in one day.
pub const DAY_MS: i64 = 86_400_000;

/// Formats epoch milliseconds as RFC 3339 UTC with millisecond precision
/// (`2026-11-28T08:00:00.000Z`). Out-of-range values fall back to the epoch.
pub fn rfc3339_ms(ts_ms: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(ts_ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Parses an RFC 3339 timestamp (any offset) into epoch milliseconds.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The current wall-clock time in epoch milliseconds.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// Serde adapter: epoch milliseconds as an RFC 3339 string.
pub mod serde_rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    /// Serializes epoch milliseconds as RFC 3339.
    pub fn serialize<S: Serializer>(ts_ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::rfc3339_ms(*ts_ms))
    }

    /// Deserializes RFC 3339 into epoch milliseconds.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        super::parse_rfc3339_ms(&s).ok_or_else(|| D::Error::custom("invalid RFC 3339 time"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips() {
        let ts = 1_764_403_200_123;
        let s = rfc3339_ms(ts);
        assert_eq!(s, "2025-11-29T08:00:00.123Z");
        assert_eq!(parse_rfc3339_ms(&s), Some(ts));
        assert_eq!(parse_rfc3339_ms("2025-11-29T16:00:00.123+08:00"), Some(ts));
        assert_eq!(parse_rfc3339_ms("yesterday"), None);
    }
}
