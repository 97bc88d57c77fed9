//! Tests against the real server, through the `Backend` trait. Each test has a
//! database of its own; without a server they are skipped (see [`super::testing`]).

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use super::PostgresStore;
use super::testing::TestDatabase;
use crate::deliver::schedule::{Next, Outcome};
use crate::deliver::subscription::SubscriptionSpec;
use crate::event::{EventStatus, NewEvent};
use crate::mirror::FieldValue;
use crate::provider::{Envelope, ProviderKind};
use crate::store::{
    AppendOutcome, AttemptRecorded, AttemptResult, Backend, ClaimRequest, DeliveryFilter,
    DeliveryId, DeliveryState, EntityFilter, EventFilter, EventSeq, Lease, NewRejection,
    RejectionFilter, StoreError, StoreOptions, SubscriptionId,
};

/// A fresh database and a store open on it; `None`: skipped (no server).
async fn open(test: &str) -> Option<(TestDatabase, PostgresStore)> {
    open_with(test, StoreOptions::default()).await
}

async fn open_with(test: &str, options: StoreOptions) -> Option<(TestDatabase, PostgresStore)> {
    let db = TestDatabase::create(test).await?;
    let store = PostgresStore::open(db.url(), options).await.unwrap();
    Some((db, store))
}

/// An event as ingest would hand it to the store (signatures are not the store's
/// business).
fn event(provider: ProviderKind, source: &str, body: Vec<u8>, received_at_ms: i64) -> NewEvent {
    let envelope = Envelope::parse(provider, &body).unwrap();
    let described = envelope.describe();
    NewEvent {
        source: source.into(),
        provider,
        tenant: described.tenant,
        event_type: described.event_type,
        event_id: described.event_id,
        dedupe_key: described.dedupe_key,
        entity: described.entity,
        version_ms: described.version_ms.unwrap_or(received_at_ms),
        body_sha256: crate::crypto::sha256(&body),
        body: Bytes::from(body),
        headers: vec![("content-type".into(), "application/json".into())],
        remote_addr: Some("127.0.0.1".into()),
        received_at_ms,
        status: described.status,
        status_reason: described.status_reason,
        mirror: described.mirror,
    }
}

/// A DreamClass event with a chosen id, type, version and data.
fn dreamclass(id: &str, event_type: &str, timestamp: i64, data: Value) -> NewEvent {
    let body = json!({
        "id": id, "type": event_type, "tenant": "school", "signature": "c2ln",
        "timestamp": timestamp, "data": data,
    });
    event(
        ProviderKind::DreamClass,
        "school",
        serde_json::to_vec(&body).unwrap(),
        1_700_000_000_000,
    )
}

fn uuid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// A class as DreamClass documents it (a valid one, so it is mirrored).
fn class(id: u64, name: &str, code: &str) -> Value {
    json!({
        "id": id, "code": code, "name": name, "endDate": "2024-10-11", "capacity": 12,
        "startDate": "2023-12-11", "description": "Sample"
    })
}

fn student_period(id: u64) -> Value {
    json!({"id": id, "active": true, "studentId": 76, "addedAt": "2024-10-02T09:40:02.179+00:00"})
}

fn class_updated(n: u64, timestamp: i64, name: &str) -> NewEvent {
    dreamclass(&uuid(n), "CLASS_UPDATED", timestamp, class(7, name, "C7"))
}

fn stored(outcome: AppendOutcome) -> EventSeq {
    match outcome {
        AppendOutcome::Stored { seq } => seq,
        other => panic!("expected a new event, got {other:?}"),
    }
}

#[tokio::test]
async fn migrations_are_idempotent_concurrent_and_refuse_a_newer_schema() {
    let Some(db) = TestDatabase::create("migrations").await else {
        return;
    };
    let (a, b) = tokio::join!(
        PostgresStore::migrate(db.url()),
        PostgresStore::migrate(db.url())
    );
    a.unwrap();
    b.unwrap();
    let store = PostgresStore::open(db.url(), StoreOptions::default())
        .await
        .unwrap();
    store.ping(Duration::from_secs(5)).await.unwrap();
    let client = store.client().await.unwrap();
    let versions: i64 = client
        .query_one("SELECT count(*) FROM classhook_schema", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(versions, super::migrations::known_version());
    client
        .execute("INSERT INTO classhook_schema (version) VALUES (999)", &[])
        .await
        .unwrap();
    match PostgresStore::open(db.url(), StoreOptions::default()).await {
        Err(StoreError::SchemaTooNew { found: 999, .. }) => {}
        Err(other) => panic!("expected SchemaTooNew, got {other}"),
        Ok(_) => panic!("a newer schema was accepted"),
    }
}

#[tokio::test]
async fn an_unreachable_server_is_not_ready_and_no_password_is_said() {
    let started = std::time::Instant::now();
    let url = "postgres://app:s3cret@127.0.0.1:1/none";
    match PostgresStore::open(url, StoreOptions::default()).await {
        Err(StoreError::NotReady(message)) => {
            assert!(message.contains("unreachable"), "{message}");
            assert!(!message.contains("s3cret"), "{message}");
        }
        Err(other) => panic!("expected NotReady, got {other}"),
        Ok(_) => panic!("opened a store on a closed port"),
    }
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[tokio::test]
async fn the_location_has_no_password() {
    let Some((db, store)) = open("location").await else {
        return;
    };
    assert_eq!(store.location(), super::redact_url(db.url()));
    assert!(store.location().contains("127.0.0.1"));
}

#[tokio::test]
async fn the_same_event_twice_is_one_row_seen_twice() {
    let Some((_db, store)) = open("same_event_twice").await else {
        return;
    };
    let first = class_updated(1, 1_000, "A");
    let seq = stored(store.append(first.clone()).await.unwrap());
    let mut retry = first.clone();
    retry.received_at_ms += 5_000;
    assert_eq!(
        store.append(retry).await.unwrap(),
        AppendOutcome::Duplicate { seq }
    );
    // The same JSON value with other spacing and key order is a retry too.
    let value: Value = serde_json::from_slice(&first.body).unwrap();
    let pretty = serde_json::to_vec_pretty(&value).unwrap();
    let respaced = event(
        ProviderKind::DreamClass,
        "school",
        pretty,
        1_700_000_009_000,
    );
    assert_eq!(
        store.append(respaced).await.unwrap(),
        AppendOutcome::Duplicate { seq }
    );
    assert_eq!(store.count_events().await.unwrap(), 1);
    let kept = store.get_event(seq).await.unwrap().unwrap();
    assert_eq!(kept.summary.times_seen, 3);
    assert_eq!(kept.summary.last_seen_at_ms, 1_700_000_009_000);
    assert_eq!(kept.body, first.body.to_vec(), "the first body is kept");
    assert_eq!(kept.headers, first.headers);
    assert_eq!(kept.summary.conflicts, 0);
}

#[tokio::test]
async fn a_different_body_under_a_stored_key_is_a_conflict_never_a_replacement() {
    let Some((_db, store)) = open("conflict").await else {
        return;
    };
    let seq = stored(store.append(class_updated(1, 1_000, "A")).await.unwrap());
    assert_eq!(
        store.append(class_updated(1, 1_000, "B")).await.unwrap(),
        AppendOutcome::Conflict { seq }
    );
    let kept = store.get_event(seq).await.unwrap().unwrap();
    assert_eq!(kept.summary.conflicts, 1);
    assert_eq!(kept.summary.times_seen, 1);
    assert!(String::from_utf8_lossy(&kept.body).contains("\"A\""));
    let rejections = store
        .find_rejections(RejectionFilter {
            reason: Some("id_conflict".into()),
            limit: 10,
            ..RejectionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(rejections.len(), 1);
    assert!(String::from_utf8_lossy(&rejections[0].body).contains("\"B\""));
    assert_eq!(rejections[0].source.as_deref(), Some("school"));
    assert_eq!(rejections[0].status, 200);
}

#[tokio::test]
async fn concurrent_retries_are_stored_once() {
    let Some((_db, store)) = open("concurrent_retries").await else {
        return;
    };
    let event = class_updated(1, 1_000, "A");
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let (store, event) = (store.clone(), event.clone());
        tasks.push(tokio::spawn(
            async move { store.append(event).await.unwrap() },
        ));
    }
    let mut outcomes = Vec::new();
    for task in tasks {
        outcomes.push(task.await.unwrap());
    }
    let new: Vec<_> = outcomes
        .iter()
        .filter(|o| matches!(o, AppendOutcome::Stored { .. }))
        .collect();
    assert_eq!(new.len(), 1, "{outcomes:?}");
    let seq = new[0].seq();
    assert!(outcomes.iter().all(|o| o.seq() == seq));
    assert_eq!(store.count_events().await.unwrap(), 1);
    let kept = store.get_event(seq).await.unwrap().unwrap();
    assert_eq!(kept.summary.times_seen, 32);
}

#[tokio::test]
async fn two_stores_on_one_database_store_a_retry_once() {
    let Some((db, a)) = open("two_instances").await else {
        return;
    };
    let b = PostgresStore::open(db.url(), StoreOptions::default())
        .await
        .unwrap();
    let event = class_updated(1, 1_000, "A");
    let (x, y) = tokio::join!(a.append(event.clone()), b.append(event.clone()));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.seq(), y.seq());
    assert_eq!(
        [x, y]
            .iter()
            .filter(|o| matches!(o, AppendOutcome::Stored { .. }))
            .count(),
        1
    );
    assert_eq!(a.count_events().await.unwrap(), 1);
}

#[tokio::test]
async fn an_event_that_waited_past_the_commit_lag_is_not_stored() {
    let options = StoreOptions {
        max_commit_lag: Duration::ZERO,
        ..StoreOptions::default()
    };
    let Some((_db, store)) = open_with("commit_lag", options).await else {
        return;
    };
    match store.append(class_updated(1, 1_000, "A")).await {
        Err(StoreError::Timeout(_)) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(store.count_events().await.unwrap(), 0);
}

#[tokio::test]
async fn rejections_are_logged_without_waiting() {
    let Some((_db, store)) = open("rejections").await else {
        return;
    };
    for n in 0..3 {
        store.record_rejection(NewRejection {
            at_ms: n,
            source: None,
            reason: "unknown_source".into(),
            status: 404,
            message: "no such source".into(),
            body: vec![b'x'; 5000],
            body_len: 5000,
            body_sha256: Some([7; 32]),
            remote_addr: Some("10.0.0.1".into()),
        });
    }
    let mut logged = Vec::new();
    for _ in 0..100 {
        logged = store.list_rejections(10).await.unwrap();
        if logged.len() == 3 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(logged.len(), 3);
    assert_eq!(logged[0].at_ms, 2, "newest first");
    assert_eq!(logged[0].body.len(), crate::store::REJECTION_BODY_PREFIX);
    assert_eq!(logged[0].body_len, 5000);
    assert_eq!(logged[0].body_sha256.as_deref(), Some(&[7u8; 32][..]));
    assert_eq!(store.dropped_rejections(), 0);
    let older = store
        .find_rejections(RejectionFilter {
            before_id: Some(logged[0].id),
            limit: 10,
            ..RejectionFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(older.len(), 2);
}

#[tokio::test]
async fn events_are_listed_with_every_filter() {
    let Some((_db, store)) = open("list_events").await else {
        return;
    };
    let mut seqs = Vec::new();
    for (n, event_type) in [
        "CLASS_UPDATED",
        "CLASS_CREATED",
        "STUDENT_PERIOD_CREATED",
        "CLASS_UPDATED",
    ]
    .into_iter()
    .enumerate()
    {
        let data = match event_type {
            "STUDENT_PERIOD_CREATED" => student_period(n as u64),
            _ => class(n as u64, "c", "c"),
        };
        let mut e = dreamclass(&uuid(n as u64), event_type, 1_000, data);
        e.received_at_ms = 1_000 * (n as i64 + 1);
        seqs.push(stored(store.append(e).await.unwrap()));
    }
    let list = |filter: EventFilter| {
        let store = store.clone();
        async move {
            store
                .list_events(EventFilter {
                    limit: 50,
                    ..filter
                })
                .await
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        list(EventFilter::default()).await,
        [seqs[3], seqs[2], seqs[1], seqs[0]]
    );
    let prefix = list(EventFilter {
        event_type: Some("CLASS_*".into()),
        ..EventFilter::default()
    })
    .await;
    assert_eq!(prefix, [seqs[3], seqs[1], seqs[0]]);
    let exact = list(EventFilter {
        event_type: Some("CLASS_CREATED".into()),
        ..EventFilter::default()
    })
    .await;
    assert_eq!(exact, [seqs[1]]);
    // `_` in a prefix is itself, not a wildcard.
    let literal = list(EventFilter {
        event_type: Some("CLASS_U*".into()),
        ..EventFilter::default()
    })
    .await;
    assert_eq!(literal, [seqs[3], seqs[0]]);
    assert_eq!(
        list(EventFilter {
            event_type: Some("*".into()),
            ..EventFilter::default()
        })
        .await
        .len(),
        4
    );
    let window = list(EventFilter {
        since_ms: Some(2_000),
        until_ms: Some(4_000),
        ..EventFilter::default()
    })
    .await;
    assert_eq!(window, [seqs[2], seqs[1]]);
    let page = list(EventFilter {
        before_seq: Some(seqs[2]),
        ..EventFilter::default()
    })
    .await;
    assert_eq!(page, [seqs[1], seqs[0]]);
    let none = list(EventFilter {
        source: Some("other".into()),
        ..EventFilter::default()
    })
    .await;
    assert!(none.is_empty());
    let ok = list(EventFilter {
        status: Some(EventStatus::Quarantined),
        tenant: Some("school".into()),
        ..EventFilter::default()
    })
    .await;
    assert!(ok.is_empty());
    let stats = store.stats(Some(2_000), None).await.unwrap();
    assert_eq!(stats.len(), 3);
    assert_eq!(stats[0].event_type, "CLASS_CREATED");
    assert_eq!(stats[1].events, 1, "CLASS_UPDATED from 2000 on");
}

#[tokio::test]
async fn events_are_found_by_key() {
    let Some((_db, store)) = open("find_by_key").await else {
        return;
    };
    let a = class_updated(1, 1_000, "A");
    let key = a.dedupe_key.clone();
    let mut b = a.clone();
    b.source = "another".into();
    let seq_a = stored(store.append(a).await.unwrap());
    let seq_b = stored(store.append(b).await.unwrap());
    let found = store.find_event("school", &key).await.unwrap().unwrap();
    assert_eq!(found.summary.seq, seq_a);
    assert!(
        store
            .find_event("school", "id:nothing")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(
        store.find_events_by_key(&key, None).await.unwrap(),
        [
            ("another".to_string(), seq_b),
            ("school".to_string(), seq_a)
        ]
    );
    assert_eq!(
        store
            .find_events_by_key(&key, Some("school"))
            .await
            .unwrap(),
        [("school".to_string(), seq_a)]
    );
}

fn class_filter() -> EntityFilter {
    EntityFilter {
        kind: "class".into(),
        provider: Some(ProviderKind::DreamClass),
        limit: 50,
        ..EntityFilter::default()
    }
}

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

fn subscription(name: &str, events: &[&str]) -> SubscriptionSpec {
    let mut spec = SubscriptionSpec::with_defaults(name.into());
    spec.url = "https://receiver.example/hook".into();
    spec.events = events.iter().map(|s| s.to_string()).collect();
    spec.normalize();
    spec
}

fn request(id: i64, capacity: usize, lease_until_ms: i64) -> ClaimRequest {
    ClaimRequest {
        subscription: SubscriptionId(id),
        capacity,
        lease_until_ms,
    }
}

#[tokio::test]
async fn deliveries_are_queued_with_their_event_and_leased_once() {
    let Some((_db, store)) = open("deliveries").await else {
        return;
    };
    let sub = store
        .create_subscription(subscription("hooks", &["CLASS_*"]))
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_subscription(subscription("hooks", &["*"]))
            .await,
        Err(StoreError::Conflict(_))
    ));
    let seq = stored(store.append(class_updated(1, 1_000, "A")).await.unwrap());
    store
        .append(dreamclass(
            &uuid(2),
            "STUDENT_PERIOD_CREATED",
            1,
            json!({"id": 1}),
        ))
        .await
        .unwrap();
    let now = 1_700_000_000_000;
    let claimed = store
        .claim_due(vec![request(sub.id.get(), 10, now + 30_000)], now)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "only the matching event");
    assert_eq!(claimed[0].event_seq, seq);
    assert!(claimed[0].webhook_id.starts_with("msg_"));
    assert!(
        store
            .claim_due(vec![request(sub.id.get(), 10, now + 60_000)], now + 1_000)
            .await
            .unwrap()
            .is_empty(),
        "not leased again before its lease ends"
    );
    // After the lease ended it is leased again, under a new token.
    let again = store
        .claim_due(vec![request(sub.id.get(), 10, now + 90_000)], now + 31_000)
        .await
        .unwrap();
    assert_eq!(again.len(), 1);
    assert_ne!(again[0].lease_token, claimed[0].lease_token);
    assert_eq!(again[0].webhook_id, claimed[0].webhook_id);
    let result = |claimed: &crate::store::Claimed, next: Next| AttemptResult {
        claimed: claimed.clone(),
        at_ms: now + 32_000,
        duration: Duration::from_millis(12),
        outcome: Outcome::Success { status: 200 },
        response: Some("ok".into()),
        next,
    };
    assert_eq!(
        store
            .record_attempt(result(&claimed[0], Next::Delivered))
            .await
            .unwrap(),
        AttemptRecorded::LeaseEnded,
        "a record under an old lease is ignored"
    );
    assert_eq!(
        store
            .record_attempt(result(&again[0], Next::Delivered))
            .await
            .unwrap(),
        AttemptRecorded::Kept {
            consecutive_failures: 0
        }
    );
    let (delivery, attempts) = store
        .get_delivery(again[0].delivery_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.state, DeliveryState::Delivered);
    assert_eq!(delivery.attempts, 1);
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status_code, Some(200));
    // A success is never undone by a late record.
    assert_eq!(
        store
            .record_attempt(result(&again[0], Next::Dead))
            .await
            .unwrap(),
        AttemptRecorded::LeaseEnded
    );
    let listed = store
        .list_deliveries(DeliveryFilter {
            subscription: Some("hooks".into()),
            limit: 10,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
}

#[tokio::test]
async fn paused_or_held_subscriptions_lease_nothing_and_failures_count() {
    let Some((_db, store)) = open("pause_hold").await else {
        return;
    };
    let sub = store
        .create_subscription(subscription("hooks", &["*"]))
        .await
        .unwrap();
    store.append(class_updated(1, 1_000, "A")).await.unwrap();
    let now = 1_700_000_000_000;
    store
        .set_paused("hooks", true, Some("maintenance".into()))
        .await
        .unwrap();
    assert!(!store.subscription_open(sub.id, now).await.unwrap());
    assert!(
        store
            .claim_due(vec![request(sub.id.get(), 5, now + 1)], now)
            .await
            .unwrap()
            .is_empty()
    );
    store.set_paused("hooks", false, None).await.unwrap();
    store.hold_subscription(sub.id, now + 10_000).await.unwrap();
    assert!(!store.subscription_open(sub.id, now).await.unwrap());
    assert!(
        store
            .claim_due(vec![request(sub.id.get(), 5, now + 1)], now)
            .await
            .unwrap()
            .is_empty()
    );
    let claimed = store
        .claim_due(vec![request(sub.id.get(), 5, now + 40_000)], now + 10_000)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let failed = AttemptResult {
        claimed: claimed[0].clone(),
        at_ms: now + 10_001,
        duration: Duration::from_millis(5),
        outcome: Outcome::Failed {
            status: Some(500),
            error: None,
        },
        response: None,
        next: Next::RetryAt(now + 20_000),
    };
    assert_eq!(
        store.record_attempt(failed).await.unwrap(),
        AttemptRecorded::Kept {
            consecutive_failures: 1
        }
    );
    let claimed = store
        .claim_due(vec![request(sub.id.get(), 5, now + 60_000)], now + 20_000)
        .await
        .unwrap();
    assert_eq!(claimed[0].round_attempts, 1);
    // A 410 pauses the subscription without using up a retry.
    let gone = AttemptResult {
        claimed: claimed[0].clone(),
        at_ms: now + 20_001,
        duration: Duration::from_millis(5),
        outcome: Outcome::Gone,
        response: None,
        next: Next::Pause,
    };
    store.record_attempt(gone).await.unwrap();
    let paused = store.get_subscription("hooks").await.unwrap().unwrap();
    assert!(paused.paused);
    assert_eq!(
        paused.paused_reason.as_deref(),
        Some("the endpoint answered 410 Gone")
    );
    let (delivery, _) = store
        .get_delivery(claimed[0].delivery_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(delivery.attempts, 2);
    assert_eq!(delivery.state, DeliveryState::Pending);
    assert_eq!(delivery.last_error.as_deref(), Some("HTTP 410"));
    let resumed = store.set_paused("hooks", false, None).await.unwrap();
    assert_eq!(resumed.consecutive_failures, 0);
}

#[tokio::test]
async fn releases_replays_and_abandons_follow_the_lease() {
    let Some((_db, store)) = open("replay").await else {
        return;
    };
    let sub = store
        .create_subscription(subscription("hooks", &["*"]))
        .await
        .unwrap();
    store.append(class_updated(1, 1_000, "A")).await.unwrap();
    let now = 1_700_000_000_000;
    let claimed = store
        .claim_due(vec![request(sub.id.get(), 5, now + 30_000)], now)
        .await
        .unwrap();
    let id = claimed[0].delivery_id;
    assert!(matches!(
        store.replay_delivery(id, now).await,
        Err(StoreError::Conflict(_))
    ));
    assert_eq!(
        store
            .replay_subscription("hooks", false, None, None, now)
            .await
            .unwrap(),
        0,
        "a leased delivery is skipped"
    );
    store
        .release(vec![Lease {
            delivery: id,
            token: claimed[0].lease_token,
        }])
        .await
        .unwrap();
    let claimed = store
        .claim_due(vec![request(sub.id.get(), 5, now + 30_000)], now + 1)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "released leases are due again");
    store
        .abandon(&claimed[0], "the event is gone".into())
        .await
        .unwrap();
    let (delivery, _) = store.get_delivery(id).await.unwrap().unwrap();
    assert_eq!(delivery.state, DeliveryState::Dead);
    assert_eq!(
        store
            .replay_subscription("hooks", true, None, None, now + 2)
            .await
            .unwrap(),
        1
    );
    store.replay_delivery(id, now + 3).await.unwrap();
    assert!(matches!(
        store.replay_delivery(DeliveryId(999_999), now).await,
        Err(StoreError::NotFound(_))
    ));
    let (delivery, _) = store.get_delivery(id).await.unwrap().unwrap();
    assert_eq!(delivery.state, DeliveryState::Pending);
    assert_eq!(delivery.next_attempt_at_ms, now + 3);
}

#[tokio::test]
async fn backfill_config_sync_and_deletion() {
    let Some((_db, store)) = open("backfill").await else {
        return;
    };
    for n in 0..3 {
        store.append(class_updated(n, 1_000, "A")).await.unwrap();
    }
    store
        .sync_config_subscriptions(vec![subscription("late", &["CLASS_UPDATED"])])
        .await
        .unwrap();
    assert_eq!(store.backfill("late", None, None, 5).await.unwrap(), 3);
    assert_eq!(
        store.backfill("late", None, None, 5).await.unwrap(),
        0,
        "once"
    );
    assert!(matches!(
        store.delete_subscription("late").await,
        Err(StoreError::Conflict(_))
    ));
    assert!(matches!(
        store.update_subscription("late", Box::new(Ok)).await,
        Err(StoreError::Conflict(_))
    ));
    store.sync_config_subscriptions(Vec::new()).await.unwrap();
    assert!(store.list_subscriptions().await.unwrap().is_empty());
    let api = store
        .create_subscription(subscription("api", &["*"]))
        .await
        .unwrap();
    let updated = store
        .update_subscription(
            "api",
            Box::new(|mut spec| {
                spec.max_in_flight = 3;
                Ok(spec)
            }),
        )
        .await
        .unwrap();
    assert_eq!(updated.spec.max_in_flight, 3);
    assert_eq!(updated.id, api.id);
    assert!(matches!(
        store
            .update_subscription("api", Box::new(|_| Err("no".into())))
            .await,
        Err(StoreError::Invalid(_))
    ));
    store.delete_subscription("api").await.unwrap();
    assert!(store.get_subscription("api").await.unwrap().is_none());
}

#[tokio::test]
async fn pruning_deletes_old_events_with_their_deliveries_but_keeps_the_mirror() {
    let Some((_db, store)) = open("prune").await else {
        return;
    };
    store
        .create_subscription(subscription("hooks", &["*"]))
        .await
        .unwrap();
    for n in 0..4u64 {
        let mut e = class_updated(n, 1_000 + n as i64, "A");
        e.received_at_ms = 1_000 * (n as i64 + 1);
        store.append(e).await.unwrap();
    }
    assert_eq!(store.prune_events(3_000).await.unwrap(), 2);
    assert_eq!(store.count_events().await.unwrap(), 2);
    let deliveries = store
        .list_deliveries(DeliveryFilter {
            limit: 10,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 2);
    assert_eq!(store.list_entities(class_filter()).await.unwrap().len(), 1);
    // A pruned key can be stored again, under a new, larger seq.
    let again = stored(store.append(class_updated(0, 999, "A")).await.unwrap());
    assert!(again > deliveries[0].event_seq);
}

#[tokio::test]
async fn a_rebuild_replays_every_event_into_the_same_mirror() {
    let Some((_db, store)) = open("rebuild").await else {
        return;
    };
    for n in 0..20u64 {
        let e = dreamclass(
            &uuid(n),
            if n % 6 == 5 {
                "CLASS_DELETED"
            } else {
                "CLASS_UPDATED"
            },
            1_000 + (n as i64 * 37) % 11,
            class(n % 4, &format!("v{n}"), "C"),
        );
        store.append(e).await.unwrap();
    }
    let all = EntityFilter {
        include_deleted: true,
        ..class_filter()
    };
    let before = store.list_entities(all.clone()).await.unwrap();
    // Damage the mirror: the rebuild puts it right.
    store
        .client()
        .await
        .unwrap()
        .batch_execute(
            "UPDATE mirror_class SET name = 'wrong'; UPDATE events SET mirror_effect = NULL",
        )
        .await
        .unwrap();
    let report = store
        .rebuild_mirror(crate::store::NoProgress::shared())
        .await
        .unwrap();
    assert_eq!(report.events, 20);
    assert_eq!(report.redescribed, 0);
    let after = store.list_entities(all.clone()).await.unwrap();
    let strip = |v: Vec<crate::store::Entity>| {
        v.into_iter()
            .map(|e| (e.id, e.deleted, e.version_ms, e.event_seq, e.data))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(after), strip(before));
    assert!(
        store
            .list_events(EventFilter {
                limit: 50,
                ..EventFilter::default()
            })
            .await
            .unwrap()
            .iter()
            .all(|e| e.mirror_effect.is_some())
    );
    // Ingest goes on afterwards (its statements survive the swap).
    store
        .append(class_updated(100, 9_000, "after"))
        .await
        .unwrap();
    let entity = store
        .find_entities(Some(ProviderKind::DreamClass), "class", "7", None, None)
        .await
        .unwrap();
    assert_eq!(entity[0].data["name"], "after");
}

#[tokio::test]
async fn an_append_that_fails_fails_alone_and_its_batch_commits() {
    let Some((_db, store)) = open("isolation").await else {
        return;
    };
    // PostgreSQL text cannot hold NUL: this append fails in the database.
    let mut bad = class_updated(0, 1_000, "bad");
    bad.event_id = Some("a\0b".into());
    let mut tasks = Vec::new();
    for n in 1..=20u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            store.append(class_updated(n, 1_000 + n as i64, "ok")).await
        }));
    }
    let failing = {
        let store = store.clone();
        tokio::spawn(async move { store.append(bad).await })
    };
    for task in tasks {
        stored(task.await.unwrap().unwrap());
    }
    assert!(matches!(failing.await.unwrap(), Err(StoreError::Commit(_))));
    assert_eq!(store.count_events().await.unwrap(), 20);
    let entity = store.list_entities(class_filter()).await.unwrap();
    assert_eq!(entity[0].version_ms, 1_020);
}

#[tokio::test]
async fn concurrent_claims_never_lease_a_delivery_twice() {
    let Some((db, store)) = open("concurrent_claims").await else {
        return;
    };
    let other = PostgresStore::open(db.url(), StoreOptions::default())
        .await
        .unwrap();
    let sub = store
        .create_subscription(subscription("hooks", &["*"]))
        .await
        .unwrap();
    for n in 0..30u64 {
        store.append(class_updated(n, 1_000, "A")).await.unwrap();
    }
    let now = 1_700_000_000_000;
    let mut tasks = Vec::new();
    for worker in 0..6 {
        let store = if worker % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        let id = sub.id.get();
        tasks.push(tokio::spawn(async move {
            store
                .claim_due(vec![request(id, 4, now + 30_000)], now)
                .await
                .unwrap()
        }));
    }
    let mut leased = Vec::new();
    for task in tasks {
        leased.extend(task.await.unwrap().into_iter().map(|c| c.delivery_id));
    }
    assert_eq!(leased.len(), 24);
    leased.sort();
    leased.dedup();
    assert_eq!(leased.len(), 24, "every lease is of a different delivery");
}

/// A TCP relay to the local server that a test can cut and restore, to play a
/// database that goes away and comes back.
struct Relay {
    port: u16,
    tasks: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Relay {
    async fn start(port: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let tasks = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let connections = tasks.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let relay = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect("127.0.0.1:5432").await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                connections.lock().unwrap().push(relay);
            }
        });
        tasks.lock().unwrap().push(accept);
        Relay { port, tasks }
    }

    /// Closes every connection and stops listening.
    fn cut(&self) {
        for task in self.tasks.lock().unwrap().drain(..) {
            task.abort();
        }
    }
}

fn through(url: &str, port: u16) -> String {
    let mut url = url::Url::parse(url).unwrap();
    url.set_port(Some(port)).unwrap();
    url.to_string()
}

#[tokio::test]
async fn a_lost_server_is_not_ready_and_the_store_reconnects_when_it_returns() {
    let Some(db) = TestDatabase::create("outage").await else {
        return;
    };
    let relay = Relay::start(0).await;
    let url = through(db.url(), relay.port);
    let store = PostgresStore::open(&url, StoreOptions::default())
        .await
        .unwrap();
    store.append(class_updated(1, 1_000, "A")).await.unwrap();
    relay.cut();
    // Let the pools' connections notice.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let started = std::time::Instant::now();
    match store.append(class_updated(2, 1_000, "B")).await {
        Err(StoreError::NotReady(message)) => {
            assert!(message.contains("unreachable"), "{message}")
        }
        other => panic!("expected NotReady, got {other:?}"),
    }
    assert!(matches!(
        store.count_events().await,
        Err(StoreError::NotReady(_))
    ));
    assert!(store.ping(Duration::from_secs(10)).await.is_err());
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "no hang past the timeouts"
    );
    let relay = Relay::start(relay.port).await;
    store.append(class_updated(2, 1_000, "B")).await.unwrap();
    store.ping(Duration::from_secs(5)).await.unwrap();
    assert_eq!(store.count_events().await.unwrap(), 2);
    relay.cut();
}

#[tokio::test]
async fn a_rebuild_corrects_descriptions_while_ingest_goes_on() {
    let options = StoreOptions {
        rebuild_chunk: Some(7),
        ..StoreOptions::default()
    };
    let Some((_db, store)) = open_with("rebuild_live", options).await else {
        return;
    };
    for n in 0..40u64 {
        store
            .append(dreamclass(
                &uuid(n),
                "CLASS_UPDATED",
                1_000 + n as i64,
                class(n % 9, &format!("v{n}"), "C"),
            ))
            .await
            .unwrap();
    }
    store
        .client()
        .await
        .unwrap()
        .batch_execute(
            "UPDATE events SET entity_kind = 'wrong' WHERE seq IN (SELECT min(seq) FROM events)",
        )
        .await
        .unwrap();
    let ingest = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 100..160u64 {
                store
                    .append(dreamclass(
                        &uuid(n),
                        "CLASS_UPDATED",
                        1_000 + n as i64,
                        class(n % 9, &format!("v{n}"), "C"),
                    ))
                    .await
                    .unwrap();
            }
        })
    };
    let report = store
        .rebuild_mirror(crate::store::NoProgress::shared())
        .await
        .unwrap();
    ingest.await.unwrap();
    assert!(report.events >= 40);
    assert_eq!(report.redescribed, 1);
    let first = store
        .list_events(EventFilter {
            limit: 1000,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert!(first.iter().all(|e| e.entity_kind == "class"));
    assert_eq!(store.count_events().await.unwrap(), 100);
    // Whatever ran during the rebuild, each entity holds its newest event.
    for entity in store.list_entities(class_filter()).await.unwrap() {
        let history = store
            .entity_history("class", &entity.id, "school", Some("school"), 1)
            .await
            .unwrap();
        assert_eq!(entity.event_seq, history[0].seq, "entity {}", entity.id);
    }
    assert!(matches!(
        tokio::join!(
            store.rebuild_mirror(crate::store::NoProgress::shared()),
            store.rebuild_mirror(crate::store::NoProgress::shared())
        ),
        (Ok(_), Err(StoreError::Conflict(_)))
            | (Err(StoreError::Conflict(_)), Ok(_))
            | (Ok(_), Ok(_))
    ));
}

/// Appends/s of concurrent callers, for the report: `cargo test --lib
/// store::postgres::tests::throughput -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn throughput() {
    #[derive(Default)]
    struct Batches(std::sync::Mutex<(usize, usize, Duration)>);
    impl crate::store::CommitObserver for Batches {
        fn batch_committed(&self, operations: usize, duration: Duration, _ok: bool) {
            let mut b = self.0.lock().unwrap();
            b.0 += 1;
            b.1 += operations;
            b.2 += duration;
        }
    }
    let batches = std::sync::Arc::new(Batches::default());
    let options = StoreOptions {
        observer: Some(batches.clone()),
        ..StoreOptions::default()
    };
    let Some((_db, store)) = open_with("throughput", options).await else {
        return;
    };
    let (callers, per_caller) = (256u64, 80u64);
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for caller in 0..callers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            for n in 0..per_caller {
                let id = caller * per_caller + n;
                store
                    .append(dreamclass(
                        &uuid(id),
                        "CLASS_UPDATED",
                        1_000 + n as i64,
                        class(id % 5_000, "bench", "C"),
                    ))
                    .await
                    .unwrap();
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let elapsed = started.elapsed();
    let total = callers * per_caller;
    eprintln!(
        "{total} appends by {callers} concurrent callers in {elapsed:?}: {:.0}/s",
        total as f64 / elapsed.as_secs_f64()
    );
    let (count, operations, busy) = *batches.0.lock().unwrap();
    eprintln!(
        "{count} batches of {} on average, {:?} each",
        operations / count.max(1),
        busy / count.max(1) as u32
    );
}

#[tokio::test]
async fn a_subscription_made_by_one_instance_gets_the_events_another_stores() {
    let Some((db, a)) = open("shared_subscriptions").await else {
        return;
    };
    let b = PostgresStore::open(db.url(), StoreOptions::default())
        .await
        .unwrap();
    // B's writer has loaded the (empty) list before A creates the subscription.
    b.append(class_updated(1, 1_000, "A")).await.unwrap();
    let sub = a
        .create_subscription(subscription("hooks", &["CLASS_*"]))
        .await
        .unwrap();
    let seq = stored(b.append(class_updated(2, 1_000, "B")).await.unwrap());
    let now = 1_700_000_000_000;
    let claimed = a
        .claim_due(vec![request(sub.id.get(), 10, now + 1_000)], now)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    assert_eq!(claimed[0].event_seq, seq);
    a.delete_subscription("hooks").await.unwrap();
    // And a deleted one gets nothing more, nor fails B's appends.
    b.append(class_updated(3, 1_000, "C")).await.unwrap();
    assert!(
        b.list_deliveries(DeliveryFilter {
            limit: 10,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap()
        .is_empty()
    );
}

#[tokio::test]
async fn quarantined_events_are_kept_but_neither_mirrored_nor_delivered() {
    let Some((_db, store)) = open("quarantine").await else {
        return;
    };
    store
        .create_subscription(subscription("hooks", &["*"]))
        .await
        .unwrap();
    // A class without its documented fields does not match its schema.
    let odd = dreamclass(
        &uuid(1),
        "CLASS_UPDATED",
        1_000,
        json!({"id": 7, "name": 5}),
    );
    assert_eq!(odd.status, EventStatus::Quarantined);
    let seq = stored(store.append(odd).await.unwrap());
    let kept = store.get_event(seq).await.unwrap().unwrap();
    assert_eq!(kept.summary.status, EventStatus::Quarantined);
    assert_eq!(kept.summary.mirror_effect, None);
    assert!(
        store
            .list_entities(class_filter())
            .await
            .unwrap()
            .is_empty()
    );
    let listed = store
        .list_events(EventFilter {
            status: Some(EventStatus::Quarantined),
            limit: 10,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);
    assert!(
        store
            .list_deliveries(DeliveryFilter {
                limit: 10,
                ..DeliveryFilter::default()
            })
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn the_rejection_log_is_bounded() {
    let Some((_db, store)) = open("rejection_bound").await else {
        return;
    };
    store
        .client()
        .await
        .unwrap()
        .batch_execute(
            "INSERT INTO rejections (at_ms, reason, status, message, body, body_len)
             SELECT n, 'unknown_source', 404, 'm', '', 0 FROM generate_series(1, 10000) AS n",
        )
        .await
        .unwrap();
    store.append(class_updated(1, 1_000, "A")).await.unwrap();
    store.append(class_updated(1, 1_000, "B")).await.unwrap();
    let count: i64 = store
        .client()
        .await
        .unwrap()
        .query_one("SELECT count(*) FROM rejections", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        count,
        crate::store::postgres::events::REJECTION_LOG_CAPACITY
    );
    let newest = store.list_rejections(1).await.unwrap();
    assert_eq!(newest[0].reason, "id_conflict");
}

#[tokio::test]
async fn a_key_another_instance_stores_during_the_batch_is_a_retry_and_not_mirrored() {
    let Some((_db, store)) = open("insert_race").await else {
        return;
    };
    let event = class_updated(1, 1_000, "A");
    // Another instance's transaction holds the same key, not yet committed: the
    // batch's look-up does not see it, its insert waits for it.
    let mut other = store.client().await.unwrap();
    let tx = other.transaction().await.unwrap();
    let seq: i64 = tx
        .query_one(
            "INSERT INTO events (source, provider, dedupe_key, event_type, entity_kind,
                 entity_id, entity_op, version_ms, received_at_ms, status, body_sha256, body,
                 headers, last_seen_at_ms)
             VALUES ('school', 'dreamclass', $1, 'CLASS_UPDATED', 'class', '7', 'updated',
                 1000, 1, 'ok', $2, $3, '[]', 1)
             RETURNING seq",
            &[&event.dedupe_key, &&event.body_sha256[..], &&event.body[..]],
        )
        .await
        .unwrap()
        .get(0);
    let append = {
        let store = store.clone();
        tokio::spawn(async move { store.append(event).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !append.is_finished(),
        "the insert waits for the other transaction"
    );
    tx.commit().await.unwrap();
    assert_eq!(
        append.await.unwrap().unwrap(),
        AppendOutcome::Duplicate { seq: EventSeq(seq) }
    );
    assert!(
        store
            .list_entities(class_filter())
            .await
            .unwrap()
            .is_empty(),
        "the event planned for the mirror was not this batch's to apply"
    );
    // The next event about the entity is planned against the real mirror.
    store.append(class_updated(2, 2_000, "B")).await.unwrap();
    let entities = store.list_entities(class_filter()).await.unwrap();
    assert_eq!(entities[0].data["name"], "B");
}

/// The stored (basic_password, secret) of a subscription.
async fn stored_secrets(store: &PostgresStore, name: &str) -> (Option<String>, Option<String>) {
    let row = store
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT basic_password, secret FROM subscriptions WHERE name = $1",
            &[&name],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

fn with_secrets(name: &str) -> SubscriptionSpec {
    let mut spec = subscription(name, &["*"]);
    spec.secret = Some(crate::secret::Secret::new("whsec-plain"));
    spec.basic_auth = Some(("user".into(), crate::secret::Secret::new("pass-plain")));
    spec
}

#[tokio::test]
async fn subscription_secrets_are_sealed_rotated_and_forgotten() {
    use crate::store::sealed::{Sealer, SecretKey};
    let Some(db) = TestDatabase::create("sealed").await else {
        return;
    };
    let old = SecretKey::generate();
    let options = |secrets: Sealer| StoreOptions {
        secrets,
        ..StoreOptions::default()
    };
    // Plain text from before any key.
    let plain = PostgresStore::open(db.url(), options(Sealer::plain()))
        .await
        .unwrap();
    plain
        .create_subscription(with_secrets("early"))
        .await
        .unwrap();
    assert_eq!(
        stored_secrets(&plain, "early").await,
        (Some("pass-plain".into()), Some("whsec-plain".into()))
    );
    let first = PostgresStore::open(db.url(), options(Sealer::with_keys(old.clone(), None)))
        .await
        .unwrap();
    first
        .create_subscription(with_secrets("api"))
        .await
        .unwrap();
    let (password, secret) = stored_secrets(&first, "api").await;
    assert!(password.unwrap().starts_with("sealed:"));
    assert!(secret.unwrap().starts_with("sealed:"));
    let read = first.get_subscription("api").await.unwrap().unwrap();
    assert_eq!(read.spec.secret.unwrap().expose(), "whsec-plain");
    assert_eq!(
        first.reseal_subscription_secrets().await.unwrap(),
        1,
        "the early one"
    );
    assert!(
        stored_secrets(&first, "early")
            .await
            .1
            .unwrap()
            .starts_with("sealed:")
    );
    // Rotation: a new key, the old one as previous.
    let new = SecretKey::generate();
    let rotated = PostgresStore::open(
        db.url(),
        options(Sealer::with_keys(new.clone(), Some(old.clone()))),
    )
    .await
    .unwrap();
    assert_eq!(rotated.reseal_subscription_secrets().await.unwrap(), 2);
    assert_eq!(rotated.reseal_subscription_secrets().await.unwrap(), 0);
    let read = rotated.get_subscription("early").await.unwrap().unwrap();
    assert_eq!(read.spec.basic_auth.unwrap().1.expose(), "pass-plain");
    // The new key is lost: with only another key, nothing opens; forget them.
    let other = Sealer::with_keys(SecretKey::generate(), None);
    let withheld = PostgresStore::open(db.url(), options(Sealer::withheld()))
        .await
        .unwrap();
    let listed = withheld
        .forget_unreadable_secrets(other.clone(), true)
        .await
        .unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        stored_secrets(&withheld, "api").await.1.is_some(),
        "a dry run"
    );
    withheld
        .forget_unreadable_secrets(other, false)
        .await
        .unwrap();
    assert_eq!(stored_secrets(&withheld, "api").await, (None, None));
    let api = withheld.get_subscription("api").await.unwrap().unwrap();
    assert!(api.paused);
    assert_eq!(
        api.paused_reason.as_deref(),
        Some(crate::store::sealed::FORGOTTEN_REASON)
    );
}

#[tokio::test]
async fn queue_depths_and_backups() {
    let Some((_db, store)) = open("queue_depth").await else {
        return;
    };
    store
        .create_subscription(subscription("hooks", &["*"]))
        .await
        .unwrap();
    store.append(class_updated(1, 1_000, "A")).await.unwrap();
    let depths = store.delivery_queue().await.unwrap();
    assert_eq!(depths.len(), 1);
    assert_eq!((depths[0].pending, depths[0].dead), (1, 0));
    assert!(matches!(
        Backend::backup(&store, std::path::Path::new("/tmp/x")).await,
        Err(StoreError::Invalid(_))
    ));
}

#[tokio::test]
async fn two_bodies_under_one_new_key_in_one_batch_keep_the_first() {
    let Some((_db, store)) = open("batch_conflict").await else {
        return;
    };
    let (a, b) = (class_updated(1, 1_000, "A"), class_updated(1, 1_000, "B"));
    let (x, y) = tokio::join!(store.append(a), store.append(b));
    let (x, y) = (x.unwrap(), y.unwrap());
    assert_eq!(x.seq(), y.seq());
    let kinds = [x.as_str(), y.as_str()];
    assert!(
        kinds.contains(&"stored") && kinds.contains(&"conflict"),
        "{kinds:?}"
    );
    let kept = store.get_event(x.seq()).await.unwrap().unwrap();
    assert_eq!(kept.summary.conflicts, 1);
    let first = if x.as_str() == "stored" {
        "\"A\""
    } else {
        "\"B\""
    };
    assert!(String::from_utf8_lossy(&kept.body).contains(first));
    let entity = store.list_entities(class_filter()).await.unwrap();
    assert_eq!(
        entity[0].data["name"],
        first.trim_matches('"'),
        "the mirror holds the kept body"
    );
}

#[tokio::test]
async fn a_read_only_store_reads_and_refuses_writes() {
    let Some(db) = TestDatabase::create("read_only").await else {
        return;
    };
    assert!(matches!(
        PostgresStore::open_read_only(db.url()).await,
        Err(StoreError::NoDatabase(_))
    ));
    let store = PostgresStore::open(db.url(), StoreOptions::default())
        .await
        .unwrap();
    let mut spec = subscription("hooks", &["*"]);
    spec.secret = Some(crate::secret::Secret::new("whsec-x"));
    store.create_subscription(spec).await.unwrap();
    let seq = stored(store.append(class_updated(1, 1_000, "A")).await.unwrap());
    let reader = PostgresStore::open_read_only(db.url()).await.unwrap();
    assert!(reader.get_event(seq).await.unwrap().is_some());
    let hooks = reader.get_subscription("hooks").await.unwrap().unwrap();
    assert_eq!(
        hooks.spec.secret.unwrap().expose(),
        "",
        "secrets are withheld"
    );
    assert!(matches!(
        reader.append(class_updated(2, 1_000, "B")).await,
        Err(StoreError::WriterGone)
    ));
}

#[tokio::test]
async fn sslmode_require_verifies_the_server_certificate() {
    let Some(db) = TestDatabase::create("tls").await else {
        return;
    };
    // The local server's certificate is self-signed: TLS is attempted and refused.
    let url = format!("{}?sslmode=require", db.url());
    match PostgresStore::open(&url, StoreOptions::default()).await {
        Err(error) => {
            let message = error.to_string();
            assert!(message.contains("TLS handshake"), "{message}");
            assert!(message.contains("certificate"), "says why: {message}");
        }
        Ok(_) => panic!("an unverifiable certificate was accepted"),
    }
}

fn course(event_type: &str, updated_at: &str, plans: &[&str]) -> NewEvent {
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
        "id": "c1", "name": "Course", "description": "About", "state": "published",
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
}
