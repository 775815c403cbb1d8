//! The `shipments` table (Shipping store): one shipment per order, keyed by the
//! order id so that a redelivered ship command is idempotent. The tracking
//! number is assigned once the shipment has been created.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "shipments")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub order_id: Uuid,
    #[sea_orm(column_type = "Text")]
    pub status: String,
    /// Carrier tracking number, once the shipment has been created.
    #[sea_orm(column_type = "Text", nullable)]
    pub tracking_number: Option<String>,
    /// Why the shipment failed or was cancelled, if it was.
    #[sea_orm(column_type = "Text", nullable)]
    pub reason: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
