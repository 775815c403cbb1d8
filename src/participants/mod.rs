//! Participants: Inventory, Payment and Shipping. Separate services by design — each owns
//! its store, consumes its own queue and answers over `order.replies` through its own
//! outbox — run in this process by default. Each is idempotent per (order, step): the
//! order id is the primary key of its record, so a redelivered command finds the record
//! and answers the same way again instead of acting twice.

pub mod inventory;
pub mod payment;
pub mod shipping;

use crate::messaging::IncomingMessage;
use crate::messaging::consumer::Disposition;
use crate::messaging::messages::{Envelope, ReplyBody};
use crate::messaging::topology::REPLIES_EXCHANGE;
use crate::persistence::outbox::{self, NewMessage};
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, TransactionTrait};
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Notify;
use uuid::Uuid;

/// What one delivery did inside its batch's transaction.
#[derive(Debug)]
pub enum Applied {
    /// Done, or recognised as a duplicate: these replies leave with the batch's commit.
    Replies(Vec<NewMessage>),
    /// Undecodable or not meant for this participant: dead-letter it.
    Poison(String),
}

/// A participant's handling of one of its queues. Deliveries are applied in batches (see
/// [`handle_batch`]); `apply` sees the batch's transaction, so everything it writes
/// commits together with the other deliveries' writes and their replies.
pub trait CommandHandler: Clone + Send + Sync + 'static {
    /// The participant's own store.
    fn store(&self) -> &DatabaseConnection;
    /// Wakes the participant's outbox relay after a commit that wrote replies.
    fn outbox_wake(&self) -> &Notify;
    fn apply(
        &self,
        txn: &DatabaseTransaction,
        message: &IncomingMessage,
    ) -> impl Future<Output = Result<Applied, DbErr>> + Send;
}

/// Applies a batch of deliveries in one transaction and returns one disposition per
/// delivery, in order. One commit (one WAL flush, one hold of a hot stock row) serves the
/// whole batch. If the batch fails — a concurrent duplicate hitting a primary key, a
/// deadlock, the database going away — it is rolled back and each delivery is applied
/// again on its own, so one bad delivery cannot hold the others back.
pub async fn handle_batch<H: CommandHandler>(
    handler: &H,
    messages: &[Arc<IncomingMessage>],
) -> Vec<Disposition> {
    match apply_in_one_transaction(handler, messages).await {
        Ok(dispositions) => dispositions,
        Err(error) if messages.len() > 1 => {
            tracing::debug!(%error, size = messages.len(), "batch failed; applying its deliveries one by one");
            let mut dispositions = Vec::with_capacity(messages.len());
            for message in messages {
                let single = apply_in_one_transaction(handler, std::slice::from_ref(message)).await;
                dispositions.push(match single {
                    Ok(mut d) => d.pop().unwrap_or(Disposition::Ack),
                    Err(e) => Disposition::Retry(e.to_string()),
                });
            }
            dispositions
        }
        Err(error) => vec![Disposition::Retry(error.to_string())],
    }
}

async fn apply_in_one_transaction<H: CommandHandler>(
    handler: &H,
    messages: &[Arc<IncomingMessage>],
) -> Result<Vec<Disposition>, DbErr> {
    let txn = handler.store().begin().await?;
    let mut dispositions = Vec::with_capacity(messages.len());
    let mut replies = Vec::new();
    let mut failure = None;
    for message in messages {
        match handler.apply(&txn, message).await {
            Ok(Applied::Replies(r)) => {
                replies.extend(r);
                dispositions.push(Disposition::Ack);
            }
            Ok(Applied::Poison(reason)) => dispositions.push(Disposition::DeadLetter(reason)),
            Err(error) => {
                failure = Some(error);
                break;
            }
        }
    }
    if failure.is_none()
        && let Err(error) = outbox::enqueue(&txn, &replies).await
    {
        failure = Some(error);
    }
    if let Some(error) = failure {
        // Best effort: a dropped transaction is rolled back by the pool anyway.
        let _ = txn.rollback().await;
        return Err(error);
    }
    txn.commit().await?;
    if !replies.is_empty() {
        handler.outbox_wake().notify_one();
    }
    Ok(dispositions)
}

/// A reply to the orchestrator, carrying the command's trace context along.
pub(crate) fn reply(
    order_id: Uuid,
    body: ReplyBody,
    headers: &BTreeMap<String, String>,
) -> Result<NewMessage, DbErr> {
    let kind = body.kind();
    let envelope = Envelope::new(order_id, body);
    let mut message = NewMessage::json(REPLIES_EXCHANGE, kind, envelope.message_id, &envelope)?;
    if let Some(tp) = headers.get("traceparent") {
        message.headers.insert("traceparent".into(), tp.clone());
    }
    Ok(message)
}

/// Decodes a delivery; anything undecodable is poison for the dead-letter queue.
pub(crate) fn decode<T: DeserializeOwned>(
    message: &IncomingMessage,
) -> Result<Envelope<T>, Applied> {
    serde_json::from_slice(&message.payload)
        .map_err(|e| Applied::Poison(format!("undecodable {}: {e}", message.routing_key)))
}

/// Deterministic randomness is not needed here: the mock gateways roll a fresh die.
pub(crate) fn roll(rate: f64) -> bool {
    rate > 0.0 && rand::random::<f64>() < rate
}
