//! Transactional outbox: messages are inserted in the same transaction as the state change
//! that causes them, and the relay ([`crate::messaging::relay`]) publishes them afterwards.
//! A crash between commit and publish loses nothing: the rows are still there.

use crate::messaging::OutgoingMessage;
use chrono::Utc;
use entity::outbox;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionSession, TransactionTrait,
};
use serde::Serialize;
use std::collections::BTreeMap;
use uuid::Uuid;

/// A message waiting to be written to the outbox.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub message_id: Uuid,
    pub exchange: &'static str,
    pub routing_key: String,
    pub payload: String,
    pub headers: BTreeMap<String, String>,
}

impl NewMessage {
    /// Serializes `envelope`; `message_id` must be the envelope's own id.
    pub fn json<T: Serialize>(
        exchange: &'static str,
        routing_key: impl Into<String>,
        message_id: Uuid,
        envelope: &T,
    ) -> Result<Self, DbErr> {
        let payload = serde_json::to_string(envelope)
            .map_err(|e| DbErr::Custom(format!("serializing outbox message: {e}")))?;
        Ok(NewMessage {
            message_id,
            exchange,
            routing_key: routing_key.into(),
            payload,
            headers: BTreeMap::new(),
        })
    }
}

/// Inserts the messages; call inside the transaction of the state change.
pub async fn enqueue<C: ConnectionTrait>(db: &C, messages: &[NewMessage]) -> Result<(), DbErr> {
    enqueue_all(db, messages.iter().collect()).await
}

/// Rows per multi-row INSERT (6 bind parameters each): far below every backend's limit.
const ROWS_PER_INSERT: usize = 1000;

/// [`enqueue`] for messages gathered from several writes.
pub async fn enqueue_all<C: ConnectionTrait>(
    db: &C,
    messages: Vec<&NewMessage>,
) -> Result<(), DbErr> {
    for chunk in messages.chunks(ROWS_PER_INSERT) {
        insert_rows(db, chunk).await?;
    }
    Ok(())
}

async fn insert_rows<C: ConnectionTrait>(db: &C, messages: &[&NewMessage]) -> Result<(), DbErr> {
    if messages.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    let rows = messages.iter().map(|m| outbox::ActiveModel {
        id: NotSet,
        message_id: Set(m.message_id),
        exchange: Set(m.exchange.to_owned()),
        routing_key: Set(m.routing_key.clone()),
        payload: Set(m.payload.clone()),
        headers: Set(if m.headers.is_empty() {
            None
        } else {
            serde_json::to_string(&m.headers).ok()
        }),
        created_at: Set(now),
    });
    outbox::Entity::insert_many(rows)
        .exec_without_returning(db)
        .await?;
    Ok(())
}

/// The oldest unsent messages, in insertion order (per-order ordering is kept).
pub async fn fetch_batch<C: ConnectionTrait>(
    db: &C,
    limit: u64,
) -> Result<Vec<outbox::Model>, DbErr> {
    outbox::Entity::find()
        .order_by_asc(outbox::Column::Id)
        .limit(limit)
        .all(db)
        .await
}

/// Removes messages the broker has confirmed.
///
/// On PostgreSQL this one transaction commits asynchronously (`synchronous_commit = off`,
/// for this transaction only): it does not wait for its WAL flush. If a crash loses the
/// delete, the rows are published again after the restart — a duplicate every consumer
/// already recognises — so nothing is lost and no effect doubles, while every saga hop
/// saves one fsync wait. All state changes keep `synchronous_commit` on.
pub async fn delete_sent<C: TransactionTrait>(db: &C, ids: Vec<i64>) -> Result<(), DbErr> {
    if ids.is_empty() {
        return Ok(());
    }
    let txn = db.begin().await?;
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared("SET LOCAL synchronous_commit = off")
            .await?;
    }
    outbox::Entity::delete_many()
        .filter(outbox::Column::Id.is_in(ids))
        .exec(&txn)
        .await?;
    txn.commit().await
}

/// Number of unsent messages (backlog), for health and metrics.
pub async fn backlog<C: ConnectionTrait>(db: &C) -> Result<u64, DbErr> {
    use sea_orm::PaginatorTrait;
    outbox::Entity::find().count(db).await
}

/// The bus form of a stored row.
pub fn to_outgoing(row: &outbox::Model) -> OutgoingMessage {
    let headers = row
        .headers
        .as_deref()
        .and_then(|h| serde_json::from_str(h).ok())
        .unwrap_or_default();
    OutgoingMessage {
        exchange: row.exchange.clone(),
        routing_key: row.routing_key.clone(),
        message_id: row.message_id,
        kind: row.routing_key.clone(),
        payload: row.payload.clone().into_bytes(),
        headers,
    }
}
