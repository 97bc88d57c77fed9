//! Retention prunes old raw events on a schedule; the mirror stays.

mod common;

use std::sync::Arc;
use std::time::Duration;

use classhook::clock::ManualClock;
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
        remaining = store.count_events().unwrap();
        if remaining == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(remaining, 1, "the old event is pruned, the fresh one kept");
    assert!(
        store
            .find_event("school", &format!("id:{}", id_of(&fresh)))
            .unwrap()
            .is_some()
    );
    let classes = store
        .mirror_counts()
        .unwrap()
        .into_iter()
        .find(|k| k.kind == "class")
        .unwrap();
    assert_eq!(classes.live, 2, "the mirror keeps both classes");
    running.stop().await;
}
