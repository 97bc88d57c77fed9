//! Finding a stored event by any name a user sees for it: classhook's sequence number,
//! a DreamClass event id, or a Loopwise event's `sha256:` key. The API's
//! `/events/{id}` and the CLI's `event show` answer the same through this.

use crate::store::{EventSeq, Store, StoreError, StoredEvent};

/// What an event id may be, for messages and the OpenAPI document.
pub const EVENT_ID_FORMS: &str = "classhook's sequence number (`id` in a list, e.g. 42), a DreamClass event id (the envelope's UUID, also written `id:<uuid>`) or a Loopwise event's `sha256:<hex>` key (`dedupe_key`)";

/// How an event is named.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventRef {
    /// classhook's sequence number (`id` in a list).
    Seq(EventSeq),
    /// A dedupe key: `id:<uuid>` (DreamClass) or `sha256:<hex>` (Loopwise).
    Key(String),
}

#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    #[error("{0:?} is not an event id: give {EVENT_ID_FORMS}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    /// A platform id stored by several sources.
    #[error(
        "{count} events of different sources have id {id:?}; name the source ({choices}) or use the sequence number"
    )]
    Ambiguous {
        id: String,
        count: usize,
        /// `source=NAME (id SEQ)`, one per event.
        choices: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EventRef {
    pub fn parse(text: &str) -> Result<EventRef, LookupError> {
        if !text.is_empty()
            && text.bytes().all(|b| b.is_ascii_digit())
            && let Ok(seq) = text.parse()
        {
            return Ok(EventRef::Seq(seq));
        }
        let uuid = text.strip_prefix("id:").unwrap_or(text);
        if let Ok(uuid) = uuid::Uuid::try_parse(uuid) {
            // Normalized as the dedupe key is: any spelling of the UUID finds it.
            return Ok(EventRef::Key(format!("id:{}", uuid.hyphenated())));
        }
        if let Some(hex) = text.strip_prefix("sha256:")
            && hex.len() == 64
            && hex.bytes().all(|b| b.is_ascii_hexdigit())
        {
            return Ok(EventRef::Key(format!(
                "sha256:{}",
                hex.to_ascii_lowercase()
            )));
        }
        Err(LookupError::Invalid(text.to_string()))
    }
}

/// The event `id` names, in `source` if given.
pub async fn find_event(
    store: &Store,
    id: &str,
    source: Option<&str>,
) -> Result<StoredEvent, LookupError> {
    let not_found = || {
        LookupError::NotFound(match source {
            Some(source) => format!("no event {id:?} in source {source:?}"),
            None => format!("no event {id:?}"),
        })
    };
    let seq = match EventRef::parse(id)? {
        EventRef::Seq(seq) => seq,
        EventRef::Key(key) => {
            let mut found = store.find_events_by_key(&key, source).await?;
            match found.len() {
                0 => return Err(not_found()),
                1 => found.remove(0).1,
                count => {
                    let choices = found
                        .iter()
                        .map(|(source, seq)| format!("source={source} (id {seq})"))
                        .collect::<Vec<_>>()
                        .join(" or ");
                    return Err(LookupError::Ambiguous {
                        id: id.to_string(),
                        count,
                        choices,
                    });
                }
            }
        }
    };
    store
        .get_event(seq)
        .await?
        .filter(|e| source.is_none_or(|s| s == e.summary.source))
        .ok_or_else(not_found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_ids_in_every_accepted_form() {
        let uuid = "0b7e8a4c-6a55-4c3e-9d7b-2f1f3c1a2b3c";
        let key = EventRef::Key(format!("id:{uuid}"));
        assert_eq!(EventRef::parse("42").unwrap(), EventRef::Seq(EventSeq(42)));
        assert_eq!(EventRef::parse(uuid).unwrap(), key);
        assert_eq!(EventRef::parse(&uuid.to_uppercase()).unwrap(), key);
        assert_eq!(EventRef::parse(&format!("id:{uuid}")).unwrap(), key);
        assert_eq!(EventRef::parse(&uuid.replace('-', "")).unwrap(), key);
        let hex = "AB".repeat(32);
        assert_eq!(
            EventRef::parse(&format!("sha256:{hex}")).unwrap(),
            EventRef::Key(format!("sha256:{}", "ab".repeat(32)))
        );
        for bad in [
            "",
            "-1",
            "99999999999999999999",
            "sha256:abc",
            "id:nope",
            "x",
        ] {
            assert!(
                matches!(EventRef::parse(bad), Err(LookupError::Invalid(_))),
                "{bad:?}"
            );
        }
    }
}
