//! The service's invariants, checked against the stores once the system is quiet:
//! stock is conserved per SKU, every CONFIRMED order has one captured payment and one
//! shipment, every REVERSED order holds no stock and no un-refunded payment, and no order
//! is left non-terminal. Used by the tests, the admin endpoint and the load generator.

use crate::domain::saga::OrderStatus;
use crate::participants::inventory::ReservationStatus;
use crate::participants::payment::PaymentStatus;
use crate::participants::shipping::ShipmentStatus;
use crate::persistence::Stores;
use entity::{order_items, orders, payments, reservations, shipments, stock};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    EntityTrait, QueryFilter, QueryOrder, QuerySelect, TransactionTrait,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap, HashSet};
use uuid::Uuid;

#[derive(Debug, Clone, Default, Serialize)]
pub struct InvariantReport {
    pub orders_by_status: BTreeMap<String, u64>,
    /// Orders not yet terminal (and not parked). Once the system is quiet this must be 0.
    pub in_flight: u64,
    /// Orders parked after a crash loop; they need an operator.
    pub parked: u64,
    /// One line per broken rule about money and stock; empty when everything is consistent.
    pub violations: Vec<String>,
}

impl InvariantReport {
    /// Every invariant holds: consistent, and no order left non-terminal.
    pub fn holds(&self) -> bool {
        self.violations.is_empty() && self.in_flight == 0 && self.parked == 0
    }

    /// Money and stock are consistent (orders may still be in flight).
    pub fn consistent(&self) -> bool {
        self.violations.is_empty()
    }
}

/// Orders read per page of the check. Memory follows the page, not the tables: a check
/// that read every order at once grew the service by about 1.5 KB per order (48 → 204 MiB
/// at 100,000 orders), and the load generator asks for it after every run.
const PAGE: u64 = 10_000;
/// Violations listed at most; the rest are counted in one last line.
const MAX_LISTED: usize = 1_000;

/// Checks every invariant. `initial_stock`, when given, is the stock each SKU started with
/// (otherwise conservation is checked as `available + reserved + sold` against the records).
pub async fn check(
    stores: &Stores,
    initial_stock: Option<&BTreeMap<String, i64>>,
) -> Result<InvariantReport, DbErr> {
    check_in_pages(stores, initial_stock, PAGE).await
}

/// [`check`], reading the orders `page` at a time in id order, with the participants'
/// records of the same id range (every store is keyed by order id).
pub async fn check_in_pages(
    stores: &Stores,
    initial_stock: Option<&BTreeMap<String, i64>>,
    page: u64,
) -> Result<InvariantReport, DbErr> {
    let page = page.max(1);
    let mut report = InvariantReport::default();
    let mut unlisted = 0usize;
    let mut sold_by_orders: BTreeMap<String, i64> = BTreeMap::new();
    let mut after: Option<Uuid> = None;
    loop {
        // Only the columns the rules need: at a million orders, fetching and decoding whole
        // rows was most of the check's time.
        let mut find = orders::Entity::find()
            .select_only()
            .columns([
                orders::Column::Id,
                orders::Column::Status,
                orders::Column::ParkedReason,
            ])
            .order_by_asc(orders::Column::Id)
            .limit(page);
        if let Some(after) = after {
            find = find.filter(orders::Column::Id.gt(after));
        }
        let these: Vec<(Uuid, String, Option<String>)> =
            find.into_tuple().all(&stores.orders).await?;
        let (Some(first), Some(last)) = (these.first(), these.last()) else {
            break;
        };
        let (first, last) = (first.0, last.0);
        // The page's four reads go to four sessions at once: each is an index range scan
        // that mostly waits for heap pages, and the stores are independent of each other.
        let (items, reservation_of, payment_of, shipment_of) = tokio::try_join!(
            in_range::<order_items::Entity, (Uuid, String, i32), _>(
                &stores.orders,
                order_items::Column::OrderId,
                [
                    order_items::Column::OrderId,
                    order_items::Column::Sku,
                    order_items::Column::Quantity,
                ],
                (first, last),
            ),
            status_by_order::<reservations::Entity>(
                &stores.inventory,
                reservations::Column::OrderId,
                reservations::Column::Status,
                (first, last),
            ),
            status_by_order::<payments::Entity>(
                &stores.payment,
                payments::Column::OrderId,
                payments::Column::Status,
                (first, last),
            ),
            status_by_order::<shipments::Entity>(
                &stores.shipping,
                shipments::Column::OrderId,
                shipments::Column::Status,
                (first, last),
            ),
        )?;

        let mut confirmed: HashSet<Uuid> = HashSet::new();
        for (id, status_text, parked_reason) in &these {
            *report
                .orders_by_status
                .entry(status_text.clone())
                .or_default() += 1;
            let id = *id;
            let violations = match OrderStatus::parse(status_text) {
                None => vec![format!("order {id} has unknown status {status_text}")],
                Some(status) => {
                    if parked_reason.is_some() {
                        report.parked += 1;
                    } else if !status.is_terminal() {
                        report.in_flight += 1;
                    }
                    if status == OrderStatus::Confirmed {
                        confirmed.insert(id);
                    }
                    order_violations(
                        id,
                        status,
                        payment_of.get(&id).map(String::as_str),
                        shipment_of.get(&id).map(String::as_str),
                        reservation_of.get(&id).map(String::as_str),
                    )
                }
            };
            for violation in violations {
                if report.violations.len() < MAX_LISTED {
                    report.violations.push(violation);
                } else {
                    unlisted += 1;
                }
            }
        }
        for (order_id, sku, quantity) in items {
            if confirmed.contains(&order_id) {
                *sold_by_orders.entry(sku).or_default() += i64::from(quantity);
            }
        }
        after = Some(last);
        if (these.len() as u64) < page {
            break;
        }
    }

    // Stock rows are one per SKU, and live reservations follow the orders in flight.
    let inventory = full_scans(&stores.inventory).await?;
    let stock_rows = stock::Entity::find().all(&inventory).await?;
    let reservation_rows: Vec<(Uuid, String)> = reservations::Entity::find()
        .select_only()
        .columns([reservations::Column::OrderId, reservations::Column::Items])
        .filter(reservations::Column::Status.eq(ReservationStatus::Reserved.as_str()))
        .into_tuple()
        .all(&inventory)
        .await?;
    inventory.commit().await?;

    let mut held: BTreeMap<String, i64> = BTreeMap::new();
    for (order_id, items) in &reservation_rows {
        let lines: Vec<crate::messaging::messages::LineItem> = serde_json::from_str(items)
            .map_err(|e| DbErr::Custom(format!("reservation {order_id}: {e}")))?;
        for line in lines {
            *held.entry(line.sku).or_default() += line.quantity;
        }
    }
    for row in &stock_rows {
        let held_here = held.get(&row.sku).copied().unwrap_or(0);
        if row.reserved != held_here {
            report.violations.push(format!(
                "{}: reserved counter {} but live reservations hold {held_here}",
                row.sku, row.reserved
            ));
        }
        let sold_here = sold_by_orders.get(&row.sku).copied().unwrap_or(0);
        if row.sold != sold_here {
            report.violations.push(format!(
                "{}: sold counter {} but CONFIRMED orders consumed {sold_here}",
                row.sku, row.sold
            ));
        }
        if row.available < 0 || row.reserved < 0 {
            report
                .violations
                .push(format!("{}: negative stock", row.sku));
        }
        if let Some(initial) = initial_stock.and_then(|s| s.get(&row.sku)) {
            let accounted = row.available + held_here + sold_here;
            if accounted != *initial {
                report.violations.push(format!(
                    "{}: initial {initial} != available {} + held {held_here} + sold {sold_here}",
                    row.sku, row.available
                ));
            }
        }
    }
    if unlisted > 0 {
        report.violations.push(format!(
            "{unlisted} more violations of orders' money, stock or shipment, not listed"
        ));
    }
    Ok(report)
}

/// A read-only session for whole-table reads of a participant's store. Its pool rules out
/// sequential scans for the keyed batch statements it exists for (`persistence::Plans`);
/// reading every row, a sequential scan is the right plan, so it is allowed again here.
async fn full_scans(db: &DatabaseConnection) -> Result<DatabaseTransaction, DbErr> {
    let txn = db.begin().await?;
    if txn.get_database_backend() == DbBackend::Postgres {
        txn.execute_unprepared("SET LOCAL enable_seqscan = on")
            .await?;
    }
    Ok(txn)
}

/// The broken rules about one order's money, stock and shipment. The records' statuses
/// are the stored text, so that one no variant spells is reported, not an error.
fn order_violations(
    id: Uuid,
    status: OrderStatus,
    payment: Option<&str>,
    shipment: Option<&str>,
    reservation: Option<&str>,
) -> Vec<String> {
    let charged = PaymentStatus::Charged.as_str();
    let scheduled = ShipmentStatus::Scheduled.as_str();
    let reserved = ReservationStatus::Reserved.as_str();
    let consumed = ReservationStatus::Consumed.as_str();
    let mut out = Vec::new();
    match status {
        OrderStatus::Confirmed => {
            if payment != Some(charged) {
                out.push(format!(
                    "CONFIRMED order {id} has payment {payment:?}, expected {charged}"
                ));
            }
            if shipment != Some(scheduled) {
                out.push(format!(
                    "CONFIRMED order {id} has shipment {shipment:?}, expected {scheduled}"
                ));
            }
            if reservation != Some(consumed) {
                out.push(format!(
                    "CONFIRMED order {id} has reservation {reservation:?}, expected {consumed}"
                ));
            }
        }
        OrderStatus::Reversed | OrderStatus::Rejected => {
            if reservation == Some(reserved) || reservation == Some(consumed) {
                out.push(format!(
                    "{status} order {id} still holds stock ({reservation:?})"
                ));
            }
            if payment == Some(charged) {
                out.push(format!("{status} order {id} has an un-refunded payment"));
            }
            if shipment == Some(scheduled) {
                out.push(format!("{status} order {id} has a scheduled shipment"));
            }
        }
        _ => {}
    }
    out
}

/// The status of each record of `E` (a participant's, keyed by order id) in `range`.
async fn status_by_order<E: EntityTrait>(
    db: &DatabaseConnection,
    key: E::Column,
    status: E::Column,
    range: (Uuid, Uuid),
) -> Result<HashMap<Uuid, String>, DbErr> {
    let rows: Vec<(Uuid, String)> = in_range::<E, _, _>(db, key, [key, status], range).await?;
    Ok(rows.into_iter().collect())
}

/// These columns of the rows of `E` whose `key` (an order id) lies in `range`, inclusive:
/// one page's records, read through the key's index.
async fn in_range<E, T, C>(
    db: &C,
    key: E::Column,
    columns: impl IntoIterator<Item = E::Column>,
    (first, last): (Uuid, Uuid),
) -> Result<Vec<T>, DbErr>
where
    E: EntityTrait,
    T: sea_orm::TryGetableMany,
    C: ConnectionTrait,
{
    E::find()
        .select_only()
        .columns(columns)
        .filter(key.between(first, last))
        .into_tuple()
        .all(db)
        .await
}
