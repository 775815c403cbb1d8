//! The `payments` table (Payment store): one payment per order, keyed by the
//! order id so that a redelivered charge or refund command is idempotent. The
//! amount is in cents in the given currency.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "payments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub order_id: Uuid,
    #[sea_orm(column_type = "Text")]
    pub status: String,
    /// Charged amount in minor units (cents).
    pub amount_cents: i64,
    /// ISO 4217 currency code of `amount_cents`.
    #[sea_orm(column_type = "Text")]
    pub currency: String,
    /// Why the payment was declined or refunded, if it was.
    #[sea_orm(column_type = "Text", nullable)]
    pub reason: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
