//! lienwatch: configuration, the dataflow graph, the runtime and the commands of the
//! `lienwatch` binary.
//!
//! # Layout
//! - [`config`]: the TOML configuration with environment overrides.
//! - `dataflow`: what `replay` and `run` share: identities, sinks, metrics, the worker.
//! - [`replay`]: the dataflow over JSON Lines files and its summary.
//! - [`run`]: the service: MQTT in, Kafka and Parquet out, metrics and health over HTTP;
//!   `reload`: its reloading of the registry and fences.
//! - [`publish`]: publishing a messages file to MQTT (`simulate --mqtt`, the demo).
//! - [`simulate`]: the fleet generator with injected incidents and a truth file.
//! - [`demo`]: `lienwatch demo` with its embedded MQTT broker.
//! - [`security`]: what `lienwatch check` warns about; secrets blanked for printing.
//! - [`cli`]: the commands (`replay`, `check`, `simulate`, `demo`).

mod checkpoint;
pub mod cli;
pub mod config;
mod dataflow;
pub mod demo;
pub mod publish;
mod reload;
pub mod replay;
pub mod run;
pub mod security;
pub mod simulate;
