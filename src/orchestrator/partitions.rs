//! What a replica does as it gains and gives up partitions (several replicas; see
//! `persistence::ownership`): an acquired partition's reply queue is consumed and its
//! in-flight orders resumed (their pending commands resent, their timers re-armed by the
//! resumed actors); a partition handed over or lost stops being consumed and its actors
//! stop, each after the message in hand, before its lock is released.

use crate::orchestrator::Orchestrator;
use crate::persistence::ownership::Change;
use futures::future::BoxFuture;
use std::collections::HashMap;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// How long a partition's reply consumer may take to settle its deliveries in hand.
const CONSUMER_STOP: Duration = Duration::from_secs(5);

/// Consumes one partition's reply queue until its token is cancelled.
pub type ServePartition = Box<dyn Fn(u16, CancellationToken) -> BoxFuture<'static, ()> + Send>;

/// Acts on every ownership change until the ownership loop ends (after it handed every
/// partition over at shutdown).
pub async fn run(
    orchestrator: Orchestrator,
    mut changes: mpsc::UnboundedReceiver<Change>,
    serve: ServePartition,
) {
    let mut consumers: HashMap<u16, (CancellationToken, JoinHandle<()>)> = HashMap::new();
    while let Some(change) = changes.recv().await {
        match change {
            Change::Acquired { partition, epoch } => {
                let stop = CancellationToken::new();
                let consumer = tokio::spawn(serve(partition, stop.clone()));
                if let Some((old, _)) = consumers.insert(partition, (stop, consumer)) {
                    old.cancel();
                }
                let orchestrator = orchestrator.clone();
                tokio::spawn(async move {
                    match orchestrator.recover(Some(partition)).await {
                        Ok(resumed) => {
                            tracing::info!(partition, epoch, resumed, "took over partition")
                        }
                        Err(error) => tracing::error!(partition, %error,
                            "resuming the partition's orders failed; the timer scanner will catch up"),
                    }
                });
            }
            Change::Release { partition, done } => {
                let stopped = stop_serving(&orchestrator, &mut consumers, partition).await;
                tracing::info!(partition, actors = stopped, "partition's work stopped");
                let _ = done.send(());
            }
            Change::Lost { partition } => {
                let stopped = stop_serving(&orchestrator, &mut consumers, partition).await;
                tracing::warn!(
                    partition,
                    actors = stopped,
                    "partition lost; its work stopped"
                );
            }
        }
    }
    for (_, (stop, consumer)) in consumers {
        stop.cancel();
        let _ = tokio::time::timeout(CONSUMER_STOP, consumer).await;
    }
}

/// Stops consuming the partition's replies (deliveries in hand settle first) and stops
/// its actors. Returns how many actors there were.
async fn stop_serving(
    orchestrator: &Orchestrator,
    consumers: &mut HashMap<u16, (CancellationToken, JoinHandle<()>)>,
    partition: u16,
) -> usize {
    if let Some((stop, consumer)) = consumers.remove(&partition) {
        stop.cancel();
        if tokio::time::timeout(CONSUMER_STOP, consumer).await.is_err() {
            tracing::warn!(
                partition,
                "the partition's reply consumer did not stop in time"
            );
        }
    }
    orchestrator.stop_partition(partition).await
}
