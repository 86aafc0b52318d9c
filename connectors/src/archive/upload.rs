//! The uploader thread: takes rolled partitions from the worker through a queue bounded in
//! bytes, encodes each (sorting and Parquet, see [`Encode`]) and puts it into the object store
//! as one object, so the worker neither encodes nor waits on storage I/O (a slow fsync, a
//! slow S3, an outage) unless the queue's bound of rows is already waiting (back-pressure).
//!
//! While the writer runs a failed put is retried with exponential backoff until it succeeds:
//! an outage of the store stalls the queue (and, once it is full, the worker) but loses
//! nothing. Only at shutdown ([`Uploader::finish`]) is there a bound, after which the files
//! still failing are reported. Files are published one at a time in queue order, so "the
//! first `n` files are published" is a counter ([`UploadProgress`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, WriteMultipart};
use tokio::runtime::Runtime;
use tokio::sync::Notify;

use super::rows::Dataset;
use super::{ArchiveError, ArchiveStats};

/// A failing file is logged at its first failed attempt and then at every this many attempts.
const LOG_EVERY: u32 = 10;

/// The nice value of the uploader threads of a live service. Encoding and uploading a file is
/// never urgent, but a checkpoint hands over every open partition at once: at the default
/// priority that encoding took 80–90 % of a core for ~0.5 s from the workers on a busy 2-core
/// machine, and live readings waited behind it (`benches/README.md`, "Checkpoints without a
/// stop").
const UPLOADER_NICE: i32 = 10;

/// Waits between the attempts of a failing put: `first`, doubled after each failure, at most
/// `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Backoff {
    /// Wait before the second attempt.
    pub(super) first: Duration,
    /// Longest wait.
    pub(super) max: Duration,
}

impl Backoff {
    /// 200 ms doubling up to 5 s: an outage of a minute costs about 15 attempts per stalled
    /// file, and a store that is back is tried again within 5 s.
    pub(super) const DEFAULT: Backoff = Backoff {
        first: Duration::from_millis(200),
        max: Duration::from_secs(5),
    };
}

/// Uploaders of this process whose current file is failing.
static FAILING: Mutex<usize> = Mutex::new(0);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Whether some archive upload of this process is failing right now (being retried, not yet
/// followed by a success): cheap, for a health check. Also exported as the gauge
/// `lienwatch_archive_degraded` (1 or 0).
pub fn degraded() -> bool {
    *lock(&FAILING) > 0
}

/// Makes a file's bytes from its rows, on the uploader thread: sorting and encoding a
/// checkpoint's worth of rows takes hundreds of milliseconds, which on the worker thread
/// would hold up every reading behind it.
pub(super) type Encode = Box<dyn FnOnce() -> Result<Bytes, ArchiveError> + Send>;

/// One file to publish.
pub(super) struct Upload {
    /// Object key under the store's root.
    pub(super) path: Path,
    /// Its bytes, once encoded.
    pub(super) encode: Encode,
    /// Size estimate of its rows, counted against the queue's bound while it waits.
    pub(super) queued_bytes: u64,
    /// Dataset, for the row counters.
    pub(super) dataset: Dataset,
    /// Rows in the file.
    pub(super) rows: u64,
}

/// A file that could not be published.
pub(super) struct Failure {
    /// Object key.
    pub(super) path: String,
    /// Attempts made (0: not tried, as the file could not be encoded or the store was already
    /// failing past the shutdown bound).
    pub(super) attempts: u32,
    /// The last error.
    pub(super) error: object_store::Error,
}

/// What the uploader thread did: counters of published files, and the files it gave up on.
#[derive(Default)]
pub(super) struct Report {
    /// Published files, bytes and rows.
    pub(super) stats: ArchiveStats,
    /// Files not published.
    pub(super) failures: Vec<Failure>,
}

/// Bytes of rolled rows (the writer's uncompressed size estimate) queued for the uploader, and
/// a signal when some are published.
///
/// Its bound is the writer's own budget for open partitions, so that a checkpoint, which
/// rolls them all, does not wait for their encoding; a full queue blocks the worker. It bounds
/// the memory of rolled-but-unwritten files per writer (one larger file may always wait
/// alone). A replay of many days writes hundreds of small hourly files, so the bound is in
/// bytes: a count of files would make the worker wait on every fsync.
struct Queued {
    /// The bound.
    limit: u64,
    bytes: Mutex<u64>,
    published: Condvar,
}

impl Queued {
    fn new(limit: u64) -> Self {
        Self {
            limit,
            bytes: Mutex::new(0),
            published: Condvar::new(),
        }
    }

    /// Waits until `size` more bytes fit (or nothing is queued), then counts them. A wait
    /// goes into `lienwatch_archive_wait_seconds`: the archive holding the dataflow back.
    fn reserve(&self, size: u64) {
        let mut bytes = lock(&self.bytes);
        let mut waiting = None;
        while *bytes > 0 && *bytes + size > self.limit {
            waiting.get_or_insert_with(Instant::now);
            bytes = self
                .published
                .wait(bytes)
                .unwrap_or_else(PoisonError::into_inner);
        }
        if let Some(since) = waiting {
            metrics::histogram!("lienwatch_archive_wait_seconds")
                .record(since.elapsed().as_secs_f64());
        }
        *bytes += size;
        metrics::gauge!("lienwatch_archive_queued_bytes").increment(size as f64);
    }

    /// Releases `size` bytes after their file was published (or given up on).
    fn release(&self, size: u64) {
        let mut bytes = lock(&self.bytes);
        let released = size.min(*bytes);
        *bytes -= released;
        metrics::gauge!("lienwatch_archive_queued_bytes").decrement(released as f64);
        self.published.notify_all();
    }
}

/// The uploader's progress through its queue, shared with [`UploadProgress`] handles.
struct Progress {
    /// Files taken from the queue and done with (published or given up on), in queue order.
    done: AtomicU64,
    /// Queue index of the first file given up on; `u64::MAX` if none.
    first_failed: AtomicU64,
    /// Failed put attempts so far.
    failed_attempts: AtomicU64,
    /// Whether the current file is failing (counted in [`FAILING`]).
    failing: AtomicBool,
    /// With `changed`: blocking waits for `done`.
    lock: Mutex<()>,
    changed: Condvar,
    /// Async waits for `done`.
    notify: Notify,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            done: AtomicU64::new(0),
            first_failed: AtomicU64::new(u64::MAX),
            failed_attempts: AtomicU64::new(0),
            failing: AtomicBool::new(false),
            lock: Mutex::new(()),
            changed: Condvar::new(),
            notify: Notify::new(),
        }
    }
}

impl Progress {
    /// Records that the next file in queue order is done with (`published` or given up on),
    /// and wakes the waiters.
    fn file_done(&self, published: bool) {
        let _guard = lock(&self.lock);
        let index = self.done.load(Ordering::Acquire);
        if !published {
            self.first_failed.fetch_min(index, Ordering::AcqRel);
        }
        self.done.store(index + 1, Ordering::Release);
        self.changed.notify_all();
        self.notify.notify_waiters();
    }

    /// Enters or leaves the failing state (process count and gauge included).
    fn set_failing(&self, failing: bool) {
        if self.failing.swap(failing, Ordering::AcqRel) == failing {
            return;
        }
        let mut count = lock(&FAILING);
        if failing {
            *count += 1;
        } else {
            *count = count.saturating_sub(1);
        }
        metrics::gauge!("lienwatch_archive_degraded").set(if *count > 0 { 1.0 } else { 0.0 });
    }
}

/// A cheap, cloneable handle on a writer's uploads (`Send + Sync`): which of the files queued
/// so far are published. Obtained from [`ArchiveWriter::progress`](super::ArchiveWriter::progress);
/// the marks come from [`ArchiveWriter::roll_all`](super::ArchiveWriter::roll_all) (the
/// number of files the writer had queued). It stays valid after the writer is finished or
/// dropped.
#[derive(Clone)]
pub struct UploadProgress(Arc<Progress>);

impl std::fmt::Debug for UploadProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UploadProgress")
            .field("done", &self.done())
            .field("failed", &self.failed())
            .field("degraded", &self.degraded())
            .finish()
    }
}

impl UploadProgress {
    /// Whether every file queued before `mark` is published (so `published(0)` is always
    /// true). False for good once one of them was given up on (see [`failed`](Self::failed)).
    pub fn published(&self, mark: u64) -> bool {
        self.0.done.load(Ordering::Acquire) >= mark
            && self.0.first_failed.load(Ordering::Acquire) >= mark
    }

    /// Files the uploader is done with (published or given up on), in queue order.
    pub fn done(&self) -> u64 {
        self.0.done.load(Ordering::Acquire)
    }

    /// Whether a file was given up on: while the writer runs only a file whose key already
    /// existed on its first attempt (never overwritten); at shutdown also files still failing
    /// at the bound. Its rows are not archived and no later mark is ever published.
    pub fn failed(&self) -> bool {
        self.0.first_failed.load(Ordering::Acquire) != u64::MAX
    }

    /// Whether this writer's current upload is failing (retried, not yet followed by a
    /// success).
    pub fn degraded(&self) -> bool {
        self.0.failing.load(Ordering::Acquire)
    }

    /// Failed put attempts so far (each one retried, or the last before giving up).
    pub fn failed_attempts(&self) -> u64 {
        self.0.failed_attempts.load(Ordering::Acquire)
    }

    /// Blocks until [`published(mark)`](Self::published), for at most `timeout`; returns
    /// whether it is. Returns false early once a file before the mark was given up on.
    /// Never call it on a timely worker thread: the worker drives the uploads.
    pub fn wait_published(&self, mark: u64, timeout: Duration) -> bool {
        let progress = &self.0;
        let deadline = Instant::now() + timeout;
        let mut guard = lock(&progress.lock);
        loop {
            if self.published(mark) {
                return true;
            }
            let now = Instant::now();
            if now >= deadline || progress.first_failed.load(Ordering::Acquire) < mark {
                return false;
            }
            guard = progress
                .changed
                .wait_timeout(guard, deadline - now)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Waits until [`published(mark)`](Self::published) and returns true, or returns false
    /// once a file before the mark was given up on. Wrap it in a timeout: if the store never
    /// comes back, neither does this.
    pub async fn until_published(&self, mark: u64) -> bool {
        loop {
            let changed = self.0.notify.notified();
            if self.published(mark) {
                return true;
            }
            if self.0.first_failed.load(Ordering::Acquire) < mark {
                return false;
            }
            changed.await;
        }
    }
}

/// When the uploader stops retrying: never, until the writer finishes.
#[derive(Default)]
struct Deadline {
    at: Mutex<Option<Instant>>,
    set: Condvar,
}

impl Deadline {
    /// Sets the deadline (an earlier one stays) and wakes a paused retry.
    fn set(&self, at: Instant) {
        let mut current = lock(&self.at);
        *current = Some(current.map_or(at, |c| c.min(at)));
        self.set.notify_all();
    }

    /// Whether the deadline is set and has passed.
    fn passed(&self) -> bool {
        lock(&self.at).is_some_and(|at| Instant::now() >= at)
    }

    /// Sleeps `wait`, or until the deadline if that comes first; a deadline set meanwhile
    /// ends the sleep (so the file gets one more attempt at once).
    fn pause(&self, wait: Duration) {
        let guard = lock(&self.at);
        match *guard {
            None => {
                let _woken = self
                    .set
                    .wait_timeout_while(guard, wait, |at| at.is_none())
                    .unwrap_or_else(PoisonError::into_inner);
            }
            Some(at) => {
                drop(guard);
                thread::sleep(wait.min(at.saturating_duration_since(Instant::now())));
            }
        }
    }
}

/// Handle to the uploader thread. Dropping it closes the queue and waits for queued files,
/// without retrying failures.
pub(super) struct Uploader {
    /// The queue; `None` once closed.
    tx: Option<Sender<Upload>>,
    /// Bytes in the queue.
    queued: Arc<Queued>,
    /// What the thread has done.
    progress: Arc<Progress>,
    /// When the thread stops retrying.
    deadline: Arc<Deadline>,
    /// The thread; `None` once joined.
    thread: Option<JoinHandle<Report>>,
}

impl Uploader {
    /// Starts the uploader thread `name` with its own current-thread tokio runtime, at
    /// [`UPLOADER_NICE`] if `yield_to_workers`.
    /// Files above `part_bytes` go up as multipart uploads in parts of that size; failed puts
    /// are retried after `backoff`; rows of at most `queue_bytes` (by the writer's estimate)
    /// wait in the queue.
    pub(super) fn spawn(
        store: Arc<dyn ObjectStore>,
        part_bytes: usize,
        queue_bytes: u64,
        name: String,
        backoff: Backoff,
        yield_to_workers: bool,
    ) -> Result<Self, ArchiveError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ArchiveError::Thread)?;
        {
            // The gauge shows from the start.
            let failing = lock(&FAILING);
            metrics::gauge!("lienwatch_archive_degraded").set(if *failing > 0 { 1.0 } else { 0.0 });
        }
        let (tx, rx) = channel();
        let queued = Arc::new(Queued::new(queue_bytes));
        let progress = Arc::new(Progress::default());
        let deadline = Arc::new(Deadline::default());
        let context = Context {
            runtime,
            store,
            part_bytes,
            backoff,
            queued: Arc::clone(&queued),
            progress: Arc::clone(&progress),
            deadline: Arc::clone(&deadline),
        };
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || {
                if yield_to_workers {
                    lower_priority();
                }
                context.run(&rx)
            })
            .map_err(ArchiveError::Thread)?;
        Ok(Self {
            tx: Some(tx),
            queued,
            progress,
            deadline,
            thread: Some(thread),
        })
    }

    /// Queues a file; blocks while the queue's bound is already waiting.
    pub(super) fn send(&self, upload: Upload) -> Result<(), ArchiveError> {
        let tx = self.tx.as_ref().ok_or(ArchiveError::UploaderGone)?;
        self.queued.reserve(upload.queued_bytes);
        tx.send(upload).map_err(|_| ArchiveError::UploaderGone)
    }

    /// A handle on the uploads' progress.
    pub(super) fn progress(&self) -> UploadProgress {
        UploadProgress(Arc::clone(&self.progress))
    }

    /// Closes the queue, waits until every queued file is published or failed, and returns
    /// what happened. Failing puts are retried for `timeout` from now; after that a file
    /// still failing is given up on, and so are the files after it without an attempt.
    pub(super) fn finish(&mut self, timeout: Duration) -> Result<Report, ArchiveError> {
        self.deadline.set(Instant::now() + timeout);
        self.tx = None;
        let thread = self.thread.take().ok_or(ArchiveError::UploaderGone)?;
        thread.join().map_err(|_| ArchiveError::UploaderGone)
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.deadline.set(Instant::now());
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            // Queued files are still published; a panic was already reported by the thread.
            let _ = thread.join();
        }
    }
}

/// What the uploader thread works with.
struct Context {
    runtime: Runtime,
    store: Arc<dyn ObjectStore>,
    part_bytes: usize,
    backoff: Backoff,
    queued: Arc<Queued>,
    progress: Arc<Progress>,
    deadline: Arc<Deadline>,
}

impl Context {
    /// The uploader thread's loop: publishes queued files until the queue is closed.
    fn run(&self, rx: &Receiver<Upload>) -> Report {
        let mut report = Report::default();
        // A file failed past the shutdown deadline: the files after it are not tried.
        let mut abandoned = false;
        for upload in rx {
            let Upload {
                path,
                encode,
                queued_bytes,
                dataset,
                rows,
            } = upload;
            let not_attempted = |source: Box<dyn std::error::Error + Send + Sync>| {
                Err((
                    0,
                    object_store::Error::Generic {
                        store: "archive",
                        source,
                    },
                ))
            };
            let published = if abandoned {
                not_attempted("not attempted: the store was failing at the shutdown bound".into())
            } else {
                match encode() {
                    Ok(bytes) => self.put_with_retries(&path, &bytes).map(|()| bytes.len()),
                    Err(error) => not_attempted(Box::new(error)),
                }
            };
            self.queued.release(queued_bytes);
            match published {
                Ok(size) => {
                    let size = size as u64;
                    self.progress.set_failing(false);
                    self.progress.file_done(true);
                    tracing::debug!(path = %path, bytes = size, rows, "Archive file published.");
                    metrics::counter!("lienwatch_archive_files_total", "dataset" => dataset.dir())
                        .increment(1);
                    metrics::counter!("lienwatch_archive_bytes_total", "dataset" => dataset.dir())
                        .increment(size);
                    metrics::counter!("lienwatch_archive_rows_total", "dataset" => dataset.dir())
                        .increment(rows);
                    let stats = &mut report.stats;
                    stats.files += 1;
                    stats.bytes += size;
                    match dataset {
                        Dataset::Telemetry => stats.telemetry_rows += rows,
                        Dataset::Alerts => stats.alert_rows += rows,
                        Dataset::Rejects => stats.reject_rows += rows,
                        Dataset::FeaturesDaily => stats.features_rows += rows,
                    }
                }
                Err((attempts, error)) => {
                    abandoned |= self.deadline.passed();
                    self.progress.file_done(false);
                    tracing::error!(
                        path = %path, rows, attempts, %error,
                        "Archive file could not be published; its rows are not archived."
                    );
                    metrics::counter!("lienwatch_archive_failed_files_total", "dataset" => dataset.dir())
                        .increment(1);
                    report.failures.push(Failure {
                        path: path.to_string(),
                        attempts,
                        error,
                    });
                }
            }
        }
        self.progress.set_failing(false);
        report
    }

    /// One attempt at publishing `bytes` at `path`: a create-only put, or a multipart upload
    /// for a file above `part_bytes`.
    fn attempt(&self, path: &Path, bytes: &Bytes) -> Result<(), object_store::Error> {
        let store = self.store.as_ref();
        if bytes.len() > self.part_bytes {
            self.runtime
                .block_on(put_multipart(store, self.part_bytes, path, bytes))
        } else {
            let payload = PutPayload::from_bytes(bytes.clone());
            self.runtime
                .block_on(store.put_opts(path, payload, PutMode::Create.into()))
                .map(drop)
        }
    }

    /// Publishes one file, retrying failures with exponential backoff until it succeeds or,
    /// once the writer finishes, until the shutdown deadline.
    ///
    /// `PutMode::Create` never replaces an existing object. On `LocalFileSystem` (object_store
    /// 0.14.2, `local.rs` `put_opts`) the payload is written and fsynced to a staging file
    /// `<key>#<n>` next to the destination, published with a hard link (a rename for
    /// `Overwrite`), and the staging file is removed, also on error: the `.parquet` name
    /// appears only once complete. A crash can leave a `#<n>` staging file behind, which
    /// `*.parquet` globs do not match. On S3 a single PUT is atomic as well.
    ///
    /// Files above `part_bytes` go up as a multipart upload, which S3 makes visible only on
    /// completion; S3 has no create-only completion everywhere, so an existing object is
    /// checked for first (keys carry a per-run token, so only a bug or a second writer could
    /// collide).
    ///
    /// If a retry finds the object already there with our size, an earlier attempt published
    /// it before failing (e.g. on the directory fsync, or a lost response), and that counts as
    /// success; an existing object on the first attempt is an error, never overwritten, and
    /// not retried.
    ///
    /// The first failure of a file is logged, then every [`LOG_EVERY`]th; every failed
    /// attempt counts in `lienwatch_archive_upload_failures_total` and puts the uploader in
    /// the failing state ([`degraded`]) until a file is published.
    fn put_with_retries(
        &self,
        path: &Path,
        bytes: &Bytes,
    ) -> Result<(), (u32, object_store::Error)> {
        let mut wait = self.backoff.first;
        let mut attempt = 1;
        loop {
            let error = match self.attempt(path, bytes) {
                Ok(()) => {
                    if attempt > 1 {
                        tracing::info!(path = %path, attempts = attempt, "Archive file published after failed attempts.");
                    }
                    return Ok(());
                }
                Err(error @ object_store::Error::AlreadyExists { .. }) if attempt == 1 => {
                    return Err((attempt, error));
                }
                Err(error @ object_store::Error::AlreadyExists { .. }) => {
                    match self.runtime.block_on(self.store.head(path)) {
                        Ok(meta) if meta.size == bytes.len() as u64 => {
                            tracing::info!(path = %path, attempts = attempt, "Archive file found published by an earlier attempt.");
                            return Ok(());
                        }
                        Ok(_) => return Err((attempt, error)),
                        // Not known whether it is ours: ask again on the next attempt.
                        Err(head_error) => head_error,
                    }
                }
                Err(error) => error,
            };
            metrics::counter!("lienwatch_archive_upload_failures_total").increment(1);
            self.progress.failed_attempts.fetch_add(1, Ordering::AcqRel);
            self.progress.set_failing(true);
            if self.deadline.passed() {
                return Err((attempt, error));
            }
            if attempt == 1 || attempt.is_multiple_of(LOG_EVERY) {
                tracing::warn!(
                    path = %path, attempt, retry_in_ms = wait.as_millis() as u64, %error,
                    "Archive upload failed; retrying until it succeeds (logged every {LOG_EVERY} attempts)."
                );
            }
            self.deadline.pause(wait);
            wait = (wait * 2).min(self.backoff.max);
            attempt += 1;
        }
    }
}

/// Uploads `upload` in parts of `part_bytes`, unless the key already exists.
async fn put_multipart(
    store: &dyn ObjectStore,
    part_bytes: usize,
    path: &Path,
    bytes: &Bytes,
) -> Result<(), object_store::Error> {
    match store.head(path).await {
        Ok(_) => {
            return Err(object_store::Error::AlreadyExists {
                path: path.to_string(),
                source: "the object exists before its multipart upload".into(),
            });
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    let parts = store.put_multipart(path).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(parts, part_bytes);
    writer.put(bytes.clone());
    writer.finish().await.map(drop)
}

/// Runs the calling thread at [`UPLOADER_NICE`]: on Linux a thread id names that thread alone.
fn lower_priority() {
    let thread = rustix::thread::gettid();
    if let Err(error) = rustix::process::setpriority_process(Some(thread), UPLOADER_NICE) {
        tracing::warn!(%error, "archive uploader keeps the default priority");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::local::LocalFileSystem;
    use object_store::memory::InMemory;

    /// The queue bound of the tests (a writer's default budget).
    const QUEUE: u64 = 256 << 20;

    /// Retries within milliseconds, so tests see many attempts quickly.
    const FAST: Backoff = Backoff {
        first: Duration::from_millis(2),
        max: Duration::from_millis(20),
    };

    /// Polls `done` every 2 ms for up to 20 s.
    fn eventually(what: &str, done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "timed out: {what}"
            );
            thread::sleep(Duration::from_millis(2));
        }
    }

    /// An uploader on a local directory whose `alerts` dataset cannot be written: a plain
    /// file stands where its directory must go, until the test removes it.
    fn blocked_store() -> (tempfile::TempDir, Uploader) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("alerts"), b"").unwrap();
        let store = LocalFileSystem::new_with_prefix(dir.path()).unwrap();
        let uploader = Uploader::spawn(
            Arc::new(store),
            5 << 20,
            QUEUE,
            "test-blocked".into(),
            FAST,
            false,
        )
        .unwrap();
        (dir, uploader)
    }

    #[test]
    fn keeps_retrying_until_the_store_is_back_and_marks_follow_queue_order() {
        let (dir, mut uploader) = blocked_store();
        let progress = uploader.progress();
        assert!(progress.published(0));
        uploader.send(upload("telemetry/a.parquet", b"a")).unwrap();
        uploader.send(upload("alerts/b.parquet", b"bb")).unwrap();
        uploader
            .send(upload("telemetry/c.parquet", b"ccc"))
            .unwrap();
        // Far more attempts than a bounded retry would make, and still going.
        eventually("failed attempts", || progress.failed_attempts() >= 12);
        assert!(progress.published(1), "the file before the failing one");
        assert!(!progress.published(2) && !progress.published(3));
        assert_eq!(progress.done(), 1);
        assert!(progress.degraded() && degraded());
        assert!(!progress.failed());
        assert!(!progress.wait_published(3, Duration::from_millis(30)));

        // The store comes back: the stalled file and the one queued behind it go up.
        let waiter = {
            let progress = progress.clone();
            thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .build()
                    .unwrap();
                runtime.block_on(progress.until_published(3))
            })
        };
        std::fs::remove_file(dir.path().join("alerts")).unwrap();
        assert!(progress.wait_published(3, Duration::from_secs(20)));
        assert!(waiter.join().unwrap(), "the async wait sees it too");
        assert!(!progress.degraded());
        let report = uploader.finish(Duration::from_secs(5)).unwrap();
        assert!(report.failures.is_empty());
        assert_eq!((report.stats.files, report.stats.bytes), (3, 6));
        assert_eq!(
            std::fs::read(dir.path().join("alerts/b.parquet")).unwrap(),
            b"bb"
        );
    }

    #[test]
    fn finish_gives_up_at_its_bound_and_skips_the_rest() {
        let (_dir, mut uploader) = blocked_store();
        let progress = uploader.progress();
        uploader.send(upload("alerts/a.parquet", b"a")).unwrap();
        uploader.send(upload("alerts/b.parquet", b"b")).unwrap();
        eventually("failed attempts", || progress.failed_attempts() >= 3);
        let start = Instant::now();
        let report = uploader.finish(Duration::from_millis(200)).unwrap();
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(150), "{took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_eq!(report.stats.files, 0);
        assert_eq!(report.failures.len(), 2);
        assert!(report.failures[0].attempts > 3);
        assert_eq!(report.failures[1].attempts, 0, "not tried after the bound");
        assert!(progress.failed() && !progress.published(1));
        assert!(!progress.wait_published(2, Duration::from_secs(1)));
        assert!(!progress.degraded(), "nothing is being retried any more");
    }

    /// An uploader thread `name` onto a new in-memory store, and its progress.
    fn in_memory(name: &str) -> (Arc<InMemory>, Uploader, UploadProgress) {
        let store = Arc::new(InMemory::new());
        let uploader = Uploader::spawn(
            Arc::clone(&store) as _,
            5 << 20,
            QUEUE,
            name.into(),
            FAST,
            false,
        )
        .unwrap();
        let progress = uploader.progress();
        (store, uploader, progress)
    }

    #[test]
    fn a_key_that_exists_on_the_first_attempt_is_given_up_at_once() {
        let (_store, mut uploader, progress) = in_memory("test-exists");
        uploader.send(upload("alerts/a.parquet", b"a")).unwrap();
        uploader.send(upload("alerts/a.parquet", b"a")).unwrap();
        uploader.send(upload("alerts/c.parquet", b"c")).unwrap();
        assert!(!progress.wait_published(3, Duration::from_secs(10)));
        eventually("all done", || progress.done() == 3);
        assert!(progress.published(1) && !progress.published(2) && progress.failed());
        assert_eq!(progress.failed_attempts(), 0, "not retried");
        let report = uploader.finish(Duration::from_secs(1)).unwrap();
        assert_eq!(report.stats.files, 2);
    }

    #[test]
    fn a_file_that_cannot_be_encoded_is_given_up_and_the_next_ones_published() {
        let (store, mut uploader, progress) = in_memory("test-encode");
        uploader.send(upload("alerts/a.parquet", b"a")).unwrap();
        uploader
            .send(Upload {
                encode: Box::new(|| Err(ArchiveError::UploaderGone)),
                ..upload("alerts/b.parquet", b"b")
            })
            .unwrap();
        uploader.send(upload("alerts/c.parquet", b"c")).unwrap();
        eventually("all done", || progress.done() == 3);
        assert!(progress.published(1) && !progress.published(2) && progress.failed());
        let report = uploader.finish(Duration::from_secs(1)).unwrap();
        assert_eq!(report.stats.files, 2);
        assert_eq!(report.failures.len(), 1);
        assert_eq!(
            (
                report.failures[0].path.as_str(),
                report.failures[0].attempts
            ),
            ("alerts/b.parquet", 0)
        );
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let exists = |key: &str| runtime.block_on(store.head(&Path::from(key))).is_ok();
        assert!(
            exists("alerts/a.parquet") && !exists("alerts/b.parquet") && exists("alerts/c.parquet")
        );
    }

    fn upload(key: &str, body: &'static [u8]) -> Upload {
        Upload {
            path: Path::from(key),
            encode: Box::new(move || Ok(Bytes::from_static(body))),
            queued_bytes: body.len() as u64,
            dataset: Dataset::Alerts,
            rows: 3,
        }
    }

    #[test]
    fn publishes_and_counts_and_never_overwrites() {
        let (store, mut uploader, _progress) = in_memory("test-upload");
        uploader.send(upload("alerts/a.parquet", b"first")).unwrap();
        uploader
            .send(upload("alerts/a.parquet", b"second"))
            .unwrap();
        let report = uploader.finish(Duration::from_secs(5)).unwrap();
        assert_eq!(report.stats.files, 1);
        assert_eq!(report.stats.bytes, 5);
        assert_eq!(report.stats.alert_rows, 3);
        assert_eq!(report.failures.len(), 1);
        assert_eq!(report.failures[0].attempts, 1);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = runtime.block_on(async {
            store
                .get(&Path::from("alerts/a.parquet"))
                .await
                .unwrap()
                .bytes()
                .await
                .unwrap()
        });
        assert_eq!(&got[..], b"first");
    }

    #[test]
    fn large_files_go_up_in_parts_and_never_overwrite() {
        let store = Arc::new(InMemory::new());
        let part = 5 << 20;
        let body: Vec<u8> = (0..part * 2 + 17).map(|i| (i % 251) as u8).collect();
        let big = |key: &str| {
            let bytes = Bytes::from(body.clone());
            Upload {
                path: Path::from(key),
                queued_bytes: bytes.len() as u64,
                encode: Box::new(move || Ok(bytes)),
                dataset: Dataset::Telemetry,
                rows: 9,
            }
        };
        let mut uploader = Uploader::spawn(
            Arc::clone(&store) as _,
            part,
            QUEUE,
            "test-multipart".into(),
            FAST,
            false,
        )
        .unwrap();
        uploader.send(big("telemetry/big.parquet")).unwrap();
        uploader.send(big("telemetry/big.parquet")).unwrap();
        let report = uploader.finish(Duration::from_secs(5)).unwrap();
        assert_eq!(report.stats.files, 1);
        assert_eq!(report.stats.telemetry_rows, 9);
        assert_eq!(report.failures.len(), 1);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let got = runtime.block_on(async {
            let object = store
                .get(&Path::from("telemetry/big.parquet"))
                .await
                .unwrap();
            object.bytes().await.unwrap()
        });
        assert_eq!(got.len(), body.len());
        assert!(got[..] == body[..]);
    }

    #[test]
    fn queue_admits_by_bytes_and_waits_for_releases() {
        const QUEUE_BYTES: u64 = 256 << 20;
        let queued = Arc::new(Queued::new(QUEUE_BYTES));
        queued.reserve(QUEUE_BYTES + 10);
        assert_eq!(
            *queued.bytes.lock().unwrap(),
            QUEUE_BYTES + 10,
            "one big file waits alone"
        );
        let waiter = {
            let queued = Arc::clone(&queued);
            std::thread::spawn(move || queued.reserve(5))
        };
        queued.release(QUEUE_BYTES + 10);
        waiter.join().unwrap();
        assert_eq!(*queued.bytes.lock().unwrap(), 5);
        queued.reserve(QUEUE_BYTES - 5);
        assert_eq!(*queued.bytes.lock().unwrap(), QUEUE_BYTES);
    }

    /// The value of gauge `lienwatch_archive_queued_bytes`, as a recorder sees it.
    #[derive(Default)]
    struct QueuedGauge(Mutex<f64>);

    impl metrics::GaugeFn for QueuedGauge {
        fn increment(&self, value: f64) {
            *lock(&self.0) += value;
        }
        fn decrement(&self, value: f64) {
            *lock(&self.0) -= value;
        }
        fn set(&self, value: f64) {
            *lock(&self.0) = value;
        }
    }

    #[derive(Default)]
    struct GaugeRecorder(Arc<QueuedGauge>);

    impl metrics::Recorder for GaugeRecorder {
        fn describe_counter(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_gauge(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn describe_histogram(
            &self,
            _: metrics::KeyName,
            _: Option<metrics::Unit>,
            _: metrics::SharedString,
        ) {
        }
        fn register_counter(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Counter {
            metrics::Counter::noop()
        }
        fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
            assert_eq!(key.name(), "lienwatch_archive_queued_bytes");
            metrics::Gauge::from_arc(Arc::clone(&self.0))
        }
        fn register_histogram(
            &self,
            _: &metrics::Key,
            _: &metrics::Metadata<'_>,
        ) -> metrics::Histogram {
            metrics::Histogram::noop()
        }
    }

    #[test]
    fn the_queued_bytes_gauge_follows_the_queue() {
        let recorder = GaugeRecorder::default();
        let queued = Queued::new(1 << 20);
        let gauge = || *lock(&recorder.0.0);
        metrics::with_local_recorder(&recorder, || {
            queued.reserve(300);
            queued.reserve(200);
            assert_eq!(gauge(), 500.0);
            queued.release(300);
            assert_eq!(gauge(), 200.0);
            // More released than queued leaves both at 0 (the queue saturates).
            queued.release(250);
        });
        assert_eq!(gauge(), 0.0);
        assert_eq!(*lock(&queued.bytes), 0);
    }

    /// The nice value of this process's thread named `name` (Linux `/proc`).
    fn nice_of(name: &str) -> Option<i64> {
        std::fs::read_dir("/proc/self/task").ok()?.find_map(|task| {
            let dir = task.ok()?.path();
            let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
            if comm.trim_end() != name {
                return None;
            }
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            // Fields after the parenthesised name: state is field 3, nice field 19.
            let rest = &stat[stat.rfind(')')? + 2..];
            rest.split(' ').nth(16)?.parse().ok()
        })
    }

    #[test]
    fn only_a_yielding_uploader_runs_below_the_workers() {
        let spawn = |name: &str, yield_to_workers| {
            Uploader::spawn(
                Arc::new(InMemory::new()),
                5 << 20,
                QUEUE,
                name.into(),
                FAST,
                yield_to_workers,
            )
            .unwrap()
        };
        let yielding = spawn("test-yielding", true);
        let pacing = spawn("test-pacing", false);
        let own = nice_of(
            std::fs::read_to_string("/proc/self/comm")
                .unwrap()
                .trim_end(),
        );
        eventually("the yielding thread lowered its priority", || {
            nice_of("test-yielding").is_some_and(|n| n >= i64::from(UPLOADER_NICE))
        });
        // A new thread names itself once it runs: wait for it before reading its priority.
        eventually("the pacing thread is named", || {
            nice_of("test-pacing").is_some()
        });
        assert_eq!(nice_of("test-pacing"), own);
        drop((yielding, pacing));
    }
}
