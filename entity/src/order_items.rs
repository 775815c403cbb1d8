//! The `order_items` table (Orders store): the line items of an order, keyed by
//! the composite primary key (`order_id`, `line_no`). Prices are captured at
//! order time in cents so later stock price changes do not alter the order.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "order_items")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub order_id: Uuid,
    /// Position of the line within its order, starting at 1.
    #[sea_orm(primary_key, auto_increment = false)]
    pub line_no: i32,
    #[sea_orm(column_type = "Text")]
    pub sku: String,
    pub quantity: i32,
    /// Unit price in minor units (cents) at the time the order was placed.
    pub unit_price_cents: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
