//! The timely operator that runs a [`Fleet`] on one worker: records exchanged by vehicle,
//! epoch samples broadcast to every worker, outputs in one stream of [`Output`].

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use timely::dataflow::StreamVec;
use timely::dataflow::channels::pact::{Exchange, Pipeline};
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Broadcast;
use xxhash_rust::xxh3::xxh3_64;

use schemas::{Alert, DailyFeatures, Record, Reject};

use crate::fleet::{EpochSample, Fleet, FleetOutputs, FleetStats};

/// What the fleet operator emits.
#[derive(Clone, Debug)]
pub enum Output {
    /// An alert.
    Alert(Alert),
    /// An accepted reading, to archive.
    Archive(Record),
    /// A reading rejected by the fleet (future timestamp).
    Reject(Reject),
    /// A closed (or revised) vehicle-day of features.
    Features(DailyFeatures),
    /// The pipeline clock after an epoch: sinks may close what ends before it.
    Watermark(i64),
}

/// A well-mixed 64-bit key of an id: vehicles are exchanged by it (timely masks low bits for
/// power-of-two worker counts, so the hash must mix well), devices keyed by it in clock samples.
pub fn id_key(id: &str) -> u64 {
    xxh3_64(id.as_bytes())
}

/// Runs the per-vehicle rules.
pub trait RunFleet<'scope> {
    /// Exchanges records by vehicle and runs `fleet` over them, one epoch at a time, with the
    /// pipeline clock driven by `samples` (broadcast to every worker here). `wall_clock` gives
    /// wall-clock milliseconds; `stats` receives the fleet's counters after every epoch.
    fn run_fleet(
        self,
        samples: StreamVec<'scope, u64, EpochSample>,
        fleet: Fleet,
        wall_clock: fn() -> i64,
        stats: Rc<RefCell<FleetStats>>,
    ) -> StreamVec<'scope, u64, Output>;
}

impl<'scope> RunFleet<'scope> for StreamVec<'scope, u64, Record> {
    fn run_fleet(
        self,
        samples: StreamVec<'scope, u64, EpochSample>,
        mut fleet: Fleet,
        wall_clock: fn() -> i64,
        stats: Rc<RefCell<FleetStats>>,
    ) -> StreamVec<'scope, u64, Output> {
        let by_vehicle = Exchange::new(|r: &Record| id_key(&r.vehicle_id));
        self.binary_frontier(
            samples.broadcast(),
            by_vehicle,
            Pipeline,
            "RunFleet",
            move |capability, _info| {
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
                        let batch = records.remove(&next).unwrap_or_default();
                        let samples = epoch_samples.remove(&next).unwrap_or_default();
                        let mut out = FleetOutputs::default();
                        fleet.run_epoch(batch, &samples, wall_clock(), &mut out);
                        let watermark = fleet.clock().watermark_ms(fleet.rules());
                        if let Some(cap) = held.as_mut() {
                            cap.downgrade(&next);
                            let mut session = output.session(cap);
                            session.give_iterator(outputs(out));
                            if let Some(w) = watermark {
                                session.give(Output::Watermark(w));
                            }
                        }
                    }
                    let done = frontier.is_empty() && sample_frontier.is_empty();
                    if done {
                        if let Some(cap) = held.take() {
                            let mut out = FleetOutputs::default();
                            fleet.finish(wall_clock(), &mut out);
                            output.session(&cap).give_iterator(outputs(out));
                        }
                    } else if let Some(cap) = held.as_mut() {
                        let low = frontier
                            .frontier()
                            .iter()
                            .chain(sample_frontier.frontier().iter())
                            .min()
                            .copied();
                        if let Some(low) = low.filter(|l| l > cap.time()) {
                            cap.downgrade(&low);
                        }
                    }
                    *stats.borrow_mut() = fleet.stats;
                }
            },
        )
    }
}

fn outputs(out: FleetOutputs) -> impl Iterator<Item = Output> {
    let alerts = out.vehicle.alerts.into_iter().map(Output::Alert);
    let archive = out.vehicle.archive.into_iter().map(Output::Archive);
    let rejects = out.rejects.into_iter().map(Output::Reject);
    alerts.chain(archive).chain(rejects)
}
