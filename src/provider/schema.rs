//! Typed schemas of the documented `data` shapes. An event whose `data` does not fit
//! is still kept, with status `quarantined` and the reason this module gives.
//!
//! Decisions where the docs are silent: fields not listed are allowed (platforms add
//! fields); free-text fields (`description`, `comment`, `subtitle`, `phone_number`)
//! may be null or absent; everything else listed is required with its type, and dates
//! and offset date-times must parse. A `*_DELETED` event needs only its `id`.
//! Fields documented as "or null" may also be absent. Loopwise payments: see
//! [`PaymentPaidData`] and [`PaymentRefundData`].

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

/// `payment.paid`, as its Loopwise page documents it. Decisions: amounts accept any
/// JSON number (documented as integers, typed `Float` by the Admin API; stored as
/// given); `payment_method_details` may be null or absent (payments without a card);
/// `lineitems` may be absent, and its items are not checked (only partly published);
/// `user.third_party_id` may be null (`user.created` says so; this page says string).
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentPaidData {
    pub id: String,
    pub trade_no: String,
    pub currency: String,
    pub amount: f64,
    pub original_amount: f64,
    pub refunded_amount: Option<f64>,
    pub paid_at: DateTime<FixedOffset>,
    pub created_at: DateTime<FixedOffset>,
    pub refunded_at: Option<DateTime<FixedOffset>>,
    pub payment_state: String,
    pub payment_type: String,
    pub affiliate_code: Option<String>,
    pub remark: Option<String>,
    pub user: PaymentUser,
    pub payment_method_details: Option<PaymentMethodDetails>,
    pub lineitems: Option<Vec<serde::de::IgnoredAny>>,
}

/// `payment.refund`: its section of the page was never retrieved, so every field but
/// `id` may be absent or null; a field that is present must have the type it has in
/// `payment.paid` (the refund is assumed to carry the same payment, refund fields
/// filled).
#[derive(Debug, Clone, Deserialize)]
pub struct PaymentRefundData {
    pub id: String,
    pub trade_no: Option<String>,
    pub currency: Option<String>,
    pub amount: Option<f64>,
    pub original_amount: Option<f64>,
    pub refunded_amount: Option<f64>,
    pub paid_at: Option<DateTime<FixedOffset>>,
    pub created_at: Option<DateTime<FixedOffset>>,
    pub refunded_at: Option<DateTime<FixedOffset>>,
    pub payment_state: Option<String>,
    pub payment_type: Option<String>,
    pub affiliate_code: Option<String>,
    pub remark: Option<String>,
    pub user: Option<PaymentUser>,
    pub payment_method_details: Option<PaymentMethodDetails>,
    pub lineitems: Option<Vec<serde::de::IgnoredAny>>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentUser {
    pub id: String,
    pub email: String,
    pub name: String,
    pub phone_number: Option<String>,
    pub third_party_id: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct PaymentMethodDetails {
    pub last_four: Option<String>,
    pub brand: Option<String>,
}

/// `user.created` (Teachify page). The id is documented as a UUID but not checked
/// (other Loopwise example ids are not UUIDs).
#[derive(Debug, Clone, Deserialize)]
pub struct UserData {
    pub id: String,
    pub email: String,
    pub name: String,
    pub phone_number: Option<String>,
    pub created_at: DateTime<FixedOffset>,
    pub updated_at: DateTime<FixedOffset>,
    pub third_party_id: Option<String>,
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
        "payment.paid" => fits::<PaymentPaidData>(data),
        "payment.refund" => fits::<PaymentRefundData>(data),
        "user.created" => fits::<UserData>(data),
        _ => Verdict::NoSchema,
    }
}

/// Characters of a mismatch's reason kept (it may quote what the sender sent).
const REASON_MAX: usize = 300;

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
            // serde quotes the value it refused whole: a reason stays short.
            let reason = format!("data{path}: {}", e.into_inner());
            Verdict::Mismatch(match reason.char_indices().nth(REASON_MAX) {
                Some((end, _)) => format!("{}…", &reason[..end]),
                None => reason,
            })
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
    }

    #[test]
    fn a_refund_needs_only_its_id_but_a_payment_its_documented_fields() {
        assert_eq!(
            check_loopwise("payment.refund", &obj(r#"{"id":"p1","amount":12.5}"#)),
            Verdict::Valid
        );
        assert!(matches!(
            check_loopwise("payment.refund", &obj(r#"{"id":"p1","amount":"12"}"#)),
            Verdict::Mismatch(r) if r.contains("amount")
        ));
        assert!(matches!(
            check_loopwise("payment.paid", &obj(r#"{"id":"p1"}"#)),
            Verdict::Mismatch(_)
        ));
    }

    #[test]
    fn the_documented_user_created_example_fits() {
        let data = obj(
            r#"{"id":"550e8400-e29b-41d4-a716-446655440000","email":"test@example.com","name":"Test User","phone_number":"1234567890","created_at":"2023-12-04T18:45:44Z","updated_at":"2023-12-04T18:45:44Z","third_party_id":null}"#,
        );
        assert_eq!(check_loopwise("user.created", &data), Verdict::Valid);
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
