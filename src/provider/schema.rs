//! Typed schemas of the documented `data` shapes. An event whose `data` does not fit
//! is still kept, with status `quarantined` and the reason this module gives.
//!
//! Decisions where the docs are silent: fields not listed are allowed (platforms add
//! fields); free-text fields (`description`, `comment`, `subtitle`, `phone_number`)
//! may be null or absent; everything else listed is required with its type, and dates
//! and offset date-times must parse. A `*_DELETED` event needs only its `id`.

use chrono::{DateTime, FixedOffset, NaiveDate};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// The outcome of checking one event's `data`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Valid,
    /// A known type whose full schema is not documented: nothing to check.
    NoSchema,
    Mismatch(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ClassData {
    pub id: i64,
    pub code: String,
    pub name: String,
    pub start_date: NaiveDate,
    pub end_date: NaiveDate,
    pub capacity: i64,
    pub description: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StudentPeriodData {
    pub id: i64,
    pub active: bool,
    pub added_at: DateTime<FixedOffset>,
    pub student_id: i64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttendanceData {
    pub id: i64,
    pub date: NaiveDate,
    #[serde(rename = "type")]
    pub attendance_type: String,
    pub class_id: i64,
    pub course_id: i64,
    pub status_id: i64,
    pub student_period_id: i64,
    pub comment: Option<String>,
}

/// What a DreamClass `*_DELETED` event must carry at least.
#[derive(Debug, Clone, Deserialize)]
pub struct DeletedData {
    pub id: i64,
}

#[derive(Debug, Clone, Deserialize)]
pub struct CourseData {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub state: String,
    #[serde(rename = "type")]
    pub course_type: String,
    pub created_at: DateTime<FixedOffset>,
    pub updated_at: DateTime<FixedOffset>,
    pub slug: String,
    pub plans: Vec<PlanData>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PlanData {
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub currency: String,
    pub amount: i64,
    pub created_at: DateTime<FixedOffset>,
    pub updated_at: DateTime<FixedOffset>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EnrollmentData {
    pub id: String,
    pub course: EnrollmentCourse,
    pub user: EnrollmentUser,
    pub created_at: DateTime<FixedOffset>,
    pub updated_at: DateTime<FixedOffset>,
    pub state: String,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EnrollmentCourse {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub subtitle: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EnrollmentUser {
    pub id: String,
    pub name: String,
    pub email: String,
    pub phone_number: Option<String>,
}

/// Checks DreamClass `data` for a documented family (`CLASS`, `STUDENT_PERIOD`, …).
pub fn check_dreamclass(family: &str, deleted: bool, data: &Map<String, Value>) -> Verdict {
    if deleted {
        return match family {
            "CLASS" | "STUDENT_PERIOD" | "ATTENDANCE" => fits::<DeletedData>(data),
            _ => Verdict::NoSchema,
        };
    }
    match family {
        "CLASS" => fits::<ClassData>(data),
        "STUDENT_PERIOD" => fits::<StudentPeriodData>(data),
        "ATTENDANCE" => fits::<AttendanceData>(data),
        _ => Verdict::NoSchema,
    }
}

/// Checks Loopwise `data` for a documented type.
pub fn check_loopwise(event_type: &str, data: &Map<String, Value>) -> Verdict {
    match event_type {
        "course.created" | "course.updated" => fits::<CourseData>(data),
        "course.student_enroll" => fits::<EnrollmentData>(data),
        _ => Verdict::NoSchema,
    }
}

fn fits<T: DeserializeOwned>(data: &Map<String, Value>) -> Verdict {
    // `&Map` is not a Deserializer; a borrowed `Value` view avoids copying the data.
    let value = MapRef(data);
    match serde_path_to_error::deserialize::<_, T>(value) {
        Ok(_) => Verdict::Valid,
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." {
                String::new()
            } else {
                format!(".{path}")
            };
            Verdict::Mismatch(format!("data{path}: {}", e.into_inner()))
        }
    }
}

/// Lets a borrowed JSON object be deserialized without cloning it into a `Value`.
struct MapRef<'a>(&'a Map<String, Value>);

impl<'de> serde::Deserializer<'de> for MapRef<'de> {
    type Error = serde_json::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        serde::Deserializer::deserialize_any(
            serde::de::value::MapDeserializer::new(self.0.iter().map(|(k, v)| (k.as_str(), v))),
            visitor,
        )
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string
        bytes byte_buf option unit unit_struct newtype_struct seq tuple
        tuple_struct map struct enum identifier ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obj(text: &str) -> Map<String, Value> {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn the_seed_class_fits() {
        let data = obj(
            r#"{"id":98,"code":"cs-2","name":"Sample Class","endDate":"2024-10-11","capacity":12,"startDate":"2023-12-11","description":"Sample"}"#,
        );
        assert_eq!(check_dreamclass("CLASS", false, &data), Verdict::Valid);
    }

    #[test]
    fn a_bad_date_names_the_field() {
        let data = obj(
            r#"{"id":98,"code":"cs-2","name":"S","endDate":"2024-13-11","capacity":12,"startDate":"2023-12-11","description":"S"}"#,
        );
        let Verdict::Mismatch(reason) = check_dreamclass("CLASS", false, &data) else {
            panic!("expected a mismatch");
        };
        assert!(reason.starts_with("data.endDate"), "{reason}");
    }

    #[test]
    fn a_missing_field_and_a_wrong_type_are_mismatches() {
        let missing = obj(r#"{"id":32,"active":true,"addedAt":"2024-10-02T09:40:02.179+00:00"}"#);
        assert!(
            matches!(check_dreamclass("STUDENT_PERIOD", false, &missing), Verdict::Mismatch(r) if r.contains("studentId"))
        );
        let wrong = obj(
            r#"{"id":"32","active":true,"addedAt":"2024-10-02T09:40:02.179+00:00","studentId":76}"#,
        );
        assert!(matches!(
            check_dreamclass("STUDENT_PERIOD", false, &wrong),
            Verdict::Mismatch(_)
        ));
    }

    #[test]
    fn deleted_events_need_only_an_id() {
        assert_eq!(
            check_dreamclass("ATTENDANCE", true, &obj(r#"{"id":5}"#)),
            Verdict::Valid
        );
        assert!(matches!(
            check_dreamclass("ATTENDANCE", true, &obj("{}")),
            Verdict::Mismatch(_)
        ));
    }

    #[test]
    fn untyped_families_have_no_schema() {
        assert_eq!(
            check_dreamclass("PAYMENT", false, &obj("{}")),
            Verdict::NoSchema
        );
        assert_eq!(
            check_loopwise("payment.paid", &obj("{}")),
            Verdict::NoSchema
        );
    }

    #[test]
    fn enrollment_requires_its_user() {
        let data = obj(
            r#"{"id":"e1","course":{"id":"c","name":"n","slug":"s","subtitle":null},"created_at":"2023-05-15T14:30:00Z","updated_at":"2023-05-15T14:30:00+08:00","state":"pending"}"#,
        );
        assert!(
            matches!(check_loopwise("course.student_enroll", &data), Verdict::Mismatch(r) if r.contains("user"))
        );
    }
}
