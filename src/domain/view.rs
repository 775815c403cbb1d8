//! What an order looks like to a reader: the API's order and list entries, the answer an
//! idempotent replay repeats, and what a long poll hands over. Built from the stored order
//! (`persistence::orders`); no I/O here.

use crate::domain::saga::{OrderStatus, PaymentState, ReservationState, ShipmentState};
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

/// One priced line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OrderLine {
    pub sku: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
}

/// One row of the transition history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct HistoryEntry {
    // Absent rather than null when there is none.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub from: Option<OrderStatus>,
    pub status: OrderStatus,
    pub event: String,
    pub reason: String,
    pub at: DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ItemView {
    pub sku: String,
    pub quantity: i64,
    pub unit_price_cents: i64,
    pub line_total_cents: i64,
}

/// State of each saga step, as shown by the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StepsView {
    #[schema(value_type = ReservationState)]
    pub reservation: &'static str,
    #[schema(value_type = PaymentState)]
    pub payment: &'static str,
    #[schema(value_type = ShipmentState)]
    pub shipment: &'static str,
}

/// The API representation of one order (`GET /api/orders/:id`, and the create response).
// Named `Order` in the OpenAPI document: the resource of `/api/orders`, which is also how
// tools that infer dependencies from names (schemathesis) see that creating an order
// needs no other resource first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[schema(as = Order)]
pub struct OrderDetails {
    pub id: Uuid,
    pub customer_id: String,
    pub status: OrderStatus,
    pub currency: String,
    pub total_cents: i64,
    pub items: Vec<ItemView>,
    pub steps: StepsView,
    #[schema(required = true)]
    pub failure_reason: Option<String>,
    /// Why the order is parked (crash loop), if it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parked_reason: Option<String>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub history: Vec<HistoryEntry>,
}

/// One line of `GET /api/orders`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct OrderSummary {
    pub id: Uuid,
    pub customer_id: String,
    pub status: OrderStatus,
    pub total_cents: i64,
    pub currency: String,
    #[schema(required = true)]
    pub failure_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}
