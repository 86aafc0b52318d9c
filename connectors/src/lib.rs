//! lienwatch's edges to the outside world: the MQTT source, the Kafka sink of alerts and daily
//! features, the JSON Lines replay input and alert and features files, and the Parquet history
//! archive in an object store (SPEC §2, §4, §5, §6, §7).
//!
//! Everything here is driven from synchronous timely worker threads; where I/O must not block
//! a worker the module owns a helper thread (archive uploads) or tasks on the process's tokio
//! runtime (MQTT, Kafka).
//!
//! # Layout
//! - [`archive`]: [`ArchiveWriter`], one per worker: buffers `telemetry`, `alerts` and
//!   `rejects` rows per UTC date/hour partition and `features_daily` rows per local date,
//!   encodes sorted zstd Parquet files and publishes each with a single create-only put on an
//!   uploader thread.
//! - [`jsonl`]: [`LineSource`], a worker's block-cyclic share of the replay input lines, and
//!   [`JsonlWriter`], the JSON Lines file sink of alerts or daily features shared by the
//!   workers of a process.
//! - [`mqtt`]: [`MqttSource`], one MQTT session per process feeding a [`WorkerInlet`] per
//!   worker, with receipt-ordered QoS 1 acks.
//! - [`kafka`]: [`KafkaProducer`], idempotent delivery of alerts and daily features to their
//!   topics, with retries.

pub mod archive;
pub mod checkpoints;
pub mod journal;
pub mod jsonl;
pub mod kafka;
pub mod mqtt;

pub use archive::{ArchiveConfig, ArchiveError, ArchiveStats, ArchiveWriter, UploadProgress};
pub use journal::{
    Journal, JournalConfig, JournalEntry, JournalError, JournalReader, JournalRecord,
};
pub use jsonl::{JsonlError, JsonlWriter, LineBatch, LineSource};
pub use kafka::{KafkaError, KafkaProducer, KafkaSettings};
pub use mqtt::{Inlet, Message, MqttError, MqttSettings, MqttSource, WorkerInlet};
