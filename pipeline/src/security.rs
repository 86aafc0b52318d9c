//! What `lienwatch check` says about security (issue 5, deliverable 6): warnings for
//! credentials written into the config and for plaintext connections to hosts other than this
//! machine, and a copy of the config with secrets blanked for printing.

use crate::config::Config;

/// Shown instead of a secret.
const REDACTED: &str = "<redacted>";

/// Whether a librdkafka property holds a secret (`sasl.password`, `ssl.key.password`, …).
fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "secret", "sasl.oauthbearer.config"]
        .iter()
        .any(|s| key.contains(s))
}

/// The host of `scheme://[user[:password]@]host[:port][/path]` or `host[:port]`.
fn host(address: &str) -> &str {
    let rest = address.split_once("://").map_or(address, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let rest = rest.split('/').next().unwrap_or(rest);
    if let Some(v6) = rest.strip_prefix('[') {
        return v6.split(']').next().unwrap_or(v6);
    }
    rest.rsplit_once(':').map_or(rest, |(h, _)| h)
}

fn loopback(address: &str) -> bool {
    let h = host(address.trim());
    h.eq_ignore_ascii_case("localhost")
        || h == "::1"
        || h.parse::<std::net::Ipv4Addr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `scheme://user:password@host` with the password blanked.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:{REDACTED}@{host}")
        }
        _ => url.to_owned(),
    }
}

/// Warnings about credentials in the config and plaintext connections off this machine.
pub fn warnings(config: &Config) -> Vec<String> {
    let mut out = Vec::new();
    let m = &config.mqtt;
    if redact_url(&m.url) != m.url {
        out.push(format!(
            "mqtt.url carries a password: use mqtt.username with mqtt.password_env or mqtt.password_file ({})",
            redact_url(&m.url)
        ));
    }
    if m.url.starts_with("mqtt://") && !loopback(&m.url) {
        out.push(format!(
            "MQTT to {} is not encrypted: use mqtts:// (with mqtt.ca_file for a private CA)",
            host(&m.url)
        ));
    }
    let k = &config.kafka;
    if k.enabled {
        let from_env = |key: &str| {
            let name = format!("lienwatch__kafka__properties__{key}");
            std::env::vars_os().any(|(var, _)| var.to_string_lossy().to_ascii_lowercase() == name)
        };
        for key in k
            .properties
            .keys()
            .filter(|key| is_secret(key) && !from_env(key))
        {
            out.push(format!(
                "kafka.properties.{key} is set in the config: keep credentials out of files, e.g. in the environment variable LIENWATCH__KAFKA__PROPERTIES__{}",
                key.to_ascii_uppercase()
            ));
        }
        let protocol = k
            .properties
            .get("security.protocol")
            .map(|p| p.to_ascii_lowercase())
            .unwrap_or_default();
        let encrypted = protocol == "ssl" || protocol == "sasl_ssl";
        let remote: Vec<&str> = k
            .brokers
            .split(',')
            .map(str::trim)
            .filter(|b| !b.is_empty() && !loopback(b))
            .collect();
        if !encrypted && !remote.is_empty() {
            out.push(format!(
                "Kafka to {} is not encrypted: set kafka.properties.\"security.protocol\" = \"ssl\" or \"sasl_ssl\"",
                remote.join(", ")
            ));
        }
    }
    let a = &config.archive;
    if let Some(endpoint) = a.s3_endpoint.as_deref().filter(|_| a.enabled)
        && endpoint.starts_with("http://")
        && !loopback(endpoint)
    {
        out.push(format!(
            "the S3 endpoint {endpoint} is not encrypted: use https:// (with archive.s3_ca_file for a private CA)"
        ));
    }
    if !config.durability.enabled {
        out.push(
            "durability.enabled = false: `lienwatch run` acknowledges messages before they are \
             durable and keeps no checkpoints, so a crash loses what was in memory"
                .to_owned(),
        );
    }
    out
}

/// The config with its secrets blanked, for printing.
pub fn redacted(config: &Config) -> Config {
    let mut c = config.clone();
    c.mqtt.url = redact_url(&c.mqtt.url);
    if c.mqtt.password.is_some() {
        c.mqtt.password = Some(REDACTED.to_owned());
    }
    for (key, value) in &mut c.kafka.properties {
        if is_secret(key) {
            *value = REDACTED.to_owned();
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_and_loopback() {
        assert_eq!(host("mqtts://u:p@broker.example:8883/x"), "broker.example");
        assert_eq!(host("kafka-1:9092"), "kafka-1");
        assert_eq!(host("[::1]:9092"), "::1");
        assert!(loopback("mqtt://127.0.0.1:1883"));
        assert!(loopback("localhost:9092"));
        assert!(loopback("http://[::1]:9000"));
        assert!(!loopback("mqtt://10.0.0.5:1883"));
    }

    #[test]
    fn plaintext_off_this_machine_and_written_credentials_are_named_and_never_shown() {
        let mut c = Config::default();
        c.mqtt.url = "mqtt://fleet:hunter2@broker.example:1883".into();
        c.kafka.enabled = true;
        c.kafka.brokers = "127.0.0.1:9092,kafka.example:9092".into();
        c.kafka
            .properties
            .insert("sasl.password".into(), "hunter3".into());
        c.archive.s3_endpoint = Some("http://s3.example".into());
        let w = warnings(&c).join("\n");
        assert!(w.contains("mqtt.url carries a password"), "{w}");
        assert!(w.contains("MQTT to broker.example is not encrypted"), "{w}");
        assert!(w.contains("kafka.properties.sasl.password"), "{w}");
        assert!(
            w.contains("Kafka to kafka.example:9092 is not encrypted"),
            "{w}"
        );
        assert!(w.contains("S3 endpoint http://s3.example"), "{w}");
        assert!(!w.contains("hunter"), "{w}");
        let shown = toml::to_string(&redacted(&c)).expect("toml");
        assert!(!shown.contains("hunter"), "{shown}");
        assert!(shown.contains("fleet:<redacted>@broker.example"), "{shown}");

        let mut safe = Config::default();
        safe.mqtt.url = "mqtts://broker.example:8883".into();
        safe.kafka.brokers = "kafka.example:9093".into();
        safe.kafka
            .properties
            .insert("security.protocol".into(), "SASL_SSL".into());
        assert!(warnings(&safe).is_empty(), "{:?}", warnings(&safe));
        safe.durability.enabled = false;
        let w = warnings(&safe).join("\n");
        assert!(w.contains("durability.enabled = false"), "{w}");
    }
}
