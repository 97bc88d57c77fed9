//! Ingest during `mirror rebuild`: `cargo bench --bench rebuild`.
//!
//! Seeds BENCH_EVENTS events (default 1,000,000) about BENCH_ENTITIES entities
//! (default 100,000) through ingest's own path, then appends new events at
//! BENCH_RATE per second (default 500) — first for BENCH_SECONDS (default 5) with no
//! rebuild (the baseline, same run), then for as long as a rebuild of the whole log
//! takes — and reports the append latency (what a webhook waits for its 200, minus
//! HTTP) in both phases, the rebuild's duration, and the longest pause the rebuild
//! imposed on appends.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};
use support::{authenticated, bench_config, env_or};

use classhook::provider::{ProviderKind, sample};
use classhook::store::{Store, StoreOptions};

fn main() {
    support::run(bench());
}

async fn bench() {
    let events = env_or("BENCH_EVENTS", 1_000_000);
    let entities = env_or("BENCH_ENTITIES", 100_000);
    let rate = env_or("BENCH_RATE", 500);
    let baseline_secs = env_or("BENCH_SECONDS", 5);
    let dir = tempfile::tempdir().unwrap();
    let (_file, config) = bench_config(dir.path(), "");
    let started = Instant::now();
    support::seed(&config, events, entities).await;
    eprintln!("seeded {events} events in {:.1?}", started.elapsed());

    let store = Store::open(&config.store_location(), StoreOptions::default())
        .await
        .unwrap();
    let source = Arc::new(config.sources[0].clone());
    let baseline = load(
        &store,
        &source,
        rate,
        Load::For(Duration::from_secs(baseline_secs)),
    )
    .await;

    let rebuilding = {
        let store = store.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let report = store
                .rebuild_mirror(classhook::store::NoProgress::shared())
                .await
                .unwrap();
            (report, started.elapsed())
        })
    };
    let during = load(&store, &source, rate, Load::Until(rebuilding)).await;
    let (report, took) = during.1.expect("the rebuild finished");

    println!("| measure | value |\n|---|---:|");
    println!(
        "| rebuild of {} events | {:.1} s |",
        report.events,
        took.as_secs_f64()
    );
    for (name, latencies) in [
        ("without rebuild", &baseline.0),
        ("during the rebuild", &during.0),
    ] {
        let (p50, p99, max) = percentiles(latencies);
        println!(
            "| append latency {name} ({} appends at {rate}/s): p50 / p99 / max | {p50:.1} / {p99:.1} / {max:.1} ms |",
            latencies.len()
        );
    }
}

enum Load {
    For(Duration),
    Until(tokio::task::JoinHandle<(classhook::store::RebuildReport, Duration)>),
}

/// Appends at `rate` per second (each on its own task, as concurrent webhooks
/// would) until the load ends; returns each append's latency in ms.
async fn load(
    store: &Store,
    source: &Arc<classhook::config::Source>,
    rate: u64,
    until: Load,
) -> (
    Vec<f64>,
    Option<(classhook::store::RebuildReport, Duration)>,
) {
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut n = 0u64;
    let (deadline, mut rebuild) = match until {
        Load::For(duration) => (Some(Instant::now() + duration), None),
        Load::Until(handle) => (None, Some(handle)),
    };
    let mut finished = None;
    loop {
        ticker.tick().await;
        if deadline.is_some_and(|at| Instant::now() >= at) {
            break;
        }
        if rebuild.as_ref().is_some_and(|h| h.is_finished()) {
            finished = Some(rebuild.take().unwrap().await.unwrap());
            break;
        }
        n += 1;
        let (store, source) = (store.clone(), source.clone());
        tasks.spawn(async move {
            let data = sample::sample_data(ProviderKind::DreamClass, "CLASS_UPDATED", n % 1000);
            let event = authenticated(&source, "CLASS_UPDATED", data, 0);
            let sent = Instant::now();
            store.append(event).await.expect("appended");
            sent.elapsed().as_secs_f64() * 1000.0
        });
    }
    let mut latencies = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies.push(done.unwrap());
    }
    (latencies, finished)
}

fn percentiles(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| sorted[((sorted.len() as f64 * q) as usize).min(sorted.len() - 1)];
    (at(0.5), at(0.99), *sorted.last().unwrap())
}
