//! DreamClass: `{id, type, tenant, signature, timestamp, data}`; the signature is the
//! base64 HMAC-SHA256 of the `id` alone, so a retry is recognised by `id` and a
//! repeated `id` never replaces what was stored first.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Map, Value};

use super::schema::{self, Verdict};
use super::{Described, EnvelopeError, ProviderKind, SignatureError, data_id};
use crate::crypto;
use crate::event::{EntityRef, EventStatus};
use crate::mirror;

/// Families documented with a full `data` schema.
const TYPED_FAMILIES: &[&str] = &["CLASS", "STUDENT_PERIOD", "ATTENDANCE"];
/// Families seen in the docs whose full schema is not published.
const UNTYPED_FAMILIES: &[&str] = &[
    "STUDENT_CLASS",
    "STUDENT_COURSE",
    "PERIOD",
    "INVOICE",
    "PAYMENT",
];
const OPERATIONS: &[&str] = &["CREATED", "UPDATED", "DELETED"];

/// Every documented `FAMILY_OPERATION` type.
pub fn known_types() -> Vec<String> {
    TYPED_FAMILIES
        .iter()
        .chain(UNTYPED_FAMILIES)
        .flat_map(|family| OPERATIONS.iter().map(move |op| format!("{family}_{op}")))
        .collect()
}

#[derive(Debug, Clone)]
pub struct Envelope {
    /// The id exactly as sent: the signature covers these bytes.
    pub id: String,
    /// The id normalized (lower-case, hyphenated) for recognising retries.
    pub uuid: uuid::Uuid,
    pub event_type: String,
    pub tenant: String,
    pub signature: String,
    pub timestamp_ms: i64,
    pub data: Map<String, Value>,
    /// The path of a key repeated inside the body (`data.x`): the event is quarantined.
    pub repeated_key: Option<String>,
}

impl Envelope {
    pub(super) fn from_object(
        mut map: Map<String, Value>,
        repeated_key: Option<String>,
    ) -> Result<Envelope, EnvelopeError> {
        let id = take_string(&mut map, "id")?;
        let uuid = uuid::Uuid::try_parse(&id).map_err(|_| {
            EnvelopeError::Unusable(format!("`id` must be a UUID, got {:?}", truncate(&id)))
        })?;
        let event_type = take_string(&mut map, "type")?;
        let tenant = take_string(&mut map, "tenant")?;
        let signature = take_string(&mut map, "signature")?;
        let timestamp_ms = match map.remove("timestamp") {
            Some(Value::Number(n)) if n.is_i64() => n.as_i64().expect("checked is_i64"),
            Some(other) => {
                return Err(EnvelopeError::Unusable(format!(
                    "`timestamp` must be an integer (epoch milliseconds), got {}",
                    json_kind(&other)
                )));
            }
            None => return Err(missing("timestamp")),
        };
        let data = match map.remove("data") {
            Some(Value::Object(data)) => data,
            Some(other) => {
                return Err(EnvelopeError::Unusable(format!(
                    "`data` must be an object, got {}",
                    json_kind(&other)
                )));
            }
            None => return Err(missing("data")),
        };
        Ok(Envelope {
            id,
            uuid,
            event_type,
            tenant,
            signature,
            timestamp_ms,
            data,
            repeated_key,
        })
    }

    pub(super) fn verify(&self, key: &[u8]) -> Result<(), SignatureError> {
        if self.signature.is_empty() {
            return Err(SignatureError::Missing("`signature` is empty"));
        }
        let Ok(given) = BASE64.decode(self.signature.trim()) else {
            return Err(SignatureError::Invalid("`signature` is not base64"));
        };
        if crypto::hmac_sha256_matches(key, self.id.as_bytes(), &given) {
            Ok(())
        } else {
            Err(SignatureError::Invalid(
                "`signature` is not the HMAC-SHA256 of `id` under this source's secret",
            ))
        }
    }

    pub(super) fn describe(&self) -> Described {
        let (family, op) = split_type(&self.event_type);
        let known = op.is_some() && is_documented(family);
        let entity = if !known && documented_family_ignoring_case(family) {
            // `class_UPDATED`, `Payment_CREATED`: undocumented, but their family would
            // name a documented kind. A kind of their own keeps them away from it.
            EntityRef {
                kind: self.event_type.to_ascii_lowercase(),
                id: entity_id(family, &self.data),
                op: "other".into(),
            }
        } else {
            // Documented types, and undocumented families (`GRADE_DELETED` → `grade`,
            // `CLASS_ARCHIVED` → `class_archived`): their kind is never documented.
            EntityRef {
                kind: family.to_ascii_lowercase(),
                id: entity_id(family, &self.data),
                op: op
                    .map(str::to_ascii_lowercase)
                    .unwrap_or_else(|| "other".into()),
            }
        };
        let (status, status_reason) = if let Some(path) = &self.repeated_key {
            super::repeated_key_verdict(path, known)
        } else if !known {
            (
                EventStatus::UnknownType,
                Some(format!(
                    "DreamClass type {:?} is not documented",
                    super::shorten(&self.event_type)
                )),
            )
        } else {
            match schema::check_dreamclass(family, op == Some("DELETED"), &self.data) {
                Verdict::Valid | Verdict::NoSchema => (EventStatus::Ok, None),
                Verdict::Mismatch(reason) => (EventStatus::Quarantined, Some(reason)),
            }
        };
        let mirror = mirror::prepare(ProviderKind::DreamClass, &entity, status, &self.data);
        Described {
            tenant: Some(self.tenant.clone()),
            event_type: self.event_type.clone(),
            event_id: Some(self.id.clone()),
            dedupe_key: format!("id:{}", self.uuid.hyphenated()),
            entity,
            version_ms: Some(self.timestamp_ms),
            status,
            status_reason,
            mirror,
        }
    }
}

fn is_documented(family: &str) -> bool {
    TYPED_FAMILIES.contains(&family) || UNTYPED_FAMILIES.contains(&family)
}

/// Whether `family` names a documented family in any letter case.
fn documented_family_ignoring_case(family: &str) -> bool {
    TYPED_FAMILIES
        .iter()
        .chain(UNTYPED_FAMILIES)
        .any(|f| f.eq_ignore_ascii_case(family))
}

/// `STUDENT_PERIOD_UPDATED` → (`STUDENT_PERIOD`, `Some("UPDATED")`).
fn split_type(event_type: &str) -> (&str, Option<&str>) {
    match event_type.rsplit_once('_') {
        Some((family, op)) if OPERATIONS.contains(&op) && !family.is_empty() => (family, Some(op)),
        _ => (event_type, None),
    }
}

/// `data.id`, or for link entities that have none, their key fields joined.
fn entity_id(family: &str, data: &Map<String, Value>) -> Option<String> {
    if let Some(id) = data_id(data) {
        return Some(id);
    }
    let keys: &[&str] = match family {
        "STUDENT_CLASS" => &["classId", "studentPeriodId"],
        "STUDENT_COURSE" => &["courseId", "classId", "studentPeriodId"],
        _ => return None,
    };
    let parts: Option<Vec<String>> = keys
        .iter()
        .map(|k| {
            data.get(*k)
                .filter(|v| v.is_number() || v.is_string())
                .map(|v| format!("{k}={}", scalar_text(v)))
        })
        .collect();
    parts.map(|p| p.join(","))
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Computes the `signature` field DreamClass would send for `id`.
pub fn sign(key: &[u8], id: &str) -> String {
    BASE64.encode(crypto::hmac_sha256(key, id.as_bytes()))
}

fn take_string(map: &mut Map<String, Value>, field: &'static str) -> Result<String, EnvelopeError> {
    match map.remove(field) {
        Some(Value::String(s)) => Ok(s),
        Some(other) => Err(EnvelopeError::Unusable(format!(
            "`{field}` must be a string, got {}",
            json_kind(&other)
        ))),
        None => Err(missing(field)),
    }
}

fn missing(field: &str) -> EnvelopeError {
    EnvelopeError::Unusable(format!("DreamClass envelope field `{field}` is missing"))
}

pub(super) fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "an integer",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn truncate(s: &str) -> &str {
    match s.char_indices().nth(64) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_types_into_family_and_operation() {
        assert_eq!(split_type("CLASS_UPDATED"), ("CLASS", Some("UPDATED")));
        assert_eq!(
            split_type("STUDENT_PERIOD_DELETED"),
            ("STUDENT_PERIOD", Some("DELETED"))
        );
        assert_eq!(split_type("GRADE_PUBLISHED"), ("GRADE_PUBLISHED", None));
        assert_eq!(split_type("_CREATED"), ("_CREATED", None));
    }

    #[test]
    fn link_entities_get_a_composite_id() {
        let data: Map<String, Value> =
            serde_json::from_str(r#"{"classId":3,"studentPeriodId":9}"#).unwrap();
        assert_eq!(
            entity_id("STUDENT_CLASS", &data).as_deref(),
            Some("classId=3,studentPeriodId=9")
        );
        assert_eq!(entity_id("PERIOD", &data), None);
    }

    #[test]
    fn known_types_cover_every_family_and_operation() {
        let types = known_types();
        assert!(types.contains(&"CLASS_CREATED".to_string()));
        assert!(types.contains(&"PAYMENT_DELETED".to_string()));
        assert_eq!(types.len(), 8 * 3);
    }
}
