//! `PATCH /api/inventory/{sku}`: relative stock changes (`{"adjust": 50}`), refused (409,
//! nothing changed) below zero, for units reserved by orders, and above the cap; safe under
//! concurrency. On PostgreSQL and on SQLite.

use crate::helpers::{ADMIN_TOKEN, TestApp, TestOptions, check_problem, spawn_app_with};
use order_service::domain::saga::PaymentMode;
use reqwest::StatusCode;
use serde_json::{Value, json};

async fn patch_stock(app: &TestApp, sku: &str, body: &Value) -> reqwest::Response {
    app.client
        .patch(app.url(&format!("/api/inventory/{sku}")))
        .bearer_auth(ADMIN_TOKEN)
        .json(body)
        .send()
        .await
        .expect("PATCH stock")
}

/// Applies `body`, asserting 200, and returns the SKU after it.
async fn adjusted(app: &TestApp, sku: &str, body: Value) -> Value {
    let response = patch_stock(app, sku, &body).await;
    let status = response.status();
    let view: Value = response.json().await.expect("JSON");
    assert_eq!(status, StatusCode::OK, "{body}: {view:#}");
    view
}

fn counts(view: &Value) -> (i64, i64, i64) {
    let n = |k: &str| view[k].as_i64().unwrap_or(-1);
    (n("available"), n("reserved"), n("sold"))
}

async fn adjust_moves_stock_and_refuses_what_it_cannot_remove(embedded: bool) {
    let app = spawn_app_with(TestOptions {
        embedded,
        payment_mode: PaymentMode::Manual,
        ..TestOptions::default()
    })
    .await;
    // KB-001 starts with 100 available.
    assert_eq!(
        counts(&adjusted(&app, "KB-001", json!({"adjust": 50})).await),
        (150, 0, 0)
    );
    assert_eq!(
        counts(&adjusted(&app, "KB-001", json!({"adjust": -3})).await),
        (147, 0, 0)
    );

    // An order holds 40 (it waits for its payment).
    let order = app.create_order(&[("KB-001", 40)]).await;
    let id = order["id"].as_str().expect("id").to_owned();
    app.wait_for_status(&id, &["STOCK_RESERVED"]).await;
    assert_eq!(counts(&app.stock("KB-001").await), (107, 40, 0));

    // Removing more than is available would take reserved units: refused, saying why.
    let response = patch_stock(&app, "KB-001", &json!({"adjust": -108})).await;
    let problem = check_problem(
        response,
        StatusCode::CONFLICT,
        Some("stock-adjustment-refused"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (
            &problem["available"],
            &problem["reserved"],
            &problem["adjust"]
        ),
        (&json!(107), &json!(40), &json!(-108)),
        "{problem:#}"
    );
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("reserved by orders in progress")),
        "{problem:#}"
    );
    assert_eq!(
        counts(&app.stock("KB-001").await),
        (107, 40, 0),
        "unchanged"
    );

    // Exactly what is available may go; then nothing more.
    assert_eq!(
        counts(&adjusted(&app, "KB-001", json!({"adjust": -107})).await),
        (0, 40, 0)
    );
    let response = patch_stock(&app, "KB-001", &json!({"adjust": -1})).await;
    check_problem(
        response,
        StatusCode::CONFLICT,
        Some("stock-adjustment-refused"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));

    // Above the cap of 1,000,000,000: refused; exactly the cap: taken.
    let response = patch_stock(&app, "MS-002", &json!({"adjust": 999_999_801})).await;
    check_problem(
        response,
        StatusCode::CONFLICT,
        Some("stock-adjustment-refused"),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let view = adjusted(&app, "MS-002", json!({"adjust": 999_999_800})).await;
    assert_eq!(counts(&view), (1_000_000_000, 0, 0));

    // Name and price alone; `{}` changes nothing; an integral float is an integer.
    let view = adjusted(
        &app,
        "HS-005",
        json!({"name": "Headset II", "price_cents": 6100}),
    )
    .await;
    assert_eq!(
        (view["name"].clone(), view["price_cents"].clone()),
        (json!("Headset II"), json!(6100))
    );
    assert_eq!(counts(&view), (50, 0, 0));
    assert_eq!(adjusted(&app, "HS-005", json!({})).await, view);
    assert_eq!(
        counts(&adjusted(&app, "HS-005", json!({"adjust": 2.0})).await),
        (52, 0, 0)
    );

    // The order still completes: its reservation is intact.
    let response = app.pay(&id, &json!({"outcome": "approve"})).await;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    app.wait_for_status(&id, &["CONFIRMED"]).await;
    app.wait_until_quiet().await;
    assert_eq!(counts(&app.stock("KB-001").await), (0, 0, 40));

    // Refusals of the request itself.
    let cases = [
        (
            "unknown SKU",
            "NOPE-1",
            json!({"adjust": 1}),
            StatusCode::NOT_FOUND,
        ),
        (
            "fraction",
            "KB-001",
            json!({"adjust": 1.5}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "over the range",
            "KB-001",
            json!({"adjust": -1_000_000_001}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "unknown field",
            "KB-001",
            json!({"available": 5}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "blank name",
            "KB-001",
            json!({"name": " "}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "NUL in the name",
            "KB-001",
            json!({"name": "a\u{0}b"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "negative price",
            "KB-001",
            json!({"price_cents": -1}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            "SKU with a NUL",
            "KB%00001",
            json!({"adjust": 1}),
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (name, sku, body, status) in cases {
        let response = patch_stock(&app, sku, &body).await;
        if let Err(e) = check_problem(response, status, None).await {
            panic!("{name}: {e}");
        }
    }
    let response = app
        .client
        .patch(app.url("/api/inventory/KB-001"))
        .json(&json!({"adjust": 1}))
        .send()
        .await
        .expect("PATCH");
    check_problem(response, StatusCode::UNAUTHORIZED, Some("unauthorized"))
        .await
        .unwrap_or_else(|e| panic!("no token: {e}"));
    assert_eq!(counts(&app.stock("KB-001").await), (0, 0, 40), "unchanged");
}

#[tokio::test]
async fn adjust_moves_stock_and_refuses_what_it_cannot_remove_on_postgres() {
    adjust_moves_stock_and_refuses_what_it_cannot_remove(false).await;
}

#[tokio::test]
async fn adjust_moves_stock_and_refuses_what_it_cannot_remove_on_sqlite() {
    adjust_moves_stock_and_refuses_what_it_cannot_remove(true).await;
}

/// 40 additions of 3 and 40 removals of 2, all at once, while 10 orders reserve and buy a
/// unit each: no change is lost (a read-modify-write would lose some).
async fn concurrent_adjustments_all_count(embedded: bool) {
    let app = spawn_app_with(TestOptions {
        embedded,
        ..TestOptions::default()
    })
    .await;
    let before = counts(&app.stock("CB-004").await);
    assert_eq!(before, (500, 0, 0));
    let adjustments = (0..80).map(|i| {
        let app = &app;
        async move {
            let adjust = if i % 2 == 0 { 3 } else { -2 };
            let response = patch_stock(app, "CB-004", &json!({"adjust": adjust})).await;
            assert_eq!(response.status(), StatusCode::OK, "adjust {adjust}");
        }
    });
    let orders = (0..10).map(|_| app.create_order(&[("CB-004", 1)]));
    let (_, created) = tokio::join!(
        futures::future::join_all(adjustments),
        futures::future::join_all(orders)
    );
    for order in created {
        app.wait_for_status(order["id"].as_str().expect("id"), &["CONFIRMED"])
            .await;
    }
    app.wait_until_quiet().await;
    assert_eq!(
        counts(&app.stock("CB-004").await),
        (500 + 40 * 3 - 40 * 2 - 10, 0, 10)
    );
}

#[tokio::test]
async fn concurrent_adjustments_all_count_on_postgres() {
    concurrent_adjustments_all_count(false).await;
}

#[tokio::test]
async fn concurrent_adjustments_all_count_on_sqlite() {
    concurrent_adjustments_all_count(true).await;
}
