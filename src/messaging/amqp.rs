//! RabbitMQ implementation of the bus, on lapin 4.
//!
//! One connection per bus. Publishing goes through a small pool of channels in confirm mode;
//! each publish (or batch) holds one pool channel from its first frame until its last
//! confirm, because lapin hands a `basic.return` to whichever confirm of the channel
//! resolves next — with only one publisher in flight per channel, an unroutable message is
//! always reported to the caller that sent it (returns are also matched by `message_id`,
//! which covers a publish abandoned mid-flight by a cancelled caller). Every subscription
//! gets its own channel with its own prefetch (`basic.qos`), so closing a subscription
//! (closing its channel) makes the broker requeue exactly that subscription's
//! unacknowledged deliveries.
//!
//! Connecting, declaring the topology and opening the publishing channels all happen in
//! [`establish`], so automatic reconnection can later be added by running it again and
//! swapping the [`Link`]; it is not implemented yet (a lost connection makes
//! [`AmqpBus::is_connected`] false, publishes fail and subscriptions end).

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use lapin::message::BasicReturnMessage;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    ExchangeKind, PublisherConfirm,
};
use tokio::sync::{Mutex, MutexGuard};
use tracing::{debug, info, warn};
use uuid::Uuid;

use super::bus::{Acker, BusError, IncomingMessage, OutgoingMessage, Settle};
use super::topology::{self, ExchangeSpec, ExchangeType, QueueSpec};

/// Publishing channels per connection: enough that concurrent publishers rarely queue behind
/// one another's confirm round-trip, few enough to be negligible for the broker.
const PUBLISH_CHANNELS: usize = 4;

/// AMQP `delivery_mode` for messages that survive a broker restart.
const PERSISTENT: u8 = 2;

/// Reply code of a normal channel/connection close.
const REPLY_SUCCESS: u16 = 200;

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
            .finish()
    }
}

struct Inner {
    /// The URL without credentials, for logs and errors.
    endpoint: String,
    link: Link,
    next_publisher: AtomicUsize,
    closed: AtomicBool,
}

/// Everything that lives and dies with one TCP connection.
struct Link {
    connection: Connection,
    publishers: Vec<Mutex<Channel>>,
}

/// Connects, declares the whole topology (idempotent) and opens the publishing channels.
/// Re-running it yields a fresh, fully usable [`Link`] — the hook for reconnection.
async fn establish(url: &str, endpoint: &str) -> Result<Link, BusError> {
    let properties = ConnectionProperties::default().with_connection_name("order-service".into());
    let connection = Connection::connect(url, properties)
        .await
        .map_err(|source| BusError::Connect {
            endpoint: endpoint.to_owned(),
            source: Box::new(source),
        })?;
    info!(endpoint, "connected to RabbitMQ");

    let channel = open_channel(&connection, "topology declaration").await?;
    declare_topology(&channel).await?;
    // The declaring channel has no further use; failing to close it politely is harmless.
    if let Err(error) = channel.close(REPLY_SUCCESS, "OK".into()).await {
        debug!(%error, "closing the topology channel failed");
    }
    info!(
        endpoint,
        exchanges = topology::EXCHANGES.len(),
        queues = topology::QUEUES.len(),
        bindings = topology::BINDINGS.len(),
        "declared the messaging topology"
    );

    let mut publishers = Vec::with_capacity(PUBLISH_CHANNELS);
    for _ in 0..PUBLISH_CHANNELS {
        publishers.push(Mutex::new(open_publisher(&connection).await?));
    }
    Ok(Link {
        connection,
        publishers,
    })
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

async fn declare_topology(channel: &Channel) -> Result<(), BusError> {
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
    for queue in topology::QUEUES {
        let mut arguments = FieldTable::default();
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
    for binding in topology::BINDINGS {
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

impl AmqpBus {
    /// Connects to `url` and declares the topology.
    pub async fn connect(url: &str) -> Result<Self, BusError> {
        let endpoint = redact(url);
        let link = establish(url, &endpoint).await?;
        Ok(Self {
            inner: Arc::new(Inner {
                endpoint,
                link,
                next_publisher: AtomicUsize::new(0),
                closed: AtomicBool::new(false),
            }),
        })
    }

    /// True while the connection is open and [`close`](Self::close) was not called.
    pub fn is_connected(&self) -> bool {
        !self.inner.closed.load(Ordering::Acquire)
            && self.inner.link.connection.status().connected()
    }

    /// Closes the connection, which ends every subscription.
    pub async fn close(&self) {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let connection = &self.inner.link.connection;
        if connection.status().connected() {
            match connection.close(REPLY_SUCCESS, "OK".into()).await {
                Ok(()) => info!(endpoint = %self.inner.endpoint, "closed the RabbitMQ connection"),
                Err(error) => warn!(%error, "closing the RabbitMQ connection failed"),
            }
        }
    }

    /// Locks one publishing channel of the pool, reopening it if the broker closed it
    /// (e.g. after a channel-level error) while the connection is still up.
    async fn publisher(&self) -> Result<MutexGuard<'_, Channel>, BusError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let publishers = &self.inner.link.publishers;
        let index = self.inner.next_publisher.fetch_add(1, Ordering::Relaxed) % publishers.len();
        let mut channel = publishers[index].lock().await;
        if !channel.status().connected() && self.inner.link.connection.status().connected() {
            warn!(
                index,
                "a publishing channel was closed by the broker; reopening it"
            );
            *channel = open_publisher(&self.inner.link.connection).await?;
        }
        Ok(channel)
    }

    pub(crate) async fn publish(
        &self,
        spec: &ExchangeSpec,
        msg: &OutgoingMessage,
    ) -> Result<(), BusError> {
        let channel = self.publisher().await?;
        let confirm = send(&channel, spec, msg).await?;
        // Still holding the channel: see the module docs on returned messages.
        let outcome = confirm.await;
        drop(channel);
        check_confirm(msg, outcome, |id| id == msg.message_id)
    }

    pub(crate) async fn publish_batch(
        &self,
        batch: &[(&'static ExchangeSpec, &OutgoingMessage)],
    ) -> Result<(), BusError> {
        if batch.is_empty() {
            return Ok(());
        }
        let ours: HashSet<Uuid> = batch.iter().map(|(_, msg)| msg.message_id).collect();
        let channel = self.publisher().await?;
        let mut pending: Vec<(&OutgoingMessage, PublisherConfirm)> =
            Vec::with_capacity(batch.len());
        let mut first_error = None;
        for (spec, msg) in batch {
            match send(&channel, spec, msg).await {
                Ok(confirm) => pending.push((msg, confirm)),
                Err(error) => {
                    first_error = Some(error);
                    break;
                }
            }
        }
        // Await every confirm that was started, even after an error, so that none is left
        // behind on the channel to be mistaken for a later publisher's.
        for (msg, confirm) in pending {
            let outcome = check_confirm(msg, confirm.await, |id| ours.contains(&id));
            if let Err(error) = outcome {
                first_error.get_or_insert(error);
            }
        }
        drop(channel);
        first_error.map_or(Ok(()), Err)
    }

    pub(crate) async fn subscribe(
        &self,
        queue: &'static QueueSpec,
        consumer_tag: &str,
        prefetch: u16,
    ) -> Result<AmqpSubscription, BusError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let tag = ShortString::try_new(consumer_tag)
            .map_err(|e| BusError::InvalidMessage(format!("consumer tag {consumer_tag:?}: {e}")))?;
        let subscribe_error = |source| BusError::Subscribe {
            queue: queue.name.to_owned(),
            source: Box::new(source),
        };
        let channel = open_channel(&self.inner.link.connection, "subscription").await?;
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
        info!(queue = queue.name, consumer_tag, prefetch, "subscribed");
        Ok(AmqpSubscription {
            queue: queue.name,
            channel,
            consumer,
            finished: false,
        })
    }
}

/// Sends one message on a confirm-mode channel; the returned future resolves on its confirm.
async fn send(
    channel: &Channel,
    spec: &ExchangeSpec,
    msg: &OutgoingMessage,
) -> Result<PublisherConfirm, BusError> {
    let properties = properties(msg)?;
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

fn properties(msg: &OutgoingMessage) -> Result<BasicProperties, BusError> {
    let mut headers = FieldTable::default();
    for (name, value) in &msg.headers {
        headers.insert(
            short(name, "header name")?,
            AMQPValue::LongString(LongString::from(value.as_str())),
        );
    }
    let mut properties = BasicProperties::default()
        .with_delivery_mode(PERSISTENT)
        .with_content_type("application/json".into())
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

/// Settles an AMQP delivery.
pub(crate) async fn settle(acker: &lapin::Acker, how: Settle) -> Result<(), BusError> {
    let outcome = match how {
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
    };
    match outcome {
        Ok(true) => Ok(()),
        // lapin answers `false` when the acker was used or its channel is gone; in the latter
        // case the broker has already requeued the message.
        Ok(false) => Err(BusError::stale(how)),
        Err(source) => Err(BusError::settle(how, source)),
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
    finished: bool,
}

impl AmqpSubscription {
    pub(crate) async fn next(&mut self) -> Option<IncomingMessage> {
        if self.finished {
            return None;
        }
        match self.consumer.next().await {
            Some(Ok(delivery)) => Some(incoming(delivery)),
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
        if self.channel.status().connected()
            && let Err(error) = self.channel.close(REPLY_SUCCESS, "OK".into()).await
        {
            debug!(queue = self.queue, %error, "closing a subscription channel failed");
        }
    }
}

fn incoming(delivery: lapin::message::Delivery) -> IncomingMessage {
    let properties = &delivery.properties;
    IncomingMessage {
        routing_key: delivery.routing_key.as_str().to_owned(),
        message_id: properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str().to_owned()),
        kind: properties.kind().as_ref().map(|s| s.as_str().to_owned()),
        headers: properties
            .headers()
            .as_ref()
            .map(headers_from_table)
            .unwrap_or_default(),
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
