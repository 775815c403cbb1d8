//! `Idempotency-Key` on `POST /api/orders` (Stripe / IETF Idempotency-Key draft): the key
//! is required; a retry with the same key and body replays the first response without a
//! second order; a different body is refused; a retry while the first request still runs
//! is a 409; a request that failed does not use the key up.

use crate::helpers::{TestApp, check_problem, expect_problem, order_body, spawn_app};
use order_service::domain::order::OrderRequest;
use order_service::persistence::idempotency::ABANDONED_AFTER;
use reqwest::header::{CONTENT_TYPE, HeaderValue, LOCATION};
use reqwest::{Response, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

const REPLAYED: &str = "idempotent-replayed";

/// What a client keeps of a response: status, headers of interest and the JSON body.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    location: Option<String>,
    replayed: Option<String>,
    body: Value,
}

async fn answer(response: Response) -> Answer {
    let header = |name| {
        response
            .headers()
            .get(name)
            .map(|v: &HeaderValue| String::from_utf8_lossy(v.as_bytes()).into_owned())
    };
    let content_type = header(CONTENT_TYPE.as_str());
    let location = header(LOCATION.as_str());
    let replayed = header(REPLAYED);
    let status = response.status();
    let body = response.json().await.expect("response body is JSON");
    Answer {
        status,
        content_type,
        location,
        replayed,
        body,
    }
}

/// POSTs a raw JSON text (to control formatting and key order).
async fn post_raw(app: &TestApp, key: &str, raw: &str) -> Response {
    app.client
        .post(app.url("/api/orders"))
        .header(CONTENT_TYPE, "application/json")
        .header("Idempotency-Key", key)
        .body(raw.to_owned())
        .send()
        .await
        .expect("POST /api/orders")
}

/// The request hash exactly as the service computes it: hex SHA-256 of the parsed
/// [`OrderRequest`] serialized again.
fn request_hash(body: &Value) -> String {
    let request: OrderRequest =
        serde_json::from_value(body.clone()).expect("body is an OrderRequest");
    let canonical = serde_json::to_vec(&request).expect("OrderRequest serializes");
    hex::encode(Sha256::digest(&canonical))
}

/// Inserts the claim a request holds while it runs (no response recorded yet), as
/// `persistence::idempotency::claim` does.
async fn insert_claim(
    app: &TestApp,
    key: &str,
    hash: &str,
    created_at: chrono::DateTime<chrono::Utc>,
) {
    use entity::idempotency_keys::{ActiveModel, Entity};
    use sea_orm::{ActiveValue::Set, EntityTrait};
    Entity::insert(ActiveModel {
        key: Set(key.to_owned()),
        request_hash: Set(hash.to_owned()),
        order_id: Set(None),
        response_status: Set(None),
        response_body: Set(None),
        created_at: Set(created_at),
    })
    .exec_without_returning(&app.stores.orders)
    .await
    .expect("insert the claim");
}

/// Waits for the order's saga to finish and the participants to settle, then returns the
/// SKU's stock.
async fn settled_stock(app: &TestApp, order_id: &str, sku: &str) -> Value {
    let order = app.wait_for_terminal(order_id).await;
    assert_eq!(
        order["status"], "CONFIRMED",
        "the order should be confirmed: {order:#}"
    );
    app.wait_until_quiet().await;
    app.stock(sku).await
}

#[tokio::test]
async fn an_order_without_an_idempotency_key_is_refused_and_creates_nothing() {
    let app = spawn_app().await;
    let stock_before = app.inventory().await;

    let response = app.post_order(None, &order_body(&[("KB-001", 1)])).await;

    let problem = expect_problem(response, StatusCode::BAD_REQUEST, None).await;
    for member in ["type", "title", "detail"] {
        assert!(
            problem[member].as_str().is_some_and(|s| !s.is_empty()),
            "problem member {member} should be a non-empty string: {problem}"
        );
    }
    assert!(
        problem["detail"]
            .as_str()
            .is_some_and(|d| d.contains("Idempotency-Key")),
        "the detail should name the missing header: {problem}"
    );
    assert_eq!(app.order_count().await, 0, "no order may be created");
    assert_eq!(app.inventory().await, stock_before, "stock must not change");
}

#[tokio::test]
async fn a_retry_with_the_same_key_and_body_replays_the_first_response_and_reserves_once() {
    let app = spawn_app().await;
    let sold_before = app.stock("KB-001").await["sold"]
        .as_i64()
        .expect("sold is a number");
    let key = Uuid::new_v4().to_string();
    let body = order_body(&[("KB-001", 3)]);

    let first = answer(app.post_order(Some(&key), &body).await).await;
    let retry = answer(app.post_order(Some(&key), &body).await).await;

    assert_eq!(first.status, StatusCode::CREATED, "first: {:#}", first.body);
    assert_eq!(
        first.replayed, None,
        "the original response is not a replay"
    );
    let id = first.body["id"]
        .as_str()
        .expect("the order has an id")
        .to_owned();
    assert_eq!(
        first.location.as_deref(),
        Some(format!("/api/orders/{id}").as_str())
    );
    assert_eq!(retry.status, StatusCode::CREATED, "retry: {:#}", retry.body);
    assert_eq!(
        retry.replayed.as_deref(),
        Some("true"),
        "the retry is marked as a replay"
    );
    assert_eq!(
        retry.body, first.body,
        "the retry gets the first response's body"
    );
    assert_eq!(
        retry.location, first.location,
        "the retry gets the same Location"
    );
    assert_eq!(
        retry.content_type, first.content_type,
        "the retry has the same content type"
    );
    assert_eq!(app.order_count().await, 1, "only one order exists");

    let stock = settled_stock(&app, &id, "KB-001").await;
    assert_eq!(
        stock["sold"].as_i64(),
        Some(sold_before + 3),
        "the quantity is sold exactly once: {stock}"
    );
    assert_eq!(stock["reserved"], 0, "nothing is left reserved: {stock}");

    // A retry long after the saga finished still replays the original answer.
    let late = answer(app.post_order(Some(&key), &body).await).await;
    assert_eq!(late.status, StatusCode::CREATED);
    assert_eq!(late.replayed.as_deref(), Some("true"));
    assert_eq!(late.body, first.body);
    assert_eq!(app.order_count().await, 1, "still only one order");
    assert_eq!(
        app.stock("KB-001").await,
        stock,
        "the late retry moves no stock"
    );
}

#[tokio::test]
async fn a_retry_with_the_same_body_formatted_differently_is_still_a_replay() {
    let app = spawn_app().await;
    let key = Uuid::new_v4().to_string();
    let compact =
        r#"{"customer_id":"customer-1","currency":"USD","items":[{"sku":"MS-002","quantity":2}]}"#;
    let reordered = "{\n  \"items\" : [ { \"quantity\" : 2, \"sku\" : \"MS-002\" } ],\n  \
                     \"currency\" : \"USD\",\n  \"customer_id\" : \"customer-1\"\n}\n";

    let first = answer(post_raw(&app, &key, compact).await).await;
    let retry = answer(post_raw(&app, &key, reordered).await).await;

    assert_eq!(first.status, StatusCode::CREATED, "first: {:#}", first.body);
    assert_eq!(retry.status, StatusCode::CREATED, "retry: {:#}", retry.body);
    assert_eq!(
        retry.replayed.as_deref(),
        Some("true"),
        "the retry is marked as a replay"
    );
    assert_eq!(
        retry.body["id"], first.body["id"],
        "the same order is returned"
    );
    assert_eq!(app.order_count().await, 1, "only one order exists");
}

#[tokio::test]
async fn reusing_a_key_with_a_different_body_is_refused() {
    let app = spawn_app().await;
    let key = Uuid::new_v4().to_string();
    let first = app
        .post_order(Some(&key), &order_body(&[("KB-001", 1)]))
        .await;
    assert_eq!(first.status(), StatusCode::CREATED);

    let response = app
        .post_order(Some(&key), &order_body(&[("KB-001", 2)]))
        .await;

    expect_problem(
        response,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("idempotency-key-reused"),
    )
    .await;
    assert_eq!(app.order_count().await, 1, "still only the first order");
}

#[tokio::test]
async fn a_retry_while_the_first_request_is_in_flight_gets_409_and_creates_nothing() {
    let app = spawn_app().await;
    let stock_before = app.inventory().await;
    let key = Uuid::new_v4().to_string();
    let body = order_body(&[("HS-005", 1)]);
    // The claim a first, still running request holds: no response recorded yet.
    insert_claim(&app, &key, &request_hash(&body), chrono::Utc::now()).await;

    let response = app.post_order(Some(&key), &body).await;
    expect_problem(
        response,
        StatusCode::CONFLICT,
        Some("idempotency-key-in-flight"),
    )
    .await;
    // The refusal must not have taken the first request's claim away.
    let again = app.post_order(Some(&key), &body).await;
    expect_problem(
        again,
        StatusCode::CONFLICT,
        Some("idempotency-key-in-flight"),
    )
    .await;

    assert_eq!(app.order_count().await, 0, "no order may be created");
    assert_eq!(app.inventory().await, stock_before, "stock must not change");
}

#[tokio::test]
async fn a_claim_abandoned_by_a_crashed_request_is_taken_over_by_the_retry() {
    let app = spawn_app().await;
    let key = Uuid::new_v4().to_string();
    let body = order_body(&[("HS-005", 1)]);
    // The claim of a request that died before answering, older than the takeover age.
    let long_ago = chrono::Utc::now() - ABANDONED_AFTER - chrono::Duration::seconds(5);
    insert_claim(&app, &key, &request_hash(&body), long_ago).await;

    let retry = answer(app.post_order(Some(&key), &body).await).await;

    assert_eq!(retry.status, StatusCode::CREATED, "retry: {:#}", retry.body);
    assert_eq!(retry.replayed, None, "the retry is processed, not replayed");
    assert_eq!(app.order_count().await, 1);
    let replay = answer(app.post_order(Some(&key), &body).await).await;
    assert_eq!(
        replay.replayed.as_deref(),
        Some("true"),
        "the taken-over key now replays"
    );
    assert_eq!(replay.body["id"], retry.body["id"]);
}

#[tokio::test]
async fn a_request_refused_for_lack_of_stock_does_not_use_up_its_key() {
    let app = spawn_app().await;
    app.put_stock("MN-003", 2, 24_900).await;
    let key = Uuid::new_v4().to_string();
    let body = order_body(&[("MN-003", 5)]);

    let refused = app.post_order(Some(&key), &body).await;
    expect_problem(refused, StatusCode::CONFLICT, Some("insufficient-stock")).await;
    assert_eq!(app.order_count().await, 0);

    app.put_stock("MN-003", 10, 24_900).await;
    let retry = answer(app.post_order(Some(&key), &body).await).await;

    assert_eq!(retry.status, StatusCode::CREATED, "retry: {:#}", retry.body);
    assert_eq!(retry.replayed, None, "the retry is processed, not replayed");
    assert_eq!(app.order_count().await, 1);
}

#[tokio::test]
async fn a_request_refused_by_validation_does_not_claim_its_key() {
    let app = spawn_app().await;
    let key = Uuid::new_v4().to_string();

    let refused = app
        .post_order(Some(&key), &order_body(&[("KB-001", 0)]))
        .await;
    expect_problem(
        refused,
        StatusCode::UNPROCESSABLE_ENTITY,
        Some("validation-error"),
    )
    .await;
    let corrected = answer(
        app.post_order(Some(&key), &order_body(&[("KB-001", 1)]))
            .await,
    )
    .await;

    assert_eq!(
        corrected.status,
        StatusCode::CREATED,
        "the corrected request is not a reused key: {:#}",
        corrected.body
    );
    assert_eq!(app.order_count().await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twenty_concurrent_requests_with_one_key_create_exactly_one_order() {
    let app = spawn_app().await;
    let sold_before = app.stock("CB-004").await["sold"]
        .as_i64()
        .expect("sold is a number");
    let key = Uuid::new_v4().to_string();
    let body = order_body(&[("CB-004", 4)]);

    let answers = futures::future::join_all(
        (0..20).map(|_| async { answer(app.post_order(Some(&key), &body).await).await }),
    )
    .await;

    let mut ids = std::collections::BTreeSet::new();
    let mut originals = 0;
    let in_flight = answers
        .iter()
        .filter(|a| a.status == StatusCode::CONFLICT)
        .count();
    for a in &answers {
        match a.status {
            StatusCode::CREATED => {
                ids.insert(
                    a.body["id"]
                        .as_str()
                        .expect("201 carries an order id")
                        .to_owned(),
                );
                if a.replayed.is_none() {
                    originals += 1;
                }
            }
            StatusCode::CONFLICT => assert!(
                a.body["type"]
                    .as_str()
                    .is_some_and(|t| t.ends_with("idempotency-key-in-flight")),
                "a 409 must be the in-flight problem: {:#}",
                a.body
            ),
            other => panic!("unexpected status {other}: {:#}", a.body),
        }
    }
    assert_eq!(
        ids.len(),
        1,
        "every 201 names the same single order: {ids:?}"
    );
    assert_eq!(
        originals, 1,
        "exactly one response is the original, the rest replays or 409 ({in_flight} were 409)"
    );
    assert_eq!(app.order_count().await, 1, "exactly one order is created");

    let id = ids.into_iter().next().expect("one id");
    let stock = settled_stock(&app, &id, "CB-004").await;
    assert_eq!(
        stock["sold"].as_i64(),
        Some(sold_before + 4),
        "sold once: {stock}"
    );
}

#[tokio::test]
async fn malformed_idempotency_keys_are_refused() {
    let app = spawn_app().await;
    let body = order_body(&[("KB-001", 1)]);
    let cases: Vec<(&str, HeaderValue)> = vec![
        ("empty", HeaderValue::from_static("")),
        ("only quotes", HeaderValue::from_static("\"\"")),
        (
            "256 characters",
            HeaderValue::from_str(&"k".repeat(256)).expect("ASCII"),
        ),
        (
            "non-ASCII",
            HeaderValue::from_bytes("schlüssel-ключ".as_bytes()).expect("opaque bytes"),
        ),
        ("inner space", HeaderValue::from_static("two words")),
        ("tab", HeaderValue::from_static("a\tb")),
    ];
    for (name, value) in cases {
        let response = app
            .client
            .post(app.url("/api/orders"))
            .header("Idempotency-Key", value)
            .json(&body)
            .send()
            .await
            .expect("POST /api/orders");
        if let Err(e) = check_problem(response, StatusCode::BAD_REQUEST, None).await {
            panic!("key {name}: {e}");
        }
    }
    assert_eq!(app.order_count().await, 0, "no order may be created");

    // The boundary: 255 visible ASCII characters are a valid key.
    let longest = "k".repeat(255);
    let response = app.post_order(Some(&longest), &body).await;
    assert_eq!(
        response.status(),
        StatusCode::CREATED,
        "a 255-character key is accepted"
    );
}
