//! What the API (and `export`) return: JSON views of stored rows, with their OpenAPI
//! schemas derived from the same types.

use base64::Engine;
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::clock::format_ms;
use crate::store::{Entity, EventSummary, KindCount, Rejection, StatsRow, StoredEvent};

/// Which entity an event is about.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntityRefView {
    /// `class`, `student_period`, `attendance`, `course`, `enrollment`, `payment`, …
    pub kind: String,
    pub id: Option<String>,
    /// `created`, `updated`, `deleted`, or the platform's own verb.
    pub op: String,
}

/// A stored event, without its body.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView {
    /// classhook's id for the event (its position in the log).
    pub id: i64,
    pub source: String,
    /// `dreamclass` or `loopwise`.
    pub provider: String,
    pub tenant: Option<String>,
    #[serde(rename = "type")]
    pub event_type: String,
    /// The platform's event id (DreamClass `id`); Loopwise sends none.
    pub event_id: Option<String>,
    /// What recognises a retry: DreamClass `id:<uuid>`; Loopwise `sha256:<hex>` of the
    /// body's canonical JSON form (events stored before that rule: of the raw body).
    pub dedupe_key: String,
    pub entity: EntityRefView,
    /// The entity version this event carries, epoch milliseconds.
    pub version_ms: i64,
    /// RFC 3339.
    pub received_at: String,
    /// `ok`, `unknown_type` or `quarantined`.
    pub status: String,
    pub status_reason: Option<String>,
    /// How many times the platform delivered it (retries included).
    pub times_seen: i64,
    pub last_seen_at: String,
    /// Deliveries of the same id with a different JSON value (kept in the rejection log).
    pub conflicts: i64,
    /// What it did to the mirror: `applied`, `tombstoned`, `stale`, `blocked`, or null.
    pub mirror_effect: Option<String>,
}

impl From<EventSummary> for EventView {
    fn from(e: EventSummary) -> Self {
        EventView {
            id: e.seq.get(),
            source: e.source,
            provider: e.provider.as_str().to_string(),
            tenant: e.tenant,
            event_type: e.event_type,
            event_id: e.event_id,
            dedupe_key: e.dedupe_key,
            entity: EntityRefView {
                kind: e.entity_kind,
                id: e.entity_id,
                op: e.entity_op,
            },
            version_ms: e.version_ms,
            received_at: format_ms(e.received_at_ms),
            status: e.status.as_str().to_string(),
            status_reason: e.status_reason,
            times_seen: e.times_seen,
            last_seen_at: format_ms(e.last_seen_at_ms),
            conflicts: e.conflicts,
            mirror_effect: e.mirror_effect,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct HeaderView {
    pub name: String,
    pub value: String,
}

/// A stored event in full.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventDetail {
    #[serde(flatten)]
    pub event: EventView,
    /// The body exactly as received.
    pub raw_body: String,
    /// The body decoded as JSON.
    #[schema(value_type = Object)]
    pub body: Value,
    /// The request headers as received, except credentials.
    pub headers: Vec<HeaderView>,
}

impl From<StoredEvent> for EventDetail {
    fn from(e: StoredEvent) -> Self {
        EventDetail {
            body: serde_json::from_slice(crate::canonical::json_text(&e.body))
                .unwrap_or(Value::Null),
            raw_body: String::from_utf8_lossy(&e.body).into_owned(),
            headers: e
                .headers
                .into_iter()
                .map(|(name, value)| HeaderView { name, value })
                .collect(),
            event: e.summary.into(),
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    pub items: Vec<EventView>,
    /// Pass as `cursor` to get the next (older) page; null on the last page.
    pub next_cursor: Option<String>,
}

/// A refused request from the rejection log.
#[derive(Debug, Serialize, ToSchema)]
pub struct RejectionView {
    pub id: i64,
    pub at: String,
    pub source: Option<String>,
    /// The error code the client received (or `id_conflict`).
    pub reason: String,
    pub status: u16,
    pub message: String,
    /// The first bytes of the body (at most 2 KiB), as text.
    pub body_preview: String,
    /// Base64 of the same bytes, for bodies that are not text.
    pub body_base64: String,
    /// The whole body's length in bytes.
    pub body_len: usize,
    /// Hex SHA-256 of the whole body (absent when no body was read, and for entries
    /// logged before this was kept).
    pub body_sha256: Option<String>,
    pub remote_addr: Option<String>,
}

impl From<Rejection> for RejectionView {
    fn from(r: Rejection) -> Self {
        RejectionView {
            id: r.id,
            at: format_ms(r.at_ms),
            source: r.source,
            reason: r.reason,
            status: r.status,
            message: r.message,
            body_preview: String::from_utf8_lossy(&r.body).into_owned(),
            body_base64: base64::engine::general_purpose::STANDARD.encode(&r.body),
            body_len: r.body_len,
            body_sha256: r.body_sha256.map(hex::encode),
            remote_addr: r.remote_addr,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct RejectionPage {
    pub items: Vec<RejectionView>,
    pub next_cursor: Option<String>,
}

/// A mirrored entity: its latest state (or its tombstone).
#[derive(Debug, Serialize, ToSchema)]
pub struct EntityView {
    pub kind: String,
    pub source: String,
    pub tenant: Option<String>,
    pub id: String,
    pub deleted: bool,
    /// The version the mirror holds, epoch milliseconds.
    pub version_ms: i64,
    /// The event (see `/events/{id}`) that produced this state.
    pub event_id: i64,
    /// The entity with the platform's field names; null for a bare tombstone.
    #[schema(value_type = Option<Object>)]
    pub data: Value,
}

impl From<Entity> for EntityView {
    fn from(e: Entity) -> Self {
        EntityView {
            kind: e.kind,
            source: e.source,
            tenant: e.tenant,
            id: e.id,
            deleted: e.deleted,
            version_ms: e.version_ms,
            event_id: e.event_seq.get(),
            data: e.data,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct EntityPage {
    pub items: Vec<EntityView>,
    pub next_cursor: Option<String>,
}

/// An entity with every event that touched it, in version order.
#[derive(Debug, Serialize, ToSchema)]
pub struct EntityHistory {
    pub entity: EntityView,
    pub events: Vec<EventView>,
    /// Older events were left out (more than 1,000, or more than ~4 MiB).
    pub truncated: bool,
}

/// A kind present in the mirror, for one platform.
#[derive(Debug, Serialize, ToSchema)]
pub struct KindView {
    pub kind: String,
    /// `dreamclass` or `loopwise`; null for generic entities whose source's events
    /// have all been pruned. The same kind can be listed once per platform.
    pub provider: Option<String>,
    /// Whether the kind has its own typed table (and field filters).
    pub typed: bool,
    pub live: i64,
    pub deleted: i64,
    /// Query parameters that filter this kind's list.
    pub filters: Vec<String>,
}

impl From<KindCount> for KindView {
    fn from(k: KindCount) -> Self {
        let spec = k
            .provider
            .filter(|_| k.typed)
            .and_then(|p| crate::mirror::kinds::typed(p, &k.kind));
        KindView {
            typed: k.typed,
            provider: k.provider.map(|p| p.as_str().to_string()),
            filters: spec
                .map(|s| {
                    s.fields
                        .iter()
                        .filter_map(|f| f.filter.map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
            kind: k.kind,
            live: k.live,
            deleted: k.deleted,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct StatsRowView {
    pub source: String,
    #[serde(rename = "type")]
    pub event_type: String,
    pub status: String,
    /// Distinct events.
    pub events: i64,
    /// Requests the platform sent for these events, its retries included (an event
    /// received twice counts 2). Not to be confused with `/deliveries`, what
    /// classhook sends to subscribers.
    pub received: i64,
    /// The same number as `received`, under its former name; removed in the next
    /// release.
    #[schema(deprecated)]
    pub deliveries: i64,
}

impl From<StatsRow> for StatsRowView {
    fn from(r: StatsRow) -> Self {
        StatsRowView {
            source: r.source,
            event_type: r.event_type,
            status: r.status.as_str().to_string(),
            events: r.events,
            received: r.received,
            deliveries: r.received,
        }
    }
}

#[derive(Debug, Serialize, ToSchema)]
pub struct Stats {
    pub since: Option<String>,
    pub until: Option<String>,
    pub total_events: i64,
    /// Requests received for these events, the platforms' retries included.
    pub total_received: i64,
    pub rows: Vec<StatsRowView>,
}

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// A machine-readable code, e.g. `bad_request`, `not_found`, `unauthorized`.
    pub error: String,
    /// What is wrong, for a person.
    pub message: String,
}

pub use super::subscriptions::{AttemptView, DeliveryDetail, DeliveryView, SubscriptionView};
