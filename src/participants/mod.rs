//! Participants: Inventory, Payment and Shipping. Separate services by design — each owns
//! its store, consumes its own queue and answers over `order.replies` through its own
//! outbox — run in this process by default. Each is idempotent per (order, step): the
//! order id is the primary key of its record, so a redelivered command finds the record
//! and answers the same way again instead of acting twice.

pub mod inventory;
pub mod payment;
pub mod runtime;
pub mod shipping;

use crate::messaging::IncomingMessage;
use crate::messaging::consumer::Disposition;
use crate::messaging::messages::{Envelope, ReplyBody};
use crate::messaging::topology::{REPLY_TO_HEADER, reply_route};
use crate::persistence::outbox::{self, NewMessage, OutboxFeed};
use crate::persistence::{apply_batch_or_each, is_unavailable};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, IntoActiveModel, QueryFilter, TransactionTrait,
};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use tracing::Instrument;
use uuid::Uuid;

/// What one delivery did inside its batch's transaction.
#[derive(Debug)]
pub enum Applied {
    /// Done, or recognised as a duplicate: these replies leave with the batch's commit.
    Replies(Vec<NewMessage>),
    /// Undecodable or not meant for this participant: dead-letter it.
    Poison(String),
}

/// A participant's store of per-order records (reservation, payment, shipment), read and
/// written by its queue handlers in batches (see [`handle_batch`]): the batch's records are
/// read with one query, the handler works on them through [`Known`] inside the batch's
/// transaction, and the records it creates are inserted together at the end — everything
/// commits with the other deliveries' writes and their replies.
pub trait ParticipantStore: Clone + Send + Sync + 'static {
    /// The participant's record of one order (reservation, payment, shipment).
    type Record: Clone + Send + Sync;
    /// Writes the batch's deliveries defer to its end (one statement for many orders).
    type Deferred: Default + Send;
    /// The participant's own store.
    fn store(&self) -> &DatabaseConnection;
    /// Hands the replies of each commit to the participant's outbox relay.
    fn outbox_feed(&self) -> &OutboxFeed;
    /// Reads the records of these orders (one query).
    fn load(
        &self,
        txn: &DatabaseTransaction,
        order_ids: Vec<Uuid>,
    ) -> impl Future<Output = Result<Vec<(Uuid, Self::Record)>, DbErr>> + Send;
    /// Inserts the records the batch created (one multi-row INSERT).
    fn insert(
        &self,
        txn: &DatabaseTransaction,
        records: Vec<Self::Record>,
    ) -> impl Future<Output = Result<(), DbErr>> + Send;
    /// Whether [`Self::insert_if_absent`] is available (PostgreSQL stores of participants
    /// that implement it).
    fn inserts_if_absent(&self) -> bool {
        false
    }
    /// One statement, no transaction: inserts the records of the orders that have none
    /// yet, together with the replies of exactly those orders (`(order id, reply)`), and
    /// skips the rest (see [`handle_batch`]). Only for participants that defer nothing.
    fn insert_if_absent(
        &self,
        _records: Vec<Self::Record>,
        _replies: Vec<(Uuid, NewMessage)>,
    ) -> impl Future<Output = Result<Inserted, DbErr>> + Send {
        async {
            Err(DbErr::Custom(
                "this participant has no one-statement path".into(),
            ))
        }
    }
    /// Writes what the batch deferred, before its commit. Participants that defer nothing
    /// keep this default.
    fn write_deferred(
        &self,
        _txn: &DatabaseTransaction,
        _deferred: Self::Deferred,
    ) -> impl Future<Output = Result<(), DbErr>> + Send {
        async { Ok(()) }
    }
}

/// The [`ParticipantStore`] of a participant whose store is one table of records keyed by
/// order id (`$table::Column::OrderId`), with nothing deferred and the one-statement path
/// on PostgreSQL: Payment and Shipping. The participant has fields `db` and `outbox_feed`.
macro_rules! order_keyed_store {
    ($participant:ty, $table:ident) => {
        impl $crate::participants::ParticipantStore for $participant {
            type Record = $table::Model;
            type Deferred = ();

            fn store(&self) -> &sea_orm::DatabaseConnection {
                &self.db
            }

            fn outbox_feed(&self) -> &$crate::persistence::outbox::OutboxFeed {
                &self.outbox_feed
            }

            async fn load(
                &self,
                txn: &sea_orm::DatabaseTransaction,
                order_ids: Vec<uuid::Uuid>,
            ) -> Result<Vec<(uuid::Uuid, $table::Model)>, sea_orm::DbErr> {
                $crate::participants::load_by_order::<$table::Entity, _>(
                    txn,
                    $table::Column::OrderId,
                    order_ids,
                    |r| r.order_id,
                )
                .await
            }

            async fn insert(
                &self,
                txn: &sea_orm::DatabaseTransaction,
                records: Vec<$table::Model>,
            ) -> Result<(), sea_orm::DbErr> {
                $crate::participants::insert_all::<$table::Entity, _>(txn, records).await
            }

            fn inserts_if_absent(&self) -> bool {
                sea_orm::ConnectionTrait::get_database_backend(&self.db)
                    == sea_orm::DbBackend::Postgres
            }

            async fn insert_if_absent(
                &self,
                records: Vec<$table::Model>,
                replies: Vec<(uuid::Uuid, $crate::persistence::outbox::NewMessage)>,
            ) -> Result<$crate::participants::Inserted, sea_orm::DbErr> {
                $crate::participants::insert_if_absent::<$table::Entity>(
                    &self.db,
                    $table::Column::OrderId,
                    records,
                    replies,
                )
                .await
            }
        }
    };
}
pub(crate) use order_keyed_store;

/// A record's status column read as its enum (`parse`): text that no variant spells is
/// corrupt data, an error, rather than some state the handler would guess.
pub(crate) fn stored_status<S>(text: &str, parse: fn(&str) -> Option<S>) -> Result<S, DbErr> {
    parse(text).ok_or_else(|| DbErr::Custom(format!("unreadable record status {text:?}")))
}

/// The handling of one queue of a participant (Inventory has two: its commands and its
/// subscription to confirmed orders, on the same store).
pub trait CommandHandler: Clone + Send + Sync + 'static {
    type Store: ParticipantStore;
    fn participant(&self) -> &Self::Store;
    /// Applies one delivery inside its batch's transaction ([`Txn::Open`]), or as a
    /// statement batch's first try ([`Txn::None`], see [`handle_batch`]).
    fn apply(
        &self,
        txn: Txn<'_>,
        known: &mut Known<<Self::Store as ParticipantStore>::Record>,
        deferred: &mut <Self::Store as ParticipantStore>::Deferred,
        message: &IncomingMessage,
    ) -> impl Future<Output = Result<Applied, DbErr>> + Send;
}

/// [`ParticipantStore::load`] for a participant whose records are keyed by order id.
pub(crate) async fn load_by_order<E, C>(
    db: &C,
    order_id: E::Column,
    ids: Vec<Uuid>,
    key: fn(&E::Model) -> Uuid,
) -> Result<Vec<(Uuid, E::Model)>, DbErr>
where
    E: EntityTrait,
    C: ConnectionTrait,
{
    if ids.is_empty() {
        // `IN ()` would be a constant-false filter over a full index scan (sequential
        // scans are off on these sessions): nothing to read.
        return Ok(Vec::new());
    }
    Ok(E::find()
        .filter(order_id.is_in(ids))
        .all(db)
        .await?
        .into_iter()
        .map(|m| (key(&m), m))
        .collect())
}

/// [`ParticipantStore::insert`]: the batch's new records in one multi-row INSERT.
pub(crate) async fn insert_all<E, C>(db: &C, records: Vec<E::Model>) -> Result<(), DbErr>
where
    E: EntityTrait,
    E::Model: IntoActiveModel<E::ActiveModel>,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send,
    C: ConnectionTrait,
{
    if records.is_empty() {
        return Ok(());
    }
    let rows = records
        .into_iter()
        .map(|m| m.into_active_model().reset_all());
    E::insert_many(rows).exec_without_returning(db).await?;
    Ok(())
}

/// A batch's view of the participant's records: those read up front, and those the batch
/// created (inserted when it ends). A later delivery for the same order in the same batch
/// sees what an earlier one did.
pub struct Known<R> {
    records: HashMap<Uuid, (R, bool)>,
}

impl<R: Clone> Known<R> {
    fn new(stored: Vec<(Uuid, R)>) -> Self {
        Known {
            records: stored.into_iter().map(|(id, r)| (id, (r, false))).collect(),
        }
    }

    pub fn get(&self, order_id: Uuid) -> Option<&R> {
        self.records.get(&order_id).map(|(r, _)| r)
    }

    /// Records a new record, inserted with the others when the batch ends.
    pub fn create(&mut self, order_id: Uuid, record: R) {
        self.records.insert(order_id, (record, true));
    }

    /// Changes a record in memory. Returns true when the record is stored already, so the
    /// caller must also update its row; false when it is new in this batch (the insert at
    /// the end carries the change).
    pub fn change(&mut self, order_id: Uuid, change: impl FnOnce(&mut R)) -> bool {
        match self.records.get_mut(&order_id) {
            Some((record, new)) => {
                change(record);
                !*new
            }
            None => false,
        }
    }

    /// The records this batch created, in order-id order: two batches that share orders
    /// (redeliveries) then insert them in the same order and cannot deadlock on them.
    fn into_new(self) -> Vec<R> {
        let mut created: Vec<(Uuid, R)> = self
            .records
            .into_iter()
            .filter_map(|(id, (r, new))| new.then_some((id, r)))
            .collect();
        created.sort_unstable_by_key(|(id, _)| *id);
        created.into_iter().map(|(_, r)| r).collect()
    }
}

/// The transaction a delivery is applied in; none while a batch is tried as one statement.
#[derive(Clone, Copy)]
pub enum Txn<'a> {
    Open(&'a DatabaseTransaction),
    /// The batch's first try on the one-statement path: every order is taken to have no
    /// record yet, and a handler that needs the database fails, which sends the batch to
    /// the transaction path.
    None,
}

impl<'a> Txn<'a> {
    pub fn get(self) -> Result<&'a DatabaseTransaction, DbErr> {
        match self {
            Txn::Open(txn) => Ok(txn),
            Txn::None => Err(DbErr::Custom(
                "this delivery needs the transaction path".into(),
            )),
        }
    }
}

/// What [`ParticipantStore::insert_if_absent`] stored.
#[derive(Debug, Default)]
pub struct Inserted {
    /// The orders whose records it inserted (with their replies).
    pub orders: HashSet<Uuid>,
    /// The replies' outbox rows, in insertion order, for the relay.
    pub outbox_rows: Vec<entity::outbox::Model>,
}

/// Applies a batch of deliveries and returns one disposition per delivery, in order.
///
/// On PostgreSQL, Payment and Shipping first try the batch as one statement: each delivery
/// is applied as if its order had no record yet — true of nearly every first charge or
/// schedule — and the records go in with their replies by one `INSERT … ON CONFLICT DO
/// NOTHING` that also inserts the replies of the orders it inserted, atomically, without
/// BEGIN, read and COMMIT (one round trip instead of five). The deliveries whose order did
/// have a record (redeliveries, a refund of a charge), or a batch a handler cannot apply
/// without the database, take the transaction path.
///
/// The transaction path applies the deliveries in one transaction: one commit (one WAL
/// flush, one hold of a hot stock row) serves the whole batch. If the batch fails — a
/// concurrent duplicate hitting a primary key, a deadlock — it is rolled back and each
/// delivery is applied again on its own, so one bad delivery cannot hold the others back;
/// while the database is away every delivery is requeued at once ([`apply_batch_or_each`]).
pub async fn handle_batch<H: CommandHandler>(
    handler: &H,
    messages: &[Arc<IncomingMessage>],
) -> Vec<Disposition> {
    let mut decided = match in_one_statement(handler, messages).await {
        Some(decided) => decided,
        None => (0..messages.len()).map(|_| None).collect(),
    };
    let rest: Vec<Arc<IncomingMessage>> = messages
        .iter()
        .zip(&decided)
        .filter(|(_, d)| d.is_none())
        .map(|(m, _)| m.clone())
        .collect();
    let mut in_transaction = apply_batch_or_each("participant batch", &rest, |batch| {
        let handler = handler.clone();
        Box::pin(async move { apply_in_one_transaction(&handler, batch).await })
    })
    .await
    .into_iter()
    .map(|result| result.unwrap_or_else(|e| Disposition::Retry(e.to_string())));
    decided
        .iter_mut()
        .map(|d| {
            d.take()
                .or_else(|| in_transaction.next())
                .unwrap_or_else(|| Disposition::Retry("no result for a delivery".into()))
        })
        .collect()
}

/// The one-statement path of [`handle_batch`]: a disposition for each delivery it settled,
/// `None` for those left to the transaction path; `None` in all if it does not apply.
async fn in_one_statement<H: CommandHandler>(
    handler: &H,
    messages: &[Arc<IncomingMessage>],
) -> Option<Vec<Option<Disposition>>> {
    let store = handler.participant();
    if !store.inserts_if_absent() {
        return None;
    }
    let mut known = Known::new(Vec::new());
    let mut deferred = <H::Store as ParticipantStore>::Deferred::default();
    // Per delivery: its order, or the reason it is poison.
    let mut applied = Vec::with_capacity(messages.len());
    let mut replies = Vec::new();
    for message in messages {
        match handler
            .apply(Txn::None, &mut known, &mut deferred, message)
            .instrument(message.process_span())
            .await
            .ok()?
        {
            Applied::Replies(r) => {
                let owner = serde_json::from_slice::<OrderIdOnly>(&message.payload)
                    .ok()?
                    .order_id;
                replies.extend(r.into_iter().map(|reply| (owner, reply)));
                applied.push(Ok(owner));
            }
            Applied::Poison(reason) => applied.push(Err(reason)),
        }
    }
    let inserted = match store.insert_if_absent(known.into_new(), replies).await {
        Ok(inserted) => inserted,
        // The transaction would wait out the pool's timeout too: requeue everything now.
        Err(error) if is_unavailable(&error) => {
            return Some(
                messages
                    .iter()
                    .map(|_| Some(Disposition::Retry(error.to_string())))
                    .collect(),
            );
        }
        Err(error) => {
            // Expected never (a conflict is not an error): loud, since every batch would
            // then pay for both paths.
            metrics::counter!("participant_statement_fallbacks_total").increment(1);
            tracing::warn!(%error, "one-statement batch failed; applying it in a transaction");
            return None;
        }
    };
    store.outbox_feed().push(inserted.outbox_rows);
    Some(
        applied
            .into_iter()
            .map(|a| match a {
                Ok(order) => inserted.orders.contains(&order).then_some(Disposition::Ack),
                Err(reason) => Some(Disposition::DeadLetter(reason)),
            })
            .collect(),
    )
}

/// [`ParticipantStore::insert_if_absent`] for a store whose records are keyed by order id
/// (`key`), on PostgreSQL: the records' `INSERT … ON CONFLICT DO NOTHING RETURNING key`
/// and the outbox rows of the orders it returned, as one statement.
pub(crate) async fn insert_if_absent<E>(
    db: &DatabaseConnection,
    key: E::Column,
    records: Vec<E::Model>,
    replies: Vec<(Uuid, NewMessage)>,
) -> Result<Inserted, DbErr>
where
    E: EntityTrait,
    E::Model: IntoActiveModel<E::ActiveModel>,
    E::ActiveModel: ActiveModelTrait<Entity = E> + Send,
{
    use sea_orm::sea_query::OnConflict;
    use sea_orm::{DbBackend, IdenStatic, QueryTrait, Statement};
    if records.is_empty() {
        return Ok(Inserted::default());
    }
    let mut insert = E::insert_many(
        records
            .into_iter()
            .map(|m| m.into_active_model().reset_all()),
    );
    insert
        .query()
        .on_conflict(OnConflict::column(key).do_nothing().to_owned())
        .returning_col(key);
    let records = insert.build(DbBackend::Postgres);
    let mut values = records.values.map(|v| v.0).unwrap_or_default();
    let first = values.len();
    let now = chrono::Utc::now();
    let headers: Vec<Option<String>> = replies.iter().map(|(_, m)| m.headers_column()).collect();
    let mut columns: [Vec<sea_orm::Value>; 8] = Default::default();
    for ((owner, m), h) in replies.iter().zip(&headers) {
        let row: [sea_orm::Value; 8] = [
            (*owner).into(),
            m.message_id.into(),
            m.exchange.into(),
            m.routing_key.clone().into(),
            m.payload.clone().into(),
            h.is_some().into(),
            h.clone().unwrap_or_default().into(),
            now.into(),
        ];
        for (column, value) in columns.iter_mut().zip(row) {
            column.push(value);
        }
    }
    let [
        owner,
        message_id,
        exchange,
        routing_key,
        payload,
        has_headers,
        headers_text,
        at,
    ] = columns;
    use crate::persistence::pg_array as a;
    values.extend([
        a::<Uuid>(owner),
        a::<Uuid>(message_id),
        a::<String>(exchange),
        a::<String>(routing_key),
        a::<String>(payload),
        a::<bool>(has_headers),
        a::<String>(headers_text),
        a::<chrono::DateTime<chrono::Utc>>(at),
    ]);
    let p = |i: usize| format!("${}", first + i);
    let sql = format!(
        r#"WITH inserted AS ({records}),
messages AS (
    INSERT INTO outbox (message_id, exchange, routing_key, payload, headers, created_at)
    SELECT m.message_id, m.exchange, m.routing_key, m.payload,
        CASE WHEN m.has_headers THEN m.headers END, m.created_at
    FROM UNNEST({}::uuid[], {}::uuid[], {}::text[], {}::text[], {}::text[], {}::bool[],
                {}::text[], {}::timestamptz[]) WITH ORDINALITY
        AS m(owner, message_id, exchange, routing_key, payload, has_headers, headers,
             created_at, n)
    WHERE m.owner IN (SELECT "{key}" FROM inserted)
    ORDER BY m.n
    RETURNING id, message_id
)
SELECT "{key}" AS order_id, NULL::int8 AS outbox_id FROM inserted
UNION ALL
SELECT message_id, id FROM messages"#,
        p(1),
        p(2),
        p(3),
        p(4),
        p(5),
        p(6),
        p(7),
        p(8),
        records = records.sql,
        key = key.as_str(),
    );
    let returned = db
        .query_all_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            sql,
            values,
        ))
        .await?;
    let (orders, outbox_ids) = outbox::orders_and_outbox_ids(returned)?;
    let outbox_rows = outbox::stored_rows(
        replies.iter().map(|(_, m)| m).zip(headers),
        &outbox_ids,
        now,
    );
    Ok(Inserted {
        orders,
        outbox_rows,
    })
}

/// Just the order id of an envelope (undecodable ones are dealt with by `apply`).
#[derive(serde::Deserialize)]
struct OrderIdOnly {
    order_id: Uuid,
}

async fn apply_in_one_transaction<H: CommandHandler>(
    handler: &H,
    messages: &[Arc<IncomingMessage>],
) -> Result<Vec<Disposition>, DbErr> {
    let store = handler.participant();
    let txn = store.store().begin().await?;
    let result = apply_all(handler, &txn, messages).await;
    match result {
        Ok((dispositions, replies)) => {
            txn.commit().await?;
            store.outbox_feed().push(replies);
            Ok(dispositions)
        }
        Err(error) => {
            // Best effort: a dropped transaction is rolled back by the pool anyway.
            let _ = txn.rollback().await;
            Err(error)
        }
    }
}

/// The batch's work inside its transaction; returns the dispositions and the outbox rows
/// of the replies.
async fn apply_all<H: CommandHandler>(
    handler: &H,
    txn: &DatabaseTransaction,
    messages: &[Arc<IncomingMessage>],
) -> Result<(Vec<Disposition>, Vec<entity::outbox::Model>), DbErr> {
    let mut order_ids: Vec<Uuid> = messages
        .iter()
        .filter_map(|m| serde_json::from_slice::<OrderIdOnly>(&m.payload).ok())
        .map(|e| e.order_id)
        .collect();
    order_ids.sort_unstable();
    order_ids.dedup();
    let store = handler.participant();
    let mut known = Known::new(store.load(txn, order_ids).await?);
    let mut deferred = <H::Store as ParticipantStore>::Deferred::default();
    let mut dispositions = Vec::with_capacity(messages.len());
    let mut replies = Vec::new();
    for message in messages {
        match handler
            .apply(Txn::Open(txn), &mut known, &mut deferred, message)
            .instrument(message.process_span())
            .await?
        {
            Applied::Replies(r) => {
                replies.extend(r);
                dispositions.push(Disposition::Ack);
            }
            Applied::Poison(reason) => dispositions.push(Disposition::DeadLetter(reason)),
        }
    }
    let created = known.into_new();
    if !created.is_empty() {
        store.insert(txn, created).await?;
    }
    store.write_deferred(txn, deferred).await?;
    let rows = outbox::enqueue(txn, &replies).await?;
    Ok((dispositions, rows))
}

/// A reply to the orchestrator, in the command's trace: its `traceparent` is the current
/// (handling) span's, or, when spans are not exported, the command's own. A command that
/// names the replica that sent it is answered to that replica.
pub(crate) fn reply(
    order_id: Uuid,
    body: ReplyBody,
    headers: &BTreeMap<String, String>,
) -> Result<NewMessage, DbErr> {
    let kind = body.kind();
    let envelope = Envelope::new(order_id, body);
    let reply_to = headers.get(REPLY_TO_HEADER).map(String::as_str);
    let (exchange, routing_key) = reply_route(kind, reply_to);
    let mut message = NewMessage::json(exchange, routing_key, envelope.message_id, &envelope)?;
    if let Some(tp) = crate::telemetry::trace_context::current_traceparent()
        .or_else(|| headers.get("traceparent").cloned())
    {
        message.headers.insert("traceparent".into(), tp);
    }
    Ok(message)
}

/// Decodes a delivery; anything undecodable is poison for the dead-letter queue.
pub(crate) fn decode<T: DeserializeOwned>(
    message: &IncomingMessage,
) -> Result<Envelope<T>, Applied> {
    serde_json::from_slice(&message.payload)
        .map_err(|e| Applied::Poison(format!("undecodable {}: {e}", message.routing_key)))
}

/// Deterministic randomness is not needed here: the mock gateways roll a fresh die.
pub(crate) fn roll(rate: f64) -> bool {
    rate > 0.0 && rand::random::<f64>() < rate
}
