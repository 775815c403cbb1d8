//! Step timers and start-up recovery. Deadlines live in the `orders` table, so they
//! survive restarts: the scanner asks the database which deadlines have passed and tells
//! those orders' actors, which resend or give up and compensate. At start-up every
//! non-terminal order is resumed (its pending commands resent; participants dedupe), so
//! nothing waits for a message that died with the previous process. With several
//! replicas each scans and resumes only the partitions it owns: a partition's orders are
//! resumed by the replica that acquires it.

use crate::orchestrator::actors::Orders;
use crate::persistence::orders::{self, Partitions};
use chrono::Utc;
use futures::StreamExt;
use sea_orm::DatabaseConnection;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the scanner looks for expired deadlines.
const SCAN_INTERVAL: Duration = Duration::from_millis(250);
/// Orders handled per scan, and at once.
const SCAN_BATCH: u64 = 256;
const CONCURRENCY: usize = 32;

/// Handles every expired deadline once. Returns how many orders were due.
pub async fn scan_once(orders: &Orders, db: &DatabaseConnection) -> anyhow::Result<usize> {
    let only = owned(orders);
    if only.as_ref().is_some_and(|p| p.wanted.is_empty()) {
        return Ok(0);
    }
    let due = orders::due_deadlines(db, Utc::now(), SCAN_BATCH, only.as_ref()).await?;
    let count = due.len();
    for_each(due, |id| async move {
        if let Err(error) = orders.deadline_expired(id).await {
            tracing::warn!(order_id = %id, %error, "could not handle an expired step deadline");
        }
    })
    .await;
    Ok(count)
}

/// Runs the scanner until cancelled.
pub async fn run(orders: Orders, db: DatabaseConnection, shutdown: CancellationToken) {
    loop {
        if let Err(error) = scan_once(&orders, &db).await {
            tracing::warn!(%error, "timer scan failed");
        }
        if !crate::pause::sleep_or_shutdown(&shutdown, SCAN_INTERVAL).await {
            return;
        }
    }
}

/// The partitions this replica owns, as a query filter (`None`: it owns every order).
fn owned(orders: &Orders) -> Option<Partitions> {
    let ownership = orders.ownership();
    ownership.is_partitioned().then(|| Partitions {
        count: ownership.partitions(),
        wanted: ownership.owned(),
    })
}

/// Resumes every non-terminal order (of `partition` only, when given). Returns how many.
pub async fn recover(
    orders: &Orders,
    db: &DatabaseConnection,
    partition: Option<u16>,
) -> anyhow::Result<usize> {
    let only = partition.map(|p| Partitions {
        count: orders.ownership().partitions(),
        wanted: vec![p],
    });
    let ids = orders::non_terminal_ids(db, only.as_ref()).await?;
    let count = ids.len();
    if count > 0 {
        tracing::info!(orders = count, ?partition, "resuming in-flight orders");
    }
    for_each(ids, |id| async move {
        if let Err(error) = orders.resume(id).await {
            tracing::warn!(order_id = %id, %error, "could not resume order");
        }
    })
    .await;
    Ok(count)
}

/// Runs `handle` for every order, [`CONCURRENCY`] at a time.
async fn for_each<F, Fut>(ids: Vec<uuid::Uuid>, handle: F)
where
    F: FnMut(uuid::Uuid) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    futures::stream::iter(ids)
        .for_each_concurrent(CONCURRENCY, handle)
        .await
}
