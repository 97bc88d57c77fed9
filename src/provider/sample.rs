//! Realistic, correctly signed sample requests, as each platform would send them.
//! Used by `classhook send`, the tests and the benchmark.

use serde_json::{Value, json};

use super::{ProviderKind, dreamclass, loopwise};
use crate::secret::KeyBytes;

/// A request ready to POST: the headers to add and the exact body bytes.
#[derive(Debug, Clone)]
pub struct SignedRequest {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Sample `data` for an event type of either platform. Unknown types get a small
/// object with an id, so any type can be sent.
pub fn sample_data(kind: ProviderKind, event_type: &str, seq: u64) -> Value {
    match kind {
        ProviderKind::DreamClass => dreamclass_data(event_type, seq),
        ProviderKind::Loopwise => loopwise_data(event_type, seq),
    }
}

fn dreamclass_data(event_type: &str, seq: u64) -> Value {
    let id = 1 + seq % 100_000;
    let family = event_type
        .rsplit_once('_')
        .map_or(event_type, |(family, _)| family);
    match family {
        "CLASS" => json!({
            "id": id, "code": format!("cs-{id}"), "name": "Sample Class",
            "endDate": "2024-10-11", "capacity": 12, "startDate": "2023-12-11",
            "description": "Sample"
        }),
        "STUDENT_PERIOD" => json!({
            "id": id, "active": true, "studentId": 76,
            "addedAt": "2024-10-02T09:40:02.179+00:00"
        }),
        "ATTENDANCE" => json!({
            "id": id, "date": "2025-06-19", "type": "SESSION", "classId": 34,
            "comment": "sample comment", "courseId": 40, "statusId": 5, "studentPeriodId": 4
        }),
        "STUDENT_CLASS" => json!({ "classId": 34, "studentPeriodId": id }),
        "STUDENT_COURSE" => json!({ "courseId": 40, "classId": 34, "studentPeriodId": id }),
        "INVOICE" => json!({ "id": id, "fees": [{ "id": 7 }] }),
        "PAYMENT" => {
            json!({ "id": id, "invoiceId": 12, "paymentmethod": { "id": 2 }, "status": 1 })
        }
        _ => json!({ "id": id }),
    }
}

fn loopwise_data(event_type: &str, seq: u64) -> Value {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    match event_type {
        "course.created" | "course.updated" => json!({
            "id": format!("course-{seq}"), "name": "Introduction to Programming",
            "description": "Learn the basics of coding with this comprehensive course.",
            "state": "published", "type": "Course", "created_at": "2023-05-15T14:30:00Z",
            "updated_at": now, "slug": "intro-to-programming",
            "plans": [{
                "id": "plan_123", "name": "Basic Plan", "description": "3 months",
                "currency": "TWD", "amount": 5000,
                "created_at": "2023-05-15T14:35:00Z", "updated_at": "2023-05-15T14:35:00+08:00"
            }]
        }),
        "course.student_enroll" => json!({
            "id": format!("enroll-{seq}"),
            "course": { "id": "course_789012", "name": "Introduction to Programming",
                        "slug": "intro-to-programming", "subtitle": "Learn the basics of coding" },
            "user": { "id": "user_345678", "name": "Sample User",
                      "email": "student@example.com", "phone_number": "+1234567890" },
            "created_at": now, "updated_at": now, "state": "pending"
        }),
        "payment.paid" | "payment.refund" => {
            let refund = event_type == "payment.refund";
            let ago = |minutes: i64| {
                (chrono::Utc::now() - chrono::Duration::minutes(minutes))
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            };
            // A refund carries the same payment, paid a day earlier, refund fields filled.
            let paid_at = if refund { ago(24 * 60) } else { now.clone() };
            json!({
                "id": format!("pay-{seq}"), "trade_no": format!("T{seq:08}"), "currency": "TWD",
                "amount": 1900, "original_amount": 1900,
                "refunded_amount": if refund { json!(1900) } else { Value::Null },
                "paid_at": paid_at, "created_at": if refund { ago(24 * 60 + 2) } else { ago(2) },
                "refunded_at": if refund { json!(now) } else { Value::Null },
                "payment_state": if refund { "refunded" } else { "paid" },
                "payment_type": "credit", "affiliate_code": null, "remark": null,
                "user": { "id": "user_345678", "email": "student@example.com",
                          "name": "Sample User", "phone_number": "+886912345678",
                          "third_party_id": null },
                "payment_method_details": { "last_four": "4242", "brand": "visa" },
                "lineitems": [{ "name": "Premium Plan", "quantity": 1, "amount": 1900 }]
            })
        }
        "user.created" => json!({
            "id": uuid::Uuid::new_v4().to_string(), "email": format!("user{seq}@example.com"),
            "name": "Sample User", "phone_number": "+886912345678", "third_party_id": null,
            "created_at": now, "updated_at": now
        }),
        _ => json!({ "id": format!("{seq}") }),
    }
}

/// Builds the request `kind` would send for `event_type` with `data`, signed with
/// `key` when given (a source without a secret gets an unsigned request).
pub fn build_request(
    kind: ProviderKind,
    key: Option<&KeyBytes>,
    event_type: &str,
    data: Value,
    tenant: &str,
) -> SignedRequest {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    let body = match kind {
        ProviderKind::DreamClass => {
            let id = uuid::Uuid::new_v4().to_string();
            let signature = key.map_or_else(String::new, |k| dreamclass::sign(k.expose(), &id));
            let timestamp = chrono::Utc::now().timestamp_millis();
            serde_json::to_vec(&json!({
                "id": id, "type": event_type, "tenant": tenant,
                "signature": signature, "timestamp": timestamp, "data": data,
            }))
        }
        ProviderKind::Loopwise => {
            let body = serde_json::to_vec(&json!({ "type": event_type, "data": data }));
            if let (Some(k), Ok(body)) = (key, body.as_ref()) {
                headers.push((
                    loopwise::SIGNATURE_HEADER.to_string(),
                    loopwise::sign(k.expose(), body),
                ));
            }
            body
        }
    }
    .expect("a JSON value always serializes");
    SignedRequest { headers, body }
}
