//! [`NewEvent`]: the normalized record of one accepted webhook that every layer after
//! ingest passes along, whatever platform sent it.

use bytes::Bytes;

use crate::mirror::MirrorData;
use crate::provider::ProviderKind;

/// What classhook made of an authentic event's shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventStatus {
    /// A known type whose `data` matches its schema (or a known type without one).
    Ok,
    /// Authentic, but a type we do not know. Kept as received.
    UnknownType,
    /// Authentic, a known type, but `data` does not match its documented schema.
    Quarantined,
}

impl EventStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            EventStatus::Ok => "ok",
            EventStatus::UnknownType => "unknown_type",
            EventStatus::Quarantined => "quarantined",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "ok" => Some(EventStatus::Ok),
            "unknown_type" => Some(EventStatus::UnknownType),
            "quarantined" => Some(EventStatus::Quarantined),
            _ => None,
        }
    }
}

/// Which entity an event is about and what happened to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityRef {
    /// `class`, `student_period`, `enrollment`, …
    pub kind: String,
    /// The entity's id as text (`data.id`), when the event carries one.
    pub id: Option<String>,
    /// `created`, `updated`, `deleted`, or the platform's own verb (`paid`, `refund`).
    pub op: String,
}

/// One authentic event, ready to be stored.
#[derive(Debug, Clone)]
pub struct NewEvent {
    pub source: String,
    pub provider: ProviderKind,
    pub tenant: Option<String>,
    pub event_type: String,
    /// The platform's own event id (DreamClass `id`); Loopwise sends none.
    pub event_id: Option<String>,
    /// What makes a retry recognisable: `id:<uuid>` or `sha256:<hex>` of the body's
    /// canonical JSON form.
    pub dedupe_key: String,
    pub entity: EntityRef,
    /// Version of the entity state this event carries, in epoch milliseconds.
    pub version_ms: i64,
    pub body: Bytes,
    pub body_sha256: [u8; 32],
    /// Request headers as received, except credentials.
    pub headers: Vec<(String, String)>,
    /// Who sent it, for the rejection log should it conflict with a stored event.
    pub remote_addr: Option<String>,
    pub received_at_ms: i64,
    pub status: EventStatus,
    /// Why the event is quarantined (or which type is unknown).
    pub status_reason: Option<String>,
    /// What the event writes into the mirror; `None` if it must not touch it.
    pub mirror: Option<MirrorData>,
    /// The W3C `traceparent` of the span that received it (tracing on): its delivery
    /// attempts continue that trace.
    pub trace_parent: Option<String>,
}
