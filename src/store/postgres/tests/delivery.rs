//! Subscriptions, their secrets, and deliveries: leases, attempts, replays, backfill.

use super::*;

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
    assert!(
        store
            .subscription_open(sub.id, now)
            .await
            .unwrap()
            .is_none()
    );
    assert!(
        store
            .claim_due(vec![request(sub.id.get(), 5, now + 1)], now)
            .await
            .unwrap()
            .is_empty()
    );
    store.set_paused("hooks", false, None).await.unwrap();
    store.hold_subscription(sub.id, now + 10_000).await.unwrap();
    assert!(
        store
            .subscription_open(sub.id, now)
            .await
            .unwrap()
            .is_none()
    );
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

/// A store with one subscription to every event and `count` events, whose
/// deliveries are all claimed at [`ATTEMPTED_AT`] ([`claim_every_delivery`]);
/// `None`: skipped (no server).
async fn claimed_deliveries(
    test: &str,
    count: u64,
) -> Option<(TestDatabase, PostgresStore, Vec<crate::store::Claimed>)> {
    let (db, store) = open(test).await?;
    let claimed = claim_every_delivery(&store, count).await;
    Some((db, store, claimed))
}

#[tokio::test]
async fn a_record_that_fails_fails_alone() {
    let Some((_db, store, claimed)) = claimed_deliveries("record_isolation", 6).await else {
        return;
    };
    let mut records = Vec::new();
    for (n, claimed) in claimed.into_iter().enumerate() {
        let store = store.clone();
        records.push(tokio::spawn(async move {
            store
                .record_attempt(AttemptResult {
                    claimed,
                    at_ms: ATTEMPTED_AT + 1,
                    duration: Duration::from_millis(3),
                    outcome: Outcome::Success { status: 200 },
                    // PostgreSQL text cannot hold NUL: this record fails in the database.
                    response: Some(if n == 2 { "a\0b".into() } else { "ok".into() }),
                    next: Next::Delivered,
                })
                .await
        }));
    }
    let mut kept = 0;
    let mut failed = 0;
    for record in records {
        match record.await.unwrap() {
            Ok(AttemptRecorded::Kept { .. }) => kept += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(_) => failed += 1,
        }
    }
    assert_eq!((kept, failed), (5, 1));
    let delivered = store
        .list_deliveries(DeliveryFilter {
            state: Some(DeliveryState::Delivered),
            limit: 10,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(delivered.len(), 5);
}

/// The records of one group are sent to the server together, and apply in their
/// order as one after another would: a subscription's failures count up, a success
/// between them resets the count, and the count after the group is the last one's.
#[tokio::test]
async fn records_sent_together_apply_in_their_order() {
    let Some((_db, store, claimed)) = claimed_deliveries("record_order", 5).await else {
        return;
    };
    let sub = claimed[0].subscription_id;
    let failed = Outcome::Failed {
        status: Some(500),
        error: None,
    };
    let outcomes = [
        (failed.clone(), Next::RetryAt(ATTEMPTED_AT + 10_000)),
        (failed.clone(), Next::RetryAt(ATTEMPTED_AT + 10_000)),
        (Outcome::Success { status: 200 }, Next::Delivered),
        (failed.clone(), Next::RetryAt(ATTEMPTED_AT + 10_000)),
        (failed, Next::RetryAt(ATTEMPTED_AT + 10_000)),
    ];
    let results: Vec<AttemptResult> = claimed
        .into_iter()
        .zip(outcomes)
        .map(|(claimed, (outcome, next))| AttemptResult {
            claimed,
            at_ms: ATTEMPTED_AT + 1,
            duration: Duration::from_millis(3),
            outcome,
            response: None,
            next,
        })
        .collect();
    let group: Vec<&AttemptResult> = results.iter().collect();
    let recorded = super::super::records::apply(&store.inner.delivery, &group)
        .await
        .unwrap();
    let counts: Vec<i64> = recorded
        .into_iter()
        .map(|r| match r.unwrap() {
            AttemptRecorded::Kept {
                consecutive_failures,
            } => consecutive_failures,
            other => panic!("unexpected {other:?}"),
        })
        .collect();
    assert_eq!(counts, [1, 2, 0, 1, 2]);
    let failures: i64 = store
        .client()
        .await
        .unwrap()
        .query_one(
            "SELECT consecutive_failures FROM subscriptions WHERE id = $1",
            &[&sub.get()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(failures, 2);
}

/// A lease's commit does not wait for the server's flush (a lost lease only makes
/// its delivery due again); an attempt record's does, and so do the writer's.
#[tokio::test]
async fn leases_commit_without_waiting_for_the_flush_records_wait() {
    let Some((_db, store)) = open("lease_commits").await else {
        return;
    };
    // (value, where it came from): "client" is a connection's own setting; the
    // others follow the server's (whose default waits for the flush).
    let setting = |client: deadpool_postgres::Object, name: &'static str| async move {
        let row = client
            .query_one(
                "SELECT setting, source FROM pg_settings WHERE name = $1",
                &[&name],
            )
            .await
            .unwrap();
        (row.get::<_, String>(0), row.get::<_, String>(1))
    };
    let own = |value: &str| (value.to_string(), "client".to_string());
    let lease = || async { store.lease_client().await.unwrap() };
    assert_eq!(
        setting(lease().await, "synchronous_commit").await,
        own("off")
    );
    assert_eq!(setting(lease().await, "enable_sort").await, own("off"));
    for pool in [
        store.delivery_client().await.unwrap(),
        store.client().await.unwrap(),
    ] {
        assert_ne!(setting(pool, "synchronous_commit").await.1, "client");
    }
}
