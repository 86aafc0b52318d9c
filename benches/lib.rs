//! Benchmarks of lienwatch. `benches/stages.rs` holds criterion micro-benchmarks of the hot
//! per-message stages, `benches/history.rs` the per-reading cost of a vehicle after 30 and
//! 180 days of history, `benches/checkpoint.rs` what a checkpoint costs the epoch after it;
//! `examples/vehicles_rss.rs` measures the memory of 100 000 or
//! 1 000 000 vehicles in one fleet; `replay.sh` and `live.sh` measure end-to-end throughput.
//! [`feed`] generates the synthetic telemetry of the history bench and the memory harness.
//! Results and the commands that produced them are in `README.md`.

pub mod feed;
