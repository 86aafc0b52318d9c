//! All vehicles of one worker, the pipeline clock, and the timer index.
//!
//! The clock follows SPEC §4: the watermark is the largest accepted event time seen anywhere in
//! the pipeline, minus the reorder window. Every worker receives, per ingest epoch, the largest
//! event times each source saw ([`EpochSample`]), so every worker computes the same clock.

use std::collections::BTreeSet;

use ahash::AHashMap as HashMap;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

use schemas::{Record, Reject, RejectReason};

use crate::config::{RulesConfig, secs_ms};
use crate::fences::{FenceIdx, FenceIndex};
use crate::id_index::IdIndex;
use crate::registry::{Registry, VehicleEntry};
use crate::snapshot::{Kind, Reader, SnapshotError};
use crate::vehicle::{Arrival, Env, Outputs, Profile, VehicleState};

mod snapshotting;

pub use snapshotting::FinishedSnapshot;
use snapshotting::SnapshotInProgress;

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
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
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
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
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

/// `Fleet::scheduled` of a vehicle without a timer: no due time is this early.
const UNSCHEDULED: i64 = i64::MIN;

/// The vehicles of one worker.
pub struct Fleet {
    rules: Arc<RulesConfig>,
    registry: Arc<Registry>,
    fences: Arc<FenceIndex>,
    vehicles: Vec<VehicleState>,
    /// Positions in `vehicles` by vehicle id.
    index: IdIndex,
    /// (due, vehicle) of every vehicle's next timer.
    timers: BTreeSet<(i64, u32)>,
    /// Per vehicle, the due time of its entry in `timers` (`UNSCHEDULED`: none; 8 bytes a
    /// vehicle instead of an `Option`'s 16).
    scheduled: Vec<i64>,
    /// Vehicles to move at the end of the epoch: those with readings of the epoch that were
    /// processed at once.
    touched: Vec<u32>,
    /// (earliest buffered event time, vehicle) of every vehicle with buffered readings, so
    /// an epoch moves only those with readings due; `i64::MIN` for revised days to emit.
    /// Kept equal to [`waiting_key`] of every vehicle.
    waiting: BTreeSet<(i64, u32)>,
    clock: PipelineClock,
    /// Counters.
    pub stats: FleetStats,
    /// A checkpoint's snapshot being encoded between epochs ([`Fleet::begin_snapshot`]).
    snapshotting: Option<SnapshotInProgress>,
    /// A snapshot finished before a change to every vehicle, for the next
    /// [`Fleet::continue_snapshot`].
    snapshot_done: Option<FinishedSnapshot>,
}

impl Fleet {
    /// An empty fleet.
    pub fn new(rules: RulesConfig, registry: Arc<Registry>, fences: Arc<FenceIndex>) -> Self {
        Self {
            rules: Arc::new(rules),
            registry,
            fences,
            vehicles: Vec::new(),
            index: IdIndex::default(),
            timers: BTreeSet::new(),
            scheduled: Vec::new(),
            touched: Vec::new(),
            waiting: BTreeSet::new(),
            clock: PipelineClock::default(),
            stats: FleetStats::default(),
            snapshotting: None,
            snapshot_done: None,
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
        self.settle_snapshot();
        self.registry = registry;
        self.fences = fences;
        for vehicle in &mut self.vehicles {
            adopt_reference(vehicle, &self.registry, &self.fences);
        }
    }

    /// The position of a vehicle in `vehicles`.
    fn position(&self, vehicle_id: &str) -> Option<u32> {
        let vehicles = &self.vehicles;
        self.index
            .get(vehicle_id, |i| &vehicles[i as usize].vehicle_id)
    }

    fn vehicle_index(&mut self, record: &Record) -> u32 {
        if let Some(i) = self.position(&record.vehicle_id) {
            return i;
        }
        let profile = profile(self.registry.vehicle(&record.vehicle_id), &self.fences);
        let i = u32::try_from(self.vehicles.len()).expect("fewer than 2^32 vehicles per worker");
        self.vehicles
            .push(VehicleState::new(Arc::clone(&record.vehicle_id), profile));
        self.scheduled.push(UNSCHEDULED);
        let vehicles = &self.vehicles;
        self.index
            .insert(&record.vehicle_id, i, |j| &vehicles[j as usize].vehicle_id);
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
        let registry = Arc::clone(&self.registry);
        let env = Env {
            rules: &rules,
            fences: &fences,
            registry: &registry,
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
            self.preserve(v);
            let vehicle = &mut self.vehicles[v as usize];
            let was_waiting = waiting_key(vehicle);
            let arrival = vehicle.arrive(record, clock, &env, &mut out.vehicle);
            let waits = waiting_key(vehicle);
            match arrival {
                Arrival::Duplicate => self.stats.duplicates += 1,
                Arrival::Late => {
                    self.stats.accepted += 1;
                    self.stats.late += 1;
                }
                Arrival::Buffered | Arrival::Processed => self.stats.accepted += 1,
            }
            self.rekey_waiting(v, was_waiting, waits);
            // A reading processed at once may have moved the vehicle's timers, which the end
            // of the epoch reschedules; buffered readings and revised days are found there
            // by their key in `waiting`.
            if matches!(arrival, Arrival::Processed) {
                self.touched.push(v);
            }
        }
        self.clock.close_epoch(samples, limit);
        if let Some(watermark) = self.clock.watermark_ms(&self.rules) {
            self.advance(watermark, &env, &mut out.vehicle);
        }
    }

    /// Moves the vehicles of the epoch, those with buffered readings or timers due, and
    /// those with revised days to `watermark`: the vehicles with buffered readings in
    /// vehicle order, then the others in timer order.
    fn advance(&mut self, watermark: i64, env: &Env<'_>, out: &mut Outputs) {
        let mut moved = std::mem::take(&mut self.touched);
        moved.extend(
            self.waiting
                .range(..=(watermark, u32::MAX))
                .map(|&(_, v)| v),
        );
        // A vehicle with buffered readings whose timer is due fires it with its release,
        // as one whose reading is due.
        moved.extend(
            self.timers
                .range(..=(watermark, u32::MAX))
                .map(|&(_, v)| v)
                .filter(|&v| waiting_key(&self.vehicles[v as usize]).is_some()),
        );
        // A vehicle is moved once, however many of its readings were processed at once.
        moved.sort_unstable();
        moved.dedup();
        for v in moved {
            self.move_vehicle(v, watermark, env, out);
        }
        while let Some(&(due, v)) = self.timers.first() {
            if due > watermark {
                break;
            }
            self.timers.pop_first();
            self.scheduled[v as usize] = UNSCHEDULED;
            self.move_vehicle(v, watermark, env, out);
        }
    }

    /// Moves vehicle `v` to `watermark` and files it again under its timer and its
    /// buffered readings.
    fn move_vehicle(&mut self, v: u32, watermark: i64, env: &Env<'_>, out: &mut Outputs) {
        self.preserve(v);
        let vehicle = &mut self.vehicles[v as usize];
        let was_waiting = waiting_key(vehicle);
        vehicle.advance(watermark, env, out);
        let waits = waiting_key(vehicle);
        self.rekey_waiting(v, was_waiting, waits);
        self.reschedule(v);
    }

    /// Files vehicle `v` under its new [`waiting_key`].
    fn rekey_waiting(&mut self, v: u32, was: Option<i64>, now: Option<i64>) {
        if was == now {
            return;
        }
        if let Some(key) = was {
            self.waiting.remove(&(key, v));
        }
        if let Some(key) = now {
            self.waiting.insert((key, v));
        }
    }

    fn reschedule(&mut self, v: u32) {
        let due = self.vehicles[v as usize].next_wakeup(&self.rules, &self.fences);
        let slot = &mut self.scheduled[v as usize];
        let due_key = due.unwrap_or(UNSCHEDULED);
        if *slot == due_key {
            return;
        }
        if *slot != UNSCHEDULED {
            self.timers.remove(&(*slot, v));
        }
        if let Some(new) = due {
            self.timers.insert((new, v));
        }
        *slot = due_key;
    }

    /// End of input: processes every buffered reading. Open incidents stay open.
    pub fn finish(&mut self, wall_now_ms: i64, out: &mut FleetOutputs) {
        self.settle_snapshot();
        let (rules, fences) = (Arc::clone(&self.rules), Arc::clone(&self.fences));
        let registry = Arc::clone(&self.registry);
        let env = Env {
            rules: &rules,
            fences: &fences,
            registry: &registry,
            detected_at_ms: wall_now_ms,
        };
        let mut waiting = std::mem::take(&mut self.touched);
        waiting.extend(
            std::mem::take(&mut self.waiting)
                .into_iter()
                .map(|(_, v)| v),
        );
        waiting.sort_unstable();
        waiting.dedup();
        for v in waiting {
            self.vehicles[v as usize].flush(&env, &mut out.vehicle);
        }
    }
}

/// The key of a vehicle in [`Fleet::waiting`]: the event time of its earliest buffered
/// reading, `i64::MIN` if it has revised days to emit, `None` if it waits for nothing.
fn waiting_key(vehicle: &VehicleState) -> Option<i64> {
    if vehicle.has_revisions() {
        Some(i64::MIN)
    } else {
        vehicle.earliest_buffered()
    }
}

/// A fence a fleet snapshot refers to: its index in the fence index of the snapshot, its id,
/// and whether it was live then (not retired by a reload).
#[derive(Serialize, Deserialize)]
struct FenceRef {
    idx: FenceIdx,
    id: String,
    live: bool,
}

impl FenceRef {
    /// The index of this fence in `fences`: the same index when it holds the same fence (the
    /// snapshot's fence index, or one [`FenceIndex::reloaded`] from it), else the live fence
    /// with its id, if it was live. `None`: the fence is gone.
    fn resolve(&self, fences: &FenceIndex) -> Option<FenceIdx> {
        if (self.idx as usize) < fences.len() && fences.fence(self.idx).id == self.id {
            return Some(self.idx);
        }
        if self.live {
            fences.lookup(&self.id)
        } else {
            None
        }
    }
}

/// What a fleet snapshot holds before its vehicles.
#[derive(Serialize, Deserialize)]
struct SnapshotHeader {
    clock: PipelineClock,
    stats: FleetStats,
    fences: Vec<FenceRef>,
    vehicles: u64,
}

impl FleetStats {
    fn add_events(&mut self, other: &FleetStats) {
        self.accepted = self.accepted.saturating_add(other.accepted);
        self.late = self.late.saturating_add(other.late);
        self.duplicates = self.duplicates.saturating_add(other.duplicates);
        self.future = self.future.saturating_add(other.future);
        self.unregistered = self.unregistered.saturating_add(other.unregistered);
    }
}

impl Fleet {
    /// The worker's whole per-vehicle state as bytes ([`crate::snapshot`] describes the
    /// format): every vehicle (devices with their de-duplication windows and reorder buffers,
    /// the position chain, the kinds' states, days, rings and baselines, open incidents), the
    /// pipeline clock, the counters, and the ids of the fences the vehicles refer to by
    /// index. Not in it: the rule settings, the registry and the fences themselves (given
    /// again to [`restore`](Self::restore)), and the timer index (rebuilt).
    ///
    /// Take it between two [`run_epoch`](Self::run_epoch) calls, the same epoch on every
    /// worker: the parts of one checkpoint must share the pipeline clock.
    pub fn snapshot(&self) -> Result<Vec<u8>, SnapshotError> {
        SnapshotInProgress::start(0, &self.snapshot_header(), &self.vehicles)
            .finish(&self.vehicles)
            .bytes
            .map(|b| b.to_vec())
    }

    /// Begins the [`snapshot`](Self::snapshot) of the fleet as it is now, for checkpoint
    /// `epoch`, to be encoded a slice at a time by [`continue_snapshot`](Self::continue_snapshot)
    /// while epochs go on: a vehicle about to change is encoded first. Only the header is
    /// written now; it lists the fences the vehicles refer to, a read of every vehicle.
    ///
    /// Returns the previous snapshot if it was not collected yet (finished now if need be).
    pub fn begin_snapshot(&mut self, epoch: u64) -> Option<FinishedSnapshot> {
        let previous = self.finish_snapshot();
        let header = self.snapshot_header();
        self.snapshotting = Some(SnapshotInProgress::start(epoch, &header, &self.vehicles));
        previous
    }

    /// Encodes up to `vehicles` more vehicles of the snapshot begun by
    /// [`begin_snapshot`](Self::begin_snapshot); returns it once finished.
    pub fn continue_snapshot(&mut self, vehicles: usize) -> Option<FinishedSnapshot> {
        if let Some(done) = self.snapshot_done.take() {
            return Some(done);
        }
        if self
            .snapshotting
            .as_mut()?
            .encode_next(&self.vehicles, vehicles)
        {
            return self.finish_snapshot();
        }
        None
    }

    /// Finishes the snapshot begun by [`begin_snapshot`](Self::begin_snapshot) at once, if
    /// it was not collected yet.
    pub fn finish_snapshot(&mut self) -> Option<FinishedSnapshot> {
        self.settle_snapshot();
        self.snapshot_done.take()
    }

    /// Whether a snapshot is begun and not collected.
    pub fn snapshot_pending(&self) -> bool {
        self.snapshotting.is_some() || self.snapshot_done.is_some()
    }

    /// Encodes the rest of the snapshot in progress, before a change to every vehicle.
    fn settle_snapshot(&mut self) {
        if let Some(s) = self.snapshotting.take() {
            self.snapshot_done = Some(s.finish(&self.vehicles));
        }
    }

    /// Encodes vehicle `v` for the snapshot in progress if it is not yet: it is about to
    /// change.
    fn preserve(&mut self, v: u32) {
        if let Some(s) = self.snapshotting.as_mut() {
            s.preserve(v, &self.vehicles[v as usize]);
        }
    }

    /// The snapshot's header: the fences the vehicles refer to are marked in a table of the
    /// fence index, which lists them in index order without sorting.
    fn snapshot_header(&self) -> SnapshotHeader {
        let mut referred = vec![false; self.fences.len()];
        let mut refs = Vec::new();
        for vehicle in &self.vehicles {
            vehicle.fence_refs(&mut refs);
            for idx in refs.drain(..) {
                if let Some(r) = referred.get_mut(idx as usize) {
                    *r = true;
                }
            }
        }
        let fences = referred
            .iter()
            .enumerate()
            .filter(|(_, r)| **r)
            .map(|(idx, _)| {
                let idx = FenceIdx::try_from(idx).expect("fence indices fit their type");
                let id = &self.fences.fence(idx).id;
                FenceRef {
                    idx,
                    id: id.clone(),
                    live: self.fences.lookup(id) == Some(idx),
                }
            })
            .collect();
        SnapshotHeader {
            clock: self.clock.clone(),
            stats: self.stats,
            fences,
            vehicles: self.vehicles.len() as u64,
        }
    }

    /// A fleet from the snapshots of one or more workers (`parts`, from
    /// [`snapshot`](Self::snapshot), all taken at the same epoch), keeping the vehicles for
    /// which `keep(vehicle_id)` holds: a checkpoint of N workers restores onto M workers
    /// when worker `j` of M keeps the vehicles the dataflow routes to it
    /// (`id_key(vehicle_id) % M == j`, [`crate::dataflow::id_key`]).
    ///
    /// - Registry facts (loan, VIN, permitted fences, time zone) are derived again from
    ///   `registry` and `fences`, as [`set_reference`](Self::set_reference) does: a change
    ///   since the snapshot applies from the next reading on.
    /// - Fence references (risk-fence visits, entries, open `risk_zone_dwell` incidents) are
    ///   matched by fence id: `fences` may be the snapshot's own index, one
    ///   [`FenceIndex::reloaded`] from it, or a freshly loaded file. A reference to a fence
    ///   that is no longer in `fences` (or was already retired at the snapshot and has
    ///   another index now) is dropped: its visit ends, and an open `risk_zone_dwell`
    ///   incident of it gets no `close` (a reload while running would close it on the next
    ///   fixes outside).
    /// - The pipeline clock is the latest over the parts (every worker had the same).
    /// - Counters: `vehicles` counts the vehicles kept; the event counters (`accepted`,
    ///   `late`, `duplicates`, `future`, `unregistered`) are summed over all parts, whatever
    ///   is kept (they are not kept per vehicle). So restoring N parts onto M workers that
    ///   each read all parts counts the checkpoint's events M times: keep them on one worker
    ///   only (e.g. zero them elsewhere) if their sum over workers matters.
    /// - The timer index and the list of vehicles waiting for the clock are rebuilt from the
    ///   vehicles; vehicles are numbered in the order of the parts and of each part.
    ///
    /// Errors: bytes that are not a fleet snapshot of a version this build reads
    /// ([`crate::snapshot::OLDEST_READABLE_VERSION`] to [`crate::snapshot::FORMAT_VERSION`]),
    /// truncated or corrupted ones, and a vehicle found in two parts.
    pub fn restore(
        rules: RulesConfig,
        registry: Arc<Registry>,
        fences: Arc<FenceIndex>,
        parts: &[&[u8]],
        keep: impl Fn(&str) -> bool,
    ) -> Result<Fleet, SnapshotError> {
        let mut fleet = Fleet::new(rules, registry, fences);
        // The part each vehicle came from, for the error on a vehicle found twice.
        let mut origin: Vec<usize> = Vec::new();
        for (part, bytes) in parts.iter().enumerate() {
            let mut reader = Reader::open(Kind::Fleet, part, bytes)?;
            let header: SnapshotHeader = reader.read(|| "the header".to_owned())?;
            fleet.clock.max_accepted_ms = fleet
                .clock
                .max_accepted_ms
                .max(header.clock.max_accepted_ms);
            fleet.stats.add_events(&header.stats);
            let renumber: HashMap<FenceIdx, FenceIdx> = header
                .fences
                .iter()
                .filter_map(|f| Some((f.idx, f.resolve(&fleet.fences)?)))
                .collect();
            let mut previous: Option<Arc<str>> = None;
            for i in 0..header.vehicles {
                let mut vehicle: VehicleState = reader.read(|| {
                    let after = previous
                        .as_ref()
                        .map(|p| format!(" (after {p:?})"))
                        .unwrap_or_default();
                    format!("vehicle {} of {}{after}", i + 1, header.vehicles)
                })?;
                previous = Some(Arc::clone(&vehicle.vehicle_id));
                if !keep(&vehicle.vehicle_id) {
                    continue;
                }
                if let Some(first) = fleet.position(&vehicle.vehicle_id) {
                    return Err(SnapshotError::DuplicateVehicle {
                        vehicle_id: vehicle.vehicle_id.to_string(),
                        first: origin[first as usize],
                        second: part,
                    });
                }
                vehicle.remap_fences(|f| renumber.get(&f).copied());
                vehicle.settle_restored();
                adopt_reference(&mut vehicle, &fleet.registry, &fleet.fences);
                let Ok(v) = u32::try_from(fleet.vehicles.len()) else {
                    return Err(SnapshotError::Corrupt {
                        kind: Kind::Fleet,
                        part,
                        detail: "more than 2^32 vehicles".to_owned(),
                    });
                };
                fleet.vehicles.push(vehicle);
                let vehicles = &fleet.vehicles;
                fleet
                    .index
                    .insert(&vehicles[v as usize].vehicle_id, v, |j| {
                        &vehicles[j as usize].vehicle_id
                    });
                fleet.scheduled.push(UNSCHEDULED);
                origin.push(part);
            }
            reader.finish()?;
        }
        fleet.stats.vehicles = fleet.vehicles.len() as u64;
        for v in 0..fleet.vehicles.len() as u32 {
            fleet.reschedule(v);
            if let Some(key) = waiting_key(&fleet.vehicles[v as usize]) {
                fleet.waiting.insert((key, v));
            }
        }
        Ok(fleet)
    }
}

/// Gives `vehicle` the registry facts of its id (a reload or a restore: they apply from its
/// next reading on) and the registry's own id strings, so they share them.
fn adopt_reference(vehicle: &mut VehicleState, registry: &Registry, fences: &FenceIndex) {
    vehicle.set_profile(profile(registry.vehicle(&vehicle.vehicle_id), fences));
    vehicle.share_ids(registry);
}

/// The registry facts of a vehicle (defaults when unregistered).
fn profile(entry: Option<&VehicleEntry>, fences: &FenceIndex) -> Profile {
    let Some(entry) = entry else {
        return Profile::default();
    };
    Profile {
        loan_id: Some(Arc::clone(&entry.loan_id)),
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
    use schemas::{Alert, AlertKind, Gnss, Reading};

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
                registry.identify(
                    Reading {
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
                    },
                    minute as u64,
                )
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

#[cfg(test)]
mod snapshot_tests {
    //! Checkpoints against the uninterrupted run: a fleet fed a random multi-vehicle input
    //! epoch by epoch, snapshotted at a random epoch boundary and restored (onto the same
    //! fences or a re-ordered fence file; from one part or from the parts of N workers onto
    //! M workers), continues with exactly the outputs and counters of the run that was never
    //! interrupted.

    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use schemas::{Alarm, AlarmSet, Gnss, Obd, Power, Reading};

    use super::*;
    use crate::dataflow::id_key;
    use crate::snapshot::{FORMAT_VERSION, OLDEST_READABLE_VERSION, SnapshotError};

    /// 2025-11-24T16:00Z.
    const T0: i64 = 1_764_000_000_000;

    const REGISTRY: &str = "vehicle_id,loan_id,device_id,vin,device_class,permitted_fences,timezone
V0,L0,D00,LVGTFLHF7SF394010,wired,home,Asia/Shanghai
V0,L0,D01,LVGTFLHF7SF394010,obd,home,Asia/Shanghai
V1,L1,D10,LVGTFLHF7SF394011,wired,,America/New_York
V2,L2,D20,LVGTFLHF7SF394012,wireless,,Asia/Shanghai
V2,L2,D21,LVGTFLHF7SF394012,obd,,Asia/Shanghai
V3,L3,D30,LVGTFLHF7SF394013,obd,home,Europe/Berlin
";

    /// Devices of each vehicle; the last one is not registered.
    const DEVICES: [&[&str]; 5] = [
        &["D00", "D01"],
        &["D10"],
        &["D20", "D21"],
        &["D30"],
        &["U9"],
    ];
    const VINS: [&str; 2] = ["LVGTFLHF7SF394010", "LVGTFLHF7SF394011"];

    fn circle(id: &str, role: &str, lat: f64, radius_m: f64, dwell: &str) -> String {
        format!(
            r#"{{"type":"Feature","properties":{{"id":"{id}","role":"{role}","radius_m":{radius_m}{dwell}}},
            "geometry":{{"type":"Point","coordinates":[121.0,{lat}]}}}}"#
        )
    }

    /// The fences; `reordered`: the same ones in another file order after an unrelated one,
    /// so every index differs.
    fn fences(reordered: bool) -> Arc<FenceIndex> {
        let yard = circle("yard", "risk", 31.0, 500.0, r#","dwell_min":20"#);
        let home = circle("home", "permitted", 31.02, 2_500.0, "");
        let pawn = circle("pawn", "risk", 31.05, 300.0, "");
        let far = circle("far", "risk", 40.0, 300.0, "");
        let list = if reordered {
            [far, pawn, home, yard].join(",")
        } else {
            [yard, home, pawn].join(",")
        };
        let text = format!(r#"{{"type":"FeatureCollection","features":[{list}]}}"#);
        Arc::new(FenceIndex::from_geojson_str(&text, "f.geojson").expect("valid fences"))
    }

    fn registry() -> Arc<Registry> {
        Arc::new(Registry::from_csv_str(REGISTRY, "v.csv").expect("valid registry"))
    }

    /// Where a reading puts its vehicle.
    #[derive(Clone, Debug)]
    enum Pos {
        Stay,
        Drive(f64),
        Yard,
        Pawn,
    }

    /// One reading of the fleet, `dt_s` after the previous one of any vehicle.
    #[derive(Clone, Debug)]
    struct Step {
        dt_s: i64,
        vehicle: u8,
        device: u8,
        pos: Pos,
        ignition: Option<bool>,
        ext_v: f32,
        alarm: u8,
        fix: bool,
        rollback: bool,
        vin: u8,
        /// Back-filled, made this many hours before its turn.
        backfill: Option<i64>,
        future: bool,
    }

    fn step() -> impl Strategy<Value = Step> {
        (
            (
                prop_oneof![6 => 5i64..90, 2 => 300i64..1800, 1 => 3_600i64..20_000, 1 => 30_000i64..80_000],
                0u8..5,
                0u8..2,
                prop_oneof![
                    5 => Just(Pos::Stay),
                    4 => (-0.003f64..0.003).prop_map(Pos::Drive),
                    1 => Just(Pos::Yard),
                    1 => Just(Pos::Pawn),
                ],
                prop_oneof![Just(None), Just(Some(true)), Just(Some(false))],
                prop_oneof![6 => Just(12.5f32), 1 => Just(0.5f32), 1 => Just(f32::NAN)],
            ),
            (
                0u8..16,
                prop_oneof![6 => Just(true), 1 => Just(false)],
                prop_oneof![30 => Just(false), 1 => Just(true)],
                0u8..4,
                prop_oneof![30 => Just(None), 1 => (0i64..48).prop_map(Some)],
                prop_oneof![80 => Just(false), 1 => Just(true)],
            ),
        )
            .prop_map(
                |(
                    (dt_s, vehicle, device, pos, ignition, ext_v),
                    (alarm, fix, rollback, vin, backfill, future),
                )| Step {
                    dt_s,
                    vehicle,
                    device,
                    pos,
                    ignition,
                    ext_v,
                    alarm,
                    fix,
                    rollback,
                    vin,
                    backfill,
                    future,
                },
            )
    }

    /// The readings of `steps` as the decoder and registry would hand them on, in time order.
    fn readings(steps: &[Step], registry: &Registry) -> Vec<Record> {
        let mut ts = T0;
        let mut lat = [31.03, 31.0, 31.01, 31.04, 31.02];
        let mut odometer = [10_000.0f64; 5];
        let mut seq: BTreeMap<&str, u64> = BTreeMap::new();
        steps
            .iter()
            .enumerate()
            .map(|(i, s)| {
                ts += s.dt_s * 1000;
                let v = usize::from(s.vehicle) % DEVICES.len();
                let devices = DEVICES[v];
                let device_id = devices[usize::from(s.device) % devices.len()];
                let before = lat[v];
                lat[v] = match s.pos {
                    Pos::Stay => before + if i % 2 == 0 { 0.00002 } else { -0.00002 },
                    Pos::Drive(d) => before + d,
                    Pos::Yard => 31.0,
                    Pos::Pawn => 31.05,
                };
                odometer[v] += (lat[v] - before).abs() * 111.0;
                if s.rollback {
                    odometer[v] -= 500.0;
                }
                let mut alarm_set = AlarmSet::default();
                let alarms = match s.alarm {
                    0 => vec![Alarm::Tamper],
                    1 => vec![Alarm::Tow],
                    2 => vec![Alarm::PowerCut],
                    3 => vec![Alarm::Jamming],
                    _ => vec![],
                };
                for a in &alarms {
                    alarm_set.insert(*a);
                }
                let seq = seq.entry(device_id).or_default();
                *seq += 1;
                let moving = s.ignition == Some(true);
                registry.identify(
                    Reading {
                        device_id: device_id.to_owned(),
                        ts_ms: match (s.future, s.backfill) {
                            (true, _) => ts + 3 * 86_400_000,
                            (false, Some(h)) => ts - h * 3_600_000,
                            (false, None) => ts,
                        },
                        seq: Some(*seq),
                        backfill: s.backfill.is_some(),
                        gnss: Some(Gnss {
                            lat: Some(lat[v]),
                            lon: Some(121.0),
                            fix: s.fix,
                            hdop: Some(1.0),
                            ..Gnss::default()
                        }),
                        ignition: s.ignition,
                        speed_kmh: Some(if moving { 45.0 } else { 0.0 }),
                        odometer_km: Some(odometer[v]),
                        obd: device_id.ends_with('1').then(|| Obd {
                            vin: (s.vin < 2).then(|| VINS[usize::from(s.vin)].to_owned()),
                            mil: Some(s.vin == 3),
                            dtc_count: Some(u32::from(s.alarm % 3)),
                            dist_since_clear_km: Some(if s.rollback { 1.0 } else { 900.0 }),
                            ..Obd::default()
                        }),
                        power: Some(Power {
                            ext_v: Some(s.ext_v),
                            battery_pct: Some(if s.alarm == 5 { 5.0 } else { 80.0 }),
                        }),
                        alarm_set,
                        alarms: alarms.iter().map(|a| a.as_str().to_owned()).collect(),
                        content_hash: i as u64,
                        received_at_ms: ts,
                    },
                    0,
                )
            })
            .collect()
    }

    /// Arrival order: neighbours less than a minute apart swapped, some readings delivered
    /// later (late, past the reorder window), some twice; then cut into epochs.
    fn epochs(
        mut arrivals: Vec<Record>,
        swaps: &[prop::sample::Index],
        delays: &[(prop::sample::Index, usize)],
        dups: &[prop::sample::Index],
        cuts: &[usize],
    ) -> Vec<Vec<Record>> {
        if arrivals.is_empty() {
            return Vec::new();
        }
        for s in swaps {
            let i = s.index(arrivals.len().max(2) - 1);
            if i + 1 < arrivals.len()
                && arrivals[i + 1].reading.ts_ms - arrivals[i].reading.ts_ms < 60_000
            {
                arrivals.swap(i, i + 1);
            }
        }
        for (d, by) in delays {
            let i = d.index(arrivals.len());
            let r = arrivals.remove(i);
            arrivals.insert((i + by).min(arrivals.len()), r);
        }
        for d in dups {
            let i = d.index(arrivals.len());
            let copy = arrivals[i].clone();
            arrivals.insert(i + 1, copy);
        }
        for (i, r) in arrivals.iter_mut().enumerate() {
            r.ingest_seq = i as u64;
        }
        let mut out = Vec::new();
        let mut sizes = cuts.iter().cycle();
        let mut rest = arrivals.into_iter().peekable();
        while rest.peek().is_some() {
            let n = sizes.next().copied().unwrap_or(1).max(1);
            out.push(rest.by_ref().take(n).collect());
        }
        out
    }

    /// The epoch's sample as a single source would report it.
    fn sample(records: &[Record]) -> Vec<EpochSample> {
        let mut top = TopTimes::default();
        for r in records {
            top.offer(id_key(&r.reading.device_id), r.reading.ts_ms);
        }
        vec![top.take()]
    }

    /// Outputs as text, per vehicle in emission order, each with its epoch (`usize::MAX`: the
    /// final flush).
    #[derive(Debug, Default, PartialEq)]
    struct Seen {
        by_vehicle: BTreeMap<String, Vec<String>>,
        rejects: Vec<String>,
    }

    impl Seen {
        fn add(&mut self, epoch: usize, out: FleetOutputs) {
            let mut put = |vehicle: &str, item: String| {
                self.by_vehicle
                    .entry(vehicle.to_owned())
                    .or_default()
                    .push(format!("{epoch}: {item}"));
            };
            let v = out.vehicle;
            for a in v.alerts {
                put(&a.vehicle_id.clone(), format!("{a:?}"));
            }
            for r in v.archive {
                put(&r.vehicle_id, format!("{r:?}"));
            }
            for f in v.features {
                put(&f.vehicle_id.clone(), format!("{f:?}"));
            }
            for c in v.claims {
                put(&c.vehicle_id.clone(), format!("{c:?}"));
            }
            self.rejects
                .extend(out.rejects.iter().map(|r| format!("{epoch}: {r:?}")));
        }
    }

    /// Runs `epochs[range]` on workers that own `id_key(vehicle) % fleets.len()`, then the
    /// final flush if the range reaches the end.
    fn run(
        fleets: &mut [Fleet],
        epochs: &[Vec<Record>],
        range: std::ops::Range<usize>,
        seen: &mut Seen,
    ) {
        let n = fleets.len() as u64;
        let end = range.end == epochs.len();
        for e in range {
            let samples = sample(&epochs[e]);
            for (j, fleet) in fleets.iter_mut().enumerate() {
                let mine = epochs[e]
                    .iter()
                    .filter(|r| id_key(&r.vehicle_id) % n == j as u64)
                    .cloned()
                    .collect();
                let mut out = FleetOutputs::default();
                fleet.run_epoch(mine, &samples, T0 + e as i64 * 1000, &mut out);
                seen.add(e, out);
            }
        }
        if end {
            for fleet in fleets.iter_mut() {
                let mut out = FleetOutputs::default();
                fleet.finish(T0 - 1, &mut out);
                seen.add(usize::MAX, out);
            }
        }
    }

    fn new_fleets(n: usize) -> Vec<Fleet> {
        (0..n)
            .map(|_| Fleet::new(RulesConfig::default(), registry(), fences(false)))
            .collect()
    }

    /// The event counters, without `vehicles`.
    fn events(s: &FleetStats) -> [u64; 5] {
        [s.accepted, s.late, s.duplicates, s.future, s.unregistered]
    }

    /// The readings of random steps, some neighbours swapped, some delayed or repeated,
    /// cut into epochs.
    fn arrivals() -> impl Strategy<Value = Vec<Vec<Record>>> {
        (
            proptest::collection::vec(step(), 1..400),
            proptest::collection::vec(any::<prop::sample::Index>(), 0..40),
            proptest::collection::vec((any::<prop::sample::Index>(), 1usize..40), 0..12),
            proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            proptest::collection::vec(1usize..40, 1..8),
        )
            .prop_map(|(steps, swaps, delays, dups, cuts)| {
                epochs(readings(&steps, &registry()), &swaps, &delays, &dups, &cuts)
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(96))]

        #[test]
        fn a_restored_fleet_continues_as_the_uninterrupted_run(
            epochs in arrivals(),
            cut in any::<prop::sample::Index>(),
            reordered in any::<bool>(),
        ) {
            let cut = cut.index(epochs.len() + 1);
            let mut original = new_fleets(1);
            run(&mut original, &epochs, 0..cut, &mut Seen::default());
            let bytes = original[0].snapshot().expect("snapshot");

            let mut restored = vec![Fleet::restore(
                RulesConfig::default(),
                registry(),
                fences(reordered),
                &[&bytes],
                |_| true,
            )
            .expect("restore")];
            prop_assert_eq!(restored[0].clock(), original[0].clock());
            if !reordered {
                // Nothing is lost or changed on the way: the restored fleet saves the same bytes.
                prop_assert!(restored[0].snapshot().expect("snapshot") == bytes);
            }

            let (mut expected, mut got) = (Seen::default(), Seen::default());
            run(&mut original, &epochs, cut..epochs.len(), &mut expected);
            run(&mut restored, &epochs, cut..epochs.len(), &mut got);
            prop_assert_eq!(&got, &expected);
            prop_assert_eq!(restored[0].stats, original[0].stats);
        }

        #[test]
        fn a_snapshot_encoded_in_slices_is_the_snapshot_of_its_epoch(
            epochs in arrivals(),
            cut in any::<prop::sample::Index>(),
            slices in proptest::collection::vec(0usize..3, 1..20),
            reload in any::<Option<prop::sample::Index>>(),
        ) {
            let cut = cut.index(epochs.len() + 1);
            let reload = reload.map(|r| cut + r.index(epochs.len() - cut + 1));
            let (mut plain, mut sliced) = (new_fleets(1), new_fleets(1));
            run(&mut plain, &epochs, 0..cut, &mut Seen::default());
            run(&mut sliced, &epochs, 0..cut, &mut Seen::default());
            let expected = plain[0].snapshot().expect("snapshot");
            prop_assert!(sliced[0].begin_snapshot(7).is_none());

            // The later epochs on both, a few vehicles encoded after each on one of them.
            let (mut want, mut got) = (Seen::default(), Seen::default());
            let mut finished = None;
            for e in cut..epochs.len().max(cut + 1) {
                if reload == Some(e) {
                    for fleet in [&mut plain[0], &mut sliced[0]] {
                        fleet.set_reference(registry(), fences(false));
                    }
                }
                let epoch = e..(e + 1).min(epochs.len());
                run(&mut plain, &epochs, epoch.clone(), &mut want);
                run(&mut sliced, &epochs, epoch, &mut got);
                if finished.is_none() {
                    finished = sliced[0].continue_snapshot(slices[(e - cut) % slices.len()]);
                }
            }
            let finished = finished.or_else(|| sliced[0].finish_snapshot()).expect("the snapshot");
            prop_assert!(!sliced[0].snapshot_pending());
            prop_assert_eq!(finished.epoch, 7);
            prop_assert!(finished.bytes.expect("encoded").to_vec() == expected);
            // Encoding changed nothing: the same outputs and the same state after.
            prop_assert_eq!(&got, &want);
            prop_assert!(sliced[0].snapshot().expect("snapshot") == plain[0].snapshot().expect("snapshot"));
        }

        #[test]
        fn a_checkpoint_of_n_workers_restores_onto_m_workers(
            steps in proptest::collection::vec(step(), 1..300),
            delays in proptest::collection::vec((any::<prop::sample::Index>(), 1usize..40), 0..8),
            dups in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
            cuts in proptest::collection::vec(1usize..40, 1..8),
            cut in any::<prop::sample::Index>(),
            before in 1usize..4,
            after in 1usize..4,
        ) {
            let epochs = epochs(readings(&steps, &registry()), &[], &delays, &dups, &cuts);
            let cut = cut.index(epochs.len() + 1);
            // The reference: one worker, never interrupted.
            let mut single = new_fleets(1);
            let mut single_before = Seen::default();
            run(&mut single, &epochs, 0..cut, &mut single_before);
            let at_cut = single[0].stats;
            let mut expected = Seen::default();
            run(&mut single, &epochs, cut..epochs.len(), &mut expected);

            // `before` workers up to the cut: the same outputs, vehicle by vehicle.
            let mut workers = new_fleets(before);
            let mut seen_before = Seen::default();
            run(&mut workers, &epochs, 0..cut, &mut seen_before);
            prop_assert_eq!(&seen_before.by_vehicle, &single_before.by_vehicle);
            let parts: Vec<Vec<u8>> = workers.iter().map(|f| f.snapshot().expect("snapshot")).collect();
            let parts: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();

            // `after` workers from the parts, each keeping the vehicles routed to it.
            let mut restored: Vec<Fleet> = (0..after as u64)
                .map(|j| {
                    Fleet::restore(
                        RulesConfig::default(),
                        registry(),
                        fences(j % 2 == 1),
                        &parts,
                        |id| id_key(id) % after as u64 == j,
                    )
                    .expect("restore")
                })
                .collect();
            let vehicles: u64 = restored.iter().map(|f| f.stats.vehicles).sum();
            prop_assert_eq!(vehicles, at_cut.vehicles);
            let restored_events: Vec<[u64; 5]> = restored.iter().map(|f| events(&f.stats)).collect();
            let mut got = Seen::default();
            run(&mut restored, &epochs, cut..epochs.len(), &mut got);
            prop_assert_eq!(&got.by_vehicle, &expected.by_vehicle);
            // Every worker rejects the future readings it is sent: together, each one once.
            let mut rejects = got.rejects.clone();
            let mut want = expected.rejects.clone();
            want.sort();
            rejects.sort();
            prop_assert_eq!(rejects, want);

            // Counters: what the restored workers counted after the cut, plus the checkpoint's
            // counters once, is what the uninterrupted worker counted.
            let mut sum = events(&at_cut);
            for (f, at_restore) in restored.iter().zip(&restored_events) {
                for (k, (now, then)) in events(&f.stats).iter().zip(at_restore).enumerate() {
                    sum[k] += now - then;
                }
                prop_assert_eq!(*at_restore, events(&at_cut));
            }
            prop_assert_eq!(sum, events(&single[0].stats));
            let vehicles: u64 = restored.iter().map(|f| f.stats.vehicles).sum();
            prop_assert_eq!(vehicles, single[0].stats.vehicles);
        }
    }

    /// A reading of `device` at `minute` after T0 at latitude `lat`, as the registry sees it.
    fn at(device: &str, minute: i64, lat: f64, ignition: bool) -> Record {
        registry().identify(
            Reading {
                device_id: device.to_owned(),
                ts_ms: T0 + minute * 60_000,
                seq: Some(minute as u64),
                gnss: Some(Gnss {
                    lat: Some(lat),
                    lon: Some(121.0),
                    fix: true,
                    ..Gnss::default()
                }),
                ignition: Some(ignition),
                speed_kmh: Some(if ignition { 40.0 } else { 0.0 }),
                odometer_km: Some(20_000.0 + minute as f64 / 10.0),
                obd: device.ends_with('1').then(|| Obd {
                    vin: Some(VINS[1].to_owned()),
                    ..Obd::default()
                }),
                power: Some(Power {
                    ext_v: Some(if minute % 7 == 0 { f32::NAN } else { 12.5 }),
                    battery_pct: Some(90.0),
                }),
                content_hash: minute as u64,
                received_at_ms: T0 + minute * 60_000,
                ..Reading::default()
            },
            minute as u64,
        )
    }

    /// Three days of V0 (two devices), V1 and the unregistered U9 every two hours, then V0
    /// drives into the yard and parks there: at the end its dwell incident is open, day rings
    /// and night locations hold two days, and the last readings wait in the reorder buffers.
    fn scenario() -> Vec<Vec<Record>> {
        let mut epochs = Vec::new();
        for slot in 0..36 {
            let minute = slot * 120;
            epochs.push(vec![
                at(
                    if slot % 3 == 0 { "D01" } else { "D00" },
                    minute,
                    31.02,
                    false,
                ),
                at("D10", minute + 1, 31.03, slot % 4 == 0),
                at("U9", minute + 2, 31.04, false),
            ]);
        }
        let start = 36 * 120;
        let mut drive = Vec::new();
        for (k, lat) in [31.015, 31.01, 31.005, 31.0, 31.0001, 31.0, 31.0002]
            .into_iter()
            .enumerate()
        {
            drive.push(at("D00", start + k as i64 * 2, lat, k < 4));
        }
        epochs.push(drive);
        let park = |k: i64| at("D00", start + 20 + k * 5, 31.0, false);
        epochs.push((0..5).map(park).collect());
        epochs.push((5..8).map(park).collect());
        epochs
    }

    fn run_scenario() -> (Fleet, Seen) {
        let epochs = scenario();
        let mut fleet = new_fleets(1);
        let mut seen = Seen::default();
        run(&mut fleet, &epochs, 0..epochs.len() - 1, &mut seen);
        let mut fleet = fleet.pop().expect("one fleet");
        // The last epoch: its readings wait in the buffer, the clock is behind them.
        let last = epochs.last().cloned().unwrap_or_default();
        let mut out = FleetOutputs::default();
        let samples = vec![vec![(T0 + (36 * 120 + 60) * 60_000, 1), (T0, 2)]];
        fleet.run_epoch(last, &samples, 0, &mut out);
        seen.add(epochs.len() - 1, out);
        (fleet, seen)
    }

    fn restore(parts: &[&[u8]]) -> Result<Fleet, SnapshotError> {
        Fleet::restore(
            RulesConfig::default(),
            registry(),
            fences(false),
            parts,
            |_| true,
        )
    }

    #[test]
    fn the_scenario_leaves_state_in_every_part() {
        let (fleet, seen) = run_scenario();
        let v0 = &fleet.vehicles[fleet.position("V0").unwrap() as usize];
        assert!(v0.has_buffered(), "readings wait in the reorder buffer");
        let mut refs = Vec::new();
        v0.fence_refs(&mut refs);
        assert!(refs.len() >= 3, "permitted, visit and entry: {refs:?}");
        let dwell = seen.by_vehicle["V0"]
            .iter()
            .filter(|a| a.contains("RiskZoneDwell"))
            .count();
        assert_eq!(dwell, 1, "the dwell incident is open");
        assert!(
            seen.by_vehicle["V0"]
                .iter()
                .any(|a| a.contains("DailyFeatures"))
        );
        assert_eq!(fleet.stats.vehicles, 3);
    }

    #[test]
    fn damaged_foreign_and_old_snapshots_are_errors() {
        let (fleet, _) = run_scenario();
        let bytes = fleet.snapshot().expect("snapshot");
        assert!(restore(&[&bytes]).is_ok());
        for cut in (0..bytes.len()).step_by(7).chain([bytes.len() - 1]) {
            assert!(restore(&[&bytes[..cut]]).is_err(), "cut at {cut}");
        }
        for (i, byte) in (0..bytes.len()).step_by(5).enumerate() {
            let mut bad = bytes.clone();
            bad[byte] ^= 1 << (i % 8);
            assert!(restore(&[&bytes, &bad]).is_err(), "bit flip at {byte}");
        }
        let mut old = bytes.clone();
        old[8..12].copy_from_slice(&(OLDEST_READABLE_VERSION - 1).to_le_bytes());
        let e = restore(&[&bytes, &old]).err().expect("old version");
        assert!(matches!(e, SnapshotError::Version { part: 1, .. }), "{e:?}");
        let vins = crate::vin_index::VinIndex::default()
            .snapshot()
            .expect("snapshot")
            .to_vec();
        let e = restore(&[&vins]).err().expect("a VIN index is no fleet");
        assert!(matches!(e, SnapshotError::NotASnapshot { .. }), "{e}");
        assert!(restore(&[b"{}"]).is_err());
        assert!(restore(&[&[]]).is_err());
        // One part twice is not one checkpoint.
        let e = restore(&[&bytes, &bytes]).err().expect("twice");
        assert!(
            matches!(
                &e,
                SnapshotError::DuplicateVehicle {
                    first: 0,
                    second: 1,
                    ..
                }
            ),
            "{e}"
        );
        // No parts: an empty fleet.
        let empty = restore(&[]).expect("no parts");
        assert_eq!(empty.stats, FleetStats::default());
        assert_eq!(empty.clock(), &PipelineClock::default());
    }

    /// A well-framed body of arbitrary bytes (a checksum is no proof of a sound body).
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut bytes = b"LWFLEET\0".to_vec();
        bytes.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&xxhash_rust::xxh3::xxh3_64(body).to_le_bytes());
        bytes.extend_from_slice(body);
        bytes
    }

    proptest! {
        #[test]
        fn any_body_restores_or_fails_without_panic(
            body in proptest::collection::vec(any::<u8>(), 0..600),
            splice in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..8),
        ) {
            let _ = restore(&[&framed(&body)]);
            // The same with a real body, a few bytes changed.
            let bytes = scenario_snapshot();
            let mut body = bytes[crate::snapshot::FRAME_BYTES..].to_vec();
            for (i, b) in &splice {
                let i = i.index(body.len());
                body[i] = *b;
            }
            let _ = restore(&[&framed(&body)]);
        }
    }

    fn scenario_snapshot() -> Vec<u8> {
        use std::sync::OnceLock;
        static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
        BYTES
            .get_or_init(|| run_scenario().0.snapshot().expect("snapshot"))
            .clone()
    }

    #[test]
    fn a_fence_gone_at_restore_ends_its_visit_without_a_panic() {
        let (fleet, _) = run_scenario();
        let bytes = fleet.snapshot().expect("snapshot");
        // The fence file now has neither the yard nor the pawn shop: V0 was visiting the
        // yard, with its dwell incident open.
        let home = circle("home", "permitted", 31.02, 2_500.0, "");
        let text = format!(r#"{{"type":"FeatureCollection","features":[{home}]}}"#);
        let fences = Arc::new(FenceIndex::from_geojson_str(&text, "f.geojson").expect("fences"));
        let mut restored = Fleet::restore(
            RulesConfig::default(),
            registry(),
            Arc::clone(&fences),
            &[&bytes],
            |_| true,
        )
        .expect("restore");
        let v0 = &restored.vehicles[restored.position("V0").unwrap() as usize];
        let mut refs = Vec::new();
        v0.fence_refs(&mut refs);
        assert!(
            refs.iter()
                .all(|&f| f == fences.lookup("home").expect("home")),
            "{refs:?}"
        );
        // V0 stays, then leaves: nothing refers to the yard any more.
        let start = 36 * 120 + 100;
        let mut seen = Seen::default();
        let epochs: Vec<Vec<Record>> = (0..12)
            .map(|k| {
                vec![at(
                    "D00",
                    start + k * 10,
                    if k < 6 { 31.0 } else { 31.02 },
                    k >= 6,
                )]
            })
            .collect();
        let mut fleets = vec![restored];
        run(&mut fleets, &epochs, 0..epochs.len(), &mut seen);
        restored = fleets.pop().expect("one");
        let alerts = &seen.by_vehicle["V0"];
        assert!(
            alerts.iter().all(|a| !a.contains("RiskZone")),
            "{alerts:#?}"
        );
        assert!(restored.snapshot().is_ok());
    }

    #[test]
    fn registry_facts_come_from_the_registry_given_at_restore() {
        let (fleet, _) = run_scenario();
        let bytes = fleet.snapshot().expect("snapshot");
        // V0 moved to loan L9 and no longer has a permitted fence while the service was down.
        let moved = REGISTRY
            .replace("V0,L0,", "V0,L9,")
            .replace(",home,Asia", ",,Asia");
        let registry = Arc::new(Registry::from_csv_str(&moved, "v.csv").expect("registry"));
        let restored = Fleet::restore(
            RulesConfig::default(),
            Arc::clone(&registry),
            fences(false),
            &[&bytes],
            |id| id != "U9",
        )
        .expect("restore");
        assert_eq!(restored.stats.vehicles, 2);
        assert!(restored.position("U9").is_none());
        let v0 = &restored.vehicles[restored.position("V0").unwrap() as usize];
        assert_eq!(v0.profile.loan_id.as_deref(), Some("L9"));
        assert!(v0.profile.permitted.is_empty());
        let v1 = &restored.vehicles[restored.position("V1").unwrap() as usize];
        assert_eq!(v1.profile.timezone, chrono_tz::Tz::America__New_York);
        // The registered VIN is claimed again under the new loan on the next reading.
        let mut fleets = vec![restored];
        let mut seen = Seen::default();
        let next = vec![vec![at("D00", 36 * 120 + 200, 31.0, false)]];
        run(&mut fleets, &next, 0..1, &mut seen);
        let claims: Vec<&String> = seen.by_vehicle["V0"]
            .iter()
            .filter(|c| c.contains("VinClaim"))
            .collect();
        assert_eq!(claims.len(), 1, "{claims:#?}");
        assert!(claims[0].contains("\"L9\""), "{claims:#?}");
    }

    /// Every device id string the vehicles hold is the registry's own (or, for an
    /// unregistered device, its vehicle's).
    fn assert_device_ids_shared(fleet: &Fleet) {
        let mut devices = 0;
        for vehicle in &fleet.vehicles {
            for id in vehicle.device_ids() {
                let expected = match fleet.registry.device(id) {
                    Some(entry) => &entry.device_id,
                    None => &vehicle.vehicle_id,
                };
                assert!(Arc::ptr_eq(id, expected), "device {id}");
                devices += 1;
            }
        }
        assert!(
            devices > fleet.vehicles.len(),
            "a vehicle with two devices is checked"
        );
    }

    /// As the fleet runs, and after a restore, where the vehicle ids are the registry's too.
    #[test]
    fn id_strings_are_the_registrys() {
        let (fleet, _) = run_scenario();
        assert!(
            fleet.position("U9").is_some(),
            "an unregistered device is checked"
        );
        assert_device_ids_shared(&fleet);
        let bytes = fleet.snapshot().expect("snapshot");
        let restored = restore(&[&bytes]).expect("restore");
        assert_device_ids_shared(&restored);
        for vehicle in &restored.vehicles {
            if let Some(entry) = restored.registry.vehicle(&vehicle.vehicle_id) {
                assert!(Arc::ptr_eq(&vehicle.vehicle_id, &entry.vehicle_id));
            }
        }
    }

    /// Prints the golden snapshot of this build (after a format change: bump
    /// `FORMAT_VERSION`, keep the old `GOLDEN` as `GOLDEN_V<old>` in
    /// [`older_golden_snapshots_restore_as_the_current_one`] if the old version
    /// stays readable, run `cargo test -p operators --lib write_golden -- --ignored
    /// --nocapture` and paste the output over `GOLDEN`).
    #[test]
    #[ignore]
    fn write_golden() {
        let bytes = golden_source();
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        eprintln!("{} bytes", bytes.len());
        for line in hex.as_bytes().chunks(88) {
            eprintln!("        \"{}\",", String::from_utf8_lossy(line));
        }
    }

    /// V0 of the scenario alone: two devices, a closed day, an open dwell incident, buffered
    /// readings.
    fn golden_source() -> Vec<u8> {
        let all = scenario_snapshot();
        let v0 = Fleet::restore(
            RulesConfig::default(),
            registry(),
            fences(false),
            &[&all],
            |id| id == "V0",
        )
        .expect("restore");
        v0.snapshot().expect("snapshot")
    }

    /// [`golden_source`] as written by the build that last set `FORMAT_VERSION`.
    const GOLDEN: &[&str] = &[
        "4c57464c45455400050000000e07000000000000b08beffea6ab19f301fd00365f8c350300007b0000002401",
        "02000479617264010104686f6d65010102563001024c3001114c564754464c48463753463339343031300101",
        "0d417369612f5368616e67686169020344303101fb780ffd00ca8289350300000000fd000000000001000000",
        "00000000fc0000010000000000fd00000000000000010000fd5aa684ca2d51e719fd7060335d6150c502fda6",
        "d357c421099d9dfd5a40e0ae0482f348fd85b731beb4270702fd808ec73c2df93fecfdb68777988eee88a0fd",
        "248a5ba924523478040100fd00ca828935030000fd009cef863503000001fd00ca828935030000fb790f0185",
        "eb51b81e053f400000000000405e400101114c564754464c484637534633393430313101fd00ca8289350300",
        "00000000000000010000484100010000000000e2d34001fd00ca8289350300000000000000ebd34001fd00ca",
        "8289350300000000000000ebd340000000000000000001fd009cef86350300000000000000e2d34000000000",
        "0000000020000000000100000001fd80b8b9893503000000000001fd00d02f6d350300000344303000fb1711",
        "fd40ad7a8c3503000000fd000000000001000000fd0000000055151042fd082184000100000000fc00000001",
        "000000fb000100010000fd0000000000000100fd50620b41984a0daafdfabc05c64984b5d9fd4831ff4588c2",
        "9a3cfd066769b87a669a44fd914b12a83fda19c6fda7e4d56c09fe2ba9fd9a29f73559d617b1fd462abe2e18",
        "c0943a07010402563001024c300001fb081103443030fd00365f8c3503000001fb0811000101000000000000",
        "3f40010000000000405e4001000000000001000100000000010000000000f5d34000010100004841010000b4",
        "420000fb0811fd00365f8c3503000002563001024c300001fb0d1103443030fdc05d688c3503000001fb0d11",
        "0001010000000000003f40010000000000405e4001000000000001000100000000010000000020f5d3400001",
        "0100004841010000b4420000fb0d11fdc05d688c3503000002563001024c300001fb121103443030fd808571",
        "8c3503000001fb12110001010000000000003f40010000000000405e40010000000000010001000000000100",
        "00000040f5d34000010100004841010000b4420000fb1211fd8085718c3503000002563001024c300001fb17",
        "1103443030fd40ad7a8c3503000001fb17110001010000000000003f40010000000000405e40010000000000",
        "01000100000000010000000060f5d3400001010000c07f010000b4420000fb1711fd40ad7a8c35030000fd40",
        "ad7a8c35030000fd8085718c3503000001fd400e568c35030000fb0411010000000000003f40000000000040",
        "5e40010001fd400e568c350300000000000000000100004841000100000000c0f4d34001fd400e568c350300",
        "0000000000e0f4d34001fd400e568c3503000000000000e0f4d340ff9a00cf2e3c9a4001fd00f8158c350300",
        "000000000000f4d340000000000000000024000000000001fd400e568c350300000000000000003f40000000",
        "0000405e40010100010000000001fd80e64c8c350300000000000000003f400000000000405e400101000100",
        "000000ff9a00cf2e3c9a40240001fd009e248c35030000c7bab88d06003f400000000000405e400101000100",
        "000000000000010001fd400e568c350300000000000000003f400000000000405e4001010001000000000001",
        "0100fd80f4208c35030000010000000000003f400000000000405e40000100fd80f4208c35030000000100fd",
        "8093458c350300000001fd009e248c35030000c7bab88d06003f400000000000405e40010100010000000000",
        "0001fb829f01fb829f01fd00f8158c35030000fb889ffc00512502fc00974901fc00b84c0aff9a00cf2e3c9a",
        "40ff9a00cf2e3c9a4000000000000000000000000000f4d34000000000e0f4d34000fc4016400000fc401640",
        "00fc005307000b01000000000020420000fd00f8158c350300000003fd00d02f6d35030000fb829ffc005125",
        "02fc00974901fc00b84c0a000000000000000000000000000000000000000000000000000000000088d34000",
        "00000000a9d34000fc00fe700900fc00fe7009000c00000001000000000000fd00887c7735030000fb849ffc",
        "00512502fc00974901fc00b84c0a0000000000000000000000000000000000000000000000000000000000ac",
        "d3400000000000cdd34000fc00fe700900fc00fe7009000c00000001000000000000fd0040c98135030000fb",
        "869ffc00512502fc00974901fc00b84c0a000000000000000000000000000000000000000000000000000000",
        "0000d0d3400000000000f1d34000fc00fe700900fc00fe7009000c0000000100000000000001fb869f030000",
        "00000000000000000443000000000000000000000443000000000000000000000443000003f628f8410000f2",
        "42f628f8410000f242f628f8410000f24201fb869f000000000000000104",
    ];

    #[test]
    fn the_golden_snapshot_reads_and_writes_byte_for_byte() {
        let bytes = unhex(GOLDEN);
        let advice = "the snapshot layout changed: bump snapshot::FORMAT_VERSION and write a \
                      new GOLDEN (see write_golden)";
        let fleet = restore(&[&bytes]).unwrap_or_else(|e| panic!("{e}; {advice}"));
        assert!(fleet.snapshot().expect("snapshot") == bytes, "{advice}");
        // The scenario itself, written now: a behaviour change shows here too (then only a new
        // GOLDEN is due), but so does a layout change the reading above cannot see, such as
        // two fields of one type swapped (then FORMAT_VERSION as well).
        assert!(
            golden_source() == bytes,
            "the scenario's state is written differently now: write a new GOLDEN (see \
             write_golden), and if the layout of the state changed, bump \
             snapshot::FORMAT_VERSION first"
        );
    }

    fn unhex(lines: &[&str]) -> Vec<u8> {
        let hex = lines.concat();
        (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// [`golden_source`] as written by the last build of format version 4 (`4b6924f`).
    const GOLDEN_V4: &[&str] = &[
        "4c57464c45455400040000001507000000000000356f196354c383c101fd00365f8c350300007b0000002401",
        "02000479617264010104686f6d65010102563001024c3001114c564754464c48463753463339343031300101",
        "0d417369612f5368616e67686169020344303101fb780ffd00ca8289350300000000fd000000000001000000",
        "00000000fc0000010000000000fd00000000000000010000fd5aa684ca2d51e719fd7060335d6150c502fda6",
        "d357c421099d9dfd5a40e0ae0482f348fd85b731beb4270702fd808ec73c2df93fecfdb68777988eee88a0fd",
        "248a5ba924523478040100fd00ca828935030000fd009cef863503000001fd00ca828935030000fb790f0185",
        "eb51b81e053f400000000000405e400101114c564754464c484637534633393430313101fd00ca8289350300",
        "00000000000000010000484100010000000000e2d34001fd00ca8289350300000000000000ebd34001fd00ca",
        "8289350300000000000000ebd340000000000000000001fd009cef86350300000000000000e2d34000000000",
        "0000000020000000000100000001fd80b8b9893503000000000001fd00d02f6d350300000344303000fb1711",
        "fd40ad7a8c3503000000fd000000000001000000fd0000000055151042fd082184000100000000fc00000001",
        "000000fb000100010000fd0000000000000100fd50620b41984a0daafdfabc05c64984b5d9fd4831ff4588c2",
        "9a3cfd066769b87a669a44fd914b12a83fda19c6fda7e4d56c09fe2ba9fd9a29f73559d617b1fd462abe2e18",
        "c0943a07010402563001024c300001fb081103443030fd00365f8c3503000001fb0811000101000000000000",
        "3f40010000000000405e4001000000000001000100000000010000000000f5d34000010100004841010000b4",
        "420000fb0811fd00365f8c3503000002563001024c300001fb0d1103443030fdc05d688c3503000001fb0d11",
        "0001010000000000003f40010000000000405e4001000000000001000100000000010000000020f5d3400001",
        "0100004841010000b4420000fb0d11fdc05d688c3503000002563001024c300001fb121103443030fd808571",
        "8c3503000001fb12110001010000000000003f40010000000000405e40010000000000010001000000000100",
        "00000040f5d34000010100004841010000b4420000fb1211fd8085718c3503000002563001024c300001fb17",
        "1103443030fd40ad7a8c3503000001fb17110001010000000000003f40010000000000405e40010000000000",
        "01000100000000010000000060f5d3400001010000c07f010000b4420000fb1711fd40ad7a8c35030000fd40",
        "ad7a8c35030000fd8085718c3503000001fd400e568c35030000fb0411010000000000003f40000000000040",
        "5e40010001fd400e568c350300000000000000000100004841000100000000c0f4d34001fd400e568c350300",
        "0000000000e0f4d34001fd400e568c3503000000000000e0f4d340ff9a00cf2e3c9a4001fd00f8158c350300",
        "000000000000f4d340000000000000000024000000000001fd400e568c350300000000000000003f40000000",
        "0000405e40010100010000000001fd80e64c8c350300000000000000003f400000000000405e400101000100",
        "000000ff9a00cf2e3c9a40240001fd009e248c35030000c7bab88d06003f400000000000405e400101000100",
        "000000000000010001fd400e568c350300000000000000003f400000000000405e4001010001000000002823",
        "fb06934171c0010100fd80f4208c35030000010000000000003f400000000000405e40000100fd80f4208c35",
        "030000000100fd8093458c350300000001fd009e248c35030000c7bab88d06003f400000000000405e400101",
        "000100000000000001fb829f01fb829f01fd00f8158c35030000fb889ffc00512502fc00974901fc00b84c0a",
        "ff9a00cf2e3c9a40ff9a00cf2e3c9a4000000000000000000000000000f4d34000000000e0f4d34000fc4016",
        "400000fc40164000fc005307000b01000000000020420000fd00f8158c350300000003fd00d02f6d35030000",
        "fb829ffc00512502fc00974901fc00b84c0a0000000000000000000000000000000000000000000000000000",
        "00000088d3400000000000a9d34000fc00fe700900fc00fe7009000c00000001000000000000fd00887c7735",
        "030000fb849ffc00512502fc00974901fc00b84c0a0000000000000000000000000000000000000000000000",
        "000000000000acd3400000000000cdd34000fc00fe700900fc00fe7009000c00000001000000000000fd0040",
        "c98135030000fb869ffc00512502fc00974901fc00b84c0a0000000000000000000000000000000000000000",
        "000000000000000000d0d3400000000000f1d34000fc00fe700900fc00fe7009000c00000001000000000000",
        "01fb869f03000000000000000000000443000000000000000000000443000000000000000000000443000003",
        "f628f8410000f242f628f8410000f242f628f8410000f24201fb869f000000000000000104",
    ];

    /// [`golden_source`] as written by the last build of format version 3 (`c22473f`).
    const GOLDEN_V3: &[&str] = &[
        "4c57464c454554000300000045070000000000008b4bf8b6cbe6667601fd00365f8c350300007b0000002401",
        "02000479617264010104686f6d65010102563001024c3001114c564754464c48463753463339343031300101",
        "0d417369612f5368616e67686169020344303101fb780ffd00ca8289350300000000fd000000000001000000",
        "00000000fc0000010000000000fd00000000000000010000fd0040c98135030000fb400bfd006e5c84350300",
        "00fba80cfd009cef8635030000fb100efd00ca828935030000fb780ffd00887c7735030000fba005fd00b60f",
        "7a35030000fb0807fd00e4a27c35030000fb7008fd0012367f35030000fbd809040100fd00ca828935030000",
        "fd009cef863503000001fd00ca828935030000fb790f0185eb51b81e053f400000000000405e400101114c56",
        "4754464c484637534633393430313101fd00ca828935030000000000000000010000484100010000000000e2",
        "d34001fd00ca8289350300000000000000ebd34001fd00ca8289350300000000000000ebd340000000000000",
        "000001fd009cef86350300000000000000e2d340000000000000000020000000000100000001fd80b8b98935",
        "03000000000001fd00d02f6d350300000344303000fb1711fd40ad7a8c3503000000fd000000000001000000",
        "fd0000000055151042fd082184000100000000fc00000001000000fb000100010000fd0000000000000100fd",
        "c0be438c35030000fbf910fd80e64c8c35030000fbfe10fd400e568c35030000fb0311fd00365f8c35030000",
        "fb0811fdc05d688c35030000fb0d11fd8085718c35030000fb1211fd40ad7a8c35030000fb1711fd00973a8c",
        "35030000fbf41007010402563001024c300001fb081103443030fd00365f8c3503000001fb08110001010000",
        "000000003f40010000000000405e4001000000000001000100000000010000000000f5d34000010100004841",
        "010000b4420000fb0811fd00365f8c3503000002563001024c300001fb0d1103443030fdc05d688c35030000",
        "01fb0d110001010000000000003f40010000000000405e4001000000000001000100000000010000000020f5",
        "d34000010100004841010000b4420000fb0d11fdc05d688c3503000002563001024c300001fb121103443030",
        "fd8085718c3503000001fb12110001010000000000003f40010000000000405e400100000000000100010000",
        "0000010000000040f5d34000010100004841010000b4420000fb1211fd8085718c3503000002563001024c30",
        "0001fb171103443030fd40ad7a8c3503000001fb17110001010000000000003f40010000000000405e400100",
        "0000000001000100000000010000000060f5d3400001010000c07f010000b4420000fb1711fd40ad7a8c3503",
        "0000fd40ad7a8c35030000fd8085718c3503000001fd400e568c35030000fb0411010000000000003f400000",
        "000000405e40010001fd400e568c350300000000000000000100004841000100000000c0f4d34001fd400e56",
        "8c3503000000000000e0f4d34001fd400e568c3503000000000000e0f4d340ff9a00cf2e3c9a4001fd00f815",
        "8c350300000000000000f4d340000000000000000024000000000001fd400e568c350300000000000000003f",
        "400000000000405e40010100010000000001fd80e64c8c350300000000000000003f400000000000405e4001",
        "01000100000000ff9a00cf2e3c9a40240001fd009e248c35030000c7bab88d06003f400000000000405e4001",
        "01000100000000000000010001fd400e568c350300000000000000003f400000000000405e40010100010000",
        "00002823fb06934171c0010100fd80f4208c35030000010000000000003f400000000000405e40000100fd80",
        "f4208c35030000000100fd8093458c350300000001fd009e248c35030000c7bab88d06003f40000000000040",
        "5e400101000100000000000001fb829f01fb829f01fd00f8158c35030000fb889ffc00512502fc00974901fc",
        "00b84c0aff9a00cf2e3c9a40ff9a00cf2e3c9a4000000000000000000000000000f4d34000000000e0f4d340",
        "00fc4016400000fc40164000fc005307000b01000000000020420000fd00f8158c350300000003fd00d02f6d",
        "35030000fb829ffc00512502fc00974901fc00b84c0a00000000000000000000000000000000000000000000",
        "0000000000000088d3400000000000a9d34000fc00fe700900fc00fe7009000c00000001000000000000fd00",
        "887c7735030000fb849ffc00512502fc00974901fc00b84c0a00000000000000000000000000000000000000",
        "00000000000000000000acd3400000000000cdd34000fc00fe700900fc00fe7009000c000000010000000000",
        "00fd0040c98135030000fb869ffc00512502fc00974901fc00b84c0a00000000000000000000000000000000",
        "00000000000000000000000000d0d3400000000000f1d34000fc00fe700900fc00fe7009000c000000010000",
        "0000000001fb869f030000000000000000000004430000000000000000000004430000000000000000000004",
        "43000003f628f8410000f242f628f8410000f242f628f8410000f24201fb869f000000000000000104",
    ];

    /// An upgrade keeps the state: the golden snapshot of each older readable version restores
    /// to the state the current one holds (version 3's de-duplication window read from the old
    /// pairs, `geofence_exit`'s last next fix before version 5 on the side its signed distance
    /// gave), written again byte for byte as that one.
    #[test]
    fn older_golden_snapshots_restore_as_the_current_one() {
        for (version, golden) in [(3u32, GOLDEN_V3), (4, GOLDEN_V4)] {
            let old = unhex(golden);
            assert_eq!(old[8..12], version.to_le_bytes());
            let fleet = restore(&[&old]).unwrap_or_else(|e| panic!("version {version}: {e}"));
            assert!(
                fleet.snapshot().expect("snapshot") == unhex(GOLDEN),
                "version {version}"
            );
        }
    }

    /// Snapshot size and encode/decode time of a fleet with a month of history, in release:
    ///
    /// ```sh
    /// cargo test --release -p operators --lib measure_snapshot -- --ignored --nocapture
    /// LW_VEHICLES=20000 LW_DAYS=31 cargo test --release …   # other sizes
    /// ```
    ///
    /// Every vehicle has one wired tracker reporting like the `history` bench's realistic day
    /// (parked heartbeats every 5–10 min, a 30-min commute out and back with a fix every
    /// 30 s, odometer, OBD with VIN, power; ~300 readings a day), the commutes of the
    /// vehicles spread over an hour. Fed through the fleet in 1-minute epochs for `LW_DAYS`
    /// days and up to 17:45 of the next, so the evening commute fills reorder buffers at the
    /// snapshot.
    ///
    /// 2 cores shared with other builds, 10 000 vehicles, 31 days (97 M readings; 6 491
    /// vehicles with buffered readings at the snapshot), two runs: 26.9 MB, 2 691 B per
    /// vehicle (2 297 B with the buffers flushed); encode 51–57 ms (5–6 µs per vehicle,
    /// ~500 MB/s); restore 74–90 ms (7–9 µs per vehicle); restore keeping one worker's share
    /// of four 55–71 ms (every vehicle is decoded, the others dropped at once).
    #[test]
    #[ignore]
    fn measure_snapshot_of_a_month() {
        use std::time::Instant;
        let env = |name: &str, default: i64| {
            std::env::var(name)
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(default)
        };
        let (n, days) = (env("LW_VEHICLES", 10_000) as usize, env("LW_DAYS", 31));
        // 2026-06-01T00:00+08:00.
        const DAY0: i64 = 1_780_243_200_000;
        const DAY: i64 = 86_400_000;
        let mix = |mut x: u64| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            x ^ (x >> 31)
        };
        let mut csv = String::from(
            "vehicle_id,loan_id,device_id,vin,device_class,permitted_fences,timezone\n",
        );
        for i in 0..n {
            csv.push_str(&format!(
                "VH{i:08},LN{:010},86{:013},LSVAU2180{:08X},wired,,Asia/Shanghai\n",
                2_026_000_000 + i,
                7_731_000_000_000u64 + i as u64,
                mix(i as u64) as u32
            ));
        }
        let registry = Arc::new(Registry::from_csv_str(&csv, "generated").expect("registry"));
        let mut fleet = Fleet::new(
            RulesConfig::default(),
            Arc::clone(&registry),
            Arc::new(FenceIndex::empty()),
        );
        // One vehicle's readings of one day: (ms after midnight, northward step).
        let schedule = |i: usize, day: i64| -> Vec<(i64, f64)> {
            let shift = (i % 60) as i64 * 60_000;
            let legs = [
                ((7 * 60 + 15) * 60_000 + shift, 0.0027),
                ((17 * 60) * 60_000 + shift, -0.0027),
            ];
            let mut out = Vec::with_capacity(320);
            let mut k = 0u64;
            let mut gap = || {
                k += 1;
                (300 + mix((i as u64) ^ (day as u64) << 40 ^ (k << 20)) % 301) as i64 * 1000
            };
            let mut t = 0;
            for (depart, step) in legs {
                while t < depart {
                    out.push((t, 0.0));
                    t += gap();
                }
                t = depart;
                for _ in 0..60 {
                    out.push((t, step));
                    t += 30_000;
                }
            }
            while t < DAY {
                out.push((t, 0.0));
                t += gap();
            }
            out
        };
        let mut lat: Vec<f64> = (0..n)
            .map(|i| 31.13 + (mix(i as u64) % 200) as f64 * 0.001)
            .collect();
        let mut odometer: Vec<f64> = (0..n)
            .map(|i| 20_000.0 + (mix(i as u64) % 80_000) as f64)
            .collect();
        let ids: Vec<(String, Option<String>)> = (0..n)
            .map(|i| {
                let device = format!("86{:013}", 7_731_000_000_000u64 + i as u64);
                let v = registry.vehicle(&format!("VH{i:08}")).expect("registered");
                (device, v.vin.as_deref().map(str::to_owned))
            })
            .collect();
        let mut seq = vec![0u64; n];
        let mut ingest = 0u64;
        let started = Instant::now();
        let mut readings = 0u64;
        let mut out = FleetOutputs::default();
        let last_minute = (17 * 60 + 45) as i64;
        for day in 0..=days {
            let plans: Vec<Vec<(i64, f64)>> = (0..n).map(|i| schedule(i, day)).collect();
            let mut next = vec![0usize; n];
            let minutes = if day == days { last_minute } else { 1440 };
            for minute in 0..minutes {
                let end = (minute + 1) * 60_000;
                let mut records = Vec::new();
                let mut top = TopTimes::default();
                for i in 0..n {
                    while let Some(&(t, step)) = plans[i].get(next[i]).filter(|(t, _)| *t < end) {
                        next[i] += 1;
                        seq[i] += 1;
                        ingest += 1;
                        lat[i] += step;
                        odometer[i] += step.abs() * 113.0;
                        let ts = DAY0 + day * DAY + t;
                        let driving = step != 0.0;
                        let h = mix(i as u64 ^ seq[i] << 24);
                        let jitter = ((h % 7) as f64 - 3.0) * 0.000_01;
                        let (device_id, vin) = &ids[i];
                        top.offer(i as u64, ts);
                        records.push(registry.identify(
                            Reading {
                                device_id: device_id.clone(),
                                ts_ms: ts,
                                seq: Some(seq[i]),
                                gnss: Some(Gnss {
                                    lat: Some(lat[i] + jitter),
                                    lon: Some(121.47 + jitter),
                                    fix: true,
                                    speed_kmh: Some(if driving { 36.0 } else { 0.0 }),
                                    hdop: Some(0.9),
                                    sats: Some(10),
                                    ..Gnss::default()
                                }),
                                ignition: Some(driving),
                                speed_kmh: Some(if driving { 30.0 + (h % 13) as f32 } else { 0.0 }),
                                odometer_km: Some((odometer[i] * 10.0).round() / 10.0),
                                obd: Some(Obd {
                                    rpm: Some(if driving { 1_800.0 } else { 0.0 }),
                                    vin: vin.clone(),
                                    mil: Some(false),
                                    dtc_count: Some(0),
                                    dist_since_clear_km: Some(500.0),
                                    ..Obd::default()
                                }),
                                power: Some(Power {
                                    ext_v: Some(if driving { 13.9 } else { 12.6 }),
                                    battery_pct: Some(97.0),
                                }),
                                content_hash: h,
                                received_at_ms: ts + 400,
                                ..Reading::default()
                            },
                            ingest,
                        ));
                    }
                }
                readings += records.len() as u64;
                fleet.run_epoch(records, &[top.take()], 0, &mut out);
                out = FleetOutputs::default();
            }
        }
        let buffered = fleet.vehicles.iter().filter(|v| v.has_buffered()).count();
        eprintln!(
            "fed {n} vehicles {days} days + 17:45 ({readings} readings) in {:.1} s; {buffered} with buffered readings at the snapshot; {:?}",
            started.elapsed().as_secs_f64(),
            fleet.stats
        );
        let median = |mut v: Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let (mut enc, mut dec, mut quarter) = (Vec::new(), Vec::new(), Vec::new());
        let mut bytes = Vec::new();
        for _ in 0..5 {
            let t = Instant::now();
            bytes = fleet.snapshot().expect("snapshot");
            enc.push(t.elapsed().as_secs_f64());
            let t = Instant::now();
            let restored = Fleet::restore(
                RulesConfig::default(),
                Arc::clone(&registry),
                Arc::new(FenceIndex::empty()),
                &[&bytes],
                |_| true,
            )
            .expect("restore");
            dec.push(t.elapsed().as_secs_f64());
            assert_eq!(restored.stats, fleet.stats);
            drop(restored);
            let t = Instant::now();
            let share = Fleet::restore(
                RulesConfig::default(),
                Arc::clone(&registry),
                Arc::new(FenceIndex::empty()),
                &[&bytes],
                |id| crate::dataflow::id_key(id).is_multiple_of(4),
            )
            .expect("restore");
            quarter.push(t.elapsed().as_secs_f64());
            drop(share);
        }
        let (enc, dec, quarter) = (median(enc), median(dec), median(quarter));
        eprintln!(
            "RESULT {n} vehicles, {days} days: snapshot {} bytes = {:.0} B per vehicle; encode {:.1} ms ({:.2} µs/vehicle, {:.0} MB/s); restore {:.1} ms ({:.2} µs/vehicle); restore keeping 1 of 4 workers' share {:.1} ms",
            bytes.len(),
            bytes.len() as f64 / n as f64,
            enc * 1e3,
            enc * 1e6 / n as f64,
            bytes.len() as f64 / enc / 1e6,
            dec * 1e3,
            dec * 1e6 / n as f64,
            quarter * 1e3
        );
        // The same fleet with the reorder buffers flushed (a quiet moment).
        fleet.finish(0, &mut FleetOutputs::default());
        let flushed = fleet.snapshot().expect("snapshot").len();
        eprintln!(
            "RESULT buffers flushed: {flushed} bytes = {:.0} B per vehicle",
            flushed as f64 / n as f64
        );
    }
}
