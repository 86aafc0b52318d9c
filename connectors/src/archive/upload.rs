//! The uploader thread: takes finished Parquet files from the worker through a queue bounded
//! in bytes and puts each into the object store as one object, so the worker never waits on
//! storage I/O (a slow fsync, a slow S3) unless [`QUEUE_BYTES`] of files are already waiting
//! (back-pressure).

use std::sync::mpsc::{Receiver, Sender, channel};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutPayload, WriteMultipart};
use tokio::runtime::Runtime;

use super::rows::Dataset;
use super::{ArchiveError, ArchiveStats};

/// Encoded bytes that may wait for the uploader; a full queue blocks the worker. Bounds the
/// memory of encoded-but-unwritten files per writer (one larger file may always wait alone).
/// A replay of many days writes hundreds of small hourly files, so the bound is in bytes:
/// a count of files would make the worker wait on every fsync.
pub(super) const QUEUE_BYTES: u64 = 64 << 20;

/// Attempts per file before it is reported as failed.
const MAX_ATTEMPTS: u32 = 4;

/// Wait before the first retry; doubled after each failed attempt.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// One complete Parquet file to publish.
pub(super) struct Upload {
    /// Object key under the store's root.
    pub(super) path: Path,
    /// The whole encoded file.
    pub(super) bytes: Bytes,
    /// Dataset, for the row counters.
    pub(super) dataset: Dataset,
    /// Rows in the file.
    pub(super) rows: u64,
}

/// A file that could not be published after every retry.
pub(super) struct Failure {
    /// Object key.
    pub(super) path: String,
    /// Attempts made.
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

/// Bytes queued for the uploader, and a signal when some are published.
#[derive(Default)]
struct Queued {
    bytes: Mutex<u64>,
    published: Condvar,
}

impl Queued {
    /// Waits until `size` more bytes fit (or nothing is queued), then counts them.
    fn reserve(&self, size: u64) {
        let mut bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        while *bytes > 0 && *bytes + size > QUEUE_BYTES {
            bytes = self
                .published
                .wait(bytes)
                .unwrap_or_else(PoisonError::into_inner);
        }
        *bytes += size;
    }

    /// Releases `size` bytes after their file was published (or given up on).
    fn release(&self, size: u64) {
        let mut bytes = self.bytes.lock().unwrap_or_else(PoisonError::into_inner);
        *bytes = bytes.saturating_sub(size);
        self.published.notify_all();
    }
}

/// Handle to the uploader thread. Dropping it closes the queue and waits for queued files.
pub(super) struct Uploader {
    /// The queue; `None` once closed.
    tx: Option<Sender<Upload>>,
    /// Bytes in the queue.
    queued: Arc<Queued>,
    /// The thread; `None` once joined.
    thread: Option<JoinHandle<Report>>,
}

impl Uploader {
    /// Starts the uploader thread `name` with its own current-thread tokio runtime.
    /// Files above `part_bytes` go up as multipart uploads in parts of that size.
    pub(super) fn spawn(
        store: Arc<dyn ObjectStore>,
        part_bytes: usize,
        name: String,
    ) -> Result<Self, ArchiveError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(ArchiveError::Thread)?;
        let (tx, rx) = channel();
        let queued = Arc::new(Queued::default());
        let released = Arc::clone(&queued);
        let thread = thread::Builder::new()
            .name(name)
            .spawn(move || run(&runtime, store.as_ref(), part_bytes, &rx, &released))
            .map_err(ArchiveError::Thread)?;
        Ok(Self {
            tx: Some(tx),
            queued,
            thread: Some(thread),
        })
    }

    /// Queues a file; blocks while [`QUEUE_BYTES`] are already waiting.
    pub(super) fn send(&self, upload: Upload) -> Result<(), ArchiveError> {
        let tx = self.tx.as_ref().ok_or(ArchiveError::UploaderGone)?;
        self.queued.reserve(upload.bytes.len() as u64);
        tx.send(upload).map_err(|_| ArchiveError::UploaderGone)
    }

    /// Closes the queue, waits until every queued file is published or failed, and returns
    /// what happened.
    pub(super) fn finish(&mut self) -> Result<Report, ArchiveError> {
        self.tx = None;
        let thread = self.thread.take().ok_or(ArchiveError::UploaderGone)?;
        thread.join().map_err(|_| ArchiveError::UploaderGone)
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(thread) = self.thread.take() {
            // Queued files are still published; a panic was already reported by the thread.
            let _ = thread.join();
        }
    }
}

/// The uploader thread's loop: publishes queued files until the queue is closed.
fn run(
    runtime: &Runtime,
    store: &dyn ObjectStore,
    part_bytes: usize,
    rx: &Receiver<Upload>,
    queued: &Queued,
) -> Report {
    let mut report = Report::default();
    for upload in rx {
        let size = upload.bytes.len() as u64;
        let published = put_with_retries(runtime, store, part_bytes, &upload);
        queued.release(size);
        match published {
            Ok(()) => {
                tracing::debug!(path = %upload.path, bytes = size, rows = upload.rows, "Archive file published.");
                metrics::counter!("lienwatch_archive_files_total", "dataset" => upload.dataset.dir())
                    .increment(1);
                metrics::counter!("lienwatch_archive_bytes_total", "dataset" => upload.dataset.dir())
                    .increment(size);
                metrics::counter!("lienwatch_archive_rows_total", "dataset" => upload.dataset.dir())
                    .increment(upload.rows);
                let stats = &mut report.stats;
                stats.files += 1;
                stats.bytes += size;
                match upload.dataset {
                    Dataset::Telemetry => stats.telemetry_rows += upload.rows,
                    Dataset::Alerts => stats.alert_rows += upload.rows,
                    Dataset::Rejects => stats.reject_rows += upload.rows,
                    Dataset::FeaturesDaily => stats.features_rows += upload.rows,
                }
            }
            Err((attempts, error)) => {
                tracing::error!(
                    path = %upload.path, rows = upload.rows, attempts, %error,
                    "Archive file could not be published; its rows are not archived."
                );
                metrics::counter!("lienwatch_archive_failed_files_total", "dataset" => upload.dataset.dir())
                    .increment(1);
                report.failures.push(Failure {
                    path: upload.path.to_string(),
                    attempts,
                    error,
                });
            }
        }
    }
    report
}

/// Uploads `upload` in parts of `part_bytes`, unless the key already exists.
async fn put_multipart(
    store: &dyn ObjectStore,
    part_bytes: usize,
    upload: &Upload,
) -> Result<(), object_store::Error> {
    match store.head(&upload.path).await {
        Ok(_) => {
            return Err(object_store::Error::AlreadyExists {
                path: upload.path.to_string(),
                source: "the object exists before its multipart upload".into(),
            });
        }
        Err(object_store::Error::NotFound { .. }) => {}
        Err(e) => return Err(e),
    }
    let parts = store.put_multipart(&upload.path).await?;
    let mut writer = WriteMultipart::new_with_chunk_size(parts, part_bytes);
    writer.put(upload.bytes.clone());
    writer.finish().await.map(drop)
}

/// Publishes one file with a single create-only `put`, retrying with exponential backoff.
///
/// `PutMode::Create` never replaces an existing object. On `LocalFileSystem` (object_store
/// 0.14.2, `local.rs` `put_opts`) the payload is written and fsynced to a staging file
/// `<key>#<n>` next to the destination, published with a hard link (a rename for
/// `Overwrite`), and the staging file is removed, also on error: the `.parquet` name appears
/// only once complete. A crash can leave a `#<n>` staging file behind, which `*.parquet` globs
/// do not match. On S3 a single PUT is atomic as well.
///
/// Files above `part_bytes` go up as a multipart upload, which S3 makes visible only on
/// completion; S3 has no create-only completion everywhere, so an existing object is checked
/// for first (keys carry a per-run token, so only a bug or a second writer could collide).
///
/// If a retry finds the object already there with our size, an earlier attempt published it
/// before failing (e.g. on the directory fsync), and that counts as success; an existing
/// object on the first attempt is an error, never overwritten.
fn put_with_retries(
    runtime: &Runtime,
    store: &dyn ObjectStore,
    part_bytes: usize,
    upload: &Upload,
) -> Result<(), (u32, object_store::Error)> {
    let mut backoff = FIRST_BACKOFF;
    let mut attempt = 1;
    loop {
        let result = if upload.bytes.len() > part_bytes {
            runtime.block_on(put_multipart(store, part_bytes, upload))
        } else {
            let payload = PutPayload::from_bytes(upload.bytes.clone());
            runtime
                .block_on(store.put_opts(&upload.path, payload, PutMode::Create.into()))
                .map(drop)
        };
        let error = match result {
            Ok(_) => return Ok(()),
            Err(error @ object_store::Error::AlreadyExists { .. }) if attempt == 1 => {
                return Err((attempt, error));
            }
            Err(error @ object_store::Error::AlreadyExists { .. }) => {
                let ours = runtime
                    .block_on(store.head(&upload.path))
                    .is_ok_and(|meta| meta.size == upload.bytes.len() as u64);
                if ours {
                    return Ok(());
                }
                return Err((attempt, error));
            }
            Err(error) => error,
        };
        if attempt >= MAX_ATTEMPTS {
            return Err((attempt, error));
        }
        tracing::warn!(path = %upload.path, attempt, %error, "Archive upload failed; retrying.");
        thread::sleep(backoff);
        backoff *= 2;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use object_store::memory::InMemory;

    fn upload(key: &str, body: &'static [u8]) -> Upload {
        Upload {
            path: Path::from(key),
            bytes: Bytes::from_static(body),
            dataset: Dataset::Alerts,
            rows: 3,
        }
    }

    #[test]
    fn publishes_and_counts_and_never_overwrites() {
        let store = Arc::new(InMemory::new());
        let mut uploader =
            Uploader::spawn(Arc::clone(&store) as _, 5 << 20, "test-upload".into()).unwrap();
        uploader.send(upload("alerts/a.parquet", b"first")).unwrap();
        uploader
            .send(upload("alerts/a.parquet", b"second"))
            .unwrap();
        let report = uploader.finish().unwrap();
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
        let big = |key: &str| Upload {
            path: Path::from(key),
            bytes: Bytes::from(body.clone()),
            dataset: Dataset::Telemetry,
            rows: 9,
        };
        let mut uploader =
            Uploader::spawn(Arc::clone(&store) as _, part, "test-multipart".into()).unwrap();
        uploader.send(big("telemetry/big.parquet")).unwrap();
        uploader.send(big("telemetry/big.parquet")).unwrap();
        let report = uploader.finish().unwrap();
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
        let queued = Arc::new(Queued::default());
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
}
