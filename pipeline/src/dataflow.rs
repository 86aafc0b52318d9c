//! The parts of the dataflow that `replay` and `run` share: identity resolution, the sink
//! operator, per-worker counters and metrics. Only the sources differ: lines of files with
//! epochs of fixed line counts (`replay`), MQTT messages with epochs of wall-clock time
//! (`run`).

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use timely::dataflow::channels::pact::Pipeline;
use timely::dataflow::operators::Concat;
use timely::dataflow::operators::generic::Operator;
use timely::dataflow::operators::vec::Map;
use timely::dataflow::{Scope, StreamVec};

use anyhow::Context;
use connectors::{ArchiveConfig, ArchiveStats, ArchiveWriter, JsonlWriter, KafkaProducer};
use operators::dataflow::{Barrier, Output, RunFleet, id_key};
use operators::fleet::{EpochSample, Fleet, FleetStats, TopTimes};
use operators::reference::{ReferenceSlot, ReferenceView};
use operators::vin_index::VinIndex;
use schemas::time::now_ms;
use schemas::{Alert, DailyFeatures, DecodeLimits, Reading, Record, Reject, decode_payload};

use crate::checkpoint::{Checkpointer, Restored};
use crate::config::Config;

/// One in this many archived records has its ingest latency recorded: enough for the
/// histogram's quantiles without a metrics call per record.
const LATENCY_SAMPLE_EVERY: u64 = 64;

/// The shared slot where operators leave the first fatal error of a worker.
pub(crate) type ErrorSlot = Rc<RefCell<Option<String>>>;

/// Per-worker counters merged into a summary.
#[derive(Debug, Default)]
pub(crate) struct WorkerReport {
    pub(crate) messages: u64,
    pub(crate) readings: u64,
    pub(crate) fleet: FleetStats,
    pub(crate) rejects: BTreeMap<String, u64>,
    pub(crate) alerts: BTreeMap<String, u64>,
    /// Daily features rows, revisions included.
    pub(crate) features: u64,
    /// Of `features`, the rows with `revision` > 0.
    pub(crate) features_revisions: u64,
    pub(crate) archive: ArchiveStats,
}

/// What a source needs besides its input.
pub(crate) struct SourceSetup {
    pub(crate) reference: ReferenceView,
    pub(crate) limits: DecodeLimits,
}

impl SourceSetup {
    /// Takes up reloaded reference data: sources call it once per batch of input, so a
    /// reload applies from the next batch on.
    pub(crate) fn refresh(&mut self) {
        self.reference.changed();
    }
}

/// A source's three outputs: records, rejects, and one sample of event times per epoch for
/// the pipeline clock.
pub(crate) type Streams<'scope> = (
    StreamVec<'scope, u64, Record>,
    StreamVec<'scope, u64, Reject>,
    StreamVec<'scope, u64, EpochSample>,
);

/// What a source gathers for its open epoch: records and rejects to send, and the per-device
/// event-time maxima of the epoch's clock sample.
#[derive(Default)]
pub(crate) struct EpochBatch {
    decoded: Vec<Result<Reading, Reject>>,
    pub(crate) records: Vec<Record>,
    pub(crate) rejects: Vec<Reject>,
    pub(crate) top: TopTimes,
}

impl EpochBatch {
    /// Decodes one message, the `seq`-th of the source's input, into records and rejects;
    /// returns the readings it held.
    pub(crate) fn decode(
        &mut self,
        payload: &[u8],
        topic_device: Option<&str>,
        received_at_ms: i64,
        seq: u64,
        setup: &SourceSetup,
    ) -> u64 {
        let registry = &setup.reference.get().registry;
        decode_payload(
            payload,
            topic_device,
            received_at_ms,
            &setup.limits,
            &mut self.decoded,
        );
        let mut readings = 0;
        for (element, item) in self.decoded.drain(..).enumerate() {
            match item {
                Ok(reading) => {
                    readings += 1;
                    self.top.offer(id_key(&reading.device_id), reading.ts_ms);
                    let ingest_seq = (seq << 16) | element.min(0xffff) as u64;
                    self.records.push(registry.identify(reading, ingest_seq));
                }
                Err(reject) => self.rejects.push(reject),
            }
        }
        readings
    }
}

/// A function that shows an alert (the demo prints it to the terminal).
pub(crate) type AlertPrinter = Arc<dyn Fn(&Alert) + Send + Sync>;

/// Where alerts and daily features go besides the archive.
#[derive(Clone, Default)]
pub(crate) struct OutputSinks {
    /// The JSON Lines file of alerts.
    pub(crate) alerts_log: Option<Arc<JsonlWriter<Alert>>>,
    /// The JSON Lines file of daily features.
    pub(crate) features_log: Option<Arc<JsonlWriter<DailyFeatures>>>,
    /// Kafka: both topics.
    pub(crate) kafka: Option<KafkaProducer>,
    /// A live view of the alerts.
    pub(crate) printer: Option<AlertPrinter>,
}

impl OutputSinks {
    /// Sends `alerts` and `features` to every sink; one failing does not keep them from the
    /// others.
    fn send(&self, alerts: &[Alert], features: &[DailyFeatures]) -> Result<(), String> {
        if let Some(kafka) = &self.kafka {
            alerts.iter().for_each(|a| kafka.send_alert(a));
            features.iter().for_each(|f| kafka.send_features(f));
        }
        if let Some(printer) = &self.printer {
            alerts.iter().for_each(|a| printer(a));
        }
        let alerts_written = match &self.alerts_log {
            Some(log) if !alerts.is_empty() => log.write(alerts),
            _ => Ok(()),
        };
        let features_written = match &self.features_log {
            Some(log) if !features.is_empty() => log.write(features),
            _ => Ok(()),
        };
        alerts_written
            .and(features_written)
            .map_err(|e| e.to_string())
    }

    /// Flushes both JSON Lines files (at the end of a run).
    pub(crate) fn flush(&self) -> anyhow::Result<()> {
        if let Some(log) = &self.alerts_log {
            log.flush().context("flushing the alerts file")?;
        }
        if let Some(log) = &self.features_log {
            log.flush().context("flushing the features file")?;
        }
        Ok(())
    }
}

/// The fleet counters as metrics: what changed since the last call is added.
#[derive(Default)]
struct FleetMetrics {
    last: FleetStats,
}

impl FleetMetrics {
    fn publish(&mut self, now: FleetStats) {
        let delta = |a: u64, b: u64| a.saturating_sub(b);
        metrics::counter!("lienwatch_accepted_total")
            .increment(delta(now.accepted, self.last.accepted));
        metrics::counter!("lienwatch_late_total").increment(delta(now.late, self.last.late));
        metrics::counter!("lienwatch_duplicates_total")
            .increment(delta(now.duplicates, self.last.duplicates));
        metrics::counter!("lienwatch_unregistered_total")
            .increment(delta(now.unregistered, self.last.unregistered));
        metrics::gauge!("lienwatch_vehicles")
            .increment(now.vehicles as f64 - self.last.vehicles as f64);
        self.last = now;
    }
}

/// A worker's input: builds the source operator of the worker's dataflow.
pub(crate) trait Source {
    /// Whether the input is live: then timestamps too far after their receipt are rejected
    /// (SPEC §4a), besides the event-time check both make.
    fn live(&self) -> bool {
        false
    }

    /// Builds the source in `scope`: records, rejects and epoch samples.
    fn build<'scope>(
        self,
        scope: Scope<'scope, u64>,
        setup: SourceSetup,
        report: Rc<RefCell<WorkerReport>>,
        error: ErrorSlot,
    ) -> Streams<'scope>;
}

/// What a worker tells its process besides its report.
pub(crate) trait WorkerEvents {
    /// The dataflow is built: the worker takes input from now on.
    fn built(&self) {}
    /// An operator failed (the first error only): the process should stop.
    fn failed(&self) {}
}

/// A worker with no one to tell (replay).
pub(crate) struct Quiet;

impl WorkerEvents for Quiet {}

/// Builds and runs one worker's dataflow: `source` → fleet → sinks, until the source ends.
pub(crate) fn run_worker(
    worker: &mut timely::worker::Worker,
    config: &Config,
    reference: &ReferenceSlot,
    output_sinks: OutputSinks,
    source: impl Source,
    events: &impl WorkerEvents,
    durability: Option<WorkerDurability<'_>>,
) -> Result<WorkerReport, String> {
    let index = worker.index();
    let peers = worker.peers();
    let process = config.pipeline.process;
    let error: ErrorSlot = Rc::default();
    let report = Rc::new(RefCell::new(WorkerReport::default()));
    let fleet_stats = Rc::new(RefCell::new(FleetStats::default()));
    let archive = if config.archive.enabled {
        let archive = ArchiveConfig {
            yield_to_workers: source.live(),
            ..config.archive.connector()
        };
        Some(
            ArchiveWriter::open(&archive, process, index)
                // With its causes: "error sending request" alone hides e.g. an untrusted
                // certificate.
                .map_err(|e| format!("{:#}", anyhow::Error::new(e)))?,
        )
    } else {
        None
    };
    let view = ReferenceView::new(reference.clone());
    let (registry, fences) = (
        Arc::clone(&view.get().registry),
        Arc::clone(&view.get().fences),
    );
    let (fleet, vins) = match durability.as_ref().and_then(|d| d.restored) {
        Some(restored) => {
            let (mut fleet, vins) = restored
                .worker_state(index, peers, config, registry, fences)
                .map_err(|e| format!("{e:#}"))?;
            // Counters are per run (the summary, the Prometheus counters); vehicles are state.
            fleet.stats = FleetStats {
                vehicles: fleet.stats.vehicles,
                ..FleetStats::default()
            };
            (fleet, vins)
        }
        None => (
            Fleet::new(config.rules.clone(), registry, fences),
            VinIndex::default(),
        ),
    };
    let keyed_checkpoints = durability
        .as_ref()
        .map(|d| d.checkpointer.hooks(index, d.resume_epoch));
    let sink_checkpoints = durability.as_ref().map(|d| SinkCheckpoints {
        barrier: d.checkpointer.barrier(d.resume_epoch),
        checkpointer: Arc::clone(d.checkpointer),
    });
    let setup = SourceSetup {
        reference: view,
        limits: DecodeLimits {
            max_reject_raw_bytes: config.decode.max_reject_raw_bytes,
            max_future_of_receipt_ms: source.live().then(|| {
                i64::try_from(config.rules.max_future_s.saturating_mul(1000)).unwrap_or(i64::MAX)
            }),
        },
    };
    worker.dataflow::<u64, _, _>(|scope| {
        let (records, rejects, samples) =
            source.build(scope, setup, Rc::clone(&report), Rc::clone(&error));
        let outputs = records
            .run_fleet(
                samples,
                fleet,
                vins,
                now_ms,
                Rc::clone(&fleet_stats),
                reference.clone(),
                keyed_checkpoints,
            )
            .concat(rejects.map(|r| vec![Output::Reject(Box::new(r))]));
        sinks(
            outputs,
            archive,
            output_sinks,
            Rc::clone(&fleet_stats),
            Rc::clone(&report),
            Rc::clone(&error),
            sink_checkpoints,
        );
    });
    events.built();
    let mut failed = false;
    while worker.has_dataflows() {
        worker.step_or_park(Some(Duration::from_millis(20)));
        if !failed && error.borrow().is_some() {
            failed = true;
            events.failed();
        }
    }
    if let Some(e) = error.borrow_mut().take() {
        return Err(e);
    }
    let mut report = std::mem::take(&mut *report.borrow_mut());
    report.fleet = *fleet_stats.borrow();
    Ok(report)
}

/// A worker's part in checkpoints and recovery (`run` with `[durability]`).
pub(crate) struct WorkerDurability<'a> {
    /// Collects and commits checkpoints.
    pub(crate) checkpointer: &'a Arc<Checkpointer>,
    /// The checkpoint restored at start, if any.
    pub(crate) restored: Option<&'a Restored>,
    /// The epoch the restored state and the replayed journal are processed at: the first
    /// checkpoint is after it.
    pub(crate) resume_epoch: u64,
}

/// What the sink does at a checkpoint epoch: close every archive file and tell the
/// checkpointer what to wait for.
struct SinkCheckpoints {
    barrier: Barrier,
    checkpointer: Arc<Checkpointer>,
}

/// Writes the fleet's outputs: alerts and daily features to `output_sinks` and the archive,
/// accepted readings and rejects to the archive; counts alerts by kind, features rows and
/// rejects by reason, in `report` and as metrics.
///
/// Outputs are handled one epoch at a time in epoch order, so that at a checkpoint epoch
/// every archive file holds rows of earlier epochs only, and is named with the epoch it was
/// opened at (recovery deletes the files of epochs it replays).
fn sinks<'scope>(
    outputs: StreamVec<'scope, u64, Vec<Output>>,
    mut archive: Option<ArchiveWriter>,
    output_sinks: OutputSinks,
    fleet_stats: Rc<RefCell<FleetStats>>,
    report: Rc<RefCell<WorkerReport>>,
    error: ErrorSlot,
    checkpoints: Option<SinkCheckpoints>,
) {
    let (mut barrier, checkpointer) = match checkpoints {
        Some(c) => (Some(c.barrier), Some(c.checkpointer)),
        None => (None, None),
    };
    let mut pending: BTreeMap<u64, Vec<Vec<Output>>> = BTreeMap::new();
    let mut alerts = Vec::new();
    let mut features = Vec::new();
    let mut watermark = None;
    let mut archived = 0u64;
    let mut fleet_metrics = FleetMetrics::default();
    let latency = metrics::histogram!("lienwatch_ingest_latency_seconds");
    outputs.sink(Pipeline, "Sinks", move |(input, frontier)| {
        input.for_each(|cap, data| {
            if let Some(t) = cap.least() {
                pending.entry(*t).or_default().append(data);
            }
        });
        let low = frontier.frontier().iter().min().copied();
        let mut report = report.borrow_mut();
        // Sends what was gathered to the other sinks; at a checkpoint epoch also closes every
        // archive file and hands the checkpointer what to wait for.
        let settle = |at_checkpoint: Option<u64>,
                          archive: &mut Option<ArchiveWriter>,
                          alerts: &mut Vec<Alert>,
                          features: &mut Vec<DailyFeatures>| {
            if let Err(e) = output_sinks.send(alerts, features) {
                error.borrow_mut().get_or_insert(e);
            }
            alerts.clear();
            features.clear();
            let (Some(epoch), Some(checkpointer)) = (at_checkpoint, checkpointer.as_ref()) else {
                return;
            };
            let progress = match archive.as_mut() {
                Some(a) => match a.roll_all() {
                    Ok(mark) => Some((a.progress(), mark)),
                    Err(e) => {
                        error.borrow_mut().get_or_insert(e.to_string());
                        return;
                    }
                },
                None => None,
            };
            checkpointer.sink_part(epoch, progress);
        };
        while let Some(entry) = pending.first_entry() {
            if low.is_some_and(|l| *entry.key() >= l) {
                break;
            }
            let (epoch, items) = entry.remove_entry();
            let crossed = barrier.as_mut().and_then(|b| b.crossed(epoch));
            if crossed.is_some() {
                settle(crossed, &mut archive, &mut alerts, &mut features);
            }
            if let Some(a) = archive.as_mut() {
                a.set_epoch(epoch);
            }
            for item in items.into_iter().flatten() {
                match item {
                    Output::Alert(alert) => {
                        *report
                            .alerts
                            .entry(alert.kind.as_str().to_owned())
                            .or_default() += 1;
                        metrics::counter!("lienwatch_alerts_total", "kind" => alert.kind.as_str())
                            .increment(1);
                        if let Some(a) = archive.as_mut() {
                            a.push_alert(&alert);
                        }
                        alerts.push(*alert);
                    }
                    Output::Archive(record) => {
                        if archived.is_multiple_of(LATENCY_SAMPLE_EVERY) {
                            let ms = now_ms() - record.reading.received_at_ms;
                            latency.record(ms.max(0) as f64 / 1000.0);
                        }
                        archived += 1;
                        if let Some(a) = archive.as_mut() {
                            a.push_telemetry(record);
                        }
                    }
                    Output::Reject(reject) => {
                        *report.rejects.entry(reject.reason.clone()).or_default() += 1;
                        metrics::counter!("lienwatch_rejects_total", "reason" => reject.reason.clone())
                            .increment(1);
                        if let Some(a) = archive.as_mut() {
                            a.push_reject(*reject);
                        }
                    }
                    Output::Features(row) => {
                        report.features += 1;
                        if row.revision > 0 {
                            report.features_revisions += 1;
                        }
                        metrics::counter!("lienwatch_features_total").increment(1);
                        if let Some(a) = archive.as_mut() {
                            a.push_features(&row);
                        }
                        features.push(*row);
                    }
                    Output::Watermark(w) => watermark = Some(w),
                }
            }
        }
        // Every epoch before `low` is handled: a checkpoint epoch up to it is reached.
        let crossed = match (low, barrier.as_mut()) {
            (Some(low), Some(b)) if pending.keys().next().is_none_or(|t| *t >= low) => {
                b.crossed(low)
            }
            _ => None,
        };
        settle(crossed, &mut archive, &mut alerts, &mut features);
        fleet_metrics.publish(*fleet_stats.borrow());
        if let Some(a) = archive.as_mut() {
            let rolled = a
                .roll_due(now_ms())
                .and_then(|()| watermark.take().map_or(Ok(()), |w| a.roll_event_time(w)));
            if let Err(e) = rolled {
                error.borrow_mut().get_or_insert(e.to_string());
            }
        }
        if low.is_none()
            && let Some(a) = archive.take()
        {
            match a.finish() {
                Ok(stats) => report.archive = stats,
                Err(e) => {
                    error.borrow_mut().get_or_insert(e.to_string());
                }
            }
        }
    });
}
