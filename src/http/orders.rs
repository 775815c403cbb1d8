//! Order endpoints: create (idempotent), read, list, admin status override, dev payment.

use crate::domain::order::OrderRequest;
use crate::domain::saga::{OrderStatus, PaymentOutcome, TransitionError};
use crate::domain::text::OVERRIDE_REASON;
use crate::domain::view::OrderDetails;
use crate::http::AppState;
use crate::http::errors::ApiError;
use crate::http::extractors::{
    Admin, ApiJson, ApiPath, ApiQuery, IdempotencyKey, IdempotencyKeySchema, RawBody,
};
use crate::http::schema::{
    BearerErrors, BodyErrors, OrderList, Problem, ServerErrors, UnexpectedError,
};
use crate::orchestrator::{OrderError, PlaceError, PlaceOrder, Placed, Refusal};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use sha2::{Digest, Sha256};
use std::time::Duration;
use utoipa::openapi::path::{Parameter, ParameterBuilder, ParameterIn};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{Ref, RefOr, Required};
use utoipa::{IntoParams, ToSchema};
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
        (status = 422, description = "Invalid order (wrong types, unknown fields, validation: \
            `errors` lists every problem), unknown SKU (`sku`), total too large, or the \
            `Idempotency-Key` was first used with a different body", body = Problem,
            content_type = "application/problem+json"),
        (status = 503, description = "Too many orders in progress (`MAX_ORDERS_IN_FLIGHT`), \
            the message broker not reached yet since start-up, or the database or the order \
            actor is unavailable; retry shortly with the same `Idempotency-Key`", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
        BodyErrors,
        UnexpectedError,
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
    // Hash the parsed request, so formatting and key order do not make a "different body".
    let canonical = serde_json::to_vec(&request).map_err(|e| ApiError::Internal(e.into()))?;
    let placed = app
        .orchestrator
        .place(PlaceOrder {
            key,
            request_hash: hex::encode(Sha256::digest(&canonical)),
            order: valid,
            trace_context: traceparent(&headers),
            answer_status: StatusCode::CREATED.as_u16(),
        })
        .await
        .map_err(place_error)?;
    match placed {
        Placed::Created {
            order_id,
            status,
            body,
        } => {
            tracing::Span::current().record("order_id", tracing::field::display(order_id));
            Ok(created(status, body, Some(order_id), false))
        }
        Placed::Replayed {
            order_id,
            status,
            body,
        } => Ok(created(status, body, order_id, true)),
        Placed::Mismatch => Err(ApiError::unprocessable(
            "idempotency-key-reused",
            "Idempotency-Key reused with a different body",
            "this Idempotency-Key was first used with a different request body",
        )),
        Placed::InFlight => Err(key_in_flight()),
    }
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

/// A placement that failed, at the HTTP boundary.
fn place_error(e: PlaceError) -> ApiError {
    match e {
        PlaceError::Overloaded { limit } => ApiError::Unavailable(format!(
            "{limit} orders are in progress (MAX_ORDERS_IN_FLIGHT); retry shortly"
        )),
        PlaceError::Refused(Refusal::UnknownSku(sku)) => ApiError::unprocessable(
            "unknown-sku",
            "Unknown SKU",
            format!("SKU {sku} is not in the catalogue"),
        )
        .with("sku", json!(sku)),
        PlaceError::Refused(Refusal::Insufficient {
            sku,
            requested,
            available,
        }) => ApiError::conflict(
            "insufficient-stock",
            "Not enough stock",
            format!("requested {requested} of {sku}, only {available} available"),
        )
        .with("sku", json!(sku))
        .with("requested", json!(requested))
        .with("available", json!(available)),
        PlaceError::Refused(Refusal::TotalOverflow) => ApiError::unprocessable(
            "total-overflow",
            "Order total too large",
            "the order total does not fit in 64-bit cents",
        ),
        PlaceError::Order(e) => order_error(e),
        PlaceError::Storage(e) => e.into(),
        PlaceError::Internal(e) => ApiError::Internal(e.into()),
    }
}

pub(crate) fn order_error(error: OrderError) -> ApiError {
    match error {
        OrderError::NotFound(id) => ApiError::NotFound(format!("order {id} not found")),
        OrderError::Transition(
            ref e @ TransitionError::OverrideNotAllowed {
                from, ref allowed, ..
            },
        ) => ApiError::conflict(
            "transition-not-allowed",
            "Status change not allowed",
            e.to_string(),
        )
        .with("current_status", json!(from))
        .with("allowed", json!(allowed)),
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
        OrderError::NotParked(id) => ApiError::conflict(
            "order-not-parked",
            "Order not parked",
            format!("order {id} is not parked; only a parked order can be resumed"),
        ),
        OrderError::AlreadyExists(id) => ApiError::conflict(
            "order-exists",
            "Order exists",
            format!("order {id} already exists"),
        ),
        OrderError::KeyTaken(_) => key_in_flight(),
        OrderError::Conflict(_)
        | OrderError::NotOwner(_)
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
        ServerErrors,
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
    let details = app
        .orchestrator
        .order_when_finished(id, Duration::from_millis(wait_ms))
        .await?;
    found(details.as_deref(), id)
}

async fn current_order(app: &AppState, id: Uuid) -> Result<Response, ApiError> {
    found(app.orchestrator.order(id).await?.as_ref(), id)
}

fn found(details: Option<&OrderDetails>, id: Uuid) -> Result<Response, ApiError> {
    let details = details.ok_or_else(|| ApiError::NotFound(format!("order {id} not found")))?;
    Ok(Json(details).into_response())
}

const MAX_WAIT_MS: u64 = 60_000;
/// Most orders one `GET /api/orders` lists, and how many when `limit` is absent.
const MAX_LIST_LIMIT: u64 = 500;
const DEFAULT_LIST_LIMIT: u64 = 50;

#[derive(Debug, Default, Deserialize)]
struct GetQuery {
    wait_ms: Option<u64>,
}

// The parameters are described by hand so that their bounds come from the constants the
// handlers check (the derive's `minimum`/`maximum` take only literals).
impl IntoParams for GetQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![query_param(
            "wait_ms",
            "Long poll: wait up to this many milliseconds for the order to reach a terminal\n\
                status before answering (instead of polling). 0 or absent: answer at once.",
            count(0, MAX_WAIT_MS).build(),
        )]
    }
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    status: Option<OrderStatus>,
    limit: Option<u64>,
}

impl IntoParams for ListQuery {
    fn into_params(_: impl Fn() -> Option<ParameterIn>) -> Vec<Parameter> {
        vec![
            query_param(
                "status",
                "Only orders in this status.",
                Ref::from_schema_name(OrderStatus::name()),
            ),
            query_param(
                "limit",
                "How many orders (newest first).",
                count(1, MAX_LIST_LIMIT)
                    .default(Some(json!(DEFAULT_LIST_LIMIT)))
                    .build(),
            ),
        ]
    }
}

/// An optional query parameter.
fn query_param(name: &str, description: &str, schema: impl Into<RefOr<Schema>>) -> Parameter {
    ParameterBuilder::new()
        .name(name)
        .parameter_in(ParameterIn::Query)
        .required(Required::False)
        .description(Some(description))
        .schema(Some(schema))
        .build()
}

/// A 64-bit integer in `minimum..=maximum`.
fn count(minimum: u64, maximum: u64) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .minimum(Some(minimum))
        .maximum(Some(maximum))
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
        ServerErrors,
    )
)]
async fn list_orders(
    State(app): State<AppState>,
    ApiQuery(query): ApiQuery<ListQuery>,
) -> Result<Response, ApiError> {
    let limit = query.limit.unwrap_or(DEFAULT_LIST_LIMIT);
    if !(1..=MAX_LIST_LIMIT).contains(&limit) {
        return Err(ApiError::bad_request(
            "Invalid query string",
            format!("limit must be between 1 and {MAX_LIST_LIMIT}"),
        ));
    }
    let list = app.orchestrator.list(query.status, limit).await?;
    Ok(Json(json!({ "orders": list })).into_response())
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct StatusOverride {
    /// The target status; only `REVERSED` is ever allowed (cancel and compensate).
    // An unknown one is refused while deserializing: 422 naming the valid values.
    status: OrderStatus,
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
        (status = 404, description = "No such order, or admin endpoints are disabled (no \
            `ADMIN_TOKEN`)", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Change not allowed from the current status \
            (`current_status`, `allowed`), or the order is parked", body = Problem,
            content_type = "application/problem+json"),
        (status = 422, description = "Unknown status, a reason over 500 characters or with \
            control characters, wrong types or unknown fields", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "The message broker not reached yet since start-up, or \
            the database or the order actor is unavailable; retry shortly", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
        BearerErrors,
        BodyErrors,
        UnexpectedError,
    )
)]
#[tracing::instrument(name = "http.override_status", skip_all, fields(order_id = %id))]
async fn override_status(
    State(app): State<AppState>,
    _admin: Admin,
    ApiPath(id): ApiPath<Uuid>,
    ApiJson(body): ApiJson<StatusOverride>,
) -> Result<Response, ApiError> {
    let reason = body.reason.unwrap_or_else(|| "admin override".into());
    OVERRIDE_REASON
        .check(&reason)
        .map_err(ApiError::validation)?;
    broker_reached(&app)?;
    app.orchestrator
        .override_status(id, body.status, reason)
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
        (status = 503, description = "The message broker not reached yet since start-up, or \
            the database or the order actor is unavailable; retry shortly", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = String, description = "Seconds to wait before retrying"))),
        UnexpectedError,
    )
)]
#[tracing::instrument(name = "http.pay", skip_all, fields(order_id = %id))]
async fn pay(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<Uuid>,
    body: RawBody,
) -> Result<Response, ApiError> {
    if !app.settings.dev_endpoints {
        return Err(ApiError::NotFound(
            "dev endpoints are disabled (DEV_ENDPOINTS=false)".into(),
        ));
    }
    let request: PayRequest = body.optional_json()?;
    broker_reached(&app)?;
    app.orchestrator
        .pay(id, request.outcome)
        .await
        .map_err(order_error)?;
    let details = app
        .orchestrator
        .order(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("order {id} not found")))?;
    Ok((StatusCode::ACCEPTED, Json(details)).into_response())
}
