//! RabbitMQ implementation of the bus, on lapin 4.
//!
//! Publishing goes through a small pool of channels in confirm mode; each publish (or batch)
//! holds one pool channel from its first frame until its last confirm, because lapin hands
//! a `basic.return` to whichever confirm of the channel resolves next — with only one
//! publisher in flight per channel, an unroutable message is always reported to the caller
//! that sent it (returns are also matched by `message_id`, which covers a publish abandoned
//! mid-flight by a cancelled caller). A channel whose confirms timed out is discarded for
//! the same reason. Every subscription gets its own channel with its own prefetch
//! (`basic.qos`), so closing a subscription (closing its channel) makes the broker requeue
//! exactly that subscription's unacknowledged deliveries.
//!
//! # Reconnection
//!
//! lapin does not reconnect by itself, so the bus does: everything that lives and dies with
//! one TCP connection — the connection, the publishing channels, a token cancelled when the
//! connection is lost — is a [`Link`], built by [`establish`] (connect, declare the whole
//! topology, open the publishing channels). A supervisor task watches the current link
//! (connection events and a status poll); when the connection is lost it withdraws the link
//! (the bus reports itself disconnected, which `/health/ready` shows), cancels its token
//! (which ends every subscription opened on it, so consumers re-subscribe), and runs
//! [`establish`] again with capped, jittered exponential backoff until it succeeds, then
//! installs the new link.
//!
//! While disconnected, `publish`, `publish_batch` and `subscribe` wait at most
//! [`LINK_WAIT`] for the new link and then fail with [`BusError::NotConnected`]; the outbox
//! relays keep their rows and retry, the consumer loops re-subscribe with backoff. Confirms
//! and settlements are bounded by timeouts, so nothing waits forever on a dead connection.
//! Deliveries left unacknowledged by a dead channel are redelivered by the broker; settling
//! such a stale delivery is an error, never a panic.
//!
//! [`AmqpBus::start`] also lets the first connection wait: a broker that cannot be reached
//! at start-up (nothing listening, name not resolvable yet, timeout) leaves the bus
//! disconnected, and the supervisor keeps connecting exactly as after a loss. A broker that
//! answers and refuses (credentials, vhost) is a configuration error there and then.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use lapin::message::BasicReturnMessage;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    BasicQosOptions, BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer, Event,
    ExchangeKind, PublisherConfirm,
};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};
use tokio::time::{Instant, timeout};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use uuid::Uuid;

use super::bundle::{self, Wire};
use super::bus::{Acker, BusError, IncomingMessage, OutgoingMessage, Settle};
use super::dead_letters::{self, Action, DeadLetter, Listing, Which};
use super::topology::{self, ExchangeSpec, ExchangeType, QueueSpec};
use crate::pause::{Backoff, sleep_or_shutdown};
use crate::tuning::PUBLISH_CHANNELS;

/// Content type of every message but bundles.
const JSON: &str = "application/json";

/// AMQP `delivery_mode` for messages that survive a broker restart.
const PERSISTENT: u8 = 2;

/// Reply code of a normal channel/connection close.
const REPLY_SUCCESS: u16 = 200;

/// How long `publish`, `publish_batch` and `subscribe` wait for a reconnection in progress
/// before failing with [`BusError::NotConnected`].
pub const LINK_WAIT: Duration = Duration::from_secs(1);

/// Upper bound for sending a publish (or batch) and receiving all its confirms, and for
/// waiting for a free publishing channel.
pub const CONFIRM_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound for opening a subscription and for settling a delivery.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound for one reconnection attempt (connect, declare, open channels).
const ESTABLISH_TIMEOUT: Duration = Duration::from_secs(10);

/// First and maximum delay between reconnection attempts (before jitter).
const RECONNECT_INITIAL_DELAY: Duration = Duration::from_millis(100);
const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(5);
/// Delays between reconnection attempts, jittered so that many services do not hammer a
/// recovering broker in step.
const RECONNECT_BACKOFF: Backoff =
    Backoff::new(RECONNECT_INITIAL_DELAY, RECONNECT_MAX_DELAY).with_jitter();

/// How often the supervisor polls the connection status (connection events usually tell it
/// sooner).
const WATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Failed reconnection attempts are logged at debug level except every this many.
const RECONNECT_WARN_EVERY: u32 = 10;

/// A RabbitMQ-backed bus. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct AmqpBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for AmqpBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpBus")
            .field("endpoint", &self.inner.endpoint)
            .field("connected", &self.is_connected())
            .field("reconnects", &self.reconnects())
            .finish()
    }
}

struct Inner {
    /// The URL without credentials, for logs and errors.
    endpoint: String,
    /// Set once the first link is installed: until then the broker was never reached.
    connected_once: AtomicBool,
    /// Why the last connection attempt failed, while disconnected (for `/health/ready`).
    last_error: std::sync::Mutex<Option<String>>,
    /// The current link; `None` while disconnected (or closed). Waiters subscribe to it to
    /// learn about a reconnection.
    link: watch::Sender<Option<Arc<Link>>>,
    next_publisher: AtomicUsize,
    closed: AtomicBool,
    /// Successful reconnections since the bus was created.
    reconnects: AtomicU64,
    /// Stops the supervisor: cancelled by [`AmqpBus::close`] and when the last handle goes.
    shutdown: CancellationToken,
}

impl Inner {
    fn set_last_error(&self, error: Option<String>) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = error;
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// This replica's own reply queue and its binding, declared with the topology (several
/// replicas; `None` otherwise).
pub type ReplyQueue = Option<&'static (QueueSpec, topology::BindingSpec)>;

/// Everything that lives and dies with one TCP connection.
struct Link {
    connection: Connection,
    /// `None` = no usable channel in the slot (never opened, or discarded after a confirm
    /// timeout); the next publisher opens one.
    publishers: Vec<Arc<Mutex<Option<Channel>>>>,
    /// Cancelled once this connection is known to be lost or the bus is closed; ends every
    /// subscription opened on it.
    lost: CancellationToken,
}

impl Link {
    fn usable(&self) -> bool {
        !self.lost.is_cancelled() && self.connection.status().connected()
    }
}

/// Connects, declares the whole topology (idempotent) and opens the publishing channels.
/// Re-running it yields a fresh, fully usable [`Link`]; the supervisor does so after a
/// connection loss.
async fn establish(
    url: &AMQPUri,
    endpoint: &str,
    reply_queue: ReplyQueue,
) -> Result<Link, BusError> {
    let properties = ConnectionProperties::default().with_connection_name("order-service".into());
    let connection = Connection::connect_uri(url.clone(), properties)
        .await
        .map_err(|source| BusError::Connect {
            endpoint: endpoint.to_owned(),
            source: Box::new(source),
        })?;
    let link = prepare(connection, endpoint, reply_queue).await;
    if let Err(error) = &link {
        debug!(endpoint, %error, "preparing the new connection failed");
    }
    link
}

async fn prepare(
    connection: Connection,
    endpoint: &str,
    reply_queue: ReplyQueue,
) -> Result<Link, BusError> {
    let result = async {
        let channel = open_channel(&connection, "topology declaration").await?;
        declare_topology(&channel, reply_queue).await?;
        // The declaring channel has no further use; failing to close it politely is harmless.
        if let Err(error) = channel.close(REPLY_SUCCESS, "OK".into()).await {
            debug!(%error, "closing the topology channel failed");
        }
        let mut publishers = Vec::with_capacity(PUBLISH_CHANNELS);
        for _ in 0..PUBLISH_CHANNELS {
            publishers.push(Arc::new(Mutex::new(Some(
                open_publisher(&connection).await?,
            ))));
        }
        Ok(publishers)
    }
    .await;
    match result {
        Ok(publishers) => {
            debug!(
                endpoint,
                exchanges = topology::EXCHANGES.len(),
                queues = topology::QUEUES.len(),
                bindings = topology::BINDINGS.len(),
                "declared the messaging topology"
            );
            Ok(Link {
                connection,
                publishers,
                lost: CancellationToken::new(),
            })
        }
        Err(error) => {
            // Do not leave a half-prepared connection open behind us.
            if connection.status().connected() {
                let _ = connection.close(REPLY_SUCCESS, "OK".into()).await;
            }
            Err(error)
        }
    }
}

async fn open_channel(connection: &Connection, purpose: &'static str) -> Result<Channel, BusError> {
    connection
        .create_channel()
        .await
        .map_err(|source| BusError::Channel {
            purpose,
            source: Box::new(source),
        })
}

async fn open_publisher(connection: &Connection) -> Result<Channel, BusError> {
    let channel = open_channel(connection, "publishing").await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .map_err(|source| BusError::Channel {
            purpose: "publishing (confirm.select)",
            source: Box::new(source),
        })?;
    Ok(channel)
}
/// Declares the topology, plus this replica's reply queue (several replicas; see
/// [`topology::replica_reply_queue`]), which expires when no replica consumes it.
async fn declare_topology(channel: &Channel, reply_queue: ReplyQueue) -> Result<(), BusError> {
    for exchange in topology::EXCHANGES {
        let kind = match exchange.kind {
            ExchangeType::Topic => ExchangeKind::Topic,
            ExchangeType::Fanout => ExchangeKind::Fanout,
        };
        channel
            .exchange_declare(
                exchange.name.into(),
                kind,
                ExchangeDeclareOptions {
                    durable: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| BusError::Declare {
                what: format!("exchange {}", exchange.name),
                source: Box::new(source),
            })?;
    }
    let queues = topology::QUEUES
        .iter()
        .chain(reply_queue.iter().map(|(q, _)| q));
    for queue in queues {
        let mut arguments = FieldTable::default();
        if reply_queue.is_some_and(|(own, _)| own.name == queue.name) {
            arguments.insert(
                "x-expires".into(),
                AMQPValue::LongUInt(topology::REPLICA_QUEUE_EXPIRES_MS),
            );
        }
        if let Some(dlx) = queue.dead_letter_exchange {
            arguments.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dlx.into()),
            );
        }
        channel
            .queue_declare(
                queue.name.into(),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                arguments,
            )
            .await
            .map_err(|source| BusError::Declare {
                what: format!("queue {}", queue.name),
                source: Box::new(source),
            })?;
    }
    let bindings = topology::BINDINGS
        .iter()
        .chain(reply_queue.iter().map(|(_, b)| b));
    for binding in bindings {
        channel
            .queue_bind(
                binding.queue.into(),
                binding.exchange.into(),
                binding.pattern.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|source| BusError::Declare {
                what: format!(
                    "binding {} -> {} ({:?})",
                    binding.exchange, binding.queue, binding.pattern
                ),
                source: Box::new(source),
            })?;
    }
    Ok(())
}

/// Resolves once `link`'s connection is no longer usable, or at shutdown.
async fn until_lost(link: &Link, shutdown: &CancellationToken) {
    let mut events = link.connection.events_listener();
    let mut poll = tokio::time::interval(WATCH_INTERVAL);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while link.usable() {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = link.lost.cancelled() => return,
            // A finished event stream disables this branch; the poll still runs.
            Some(event) = events.next() => match event {
                Event::Error(error) => debug!(%error, "RabbitMQ connection error"),
                Event::ConnectionBlocked(reason) => {
                    warn!(%reason, "RabbitMQ blocked the connection (publishes will wait)");
                }
                Event::ConnectionUnblocked => info!("RabbitMQ unblocked the connection"),
                _ => {}
            },
            _ = poll.tick() => {}
        }
    }
}

/// Keeps the bus connected: waits for the current link to fail, withdraws it, and
/// re-establishes a new one with backoff. Without a first link (the broker was unreachable
/// at start-up) it starts with the re-establishing. Holds the bus weakly, so it stops when
/// the last handle is dropped (or at [`AmqpBus::close`]).
async fn supervise(
    bus: Weak<Inner>,
    url: AMQPUri,
    endpoint: String,
    reply_queue: ReplyQueue,
    shutdown: CancellationToken,
    mut current: Option<Arc<Link>>,
) {
    loop {
        let mut lost_at = Instant::now();
        if let Some(link) = current.take() {
            until_lost(&link, &shutdown).await;
            lost_at = Instant::now();
            if shutdown.is_cancelled() {
                return;
            }
            link.lost.cancel();
            let Some(inner) = bus.upgrade() else { return };
            inner.link.send_if_modified(|current| {
                // Withdraw the link unless close() already did.
                let ours = current.as_ref().is_some_and(|c| Arc::ptr_eq(c, &link));
                if ours {
                    *current = None;
                }
                ours
            });
            drop(inner);
            drop(link);
            warn!(
                endpoint,
                "broker connection lost; publishing and consuming pause until it is re-established"
            );
        }

        let mut attempt: u32 = 0;
        let mut backoff = RECONNECT_BACKOFF;
        let new = loop {
            if !sleep_or_shutdown(&shutdown, backoff.next_pause()).await {
                return;
            }
            attempt += 1;
            let attempted = tokio::select! {
                _ = shutdown.cancelled() => return,
                attempted = timeout(ESTABLISH_TIMEOUT, establish(&url, &endpoint, reply_queue)) => attempted,
            };
            let (error, refused) = match attempted {
                Ok(Ok(new)) => break Arc::new(new),
                Ok(Err(error)) => (error.to_string(), error.is_refusal()),
                Err(_) => (format!("timed out after {ESTABLISH_TIMEOUT:?}"), false),
            };
            let Some(inner) = bus.upgrade() else { return };
            inner.set_last_error(Some(error.clone()));
            drop(inner);
            if refused {
                // Not an outage: nothing changes until someone fixes the configuration.
                error!(endpoint, attempt, %error, "the broker refuses the connection; check AMQP_URL's credentials and vhost");
            } else if attempt.is_multiple_of(RECONNECT_WARN_EVERY) {
                warn!(endpoint, attempt, %error, down_for = ?lost_at.elapsed(), "still cannot connect to the broker");
            } else {
                debug!(endpoint, attempt, %error, "connecting to the broker failed");
            }
        };

        let Some(inner) = bus.upgrade() else {
            close_link(&new).await;
            return;
        };
        inner.link.send_replace(Some(new.clone()));
        // close() may have run meanwhile: then take the link back (or close() already did).
        if inner.closed.load(Ordering::Acquire) || shutdown.is_cancelled() {
            inner.link.send_replace(None);
            close_link(&new).await;
            return;
        }
        inner.set_last_error(None);
        if inner.connected_once.swap(true, Ordering::AcqRel) {
            let reconnects = inner.reconnects.fetch_add(1, Ordering::AcqRel) + 1;
            info!(
                endpoint,
                attempts = attempt,
                down_for = ?lost_at.elapsed(),
                reconnects,
                "broker reconnected; topology declared again"
            );
        } else {
            info!(
                endpoint,
                attempts = attempt,
                waited = ?lost_at.elapsed(),
                "connected to RabbitMQ and declared the messaging topology"
            );
        }
        drop(inner);
        current = Some(new);
    }
}

/// Ends a link: its subscriptions end and the connection is closed politely if still open.
async fn close_link(link: &Link) {
    link.lost.cancel();
    if link.connection.status().connected() {
        match timeout(
            OPERATION_TIMEOUT,
            link.connection.close(REPLY_SUCCESS, "OK".into()),
        )
        .await
        {
            Ok(Ok(())) => {}
            Ok(Err(error)) => warn!(%error, "closing the RabbitMQ connection failed"),
            Err(_) => warn!("closing the RabbitMQ connection timed out"),
        }
    }
}

/// A locked publishing channel of the pool.
type PublisherSlot = OwnedMutexGuard<Option<Channel>>;

impl AmqpBus {
    /// Connects to `url` and declares the topology, then keeps the connection up: see the
    /// module docs on reconnection. The first connection must succeed.
    pub async fn connect(url: &str) -> Result<Self, BusError> {
        let uri = parse_url(url)?;
        let endpoint = redact(url);
        let link = establish(&uri, &endpoint, None).await?;
        Ok(Self::supervised(uri, endpoint, Some(Arc::new(link)), None))
    }

    /// Like [`connect`](Self::connect), but a broker that cannot be reached yet is no
    /// error: the bus starts disconnected and connects in the background (with the
    /// reconnection backoff), declaring the topology then. Fails only for what waiting
    /// cannot fix: a malformed URL, or a broker that answers and refuses the credentials or
    /// the vhost.
    /// `reply_queue`: also declare this replica's reply queue (several replicas).
    pub async fn start(url: &str, reply_queue: ReplyQueue) -> Result<Self, BusError> {
        let uri = parse_url(url)?;
        let endpoint = redact(url);
        let first = match timeout(ESTABLISH_TIMEOUT, establish(&uri, &endpoint, reply_queue)).await
        {
            Ok(Ok(link)) => Ok(link),
            Ok(Err(error)) if error.is_refusal() => return Err(error),
            Ok(Err(error)) => Err(error.to_string()),
            Err(_) => Err(format!("timed out after {ESTABLISH_TIMEOUT:?}")),
        };
        match first {
            Ok(link) => Ok(Self::supervised(
                uri,
                endpoint,
                Some(Arc::new(link)),
                reply_queue,
            )),
            Err(error) => {
                warn!(
                    endpoint,
                    %error,
                    "the broker is unreachable; starting without it and connecting in the \
                     background (what needs it answers 503 meanwhile)"
                );
                let bus = Self::supervised(uri, endpoint, None, reply_queue);
                bus.inner.set_last_error(Some(error));
                Ok(bus)
            }
        }
    }

    /// The bus around its first link (or none yet), with the supervisor running.
    fn supervised(
        uri: AMQPUri,
        endpoint: String,
        link: Option<Arc<Link>>,
        reply_queue: ReplyQueue,
    ) -> Self {
        if link.is_some() {
            info!(
                endpoint,
                "connected to RabbitMQ and declared the messaging topology"
            );
        }
        let shutdown = CancellationToken::new();
        let (sender, _) = watch::channel(link.clone());
        let inner = Arc::new(Inner {
            endpoint: endpoint.clone(),
            connected_once: AtomicBool::new(link.is_some()),
            last_error: std::sync::Mutex::new(None),
            link: sender,
            next_publisher: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
            shutdown: shutdown.clone(),
        });
        tokio::spawn(supervise(
            Arc::downgrade(&inner),
            uri,
            endpoint,
            reply_queue,
            shutdown,
            link,
        ));
        Self { inner }
    }

    /// Whether the broker was ever reached (false only while a bus made by
    /// [`start`](Self::start) has not connected yet).
    pub fn connected_once(&self) -> bool {
        self.inner.connected_once.load(Ordering::Acquire)
    }

    /// Why the last connection attempt failed, while disconnected.
    pub fn last_error(&self) -> Option<String> {
        self.inner
            .last_error
            .lock()
            .map(|e| e.clone())
            .unwrap_or_default()
    }

    /// True while the connection is open and [`close`](Self::close) was not called; false
    /// while the bus is reconnecting.
    pub fn is_connected(&self) -> bool {
        !self.inner.closed.load(Ordering::Acquire)
            && self
                .inner
                .link
                .borrow()
                .as_ref()
                .is_some_and(|l| l.usable())
    }

    /// How many times the bus has re-established its connection after losing it.
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Acquire)
    }

    /// Closes the connection, which ends every subscription, and stops reconnecting.
    pub async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.inner.shutdown.cancel();
        if let Some(link) = self.inner.link.send_replace(None) {
            close_link(&link).await;
            info!(endpoint = %self.inner.endpoint, "closed the RabbitMQ connection");
        }
    }

    /// Waits until the bus is connected, at most `max`; true if it is. A closed bus never
    /// connects again, so this then waits the whole `max` and answers false.
    pub async fn wait_connected(&self, max: Duration) -> bool {
        timeout(max, self.usable_link()).await.is_ok() && self.is_connected()
    }

    /// The current link once it is usable (forever pending on a closed bus).
    async fn usable_link(&self) -> Arc<Link> {
        let mut updates = self.inner.link.subscribe();
        loop {
            if let Some(link) = updates.borrow_and_update().as_ref()
                && link.usable()
                && !self.inner.closed.load(Ordering::Acquire)
            {
                return link.clone();
            }
            if updates.changed().await.is_err() {
                // The sender lives in `inner`, which we hold: cannot happen.
                std::future::pending::<()>().await;
            }
        }
    }

    /// The current link, waiting up to [`LINK_WAIT`] for a reconnection in progress.
    async fn link(&self) -> Result<Arc<Link>, BusError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let waited = timeout(LINK_WAIT, self.usable_link()).await;
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        waited.map_err(|_| self.not_connected())
    }

    fn not_connected(&self) -> BusError {
        BusError::NotConnected {
            endpoint: self.inner.endpoint.clone(),
        }
    }

    /// Locks one publishing channel of the current link, opening it if it is missing or the
    /// broker closed it (e.g. after a channel-level error) while the connection is still up.
    async fn publisher(&self) -> Result<PublisherSlot, BusError> {
        let link = self.link().await?;
        let index =
            self.inner.next_publisher.fetch_add(1, Ordering::Relaxed) % link.publishers.len();
        let mut slot = timeout(CONFIRM_TIMEOUT, link.publishers[index].clone().lock_owned())
            .await
            .map_err(|_| BusError::Timeout {
                what: "waiting for a free publishing channel",
                after: CONFIRM_TIMEOUT,
            })?;
        if !slot.as_ref().is_some_and(|c| c.status().connected()) {
            if !link.usable() {
                return Err(self.not_connected());
            }
            if slot.is_some() {
                warn!(
                    index,
                    "a publishing channel was closed by the broker; reopening it"
                );
            }
            *slot = None;
            let channel = timeout(OPERATION_TIMEOUT, open_publisher(&link.connection))
                .await
                .map_err(|_| BusError::Timeout {
                    what: "opening a publishing channel",
                    after: OPERATION_TIMEOUT,
                })??;
            *slot = Some(channel);
        }
        Ok(slot)
    }

    pub(crate) async fn publish(
        &self,
        spec: &ExchangeSpec,
        msg: &OutgoingMessage,
    ) -> Result<(), BusError> {
        let mut slot = self.publisher().await?;
        let Some(channel) = slot.as_ref() else {
            return Err(self.not_connected());
        };
        let outcome = timeout(CONFIRM_TIMEOUT, async {
            let confirm = send(channel, spec, msg, JSON).await?;
            // Still holding the channel: see the module docs on returned messages.
            Ok::<_, BusError>(confirm.await)
        })
        .await;
        match outcome {
            Ok(Ok(confirmation)) => {
                drop(slot);
                check_confirm(msg, confirmation, |id| id == msg.message_id)
            }
            Ok(Err(error)) => Err(error),
            Err(_) => {
                discard_publisher(&mut slot);
                Err(BusError::Timeout {
                    what: "waiting for the publisher confirm",
                    after: CONFIRM_TIMEOUT,
                })
            }
        }
    }

    pub(crate) async fn publish_batch(
        &self,
        batch: &[(&'static ExchangeSpec, &OutgoingMessage)],
    ) -> Result<(), BusError> {
        if batch.is_empty() {
            return Ok(());
        }
        // Messages going the same way travel as one (see `bundle`).
        let mut outgoing: Vec<(&ExchangeSpec, Cow<'_, OutgoingMessage>, &str)> = Vec::new();
        for wire in bundle::plan(batch) {
            outgoing.push(match wire {
                Wire::Single(spec, msg) => (spec, Cow::Borrowed(msg), JSON),
                Wire::Bundle(spec, parts) => {
                    let packed = bundle::encode(&parts)
                        .map_err(|e| BusError::InvalidMessage(format!("bundling: {e}")))?;
                    metrics::histogram!("amqp_bundle_parts", "exchange" => spec.name)
                        .record(parts.len() as f64);
                    (spec, Cow::Owned(packed), bundle::CONTENT_TYPE)
                }
            });
        }
        let ours: HashSet<Uuid> = outgoing.iter().map(|(_, msg, _)| msg.message_id).collect();
        let mut slot = self.publisher().await?;
        let Some(channel) = slot.as_ref() else {
            return Err(self.not_connected());
        };
        let outcome = timeout(CONFIRM_TIMEOUT, async {
            let mut pending: Vec<(&OutgoingMessage, PublisherConfirm)> =
                Vec::with_capacity(outgoing.len());
            let mut first_error = None;
            for (spec, msg, content_type) in &outgoing {
                match send(channel, spec, msg, content_type).await {
                    Ok(confirm) => pending.push((msg, confirm)),
                    Err(error) => {
                        first_error = Some(error);
                        break;
                    }
                }
            }
            // Await every confirm that was started, even after an error, so that none is
            // left behind on the channel to be mistaken for a later publisher's.
            for (msg, confirm) in pending {
                let outcome = check_confirm(msg, confirm.await, |id| ours.contains(&id));
                if let Err(error) = outcome {
                    first_error.get_or_insert(error);
                }
            }
            first_error.map_or(Ok(()), Err)
        })
        .await;
        match outcome {
            Ok(result) => result,
            Err(_) => {
                discard_publisher(&mut slot);
                Err(BusError::Timeout {
                    what: "waiting for the publisher confirms of a batch",
                    after: CONFIRM_TIMEOUT,
                })
            }
        }
    }

    pub(crate) async fn subscribe(
        &self,
        queue: &'static QueueSpec,
        consumer_tag: &str,
        prefetch: u16,
    ) -> Result<AmqpSubscription, BusError> {
        let tag = ShortString::try_new(consumer_tag)
            .map_err(|e| BusError::InvalidMessage(format!("consumer tag {consumer_tag:?}: {e}")))?;
        let link = self.link().await?;
        let subscribe_error = |source| BusError::Subscribe {
            queue: queue.name.to_owned(),
            source: Box::new(source),
        };
        let opened = timeout(OPERATION_TIMEOUT, async {
            let channel = open_channel(&link.connection, "subscription").await?;
            channel
                .basic_qos(prefetch, BasicQosOptions::default())
                .await
                .map_err(subscribe_error)?;
            let consumer = channel
                .basic_consume(
                    queue.name.into(),
                    tag,
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .map_err(subscribe_error)?;
            Ok::<_, BusError>((channel, consumer))
        })
        .await;
        let (channel, consumer) = opened.map_err(|_| BusError::Timeout {
            what: "subscribing",
            after: OPERATION_TIMEOUT,
        })??;
        info!(queue = queue.name, consumer_tag, prefetch, "subscribed");
        Ok(AmqpSubscription {
            queue: queue.name,
            channel,
            consumer,
            lost: link.lost.clone(),
            finished: false,
            unpacked: VecDeque::new(),
        })
    }
}

impl AmqpBus {
    /// Runs `work` on a channel of its own, then closes it: whatever `work` fetched and did
    /// not ack goes back to its queue, in order.
    async fn with_own_channel<T, F, Fut>(
        &self,
        purpose: &'static str,
        work: F,
    ) -> Result<T, BusError>
    where
        F: FnOnce(Channel) -> Fut,
        Fut: std::future::Future<Output = Result<T, BusError>>,
    {
        let link = self.link().await?;
        let channel = timeout(OPERATION_TIMEOUT, open_channel(&link.connection, purpose))
            .await
            .map_err(|_| BusError::Timeout {
                what: "opening a channel",
                after: OPERATION_TIMEOUT,
            })??;
        let result = work(channel.clone()).await;
        let _ = timeout(
            OPERATION_TIMEOUT,
            channel.close(REPLY_SUCCESS, "done".into()),
        )
        .await;
        result
    }

    /// How many messages wait in the dead-letter queue (ready, not being looked at).
    async fn dead_letter_count(channel: &Channel) -> Result<u32, BusError> {
        let queue = channel
            .queue_declare(
                topology::DEAD_LETTER_QUEUE.into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| dead_letter_error("counting", source))?;
        Ok(queue.message_count())
    }

    /// The next dead letter, fetched unacknowledged.
    async fn next_dead_letter(
        channel: &Channel,
    ) -> Result<Option<lapin::message::Delivery>, BusError> {
        let got = timeout(
            OPERATION_TIMEOUT,
            channel.basic_get(
                topology::DEAD_LETTER_QUEUE.into(),
                BasicGetOptions { no_ack: false },
            ),
        )
        .await
        .map_err(|_| BusError::Timeout {
            what: "fetching a dead letter",
            after: OPERATION_TIMEOUT,
        })?
        .map_err(|source| dead_letter_error("fetching", source))?;
        Ok(got.map(|g| g.delivery))
    }

    /// The first `limit` dead letters, left in the queue.
    pub(crate) async fn dead_letters(&self, limit: usize) -> Result<Listing, BusError> {
        self.with_own_channel("dead letters", |channel| async move {
            let total = Self::dead_letter_count(&channel).await?;
            let mut listed = Vec::new();
            while listed.len() < limit.min(dead_letters::SCAN_LIMIT) {
                let Some(delivery) = Self::next_dead_letter(&channel).await? else {
                    break;
                };
                listed.push(dead_letter_of(&delivery));
            }
            Ok(Listing {
                dead_letters: listed,
                total: u64::from(total),
            })
        })
        .await
    }

    /// Replays or discards the chosen dead letters among those in the queue now (a replayed
    /// message rejected again lands behind them and is not taken twice). Returns how many.
    pub(crate) async fn settle_dead_letters(
        &self,
        which: Which<'_>,
        action: Action,
    ) -> Result<usize, BusError> {
        self.with_own_channel("dead letters", |channel| async move {
            if action == Action::Replay {
                channel
                    .confirm_select(ConfirmSelectOptions::default())
                    .await
                    .map_err(|source| dead_letter_error("confirm.select", source))?;
            }
            let present = Self::dead_letter_count(&channel).await?;
            let mut settled = 0;
            for _ in 0..present.min(dead_letters::SCAN_LIMIT as u32) {
                if which.done(settled) {
                    break;
                }
                let Some(delivery) = Self::next_dead_letter(&channel).await? else {
                    break;
                };
                let letter = dead_letter_of(&delivery);
                if !which.matches(&letter.id) {
                    continue; // back to the queue when the channel closes
                }
                if action == Action::Replay {
                    replay(&channel, &letter, &delivery).await?;
                }
                delivery
                    .acker
                    .ack(BasicAckOptions::default())
                    .await
                    .map_err(|source| BusError::settle(Settle::Ack, source))?;
                settled += 1;
            }
            Ok(settled)
        })
        .await
    }
}

fn dead_letter_error(what: &'static str, source: lapin::Error) -> BusError {
    BusError::Channel {
        purpose: what,
        source: Box::new(source),
    }
}

fn dead_letter_of(delivery: &lapin::message::Delivery) -> DeadLetter {
    let properties = &delivery.properties;
    DeadLetter::new(
        delivery.routing_key.as_str().to_owned(),
        properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned()),
        properties.kind().as_ref().map(|s| s.as_str().to_owned()),
        properties
            .headers()
            .as_ref()
            .map(headers_from_table)
            .unwrap_or_default(),
        &delivery.data,
    )
}

/// Publishes a dead letter to the queue it was rejected from (through the default
/// exchange), as it was, without the broker's death records: a replayed message that is
/// rejected again is recorded afresh.
async fn replay(
    channel: &Channel,
    letter: &DeadLetter,
    delivery: &lapin::message::Delivery,
) -> Result<(), BusError> {
    let Some(queue) = letter.queue.as_deref() else {
        return Err(BusError::DeadLetter(format!(
            "dead letter {} names no queue of origin ({} is missing)",
            letter.id,
            dead_letters::FIRST_DEATH_QUEUE
        )));
    };
    let mut properties = delivery.properties.clone();
    let mut kept = FieldTable::default();
    for (name, value) in properties.headers().as_ref().into_iter().flatten() {
        let name = name.as_str();
        if !(name == "x-death"
            || name.starts_with("x-first-death-")
            || name.starts_with("x-last-death-"))
        {
            kept.insert(name.into(), value.clone());
        }
    }
    kept.insert(
        dead_letters::ORIGINAL_ROUTING_KEY.into(),
        AMQPValue::LongString(letter.routing_key.as_str().into()),
    );
    properties = properties.with_headers(kept);
    let confirm = channel
        .basic_publish(
            "".into(),
            short(queue, "queue name")?,
            BasicPublishOptions {
                mandatory: true,
                immediate: false,
            },
            &delivery.data,
            properties,
        )
        .await
        .map_err(|source| dead_letter_error("replaying", source))?;
    match timeout(CONFIRM_TIMEOUT, confirm).await {
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => Err(BusError::DeadLetter(format!(
            "dead letter {} cannot be replayed: its queue {queue} no longer exists",
            letter.id
        ))),
        Ok(Ok(_)) => Err(BusError::DeadLetter(format!(
            "the broker refused the replay of dead letter {}",
            letter.id
        ))),
        Ok(Err(source)) => Err(dead_letter_error("replaying", source)),
        Err(_) => Err(BusError::Timeout {
            what: "replaying a dead letter",
            after: CONFIRM_TIMEOUT,
        }),
    }
}

/// Takes a channel out of the pool after a confirm timeout: a confirm or return still in
/// flight on it could otherwise be attributed to the next publisher. It is closed in the
/// background; the next publisher opens a fresh one.
fn discard_publisher(slot: &mut PublisherSlot) {
    if let Some(channel) = slot.take() {
        warn!("discarding a publishing channel whose confirms timed out");
        tokio::spawn(async move {
            if channel.status().connected() {
                let _ = timeout(
                    OPERATION_TIMEOUT,
                    channel.close(REPLY_SUCCESS, "confirm timeout".into()),
                )
                .await;
            }
        });
    }
}

/// Sends one message on a confirm-mode channel; the returned future resolves on its confirm.
async fn send(
    channel: &Channel,
    spec: &ExchangeSpec,
    msg: &OutgoingMessage,
    content_type: &str,
) -> Result<PublisherConfirm, BusError> {
    let properties = properties(msg, content_type)?;
    let routing_key = short(&msg.routing_key, "routing key")?;
    channel
        .basic_publish(
            spec.name.into(),
            routing_key,
            BasicPublishOptions {
                mandatory: spec.mandatory,
                immediate: false,
            },
            &msg.payload,
            properties,
        )
        .await
        .map_err(|source| publish_error(msg, source))
}

/// Turns a publisher confirm into the publish result. `is_ours` tells whether a returned
/// message (by id) belongs to the caller's publish or batch.
fn check_confirm(
    msg: &OutgoingMessage,
    outcome: lapin::Result<Confirmation>,
    is_ours: impl Fn(Uuid) -> bool,
) -> Result<(), BusError> {
    match outcome {
        Ok(Confirmation::Ack(None)) => Ok(()),
        // With `mandatory`, RabbitMQ returns an unroutable message and then acks it.
        Ok(Confirmation::Ack(Some(returned))) => {
            let error = unroutable(msg, &returned);
            match &error {
                // A return left behind by a publish whose caller gave up (its future was
                // dropped while the confirm was pending) is not this caller's failure.
                BusError::Unroutable { message_id, .. } if !is_ours(*message_id) => {
                    warn!(%message_id, "ignoring the return of an abandoned publish");
                    Ok(())
                }
                _ => Err(error),
            }
        }
        Ok(Confirmation::Nack(_)) => Err(BusError::Nacked {
            exchange: msg.exchange.clone(),
            routing_key: msg.routing_key.clone(),
            message_id: msg.message_id,
        }),
        Ok(Confirmation::NotRequested) => Err(BusError::ConfirmsNotEnabled),
        Err(source) => Err(publish_error(msg, source)),
    }
}

/// Describes the message that was actually returned. Within a batch lapin may attach the
/// return to a neighbouring confirm (it pairs them first-come, and the broker acks several
/// tags at once), so the returned message's own id and key are the reliable ones.
fn unroutable(msg: &OutgoingMessage, returned: &BasicReturnMessage) -> BusError {
    let delivery = &returned.delivery;
    let message_id = delivery
        .properties
        .message_id()
        .as_ref()
        .and_then(|id| Uuid::parse_str(id.as_str()).ok())
        .unwrap_or(msg.message_id);
    BusError::Unroutable {
        exchange: delivery.exchange.as_str().to_owned(),
        routing_key: delivery.routing_key.as_str().to_owned(),
        message_id,
    }
}

fn publish_error(msg: &OutgoingMessage, source: lapin::Error) -> BusError {
    BusError::Publish {
        exchange: msg.exchange.clone(),
        routing_key: msg.routing_key.clone(),
        message_id: msg.message_id,
        source: Box::new(source),
    }
}

fn properties(msg: &OutgoingMessage, content_type: &str) -> Result<BasicProperties, BusError> {
    let mut headers = FieldTable::default();
    for (name, value) in &msg.headers {
        headers.insert(
            short(name, "header name")?,
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type(short(content_type, "content type")?)
        .with_message_id(msg.message_id.to_string().into())
        .with_type(short(&msg.kind, "message type")?)
        .with_headers(headers);
    // A clock before 1970 only costs the informational timestamp.
    if let Ok(now) = SystemTime::now().duration_since(UNIX_EPOCH) {
        properties = properties.with_timestamp(now.as_secs());
    }
    Ok(properties)
}

/// AMQP short strings are limited to 255 bytes; lapin's `From` conversions panic beyond
/// that, so caller-provided values go through the fallible constructor.
fn short(value: &str, what: &str) -> Result<ShortString, BusError> {
    ShortString::try_new(value).map_err(|e| BusError::InvalidMessage(format!("{what}: {e}")))
}

/// Settles a bundle's delivery once every part is settled: acked if all parts were acked,
/// requeued if any was requeued, dead-lettered if any was poison (and none requeued).
#[derive(Debug)]
pub(crate) struct BundleAcker {
    acker: lapin::Acker,
    unsettled: AtomicUsize,
    /// The most severe settlement asked for so far ([`severity`]).
    worst: AtomicU8,
}

fn severity(how: Settle) -> u8 {
    match how {
        Settle::Ack => 0,
        Settle::DeadLetter => 1,
        Settle::Requeue => 2,
    }
}

impl BundleAcker {
    pub(crate) async fn settle(&self, how: Settle) -> Result<(), BusError> {
        if self.acker.poisoned() {
            return Err(BusError::stale(how));
        }
        self.worst.fetch_max(severity(how), Ordering::SeqCst);
        if self.unsettled.fetch_sub(1, Ordering::SeqCst) != 1 {
            return Ok(()); // other parts are still being handled
        }
        let bundle = match self.worst.load(Ordering::SeqCst) {
            0 => Settle::Ack,
            1 => Settle::DeadLetter,
            _ => Settle::Requeue,
        };
        settle(&self.acker, bundle).await
    }
}

/// Settles an AMQP delivery. A delivery of a channel that has died (e.g. with its
/// connection) cannot be settled any more: that is an error, and the broker redelivers it.
pub(crate) async fn settle(acker: &lapin::Acker, how: Settle) -> Result<(), BusError> {
    if acker.poisoned() {
        return Err(BusError::stale(how));
    }
    let settling = async {
        match how {
            Settle::Ack => acker.ack(BasicAckOptions::default()).await,
            // Without requeue, the queue's `x-dead-letter-exchange` takes the message.
            Settle::DeadLetter => acker.reject(BasicRejectOptions { requeue: false }).await,
            Settle::Requeue => {
                acker
                    .nack(BasicNackOptions {
                        multiple: false,
                        requeue: true,
                    })
                    .await
            }
        }
    };
    match timeout(OPERATION_TIMEOUT, settling).await {
        Ok(Ok(true)) => Ok(()),
        // lapin answers `false` when the acker was used or its channel is gone; in the latter
        // case the broker has already requeued the message.
        Ok(Ok(false)) => Err(BusError::stale(how)),
        Ok(Err(source)) => Err(BusError::settle(how, source)),
        Err(_) => Err(BusError::Timeout {
            what: how.as_str(),
            after: OPERATION_TIMEOUT,
        }),
    }
}

/// A consumer on its own channel.
#[derive(Debug)]
pub struct AmqpSubscription {
    queue: &'static str,
    /// Kept so the channel lives exactly as long as the subscription: dropping both closes it
    /// and the broker requeues the unacknowledged deliveries.
    channel: Channel,
    consumer: Consumer,
    /// The link's token: cancelled when the connection is lost or the bus closed.
    lost: CancellationToken,
    finished: bool,
    /// Parts of an unpacked bundle not handed out yet.
    unpacked: VecDeque<IncomingMessage>,
}

impl AmqpSubscription {
    pub(crate) async fn next(&mut self) -> Option<IncomingMessage> {
        if self.finished {
            return None;
        }
        if !self.lost.is_cancelled()
            && let Some(part) = self.unpacked.pop_front()
        {
            return Some(part);
        }
        let next = tokio::select! {
            // Checked first: deliveries still buffered from a dead connection cannot be
            // acknowledged any more, and the broker redelivers them anyway.
            biased;
            _ = self.lost.cancelled() => {
                info!(queue = self.queue, "connection lost or bus closed; subscription ended");
                self.finished = true;
                self.unpacked.clear();
                return None;
            }
            next = self.consumer.next() => next,
        };
        match next {
            Some(Ok(delivery)) => {
                self.unpacked.extend(incoming(delivery));
                self.unpacked.pop_front()
            }
            Some(Err(error)) => {
                // lapin follows an error with the end of the stream; report it once here.
                warn!(queue = self.queue, %error, "consumer stopped");
                self.finished = true;
                None
            }
            None => {
                info!(queue = self.queue, "consumer cancelled");
                self.finished = true;
                None
            }
        }
    }

    pub(crate) fn queue(&self) -> &'static str {
        self.queue
    }

    pub(crate) async fn close(self) {
        if self.channel.status().connected() {
            match timeout(
                OPERATION_TIMEOUT,
                self.channel.close(REPLY_SUCCESS, "OK".into()),
            )
            .await
            {
                Ok(Ok(())) => {}
                Ok(Err(error)) => {
                    debug!(queue = self.queue, %error, "closing a subscription channel failed");
                }
                Err(_) => debug!(
                    queue = self.queue,
                    "closing a subscription channel timed out"
                ),
            }
        }
    }
}

/// A bundle part's message id, headers and payload, owned.
type UnpackedPart = (String, BTreeMap<String, String>, Vec<u8>);

/// The messages of a delivery: its parts if it is a bundle, else itself.
fn incoming(delivery: lapin::message::Delivery) -> Vec<IncomingMessage> {
    let properties = &delivery.properties;
    let is_bundle = properties
        .content_type()
        .as_ref()
        .is_some_and(|t| t.as_str() == bundle::CONTENT_TYPE);
    let parts: Option<Vec<UnpackedPart>> = is_bundle
        .then(|| bundle::decode(&delivery.data))
        .flatten()
        .map(|parts| {
            parts
                .into_iter()
                .map(|p| (p.message_id, p.headers, p.payload.get().as_bytes().to_vec()))
                .collect()
        });
    let Some(parts) = parts else {
        return vec![single(delivery)];
    };
    let kind = properties.kind().as_ref().map(|s| s.as_str().to_owned());
    // Headers of the bundle itself (e.g. the broker's `x-first-death-*` on a dead letter)
    // apply to every part; each part's own headers come on top.
    let outer = properties
        .headers()
        .as_ref()
        .map(headers_from_table)
        .unwrap_or_default();
    let routing_key = routing_key_of(&delivery, &outer);
    let acker = Arc::new(BundleAcker {
        acker: delivery.acker,
        unsettled: AtomicUsize::new(parts.len()),
        worst: AtomicU8::new(0),
    });
    parts
        .into_iter()
        .map(|(message_id, headers, payload)| {
            let mut all = outer.clone();
            all.remove("x-bundle-parts");
            all.extend(headers);
            IncomingMessage {
                routing_key: routing_key.clone(),
                message_id: Some(message_id),
                kind: kind.clone(),
                headers: all,
                redelivered: delivery.redelivered,
                payload,
                acker: Acker::AmqpBundle(acker.clone()),
            }
        })
        .collect()
}

/// The key the message was first sent with: a replayed dead letter arrives through the
/// default exchange with its queue's name as key, and the first key in a header.
fn routing_key_of(
    delivery: &lapin::message::Delivery,
    headers: &BTreeMap<String, String>,
) -> String {
    headers
        .get(dead_letters::ORIGINAL_ROUTING_KEY)
        .cloned()
        .unwrap_or_else(|| delivery.routing_key.as_str().to_owned())
}

fn single(delivery: lapin::message::Delivery) -> IncomingMessage {
    let properties = &delivery.properties;
    let headers = properties
        .headers()
        .as_ref()
        .map(headers_from_table)
        .unwrap_or_default();
    IncomingMessage {
        routing_key: routing_key_of(&delivery, &headers),
        message_id: properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned()),
        kind: properties.kind().as_ref().map(|s| s.as_str().to_owned()),
        headers,
        redelivered: delivery.redelivered,
        payload: delivery.data,
        acker: Acker::Amqp(delivery.acker),
    }
}

fn headers_from_table(table: &FieldTable) -> BTreeMap<String, String> {
    table
        .into_iter()
        .filter_map(|(name, value)| Some((name.as_str().to_owned(), header_text(value)?)))
        .collect()
}

/// Text of a scalar header; tables and arrays (such as `x-death`) have no faithful text form.
fn header_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(v) => v.to_string(),
        AMQPValue::ShortShortInt(v) => v.to_string(),
        AMQPValue::ShortShortUInt(v) => v.to_string(),
        AMQPValue::ShortInt(v) => v.to_string(),
        AMQPValue::ShortUInt(v) => v.to_string(),
        AMQPValue::LongInt(v) => v.to_string(),
        AMQPValue::LongUInt(v) => v.to_string(),
        AMQPValue::LongLongInt(v) => v.to_string(),
        AMQPValue::Float(v) => v.to_string(),
        AMQPValue::Double(v) => v.to_string(),
        AMQPValue::Timestamp(v) => v.to_string(),
        AMQPValue::DecimalValue(_)
        | AMQPValue::FieldArray(_)
        | AMQPValue::FieldTable(_)
        | AMQPValue::ByteArray(_)
        | AMQPValue::Void => return None,
    })
}

/// Parses an AMQP URL the way lapin will use it. The error names the problem but never the
/// credentials.
pub fn parse_url(url: &str) -> Result<AMQPUri, BusError> {
    url.parse::<AMQPUri>().map_err(|problem| {
        let problem = if url.is_empty() {
            problem
        } else {
            problem.replace(url, &redact(url))
        };
        BusError::InvalidUrl(problem)
    })
}

/// The URL without user info, safe to log.
fn redact(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            format!("{scheme}://{host}")
        }
        None => url
            .rsplit_once('@')
            .map_or(url, |(_, host)| host)
            .to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_delay_grows_with_jitter_and_is_capped() {
        let mut backoff = RECONNECT_BACKOFF;
        let delays: Vec<_> = (0..40).map(|_| backoff.next_pause()).collect();
        for (attempt, &delay) in (0u32..).zip(&delays) {
            let base = RECONNECT_INITIAL_DELAY
                .saturating_mul(1 << attempt.min(16))
                .min(RECONNECT_MAX_DELAY);
            assert!(delay >= base / 2 && delay <= base, "{attempt}: {delay:?}");
            assert!(delay <= RECONNECT_MAX_DELAY);
        }
        assert!(delays[0] <= Duration::from_millis(100));
        assert!(delays[10] >= Duration::from_millis(2_500));
    }

    #[test]
    fn redact_drops_credentials() {
        assert_eq!(
            redact("amqp://guest:secret@127.0.0.1:5672/%2f"),
            "amqp://127.0.0.1:5672/%2f"
        );
        assert_eq!(redact("amqp://host:5672"), "amqp://host:5672");
        assert_eq!(redact("user:pw@host"), "host");
    }

    #[test]
    fn headers_round_trip_and_skip_tables() {
        let mut table = FieldTable::default();
        table.insert("traceparent".into(), AMQPValue::LongString("00-abc".into()));
        table.insert("count".into(), AMQPValue::LongLongInt(3));
        table.insert(
            "x-death".into(),
            AMQPValue::FieldTable(FieldTable::default()),
        );
        let headers = headers_from_table(&table);
        assert_eq!(
            headers.get("traceparent").map(String::as_str),
            Some("00-abc")
        );
        assert_eq!(headers.get("count").map(String::as_str), Some("3"));
        assert!(!headers.contains_key("x-death"));
    }

    #[test]
    fn overlong_routing_key_is_an_error_not_a_panic() {
        assert!(matches!(
            short(&"k".repeat(256), "routing key"),
            Err(BusError::InvalidMessage(_))
        ));
    }
}
