//! Order per entity: a subscription with `ordering = "entity"` receives the
//! deliveries of one entity one at a time, in the order their events were stored.
//!
//! The rule, which every backend applies in its claim: a delivery of an ordered
//! subscription may be leased only when no delivery of the same subscription and
//! the same entity key with a lower event seq is still pending (waiting, leased or
//! waiting for a retry). A delivered or dead-lettered one no longer holds the
//! entity up. Deliveries of an unordered subscription carry no key, so that the
//! default costs nothing.

use serde::Serialize;
use utoipa::ToSchema;

/// How a subscription's deliveries are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Any order, as many at once as `max_in_flight` allows (the default).
    #[default]
    None,
    /// One at a time per entity, in stored order; other entities flow on.
    Entity,
}

impl Ordering {
    pub fn as_str(self) -> &'static str {
        match self {
            Ordering::None => "none",
            Ordering::Entity => "entity",
        }
    }

    pub fn parse(text: &str) -> Result<Ordering, String> {
        match text {
            "none" => Ok(Ordering::None),
            "entity" => Ok(Ordering::Entity),
            _ => Err(format!("{text:?} must be \"none\" or \"entity\"")),
        }
    }
}

/// What separates the parts of an entity key (a control character, which no
/// source name or entity kind contains).
pub const KEY_SEPARATOR: char = '\u{1f}';

/// The key that orders an event's deliveries: its source, entity kind and entity id.
/// `None` for an event without an entity, which is ordered after nothing. The
/// backends compute the same key in SQL when a subscription becomes ordered
/// (`source || KEY_SEPARATOR || entity_kind || KEY_SEPARATOR || entity_id`, NULL
/// when the id is).
pub fn entity_key(source: &str, kind: &str, entity_id: Option<&str>) -> Option<String> {
    entity_id.map(|id| format!("{source}{KEY_SEPARATOR}{kind}{KEY_SEPARATOR}{id}"))
}

/// The key a delivery of an event to a subscription with `ordering` carries.
pub fn delivery_key(
    ordering: Ordering,
    source: &str,
    kind: &str,
    entity_id: Option<&str>,
) -> Option<String> {
    match ordering {
        Ordering::None => None,
        Ordering::Entity => entity_key(source, kind, entity_id),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_round_trips_and_names_the_choices() {
        for o in [Ordering::None, Ordering::Entity] {
            assert_eq!(Ordering::parse(o.as_str()), Ok(o));
        }
        let error = Ordering::parse("fifo").unwrap_err();
        assert!(error.contains("\"none\" or \"entity\""), "{error}");
    }

    #[test]
    fn the_key_tells_sources_kinds_and_ids_apart() {
        let a = entity_key("dc", "class", Some("1"));
        assert_eq!(a, entity_key("dc", "class", Some("1")));
        assert_ne!(a, entity_key("dc2", "class", Some("1")));
        assert_ne!(a, entity_key("dc", "student_period", Some("1")));
        assert_ne!(a, entity_key("dc", "class", Some("2")));
        // The separator keeps "a"+"bc" apart from "ab"+"c".
        assert_ne!(
            entity_key("a", "bc", Some("1")),
            entity_key("ab", "c", Some("1"))
        );
        assert_eq!(entity_key("dc", "class", None), None);
    }

    #[test]
    fn unordered_deliveries_carry_no_key() {
        assert_eq!(delivery_key(Ordering::None, "dc", "class", Some("1")), None);
        assert!(delivery_key(Ordering::Entity, "dc", "class", Some("1")).is_some());
    }
}
