//! DreamClass over real HTTP: every row of the ingest table, the seed shapes, both key
//! encodings, retries and conflicts.

mod common;

use base64::Engine;
use classhook::event::EventStatus;
use classhook::provider::dreamclass;
use common::*;
use serde_json::{Value, json};

fn seed_class() -> Value {
    json!({"id": 98, "code": "cs-2", "name": "Sample Class", "endDate": "2024-10-11",
           "capacity": 12, "startDate": "2023-12-11", "description": "Sample"})
}
fn seed_student_period() -> Value {
    json!({"id": 74, "active": true, "addedAt": "2024-10-02T09:40:02.179+00:00", "studentId": 76})
}
fn seed_attendance() -> Value {
    json!({"id": 52, "date": "2025-06-19", "type": "SESSION", "classId": 34, "comment": "sample comment",
           "courseId": 40, "statusId": 5, "studentPeriodId": 4})
}

/// A hand-made envelope, signed over its id with the school secret.
fn envelope(event_type: &str, data: Value) -> Value {
    let id = uuid::Uuid::new_v4().to_string();
    json!({
        "id": id, "data": data, "type": event_type, "tenant": "my-school",
        "signature": dreamclass::sign(SCHOOL_SECRET.as_bytes(), &id),
        "timestamp": 1727884291329i64,
    })
}

#[tokio::test]
async fn seed_shapes_are_stored_exactly_as_received() {
    let gw = Gateway::start().await;
    for (event_type, data, kind) in [
        ("CLASS_CREATED", seed_class(), "class"),
        (
            "STUDENT_PERIOD_UPDATED",
            seed_student_period(),
            "student_period",
        ),
        ("ATTENDANCE_DELETED", seed_attendance(), "attendance"),
    ] {
        let value = envelope(event_type, data.clone());
        // Pretty-printed with odd spacing: the stored body must be these exact bytes.
        let body = serde_json::to_vec_pretty(&value).unwrap();
        let headers = vec![
            ("content-type".to_string(), "application/json".to_string()),
            ("x-trace".to_string(), "abc".to_string()),
        ];
        let answer = gw.post_raw("/hooks/school", &headers, body.clone()).await;
        assert_eq!(answer.status, 200, "{event_type}: {}", answer.json);
        assert_eq!(answer.json, json!({}));
        assert_eq!(answer.headers["content-type"], "application/json");

        let id = value["id"].as_str().unwrap();
        let stored = gw
            .store
            .find_event("school", &format!("id:{id}"))
            .await
            .unwrap()
            .expect("stored");
        let s = &stored.summary;
        assert_eq!(stored.body, body);
        assert_eq!(s.event_type, event_type);
        assert_eq!(s.tenant.as_deref(), Some("my-school"));
        assert_eq!(s.event_id.as_deref(), Some(id));
        assert_eq!(s.entity_kind, kind);
        assert_eq!(
            s.entity_id.as_deref(),
            Some(data["id"].to_string().as_str())
        );
        assert_eq!(
            s.entity_op,
            event_type.rsplit('_').next().unwrap().to_lowercase()
        );
        assert_eq!(s.version_ms, 1727884291329);
        assert_eq!(s.status, EventStatus::Ok, "{:?}", s.status_reason);
        assert_eq!(s.times_seen, 1);
        assert!(
            stored
                .headers
                .iter()
                .any(|(n, v)| n == "x-trace" && v == "abc")
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn the_seed_request_itself_is_accepted_by_an_unsigned_source() {
    let gw = Gateway::start().await;
    let seed = br#"{"tenant":"my-school","timestamp":1727862002901,"id":"b3e6fa78-8672-4e8b-8431-7eebdabd25a2","signature":"nGq8sspzZVWObaR4zUOLyQ29m/IBxxD716hKx5298No=","type":"STUDENT_PERIOD_CREATED","data":{"id":32,"active":true,"studentId":76,"addedAt":"2024-10-02T09:40:02.179+00:00"}}"#;
    let answer = gw.post_raw("/hooks/open", &[], seed.to_vec()).await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    // The same bytes to a signed source: the unknown seed secret is not ours.
    let answer = gw.post_raw("/hooks/school", &[], seed.to_vec()).await;
    assert_eq!(answer.status, 401);
    assert_eq!(answer.error(), "signature_invalid");
    gw.stop().await;
}

#[tokio::test]
async fn both_key_encodings_verify_and_are_not_interchangeable() {
    let gw = Gateway::start().await;
    let key_bytes = base64::engine::general_purpose::STANDARD
        .decode("a2V5LWJ5dGVzLWZvci10ZXN0cw==")
        .unwrap();
    let decoded = classhook::secret::KeyBytes::new(key_bytes);
    let text = key("a2V5LWJ5dGVzLWZvci10ZXN0cw==");
    let data = seed_class();
    let by_decoded = classhook::provider::sample::build_request(
        classhook::provider::ProviderKind::DreamClass,
        Some(&decoded),
        "CLASS_CREATED",
        data.clone(),
        "t",
    );
    let by_text = classhook::provider::sample::build_request(
        classhook::provider::ProviderKind::DreamClass,
        Some(&text),
        "CLASS_CREATED",
        data.clone(),
        "t",
    );
    assert_eq!(gw.post("/hooks/school-b64", &by_decoded).await.status, 200);
    assert_eq!(gw.post("/hooks/school-b64", &by_text).await.status, 401);
    // The UTF-8 source takes the text as key bytes: the opposite verdicts.
    let school_b64_text_as_utf8 = classhook::provider::sample::build_request(
        classhook::provider::ProviderKind::DreamClass,
        Some(&key(SCHOOL_SECRET)),
        "CLASS_CREATED",
        data,
        "my-school",
    );
    assert_eq!(
        gw.post("/hooks/school", &school_b64_text_as_utf8)
            .await
            .status,
        200
    );
    gw.stop().await;
}

#[tokio::test]
async fn wrong_secret_and_a_signature_over_another_id_fail() {
    let gw = Gateway::start().await;
    let wrong = classhook::provider::sample::build_request(
        classhook::provider::ProviderKind::DreamClass,
        Some(&key("not-the-secret")),
        "CLASS_CREATED",
        seed_class(),
        "my-school",
    );
    let answer = gw.post("/hooks/school", &wrong).await;
    assert_eq!((answer.status, answer.error()), (401, "signature_invalid"));

    // A genuine signature, but of another event's id.
    let genuine = envelope("CLASS_CREATED", seed_class());
    let mut moved = envelope("CLASS_CREATED", seed_class());
    moved["signature"] = genuine["signature"].clone();
    let (headers, body) = raw_json(&moved);
    let answer = gw.post_raw("/hooks/school", &headers, body).await;
    assert_eq!((answer.status, answer.error()), (401, "signature_invalid"));

    let mut empty = envelope("CLASS_CREATED", seed_class());
    empty["signature"] = json!("");
    let (headers, body) = raw_json(&empty);
    let answer = gw.post_raw("/hooks/school", &headers, body).await;
    assert_eq!((answer.status, answer.error()), (401, "signature_missing"));
    assert!(!answer.json.to_string().contains(SCHOOL_SECRET));
    gw.stop().await;
}

#[tokio::test]
async fn unusable_envelopes_are_400_with_a_reason() {
    let gw = Gateway::start().await;
    type Mutation = Box<dyn Fn(&mut Value)>;
    let cases: Vec<(&str, Mutation)> = vec![
        (
            "`id` must be a UUID",
            Box::new(|v| v["id"] = json!("not-a-uuid")),
        ),
        ("`id` must be a string", Box::new(|v| v["id"] = json!(42))),
        (
            "`signature` must be a string",
            Box::new(|v| v["signature"] = json!(null)),
        ),
        (
            "`type` must be a string",
            Box::new(|v| v["type"] = json!(["CLASS_CREATED"])),
        ),
        (
            "`tenant` must be a string",
            Box::new(|v| v["tenant"] = json!(7)),
        ),
        (
            "`timestamp` must be an integer",
            Box::new(|v| v["timestamp"] = json!("1727884291329")),
        ),
        (
            "`timestamp` must be an integer",
            Box::new(|v| v["timestamp"] = json!(1.5)),
        ),
        (
            "`data` must be an object",
            Box::new(|v| v["data"] = json!([1, 2])),
        ),
        (
            "`data` is missing",
            Box::new(|v| {
                v.as_object_mut().unwrap().remove("data");
            }),
        ),
    ];
    for (expected, mutate) in cases {
        let mut value = envelope("CLASS_CREATED", seed_class());
        mutate(&mut value);
        let (headers, body) = raw_json(&value);
        let answer = gw.post_raw("/hooks/school", &headers, body).await;
        assert_eq!(answer.status, 400, "{expected}");
        assert_eq!(answer.error(), "invalid_envelope", "{expected}");
        assert!(
            answer.json["message"].as_str().unwrap().contains(
                expected
                    .trim_start_matches("`data` ")
                    .trim_start_matches("is ")
            ),
            "{expected}: {}",
            answer.json
        );
    }
    for body in [&b"{not json"[..], b"", b"[1,2,3]", b"\"text\""] {
        let answer = gw.post_raw("/hooks/school", &[], body.to_vec()).await;
        assert_eq!(answer.status, 400, "{body:?}");
        assert!(
            matches!(answer.error(), "invalid_json" | "invalid_envelope"),
            "{}",
            answer.json
        );
    }
    gw.stop().await;
}

#[tokio::test]
async fn tenants_outside_the_list_are_403() {
    let gw = Gateway::start().await;
    let other = dreamclass("CLASS_CREATED", seed_class(), "other-school");
    assert_eq!(gw.post("/hooks/school", &other).await.status, 200);
    let stranger = dreamclass("CLASS_CREATED", seed_class(), "stranger-school");
    let answer = gw.post("/hooks/school", &stranger).await;
    assert_eq!((answer.status, answer.error()), (403, "tenant_not_allowed"));
    assert!(
        gw.store
            .find_event("school", &format!("id:{}", id_of(&stranger)))
            .await
            .unwrap()
            .is_none()
    );
    gw.stop().await;
}

#[tokio::test]
async fn basic_auth_is_required_where_configured() {
    let gw = Gateway::start().await;
    let event = dreamclass_sample("CLASS_CREATED", 1);
    let answer = gw.post("/hooks/school-auth", &event).await;
    assert_eq!((answer.status, answer.error()), (401, "unauthorized"));
    assert!(
        answer.headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );

    for (user, password) in [("dreamclass", "wrong"), ("someone", "pa55word"), ("", "")] {
        let response = gw
            .client
            .post(gw.url("/hooks/school-auth"))
            .basic_auth(user, Some(password))
            .body(event.body.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{user}:{password}");
        let text = response.text().await.unwrap();
        assert!(!text.contains("pa55word"), "{text}");
    }
    let response = gw
        .client
        .post(gw.url("/hooks/school-auth"))
        .basic_auth("dreamclass", Some("pa55word"))
        .body(event.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let stored = gw
        .store
        .find_event("school-auth", &format!("id:{}", id_of(&event)))
        .await
        .unwrap()
        .unwrap();
    assert!(
        stored
            .headers
            .iter()
            .all(|(name, _)| name != "authorization"),
        "{:?}",
        stored.headers
    );
    gw.stop().await;
}

#[tokio::test]
async fn checks_run_in_the_documented_order() {
    let gw = Gateway::start_with("max_body_bytes = 2048", SOURCES).await;
    // The header checks come before the body: unknown source and Basic Auth beat
    // too large.
    let big = vec![b'x'; 4096];
    assert_eq!(
        gw.post_raw("/hooks/nobody", &[], big.clone()).await.status,
        404
    );
    assert_eq!(
        gw.post_raw("/hooks/school-auth", &[], big.clone())
            .await
            .status,
        401
    );
    // Too large beats bad JSON.
    assert_eq!(gw.post_raw("/hooks/school", &[], big).await.status, 413);
    // Unknown source beats bad JSON.
    assert_eq!(
        gw.post_raw("/hooks/nobody", &[], b"{".to_vec())
            .await
            .status,
        404
    );
    // Basic Auth beats bad JSON.
    assert_eq!(
        gw.post_raw("/hooks/school-auth", &[], b"{".to_vec())
            .await
            .status,
        401
    );
    // Bad envelope beats bad signature.
    let mut value = envelope("CLASS_CREATED", seed_class());
    value["signature"] = json!("AAAA");
    value["timestamp"] = json!("soon");
    let (headers, body) = raw_json(&value);
    assert_eq!(
        gw.post_raw("/hooks/school", &headers, body).await.status,
        400
    );
    // Bad signature beats a refused tenant.
    let mut value = envelope("CLASS_CREATED", seed_class());
    value["signature"] = json!("AAAA");
    value["tenant"] = json!("stranger");
    let (headers, body) = raw_json(&value);
    assert_eq!(
        gw.post_raw("/hooks/school", &headers, body).await.status,
        401
    );
    gw.stop().await;
}

#[tokio::test]
async fn fifty_concurrent_copies_store_one_event() {
    let gw = Gateway::start().await;
    let event = dreamclass_sample("ATTENDANCE_CREATED", 7);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let (client, url, body) = (
            gw.client.clone(),
            gw.url("/hooks/school"),
            event.body.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let response = client
                .post(url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (response.status().as_u16(), response.text().await.unwrap())
        }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap(), (200, "{}".to_string()));
    }
    assert_eq!(gw.store.count_events().await.unwrap(), 1);
    let stored = gw
        .store
        .find_event("school", &format!("id:{}", id_of(&event)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.summary.times_seen, 50);
    assert!(stored.summary.last_seen_at_ms >= stored.summary.received_at_ms);
    gw.stop().await;
}

#[tokio::test]
async fn a_repeated_id_with_another_body_is_a_conflict_not_a_replacement() {
    let gw = Gateway::start().await;
    let first = envelope("CLASS_UPDATED", seed_class());
    let (headers, first_body) = raw_json(&first);
    assert_eq!(
        gw.post_raw("/hooks/school", &headers, first_body.clone())
            .await
            .status,
        200
    );

    let mut tampered = first.clone();
    tampered["data"]["name"] = json!("Tampered");
    let (headers, tampered_body) = raw_json(&tampered);
    let answer = gw
        .post_raw("/hooks/school", &headers, tampered_body.clone())
        .await;
    assert_eq!(answer.status, 200);

    let id = first["id"].as_str().unwrap();
    let stored = gw
        .store
        .find_event("school", &format!("id:{id}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.body, first_body, "the first delivery wins");
    assert_eq!(stored.summary.conflicts, 1);
    assert_eq!(stored.summary.times_seen, 1);
    let rejections = gw.store.list_rejections(10).await.unwrap();
    let conflict = rejections
        .iter()
        .find(|r| r.reason == "id_conflict")
        .expect("logged");
    assert_eq!(conflict.body, tampered_body);
    assert_eq!(conflict.source.as_deref(), Some("school"));
    gw.stop().await;
}

#[tokio::test]
async fn unknown_types_and_misshapen_data_are_kept_with_their_status() {
    let gw = Gateway::start().await;
    let unknown = dreamclass(
        "GRADE_PUBLISHED",
        json!({"id": 5, "grade": "A"}),
        "my-school",
    );
    assert_eq!(gw.post("/hooks/school", &unknown).await.status, 200);
    let stored = gw
        .store
        .find_event("school", &format!("id:{}", id_of(&unknown)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.summary.status, EventStatus::UnknownType);
    assert_eq!(stored.summary.entity_kind, "grade_published");

    let mut bad = seed_class();
    bad["startDate"] = json!("11/12/2023");
    let quarantined = dreamclass("CLASS_CREATED", bad, "my-school");
    assert_eq!(gw.post("/hooks/school", &quarantined).await.status, 200);
    let stored = gw
        .store
        .find_event("school", &format!("id:{}", id_of(&quarantined)))
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
            .contains("startDate")
    );

    // A documented family without a published schema is fine as it comes.
    let payment = dreamclass(
        "PAYMENT_CREATED",
        json!({"invoiceId": 3, "status": 1}),
        "my-school",
    );
    assert_eq!(gw.post("/hooks/school", &payment).await.status, 200);
    let stored = gw
        .store
        .find_event("school", &format!("id:{}", id_of(&payment)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.summary.status, EventStatus::Ok);
    assert_eq!(stored.summary.entity_kind, "payment");
    gw.stop().await;
}

/// A repeated top-level key: serde_json keeps the last `id`, which the signature
/// covers, while a consumer reading the first would trust an unsigned one. Refused.
/// A key repeated inside `data` leaves an authentic event whose data is ambiguous:
/// kept, quarantined, with the key named.
#[tokio::test]
async fn repeated_keys_refuse_the_envelope_or_quarantine_the_data() {
    let gw = Gateway::start().await;
    let signed = uuid::Uuid::new_v4().to_string();
    let unsigned = uuid::Uuid::new_v4().to_string();
    let signature = dreamclass::sign(SCHOOL_SECRET.as_bytes(), &signed);
    let data = seed_class().to_string();
    let body = format!(
        r#"{{"id":"{unsigned}","type":"CLASS_CREATED","tenant":"my-school","signature":"{signature}","timestamp":1727884291329,"data":{data},"id":"{signed}"}}"#
    );
    let headers = vec![("content-type".to_string(), "application/json".to_string())];
    let answer = gw
        .post_raw("/hooks/school", &headers, body.into_bytes())
        .await;
    assert_eq!(
        (answer.status, answer.error()),
        (400, "invalid_envelope"),
        "{}",
        answer.json
    );
    let message = answer.json["message"].as_str().unwrap();
    assert!(message.contains("\"id\""), "{message}");
    for id in [&signed, &unsigned] {
        assert!(
            gw.store
                .find_event("school", &format!("id:{id}"))
                .await
                .unwrap()
                .is_none()
        );
    }
    let rejections = rejections_at_least(&gw.store, 1).await;
    assert_eq!(rejections[0].reason, "invalid_envelope");

    // Inside `data`: stored, quarantined, never mirrored.
    let id = uuid::Uuid::new_v4().to_string();
    let signature = dreamclass::sign(SCHOOL_SECRET.as_bytes(), &id);
    let body = format!(
        r#"{{"id":"{id}","type":"CLASS_CREATED","tenant":"my-school","signature":"{signature}","timestamp":1727884291329,"data":{{"id":98,"code":"cs-2","name":"First","endDate":"2024-10-11","capacity":12,"startDate":"2023-12-11","name":"Second"}}}}"#
    );
    let answer = gw
        .post_raw("/hooks/school", &headers, body.into_bytes())
        .await;
    assert_eq!(answer.status, 200, "{}", answer.json);
    let stored = gw
        .store
        .find_event("school", &format!("id:{id}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.summary.status, EventStatus::Quarantined);
    let reason = stored.summary.status_reason.unwrap();
    assert!(reason.contains("`data.name`"), "{reason}");
    let mirrored = gw
        .client
        .get(gw.url("/api/v1/entities/class/98?source=school"))
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(mirrored, 404, "a quarantined event is not mirrored");
    gw.stop().await;
}
