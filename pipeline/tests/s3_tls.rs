//! The S3 archive over TLS with a private CA (`archive.s3_ca_file`): a moto server of the
//! test's own serves HTTPS with a certificate of a test CA; `lienwatch replay` (the binary)
//! archives a small fleet to it trusting that CA, and fails at start without it.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::Instant;

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use common::*;

/// `curl` over HTTPS trusting `ca`, requests signed (SigV4) with the test credentials; the
/// response body. Fails on an HTTP error.
fn curl(ca: &Path, args: &[&str]) -> Result<Vec<u8>> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--aws-sigv4",
            "aws:amz:us-east-1:s3",
            "--user",
            "test:testtest",
            "--cacert",
        ])
        .arg(ca)
        .args(args)
        .output()
        .context("curl")?;
    ensure!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// The keys under `prefix/` in `bucket` (ListObjectsV2 over HTTPS).
fn list_keys(ca: &Path, endpoint: &str, bucket: &str, prefix: &str) -> Result<Vec<String>> {
    let body = curl(
        ca,
        &[&format!(
            "{endpoint}/{bucket}?list-type=2&max-keys=1000&prefix={prefix}/"
        )],
    )?;
    let xml = String::from_utf8(body)?;
    ensure!(
        xml.contains("<IsTruncated>false</IsTruncated>"),
        "listing of {prefix}/ truncated or unexpected:\n{xml}"
    );
    Ok(xml
        .split("<Key>")
        .skip(1)
        .filter_map(|s| s.split_once("</Key>").map(|(key, _)| key.to_owned()))
        .collect())
}

/// `lienwatch replay` (the binary) of `sim` with the config `config`; its output.
fn replay_binary(
    sim: &pipeline::simulate::SimOutputs,
    dir: &Path,
    config: &Path,
    label: &str,
) -> Result<Output> {
    Ok(Command::new(env!("CARGO_BIN_EXE_lienwatch"))
        .arg("replay")
        .arg("--config")
        .arg(config)
        .arg("--input")
        .arg(&sim.messages)
        .arg("--vehicles")
        .arg(&sim.vehicles_csv)
        .arg("--fences")
        .arg(&sim.fences)
        .arg("--alerts-out")
        .arg(dir.join(format!("{label}-alerts.jsonl")))
        .arg("--features-out")
        .arg(dir.join(format!("{label}-features.jsonl")))
        .arg("--summary-out")
        .arg(dir.join(format!("{label}-summary.json")))
        .args(["-w", "2"])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "testtest")
        .env("RUST_BACKTRACE", "0")
        .output()?)
}

/// The last `n` lines of `bytes`.
fn tail(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn replay_archives_to_s3_over_tls_trusting_the_ca_of_its_config() -> Result<()> {
    let started = Instant::now();
    let dir = tempfile::tempdir()?;
    test_certificates(dir.path())?;
    let ca = dir.path().join("ca.pem");
    let moto = PrivateMoto::start_tls(dir.path(), free_port()?)?;
    let endpoint = moto.endpoint();
    let bucket = "lienwatch-tls";
    curl(&ca, &["-X", "PUT", &format!("{endpoint}/{bucket}")])
        .context("creating the bucket over HTTPS")?;

    // The reference: replay in process, archiving to a local directory.
    let sim = fleet(dir.path(), 4, 2, 68)?;
    let (_, reference) = replay(&sim, dir.path())?;
    let accepted = reference["accepted"].as_u64().unwrap_or_default();
    ensure!(
        accepted > 0,
        "the fleet has no accepted reading: {reference}"
    );

    let id = unique("s3tls");
    let config = |prefix: &str, ca_line: &str| -> Result<std::path::PathBuf> {
        let path = dir.path().join(format!("{prefix}.toml"));
        std::fs::write(
            &path,
            format!(
                "[archive]\nurl = \"s3://{bucket}/{id}/{prefix}\"\ns3_endpoint = \"{endpoint}\"\ns3_region = \"us-east-1\"\n{ca_line}\n"
            ),
        )?;
        Ok(path)
    };

    // With the CA (a path relative to the config file): the replay archives everything.
    let trusted = config("trusted", "s3_ca_file = \"ca.pem\"")?;
    let run_started = Instant::now();
    let out = replay_binary(&sim, dir.path(), &trusted, "trusted")?;
    let run_s = run_started.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "lienwatch replay with s3_ca_file exited with {}:\n{}",
        out.status,
        tail(&out.stderr, 30)
    );
    let summary: Value = serde_json::from_str(&std::fs::read_to_string(
        dir.path().join("trusted-summary.json"),
    )?)?;
    ensure!(
        summary["accepted"] == reference["accepted"]
            && summary["archive"]["telemetry_rows"] == reference["archive"]["telemetry_rows"],
        "over TLS the replay says {summary}\nin process (local archive) {reference}"
    );
    let keys = list_keys(&ca, &endpoint, bucket, &format!("{id}/trusted"))?;
    let files = summary["archive"]["files"].as_u64().unwrap_or_default();
    ensure!(
        keys.len() as u64 == files && files > 0,
        "the replay wrote {files} archive files, {} objects are under the prefix:\n{keys:#?}",
        keys.len()
    );

    // Read the telemetry back over HTTPS: the same (device, ts, seq) rows as the local
    // archive, each as often.
    let copy = dir.path().join("s3-copy");
    let telemetry: Vec<&String> = keys.iter().filter(|k| k.contains("/telemetry/")).collect();
    ensure!(!telemetry.is_empty(), "no telemetry objects: {keys:#?}");
    let mut args = vec!["--create-dirs".to_owned()];
    for key in &telemetry {
        let local = key
            .strip_prefix(&format!("{id}/trusted/"))
            .context("key outside the prefix")?;
        args.push(format!("{endpoint}/{bucket}/{key}"));
        args.push("-o".into());
        args.push(copy.join(local).display().to_string());
    }
    curl(&ca, &args.iter().map(String::as_str).collect::<Vec<_>>())?;
    let got = telemetry_keys(&copy.display().to_string())?;
    let want = telemetry_keys(&dir.path().join("replay-archive").display().to_string())?;
    let rows: u64 = got.iter().filter_map(|r| r[3].as_u64()).sum();
    ensure!(
        rows == accepted && got == want,
        "{rows} telemetry rows read back over HTTPS ({} distinct), {accepted} accepted; \
         the local archive has {} distinct",
        got.len(),
        want.len()
    );

    eprintln!(
        "HTTPS moto at {endpoint}: with s3_ca_file (relative to the config) the replay took {run_s:.1} s and \
         archived {files} files ({} telemetry), all listed over HTTPS; {rows} telemetry rows read back over HTTPS \
         = {accepted} accepted, row for row as the in-process replay's local archive",
        telemetry.len()
    );

    // Without the CA the server's certificate is not trusted: the replay fails at start
    // (the store is probed before any input is read), says why, and writes nothing.
    let untrusted = config("untrusted", "")?;
    let failed_started = Instant::now();
    let out = replay_binary(&sim, dir.path(), &untrusted, "untrusted")?;
    let failed_s = failed_started.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error_line = stderr
        .lines()
        .find(|l| l.starts_with("Error:"))
        .unwrap_or_default()
        .to_owned();
    ensure!(
        !out.status.success(),
        "lienwatch replay without s3_ca_file succeeded against a server of an untrusted CA:\n{}",
        tail(&out.stderr, 30)
    );
    let untrusted_keys = list_keys(&ca, &endpoint, bucket, &format!("{id}/untrusted"))?;
    ensure!(
        untrusted_keys.is_empty() && !dir.path().join("untrusted-summary.json").exists(),
        "without the CA the replay wrote {} objects or a summary",
        untrusted_keys.len()
    );
    ensure!(
        failed_s < 30.0,
        "without the CA the replay took {failed_s:.1} s to fail"
    );
    ensure!(
        stderr.to_lowercase().contains("certificate"),
        "without s3_ca_file the replay failed ({}) in {failed_s:.1} s, but its error does not say \
         the certificate is not trusted:\n{}",
        out.status,
        tail(&out.stderr, 12)
    );
    eprintln!(
        "without s3_ca_file the replay failed in {failed_s:.1} s ({}), no object written: {error_line}; {:.0} s in all",
        out.status,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
