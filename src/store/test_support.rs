//! Events, subscriptions and lease requests as the store receives them, for the
//! backends' tests (each backend's tests share these).

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::deliver::subscription::SubscriptionSpec;
use crate::event::NewEvent;
use crate::provider::{Envelope, ProviderKind};
use crate::store::{Backend, ClaimRequest, Claimed, SubscriptionId};

/// An event as ingest would hand it to the store (signatures are not the store's
/// business).
pub fn event(provider: ProviderKind, source: &str, body: Vec<u8>, received_at_ms: i64) -> NewEvent {
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
pub fn dreamclass(id: &str, event_type: &str, timestamp: i64, data: Value) -> NewEvent {
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

pub fn uuid(n: u64) -> String {
    format!("00000000-0000-4000-8000-{n:012}")
}

/// A class as DreamClass documents it (a valid one, so it is mirrored).
pub fn class(id: u64, name: &str, code: &str) -> Value {
    json!({
        "id": id, "code": code, "name": name, "endDate": "2024-10-11", "capacity": 12,
        "startDate": "2023-12-11", "description": "Sample"
    })
}

pub fn student_period(id: u64) -> Value {
    json!({"id": id, "active": true, "studentId": 76, "addedAt": "2024-10-02T09:40:02.179+00:00"})
}

pub fn class_updated(n: u64, timestamp: i64, name: &str) -> NewEvent {
    dreamclass(&uuid(n), "CLASS_UPDATED", timestamp, class(7, name, "C7"))
}

pub fn subscription(name: &str, events: &[&str]) -> SubscriptionSpec {
    let mut spec = SubscriptionSpec::with_defaults(name.into());
    spec.url = "https://receiver.example/hook".into();
    spec.events = events.iter().map(|s| s.to_string()).collect();
    spec.normalize();
    spec
}

pub fn request(id: i64, capacity: usize, lease_until_ms: i64) -> ClaimRequest {
    ClaimRequest {
        subscription: SubscriptionId(id),
        capacity,
        lease_until_ms,
    }
}

/// Every batch the writer ended: its operations, how long it took, and whether it
/// committed.
#[derive(Default)]
pub struct BatchLog(std::sync::Mutex<Vec<(usize, Duration, bool)>>);

impl crate::store::CommitObserver for BatchLog {
    fn batch_committed(&self, operations: usize, duration: Duration, ok: bool) {
        self.0.lock().unwrap().push((operations, duration, ok));
    }
}

impl BatchLog {
    pub fn batches(&self) -> Vec<(usize, Duration, bool)> {
        self.0.lock().unwrap().clone()
    }

    pub fn clear(&self) {
        self.0.lock().unwrap().clear();
    }
}

/// When the deliveries of [`claim_every_delivery`] are leased (and, in the tests,
/// attempted).
pub const ATTEMPTED_AT: i64 = 1_700_000_000_000;

/// Gives `store` one subscription to every event and `count` events, and leases
/// all their deliveries at [`ATTEMPTED_AT`].
pub async fn claim_every_delivery(store: &impl Backend, count: u64) -> Vec<Claimed> {
    let sub = store
        .create_subscription(subscription("hooks", &["*"]))
        .await
        .unwrap();
    for n in 0..count {
        store.append(class_updated(n, 1_000, "A")).await.unwrap();
    }
    let claimed = store
        .claim_due(
            vec![request(sub.id.get(), 10, ATTEMPTED_AT + 30_000)],
            ATTEMPTED_AT,
        )
        .await
        .unwrap();
    assert_eq!(claimed.len() as u64, count);
    claimed
}
