//! lienwatch: configuration, the dataflow graph, the runtime and the commands of the
//! `lienwatch` binary.
//!
//! # Layout
//! - [`config`]: the TOML configuration with environment overrides.
//! - [`replay`]: the dataflow over JSON Lines files and its summary.
//! - [`simulate`]: the fleet generator with injected incidents and a truth file.
//! - [`cli`]: the commands (`replay`, `check`, `simulate`, `demo`).

pub mod cli;
pub mod config;
pub mod replay;
pub mod simulate;
