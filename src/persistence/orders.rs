//! Orders repository: the orchestrator's own tables (orders, items, transition history).
//!
//! Every write goes through an order actor, which serializes them per order; the
//! `version` column is checked on every update anyway, as a fence against a second owner
//! (another replica, a stale actor) — a lost race is a [`SaveError::Conflict`], never a
//! silent overwrite. No row locks are taken.

use crate::domain::saga::{
    OrderStatus, PaymentMode, PaymentState, ReservationState, Saga, ShipmentState,
};
use crate::domain::view::{
    HistoryEntry, ItemView, OrderDetails, OrderLine, OrderSummary, StepsView,
};
pub use crate::persistence::Partitions;
use crate::persistence::{idempotency, outbox};
use chrono::{DateTime, Utc};
use entity::{order_items, order_transitions, orders};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, QueryTrait, SelectGetableTuple, Selector, TransactionSession, TransactionTrait,
};
use std::collections::HashSet;
use uuid::Uuid;

mod one_statement;

/// An order as its actor holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderRecord {
    pub id: Uuid,
    pub customer_id: String,
    pub currency: String,
    pub total_cents: i64,
    pub items: Vec<OrderLine>,
    pub saga: Saga,
    pub payment_mode: PaymentMode,
    /// Optimistic-lock fence: incremented by every update.
    pub version: i64,
    pub trace_context: Option<String>,
    /// The step deadline and how many times the pending commands were resent.
    pub timer: StepTimer,
    /// Set when the supervisor gave up on this order after a crash loop.
    pub parked_reason: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// When the pending step times out, stored with the order so timers survive restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StepTimer {
    /// `None`: nothing is awaited from a participant.
    pub deadline: Option<DateTime<Utc>>,
    /// Resends of the pending commands so far.
    pub attempts: i32,
}

#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("order {0} was changed by someone else (version fence)")]
    Conflict(Uuid),
    /// A create that was to claim its idempotency key found the key taken: nothing of the
    /// order was written.
    #[error("the idempotency key of order {0} is already taken")]
    KeyTaken(Uuid),
    /// The order's partition is not (or no longer) this replica's: nothing was written.
    #[error("order {0} is in a partition this replica does not own (ownership fence)")]
    Fenced(Uuid),
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// The partitions a batch may write, each with the epoch this replica holds it under
/// (several replicas, [`crate::persistence::ownership`]). A write of an order in another
/// partition, or in one whose epoch has moved on (acquired by another replica since),
/// changes nothing and fails with [`SaveError::Fenced`]. Checked in the batch's own
/// statement on PostgreSQL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fence {
    pub partitions: u16,
    /// (partition, epoch), each partition once.
    pub held: Vec<(u16, i64)>,
}

impl Fence {
    fn partition(&self, id: Uuid) -> u16 {
        crate::domain::partition::partition_of(id, self.partitions)
    }

    /// The epoch the order's partition is held under, if it is.
    fn epoch_of(&self, id: Uuid) -> Option<i64> {
        let partition = self.partition(id);
        self.held
            .iter()
            .find(|(p, _)| *p == partition)
            .map(|&(_, e)| e)
    }
}

/// The response stored under an idempotency key by the creating transaction.
#[derive(Debug, Clone)]
pub struct IdempotencyCompletion {
    pub key: String,
    pub status: u16,
    pub body: String,
    /// `Some(request hash)`: the key was not claimed beforehand; this write claims it
    /// (inserts it, answered) and the order is created only if the key was free — otherwise
    /// the write changes nothing and fails with [`SaveError::KeyTaken`]. `None`: the request
    /// claimed the key first ([`crate::persistence::idempotency::claim`]); this write fills
    /// in its response.
    pub claims_with_hash: Option<String>,
}

/// One write of an order actor. The group-commit writer
/// ([`crate::persistence::group_commit`]) applies many of them in one transaction.
#[derive(Debug, Clone)]
pub enum OrderWrite {
    /// A new order with its first history entry, its outbox messages and (optionally) the
    /// idempotency key's response.
    Create {
        order: Box<OrderRecord>,
        entry: HistoryEntry,
        messages: Vec<outbox::NewMessage>,
        idempotency: Option<IdempotencyCompletion>,
    },
    /// One transition: the new saga state (fenced by `expected_version`), its history
    /// entry and its outbox messages.
    Transition {
        order_id: Uuid,
        expected_version: i64,
        saga: Saga,
        timer: StepTimer,
        entry: HistoryEntry,
        messages: Vec<outbox::NewMessage>,
    },
    /// A retry of the pending step: the new timer and the resent commands (no status
    /// change, no history entry), fenced like every update.
    Retry {
        order_id: Uuid,
        expected_version: i64,
        timer: StepTimer,
        messages: Vec<outbox::NewMessage>,
    },
}

impl OrderWrite {
    pub fn order_id(&self) -> Uuid {
        match self {
            OrderWrite::Create { order, .. } => order.id,
            OrderWrite::Transition { order_id, .. } | OrderWrite::Retry { order_id, .. } => {
                *order_id
            }
        }
    }

    /// The key this write claims with the order, and the request's hash: a create whose
    /// key was not claimed beforehand (the order is created only if the key is free).
    fn key_claim(&self) -> Option<(&IdempotencyCompletion, &str)> {
        match self {
            OrderWrite::Create {
                idempotency: Some(done),
                ..
            } => done.claims_with_hash.as_deref().map(|hash| (done, hash)),
            _ => None,
        }
    }

    pub fn has_messages(&self) -> bool {
        match self {
            OrderWrite::Create { messages, .. }
            | OrderWrite::Transition { messages, .. }
            | OrderWrite::Retry { messages, .. } => !messages.is_empty(),
        }
    }
}

impl OrderRecord {
    pub fn details(&self, history: Vec<HistoryEntry>) -> OrderDetails {
        OrderDetails {
            id: self.id,
            customer_id: self.customer_id.clone(),
            status: self.saga.status,
            currency: self.currency.clone(),
            total_cents: self.total_cents,
            items: self
                .items
                .iter()
                .map(|l| ItemView {
                    sku: l.sku.clone(),
                    quantity: l.quantity,
                    unit_price_cents: l.unit_price_cents,
                    line_total_cents: l.quantity.saturating_mul(l.unit_price_cents),
                })
                .collect(),
            steps: StepsView {
                reservation: self.saga.reservation.as_str(),
                payment: self.saga.payment.as_str(),
                shipment: self.saga.shipment.as_str(),
            },
            failure_reason: self.saga.failure_reason.clone(),
            parked_reason: self.parked_reason.clone(),
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            history,
        }
    }
}

/// Text in a status column that no enum variant spells: corrupt data, which nobody handles
/// apart from failing the request (hence no dedicated error type).
fn corrupt(what: &str, value: &str) -> DbErr {
    DbErr::Custom(format!("unreadable {what} {value:?} stored for an order"))
}

pub(crate) fn parse_status(text: &str) -> Result<OrderStatus, DbErr> {
    OrderStatus::parse(text).ok_or_else(|| corrupt("status", text))
}

fn saga_of(row: &orders::Model) -> Result<Saga, DbErr> {
    Ok(Saga {
        status: parse_status(&row.status)?,
        reservation: ReservationState::parse(&row.reservation_state)
            .ok_or_else(|| corrupt("reservation_state", &row.reservation_state))?,
        payment: PaymentState::parse(&row.payment_state)
            .ok_or_else(|| corrupt("payment_state", &row.payment_state))?,
        shipment: ShipmentState::parse(&row.shipment_state)
            .ok_or_else(|| corrupt("shipment_state", &row.shipment_state))?,
        failure_reason: row.failure_reason.clone(),
    })
}

fn payment_mode_str(mode: PaymentMode) -> &'static str {
    match mode {
        PaymentMode::Auto => "auto",
        PaymentMode::Manual => "manual",
    }
}

fn history_row(
    order_id: Uuid,
    entry: &HistoryEntry,
    epoch: Option<i64>,
) -> order_transitions::ActiveModel {
    order_transitions::ActiveModel {
        id: NotSet,
        order_id: Set(order_id),
        from_status: Set(entry.from.map(|s| s.as_str().to_owned())),
        to_status: Set(entry.status.as_str().to_owned()),
        event: Set(entry.event.clone()),
        reason: Set(entry.reason.clone()),
        at: Set(entry.at),
        epoch: Set(epoch),
    }
}

/// Rows per multi-row INSERT: well under PostgreSQL's 65,535 and SQLite's 32,766 bind
/// parameters for every table here.
const ROWS_PER_INSERT: usize = 500;

/// Applies `writes` atomically: on PostgreSQL as one statement ([`one_statement`]); on
/// SQLite in one transaction, every fenced update first (one statement each), then one
/// multi-row INSERT per table for the new orders, their items, all history entries and
/// all outbox messages. Returns, per write, the order's new version or
/// [`SaveError::Conflict`] when its version fence failed (that write then changes
/// nothing; the others still commit). A database error fails the whole transaction.
pub async fn save_batch<C: TransactionTrait + ConnectionTrait>(
    db: &C,
    writes: &[OrderWrite],
) -> Result<SavedBatch, DbErr> {
    save_batch_fenced(db, writes, None).await
}

/// [`save_batch`] where each write also needs its order's partition held under the epoch
/// in `fence` (PostgreSQL only: one process owns everything on SQLite).
pub async fn save_batch_fenced<C: TransactionTrait + ConnectionTrait>(
    db: &C,
    writes: &[OrderWrite],
    fence: Option<&Fence>,
) -> Result<SavedBatch, DbErr> {
    if db.get_database_backend() == DbBackend::Postgres {
        let mut saved = one_statement::save_batch(db, writes, fence).await?;
        if let Some(fence) = fence {
            tell_fenced(db, writes, fence, &mut saved.results).await?;
        }
        return Ok(saved);
    }
    let txn = db.begin().await?;
    let rows = BatchRows::of(writes, None);
    // First every fenced update and key claim (they decide which writes stand)...
    let mut held = FencedUpdate::apply_all(&txn, &rows.updates).await?;
    for &(order_id, done, hash) in &rows.claims {
        if idempotency::claim_answered(&txn, &completed(order_id, done), hash).await? {
            held.insert(order_id);
        }
    }
    // ...then the rows of the writes that stand.
    let standing: Vec<&OrderRecord> = rows
        .new_orders
        .iter()
        .filter(|o| o.stands(&held))
        .map(|o| o.row)
        .collect();
    held.extend(standing.iter().map(|o| o.id));
    let new_orders: Vec<_> = standing.iter().map(|o| order_row(o)).collect();
    let lines: Vec<_> = standing.iter().flat_map(|o| item_rows(o)).collect();
    let history: Vec<_> = rows
        .history
        .iter()
        .filter(|h| h.stands(&held))
        .map(|h| history_row(h.order_id, h.row, h.epoch))
        .collect();
    let messages: Vec<&outbox::NewMessage> = rows
        .messages
        .iter()
        .filter(|m| m.stands(&held))
        .map(|m| m.row)
        .collect();
    // Parents before children: items and history reference their order.
    for chunk in new_orders.chunks(ROWS_PER_INSERT) {
        orders::Entity::insert_many(chunk.iter().cloned())
            .exec_without_returning(&txn)
            .await?;
    }
    for chunk in lines.chunks(ROWS_PER_INSERT) {
        order_items::Entity::insert_many(chunk.iter().cloned())
            .exec_without_returning(&txn)
            .await?;
    }
    for chunk in history.chunks(ROWS_PER_INSERT) {
        order_transitions::Entity::insert_many(chunk.iter().cloned())
            .exec_without_returning(&txn)
            .await?;
    }
    let outbox_rows = outbox::enqueue_all(&txn, messages).await?;
    let completions: Vec<idempotency::Completed> = rows
        .completions
        .iter()
        .map(|&(order_id, done)| completed(order_id, done))
        .collect();
    idempotency::complete_all(&txn, &completions).await?;
    txn.commit().await?;
    Ok(SavedBatch {
        results: results(writes, &held),
        outbox_rows,
    })
}

/// Tells a write refused by the ownership fence from a version conflict or a taken key:
/// its partition was not in `fence`, or its epoch has moved on. Read only when a write
/// failed.
async fn tell_fenced<C: ConnectionTrait>(
    db: &C,
    writes: &[OrderWrite],
    fence: &Fence,
    results: &mut [Result<i64, SaveError>],
) -> Result<(), DbErr> {
    if results.iter().all(Result::is_ok) {
        return Ok(());
    }
    let current: Vec<(i32, i64)> = db
        .query_all_raw(sea_orm::Statement::from_string(
            DbBackend::Postgres,
            "SELECT partition, epoch FROM partitions",
        ))
        .await?
        .into_iter()
        .filter_map(|row| {
            Some((
                row.try_get("", "partition").ok()?,
                row.try_get("", "epoch").ok()?,
            ))
        })
        .collect();
    for (write, result) in writes.iter().zip(results.iter_mut()) {
        let id = write.order_id();
        let partition = i32::from(fence.partition(id));
        let still_held = fence
            .epoch_of(id)
            .is_some_and(|epoch| current.iter().any(|&(p, e)| p == partition && e == epoch));
        if result.is_err() && !still_held {
            *result = Err(SaveError::Fenced(id));
        }
    }
    Ok(())
}

fn completed(order_id: Uuid, done: &IdempotencyCompletion) -> idempotency::Completed<'_> {
    idempotency::Completed {
        key: &done.key,
        order_id,
        status: done.status,
        body: &done.body,
    }
}

/// A batch of writes taken apart by table, the same for both backends' statements.
struct BatchRows<'a> {
    /// The fenced updates of every transition and retry.
    updates: Vec<FencedUpdate<'a>>,
    /// New orders; `fenced`: created only if their key claim holds.
    new_orders: Vec<OfOrder<'a, OrderRecord>>,
    history: Vec<OfOrder<'a, HistoryEntry>>,
    messages: Vec<OfOrder<'a, outbox::NewMessage>>,
    /// Responses for keys claimed beforehand.
    completions: Vec<(Uuid, &'a IdempotencyCompletion)>,
    /// Keys claimed by this batch, answered; `.2` is the request hash.
    claims: Vec<(Uuid, &'a IdempotencyCompletion, &'a str)>,
}

/// A row of one order's write.
struct OfOrder<'a, T> {
    order_id: Uuid,
    /// The order's partition when the batch is fenced by ownership, else -1.
    part: i32,
    /// The epoch its partition is held under (history entries record it).
    epoch: Option<i64>,
    /// Written only if the order's write holds: the fenced update of a transition or
    /// retry, the key claim of a create that claims its key (other creates have no fence).
    fenced: bool,
    row: &'a T,
}

impl<T> OfOrder<'_, T> {
    fn stands(&self, held: &HashSet<Uuid>) -> bool {
        !self.fenced || held.contains(&self.order_id)
    }
}

impl<'a> BatchRows<'a> {
    fn of(writes: &'a [OrderWrite], fence: Option<&Fence>) -> Self {
        let part = |id: Uuid| fence.map_or(-1, |f| i32::from(f.partition(id)));
        let epoch = |id: Uuid| fence.and_then(|f| f.epoch_of(id));
        let mut rows = BatchRows {
            updates: writes
                .iter()
                .filter_map(FencedUpdate::of)
                .map(|u| FencedUpdate {
                    part: part(u.order_id),
                    ..u
                })
                .collect(),
            new_orders: Vec::new(),
            history: Vec::new(),
            messages: Vec::new(),
            completions: Vec::new(),
            claims: Vec::new(),
        };
        for write in writes {
            let order_id = write.order_id();
            let (fenced, entry, messages) = match write {
                OrderWrite::Create {
                    order,
                    entry,
                    messages,
                    idempotency,
                } => {
                    let claim = write.key_claim();
                    match (claim, idempotency) {
                        (Some((done, hash)), _) => rows.claims.push((order_id, done, hash)),
                        (None, Some(done)) => rows.completions.push((order_id, done)),
                        (None, None) => {}
                    }
                    let claims = claim.is_some();
                    rows.new_orders.push(OfOrder {
                        order_id,
                        part: part(order_id),
                        epoch: epoch(order_id),
                        fenced: claims,
                        row: order,
                    });
                    // Under an ownership fence a create may not stand: what it causes
                    // stands with it.
                    (claims || fence.is_some(), Some(entry), messages)
                }
                OrderWrite::Transition {
                    entry, messages, ..
                } => (true, Some(entry), messages),
                OrderWrite::Retry { messages, .. } => (true, None, messages),
            };
            if let Some(row) = entry {
                rows.history.push(OfOrder {
                    order_id,
                    part: part(order_id),
                    epoch: epoch(order_id),
                    fenced,
                    row,
                });
            }
            rows.messages.extend(messages.iter().map(|row| OfOrder {
                order_id,
                part: part(order_id),
                epoch: epoch(order_id),
                fenced,
                row,
            }));
        }
        rows
    }
}

/// Per write, in order: the order's new version, or the fence conflict. `held`: the orders
/// whose write stands (updates held, orders created).
fn results(writes: &[OrderWrite], held: &HashSet<Uuid>) -> Vec<Result<i64, SaveError>> {
    writes
        .iter()
        .map(|write| match write {
            OrderWrite::Create { order, .. } => {
                if held.contains(&order.id) {
                    Ok(order.version)
                } else if write.key_claim().is_some() {
                    Err(SaveError::KeyTaken(order.id))
                } else {
                    Err(SaveError::Fenced(order.id))
                }
            }
            OrderWrite::Transition {
                order_id,
                expected_version,
                ..
            }
            | OrderWrite::Retry {
                order_id,
                expected_version,
                ..
            } => {
                if held.contains(order_id) {
                    Ok(expected_version + 1)
                } else {
                    Err(SaveError::Conflict(*order_id))
                }
            }
        })
        .collect()
}

/// What [`save_batch`] committed.
#[derive(Debug)]
pub struct SavedBatch {
    /// Per write, in order: the order's new version, or the fence conflict.
    pub results: Vec<Result<i64, SaveError>>,
    /// The outbox rows written, for the relay's hand-over.
    pub outbox_rows: Vec<entity::outbox::Model>,
}

fn order_row(order: &OrderRecord) -> orders::ActiveModel {
    orders::ActiveModel {
        id: Set(order.id),
        customer_id: Set(order.customer_id.clone()),
        currency: Set(order.currency.clone()),
        total_cents: Set(order.total_cents),
        status: Set(order.saga.status.as_str().to_owned()),
        reservation_state: Set(order.saga.reservation.as_str().to_owned()),
        payment_state: Set(order.saga.payment.as_str().to_owned()),
        shipment_state: Set(order.saga.shipment.as_str().to_owned()),
        failure_reason: Set(order.saga.failure_reason.clone()),
        payment_mode: Set(payment_mode_str(order.payment_mode).to_owned()),
        version: Set(order.version),
        step_deadline_at: Set(order.timer.deadline),
        step_attempts: Set(order.timer.attempts),
        trace_context: Set(order.trace_context.clone()),
        parked_reason: Set(None),
        created_at: Set(order.created_at),
        updated_at: Set(order.updated_at),
    }
}

fn item_rows(order: &OrderRecord) -> impl Iterator<Item = order_items::ActiveModel> + '_ {
    order
        .items
        .iter()
        .enumerate()
        .map(|(i, l)| order_items::ActiveModel {
            order_id: Set(order.id),
            line_no: Set(i32::try_from(i).unwrap_or(i32::MAX)),
            sku: Set(l.sku.clone()),
            quantity: Set(i32::try_from(l.quantity).unwrap_or(i32::MAX)),
            unit_price_cents: Set(l.unit_price_cents),
        })
}

/// An update of one order guarded by its version (the fence against a second owner).
struct FencedUpdate<'a> {
    order_id: Uuid,
    /// The order's partition when the batch is fenced by ownership, else -1.
    part: i32,
    expected_version: i64,
    timer: StepTimer,
    /// The new saga state and the transition's time; `None` for a retry (timer only).
    saga: Option<(&'a Saga, DateTime<Utc>)>,
}

impl<'a> FencedUpdate<'a> {
    fn of(write: &'a OrderWrite) -> Option<Self> {
        match write {
            OrderWrite::Create { .. } => None,
            OrderWrite::Transition {
                order_id,
                expected_version,
                saga,
                timer,
                entry,
                ..
            } => Some(FencedUpdate {
                order_id: *order_id,
                part: -1,
                expected_version: *expected_version,
                timer: *timer,
                saga: Some((saga, entry.at)),
            }),
            OrderWrite::Retry {
                order_id,
                expected_version,
                timer,
                ..
            } => Some(FencedUpdate {
                order_id: *order_id,
                part: -1,
                expected_version: *expected_version,
                timer: *timer,
                saga: None,
            }),
        }
    }

    /// Applies every update; returns the orders whose fence held.
    async fn apply_all<C: ConnectionTrait>(
        db: &C,
        updates: &[FencedUpdate<'_>],
    ) -> Result<HashSet<Uuid>, DbErr> {
        let mut held = HashSet::with_capacity(updates.len());
        for update in updates {
            if update.apply(db).await? {
                held.insert(update.order_id);
            }
        }
        Ok(held)
    }

    /// Returns whether the fence held (the row was at the expected version).
    async fn apply<C: ConnectionTrait>(&self, db: &C) -> Result<bool, DbErr> {
        let mut update = orders::Entity::update_many()
            .col_expr(orders::Column::StepDeadlineAt, self.timer.deadline.into())
            .col_expr(orders::Column::StepAttempts, self.timer.attempts.into())
            .col_expr(orders::Column::Version, (self.expected_version + 1).into());
        if let Some((saga, at)) = self.saga {
            update = update
                .col_expr(orders::Column::Status, saga.status.as_str().into())
                .col_expr(
                    orders::Column::ReservationState,
                    saga.reservation.as_str().into(),
                )
                .col_expr(orders::Column::PaymentState, saga.payment.as_str().into())
                .col_expr(orders::Column::ShipmentState, saga.shipment.as_str().into())
                .col_expr(
                    orders::Column::FailureReason,
                    saga.failure_reason.clone().into(),
                )
                .col_expr(orders::Column::UpdatedAt, at.into());
        }
        let updated = update
            .filter(orders::Column::Id.eq(self.order_id))
            .filter(orders::Column::Version.eq(self.expected_version))
            .exec(db)
            .await?;
        Ok(updated.rows_affected == 1)
    }
}

/// The history events of a parked order and of its resumption by an operator.
pub use crate::domain::timeline::{PARKED, RESUMED};

/// Parks an order whose actor keeps crashing: it is left alone (no timers, no recovery)
/// and shows the reason, until an operator deals with it. Written by the supervisor,
/// which owns the order while no actor is alive.
pub async fn park<C: TransactionTrait>(db: &C, order_id: Uuid, reason: &str) -> Result<(), DbErr> {
    let txn = db.begin().await?;
    let Some(row) = orders::Entity::find_by_id(order_id).one(&txn).await? else {
        return txn.commit().await;
    };
    let now = Utc::now();
    orders::Entity::update_many()
        .col_expr(orders::Column::ParkedReason, Some(reason.to_owned()).into())
        .col_expr(
            orders::Column::StepDeadlineAt,
            Option::<DateTime<Utc>>::None.into(),
        )
        .col_expr(orders::Column::Version, (row.version + 1).into())
        .col_expr(orders::Column::UpdatedAt, now.into())
        .filter(orders::Column::Id.eq(order_id))
        .exec(&txn)
        .await?;
    let status = parse_status(&row.status)?;
    let entry = HistoryEntry {
        from: Some(status),
        status,
        event: PARKED.into(),
        reason: reason.to_owned(),
        at: now,
    };
    order_transitions::Entity::insert(history_row(order_id, &entry, None))
        .exec_without_returning(&txn)
        .await?;
    txn.commit().await
}

/// Un-parks an order at `expected_version` and records `entry` (its resumption); with
/// `fence` (partition, epoch) only while the partition is still held under that epoch (the
/// row is share-locked, so a new owner's epoch bump waits for this commit). Returns whether
/// the order was un-parked (false: it changed meanwhile, or the partition moved).
pub async fn unpark<C: TransactionTrait>(
    db: &C,
    order_id: Uuid,
    expected_version: i64,
    fence: Option<(u16, i64)>,
    entry: &HistoryEntry,
) -> Result<bool, DbErr> {
    let txn = db.begin().await?;
    if let Some((partition, epoch)) = fence {
        let held = txn
            .query_one_raw(sea_orm::Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT 1 FROM partitions WHERE partition = $1 AND epoch = $2 FOR SHARE",
                [i32::from(partition).into(), epoch.into()],
            ))
            .await?;
        if held.is_none() {
            return Ok(false);
        }
    }
    let updated = orders::Entity::update_many()
        .col_expr(orders::Column::ParkedReason, Option::<String>::None.into())
        .col_expr(orders::Column::Version, (expected_version + 1).into())
        .col_expr(orders::Column::UpdatedAt, entry.at.into())
        .filter(orders::Column::Id.eq(order_id))
        .filter(orders::Column::Version.eq(expected_version))
        .filter(orders::Column::ParkedReason.is_not_null())
        .exec(&txn)
        .await?;
    if updated.rows_affected != 1 {
        return Ok(false);
    }
    order_transitions::Entity::insert(history_row(order_id, entry, fence.map(|(_, e)| e)))
        .exec_without_returning(&txn)
        .await?;
    txn.commit().await?;
    Ok(true)
}

/// Orders whose step deadline has passed (and that are not parked), oldest first.
pub async fn due_deadlines<C: ConnectionTrait>(
    db: &C,
    now: DateTime<Utc>,
    limit: u64,
    only: Option<&Partitions>,
) -> Result<Vec<Uuid>, DbErr> {
    due_deadlines_query(now, limit, only).all(db).await
}

/// The query of [`due_deadlines`] (public so a test can check its plan).
pub fn due_deadlines_query(
    now: DateTime<Utc>,
    limit: u64,
    only: Option<&Partitions>,
) -> Selector<SelectGetableTuple<Uuid>> {
    orders::Entity::find()
        .select_only()
        .column(orders::Column::Id)
        .filter(orders::Column::StepDeadlineAt.lte(now))
        .filter(orders::Column::ParkedReason.is_null())
        .apply_if(only, |query, only| query.filter(only.condition("id")))
        .order_by_asc(orders::Column::StepDeadlineAt)
        .limit(limit)
        .into_tuple::<Uuid>()
}

/// Loads an order with its items (not its history).
pub async fn load<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<Option<OrderRecord>, DbErr> {
    let Some(row) = orders::Entity::find_by_id(id).one(db).await? else {
        return Ok(None);
    };
    let items = order_items::Entity::find()
        .filter(order_items::Column::OrderId.eq(id))
        .order_by_asc(order_items::Column::LineNo)
        .all(db)
        .await?
        .into_iter()
        .map(|i| OrderLine {
            sku: i.sku,
            quantity: i64::from(i.quantity),
            unit_price_cents: i.unit_price_cents,
        })
        .collect();
    Ok(Some(OrderRecord {
        id: row.id,
        customer_id: row.customer_id.clone(),
        currency: row.currency.clone(),
        total_cents: row.total_cents,
        items,
        saga: saga_of(&row)?,
        payment_mode: if row.payment_mode == "manual" {
            PaymentMode::Manual
        } else {
            PaymentMode::Auto
        },
        version: row.version,
        trace_context: row.trace_context.clone(),
        timer: StepTimer {
            deadline: row.step_deadline_at,
            attempts: row.step_attempts,
        },
        parked_reason: row.parked_reason.clone(),
        created_at: row.created_at,
        updated_at: row.updated_at,
    }))
}

/// Just the order's status (`None`: no such order): the cheap check of a long poll.
pub async fn status<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<Option<OrderStatus>, DbErr> {
    let status: Option<String> = orders::Entity::find_by_id(id)
        .select_only()
        .column(orders::Column::Status)
        .into_tuple()
        .one(db)
        .await?;
    status.as_deref().map(parse_status).transpose()
}

/// The order with its full transition history, for the API.
pub async fn details<C: ConnectionTrait>(db: &C, id: Uuid) -> Result<Option<OrderDetails>, DbErr> {
    Ok(details_and_mode(db, id).await?.map(|(details, _)| details))
}

/// [`details`], and the order's payment mode.
pub async fn details_and_mode<C: ConnectionTrait>(
    db: &C,
    id: Uuid,
) -> Result<Option<(OrderDetails, PaymentMode)>, DbErr> {
    let Some(order) = load(db, id).await? else {
        return Ok(None);
    };
    let history = order_transitions::Entity::find()
        .filter(order_transitions::Column::OrderId.eq(id))
        .order_by_asc(order_transitions::Column::Id)
        .all(db)
        .await?
        .into_iter()
        .map(|t| {
            Ok(HistoryEntry {
                from: t.from_status.as_deref().map(parse_status).transpose()?,
                status: parse_status(&t.to_status)?,
                event: t.event,
                reason: t.reason,
                at: t.at,
            })
        })
        .collect::<Result<_, DbErr>>()?;
    Ok(Some((order.details(history), order.payment_mode)))
}

/// Newest first, optionally filtered by status.
pub async fn list<C: ConnectionTrait>(
    db: &C,
    status: Option<OrderStatus>,
    limit: u64,
) -> Result<Vec<OrderSummary>, DbErr> {
    let mut query = orders::Entity::find();
    if let Some(status) = status {
        query = query.filter(orders::Column::Status.eq(status.as_str()));
    }
    let rows = query
        .order_by_desc(orders::Column::CreatedAt)
        .limit(limit)
        .all(db)
        .await?;
    rows.into_iter()
        .map(|row| {
            Ok(OrderSummary {
                id: row.id,
                status: parse_status(&row.status)?,
                customer_id: row.customer_id,
                total_cents: row.total_cents,
                currency: row.currency,
                failure_reason: row.failure_reason,
                created_at: row.created_at,
                updated_at: row.updated_at,
            })
        })
        .collect()
}

/// Ids of every order not yet in a terminal state and not parked (resumed at start-up).
pub async fn non_terminal_ids<C: ConnectionTrait>(
    db: &C,
    only: Option<&Partitions>,
) -> Result<Vec<Uuid>, DbErr> {
    let terminal: Vec<&str> = OrderStatus::ALL
        .into_iter()
        .filter(|s| s.is_terminal())
        .map(OrderStatus::as_str)
        .collect();
    orders::Entity::find()
        .select_only()
        .column(orders::Column::Id)
        .filter(orders::Column::Status.is_not_in(terminal))
        .filter(orders::Column::ParkedReason.is_null())
        .apply_if(only, |query, only| query.filter(only.condition("id")))
        .into_tuple::<Uuid>()
        .all(db)
        .await
}
