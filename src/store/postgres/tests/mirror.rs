//! The mirror: version rules, batches, typed and generic tables, child rows, reads.

use super::*;

#[tokio::test]
async fn the_mirror_keeps_the_newest_version_and_honours_tombstones() {
    let Some((_db, store)) = open("mirror_rules").await else {
        return;
    };
    let newer = stored(store.append(class_updated(1, 2_000, "new")).await.unwrap());
    let older = stored(store.append(class_updated(2, 1_000, "old")).await.unwrap());
    let entities = store.list_entities(class_filter()).await.unwrap();
    assert_eq!(entities.len(), 1);
    assert_eq!(
        entities[0].data["name"], "new",
        "an older update changes nothing"
    );
    assert_eq!(entities[0].event_seq, newer);
    assert_eq!(entities[0].id, "7");
    assert_eq!(entities[0].data["id"], 7);
    let effect = |seq: EventSeq| {
        let store = store.clone();
        async move {
            store
                .get_event(seq)
                .await
                .unwrap()
                .unwrap()
                .summary
                .mirror_effect
        }
    };
    assert_eq!(effect(newer).await.as_deref(), Some("applied"));
    assert_eq!(effect(older).await.as_deref(), Some("stale"));
    let deleted = stored(
        store
            .append(dreamclass(
                &uuid(3),
                "CLASS_DELETED",
                3_000,
                json!({"id": 7}),
            ))
            .await
            .unwrap(),
    );
    let blocked = stored(store.append(class_updated(4, 4_000, "late")).await.unwrap());
    assert_eq!(effect(deleted).await.as_deref(), Some("tombstoned"));
    assert_eq!(effect(blocked).await.as_deref(), Some("blocked"));
    assert!(
        store
            .list_entities(class_filter())
            .await
            .unwrap()
            .is_empty()
    );
    let all = store
        .list_entities(EntityFilter {
            include_deleted: true,
            ..class_filter()
        })
        .await
        .unwrap();
    assert!(all[0].deleted);
    assert_eq!(all[0].version_ms, 3_000);
    assert_eq!(
        all[0].data["name"], "new",
        "a tombstone keeps the last data"
    );
    let revived = stored(
        store
            .append(dreamclass(
                &uuid(5),
                "CLASS_CREATED",
                5_000,
                class(7, "again", "C7"),
            ))
            .await
            .unwrap(),
    );
    assert_eq!(effect(revived).await.as_deref(), Some("applied"));
    let history = store
        .entity_history("class", "7", "school", Some("school"), 10)
        .await
        .unwrap();
    let versions: Vec<i64> = history.iter().map(|e| e.version_ms).collect();
    assert_eq!(versions, [1_000, 2_000, 3_000, 4_000, 5_000]);
    let newest = store
        .entity_history("class", "7", "school", Some("school"), 2)
        .await
        .unwrap();
    assert_eq!(newest.len(), 2);
    assert_eq!(newest[0].version_ms, 4_000);
}

#[tokio::test]
async fn one_batch_applies_its_events_in_receive_order() {
    // A batch holds many events: appended together, they share commits.
    let Some((_db, store)) = open("mirror_batch").await else {
        return;
    };
    let mut tasks = Vec::new();
    for n in 0..50u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let e = dreamclass(
                &uuid(n),
                "CLASS_UPDATED",
                1_000 + (n as i64 % 7),
                class(n % 5, &format!("v{}", n % 7), "C"),
            );
            store.append(e).await.unwrap()
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let entities = store.list_entities(class_filter()).await.unwrap();
    assert_eq!(entities.len(), 5);
    for entity in &entities {
        // The stored event the entity holds is the newest version for its id
        // (the latest received among equals), whatever the batches were.
        let history = store
            .entity_history("class", &entity.id, "school", Some("school"), 100)
            .await
            .unwrap();
        let last = history.last().unwrap();
        assert_eq!(entity.event_seq, last.seq);
        assert_eq!(entity.version_ms, last.version_ms);
    }
}

#[tokio::test]
async fn entities_are_listed_with_filters_and_a_cursor() {
    let Some((_db, store)) = open("list_entities").await else {
        return;
    };
    for n in 0..4u64 {
        let e = dreamclass(
            &uuid(n),
            "CLASS_CREATED",
            1_000 + n as i64,
            class(n, &format!("c{n}"), if n % 2 == 0 { "even" } else { "odd" }),
        );
        store.append(e).await.unwrap();
    }
    let page = store
        .list_entities(EntityFilter {
            limit: 2,
            ..class_filter()
        })
        .await
        .unwrap();
    assert_eq!(
        page.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["0", "1"]
    );
    let next = store
        .list_entities(EntityFilter {
            after: Some(page[1].position),
            ..class_filter()
        })
        .await
        .unwrap();
    assert_eq!(
        next.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(),
        ["2", "3"]
    );
    let even = store
        .list_entities(EntityFilter {
            fields: vec![("code", FieldValue::Text("even".into()))],
            ..class_filter()
        })
        .await
        .unwrap();
    assert_eq!(even.len(), 2);
    let recent = store
        .list_entities(EntityFilter {
            since_version_ms: Some(1_002),
            ..class_filter()
        })
        .await
        .unwrap();
    assert_eq!(recent.len(), 2);
    let found = store
        .find_entities(Some(ProviderKind::DreamClass), "class", "3", None, None)
        .await
        .unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].tenant.as_deref(), Some("school"));
    assert!(
        store
            .find_entities(Some(ProviderKind::DreamClass), "class", "x", None, None)
            .await
            .unwrap()
            .is_empty()
    );
    let counts = store.mirror_counts().await.unwrap();
    let class = counts.iter().find(|c| c.kind == "class").unwrap();
    assert_eq!((class.live, class.deleted), (4, 0));
}

#[tokio::test]
async fn generic_and_loopwise_entities_keep_their_values_as_given() {
    let Some((_db, store)) = open("generic_mirror").await else {
        return;
    };
    let payment = json!({"type": "payment.paid", "data": {
        "id": "p1", "amount": 1900, "original_amount": 19.5, "refunded_amount": 2.0,
        "lineitems": [{"b": 1, "a": 2}],
        "user": {"id": "u1", "email": "a@b.c", "name": "U", "phone_number": null,
                 "third_party_id": null},
        "trade_no": "T1", "currency": "TWD", "refunded_at": null, "payment_type": "credit",
        "affiliate_code": null, "remark": null,
        "payment_method_details": {"last_four": "4242", "brand": "visa"},
        "paid_at": "2026-01-01T00:00:00Z", "created_at": "2026-01-01T00:00:00Z",
        "payment_state": "paid"
    }});
    let e = event(
        ProviderKind::Loopwise,
        "shop",
        serde_json::to_vec(&payment).unwrap(),
        1_000,
    );
    assert_eq!(e.status, EventStatus::Ok, "{:?}", e.status_reason);
    store.append(e).await.unwrap();
    let found = store
        .find_entities(Some(ProviderKind::Loopwise), "payment", "p1", None, None)
        .await
        .unwrap();
    assert_eq!(found.len(), 1, "{found:?}");
    let data = &found[0].data;
    assert_eq!(data["amount"], json!(1900));
    assert!(data["amount"].is_i64());
    assert_eq!(data["original_amount"], json!(19.5));
    assert!(data["refunded_amount"].is_f64());
    assert_eq!(data["lineitems"], json!([{"b": 1, "a": 2}]));
    assert_eq!(found[0].tenant, None);
    // An undocumented DreamClass type lives in the generic table with its data as sent.
    let odd = dreamclass(
        &uuid(9),
        "WIDGET_UPDATED",
        1_000,
        json!({"id": 3, "z": 1, "a": [1]}),
    );
    assert_eq!(odd.status, EventStatus::UnknownType);
    let kind = odd.entity.kind.clone();
    store.append(odd).await.unwrap();
    let generic = store
        .find_entities(Some(ProviderKind::DreamClass), &kind, "3", None, None)
        .await
        .unwrap();
    assert_eq!(generic.len(), 1);
    assert_eq!(
        serde_json::to_string(&generic[0].data).unwrap(),
        r#"{"id":3,"z":1,"a":[1]}"#
    );
    let counts = store.mirror_counts().await.unwrap();
    let widget = counts.iter().find(|c| c.kind == kind).unwrap();
    assert_eq!(widget.provider, Some(ProviderKind::DreamClass));
    assert!(!widget.typed);
}

fn course(event_type: &str, updated_at: &str, plans: &[&str]) -> NewEvent {
    course_with_id("c1", event_type, updated_at, plans)
}

fn course_with_id(id: &str, event_type: &str, updated_at: &str, plans: &[&str]) -> NewEvent {
    let plans: Vec<Value> = plans
        .iter()
        .map(|id| {
            json!({
                "id": id, "name": format!("plan {id}"), "description": "d", "currency": "TWD",
                "amount": 5000, "created_at": "2023-05-15T14:35:00Z",
                "updated_at": "2023-05-15T14:35:00Z"
            })
        })
        .collect();
    let body = json!({"type": event_type, "data": {
        "id": id, "name": "Course", "description": "About", "state": "published",
        "type": "Course", "slug": "course", "created_at": "2023-05-15T14:30:00Z",
        "updated_at": updated_at, "plans": plans
    }});
    event(
        ProviderKind::Loopwise,
        "shop",
        serde_json::to_vec(&body).unwrap(),
        1_000,
    )
}

#[tokio::test]
async fn a_course_keeps_the_plans_of_its_newest_version() {
    let Some((_db, store)) = open("course_plans").await else {
        return;
    };
    let created = course("course.created", "2024-01-01T00:00:00Z", &["p1", "p2"]);
    assert_eq!(
        created.status,
        EventStatus::Ok,
        "{:?}",
        created.status_reason
    );
    store.append(created).await.unwrap();
    let plans = |store: PostgresStore| async move {
        let found = store
            .find_entities(Some(ProviderKind::Loopwise), "course", "c1", None, None)
            .await
            .unwrap();
        found[0].data["plans"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["id"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    assert_eq!(plans(store.clone()).await, ["p1", "p2"]);
    // An older update in the same batch as a newer one: the newer plans stay.
    let (newer, older) = tokio::join!(
        store.append(course("course.updated", "2024-03-01T00:00:00Z", &["p3"])),
        store.append(course("course.updated", "2024-02-01T00:00:00Z", &["p9"]))
    );
    newer.unwrap();
    older.unwrap();
    assert_eq!(plans(store.clone()).await, ["p3"]);
    let found = store
        .find_entities(Some(ProviderKind::Loopwise), "course", "c1", None, None)
        .await
        .unwrap();
    assert_eq!(found[0].data["plans"][0]["amount"], json!(5000));
    assert_eq!(found[0].data["type"], "Course");
    // A page of several courses: each gets its own plans, in order.
    store
        .append(course_with_id(
            "c2",
            "course.created",
            "2024-01-01T00:00:00Z",
            &["q1", "q2", "q3"],
        ))
        .await
        .unwrap();
    let page = store
        .list_entities(EntityFilter {
            kind: "course".into(),
            provider: Some(ProviderKind::Loopwise),
            limit: 10,
            ..EntityFilter::default()
        })
        .await
        .unwrap();
    let ids: Vec<Vec<&str>> = page
        .iter()
        .map(|e| {
            e.data["plans"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["id"].as_str().unwrap())
                .collect()
        })
        .collect();
    assert_eq!(ids, [vec!["p3"], vec!["q1", "q2", "q3"]]);
}
