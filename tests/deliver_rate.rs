//! Rate limits per subscription, on the real clock with the gateway's own
//! dispatcher, over real sockets: a declared `rate_limit` holds in every second,
//! waiting for it is not an attempt, and a 429 slows a subscription down on its own.
//! (Across three instances: `tests/multi_instance.rs`.)

mod common;

use std::sync::Arc;
use std::time::Duration;

use classhook::clock::SystemClock;
use classhook::store::{Delivery, DeliveryFilter, DeliveryState, Store};
use common::receiver::{Received, Receiver, Reply, most_in_one_second};
use common::*;

fn config(receiver: &Receiver, extra: &str) -> String {
    format!(
        "[delivery]\nallow_private_destinations = true\npoll_interval = \"20ms\"\n{SOURCES}\n\
         [[subscription]]\nname = \"crm\"\nurl = \"{}\"\nevents = [\"*\"]\nsecret = \"s3cret\"\n\
         retry_schedule = [\"1s\", \"1s\", \"1s\"]\n{extra}\n",
        receiver.url()
    )
}

/// A gateway on `config` that delivers on its own, on the real clock.
async fn start(config: &str) -> Gateway {
    Gateway::start_with_clock("", config, Arc::new(SystemClock)).await
}

/// How many requests arrived in the second starting at `from_ms`.
fn arrived_within_a_second_of(received: &[Received], from_ms: i64) -> usize {
    received
        .iter()
        .filter(|r| r.at_ms > from_ms && r.at_ms <= from_ms + 1000)
        .count()
}

async fn all_deliveries(store: &Store) -> Vec<Delivery> {
    store
        .list_deliveries(DeliveryFilter {
            subscription: Some("crm".into()),
            limit: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
}

async fn wait_until_all_delivered(store: &Store, n: usize) -> Vec<Delivery> {
    for _ in 0..1500 {
        let all = all_deliveries(store).await;
        if all.len() == n && all.iter().all(|d| d.state == DeliveryState::Delivered) {
            return all;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("not all delivered: {:?}", all_deliveries(store).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_holds_in_every_second_and_waiting_is_not_an_attempt() {
    let receiver = Receiver::start().await;
    let events = 60;
    let gw = start(&config(&receiver, "rate_limit = \"20/s\"")).await;
    gw.post_classes(0..events).await;
    let got = receiver
        .wait_for_within(events as usize, Duration::from_secs(20))
        .await;
    let most = most_in_one_second(&got);
    // The bound: never more than one second's worth over the limit. The
    // pace itself allows 21 (one interval of tolerance); loopback and a loaded
    // machine may bunch arrivals a little.
    assert!(
        most <= 40,
        "{most} requests within one second under rate_limit = \"20/s\""
    );
    let delivered = wait_until_all_delivered(&gw.store, events as usize).await;
    assert!(
        delivered.iter().all(|d| d.attempts == 1),
        "waiting for the rate limit used an attempt: {:?}",
        delivered.iter().map(|d| d.attempts).collect::<Vec<_>>()
    );
    assert_eq!(got.len(), events as usize, "each sent once");
    eprintln!("rate_limit 20/s: at most {most} requests in one second");
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_slows_a_limited_subscription_down_and_nothing_is_lost() {
    let receiver = Receiver::start().await;
    let events = 50;
    // 20 requests at full speed, then two 429s without Retry-After.
    let mut script = vec![Reply::Status(200); 20];
    script.extend([Reply::Status(429), Reply::Status(429)]);
    receiver.script(script);
    let gw = start(&config(&receiver, "rate_limit = \"20/s\"")).await;
    gw.post_classes(0..events).await;
    let got = receiver
        .wait_for_within(events as usize + 2, Duration::from_secs(30))
        .await;
    let last_429 = got[21].at_ms;
    let after = arrived_within_a_second_of(&got, last_429);
    // Halved at least once (10/s), more likely twice (5/s), climbing back by 2/s
    // per second; unslowed it would be 20 or 21.
    assert!(
        after <= 15,
        "{after} requests in the second after the 429s under rate_limit = \"20/s\""
    );
    let delivered = wait_until_all_delivered(&gw.store, events as usize).await;
    let retried = delivered.iter().filter(|d| d.attempts == 2).count();
    assert_eq!(retried, 2, "the two throttled deliveries were retried once");
    assert!(delivered.iter().all(|d| d.attempts <= 2));
    eprintln!("after two 429s: {after} requests in the next second");
    let metrics = gw.metrics().await;
    assert!(
        metrics
            .contains("classhook_delivery_slowdowns_total{instance=\"gw\",subscription=\"crm\"}")
            && metrics
                .contains("classhook_delivery_rate_waiting{instance=\"gw\",subscription=\"crm\"}"),
        "{metrics}"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_slows_down_a_subscription_without_a_rate_limit_too() {
    let receiver = Receiver::start().await;
    // The first request is throttled; the receiver holds nothing else back.
    receiver.script([Reply::Held(429)]);
    let gw = start(&config(&receiver, "max_in_flight = 1")).await;
    gw.post_classes(0..1).await;
    receiver.wait_for(1).await;
    // Nineteen more queue up behind the throttled one.
    gw.post_classes(1..20).await;
    receiver.release(1);
    let throttled_at = receiver.received()[0].at_ms;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let after = arrived_within_a_second_of(&receiver.received(), throttled_at);
    // It was sending one at a time: now at most one every two seconds, climbing.
    // Without the slow-down all 19 would have arrived.
    assert!(
        after <= 2,
        "{after} requests in the second after a 429 (no rate_limit declared)"
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_rate_never_lets_a_lease_expire_under_a_waiting_delivery() {
    let receiver = Receiver::start().await;
    let events = 12;
    // Leases of 100 ms × 9 + 100 ms: at 5/s, a few turns fit in one, not all twelve.
    let gw = start(
        &config(&receiver, "rate_limit = \"5/s\"\ntimeout = \"100ms\"")
            .replace("poll_interval", "lease_margin = \"100ms\"\npoll_interval"),
    )
    .await;
    gw.post_classes(0..events).await;
    let delivered = wait_until_all_delivered(&gw.store, events as usize).await;
    assert!(delivered.iter().all(|d| d.attempts == 1), "{delivered:?}");
    let got = receiver.received();
    for d in &delivered {
        assert_eq!(
            receiver.count_of(&d.webhook_id),
            1,
            "sent again after its lease ran out while it waited"
        );
    }
    assert_eq!(got.len(), events as usize);
    let most = most_in_one_second(&got);
    assert!(most <= 10, "{most} requests within one second at 5/s");
    gw.stop().await;
}
