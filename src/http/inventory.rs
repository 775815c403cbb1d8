//! Inventory endpoints: read the catalogue and stock; admins set stock and price.

use crate::domain::text::{STOCK_NAME, SkuSchema};
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extractors::{Admin, ApiJson, SkuPath};
use crate::http::schema::{BearerErrors, BodyErrors, Problem, ServerErrors, StockList};
use crate::participants::inventory::{Adjusted, StockAdjustment, StockUpdate, StockView};
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use utoipa::openapi::schema::{KnownFormat, Object, ObjectBuilder, SchemaFormat, SchemaType, Type};

/// Upper bound for admin-set counts and prices, far from any overflow.
const MAX_VALUE: i64 = 1_000_000_000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/inventory", get(list))
        .route("/api/inventory/{sku}", get(get_one).put(put).patch(adjust))
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
        ServerErrors,
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
        ServerErrors,
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
    #[serde(deserialize_with = "crate::domain::integral::deserialize")]
    #[schema(schema_with = price_schema)]
    price_cents: i64,
    #[serde(deserialize_with = "crate::domain::integral::deserialize")]
    #[schema(schema_with = available_schema)]
    available: i64,
}

fn count_schema(description: &str, minimum: i64) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .description(Some(description))
        .minimum(Some(minimum))
        .maximum(Some(MAX_VALUE))
        .build()
}

fn price_schema() -> Object {
    count_schema("Unit price in cents", 0)
}

fn available_schema() -> Object {
    count_schema(
        "Units available for sale (reserved and sold counts are left alone)",
        0,
    )
}

fn name_schema() -> Object {
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
        (status = 200, description = "The SKU after the change", body = StockView,
            links(
                ("GetStock" = (operation_id = "get_stock",
                    parameters(("sku" = "$response.body#/sku")),
                    description = "The SKU just set")),
                ("AdjustStock" = (operation_id = "adjust_stock",
                    parameters(("sku" = "$response.body#/sku")),
                    description = "Add or remove stock of the SKU just set")),
            )),
        (status = 400, description = "Malformed JSON, or the SKU breaks the SKU rule (pattern \
            and length) or is not UTF-8", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "Admin endpoints are disabled (no `ADMIN_TOKEN`)",
            body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid counts or name (`errors` lists every \
            problem), wrong types or unknown fields", body = Problem,
            content_type = "application/problem+json"),
        BearerErrors,
        BodyErrors,
        ServerErrors,
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
    ApiError::unless_any(problems)?;
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

/// Body of `PATCH /api/inventory/{sku}`: every member is optional; `{}` changes nothing.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PatchStock {
    #[serde(default, deserialize_with = "crate::domain::integral::deserialize")]
    #[schema(schema_with = adjust_schema)]
    adjust: i64,
    #[schema(schema_with = name_schema)]
    name: Option<String>,
    #[serde(default, deserialize_with = "crate::domain::integral::option")]
    #[schema(schema_with = patch_price_schema)]
    price_cents: Option<i64>,
}

fn adjust_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .description(Some(
            "Units added to `available` (negative: removed); absent: 0. The result must stay \
             between 0 and the cap: units reserved by orders in progress cannot be removed.",
        ))
        .minimum(Some(-MAX_VALUE))
        .maximum(Some(MAX_VALUE))
        .examples([50, -3])
        .build()
}

fn patch_price_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Integer, Type::Null]))
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .description(Some("New unit price in cents; absent or null: kept"))
        .minimum(Some(0))
        .maximum(Some(MAX_VALUE))
        .build()
}

#[utoipa::path(
    patch,
    path = "/api/inventory/{sku}",
    operation_id = "adjust_stock",
    tag = "admin",
    summary = "Add or remove stock of a SKU (admin)",
    description = "Changes the available count by `adjust` (e.g. `{\"adjust\": 50}` after a \
        delivery, `{\"adjust\": -3}` for breakage), and optionally the name or price. One \
        conditional update: concurrent adjustments and orders never lose each other's \
        changes. Units reserved by orders in progress cannot be removed; the count never goes \
        below zero or above 1,000,000,000 (409, nothing changed).",
    params(("sku" = SkuSchema, Path, description = "The SKU")),
    request_body(content = PatchStock, content_type = "application/json"),
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "The SKU after the change", body = StockView,
            links(("GetStock" = (operation_id = "get_stock",
                parameters(("sku" = "$response.body#/sku")),
                description = "The SKU just adjusted")))),
        (status = 400, description = "Malformed JSON, or the SKU breaks the SKU rule (pattern \
            and length) or is not UTF-8", body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such SKU, or admin endpoints are disabled (no \
            `ADMIN_TOKEN`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The available count would go below zero (`available`, \
            `reserved`: reserved units cannot be removed) or above the cap; nothing changed",
            body = Problem, content_type = "application/problem+json"),
        (status = 413, description = "Body larger than `BODY_LIMIT_BYTES`", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "Body is not `Content-Type: application/json`",
            body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid `adjust`, name or price (`errors` lists every \
            problem), wrong types or unknown fields", body = Problem,
            content_type = "application/problem+json"),
        BearerErrors,
        ServerErrors,
    )
)]
async fn adjust(
    State(app): State<AppState>,
    _admin: Admin,
    SkuPath(sku): SkuPath,
    ApiJson(body): ApiJson<PatchStock>,
) -> Result<Response, ApiError> {
    let mut problems = Vec::new();
    if !(-MAX_VALUE..=MAX_VALUE).contains(&body.adjust) {
        problems.push(format!(
            "adjust must be between -{MAX_VALUE} and {MAX_VALUE}"
        ));
    }
    if matches!(body.price_cents, Some(p) if !(0..=MAX_VALUE).contains(&p)) {
        problems.push(format!("price_cents must be between 0 and {MAX_VALUE}"));
    }
    if let Some(Err(problem)) = body.name.as_deref().map(|n| STOCK_NAME.check(n)) {
        problems.push(problem);
    }
    ApiError::unless_any(problems)?;
    let change = StockAdjustment {
        adjust: body.adjust,
        name: body.name,
        price_cents: body.price_cents,
        max_available: MAX_VALUE,
    };
    let adjust = change.adjust;
    match app.inventory.adjust(&sku, change).await? {
        Adjusted::Done(view) => {
            tracing::info!(%sku, adjust, available = view.available, "stock adjusted by admin");
            Ok(Json(view).into_response())
        }
        Adjusted::UnknownSku => Err(ApiError::NotFound(format!("SKU {sku} not found"))),
        Adjusted::Refused(view) => Err(adjustment_refused(&view, adjust)),
    }
}

/// The 409 of a refused adjustment, saying which bound it would cross.
fn adjustment_refused(view: &StockView, adjust: i64) -> ApiError {
    let StockView {
        sku,
        available,
        reserved,
        ..
    } = view;
    let result = available + adjust;
    let detail = if (0..=MAX_VALUE).contains(&result) {
        // Refused, yet fine against the counts read just after: they changed in between.
        format!("the available count of {sku} changed during the adjustment; retry")
    } else if result > MAX_VALUE {
        format!(
            "adding {adjust} to {sku} would make {result} available, above the cap of {MAX_VALUE}"
        )
    } else if *reserved > 0 {
        format!(
            "removing {} of {sku} would leave {result} available: only {available} can be \
             removed, the other {reserved} in stock are reserved by orders in progress",
            -adjust
        )
    } else {
        format!(
            "removing {} of {sku} would leave {result} available: only {available} are in stock",
            -adjust
        )
    };
    ApiError::conflict(
        "stock-adjustment-refused",
        "Stock adjustment refused",
        detail,
    )
    .with("sku", json!(sku))
    .with("available", json!(available))
    .with("reserved", json!(reserved))
    .with("adjust", json!(adjust))
}
