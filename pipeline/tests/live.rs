//! `lienwatch run` end to end through the real servers that `scripts/services` starts on
//! loopback: Mosquitto (MQTT), tansu (Kafka protocol) and moto (S3).
//!
//! A simulated fleet is published to Mosquitto; the service (the real binary, as a child
//! process) must raise exactly the alerts `lienwatch replay` raises on the same file, deliver
//! them to Kafka, archive every accepted message exactly once in S3 (read back by DuckDB),
//! count the same rejects in `/metrics`, and lose nothing it acknowledged across SIGTERM.

mod common;

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use serde_json::Value;

use common::*;
use pipeline::publish::read_messages;

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

    // Alerts: Kafka holds exactly replay's alerts, keyed by vehicle, with the id header, and
    // no re-emit (nothing restarted).
    let kafka = kafka_alerts_match_replay(&names, &replay_alerts)?;
    ensure!(
        kafka.messages == replay_alerts.len(),
        "{} alerts in Kafka, {} from replay",
        kafka.messages,
        replay_alerts.len()
    );
    let want = comparable(&replay_alerts)?;
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
        let (file, names) = (sim.messages.clone(), names.clone());
        // Slow enough that Mosquitto's default queue for an offline session (1000 messages)
        // holds what comes between the two processes.
        std::thread::spawn(move || publish_file(&file, &names, 400.0))
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
    // The second process first replays the journal from the last checkpoint (the messages
    // the first took after it; the archive files of those epochs were deleted at its start):
    // they count in its `messages` too. The replay is over before MQTT connects.
    let replayed = second.metrics()?.get("lienwatch_journal_replayed_total") as u64;
    let published = publisher
        .join()
        .map_err(|_| anyhow::anyhow!("publisher panicked"))??;
    ensure!(published == messages);
    second.wait_ingested(messages - taken + replayed)?;
    let (_, second_summary) = second.terminate()?;
    let second_replayed = summary_replayed(&second_summary);
    ensure!(
        second_replayed == replayed,
        "the second process replayed {replayed} messages (/metrics) but says:\n{second_summary}"
    );
    // Together: every accepted reading exactly once, as replay archives them.
    archive_matches_replay(dir.path(), &names, &replay_summary, "both runs")?;
    // And no message was taken twice: what the first acknowledged the broker did not
    // deliver again (a redelivered one would be dropped as a duplicate reading, so the
    // archive above does not show it; the duplicates counted do).
    let second_taken = summary_number(&second_summary, "messages")? - second_replayed;
    ensure!(
        taken + second_taken == messages,
        "{messages} messages published; the first process took {taken}, the second {second_taken} from MQTT \
         (+ {second_replayed} replayed): {} taken twice; duplicates dropped: replay {}, second process {} \
         (the broker redelivered messages the first process had taken: its last acknowledgements \
         did not reach the broker before the session closed?)\nsecond:\n{second_summary}",
        (taken + second_taken).saturating_sub(messages),
        replay_summary["duplicates"],
        summary_number(&second_summary, "duplicates")?,
    );
    Ok(())
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
    // The idle clock moves on with the wall clock while the test waits for the reloads, and
    // the readings are stamped up to 4 s in the past: a 1-s window made the first of the last
    // batch late (and counted twice) whenever those waits took long, as on a loaded machine.
    text += "\n[rules]\nreorder_window_s = 10\n";
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
    // Continuing DA's `seq`, so they are processed as they come (no window to wait out).
    publish_messages(
        readings_now(&names, "DA", 5, 4, 31.0, "VINX0000000000009")?,
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
