//! The console's session: the admin token, presented once at the login form, is exchanged
//! for a cookie that the browser sends back but scripts cannot read (HttpOnly) and other
//! sites cannot make it send (SameSite=Strict). The cookie is signed, not stored: any
//! replica with the same `ADMIN_TOKEN` accepts it, and changing the token ends every session.
//!
//! A request authenticated by the cookie that could change something (any method but
//! GET/HEAD) must also carry [`CSRF_HEADER`]: a cross-site form cannot set a header, and a
//! cross-site script cannot send one without a CORS preflight, which this service never
//! grants.

use axum::http::{HeaderMap, HeaderValue, Method, header};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The session cookie's name.
pub const COOKIE: &str = "oos_console";
/// How long a session lasts after login.
pub const LIFETIME_SECS: i64 = 8 * 60 * 60;
/// The header the console sends with every request (its value: `console`).
pub const CSRF_HEADER: &str = "x-requested-by";

type HmacSha256 = Hmac<Sha256>;

/// The signing key: derived from the admin token, so the token itself never signs.
fn key(admin_token: &str) -> [u8; 32] {
    let mut digest = Sha256::new();
    digest.update(b"order-service console session v1\0");
    digest.update(admin_token.as_bytes());
    digest.finalize().into()
}

fn mac(admin_token: &str, payload: &str) -> Option<String> {
    let mut mac = HmacSha256::new_from_slice(&key(admin_token)).ok()?;
    mac.update(payload.as_bytes());
    Some(hex::encode(mac.finalize().into_bytes()))
}

/// A new session value, valid until `now + LIFETIME_SECS`: `v1.<expiry>.<nonce>.<mac>`.
pub fn issue(admin_token: &str, now: i64) -> Option<String> {
    let nonce: [u8; 12] = rand::random();
    let payload = format!("v1.{}.{}", now + LIFETIME_SECS, hex::encode(nonce));
    let mac = mac(admin_token, &payload)?;
    Some(format!("{payload}.{mac}"))
}

/// Whether `value` is a session this token signed that has not expired at `now`.
pub fn valid(admin_token: &str, value: &str, now: i64) -> bool {
    let Some((payload, presented)) = value.rsplit_once('.') else {
        return false;
    };
    let mut parts = payload.split('.');
    let (Some("v1"), Some(expiry), Some(_nonce), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some(expected) = mac(admin_token, payload) else {
        return false;
    };
    let signed = bool::from(presented.as_bytes().ct_eq(expected.as_bytes()));
    signed && expiry.parse::<i64>().is_ok_and(|expiry| now < expiry)
}

/// The session cookie's value in the request, if any.
pub fn from_headers(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// Whether the request carries a valid session.
pub fn authenticated(admin_token: &str, headers: &HeaderMap) -> bool {
    from_headers(headers)
        .is_some_and(|value| valid(admin_token, value, chrono::Utc::now().timestamp()))
}

/// Whether a cookie-authenticated request with this method needs the CSRF header, and
/// whether it has it.
pub fn csrf_ok(method: &Method, headers: &HeaderMap) -> bool {
    if matches!(*method, Method::GET | Method::HEAD) {
        return true;
    }
    headers
        .get(CSRF_HEADER)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"console"))
}

/// `Set-Cookie` for a new session. `Secure` when the console is reached over HTTPS (said by
/// the proxy in front, `X-Forwarded-Proto`); plain-HTTP localhost keeps working without it.
pub fn set_cookie(value: &str, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={LIFETIME_SECS}{secure}"
    ))
    .ok()
}

/// `Set-Cookie` that ends the session in the browser.
pub fn clear_cookie() -> HeaderValue {
    HeaderValue::from_static("oos_console=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "an-admin-token-of-16+";

    #[test]
    fn a_session_is_valid_until_it_expires_and_only_for_its_token() {
        let now = 1_800_000_000;
        let value = issue(TOKEN, now).expect("issued");
        assert!(valid(TOKEN, &value, now));
        assert!(valid(TOKEN, &value, now + LIFETIME_SECS - 1));
        assert!(!valid(TOKEN, &value, now + LIFETIME_SECS), "expired");
        assert!(!valid("another-admin-token!!", &value, now), "other token");
    }

    #[test]
    fn a_tampered_or_malformed_session_is_refused() {
        let now = 1_800_000_000;
        let value = issue(TOKEN, now).expect("issued");
        let (payload, mac) = value.rsplit_once('.').expect("signed");
        let later = payload.replace(&(now + LIFETIME_SECS).to_string(), "9999999999");
        assert!(
            !valid(TOKEN, &format!("{later}.{mac}"), now),
            "expiry moved"
        );
        for bad in [
            "",
            "v1",
            "v1.1.2",
            "v1.x.y.z",
            "v2.1.2.3",
            &format!("{value}.x"),
        ] {
            assert!(!valid(TOKEN, bad, now), "{bad:?}");
        }
    }

    #[test]
    fn the_cookie_is_found_among_others_and_unsafe_methods_need_the_header() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; oos_console=v1.2.3.4; b=2"),
        );
        assert_eq!(from_headers(&headers), Some("v1.2.3.4"));
        assert!(csrf_ok(&Method::GET, &headers));
        assert!(!csrf_ok(&Method::POST, &headers));
        headers.insert(CSRF_HEADER, HeaderValue::from_static("console"));
        assert!(csrf_ok(&Method::PATCH, &headers));
        let cookie = set_cookie("v", false).expect("header");
        let cookie = cookie.to_str().expect("text");
        assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
        assert!(!cookie.contains("Secure"));
    }
}
