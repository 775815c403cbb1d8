//! The knobs that trade latency for throughput (batch sizes, concurrency, lingers), each
//! with what it bounds and why its default. They are compiled in, not configuration: each
//! belongs to a batching design and is judged by interleaved A/B runs on one host
//! (BENCHMARKS.md, "What limits throughput"). The deployment-dependent ones are options:
//! `RELAY_LINGER_MS`, `DB_MAX_CONNECTIONS`, `MAX_ORDERS_IN_FLIGHT`.

use crate::messaging::consumer::Batching;
use std::time::Duration;

/// Participant replies the orchestrator applies at once (also their AMQP prefetch): each
/// waits for its order's commit, so many in flight keep the group commit's batches full.
pub const REPLY_CONCURRENCY: u16 = 64;

/// Group-commit writer tasks of the orders store (`persistence::group_commit`). One: while
/// its batch commits, the next gathers every write that arrives meanwhile.
pub const ORDER_WRITERS: usize = 1;

/// Most order writes in one group-commit transaction: bounds a commit's size and the wait
/// of its last write.
pub const ORDER_WRITE_BATCH: usize = 256;

/// Order writes queued before the actors wait (backpressure): above `MAX_ORDERS_IN_FLIGHT`'s
/// default, so under admission control an actor rarely waits to hand over its write.
pub const ORDER_WRITE_QUEUE: usize = 4096;

/// Most idempotency-key claims inserted by one statement (concurrent creates coalesced).
pub const CLAIMS_PER_INSERT: usize = 256;

/// Participant queues: every delivery already waiting (up to `max_batch`) is applied in one
/// transaction, so one commit and one hold of a hot stock row serve many orders. One batch
/// at a time: while it commits the next gathers; two would halve the batches and queue both
/// for the same stock row.
pub const PARTICIPANT_BATCHING: Batching = Batching {
    prefetch: 256,
    max_batch: 128,
    in_flight: 1,
};

/// Most stock checks of concurrent `POST /api/orders` answered by one query.
pub const STOCK_READS_PER_QUERY: usize = 256;

/// Stock-check queries at once. Two: a check arriving during a read starts at once instead
/// of waiting for it; under load both are busy and checks gather into batches.
pub const STOCK_READS_IN_FLIGHT: usize = 2;

/// Outbox rows per publish round at most: bounds a round's memory and its confirm wait.
pub const RELAY_BATCH: usize = 256;

/// On RabbitMQ the lifecycle events' relay gathers this long after a hand-over: events are
/// on no saga's path (the actor answers its waiters itself, participants get what they need
/// from the saga lane), so nobody waits, and fewer, bigger rounds save a confirm round trip
/// each. Not on the in-process bus: no round trip to save, and its bursts only make
/// Inventory's batches lumpier.
pub const EVENTS_LINGER: Duration = Duration::from_millis(20);

/// Publishing channels per AMQP connection: enough that concurrent publishers rarely queue
/// behind one another's confirm round trip, few enough to be negligible for the broker.
pub const PUBLISH_CHANNELS: usize = 4;
