//! The one place where the saga's commands and events meet the wire: domain effects become
//! outbox messages (commands to participants, lifecycle events on `order.events`), and
//! participants' replies become saga events.

use crate::domain::saga::{Command, Effect, Event, LifecycleEvent};
use crate::messaging::messages::{
    CommandBody, Envelope, LineItem, OrderEventBody, OrderEventPayload, ReplyBody,
};
use crate::messaging::topology::{COMMANDS_EXCHANGE, EVENTS_EXCHANGE, REPLY_TO_HEADER};
use crate::orchestrator::OrderError;
use crate::persistence::orders::OrderRecord;
use crate::persistence::outbox::NewMessage;

/// The saga event a participant's reply stands for.
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

/// The reply type (and routing key) a saga event arrives as, e.g. `stock.reserved`; `None`
/// for events that are not a participant's reply (timeouts, operator and dev calls).
pub fn reply_kind(event: &Event) -> Option<&'static str> {
    Some(match event {
        Event::StockReserved => "stock.reserved",
        Event::StockRejected { .. } => "stock.rejected",
        Event::StockReleased => "stock.released",
        Event::PaymentCharged => "payment.charged",
        Event::PaymentDeclined { .. } => "payment.declined",
        Event::PaymentRefunded => "payment.refunded",
        Event::ShipmentScheduled => "shipping.scheduled",
        Event::ShipmentFailed { .. } => "shipping.failed",
        Event::ShipmentCancelled => "shipping.cancelled",
        Event::StepTimedOut { .. }
        | Event::PaymentSubmitted { .. }
        | Event::AdminOverride { .. } => {
            return None;
        }
    })
}

fn line_items(order: &OrderRecord) -> Vec<LineItem> {
    order
        .items
        .iter()
        .map(|l| LineItem {
            sku: l.sku.clone(),
            quantity: l.quantity,
        })
        .collect()
}

fn command_body(order: &OrderRecord, command: Command) -> CommandBody {
    match command {
        Command::ReserveStock => CommandBody::ReserveStock {
            items: line_items(order),
        },
        Command::ReleaseStock => CommandBody::ReleaseStock {},
        Command::ChargePayment { forced } => CommandBody::ChargePayment {
            amount_cents: order.total_cents,
            currency: order.currency.clone(),
            forced,
        },
        Command::RefundPayment => CommandBody::RefundPayment {},
        Command::ScheduleShipment => CommandBody::ScheduleShipment {
            items: line_items(order),
        },
        Command::CancelShipment => CommandBody::CancelShipment {},
    }
}

/// The message type (and routing key) a command travels as, e.g. `stock.reserve`.
pub fn command_kind(command: Command) -> &'static str {
    match command {
        Command::ReserveStock => CommandBody::KINDS[0],
        Command::ReleaseStock => CommandBody::KINDS[1],
        Command::ChargePayment { .. } => CommandBody::KINDS[2],
        Command::RefundPayment => CommandBody::KINDS[3],
        Command::ScheduleShipment => CommandBody::KINDS[4],
        Command::CancelShipment => CommandBody::KINDS[5],
    }
}

/// Turns the state machine's effects into outbox rows, filling payloads from the order.
/// Each message carries the `traceparent` of the span that caused it (the actor's) or,
/// when spans are not exported, the order's own. Commands name the replica that sends them,
/// `reply_to` (several replicas), in a header, so that the reply reaches the order's owner.
pub fn outbox_messages(
    order: &OrderRecord,
    effects: &[Effect],
    reply_to: Option<&str>,
) -> Result<Vec<NewMessage>, OrderError> {
    let mut out = Vec::with_capacity(effects.len());
    let traceparent = if effects.is_empty() {
        None
    } else {
        crate::telemetry::trace_context::current_traceparent()
            .or_else(|| order.trace_context.clone())
    };
    for effect in effects {
        let mut message = match *effect {
            Effect::Send(command) => {
                let body = command_body(order, command);
                let kind = body.kind();
                let envelope = Envelope::new(order.id, body);
                let mut command =
                    NewMessage::json(COMMANDS_EXCHANGE, kind, envelope.message_id, &envelope)?;
                if let Some(replica) = reply_to {
                    command
                        .headers
                        .insert(REPLY_TO_HEADER.into(), replica.to_owned());
                }
                command
            }
            Effect::Publish(event) => {
                let envelope = Envelope::new(order.id, lifecycle_body(order, event));
                NewMessage::json(
                    EVENTS_EXCHANGE,
                    event.routing_key(),
                    envelope.message_id,
                    &envelope,
                )?
            }
        };
        if let Some(traceparent) = &traceparent {
            message
                .headers
                .insert("traceparent".into(), traceparent.clone());
        }
        out.push(message);
    }
    Ok(out)
}

fn lifecycle_body(order: &OrderRecord, event: LifecycleEvent) -> OrderEventBody {
    OrderEventBody {
        kind: event.routing_key().to_owned(),
        payload: OrderEventPayload {
            status: order.saga.status,
            customer_id: order.customer_id.clone(),
            total_cents: order.total_cents,
            currency: order.currency.clone(),
            items: line_items(order),
            reason: order.saga.failure_reason.clone(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::saga::PaymentOutcome;

    #[test]
    fn each_command_travels_as_the_kind_its_body_names() {
        let (saga, _) = crate::domain::saga::start();
        let order = OrderRecord {
            id: uuid::Uuid::now_v7(),
            customer_id: "c".into(),
            currency: "USD".into(),
            total_cents: 100,
            items: Vec::new(),
            saga,
            payment_mode: Default::default(),
            version: 1,
            trace_context: None,
            timer: Default::default(),
            parked_reason: None,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        };
        let commands = [
            Command::ReserveStock,
            Command::ReleaseStock,
            Command::ChargePayment { forced: None },
            Command::ChargePayment {
                forced: Some(PaymentOutcome::Decline),
            },
            Command::RefundPayment,
            Command::ScheduleShipment,
            Command::CancelShipment,
        ];
        for command in commands {
            assert_eq!(command_kind(command), command_body(&order, command).kind());
        }
    }

    #[test]
    fn each_reply_is_named_as_it_travels() {
        let reason = || "r".to_owned();
        let replies = [
            ReplyBody::StockReserved {},
            ReplyBody::StockRejected { reason: reason() },
            ReplyBody::StockReleased {},
            ReplyBody::PaymentCharged { amount_cents: 1 },
            ReplyBody::PaymentDeclined { reason: reason() },
            ReplyBody::PaymentRefunded { amount_cents: 1 },
            ReplyBody::ShipmentScheduled {
                tracking_number: "t".into(),
            },
            ReplyBody::ShipmentFailed { reason: reason() },
            ReplyBody::ShipmentCancelled {},
        ];
        for reply in replies {
            let kind = reply.kind();
            assert_eq!(reply_kind(&event_of(reply)), Some(kind));
        }
        let admin = Event::AdminOverride {
            target: crate::domain::saga::OrderStatus::Reversed,
            reason: reason(),
        };
        assert_eq!(reply_kind(&admin), None);
    }
}
