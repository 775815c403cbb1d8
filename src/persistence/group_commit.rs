//! Group commit for the orders store. Order actors hand their writes (new order,
//! transition, retry) to a few writer tasks, which apply every write waiting at that
//! moment in one transaction ([`orders::save_batch`]) and answer each actor once it has
//! committed. One commit — one WAL flush, on PostgreSQL one statement — then serves many
//! orders, instead of a transaction of five round trips per transition.
//!
//! Nothing waits for a batch to fill: a writer takes what is queued and goes, so under
//! light load a batch holds one write and latency is a plain transaction's. Durability is
//! unchanged: an actor hears back only after the commit (`synchronous_commit` stays on).
//!
//! New orders can have a writer of their own (the create lane): a create is the one write
//! a client waits for, and in the shared queue it waits for the batch of transitions being
//! committed before its own. With its own writer it waits only for other creates, and the
//! transitions' throughput is unchanged.

use crate::batching::take_ready;
use crate::persistence::apply_batch_or_each;
use crate::persistence::orders::{self, OrderWrite, SaveError};
use crate::persistence::outbox::OutboxFeed;
use crate::persistence::ownership::Ownership;
use crate::tuning::{ORDER_WRITE_BATCH, ORDER_WRITE_QUEUE};
use sea_orm::{DatabaseConnection, DbErr};
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};

struct Pending {
    write: OrderWrite,
    done: oneshot::Sender<Result<i64, SaveError>>,
}

/// Handle to the writer tasks; cheap to clone. The tasks end when every handle is gone.
#[derive(Clone)]
pub struct OrderWriter {
    queue: mpsc::Sender<Pending>,
    /// The create lane's queue, if it has one.
    creates: Option<mpsc::Sender<Pending>>,
}

impl OrderWriter {
    /// Starts `writers` tasks on `db`, plus one for new orders alone if `create_lane` (`db`
    /// then needs a connection more). More than one writer lets one batch's statements run
    /// while another's commit waits for its WAL flush, at the price of smaller batches. The
    /// outbox rows of each commit go to the relay through `feed`.
    pub fn start(
        db: DatabaseConnection,
        feed: OutboxFeed,
        writers: usize,
        create_lane: bool,
        ownership: Ownership,
    ) -> Self {
        let (queue, receiver) = mpsc::channel(ORDER_WRITE_QUEUE);
        let receiver = Arc::new(Mutex::new(receiver));
        for _ in 0..writers.max(1) {
            tokio::spawn(run(
                db.clone(),
                receiver.clone(),
                feed.clone(),
                ownership.clone(),
            ));
        }
        let creates = create_lane.then(|| {
            let (creates, receiver) = mpsc::channel(ORDER_WRITE_QUEUE);
            tokio::spawn(run(db, Arc::new(Mutex::new(receiver)), feed, ownership));
            creates
        });
        OrderWriter { queue, creates }
    }

    /// Applies `write` durably (with the writes of other actors that arrived meanwhile)
    /// and returns the order's new version.
    pub async fn write(&self, write: OrderWrite) -> Result<i64, SaveError> {
        let (done, result) = oneshot::channel();
        let queue = match (&write, &self.creates) {
            (OrderWrite::Create { .. }, Some(creates)) => creates,
            _ => &self.queue,
        };
        queue
            .send(Pending { write, done })
            .await
            .map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }
}

fn stopped() -> SaveError {
    SaveError::Db(DbErr::Custom("the order writer has stopped".into()))
}

async fn run(
    db: DatabaseConnection,
    receiver: Arc<Mutex<mpsc::Receiver<Pending>>>,
    feed: OutboxFeed,
    ownership: Ownership,
) {
    loop {
        // Only the collecting is under the lock: while this task writes, another collects.
        let batch = {
            let mut receiver = receiver.lock().await;
            let Some(first) = receiver.recv().await else {
                return;
            };
            take_ready(first, ORDER_WRITE_BATCH, || receiver.try_recv().ok())
        };
        metrics::histogram!("order_writer_batch_size").record(batch.len() as f64);
        let (writes, waiting): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|p| (p.write, p.done)).unzip();
        let started = std::time::Instant::now();
        // What this replica owns as the batch starts; the statement checks it is still so.
        let fence = ownership.fence();
        let results = apply_batch_or_each("group commit", &writes, |writes| {
            let (db, feed, fence) = (db.clone(), feed.clone(), fence.clone());
            Box::pin(async move {
                let saved = orders::save_batch_fenced(&db, writes, fence.as_ref()).await?;
                feed.push(saved.outbox_rows);
                Ok(saved.results)
            })
        })
        .await;
        metrics::histogram!("order_writer_commit_seconds").record(started.elapsed().as_secs_f64());
        let fenced = results
            .iter()
            .filter(|r| matches!(r, Ok(Err(SaveError::Fenced(_)))))
            .count();
        if fenced > 0 {
            metrics::counter!("writes_fenced_total").increment(fenced as u64);
        }
        for (done, result) in waiting.into_iter().zip(results) {
            // The actor may have given up waiting (timeout); the write stands anyway.
            let _ = done.send(result.unwrap_or_else(|e| Err(SaveError::Db(e))));
        }
    }
}
