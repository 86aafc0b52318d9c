//! The state of one vehicle and the order in which its readings, accepted fixes and timers
//! reach the kinds (docs/rules.md "Order, time and the pipeline clock").
//!
//! Readings arrive through [`VehicleState::arrive`]: duplicates are dropped, late readings take
//! the late path at once, the others wait in their device's buffer. [`VehicleState::advance`]
//! moves the vehicle to a new pipeline clock: buffered readings up to the clock are processed
//! in event-time order, and timers fire in between at their own due times, so the result does
//! not depend on how the input was cut into epochs. The state is plain serde data.

use std::sync::Arc;

use chrono_tz::Tz;
use serde::{Deserialize, Serialize};

use schemas::{Alert, DailyFeatures, DeviceClass, Reading, Record};

use crate::baseline::{Baseline, RowIdentity};
use crate::config::RulesConfig;
use crate::ctx::Ctx;
use crate::dedup::Dedup;
use crate::fences::{FenceIdx, FenceIndex};
use crate::kinds::{
    AtRest, Dev, Lazy, device_tamper::DeviceTamper, dtc_cleared::DtcCleared,
    geofence_exit::GeofenceExit, gnss_jamming::GnssJamming, location_jump::LocationJump,
    low_battery::LowBattery, odometer_mismatch::OdometerMismatch,
    odometer_rollback::OdometerRollback, offline::Offline, power_cut::PowerCut,
    risk_zone_dwell::RiskZoneDwell, risk_zone_enter::RiskZoneEnter,
    stationary_long::StationaryLong, tow_suspected::TowSuspected, vin_mismatch::VinMismatch,
};
use crate::packed::Packed;
use crate::position::{Fix, PositionChain, Step};
use crate::registry::{DEFAULT_TIMEZONE, Registry};
use crate::vin_index::{ClaimSource, VinClaim};

/// Read-only inputs of the rules.
#[derive(Clone, Copy)]
pub struct Env<'a> {
    /// Rule settings.
    pub rules: &'a RulesConfig,
    /// Fences.
    pub fences: &'a FenceIndex,
    /// The registry, whose id strings a new device's state shares.
    pub registry: &'a Registry,
    /// Wall-clock time stamped on alerts emitted now.
    pub detected_at_ms: i64,
}

/// What the vehicle produced.
#[derive(Debug, Default)]
pub struct Outputs {
    /// Alerts, in emission order.
    pub alerts: Vec<Alert>,
    /// Accepted readings (processed in order or late), for the archive.
    pub archive: Vec<Record>,
    /// Closed or revised vehicle-days.
    pub features: Vec<DailyFeatures>,
    /// VIN claims for the fleet-wide index.
    pub claims: Vec<VinClaim>,
}

/// What happened to an arriving reading.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arrival {
    /// Waiting in the reorder buffer.
    Buffered,
    /// Next in its device's sequence: processed at once (see [`VehicleState::arrive`]).
    Processed,
    /// Late: archived, handled by the late path.
    Late,
    /// Duplicate: dropped.
    Duplicate,
}

/// Registry facts about the vehicle the rules need.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Profile {
    /// Loan id (`None` when unregistered), shared with the registry.
    #[serde(with = "schemas::shared_str::option")]
    pub loan_id: Option<Arc<str>>,
    /// Registered VIN, shared with the registry.
    #[serde(with = "schemas::shared_str::option")]
    pub vin: Option<Arc<str>>,
    /// Permitted fences (empty = unrestricted).
    pub permitted: Box<[FenceIdx]>,
    /// Time zone of its local days and nights.
    #[serde(with = "tz_name")]
    pub timezone: Tz,
}

impl Default for Profile {
    fn default() -> Self {
        Self {
            loan_id: None,
            vin: None,
            permitted: Box::default(),
            timezone: DEFAULT_TIMEZONE,
        }
    }
}

/// Serde adapter: a time zone as its IANA name.
mod tz_name {
    use chrono_tz::Tz;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};

    pub fn serialize<S: Serializer>(tz: &Tz, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(tz.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Tz, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        name.parse().map_err(D::Error::custom)
    }
}

/// Device-scope kinds of one device.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct DeviceKinds {
    power_cut: PowerCut,
    odometer_rollback: OdometerRollback,
    odometer_mismatch: OdometerMismatch,
    dtc_cleared: DtcCleared,
    /// The kinds at rest between incidents, boxed only while one of them is not.
    incidents: Lazy<DeviceIncidents>,
}

/// Device-scope kinds whose state is the default while no incident is open.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct DeviceIncidents {
    device_tamper: DeviceTamper,
    offline: Offline,
    gnss_jamming: GnssJamming,
    low_battery: LowBattery,
    vin_mismatch: VinMismatch,
}

/// One device of the vehicle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct DeviceState {
    /// The registry's string when registered.
    #[serde(with = "schemas::shared_str")]
    device_id: Arc<str>,
    class: DeviceClass,
    dedup: Dedup,
    /// Readings waiting for the pipeline clock, in release order: by event time, then input
    /// order. Kept sorted as they come (nearly always at the end), so the clock's every
    /// epoch finds what is due without sorting.
    buffer: Vec<Record>,
    /// The two largest event times received, largest first (`i64::MIN` = none yet).
    newest: [i64; 2],
    /// Event time of the last reading processed in order.
    last_ts: Packed<i64>,
    /// `seq` + 1 of the last reading processed in order (0: unknown), for the in-order fast
    /// path of [`VehicleState::arrive`].
    next_seq: u64,
    /// Last valid position of this device.
    last_fix: Packed<(f64, f64)>,
    /// Whether any in-order reading of the device carried `ignition`.
    reports_ignition: bool,
    /// The VIN its OBD reported last, sharing the registered VIN's string when it is the
    /// same (the usual case).
    #[serde(with = "schemas::shared_str::option")]
    reported_vin: Option<Arc<str>>,
    /// Time and speed of its last in-order reading with a speed (harsh events).
    last_speed: Packed<(i64, f32)>,
    kinds: DeviceKinds,
}

impl DeviceState {
    /// Whether `ts_ms` is older than the device's own newest readings by more than the reorder
    /// window (SPEC §4a: the window is per device). The reference is the second newest time, so
    /// a single reading from a clock far ahead does not make everything after it late.
    fn beyond_reorder_window(&self, ts_ms: i64, window_ms: i64) -> bool {
        let reference = if self.newest[1] > i64::MIN {
            self.newest[1]
        } else {
            self.newest[0]
        };
        reference > i64::MIN && ts_ms < reference.saturating_sub(window_ms)
    }

    /// Whether a reading with `seq` is the next of the device's sequence (the one after the
    /// last it processed in order).
    fn continues_seq(&self, seq: Option<u64>) -> bool {
        self.next_seq > 0 && seq == Some(self.next_seq)
    }

    /// Event time of the last reading processed in order.
    fn last_in_order(&self) -> Option<i64> {
        self.last_ts.get()
    }

    fn note_newest(&mut self, ts_ms: i64) {
        if ts_ms > self.newest[0] {
            self.newest = [ts_ms, self.newest[0]];
        } else if ts_ms > self.newest[1] {
            self.newest[1] = ts_ms;
        }
    }

    fn dev(&self) -> Dev<'_> {
        Dev {
            id: &self.device_id,
            class: self.class,
            reports_ignition: self.reports_ignition,
        }
    }

    /// The device's identity and its kinds, borrowed apart so the kinds can change.
    fn parts(&mut self) -> (Dev<'_>, &mut DeviceKinds) {
        let dev = Dev {
            id: &self.device_id,
            class: self.class,
            reports_ignition: self.reports_ignition,
        };
        (dev, &mut self.kinds)
    }
}

/// Vehicle-scope kinds.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct VehicleKinds {
    tow_suspected: TowSuspected,
    location_jump: LocationJump,
    /// At rest without permitted fences.
    geofence_exit: Lazy<GeofenceExit>,
    /// At rest away from risk fences.
    risk: Lazy<RiskZones>,
    stationary_long: StationaryLong,
}

/// The two risk-zone kinds (`risk_zone_dwell` times the visits of `risk_zone_enter`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct RiskZones {
    enter: RiskZoneEnter,
    dwell: RiskZoneDwell,
}

impl AtRest for RiskZones {
    fn at_rest(&self) -> bool {
        self.enter.at_rest() && self.dwell.at_rest()
    }
}

impl AtRest for DeviceIncidents {
    fn at_rest(&self) -> bool {
        // Options and flags only: the derived comparison is cheap.
        *self == Self::default()
    }
}

/// Sizes of the vehicle's private state types (`size_of`), for the memory harness
/// (`benches/examples/vehicles_rss.rs`).
#[derive(Clone, Copy, Debug)]
pub struct TypeSizes {
    /// One device (an element of the vehicle's device list).
    pub device_state: usize,
    /// Its kinds, inline in it.
    pub device_kinds: usize,
    /// Its kinds at rest between incidents (boxed while one is not).
    pub device_incidents: usize,
    /// The vehicle-scope kinds, inline in the vehicle.
    pub vehicle_kinds: usize,
    /// `geofence_exit` (boxed while it has state).
    pub geofence_exit: usize,
    /// The two risk-zone kinds (boxed while they have state).
    pub risk_zones: usize,
}

impl TypeSizes {
    /// The sizes of this build.
    pub fn new() -> Self {
        use std::mem::size_of;
        Self {
            device_state: size_of::<DeviceState>(),
            device_kinds: size_of::<DeviceKinds>(),
            device_incidents: size_of::<DeviceIncidents>(),
            vehicle_kinds: size_of::<VehicleKinds>(),
            geofence_exit: size_of::<GeofenceExit>(),
            risk_zones: size_of::<RiskZones>(),
        }
    }
}

impl Default for TypeSizes {
    fn default() -> Self {
        Self::new()
    }
}

/// Everything lienwatch keeps about one vehicle.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VehicleState {
    /// Vehicle id, shared with the registry and the fleet's index.
    #[serde(with = "schemas::shared_str")]
    pub vehicle_id: Arc<str>,
    /// Registry facts.
    pub profile: Profile,
    devices: Vec<DeviceState>,
    chain: PositionChain,
    kinds: VehicleKinds,
    baseline: Baseline,
    /// Whether the registered VIN was claimed since the profile last changed.
    claimed_registration: bool,
    /// Readings in the devices' buffers (a `u32` packs with the flag above; bincode writes
    /// both integer widths alike).
    buffered: u32,
}

/// The order buffered readings are released in: event time, then input order.
fn release_key(r: &Record) -> (i64, u64) {
    (r.reading.ts_ms, r.ingest_seq)
}

fn make_ctx<'a>(
    vehicle_id: &'a str,
    profile: &'a Profile,
    env: &Env<'a>,
    position: Option<(f64, f64)>,
    backfill: bool,
    alerts: &'a mut Vec<Alert>,
) -> Ctx<'a> {
    Ctx {
        rules: env.rules,
        fences: env.fences,
        permitted: &profile.permitted,
        registered_vin: profile.vin.as_deref(),
        vehicle_id,
        loan_id: profile.loan_id.as_deref(),
        position,
        backfill,
        detected_at_ms: env.detected_at_ms,
        alerts,
    }
}

fn device_of<'a>(devices: &'a [DeviceState]) -> impl Fn(u16) -> Dev<'a> + 'a {
    move |i| devices[usize::from(i)].dev()
}

impl VehicleState {
    /// A vehicle nothing is known about yet.
    pub fn new(vehicle_id: Arc<str>, profile: Profile) -> Self {
        Self {
            vehicle_id,
            profile,
            devices: Vec::new(),
            chain: PositionChain::default(),
            kinds: VehicleKinds::default(),
            baseline: Baseline::default(),
            claimed_registration: false,
            buffered: 0,
        }
    }

    /// Applies changed registry facts from the next reading on (a reload).
    pub fn set_profile(&mut self, profile: Profile) {
        if profile != self.profile {
            self.claimed_registration = false;
        }
        // Taken even when equal, so that a restored vehicle shares the registry's strings.
        self.profile = profile;
    }

    /// Takes the registry's strings for the vehicle's and its devices' ids where it has them
    /// (a restore or a reload), so they are shared rather than held twice; an unregistered
    /// device shares its vehicle's id, which is its own.
    pub(crate) fn share_ids(&mut self, registry: &Registry) {
        if let Some(entry) = registry.vehicle(&self.vehicle_id) {
            self.vehicle_id = Arc::clone(&entry.vehicle_id);
        }
        for device in &mut self.devices {
            if let Some(entry) = registry.device(&device.device_id) {
                device.device_id = Arc::clone(&entry.device_id);
            } else if device.device_id == self.vehicle_id {
                device.device_id = Arc::clone(&self.vehicle_id);
            }
        }
    }

    /// The ids of the vehicle's devices.
    #[cfg(test)]
    pub(crate) fn device_ids(&self) -> impl Iterator<Item = &Arc<str>> {
        self.devices.iter().map(|d| &d.device_id)
    }

    /// Appends the fence indices the state refers to (the profile's permitted fences, the
    /// risk fences of visits, entries and dwell incidents), with repeats.
    pub(crate) fn fence_refs(&self, out: &mut Vec<FenceIdx>) {
        out.extend(self.profile.permitted.iter());
        if let Some(z) = self.kinds.risk.get() {
            z.enter.fence_refs(out);
            z.dwell.fence_refs(out);
        }
    }

    /// Renumbers the fence indices the state refers to, for a restore onto a fence index
    /// other than the one the state was saved with. A reference `map` drops (a fence that is
    /// gone) is forgotten: its visit ends and an open `risk_zone_dwell` incident of it gets no
    /// `close`.
    pub(crate) fn remap_fences(&mut self, map: impl Fn(FenceIdx) -> Option<FenceIdx>) {
        self.profile.permitted = self
            .profile
            .permitted
            .iter()
            .filter_map(|&f| map(f))
            .collect();
        self.kinds.risk.with(|z| {
            z.enter.remap_fences(&map);
            z.dwell.remap_fences(&map);
        });
    }

    /// Whether emitted days wait to be emitted again after late data.
    pub fn has_revisions(&self) -> bool {
        self.baseline.has_revisions()
    }

    /// Completes a restored vehicle: puts the reorder buffers in release order (a restored
    /// snapshot's may not be: earlier builds kept them in arrival order) and counts the days
    /// waiting to be emitted again, which snapshots do not hold.
    pub(crate) fn settle_restored(&mut self) {
        for device in &mut self.devices {
            device.buffer.sort_by_key(release_key);
        }
        self.baseline.recount_revisions();
    }

    /// Whether readings wait in the reorder buffers.
    pub fn has_buffered(&self) -> bool {
        self.buffered > 0
    }

    /// Event time of the earliest buffered reading: the clock releases nothing before it.
    pub fn earliest_buffered(&self) -> Option<i64> {
        if self.buffered == 0 {
            return None;
        }
        self.devices
            .iter()
            .filter_map(|d| d.buffer.first().map(|r| r.reading.ts_ms))
            .min()
    }

    /// GNSS distance driven so far, metres.
    pub fn gnss_distance_m(&self) -> f64 {
        self.chain.distance_m
    }

    fn device_index(&mut self, record: &Record, registry: &Registry) -> usize {
        let id = &record.reading.device_id;
        if let Some(i) = self.devices.iter().position(|d| *d.device_id == **id) {
            return i;
        }
        // Most vehicles have one device: the default growth would make room for four.
        self.devices.reserve_exact(1);
        self.devices.push(DeviceState {
            // An unregistered device is its own vehicle, whose id is the device's.
            device_id: match registry.device(id) {
                Some(entry) => Arc::clone(&entry.device_id),
                None if !record.registered => Arc::clone(&record.vehicle_id),
                None => id.as_str().into(),
            },
            class: record.class,
            dedup: Dedup::default(),
            buffer: Vec::new(),
            newest: [i64::MIN; 2],
            last_ts: Packed::NONE,
            next_seq: 0,
            last_fix: Packed::NONE,
            reports_ignition: false,
            reported_vin: None,
            last_speed: Packed::NONE,
            kinds: DeviceKinds::default(),
        });
        self.devices.len() - 1
    }

    /// Takes an arriving reading: drops duplicates, handles late readings at once, buffers
    /// the rest until the pipeline clock passes them. `clock_ms` is the pipeline clock the
    /// reading arrives at: a reading it has already passed is late.
    ///
    /// In-order fast path, see [`release_in_sequence`](Self::release_in_sequence): on a
    /// vehicle with one device, the readings that continue its device's `seq` are processed
    /// at once.
    pub fn arrive(
        &mut self,
        record: Record,
        clock_ms: Option<i64>,
        env: &Env<'_>,
        out: &mut Outputs,
    ) -> Arrival {
        let d = self.device_index(&record, env.registry);
        let one_device = self.devices.len() == 1;
        let r = &record.reading;
        let device = &mut self.devices[d];
        if device.dedup.is_duplicate(r.seq, r.ts_ms, r.content_hash) {
            return Arrival::Duplicate;
        }
        let late = r.backfill
            || clock_ms.is_some_and(|c| r.ts_ms <= c)
            || device.last_in_order().is_some_and(|l| r.ts_ms <= l)
            || device.beyond_reorder_window(r.ts_ms, env.rules.reorder_window_ms());
        device.note_newest(r.ts_ms);
        if !late && one_device && device.buffer.is_empty() && device.continues_seq(r.seq) {
            // What `release_in_sequence` would do with it, without a trip through the buffer
            // (which would allocate and free it for nearly every live reading).
            self.fire_timers_until(r.ts_ms, false, env, out);
            self.process(0, &record, env, out);
            out.archive.push(record);
            return Arrival::Processed;
        }
        if !late {
            let key = release_key(&record);
            if device.buffer.last().is_none_or(|b| release_key(b) <= key) {
                device.buffer.push(record);
            } else {
                let at = device.buffer.partition_point(|b| release_key(b) <= key);
                device.buffer.insert(at, record);
            }
            self.buffered += 1;
            if one_device && self.release_in_sequence(env, out) {
                return Arrival::Processed;
            }
            return Arrival::Buffered;
        }
        self.baseline
            .note_reading(r, self.profile.timezone, env.rules);
        let Self {
            vehicle_id,
            profile,
            devices,
            chain,
            kinds,
            ..
        } = self;
        let device = &mut devices[d];
        let position = r.valid_position(env.rules.max_hdop);
        // Late alerts carry the reading's own position, else the vehicle's last known one.
        let shown = position.or(chain.last_accepted().map(|f| (f.lat, f.lon)));
        let mut ctx = make_ctx(vehicle_id, profile, env, shown, true, &mut out.alerts);
        let (dev, k) = device.parts();
        k.incidents
            .with(|i| i.device_tamper.on_late(r, dev, &mut ctx));
        kinds.tow_suspected.on_late(r, dev, &mut ctx);
        if let Some((lat, lon)) = position {
            let fix = Fix {
                ts_ms: r.ts_ms,
                lat,
                lon,
                device: d as u16,
                ignition: r.ignition,
                speed_kmh: r.speed_kmh.into(),
            };
            let mut inside = Vec::new();
            env.fences.risk_fences_at(lat, lon, &mut inside);
            kinds.risk.with(|z| {
                z.enter
                    .on_late_fix(&fix, &inside, device_of(devices), &mut ctx)
            });
        }
        out.archive.push(record);
        Arrival::Late
    }

    /// The in-order fast path: while the earliest buffered reading of the vehicle's only
    /// device is the next of its `seq` (the one after the last it processed), processes it
    /// now. No reading can come before it any more (a smaller `seq` is a duplicate; a later
    /// `seq` with an earlier `ts` is late, as `backfill` is), so the rules see the same
    /// readings in the same order as after the reorder window, but its alerts go out now
    /// rather than a window later: live, where event time is wall time, the window (SPEC
    /// default 2 min) would delay every alert, a tamper alarm included. A gap in `seq` (a
    /// message lost or still in flight, a reboot) or a device without `seq` waits for the
    /// window as before. Timers due before a reading fire first, as they do when the clock
    /// releases it. Returns whether any reading was processed.
    fn release_in_sequence(&mut self, env: &Env<'_>, out: &mut Outputs) -> bool {
        let mut processed = false;
        loop {
            let device = &mut self.devices[0];
            let Some(record) = device.buffer.first() else {
                // An idle vehicle keeps no room for the next drive's readings.
                device.buffer = Vec::new();
                return processed;
            };
            let r = &record.reading;
            if !device.continues_seq(r.seq) || device.last_in_order().is_some_and(|l| r.ts_ms <= l)
            {
                return processed;
            }
            let record = device.buffer.remove(0);
            self.buffered -= 1;
            self.fire_timers_until(record.reading.ts_ms, false, env, out);
            self.process(0, &record, env, out);
            out.archive.push(record);
            processed = true;
        }
    }

    /// Moves the vehicle to pipeline clock `clock_ms`: processes buffered readings up to it
    /// in event-time order (input order on ties) and fires the timers due on the way.
    pub fn advance(&mut self, clock_ms: i64, env: &Env<'_>, out: &mut Outputs) {
        self.release(Some(clock_ms), env, out);
        self.fire_timers_until(clock_ms, true, env, out);
        self.clock_days(clock_ms, env, out);
    }

    /// Closes the open day if `clock_ms` passed it and emits revised days.
    fn clock_days(&mut self, clock_ms: i64, env: &Env<'_>, out: &mut Outputs) {
        let row = RowIdentity {
            vehicle_id: &self.vehicle_id,
            loan_id: self.profile.loan_id.as_deref(),
        };
        self.baseline
            .on_clock(clock_ms, &self.chain, &row, env.rules, &mut out.features);
    }

    /// When the vehicle next needs the clock: its earliest timer or the end of its open day.
    pub fn next_wakeup(&self, rules: &RulesConfig, fences: &FenceIndex) -> Option<i64> {
        let due = self.next_due(rules, fences);
        match (due, self.baseline.close_due()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// End of input: processes every buffered reading (timers fire only between readings).
    pub fn flush(&mut self, env: &Env<'_>, out: &mut Outputs) {
        self.release(None, env, out);
        // Closed days the last readings changed are emitted again; the open day stays open.
        self.clock_days(i64::MIN, env, out);
    }

    fn release(&mut self, clock_ms: Option<i64>, env: &Env<'_>, out: &mut Outputs) {
        if self.buffered == 0 {
            return;
        }
        let mut ready: Vec<(usize, Record)> = Vec::new();
        for (d, device) in self.devices.iter_mut().enumerate() {
            let due = match clock_ms {
                Some(c) => device.buffer.partition_point(|r| r.reading.ts_ms <= c),
                None => device.buffer.len(),
            };
            if due == 0 {
                continue;
            }
            ready.extend(device.buffer.drain(..due).map(|r| (d, r)));
            if device.buffer.is_empty() {
                // An idle vehicle keeps no room for the next drive's readings.
                device.buffer = Vec::new();
            }
        }
        self.buffered -= u32::try_from(ready.len()).expect("the buffered readings are counted");
        ready.sort_by_key(|(_, r)| release_key(r));
        for (d, record) in ready {
            self.fire_timers_until(record.reading.ts_ms, false, env, out);
            let device = &self.devices[d];
            if device
                .last_in_order()
                .is_some_and(|l| record.reading.ts_ms <= l)
            {
                // Equal timestamps from one device: the second one is late.
                self.baseline
                    .note_reading(&record.reading, self.profile.timezone, env.rules);
                out.archive.push(record);
                continue;
            }
            self.process(d, &record, env, out);
            out.archive.push(record);
        }
    }

    /// The earliest timer of the vehicle.
    pub fn next_due(&self, rules: &RulesConfig, fences: &FenceIndex) -> Option<i64> {
        let devices = self.devices.iter().filter_map(|d| {
            d.kinds
                .incidents
                .read(|i| i.offline.due(d.last_in_order(), d.dev(), rules))
        });
        let vehicle = [
            self.kinds
                .risk
                .read(|z| z.dwell.due(&z.enter.visits, rules, fences)),
            self.kinds.stationary_long.due(rules),
        ];
        devices.chain(vehicle.into_iter().flatten()).min()
    }

    /// Fires timers due before `until` (or at it, when `inclusive`).
    fn fire_timers_until(&mut self, until: i64, inclusive: bool, env: &Env<'_>, out: &mut Outputs) {
        while let Some(due) = self
            .next_due(env.rules, env.fences)
            .filter(|d| *d < until || (inclusive && *d == until))
        {
            self.fire_timers(due, env, out);
            // Every timer that fires moves its due time; a stuck one must not spin.
            let stuck = self.next_due(env.rules, env.fences) == Some(due);
            debug_assert!(!stuck, "timers must make progress");
            if stuck {
                break;
            }
        }
    }

    fn fire_timers(&mut self, now: i64, env: &Env<'_>, out: &mut Outputs) {
        let Self {
            vehicle_id,
            profile,
            devices,
            chain,
            kinds,
            ..
        } = self;
        let last = chain.last_accepted().map(|f| (f.lat, f.lon));
        for device in devices.iter_mut() {
            let position = device.last_fix.get().or(last);
            let mut ctx = make_ctx(vehicle_id, profile, env, position, false, &mut out.alerts);
            let last_ts = device.last_in_order();
            let (dev, k) = device.parts();
            k.incidents
                .with(|i| i.offline.on_timer(now, last_ts, dev, &mut ctx));
        }
        let online = devices.iter().any(|d| {
            d.last_in_order()
                .is_some_and(|l| now - l < env.rules.offline_after_ms(d.class))
        });
        let mut ctx = make_ctx(vehicle_id, profile, env, last, false, &mut out.alerts);
        let names = device_of(devices);
        let held = chain.held();
        kinds.risk.with(|z| {
            z.dwell
                .on_timer(now, &z.enter.visits, held, &names, &mut ctx)
        });
        kinds
            .stationary_long
            .on_timer(now, online, held, &names, &mut ctx);
    }

    /// Processes one in-order reading of device `d`.
    fn process(&mut self, d: usize, record: &Record, env: &Env<'_>, out: &mut Outputs) {
        let r = &record.reading;
        let fix_pos = r.valid_position(env.rules.max_hdop);
        let Self {
            vehicle_id,
            profile,
            devices,
            chain,
            kinds,
            baseline,
            claimed_registration,
            ..
        } = self;
        let tz = profile.timezone;
        let position = fix_pos.or(chain.last_accepted().map(|f| (f.lat, f.lon)));
        let mut ctx = make_ctx(vehicle_id, profile, env, position, false, &mut out.alerts);
        baseline.before_reading(r, tz, chain.last_accepted(), devices[d].dev(), &mut ctx);
        {
            let device = &mut devices[d];
            device.reports_ignition |= r.ignition.is_some();
            let before = (device.last_in_order(), device.last_fix.get());
            let (dev, k) = device.parts();
            // The call order is the order of the alerts one reading raises; the kinds at rest
            // are taken out (or left at rest) once.
            k.incidents.with(|i| {
                i.offline
                    .on_reading(r.ts_ms, before, fix_pos, dev, &mut ctx);
                k.power_cut.on_reading(r, dev, &mut ctx);
                i.device_tamper.on_reading(r, dev, &mut ctx);
                i.gnss_jamming
                    .on_reading(r, fix_pos.is_some(), dev, &mut ctx);
                i.low_battery.on_reading(r, dev, &mut ctx);
                k.odometer_rollback.on_reading(r, dev, &mut ctx);
                k.dtc_cleared.on_reading(r, dev, &mut ctx);
                i.vin_mismatch.on_reading(r, dev, &mut ctx);
            });
            kinds.tow_suspected.on_reading(r, d as u16, dev, &mut ctx);
            let device = &mut devices[d];
            device.last_ts = Packed::some(r.ts_ms);
            device.next_seq = r.seq.map_or(0, |s| s.wrapping_add(1));
            if let Some(pos) = fix_pos {
                device.last_fix = Packed::some(pos);
            }
        }
        kinds
            .stationary_long
            .on_reading(r.ts_ms, fix_pos, device_of(devices), &mut ctx);
        if let Some((lat, lon)) = fix_pos {
            let fix = Fix {
                ts_ms: r.ts_ms,
                lat,
                lon,
                device: d as u16,
                ignition: r.ignition,
                speed_kmh: r
                    .speed_kmh
                    .or_else(|| r.gnss.as_ref().and_then(|g| g.speed_kmh))
                    .into(),
            };
            if let Some(step) = chain.push(fix, env.rules) {
                on_step(&step, devices, kinds, baseline, env, &mut ctx);
            }
        }
        let device = &mut devices[d];
        if let Some(km) = r.odometer_km {
            let (dev, k) = device.parts();
            k.odometer_mismatch.on_odometer(
                r.ts_ms,
                km,
                chain.distance_m,
                chain.breaks,
                dev,
                &mut ctx,
            );
        }
        let claims = Claims {
            vehicle_id,
            profile,
            position,
            claimed_registration,
        };
        claims.collect(device, r, &mut out.claims);
        let row = RowIdentity {
            vehicle_id,
            loan_id: profile.loan_id.as_deref(),
        };
        baseline.after_reading(r, tz, chain, &row, env.rules, &mut out.features);
        let speed = r
            .speed_kmh
            .or_else(|| r.gnss.as_ref().and_then(|g| g.speed_kmh))
            .filter(|s| s.is_finite());
        if let Some(v) = speed {
            if let Some(prev) = device.last_speed.get() {
                baseline.note_speed_change(prev, (r.ts_ms, v), env.rules);
            }
            device.last_speed = Packed::some((r.ts_ms, v));
        }
    }
}

/// What a reading tells the fleet-wide VIN index (`duplicate_collateral`).
struct Claims<'a> {
    vehicle_id: &'a str,
    profile: &'a Profile,
    position: Option<(f64, f64)>,
    claimed_registration: &'a mut bool,
}

impl Claims<'_> {
    /// Claims the registered VIN once per profile, and a device's OBD VIN when it changes.
    /// Unregistered vehicles have no loan and claim nothing.
    fn collect(self, device: &mut DeviceState, r: &Reading, claims: &mut Vec<VinClaim>) {
        let Some(loan_id) = self.profile.loan_id.as_deref() else {
            return;
        };
        let claim = |vin: &str, source| VinClaim {
            vin: vin.to_owned(),
            vehicle_id: self.vehicle_id.to_owned(),
            loan_id: loan_id.to_owned(),
            device_id: device.device_id.to_string(),
            ts_ms: r.ts_ms,
            position: self.position,
            source,
        };
        if !*self.claimed_registration {
            *self.claimed_registration = true;
            if let Some(vin) = &self.profile.vin {
                claims.push(claim(vin, ClaimSource::Registered));
            }
        }
        let reported = r
            .obd
            .as_ref()
            .and_then(|o| o.vin.as_deref())
            .filter(|v| !v.is_empty());
        if let Some(vin) = reported
            && device.reported_vin.as_deref() != Some(vin)
        {
            claims.push(claim(vin, ClaimSource::Reported));
            let registered = self.profile.vin.as_ref().filter(|v| ***v == *vin);
            device.reported_vin = Some(registered.map_or_else(|| vin.into(), Arc::clone));
        }
    }
}

/// Runs the position kinds on an accepted fix.
fn on_step(
    step: &Step,
    devices: &[DeviceState],
    kinds: &mut VehicleKinds,
    baseline: &mut Baseline,
    env: &Env<'_>,
    ctx: &mut Ctx<'_>,
) {
    let fix = step.fix;
    let device = &devices[usize::from(fix.device)];
    let gap = step.prev.is_some() && step.dt_ms > env.rules.offline_after_ms(device.class);
    let names = device_of(devices);
    let saved = ctx.position.replace((fix.lat, fix.lon));
    kinds.tow_suspected.on_step(step, gap, device.dev(), ctx);
    kinds.location_jump.on_step(step, gap, device.dev(), ctx);
    kinds.geofence_exit.with(|g| g.on_step(step, &names, ctx));
    let mut inside = Vec::new();
    env.fences.risk_fences_at(fix.lat, fix.lon, &mut inside);
    let mut left = Vec::new();
    kinds.risk.with(|z| {
        z.enter.on_step(step, &inside, &names, ctx, &mut left);
        z.dwell.on_step();
        for l in &left {
            z.dwell.on_left(l, &names, ctx);
        }
    });
    kinds.stationary_long.on_step(step, device.dev(), ctx);
    baseline.on_step(step, device.dev(), ctx);
    ctx.position = saved;
}

#[cfg(test)]
mod tests {
    //! The chain against a simple reference: whatever the arrival order (within the reorder
    //! window), duplicates, and cuts into epochs, a vehicle raises the same alerts (and daily
    //! features) as one fed
    //! the de-duplicated readings sorted by time in a single step.

    use super::*;
    use proptest::prelude::*;
    use schemas::{Alarm, AlarmSet, Gnss, Power, Reading};

    const T0: i64 = 1_764_000_000_000;

    #[derive(Clone, Debug)]
    struct Step {
        dt_s: i64,
        device: u8,
        dlat: f64,
        ignition: Option<bool>,
        ext_v: f32,
        alarm: u8,
        fix: bool,
    }

    fn step() -> impl Strategy<Value = Step> {
        (
            prop_oneof![8 => 5i64..90, 1 => 1500i64..4000],
            0u8..2,
            prop_oneof![6 => -0.0005f64..0.0005, 1 => -0.05f64..0.05],
            prop_oneof![Just(None), Just(Some(true)), Just(Some(false))],
            prop_oneof![4 => Just(12.5f32), 1 => Just(0.5f32)],
            0u8..12,
            prop_oneof![5 => Just(true), 1 => Just(false)],
        )
            .prop_map(|(dt_s, device, dlat, ignition, ext_v, alarm, fix)| Step {
                dt_s,
                device,
                dlat,
                ignition,
                ext_v,
                alarm,
                fix,
            })
    }

    fn readings(steps: &[Step]) -> Vec<Record> {
        let mut ts = T0;
        let mut lat = 31.0;
        steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                ts += s.dt_s * 1000;
                lat += s.dlat;
                let mut alarm_set = AlarmSet::default();
                let alarms = match s.alarm {
                    0 => vec![Alarm::Tamper],
                    1 => vec![Alarm::Tow],
                    2 => vec![Alarm::PowerCut],
                    _ => vec![],
                };
                for a in &alarms {
                    alarm_set.insert(*a);
                }
                Record {
                    vehicle_id: "V".into(),
                    loan_id: Some("L".into()),
                    class: DeviceClass::Wired,
                    registered: true,
                    ingest_seq: i as u64,
                    reading: Box::new(Reading {
                        device_id: format!("D{}", s.device),
                        ts_ms: ts,
                        seq: Some(i as u64),
                        gnss: Some(Gnss {
                            lat: Some(lat),
                            lon: Some(121.0),
                            fix: s.fix,
                            ..Gnss::default()
                        }),
                        ignition: s.ignition,
                        speed_kmh: Some(if s.ignition == Some(true) { 40.0 } else { 0.0 }),
                        power: Some(Power {
                            ext_v: Some(s.ext_v),
                            battery_pct: Some(80.0),
                        }),
                        alarm_set,
                        alarms: alarms.iter().map(|a| a.as_str().to_owned()).collect(),
                        content_hash: i as u64,
                        ..Reading::default()
                    }),
                }
            })
            .collect()
    }

    fn run(arrivals: Vec<Record>, cuts: &[usize]) -> (Vec<Alert>, usize, Vec<DailyFeatures>) {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let env = Env {
            rules: &rules,
            fences: &fences,
            registry: &Registry::empty(),
            detected_at_ms: 0,
        };
        let mut v = VehicleState::new("V".into(), Profile::default());
        let mut out = Outputs::default();
        let mut max_ts = i64::MIN;
        let mut clock = None;
        let mut cut = cuts.iter().cycle();
        let mut in_epoch = 0;
        let epoch_len = |c: Option<&usize>| c.copied().unwrap_or(usize::MAX).max(1);
        let mut this_epoch = epoch_len(cut.next());
        for record in arrivals {
            max_ts = max_ts.max(record.reading.ts_ms);
            v.arrive(record, clock, &env, &mut out);
            in_epoch += 1;
            if in_epoch == this_epoch {
                clock = Some(max_ts - rules.reorder_window_ms());
                v.advance(max_ts - rules.reorder_window_ms(), &env, &mut out);
                in_epoch = 0;
                this_epoch = epoch_len(cut.next());
            }
        }
        v.advance(max_ts - rules.reorder_window_ms(), &env, &mut out);
        v.flush(&env, &mut out);
        (out.alerts, out.archive.len(), out.features)
    }

    /// `arrivals` with the neighbours at `swaps` swapped where they are less than a minute
    /// apart (well within the reorder window) and the readings at `dups` repeated.
    fn disorder(
        mut arrivals: Vec<Record>,
        swaps: &[prop::sample::Index],
        dups: &[prop::sample::Index],
    ) -> Vec<Record> {
        for s in swaps {
            let i = s.index(arrivals.len().max(2) - 1);
            if i + 1 < arrivals.len()
                && arrivals[i + 1].reading.ts_ms - arrivals[i].reading.ts_ms < 60_000
            {
                arrivals.swap(i, i + 1);
            }
        }
        for d in dups {
            let i = d.index(arrivals.len());
            let copy = arrivals[i].clone();
            arrivals.insert(i + 1, copy);
        }
        arrivals
    }

    /// The same readings without `seq`: the in-order fast path never applies to them.
    fn without_seq(records: &[Record]) -> Vec<Record> {
        records
            .iter()
            .cloned()
            .map(|mut r| {
                r.reading.seq = None;
                r
            })
            .collect()
    }

    #[test]
    fn a_device_fits_in_a_640_byte_block() {
        // A vehicle's devices are one allocation, which mimalloc rounds up to a size class:
        // 640 bytes is one, and at 648 bytes every tracker took a 768-byte block.
        assert!(std::mem::size_of::<DeviceState>() <= 640);
    }

    #[test]
    fn the_next_reading_of_a_sequence_is_processed_at_once() {
        let rules = RulesConfig::default();
        let fences = FenceIndex::empty();
        let env = Env {
            rules: &rules,
            fences: &fences,
            registry: &Registry::empty(),
            detected_at_ms: 0,
        };
        let steps: Vec<Step> = (0..4)
            .map(|i| Step {
                dt_s: 30,
                device: 0,
                dlat: 0.0,
                ignition: Some(false),
                ext_v: 12.5,
                alarm: if i == 3 { 0 } else { 9 },
                fix: true,
            })
            .collect();
        let records = readings(&steps);
        let mut v = VehicleState::new("V".into(), Profile::default());
        let mut out = Outputs::default();
        let arrivals: Vec<Arrival> = records
            .clone()
            .into_iter()
            .map(|r| v.arrive(r, None, &env, &mut out))
            .collect();
        // The first waits (nothing processed yet to follow); the next ones wait behind it.
        assert!(arrivals.iter().all(|a| matches!(a, Arrival::Buffered)));
        v.advance(records[3].reading.ts_ms, &env, &mut out);
        let mut more = readings(&[steps[0].clone(), steps[1].clone()]);
        for (i, r) in more.iter_mut().enumerate() {
            r.reading.ts_ms = records[3].reading.ts_ms + 30_000 * (i as i64 + 1);
            r.reading.seq = Some(4 + i as u64);
        }
        let tampered = out.alerts.len();
        more[1].reading.seq = Some(7);
        let [next, gap] = <[Record; 2]>::try_from(more).unwrap();
        assert!(matches!(
            v.arrive(next, None, &env, &mut out),
            Arrival::Processed
        ));
        assert!(matches!(
            v.arrive(gap, None, &env, &mut out),
            Arrival::Buffered
        ));
        assert_eq!(
            out.alerts.len(),
            tampered,
            "the tamper alarm was raised when released"
        );
        assert_eq!(out.archive.len(), 5);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// A vehicle with one device processes the readings that continue its sequence at
        /// once: whatever the arrival order (within the reorder window), duplicates and cuts
        /// into epochs, it raises the same alerts and features as the same readings without
        /// `seq`, which all wait for the window.
        #[test]
        fn readings_processed_at_once_raise_what_the_window_raises(
            steps in proptest::collection::vec(step(), 1..150),
            swaps in proptest::collection::vec(any::<prop::sample::Index>(), 0..30),
            dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
            cuts in proptest::collection::vec(1usize..40, 0..6),
        ) {
            let one_device: Vec<Step> = steps.into_iter().map(|s| Step { device: 0, ..s }).collect();
            let arrivals = disorder(readings(&one_device), &swaps, &dups);
            let windowed = run(without_seq(&arrivals), &cuts);
            prop_assert_eq!(run(arrivals, &cuts), windowed);
        }

        #[test]
        fn arrival_order_duplicates_and_epochs_do_not_change_alerts(
            steps in proptest::collection::vec(step(), 1..250),
            swaps in proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
            dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            cuts in proptest::collection::vec(1usize..40, 1..8),
        ) {
            let sorted = readings(&steps);
            let (reference, archived, features) = run(sorted.clone(), &[]);
            prop_assert_eq!(archived, sorted.len());

            let arrivals = disorder(sorted.clone(), &swaps, &dups);
            let (shuffled, archived, shuffled_features) = run(arrivals, &cuts);
            prop_assert_eq!(archived, sorted.len());
            prop_assert_eq!(shuffled, reference);
            prop_assert_eq!(shuffled_features, features);
        }
    }
}

#[cfg(test)]
mod noise {
    //! SPEC §4a noise cases, each on a vehicle parked (or driving) quietly for a day: none of
    //! them may raise an alert.

    use super::*;
    use schemas::{Gnss, Obd, Power, Reading};

    const T0: i64 = 1_764_000_000_000;
    const HOME: (f64, f64) = (31.2304, 121.4737);

    /// A wired device reporting every 5 minutes, parked at home with ignition off.
    fn parked(i: i64) -> Reading {
        Reading {
            device_id: "D1".into(),
            ts_ms: T0 + i * 300_000,
            seq: Some(i as u64),
            gnss: Some(Gnss {
                lat: Some(HOME.0 + (i % 3) as f64 * 0.00005),
                lon: Some(HOME.1),
                fix: true,
                hdop: Some(1.0),
                ..Gnss::default()
            }),
            ignition: Some(false),
            speed_kmh: Some(0.0),
            odometer_km: Some(45_210.4),
            obd: Some(Obd {
                vin: Some("VIN1".into()),
                dist_since_clear_km: Some(800.0),
                ..Obd::default()
            }),
            power: Some(Power {
                ext_v: Some(12.6),
                battery_pct: Some(97.0),
            }),
            content_hash: i as u64,
            ..Reading::default()
        }
    }

    fn at(mut r: Reading, lat: f64, lon: f64) -> Reading {
        let g = r.gnss.as_mut().expect("parked readings have a fix");
        g.lat = Some(lat);
        g.lon = Some(lon);
        r
    }

    /// Replays `readings` in the given arrival order, one epoch per reading, and returns the
    /// alerts (with a permitted fence around home, so geofence rules are armed).
    fn alerts(readings: Vec<Reading>) -> Vec<Alert> {
        let fences = FenceIndex::from_geojson_str(
            r#"{"type":"FeatureCollection","features":[{"type":"Feature",
            "properties":{"id":"city","role":"permitted","radius_m":30000},
            "geometry":{"type":"Point","coordinates":[121.4737,31.2304]}}]}"#,
            "test",
        )
        .expect("valid fence");
        let rules = RulesConfig::default();
        let env = Env {
            rules: &rules,
            fences: &fences,
            registry: &Registry::empty(),
            detected_at_ms: 0,
        };
        let profile = Profile {
            loan_id: Some("L1".into()),
            vin: Some("VIN1".into()),
            permitted: Box::new([fences.lookup("city").expect("fence")]),
            ..Profile::default()
        };
        let mut v = VehicleState::new("V1".into(), profile);
        let mut out = Outputs::default();
        let mut max_ts = i64::MIN;
        let mut clock = None;
        for (i, reading) in readings.into_iter().enumerate() {
            max_ts = max_ts.max(reading.ts_ms);
            let record = Record {
                vehicle_id: "V1".into(),
                loan_id: Some("L1".into()),
                class: DeviceClass::Wired,
                registered: true,
                ingest_seq: i as u64,
                reading: Box::new(reading),
            };
            v.arrive(record, clock, &env, &mut out);
            clock = Some(max_ts - rules.reorder_window_ms());
            v.advance(max_ts - rules.reorder_window_ms(), &env, &mut out);
        }
        v.flush(&env, &mut out);
        out.alerts
    }

    fn day() -> Vec<Reading> {
        (0..288).map(parked).collect()
    }

    #[test]
    fn the_quiet_day_itself_raises_nothing() {
        assert!(alerts(day()).is_empty());
    }

    #[test]
    fn single_drift_fix_while_parked() {
        for (lat, lon) in [(31.40, 121.4737), (31.2404, 121.4737), (31.0, 121.0)] {
            let mut d = day();
            d[100] = at(d[100].clone(), lat, lon);
            assert!(alerts(d).is_empty(), "drift to {lat},{lon}");
        }
    }

    #[test]
    fn unknown_ignition_while_moving() {
        let mut d = day();
        for (k, r) in d.iter_mut().enumerate().skip(100).take(12) {
            r.ignition = None;
            r.speed_kmh = None;
            let g = r.gnss.as_mut().expect("fix");
            g.lat = Some(HOME.0 + 0.002 * (k - 99) as f64);
        }
        for r in d.iter_mut().skip(112) {
            r.ignition = None;
            r.gnss.as_mut().expect("fix").lat = Some(HOME.0 + 0.024);
        }
        assert!(alerts(d).is_empty());
    }

    #[test]
    fn no_fix_repeats_of_the_stale_position() {
        let mut d = day();
        for r in d.iter_mut().skip(50).take(20) {
            let g = r.gnss.as_mut().expect("fix");
            g.fix = false;
            g.lat = Some(HOME.0 + 0.05);
        }
        assert!(alerts(d).is_empty());
    }

    #[test]
    fn duplicates() {
        let d: Vec<Reading> = day().into_iter().flat_map(|r| [r.clone(), r]).collect();
        assert!(alerts(d).is_empty());
        let mut no_seq = day();
        for r in &mut no_seq {
            r.seq = None;
        }
        let d: Vec<Reading> = no_seq.into_iter().flat_map(|r| [r.clone(), r]).collect();
        assert!(alerts(d).is_empty());
    }

    #[test]
    fn late_and_backfilled_data() {
        let mut d = day();
        // A reading delivered 40 minutes late, with an older odometer and a far position.
        let late = at(d.remove(100), 31.30, 121.4737);
        d.insert(108, late);
        // A back-filled batch of old readings after live data resumed.
        let backfill: Vec<Reading> = (60..66)
            .map(|i| Reading {
                backfill: true,
                seq: Some(10_000 + i as u64),
                content_hash: 10_000 + i as u64,
                odometer_km: Some(45_000.0),
                ..at(parked(i), 31.25, 121.50)
            })
            .collect();
        d.splice(200..200, backfill);
        // Neighbours swapped within the reorder window.
        d.swap(150, 151);
        assert!(alerts(d).is_empty());
    }
}
