//! The stylesheet and the script, compiled into the binary. Their names carry a
//! version so they can be cached for a year: a new release changes the name.

use axum::extract::Path;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::UiError;

pub const STYLE: &str = include_str!("assets/style.css");
pub const SCRIPT: &str = include_str!("assets/app.js");
pub const ICON: &str = include_str!("assets/icon.svg");

/// The versioned names the templates link to.
pub const STYLE_PATH: &str = concat!("/ui/assets/style-", env!("CARGO_PKG_VERSION"), ".css");
pub const SCRIPT_PATH: &str = concat!("/ui/assets/app-", env!("CARGO_PKG_VERSION"), ".js");
pub const ICON_PATH: &str = concat!("/ui/assets/icon-", env!("CARGO_PKG_VERSION"), ".svg");

pub async fn serve(Path(file): Path<String>) -> Result<Response, UiError> {
    let path = format!("/ui/assets/{file}");
    let (body, kind) = match path.as_str() {
        STYLE_PATH => (STYLE, "text/css; charset=utf-8"),
        SCRIPT_PATH => (SCRIPT, "text/javascript; charset=utf-8"),
        ICON_PATH => (ICON, "image/svg+xml"),
        _ => return Err(UiError::NotFound("no such asset".into())),
    };
    Ok((
        [
            (header::CONTENT_TYPE, kind),
            (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
        ],
        body,
    )
        .into_response())
}
