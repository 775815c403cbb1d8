//! Participants: Inventory, Payment and Shipping. Separate services by design — each owns
//! its store, consumes its own queue and answers over `order.replies` through its own
//! outbox — run in this process by default. Each is idempotent per (order, step): the
//! order id is the primary key of its record, so a redelivered command finds the record
//! and answers the same way again instead of acting twice.

pub mod inventory;
pub mod payment;
pub mod shipping;

use crate::messaging::IncomingMessage;
use crate::messaging::consumer::Disposition;
use crate::messaging::messages::{Envelope, ReplyBody};
use crate::messaging::topology::REPLIES_EXCHANGE;
use crate::persistence::apply_batch_or_each;
use crate::persistence::outbox::{self, NewMessage, OutboxFeed};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbErr,
    EntityTrait, IntoActiveModel, QueryFilter, TransactionTrait,
};
use serde::de::DeserializeOwned;
use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::Arc;
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

/// The handling of one queue of a participant (Inventory has two: its commands and its
/// subscription to confirmed orders, on the same store).
pub trait CommandHandler: Clone + Send + Sync + 'static {
    type Store: ParticipantStore;
    fn participant(&self) -> &Self::Store;
    /// Applies one delivery inside its batch's transaction.
    fn apply(
        &self,
        txn: &DatabaseTransaction,
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

    fn into_new(self) -> Vec<R> {
        self.records
            .into_values()
            .filter_map(|(r, new)| new.then_some(r))
            .collect()
    }
}

/// Applies a batch of deliveries in one transaction and returns one disposition per
/// delivery, in order. One commit (one WAL flush, one hold of a hot stock row) serves the
/// whole batch. If the batch fails — a concurrent duplicate hitting a primary key, a
/// deadlock — it is rolled back and each delivery is applied again on its own, so one bad
/// delivery cannot hold the others back; while the database is away every delivery is
/// requeued at once ([`apply_batch_or_each`]).
pub async fn handle_batch<H: CommandHandler>(
    handler: &H,
    messages: &[Arc<IncomingMessage>],
) -> Vec<Disposition> {
    apply_batch_or_each("participant batch", messages, |batch| {
        let handler = handler.clone();
        Box::pin(async move { apply_in_one_transaction(&handler, batch).await })
    })
    .await
    .into_iter()
    .map(|result| result.unwrap_or_else(|e| Disposition::Retry(e.to_string())))
    .collect()
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
            .apply(txn, &mut known, &mut deferred, message)
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

/// A reply to the orchestrator, carrying the command's trace context along.
pub(crate) fn reply(
    order_id: Uuid,
    body: ReplyBody,
    headers: &BTreeMap<String, String>,
) -> Result<NewMessage, DbErr> {
    let kind = body.kind();
    let envelope = Envelope::new(order_id, body);
    let mut message = NewMessage::json(REPLIES_EXCHANGE, kind, envelope.message_id, &envelope)?;
    if let Some(tp) = headers.get("traceparent") {
        message.headers.insert("traceparent".into(), tp.clone());
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
