//! The mirror's rules, free of SQL: which events may change an entity's mirrored
//! state, and what an event contributes to it. The store applies them inside the
//! transaction that stores the event.
//!
//! Rules:
//! - an event whose version is older than the mirrored one changes nothing (`stale`);
//! - on equal versions the event received later wins; events are always applied in
//!   receive order (live and in `mirror rebuild`), so "later" is "the incoming one";
//! - a `deleted` event leaves a tombstone carrying its version;
//! - a tombstone is revived only by a `created` event (not older than it); any other
//!   operation on a tombstoned entity changes nothing (`blocked`);
//! - quarantined events, and events without an entity id, never touch the mirror;
//! - an event of an undocumented type (`unknown_type`) never changes a typed entity:
//!   its provider names it a kind of its own, mirrored in the generic table.

pub mod kinds;

use serde_json::{Map, Value};

use crate::event::{EntityRef, EventStatus};
use crate::provider::ProviderKind;
pub use kinds::{Field, FieldType, KindSpec};

/// The mirrored state of one entity, as far as the rules need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Current {
    pub version_ms: i64,
    pub deleted: bool,
}

/// What an event did to the mirror (kept on the event, shown in its history).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The entity now holds this event's data.
    Applied,
    /// The entity is now a tombstone with this event's version.
    Tombstoned,
    /// Older than what the mirror holds: nothing changed.
    Stale,
    /// The entity is deleted and this was not a newer `created`: nothing changed.
    Blocked,
}

impl Effect {
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Applied => "applied",
            Effect::Tombstoned => "tombstoned",
            Effect::Stale => "stale",
            Effect::Blocked => "blocked",
        }
    }

    pub fn changes_state(self) -> bool {
        matches!(self, Effect::Applied | Effect::Tombstoned)
    }
}

/// Decides what an incoming event (received after everything already applied) does.
pub fn decide(current: Option<Current>, op: &str, version_ms: i64) -> Effect {
    let Some(current) = current else {
        return if op == "deleted" {
            Effect::Tombstoned
        } else {
            Effect::Applied
        };
    };
    if version_ms < current.version_ms {
        return Effect::Stale;
    }
    match op {
        "deleted" => Effect::Tombstoned,
        "created" => Effect::Applied,
        _ if current.deleted => Effect::Blocked,
        _ => Effect::Applied,
    }
}

/// One value of a typed mirror column.
#[derive(Debug, Clone, PartialEq)]
pub enum FieldValue {
    Null,
    Integer(i64),
    /// A number that is not an integer (only [`FieldType::Number`] fields).
    Real(f64),
    Text(String),
    Bool(bool),
    /// JSON text (only [`FieldType::Json`] fields).
    Json(String),
}

/// What an event would write into the mirror, prepared outside the writer.
#[derive(Debug, Clone, PartialEq)]
pub enum MirrorData {
    /// A documented kind with its own table: one value per [`KindSpec::fields`], and
    /// the rows of its child table if it has one (a course's plans).
    Typed {
        spec: &'static KindSpec,
        values: Vec<FieldValue>,
        children: Vec<Vec<FieldValue>>,
    },
    /// Any other kind: the latest `data`, as JSON text.
    Generic { data: String },
    /// A `deleted` event: only the tombstone is written.
    Tombstone { spec: Option<&'static KindSpec> },
}

impl MirrorData {
    /// The typed kind this data belongs to, `None` for the generic mirror.
    pub fn spec(&self) -> Option<&'static KindSpec> {
        match self {
            MirrorData::Typed { spec, .. } => Some(spec),
            MirrorData::Generic { .. } => None,
            MirrorData::Tombstone { spec } => *spec,
        }
    }
}

/// What an authentic event contributes to the mirror, or `None` if it must not
/// touch it.
pub fn prepare(
    provider: ProviderKind,
    entity: &EntityRef,
    status: EventStatus,
    data: &Map<String, Value>,
) -> Option<MirrorData> {
    if status == EventStatus::Quarantined || entity.id.is_none() {
        return None;
    }
    let spec = kinds::typed(provider, &entity.kind);
    // Providers give undocumented types kinds of their own; should one ever name a
    // typed kind, it still must not touch that kind's entities.
    if status == EventStatus::UnknownType && spec.is_some() {
        return None;
    }
    if entity.op == "deleted" {
        return Some(MirrorData::Tombstone { spec });
    }
    Some(match spec {
        Some(spec) => MirrorData::Typed {
            spec,
            values: spec.extract(data),
            children: spec.extract_children(data),
        },
        None => MirrorData::Generic {
            data: Value::Object(data.clone()).to_string(),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(version_ms: i64, deleted: bool) -> Option<Current> {
        Some(Current {
            version_ms,
            deleted,
        })
    }

    #[test]
    fn newer_or_equal_versions_win_older_ones_do_not() {
        assert_eq!(decide(None, "updated", 5), Effect::Applied);
        assert_eq!(decide(at(5, false), "updated", 6), Effect::Applied);
        assert_eq!(decide(at(5, false), "updated", 5), Effect::Applied);
        assert_eq!(decide(at(5, false), "updated", 4), Effect::Stale);
        assert_eq!(decide(at(5, false), "paid", 9), Effect::Applied);
    }

    #[test]
    fn tombstones_block_updates_but_not_newer_creates() {
        assert_eq!(decide(None, "deleted", 5), Effect::Tombstoned);
        assert_eq!(decide(at(5, false), "deleted", 7), Effect::Tombstoned);
        assert_eq!(decide(at(7, false), "deleted", 5), Effect::Stale);
        assert_eq!(decide(at(7, true), "updated", 6), Effect::Stale);
        assert_eq!(decide(at(7, true), "updated", 9), Effect::Blocked);
        assert_eq!(decide(at(7, true), "created", 6), Effect::Stale);
        assert_eq!(decide(at(7, true), "created", 9), Effect::Applied);
        assert_eq!(decide(at(7, true), "created", 7), Effect::Applied);
    }

    #[test]
    fn an_undocumented_type_never_writes_a_typed_kind() {
        let data: Map<String, Value> = serde_json::from_str(r#"{"id":"c1"}"#).unwrap();
        let entity = |kind: &str| EntityRef {
            kind: kind.into(),
            id: Some("c1".into()),
            op: "other".into(),
        };
        let status = EventStatus::UnknownType;
        assert_eq!(
            prepare(ProviderKind::Loopwise, &entity("course"), status, &data),
            None
        );
        assert!(matches!(
            prepare(
                ProviderKind::Loopwise,
                &entity("course.archived"),
                status,
                &data
            ),
            Some(MirrorData::Generic { .. })
        ));
    }
}
