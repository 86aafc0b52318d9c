//! The alert kinds, one module each (docs/rules.md). Each kind is a small serde-serializable
//! state machine; the vehicle ([`crate::vehicle`]) decides which readings, accepted fixes and
//! timers reach it, and in which order.

pub mod device_tamper;
pub mod dtc_cleared;
pub mod forward_counter;
pub mod geofence_exit;
pub mod gnss_jamming;
pub mod location_jump;
pub mod low_battery;
pub mod mileage_anomaly;
pub mod night_movement;
pub mod odometer_mismatch;
pub mod odometer_rollback;
pub mod offline;
pub mod power_cut;
pub mod residence_change;
pub mod risk_zone_dwell;
pub mod risk_zone_enter;
pub mod stationary_long;
pub mod tow_suspected;
pub mod vin_mismatch;

use serde::{Deserialize, Serialize};

use schemas::DeviceClass;

/// State that is at rest (equal to its default) most of the time.
pub trait AtRest: Default + PartialEq {
    /// Whether the state equals its default; cheaper than comparing with a new default
    /// (no slice comparisons). Debug builds check the two agree.
    fn at_rest(&self) -> bool;
}

/// The state of kinds that rest at their default between incidents: `None` while it is the
/// default, boxed otherwise, so a quiet vehicle keeps 8 bytes for it. `None` and a boxed
/// default are the same state; [`Lazy::with`] keeps it `None` whenever it is the default.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Lazy<T>(Option<Box<T>>);

impl<T: AtRest> Lazy<T> {
    /// The state, if it is not the default.
    pub fn get(&self) -> Option<&T> {
        self.0.as_deref()
    }

    /// Reads the state (a default one while there is none).
    pub fn read<R>(&self, f: impl FnOnce(&T) -> R) -> R {
        match &self.0 {
            Some(t) => f(t),
            None => f(&T::default()),
        }
    }

    /// Changes the state: boxed if `f` leaves it other than the default, dropped if it is
    /// the default again.
    pub fn with<R>(&mut self, f: impl FnOnce(&mut T) -> R) -> R {
        match &mut self.0 {
            Some(t) => {
                let r = f(t);
                debug_assert!(t.at_rest() == (**t == T::default()));
                if t.at_rest() {
                    self.0 = None;
                }
                r
            }
            None => {
                let mut t = T::default();
                let r = f(&mut t);
                debug_assert!(t.at_rest() == (t == T::default()));
                if !t.at_rest() {
                    self.0 = Some(Box::new(t));
                }
                r
            }
        }
    }
}

/// The device a reading came from.
#[derive(Clone, Copy, Debug)]
pub struct Dev<'a> {
    /// Device id.
    pub id: &'a str,
    /// Device class.
    pub class: DeviceClass,
    /// Whether the device has ever reported `ignition` (wireless units never do).
    pub reports_ignition: bool,
}

#[cfg(test)]
pub(crate) mod testing {
    //! A tiny harness for the kind tests: a context over default rules and no fences.

    use schemas::{Alert, AlertKind, DeviceClass, Phase, Reading};

    use crate::config::RulesConfig;
    use crate::ctx::Ctx;
    use crate::fences::{FenceIdx, FenceIndex};

    /// Runs `f` with a fresh context and returns the alerts it emitted.
    pub fn with_ctx(
        rules: &RulesConfig,
        fences: &FenceIndex,
        permitted: &[FenceIdx],
        registered_vin: Option<&str>,
        f: impl FnOnce(&mut Ctx<'_>),
    ) -> Vec<Alert> {
        let mut alerts = Vec::new();
        let mut ctx = Ctx {
            rules,
            fences,
            permitted,
            registered_vin,
            vehicle_id: "V1",
            loan_id: Some("L1"),
            position: None,
            backfill: false,
            detected_at_ms: 0,
            alerts: &mut alerts,
        };
        f(&mut ctx);
        alerts
    }

    /// Device D1 of `class`, which reports ignition.
    pub fn dev(class: DeviceClass) -> super::Dev<'static> {
        super::Dev {
            id: "D1",
            class,
            reports_ignition: true,
        }
    }

    /// A reading of device D1 at `ts_s` seconds.
    pub fn reading(ts_s: i64) -> Reading {
        Reading {
            device_id: "D1".into(),
            ts_ms: ts_s * 1000,
            ..Reading::default()
        }
    }

    /// (kind, phase, event time in seconds) of each alert, for compact assertions.
    pub fn summary(alerts: &[Alert]) -> Vec<(AlertKind, Phase, i64)> {
        alerts
            .iter()
            .map(|a| (a.kind, a.phase, a.event_time_ms / 1000))
            .collect()
    }
}
