//! The `idempotency_keys` table (Orders store): remembers each client-supplied
//! `Idempotency-Key` together with a hash of the request it came with and the
//! response that was produced, so a retried request returns the same result
//! and a reused key with a different body can be rejected.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel, Serialize, Deserialize)]
#[sea_orm(table_name = "idempotency_keys")]
pub struct Model {
    /// The client-supplied idempotency key.
    #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
    pub key: String,
    /// Hash of the request body first seen with this key.
    #[sea_orm(column_type = "Text")]
    pub request_hash: String,
    /// Order created by the request, once known.
    pub order_id: Option<Uuid>,
    /// HTTP status code of the stored response, once the request completed.
    pub response_status: Option<i32>,
    /// Body of the stored response, once the request completed.
    #[sea_orm(column_type = "Text", nullable)]
    pub response_body: Option<String>,
    pub created_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
