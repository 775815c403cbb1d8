//! Bad input at the HTTP boundary: every refusal is an RFC 9457 problem with the right
//! status, and a refused request changes nothing (no order, no stock movement) and does not
//! poison the service for the next, good request.

use crate::helpers::{
    ADMIN_TOKEN, TestApp, TestOptions, check_problem, order_body, spawn_app, spawn_app_with,
};
use order_service::domain::saga::PaymentMode;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

/// One bad request and the problem it must produce.
struct Case {
    name: &'static str,
    method: Method,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Option<Vec<u8>>,
    status: StatusCode,
    /// The end of the problem's `type` URI, if the case pins it.
    problem_type: Option<&'static str>,
}

fn case(
    name: &'static str,
    method: Method,
    path: impl Into<String>,
    headers: Vec<(&'static str, String)>,
    body: Option<&[u8]>,
    status: u16,
    problem_type: Option<&'static str>,
) -> Case {
    Case {
        name,
        method,
        path: path.into(),
        headers,
        body: body.map(<[u8]>::to_vec),
        status: StatusCode::from_u16(status).expect("a valid status code"),
        problem_type,
    }
}

/// `Content-Type: application/json` and a fresh `Idempotency-Key`.
fn json_with_key() -> Vec<(&'static str, String)> {
    vec![
        ("content-type", "application/json".to_owned()),
        ("idempotency-key", Uuid::new_v4().to_string()),
    ]
}

fn admin_json(token: Option<&str>) -> Vec<(&'static str, String)> {
    let mut headers = vec![("content-type", "application/json".to_owned())];
    if let Some(token) = token {
        headers.push(("authorization", format!("Bearer {token}")));
    }
    headers
}

/// `POST /api/orders` with a raw body (and a fresh key).
fn order_raw(name: &'static str, body: &str, status: u16, problem_type: &'static str) -> Case {
    case(
        name,
        Method::POST,
        "/api/orders",
        json_with_key(),
        Some(body.as_bytes()),
        status,
        Some(problem_type),
    )
}

/// `POST /api/orders` with a JSON body (and a fresh key).
fn order_json(name: &'static str, body: Value, status: u16, problem_type: &'static str) -> Case {
    order_raw(name, &body.to_string(), status, problem_type)
}

/// A well-formed order body with one line of `item` (any JSON, to test odd values).
fn one_line(item: Value) -> Value {
    json!({ "customer_id": "customer-1", "currency": "USD", "items": [item] })
}

fn with_customer(customer_id: &str) -> Value {
    json!({ "customer_id": customer_id, "currency": "USD", "items": [{"sku": "KB-001", "quantity": 1}] })
}

fn with_sku(sku: &str) -> Value {
    one_line(json!({ "sku": sku, "quantity": 1 }))
}

fn with_quantity(quantity: Value) -> Value {
    one_line(json!({ "sku": "KB-001", "quantity": quantity }))
}

const INVALID: &str = "validation-error";
const MALFORMED: &str = "bad-request";
const NOT_FOUND: &str = "not-found";

/// Every bad request; built fresh per call (fresh keys, fresh random ids).
fn table() -> Vec<Case> {
    use Method as M;
    let unknown = Uuid::new_v4();
    let many_lines: Vec<Value> = (0..51)
        .map(|i| json!({ "sku": format!("SKU-{i}"), "quantity": 1 }))
        .collect();
    let oversized = format!(
        r#"{{"customer_id":"{}","currency":"USD","items":[{{"sku":"KB-001","quantity":1}}]}}"#,
        "x".repeat(70 * 1024)
    );
    let good = order_body(&[("KB-001", 1)]).to_string();
    let status_path = format!("/api/orders/{unknown}/status");
    let reverse = json!({ "status": "REVERSED" }).to_string();
    let long_reason = json!({ "status": "REVERSED", "reason": "r".repeat(501) }).to_string();
    let stock_put = json!({ "available": 5, "price_cents": 100 }).to_string();

    vec![
        // --- POST /api/orders: syntax -------------------------------------------------
        order_raw(
            "malformed JSON",
            r#"{"customer_id": "c", "items": ["#,
            400,
            MALFORMED,
        ),
        order_raw(
            "trailing garbage after the JSON",
            &format!("{good} xyz"),
            400,
            MALFORMED,
        ),
        order_raw("empty body", "", 400, MALFORMED),
        // --- POST /api/orders: shape and types ------------------------------------------
        order_raw("JSON array instead of an object", "[1, 2, 3]", 422, INVALID),
        order_raw(
            "JSON string instead of an object",
            r#""an order""#,
            422,
            INVALID,
        ),
        order_raw("JSON null instead of an object", "null", 422, INVALID),
        order_json(
            "quantity as a string",
            with_quantity(json!("two")),
            422,
            INVALID,
        ),
        order_json(
            "quantity as a fraction",
            with_quantity(json!(1.5)),
            422,
            INVALID,
        ),
        order_json(
            "items as an object",
            json!({"customer_id": "c", "currency": "USD", "items": {}}),
            422,
            INVALID,
        ),
        order_json(
            "unknown top-level field",
            json!({"customer_id": "c", "currency": "USD", "coupon": "FREE",
                   "items": [{"sku": "KB-001", "quantity": 1}]}),
            422,
            INVALID,
        ),
        order_json(
            "unknown item field (a client-set price)",
            one_line(json!({"sku": "KB-001", "quantity": 1, "unit_price_cents": 1})),
            422,
            INVALID,
        ),
        order_json(
            "missing currency",
            json!({"customer_id": "c", "items": [{"sku": "KB-001", "quantity": 1}]}),
            422,
            INVALID,
        ),
        order_json(
            "missing item quantity",
            one_line(json!({"sku": "KB-001"})),
            422,
            INVALID,
        ),
        order_raw(
            "duplicate JSON member",
            r#"{"customer_id":"a","customer_id":"b","currency":"USD","items":[{"sku":"KB-001","quantity":1}]}"#,
            422,
            INVALID,
        ),
        // --- POST /api/orders: validation -----------------------------------------------
        order_json(
            "empty item list",
            json!({"customer_id": "c", "currency": "USD", "items": []}),
            422,
            INVALID,
        ),
        order_json(
            "51 item lines",
            json!({"customer_id": "c", "currency": "USD", "items": many_lines}),
            422,
            INVALID,
        ),
        order_json("quantity 0", with_quantity(json!(0)), 422, INVALID),
        order_json("quantity -1", with_quantity(json!(-1)), 422, INVALID),
        order_json("quantity 1001", with_quantity(json!(1001)), 422, INVALID),
        order_raw(
            "quantity 1e30",
            r#"{"customer_id":"c","currency":"USD","items":[{"sku":"KB-001","quantity":1e30}]}"#,
            422,
            INVALID,
        ),
        order_raw(
            "quantity 2^63",
            r#"{"customer_id":"c","currency":"USD","items":[{"sku":"KB-001","quantity":9223372036854775808}]}"#,
            422,
            INVALID,
        ),
        order_json("unknown SKU", with_sku("NOPE-404"), 422, "unknown-sku"),
        order_json("SKU with a space", with_sku("KB 001"), 422, INVALID),
        order_json("SKU with a slash", with_sku("KB/001"), 422, INVALID),
        order_json("empty SKU", with_sku(""), 422, INVALID),
        order_json("65-character SKU", with_sku(&"S".repeat(65)), 422, INVALID),
        order_json(
            "duplicate SKU lines",
            json!({"customer_id": "c", "currency": "USD",
                   "items": [{"sku": "KB-001", "quantity": 1}, {"sku": "KB-001", "quantity": 2}]}),
            422,
            INVALID,
        ),
        order_json(
            "unsupported currency",
            json!({"customer_id": "c", "currency": "EUR", "items": [{"sku": "KB-001", "quantity": 1}]}),
            422,
            INVALID,
        ),
        order_json(
            "lower-case currency",
            json!({"customer_id": "c", "currency": "usd", "items": [{"sku": "KB-001", "quantity": 1}]}),
            422,
            INVALID,
        ),
        order_json("empty customer_id", with_customer(""), 422, INVALID),
        order_json("blank customer_id", with_customer("   "), 422, INVALID),
        order_json(
            "200-character customer_id",
            with_customer(&"c".repeat(200)),
            422,
            INVALID,
        ),
        order_json(
            "customer_id with a control character",
            with_customer("a\u{7}b"),
            422,
            INVALID,
        ),
        // --- POST /api/orders: state and transport --------------------------------------
        order_json(
            "more than the available stock",
            one_line(json!({"sku": "MN-003", "quantity": 26})),
            409,
            "insufficient-stock",
        ),
        order_raw("body over 64 KiB", &oversized, 413, "payload-too-large"),
        case(
            "missing content type",
            M::POST,
            "/api/orders",
            vec![("idempotency-key", Uuid::new_v4().to_string())],
            Some(good.as_bytes()),
            415,
            Some("unsupported-media-type"),
        ),
        case(
            "text/plain content type",
            M::POST,
            "/api/orders",
            vec![
                ("content-type", "text/plain".to_owned()),
                ("idempotency-key", Uuid::new_v4().to_string()),
            ],
            Some(good.as_bytes()),
            415,
            Some("unsupported-media-type"),
        ),
        // --- reading orders -------------------------------------------------------------
        case(
            "order id that is not a UUID",
            M::GET,
            "/api/orders/not-a-uuid",
            vec![],
            None,
            400,
            Some(MALFORMED),
        ),
        case(
            "unknown order id",
            M::GET,
            format!("/api/orders/{unknown}"),
            vec![],
            None,
            404,
            Some(NOT_FOUND),
        ),
        case(
            "unknown status filter",
            M::GET,
            "/api/orders?status=NOPE",
            vec![],
            None,
            400,
            Some(MALFORMED),
        ),
        case(
            "status filter in lower case",
            M::GET,
            "/api/orders?status=pending",
            vec![],
            None,
            400,
            Some(MALFORMED),
        ),
        case(
            "limit 0",
            M::GET,
            "/api/orders?limit=0",
            vec![],
            None,
            400,
            Some(MALFORMED),
        ),
        case(
            "limit 501",
            M::GET,
            "/api/orders?limit=501",
            vec![],
            None,
            400,
            Some(MALFORMED),
        ),
        case(
            "limit -1",
            M::GET,
            "/api/orders?limit=-1",
            vec![],
            None,
            400,
            Some(MALFORMED),
        ),
        case(
            "limit abc",
            M::GET,
            "/api/orders?limit=abc",
            vec![],
            None,
            400,
            Some(MALFORMED),
        ),
        // --- routing --------------------------------------------------------------------
        case(
            "unknown route",
            M::GET,
            "/api/nothing-here",
            vec![],
            None,
            404,
            Some(NOT_FOUND),
        ),
        case(
            "unknown SKU in the inventory",
            M::GET,
            "/api/inventory/NOPE-404",
            vec![],
            None,
            404,
            Some(NOT_FOUND),
        ),
        case(
            "SKU path that is not UTF-8",
            M::GET,
            "/api/inventory/%FF",
            vec![],
            None,
            400,
            Some(MALFORMED),
        ),
        case(
            "DELETE on the order collection",
            M::DELETE,
            "/api/orders",
            vec![],
            None,
            405,
            Some("method-not-allowed"),
        ),
        case(
            "PUT on an order",
            M::PUT,
            format!("/api/orders/{unknown}"),
            json_with_key(),
            Some(good.as_bytes()),
            405,
            Some("method-not-allowed"),
        ),
        // --- admin status override ------------------------------------------------------
        case(
            "status override without a token",
            M::PATCH,
            status_path.clone(),
            admin_json(None),
            Some(reverse.as_bytes()),
            401,
            Some("unauthorized"),
        ),
        case(
            "status override with a Basic credential",
            M::PATCH,
            status_path.clone(),
            vec![
                ("content-type", "application/json".to_owned()),
                ("authorization", "Basic YWRtaW46YWRtaW4=".to_owned()),
            ],
            Some(reverse.as_bytes()),
            401,
            Some("unauthorized"),
        ),
        case(
            "status override with a wrong token",
            M::PATCH,
            status_path.clone(),
            admin_json(Some("wrong-token-0123456789")),
            Some(reverse.as_bytes()),
            403,
            Some("forbidden"),
        ),
        case(
            "status override to an unknown status",
            M::PATCH,
            status_path.clone(),
            admin_json(Some(ADMIN_TOKEN)),
            Some(br#"{"status":"SHIPPED"}"#),
            422,
            Some(INVALID),
        ),
        case(
            "status override of an unknown order",
            M::PATCH,
            status_path.clone(),
            admin_json(Some(ADMIN_TOKEN)),
            Some(reverse.as_bytes()),
            404,
            Some(NOT_FOUND),
        ),
        case(
            "status override with a reason over 500 characters",
            M::PATCH,
            status_path.clone(),
            admin_json(Some(ADMIN_TOKEN)),
            Some(long_reason.as_bytes()),
            422,
            Some(INVALID),
        ),
        case(
            "status override with an invalid order id",
            M::PATCH,
            "/api/orders/not-a-uuid/status",
            admin_json(Some(ADMIN_TOKEN)),
            Some(reverse.as_bytes()),
            400,
            Some(MALFORMED),
        ),
        // --- admin stock --------------------------------------------------------------
        case(
            "negative available stock",
            M::PUT,
            "/api/inventory/KB-001",
            admin_json(Some(ADMIN_TOKEN)),
            Some(br#"{"available":-1,"price_cents":8900}"#),
            422,
            Some(INVALID),
        ),
        case(
            "price above the cap",
            M::PUT,
            "/api/inventory/KB-001",
            admin_json(Some(ADMIN_TOKEN)),
            Some(br#"{"available":100,"price_cents":1000000001}"#),
            422,
            Some(INVALID),
        ),
        case(
            "stock with a blank name",
            M::PUT,
            "/api/inventory/KB-001",
            admin_json(Some(ADMIN_TOKEN)),
            Some(br#"{"available":100,"price_cents":8900,"name":" "}"#),
            422,
            Some(INVALID),
        ),
        case(
            "stock with an unknown field",
            M::PUT,
            "/api/inventory/KB-001",
            admin_json(Some(ADMIN_TOKEN)),
            Some(br#"{"available":100,"price_cents":8900,"sold":0}"#),
            422,
            Some(INVALID),
        ),
        case(
            "stock for an invalid SKU",
            M::PUT,
            "/api/inventory/bad%20sku",
            admin_json(Some(ADMIN_TOKEN)),
            Some(stock_put.as_bytes()),
            400,
            Some(MALFORMED),
        ),
        case(
            "stock for a SKU that starts with a dot",
            M::PUT,
            "/api/inventory/.KB-001",
            admin_json(Some(ADMIN_TOKEN)),
            Some(stock_put.as_bytes()),
            400,
            Some(MALFORMED),
        ),
        case(
            "SKU path over 64 characters",
            M::GET,
            format!("/api/inventory/{}", "S".repeat(65)),
            vec![],
            None,
            400,
            Some(MALFORMED),
        ),
        case(
            "stock without a token",
            M::PUT,
            "/api/inventory/KB-001",
            admin_json(None),
            Some(stock_put.as_bytes()),
            401,
            Some("unauthorized"),
        ),
        case(
            "stock for a new SKU without a token",
            M::PUT,
            "/api/inventory/NEW-1",
            admin_json(None),
            Some(stock_put.as_bytes()),
            401,
            Some("unauthorized"),
        ),
        // --- dev payment --------------------------------------------------------------
        case(
            "payment with an unknown outcome",
            M::POST,
            format!("/api/orders/{unknown}/pay"),
            json_with_key(),
            Some(br#"{"outcome":"maybe"}"#),
            422,
            Some(INVALID),
        ),
        case(
            "payment with malformed JSON",
            M::POST,
            format!("/api/orders/{unknown}/pay"),
            json_with_key(),
            Some(b"{"),
            400,
            Some(MALFORMED),
        ),
        case(
            "payment for an unknown order",
            M::POST,
            format!("/api/orders/{unknown}/pay"),
            json_with_key(),
            Some(br#"{"outcome":"approve"}"#),
            404,
            Some(NOT_FOUND),
        ),
        case(
            "payment body over 64 KiB",
            M::POST,
            format!("/api/orders/{unknown}/pay"),
            json_with_key(),
            Some(oversized.as_bytes()),
            413,
            Some("payload-too-large"),
        ),
    ]
}

async fn send(app: &TestApp, case: &Case) -> reqwest::Response {
    let mut request = app.client.request(case.method.clone(), app.url(&case.path));
    for (name, value) in &case.headers {
        request = request.header(*name, value);
    }
    if let Some(body) = &case.body {
        request = request.body(body.clone());
    }
    request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{}: request failed: {e}", case.name))
}

#[tokio::test]
async fn every_bad_request_is_a_problem_with_the_right_status_and_changes_nothing() {
    let app = spawn_app().await;
    let stock_before = app.inventory().await;
    let mut failures = Vec::new();

    for case in table() {
        let response = send(&app, &case).await;
        if let Err(e) = check_problem(response, case.status, case.problem_type).await {
            failures.push(format!(
                "{} ({} {}): {e}",
                case.name, case.method, case.path
            ));
        }
        let orders = app.order_count().await;
        if orders != 0 {
            failures.push(format!("{}: {orders} order(s) exist afterwards", case.name));
        }
        if app.inventory().await != stock_before {
            failures.push(format!("{}: the stock changed", case.name));
        }
    }

    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
}

#[tokio::test]
async fn a_good_order_still_succeeds_after_each_bad_request() {
    let app = spawn_app().await;
    let mut ids = Vec::new();

    for case in table() {
        let response = send(&app, &case).await;
        assert_eq!(response.status(), case.status, "{}", case.name);
        let key = Uuid::new_v4().to_string();
        let response = app
            .post_order(Some(&key), &order_body(&[("CB-004", 1)]))
            .await;
        let status = response.status();
        let body: Value = response.json().await.expect("JSON body");
        assert_eq!(
            status,
            StatusCode::CREATED,
            "after {:?}: {body:#}",
            case.name
        );
        ids.push(body["id"].as_str().expect("the order has an id").to_owned());
    }

    for id in &ids {
        let order = app.wait_for_terminal(id).await;
        assert_eq!(order["status"], "CONFIRMED", "{order:#}");
    }
}

#[tokio::test]
async fn a_405_names_the_allowed_methods() {
    let app = spawn_app().await;
    let response = app
        .client
        .delete(app.url("/api/orders"))
        .send()
        .await
        .expect("DELETE /api/orders");
    let allow = response
        .headers()
        .get(reqwest::header::ALLOW)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
    // RFC 9110 §15.5.6: a 405 must list the methods the resource supports.
    for method in ["GET", "POST"] {
        assert!(
            allow.contains(method),
            "Allow should list {method}: {allow:?}"
        );
    }
}

#[tokio::test]
async fn a_401_asks_for_a_bearer_token() {
    let app = spawn_app().await;
    let response = app
        .patch_status(
            &Uuid::new_v4().to_string(),
            &json!({"status": "REVERSED"}),
            None,
        )
        .await;
    let challenge = response
        .headers()
        .get(reqwest::header::WWW_AUTHENTICATE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        challenge.as_deref(),
        Some("Bearer"),
        "RFC 9110 §11.6.1 challenge"
    );
}

#[tokio::test]
async fn the_admin_price_and_quantity_caps_keep_the_largest_order_total_from_overflowing() {
    // total_cents is an i64 (max ≈ 9.2e18). The admin API caps a price at 1e9 cents and an
    // order at 50 lines of at most 1000 units, so the largest possible total is
    // 50 × 1000 × 1e9 = 5e13 — the "total-overflow" refusal cannot be reached through the
    // API. This test pins the caps and checks that the largest order is priced exactly.
    let app = spawn_app().await;
    let over_price = app
        .client
        .put(app.url("/api/inventory/BIG-0"))
        .bearer_auth(ADMIN_TOKEN)
        .json(&json!({ "available": 1000, "price_cents": 1_000_000_001i64 }))
        .send()
        .await
        .expect("PUT stock");
    if let Err(e) = check_problem(over_price, StatusCode::UNPROCESSABLE_ENTITY, Some(INVALID)).await
    {
        panic!("a price above 1e9 must be refused: {e}");
    }

    let skus: Vec<String> = (0..50).map(|i| format!("BIG-{i}")).collect();
    for sku in &skus {
        app.put_stock(sku, 1000, 1_000_000_000).await;
    }
    let items: Vec<(&str, i64)> = skus.iter().map(|s| (s.as_str(), 1000)).collect();
    let order = app.create_order(&items).await;

    assert_eq!(
        order["total_cents"],
        json!(50i64 * 1000 * 1_000_000_000),
        "{order:#}"
    );
}

/// Every client text that reaches a database, with a NUL or another control character (or
/// too long), on one store: a 4xx problem, nothing changed, and the service still works.
/// PostgreSQL's text cannot hold U+0000, so before these were checked at the edge a NUL
/// reached the database and came back as a 500 or a 503 "retry shortly".
async fn stored_text_is_checked_before_any_database(embedded: bool) {
    let app = spawn_app_with(TestOptions {
        embedded,
        payment_mode: PaymentMode::Manual,
        ..TestOptions::default()
    })
    .await;
    // Waits in STOCK_RESERVED for its payment, so a status override would be applied.
    let order = app.create_order(&[("KB-001", 1)]).await;
    let id = order["id"].as_str().expect("id").to_owned();
    app.wait_for_status(&id, &["STOCK_RESERVED"]).await;
    let stock_before = app.inventory().await;
    let admin = admin_json(Some(ADMIN_TOKEN));
    let stock_body = |name: &str| {
        json!({"available": 5, "price_cents": 100, "name": name})
            .to_string()
            .into_bytes()
    };
    let reason = |reason: &str| {
        json!({"status": "REVERSED", "reason": reason})
            .to_string()
            .into_bytes()
    };
    let status_path = format!("/api/orders/{id}/status");
    let cases = vec![
        case(
            "GET a SKU with a NUL",
            Method::GET,
            "/api/inventory/KB%00001",
            vec![],
            None,
            400,
            Some(MALFORMED),
        ),
        case(
            "GET a SKU with a newline",
            Method::GET,
            "/api/inventory/KB%0A001",
            vec![],
            None,
            400,
            Some(MALFORMED),
        ),
        case(
            "PUT a SKU with a NUL",
            Method::PUT,
            "/api/inventory/KB%00001",
            admin.clone(),
            Some(&stock_body("ok")[..]),
            400,
            Some(MALFORMED),
        ),
        case(
            "PUT a name with a NUL",
            Method::PUT,
            "/api/inventory/X",
            admin.clone(),
            Some(&stock_body("a\u{0}b")[..]),
            422,
            Some(INVALID),
        ),
        case(
            "PUT a name with a C1 control character",
            Method::PUT,
            "/api/inventory/X",
            admin.clone(),
            Some(&stock_body("a\u{85}b")[..]),
            422,
            Some(INVALID),
        ),
        case(
            "PUT a name of 201 characters",
            Method::PUT,
            "/api/inventory/X",
            admin.clone(),
            Some(&stock_body(&"é".repeat(201))[..]),
            422,
            Some(INVALID),
        ),
        case(
            "status override with a NUL in the reason",
            Method::PATCH,
            status_path.clone(),
            admin.clone(),
            Some(&reason("a\u{0}b")[..]),
            422,
            Some(INVALID),
        ),
        case(
            "status override with a reason of 501 characters",
            Method::PATCH,
            status_path.clone(),
            admin.clone(),
            Some(&reason(&"é".repeat(501))[..]),
            422,
            Some(INVALID),
        ),
        order_json(
            "customer_id with a NUL",
            with_customer("a\u{0}b"),
            422,
            INVALID,
        ),
        order_json(
            "customer_id of 129 characters",
            with_customer(&"é".repeat(129)),
            422,
            INVALID,
        ),
        order_json(
            "customer_id of no-break spaces",
            with_customer("\u{A0}\u{3000}"),
            422,
            INVALID,
        ),
        order_json("SKU with a NUL", with_sku("KB\u{0}001"), 422, INVALID),
        case(
            "Idempotency-Key with an unbalanced quote",
            Method::POST,
            "/api/orders",
            vec![
                ("content-type", "application/json".to_owned()),
                ("idempotency-key", "\"key".to_owned()),
            ],
            Some(order_body(&[("KB-001", 1)]).to_string().as_bytes()),
            400,
            Some(MALFORMED),
        ),
        case(
            "order id with a NUL",
            Method::GET,
            "/api/orders/%00",
            vec![],
            None,
            400,
            Some(MALFORMED),
        ),
    ];
    let mut failures = Vec::new();
    for case in cases {
        let response = send(&app, &case).await;
        if let Err(e) = check_problem(response, case.status, case.problem_type).await {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    assert!(
        failures.is_empty(),
        "embedded {embedded}: {} case(s) failed:\n  {}",
        failures.len(),
        failures.join("\n  ")
    );
    assert_eq!(app.order_count().await, 1, "no order was created");
    assert_eq!(
        app.inventory().await,
        stock_before,
        "the stock is unchanged"
    );
    assert_eq!(app.get_order(&id).await["status"], "STOCK_RESERVED");

    // The limits count characters: the longest of each, in two-byte characters, is taken.
    let key = Uuid::new_v4().to_string();
    let response = app
        .post_order(Some(&key), &with_customer(&"é".repeat(128)))
        .await;
    assert_eq!(response.status(), StatusCode::CREATED, "128 × é");
    let response = app
        .client
        .put(app.url("/api/inventory/X-1"))
        .bearer_auth(ADMIN_TOKEN)
        .body(stock_body(&"é".repeat(200)))
        .header("content-type", "application/json")
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.status(), StatusCode::OK, "200 × é");
    let response = app
        .patch_status(
            &id,
            &json!({"status": "REVERSED", "reason": "é".repeat(500)}),
            Some(ADMIN_TOKEN),
        )
        .await;
    assert_eq!(response.status(), StatusCode::OK, "500 × é");
    let order = app.wait_for_status(&id, &["REVERSED"]).await;
    assert_eq!(
        order["failure_reason"],
        format!("cancelled by admin: {}", "é".repeat(500))
    );
}

#[tokio::test]
async fn stored_text_is_checked_before_the_database_on_postgres() {
    stored_text_is_checked_before_any_database(false).await;
}

#[tokio::test]
async fn stored_text_is_checked_before_the_database_on_sqlite() {
    stored_text_is_checked_before_any_database(true).await;
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = spawn_app().await;
    // RFC 9110 §11.1: the scheme is case-insensitive; one or more spaces before the token.
    for scheme in ["bearer", "BEARER", "bEaReR", "Bearer "] {
        let response = app
            .client
            .get(app.url("/api/admin/invariants"))
            .header("authorization", format!("{scheme} {ADMIN_TOKEN}"))
            .send()
            .await
            .expect("GET invariants");
        assert_eq!(response.status(), StatusCode::OK, "scheme {scheme:?}");
    }
    let response = app
        .client
        .get(app.url("/api/admin/invariants"))
        .header("authorization", format!("bearer wrong-{ADMIN_TOKEN}"))
        .send()
        .await
        .expect("GET invariants");
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
}

/// JSON Schema's `integer` includes numbers with a zero fraction (`2.0`), so they are
/// accepted as the integer; `1.5` is still refused.
#[tokio::test]
async fn integral_floats_are_accepted_as_integers() {
    let app = spawn_app().await;
    let key = Uuid::new_v4().to_string();
    let response = app.post_order(Some(&key), &with_quantity(json!(2.0))).await;
    let status = response.status();
    let order: Value = response.json().await.expect("JSON");
    assert_eq!(status, StatusCode::CREATED, "{order:#}");
    assert_eq!(order["items"][0]["quantity"], 2);
    // The same request spelled with an integer is the same request: a replay.
    let replay = app.post_order(Some(&key), &with_quantity(json!(2))).await;
    assert_eq!(replay.status(), StatusCode::CREATED);
    assert_eq!(replay.headers()["idempotent-replayed"], "true");

    let response = app
        .client
        .put(app.url("/api/inventory/FLOAT-1"))
        .bearer_auth(ADMIN_TOKEN)
        .header("content-type", "application/json")
        .body(r#"{"available": 5.0, "price_cents": 1e3}"#)
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.status(), StatusCode::OK);
    let stock: Value = response.json().await.expect("JSON");
    assert_eq!(
        (stock["available"].clone(), stock["price_cents"].clone()),
        (json!(5), json!(1000))
    );

    for (name, body) in [
        ("fraction", r#"{"available": 5.5, "price_cents": 1}"#),
        (
            "beyond 2^53",
            r#"{"available": 1, "price_cents": 9007199254740994.0}"#,
        ),
    ] {
        let response = app
            .client
            .put(app.url("/api/inventory/FLOAT-1"))
            .bearer_auth(ADMIN_TOKEN)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("PUT");
        if let Err(e) =
            check_problem(response, StatusCode::UNPROCESSABLE_ENTITY, Some(INVALID)).await
        {
            panic!("{name}: {e}");
        }
    }
}
