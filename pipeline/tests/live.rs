//! `lienwatch run` end to end through the real servers that `scripts/services` starts on
//! loopback: Mosquitto (MQTT), tansu (Kafka protocol) and moto (S3).
//!
//! A simulated fleet is published to Mosquitto; the service (the real binary, as a child
//! process) must raise exactly the alerts `lienwatch replay` raises on the same file, deliver
//! them to Kafka, archive every accepted message exactly once in S3 (read back by DuckDB),
//! count the same rejects in `/metrics`, and lose nothing it acknowledged across SIGTERM.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

use connectors::MqttSettings;
use pipeline::publish::{PublishOptions, publish, read_messages};
use pipeline::simulate::{SimOptions, SimOutputs, simulate};

const MQTT: &str = "127.0.0.1:1883";
const KAFKA: &str = "127.0.0.1:9092";
const S3: &str = "127.0.0.1:9000";
const BUCKET: &str = "lienwatch";

/// Fails with the command that starts the servers when one is not listening.
fn require_services() -> Result<()> {
    for (name, addr) in [
        ("Mosquitto", MQTT),
        ("Kafka (tansu)", KAFKA),
        ("S3 (moto)", S3),
    ] {
        let addr: SocketAddr = addr.parse()?;
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).with_context(|| {
            format!("{name} is not listening on {addr}: run `scripts/services start` (scripts/test does)")
        })?;
    }
    Ok(())
}

/// A name no other test run uses (topics, client ids, object prefixes).
fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{label}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn fleet(dir: &Path, vehicles: usize, days: u32, seed: u64) -> Result<SimOutputs> {
    let outputs = SimOutputs::beside(&dir.join("fleet.jsonl"));
    let options = SimOptions {
        vehicles,
        days,
        seed,
        ..SimOptions::default()
    };
    simulate(&options, &outputs)?;
    Ok(outputs)
}

/// What a live test names uniquely, and the MQTT broker it uses.
struct Names {
    mqtt: String,
    /// `mqtt` or `mqtts`.
    scheme: &'static str,
    /// CA of an `mqtts` broker.
    ca_file: Option<PathBuf>,
    topic_prefix: String,
    client_id: String,
    kafka_topic: String,
    features_topic: String,
    s3_prefix: String,
}

impl Names {
    fn new(label: &str) -> Self {
        let id = unique(label);
        Self {
            mqtt: MQTT.to_owned(),
            scheme: "mqtt",
            ca_file: None,
            topic_prefix: format!("lwtest/{id}"),
            client_id: id.clone(),
            kafka_topic: format!("lienwatch.alerts.{id}"),
            features_topic: format!("lienwatch.features.{id}"),
            s3_prefix: format!("tests/{id}"),
        }
    }
}

fn write_config(
    dir: &Path,
    sim: &SimOutputs,
    names: &Names,
    http_port: u16,
    protocol_version: u8,
) -> Result<PathBuf> {
    write_config_with(dir, sim, names, http_port, protocol_version, "", "")
}

/// A config with `pipeline_extra` and `mqtt_extra` keys added to those sections.
fn write_config_with(
    dir: &Path,
    sim: &SimOutputs,
    names: &Names,
    http_port: u16,
    protocol_version: u8,
    pipeline_extra: &str,
    mqtt_extra: &str,
) -> Result<PathBuf> {
    let path = dir.join(format!("run-{http_port}.toml"));
    let text = format!(
        r#"
[pipeline]
workers = 2
{pipeline_extra}

[registry]
vehicles_csv = "{vehicles}"
fences_geojson = "{fences}"

[alerts]
jsonl_path = "{alerts}"

[archive]
url = "s3://{BUCKET}/{prefix}"
s3_endpoint = "http://{S3}"
s3_region = "us-east-1"

[mqtt]
url = "{scheme}://{mqtt}"
client_id = "{client}"
{ca}
topics = ["{topics}/+"]
qos = 1
protocol_version = {protocol_version}
{mqtt_extra}

[kafka]
brokers = "{KAFKA}"
alerts_topic = "{kafka_topic}"
features_topic = "{features_topic}"

[http]
listen = "127.0.0.1:{http_port}"
"#,
        vehicles = sim.vehicles_csv.display(),
        fences = sim.fences.display(),
        alerts = dir.join(format!("run-alerts-{http_port}.jsonl")).display(),
        prefix = names.s3_prefix,
        client = names.client_id,
        mqtt = names.mqtt,
        scheme = names.scheme,
        ca = names
            .ca_file
            .as_ref()
            .map(|f| format!("ca_file = \"{}\"", f.display()))
            .unwrap_or_default(),
        topics = names.topic_prefix,
        kafka_topic = names.kafka_topic,
        features_topic = names.features_topic,
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The service as a child process.
struct Service {
    child: Child,
    http: SocketAddr,
    log: PathBuf,
    stdout: PathBuf,
}

impl Service {
    fn start(config: &Path, http_port: u16, log: PathBuf) -> Result<Self> {
        let mut service = Self::spawn(config, http_port, log)?;
        service.wait_healthy()?;
        Ok(service)
    }

    /// Starts the process without waiting for it to be healthy.
    fn spawn(config: &Path, http_port: u16, log: PathBuf) -> Result<Self> {
        let stderr = std::fs::File::create(&log)?;
        let stdout = log.with_extension("out");
        let child = Command::new(env!("CARGO_BIN_EXE_lienwatch"))
            .args(["run", "--config"])
            .arg(config)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "testtest")
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(&stdout)?)
            .stderr(stderr)
            .spawn()?;
        Ok(Self {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], http_port)),
            log,
            stdout,
        })
    }

    fn wait_healthy(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("lienwatch run exited with {status}:\n{}", self.log_text());
            }
            if let Ok((200, _)) = http_get(self.http, "/health") {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("lienwatch run not healthy after 60 s:\n{}", self.log_text())
    }

    fn metrics(&self) -> Result<Metrics> {
        let (code, body) = http_get(self.http, "/metrics")?;
        ensure!(code == 200, "/metrics answered {code}");
        Ok(Metrics::parse(&body))
    }

    /// Waits until the service has taken `n` messages into the dataflow.
    fn wait_ingested(&self, n: u64) -> Result<Metrics> {
        self.wait_for(|m| m.get("lienwatch_messages_total") >= n as f64)
            .with_context(|| format!("waiting for {n} messages"))
    }

    /// Waits (up to 120 s) until the metrics satisfy `done`; returns them.
    fn wait_for(&self, done: impl Fn(&Metrics) -> bool) -> Result<Metrics> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let m = self.metrics()?;
            if done(&m) {
                return Ok(m);
            }
            if Instant::now() > deadline {
                bail!(
                    "not reached after 120 s; messages {}, rejects {:?}\n{}",
                    m.get("lienwatch_messages_total"),
                    m.by_label("lienwatch_rejects_total", "reason"),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then waits for the exit; the exit status and the summary printed.
    fn terminate(self) -> Result<(ExitStatus, String)> {
        self.sigterm()?;
        self.wait_exit()
    }

    fn sigterm(&self) -> Result<()> {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill").args(["-TERM", &pid]).status()?;
        ensure!(killed.success(), "kill -TERM {pid} failed");
        Ok(())
    }

    /// Waits for the exit after a SIGTERM; the exit status and the summary printed.
    fn wait_exit(mut self) -> Result<(ExitStatus, String)> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(status) = self.child.try_wait()? {
                let summary = std::fs::read_to_string(&self.stdout).unwrap_or_default();
                ensure!(
                    status.success(),
                    "lienwatch run exited with {status}:\n{}",
                    self.log_text()
                );
                return Ok((status, summary));
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!(
                    "lienwatch run did not exit 90 s after SIGTERM:\n{}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no status code")?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// Prometheus text, as `name{labels}` → value.
struct Metrics(BTreeMap<String, f64>);

impl Metrics {
    fn parse(text: &str) -> Self {
        let map = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_owned(), value.parse().ok()?))
            })
            .collect();
        Self(map)
    }

    fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }

    /// `metric{label="x"}` values by label value.
    fn by_label(&self, metric: &str, label: &str) -> BTreeMap<String, u64> {
        let prefix = format!("{metric}{{{label}=\"");
        self.0
            .iter()
            .filter_map(|(k, v)| {
                let rest = k.strip_prefix(&prefix)?;
                let value = rest.strip_suffix("\"}")?;
                Some((value.to_owned(), *v as u64))
            })
            .collect()
    }
}

fn publish_file(file: &Path, names: &Names, rate: f64) -> Result<u64> {
    publish_messages(read_messages(file, &names.topic_prefix)?, names, rate)
}

fn publish_messages(
    messages: Vec<(String, bytes::Bytes)>,
    names: &Names,
    rate: f64,
) -> Result<u64> {
    let options = PublishOptions {
        mqtt: MqttSettings {
            url: format!("{}://{}", names.scheme, names.mqtt),
            client_id: format!("{}-pub", names.client_id),
            qos: 1,
            ca_file: names.ca_file.clone(),
            ..MqttSettings::default()
        },
        topic_prefix: names.topic_prefix.clone(),
        rate_per_s: Some(rate),
    };
    publish(&options, messages)
}

/// Replays `sim`'s messages in process: the alerts (JSON) and the summary.
fn replay(sim: &SimOutputs, dir: &Path) -> Result<(Vec<Value>, Value)> {
    let alerts = dir.join("replay-alerts.jsonl");
    let summary = dir.join("replay-summary.json");
    pipeline::cli::run_from(
        [
            "lienwatch",
            "replay",
            "--input",
            &sim.messages.display().to_string(),
            "--vehicles",
            &sim.vehicles_csv.display().to_string(),
            "--fences",
            &sim.fences.display().to_string(),
            "--alerts-out",
            &alerts.display().to_string(),
            "--features-out",
            &dir.join("replay-features.jsonl").display().to_string(),
            "--archive",
            &dir.join("replay-archive").display().to_string(),
            "--summary-out",
            &summary.display().to_string(),
            "-w",
            "2",
        ]
        .map(String::from)
        .to_vec(),
    )?;
    let values = tests::read_alert_values(&alerts)?;
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(&summary)?)?;
    Ok((values, summary))
}

/// An alert without `detected_at` (wall-clock time of emission), keyed by id and phase;
/// fails on an (id, phase) given twice.
fn comparable(alerts: &[Value]) -> Result<BTreeMap<(String, String), Value>> {
    let map: BTreeMap<_, _> = alerts
        .iter()
        .map(|a| {
            let mut a = a.clone();
            if let Some(o) = a.as_object_mut() {
                o.remove("detected_at");
            }
            let key = (
                a["alert_id"].as_str().unwrap_or_default().to_owned(),
                a["phase"].as_str().unwrap_or_default().to_owned(),
            );
            (key, a)
        })
        .collect();
    ensure!(
        map.len() == alerts.len(),
        "{} alerts given twice",
        alerts.len() - map.len()
    );
    Ok(map)
}

/// Reads every message of `topic` from the beginning until `expected` arrived (or 60 s):
/// (key, `alert_id` header, value).
fn kafka_messages(topic: &str, expected: usize) -> Result<Vec<(String, String, Value)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", KAFKA)
        .set("group.id", unique("lienwatch-test"))
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .create()?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map(|t| t.partitions().len())
        .context("topic not in the metadata")?;
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(topic, p as i32, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    // Then two seconds more, so that extra (duplicate) deliveries show.
    let mut linger: Option<Instant> = None;
    while Instant::now() < deadline && linger.is_none_or(|l| Instant::now() < l) {
        if out.len() >= expected && linger.is_none() {
            linger = Some(Instant::now() + Duration::from_secs(2));
        }
        let Some(message) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let message = message?;
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        let alert_id = message
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "alert_id"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let value: Value = serde_json::from_slice(message.payload().unwrap_or_default())?;
        out.push((key, alert_id, value));
    }
    Ok(out)
}

/// DuckDB over the S3 server (httpfs from the `.venv`), as an analyst would read it.
fn duckdb_s3(sql: &str) -> Result<Vec<Value>> {
    let setup = format!(
        "import duckdb_extension_httpfs as ext, pathlib\n\
         p = next(pathlib.Path(ext.__file__).parent.glob('extensions/*/httpfs.duckdb_extension'))\n\
         con.execute(f\"LOAD '{{p}}'\")\n\
         con.execute(\"CREATE SECRET (TYPE s3, KEY_ID 'test', SECRET 'testtest', REGION 'us-east-1', ENDPOINT '{S3}', URL_STYLE 'path', USE_SSL false)\")\n"
    );
    tests::duckdb_rows_with(&setup, sql)
}

/// Rows of (device_id, ts, seq, received_at?) identifying each archived reading.
fn telemetry_keys(root: &str) -> Result<Vec<Value>> {
    let sql = format!(
        "SELECT device_id, epoch_ms(ts), seq, count(*) FROM read_parquet('{root}/telemetry/**/*.parquet', hive_partitioning=1) GROUP BY ALL ORDER BY ALL"
    );
    if root.starts_with("s3://") {
        duckdb_s3(&sql)
    } else {
        tests::duckdb_rows(&sql)
    }
}

/// The S3 archive under `names` holds every reading replay accepted, exactly as replay's
/// local archive in `dir` does (the same (device, ts, seq) rows, each as often); `what`
/// names the run(s) in the failure.
fn archive_matches_replay(
    dir: &Path,
    names: &Names,
    replay_summary: &Value,
    what: &str,
) -> Result<()> {
    let s3_rows = telemetry_keys(&format!("s3://{BUCKET}/{}", names.s3_prefix))?;
    let local_rows = telemetry_keys(&dir.join("replay-archive").display().to_string())?;
    let s3_total: u64 = s3_rows.iter().filter_map(|r| r[3].as_u64()).sum();
    ensure!(
        s3_total == replay_summary["accepted"].as_u64().unwrap_or_default(),
        "{s3_total} readings archived by {what}, replay accepted {}",
        replay_summary["accepted"]
    );
    ensure!(
        s3_rows == local_rows,
        "the archive of {what} differs from replay's"
    );
    Ok(())
}

#[test]
fn run_raises_replays_alerts_delivers_them_to_kafka_and_archives_to_s3() -> Result<()> {
    require_services()?;
    let dir = tempfile::tempdir()?;
    let sim = fleet(dir.path(), 24, 4, 21)?;
    let (replay_alerts, replay_summary) = replay(&sim, dir.path())?;
    ensure!(!replay_alerts.is_empty(), "the fleet raised no alerts");

    let names = Names::new("e2e");
    let http_port = free_port()?;
    let config = write_config(dir.path(), &sim, &names, http_port, 5)?;
    let service = Service::start(&config, http_port, dir.path().join("run.log"))?;
    let published = publish_file(&sim.messages, &names, 4000.0)?;
    service.wait_ingested(published)?;
    // Rejects are counted once their epoch is processed, a moment after ingest.
    let want_rejects: BTreeMap<String, u64> =
        serde_json::from_value(replay_summary["rejects"].clone())?;
    let metrics =
        service.wait_for(|m| m.by_label("lienwatch_rejects_total", "reason") == want_rejects)?;
    service.terminate()?;

    // Alerts: Kafka holds exactly replay's alerts, keyed by vehicle, with the id header.
    let kafka = kafka_messages(&names.kafka_topic, replay_alerts.len())?;
    let kafka_values: Vec<Value> = kafka.iter().map(|(_, _, v)| v.clone()).collect();
    for (key, alert_id, value) in &kafka {
        ensure!(
            key == value["vehicle_id"].as_str().unwrap_or_default(),
            "key {key} is not the vehicle of {value}"
        );
        ensure!(
            alert_id == value["alert_id"].as_str().unwrap_or_default(),
            "header {alert_id} is not the id of {value}"
        );
    }
    let (want, got) = (comparable(&replay_alerts)?, comparable(&kafka_values)?);
    ensure!(
        kafka.len() == replay_alerts.len(),
        "{} alerts in Kafka, {} from replay",
        kafka.len(),
        replay_alerts.len()
    );
    let missing: Vec<_> = want.keys().filter(|k| !got.contains_key(*k)).collect();
    let extra: Vec<_> = got.keys().filter(|k| !want.contains_key(*k)).collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "missing from Kafka {missing:?}, not in replay {extra:?}"
    );
    for (key, alert) in &want {
        ensure!(
            got[key] == *alert,
            "alert {key:?} differs:\nreplay {alert}\nrun    {}",
            got[key]
        );
    }
    // The JSON Lines sink of the service holds the same alerts.
    let jsonl = comparable(&tests::read_alert_values(
        &dir.path().join(format!("run-alerts-{http_port}.jsonl")),
    )?)?;
    ensure!(
        jsonl == want,
        "the service's JSON Lines alerts differ from replay's"
    );

    // Daily features: Kafka holds replay's rows, keyed by vehicle. Revisions depend on how
    // late data fell into epochs, so the last row of each vehicle-day is compared.
    let replay_features = tests::read_alert_values(&dir.path().join("replay-features.jsonl"))?;
    ensure!(!replay_features.is_empty(), "replay emitted no features");
    let kafka_features = kafka_messages(&names.features_topic, replay_features.len())?;
    let last_rows = |rows: &mut dyn Iterator<Item = &Value>| {
        let mut last = BTreeMap::new();
        for row in rows {
            let mut row = row.clone();
            let key = (row["vehicle_id"].to_string(), row["date"].to_string());
            if let Some(o) = row.as_object_mut() {
                o.remove("revision");
            }
            last.insert(key, row);
        }
        last
    };
    for (key, _, value) in &kafka_features {
        ensure!(key == value["vehicle_id"].as_str().unwrap_or_default());
    }
    let want_features = last_rows(&mut replay_features.iter());
    let got_features = last_rows(&mut kafka_features.iter().map(|(_, _, v)| v));
    ensure!(
        got_features == want_features,
        "features in Kafka ({} vehicle-days) differ from replay's ({})",
        got_features.len(),
        want_features.len()
    );

    // Counters: /metrics counted the messages and rejects replay counted.
    ensure!(
        metrics.get("lienwatch_messages_total") as u64
            == replay_summary["messages"].as_u64().unwrap_or_default(),
        "/metrics counted {} messages, replay {}",
        metrics.get("lienwatch_messages_total"),
        replay_summary["messages"]
    );

    // Archive: every accepted reading exactly once in S3, the same rows as replay's local
    // archive, readable by DuckDB with the same schema.
    let s3_root = format!("s3://{BUCKET}/{}", names.s3_prefix);
    let local_root = dir.path().join("replay-archive").display().to_string();
    archive_matches_replay(dir.path(), &names, &replay_summary, "the service")?;
    for dataset in ["telemetry", "alerts", "rejects", "features_daily"] {
        let describe = |root: &str| {
            format!(
                "DESCRIBE SELECT * FROM read_parquet('{root}/{dataset}/**/*.parquet', hive_partitioning=1)"
            )
        };
        let s3_schema = duckdb_s3(&describe(&s3_root))?;
        let local_schema = tests::duckdb_rows(&describe(&local_root))?;
        ensure!(
            s3_schema == local_schema,
            "{dataset}: S3 schema {s3_schema:?} differs from {local_schema:?}"
        );
    }
    let want_rejects: BTreeMap<String, u64> =
        serde_json::from_value(replay_summary["rejects"].clone())?;
    let s3_rejects = duckdb_s3(&format!(
        "SELECT reason, count(*) FROM read_parquet('{s3_root}/rejects/**/*.parquet', hive_partitioning=1) GROUP BY ALL ORDER BY ALL"
    ))?;
    let want_reject_rows: Vec<Value> = want_rejects
        .iter()
        .map(|(r, n)| serde_json::json!([r, n]))
        .collect();
    ensure!(
        s3_rejects == want_reject_rows,
        "rejects in S3 {s3_rejects:?}, replay {want_reject_rows:?}"
    );
    Ok(())
}

/// A number after `label ` in a summary printed by `lienwatch run`.
fn summary_number(summary: &str, label: &str) -> Result<u64> {
    let words: Vec<&str> = summary.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == label)
        .and_then(|w| w[1].trim_end_matches(',').parse().ok())
        .with_context(|| format!("no `{label} N` in the summary:\n{summary}"))
}

#[test]
fn sigterm_mid_stream_loses_nothing_acknowledged_and_a_restart_takes_the_rest() -> Result<()> {
    require_services()?;
    let dir = tempfile::tempdir()?;
    let sim = fleet(dir.path(), 8, 3, 33)?;
    let (_, replay_summary) = replay(&sim, dir.path())?;
    let names = Names::new("sigterm");
    let messages = read_messages(&sim.messages, &names.topic_prefix)?.len() as u64;

    // MQTT 3.1.1 with a persistent session: what the first process does not take waits at
    // the broker for the second.
    let first_port = free_port()?;
    let config = write_config(dir.path(), &sim, &names, first_port, 4)?;
    let first = Service::start(&config, first_port, dir.path().join("first.log"))?;
    let publisher = {
        let (file, topic_prefix, client_id) = (
            sim.messages.clone(),
            names.topic_prefix.clone(),
            names.client_id.clone(),
        );
        std::thread::spawn(move || {
            let names = Names {
                mqtt: MQTT.to_owned(),
                scheme: "mqtt",
                ca_file: None,
                topic_prefix,
                client_id,
                kafka_topic: String::new(),
                features_topic: String::new(),
                s3_prefix: String::new(),
            };
            // Slow enough that Mosquitto's default queue for an offline session (1000
            // messages) holds what comes between the two processes.
            publish_file(&file, &names, 400.0)
        })
    };
    first.wait_ingested(messages / 3)?;
    let (_, first_summary) = first.terminate()?;
    // Everything the first process acknowledged (took in) it processed and archived.
    let taken = summary_number(&first_summary, "messages")?;
    let accepted = summary_number(&first_summary, "accepted")?;
    ensure!(
        taken >= messages / 3 && taken < messages,
        "the first process took {taken} of {messages}"
    );
    ensure!(
        summary_number(&first_summary, "archive")? > 0 || accepted == 0,
        "nothing archived:\n{first_summary}"
    );
    ensure!(
        first_summary.contains(&format!("{accepted} telemetry rows")),
        "the first process accepted {accepted} readings but archived otherwise:\n{first_summary}"
    );

    let second_port = free_port()?;
    let config = write_config(dir.path(), &sim, &names, second_port, 4)?;
    let second = Service::start(&config, second_port, dir.path().join("second.log"))?;
    let published = publisher
        .join()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    ensure!(published == messages);
    second.wait_ingested(messages - taken)?;
    let (_, second_summary) = second.terminate()?;
    ensure!(
        taken + summary_number(&second_summary, "messages")? == messages,
        "first took {taken}, second:\n{second_summary}"
    );

    // Together: every accepted reading exactly once, as replay archives them.
    archive_matches_replay(dir.path(), &names, &replay_summary, "both runs")
}

#[test]
fn a_cluster_of_two_processes_splits_the_stream_and_archives_every_reading_once() -> Result<()> {
    require_services()?;
    let dir = tempfile::tempdir()?;
    let sim = fleet(dir.path(), 12, 3, 44)?;
    let (replay_alerts, replay_summary) = replay(&sim, dir.path())?;
    let names = Names::new("cluster");
    let messages = read_messages(&sim.messages, &names.topic_prefix)?.len() as u64;
    let hosts = format!(
        "hosts = [\"127.0.0.1:{}\", \"127.0.0.1:{}\"]",
        free_port()?,
        free_port()?
    );
    let group = format!("shared_group = \"{}\"", names.client_id);
    let mut services = Vec::new();
    let mut ports = Vec::new();
    for process in 0..2 {
        let port = free_port()?;
        let extra = format!("{hosts}\nprocess = {process}");
        let config = write_config_with(dir.path(), &sim, &names, port, 5, &extra, &group)?;
        let log = dir.path().join(format!("process-{process}.log"));
        services.push(Service::spawn(&config, port, log)?);
        ports.push(port);
    }
    // The processes connect to each other before either takes input.
    for service in &mut services {
        service.wait_healthy()?;
    }
    let published = publish_file(&sim.messages, &names, 3000.0)?;
    ensure!(published == messages);
    // Both processes took messages, and together all of them.
    let deadline = Instant::now() + Duration::from_secs(120);
    let taken = loop {
        let counts: Vec<f64> = services
            .iter()
            .map(|s| s.metrics().map(|m| m.get("lienwatch_messages_total")))
            .collect::<Result<_>>()?;
        if counts.iter().sum::<f64>() >= messages as f64 || Instant::now() > deadline {
            break counts;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    ensure!(
        taken.iter().sum::<f64>() as u64 == messages,
        "taken {taken:?} of {messages}"
    );
    ensure!(
        taken.iter().all(|t| *t > 0.0),
        "one process took nothing: {taken:?}"
    );
    // A cluster stops together: every process drains, then the dataflow completes.
    for service in &services {
        service.sigterm()?;
    }
    for service in services {
        service.wait_exit()?;
    }

    // Every accepted reading archived exactly once over both processes, as replay does.
    archive_matches_replay(dir.path(), &names, &replay_summary, "the cluster")?;
    // Each vehicle is processed by one worker of the cluster: no alert comes twice, and the
    // alerts of a vehicle come from one process (but `duplicate_collateral`, which the worker
    // owning the VIN raises). (The broker hands a device's messages to
    // either process, so readings can arrive out of order across the two sessions; with
    // days of data published in seconds that may make a few readings late, so alerts are not
    // compared one by one with replay's here.)
    let mut seen = BTreeMap::new();
    let mut owner: BTreeMap<String, u16> = BTreeMap::new();
    for port in &ports {
        let alerts =
            tests::read_alert_values(&dir.path().join(format!("run-alerts-{port}.jsonl")))?;
        for a in &alerts {
            let key = (a["alert_id"].to_string(), a["phase"].to_string());
            ensure!(seen.insert(key, *port).is_none(), "alert {a} raised twice");
            if a["kind"] == "duplicate_collateral" {
                continue;
            }
            let vehicle = a["vehicle_id"].as_str().unwrap_or_default().to_owned();
            ensure!(
                *owner.entry(vehicle).or_insert(*port) == *port,
                "vehicle of {a} handled by two processes"
            );
        }
    }
    ensure!(!seen.is_empty() && !replay_alerts.is_empty());
    Ok(())
}

/// A Mosquitto of the test's own, so the test can stop and restart it.
struct PrivateBroker(Child);

impl PrivateBroker {
    /// Starts Mosquitto on `port` with no persistence: a restart loses every session.
    fn start(dir: &Path, port: u16) -> Result<Self> {
        Self::start_with(dir, port, "")
    }

    /// Like [`PrivateBroker::start`] with more listener settings (TLS). It stays root, so it
    /// can read key files in the test's private directory.
    fn start_with(dir: &Path, port: u16, listener: &str) -> Result<Self> {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{listener}allow_anonymous true\npersistence false\nmax_queued_messages 0\nlog_dest none\nuser root\n"
            ),
        )?;
        let child = Command::new("mosquitto").arg("-c").arg(&conf).spawn()?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            ensure!(
                Instant::now() < deadline,
                "mosquitto did not open port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self(child))
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn reconnects_and_resubscribes_when_the_broker_restarts_and_lost_the_session() -> Result<()> {
    require_services()?;
    let dir = tempfile::tempdir()?;
    let sim = fleet(dir.path(), 8, 3, 55)?;
    let (_, replay_summary) = replay(&sim, dir.path())?;
    let port = free_port()?;
    let broker = PrivateBroker::start(dir.path(), port)?;
    let mut names = Names::new("reconnect");
    names.mqtt = format!("127.0.0.1:{port}");
    let http_port = free_port()?;
    let config = write_config(dir.path(), &sim, &names, http_port, 5)?;
    let service = Service::start(&config, http_port, dir.path().join("run.log"))?;
    let mut messages = read_messages(&sim.messages, &names.topic_prefix)?;
    let total = messages.len() as u64;
    let second = messages.split_off(messages.len() / 2);
    let first = messages.len() as u64;
    publish_messages(messages, &names, 0.0)?;
    service.wait_ingested(first)?;

    // The broker goes away: the service notices, says so, and keeps trying.
    drop(broker);
    let down = service.wait_for(|m| {
        m.get("lienwatch_mqtt_connected") == 0.0 && m.get("lienwatch_mqtt_reconnects_total") > 0.0
    })?;
    ensure!(down.get("lienwatch_messages_total") as u64 == first);
    let (code, body) = http_get(service.http, "/health")?;
    ensure!(
        code == 503 && body.contains("degraded"),
        "/health while down: {code} {body}"
    );

    // It comes back without our session: the service reconnects and subscribes again.
    let _broker = PrivateBroker::start(dir.path(), port)?;
    service.wait_for(|m| m.get("lienwatch_mqtt_connected") == 1.0)?;
    ensure!(http_get(service.http, "/health")?.0 == 200);
    publish_messages(second, &names, 0.0)?;
    service.wait_ingested(total)?;
    service.terminate()?;

    archive_matches_replay(
        dir.path(),
        &names,
        &replay_summary,
        "the reconnected service",
    )
}

/// A test CA and a server certificate for 127.0.0.1, made with the openssl command line.
fn test_certificates(dir: &Path) -> Result<()> {
    let run = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()?;
        ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &[
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=lienwatch test CA",
        ],
    ]
    .concat())?;
    run(&[
        &["req"][..],
        &ec,
        &[
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    ]
    .concat())?;
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ])
}

#[test]
fn reads_mqtt_over_tls_from_mosquitto_with_a_test_ca() -> Result<()> {
    require_services()?;
    let dir = tempfile::tempdir()?;
    test_certificates(dir.path())?;
    let sim = fleet(dir.path(), 6, 3, 66)?;
    let (_, replay_summary) = replay(&sim, dir.path())?;
    let port = free_port()?;
    let tls = format!(
        "cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\n",
        d = dir.path().display()
    );
    let _broker = PrivateBroker::start_with(dir.path(), port, &tls)?;
    let mut names = Names::new("tls");
    names.mqtt = format!("127.0.0.1:{port}");
    names.scheme = "mqtts";
    names.ca_file = Some(dir.path().join("ca.pem"));
    let http_port = free_port()?;
    let config = write_config(dir.path(), &sim, &names, http_port, 5)?;
    let service = Service::start(&config, http_port, dir.path().join("run.log"))?;
    let published = publish_file(&sim.messages, &names, 0.0)?;
    service.wait_ingested(published)?;
    let (_, summary) = service.terminate()?;
    let accepted = summary_number(&summary, "accepted")?;
    ensure!(
        accepted == replay_summary["accepted"].as_u64().unwrap_or_default(),
        "over TLS: {accepted} accepted, replay {}:\n{summary}",
        replay_summary["accepted"]
    );

    // Without the test CA the broker's certificate is not trusted: the service never gets
    // healthy, and says why.
    let mut untrusted = Names::new("tls-untrusted");
    untrusted.mqtt = names.mqtt.clone();
    untrusted.scheme = "mqtts";
    let http_port = free_port()?;
    let config = write_config(dir.path(), &sim, &untrusted, http_port, 5)?;
    let log = dir.path().join("untrusted.log");
    let service = Service::spawn(&config, http_port, log.clone())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while !std::fs::read_to_string(&log)?.contains("MQTT connection failed") {
        ensure!(
            Instant::now() < deadline,
            "no connection error logged:\n{}",
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (code, _) = http_get(service.http, "/health")?;
    ensure!(
        code == 503,
        "/health answered {code} without a trusted broker"
    );
    Ok(())
}

#[test]
fn when_the_broker_is_silent_the_clock_follows_the_wall_clock() -> Result<()> {
    require_services()?;
    let dir = tempfile::tempdir()?;
    let sim = fleet(dir.path(), 2, 3, 77)?;
    let names = Names::new("idle");
    let http_port = free_port()?;
    let extra = "idle_clock_after_s = 1";
    let path = write_config_with(dir.path(), &sim, &names, http_port, 5, extra, "")?;
    // A short reorder window and offline threshold, so the test takes seconds.
    let mut text = std::fs::read_to_string(&path)?;
    text += "\n[rules]\nreorder_window_s = 1\n\n[rules.offline]\nwired_after_s = 4\n";
    std::fs::write(&path, text)?;
    let service = Service::start(&path, http_port, dir.path().join("run.log"))?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    let messages: Vec<(String, bytes::Bytes)> = (0..3)
        .map(|i| {
            let line = format!(
                r#"{{"device_id":"IDLE-1","ts":{},"seq":{i}}}"#,
                now - 2000 + i * 1000
            );
            (
                format!("{}/IDLE-1", names.topic_prefix),
                bytes::Bytes::from(line),
            )
        })
        .collect();
    publish_messages(messages, &names, 0.0)?;
    service.wait_ingested(3)?;
    // No message comes: after 1 s of silence the clock moves with the wall clock, the device
    // passes its 4 s offline threshold, and the alert comes while the service runs.
    let metrics = service.wait_for(|m| {
        m.by_label("lienwatch_alerts_total", "kind")
            .contains_key("offline")
    })?;
    ensure!(metrics.get("lienwatch_messages_total") == 3.0);
    service.terminate()?;
    let alerts =
        tests::read_alert_values(&dir.path().join(format!("run-alerts-{http_port}.jsonl")))?;
    ensure!(
        alerts
            .iter()
            .any(|a| a["kind"] == "offline" && a["phase"] == "open" && a["device_id"] == "IDLE-1"),
        "no offline alert: {alerts:?}"
    );
    Ok(())
}

/// Readings of device `device` at `lat`, one per second ending now, reporting OBD VIN `vin`.
fn readings_now(
    names: &Names,
    device: &str,
    first_seq: u64,
    n: u64,
    lat: f64,
    vin: &str,
) -> Result<Vec<(String, bytes::Bytes)>> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as i64;
    Ok((0..n)
        .map(|i| {
            let line = serde_json::json!({
                "device_id": device,
                "ts": now - (n - i) as i64 * 1000,
                "seq": first_seq + i,
                "gnss": {"lat": lat + i as f64 * 1e-6, "lon": 121.0, "fix": true, "hdop": 1.0},
                "ignition": false,
                "speed_kmh": 0,
                "obd": {"vin": vin},
            });
            (
                format!("{}/{device}", names.topic_prefix),
                bytes::Bytes::from(line.to_string()),
            )
        })
        .collect())
}

#[test]
fn reference_data_reloads_while_running_and_applies_from_the_next_record() -> Result<()> {
    require_services()?;
    let dir = tempfile::tempdir()?;
    let sim = fleet(dir.path(), 2, 1, 78)?;
    let header = "vehicle_id,loan_id,device_id,vin,device_class,permitted_fences,timezone\n";
    std::fs::write(
        &sim.vehicles_csv,
        format!("{header}VA,LA,DA,VINA0000000000001,obd,,\nVB,LB,DB,VINB0000000000002,obd,,\n"),
    )?;
    std::fs::write(&sim.fences, r#"{"type":"FeatureCollection","features":[]}"#)?;
    let names = Names::new("reload");
    let http_port = free_port()?;
    let path = write_config_with(
        dir.path(),
        &sim,
        &names,
        http_port,
        5,
        "idle_clock_after_s = 1",
        "",
    )?;
    let mut text = std::fs::read_to_string(&path)?;
    text = text.replace("[registry]\n", "[registry]\nreload_check_s = 1\n");
    text += "\n[rules]\nreorder_window_s = 1\n";
    std::fs::write(&path, text)?;
    let service = Service::start(&path, http_port, dir.path().join("run.log"))?;
    let alerts_file = dir.path().join(format!("run-alerts-{http_port}.jsonl"));
    let kinds = |m: &Metrics| m.by_label("lienwatch_alerts_total", "kind");

    // VA's OBD reports a VIN nobody has registered: no duplicate.
    publish_messages(
        readings_now(&names, "DA", 1, 4, 31.0, "VINX0000000000009")?,
        &names,
        0.0,
    )?;
    service.wait_ingested(4)?;
    service.wait_for(|m| kinds(m).contains_key("vin_mismatch"))?;
    ensure!(!kinds(&service.metrics()?).contains_key("duplicate_collateral"));

    // A broken registry is refused and changes nothing.
    std::fs::write(&sim.vehicles_csv, format!("{header}VA,LA,DA,,bogus,,\n"))?;
    service.wait_for(|m| {
        m.by_label("lienwatch_reference_reloads_total", "result")
            .contains_key("failed")
    })?;
    // The VIN is registered to VB under another loan: VA's earlier report is a duplicate at
    // once, with no new message from it.
    std::fs::write(
        &sim.vehicles_csv,
        format!("{header}VA,LA,DA,VINA0000000000001,obd,,\nVB,LB,DB,VINX0000000000009,obd,,\n"),
    )?;
    service.wait_for(|m| kinds(m).contains_key("duplicate_collateral"))?;
    ensure!(service.metrics()?.get("lienwatch_messages_total") == 4.0);

    // A risk fence around VA, loaded on SIGHUP, applies to its next readings.
    std::fs::write(
        &sim.fences,
        r#"{"type":"FeatureCollection","features":[{"type":"Feature",
        "properties":{"id":"dealer-1","role":"risk","category":"second_mortgage","radius_m":300},
        "geometry":{"type":"Point","coordinates":[121.0,31.0]}}]}"#,
    )?;
    let pid = service.child.id().to_string();
    ensure!(
        Command::new("kill")
            .args(["-HUP", &pid])
            .status()?
            .success()
    );
    service.wait_for(|m| {
        m.by_label("lienwatch_reference_reloads_total", "result")
            .get("ok")
            .is_some_and(|n| *n >= 2)
    })?;
    publish_messages(
        readings_now(&names, "DA", 10, 4, 31.0, "VINX0000000000009")?,
        &names,
        0.0,
    )?;
    service.wait_for(|m| kinds(m).contains_key("risk_zone_enter"))?;
    let metrics = service.metrics()?;
    let reloads = metrics.by_label("lienwatch_reference_reloads_total", "result");
    service.terminate()?;

    let alerts = tests::read_alert_values(&alerts_file)?;
    let duplicate: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["kind"] == "duplicate_collateral")
        .collect();
    ensure!(duplicate.len() == 1, "duplicates: {duplicate:?}");
    let d = duplicate[0];
    ensure!(d["vehicle_id"] == "VA" && d["loan_id"] == "LA" && d["device_id"] == "DA");
    ensure!(
        d["evidence"]["other_vehicle_id"] == "VB" && d["evidence"]["other_loan_id"] == "LB",
        "{d}"
    );
    let risk: Vec<&Value> = alerts
        .iter()
        .filter(|a| a["kind"] == "risk_zone_enter")
        .collect();
    ensure!(
        risk.len() == 1 && risk[0]["evidence"]["fence_id"] == "dealer-1",
        "{risk:?}"
    );
    eprintln!("reloads {reloads:?}; alerts checked: duplicate_collateral {d}");
    Ok(())
}
