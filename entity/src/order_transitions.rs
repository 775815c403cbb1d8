//! The `order_transitions` table (Orders store): an append-only audit log of
//! every status change of an order, ordered by the auto-increment `id`. Each
//! row records the status before and after, the saga event that caused the
//! change and a free-text reason.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "order_transitions")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub order_id: Uuid,
    /// Status before the transition; `None` for the initial creation.
    #[sea_orm(column_type = "Text", nullable)]
    pub from_status: Option<String>,
    #[sea_orm(column_type = "Text")]
    pub to_status: String,
    /// Name of the saga event that caused the transition.
    #[sea_orm(column_type = "Text")]
    pub event: String,
    #[sea_orm(column_type = "Text")]
    pub reason: String,
    /// When the transition happened.
    pub at: DateTimeUtc,
    /// The fencing epoch of the order's partition this transition was committed under
    /// (several replicas); `None` when one process owns every order.
    pub epoch: Option<i64>,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
