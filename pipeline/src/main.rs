//! The `lienwatch` binary: parses the command line and runs the command.

use std::io::IsTerminal;

use clap::Parser;
use tracing_subscriber::EnvFilter;

/// Records are allocated on the worker that decodes them and freed on the worker that owns
/// their vehicle; mimalloc handles those cross-thread frees far better than the system
/// allocator (replay -w 2: 4.0 s against 6.0 s wall; benches/README.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| EnvFilter::new("info,rumqttd=off")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    pipeline::cli::run(pipeline::cli::Cli::parse())
}
