//! The orchestrator's consumer of `orchestrator.replies`: turns each participant reply
//! into a saga event for the order's actor and acks only once the actor has persisted it.

use crate::actors::Orders;
use crate::actors::order_actor::OrderError;
use crate::domain::saga::Event;
use crate::messaging::IncomingMessage;
use crate::messaging::consumer::Disposition;
use crate::messaging::messages::{Envelope, ReplyBody};
use std::sync::Arc;
use tracing::Instrument;

pub fn event_of(reply: ReplyBody) -> Event {
    match reply {
        ReplyBody::StockReserved {} => Event::StockReserved,
        ReplyBody::StockRejected { reason } => Event::StockRejected { reason },
        ReplyBody::StockReleased {} => Event::StockReleased,
        ReplyBody::PaymentCharged { .. } => Event::PaymentCharged,
        ReplyBody::PaymentDeclined { reason } => Event::PaymentDeclined { reason },
        ReplyBody::PaymentRefunded { .. } => Event::PaymentRefunded,
        ReplyBody::ShipmentScheduled { .. } => Event::ShipmentScheduled,
        ReplyBody::ShipmentFailed { reason } => Event::ShipmentFailed { reason },
        ReplyBody::ShipmentCancelled {} => Event::ShipmentCancelled,
    }
}

/// Handles one delivery from `orchestrator.replies`, in a span that continues the
/// reply's trace.
pub async fn on_reply(orders: Orders, message: Arc<IncomingMessage>) -> Disposition {
    let span = message.process_span();
    apply_reply(orders, message).instrument(span).await
}

async fn apply_reply(orders: Orders, message: Arc<IncomingMessage>) -> Disposition {
    let envelope: Envelope<ReplyBody> = match serde_json::from_slice(&message.payload) {
        Ok(e) => e,
        Err(e) => {
            return Disposition::DeadLetter(format!("undecodable {}: {e}", message.routing_key));
        }
    };
    let order_id = envelope.order_id;
    match orders.apply(order_id, event_of(envelope.body)).await {
        // A refused event is a duplicate or a late reply: the actor logged it; drop it.
        Ok(_) | Err(OrderError::Transition(_)) => Disposition::Ack,
        Err(OrderError::NotFound(_)) => {
            Disposition::DeadLetter(format!("reply for unknown order {order_id}"))
        }
        Err(e) => Disposition::Retry(e.to_string()),
    }
}
