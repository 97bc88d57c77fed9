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
//! the same run under the same load, to see what a change costs), BENCH_ROUNDS
//! (default 1; each round measures the ceiling and both gateways again, alternating
//! which gateway goes first, and the medians of the per-round ratios are reported).
//!
//! When PostgreSQL answers at 127.0.0.1:5432 (or CLASSHOOK_TEST_POSTGRES), each round
//! also runs the gateway on a fresh PostgreSQL database (BENCH_POSTGRES=0 skips it).

mod support;

use std::sync::Arc;
use support::load::{Report, SECRET, drive, signed_bodies};
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
    let with_postgres = env_or("BENCH_POSTGRES", 1) == 1;
    for round in 1..=rounds {
        let (mut ceiling, ceiling_addr) =
            spawn(binary, &["null-server", "--listen", "127.0.0.1:0"]).await;
        let ceiling_report = drive(&[ceiling_addr], &bodies, connections, seconds).await;
        let _ = ceiling.kill().await;
        // Alternate which gateway runs first: the machine's state drifts within a
        // round (page cache, disk), and neither side should always get the same slot.
        let mut gateway = None;
        let mut compared = None;
        for slot in 0..2 {
            if (slot + round) % 2 == 1 {
                gateway = Some(run_gateway(binary, &bodies, connections, seconds, None).await);
            } else if let Some(other) = &compare {
                compared = Some(run_gateway(other, &bodies, connections, seconds, None).await);
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
        rows.push((
            round,
            format!("classhook on SQLite, peak RSS {rss_mib:.1} MiB"),
            gateway_report,
        ));
        if with_postgres
            && let Some(database) =
                classhook::store::postgres::testing::TestDatabase::create("bench").await
        {
            let (report, rss_mib, stored) =
                run_gateway(binary, &bodies, connections, seconds, Some(database.url())).await;
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
        }
    }

    println!();
    println!("| round | run | events/s | p50 ms | p99 ms | failed |");
    println!("|---:|---|---:|---:|---:|---:|");
    for (round, name, r) in &rows {
        println!(
            "| {round} | {name} | {:.0} | {:.2} | {:.2} | {} |",
            r.rate(),
            r.p50_ms,
            r.p99_ms,
            r.failed
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
/// `database`), drives it, and returns the report, its peak RSS in MiB and the
/// number of events it stored.
async fn run_gateway(
    binary: &str,
    bodies: &Arc<Vec<Bytes>>,
    connections: usize,
    seconds: u64,
    database: Option<&str>,
) -> (Report, f64, i64) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bench.toml");
    let database_section = database
        .map(|url| format!("[database]\nurl = {url:?}\n"))
        .unwrap_or_default();
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n{database_section}\n[[source]]\nname = \"bench\"\nprovider = \"dreamclass\"\nsecret = \"{SECRET}\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .unwrap();
    let (mut gateway, addr) = spawn(binary, &["serve", "--config", config.to_str().unwrap()]).await;
    let report = drive(&[addr], bodies, connections, seconds).await;
    let rss_mib = peak_rss_mib(gateway.id().unwrap());
    let _ = gateway.kill().await;
    let _ = gateway.wait().await;
    let location = match database {
        Some(url) => classhook::store::Location::from_url(classhook::secret::Secret::new(url)),
        None => classhook::store::Location::sqlite(dir.path().join("data")),
    };
    (report, rss_mib, stored_events(&location).await)
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
