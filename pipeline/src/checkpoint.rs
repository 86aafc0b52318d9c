//! Checkpoints and recovery of `lienwatch run` (the `[durability]` section).
//!
//! Every `checkpoint_interval_s` the keyed operators of every worker reach a checkpoint
//! epoch `b` (see [`Barrier`]): their state then covers exactly the messages of epochs `< b`.
//! The fleet's state is encoded a share after each later epoch, over half an interval
//! (`Fleet::begin_snapshot`: a vehicle about to change is encoded first), so a large state
//! neither stops the worker nor takes its CPU all at once.
//! Each worker hands over three parts: its fleet state and its share of the VIN index
//! (stored under `_checkpoints/` in the archive's object store) and its sink's (every archive
//! file of epochs `< b` published, every Kafka message sent before confirmed). When a
//! process has all its parts it writes its marker; when every process's marker is there the
//! checkpoint is complete, and the journal drops the segments before `b`.
//!
//! At start, [`restore`] finds the newest complete checkpoint, deletes the archive files
//! written from its epoch on (the replay writes their rows again) and hands each worker its
//! state; the MQTT source then replays the journal from that epoch before it connects.
//! Checkpoints taken with a different number of workers or processes are re-sharded: each
//! worker keeps the vehicles and VINs the exchange routes to it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context;
use bytes::Bytes;
use connectors::KafkaProducer;
use connectors::archive::UploadProgress;
use connectors::checkpoints::{CheckpointStore, Marker};
use operators::dataflow::{Barrier, Checkpoints, id_key};
use operators::fences::FenceIndex;
use operators::fleet::{FinishedSnapshot, Fleet};
use operators::registry::Registry;
use operators::snapshot::SnapshotBytes;
use operators::vin_index::VinIndex;
use schemas::time::now_ms;

use crate::config::Config;

/// Parts per worker: fleet, VIN index, sink.
const PARTS_PER_WORKER: usize = 3;

/// How often a waiting sink part looks at the archive and Kafka confirmations.
const CONFIRM_POLL: Duration = Duration::from_millis(20);

/// First wait before retrying a failed store operation; doubled up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Collects the parts of every checkpoint of this process and commits it.
pub(crate) struct Checkpointer {
    store: CheckpointStore,
    runtime: tokio::runtime::Handle,
    kafka: Option<KafkaProducer>,
    process: usize,
    processes: usize,
    workers: usize,
    every_epochs: u64,
    epoch_ms: u64,
    kept: usize,
    /// Parts stored or confirmed, per checkpoint epoch.
    parts: Mutex<BTreeMap<u64, usize>>,
    /// The newest checkpoint epoch a part was offered for: older unfinished checkpoints stop
    /// retrying (the newer one covers them).
    newest: AtomicU64,
    /// The newest complete checkpoint (every process): the journal may drop what is before.
    committed: Arc<AtomicU64>,
    /// Wall-clock time of the last completed checkpoint (or of the start), epoch ms.
    last_complete_ms: AtomicU64,
}

impl Checkpointer {
    /// The coordinator of `config`'s process; `committed` receives every complete checkpoint.
    pub(crate) fn new(
        config: &Config,
        store: CheckpointStore,
        runtime: tokio::runtime::Handle,
        kafka: Option<KafkaProducer>,
        committed: Arc<AtomicU64>,
    ) -> Arc<Self> {
        let epoch_ms = config.pipeline.epoch_ms.max(1);
        Arc::new(Self {
            store,
            runtime,
            kafka,
            process: config.pipeline.process,
            processes: config.pipeline.hosts.len().max(1),
            workers: config.pipeline.workers,
            every_epochs: (config.durability.checkpoint_interval_s * 1000 / epoch_ms).max(1),
            epoch_ms,
            kept: config.durability.checkpoints_kept.max(1),
            parts: Mutex::default(),
            newest: AtomicU64::new(0),
            committed,
            last_complete_ms: AtomicU64::new(now_ms().max(0) as u64),
        })
    }

    /// Seconds since the last complete checkpoint (or the start), if that is more than three
    /// intervals: `/health` reports the service degraded then.
    pub(crate) fn overdue_s(&self) -> Option<u64> {
        let age_ms =
            (now_ms().max(0) as u64).saturating_sub(self.last_complete_ms.load(Ordering::Acquire));
        let interval_ms = self.every_epochs * self.epoch_ms;
        (age_ms > 3 * interval_ms).then_some(age_ms / 1000)
    }

    /// The checkpoint epochs after `after_epoch`.
    pub(crate) fn barrier(&self, after_epoch: u64) -> Barrier {
        Barrier::new(self.every_epochs, after_epoch)
    }

    /// The hooks of worker `worker` (global index) for its keyed operators.
    pub(crate) fn hooks(self: &Arc<Self>, worker: usize, after_epoch: u64) -> Checkpoints {
        let fleet_to = Arc::clone(self);
        let vins_to = Arc::clone(self);
        Checkpoints {
            barrier: self.barrier(after_epoch),
            fleet: Box::new(move |snapshot: FinishedSnapshot, longest_pause| {
                record_pause(longest_pause);
                let epoch = snapshot.epoch;
                match snapshot.bytes {
                    Ok(bytes) => fleet_to.state_part(worker, epoch, "fleet", bytes),
                    Err(e) => {
                        tracing::error!(error = %e, epoch, "fleet state not serializable; checkpoint skipped")
                    }
                }
            }),
            // Half an interval: the CPU it takes is spread thin, and it is done well before
            // the next checkpoint.
            fleet_spread_epochs: (self.every_epochs / 2).max(1),
            vins: Box::new(
                move |epoch, index: &VinIndex| match paused(|| index.snapshot()) {
                    Ok(bytes) => vins_to.state_part(worker, epoch, "vins", bytes),
                    Err(e) => {
                        tracing::error!(error = %e, epoch, "VIN index not serializable; checkpoint skipped")
                    }
                },
            ),
        }
    }

    /// Records that a part of checkpoint `epoch` is being made.
    fn offer(&self, epoch: u64) {
        self.newest.fetch_max(epoch, Ordering::AcqRel);
    }

    fn superseded(&self, epoch: u64) -> bool {
        self.newest.load(Ordering::Acquire) > epoch
    }

    /// Stores a worker's state part in the background, retrying until stored or superseded.
    fn state_part(
        self: &Arc<Self>,
        worker: usize,
        epoch: u64,
        part: &'static str,
        bytes: SnapshotBytes,
    ) {
        self.offer(epoch);
        metrics::counter!("lienwatch_checkpoint_bytes_total").increment(bytes.len() as u64);
        let this = Arc::clone(self);
        let pieces: Vec<Bytes> = bytes.into_pieces().into_iter().map(Bytes::from).collect();
        self.runtime.spawn(async move {
            let stored = this
                .retry(epoch, part, || {
                    this.store
                        .put_part(epoch, this.process, worker, part, &pieces)
                })
                .await;
            if stored {
                this.part_done(epoch).await;
            }
        });
    }

    /// The sink of worker `worker` reached checkpoint `epoch`: every archive file up to
    /// `archive`'s mark is queued, every Kafka message is sent. The part is done once they
    /// are published and confirmed.
    pub(crate) fn sink_part(self: &Arc<Self>, epoch: u64, archive: Option<(UploadProgress, u64)>) {
        self.offer(epoch);
        let kafka = self.kafka.as_ref().map(|k| (k.clone(), k.mark()));
        let this = Arc::clone(self);
        self.runtime.spawn(async move {
            loop {
                if this.superseded(epoch) {
                    return;
                }
                if let Some((progress, _)) = archive.as_ref().filter(|(p, _)| p.failed()) {
                    // No later mark is ever published: no checkpoint completes, the journal
                    // keeps everything, /health reports the overdue checkpoint.
                    tracing::error!(
                        epoch,
                        attempts = progress.failed_attempts(),
                        "an archive file was given up on; checkpoints cannot complete until a restart"
                    );
                    return;
                }
                let archived = archive.as_ref().is_none_or(|(p, mark)| p.published(*mark));
                let delivered = kafka.as_ref().is_none_or(|(k, mark)| k.confirmed(*mark));
                if archived && delivered {
                    break;
                }
                tokio::time::sleep(CONFIRM_POLL).await;
            }
            this.part_done(epoch).await;
        });
    }

    /// Runs a store operation until it succeeds (true) or its checkpoint is superseded.
    async fn retry<F, Fut>(&self, epoch: u64, what: &str, mut op: F) -> bool
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<(), connectors::checkpoints::CheckpointError>>,
    {
        let mut backoff = FIRST_BACKOFF;
        let mut attempt = 1u32;
        loop {
            match op().await {
                Ok(()) => return true,
                Err(error) => {
                    metrics::counter!("lienwatch_checkpoint_failures_total").increment(1);
                    if attempt == 1 || attempt.is_multiple_of(10) {
                        tracing::warn!(%error, epoch, what, attempt, "checkpoint store failed; retrying");
                    }
                }
            }
            if self.superseded(epoch) {
                return false;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            attempt += 1;
        }
    }

    /// Counts a finished part; the last one commits the process's share.
    async fn part_done(self: Arc<Self>, epoch: u64) {
        let complete = {
            let mut parts = self.parts.lock().unwrap_or_else(PoisonError::into_inner);
            let done = parts.entry(epoch).or_default();
            *done += 1;
            let complete = *done == self.workers * PARTS_PER_WORKER;
            if complete {
                // Older checkpoints that never completed never will.
                parts.retain(|e, _| *e > epoch);
            }
            complete
        };
        if complete {
            self.commit(epoch).await;
        }
    }

    /// Writes this process's marker; once every process's is there, the checkpoint is
    /// complete: the journal may drop what is before it, and older checkpoints go.
    async fn commit(&self, epoch: u64) {
        let marker = Marker {
            epoch,
            process: self.process,
            processes: self.processes,
            workers: self.workers,
            written_ms: now_ms(),
        };
        if !self
            .retry(epoch, "marker", || self.store.put_marker(&marker))
            .await
        {
            return;
        }
        // Other processes commit their shares at about the same time.
        let mut backoff = CONFIRM_POLL;
        loop {
            match self.store.complete(epoch, self.processes).await {
                Ok(Some(_)) => break,
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, epoch, "checkpoint markers not readable"),
            }
            if self.superseded(epoch) {
                return;
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
        self.committed.fetch_max(epoch, Ordering::AcqRel);
        self.last_complete_ms
            .store(now_ms().max(0) as u64, Ordering::Release);
        metrics::counter!("lienwatch_checkpoints_total").increment(1);
        metrics::gauge!("lienwatch_checkpoint_epoch").set(epoch as f64);
        let lag_s = (now_ms() - (epoch * self.epoch_ms) as i64).max(0) as f64 / 1000.0;
        metrics::histogram!("lienwatch_checkpoint_seconds").record(lag_s);
        tracing::debug!(epoch, lag_s, "checkpoint complete");
        if self.process == 0 {
            self.delete_older(epoch).await;
        }
    }

    /// Keeps the `kept` newest complete checkpoints up to `epoch` and deletes every older
    /// one, complete or not.
    async fn delete_older(&self, epoch: u64) {
        let epochs = match self.store.epochs().await {
            Ok(epochs) => epochs,
            Err(error) => {
                tracing::warn!(%error, "checkpoints not listable; old ones stay");
                return;
            }
        };
        let mut complete = 0;
        for old in epochs.into_iter().rev().filter(|e| *e <= epoch) {
            if complete < self.kept {
                if let Ok(Some(_)) = self.store.complete(old, self.processes).await {
                    complete += 1;
                }
                continue;
            }
            if let Err(error) = self.store.delete(old, self.processes).await {
                tracing::warn!(%error, epoch = old, "old checkpoint not deleted");
            }
        }
    }
}

/// Runs a worker's snapshot, recording how long the worker stood still for it.
fn paused<T>(snapshot: impl FnOnce() -> T) -> T {
    let started = std::time::Instant::now();
    let out = snapshot();
    record_pause(started.elapsed());
    out
}

/// Records how long a worker stood still at once for a snapshot.
fn record_pause(pause: Duration) {
    metrics::histogram!("lienwatch_checkpoint_pause_seconds").record(pause.as_secs_f64());
}

/// A complete checkpoint read back at start.
pub(crate) struct Restored {
    /// Its epoch.
    pub(crate) epoch: u64,
    /// Total workers when it was taken.
    peers: usize,
    /// Parts by (global worker, part name).
    parts: BTreeMap<(usize, &'static str), Bytes>,
}

impl Restored {
    /// Worker `worker`'s state among `peers` workers: its own part when the cluster has the
    /// same shape as when the checkpoint was taken, else its share of every part.
    pub(crate) fn worker_state(
        &self,
        worker: usize,
        peers: usize,
        config: &Config,
        registry: Arc<Registry>,
        fences: Arc<FenceIndex>,
    ) -> anyhow::Result<(Fleet, VinIndex)> {
        let parts_of = |name: &'static str| -> Vec<&[u8]> {
            self.parts
                .iter()
                .filter(|((w, part), _)| *part == name && (peers != self.peers || *w == worker))
                .map(|(_, bytes)| bytes.as_ref())
                .collect()
        };
        let owns = |id: &str| id_key(id) % peers as u64 == worker as u64;
        let fleet = Fleet::restore(
            config.rules.clone(),
            registry,
            fences,
            &parts_of("fleet"),
            owns,
        )
        .with_context(|| {
            format!(
                "restoring worker {worker}'s fleet from checkpoint {}",
                self.epoch
            )
        })?;
        let vins = VinIndex::restore(&parts_of("vins"), owns).with_context(|| {
            format!(
                "restoring worker {worker}'s VIN index from checkpoint {}",
                self.epoch
            )
        })?;
        Ok((fleet, vins))
    }
}

/// Finds the newest complete checkpoint of `config`'s cluster and reads the parts this
/// process needs; `None` when there is none.
pub(crate) async fn restore(
    store: &CheckpointStore,
    config: &Config,
) -> anyhow::Result<Option<Restored>> {
    let processes = config.pipeline.hosts.len().max(1);
    let Some((epoch, markers)) = store
        .latest_complete(processes)
        .await
        .context("looking for checkpoints")?
    else {
        return Ok(None);
    };
    let workers_then = markers.first().map_or(0, |m| m.workers);
    let processes_then = markers.first().map_or(0, |m| m.processes);
    let peers = workers_then * processes_then;
    let workers = config.pipeline.workers;
    let same_shape = peers == workers * processes && workers_then == workers;
    let mine = config.pipeline.process * workers..(config.pipeline.process + 1) * workers;
    let mut parts = BTreeMap::new();
    for process in 0..processes_then {
        for worker in process * workers_then..(process + 1) * workers_then {
            if same_shape && !mine.contains(&worker) {
                continue;
            }
            for part in ["fleet", "vins"] {
                let bytes = store
                    .get_part(epoch, process, worker, part)
                    .await
                    .with_context(|| format!("reading checkpoint {epoch}"))?;
                parts.insert((worker, part), bytes);
            }
        }
    }
    Ok(Some(Restored {
        epoch,
        peers: if same_shape {
            workers * processes
        } else {
            peers
        },
        parts,
    }))
}
