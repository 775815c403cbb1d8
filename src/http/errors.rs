//! The HTTP error boundary: every failure a client can see is an [`ApiError`], rendered as
//! RFC 9457 `application/problem+json`. Internal errors are logged with their cause chain
//! and reach the client as a bare 500 without details.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400: the request is malformed (syntax, header, path or query).
    #[error("{detail}")]
    BadRequest { title: &'static str, detail: String },
    /// 401: an admin endpoint was called without a bearer token.
    #[error("missing bearer token")]
    Unauthorized,
    /// 403: the bearer token is wrong.
    #[error("invalid bearer token")]
    Forbidden,
    /// 403: authenticated, but the request is refused (e.g. a console request without its
    /// CSRF header).
    #[error("{0}")]
    Refused(String),
    /// 404: no such resource (or the endpoint is disabled).
    #[error("{0}")]
    NotFound(String),
    /// 409: the request conflicts with the current state (stock, in-flight key, transition).
    #[error("{detail}")]
    Conflict {
        kind: &'static str,
        title: &'static str,
        detail: String,
        extensions: Map<String, Value>,
    },
    /// 408: the body did not arrive in full within `HTTP_BODY_TIMEOUT_SECS`.
    #[error("the request body did not arrive within the time allowed")]
    RequestTimeout,
    /// 413: the body is larger than the configured limit.
    #[error("request body too large")]
    PayloadTooLarge,
    /// 415: the body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// 422: well-formed but semantically invalid (validation, unknown SKU, key reuse).
    #[error("{detail}")]
    Unprocessable {
        kind: &'static str,
        title: &'static str,
        detail: String,
        extensions: Map<String, Value>,
    },
    /// 503: a dependency is down; the client may retry after a moment.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a bug or an unexpected failure; logged, never detailed to the client.
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    pub fn bad_request(title: &'static str, detail: impl Into<String>) -> Self {
        ApiError::BadRequest {
            title,
            detail: detail.into(),
        }
    }

    pub fn validation(detail: impl Into<String>) -> Self {
        ApiError::Unprocessable {
            kind: "validation-error",
            title: "Invalid request",
            detail: detail.into(),
            extensions: Map::new(),
        }
    }

    pub fn unprocessable(
        kind: &'static str,
        title: &'static str,
        detail: impl Into<String>,
    ) -> Self {
        ApiError::Unprocessable {
            kind,
            title,
            detail: detail.into(),
            extensions: Map::new(),
        }
    }

    pub fn conflict(kind: &'static str, title: &'static str, detail: impl Into<String>) -> Self {
        ApiError::Conflict {
            kind,
            title,
            detail: detail.into(),
            extensions: Map::new(),
        }
    }

    /// Adds an extension member to a 409 or 422 problem.
    /// One 422 naming every problem of a request (`errors` lists them one by one).
    pub fn validation_all(problems: Vec<String>) -> Self {
        ApiError::validation(problems.join("; ")).with("errors", Value::from(problems))
    }

    /// `Ok` when `problems` is empty, else [`ApiError::validation_all`].
    pub fn unless_any(problems: Vec<String>) -> Result<(), ApiError> {
        if problems.is_empty() {
            Ok(())
        } else {
            Err(ApiError::validation_all(problems))
        }
    }

    pub fn with(mut self, key: &str, value: Value) -> Self {
        if let ApiError::Conflict { extensions, .. } | ApiError::Unprocessable { extensions, .. } =
            &mut self
        {
            extensions.insert(key.to_owned(), value);
        }
        self
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::Unauthorized => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden | ApiError::Refused(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::Conflict { .. } => StatusCode::CONFLICT,
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::Unprocessable { .. } => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(e: sea_orm::DbErr) -> Self {
        if crate::persistence::is_unavailable(&e) {
            ApiError::Unavailable("the database is unavailable; retry shortly".into())
        } else {
            ApiError::Internal(e.into())
        }
    }
}

/// Builds a problem document. `kind` is the slug of the problem type URI.
pub fn problem(status: StatusCode, kind: &str, title: &str, detail: &str) -> Map<String, Value> {
    let mut body = Map::new();
    body.insert(
        "type".into(),
        if kind == "about:blank" {
            json!("about:blank")
        } else {
            json!(format!("/problems/{kind}"))
        },
    );
    body.insert("title".into(), json!(title));
    body.insert("status".into(), json!(status.as_u16()));
    if !detail.is_empty() {
        body.insert("detail".into(), json!(detail));
    }
    body
}

pub fn problem_response(status: StatusCode, body: Map<String, Value>) -> Response {
    let mut response = (status, Value::Object(body).to_string()).into_response();
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let detail = self.to_string();
        let (kind, title, extensions) = match self {
            ApiError::BadRequest { title, .. } => ("bad-request", title, Map::new()),
            ApiError::Unauthorized => ("unauthorized", "Authentication required", Map::new()),
            ApiError::Forbidden | ApiError::Refused(_) => ("forbidden", "Not allowed", Map::new()),
            ApiError::NotFound(_) => ("not-found", "Not found", Map::new()),
            ApiError::Conflict {
                kind,
                title,
                extensions,
                ..
            }
            | ApiError::Unprocessable {
                kind,
                title,
                extensions,
                ..
            } => (kind, title, extensions),
            ApiError::RequestTimeout => ("request-timeout", "Request timeout", Map::new()),
            ApiError::PayloadTooLarge => {
                ("payload-too-large", "Request body too large", Map::new())
            }
            ApiError::UnsupportedMediaType(_) => (
                "unsupported-media-type",
                "Unsupported media type",
                Map::new(),
            ),
            ApiError::Unavailable(_) => ("service-unavailable", "Service unavailable", Map::new()),
            ApiError::Internal(error) => {
                tracing::error!(error = format!("{error:#}"), "internal error");
                let body = problem(status, "internal-error", "Internal server error", "");
                return problem_response(status, body);
            }
        };
        let mut body = problem(status, kind, title, &detail);
        body.extend(extensions);
        let mut response = problem_response(status, body);
        match status {
            StatusCode::UNAUTHORIZED => {
                response
                    .headers_mut()
                    .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            // The rest of the body may still come: the connection cannot carry another request.
            StatusCode::REQUEST_TIMEOUT => {
                response
                    .headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        response
    }
}
