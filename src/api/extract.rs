//! Request parsing that answers with the JSON error body: query and path extractors,
//! times, cursors and page sizes.

use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::http::ApiError;

/// The default and largest page size.
pub const DEFAULT_LIMIT: u32 = 50;
pub const MAX_LIMIT: u32 = 1000;

pub fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "bad_request", message)
}

/// `axum::extract::Query` with a JSON 400 on failure.
pub struct Query<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| bad_request(e.body_text()))
    }
}

/// `axum::extract::Path` with a JSON 400 on failure.
pub struct Path<T>(pub T);

impl<T: DeserializeOwned + Send, S: Send + Sync> FromRequestParts<S> for Path<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| bad_request(e.body_text()))
    }
}

/// An RFC 3339 time as epoch milliseconds.
pub fn parse_time(name: &str, value: Option<&str>) -> Result<Option<i64>, ApiError> {
    value
        .map(|text| {
            crate::clock::parse_time(text).ok_or_else(|| {
                bad_request(format!(
                    "`{name}` must be an RFC 3339 time such as 2024-10-02T09:40:02Z, or a date such as 2024-10-02"
                ))
            })
        })
        .transpose()
}

/// The page size, checked against its bounds.
pub fn limit(value: Option<u32>) -> Result<usize, ApiError> {
    match value.unwrap_or(DEFAULT_LIMIT) {
        n @ 1..=MAX_LIMIT => Ok(n as usize),
        n => Err(bad_request(format!(
            "`limit` must be between 1 and {MAX_LIMIT}, got {n}"
        ))),
    }
}

/// Cursors are opaque to clients; inside they are a row position.
pub fn parse_cursor<Id: From<i64>>(value: Option<&str>) -> Result<Option<Id>, ApiError> {
    value
        .map(|text| {
            text.parse::<i64>()
                .ok()
                .filter(|n| *n >= 0)
                .map(Id::from)
                .ok_or_else(|| bad_request("`cursor` is not one this API handed out"))
        })
        .transpose()
}

/// The most bytes of items one list response carries: a page ends early when its
/// items would exceed it (there is always at least one), and `next_cursor` goes on
/// from there. Rows can be large (an entity's data, a rejected body's prefix), so
/// `limit` alone does not bound a response.
pub const MAX_PAGE_BYTES: usize = 4 * 1024 * 1024;

/// Turns stored rows into a page of views: at most `limit` rows (the store read
/// that many) and at most [`MAX_PAGE_BYTES`] of JSON, with the cursor for the next
/// page when this one is full by either measure.
pub fn page<T, V: Serialize>(
    rows: Vec<T>,
    limit: usize,
    position: impl Fn(&T) -> i64,
    view: impl Fn(T) -> V,
) -> (Vec<V>, Option<String>) {
    let mut items = Vec::with_capacity(rows.len());
    let mut bytes = 0;
    let mut last = None;
    let full_by_count = rows.len() == limit;
    for row in rows {
        let at = position(&row);
        let item = view(row);
        bytes += json_len(&item);
        if bytes > MAX_PAGE_BYTES && !items.is_empty() {
            return (items, last.map(|p: i64| p.to_string()));
        }
        items.push(item);
        last = Some(at);
    }
    (
        items,
        full_by_count.then(|| last.map(|p| p.to_string())).flatten(),
    )
}

/// The length of a value's JSON, without building it.
pub fn json_len<V: Serialize>(value: &V) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut count = Count(0);
    serde_json::to_writer(&mut count, value).map_or(usize::MAX, |()| count.0)
}

/// `axum::Json` with a JSON 400 on a malformed body.
pub struct Json<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> axum::extract::FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(
        request: axum::extract::Request,
        state: &S,
    ) -> Result<Self, Self::Rejection> {
        axum::Json::<T>::from_request(request, state)
            .await
            .map(|j| Json(j.0))
            .map_err(|e| bad_request(e.body_text()))
    }
}
