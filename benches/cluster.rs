//! Several instances on one PostgreSQL: `cargo bench --bench cluster`.
//!
//! In one run: the HTTP ceiling (the same binary and stack with an empty handler),
//! one `classhook serve` on a fresh PostgreSQL database, and two instances on another
//! fresh database with the connections split between them, each driven with
//! BENCH_CONNECTIONS (default 32) keep-alive connections of distinct signed events
//! for BENCH_SECONDS (default 10); then delivery lag at BENCH_RATE events/s (default
//! 1000) sent alternately to two instances delivering live to one subscription.
//! BENCH_BIN runs another classhook binary (an older commit's, say) in place of this
//! build, so that two builds can be measured one after the other.
//! Needs PostgreSQL at 127.0.0.1:5432 (or CLASSHOOK_TEST_POSTGRES).

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use classhook::store::postgres::testing::TestDatabase;
use support::load::{
    Arrivals, Report, SECRET, commit_batches, cpu_seconds, drive, lags, paced, postgres_cpu,
    postgres_cpu_between, quantile, signed_bodies, start_receiver,
};
use support::{env_or, spawn};
use tokio::process::Child;

const THIS_BUILD: &str = env!("CARGO_BIN_EXE_classhook");

/// The classhook binary measured: this build, or BENCH_BIN.
fn binary() -> String {
    std::env::var("BENCH_BIN").unwrap_or_else(|_| THIS_BUILD.to_string())
}

fn main() {
    support::run(bench());
}

async fn bench() {
    let seconds = env_or("BENCH_SECONDS", 10);
    let connections = env_or("BENCH_CONNECTIONS", 32) as usize;
    let rate = env_or("BENCH_RATE", 1000);
    eprintln!("preparing signed events …");
    let bodies = Arc::new(signed_bodies(60_000 * seconds as usize));

    let (mut ceiling, ceiling_addr) =
        spawn(&binary(), &["null-server", "--listen", "127.0.0.1:0"]).await;
    let ceiling_cpu = cpu_seconds(ceiling.id().unwrap());
    let mut ceiling_report = drive(&[ceiling_addr], &bodies, connections, seconds).await;
    ceiling_report.cpu_us_per_event = (cpu_seconds(ceiling.id().unwrap()) - ceiling_cpu) * 1e6
        / ceiling_report.accepted.max(1) as f64;
    let _ = ceiling.kill().await;

    let mut rows = vec![("ceiling (empty handler)".to_string(), ceiling_report)];
    for instances in [1, 2] {
        let database = fresh_database().await;
        let dir = tempfile::tempdir().unwrap();
        let config = write_config(dir.path(), &database, "");
        let mut cluster = start(&config, instances).await;
        let report = drive_measured(&cluster, &database, &bodies, connections, seconds).await;
        stop(&mut cluster).await;
        let stored = stored_events(&database).await;
        assert_eq!(
            stored, report.accepted as i64,
            "the database holds exactly the events answered 200"
        );
        rows.push((format!("{instances} instance(s) on PostgreSQL"), report));
    }

    // Lag, two instances delivering to one subscription.
    let arrivals: Arrivals = Arc::default();
    let receiver = start_receiver(arrivals.clone()).await;
    let database = fresh_database().await;
    let dir = tempfile::tempdir().unwrap();
    let subscription = format!(
        "[[subscription]]\nname = \"sink\"\nurl = \"http://{receiver}/sink\"\nevents = [\"*\"]\nsecret = \"sink-secret\"\n"
    );
    let config = write_config(dir.path(), &database, &subscription);
    let mut cluster = start(&config, 2).await;
    let targets: Vec<SocketAddr> = cluster.iter().map(|(_, a)| *a).collect();
    let accepted = paced(&targets, rate, seconds).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().unwrap().len() < accepted.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lags = lags(&accepted, &arrivals);
    stop(&mut cluster).await;
    let ms = |p: f64| quantile(&lags, p).as_secs_f64() * 1000.0;

    let ceiling_rate = rows[0].1.rate();
    println!();
    println!(
        "| run | events/s | ratio to ceiling | p50 ms | p99 ms | failed | events per batch | CPU µs/event: gateways | PostgreSQL | load |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (name, r) in &rows {
        let postgres = r
            .postgres_cpu_us_per_event
            .map_or_else(String::new, |cpu| format!("{cpu:.0}"));
        let batch = r
            .mean_batch
            .map_or_else(String::new, |size| format!("{size:.1}"));
        println!(
            "| {name} | {:.0} | {:.2}x | {:.2} | {:.2} | {} | {batch} | {:.0} | {postgres} | {:.0} |",
            r.rate(),
            r.rate() / ceiling_rate,
            r.p50_ms,
            r.p99_ms,
            r.failed,
            r.cpu_us_per_event,
            r.load_cpu_us_per_event
        );
    }
    println!();
    println!(
        "lag at {rate} events/s for {seconds} s over two instances: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; delivered {} of {}",
        ms(0.5),
        ms(0.99),
        lags.last().map_or(0.0, |d| d.as_secs_f64() * 1000.0),
        lags.len(),
        accepted.len()
    );
    println!(
        "load: {connections} keep-alive connections split over the instances, {seconds} s per run"
    );
}

/// [`drive`] over the instances of `cluster`, with the CPU every part spent per
/// accepted event (the instances together, PostgreSQL, the load) and the mean
/// number of operations in the instances' batches.
async fn drive_measured(
    cluster: &[(Child, SocketAddr)],
    database: &TestDatabase,
    bodies: &Arc<Vec<bytes::Bytes>>,
    connections: usize,
    seconds: u64,
) -> Report {
    let targets: Vec<SocketAddr> = cluster.iter().map(|(_, a)| *a).collect();
    let gateways_cpu = || -> f64 {
        cluster
            .iter()
            .filter_map(|(child, _)| child.id())
            .map(cpu_seconds)
            .sum()
    };
    let gateways_before = gateways_cpu();
    let postgres_before = postgres_cpu(database.url()).await;
    let mut report = drive(&targets, bodies, connections, seconds).await;
    let per_event = |seconds: f64| seconds * 1e6 / report.accepted.max(1) as f64;
    let postgres = postgres_cpu_between(&postgres_before, &postgres_cpu(database.url()).await);
    report.postgres_cpu_us_per_event = Some(per_event(postgres));
    report.cpu_us_per_event = per_event(gateways_cpu() - gateways_before);
    let (mut batches, mut operations) = (0.0, 0.0);
    for addr in &targets {
        let committed = commit_batches(*addr).await;
        batches += committed.batches;
        operations += committed.operations;
    }
    report.mean_batch = (batches > 0.0).then(|| operations / batches);
    report
}

async fn fresh_database() -> TestDatabase {
    TestDatabase::create("cluster_bench")
        .await
        .expect("the cluster benchmark needs PostgreSQL at 127.0.0.1:5432")
}

fn write_config(dir: &std::path::Path, database: &TestDatabase, extra: &str) -> std::path::PathBuf {
    let file = dir.join("bench.toml");
    std::fs::write(
        &file,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n[database]\nurl = {:?}\n\n[delivery]\nallow_private_destinations = true\n\n[[source]]\nname = \"bench\"\nprovider = \"dreamclass\"\nsecret = \"{SECRET}\"\n\n{extra}",
            dir.join("data").display().to_string(),
            database.url()
        ),
    )
    .unwrap();
    file
}

async fn start(config: &std::path::Path, instances: usize) -> Vec<(Child, SocketAddr)> {
    let mut cluster = Vec::new();
    for _ in 0..instances {
        cluster.push(spawn(&binary(), &["serve", "--config", config.to_str().unwrap()]).await);
    }
    cluster
}

async fn stop(cluster: &mut Vec<(Child, SocketAddr)>) {
    for (child, _) in cluster.iter_mut() {
        let _ = child.kill().await;
        let _ = child.wait().await;
    }
    cluster.clear();
}

async fn stored_events(database: &TestDatabase) -> i64 {
    let location =
        classhook::store::Location::from_url(classhook::secret::Secret::new(database.url()));
    match classhook::store::Store::open_read_only(&location).await {
        Ok(store) => store.count_events().await.unwrap_or(-1),
        Err(_) => -1,
    }
}
