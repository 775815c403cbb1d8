//! Wire schema of everything that crosses the bus: commands to participants, their
//! replies, and lifecycle events. Every message is a JSON [`Envelope`] carrying a stable
//! `type` (also the routing key and the AMQP `type` property) and a schema `version`, so a
//! consumer can reject what it does not understand instead of misreading it.

use crate::domain::saga::{OrderStatus, PaymentOutcome};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Version of the envelope and payload schema below. Bump on incompatible change.
pub const SCHEMA_VERSION: u16 = 1;

/// Common frame of every message. `body` is flattened, so the JSON reads
/// `{"message_id":…,"order_id":…,"occurred_at":…,"version":1,"type":"stock.reserve","payload":{…}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    pub message_id: Uuid,
    pub order_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub version: u16,
    #[serde(flatten)]
    pub body: T,
}

impl<T> Envelope<T> {
    pub fn new(order_id: Uuid, body: T) -> Self {
        Envelope {
            message_id: Uuid::now_v7(),
            order_id,
            occurred_at: Utc::now(),
            version: SCHEMA_VERSION,
            body,
        }
    }
}

/// One line of an order as the participants see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LineItem {
    pub sku: String,
    pub quantity: i64,
}

/// Commands from the orchestrator to a participant (`order.commands` exchange).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload", deny_unknown_fields)]
pub enum CommandBody {
    #[serde(rename = "stock.reserve")]
    ReserveStock { items: Vec<LineItem> },
    #[serde(rename = "stock.release")]
    ReleaseStock {},
    #[serde(rename = "payment.charge")]
    ChargePayment {
        amount_cents: i64,
        currency: String,
        /// Dev pay endpoint only: forces the mock gateway's answer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        forced: Option<PaymentOutcome>,
    },
    #[serde(rename = "payment.refund")]
    RefundPayment {},
    #[serde(rename = "shipping.schedule")]
    ScheduleShipment { items: Vec<LineItem> },
    #[serde(rename = "shipping.cancel")]
    CancelShipment {},
}

/// Replies from a participant to the orchestrator (`order.replies` exchange).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", content = "payload", deny_unknown_fields)]
pub enum ReplyBody {
    #[serde(rename = "stock.reserved")]
    StockReserved {},
    #[serde(rename = "stock.rejected")]
    StockRejected { reason: String },
    #[serde(rename = "stock.released")]
    StockReleased {},
    #[serde(rename = "payment.charged")]
    PaymentCharged { amount_cents: i64 },
    #[serde(rename = "payment.declined")]
    PaymentDeclined { reason: String },
    #[serde(rename = "payment.refunded")]
    PaymentRefunded { amount_cents: i64 },
    #[serde(rename = "shipping.scheduled")]
    ShipmentScheduled { tracking_number: String },
    #[serde(rename = "shipping.failed")]
    ShipmentFailed { reason: String },
    #[serde(rename = "shipping.cancelled")]
    ShipmentCancelled {},
}

/// Lifecycle events on the `order.events` topic exchange, for any subscriber.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderEventBody {
    /// Same as the routing key, e.g. `order.confirmed`.
    #[serde(rename = "type")]
    pub kind: String,
    pub payload: OrderEventPayload,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OrderEventPayload {
    pub status: OrderStatus,
    pub customer_id: String,
    pub total_cents: i64,
    pub currency: String,
    pub items: Vec<LineItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl CommandBody {
    /// Every command's [`kind`](CommandBody::kind), in declaration order.
    pub const KINDS: [&'static str; 6] = [
        "stock.reserve",
        "stock.release",
        "payment.charge",
        "payment.refund",
        "shipping.schedule",
        "shipping.cancel",
    ];

    /// The stable message type, also used as routing key.
    pub fn kind(&self) -> &'static str {
        match self {
            CommandBody::ReserveStock { .. } => "stock.reserve",
            CommandBody::ReleaseStock {} => "stock.release",
            CommandBody::ChargePayment { .. } => "payment.charge",
            CommandBody::RefundPayment {} => "payment.refund",
            CommandBody::ScheduleShipment { .. } => "shipping.schedule",
            CommandBody::CancelShipment {} => "shipping.cancel",
        }
    }
}

impl ReplyBody {
    /// The stable message type, also used as routing key.
    pub fn kind(&self) -> &'static str {
        match self {
            ReplyBody::StockReserved {} => "stock.reserved",
            ReplyBody::StockRejected { .. } => "stock.rejected",
            ReplyBody::StockReleased {} => "stock.released",
            ReplyBody::PaymentCharged { .. } => "payment.charged",
            ReplyBody::PaymentDeclined { .. } => "payment.declined",
            ReplyBody::PaymentRefunded { .. } => "payment.refunded",
            ReplyBody::ShipmentScheduled { .. } => "shipping.scheduled",
            ReplyBody::ShipmentFailed { .. } => "shipping.failed",
            ReplyBody::ShipmentCancelled {} => "shipping.cancelled",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One command of each kind. The match stops compiling when a variant is added: list it
    /// here too, and its kind in `CommandBody::KINDS`.
    fn one_command_of_each_kind() -> Vec<CommandBody> {
        let commands = vec![
            CommandBody::ReserveStock { items: Vec::new() },
            CommandBody::ReleaseStock {},
            CommandBody::ChargePayment {
                amount_cents: 0,
                currency: String::new(),
                forced: None,
            },
            CommandBody::RefundPayment {},
            CommandBody::ScheduleShipment { items: Vec::new() },
            CommandBody::CancelShipment {},
        ];
        for command in &commands {
            match command {
                CommandBody::ReserveStock { .. }
                | CommandBody::ReleaseStock {}
                | CommandBody::ChargePayment { .. }
                | CommandBody::RefundPayment {}
                | CommandBody::ScheduleShipment { .. }
                | CommandBody::CancelShipment {} => {}
            }
        }
        commands
    }

    #[test]
    fn the_command_kinds_are_those_of_every_kind_of_command() {
        let kinds: Vec<_> = one_command_of_each_kind()
            .iter()
            .map(CommandBody::kind)
            .collect();
        assert_eq!(kinds, CommandBody::KINDS);
        for command in one_command_of_each_kind() {
            let json = serde_json::to_value(Envelope::new(Uuid::now_v7(), command.clone()))
                .expect("serializes");
            assert_eq!(json["type"], command.kind(), "the wire type is the kind");
        }
    }

    #[test]
    fn a_command_round_trips_with_its_type_beside_the_envelope_fields() {
        let order_id = Uuid::now_v7();
        let msg = Envelope::new(
            order_id,
            CommandBody::ChargePayment {
                amount_cents: 1250,
                currency: "USD".into(),
                forced: Some(PaymentOutcome::Decline),
            },
        );
        let json = serde_json::to_value(&msg).expect("serializes");
        assert_eq!(json["type"], "payment.charge");
        assert_eq!(json["payload"]["amount_cents"], 1250);
        assert_eq!(json["version"], 1);
        let back: Envelope<CommandBody> = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, msg);
    }

    #[test]
    fn an_unknown_reply_type_is_an_error_not_a_default() {
        let json = serde_json::json!({
            "message_id": Uuid::now_v7(), "order_id": Uuid::now_v7(),
            "occurred_at": "2026-01-01T00:00:00Z", "version": 1,
            "type": "stock.teleported", "payload": {}
        });
        assert!(serde_json::from_value::<Envelope<ReplyBody>>(json).is_err());
    }

    #[test]
    fn a_unit_like_reply_round_trips() {
        let msg = Envelope::new(Uuid::now_v7(), ReplyBody::StockReleased {});
        let bytes = serde_json::to_vec(&msg).expect("serializes");
        let back: Envelope<ReplyBody> = serde_json::from_slice(&bytes).expect("deserializes");
        assert_eq!(back.body.kind(), "stock.released");
    }
}
