//! HTTP API (axum): one router per resource, merged here with the cross-cutting layers —
//! request tracing, body limit, panic catching, and problem+json for every error response,
//! including the ones axum produces itself (404, 405).

pub mod admin;
pub mod errors;
pub mod extractors;
pub mod health;
pub mod inventory;
pub mod orders;

use crate::actors::Orders;
use crate::domain::saga::PaymentMode;
use crate::messaging::Bus;
use crate::participants::inventory::Inventory;
use crate::persistence::Stores;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{Method, StatusCode, Uri};
use axum::response::Response;
use errors::{ApiError, problem, problem_response};
use std::sync::Arc;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::TraceLayer;

/// HTTP-facing settings, taken from the configuration once.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    pub admin_token: Option<String>,
    pub dev_endpoints: bool,
    pub payment_mode: PaymentMode,
    pub idempotency_retention: chrono::Duration,
    /// Age after which an unfinished claim counts as abandoned (its request crashed).
    pub idempotency_claim_timeout: chrono::Duration,
    pub body_limit_bytes: usize,
}

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub orders: Orders,
    pub stores: Stores,
    pub inventory: Inventory,
    pub bus: Bus,
    pub settings: Arc<HttpSettings>,
}

pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.body_limit_bytes;
    Router::new()
        .merge(orders::router())
        .merge(inventory::router())
        .merge(health::router())
        .merge(admin::router())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(CatchPanicLayer::custom(|_| {
            tracing::error!("handler panicked");
            problem_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "internal-error",
                    "Internal server error",
                    "",
                ),
            )
        }))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

async fn not_found(uri: Uri) -> ApiError {
    ApiError::NotFound(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let status = StatusCode::METHOD_NOT_ALLOWED;
    problem_response(
        status,
        problem(
            status,
            "method-not-allowed",
            "Method not allowed",
            &format!("{method} is not allowed on {}", uri.path()),
        ),
    )
}
