//! The Kafka sink: alerts (SPEC §4) as JSON to `lienwatch.alerts` and daily features
//! (SPEC §5) as JSON to `lienwatch.features`, both keyed by `vehicle_id`, through one
//! idempotent rdkafka `FutureProducer` (`acks=all`). A delivery that fails is counted and
//! retried with backoff until it succeeds; nothing is dropped. Shutdown waits for every
//! delivery of both topics.
//!
//! Sends are non-blocking for the timely worker: each message becomes a task on the tokio
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
            features_topic: "lienwatch.features".into(),
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
    /// A topic could not be created.
    #[error("kafka topic {topic}: {message}")]
    Topic {
        /// The topic.
        topic: String,
        /// What the broker said.
        message: String,
    },
}

/// Messages sent and not yet confirmed, over both topics.
#[derive(Default)]
struct InFlight {
    count: AtomicU64,
    idle: Notify,
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
/// keeps that order through its own retries. While that queue is full a send waits
/// (back-pressure on the dataflow). A delivery that still fails (after `message.timeout.ms`)
/// is counted and sent again until it is confirmed: never dropped, though then possibly after
/// later messages. [`in_flight`](Self::in_flight) and [`drain`](Self::drain) cover both topics.
#[derive(Clone)]
pub struct KafkaProducer {
    producer: FutureProducer,
    alerts_topic: Arc<str>,
    features_topic: Arc<str>,
    runtime: tokio::runtime::Handle,
    in_flight: Arc<InFlight>,
    backoff_max: Duration,
}

impl KafkaProducer {
    /// Creates the producer (and both topics, if asked) for use on `runtime`.
    pub async fn connect(
        settings: &KafkaSettings,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, KafkaError> {
        let config = client_config(settings);
        if settings.create_topics {
            create_topics(&config, settings).await?;
        }
        let producer: FutureProducer = config.create().map_err(KafkaError::Client)?;
        Ok(Self {
            producer,
            alerts_topic: settings.alerts_topic.as_str().into(),
            features_topic: settings.features_topic.as_str().into(),
            runtime,
            in_flight: Arc::default(),
            backoff_max: Duration::from_millis(settings.retry_backoff_max_ms.max(100)),
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

    /// Queues one message and spawns the task that sees it confirmed.
    fn send(&self, message: Outgoing) {
        self.in_flight.count.fetch_add(1, Ordering::AcqRel);
        metrics::gauge!("lienwatch_kafka_in_flight").increment(1.0);
        let delivery = loop {
            match self.producer.send_result(message.record()) {
                Ok(delivery) => break Some(delivery),
                Err((KafkaClientError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err((error, _)) => {
                    metrics::counter!("lienwatch_kafka_delivery_failures_total").increment(1);
                    tracing::warn!(%error, topic = %message.topic, id = message.id, "Kafka refused a message; retrying");
                    break None;
                }
            }
        };
        let this = self.clone();
        self.runtime.spawn(async move {
            // A refusal at enqueue was counted there.
            let confirmed = match delivery {
                Some(delivery) => match delivery.await {
                    Ok(Ok(_)) => true,
                    Ok(Err((error, _))) => {
                        metrics::counter!("lienwatch_kafka_delivery_failures_total").increment(1);
                        tracing::warn!(%error, topic = %message.topic, id = message.id, "Kafka delivery failed; retrying");
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
                this.deliver(&message).await;
            }
            metrics::gauge!("lienwatch_kafka_in_flight").decrement(1.0);
            if this.in_flight.count.fetch_sub(1, Ordering::AcqRel) == 1 {
                this.in_flight.idle.notify_waiters();
            }
        });
    }

    /// Sends again until confirmed, with backoff.
    async fn deliver(&self, message: &Outgoing) {
        let mut backoff = Duration::from_millis(100);
        let mut attempt = 1u32;
        loop {
            match self.producer.send(message.record(), Timeout::Never).await {
                Ok(_) => {
                    metrics::counter!("lienwatch_kafka_deliveries_total").increment(1);
                    return;
                }
                Err((error, _)) => {
                    metrics::counter!("lienwatch_kafka_delivery_failures_total").increment(1);
                    if attempt == 1 || attempt.is_multiple_of(10) {
                        tracing::warn!(%error, topic = %message.topic, id = message.id, attempt, "Kafka delivery failed; retrying");
                    }
                }
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
            let idle = self.in_flight.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            idle.await;
        }
    }
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
