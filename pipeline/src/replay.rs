//! `lienwatch replay`: the dataflow over JSON Lines files (SPEC §7).
//!
//! ```text
//!  ReplaySource ──records──▶ exchange by vehicle ──▶ RunFleet ──┐
//!   (per worker:   ──samples──▶ broadcast ──────────────▶┘        ├─▶ Sinks (JSON Lines alerts
//!    its blocks    ──rejects──────────────────────────────────────┘    and features, Parquet
//!    of lines)                                                         archive)
//! ```
//!
//! Every worker reads the inputs and decodes its own blocks of lines; ingest epochs are fixed
//! runs of input lines, so the pipeline clock, and therefore every alert, is the same whatever
//! the worker count.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, anyhow};
use serde::Serialize;
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Scope;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;

use connectors::{ArchiveStats, JsonlWriter, LineBatch, LineSource};
use operators::dataflow::id_key;
use operators::fences::FenceIndex;
use operators::fleet::EpochSample;
use operators::reference::ReferenceSlot;
use operators::registry::Registry;
use schemas::time::now_ms;
use schemas::{Record, Reject};

use crate::config::Config;
use crate::dataflow::{
    EpochBatch, ErrorSlot, OutputSinks, Quiet, Source, SourceSetup, Streams, WorkerReport,
    run_worker,
};

/// Lines a source decodes per activation, so one source cannot starve the other operators.
const LINES_PER_ACTIVATION: usize = 4096;

/// What a replay did, printed at the end and written with `--summary-out`.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Summary {
    /// Non-blank input lines (messages; a batch array is one message).
    pub messages: u64,
    /// `run`: of `messages`, those replayed from the journal at start (received by an
    /// earlier run after its last checkpoint).
    pub replayed: u64,
    /// Readings decoded (batch elements count one each).
    pub readings: u64,
    /// Readings accepted and archived.
    pub accepted: u64,
    /// Accepted readings that arrived late.
    pub late: u64,
    /// Duplicates dropped.
    pub duplicates: u64,
    /// Accepted readings of devices missing from the registry.
    pub unregistered: u64,
    /// Vehicles seen.
    pub vehicles: u64,
    /// Rejected messages and batch elements, by reason.
    pub rejects: BTreeMap<String, u64>,
    /// Sum of `rejects`.
    pub rejects_total: u64,
    /// Alerts by kind (all phases).
    pub alerts: BTreeMap<String, u64>,
    /// Sum of `alerts`.
    pub alerts_total: u64,
    /// Daily features rows emitted (vehicle-days closed, plus revisions).
    pub features: u64,
    /// Of `features`, the revisions (`revision` > 0) after late data.
    pub features_revisions: u64,
    /// What the archive wrote.
    pub archive: ArchiveSummary,
    /// Worker threads.
    pub workers: usize,
    /// Wall-clock seconds.
    pub elapsed_s: f64,
    /// `messages / elapsed_s`.
    pub messages_per_s: f64,
}

/// Archive figures of a [`Summary`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ArchiveSummary {
    /// Files written.
    pub files: u64,
    /// Bytes written.
    pub bytes: u64,
    /// `telemetry` rows.
    pub telemetry_rows: u64,
    /// `alerts` rows.
    pub alert_rows: u64,
    /// `rejects` rows.
    pub reject_rows: u64,
    /// `features_daily` rows.
    pub features_rows: u64,
}

impl From<ArchiveStats> for ArchiveSummary {
    fn from(s: ArchiveStats) -> Self {
        Self {
            files: s.files,
            bytes: s.bytes,
            telemetry_rows: s.telemetry_rows,
            alert_rows: s.alert_rows,
            reject_rows: s.reject_rows,
            features_rows: s.features_rows,
        }
    }
}

impl Summary {
    /// A human-readable report.
    pub fn render(&self) -> String {
        let mut s = format!(
            "messages {}  readings {}  accepted {}  late {}  duplicates {}  unregistered {}  vehicles {}\n",
            self.messages,
            self.readings,
            self.accepted,
            self.late,
            self.duplicates,
            self.unregistered,
            self.vehicles
        );
        if self.replayed > 0 {
            s += &format!("replayed {} (from the journal)\n", self.replayed);
        }
        s += &format!("rejects {}", self.rejects_total);
        for (reason, n) in &self.rejects {
            s += &format!("  {reason} {n}");
        }
        s += &format!("\nalerts {}", self.alerts_total);
        for (kind, n) in &self.alerts {
            s += &format!("  {kind} {n}");
        }
        s += &format!(
            "\nfeatures {} rows ({} revisions)",
            self.features, self.features_revisions
        );
        s += &format!(
            "\narchive {} files, {} bytes, {} telemetry rows, {} alert rows, {} reject rows, \
             {} features rows\n",
            self.archive.files,
            self.archive.bytes,
            self.archive.telemetry_rows,
            self.archive.alert_rows,
            self.archive.reject_rows,
            self.archive.features_rows
        );
        s += &format!(
            "{} workers, {:.2} s, {:.0} messages/s\n",
            self.workers, self.elapsed_s, self.messages_per_s
        );
        s
    }
}

/// Loads the registry and fences named in the config, checking one against the other.
pub fn load_reference(config: &Config) -> anyhow::Result<(Registry, FenceIndex)> {
    let fences = match &config.registry.fences_geojson {
        Some(path) => FenceIndex::load(path)?,
        None => FenceIndex::empty(),
    };
    let registry = match &config.registry.vehicles_csv {
        Some(path) => Registry::load(path)?,
        None => Registry::empty(),
    };
    registry.check_fences(&fences)?;
    Ok((registry, fences))
}

/// Replays `inputs` through the dataflow with `config`; returns the summary.
pub fn replay(config: &Config, inputs: Vec<PathBuf>) -> anyhow::Result<Summary> {
    let (registry, fences) = load_reference(config)?;
    let registry = Arc::new(registry);
    // A line's vehicle is found where the line is read only when every worker reads every
    // line: stdin can be read once.
    let route_registry = (config.pipeline.workers > 1
        && !inputs.iter().any(|p| p == Path::new("-")))
    .then(|| Arc::clone(&registry));
    let reference = ReferenceSlot::new(registry, Arc::new(fences));
    let output_sinks = OutputSinks {
        alerts_log: open_jsonl(config.alerts.jsonl_path.as_deref(), "alerts")?,
        features_log: open_jsonl(config.features.jsonl_path.as_deref(), "features")?,
        ..OutputSinks::default()
    };
    let workers = config.pipeline.workers;
    let config = Arc::new(config.clone());
    let started = Instant::now();
    let sinks = output_sinks.clone();
    let guards = timely::execute(timely::Config::process(workers), move |worker| {
        let block_lines = config.pipeline.replay_block_lines;
        let (lines, router) = match &route_registry {
            Some(registry) => (
                LineSource::new(inputs.clone(), 0, 1, block_lines),
                Some(LineRouter::new(
                    Arc::clone(registry),
                    worker.index(),
                    worker.peers(),
                    block_lines,
                )),
            ),
            None => (
                LineSource::new(inputs.clone(), worker.index(), worker.peers(), block_lines),
                None,
            ),
        };
        let source = ReplaySource {
            lines,
            router,
            epoch_lines: config.pipeline.replay_epoch_lines,
        };
        run_worker(
            worker,
            &config,
            &reference,
            sinks.clone(),
            source,
            &Quiet,
            None,
        )
    })
    .map_err(|e| anyhow!("starting workers: {e}"))?;
    let mut summary = Summary {
        workers,
        ..Summary::default()
    };
    for result in guards.join() {
        let report = result
            .map_err(|e| anyhow!("worker failed: {e}"))?
            .map_err(|e| anyhow!(e))?;
        merge(&mut summary, report);
    }
    output_sinks.flush()?;
    summary.elapsed_s = started.elapsed().as_secs_f64();
    summary.messages_per_s = summary.messages as f64 / summary.elapsed_s.max(1e-9);
    Ok(summary)
}

/// Opens the JSON Lines file of `what` (`alerts`, `features`) at `path`, if any, creating its
/// directory.
pub(crate) fn open_jsonl<T: Serialize>(
    path: Option<&Path>,
    what: &str,
) -> anyhow::Result<Option<Arc<JsonlWriter<T>>>> {
    let Some(path) = path else {
        return Ok(None);
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("{what} directory {}", dir.display()))?;
    }
    let log = JsonlWriter::create(path).with_context(|| format!("{what} file"))?;
    Ok(Some(Arc::new(log)))
}

/// Adds a worker's counters to the summary.
pub(crate) fn merge(summary: &mut Summary, report: WorkerReport) {
    summary.messages += report.messages;
    summary.readings += report.readings;
    summary.accepted += report.fleet.accepted;
    summary.late += report.fleet.late;
    summary.duplicates += report.fleet.duplicates;
    summary.unregistered += report.fleet.unregistered;
    summary.vehicles += report.fleet.vehicles;
    for (reason, n) in report.rejects {
        summary.rejects_total += n;
        *summary.rejects.entry(reason).or_default() += n;
    }
    for (kind, n) in report.alerts {
        summary.alerts_total += n;
        *summary.alerts.entry(kind).or_default() += n;
    }
    summary.features += report.features;
    summary.features_revisions += report.features_revisions;
    summary.archive.files += report.archive.files;
    summary.archive.bytes += report.archive.bytes;
    summary.archive.telemetry_rows += report.archive.telemetry_rows;
    summary.archive.alert_rows += report.archive.alert_rows;
    summary.archive.reject_rows += report.archive.reject_rows;
    summary.archive.features_rows += report.archive.features_rows;
}

/// A worker's share of the replay input, in epochs of `epoch_lines` input lines: the lines
/// `router` gives it from all of them, or without one its blocks of lines.
struct ReplaySource {
    lines: LineSource,
    router: Option<LineRouter>,
    epoch_lines: u64,
}

/// Which worker decodes a replay line: the one that processes its vehicle's records, so that
/// a record is made, used and freed on one core (made on one worker and freed on the other,
/// records cost `-w 2` about 10 % more CPU per message; `benches/README.md`). Every worker
/// reads every line to find its own (it read past the others' blocks before). The vehicle is
/// found from the device id a line starts with (`{"device_id":"…"`, compact and without
/// escapes, as trackers send it) through the registry, the decoder's rule; any other line
/// goes by turns of `block_lines` lines. The owner is a function of the line and its number
/// alone, so each line is decoded by exactly one worker; where the decoder reads a message
/// otherwise (a repeated `device_id`), the exchange by vehicle after it still sends the
/// record to its vehicle's worker.
struct LineRouter {
    registry: Arc<Registry>,
    worker: usize,
    peers: usize,
    block_lines: u64,
    /// The owners of the device ids seen, so that the registry is asked once per device.
    owners: HashMap<Box<[u8]>, usize, ahash::RandomState>,
}

impl LineRouter {
    /// Device ids remembered before the map is emptied, which bounds its memory (~60 MiB).
    const MAX_REMEMBERED: usize = 1 << 20;

    fn new(registry: Arc<Registry>, worker: usize, peers: usize, block_lines: u64) -> Self {
        Self {
            registry,
            worker,
            peers,
            block_lines,
            owners: HashMap::default(),
        }
    }

    /// Whether this worker decodes line number `line`, `bytes`.
    fn owns(&mut self, line: u64, bytes: &[u8]) -> bool {
        let owner = leading_device_id(bytes)
            .and_then(|device| self.device_owner(device))
            .unwrap_or_else(|| {
                usize::try_from((line / self.block_lines) % self.peers as u64).unwrap_or(0)
            });
        owner == self.worker
    }

    /// The worker of the device's vehicle (the device itself when unregistered, as the
    /// decoder makes it), as the exchange by vehicle picks it; `None` if the id is not UTF-8.
    fn device_owner(&mut self, device: &[u8]) -> Option<usize> {
        if let Some(&owner) = self.owners.get(device) {
            return Some(owner);
        }
        let id = std::str::from_utf8(device).ok()?;
        let vehicle = self.registry.device(id).map_or(id, |d| &*d.vehicle_id);
        let owner = usize::try_from(id_key(vehicle) % self.peers as u64).ok()?;
        if self.owners.len() >= Self::MAX_REMEMBERED {
            self.owners.clear();
        }
        self.owners.insert(device.into(), owner);
        Some(owner)
    }
}

/// The device id a line starts with when it starts as compact JSON writes it
/// (`{"device_id":"…"`), without escapes.
fn leading_device_id(line: &[u8]) -> Option<&[u8]> {
    let rest = line.strip_prefix(br#"{"device_id":""#)?;
    let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
    (rest[end] == b'"').then_some(&rest[..end])
}

impl Source for ReplaySource {
    /// Reads and decodes this worker's lines: records, rejects, and one sample of event times
    /// per epoch for the pipeline clock.
    fn build<'scope>(
        self,
        scope: Scope<'scope, u64>,
        setup: SourceSetup,
        report: Rc<RefCell<WorkerReport>>,
        error: ErrorSlot,
    ) -> Streams<'scope> {
        replay_source(
            scope,
            self.lines,
            self.router,
            self.epoch_lines,
            setup,
            report,
            error,
        )
    }
}

fn replay_source<'scope>(
    scope: Scope<'scope, u64>,
    mut lines: LineSource,
    mut router: Option<LineRouter>,
    epoch_lines: u64,
    mut setup: SourceSetup,
    report: Rc<RefCell<WorkerReport>>,
    error: ErrorSlot,
) -> Streams<'scope> {
    let mut builder = OperatorBuilder::new("ReplaySource".to_owned(), scope);
    let info = builder.operator_info();
    let activator = scope.activator_for(Rc::clone(&info.address));
    let (records_out, records) = builder.new_output::<Vec<Record>>();
    let (rejects_out, rejects) = builder.new_output::<Vec<Reject>>();
    let (samples_out, samples) = builder.new_output::<Vec<EpochSample>>();
    let mut records_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<Record>>>::from(records_out);
    let mut rejects_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<Reject>>>::from(rejects_out);
    let mut samples_out =
        OutputBuilder::<_, CapacityContainerBuilder<Vec<EpochSample>>>::from(samples_out);
    builder.build(move |capabilities| {
        let mut capabilities = Some(capabilities);
        let mut epoch = 0u64;
        let mut batch = LineBatch::default();
        let mut open = EpochBatch::default();
        move |_frontiers| {
            let Some(caps) = capabilities.as_mut() else {
                return;
            };
            batch.clear();
            let more = match lines.next_batch(LINES_PER_ACTIVATION, &mut batch) {
                Ok(more) => more,
                Err(e) => {
                    error.borrow_mut().get_or_insert(e.to_string());
                    false
                }
            };
            let received_at = now_ms();
            let mut records_h = records_out.activate();
            let mut rejects_h = rejects_out.activate();
            let mut samples_h = samples_out.activate();
            let mut report = report.borrow_mut();
            setup.refresh();
            for (line, bytes) in batch.iter() {
                let line_epoch = line / epoch_lines;
                if line_epoch > epoch {
                    records_h
                        .session(&caps[0])
                        .give_container(&mut open.records);
                    rejects_h
                        .session(&caps[1])
                        .give_container(&mut open.rejects);
                    if !open.top.is_empty() {
                        samples_h.session(&caps[2]).give(open.top.take());
                    }
                    for cap in caps.iter_mut() {
                        cap.downgrade(&line_epoch);
                    }
                    epoch = line_epoch;
                }
                if router.as_mut().is_some_and(|r| !r.owns(line, bytes)) {
                    continue;
                }
                report.messages += 1;
                report.readings += open.decode(bytes, None, received_at, line, &setup);
            }
            records_h
                .session(&caps[0])
                .give_container(&mut open.records);
            rejects_h
                .session(&caps[1])
                .give_container(&mut open.rejects);
            if more {
                activator.activate();
            } else {
                if !open.top.is_empty() {
                    samples_h.session(&caps[2]).give(open.top.take());
                }
                capabilities = None;
            }
        }
    });
    (records, rejects, samples)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(device: &str, ts_s: i64, seq: u64, lat: f64, extra: &str) -> String {
        format!(
            r#"{{"device_id":"{device}","ts":{},"seq":{seq},"gnss":{{"lat":{lat},"lon":121.0,"fix":true}},"ignition":false,"power":{{"ext_v":12.5}}{extra}}}"#,
            1_764_000_000_000 + ts_s * 1000
        )
    }

    fn run(workers: usize, text: &str) -> (Summary, Vec<Alert>) {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("in.jsonl");
        std::fs::write(&input, text).unwrap();
        let alerts = dir.path().join("alerts.jsonl");
        let features = dir.path().join("out/features.jsonl");
        let mut config = Config::default();
        config.pipeline.workers = workers;
        config.pipeline.replay_epoch_lines = 16;
        config.pipeline.replay_block_lines = 4;
        config.alerts.jsonl_path = Some(alerts.clone());
        config.features.jsonl_path = Some(features.clone());
        config.archive.url = dir.path().join("archive").display().to_string();
        let summary = replay(&config, vec![input]).unwrap();
        let rows: Vec<schemas::DailyFeatures> = std::fs::read_to_string(&features)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len() as u64, summary.features);
        assert_eq!(summary.archive.features_rows, summary.features);
        let mut out: Vec<Alert> = std::fs::read_to_string(&alerts)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        out.sort_by(|a, b| (&a.alert_id, a.phase).cmp(&(&b.alert_id, b.phase)));
        for a in &mut out {
            a.detected_at_ms = 0;
        }
        (summary, out)
    }

    use schemas::Alert;

    #[test]
    fn small_replay_counts_and_alerts_match_across_worker_counts() {
        let mut text = String::new();
        for i in 0..200 {
            for d in 0..5 {
                let extra = if d == 2 && i == 100 {
                    r#","alarms":["tamper"]"#
                } else {
                    ""
                };
                let device = format!("D{d}");
                // Device D4 goes silent for two hours in the middle.
                if d == 4 && (60..180).contains(&i) {
                    continue;
                }
                text += &line(&device, i * 60, i as u64, 31.0 + d as f64 * 0.1, extra);
                text.push('\n');
            }
            if i == 50 {
                text += "not json\n\n";
                text += &line("D1", 50 * 60, 50, 31.1, "");
                text.push('\n');
            }
        }
        let (one, alerts_one) = run(1, &text);
        let (two, alerts_two) = run(2, &text);
        assert_eq!(one.messages, 1 + 1 + 5 * 200 - 120);
        assert_eq!(one.rejects.get("invalid_json"), Some(&1));
        assert_eq!(one.duplicates, 1);
        assert_eq!(one.accepted, 5 * 200 - 120);
        assert_eq!(one.archive.telemetry_rows, one.accepted);
        assert_eq!(one.archive.reject_rows, 1);
        let kinds: Vec<_> = alerts_one
            .iter()
            .map(|a| (a.kind.as_str(), a.phase))
            .collect();
        assert!(
            kinds.contains(&("device_tamper", schemas::Phase::Instant)),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&("offline", schemas::Phase::Open)),
            "{kinds:?}"
        );
        assert!(
            kinds.contains(&("offline", schemas::Phase::Close)),
            "{kinds:?}"
        );
        assert_eq!(alerts_one, alerts_two);
        assert_eq!(one.alerts, two.alerts);
        assert_eq!(one.accepted, two.accepted);
        assert_eq!((one.messages, &one.rejects), (two.messages, &two.rejects));
        assert_eq!(
            (one.features, one.features_revisions),
            (two.features, two.features_revisions)
        );
    }

    #[test]
    fn each_line_has_one_owner_the_worker_of_its_vehicle_when_its_device_leads() {
        let registry = Registry::from_csv_str(
            "vehicle_id,loan_id,device_id,vin,device_class,permitted_fences,timezone\n\
             V1,L1,D1a,,wired,,Asia/Shanghai\n\
             V1,L1,D1b,,obd,,Asia/Shanghai\n\
             V2,L2,D2,,wired,,Asia/Shanghai\n",
            "test",
        )
        .expect("registry");
        let registry = Arc::new(registry);
        let peers = 3;
        let block = 2;
        let mut routers: Vec<LineRouter> = (0..peers)
            .map(|w| LineRouter::new(Arc::clone(&registry), w, peers, block))
            .collect();
        let owners = |routers: &mut Vec<LineRouter>, n: u64, line: &[u8]| -> Vec<usize> {
            (0..peers).filter(|&w| routers[w].owns(n, line)).collect()
        };
        let of = |id: &str| usize::try_from(id_key(id) % peers as u64).unwrap();
        let lines: [(&[u8], Option<usize>); 9] = [
            (br#"{"device_id":"D1a","ts":1}"#, Some(of("V1"))),
            (br#"{"device_id":"D1b","ts":1}"#, Some(of("V1"))),
            (br#"{"device_id":"D2","ts":1}"#, Some(of("V2"))),
            (br#"{"device_id":"D9","ts":1}"#, Some(of("D9"))),
            (br#"{"device_id":"D1a","ts":2}"#, Some(of("V1"))),
            // Read by turns of `block` lines: escapes, spacing, another order, a batch,
            // an id that is not UTF-8, not JSON.
            (br#"{"device_id":"D\u0031a","ts":1}"#, None),
            (br#"{ "device_id":"D1a"}"#, None),
            (br#"[{"device_id":"D1a"}]"#, None),
            (b"{\"device_id\":\"\xff\"}", None),
        ];
        for (n, (line, owner)) in (0u64..).zip(lines) {
            let by_turn = usize::try_from((n / block) % peers as u64).unwrap();
            let want = vec![owner.unwrap_or(by_turn)];
            assert_eq!(owners(&mut routers, n, line), want, "line {n}");
            // The same once remembered.
            assert_eq!(owners(&mut routers, n, line), want, "line {n} again");
        }
        assert_eq!(owners(&mut routers, 40, b"not json"), vec![(40 / 2) % 3]);
        assert_eq!(
            leading_device_id(br#"{"device_id":"D1a","ts":1}"#),
            Some(&b"D1a"[..])
        );
        assert_eq!(leading_device_id(br#"{"device_id":"D1a"#), None);
    }
}
