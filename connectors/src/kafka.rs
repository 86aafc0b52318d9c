//! The Kafka alert sink (SPEC §4): alerts as JSON to `lienwatch.alerts`, key `vehicle_id`,
//! through an idempotent rdkafka `FutureProducer` (`acks=all`). A delivery that fails is
//! counted and retried with backoff until it succeeds; nothing is dropped. Shutdown waits
//! for every delivery.
//!
//! Sends are non-blocking for the timely worker: each alert becomes a task on the tokio
//! runtime that owns its bytes until the broker confirms it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::error::{KafkaError as KafkaClientError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Settings of the Kafka sink: the `[kafka]` section of the config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSettings {
    /// Send alerts to Kafka (`run`).
    pub enabled: bool,
    /// `bootstrap.servers`.
    pub brokers: String,
    /// Topic of the alerts (key `vehicle_id`, header `alert_id`).
    pub alerts_topic: String,
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
    /// Further librdkafka properties, passed through (`security.protocol`, `sasl.*`,
    /// `ssl.*`, `compression.type`, ...); they override the defaults set here.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSettings {
    fn default() -> Self {
        Self {
            enabled: true,
            brokers: "127.0.0.1:9092".into(),
            alerts_topic: "lienwatch.alerts".into(),
            client_id: "lienwatch".into(),
            create_topics: true,
            topic_partitions: 3,
            topic_replication: 1,
            retry_backoff_max_ms: 30_000,
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
    /// The alerts topic could not be created.
    #[error("kafka topic {topic}: {message}")]
    Topic {
        /// The topic.
        topic: String,
        /// What the broker said.
        message: String,
    },
}

/// Alerts sent and not yet confirmed.
#[derive(Default)]
struct InFlight {
    count: AtomicU64,
    idle: Notify,
}

/// The producer of alerts; cheap to clone, one per process.
#[derive(Clone)]
pub struct AlertProducer {
    producer: FutureProducer,
    topic: Arc<str>,
    runtime: tokio::runtime::Handle,
    in_flight: Arc<InFlight>,
    backoff_max: Duration,
}

impl AlertProducer {
    /// Creates the producer (and the topic, if asked) for use on `runtime`.
    pub async fn connect(
        settings: &KafkaSettings,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, KafkaError> {
        let config = client_config(settings);
        if settings.create_topics {
            create_topic(&config, settings).await?;
        }
        let producer: FutureProducer = config.create().map_err(KafkaError::Client)?;
        Ok(Self {
            producer,
            topic: settings.alerts_topic.as_str().into(),
            runtime,
            in_flight: Arc::default(),
            backoff_max: Duration::from_millis(settings.retry_backoff_max_ms.max(100)),
        })
    }

    /// Queues one alert: key `vehicle_id`, header `alert_id`, value `payload`. The alert
    /// enters librdkafka's queue here, in call order, so one worker's alerts (and so one
    /// vehicle's) keep their order; the idempotent producer keeps that order through its own
    /// retries. While that queue is full this waits (back-pressure on the dataflow). A
    /// delivery that still fails (after `message.timeout.ms`) is counted and sent again until
    /// it is confirmed: never dropped, though then possibly after later alerts.
    pub fn send(&self, vehicle_id: &str, alert_id: &str, payload: Vec<u8>) {
        self.in_flight.count.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!("lienwatch_kafka_in_flight").increment(1.0);
        let delivery = loop {
            let record = FutureRecord::to(&self.topic)
                .key(vehicle_id)
                .payload(&payload)
                .headers(alert_header(alert_id));
            match self.producer.send_result(record) {
                Ok(delivery) => break Some(delivery),
                Err((KafkaClientError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => {
                    metrics::counter!("lienwatch_kafka_delivery_failures_total").increment(1);
                    tracing::warn!(%error, alert_id, "Kafka refused an alert; retrying");
                    break None;
                }
            }
        };
        let this = self.clone();
        let (key, id) = (vehicle_id.to_owned(), alert_id.to_owned());
        self.runtime.spawn(async move {
            // A refusal at enqueue was counted there.
            let confirmed = match delivery {
                Some(delivery) => match delivery.await {
                    Ok(Ok(_)) => true,
                    Ok(Err((error, _))) => {
                        metrics::counter!("lienwatch_kafka_delivery_failures_total").increment(1);
                        tracing::warn!(%error, alert_id = id, "Kafka delivery failed; retrying");
                        false
                    }
                    Err(_) => {
                        metrics::counter!("lienwatch_kafka_delivery_failures_total").increment(1);
                        false
                    }
                },
                None => false,
            };
            if confirmed {
                metrics::counter!("lienwatch_kafka_deliveries_total").increment(1);
            } else {
                this.deliver(&key, &id, &payload).await;
            }
            metrics::gauge!("lienwatch_kafka_in_flight").decrement(1.0);
            if this.in_flight.count.fetch_sub(1, Ordering::AcqRel) == 1 {
                this.in_flight.idle.notify_waiters();
            }
        });
    }

    /// Sends again until confirmed, with backoff.
    async fn deliver(&self, key: &str, alert_id: &str, payload: &[u8]) {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1u32;
        loop {
            let record = FutureRecord::to(&self.topic)
                .key(key)
                .payload(payload)
                .headers(alert_header(alert_id));
            match self.producer.send(record, Timeout::Never).await {
                Ok(_) => {
                    metrics::counter!("lienwatch_kafka_deliveries_total").increment(1);
                    return;
                }
                Err((error, _)) => {
                    metrics::counter!("lienwatch_kafka_delivery_failures_total").increment(1);
                    if attempt == 1 || attempt.is_multiple_of(10) {
                        tracing::warn!(%error, alert_id, attempt, "Kafka delivery failed; retrying");
                    }
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(self.backoff_max);
            attempt += 1;
        }
    }

    /// Alerts queued and not yet confirmed.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.count.load(Ordering::Acquire)
    }

    /// Waits until every queued alert is confirmed.
    pub async fn drain(&self) {
        loop {
            let idle = self.in_flight.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }
}

fn alert_header(alert_id: &str) -> OwnedHeaders {
    OwnedHeaders::new().insert(Header {
        key: "alert_id",
        value: Some(alert_id),
    })
}

/// The librdkafka configuration: no-loss defaults, then the pass-through properties.
fn client_config(settings: &KafkaSettings) -> ClientConfig {
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
    config
}

/// Creates the alerts topic unless it exists.
async fn create_topic(config: &ClientConfig, settings: &KafkaSettings) -> Result<(), KafkaError> {
    let topic = settings.alerts_topic.as_str();
    let admin: AdminClient<DefaultClientContext> = config.create().map_err(KafkaError::Client)?;
    let new = NewTopic::new(
        topic,
        settings.topic_partitions.max(1),
        TopicReplication::Fixed(settings.topic_replication.max(1)),
    );
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(10)))
        .request_timeout(Some(Duration::from_secs(15)));
    let results = admin
        .create_topics([&new], &options)
        .await
        .map_err(|e| KafkaError::Topic {
            topic: topic.into(),
            message: e.to_string(),
        })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(KafkaError::Topic {
                    topic: topic.into(),
                    message: code.to_string(),
                });
            }
        }
    }
    Ok(())
}
