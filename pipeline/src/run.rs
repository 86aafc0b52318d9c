//! `lienwatch run`: the service (SPEC §7). MQTT in, the same dataflow as `replay`, alerts and
//! daily features to Kafka (and their JSON Lines files, if configured), history to the Parquet
//! archive, Prometheus metrics and a health check over HTTP.
//!
//! ```text
//!  MQTT ─▶ poll task ─▶ channel per worker ─▶ LiveSource ─▶ RunFleet ─▶ Sinks ─▶ Kafka, archive
//!  (tokio)                                    (timely workers, epochs of wall-clock time)
//! ```
//!
//! Shutdown (SIGTERM, Ctrl-C, or the caller's stop signal): MQTT intake stops, the workers
//! drain their channels, the fleet flushes, the archive publishes its last files, the last
//! acks go to the broker, Kafka confirms every alert and features row; then `serve` returns.
//!
//! With `[durability]` (the default) a message is acknowledged once it is in the journal on
//! local disk, state is checkpointed to the archive's object store, and a start after a crash
//! restores the newest complete checkpoint and replays the journal from it (see
//! [`crate::checkpoint`]).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use timely::container::CapacityContainerBuilder;
use timely::dataflow::Scope;
use timely::dataflow::operators::generic::OutputBuilder;
use timely::dataflow::operators::generic::builder_rc::OperatorBuilder;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use connectors::checkpoints::CheckpointStore;
use connectors::journal::{Journal, JournalConfig};
use connectors::mqtt::Durable;
use connectors::{Inlet, KafkaProducer, Message, MqttSource, WorkerInlet};
use operators::fleet::IDLE_DEVICE;
use operators::reference::ReferenceSlot;

use crate::checkpoint::{Checkpointer, Restored};
use crate::config::Config;
use crate::dataflow::{
    AlertPrinter, EpochBatch, ErrorSlot, OutputSinks, Source, SourceSetup, Streams,
    WorkerDurability, WorkerEvents, WorkerReport, run_worker,
};
use crate::replay::{Summary, load_reference, merge, open_jsonl};

/// Messages a source takes from its channel per activation, so one busy source cannot starve
/// the other operators.
const MESSAGES_PER_ACTIVATION: usize = 4096;

/// How long a shutdown waits for the MQTT session to send its last acks and close.
const MQTT_CLOSE_TIMEOUT: Duration = Duration::from_secs(30);

/// A future that resolves when the service should stop.
pub type StopSignal = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What `serve` needs besides the config.
#[derive(Default)]
pub struct ServeOptions {
    /// Stops the service when it resolves (besides SIGTERM and Ctrl-C).
    pub stop: Option<StopSignal>,
    /// Shows every alert as it is emitted (the demo's terminal view).
    pub printer: Option<AlertPrinter>,
    /// Called once the service is up, with the address of its HTTP endpoint (if any).
    pub on_ready: Option<Box<dyn FnOnce(Option<std::net::SocketAddr>) + Send>>,
    /// Counts the messages that entered the dataflow.
    pub ingested: Option<Arc<AtomicU64>>,
}

/// The process-wide Prometheus recorder (installed once, shared by every `serve`).
fn prometheus() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            120.0, 300.0,
        ])
        .context("histogram buckets")?
        .build_recorder();
    let handle = recorder.handle();
    // A second caller racing here keeps the first recorder; both get its handle.
    if metrics::set_global_recorder(recorder).is_ok() {
        let _ = HANDLE.set(handle);
    }
    HANDLE
        .get()
        .cloned()
        .ok_or_else(|| anyhow!("another metrics recorder is installed"))
}

/// What `/health` reports.
struct Health {
    mqtt_connected: Arc<AtomicBool>,
    journal_full: Arc<AtomicBool>,
    stopping: AtomicBool,
    kafka: Option<KafkaProducer>,
    checkpointer: Option<Arc<Checkpointer>>,
}

impl Health {
    /// `(status code, body)`: 200 when everything works, 503 while any part is degraded
    /// (the service keeps running and catches up by itself).
    fn report(&self) -> (u16, String) {
        let journal_full = self.journal_full.load(Ordering::Acquire);
        // While intake waits on a full journal the session is not read: it may be dead
        // without our knowing, so it is not reported as connected.
        let mqtt = self.mqtt_connected.load(Ordering::Acquire) && !journal_full;
        let stopping = self.stopping.load(Ordering::Acquire);
        let in_flight = self.kafka.as_ref().map_or(0, KafkaProducer::in_flight);
        let kafka_degraded = self.kafka.as_ref().is_some_and(KafkaProducer::degraded);
        let archive_degraded = connectors::archive::degraded();
        let checkpoint_overdue_s = self.checkpointer.as_ref().and_then(|c| c.overdue_s());
        let healthy = mqtt
            && !kafka_degraded
            && !archive_degraded
            && !journal_full
            && checkpoint_overdue_s.is_none();
        let status = if stopping {
            "stopping"
        } else if healthy {
            "ok"
        } else {
            "degraded"
        };
        let body = serde_json::json!({
            "status": status,
            "mqtt_connected": mqtt,
            "kafka_in_flight": in_flight,
            "kafka_degraded": kafka_degraded,
            "archive_degraded": archive_degraded,
            "journal_full": journal_full,
            "checkpoint_overdue_s": checkpoint_overdue_s,
        });
        let code = if status == "ok" { 200 } else { 503 };
        (code, body.to_string())
    }
}

/// Serves `/metrics` and `/health` until the runtime stops.
async fn http_server(listener: TcpListener, metrics: PrometheusHandle, health: Arc<Health>) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // E.g. out of file descriptors: wait instead of spinning.
                tracing::warn!(error = %e, "HTTP accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        let health = Arc::clone(&health);
        tokio::spawn(async move {
            let Ok(Some(path)) =
                tokio::time::timeout(Duration::from_secs(5), read_request_path(&mut stream)).await
            else {
                return;
            };
            let (code, content_type, body) = match path.as_str() {
                "/metrics" => {
                    metrics.run_upkeep();
                    (200, "text/plain; version=0.0.4", metrics.render())
                }
                "/health" => {
                    let (code, body) = health.report();
                    (code, "application/json", body)
                }
                _ => (
                    404,
                    "text/plain",
                    "not found: try /metrics or /health\n".into(),
                ),
            };
            let reason = match code {
                200 => "OK",
                503 => "Service Unavailable",
                _ => "Not Found",
            };
            let response = format!(
                "HTTP/1.1 {code} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

/// Reads a request's head (up to 8 KiB, to its blank line) and returns the path.
async fn read_request_path(stream: &mut tokio::net::TcpStream) -> Option<String> {
    let mut head = Vec::with_capacity(1024);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
        let n = stream.read(&mut buf).await.ok()?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    let line = String::from_utf8_lossy(&head);
    line.split_whitespace().nth(1).map(str::to_owned)
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT).
async fn termination() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("Ctrl-C: shutting down"),
    }
}

/// Runs the service until a stop signal; returns what it did.
pub fn serve(config: &Config, options: ServeOptions) -> anyhow::Result<Summary> {
    let (registry, fences) = load_reference(config)?;
    let reference = ReferenceSlot::new(Arc::new(registry), Arc::new(fences));
    let metrics = prometheus()?;
    let workers = config.pipeline.workers;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("lienwatch-io")
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let kafka = if config.kafka.enabled {
        let settings = &config.kafka;
        let producer = runtime
            .block_on(KafkaProducer::connect(settings, runtime.handle().clone()))
            .with_context(|| format!("Kafka at {}", settings.brokers))?;
        tracing::info!(
            brokers = %settings.brokers,
            alerts_topic = %settings.alerts_topic,
            features_topic = %settings.features_topic,
            "Kafka sink ready"
        );
        Some(producer)
    } else {
        None
    };
    // What can fail at start fails before any message is taken.
    if config.archive.enabled {
        connectors::archive::check_store(&config.archive.connector())
            .with_context(|| format!("archive at {}", config.archive.url))?;
    }
    let output_sinks = OutputSinks {
        alerts_log: open_jsonl(config.alerts.jsonl_path.as_deref(), "alerts")?,
        features_log: open_jsonl(config.features.jsonl_path.as_deref(), "features")?,
        kafka: kafka.clone(),
        printer: options.printer,
    };
    let mut mqtt_settings = config.mqtt.clone();
    let processes = config.pipeline.hosts.len().max(1);
    let process = config.pipeline.process;
    if processes > 1 {
        // Each process is its own MQTT client within the shared group.
        mqtt_settings.client_id = format!("{}-{process}", mqtt_settings.client_id);
    }
    let recovery = if config.durability.enabled {
        Some(recover(config, &runtime, kafka.clone())?)
    } else {
        None
    };
    let (durable, recovery) = match recovery {
        Some((durable, recovery)) => (Some(durable), Some(recovery)),
        None => (None, None),
    };
    let (mqtt, inlets) = MqttSource::start(
        &mqtt_settings,
        workers,
        config.pipeline.epoch_ms,
        runtime.handle(),
        durable,
    )
    .with_context(|| format!("MQTT source at {}", mqtt_settings.url))?;
    let resume_epoch = mqtt.start_epoch();
    let replayed = mqtt.replayed();
    let open_mqtt = mqtt.opener();
    let health = Arc::new(Health {
        mqtt_connected: mqtt.connected(),
        journal_full: mqtt.journal_full(),
        stopping: AtomicBool::new(false),
        kafka: kafka.clone(),
        checkpointer: recovery.as_ref().map(|r| Arc::clone(&r.checkpointer)),
    });
    let http_addr = if config.http.enabled {
        let listener = runtime
            .block_on(TcpListener::bind(&config.http.listen))
            .with_context(|| format!("http.listen {}", config.http.listen))?;
        let addr = listener.local_addr()?;
        runtime.spawn(http_server(listener, metrics, Arc::clone(&health)));
        tracing::info!(%addr, "serving /metrics and /health");
        Some(addr)
    } else {
        None
    };
    crate::reload::spawn(&runtime, Arc::new(config.clone()), reference.clone());
    let sinks = output_sinks.clone();
    let stop = options.stop;
    let health_for_stop = Arc::clone(&health);
    // Set when the workers end by themselves (a worker failed): the service stops too.
    let halt = Arc::new(tokio::sync::Notify::new());
    let halted = Arc::clone(&halt);
    let events = ServiceEvents {
        built: AtomicUsize::new(0),
        workers,
        open_mqtt: Box::new(open_mqtt),
        halt: Arc::clone(&halt),
    };
    let stopped = runtime.spawn(async move {
        let requested = async {
            match stop {
                Some(stop) => stop.await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = requested => tracing::info!("stop requested"),
            () = termination() => {}
            () = halted.notified() => tracing::error!("the dataflow stopped; shutting down"),
        }
        health_for_stop.stopping.store(true, Ordering::Release);
        mqtt.shutdown().await;
    });
    tracing::info!(
        workers,
        process,
        processes,
        mqtt = %mqtt_settings.url,
        topics = ?mqtt_settings.topics,
        archive = if config.archive.enabled { config.archive.url.as_str() } else { "off" },
        "lienwatch running"
    );
    if let Some(ready) = options.on_ready {
        let subscribed = Arc::clone(&health.mqtt_connected);
        runtime.spawn(async move {
            while !subscribed.load(Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ready(http_addr);
        });
    }
    let started = Instant::now();
    let inlets: Arc<Mutex<Vec<Option<WorkerInlet>>>> =
        Arc::new(Mutex::new(inlets.into_iter().map(Some).collect()));
    let config_arc = Arc::new(config.clone());
    let ingested = options.ingested.unwrap_or_default();
    let timely_config = if processes > 1 {
        timely::Config {
            communication: timely::CommunicationConfig::Cluster {
                threads: workers,
                process,
                addresses: config.pipeline.hosts.clone(),
                report: false,
                zerocopy: false,
            },
            worker: timely::WorkerConfig::default(),
        }
    } else {
        timely::Config::process(workers)
    };
    let events = Arc::new(events);
    let guards = timely::execute(timely_config, move |worker| {
        // Worker indexes are global; this process's inlets are numbered from 0.
        let local = worker.index() - process * workers;
        let inlet = inlets.lock().unwrap_or_else(PoisonError::into_inner)[local]
            .take()
            .ok_or_else(|| "worker inlet taken twice".to_owned())?;
        let source = LiveSource {
            inlet,
            epoch_ms: config_arc.pipeline.epoch_ms,
            idle_after_ms: i64::try_from(
                config_arc.pipeline.idle_clock_after_s.saturating_mul(1000),
            )
            .unwrap_or(i64::MAX),
            ingested: Arc::clone(&ingested),
        };
        let durability = recovery.as_ref().map(|r| WorkerDurability {
            checkpointer: &r.checkpointer,
            restored: r.restored.as_ref(),
            resume_epoch,
        });
        run_worker(
            worker,
            &config_arc,
            &reference,
            sinks.clone(),
            source,
            &*events,
            durability,
        )
    })
    .map_err(|e| anyhow!("starting workers: {e}"))?;
    let mut summary = Summary {
        workers,
        ..Summary::default()
    };
    let mut failure = None;
    for result in guards.join() {
        match result.map_err(|e| anyhow!("worker failed: {e}")) {
            Ok(Ok(report)) => merge(&mut summary, report),
            Ok(Err(e)) => failure = failure.or(Some(anyhow!(e))),
            Err(e) => failure = failure.or(Some(e)),
        }
    }
    // The workers are done: the session closes once their last acks went out.
    halt.notify_one();
    let closed =
        runtime.block_on(async { tokio::time::timeout(MQTT_CLOSE_TIMEOUT, stopped).await });
    match closed {
        Ok(joined) => joined.context("the shutdown task failed")?,
        // Unacknowledged messages stay with the broker, which redelivers them.
        Err(_) => tracing::warn!(
            "the MQTT session did not close within {} s; leaving it",
            MQTT_CLOSE_TIMEOUT.as_secs()
        ),
    }
    output_sinks.flush()?;
    if let Some(kafka) = &kafka {
        let timeout = Duration::from_secs(config.pipeline.shutdown_timeout_s);
        let drained =
            runtime.block_on(async { tokio::time::timeout(timeout, kafka.drain()).await });
        if drained.is_err() {
            failure = failure.or(Some(anyhow!(
                "{} messages (alerts and features) not confirmed by Kafka after {} s",
                kafka.in_flight(),
                timeout.as_secs()
            )));
        }
    }
    summary.replayed = replayed.load(Ordering::Acquire);
    summary.elapsed_s = started.elapsed().as_secs_f64();
    summary.messages_per_s = summary.messages as f64 / summary.elapsed_s.max(1e-9);
    runtime.shutdown_timeout(Duration::from_secs(1));
    match failure {
        Some(e) => Err(e),
        None => Ok(summary),
    }
}

/// What the workers of a durable service share: the checkpointer and the restored state.
struct Recovery {
    checkpointer: Arc<Checkpointer>,
    restored: Option<Restored>,
}

/// Opens the journal and the checkpoint store, restores the newest complete checkpoint and
/// deletes the archive files its replay writes again; returns the MQTT source's journal
/// settings and what the workers need.
fn recover(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
    kafka: Option<KafkaProducer>,
) -> anyhow::Result<(Durable, Recovery)> {
    let settings = &config.durability;
    let archive = config.archive.connector();
    let store = CheckpointStore::open(&archive)
        .with_context(|| format!("checkpoint store at {}", config.archive.url))?;
    let restored = runtime
        .block_on(crate::checkpoint::restore(&store, config))
        .with_context(|| format!("restoring from {}/_checkpoints", config.archive.url))?;
    let dir = settings
        .journal_dir
        .join(format!("p{}", config.pipeline.process));
    let journal = Journal::open(JournalConfig {
        dir: dir.clone(),
        segment_bytes: settings.journal_segment_bytes,
    })
    .with_context(|| format!("journal at {}", dir.display()))?;
    claim_journal(&dir, config)?;
    // Replay from the checkpoint; without one, the whole journal (it was never pruned).
    let replay_from_epoch = match &restored {
        Some(r) => Some(r.epoch),
        None => journal
            .read_from_epoch(0)
            .context("reading the journal")?
            .next()
            .transpose()
            .context("reading the journal")?
            .map(|first| first.epoch),
    };
    if let Some(from) = replay_from_epoch {
        if config.archive.enabled {
            let deleted = connectors::archive::discard_from_epoch(&archive, from)
                .with_context(|| format!("deleting archive files from epoch {from} on"))?;
            tracing::info!(
                files = deleted.len(),
                from_epoch = from,
                "archive files the journal replay writes again deleted"
            );
        }
        tracing::info!(
            checkpoint = restored.as_ref().map(|r| r.epoch),
            from_epoch = from,
            journal_bytes = journal.bytes(),
            "recovering: restoring state and replaying the journal"
        );
    }
    let committed = Arc::new(AtomicU64::new(restored.as_ref().map_or(0, |r| r.epoch)));
    let checkpointer = Checkpointer::new(
        config,
        store,
        runtime.handle().clone(),
        kafka,
        Arc::clone(&committed),
    );
    Ok((
        Durable {
            journal,
            replay_from_epoch,
            fsync_interval: Duration::from_millis(settings.fsync_interval_ms),
            max_bytes: settings.journal_max_bytes,
            committed,
        },
        Recovery {
            checkpointer,
            restored,
        },
    ))
}

/// Whose journal a directory holds: replaying another deployment's journal into this one's
/// archive would be silent corruption.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct JournalOwner {
    archive_url: String,
    mqtt_client_id: String,
}

/// Records the deployment in a new journal directory, or checks it is this one.
fn claim_journal(dir: &std::path::Path, config: &Config) -> anyhow::Result<()> {
    let path = dir.join("owner.json");
    let mine = JournalOwner {
        archive_url: config.archive.url.clone(),
        mqtt_client_id: config.mqtt.client_id.clone(),
    };
    match std::fs::read(&path) {
        Ok(bytes) => {
            let owner: JournalOwner = serde_json::from_slice(&bytes)
                .with_context(|| format!("reading {}", path.display()))?;
            anyhow::ensure!(
                owner == mine,
                "the journal in {} belongs to archive {:?} and MQTT client {:?}, not to this \
                 config's archive {:?} and client {:?}: point durability.journal_dir elsewhere, \
                 or move the directory away if that deployment is gone",
                dir.display(),
                owner.archive_url,
                owner.mqtt_client_id,
                mine.archive_url,
                mine.mqtt_client_id
            );
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let json = serde_json::to_vec_pretty(&mine)?;
            std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

/// Connects MQTT once every worker of this process has built its dataflow; stops the service
/// when a worker fails.
struct ServiceEvents {
    built: AtomicUsize,
    workers: usize,
    open_mqtt: Box<dyn Fn() + Send + Sync>,
    halt: Arc<tokio::sync::Notify>,
}

impl WorkerEvents for ServiceEvents {
    fn built(&self) {
        if self.built.fetch_add(1, Ordering::AcqRel) + 1 == self.workers {
            (self.open_mqtt)();
        }
    }

    fn failed(&self) {
        self.halt.notify_one();
    }
}

/// A worker's MQTT inlet.
struct LiveSource {
    inlet: WorkerInlet,
    /// Ingest epoch length.
    epoch_ms: u64,
    /// Silence after which the clock follows the wall clock.
    idle_after_ms: i64,
    /// Messages taken, over all workers.
    ingested: Arc<AtomicU64>,
}

impl Source for LiveSource {
    fn live(&self) -> bool {
        true
    }

    /// Decodes this worker's messages: records, rejects, and one sample of event times per
    /// epoch for the pipeline clock. Each message goes out at the epoch of its receipt; an
    /// epoch closes once the MQTT source has sealed it and this worker has taken all its
    /// messages (see `connectors::mqtt`).
    fn build<'scope>(
        self,
        scope: Scope<'scope, u64>,
        mut setup: SourceSetup,
        report: Rc<RefCell<WorkerReport>>,
        _error: ErrorSlot,
    ) -> Streams<'scope> {
        let LiveSource {
            mut inlet,
            epoch_ms,
            idle_after_ms,
            ingested,
        } = self;
        let mut builder = OperatorBuilder::new("MqttSource".to_owned(), scope);
        let info = builder.operator_info();
        let activator = scope.activator_for(Rc::clone(&info.address));
        let waker = scope.worker().sync_activator_for(info.address.to_vec());
        inlet.set_waker(Box::new(move || {
            // Fails only once the worker is gone, when there is nothing left to wake.
            let _ = waker.activate();
        }));
        let (records_out, records) = builder.new_output();
        let (rejects_out, rejects) = builder.new_output();
        let (samples_out, samples) = builder.new_output();
        let mut records_out =
            OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(records_out);
        let mut rejects_out =
            OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(rejects_out);
        let mut samples_out =
            OutputBuilder::<_, CapacityContainerBuilder<Vec<_>>>::from(samples_out);
        let messages_in = metrics::counter!("lienwatch_messages_total");
        let readings_in = metrics::counter!("lienwatch_readings_total");
        builder.build(move |capabilities| {
            let mut capabilities = Some(capabilities);
            // The epoch the open batch belongs to.
            let mut current = 0u64;
            let mut open = EpochBatch::default();
            let mut messages: Vec<Message> = Vec::new();
            move |_frontiers| {
                let Some(caps) = capabilities.as_mut() else {
                    return;
                };
                let sealed = inlet.sealed();
                messages.clear();
                let state = inlet.poll(MESSAGES_PER_ACTIVATION, &mut messages);
                let mut records_h = records_out.activate();
                let mut rejects_h = rejects_out.activate();
                let mut samples_h = samples_out.activate();
                // Sends the batch's records and rejects at epoch `at`, and its clock sample
                // too once the epoch is done.
                let mut flush = |at: u64, open: &mut EpochBatch, done: bool| {
                    if !open.records.is_empty() {
                        records_h
                            .session(&caps[0].delayed(&at))
                            .give_container(&mut open.records);
                    }
                    if !open.rejects.is_empty() {
                        rejects_h
                            .session(&caps[1].delayed(&at))
                            .give_container(&mut open.rejects);
                    }
                    if done && !open.top.is_empty() {
                        samples_h
                            .session(&caps[2].delayed(&at))
                            .give(open.top.take());
                    }
                };
                let mut report = report.borrow_mut();
                let mut readings = 0u64;
                setup.refresh();
                for message in &messages {
                    // Epochs never decrease, and none is before the capabilities' time.
                    let epoch = message.epoch.max(*caps[0].time());
                    if epoch > current {
                        flush(current, &mut open, true);
                        current = epoch;
                    }
                    report.messages += 1;
                    readings += open.decode(
                        &message.payload,
                        message.device_id.as_deref(),
                        message.received_at_ms,
                        message.seq,
                        &setup,
                    );
                }
                report.readings += readings;
                messages_in.increment(messages.len() as u64);
                readings_in.increment(readings);
                ingested.fetch_add(messages.len() as u64, Ordering::AcqRel);
                // What may still come: nothing before `sealed` once the channel was drained,
                // nothing before the last message taken otherwise.
                let open_from = match state {
                    Inlet::Closed => None,
                    Inlet::Drained => Some(sealed.max(current)),
                    Inlet::More => Some(current),
                };
                // Records go out now; the clock sample once the epoch is done.
                flush(current, &mut open, open_from.is_none_or(|t| t > current));
                // Heard nothing for long: the closing epochs' wall time may move the clock.
                if let (Some(t), Some(silent)) = (open_from, inlet.silent_ms()) {
                    let closing_ms = (t.saturating_sub(*caps[2].time())).saturating_mul(epoch_ms);
                    let advance = (closing_ms as i64).min(silent - idle_after_ms);
                    if advance > 0 {
                        samples_h
                            .session(&caps[2])
                            .give(vec![(advance, IDLE_DEVICE)]);
                    }
                }
                match open_from {
                    None => capabilities = None,
                    Some(t) => {
                        for cap in caps.iter_mut() {
                            if t > *cap.time() {
                                cap.downgrade(&t);
                            }
                        }
                        if state == Inlet::More {
                            activator.activate();
                        }
                    }
                }
            }
        });
        (records, rejects, samples)
    }
}
