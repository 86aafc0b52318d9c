//! Publishing a JSON Lines messages file to MQTT, one message per line, each on
//! `<prefix>/<device_id>` (SPEC §2): what `lienwatch simulate --mqtt` and the demo do. The
//! pipeline then sees what `lienwatch replay` sees in the file.

use std::io::BufRead;
use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use serde::Deserialize;

use connectors::MqttSettings;

/// Where and how to publish.
#[derive(Clone, Debug)]
pub struct PublishOptions {
    /// Broker, credentials, TLS and QoS.
    pub mqtt: MqttSettings,
    /// Topic prefix; the device id is the last level.
    pub topic_prefix: String,
    /// Messages per second; `None` = as fast as the broker takes them.
    pub rate_per_s: Option<f64>,
}

/// The topic device of a line: its `device_id`, or that of a batch's first element. Lines
/// without a usable one (malformed ones) get none: they go to `<prefix>/`, whose empty last
/// level names no device, so the pipeline judges them by their payload alone, as `replay`.
fn device_of_line(line: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Head {
        device_id: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Payload {
        One(Head),
        Batch(Vec<Head>),
    }
    let id = match serde_json::from_slice::<Payload>(line) {
        Ok(Payload::One(h)) => h.device_id,
        Ok(Payload::Batch(b)) => b.into_iter().next().and_then(|h| h.device_id),
        Err(_) => None,
    };
    id.filter(|d| !d.is_empty() && !d.contains(['/', '+', '#', '\0']))
}

/// Reads `path` (blank lines skipped) into (topic, payload) pairs.
pub fn read_messages(path: &Path, topic_prefix: &str) -> anyhow::Result<Vec<(String, Bytes)>> {
    let file = std::fs::File::open(path).with_context(|| format!("{}", path.display()))?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(file).split(b'\n') {
        let line = line.with_context(|| format!("reading {}", path.display()))?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let device = device_of_line(&line).unwrap_or_default();
        let topic = format!("{topic_prefix}/{device}");
        out.push((topic, Bytes::from(line)));
    }
    Ok(out)
}

/// Publishes `messages` on a runtime of its own; returns how many went out.
pub fn publish(options: &PublishOptions, messages: Vec<(String, Bytes)>) -> anyhow::Result<u64> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the publisher's runtime")?;
    let sent = runtime
        .block_on(connectors::mqtt::publish(
            &options.mqtt,
            messages,
            options.rate_per_s,
        ))
        .with_context(|| format!("publishing to {}", options.mqtt.url))?;
    Ok(sent)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_device_comes_from_the_payload() {
        let device = |line: &[u8]| device_of_line(line);
        assert_eq!(
            device(br#"{"device_id":"86012","ts":1}"#).as_deref(),
            Some("86012")
        );
        assert_eq!(
            device(br#"[{"device_id":"D2","ts":1},{"device_id":"D2","ts":2}]"#).as_deref(),
            Some("D2")
        );
        assert_eq!(device(b"not json"), None);
        assert_eq!(device(br#"{"ts":1}"#), None);
        assert_eq!(device(br#"{"device_id":""}"#), None);
        assert_eq!(device(br#"{"device_id":"a/b"}"#), None);
    }
}
