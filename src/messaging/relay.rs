//! Outbox relay: publishes the rows of one store's outbox to the bus, in insertion order,
//! with publisher confirms, and deletes them only once the broker has confirmed them.
//! A crash after publishing and before deleting sends the batch again: delivery is
//! at-least-once and every consumer dedupes.

use crate::messaging::Bus;
use crate::persistence::outbox;
use sea_orm::DatabaseConnection;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Largest batch published and confirmed at once.
const BATCH: u64 = 256;
/// Poll interval when nobody wakes the relay (rows left by a crash, lost wake-ups).
const IDLE_POLL: Duration = Duration::from_millis(500);

#[derive(Clone)]
pub struct OutboxRelay {
    /// Name of the store, for logs.
    pub name: &'static str,
    db: DatabaseConnection,
    bus: Bus,
    /// Woken after every commit that wrote outbox rows, so messages leave at once.
    wake: Arc<Notify>,
}

/// What one pass of the relay did.
#[derive(Debug, PartialEq, Eq)]
pub enum RelayOutcome {
    Empty,
    Published(usize),
}

impl OutboxRelay {
    pub fn new(name: &'static str, db: DatabaseConnection, bus: Bus, wake: Arc<Notify>) -> Self {
        OutboxRelay {
            name,
            db,
            bus,
            wake,
        }
    }

    /// Publishes one batch. Tests call this directly to drain the outbox without sleeping.
    pub async fn try_execute(&self) -> anyhow::Result<RelayOutcome> {
        let rows = outbox::fetch_batch(&self.db, BATCH).await?;
        if rows.is_empty() {
            return Ok(RelayOutcome::Empty);
        }
        let messages: Vec<_> = rows.iter().map(outbox::to_outgoing).collect();
        let started = std::time::Instant::now();
        self.bus.publish_batch(&messages).await?;
        metrics::histogram!("outbox_publish_duration_seconds", "store" => self.name)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("outbox_messages_published_total", "store" => self.name)
            .increment(messages.len() as u64);
        let count = rows.len();
        outbox::delete_sent(&self.db, rows.into_iter().map(|r| r.id).collect()).await?;
        Ok(RelayOutcome::Published(count))
    }

    /// Shutdown: publishes what was committed since the last pass, while the bus is there.
    async fn flush(&self) {
        for _ in 0..16 {
            match self.try_execute().await {
                Ok(RelayOutcome::Published(_)) => continue,
                Ok(RelayOutcome::Empty) => return,
                Err(error) => {
                    tracing::info!(relay = self.name, %error, "outbox left for the next start");
                    return;
                }
            }
        }
    }

    /// Runs until cancelled; a failed pass is retried with capped exponential backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        // While the broker is away every pass fails; warn about it at most once a second.
        let mut last_warning: Option<tokio::time::Instant> = None;
        let mut suppressed = 0u32;
        loop {
            match self.try_execute().await {
                Ok(RelayOutcome::Published(_)) => {
                    backoff = Duration::from_millis(100);
                    continue;
                }
                Ok(RelayOutcome::Empty) => {
                    backoff = Duration::from_millis(100);
                    tokio::select! {
                        _ = shutdown.cancelled() => return self.flush().await,
                        _ = self.wake.notified() => {}
                        _ = tokio::time::sleep(IDLE_POLL) => {}
                    }
                }
                Err(error) => {
                    if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(relay = self.name, %error, ?backoff, suppressed, "outbox relay pass failed; retrying");
                        last_warning = Some(tokio::time::Instant::now());
                        suppressed = 0;
                    } else {
                        tracing::debug!(relay = self.name, %error, ?backoff, "outbox relay pass failed; retrying");
                        suppressed += 1;
                    }
                    // While the broker is away, retry as soon as the bus has reconnected.
                    let pause = async {
                        if self.bus.is_connected() {
                            tokio::time::sleep(backoff).await;
                        } else {
                            self.bus.wait_connected(backoff).await;
                        }
                    };
                    tokio::select! {
                        _ = shutdown.cancelled() => return,
                        _ = pause => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }
}
