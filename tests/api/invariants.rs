//! The invariant report itself must find what it is there to find: every other test relies
//! on it saying "holds", so here a consistent system is broken on purpose, one rule at a
//! time, directly in the stores — the way a bug or a bad manual fix would break it.

use crate::helpers::{TestOptions, spawn_app, spawn_app_with};
use entity::{orders, payments, reservations, shipments, stock};
use order_service::invariants;
use sea_orm::sea_query::{Expr, ExprTrait};
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter};
use std::collections::BTreeMap;
use uuid::Uuid;

#[tokio::test]
async fn the_invariant_report_finds_each_broken_rule() {
    let app = spawn_app().await;
    let confirmed = app.create_order(&[("KB-001", 2)]).await;
    let confirmed: Uuid = confirmed["id"].as_str().expect("id").parse().expect("uuid");
    let order = app.wait_for_terminal(&confirmed.to_string()).await;
    assert_eq!(order["status"], "CONFIRMED", "{order:#}");
    app.wait_until_quiet().await;
    let initial = [("KB-001", 100)];
    let report = app.invariants(&initial).await;
    assert!(report.holds(), "consistent to begin with: {report:#?}");

    // Money: the confirmed order's payment refunded, its shipment cancelled.
    payments::Entity::update_many()
        .col_expr(payments::Column::Status, Expr::value("REFUNDED"))
        .filter(payments::Column::OrderId.eq(confirmed))
        .exec(&app.stores.payment)
        .await
        .expect("update payment");
    shipments::Entity::update_many()
        .col_expr(shipments::Column::Status, Expr::value("CANCELLED"))
        .filter(shipments::Column::OrderId.eq(confirmed))
        .exec(&app.stores.shipping)
        .await
        .expect("update shipment");
    // Stock: one unit sold that no order bought, and a reservation still holding stock
    // that the counters do not show.
    stock::Entity::update_many()
        .col_expr(stock::Column::Sold, Expr::col(stock::Column::Sold).add(1))
        .filter(stock::Column::Sku.eq("KB-001"))
        .exec(&app.stores.inventory)
        .await
        .expect("update stock");
    reservations::Entity::update_many()
        .col_expr(reservations::Column::Status, Expr::value("RESERVED"))
        .filter(reservations::Column::OrderId.eq(confirmed))
        .exec(&app.stores.inventory)
        .await
        .expect("update reservation");

    let report = app.invariants(&initial).await;
    assert!(!report.holds() && !report.consistent(), "{report:#?}");
    let expected = [
        format!("CONFIRMED order {confirmed} has payment Some(\"REFUNDED\"), expected CHARGED"),
        format!("CONFIRMED order {confirmed} has shipment Some(\"CANCELLED\"), expected SCHEDULED"),
        format!(
            "CONFIRMED order {confirmed} has reservation Some(\"RESERVED\"), expected CONSUMED"
        ),
        "KB-001: reserved counter 0 but live reservations hold 2".to_owned(),
        "KB-001: sold counter 3 but CONFIRMED orders consumed 2".to_owned(),
        "KB-001: initial 100 != available 98 + held 2 + sold 2".to_owned(),
    ];
    for line in &expected {
        assert!(
            report.violations.contains(line),
            "missing {line:?} in {:#?}",
            report.violations
        );
    }
    assert_eq!(report.violations.len(), expected.len(), "{report:#?}");

    // Progress: an order left half-way is in flight, a parked one is counted apart.
    orders::Entity::update_many()
        .col_expr(orders::Column::Status, Expr::value("PAID"))
        .filter(orders::Column::Id.eq(confirmed))
        .exec(&app.stores.orders)
        .await
        .expect("update order");
    let report = app.invariants(&initial).await;
    assert_eq!((report.in_flight, report.parked), (1, 0), "{report:#?}");
    assert_eq!(report.orders_by_status.get("PAID"), Some(&1));
    orders::Entity::update_many()
        .col_expr(orders::Column::ParkedReason, Expr::value("crash loop"))
        .filter(orders::Column::Id.eq(confirmed))
        .exec(&app.stores.orders)
        .await
        .expect("park order");
    let report = app.invariants(&initial).await;
    assert_eq!((report.in_flight, report.parked), (0, 1), "{report:#?}");
    assert!(!report.holds());

    // Compensation: a reversed order that still holds its stock, its money and a shipment.
    orders::Entity::update_many()
        .col_expr(orders::Column::Status, Expr::value("REVERSED"))
        .col_expr(
            orders::Column::ParkedReason,
            Expr::value(Option::<String>::None),
        )
        .filter(orders::Column::Id.eq(confirmed))
        .exec(&app.stores.orders)
        .await
        .expect("update order");
    payments::Entity::update_many()
        .col_expr(payments::Column::Status, Expr::value("CHARGED"))
        .filter(payments::Column::OrderId.eq(confirmed))
        .exec(&app.stores.payment)
        .await
        .expect("update payment");
    shipments::Entity::update_many()
        .col_expr(shipments::Column::Status, Expr::value("SCHEDULED"))
        .filter(shipments::Column::OrderId.eq(confirmed))
        .exec(&app.stores.shipping)
        .await
        .expect("update shipment");
    let report = app.invariants(&initial).await;
    for line in [
        format!("REVERSED order {confirmed} still holds stock (Some(\"RESERVED\"))"),
        format!("REVERSED order {confirmed} has an un-refunded payment"),
        format!("REVERSED order {confirmed} has a scheduled shipment"),
    ] {
        assert!(
            report.violations.contains(&line),
            "missing {line:?} in {:#?}",
            report.violations
        );
    }
    assert_eq!((report.in_flight, report.parked), (0, 0), "{report:#?}");
}

/// The check reads the orders a page at a time (with the participants' records of the
/// page's id range), so its memory does not grow with the tables. Across page boundaries it
/// must see what one page sees: the same counts, the stock sold by orders of every page,
/// and a broken rule on the last page.
async fn pages_see_what_one_read_sees(embedded: bool) {
    let app = spawn_app_with(TestOptions {
        embedded,
        ..Default::default()
    })
    .await;
    let mut ids = Vec::new();
    for _ in 0..5 {
        let created = app.create_order(&[("KB-001", 2)]).await;
        let id: Uuid = created["id"].as_str().expect("id").parse().expect("uuid");
        let order = app.wait_for_terminal(&id.to_string()).await;
        assert_eq!(order["status"], "CONFIRMED", "{order:#}");
        ids.push(id);
    }
    app.wait_until_quiet().await;
    // The last order in id order (the check's order), on the last page of every size below.
    let last = *ids.iter().max().expect("five orders");
    payments::Entity::update_many()
        .col_expr(payments::Column::Status, Expr::value("REFUNDED"))
        .filter(payments::Column::OrderId.eq(last))
        .exec(&app.stores.payment)
        .await
        .expect("update payment");

    let initial: BTreeMap<String, i64> = [("KB-001".to_owned(), 100)].into();
    let expected = vec![format!(
        "CONFIRMED order {last} has payment Some(\"REFUNDED\"), expected CHARGED"
    )];
    for page in [1, 2, 5, 6, 10_000] {
        let report = invariants::check_in_pages(&app.stores, Some(&initial), page)
            .await
            .expect("invariant check runs");
        assert_eq!(report.violations, expected, "page of {page}: {report:#?}");
        assert_eq!(
            report.orders_by_status,
            BTreeMap::from([("CONFIRMED".to_owned(), 5)]),
            "page of {page}"
        );
        assert_eq!((report.in_flight, report.parked), (0, 0), "page of {page}");
    }
}

#[tokio::test]
async fn postgres_the_invariant_check_reads_in_pages_and_sees_every_page() {
    pages_see_what_one_read_sees(false).await;
}

#[tokio::test]
async fn sqlite_the_invariant_check_reads_in_pages_and_sees_every_page() {
    pages_see_what_one_read_sees(true).await;
}
