//! Retries are stored once, whichever level of the dedupe index holds the key: the
//! writer's memory (recent events) or the `dedupe_keys` table (settled in rounds),
//! across rounds, restarts in the middle of a round, and retention.

mod common;

use bytes::Bytes;
use classhook::config::{Config, Source};
use classhook::ingest;
use classhook::provider::dreamclass;
use classhook::store::{AppendOutcome, EventSeq, Store, StoreOptions};
use common::*;
use serde_json::json;

/// A store whose writer settles its keys after only a few events, so that a test
/// crosses many settling rounds.
async fn open(config: &Config) -> Store {
    Store::open(
        &config.store_location(),
        StoreOptions {
            dedupe_settle_after: Some(8),
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap()
}

/// A signed DreamClass request with a chosen id and class name.
fn request(source: &Source, id: &str, name: &str) -> classhook::event::NewEvent {
    request_at(source, id, name, 1_700_000_000_000)
}

/// The same, received at `received_at_ms`.
fn request_at(
    source: &Source,
    id: &str,
    name: &str,
    received_at_ms: i64,
) -> classhook::event::NewEvent {
    let body = json!({
        "id": id, "type": "CLASS_UPDATED", "tenant": "my-school", "timestamp": 1_700_000_000_000i64,
        "signature": dreamclass::sign(SCHOOL_SECRET.as_bytes(), id),
        "data": {"id": 1, "name": name},
    });
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let body = Bytes::from(serde_json::to_vec(&body).unwrap());
    ingest::authenticate(source, &headers, body, received_at_ms).unwrap()
}

fn id(n: usize) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

fn school(config: &Config) -> &Source {
    config.sources.iter().find(|s| s.name == "school").unwrap()
}

async fn stored_seq(store: &Store, event: classhook::event::NewEvent) -> EventSeq {
    match store.append(event).await.unwrap() {
        AppendOutcome::Stored { seq } => seq,
        other => panic!("expected a new event, got {other:?}"),
    }
}

#[tokio::test]
async fn retries_are_recognised_across_settling_rounds_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), "", SOURCES);
    let source = school(&config);
    let store = open(&config).await;
    let mut seqs = Vec::new();
    for n in 0..100 {
        seqs.push(stored_seq(&store, request(source, &id(n), "A")).await);
        // A quick retry (still in memory) and a late one (long settled).
        for retried in [n, n / 2] {
            let outcome = store
                .append(request(source, &id(retried), "A"))
                .await
                .unwrap();
            assert_eq!(outcome, AppendOutcome::Duplicate { seq: seqs[retried] });
        }
    }
    // Stop in the middle of a settling round, then start again.
    drop(store);
    let store = open(&config).await;
    for (n, seq) in seqs.iter().enumerate() {
        let outcome = store.append(request(source, &id(n), "A")).await.unwrap();
        assert_eq!(outcome, AppendOutcome::Duplicate { seq: *seq }, "event {n}");
        let found = store
            .find_event("school", &format!("id:{}", id(n)))
            .await
            .unwrap();
        assert_eq!(
            found.unwrap().summary.seq,
            *seq,
            "event {n} is found by its key"
        );
    }
    let outcome = store.append(request(source, &id(3), "B")).await.unwrap();
    assert_eq!(
        outcome,
        AppendOutcome::Conflict { seq: seqs[3] },
        "same id, other body"
    );
    assert_eq!(store.count_events().await.unwrap(), 100);
    let stored = store.get_event(seqs[3]).await.unwrap().unwrap();
    // The first copy, its quick retry, late retries from events 6 and 7, and the
    // retry after the restart; the conflicting copy is counted apart.
    assert_eq!(stored.summary.times_seen, 5);
    assert_eq!(stored.summary.conflicts, 1);
}

#[tokio::test]
async fn the_same_key_twice_in_one_group_commit_is_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), "", SOURCES);
    let source = school(&config);
    let store = open(&config).await;
    let mut copies = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (store, event) = (store.clone(), request(source, &id(7), "A"));
        copies.spawn(async move { store.append(event).await.unwrap() });
    }
    let mut stored = 0;
    while let Some(outcome) = copies.join_next().await {
        if matches!(outcome.unwrap(), AppendOutcome::Stored { .. }) {
            stored += 1;
        }
    }
    assert_eq!(stored, 1);
    assert_eq!(store.count_events().await.unwrap(), 1);
}

#[tokio::test]
async fn after_retention_sequence_numbers_keep_growing_and_keys_go_with_their_events() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), "", SOURCES);
    let source = school(&config);
    let store = open(&config).await;
    let mut last = EventSeq(0);
    for n in 0..20 {
        last = stored_seq(&store, request(source, &id(n), "A")).await;
    }
    let pruned = store.prune_events(i64::MAX).await.unwrap();
    assert_eq!(pruned, 20);
    // A copy of a pruned event is new again, under a new, higher sequence number,
    // both before and after a restart.
    let again = stored_seq(&store, request(source, &id(0), "A")).await;
    assert!(again > last, "{again} > {last}");
    drop(store);
    let store = open(&config).await;
    let fresh = stored_seq(&store, request(source, &id(100), "A")).await;
    assert!(fresh > again, "{fresh} > {again}");
    let outcome = store.append(request(source, &id(0), "A")).await.unwrap();
    assert_eq!(outcome, AppendOutcome::Duplicate { seq: again });
}

/// A DreamClass envelope with its fields in the order given, as JSON text.
fn envelope_text(id: &str, pretty: bool, reorder: bool) -> Vec<u8> {
    let mut fields = vec![
        ("id", json!(id)),
        ("type", json!("CLASS_UPDATED")),
        ("tenant", json!("my-school")),
        ("timestamp", json!(1_700_000_000_000i64)),
        (
            "signature",
            json!(dreamclass::sign(SCHOOL_SECRET.as_bytes(), id)),
        ),
        (
            "data",
            json!({"id": 1, "code": "c-1", "name": "A", "startDate": "2024-01-01",
                   "endDate": "2024-06-30", "capacity": 20, "description": null}),
        ),
    ];
    if reorder {
        fields.reverse();
    }
    let value = serde_json::Value::Object(
        fields
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
    );
    if pretty {
        serde_json::to_vec_pretty(&value).unwrap()
    } else {
        serde_json::to_vec(&value).unwrap()
    }
}

#[tokio::test]
async fn the_same_event_with_other_spacing_or_key_order_is_a_retry_not_a_conflict() {
    let gw = Gateway::start().await;
    let headers = vec![("content-type".to_string(), "application/json".to_string())];
    let id = id(42);
    let compact = envelope_text(&id, false, false);
    for body in [
        compact.clone(),
        envelope_text(&id, true, false),
        envelope_text(&id, true, true),
    ] {
        let answer = gw.post_raw("/hooks/school", &headers, body).await;
        assert_eq!(answer.status, 200, "{}", answer.json);
    }
    let stored = gw
        .store
        .find_event("school", &format!("id:{id}"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.summary.times_seen, 3);
    assert_eq!(stored.summary.conflicts, 0);
    assert_eq!(stored.body, compact, "the first copy's bytes are kept");
    assert_eq!(gw.store.count_events().await.unwrap(), 1);
    assert!(gw.store.list_rejections(10).await.unwrap().is_empty());

    // Different data under the same id is still a conflict, logged with its sender.
    let mut changed: serde_json::Value = serde_json::from_slice(&compact).unwrap();
    changed["data"]["name"] = json!("B");
    let answer = gw
        .post_raw(
            "/hooks/school",
            &headers,
            serde_json::to_vec_pretty(&changed).unwrap(),
        )
        .await;
    assert_eq!(answer.status, 200);
    let stored = gw
        .store
        .get_event(stored.summary.seq)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (stored.summary.times_seen, stored.summary.conflicts),
        (3, 1)
    );
    let rejections = gw.store.list_rejections(10).await.unwrap();
    assert_eq!(rejections.len(), 1);
    assert_eq!(rejections[0].reason, "id_conflict");
    let remote = rejections[0].remote_addr.as_deref().unwrap_or_default();
    assert!(remote.starts_with("127.0.0.1:"), "{remote:?}");
    gw.stop().await;
}

#[tokio::test]
async fn last_seen_never_goes_back_when_copies_commit_out_of_order() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(dir.path(), "", SOURCES);
    let source = school(&config);
    let store = open(&config).await;
    let t = 1_700_000_000_000;
    let seq = stored_seq(&store, request_at(source, &id(9), "A", t)).await;
    let later = request_at(source, &id(9), "A", t + 5_000);
    assert!(matches!(
        store.append(later).await.unwrap(),
        AppendOutcome::Duplicate { .. }
    ));
    // A retry and a conflicting copy received earlier (another instance, a slower
    // request) commit after it: last seen stays the latest receipt.
    let earlier = request_at(source, &id(9), "A", t + 1_000);
    assert!(matches!(
        store.append(earlier).await.unwrap(),
        AppendOutcome::Duplicate { .. }
    ));
    let conflicting = request_at(source, &id(9), "B", t + 2_000);
    assert!(matches!(
        store.append(conflicting).await.unwrap(),
        AppendOutcome::Conflict { .. }
    ));
    let stored = store.get_event(seq).await.unwrap().unwrap();
    assert_eq!(stored.summary.times_seen, 3);
    assert_eq!(stored.summary.conflicts, 1);
    assert_eq!(stored.summary.last_seen_at_ms, t + 5_000);
}
