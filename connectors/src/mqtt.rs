//! The MQTT source (SPEC §2, §8): one MQTT session per process (rumqttc, MQTT 5 or 3.1.1),
//! messages spread over the timely workers by device, QoS 1 acks in receipt order as each
//! message enters the dataflow.
//!
//! ```text
//!  broker ──▶ poll task ──bounded channel per worker──▶ worker's source operator
//!               acks ◀─┘ (once the message is in its worker's channel)
//! ```
//!
//! The poll task hands each message to its worker's bounded channel, then acknowledges it:
//! acks therefore go out in receipt order (MQTT-4.6.0-2) and at the rate the dataflow takes
//! messages. A full channel stops the poll task reading the socket, so the broker's inflight
//! window fills and the broker queues (back-pressure). A worker never waits on the network:
//! it drains its channel with `try_recv`. Messages of one device always go to the same worker,
//! which keeps their order.
//!
//! Every message carries the ingest epoch of its receipt (a tick of `epoch_ms`), assigned in
//! receipt order by the poll task, and the poll task publishes a *sealed* epoch: every message
//! of an earlier epoch is already in its worker's channel. A worker that has emptied its
//! channel after reading the sealed epoch may close every epoch before it. Epochs are thus a
//! property of the one receipt order, not of when each worker got to run, so a busy worker
//! cannot make its devices' readings look late next to another worker's.
//!
//! Without a journal an ack means "in this process's memory": a clean shutdown processes every
//! acknowledged message, a crash loses them. With a journal ([`Durable`]) every message is
//! appended to it before it goes to its worker, and acknowledged only once a group fsync has
//! made it durable (every `fsync_interval`): a crash then loses nothing acknowledged, and at
//! start the journal's tail from the last checkpoint goes to the workers before the session
//! connects. After a reconnect the broker redelivers what was not acknowledged; the dataflow
//! drops the duplicates.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Packet as PacketV5;
use rumqttc::v5::mqttbytes::v5::Publish as PublishV5;
use rumqttc::{Event as EventV4, Packet as PacketV4, Publish as PublishV4, QoS, Transport};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use xxhash_rust::xxh3::xxh3_64;

use crate::journal::{Journal, JournalEntry};

/// How long the session is read after DISCONNECT, waiting for the broker to close it.
const CLOSE_DRAIN: Duration = Duration::from_secs(2);

/// Pending journal bytes that start an fsync at once rather than at the next interval.
const SYNC_AT_PENDING_BYTES: u64 = 4 << 20;

/// What makes the source durable: the journal, and what to do with it.
pub struct Durable {
    /// Every received message is appended here before it goes to its worker.
    pub journal: Journal,
    /// At start, the journal's records of this epoch or later go to the workers first (the
    /// input since the checkpoint the state was restored from); `None` = nothing to replay.
    pub replay_from_epoch: Option<u64>,
    /// Group commit interval.
    pub fsync_interval: Duration,
    /// While the journal is larger, no message is taken from the broker.
    pub max_bytes: u64,
    /// The newest complete checkpoint epoch: segments wholly before it are deleted. This
    /// run's epochs come after it (and after the journal's), even if the clock went back.
    pub committed: Arc<AtomicU64>,
}

/// MQTT protocol version.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Protocol {
    /// MQTT 5.
    V5,
    /// MQTT 3.1.1.
    V311,
}

/// Settings of the MQTT source: the `[mqtt]` section of the config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MqttSettings {
    /// Broker: `mqtt://host:port`, or `mqtts://host:port` for TLS.
    pub url: String,
    /// 5 = MQTT 5, 4 = MQTT 3.1.1 (the CONNECT protocol level).
    pub protocol_version: u8,
    /// Client id; keep it stable so the broker keeps the session across restarts.
    pub client_id: String,
    /// Topic filters; the last topic level is the `device_id`.
    pub topics: Vec<String>,
    /// Shared-subscription group: processes with the same group split the stream
    /// (`$share/<group>/<filter>`). Unset = plain subscriptions.
    pub shared_group: Option<String>,
    /// Subscription QoS: 0 or 1.
    pub qos: u8,
    /// Start a fresh session on connect (drops what the broker kept for us).
    pub clean_start: bool,
    /// MQTT 5: seconds the broker keeps our session (and queues QoS 1 messages) while we
    /// are disconnected.
    pub session_expiry_s: u32,
    /// Keep-alive interval, seconds.
    pub keep_alive_s: u64,
    /// Largest MQTT packet accepted, bytes (batched uploads are large).
    pub max_packet_bytes: u32,
    /// MQTT 5: unacknowledged QoS 1 messages the broker may send at once.
    pub receive_maximum: u16,
    /// User name; unset = anonymous.
    pub username: Option<String>,
    /// Environment variable holding the password (never put the password in a config file).
    pub password_env: Option<String>,
    /// File holding the password (its first line).
    pub password_file: Option<PathBuf>,
    /// A password given in code (tests, tools); never read from or written to a config.
    #[serde(skip)]
    pub password: Option<String>,
    /// PEM CA bundle for `mqtts://`; unset = the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate chain for mutual TLS.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
    /// First wait before a reconnect, ms; doubled after each failure.
    pub reconnect_min_ms: u64,
    /// Longest wait between reconnects, ms.
    pub reconnect_max_ms: u64,
    /// Messages buffered per worker; when full, reading from the broker pauses.
    pub channel_capacity: usize,
}

impl Default for MqttSettings {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            protocol_version: 5,
            client_id: "lienwatch".into(),
            topics: vec!["telemetry/+".into()],
            shared_group: None,
            qos: 1,
            clean_start: false,
            session_expiry_s: 3600,
            keep_alive_s: 30,
            max_packet_bytes: 1 << 20,
            receive_maximum: 1024,
            username: None,
            password_env: None,
            password_file: None,
            password: None,
            ca_file: None,
            client_cert_file: None,
            client_key_file: None,
            reconnect_min_ms: 100,
            reconnect_max_ms: 30_000,
            channel_capacity: 8192,
        }
    }
}

impl MqttSettings {
    fn qos(&self) -> QoS {
        if self.qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        }
    }

    fn protocol(&self) -> Result<Protocol, MqttError> {
        match self.protocol_version {
            5 => Ok(Protocol::V5),
            4 => Ok(Protocol::V311),
            v => Err(MqttError::Settings(format!(
                "protocol_version {v}: expected 5 (MQTT 5) or 4 (MQTT 3.1.1)"
            ))),
        }
    }

    /// The password: given in code, else from `password_env`, else from `password_file`.
    fn resolved_password(&self) -> Result<Option<String>, MqttError> {
        if self.password.is_some() {
            return Ok(self.password.clone());
        }
        if let Some(var) = &self.password_env {
            return std::env::var(var).map(Some).map_err(|_| {
                MqttError::Settings(format!("password_env: {var} is not set in the environment"))
            });
        }
        if let Some(path) = &self.password_file {
            let text = std::fs::read_to_string(path).map_err(|e| MqttError::Tls {
                path: path.clone(),
                message: e.to_string(),
            })?;
            return Ok(Some(text.lines().next().unwrap_or_default().to_owned()));
        }
        Ok(None)
    }
}

/// Why the MQTT source could not start.
#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    /// The settings are not usable.
    #[error("mqtt: {0}")]
    Settings(String),
    /// A TLS or password file could not be read or parsed.
    #[error("mqtt file {path}: {message}")]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// One message as received.
#[derive(Clone, Debug)]
pub struct Message {
    /// Receipt order in this process, from 0.
    pub seq: u64,
    /// Ingest epoch of its receipt: wall-clock ms / `epoch_ms`, never decreasing.
    pub epoch: u64,
    /// The topic's last level, if not empty.
    pub device_id: Option<String>,
    /// Wall-clock receipt time, epoch ms.
    pub received_at_ms: i64,
    /// The payload.
    pub payload: Bytes,
}

/// What the workers and the poll task share.
struct Shared {
    /// Wall-clock ms of the last message received, or of the last subscription.
    last_heard_ms: std::sync::atomic::AtomicI64,
    /// Every message of an epoch before this is in its worker's channel.
    sealed: AtomicU64,
    /// Per worker: wakes its source operator when a message is queued.
    wakers: Vec<OnceLock<Box<dyn Fn() + Send + Sync>>>,
    /// Set when the process shuts down: stop forwarding messages.
    stopping: AtomicBool,
    /// Wakes the poll task when shutting down.
    stop: Notify,
    /// Lets the session connect: the workers are ready to take messages.
    open: Notify,
    /// Whether the session is up (for health checks).
    connected: Arc<AtomicBool>,
    /// Whether the journal is over its bound, so intake waits (for health checks).
    journal_full: Arc<AtomicBool>,
    /// Messages replayed from the journal at start.
    replayed: Arc<AtomicU64>,
}

enum AckToken {
    V4(PublishV4),
    V5(PublishV5),
}

/// A worker's end of the source: its channel.
pub struct WorkerInlet {
    index: usize,
    rx: mpsc::Receiver<Message>,
    shared: Arc<Shared>,
}

/// What [`WorkerInlet::poll`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Inlet {
    /// The channel was empty after the messages taken.
    Drained,
    /// `max` messages were taken; more are waiting.
    More,
    /// The source is closed and drained.
    Closed,
}

impl WorkerInlet {
    /// Registers the function that wakes this worker's source operator (a timely
    /// `SyncActivator`); called once.
    pub fn set_waker(&self, wake: Box<dyn Fn() + Send + Sync>) {
        // A second registration would be a programming error; the first one stays.
        let _ = self.shared.wakers[self.index].set(wake);
    }

    /// Moves up to `max` queued messages into `out` without waiting.
    pub fn poll(&mut self, max: usize, out: &mut Vec<Message>) -> Inlet {
        for _ in 0..max {
            match self.rx.try_recv() {
                Ok(m) => out.push(m),
                Err(mpsc::error::TryRecvError::Empty) => return Inlet::Drained,
                Err(mpsc::error::TryRecvError::Disconnected) => return Inlet::Closed,
            }
        }
        Inlet::More
    }

    /// How long (ms) the subscribed session has heard no message; `None` while not
    /// subscribed (then silence means nothing). Only the process's first worker answers, so
    /// one source per process speaks for the session.
    pub fn silent_ms(&self) -> Option<i64> {
        if self.index != 0 || !self.shared.connected.load(Ordering::Acquire) {
            return None;
        }
        let last = self.shared.last_heard_ms.load(Ordering::Acquire);
        Some(schemas::time::now_ms() - last)
    }

    /// The sealed epoch: read it *before* [`WorkerInlet::poll`]; if that poll drains the
    /// channel, no message of an earlier epoch can come any more.
    pub fn sealed(&self) -> u64 {
        self.shared.sealed.load(Ordering::Acquire)
    }
}

/// The running source: stop it with [`MqttSource::shutdown`].
pub struct MqttSource {
    shared: Arc<Shared>,
    poll: JoinHandle<()>,
    start_epoch: u64,
}

impl MqttSource {
    /// Starts the source on `runtime` for `workers` workers, with ingest epochs of
    /// `epoch_ms` (journaled if `durable`); returns it and one inlet per worker.
    pub fn start(
        settings: &MqttSettings,
        workers: usize,
        epoch_ms: u64,
        runtime: &tokio::runtime::Handle,
        durable: Option<Durable>,
    ) -> Result<(Self, Vec<WorkerInlet>), MqttError> {
        if workers == 0 || settings.topics.is_empty() {
            return Err(MqttError::Settings(
                "need a worker and a topic filter".into(),
            ));
        }
        if settings.qos > 1 {
            return Err(MqttError::Settings(format!(
                "qos {} is not supported (0 or 1)",
                settings.qos
            )));
        }
        let (client, events) = connect(settings)?;
        // Epochs never go back, not even across restarts: the journal's come before ours.
        let floor = durable.as_ref().map_or(0, |d| {
            let journal = d.journal.last_epoch().map_or(0, |e| e + 1);
            journal.max(d.committed.load(Ordering::Acquire) + 1)
        });
        let epochs = EpochClock::new(epoch_ms, floor);
        let shared = Arc::new(Shared {
            last_heard_ms: std::sync::atomic::AtomicI64::new(schemas::time::now_ms()),
            sealed: AtomicU64::new(epochs.now()),
            wakers: (0..workers).map(|_| OnceLock::new()).collect(),
            stopping: AtomicBool::new(false),
            stop: Notify::new(),
            open: Notify::new(),
            connected: Arc::default(),
            journal_full: Arc::default(),
            replayed: Arc::default(),
        });
        let start_epoch = shared.sealed.load(Ordering::Acquire);
        let mut senders = Vec::with_capacity(workers);
        let mut inlets = Vec::with_capacity(workers);
        for index in 0..workers {
            let (tx, rx) = mpsc::channel(settings.channel_capacity.max(1));
            senders.push(tx);
            inlets.push(WorkerInlet {
                index,
                rx,
                shared: Arc::clone(&shared),
            });
        }
        let filters = subscriptions(settings);
        let qos = settings.qos();
        let backoff = (
            Duration::from_millis(settings.reconnect_min_ms.max(1)),
            Duration::from_millis(settings.reconnect_max_ms.max(settings.reconnect_min_ms)),
        );
        // Room for the broker's whole QoS 1 window (a broker that keeps to it sends no more
        // while our acks wait on a full worker channel), so the event loop keeps running
        // (pings, acks) under back-pressure. When it fills anyway (QoS 0, a broker with no
        // inflight limit, or intake waiting on a full journal) polling stops: the broker then
        // ends the connection after 1.5 keep-alives and keeps the session, and what was not
        // acknowledged comes again after the reconnect, dropped as duplicates.
        let (events_tx, events_rx) =
            mpsc::channel(usize::from(settings.receive_maximum).max(64) + 64);
        let gate = Arc::clone(&shared);
        runtime.spawn(async move {
            // Nothing is received (and so nothing acknowledged) before the workers are ready.
            gate.open.notified().await;
            drive(events, events_tx, backoff).await;
        });
        let poll = runtime.spawn(poll_loop(
            client,
            events_rx,
            Intake {
                filters,
                qos,
                senders,
                epochs,
                durable,
            },
            Arc::clone(&shared),
        ));
        Ok((
            Self {
                shared,
                poll,
                start_epoch,
            },
            inlets,
        ))
    }

    /// The first epoch of this run: the journal's replayed messages carry it, later messages
    /// carry it or a later one.
    pub fn start_epoch(&self) -> u64 {
        self.start_epoch
    }

    /// A flag that is true while the journal is over its bound and intake waits.
    pub fn journal_full(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.shared.journal_full)
    }

    /// Messages replayed from the journal at start (so far).
    pub fn replayed(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.shared.replayed)
    }

    /// A function that connects the session: call it once every worker can take messages
    /// (its dataflow is built), so no message is acknowledged that a failed start would lose.
    pub fn opener(&self) -> impl Fn() + Send + Sync + 'static {
        let shared = Arc::clone(&self.shared);
        move || shared.open.notify_one()
    }

    /// A flag that is true while the session is up and subscribed.
    pub fn connected(&self) -> Arc<AtomicBool> {
        Arc::clone(&self.shared.connected)
    }

    /// Stops forwarding messages (later ones stay with the broker, unacknowledged), closes
    /// the workers' channels (they process what is in them) and disconnects after the last
    /// ack went out. Resolves when the session is closed.
    pub async fn shutdown(self) {
        self.shared.stopping.store(true, Ordering::Release);
        self.shared.stop.notify_one();
        // Never opened (a failed start): the session connects only to close.
        self.shared.open.notify_one();
        if let Err(e) = self.poll.await {
            tracing::error!(error = %e, "MQTT poll task failed");
        }
    }
}

/// Ingest epochs: ticks of `epoch_ms` since the Unix epoch, read from a monotonic clock so
/// they never go back when the wall clock is set.
#[derive(Clone, Copy, Debug)]
struct EpochClock {
    epoch_ms: u64,
    origin_ms: u64,
    origin: std::time::Instant,
    /// No epoch is before this one.
    floor: u64,
}

impl EpochClock {
    fn new(epoch_ms: u64, floor: u64) -> Self {
        Self {
            epoch_ms: epoch_ms.max(1),
            origin_ms: schemas::time::now_ms().max(0) as u64,
            origin: std::time::Instant::now(),
            floor,
        }
    }

    fn now(&self) -> u64 {
        let elapsed = self.origin.elapsed().as_millis() as u64;
        ((self.origin_ms + elapsed) / self.epoch_ms).max(self.floor)
    }
}

/// What the poll loop hands messages to.
struct Intake {
    filters: Vec<String>,
    qos: QoS,
    senders: Vec<mpsc::Sender<Message>>,
    epochs: EpochClock,
    durable: Option<Durable>,
}

/// The filters to subscribe to, with the shared-subscription prefix.
fn subscriptions(settings: &MqttSettings) -> Vec<String> {
    settings
        .topics
        .iter()
        .map(|t| match &settings.shared_group {
            Some(group) => format!("$share/{group}/{t}"),
            None => t.clone(),
        })
        .collect()
}

/// The worker that decodes a device's messages.
fn worker_of(device_id: Option<&str>, workers: usize) -> usize {
    let key = device_id.map_or(0, |d| xxh3_64(d.as_bytes()));
    (key % workers as u64) as usize
}

/// The last level of a topic, if not empty.
pub fn device_of_topic(topic: &str) -> Option<&str> {
    topic.rsplit('/').next().filter(|d| !d.is_empty())
}

/// The client half of a session: requests (subscribe, ack, disconnect).
enum Client {
    V4(rumqttc::AsyncClient),
    V5(rumqttc::v5::AsyncClient),
}

/// The event-loop half of a session: polling it drives the connection.
enum Events {
    V4(Box<rumqttc::EventLoop>),
    V5(Box<rumqttc::v5::EventLoop>),
}

/// What the poll loop cares about in an event.
enum Incoming {
    ConnAck {
        session_present: bool,
    },
    Publish(Box<Received>),
    /// The broker answered our SUBSCRIBE: whether every filter was granted.
    Subscribed {
        granted: bool,
    },
    /// Our DISCONNECT went out.
    Disconnected,
    Other,
}

struct Received {
    topic_device: Option<String>,
    payload: Bytes,
    qos1: bool,
    token: AckToken,
}

/// A session of either protocol version, in its two halves.
fn connect(s: &MqttSettings) -> Result<(Client, Events), MqttError> {
    let (tls, rest) = match s.url.split_once("://") {
        Some(("mqtt" | "tcp", rest)) => (false, rest),
        Some(("mqtts" | "ssl", rest)) => (true, rest),
        _ => {
            return Err(MqttError::Settings(format!(
                "url {:?}: expected mqtt://host:port or mqtts://host:port",
                s.url
            )));
        }
    };
    let (host, port) = match rest.trim_end_matches('/').rsplit_once(':') {
        Some((h, p)) => (
            h.to_owned(),
            p.parse::<u16>()
                .map_err(|_| MqttError::Settings(format!("url {:?}: bad port", s.url)))?,
        ),
        None => (rest.to_owned(), if tls { 8883 } else { 1883 }),
    };
    let transport = if tls {
        Transport::Tls(rumqttc::TlsConfiguration::Rustls(Arc::new(tls_config(s)?)))
    } else {
        Transport::Tcp
    };
    // The request channel carries our acks; size it to the broker's window so acks
    // rarely wait.
    let requests = usize::from(s.receive_maximum).max(64) * 2;
    let keep_alive = Duration::from_secs(s.keep_alive_s.max(1));
    let password = s.resolved_password()?;
    match s.protocol()? {
        Protocol::V311 => {
            let mut o = rumqttc::MqttOptions::new(&s.client_id, host, port);
            o.set_keep_alive(keep_alive)
                .set_clean_session(s.clean_start)
                .set_manual_acks(true)
                .set_inflight(1000)
                .set_max_packet_size(s.max_packet_bytes as usize, s.max_packet_bytes as usize)
                .set_transport(transport);
            if let Some(user) = &s.username {
                o.set_credentials(user, password.clone().unwrap_or_default());
            }
            let (client, events) = rumqttc::AsyncClient::new(o, requests);
            Ok((Client::V4(client), Events::V4(Box::new(events))))
        }
        Protocol::V5 => {
            let mut o = rumqttc::v5::MqttOptions::new(&s.client_id, host, port);
            o.set_keep_alive(keep_alive)
                .set_clean_start(s.clean_start)
                .set_session_expiry_interval(Some(s.session_expiry_s))
                .set_receive_maximum(Some(s.receive_maximum.max(1)))
                .set_max_packet_size(Some(s.max_packet_bytes))
                .set_manual_acks(true)
                .set_transport(transport);
            if let Some(user) = &s.username {
                o.set_credentials(user, password.clone().unwrap_or_default());
            }
            let (client, events) = rumqttc::v5::AsyncClient::new(o, requests);
            Ok((Client::V5(client), Events::V5(Box::new(events))))
        }
    }
}

impl Events {
    async fn poll(&mut self) -> Result<Incoming, String> {
        match self {
            Self::V4(events) => match events.poll().await.map_err(|e| e.to_string())? {
                EventV4::Incoming(PacketV4::ConnAck(ack)) => Ok(Incoming::ConnAck {
                    session_present: ack.session_present,
                }),
                EventV4::Incoming(PacketV4::Publish(p)) => {
                    Ok(Incoming::Publish(Box::new(Received {
                        topic_device: device_of_topic(&p.topic).map(str::to_owned),
                        payload: p.payload.clone(),
                        qos1: p.qos != QoS::AtMostOnce,
                        token: AckToken::V4(p),
                    })))
                }
                EventV4::Incoming(PacketV4::SubAck(ack)) => Ok(Incoming::Subscribed {
                    granted: ack
                        .return_codes
                        .iter()
                        .all(|c| !matches!(c, rumqttc::SubscribeReasonCode::Failure)),
                }),
                EventV4::Outgoing(rumqttc::Outgoing::Disconnect) => Ok(Incoming::Disconnected),
                _ => Ok(Incoming::Other),
            },
            Self::V5(events) => {
                use rumqttc::v5::Event;
                match events.poll().await.map_err(|e| e.to_string())? {
                    Event::Incoming(PacketV5::ConnAck(ack)) => Ok(Incoming::ConnAck {
                        session_present: ack.session_present,
                    }),
                    Event::Incoming(PacketV5::Publish(p)) => {
                        let topic = String::from_utf8_lossy(&p.topic);
                        Ok(Incoming::Publish(Box::new(Received {
                            topic_device: device_of_topic(&topic).map(str::to_owned),
                            payload: p.payload.clone(),
                            qos1: p.qos != rumqttc::v5::mqttbytes::QoS::AtMostOnce,
                            token: AckToken::V5(p),
                        })))
                    }
                    Event::Incoming(PacketV5::SubAck(ack)) => Ok(Incoming::Subscribed {
                        granted: ack.return_codes.iter().all(|c| {
                            matches!(
                                c,
                                rumqttc::v5::mqttbytes::v5::SubscribeReasonCode::Success(_)
                            )
                        }),
                    }),
                    Event::Outgoing(rumqttc::Outgoing::Disconnect) => Ok(Incoming::Disconnected),
                    _ => Ok(Incoming::Other),
                }
            }
        }
    }
}

impl Client {
    fn subscribe(&self, filters: &[String], qos: QoS) -> Result<(), String> {
        for filter in filters {
            match self {
                Self::V4(c) => c
                    .try_subscribe(filter.clone(), qos)
                    .map_err(|e| e.to_string())?,
                Self::V5(c) => c
                    .try_subscribe(filter.clone(), qos_v5(qos))
                    .map_err(|e| e.to_string())?,
            }
        }
        Ok(())
    }

    /// Queues the ack of a received QoS 1 message without waiting (the poll loop itself
    /// empties the client's request queue); acks leave in the order they are queued.
    fn try_ack(&self, token: &AckToken) -> Result<(), ()> {
        match (self, token) {
            (Self::V4(c), AckToken::V4(p)) => c.try_ack(p).map_err(drop),
            (Self::V5(c), AckToken::V5(p)) => c.try_ack(p).map_err(drop),
            _ => Err(()),
        }
    }

    fn disconnect(&self) -> Result<(), String> {
        match self {
            Self::V4(c) => c.try_disconnect().map_err(|e| e.to_string()),
            Self::V5(c) => c.try_disconnect().map_err(|e| e.to_string()),
        }
    }
}

fn qos_v5(qos: QoS) -> rumqttc::v5::mqttbytes::QoS {
    match qos {
        QoS::AtMostOnce => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        QoS::AtLeastOnce => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        QoS::ExactlyOnce => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

/// Polls the event loop, never cancelling it (a cancelled poll could lose packets it had
/// read), and hands what matters to the intake; after a failed connection attempt it waits
/// with exponential backoff (rumqttc reconnects on the next poll at once).
async fn drive(
    mut events: Events,
    tx: mpsc::Sender<Result<Incoming, String>>,
    (backoff_min, backoff_max): (Duration, Duration),
) {
    let mut backoff = backoff_min;
    loop {
        match events.poll().await {
            Ok(Incoming::Other) => {}
            Ok(incoming) => {
                let end = matches!(incoming, Incoming::Disconnected);
                if matches!(incoming, Incoming::ConnAck { .. }) {
                    backoff = backoff_min;
                }
                if end {
                    // The intake keeps the client (and so the connection's request channel)
                    // until it hears the session is closed: only then.
                    drain_until_closed(&mut events).await;
                    let _ = tx.send(Ok(incoming)).await;
                    return;
                }
                if tx.send(Ok(incoming)).await.is_err() {
                    return;
                }
            }
            Err(error) => {
                if tx.send(Err(error)).await.is_err() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(backoff_max);
            }
        }
    }
}

/// The journal side of the poll task: appends, group commits, acks waiting for them.
struct JournalIntake {
    durable: Durable,
    /// Acks of journaled messages, by seq, waiting for their fsync.
    awaiting: VecDeque<(u64, AckToken)>,
    /// The durable watermark: every record before this seq is on disk.
    watermark: tokio::sync::watch::Receiver<u64>,
    /// The last checkpoint epoch the journal was pruned to.
    pruned: u64,
    /// Set after a journal error: nothing more is taken or acknowledged.
    failed: bool,
}

impl JournalIntake {
    fn new(durable: Durable) -> Self {
        let watermark = durable.journal.durable();
        Self {
            durable,
            awaiting: VecDeque::new(),
            watermark,
            pruned: 0,
            failed: false,
        }
    }

    /// Appends a received message; false after a journal error (logged).
    fn append(&mut self, message: &Message) -> bool {
        let entry = JournalEntry {
            seq: message.seq,
            epoch: message.epoch,
            received_at_ms: message.received_at_ms,
            device_id: message.device_id.as_deref(),
            payload: &message.payload,
        };
        let appended = self.durable.journal.append(entry).and_then(|()| {
            if self.durable.journal.pending_bytes() >= SYNC_AT_PENDING_BYTES {
                self.durable.journal.sync()
            } else {
                Ok(())
            }
        });
        self.check(appended)
    }

    /// Starts an fsync of what was appended, if anything; prunes to the last checkpoint.
    fn tick(&mut self) {
        if self.failed {
            return;
        }
        if self.durable.journal.pending_bytes() > 0 {
            let synced = self.durable.journal.sync();
            self.check(synced);
        }
        let committed = self.durable.committed.load(Ordering::Acquire);
        if committed > self.pruned {
            self.pruned = committed;
            match self.durable.journal.prune_before(committed) {
                Ok(freed) if freed > 0 => {
                    tracing::debug!(freed, epoch = committed, "journal pruned");
                }
                Ok(_) => {}
                Err(error) => tracing::warn!(%error, "journal segments not deleted"),
            }
        }
    }

    fn check(&mut self, result: Result<(), crate::journal::JournalError>) -> bool {
        if let Err(error) = result {
            if !self.failed {
                tracing::error!(%error, "the journal failed: no more messages are taken or acknowledged");
            }
            self.failed = true;
        }
        !self.failed
    }

    /// Moves the acks the durable watermark now covers to `acks`, in receipt order.
    fn release(&mut self, acks: &mut VecDeque<AckToken>) {
        let durable = *self.watermark.borrow_and_update();
        while self.awaiting.front().is_some_and(|(seq, _)| *seq < durable) {
            if let Some((_, token)) = self.awaiting.pop_front() {
                acks.push_back(token);
            }
        }
    }

    /// Whether intake must wait: the journal failed or is over its bound.
    fn full(&self) -> bool {
        self.failed || self.durable.journal.bytes() > self.durable.max_bytes
    }
}

/// Sends the journal's records from `from_epoch` on to their workers, all at `epoch` (the
/// run's first): the input since the restored checkpoint, before anything new. Returns how
/// many went.
async fn replay_journal(
    journal: &Journal,
    from_epoch: u64,
    epoch: u64,
    senders: &[mpsc::Sender<Message>],
    shared: &Shared,
) -> Result<u64, String> {
    let records = journal
        .read_from_epoch(from_epoch)
        .map_err(|e| e.to_string())?;
    let mut sent = 0u64;
    for record in records {
        let record = record.map_err(|e| e.to_string())?;
        let worker = worker_of(record.device_id.as_deref(), senders.len());
        let message = Message {
            seq: record.seq,
            epoch,
            device_id: record.device_id,
            received_at_ms: record.received_at_ms,
            payload: record.payload,
        };
        if senders[worker].send(message).await.is_err() {
            return Err("a worker's channel closed".into());
        }
        if let Some(wake) = shared.wakers[worker].get() {
            wake();
        }
        sent += 1;
        shared.replayed.store(sent, Ordering::Release);
    }
    Ok(sent)
}

/// After our DISCONNECT went out: reads (and drops) what the broker still sends until it
/// closes the connection, bounded by [`CLOSE_DRAIN`]. Closing a socket with unread data makes
/// the kernel reset the connection, and a broker that sees the reset may discard the last
/// acks it had not read yet; dropped publishes stay unacknowledged and come again.
async fn drain_until_closed(events: &mut Events) {
    let drained =
        tokio::time::timeout(CLOSE_DRAIN, async { while events.poll().await.is_ok() {} }).await;
    if drained.is_err() {
        tracing::debug!("the broker did not close the connection after DISCONNECT");
    }
}

/// Reads the broker: forwards publishes to the workers and acknowledges them, (re)subscribes
/// on every CONNACK, reconnects with exponential backoff. After a shutdown request it stops
/// forwarding, closes the workers' channels, and ends once its DISCONNECT went out (after
/// every queued ack).
async fn poll_loop(
    session: Client,
    mut events: mpsc::Receiver<Result<Incoming, String>>,
    intake: Intake,
    shared: Arc<Shared>,
) {
    let Intake {
        filters,
        qos,
        senders,
        epochs,
        durable,
    } = intake;
    let mut journal = durable.map(JournalIntake::new);
    let mut seq = journal.as_ref().map_or(0, |j| j.durable.journal.next_seq());
    if let Some(j) = journal.as_ref()
        && let Some(from) = j.durable.replay_from_epoch
    {
        // No epoch is sealed meanwhile: every replayed message belongs to the first epoch.
        let epoch = shared.sealed.load(Ordering::Acquire);
        let started = std::time::Instant::now();
        match replay_journal(&j.durable.journal, from, epoch, &senders, &shared).await {
            Ok(replayed) => tracing::info!(
                replayed,
                from_epoch = from,
                seconds = started.elapsed().as_secs_f64(),
                "journal replayed"
            ),
            Err(error) => {
                tracing::error!(%error, "journal replay failed; stopping intake");
                shared.stopping.store(true, Ordering::Release);
            }
        }
        metrics::counter!("lienwatch_journal_replayed_total")
            .increment(shared.replayed.load(Ordering::Acquire));
    }
    let mut senders = Some(senders);
    // Seals epochs while no message comes, so the workers' frontiers keep moving.
    let mut ticker = tokio::time::interval(Duration::from_millis(epochs.epoch_ms));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut syncs = tokio::time::interval(
        journal
            .as_ref()
            .map_or(Duration::from_secs(3600), |j| j.durable.fsync_interval),
    );
    syncs.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut failures_in_a_row = 0u32;
    let mut disconnect_sent = false;
    // Acks the client's request queue had no room for, in receipt order.
    let mut unsent_acks: VecDeque<AckToken> = VecDeque::new();
    let connected = metrics::gauge!("lienwatch_mqtt_connected");
    let received = metrics::counter!("lienwatch_messages_received_total");
    let journal_full = metrics::gauge!("lienwatch_journal_full");
    let set_connected = |up: bool| {
        connected.set(if up { 1.0 } else { 0.0 });
        shared.connected.store(up, Ordering::Release);
    };
    loop {
        if let Some(j) = journal.as_mut() {
            j.release(&mut unsent_acks);
        }
        while let Some(token) = unsent_acks.front() {
            if session.try_ack(token).is_err() {
                break;
            }
            unsent_acks.pop_front();
        }
        let awaiting_fsync = journal.as_ref().is_some_and(|j| !j.awaiting.is_empty());
        if shared.stopping.load(Ordering::Acquire) {
            if senders.take().is_some() {
                tracing::info!(received = seq, "MQTT intake stopped");
                // The channels are closed: the workers drain them and finish.
                for wake in shared.wakers.iter().filter_map(OnceLock::get) {
                    wake();
                }
            }
            if !shared.connected.load(Ordering::Acquire) && !disconnect_sent {
                // No session to close, and acks of a lost connection are void.
                tracing::info!(received = seq, "MQTT intake stopped while disconnected");
                return;
            }
            if awaiting_fsync && let Some(j) = journal.as_mut() {
                j.tick();
            }
            let fsync_pending = journal
                .as_ref()
                .is_some_and(|j| !j.awaiting.is_empty() && !j.failed);
            if !disconnect_sent && unsent_acks.is_empty() && !fsync_pending {
                if let Err(e) = session.disconnect() {
                    tracing::warn!(error = %e, "MQTT disconnect could not be queued");
                    return;
                }
                disconnect_sent = true;
            }
        }
        let full = journal.as_ref().is_some_and(JournalIntake::full);
        if shared.journal_full.swap(full, Ordering::AcqRel) != full {
            journal_full.set(if full { 1.0 } else { 0.0 });
            if full {
                tracing::warn!(
                    "the journal is over its bound (no checkpoint completes?); intake waits"
                );
            } else {
                tracing::info!("the journal is below its bound again; intake resumes");
            }
        }
        let durable_changed = async {
            match journal.as_mut() {
                Some(j) if !j.failed => j.watermark.changed().await.is_ok(),
                _ => std::future::pending().await,
            }
        };
        // Channel receives, ticks and watch changes are cancel-safe; the event loop itself is
        // never cancelled.
        let event = tokio::select! {
            event = events.recv(), if !full => match event {
                Some(event) => event,
                None => return,
            },
            () = shared.stop.notified() => continue,
            _ = durable_changed => continue,
            _ = syncs.tick() => {
                if let Some(j) = journal.as_mut() {
                    j.tick();
                }
                continue;
            }
            _ = ticker.tick() => {
                // No send is in progress here: every message received so far is in a
                // channel, and later ones get this epoch or a later one.
                let now = epochs.now();
                if shared.sealed.fetch_max(now, Ordering::AcqRel) < now {
                    for wake in shared.wakers.iter().filter_map(OnceLock::get) {
                        wake();
                    }
                }
                continue;
            }
        };
        match event {
            Ok(Incoming::ConnAck { session_present }) => {
                // Acks queued for the old connection are void: the broker redelivers.
                unsent_acks.clear();
                if let Some(j) = journal.as_mut() {
                    j.awaiting.clear();
                }
                failures_in_a_row = 0;
                tracing::info!(session_present, "MQTT connected; subscribing");
                if let Err(e) = session.subscribe(&filters, qos) {
                    tracing::error!(error = %e, "MQTT subscribe could not be queued");
                }
            }
            Ok(Incoming::Publish(msg)) => {
                let Some(tx) = senders.as_ref() else {
                    // Shutting down: left unacknowledged, the broker keeps it for the next
                    // session (QoS 1 with a persistent session).
                    continue;
                };
                received.increment(1);
                let received_at_ms = schemas::time::now_ms();
                shared
                    .last_heard_ms
                    .store(received_at_ms, Ordering::Release);
                let worker = worker_of(msg.topic_device.as_deref(), tx.len());
                // Every earlier message is in its channel: their epochs are sealed.
                let epoch = epochs.now().max(shared.sealed.load(Ordering::Acquire));
                shared.sealed.fetch_max(epoch, Ordering::AcqRel);
                let message = Message {
                    seq,
                    epoch,
                    device_id: msg.topic_device,
                    received_at_ms,
                    payload: msg.payload,
                };
                if let Some(j) = journal.as_mut()
                    && !j.append(&message)
                {
                    // Not journaled: not acknowledged, not processed; the broker keeps it.
                    shared.stopping.store(true, Ordering::Release);
                    continue;
                }
                seq += 1;
                if tx[worker].send(message).await.is_err() {
                    tracing::error!(worker, "a worker's MQTT channel closed; stopping intake");
                    shared.stopping.store(true, Ordering::Release);
                    continue;
                }
                if let Some(wake) = shared.wakers[worker].get() {
                    wake();
                }
                if msg.qos1 {
                    match journal.as_mut() {
                        Some(j) => j.awaiting.push_back((seq - 1, msg.token)),
                        None => unsent_acks.push_back(msg.token),
                    }
                }
            }
            Ok(Incoming::Subscribed { granted }) => {
                if granted {
                    shared
                        .last_heard_ms
                        .store(schemas::time::now_ms(), Ordering::Release);
                    set_connected(true);
                    tracing::info!(filters = ?filters, "MQTT subscribed");
                } else {
                    tracing::error!(filters = ?filters, "the broker refused a subscription; check the filters and the ACL");
                }
            }
            Ok(Incoming::Disconnected) => {
                tracing::info!(received = seq, "MQTT session closed");
                set_connected(false);
                return;
            }
            Ok(Incoming::Other) => {}
            Err(error) => {
                set_connected(false);
                if disconnect_sent {
                    tracing::info!(received = seq, "MQTT session closed");
                    return;
                }
                metrics::counter!("lienwatch_mqtt_reconnects_total").increment(1);
                failures_in_a_row += 1;
                // Logged once per outage and then every 10th attempt, not per retry.
                if failures_in_a_row == 1 || failures_in_a_row.is_multiple_of(10) {
                    tracing::warn!(%error, attempt = failures_in_a_row, "MQTT connection failed; reconnecting with backoff");
                }
                if senders.is_none() {
                    // Shutting down without a broker: what was not acknowledged is
                    // redelivered to the next session.
                    tracing::warn!("MQTT broker unreachable while shutting down");
                    return;
                }
            }
        }
    }
}

/// Publishes `messages` (topic, payload) over MQTT 3.1.1 at up to `rate_per_s` messages per
/// second (`None` = as fast as the broker takes them) with `settings`' broker, credentials,
/// TLS and QoS; returns once the broker has acknowledged every QoS 1 message (or every
/// QoS 0 message was written). Used by `lienwatch simulate --mqtt` and the demo.
pub async fn publish(
    settings: &MqttSettings,
    messages: impl IntoIterator<Item = (String, Bytes)>,
    rate_per_s: Option<f64>,
) -> Result<u64, MqttError> {
    let publisher = MqttSettings {
        protocol_version: 4,
        clean_start: true,
        ..settings.clone()
    };
    let (Client::V4(client), Events::V4(mut events)) = connect(&publisher)? else {
        return Err(MqttError::Settings("publisher session".into()));
    };
    let qos = settings.qos();
    let acked = Arc::new(AtomicU64::new(0));
    // Some("") once our DISCONNECT went out, Some(error) if the connection failed.
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(None::<String>);
    let acks = Arc::clone(&acked);
    let driver = tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(EventV4::Incoming(PacketV4::PubAck(_))) => {
                    acks.fetch_add(1, Ordering::AcqRel);
                }
                Ok(EventV4::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                    let _ = done_tx.send(Some(String::new()));
                    return;
                }
                Ok(_) => {}
                Err(e) => {
                    let _ = done_tx.send(Some(e.to_string()));
                    return;
                }
            }
        }
    });
    let started = tokio::time::Instant::now();
    let mut sent = 0u64;
    let failed = |e: String| MqttError::Settings(format!("publishing: {e}"));
    for (topic, payload) in messages {
        if let Some(rate) = rate_per_s.filter(|r| *r > 0.0) {
            let due = started + Duration::from_secs_f64(sent as f64 / rate);
            if due > tokio::time::Instant::now() + Duration::from_millis(2) {
                tokio::time::sleep_until(due).await;
            }
        }
        if let Some(e) = done_rx.borrow().clone() {
            return Err(failed(e));
        }
        client
            .publish_bytes(topic, qos, false, payload)
            .await
            .map_err(|e| failed(e.to_string()))?;
        sent += 1;
    }
    if qos == QoS::AtLeastOnce {
        while acked.load(Ordering::Acquire) < sent {
            if let Some(e) = done_rx.borrow().clone() {
                return Err(failed(e));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    client
        .disconnect()
        .await
        .map_err(|e| failed(e.to_string()))?;
    let _ = done_rx.wait_for(Option::is_some).await;
    let _ = driver.await;
    Ok(sent)
}

/// The rustls client configuration: CA from `ca_file` or the system roots, optional client
/// certificate.
fn tls_config(s: &MqttSettings) -> Result<rustls::ClientConfig, MqttError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let tls_err = |path: &PathBuf, message: String| MqttError::Tls {
        path: path.clone(),
        message,
    };
    let mut roots = rustls::RootCertStore::empty();
    match &s.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| tls_err(path, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls_err(path, e.to_string()))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(tls_err(path, "no CA certificate in the file".into()));
            }
        }
        None => {
            let native = rustls_native_certs::load_native_certs();
            roots.add_parsable_certificates(native.certs);
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| MqttError::Settings(format!("TLS: {e}")))?
        .with_root_certificates(roots);
    match (&s.client_cert_file, &s.client_key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(|e| tls_err(cert, e.to_string()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls_err(cert, e.to_string()))?;
            let key_der =
                PrivateKeyDer::from_pem_file(key).map_err(|e| tls_err(key, e.to_string()))?;
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| tls_err(cert, e.to_string()))
        }
        (None, None) => Ok(builder.with_no_client_auth()),
        _ => Err(MqttError::Settings(
            "client_cert_file and client_key_file go together".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_is_the_last_topic_level() {
        assert_eq!(device_of_topic("telemetry/860123"), Some("860123"));
        assert_eq!(device_of_topic("a/b/c"), Some("c"));
        assert_eq!(device_of_topic("telemetry/"), None);
        assert_eq!(device_of_topic("solo"), Some("solo"));
    }

    #[test]
    fn shared_group_prefixes_every_filter() {
        let s = MqttSettings {
            topics: vec!["telemetry/+".into(), "legacy/+/pos".into()],
            shared_group: Some("lienwatch".into()),
            ..MqttSettings::default()
        };
        assert_eq!(
            subscriptions(&s),
            [
                "$share/lienwatch/telemetry/+",
                "$share/lienwatch/legacy/+/pos"
            ]
        );
    }

    #[test]
    fn a_device_always_goes_to_the_same_worker() {
        for w in 1..5 {
            let a = worker_of(Some("dev-1"), w);
            assert!(a < w);
            assert_eq!(a, worker_of(Some("dev-1"), w));
        }
        let spread: std::collections::HashSet<_> = (0..64)
            .map(|i| worker_of(Some(&format!("d{i}")), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }

    #[test]
    fn bad_urls_and_qos_are_refused() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let bad_url = MqttSettings {
            url: "http://x:1".into(),
            ..MqttSettings::default()
        };
        assert!(matches!(
            MqttSource::start(&bad_url, 1, 100, runtime.handle(), None),
            Err(MqttError::Settings(_))
        ));
        let bad_qos = MqttSettings {
            qos: 2,
            ..MqttSettings::default()
        };
        assert!(matches!(
            MqttSource::start(&bad_qos, 1, 100, runtime.handle(), None),
            Err(MqttError::Settings(_))
        ));
    }
}
