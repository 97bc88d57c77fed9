//! `/events` and `/rejections`: the event log and the rejection log.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{Path, Query, bad_request, limit, page, parse_cursor, parse_time};
use super::views::{ErrorBody, EventDetail, EventPage, RejectionPage};
use super::{ApiState, read};
use crate::deliver::subscription::valid_pattern;
use crate::event::EventStatus;
use crate::http::ApiError;
use crate::lookup::{self, LookupError};
use crate::store::{EventFilter, RejectionFilter};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only events of this source.
    source: Option<String>,
    /// Only events of this tenant (DreamClass).
    tenant: Option<String>,
    /// Only events of this type, e.g. `CLASS_UPDATED` or `course.student_enroll`; a
    /// pattern as subscriptions take: `CLASS_*` (every type starting with `CLASS_`)
    /// or `*`.
    #[serde(rename = "type")]
    #[param(pattern = r"^([^*]+\*?|\*)$")]
    event_type: Option<String>,
    /// Only events with this status.
    #[param(inline)]
    status: Option<StatusParam>,
    /// Received at or after this RFC 3339 time (a date alone means its midnight UTC).
    #[param(format = DateTime)]
    since: Option<String>,
    /// Received before this RFC 3339 time.
    #[param(format = DateTime)]
    until: Option<String>,
    /// From a previous page's `next_cursor`.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// An event status.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StatusParam {
    Ok,
    UnknownType,
    Quarantined,
}

impl From<StatusParam> for EventStatus {
    fn from(s: StatusParam) -> Self {
        match s {
            StatusParam::Ok => EventStatus::Ok,
            StatusParam::UnknownType => EventStatus::UnknownType,
            StatusParam::Quarantined => EventStatus::Quarantined,
        }
    }
}

/// Lists stored events, newest first.
#[utoipa::path(get, path = "/events", tag = "events", params(EventQuery), responses(
    (status = 200, description = "A page of events", body = EventPage),
    (status = 400, description = "A filter is malformed", body = ErrorBody),
    (status = 401, description = "No valid bearer token", body = ErrorBody),
))]
pub async fn list_events(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<EventQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let status = q.status.map(EventStatus::from);
    if let Some(t) = q.event_type.as_deref().filter(|t| !valid_pattern(t)) {
        return Err(bad_request(format!(
            "`type` {t:?} is not an exact type, a prefix pattern such as CLASS_* or *: a `*` only at the end"
        )));
    }
    let filter = EventFilter {
        source: q.source,
        tenant: q.tenant,
        event_type: q.event_type,
        status,
        since_ms: parse_time("since", q.since.as_deref())?,
        until_ms: parse_time("until", q.until.as_deref())?,
        before_seq: parse_cursor(q.cursor.as_deref())?,
        limit: limit(q.limit)?,
    };
    let page_size = filter.limit;
    let events = read(state.store.list_events(filter)).await?;
    let (items, next_cursor) = page(events, page_size, |e| e.seq.get(), Into::into);
    Ok(Json(EventPage { items, next_cursor }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventLookup {
    /// The source: needed when the platform id names events of several sources.
    source: Option<String>,
}

async fn find(
    state: &Arc<ApiState>,
    id: &str,
    source: Option<String>,
) -> Result<crate::store::StoredEvent, ApiError> {
    lookup::find_event(&state.store, id, source.as_deref())
        .await
        .map_err(|error| match error {
            LookupError::Invalid(_) | LookupError::Ambiguous { .. } => {
                bad_request(error.to_string())
            }
            LookupError::NotFound(message) => ApiError::not_found(message),
            LookupError::Store(error) => super::store_error(error),
        })
}

/// One event: its raw body exactly as received, decoded, its headers and status.
///
/// `{id}` is classhook's sequence number (`id` in a list), a DreamClass event id
/// (the envelope's UUID, in any letter case, also as `id:<uuid>`), or a Loopwise
/// event's `sha256:<hex>` key (`dedupe_key`). A platform id stored by several
/// sources is ambiguous: 400 naming them; add `source`.
#[utoipa::path(get, path = "/events/{id}", tag = "events",
    params(("id" = String, Path, pattern = "^([0-9]{1,18}|(id:)?([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})|sha256:[0-9a-fA-F]{64})$", description = "The event: its sequence number (`id` in a list, e.g. `42`), a DreamClass event id (UUID, or `id:<uuid>`) or a Loopwise `sha256:<hex>` key (`dedupe_key`). A platform id stored by several sources answers 400 unless `source` is given."), EventLookup),
    responses(
        (status = 200, description = "The event", body = EventDetail),
        (status = 400, description = "The id is none of the accepted forms, or names events of several sources: add `source`", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such event", body = ErrorBody),
    ))]
pub async fn get_event(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(lookup): Query<EventLookup>,
) -> Result<Json<EventDetail>, ApiError> {
    Ok(Json(find(&state, &id, lookup.source).await?.into()))
}

/// The event's body, byte for byte as the platform sent it (`{id}` as for
/// `/events/{id}`).
#[utoipa::path(get, path = "/events/{id}/raw", tag = "events",
    params(("id" = String, Path, pattern = "^([0-9]{1,18}|(id:)?([0-9a-fA-F]{32}|[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})|sha256:[0-9a-fA-F]{64})$", description = "The event: its sequence number, a DreamClass event id (UUID, or `id:<uuid>`) or a Loopwise `sha256:<hex>` key, as for `/events/{id}`"), EventLookup),
    responses(
        (status = 200, description = "The raw body", content_type = "application/json", body = Object),
        (status = 400, description = "The id is none of the accepted forms, or names events of several sources: add `source`", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such event", body = ErrorBody),
    ))]
pub async fn get_raw_event(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<String>,
    Query(lookup): Query<EventLookup>,
) -> Result<Response, ApiError> {
    let event = find(&state, &id, lookup.source).await?;
    Ok(([(header::CONTENT_TYPE, "application/json")], event.body).into_response())
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RejectionQuery {
    /// Only rejections for this source name (as requested).
    source: Option<String>,
    /// Only this reason, e.g. `signature_invalid` or `id_conflict`.
    reason: Option<String>,
    /// From a previous page's `next_cursor`.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// Lists refused requests (and id conflicts), newest first.
#[utoipa::path(get, path = "/rejections", tag = "events", params(RejectionQuery), responses(
    (status = 200, description = "A page of rejections", body = RejectionPage),
    (status = 400, description = "A filter is malformed", body = ErrorBody),
    (status = 401, description = "No valid bearer token", body = ErrorBody),
))]
pub async fn list_rejections(
    State(state): State<Arc<ApiState>>,
    Query(q): Query<RejectionQuery>,
) -> Result<Json<RejectionPage>, ApiError> {
    let filter = RejectionFilter {
        source: q.source,
        reason: q.reason,
        before_id: parse_cursor(q.cursor.as_deref())?,
        limit: limit(q.limit)?,
    };
    let page_size = filter.limit;
    let rejections = read(state.store.find_rejections(filter)).await?;
    let (items, next_cursor) = page(rejections, page_size, |r| r.id, Into::into);
    Ok(Json(RejectionPage { items, next_cursor }))
}
