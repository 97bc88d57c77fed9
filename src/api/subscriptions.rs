//! `/subscriptions` and `/deliveries`: manage subscribers, inspect deliveries and
//! their attempts, replay and backfill. Secrets are write-only.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::extract::{Json, Path, Query, bad_request, limit, page, parse_cursor, parse_time};
use super::views::ErrorBody;
use super::{ApiState, read, store_error};
use crate::clock::format_ms;
use crate::config::SecretEncoding;
use crate::deliver::guard;
use crate::deliver::ordering::Ordering;
use crate::deliver::rate::RateLimit;
use crate::deliver::signing::{self, RotationError, RotationRequest, Signing};
use crate::deliver::subscription::{ManagedBy, Subscription, SubscriptionSpec, parse_schedule};
use crate::http::ApiError;
use crate::secret::Secret;
use crate::store::sealed::SealError;
use crate::store::{
    AttemptRecord, Delivery, DeliveryFilter, DeliveryId, DeliveryState, StoreError,
};

/// A subscription as shown: secrets never appear, only whether they are set.
#[derive(Debug, Serialize, ToSchema)]
pub struct SubscriptionView {
    pub name: String,
    pub url: String,
    pub events: Vec<String>,
    pub sources: Option<Vec<String>>,
    pub tenants: Option<Vec<String>>,
    pub basic_auth_username: Option<String>,
    pub has_secret: bool,
    pub secret_encoding: String,
    /// `hmac` (`v1` signatures) or `ed25519` (`v1a`).
    pub signing: Signing,
    /// With ed25519 signing: the public key (`whpk_…`) receivers verify with.
    pub public_key: Option<String>,
    /// Keys replaced by a rotation that still sign, until they expire.
    pub previous_keys: Vec<PreviousKeyView>,
    /// The last rotation of its key (`POST …/rotate-secret`).
    pub last_rotation: Option<RotationView>,
    pub timeout_ms: u64,
    pub retry_schedule_ms: Vec<u64>,
    pub max_in_flight: u32,
    /// `none` or `entity` (one entity's deliveries one at a time, in stored order).
    pub ordering: Ordering,
    /// The most requests this subscriber gets, across all instances (`20/s`,
    /// `600/min`, `5/h`); `null`: none beyond `max_in_flight`.
    pub rate_limit: Option<String>,
    /// `config` (declared in the file; only pause/resume here) or `api`.
    pub managed_by: ManagedBy,
    pub paused: bool,
    pub paused_reason: Option<String>,
    pub consecutive_failures: i64,
    /// While on hold after repeated failures, nothing is sent before this time.
    pub on_hold_until: Option<String>,
}

/// A replaced key still in its grace period; never the key itself.
#[derive(Debug, Serialize, ToSchema)]
pub struct PreviousKeyView {
    pub expires_at: String,
    /// An ed25519 key's public key (`whpk_…`).
    pub public_key: Option<String>,
}

/// When a key was rotated and by whom: `api token #N` (its place among the
/// configured tokens), `dashboard`, or `command line`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotationView {
    pub at: String,
    pub by: String,
}

impl From<Subscription> for SubscriptionView {
    fn from(s: Subscription) -> Self {
        let public_key = s.public_key;
        let previous_keys = s
            .previous_keys
            .into_iter()
            .map(|p| PreviousKeyView {
                expires_at: format_ms(p.expires_at_ms),
                public_key: p.public_key,
            })
            .collect();
        SubscriptionView {
            name: s.spec.name,
            url: s.spec.url,
            events: s.spec.events,
            sources: s.spec.sources,
            tenants: s.spec.tenants,
            basic_auth_username: s.spec.basic_auth.map(|(u, _)| u),
            has_secret: s.spec.secret.is_some(),
            secret_encoding: s.spec.secret_encoding.as_str().to_string(),
            signing: s.spec.signing,
            public_key,
            previous_keys,
            last_rotation: s.rotated.map(|r| RotationView {
                at: format_ms(r.at_ms),
                by: r.by,
            }),
            timeout_ms: s.spec.timeout.as_millis() as u64,
            retry_schedule_ms: s
                .spec
                .retry_schedule
                .iter()
                .map(|d| d.as_millis() as u64)
                .collect(),
            max_in_flight: s.spec.max_in_flight,
            ordering: s.spec.ordering,
            rate_limit: s.spec.rate_limit.map(|r| r.to_string()),
            managed_by: s.managed_by,
            paused: s.paused,
            paused_reason: s.paused_reason,
            consecutive_failures: s.consecutive_failures,
            on_hold_until: (s.hold_until_ms > 0).then(|| format_ms(s.hold_until_ms)),
        }
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct BasicAuthInput {
    /// Without ':'.
    #[schema(min_length = 1, max_length = 200, pattern = "^[^:]*$")]
    pub username: String,
    /// Write-only.
    #[schema(max_length = 1024)]
    pub password: String,
}

/// A new subscription. Omitted fields take the defaults (10 s timeout, retries after
/// 10 s, 1 min and 10 min, 8 in flight).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionInput {
    #[schema(min_length = 1, max_length = 100, pattern = "^[A-Za-z0-9._-]{1,100}$")]
    pub name: String,
    /// http:// or https:// URL.
    #[schema(max_length = 2048)]
    pub url: String,
    /// Patterns: an exact type, a prefix ending in `*` (`CLASS_*`, `course.*`), or `*`.
    /// Kept sorted, without repeats.
    #[schema(min_items = 1, max_items = 100, value_type = Vec<PatternText>)]
    pub events: Vec<String>,
    #[schema(max_items = 100, value_type = Option<Vec<ListText>>)]
    pub sources: Option<Vec<String>>,
    #[schema(max_items = 100, value_type = Option<Vec<ListText>>)]
    pub tenants: Option<Vec<String>>,
    pub basic_auth: Option<BasicAuthInput>,
    /// Write-only.
    #[schema(max_length = 1024)]
    pub secret: Option<String>,
    /// `utf8` (default) or `base64`.
    #[schema(pattern = "^(utf8|base64)$")]
    pub secret_encoding: Option<String>,
    /// `hmac` (default: `v1` signatures under `secret`) or `ed25519` (`v1a`
    /// signatures; classhook generates the key pair, so `secret` must be absent; the
    /// public key is in the answer).
    #[schema(pattern = "^(hmac|ed25519)$")]
    pub signing: Option<String>,
    /// Default `10s`; between 1ms and 5 minutes.
    pub timeout: Option<String>,
    /// Default `["10s", "1m", "10m"]`; each step at most 7 days.
    #[schema(max_items = 20)]
    pub retry_schedule: Option<Vec<String>>,
    /// Default 8.
    #[schema(minimum = 1, maximum = 256)]
    pub max_in_flight: Option<u32>,
    /// `none` (default) or `entity`: the deliveries of one entity (source, kind,
    /// id) reach the receiver one at a time, in the order the events were stored.
    #[schema(pattern = "^(none|entity)$")]
    pub ordering: Option<String>,
    /// e.g. `20/s`, `600/min`, `1000/h`: the most requests this subscriber gets,
    /// across all instances (at most 1000/s). Default: none.
    #[schema(pattern = "^[0-9]+/(s|sec|second|m|min|minute|h|hour)$")]
    pub rate_limit: Option<String>,
}

/// An event pattern: an exact type, a prefix ending in `*`, or `*`.
#[derive(ToSchema)]
#[schema(min_length = 1, max_length = 200)]
#[allow(dead_code)]
pub struct PatternText(String);

/// A source name or a tenant.
#[derive(ToSchema)]
#[schema(min_length = 1, max_length = 200)]
#[allow(dead_code)]
pub struct ListText(String);

impl SubscriptionInput {
    fn into_spec(self, allow_private: bool) -> Result<SubscriptionSpec, ApiError> {
        let signing = self
            .signing
            .as_deref()
            .map(Signing::parse)
            .transpose()
            .map_err(|m| bad_request(format!("`signing` {m}")))?
            .unwrap_or_default();
        if signing == Signing::Ed25519 && self.secret.is_some() {
            return Err(bad_request(
                "`secret` cannot be given with signing \"ed25519\": classhook generates the key pair (its public key is in the answer)",
            ));
        }
        let mut spec = SubscriptionSpec::with_defaults(self.name);
        spec.signing = signing;
        let fields = SubscriptionFields {
            url: Some(self.url),
            events: Some(self.events),
            sources: self.sources,
            tenants: self.tenants,
            basic_auth: self.basic_auth,
            secret: self.secret,
            secret_encoding: self.secret_encoding,
            timeout: self.timeout,
            retry_schedule: self.retry_schedule,
            max_in_flight: self.max_in_flight,
            ordering: self.ordering,
            rate_limit: self.rate_limit.map(Some),
        };
        let mut spec = fields.apply(spec, allow_private).map_err(bad_request)?;
        if spec.signing == Signing::Ed25519 {
            spec.secret = Some(signing::generate_ed25519_secret());
        }
        Ok(spec)
    }
}

/// The changeable fields of a subscription; in a PATCH, each given field replaces
/// the stored one (an empty `secret` removes it).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionFields {
    /// http:// or https:// URL.
    #[schema(max_length = 2048)]
    pub url: Option<String>,
    /// Patterns: an exact type, a prefix ending in `*` (`CLASS_*`, `course.*`), or `*`.
    /// Kept sorted, without repeats.
    #[schema(min_items = 1, max_items = 100, value_type = Option<Vec<PatternText>>)]
    pub events: Option<Vec<String>>,
    #[schema(max_items = 100, value_type = Option<Vec<ListText>>)]
    pub sources: Option<Vec<String>>,
    #[schema(max_items = 100, value_type = Option<Vec<ListText>>)]
    pub tenants: Option<Vec<String>>,
    pub basic_auth: Option<BasicAuthInput>,
    /// Write-only.
    #[schema(max_length = 1024)]
    pub secret: Option<String>,
    /// `utf8` or `base64`.
    #[schema(pattern = "^(utf8|base64)$")]
    pub secret_encoding: Option<String>,
    /// e.g. `10s`; between 1ms and 5 minutes.
    pub timeout: Option<String>,
    /// e.g. `["10s", "1m", "10m"]`; each step at most 7 days.
    #[schema(max_items = 20)]
    pub retry_schedule: Option<Vec<String>>,
    #[schema(minimum = 1, maximum = 256)]
    pub max_in_flight: Option<u32>,
    /// `none` or `entity`. Deliveries already queued follow the new choice.
    #[schema(pattern = "^(none|entity)$")]
    pub ordering: Option<String>,
    /// e.g. `20/s`, `600/min`, `1000/h` (at most 1000/s); `null` removes the limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^[0-9]+/(s|sec|second|m|min|minute|h|hour)$")]
    pub rate_limit: Option<Option<String>>,
}

/// A field that may be `null` on purpose: absent is `None`, `null` is `Some(None)`.
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

impl SubscriptionFields {
    /// Applies these fields over `spec` and checks the result; the error says what is
    /// wrong, for a 400.
    fn apply(
        self,
        mut spec: SubscriptionSpec,
        allow_private: bool,
    ) -> Result<SubscriptionSpec, String> {
        if let Some(url) = self.url {
            spec.url = url;
        }
        if let Some(events) = self.events {
            spec.events = events;
        }
        if self.sources.is_some() {
            spec.sources = self.sources;
        }
        if self.tenants.is_some() {
            spec.tenants = self.tenants;
        }
        if let Some(auth) = self.basic_auth {
            spec.basic_auth = Some((auth.username, Secret::new(auth.password)));
        }
        if let Some(secret) = self.secret {
            if spec.signing == Signing::Ed25519 {
                return Err("`secret` of an ed25519 subscription is its generated key: make a new one with POST /subscriptions/{name}/rotate-secret".into());
            }
            spec.secret = (!secret.is_empty()).then(|| Secret::new(secret));
        }
        if let Some(encoding) = self.secret_encoding {
            spec.secret_encoding = match encoding.as_str() {
                "utf8" => SecretEncoding::Utf8,
                "base64" => SecretEncoding::Base64,
                _ => return Err("`secret_encoding` must be utf8 or base64".into()),
            };
        }
        if let Some(timeout) = self.timeout {
            spec.timeout =
                humantime::parse_duration(&timeout).map_err(|e| format!("`timeout`: {e}"))?;
        }
        if let Some(schedule) = self.retry_schedule {
            spec.retry_schedule =
                parse_schedule(&schedule).map_err(|e| format!("`{}` {}", e.field, e.message))?;
        }
        if let Some(max) = self.max_in_flight {
            spec.max_in_flight = max;
        }
        if let Some(ordering) = self.ordering {
            spec.ordering = Ordering::parse(&ordering).map_err(|m| format!("`ordering` {m}"))?;
        }
        if let Some(limit) = self.rate_limit {
            spec.rate_limit = limit
                .as_deref()
                .map(RateLimit::parse)
                .transpose()
                .map_err(|m| format!("`rate_limit` {m}"))?;
        }
        spec.normalize();
        spec.validate()
            .map_err(|e| format!("`{}` {}", e.field, e.message))?;
        let url = reqwest::Url::parse(&spec.url).map_err(|e| format!("url: {e}"))?;
        guard::check_literal(&url, allow_private).map_err(|m| format!("url: {m}"))?;
        signing::current_key(&spec)?;
        Ok(spec)
    }
}

fn change_error(error: StoreError) -> ApiError {
    match error {
        StoreError::NotFound(message) => ApiError::not_found(message),
        StoreError::Conflict(message) => ApiError::new(StatusCode::CONFLICT, "conflict", message),
        StoreError::Invalid(message) => bad_request(message),
        // Only a secret that looks sealed, stored without a key, is the caller's doing.
        StoreError::Secrets(error @ SealError::LooksSealed { .. }) => {
            bad_request(error.to_string())
        }
        other => store_error(other),
    }
}

async fn find(state: &Arc<ApiState>, name: String) -> Result<Subscription, ApiError> {
    read(state.store.get_subscription(&name))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no subscription named {name:?}")))
}

/// Lists subscriptions.
#[utoipa::path(get, path = "/subscriptions", tag = "delivery", responses(
    (status = 200, description = "The subscriptions", body = Vec<SubscriptionView>),
    (status = 401, description = "No valid bearer token", body = ErrorBody),
))]
pub async fn list_subscriptions(
    State(state): State<Arc<ApiState>>,
) -> Result<axum::Json<Vec<SubscriptionView>>, ApiError> {
    let all = read(state.store.list_subscriptions()).await?;
    Ok(axum::Json(all.into_iter().map(Into::into).collect()))
}

/// Creates a subscription; new events that match are delivered from now on (use
/// backfill for the history).
#[utoipa::path(post, path = "/subscriptions", tag = "delivery", request_body = SubscriptionInput, responses(
    (status = 201, description = "Created", body = SubscriptionView),
    (status = 400, description = "A field is invalid", body = ErrorBody),
    (status = 401, description = "No valid bearer token", body = ErrorBody),
    (status = 409, description = "The name is taken", body = ErrorBody),
))]
pub async fn create_subscription(
    State(state): State<Arc<ApiState>>,
    Json(input): Json<SubscriptionInput>,
) -> Result<Response, ApiError> {
    let spec = input.into_spec(state.allow_private_destinations)?;
    let created = state
        .store
        .create_subscription(spec)
        .await
        .map_err(change_error)?;
    Ok((
        StatusCode::CREATED,
        axum::Json(SubscriptionView::from(created)),
    )
        .into_response())
}

/// One subscription.
#[utoipa::path(get, path = "/subscriptions/{name}", tag = "delivery",
    params(("name" = String, Path, description = "The subscription's name")),
    responses(
        (status = 200, description = "The subscription", body = SubscriptionView),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such subscription", body = ErrorBody),
    ))]
pub async fn get_subscription(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<axum::Json<SubscriptionView>, ApiError> {
    Ok(axum::Json(find(&state, name).await?.into()))
}

/// Changes an API-managed subscription.
#[utoipa::path(patch, path = "/subscriptions/{name}", tag = "delivery", request_body = SubscriptionFields,
    params(("name" = String, Path, description = "The subscription's name")),
    responses(
        (status = 200, description = "The changed subscription", body = SubscriptionView),
        (status = 400, description = "A field is invalid", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such subscription", body = ErrorBody),
        (status = 409, description = "Declared in the config file", body = ErrorBody),
    ))]
pub async fn update_subscription(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Json(fields): Json<SubscriptionFields>,
) -> Result<axum::Json<SubscriptionView>, ApiError> {
    let allow_private = state.allow_private_destinations;
    let updated = state
        .store
        .update_subscription(
            &name,
            Box::new(move |current| fields.apply(current, allow_private)),
        )
        .await
        .map_err(change_error)?;
    Ok(axum::Json(updated.into()))
}

/// Deletes an API-managed subscription with its deliveries.
#[utoipa::path(delete, path = "/subscriptions/{name}", tag = "delivery",
    params(("name" = String, Path, description = "The subscription's name")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such subscription", body = ErrorBody),
        (status = 409, description = "Declared in the config file", body = ErrorBody),
    ))]
pub async fn delete_subscription(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state
        .store
        .delete_subscription(&name)
        .await
        .map_err(change_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Pauses a subscription: deliveries queue up and are sent after resume.
#[utoipa::path(post, path = "/subscriptions/{name}/pause", tag = "delivery",
    params(("name" = String, Path, description = "The subscription's name")),
    responses(
        (status = 200, description = "Paused", body = SubscriptionView),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such subscription", body = ErrorBody),
    ))]
pub async fn pause_subscription(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<axum::Json<SubscriptionView>, ApiError> {
    let paused = state
        .store
        .set_paused(&name, true, Some("paused through the API".into()))
        .await
        .map_err(change_error)?;
    Ok(axum::Json(paused.into()))
}

/// Resumes a paused (or held) subscription.
#[utoipa::path(post, path = "/subscriptions/{name}/resume", tag = "delivery",
    params(("name" = String, Path, description = "The subscription's name")),
    responses(
        (status = 200, description = "Resumed", body = SubscriptionView),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such subscription", body = ErrorBody),
    ))]
pub async fn resume_subscription(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
) -> Result<axum::Json<SubscriptionView>, ApiError> {
    let resumed = state
        .store
        .set_paused(&name, false, None)
        .await
        .map_err(change_error)?;
    Ok(axum::Json(resumed.into()))
}

/// A rotation of a subscription's signing key.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateInput {
    /// The new HMAC secret (write-only); absent: one is generated (`whsec_…`) and
    /// shown once in the answer. Not allowed with ed25519 signing, whose key pair
    /// classhook always generates.
    #[schema(max_length = 1024)]
    pub secret: Option<String>,
    /// How long the replaced key keeps signing: default `24h`, `0s` ends it at once,
    /// at most 7 days.
    pub grace_period: Option<String>,
    /// Switch the scheme with the rotation (`hmac` or `ed25519`); absent: keep it.
    /// The replaced key of the other scheme still signs for the grace period.
    #[schema(pattern = "^(hmac|ed25519)$")]
    pub signing: Option<String>,
}

/// A subscription after a rotation.
#[derive(Debug, Serialize, ToSchema)]
pub struct RotatedView {
    #[serde(flatten)]
    pub subscription: SubscriptionView,
    /// The generated HMAC secret, shown this once (absent when the caller gave one,
    /// and with ed25519, whose receivers need only `public_key`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// Rotates a subscription's signing key: a new key signs from now on, and the
/// replaced one keeps signing beside it for the grace period (`webhook-signature`
/// carries one entry per valid key), so receivers can switch without losing a
/// delivery. The platform-faithful signatures (DreamClass `signature`, Loopwise
/// header) carry the new key only. A config subscription's HMAC secret lives in the
/// file: change it there (409).
#[utoipa::path(post, path = "/subscriptions/{name}/rotate-secret", tag = "delivery", request_body = RotateInput,
    params(("name" = String, Path, description = "The subscription's name")),
    responses(
        (status = 200, description = "Rotated", body = RotatedView),
        (status = 400, description = "A field is invalid", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such subscription", body = ErrorBody),
        (status = 409, description = "Its secret is declared in the config file", body = ErrorBody),
    ))]
pub async fn rotate_secret(
    State(state): State<Arc<ApiState>>,
    axum::Extension(caller): axum::Extension<super::Caller>,
    Path(name): Path<String>,
    Json(input): Json<RotateInput>,
) -> Result<axum::Json<RotatedView>, ApiError> {
    let request = rotation_request(input, state.clock.now_ms(), caller.0).map_err(bad_request)?;
    let (rotated, generated) = rotate(&state.store, &name, request)
        .await
        .map_err(change_error)?;
    Ok(axum::Json(RotatedView {
        subscription: rotated.into(),
        secret: generated.map(|s| s.expose().to_string()),
    }))
}

/// A rotation as the API, the dashboard and the CLI ask for it.
pub fn rotation_request(
    input: RotateInput,
    now_ms: i64,
    by: String,
) -> Result<RotationRequest, String> {
    let grace = match input.grace_period.as_deref() {
        Some(text) => signing::parse_grace(text)?,
        None => signing::limits::DEFAULT_GRACE,
    };
    let signing = input
        .signing
        .as_deref()
        .map(Signing::parse)
        .transpose()
        .map_err(|m| format!("`signing` {m}"))?;
    if input.secret.as_deref() == Some("") {
        return Err("`secret` must not be empty (leave it out to have one generated)".into());
    }
    Ok(RotationRequest {
        secret: input.secret.map(Secret::new),
        signing,
        grace,
        now_ms,
        by,
    })
}

/// Rotates in the store; also returns the HMAC secret when it was generated (to be
/// shown once).
pub async fn rotate(
    store: &crate::store::Store,
    name: &str,
    request: RotationRequest,
) -> Result<(Subscription, Option<Secret>), StoreError> {
    let given = request.secret.is_some();
    let by = request.by.clone();
    let rotated = store
        .rotate_secret(
            name,
            Box::new(move |current| {
                signing::rotate(current, request).map_err(|e| match e {
                    RotationError::Invalid(m) => StoreError::Invalid(m),
                    RotationError::Conflict(m) => StoreError::Conflict(m),
                })
            }),
        )
        .await?;
    tracing::info!(subscription = name, by, "subscription signing key rotated");
    let generated = (!given && rotated.spec.signing == Signing::Hmac)
        .then(|| rotated.spec.secret.clone())
        .flatten();
    Ok((rotated, generated))
}

/// A time window; both ends optional, RFC 3339.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WindowInput {
    #[schema(format = DateTime)]
    pub since: Option<String>,
    #[schema(format = DateTime)]
    pub until: Option<String>,
    /// Replay only: only dead letters (default true).
    pub dead_only: Option<bool>,
}

impl WindowInput {
    fn bounds(&self) -> Result<(Option<i64>, Option<i64>), ApiError> {
        Ok((
            parse_time("since", self.since.as_deref())?,
            parse_time("until", self.until.as_deref())?,
        ))
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Queued {
    /// How many deliveries were queued.
    pub queued: u64,
}

/// Queues a subscription's dead letters again (or all its deliveries with
/// `dead_only: false`), within a window of when they were created.
#[utoipa::path(post, path = "/subscriptions/{name}/replay", tag = "delivery", request_body = WindowInput,
    params(("name" = String, Path, description = "The subscription's name")),
    responses(
        (status = 200, description = "Queued", body = Queued),
        (status = 400, description = "A time is malformed", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such subscription", body = ErrorBody),
    ))]
pub async fn replay_subscription(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Json(window): Json<WindowInput>,
) -> Result<axum::Json<Queued>, ApiError> {
    let (since, until) = window.bounds()?;
    let now = state.clock.now_ms();
    let queued = state
        .store
        .replay_subscription(&name, window.dead_only.unwrap_or(true), since, until, now)
        .await
        .map_err(change_error)?;
    Ok(axum::Json(Queued { queued }))
}

/// Queues every stored event received in the window that matches the subscription
/// and was never queued for it (a new subscriber gets the history).
#[utoipa::path(post, path = "/subscriptions/{name}/backfill", tag = "delivery", request_body = WindowInput,
    params(("name" = String, Path, description = "The subscription's name")),
    responses(
        (status = 200, description = "Queued", body = Queued),
        (status = 400, description = "A time is malformed", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such subscription", body = ErrorBody),
    ))]
pub async fn backfill_subscription(
    State(state): State<Arc<ApiState>>,
    Path(name): Path<String>,
    Json(window): Json<WindowInput>,
) -> Result<axum::Json<Queued>, ApiError> {
    let (since, until) = window.bounds()?;
    let now = state.clock.now_ms();
    let queued = state
        .store
        .backfill(&name, since, until, now)
        .await
        .map_err(change_error)?;
    Ok(axum::Json(Queued { queued }))
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryView {
    pub id: i64,
    pub subscription: String,
    /// The event (see `/events/{id}`).
    pub event_id: i64,
    /// The Standard Webhooks `webhook-id`: unique to this delivery (across databases
    /// and instances), the same for its retries and replays.
    pub webhook_id: String,
    /// `pending`, `delivered` or `dead`.
    pub state: String,
    /// How many requests were made for this delivery, over its whole life: every
    /// entry of its attempt log, including a 410 and the attempts before a replay.
    pub attempts: i64,
    pub next_attempt_at: Option<String>,
    pub created_at: String,
    pub delivered_at: Option<String>,
    pub last_error: Option<String>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        DeliveryView {
            id: d.id.get(),
            subscription: d.subscription,
            event_id: d.event_seq.get(),
            webhook_id: d.webhook_id,
            state: d.state.as_str().to_string(),
            attempts: d.attempts,
            next_attempt_at: (d.state == DeliveryState::Pending)
                .then(|| format_ms(d.next_attempt_at_ms)),
            created_at: format_ms(d.created_at_ms),
            delivered_at: d.delivered_at_ms.map(format_ms),
            last_error: d.last_error,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptView {
    pub at: String,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// The first 1 KiB of the response body.
    pub response: Option<String>,
}

impl From<AttemptRecord> for AttemptView {
    fn from(a: AttemptRecord) -> Self {
        AttemptView {
            at: format_ms(a.at_ms),
            duration_ms: a.duration_ms,
            status_code: a.status_code,
            error: a.error,
            response: a.response,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryDetail {
    #[serde(flatten)]
    pub delivery: DeliveryView,
    pub attempt_log: Vec<AttemptView>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    pub items: Vec<DeliveryView>,
    pub next_cursor: Option<String>,
}

/// A delivery state.
#[derive(Debug, Clone, Copy, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StateParam {
    Pending,
    Delivered,
    Dead,
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// Only this subscription's deliveries.
    subscription: Option<String>,
    /// Only deliveries in this state (`dead`: the dead-letter list).
    #[param(inline)]
    state: Option<StateParam>,
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Lists deliveries, newest first.
#[utoipa::path(get, path = "/deliveries", tag = "delivery", params(DeliveryQuery), responses(
    (status = 200, description = "A page of deliveries", body = DeliveryPage),
    (status = 400, description = "A filter is malformed", body = ErrorBody),
    (status = 401, description = "No valid bearer token", body = ErrorBody),
))]
pub async fn list_deliveries(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<DeliveryQuery>,
) -> Result<axum::Json<DeliveryPage>, ApiError> {
    let filter = DeliveryFilter {
        event: None,
        subscription: q.subscription,
        state: q.state.map(|s| match s {
            StateParam::Pending => DeliveryState::Pending,
            StateParam::Delivered => DeliveryState::Delivered,
            StateParam::Dead => DeliveryState::Dead,
        }),
        before_id: parse_cursor(q.cursor.as_deref())?,
        limit: limit(q.limit)?,
    };
    let page_size = filter.limit;
    let deliveries = read(state.store.list_deliveries(filter)).await?;
    let (items, next_cursor) = page(deliveries, page_size, |d| d.id.get(), Into::into);
    Ok(axum::Json(DeliveryPage { items, next_cursor }))
}

/// One delivery with every attempt.
#[utoipa::path(get, path = "/deliveries/{id}", tag = "delivery",
    params(("id" = i64, Path, description = "The delivery's id")),
    responses(
        (status = 200, description = "The delivery", body = DeliveryDetail),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such delivery", body = ErrorBody),
    ))]
pub async fn get_delivery(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<DeliveryId>,
) -> Result<axum::Json<DeliveryDetail>, ApiError> {
    let (delivery, attempts) = read(state.store.get_delivery(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no delivery with id {id}")))?;
    Ok(axum::Json(DeliveryDetail {
        delivery: delivery.into(),
        attempt_log: attempts.into_iter().map(Into::into).collect(),
    }))
}

/// Queues one delivery again, whatever its state, keeping its `webhook-id`. A
/// delivery being attempted right now is not replayed beside that attempt (409).
#[utoipa::path(post, path = "/deliveries/{id}/replay", tag = "delivery",
    params(("id" = i64, Path, description = "The delivery's id")),
    responses(
        (status = 200, description = "Queued", body = Queued),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such delivery", body = ErrorBody),
        (status = 409, description = "The delivery is being attempted right now; try again when the attempt has ended", body = ErrorBody),
    ))]
pub async fn replay_delivery(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<DeliveryId>,
) -> Result<axum::Json<Queued>, ApiError> {
    let now = state.clock.now_ms();
    state
        .store
        .replay_delivery(id, now)
        .await
        .map_err(change_error)?;
    Ok(axum::Json(Queued { queued: 1 }))
}
