//! Live throughput and publish→alert latency through a real broker (issue 6, deliverable 4).
//! Driven by `benches/latency.sh`, which starts the broker and `lienwatch run`:
//!
//! ```sh
//! benches/latency.sh 1 1     # QoS 1, one reading per message
//! benches/latency.sh 0 10    # QoS 0, batches of 10 readings of one device per message
//! ```
//!
//! What it does, in one run against one broker and one running service:
//! 1. loads a simulated fleet (`lienwatch simulate --out`) into memory as MQTT messages on
//!    `<prefix>/<device_id>`: one per line, or with `--batch N` the single-reading lines of
//!    each device gathered N at a time into one JSON array (SPEC §2; the batch goes out when
//!    the device's Nth reading comes up in the file, so its first readings arrive up to N
//!    report intervals after their time: `benches/latency.sh` gives batches a reorder
//!    window of 2 h so that they are not late); lines that are already batches or malformed
//!    go out as they are;
//! 2. starts a bare subscriber (`mosquitto_sub`, its output counted line by line) on the same
//!    topics and a Kafka consumer of the alerts topic;
//! 3. **warm-up** (`--warmup-s`, 0 = none): publishes at `--warmup-rate` messages/s, paced, so
//!    that every device has been seen before the measured phases (with wall-clock time a
//!    device's first reading, and so all its readings behind it, waits out the reorder
//!    window: a fleet's start, not its steady state); reported like the others;
//! 4. **max phase** (`--max-s`): publishes as fast as the broker takes it; reports messages/s
//!    and readings/s of the publisher, of the bare subscriber and of lienwatch (its
//!    `lienwatch_messages_total` / `lienwatch_readings_total` from `/metrics`), each from the
//!    first publish to the last message in;
//! 5. **latency phase** (`--duration`): once both subscribers caught up, publishes at `--rate`
//!    messages/s (0 = half the rate lienwatch reached in the max phase), paced, the file
//!    continuing where the max phase stopped;
//! 6. in every phase, `--probes` times a second, a **probe**: a reading of device `lw-probe`
//!    (unregistered) with alarm `tamper`, then one without, so every probe raises one
//!    `device_tamper` instant alert (edge-triggered, SPEC §4). Its `ts` is 1 ms after the
//!    largest event time published so far and its `seq` follows the probe device's last, so
//!    the service processes it as it comes (the in-order fast path). The alert is matched to its probe by
//!    `event_time` and (received from Kafka − published) goes into an HDR histogram (µs);
//!    p50/p99/p99.9/max per phase are printed, with the service's own
//!    `lienwatch_ingest_latency_seconds` mean (MQTT receipt → leaving the rules) beside it.
//!
//! `--stamp-out FILE` instead writes one pass of the fleet as `--wall-clock` would stamp it
//! at `--warmup-rate` messages/s, for a `lienwatch replay` of what the service sees live.
//!
//! `--trace FILE` also writes every probe as a line (phase: 0 max, 1 latency, 2 warm-up, 3 the
//! unmeasured probe that ends each phase; publish time, epoch ms; latency, ms), to see when
//! the slow ones were. A phase ends once that last probe's alert is back and the archive's
//! uploaders have published what they were given (`lienwatch_archive_queued_bytes` at 0), so
//! the next one starts on a service that has processed everything before it, not merely
//! received it.
//!
//! Event time runs much faster than wall time here (a recorded fleet replayed at thousands of
//! messages per second), so the 120-s reorder window is passed in tens of milliseconds of
//! wall time (1000 vehicles send about 360 messages in 120 s of event time: 36 ms at 10 k
//! messages/s); with a live fleet whose `ts` follow the wall clock it adds
//! `rules.reorder_window_s` to every alert. `--wall-clock true` shows that: every message's
//! `ts` (a batch's, all moved alike) is moved to the wall-clock time of its publish, as a
//! live fleet would send them (a message the file delivers out of order goes between the two
//! it falls between, a late one keeps its age: `wall_clock_ts`), and the probes' too. It
//! squeezes each device's file into minutes: a fleet of many vehicles over one day
//! (`latency.sh 1 1 20000 1`) keeps a device's message rate nearer a live one.
//!
//! When the file runs out it is published again with every integer `ts` moved past the end
//! of the previous pass and every `seq` moved by its device's span in the file, so that each
//! device's sequence goes on (the count of passes is printed).

#![allow(clippy::print_stdout)]

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message as _;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use rumqttc::{Client, Event, MqttOptions, Outgoing, Packet, QoS};
use serde::Deserialize;

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// The probe device: unregistered, so its vehicle is itself.
const PROBE_DEVICE: &str = "lw-probe";

/// The warm-up phase's index (its histogram's), after the max (0) and latency (1) phases.
const WARM_UP: usize = 2;

/// The index of the unmeasured probe that ends each phase (no histogram).
const DRAIN: usize = 3;

/// No event time published yet.
const NO_TS: i64 = i64::MIN / 2;

/// A message more than this ahead of the largest event time so far is not taken as the new
/// largest (the `future_ts` noise of the simulated fleet).
const MAX_STEP_MS: i64 = 6 * 3_600_000;

/// Command-line settings.
struct Args {
    mqtt: String,
    prefix: String,
    qos: u8,
    batch: usize,
    fleet: String,
    metrics: String,
    kafka: String,
    alerts_topic: String,
    warmup_s: f64,
    warmup_rate: f64,
    max_s: f64,
    rate: f64,
    duration_s: f64,
    probes_per_s: f64,
    wall_clock: bool,
    trace: Option<String>,
    stamp_out: Option<String>,
}

impl Args {
    fn parse() -> Result<Self> {
        let mut a = Self {
            mqtt: "127.0.0.1:18830".into(),
            prefix: "bench".into(),
            qos: 1,
            batch: 1,
            fleet: String::new(),
            metrics: "127.0.0.1:19470".into(),
            kafka: "127.0.0.1:9092".into(),
            alerts_topic: "lienwatch.alerts".into(),
            warmup_s: 0.0,
            warmup_rate: 5000.0,
            max_s: 20.0,
            rate: 0.0,
            duration_s: 60.0,
            probes_per_s: 50.0,
            wall_clock: false,
            trace: None,
            stamp_out: None,
        };
        let mut it = std::env::args().skip(1);
        while let Some(key) = it.next() {
            let value = it
                .next()
                .ok_or_else(|| format!("{key}: a value is missing"))?;
            match key.as_str() {
                "--mqtt" => a.mqtt = value,
                "--prefix" => a.prefix = value,
                "--qos" => a.qos = value.parse()?,
                "--batch" => a.batch = value.parse::<usize>()?.max(1),
                "--fleet" => a.fleet = value,
                "--metrics" => a.metrics = value,
                "--kafka" => a.kafka = value,
                "--alerts-topic" => a.alerts_topic = value,
                "--warmup-s" => a.warmup_s = value.parse()?,
                "--warmup-rate" => a.warmup_rate = value.parse()?,
                "--max-s" => a.max_s = value.parse()?,
                "--rate" => a.rate = value.parse()?,
                "--duration" => a.duration_s = value.parse()?,
                "--probes" => a.probes_per_s = value.parse()?,
                "--wall-clock" => a.wall_clock = value.parse()?,
                "--trace" => a.trace = Some(value),
                "--stamp-out" => a.stamp_out = Some(value),
                _ => return Err(format!("unknown option {key}").into()),
            }
        }
        if a.fleet.is_empty() {
            return Err("--fleet FILE is required".into());
        }
        Ok(a)
    }
}

/// One MQTT message of the fleet.
#[derive(Default)]
struct Msg {
    topic: String,
    payload: Vec<u8>,
    /// JSON objects in the payload (1 for a malformed one).
    readings: u64,
    /// The largest integer or RFC 3339 `ts` in it.
    max_ts: Option<i64>,
    /// The smallest and largest integer `seq` in it.
    seq: Option<(u64, u64)>,
    /// How far its device's `seq` move on each later pass: the span of the device's `seq` in
    /// the file, so that a pass continues the sequence where the last one ended.
    seq_span: u64,
}

#[derive(Deserialize)]
struct Head {
    device_id: Option<String>,
    ts: Option<serde_json::Value>,
    seq: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Payload {
    One(Head),
    Batch(Vec<Head>),
}

fn ts_of(h: &Head) -> Option<i64> {
    match h.ts.as_ref()? {
        serde_json::Value::Number(n) => n.as_i64(),
        serde_json::Value::String(s) => schemas::time::parse_rfc3339_ms(s),
        _ => None,
    }
}

/// The smallest and largest integer `seq` of `heads`.
fn seq_range<'a>(heads: impl IntoIterator<Item = &'a Head>) -> Option<(u64, u64)> {
    heads
        .into_iter()
        .filter_map(|h| h.seq.as_ref()?.as_u64())
        .fold(None, |r, s| widen(r, Some((s, s))))
}

/// The range covering both.
fn widen(a: Option<(u64, u64)>, b: Option<(u64, u64)>) -> Option<(u64, u64)> {
    match (a, b) {
        (Some((a0, a1)), Some((b0, b1))) => Some((a0.min(b0), a1.max(b1))),
        (a, b) => a.or(b),
    }
}

fn topic_device(id: Option<&str>) -> &str {
    id.filter(|d| !d.contains(['/', '+', '#', '\0']))
        .unwrap_or_default()
}

/// Reads the fleet file into messages, gathering each device's single readings `batch` at a
/// time (in file order) when `batch` > 1.
fn load(path: &str, prefix: &str, batch: usize) -> Result<Vec<Msg>> {
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = Vec::new();
    // Batches being gathered, by device.
    let mut open: HashMap<String, Msg> = HashMap::new();
    for line in BufReader::with_capacity(1 << 20, file).split(b'\n') {
        let line = line?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<Payload>(&line) {
            Ok(Payload::One(h)) if batch > 1 && h.device_id.is_some() => {
                let ts = ts_of(&h);
                let device = topic_device(h.device_id.as_deref()).to_owned();
                let m = open.entry(device.clone()).or_insert_with(|| Msg {
                    topic: format!("{prefix}/{device}"),
                    ..Msg::default()
                });
                m.payload.push(if m.readings == 0 { b'[' } else { b',' });
                m.payload.extend_from_slice(&line);
                m.readings += 1;
                m.max_ts = m.max_ts.max(ts);
                m.seq = widen(m.seq, seq_range([&h]));
                if m.readings as usize >= batch
                    && let Some(mut m) = open.remove(&device)
                {
                    m.payload.push(b']');
                    out.push(m);
                }
            }
            Ok(Payload::One(h)) => out.push(Msg {
                topic: format!("{prefix}/{}", topic_device(h.device_id.as_deref())),
                max_ts: ts_of(&h),
                seq: seq_range([&h]),
                seq_span: 0,
                payload: line,
                readings: 1,
            }),
            Ok(Payload::Batch(b)) => out.push(Msg {
                topic: format!(
                    "{prefix}/{}",
                    topic_device(b.first().and_then(|h| h.device_id.as_deref()))
                ),
                max_ts: b.iter().filter_map(ts_of).max(),
                seq: seq_range(&b),
                seq_span: 0,
                readings: b.len() as u64,
                payload: line,
            }),
            Err(_) => out.push(Msg {
                topic: format!("{prefix}/"),
                payload: line,
                readings: 1,
                max_ts: None,
                seq: None,
                seq_span: 0,
            }),
        }
    }
    let mut rest: Vec<_> = open.into_iter().collect();
    rest.sort_by(|a, b| a.0.cmp(&b.0));
    for (_, mut m) in rest {
        m.payload.push(b']');
        out.push(m);
    }
    let mut ranges: HashMap<&str, Option<(u64, u64)>> = HashMap::new();
    for m in &out {
        let range = ranges.entry(&m.topic).or_default();
        *range = widen(*range, m.seq);
    }
    let spans: HashMap<String, u64> = ranges
        .into_iter()
        .filter_map(|(topic, range)| Some((topic.to_owned(), range?)))
        .map(|(topic, (lo, hi))| (topic, hi - lo + 1))
        .collect();
    for m in &mut out {
        m.seq_span = spans.get(&m.topic).copied().unwrap_or(0);
    }
    Ok(out)
}

/// `payload` with every integer `"<key>":N` moved by `shift` (`ts` and `seq` of a later pass
/// over the file, `ts` to the wall clock).
fn shift_ints<'a>(payload: &'a [u8], key: &str, shift: i64) -> Cow<'a, [u8]> {
    if shift == 0 {
        return Cow::Borrowed(payload);
    }
    let key = format!("\"{key}\":");
    let key = key.as_bytes();
    let mut out = Vec::with_capacity(payload.len() + 8);
    let mut rest = payload;
    while let Some(at) = rest.windows(key.len()).position(|w| w == key) {
        let start = at + key.len();
        out.extend_from_slice(&rest[..start]);
        let digits = rest[start..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        let n = std::str::from_utf8(&rest[start..start + digits])
            .ok()
            .and_then(|s| s.parse::<i64>().ok());
        match n {
            Some(n) => out.extend_from_slice((n + shift).to_string().as_bytes()),
            None => out.extend_from_slice(&rest[start..start + digits]),
        }
        rest = &rest[start + digits..];
    }
    out.extend_from_slice(rest);
    Cow::Owned(out)
}

/// Recent stamps kept per device for `wall_clock_ts`: more than the file's reordering spans.
const STAMPS_KEPT: usize = 64;

/// The wall-clock `ts` of a message of a device whose largest `ts` in the file is `t`, given
/// the device's recent `stamps` (file `ts`, moved `ts`) of messages that were its newest.
/// A message newer than the device's newest is stamped `now`. An older one (the file delivers
/// some out of order, late, or twice) goes where it was among its device's messages: between
/// the two it falls between, in proportion, so that neighbours the file swapped keep their
/// order, as a tracker's own times would; one older than every kept stamp keeps its age
/// behind the oldest (a back-filled upload). Stamping it now would give it an old `seq` with
/// the newest time, which no tracker sends, and make it wait out the reorder window.
fn wall_clock_ts(stamps: &mut VecDeque<(i64, i64)>, t: i64, now: i64) -> i64 {
    match stamps.back() {
        Some(&(newest, _)) if t <= newest => {
            let after = stamps.partition_point(|&(f, _)| f <= t);
            let Some(&(f0, m0)) = after.checked_sub(1).and_then(|i| stamps.get(i)) else {
                let (f1, m1) = stamps[0];
                return m1 - (f1 - t);
            };
            match stamps.get(after) {
                Some(&(f1, m1)) if f0 < t => {
                    let part = i128::from(t - f0) * i128::from(m1 - m0) / i128::from(f1 - f0);
                    m0 + part as i64
                }
                _ => m0,
            }
        }
        last => {
            let moved = now.max(last.map_or(i64::MIN, |&(_, m)| m.saturating_add(1)));
            if stamps.len() == STAMPS_KEPT {
                stamps.pop_front();
            }
            stamps.push_back((t, moved));
            moved
        }
    }
}

/// Writes one pass of the fleet to `path` as `--wall-clock` would publish it at `rate`
/// messages/s (a clock of its own, from now), without a broker: the input of a `replay` that
/// sees what the service sees live.
fn stamp_out(msgs: &[Msg], path: &str, rate: f64) -> Result<()> {
    let file = std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?;
    let mut out = std::io::BufWriter::new(file);
    let start = schemas::time::now_ms();
    let mut stamps: HashMap<&str, VecDeque<(i64, i64)>> = HashMap::new();
    for (i, m) in msgs.iter().enumerate() {
        let shift = match m.max_ts {
            Some(t) => {
                let now = start + (i as f64 * 1000.0 / rate) as i64;
                wall_clock_ts(stamps.entry(&m.topic).or_default(), t, now) - t
            }
            None => 0,
        };
        out.write_all(&shift_ints(&m.payload, "ts", shift))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    println!(
        "{} messages stamped at {rate} msg/s into {path}",
        msgs.len()
    );
    Ok(())
}

/// The fleet as an endless stream: passes after the first are shifted in event time.
struct Feed {
    msgs: Vec<Msg>,
    next: usize,
    pass: i64,
    span_ms: i64,
}

impl Feed {
    fn new(msgs: Vec<Msg>) -> Self {
        let lo = msgs.iter().filter_map(|m| m.max_ts).min().unwrap_or(0);
        let hi = msgs.iter().filter_map(|m| m.max_ts).max().unwrap_or(0);
        Self {
            msgs,
            next: 0,
            pass: 0,
            // A day more than the file spans, rounded to whole days (local days stay days).
            span_ms: ((hi - lo) / 86_400_000 + 2) * 86_400_000,
        }
    }

    /// The next message, and how far its `ts` and its `seq` move (a later pass).
    fn next(&mut self) -> (&Msg, i64, i64) {
        if self.next == self.msgs.len() {
            self.next = 0;
            self.pass += 1;
        }
        self.next += 1;
        let m = &self.msgs[self.next - 1];
        (m, self.pass * self.span_ms, self.pass * m.seq_span as i64)
    }
}

/// Counters read from the service's `/metrics`.
#[derive(Clone, Copy, Debug, Default)]
struct Metrics {
    messages: f64,
    readings: f64,
    late: f64,
    ingest_sum_s: f64,
    ingest_count: f64,
    /// Rows handed to the archive's uploaders, not yet published (estimated bytes).
    archive_queued: f64,
    /// Seconds workers waited for room in an uploader's queue.
    archive_wait_s: f64,
}

fn scrape(addr: &str) -> Result<Metrics> {
    let mut s = TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    let mut m = Metrics::default();
    for line in body.lines() {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(value)) = (parts.next(), parts.next()) else {
            continue;
        };
        let value: f64 = value.parse().unwrap_or(0.0);
        match name {
            "lienwatch_messages_total" => m.messages = value,
            "lienwatch_readings_total" => m.readings = value,
            "lienwatch_late_total" => m.late = value,
            "lienwatch_ingest_latency_seconds_sum" => m.ingest_sum_s = value,
            "lienwatch_ingest_latency_seconds_count" => m.ingest_count = value,
            "lienwatch_archive_queued_bytes" => m.archive_queued = value,
            "lienwatch_archive_wait_seconds_sum" => m.archive_wait_s = value,
            _ => {}
        }
    }
    Ok(m)
}

/// The bare subscriber: `mosquitto_sub` printing every payload on a line, counted here.
fn bare_subscriber(args: &Args, count: Arc<AtomicU64>) -> Result<Child> {
    let (host, port) = args.mqtt.rsplit_once(':').ok_or("--mqtt HOST:PORT")?;
    let mut child = Command::new("mosquitto_sub")
        .args(["-h", host, "-p", port, "-q", &args.qos.to_string()])
        .args(["-t", &format!("{}/+", args.prefix)])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| format!("mosquitto_sub: {e}"))?;
    let mut out = child.stdout.take().ok_or("mosquitto_sub has no stdout")?;
    thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            let lines = buf[..n].iter().filter(|b| **b == b'\n').count();
            count.fetch_add(lines as u64, Ordering::AcqRel);
        }
    });
    Ok(child)
}

/// Probes published and not yet matched: `ts` → (published at, phase).
type Pending = Arc<Mutex<HashMap<i64, (Instant, usize)>>>;

/// Latencies of the max, latency and warm-up phases, in µs.
type Hists = Arc<Mutex<[Histogram<u64>; 3]>>;

/// Reads the alerts topic from its start and matches `device_tamper` alerts of the probe
/// device to their probes.
fn alert_consumer(
    args: &Args,
    pending: Pending,
    hists: Hists,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.kafka)
        .set(
            "group.id",
            format!("lienwatch-latency-{}", std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "5")
        .set("fetch.min.bytes", "1")
        .set("session.timeout.ms", "6000")
        .create()?;
    let topic = args.alerts_topic.clone();
    let mut trace = match &args.trace {
        Some(path) => {
            let mut file = std::io::BufWriter::new(
                std::fs::File::create(path).map_err(|e| format!("{path}: {e}"))?,
            );
            writeln!(file, "phase\tpublished_ms\tlatency_ms")?;
            Some(file)
        }
        None => None,
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let partitions = loop {
        let metadata = consumer.fetch_metadata(Some(&topic), Duration::from_secs(5))?;
        let n = metadata
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .map_or(0, |t| t.partitions().len());
        if n > 0 {
            break n;
        }
        if Instant::now() > deadline {
            return Err(format!("topic {topic} has no partitions").into());
        }
        thread::sleep(Duration::from_millis(200));
    };
    let mut assignment = TopicPartitionList::new();
    for p in 0..partitions {
        assignment.add_partition_offset(&topic, p as i32, Offset::Beginning)?;
    }
    consumer.assign(&assignment)?;
    thread::spawn(move || {
        while !stop.load(Ordering::Acquire) {
            let Some(Ok(message)) = consumer.poll(Duration::from_millis(50)) else {
                continue;
            };
            let at = Instant::now();
            let Ok(alert) =
                serde_json::from_slice::<serde_json::Value>(message.payload().unwrap_or_default())
            else {
                continue;
            };
            if alert["kind"] != "device_tamper" || alert["device_id"] != PROBE_DEVICE {
                continue;
            }
            let Some(ts) = alert["event_time"]
                .as_str()
                .and_then(schemas::time::parse_rfc3339_ms)
            else {
                continue;
            };
            let probe = pending
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&ts);
            if let Some((published, phase)) = probe {
                let us = at.duration_since(published).as_micros() as u64;
                if let Some(trace) = trace.as_mut() {
                    let at_ms = schemas::time::now_ms() - (us / 1000) as i64;
                    // A lost trace line loses nothing measured: the histogram has the probe.
                    // (The thread is not joined: each line goes out at once.)
                    let _ = writeln!(trace, "{phase}\t{at_ms}\t{:.1}", us as f64 / 1000.0)
                        .and_then(|()| trace.flush());
                }
                if let Some(h) = hists
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .get_mut(phase)
                {
                    h.saturating_record(us.max(1));
                }
            }
        }
    });
    Ok(())
}

/// The publishing side: client, pacing state, probes.
struct Publisher {
    client: Client,
    qos: QoS,
    prefix: String,
    feed: Feed,
    /// `ts` moved to the wall clock of the publish.
    wall_clock: bool,
    /// With `wall_clock`, per topic (device): the file's and the moved `ts` of its last
    /// `STAMPS_KEPT` messages that were its newest, oldest first.
    stamps: HashMap<String, VecDeque<(i64, i64)>>,
    /// Largest event time published.
    max_ts: i64,
    last_probe_ts: i64,
    /// `seq` of the probe device's next message: like a real tracker's, it counts up, so the
    /// service can process each probe as it comes (its in-order fast path).
    probe_seq: u64,
    pending: Pending,
    sent: u64,
    readings: u64,
    probes: u64,
}

impl Publisher {
    fn fleet_message(&mut self) -> Result<()> {
        let pass = self.feed.pass;
        let (m, mut shift, seq_shift) = self.feed.next();
        let (topic, readings) = (m.topic.clone(), m.readings);
        let mut ts = m.max_ts.map(|t| t + shift);
        if self.wall_clock
            && let Some(t) = ts
        {
            if !self.stamps.contains_key(&topic) {
                self.stamps.insert(topic.clone(), VecDeque::new());
            }
            let stamps = self.stamps.get_mut(&topic).expect("inserted above");
            let moved = wall_clock_ts(stamps, t, schemas::time::now_ms());
            shift += moved - t;
            ts = Some(moved);
        }
        let payload =
            shift_ints(&shift_ints(&m.payload, "ts", shift), "seq", seq_shift).into_owned();
        self.client.publish(topic, self.qos, false, payload)?;
        if self.feed.pass != pass {
            // The next pass starts a day after the last one's largest `ts`.
            self.max_ts = NO_TS;
        }
        // The simulated fleet holds `future_ts` lines (days ahead): a probe after them would
        // be rejected too.
        if let Some(ts) = ts
            && (self.max_ts == NO_TS || ts <= self.max_ts + MAX_STEP_MS)
        {
            self.max_ts = self.max_ts.max(ts);
        }
        self.sent += 1;
        self.readings += readings;
        Ok(())
    }

    /// A tamper reading just after the largest event time so far, then one that clears it.
    fn probe(&mut self, phase: usize) -> Result<()> {
        let ts = (self.max_ts + 1).max(self.last_probe_ts + 2);
        self.last_probe_ts = ts;
        let topic = format!("{}/{PROBE_DEVICE}", self.prefix);
        let seq = self.probe_seq;
        self.probe_seq += 2;
        let alarm = format!(
            r#"{{"device_id":"{PROBE_DEVICE}","ts":{ts},"seq":{seq},"alarms":["tamper"]}}"#
        );
        let clear = format!(
            r#"{{"device_id":"{PROBE_DEVICE}","ts":{},"seq":{},"alarms":[]}}"#,
            ts + 1,
            seq + 1
        );
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(ts, (Instant::now(), phase));
        self.client.publish(&topic, self.qos, false, alarm)?;
        self.client.publish(&topic, self.qos, false, clear)?;
        self.sent += 2;
        self.readings += 2;
        self.probes += 1;
        Ok(())
    }

    /// Publishes for `seconds` at `rate` messages/s (0 = as fast as the broker takes them)
    /// with `probes_per_s` probes, none in the last second (the fleet published after a probe
    /// moves the pipeline clock past it); returns when it started.
    fn phase(
        &mut self,
        phase: usize,
        seconds: f64,
        rate: f64,
        probes_per_s: f64,
    ) -> Result<Instant> {
        let start = Instant::now();
        let end = start + Duration::from_secs_f64(seconds);
        let probes_end = end - Duration::from_secs_f64(seconds.min(1.0));
        let probe_every = Duration::from_secs_f64(1.0 / probes_per_s.max(1e-3));
        let mut next_probe = start + probe_every;
        let mut n = 0u64;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            if probes_per_s > 0.0 && now >= next_probe && now < probes_end {
                self.probe(phase)?;
                next_probe += probe_every;
            }
            if rate > 0.0 {
                let due = start + Duration::from_secs_f64(n as f64 / rate);
                if due > now + Duration::from_millis(1) {
                    thread::sleep((due - now).min(Duration::from_millis(2)));
                    continue;
                }
            }
            self.fleet_message()?;
            n += 1;
        }
        Ok(start)
    }
}

/// Waits until `done()` (polled every 5 ms), at most `timeout`; returns when it became true.
fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> Option<Instant> {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return Some(Instant::now());
        }
        if Instant::now() > deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(5));
    }
}

fn pct(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

fn main() -> Result<()> {
    let args = Args::parse()?;
    let loaded = Instant::now();
    let msgs = load(&args.fleet, &args.prefix, args.batch)?;
    let file_readings: u64 = msgs.iter().map(|m| m.readings).sum();
    println!(
        "fleet {}: {} messages, {} readings (batch {}), loaded in {:.1} s",
        args.fleet,
        msgs.len(),
        file_readings,
        args.batch,
        loaded.elapsed().as_secs_f64()
    );
    if let Some(path) = &args.stamp_out {
        return stamp_out(&msgs, path, args.warmup_rate);
    }
    let qos = match args.qos {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        q => return Err(format!("QoS {q} is not supported").into()),
    };
    let bare = Arc::new(AtomicU64::new(0));
    let mut bare_child = bare_subscriber(&args, Arc::clone(&bare))?;
    let pending: Pending = Arc::default();
    let hists: Hists = Arc::new(Mutex::new([
        Histogram::new_with_bounds(1, 600_000_000, 3)?,
        Histogram::new_with_bounds(1, 600_000_000, 3)?,
        Histogram::new_with_bounds(1, 600_000_000, 3)?,
    ]));
    let stop = Arc::new(AtomicBool::new(false));
    alert_consumer(
        &args,
        Arc::clone(&pending),
        Arc::clone(&hists),
        Arc::clone(&stop),
    )?;

    let (host, port) = args.mqtt.rsplit_once(':').ok_or("--mqtt HOST:PORT")?;
    let mut options = MqttOptions::new(
        format!("lw-latency-{}", std::process::id()),
        host,
        port.parse()?,
    );
    options
        .set_keep_alive(Duration::from_secs(30))
        .set_clean_session(true)
        .set_inflight(1000)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut connection) = Client::new(options, 10_000);
    let acked = Arc::new(AtomicU64::new(0));
    let acks = Arc::clone(&acked);
    let driver = thread::spawn(move || {
        for event in connection.iter() {
            match event {
                Ok(Event::Incoming(Packet::PubAck(_))) => {
                    acks.fetch_add(1, Ordering::AcqRel);
                }
                Ok(Event::Outgoing(Outgoing::Disconnect)) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Ok(())
    });
    let mut p = Publisher {
        client,
        qos,
        prefix: args.prefix.clone(),
        feed: Feed::new(msgs),
        wall_clock: args.wall_clock,
        stamps: HashMap::new(),
        max_ts: NO_TS,
        last_probe_ts: NO_TS,
        probe_seq: 0,
        pending: Arc::clone(&pending),
        sent: 0,
        readings: 0,
        probes: 0,
    };
    // Both subscribers are up before the first publish.
    thread::sleep(Duration::from_millis(500));
    let watch = Watch {
        metrics: &args.metrics,
        bare: &bare,
        pending: &pending,
        hists: &hists,
    };

    // Warm-up: every device has been seen (its first reading waits out the reorder window)
    // before the measured phases.
    if args.warmup_s > 0.0 {
        watch.phase(
            &mut p,
            WARM_UP,
            args.warmup_s,
            args.warmup_rate,
            args.probes_per_s,
            |n, r, probes| {
                format!(
                    "warm-up: {n} messages ({r} readings, {probes} probes) at {} msg/s offered",
                    args.warmup_rate
                )
            },
        )?;
    }

    // Max phase.
    let mut max_rate = 0.0;
    if args.max_s > 0.0 {
        max_rate = watch.phase(
            &mut p,
            0,
            args.max_s,
            0.0,
            args.probes_per_s,
            |n, r, probes| {
                format!(
                    "max phase: {n} messages ({r} readings, {probes} probes), QoS {}, batch {}",
                    args.qos, args.batch
                )
            },
        )?;
    }

    // Latency phase.
    let rate = if args.rate > 0.0 {
        args.rate
    } else {
        max_rate / 2.0
    };
    if args.duration_s > 0.0 && rate > 0.0 {
        watch.phase(&mut p, 1, args.duration_s, rate, args.probes_per_s, |n, r, probes| {
            format!(
                "latency phase: {n} messages ({r} readings, {probes} probes) at {rate:.0} msg/s offered, QoS {}, batch {}",
                args.qos, args.batch
            )
        })?;
    }
    let unmatched = pending.lock().unwrap_or_else(PoisonError::into_inner).len();
    println!(
        "probes without an alert: {unmatched}; file passes: {}; publisher acks: {}",
        p.feed.pass + 1,
        acked.load(Ordering::Acquire)
    );
    stop.store(true, Ordering::Release);
    p.client.disconnect()?;
    let _ = driver.join();
    let _ = bare_child.kill();
    let _ = bare_child.wait();
    Ok(())
}

/// What a measured phase watches besides the publisher.
struct Watch<'a> {
    /// The service's metrics address.
    metrics: &'a str,
    /// Messages the bare subscriber received.
    bare: &'a AtomicU64,
    pending: &'a Pending,
    hists: &'a Hists,
}

impl Watch<'_> {
    /// Whether every probe of `phase` has its alert.
    fn answered(&self, phase: usize) -> bool {
        !self
            .pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .any(|&(_, p)| p == phase)
    }

    /// Publishes phase `index` (`seconds` at `rate` msg/s, 0 = as fast as the broker takes
    /// them), waits until the bare subscriber and the service have taken every message and
    /// the service has processed them, and prints the phase's `header` (given messages,
    /// readings and probes), the three rates and the latencies. Returns the service's msg/s.
    fn phase(
        &self,
        p: &mut Publisher,
        index: usize,
        seconds: f64,
        rate: f64,
        probes_per_s: f64,
        header: impl Fn(u64, u64, u64) -> String,
    ) -> Result<f64> {
        let catch_up = Duration::from_secs(300);
        let before = scrape(self.metrics)?;
        let (n0, r0, probes0) = (p.sent, p.readings, p.probes);
        let bare0 = self.bare.load(Ordering::Acquire);
        let start = p.phase(index, seconds, rate, probes_per_s)?;
        let published = Instant::now();
        let (n, r, probes) = (p.sent - n0, p.readings - r0, p.probes - probes0);
        let bare_done = wait_until(catch_up, || self.bare.load(Ordering::Acquire) >= bare0 + n);
        let run_done = wait_until(catch_up, || {
            scrape(self.metrics).is_ok_and(|m| m.messages - before.messages >= n as f64)
        });
        // The service has taken every message in; one more probe, not measured, comes back
        // once everything before it has gone through the rules. So the next phase starts on
        // a service that has processed this one.
        let drain = Instant::now();
        p.probe(DRAIN)?;
        let drained = wait_until(catch_up, || self.answered(DRAIN));
        // The archive's uploader threads (below the workers' priority) may still be encoding
        // and uploading the phase's rows; were they behind at the next phase's start, the
        // workers would wait for room in their queues then, and that phase would measure
        // this one's backlog.
        let archived = wait_until(catch_up, || {
            scrape(self.metrics).is_ok_and(|m| m.archive_queued <= 0.0)
        });
        // The phase's last alerts (they are normally in by now).
        wait_until(Duration::from_secs(10), || self.answered(index));
        let m = scrape(self.metrics)?;
        let secs = |t: Option<Instant>| t.map_or(f64::NAN, |t| (t - start).as_secs_f64());
        let (tp, tb, tr) = (secs(Some(published)), secs(bare_done), secs(run_done));
        println!("{}", header(n, r, probes));
        println!(
            "  publisher        {tp:6.2} s  {:8.0} msg/s  {:9.0} readings/s",
            n as f64 / tp,
            r as f64 / tp
        );
        println!(
            "  bare subscriber  {tb:6.2} s  {:8.0} msg/s  {:9.0} readings/s",
            n as f64 / tb,
            r as f64 / tb
        );
        println!(
            "  lienwatch run    {tr:6.2} s  {:8.0} msg/s  {:9.0} readings/s  ({:.0}% of the bare subscriber; {} readings decoded, {} late)",
            n as f64 / tr,
            r as f64 / tr,
            100.0 * tb / tr,
            m.readings - before.readings,
            m.late - before.late
        );
        let label = match index {
            0 => "  max phase",
            1 => "  latency phase",
            _ => "  warm-up",
        };
        report_latency(label, self.hists, index, &before, &m);
        println!(
            "  processed {:.2} s after the last message in, archived {:.2} s after; workers waited {:.2} s for the archive's queue",
            drained.map_or(f64::NAN, |t| (t - drain).as_secs_f64()),
            archived.map_or(f64::NAN, |t| (t - drain).as_secs_f64()),
            m.archive_wait_s - before.archive_wait_s
        );
        Ok(n as f64 / tr)
    }
}

fn report_latency(label: &str, hists: &Hists, phase: usize, before: &Metrics, after: &Metrics) {
    let hists = hists.lock().unwrap_or_else(PoisonError::into_inner);
    let h = &hists[phase];
    let ingest = (after.ingest_sum_s - before.ingest_sum_s)
        / (after.ingest_count - before.ingest_count).max(1.0);
    println!(
        "{label} publish->alert latency over {} probes: p50 {:.1} ms  p99 {:.1} ms  p99.9 {:.1} ms  max {:.1} ms  (mean {:.1} ms; service's ingest latency mean {:.1} ms)",
        h.len(),
        pct(h, 0.5),
        pct(h, 0.99),
        pct(h, 0.999),
        h.max() as f64 / 1000.0,
        h.mean() / 1000.0,
        ingest * 1000.0
    );
}
