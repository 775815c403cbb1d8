//! Extractors that turn axum's rejections into problem+json [`ApiError`]s, plus the admin
//! bearer-token check and the `Idempotency-Key` header.

use crate::domain::text::{SKU_RULE, valid_sku};
use crate::http::edge::is_body_timeout;
use crate::http::errors::ApiError;
use crate::http::session;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{HeaderMap, StatusCode, header, request::Parts};
use serde::de::DeserializeOwned;
use std::borrow::Cow;
use subtle::ConstantTimeEq;
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};

/// JSON body; malformed JSON is 400, wrong types or unknown fields 422, a body over the
/// limit 413, a missing `Content-Type: application/json` 415, a body too slow to arrive 408.
pub struct ApiJson<T>(pub T);

impl<S, T> FromRequest<S> for ApiJson<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(value)) => Ok(ApiJson(value)),
            Err(rejection) => Err(json_rejection(rejection)),
        }
    }
}

fn json_rejection(rejection: JsonRejection) -> ApiError {
    match rejection {
        JsonRejection::JsonDataError(e) => ApiError::validation(e.body_text()),
        JsonRejection::JsonSyntaxError(e) => ApiError::bad_request("Malformed JSON", e.body_text()),
        JsonRejection::MissingJsonContentType(_) => ApiError::UnsupportedMediaType(
            "expected a body with Content-Type: application/json".into(),
        ),
        other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => ApiError::PayloadTooLarge,
        other if is_body_timeout(&other) => ApiError::RequestTimeout,
        other => ApiError::bad_request("Unreadable body", other.body_text()),
    }
}

/// Path parameters; a malformed one (e.g. a bad UUID) is 400.
pub struct ApiPath<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiPath<T>
where
    T: DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Path(v)| ApiPath(v))
            .map_err(|e: PathRejection| {
                ApiError::bad_request("Invalid path parameter", e.body_text())
            })
    }
}

/// Query string; a malformed one is 400.
pub struct ApiQuery<T>(pub T);

impl<S, T> FromRequestParts<S> for ApiQuery<T>
where
    T: DeserializeOwned,
    S: Send + Sync,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|axum::extract::Query(v)| ApiQuery(v))
            .map_err(|e: QueryRejection| {
                ApiError::bad_request("Invalid query string", e.body_text())
            })
    }
}

/// A request body read as raw bytes; a body over the limit is 413 problem+json and one too
/// slow to arrive 408, like everywhere else.
pub struct RawBody(pub axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for RawBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        axum::body::Bytes::from_request(req, state)
            .await
            .map(RawBody)
            .map_err(|e| {
                if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge
                } else if is_body_timeout(&e) {
                    ApiError::RequestTimeout
                } else {
                    ApiError::bad_request("Unreadable body", e.body_text())
                }
            })
    }
}

impl RawBody {
    /// The body as JSON where it may be left out: empty (or only white space) is
    /// `T::default()`; malformed JSON is 400, wrong types or unknown fields 422. The content
    /// type is not checked.
    pub fn optional_json<T: DeserializeOwned + Default>(&self) -> Result<T, ApiError> {
        if self.0.iter().all(u8::is_ascii_whitespace) {
            return Ok(T::default());
        }
        serde_json::from_slice(&self.0).map_err(|e| {
            if e.is_data() {
                ApiError::validation(e.to_string())
            } else {
                ApiError::bad_request("Malformed JSON", e.to_string())
            }
        })
    }
}

/// Proof that the request carries the admin token, or the console's session made from it.
/// As an extractor it runs before the body is read, so an unauthenticated caller learns
/// nothing about the body format.
pub struct Admin;

impl FromRequestParts<crate::http::AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &crate::http::AppState,
    ) -> Result<Self, Self::Rejection> {
        let configured = state.settings.admin_token.as_deref();
        require_admin_or_session(configured, &parts.method, &parts.headers).map(|()| Admin)
    }
}

/// [`require_admin`], or else a valid console session (which needs its CSRF header on any
/// request that could change something).
pub fn require_admin_or_session(
    configured: Option<&str>,
    method: &axum::http::Method,
    headers: &HeaderMap,
) -> Result<(), ApiError> {
    if let Some(token) = configured
        && !headers.contains_key(header::AUTHORIZATION)
        && session::authenticated(token, headers)
    {
        return if session::csrf_ok(method, headers) {
            Ok(())
        } else {
            Err(ApiError::Refused(format!(
                "a console request that changes something needs the {} header",
                session::CSRF_HEADER
            )))
        };
    }
    require_admin(configured, headers)
}

/// Checks `Authorization: Bearer <token>` against the configured admin token in constant
/// time. The scheme is case-insensitive (RFC 9110 §11.1), so `bearer` works too. No token
/// configured: the admin endpoints do not exist (404).
pub fn require_admin(configured: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = configured else {
        return Err(ApiError::NotFound(
            "admin endpoints are disabled (no ADMIN_TOKEN configured)".into(),
        ));
    };
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Err(ApiError::Unauthorized);
    };
    let presented = value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim_start_matches(' '))
        .ok_or(ApiError::Unauthorized)?;
    if bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        Ok(())
    } else {
        Err(ApiError::Forbidden)
    }
}

pub const IDEMPOTENCY_KEY: &str = "idempotency-key";
/// Most characters in the `Idempotency-Key` header, quotes included.
pub const MAX_KEY_LEN: usize = 255;
/// The header as sent: visible ASCII, bare or in one pair of double quotes (the IETF draft's
/// structured-field string), and then the key is what is between them.
pub const IDEMPOTENCY_KEY_PATTERN: &str = r#"^(?:[!#-~][!-~]*|"[!-~]+")$"#;

/// The `Idempotency-Key` header as an extractor: it runs before the body is read, so a
/// request without a key is a 400 whatever its body.
pub struct IdempotencyKey(pub String);

impl<S: Send + Sync> FromRequestParts<S> for IdempotencyKey {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        idempotency_key(&parts.headers).map(IdempotencyKey)
    }
}

/// The `Idempotency-Key` header: required, [`IDEMPOTENCY_KEY_PATTERN`], at most
/// [`MAX_KEY_LEN`] characters.
pub fn idempotency_key(headers: &HeaderMap) -> Result<String, ApiError> {
    let value = headers.get(IDEMPOTENCY_KEY).ok_or_else(|| {
        ApiError::bad_request(
            "Missing Idempotency-Key",
            "POST /api/orders requires an Idempotency-Key header (e.g. a UUID)",
        )
    })?;
    let invalid = || {
        ApiError::bad_request(
            "Invalid Idempotency-Key",
            format!(
                "must be 1-{MAX_KEY_LEN} visible ASCII characters, optionally in double quotes"
            ),
        )
    };
    let raw = value.to_str().map_err(|_| invalid())?;
    let key = match raw.strip_prefix('"') {
        Some(quoted) => quoted.strip_suffix('"').unwrap_or_default(),
        None => raw,
    };
    if key.is_empty() || raw.len() > MAX_KEY_LEN || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid());
    }
    Ok(key.to_owned())
}

/// The schema of the `Idempotency-Key` header (a named component: `IdempotencyKey`).
pub struct IdempotencyKeySchema;

impl utoipa::PartialSchema for IdempotencyKeySchema {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .min_length(Some(1))
            .max_length(Some(MAX_KEY_LEN))
            .pattern(Some(IDEMPOTENCY_KEY_PATTERN))
            .examples(["8e0b4b52-5bb6-4a1e-9b55-1a0f3c0f6d7e"])
            .into()
    }
}

impl utoipa::ToSchema for IdempotencyKeySchema {
    fn name() -> Cow<'static, str> {
        "IdempotencyKey".into()
    }
}

/// The `{sku}` path parameter, checked against the SKU rule: one that breaks it names no
/// SKU that could exist, and is refused (400) before any database sees it.
pub struct SkuPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for SkuPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let ApiPath(sku) = ApiPath::<String>::from_request_parts(parts, state).await?;
        if !valid_sku(&sku) {
            return Err(ApiError::bad_request(
                "Invalid path parameter",
                format!("the SKU must be {SKU_RULE}"),
            ));
        }
        Ok(SkuPath(sku))
    }
}
