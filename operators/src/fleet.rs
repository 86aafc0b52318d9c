//! All vehicles of one worker, the pipeline clock, and the timer index.
//!
//! The clock follows SPEC §4: the watermark is the largest accepted event time seen anywhere in
//! the pipeline, minus the reorder window. Every worker receives, per ingest epoch, the largest
//! event times each source saw ([`EpochSample`]), so every worker computes the same clock.

use std::collections::BTreeSet;

use ahash::AHashMap as HashMap;
use std::sync::Arc;

use schemas::{Record, Reject, RejectReason};

use crate::config::{RulesConfig, secs_ms};
use crate::fences::FenceIndex;
use crate::registry::Registry;
use crate::vehicle::{Arrival, Env, Outputs, Profile, VehicleState};

/// How many devices a source reports per epoch: those with the largest event times.
pub const SAMPLE_SIZE: usize = 16;

/// The rank of the device maximum of an epoch that may move the future limit (see
/// [`PipelineClock::future_limit_ms`]).
pub const EPOCH_REFERENCE_RANK: usize = 8;

/// The device key of an idle entry in an [`EpochSample`]: `(advance_ms, IDLE_DEVICE)` says
/// the live source was connected and heard nothing for a while, and the clock may follow the
/// wall clock by `advance_ms` (SPEC §4). Device keys are 64-bit hashes; this one is reserved.
pub const IDLE_DEVICE: u64 = u64::MAX;

/// What one source saw in one epoch: the largest event time of each of the [`SAMPLE_SIZE`]
/// devices with the largest event times, as (event time, device key), descending. Merging
/// the samples of all sources gives the same top devices whatever the number of sources.
pub type EpochSample = Vec<(i64, u64)>;

/// Collects a source's per-device maxima during an epoch.
#[derive(Clone, Debug, Default)]
pub struct TopTimes(HashMap<u64, i64>);

impl TopTimes {
    /// Offers the event time of a reading of the device with key `device`.
    pub fn offer(&mut self, device: u64, ts_ms: i64) {
        let max = self.0.entry(device).or_insert(ts_ms);
        *max = (*max).max(ts_ms);
    }

    /// Takes the epoch's sample, leaving this empty.
    pub fn take(&mut self) -> EpochSample {
        let mut all: EpochSample = self.0.drain().map(|(d, t)| (t, d)).collect();
        all.sort_unstable_by(|a, b| b.cmp(a));
        all.truncate(SAMPLE_SIZE);
        all
    }

    /// Whether nothing was offered.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The largest event time per device over all samples, descending.
fn device_maxima<'a>(samples: impl IntoIterator<Item = &'a EpochSample>) -> Vec<i64> {
    let mut per_device: HashMap<u64, i64> = HashMap::new();
    for &(ts, device) in samples.into_iter().flatten() {
        if device == IDLE_DEVICE {
            continue;
        }
        let max = per_device.entry(device).or_insert(ts);
        *max = (*max).max(ts);
    }
    let mut maxima: Vec<i64> = per_device.into_values().collect();
    maxima.sort_unstable_by(|a, b| b.cmp(a));
    maxima.truncate(SAMPLE_SIZE);
    maxima
}

/// The pipeline clock, driven by epoch samples (replay: event time only, no wall clock).
///
/// SPEC §4 defines it from the largest event time seen; here the largest is taken over
/// devices and the single most advanced device is left out when another one reported, so one
/// tracker with a fast clock can neither drag the whole fleet into `offline` nor make every
/// other device's data late.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PipelineClock {
    max_accepted_ms: Option<i64>,
}

impl PipelineClock {
    /// Readings of the epoch with a later event time are rejected as `future_ts`. The
    /// reference is the clock's event time so far, or, if later, the epoch's own
    /// [`EPOCH_REFERENCE_RANK`]-th largest device maximum (the smallest when fewer devices
    /// reported, and only when at least two did): an epoch may span more than
    /// `max_future_s` of event time (a small fleet replayed in long epochs, or published
    /// over MQTT in seconds). In the first epoch, the smallest of the [`SAMPLE_SIZE`] largest
    /// device maxima. A single future-dated device can move neither.
    pub fn future_limit_ms<'a>(
        &self,
        rules: &RulesConfig,
        samples: impl IntoIterator<Item = &'a EpochSample>,
    ) -> i64 {
        let maxima = device_maxima(samples);
        let reference = match self.max_accepted_ms {
            None => maxima.last().copied().unwrap_or(i64::MAX),
            Some(clock) if maxima.len() >= 2 => {
                let rank = maxima.len().min(EPOCH_REFERENCE_RANK);
                clock.max(maxima[rank - 1])
            }
            Some(clock) => clock,
        };
        reference.saturating_add(secs_ms(rules.max_future_s))
    }

    /// Closes an epoch with the samples of all sources and the limit the epoch was checked
    /// against.
    ///
    /// An epoch in which no device reported but a source was idle moves the clock on by the
    /// idle entry's advance (the largest, when several sources say so): the same on every
    /// worker, since every worker sees the same samples.
    pub fn close_epoch<'a>(
        &mut self,
        samples: impl IntoIterator<Item = &'a EpochSample> + Clone,
        future_limit_ms: i64,
    ) {
        let maxima: Vec<i64> = device_maxima(samples.clone())
            .into_iter()
            .filter(|t| *t <= future_limit_ms)
            .collect();
        let epoch_time = maxima.get(1).or(maxima.first()).copied();
        if let Some(m) = epoch_time {
            self.max_accepted_ms = Some(self.max_accepted_ms.map_or(m, |c| c.max(m)));
        } else if let Some(clock) = self.max_accepted_ms {
            let idle = samples
                .into_iter()
                .flatten()
                .filter(|(_, device)| *device == IDLE_DEVICE)
                .map(|(advance, _)| *advance)
                .max();
            if let Some(advance) = idle.filter(|a| *a > 0) {
                self.max_accepted_ms = Some(clock.saturating_add(advance));
            }
        }
    }

    /// The watermark, once anything was accepted.
    pub fn watermark_ms(&self, rules: &RulesConfig) -> Option<i64> {
        Some(self.max_accepted_ms? - rules.reorder_window_ms())
    }
}

/// Counters of one worker's fleet.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FleetStats {
    /// Readings accepted (in order or late).
    pub accepted: u64,
    /// Accepted readings that were late.
    pub late: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Readings rejected as future timestamps.
    pub future: u64,
    /// Readings of devices missing from the registry.
    pub unregistered: u64,
    /// Vehicles with state.
    pub vehicles: u64,
}

/// Everything a fleet step produced.
#[derive(Debug, Default)]
pub struct FleetOutputs {
    /// Alerts and archived readings.
    pub vehicle: Outputs,
    /// Readings rejected here (future timestamps).
    pub rejects: Vec<Reject>,
}

/// The vehicles of one worker.
pub struct Fleet {
    rules: Arc<RulesConfig>,
    registry: Arc<Registry>,
    fences: Arc<FenceIndex>,
    vehicles: Vec<VehicleState>,
    index: HashMap<String, u32>,
    /// (due, vehicle) of every vehicle's next timer.
    timers: BTreeSet<(i64, u32)>,
    scheduled: Vec<Option<i64>>,
    /// Vehicles with buffered readings or revised days.
    buffered: Vec<u32>,
    clock: PipelineClock,
    /// Counters.
    pub stats: FleetStats,
}

impl Fleet {
    /// An empty fleet.
    pub fn new(rules: RulesConfig, registry: Arc<Registry>, fences: Arc<FenceIndex>) -> Self {
        Self {
            rules: Arc::new(rules),
            registry,
            fences,
            vehicles: Vec::new(),
            index: HashMap::new(),
            timers: BTreeSet::new(),
            scheduled: Vec::new(),
            buffered: Vec::new(),
            clock: PipelineClock::default(),
            stats: FleetStats::default(),
        }
    }

    /// The pipeline clock.
    pub fn clock(&self) -> &PipelineClock {
        &self.clock
    }

    /// The rule settings.
    pub fn rules(&self) -> &RulesConfig {
        &self.rules
    }

    /// The registry and fences in use.
    pub fn reference(&self) -> (&Arc<Registry>, &Arc<FenceIndex>) {
        (&self.registry, &self.fences)
    }

    /// Switches to a reloaded registry and fence index: every vehicle's profile follows from
    /// its next reading on. `fences` must keep the indices of fences that stayed
    /// ([`FenceIndex::reloaded`]), since vehicle state refers to fences by index.
    pub fn set_reference(&mut self, registry: Arc<Registry>, fences: Arc<FenceIndex>) {
        self.registry = registry;
        self.fences = fences;
        for vehicle in &mut self.vehicles {
            let profile = profile(&self.registry, &self.fences, &vehicle.vehicle_id);
            vehicle.set_profile(profile);
        }
    }

    fn vehicle_index(&mut self, record: &Record) -> u32 {
        if let Some(&i) = self.index.get(&record.vehicle_id) {
            return i;
        }
        let profile = profile(&self.registry, &self.fences, &record.vehicle_id);
        let i = u32::try_from(self.vehicles.len()).expect("fewer than 2^32 vehicles per worker");
        self.vehicles
            .push(VehicleState::new(record.vehicle_id.clone(), profile));
        self.scheduled.push(None);
        self.index.insert(record.vehicle_id.clone(), i);
        self.stats.vehicles += 1;
        i
    }

    /// Runs one ingest epoch: the epoch's records of this worker (any order; they are
    /// processed in input order), then the clock advances with the samples of all sources.
    pub fn run_epoch(
        &mut self,
        mut records: Vec<Record>,
        samples: &[EpochSample],
        wall_now_ms: i64,
        out: &mut FleetOutputs,
    ) {
        records.sort_unstable_by_key(|r| r.ingest_seq);
        let limit = self.clock.future_limit_ms(&self.rules, samples);
        let clock = self.clock.watermark_ms(&self.rules);
        let (rules, fences) = (Arc::clone(&self.rules), Arc::clone(&self.fences));
        let env = Env {
            rules: &rules,
            fences: &fences,
            detected_at_ms: wall_now_ms,
        };
        for record in records {
            if record.reading.ts_ms > limit {
                self.stats.future += 1;
                out.rejects.push(future_reject(&record, limit));
                continue;
            }
            if !record.registered {
                self.stats.unregistered += 1;
            }
            let v = self.vehicle_index(&record);
            let vehicle = &mut self.vehicles[v as usize];
            let waiting = |v: &VehicleState| v.has_buffered() || v.has_revisions();
            let was_waiting = waiting(vehicle);
            match vehicle.arrive(record, clock, &env, &mut out.vehicle) {
                Arrival::Duplicate => self.stats.duplicates += 1,
                Arrival::Late => {
                    self.stats.accepted += 1;
                    self.stats.late += 1;
                }
                Arrival::Buffered => self.stats.accepted += 1,
            }
            // Buffered readings and revised days wait for the end of the epoch.
            if !was_waiting && waiting(vehicle) {
                self.buffered.push(v);
            }
        }
        self.clock.close_epoch(samples, limit);
        if let Some(watermark) = self.clock.watermark_ms(&self.rules) {
            self.advance(watermark, &env, &mut out.vehicle);
        }
    }

    /// Moves every vehicle with buffered readings or due timers to `watermark`.
    fn advance(&mut self, watermark: i64, env: &Env<'_>, out: &mut Outputs) {
        let mut still = Vec::new();
        for v in std::mem::take(&mut self.buffered) {
            let vehicle = &mut self.vehicles[v as usize];
            vehicle.advance(watermark, env, out);
            if vehicle.has_buffered() {
                still.push(v);
            }
            self.reschedule(v);
        }
        self.buffered = still;
        while let Some(&(due, v)) = self.timers.first() {
            if due > watermark {
                break;
            }
            self.timers.pop_first();
            self.scheduled[v as usize] = None;
            self.vehicles[v as usize].advance(watermark, env, out);
            self.reschedule(v);
        }
    }

    fn reschedule(&mut self, v: u32) {
        let due = self.vehicles[v as usize].next_wakeup(&self.rules, &self.fences);
        let slot = &mut self.scheduled[v as usize];
        if *slot == due {
            return;
        }
        if let Some(old) = slot.take() {
            self.timers.remove(&(old, v));
        }
        if let Some(new) = due {
            self.timers.insert((new, v));
        }
        *slot = due;
    }

    /// End of input: processes every buffered reading. Open incidents stay open.
    pub fn finish(&mut self, wall_now_ms: i64, out: &mut FleetOutputs) {
        let (rules, fences) = (Arc::clone(&self.rules), Arc::clone(&self.fences));
        let env = Env {
            rules: &rules,
            fences: &fences,
            detected_at_ms: wall_now_ms,
        };
        for v in std::mem::take(&mut self.buffered) {
            self.vehicles[v as usize].flush(&env, &mut out.vehicle);
        }
    }
}

/// The registry facts of a vehicle (defaults when unregistered).
fn profile(registry: &Registry, fences: &FenceIndex, vehicle_id: &str) -> Profile {
    let Some(entry) = registry.vehicle(vehicle_id) else {
        return Profile::default();
    };
    Profile {
        loan_id: Some(entry.loan_id.clone()),
        vin: entry.vin.clone(),
        permitted: entry
            .permitted_fences
            .iter()
            .filter_map(|id| fences.lookup(id))
            .collect(),
        timezone: entry.timezone,
    }
}

fn future_reject(record: &Record, limit_ms: i64) -> Reject {
    let r = &record.reading;
    Reject {
        reason: RejectReason::FutureTs.as_str().to_owned(),
        detail: format!(
            "ts {} is after the limit {} (reference clock + max_future_s); raw re-encoded from the decoded reading",
            schemas::time::rfc3339_ms(r.ts_ms),
            schemas::time::rfc3339_ms(limit_ms)
        ),
        device_id: Some(r.device_id.clone()),
        ts_ms: Some(r.ts_ms),
        received_at_ms: r.received_at_ms,
        raw: serde_json::to_vec(r).unwrap_or_default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_times_keeps_the_devices_with_the_largest_times() {
        let mut t = TopTimes::default();
        for v in 0..100u64 {
            t.offer(v % 40, ((v * 37) % 101) as i64);
        }
        let s = t.take();
        assert_eq!(s.len(), SAMPLE_SIZE);
        assert!(s.windows(2).all(|w| w[0] >= w[1]));
        assert_eq!(s[0].0, 100);
        assert!(t.is_empty());
    }

    #[test]
    fn one_fast_device_does_not_move_the_clock() {
        let rules = RulesConfig::default();
        let mut c = PipelineClock::default();
        let day = 86_400_000;
        // First epoch: device 9 is 5 days ahead; device 8 is 20 h ahead (within the future
        // limit) but alone, so the clock follows the second most advanced device.
        let first = [
            vec![(15 * day, 9), (10 * day, 1)],
            vec![(10 * day + 72_000_000, 8), (10 * day - 5, 2)],
        ];
        let limit = c.future_limit_ms(&rules, &first);
        assert_eq!(limit, 11 * day - 5);
        c.close_epoch(&first, limit);
        assert_eq!(c.watermark_ms(&rules), Some(10 * day - 120_000));
        // Later epochs check against the clock so far, or the epoch's own devices (here the
        // 3rd of 3), which device 9 alone cannot move.
        let second = [
            vec![(15 * day, 9), (10 * day + 9, 1)],
            vec![(10 * day + 5, 2)],
        ];
        let limit = c.future_limit_ms(&rules, &second);
        assert_eq!(limit, 11 * day + 5);
        c.close_epoch(&second, limit);
        assert_eq!(c.watermark_ms(&rules), Some(10 * day + 5 - 120_000));
        // An epoch where enough devices moved far ahead (a long epoch) moves the limit.
        let mut wide = c.clone();
        let many: Vec<EpochSample> = (0..8).map(|d| vec![(13 * day + d, d as u64)]).collect();
        assert_eq!(wide.future_limit_ms(&rules, &many), 14 * day);
        let few: Vec<EpochSample> = (0..3).map(|d| vec![(13 * day + d, d as u64)]).collect();
        assert_eq!(wide.future_limit_ms(&rules, &few), 14 * day);
        let alone = [vec![(13 * day, 1)]];
        assert_eq!(wide.future_limit_ms(&rules, &alone), 11 * day + 5);
        wide.close_epoch(&many, 14 * day);
        assert_eq!(wide.watermark_ms(&rules), Some(13 * day + 6 - 120_000));
        // Idle entries move the clock only when no device reported.
        let mut idle = c.clone();
        let before = idle.watermark_ms(&rules).unwrap();
        let quiet = [vec![(5_000, IDLE_DEVICE)], vec![(3_000, IDLE_DEVICE)]];
        let limit = idle.future_limit_ms(&rules, &quiet);
        idle.close_epoch(&quiet, limit);
        assert_eq!(idle.watermark_ms(&rules), Some(before + 5_000));
        let busy = [
            vec![(5_000, IDLE_DEVICE)],
            vec![(10 * day, 1), (10 * day, 2)],
        ];
        let limit = idle.future_limit_ms(&rules, &busy);
        idle.close_epoch(&busy, limit);
        assert_eq!(idle.watermark_ms(&rules), Some(before + 5_000));
        // A single device moves it alone.
        let mut solo = PipelineClock::default();
        let only = [vec![(day, 3)]];
        let limit = solo.future_limit_ms(&rules, &only);
        solo.close_epoch(&only, limit);
        assert_eq!(solo.watermark_ms(&rules), Some(day - 120_000));
    }
}

#[cfg(test)]
mod reload {
    //! A fleet whose registry and fences change between epochs: the change applies from the
    //! next reading on, and vehicle state that refers to fences stays valid.

    use super::*;
    use schemas::{Alert, AlertKind, DeviceClass, Gnss, Reading};

    const T0: i64 = 1_764_000_000_000;
    const HEADER: &str =
        "vehicle_id,loan_id,device_id,vin,device_class,permitted_fences,timezone\n";

    fn fences(features: &str) -> FenceIndex {
        FenceIndex::from_geojson_str(
            &format!(r#"{{"type":"FeatureCollection","features":[{features}]}}"#),
            "f.geojson",
        )
        .expect("valid fences")
    }

    fn circle(id: &str, role: &str, lat: f64, radius_m: f64) -> String {
        format!(
            r#"{{"type":"Feature","properties":{{"id":"{id}","role":"{role}","radius_m":{radius_m}}},
            "geometry":{{"type":"Point","coordinates":[121.0,{lat}]}}}}"#
        )
    }

    /// One epoch of readings of device D1 at `lat`, a minute apart from minute `from`.
    fn epoch(fleet: &mut Fleet, registry: &Registry, from: i64, lats: &[f64]) -> Vec<Alert> {
        let records: Vec<Record> = lats
            .iter()
            .enumerate()
            .map(|(i, lat)| {
                let minute = from + i as i64;
                let device = registry.device("D1").expect("registered");
                Record {
                    vehicle_id: device.vehicle_id.clone(),
                    loan_id: registry
                        .vehicle(&device.vehicle_id)
                        .map(|v| v.loan_id.clone()),
                    class: DeviceClass::Wired,
                    registered: true,
                    ingest_seq: minute as u64,
                    reading: Box::new(Reading {
                        device_id: "D1".into(),
                        ts_ms: T0 + minute * 60_000,
                        seq: Some(minute as u64),
                        gnss: Some(Gnss {
                            lat: Some(*lat),
                            lon: Some(121.0),
                            fix: true,
                            ..Gnss::default()
                        }),
                        ignition: Some(true),
                        speed_kmh: Some(40.0),
                        content_hash: minute as u64,
                        ..Reading::default()
                    }),
                }
            })
            .collect();
        let last = records.last().map_or(T0, |r| r.reading.ts_ms);
        // Two devices' worth of clock: the fleet's clock follows the epoch's second-newest.
        let samples = vec![vec![(last, 1), (last, 2)]];
        let mut out = FleetOutputs::default();
        fleet.run_epoch(records, &samples, 0, &mut out);
        out.vehicle.alerts
    }

    #[test]
    fn a_new_permitted_fence_and_a_new_loan_apply_from_the_next_reading() {
        let registry = Arc::new(
            Registry::from_csv_str(&format!("{HEADER}V1,L1,D1,,wired,,\n"), "v.csv")
                .expect("registry"),
        );
        let first = fences(&circle("risk-1", "risk", 40.0, 300.0));
        let mut fleet = Fleet::new(
            RulesConfig::default(),
            Arc::clone(&registry),
            Arc::new(first),
        );
        // Unrestricted: driving north raises nothing.
        let before = epoch(&mut fleet, &registry, 0, &[31.00, 31.01, 31.02, 31.03]);
        assert!(before.is_empty(), "{before:?}");

        // Reload: V1 moves to loan L2 and may only stay within 5 km of 31.0.
        let registry = Arc::new(
            Registry::from_csv_str(&format!("{HEADER}V1,L2,D1,,wired,home,\n"), "v.csv")
                .expect("registry"),
        );
        let (_, old_fences) = fleet.reference();
        let reloaded = old_fences.reloaded(fences(&format!(
            "{},{}",
            circle("home", "permitted", 31.0, 5_000.0),
            circle("risk-1", "risk", 40.0, 300.0)
        )));
        assert_eq!(
            reloaded.lookup("risk-1"),
            Some(0),
            "a fence that stays keeps its index"
        );
        fleet.set_reference(Arc::clone(&registry), Arc::new(reloaded));
        let after = epoch(
            &mut fleet,
            &registry,
            10,
            &[31.04, 31.05, 31.06, 31.07, 31.08, 31.09, 31.10],
        );
        let exits: Vec<&Alert> = after
            .iter()
            .filter(|a| a.kind == AlertKind::GeofenceExit)
            .collect();
        assert_eq!(exits.len(), 1, "{after:?}");
        assert_eq!(exits[0].loan_id.as_deref(), Some("L2"));
    }
}
