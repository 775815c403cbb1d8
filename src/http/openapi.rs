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
use crate::domain::text::SkuSchema;
use crate::http::errors::ApiError;
use crate::http::extractors::IdempotencyKeySchema;
use crate::http::schema::Problem;
use crate::http::{AppState, admin, events, health, inventory, orders};
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::Value;
use utoipa::openapi::Required;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

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
        admin::session_info,
        admin::overview,
        admin::list_orders,
        admin::order_timeline,
        admin::resume,
        admin::dead_letters,
        admin::replay_one,
        admin::replay_all,
        admin::discard_one,
        admin::discard_all,
        events::events,
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
            <ADMIN_TOKEN>` (or the console's session cookie, see /console) and do not exist \
            (404) without a configured token"),
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

/// The bodies of the dev pay endpoint and of the resume may be left out. (utoipa marks a
/// body of type `T` required, and one of type `Option<T>` nullable, which it is not.)
struct OptionalPayBody;

impl Modify for OptionalPayBody {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for path in ["/api/orders/{id}/pay", "/api/admin/orders/{id}/resume"] {
            if let Some(body) = openapi
                .paths
                .paths
                .get_mut(path)
                .and_then(|item| item.post.as_mut())
                .and_then(|operation| operation.request_body.as_mut())
            {
                body.required = Some(Required::False);
            }
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
        .route(
            "/api-docs/assets/swagger-ui-bundle.js",
            get(|| async { asset("text/javascript; charset=utf-8", SWAGGER_UI_JS) }),
        )
        .route(
            "/api-docs/assets/swagger-ui.css",
            get(|| async { asset("text/css; charset=utf-8", SWAGGER_UI_CSS) }),
        )
        .route(
            "/api-docs/assets/init.js",
            get(|| async { asset("text/javascript; charset=utf-8", SWAGGER_UI_INIT) }),
        )
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
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>Order Orchestration Service API</title>
  <link rel="stylesheet" href="/api-docs/assets/swagger-ui.css">
</head>
<body>
  <div id="swagger-ui"></div>
  <noscript>The raw document is at <a href="/api-docs/openapi.json">/api-docs/openapi.json</a>.</noscript>
  <script src="/api-docs/assets/swagger-ui-bundle.js"></script>
  <script src="/api-docs/assets/init.js"></script>
</body>
</html>
"##;

/// Swagger UI, vendored from npm (vendor/swagger-ui/README.md): the page needs no network.
const SWAGGER_UI_JS: &str = include_str!("../../vendor/swagger-ui/swagger-ui-bundle.js");
const SWAGGER_UI_CSS: &str = include_str!("../../vendor/swagger-ui/swagger-ui.css");
const SWAGGER_UI_INIT: &str = r##"window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({ url: "/api-docs/openapi.json", dom_id: "#swagger-ui" });
});
"##;

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

#[utoipa::path(
    get,
    path = "/api-docs",
    operation_id = "get_api_docs_page",
    tag = "operations",
    summary = "A browsable view of this document",
    description = "Swagger UI over this document. The viewer (vendored from npm) is served \
        by the service itself under `/api-docs/assets/`: the page needs no network.",
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
