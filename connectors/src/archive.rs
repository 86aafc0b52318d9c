//! The Parquet archive sink (SPEC §6): `telemetry`, `alerts`, `rejects` and `features_daily`
//! as hive-partitioned, zstd-compressed, sorted Parquet files in an object store.
//!
//! One [`ArchiveWriter`] per timely worker, driven from the worker thread with a synchronous
//! API. Rows are appended to Arrow column builders per (dataset, partition) — a UTC date and
//! hour, or for `features_daily` the local date — and handed as one batch to an uploader thread
//! when a partition is rolled. That thread sorts and encodes the batch (so the worker, and the
//! readings behind it, do not wait on it) and publishes each file with a single create-only
//! `put`, so a file becomes visible only when complete.
//!
//! Object keys:
//! `<dataset>/date=YYYY-MM-DD/hour=HH/part-<process>-<worker>-<run>-e<epoch>-<seq>.parquet`,
//! and `features_daily/date=YYYY-MM-DD/part-<process>-<worker>-<run>-e<epoch>-<seq>.parquet`:
//! `process` and `worker` are the timely indices, `run` a token unique to the writer's open
//! (base 36 of its open time in ms), `epoch` the ingest epoch (decimal, from
//! [`ArchiveWriter::set_epoch`]) at which the file's partition received its first row, and
//! `seq` the writer's file number (6+ digits). Everything in a file was pushed at that epoch
//! or later, and before the next [`ArchiveWriter::roll_all`]. Files written by older versions
//! have no `e<epoch>` token (`part-<process>-<worker>-<run>-<seq>.parquet`).
//!
//! # Checkpoints
//!
//! At a checkpoint epoch `B` the sink calls [`ArchiveWriter::roll_all`] (no partition stays
//! open across `B`) and waits, off the worker thread, for its mark to be
//! [published](UploadProgress::published). A restart from `B` first removes the files of
//! epochs `>= B` with [`discard_from_epoch`], as their rows are replayed.

mod rows;
#[cfg(test)]
mod tests;
mod upload;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use arrow_array::RecordBatch;
use arrow_schema::{ArrowError, SchemaRef};
use arrow_select::take::take_record_batch;
use bytes::Bytes;
use object_store::RetryConfig;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::prefix::PrefixStore;
use object_store::{Certificate, ClientOptions, ObjectStore, ObjectStoreExt};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::SortingColumn;
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use schemas::{Alert, DailyFeatures, Record, Reject};

use rows::{AlertColumns, Columns, Dataset, FeaturesColumns, RejectColumns, TelemetryColumns};
use upload::{Backoff, Upload, Uploader};
pub use upload::{UploadProgress, degraded};

/// How long [`ArchiveWriter::finish`] keeps retrying failing uploads.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(30);

/// When the estimated bytes buffered over all partitions of a writer exceed this many times
/// `max_file_bytes`, the largest partition is rolled early. This bounds a writer's memory when
/// rows scatter over many hours (a replay of days of data) at the cost of smaller files.
const BUFFER_BUDGET_FILES: u64 = 2;

/// Settings of the archive sink (SPEC §6).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ArchiveConfig {
    /// Where the datasets go: a local directory (created if missing; `file://` prefix
    /// allowed) or `s3://bucket/prefix` on any S3-compatible store (see [`S3Options`]).
    pub root: String,
    /// How to reach an `s3://` root; unused for local directories.
    pub s3: S3Options,
    /// Files larger than this go up as multipart uploads in parts of this size; smaller ones
    /// in a single create-only put.
    pub multipart_part_bytes: usize,
    /// Roll a partition's file when its estimated uncompressed size reaches this many bytes.
    pub max_file_bytes: u64,
    /// Roll a partition's file when it has been open this many seconds (wall clock).
    pub max_file_age_s: u64,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd compression level (default 1: 2–16 % less worker CPU than 3 for ~1 % more bytes).
    pub zstd_level: i32,
    /// Run the uploader thread, which encodes and uploads the files, below the workers'
    /// priority, so that it never takes CPU they need (live, where latency counts). Off for
    /// a replay, which wants it at the workers' pace: behind them its queue fills and holds
    /// memory (a `-w 2` replay on 2 cores peaked at 1.2 GB instead of 0.4–0.5 GB).
    pub yield_to_workers: bool,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self {
            root: "./lienwatch-data".into(),
            s3: S3Options::default(),
            multipart_part_bytes: 16 << 20,
            max_file_bytes: 128 << 20,
            max_file_age_s: 300,
            row_group_rows: 128 << 10,
            zstd_level: 1,
            yield_to_workers: false,
        }
    }
}

/// How to reach an S3-compatible store. Credentials never appear here: they come from the
/// environment (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, or the
/// other variables `object_store`'s `AmazonS3Builder::from_env` reads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Options {
    /// Endpoint URL of a non-AWS store, e.g. `http://127.0.0.1:9000`; `None` = AWS. An
    /// `http://` endpoint allows plain HTTP.
    pub endpoint: Option<String>,
    /// Region; `None` = `AWS_REGION` / `AWS_DEFAULT_REGION`, else `us-east-1`.
    pub region: Option<String>,
    /// Path-style requests (`endpoint/bucket/key`), which most S3-compatible servers need.
    pub path_style: bool,
    /// PEM CA bundle trusted for an `https://` endpoint, besides the system's roots (a
    /// private CA).
    pub ca_file: Option<std::path::PathBuf>,
}

impl Default for S3Options {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: None,
            path_style: true,
            ca_file: None,
        }
    }
}

/// What an archive writer published.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArchiveStats {
    /// Files published.
    pub files: u64,
    /// Bytes published (encoded Parquet).
    pub bytes: u64,
    /// Rows in published `telemetry` files.
    pub telemetry_rows: u64,
    /// Rows in published `alerts` files.
    pub alert_rows: u64,
    /// Rows in published `rejects` files.
    pub reject_rows: u64,
    /// Rows in published `features_daily` files.
    pub features_rows: u64,
}

/// Errors of the archive sink.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// A configuration value is out of range.
    #[error("invalid archive config: {0}")]
    Config(String),
    /// The root names a store this build cannot open.
    #[error(
        "unsupported archive root {0:?}: expected a local directory, file://DIR or s3://BUCKET/PREFIX"
    )]
    UnsupportedRoot(String),
    /// The S3 CA file could not be read or holds no certificate.
    #[error("archive.s3_ca_file {path}: {message}")]
    CaFile {
        /// The file.
        path: std::path::PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The local root directory could not be created.
    #[error("cannot create archive root {path}: {source}")]
    CreateRoot {
        /// The directory.
        path: String,
        /// The cause.
        source: std::io::Error,
    },
    /// The object store could not be opened.
    #[error("cannot open archive store at {root}: {source}{hint}")]
    Store {
        /// The configured root.
        root: String,
        /// The cause.
        source: object_store::Error,
        /// What to check, if known.
        hint: &'static str,
    },
    /// The uploader thread or its runtime could not be started.
    #[error("cannot start the archive uploader: {0}")]
    Thread(std::io::Error),
    /// The uploader thread is gone (it panicked), so files can no longer be handed over.
    #[error("the archive uploader thread stopped")]
    UploaderGone,
    /// Rows could not be turned into an Arrow batch.
    #[error("cannot build the {dataset} batch: {source}")]
    Arrow {
        /// The dataset.
        dataset: &'static str,
        /// The cause.
        source: ArrowError,
    },
    /// A file could not be encoded.
    #[error("cannot encode {path}: {source}")]
    Parquet {
        /// The object key.
        path: String,
        /// The cause.
        source: ParquetError,
    },
    /// Files could not be published (each one was logged): still failing when the shutdown
    /// bound passed, or their key already existed.
    #[error(
        "{failed} archive file(s) not published; first {path} after {attempts} attempts: {source}"
    )]
    Upload {
        /// How many files failed.
        failed: usize,
        /// Key of the first failed file.
        path: String,
        /// Attempts made for it.
        attempts: u32,
        /// Its last error.
        source: object_store::Error,
    },
    /// Files of the epochs being discarded could not be listed or deleted.
    #[error("cannot discard archive files at {root}: {source}")]
    Discard {
        /// The configured root.
        root: String,
        /// The cause.
        source: object_store::Error,
    },
}

/// Opens the store for `root`: a local directory or an `s3://bucket/prefix` URL.
pub(crate) fn open_store(root: &str, s3: &S3Options) -> Result<Arc<dyn ObjectStore>, ArchiveError> {
    let dir = match root.split_once("://") {
        None => root,
        Some(("file", path)) => path,
        Some(("s3", rest)) => return open_s3(root, rest, s3),
        Some(_) => return Err(ArchiveError::UnsupportedRoot(root.into())),
    };
    std::fs::create_dir_all(dir).map_err(|source| ArchiveError::CreateRoot {
        path: dir.into(),
        source,
    })?;
    let store = LocalFileSystem::new_with_prefix(dir).map_err(|source| ArchiveError::Store {
        root: root.into(),
        source,
        hint: "",
    })?;
    // fsync file and directory before a put returns, as an object store would guarantee.
    Ok(Arc::new(store.with_fsync(true)))
}

/// Opens `s3://bucket/prefix` (`rest` = `bucket/prefix`) with credentials from the
/// environment; the prefix becomes the root of every key.
fn open_s3(root: &str, rest: &str, s3: &S3Options) -> Result<Arc<dyn ObjectStore>, ArchiveError> {
    open_s3_with(AmazonS3Builder::from_env(), root, rest, s3)
}

/// HTTP client options that trust the PEM CA bundle at `path` besides the system's roots.
fn client_options_trusting(path: &std::path::Path) -> Result<ClientOptions, ArchiveError> {
    let error = |message: String| ArchiveError::CaFile {
        path: path.to_owned(),
        message,
    };
    let pem = std::fs::read(path).map_err(|e| error(e.to_string()))?;
    let certificates = Certificate::from_pem_bundle(&pem).map_err(|e| error(e.to_string()))?;
    if certificates.is_empty() {
        return Err(error("no PEM certificate in it".into()));
    }
    Ok(certificates
        .into_iter()
        .fold(ClientOptions::new(), ClientOptions::with_root_certificate))
}

/// [`open_s3`] from `builder` (tests pass credentials in it: they cannot set the environment).
fn open_s3_with(
    builder: AmazonS3Builder,
    root: &str,
    rest: &str,
    s3: &S3Options,
) -> Result<Arc<dyn ObjectStore>, ArchiveError> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(ArchiveError::UnsupportedRoot(root.into()));
    }
    let mut builder = builder
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(!s3.path_style);
    if let Some(endpoint) = &s3.endpoint {
        builder = builder
            .with_allow_http(endpoint.starts_with("http://"))
            .with_endpoint(endpoint);
    }
    if let Some(path) = &s3.ca_file {
        builder = builder.with_client_options(client_options_trusting(path)?);
    }
    let region = s3
        .region
        .clone()
        .or_else(|| std::env::var("AWS_REGION").ok())
        .or_else(|| std::env::var("AWS_DEFAULT_REGION").ok())
        .unwrap_or_else(|| "us-east-1".into());
    // Few per-request retries within 10 s (the default is 10 over 3 min): a bad endpoint or
    // credentials fail the start-up probe in seconds, and one attempt of the uploader during
    // an outage ends within about a request timeout (30 s, connect 5 s), so it retries whole
    // files on its own backoff and notices a store that is back.
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: Duration::from_secs(10),
        ..RetryConfig::default()
    };
    let store = builder
        .with_retry(retry)
        .with_region(region)
        .build()
        .map_err(|source| ArchiveError::Store {
            root: root.into(),
            source,
            hint: "",
        })?;
    let prefix = prefix.trim_matches('/');
    let store: Arc<dyn ObjectStore> = if prefix.is_empty() {
        Arc::new(store)
    } else {
        Arc::new(PrefixStore::new(store, prefix))
    };
    probe(root, store.as_ref())?;
    Ok(store)
}

/// Asks the store for an object that does not exist, so a wrong endpoint, bucket or
/// credentials fail at start rather than at the first file.
fn probe(root: &str, store: &dyn ObjectStore) -> Result<(), ArchiveError> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ArchiveError::Thread)?;
    let key = Path::from("_lienwatch/probe");
    match runtime.block_on(store.head(&key)) {
        Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(source) => Err(ArchiveError::Store {
            root: root.into(),
            source,
            hint: if std::env::var_os("AWS_ACCESS_KEY_ID").is_none() {
                " (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are not set in the environment)"
            } else {
                ""
            },
        }),
    }
}

/// Opens the store of `config` as a writer would (creating a local root, probing an S3 one),
/// so a service can refuse to start before it takes any input.
pub fn check_store(config: &ArchiveConfig) -> Result<(), ArchiveError> {
    open_store(&config.root, &config.s3).map(drop)
}

/// The ingest epoch in an archive file's key (`...-e<epoch>-<seq>.parquet`, see the module
/// docs); `None` for keys of another form, among them files written before epochs were named.
fn file_epoch(key: &str) -> Option<u64> {
    let name = key.rsplit('/').next()?;
    let tokens = name.strip_prefix("part-")?.strip_suffix(".parquet")?;
    // process, worker, run, e<epoch>, seq
    let tokens: Vec<&str> = tokens.split('-').collect();
    let [_, _, _, epoch, _] = tokens[..] else {
        return None;
    };
    let digits = epoch.strip_prefix('e')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Deletes every archive file of an ingest epoch `>= epoch`, in all four datasets and from
/// every process, worker and run, and returns their keys (sorted). Files without an epoch in
/// their name (written by older versions) and other objects are never touched.
///
/// For a restart from the checkpoint of epoch `epoch`: those files hold rows that the restart
/// replays. Call it before any [`ArchiveWriter`] of the restarted service is open (it would
/// delete the new files of the replayed epochs too), once for the archive: in a cluster, in
/// one process before the others start writing (calls from several processes are harmless if
/// no writer is open yet: a key already deleted is skipped).
pub fn discard_from_epoch(config: &ArchiveConfig, epoch: u64) -> Result<Vec<String>, ArchiveError> {
    let store = open_store(&config.root, &config.s3)?;
    discard_in(store.as_ref(), epoch).map_err(|source| ArchiveError::Discard {
        root: config.root.clone(),
        source,
    })
}

/// [`discard_from_epoch`] on an open store.
fn discard_in(store: &dyn ObjectStore, epoch: u64) -> Result<Vec<String>, object_store::Error> {
    use futures::TryStreamExt;

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| object_store::Error::Generic {
            store: "archive",
            source: Box::new(e),
        })?;
    runtime.block_on(async {
        let mut doomed = Vec::new();
        for dataset in Dataset::ALL {
            let prefix = Path::from(dataset.dir());
            let listed: Vec<_> = store.list(Some(&prefix)).try_collect().await?;
            doomed.extend(
                listed
                    .into_iter()
                    .map(|meta| meta.location)
                    .filter(|key| file_epoch(key.as_ref()).is_some_and(|e| e >= epoch)),
            );
        }
        doomed.sort();
        let mut deleted = Vec::with_capacity(doomed.len());
        for key in doomed {
            match store.delete(&key).await {
                Ok(()) => deleted.push(key.to_string()),
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(deleted)
    })
}

/// The last run time handed out in this process: run tokens strictly increase, so two writers
/// opened in the same millisecond (same worker, e.g. a test or a re-opened sink) still differ.
static LAST_RUN_MS: AtomicI64 = AtomicI64::new(0);

/// A per-open token: the wall-clock open time in ms, bumped past any token already issued in
/// this process, in base 36. Names from an earlier run never collide with this run's; a
/// collision across processes would fail the create-only put rather than overwrite.
fn run_token(now_ms: i64) -> String {
    let step = |last: i64| Some(now_ms.max(last + 1));
    let last = LAST_RUN_MS
        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, step)
        .unwrap_or_else(|last| last);
    let mut n = u64::try_from(now_ms.max(last + 1)).unwrap_or(0);
    let mut digits = Vec::new();
    loop {
        digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.reverse();
    String::from_utf8(digits).expect("base-36 digits are ASCII")
}

/// Rows of one (dataset, partition) waiting to be written.
struct Buffer<C> {
    /// The partition: hours (days for `features_daily`) since the epoch, see
    /// [`Dataset::span_ms`].
    key: i64,
    /// The rows, in arrival order, as column builders.
    columns: C,
    /// Estimated uncompressed bytes of the rows.
    bytes: u64,
    /// Writer clock when the first row arrived.
    opened_ms: i64,
    /// Ingest epoch when the first row arrived, in the file name.
    epoch: u64,
}

/// The open partitions of one dataset.
struct Partitions<C> {
    /// Buffered partitions, in no particular order. Few are open at a time (the current hour,
    /// late or early ones), so a scan is cheaper than hashing.
    open: Vec<Buffer<C>>,
    /// Index in `open` of the partition the last row went to: consecutive rows mostly hit
    /// the same partition. Only a hint, checked against the key before use.
    last: usize,
    /// Writer settings of the dataset's files (compression, row groups, sorting columns).
    props: WriterProperties,
}

impl<C: Columns> Partitions<C> {
    /// No open partitions; files will use `compression` and `row_group_rows`.
    fn new(compression: Compression, row_group_rows: usize) -> Self {
        let sorting = C::SORT_COLUMNS
            .iter()
            .map(|&column_idx| SortingColumn {
                column_idx,
                descending: false,
                nulls_first: false,
            })
            .collect();
        let mut props = WriterProperties::builder()
            .set_compression(compression)
            .set_max_row_group_row_count(Some(row_group_rows))
            .set_sorting_columns(Some(sorting));
        for &(column, encoding) in C::NO_DICTIONARY {
            props = props
                .set_column_dictionary_enabled(ColumnPath::from(column), false)
                .set_column_encoding(ColumnPath::from(column), encoding);
        }
        Self {
            open: Vec::new(),
            last: 0,
            props: props.build(),
        }
    }

    /// The partition `key`, opened (stamped `clock_ms` and `epoch`) if needed.
    fn get_or_open(&mut self, key: i64, clock_ms: i64, epoch: u64) -> &mut Buffer<C> {
        if self.open.get(self.last).is_none_or(|b| b.key != key) {
            self.last = match self.open.iter().position(|b| b.key == key) {
                Some(index) => index,
                None => {
                    self.open.push(Buffer {
                        key,
                        columns: C::with_capacity(0),
                        bytes: 0,
                        opened_ms: clock_ms,
                        epoch,
                    });
                    self.open.len() - 1
                }
            };
        }
        &mut self.open[self.last]
    }
}

/// A dataset's open partitions whatever its row type: what rolling them needs, so the writer
/// treats its datasets alike.
trait Rollable {
    /// The dataset.
    fn dataset(&self) -> Dataset;

    /// Keys of the partitions whose (key, `opened_ms`) satisfies `due`, ascending.
    fn keys(&self, due: &dyn Fn(i64, i64) -> bool) -> Vec<i64>;

    /// Takes partition `key` out and writes it through `out`.
    fn roll(&mut self, out: &mut Output, key: i64) -> Rolled;

    /// Rows buffered over all partitions.
    fn buffered_rows(&self) -> usize;

    /// (estimated bytes, key) of the partition with the most estimated bytes.
    fn largest(&self) -> Option<(u64, i64)>;
}

impl<C: Columns> Rollable for Partitions<C> {
    fn dataset(&self) -> Dataset {
        C::DATASET
    }

    fn keys(&self, due: &dyn Fn(i64, i64) -> bool) -> Vec<i64> {
        let mut keys: Vec<i64> = self
            .open
            .iter()
            .filter(|b| due(b.key, b.opened_ms))
            .map(|b| b.key)
            .collect();
        keys.sort_unstable();
        keys
    }

    fn roll(&mut self, out: &mut Output, key: i64) -> Rolled {
        let Some(index) = self.open.iter().position(|b| b.key == key) else {
            return (0, Ok(()));
        };
        let buffer = self.open.swap_remove(index);
        let written = out.write(key, buffer.epoch, buffer.bytes, buffer.columns, &self.props);
        (buffer.bytes, written)
    }

    fn buffered_rows(&self) -> usize {
        self.open.iter().map(|b| b.columns.len()).sum()
    }

    fn largest(&self) -> Option<(u64, i64)> {
        self.open.iter().map(|b| (b.bytes, b.key)).max()
    }
}

/// Naming and hand-over of finished files.
struct Output {
    /// Timely process index, in file names.
    process: usize,
    /// Worker index, in file names.
    worker: usize,
    /// Token unique to this writer's open, in file names.
    run: String,
    /// Next file number of this writer.
    seq: u64,
    /// Files handed to the uploader (`seq` also counts partitions that could not be made a
    /// batch).
    queued: u64,
    /// Rows per row group (and per encoded batch).
    row_group_rows: usize,
    /// Where finished files go.
    uploader: Uploader,
}

impl Output {
    /// Queues the rows of partition `key`, opened at `epoch`, whose size estimate is
    /// `bytes`, as the writer's next file: the uploader thread sorts and encodes them
    /// ([`RolledRows::encode`]) and publishes the file.
    fn write<C: Columns>(
        &mut self,
        key: i64,
        epoch: u64,
        bytes: u64,
        columns: C,
        props: &WriterProperties,
    ) -> Result<(), ArchiveError> {
        let path = Path::from(format!(
            "{}/{}/part-{}-{}-{}-e{}-{:06}.parquet",
            C::DATASET.dir(),
            C::DATASET.partition_dirs(key),
            self.process,
            self.worker,
            self.run,
            epoch,
            self.seq,
        ));
        self.seq += 1;
        let batch = columns.finish().map_err(|source| ArchiveError::Arrow {
            dataset: C::DATASET.dir(),
            source,
        })?;
        let rows = batch.num_rows() as u64;
        let file = RolledRows {
            batch,
            path: path.to_string(),
            dataset: C::DATASET.dir(),
            schema: C::schema(),
            sort_columns: C::SORT_COLUMNS,
            props: props.clone(),
            row_group_rows: self.row_group_rows,
        };
        self.uploader.send(Upload {
            path,
            encode: Box::new(move || file.encode()),
            queued_bytes: bytes,
            dataset: C::DATASET,
            rows,
        })?;
        self.queued += 1;
        Ok(())
    }
}

/// The rows of a rolled partition, in arrival order, with what encoding them as a file takes.
struct RolledRows {
    batch: RecordBatch,
    /// The file's object key, for errors.
    path: String,
    /// The dataset's name, for errors.
    dataset: &'static str,
    schema: SchemaRef,
    /// See [`Columns::SORT_COLUMNS`].
    sort_columns: &'static [i32],
    props: WriterProperties,
    row_group_rows: usize,
}

impl RolledRows {
    /// Sorts the rows into file order and encodes them as Parquet, `row_group_rows` rows per
    /// row group.
    fn encode(self) -> Result<Bytes, ArchiveError> {
        let batch = match rows::file_order(&self.batch, self.sort_columns) {
            Some(order) => {
                take_record_batch(&self.batch, &order).map_err(|source| ArchiveError::Arrow {
                    dataset: self.dataset,
                    source,
                })?
            }
            None => self.batch,
        };
        let parquet_err = |source| ArchiveError::Parquet {
            path: self.path.clone(),
            source,
        };
        let mut writer =
            ArrowWriter::try_new(Vec::new(), self.schema, Some(self.props)).map_err(parquet_err)?;
        let rows = batch.num_rows();
        for offset in (0..rows).step_by(self.row_group_rows) {
            let chunk = batch.slice(offset, self.row_group_rows.min(rows - offset));
            writer.write(&chunk).map_err(parquet_err)?;
        }
        drop(batch);
        Ok(Bytes::from(writer.into_inner().map_err(parquet_err)?))
    }
}

/// The Parquet archive sink of one worker.
///
/// # Buffering and flush rules
///
/// - Rows are appended to Arrow column builders as they are pushed (the pushed row itself is
///   not kept), per dataset and partition, with a cheap estimate of their uncompressed size.
///   Partitions are the UTC date and hour of the event time (`telemetry`: `ts`, `alerts`:
///   `event_time`) or arrival time (`rejects`: `received_at`), and the local `date` of a
///   `features_daily` row.
/// - A partition is written as one file when its estimate reaches `max_file_bytes` (checked
///   on every push), when it has been open `max_file_age_s` by the writer clock (checked by
///   [`roll_due`](Self::roll_due)), when the pipeline clock has passed it (checked by
///   [`roll_event_time`](Self::roll_event_time)), or at [`finish`](Self::finish). When the
///   estimate over all partitions exceeds twice `max_file_bytes`, the largest partition is
///   written early.
/// - Writing queues the partition's rows as one Arrow batch for the uploader thread, which
///   sorts them (telemetry by `(vehicle_id, ts)`, alerts by `(vehicle_id, event_time)`,
///   rejects by `received_at`, features by `(vehicle_id, date, revision)`) and encodes row
///   groups of `row_group_rows` rows with zstd. Rows of at most the buffer budget (twice
///   `max_file_bytes` by the size estimate, 256 MiB by default) wait in the queue (one larger
///   partition may wait alone); a full queue blocks the caller (back-pressure). A file that
///   cannot be encoded is given up on like one that cannot be published: logged, and no
///   later mark is published.
/// - The uploader publishes each file with one create-only `put` (never overwriting), in
///   queue order. While the writer runs a failed put is retried with exponential backoff
///   (200 ms doubling to 5 s) until it succeeds: during an outage of the store the queue
///   fills, then the worker blocks on it, and nothing is lost; [`degraded`] and
///   [`UploadProgress::degraded`] say so meanwhile. [`finish`](Self::finish) retries for a
///   bounded time, then logs and reports the files it gives up on.
/// - [`roll_all`](Self::roll_all) writes every open partition and returns a mark;
///   [`progress`](Self::progress) tells when the files up to a mark are published.
/// - Dropping the writer without `finish` loses its buffered rows (logged as an error);
///   queued files are still published if their first attempt succeeds.
pub struct ArchiveWriter {
    /// Size that rolls a partition.
    max_file_bytes: u64,
    /// Age that rolls a partition.
    max_age_ms: i64,
    /// Roll the largest partition when `buffered_bytes` exceeds this.
    budget_bytes: u64,
    /// Wall clock as last told by `roll_due` (or read at open); stamps new partitions.
    clock_ms: i64,
    /// Estimated bytes over all open partitions.
    buffered_bytes: u64,
    /// Open `telemetry` partitions.
    telemetry: Partitions<TelemetryColumns>,
    /// Open `alerts` partitions.
    alerts: Partitions<AlertColumns>,
    /// Open `rejects` partitions.
    rejects: Partitions<RejectColumns>,
    /// Open `features_daily` partitions.
    features: Partitions<FeaturesColumns>,
    /// Ingest epoch of the rows being pushed, see [`set_epoch`](Self::set_epoch).
    epoch: u64,
    /// First error of a roll triggered by a push, returned by the next `roll_due`/`finish`.
    deferred: Option<ArchiveError>,
    /// File naming and the uploader.
    out: Output,
}

/// Appends `row` to its partition in `parts` (opened at `clock_ms` and `epoch` if new);
/// returns the row's size estimate, its partition key and whether that partition is now full.
fn buffer<C: Columns>(
    parts: &mut Partitions<C>,
    row: &C::Row,
    (clock_ms, epoch): (i64, u64),
    max_file_bytes: u64,
) -> (u64, i64, bool) {
    let key = C::partition_ms(row).div_euclid(C::DATASET.span_ms());
    let buffer = parts.get_or_open(key, clock_ms, epoch);
    let estimate = buffer.columns.push(row);
    buffer.bytes += estimate;
    (estimate, key, buffer.bytes >= max_file_bytes)
}

impl ArchiveWriter {
    /// Opens the archive at `config.root` for worker `worker` of process `process`, starting
    /// its uploader thread.
    pub fn open(
        config: &ArchiveConfig,
        process: usize,
        worker: usize,
    ) -> Result<Self, ArchiveError> {
        if config.row_group_rows == 0 || config.max_file_bytes == 0 {
            return Err(ArchiveError::Config(
                "row_group_rows and max_file_bytes must be positive".into(),
            ));
        }
        let level = ZstdLevel::try_new(config.zstd_level)
            .map_err(|e| ArchiveError::Config(format!("zstd_level: {e}")))?;
        let compression = Compression::ZSTD(level);
        let store = open_store(&config.root, &config.s3)?;
        Self::open_on(
            store,
            config,
            compression,
            (process, worker),
            Backoff::DEFAULT,
        )
    }

    /// Opens a writer on `store` (already opened from `config.root`) with `backoff` between
    /// upload attempts.
    fn open_on(
        store: Arc<dyn ObjectStore>,
        config: &ArchiveConfig,
        compression: Compression,
        (process, worker): (usize, usize),
        backoff: Backoff,
    ) -> Result<Self, ArchiveError> {
        let now_ms = schemas::time::now_ms();
        let budget_bytes = config.max_file_bytes.saturating_mul(BUFFER_BUDGET_FILES);
        let uploader = Uploader::spawn(
            store,
            config.multipart_part_bytes.max(5 << 20),
            budget_bytes,
            format!("archive-upload-{process}-{worker}"),
            backoff,
            config.yield_to_workers,
        )?;
        let rows = config.row_group_rows;
        Ok(Self {
            max_file_bytes: config.max_file_bytes,
            max_age_ms: i64::try_from(config.max_file_age_s.saturating_mul(1000))
                .unwrap_or(i64::MAX),
            budget_bytes,
            clock_ms: now_ms,
            buffered_bytes: 0,
            telemetry: Partitions::new(compression, rows),
            alerts: Partitions::new(compression, rows),
            rejects: Partitions::new(compression, rows),
            features: Partitions::new(compression, rows),
            epoch: 0,
            deferred: None,
            out: Output {
                process,
                worker,
                run: run_token(now_ms),
                seq: 0,
                queued: 0,
                row_group_rows: rows,
                uploader,
            },
        })
    }

    /// Sets the ingest epoch of the rows pushed from now on (the sink calls it before pushing
    /// an epoch's rows). A partition opened by a later push carries it in its file name, so
    /// [`discard_from_epoch`] can remove what a restart replays. Epochs are expected not to
    /// decrease; the writer starts at 0.
    pub fn set_epoch(&mut self, epoch: u64) {
        self.epoch = epoch;
    }

    /// Buffers one accepted telemetry record (taken by value: its fields are appended to the
    /// partition's columns and the record is dropped here).
    pub fn push_telemetry(&mut self, record: Record) {
        let pushed = buffer(
            &mut self.telemetry,
            &record,
            (self.clock_ms, self.epoch),
            self.max_file_bytes,
        );
        self.after_push(pushed, |w, key| w.telemetry.roll(&mut w.out, key));
    }

    /// Buffers one alert (its evidence is rendered as JSON text).
    pub fn push_alert(&mut self, alert: &Alert) {
        let pushed = buffer(
            &mut self.alerts,
            alert,
            (self.clock_ms, self.epoch),
            self.max_file_bytes,
        );
        self.after_push(pushed, |w, key| w.alerts.roll(&mut w.out, key));
    }

    /// Buffers one rejected message.
    pub fn push_reject(&mut self, reject: Reject) {
        let pushed = buffer(
            &mut self.rejects,
            &reject,
            (self.clock_ms, self.epoch),
            self.max_file_bytes,
        );
        self.after_push(pushed, |w, key| w.rejects.roll(&mut w.out, key));
    }

    /// Buffers one row of daily features (a first emission or a revision: each is a row).
    pub fn push_features(&mut self, features: &DailyFeatures) {
        let pushed = buffer(
            &mut self.features,
            features,
            (self.clock_ms, self.epoch),
            self.max_file_bytes,
        );
        self.after_push(pushed, |w, key| w.features.roll(&mut w.out, key));
    }

    /// Rolls a full partition, or the largest one when over the memory budget.
    fn after_push(
        &mut self,
        (estimate, key, full): (u64, i64, bool),
        roll_pushed: impl FnOnce(&mut Self, i64) -> Rolled,
    ) {
        self.buffered_bytes += estimate;
        let rolled = if full {
            roll_pushed(self, key)
        } else if self.buffered_bytes > self.budget_bytes {
            self.roll_largest()
        } else {
            return;
        };
        self.settle(rolled);
    }

    /// Releases a rolled partition's bytes from the budget and keeps the first error.
    fn settle(&mut self, (bytes, result): Rolled) {
        self.buffered_bytes -= bytes;
        if let Err(error) = result {
            tracing::error!(%error, "Archive file could not be written; its rows are lost.");
            self.deferred.get_or_insert(error);
        }
    }

    /// The open partitions of every dataset, in dataset order, and the file output.
    fn datasets(&mut self) -> ([&mut dyn Rollable; 4], &mut Output) {
        (
            [
                &mut self.telemetry,
                &mut self.alerts,
                &mut self.rejects,
                &mut self.features,
            ],
            &mut self.out,
        )
    }

    /// Rolls the partition with the most estimated bytes, over all datasets.
    fn roll_largest(&mut self) -> Rolled {
        let (datasets, out) = self.datasets();
        let largest = (0..datasets.len())
            .filter_map(|d| datasets[d].largest().map(|(bytes, key)| (bytes, d, key)))
            .max();
        match largest {
            Some((_, d, key)) => datasets[d].roll(out, key),
            None => (0, Ok(())),
        }
    }

    /// Writes every partition whose (dataset, key, `opened_ms`) satisfies `due`, in dataset
    /// and key order.
    fn roll_matching(&mut self, due: impl Fn(Dataset, i64, i64) -> bool) {
        let (datasets, out) = self.datasets();
        let mut rolled = Vec::new();
        for parts in datasets {
            let dataset = parts.dataset();
            for key in parts.keys(&|key, opened_ms| due(dataset, key, opened_ms)) {
                rolled.push(parts.roll(out, key));
            }
        }
        for result in rolled {
            self.settle(result);
        }
    }

    /// Advances the writer clock to `now_ms` (wall clock, epoch ms) and writes every partition
    /// that has been open for `max_file_age_s` or longer. Call it once per batch or epoch.
    ///
    /// Returns the first error of this call or of an earlier roll triggered by a push; the
    /// rows of a failed file are lost, the writer stays usable.
    pub fn roll_due(&mut self, now_ms: i64) -> Result<(), ArchiveError> {
        self.clock_ms = self.clock_ms.max(now_ms);
        let max_age_ms = self.max_age_ms;
        self.roll_matching(|_, _, opened_ms| now_ms.saturating_sub(opened_ms) >= max_age_ms);
        self.deferred.take().map_or(Ok(()), Err)
    }

    /// Writes the partitions the pipeline clock `event_time_ms` has passed, past which only
    /// late data arrives: the `telemetry` and `alerts` hours that ended at or before it, and
    /// the `features_daily` dates that ended everywhere (12 h after their UTC end, for the
    /// westernmost zone) at or before it. Keeps memory at about an hour of data when a replay
    /// covers days; late rows (and feature revisions) for a closed partition start a new file
    /// in it. `rejects` (partitioned by arrival time) roll by age.
    pub fn roll_event_time(&mut self, event_time_ms: i64) -> Result<(), ArchiveError> {
        self.roll_matching(|dataset, key, _| dataset.closed_at(key, event_time_ms));
        self.deferred.take().map_or(Ok(()), Err)
    }

    /// Writes every open partition as a file (a checkpoint's share of the archive) and
    /// returns the mark of everything queued so far: the number of files this writer has
    /// handed to its uploader. [`UploadProgress::published`] of the mark says when they are
    /// all in the store. Never waits for uploads (only, like every roll, while the upload
    /// queue is full).
    ///
    /// Fails with the first error of this call or of an earlier roll triggered by a push (rows
    /// that could not be made a batch, or an uploader that is gone): rows were lost, so a
    /// checkpoint must not complete. A file that cannot be encoded fails its mark instead
    /// ([`UploadProgress::failed`]).
    pub fn roll_all(&mut self) -> Result<u64, ArchiveError> {
        self.roll_matching(|_, _, _| true);
        match self.deferred.take() {
            Some(error) => Err(error),
            None => Ok(self.out.queued),
        }
    }

    /// A handle on this writer's uploads, for waiting on the marks of
    /// [`roll_all`](Self::roll_all) off the worker thread. Cheap to clone, `Send + Sync`.
    pub fn progress(&self) -> UploadProgress {
        self.out.uploader.progress()
    }

    /// [`finish_within`](Self::finish_within) [`DEFAULT_SHUTDOWN_TIMEOUT`].
    pub fn finish(self) -> Result<ArchiveStats, ArchiveError> {
        self.finish_within(DEFAULT_SHUTDOWN_TIMEOUT)
    }

    /// Writes every open partition, waits until the uploader has published (or given up on)
    /// every file, and returns what was published. Failing uploads are retried for `timeout`
    /// from this call; then the file still failing, and every file after it, is given up on.
    ///
    /// Fails with the first error of a roll, or with [`ArchiveError::Upload`] when any file
    /// could not be encoded or published (each failure is also logged).
    pub fn finish_within(mut self, timeout: Duration) -> Result<ArchiveStats, ArchiveError> {
        self.roll_matching(|_, _, _| true);
        let report = self.out.uploader.finish(timeout)?;
        if let Some(error) = self.deferred.take() {
            return Err(error);
        }
        let failed = report.failures.len();
        match report.failures.into_iter().next() {
            None => Ok(report.stats),
            Some(first) => Err(ArchiveError::Upload {
                failed,
                path: first.path,
                attempts: first.attempts,
                source: first.error,
            }),
        }
    }
}

/// What rolling a partition released from the buffer (its bytes estimate), and whether its
/// rows were queued as a file.
type Rolled = (u64, Result<(), ArchiveError>);

impl Drop for ArchiveWriter {
    fn drop(&mut self) {
        let (datasets, _) = self.datasets();
        let rows: usize = datasets.iter().map(|d| d.buffered_rows()).sum();
        if rows > 0 {
            tracing::error!(
                rows,
                "Archive writer dropped without finish; buffered rows are lost."
            );
        }
    }
}
