//! Idempotency keys (Stripe / IETF `Idempotency-Key` draft semantics).
//!
//! Usually the order's own write claims its key, already answered ([`claim_answered`]; on
//! PostgreSQL inside the group commit's statement), and the order is created only if the
//! key was free. When it was not — or the stock check refused the order — the request
//! claims the key on its own first, as follows.
//!
//! A key is claimed by inserting its row (`order_id` still empty = in flight). The order's
//! creating transaction fills in the response, so "order created" and "key completed" can
//! never disagree after a crash. A claim whose request failed (stock check, validation) is
//! released again, so the client may retry with the same key; a claim left behind by a
//! crashed process is taken over once it is older than the claim timeout
//! (`IDEMPOTENCY_CLAIM_TIMEOUT_SECS`, default [`ABANDONED_AFTER`]).

use crate::batching::Coalescer;
use crate::tuning::CLAIMS_PER_INSERT;
use chrono::{Duration as ChronoDuration, Utc};
use entity::idempotency_keys as keys;
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter,
    sea_query::{OnConflict, Query},
};
use std::collections::HashSet;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
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
    let free = insert_if_free(
        db,
        keys::ActiveModel {
            key: Set(key.to_owned()),
            request_hash: Set(request_hash.to_owned()),
            order_id: Set(None),
            response_status: Set(None),
            response_body: Set(None),
            created_at: Set(Utc::now()),
        },
    )
    .await?;
    if free {
        return Ok(Claim::New);
    }
    decide_taken(db, key, request_hash, retention, abandoned_after).await
}

/// [`claim`] for a key whose row already exists: replay, mismatch, in flight, or a take-over
/// of an expired or abandoned claim.
async fn decide_taken<C: ConnectionTrait>(
    db: &C,
    key: &str,
    request_hash: &str,
    retention: ChronoDuration,
    abandoned_after: ChronoDuration,
) -> Result<Claim, DbErr> {
    let now = Utc::now();
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

/// The claims of concurrent requests, made together: every claim that arrives while the
/// previous statement runs goes into one multi-row `INSERT … ON CONFLICT DO NOTHING
/// RETURNING key` (one statement, one commit for all). The keys it inserted are new; every
/// other (a replay, a mismatch, a key in flight, all but the first of equal keys in the
/// batch) is then decided from its stored row as for a single request; every claim of a
/// batch whose statement failed goes through [`claim`] on its own.
#[derive(Clone)]
pub struct Claims(Coalescer<(String, String), Result<Claim, DbErr>>);

impl Claims {
    pub fn start(
        db: DatabaseConnection,
        retention: ChronoDuration,
        abandoned_after: ChronoDuration,
    ) -> Self {
        Claims(Coalescer::start(
            CLAIMS_PER_INSERT,
            move |batch: Vec<(String, String)>| {
                let db = db.clone();
                async move {
                    // If the statement fails (database away), each claim is tried on its
                    // own and fails with its own error.
                    let inserted = insert_new(&db, &batch).await.ok();
                    let mut answered = HashSet::new();
                    let answers = batch.iter().map(|(key, hash)| {
                        let new = inserted
                            .as_ref()
                            .map(|keys| keys.contains(key) && answered.insert(key.as_str()));
                        let db = &db;
                        async move {
                            match new {
                                Some(true) => Ok(Claim::New),
                                // The row exists (another request's, or this batch's first).
                                Some(false) => {
                                    decide_taken(db, key, hash, retention, abandoned_after).await
                                }
                                None => claim(db, key, hash, retention, abandoned_after).await,
                            }
                        }
                    });
                    futures::future::join_all(answers).await
                }
            },
        ))
    }

    /// [`claim`], coalesced with the concurrent ones.
    pub async fn claim(&self, key: &str, request_hash: &str) -> Result<Claim, DbErr> {
        self.0
            .call((key.to_owned(), request_hash.to_owned()))
            .await
            .unwrap_or_else(|| Err(DbErr::Custom("the idempotency claimer has stopped".into())))
    }
}

/// Inserts the claims whose keys are free; returns those keys.
async fn insert_new<C: ConnectionTrait>(
    db: &C,
    claims: &[(String, String)],
) -> Result<HashSet<String>, DbErr> {
    let now = Utc::now();
    let mut insert = Query::insert();
    insert.into_table(keys::Entity).columns([
        keys::Column::Key,
        keys::Column::RequestHash,
        keys::Column::CreatedAt,
    ]);
    // Keys in sorted order, like the group commit's key inserts: two statements inserting
    // the same keys concurrently then wait for each other instead of deadlocking. The sort
    // is stable, so of equal keys the first claim is still inserted first.
    let mut sorted: Vec<&(String, String)> = claims.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));
    for (key, hash) in sorted {
        insert
            .values([key.clone().into(), hash.clone().into(), now.into()])
            .map_err(|e| DbErr::Custom(e.to_string()))?;
    }
    insert
        .on_conflict(
            OnConflict::column(keys::Column::Key)
                .do_nothing()
                .to_owned(),
        )
        .returning_col(keys::Column::Key);
    let rows = db
        .query_all_raw(db.get_database_backend().build(&insert))
        .await?;
    rows.iter()
        .map(|row| row.try_get::<String>("", "key"))
        .collect()
}

/// The response of a request that created an order, for its key.
pub struct Completed<'a> {
    pub key: &'a str,
    pub order_id: Uuid,
    pub status: u16,
    pub body: &'a str,
}

/// Records the responses of completed requests; call in the transaction that created the
/// orders, so "order created" and "key completed" commit together. (On PostgreSQL the
/// group commit's one statement does this itself: `orders::save_batch`.)
pub async fn complete_all<C: ConnectionTrait>(db: &C, done: &[Completed<'_>]) -> Result<(), DbErr> {
    for d in done {
        keys::Entity::update_many()
            .col_expr(keys::Column::OrderId, Some(d.order_id).into())
            .col_expr(
                keys::Column::ResponseStatus,
                Some(i32::from(d.status)).into(),
            )
            .col_expr(keys::Column::ResponseBody, Some(d.body.to_owned()).into())
            .filter(keys::Column::Key.eq(d.key))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// Claims `done.key` already answered (the create that claims its key with the order,
/// in the order's transaction): inserts the key with its response unless it exists.
/// Returns whether it was free. (On PostgreSQL the group commit's one statement does this
/// itself: `orders::save_batch`.)
pub async fn claim_answered<C: ConnectionTrait>(
    db: &C,
    done: &Completed<'_>,
    request_hash: &str,
) -> Result<bool, DbErr> {
    insert_if_free(
        db,
        keys::ActiveModel {
            key: Set(done.key.to_owned()),
            request_hash: Set(request_hash.to_owned()),
            order_id: Set(Some(done.order_id)),
            response_status: Set(Some(i32::from(done.status))),
            response_body: Set(Some(done.body.to_owned())),
            created_at: Set(Utc::now()),
        },
    )
    .await
}

/// Inserts the key's row unless the key exists; returns whether it did.
async fn insert_if_free<C: ConnectionTrait>(db: &C, row: keys::ActiveModel) -> Result<bool, DbErr> {
    let inserted = keys::Entity::insert(row)
        .on_conflict(
            OnConflict::column(keys::Column::Key)
                .do_nothing()
                .to_owned(),
        )
        .exec_without_returning(db)
        .await?;
    Ok(inserted == 1)
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

/// Deletes idempotency keys past their retention, every half retention (at most hourly).
pub async fn run_sweeper(db: DatabaseConnection, retention: Duration, shutdown: CancellationToken) {
    let every = (retention / 2).clamp(Duration::from_secs(1), Duration::from_secs(3600));
    let retention = chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::hours(24));
    loop {
        if !crate::pause::sleep_or_shutdown(&shutdown, every).await {
            return;
        }
        match sweep_expired(&db, retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, "expired idempotency keys swept"),
            Err(error) => tracing::warn!(%error, "idempotency key sweep failed"),
        }
    }
}
