//! Reloading the registry and fences while `run` is live (SPEC §3): on SIGHUP, or when
//! either file's modification time or size changes (checked every
//! `registry.reload_check_s`). A file that fails validation is logged with its file, line and
//! key and counted; the data in force stays.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use operators::reference::ReferenceSlot;
use tokio::signal::unix::{SignalKind, signal};

use crate::config::Config;
use crate::replay::load_reference;

/// What identifies a version of a file: modification time and size (`None` = missing).
type Stamp = Option<(SystemTime, u64)>;

fn stamp(path: &PathBuf) -> Stamp {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

fn stamps(config: &Config) -> Vec<Stamp> {
    [
        &config.registry.vehicles_csv,
        &config.registry.fences_geojson,
    ]
    .into_iter()
    .flatten()
    .map(stamp)
    .collect()
}

/// Loads the files and puts them in force; logs and counts the outcome.
fn reload(config: &Config, slot: &ReferenceSlot, why: &str) {
    match load_reference(config) {
        Ok((registry, fences)) => {
            let (vehicles, devices) = (registry.vehicle_count(), registry.device_count());
            let fence_count = fences.len();
            let version = slot.publish(registry, fences);
            metrics::counter!("lienwatch_reference_reloads_total", "result" => "ok").increment(1);
            metrics::gauge!("lienwatch_reference_version").set(version as f64);
            tracing::info!(
                version,
                vehicles,
                devices,
                fences = fence_count,
                trigger = why,
                "reference data reloaded; it applies from the next record on"
            );
        }
        Err(e) => {
            metrics::counter!("lienwatch_reference_reloads_total", "result" => "failed")
                .increment(1);
            tracing::error!(error = %format!("{e:#}"), trigger = why, "reference data not reloaded; the data in force stays");
        }
    }
}

/// Watches for SIGHUP and file changes until the runtime shuts down.
pub(crate) fn spawn(runtime: &tokio::runtime::Runtime, config: Arc<Config>, slot: ReferenceSlot) {
    runtime.spawn(async move {
        let mut hangup = match signal(SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloading on file changes only");
                None
            }
        };
        let period = Duration::from_secs(config.registry.reload_check_s.max(1));
        let watch = config.registry.reload_check_s > 0;
        let mut ticker = tokio::time::interval(period);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seen = stamps(&config);
        loop {
            let hangup_signal = async {
                match hangup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            let why = tokio::select! {
                Some(()) = hangup_signal => "SIGHUP",
                _ = ticker.tick(), if watch => {
                    let now = stamps(&config);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    "file change"
                }
            };
            let (config, slot) = (Arc::clone(&config), slot.clone());
            // Parsing a large registry must not hold up the runtime's I/O.
            let loaded = tokio::task::spawn_blocking(move || reload(&config, &slot, why)).await;
            if let Err(e) = loaded {
                tracing::error!(error = %e, "reference reload task failed");
            }
        }
    });
}
