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
    /// `odometer_mismatch` settings.
    pub odometer_mismatch: MismatchRules,
    /// `duplicate_collateral` settings.
    pub duplicate_collateral: EnabledOnly,
    /// `residence_change` settings.
    pub residence_change: ResidenceRules,
    /// `mileage_anomaly` settings.
    pub mileage_anomaly: MileageRules,
    /// `night_movement` settings.
    pub night_movement: NightRules,
    /// Daily features.
    pub features: FeatureRules,
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
    odometer_mismatch: MismatchRules::default(),
    duplicate_collateral: EnabledOnly::default(),
    residence_change: ResidenceRules::default(),
    mileage_anomaly: MileageRules::default(),
    night_movement: NightRules::default(),
    features: FeatureRules::default(),
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

/// `odometer_mismatch`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MismatchRules {
    /// Whether the kind is evaluated.
    pub enabled: bool,
    /// GNSS distance the ratio is taken over.
    pub window_km: f64,
    /// GNSS distance between the window's checkpoints.
    pub checkpoint_km: f64,
    /// Odometer / GNSS below this is a mismatch.
    pub min_ratio: f64,
    /// Odometer / GNSS above this is a mismatch.
    pub max_ratio: f64,
    /// After firing, the device is quiet this long and then starts a fresh window.
    pub rearm_after_s: u64,
}

defaults!(MismatchRules {
    enabled: true,
    window_km: 100.0,
    checkpoint_km: 10.0,
    min_ratio: 0.8,
    max_ratio: 1.5,
    rearm_after_s: 86_400,
});

/// `residence_change`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ResidenceRules {
    /// Whether the kind is evaluated.
    pub enabled: bool,
    /// A night location further than this from home is away.
    pub distance_m: f64,
    /// Consecutive nights away that fire.
    pub nights: u32,
    /// Radius of the home cluster.
    pub cluster_m: f64,
    /// Night locations home is chosen from.
    pub history_nights: u32,
    /// Nights of history needed first.
    pub min_history_nights: u32,
    /// A night location older than this (the device was silent) is no location.
    pub max_fix_age_h: f64,
}

defaults!(ResidenceRules {
    enabled: true,
    distance_m: 5_000.0,
    nights: 3,
    cluster_m: 500.0,
    history_nights: 30,
    min_history_nights: 14,
    max_fix_age_h: 24.0,
});

/// `mileage_anomaly`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MileageRules {
    /// Whether the kind is evaluated.
    pub enabled: bool,
    /// Fires above this multiple of the median…
    pub factor: f64,
    /// …and above the median plus this.
    pub margin_km: f64,
    /// Active days the median is taken over.
    pub window_days: u32,
    /// Active days needed first.
    pub min_active_days: u32,
    /// A day with at least this GNSS distance is active.
    pub active_day_km: f64,
}

defaults!(MileageRules {
    enabled: true,
    factor: 3.0,
    margin_km: 300.0,
    window_days: 28,
    min_active_days: 14,
    active_day_km: 1.0,
});

/// `night_movement`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NightRules {
    /// Whether the kind is evaluated.
    pub enabled: bool,
    /// GNSS distance in tonight's window that fires.
    pub min_km: f64,
    /// Only when the past days' night share of distance was below this.
    pub max_share_pct: f64,
    /// Days the share is taken over.
    pub window_days: u32,
    /// Days of history needed first.
    pub min_history_days: u32,
    /// End of the night window, local hour (it starts at midnight).
    pub end_hour: u32,
}

defaults!(NightRules {
    enabled: true,
    min_km: 5.0,
    max_share_pct: 2.0,
    window_days: 28,
    min_history_days: 14,
    end_hour: 5,
});

/// Daily features.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeatureRules {
    /// Whether rows are emitted.
    pub enabled: bool,
    /// Late data revises closed days up to this many days before the open one.
    pub revision_days: u32,
    /// A speed gain at least this fast is a harsh acceleration.
    pub harsh_accel_mps2: f64,
    /// A speed loss at least this fast is a harsh braking.
    pub harsh_brake_mps2: f64,
    /// Readings further apart than this are not compared for harsh events.
    pub harsh_max_gap_s: u64,
}

defaults!(FeatureRules {
    enabled: true,
    revision_days: 3,
    harsh_accel_mps2: 3.0,
    harsh_brake_mps2: 3.5,
    harsh_max_gap_s: 10,
});
