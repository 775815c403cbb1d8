//! Inventory: stock per SKU (seeded with a demo catalogue), all-or-nothing reservations,
//! releases, and the sale of reserved stock when an order is confirmed.
//!
//! Stock moves by conditional updates (`available = available - q WHERE available >= q`),
//! never by read-modify-write, so concurrent orders cannot oversell and no row lock is
//! taken. Counters per SKU: `available + reserved + sold` stays equal to the stock put in.

use crate::batching::Coalescer;
use crate::domain::saga::text_enum;
use crate::messaging::IncomingMessage;
use crate::messaging::messages::{CommandBody, Envelope, LineItem, OrderEventBody, ReplyBody};
use crate::participants::{
    Applied, CommandHandler, Known, ParticipantStore, Txn, decode, insert_all, load_by_order,
    reply, stored_status,
};
use crate::persistence::outbox::{NewMessage, OutboxFeed};
use crate::persistence::pg_array;
use crate::tuning::{STOCK_READS_IN_FLIGHT, STOCK_READS_PER_QUERY};
use chrono::{DateTime, Utc};
use entity::{reservations, stock};
use sea_orm::{
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, PaginatorTrait, QueryFilter, QueryOrder, Statement, TransactionTrait,
    sea_query::{Expr, ExprTrait},
};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

/// The demo catalogue: (sku, name, price in cents, initial stock).
pub const DEMO_CATALOGUE: &[(&str, &str, i64, i64)] = &[
    ("KB-001", "Mechanical keyboard", 8_900, 100),
    ("MS-002", "Wireless mouse", 2_900, 200),
    ("MN-003", "27-inch monitor", 24_900, 25),
    ("CB-004", "USB-C cable", 1_200, 500),
    ("HS-005", "Headset", 5_900, 50),
];

/// State of a reservation record (`reservations.status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReservationStatus {
    Reserved,
    Rejected,
    /// Given back, or a tombstone: released before any reservation.
    Released,
    /// Reserved stock that was sold (its order was confirmed).
    Consumed,
}

text_enum!(ReservationStatus {
    Reserved => "RESERVED",
    Rejected => "REJECTED",
    Released => "RELEASED",
    Consumed => "CONSUMED",
});

/// One SKU as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct StockView {
    pub sku: String,
    pub name: String,
    pub price_cents: i64,
    pub available: i64,
    pub reserved: i64,
    pub sold: i64,
}

impl From<stock::Model> for StockView {
    fn from(m: stock::Model) -> Self {
        StockView {
            sku: m.sku,
            name: m.name,
            price_cents: m.price_cents,
            available: m.available,
            reserved: m.reserved,
            sold: m.sold,
        }
    }
}

/// `PUT /api/inventory/:sku`: sets the available count and price (creates the SKU if new).
#[derive(Debug, Clone, Deserialize)]
pub struct StockUpdate {
    pub name: Option<String>,
    pub price_cents: i64,
    pub available: i64,
}

/// `PATCH /api/inventory/:sku`: a relative change of the available count, and optionally a
/// new name or price.
#[derive(Debug, Clone)]
pub struct StockAdjustment {
    /// Added to `available` (negative: removed).
    pub adjust: i64,
    pub name: Option<String>,
    pub price_cents: Option<i64>,
    /// Most units `available` may reach.
    pub max_available: i64,
}

/// What became of a [`StockAdjustment`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Adjusted {
    Done(StockView),
    UnknownSku,
    /// Nothing was changed: `available + adjust` would be below zero or above the cap. The
    /// counts as read right after the refusal.
    Refused(StockView),
}

/// Why the synchronous stock check refused an order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuoteError {
    #[error("unknown SKU {0}")]
    UnknownSku(String),
    #[error("not enough stock for {sku}: requested {requested}, available {available}")]
    Insufficient {
        sku: String,
        requested: i64,
        available: i64,
    },
    #[error(transparent)]
    Db(#[from] DbErr),
}

#[derive(Clone)]
pub struct Inventory {
    db: DatabaseConnection,
    outbox_feed: OutboxFeed,
    /// Started by the first stock check: the participant's instance never makes one.
    stock_reader: std::sync::Arc<std::sync::OnceLock<StockReader>>,
}

impl Inventory {
    pub fn new(db: DatabaseConnection, outbox_feed: OutboxFeed) -> Self {
        Inventory {
            stock_reader: Default::default(),
            db,
            outbox_feed,
        }
    }

    /// Seeds the demo catalogue into an empty inventory. Returns whether it did.
    pub async fn seed_demo_catalogue(&self) -> Result<bool, DbErr> {
        if stock::Entity::find().count(&self.db).await? > 0 {
            return Ok(false);
        }
        let now = Utc::now();
        let rows = DEMO_CATALOGUE
            .iter()
            .map(|(sku, name, price, qty)| stock::ActiveModel {
                sku: Set((*sku).to_owned()),
                name: Set((*name).to_owned()),
                price_cents: Set(*price),
                available: Set(*qty),
                reserved: Set(0),
                sold: Set(0),
                updated_at: Set(now),
            });
        stock::Entity::insert_many(rows)
            .exec_without_returning(&self.db)
            .await?;
        Ok(true)
    }

    pub async fn list(&self) -> Result<Vec<StockView>, DbErr> {
        Ok(stock::Entity::find()
            .order_by_asc(stock::Column::Sku)
            .all(&self.db)
            .await?
            .into_iter()
            .map(StockView::from)
            .collect())
    }

    pub async fn get(&self, sku: &str) -> Result<Option<StockView>, DbErr> {
        Ok(stock::Entity::find_by_id(sku.to_owned())
            .one(&self.db)
            .await?
            .map(StockView::from))
    }

    /// Sets the available stock and price of a SKU (creating it if new). Reserved and sold
    /// counts belong to orders and are left alone.
    pub async fn put(&self, sku: &str, update: StockUpdate) -> Result<StockView, DbErr> {
        let now = Utc::now();
        let txn = self.db.begin().await?;
        let existing = stock::Entity::find_by_id(sku.to_owned()).one(&txn).await?;
        let name = update
            .name
            .clone()
            .or_else(|| existing.as_ref().map(|e| e.name.clone()))
            .unwrap_or_else(|| sku.to_owned());
        if existing.is_some() {
            stock::Entity::update_many()
                .col_expr(stock::Column::Name, name.into())
                .col_expr(stock::Column::PriceCents, update.price_cents.into())
                .col_expr(stock::Column::Available, update.available.into())
                .col_expr(stock::Column::UpdatedAt, now.into())
                .filter(stock::Column::Sku.eq(sku))
                .exec(&txn)
                .await?;
        } else {
            stock::Entity::insert(stock::ActiveModel {
                sku: Set(sku.to_owned()),
                name: Set(name),
                price_cents: Set(update.price_cents),
                available: Set(update.available),
                reserved: Set(0),
                sold: Set(0),
                updated_at: Set(now),
            })
            .exec_without_returning(&txn)
            .await?;
        }
        let view = stock::Entity::find_by_id(sku.to_owned())
            .one(&txn)
            .await?
            .map(StockView::from)
            .ok_or_else(|| DbErr::RecordNotFound(sku.to_owned()))?;
        txn.commit().await?;
        Ok(view)
    }

    /// Applies a [`StockAdjustment`] with one conditional UPDATE (`available = available + d
    /// WHERE 0 <= available + d <= max`): concurrent adjustments and reservations all add to
    /// the count the row holds when each runs, so none is lost and none can take `available`
    /// below zero. Reserved and sold counts belong to orders and are left alone.
    pub async fn adjust(&self, sku: &str, change: StockAdjustment) -> Result<Adjusted, DbErr> {
        let after = || Expr::col(stock::Column::Available).add(change.adjust);
        let mut update = stock::Entity::update_many()
            .col_expr(stock::Column::Available, after())
            .col_expr(stock::Column::UpdatedAt, Utc::now().into());
        if let Some(name) = change.name {
            update = update.col_expr(stock::Column::Name, name.into());
        }
        if let Some(price) = change.price_cents {
            update = update.col_expr(stock::Column::PriceCents, price.into());
        }
        let updated = update
            .filter(stock::Column::Sku.eq(sku))
            .filter(after().gte(0))
            .filter(after().lte(change.max_available))
            .exec_with_returning(&self.db)
            .await?;
        if let Some(row) = updated.into_iter().next() {
            return Ok(Adjusted::Done(row.into()));
        }
        Ok(match self.get(sku).await? {
            Some(view) => Adjusted::Refused(view),
            None => Adjusted::UnknownSku,
        })
    }

    /// The synchronous stock check of `POST /api/orders`: every SKU exists and has the
    /// quantity available right now. Returns the unit price of each line, in input order.
    /// (The reservation itself may still lose a race later; the saga then rejects.)
    pub async fn quote(&self, items: &[(String, i64)]) -> Result<Vec<i64>, QuoteError> {
        let skus: Vec<String> = items.iter().map(|(s, _)| s.clone()).collect();
        let reader = self
            .stock_reader
            .get_or_init(|| StockReader::start(self.db.clone()));
        let rows = reader.read(skus).await?;
        items
            .iter()
            .map(|(sku, qty)| {
                let row = rows
                    .iter()
                    .find(|r| &r.sku == sku)
                    .ok_or_else(|| QuoteError::UnknownSku(sku.clone()))?;
                if row.available < *qty {
                    return Err(QuoteError::Insufficient {
                        sku: sku.clone(),
                        requested: *qty,
                        available: row.available,
                    });
                }
                Ok(row.price_cents)
            })
            .collect()
    }

    #[tracing::instrument(name = "inventory.reserve", skip_all, fields(order_id = %order_id))]
    async fn reserve(
        &self,
        txn: &DatabaseTransaction,
        known: &mut Known<reservations::Model>,
        writes: &mut Deferred,
        order_id: Uuid,
        items: Vec<LineItem>,
        headers: &BTreeMap<String, String>,
    ) -> Result<NewMessage, DbErr> {
        if let Some(existing) = known.get(order_id) {
            // Redelivered or retried command: answer as the first time, act no more.
            let answer = match stored_status(&existing.status, ReservationStatus::parse)? {
                ReservationStatus::Reserved | ReservationStatus::Consumed => {
                    ReplyBody::StockReserved {}
                }
                ReservationStatus::Released => ReplyBody::StockRejected {
                    reason: "reservation was already released".into(),
                },
                ReservationStatus::Rejected => ReplyBody::StockRejected {
                    reason: existing.reason.clone().unwrap_or_else(|| "rejected".into()),
                },
            };
            return reply(order_id, answer, headers);
        }
        let mut sorted = items.clone();
        // A fixed update order across SKUs: two multi-SKU reservations cannot deadlock.
        sorted.sort_by(|a, b| a.sku.cmp(&b.sku));
        let mut refusal = None;
        let mut taken: Vec<&LineItem> = Vec::with_capacity(sorted.len());
        for line in &sorted {
            if line.quantity <= 0 {
                refusal = Some(format!(
                    "invalid quantity {} for {}",
                    line.quantity, line.sku
                ));
                break;
            }
            if !writes.stock.reserve(txn, line).await? {
                refusal = Some(format!("not enough stock for {}", line.sku));
                break;
            }
            taken.push(line);
        }
        let (status, reason, answer) = match refusal {
            None => (
                ReservationStatus::Reserved,
                None,
                ReplyBody::StockReserved {},
            ),
            Some(reason) => {
                // All or nothing: give back the lines already taken. (The transaction is
                // shared with the rest of the batch, so no rollback here.)
                for line in taken {
                    writes.stock.release(line);
                }
                let answer = ReplyBody::StockRejected {
                    reason: reason.clone(),
                };
                (ReservationStatus::Rejected, Some(reason), answer)
            }
        };
        known.create(order_id, reservation(order_id, status, &items, reason)?);
        tracing::info!(status = status.as_str(), "reservation decided");
        reply(order_id, answer, headers)
    }

    #[tracing::instrument(name = "inventory.release", skip_all, fields(order_id = %order_id))]
    fn release(
        &self,
        known: &mut Known<reservations::Model>,
        writes: &mut Deferred,
        order_id: Uuid,
        headers: &BTreeMap<String, String>,
    ) -> Result<NewMessage, DbErr> {
        let current = match known.get(order_id) {
            Some(r) => Some((
                stored_status(&r.status, ReservationStatus::parse)?,
                r.items.clone(),
            )),
            None => None,
        };
        match current {
            Some((ReservationStatus::Reserved, items)) => {
                writes.set_status(
                    known,
                    order_id,
                    ReservationStatus::Reserved,
                    ReservationStatus::Released,
                );
                for line in parse_items(&items)? {
                    writes.stock.release(&line);
                }
            }
            Some(_) => {} // Rejected, already released or sold: nothing held.
            None => {
                // Release before reserve (timeout, cancel): a tombstone makes the late
                // reserve fail instead of holding stock for a dead order.
                let tombstone = reservation(
                    order_id,
                    ReservationStatus::Released,
                    &[],
                    Some("released before reservation".into()),
                )?;
                known.create(order_id, tombstone);
            }
        }
        reply(order_id, ReplyBody::StockReleased {}, headers)
    }

    #[tracing::instrument(name = "inventory.consume", skip_all, fields(order_id = %order_id))]
    fn consume(
        &self,
        known: &mut Known<reservations::Model>,
        writes: &mut Deferred,
        order_id: Uuid,
    ) -> Result<(), DbErr> {
        let items = match known.get(order_id) {
            Some(r)
                if stored_status(&r.status, ReservationStatus::parse)?
                    == ReservationStatus::Reserved =>
            {
                r.items.clone()
            }
            _ => return Ok(()), // duplicate event, or nothing held
        };
        writes.set_status(
            known,
            order_id,
            ReservationStatus::Reserved,
            ReservationStatus::Consumed,
        );
        for line in parse_items(&items)? {
            writes.stock.sell(&line);
        }
        Ok(())
    }

    /// Stock held per SKU by live reservations, from the reservation records (for the
    /// invariant check: it must equal each SKU's `reserved` counter).
    pub async fn held_by_reservations(&self) -> Result<BTreeMap<String, i64>, DbErr> {
        let mut held = BTreeMap::new();
        for r in reservations::Entity::find()
            .filter(reservations::Column::Status.eq(ReservationStatus::Reserved.as_str()))
            .all(&self.db)
            .await?
        {
            for line in parse_items(&r.items)? {
                *held.entry(line.sku).or_insert(0) += line.quantity;
            }
        }
        Ok(held)
    }
}

impl ParticipantStore for Inventory {
    type Record = reservations::Model;
    type Deferred = Deferred;

    fn store(&self) -> &DatabaseConnection {
        &self.db
    }

    fn outbox_feed(&self) -> &OutboxFeed {
        &self.outbox_feed
    }

    async fn load(
        &self,
        txn: &DatabaseTransaction,
        order_ids: Vec<Uuid>,
    ) -> Result<Vec<(Uuid, reservations::Model)>, DbErr> {
        load_by_order::<reservations::Entity, _>(
            txn,
            reservations::Column::OrderId,
            order_ids,
            |r| r.order_id,
        )
        .await
    }

    async fn insert(
        &self,
        txn: &DatabaseTransaction,
        records: Vec<reservations::Model>,
    ) -> Result<(), DbErr> {
        insert_all::<reservations::Entity, _>(txn, records).await
    }

    async fn write_deferred(
        &self,
        txn: &DatabaseTransaction,
        writes: Deferred,
    ) -> Result<(), DbErr> {
        writes.write(txn).await
    }
}

impl CommandHandler for Inventory {
    type Store = Inventory;

    fn participant(&self) -> &Inventory {
        self
    }

    /// Applies one delivery from `inventory.commands`.
    async fn apply(
        &self,
        txn: Txn<'_>,
        known: &mut Known<reservations::Model>,
        writes: &mut Deferred,
        message: &IncomingMessage,
    ) -> Result<Applied, DbErr> {
        let envelope: Envelope<CommandBody> = match decode(message) {
            Ok(e) => e,
            Err(poison) => return Ok(poison),
        };
        let order_id = envelope.order_id;
        let answer = match envelope.body {
            CommandBody::ReserveStock { items } => {
                self.reserve(txn.get()?, known, writes, order_id, items, &message.headers)
                    .await?
            }
            CommandBody::ReleaseStock {} => {
                self.release(known, writes, order_id, &message.headers)?
            }
            other => {
                return Ok(Applied::Poison(format!(
                    "{} is not an inventory command",
                    other.kind()
                )));
            }
        };
        Ok(Applied::Replies(vec![answer]))
    }
}

/// Inventory's consumer of `inventory.order-events`: confirmed orders turn their reserved
/// stock into sold stock.
#[derive(Clone)]
pub struct OrderEvents(pub Inventory);

impl CommandHandler for OrderEvents {
    type Store = Inventory;

    fn participant(&self) -> &Inventory {
        &self.0
    }

    async fn apply(
        &self,
        _txn: Txn<'_>,
        known: &mut Known<reservations::Model>,
        writes: &mut Deferred,
        message: &IncomingMessage,
    ) -> Result<Applied, DbErr> {
        let envelope: Envelope<OrderEventBody> = match decode(message) {
            Ok(e) => e,
            Err(poison) => return Ok(poison),
        };
        if envelope.body.kind == "order.confirmed" {
            self.0.consume(known, writes, envelope.order_id)?;
        }
        Ok(Applied::Replies(Vec::new()))
    }
}

/// Coalesces the stock checks of concurrent `POST /api/orders`: the checks that arrive
/// while one query runs are all answered by the next single query (`SELECT … WHERE sku IN
/// (…)` over their SKUs together). Every answer is still read after its request arrived.
#[derive(Clone)]
struct StockReader(Coalescer<Vec<String>, Result<Vec<stock::Model>, DbErr>>);

impl StockReader {
    fn start(db: DatabaseConnection) -> Self {
        StockReader(Coalescer::start_concurrent(
            STOCK_READS_PER_QUERY,
            STOCK_READS_IN_FLIGHT,
            move |batch: Vec<Vec<String>>| {
                let db = db.clone();
                async move {
                    let mut skus: Vec<String> = batch.iter().flatten().cloned().collect();
                    skus.sort_unstable();
                    skus.dedup();
                    let read = stock::Entity::find()
                        .filter(stock::Column::Sku.is_in(skus))
                        .all(&db)
                        .await;
                    batch
                        .iter()
                        .map(|wanted| match &read {
                            Ok(rows) => Ok(rows
                                .iter()
                                .filter(|r| wanted.contains(&r.sku))
                                .cloned()
                                .collect()),
                            // The error itself (not its text): an outage must stay one.
                            Err(e) => Err(e.clone()),
                        })
                        .collect()
                }
            },
        ))
    }

    async fn read(&self, skus: Vec<String>) -> Result<Vec<stock::Model>, DbErr> {
        self.0
            .call(skus)
            .await
            .unwrap_or_else(|| Err(DbErr::Custom("the stock reader has stopped".into())))
    }
}

fn parse_items(json: &str) -> Result<Vec<LineItem>, DbErr> {
    serde_json::from_str(json)
        .map_err(|e| DbErr::Custom(format!("unreadable reservation items: {e}")))
}

/// A new reservation record (inserted when its batch ends).
fn reservation(
    order_id: Uuid,
    status: ReservationStatus,
    items: &[LineItem],
    reason: Option<String>,
) -> Result<reservations::Model, DbErr> {
    let now = Utc::now();
    let items = serde_json::to_string(items)
        .map_err(|e| DbErr::Custom(format!("serializing reservation items: {e}")))?;
    Ok(reservations::Model {
        order_id,
        status: status.as_str().to_owned(),
        items,
        reason,
        created_at: now,
        updated_at: now,
    })
}

/// Writes an inventory batch defers to its end: the stock moves summed per SKU (one UPDATE
/// per SKU instead of one per order line) and the reservation status changes (one
/// statement on PostgreSQL).
#[derive(Default)]
pub struct Deferred {
    stock: StockMoves,
    statuses: Vec<StatusChange>,
}

struct StatusChange {
    order_id: Uuid,
    from: ReservationStatus,
    to: ReservationStatus,
    at: DateTime<Utc>,
}

impl Deferred {
    /// Moves a reservation from `from` to `to`: in the batch's view now, in the table when
    /// the batch ends. There the `from` guard makes a concurrent duplicate fail the batch
    /// (which is then applied delivery by delivery) instead of acting twice.
    fn set_status(
        &mut self,
        known: &mut Known<reservations::Model>,
        order_id: Uuid,
        from: ReservationStatus,
        to: ReservationStatus,
    ) {
        let at = Utc::now();
        let stored = known.change(order_id, |r| {
            r.status = to.as_str().to_owned();
            r.updated_at = at;
        });
        // A record created by this batch is inserted with its final status.
        if stored {
            self.statuses.push(StatusChange {
                order_id,
                from,
                to,
                at,
            });
        }
    }

    /// Status changes first, stock last: the hot stock rows stay locked for the shortest
    /// time before the commit.
    async fn write(self, txn: &DatabaseTransaction) -> Result<(), DbErr> {
        write_statuses(txn, &self.statuses).await?;
        self.stock.write(txn).await
    }
}

/// Every status change of a batch, guarded by the status it expects.
const BULK_STATUS_UPDATE: &str = r#"UPDATE reservations AS r SET status = v.to_status, updated_at = v.at
FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::timestamptz[]) AS v(order_id, from_status, to_status, at)
WHERE r.order_id = v.order_id AND r.status = v.from_status"#;

async fn write_statuses<C: ConnectionTrait>(db: &C, changes: &[StatusChange]) -> Result<(), DbErr> {
    let changed = if changes.len() > 1 && db.get_database_backend() == DbBackend::Postgres {
        use sea_orm::sea_query::Value;
        let column = |f: fn(&StatusChange) -> Value| changes.iter().map(f).collect::<Vec<_>>();
        let values = vec![
            pg_array::<Uuid>(column(|c| c.order_id.into())),
            pg_array::<String>(column(|c| c.from.as_str().into())),
            pg_array::<String>(column(|c| c.to.as_str().into())),
            pg_array::<DateTime<Utc>>(column(|c| c.at.into())),
        ];
        db.execute_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            BULK_STATUS_UPDATE,
            values,
        ))
        .await?
        .rows_affected()
    } else {
        let mut changed = 0;
        for c in changes {
            changed += reservations::Entity::update_many()
                .col_expr(reservations::Column::Status, c.to.as_str().into())
                .col_expr(reservations::Column::UpdatedAt, c.at.into())
                .filter(reservations::Column::OrderId.eq(c.order_id))
                .filter(reservations::Column::Status.eq(c.from.as_str()))
                .exec(db)
                .await?
                .rows_affected;
        }
        changed
    };
    if changed != changes.len() as u64 {
        return Err(DbErr::Custom(format!(
            "{} of {} reservations changed concurrently; retrying",
            (changes.len() as u64).saturating_sub(changed),
            changes.len()
        )));
    }
    Ok(())
}

/// A batch's stock moves, summed per SKU and written with one UPDATE per SKU at its end.
///
/// Releases and sales need no check: they are only summed. A reservation must see the
/// true available count, so the batch's first reservation of a SKU is a conditional UPDATE
/// (`… WHERE available >= q`) that also writes the moves summed so far and returns the
/// new count. That UPDATE holds the row's lock until the commit: from then on nobody else
/// can change the count, and the batch decides the SKU's further reservations in memory.
/// No read-modify-write ever happens outside that lock, so orders cannot oversell.
#[derive(Default)]
struct StockMoves {
    skus: BTreeMap<String, SkuMoves>,
}

/// Counter changes of one SKU not written yet, and its available count once this
/// transaction holds the row.
#[derive(Default)]
struct SkuMoves {
    available: i64,
    reserved: i64,
    sold: i64,
    locked_available: Option<i64>,
}

impl StockMoves {
    /// available → reserved, if enough is available. Returns whether it was.
    async fn reserve<C: ConnectionTrait>(
        &mut self,
        db: &C,
        line: &LineItem,
    ) -> Result<bool, DbErr> {
        let q = line.quantity;
        let sku = self.skus.entry(line.sku.clone()).or_default();
        if let Some(available) = sku.locked_available {
            if available < q {
                return Ok(false);
            }
            sku.locked_available = Some(available - q);
            sku.available -= q;
            sku.reserved += q;
            return Ok(true);
        }
        let updated = counters_update(&line.sku, sku.available - q, sku.reserved + q, sku.sold)
            .filter(
                Expr::col(stock::Column::Available)
                    .add(sku.available)
                    .gte(q),
            )
            .exec_with_returning(db)
            .await?;
        let Some(row) = updated.into_iter().next() else {
            return Ok(false); // not enough (or unknown SKU): nothing written, nothing held
        };
        *sku = SkuMoves {
            locked_available: Some(row.available),
            ..SkuMoves::default()
        };
        Ok(true)
    }

    /// reserved → available.
    fn release(&mut self, line: &LineItem) {
        let sku = self.skus.entry(line.sku.clone()).or_default();
        sku.available += line.quantity;
        sku.reserved -= line.quantity;
        if let Some(available) = &mut sku.locked_available {
            *available += line.quantity;
        }
    }

    /// reserved → sold.
    fn sell(&mut self, line: &LineItem) {
        let sku = self.skus.entry(line.sku.clone()).or_default();
        sku.reserved -= line.quantity;
        sku.sold += line.quantity;
    }

    /// One UPDATE per SKU with moves left, in SKU order. (A batch's first reservation of a
    /// SKU locks that row earlier, in delivery order; should that ever deadlock with another
    /// batch of the same store, PostgreSQL aborts one and it is retried delivery by
    /// delivery.)
    async fn write<C: ConnectionTrait>(self, db: &C) -> Result<(), DbErr> {
        for (sku, m) in self.skus {
            if (m.available, m.reserved, m.sold) != (0, 0, 0) {
                counters_update(&sku, m.available, m.reserved, m.sold)
                    .exec(db)
                    .await?;
            }
        }
        Ok(())
    }
}

/// Adds to a SKU's counters (no read-modify-write).
fn counters_update(
    sku: &str,
    available: i64,
    reserved: i64,
    sold: i64,
) -> sea_orm::UpdateMany<stock::Entity> {
    let add = |c: stock::Column, n: i64| Expr::col(c).add(n);
    stock::Entity::update_many()
        .col_expr(
            stock::Column::Available,
            add(stock::Column::Available, available),
        )
        .col_expr(
            stock::Column::Reserved,
            add(stock::Column::Reserved, reserved),
        )
        .col_expr(stock::Column::Sold, add(stock::Column::Sold, sold))
        .filter(stock::Column::Sku.eq(sku))
}
