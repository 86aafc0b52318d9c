//! The commands of the `lienwatch` binary (SPEC §7). Printing to stdout is this module's job.
#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::config::Config;
use crate::demo::{DemoOptions, demo};
use connectors::MqttSettings;

use crate::publish::{PublishOptions, publish, read_messages};
use crate::replay::{load_reference, replay};
use crate::run::{ServeOptions, serve};
use crate::simulate::{SimOptions, SimOutputs, simulate};

/// lienwatch: watches vehicles pledged as loan collateral.
#[derive(Debug, Parser)]
#[command(name = "lienwatch", version, about)]
pub struct Cli {
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The service: MQTT in, Kafka and Parquet out, metrics and health on HTTP.
    Run(RunArgs),
    /// Runs the dataflow over JSON Lines files with the event-time clock, then prints a summary.
    Replay(ReplayArgs),
    /// Validates a config, its registry and fences, and prints what would run.
    Check(CheckArgs),
    /// Generates a realistic fleet with injected incidents (JSON Lines, registry, fences, truth).
    Simulate(SimulateArgs),
    /// Everything on one machine: an embedded MQTT broker, the simulator publishing a fleet,
    /// the service printing its alerts as they are raised (no external service).
    Demo(DemoArgs),
}

/// `lienwatch replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// TOML config (defaults without one).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Input JSON Lines file, `-` for stdin; repeat for several.
    #[arg(long, required = true)]
    pub input: Vec<PathBuf>,
    /// Vehicle registry CSV (overrides `registry.vehicles_csv`).
    #[arg(long)]
    pub vehicles: Option<PathBuf>,
    /// Fences GeoJSON (overrides `registry.fences_geojson`).
    #[arg(long)]
    pub fences: Option<PathBuf>,
    /// Alerts JSON Lines file, `-` for stdout (overrides `alerts.jsonl_path`).
    #[arg(long)]
    pub alerts_out: Option<PathBuf>,
    /// Daily features JSON Lines file, `-` for stdout (overrides `features.jsonl_path`).
    #[arg(long)]
    pub features_out: Option<PathBuf>,
    /// Archive root directory (overrides `archive.url`).
    #[arg(long)]
    pub archive: Option<String>,
    /// Do not write the Parquet archive.
    #[arg(long)]
    pub no_archive: bool,
    /// Worker threads (overrides `pipeline.workers`).
    #[arg(short = 'w', long)]
    pub workers: Option<usize>,
    /// Also write the summary as JSON to this file.
    #[arg(long)]
    pub summary_out: Option<PathBuf>,
}

/// `lienwatch run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// TOML config (defaults without one: Mosquitto and Kafka on loopback).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Worker threads (overrides `pipeline.workers`).
    #[arg(short = 'w', long)]
    pub workers: Option<usize>,
    /// Cluster: this process's index in the hostfile (overrides `pipeline.process`).
    #[arg(short = 'p', long)]
    pub process: Option<usize>,
    /// Cluster: a file of `host:port` lines, one per process, the same on every process
    /// (overrides `pipeline.hosts`).
    #[arg(long)]
    pub hostfile: Option<PathBuf>,
}

/// `lienwatch check`.
#[derive(Debug, Args)]
pub struct CheckArgs {
    /// TOML config.
    #[arg(long)]
    pub config: PathBuf,
}

/// `lienwatch simulate`.
#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Messages file to write; the truth, registry and fences go beside it
    /// (`F.truth.jsonl`, `F.vehicles.csv`, `F.fences.geojson`). Default with `--mqtt`:
    /// `lienwatch-data/sim/fleet.jsonl`.
    #[arg(long, required_unless_present = "mqtt")]
    pub out: Option<PathBuf>,
    /// Also publish the messages to this MQTT broker (`mqtt://host:port`), one per line,
    /// on `<topic-prefix>/<device_id>`.
    #[arg(long)]
    pub mqtt: Option<String>,
    /// Messages per second to publish (0 = as fast as the broker takes them).
    #[arg(long, default_value_t = 2000.0)]
    pub rate: f64,
    /// QoS of the published messages.
    #[arg(long, default_value_t = 1)]
    pub qos: u8,
    /// Topic prefix of the published messages.
    #[arg(long, default_value = "telemetry")]
    pub topic_prefix: String,
    /// Publish this existing messages file instead of generating a fleet.
    #[arg(long, requires = "mqtt")]
    pub from: Option<PathBuf>,
    /// Vehicles in the fleet.
    #[arg(long)]
    pub vehicles: Option<usize>,
    /// Days of data.
    #[arg(long)]
    pub days: Option<u32>,
    /// Random seed (same seed, same files).
    #[arg(long)]
    pub seed: Option<u64>,
    /// First day, RFC 3339 (default: a fixed date, for reproducible files).
    #[arg(long)]
    pub start: Option<String>,
}

/// `lienwatch demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the demo writes its fleet, alerts and archive (its `demo/` and `archive/`
    /// folders are replaced on every run).
    #[arg(long, default_value = "./lienwatch-data")]
    pub dir: PathBuf,
    /// Vehicles in the demo fleet.
    #[arg(long, default_value_t = 40)]
    pub vehicles: usize,
    /// Days of data.
    #[arg(long, default_value_t = 6)]
    pub days: u32,
    /// Messages per second the simulator publishes. The demo squeezes days of a fleet into
    /// seconds, and a broker keeps order only within a topic (one device): much faster, and
    /// its interleaving of devices spans more event time than the reorder window.
    #[arg(long, default_value_t = 5_000.0)]
    pub rate: f64,
}

/// Parses `args` (the first is the program name) and runs the command.
pub fn run_from(args: Vec<String>) -> anyhow::Result<()> {
    run(Cli::parse_from(args))
}

/// Runs a parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Run(args) => run_service(args),
        Command::Replay(args) => run_replay(args),
        Command::Check(args) => run_check(&args.config),
        Command::Simulate(args) => run_simulate(args),
        Command::Demo(args) => run_demo(args),
    }
}

fn run_replay(args: ReplayArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(v) = args.vehicles {
        config.registry.vehicles_csv = Some(v);
    }
    if let Some(f) = args.fences {
        config.registry.fences_geojson = Some(f);
    }
    if let Some(a) = args.alerts_out {
        config.alerts.jsonl_path = Some(a);
    }
    if let Some(f) = args.features_out {
        config.features.jsonl_path = Some(f);
    }
    if let Some(root) = args.archive {
        config.archive.url = root;
        config.archive.enabled = true;
    }
    if args.no_archive {
        config.archive.enabled = false;
    }
    if let Some(w) = args.workers {
        config.pipeline.workers = w;
    }
    config.validate()?;
    let summary = replay(&config, args.input)?;
    if let Some(path) = args.summary_out {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, serde_json::to_vec_pretty(&summary)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    // With alerts or features on stdout the summary goes to stderr, keeping stdout JSON Lines.
    let stdout = Some(Path::new("-"));
    if config.alerts.jsonl_path.as_deref() == stdout
        || config.features.jsonl_path.as_deref() == stdout
    {
        eprint!("{}", summary.render());
    } else {
        print!("{}", summary.render());
    }
    Ok(())
}

fn run_service(args: RunArgs) -> anyhow::Result<()> {
    let mut config = Config::load(args.config.as_deref())?;
    if let Some(w) = args.workers {
        config.pipeline.workers = w;
    }
    if let Some(p) = args.process {
        config.pipeline.process = p;
    }
    if let Some(path) = &args.hostfile {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("hostfile {}", path.display()))?;
        config.pipeline.hosts = text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
            .map(str::to_owned)
            .collect();
    }
    config.validate()?;
    let summary = serve(&config, ServeOptions::default())?;
    tracing::info!(
        messages = summary.messages,
        accepted = summary.accepted,
        duplicates = summary.duplicates,
        rejects = summary.rejects_total,
        alerts = summary.alerts_total,
        features = summary.features,
        archive_files = summary.archive.files,
        "lienwatch stopped cleanly"
    );
    print!("{}", summary.render());
    Ok(())
}

fn run_check(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(Some(path))?;
    let (registry, fences) = load_reference(&config)?;
    println!("config {} is valid", path.display());
    println!(
        "registry: {} vehicles, {} devices",
        registry.vehicle_count(),
        registry.device_count()
    );
    println!(
        "fences: {} permitted, {} risk",
        fences.permitted_count(),
        fences.risk_count()
    );
    // A double pledge in the registry itself: `run` raises duplicate_collateral for each of
    // these vehicles at its first reading.
    for (vin, vehicles) in registry.shared_vins() {
        let owners: Vec<String> = vehicles
            .iter()
            .map(|v| format!("{} (loan {})", v.vehicle_id, v.loan_id))
            .collect();
        println!(
            "warning: VIN {vin} is registered under more than one loan: {}",
            owners.join(", ")
        );
    }
    println!(
        "workers: {}; archive: {}",
        config.pipeline.workers,
        if config.archive.enabled {
            config.archive.url.as_str()
        } else {
            "off"
        }
    );
    let m = &crate::security::redacted(&config).mqtt;
    println!(
        "run: MQTT {} (protocol level {}), topics {:?}, QoS {}, {}",
        m.url,
        m.protocol_version,
        m.topics,
        m.qos,
        m.shared_group
            .as_deref()
            .map_or("no shared group".to_owned(), |g| format!(
                "shared group {g}"
            ))
    );
    let file = |path: &Option<PathBuf>| {
        path.as_ref()
            .map_or("none".to_owned(), |p| p.display().to_string())
    };
    println!(
        "JSON Lines: alerts {}, daily features {}",
        file(&config.alerts.jsonl_path),
        file(&config.features.jsonl_path)
    );
    if config.kafka.enabled {
        println!(
            "run: alerts to Kafka {} topic {}, daily features to topic {}",
            config.kafka.brokers, config.kafka.alerts_topic, config.kafka.features_topic
        );
    } else {
        println!("run: Kafka off");
    }
    if config.http.enabled {
        println!("run: /metrics and /health on {}", config.http.listen);
    }
    for warning in crate::security::warnings(&config) {
        println!("warning: {warning}");
    }
    println!(
        "\n# effective configuration (secrets blanked)\n{}",
        toml::to_string(&crate::security::redacted(&config))?
    );
    Ok(())
}

fn sim_options(
    vehicles: Option<usize>,
    days: Option<u32>,
    seed: Option<u64>,
    start: Option<&str>,
) -> anyhow::Result<SimOptions> {
    let mut options = SimOptions::default();
    if let Some(v) = vehicles {
        options.vehicles = v;
    }
    if let Some(d) = days {
        options.days = d;
    }
    if let Some(s) = seed {
        options.seed = s;
    }
    if let Some(start) = start {
        options.start_ms = schemas::time::parse_rfc3339_ms(start)
            .with_context(|| format!("--start {start:?} is not RFC 3339"))?;
    }
    Ok(options)
}

fn run_simulate(args: SimulateArgs) -> anyhow::Result<()> {
    let messages = match &args.from {
        Some(file) => file.clone(),
        None => generate(&args)?,
    };
    if let Some(url) = &args.mqtt {
        let options = PublishOptions {
            mqtt: MqttSettings {
                url: url.clone(),
                client_id: format!("lienwatch-sim-{}", std::process::id()),
                qos: args.qos,
                ..MqttSettings::default()
            },
            topic_prefix: args.topic_prefix.clone(),
            rate_per_s: Some(args.rate).filter(|r| *r > 0.0),
        };
        let lines = read_messages(&messages, &options.topic_prefix)?;
        println!(
            "publishing {} messages to {url} on {}/<device_id> at {}",
            lines.len(),
            options.topic_prefix,
            options
                .rate_per_s
                .map_or("full speed".to_owned(), |r| format!("{r} msg/s"))
        );
        let started = std::time::Instant::now();
        let sent = publish(&options, lines)?;
        let secs = started.elapsed().as_secs_f64();
        println!(
            "published {sent} messages in {secs:.1} s ({:.0} msg/s)",
            sent as f64 / secs.max(1e-9)
        );
    }
    Ok(())
}

/// Generates the fleet of `args`; returns the messages file.
fn generate(args: &SimulateArgs) -> anyhow::Result<PathBuf> {
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("lienwatch-data/sim/fleet.jsonl"));
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let options = sim_options(args.vehicles, args.days, args.seed, args.start.as_deref())?;
    let outputs = SimOutputs::beside(&out);
    let summary = simulate(&options, &outputs)?;
    println!(
        "wrote {} lines ({} readings, {} duplicates, {} malformed) to {}",
        summary.lines,
        summary.readings,
        summary.duplicates,
        summary.bad_lines.values().sum::<u64>(),
        outputs.messages.display()
    );
    println!(
        "truth {}, registry {}, fences {}",
        outputs.truth.display(),
        outputs.vehicles_csv.display(),
        outputs.fences.display()
    );
    for (kind, n) in &summary.incidents {
        println!("  {kind:<22} {n}");
    }
    Ok(out)
}

fn run_demo(args: DemoArgs) -> anyhow::Result<()> {
    let sim = sim_options(Some(args.vehicles), Some(args.days), None, None)?;
    demo(&DemoOptions {
        dir: args.dir,
        sim,
        rate_per_s: args.rate,
    })?;
    Ok(())
}
