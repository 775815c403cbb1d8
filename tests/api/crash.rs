//! Crash safety inside one process: an order actor that panics is restarted and finishes
//! its saga (a create it crashed on is answered once, as new); a crash loop is bounded and
//! parks the order visibly, but late replies never park a finished one; a participant that never answers gets retries, then
//! compensation; duplicated and poison messages have one effect
//! (or none); expired idempotency keys are swept.

use crate::helpers::{TestApp, TestOptions, order_body, spawn_app_with};
use futures::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicPublishOptions};
use lapin::types::FieldTable;
use order_service::domain::saga::PaymentMode;
use order_service::participants::payment::PaymentStatus;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

async fn ready_json(app: &TestApp) -> Value {
    app.client
        .get(app.url("/health/ready"))
        .send()
        .await
        .expect("GET /health/ready")
        .json()
        .await
        .expect("JSON")
}

/// One order through an app whose actor panics once at `event`; returns the final order.
async fn survive_one_panic(event: &str, decline: f64) -> (TestApp, Value) {
    let app = spawn_app_with(TestOptions {
        fault_actor_panic: Some(event.to_owned()),
        payment_decline_rate: decline,
        ..Default::default()
    })
    .await;
    let created = app.create_order(&[("KB-001", 1)]).await;
    let order = app
        .wait_for_terminal(created["id"].as_str().expect("id"))
        .await;
    (app, order)
}

#[tokio::test]
async fn an_actor_panicking_at_each_saga_step_is_restarted_and_the_order_completes() {
    for (event, decline, expected) in [
        ("stock_reserved", 0.0, "CONFIRMED"),
        ("payment_charged", 0.0, "CONFIRMED"),
        ("shipment_scheduled", 0.0, "CONFIRMED"),
        ("stock_released", 1.0, "REVERSED"),
    ] {
        let (app, order) = survive_one_panic(event, decline).await;
        assert_eq!(order["status"], expected, "panic at {event}: {order:#}");
        let ready = ready_json(&app).await;
        assert!(
            ready["order_actors"]["restarts"].as_u64() >= Some(1),
            "panic at {event} was not a supervised restart: {ready}"
        );
        assert_eq!(ready["order_actors"]["parked"], 0);
        app.wait_until_quiet().await;
        let report = app.invariants(&[("KB-001", 100)]).await;
        assert!(report.holds(), "panic at {event}: {:#?}", report.violations);
    }
}

/// The actor dies after the new order's write committed, before it answered: the retried
/// create finds the key taken by that very order. The client gets its order once, as new
/// (201, no replay mark); only a second request with the key is a replay.
#[tokio::test]
async fn an_actor_crashing_right_after_creating_the_order_answers_it_as_new_not_replayed() {
    let app = spawn_app_with(TestOptions {
        fault_actor_panic: Some("order_created".into()),
        ..Default::default()
    })
    .await;
    let key = Uuid::new_v4().to_string();
    let body = order_body(&[("KB-001", 2)]);
    let first = app.post_order(Some(&key), &body).await;
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(
        first.headers().get("idempotent-replayed").is_none(),
        "the request's own order was answered as a replay: {:?}",
        first.headers()
    );
    let location = first.headers()["location"]
        .to_str()
        .expect("Location")
        .to_owned();
    let created: Value = first.json().await.expect("JSON");
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(location, format!("/api/orders/{id}"));

    let ready = ready_json(&app).await;
    assert!(
        ready["order_actors"]["restarts"].as_u64() >= Some(1),
        "the fault did not crash the actor: {ready}"
    );
    let order = app.wait_for_terminal(&id).await;
    assert_eq!(order["status"], "CONFIRMED", "{order:#}");

    let again = app.post_order(Some(&key), &body).await;
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let replayed: Value = again.json().await.expect("JSON");
    assert_eq!(replayed["id"], created["id"]);

    app.wait_until_quiet().await;
    let report = app.invariants(&[("KB-001", 100)]).await;
    assert!(report.holds(), "{:#?}", report.violations);
    assert_eq!(
        report.orders_by_status.values().sum::<u64>(),
        1,
        "{:?}",
        report.orders_by_status
    );
}

#[tokio::test]
async fn a_crash_loop_stops_at_the_restart_limit_and_parks_the_order_visibly() {
    let app = spawn_app_with(TestOptions {
        fault_actor_panic: Some("payment_charged:always".into()),
        ..Default::default()
    })
    .await;
    let created = app.create_order(&[("KB-001", 1)]).await;
    let id = created["id"].as_str().expect("id");

    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let order = loop {
        let order = app.get_order(id).await;
        if order["parked_reason"].is_string() {
            break order;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never parked: {order:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    assert_eq!(order["status"], "STOCK_RESERVED", "parked where it crashed");
    assert!(
        order["parked_reason"]
            .as_str()
            .expect("reason")
            .contains("fault injection")
    );
    assert_eq!(
        order["history"]
            .as_array()
            .expect("history")
            .last()
            .expect("entry")["event"],
        "parked"
    );
    let ready = ready_json(&app).await;
    assert_eq!(ready["order_actors"]["parked"], 1);
    assert_eq!(
        ready["order_actors"]["restarts"].as_u64(),
        Some(order_service::orchestrator::actors::supervisor::MAX_RESTARTS as u64)
    );
    // Parked means left alone: admin commands get a clear 409.
    let response = app
        .patch_status(
            id,
            &json!({"status": "REVERSED"}),
            Some(crate::helpers::ADMIN_TOKEN),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
}

#[tokio::test]
async fn a_participant_that_never_answers_gets_retries_then_the_order_is_reversed() {
    let app = spawn_app_with(TestOptions {
        fault_drop_commands: vec!["payment.charge".into()],
        step_timeout_ms: 150,
        step_max_retries: 2,
        ..Default::default()
    })
    .await;
    let created = app.create_order(&[("HS-005", 2)]).await;

    let order = app
        .wait_for_terminal(created["id"].as_str().expect("id"))
        .await;

    assert_eq!(order["status"], "REVERSED", "{order:#}");
    assert_eq!(order["failure_reason"], "payment did not answer in time");
    assert_eq!(order["steps"]["payment"], "REFUNDED");
    assert_eq!(order["steps"]["reservation"], "RELEASED");
    let ready = ready_json(&app).await;
    assert_eq!(
        ready["order_actors"]["step_retries"], 2,
        "two resends before giving up"
    );
    assert_eq!(ready["order_actors"]["step_timeouts"], 1);
    app.wait_until_quiet().await;
    assert_eq!(app.stock("HS-005").await["available"], 50);
    assert!(app.invariants(&[("HS-005", 50)]).await.holds());
}

async fn publish(channel: &lapin::Channel, exchange: &str, routing_key: &str, body: &Value) {
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            BasicPublishOptions::default(),
            &serde_json::to_vec(body).expect("JSON"),
            BasicProperties::default().with_delivery_mode(2),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

fn envelope(order_id: &str, kind: &str, payload: Value) -> Value {
    json!({
        "message_id": Uuid::now_v7(), "order_id": order_id, "occurred_at": chrono::Utc::now(),
        "version": 1, "type": kind, "payload": payload,
    })
}

#[tokio::test]
async fn duplicated_commands_and_replies_have_exactly_one_effect() {
    let app = spawn_app_with(TestOptions {
        payment_mode: PaymentMode::Manual,
        ..Default::default()
    })
    .await;
    let created = app.create_order(&[("MN-003", 3)]).await;
    let id = created["id"].as_str().expect("id").to_owned();
    app.wait_for_status(&id, &["STOCK_RESERVED"]).await;
    let (_connection, channel) = app.broker_channel().await;

    // The same reserve command twice, and the same reply twice, on purpose.
    let reserve = envelope(
        &id,
        "stock.reserve",
        json!({"items": [{"sku": "MN-003", "quantity": 3}]}),
    );
    publish(&channel, "order.commands", "stock.reserve", &reserve).await;
    publish(&channel, "order.commands", "stock.reserve", &reserve).await;
    let reserved = envelope(&id, "stock.reserved", json!({}));
    publish(&channel, "order.replies", "stock.reserved", &reserved).await;
    publish(&channel, "order.replies", "stock.reserved", &reserved).await;
    app.wait_until_quiet().await;

    let order = app.get_order(&id).await;
    assert_eq!(
        order["history"].as_array().expect("history").len(),
        2,
        "PENDING, STOCK_RESERVED only: {order:#}"
    );
    let stock = app.stock("MN-003").await;
    assert_eq!(
        (stock["available"].as_i64(), stock["reserved"].as_i64()),
        (Some(22), Some(3)),
        "reserved once"
    );

    assert_eq!(
        app.pay(&id, &json!({"outcome": "approve"})).await.status(),
        StatusCode::ACCEPTED
    );
    app.wait_for_terminal(&id).await;
    // Replays after the end: a second charge and a second shipment reply.
    let charge = envelope(
        &id,
        "payment.charge",
        json!({"amount_cents": 1, "currency": "USD"}),
    );
    publish(&channel, "order.commands", "payment.charge", &charge).await;
    publish(
        &channel,
        "order.replies",
        "shipping.scheduled",
        &envelope(&id, "shipping.scheduled", json!({"tracking_number": "X"})),
    )
    .await;
    app.wait_until_quiet().await;

    let order = app.get_order(&id).await;
    let events: Vec<&str> = order["history"]
        .as_array()
        .expect("history")
        .iter()
        .map(|h| h["event"].as_str().expect("event"))
        .collect();
    assert_eq!(
        events,
        [
            "order_created",
            "stock_reserved",
            "payment_submitted",
            "payment_charged",
            "shipment_scheduled"
        ],
        "the replayed reply changed nothing"
    );
    let payments = order_service::participants::payment::Payment::new(
        app.stores.payment.clone(),
        Default::default(),
        0.0,
    )
    .all()
    .await
    .expect("payments");
    assert_eq!(
        payments,
        vec![(
            id.parse().expect("uuid"),
            PaymentStatus::Charged,
            3 * 24_900
        )],
        "charged once, for the real amount"
    );
    assert!(app.invariants(&[("MN-003", 25)]).await.holds());
}

/// Late replies for a finished order, each of which the faulty actor would panic on, more
/// of them than the crash-loop bound allows: the saga refuses them before anything can
/// fail, so the order is never parked. (The fault is on a reply the order never applied:
/// one on a reply it needs would stop it on its way to CONFIRMED.)
#[tokio::test]
async fn late_replies_for_a_finished_order_never_crash_loop_it_into_parking() {
    let app = spawn_app_with(TestOptions {
        fault_actor_panic: Some("payment_declined:always".into()),
        ..Default::default()
    })
    .await;
    let created = app.create_order(&[("KB-001", 1)]).await;
    let id = created["id"].as_str().expect("id").to_owned();
    assert_eq!(app.wait_for_terminal(&id).await["status"], "CONFIRMED");
    let (_connection, channel) = app.broker_channel().await;

    let refused = || {
        app.metric(
            "order_events_refused_total",
            &[("event", "payment_declined")],
        )
    };
    let refused_before = refused().await;
    let late = envelope(&id, "payment.declined", json!({"reason": "late"}));
    let replies = order_service::orchestrator::actors::supervisor::MAX_RESTARTS + 3;
    for _ in 0..replies {
        publish(&channel, "order.replies", "payment.declined", &late).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let order = app.get_order(&id).await;
        assert!(
            order["parked_reason"].is_null(),
            "a finished order was parked: {order:#}"
        );
        if refused().await - refused_before >= replies as f64 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the late replies were not all refused: {order:#}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let order = app.get_order(&id).await;
    assert_eq!(order["status"], "CONFIRMED", "{order:#}");
    assert!(order["parked_reason"].is_null(), "{order:#}");
    let ready = ready_json(&app).await;
    assert_eq!(ready["order_actors"]["parked"], 0, "{ready}");
    assert_eq!(ready["order_actors"]["restarts"], 0, "{ready}");
    app.wait_until_quiet().await;
    let report = app.invariants(&[("KB-001", 100)]).await;
    assert!(report.holds(), "{:#?}", report.violations);
}

#[tokio::test]
async fn poison_messages_go_to_the_dead_letter_queue_and_do_not_block_the_queue() {
    let app = spawn_app_with(TestOptions::default()).await;
    let (_connection, channel) = app.broker_channel().await;

    channel
        .basic_publish(
            "order.replies".into(),
            "stock.reserved".into(),
            BasicPublishOptions::default(),
            b"not json",
            BasicProperties::default(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
    let unknown = Uuid::now_v7().to_string();
    publish(
        &channel,
        "order.replies",
        "stock.reserved",
        &envelope(&unknown, "stock.reserved", json!({})),
    )
    .await;
    // The queue still flows: a real order completes.
    let created = app.create_order(&[("KB-001", 1)]).await;
    assert_eq!(
        app.wait_for_terminal(created["id"].as_str().expect("id"))
            .await["status"],
        "CONFIRMED"
    );

    let mut dead = channel
        .basic_consume(
            "order.dead-letters".into(),
            "test".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume dead letters");
    let mut bodies = Vec::new();
    for _ in 0..2 {
        let delivery = tokio::time::timeout(Duration::from_secs(10), dead.next())
            .await
            .expect("dead letters arrive")
            .expect("open")
            .expect("delivery");
        bodies.push(String::from_utf8_lossy(&delivery.data).to_string());
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert!(bodies.iter().any(|b| b == "not json"));
    assert!(bodies.iter().any(|b| b.contains(&unknown)));
    assert_eq!(
        app.order_count().await,
        1,
        "no order was made up for the unknown id"
    );
}

#[tokio::test]
async fn an_expired_idempotency_key_is_swept_and_accepted_as_new() {
    let app = spawn_app_with(TestOptions {
        idempotency_retention_secs: 1,
        ..Default::default()
    })
    .await;
    let first = app
        .post_order(Some("reused-key"), &order_body(&[("CB-004", 1)]))
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.expect("JSON");

    // Retention is the subject here: let one second pass, then sweep as the service does.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let swept = order_service::persistence::idempotency::sweep_expired(
        &app.stores.orders,
        chrono::Duration::seconds(1),
    )
    .await
    .expect("sweep");
    assert!(
        swept <= 1,
        "at most the one key (the service's own sweeper may have been first)"
    );

    let second = app
        .post_order(Some("reused-key"), &order_body(&[("CB-004", 2)]))
        .await;
    assert_eq!(
        second.status(),
        StatusCode::CREATED,
        "a different body is fine once the key expired"
    );
    assert!(second.headers().get("idempotent-replayed").is_none());
    let second: Value = second.json().await.expect("JSON");
    assert_ne!(first["id"], second["id"]);
    assert_eq!(app.order_count().await, 2);
}
