//! What the benchmarks share: knobs from the environment, a config with one DreamClass
//! source, events authenticated as ingest would, and starting the release `classhook`
//! binary as a child process.
#![allow(dead_code)]

pub mod load;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use classhook::config::{Config, Source};
use classhook::event::NewEvent;
use classhook::ingest;
use classhook::provider::{ProviderKind, sample};
use classhook::store::{Store, StoreOptions};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// Runs a benchmark on a multi-threaded runtime, as `serve` would.
pub fn run(bench: impl Future<Output = ()>) {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(bench);
}

/// Writes `bench.toml` into `dir`: `sections` (TOML tables), `data_dir` under `dir`,
/// and one DreamClass source `bench` signing with `bench-secret`.
pub fn bench_config(dir: &Path, sections: &str) -> (PathBuf, Config) {
    let file = dir.join("bench.toml");
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n{sections}\n[[source]]\nname = \"bench\"\nprovider = \"dreamclass\"\nsecret = \"bench-secret\"\n",
        dir.join("data").display().to_string()
    );
    std::fs::write(&file, &text).unwrap();
    let config = Config::from_toml_str(&file, &text, &[], &|_| None).unwrap();
    (file, config)
}

/// A DreamClass event about `data`, signed for `source` and authenticated by ingest's
/// own code: what a handler would hand the store.
pub fn authenticated(source: &Source, event_type: &str, data: Value, received_ms: i64) -> NewEvent {
    let request = sample::build_request(
        ProviderKind::DreamClass,
        source.signing_key.as_ref(),
        event_type,
        data,
        "bench-school",
    );
    let mut headers = axum::http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    ingest::authenticate(source, &headers, Bytes::from(request.body), received_ms).unwrap()
}

/// A numeric knob from the environment.
pub fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Starts `binary` with `args`, waits (bounded) for its "listening on" line, and keeps
/// draining its log, passing on anything that is not routine.
pub async fn spawn(binary: &str, args: &[&str]) -> (Child, SocketAddr) {
    let mut child = Command::new(binary)
        .args(args)
        .env("CLASSHOOK_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = tokio::time::timeout(Duration::from_secs(60), lines.next_line())
            .await
            .expect("the server starts within 60 s")
            .unwrap()
            .expect("the server printed its address");
        if let Some(rest) = line.split("listening on http://").nth(1) {
            break rest.split_whitespace().next().unwrap().parse().unwrap();
        }
    };
    tokio::spawn(async move {
        while let Ok(Some(line)) = lines.next_line().await {
            if !line.contains(" INFO ") {
                eprintln!("server: {line}");
            }
        }
    });
    (child, addr)
}

/// Stores `events` events about `entities` entities through ingest's own
/// authenticate-and-append path: attendances created, then mostly updated, with some
/// classes, payments and (0.1 %) quarantined events. Returns the first receive time.
pub async fn seed(config: &Config, events: u64, entities: u64) -> i64 {
    let store = Store::open(
        &config.store_location(),
        StoreOptions {
            max_batch: 4096,
            ..StoreOptions::default()
        },
    )
    .await
    .unwrap();
    let source = Arc::new(config.sources[0].clone());
    let first_ms = chrono::Utc::now().timestamp_millis();
    let mut in_flight = tokio::task::JoinSet::new();
    for n in 0..events {
        let (source, store) = (source.clone(), store.clone());
        in_flight.spawn(async move {
            let entity = n % entities;
            // The first round creates every attendance; later rounds mostly update it,
            // with some classes, payments and (0.1 %) quarantined events mixed in.
            let (event_type, data) = match (n < entities, n % 1000) {
                (true, _) => (
                    "ATTENDANCE_CREATED",
                    sample::sample_data(ProviderKind::DreamClass, "ATTENDANCE_CREATED", entity),
                ),
                (false, 0..=49) => (
                    "CLASS_UPDATED",
                    sample::sample_data(ProviderKind::DreamClass, "CLASS_UPDATED", entity),
                ),
                (false, 50..=59) => (
                    "PAYMENT_UPDATED",
                    sample::sample_data(ProviderKind::DreamClass, "PAYMENT_UPDATED", entity),
                ),
                (false, 60) => (
                    "ATTENDANCE_UPDATED",
                    json!({"id": entity + 1, "date": "not a date"}),
                ),
                (false, _) => (
                    "ATTENDANCE_UPDATED",
                    sample::sample_data(ProviderKind::DreamClass, "ATTENDANCE_UPDATED", entity),
                ),
            };
            let event = authenticated(&source, event_type, data, first_ms + n as i64);
            store.append(event).await.unwrap();
        });
        if in_flight.len() >= 4096 {
            in_flight.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(done) = in_flight.join_next().await {
        done.unwrap();
    }
    first_ms
}
