//! Transactional outbox: messages are inserted in the same transaction as the state change
//! that causes them, and the relay ([`crate::messaging::relay`]) publishes them afterwards.
//! A crash between commit and publish loses nothing: the rows are still there.

use chrono::Utc;
use entity::outbox;
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DbBackend, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionSession, TransactionTrait,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
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
    /// The stored `headers` column: a JSON object, NULL when there are none.
    pub fn headers_column(&self) -> Option<String> {
        if self.headers.is_empty() {
            None
        } else {
            serde_json::to_string(&self.headers).ok()
        }
    }

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

/// Inserts the messages; call inside the transaction of the state change. Returns the
/// stored rows, to be handed to the relay ([`OutboxFeed::push`]) once the transaction has
/// committed.
pub async fn enqueue<C: ConnectionTrait>(
    db: &C,
    messages: &[NewMessage],
) -> Result<Vec<outbox::Model>, DbErr> {
    enqueue_all(db, messages.iter().collect()).await
}

/// Rows per multi-row INSERT (6 bind parameters each): far below every backend's limit.
const ROWS_PER_INSERT: usize = 1000;

/// [`enqueue`] for messages gathered from several writes.
pub async fn enqueue_all<C: ConnectionTrait>(
    db: &C,
    messages: Vec<&NewMessage>,
) -> Result<Vec<outbox::Model>, DbErr> {
    let mut stored = Vec::with_capacity(messages.len());
    for chunk in messages.chunks(ROWS_PER_INSERT) {
        stored.extend(insert_rows(db, chunk).await?);
    }
    Ok(stored)
}

async fn insert_rows<C: ConnectionTrait>(
    db: &C,
    messages: &[&NewMessage],
) -> Result<Vec<outbox::Model>, DbErr> {
    if messages.is_empty() {
        return Ok(Vec::new());
    }
    let now = Utc::now();
    let rows = messages.iter().map(|m| outbox::ActiveModel {
        id: NotSet,
        message_id: Set(m.message_id),
        exchange: Set(m.exchange.to_owned()),
        routing_key: Set(m.routing_key.clone()),
        payload: Set(m.payload.clone()),
        headers: Set(m.headers_column()),
        created_at: Set(now),
    });
    outbox::Entity::insert_many(rows)
        .exec_with_returning(db)
        .await
}

/// The answer of a one-statement batch whose final `SELECT` is `<order id> AS order_id,
/// NULL AS outbox_id` for each order it wrote, `UNION ALL` `message_id, <outbox id>` for each
/// message it inserted: the orders, and each message's outbox id.
pub(crate) fn orders_and_outbox_ids(
    rows: Vec<sea_orm::QueryResult>,
) -> Result<(HashSet<Uuid>, HashMap<Uuid, i64>), DbErr> {
    let mut orders = HashSet::new();
    let mut outbox_ids = HashMap::new();
    for row in rows {
        let id: Uuid = row.try_get("", "order_id")?;
        match row.try_get::<Option<i64>>("", "outbox_id")? {
            Some(outbox_id) => {
                outbox_ids.insert(id, outbox_id);
            }
            None => {
                orders.insert(id);
            }
        }
    }
    Ok((orders, outbox_ids))
}

/// The rows a one-statement batch stored for `messages` (each with its `headers` column),
/// in their order, leaving out those it did not insert (`outbox_ids` from
/// [`orders_and_outbox_ids`]): what the relay's hand-over takes.
pub(crate) fn stored_rows<'a>(
    messages: impl IntoIterator<Item = (&'a NewMessage, Option<String>)>,
    outbox_ids: &HashMap<Uuid, i64>,
    created_at: chrono::DateTime<Utc>,
) -> Vec<outbox::Model> {
    messages
        .into_iter()
        .filter_map(|(m, headers)| {
            Some(outbox::Model {
                id: *outbox_ids.get(&m.message_id)?,
                message_id: m.message_id,
                exchange: m.exchange.to_owned(),
                routing_key: m.routing_key.clone(),
                payload: m.payload.clone(),
                headers,
                created_at,
            })
        })
        .collect()
}

/// Unsent messages written before `before`, oldest first: what no hand-off will bring
/// (left by a crash, or dropped while the broker was away).
/// With `only`, just the messages of the orders in those partitions (several replicas: each
/// sweeps what it owns).
pub async fn fetch_stragglers<C: ConnectionTrait>(
    db: &C,
    lane: Lane,
    before: chrono::DateTime<Utc>,
    limit: u64,
    only: Option<&crate::persistence::Partitions>,
) -> Result<Vec<outbox::Model>, DbErr> {
    use sea_orm::QueryTrait;
    let find = outbox::Entity::find().apply_if(only, |find, only| {
        // Every message of the orders store is an envelope naming its order.
        find.filter(only.condition("(payload::json->>'order_id')::uuid"))
    });
    let find = match lane {
        Lane::All => find,
        Lane::Exchange(exchange) => find.filter(outbox::Column::Exchange.eq(exchange)),
        Lane::AllBut(exchange) => find.filter(outbox::Column::Exchange.ne(exchange)),
    };
    find.filter(outbox::Column::CreatedAt.lt(before))
        .order_by_asc(outbox::Column::Id)
        .limit(limit)
        .all(db)
        .await
}

/// How committed outbox rows reach the store's relay without the relay reading them back:
/// a writer pushes the rows it stored once its transaction has committed. Rows that never
/// arrive this way (a crash between commit and push, a full feed) are still in the table,
/// and the relay's periodic sweep publishes them.
#[derive(Clone, Debug, Default)]
pub struct OutboxFeed {
    inner: std::sync::Arc<FeedInner>,
}

#[derive(Debug, Default)]
struct FeedInner {
    rows: std::sync::Mutex<Vec<outbox::Model>>,
    ready: tokio::sync::Notify,
    /// Set when rows were not held (the feed was full): the relay then sweeps soon.
    dropped: std::sync::atomic::AtomicBool,
    /// Where the rows of one exchange (lifecycle events) go instead, when they have their
    /// own relay.
    events: Option<(&'static str, OutboxFeed)>,
}

/// Which rows of an outbox a relay publishes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    All,
    /// Only the rows for this exchange (the lifecycle events).
    Exchange(&'static str),
    /// Every row but those for this exchange (the saga's commands and replies).
    AllBut(&'static str),
}

/// Rows held in memory at most; beyond that they wait in the table for the sweep.
const FEED_LIMIT: usize = 50_000;

impl OutboxFeed {
    /// A feed whose rows for `events_exchange` go to a second feed: two relays, one per
    /// [`Lane`], so the saga's commands never wait for the confirms of events published
    /// with them.
    pub fn with_events_lane(events_exchange: &'static str) -> (OutboxFeed, OutboxFeed) {
        let events = OutboxFeed::default();
        let saga = OutboxFeed {
            inner: std::sync::Arc::new(FeedInner {
                events: Some((events_exchange, events.clone())),
                ..FeedInner::default()
            }),
        };
        (saga, events)
    }

    /// Hands committed rows to the relay (call after the commit, never before).
    pub fn push(&self, rows: Vec<outbox::Model>) {
        let rows = match &self.inner.events {
            Some((exchange, events)) => {
                let (lifecycle, saga): (Vec<_>, Vec<_>) =
                    rows.into_iter().partition(|r| r.exchange == *exchange);
                events.push(lifecycle);
                saga
            }
            None => rows,
        };
        if rows.is_empty() {
            return;
        }
        match self.inner.rows.lock() {
            Ok(mut queued) if queued.len() < FEED_LIMIT => queued.extend(rows),
            _ => self
                .inner
                .dropped
                .store(true, std::sync::atomic::Ordering::Relaxed),
        }
        self.inner.ready.notify_one();
    }

    /// Everything handed over so far, in hand-over order.
    pub(crate) fn take(&self) -> Vec<outbox::Model> {
        self.inner
            .rows
            .lock()
            .map(|mut queued| std::mem::take(&mut *queued))
            .unwrap_or_default()
    }

    /// Whether rows were dropped since the last call.
    pub(crate) fn take_dropped(&self) -> bool {
        self.inner
            .dropped
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Resolves at the next hand-over (or at once if one happened since the last wait).
    pub(crate) async fn ready(&self) {
        self.inner.ready.notified().await;
    }
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
    for chunk in ids.chunks(ROWS_PER_INSERT) {
        outbox::Entity::delete_many()
            .filter(outbox::Column::Id.is_in(chunk.iter().copied()))
            .exec(&txn)
            .await?;
    }
    txn.commit().await
}

/// Number of unsent messages (backlog), for health and metrics.
pub async fn backlog<C: ConnectionTrait>(db: &C) -> Result<u64, DbErr> {
    use sea_orm::PaginatorTrait;
    outbox::Entity::find().count(db).await
}
