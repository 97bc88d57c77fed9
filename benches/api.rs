//! API read benchmark: `cargo bench --bench api`.
//!
//! Seeds a fresh store with BENCH_EVENTS events (default 1,000,000) describing
//! BENCH_ENTITIES entities (default 100,000), through the same authenticate-and-
//! append path as ingest, then starts the release gateway on it and measures, over
//! one keep-alive HTTP connection, the latency of listing a page of events with a
//! filter and of reading one entity (BENCH_REQUESTS each, default 1000).
//! BENCH_BACKEND=postgres seeds and serves a fresh PostgreSQL database instead.

mod support;

use std::net::SocketAddr;
use std::time::Instant;
use support::{bench_config, env_or, spawn};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;

const TOKEN: &str = "bench-token-0123456789abcdef";

fn main() {
    support::run(bench());
}

async fn bench() {
    let events = env_or("BENCH_EVENTS", 1_000_000);
    let entities = env_or("BENCH_ENTITIES", 100_000);
    let requests = env_or("BENCH_REQUESTS", 1000) as usize;
    let dir = tempfile::tempdir().unwrap();
    let database = match std::env::var("BENCH_BACKEND").as_deref() {
        Ok("postgres") => Some(
            classhook::store::postgres::testing::TestDatabase::create("api_bench")
                .await
                .expect("BENCH_BACKEND=postgres needs the server at 127.0.0.1:5432"),
        ),
        _ => None,
    };
    let database_section = database
        .as_ref()
        .map(|d| format!("[database]\nurl = {:?}\n", d.url()))
        .unwrap_or_default();
    let (file, config) = bench_config(
        dir.path(),
        &format!("{database_section}[api]\ntokens = [\"{TOKEN}\"]\n"),
    );

    let started = Instant::now();
    let first_ms = support::seed(&config, events, entities).await;
    eprintln!(
        "seeded {events} events about {entities} entities in {:.1?}",
        started.elapsed()
    );

    let (mut gateway, addr) = serve(&file).await;
    let mut client = Client::connect(addr).await;
    let mid = chrono::DateTime::from_timestamp_millis(first_ms + events as i64 / 2)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let mut rng = 0x9E3779B97F4A7C15u64;
    let mut next = move |bound: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng % bound + 1
    };
    type Path = Box<dyn FnMut() -> String>;
    let scenarios: Vec<(&str, Path)> = vec![
        (
            "events, newest page, no filter",
            Box::new(|| "/api/v1/events?limit=50".to_string()),
        ),
        (
            "events, type filter",
            Box::new(|| "/api/v1/events?type=CLASS_UPDATED&limit=50".to_string()),
        ),
        (
            "events, status filter (rare)",
            Box::new(|| "/api/v1/events?status=quarantined&limit=50".to_string()),
        ),
        (
            "events, source filter, random deep cursor",
            Box::new(move || {
                format!(
                    "/api/v1/events?source=bench&limit=50&cursor={}",
                    next(events)
                )
            }),
        ),
        (
            "events, since filter",
            Box::new(move || format!("/api/v1/events?since={mid}&limit=50")),
        ),
        (
            "one entity, random id",
            Box::new(move || format!("/api/v1/entities/attendance/{}", next(entities))),
        ),
        (
            "entity history, random id",
            Box::new(move || format!("/api/v1/entities/attendance/{}/history", next(entities))),
        ),
        (
            "entities, field filter",
            Box::new(|| "/api/v1/entities/attendance?classId=34&limit=50".to_string()),
        ),
    ];
    println!();
    println!("| request ({events} events, {entities} entities) | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|");
    for (name, mut path) in scenarios {
        let mut latencies = Vec::with_capacity(requests);
        for _ in 0..requests {
            let path = path();
            let sent = Instant::now();
            let status = client.get(&path).await;
            latencies.push(sent.elapsed());
            assert_eq!(status, 200, "{path}");
        }
        latencies.sort_unstable();
        let pct = |p: f64| {
            latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)]
                .as_secs_f64()
                * 1000.0
        };
        println!(
            "| {name} | {:.2} | {:.2} | {:.2} |",
            pct(0.5),
            pct(0.99),
            latencies.last().unwrap().as_secs_f64() * 1000.0
        );
    }
    let _ = gateway.kill().await;
}

struct Client {
    addr: SocketAddr,
    sender: hyper::client::conn::http1::SendRequest<Empty<Bytes>>,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.set_nodelay(true).unwrap();
        let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        Client { addr, sender }
    }

    async fn get(&mut self, path: &str) -> u16 {
        let request = hyper::Request::get(path)
            .header("host", self.addr.to_string())
            .header("authorization", format!("Bearer {TOKEN}"))
            .body(Empty::new())
            .unwrap();
        self.sender
            .ready()
            .await
            .unwrap_or_else(|e| panic!("{path}: {e:?}"));
        let response = self
            .sender
            .send_request(request)
            .await
            .unwrap_or_else(|e| panic!("{path}: {e:?}"));
        let status = response.status().as_u16();
        response.into_body().collect().await.unwrap();
        status
    }
}

/// Starts the release gateway on `config`.
async fn serve(config: &std::path::Path) -> (tokio::process::Child, SocketAddr) {
    spawn(
        env!("CARGO_BIN_EXE_classhook"),
        &["serve", "--config", config.to_str().unwrap()],
    )
    .await
}
