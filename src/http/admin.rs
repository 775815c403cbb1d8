//! Admin endpoints for operators: the invariant report (what the chaos script and the load
//! generator check after a run).

use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extractors::Admin;
use crate::invariants;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

pub fn router() -> Router<AppState> {
    Router::new().route("/api/admin/invariants", get(invariant_report))
}

/// Checks the DESIGN.md invariants now. Meaningful once the system is quiet (in-flight
/// orders are reported as non-terminal). Reads every order: an operator tool, not a probe.
async fn invariant_report(
    State(app): State<AppState>,
    _admin: Admin,
) -> Result<Response, ApiError> {
    let report = invariants::check(&app.stores, None).await?;
    Ok(Json(json!({
        "holds": report.holds(),
        "orders_by_status": report.orders_by_status,
        "in_flight": report.in_flight,
        "parked": report.parked,
        "violations": report.violations,
    }))
    .into_response())
}
