//! Outbox relay: publishes the rows of one store's outbox to the bus with publisher
//! confirms, and deletes them only once the broker has confirmed them. A crash after
//! publishing and before deleting sends them again: delivery is at-least-once and every
//! consumer dedupes.
//!
//! Rows arrive two ways. Normally the writer that committed them hands them over in memory
//! ([`OutboxFeed`]), so the relay never reads what it was just told, and publishes in
//! hand-over order (per order, the order of its transitions). A sweep reads the table for
//! rows no hand-over will bring: those left by a crash (everything older than this
//! relay's start) or dropped while the broker was away (older than [`STRAGGLER_AGE`]). It
//! runs at start, then once a second while there is trouble and up to every
//! [`SWEEP_QUIET_MAX`] while sweeps find nothing ([`SWEEP_PAUSE`]). Confirmed rows
//! are deleted in bulk: at once when the relay has nothing else to do, at least every
//! [`DELETE_EVERY`] under load.

use crate::messaging::topology::EVENTS_EXCHANGE;
use crate::messaging::{Bus, OutgoingMessage};
use crate::pause::{Backoff, sleep_or_shutdown};
use crate::persistence::Partitions;
use crate::persistence::outbox::{self, Lane, OutboxFeed};
use crate::persistence::ownership::Ownership;
use crate::tuning::{EVENTS_LINGER, RELAY_BATCH};
use chrono::Utc;
use entity::outbox::Model as Row;
use sea_orm::DatabaseConnection;
use std::collections::HashSet;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often the table is swept for rows no hand-over brings, after a sweep found some, a
/// round failed or the feed dropped rows.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// The longest pause between sweeps, reached by doubling while sweeps find nothing. A sweep
/// reads the outbox's primary key from its oldest entry, dead ones included until VACUUM
/// removes them, so a quiet relay need not pay that every second.
const SWEEP_QUIET_MAX: Duration = Duration::from_secs(8);
/// The pause before the next sweep: [`SWEEP_EVERY`] after a sweep that found rows (or
/// trouble), twice the last one after a sweep that found none, up to [`SWEEP_QUIET_MAX`].
const SWEEP_PAUSE: Backoff = Backoff::new(SWEEP_EVERY, SWEEP_QUIET_MAX);
/// A row this old that is still in the table was not handed over (or its publication
/// failed): the sweep takes it.
const STRAGGLER_AGE: Duration = Duration::from_secs(5);
/// Under load, confirmed rows are deleted at least this often (one statement for all).
const DELETE_EVERY: Duration = Duration::from_millis(100);
/// ...or once this many are waiting.
const DELETE_AT: usize = 1024;
/// Rows kept for another attempt after a failed publication; beyond that the sweep
/// recovers them from the table.
const RETRY_LIMIT: usize = 10_000;
/// Pauses between failed rounds, reset by a round that succeeds.
const RETRY_BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));

pub struct OutboxRelay {
    /// Name of the store, for logs and metrics.
    pub name: &'static str,
    db: DatabaseConnection,
    bus: Bus,
    feed: OutboxFeed,
    lane: Lane,
    started: chrono::DateTime<Utc>,
    /// Rows to publish (handed over, swept, or left by a failed attempt), oldest first.
    queue: Vec<Row>,
    /// Confirmed by the broker, not yet deleted.
    confirmed: Vec<i64>,
    last_delete: Instant,
    last_sweep: Option<Instant>,
    /// The pause before the next sweep ([`SWEEP_PAUSE`]).
    sweep_pause: Backoff,
    /// How long a hand-over waits for more before its round starts (see [`Self::lane`]).
    linger: Duration,
    /// How long a hand-over waits when the last round published more than one message
    /// (see [`Self::busy_linger`]).
    busy_linger: Duration,
    /// How many messages the last round that published anything carried.
    last_round: usize,
    /// With several replicas, the sweep takes only the rows of the partitions this one
    /// owns (each row is relayed by the replica that wrote it, or by its partition's owner).
    ownership: Option<Ownership>,
}

impl OutboxRelay {
    pub fn new(name: &'static str, db: DatabaseConnection, bus: Bus, feed: OutboxFeed) -> Self {
        OutboxRelay {
            name,
            db,
            bus,
            feed,
            lane: Lane::All,
            started: Utc::now(),
            queue: Vec::new(),
            confirmed: Vec::new(),
            last_delete: Instant::now(),
            last_sweep: None,
            sweep_pause: SWEEP_PAUSE,
            linger: Duration::ZERO,
            busy_linger: Duration::ZERO,
            last_round: 0,
            ownership: None,
        }
    }

    /// Sweeps only the rows of the orders in the partitions `ownership` holds (when it is
    /// partitioned).
    pub fn swept_by(mut self, ownership: Ownership) -> Self {
        self.ownership = ownership.is_partitioned().then_some(ownership);
        self
    }

    /// Publishes only this lane's rows (the feed must carry only those). On RabbitMQ the
    /// events lane lingers ([`EVENTS_LINGER`]); the others only while busy ([`Self::busy_linger`]).
    pub fn lane(mut self, lane: Lane) -> Self {
        self.lane = lane;
        if lane == Lane::Exchange(EVENTS_EXCHANGE) && matches!(self.bus, Bus::Amqp(_)) {
            self.linger = EVENTS_LINGER;
        }
        self
    }

    /// On RabbitMQ, gather this long after a hand-over when the last round published more
    /// than one message (`RELAY_LINGER_MS`). Sagas are then running side by side, and within
    /// the linger more of their commands and replies arrive to share the round's AMQP
    /// messages (bundles) and its confirm. A lone saga's hand-overs come one at a time (each
    /// waits for the previous step's answer) and are never held. The in-process bus has no
    /// per-message broker cost to save.
    pub fn busy_linger(mut self, linger: Duration) -> Self {
        if matches!(self.bus, Bus::Amqp(_)) {
            self.busy_linger = linger;
        }
        self
    }

    /// How long the hand-over that just arrived waits for more before its round starts.
    fn linger_now(&self) -> Duration {
        linger_after(self.last_round, self.linger, self.busy_linger)
    }

    /// Reads the rows no hand-over will bring; skips those queued or awaiting deletion.
    async fn sweep(&mut self) -> anyhow::Result<()> {
        self.last_sweep = Some(Instant::now());
        let age = chrono::Duration::from_std(STRAGGLER_AGE).unwrap_or_default();
        let before = self.started.max(Utc::now() - age);
        let known: HashSet<i64> = self
            .queue
            .iter()
            .map(|r| r.id)
            .chain(self.confirmed.iter().copied())
            .collect();
        let limit = (RELAY_BATCH + known.len()) as u64;
        let only = self.ownership.as_ref().map(|o| Partitions {
            count: o.partitions(),
            wanted: o.owned(),
        });
        let rows = if only.as_ref().is_some_and(|p| p.wanted.is_empty()) {
            Vec::new()
        } else {
            outbox::fetch_stragglers(&self.db, self.lane, before, limit, only.as_ref()).await?
        };
        let mut found: Vec<Row> = rows
            .into_iter()
            .filter(|r| !known.contains(&r.id))
            .collect();
        if found.is_empty() {
            self.sweep_pause.grow();
        } else {
            self.sweep_pause.reset();
            tracing::info!(
                relay = self.name,
                rows = found.len(),
                "publishing outbox rows found by the sweep"
            );
            // Older rows first: they were written before anything queued now.
            found.append(&mut self.queue);
            self.queue = found;
        }
        Ok(())
    }

    /// Publishes up to one batch of the queue. Returns how many were published.
    async fn publish_some(&mut self) -> anyhow::Result<usize> {
        if self.queue.is_empty() {
            return Ok(0);
        }
        let take = self.queue.len().min(RELAY_BATCH);
        let messages: Vec<_> = self.queue[..take].iter().map(to_outgoing).collect();
        let started = std::time::Instant::now();
        self.bus.publish_batch(&messages).await?;
        metrics::histogram!("outbox_publish_duration_seconds", "store" => self.name)
            .record(started.elapsed().as_secs_f64());
        metrics::counter!("outbox_messages_published_total", "store" => self.name)
            .increment(take as u64);
        self.confirmed
            .extend(self.queue.drain(..take).map(|r| r.id));
        self.last_round = take;
        Ok(take)
    }

    async fn delete_confirmed(&mut self) -> anyhow::Result<()> {
        self.last_delete = Instant::now();
        if self.confirmed.is_empty() {
            return Ok(());
        }
        let ids = std::mem::take(&mut self.confirmed);
        if let Err(error) = outbox::delete_sent(&self.db, ids.clone()).await {
            self.confirmed = ids; // try again later; meanwhile nothing is lost
            return Err(error.into());
        }
        Ok(())
    }

    /// One round: take what was handed over, sweep when due, publish, delete when due.
    /// Returns whether there is more to do right away.
    async fn round(&mut self) -> anyhow::Result<bool> {
        self.queue.extend(self.feed.take());
        if self.feed.take_dropped() {
            // Rows the feed could not hold are in the table only: look soon.
            self.sweep_pause.reset();
        }
        if self
            .last_sweep
            .is_none_or(|at| at.elapsed() >= self.sweep_pause.current())
        {
            self.sweep().await?;
        }
        let published = self.publish_some().await;
        // Unsent rows this relay knows of (the sweep adds any others within a second). Kept
        // here rather than counted in the table: a count scans it, dead rows included.
        metrics::gauge!("outbox_backlog", "store" => self.name).set(self.queue.len() as f64);
        // Deleting what the broker has confirmed needs only the database: a round that
        // keeps failing (broker away, a row it cannot route) must not hold those rows back,
        // or a restart would publish them all again.
        if self.delete_due() == Some(Duration::ZERO) {
            self.delete_confirmed().await?;
        }
        let published = published?;
        Ok(published > 0 && !self.queue.is_empty())
    }

    /// When the confirmed rows are to be deleted (`None`: there are none).
    fn delete_due(&self) -> Option<Duration> {
        if self.confirmed.is_empty() {
            None
        } else if self.confirmed.len() >= DELETE_AT {
            Some(Duration::ZERO)
        } else {
            Some(DELETE_EVERY.saturating_sub(self.last_delete.elapsed()))
        }
    }

    /// Shutdown: publishes and deletes what was committed since the last round, while the
    /// bus is there.
    async fn flush(&mut self) {
        for _ in 0..16 {
            match self.round().await {
                Ok(true) => continue,
                Ok(false) => {
                    self.queue.extend(self.feed.take());
                    if self.queue.is_empty() {
                        if let Err(error) = self.delete_confirmed().await {
                            tracing::info!(relay = self.name, %error, "published rows left for the next start");
                        }
                        return;
                    }
                }
                Err(error) => {
                    tracing::info!(relay = self.name, %error, "outbox left for the next start");
                    return;
                }
            }
        }
    }

    /// Runs until cancelled; a failed round is retried with capped exponential backoff.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut backoff = RETRY_BACKOFF;
        // While the broker is away every round fails; warn about it at most once a second.
        let mut last_warning: Option<Instant> = None;
        let mut suppressed = 0u32;
        loop {
            match self.round().await {
                Ok(true) => {
                    backoff.reset();
                    continue;
                }
                Ok(false) => {
                    backoff.reset();
                    let next_sweep = self.last_sweep.map_or(Duration::ZERO, |at| {
                        self.sweep_pause.current().saturating_sub(at.elapsed())
                    });
                    let pause = self.delete_due().map_or(next_sweep, |d| d.min(next_sweep));
                    tokio::select! {
                        _ = shutdown.cancelled() => return self.flush().await,
                        _ = self.feed.ready() => {
                            let linger = self.linger_now();
                            if !linger.is_zero() && !sleep_or_shutdown(&shutdown, linger).await {
                                return self.flush().await;
                            }
                        }
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                Err(error) => {
                    let pause = backoff.next_pause();
                    if last_warning.is_none_or(|at| at.elapsed() >= Duration::from_secs(1)) {
                        tracing::warn!(relay = self.name, %error, backoff = ?pause, suppressed, "outbox relay round failed; retrying");
                        last_warning = Some(Instant::now());
                        suppressed = 0;
                    } else {
                        tracing::debug!(relay = self.name, %error, backoff = ?pause, "outbox relay round failed; retrying");
                        suppressed += 1;
                    }
                    if self.queue.len() > RETRY_LIMIT {
                        // The table still has them; the sweep brings them back in order.
                        self.queue.clear();
                    }
                    // Trouble (broker or database away): rows may be left behind.
                    self.sweep_pause.reset();
                    // While the broker is away, retry as soon as the bus has reconnected.
                    let waited = async {
                        if self.bus.is_connected() {
                            tokio::time::sleep(pause).await;
                        } else {
                            self.bus.wait_connected(pause).await;
                        }
                    };
                    if shutdown.run_until_cancelled(waited).await.is_none() {
                        return;
                    }
                }
            }
        }
    }
}

/// The linger after a round of `last_round` messages: `busy` only when that round carried
/// more than one (sagas side by side), so a lone saga's steps are never held.
fn linger_after(last_round: usize, linger: Duration, busy: Duration) -> Duration {
    if last_round > 1 {
        linger.max(busy)
    } else {
        linger
    }
}

/// The bus form of a stored row.
fn to_outgoing(row: &entity::outbox::Model) -> OutgoingMessage {
    let headers = row
        .headers
        .as_deref()
        .and_then(|h| serde_json::from_str(h).ok())
        .unwrap_or_default();
    OutgoingMessage {
        exchange: row.exchange.clone(),
        routing_key: row.routing_key.clone(),
        message_id: row.message_id,
        kind: row.routing_key.clone(),
        payload: row.payload.clone().into_bytes(),
        headers,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quiet_sweeps_space_out_and_a_find_brings_them_back_to_every_second() {
        let mut pause = SWEEP_PAUSE;
        assert_eq!(pause.current(), SWEEP_EVERY);
        let mut pauses = Vec::new();
        for _ in 0..5 {
            pause.grow();
            pauses.push(pause.current().as_secs());
        }
        assert_eq!(pauses, [2, 4, 8, 8, 8]);
        pause.reset();
        assert_eq!(pause.current(), SWEEP_EVERY);
    }

    #[test]
    fn a_lone_sagas_hand_overs_are_never_held_and_side_by_side_ones_gather() {
        let busy = Duration::from_millis(2);
        for lone in [0, 1] {
            assert_eq!(linger_after(lone, Duration::ZERO, busy), Duration::ZERO);
        }
        assert_eq!(linger_after(2, Duration::ZERO, busy), busy);
        assert_eq!(linger_after(200, Duration::ZERO, busy), busy);
        // The events lane's own, longer linger always applies.
        assert_eq!(linger_after(1, EVENTS_LINGER, busy), EVENTS_LINGER);
        assert_eq!(linger_after(5, EVENTS_LINGER, busy), EVENTS_LINGER);
    }
}
