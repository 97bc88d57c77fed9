//! Writer benchmark: `cargo bench --bench writer`.
//!
//! The store alone, without HTTP: events are authenticated beforehand by ingest's own
//! code, then appended through `Store::append` with BENCH_IN_FLIGHT (default 32)
//! callers waiting at once, as the ingest benchmark's connections do. Under HTTP load
//! the writer thread is what saturates first, so its capacity bounds ingest; this
//! measures that capacity with less noise than the HTTP benchmark.
//!
//! Knobs: BENCH_EVENTS (default 200,000), BENCH_ENTITIES (default 100,000: entity of
//! event n is n mod this), BENCH_IN_FLIGHT.

mod support;

use std::sync::Arc;
use std::time::Instant;
use support::{authenticated, bench_config, env_or};

use classhook::provider::{ProviderKind, sample};
use classhook::store::{Store, StoreOptions};

fn main() {
    support::run(bench());
}

async fn bench() {
    let events = env_or("BENCH_EVENTS", 200_000);
    let entities = env_or("BENCH_ENTITIES", 100_000);
    let in_flight = env_or("BENCH_IN_FLIGHT", 32) as usize;
    let dir = tempfile::tempdir().unwrap();
    let (_, config) = bench_config(dir.path(), "");
    let source = &config.sources[0];

    eprintln!("authenticating {events} events …");
    let received_ms = chrono::Utc::now().timestamp_millis();
    let mut prepared: Vec<_> = (0..events)
        .map(|n| {
            let data =
                sample::sample_data(ProviderKind::DreamClass, "ATTENDANCE_UPDATED", n % entities);
            authenticated(source, "ATTENDANCE_UPDATED", data, received_ms)
        })
        .collect();
    prepared.reverse();
    let queue = Arc::new(std::sync::Mutex::new(prepared));

    let store = Store::open(&config.store_location(), StoreOptions::default())
        .await
        .unwrap();
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for _ in 0..in_flight {
        let (queue, store) = (queue.clone(), store.clone());
        callers.spawn(async move {
            loop {
                let Some(event) = queue.lock().unwrap().pop() else {
                    break;
                };
                store.append(event).await.unwrap();
            }
        });
    }
    while let Some(done) = callers.join_next().await {
        done.unwrap();
    }
    let seconds = started.elapsed().as_secs_f64();
    let stored = store.count_events().await.unwrap();
    assert_eq!(stored, events as i64, "every append is stored");
    println!();
    println!(
        "writer: {events} events ({entities} entities), {in_flight} in flight: {:.0} events/s ({seconds:.1} s)",
        events as f64 / seconds
    );
}
