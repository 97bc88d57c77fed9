//! Loopwise over real HTTP: the seed shapes, both signature headers, body-hash retries.

mod common;

use classhook::crypto;
use classhook::event::EventStatus;
use classhook::provider::loopwise as lw;
use common::*;
use serde_json::{Value, json};

fn seed_course(event_type: &str) -> Value {
    json!({
        "type": event_type,
        "data": {
            "id": "550e8400-e29b-41d4-a716-446655440000", "name": "Introduction to Programming",
            "description": "Learn the basics of coding with this comprehensive course.",
            "state": "draft", "type": "Course",
            "created_at": "2023-05-15T14:30:00Z", "updated_at": "2023-06-01T18:15:00+08:00",
            "slug": "intro-to-programming",
            "plans": [
                {"id": "plan_123", "name": "Basic Plan", "description": "3 months", "currency": "TWD",
                 "amount": 5000, "created_at": "2023-05-15T14:35:00Z", "updated_at": "2023-05-15T14:35:00Z"},
                {"id": "plan_456", "name": "Premium Plan", "description": "Lifetime", "currency": "TWD",
                 "amount": 1900, "created_at": "2023-12-04T18:45:44+08:00", "updated_at": "2023-12-04T10:45:44Z"}
            ]
        }
    })
}

fn seed_enrollment() -> Value {
    json!({
        "type": "course.student_enroll",
        "data": {
            "id": "enroll_123456",
            "course": {"id": "course_789012", "name": "Introduction to Programming",
                       "slug": "intro-to-programming", "subtitle": "Learn the basics of coding"},
            "user": {"id": "user_345678", "name": "Sample User", "email": "student@example.com",
                     "phone_number": "+1234567890"},
            "created_at": "2023-05-15T14:30:00Z", "updated_at": "2023-05-15T14:30:00Z", "state": "pending"
        }
    })
}

fn signed(body: &[u8], header: &str) -> Vec<(String, String)> {
    vec![
        ("content-type".into(), "application/json".into()),
        (header.into(), lw::sign(COURSES_SECRET.as_bytes(), body)),
    ]
}

/// `sha256:` + the hex SHA-256 of the body's canonical JSON form.
fn dedupe_key(body: &[u8]) -> String {
    let canonical = classhook::canonical::of_body(body).unwrap();
    format!("sha256:{}", hex::encode(crypto::sha256(&canonical)))
}

#[tokio::test]
async fn seed_shapes_are_accepted_with_either_signature_header() {
    let gw = Gateway::start().await;
    let cases = [
        (
            seed_course("course.created"),
            "Loopwise-Webhook-Signature",
            "course",
            "created",
        ),
        (
            seed_course("course.updated"),
            "Teachify-Webhook-Signature",
            "course",
            "updated",
        ),
        (
            seed_enrollment(),
            "loopwise-webhook-signature",
            "enrollment",
            "created",
        ),
    ];
    for (value, header, kind, op) in cases {
        let body = serde_json::to_vec_pretty(&value).unwrap();
        let answer = gw
            .post_raw("/hooks/courses", &signed(&body, header), body.clone())
            .await;
        assert_eq!(answer.status, 200, "{}", answer.json);
        assert_eq!(answer.json, json!({}));
        let stored = gw
            .store
            .find_event("courses", &dedupe_key(&body))
            .await
            .unwrap()
            .expect("stored");
        let s = &stored.summary;
        assert_eq!(stored.body, body);
        assert_eq!((s.entity_kind.as_str(), s.entity_op.as_str()), (kind, op));
        assert_eq!(s.entity_id.as_deref(), value["data"]["id"].as_str());
        assert_eq!(s.tenant, None);
        assert_eq!(s.event_id, None);
        assert_eq!(s.status, EventStatus::Ok, "{:?}", s.status_reason);
        let updated_at =
            chrono::DateTime::parse_from_rfc3339(value["data"]["updated_at"].as_str().unwrap())
                .unwrap();
        assert_eq!(s.version_ms, updated_at.timestamp_millis());
    }
    gw.stop().await;
}

#[tokio::test]
async fn the_version_falls_back_to_created_at_then_receive_time() {
    let gw = Gateway::start().await;
    let body = serde_json::to_vec(&json!({"type": "user.created", "data": {"id": "u1", "created_at": "2024-01-02T03:04:05+08:00"}})).unwrap();
    assert_eq!(
        gw.post_raw(
            "/hooks/courses",
            &signed(&body, lw::SIGNATURE_HEADER),
            body.clone()
        )
        .await
        .status,
        200
    );
    let stored = gw
        .store
        .find_event("courses", &dedupe_key(&body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.summary.version_ms, 1704135845000);

    let body = serde_json::to_vec(&json!({"type": "user.created", "data": {"id": "u2"}})).unwrap();
    assert_eq!(
        gw.post_raw(
            "/hooks/courses",
            &signed(&body, lw::SIGNATURE_HEADER),
            body.clone()
        )
        .await
        .status,
        200
    );
    let stored = gw
        .store
        .find_event("courses", &dedupe_key(&body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.summary.version_ms, stored.summary.received_at_ms);
    gw.stop().await;
}

#[tokio::test]
async fn signatures_are_checked_over_the_raw_bytes() {
    let gw = Gateway::start().await;
    let body = serde_json::to_vec(&seed_enrollment()).unwrap();
    let answer = gw
        .post_raw(
            "/hooks/courses",
            &[("content-type".into(), "application/json".into())],
            body.clone(),
        )
        .await;
    assert_eq!((answer.status, answer.error()), (401, "signature_missing"));

    let wrong = vec![(
        lw::SIGNATURE_HEADER.to_string(),
        lw::sign(b"other-key", &body),
    )];
    let answer = gw.post_raw("/hooks/courses", &wrong, body.clone()).await;
    assert_eq!((answer.status, answer.error()), (401, "signature_invalid"));

    let not_hex = vec![(lw::SIGNATURE_HEADER.to_string(), "zz-not-hex".to_string())];
    assert_eq!(
        gw.post_raw("/hooks/courses", &not_hex, body.clone())
            .await
            .status,
        401
    );

    // The same JSON with one more space is other bytes: the signature no longer holds.
    let headers = signed(&body, lw::SIGNATURE_HEADER);
    let mut spaced = body.clone();
    spaced.insert(1, b' ');
    assert_eq!(
        gw.post_raw("/hooks/courses", &headers, spaced).await.status,
        401
    );
    assert_eq!(
        gw.post_raw("/hooks/courses", &headers, body).await.status,
        200
    );
    gw.stop().await;
}

#[tokio::test]
async fn unusable_envelopes_are_400() {
    let gw = Gateway::start().await;
    for value in [
        json!({"type": 5, "data": {}}),
        json!({"data": {}}),
        json!({"type": "course.created", "data": []}),
        json!({"type": "course.created", "data": "x"}),
        json!({"type": "course.created"}),
    ] {
        let body = serde_json::to_vec(&value).unwrap();
        let answer = gw
            .post_raw("/hooks/courses", &signed(&body, lw::SIGNATURE_HEADER), body)
            .await;
        assert_eq!(
            (answer.status, answer.error()),
            (400, "invalid_envelope"),
            "{value}"
        );
    }
    let answer = gw
        .post_raw(
            "/hooks/courses",
            &signed(b"nope", lw::SIGNATURE_HEADER),
            b"nope".to_vec(),
        )
        .await;
    assert_eq!((answer.status, answer.error()), (400, "invalid_json"));
    gw.stop().await;
}

#[tokio::test]
async fn a_retry_is_recognised_by_its_body() {
    let gw = Gateway::start().await;
    let body = serde_json::to_vec(&seed_course("course.updated")).unwrap();
    let headers = signed(&body, lw::SIGNATURE_HEADER);
    for _ in 0..3 {
        assert_eq!(
            gw.post_raw("/hooks/courses", &headers, body.clone())
                .await
                .status,
            200
        );
    }
    assert_eq!(gw.store.count_events().await.unwrap(), 1);
    let stored = gw
        .store
        .find_event("courses", &dedupe_key(&body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.summary.times_seen, 3);

    // The same event re-serialized (pretty-printed, keys in another order) is the
    // same event: seen once more, never a second one.
    let mut value = seed_course("course.updated");
    let mut fields: Vec<(String, Value)> = value["data"]
        .as_object()
        .unwrap()
        .clone()
        .into_iter()
        .collect();
    fields.reverse();
    value["data"] = Value::Object(fields.into_iter().collect());
    let pretty = serde_json::to_vec_pretty(&value).unwrap();
    assert_ne!(pretty, body);
    let answer = gw
        .post_raw(
            "/hooks/courses",
            &signed(&pretty, lw::SIGNATURE_HEADER),
            pretty.clone(),
        )
        .await;
    assert_eq!(answer.status, 200);
    assert_eq!(gw.store.count_events().await.unwrap(), 1);
    let stored = gw
        .store
        .find_event("courses", &dedupe_key(&pretty))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.summary.times_seen, 4);
    assert_eq!(stored.body, body, "the first copy's bytes are kept");
    assert!(gw.store.list_rejections(10).await.unwrap().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn unknown_types_and_misshapen_data_are_kept() {
    let gw = Gateway::start().await;
    let unknown = loopwise("certificate.issued", json!({"id": "c1"}));
    assert_eq!(gw.post("/hooks/courses", &unknown).await.status, 200);
    let stored = gw
        .store
        .find_event("courses", &dedupe_key(&unknown.body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.summary.status, EventStatus::UnknownType);
    // A kind of its own: an undocumented type never stands for a documented entity.
    assert_eq!(stored.summary.entity_kind, "certificate.issued");
    assert_eq!(stored.summary.entity_op, "other");

    let mut value = seed_course("course.created");
    value["data"]["plans"][0]["amount"] = json!("5000");
    let bad = loopwise("course.created", value["data"].clone());
    assert_eq!(gw.post("/hooks/courses", &bad).await.status, 200);
    let stored = gw
        .store
        .find_event("courses", &dedupe_key(&bad.body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.summary.status, EventStatus::Quarantined);
    assert!(
        stored
            .summary
            .status_reason
            .as_deref()
            .unwrap()
            .contains("plans[0].amount"),
        "{:?}",
        stored.summary.status_reason
    );

    let mut value = seed_enrollment();
    value["data"]["created_at"] = json!("2023-05-15 14:30");
    let bad_date = loopwise("course.student_enroll", value["data"].clone());
    assert_eq!(gw.post("/hooks/courses", &bad_date).await.status, 200);
    let stored = gw
        .store
        .find_event("courses", &dedupe_key(&bad_date.body))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.summary.status, EventStatus::Quarantined);
    gw.stop().await;
}

/// Loopwise signs the raw bytes, so a repeated `type` is authentic but ambiguous (a
/// consumer may read either): refused. A key repeated inside `data`: kept,
/// quarantined, with the key named.
#[tokio::test]
async fn repeated_keys_refuse_the_envelope_or_quarantine_the_data() {
    let gw = Gateway::start().await;
    let signed = |body: &str| {
        vec![
            ("content-type".to_string(), "application/json".to_string()),
            (
                "loopwise-webhook-signature".to_string(),
                classhook::provider::loopwise::sign(COURSES_SECRET.as_bytes(), body.as_bytes()),
            ),
        ]
    };
    let data = seed_course("course.created")["data"].to_string();
    let body = format!(r#"{{"type":"course.created","data":{data},"type":"course.updated"}}"#);
    let answer = gw
        .post_raw("/hooks/courses", &signed(&body), body.clone().into_bytes())
        .await;
    assert_eq!(
        (answer.status, answer.error()),
        (400, "invalid_envelope"),
        "{}",
        answer.json
    );
    assert!(
        answer.json["message"]
            .as_str()
            .unwrap()
            .contains("\"type\""),
        "{}",
        answer.json
    );

    let data = data.replacen("\"name\":", "\"name\":\"Shadowed\",\"name\":", 1);
    let body = format!(r#"{{"type":"course.created","data":{data}}}"#);
    let answer = gw
        .post_raw("/hooks/courses", &signed(&body), body.clone().into_bytes())
        .await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    let stored = gw
        .store
        .find_event("courses", &dedupe_key(body.as_bytes()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.summary.status, EventStatus::Quarantined);
    let reason = stored.summary.status_reason.unwrap();
    assert!(reason.contains("`data.name`"), "{reason}");
    gw.stop().await;
}
