//! Delivery to real HTTP receivers on loopback: what subscribers receive, retries on
//! a controllable clock, dead letters, replay, backfill, pauses, isolation, safety.

mod common;

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use classhook::clock::{Clock, ManualClock};
use classhook::crypto;
use classhook::deliver::dispatcher::{DispatchOptions, Dispatcher, Finished};
use classhook::provider::{dreamclass, loopwise as lw};
use classhook::store::{Delivery, DeliveryFilter, DeliveryState, Store};
use common::receiver::{Receiver, Reply};
use common::*;
use serde_json::{Value, json};

const START_MS: i64 = 1_800_000_000_000;
const SUB_SECRET: &str = "subscriber-secret";

/// Sources plus subscriptions to `url`, with delivery allowed to loopback.
fn config(subscriptions: &str) -> String {
    format!(
        "[delivery]\nenabled = false\nallow_private_destinations = true\n\n{SOURCES}\n{subscriptions}"
    )
}

fn subscription(name: &str, url: &str, extra: &str) -> String {
    format!(
        "[[subscription]]\nname = \"{name}\"\nurl = \"{url}\"\nevents = [\"*\"]\nsecret = \"{SUB_SECRET}\"\nretry_schedule = [\"10s\", \"1m\", \"10m\"]\n{extra}\n"
    )
}

/// A gateway whose deliveries wait for the test to step its dispatcher.
async fn start(subscriptions: &str) -> (Gateway, ManualClock, Dispatcher) {
    let clock = ManualClock::at(START_MS);
    let gw = Gateway::start_with_clock("", &config(subscriptions), Arc::new(clock.clone())).await;
    let dispatcher = dispatcher(&gw, &clock, true, 20);
    (gw, clock, dispatcher)
}

fn dispatcher(
    gw: &Gateway,
    clock: &ManualClock,
    allow_private: bool,
    hold_after: u32,
) -> Dispatcher {
    Dispatcher::new(
        gw.store.clone(),
        Arc::new(clock.clone()),
        DispatchOptions {
            allow_private_destinations: allow_private,
            hold_after_failures: hold_after,
            poll_interval: Duration::from_millis(10),
            lease_margin: Duration::from_secs(30),
        },
    )
}

async fn deliveries(store: &Store, subscription: &str) -> Vec<Delivery> {
    store
        .list_deliveries(DeliveryFilter {
            subscription: Some(subscription.into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
}

async fn only(store: &Store, subscription: &str) -> Delivery {
    let mut all = deliveries(store, subscription).await;
    assert_eq!(all.len(), 1, "{all:?}");
    all.remove(0)
}

fn header<'a>(received: &'a common::receiver::Received, name: &str) -> &'a str {
    received
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
}

/// What a Standard Webhooks verifier does.
fn standard_webhooks_verifies(received: &common::receiver::Received, key: &[u8]) -> bool {
    let id = header(received, "webhook-id");
    let timestamp = header(received, "webhook-timestamp");
    let mut signed = format!("{id}.{timestamp}.").into_bytes();
    signed.extend_from_slice(&received.body);
    let expected = format!("v1,{}", BASE64.encode(crypto::hmac_sha256(key, &signed)));
    header(received, "webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

#[tokio::test]
async fn a_dreamclass_receiver_gets_the_same_envelope_signed_with_its_secret() {
    let receiver = Receiver::start().await;
    let (gw, _clock, mut d) = start(&subscription(
        "crm",
        &receiver.url(),
        "basic_auth = { username = \"hook\", password = \"pw\" }",
    ))
    .await;
    let sent = dreamclass_sample("ATTENDANCE_CREATED", 5);
    assert_eq!(gw.post("/hooks/school", &sent).await.status, 200);

    assert_eq!(d.step().await, [Finished::Attempted]);
    let got = receiver.wait_for(1).await.remove(0);
    let original: Value = serde_json::from_slice(&sent.body).unwrap();
    let delivered: Value = serde_json::from_slice(&got.body).unwrap();
    for field in ["id", "type", "tenant", "timestamp", "data"] {
        assert_eq!(delivered[field], original[field], "{field}");
    }
    // A DreamClass-style receiver verifies the id's signature with its own secret.
    let id = delivered["id"].as_str().unwrap();
    assert_eq!(
        delivered["signature"],
        dreamclass::sign(SUB_SECRET.as_bytes(), id)
    );
    assert_ne!(delivered["signature"], original["signature"]);
    assert!(standard_webhooks_verifies(&got, SUB_SECRET.as_bytes()));
    assert!(header(&got, "webhook-id").starts_with("msg_"));
    assert_eq!(header(&got, "content-type"), "application/json");
    assert!(header(&got, "user-agent").starts_with("classhook/"));
    assert_eq!(
        header(&got, "authorization"),
        format!("Basic {}", BASE64.encode("hook:pw"))
    );

    d.step().await;
    assert!(
        only(&gw.store, "crm").await.state == DeliveryState::Delivered,
        "delivered"
    );
    let delivery = only(&gw.store, "crm").await;
    let (_, attempts) = gw.store.get_delivery(delivery.id).await.unwrap().unwrap();
    assert_eq!(attempts.len(), 1);
    assert_eq!(attempts[0].status_code, Some(200));
    assert_eq!(attempts[0].response.as_deref(), Some("{\"ok\":true}"));
    gw.stop().await;
}

/// The deliveries of one event to two subscriptions, leased in one claim, share
/// the event (and the body prepared from it): each still gets its own signature,
/// and both bodies are the same envelope, byte for byte apart from it.
#[tokio::test]
async fn one_event_claimed_for_two_subscriptions_is_signed_for_each() {
    let (first, second) = (Receiver::start().await, Receiver::start().await);
    let subs = subscription("first", &first.url(), "")
        + &format!(
            "[[subscription]]\nname = \"second\"\nurl = \"{}\"\nevents = [\"*\"]\nsecret = \"another-secret\"\n",
            second.url()
        );
    let (gw, _clock, mut d) = start(&subs).await;
    let sent = dreamclass_sample("ATTENDANCE_CREATED", 9);
    assert_eq!(gw.post("/hooks/school", &sent).await.status, 200);
    assert_eq!(d.step().await, [Finished::Attempted; 2]);
    let (a, b) = (
        first.wait_for(1).await.remove(0),
        second.wait_for(1).await.remove(0),
    );
    let id = id_of(&sent);
    let signed_a = dreamclass::sign(SUB_SECRET.as_bytes(), &id);
    let signed_b = dreamclass::sign(b"another-secret", &id);
    let a_text = String::from_utf8(a.body.clone()).unwrap();
    let b_text = String::from_utf8(b.body.clone()).unwrap();
    assert!(a_text.contains(&signed_a), "{a_text}");
    assert!(b_text.contains(&signed_b), "{b_text}");
    assert_eq!(a_text.replace(&signed_a, ""), b_text.replace(&signed_b, ""));
    assert!(standard_webhooks_verifies(&a, SUB_SECRET.as_bytes()));
    assert!(standard_webhooks_verifies(&b, b"another-secret"));
    gw.stop().await;
}

#[tokio::test]
async fn a_loopwise_receiver_gets_the_body_byte_for_byte() {
    let receiver = Receiver::start().await;
    let (gw, _clock, mut d) = start(
        &subscription("lms", &receiver.url(), "events = [\"course.*\"]")
            .replace("events = [\"*\"]\n", ""),
    )
    .await;
    // Spacing a serializer would not produce: the bytes must arrive untouched.
    let data = classhook::provider::sample::sample_data(
        classhook::provider::ProviderKind::Loopwise,
        "course.updated",
        1,
    );
    let body = format!("{{ \"type\":  \"course.updated\", \"data\": {data} }}").into_bytes();
    let headers = vec![(
        lw::SIGNATURE_HEADER.to_string(),
        lw::sign(COURSES_SECRET.as_bytes(), &body),
    )];
    assert_eq!(
        gw.post_raw("/hooks/courses", &headers, body.clone())
            .await
            .status,
        200
    );
    // Not matched by `course.*`: never sent.
    assert_eq!(
        gw.post(
            "/hooks/courses",
            &loopwise(
                "payment.paid",
                classhook::provider::sample::sample_data(
                    classhook::provider::ProviderKind::Loopwise,
                    "payment.paid",
                    1
                )
            )
        )
        .await
        .status,
        200
    );

    assert_eq!(d.step().await, [Finished::Attempted]);
    let got = receiver.wait_for(1).await.remove(0);
    assert_eq!(got.body, body);
    let signature = hex::decode(header(&got, "loopwise-webhook-signature")).unwrap();
    assert!(crypto::hmac_sha256_matches(
        SUB_SECRET.as_bytes(),
        &got.body,
        &signature
    ));
    assert!(standard_webhooks_verifies(&got, SUB_SECRET.as_bytes()));
    // The payment made no delivery row, so nothing can ever send it.
    assert_eq!(deliveries(&gw.store, "lms").await.len(), 1);
    assert_eq!(receiver.received().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn a_failure_is_retried_on_schedule_with_the_same_webhook_id() {
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(500)]);
    let (gw, clock, mut d) = start(&subscription("crm", &receiver.url(), "")).await;
    assert_eq!(
        gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 1))
            .await
            .status,
        200
    );

    d.step().await;
    assert!(
        only(&gw.store, "crm").await.attempts == 1,
        "first attempt recorded"
    );
    let delivery = only(&gw.store, "crm").await;
    assert_eq!(delivery.state, DeliveryState::Pending);
    assert_eq!(delivery.last_error.as_deref(), Some("HTTP 500"));
    let delay = delivery.next_attempt_at_ms - START_MS;
    assert!(
        (9_000..=11_000).contains(&delay),
        "10 s with 10 % jitter, got {delay} ms"
    );

    // Not due yet: nothing is leased.
    assert_eq!(d.step().await, []);
    assert_eq!(receiver.received().len(), 1);
    clock.advance(11_000);
    d.step().await;
    assert!(
        only(&gw.store, "crm").await.state == DeliveryState::Delivered,
        "delivered on the retry"
    );
    let got = receiver.received();
    assert_eq!(got.len(), 2);
    assert_eq!(header(&got[0], "webhook-id"), header(&got[1], "webhook-id"));
    gw.stop().await;
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_failed_attempts() {
    let receiver = Receiver::start().await;
    receiver.script([Reply::Slow(Duration::from_secs(3))]);
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let subs = subscription("slow", &receiver.url(), "timeout = \"200ms\"")
        + &subscription("gone-away", &format!("http://{closed}/hook"), "");
    let (gw, _clock, mut d) = start(&subs).await;
    assert_eq!(
        gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 1))
            .await
            .status,
        200
    );
    d.step().await;
    assert!(
        only(&gw.store, "slow").await.attempts == 1,
        "timeout recorded"
    );
    d.step().await;
    assert!(
        only(&gw.store, "gone-away").await.attempts == 1,
        "refusal recorded"
    );
    assert_eq!(
        only(&gw.store, "slow").await.last_error.as_deref(),
        Some("timed out")
    );
    let refused = only(&gw.store, "gone-away").await.last_error.unwrap();
    assert!(refused.to_lowercase().contains("connect"), "{refused}");
    gw.stop().await;
}

#[tokio::test]
async fn gone_pauses_the_subscription_until_it_is_resumed() {
    let receiver = Receiver::start().await;
    receiver.script([Reply::Status(410)]);
    let (gw, _clock, mut d) = start(&subscription("crm", &receiver.url(), "")).await;
    assert_eq!(
        gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 1))
            .await
            .status,
        200
    );
    d.step().await;
    assert!(
        gw.store
            .get_subscription("crm")
            .await
            .unwrap()
            .unwrap()
            .paused,
        "paused"
    );
    let subscription = gw.store.get_subscription("crm").await.unwrap().unwrap();
    assert!(subscription.paused_reason.unwrap().contains("410"));
    assert_eq!(
        gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 2))
            .await
            .status,
        200
    );
    assert_eq!(d.step().await, [], "nothing is leased while paused");
    assert_eq!(receiver.received().len(), 1);

    gw.store.set_paused("crm", false, None).await.unwrap();
    d.step().await;
    receiver.wait_for(3).await;
    d.step().await;
    assert!(
        deliveries(&gw.store, "crm")
            .await
            .iter()
            .all(|d| d.state == DeliveryState::Delivered),
        "both delivered"
    );
    gw.stop().await;
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let receiver = Receiver::start().await;
    receiver.script([Reply::StatusWithRetryAfter(429, 120)]);
    let (gw, _clock, mut d) = start(&subscription("crm", &receiver.url(), "")).await;
    assert_eq!(
        gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 1))
            .await
            .status,
        200
    );
    d.step().await;
    assert!(
        only(&gw.store, "crm").await.attempts == 1,
        "throttled attempt recorded"
    );
    let delay = only(&gw.store, "crm").await.next_attempt_at_ms - START_MS;
    assert!(
        (120_000..=132_000).contains(&delay),
        "never before the 120 s asked for, at most 10 % later: {delay}"
    );
    gw.stop().await;
}

#[tokio::test]
async fn after_the_last_retry_it_is_a_dead_letter_and_replay_delivers_it() {
    let receiver = Receiver::start().await;
    receiver.script([
        Reply::Status(500),
        Reply::Status(502),
        Reply::Status(500),
        Reply::Status(503),
    ]);
    let (gw, clock, mut d) = start(&subscription("crm", &receiver.url(), "")).await;
    assert_eq!(
        gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 1))
            .await
            .status,
        200
    );
    for attempt in 1..=3 {
        d.step().await;
        assert!(
            only(&gw.store, "crm").await.attempts == attempt,
            "attempt recorded"
        );
        clock.advance(15 * 60_000);
    }
    d.step().await;
    assert!(
        only(&gw.store, "crm").await.state == DeliveryState::Dead,
        "dead"
    );
    let dead = only(&gw.store, "crm").await;
    assert_eq!(dead.attempts, 4, "the first try and three retries");
    let (_, attempts) = gw.store.get_delivery(dead.id).await.unwrap().unwrap();
    assert_eq!(
        attempts.iter().map(|a| a.status_code).collect::<Vec<_>>(),
        [Some(500), Some(502), Some(500), Some(503)]
    );
    let listed = gw
        .store
        .list_deliveries(DeliveryFilter {
            state: Some(DeliveryState::Dead),
            limit: 10,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(listed.len(), 1);

    let replayed = gw
        .store
        .replay_subscription("crm", true, None, None, clock.now_ms())
        .await
        .unwrap();
    assert_eq!(replayed, 1);
    d.step().await;
    assert!(
        only(&gw.store, "crm").await.state == DeliveryState::Delivered,
        "delivered after replay"
    );
    let got = receiver.received();
    assert_eq!(got.len(), 5);
    assert_eq!(
        header(&got[0], "webhook-id"),
        header(&got[4], "webhook-id"),
        "replays keep the webhook-id"
    );
    gw.stop().await;
}

#[tokio::test]
async fn backfill_gives_a_new_subscriber_the_history() {
    let receiver = Receiver::start().await;
    let (gw, clock, mut d) = start("").await;
    for n in 0..3 {
        assert_eq!(
            gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", n))
                .await
                .status,
            200
        );
    }
    let bad = dreamclass(
        "CLASS_CREATED",
        json!({"id": "not an integer"}),
        "my-school",
    );
    assert_eq!(gw.post("/hooks/school", &bad).await.status, 200);
    let spec = config_in(
        gw.dir.path(),
        "",
        &config(&subscription("late", &receiver.url(), "")),
    )
    .subscriptions
    .remove(0);
    gw.store.create_subscription(spec).await.unwrap();
    let added = gw
        .store
        .backfill("late", None, None, clock.now_ms())
        .await
        .unwrap();
    assert_eq!(added, 3, "quarantined events are not delivered");
    d.step().await;
    receiver.wait_for(3).await;
    assert_eq!(
        gw.store
            .backfill("late", None, None, clock.now_ms())
            .await
            .unwrap(),
        0,
        "no duplicates"
    );
    gw.stop().await;
}

#[tokio::test]
async fn a_slow_subscriber_does_not_delay_another() {
    let slow = Receiver::start().await;
    slow.script((0..4).map(|_| Reply::Held(200)));
    let fast = Receiver::start().await;
    let subs = subscription("slow", &slow.url(), "max_in_flight = 2")
        + &subscription("fast", &fast.url(), "");
    let (gw, _clock, mut d) = start(&subs).await;
    for n in 0..4 {
        assert_eq!(
            gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", n))
                .await
                .status,
            200
        );
    }
    assert_eq!(d.lease_and_start().await, 8);
    // The slow receiver holds every request it gets; the fast one still gets all four.
    fast.wait_for(4).await;
    slow.wait_for(2).await;
    assert_eq!(
        slow.received().len(),
        2,
        "max_in_flight bounds the slow one"
    );
    slow.release(4);
    assert_eq!(d.settle().await, [Finished::Attempted; 8]);
    assert_eq!(slow.received().len(), 4);
    gw.stop().await;
}

#[tokio::test]
async fn duplicates_and_quarantined_events_create_no_delivery() {
    let receiver = Receiver::start().await;
    let (gw, _clock, mut d) = start(&subscription("crm", &receiver.url(), "")).await;
    let event = dreamclass_sample("CLASS_CREATED", 1);
    for _ in 0..3 {
        assert_eq!(gw.post("/hooks/school", &event).await.status, 200);
    }
    let bad = dreamclass("CLASS_CREATED", json!({"id": 1, "name": 5}), "my-school");
    assert_eq!(gw.post("/hooks/school", &bad).await.status, 200);
    assert_eq!(deliveries(&gw.store, "crm").await.len(), 1);
    assert_eq!(d.step().await, [Finished::Attempted]);
    assert_eq!(receiver.received().len(), 1);
    gw.stop().await;
}

#[tokio::test]
async fn private_destinations_are_refused_unless_allowed() {
    let receiver = Receiver::start().await;
    let clock = ManualClock::at(START_MS);
    let text = format!("{SOURCES}\n{}", subscription("crm", &receiver.url(), ""));
    let gw = Gateway::start_with_clock(
        "",
        &format!("[delivery]\nenabled = false\nallow_private_destinations = true\n{text}"),
        Arc::new(clock.clone()),
    )
    .await;
    // Declared with loopback allowed; sent by a dispatcher that refuses it: the guard
    // at send time (after DNS resolution) is what is tested here.
    let mut d = dispatcher(&gw, &clock, false, 20);
    let named = format!("http://localhost:{}/webhook", receiver.addr.port());
    let mut spec = config_in(
        gw.dir.path(),
        "",
        &config(&subscription("by-name", &named, "")),
    )
    .subscriptions
    .remove(0);
    spec.events = vec!["CLASS_*".into()];
    gw.store.create_subscription(spec).await.unwrap();
    assert_eq!(
        gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 1))
            .await
            .status,
        200
    );
    d.step().await;
    assert!(
        only(&gw.store, "crm").await.attempts == 1
            && only(&gw.store, "by-name").await.attempts == 1,
        "refusals recorded"
    );
    assert!(
        only(&gw.store, "crm")
            .await
            .last_error
            .unwrap()
            .contains("not allowed")
    );
    assert!(
        only(&gw.store, "by-name")
            .await
            .last_error
            .unwrap()
            .contains("not allowed")
    );
    assert!(receiver.received().is_empty());
    gw.stop().await;
}

#[tokio::test]
async fn a_subscription_that_keeps_failing_is_held_then_tried_again() {
    let receiver = Receiver::start().await;
    receiver.script((0..10).map(|_| Reply::Status(500)));
    let (gw, clock, _) = start(
        &subscription(
            "flaky",
            &receiver.url(),
            "retry_schedule = [\"1s\", \"1s\", \"1s\", \"1s\"]",
        )
        .replace("retry_schedule = [\"10s\", \"1m\", \"10m\"]\n", ""),
    )
    .await;
    let mut d = dispatcher(&gw, &clock, true, 2);
    assert_eq!(
        gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 1))
            .await
            .status,
        200
    );
    assert_eq!(d.step().await, [Finished::Attempted], "first failure");
    clock.advance(1_200);
    assert_eq!(d.step().await, [Finished::Attempted], "second failure");
    let held = gw.store.get_subscription("flaky").await.unwrap().unwrap();
    assert_eq!(held.consecutive_failures, 2);
    assert_eq!(
        held.hold_until_ms - clock.now_ms(),
        60_000,
        "held one minute after the second failure"
    );

    // The retry is due, but the subscription is on hold: nothing is leased.
    clock.advance(1_200);
    assert_eq!(d.step().await, []);
    assert_eq!(receiver.received().len(), 2);
    clock.advance(60_000);
    assert_eq!(
        d.step().await,
        [Finished::Attempted],
        "tried again after the hold"
    );
    assert_eq!(only(&gw.store, "flaky").await.attempts, 3);
    gw.stop().await;
}

#[tokio::test]
async fn redirects_are_not_followed_and_response_bodies_are_bounded() {
    let receiver = Receiver::start().await;
    receiver.script([
        Reply::Body(302, String::new()),
        Reply::Body(200, "x".repeat(5000)),
    ]);
    let (gw, clock, mut d) = start(&subscription("crm", &receiver.url(), "")).await;
    assert_eq!(
        gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 1))
            .await
            .status,
        200
    );
    d.step().await;
    assert!(
        only(&gw.store, "crm").await.attempts == 1,
        "redirect recorded as a failure"
    );
    assert_eq!(
        only(&gw.store, "crm").await.last_error.as_deref(),
        Some("HTTP 302")
    );
    assert_eq!(
        receiver.received().len(),
        1,
        "the Location was not followed"
    );
    clock.advance(11_000);
    d.step().await;
    assert!(
        only(&gw.store, "crm").await.state == DeliveryState::Delivered,
        "delivered"
    );
    let (_, attempts) = gw
        .store
        .get_delivery(only(&gw.store, "crm").await.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(attempts[1].response.as_ref().unwrap().len(), 1024);
    gw.stop().await;
}

#[tokio::test]
async fn metrics_count_attempts_dead_letters_lag_and_the_queue_per_subscription() {
    let good = Receiver::start().await;
    let bad = Receiver::start().await;
    bad.script([Reply::Status(500)]);
    let subscriptions = format!(
        "{}{}",
        subscription("crm", &good.url(), ""),
        subscription("broken", &bad.url(), "").replace(
            "retry_schedule = [\"10s\", \"1m\", \"10m\"]",
            "retry_schedule = []"
        )
    );
    let (gw, _clock, d) = start(&subscriptions).await;
    let metrics = classhook::metrics::Metrics::new();
    let mut d = d.with_observer(metrics.clone());
    assert_eq!(
        gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", 1))
            .await
            .status,
        200
    );
    assert_eq!(d.step().await.len(), 2);
    let queue = gw.store.delivery_queue().await.unwrap();
    let text = metrics.render(&[], &queue, 0);
    for expected in [
        "classhook_delivery_attempts_total{subscription=\"crm\",result=\"success\"} 1",
        "classhook_delivery_attempts_total{subscription=\"broken\",result=\"failed\"} 1",
        "classhook_delivery_dead_letters_total{subscription=\"broken\"} 1",
        "classhook_delivery_lag_seconds_count 1",
        "classhook_delivery_attempt_duration_seconds_count 2",
        "classhook_delivery_queue{subscription=\"broken\",state=\"dead\"} 1",
        "classhook_delivery_queue{subscription=\"broken\",state=\"pending\"} 0",
        "classhook_delivery_queue{subscription=\"crm\",state=\"pending\"} 0",
    ] {
        assert!(text.contains(expected), "{expected} missing from:\n{text}");
    }
    gw.stop().await;
}
