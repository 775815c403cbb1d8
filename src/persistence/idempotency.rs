//! Idempotency keys (Stripe / IETF `Idempotency-Key` draft semantics).
//!
//! A key is claimed by inserting its row (`order_id` still empty = in flight). The order's
//! creating transaction fills in the response, so "order created" and "key completed" can
//! never disagree after a crash. A claim whose request failed (stock check, validation) is
//! released again, so the client may retry with the same key; a claim left behind by a
//! crashed process is taken over once it is older than the claim timeout
//! (`IDEMPOTENCY_CLAIM_TIMEOUT_SECS`, default [`ABANDONED_AFTER`]).

use chrono::{Duration as ChronoDuration, Utc};
use entity::idempotency_keys as keys;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    sea_query::OnConflict,
};
use uuid::Uuid;

/// Default age after which an in-flight claim is considered abandoned by a crashed request.
pub const ABANDONED_AFTER: ChronoDuration = ChronoDuration::seconds(60);

/// What to do with a request carrying an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// First use: go ahead.
    New,
    /// Same key, same body, already answered: replay this response.
    Replay { status: u16, body: String },
    /// Same key, different body.
    Mismatch,
    /// Same key, the first request is still running.
    InFlight,
}

/// Tries to claim `key` for a request whose canonical body hashes to `request_hash`.
pub async fn claim<C: ConnectionTrait>(
    db: &C,
    key: &str,
    request_hash: &str,
    retention: ChronoDuration,
    abandoned_after: ChronoDuration,
) -> Result<Claim, DbErr> {
    let now = Utc::now();
    let inserted = keys::Entity::insert(keys::ActiveModel {
        key: Set(key.to_owned()),
        request_hash: Set(request_hash.to_owned()),
        order_id: Set(None),
        response_status: Set(None),
        response_body: Set(None),
        created_at: Set(now),
    })
    .on_conflict(
        OnConflict::column(keys::Column::Key)
            .do_nothing()
            .to_owned(),
    )
    .exec_without_returning(db)
    .await?;
    if inserted == 1 {
        return Ok(Claim::New);
    }
    let Some(existing) = keys::Entity::find_by_id(key.to_owned()).one(db).await? else {
        // Deleted between our insert and read (expiry sweep): claim again once.
        return Box::pin(claim(db, key, request_hash, retention, abandoned_after)).await;
    };
    let expired = existing.created_at + retention < now;
    let abandoned =
        existing.response_status.is_none() && existing.created_at + abandoned_after < now;
    if expired || abandoned {
        // Take over: only one concurrent taker wins, thanks to the created_at guard.
        let taken = keys::Entity::update_many()
            .col_expr(keys::Column::RequestHash, request_hash.into())
            .col_expr(keys::Column::CreatedAt, now.into())
            .col_expr(keys::Column::OrderId, Option::<Uuid>::None.into())
            .col_expr(keys::Column::ResponseStatus, Option::<i32>::None.into())
            .col_expr(keys::Column::ResponseBody, Option::<String>::None.into())
            .filter(keys::Column::Key.eq(key))
            .filter(keys::Column::CreatedAt.eq(existing.created_at))
            .exec(db)
            .await?;
        return Ok(if taken.rows_affected == 1 {
            Claim::New
        } else {
            Claim::InFlight
        });
    }
    if existing.request_hash != request_hash {
        return Ok(Claim::Mismatch);
    }
    match (existing.response_status, existing.response_body) {
        (Some(status), Some(body)) => Ok(Claim::Replay {
            status: u16::try_from(status).unwrap_or(200),
            body,
        }),
        _ => Ok(Claim::InFlight),
    }
}

/// Records the response of a completed request; call in the transaction that created the order.
pub async fn complete<C: ConnectionTrait>(
    db: &C,
    key: &str,
    order_id: Uuid,
    status: u16,
    body: &str,
) -> Result<(), DbErr> {
    keys::Entity::update_many()
        .col_expr(keys::Column::OrderId, Some(order_id).into())
        .col_expr(keys::Column::ResponseStatus, Some(i32::from(status)).into())
        .col_expr(keys::Column::ResponseBody, Some(body.to_owned()).into())
        .filter(keys::Column::Key.eq(key))
        .exec(db)
        .await?;
    Ok(())
}

/// Gives a claim back after a request that changed nothing (so a retry may run again).
pub async fn release<C: ConnectionTrait>(db: &C, key: &str) -> Result<(), DbErr> {
    keys::Entity::delete_many()
        .filter(keys::Column::Key.eq(key))
        .filter(keys::Column::ResponseStatus.is_null())
        .exec(db)
        .await?;
    Ok(())
}

/// Deletes keys older than the retention; returns how many.
pub async fn sweep_expired<C: ConnectionTrait>(
    db: &C,
    retention: ChronoDuration,
) -> Result<u64, DbErr> {
    let cutoff = Utc::now() - retention;
    let res = keys::Entity::delete_many()
        .filter(keys::Column::CreatedAt.lt(cutoff))
        .exec(db)
        .await?;
    Ok(res.rows_affected)
}
