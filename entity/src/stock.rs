//! The `stock` table (Inventory store): one row per SKU with its catalogue name
//! and price and three counters. `available` is what can still be reserved,
//! `reserved` is held by pending reservations, and `sold` is what has been
//! committed by completed orders.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "stock")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub sku: String,
    #[sea_orm(column_type = "Text")]
    pub name: String,
    /// Unit price in minor units (cents).
    pub price_cents: i64,
    /// Units that can still be reserved.
    pub available: i64,
    /// Units held by pending reservations.
    pub reserved: i64,
    /// Units committed by completed orders.
    pub sold: i64,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
