//! Rule configuration: the `[rules]` table of the TOML config. Every threshold of
//! `docs/rules.md` is a key here, with the SPEC default; units are in the key names.

use serde::{Deserialize, Serialize};

use schemas::DeviceClass;

macro_rules! defaults {
    ($ty:ident { $($field:ident : $value:expr),* $(,)? }) => {
        impl Default for $ty {
            fn default() -> Self {
                Self { $($field: $value),* }
            }
        }
    };
}

/// All rule settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    /// Per-device reorder window: the pipeline clock trails the largest event time by this.
    pub reorder_window_s: u64,
    /// Readings further than this ahead of the reference clock are rejected (`future_ts`).
    pub max_future_s: u64,
    /// A late reading raises an alert only if no incident of that kind started on the device
    /// within this many seconds of it.
    pub late_known_window_s: u64,
    /// Fixes with a larger `hdop` are not valid.
    pub max_hdop: f32,
    /// A fix whose implied speed to both neighbours exceeds this is a drift outlier.
    pub drift_speed_kmh: f64,
    /// Steps shorter than this while parked are jitter, not distance.
    pub jitter_m: f64,
    /// Steps across a longer gap are displacement, not driven distance.
    pub distance_gap_s: u64,
    /// `power_cut` settings.
    pub power_cut: PowerCutRules,
    /// `device_tamper` settings.
    pub device_tamper: EnabledOnly,
    /// `tow_suspected` settings.
    pub tow_suspected: TowRules,
    /// `offline` settings.
    pub offline: OfflineRules,
    /// `gnss_jamming` settings.
    pub gnss_jamming: JammingRules,
    /// `location_jump` settings.
    pub location_jump: JumpRules,
    /// `geofence_exit` settings.
    pub geofence_exit: EnabledOnly,
    /// `risk_zone_enter` settings.
    pub risk_zone_enter: RiskEnterRules,
    /// `risk_zone_dwell` settings.
    pub risk_zone_dwell: RiskDwellRules,
    /// `stationary_long` settings.
    pub stationary_long: StationaryRules,
    /// `low_battery` settings.
    pub low_battery: LowBatteryRules,
    /// `odometer_rollback` settings.
    pub odometer_rollback: RollbackRules,
    /// `dtc_cleared` settings.
    pub dtc_cleared: DtcRules,
    /// `vin_mismatch` settings.
    pub vin_mismatch: EnabledOnly,
}

defaults!(RulesConfig {
    reorder_window_s: 120,
    max_future_s: 86_400,
    late_known_window_s: 21_600,
    max_hdop: 5.0,
    drift_speed_kmh: 250.0,
    jitter_m: 30.0,
    distance_gap_s: 600,
    power_cut: PowerCutRules::default(),
    device_tamper: EnabledOnly::default(),
    tow_suspected: TowRules::default(),
    offline: OfflineRules::default(),
    gnss_jamming: JammingRules::default(),
    location_jump: JumpRules::default(),
    geofence_exit: EnabledOnly::default(),
    risk_zone_enter: RiskEnterRules::default(),
    risk_zone_dwell: RiskDwellRules::default(),
    stationary_long: StationaryRules::default(),
    low_battery: LowBatteryRules::default(),
    odometer_rollback: RollbackRules::default(),
    dtc_cleared: DtcRules::default(),
    vin_mismatch: EnabledOnly::default(),
});

impl RulesConfig {
    /// The reorder window in milliseconds.
    pub fn reorder_window_ms(&self) -> i64 {
        secs_ms(self.reorder_window_s)
    }

    /// How long a device of `class` may stay silent before it is `offline`, in milliseconds.
    pub fn offline_after_ms(&self, class: DeviceClass) -> i64 {
        match class {
            DeviceClass::Wired | DeviceClass::Obd => secs_ms(self.offline.wired_after_s),
            DeviceClass::Wireless => secs_ms(self.offline.wireless_after_s),
        }
    }
}

/// Seconds from config to milliseconds, saturating.
pub fn secs_ms(s: u64) -> i64 {
    i64::try_from(s)
        .unwrap_or(i64::MAX / 1000)
        .saturating_mul(1000)
}

/// A kind with no threshold, only a switch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EnabledOnly {
    /// Whether the kind is evaluated.
    pub enabled: bool,
}

defaults!(EnabledOnly { enabled: true });

/// `power_cut`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PowerCutRules {
    /// Whether the kind is evaluated.
    pub enabled: bool,
    /// Supply below this (after a healthy reading) is a cut.
    pub cut_below_v: f32,
    /// Supply at or above this is healthy, and closes a cut.
    pub supply_ok_v: f32,
}

defaults!(PowerCutRules {
    enabled: true,
    cut_below_v: 3.0,
    supply_ok_v: 9.0,
});

/// `tow_suspected`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TowRules {
    /// Whether the kind is evaluated.
    pub enabled: bool,
    /// Distance from the parking anchor, with ignition off, that counts as a tow.
    pub distance_m: f64,
}

defaults!(TowRules {
    enabled: true,
    distance_m: 300.0,
});

/// `offline`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OfflineRules {
    /// Whether the kind is evaluated.
    pub enabled: bool,
    /// Silence threshold for wired, OBD and unregistered devices.
    pub wired_after_s: u64,
    /// Silence threshold for wireless devices.
    pub wireless_after_s: u64,
}

defaults!(OfflineRules {
    enabled: true,
    wired_after_s: 1_800,
    wireless_after_s: 93_600,
});

/// `gnss_jamming`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JammingRules {
    /// Whether the kind is evaluated.
    pub enabled: bool,
    /// How long without a valid fix while driving.
    pub no_fix_s: u64,
    /// OBD speed above which the vehicle counts as driving.
    pub min_speed_kmh: f32,
}

defaults!(JammingRules {
    enabled: true,
    no_fix_s: 600,
    min_speed_kmh: 5.0,
});

/// `location_jump`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JumpRules {
    /// Whether the kind is evaluated.
    pub enabled: bool,
    /// Minimum distance between consecutive fixes.
    pub min_distance_m: f64,
    /// Minimum implied speed.
    pub min_speed_kmh: f64,
}

defaults!(JumpRules {
    enabled: true,
    min_distance_m: 5_000.0,
    min_speed_kmh: 250.0,
});

/// `risk_zone_enter`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskEnterRules {
    /// Whether the kind is evaluated.
    pub enabled: bool,
    /// Window of the `entries_30d` evidence.
    pub history_days: u32,
    /// Consecutive fixes outside a fence that end a visit.
    pub leave_fixes: u32,
}

defaults!(RiskEnterRules {
    enabled: true,
    history_days: 30,
    leave_fixes: 2,
});

/// `risk_zone_dwell`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RiskDwellRules {
    /// Whether the kind is evaluated.
    pub enabled: bool,
    /// Dwell threshold unless the fence sets `dwell_min`.
    pub dwell_min: f64,
}

defaults!(RiskDwellRules {
    enabled: true,
    dwell_min: 30.0,
});

/// `stationary_long`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StationaryRules {
    /// Whether the kind is evaluated.
    pub enabled: bool,
    /// Moving further than this from the anchor ends the stationary period.
    pub radius_m: f64,
    /// Stationary this long while online opens the incident.
    pub after_h: f64,
}

defaults!(StationaryRules {
    enabled: true,
    radius_m: 200.0,
    after_h: 72.0,
});

/// `low_battery`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LowBatteryRules {
    /// Whether the kind is evaluated.
    pub enabled: bool,
    /// Opens below this percentage.
    pub below_pct: f32,
    /// Closes at or above this percentage (hysteresis).
    pub close_at_pct: f32,
}

defaults!(LowBatteryRules {
    enabled: true,
    below_pct: 15.0,
    close_at_pct: 20.0,
});

/// `odometer_rollback`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RollbackRules {
    /// Whether the kind is evaluated.
    pub enabled: bool,
    /// A decrease larger than this (confirmed) is a rollback.
    pub min_drop_km: f64,
}

defaults!(RollbackRules {
    enabled: true,
    min_drop_km: 1.0,
});

/// `dtc_cleared`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DtcRules {
    /// Whether the kind is evaluated.
    pub enabled: bool,
    /// A decrease of `dist_since_clear_km` larger than this means codes were cleared.
    pub min_drop_km: f64,
}

defaults!(DtcRules {
    enabled: true,
    min_drop_km: 0.5,
});
