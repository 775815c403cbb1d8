//! Health endpoints: `live` says the process is up; `ready` says it can do its job right
//! now — every database store answers and the broker connection is open.

use crate::http::AppState;
use crate::http::schema::{Liveness, Readiness};
use crate::messaging::Bus;
use crate::persistence::Stores;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use std::sync::atomic::Ordering;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
}

/// The same probes for the `participants` process: its stores and the broker.
pub fn participants_router(stores: Stores, bus: Bus) -> Router {
    Router::new().route("/health/live", get(live)).route(
        "/health/ready",
        get(move || {
            let (stores, bus) = (stores.clone(), bus.clone());
            async move {
                let (ready, checks) = dependencies(&stores, &bus).await;
                answer(
                    ready,
                    json!({ "status": status_word(ready), "checks": checks }),
                )
            }
        }),
    )
}

#[utoipa::path(
    get,
    path = "/health/live",
    operation_id = "health_live",
    tag = "health",
    summary = "Liveness: the process is up",
    responses((status = 200, description = "Always `{\"status\": \"ok\"}`", body = Liveness))
)]
async fn live() -> Response {
    Json(json!({ "status": "ok" })).into_response()
}

#[utoipa::path(
    get,
    path = "/health/ready",
    operation_id = "health_ready",
    tag = "health",
    summary = "Readiness: every database store and the broker are reachable",
    description = "Also reports live order actors, restarts, parked orders, step retries and \
        timeouts. Not ready is a 503 with the same JSON body (not a problem document), naming \
        the check that failed.",
    responses(
        (status = 200, description = "Ready", body = Readiness),
        (status = 503, description = "Not ready: `checks` names what is unavailable",
            body = Readiness),
    )
)]
async fn ready(State(app): State<AppState>) -> Response {
    let (ready, checks) = dependencies(&app.stores, &app.bus).await;
    let stats = app.orchestrator.stats();
    answer(
        ready,
        json!({
            "status": status_word(ready),
            "checks": checks,
            "order_actors": {
                "live": app.orchestrator.live_actors(),
                "restarts": stats.restarts.load(Ordering::Relaxed),
                "parked": stats.parked.load(Ordering::Relaxed),
                "step_retries": stats.retries.load(Ordering::Relaxed),
                "step_timeouts": stats.timeouts.load(Ordering::Relaxed),
            },
            "ownership": ownership(&app),
        }),
    )
}

/// This replica's partitions (`null` when it owns every order).
fn ownership(app: &AppState) -> serde_json::Value {
    let ownership = app.orchestrator.ownership();
    match ownership.replica_id() {
        Some(replica_id) => json!({
            "replica_id": replica_id,
            "partitions": ownership.partitions(),
            "owned": ownership.owned(),
            "members": ownership.members(),
        }),
        None => serde_json::Value::Null,
    }
}

/// Whether every store answers (within 2 s) and the broker is connected, and each check.
async fn dependencies(stores: &Stores, bus: &Bus) -> (bool, serde_json::Value) {
    let database =
        match tokio::time::timeout(std::time::Duration::from_secs(2), stores.ping()).await {
            Ok(Ok(())) => "ok".to_owned(),
            Ok(Err(e)) => format!("unavailable: {e}"),
            Err(_) => "unavailable: timed out".to_owned(),
        };
    let broker = broker_check(bus);
    let ready = database == "ok" && broker == "ok";
    let checks = json!({ "database": database, "broker": broker, "broker_kind": bus.kind() });
    (ready, checks)
}

fn status_word(ready: bool) -> &'static str {
    if ready { "ready" } else { "unavailable" }
}

fn answer(ready: bool, body: serde_json::Value) -> Response {
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// The broker's readiness check: `ok`, or `unavailable: <why>` — not reached yet since
/// start-up, or lost — with the last connection attempt's error when there is one.
fn broker_check(bus: &Bus) -> String {
    if bus.is_connected() {
        return "ok".to_owned();
    }
    let state = if bus.connected_once() {
        "connection lost, reconnecting"
    } else {
        "not reached since start-up, connecting"
    };
    match bus.last_error() {
        Some(error) => format!("unavailable: {state} ({error})"),
        None => format!("unavailable: {state}"),
    }
}
