//! Consumer loop shared by the orchestrator and the participants: subscribes to a queue,
//! runs the handler for each delivery (concurrently, bounded), and acks only after the
//! handler reports its effect durable. Undecodable or unknown messages are dead-lettered
//! with a log line instead of blocking the queue; transient failures are requeued.

use crate::batching::take_ready;
use crate::messaging::{Bus, BusError, IncomingMessage};
use crate::pause::{Backoff, sleep_or_shutdown};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// What to do with a delivery once the handler is done.
#[derive(Debug, PartialEq, Eq)]
pub enum Disposition {
    /// Effect durable (or a recognised duplicate): remove from the queue.
    Ack,
    /// Poison (cannot be decoded, refers to nothing): park in the dead-letter queue.
    DeadLetter(String),
    /// Transient failure (database down): put back and try again later.
    Retry(String),
}

/// Pause before a failed delivery goes back to the queue, so a broken dependency is not
/// hammered in a tight redelivery loop.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Pauses between attempts to subscribe, reset by a delivery (or a subscription that lasted).
const SUBSCRIBE_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

/// Consumes `queue` until `shutdown`, re-subscribing with backoff if the subscription ends:
/// each delivery is handled on its own, `concurrency` at a time (also the AMQP prefetch).
pub async fn run<F, Fut>(
    bus: Bus,
    queue: &'static str,
    concurrency: u16,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(Arc<IncomingMessage>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Disposition> + Send + 'static,
{
    let one_at_a_time = Batching {
        prefetch: concurrency,
        max_batch: 1,
        in_flight: usize::from(concurrency),
    };
    run_batched(bus, queue, one_at_a_time, shutdown, move |batch| {
        let handler = handler.clone();
        async move {
            let mut dispositions = Vec::with_capacity(batch.len());
            for message in batch {
                dispositions.push(handler(message).await);
            }
            dispositions
        }
    })
    .await
}

/// Settles one delivery as its handler decided.
async fn settle(queue: &'static str, message: Arc<IncomingMessage>, disposition: Disposition) {
    let Ok(message) = Arc::try_unwrap(message) else {
        tracing::error!(queue, "handler kept a reference to the delivery; not acked");
        return;
    };
    let routing_key = message.routing_key.clone();
    let settled = match disposition {
        Disposition::Ack => message.ack().await,
        Disposition::DeadLetter(reason) => {
            tracing::warn!(queue, %routing_key, %reason, "dead-lettering message");
            metrics::counter!("messages_dead_lettered_total", "queue" => queue).increment(1);
            message.dead_letter().await
        }
        Disposition::Retry(reason) => {
            tracing::warn!(queue, %routing_key, %reason, "handler failed; requeueing");
            message.requeue().await
        }
    };
    if let Err(error) = settled {
        // E.g. its channel died with the connection: the broker redelivers it (to the
        // re-subscribed consumer) and the handlers dedupe.
        tracing::warn!(queue, %error, "could not settle delivery");
    }
}

/// How a batched consumer groups deliveries.
#[derive(Debug, Clone, Copy)]
pub struct Batching {
    /// Unacknowledged deliveries the broker may push (AMQP prefetch).
    pub prefetch: u16,
    /// Most deliveries handed to the handler at once.
    pub max_batch: usize,
    /// Batches being handled at the same time.
    pub in_flight: usize,
}

/// Like [`run`], but hands the handler every delivery that is already waiting (up to
/// `max_batch`) at once, so it can apply them in one transaction: one commit, one lock
/// hold of a hot row, for many messages. Nothing waits to fill a batch — under light
/// load batches hold one message — so batching adds no latency. The handler returns one
/// disposition per message, in order.
pub async fn run_batched<F, Fut>(
    bus: Bus,
    queue: &'static str,
    batching: Batching,
    shutdown: CancellationToken,
    handler: F,
) where
    F: Fn(Vec<Arc<IncomingMessage>>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Vec<Disposition>> + Send + 'static,
{
    use futures::FutureExt;
    let limit = Arc::new(Semaphore::new(batching.in_flight.max(1)));
    let max_batch = batching.max_batch.max(1);
    let mut backoff = SUBSCRIBE_BACKOFF;
    while !shutdown.is_cancelled() {
        let consumer_tag = format!("{queue}-{}", uuid::Uuid::new_v4().simple());
        let mut subscription = match bus.subscribe(queue, &consumer_tag, batching.prefetch).await {
            Ok(s) => s,
            Err(error) => {
                let pause = backoff.next_pause();
                tracing::warn!(queue, %error, backoff = ?pause, "cannot subscribe; retrying");
                let waited = async {
                    if matches!(error, BusError::NotConnected { .. }) {
                        bus.wait_connected(pause).await;
                    } else {
                        tokio::time::sleep(pause).await;
                    }
                };
                if shutdown.run_until_cancelled(waited).await.is_none() {
                    return;
                }
                continue;
            }
        };
        let subscribed_at = tokio::time::Instant::now();
        loop {
            // Take a batch slot first: while every slot is busy, deliveries keep arriving
            // and the next batch gets all of them.
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let first = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = subscription.next() => m,
            };
            let Some(first) = first else {
                tracing::warn!(
                    queue,
                    backoff = ?backoff.current(),
                    "subscription ended; re-subscribing"
                );
                break;
            };
            backoff.reset();
            let mut ended = false;
            let batch = take_ready(Arc::new(first), max_batch, || {
                match subscription.next().now_or_never() {
                    Some(Some(m)) => Some(Arc::new(m)),
                    Some(None) => {
                        ended = true;
                        None
                    }
                    None => None,
                }
            });
            metrics::histogram!("consumer_batch_size", "queue" => queue).record(batch.len() as f64);
            let handler = handler.clone();
            tokio::spawn(async move {
                let dispositions = handler(batch.clone()).await;
                let _permit = permit;
                if dispositions
                    .iter()
                    .any(|d| matches!(d, Disposition::Retry(_)))
                {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                // Settled together, not one after another: each settlement is a round trip
                // through lapin's internal task and I/O thread, and queued together they
                // share its wake-ups.
                let mut dispositions = dispositions.into_iter();
                let settling = batch.into_iter().map(|message| {
                    let disposition = dispositions.next().unwrap_or_else(|| {
                        Disposition::Retry("handler gave no disposition".into())
                    });
                    settle(queue, message, disposition)
                });
                futures::future::join_all(settling).await;
            });
            if ended {
                tracing::warn!(
                    queue,
                    backoff = ?backoff.current(),
                    "subscription ended; re-subscribing"
                );
                break;
            }
        }
        if subscribed_at.elapsed() >= Duration::from_secs(30) {
            backoff.reset();
        }
        if !sleep_or_shutdown(&shutdown, backoff.next_pause()).await {
            return;
        }
    }
}
