//! The mirror over real HTTP ingest: versions, tombstones, typed and generic kinds,
//! and a rebuild that reproduces live ingestion exactly.

mod common;

use classhook::provider::{ProviderKind, dreamclass, loopwise as lw};
use classhook::store::{Entity, EntityFilter, EventSummary, Store};
use common::*;
use serde_json::{Value, json};

/// Headers and body of one request.
type Request = (Vec<(String, String)>, Vec<u8>);

/// A DreamClass body with a chosen version (envelope timestamp).
fn dc(event_type: &str, data: Value, timestamp: i64) -> Request {
    let id = uuid::Uuid::new_v4().to_string();
    raw_json(&json!({
        "id": id, "type": event_type, "tenant": "my-school", "timestamp": timestamp,
        "signature": dreamclass::sign(SCHOOL_SECRET.as_bytes(), &id), "data": data,
    }))
}

fn class(id: i64, name: &str) -> Value {
    json!({"id": id, "code": format!("c-{id}"), "name": name, "startDate": "2024-01-01",
           "endDate": "2024-06-30", "capacity": 20, "description": null})
}

fn lw_signed(value: &Value) -> (Vec<(String, String)>, Vec<u8>) {
    let body = serde_json::to_vec(value).unwrap();
    (
        vec![(
            lw::SIGNATURE_HEADER.to_string(),
            lw::sign(COURSES_SECRET.as_bytes(), &body),
        )],
        body,
    )
}

fn course(id: &str, name: &str, updated_at: &str, plans: usize) -> Value {
    let plans: Vec<Value> = (0..plans)
        .map(|i| {
            json!({"id": format!("plan-{i}"), "name": format!("Plan {i}"), "description": null,
                        "currency": "TWD", "amount": 1000 * (i as i64 + 1),
                        "created_at": "2023-05-15T14:35:00Z", "updated_at": updated_at})
        })
        .collect();
    json!({"type": "course.updated", "data": {
        "id": id, "name": name, "description": "d", "state": "published", "type": "Course",
        "created_at": "2023-05-15T14:30:00Z", "updated_at": updated_at, "slug": format!("s-{id}"),
        "plans": plans}})
}

async fn post(gw: &Gateway, source: &str, request: (Vec<(String, String)>, Vec<u8>)) {
    let answer = gw
        .post_raw(&format!("/hooks/{source}"), &request.0, request.1)
        .await;
    assert_eq!(answer.status, 200, "{}", answer.json);
}

/// The test sources' platforms (see `common::SOURCES`).
fn platform(source: &str) -> ProviderKind {
    match source {
        "courses" => ProviderKind::Loopwise,
        _ => ProviderKind::DreamClass,
    }
}

async fn one(store: &Store, kind: &str, id: &str, source: &str) -> Entity {
    let mut found = store
        .find_entities(Some(platform(source)), kind, id, Some(source), None)
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{kind} {id}: {found:?}");
    found.remove(0)
}

async fn history(
    store: &Store,
    kind: &str,
    id: &str,
    source: &str,
    tenant: Option<&str>,
) -> Vec<(i64, String)> {
    store
        .entity_history(kind, id, source, tenant, 10_000)
        .await
        .unwrap()
        .into_iter()
        .map(|e: EventSummary| (e.version_ms, e.mirror_effect.unwrap_or_default()))
        .collect()
}

#[tokio::test]
async fn an_older_update_never_overwrites_a_newer_one() {
    let gw = Gateway::start().await;
    post(&gw, "school", dc("CLASS_CREATED", class(7, "First"), 100)).await;
    post(&gw, "school", dc("CLASS_UPDATED", class(7, "Newest"), 300)).await;
    post(
        &gw,
        "school",
        dc("CLASS_UPDATED", class(7, "Late and old"), 200),
    )
    .await;
    let entity = one(&gw.store, "class", "7", "school").await;
    assert_eq!(entity.data["name"], "Newest");
    assert_eq!(entity.version_ms, 300);
    assert_eq!(entity.tenant.as_deref(), Some("my-school"));
    assert_eq!(entity.data["startDate"], "2024-01-01");
    assert_eq!(entity.data["description"], Value::Null);
    assert_eq!(
        history(&gw.store, "class", "7", "school", Some("my-school")).await,
        [
            (100, "applied".into()),
            (200, "stale".into()),
            (300, "applied".into())
        ]
    );
    // Equal versions: the one received later wins.
    post(
        &gw,
        "school",
        dc("CLASS_UPDATED", class(7, "Same version, later"), 300),
    )
    .await;
    assert_eq!(
        one(&gw.store, "class", "7", "school").await.data["name"],
        "Same version, later"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_tombstone_stops_late_updates_until_a_newer_create() {
    let gw = Gateway::start().await;
    post(&gw, "school", dc("CLASS_CREATED", class(8, "Alive"), 100)).await;
    post(&gw, "school", dc("CLASS_DELETED", json!({"id": 8}), 300)).await;
    post(
        &gw,
        "school",
        dc("CLASS_UPDATED", class(8, "Emitted before the delete"), 200),
    )
    .await;
    post(
        &gw,
        "school",
        dc("CLASS_UPDATED", class(8, "Update of a deleted class"), 400),
    )
    .await;
    let entity = one(&gw.store, "class", "8", "school").await;
    assert!(entity.deleted);
    assert_eq!(entity.version_ms, 300);
    assert_eq!(
        entity.data["name"], "Alive",
        "the tombstone keeps the last known data"
    );
    let listed = gw
        .store
        .list_entities(EntityFilter {
            kind: "class".into(),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert!(
        listed.is_empty(),
        "deleted entities are hidden by default: {listed:?}"
    );

    post(
        &gw,
        "school",
        dc("CLASS_CREATED", class(8, "Created again"), 500),
    )
    .await;
    let entity = one(&gw.store, "class", "8", "school").await;
    assert!(!entity.deleted);
    assert_eq!(entity.data["name"], "Created again");
    assert_eq!(
        history(&gw.store, "class", "8", "school", Some("my-school")).await,
        [
            (100, "applied".into()),
            (200, "stale".into()),
            (300, "tombstoned".into()),
            (400, "blocked".into()),
            (500, "applied".into())
        ]
    );
    gw.stop().await;
}

#[tokio::test]
async fn quarantined_events_do_not_touch_the_mirror() {
    let gw = Gateway::start().await;
    post(&gw, "school", dc("CLASS_CREATED", class(9, "Good"), 100)).await;
    let mut bad = class(9, "Bad");
    bad["capacity"] = json!("twelve");
    post(&gw, "school", dc("CLASS_UPDATED", bad, 200)).await;
    let entity = one(&gw.store, "class", "9", "school").await;
    assert_eq!(entity.data["name"], "Good");
    assert_eq!(
        history(&gw.store, "class", "9", "school", Some("my-school")).await,
        [(100, "applied".into()), (200, String::new())]
    );
    gw.stop().await;
}

#[tokio::test]
async fn typed_kinds_carry_their_fields_and_children() {
    let gw = Gateway::start().await;
    post(
        &gw,
        "courses",
        lw_signed(&course("c1", "Rust", "2024-02-01T10:00:00+08:00", 2)),
    )
    .await;
    post(
        &gw,
        "courses",
        lw_signed(&course("c1", "Old name", "2024-01-01T00:00:00Z", 1)),
    )
    .await;
    let entity = one(&gw.store, "course", "c1", "courses").await;
    assert_eq!(entity.tenant, None);
    assert_eq!(entity.data["name"], "Rust");
    assert_eq!(entity.data["plans"].as_array().unwrap().len(), 2);
    assert_eq!(entity.data["plans"][1]["amount"], 2000);

    for (id, email) in [("e1", "a@example.com"), ("e2", "b@example.com")] {
        post(&gw, "courses", lw_signed(&json!({"type": "course.student_enroll", "data": {
            "id": id, "course": {"id": "c1", "name": "Rust", "slug": "rust", "subtitle": null},
            "user": {"id": format!("u-{id}"), "name": "N", "email": email, "phone_number": null},
            "created_at": "2024-03-01T00:00:00Z", "updated_at": "2024-03-01T00:00:00Z", "state": "pending"}}))).await;
    }
    let spec = classhook::mirror::kinds::typed_by_name("enrollment").unwrap();
    let by_email = gw
        .store
        .list_entities(EntityFilter {
            kind: "enrollment".into(),
            fields: vec![(
                spec.filter_field("user_email").unwrap().column,
                classhook::mirror::FieldValue::Text("b@example.com".into()),
            )],
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(by_email.len(), 1);
    assert_eq!(by_email[0].data["user"]["email"], "b@example.com");
    assert_eq!(by_email[0].data["course"]["id"], "c1");

    post(
        &gw,
        "school",
        dc(
            "ATTENDANCE_CREATED",
            json!({"id": 52, "date": "2025-06-19", "type": "SESSION",
        "classId": 34, "comment": "late", "courseId": 40, "statusId": 5, "studentPeriodId": 4}),
            10,
        ),
    )
    .await;
    post(
        &gw,
        "school",
        dc(
            "STUDENT_PERIOD_CREATED",
            json!({"id": 74, "active": true,
        "addedAt": "2024-10-02T09:40:02.179+00:00", "studentId": 76}),
            10,
        ),
    )
    .await;
    let attendance = one(&gw.store, "attendance", "52", "school").await;
    assert_eq!(attendance.data["classId"], 34);
    assert_eq!(attendance.data["type"], "SESSION");
    assert_eq!(
        one(&gw.store, "student_period", "74", "school").await.data["active"],
        true
    );
    gw.stop().await;
}

#[tokio::test]
async fn other_families_go_to_the_generic_mirror() {
    let gw = Gateway::start().await;
    post(
        &gw,
        "school",
        dc(
            "PAYMENT_CREATED",
            json!({"id": 5, "invoiceId": 12, "status": 3}),
            100,
        ),
    )
    .await;
    post(
        &gw,
        "school",
        dc(
            "PAYMENT_UPDATED",
            json!({"id": 5, "invoiceId": 12, "status": 1}),
            200,
        ),
    )
    .await;
    post(
        &gw,
        "school",
        dc(
            "STUDENT_CLASS_CREATED",
            json!({"classId": 3, "studentPeriodId": 9}),
            100,
        ),
    )
    .await;
    post(
        &gw,
        "school",
        dc("BRAND_NEW_THING_UPDATED", json!({"id": "x1", "v": 1}), 100),
    )
    .await;
    assert_eq!(
        one(&gw.store, "payment", "5", "school").await.data["status"],
        1
    );
    assert_eq!(
        one(
            &gw.store,
            "student_class",
            "classId=3,studentPeriodId=9",
            "school"
        )
        .await
        .data["classId"],
        3
    );
    assert_eq!(
        one(&gw.store, "brand_new_thing", "x1", "school").await.data["v"],
        1
    );
    gw.stop().await;
}

/// GETs an API path (the test gateway's API is open on loopback) and returns the JSON.
async fn api(gw: &Gateway, path: &str) -> Value {
    let response = gw.client.get(gw.url(path)).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200, "{path}");
    response.json().await.unwrap()
}

/// `(type, entity kind, entity op)` of the listed `unknown_type` events, oldest first.
async fn unknown_events(gw: &Gateway, source: &str) -> Vec<(String, String, String)> {
    let page = api(
        gw,
        &format!("/api/v1/events?status=unknown_type&source={source}"),
    )
    .await;
    let mut listed: Vec<_> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap().to_string(),
                e["entity"]["kind"].as_str().unwrap().to_string(),
                e["entity"]["op"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    listed.reverse();
    listed
}

#[tokio::test]
async fn undocumented_loopwise_types_never_change_a_course() {
    let gw = Gateway::start().await;
    let mut created = course("c9", "Rust", "2024-01-01T00:00:00Z", 1);
    created["type"] = json!("course.created");
    post(&gw, "courses", lw_signed(&created)).await;
    // Undocumented: an archive notice with little data, then a "delete".
    for (event_type, at) in [
        ("course.archived", "2024-02-01T00:00:00Z"),
        ("course.deleted", "2024-03-01T00:00:00Z"),
    ] {
        let body = json!({"type": event_type, "data": {"id": "c9", "updated_at": at}});
        post(&gw, "courses", lw_signed(&body)).await;
    }
    post(
        &gw,
        "courses",
        lw_signed(&course(
            "c9",
            "Rust, 2nd edition",
            "2024-04-01T00:00:00Z",
            2,
        )),
    )
    .await;

    let entity = api(&gw, "/api/v1/entities/course/c9?source=courses").await;
    assert_eq!(entity["deleted"], false, "{entity}");
    assert_eq!(entity["data"]["name"], "Rust, 2nd edition");
    assert_eq!(entity["data"]["state"], "published");
    assert_eq!(entity["data"]["slug"], "s-c9");
    assert_eq!(entity["data"]["plans"].as_array().unwrap().len(), 2);
    let history = api(&gw, "/api/v1/entities/course/c9/history?source=courses").await;
    let course_effects: Vec<&str> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["mirror_effect"].as_str().unwrap())
        .collect();
    assert_eq!(course_effects, ["applied", "applied"], "{history}");

    // Stored and listed, each under a kind of its own.
    assert_eq!(
        unknown_events(&gw, "courses").await,
        [
            (
                "course.archived".into(),
                "course.archived".into(),
                "other".into()
            ),
            (
                "course.deleted".into(),
                "course.deleted".into(),
                "other".into()
            ),
        ]
    );
    let archived = api(&gw, "/api/v1/entities/course.deleted/c9?source=courses").await;
    assert_eq!(archived["deleted"], false, "not a tombstone: {archived}");

    let live = snapshot(&gw.store).await;
    let live_effects = effects_of(&gw.store).await;
    let report = gw
        .store
        .rebuild_mirror(classhook::store::NoProgress::shared())
        .await
        .unwrap();
    assert_eq!(report.redescribed, 0);
    assert_eq!(snapshot(&gw.store).await, live);

    // What an older classhook stored: the undocumented events described as course
    // events, and the course they damaged. A rebuild repairs both.
    common::backend::execute(
        gw.dir.path(),
        "UPDATE events SET entity_kind = 'course', entity_op = 'archived'
             WHERE event_type = 'course.archived';
         UPDATE events SET entity_kind = 'course', entity_op = 'deleted'
             WHERE event_type = 'course.deleted';
         UPDATE mirror_course SET name = NULL, slug = NULL, deleted = TRUE;",
    )
    .await;
    let report = gw
        .store
        .rebuild_mirror(classhook::store::NoProgress::shared())
        .await
        .unwrap();
    assert_eq!(report.redescribed, 2);
    assert_eq!(snapshot(&gw.store).await, live);
    assert_eq!(effects_of(&gw.store).await, live_effects);
    assert_eq!(unknown_events(&gw, "courses").await.len(), 2);
    let history = api(&gw, "/api/v1/entities/course/c9/history?source=courses").await;
    assert_eq!(history["events"].as_array().unwrap().len(), 2, "{history}");
    gw.stop().await;
}

#[tokio::test]
async fn undocumented_dreamclass_types_never_change_a_class() {
    let gw = Gateway::start().await;
    post(&gw, "school", dc("CLASS_CREATED", class(7, "Algebra"), 100)).await;
    post(&gw, "school", dc("CLASS_ARCHIVED", json!({"id": 7}), 200)).await;
    // A documented family in the wrong case is still not a documented type.
    post(&gw, "school", dc("class_UPDATED", json!({"id": 7}), 250)).await;
    post(&gw, "school", dc("Class_DELETED", json!({"id": 7}), 260)).await;
    // An undocumented family: a kind of its own, with its own tombstone.
    post(&gw, "school", dc("GRADE_DELETED", json!({"id": 7}), 300)).await;
    post(
        &gw,
        "school",
        dc("CLASS_UPDATED", class(7, "Algebra II"), 400),
    )
    .await;

    let entity = api(&gw, "/api/v1/entities/class/7?source=school").await;
    assert_eq!(entity["deleted"], false, "{entity}");
    assert_eq!(entity["data"]["name"], "Algebra II");
    assert_eq!(entity["data"]["code"], "c-7");
    assert_eq!(
        history(&gw.store, "class", "7", "school", Some("my-school")).await,
        [(100, "applied".into()), (400, "applied".into())]
    );
    assert_eq!(
        unknown_events(&gw, "school").await,
        [
            (
                "CLASS_ARCHIVED".into(),
                "class_archived".into(),
                "other".into()
            ),
            (
                "class_UPDATED".into(),
                "class_updated".into(),
                "other".into()
            ),
            (
                "Class_DELETED".into(),
                "class_deleted".into(),
                "other".into()
            ),
            ("GRADE_DELETED".into(), "grade".into(), "deleted".into()),
        ]
    );
    assert!(one(&gw.store, "grade", "7", "school").await.deleted);
    assert!(
        !one(&gw.store, "class_archived", "7", "school")
            .await
            .deleted
    );

    let live = snapshot(&gw.store).await;
    gw.store
        .rebuild_mirror(classhook::store::NoProgress::shared())
        .await
        .unwrap();
    assert_eq!(snapshot(&gw.store).await, live);
    gw.stop().await;
}

/// A Loopwise payment event as `payment.paid` documents it; a refund carries the
/// same payment with its refund fields filled.
fn payment(event_type: &str, id: &str, user: &str, amount: Value) -> Value {
    let refund = event_type == "payment.refund";
    json!({"type": event_type, "data": {
        "id": id, "trade_no": format!("T-{id}"), "currency": "TWD",
        "amount": amount, "original_amount": amount,
        "refunded_amount": if refund { amount.clone() } else { Value::Null },
        "created_at": "2024-05-01T10:00:00Z", "paid_at": "2024-05-01T18:01:00+08:00",
        "refunded_at": if refund { json!("2024-05-03T09:00:00+08:00") } else { Value::Null },
        "payment_state": if refund { "refunded" } else { "paid" },
        "payment_type": "credit", "affiliate_code": null, "remark": null,
        "user": {"id": user, "email": format!("{user}@example.com"), "name": "N",
                 "phone_number": null, "third_party_id": null},
        "payment_method_details": {"last_four": "4242", "brand": "visa"},
        "lineitems": [{"name": "Premium Plan", "quantity": 1, "item_type": "Course"}]
    }})
}

/// The ids of a listed page of entities.
fn ids(page: &Value) -> Vec<String> {
    page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_refund_supersedes_its_payment_in_either_order() {
    let gw = Gateway::start().await;
    for (id, order) in [
        ("p-in-order", ["payment.paid", "payment.refund"]),
        ("p-refund-first", ["payment.refund", "payment.paid"]),
    ] {
        for event_type in order {
            post(
                &gw,
                "courses",
                lw_signed(&payment(event_type, id, "u1", json!(1900))),
            )
            .await;
        }
        let entity = api(&gw, &format!("/api/v1/entities/payment/{id}")).await;
        assert_eq!(entity["data"]["payment_state"], "refunded", "{entity}");
        assert_eq!(entity["data"]["refunded_amount"], 1900);
        assert_eq!(entity["data"]["refunded_at"], "2024-05-03T09:00:00+08:00");
        assert_eq!(entity["data"]["user"]["email"], "u1@example.com");
        assert_eq!(entity["data"]["payment_method_details"]["brand"], "visa");
        assert_eq!(entity["data"]["lineitems"][0]["item_type"], "Course");
    }
    let history = api(&gw, "/api/v1/entities/payment/p-refund-first/history").await;
    let effects: Vec<(&str, &str)> = history["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["type"].as_str().unwrap(),
                e["mirror_effect"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        effects,
        [("payment.paid", "stale"), ("payment.refund", "applied")]
    );

    let live = snapshot(&gw.store).await;
    let live_effects = effects_of(&gw.store).await;
    let report = gw
        .store
        .rebuild_mirror(classhook::store::NoProgress::shared())
        .await
        .unwrap();
    assert_eq!(report.redescribed, 0);
    assert_eq!(snapshot(&gw.store).await, live);
    assert_eq!(effects_of(&gw.store).await, live_effects);
    gw.stop().await;
}

#[tokio::test]
async fn payments_and_users_are_filtered_on_their_fields_with_amounts_as_given() {
    let gw = Gateway::start().await;
    post(
        &gw,
        "courses",
        lw_signed(&payment("payment.paid", "p1", "u1", json!(1900))),
    )
    .await;
    post(
        &gw,
        "courses",
        lw_signed(&payment("payment.paid", "p2", "u2", json!(19.5))),
    )
    .await;
    post(
        &gw,
        "courses",
        lw_signed(&payment("payment.refund", "p3", "u2", json!(1900.0))),
    )
    .await;
    for (id, email) in [("u1", "a@example.com"), ("u2", "b@example.com")] {
        let user = json!({"type": "user.created", "data": {
            "id": id, "email": email, "name": "N", "phone_number": "0912345678",
            "created_at": "2024-05-01T10:00:00Z", "updated_at": "2024-05-01T10:00:00Z",
            "third_party_id": null}});
        post(&gw, "courses", lw_signed(&user)).await;
    }

    for (query, expected) in [
        ("payment_state=refunded", vec!["p3"]),
        ("payment_state=paid", vec!["p1", "p2"]),
        ("trade_no=T-p2", vec!["p2"]),
        ("user_id=u2", vec!["p2", "p3"]),
        ("user_email=u1@example.com", vec!["p1"]),
        ("user_email=nobody@example.com", vec![]),
    ] {
        let page = api(&gw, &format!("/api/v1/entities/payment?{query}")).await;
        assert_eq!(ids(&page), expected, "{query}");
    }
    let users = api(&gw, "/api/v1/entities/user?email=b@example.com").await;
    assert_eq!(ids(&users), ["u2"]);
    assert_eq!(users["items"][0]["data"]["phone_number"], "0912345678");

    // Amounts come back exactly as sent: an integer, a fraction, a float.
    let amount = |id: &'static str| {
        let gw = &gw;
        async move { api(gw, &format!("/api/v1/entities/payment/{id}")).await["data"]["amount"].clone() }
    };
    let integer = amount("p1").await;
    assert!(integer.is_i64() && integer == 1900, "{integer}");
    assert_eq!(amount("p2").await, json!(19.5));
    let float = amount("p3").await;
    assert!(float.is_f64() && float == 1900.0, "{float}");

    let kinds = api(&gw, "/api/v1/entities").await;
    let payment = kinds
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["kind"] == "payment")
        .unwrap();
    assert_eq!(payment["provider"], "loopwise");
    assert_eq!(payment["typed"], true);
    assert_eq!(payment["live"], 3);
    assert_eq!(
        payment["filters"],
        json!(["trade_no", "payment_state", "user_id", "user_email"])
    );
    gw.stop().await;
}

const DREAMCLASS_ONLY: &str = r#"
[[source]]
name = "school"
provider = "dreamclass"
secret = "school-secret"
"#;

#[tokio::test]
async fn dreamclass_payments_stay_generic_beside_loopwise_payments() {
    let dc_payment = || {
        dc(
            "PAYMENT_CREATED",
            json!({"id": 5, "invoiceId": 12, "status": 1}),
            100,
        )
    };

    // Only DreamClass configured: `payment` is its generic kind.
    let gw = Gateway::start_with("", DREAMCLASS_ONLY).await;
    post(&gw, "school", dc_payment()).await;
    let page = api(&gw, "/api/v1/entities/payment").await;
    assert_eq!(ids(&page), ["5"]);
    assert_eq!(page["items"][0]["data"]["invoiceId"], 12);
    assert_eq!(
        api(&gw, "/api/v1/entities/payment/5").await["data"]["status"],
        1
    );
    let history = api(&gw, "/api/v1/entities/payment/5/history").await;
    assert_eq!(history["events"][0]["type"], "PAYMENT_CREATED");
    let kinds = api(&gw, "/api/v1/entities").await;
    let listed: Vec<_> = kinds
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["typed"] == false)
        .collect();
    assert_eq!(listed.len(), 1, "{kinds}");
    assert_eq!(
        (&listed[0]["kind"], &listed[0]["provider"]),
        (&json!("payment"), &json!("dreamclass"))
    );
    let refused = gw
        .client
        .get(gw.url("/api/v1/entities/payment?payment_state=paid"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        refused.status().as_u16(),
        400,
        "not a filter of a generic kind"
    );
    gw.stop().await;

    // Both platforms: the typed Loopwise table by default, DreamClass with `source`.
    let gw = Gateway::start().await;
    post(&gw, "school", dc_payment()).await;
    post(
        &gw,
        "courses",
        lw_signed(&payment("payment.paid", "p1", "u1", json!(1900))),
    )
    .await;
    assert_eq!(ids(&api(&gw, "/api/v1/entities/payment").await), ["p1"]);
    assert_eq!(
        ids(&api(&gw, "/api/v1/entities/payment?source=school").await),
        ["5"]
    );
    assert_eq!(
        api(&gw, "/api/v1/entities/payment/5?source=school").await["data"]["status"],
        1
    );
    let kinds = api(&gw, "/api/v1/entities").await;
    let mut payments: Vec<(Value, Value)> = kinds
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["kind"] == "payment" && k["live"] == 1)
        .map(|k| (k["provider"].clone(), k["typed"].clone()))
        .collect();
    payments.sort_by_key(|(p, _)| p.to_string());
    assert_eq!(
        payments,
        [
            (json!("dreamclass"), json!(false)),
            (json!("loopwise"), json!(true))
        ]
    );
    let live = snapshot(&gw.store).await;
    gw.store
        .rebuild_mirror(classhook::store::NoProgress::shared())
        .await
        .unwrap();
    assert_eq!(snapshot(&gw.store).await, live);
    gw.stop().await;
}

/// Every entity of every kind, deleted ones included.
async fn snapshot(store: &Store) -> Vec<Entity> {
    let mut all = Vec::new();
    for count in store.mirror_counts().await.unwrap() {
        all.extend(
            store
                .list_entities(EntityFilter {
                    kind: count.kind.clone(),
                    provider: count.provider,
                    include_deleted: true,
                    limit: 100_000,
                    ..Default::default()
                })
                .await
                .unwrap(),
        );
    }
    all.sort_by(|a, b| (&a.kind, &a.source, &a.id).cmp(&(&b.kind, &b.source, &b.id)));
    // Positions are pagination cursors, which a rebuild may renumber (PostgreSQL's
    // sequences leave gaps): the entities are what must be equal.
    for entity in &mut all {
        entity.position = 0;
    }
    all
}

async fn effects_of(store: &Store) -> Vec<(i64, Option<String>)> {
    let mut events = store
        .list_events(classhook::store::EventFilter {
            limit: 100_000,
            ..Default::default()
        })
        .await
        .unwrap();
    events.sort_by_key(|e| e.seq);
    events
        .into_iter()
        .map(|e| (e.seq.get(), e.mirror_effect))
        .collect()
}

#[tokio::test]
async fn rebuild_reproduces_live_ingestion_of_a_shuffled_stream() {
    let gw = Gateway::start().await;
    // Histories per entity: create, updates, a delete, a re-create; versions 100..700.
    let mut stream: Vec<(&str, Request)> = Vec::new();
    for id in 1..=6i64 {
        for (step, (event_type, version)) in [
            ("CLASS_CREATED", 100),
            ("CLASS_UPDATED", 200),
            ("CLASS_UPDATED", 300),
            ("CLASS_DELETED", 400),
            ("CLASS_UPDATED", 500),
            ("CLASS_CREATED", 600),
            ("CLASS_UPDATED", 600),
        ]
        .iter()
        .enumerate()
        {
            let data = if event_type.ends_with("DELETED") {
                json!({"id": id})
            } else {
                class(id, &format!("v{version}-{step}"))
            };
            stream.push(("school", dc(event_type, data, *version + id)));
        }
        stream.push((
            "school",
            dc(
                "PAYMENT_UPDATED",
                json!({"id": id, "status": id % 4}),
                100 * id,
            ),
        ));
        let stamp = |h: i64| format!("2024-01-01T{h:02}:00:00+08:00");
        for h in [3, 1, 2] {
            stream.push((
                "courses",
                lw_signed(&course(
                    &format!("c{id}"),
                    &format!("h{h}"),
                    &stamp(h),
                    h as usize,
                )),
            ));
        }
    }
    // A fixed shuffle (a small LCG) and a few duplicates.
    let mut state = 0x2545F4914F6CDD1Du64;
    for i in (1..stream.len()).rev() {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        stream.swap(i, (state >> 33) as usize % (i + 1));
    }
    let duplicates: Vec<_> = stream.iter().step_by(5).cloned().collect();
    stream.extend(duplicates);
    for (source, request) in stream {
        post(&gw, source, request).await;
    }
    let live = snapshot(&gw.store).await;
    let live_effects = effects_of(&gw.store).await;
    assert_eq!(live.iter().filter(|e| e.kind == "class").count(), 6);
    for entity in live.iter().filter(|e| e.kind == "class") {
        // The newest version of each class is 600 + id, written by a create and an update.
        assert!(!entity.deleted, "{entity:?}");
        assert_eq!(entity.version_ms, 600 + entity.id.parse::<i64>().unwrap());
    }
    for entity in live.iter().filter(|e| e.kind == "course") {
        assert_eq!(entity.data["name"], "h3", "{entity:?}");
    }

    let report = gw
        .store
        .rebuild_mirror(classhook::store::NoProgress::shared())
        .await
        .unwrap();
    assert_eq!(report.events as usize, live_effects.len());
    assert_eq!(snapshot(&gw.store).await, live);
    assert_eq!(effects_of(&gw.store).await, live_effects);
    gw.stop().await;
}

#[test]
fn providers_name_their_typed_kinds() {
    assert!(classhook::mirror::kinds::typed(ProviderKind::DreamClass, "attendance").is_some());
}

/// A deterministic stream of creates, updates and deletes of `entities` classes.
fn class_stream(count: usize, entities: i64, salt: i64) -> Vec<Request> {
    (0..count as i64)
        .map(|n| {
            let mix = (n * 7919 + salt * 104_729) % 1000;
            let id = mix % entities;
            let event_type = match mix % 10 {
                0 => "CLASS_DELETED",
                1 | 2 => "CLASS_CREATED",
                _ => "CLASS_UPDATED",
            };
            // Versions collide on purpose: equal versions are decided by receive order.
            let version = 1_000 + (mix * 31 + n) % 200;
            let data = if event_type == "CLASS_DELETED" {
                json!({"id": id})
            } else {
                class(id, &format!("v{n}"))
            };
            dc(event_type, data, version)
        })
        .collect()
}

/// Appends `requests` as ingest would, `width` at a time.
async fn append_all(
    store: &Store,
    source: &classhook::config::Source,
    requests: Vec<Request>,
    width: usize,
) {
    for group in requests.chunks(width) {
        let mut appends = Vec::new();
        for (headers, body) in group {
            let event = classhook::ingest::authenticate(
                source,
                &header_map(headers),
                body.clone().into(),
                0,
            )
            .unwrap();
            let store = store.clone();
            appends.push(tokio::spawn(async move { store.append(event).await }));
        }
        for append in appends {
            append.await.unwrap().unwrap();
        }
    }
}

#[tokio::test]
async fn a_rebuild_while_events_arrive_equals_a_rebuild_at_rest() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), "", SOURCES);
    let source = config.sources.iter().find(|s| s.name == "school").unwrap();
    // Small chunks, so that the build runs beside ingestion for many of them.
    let store = Store::open(
        &classhook::store::Location::sqlite(dir.path().join("data")),
        classhook::store::StoreOptions {
            rebuild_chunk: Some(50),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    append_all(&store, source, class_stream(2_000, 150, 1), 64).await;
    let rebuilding = {
        let store = store.clone();
        tokio::spawn(async move {
            store
                .rebuild_mirror(classhook::store::NoProgress::shared())
                .await
        })
    };
    append_all(&store, source, class_stream(600, 150, 2), 4).await;
    let report = rebuilding.await.unwrap().unwrap();
    assert!(report.events >= 2_000, "{report:?}");
    let during = (snapshot(&store).await, effects_of(&store).await);

    store
        .rebuild_mirror(classhook::store::NoProgress::shared())
        .await
        .unwrap();
    let at_rest = (snapshot(&store).await, effects_of(&store).await);
    assert_eq!(during.0, at_rest.0, "the mirror");
    assert_eq!(during.1, at_rest.1, "every event's effect");
    assert_eq!(during.1.len(), 2_600);
}
