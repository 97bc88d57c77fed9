//! The documented kinds that get typed mirror tables, described as data: which
//! platform field goes to which column, with which type, and which fields the API
//! can filter on. The store builds its SQL and the API its JSON from these specs, so
//! a new typed kind is one more entry here plus its table in a migration.

use serde_json::{Map, Value};

use super::FieldValue;
use crate::provider::ProviderKind;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    Integer,
    Text,
    Bool,
    /// `YYYY-MM-DD`, stored as text.
    Date,
    /// RFC 3339 with offset, stored as received.
    DateTime,
    /// A JSON number stored as given: an integer as INTEGER, any other number as REAL
    /// (payment amounts: documented as integers, typed `Float` by the Admin API).
    Number,
    /// Any JSON value, stored as its JSON text (e.g. `lineitems`, whose schema is only
    /// partly published).
    Json,
}

#[derive(Debug, PartialEq, Eq)]
pub struct Field {
    /// The platform's name; a dot reaches into a nested object (`user.email`).
    pub path: &'static str,
    pub column: &'static str,
    pub ty: FieldType,
    /// The API query parameter that filters on this field, if any.
    pub filter: Option<&'static str>,
}

/// A child table holding an array of the entity (a course's plans).
#[derive(Debug, PartialEq, Eq)]
pub struct ChildSpec {
    pub array: &'static str,
    pub table: &'static str,
    /// The column holding the parent entity's id.
    pub parent_column: &'static str,
    pub fields: &'static [Field],
}

#[derive(Debug, PartialEq, Eq)]
pub struct KindSpec {
    pub kind: &'static str,
    pub provider: ProviderKind,
    pub table: &'static str,
    /// DreamClass ids are integers, Loopwise ids strings.
    pub integer_id: bool,
    pub fields: &'static [Field],
    pub child: Option<ChildSpec>,
}

const fn field(path: &'static str, column: &'static str, ty: FieldType) -> Field {
    Field {
        path,
        column,
        ty,
        filter: None,
    }
}

const fn filtered(
    path: &'static str,
    column: &'static str,
    ty: FieldType,
    filter: &'static str,
) -> Field {
    Field {
        path,
        column,
        ty,
        filter: Some(filter),
    }
}

use FieldType::{Bool, Date, DateTime, Integer, Json, Number, Text};

pub static CLASS: KindSpec = KindSpec {
    kind: "class",
    provider: ProviderKind::DreamClass,
    table: "mirror_class",
    integer_id: true,
    fields: &[
        filtered("code", "code", Text, "code"),
        field("name", "name", Text),
        field("startDate", "start_date", Date),
        field("endDate", "end_date", Date),
        field("capacity", "capacity", Integer),
        field("description", "description", Text),
    ],
    child: None,
};

pub static STUDENT_PERIOD: KindSpec = KindSpec {
    kind: "student_period",
    provider: ProviderKind::DreamClass,
    table: "mirror_student_period",
    integer_id: true,
    fields: &[
        filtered("active", "active", Bool, "active"),
        field("addedAt", "added_at", DateTime),
        filtered("studentId", "student_id", Integer, "studentId"),
    ],
    child: None,
};

pub static ATTENDANCE: KindSpec = KindSpec {
    kind: "attendance",
    provider: ProviderKind::DreamClass,
    table: "mirror_attendance",
    integer_id: true,
    fields: &[
        filtered("date", "date", Date, "date"),
        field("type", "attendance_type", Text),
        filtered("classId", "class_id", Integer, "classId"),
        filtered("courseId", "course_id", Integer, "courseId"),
        field("statusId", "status_id", Integer),
        filtered(
            "studentPeriodId",
            "student_period_id",
            Integer,
            "studentPeriodId",
        ),
        field("comment", "comment", Text),
    ],
    child: None,
};

pub static COURSE: KindSpec = KindSpec {
    kind: "course",
    provider: ProviderKind::Loopwise,
    table: "mirror_course",
    integer_id: false,
    fields: &[
        field("name", "name", Text),
        field("description", "description", Text),
        filtered("state", "state", Text, "state"),
        field("type", "course_type", Text),
        filtered("slug", "slug", Text, "slug"),
        field("created_at", "created_at", DateTime),
        field("updated_at", "updated_at", DateTime),
    ],
    child: Some(ChildSpec {
        array: "plans",
        table: "mirror_course_plan",
        parent_column: "course_id",
        fields: &[
            field("id", "plan_id", Text),
            field("name", "name", Text),
            field("description", "description", Text),
            field("currency", "currency", Text),
            field("amount", "amount", Integer),
            field("created_at", "created_at", DateTime),
            field("updated_at", "updated_at", DateTime),
        ],
    }),
};

pub static ENROLLMENT: KindSpec = KindSpec {
    kind: "enrollment",
    provider: ProviderKind::Loopwise,
    table: "mirror_enrollment",
    integer_id: false,
    fields: &[
        filtered("course.id", "course_id", Text, "course_id"),
        field("course.name", "course_name", Text),
        field("course.slug", "course_slug", Text),
        field("course.subtitle", "course_subtitle", Text),
        filtered("user.id", "user_id", Text, "user_id"),
        field("user.name", "user_name", Text),
        filtered("user.email", "user_email", Text, "user_email"),
        field("user.phone_number", "user_phone_number", Text),
        filtered("state", "state", Text, "state"),
        field("created_at", "created_at", DateTime),
        field("updated_at", "updated_at", DateTime),
    ],
    child: None,
};

/// A payment, from `payment.paid` and `payment.refund` (one entity: a refund
/// supersedes its payment by version, see the Loopwise provider).
pub static PAYMENT: KindSpec = KindSpec {
    kind: "payment",
    provider: ProviderKind::Loopwise,
    table: "mirror_payment",
    integer_id: false,
    fields: &[
        filtered("trade_no", "trade_no", Text, "trade_no"),
        field("currency", "currency", Text),
        field("amount", "amount", Number),
        field("original_amount", "original_amount", Number),
        field("refunded_amount", "refunded_amount", Number),
        field("paid_at", "paid_at", DateTime),
        field("created_at", "created_at", DateTime),
        field("refunded_at", "refunded_at", DateTime),
        filtered("payment_state", "payment_state", Text, "payment_state"),
        field("payment_type", "payment_type", Text),
        field("affiliate_code", "affiliate_code", Text),
        field("remark", "remark", Text),
        filtered("user.id", "user_id", Text, "user_id"),
        filtered("user.email", "user_email", Text, "user_email"),
        field("user.name", "user_name", Text),
        field("user.phone_number", "user_phone_number", Text),
        field("user.third_party_id", "user_third_party_id", Text),
        field(
            "payment_method_details.last_four",
            "payment_method_last_four",
            Text,
        ),
        field("payment_method_details.brand", "payment_method_brand", Text),
        field("lineitems", "lineitems", Json),
    ],
    child: None,
};

/// A user, from `user.created`.
pub static USER: KindSpec = KindSpec {
    kind: "user",
    provider: ProviderKind::Loopwise,
    table: "mirror_user",
    integer_id: false,
    fields: &[
        filtered("email", "email", Text, "email"),
        field("name", "name", Text),
        field("phone_number", "phone_number", Text),
        field("third_party_id", "third_party_id", Text),
        field("created_at", "created_at", DateTime),
        field("updated_at", "updated_at", DateTime),
    ],
    child: None,
};

/// Every typed kind.
pub static TYPED: [&KindSpec; 7] = [
    &CLASS,
    &STUDENT_PERIOD,
    &ATTENDANCE,
    &COURSE,
    &ENROLLMENT,
    &PAYMENT,
    &USER,
];

/// The typed spec for a platform's kind, if it has one.
pub fn typed(provider: ProviderKind, kind: &str) -> Option<&'static KindSpec> {
    TYPED
        .iter()
        .copied()
        .find(|spec| spec.provider == provider && spec.kind == kind)
}

/// The typed spec for a kind name, whatever the platform.
pub fn typed_by_name(kind: &str) -> Option<&'static KindSpec> {
    TYPED.iter().copied().find(|spec| spec.kind == kind)
}

/// Which platform's table an API request for `kind` means, given the platforms it
/// may be about (the requested source's, or those of every configured source). API
/// paths name only the kind, and the same name can be typed on one platform and
/// generic on the other (Loopwise `payment`, DreamClass `PAYMENT`):
/// - one platform: that one decides (its typed table, or the generic table);
/// - several: the one with a typed table for the kind, if any.
///
/// `None` means "whichever platform has a typed table for it" ([`typed_by_name`]).
pub fn platform_for(kind: &str, providers: &[ProviderKind]) -> Option<ProviderKind> {
    let first = *providers.first()?;
    if providers.iter().all(|p| *p == first) {
        return Some(first);
    }
    providers
        .iter()
        .copied()
        .find(|p| typed(*p, kind).is_some())
}

/// [`platform_for`] for a request that names `source` or not, given the configured
/// sources and their platforms: a named source's platform decides; without one, the
/// platforms of every configured source.
pub fn platform_for_request(
    kind: &str,
    source: Option<&str>,
    sources: &[(String, ProviderKind)],
) -> Option<ProviderKind> {
    let providers: Vec<ProviderKind> = sources
        .iter()
        .filter(|(name, _)| source.is_none_or(|s| s == name))
        .map(|(_, provider)| *provider)
        .collect();
    platform_for(kind, &providers)
}

/// Whether a kind is documented: typed on a platform, or a documented DreamClass
/// family without a published schema (`period`, `invoice`, …: generic, possibly
/// empty). Other kinds (undocumented types) exist only once events made them.
pub fn documented(kind: &str) -> bool {
    typed_by_name(kind).is_some()
        || ProviderKind::DreamClass.known_types().iter().any(|t| {
            t.rsplit_once('_')
                .is_some_and(|(family, _)| family.eq_ignore_ascii_case(kind))
        })
}

/// The query parameters `/entities/{kind}` takes besides a kind's filters.
pub const LIST_PARAMETERS: [&str; 5] = ["source", "tenant", "include_deleted", "cursor", "limit"];

/// The typed spec an API request for `kind` reads, `None` for the generic table;
/// `provider` as chosen by [`platform_for`].
pub fn resolve(provider: Option<ProviderKind>, kind: &str) -> Option<&'static KindSpec> {
    match provider {
        Some(provider) => typed(provider, kind),
        None => typed_by_name(kind),
    }
}

impl KindSpec {
    /// One value per field, read from validated `data`.
    pub fn extract(&self, data: &Map<String, Value>) -> Vec<FieldValue> {
        extract_fields(self.fields, data)
    }

    pub fn extract_children(&self, data: &Map<String, Value>) -> Vec<Vec<FieldValue>> {
        let Some(child) = &self.child else {
            return Vec::new();
        };
        match data.get(child.array) {
            Some(Value::Array(items)) => items
                .iter()
                .filter_map(Value::as_object)
                .map(|item| extract_fields(child.fields, item))
                .collect(),
            _ => Vec::new(),
        }
    }

    pub fn filter_field(&self, parameter: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.filter == Some(parameter))
    }
}

fn extract_fields(fields: &[Field], data: &Map<String, Value>) -> Vec<FieldValue> {
    fields
        .iter()
        .map(|f| to_field_value(lookup(data, f.path), f.ty))
        .collect()
}

fn lookup<'a>(data: &'a Map<String, Value>, path: &str) -> Option<&'a Value> {
    let mut parts = path.split('.');
    let mut value = data.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

fn to_field_value(value: Option<&Value>, ty: FieldType) -> FieldValue {
    match (value, ty) {
        (None | Some(Value::Null), _) => FieldValue::Null,
        (Some(Value::Number(n)), Integer) => {
            n.as_i64().map_or(FieldValue::Null, FieldValue::Integer)
        }
        (Some(Value::Number(n)), Number) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => FieldValue::Integer(i),
            (None, Some(f)) => FieldValue::Real(f),
            (None, None) => FieldValue::Null,
        },
        (Some(value), Json) => FieldValue::Json(value.to_string()),
        (Some(Value::Bool(b)), Bool) => FieldValue::Bool(*b),
        (Some(Value::String(s)), Text | Date | DateTime) => FieldValue::Text(s.clone()),
        _ => FieldValue::Null,
    }
}

/// Turns a stored value back into the platform's JSON.
pub fn to_json(value: FieldValue) -> Value {
    match value {
        FieldValue::Null => Value::Null,
        FieldValue::Integer(n) => Value::from(n),
        FieldValue::Real(f) => Value::from(f),
        FieldValue::Text(s) => Value::String(s),
        FieldValue::Json(text) => serde_json::from_str(&text).unwrap_or(Value::Null),
        FieldValue::Bool(b) => Value::Bool(b),
    }
}

/// Puts `value` at a dotted `path` inside `object`, creating nested objects.
pub fn insert_path(object: &mut Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            object.insert(path.to_string(), value);
        }
        Some((head, rest)) => {
            let inner = object
                .entry(head.to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(inner) = inner {
                insert_path(inner, rest, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nested_fields_are_extracted_and_rebuilt() {
        let data: Map<String, Value> = serde_json::from_str(
            r#"{"id":"e1","course":{"id":"c1","name":"N","slug":"s"},"user":{"id":"u","name":"U","email":"a@b.c"},"state":"pending","created_at":"x","updated_at":"y"}"#,
        )
        .unwrap();
        let values = ENROLLMENT.extract(&data);
        assert_eq!(values[0], FieldValue::Text("c1".into()));
        assert_eq!(values[3], FieldValue::Null, "missing subtitle");
        let mut rebuilt = Map::new();
        for (field, value) in ENROLLMENT.fields.iter().zip(values) {
            insert_path(&mut rebuilt, field.path, to_json(value));
        }
        assert_eq!(rebuilt["user"]["email"], "a@b.c");
        assert_eq!(rebuilt["course"]["id"], "c1");
    }

    #[test]
    fn typed_kinds_are_per_platform() {
        assert!(typed(ProviderKind::DreamClass, "class").is_some());
        assert!(typed(ProviderKind::Loopwise, "class").is_none());
        assert!(typed(ProviderKind::DreamClass, "payment").is_none());
        assert!(typed(ProviderKind::Loopwise, "payment").is_some());
        assert_eq!(
            typed_by_name("enrollment").unwrap().table,
            "mirror_enrollment"
        );
    }

    #[test]
    fn the_platform_a_kind_means_depends_on_the_configured_platforms() {
        use ProviderKind::{DreamClass, Loopwise};
        assert_eq!(platform_for("payment", &[DreamClass]), Some(DreamClass));
        assert_eq!(resolve(Some(DreamClass), "payment"), None, "generic");
        assert_eq!(
            platform_for("payment", &[DreamClass, Loopwise]),
            Some(Loopwise)
        );
        assert_eq!(platform_for("invoice", &[DreamClass, Loopwise]), None);
        assert_eq!(resolve(None, "payment"), Some(&PAYMENT));
    }

    #[test]
    fn numbers_are_kept_as_given_and_json_as_text() {
        let data: Map<String, Value> =
            serde_json::from_str(r#"{"amount":1900,"original_amount":19.5,"lineitems":[{"a":1}]}"#)
                .unwrap();
        let values = PAYMENT.extract(&data);
        let at = |path: &str| PAYMENT.fields.iter().position(|f| f.path == path).unwrap();
        assert_eq!(values[at("amount")], FieldValue::Integer(1900));
        assert_eq!(values[at("original_amount")], FieldValue::Real(19.5));
        assert_eq!(values[at("refunded_amount")], FieldValue::Null);
        assert_eq!(
            to_json(values[at("lineitems")].clone()),
            serde_json::json!([{"a": 1}])
        );
    }
}
