//! Inventory endpoints: read the catalogue and stock; admins set stock and price.

use crate::domain::order::valid_sku;
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extractors::{Admin, ApiJson, ApiPath};
use crate::participants::inventory::StockUpdate;
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

async fn list(State(app): State<AppState>) -> Result<Response, ApiError> {
    Ok(Json(json!({ "items": app.inventory.list().await? })).into_response())
}

async fn get_one(
    State(app): State<AppState>,
    ApiPath(sku): ApiPath<String>,
) -> Result<Response, ApiError> {
    let item = app
        .inventory
        .get(&sku)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("SKU {sku} not found")))?;
    Ok(Json(item).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PutStock {
    name: Option<String>,
    price_cents: i64,
    available: i64,
}

async fn put(
    State(app): State<AppState>,
    _admin: Admin,
    ApiPath(sku): ApiPath<String>,
    ApiJson(body): ApiJson<PutStock>,
) -> Result<Response, ApiError> {
    let mut problems = Vec::new();
    if !valid_sku(&sku) {
        problems.push("sku must be 1-64 characters of letters, digits, '-', '_' or '.'".to_owned());
    }
    if !(0..=MAX_VALUE).contains(&body.price_cents) {
        problems.push(format!("price_cents must be between 0 and {MAX_VALUE}"));
    }
    if !(0..=MAX_VALUE).contains(&body.available) {
        problems.push(format!("available must be between 0 and {MAX_VALUE}"));
    }
    if matches!(&body.name, Some(n) if n.trim().is_empty() || n.len() > 200) {
        problems.push("name must be 1-200 characters".to_owned());
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
