//! Inventory endpoints: read the catalogue and stock; admins set stock and price.

use crate::domain::text::{STOCK_NAME, SkuSchema};
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extractors::{Admin, ApiJson, SkuPath};
use crate::http::openapi::{Problem, StockList};
use crate::participants::inventory::{StockUpdate, StockView};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

/// Upper bound for admin-set counts and prices, far from any overflow.
const MAX_VALUE: i64 = 1_000_000_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/inventory", get(list))
        .route("/api/inventory/{sku}", get(get_one).put(put))
}

#[utoipa::path(
    get,
    path = "/api/inventory",
    operation_id = "list_inventory",
    tag = "inventory",
    summary = "List the catalogue and stock",
    description = "Every SKU with its name, price and stock counts, ordered by SKU.",
    responses(
        (status = 200, description = "Every SKU", body = StockList),
        (status = 500, description = "Unexpected failure (logged; no details)", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable; retry shortly",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
async fn list(State(app): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(json!({ "items": app.inventory.list().await? })).into_response())
}

#[utoipa::path(
    get,
    path = "/api/inventory/{sku}",
    operation_id = "get_stock",
    tag = "inventory",
    summary = "Get one SKU",
    params(("sku" = SkuSchema, Path, description = "The SKU")),
    responses(
        (status = 200, description = "The SKU", body = StockView),
        (status = 400, description = "The SKU breaks the SKU rule (pattern and length), or is \
            not UTF-8", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such SKU", body = Problem,
            content_type = "application/problem+json"),
        (status = 500, description = "Unexpected failure (logged; no details)", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable; retry shortly",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
async fn get_one(State(app): State<AppState>, SkuPath(sku): SkuPath) -> Result<Response, ApiError> {
    let item = app
        .inventory
        .get(&sku)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("SKU {sku} not found")))?;
    Ok(Json(item).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PutStock {
    #[schema(schema_with = name_schema)]
    name: Option<String>,
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    price_cents: i64,
    /// Units available for sale (reserved and sold counts are left alone).
    #[schema(minimum = 0, maximum = 1_000_000_000)]
    available: i64,
}

fn name_schema() -> utoipa::openapi::schema::Object {
    STOCK_NAME.schema(
        "Display name: not only white space, no control characters; absent: kept (or the SKU \
         itself for a new SKU)",
        "Mechanical keyboard",
        true,
    )
}

#[utoipa::path(
    put,
    path = "/api/inventory/{sku}",
    operation_id = "put_stock",
    tag = "admin",
    summary = "Set a SKU's stock and price (admin)",
    description = "Sets the available count and the price, creating the SKU if it is new. \
        Reserved and sold counts belong to orders and are left alone.",
    params(("sku" = SkuSchema, Path, description = "The SKU")),
    request_body(content = PutStock, content_type = "application/json"),
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "The SKU after the change", body = StockView),
        (status = 400, description = "Malformed JSON, or the SKU breaks the SKU rule (pattern \
            and length) or is not UTF-8", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "No bearer token", body = Problem,
            content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "Wrong bearer token", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "Admin endpoints are disabled (no `ADMIN_TOKEN`)",
            body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "Body not in full within `HTTP_BODY_TIMEOUT_SECS` of the \
            request head (the connection is then closed)", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, description = "Body larger than `BODY_LIMIT_BYTES`", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "Body is not `Content-Type: application/json`",
            body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid counts or name (`errors` lists every \
            problem), wrong types or unknown fields", body = Problem,
            content_type = "application/problem+json"),
        (status = 500, description = "Unexpected failure (logged; no details)", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable; retry shortly",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
async fn put(
    State(app): State<AppState>,
    _admin: Admin,
    SkuPath(sku): SkuPath,
    ApiJson(body): ApiJson<PutStock>,
) -> Result<Response, ApiError> {
    let mut problems = Vec::new();
    if !(0..=MAX_VALUE).contains(&body.price_cents) {
        problems.push(format!("price_cents must be between 0 and {MAX_VALUE}"));
    }
    if !(0..=MAX_VALUE).contains(&body.available) {
        problems.push(format!("available must be between 0 and {MAX_VALUE}"));
    }
    if let Some(Err(problem)) = body.name.as_deref().map(|n| STOCK_NAME.check(n)) {
        problems.push(problem);
    }
    if !problems.is_empty() {
        return Err(ApiError::validation(problems.join("; ")).with("errors", json!(problems)));
    }
    let view = app
        .inventory
        .put(
            &sku,
            StockUpdate {
                name: body.name,
                price_cents: body.price_cents,
                available: body.available,
            },
        )
        .await?;
    tracing::info!(%sku, available = view.available, price_cents = view.price_cents, "stock set by admin");
    Ok(Json(view).into_response())
}
