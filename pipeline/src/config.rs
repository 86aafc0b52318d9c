//! The TOML configuration (SPEC §7): one file, every key documented in `configs/local.toml`,
//! unknown keys rejected, any key overridable by `LIENWATCH__SECTION__KEY` environment
//! variables. Errors name the file, line and key (or the environment variable).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use connectors::archive::{ArchiveConfig, S3Options};
use connectors::{KafkaSettings, MqttSettings};
use operators::config::RulesConfig;

/// The prefix of environment overrides: `LIENWATCH__ARCHIVE__URL=/data` sets `archive.url`.
pub const ENV_PREFIX: &str = "LIENWATCH__";

/// The whole configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Timely worker threads and dataflow settings.
    pub pipeline: PipelineConfig,
    /// Vehicle registry and fences.
    pub registry: RegistryConfig,
    /// The JSON Lines alert sink.
    pub alerts: AlertsConfig,
    /// The JSON Lines sink of daily features.
    pub features: FeaturesConfig,
    /// The Parquet archive.
    pub archive: ArchiveSettings,
    /// Input decoding.
    pub decode: DecodeConfig,
    /// Alert rules.
    pub rules: RulesConfig,
    /// `run`: the MQTT source.
    pub mqtt: MqttSettings,
    /// `run`: the Kafka alert sink.
    pub kafka: KafkaSettings,
    /// `run`: the metrics and health endpoint.
    pub http: HttpConfig,
    /// `run`: the journal before acks, checkpoints and recovery.
    pub durability: DurabilityConfig,
}

/// `[pipeline]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PipelineConfig {
    /// Worker threads in this process.
    pub workers: usize,
    /// Replay: input lines per ingest epoch. The pipeline clock advances once per epoch; the
    /// value is independent of the worker count so replays are reproducible.
    pub replay_epoch_lines: u64,
    /// Replay: consecutive lines one worker decodes before the next worker's turn, for the
    /// lines not decoded by their vehicle's worker (those that do not start with a plain
    /// `{"device_id":"…"`, and every line when the input is stdin).
    pub replay_block_lines: u64,
    /// `run`: length of an ingest epoch in ms; the pipeline clock advances once per epoch.
    pub epoch_ms: u64,
    /// `run`: seconds a shutdown waits for Kafka to confirm the last alerts before giving up
    /// (and exiting non-zero).
    pub shutdown_timeout_s: u64,
    /// `run`: when the MQTT session is subscribed but no message at all came for this many
    /// seconds, the pipeline clock follows the wall clock, so silence is still noticed
    /// (SPEC §4); while disconnected it holds.
    pub idle_clock_after_s: u64,
    /// `run` as a cluster: `host:port` of every process, in the same order on all of them;
    /// empty = a single process. Vehicles are spread over all workers of all processes.
    pub hosts: Vec<String>,
    /// `run` as a cluster: this process's index in `hosts`.
    pub process: usize,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        Self {
            workers: 1,
            replay_epoch_lines: 8192,
            replay_block_lines: 512,
            epoch_ms: 100,
            shutdown_timeout_s: 60,
            idle_clock_after_s: 60,
            hosts: Vec::new(),
            process: 0,
        }
    }
}

/// `[registry]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// `vehicles.csv` (SPEC §3); unset = every device is unregistered.
    pub vehicles_csv: Option<PathBuf>,
    /// `fences.geojson` (SPEC §3); unset = no fences.
    pub fences_geojson: Option<PathBuf>,
    /// `run` checks the files for changes this often and reloads them (SIGHUP reloads at
    /// once); 0 = only on SIGHUP.
    pub reload_check_s: u64,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            vehicles_csv: None,
            fences_geojson: None,
            reload_check_s: 5,
        }
    }
}

impl RegistryConfig {
    /// Reference data ships with its config: relative paths are taken from the config
    /// file's directory.
    fn resolve_relative_to(&mut self, dir: &Path) {
        for path in [&mut self.vehicles_csv, &mut self.fences_geojson]
            .into_iter()
            .flatten()
        {
            if path.is_relative() {
                *path = dir.join(&*path);
            }
        }
    }
}

/// `[alerts]`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AlertsConfig {
    /// JSON Lines file the alerts are appended to (`-` = stdout); unset = none.
    pub jsonl_path: Option<PathBuf>,
}

/// `[features]`: where the daily features rows (SPEC §5) go besides the archive and Kafka.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FeaturesConfig {
    /// JSON Lines file the rows (revisions included) are appended to (`-` = stdout); unset =
    /// none.
    pub jsonl_path: Option<PathBuf>,
}

/// `[archive]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveSettings {
    /// Whether the Parquet archive is written.
    pub enabled: bool,
    /// Root of the datasets: a local directory (`file://` allowed) or `s3://bucket/prefix`
    /// (credentials from the environment: `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`).
    pub url: String,
    /// S3 endpoint of a non-AWS store (`http://127.0.0.1:9000`); unset = AWS.
    pub s3_endpoint: Option<String>,
    /// S3 region; unset = `AWS_REGION`, else `us-east-1`.
    pub s3_region: Option<String>,
    /// Path-style S3 requests (most S3-compatible servers need them).
    pub s3_path_style: bool,
    /// PEM CA bundle trusted for an `https://` S3 endpoint (a private CA); relative to the
    /// config file.
    pub s3_ca_file: Option<PathBuf>,
    /// Files above this many bytes are uploaded in parts of this size (at least 5 MiB).
    pub multipart_part_bytes: usize,
    /// Roll a file at this many (uncompressed, estimated) bytes.
    pub max_file_bytes: u64,
    /// Roll a file after this many seconds.
    pub max_file_age_s: u64,
    /// Rows per Parquet row group.
    pub row_group_rows: usize,
    /// zstd level.
    pub zstd_level: i32,
}

impl Default for ArchiveSettings {
    fn default() -> Self {
        let d = ArchiveConfig::default();
        Self {
            enabled: true,
            url: d.root,
            s3_endpoint: d.s3.endpoint,
            s3_region: d.s3.region,
            s3_path_style: d.s3.path_style,
            s3_ca_file: d.s3.ca_file,
            multipart_part_bytes: d.multipart_part_bytes,
            max_file_bytes: d.max_file_bytes,
            max_file_age_s: d.max_file_age_s,
            row_group_rows: d.row_group_rows,
            zstd_level: d.zstd_level,
        }
    }
}

impl ArchiveSettings {
    /// The connector's settings.
    pub fn connector(&self) -> ArchiveConfig {
        ArchiveConfig {
            root: self.url.clone(),
            s3: S3Options {
                endpoint: self.s3_endpoint.clone(),
                region: self.s3_region.clone(),
                path_style: self.s3_path_style,
                ca_file: self.s3_ca_file.clone(),
            },
            multipart_part_bytes: self.multipart_part_bytes,
            max_file_bytes: self.max_file_bytes,
            max_file_age_s: self.max_file_age_s,
            row_group_rows: self.row_group_rows,
            zstd_level: self.zstd_level,
            yield_to_workers: false,
        }
    }
}

/// `[http]`: Prometheus `/metrics` and `/health`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve the endpoints.
    pub enabled: bool,
    /// Listen address.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9464".into(),
        }
    }
}

/// `[durability]`: what `run` does so that no message the broker handed over is lost.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DurabilityConfig {
    /// Journal every received message to local disk before acknowledging it, checkpoint the
    /// per-vehicle state to the archive's object store, and recover from both at start.
    pub enabled: bool,
    /// The journal's directory (each process of a cluster uses `p<process>` below it).
    pub journal_dir: PathBuf,
    /// Group commit: appended messages are fsynced (and then acknowledged) at this interval.
    pub fsync_interval_ms: u64,
    /// Size of one journal segment file.
    pub journal_segment_bytes: u64,
    /// Back-pressure bound: while the journal holds more than this (a checkpoint cannot
    /// complete, e.g. Kafka or the object store is down), no more messages are taken from MQTT.
    pub journal_max_bytes: u64,
    /// Checkpoint interval (state, archive files, Kafka confirmations; under
    /// `<archive.url>/_checkpoints`). Archive files are closed at every checkpoint.
    pub checkpoint_interval_s: u64,
    /// Complete checkpoints kept in the object store (older ones are deleted).
    pub checkpoints_kept: usize,
}

impl Default for DurabilityConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            journal_dir: PathBuf::from("lienwatch-data/journal"),
            fsync_interval_ms: 10,
            journal_segment_bytes: 64 << 20,
            journal_max_bytes: 4 << 30,
            checkpoint_interval_s: 30,
            checkpoints_kept: 2,
        }
    }
}

/// `[decode]`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DecodeConfig {
    /// Raw bytes kept with a rejected message.
    pub max_reject_raw_bytes: usize,
}

impl Default for DecodeConfig {
    fn default() -> Self {
        Self {
            max_reject_raw_bytes: 64 * 1024,
        }
    }
}

/// A configuration that could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML or has a bad key or value.
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong, naming the key.
        message: String,
    },
    /// An environment override is not valid.
    #[error("environment variable {var}: {message}")]
    Env {
        /// The variable.
        var: String,
        /// What is wrong.
        message: String,
    },
    /// A value is out of its valid range.
    #[error("{key}: {message}")]
    Value {
        /// The key.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

impl Config {
    /// Loads `path` (or the defaults without one) and applies environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Like [`Config::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (mut table, base) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
                    path: path.to_owned(),
                    source,
                })?;
                let config: Config = toml::from_str(&text).map_err(|e| invalid(path, &text, &e))?;
                let table: toml::Table =
                    toml::from_str(&text).map_err(|e| invalid(path, &text, &e))?;
                (table, config)
            }
            None => (toml::Table::new(), Config::default()),
        };
        let mut overridden = Vec::new();
        for (var, value) in env {
            let Some(key) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let keys: Vec<String> = key.split("__").map(str::to_ascii_lowercase).collect();
            set_path(&mut table, &keys, parse_env_value(&value)).map_err(|message| {
                ConfigError::Env {
                    var: var.clone(),
                    message,
                }
            })?;
            overridden.push(var);
        }
        let config = if overridden.is_empty() {
            base
        } else {
            Config::deserialize(toml::Value::Table(table)).map_err(|e| ConfigError::Env {
                var: overridden.join(", "),
                message: e.message().to_owned(),
            })?
        };
        let mut config = config;
        if let Some(dir) = path.and_then(Path::parent) {
            config.registry.resolve_relative_to(dir);
            for file in [
                &mut config.mqtt.password_file,
                &mut config.mqtt.ca_file,
                &mut config.mqtt.client_cert_file,
                &mut config.mqtt.client_key_file,
                &mut config.archive.s3_ca_file,
                &mut config.kafka.sasl_password_file,
            ]
            .into_iter()
            .flatten()
            {
                if file.is_relative() {
                    *file = dir.join(&*file);
                }
            }
        }
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges serde cannot express.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let positive = |key: &'static str, ok: bool| {
            if ok {
                Ok(())
            } else {
                Err(ConfigError::Value {
                    key,
                    message: "must be greater than zero".to_owned(),
                })
            }
        };
        positive("pipeline.workers", self.pipeline.workers > 0)?;
        positive(
            "pipeline.replay_epoch_lines",
            self.pipeline.replay_epoch_lines > 0,
        )?;
        positive(
            "pipeline.replay_block_lines",
            self.pipeline.replay_block_lines > 0,
        )?;
        positive("archive.row_group_rows", self.archive.row_group_rows > 0)?;
        positive("archive.max_file_bytes", self.archive.max_file_bytes > 0)?;
        positive(
            "rules.offline.wired_after_s",
            self.rules.offline.wired_after_s > 0,
        )?;
        positive(
            "rules.offline.wireless_after_s",
            self.rules.offline.wireless_after_s > 0,
        )?;
        positive("pipeline.epoch_ms", self.pipeline.epoch_ms > 0)?;
        positive(
            "durability.fsync_interval_ms",
            self.durability.fsync_interval_ms > 0,
        )?;
        positive(
            "durability.checkpoint_interval_s",
            self.durability.checkpoint_interval_s > 0,
        )?;
        positive(
            "durability.journal_segment_bytes",
            self.durability.journal_segment_bytes > 0,
        )?;
        positive(
            "durability.checkpoints_kept",
            self.durability.checkpoints_kept > 0,
        )?;
        if self.durability.journal_max_bytes < 2 * self.durability.journal_segment_bytes {
            // Only whole closed segments are dropped: a smaller bound could never be met.
            return Err(ConfigError::Value {
                key: "durability.journal_max_bytes",
                message: format!(
                    "{} is less than twice durability.journal_segment_bytes ({})",
                    self.durability.journal_max_bytes, self.durability.journal_segment_bytes
                ),
            });
        }
        if !self.pipeline.hosts.is_empty() && self.pipeline.process >= self.pipeline.hosts.len() {
            return Err(ConfigError::Value {
                key: "pipeline.process",
                message: format!(
                    "{} is not an index of pipeline.hosts ({} hosts)",
                    self.pipeline.process,
                    self.pipeline.hosts.len()
                ),
            });
        }
        if self.pipeline.hosts.len() > 1 && self.mqtt.shared_group.is_none() {
            return Err(ConfigError::Value {
                key: "mqtt.shared_group",
                message: "a cluster of processes must split the MQTT stream with a shared \
                          subscription group; without one every process would read every message"
                    .to_owned(),
            });
        }
        positive("mqtt.channel_capacity", self.mqtt.channel_capacity > 0)?;
        positive("mqtt.topics", !self.mqtt.topics.is_empty())?;
        if self.mqtt.qos > 1 {
            return Err(ConfigError::Value {
                key: "mqtt.qos",
                message: format!("{} is not 0 or 1", self.mqtt.qos),
            });
        }
        if !matches!(self.mqtt.protocol_version, 4 | 5) {
            return Err(ConfigError::Value {
                key: "mqtt.protocol_version",
                message: format!(
                    "{}: expected 5 (MQTT 5) or 4 (MQTT 3.1.1)",
                    self.mqtt.protocol_version
                ),
            });
        }
        if let (Some(alerts), Some(features)) = (&self.alerts.jsonl_path, &self.features.jsonl_path)
            && alerts == features
        {
            // Two writers on one file (or both on stdout) would interleave partial lines.
            return Err(ConfigError::Value {
                key: "features.jsonl_path",
                message: format!(
                    "{} is alerts.jsonl_path too; alerts and features need files of their own",
                    features.display()
                ),
            });
        }
        if !(1..=22).contains(&self.archive.zstd_level) {
            return Err(ConfigError::Value {
                key: "archive.zstd_level",
                message: format!("{} is not in 1..=22", self.archive.zstd_level),
            });
        }
        Ok(())
    }
}

fn invalid(path: &Path, text: &str, e: &toml::de::Error) -> ConfigError {
    let offset = e.span().map_or(0, |s| s.start);
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    ConfigError::Invalid {
        path: path.to_owned(),
        line,
        column,
        message: e.message().to_owned(),
    }
}

/// Reads an override as a TOML value (numbers, booleans, arrays), else as a string.
fn parse_env_value(raw: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

fn set_path(table: &mut toml::Table, keys: &[String], value: toml::Value) -> Result<(), String> {
    match keys {
        [] => Err("no key after the prefix".to_owned()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [first, rest @ ..] => {
            let entry = table
                .entry(first.clone())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            match entry {
                toml::Value::Table(t) => set_path(t, rest, value),
                _ => Err(format!("`{first}` is not a table")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        std::io::Write::write_all(&mut f, text.as_bytes()).unwrap();
        f
    }

    #[test]
    fn defaults_without_a_file() {
        let c = Config::load_with_env(None, []).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.rules.offline.wired_after_s, 1800);
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        let f = write("[pipeline]\nworkers = 2\n\n[rules.offline]\nwired_after = 10\n");
        let e = Config::load_with_env(Some(f.path()), [])
            .unwrap_err()
            .to_string();
        assert!(e.contains(":5:"), "{e}");
        assert!(e.contains("wired_after"), "{e}");
    }

    #[test]
    fn bad_type_names_the_line() {
        let f = write("[archive]\nenabled = \"yes\"\n");
        let e = Config::load_with_env(Some(f.path()), [])
            .unwrap_err()
            .to_string();
        assert!(e.contains(":2:"), "{e}");
    }

    #[test]
    fn env_overrides_apply_and_are_checked() {
        let f = write("[pipeline]\nworkers = 2\n");
        let env = [
            ("LIENWATCH__PIPELINE__WORKERS".to_owned(), "3".to_owned()),
            ("LIENWATCH__ARCHIVE__URL".to_owned(), "/tmp/x".to_owned()),
            (
                "LIENWATCH__RULES__OFFLINE__WIRED_AFTER_S".to_owned(),
                "60".to_owned(),
            ),
            ("OTHER".to_owned(), "1".to_owned()),
        ];
        let c = Config::load_with_env(Some(f.path()), env).unwrap();
        assert_eq!(c.pipeline.workers, 3);
        assert_eq!(c.archive.url, "/tmp/x");
        assert_eq!(c.rules.offline.wired_after_s, 60);
        let f = write("[registry]\nvehicles_csv = \"vehicles.csv\"\n");
        let c = Config::load_with_env(Some(f.path()), []).unwrap();
        assert_eq!(
            c.registry.vehicles_csv.unwrap(),
            f.path().parent().unwrap().join("vehicles.csv")
        );
        let bad = [("LIENWATCH__PIPELINE__WORKRS".to_owned(), "3".to_owned())];
        let e = Config::load_with_env(None, bad).unwrap_err().to_string();
        assert!(e.contains("LIENWATCH__PIPELINE__WORKRS"), "{e}");
    }

    #[test]
    fn ranges_are_checked() {
        let f = write("[pipeline]\nworkers = 0\n");
        let e = Config::load_with_env(Some(f.path()), [])
            .unwrap_err()
            .to_string();
        assert!(e.contains("pipeline.workers"), "{e}");
    }

    #[test]
    fn alerts_and_features_need_files_of_their_own() {
        let f = write("[alerts]\njsonl_path = \"-\"\n[features]\njsonl_path = \"f.jsonl\"\n");
        let c = Config::load_with_env(Some(f.path()), []).unwrap();
        assert_eq!(c.features.jsonl_path.as_deref(), Some(Path::new("f.jsonl")));
        let stdout = [("LIENWATCH__FEATURES__JSONL_PATH".to_owned(), "-".to_owned())];
        let e = Config::load_with_env(Some(f.path()), stdout)
            .unwrap_err()
            .to_string();
        assert!(e.contains("features.jsonl_path"), "{e}");
    }
}
