//! The invariants of DESIGN.md, checked against the stores once the system is quiet:
//! stock is conserved per SKU, every CONFIRMED order has one captured payment and one
//! shipment, every REVERSED order holds no stock and no un-refunded payment, and no order
//! is left non-terminal. Used by the tests, the admin endpoint and the load generator.

use crate::domain::saga::OrderStatus;
use crate::persistence::Stores;
use entity::{order_items, orders, payments, reservations, shipments, stock};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, EntityTrait,
    QuerySelect, TransactionTrait,
};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
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

/// Checks every invariant. `initial_stock`, when given, is the stock each SKU started with
/// (otherwise conservation is checked as `available + reserved + sold` against the records).
pub async fn check(
    stores: &Stores,
    initial_stock: Option<&BTreeMap<String, i64>>,
) -> Result<InvariantReport, DbErr> {
    let mut report = InvariantReport::default();
    // Only the columns the rules need: at a million orders, fetching and decoding whole
    // rows was most of the check's time.
    let all_orders: Vec<(Uuid, String, Option<String>)> = columns::<orders::Entity, _, _>(
        &stores.orders,
        [
            orders::Column::Id,
            orders::Column::Status,
            orders::Column::ParkedReason,
        ],
    )
    .await?;
    let items: Vec<(Uuid, String, i32)> = columns::<order_items::Entity, _, _>(
        &stores.orders,
        [
            order_items::Column::OrderId,
            order_items::Column::Sku,
            order_items::Column::Quantity,
        ],
    )
    .await?;
    let inventory = full_scans(&stores.inventory).await?;
    let stock_rows = stock::Entity::find().all(&inventory).await?;
    let reservation_rows: Vec<(Uuid, String, String)> = columns::<reservations::Entity, _, _>(
        &inventory,
        [
            reservations::Column::OrderId,
            reservations::Column::Status,
            reservations::Column::Items,
        ],
    )
    .await?;
    inventory.commit().await?;
    let payment = full_scans(&stores.payment).await?;
    let payment_rows: HashMap<Uuid, String> = columns::<payments::Entity, _, _>(
        &payment,
        [payments::Column::OrderId, payments::Column::Status],
    )
    .await?
    .into_iter()
    .collect();
    payment.commit().await?;
    let shipping = full_scans(&stores.shipping).await?;
    let shipment_rows: HashMap<Uuid, String> = columns::<shipments::Entity, _, _>(
        &shipping,
        [shipments::Column::OrderId, shipments::Column::Status],
    )
    .await?
    .into_iter()
    .collect();
    shipping.commit().await?;
    let reservation_of: HashMap<Uuid, &str> = reservation_rows
        .iter()
        .map(|(id, status, _)| (*id, status.as_str()))
        .collect();

    let mut sold_by_orders: BTreeMap<String, i64> = BTreeMap::new();
    let status_of: HashMap<Uuid, OrderStatus> = all_orders
        .iter()
        .filter_map(|(id, status, _)| Some((*id, OrderStatus::parse(status)?)))
        .collect();
    for (order_id, sku, quantity) in &items {
        if status_of.get(order_id) == Some(&OrderStatus::Confirmed) {
            *sold_by_orders.entry(sku.clone()).or_default() += i64::from(*quantity);
        }
    }

    for (id, status_text, parked_reason) in &all_orders {
        *report
            .orders_by_status
            .entry(status_text.clone())
            .or_default() += 1;
        let id = *id;
        let Some(status) = OrderStatus::parse(status_text) else {
            report
                .violations
                .push(format!("order {id} has unknown status {status_text}"));
            continue;
        };
        if parked_reason.is_some() {
            report.parked += 1;
        } else if !status.is_terminal() {
            report.in_flight += 1;
        }
        let payment = payment_rows.get(&id).map(String::as_str);
        let shipment = shipment_rows.get(&id).map(String::as_str);
        let reservation = reservation_of.get(&id).copied();
        match status {
            OrderStatus::Confirmed => {
                if payment != Some("CHARGED") {
                    report.violations.push(format!(
                        "CONFIRMED order {id} has payment {payment:?}, expected CHARGED"
                    ));
                }
                if shipment != Some("SCHEDULED") {
                    report.violations.push(format!(
                        "CONFIRMED order {id} has shipment {shipment:?}, expected SCHEDULED"
                    ));
                }
                if reservation != Some("CONSUMED") {
                    report.violations.push(format!(
                        "CONFIRMED order {id} has reservation {reservation:?}, expected CONSUMED"
                    ));
                }
            }
            OrderStatus::Reversed | OrderStatus::Rejected => {
                if reservation == Some("RESERVED") || reservation == Some("CONSUMED") {
                    report.violations.push(format!(
                        "{status} order {id} still holds stock ({reservation:?})"
                    ));
                }
                if payment == Some("CHARGED") {
                    report
                        .violations
                        .push(format!("{status} order {id} has an un-refunded payment"));
                }
                if shipment == Some("SCHEDULED") {
                    report
                        .violations
                        .push(format!("{status} order {id} has a scheduled shipment"));
                }
            }
            _ => {}
        }
    }

    let mut held: BTreeMap<String, i64> = BTreeMap::new();
    for (order_id, _, items) in reservation_rows.iter().filter(|(_, s, _)| s == "RESERVED") {
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

/// These columns of every row of `E`, as tuples.
async fn columns<E, T, C>(
    db: &C,
    columns: impl IntoIterator<Item = E::Column>,
) -> Result<Vec<T>, DbErr>
where
    E: EntityTrait,
    T: sea_orm::TryGetableMany,
    C: ConnectionTrait,
{
    E::find()
        .select_only()
        .columns(columns)
        .into_tuple()
        .all(db)
        .await
}
