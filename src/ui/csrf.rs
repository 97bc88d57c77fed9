//! CSRF: every POST carries its session's token, in the form field `csrf_token` or
//! the `X-CSRF-Token` header, compared in constant time. `SameSite=Strict` already
//! keeps the cookie off cross-site requests; the token also covers a same-site
//! origin (another app on the same host) and browsers without SameSite.

use axum::body::Body;
use axum::extract::Request;

use super::UiError;
use crate::crypto;

/// The form field holding the token.
pub const FIELD: &str = "csrf_token";
/// The header that may hold it instead (for scripts).
pub const HEADER: &str = "x-csrf-token";

/// The dashboard's forms are small; a larger body is not one of them.
const MAX_FORM_BYTES: usize = 64 * 1024;

/// Checks the token of a POST against `expected`, and gives the request back whole.
pub async fn check(request: Request, expected: &str) -> Result<Request, UiError> {
    if let Some(given) = request.headers().get(HEADER) {
        return if crypto::secrets_equal(given.as_bytes(), expected.as_bytes()) {
            Ok(request)
        } else {
            Err(UiError::Csrf)
        };
    }
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_FORM_BYTES)
        .await
        .map_err(|_| UiError::Csrf)?;
    match field(&bytes, FIELD) {
        Some(given) if crypto::secrets_equal(given.as_bytes(), expected.as_bytes()) => {
            Ok(Request::from_parts(parts, Body::from(bytes)))
        }
        _ => Err(UiError::Csrf),
    }
}

/// The first value of `name` in a URL-encoded form.
fn field(form: &[u8], name: &str) -> Option<String> {
    url::form_urlencoded::parse(form)
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_post_needs_the_session_token() {
        let post = |body: &'static str| {
            Request::post("/ui/x")
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(body))
                .unwrap()
        };
        assert!(check(post("a=1&csrf_token=tok"), "tok").await.is_ok());
        assert!(check(post("a=1&csrf_token=other"), "tok").await.is_err());
        assert!(check(post("a=1"), "tok").await.is_err());
        let header = Request::post("/ui/x")
            .header(HEADER, "tok")
            .body(Body::empty())
            .unwrap();
        assert!(check(header, "tok").await.is_ok());
    }
}
