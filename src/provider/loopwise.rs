//! Loopwise (formerly Teachify): `{type, data}` and nothing else. The signature is the
//! hex HMAC-SHA256 of the raw body in `Loopwise-Webhook-Signature` (older
//! deployments: `Teachify-Webhook-Signature`). With no event id, a retry is
//! recognised by what it says: the SHA-256 of the body's canonical JSON form, so a
//! re-serialized retry (other spacing or key order) is recognised too.

use chrono::DateTime;
use http::HeaderMap;
use serde_json::{Map, Value};

use super::dreamclass::json_kind;
use super::schema::{self, Verdict};
use super::{Described, EnvelopeError, ProviderKind, SignatureError, data_id};
use crate::event::{EntityRef, EventStatus};
use crate::mirror;
use crate::{canonical, crypto};

pub const SIGNATURE_HEADER: &str = "loopwise-webhook-signature";
pub const LEGACY_SIGNATURE_HEADER: &str = "teachify-webhook-signature";

/// Every documented event type.
pub const KNOWN_TYPES: &[&str] = &[
    "course.created",
    "course.updated",
    "course.student_enroll",
    "payment.paid",
    "payment.refund",
    "user.created",
];

#[derive(Debug, Clone)]
pub struct Envelope {
    pub event_type: String,
    pub data: Map<String, Value>,
    /// SHA-256 of the whole body's canonical JSON form: the event's identity.
    pub canonical_sha256: [u8; 32],
    /// The path of a key repeated inside the body (`data.x`): the event is quarantined.
    pub repeated_key: Option<String>,
}

impl Envelope {
    pub(super) fn from_object(
        map: Map<String, Value>,
        repeated_key: Option<String>,
    ) -> Result<Envelope, EnvelopeError> {
        let map_value = Value::Object(map);
        let canonical_sha256 = crypto::sha256(&canonical::to_vec(&map_value));
        let Value::Object(mut map) = map_value else {
            unreachable!("built as an object just above")
        };
        let event_type = match map.remove("type") {
            Some(Value::String(s)) => s,
            Some(other) => {
                return Err(EnvelopeError::Unusable(format!(
                    "`type` must be a string, got {}",
                    json_kind(&other)
                )));
            }
            None => {
                return Err(EnvelopeError::Unusable(
                    "Loopwise envelope field `type` is missing".into(),
                ));
            }
        };
        let data = match map.remove("data") {
            Some(Value::Object(data)) => data,
            Some(other) => {
                return Err(EnvelopeError::Unusable(format!(
                    "`data` must be an object, got {}",
                    json_kind(&other)
                )));
            }
            None => {
                return Err(EnvelopeError::Unusable(
                    "Loopwise envelope field `data` is missing".into(),
                ));
            }
        };
        Ok(Envelope {
            event_type,
            data,
            canonical_sha256,
            repeated_key,
        })
    }

    pub(super) fn describe(&self) -> Described {
        let known = KNOWN_TYPES.contains(&self.event_type.as_str());
        let (kind, op) = if known {
            entity_kind_and_op(&self.event_type)
        } else {
            // An undocumented type (`course.archived`) is a kind of its own, so it can
            // never change a documented entity such as the course.
            (self.event_type.clone(), "other".into())
        };
        let (status, status_reason) = if let Some(path) = &self.repeated_key {
            super::repeated_key_verdict(path, known)
        } else if !known {
            (
                EventStatus::UnknownType,
                Some(format!(
                    "Loopwise type {:?} is not documented",
                    super::shorten(&self.event_type)
                )),
            )
        } else {
            match schema::check_loopwise(&self.event_type, &self.data) {
                Verdict::Valid | Verdict::NoSchema => (EventStatus::Ok, None),
                Verdict::Mismatch(reason) => (EventStatus::Quarantined, Some(reason)),
            }
        };
        let entity = EntityRef {
            kind,
            id: data_id(&self.data),
            op,
        };
        let mirror = mirror::prepare(ProviderKind::Loopwise, &entity, status, &self.data);
        let version_ms = version_ms(&entity.kind, &self.data);
        Described {
            tenant: None,
            event_type: self.event_type.clone(),
            event_id: None,
            // The same `sha256:` prefix as the raw-body keys of events stored by
            // earlier versions: an old key can only equal a new one when the old
            // body was already in canonical form, i.e. the same value.
            dedupe_key: format!("sha256:{}", hex::encode(self.canonical_sha256)),
            entity,
            version_ms,
            status,
            status_reason,
            mirror,
        }
    }
}

/// `course.student_enroll` → (`enrollment`, `created`); `payment.paid` → (`payment`, `paid`).
fn entity_kind_and_op(event_type: &str) -> (String, String) {
    if event_type == "course.student_enroll" {
        return ("enrollment".into(), "created".into());
    }
    match event_type.split_once('.') {
        Some((kind, op)) if !kind.is_empty() && !op.is_empty() => (kind.into(), op.into()),
        _ => (event_type.into(), "other".into()),
    }
}

/// The version of the entity an event carries, as epoch milliseconds. A payment's
/// is the latest of `created_at`, `paid_at` and `refunded_at` that is present, so a
/// refund supersedes its payment in whatever order the two arrive (payments carry no
/// `updated_at`); anything else's is `updated_at`, else `created_at`.
fn version_ms(kind: &str, data: &Map<String, Value>) -> Option<i64> {
    let at = |field: &&str| {
        let text = data.get(*field)?.as_str()?;
        DateTime::parse_from_rfc3339(text)
            .ok()
            .map(|t| t.timestamp_millis())
    };
    if kind == "payment" {
        return ["created_at", "paid_at", "refunded_at"]
            .iter()
            .filter_map(at)
            .max();
    }
    ["updated_at", "created_at"].iter().find_map(at)
}

pub(super) fn verify(key: &[u8], headers: &HeaderMap, body: &[u8]) -> Result<(), SignatureError> {
    let header = headers
        .get(SIGNATURE_HEADER)
        .or_else(|| headers.get(LEGACY_SIGNATURE_HEADER))
        .ok_or(SignatureError::Missing(
            "header Loopwise-Webhook-Signature (or Teachify-Webhook-Signature) is missing",
        ))?;
    let given = header
        .to_str()
        .ok()
        .and_then(|text| hex::decode(text.trim()).ok())
        .ok_or(SignatureError::Invalid("the signature header is not hex"))?;
    if crypto::hmac_sha256_matches(key, body, &given) {
        Ok(())
    } else {
        Err(SignatureError::Invalid(
            "the signature is not the HMAC-SHA256 of the body under this source's secret",
        ))
    }
}

/// Computes the signature header value Loopwise would send for `body`.
pub fn sign(key: &[u8], body: &[u8]) -> String {
    hex::encode(crypto::hmac_sha256(key, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_types_to_entities() {
        assert_eq!(
            entity_kind_and_op("course.updated"),
            ("course".into(), "updated".into())
        );
        assert_eq!(
            entity_kind_and_op("course.student_enroll"),
            ("enrollment".into(), "created".into())
        );
        assert_eq!(
            entity_kind_and_op("payment.refund"),
            ("payment".into(), "refund".into())
        );
        assert_eq!(entity_kind_and_op("ping"), ("ping".into(), "other".into()));
    }

    #[test]
    fn version_prefers_updated_at_and_understands_offsets() {
        let data: Map<String, Value> = serde_json::from_str(
            r#"{"created_at":"2023-12-04T10:45:44Z","updated_at":"2023-12-04T18:45:45+08:00"}"#,
        )
        .unwrap();
        assert_eq!(version_ms("course", &data), Some(1_701_686_745_000));
        let data: Map<String, Value> =
            serde_json::from_str(r#"{"created_at":"2023-12-04T10:45:44Z"}"#).unwrap();
        assert_eq!(version_ms("course", &data), Some(1_701_686_744_000));
        let data: Map<String, Value> =
            serde_json::from_str(r#"{"updated_at":"yesterday"}"#).unwrap();
        assert_eq!(version_ms("course", &data), None);
    }

    #[test]
    fn a_payment_is_as_new_as_its_latest_moment() {
        let data: Map<String, Value> = serde_json::from_str(
            r#"{"created_at":"2023-12-04T10:00:00Z","paid_at":"2023-12-04T18:01:00+08:00","refunded_at":"2023-12-05T00:00:00Z","updated_at":"2020-01-01T00:00:00Z"}"#,
        )
        .unwrap();
        assert_eq!(version_ms("payment", &data), Some(1_701_734_400_000));
        let data: Map<String, Value> = serde_json::from_str(
            r#"{"created_at":"2023-12-04T10:00:00Z","paid_at":"2023-12-04T18:01:00+08:00","refunded_at":null}"#,
        )
        .unwrap();
        assert_eq!(version_ms("payment", &data), Some(1_701_684_060_000));
    }
}
