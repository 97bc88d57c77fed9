//! The web dashboard under `/ui`: server-rendered pages (askama templates compiled
//! into the binary), a hand-written stylesheet and one small script for the live
//! tail. It reads and acts only through [`Store`], like the API.
//!
//! Security model: a session cookie (random id, `HttpOnly`, `SameSite=Strict`,
//! `Path=/ui`, `Secure` with `[server] https`) after signing in with an API token;
//! a CSRF token on every POST; strict headers on every answer (see [`headers`]).
//! With no API token configured the gateway only listens on loopback and the
//! dashboard is open, as the API is (the CSRF token is still required).

mod assets;
pub mod csrf;
mod deliveries;
mod entities;
mod events;
mod format;
mod login;
mod overview;
mod rejections;
pub mod session;
mod subscriptions;
mod test_event;

use std::sync::Arc;

use askama::Template;
use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Redirect, Response};
use axum::routing::{get, post};

use crate::clock::Clock;
use crate::crypto;
use crate::secret::Secret;
use crate::store::{Store, StoreError};
use session::{Current, Sessions};

/// What the dashboard's handlers share.
pub struct UiState {
    /// Becomes true when the gateway begins to shut down: live tails end.
    pub stopping: tokio::sync::watch::Receiver<bool>,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    /// `[api] tokens`; empty: the dashboard is open (loopback only).
    pub tokens: Vec<Secret>,
    /// Mark the cookie `Secure` (`[server] https`).
    pub secure_cookies: bool,
    pub sessions: Sessions,
    /// The configured sources, for the rejections' hints (their secrets never reach
    /// a page).
    pub sources: Vec<crate::config::Source>,
    /// Sends "Send test event" requests, as deliveries are sent (`Err`: why it
    /// cannot, e.g. an unusable `[delivery] proxy`).
    pub sender: Result<crate::deliver::send::Sender, String>,
}

impl UiState {
    fn open(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Whether `given` is one of the tokens (all are compared, in constant time).
    fn token_matches(&self, given: &str) -> bool {
        self.tokens.iter().fold(false, |found, token| {
            found | crypto::secrets_equal(given.trim().as_bytes(), token.expose().as_bytes())
        })
    }
}

/// Why a dashboard request failed; rendered as a small page.
#[derive(Debug, thiserror::Error)]
pub enum UiError {
    #[error(
        "the form was refused: its CSRF token is missing or wrong (reload the page and try again)"
    )]
    Csrf,
    #[error("sign in first")]
    SignedOut,
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the page could not be rendered: {0}")]
    Render(#[from] askama::Error),
}

impl UiError {
    fn status(&self) -> StatusCode {
        match self {
            UiError::Csrf | UiError::SignedOut => StatusCode::FORBIDDEN,
            UiError::NotFound(_) | UiError::Store(StoreError::NotFound(_)) => StatusCode::NOT_FOUND,
            UiError::BadRequest(_) | UiError::Store(StoreError::Invalid(_)) => {
                StatusCode::BAD_REQUEST
            }
            UiError::Conflict(_) | UiError::Store(StoreError::Conflict(_)) => StatusCode::CONFLICT,
            UiError::Store(_) | UiError::Render(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    layout: Layout,
    status: u16,
    message: String,
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::warn!(error = %self, "dashboard request failed");
        }
        let page = ErrorPage {
            layout: Layout::bare("Error"),
            status: status.as_u16(),
            message: self.to_string(),
        };
        match page.render() {
            Ok(html) => (status, Html(html)).into_response(),
            Err(_) => (status, self.to_string()).into_response(),
        }
    }
}

/// What every page's frame needs.
pub struct Layout {
    pub title: String,
    /// Which navigation entry is current (`overview`, `events`, …).
    pub nav: &'static str,
    /// For the logout form; empty on pages outside a session.
    pub csrf: String,
    /// Whether to offer "Sign out" (not when the dashboard is open).
    pub sign_out: bool,
}

impl Layout {
    fn new(
        title: impl Into<String>,
        nav: &'static str,
        current: &Current,
        state: &UiState,
    ) -> Self {
        Layout {
            title: title.into(),
            nav,
            csrf: current.csrf.clone(),
            sign_out: !state.open(),
        }
    }

    fn bare(title: &str) -> Self {
        Layout {
            title: title.into(),
            nav: "",
            csrf: String::new(),
            sign_out: false,
        }
    }
}

/// Renders a template into an HTML answer.
fn page(template: &impl Template) -> Result<Response, UiError> {
    Ok(Html(template.render()?).into_response())
}

/// A redirect after a POST, so reloading does not repeat it.
fn see_other(to: &str) -> Response {
    Redirect::to(to).into_response()
}

type Shared = Arc<UiState>;

/// The dashboard's routes, `/ui` and everything under it (merged at the root).
pub fn router(state: Shared) -> Router {
    Router::new()
        .nest("/ui", pages(state))
        // `/ui/` is not under the nest: send it where the links go.
        .route("/ui/", get(|| async { Redirect::permanent("/ui") }))
        .layer(middleware::from_fn(headers))
}

/// The routes under `/ui`, as the nest sees them (without the prefix).
fn pages(state: Shared) -> Router {
    let pages = Router::new()
        .route("/", get(overview::show))
        .route("/login", get(login::form).post(login::submit))
        .route("/logout", post(login::logout))
        .route("/events", get(events::list))
        .route("/events/tail", get(events::tail))
        .route("/events/{id}", get(events::show))
        .route("/events/{id}/raw", get(events::raw))
        .route("/subscriptions", get(subscriptions::list))
        .route("/subscriptions/{name}/pause", post(subscriptions::pause))
        .route("/subscriptions/{name}/resume", post(subscriptions::resume))
        .route("/subscriptions/{name}/test", post(test_event::send))
        .route(
            "/subscriptions/{name}/rotate-secret",
            post(subscriptions::rotate),
        )
        .route("/deliveries", get(deliveries::list))
        .route("/deliveries/{id}/replay", post(deliveries::replay))
        .route(
            "/subscriptions/{name}/replay-dead",
            post(deliveries::replay_dead),
        )
        .route("/rejections", get(rejections::list))
        .route("/entities", get(entities::kinds))
        .route("/entities/{kind}", get(entities::list))
        .route("/entities/{kind}/{id}", get(entities::show))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), guard))
        .with_state(state);
    Router::new()
        .route("/assets/{file}", get(assets::serve))
        .merge(pages)
}

/// A path with a trailing slash is the page without it; anything else is a 404.
async fn not_found(uri: axum::http::Uri) -> Response {
    match uri.path().strip_suffix('/') {
        Some(page) if !page.is_empty() => {
            Redirect::permanent(&format!("/ui{page}")).into_response()
        }
        _ => UiError::NotFound("no such page".into()).into_response(),
    }
}

/// Finds the request's session (starting one when needed), sends people who have not
/// signed in to the login form, and checks the CSRF token of every POST.
async fn guard(State(state): State<Shared>, request: Request, next: Next) -> Response {
    // Nested under `/ui`, the router sees paths without that prefix.
    let login = request.uri().path() == "/login";
    let reads = request.method() == Method::GET || request.method() == Method::HEAD;
    let mut new_cookie = None;
    let mut start = |signed_in: bool| {
        let (id, current) = state.sessions.create(signed_in);
        new_cookie = Some(id);
        current
    };
    let current = match session::id_from(request.headers()).and_then(|id| state.sessions.get(&id)) {
        Some(current) => current,
        // Open (no tokens): everyone is signed in; the session carries the CSRF token.
        None if state.open() => start(true),
        // The login form needs a session for its own CSRF token.
        None if login && reads => start(false),
        None => return sign_in_first(reads),
    };
    if !current.signed_in && !login {
        return sign_in_first(reads);
    }
    let mut request = request;
    if request.method() == Method::POST {
        request = match csrf::check(request, &current.csrf).await {
            Ok(request) => request,
            Err(error) => return error.into_response(),
        };
    }
    request.extensions_mut().insert(current);
    let mut response = next.run(request).await;
    if let Some(id) = new_cookie {
        set_cookie(&mut response, Some(&id), state.secure_cookies);
    }
    response
}

/// A page asked for without a session goes to the login form; an action is refused.
fn sign_in_first(reads: bool) -> Response {
    if reads {
        Redirect::to("/ui/login").into_response()
    } else {
        UiError::SignedOut.into_response()
    }
}

fn set_cookie(response: &mut Response, id: Option<&str>, secure: bool) {
    if let Ok(value) = HeaderValue::from_str(&session::cookie(id, secure)) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
}

/// Scripts and styles only from the gateway itself (no inline script, no inline
/// style), no framing, no form posting elsewhere.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// The headers every dashboard answer carries.
async fn headers(request: Request, next: Next) -> Response {
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        ("content-security-policy", CONTENT_SECURITY_POLICY),
        ("x-frame-options", "DENY"),
        ("referrer-policy", "same-origin"),
        ("x-content-type-options", "nosniff"),
        ("cross-origin-opener-policy", "same-origin"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    // Pages show live data and may be private: never cached. Assets set their own.
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}
