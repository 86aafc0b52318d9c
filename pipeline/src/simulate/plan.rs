//! Incident scenarios and their placement on vehicle-days.
//!
//! Every scenario belongs to one of the 19 alert kinds of docs/rules.md and may imply others
//! (a dwell visit is also an entry; a power cut with the device going silent is also
//! `offline`). Incidents of one vehicle never share a local day, the same kind goes to
//! different vehicles while possible, and incident days start at least 20 h after the start
//! of the run and end at least 20 h before its end, so every vehicle has history first and
//! timers fire well before the data ends. The baseline kinds start later still
//! ([`Scenario::min_day`]): they compare against 14 days of history. Double pledges are not
//! placed on days: they are in the registry from the start (see [`Fleet::double_pledged`]).

use rand::RngExt;
use rand::rngs::SmallRng;
use rand::seq::SliceRandom;
use schemas::AlertKind;

use super::fleet::{DevClass, Fleet, Vehicle};

/// One way of producing an incident.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Scenario {
    /// `power_cut` alarm, then readings on the backup battery until power returns.
    PowerCutAlarm,
    /// Supply voltage collapses to ~0 V without an alarm.
    PowerCutVoltage,
    /// Power cut, a few readings on battery, then silence (also `offline`).
    PowerCutSilent,
    /// `tamper` alarm on a few readings.
    Tamper,
    /// `removal` alarm on a few readings.
    Removal,
    /// `tamper` alarm inside a back-filled batch (late data, `backfill: true` alert).
    TamperBackfill,
    /// Towed ≥ 1 km with ignition off.
    TowMovement,
    /// Device `tow` alarm while parked (nothing moves).
    TowAlarm,
    /// Device `tow` alarm inside a back-filled batch.
    TowAlarmBackfill,
    /// Wired/OBD device silent for 1–4 h while parked.
    OfflineParked,
    /// Wired/OBD device silent across a trip: reappears far away (no tow, no jump).
    OfflineDisplaced,
    /// Wireless unit silent for 30–40 h.
    OfflineWireless,
    /// `jamming` alarm.
    JammingAlarm,
    /// `gnss_antenna_cut` alarm.
    AntennaCut,
    /// No fix for 12–16 min while driving with OBD speed.
    JammingNoFix,
    /// Position teleports ≥ 20 km mid-trip and stays there.
    LocationJump,
    /// Drives out of its permitted region and comes back the next morning.
    GeofenceExit,
    /// Short visit to a risk fence (shorter than its dwell threshold).
    RiskEnter,
    /// Visit to a risk fence longer than its dwell threshold (also `risk_zone_enter`).
    RiskDwell,
    /// Parked ≥ 80 h with the device reporting.
    StationaryLong,
    /// Wireless unit's battery runs low, replaced a day later.
    LowBatteryWireless,
    /// Wired/OBD backup battery runs low overnight, recharges when driving.
    LowBatteryWired,
    /// Odometer drops by 5 000 km or more and stays there.
    OdometerRollback,
    /// Trouble codes cleared (`dist_since_clear_km` resets).
    DtcCleared,
    /// OBD reports a foreign VIN for the rest of the day.
    VinMismatch,
    /// A day of 120–180 km with a mileage blocker: the odometer counts 35–50 % of it.
    MileageBlocker,
    /// A day of 120–180 km with the odometer counting 2–3 times the distance.
    OdometerFast,
    /// OBD reports another pledged vehicle's VIN for the rest of the day (also
    /// `vin_mismatch`).
    ClonedVin,
    /// Registered under two loans with one VIN (registry-level, from the first reading).
    DoublePledge,
    /// Moves 8–40 km away for three nights, then comes back.
    ResidenceChange,
    /// A day of driving well above the vehicle's usual daily distance.
    LongDrive,
    /// A 10–30 km drive around 01:00 local.
    NightDrive,
}

impl Scenario {
    /// The scenarios producing `kind` as their main alert, in rotation order.
    pub(crate) fn variants(kind: AlertKind) -> &'static [Scenario] {
        use Scenario::*;
        match kind {
            AlertKind::PowerCut => &[PowerCutAlarm, PowerCutVoltage, PowerCutSilent],
            AlertKind::DeviceTamper => &[Tamper, Removal, TamperBackfill, Tamper],
            AlertKind::TowSuspected => &[TowMovement, TowAlarm, TowMovement, TowAlarmBackfill],
            AlertKind::Offline => &[OfflineParked, OfflineDisplaced, OfflineWireless],
            AlertKind::GnssJamming => &[JammingNoFix, JammingAlarm, JammingNoFix, AntennaCut],
            AlertKind::LocationJump => &[LocationJump],
            AlertKind::GeofenceExit => &[GeofenceExit],
            AlertKind::RiskZoneEnter => &[RiskEnter],
            AlertKind::RiskZoneDwell => &[RiskDwell],
            AlertKind::StationaryLong => &[StationaryLong],
            AlertKind::LowBattery => &[LowBatteryWireless, LowBatteryWired],
            AlertKind::OdometerRollback => &[OdometerRollback],
            AlertKind::OdometerMismatch => &[MileageBlocker, OdometerFast],
            AlertKind::DtcCleared => &[DtcCleared],
            AlertKind::VinMismatch => &[VinMismatch],
            AlertKind::DuplicateCollateral => &[ClonedVin],
            AlertKind::ResidenceChange => &[ResidenceChange],
            AlertKind::MileageAnomaly => &[LongDrive],
            AlertKind::NightMovement => &[NightDrive],
        }
    }

    /// Every alert (open or instant) the incident raises under docs/rules.md.
    pub(crate) fn expected(self) -> &'static [AlertKind] {
        use Scenario::*;
        match self {
            PowerCutAlarm | PowerCutVoltage => &[AlertKind::PowerCut],
            PowerCutSilent => &[AlertKind::PowerCut, AlertKind::Offline],
            Tamper | Removal | TamperBackfill => &[AlertKind::DeviceTamper],
            TowMovement | TowAlarm | TowAlarmBackfill => &[AlertKind::TowSuspected],
            OfflineParked | OfflineDisplaced | OfflineWireless => &[AlertKind::Offline],
            JammingAlarm | AntennaCut | JammingNoFix => &[AlertKind::GnssJamming],
            LocationJump => &[AlertKind::LocationJump],
            GeofenceExit => &[AlertKind::GeofenceExit],
            RiskEnter => &[AlertKind::RiskZoneEnter],
            RiskDwell => &[AlertKind::RiskZoneEnter, AlertKind::RiskZoneDwell],
            StationaryLong => &[AlertKind::StationaryLong],
            LowBatteryWireless | LowBatteryWired => &[AlertKind::LowBattery],
            OdometerRollback => &[AlertKind::OdometerRollback],
            DtcCleared => &[AlertKind::DtcCleared],
            VinMismatch => &[AlertKind::VinMismatch],
            MileageBlocker | OdometerFast => &[AlertKind::OdometerMismatch],
            ClonedVin => &[AlertKind::DuplicateCollateral, AlertKind::VinMismatch],
            DoublePledge => &[AlertKind::DuplicateCollateral],
            ResidenceChange => &[AlertKind::ResidenceChange],
            LongDrive => &[AlertKind::MileageAnomaly],
            NightDrive => &[AlertKind::NightMovement],
        }
    }

    /// Snake-case label (truth file `scenario` field).
    pub(crate) fn label(self) -> &'static str {
        use Scenario::*;
        match self {
            PowerCutAlarm => "power_cut_alarm",
            PowerCutVoltage => "power_cut_voltage",
            PowerCutSilent => "power_cut_silent",
            Tamper => "tamper",
            Removal => "removal",
            TamperBackfill => "tamper_backfill",
            TowMovement => "tow_movement",
            TowAlarm => "tow_alarm",
            TowAlarmBackfill => "tow_alarm_backfill",
            OfflineParked => "offline_parked",
            OfflineDisplaced => "offline_displaced",
            OfflineWireless => "offline_wireless",
            JammingAlarm => "jamming_alarm",
            AntennaCut => "antenna_cut",
            JammingNoFix => "jamming_no_fix",
            LocationJump => "location_jump",
            GeofenceExit => "geofence_exit",
            RiskEnter => "risk_enter",
            RiskDwell => "risk_dwell",
            StationaryLong => "stationary_long",
            LowBatteryWireless => "low_battery_wireless",
            LowBatteryWired => "low_battery_wired",
            OdometerRollback => "odometer_rollback",
            DtcCleared => "dtc_cleared",
            VinMismatch => "vin_mismatch",
            MileageBlocker => "mileage_blocker",
            OdometerFast => "odometer_fast",
            ClonedVin => "cloned_vin",
            DoublePledge => "double_pledge",
            ResidenceChange => "residence_change",
            LongDrive => "long_drive",
            NightDrive => "night_drive",
        }
    }

    /// Local days the incident occupies on its vehicle, starting at its day.
    pub(crate) fn span_days(self) -> u32 {
        match self {
            Scenario::StationaryLong | Scenario::ResidenceChange => 4,
            Scenario::OfflineWireless => 3,
            Scenario::LowBatteryWireless | Scenario::GeofenceExit => 2,
            _ => 1,
        }
    }

    /// The first local day the incident may start on. The baseline kinds need 14 days of
    /// history; `mileage_anomaly` needs 14 active days (≥ 1 km), and idle days and long
    /// parkings are not active, hence a few days more.
    pub(crate) fn min_day(self) -> u32 {
        match self {
            Scenario::LongDrive => 18,
            Scenario::NightDrive | Scenario::ResidenceChange => 15,
            _ => 0,
        }
    }

    /// Whether a vehicle has the incident at most once: `duplicate_collateral` fires once
    /// per vehicle and VIN, and a night drive makes the next one usual.
    fn once_per_vehicle(self) -> bool {
        matches!(self, Scenario::ClonedVin | Scenario::NightDrive)
    }

    /// Whether the incident replaces the day's background trips with a script.
    pub(crate) fn is_script(self) -> bool {
        use Scenario::*;
        matches!(
            self,
            TowMovement
                | JammingNoFix
                | LocationJump
                | GeofenceExit
                | RiskEnter
                | RiskDwell
                | StationaryLong
                | MileageBlocker
                | OdometerFast
                | ResidenceChange
                | LongDrive
                | NightDrive
        )
    }

    /// Whether the scenario can happen on `v`.
    fn eligible(self, fleet: &Fleet, v: &Vehicle) -> bool {
        use Scenario::*;
        let primary = &fleet.devices[v.primary() as usize];
        let obd = primary.class == DevClass::Obd;
        match self {
            JammingNoFix | DtcCleared => obd,
            VinMismatch => obd && primary.registered,
            ClonedVin => obd && primary.registered && v.cloned_vin.is_some(),
            OfflineWireless | LowBatteryWireless => v.wireless().is_some(),
            TowMovement | LocationJump | OfflineDisplaced => v.wireless().is_none(),
            GeofenceExit => !v.permitted.is_empty(),
            _ => true,
        }
    }
}

/// One placed incident.
#[derive(Clone, Debug)]
pub(crate) struct Incident {
    /// What happens.
    pub scenario: Scenario,
    /// Vehicle index.
    pub vehicle: u32,
    /// First local day (index from the start of the run).
    pub day: u32,
    /// Time range of the messages it touches, set when it is generated; `None` if the
    /// generator could not realise it (e.g. no clear path), in which case it raised nothing.
    pub window: Option<(i64, i64)>,
}

/// Places `per_kind` incidents of each of the 19 kinds on vehicle-days, and the double
/// pledges of the registry on day 0 of their vehicles.
///
/// `first_day(v)` and `last_day(v)` bound the days usable for vehicle `v` (inclusive).
pub(crate) fn schedule(
    fleet: &Fleet,
    per_kind: usize,
    first_day: impl Fn(&Vehicle) -> u32,
    last_day: impl Fn(&Vehicle) -> u32,
    rng: &mut SmallRng,
) -> Vec<Incident> {
    let mut requests: Vec<(AlertKind, usize)> = AlertKind::ALL
        .iter()
        .flat_map(|k| (0..per_kind).map(move |j| (*k, j)))
        .collect();
    requests.shuffle(rng);
    // The least flexible first: long spans, then late starts.
    requests.sort_by_key(|(k, j)| {
        let vs = Scenario::variants(*k);
        let s = vs[j % vs.len()];
        std::cmp::Reverse((s.span_days(), s.min_day()))
    });
    let bounds: Vec<(u32, u32)> = fleet
        .vehicles
        .iter()
        .map(|v| (first_day(v), last_day(v)))
        .collect();
    let max_day = bounds.iter().map(|b| b.1).max().unwrap_or(0) as usize;
    let mut busy = vec![vec![false; max_day + 2]; fleet.vehicles.len()];
    let mut out = Vec::new();
    let mut candidates = Vec::new();
    let mut has_kind = vec![Vec::new(); fleet.vehicles.len()];
    for (kind, j) in requests {
        let variants = Scenario::variants(kind);
        for attempt in 0..variants.len() {
            let scenario = variants[(j + attempt) % variants.len()];
            let span = scenario.span_days();
            candidates.clear();
            for (vi, v) in fleet.vehicles.iter().enumerate() {
                let again = scenario.once_per_vehicle() && has_kind[vi].contains(&kind);
                if again || !scenario.eligible(fleet, v) {
                    continue;
                }
                let (lo, hi) = bounds[vi];
                for d in lo.max(scenario.min_day())..=hi {
                    if d + span - 1 <= hi
                        && (d..d + span).all(|x| !busy[vi][x as usize])
                        && !(scenario.is_script() && busy[vi][d as usize - 1])
                    {
                        candidates.push((vi, d));
                    }
                }
            }
            if candidates.is_empty() {
                continue;
            }
            let fresh: Vec<(usize, u32)> = candidates
                .iter()
                .copied()
                .filter(|(vi, _)| !has_kind[*vi].contains(&kind))
                .collect();
            let pool = if fresh.is_empty() {
                &candidates
            } else {
                &fresh
            };
            let (vi, d) = pool[rng.random_range(0..pool.len())];
            has_kind[vi].push(kind);
            for x in d..d + span {
                busy[vi][x as usize] = true;
            }
            out.push(Incident {
                scenario,
                vehicle: vi as u32,
                day: d,
                window: None,
            });
            break;
        }
    }
    for (a, b) in &fleet.double_pledged {
        for vehicle in [*a, *b] {
            out.push(Incident {
                scenario: Scenario::DoublePledge,
                vehicle,
                day: 0,
                window: None,
            });
        }
    }
    out.sort_by_key(|i| (i.vehicle, i.day));
    out
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;

    use super::*;

    #[test]
    fn every_kind_has_variants_that_raise_it() {
        for kind in AlertKind::ALL {
            for s in Scenario::variants(kind) {
                assert!(s.expected().contains(&kind), "{s:?}");
                assert!(!s.label().is_empty());
            }
        }
    }

    #[test]
    fn incidents_of_a_vehicle_never_share_a_day() {
        let fleet = Fleet::generate(2, 40, 30);
        let mut rng = SmallRng::seed_from_u64(9);
        let incidents = schedule(&fleet, 6, |_| 1, |_| 24, &mut rng);
        let pledges = 2 * fleet.double_pledged.len();
        assert!(pledges > 0);
        assert_eq!(incidents.len(), 6 * AlertKind::ALL.len() + pledges);
        for w in incidents.windows(2) {
            if w[0].vehicle == w[1].vehicle {
                assert!(w[0].day + w[0].scenario.span_days() <= w[1].day);
            }
        }
        for i in &incidents {
            let v = &fleet.vehicles[i.vehicle as usize];
            if i.scenario == Scenario::DoublePledge {
                assert_eq!(i.day, 0);
                continue;
            }
            assert!(i.scenario.eligible(&fleet, v));
            assert!(i.day >= i.scenario.min_day().max(1));
            assert!(i.day + i.scenario.span_days() - 1 <= 24);
        }
    }
}
