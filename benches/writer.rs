//! Writer benchmark: `cargo bench --bench writer`.
//!
//! The store alone, without HTTP: events are authenticated beforehand by ingest's own
//! code, then appended through `Store::append` with BENCH_IN_FLIGHT (default 32)
//! callers waiting at once, as the ingest benchmark's connections do. Under HTTP load
//! the writer thread is what saturates first, so its capacity bounds ingest; this
//! measures that capacity with less noise than the HTTP benchmark.
//!
//! Knobs: BENCH_EVENTS (default 200,000), BENCH_ENTITIES (default 100,000: entity of
//! event n is n mod this), BENCH_IN_FLIGHT, BENCH_SUBSCRIPTION (default 1: one
//! subscription matches every event, so each append also writes its outbox row, as
//! in the ingest benchmark; 0: none).

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
    let sections = if env_or("BENCH_SUBSCRIPTION", 1) == 1 {
        "[delivery]\nenabled = false\n\n[[subscription]]\nname = \"everything\"\nurl = \"https://receiver.example/hooks\"\nevents = [\"*\"]\nsecret = \"sink-secret\"\n"
    } else {
        ""
    };
    let (_, config) = bench_config(dir.path(), sections);
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
    classhook::deliver::config_sync::sync_config_subscriptions(
        &store,
        config.subscriptions.clone(),
    )
    .await
    .unwrap();
    let writer_before = WriterThread::sample();
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
    let writer = WriterThread::sample().since(&writer_before);
    let stored = store.count_events().await.unwrap();
    assert_eq!(stored, events as i64, "every append is stored");
    println!();
    println!(
        "writer: {events} events ({entities} entities), {in_flight} in flight: {:.0} events/s ({seconds:.1} s)",
        events as f64 / seconds
    );
    let per_event = |v: f64| v / events as f64;
    println!(
        "writer thread per event: {:.1} µs on CPU, {:.1} µs waiting for a CPU, {:.2} KiB written ({:.2} write calls), {:.2} context switches",
        per_event(writer.run_ns / 1000.0),
        per_event(writer.wait_ns / 1000.0),
        per_event(writer.wchar / 1024.0),
        per_event(writer.syscw),
        per_event(writer.switches),
    );
}

/// The writer thread's scheduler and I/O counters (`/proc/self/task/*`): CPU time,
/// time runnable but waiting for a CPU, switches, bytes and calls of writes (WAL
/// frames and checkpoints).
#[derive(Default)]
struct WriterThread {
    run_ns: f64,
    wait_ns: f64,
    switches: f64,
    wchar: f64,
    syscw: f64,
}

impl WriterThread {
    fn sample() -> WriterThread {
        for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
            let path = task.path();
            let comm = std::fs::read_to_string(path.join("comm")).unwrap_or_default();
            if comm.trim() != "classhook-write" {
                continue;
            }
            let numbers = |file: &str| -> Vec<f64> {
                std::fs::read_to_string(path.join(file))
                    .unwrap_or_default()
                    .split_whitespace()
                    .filter_map(|v| v.parse().ok())
                    .collect()
            };
            let sched = numbers("schedstat");
            let io = std::fs::read_to_string(path.join("io")).unwrap_or_default();
            let field = |name: &str| {
                io.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
                    .unwrap_or(0.0)
            };
            return WriterThread {
                run_ns: sched.first().copied().unwrap_or(0.0),
                wait_ns: sched.get(1).copied().unwrap_or(0.0),
                switches: sched.get(2).copied().unwrap_or(0.0),
                wchar: field("wchar:"),
                syscw: field("syscw:"),
            };
        }
        WriterThread::default()
    }

    fn since(&self, before: &WriterThread) -> WriterThread {
        WriterThread {
            run_ns: self.run_ns - before.run_ns,
            wait_ns: self.wait_ns - before.wait_ns,
            switches: self.switches - before.switches,
            wchar: self.wchar - before.wchar,
            syscw: self.syscw - before.syscw,
        }
    }
}
