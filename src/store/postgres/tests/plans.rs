//! The writer's cached plans: made once per connection while the tables were small,
//! they must still read only a batch's own rows once the tables have grown.

use super::*;

/// 30,000 events, written behind the writer's back.
const GROW_EVENTS: &str = "INSERT INTO events (source, provider, dedupe_key, event_type,
         entity_kind, entity_op, version_ms, received_at_ms, status, body_sha256, body,
         headers, last_seen_at_ms)
     SELECT 'school', 'dreamclass', md5(i::text), 'CLASS_UPDATED', 'class',
         'upsert', i, i, 'ok', '\\x00', '\\x00', '', i
     FROM generate_series(1, 30000) i";

/// The tables the writer reads by key, and how many rows each gets behind the
/// writer's back.
const GROWN: &[(&str, &str)] = &[
    ("events", GROW_EVENTS),
    (
        "mirror_class",
        "INSERT INTO mirror_class (source, tenant, id, name, deleted, version_ms, event_seq)
         SELECT 'school', 'school', 1000000 + i, 'grown', false, i, i
         FROM generate_series(1, 30000) i",
    ),
    (
        "mirror_generic",
        "INSERT INTO mirror_generic (source, tenant, kind, id, data, deleted, version_ms,
             event_seq)
         SELECT 'school', 'school', 'widget', 'grown-' || i, '{}', false, i, i
         FROM generate_series(1, 30000) i",
    ),
    (
        "mirror_course",
        "INSERT INTO mirror_course (source, tenant, id, name, deleted, version_ms, event_seq)
         SELECT 'shop', '', 'grown-' || i, 'grown', false, i, i
         FROM generate_series(1, 30000) i",
    ),
    (
        "mirror_course_plan",
        "INSERT INTO mirror_course_plan (source, tenant, course_id, position, plan_id)
         SELECT 'shop', '', 'grown-' || (i / 2), i % 2, 'p'
         FROM generate_series(2, 60001) i",
    ),
    (
        "deliveries",
        "INSERT INTO deliveries (subscription_id, event_seq, webhook_id, state,
             next_attempt_at_ms, created_at_ms)
         SELECT (SELECT min(id) FROM subscriptions), seq, 'msg_' || seq, 'delivered', 0, 0
         FROM events WHERE body = '\\x00'",
    ),
];

/// Every kind of write the writer makes: a new entity, updates of known typed and
/// generic entities, a course whose child rows are replaced, a retry, a conflicting
/// body, a rejection, and the deliveries of a subscription to all.
async fn write_every_kind(store: &PostgresStore, round: u64) {
    let plan = |id: &str| {
        json!({
            "id": id, "name": "plan", "description": "d", "currency": "TWD", "amount": 5000,
            "created_at": "2023-05-15T14:35:00Z", "updated_at": "2023-05-15T14:35:00Z"
        })
    };
    let base = round * 100;
    let class = dreamclass(
        &uuid(base + 1),
        "CLASS_CREATED",
        base as i64 + 1,
        super::class(round + 1, "new", "C"),
    );
    let update = dreamclass(
        &uuid(base + 2),
        "CLASS_UPDATED",
        base as i64 + 2,
        super::class(1, "updated", "C"),
    );
    let widget = dreamclass(
        &uuid(base + 3),
        "WIDGET_UPDATED",
        base as i64 + 3,
        json!({"id": 1, "size": round}),
    );
    let course = event(
        ProviderKind::Loopwise,
        "shop",
        serde_json::to_vec(&json!({"type": "course.updated", "data": {
            "id": "course", "name": format!("Course {round}"), "description": "About",
            "state": "published", "type": "Course", "slug": "course",
            "created_at": "2023-05-15T14:30:00Z",
            "updated_at": format!("2024-01-0{}T00:00:00Z", round + 1),
            "plans": [plan("p1"), plan("p2")]
        }}))
        .unwrap(),
        base as i64 + 4,
    );
    let conflicting = dreamclass(
        &uuid(base + 1),
        "CLASS_CREATED",
        base as i64 + 1,
        super::class(round + 1, "another body", "C"),
    );
    let (a, b, c, d) = tokio::join!(
        store.append(class.clone()),
        store.append(update),
        store.append(widget),
        store.append(course),
    );
    for outcome in [a, b, c, d] {
        stored(outcome.unwrap());
    }
    let (retry, conflict) = tokio::join!(store.append(class), store.append(conflicting));
    assert!(matches!(retry.unwrap(), AppendOutcome::Duplicate { .. }));
    assert!(matches!(conflict.unwrap(), AppendOutcome::Conflict { .. }));
    store.record_rejection(NewRejection {
        at_ms: base as i64,
        source: None,
        reason: "unknown_source".into(),
        status: 404,
        message: "no such source".into(),
        body: b"{}".to_vec(),
        body_len: 2,
        body_sha256: None,
        remote_addr: None,
    });
}

/// Rows read from each grown table.
async fn rows_read(client: &tokio_postgres::Client) -> Vec<(String, i64)> {
    let mut read = Vec::new();
    for (table, _) in GROWN {
        read.push((table.to_string(), table_rows_read(client, table).await));
    }
    read
}

/// Rows read from `table` (its scans plus its indexes' entries).
async fn table_rows_read(client: &tokio_postgres::Client, table: &str) -> i64 {
    client
        .query_one(
            "SELECT pg_stat_clear_snapshot()::text,
                 (SELECT coalesce(seq_tup_read, 0) FROM pg_stat_user_tables WHERE relname = $1)
                 + (SELECT coalesce(sum(idx_tup_read), 0)::bigint FROM pg_stat_user_indexes
                    WHERE relname = $1)",
            &[&table],
        )
        .await
        .unwrap()
        .get(1)
}

/// The writer's backend reports its counters at a transaction's end at most once a
/// second: after a pause, one more append makes it report what came before.
async fn report(store: &PostgresStore, n: u64) {
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    stored(
        store
            .append(class_updated(10_000 + n, 10_000 + n as i64, "report"))
            .await
            .unwrap(),
    );
}

#[tokio::test]
async fn the_writers_plans_read_only_a_batchs_rows_after_the_tables_grew() {
    let Some((db, store)) = open("plans_stay_keyed").await else {
        return;
    };
    let client = connect(db.url()).await;
    // Only the test's own ANALYZE makes the writer plan again.
    for (table, _) in GROWN {
        client
            .batch_execute(&format!(
                "ALTER TABLE {table} SET (autovacuum_enabled = false)"
            ))
            .await
            .unwrap();
    }
    store
        .create_subscription(subscription("all", &["*"]))
        .await
        .unwrap();
    // Plans made for empty tables, then for tables of a few rows (the statistics a
    // new database gets from its first ANALYZE).
    write_every_kind(&store, 0).await;
    client.batch_execute("ANALYZE").await.unwrap();
    write_every_kind(&store, 1).await;
    // On a connection of its own, closed after: its counters are reported when it
    // ends, not in the middle of the measurement.
    let grower = connect(db.url()).await;
    for (_, grow) in GROWN {
        grower.batch_execute(grow).await.unwrap();
    }
    drop(grower);
    report(&store, 1).await;
    let before = rows_read(&client).await;
    write_every_kind(&store, 2).await;
    write_every_kind(&store, 3).await;
    report(&store, 2).await;
    // The counters arrive a moment after the append that sends them.
    let mut after = rows_read(&client).await;
    for _ in 0..20 {
        if after[0].1 > before[0].1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = rows_read(&client).await;
    }
    let read: Vec<(String, i64)> = after
        .iter()
        .zip(&before)
        .map(|(a, b)| (a.0.clone(), a.1 - b.1))
        .collect();
    assert!(
        read.iter().all(|(_, rows)| *rows < 1_000),
        "rows read from tables of 30,000 rows or more for 13 appends: {read:?}"
    );
    // The rounds did what they were written for.
    let course = store
        .find_entities(Some(ProviderKind::Loopwise), "course", "course", None, None)
        .await
        .unwrap();
    assert_eq!(course[0].data["name"], "Course 3");
    assert_eq!(course[0].data["plans"].as_array().unwrap().len(), 2);
    let class = store
        .find_entities(Some(ProviderKind::DreamClass), "class", "4", None, None)
        .await
        .unwrap();
    assert_eq!(class[0].data["name"], "new");
}

/// Every append probes `events`' unique key (the insert's conflict check), never a
/// scan or `events_source`, after the table grew behind plans cached while it was
/// small: on a new database such a plan once scanned `events` in every batch.
#[tokio::test]
async fn the_dedupe_look_up_probes_its_unique_key_after_the_table_grew() {
    let Some((db, store)) = open("plans_follow_the_table").await else {
        return;
    };
    let client = connect(db.url()).await;
    // More executions than PostgreSQL needs to settle on a cached plan, while the
    // table is small.
    for n in 1..=10 {
        stored(
            store
                .append(class_updated(n, n as i64, "small"))
                .await
                .unwrap(),
        );
    }
    client.batch_execute(GROW_EVENTS).await.unwrap();
    let scans = || async {
        let row = client
            .query_one(
                "SELECT pg_stat_clear_snapshot()::text, t.seq_scan, s.idx_scan, d.idx_scan
                 FROM pg_stat_user_tables t, pg_stat_user_indexes s, pg_stat_user_indexes d
                 WHERE t.relname = 'events' AND s.indexrelname = 'events_source'
                     AND d.indexrelname = 'events_dedupe'",
                &[],
            )
            .await
            .unwrap();
        (
            row.get::<_, i64>(1),
            row.get::<_, i64>(2),
            row.get::<_, i64>(3),
        )
    };
    // The writer's backend reports its counters at a transaction's end at most once
    // a second: wait for those of the appends above.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    stored(store.append(class_updated(11, 11, "small")).await.unwrap());
    let before = scans().await;
    for n in 12..=31 {
        stored(
            store
                .append(class_updated(n, n as i64, "large"))
                .await
                .unwrap(),
        );
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    stored(store.append(class_updated(32, 32, "large")).await.unwrap());
    let mut after = scans().await;
    for _ in 0..50 {
        if after.2 >= before.2 + 21 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        after = scans().await;
    }
    assert!(
        after.2 >= before.2 + 21,
        "the unique key was probed {} times for 21 appends",
        after.2 - before.2
    );
    assert_eq!(
        (after.0 - before.0, after.1 - before.1),
        (0, 0),
        "events was scanned, or probed by source, for the dedupe look-up"
    );
}

/// A lease of an ordered subscription asks, for each delivery it looks at, whether
/// an earlier one of the same entity is pending. On a table grown since its last
/// `ANALYZE` (a burst on a new database, before autovacuum's first pass) every
/// index looks like one row to the planner, and that probe once walked the
/// subscription's whole due index: 20,000 rows per delivery looked at, 0.2 s per
/// lease, an ordered drain 0.07× of an unordered one.
#[tokio::test]
async fn an_ordered_lease_probes_each_entity_not_the_whole_queue_after_a_burst() {
    let Some((db, store)) = open("ordered_lease_probes").await else {
        return;
    };
    let client = connect(db.url()).await;
    client
        .batch_execute("ALTER TABLE deliveries SET (autovacuum_enabled = false)")
        .await
        .unwrap();
    let mut spec = subscription("ordered", &["*"]);
    spec.ordering = crate::deliver::ordering::Ordering::Entity;
    let sub = store.create_subscription(spec).await.unwrap();
    // 20,000 deliveries over 1,000 entities, queued, given their entity keys (as a
    // change of ordering does), leased and delivered in part: the indexes grow, and
    // nothing analyses the table.
    let id = sub.id.get();
    let grower = connect(db.url()).await;
    let grower_pid: i32 = grower
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    grower
        .batch_execute(&format!(
            "INSERT INTO deliveries (subscription_id, event_seq, webhook_id, state,
                 next_attempt_at_ms, created_at_ms)
             SELECT {id}, i, 'msg_' || i, 'pending', i, i FROM generate_series(1, 20000) i;
             UPDATE deliveries SET entity_key = 'school' || chr(31) || 'class' || chr(31)
                 || (event_seq % 1000);
             UPDATE deliveries SET lease_until_ms = 1 WHERE event_seq <= 2000;
             UPDATE deliveries SET state = 'delivered' WHERE event_seq <= 2000;"
        ))
        .await
        .unwrap();
    // On a connection of its own, closed: its reads are reported when it ends, and
    // counted before the lease.
    drop(grower);
    for _ in 0..50 {
        let alive: i64 = client
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                &[&grower_pid],
            )
            .await
            .unwrap()
            .get(0);
        if alive == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut before = table_rows_read(&client, "deliveries").await;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let now = table_rows_read(&client, "deliveries").await;
        if now == before && now > 0 {
            break;
        }
        before = now;
    }
    let claimed = store
        .claim_due(vec![request(id, 64, ATTEMPTED_AT + 30_000)], ATTEMPTED_AT)
        .await
        .unwrap();
    // The first 64 pending are each the first of their entity.
    let seqs: Vec<i64> = claimed.iter().map(|c| c.event_seq.get()).collect();
    assert_eq!(seqs, (2001..=2064).collect::<Vec<i64>>());
    // Its connections end with it, and report their counters as they do.
    drop(store);
    let mut read = table_rows_read(&client, "deliveries").await - before;
    for _ in 0..50 {
        if read > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        read = table_rows_read(&client, "deliveries").await - before;
    }
    // The due index's walk to the first pending passes the delivered rows' dead
    // entries (vacuum's to clear); the 64 probes read a few entries each. Once
    // through the queue per probe would be 64 × 18,000.
    assert!(
        (1..18_000).contains(&read),
        "rows of deliveries read to lease 64 of 18,000 pending: {read}"
    );
}
