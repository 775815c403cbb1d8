//! The invariants of DESIGN.md, checked against the stores once the system is quiet:
//! stock is conserved per SKU, every CONFIRMED order has one captured payment and one
//! shipment, every REVERSED order holds no stock and no un-refunded payment, and no order
//! is left non-terminal. Used by the tests, the admin endpoint and the load generator.

use crate::domain::saga::OrderStatus;
use crate::persistence::Stores;
use entity::{order_items, orders, payments, reservations, shipments, stock};
use sea_orm::{DbErr, EntityTrait};
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
    let all_orders = orders::Entity::find().all(&stores.orders).await?;
    let items = order_items::Entity::find().all(&stores.orders).await?;
    let stock_rows = stock::Entity::find().all(&stores.inventory).await?;
    let reservation_rows = reservations::Entity::find().all(&stores.inventory).await?;
    let payment_rows: HashMap<Uuid, payments::Model> = payments::Entity::find()
        .all(&stores.payment)
        .await?
        .into_iter()
        .map(|p| (p.order_id, p))
        .collect();
    let shipment_rows: HashMap<Uuid, shipments::Model> = shipments::Entity::find()
        .all(&stores.shipping)
        .await?
        .into_iter()
        .map(|s| (s.order_id, s))
        .collect();
    let reservation_of: HashMap<Uuid, &reservations::Model> =
        reservation_rows.iter().map(|r| (r.order_id, r)).collect();

    let mut sold_by_orders: BTreeMap<String, i64> = BTreeMap::new();
    let status_of: HashMap<Uuid, OrderStatus> = all_orders
        .iter()
        .filter_map(|o| Some((o.id, OrderStatus::parse(&o.status)?)))
        .collect();
    for item in &items {
        if status_of.get(&item.order_id) == Some(&OrderStatus::Confirmed) {
            *sold_by_orders.entry(item.sku.clone()).or_default() += i64::from(item.quantity);
        }
    }

    for order in &all_orders {
        *report
            .orders_by_status
            .entry(order.status.clone())
            .or_default() += 1;
        let id = order.id;
        let Some(status) = OrderStatus::parse(&order.status) else {
            report
                .violations
                .push(format!("order {id} has unknown status {}", order.status));
            continue;
        };
        if order.parked_reason.is_some() {
            report.parked += 1;
        } else if !status.is_terminal() {
            report.in_flight += 1;
        }
        let payment = payment_rows.get(&id).map(|p| p.status.as_str());
        let shipment = shipment_rows.get(&id).map(|s| s.status.as_str());
        let reservation = reservation_of.get(&id).map(|r| r.status.as_str());
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
    for r in reservation_rows.iter().filter(|r| r.status == "RESERVED") {
        let lines: Vec<crate::messaging::messages::LineItem> = serde_json::from_str(&r.items)
            .map_err(|e| DbErr::Custom(format!("reservation {}: {e}", r.order_id)))?;
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
