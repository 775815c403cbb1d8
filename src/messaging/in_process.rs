//! In-process implementation of the bus, for running the service and its tests without
//! RabbitMQ.
//!
//! It routes with the same [`topology`] data as the broker (topic matching, fanout) and
//! mirrors RabbitMQ's delivery semantics closely enough that code written against one
//! behaves the same on the other:
//! - each queue holds its messages in memory until they are consumed, so messages published
//!   before anyone subscribes are kept;
//! - deliveries are unacknowledged until settled and count against the prefetch;
//!   [`requeue`](super::IncomingMessage::requeue) puts the message back at the head of its
//!   queue marked redelivered, and dropping a subscription does the same for everything it
//!   left unacknowledged;
//! - [`dead_letter`](super::IncomingMessage::dead_letter) routes the message through the
//!   queue's dead-letter exchange (to `order.dead-letters`) with RabbitMQ's
//!   `x-first-death-*` headers; a dead letter rejected from `order.dead-letters` is dropped;
//! - publishing to a `mandatory` exchange (commands, replies) with no matching queue is an
//!   error, as the RabbitMQ bus reports returned messages; an unmatched event is dropped.
//!
//! Differences: a queue has at most one subscriber at a time (a second `subscribe` fails
//! with [`BusError::QueueBusy`] until the first subscription is dropped) because nothing in
//! the service needs competing consumers in-process; the bus is one in-memory value shared
//! by its clones, so everything that should talk must use clones of the same bus; and
//! nothing survives the process.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use super::bus::{Acker, BusError, IncomingMessage, OutgoingMessage, Settle};
use super::dead_letters::{self, Action, DeadLetter, Listing, Which};
use super::topology::{self, ExchangeSpec, QueueSpec};

/// An in-memory bus. Cheap to clone; clones share the queues.
#[derive(Clone)]
pub struct InProcessBus {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InProcessBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBus")
            .field("closed", &self.inner.closed.load(Ordering::Acquire))
            .finish()
    }
}

impl Default for InProcessBus {
    fn default() -> Self {
        Self::new()
    }
}

struct Inner {
    queues: HashMap<&'static str, Arc<Queue>>,
    closed: AtomicBool,
    /// Source of consumer ids and delivery tags; unique per bus.
    next_id: AtomicU64,
}

struct Queue {
    spec: &'static QueueSpec,
    state: Mutex<QueueState>,
    /// Woken whenever the subscriber may be able to make progress: a message arrived or came
    /// back, a prefetch slot freed up, or the bus closed.
    changed: Notify,
}

#[derive(Default)]
struct QueueState {
    ready: VecDeque<Envelope>,
    consumer: Option<ConsumerState>,
}

struct ConsumerState {
    id: u64,
    prefetch: u16,
    /// Delivered but not yet settled, by delivery tag (tags grow, so iteration order is
    /// delivery order — used to requeue in order).
    unacked: BTreeMap<u64, Envelope>,
}

impl ConsumerState {
    fn has_capacity(&self) -> bool {
        self.prefetch == 0 || self.unacked.len() < usize::from(self.prefetch)
    }
}

#[derive(Clone)]
struct Envelope {
    exchange: String,
    routing_key: String,
    message_id: Option<String>,
    kind: Option<String>,
    payload: Vec<u8>,
    headers: BTreeMap<String, String>,
    redelivered: bool,
}

impl Envelope {
    fn dead_letter(&self) -> DeadLetter {
        DeadLetter::new(
            self.routing_key.clone(),
            self.message_id.clone(),
            self.kind.clone(),
            self.headers.clone(),
            &self.payload,
        )
    }
}

impl Queue {
    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // Nothing panics while holding this lock; if something ever does, the queue state
        // is still consistent (every mutation is a single push/pop/insert/remove).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn push_back(&self, envelope: Envelope) {
        self.lock().ready.push_back(envelope);
        self.changed.notify_waiters();
    }
}

impl InProcessBus {
    /// A bus with every queue of the topology, empty.
    pub fn new() -> Self {
        let queues = topology::QUEUES
            .iter()
            .map(|spec| {
                let queue = Queue {
                    spec,
                    state: Mutex::new(QueueState::default()),
                    changed: Notify::new(),
                };
                (spec.name, Arc::new(queue))
            })
            .collect();
        Self {
            inner: Arc::new(Inner {
                queues,
                closed: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    pub fn is_connected(&self) -> bool {
        !self.inner.closed.load(Ordering::Acquire)
    }

    /// Ends every subscription; further publishes and subscribes fail with
    /// [`BusError::Closed`].
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        for queue in self.inner.queues.values() {
            queue.changed.notify_waiters();
        }
    }

    pub(crate) fn publish(
        &self,
        spec: &ExchangeSpec,
        msg: &OutgoingMessage,
    ) -> Result<(), BusError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let targets = topology::route(spec.name, &msg.routing_key);
        if targets.is_empty() {
            return if spec.mandatory {
                Err(BusError::Unroutable {
                    exchange: msg.exchange.clone(),
                    routing_key: msg.routing_key.clone(),
                    message_id: msg.message_id,
                })
            } else {
                Ok(())
            };
        }
        let envelope = Envelope {
            exchange: msg.exchange.clone(),
            routing_key: msg.routing_key.clone(),
            message_id: Some(msg.message_id.to_string()),
            kind: Some(msg.kind.clone()),
            payload: msg.payload.clone(),
            headers: msg.headers.clone(),
            redelivered: false,
        };
        self.inner.deliver(&targets, envelope);
        Ok(())
    }

    /// The first `limit` messages waiting in the dead-letter queue, left there.
    pub(crate) fn dead_letters(&self, limit: usize) -> Result<Listing, BusError> {
        let queue = self.inner.queue(topology::DEAD_LETTER_QUEUE)?;
        let state = queue.lock();
        Ok(Listing {
            dead_letters: state
                .ready
                .iter()
                .take(limit.min(dead_letters::SCAN_LIMIT))
                .map(Envelope::dead_letter)
                .collect(),
            total: state.ready.len() as u64,
        })
    }

    /// Replays (to the queue each was rejected from) or discards the chosen dead letters
    /// waiting now. Returns how many.
    pub(crate) fn settle_dead_letters(
        &self,
        which: Which<'_>,
        action: Action,
    ) -> Result<usize, BusError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let queue = self.inner.queue(topology::DEAD_LETTER_QUEUE)?;
        let mut chosen = Vec::new();
        {
            let mut state = queue.lock();
            // Which ones, and where each goes, before anything moves: a replay that cannot
            // be done leaves every dead letter where it was.
            let mut picked = Vec::new();
            for (index, envelope) in state.ready.iter().enumerate() {
                if which.done(picked.len()) {
                    break;
                }
                let letter = envelope.dead_letter();
                if !which.matches(&letter.id) {
                    continue;
                }
                let target = match action {
                    Action::Discard => None,
                    Action::Replay => Some(
                        letter
                            .queue
                            .as_deref()
                            .and_then(|origin| self.inner.queue(origin).ok())
                            .ok_or_else(|| {
                                BusError::DeadLetter(format!(
                                    "dead letter {} cannot be replayed: it names no queue of \
                                     origin that exists ({:?})",
                                    letter.id, letter.queue
                                ))
                            })?,
                    ),
                };
                picked.push((index, target));
            }
            for (index, target) in picked.into_iter().rev() {
                if let Some(envelope) = state.ready.remove(index) {
                    chosen.push((envelope, target));
                }
            }
            chosen.reverse();
        }
        let settled = chosen.len();
        for (mut envelope, target) in chosen {
            if let Some(target) = target {
                envelope.headers.retain(|name, _| {
                    !(name.starts_with("x-first-death-") || name.starts_with("x-last-death-"))
                });
                envelope.redelivered = false;
                target.push_back(envelope);
            }
        }
        Ok(settled)
    }

    pub(crate) fn subscribe(
        &self,
        spec: &'static QueueSpec,
        prefetch: u16,
    ) -> Result<InProcessSubscription, BusError> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(BusError::Closed);
        }
        let queue = self.inner.queue(spec.name)?;
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut state = queue.lock();
            if state.consumer.is_some() {
                return Err(BusError::QueueBusy(spec.name.to_owned()));
            }
            state.consumer = Some(ConsumerState {
                id,
                prefetch,
                unacked: BTreeMap::new(),
            });
        }
        Ok(InProcessSubscription {
            bus: Arc::clone(&self.inner),
            queue,
            consumer_id: id,
        })
    }
}

impl Inner {
    fn queue(&self, name: &str) -> Result<Arc<Queue>, BusError> {
        self.queues
            .get(name)
            .cloned()
            .ok_or_else(|| BusError::UnknownQueue(name.to_owned()))
    }

    /// Appends a copy of `envelope` to each target queue.
    fn deliver(&self, targets: &[&'static str], envelope: Envelope) {
        for name in targets {
            // Every routed queue comes from the topology, and so does every entry of
            // `queues`; a miss would be a topology bug, not a runtime condition.
            if let Some(queue) = self.queues.get(name) {
                queue.push_back(envelope.clone());
            }
        }
    }

    /// What RabbitMQ does with a message rejected without requeue: route it through the
    /// queue's dead-letter exchange with its original routing key, or drop it.
    fn dead_letter(&self, from: &QueueSpec, mut envelope: Envelope) {
        let Some(dlx) = from.dead_letter_exchange else {
            tracing::debug!(
                queue = from.name,
                "rejected message has no dead-letter exchange; dropped"
            );
            return;
        };
        // RabbitMQ records where a message died first and never overwrites it.
        if !envelope.headers.contains_key("x-first-death-queue") {
            let exchange = std::mem::take(&mut envelope.exchange);
            envelope
                .headers
                .insert("x-first-death-exchange".into(), exchange);
            envelope
                .headers
                .insert("x-first-death-queue".into(), from.name.into());
            envelope
                .headers
                .insert("x-first-death-reason".into(), "rejected".into());
        }
        envelope.exchange = dlx.to_owned();
        envelope.redelivered = false;
        let targets = topology::route(dlx, &envelope.routing_key);
        self.deliver(&targets, envelope);
    }
}

/// A subscription to one queue. Dropping it returns its unacknowledged messages to the head
/// of the queue, marked redelivered, and frees the queue for another subscriber.
pub struct InProcessSubscription {
    bus: Arc<Inner>,
    queue: Arc<Queue>,
    consumer_id: u64,
}

impl std::fmt::Debug for InProcessSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessSubscription")
            .field("queue", &self.queue.spec.name)
            .field("consumer_id", &self.consumer_id)
            .finish()
    }
}

enum Poll {
    Message(IncomingMessage),
    Wait,
    Closed,
}

impl InProcessSubscription {
    pub(crate) fn queue(&self) -> &'static str {
        self.queue.spec.name
    }

    pub(crate) async fn next(&mut self) -> Option<IncomingMessage> {
        loop {
            // Register interest before looking, so a notification between the look and the
            // wait is not lost. Cancel-safe: all state lives in the queue.
            let changed = self.queue.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            match self.try_next() {
                Poll::Message(message) => return Some(message),
                Poll::Closed => return None,
                Poll::Wait => changed.await,
            }
        }
    }

    fn try_next(&self) -> Poll {
        if self.bus.closed.load(Ordering::Acquire) {
            return Poll::Closed;
        }
        let mut state = self.queue.lock();
        let QueueState { ready, consumer } = &mut *state;
        let Some(consumer) = consumer.as_mut().filter(|c| c.id == self.consumer_id) else {
            return Poll::Closed;
        };
        if !consumer.has_capacity() {
            return Poll::Wait;
        }
        let Some(envelope) = ready.pop_front() else {
            return Poll::Wait;
        };
        let tag = self.bus.next_id.fetch_add(1, Ordering::Relaxed);
        consumer.unacked.insert(tag, envelope.clone());
        Poll::Message(IncomingMessage {
            routing_key: envelope.routing_key,
            message_id: envelope.message_id,
            kind: envelope.kind,
            payload: envelope.payload,
            headers: envelope.headers,
            redelivered: envelope.redelivered,
            acker: Acker::InProcess(InProcessAcker {
                bus: Arc::clone(&self.bus),
                queue: Arc::clone(&self.queue),
                consumer_id: self.consumer_id,
                tag,
            }),
        })
    }
}

impl Drop for InProcessSubscription {
    fn drop(&mut self) {
        {
            let mut state = self.queue.lock();
            if state
                .consumer
                .as_ref()
                .is_some_and(|c| c.id == self.consumer_id)
                && let Some(consumer) = state.consumer.take()
            {
                // Back to the head in delivery order, like RabbitMQ on channel close.
                for (_, mut envelope) in consumer.unacked.into_iter().rev() {
                    envelope.redelivered = true;
                    state.ready.push_front(envelope);
                }
            }
        }
        self.queue.changed.notify_waiters();
    }
}

/// Settles one in-process delivery.
pub(crate) struct InProcessAcker {
    bus: Arc<Inner>,
    queue: Arc<Queue>,
    consumer_id: u64,
    tag: u64,
}

impl std::fmt::Debug for InProcessAcker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessAcker")
            .field("queue", &self.queue.spec.name)
            .field("tag", &self.tag)
            .finish()
    }
}

impl InProcessAcker {
    pub(crate) fn settle(self, how: Settle) -> Result<(), BusError> {
        let envelope = {
            let mut state = self.queue.lock();
            let QueueState { ready, consumer } = &mut *state;
            // Once the subscription is gone its deliveries were already requeued, exactly as
            // a RabbitMQ delivery tag dies with its channel.
            let Some(mut envelope) = consumer
                .as_mut()
                .filter(|c| c.id == self.consumer_id)
                .and_then(|c| c.unacked.remove(&self.tag))
            else {
                return Err(BusError::stale(how));
            };
            match how {
                Settle::Ack => None,
                Settle::Requeue => {
                    envelope.redelivered = true;
                    ready.push_front(envelope);
                    None
                }
                Settle::DeadLetter => Some(envelope),
            }
        };
        // Dead-lettering touches other queues; do it without holding this queue's lock.
        if let Some(envelope) = envelope {
            self.bus.dead_letter(self.queue.spec, envelope);
        }
        // A prefetch slot is free (and for requeue, a message is ready).
        self.queue.changed.notify_waiters();
        Ok(())
    }
}
