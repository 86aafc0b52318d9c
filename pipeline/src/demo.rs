//! `lienwatch demo`: everything on one machine, no external service (SPEC §7). An embedded
//! MQTT broker (rumqttd, cargo feature `embedded-broker`), the simulator publishing a fleet
//! with incidents, and `run`'s service reading it: alerts printed as they are raised and
//! written as JSON Lines, Parquet under the demo directory.
#![allow(clippy::print_stdout)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use anyhow::{Context, anyhow};

use connectors::MqttSettings;
use schemas::Alert;

use crate::config::Config;
use crate::publish::{PublishOptions, publish, read_messages};
use crate::run::{ServeOptions, serve};
use crate::simulate::{SimOptions, SimOutputs, simulate};

/// What the demo needs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Where the fleet, alerts, features and archive go (its `demo/`, `archive/`,
    /// `alerts.jsonl` and `features.jsonl` are replaced on every run).
    pub dir: PathBuf,
    /// Simulated fleet.
    pub sim: SimOptions,
    /// Publishing rate, messages per second.
    pub rate_per_s: f64,
}

/// Runs the demo; returns the summary of the service.
pub fn demo(options: &DemoOptions) -> anyhow::Result<crate::replay::Summary> {
    let broker = start_broker()?;
    let dir = &options.dir;
    for owned in [dir.join("demo"), dir.join("archive")] {
        if owned.exists() {
            std::fs::remove_dir_all(&owned)
                .with_context(|| format!("clearing {}", owned.display()))?;
        }
    }
    let fleet_dir = dir.join("demo");
    std::fs::create_dir_all(&fleet_dir)
        .with_context(|| format!("creating {}", fleet_dir.display()))?;
    let messages_file = fleet_dir.join("fleet.jsonl");
    let outputs = SimOutputs::beside(&messages_file);
    let sim = simulate(&options.sim, &outputs)?;
    let messages = read_messages(&messages_file, "telemetry")?;
    println!(
        "simulated {} vehicles over {} days: {} messages ({})",
        options.sim.vehicles,
        options.sim.days,
        messages.len(),
        messages_file.display()
    );
    println!("embedded MQTT broker on {broker}");

    let alerts_path = dir.join("alerts.jsonl");
    let features_path = dir.join("features.jsonl");
    for file in [&alerts_path, &features_path] {
        if file.exists() {
            std::fs::remove_file(file)?;
        }
    }
    let mut config = Config::default();
    config.pipeline.workers = 2;
    config.registry.vehicles_csv = Some(outputs.vehicles_csv.clone());
    config.registry.fences_geojson = Some(outputs.fences.clone());
    config.alerts.jsonl_path = Some(alerts_path.clone());
    config.features.jsonl_path = Some(features_path.clone());
    config.archive.url = dir.join("archive").display().to_string();
    config.kafka.enabled = false;
    config.http.listen = "127.0.0.1:0".into();
    config.mqtt.url = format!("mqtt://{broker}");
    config.mqtt.protocol_version = 4;
    config.mqtt.client_id = "lienwatch-demo".into();
    config.mqtt.clean_start = true;
    // Each demo is a fresh simulation over the same dates: state or a journal kept from an
    // earlier demo would make its readings duplicates.
    config.durability.enabled = false;
    config.validate()?;

    let published = messages.len() as u64;
    let ingested = Arc::new(AtomicU64::new(0));
    let publisher = PublishOptions {
        mqtt: MqttSettings {
            url: config.mqtt.url.clone(),
            client_id: "lienwatch-demo-simulator".into(),
            ..MqttSettings::default()
        },
        topic_prefix: "telemetry".into(),
        rate_per_s: Some(options.rate_per_s),
    };
    // The service stops once it has taken every published message, or once the publisher
    // is done and nothing more came for a while (a broker may lose a message).
    let seen = Arc::clone(&ingested);
    let publisher_done = Arc::new(AtomicBool::new(false));
    let done = Arc::clone(&publisher_done);
    let stop = Box::pin(async move {
        let (mut last, mut quiet) = (0, 0u32);
        loop {
            let now = seen.load(Ordering::Acquire);
            if now >= published {
                return;
            }
            quiet = if now == last { quiet + 1 } else { 0 };
            last = now;
            if done.load(Ordering::Acquire) && quiet >= 40 {
                tracing::warn!(
                    published,
                    received = now,
                    "the embedded broker delivered fewer messages than were published"
                );
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    });
    let on_ready = Box::new(move |http: Option<SocketAddr>| {
        if let Some(addr) = http {
            println!("metrics: http://{addr}/metrics   health: http://{addr}/health");
        }
        println!(
            "publishing at {} msg/s; alerts appear as the pipeline raises them (Ctrl-C stops)\n",
            publisher.rate_per_s.unwrap_or_default()
        );
        std::thread::spawn(move || {
            if let Err(e) = publish(&publisher, messages) {
                tracing::error!(error = %format!("{e:#}"), "the demo publisher failed");
            }
            publisher_done.store(true, Ordering::Release);
        });
    });
    let summary = serve(
        &config,
        ServeOptions {
            stop: Some(stop),
            printer: Some(Arc::new(|alert: &Alert| println!("{}", describe(alert)))),
            on_ready: Some(on_ready),
            ingested: Some(ingested),
        },
    )?;
    println!("\n{}", summary.render());
    let incidents: u64 = sim.incidents.values().sum();
    println!(
        "the simulator injected {incidents} incidents; the alerts it expects (open or instant) \
         are in {}",
        outputs.truth.display()
    );
    print_outputs(&alerts_path, &features_path, &config.archive.url);
    Ok(summary)
}

/// Without the embedded broker there is no demo: say how to get one.
#[cfg(not(feature = "embedded-broker"))]
fn start_broker() -> anyhow::Result<SocketAddr> {
    Err(anyhow!(
        "this lienwatch was built without its embedded MQTT broker: install it with \
         `scripts/setup`, or run `cargo run --release -p pipeline --features embedded-broker -- demo`"
    ))
}

/// Starts rumqttd with one MQTT 3.1.1 listener on a free loopback port.
#[cfg(feature = "embedded-broker")]
fn start_broker() -> anyhow::Result<SocketAddr> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    // Segments large enough that the demo's whole fleet fits: rumqttd drops the oldest
    // segment of a slow subscriber beyond `max_segment_count`.
    let text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 64
max_outgoing_packet_count = 1000
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "demo"
listen = "{addr}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = 1048576
max_inflight_count = 1000
dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&text).context("embedded broker config")?;
    let mut broker = rumqttd::Broker::new(config);
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "the embedded MQTT broker stopped");
            }
        })?;
    for _ in 0..100 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return Ok(addr);
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Err(anyhow!("the embedded MQTT broker did not open {addr}"))
}

fn print_outputs(alerts_path: &Path, features_path: &Path, archive: &str) {
    println!("alerts (JSON Lines): {}", alerts_path.display());
    println!("daily features (JSON Lines): {}", features_path.display());
    println!("archive (Parquet):   {archive}");
    let sql = format!(
        "SELECT kind, severity, count(*) FROM read_parquet('{archive}/alerts/**/*.parquet', \
         hive_partitioning=1) GROUP BY ALL ORDER BY 3 DESC"
    );
    println!("try it in DuckDB (scripts/setup installs it in .venv; or `pip install duckdb`):");
    println!("  .venv/bin/python -c \"import duckdb; duckdb.sql(\\\"{sql}\\\").show()\"");
}

/// One readable line per alert.
pub fn describe(alert: &Alert) -> String {
    let evidence: Vec<String> = alert
        .evidence
        .iter()
        .filter(|(_, v)| !v.is_null())
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!(
        "{}  {:<8} {:<18} {:<7} vehicle {} device {}  {}",
        &schemas::time::rfc3339_ms(alert.event_time_ms)[..19],
        alert.severity.as_str(),
        alert.kind.as_str(),
        alert.phase.as_str(),
        alert.vehicle_id,
        alert.device_id,
        evidence.join(" ")
    )
}
