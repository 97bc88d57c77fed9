//! Ingest benchmark: `cargo bench --bench ingest`.
//!
//! Starts the release gateway with a fresh data directory and drives it over loopback
//! with 32 keep-alive connections of distinct, correctly signed DreamClass events.
//! In the same run it drives the same load against the ceiling: the same binary and
//! HTTP stack with a handler that only reads the body and answers `{}`. Reports
//! events/s, p50/p99 latency and the gateway's peak RSS, and the ratio to the ceiling.
//!
//! Knobs (environment): BENCH_SECONDS (default 10), BENCH_CONNECTIONS (default 32),
//! BENCH_COMPARE_BIN (another classhook binary, e.g. an older commit's, measured in
//! the same run under the same load, to see what a change costs; on PostgreSQL too,
//! right after this build's PostgreSQL run), BENCH_METRICS=1 (print each gateway's
//! group commits: batches, mean size, mean time), BENCH_ROUNDS
//! (default 1; each round measures the ceiling and both gateways again, alternating
//! which gateway goes first, and the medians of the per-round ratios are reported).
//!
//! When PostgreSQL answers at 127.0.0.1:5432 (or CLASSHOOK_TEST_POSTGRES), each round
//! also runs the gateway on a fresh PostgreSQL database (BENCH_POSTGRES=0 skips it).
//!
//! Every gateway runs with one subscription matching every event (`events = ["*"]`)
//! and delivery off, so each stored event also writes its delivery to the outbox in
//! the same commit, as a gateway that forwards would; the deliveries queue up
//! (sending is measured by `cargo bench --bench deliver`). BENCH_SUBSCRIPTION=0
//! runs without it. The mirror is always on.
//!
//! Each round also runs the SQLite gateway with tracing on (`[telemetry]
//! otlp_endpoint` towards an OTLP sink in this process that reads each export and
//! answers 200), right before or after the run without tracing, alternating, and
//! reports the ratio of the two and how many spans were exported or dropped
//! (BENCH_TRACING=0 skips it; BENCH_SAMPLE_RATIO sets `sample_ratio`, default 1).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use support::load::{
    Report, SECRET, commit_batches, cpu_seconds, drive, postgres_cpu, postgres_cpu_between,
    signed_bodies,
};
use support::{env_or, spawn};

use bytes::Bytes;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let seconds = env_or("BENCH_SECONDS", 10);
    let connections = env_or("BENCH_CONNECTIONS", 32) as usize;
    let rounds = env_or("BENCH_ROUNDS", 1).max(1) as usize;
    let binary = env!("CARGO_BIN_EXE_classhook");
    let compare = std::env::var("BENCH_COMPARE_BIN").ok();

    eprintln!("preparing signed events …");
    let bodies = Arc::new(signed_bodies(60_000 * seconds as usize));

    let mut rows = Vec::new();
    let (mut to_ceiling, mut to_compared) = (Vec::new(), Vec::new());
    let mut postgres_to_ceiling = Vec::new();
    let mut compared_postgres_to_ceiling = Vec::new();
    let mut traced_to_untraced = Vec::new();
    let mut traced_cpu = Vec::new();
    let with_postgres = env_or("BENCH_POSTGRES", 1) == 1;
    let sink = if env_or("BENCH_TRACING", 1) == 1 {
        Some(OtlpSink::start().await)
    } else {
        None
    };
    let sample_ratio = std::env::var("BENCH_SAMPLE_RATIO").unwrap_or_else(|_| "1".into());
    for round in 1..=rounds {
        let (mut ceiling, ceiling_addr) =
            spawn(binary, &["null-server", "--listen", "127.0.0.1:0"]).await;
        let ceiling_cpu = cpu_seconds(ceiling.id().unwrap());
        let mut ceiling_report = drive(&[ceiling_addr], &bodies, connections, seconds).await;
        ceiling_report.cpu_us_per_event = (cpu_seconds(ceiling.id().unwrap()) - ceiling_cpu) * 1e6
            / ceiling_report.accepted.max(1) as f64;
        let _ = ceiling.kill().await;
        // Alternate which gateway runs first: the machine's state drifts within a
        // round (page cache, disk), and neither side should always get the same slot.
        let mut gateway = None;
        let mut compared = None;
        let mut traced = None;
        for slot in 0..2 {
            if (slot + round) % 2 == 1 {
                // Tracing on runs right beside tracing off, alternating which is first.
                let telemetry = sink.as_ref().map(|sink| {
                    format!(
                        "[telemetry]\notlp_endpoint = \"http://{}\"\nsample_ratio = {sample_ratio}\n",
                        sink.addr
                    )
                });
                let traced_first = round % 2 == 1;
                if let (Some(telemetry), true) = (&telemetry, traced_first) {
                    traced = Some(
                        run_gateway(binary, &bodies, connections, seconds, None, telemetry).await,
                    );
                }
                gateway = Some(run_gateway(binary, &bodies, connections, seconds, None, "").await);
                if let (Some(telemetry), false) = (&telemetry, traced_first) {
                    traced = Some(
                        run_gateway(binary, &bodies, connections, seconds, None, telemetry).await,
                    );
                }
            } else if let Some(other) = &compare {
                compared = Some(run_gateway(other, &bodies, connections, seconds, None, "").await);
            }
        }
        let (gateway_report, rss_mib, stored) = gateway.expect("the gateway ran");
        assert_eq!(
            stored, gateway_report.accepted as i64,
            "the store holds exactly the events answered 200"
        );
        let ceiling_rate = ceiling_report.rate();
        to_ceiling.push(gateway_report.rate() / ceiling_rate);
        rows.push((round, "ceiling (empty handler)".to_string(), ceiling_report));
        if let Some((report, _, _)) = compared {
            to_compared.push(gateway_report.rate() / report.rate());
            let name = format!("compared binary ({})", compare.as_deref().unwrap_or(""));
            rows.push((round, name, report));
        }
        if let Some((report, traced_rss, stored)) = traced {
            assert_eq!(
                stored, report.accepted as i64,
                "with tracing on, the store holds exactly the events answered 200"
            );
            traced_to_untraced.push(report.rate() / gateway_report.rate());
            traced_cpu.push(report.cpu_us_per_event / gateway_report.cpu_us_per_event);
            let spans = report.spans.unwrap_or_default();
            rows.push((
                round,
                format!(
                    "classhook on SQLite, tracing on (sample_ratio {sample_ratio}; {} spans exported, {} dropped), peak RSS {traced_rss:.1} MiB",
                    spans.0, spans.1
                ),
                report,
            ));
        }
        rows.push((
            round,
            format!("classhook on SQLite, peak RSS {rss_mib:.1} MiB"),
            gateway_report,
        ));
        if with_postgres
            && let Some(database) =
                classhook::store::postgres::testing::TestDatabase::create("bench").await
        {
            let (report, rss_mib, stored) = run_gateway(
                binary,
                &bodies,
                connections,
                seconds,
                Some(database.url()),
                "",
            )
            .await;
            assert_eq!(
                stored, report.accepted as i64,
                "PostgreSQL holds exactly the events answered 200"
            );
            postgres_to_ceiling.push(report.rate() / ceiling_rate);
            rows.push((
                round,
                format!("classhook on PostgreSQL, peak RSS {rss_mib:.1} MiB (gateway only)"),
                report,
            ));
            if let Some(other) = &compare
                && let Some(database) =
                    classhook::store::postgres::testing::TestDatabase::create("bench").await
            {
                let (report, _, _) = run_gateway(
                    other,
                    &bodies,
                    connections,
                    seconds,
                    Some(database.url()),
                    "",
                )
                .await;
                compared_postgres_to_ceiling.push(report.rate() / ceiling_rate);
                rows.push((
                    round,
                    format!("compared binary on PostgreSQL ({other})"),
                    report,
                ));
            }
        }
    }

    println!();
    println!(
        "| round | run | events/s | p50 ms | p99 ms | failed | CPU µs/event: gateway | PostgreSQL | load |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|---:|---:|");
    for (round, name, r) in &rows {
        let postgres = r
            .postgres_cpu_us_per_event
            .map_or_else(|| "".to_string(), |cpu| format!("{cpu:.0}"));
        println!(
            "| {round} | {name} | {:.0} | {:.2} | {:.2} | {} | {:.0} | {postgres} | {:.0} |",
            r.rate(),
            r.p50_ms,
            r.p99_ms,
            r.failed,
            r.cpu_us_per_event,
            r.load_cpu_us_per_event
        );
    }
    println!();
    println!(
        "SQLite: ratio to ceiling, per round: {}; median {:.2}x",
        list(&to_ceiling),
        median(&to_ceiling)
    );
    if !postgres_to_ceiling.is_empty() {
        println!(
            "PostgreSQL: ratio to ceiling, per round: {}; median {:.2}x",
            list(&postgres_to_ceiling),
            median(&postgres_to_ceiling)
        );
    }
    if !compared_postgres_to_ceiling.is_empty() {
        println!(
            "compared binary on PostgreSQL: ratio to ceiling, per round: {}; median {:.2}x",
            list(&compared_postgres_to_ceiling),
            median(&compared_postgres_to_ceiling)
        );
    }
    if !traced_to_untraced.is_empty() {
        println!(
            "tracing on / off (SQLite), per round: {}; median {:.2}x",
            list(&traced_to_untraced),
            median(&traced_to_untraced)
        );
        println!(
            "tracing on / off (SQLite), gateway CPU per event, per round: {}; median {:.2}x",
            list(&traced_cpu),
            median(&traced_cpu)
        );
    }
    if let Some(sink) = &sink {
        println!(
            "OTLP sink: {} export requests, {:.1} MiB received",
            sink.requests.load(Ordering::Relaxed),
            sink.bytes.load(Ordering::Relaxed) as f64 / 1048576.0
        );
    }
    if !to_compared.is_empty() {
        println!(
            "ratio to the compared binary, per round: {}; median {:.2}x",
            list(&to_compared),
            median(&to_compared)
        );
    }
    println!(
        "load: {connections} keep-alive connections, {seconds} s per run, one-thread load generator"
    );
}

fn list(ratios: &[f64]) -> String {
    ratios
        .iter()
        .map(|r| format!("{r:.2}x"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn median(ratios: &[f64]) -> f64 {
    let mut sorted = ratios.to_vec();
    sorted.sort_by(f64::total_cmp);
    let mid = sorted.len() / 2;
    if sorted.len().is_multiple_of(2) {
        (sorted[mid - 1] + sorted[mid]) / 2.0
    } else {
        sorted[mid]
    }
}

/// Starts `binary serve` on a fresh data directory (or the PostgreSQL database at
/// `database`) with `sections` added to its config, drives it, and returns the
/// report, its peak RSS in MiB and the number of events it stored.
async fn run_gateway(
    binary: &str,
    bodies: &Arc<Vec<Bytes>>,
    connections: usize,
    seconds: u64,
    database: Option<&str>,
    sections: &str,
) -> (Report, f64, i64) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.toml");
    let database_section = database
        .map(|url| format!("[database]\nurl = {url:?}\n"))
        .unwrap_or_default();
    let subscription = if env_or("BENCH_SUBSCRIPTION", 1) == 1 {
        "[delivery]\nenabled = false\n\n[[subscription]]\nname = \"everything\"\nurl = \"https://receiver.example/hooks\"\nevents = [\"*\"]\nsecret = \"sink-secret\"\n\n"
    } else {
        ""
    };
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n{database_section}\n{sections}\n{subscription}[[source]]\nname = \"bench\"\nprovider = \"dreamclass\"\nsecret = \"{SECRET}\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let (mut gateway, addr) = spawn(binary, &["serve", "--config", config.to_str().unwrap()]).await;
    let cpu_before = cpu_seconds(gateway.id().unwrap());
    let postgres_before = match database {
        Some(url) => Some(postgres_cpu(url).await),
        None => None,
    };
    let mut report = drive(&[addr], bodies, connections, seconds).await;
    if let (Some(url), Some(before)) = (database, &postgres_before) {
        let cpu = postgres_cpu_between(before, &postgres_cpu(url).await);
        report.postgres_cpu_us_per_event = Some(cpu * 1e6 / report.accepted.max(1) as f64);
    }
    if env_or("BENCH_METRICS", 0) == 1 {
        print_batches(addr).await;
    }
    let cpu = cpu_seconds(gateway.id().unwrap()) - cpu_before;
    report.cpu_us_per_event = cpu * 1e6 / report.accepted.max(1) as f64;
    let rss_mib = peak_rss_mib(gateway.id().unwrap());
    if !sections.is_empty() {
        report.spans = Some(span_counts(addr).await);
    }
    let _ = gateway.kill().await;
    let _ = gateway.wait().await;
    let location = match database {
        Some(url) => classhook::store::Location::from_url(classhook::secret::Secret::new(url)),
        None => classhook::store::Location::sqlite(dir.path().join("data")),
    };
    (report, rss_mib, stored_events(&location).await)
}

/// Spans exported and dropped so far, from the gateway's `/metrics` (after a second
/// for the last export to go out).
async fn span_counts(addr: SocketAddr) -> (u64, u64) {
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let counter = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0)
    };
    (
        counter("classhook_trace_spans_exported_total"),
        counter("classhook_trace_spans_dropped_total"),
    )
}

/// An OTLP/HTTP collector that reads every export and answers 200, counting.
struct OtlpSink {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
    bytes: Arc<AtomicUsize>,
}

impl OtlpSink {
    async fn start() -> OtlpSink {
        let requests = Arc::new(AtomicUsize::new(0));
        let bytes = Arc::new(AtomicUsize::new(0));
        let (r, b) = (requests.clone(), bytes.clone());
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: axum::body::Bytes| {
                r.fetch_add(1, Ordering::Relaxed);
                b.fetch_add(body.len(), Ordering::Relaxed);
                async { "" }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        OtlpSink {
            addr,
            requests,
            bytes,
        }
    }
}

fn peak_rss_mib(pid: u32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn stored_events(location: &classhook::store::Location) -> i64 {
    match classhook::store::Store::open_read_only(location).await {
        Ok(store) => store.count_events().await.unwrap_or(-1),
        Err(_) => -1,
    }
}

/// The gateway's group commits so far (BENCH_METRICS=1): batches, their mean size
/// and mean time.
async fn print_batches(addr: SocketAddr) {
    let committed = commit_batches(addr).await;
    if committed.batches > 0.0 {
        eprintln!(
            "{} batches, mean {:.1} operations, mean {:.2} ms",
            committed.batches,
            committed.operations / committed.batches,
            1000.0 * committed.seconds / committed.batches
        );
    }
}
