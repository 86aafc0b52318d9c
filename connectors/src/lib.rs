//! lienwatch's edges to the outside world: the JSON Lines replay input and alert file, and
//! the Parquet history archive in an object store (SPEC §4, §6, §7). MQTT and Kafka come later.
//!
//! Everything here is driven from synchronous timely worker threads; where I/O must not block
//! a worker (archive uploads) the module owns a helper thread.
//!
//! # Layout
//! - [`archive`]: [`ArchiveWriter`], one per worker: buffers `telemetry`, `alerts` and
//!   `rejects` rows per UTC date/hour partition, encodes sorted zstd Parquet files and
//!   publishes each with a single create-only put on an uploader thread.
//! - [`jsonl`]: [`LineSource`], a worker's block-cyclic share of the replay input lines, and
//!   [`AlertLog`], the JSON Lines alert sink shared by the workers of a process.

pub mod archive;
pub mod jsonl;

pub use archive::{ArchiveConfig, ArchiveError, ArchiveStats, ArchiveWriter};
pub use jsonl::{AlertLog, JsonlError, LineBatch, LineSource};
