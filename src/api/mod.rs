//! The REST API under `/api/v1`: read-only views over the store, no business rules.
//! Routes are registered through `utoipa-axum`, so the OpenAPI document at
//! `/api/v1/openapi.json` is generated from the handlers and cannot drift.

mod entities;
mod events;
mod extract;
mod stats;
mod subscriptions;
pub mod views;

pub use subscriptions::{RotateInput, rotate, rotation_request};

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::get;
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::crypto;
use crate::http::ApiError;
use crate::secret::Secret;
use crate::store::{Store, StoreError};

/// What the API handlers share.
pub struct ApiState {
    pub store: Store,
    pub clock: Arc<dyn crate::clock::Clock>,
    /// Bearer tokens; empty: no token is asked for.
    pub tokens: Vec<Secret>,
    /// The configured sources and their platforms: they decide which platform's table
    /// an entity kind means (`mirror::kinds::platform_for_request`).
    pub sources: Vec<(String, crate::provider::ProviderKind)>,
    /// `[delivery] allow_private_destinations`: without it, a subscription whose URL
    /// is an internal address literal is refused (400).
    pub allow_private_destinations: bool,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "classhook",
        description = "Events received from DreamClass and Loopwise, and the entities they describe.",
    ),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(
                "bearer",
                SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)),
            );
    }
}

/// The `/api/v1` router (authenticated) and its OpenAPI document.
pub fn router(state: Arc<ApiState>) -> Router {
    let (routes, mut openapi) = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(events::list_events))
        .routes(routes!(events::get_event))
        .routes(routes!(events::get_raw_event))
        .routes(routes!(events::list_rejections))
        .routes(routes!(entities::list_kinds))
        .routes(routes!(entities::list_entities))
        .routes(routes!(entities::get_entity))
        .routes(routes!(entities::entity_history))
        .routes(routes!(stats::get_stats))
        .routes(routes!(
            subscriptions::list_subscriptions,
            subscriptions::create_subscription
        ))
        .routes(routes!(
            subscriptions::get_subscription,
            subscriptions::update_subscription,
            subscriptions::delete_subscription
        ))
        .routes(routes!(subscriptions::pause_subscription))
        .routes(routes!(subscriptions::resume_subscription))
        .routes(routes!(subscriptions::rotate_secret))
        .routes(routes!(subscriptions::replay_subscription))
        .routes(routes!(subscriptions::backfill_subscription))
        .routes(routes!(subscriptions::list_deliveries))
        .routes(routes!(subscriptions::get_delivery))
        .routes(routes!(subscriptions::replay_delivery))
        .split_for_parts();
    openapi.servers = Some(vec![utoipa::openapi::Server::new("/api/v1")]);
    let document = Arc::new(openapi.to_json().expect("the OpenAPI document serializes"));
    let authenticated = routes
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .with_state(state);
    Router::new()
        .route(
            "/openapi.json",
            get(move || {
                let document = document.clone();
                async move {
                    (
                        [(header::CONTENT_TYPE, "application/json")],
                        document.as_str().to_owned(),
                    )
                }
            }),
        )
        .merge(authenticated)
}

/// Who made an API request, as a rotation records it: the token's place among the
/// configured ones (`api token #2`: `[api] tokens` first, then `tokens_env`), never
/// the token itself; `open API` when no token is configured.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

/// Checks `Authorization: Bearer <token>` against every configured token, in
/// constant time, and tells the handlers which one it was ([`Caller`]).
async fn require_token(
    State(state): State<Arc<ApiState>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let caller = if state.tokens.is_empty() {
        "open API".to_string()
    } else {
        match bearer_index(&state.tokens, request.headers()) {
            Some(index) => format!("api token #{}", index + 1),
            None => return Err(unauthorized()),
        }
    };
    request.extensions_mut().insert(Caller(caller));
    Ok(next.run(request).await)
}

/// Whether the request carries one of `tokens` (all are compared, in constant time).
pub fn bearer_matches(tokens: &[Secret], headers: &axum::http::HeaderMap) -> bool {
    bearer_index(tokens, headers).is_some()
}

/// Which of `tokens` the request carries (every one is compared, in constant time).
fn bearer_index(tokens: &[Secret], headers: &axum::http::HeaderMap) -> Option<usize> {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })?;
    tokens
        .iter()
        .enumerate()
        .fold(None, |found, (index, token)| {
            let equal = crypto::secrets_equal(given.trim().as_bytes(), token.expose().as_bytes());
            found.or(equal.then_some(index))
        })
}

pub fn unauthorized() -> ApiError {
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "a valid bearer token is required (Authorization: Bearer <token>)",
    )
    .with_header(header::WWW_AUTHENTICATE, "Bearer")
}

/// Maps a store failure to 503 without leaking details beyond the message.
fn store_error(error: StoreError) -> ApiError {
    tracing::error!(%error, "API read failed");
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        error.to_string(),
    )
}

/// Awaits a store read, its error as the API answers it.
async fn read<T>(
    query: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, ApiError> {
    query.await.map_err(store_error)
}
