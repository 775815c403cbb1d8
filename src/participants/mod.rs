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
use crate::persistence::outbox::NewMessage;
use sea_orm::DbErr;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use uuid::Uuid;

/// A participant's handling of its command queue.
pub trait CommandHandler: Clone + Send + Sync + 'static {
    fn on_command(
        &self,
        message: std::sync::Arc<IncomingMessage>,
    ) -> impl std::future::Future<Output = Disposition> + Send;
}

impl CommandHandler for inventory::Inventory {
    async fn on_command(&self, message: std::sync::Arc<IncomingMessage>) -> Disposition {
        inventory::Inventory::on_command(self, message).await
    }
}

impl CommandHandler for payment::Payment {
    async fn on_command(&self, message: std::sync::Arc<IncomingMessage>) -> Disposition {
        payment::Payment::on_command(self, message).await
    }
}

impl CommandHandler for shipping::Shipping {
    async fn on_command(&self, message: std::sync::Arc<IncomingMessage>) -> Disposition {
        shipping::Shipping::on_command(self, message).await
    }
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
) -> Result<Envelope<T>, Disposition> {
    serde_json::from_slice(&message.payload)
        .map_err(|e| Disposition::DeadLetter(format!("undecodable {}: {e}", message.routing_key)))
}

/// A database failure is transient: the delivery is requeued.
pub(crate) fn settle(result: Result<(), DbErr>) -> Disposition {
    match result {
        Ok(()) => Disposition::Ack,
        Err(e) => Disposition::Retry(e.to_string()),
    }
}

/// Deterministic randomness is not needed here: the mock gateways roll a fresh die.
pub(crate) fn roll(rate: f64) -> bool {
    rate > 0.0 && rand::random::<f64>() < rate
}
