//! `lienwatch run` under faults, through real servers: Mosquitto, tansu (Kafka protocol) and
//! moto (S3), started by `scripts/services`, plus private ones (a Mosquitto, a tansu) and TCP
//! proxies the tests cut and restore, so the tests running beside are not disturbed.
//!
//! - SIGKILL twice mid-stream, each time restarted at once: the restarted service restores
//!   the newest checkpoint and replays the journal; in the end every accepted reading is in
//!   the S3 archive exactly once, and Kafka holds every alert replay raises (re-emits only
//!   as identical copies under the same id).
//! - Kafka cut, then S3 cut (each `LIENWATCH_OUTAGE_S` seconds, default 60) while messages
//!   come, then the MQTT broker restarted: the service keeps running, says it is degraded,
//!   recovers by itself, and loses and duplicates nothing.
//! - S3 cut while a fleet's worth of messages waits at the broker, with a small journal bound:
//!   once the journal is over `journal_max_bytes` the service takes nothing more (back-pressure,
//!   `/health` 503 `journal_full`), the broker keeps the rest; with S3 back it resumes by itself
//!   and archives every reading exactly once.
//!
//! No timing is asserted beyond generous bounds.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, ensure};
use bytes::Bytes;
use serde_json::Value;

use common::*;
use pipeline::publish::read_messages;

/// Where the service's logs say what recovery did.
const RECOVERY_LOG: [&str; 3] = [
    "recovering",
    "journal replayed",
    "archive files the journal replay writes again deleted",
];

#[test]
fn sigkill_twice_mid_stream_loses_nothing_and_archives_every_reading_once() -> Result<()> {
    require_services()?;
    let test_started = Instant::now();
    let dir = tempfile::tempdir()?;
    let seed = 91;
    let sim = fleet(dir.path(), 8, 3, seed)?;
    let (replay_alerts, replay_summary) = replay(&sim, dir.path())?;
    ensure!(!replay_alerts.is_empty(), "the fleet raised no alerts");

    // A broker of our own, its queue for the offline session unbounded: what is published
    // while the service is down waits there, however long the restart takes.
    let mqtt_port = free_port()?;
    let _broker = PrivateBroker::start(dir.path(), mqtt_port)?;
    let mut names = Names::new("kill9");
    names.mqtt = format!("127.0.0.1:{mqtt_port}");
    let messages = read_messages(&sim.messages, &names.topic_prefix)?.len() as u64;
    let extra = ConfigExtra {
        durability: "checkpoint_interval_s = 2",
        ..ConfigExtra::default()
    };
    // MQTT 3.1.1 with a persistent session; the same journal directory for every run.
    let start = |run: usize| -> Result<Service> {
        let http_port = free_port()?;
        let config = write_config_extra(dir.path(), &sim, &names, http_port, 4, &extra)?;
        Service::start(
            &config,
            http_port,
            dir.path().join(format!("run-{run}.log")),
        )
    };

    // Two kill points, pseudo-random but fixed by the seed.
    let mut rng = SplitMix(seed);
    let kill_at = [rng.between(0.25, 0.45), rng.between(0.55, 0.80)]
        .map(|fraction| (fraction * messages as f64) as u64);

    let mut service = start(1)?;
    let publisher = {
        let (file, names) = (sim.messages.clone(), names.clone());
        std::thread::spawn(move || publish_file(&file, &names, 400.0))
    };
    // Messages taken from MQTT by the runs killed so far (their count minus what each
    // replayed from the journal at its start), and what the current run replayed.
    let mut taken_before = 0u64;
    let mut replayed_now = 0u64;
    let mut replays = Vec::new();
    let mut logs = vec![service.log.clone()];
    // Per kill: its wall-clock time and that of the last checkpoint epoch, epoch ms.
    let mut kills = Vec::new();
    for (kill, at) in kill_at.into_iter().enumerate() {
        let m = service.wait_for(|m| {
            let taken = m.get("lienwatch_messages_total") as u64;
            taken_before + taken.saturating_sub(replayed_now) >= at
                && m.get("lienwatch_checkpoints_total") >= 1.0
        })?;
        service.kill9()?;
        let taken = m.get("lienwatch_messages_total") as u64;
        taken_before += taken.saturating_sub(replayed_now);
        eprintln!(
            "run {}: SIGKILL after it took {taken} messages ({replayed_now} of them replayed at its start; about {taken_before} of {messages} taken from MQTT so far); {} checkpoints complete, the last at epoch {}",
            kill + 1,
            m.get("lienwatch_checkpoints_total"),
            m.get("lienwatch_checkpoint_epoch"),
        );
        kills.push((
            now_ms(),
            m.get("lienwatch_checkpoint_epoch") as u64 * EPOCH_MS,
        ));
        service = start(kill + 2)?;
        logs.push(service.log.clone());
        replayed_now = service.metrics()?.get("lienwatch_journal_replayed_total") as u64;
        replays.push(replayed_now);
        for line in service.log_lines(&RECOVERY_LOG) {
            eprintln!("  run {}: {line}", kill + 2);
        }
    }
    let published = publisher
        .join()
        .map_err(|_| anyhow!("publisher panicked"))??;
    ensure!(published == messages, "published {published} of {messages}");

    // Everything published is at the broker; wait until the service has taken it all: the
    // count stays put for 3 s once the estimate reaches the total (10 s if it never does:
    // the estimate misses what a killed run took between the last look and the kill).
    let mut last = (u64::MAX, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(120);
    let final_metrics = loop {
        let m = service.metrics()?;
        let taken = m.get("lienwatch_messages_total") as u64;
        if taken != last.0 {
            last = (taken, Instant::now());
        }
        let quiet = last.1.elapsed();
        let estimate = taken_before + taken.saturating_sub(replayed_now);
        if (estimate >= messages && quiet >= Duration::from_secs(3))
            || quiet >= Duration::from_secs(10)
        {
            break m;
        }
        ensure!(
            Instant::now() < deadline,
            "still taking messages after 120 s ({estimate} of {messages})\n{}",
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let (_, summary) = service.terminate()?;
    let last_taken = summary_number(&summary, "messages")?;
    let last_replayed = summary_replayed(&summary);
    ensure!(
        last_replayed == replayed_now,
        "the last run replayed {replayed_now} (/metrics) but its summary says:\n{summary}"
    );
    eprintln!(
        "run 3 (SIGTERM): took {last_taken} messages, {last_replayed} replayed at its start; /metrics {} received from MQTT, {} duplicates dropped",
        final_metrics.get("lienwatch_messages_received_total"),
        final_metrics.get("lienwatch_duplicates_total"),
    );

    // (iii) The restarts recovered from the journal.
    ensure!(
        replays.iter().any(|r| *r > 0),
        "no restart replayed anything from the journal ({replays:?})"
    );
    // (i) Every accepted reading exactly once in the archive.
    let rows = archive_rows_match_replay(
        dir.path(),
        &names,
        &replay_summary,
        "the killed and restarted runs",
    )
    .map_err(|e| with_recovery_logs(e, &logs))?;
    // (ii) Every alert replay raised in Kafka; duplicates only as identical re-emits.
    let kafka = kafka_alerts_match_replay(&names, &replay_alerts)
        .map_err(|e| with_recovery_logs(e, &logs))?;
    eprintln!(
        "SIGKILL at {kill_at:?} of {messages} messages; the restarts replayed {replays:?} from the journal; \
         {rows} telemetry rows in S3 = {} accepted by replay, each once; \
         {} alerts from replay all in Kafka: {} messages, {} distinct (id, phase), {} duplicates \
         ({} ids re-emitted, differing only in {:?}); {:.0} s",
        replay_summary["accepted"],
        replay_alerts.len(),
        kafka.messages,
        kafka.distinct,
        kafka.duplicates,
        kafka.duplicated_keys,
        kafka.differing_fields,
        test_started.elapsed().as_secs_f64(),
    );
    for (i, (killed, checkpoint)) in kills.iter().enumerate() {
        eprintln!(
            "  kill {}: at {}, the last checkpoint's epoch began {}",
            i + 1,
            time_of_day(*killed),
            time_of_day(*checkpoint)
        );
    }
    for (alert, detected) in &kafka.reemits {
        eprintln!("  re-emitted: {alert} detected at {detected:?}");
    }
    // A re-emit repeats an alert raised after the checkpoint a restart restored, and before
    // that kill: what was raised before the checkpoint is in its state, not raised again.
    for (alert, detected) in &kafka.reemits {
        let first = detected
            .iter()
            .filter_map(|d| chrono::DateTime::parse_from_rfc3339(d).ok())
            .map(|t| t.timestamp_millis() as u64)
            .min()
            .with_context(|| format!("{alert}: detected_at {detected:?}"))?;
        ensure!(
            kills.iter().any(|(killed, checkpoint)| {
                first + EPOCH_MS >= *checkpoint && first <= *killed
            }),
            "{alert} was first raised at {}, before the checkpoint restored after the next kill, and raised again at {detected:?}",
            time_of_day(first)
        );
    }
    Ok(())
}

/// `pipeline.epoch_ms` (the default): checkpoint epochs are wall-clock ms / this.
const EPOCH_MS: u64 = 100;

/// Wall-clock now, epoch ms.
fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Epoch ms as a UTC time of day (ms).
fn time_of_day(ms: u64) -> String {
    chrono::DateTime::from_timestamp_millis(ms as i64)
        .map_or_else(|| ms.to_string(), |t| t.format("%H:%M:%S%.3fZ").to_string())
}

/// `error` with what the services' logs said about recovery.
fn with_recovery_logs(error: anyhow::Error, logs: &[std::path::PathBuf]) -> anyhow::Error {
    let mut text = String::new();
    for (i, log) in logs.iter().enumerate() {
        for line in log_lines(log, &RECOVERY_LOG) {
            text += &format!("run {}: {line}\n", i + 1);
        }
    }
    error.context(format!("recovery as logged:\n{text}"))
}

/// The length of each outage: `LIENWATCH_OUTAGE_S`, default 60 s.
fn outage_length() -> Result<Duration> {
    let seconds = match std::env::var("LIENWATCH_OUTAGE_S") {
        Ok(s) => s
            .parse::<u64>()
            .with_context(|| format!("LIENWATCH_OUTAGE_S={s:?}"))?,
        Err(_) => 60,
    };
    ensure!(seconds >= 5, "LIENWATCH_OUTAGE_S below 5 s proves little");
    Ok(Duration::from_secs(seconds))
}

/// What happened during one outage.
struct Outage {
    /// Messages published during it.
    published: u64,
    /// Messages the service had taken when it began and when it ended.
    taken_before: u64,
    taken_during: u64,
    /// Connections the cut closed, and those refused while it lasted.
    closed: usize,
    refused: u64,
    /// `/health` answers, and those 503 `degraded` with the flag looked for.
    samples: usize,
    flagged: usize,
    first_flagged: Option<Value>,
    last_flagged: Option<Value>,
    /// The largest `kafka_in_flight` `/health` reported.
    max_in_flight: u64,
}

impl Outage {
    fn describe(&self) -> String {
        format!(
            "{} messages published, the service took {} meanwhile ({} before); the cut closed {} connections and refused {}; \
             /health answered {} times, {} of them 503 degraded with the flag (first {}, last {}); at most {} Kafka messages in flight",
            self.published,
            self.taken_during - self.taken_before,
            self.taken_before,
            self.closed,
            self.refused,
            self.samples,
            self.flagged,
            self.first_flagged
                .as_ref()
                .map_or("none".into(), Value::to_string),
            self.last_flagged
                .as_ref()
                .map_or("none".into(), Value::to_string),
            self.max_in_flight
        )
    }
}

/// Cuts `proxy` for `length` while `part` is published at a steady rate over its first
/// half; watches `/health` (every 250 ms) for a 503 `degraded` answer that `flag` accepts,
/// and that the service keeps running; then restores the proxy.
fn outage(
    service: &mut Service,
    proxy: &Proxy,
    names: &Names,
    part: Vec<(String, Bytes)>,
    length: Duration,
    flag: impl Fn(&Value) -> bool,
) -> Result<Outage> {
    let taken_before = service.metrics()?.get("lienwatch_messages_total") as u64;
    let rate = (part.len() as f64 / (length.as_secs_f64() / 2.0)).max(1.0);
    let closed = proxy.cut();
    let started = Instant::now();
    let publisher = {
        let names = names.clone();
        std::thread::spawn(move || publish_messages(part, &names, rate))
    };
    let mut report = Outage {
        published: 0,
        taken_before,
        taken_during: 0,
        closed,
        refused: 0,
        samples: 0,
        flagged: 0,
        first_flagged: None,
        last_flagged: None,
        max_in_flight: 0,
    };
    while started.elapsed() < length {
        service.ensure_running()?;
        if let Ok((code, health)) = service.health() {
            report.samples += 1;
            report.max_in_flight = report
                .max_in_flight
                .max(health["kafka_in_flight"].as_u64().unwrap_or_default());
            if code == 503 && health["status"] == "degraded" && flag(&health) {
                report.flagged += 1;
                report.first_flagged.get_or_insert_with(|| health.clone());
                report.last_flagged = Some(health);
            }
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    service.ensure_running()?;
    report.taken_during = service.metrics()?.get("lienwatch_messages_total") as u64;
    report.refused = proxy.refused();
    proxy.restore();
    report.published = publisher
        .join()
        .map_err(|_| anyhow!("publisher panicked"))??;
    Ok(report)
}

#[test]
fn kafka_and_s3_outages_and_a_broker_restart_lose_nothing_and_the_service_recovers() -> Result<()> {
    require_services()?;
    let test_started = Instant::now();
    let length = outage_length()?;
    let dir = tempfile::tempdir()?;
    let sim = fleet(dir.path(), 8, 3, 92)?;
    let (replay_alerts, replay_summary) = replay(&sim, dir.path())?;
    ensure!(!replay_alerts.is_empty(), "the fleet raised no alerts");

    // A private Kafka behind a proxy: it advertises the proxy, so every connection of every
    // client (the service's producer, our consumer) goes through the proxy.
    let tansu_port = free_port()?;
    let kafka_proxy = Proxy::start(SocketAddr::from(([127, 0, 0, 1], tansu_port)))?;
    let _kafka = PrivateKafka::start(dir.path(), tansu_port, kafka_proxy.port)?;
    // The shared S3 server behind a proxy of ours (the test's archive prefix is unique).
    let s3_proxy = Proxy::start(S3.parse()?)?;
    // A private Mosquitto, restarted once.
    let mqtt_port = free_port()?;
    let broker = PrivateBroker::start(dir.path(), mqtt_port)?;

    let mut names = Names::new("outages");
    names.mqtt = format!("127.0.0.1:{mqtt_port}");
    names.kafka = kafka_proxy.addr();
    names.s3 = s3_proxy.addr();
    // The pauses between parts must not move the clock with the wall clock: the alerts are
    // compared with replay's.
    let extra = ConfigExtra {
        pipeline: "idle_clock_after_s = 3600",
        durability: "checkpoint_interval_s = 2",
        ..ConfigExtra::default()
    };
    let http_port = free_port()?;
    let config = write_config_extra(dir.path(), &sim, &names, http_port, 5, &extra)?;
    let mut service = Service::start(&config, http_port, dir.path().join("run.log"))?;

    let mut messages = read_messages(&sim.messages, &names.topic_prefix)?;
    let total = messages.len() as u64;
    let quarter = messages.len() / 4;
    let part4 = messages.split_off(3 * quarter);
    let part3 = messages.split_off(2 * quarter);
    let part2 = messages.split_off(quarter);
    let part1 = messages;

    // 1. Everything up.
    let mut published = publish_messages(part1, &names, 0.0)?;
    service.wait_ingested(published)?;

    // 2. Kafka down while part 2 comes: the service takes it all (the journal is far from its
    // bound), says Kafka is degraded, and catches up once Kafka is back.
    let kafka_down = outage(&mut service, &kafka_proxy, &names, part2, length, |h| {
        h["kafka_degraded"] == true
    })?;
    published += kafka_down.published;
    eprintln!("Kafka cut for {length:?}: {}", kafka_down.describe());
    ensure!(
        kafka_down.first_flagged.is_some(),
        "/health never said 503 degraded with kafka_degraded while Kafka was cut ({} answers; at most {} Kafka messages in flight)",
        kafka_down.samples,
        kafka_down.max_in_flight
    );
    ensure!(
        kafka_down.taken_during >= published,
        "while Kafka was cut the service took {} of the {} messages published",
        kafka_down.taken_during - kafka_down.taken_before,
        kafka_down.published
    );
    let kafka_back = Instant::now();
    service.wait_healthy_within(Duration::from_secs(120))?;
    let kafka_recovered_s = kafka_back.elapsed().as_secs_f64();

    // 3. S3 down while part 3 comes: archive uploads and checkpoints fail and are retried;
    // intake may stop at the archive's bounds; everything is taken once S3 is back.
    let s3_down = outage(&mut service, &s3_proxy, &names, part3, length, |h| {
        h["archive_degraded"] == true || !h["checkpoint_overdue_s"].is_null()
    })?;
    published += s3_down.published;
    eprintln!("S3 cut for {length:?}: {}", s3_down.describe());
    ensure!(
        s3_down.first_flagged.is_some(),
        "/health never said 503 degraded with archive_degraded or checkpoint_overdue_s while S3 was cut ({} answers)",
        s3_down.samples
    );
    let s3_back = Instant::now();
    service.wait_ingested(published)?;
    service.wait_healthy_within(Duration::from_secs(120))?;
    let s3_recovered_s = s3_back.elapsed().as_secs_f64();

    // 4. The broker restarts without our session: the service reconnects, subscribes again,
    // and takes part 4.
    drop(broker);
    service.wait_for(|m| m.get("lienwatch_mqtt_connected") == 0.0)?;
    let (code, down) = service.health()?;
    ensure!(
        code == 503 && down["status"] == "degraded" && down["mqtt_connected"] == false,
        "/health with the broker down: {code} {down}"
    );
    let _broker = PrivateBroker::start(dir.path(), mqtt_port)?;
    service.wait_for(|m| m.get("lienwatch_mqtt_connected") == 1.0)?;
    service.wait_healthy_within(Duration::from_secs(60))?;
    published += publish_messages(part4, &names, 0.0)?;
    ensure!(published == total, "published {published} of {total}");
    service.wait_ingested(total)?;
    service.wait_healthy_within(Duration::from_secs(60))?;
    let metrics = service.metrics()?;
    let (_, summary) = service.terminate()?;
    ensure!(
        summary_number(&summary, "messages")? == total && summary_replayed(&summary) == 0,
        "{total} messages published, the service says:\n{summary}"
    );

    // Nothing lost, nothing twice.
    let rows = archive_rows_match_replay(dir.path(), &names, &replay_summary, "the service")?;
    let kafka = kafka_alerts_match_replay(&names, &replay_alerts)?;
    eprintln!(
        "{total} messages in 4 parts; healthy again {kafka_recovered_s:.1} s after Kafka and {s3_recovered_s:.1} s after S3 came back; \
         /metrics: {} Kafka delivery failures retried, {} archive upload failures retried, {} checkpoints, {} MQTT reconnect attempts; \
         {rows} telemetry rows in S3 = {} accepted by replay, each once; \
         {} alerts from replay all in Kafka: {} messages, {} distinct (id, phase), {} duplicates (differing only in {:?}); {:.0} s",
        metrics.get("lienwatch_kafka_delivery_failures_total"),
        metrics.get("lienwatch_archive_upload_failures_total"),
        metrics.get("lienwatch_checkpoints_total"),
        metrics.get("lienwatch_mqtt_reconnects_total"),
        replay_summary["accepted"],
        replay_alerts.len(),
        kafka.messages,
        kafka.distinct,
        kafka.duplicates,
        kafka.differing_fields,
        test_started.elapsed().as_secs_f64(),
    );
    Ok(())
}

/// A value of `/metrics`, as a count.
fn count(m: &Metrics, name: &str) -> u64 {
    m.get(name) as u64
}

#[test]
fn a_full_journal_stops_intake_until_checkpoints_complete_and_nothing_is_dropped() -> Result<()> {
    require_services()?;
    let test_started = Instant::now();
    let dir = tempfile::tempdir()?;
    let sim = fleet(dir.path(), 8, 3, 93)?;
    let (replay_alerts, replay_summary) = replay(&sim, dir.path())?;

    // The shared S3 server behind a proxy of ours; a private Mosquitto whose queue for our
    // session is unbounded (`max_queued_messages 0`), so it holds what the service does not
    // take.
    let s3_proxy = Proxy::start(S3.parse()?)?;
    let mqtt_port = free_port()?;
    let _broker = PrivateBroker::start(dir.path(), mqtt_port)?;
    let mut names = Names::new("journalfull");
    names.mqtt = format!("127.0.0.1:{mqtt_port}");
    names.s3 = s3_proxy.addr();
    const SEGMENT: u64 = 64 << 10;
    const MAX: u64 = 256 << 10;
    let durability = format!(
        "journal_segment_bytes = {SEGMENT}\njournal_max_bytes = {MAX}\ncheckpoint_interval_s = 1"
    );
    // A short keep-alive: if the MQTT event loop is not polled while intake waits (no
    // PINGREQ, no PUBACK), the broker may drop the connection within the wait (1.5 × 5 s); the
    // service then reconnects and gets the unacknowledged messages again, as duplicates.
    let extra = ConfigExtra {
        pipeline: "idle_clock_after_s = 3600",
        mqtt: "keep_alive_s = 5",
        durability: &durability,
    };
    let http_port = free_port()?;
    let config = write_config_extra(dir.path(), &sim, &names, http_port, 5, &extra)?;
    let mut service = Service::start(&config, http_port, dir.path().join("run.log"))?;

    let mut messages = read_messages(&sim.messages, &names.topic_prefix)?;
    let total = messages.len() as u64;
    let payload_bytes: usize = messages.iter().map(|(_, p)| p.len()).sum();
    ensure!(
        payload_bytes as u64 > 4 * MAX,
        "the fleet's {payload_bytes} bytes hardly exceed the journal bound {MAX}"
    );
    let rest = messages.split_off(300);
    let first = messages.len() as u64;

    // 1. Everything up: the first messages are taken and checkpointed, the journal pruned.
    publish_messages(messages, &names, 0.0)?;
    service.wait_ingested(first)?;
    let checkpoints = service.metrics()?.get("lienwatch_checkpoints_total");
    service.wait_for(|m| m.get("lienwatch_checkpoints_total") >= checkpoints + 2.0)?;

    // 2. S3 cut: no checkpoint can complete, the journal only grows. The rest is published
    // as fast as the broker takes it; the broker acknowledges it all whatever the service
    // takes.
    let before_cut = service.metrics()?;
    let closed = s3_proxy.cut();
    let cut_at = Instant::now();
    let rest_len = rest.len() as u64;
    let publisher = {
        let names = names.clone();
        std::thread::spawn(move || publish_messages(rest, &names, 0.0))
    };
    // Until the service says its journal is full, in /metrics and in /health. The bytes gauge
    // is set when the journal hands its buffer to the disk, so it can show the bytes of the
    // last flush for a moment after intake stopped: wait for it to pass the bound too.
    let (full_metrics, full_health) = loop {
        service.ensure_running()?;
        let m = service.metrics()?;
        if m.get("lienwatch_journal_full") == 1.0 && m.get("lienwatch_journal_bytes") > MAX as f64 {
            let (code, health) = service.health()?;
            if code == 503 && health["status"] == "degraded" && health["journal_full"] == true {
                break (m, health);
            }
        }
        ensure!(
            cut_at.elapsed() < Duration::from_secs(60),
            "no journal_full 60 s after S3 was cut: journal {} bytes, {} messages taken, {} checkpoints (at the cut {})\n{}",
            m.get("lienwatch_journal_bytes"),
            m.get("lienwatch_messages_total"),
            m.get("lienwatch_checkpoints_total"),
            before_cut.get("lienwatch_checkpoints_total"),
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let full_after_s = cut_at.elapsed().as_secs_f64();
    let published_rest = publisher
        .join()
        .map_err(|_| anyhow!("publisher panicked"))??;
    ensure!(
        published_rest == rest_len,
        "published {published_rest} of {rest_len}"
    );
    let journal_bytes = count(&full_metrics, "lienwatch_journal_bytes");
    ensure!(
        journal_bytes > MAX && journal_bytes <= MAX + 4096,
        "journal_full with {journal_bytes} bytes in the journal (bound {MAX}): intake must stop within one message past the bound"
    );

    // 3. The journal stays full for 15 s (three keep-alive intervals): the service takes
    // nothing more while the broker holds the rest; it keeps saying so. (`mqtt_connected` is
    // not looked at: intake, which reports it, reads no MQTT event while it waits.)
    std::thread::sleep(Duration::from_secs(1));
    let held_from = service.metrics()?;
    let received = count(&held_from, "lienwatch_messages_received_total");
    let taken = count(&held_from, "lienwatch_messages_total");
    ensure!(
        received < total,
        "the service received {received} of {total} messages although its journal was full"
    );
    let hold = Duration::from_secs(15);
    let held_started = Instant::now();
    let mut samples = 0usize;
    while held_started.elapsed() < hold {
        service.ensure_running()?;
        let m = service.metrics()?;
        let (code, health) = service.health()?;
        samples += 1;
        ensure!(
            m.get("lienwatch_journal_full") == 1.0 && code == 503 && health["journal_full"] == true,
            "{:.1} s into the wait the journal is no longer full (S3 still cut): journal_full {}, /health {code} {health}, {} checkpoints (at the cut {})\n{}",
            held_started.elapsed().as_secs_f64(),
            m.get("lienwatch_journal_full"),
            m.get("lienwatch_checkpoints_total"),
            before_cut.get("lienwatch_checkpoints_total"),
            service.log_text()
        );
        ensure!(
            count(&m, "lienwatch_messages_received_total") == received
                && count(&m, "lienwatch_messages_total") == taken,
            "with the journal full the service took more: received {received} → {}, taken {taken} → {}",
            m.get("lienwatch_messages_received_total"),
            m.get("lienwatch_messages_total")
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let held = service.metrics()?;
    eprintln!(
        "S3 cut ({closed} connections closed) after {first} messages taken; {rest_len} more published (broker acknowledged all); \
         journal_full {full_after_s:.1} s later at {journal_bytes} bytes (bound {MAX}, segments {SEGMENT}); /health then {full_health}; \
         for {:.0} s the service stayed at {received} received / {taken} taken of {total}, the broker holding the other {}; \
         {samples} samples of /health and /metrics all journal_full; {} checkpoint failures so far",
        hold.as_secs_f64(),
        total - received,
        held.get("lienwatch_checkpoint_failures_total"),
    );

    // 4. S3 back: checkpoints complete, the journal is pruned, intake resumes by itself and
    // takes everything the broker held.
    s3_proxy.restore();
    let restored_at = Instant::now();
    service.wait_for(|m| count(m, "lienwatch_messages_received_total") > received)?;
    let resumed_s = restored_at.elapsed().as_secs_f64();
    let mut last = (u64::MAX, Instant::now());
    let deadline = Instant::now() + Duration::from_secs(180);
    let final_metrics = loop {
        service.ensure_running()?;
        let m = service.metrics()?;
        let received = count(&m, "lienwatch_messages_received_total");
        if received != last.0 {
            last = (received, Instant::now());
        }
        let healthy = matches!(service.health(), Ok((200, _)));
        if received >= total && healthy && last.1.elapsed() >= Duration::from_secs(3) {
            break m;
        }
        ensure!(
            Instant::now() < deadline,
            "180 s after S3 came back: {received} of {total} received, /health {:?}, journal {} bytes, full {}\n{}",
            service.health().ok(),
            m.get("lienwatch_journal_bytes"),
            m.get("lienwatch_journal_full"),
            service.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let caught_up_s = restored_at.elapsed().as_secs_f64();
    let reconnects = count(&final_metrics, "lienwatch_mqtt_reconnects_total");
    let mqtt_log = service.log_lines(&["MQTT"]);
    let waits = service.log_lines(&["intake waits"]).len();
    let (_, summary) = service.terminate()?;
    let run_messages = summary_number(&summary, "messages")?;
    let run_accepted = summary_number(&summary, "accepted")?;
    let run_readings = summary_number(&summary, "readings")?;
    let run_late = summary_number(&summary, "late")?;
    let run_duplicates = summary_number(&summary, "duplicates")?;
    let run_rejects = summary_number(&summary, "rejects")?;
    let replay_number = |key: &str| replay_summary[key].as_u64().unwrap_or_default();
    let replay_duplicates = replay_number("duplicates");
    ensure!(
        summary_replayed(&summary) == 0,
        "a run that never restarted replayed from its journal:\n{summary}"
    );
    // Exact accounting: every published message taken; more only as broker redeliveries
    // (after a reconnect), whose readings are dropped as duplicates (or rejected again):
    // as many accepted and late readings as replay.
    let extra_readings = run_readings.saturating_sub(replay_number("readings"));
    let extra_duplicates = run_duplicates.saturating_sub(replay_duplicates);
    let extra_rejects = run_rejects.saturating_sub(replay_number("rejects_total"));
    ensure!(
        run_messages >= total
            && (reconnects > 0 || run_messages == total)
            && run_accepted == replay_number("accepted")
            && run_late == replay_number("late")
            && run_readings >= replay_number("readings")
            && extra_readings <= extra_duplicates + extra_rejects,
        "{total} published; the service took {run_messages} ({reconnects} MQTT reconnects):\n{summary}\nreplay: {replay_summary}\nMQTT log:\n{}",
        mqtt_log.join("\n")
    );

    // Nothing lost, nothing twice.
    let rows = archive_rows_match_replay(dir.path(), &names, &replay_summary, "the service")?;
    let kafka = kafka_alerts_match_replay(&names, &replay_alerts)?;
    eprintln!(
        "S3 back: intake resumed after {resumed_s:.1} s, all {total} taken and healthy after {caught_up_s:.1} s; \
         the run took {run_messages} messages ({} redelivered after a reconnect, with {extra_readings} readings: {extra_duplicates} more duplicates \
         dropped, {extra_rejects} more rejects), accepted {run_accepted} = replay, late {run_late} = replay, duplicates {run_duplicates} (replay {replay_duplicates}); \
         {} checkpoints, {} checkpoint failures, {} archive upload failures, {reconnects} MQTT reconnect attempts; \
         {rows} telemetry rows in S3 = {} accepted by replay, each once; {} alerts from replay all in Kafka ({} messages, {} duplicates); {:.0} s",
        run_messages - total,
        final_metrics.get("lienwatch_checkpoints_total"),
        final_metrics.get("lienwatch_checkpoint_failures_total"),
        final_metrics.get("lienwatch_archive_upload_failures_total"),
        replay_summary["accepted"],
        replay_alerts.len(),
        kafka.messages,
        kafka.duplicates,
        test_started.elapsed().as_secs_f64(),
    );
    eprintln!("intake waited for the journal {waits} times in all; the service's MQTT log:");
    for line in mqtt_log {
        eprintln!("  {line}");
    }
    Ok(())
}
