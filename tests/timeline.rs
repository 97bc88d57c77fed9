//! Time windows over the event log (served by sequence-range search, not an index).

mod common;

use std::sync::Arc;

use classhook::clock::ManualClock;
use classhook::store::EventFilter;
use common::*;

#[tokio::test]
async fn since_and_until_select_exactly_the_events_received_in_the_window() {
    let clock = ManualClock::at(1_800_000_000_000);
    let gw = Gateway::start_with_clock("", SOURCES, Arc::new(clock.clone())).await;
    // 30 events, one every ten minutes.
    for n in 0..30 {
        assert_eq!(
            gw.post("/hooks/school", &dreamclass_sample("CLASS_CREATED", n))
                .await
                .status,
            200
        );
        clock.advance(600_000);
    }
    let at = |n: i64| 1_800_000_000_000 + n * 600_000;
    let window = async |since: Option<i64>, until: Option<i64>| {
        let mut seqs: Vec<i64> = gw
            .store
            .list_events(EventFilter {
                since_ms: since,
                until_ms: until,
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.seq.get())
            .collect();
        seqs.sort();
        seqs
    };
    assert_eq!(window(Some(at(10)), Some(at(13))).await, [11, 12, 13]);
    assert_eq!(
        window(Some(at(10) + 1), Some(at(13) + 1)).await,
        [12, 13, 14]
    );
    assert_eq!(window(Some(at(28)), None).await, [29, 30]);
    assert_eq!(window(None, Some(at(2))).await, [1, 2]);
    assert_eq!(window(Some(at(40)), None).await, Vec::<i64>::new());
    assert_eq!(window(None, Some(at(-1))).await, Vec::<i64>::new());
    assert_eq!(window(None, None).await.len(), 30);
    let stats = gw.store.stats(Some(at(5)), Some(at(15))).await.unwrap();
    assert_eq!(stats.iter().map(|r| r.events).sum::<i64>(), 10);
    gw.stop().await;
}
