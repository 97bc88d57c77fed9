//! `/entities`: the mirror. Typed kinds can be filtered on their documented fields.

use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use serde::Deserialize;
use utoipa::IntoParams;

use super::extract::{
    MAX_PAGE_BYTES, Path, Query, bad_request, json_len, limit, page, parse_cursor,
};
use super::views::{EntityHistory, EntityPage, EntityView, ErrorBody, EventView, KindView};
use super::{ApiState, read};
use crate::http::ApiError;
use crate::mirror::kinds::{self, platform_for_request, resolve};
use crate::mirror::{FieldType, FieldValue};
use crate::provider::ProviderKind;
use crate::store::{Entity, EntityFilter};

/// Lists the kinds the mirror holds per platform, with counts and the filters each
/// one takes. The same kind name can appear twice, once per platform (Loopwise
/// `payment` is typed, DreamClass `PAYMENT` generic).
#[utoipa::path(get, path = "/entities", tag = "entities", responses(
    (status = 200, description = "The kinds", body = Vec<KindView>),
    (status = 401, description = "No valid bearer token", body = ErrorBody),
))]
pub async fn list_kinds(
    State(state): State<Arc<ApiState>>,
) -> Result<Json<Vec<KindView>>, ApiError> {
    let counts = read(state.store.mirror_counts()).await?;
    Ok(Json(counts.into_iter().map(Into::into).collect()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(non_snake_case)]
pub struct EntityQuery {
    /// Only entities of this source.
    source: Option<String>,
    /// Only entities of this tenant (DreamClass).
    tenant: Option<String>,
    /// Include deleted entities (tombstones); default false.
    include_deleted: Option<bool>,
    /// From a previous page's `next_cursor`.
    #[param(pattern = "^[0-9]{1,18}$")]
    cursor: Option<String>,
    /// Page size (default 50).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// class only: its code.
    code: Option<String>,
    /// student_period only: active or not.
    active: Option<bool>,
    /// student_period only: the student's id.
    studentId: Option<i64>,
    /// attendance only: the day.
    #[param(format = Date)]
    date: Option<String>,
    /// attendance only: the class id.
    classId: Option<i64>,
    /// attendance only: the course id.
    courseId: Option<i64>,
    /// attendance only: the student period id.
    studentPeriodId: Option<i64>,
    /// course or enrollment only: its state.
    state: Option<String>,
    /// course only: its slug.
    slug: Option<String>,
    /// enrollment only: the course id.
    course_id: Option<String>,
    /// enrollment or payment (Loopwise) only: the user id.
    user_id: Option<String>,
    /// enrollment or payment (Loopwise) only: the user's email.
    user_email: Option<String>,
    /// payment (Loopwise) only: paid, refunding, refunded, failed, …
    payment_state: Option<String>,
    /// payment (Loopwise) only: its trade number.
    trade_no: Option<String>,
    /// user (Loopwise) only: the email.
    email: Option<String>,
}

impl EntityQuery {
    /// The field filters as text, by parameter name (typed ones already checked by serde).
    fn field_filters(&self) -> [(&'static str, Option<String>); 15] {
        let text = |v: Option<&String>| v.cloned();
        let number = |v: Option<i64>| v.map(|n| n.to_string());
        [
            ("code", text(self.code.as_ref())),
            ("active", self.active.map(|b| b.to_string())),
            ("studentId", number(self.studentId)),
            ("date", text(self.date.as_ref())),
            ("classId", number(self.classId)),
            ("courseId", number(self.courseId)),
            ("studentPeriodId", number(self.studentPeriodId)),
            ("state", text(self.state.as_ref())),
            ("slug", text(self.slug.as_ref())),
            ("course_id", text(self.course_id.as_ref())),
            ("user_id", text(self.user_id.as_ref())),
            ("user_email", text(self.user_email.as_ref())),
            ("payment_state", text(self.payment_state.as_ref())),
            ("trade_no", text(self.trade_no.as_ref())),
            ("email", text(self.email.as_ref())),
        ]
    }
}

/// The parameters `/entities/{kind}` takes for this kind: the common ones and the
/// kind's filters.
fn valid_parameters(provider: Option<ProviderKind>, kind: &str) -> Vec<&'static str> {
    let mut valid = kinds::LIST_PARAMETERS.to_vec();
    if let Some(spec) = resolve(provider, kind) {
        valid.extend(spec.fields.iter().filter_map(|f| f.filter));
    }
    valid
}

/// Refuses a query parameter the kind does not take (a misspelt filter would
/// otherwise be ignored, and the answer silently wrong).
fn known_parameters(
    provider: Option<ProviderKind>,
    kind: &str,
    raw_query: Option<&str>,
) -> Result<(), ApiError> {
    let valid = valid_parameters(provider, kind);
    for (name, _) in url::form_urlencoded::parse(raw_query.unwrap_or("").as_bytes()) {
        if !valid.contains(&name.as_ref()) {
            return Err(bad_request(format!(
                "`{name}` is not a parameter of /entities/{kind}; it takes: {}",
                valid.join(", ")
            )));
        }
    }
    Ok(())
}

/// Parses the field filters that apply to `kind` of `provider`; any other is a 400.
fn field_filters(
    provider: Option<ProviderKind>,
    kind: &str,
    q: &EntityQuery,
) -> Result<Vec<(&'static str, FieldValue)>, ApiError> {
    let spec = resolve(provider, kind);
    let mut filters = Vec::new();
    for (name, value) in q.field_filters() {
        let Some(value) = value else { continue };
        let Some(field) = spec.and_then(|s| s.filter_field(name)) else {
            return Err(bad_request(format!(
                "`{name}` is not a filter of kind {kind:?}"
            )));
        };
        let parsed = match field.ty {
            FieldType::Integer => value
                .parse()
                .map(FieldValue::Integer)
                .map_err(|_| bad_request(format!("`{name}` must be an integer")))?,
            FieldType::Bool => match value.as_str() {
                "true" => FieldValue::Bool(true),
                "false" => FieldValue::Bool(false),
                _ => return Err(bad_request(format!("`{name}` must be true or false"))),
            },
            FieldType::Date => {
                chrono::NaiveDate::parse_from_str(&value, "%Y-%m-%d")
                    .map_err(|_| bad_request(format!("`{name}` must be a date YYYY-MM-DD")))?;
                FieldValue::Text(value)
            }
            // No filter is declared on numbers or JSON; were one added, it would
            // compare text.
            FieldType::Text | FieldType::DateTime | FieldType::Number | FieldType::Json => {
                FieldValue::Text(value)
            }
        };
        filters.push((field.column, parsed));
    }
    Ok(filters)
}

/// Lists the mirrored entities of one kind, in the order they first appeared.
///
/// A kind name means one platform's table: with `source`, that source's platform;
/// without, the platform of the configured sources, or, when both platforms are
/// configured, the one with a typed table for the kind (Loopwise `payment`; add
/// `source` for DreamClass payments).
#[utoipa::path(get, path = "/entities/{kind}", tag = "entities",
    params(("kind" = String, Path, description = "e.g. class, student_period, attendance, course, enrollment, payment, user; an undocumented kind once the mirror holds it (see GET /entities)"), EntityQuery),
    responses(
        (status = 200, description = "A page of entities", body = EntityPage),
        (status = 400, description = "A filter is malformed, or a parameter is not one this kind takes (the message lists those it takes)", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such kind: neither documented (typed kinds and DreamClass families such as `period`, listed even when empty) nor present in the mirror", body = ErrorBody),
    ))]
pub async fn list_entities(
    State(state): State<Arc<ApiState>>,
    Path(kind): Path<String>,
    RawQuery(raw_query): RawQuery,
    Query(q): Query<EntityQuery>,
) -> Result<Json<EntityPage>, ApiError> {
    let provider = platform_for_request(&kind, q.source.as_deref(), &state.sources);
    known_parameters(provider, &kind, raw_query.as_deref())?;
    if !kinds::documented(&kind) {
        let k = kind.clone();
        let counts = read(state.store.mirror_counts()).await?;
        if !counts.iter().any(|c| c.kind == k) {
            return Err(ApiError::not_found(format!(
                "no entity kind {kind:?}: see GET /entities for the kinds the mirror holds"
            )));
        }
    }
    let filter = EntityFilter {
        fields: field_filters(provider, &kind, &q)?,
        provider,
        kind,
        source: q.source,
        tenant: q.tenant,
        include_deleted: q.include_deleted.unwrap_or(false),
        since_version_ms: None,
        after: parse_cursor(q.cursor.as_deref())?,
        limit: limit(q.limit)?,
    };
    let page_size = filter.limit;
    let entities = read(state.store.list_entities(filter)).await?;
    let (items, next_cursor) = page(entities, page_size, |e| e.position, Into::into);
    Ok(Json(EntityPage { items, next_cursor }))
}

#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EntityKey {
    /// The source, needed when several sources hold the same id.
    source: Option<String>,
    /// The tenant, needed when several tenants of a source hold the same id.
    tenant: Option<String>,
}

async fn find_one(
    state: &Arc<ApiState>,
    kind: String,
    id: String,
    key: EntityKey,
) -> Result<Entity, ApiError> {
    let provider = platform_for_request(&kind, key.source.as_deref(), &state.sources);
    let mut found = read(state.store.find_entities(
        provider,
        &kind,
        &id,
        key.source.as_deref(),
        key.tenant.as_deref(),
    ))
    .await?;
    match found.len() {
        0 => Err(ApiError::not_found(format!("no {kind} with id {id:?}"))),
        1 => Ok(found.remove(0)),
        _ => Err(bad_request(format!(
            "{} entities of kind {kind:?} have id {id:?}; add `source` (and `tenant`) to choose one",
            found.len()
        ))),
    }
}

/// One mirrored entity.
#[utoipa::path(get, path = "/entities/{kind}/{id}", tag = "entities",
    params(("kind" = String, Path, description = "The entity kind"), ("id" = String, Path, description = "The entity's id"), EntityKey),
    responses(
        (status = 200, description = "The entity", body = EntityView),
        (status = 400, description = "The id is ambiguous: add source/tenant", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such entity", body = ErrorBody),
    ))]
pub async fn get_entity(
    State(state): State<Arc<ApiState>>,
    Path((kind, id)): Path<(String, String)>,
    Query(key): Query<EntityKey>,
) -> Result<Json<EntityView>, ApiError> {
    Ok(Json(find_one(&state, kind, id, key).await?.into()))
}

/// The most events a history shows (the newest ones).
const MAX_HISTORY: usize = 1000;

/// An entity and every event that touched it, in version order, with what each did
/// (the newest 1,000, and at most about 4 MiB of them; `truncated` says when older
/// ones were left out: list them with `/events`).
#[utoipa::path(get, path = "/entities/{kind}/{id}/history", tag = "entities",
    params(("kind" = String, Path, description = "The entity kind"), ("id" = String, Path, description = "The entity's id"), EntityKey),
    responses(
        (status = 200, description = "The entity and its events", body = EntityHistory),
        (status = 400, description = "The id is ambiguous: add source/tenant", body = ErrorBody),
        (status = 401, description = "No valid bearer token", body = ErrorBody),
        (status = 404, description = "No such entity", body = ErrorBody),
    ))]
pub async fn entity_history(
    State(state): State<Arc<ApiState>>,
    Path((kind, id)): Path<(String, String)>,
    Query(key): Query<EntityKey>,
) -> Result<Json<EntityHistory>, ApiError> {
    let entity = find_one(&state, kind, id, key).await?;
    let mut events = read(state.store.entity_history(
        &entity.kind,
        &entity.id,
        &entity.source,
        entity.tenant.as_deref(),
        MAX_HISTORY + 1,
    ))
    .await?;
    let mut truncated = events.len() > MAX_HISTORY;
    if truncated {
        events.remove(0);
    }
    // Keep the newest events that fit the byte budget.
    let mut views: Vec<EventView> = Vec::with_capacity(events.len());
    let mut bytes = 0;
    for event in events.into_iter().rev() {
        let view = EventView::from(event);
        bytes += json_len(&view);
        if bytes > MAX_PAGE_BYTES && !views.is_empty() {
            truncated = true;
            break;
        }
        views.push(view);
    }
    views.reverse();
    Ok(Json(EntityHistory {
        entity: entity.into(),
        events: views,
        truncated,
    }))
}
