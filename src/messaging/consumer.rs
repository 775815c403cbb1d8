//! Consumer loop shared by the orchestrator and the participants: subscribes to a queue,
//! runs the handler for each delivery (concurrently, bounded), and acks only after the
//! handler reports its effect durable. Undecodable or unknown messages are dead-lettered
//! with a log line instead of blocking the queue; transient failures are requeued.

use crate::messaging::{Bus, BusError, IncomingMessage};
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

/// Consumes `queue` until `shutdown`, re-subscribing with backoff if the subscription ends.
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
    let limit = Arc::new(Semaphore::new(usize::from(concurrency.max(1))));
    let mut backoff = Duration::from_millis(100);
    while !shutdown.is_cancelled() {
        let consumer_tag = format!("{queue}-{}", uuid::Uuid::new_v4().simple());
        let mut subscription = match bus.subscribe(queue, &consumer_tag, concurrency).await {
            Ok(s) => s,
            Err(error) => {
                tracing::warn!(queue, %error, ?backoff, "cannot subscribe; retrying");
                // While the broker is away, retry as soon as the bus has reconnected.
                let pause = async {
                    if matches!(error, BusError::NotConnected { .. }) {
                        bus.wait_connected(backoff).await;
                    } else {
                        tokio::time::sleep(backoff).await;
                    }
                };
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = pause => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let subscribed_at = tokio::time::Instant::now();
        loop {
            let message = tokio::select! {
                _ = shutdown.cancelled() => return,
                m = subscription.next() => m,
            };
            if message.is_some() {
                // Reset only once the subscription delivers, so one that keeps ending at once
                // (the broker going away) is retried with growing pauses, not in a busy loop.
                backoff = Duration::from_millis(100);
            }
            let Some(message) = message else {
                tracing::warn!(queue, ?backoff, "subscription ended; re-subscribing");
                break;
            };
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                let message = Arc::new(message);
                let disposition = handler(message.clone()).await;
                let _permit = permit;
                let Ok(message) = Arc::try_unwrap(message) else {
                    tracing::error!(queue, "handler kept a reference to the delivery; not acked");
                    return;
                };
                let routing_key = message.routing_key.clone();
                let settled = match disposition {
                    Disposition::Ack => message.ack().await,
                    Disposition::DeadLetter(reason) => {
                        tracing::warn!(queue, %routing_key, %reason, "dead-lettering message");
                        metrics::counter!("messages_dead_lettered_total", "queue" => queue)
                            .increment(1);
                        message.dead_letter().await
                    }
                    Disposition::Retry(reason) => {
                        tracing::warn!(queue, %routing_key, %reason, "handler failed; requeueing");
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        message.requeue().await
                    }
                };
                if let Err(error) = settled {
                    // E.g. its channel died with the connection: the broker redelivers it
                    // (to the re-subscribed consumer) and the handlers dedupe.
                    tracing::warn!(queue, %error, "could not settle delivery");
                }
            });
        }
        if subscribed_at.elapsed() >= Duration::from_secs(30) {
            backoff = Duration::from_millis(100);
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}
