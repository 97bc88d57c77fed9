//! Several `classhook serve` processes on one PostgreSQL database behave as one
//! classhook: every acknowledged event stored once, every matching event
//! delivered, a recorded success never sent again, one instance killed with
//! SIGKILL mid-run, the mirror right from every survivor, and a subscription's
//! `max_in_flight`, rate limit and order per entity held across all instances together.
//!
//! These run in the PostgreSQL pass of the suite (`CLASSHOOK_TEST_BACKEND=postgres`).

mod common;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use classhook::provider::dreamclass;
use common::backend::{database_url, skip_unless_postgres};
use common::process::{Served, serve, serve_logged, write_config};
use common::receiver::{Receiver, Reply, eventually_async_within, most_in_one_second};
use common::{SCHOOL_SECRET, raw_json};
use serde_json::{Value, json};

/// The school source, fast delivery timers and one subscription taking everything.
fn cluster_config(dir: &Path, receiver: &Receiver, subscription_extra: &str) -> PathBuf {
    write_config(
        dir,
        &format!(
            r#"
[delivery]
allow_private_destinations = true
poll_interval = "100ms"
lease_margin = "1s"

[[source]]
name = "school"
provider = "dreamclass"
secret = "{SCHOOL_SECRET}"

[[subscription]]
name = "crm"
url = "{}"
events = ["*"]
timeout = "1s"
retry_schedule = ["1s", "1s", "1s", "1s", "1s"]
{subscription_extra}
"#,
            receiver.url()
        ),
    )
}

/// A signed DreamClass request with a chosen envelope id and version.
fn class_event(envelope_id: &str, class_id: i64, name: &str, timestamp: i64) -> Vec<u8> {
    raw_json(&json!({
        "id": envelope_id, "type": "CLASS_UPDATED", "tenant": "my-school",
        "timestamp": timestamp,
        "signature": dreamclass::sign(SCHOOL_SECRET.as_bytes(), envelope_id),
        "data": {"id": class_id, "code": format!("c-{class_id}"), "name": name,
                 "startDate": "2024-01-01", "endDate": "2024-06-30", "capacity": 20,
                 "description": null},
    }))
    .1
}

/// Posts one webhook; `None` when no answer came (the instance is gone).
async fn post(client: &reqwest::Client, at: SocketAddr, body: &[u8]) -> Option<u16> {
    client
        .post(format!("http://{at}/hooks/school"))
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .ok()
        .map(|r| r.status().as_u16())
}

/// A class of the school source as the API of the instance at `at` shows it.
async fn class_at(client: &reqwest::Client, at: SocketAddr, id: i64) -> Value {
    client
        .get(format!(
            "http://{at}/api/v1/entities/class/{id}?source=school"
        ))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Connects to the test directory's database.
async fn database(dir: &Path) -> tokio_postgres::Client {
    let url = database_url(dir).expect("the PostgreSQL pass made a database");
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    client
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

/// The instance that dispatches `subscription` now (waits, bounded, for one).
async fn owner_of(db: &tokio_postgres::Client, subscription: &str) -> SocketAddr {
    for _ in 0..500 {
        let row = db
            .query_opt(
                "SELECT i.name FROM dispatch_owners o
                 JOIN instances i ON i.id = o.instance_id
                 JOIN subscriptions s ON s.id = o.subscription_id
                 WHERE s.name = $1",
                &[&subscription],
            )
            .await
            .unwrap();
        if let Some(row) = row {
            let name: String = row.get(0);
            let port: u16 = name.rsplit(':').next().unwrap().parse().unwrap();
            return SocketAddr::from(([127, 0, 0, 1], port));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no instance owns {subscription}");
}

/// Which of `instances` dispatches `subscription` now.
async fn owner_among(
    db: &tokio_postgres::Client,
    instances: &[Served],
    subscription: &str,
) -> usize {
    let owner = owner_of(db, subscription).await;
    instances
        .iter()
        .position(|i| i.addr.port() == owner.port())
        .expect("the owner is one of the instances")
}

/// Stops an instance with SIGTERM (a clean stop) and waits for it to exit.
async fn stop_cleanly(instance: &mut Served) {
    let pid = instance.child.id().unwrap() as i32;
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    tokio::time::timeout(Duration::from_secs(15), instance.child.wait())
        .await
        .expect("the instance stops within its shutdown grace")
        .unwrap();
}

/// Posts `events` distinct class events at once, spread over the instances in turn;
/// every one is acknowledged.
async fn post_spread(instances: &[Served], events: usize) {
    let client = reqwest::Client::new();
    let posts = (0..events).map(|i| {
        let body = class_event(&uuid::Uuid::new_v4().to_string(), i as i64, "x", 1_000);
        let at = instances[i % instances.len()].addr;
        let client = client.clone();
        async move { post(&client, at, &body).await }
    });
    let answers = futures_util::future::join_all(posts).await;
    assert!(answers.iter().all(|a| *a == Some(200)), "{answers:?}");
}

async fn start_cluster(config: &Path, n: usize) -> Vec<Served> {
    let mut instances = Vec::new();
    for _ in 0..n {
        instances.push(serve(config).await);
    }
    instances
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_instances_store_once_deliver_all_and_survive_a_sigkill() {
    if skip_unless_postgres("three_instances…", "several instances share one PostgreSQL") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    // Slow answers keep deliveries on the wire when the owner is killed.
    receiver.script(std::iter::repeat_n(
        Reply::Slow(Duration::from_millis(30)),
        60,
    ));
    let config = cluster_config(dir.path(), &receiver, "");
    let mut instances = start_cluster(&config, 3).await;
    let addrs: Vec<SocketAddr> = instances.iter().map(|s| s.addr).collect();
    let client = reqwest::Client::new();
    let db = database(dir.path()).await;

    // 150 distinct events spread over the instances, 30 of them sent to two
    // instances at the same moment, and 10 ids sent with two different bodies to
    // two instances at once. The instance that delivers for the subscription is
    // killed a third of the way through; what it did not answer is sent again to
    // another instance, as a platform retries.
    let distinct = 150usize;
    let bodies: Vec<(String, Vec<u8>)> = (0..distinct)
        .map(|i| {
            let id = uuid::Uuid::new_v4().to_string();
            let body = class_event(&id, i as i64, &format!("class {i}"), 1_000 + i as i64);
            (id, body)
        })
        .collect();
    let mut sent: HashMap<String, usize> = HashMap::new();
    let mut acked: HashMap<String, usize> = HashMap::new();
    let mut alive = [true; 3];
    for (i, (id, body)) in bodies.iter().enumerate() {
        if i == distinct / 3 {
            let owner = owner_of(&db, "crm").await;
            let victim = addrs.iter().position(|a| a.port() == owner.port()).unwrap();
            instances[victim].child.start_kill().unwrap();
            instances[victim].child.wait().await.unwrap();
            alive[victim] = false;
        }
        let first = i % 3;
        let mut targets = vec![first];
        if i % 5 == 0 {
            targets.push((first + 1) % 3);
        }
        // At the same moment: both requests in flight together.
        let answers = futures_util::future::join_all(
            targets
                .iter()
                .map(|&t| post(&client, addrs[t], body))
                .collect::<Vec<_>>(),
        )
        .await;
        *sent.entry(id.clone()).or_default() += targets.len();
        let mut answered = answers.iter().filter(|a| **a == Some(200)).count();
        if answered == 0 {
            // Nobody answered: retried on a live instance.
            let live = (0..3).find(|t| alive[*t]).unwrap();
            assert_eq!(post(&client, addrs[live], body).await, Some(200));
            *sent.get_mut(id).unwrap() += 1;
            answered = 1;
        }
        *acked.entry(id.clone()).or_default() += answered;
    }
    let live: Vec<SocketAddr> = (0..3).filter(|t| alive[*t]).map(|t| addrs[t]).collect();
    let conflicts = 10usize;
    let clashes: Vec<String> = (0..conflicts)
        .map(|_| uuid::Uuid::new_v4().to_string())
        .collect();
    for (i, id) in clashes.iter().enumerate() {
        let one = class_event(id, 1_000 + i as i64, "first body", 5_000);
        let other = class_event(id, 1_000 + i as i64, "second body", 5_001);
        let (a, b) = tokio::join!(post(&client, live[0], &one), post(&client, live[1], &other));
        assert_eq!((a, b), (Some(200), Some(200)), "a conflict is answered 200");
    }

    // Stored exactly once each, and every acknowledged copy counted.
    let stored = count(&db, "SELECT count(*) FROM events").await as usize;
    assert_eq!(stored, distinct + conflicts);
    for (id, acked) in &acked {
        let row = db
            .query_one("SELECT times_seen FROM events WHERE event_id = $1", &[id])
            .await
            .unwrap_or_else(|e| panic!("event {id} acknowledged but not stored once: {e}"));
        let seen: i64 = row.get(0);
        assert!(
            (*acked as i64..=sent[id] as i64).contains(&seen),
            "{id}: seen {seen} times, acknowledged {acked}, sent {}",
            sent[id]
        );
    }
    // Each clash: one event, one conflict, whichever body committed first.
    let clashed: i64 = db
        .query_one(
            "SELECT count(*) FROM events WHERE event_id = ANY($1) AND conflicts = 1",
            &[&clashes],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(clashed, conflicts as i64);
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM rejections WHERE reason = 'id_conflict'"
        )
        .await,
        conflicts as i64
    );

    // Every event delivered by the survivors (the killed instance's leases expire),
    // each exactly once after its recorded success.
    eventually_async_within(
        "every delivery delivered",
        Duration::from_secs(60),
        async || {
            count(
                &db,
                "SELECT count(*) FROM deliveries WHERE state = 'delivered'",
            )
            .await
                == stored as i64
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let received = receiver.received();
    let rows = db
        .query("SELECT webhook_id, delivered_at_ms FROM deliveries", &[])
        .await
        .unwrap();
    assert_eq!(rows.len(), stored);
    for row in rows {
        let webhook_id: String = row.get(0);
        let delivered_at_ms: i64 = row.get(1);
        let after_success = received
            .iter()
            .filter(|r| r.header("webhook-id") == webhook_id && r.at_ms >= delivered_at_ms)
            .count();
        assert_eq!(
            after_success, 1,
            "{webhook_id}: one request at or after its recorded success"
        );
    }
    let delivered_events: HashSet<String> = received
        .iter()
        .map(|r| {
            let body: Value = serde_json::from_slice(&r.body).unwrap();
            body["id"].as_str().unwrap().to_string()
        })
        .collect();
    for id in acked.keys() {
        assert!(delivered_events.contains(id), "{id} was never delivered");
    }

    // The mirror, as each survivor's API shows it.
    for at in &live {
        for i in [0usize, distinct / 2, distinct - 1] {
            let entity = class_at(&client, *at, i as i64).await;
            assert_eq!(entity["data"]["name"], format!("class {i}"), "{entity}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interleaved_versions_at_two_instances_end_in_version_order() {
    if skip_unless_postgres(
        "interleaved_versions…",
        "several instances share one PostgreSQL",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let config = cluster_config(dir.path(), &receiver, "");
    let instances = start_cluster(&config, 2).await;
    let client = reqwest::Client::new();

    // 20 classes, 6 versions each; the versions of one class go to both instances
    // at once in a scrambled order.
    let (classes, versions) = (20i64, 6i64);
    let mut requests = Vec::new();
    for class in 0..classes {
        for step in 0..versions {
            // A fixed scramble of the version order per class.
            let version = (step * 5 + class) % versions;
            let envelope = uuid::Uuid::new_v4().to_string();
            let body = class_event(&envelope, class, &format!("v{version}"), 10_000 + version);
            let at = instances[(step % 2) as usize].addr;
            requests.push((at, body));
        }
    }
    for chunk in requests.chunks(12) {
        let answers =
            futures_util::future::join_all(chunk.iter().map(|(at, body)| post(&client, *at, body)))
                .await;
        assert!(answers.iter().all(|a| *a == Some(200)), "{answers:?}");
    }
    let last = versions - 1;
    for class in 0..classes {
        for served in &instances {
            let entity = class_at(&client, served.addr, class).await;
            assert_eq!(entity["data"]["name"], format!("v{last}"), "{entity}");
            assert_eq!(entity["version_ms"], 10_000 + last, "{entity}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_one_holds_across_three_instances() {
    if skip_unless_postgres(
        "max_in_flight_one…",
        "several instances share one PostgreSQL",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let events = 30usize;
    // Each answer takes a while, so that requests from several instances would
    // overlap if the limit were per instance.
    receiver.script(std::iter::repeat_n(
        Reply::Slow(Duration::from_millis(40)),
        events,
    ));
    let config = cluster_config(dir.path(), &receiver, "max_in_flight = 1");
    let instances = start_cluster(&config, 3).await;
    post_spread(&instances, events).await;
    receiver
        .wait_for_within(events, Duration::from_secs(30))
        .await;
    assert_eq!(
        receiver.most_concurrent(),
        1,
        "two requests of a max_in_flight = 1 subscription at once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_another_config_file_says_what_it_changed() {
    if skip_unless_postgres(
        "an_instance_with_another_config…",
        "several instances share one PostgreSQL",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (old, new) = (Receiver::start().await, Receiver::start().await);
    let first = cluster_config(dir.path(), &old, "");
    let text = std::fs::read_to_string(&first).unwrap();
    let second = dir.path().join("newer.toml");
    std::fs::write(
        &second,
        text.replace(&old.url(), &new.url())
            .replace("timeout = \"1s\"", "timeout = \"2s\""),
    )
    .unwrap();
    let db = database(dir.path()).await;

    let (_a, _) = serve_logged(&first).await;
    let version = "SELECT version FROM subscription_version";
    let before = count(&db, version).await;
    // The same file again: nothing written, nothing said.
    let (_b, same_log) = serve_logged(&first).await;
    assert_eq!(
        count(&db, version).await,
        before,
        "a start with the same file wrote"
    );
    assert!(
        !same_log
            .lock()
            .unwrap()
            .iter()
            .any(|l| l.contains("other values")),
        "{:?}",
        same_log.lock().unwrap()
    );
    // Another file: it applies, and the log names the subscription and fields.
    let (_c, other_log) = serve_logged(&second).await;
    let warned = other_log
        .lock()
        .unwrap()
        .iter()
        .any(|l| l.contains("WARN") && l.contains("crm") && l.contains("url, timeout"));
    assert!(warned, "{:?}", other_log.lock().unwrap());
    let url: String = db
        .query_one("SELECT url FROM subscriptions WHERE name = 'crm'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(url, new.url());
    for line in other_log.lock().unwrap().iter() {
        assert!(!line.contains(SCHOOL_SECRET), "a secret in the log: {line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_names_its_instance() {
    if skip_unless_postgres(
        "every_metric_names…",
        "several instances share one PostgreSQL",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let config = cluster_config(dir.path(), &receiver, "");
    let instances = start_cluster(&config, 2).await;
    let client = reqwest::Client::new();
    let db = database(dir.path()).await;
    for served in &instances {
        // The name it goes by among the instances (default `<host>:<port>`).
        let name = instance_name(&db, served.addr).await;
        let text = client
            .get(format!("http://{}/metrics", served.addr))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        let label = format!("instance=\"{name}\"");
        let samples: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .collect();
        assert!(!samples.is_empty());
        for sample in samples {
            assert!(sample.contains(&label), "{sample} lacks {label}");
        }
    }
}

/// The name under which the instance listening on `addr` registered (waits for its
/// first round, bounded).
async fn instance_name(db: &tokio_postgres::Client, addr: SocketAddr) -> String {
    for _ in 0..500 {
        let names: Vec<String> = db
            .query("SELECT name FROM instances", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
        if let Some(name) = names
            .into_iter()
            .find(|n| n.ends_with(&format!(":{}", addr.port())))
        {
            return name;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("no instance registered for {addr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clean_stop_hands_its_subscriptions_over_at_once() {
    if skip_unless_postgres(
        "a_clean_stop_hands…",
        "several instances share one PostgreSQL",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let config = cluster_config(dir.path(), &receiver, "");
    let mut instances = start_cluster(&config, 2).await;
    let db = database(dir.path()).await;
    let leaving = owner_among(&db, &instances, "crm").await;
    let staying = 1 - leaving;
    stop_cleanly(&mut instances[leaving]).await;
    // Taken over within a round or two, not after the ownership would have ended
    // (timeout 1 s + lease margin 1 s + 5 s).
    let survivor = instances[staying].addr;
    let started = std::time::Instant::now();
    while owner_of(&db, "crm").await.port() != survivor.port() {
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "the stopped instance's subscription was not taken over at once"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = class_event(
        &uuid::Uuid::new_v4().to_string(),
        1,
        "after the stop",
        1_000,
    );
    assert_eq!(
        post(&reqwest::Client::new(), survivor, &body).await,
        Some(200)
    );
    receiver.wait_for_within(1, Duration::from_secs(4)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_across_three_instances_and_a_hand_over() {
    if skip_unless_postgres(
        "a_rate_limit_holds…",
        "several instances share one PostgreSQL",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    let events = 60usize;
    let config = cluster_config(dir.path(), &receiver, "rate_limit = \"20/s\"");
    let mut instances = start_cluster(&config, 3).await;
    let db = database(dir.path()).await;
    post_spread(&instances, events).await;
    // Half way, the instance sending stops cleanly and another takes over, starting
    // its own pace.
    receiver
        .wait_for_within(events / 2, Duration::from_secs(30))
        .await;
    let leaving = owner_among(&db, &instances, "crm").await;
    stop_cleanly(&mut instances[leaving]).await;
    let got = receiver
        .wait_for_within(events, Duration::from_secs(30))
        .await;
    let ids: HashSet<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), events, "every event delivered");
    let most = most_in_one_second(&got);
    // The issue's bound: never more than one second's worth over the limit.
    assert!(
        most <= 40,
        "{most} requests within one second under rate_limit = \"20/s\" on 3 instances"
    );
    let new_owner = owner_of(&db, "crm").await;
    assert_ne!(
        new_owner.port(),
        instances[leaving].addr.port(),
        "handed over"
    );
    eprintln!("3 instances, rate_limit 20/s, one hand-over: at most {most} requests in one second");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn order_per_entity_holds_across_instances_and_a_sigkill() {
    if skip_unless_postgres(
        "order_per_entity…",
        "several instances share one PostgreSQL",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let receiver = Receiver::start().await;
    // The second version of every class fails once, so its later versions must
    // wait for its retry.
    receiver.fail_first_attempt_of(|r| {
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        body["data"]["name"] == "v1"
    });
    let config = cluster_config(dir.path(), &receiver, "ordering = \"entity\"");
    let mut instances = start_cluster(&config, 3).await;
    let db = database(dir.path()).await;
    let client = reqwest::Client::new();
    let (classes, versions) = (5i64, 6i64);
    // Stored one after the other, spread over the three instances.
    for version in 0..versions {
        for class in 0..classes {
            let body = class_event(
                &uuid::Uuid::new_v4().to_string(),
                class,
                &format!("v{version}"),
                1_000 + version,
            );
            let at = instances[((version * classes + class) % 3) as usize].addr;
            assert_eq!(post(&client, at, &body).await, Some(200));
        }
    }
    // Kill the instance that dispatches while deliveries are under way.
    receiver.wait_for_within(8, Duration::from_secs(15)).await;
    let killed = owner_among(&db, &instances, "crm").await;
    instances[killed].child.kill().await.unwrap();

    let all = (classes * versions) as usize;
    eventually_async_within(
        "every delivery recorded as delivered",
        Duration::from_secs(60),
        async || {
            count(
                &db,
                "SELECT count(*) FROM deliveries WHERE state = 'delivered'",
            )
            .await
                == all as i64
        },
    )
    .await;
    let mut seen: HashMap<i64, Vec<i64>> = HashMap::new();
    for received in receiver.received() {
        let body: Value = serde_json::from_slice(&received.body).unwrap();
        let class = body["data"]["id"].as_i64().unwrap();
        let version: i64 = body["data"]["name"].as_str().unwrap()[1..].parse().unwrap();
        seen.entry(class).or_default().push(version);
    }
    for class in 0..classes {
        let got = &seen[&class];
        // In stored order; a version may come twice (failed once, or sent by the
        // killed instance and again by the next one) but never after a later one.
        assert!(got.is_sorted(), "class {class}: {got:?}");
        let distinct: HashSet<i64> = got.iter().copied().collect();
        assert_eq!(distinct.len() as i64, versions, "class {class}: {got:?}");
    }
}
