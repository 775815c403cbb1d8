//! The bus: the one messaging interface the rest of the service uses.
//!
//! [`Bus`] is either RabbitMQ ([`amqp::AmqpBus`]) or an in-process stand-in
//! ([`in_process::InProcessBus`]) with the same semantics, so the service and its tests run
//! without a broker. Both accept only exchanges and queues of the [`topology`], publish with
//! the same routing rules (an unroutable message on a `mandatory` exchange is an error, on
//! `order.events` it is dropped), deliver with manual acknowledgement, redeliver whatever a
//! closed subscription left unacknowledged, and dead-letter rejected messages to
//! `order.dead-letters`.
//!
//! The RabbitMQ bus reconnects by itself after losing its connection (see [`amqp`]):
//! meanwhile [`Bus::is_connected`] is false, publishing and subscribing fail after a short
//! bounded wait with [`BusError::NotConnected`], and subscriptions end, so their consumers
//! re-subscribe (on the new connection) once it is back.

use std::collections::BTreeMap;

use uuid::Uuid;

use super::{amqp, dead_letters, in_process, topology};

/// A message to publish. The payload is JSON; `kind` becomes the AMQP `type` property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    pub exchange: String,
    pub routing_key: String,
    /// Becomes the AMQP `message_id`; consumers deduplicate on it.
    pub message_id: Uuid,
    /// The AMQP `type` property, e.g. `"stock.reserve"`.
    pub kind: String,
    /// JSON body.
    pub payload: Vec<u8>,
    /// String headers, e.g. `traceparent`.
    pub headers: BTreeMap<String, String>,
}

/// A delivered message. It must be settled with exactly one of [`ack`](Self::ack),
/// [`dead_letter`](Self::dead_letter) or [`requeue`](Self::requeue); a message that is merely
/// dropped stays unacknowledged (and counts against the prefetch) until its subscription is
/// closed, then it is redelivered.
#[derive(Debug)]
pub struct IncomingMessage {
    pub routing_key: String,
    pub message_id: Option<String>,
    pub kind: Option<String>,
    pub payload: Vec<u8>,
    /// String-valued headers. Headers of other AMQP types are converted to text when they
    /// are scalars and left out when they are tables or arrays (e.g. RabbitMQ's `x-death`).
    /// Dead-lettered messages carry `x-first-death-queue`, `x-first-death-reason` and
    /// `x-first-death-exchange` on both buses.
    pub headers: BTreeMap<String, String>,
    /// True when the message was delivered before and not acknowledged.
    pub redelivered: bool,
    pub(crate) acker: Acker,
}

/// How a delivery is settled; private to the messaging layer.
#[derive(Debug)]
pub(crate) enum Acker {
    Amqp(lapin::Acker),
    /// One part of a bundle (see `bundle`).
    AmqpBundle(std::sync::Arc<amqp::BundleAcker>),
    InProcess(in_process::InProcessAcker),
}

/// The three ways to settle a delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settle {
    Ack,
    DeadLetter,
    Requeue,
}

impl Settle {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Settle::Ack => "ack",
            Settle::DeadLetter => "dead-letter",
            Settle::Requeue => "requeue",
        }
    }
}

impl IncomingMessage {
    /// A span for handling this message: the child of the span that sent it (its
    /// `traceparent` header), so the handling joins the sender's trace.
    pub fn process_span(&self) -> tracing::Span {
        let span = tracing::info_span!(
            "message.process",
            otel.kind = "consumer",
            messaging.operation.type = "process",
            routing_key = %self.routing_key,
        );
        crate::telemetry::trace_context::adopt_parent(
            &span,
            self.headers.get("traceparent").map(String::as_str),
        );
        span
    }

    /// The message was handled: remove it from the queue.
    pub async fn ack(self) -> Result<(), BusError> {
        self.settle(Settle::Ack).await
    }

    /// The message can never be handled (poison): reject it without requeue, so the queue's
    /// dead-letter exchange moves it to `order.dead-letters`. A message consumed from the
    /// dead-letter queue itself has no dead-letter exchange and is discarded.
    pub async fn dead_letter(self) -> Result<(), BusError> {
        self.settle(Settle::DeadLetter).await
    }

    /// Handling failed for a transient reason: put the message back on its queue, to be
    /// redelivered with `redelivered = true`.
    pub async fn requeue(self) -> Result<(), BusError> {
        self.settle(Settle::Requeue).await
    }

    async fn settle(self, how: Settle) -> Result<(), BusError> {
        match self.acker {
            Acker::Amqp(acker) => amqp::settle(&acker, how).await,
            Acker::AmqpBundle(bundle) => bundle.settle(how).await,
            Acker::InProcess(acker) => acker.settle(how),
        }
    }
}

/// The message bus.
#[derive(Clone)]
pub enum Bus {
    Amqp(amqp::AmqpBus),
    InProcess(in_process::InProcessBus),
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("kind", &self.kind())
            .field("connected", &self.is_connected())
            .finish()
    }
}

impl Bus {
    /// `None` = in-process bus; `Some(url)` = connect to RabbitMQ and declare the topology.
    pub async fn connect(amqp_url: Option<&str>) -> Result<Bus, BusError> {
        match amqp_url {
            None => Ok(Bus::InProcess(in_process::InProcessBus::new())),
            Some(url) => Ok(Bus::Amqp(amqp::AmqpBus::connect(url).await?)),
        }
    }

    /// Like [`connect`](Self::connect), except that a RabbitMQ broker that cannot be reached
    /// yet is no error: the bus starts disconnected and connects in the background (see
    /// [`amqp::AmqpBus::start`]). Meanwhile [`connected_once`](Self::connected_once) is false.
    /// `reply_queue`: this replica's reply queue, declared with the topology (several
    /// replicas; `None` otherwise).
    pub async fn start(
        amqp_url: Option<&str>,
        reply_queue: amqp::ReplyQueue,
    ) -> Result<Bus, BusError> {
        match amqp_url {
            None => Ok(Bus::InProcess(in_process::InProcessBus::new())),
            Some(url) => Ok(Bus::Amqp(amqp::AmqpBus::start(url, reply_queue).await?)),
        }
    }

    /// False only while a bus made by [`start`](Self::start) has never reached its broker:
    /// the topology may not exist yet, and the service does not take new work that needs it.
    pub fn connected_once(&self) -> bool {
        match self {
            Bus::Amqp(bus) => bus.connected_once(),
            Bus::InProcess(_) => true,
        }
    }

    /// Why the broker is not connected (the last connection attempt's error), if known.
    pub fn last_error(&self) -> Option<String> {
        match self {
            Bus::Amqp(bus) if !bus.is_connected() => bus.last_error(),
            _ => None,
        }
    }

    /// Publishes one persistent message and returns once the broker has confirmed it.
    ///
    /// The message carries delivery mode 2, content type `application/json`, `message_id`,
    /// `type` and the headers. Errors: the exchange is not part of the topology, the broker
    /// nacked the message, or — on `mandatory` exchanges (commands, replies) — no queue
    /// matched the routing key. An event nobody subscribes to is not an error. While the
    /// RabbitMQ bus is reconnecting it waits at most about a second and then fails with
    /// [`BusError::NotConnected`]; the confirm wait is bounded too ([`BusError::Timeout`]).
    pub async fn publish(&self, msg: &OutgoingMessage) -> Result<(), BusError> {
        let spec = exchange_spec(&msg.exchange)?;
        match self {
            Bus::Amqp(bus) => bus.publish(spec, msg).await,
            Bus::InProcess(bus) => bus.publish(spec, msg),
        }
    }

    /// Publishes many messages pipelined and waits for all confirms.
    ///
    /// The result is for the batch: on error some messages may have been published and
    /// others not, so the caller should retry the whole batch (consumers deduplicate on
    /// `message_id`). Nothing is sent when an exchange is not part of the topology.
    pub async fn publish_batch(&self, msgs: &[OutgoingMessage]) -> Result<(), BusError> {
        let batch = msgs
            .iter()
            .map(|m| Ok((exchange_spec(&m.exchange)?, m)))
            .collect::<Result<Vec<_>, BusError>>()?;
        match self {
            Bus::Amqp(bus) => bus.publish_batch(&batch).await,
            Bus::InProcess(bus) => {
                for (spec, msg) in batch {
                    bus.publish(spec, msg)?;
                }
                Ok(())
            }
        }
    }

    /// Starts consuming a topology queue with manual acks and the given prefetch (maximum
    /// unacknowledged deliveries; 0 = unlimited).
    ///
    /// RabbitMQ allows competing consumers on a queue; the in-process bus allows one
    /// subscription per queue at a time and answers [`BusError::QueueBusy`] otherwise.
    /// While the RabbitMQ bus is reconnecting this fails with [`BusError::NotConnected`]
    /// after about a second; a subscription always uses the connection current when it is
    /// made, and ends (`next()` answers `None`) when that connection is lost.
    /// The first `limit` messages in `order.dead-letters`, left there, and how many wait.
    pub async fn dead_letters(&self, limit: usize) -> Result<dead_letters::Listing, BusError> {
        match self {
            Bus::Amqp(bus) => bus.dead_letters(limit).await,
            Bus::InProcess(bus) => bus.dead_letters(limit),
        }
    }

    /// Replays (to the queue each was rejected from, through the same consumers) or
    /// discards one dead letter or all of those waiting now. Returns how many.
    pub async fn settle_dead_letters(
        &self,
        which: dead_letters::Which<'_>,
        action: dead_letters::Action,
    ) -> Result<usize, BusError> {
        match self {
            Bus::Amqp(bus) => bus.settle_dead_letters(which, action).await,
            Bus::InProcess(bus) => bus.settle_dead_letters(which, action),
        }
    }

    pub async fn subscribe(
        &self,
        queue: &str,
        consumer_tag: &str,
        prefetch: u16,
    ) -> Result<Subscription, BusError> {
        let spec = topology::queue(queue).ok_or_else(|| BusError::UnknownQueue(queue.into()))?;
        let inner = match self {
            Bus::Amqp(bus) => SubscriptionInner::Amqp(Box::new(
                bus.subscribe(spec, consumer_tag, prefetch).await?,
            )),
            Bus::InProcess(bus) => SubscriptionInner::InProcess(bus.subscribe(spec, prefetch)?),
        };
        Ok(Subscription { inner })
    }

    /// True while the connection (or the in-process bus) is usable — used by /health/ready.
    /// False while the RabbitMQ bus is reconnecting after losing its connection.
    pub fn is_connected(&self) -> bool {
        match self {
            Bus::Amqp(bus) => bus.is_connected(),
            Bus::InProcess(bus) => bus.is_connected(),
        }
    }

    /// Waits until [`is_connected`](Self::is_connected), at most `max`, and tells whether it
    /// is. Returns at once when connected; a closed bus waits the whole `max` (it never
    /// connects again), so a retry loop pausing with this cannot spin.
    pub async fn wait_connected(&self, max: std::time::Duration) -> bool {
        match self {
            Bus::Amqp(bus) => bus.wait_connected(max).await,
            Bus::InProcess(bus) => {
                if !bus.is_connected() {
                    tokio::time::sleep(max).await;
                }
                bus.is_connected()
            }
        }
    }

    /// How many times the bus re-established its broker connection after losing it
    /// (always 0 for the in-process bus).
    pub fn reconnects(&self) -> u64 {
        match self {
            Bus::Amqp(bus) => bus.reconnects(),
            Bus::InProcess(_) => 0,
        }
    }

    /// `"rabbitmq"` or `"in-process"`.
    pub fn kind(&self) -> &'static str {
        match self {
            Bus::Amqp(_) => "rabbitmq",
            Bus::InProcess(_) => "in-process",
        }
    }

    /// Closes the bus: subscriptions end (their unacknowledged messages go back to their
    /// queues on RabbitMQ) and further publishes fail with [`BusError::Closed`].
    pub async fn close(&self) {
        match self {
            Bus::Amqp(bus) => bus.close().await,
            Bus::InProcess(bus) => bus.close(),
        }
    }
}

fn exchange_spec(name: &str) -> Result<&'static topology::ExchangeSpec, BusError> {
    // Publishing to an exchange the broker does not know makes RabbitMQ close the shared
    // publishing channel (404), failing every in-flight publish; refuse it up front instead.
    topology::exchange(name).ok_or_else(|| BusError::UnknownExchange(name.into()))
}

/// A consumer on one queue. Dropping it (or [`close`](Self::close)) cancels the consumer
/// and returns its unacknowledged messages to the queue, marked redelivered.
#[derive(Debug)]
pub struct Subscription {
    inner: SubscriptionInner,
}

#[derive(Debug)]
enum SubscriptionInner {
    // Boxed: a lapin consumer is large and subscriptions are few.
    Amqp(Box<amqp::AmqpSubscription>),
    InProcess(in_process::InProcessSubscription),
}

impl Subscription {
    /// The next delivery; `None` once the consumer is cancelled, its channel or connection
    /// is closed, or the bus is closed.
    pub async fn next(&mut self) -> Option<IncomingMessage> {
        match &mut self.inner {
            SubscriptionInner::Amqp(sub) => sub.next().await,
            SubscriptionInner::InProcess(sub) => sub.next().await,
        }
    }

    /// The queue this subscription consumes.
    pub fn queue(&self) -> &'static str {
        match &self.inner {
            SubscriptionInner::Amqp(sub) => sub.queue(),
            SubscriptionInner::InProcess(sub) => sub.queue(),
        }
    }

    /// Cancels the consumer and waits until that is done (dropping does the same without
    /// waiting).
    pub async fn close(self) {
        match self.inner {
            SubscriptionInner::Amqp(sub) => sub.close().await,
            SubscriptionInner::InProcess(sub) => drop(sub),
        }
    }
}

/// Errors of the bus. lapin errors are boxed to keep `Result<_, BusError>` small.
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// `AMQP_URL` cannot be parsed (the text never includes the credentials).
    #[error("invalid AMQP URL: {0}")]
    InvalidUrl(String),
    #[error("cannot connect to RabbitMQ at {endpoint}: {source}")]
    Connect {
        endpoint: String,
        #[source]
        source: Box<lapin::Error>,
    },
    #[error("cannot declare the messaging topology ({what}): {source}")]
    Declare {
        what: String,
        #[source]
        source: Box<lapin::Error>,
    },
    #[error("cannot open an AMQP channel ({purpose}): {source}")]
    Channel {
        purpose: &'static str,
        #[source]
        source: Box<lapin::Error>,
    },
    #[error(
        "publishing message {message_id} to {exchange} with key {routing_key} failed: {source}"
    )]
    Publish {
        exchange: String,
        routing_key: String,
        message_id: Uuid,
        #[source]
        source: Box<lapin::Error>,
    },
    #[error(
        "the broker refused (nacked) message {message_id} to {exchange} with key {routing_key}"
    )]
    Nacked {
        exchange: String,
        routing_key: String,
        message_id: Uuid,
    },
    #[error("message {message_id} to {exchange} with key {routing_key} matches no queue")]
    Unroutable {
        exchange: String,
        routing_key: String,
        message_id: Uuid,
    },
    #[error("the channel does not have publisher confirms enabled")]
    ConfirmsNotEnabled,
    #[error("exchange {0:?} is not part of the messaging topology")]
    UnknownExchange(String),
    #[error("queue {0:?} is not part of the messaging topology")]
    UnknownQueue(String),
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    #[error("cannot subscribe to {queue}: {source}")]
    Subscribe {
        queue: String,
        #[source]
        source: Box<lapin::Error>,
    },
    #[error("queue {0} already has a subscriber (the in-process bus allows one per queue)")]
    QueueBusy(String),
    #[error("{action} failed: {source}")]
    Settle {
        action: &'static str,
        #[source]
        source: Box<lapin::Error>,
    },
    #[error(
        "{action} is no longer possible: the delivery was already settled or its subscription \
         is closed (the message will be redelivered)"
    )]
    DeliveryStale { action: &'static str },
    /// A dead letter cannot be replayed as asked (it names no queue of origin, or that
    /// queue is gone); it stays where it is.
    #[error("{0}")]
    DeadLetter(String),
    #[error("the bus is closed")]
    Closed,
    /// The broker connection is lost and not yet re-established; the bus keeps reconnecting
    /// in the background, so retrying later is the right reaction.
    #[error("not connected to RabbitMQ at {endpoint} (reconnecting in the background)")]
    NotConnected { endpoint: String },
    #[error("{what} timed out after {after:?}")]
    Timeout {
        what: &'static str,
        after: std::time::Duration,
    },
}

impl BusError {
    /// The broker answered and refused: wrong credentials (`ACCESS_REFUSED`, also for a
    /// user without permissions on the vhost) or an unknown vhost (`NOT_ALLOWED`). Waiting
    /// does not fix these; an unreachable broker is not one of them.
    pub fn is_refusal(&self) -> bool {
        let source = match self {
            BusError::Connect { source, .. }
            | BusError::Declare { source, .. }
            | BusError::Channel { source, .. } => source,
            _ => return false,
        };
        matches!(source.kind(), lapin::ErrorKind::ProtocolError(e) if matches!(e.get_id(), 403 | 530))
    }

    pub(crate) fn settle(how: Settle, source: lapin::Error) -> Self {
        BusError::Settle {
            action: how.as_str(),
            source: Box::new(source),
        }
    }

    pub(crate) fn stale(how: Settle) -> Self {
        BusError::DeliveryStale {
            action: how.as_str(),
        }
    }
}
