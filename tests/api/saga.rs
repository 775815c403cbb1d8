//! The saga end to end over the real PostgreSQL and RabbitMQ: happy path, each failure
//! and its compensation, lost reservations, admin overrides, the dev payment endpoint,
//! concurrency, and the embedded mode.

use crate::helpers::{ADMIN_TOKEN, TestOptions, order_body, spawn_app, spawn_app_with};
use futures::StreamExt;
use lapin::options::BasicAckOptions;
use order_service::domain::saga::PaymentMode;
use order_service::participants::payment::PaymentStatus;
use reqwest::StatusCode;
use serde_json::{Value, json};
use std::time::Duration;
use uuid::Uuid;

fn history_statuses(order: &Value) -> Vec<String> {
    order["history"]
        .as_array()
        .expect("history is a list")
        .iter()
        .map(|h| h["status"].as_str().expect("status is text").to_owned())
        .collect()
}

#[tokio::test]
async fn a_happy_order_is_confirmed_and_its_stock_sold() {
    let app = spawn_app().await;
    let created = app.create_order(&[("KB-001", 2), ("CB-004", 3)]).await;
    assert_eq!(created["status"], "PENDING");
    assert_eq!(created["total_cents"], 2 * 8_900 + 3 * 1_200);

    let order = app
        .wait_for_terminal(created["id"].as_str().expect("id"))
        .await;

    assert_eq!(order["status"], "CONFIRMED", "{order:#}");
    assert_eq!(
        history_statuses(&order),
        ["PENDING", "STOCK_RESERVED", "PAID", "CONFIRMED"]
    );
    assert_eq!(
        order["steps"],
        json!({"reservation": "RESERVED", "payment": "CHARGED", "shipment": "SCHEDULED"})
    );
    assert!(order["failure_reason"].is_null());
    app.wait_until_quiet().await;
    let keyboard = app.stock("KB-001").await;
    assert_eq!(
        (
            keyboard["available"].as_i64(),
            keyboard["reserved"].as_i64(),
            keyboard["sold"].as_i64()
        ),
        (Some(98), Some(0), Some(2))
    );
    let report = app.invariants(&[("KB-001", 100), ("CB-004", 500)]).await;
    assert!(report.holds(), "{:#?}", report.violations);
}

#[tokio::test]
async fn lifecycle_events_are_published_to_the_order_events_topic_exchange() {
    let app = spawn_app().await;
    let (_connection, mut consumer) = app.tap(&[("order.events", "order.#")]).await;

    let created = app.create_order(&[("MS-002", 1)]).await;
    let id = created["id"].as_str().expect("id").to_owned();

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !seen.contains(&"order.confirmed".to_owned()) {
        let delivery = tokio::time::timeout_at(deadline, consumer.next())
            .await
            .expect("events arrive in time")
            .expect("consumer open")
            .expect("delivery");
        let body: Value = serde_json::from_slice(&delivery.data).expect("event is JSON");
        assert_eq!(body["order_id"], id.as_str());
        assert_eq!(body["type"].as_str(), Some(delivery.routing_key.as_str()));
        seen.push(delivery.routing_key.to_string());
        delivery.ack(BasicAckOptions::default()).await.expect("ack");
    }
    assert_eq!(
        seen,
        [
            "order.created",
            "order.stock_reserved",
            "order.paid",
            "order.confirmed"
        ]
    );
}

#[tokio::test]
async fn a_declined_payment_reverses_the_order_and_returns_the_stock() {
    let app = spawn_app_with(TestOptions {
        payment_decline_rate: 1.0,
        ..Default::default()
    })
    .await;
    let created = app.create_order(&[("HS-005", 4)]).await;

    let order = app
        .wait_for_terminal(created["id"].as_str().expect("id"))
        .await;

    assert_eq!(order["status"], "REVERSED", "{order:#}");
    assert_eq!(
        history_statuses(&order),
        ["PENDING", "STOCK_RESERVED", "COMPENSATING", "REVERSED"]
    );
    assert_eq!(order["steps"]["payment"], "DECLINED");
    assert_eq!(order["steps"]["reservation"], "RELEASED");
    assert!(
        order["failure_reason"]
            .as_str()
            .expect("a reason")
            .contains("declined")
    );
    app.wait_until_quiet().await;
    let headset = app.stock("HS-005").await;
    assert_eq!(
        (headset["available"].as_i64(), headset["reserved"].as_i64()),
        (Some(50), Some(0))
    );
    assert!(app.invariants(&[("HS-005", 50)]).await.holds());
}

#[tokio::test]
async fn a_failed_shipment_refunds_the_payment_and_releases_the_stock() {
    let app = spawn_app_with(TestOptions {
        shipping_failure_rate: 1.0,
        ..Default::default()
    })
    .await;
    let created = app.create_order(&[("MN-003", 2)]).await;
    let id = created["id"].as_str().expect("id");

    let order = app.wait_for_terminal(id).await;

    assert_eq!(order["status"], "REVERSED", "{order:#}");
    assert_eq!(
        order["steps"],
        json!({"reservation": "RELEASED", "payment": "REFUNDED", "shipment": "FAILED"})
    );
    assert_eq!(
        history_statuses(&order),
        [
            "PENDING",
            "STOCK_RESERVED",
            "PAID",
            "COMPENSATING",
            "COMPENSATING",
            "REVERSED"
        ]
    );
    app.wait_until_quiet().await;
    let payments = order_service::participants::payment::Payment::new(
        app.stores.payment.clone(),
        Default::default(),
        0.0,
    )
    .all()
    .await
    .expect("payments");
    let order_id: Uuid = id.parse().expect("uuid");
    assert_eq!(
        payments,
        vec![(order_id, PaymentStatus::Refunded, 2 * 24_900)]
    );
    assert_eq!(app.stock("MN-003").await["available"], 25);
    assert!(app.invariants(&[("MN-003", 25)]).await.holds());
}

#[tokio::test]
async fn not_enough_stock_is_a_409_and_creates_no_order() {
    let app = spawn_app().await;
    let response = app
        .post_order(Some("k-409"), &order_body(&[("MN-003", 26)]))
        .await;

    assert_eq!(response.status(), StatusCode::CONFLICT);
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );
    let problem: Value = response.json().await.expect("problem body");
    assert_eq!(problem["type"], "/problems/insufficient-stock");
    assert_eq!(problem["available"], 25);
    assert_eq!(app.order_count().await, 0);
    assert_eq!(app.stock("MN-003").await["available"], 25);
}

#[tokio::test]
async fn a_reservation_lost_to_a_concurrent_order_is_rejected() {
    let mut app = spawn_app_with(TestOptions {
        participants: false,
        ..Default::default()
    })
    .await;
    app.put_stock("RACE-1", 5, 1_000).await;
    // Both pass the synchronous check (it holds nothing); only one can be reserved.
    let first = app.create_order(&[("RACE-1", 5)]).await;
    let second = app.create_order(&[("RACE-1", 5)]).await;

    app.start_participants().await;
    let a = app
        .wait_for_terminal(first["id"].as_str().expect("id"))
        .await;
    let b = app
        .wait_for_terminal(second["id"].as_str().expect("id"))
        .await;

    let mut statuses = [
        a["status"].as_str().expect("s"),
        b["status"].as_str().expect("s"),
    ];
    statuses.sort();
    assert_eq!(statuses, ["CONFIRMED", "REJECTED"]);
    let rejected = if a["status"] == "REJECTED" { &a } else { &b };
    assert_eq!(history_statuses(rejected), ["PENDING", "REJECTED"]);
    assert!(
        rejected["failure_reason"]
            .as_str()
            .expect("reason")
            .contains("not enough stock")
    );
    app.wait_until_quiet().await;
    let stock = app.stock("RACE-1").await;
    assert_eq!(
        (stock["available"].as_i64(), stock["sold"].as_i64()),
        (Some(0), Some(5))
    );
    assert!(app.invariants(&[("RACE-1", 5)]).await.holds());
}

#[tokio::test]
async fn two_hundred_concurrent_orders_never_oversell_fifty_units() {
    let app = spawn_app().await;
    app.put_stock("HOT-1", 50, 500).await;
    let responses = futures::future::join_all((0..200).map(|i| {
        let app = &app;
        async move {
            let key = format!("hot-{i}");
            let response = app
                .post_order(Some(&key), &order_body(&[("HOT-1", 1)]))
                .await;
            let status = response.status();
            let body: Value = response.json().await.expect("JSON");
            (status, body)
        }
    }))
    .await;

    let mut ids = Vec::new();
    for (status, body) in &responses {
        match *status {
            StatusCode::CREATED => ids.push(body["id"].as_str().expect("id").to_owned()),
            StatusCode::CONFLICT => assert_eq!(body["type"], "/problems/insufficient-stock"),
            other => panic!("unexpected {other}: {body}"),
        }
    }
    let mut confirmed = 0;
    for id in &ids {
        let order = app.wait_for_terminal(id).await;
        match order["status"].as_str() {
            Some("CONFIRMED") => confirmed += 1,
            Some("REJECTED") => {}
            other => panic!("order {id} ended {other:?}"),
        }
    }
    assert_eq!(confirmed, 50, "every unit sold exactly once");
    app.wait_until_quiet().await;
    let stock = app.stock("HOT-1").await;
    assert_eq!(
        (
            stock["available"].as_i64(),
            stock["reserved"].as_i64(),
            stock["sold"].as_i64()
        ),
        (Some(0), Some(0), Some(50))
    );
    let report = app.invariants(&[("HOT-1", 50)]).await;
    assert!(report.holds(), "{:#?}", report.violations);
    assert_eq!(report.orders_by_status.get("CONFIRMED"), Some(&50));
}

#[tokio::test]
async fn an_admin_can_cancel_an_order_awaiting_payment_and_the_stock_comes_back() {
    let app = spawn_app_with(TestOptions {
        payment_mode: PaymentMode::Manual,
        ..Default::default()
    })
    .await;
    let created = app.create_order(&[("KB-001", 10)]).await;
    let id = created["id"].as_str().expect("id");
    app.wait_for_status(id, &["STOCK_RESERVED"]).await;

    let response = app
        .patch_status(
            id,
            &json!({"status": "REVERSED", "reason": "customer called"}),
            Some(ADMIN_TOKEN),
        )
        .await;

    assert_eq!(response.status(), StatusCode::OK);
    let order = app.wait_for_terminal(id).await;
    assert_eq!(order["status"], "REVERSED");
    assert_eq!(
        order["failure_reason"],
        "cancelled by admin: customer called"
    );
    app.wait_until_quiet().await;
    assert_eq!(app.stock("KB-001").await["available"], 100);
    assert!(app.invariants(&[("KB-001", 100)]).await.holds());
}

#[tokio::test]
async fn an_idle_order_actor_is_passivated_and_the_order_resumes_from_storage() {
    let app = spawn_app_with(TestOptions {
        payment_mode: PaymentMode::Manual,
        actor_idle_secs: 1,
        ..Default::default()
    })
    .await;
    let created = app.create_order(&[("KB-001", 1)]).await;
    let id = created["id"].as_str().expect("id");
    app.wait_for_status(id, &["STOCK_RESERVED"]).await;
    let live = || async {
        let health: Value = app
            .client
            .get(app.url("/health/ready"))
            .send()
            .await
            .expect("health answers")
            .json()
            .await
            .expect("health is JSON");
        health["order_actors"]["live"].as_u64().expect("live count")
    };
    assert_eq!(
        live().await,
        1,
        "the order waiting for payment has its actor"
    );

    // Nothing happens to the order for longer than ACTOR_IDLE_SECS: its actor goes away.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while live().await > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the idle actor was not passivated"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The next command loads the order again and the saga goes on.
    let paid = app.pay(id, &json!({"outcome": "approve"})).await;
    assert!(paid.status().is_success(), "pay: {}", paid.status());
    let order = app.wait_for_terminal(id).await;
    assert_eq!(order["status"], "CONFIRMED");
    app.wait_until_quiet().await;
    assert!(app.invariants(&[("KB-001", 100)]).await.holds());
}

#[tokio::test]
async fn above_max_orders_in_flight_new_orders_get_503_with_retry_after_and_nothing_changes() {
    let app = spawn_app_with(TestOptions {
        payment_mode: PaymentMode::Manual,
        max_orders_in_flight: 1,
        ..Default::default()
    })
    .await;
    // The first order waits for its payment: one order in flight.
    let first = app.create_order(&[("KB-001", 1)]).await;
    let first_id = first["id"].as_str().expect("id");
    app.wait_for_status(first_id, &["STOCK_RESERVED"]).await;

    let key = Uuid::new_v4().to_string();
    let refused = app
        .post_order(Some(&key), &order_body(&[("KB-001", 1)]))
        .await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused.headers().get("retry-after").map(|v| v.as_bytes()),
        Some(&b"1"[..])
    );
    assert_eq!(
        refused.headers().get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/problem+json"[..])
    );
    let problem: Value = refused.json().await.expect("problem+json");
    assert_eq!(problem["status"], 503);
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("MAX_ORDERS_IN_FLIGHT")),
        "{problem}"
    );
    let listed: Value = app
        .client
        .get(app.url("/api/orders"))
        .send()
        .await
        .expect("list answers")
        .json()
        .await
        .expect("list is JSON");
    assert_eq!(
        listed["orders"].as_array().map(Vec::len),
        Some(1),
        "the refused order was not created: {listed}"
    );
    assert_eq!(app.stock("KB-001").await["available"], 99);

    // Once the first order is finished, the retry with the same key goes through.
    app.pay(first_id, &json!({"outcome": "approve"})).await;
    app.wait_for_terminal(first_id).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let retried = app
            .post_order(Some(&key), &order_body(&[("KB-001", 1)]))
            .await;
        if retried.status() == StatusCode::CREATED {
            break;
        }
        assert_eq!(retried.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            tokio::time::Instant::now() < deadline,
            "still refused after the first order finished"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn an_impossible_override_is_a_409_naming_the_allowed_transitions() {
    let app = spawn_app_with(TestOptions {
        payment_mode: PaymentMode::Manual,
        ..Default::default()
    })
    .await;
    let waiting = app.create_order(&[("KB-001", 1)]).await;
    let waiting_id = waiting["id"].as_str().expect("id");
    app.wait_for_status(waiting_id, &["STOCK_RESERVED"]).await;

    let response = app
        .patch_status(
            waiting_id,
            &json!({"status": "CONFIRMED"}),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let problem: Value = response.json().await.expect("problem");
    assert_eq!(problem["allowed"], json!(["REVERSED"]));
    assert_eq!(problem["current_status"], "STOCK_RESERVED");
    assert_eq!(
        app.get_order(waiting_id).await["status"],
        "STOCK_RESERVED",
        "nothing changed"
    );

    // A finished order allows nothing.
    assert_eq!(
        app.pay(waiting_id, &json!({"outcome": "approve"}))
            .await
            .status(),
        StatusCode::ACCEPTED
    );
    app.wait_for_status(waiting_id, &["CONFIRMED"]).await;
    let response = app
        .patch_status(
            waiting_id,
            &json!({"status": "REVERSED"}),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(response.status(), StatusCode::CONFLICT);
    let problem: Value = response.json().await.expect("problem");
    assert_eq!(problem["allowed"], json!([]));
}

#[tokio::test]
async fn overrides_need_the_admin_token_and_are_disabled_without_one() {
    let app = spawn_app_with(TestOptions {
        payment_mode: PaymentMode::Manual,
        ..Default::default()
    })
    .await;
    let created = app.create_order(&[("KB-001", 1)]).await;
    let id = created["id"].as_str().expect("id");
    app.wait_for_status(id, &["STOCK_RESERVED"]).await;
    let cancel = json!({"status": "REVERSED"});

    assert_eq!(
        app.patch_status(id, &cancel, None).await.status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        app.patch_status(id, &cancel, Some("wrong-token-wrong-token"))
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        app.get_order(id).await["status"],
        "STOCK_RESERVED",
        "nothing changed"
    );

    let no_admin = spawn_app_with(TestOptions {
        admin_token: None,
        ..Default::default()
    })
    .await;
    let other = no_admin.create_order(&[("KB-001", 1)]).await;
    let response = no_admin
        .patch_status(
            other["id"].as_str().expect("id"),
            &cancel,
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn the_dev_pay_endpoint_forces_the_payment_outcome() {
    let app = spawn_app_with(TestOptions {
        payment_mode: PaymentMode::Manual,
        ..Default::default()
    })
    .await;
    let approved = app.create_order(&[("CB-004", 1)]).await;
    let declined = app.create_order(&[("CB-004", 2)]).await;
    let (a, d) = (
        approved["id"].as_str().expect("id"),
        declined["id"].as_str().expect("id"),
    );
    app.wait_for_status(a, &["STOCK_RESERVED"]).await;
    app.wait_for_status(d, &["STOCK_RESERVED"]).await;

    assert_eq!(
        app.pay(a, &json!({"outcome": "approve"})).await.status(),
        StatusCode::ACCEPTED
    );
    assert_eq!(
        app.pay(d, &json!({"outcome": "decline"})).await.status(),
        StatusCode::ACCEPTED
    );

    assert_eq!(app.wait_for_terminal(a).await["status"], "CONFIRMED");
    assert_eq!(app.wait_for_terminal(d).await["status"], "REVERSED");
    // Paying twice is refused: the order no longer awaits payment.
    assert_eq!(app.pay(a, &json!({})).await.status(), StatusCode::CONFLICT);
    app.wait_until_quiet().await;
    assert!(app.invariants(&[("CB-004", 500)]).await.holds());

    let no_dev = spawn_app_with(TestOptions {
        dev_endpoints: false,
        ..Default::default()
    })
    .await;
    let order = no_dev.create_order(&[("CB-004", 1)]).await;
    assert_eq!(
        no_dev
            .pay(order["id"].as_str().expect("id"), &json!({}))
            .await
            .status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn the_embedded_mode_runs_the_whole_saga_on_sqlite_and_the_in_process_bus() {
    let app = spawn_app_with(TestOptions {
        embedded: true,
        ..Default::default()
    })
    .await;
    let confirmed = app.create_order(&[("KB-001", 3)]).await;
    let order = app
        .wait_for_terminal(confirmed["id"].as_str().expect("id"))
        .await;
    assert_eq!(order["status"], "CONFIRMED", "{order:#}");

    let cancelled = spawn_app_with(TestOptions {
        embedded: true,
        payment_decline_rate: 1.0,
        ..Default::default()
    })
    .await;
    let declined = cancelled.create_order(&[("KB-001", 3)]).await;
    let order = cancelled
        .wait_for_terminal(declined["id"].as_str().expect("id"))
        .await;
    assert_eq!(order["status"], "REVERSED");

    app.wait_until_quiet().await;
    cancelled.wait_until_quiet().await;
    assert_eq!(app.stock("KB-001").await["sold"], 3);
    assert_eq!(cancelled.stock("KB-001").await["available"], 100);
    assert!(app.invariants(&[("KB-001", 100)]).await.holds());
    assert!(cancelled.invariants(&[("KB-001", 100)]).await.holds());
}

#[tokio::test]
async fn a_long_poll_answers_once_the_order_is_terminal() {
    let app = spawn_app().await;
    let created = app.create_order(&[("KB-001", 1)]).await;
    let id = created["id"].as_str().expect("id");

    let started = std::time::Instant::now();
    let response = app
        .client
        .get(app.url(&format!("/api/orders/{id}?wait_ms=20000")))
        .send()
        .await
        .expect("GET with wait");

    assert_eq!(response.status(), StatusCode::OK);
    let order: Value = response.json().await.expect("JSON");
    assert_eq!(
        order["status"], "CONFIRMED",
        "answered at the terminal status"
    );
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "woken by the transition, not the timeout"
    );
    let too_long = app
        .client
        .get(app.url(&format!("/api/orders/{id}?wait_ms=600000")))
        .send()
        .await
        .expect("GET");
    assert_eq!(too_long.status(), StatusCode::BAD_REQUEST);
}
