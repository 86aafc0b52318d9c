//! The timely operator that runs a [`Fleet`] on one worker: records exchanged by vehicle,
//! epoch samples broadcast to every worker, outputs in one stream of batches of [`Output`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::{Broadcast, Map, Partition};
use timely::dataflow::operators::{Capability, Concat};
use xxhash_rust::xxh3::xxh3_64;

use schemas::{Alert, DailyFeatures, Record, Reject};

use crate::fleet::{EpochSample, FinishedSnapshot, Fleet, FleetOutputs, FleetStats};
use crate::reference::{ReferenceSlot, ReferenceView};
use crate::vin_index::{VinClaim, VinIndex};

/// What the fleet operator emits.
#[derive(Clone, Debug)]
///
/// The rare variants are boxed so an `Output` is the size of an `Archive` record, which nearly
/// every output is and which is moved several times on its way to the sinks.
pub enum Output {
    /// An alert.
    Alert(Box<Alert>),
    /// An accepted reading, to archive.
    Archive(Record),
    /// A reading rejected by the fleet (future timestamp).
    Reject(Box<Reject>),
    /// A closed (or revised) vehicle-day of features.
    Features(Box<DailyFeatures>),
    /// The pipeline clock after an epoch: sinks may close what ends before it.
    Watermark(i64),
}

/// What the fleet operator emits: an epoch's outputs together, and what the VIN index needs.
/// An epoch's outputs travel as one element so that the operators and sinks after it move a
/// `Vec` per epoch instead of every reading (and regrow no per-epoch buffers of them).
enum Emitted {
    Out(Vec<Output>),
    Vin(VinInput),
}

/// Input of the VIN index.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
enum VinInput {
    /// A claim, to the worker owning its VIN.
    Claim(VinClaim),
    /// The reference data changed, seen by worker `worker` (sent to its own VIN index) at
    /// pipeline clock `clock_ms`.
    Reloaded { worker: u64, clock_ms: i64 },
}

/// A well-mixed 64-bit key of an id: vehicles are exchanged by it (timely masks low bits for
/// power-of-two worker counts, so the hash must mix well), devices keyed by it in clock samples.
pub fn id_key(id: &str) -> u64 {
    xxh3_64(id.as_bytes())
}

/// Checkpoint epochs: the multiples of `every_epochs` after `after_epoch`. An operator takes
/// its checkpoint at epoch `b` once it has processed every epoch before `b` and none after:
/// the state then covers exactly the input of epochs `< b`. When an operator's progress jumps
/// over several checkpoint epochs at once, it takes only the last: a checkpoint some operator
/// skipped never completes, and the next one does.
#[derive(Clone, Copy, Debug)]
pub struct Barrier {
    every_epochs: u64,
    done: u64,
}

impl Barrier {
    /// Checkpoints every `every_epochs` epochs, the first one after `after_epoch` (the epoch a
    /// restored state and its replayed input are processed at).
    pub fn new(every_epochs: u64, after_epoch: u64) -> Self {
        let every_epochs = every_epochs.max(1);
        Self {
            every_epochs,
            done: after_epoch - after_epoch % every_epochs,
        }
    }

    /// Called with the first epoch not yet processed (before processing it, or a frontier):
    /// the checkpoint epoch to take now, if one was crossed.
    pub fn crossed(&mut self, next: u64) -> Option<u64> {
        let boundary = next - next % self.every_epochs;
        (boundary > self.done).then(|| {
            self.done = boundary;
            boundary
        })
    }
}

/// Takes an operator's state at a checkpoint epoch.
pub type SaveState<S> = Box<dyn FnMut(u64, &S)>;

/// Receives a worker's fleet snapshot of a checkpoint epoch once encoded, with the longest
/// time the worker spent on it at once.
pub type SaveSnapshot = Box<dyn FnMut(FinishedSnapshot, Duration)>;

/// What the keyed operators do at checkpoint epochs: hand their state to the caller, who
/// stores it (operators do no I/O).
pub struct Checkpoints {
    /// When.
    pub barrier: Barrier,
    /// Receives a worker's fleet state of each checkpoint epoch. It is encoded a share after
    /// each later epoch ([`Fleet::begin_snapshot`]), spread over `fleet_spread_epochs`.
    pub fleet: SaveSnapshot,
    /// Epochs a fleet snapshot is spread over.
    pub fleet_spread_epochs: u64,
    /// Takes a worker's share of the VIN index at a checkpoint epoch.
    pub vins: SaveState<VinIndex>,
}

/// A worker's fleet snapshots.
struct FleetSnapshots {
    barrier: Barrier,
    save: SaveSnapshot,
    spread_epochs: u64,
    /// Vehicles of the snapshot in progress to encode per epoch.
    per_epoch: usize,
    /// The epoch the snapshot in progress was encoded up to.
    encoded_upto: u64,
    /// The longest the worker spent on the snapshot in progress at once.
    longest: Duration,
}

impl FleetSnapshots {
    /// Begins the snapshot of checkpoint `epoch` if `next` (the first epoch not processed)
    /// crossed one. One still in progress is finished at once and saved first.
    fn at(&mut self, next: u64, fleet: &mut Fleet) {
        let Some(epoch) = self.barrier.crossed(next) else {
            return;
        };
        let started = Instant::now();
        if let Some(previous) = fleet.begin_snapshot(epoch) {
            (self.save)(previous, self.longest.max(started.elapsed()));
        }
        self.longest = started.elapsed();
        let vehicles = fleet.stats.vehicles.div_ceil(self.spread_epochs.max(1));
        self.per_epoch = usize::try_from(vehicles).unwrap_or(usize::MAX).max(1);
        self.encoded_upto = epoch;
    }

    /// The worker is at epoch `now`: encodes the share of the snapshot in progress of the
    /// epochs gone by since the last call, and saves the snapshot once finished.
    fn progress(&mut self, now: u64, fleet: &mut Fleet) {
        let epochs = now.saturating_sub(self.encoded_upto);
        if epochs == 0 || !fleet.snapshot_pending() {
            return;
        }
        self.encoded_upto = now;
        let share = usize::try_from(epochs)
            .unwrap_or(usize::MAX)
            .saturating_mul(self.per_epoch);
        let started = Instant::now();
        let finished = fleet.continue_snapshot(share);
        self.longest = self.longest.max(started.elapsed());
        if let Some(done) = finished {
            (self.save)(done, self.longest);
        }
    }

    /// Saves the snapshot in progress, finished at once.
    fn finish(&mut self, fleet: &mut Fleet) {
        let started = Instant::now();
        if let Some(done) = fleet.finish_snapshot() {
            (self.save)(done, self.longest.max(started.elapsed()));
        }
    }
}

/// The lowest time of two frontiers, if any.
fn low_of(a: &[u64], b: &[u64]) -> Option<u64> {
    a.iter().chain(b).min().copied()
}

/// Runs the per-vehicle rules.
pub trait RunFleet<'scope> {
    /// Exchanges records by vehicle and runs `fleet` over them, one epoch at a time, with the
    /// pipeline clock driven by `samples` (broadcast to every worker here). `wall_clock` gives
    /// wall-clock milliseconds; `stats` receives the fleet's counters after every epoch.
    /// `vins` is this worker's share of the VIN index (empty, or restored); `checkpoints`, if
    /// any, receives both states at checkpoint epochs. Each element of the result is a batch
    /// of outputs of one epoch, in the order the fleet made them.
    #[allow(clippy::too_many_arguments)]
    fn run_fleet(
        self,
        samples: StreamVec<'scope, u64, EpochSample>,
        fleet: Fleet,
        vins: VinIndex,
        wall_clock: fn() -> i64,
        stats: Rc<RefCell<FleetStats>>,
        reference: ReferenceSlot,
        checkpoints: Option<Checkpoints>,
    ) -> StreamVec<'scope, u64, Vec<Output>>;
}

impl<'scope> RunFleet<'scope> for StreamVec<'scope, u64, Record> {
    fn run_fleet(
        self,
        samples: StreamVec<'scope, u64, EpochSample>,
        mut fleet: Fleet,
        vins: VinIndex,
        wall_clock: fn() -> i64,
        stats: Rc<RefCell<FleetStats>>,
        reference: ReferenceSlot,
        checkpoints: Option<Checkpoints>,
    ) -> StreamVec<'scope, u64, Vec<Output>> {
        let (fleet_checkpoints, vin_checkpoints) = match checkpoints {
            Some(c) => (
                Some((c.barrier, c.fleet, c.fleet_spread_epochs)),
                Some((c.barrier, c.vins)),
            ),
            None => (None, None),
        };
        let by_vehicle = Exchange::new(|r: &Record| id_key(&r.vehicle_id));
        let worker = self.scope().index() as u64;
        let mut view = ReferenceView::new(reference.clone());
        let emitted = self.binary_frontier(
            samples.broadcast(),
            by_vehicle,
            Pipeline,
            "RunFleet",
            move |capability, _info| {
                let mut snapshots =
                    fleet_checkpoints.map(|(barrier, save, spread_epochs)| FleetSnapshots {
                        barrier,
                        save,
                        spread_epochs,
                        per_epoch: 1,
                        encoded_upto: 0,
                        longest: Duration::ZERO,
                    });
                let mut held = Some(capability);
                let mut records: BTreeMap<u64, Vec<Record>> = BTreeMap::new();
                let mut epoch_samples: BTreeMap<u64, Vec<EpochSample>> = BTreeMap::new();
                move |(input, frontier), (sample_input, sample_frontier), output| {
                    input.for_each(|cap, data| {
                        if let Some(t) = cap.least() {
                            records.entry(*t).or_default().append(data);
                        }
                    });
                    sample_input.for_each(|cap, data| {
                        if let Some(t) = cap.least() {
                            epoch_samples.entry(*t).or_default().append(data);
                        }
                    });
                    let complete =
                        |t: u64| !frontier.less_equal(&t) && !sample_frontier.less_equal(&t);
                    loop {
                        let next = match (records.keys().next(), epoch_samples.keys().next()) {
                            (Some(a), Some(b)) => *a.min(b),
                            (Some(a), None) => *a,
                            (None, Some(b)) => *b,
                            (None, None) => break,
                        };
                        if !complete(next) {
                            break;
                        }
                        if let Some(snapshots) = snapshots.as_mut() {
                            snapshots.at(next, &mut fleet);
                        }
                        let batch = records.remove(&next).unwrap_or_default();
                        let samples = epoch_samples.remove(&next).unwrap_or_default();
                        let mut out = FleetOutputs::default();
                        let reloaded = view.changed().map(|r| {
                            fleet.set_reference(Arc::clone(&r.registry), Arc::clone(&r.fences));
                        });
                        fleet.run_epoch(batch, &samples, wall_clock(), &mut out);
                        if let Some(snapshots) = snapshots.as_mut() {
                            snapshots.progress(next + 1, &mut fleet);
                        }
                        let watermark = fleet.clock().watermark_ms(fleet.rules());
                        if let Some(cap) = held.as_mut() {
                            cap.downgrade(&next);
                            let mut session = output.session(cap);
                            session.give_iterator(emitted(out, watermark));
                            if reloaded.is_some() {
                                let clock_ms = watermark.unwrap_or_else(wall_clock);
                                session.give(Emitted::Vin(VinInput::Reloaded { worker, clock_ms }));
                            }
                        }
                    }
                    let done = frontier.is_empty() && sample_frontier.is_empty();
                    if done {
                        if let Some(cap) = held.take() {
                            let mut out = FleetOutputs::default();
                            fleet.finish(wall_clock(), &mut out);
                            output.session(&cap).give_iterator(emitted(out, None));
                        }
                        if let Some(snapshots) = snapshots.as_mut() {
                            snapshots.finish(&mut fleet);
                        }
                    } else if let Some(cap) = held.as_mut() {
                        let low = low_of(&frontier.frontier(), &sample_frontier.frontier());
                        // Every epoch before `low` is processed unless one is still held.
                        let first_held = records.keys().chain(epoch_samples.keys()).min();
                        if let (Some(snapshots), Some(low)) = (snapshots.as_mut(), low)
                            && first_held.is_none_or(|h| *h >= low)
                        {
                            snapshots.at(low, &mut fleet);
                        }
                        if let Some(low) = low.filter(|l| l > cap.time()) {
                            cap.downgrade(&low);
                            if let Some(snapshots) = snapshots.as_mut() {
                                snapshots.progress(low, &mut fleet);
                            }
                        }
                    }
                    *stats.borrow_mut() = fleet.stats;
                }
            },
        );
        let mut parts = emitted.partition(2, |e| match e {
            Emitted::Out(o) => (0, Ok(o)),
            Emitted::Vin(v) => (1, Err(v)),
        });
        let vin_inputs = parts.pop().expect("two parts").flat_map(Result::err);
        let outputs = parts.pop().expect("two parts").flat_map(Result::ok);
        outputs.concat(index_vins(
            vin_inputs,
            vins,
            reference,
            wall_clock,
            vin_checkpoints,
        ))
    }
}

/// The fleet-wide VIN index: claims exchanged by VIN, handled per epoch in (event time,
/// vehicle) order so the result does not depend on the number of workers.
fn index_vins<'scope>(
    inputs: StreamVec<'scope, u64, VinInput>,
    mut index: VinIndex,
    reference: ReferenceSlot,
    wall_clock: fn() -> i64,
    mut checkpoints: Option<(Barrier, SaveState<VinIndex>)>,
) -> StreamVec<'scope, u64, Vec<Output>> {
    let by_vin = Exchange::new(|v: &VinInput| match v {
        VinInput::Claim(c) => id_key(&c.vin),
        VinInput::Reloaded { worker, .. } => *worker,
    });
    inputs.unary_frontier(by_vin, "VinIndex", move |_capability, _info| {
        let mut view = ReferenceView::new(reference);
        let mut pending: BTreeMap<u64, (Capability<u64>, Vec<VinInput>)> = BTreeMap::new();
        move |(input, frontier), output| {
            input.for_each(|cap, data| {
                let Some(time) = cap.least().copied() else {
                    return;
                };
                if let Some(entry) = pending.get_mut(&time) {
                    entry.1.append(data);
                } else if let Some(held) = cap.retain_least(0) {
                    pending.insert(time, (held, std::mem::take(data)));
                }
            });
            while let Some(entry) = pending.first_entry() {
                if frontier.less_equal(entry.key()) {
                    break;
                }
                if let Some((barrier, save)) = checkpoints.as_mut()
                    && let Some(epoch) = barrier.crossed(*entry.key())
                {
                    save(epoch, &index);
                }
                let (cap, batch) = entry.remove();
                let now = wall_clock();
                let mut reload_clock = None;
                let mut claims = Vec::new();
                for input in batch {
                    match input {
                        VinInput::Claim(c) => claims.push(c),
                        VinInput::Reloaded { clock_ms, .. } => reload_clock = Some(clock_ms),
                    }
                }
                claims.sort_by(|a, b| (a.ts_ms, &a.vehicle_id).cmp(&(b.ts_ms, &b.vehicle_id)));
                let mut alerts = Vec::new();
                // A reload first raises what earlier claims now mean; this epoch's claims
                // were made under the new data.
                if let Some(r) = view.changed() {
                    let clock = reload_clock
                        .or(claims.first().map(|c| c.ts_ms))
                        .unwrap_or(now);
                    index.registry_changed(&r.registry, clock, now, &mut alerts);
                }
                let registry = Arc::clone(&view.get().registry);
                alerts.extend(claims.iter().filter_map(|c| index.claim(c, &registry, now)));
                if !alerts.is_empty() {
                    let batch: Vec<Output> = alerts
                        .into_iter()
                        .map(|a| Output::Alert(Box::new(a)))
                        .collect();
                    output.session(&cap).give(batch);
                }
            }
            let low = frontier.frontier().iter().min().copied();
            if let (Some((barrier, save)), Some(low)) = (checkpoints.as_mut(), low)
                && pending.keys().next().is_none_or(|held| *held >= low)
                && let Some(epoch) = barrier.crossed(low)
            {
                save(epoch, &index);
            }
        }
    })
}

/// What an epoch emits: its outputs and `watermark` as one batch, if any, then its VIN claims.
fn emitted(out: FleetOutputs, watermark: Option<i64>) -> impl Iterator<Item = Emitted> {
    let v = out.vehicle;
    let mut batch = Vec::with_capacity(
        v.alerts.len() + v.archive.len() + v.features.len() + out.rejects.len() + 1,
    );
    batch.extend(v.alerts.into_iter().map(|a| Output::Alert(Box::new(a))));
    batch.extend(v.archive.into_iter().map(Output::Archive));
    batch.extend(
        v.features
            .into_iter()
            .map(|f| Output::Features(Box::new(f))),
    );
    batch.extend(out.rejects.into_iter().map(|r| Output::Reject(Box::new(r))));
    batch.extend(watermark.map(Output::Watermark));
    let claims = v
        .claims
        .into_iter()
        .map(|c| Emitted::Vin(VinInput::Claim(c)));
    (!batch.is_empty())
        .then_some(Emitted::Out(batch))
        .into_iter()
        .chain(claims)
}

#[cfg(test)]
mod tests {
    use super::Barrier;

    #[test]
    fn a_barrier_takes_each_checkpoint_epoch_once_and_the_last_of_a_jump() {
        // Restored state and replayed input are processed at epoch 25: no checkpoint up to it.
        let mut barrier = Barrier::new(10, 25);
        assert_eq!(barrier.crossed(25), None);
        assert_eq!(barrier.crossed(29), None);
        assert_eq!(barrier.crossed(30), Some(30));
        assert_eq!(barrier.crossed(30), None);
        assert_eq!(barrier.crossed(39), None);
        // Progress jumps over 40 and 50: only 50 is taken.
        assert_eq!(barrier.crossed(57), Some(50));
        assert_eq!(barrier.crossed(60), Some(60));
        // A fresh start at a checkpoint epoch does not take it.
        let mut barrier = Barrier::new(10, 40);
        assert_eq!(barrier.crossed(40), None);
        assert_eq!(barrier.crossed(50), Some(50));
    }
}
