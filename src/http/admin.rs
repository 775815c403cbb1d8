//! Admin endpoints for operators: the invariant report (what the chaos script and the load
//! generator check after a run).

use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extractors::Admin;
use crate::http::schema::{BearerErrors, InvariantReportBody, Problem, ServerErrors};
use crate::invariants;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/admin/invariants", get(invariant_report))
}

/// Checks the money and stock invariants now. Meaningful once the system is quiet (in-flight
/// orders are reported as non-terminal). Reads every order: an operator tool, not a probe.
#[utoipa::path(
    get,
    path = "/api/admin/invariants",
    operation_id = "get_invariants",
    tag = "admin",
    summary = "The invariant report (admin)",
    description = "Checks the invariants now: stock conserved per SKU, every `CONFIRMED` \
        order paid and shipped, every `REVERSED`/`REJECTED` order holding no stock and no \
        un-refunded payment, no order left non-terminal. Meaningful once the system is \
        quiet; reads every order.",
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "The report", body = InvariantReportBody),
        (status = 404, description = "Admin endpoints are disabled (no `ADMIN_TOKEN`)",
            body = Problem, content_type = "application/problem+json"),
        BearerErrors,
        ServerErrors,
    )
)]
async fn invariant_report(
    State(app): State<AppState>,
    _admin: Admin,
) -> Result<Response, ApiError> {
    // The check reads every order of every store, much of it synchronous decoding: on the
    // runtime's workers it would stall every saga for as long, so it runs on a blocking-pool
    // thread that drives its own queries.
    let stores = app.stores.clone();
    let runtime = tokio::runtime::Handle::current();
    let report =
        tokio::task::spawn_blocking(move || runtime.block_on(invariants::check(&stores, None)))
            .await
            .map_err(|e| ApiError::Internal(anyhow::Error::new(e).context("invariant check")))??;
    Ok(Json(json!({
        "holds": report.holds(),
        "orders_by_status": report.orders_by_status,
        "in_flight": report.in_flight,
        "parked": report.parked,
        "violations": report.violations,
    }))
    .into_response())
}
