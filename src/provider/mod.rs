//! What each platform sends: its envelope, how it is authenticated, how a retry is
//! recognised, and which entity (kind, id, operation, version) an event describes.
//!
//! One folder per platform. Adding a platform means a new folder here and a new
//! [`ProviderKind`] variant; ingest, store and CLI only speak to this module's API.

pub mod dreamclass;
mod json;
pub mod loopwise;
pub mod sample;
pub mod schema;

use std::fmt;

use http::HeaderMap;
use serde::Deserialize;
use serde_json::Value;

use crate::event::{EntityRef, EventStatus};
use crate::mirror::MirrorData;
use crate::secret::KeyBytes;

/// The platforms classhook understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    #[serde(rename = "dreamclass")]
    DreamClass,
    Loopwise,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::DreamClass => "dreamclass",
            ProviderKind::Loopwise => "loopwise",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "dreamclass" => Some(ProviderKind::DreamClass),
            "loopwise" | "teachify" => Some(ProviderKind::Loopwise),
            _ => None,
        }
    }

    /// Every event type this platform documents (used by `send` and its help).
    pub fn known_types(self) -> Vec<String> {
        match self {
            ProviderKind::DreamClass => dreamclass::known_types(),
            ProviderKind::Loopwise => loopwise::KNOWN_TYPES
                .iter()
                .map(|t| t.to_string())
                .collect(),
        }
    }
}

impl fmt::Display for ProviderKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body is not JSON, or not this platform's envelope: answered 400.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    #[error("{0}")]
    Unusable(String),
}

/// The signature is missing or does not verify: answered 401.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("{0}")]
    Missing(&'static str),
    #[error("{0}")]
    Invalid(&'static str),
}

/// A parsed envelope of either platform.
#[derive(Debug, Clone)]
pub enum Envelope {
    DreamClass(dreamclass::Envelope),
    Loopwise(loopwise::Envelope),
}

/// What an authentic envelope says, normalized across platforms.
#[derive(Debug, Clone)]
pub struct Described {
    pub tenant: Option<String>,
    pub event_type: String,
    pub event_id: Option<String>,
    pub dedupe_key: String,
    pub entity: EntityRef,
    /// `None` when the event carries no usable version (the receive time is used).
    pub version_ms: Option<i64>,
    pub status: EventStatus,
    pub status_reason: Option<String>,
    pub mirror: Option<MirrorData>,
}

impl Envelope {
    /// Parses `body` as `kind`'s envelope. Only the envelope is checked here; the
    /// shape of `data` never makes an authentic event fail (see [`Envelope::describe`]).
    ///
    /// A key repeated at the top level makes the envelope unusable: the signature
    /// covers one reading of it (DreamClass verifies the last `id`), a consumer of the
    /// raw body may take another. A key repeated deeper (in `data`) leaves the
    /// envelope authentic but its `data` ambiguous: the event is kept, quarantined
    /// with the key's path as the reason. Both are found in the one parse.
    ///
    /// A UTF-8 byte order mark before the JSON is skipped.
    pub fn parse(kind: ProviderKind, body: &[u8]) -> Result<Envelope, EnvelopeError> {
        // A leading UTF-8 byte order mark is ignored (RFC 8259 section 8.1 lets a
        // parser do so); signatures and the stored body stay over the bytes received.
        let checked = json::parse(crate::canonical::json_text(body))
            .map_err(|e| EnvelopeError::NotJson(e.to_string()))?;
        let Value::Object(map) = checked.value else {
            return Err(EnvelopeError::Unusable(
                "body must be a JSON object".to_string(),
            ));
        };
        if let Some(key) = checked.top_level_repeat {
            return Err(EnvelopeError::Unusable(format!(
                "the envelope repeats the key {:?}: a reader could take either value",
                shorten(&key)
            )));
        }
        let repeated = checked.nested_repeat;
        match kind {
            ProviderKind::DreamClass => {
                dreamclass::Envelope::from_object(map, repeated).map(Envelope::DreamClass)
            }
            ProviderKind::Loopwise => {
                loopwise::Envelope::from_object(map, repeated).map(Envelope::Loopwise)
            }
        }
    }

    /// Checks the platform's signature with `key`, over the exact bytes received.
    pub fn verify(
        &self,
        key: &KeyBytes,
        headers: &HeaderMap,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        match self {
            Envelope::DreamClass(e) => e.verify(key.expose()),
            Envelope::Loopwise(_) => loopwise::verify(key.expose(), headers, body),
        }
    }

    pub fn tenant(&self) -> Option<&str> {
        match self {
            Envelope::DreamClass(e) => Some(&e.tenant),
            Envelope::Loopwise(_) => None,
        }
    }

    pub fn event_type(&self) -> &str {
        match self {
            Envelope::DreamClass(e) => &e.event_type,
            Envelope::Loopwise(e) => &e.event_type,
        }
    }

    /// Normalizes the envelope: dedupe key, entity, version and schema verdict.
    pub fn describe(&self) -> Described {
        match self {
            Envelope::DreamClass(e) => e.describe(),
            Envelope::Loopwise(e) => e.describe(),
        }
    }
}

/// The entity id an event's `data` names: `data.id` as text (string or number).
fn data_id(data: &serde_json::Map<String, Value>) -> Option<String> {
    match data.get("id")? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// At most 64 characters of what a sender sent, for a message.
fn shorten(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The verdict on an authentic event whose body repeats a key below the top level
/// (`path`, e.g. `data.user.email`): quarantined, so it is kept but neither mirrored
/// nor delivered; `known` says whether its type is documented.
fn repeated_key_verdict(path: &str, known: bool) -> (EventStatus, Option<String>) {
    let undocumented = if known {
        ""
    } else {
        " (and its type is not documented)"
    };
    (
        EventStatus::Quarantined,
        Some(format!(
            "the key `{}` appears more than once, so readers may disagree on its value{undocumented}",
            shorten(path)
        )),
    )
}
