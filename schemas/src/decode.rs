//! Payload bytes → [`Reading`]s or [`Reject`]s (SPEC §2, §4a "Replay input").
//!
//! A payload is one JSON object or a JSON array of objects (a batch). Each element is
//! validated on its own, so one bad element of a batch rejects only itself. Bad input is data,
//! never an `Err` and never a panic: the caller counts and archives every [`Reject`].
//! The future-timestamp check against the pipeline clock is done downstream; live input is
//! also checked here against its receipt time ([`DecodeLimits::max_future_of_receipt_ms`]).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};
use serde_json::value::RawValue;
use xxhash_rust::xxh3::xxh3_64;

use crate::reading::{Alarm, AlarmSet, Gnss, Obd, Power, Reading};

mod fast;

/// Why a message was rejected. The snake_case names are the `reason` column of the
/// `rejects` dataset and the label of the rejects counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// Payload is not valid UTF-8.
    InvalidUtf8,
    /// Payload is not JSON (syntax error, truncated, number out of range).
    InvalidJson,
    /// JSON, but not an object or an array of objects.
    NotAnObject,
    /// An empty batch array: nothing to process, counted so it does not vanish.
    EmptyBatch,
    /// A field has the wrong type (e.g. `"ignition": "yes"`).
    InvalidField,
    /// No `device_id` in payload or topic.
    MissingDeviceId,
    /// No `ts`.
    MissingTs,
    /// `ts` is neither epoch milliseconds nor RFC 3339, or is negative.
    InvalidTs,
    /// `gnss.lat` outside [-90, 90].
    LatOutOfRange,
    /// `gnss.lon` outside [-180, 180].
    LonOutOfRange,
    /// `ts` too far in the future of the pipeline clock.
    FutureTs,
    /// The payload's `device_id` differs from the topic's.
    DeviceIdMismatch,
}

impl RejectReason {
    /// Every reason, in a fixed order (for summaries and metrics).
    pub const ALL: [RejectReason; 12] = [
        RejectReason::InvalidUtf8,
        RejectReason::InvalidJson,
        RejectReason::NotAnObject,
        RejectReason::EmptyBatch,
        RejectReason::InvalidField,
        RejectReason::MissingDeviceId,
        RejectReason::MissingTs,
        RejectReason::InvalidTs,
        RejectReason::LatOutOfRange,
        RejectReason::LonOutOfRange,
        RejectReason::FutureTs,
        RejectReason::DeviceIdMismatch,
    ];

    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::InvalidUtf8 => "invalid_utf8",
            RejectReason::InvalidJson => "invalid_json",
            RejectReason::NotAnObject => "not_an_object",
            RejectReason::EmptyBatch => "empty_batch",
            RejectReason::InvalidField => "invalid_field",
            RejectReason::MissingDeviceId => "missing_device_id",
            RejectReason::MissingTs => "missing_ts",
            RejectReason::InvalidTs => "invalid_ts",
            RejectReason::LatOutOfRange => "lat_out_of_range",
            RejectReason::LonOutOfRange => "lon_out_of_range",
            RejectReason::FutureTs => "future_ts",
            RejectReason::DeviceIdMismatch => "device_id_mismatch",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A rejected message: the reason, what could be read of it, and its raw bytes.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reject {
    /// Snake_case reason (see [`RejectReason::as_str`]).
    pub reason: String,
    /// Human-readable detail (the parser's message, the offending value).
    pub detail: String,
    /// The device id, when it could be read.
    pub device_id: Option<String>,
    /// The event time, when it could be read.
    pub ts_ms: Option<i64>,
    /// When lienwatch received the message.
    pub received_at_ms: i64,
    /// Raw bytes of the message (of the batch element for a bad element), truncated.
    pub raw: Vec<u8>,
}

/// The last representable event time: 9999-12-31T23:59:59.999Z. Later values are
/// `invalid_ts` (they are garbage, and timer arithmetic on them could overflow).
pub const MAX_TS_MS: i64 = 253_402_300_799_999;

/// Limits applied while decoding.
#[derive(Clone, Copy, Debug)]
pub struct DecodeLimits {
    /// Raw bytes kept in a reject (SPEC §2 default 64 KiB).
    pub max_reject_raw_bytes: usize,
    /// Live only (SPEC §4a): reject `ts` more than this many ms after the message's receipt
    /// time as `future_ts`. `None` in replay, where the wall clock plays no part (the fleet
    /// checks against the event-time clock in both).
    pub max_future_of_receipt_ms: Option<i64>,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        Self {
            max_reject_raw_bytes: 64 * 1024,
            max_future_of_receipt_ms: None,
        }
    }
}

/// Decodes one payload into readings and rejects, pushed onto `out` in payload order.
///
/// `topic_device_id` is the device id taken from the MQTT topic (None in replay).
///
/// # Examples
///
/// ```
/// use schemas::{DecodeLimits, decode_payload};
///
/// let mut out = Vec::new();
/// let batch = br#"[{"device_id":"d1","ts":1764403200000,"gnss":{"lat":31.2,"lon":121.5}},
///                  {"device_id":"d1","ts":"soon"}]"#;
/// decode_payload(batch, None, 0, &DecodeLimits::default(), &mut out);
/// assert_eq!(out[0].as_ref().unwrap().valid_position(5.0), Some((31.2, 121.5)));
/// assert_eq!(out[1].as_ref().unwrap_err().reason, "invalid_ts");
/// ```
pub fn decode_payload(
    payload: &[u8],
    topic_device_id: Option<&str>,
    received_at_ms: i64,
    limits: &DecodeLimits,
    out: &mut Vec<Result<Reading, Reject>>,
) {
    let reject = |reason: RejectReason, detail: String, raw: &[u8]| Reject {
        reason: reason.as_str().to_owned(),
        detail,
        device_id: topic_device_id.map(str::to_owned),
        ts_ms: None,
        received_at_ms,
        raw: raw[..raw.len().min(limits.max_reject_raw_bytes)].to_vec(),
    };
    let text = match std::str::from_utf8(payload) {
        Ok(t) => t,
        Err(e) => {
            out.push(Err(reject(
                RejectReason::InvalidUtf8,
                e.to_string(),
                payload,
            )));
            return;
        }
    };
    match text.trim_start().as_bytes().first() {
        Some(b'[') => {
            let before = out.len();
            let fast = fast::array_elements(text, |element, wire| {
                out.push(decode_object(
                    element,
                    wire,
                    topic_device_id,
                    received_at_ms,
                    limits,
                ));
            });
            let count = match fast {
                Some(count) => count,
                None => {
                    out.truncate(before);
                    match serde_json::from_str::<Vec<&RawValue>>(text) {
                        Ok(elements) => {
                            for element in &elements {
                                out.push(decode_object(
                                    element.get(),
                                    fast::wire_message(element.get()),
                                    topic_device_id,
                                    received_at_ms,
                                    limits,
                                ));
                            }
                            elements.len()
                        }
                        Err(e) => {
                            out.push(Err(reject(json_reason(&e), e.to_string(), payload)));
                            return;
                        }
                    }
                }
            };
            if count == 0 {
                out.push(Err(reject(
                    RejectReason::EmptyBatch,
                    "batch array has no elements".to_owned(),
                    payload,
                )));
            }
        }
        _ => out.push(decode_object(
            text,
            fast::wire_message(text),
            topic_device_id,
            received_at_ms,
            limits,
        )),
    }
}

fn json_reason(e: &serde_json::Error) -> RejectReason {
    match e.classify() {
        serde_json::error::Category::Data => RejectReason::InvalidField,
        _ => RejectReason::InvalidJson,
    }
}

/// Decodes and validates one JSON object; `scanned` is what the fast scanner made of it
/// (`None`: it declined, serde decides).
fn decode_object<'a>(
    text: &'a str,
    scanned: Option<WireMessage<'a>>,
    topic_device_id: Option<&str>,
    received_at_ms: i64,
    limits: &DecodeLimits,
) -> Result<Reading, Reject> {
    // What is known of the message so far, for a reject; built only when one is needed.
    let mut reject = Known {
        device_id: topic_device_id,
        ts_ms: None,
    };
    let fail = |known: Known<'_>, reason: RejectReason, detail: String| Reject {
        reason: reason.as_str().to_owned(),
        detail,
        device_id: known.device_id.map(str::to_owned),
        ts_ms: known.ts_ms,
        received_at_ms,
        raw: text.as_bytes()[..text.len().min(limits.max_reject_raw_bytes)].to_vec(),
    };
    let trimmed = text.trim_start();
    if !trimmed.starts_with('{') {
        let reason = if serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() {
            RejectReason::NotAnObject
        } else {
            RejectReason::InvalidJson
        };
        return Err(fail(reject, reason, "expected a JSON object".to_owned()));
    }
    let wire: WireMessage<'_> = match scanned {
        Some(w) => w,
        None => match serde_json::from_str(text) {
            Ok(w) => w,
            Err(e) => return Err(fail(reject, json_reason(&e), e.to_string())),
        },
    };
    let device_id = match (wire.device_id.as_deref(), topic_device_id) {
        (Some(p), Some(t)) if p != t => {
            reject.device_id = Some(p);
            return Err(fail(
                reject,
                RejectReason::DeviceIdMismatch,
                format!("payload device_id {p:?} differs from topic device_id {t:?}"),
            ));
        }
        (Some(p), _) if !p.trim().is_empty() => p,
        (None, Some(t)) => t,
        _ => {
            return Err(fail(
                reject,
                RejectReason::MissingDeviceId,
                "no device_id".to_owned(),
            ));
        }
    };
    reject.device_id = Some(device_id);
    let ts_ms = match wire.ts {
        None => return Err(fail(reject, RejectReason::MissingTs, "no ts".to_owned())),
        Some(WireTs::Millis(ms)) if (0..=MAX_TS_MS).contains(&ms) => ms,
        Some(WireTs::Millis(ms)) => {
            return Err(fail(
                reject,
                RejectReason::InvalidTs,
                format!("ts {ms} is not between 1970 and 9999"),
            ));
        }
        Some(WireTs::Text(s)) => match crate::time::parse_rfc3339_ms(&s) {
            Some(ms) if (0..=MAX_TS_MS).contains(&ms) => ms,
            _ => {
                return Err(fail(
                    reject,
                    RejectReason::InvalidTs,
                    format!("ts {s:?} is not RFC 3339 after 1970"),
                ));
            }
        },
        Some(WireTs::Invalid(detail)) => {
            return Err(fail(reject, RejectReason::InvalidTs, detail));
        }
    };
    reject.ts_ms = Some(ts_ms);
    if let Some(ahead) = limits.max_future_of_receipt_ms
        && ts_ms > received_at_ms.saturating_add(ahead)
    {
        return Err(fail(
            reject,
            RejectReason::FutureTs,
            format!(
                "ts is {} s after its receipt",
                (ts_ms - received_at_ms) / 1000
            ),
        ));
    }
    let gnss = wire.gnss.map(|g| Gnss {
        lat: g.lat,
        lon: g.lon,
        fix: g.fix.unwrap_or(true),
        speed_kmh: g.speed_kmh.map(|v| v as f32),
        heading: g.heading.map(|v| v as f32),
        alt_m: g.alt_m.map(|v| v as f32),
        hdop: g.hdop.map(|v| v as f32),
        sats: g.sats,
    });
    if let Some(g) = &gnss {
        if let Some(lat) = g.lat.filter(|l| !(-90.0..=90.0).contains(l)) {
            return Err(fail(
                reject,
                RejectReason::LatOutOfRange,
                format!("lat {lat}"),
            ));
        }
        if let Some(lon) = g.lon.filter(|l| !(-180.0..=180.0).contains(l)) {
            return Err(fail(
                reject,
                RejectReason::LonOutOfRange,
                format!("lon {lon}"),
            ));
        }
    }
    let mut alarm_set = AlarmSet::default();
    let alarms: Vec<String> = wire
        .alarms
        .unwrap_or_default()
        .into_iter()
        .map(|a| {
            if let Some(known) = Alarm::parse(&a) {
                alarm_set.insert(known);
            }
            a.into_owned()
        })
        .collect();
    Ok(Reading {
        device_id: device_id.to_owned(),
        ts_ms,
        seq: wire.seq,
        backfill: wire.backfill.unwrap_or(false),
        gnss,
        ignition: wire.ignition,
        speed_kmh: wire.speed_kmh.map(|v| v as f32),
        odometer_km: wire.odometer_km,
        obd: wire.obd.map(|o| Obd {
            rpm: o.rpm.map(|v| v as f32),
            vin: o.vin.map(|v| v.trim().to_ascii_uppercase()),
            mil: o.mil,
            dtc_count: o.dtc_count,
            dist_since_clear_km: o.dist_since_clear_km,
            dist_mil_km: o.dist_mil_km,
            engine_hours: o.engine_hours,
        }),
        power: wire.power.map(|p| Power {
            ext_v: p.ext_v.map(|v| v as f32),
            battery_pct: p.battery_pct.map(|v| v as f32),
        }),
        alarm_set,
        alarms,
        content_hash: xxh3_64(text.as_bytes()),
        received_at_ms,
    })
}

/// The device id and event time read so far, for a [`Reject`].
#[derive(Clone, Copy)]
struct Known<'t> {
    device_id: Option<&'t str>,
    ts_ms: Option<i64>,
}

#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(Debug))]
struct WireMessage<'a> {
    #[serde(borrow, default)]
    device_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    ts: Option<WireTs<'a>>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    backfill: Option<bool>,
    #[serde(default)]
    gnss: Option<WireGnss>,
    #[serde(default)]
    ignition: Option<bool>,
    #[serde(default)]
    speed_kmh: Option<f64>,
    #[serde(default)]
    odometer_km: Option<f64>,
    #[serde(borrow, default)]
    obd: Option<WireObd<'a>>,
    #[serde(default)]
    power: Option<WirePower>,
    #[serde(borrow, default)]
    alarms: Option<Vec<Cow<'a, str>>>,
}

#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(Debug))]
struct WireGnss {
    #[serde(default)]
    lat: Option<f64>,
    #[serde(default)]
    lon: Option<f64>,
    #[serde(default)]
    fix: Option<bool>,
    #[serde(default)]
    speed_kmh: Option<f64>,
    #[serde(default)]
    heading: Option<f64>,
    #[serde(default)]
    alt_m: Option<f64>,
    #[serde(default)]
    hdop: Option<f64>,
    #[serde(default)]
    sats: Option<u16>,
}

#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(Debug))]
struct WireObd<'a> {
    #[serde(default)]
    rpm: Option<f64>,
    #[serde(borrow, default)]
    vin: Option<Cow<'a, str>>,
    #[serde(default)]
    mil: Option<bool>,
    #[serde(default)]
    dtc_count: Option<u32>,
    #[serde(default)]
    dist_since_clear_km: Option<f64>,
    #[serde(default)]
    dist_mil_km: Option<f64>,
    #[serde(default)]
    engine_hours: Option<f64>,
}

#[derive(Deserialize, Default)]
#[cfg_attr(test, derive(Debug))]
struct WirePower {
    #[serde(default)]
    ext_v: Option<f64>,
    #[serde(default)]
    battery_pct: Option<f64>,
}

/// `ts` as sent: integer epoch milliseconds or an RFC 3339 string. Anything else is kept as
/// `Invalid` so it is rejected as `invalid_ts` rather than as a generic field error.
#[cfg_attr(test, derive(Debug))]
enum WireTs<'a> {
    Millis(i64),
    Text(Cow<'a, str>),
    Invalid(String),
}

impl<'de: 'a, 'a> Deserialize<'de> for WireTs<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TsVisitor;
        impl<'de> Visitor<'de> for TsVisitor {
            type Value = WireTs<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("epoch milliseconds or an RFC 3339 string")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
                Ok(WireTs::Millis(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
                Ok(i64::try_from(v)
                    .map(WireTs::Millis)
                    .unwrap_or_else(|_| WireTs::Invalid(format!("ts {v} out of range"))))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
                if v.fract() == 0.0 && v.abs() < 9.0e15 {
                    Ok(WireTs::Millis(v as i64))
                } else {
                    Ok(WireTs::Invalid(format!("ts {v} is not whole milliseconds")))
                }
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(WireTs::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(WireTs::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
                Ok(WireTs::Invalid(format!("ts {v} is a boolean")))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(WireTs::Invalid("ts is an array".to_owned()))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut a: A) -> Result<Self::Value, A::Error> {
                while a.next_entry::<de::IgnoredAny, de::IgnoredAny>()?.is_some() {}
                Ok(WireTs::Invalid("ts is an object".to_owned()))
            }
        }
        d.deserialize_any(TsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(payload: &str, topic: Option<&str>) -> Vec<Result<Reading, Reject>> {
        let mut out = Vec::new();
        decode_payload(
            payload.as_bytes(),
            topic,
            7,
            &DecodeLimits::default(),
            &mut out,
        );
        out
    }

    fn reason(payload: &str) -> String {
        let mut out = decode(payload, None);
        assert_eq!(out.len(), 1, "{payload}");
        out.pop().unwrap().unwrap_err().reason
    }

    #[test]
    fn decodes_the_spec_example() {
        let p = r#"{"device_id":"860123456789012","ts":1764403200000,"seq":88120,
 "gnss":{"lat":31.2304,"lon":121.4737,"fix":true,"speed_kmh":42.5,"heading":90,"hdop":0.9,"sats":11},
 "ignition":true,"speed_kmh":41,"odometer_km":45210.4,
 "obd":{"rpm":1800,"vin":"LSVAU2180N2183294","mil":false,"dtc_count":0},
 "power":{"ext_v":12.6,"battery_pct":97},"alarms":[],"firmware":"x"}"#;
        let r = decode(p, None).pop().unwrap().unwrap();
        assert_eq!(r.device_id, "860123456789012");
        assert_eq!(r.ts_ms, 1_764_403_200_000);
        assert_eq!(r.seq, Some(88120));
        assert_eq!(r.valid_position(5.0), Some((31.2304, 121.4737)));
        assert_eq!(r.ignition, Some(true));
        assert_eq!(r.odometer_km, Some(45210.4));
        assert_eq!(
            r.obd.as_ref().unwrap().vin.as_deref(),
            Some("LSVAU2180N2183294")
        );
        assert_eq!(r.ext_v(), Some(12.6));
        assert_eq!(r.received_at_ms, 7);
    }

    #[test]
    fn rfc3339_ts_and_alarms() {
        let r = decode(
            r#"{"device_id":"d","ts":"2025-11-29T16:00:00+08:00","alarms":["tamper","weird"]}"#,
            None,
        )
        .pop()
        .unwrap()
        .unwrap();
        assert_eq!(r.ts_ms, 1_764_403_200_000);
        assert!(r.alarm_set.contains(Alarm::Tamper));
        assert!(!r.alarm_set.contains(Alarm::Tow));
        assert_eq!(r.alarms, vec!["tamper", "weird"]);
    }

    #[test]
    fn batch_elements_are_validated_one_by_one() {
        let out = decode(
            r#"[{"device_id":"d","ts":1},{"device_id":"d"},{"device_id":"d","ts":2}]"#,
            None,
        );
        assert_eq!(out.len(), 3);
        assert!(out[0].is_ok() && out[2].is_ok());
        let rej = out[1].as_ref().unwrap_err();
        assert_eq!(rej.reason, "missing_ts");
        assert_eq!(rej.raw, br#"{"device_id":"d"}"#);
    }

    #[test]
    fn a_batch_that_turns_out_invalid_is_one_reject_whatever_came_before() {
        for text in [
            r#"[{"device_id":"d","ts":1},{"device_id":"d","ts":2}"#,
            r#"[{"device_id":"d","ts":1},{"device_id":"d"}] x"#,
            r#"[{"device_id":"d","ts":1},{"device_id":"d","ts":2},]"#,
        ] {
            let out = decode(text, None);
            assert_eq!(out.len(), 1, "{text}");
            assert_eq!(out[0].as_ref().unwrap_err().reason, "invalid_json");
        }
    }

    #[test]
    fn reject_reasons() {
        assert_eq!(reason("not json"), "invalid_json");
        assert_eq!(reason(r#"{"device_id":"d","ts":1"#), "invalid_json");
        assert_eq!(reason("42"), "not_an_object");
        assert_eq!(reason("[]"), "empty_batch");
        assert_eq!(reason(r#"{"ts":1}"#), "missing_device_id");
        assert_eq!(reason(r#"{"device_id":"","ts":1}"#), "missing_device_id");
        assert_eq!(reason(r#"{"device_id":"d"}"#), "missing_ts");
        assert_eq!(reason(r#"{"device_id":"d","ts":"soon"}"#), "invalid_ts");
        assert_eq!(reason(r#"{"device_id":"d","ts":-5}"#), "invalid_ts");
        assert_eq!(
            reason(r#"{"device_id":"d","ts":9223372036854775807}"#),
            "invalid_ts"
        );
        assert_eq!(reason(r#"{"device_id":"d","ts":true}"#), "invalid_ts");
        assert_eq!(
            reason(r#"{"device_id":"d","ts":1,"gnss":{"lat":91,"lon":0}}"#),
            "lat_out_of_range"
        );
        assert_eq!(
            reason(r#"{"device_id":"d","ts":1,"gnss":{"lat":1,"lon":-180.5}}"#),
            "lon_out_of_range"
        );
        assert_eq!(
            reason(r#"{"device_id":"d","ts":1,"ignition":"yes"}"#),
            "invalid_field"
        );
        assert_eq!(reason(r#"{"device_id":"d","ts":1e999}"#), "invalid_json");
        let mut out = Vec::new();
        decode_payload(&[0xff, 0xfe], None, 0, &DecodeLimits::default(), &mut out);
        assert_eq!(out.pop().unwrap().unwrap_err().reason, "invalid_utf8");
    }

    #[test]
    fn topic_device_id_fills_and_conflicts() {
        let r = decode(r#"{"ts":1}"#, Some("t1")).pop().unwrap().unwrap();
        assert_eq!(r.device_id, "t1");
        let rej = decode(r#"{"device_id":"x","ts":1}"#, Some("t1"))
            .pop()
            .unwrap()
            .unwrap_err();
        assert_eq!(rej.reason, "device_id_mismatch");
    }

    #[test]
    fn live_rejects_timestamps_far_after_receipt() {
        let limits = DecodeLimits {
            max_future_of_receipt_ms: Some(86_400_000),
            ..DecodeLimits::default()
        };
        let received = 1_764_403_200_000;
        let mut out = Vec::new();
        for (ahead, limits) in [
            (86_400_000, &limits),
            (86_400_001, &limits),
            (86_400_001, &DecodeLimits::default()),
        ] {
            let line = format!(r#"{{"device_id":"d","ts":{}}}"#, received + ahead);
            decode_payload(line.as_bytes(), None, received, limits, &mut out);
        }
        assert!(out[0].is_ok());
        assert_eq!(out[1].as_ref().unwrap_err().reason, "future_ts");
        assert!(out[2].is_ok(), "replay has no wall-clock check");
    }

    #[test]
    fn reject_raw_is_truncated() {
        let limits = DecodeLimits {
            max_future_of_receipt_ms: None,
            max_reject_raw_bytes: 4,
        };
        let mut out = Vec::new();
        decode_payload(b"garbage-line", None, 0, &limits, &mut out);
        assert_eq!(out.pop().unwrap().unwrap_err().raw, b"garb");
    }

    #[test]
    fn no_fix_keeps_position_out_of_rules() {
        let r = decode(
            r#"{"device_id":"d","ts":1,"gnss":{"lat":1,"lon":2,"fix":false}}"#,
            None,
        )
        .pop()
        .unwrap()
        .unwrap();
        assert_eq!(r.valid_position(5.0), None);
        let r = decode(
            r#"{"device_id":"d","ts":1,"gnss":{"lat":1,"lon":2,"hdop":9.5}}"#,
            None,
        )
        .pop()
        .unwrap()
        .unwrap();
        assert_eq!(r.valid_position(5.0), None);
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let mut out = Vec::new();
            decode_payload(&bytes, None, 0, &DecodeLimits::default(), &mut out);
            proptest::prop_assert!(!out.is_empty());
        }
    }
}
