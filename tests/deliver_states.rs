//! The delivery state machine under interleavings, driven step by step: the tests
//! run the dispatcher themselves (`Dispatcher::step`), against real receivers on
//! loopback and the real store, and assert on what the receiver got and what the
//! store holds. Nothing here proves an absence by sleeping.

mod common;

use std::sync::Arc;
use std::time::Duration;

use classhook::clock::{ManualClock, SystemClock};
use classhook::deliver::dispatcher::{DispatchOptions, Dispatcher, Finished, OPEN_READ_REUSE};
use classhook::store::{Delivery, DeliveryFilter, DeliveryState, Store};
use common::receiver::{Receiver, Reply};
use common::*;
use serde_json::{Value, json};

const START_MS: i64 = 1_800_000_000_000;
const TOKEN: &str = "states-test-token-0123456789";

fn subscription(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[subscription]]\nname = \"{name}\"\nurl = \"{url}\"\nevents = [\"*\"]\nsecret = \"s3cret\"\n{extra}\n"
    )
}

/// A gateway whose deliveries queue up until the test steps its own dispatcher.
struct Stepped {
    gw: Gateway,
    clock: ManualClock,
    dispatcher: Dispatcher,
}

async fn stepped(subscriptions: &str) -> Stepped {
    let clock = ManualClock::at(START_MS);
    let config = format!(
        "[api]\ntokens = [\"{TOKEN}\"]\n[delivery]\nenabled = false\nallow_private_destinations = true\n{SOURCES}\n{subscriptions}"
    );
    let gw = Gateway::start_with_clock("", &config, Arc::new(clock.clone())).await;
    let dispatcher = Dispatcher::new(
        gw.store.clone(),
        Arc::new(clock.clone()),
        DispatchOptions {
            allow_private_destinations: true,
            hold_after_failures: 20,
            poll_interval: Duration::from_millis(10),
            lease_margin: Duration::from_secs(30),
        },
    );
    Stepped {
        gw,
        clock,
        dispatcher,
    }
}

async fn deliveries(store: &Store, subscription: &str) -> Vec<Delivery> {
    let mut all = store
        .list_deliveries(DeliveryFilter {
            subscription: Some(subscription.into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap();
    all.reverse();
    all
}

#[tokio::test]
async fn gone_is_sent_once_and_nothing_more_is_claimed_until_resume() {
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(410)]);
    let mut s = stepped(&subscription("crm", &receiver.url(), "max_in_flight = 1")).await;
    s.gw.post_classes(0..3).await;

    // One round leases all three; the first answers 410, the two waiting behind it
    // see the pause once they have the slot and give their leases back unsent.
    let finished = s.dispatcher.step().await;
    assert_eq!(receiver.received().len(), 1, "exactly one request");
    assert_eq!(
        finished
            .iter()
            .filter(|f| **f == Finished::Released)
            .count(),
        2,
        "{finished:?}"
    );
    let subscription = s.gw.store.get_subscription("crm").await.unwrap().unwrap();
    assert!(subscription.paused);
    // Whichever of the three took the slot first got the 410.
    let gone_id = receiver.received()[0].header("webhook-id").to_string();
    let all = deliveries(&s.gw.store, "crm").await;
    let first = all.iter().find(|d| d.webhook_id == gone_id).unwrap();
    assert_eq!(first.state, DeliveryState::Pending);
    assert_eq!(first.attempts, 1, "the 410 is an attempt");
    assert!(
        all.iter()
            .filter(|d| d.id != first.id)
            .all(|d| d.attempts == 0)
    );

    // The gone delivery is due at once, but a paused subscription is never leased.
    for _ in 0..3 {
        assert_eq!(s.dispatcher.step().await, []);
    }
    assert_eq!(receiver.received().len(), 1);

    let (status, _) =
        s.gw.api(
            TOKEN,
            reqwest::Method::POST,
            "/subscriptions/crm/resume",
            None,
        )
        .await;
    assert_eq!(status, 200);
    let finished = s.dispatcher.step().await;
    assert_eq!(finished, [Finished::Attempted; 3]);
    assert_eq!(receiver.count_of(&first.webhook_id), 2, "410, then 200");
    assert!(
        deliveries(&s.gw.store, "crm")
            .await
            .iter()
            .all(|d| d.state == DeliveryState::Delivered)
    );
    s.gw.stop().await;
}

/// Deliveries leased before a pause made by another process (the CLI: the
/// gateway's store version does not move) and still waiting for their slot are
/// given back unsent once the pause is `OPEN_READ_REUSE` old; the one on the wire
/// finishes. (A pause or hold made through the gateway's own store stops them at
/// once: `gone_is_sent_once_and_nothing_more_is_claimed_until_resume` and
/// `a_held_subscription_is_not_leased`, where the next attempt gets its slot
/// well within `OPEN_READ_REUSE` of the last read.)
#[tokio::test]
async fn a_pause_made_by_another_process_stops_what_was_leased_before_it() {
    let receiver = Receiver::start().await;
    receiver.script([Reply::Held(200)]);
    let crm = subscription("crm", &receiver.url(), "max_in_flight = 1");
    let mut s = stepped(&crm).await;
    let cli_config = common::process::write_config(
        s.gw.dir.path(),
        &format!("[delivery]\nallow_private_destinations = true\n{SOURCES}\n{crm}"),
    );
    s.gw.post_classes(0..3).await;
    let round = tokio::spawn(async move {
        let finished = s.dispatcher.step().await;
        (s, finished)
    });
    // The first is on the wire; the other two are leased and wait for its slot.
    receiver.wait_for(1).await;
    let (code, _, err) = common::process::run(
        &[
            "subscriptions",
            "pause",
            "crm",
            "--config",
            cli_config.to_str().unwrap(),
        ],
        None,
    )
    .await;
    assert_eq!(code, 0, "{err}");
    // The last "still open" read was made before the first request went out; make
    // sure it is too old to serve the next attempts, whatever the CLI took.
    tokio::time::sleep(OPEN_READ_REUSE).await;
    receiver.release(1);
    let (s, mut finished) = round.await.unwrap();
    finished.sort_by_key(|f| *f != Finished::Attempted);
    assert_eq!(
        finished,
        [Finished::Attempted, Finished::Released, Finished::Released]
    );
    assert_eq!(receiver.received().len(), 1, "nothing sent after the pause");
    s.gw.stop().await;
}

/// `dispatcher` running as `serve` runs it, until the sender is used.
fn in_background(
    dispatcher: Dispatcher,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<()>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(dispatcher.run(async {
        let _ = stopped.await;
    }));
    (stop, running)
}

/// How many deliveries of `subscription` are delivered, once `count` are (or after
/// 3 s, whichever comes first).
async fn delivered(store: &Store, subscription: &str, count: usize) -> usize {
    let mut delivered = 0;
    for _ in 0..300 {
        delivered = deliveries(store, subscription)
            .await
            .iter()
            .filter(|d| d.state == DeliveryState::Delivered)
            .count();
        if delivered >= count {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    delivered
}

/// A delivery leased again while its attempt from an earlier lease is still on the
/// wire here (the store forgot that lease: on PostgreSQL a lease's commit does not
/// wait for the flush, so a crash of the server can lose the last ones) is not sent
/// a second time at once. Its lease goes back, and it is sent again once the first
/// request is over, under a lease that its record then matches.
#[tokio::test]
async fn a_delivery_leased_again_while_its_attempt_runs_is_not_sent_twice_at_once() {
    let receiver = Receiver::start().await;
    receiver.script([Reply::Held(200)]);
    let crm = subscription("crm", &receiver.url(), "max_in_flight = 2");
    let s = stepped(&crm).await;
    s.gw.post_classes(0..1).await;
    let (stop, running) = in_background(s.dispatcher);
    receiver.wait_for(1).await;
    common::backend::execute(
        s.gw.dir.path(),
        "UPDATE deliveries SET lease_until_ms = 0, lease_token = 0",
    )
    .await;
    // The dispatcher polls every 10 ms: many chances to lease it again and send it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.received().len(), 1, "sent again while on the wire");
    receiver.release(1);
    receiver.wait_for(2).await;
    assert_eq!(receiver.most_concurrent(), 1, "on the wire twice at once");
    assert_eq!(delivered(&s.gw.store, "crm", 1).await, 1);
    let _ = stop.send(());
    running.await.unwrap();
    assert_eq!(receiver.received().len(), 2);
    s.gw.stop().await;
}

/// An attempt whose lease ran out while it waited for a slot (its ownership
/// renewed meanwhile) gives the delivery back instead of sending it: the delivery
/// is due again and may already be another claim's.
#[tokio::test]
async fn a_lease_that_ran_out_while_waiting_for_a_slot_is_given_back_unsent() {
    let receiver = Receiver::start().await;
    receiver.script([Reply::Held(200)]);
    let crm = subscription("crm", &receiver.url(), "max_in_flight = 1");
    let s = stepped(&crm).await;
    s.gw.post_classes(0..2).await;
    let (stop, running) = in_background(s.dispatcher);
    // The first is on the wire; the second waits for its slot while an hour passes
    // and the dispatcher's rounds renew its ownership.
    receiver.wait_for(1).await;
    s.clock.advance(3_600_000);
    tokio::time::sleep(Duration::from_millis(200)).await;
    receiver.release(1);
    assert_eq!(delivered(&s.gw.store, "crm", 2).await, 2);
    let _ = stop.send(());
    running.await.unwrap();
    // The first's lease ran out too, on the wire: its record was refused and it was
    // sent again (at least once). The second was sent once, under a live lease.
    let received = receiver.received();
    let first = received[0].header("webhook-id");
    let second: Vec<&str> = received
        .iter()
        .map(|r| r.header("webhook-id"))
        .filter(|id| *id != first)
        .collect();
    assert_eq!(
        second.len(),
        1,
        "the second was sent {} times",
        second.len()
    );
    s.gw.stop().await;
}

#[tokio::test]
async fn a_held_subscription_is_not_leased() {
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(500)]);
    let mut s = stepped(&subscription(
        "flaky",
        &receiver.url(),
        "max_in_flight = 1\nretry_schedule = [\"1s\", \"1s\", \"1s\"]",
    ))
    .await;
    // Hold after the first failure.
    s.dispatcher = Dispatcher::new(
        s.gw.store.clone(),
        Arc::new(s.clock.clone()),
        DispatchOptions {
            allow_private_destinations: true,
            hold_after_failures: 1,
            poll_interval: Duration::from_millis(10),
            lease_margin: Duration::from_secs(30),
        },
    );
    s.gw.post_classes(0..2).await;
    let finished = s.dispatcher.step().await;
    assert_eq!(finished, [Finished::Attempted, Finished::Released]);
    assert_eq!(receiver.received().len(), 1);
    let held = s.gw.store.get_subscription("flaky").await.unwrap().unwrap();
    assert_eq!(held.hold_until_ms, START_MS + 60_000);

    s.clock.advance(2_000);
    assert_eq!(s.dispatcher.step().await, [], "due, but held");
    s.clock.advance(60_000);
    assert_eq!(
        s.dispatcher.step().await,
        [Finished::Attempted; 2],
        "tried again after the hold"
    );
    assert_eq!(receiver.received().len(), 3);
    s.gw.stop().await;
}

#[tokio::test]
async fn webhook_ids_are_unique_across_databases_and_stable_across_retries() {
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(500)]);
    let mut first = stepped(&subscription("crm", &receiver.url(), "")).await;
    let mut second = stepped(&subscription("crm", &receiver.url(), "")).await;
    // The same event, the first of each fresh database, to the first subscription.
    let event = dreamclass_sample("CLASS_CREATED", 1);
    assert_eq!(first.gw.post("/hooks/school", &event).await.status, 200);
    assert_eq!(second.gw.post("/hooks/school", &event).await.status, 200);
    first.dispatcher.step().await;
    second.dispatcher.step().await;
    first.clock.advance(20_000);
    first.dispatcher.step().await;

    let got = receiver.received();
    assert_eq!(got.len(), 3);
    let ids: Vec<&str> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids[0], ids[2], "a retry keeps its webhook-id");
    assert_ne!(ids[0], ids[1], "two databases never hand out the same id");
    for id in ids {
        assert!(id.starts_with("msg_") && id.len() == 36, "{id}");
    }
    first.gw.stop().await;
    second.gw.stop().await;
}

#[tokio::test]
async fn attempts_count_the_whole_attempt_log_across_replays() {
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(500), Reply::Status(500)]);
    let mut s = stepped(&subscription(
        "crm",
        &receiver.url(),
        "retry_schedule = [\"1s\"]",
    ))
    .await;
    s.gw.post_classes(0..1).await;
    s.dispatcher.step().await;
    s.clock.advance(2_000);
    s.dispatcher.step().await;
    let dead = deliveries(&s.gw.store, "crm").await.remove(0);
    assert_eq!(dead.state, DeliveryState::Dead);
    assert_eq!(dead.attempts, 2);

    let (status, _) =
        s.gw.api(
            TOKEN,
            reqwest::Method::POST,
            &format!("/deliveries/{}/replay", dead.id),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let replayed = deliveries(&s.gw.store, "crm").await.remove(0);
    assert_eq!(replayed.attempts, 2, "a replay keeps the count");
    s.dispatcher.step().await;
    let (status, view) =
        s.gw.api(
            TOKEN,
            reqwest::Method::GET,
            &format!("/deliveries/{}", dead.id),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(view["state"], "delivered");
    assert_eq!(view["attempts"], 3);
    assert_eq!(view["attempt_log"].as_array().unwrap().len(), 3);
    s.gw.stop().await;
}

#[tokio::test]
async fn a_replay_never_runs_beside_the_attempt_in_flight_and_a_success_stands() {
    let receiver = Receiver::start().await;
    receiver.script([Reply::Held(200)]);
    let mut s = stepped(&subscription("crm", &receiver.url(), "")).await;
    s.gw.post_classes(0..1).await;
    let id = deliveries(&s.gw.store, "crm").await[0].id;

    assert_eq!(s.dispatcher.lease_and_start().await, 1);
    receiver.wait_for(1).await;
    // The attempt is on the wire: a replay of it, or of its subscription, waits.
    let (status, body) =
        s.gw.api(
            TOKEN,
            reqwest::Method::POST,
            &format!("/deliveries/{id}/replay"),
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "conflict");
    let (status, body) =
        s.gw.api(
            TOKEN,
            reqwest::Method::POST,
            "/subscriptions/crm/replay",
            Some(json!({"dead_only": false})),
        )
        .await;
    assert_eq!((status, &body["queued"]), (200, &json!(0)));

    receiver.release(1);
    assert_eq!(s.dispatcher.settle().await, [Finished::Attempted]);
    let delivered = deliveries(&s.gw.store, "crm").await.remove(0);
    assert_eq!(delivered.state, DeliveryState::Delivered);
    assert_eq!(
        s.dispatcher.step().await,
        [],
        "a recorded success is not sent again"
    );
    assert_eq!(receiver.received().len(), 1);

    // Once the attempt has ended, an explicit replay sends it again.
    let (status, _) =
        s.gw.api(
            TOKEN,
            reqwest::Method::POST,
            &format!("/deliveries/{id}/replay"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(s.dispatcher.step().await, [Finished::Attempted]);
    assert_eq!(receiver.received().len(), 2);
    s.gw.stop().await;
}

#[tokio::test]
async fn deleting_a_subscription_during_an_attempt_fails_nothing_else() {
    let held = Receiver::start().await;
    held.script([Reply::Held(200)]);
    let other = Receiver::start().await;
    let mut s = stepped(&subscription("kept", &other.url(), "")).await;
    let (status, _) =
        s.gw.api(
            TOKEN,
            reqwest::Method::POST,
            "/subscriptions",
            Some(json!({"name": "doomed", "url": held.url(), "events": ["*"]})),
        )
        .await;
    assert_eq!(status, 201);
    s.gw.post_classes(0..1).await;
    assert_eq!(s.dispatcher.lease_and_start().await, 2);
    held.wait_for(1).await;

    let (status, _) =
        s.gw.api(
            TOKEN,
            reqwest::Method::DELETE,
            "/subscriptions/doomed",
            None,
        )
        .await;
    assert_eq!(status, 204);
    // The attempt to the deleted subscription ends while events keep arriving: its
    // record finds no lease and is dropped; every event is still stored.
    let posts = post_concurrently(
        &s.gw,
        (100..140).map(|n| dreamclass_sample("CLASS_CREATED", n)),
    );
    held.release(1);
    let mut finished = s.dispatcher.settle().await;
    finished.sort_by_key(|f| format!("{f:?}"));
    assert_eq!(finished, [Finished::Attempted, Finished::LeaseLost]);
    for post in posts {
        assert_eq!(post.await.unwrap(), 200);
    }
    assert_eq!(s.gw.store.count_events().await.unwrap(), 41);
    assert!(
        s.gw.store
            .get_subscription("doomed")
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(deliveries(&s.gw.store, "kept").await.len(), 41);
    s.gw.stop().await;
}

/// Posts every request to the school source at once, each on its own task; the
/// tasks answer with the status.
fn post_concurrently(
    gw: &Gateway,
    requests: impl IntoIterator<Item = classhook::provider::sample::SignedRequest>,
) -> Vec<tokio::task::JoinHandle<u16>> {
    requests
        .into_iter()
        .map(|request| {
            let url = gw.url("/hooks/school");
            let client = gw.client.clone();
            tokio::spawn(async move {
                let mut builder = client.post(url).body(request.body);
                for (name, value) in &request.headers {
                    builder = builder.header(name, value);
                }
                builder.send().await.unwrap().status().as_u16()
            })
        })
        .collect()
}

/// Holds the database's write lock from another connection until dropped, so that
/// the writer's next batch waits and collects everything queued meanwhile.
fn lock_database(gw: &Gateway) -> rusqlite::Connection {
    let conn = rusqlite::Connection::open(gw.store.location()).unwrap();
    conn.execute_batch("BEGIN IMMEDIATE").unwrap();
    conn
}

#[tokio::test]
async fn one_failing_operation_fails_alone_and_its_batch_commits() {
    if common::backend::skip_unless_sqlite(
        "one_failing_operation_fails_alone_and_its_batch_commits",
        "it plants an SQLite trigger; the PostgreSQL backend has its own isolation test",
    ) {
        return;
    }
    let s = stepped("").await;
    let poison = dreamclass_sample("CLASS_CREATED", 666);
    // The database itself refuses this one event (as a constraint would).
    rusqlite::Connection::open(s.gw.store.location())
        .unwrap()
        .execute_batch(&format!(
            "CREATE TRIGGER refuse_one BEFORE INSERT ON events WHEN NEW.event_id = '{}'
             BEGIN SELECT RAISE(ABORT, 'refused by test trigger'); END",
            id_of(&poison)
        ))
        .unwrap();

    let lock = lock_database(&s.gw);
    let mut requests: Vec<_> = (0..30)
        .map(|n| dreamclass_sample("CLASS_CREATED", n))
        .collect();
    requests.insert(15, poison);
    let posts = post_concurrently(&s.gw, requests);
    // Let the requests reach the writer's queue (the writer itself holds the first
    // few, waiting for the lock), so that most share one batch; then let the writer
    // in, well before its busy timeout (5 s) would give up.
    for _ in 0..300 {
        if s.gw.store.queued_writes() >= 20 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(lock);
    let statuses: Vec<u16> = futures_join(posts).await;
    assert_eq!(
        statuses[15], 503,
        "the refused event gets 503; the platform retries"
    );
    assert!(
        statuses
            .iter()
            .enumerate()
            .all(|(i, s)| i == 15 || *s == 200),
        "{statuses:?}"
    );
    assert_eq!(s.gw.store.count_events().await.unwrap(), 30);
    s.gw.stop().await;
}

async fn futures_join(tasks: Vec<tokio::task::JoinHandle<u16>>) -> Vec<u16> {
    let mut out = Vec::new();
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

#[tokio::test]
async fn retry_after_is_never_undercut() {
    let receiver = Receiver::start().await;
    receiver.script([Reply::StatusWithRetryAfter(429, 3)]);
    // The real clock and the background dispatcher: the schedule's 1 s step is
    // shorter than the 3 s the receiver asked for.
    let config = format!(
        "[delivery]\nallow_private_destinations = true\npoll_interval = \"20ms\"\n{SOURCES}\n{}",
        subscription("crm", &receiver.url(), "retry_schedule = [\"1s\"]")
    );
    let gw = Gateway::start_with_clock("", &config, Arc::new(SystemClock)).await;
    gw.post_classes(0..1).await;
    let got = receiver.wait_for_within(2, Duration::from_secs(10)).await;
    let waited = got[1].at - got[0].at;
    assert!(
        waited >= Duration::from_secs(3),
        "retried after {waited:?}, before the 3 s asked for"
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_event_that_waited_too_long_for_the_store_is_not_stored() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &classhook::store::Location::sqlite(dir.path()),
        classhook::store::StoreOptions {
            max_commit_lag: Duration::from_millis(200),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let config = config_in(dir.path(), "", SOURCES);
    let source = config.sources.iter().find(|s| s.name == "school").unwrap();
    let request = dreamclass_sample("CLASS_CREATED", 1);
    let event = classhook::ingest::authenticate(
        source,
        &header_map(&request.headers),
        request.body.clone().into(),
        START_MS,
    )
    .unwrap();

    let lock = rusqlite::Connection::open(store.location()).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    let append = tokio::spawn({
        let store = store.clone();
        async move { store.append(event).await }
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    lock.execute_batch("COMMIT").unwrap();
    let answer = append.await.unwrap();
    assert!(
        matches!(answer, Err(classhook::store::StoreError::Timeout(_))),
        "{answer:?}"
    );
    assert_eq!(store.count_events().await.unwrap(), 0, "not stored late");
}

/// Creates a subscription to every event through the API.
async fn create_subscription(gw: &Gateway, name: &str, url: &str) {
    let (status, body) = gw
        .api(
            TOKEN,
            reqwest::Method::POST,
            "/subscriptions",
            Some(json!({"name": name, "url": url, "events": ["*"]})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

#[tokio::test]
async fn an_unreadable_stored_subscription_is_an_error_not_a_default() {
    let s = stepped("").await;
    create_subscription(&s.gw, "crm", "https://crm.example.com/hook").await;
    common::backend::execute(
        s.gw.dir.path(),
        "UPDATE subscriptions SET managed_by = 'someone'",
    )
    .await;
    let (status, body) =
        s.gw.api(TOKEN, reqwest::Method::GET, "/subscriptions/crm", None)
            .await;
    assert!(status >= 500, "{status} {body}");
    let (status, _) =
        s.gw.api(
            TOKEN,
            reqwest::Method::PATCH,
            "/subscriptions/crm",
            Some(json!({"max_in_flight": 2})),
        )
        .await;
    assert!(status >= 500, "not editable on a guess: {status}");
    s.gw.stop().await;
}

#[tokio::test]
async fn concurrent_changes_to_one_subscription_both_apply() {
    let s = stepped("").await;
    create_subscription(&s.gw, "crm", "https://crm.example.com/hook").await;
    for round in 1..=10u32 {
        let url = format!("https://crm.example.com/hook/{round}");
        let (a, b) = tokio::join!(
            s.gw.api(
                TOKEN,
                reqwest::Method::PATCH,
                "/subscriptions/crm",
                Some(json!({"url": url})),
            ),
            s.gw.api(
                TOKEN,
                reqwest::Method::PATCH,
                "/subscriptions/crm",
                Some(json!({"max_in_flight": round})),
            ),
        );
        assert_eq!((a.0, b.0), (200, 200));
        let stored = s.gw.store.get_subscription("crm").await.unwrap().unwrap();
        assert_eq!(stored.spec.url, url);
        assert_eq!(stored.spec.max_in_flight, round);
    }
    s.gw.stop().await;
}

/// What a DreamClass delivery is about: its type and the class id.
fn about(received: &common::receiver::Received) -> (String, u64) {
    let body: Value = serde_json::from_slice(&received.body).unwrap();
    (
        body["type"].as_str().unwrap().to_string(),
        body["data"]["id"].as_u64().unwrap(),
    )
}

fn abouts(receiver: &Receiver) -> Vec<(String, u64)> {
    receiver.received().iter().map(about).collect()
}

/// The requests about class `id`, in the order they arrived.
fn of_class(receiver: &Receiver, id: u64) -> Vec<String> {
    abouts(receiver)
        .into_iter()
        .filter(|(_, class)| *class == id)
        .map(|(event_type, _)| event_type)
        .collect()
}

/// Created, updated, deleted for classes 1 and 2, interleaved.
async fn post_two_class_lives(gw: &Gateway) {
    for event_type in ["CLASS_CREATED", "CLASS_UPDATED", "CLASS_DELETED"] {
        for class in [1, 2] {
            let answer = gw
                .post("/hooks/school", &dreamclass_sample(event_type, class - 1))
                .await;
            assert_eq!(answer.status, 200);
        }
    }
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}

#[tokio::test]
async fn ordered_deliveries_of_one_entity_wait_for_the_one_before_while_others_flow_on() {
    let ordered = Receiver::start().await;
    ordered.fail_first_attempt_of(|r| about(r) == ("CLASS_CREATED".into(), 1));
    let unordered = Receiver::start().await;
    let subs = subscription("crm", &ordered.url(), "ordering = \"entity\"")
        + &subscription("audit", &unordered.url(), "");
    let mut s = stepped(&subs).await;
    post_two_class_lives(&s.gw).await;

    // Only the first delivery of each class is leased; the unordered subscription
    // gets everything at once.
    s.dispatcher.step().await;
    let mut first = abouts(&ordered);
    first.sort();
    assert_eq!(
        first,
        [("CLASS_CREATED".into(), 1), ("CLASS_CREATED".into(), 2)]
    );
    assert_eq!(unordered.received().len(), 6);

    // Class 2 flows on, one at a time, while class 1 waits for its retry (10 s).
    for _ in 0..3 {
        s.dispatcher.step().await;
    }
    assert_eq!(
        of_class(&ordered, 2),
        strings(&["CLASS_CREATED", "CLASS_UPDATED", "CLASS_DELETED"])
    );
    assert_eq!(of_class(&ordered, 1), strings(&["CLASS_CREATED"]));
    let waiting: Vec<(i64, DeliveryState)> = deliveries(&s.gw.store, "crm")
        .await
        .iter()
        .filter(|d| d.state == DeliveryState::Pending)
        .map(|d| (d.attempts, d.state))
        .collect();
    assert_eq!(
        waiting,
        [
            (1, DeliveryState::Pending),
            (0, DeliveryState::Pending),
            (0, DeliveryState::Pending)
        ],
        "the failed one waits for its retry, the two after it have not been tried"
    );

    // After the retry, class 1's later events follow in stored order.
    s.clock.advance(11_000);
    for _ in 0..4 {
        s.dispatcher.step().await;
    }
    assert_eq!(
        of_class(&ordered, 1),
        strings(&[
            "CLASS_CREATED",
            "CLASS_CREATED",
            "CLASS_UPDATED",
            "CLASS_DELETED"
        ])
    );
    assert!(
        ordered.most_concurrent() <= 2,
        "at most one request per class at once"
    );
    assert!(
        deliveries(&s.gw.store, "crm")
            .await
            .iter()
            .all(|d| d.state == DeliveryState::Delivered)
    );
    s.gw.stop().await;
}

#[tokio::test]
async fn a_dead_letter_releases_the_entity_and_a_replay_keeps_the_order() {
    let receiver = Receiver::start().await;
    receiver.fail_first_attempt_of(|r| about(r) == ("CLASS_CREATED".into(), 1));
    let extra = "ordering = \"entity\"\nretry_schedule = []";
    let mut s = stepped(&subscription("crm", &receiver.url(), extra)).await;
    post_two_class_lives(&s.gw).await;
    for _ in 0..4 {
        s.dispatcher.step().await;
    }
    // No retries: the failed first event of class 1 is a dead letter, and the
    // events after it were delivered.
    assert_eq!(
        of_class(&receiver, 1),
        strings(&["CLASS_CREATED", "CLASS_UPDATED", "CLASS_DELETED"])
    );
    let dead: Vec<DeliveryState> = deliveries(&s.gw.store, "crm")
        .await
        .iter()
        .map(|d| d.state)
        .filter(|state| *state == DeliveryState::Dead)
        .collect();
    assert_eq!(dead.len(), 1);

    // A replay of everything sends each class's events again, in stored order, one
    // at a time.
    let (status, _) =
        s.gw.api(
            TOKEN,
            reqwest::Method::POST,
            "/subscriptions/crm/replay",
            Some(json!({"dead_only": false})),
        )
        .await;
    assert_eq!(status, 200);
    s.dispatcher.step().await;
    assert_eq!(
        receiver.received().len(),
        6 + 2,
        "only the first of each class"
    );
    for _ in 0..3 {
        s.dispatcher.step().await;
    }
    let lives = strings(&["CLASS_CREATED", "CLASS_UPDATED", "CLASS_DELETED"]);
    for class in [1, 2] {
        let got = of_class(&receiver, class);
        assert_eq!(got[got.len() - 3..], lives[..], "class {class}: {got:?}");
    }
    s.gw.stop().await;
}

#[tokio::test]
async fn a_subscription_changed_to_ordered_orders_what_is_already_queued() {
    let receiver = Receiver::start().await;
    let mut s = stepped("").await;
    let (status, _) =
        s.gw.api(
            TOKEN,
            reqwest::Method::POST,
            "/subscriptions",
            Some(
                json!({"name": "crm", "url": receiver.url(), "events": ["*"], "secret": "s3cret"}),
            ),
        )
        .await;
    assert_eq!(status, 201);
    post_two_class_lives(&s.gw).await;

    let (status, view) =
        s.gw.api(
            TOKEN,
            reqwest::Method::PATCH,
            "/subscriptions/crm",
            Some(json!({"ordering": "entity"})),
        )
        .await;
    assert_eq!((status, &view["ordering"]), (200, &json!("entity")));
    assert_eq!(
        s.dispatcher.step().await.len(),
        2,
        "the first of each class"
    );
    assert_eq!(s.dispatcher.step().await.len(), 2);
    assert_eq!(s.dispatcher.step().await.len(), 2);
    for class in [1, 2] {
        assert_eq!(
            of_class(&receiver, class),
            strings(&["CLASS_CREATED", "CLASS_UPDATED", "CLASS_DELETED"])
        );
    }

    // Back to no order: everything queued goes at once.
    let (status, view) =
        s.gw.api(
            TOKEN,
            reqwest::Method::PATCH,
            "/subscriptions/crm",
            Some(json!({"ordering": "none"})),
        )
        .await;
    assert_eq!((status, &view["ordering"]), (200, &json!("none")));
    post_two_class_lives(&s.gw).await;
    assert_eq!(s.dispatcher.step().await.len(), 6);

    let (status, error) =
        s.gw.api(
            TOKEN,
            reqwest::Method::PATCH,
            "/subscriptions/crm",
            Some(json!({"ordering": "fifo"})),
        )
        .await;
    assert_eq!(status, 400);
    assert!(error.to_string().contains("ordering"), "{error}");
    s.gw.stop().await;
}
