//! The `outbox` table (present in every store): transactional-outbox rows
//! written in the same database transaction as the state change they announce,
//! and later published to the message broker by a relay in `id` order. The
//! auto-increment `id` gives the publish order; `message_id` is the stable
//! message identity consumers use for de-duplication.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "outbox")]
pub struct Model {
    /// Auto-increment sequence number; defines the publish order.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Stable message identity, used by consumers for de-duplication.
    pub message_id: Uuid,
    /// Broker exchange to publish to.
    #[sea_orm(column_type = "Text")]
    pub exchange: String,
    #[sea_orm(column_type = "Text")]
    pub routing_key: String,
    /// Message body as JSON text.
    #[sea_orm(column_type = "Text")]
    pub payload: String,
    /// Extra message headers as a JSON object text.
    #[sea_orm(column_type = "Text", nullable)]
    pub headers: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
