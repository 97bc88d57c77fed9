//! Retention prunes old raw events on a schedule; the mirror stays.

mod common;

use std::sync::Arc;
use std::time::Duration;

use classhook::clock::{Clock, ManualClock};
use classhook::server;
use common::*;

#[tokio::test]
async fn old_events_are_pruned_and_the_mirror_stays() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_in(
        dir.path(),
        "",
        &format!("[retention]\nevents_days = 1\ninterval = \"50ms\"\n{SOURCES}"),
    );
    let clock = ManualClock::at(1_800_000_000_000);
    let running = server::start(&config, Arc::new(clock.clone()))
        .await
        .unwrap();
    let client = reqwest::Client::new();
    let old = dreamclass_sample("CLASS_CREATED", 1);
    let response = client
        .post(format!("http://{}/hooks/school", running.addr))
        .body(old.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    clock.advance(2 * 86_400_000);
    let fresh = dreamclass_sample("CLASS_CREATED", 2);
    let response = client
        .post(format!("http://{}/hooks/school", running.addr))
        .body(fresh.body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let store = running.store.clone();
    let mut remaining = i64::MAX;
    for _ in 0..100 {
        remaining = store.count_events().await.unwrap();
        if remaining == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(remaining, 1, "the old event is pruned, the fresh one kept");
    assert!(
        store
            .find_event("school", &format!("id:{}", id_of(&fresh)))
            .await
            .unwrap()
            .is_some()
    );
    let classes = store
        .mirror_counts()
        .await
        .unwrap()
        .into_iter()
        .find(|k| k.kind == "class")
        .unwrap();
    assert_eq!(classes.live, 2, "the mirror keeps both classes");
    running.stop().await;
}

#[tokio::test]
async fn pruning_an_event_prunes_its_deliveries_and_their_attempts() {
    let receiver = common::receiver::Receiver::start().await;
    let clock = ManualClock::at(1_800_000_000_000);
    let config = format!(
        "[delivery]\nenabled = false\nallow_private_destinations = true\n{SOURCES}\n[[subscription]]\nname = \"crm\"\nurl = \"{}\"\nevents = [\"*\"]\n",
        receiver.url()
    );
    let gw = Gateway::start_with_clock("", &config, Arc::new(clock.clone())).await;
    let mut dispatcher = classhook::deliver::dispatcher::Dispatcher::new(
        gw.store.clone(),
        Arc::new(clock.clone()),
        classhook::deliver::dispatcher::DispatchOptions {
            allow_private_destinations: true,
            hold_after_failures: 20,
            poll_interval: Duration::from_millis(10),
            lease_margin: Duration::from_secs(30),
        },
    );
    let old = dreamclass_sample("CLASS_CREATED", 1);
    assert_eq!(gw.post("/hooks/school", &old).await.status, 200);
    assert_eq!(dispatcher.step().await.len(), 1);
    clock.advance(2 * 86_400_000);
    let fresh = dreamclass_sample("CLASS_CREATED", 2);
    assert_eq!(gw.post("/hooks/school", &fresh).await.status, 200);

    let pruned = gw
        .store
        .prune_events(clock.now_ms() - 86_400_000)
        .await
        .unwrap();
    assert_eq!(pruned, 1);
    let left = gw
        .store
        .list_deliveries(classhook::store::DeliveryFilter {
            limit: 100,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(left.len(), 1, "only the fresh event's delivery: {left:?}");
    let counts = common::backend::query_counts(
        gw.dir.path(),
        "SELECT (SELECT count(*) FROM deliveries), (SELECT count(*) FROM attempts)",
    )
    .await;
    assert_eq!(counts, [1, 0], "the old attempt went with it");
    gw.stop().await;
}
