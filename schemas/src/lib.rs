//! The shared vocabulary of lienwatch: the telemetry message on the wire (SPEC §2), its
//! decoding and validation into the internal [`Reading`], the [`Alert`] (SPEC §4), and the
//! Arrow schemas of the archive datasets (SPEC §6). No I/O happens here.
//!
//! # Layout
//! - [`reading`]: the internal record types ([`Reading`], [`Record`], alarms, device classes).
//! - [`decode`]: payload bytes → readings or rejects, with the SPEC reject reasons.
//! - [`alert`]: alert kinds, phases, severities, deterministic alert ids.
//! - [`features`]: the daily valuation features row (SPEC §5).
//! - [`arrow`]: Arrow schemas of `telemetry`, `alerts`, `rejects` and `features_daily`.
//! - [`time`]: epoch-millisecond helpers and RFC 3339 formatting.
//! - [`shared_str`]: serde for ids held as `Arc<str>`.

pub mod alert;
pub mod arrow;
pub mod decode;
pub mod features;
pub mod reading;
pub mod shared_str;
pub mod time;

pub use alert::{Alert, AlertKind, Phase, Severity};
pub use decode::{DecodeLimits, Reject, RejectReason, decode_payload};
pub use features::DailyFeatures;
pub use reading::{Alarm, AlarmSet, DeviceClass, Gnss, Obd, Power, Reading, Record};
