//! Per-vehicle logic of lienwatch as plain, deterministic Rust, plus thin timely operator
//! wrappers. No tokio, no I/O.
//!
//! # Layout
//! - [`geo`], [`fences`], [`registry`]: distances, the fence index, the vehicle registry;
//!   [`reference`]: the registry and fences in force, replaced on reload.
//! - [`config`]: the `[rules]` settings with the SPEC defaults.
//! - [`dedup`], [`position`]: duplicate detection and the per-vehicle fix chain.
//! - [`kinds`]: one module per alert kind; [`ctx`] is what a kind sees.
//! - [`days`]: local days, the daily features and the baselines' rings of past days.
//! - [`vehicle`]: one vehicle's state and the order readings, fixes and timers reach the kinds.
//! - [`baseline`]: a vehicle's days, features and baselines; [`vin_index`]: the fleet-wide
//!   VIN index of `duplicate_collateral`.
//! - [`fleet`]: all vehicles of a worker, the pipeline clock and the timer index.
//! - [`packed`]: `Option`s of that state in the room of their values.
//! - [`dataflow`]: the timely operator that runs a fleet.

pub mod baseline;
pub mod config;
pub mod ctx;
pub mod dataflow;
pub mod days;
pub mod dedup;
pub mod fences;
pub mod fleet;
pub mod geo;
mod id_index;
pub mod kinds;
pub mod packed;
pub mod position;
pub mod reference;
pub mod registry;
pub mod snapshot;
pub mod vehicle;
pub mod vin_index;
