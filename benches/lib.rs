//! Benchmarks of lienwatch. `benches/stages.rs` holds criterion micro-benchmarks of the hot
//! per-message stages; `replay.sh` measures end-to-end replay throughput. Results and the
//! commands that produced them are in `README.md`.
