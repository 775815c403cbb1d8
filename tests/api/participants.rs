//! A participant's batch against the real stores. On PostgreSQL, Payment and Shipping try a
//! batch as one statement (the new records' `INSERT … ON CONFLICT DO NOTHING` with their
//! replies) and send the deliveries whose order already has a record down the transaction
//! path; on SQLite every batch takes the transaction path. Inventory always takes the
//! transaction path. Both must answer alike: a new
//! charge is decided, a repeated one answers from the record (first outcome, first
//! amount), a refund before any charge voids the order, a poison delivery is dead-lettered
//! — with exactly one reply per delivery in the participant's outbox.
//!
//! The deliveries come through the in-process bus (it only carries them here); what is
//! under test is the participant against the database.

use crate::helpers::migrated_stores;
use entity::{outbox, payments, reservations, shipments};
use order_service::messaging::consumer::Disposition;
use order_service::messaging::topology::{
    COMMANDS_EXCHANGE, INVENTORY_QUEUE, PAYMENT_QUEUE, SHIPPING_QUEUE,
};
use order_service::messaging::{Bus, IncomingMessage, OutgoingMessage};
use order_service::participants::handle_batch;
use order_service::participants::inventory::{Inventory, StockUpdate};
use order_service::participants::payment::Payment;
use order_service::participants::shipping::Shipping;
use sea_orm::{EntityTrait, QueryOrder};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use uuid::Uuid;

/// Publishes these commands and hands them back as deliveries, in order.
async fn deliveries(
    bus: &Bus,
    subscription: &mut order_service::messaging::Subscription,
    commands: &[(Uuid, &str, Value)],
) -> Vec<Arc<IncomingMessage>> {
    let mut delivered = Vec::new();
    for (order_id, kind, payload) in commands {
        let message_id = Uuid::now_v7();
        let envelope = json!({
            "message_id": message_id, "order_id": order_id, "occurred_at": chrono::Utc::now(),
            "version": 1, "type": kind, "payload": payload,
        });
        let body = if *kind == "poison" {
            b"{ not json".to_vec()
        } else {
            serde_json::to_vec(&envelope).expect("serializable")
        };
        let routing_key = if *kind == "poison" {
            "payment.charge"
        } else {
            kind
        };
        bus.publish(&OutgoingMessage {
            exchange: COMMANDS_EXCHANGE.to_owned(),
            routing_key: routing_key.to_owned(),
            message_id,
            kind: routing_key.to_owned(),
            payload: body,
            headers: BTreeMap::new(),
        })
        .await
        .expect("publish");
        let delivery = tokio::time::timeout(Duration::from_secs(10), subscription.next())
            .await
            .expect("delivered within 10 s")
            .expect("subscription open");
        delivered.push(Arc::new(delivery));
    }
    delivered
}

/// The replies in a participant's outbox, in the order they were written: `(outbox id,
/// order, type, amount or reason or tracking number)`.
async fn replies(store: &sea_orm::DatabaseConnection) -> Vec<(i64, Uuid, String, Value)> {
    let mut written = Vec::new();
    for row in outbox::Entity::find()
        .order_by_asc(outbox::Column::Id)
        .all(store)
        .await
        .expect("outbox")
    {
        let envelope: Value = serde_json::from_str(&row.payload).expect("a JSON envelope");
        let order_id = envelope["order_id"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .expect("order id");
        let payload = &envelope["payload"];
        let detail = ["amount_cents", "reason", "tracking_number"]
            .iter()
            .map(|field| payload[*field].clone())
            .find(|v| !v.is_null())
            .unwrap_or(Value::Null);
        assert_eq!(row.routing_key, envelope["type"], "routing key is the type");
        written.push((row.id, order_id, row.routing_key, detail));
    }
    written
}

/// [`replies`] per order, each order's in the order they were written.
fn by_order(replies: &[(i64, Uuid, String, Value)]) -> BTreeMap<Uuid, Vec<(String, Value)>> {
    let mut by_order: BTreeMap<Uuid, Vec<(String, Value)>> = BTreeMap::new();
    for (_, order_id, kind, detail) in replies {
        by_order
            .entry(*order_id)
            .or_default()
            .push((kind.clone(), detail.clone()));
    }
    by_order
}

fn charge(order_id: Uuid, amount_cents: i64) -> (Uuid, &'static str, Value) {
    (
        order_id,
        "payment.charge",
        json!({"amount_cents": amount_cents, "currency": "USD"}),
    )
}

async fn payment_batches_answer_new_and_repeated_commands_alike(embedded: bool) {
    let (stores, _amqp, _backing) = migrated_stores(embedded).await;
    let payment = Payment::new(stores.payment.clone(), Default::default(), 0.0);
    let bus = Bus::connect(None).await.expect("in-process bus");
    let mut subscription = bus
        .subscribe(PAYMENT_QUEUE, "test-payment", 64)
        .await
        .expect("subscribe");
    let (a, b, c, d) = (
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
        Uuid::now_v7(),
    );

    let first = deliveries(&bus, &mut subscription, &[charge(a, 100)]).await;
    assert_eq!(handle_batch(&payment, &first).await, [Disposition::Ack]);

    // A's charge again (a redelivery, with a different amount on purpose), a new charge,
    // a refund before any charge, a poison delivery, and a new order charged and refunded
    // within the batch, in one batch.
    let second = deliveries(
        &bus,
        &mut subscription,
        &[
            charge(a, 999),
            charge(b, 200),
            (c, "payment.refund", json!({})),
            (Uuid::now_v7(), "poison", json!({})),
            charge(d, 400),
            (d, "payment.refund", json!({})),
        ],
    )
    .await;
    let dispositions = handle_batch(&payment, &second).await;
    assert_eq!(dispositions.len(), second.len(), "{dispositions:?}");
    for (i, disposition) in dispositions.iter().enumerate() {
        if i == 3 {
            assert!(
                matches!(disposition, Disposition::DeadLetter(reason) if reason.contains("undecodable")),
                "{dispositions:?}"
            );
        } else {
            assert_eq!(*disposition, Disposition::Ack, "{dispositions:?}");
        }
    }

    // The late charge of the voided order.
    let third = deliveries(&bus, &mut subscription, &[charge(c, 300)]).await;
    assert_eq!(handle_batch(&payment, &third).await, [Disposition::Ack]);

    let records: Vec<(Uuid, String, i64)> = payments::Entity::find()
        .order_by_asc(payments::Column::OrderId)
        .all(&stores.payment)
        .await
        .expect("payments")
        .into_iter()
        .map(|p| (p.order_id, p.status, p.amount_cents))
        .collect();
    assert_eq!(
        records,
        [
            (a, "CHARGED".to_owned(), 100),
            (b, "CHARGED".to_owned(), 200),
            (c, "VOIDED".to_owned(), 0),
            (d, "REFUNDED".to_owned(), 400),
        ],
        "one record per order; the repeated charge changed nothing"
    );
    let charged = |amount: i64| ("payment.charged".to_owned(), json!(amount));
    let written = replies(&stores.payment).await;
    assert_eq!(
        by_order(&written),
        BTreeMap::from([
            (a, vec![charged(100), charged(100)]),
            (b, vec![charged(200)]),
            (
                c,
                vec![
                    ("payment.refunded".to_owned(), json!(0)),
                    ("payment.declined".to_owned(), json!("payment was voided")),
                ]
            ),
            (
                d,
                vec![charged(400), ("payment.refunded".to_owned(), json!(400))]
            ),
        ]),
        "one reply per delivery; the repeat answers from the record"
    );
    // Which path answered: on PostgreSQL the new orders' replies of the second batch are
    // written by its one statement, before A's repeat goes the transaction path (although
    // A came first in the batch); on SQLite the whole batch is one transaction, in order.
    let id_of = |order: Uuid, nth: usize| {
        written
            .iter()
            .filter(|(_, o, _, _)| *o == order)
            .nth(nth)
            .map(|(id, ..)| *id)
            .expect("reply")
    };
    assert_eq!(
        id_of(b, 0) < id_of(a, 1),
        !embedded,
        "on PostgreSQL the one-statement path wrote B's reply before A's repeat: {written:?}"
    );
    stores.close().await;
}

#[tokio::test]
async fn postgres_payment_batches_answer_new_and_repeated_commands_alike() {
    payment_batches_answer_new_and_repeated_commands_alike(false).await;
}

#[tokio::test]
async fn sqlite_payment_batches_answer_new_and_repeated_commands_alike() {
    payment_batches_answer_new_and_repeated_commands_alike(true).await;
}

async fn shipping_batches_answer_a_repeated_schedule_from_the_record(embedded: bool) {
    let (stores, _amqp, _backing) = migrated_stores(embedded).await;
    let shipping = Shipping::new(stores.shipping.clone(), Default::default(), 0.0);
    let bus = Bus::connect(None).await.expect("in-process bus");
    let mut subscription = bus
        .subscribe(SHIPPING_QUEUE, "test-shipping", 64)
        .await
        .expect("subscribe");
    let (e, f) = (Uuid::now_v7(), Uuid::now_v7());
    let items = json!({"items": [{"sku": "CB-004", "quantity": 1}]});
    let schedule = |order: Uuid| (order, "shipping.schedule", items.clone());

    let first = deliveries(&bus, &mut subscription, &[schedule(e)]).await;
    assert_eq!(handle_batch(&shipping, &first).await, [Disposition::Ack]);
    let second = deliveries(
        &bus,
        &mut subscription,
        &[schedule(e), schedule(f), (f, "shipping.cancel", json!({}))],
    )
    .await;
    assert_eq!(
        handle_batch(&shipping, &second).await,
        [Disposition::Ack, Disposition::Ack, Disposition::Ack]
    );

    let records: Vec<(Uuid, String)> = shipments::Entity::find()
        .order_by_asc(shipments::Column::OrderId)
        .all(&stores.shipping)
        .await
        .expect("shipments")
        .into_iter()
        .map(|s| (s.order_id, s.status))
        .collect();
    assert_eq!(
        records,
        [(e, "SCHEDULED".to_owned()), (f, "CANCELLED".to_owned())]
    );
    let written = by_order(&replies(&stores.shipping).await);
    let e_replies = &written[&e];
    assert_eq!(e_replies.len(), 2, "{written:?}");
    assert!(
        e_replies
            .iter()
            .all(|(kind, tracking)| kind == "shipping.scheduled" && *tracking == e_replies[0].1),
        "the repeat answers with the first tracking number: {written:?}"
    );
    assert_eq!(
        written[&f]
            .iter()
            .map(|(kind, _)| kind.as_str())
            .collect::<Vec<_>>(),
        ["shipping.scheduled", "shipping.cancelled"]
    );
    stores.close().await;
}

#[tokio::test]
async fn postgres_shipping_batches_answer_a_repeated_schedule_from_the_record() {
    shipping_batches_answer_a_repeated_schedule_from_the_record(false).await;
}

#[tokio::test]
async fn sqlite_shipping_batches_answer_a_repeated_schedule_from_the_record() {
    shipping_batches_answer_a_repeated_schedule_from_the_record(true).await;
}

/// Delivers these commands to Inventory as one batch; every delivery must be acked.
async fn inventory_batch(
    inventory: &Inventory,
    bus: &Bus,
    subscription: &mut order_service::messaging::Subscription,
    commands: &[(Uuid, &str, Value)],
) {
    let batch = deliveries(bus, subscription, commands).await;
    let dispositions = handle_batch(inventory, &batch).await;
    assert!(
        dispositions.len() == batch.len() && dispositions.iter().all(|d| *d == Disposition::Ack),
        "{dispositions:?}"
    );
}

fn reserve(order_id: Uuid, lines: &[(&str, i64)]) -> (Uuid, &'static str, Value) {
    let items: Vec<Value> = lines
        .iter()
        .map(|(sku, quantity)| json!({"sku": sku, "quantity": quantity}))
        .collect();
    (order_id, "stock.reserve", json!({ "items": items }))
}

fn release(order_id: Uuid) -> (Uuid, &'static str, Value) {
    (order_id, "stock.release", json!({}))
}

/// Inventory's batches on both stores: reservations (one of two SKUs at once), releases
/// before and after a reservation, an invalid quantity, redeliveries, a SKU running short
/// and an unknown SKU are decided as the saga expects, without overselling: the counters,
/// the records and one reply per delivery are checked.
async fn inventory_batches_reserve_release_and_run_short_alike(embedded: bool) {
    let (stores, _amqp, _backing) = migrated_stores(embedded).await;
    let inventory = Inventory::new(stores.inventory.clone(), Default::default());
    for (sku, available) in [("A-1", 5), ("B-2", 2)] {
        inventory
            .put(
                sku,
                StockUpdate {
                    name: None,
                    price_cents: 100,
                    available,
                },
            )
            .await
            .expect("stock put");
    }
    let bus = Bus::connect(None).await.expect("in-process bus");
    let mut subscription = bus
        .subscribe(INVENTORY_QUEUE, "test-inventory", 64)
        .await
        .expect("subscribe");
    let o: Vec<Uuid> = (0..10).map(|_| Uuid::now_v7()).collect();

    // New orders only: two reservations, a release before any reservation, an invalid
    // quantity, a reservation released within the batch, a two-SKU reservation.
    inventory_batch(
        &inventory,
        &bus,
        &mut subscription,
        &[
            reserve(o[1], &[("A-1", 2)]),
            reserve(o[2], &[("A-1", 2)]),
            release(o[3]),
            reserve(o[4], &[("A-1", 0)]),
            reserve(o[5], &[("A-1", 1)]),
            release(o[5]),
            reserve(o[8], &[("B-2", 1), ("A-1", 1)]),
        ],
    )
    .await;
    // 5 - 2 - 2 - 1 = 0 available; B-2: 2 - 1 = 1.

    // O1 again (a redelivery), O6 (nothing left), O2's release (its record exists).
    inventory_batch(
        &inventory,
        &bus,
        &mut subscription,
        &[
            reserve(o[1], &[("A-1", 2)]),
            reserve(o[6], &[("A-1", 1)]),
            release(o[2]),
        ],
    )
    .await;
    // 0 + 2 = 2 available.

    // O7 takes what O2 gave back; an unknown SKU is refused.
    inventory_batch(
        &inventory,
        &bus,
        &mut subscription,
        &[
            reserve(o[7], &[("A-1", 2)]),
            reserve(o[0], &[("NO-SUCH", 1)]),
        ],
    )
    .await;

    // O1 once more, and a new order for B-2's last unit.
    inventory_batch(
        &inventory,
        &bus,
        &mut subscription,
        &[reserve(o[1], &[("A-1", 2)]), reserve(o[9], &[("B-2", 1)])],
    )
    .await;

    let counters = |sku: &'static str| {
        let inventory = inventory.clone();
        async move {
            let view = inventory
                .get(sku)
                .await
                .expect("stock")
                .expect("sku exists");
            (view.available, view.reserved, view.sold)
        }
    };
    assert_eq!(
        counters("A-1").await,
        (0, 5, 0),
        "A-1: O1 2 + O7 2 + O8 1 reserved"
    );
    assert_eq!(
        counters("B-2").await,
        (0, 2, 0),
        "B-2: O8 1 + O9 1 reserved"
    );

    let records: BTreeMap<Uuid, String> = reservations::Entity::find()
        .all(&stores.inventory)
        .await
        .expect("reservations")
        .into_iter()
        .map(|r| (r.order_id, r.status))
        .collect();
    let status = |i: usize| records.get(&o[i]).map(String::as_str);
    assert_eq!(
        (0..10).map(status).collect::<Vec<_>>(),
        [
            Some("REJECTED"),
            Some("RESERVED"),
            Some("RELEASED"),
            Some("RELEASED"),
            Some("REJECTED"),
            Some("RELEASED"),
            Some("REJECTED"),
            Some("RESERVED"),
            Some("RESERVED"),
            Some("RESERVED"),
        ],
        "{records:?}"
    );

    let written = replies(&stores.inventory).await;
    let kinds = by_order(&written);
    let kinds_of =
        |i: usize| -> Vec<String> { kinds[&o[i]].iter().map(|(kind, _)| kind.clone()).collect() };
    assert_eq!(
        kinds_of(1),
        ["stock.reserved", "stock.reserved", "stock.reserved"],
        "the repeats answer alike"
    );
    assert_eq!(kinds_of(2), ["stock.reserved", "stock.released"]);
    assert_eq!(kinds_of(3), ["stock.released"]);
    assert_eq!(
        kinds[&o[4]],
        [(
            "stock.rejected".to_owned(),
            json!("invalid quantity 0 for A-1")
        )]
    );
    assert_eq!(kinds_of(5), ["stock.reserved", "stock.released"]);
    assert_eq!(
        kinds[&o[6]],
        [(
            "stock.rejected".to_owned(),
            json!("not enough stock for A-1")
        )]
    );
    assert_eq!(kinds_of(7), ["stock.reserved"]);
    assert_eq!(kinds_of(8), ["stock.reserved"]);
    assert_eq!(
        kinds[&o[0]],
        [(
            "stock.rejected".to_owned(),
            json!("not enough stock for NO-SUCH")
        )]
    );
    assert_eq!(kinds_of(9), ["stock.reserved"]);
    assert_eq!(written.len(), 14, "one reply per delivery: {written:?}");
    stores.close().await;
}

#[tokio::test]
async fn postgres_inventory_batches_reserve_release_and_run_short_alike() {
    inventory_batches_reserve_release_and_run_short_alike(false).await;
}

#[tokio::test]
async fn sqlite_inventory_batches_reserve_release_and_run_short_alike() {
    inventory_batches_reserve_release_and_run_short_alike(true).await;
}
