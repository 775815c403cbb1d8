//! The OpenAPI 3.1 contract, generated with utoipa from the handlers' `#[utoipa::path]`
//! annotations and the `ToSchema` derives of the request and response types. Served at
//! `GET /api-docs/openapi.json` (and browsable at `GET /api-docs`) and checked in as
//! `openapi.json` at the repository root; the API tests fail when that file is stale
//! (regenerate with `UPDATE_OPENAPI=1 cargo test --test api openapi`).
//!
//! The types below only describe bodies that the handlers build with `json!` (lists,
//! health, the invariant report) and the problem document; the tests check real responses
//! against them.

use crate::domain::order::OrderRequestItem;
use crate::domain::saga::OrderStatus;
use crate::domain::text::SkuSchema;
use crate::domain::view::OrderSummary;
use crate::http::errors::ApiError;
use crate::http::extractors::IdempotencyKeySchema;
use crate::http::{AppState, admin, health, inventory, orders};
use crate::participants::inventory::StockView;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;
use serde_json::Value;
use std::collections::BTreeMap;
use utoipa::openapi::Required;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

pub const OPENAPI_PATH: &str = "/api-docs/openapi.json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Order Orchestration Service",
        description = "Places orders and drives each one through a saga across Inventory, \
            Payment and Shipping. Every error is an RFC 9457 `application/problem+json` \
            document (`Problem`); a client mistake is always a 4xx and changes nothing. Any \
            endpoint may also answer 400 (an HTTP/1.1 request without `Host`, or with more \
            than one), 414 (target over 8 KiB) and 431 (header section over 16 KiB). Requests \
            the HTTP parser cannot read (a malformed head, a target over 64 KiB, more than \
            100 header fields) get a bare 400, 414 or 431 without a body."
    ),
    paths(
        orders::create_order,
        orders::list_orders,
        orders::get_order,
        orders::override_status,
        orders::pay,
        inventory::list,
        inventory::get_one,
        inventory::put,
        inventory::adjust,
        admin::invariant_report,
        health::live,
        health::ready,
        metrics,
        openapi_json,
        api_docs_page,
    ),
    components(schemas(Problem, OrderRequestItem, SkuSchema, IdempotencyKeySchema)),
    modifiers(&BearerAuth, &OptionalPayBody),
    tags(
        (name = "orders", description = "Create and read orders"),
        (name = "inventory", description = "The catalogue and its stock"),
        (name = "admin", description = "Operator endpoints; need `Authorization: Bearer \
            <ADMIN_TOKEN>` and do not exist (404) without a configured token"),
        (name = "dev", description = "Development endpoints; exist only with \
            `DEV_ENDPOINTS=true`"),
        (name = "health", description = "Liveness and readiness probes"),
        (name = "operations", description = "Metrics and this document"),
    )
)]
pub struct ApiDoc;

/// The admin bearer token as a security scheme.
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer_auth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The configured `ADMIN_TOKEN` (compared in constant time)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The dev pay endpoint's body may be left out. (utoipa marks a body of type `T` required,
/// and one of type `Option<T>` nullable, which it is not.)
struct OptionalPayBody;

impl Modify for OptionalPayBody {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        if let Some(body) = openapi
            .paths
            .paths
            .get_mut("/api/orders/{id}/pay")
            .and_then(|item| item.post.as_mut())
            .and_then(|operation| operation.request_body.as_mut())
        {
            body.required = Some(Required::False);
        }
    }
}

/// The generated document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

pub fn router() -> Router<AppState> {
    Router::new()
        .route(OPENAPI_PATH, get(openapi_json))
        .route("/api-docs", get(api_docs_page))
}

#[utoipa::path(
    get,
    path = "/api-docs/openapi.json",
    operation_id = "get_openapi",
    tag = "operations",
    summary = "This OpenAPI 3.1 document",
    responses((status = 200, description = "The OpenAPI document", body = Object,
        content_type = "application/json"))
)]
async fn openapi_json() -> Result<Response, ApiError> {
    Ok(Json(document_json()?).into_response())
}

/// The generated document as JSON, its Link objects spelled as OpenAPI spells them: utoipa
/// 5.5 serializes a Link's members in snake_case (`operation_id`), which OpenAPI tools
/// ignore, so the links would be lost on them.
pub fn document_json() -> Result<Value, ApiError> {
    let mut doc = serde_json::to_value(document()).map_err(|e| ApiError::Internal(e.into()))?;
    let links = doc
        .get_mut("paths")
        .and_then(Value::as_object_mut)
        .into_iter()
        .flat_map(|paths| paths.values_mut())
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut())
        .filter_map(|op| op.get_mut("responses").and_then(Value::as_object_mut))
        .flat_map(|responses| responses.values_mut())
        .filter_map(|response| response.get_mut("links").and_then(Value::as_object_mut))
        .flat_map(|links| links.values_mut())
        .filter_map(Value::as_object_mut);
    for link in links {
        for (snake, camel) in [
            ("operation_id", "operationId"),
            ("operation_ref", "operationRef"),
            ("request_body", "requestBody"),
        ] {
            if let Some(member) = link.remove(snake) {
                link.insert(camel.to_owned(), member);
            }
        }
    }
    Ok(doc)
}

const API_DOCS_PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>Order Orchestration Service API</title>
  <link rel="stylesheet" href="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <noscript>The raw document is at <a href="/api-docs/openapi.json">/api-docs/openapi.json</a>.</noscript>
  <script src="https://cdn.jsdelivr.net/npm/swagger-ui-dist@5/swagger-ui-bundle.js" crossorigin></script>
  <script>
    window.onload = () => {
      window.ui = SwaggerUIBundle({ url: "/api-docs/openapi.json", dom_id: "#swagger-ui" });
    };
  </script>
</body>
</html>
"##;

#[utoipa::path(
    get,
    path = "/api-docs",
    operation_id = "get_api_docs_page",
    tag = "operations",
    summary = "A browsable view of this document",
    description = "A static page that loads Swagger UI from a CDN in the browser; the \
        service itself serves only the page and the document.",
    responses((status = 200, description = "The page", body = String,
        content_type = "text/html"))
)]
async fn api_docs_page() -> Response {
    ([(header::CACHE_CONTROL, "no-cache")], Html(API_DOCS_PAGE)).into_response()
}

/// `GET /metrics` is routed in `http::router` (it renders the Prometheus recorder); this
/// stub only documents it.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "get_metrics",
    tag = "operations",
    summary = "Prometheus metrics",
    description = "Every metric in the Prometheus text exposition format, version 0.0.4 \
        (`Content-Type: text/plain; version=0.0.4; charset=utf-8`). No authentication.",
    responses((status = 200, description = "The current metrics", body = String,
        content_type = "text/plain"))
)]
#[allow(dead_code)]
async fn metrics() {}

/// An RFC 9457 problem document: the body of every error response
/// (`Content-Type: application/problem+json`). Besides the standard members a problem may
/// carry extension members, depending on its `type`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Problem {
    /// Identifies the problem type: `/problems/<slug>`, e.g. `/problems/insufficient-stock`,
    /// `/problems/validation-error`, `/problems/idempotency-key-reused`.
    #[serde(rename = "type")]
    #[schema(format = "uri-reference", example = "/problems/insufficient-stock")]
    kind: String,
    /// Short summary of the problem type.
    #[schema(example = "Not enough stock")]
    title: String,
    /// The HTTP status code.
    #[schema(minimum = 100, maximum = 599, example = 409)]
    status: u16,
    /// What went wrong in this occurrence (absent on 500).
    #[schema(
        required = false,
        example = "requested 26 of MN-003, only 25 available"
    )]
    detail: String,
    /// `validation-error`: every problem found in the request, one message each.
    #[schema(required = false)]
    errors: Vec<String>,
    /// `transition-not-allowed`: the statuses the order may be changed to (may be empty).
    #[schema(required = false)]
    allowed: Vec<OrderStatus>,
    /// `transition-not-allowed`: the order's status.
    #[schema(required = false)]
    current_status: OrderStatus,
    /// `insufficient-stock`, `unknown-sku`, `stock-adjustment-refused`: the SKU concerned.
    #[schema(required = false)]
    sku: String,
    /// `insufficient-stock`: the quantity requested.
    #[schema(required = false)]
    requested: i64,
    /// `insufficient-stock`, `stock-adjustment-refused`: the quantity available.
    #[schema(required = false)]
    available: i64,
    /// `stock-adjustment-refused`: the quantity reserved by orders in progress.
    #[schema(required = false)]
    reserved: i64,
    /// `stock-adjustment-refused`: the change asked for.
    #[schema(required = false)]
    adjust: i64,
}

/// `GET /api/orders`: newest first.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct OrderList {
    orders: Vec<OrderSummary>,
}

/// `GET /api/inventory`: every SKU, ordered by SKU.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct StockList {
    items: Vec<StockView>,
}

/// `GET /health/live`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Liveness {
    #[schema(value_type = String, pattern = "^ok$", example = "ok")]
    status: &'static str,
}

/// Overall readiness.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[allow(dead_code)]
pub enum ReadinessStatus {
    Ready,
    Unavailable,
}

/// Which broker the service uses.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "kebab-case")]
#[allow(dead_code)]
pub enum BrokerKind {
    Rabbitmq,
    InProcess,
}

/// `GET /health/ready`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct Readiness {
    status: ReadinessStatus,
    checks: ReadinessChecks,
    order_actors: OrderActorStats,
}

/// Each dependency: `ok`, or `unavailable: <why>`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct ReadinessChecks {
    #[schema(example = "ok")]
    database: String,
    #[schema(example = "ok")]
    broker: String,
    broker_kind: BrokerKind,
}

/// Order actors; the counters count since the process started.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct OrderActorStats {
    /// Actors alive now (orders being worked on).
    live: u64,
    /// Actor restarts after a panic.
    restarts: u64,
    /// Orders parked after a crash loop.
    parked: u64,
    /// Resends of pending commands (after a step timeout, or on start-up recovery).
    step_retries: u64,
    /// Forward steps given up after their resends (the saga compensated).
    step_timeouts: u64,
}

/// `GET /api/admin/invariants`.
#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
pub struct InvariantReportBody {
    /// Every invariant holds: no violation, nothing in flight, nothing parked.
    holds: bool,
    /// Number of orders per status.
    orders_by_status: BTreeMap<String, u64>,
    /// Orders not yet terminal (and not parked); 0 once the system is quiet.
    in_flight: u64,
    /// Orders parked after a crash loop; they need an operator.
    parked: u64,
    /// One line per broken rule about money and stock; empty when consistent.
    violations: Vec<String>,
}
