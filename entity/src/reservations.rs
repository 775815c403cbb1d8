//! The `reservations` table (Inventory store): one stock reservation per order,
//! keyed by the order id so that a redelivered reserve command is idempotent.
//! The reserved lines are kept as JSON text so that a release or commit can
//! restore exactly what was taken.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "reservations")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub order_id: Uuid,
    #[sea_orm(column_type = "Text")]
    pub status: String,
    /// Reserved lines (SKU and quantity) as JSON text.
    #[sea_orm(column_type = "Text")]
    pub items: String,
    /// Why the reservation was rejected or released, if it was.
    #[sea_orm(column_type = "Text", nullable)]
    pub reason: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
