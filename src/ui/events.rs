//! `/ui/events`: the event log, newest first, with filters and a live tail over
//! Server-Sent Events; `/ui/events/{id}`: one event in full.

use std::convert::Infallible;
use std::time::Duration;

use askama::Template;
use axum::extract::{Extension, Path, Query, State};
use axum::http::header;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream};
use serde::Deserialize;

use super::session::Current;
use super::{Layout, Shared, UiError, format, page};
use crate::api::views::EventDetail;
use crate::clock::parse_time;
use crate::event::EventStatus;
use crate::lookup::{self, LookupError};
use crate::store::{AttemptRecord, Delivery, DeliveryFilter, EventFilter, EventSeq, EventSummary};

const PAGE_SIZE: usize = 50;
/// How often the tail looks for new events.
const TAIL_EVERY: Duration = Duration::from_secs(1);
/// A tail ends after this long; the browser's EventSource reconnects by itself, so
/// no connection outlives a shutdown's grace by much.
const TAIL_FOR: Duration = Duration::from_secs(300);

#[derive(Debug, Default, Deserialize)]
pub struct Filters {
    #[serde(default)]
    source: String,
    #[serde(default)]
    tenant: String,
    #[serde(default, rename = "type")]
    event_type: String,
    #[serde(default)]
    status: String,
    /// Received at or after (RFC 3339 or a date).
    #[serde(default)]
    since: String,
    /// Received before.
    #[serde(default)]
    until: String,
    /// Older than this sequence number (the next page).
    #[serde(default)]
    before: Option<i64>,
    /// The tail: newer than this sequence number.
    #[serde(default)]
    after: Option<i64>,
}

impl Filters {
    fn to_filter(&self) -> Result<EventFilter, UiError> {
        let text = |s: &str| (!s.trim().is_empty()).then(|| s.trim().to_string());
        let time = |name: &str, s: &str| match text(s) {
            None => Ok(None),
            Some(t) => parse_time(&t).map(Some).ok_or_else(|| {
                UiError::BadRequest(format!(
                    "{name} {t:?} is not a time: write 2026-11-24 or 2026-11-24T09:40:00Z"
                ))
            }),
        };
        let status = match text(&self.status) {
            None => None,
            Some(s) => Some(EventStatus::parse(&s).ok_or_else(|| {
                UiError::BadRequest(format!("status {s:?}: use ok, unknown_type or quarantined"))
            })?),
        };
        Ok(EventFilter {
            source: text(&self.source),
            tenant: text(&self.tenant),
            event_type: text(&self.event_type),
            status,
            since_ms: time("since", &self.since)?,
            until_ms: time("until", &self.until)?,
            before_seq: self.before.map(EventSeq),
            limit: PAGE_SIZE,
        })
    }

    /// The filters as a query string (without the cursors).
    fn query(&self) -> String {
        [
            ("source", &self.source),
            ("tenant", &self.tenant),
            ("type", &self.event_type),
            ("status", &self.status),
            ("since", &self.since),
            ("until", &self.until),
        ]
        .iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| format!("{k}={}", format::query_value(v.trim())))
        .collect::<Vec<_>>()
        .join("&")
    }
}

/// One event as a row of the list.
pub struct Row {
    pub seq: i64,
    pub received: String,
    pub source: String,
    pub tenant: String,
    pub event_type: String,
    /// The platform's id in full: the DreamClass uuid, or the Loopwise body hash.
    pub platform_id: String,
    pub status: &'static str,
    pub entity: String,
}

impl From<&EventSummary> for Row {
    fn from(e: &EventSummary) -> Self {
        Row {
            seq: e.seq.get(),
            received: format::time(e.received_at_ms),
            source: e.source.clone(),
            tenant: e.tenant.clone().unwrap_or_default(),
            event_type: e.event_type.clone(),
            platform_id: e.event_id.clone().unwrap_or_else(|| e.dedupe_key.clone()),
            status: e.status.as_str(),
            entity: match &e.entity_id {
                Some(id) => format!("{} {id} {}", e.entity_kind, e.entity_op),
                None => format!("{} {}", e.entity_kind, e.entity_op),
            },
        }
    }
}

#[derive(Template)]
#[template(path = "event_row.html")]
struct RowTemplate<'a> {
    row: &'a Row,
}

#[derive(Template)]
#[template(path = "events.html")]
struct EventsPage {
    layout: Layout,
    filters: Filters,
    rows: Vec<Row>,
    /// The tail's URL (first page only).
    tail: Option<String>,
    next: Option<String>,
}

pub async fn list(
    State(state): State<Shared>,
    Extension(current): Extension<Current>,
    Query(filters): Query<Filters>,
) -> Result<Response, UiError> {
    let events = state.store.list_events(filters.to_filter()?).await?;
    let rows: Vec<Row> = events.iter().map(Row::from).collect();
    let query = filters.query();
    let joined = |extra: String| {
        if query.is_empty() {
            extra
        } else {
            format!("{query}&{extra}")
        }
    };
    let next = (events.len() == PAGE_SIZE)
        .then(|| {
            events
                .last()
                .map(|e| joined(format!("before={}", e.seq.get())))
        })
        .flatten()
        .map(|q| format!("/ui/events?{q}"));
    let tail = filters.before.is_none().then(|| {
        let newest = events.first().map(|e| e.seq.get()).unwrap_or(0);
        format!("/ui/events/tail?{}", joined(format!("after={newest}")))
    });
    page(&EventsPage {
        layout: Layout::new("Events", "events", &current, &state),
        filters,
        rows,
        tail,
        next,
    })
}

/// New events as they are stored, each as a rendered table row (`event: row`).
pub async fn tail(
    State(state): State<Shared>,
    Query(filters): Query<Filters>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, UiError> {
    let mut filter = filters.to_filter()?;
    filter.before_seq = None;
    let after = filters.after.unwrap_or(0);
    let deadline = tokio::time::Instant::now() + TAIL_FOR;
    let stopping = state.stopping.clone();
    let stream = stream::unfold(
        (state, filter, after, Vec::<Event>::new(), stopping),
        move |(state, filter, mut after, mut ready, mut stopping)| async move {
            loop {
                if *stopping.borrow() || tokio::time::Instant::now() >= deadline {
                    return None;
                }
                if let Some(event) = ready.pop() {
                    return Some((Ok(event), (state, filter, after, ready, stopping)));
                }
                tokio::select! {
                    _ = tokio::time::sleep(TAIL_EVERY) => {}
                    // A closed channel (the server is gone) ends the tail too.
                    changed = stopping.changed() => if changed.is_err() { return None },
                }
                // Newest first; a burst larger than a page shows its newest page.
                let Ok(events) = state.store.list_events(filter.clone()).await else {
                    continue;
                };
                let fresh: Vec<&EventSummary> =
                    events.iter().filter(|e| e.seq.get() > after).collect();
                if let Some(newest) = fresh.first() {
                    after = newest.seq.get();
                }
                // `ready` is popped from the end: oldest first onto the page.
                ready = fresh
                    .iter()
                    .filter_map(|e| {
                        let row = Row::from(*e);
                        RowTemplate { row: &row }.render().ok().map(|html| {
                            Event::default()
                                .event("row")
                                .id(row.seq.to_string())
                                .data(html)
                        })
                    })
                    .collect();
                ready.reverse();
            }
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

pub struct AttemptRow {
    pub at: String,
    pub duration_ms: i64,
    pub status: String,
    pub error: String,
}

pub struct DeliveryRow {
    pub delivery: Delivery,
    pub state: &'static str,
    pub attempts: Vec<AttemptRow>,
}

#[derive(Template)]
#[template(path = "event.html")]
struct EventPage {
    layout: Layout,
    event: EventDetail,
    seq: i64,
    received: String,
    last_seen: String,
    pretty: String,
    body_len: usize,
    deliveries: Vec<DeliveryRow>,
    /// The entity's page, when the event names one.
    entity_link: String,
}

fn lookup_error(error: LookupError) -> UiError {
    match error {
        LookupError::Store(e) => UiError::Store(e),
        LookupError::NotFound(m) => UiError::NotFound(m),
        other => UiError::BadRequest(other.to_string()),
    }
}

pub async fn show(
    State(state): State<Shared>,
    Extension(current): Extension<Current>,
    Path(id): Path<String>,
) -> Result<Response, UiError> {
    let stored = lookup::find_event(&state.store, &id, None)
        .await
        .map_err(lookup_error)?;
    let seq = stored.summary.seq;
    let (received, last_seen) = (
        format::time(stored.summary.received_at_ms),
        format::time(stored.summary.last_seen_at_ms),
    );
    let body_len = stored.body.len();
    let summary = &stored.summary;
    let entity_link = summary
        .entity_id
        .as_ref()
        .map(|id| {
            let mut link = format!(
                "/ui/entities/{}/{}?source={}&platform={}",
                format::path_segment(&summary.entity_kind),
                format::path_segment(id),
                format::query_value(&summary.source),
                summary.provider.as_str()
            );
            if let Some(tenant) = &summary.tenant {
                link.push_str(&format!("&tenant={}", format::query_value(tenant)));
            }
            link
        })
        .unwrap_or_default();
    let event = EventDetail::from(stored);
    let pretty = if event.body.is_null() {
        event.raw_body.clone()
    } else {
        serde_json::to_string_pretty(&event.body).unwrap_or_else(|_| event.raw_body.clone())
    };
    let listed = state
        .store
        .list_deliveries(DeliveryFilter {
            event: Some(seq),
            limit: 100,
            ..DeliveryFilter::default()
        })
        .await?;
    let mut deliveries = Vec::with_capacity(listed.len());
    for delivery in listed {
        let attempts = match state.store.get_delivery(delivery.id).await? {
            Some((_, attempts)) => attempts.into_iter().map(attempt_row).collect(),
            None => Vec::new(),
        };
        deliveries.push(DeliveryRow {
            state: delivery.state.as_str(),
            delivery,
            attempts,
        });
    }
    page(&EventPage {
        layout: Layout::new(format!("Event {}", seq.get()), "events", &current, &state),
        seq: seq.get(),
        event,
        received,
        last_seen,
        pretty,
        body_len,
        deliveries,
        entity_link,
    })
}

pub fn attempt_row(a: AttemptRecord) -> AttemptRow {
    AttemptRow {
        at: format::time(a.at_ms),
        duration_ms: a.duration_ms,
        status: a
            .status_code
            .map(|c| c.to_string())
            .unwrap_or_else(|| "no answer".into()),
        error: a.error.unwrap_or_default(),
    }
}

/// The body exactly as received, as a download.
pub async fn raw(State(state): State<Shared>, Path(id): Path<String>) -> Result<Response, UiError> {
    let stored = lookup::find_event(&state.store, &id, None)
        .await
        .map_err(lookup_error)?;
    let name = format!(
        "attachment; filename=\"event-{}.json\"",
        stored.summary.seq.get()
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_DISPOSITION, name),
        ],
        stored.body,
    )
        .into_response())
}
