//! Tests against the real server, through the `Backend` trait. Each test has a
//! database of its own; without a server they are skipped (see [`super::testing`]).
//! This file holds what the test files share.

use std::time::Duration;

use serde_json::{Value, json};

use super::PostgresStore;
use super::testing::TestDatabase;
use crate::deliver::schedule::{Next, Outcome};
use crate::deliver::subscription::SubscriptionSpec;
use crate::event::{EventStatus, NewEvent};
use crate::mirror::FieldValue;
use crate::provider::ProviderKind;
use crate::store::{
    AppendOutcome, AttemptRecorded, AttemptResult, Backend, DeliveryFilter, DeliveryId,
    DeliveryState, EntityFilter, EventFilter, EventSeq, Lease, NewRejection, RejectionFilter,
    StoreError, StoreOptions,
};

mod delivery;
mod events;
mod maintenance;
mod mirror;
mod plans;
mod server;

pub(super) use crate::store::test_support::{
    ATTEMPTED_AT, BatchLog, claim_every_delivery, class, class_updated, dreamclass, event, request,
    student_period, subscription, uuid,
};

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
