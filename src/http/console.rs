//! The operator console: a page and its script and style, all in the binary (nothing is
//! fetched from anywhere), behind a login that exchanges the admin token for the session
//! cookie of [`session`]. The console reads and acts only through the admin JSON endpoints
//! and `/api/events`, like any other client.

use crate::http::AppState;
use crate::http::extractors::RawBody;
use crate::http::session;
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;

const INDEX: &str = include_str!("console/index.html");
const LOGIN: &str = include_str!("console/login.html");
const SCRIPT: &str = include_str!("console/app.js");
const STYLE: &str = include_str!("console/app.css");
const LOGIN_SCRIPT: &str = include_str!("console/login.js");

/// Only our own script and style run on the console's pages, and no other site may frame
/// them.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/login", get(login_page).post(login))
        .route("/console/logout", post(logout))
        .route("/console/assets/app.js", get(script))
        .route("/console/assets/app.css", get(style))
        .route("/console/assets/login.js", get(login_script))
}

fn page(body: &'static str) -> Response {
    let mut response = (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        body,
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

fn see_other(location: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

fn logged_in(app: &AppState, headers: &HeaderMap) -> bool {
    app.settings
        .admin_token
        .as_deref()
        .is_some_and(|token| session::authenticated(token, headers))
}

/// The console; without a session, the login page.
async fn index(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if logged_in(&app, &headers) {
        page(INDEX)
    } else {
        see_other("/console/login")
    }
}

async fn login_page(State(app): State<AppState>, headers: HeaderMap) -> Response {
    if logged_in(&app, &headers) {
        see_other("/console")
    } else {
        page(LOGIN)
    }
}

/// The login form's post: `token=<ADMIN_TOKEN>` (form-encoded). The token travels in the
/// body only, never in a URL, and is not logged.
async fn login(
    State(app): State<AppState>,
    headers: HeaderMap,
    RawBody(body): RawBody,
) -> Response {
    let Some(expected) = app.settings.admin_token.as_deref() else {
        return see_other("/console/login?disabled=1");
    };
    let presented = url::form_urlencoded::parse(&body)
        .find(|(name, _)| name == "token")
        .map(|(_, value)| value.into_owned())
        .unwrap_or_default();
    let presented = presented.trim();
    if !bool::from(presented.as_bytes().ct_eq(expected.as_bytes())) {
        tracing::warn!("console login refused: wrong token");
        metrics::counter!("console_logins_total", "outcome" => "refused").increment(1);
        return see_other("/console/login?failed=1");
    }
    let secure = headers
        .get("x-forwarded-proto")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"https"));
    let Some(cookie) = session::issue(expected, chrono::Utc::now().timestamp())
        .and_then(|value| session::set_cookie(&value, secure))
    else {
        return see_other("/console/login?failed=1");
    };
    tracing::info!("console login");
    metrics::counter!("console_logins_total", "outcome" => "ok").increment(1);
    let mut response = see_other("/console");
    response.headers_mut().insert(header::SET_COOKIE, cookie);
    response
}

async fn logout() -> Response {
    let mut response = see_other("/console/login");
    response
        .headers_mut()
        .insert(header::SET_COOKIE, session::clear_cookie());
    response
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

async fn login_script() -> Response {
    asset("text/javascript; charset=utf-8", LOGIN_SCRIPT)
}

async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}
