//! The `orders` table (Orders store): one row per customer order, holding the
//! aggregate saga status together with the per-step sub-states for the
//! inventory reservation, payment and shipment. Every update is fenced by the
//! optimistic-lock `version` column, and `step_deadline_at` lets a sweeper find
//! orders whose current saga step has timed out.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "orders")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    #[sea_orm(column_type = "Text")]
    pub customer_id: String,
    /// ISO 4217 currency code of `total_cents`.
    #[sea_orm(column_type = "Text")]
    pub currency: String,
    /// Order total in minor units (cents).
    pub total_cents: i64,
    /// Aggregate saga status of the order.
    #[sea_orm(column_type = "Text")]
    pub status: String,
    /// Sub-state of the inventory reservation step.
    #[sea_orm(column_type = "Text")]
    pub reservation_state: String,
    /// Sub-state of the payment step.
    #[sea_orm(column_type = "Text")]
    pub payment_state: String,
    /// Sub-state of the shipment step.
    #[sea_orm(column_type = "Text")]
    pub shipment_state: String,
    /// Human-readable reason when the order failed or was compensated.
    #[sea_orm(column_type = "Text", nullable)]
    pub failure_reason: Option<String>,
    /// How the payment step is to be carried out (e.g. which payment flow).
    #[sea_orm(column_type = "Text")]
    pub payment_mode: String,
    /// Optimistic-lock fence: checked and incremented on every update.
    pub version: i64,
    /// When the current saga step times out; `None` when no step is pending.
    pub step_deadline_at: Option<DateTimeUtc>,
    /// Number of attempts made for the current saga step.
    pub step_attempts: i32,
    /// W3C `traceparent` of the request that created the order.
    #[sea_orm(column_type = "Text", nullable)]
    pub trace_context: Option<String>,
    /// Set when the supervisor gave up restarting this order's actor (crash loop): the
    /// order is left alone until an operator looks at it.
    #[sea_orm(column_type = "Text", nullable)]
    pub parked_reason: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
