//! Tests against the real server, through the `Backend` trait. Each test has a
//! database of its own; without a server they are skipped (see [`super::testing`]).
//! This file holds what the test files share.

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

mod delivery;
mod events;
mod maintenance;
mod mirror;
mod plans;
mod server;

/// A fresh database and a store open on it; `None`: skipped (no server).
pub(super) async fn open(test: &str) -> Option<(TestDatabase, PostgresStore)> {
    open_with(test, StoreOptions::default()).await
}

pub(super) async fn open_with(
    test: &str,
    options: StoreOptions,
) -> Option<(TestDatabase, PostgresStore)> {
    let db = TestDatabase::create(test).await?;
    let store = PostgresStore::open(db.url(), options).await.unwrap();
    Some((db, store))
}

/// A connection of the test's own to its database, beside the store's.
pub(super) async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

/// Waits, up to 5 s, until a session of the test's database waits for a lock:
/// an advisory one (the batch lock), or (`advisory` false) any other kind (a row);
/// whether one did. `pg_locks` shows every database's, and other tests wait for
/// locks too.
pub(super) async fn a_session_waits_for_a_lock(
    client: &impl tokio_postgres::GenericClient,
    advisory: bool,
) -> bool {
    for _ in 0..500 {
        let waiting: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_locks
                 WHERE NOT granted AND (locktype = 'advisory') = $1 AND pid IN
                     (SELECT pid FROM pg_stat_activity WHERE datname = current_database())",
                &[&advisory],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    false
}

/// Every batch the writer ended: its operations, how long it took, and whether it
/// committed.
#[derive(Default)]
pub(super) struct BatchLog(std::sync::Mutex<Vec<(usize, Duration, bool)>>);

impl crate::store::CommitObserver for BatchLog {
    fn batch_committed(&self, operations: usize, duration: Duration, ok: bool) {
        self.0.lock().unwrap().push((operations, duration, ok));
    }
}

impl BatchLog {
    pub(super) fn batches(&self) -> Vec<(usize, Duration, bool)> {
        self.0.lock().unwrap().clone()
    }

    pub(super) fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// An event as ingest would hand it to the store (signatures are not the store's
/// business).
pub(super) fn event(
    provider: ProviderKind,
    source: &str,
    body: Vec<u8>,
    received_at_ms: i64,
) -> NewEvent {
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
        trace_parent: None,
    }
}

/// A DreamClass event with a chosen id, type, version and data.
pub(super) fn dreamclass(id: &str, event_type: &str, timestamp: i64, data: Value) -> NewEvent {
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

pub(super) fn uuid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// A class as DreamClass documents it (a valid one, so it is mirrored).
pub(super) fn class(id: u64, name: &str, code: &str) -> Value {
    json!({
        "id": id, "code": code, "name": name, "endDate": "2024-10-11", "capacity": 12,
        "startDate": "2023-12-11", "description": "Sample"
    })
}

pub(super) fn student_period(id: u64) -> Value {
    json!({"id": id, "active": true, "studentId": 76, "addedAt": "2024-10-02T09:40:02.179+00:00"})
}

pub(super) fn class_updated(n: u64, timestamp: i64, name: &str) -> NewEvent {
    dreamclass(&uuid(n), "CLASS_UPDATED", timestamp, class(7, name, "C7"))
}

pub(super) fn stored(outcome: AppendOutcome) -> EventSeq {
    match outcome {
        AppendOutcome::Stored { seq } => seq,
        other => panic!("expected a new event, got {other:?}"),
    }
}

pub(super) fn class_filter() -> EntityFilter {
    EntityFilter {
        kind: "class".into(),
        provider: Some(ProviderKind::DreamClass),
        limit: 50,
        ..EntityFilter::default()
    }
}

pub(super) fn subscription(name: &str, events: &[&str]) -> SubscriptionSpec {
    let mut spec = SubscriptionSpec::with_defaults(name.into());
    spec.url = "https://receiver.example/hook".into();
    spec.events = events.iter().map(|s| s.to_string()).collect();
    spec.normalize();
    spec
}

pub(super) fn request(id: i64, capacity: usize, lease_until_ms: i64) -> ClaimRequest {
    ClaimRequest {
        subscription: SubscriptionId(id),
        capacity,
        lease_until_ms,
    }
}
