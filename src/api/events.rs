//! `/events` and `/rejections`: the event log and the rejection log.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{Path, Query, limit, page, parse_cursor, parse_time};
use super::views::{ErrorBody, EventDetail, EventPage, RejectionPage};
use super::{ApiState, read};
use crate::event::EventStatus;
use crate::http::ApiError;
use crate::store::{EventFilter, RejectionFilter};

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventQuery {
    /// Only events of this source.
    source: Option<String>,
    /// Only events of this tenant (DreamClass).
    tenant: Option<String>,
    /// Only events of this type, e.g. `CLASS_UPDATED` or `course.student_enroll`.
    #[serde(rename = "type")]
    event_type: Option<String>,
    /// Only events with this status.
    #[param(inline)]
    status: Option<StatusParam>,
    /// Received at or after this RFC 3339 time.
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
    let events = read(&state, move |store| store.list_events(&filter)).await?;
    let (items, next_cursor) = page(events, page_size, |e| e.seq, Into::into);
    Ok(Json(EventPage { items, next_cursor }))
}

async fn find(state: &Arc<ApiState>, id: i64) -> Result<crate::store::StoredEvent, ApiError> {
    read(state, move |store| store.get_event(id))
        .await?
        .ok_or_else(|| ApiError::not_found(format!("no event with id {id}")))
}

/// One event: its raw body exactly as received, decoded, its headers and status.
#[utoipa::path(get, path = "/events/{id}", tag = "events",
    params(("id" = i64, Path, description = "The event's id (from a list)")),
    responses(
        (status = 200, description = "The event", body = EventDetail),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such event", body = ErrorBody),
    ))]
pub async fn get_event(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<i64>,
) -> Result<Json<EventDetail>, ApiError> {
    Ok(Json(find(&state, id).await?.into()))
}

/// The event's body, byte for byte as the platform sent it.
#[utoipa::path(get, path = "/events/{id}/raw", tag = "events",
    params(("id" = i64, Path, description = "The event's id")),
    responses(
        (status = 200, description = "The raw body", content_type = "application/json", body = Object),
        (status = 400, description = "The id is not a number", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such event", body = ErrorBody),
    ))]
pub async fn get_raw_event(
    State(state): State<Arc<ApiState>>,
    Path(id): Path<i64>,
) -> Result<Response, ApiError> {
    let event = find(&state, id).await?;
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
    let rejections = read(&state, move |store| store.find_rejections(&filter)).await?;
    let (items, next_cursor) = page(rejections, page_size, |r| r.id, Into::into);
    Ok(Json(RejectionPage { items, next_cursor }))
}
