//! Order endpoints: create (idempotent), read, list, admin status override, dev payment.

use crate::actors::Waited;
use crate::actors::order_actor::{NewOrder, OrderError};
use crate::domain::order::{OrderRequest, total_cents};
use crate::domain::saga::{Event, OrderStatus, PaymentOutcome, TransitionError};
use crate::domain::text::OVERRIDE_REASON;
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extractors::{
    Admin, ApiJson, ApiPath, ApiQuery, IdempotencyKey, IdempotencyKeySchema, RawBody,
};
use crate::http::openapi::{OrderList, Problem};
use crate::participants::inventory::QuoteError;
use crate::persistence::idempotency::{self, Claim};
use crate::persistence::orders::{self, OrderDetails, OrderLine};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::Duration;
use uuid::Uuid;

pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/api/orders", post(create_order).get(list_orders))
        .route("/api/orders/{id}", get(get_order))
        .route("/api/orders/{id}/status", patch(override_status))
        .route("/api/orders/{id}/pay", post(pay))
}

fn created(status: u16, body: String, order_id: Option<Uuid>, replayed: bool) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::CREATED);
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(id) = order_id
        && let Ok(location) = HeaderValue::from_str(&format!("/api/orders/{id}"))
    {
        headers.insert(header::LOCATION, location);
    }
    if replayed {
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

/// A W3C `traceparent` worth keeping: `00-<32 hex>-<16 hex>-<2 hex>`.
fn traceparent(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?.trim();
    let parts: Vec<&str> = value.split('-').collect();
    let shape = [2usize, 32, 16, 2];
    let well_formed = parts.len() == 4
        && parts
            .iter()
            .zip(shape)
            .all(|(p, len)| p.len() == len && p.bytes().all(|b| b.is_ascii_hexdigit()));
    well_formed.then(|| value.to_ascii_lowercase())
}

#[utoipa::path(
    post,
    path = "/api/orders",
    operation_id = "create_order",
    tag = "orders",
    summary = "Create an order (idempotent)",
    description = "Checks and prices the order against the catalogue (prices never come from \
        the client), stores it and starts its saga. The `Idempotency-Key` header is required: \
        the same key with the same body replays the first response (same status, body and \
        `Location`, plus `Idempotent-Replayed: true`); with another body it is a 422; while \
        the first request is still running, a 409. A request that failed without creating \
        anything does not keep its key.",
    params(
        ("Idempotency-Key" = IdempotencyKeySchema, Header,
            description = "Required, unique per intended order (e.g. a fresh UUID): 1-255 \
                visible ASCII characters, bare or in one pair of double quotes (then the key \
                is what is between them)."),
        ("traceparent" = Option<String>, Header, nullable = false,
            description = "W3C trace context; when well-formed it is carried on every message \
                the order causes."),
    ),
    request_body(content = OrderRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "The order was created (or this is a replay of the \
            request that created it).", body = OrderDetails,
            links(
                ("GetOrder" = (operation_id = "get_order",
                    parameters(("id" = "$response.body#/id")),
                    description = "The order just created")),
                ("OverrideStatus" = (operation_id = "override_status",
                    parameters(("id" = "$response.body#/id")),
                    description = "Cancel the order just created (admin)")),
                ("PayOrder" = (operation_id = "pay_order",
                    parameters(("id" = "$response.body#/id")),
                    description = "Submit the payment of the order just created (dev, \
                        `PAYMENT_MODE=manual`)")),
            ),
            headers(
                ("Location" = String, description = "`/api/orders/{id}` of the new order"),
                ("Idempotent-Replayed" = String,
                    description = "`true` when this response replays the first response for \
                        the same `Idempotency-Key`; absent otherwise"),
            )),
        (status = 400, description = "Missing or invalid `Idempotency-Key`, malformed JSON \
            or unreadable body", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not enough stock (`sku`, `requested`, `available`), or a \
            request with the same `Idempotency-Key` is still in progress",
            body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "Body not in full within `HTTP_BODY_TIMEOUT_SECS` of the \
            request head (the connection is then closed)", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, description = "Body larger than `BODY_LIMIT_BYTES`", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "Body is not `Content-Type: application/json`",
            body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid order (wrong types, unknown fields, validation: \
            `errors` lists every problem), unknown SKU (`sku`), total too large, or the \
            `Idempotency-Key` was first used with a different body", body = Problem,
            content_type = "application/problem+json"),
        (status = 500, description = "Unexpected failure (logged; no details)", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "Too many orders in progress (`MAX_ORDERS_IN_FLIGHT`), \
            the message broker not reached yet since start-up, or the database or the order \
            actor is unavailable; retry shortly with the same `Idempotency-Key`", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
#[tracing::instrument(name = "http.create_order", skip_all, fields(order_id))]
async fn create_order(
    State(app): State<AppState>,
    IdempotencyKey(key): IdempotencyKey,
    headers: HeaderMap,
    ApiJson(request): ApiJson<OrderRequest>,
) -> Result<Response, ApiError> {
    let valid = request.validate().map_err(ApiError::validation_all)?;
    broker_reached(&app)?;
    let limit = app.settings.max_orders_in_flight;
    if limit > 0 && app.orders.live_actors() >= limit {
        // Shed load before any work (nothing is claimed or written): the sagas in flight
        // keep the CPU and the database, and the client retries with the same key.
        metrics::counter!("orders_rejected_overload_total").increment(1);
        return Err(ApiError::Unavailable(format!(
            "{limit} orders are in progress (MAX_ORDERS_IN_FLIGHT); retry shortly"
        )));
    }
    // Hash the parsed request, so formatting and key order do not make a "different body".
    let canonical = serde_json::to_vec(&request).map_err(|e| ApiError::Internal(e.into()))?;
    let hash = hex::encode(Sha256::digest(&canonical));
    let trace_context = traceparent(&headers);
    // The id this request's order gets, whichever write creates it: a replay that names it
    // is this request's own order (its first write committed, the answer was lost when the
    // actor crashed, and the retried write found the key taken), not an earlier request's.
    let own_id = Uuid::now_v7();
    let started = std::time::Instant::now();
    let quote = app.inventory.quote(&valid.items).await.map_err(quote_error);
    metrics::histogram!("order_create_phase_seconds", "phase" => "stock_check")
        .record(started.elapsed().as_secs_f64());
    if let Ok(prices) = &quote {
        // The usual case, a key not seen before: the order's own write claims the key
        // (inserts it with the response) and creates the order only if the key was free —
        // one write, no claim before it.
        let claim = Some(hash.as_str());
        if let Some((order_id, body)) = place_order(
            &app,
            own_id,
            &valid,
            prices,
            &key,
            claim,
            trace_context.clone(),
        )
        .await?
        {
            tracing::Span::current().record("order_id", tracing::field::display(order_id));
            return Ok(created(201, body, Some(order_id), false));
        }
    }
    // The key is in use, or the stock check refused the order (a repeated request must
    // still get its first answer): claim the key on its own first and decide from its row.
    let started = std::time::Instant::now();
    let claim = app.claims.claim(&key, &hash).await;
    metrics::histogram!("order_create_phase_seconds", "phase" => "claim")
        .record(started.elapsed().as_secs_f64());
    match claim? {
        Claim::New => {}
        Claim::Replay { status, body } => {
            let order_id = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| {
                    v.get("id")
                        .and_then(|id| id.as_str())
                        .and_then(|s| s.parse().ok())
                });
            let replayed = order_id != Some(own_id);
            if replayed {
                metrics::counter!("idempotency_replays_total").increment(1);
            }
            return Ok(created(status, body, order_id, replayed));
        }
        Claim::Mismatch => {
            metrics::counter!("idempotency_conflicts_total", "kind" => "mismatch").increment(1);
            return Err(ApiError::unprocessable(
                "idempotency-key-reused",
                "Idempotency-Key reused with a different body",
                "this Idempotency-Key was first used with a different request body",
            ));
        }
        Claim::InFlight => {
            metrics::counter!("idempotency_conflicts_total", "kind" => "in_flight").increment(1);
            return Err(key_in_flight());
        }
    }
    let (result, may_still_commit) = match quote {
        Ok(prices) => {
            let result = place_order(&app, own_id, &valid, &prices, &key, None, trace_context)
                .await
                // A create without a claim never finds its key taken, and its own order
                // exists only if an attempt committed before its actor crashed; either way
                // the key now holds an answer, which a retry gets: "in progress".
                .and_then(|placed| placed.ok_or_else(key_in_flight));
            // After a timeout or an unavailable actor the order's write may still be queued
            // and commit later, filling in this key: releasing it would let a retry create
            // a second order. The claim is then completed by that write, or taken over
            // once abandoned (IDEMPOTENCY_CLAIM_TIMEOUT_SECS).
            let pending = matches!(&result, Err(e) if e.status().is_server_error());
            (result, pending)
        }
        Err(refused) => (Err(refused), false),
    };
    if result.is_err() && !may_still_commit {
        // Nothing was created: give the key back so a corrected retry may use it.
        if let Err(e) = idempotency::release(&app.stores.orders, &key).await {
            tracing::warn!(error = %e, "could not release idempotency key");
        }
    }
    let (order_id, body) = result?;
    tracing::Span::current().record("order_id", tracing::field::display(order_id));
    Ok(created(201, body, Some(order_id), false))
}

/// New work that sends messages is refused until the broker was reached once: before
/// that, a wrong host or port cannot be told from a broker still starting, and the work
/// would wait in the outbox for a broker that may never come. (After a loss the outbox
/// carries the work across the outage instead.)
fn broker_reached(app: &AppState) -> Result<(), ApiError> {
    if app.bus.connected_once() {
        return Ok(());
    }
    Err(ApiError::Unavailable(
        "the message broker has not been reached since start-up; retry shortly".into(),
    ))
}

fn key_in_flight() -> ApiError {
    ApiError::conflict(
        "idempotency-key-in-flight",
        "Request with this Idempotency-Key is still in progress",
        "a request with this Idempotency-Key is still being processed; retry later",
    )
}

/// The stock check's refusal at the HTTP boundary.
fn quote_error(e: QuoteError) -> ApiError {
    match e {
        QuoteError::UnknownSku(sku) => ApiError::unprocessable(
            "unknown-sku",
            "Unknown SKU",
            format!("SKU {sku} is not in the catalogue"),
        )
        .with("sku", json!(sku)),
        QuoteError::Insufficient {
            sku,
            requested,
            available,
        } => ApiError::conflict(
            "insufficient-stock",
            "Not enough stock",
            format!("requested {requested} of {sku}, only {available} available"),
        )
        .with("sku", json!(sku))
        .with("requested", json!(requested))
        .with("available", json!(available)),
        QuoteError::Db(e) => e.into(),
    }
}

/// Prices and creates the order under `id`, the request's own. `claims_with_hash`:
/// `Some(request hash)` when the key was not claimed beforehand and the order's write is to
/// claim it; `None`: the key is claimed already. `Ok(None)`: nothing was written now and
/// the key holds the answer — it was taken, or an earlier attempt of this request already
/// created the order (see [`created_or_taken`]).
async fn place_order(
    app: &AppState,
    id: Uuid,
    valid: &crate::domain::order::ValidOrder,
    prices: &[i64],
    key: &str,
    claims_with_hash: Option<&str>,
    trace_context: Option<String>,
) -> Result<Option<(Uuid, String)>, ApiError> {
    let items: Vec<OrderLine> = valid
        .items
        .iter()
        .zip(prices)
        .map(|((sku, quantity), price)| OrderLine {
            sku: sku.clone(),
            quantity: *quantity,
            unit_price_cents: *price,
        })
        .collect();
    let total =
        total_cents(items.iter().map(|l| (l.quantity, l.unit_price_cents))).ok_or_else(|| {
            ApiError::unprocessable(
                "total-overflow",
                "Order total too large",
                "the order total does not fit in 64-bit cents",
            )
        })?;
    let order = NewOrder {
        id,
        customer_id: valid.customer_id.clone(),
        currency: valid.currency.clone(),
        items,
        total_cents: total,
        payment_mode: app.settings.payment_mode,
        idempotency_key: Some(key.to_owned()),
        claims_key_with_hash: claims_with_hash.map(str::to_owned),
        trace_context,
    };
    let started = std::time::Instant::now();
    let Some(details) = created_or_taken(app.orders.create(order).await, id)? else {
        return Ok(None);
    };
    metrics::histogram!("order_create_phase_seconds", "phase" => "create_and_commit")
        .record(started.elapsed().as_secs_f64());
    let body = serde_json::to_string(&details).map_err(|e| ApiError::Internal(e.into()))?;
    Ok(Some((id, body)))
}

/// A create's answer from the order actor for the request that picked `own_id`: the new
/// order, or `None` when the request must be answered from its key's stored response.
/// That is the case when the key is taken, and also when the order already exists under
/// `own_id`: ids are picked per request, so only this request's own earlier attempt can
/// have created it (it committed, then its actor crashed before answering, and the retry
/// reached a restarted actor that had loaded the order meanwhile, e.g. for a reply).
fn created_or_taken(
    answer: Result<OrderDetails, OrderError>,
    own_id: Uuid,
) -> Result<Option<OrderDetails>, ApiError> {
    match answer {
        Ok(details) => Ok(Some(details)),
        Err(OrderError::KeyTaken(_)) => Ok(None),
        Err(OrderError::AlreadyExists(id)) if id == own_id => Ok(None),
        Err(other) => Err(order_error(other)),
    }
}

/// Maps an order actor's answer to the HTTP boundary.
fn order_error(error: OrderError) -> ApiError {
    match error {
        OrderError::NotFound(id) => ApiError::NotFound(format!("order {id} not found")),
        OrderError::Transition(TransitionError::OverrideNotAllowed { from, to, allowed }) => {
            ApiError::conflict(
                "transition-not-allowed",
                "Status change not allowed",
                format!(
                    "cannot change an order from {from} to {to}; allowed: {}",
                    if allowed.is_empty() {
                        "none".to_owned()
                    } else {
                        allowed
                            .iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    }
                ),
            )
            .with("current_status", json!(from))
            .with("allowed", json!(allowed))
        }
        OrderError::Transition(other) => ApiError::conflict(
            "invalid-state",
            "Not possible in the order's current state",
            other.to_string(),
        ),
        OrderError::Parked(id, reason) => ApiError::conflict(
            "order-parked",
            "Order parked",
            format!(
                "order {id} is parked after repeated failures ({reason}); an operator must look at it"
            ),
        ),
        OrderError::AlreadyExists(id) => ApiError::conflict(
            "order-exists",
            "Order exists",
            format!("order {id} already exists"),
        ),
        OrderError::KeyTaken(_) => key_in_flight(),
        OrderError::Conflict(_)
        | OrderError::Timeout
        | OrderError::Unavailable(_)
        | OrderError::Storage(_) => {
            tracing::warn!(error = %error, "order actor could not complete the request");
            ApiError::Unavailable(
                "the order could not be processed right now; retry shortly".into(),
            )
        }
    }
}

#[utoipa::path(
    get,
    path = "/api/orders/{id}",
    operation_id = "get_order",
    tag = "orders",
    summary = "Get an order",
    description = "The order: status, items, total, each saga step's state, the failure \
        reason and the transition history.",
    params(
        ("id" = Uuid, Path, description = "Order id"),
        GetQuery,
    ),
    responses(
        (status = 200, description = "The order (with `wait_ms`: once terminal, or as it is \
            when the wait ran out)", body = OrderDetails,
            links(
                ("OverrideStatus" = (operation_id = "override_status",
                    parameters(("id" = "$response.body#/id")),
                    description = "Cancel this order (admin)")),
                ("PayOrder" = (operation_id = "pay_order",
                    parameters(("id" = "$response.body#/id")),
                    description = "Submit this order's payment (dev)")),
            )),
        (status = 400, description = "`id` is not a UUID", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = Problem,
            content_type = "application/problem+json"),
        (status = 500, description = "Unexpected failure (logged; no details)", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable; retry shortly",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
#[tracing::instrument(name = "http.get_order", skip_all, fields(order_id = %id))]
async fn get_order(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    ApiQuery(query): ApiQuery<GetQuery>,
) -> Result<Response, ApiError> {
    let Some(wait_ms) = query.wait_ms.filter(|w| *w > 0) else {
        return current_order(&app, id).await;
    };
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::bad_request(
            "Invalid query string",
            format!("wait_ms must be at most {MAX_WAIT_MS}"),
        ));
    }
    let db = &app.stores.orders;
    let actors = &app.orders;
    // The check reads only the status; the whole order is read once, at the end, and not
    // at all when the actor that finished it hands it over.
    let waited = app
        .orders
        .wait_terminal(id, Duration::from_millis(wait_ms), || async move {
            // A live actor knows the status; only an order without one is read.
            let status = match actors.live_status(id).await {
                Some(status) => Ok(Some(status)),
                None => orders::status(db, id).await,
            };
            match status {
                Ok(Some(status)) => (status.is_terminal(), Ok(true)),
                Ok(None) => (true, Ok(false)),
                Err(e) => (true, Err(e)),
            }
        })
        .await;
    match waited {
        Waited::Finished(details) => Ok(Json(details.as_ref()).into_response()),
        Waited::Checked(Ok(true)) => current_order(&app, id).await,
        Waited::Checked(Ok(false)) => Err(ApiError::NotFound(format!("order {id} not found"))),
        Waited::Checked(Err(e)) => Err(e.into()),
    }
}

async fn current_order(app: &AppState, id: Uuid) -> Result<Response, ApiError> {
    let details = orders::details(&app.stores.orders, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("order {id} not found")))?;
    Ok(Json(details).into_response())
}

/// Longest long poll.
const MAX_WAIT_MS: u64 = 60_000;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct GetQuery {
    /// Long poll: wait up to this many milliseconds for the order to reach a terminal
    /// status before answering (instead of polling). 0 or absent: answer at once.
    #[param(minimum = 0, maximum = 60000)]
    wait_ms: Option<u64>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only orders in this status.
    #[param(value_type = Option<OrderStatus>)]
    status: Option<String>,
    /// How many orders (newest first).
    #[param(minimum = 1, maximum = 500, default = 50)]
    limit: Option<u64>,
}

#[utoipa::path(
    get,
    path = "/api/orders",
    operation_id = "list_orders",
    tag = "orders",
    summary = "List orders",
    description = "Newest first, optionally only those in one status.",
    params(ListQuery),
    responses(
        (status = 200, description = "The orders", body = OrderList),
        (status = 400, description = "Unknown status, `limit` outside 1-500, or a malformed \
            query string", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Unexpected failure (logged; no details)", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "The database is unavailable; retry shortly",
            body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
async fn list_orders(
    State(app): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let status = match query.status.as_deref() {
        None => None,
        Some(s) => Some(OrderStatus::parse(s).ok_or_else(|| {
            ApiError::bad_request(
                "Invalid query string",
                format!(
                    "unknown status {s:?}; one of {}",
                    OrderStatus::ALL.map(|s| s.as_str()).join(", ")
                ),
            )
        })?),
    };
    let limit = query.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request(
            "Invalid query string",
            "limit must be between 1 and 500",
        ));
    }
    let list = orders::list(&app.stores.orders, status, limit).await?;
    Ok(Json(json!({ "orders": list })).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct StatusOverride {
    /// The target status; only `REVERSED` is ever allowed (cancel and compensate).
    #[schema(value_type = OrderStatus)]
    status: String,
    #[schema(schema_with = reason_schema)]
    reason: Option<String>,
}

fn reason_schema() -> utoipa::openapi::schema::Object {
    OVERRIDE_REASON.schema(
        "Recorded in the order's history; no control characters; absent: \"admin override\"",
        "customer called to cancel",
        true,
    )
}

#[utoipa::path(
    patch,
    path = "/api/orders/{id}/status",
    operation_id = "override_status",
    tag = "admin",
    summary = "Override an order's status (admin)",
    description = "Drives the order through the state machine: cancelling to `REVERSED` \
        triggers the matching compensation. Anything else, or any change of a terminal or \
        compensating order, is a 409 listing the `allowed` targets.",
    params(("id" = Uuid, Path, description = "Order id")),
    request_body(content = StatusOverride, content_type = "application/json"),
    security(("bearer_auth" = [])),
    responses(
        (status = 200, description = "The order after the change", body = OrderDetails),
        (status = 400, description = "`id` is not a UUID, or malformed JSON", body = Problem,
            content_type = "application/problem+json"),
        (status = 401, description = "No bearer token", body = Problem,
            content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "`Bearer`"))),
        (status = 403, description = "Wrong bearer token", body = Problem,
            content_type = "application/problem+json"),
        (status = 404, description = "No such order, or admin endpoints are disabled (no \
            `ADMIN_TOKEN`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Change not allowed from the current status \
            (`current_status`, `allowed`), or the order is parked", body = Problem,
            content_type = "application/problem+json"),
        (status = 408, description = "Body not in full within `HTTP_BODY_TIMEOUT_SECS` of the \
            request head (the connection is then closed)", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, description = "Body larger than `BODY_LIMIT_BYTES`", body = Problem,
            content_type = "application/problem+json"),
        (status = 415, description = "Body is not `Content-Type: application/json`",
            body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Unknown status, a reason over 500 characters or with \
            control characters, wrong types or unknown fields", body = Problem, content_type = "application/problem+json"),
        (status = 500, description = "Unexpected failure (logged; no details)", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "The message broker not reached yet since start-up, or \
            the database or the order actor is unavailable; retry shortly", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
#[tracing::instrument(name = "http.override_status", skip_all, fields(order_id = %id))]
async fn override_status(
    State(app): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<StatusOverride>,
) -> Result<Response, ApiError> {
    let target = OrderStatus::parse(&body.status).ok_or_else(|| {
        ApiError::validation(format!(
            "unknown status {:?}; one of {}",
            body.status,
            OrderStatus::ALL.map(|s| s.as_str()).join(", ")
        ))
    })?;
    let reason = body.reason.unwrap_or_else(|| "admin override".into());
    OVERRIDE_REASON
        .check(&reason)
        .map_err(ApiError::validation)?;
    broker_reached(&app)?;
    tracing::info!(%target, %reason, "admin status override");
    app.orders
        .apply(id, Event::AdminOverride { target, reason })
        .await
        .map_err(order_error)?;
    current_order(&app, id).await
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct PayRequest {
    /// Force the mock gateway's answer; absent: it declines at the configured rate.
    outcome: Option<PaymentOutcome>,
}

#[utoipa::path(
    post,
    path = "/api/orders/{id}/pay",
    operation_id = "pay_order",
    tag = "dev",
    summary = "Submit the payment of an order awaiting manual payment (dev only)",
    description = "Exists only with `DEV_ENDPOINTS=true`, for orders created in \
        `PAYMENT_MODE=manual` that are waiting in `STOCK_RESERVED`. The body is optional and \
        its content type is not checked; without `outcome` the mock gateway declines at \
        `PAYMENT_DECLINE_RATE`. The charge happens asynchronously.",
    params(("id" = Uuid, Path, description = "Order id")),
    request_body(content = PayRequest, content_type = "application/json",
        description = "Optional: an empty body is the same as `{}`"),
    responses(
        (status = 202, description = "Payment submitted; the order as it is now",
            body = OrderDetails),
        (status = 400, description = "`id` is not a UUID, malformed JSON or unreadable body",
            body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such order, or dev endpoints are disabled",
            body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The order is not awaiting a manual payment, or is \
            parked", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "Body not in full within `HTTP_BODY_TIMEOUT_SECS` of the \
            request head (the connection is then closed)", body = Problem,
            content_type = "application/problem+json"),
        (status = 413, description = "Body larger than `BODY_LIMIT_BYTES`", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "Unknown `outcome` or unknown fields", body = Problem,
            content_type = "application/problem+json"),
        (status = 500, description = "Unexpected failure (logged; no details)", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "The message broker not reached yet since start-up, or \
            the database or the order actor is unavailable; retry shortly", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
    )
)]
#[tracing::instrument(name = "http.pay", skip_all, fields(order_id = %id))]
async fn pay(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    RawBody(body): RawBody,
) -> Result<Response, ApiError> {
    if !app.settings.dev_endpoints {
        return Err(ApiError::NotFound(
            "dev endpoints are disabled (DEV_ENDPOINTS=false)".into(),
        ));
    }
    let request: PayRequest = if body.iter().all(u8::is_ascii_whitespace) {
        PayRequest::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            if e.is_data() {
                ApiError::validation(e.to_string())
            } else {
                ApiError::bad_request("Malformed JSON", e.to_string())
            }
        })?
    };
    broker_reached(&app)?;
    app.orders
        .apply(
            id,
            Event::PaymentSubmitted {
                forced: request.outcome,
            },
        )
        .await
        .map_err(order_error)?;
    let details = orders::details(&app.stores.orders, id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("order {id} not found")))?;
    Ok((StatusCode::ACCEPTED, Json(details)).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_existing_order_under_the_requests_own_id_is_answered_from_the_key() {
        let own = Uuid::now_v7();
        assert!(matches!(
            created_or_taken(Err(OrderError::AlreadyExists(own)), own),
            Ok(None)
        ));
        assert!(matches!(
            created_or_taken(Err(OrderError::KeyTaken(own)), own),
            Ok(None)
        ));
    }

    #[test]
    fn an_existing_order_under_another_id_stays_a_conflict() {
        let (own, other) = (Uuid::now_v7(), Uuid::now_v7());
        let Err(error) = created_or_taken(Err(OrderError::AlreadyExists(other)), own) else {
            panic!("another order's existence must not be answered as this request's");
        };
        assert_eq!(error.status(), StatusCode::CONFLICT);
    }
}
