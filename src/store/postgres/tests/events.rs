//! Appends: dedupe, conflicts, batches, the commit lag, the rejection log, event reads.

use super::*;

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
    assert_eq!(count, crate::store::REJECTION_LOG_CAPACITY);
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

/// A batch that loses deadlocks is written again whole, not failed: another session
/// holds the class's mirror row and asks for the batch lock while the writer, holding
/// that lock, waits for the row, three times in a row.
#[tokio::test]
async fn a_batch_that_loses_deadlocks_is_written_again() {
    let Some(db) = TestDatabase::create("deadlock").await else {
        return;
    };
    // PostgreSQL looks for a deadlock once per wait, `deadlock_timeout` after it
    // began. The writer's look must come after this test closes the cycle, however
    // long a loaded machine takes to get there (with the default second, the
    // writer's look could pass before the cycle and the test's own session was the
    // one rolled back); the test's session never looks first.
    connect(db.url())
        .await
        .batch_execute(
            "DO $$ BEGIN EXECUTE format('ALTER DATABASE %I SET deadlock_timeout = %L',
                 current_database(), '2s'); END $$",
        )
        .await
        .unwrap();
    // Three deadlocks take three of those waits: more than an append's default wait.
    let options = StoreOptions {
        append_timeout: Duration::from_secs(60),
        ..StoreOptions::default()
    };
    let store = PostgresStore::open(db.url(), options).await.unwrap();
    stored(
        store
            .append(class_updated(1, 1_000, "first"))
            .await
            .unwrap(),
    );
    let mut other = connect(db.url()).await;
    other
        .batch_execute("SET deadlock_timeout = '600s'")
        .await
        .unwrap();
    let tx = other.transaction().await.unwrap();
    tx.execute("SELECT 1 FROM mirror_class WHERE id = 7 FOR UPDATE", &[])
        .await
        .unwrap();
    let append = {
        let store = store.clone();
        tokio::spawn(async move { store.append(class_updated(2, 2_000, "second")).await })
    };
    let lock = super::super::writer::BATCH_LOCK;
    for deadlock in 1..=3 {
        // The writer holds the batch lock and waits for the row.
        assert!(
            a_session_waits_for_a_lock(&tx, false).await,
            "deadlock {deadlock}: the writer never waited for the row"
        );
        // Asking for the batch lock closes the cycle; the writer, waiting longer,
        // finds the deadlock and is rolled back. Then let it go again.
        tx.execute("SELECT pg_advisory_lock($1)", &[&lock])
            .await
            .unwrap();
        tx.execute("SELECT pg_advisory_unlock($1)", &[&lock])
            .await
            .unwrap();
    }
    tx.rollback().await.unwrap();
    stored(append.await.unwrap().unwrap());
    let entity = store.list_entities(class_filter()).await.unwrap();
    assert_eq!(entity[0].version_ms, 2_000);
}

/// The writer commits a batch without waiting for its WAL flush: its callers must
/// still be answered only once the WAL holding their events is on disk.
#[tokio::test]
async fn an_append_is_answered_only_once_its_wal_is_flushed() {
    let Some((db, store)) = open("flushed_before_answer").await else {
        return;
    };
    let client = connect(db.url()).await;
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pageinspect")
        .await
        .unwrap();
    for n in 1..=20 {
        let seq = stored(
            store
                .append(class_updated(n, n as i64 * 1_000, "flushed"))
                .await
                .unwrap(),
        );
        // The row's page was last written by its insert, which the batch's commit
        // record follows in the WAL: the flush must have passed that page's LSN.
        let row = client
            .query_one(
                "SELECT pg_current_wal_flush_lsn() >= (page_header(get_raw_page('events',
                     (ctid::text::point)[0]::int))).lsn
                 FROM events WHERE seq = $1",
                &[&seq.get()],
            )
            .await
            .unwrap();
        let flushed: bool = row.get(0);
        assert!(
            flushed,
            "append {n} was answered before its WAL was flushed"
        );
    }
}

/// While another instance's batch holds the batch lock, the events that reach this
/// instance join one batch: the writer takes its batch from the queue only once it
/// holds the lock. (Taken before, it would write the event that woke it alone and
/// the rest in a second batch: half-size batches whenever instances share the lock.)
#[tokio::test]
async fn events_queued_while_another_instance_holds_the_batch_lock_join_one_batch() {
    let log = std::sync::Arc::new(BatchLog::default());
    let options = StoreOptions {
        observer: Some(log.clone()),
        ..StoreOptions::default()
    };
    let Some((db, store)) = open_with("lock_first", options).await else {
        return;
    };
    let other = connect(db.url()).await;
    let lock = super::super::writer::BATCH_LOCK;
    other
        .execute("SELECT pg_advisory_lock($1)", &[&lock])
        .await
        .unwrap();
    log.clear();
    let append = |n: u64| {
        let store = store.clone();
        tokio::spawn(async move { store.append(class_updated(n, n as i64 * 1_000, "x")).await })
    };
    let first = append(1);
    assert!(
        a_session_waits_for_a_lock(&other, true).await,
        "the writer never waited for the batch lock"
    );
    let rest: Vec<_> = (2..=10).map(append).collect();
    // Queued, not yet written: the writer still waits for the lock.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!first.is_finished());
    other
        .execute("SELECT pg_advisory_unlock($1)", &[&lock])
        .await
        .unwrap();
    let mut seqs = vec![stored(first.await.unwrap().unwrap()).get()];
    for append in rest {
        seqs.push(stored(append.await.unwrap().unwrap()).get());
    }
    let batches: Vec<(usize, bool)> = log.batches().iter().map(|b| (b.0, b.2)).collect();
    assert_eq!(
        batches,
        vec![(10, true)],
        "one batch of the ten events, committed"
    );
    assert!(
        seqs[1..].iter().all(|&seq| seq > seqs[0]),
        "the event that woke the writer goes in first: {seqs:?}"
    );
}
