//! What a replica does as it gains and gives up partitions (several replicas; see
//! `persistence::ownership`): an acquired partition's in-flight orders are resumed — their
//! pending commands resent, naming this replica for the replies, and their timers re-armed by
//! the resumed actors; a partition handed over or lost has its actors stopped, each after the
//! message in hand, before its lock is released.

use crate::orchestrator::Orchestrator;
use crate::persistence::ownership::Change;
use tokio::sync::mpsc;

/// Acts on every ownership change until the ownership loop ends (after it handed every
/// partition over at shutdown).
pub async fn run(orchestrator: Orchestrator, mut changes: mpsc::UnboundedReceiver<Change>) {
    while let Some(change) = changes.recv().await {
        match change {
            Change::Acquired { partition, epoch } => {
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
                let stopped = orchestrator.stop_partition(partition).await;
                tracing::info!(partition, actors = stopped, "partition's work stopped");
                let _ = done.send(());
            }
            Change::Lost { partition } => {
                let stopped = orchestrator.stop_partition(partition).await;
                tracing::warn!(
                    partition,
                    actors = stopped,
                    "partition lost; its work stopped"
                );
            }
        }
    }
}
