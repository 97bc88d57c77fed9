//! Delivery benchmark: `cargo bench --bench deliver`.
//!
//! 1. Throughput: BENCH_EVENTS (default 20,000) events are stored with delivery off,
//!    then the gateway restarts with delivery on and drains them to a local receiver
//!    that answers 200 at once. Compared, in the same run, with two clients posting
//!    the same bodies to the receiver directly at the same concurrency: the same HTTP
//!    client stack (reqwest, as the dispatcher uses it), and a bare hyper HTTP/1
//!    client (one keep-alive connection per worker), the lean limit.
//!    Then the same number of events over 1,000 entities (attendance records), drained
//!    by an unordered subscription and by one with `ordering = "entity"`.
//! 2. Lag: events are sent at BENCH_RATE per second (default 1000) for BENCH_SECONDS
//!    (default 10) to a gateway delivering live; lag is the time from the 200 that
//!    accepted an event to its arrival at the receiver.
//!
//! BENCH_BACKEND=postgres runs both on a fresh PostgreSQL database of the local server
//! (a new one for the lag part) instead of SQLite.
//!
//! To compare two builds in one run: BENCH_COMPARE_BIN (another classhook binary,
//! e.g. an older commit's) drains the same bodies right beside this build's drain,
//! BENCH_ROUNDS times (default 1), alternating which goes first, each round with
//! its own baselines; the per-round ratios and their medians are printed.
//! BENCH_DRAIN_ONLY=1 skips the order-per-entity drains and the lag part;
//! BENCH_ORDERED_ONLY=1 runs only the order-per-entity drains (each round, for this
//! build and the compared binary).
//!
//! Each drain also reports the draining gateway's CPU time (user + system, all its
//! threads, from `/proc/<pid>/stat`) per delivery: unlike deliveries/s, it hardly
//! moves with the load the rest of the machine puts on the two cores.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use support::load::{
    Arrivals, SECRET, cpu_seconds, http1_connection, lags, paced, quantile, signed_body,
    start_receiver,
};
use support::{env_or, spawn};

use axum::body::Bytes;
use classhook::store::postgres::testing::TestDatabase;
use http_body_util::{BodyExt, Full};

const IN_FLIGHT: usize = 8;
/// Entities of the order-per-entity comparison.
const ENTITIES: u64 = 1_000;

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let events = env_or("BENCH_EVENTS", 20_000) as usize;
    let rate = env_or("BENCH_RATE", 1000);
    let seconds = env_or("BENCH_SECONDS", 10);
    let arrivals: Arrivals = Arc::default();
    let receiver = start_receiver(arrivals.clone()).await;
    let bodies: Vec<Bytes> = (0..events as u64).map(signed_body).collect();

    let postgres = std::env::var("BENCH_BACKEND").as_deref() == Ok("postgres");
    let compare = std::env::var("BENCH_COMPARE_BIN")
        .ok()
        .filter(|b| !b.is_empty());
    let drain_only = std::env::var("BENCH_DRAIN_ONLY").as_deref() == Ok("1");
    let ordered_only = std::env::var("BENCH_ORDERED_ONLY").as_deref() == Ok("1");
    let rounds = env_or("BENCH_ROUNDS", 1).max(1);
    let this = env!("CARGO_BIN_EXE_classhook");

    // Baselines: the same client stack (reqwest) straight to the receiver, and a
    // lean hyper client (one keep-alive HTTP/1 connection per worker), each posting
    // the same bodies at the same concurrency. Then the drain: store with delivery
    // off, then drain (and the compared binary beside it, alternating the order).
    let bodies = Arc::new(bodies);
    let (mut hyper_rate, mut direct_rate, mut delivery_rate, mut delivery_cpu_us) =
        (0.0, 0.0, 0.0, 0.0);
    let mut per_round = Vec::new();
    if ordered_only {
        ordered_drains(
            this,
            compare.as_deref(),
            rounds,
            postgres,
            receiver,
            &arrivals,
            events,
        )
        .await;
        return;
    }
    for round in 0..rounds {
        hyper_rate = direct_hyper(receiver, &bodies).await;
        arrivals.lock().unwrap().clear();
        direct_rate = direct_reqwest(receiver, &bodies).await;
        arrivals.lock().unwrap().clear();
        let mut compared = None;
        if let Some(other) = compare.as_deref().filter(|_| round % 2 == 1) {
            compared = Some(drain(other, postgres, receiver, &arrivals, &bodies, "").await);
        }
        let drained = drain(this, postgres, receiver, &arrivals, &bodies, "").await;
        if let Some(other) = compare.as_deref().filter(|_| round % 2 == 0) {
            compared = Some(drain(other, postgres, receiver, &arrivals, &bodies, "").await);
        }
        delivery_rate = drained.rate;
        delivery_cpu_us = drained.cpu_us;
        per_round.push((hyper_rate, direct_rate, drained, compared));
        eprintln!(
            "round {}: hyper {hyper_rate:.0}/s, reqwest {direct_rate:.0}/s, this build {delivery_rate:.0}/s ({:.2}x hyper, {:.0} µs CPU per delivery){}",
            round + 1,
            delivery_rate / hyper_rate,
            drained.cpu_us,
            compared
                .map(|c| format!(
                    ", compared {:.0}/s ({:.2}x hyper, {:.0} µs CPU per delivery)",
                    c.rate,
                    c.rate / hyper_rate,
                    c.cpu_us
                ))
                .unwrap_or_default()
        );
    }
    if rounds > 1 || compare.is_some() {
        print_rounds(&per_round, postgres);
    }
    if drain_only {
        return;
    }

    let (unordered_rate, ordered_rate) =
        unordered_then_ordered(this, postgres, receiver, &arrivals, events).await;

    // Lag at a steady rate, on a fresh store.
    let lag_db = database(postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("bench.toml");
    std::fs::write(
        &file,
        config(receiver, &dir.path().join("data"), &lag_db, true, ""),
    )
    .unwrap();
    arrivals.lock().unwrap().clear();
    let (mut gateway, addr) = serve(this, &file).await;
    let accepted = paced(&[addr], rate, seconds).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrivals.lock().unwrap().len() < accepted.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let lags = lags(&accepted, &arrivals);
    let pct = |p: f64| quantile(&lags, p).as_secs_f64() * 1000.0;
    let _ = gateway.kill().await;

    println!();
    println!("store: {}", if postgres { "PostgreSQL" } else { "SQLite" });
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| direct: reqwest to the receiver, {IN_FLIGHT} in flight | {direct_rate:.0} requests/s |"
    );
    println!(
        "| direct: bare hyper client (HTTP/1 keep-alive) to the receiver, {IN_FLIGHT} in flight | {hyper_rate:.0} requests/s |"
    );
    println!(
        "| classhook draining {events} stored events, max_in_flight {IN_FLIGHT} | {delivery_rate:.0} deliveries/s |"
    );
    println!("| gateway CPU per delivery (user + system) | {delivery_cpu_us:.0} µs |");
    println!("| ratio to reqwest | {:.2}x |", delivery_rate / direct_rate);
    println!(
        "| ratio to bare hyper | {:.2}x |",
        delivery_rate / hyper_rate
    );
    println!(
        "| the same count over {ENTITIES} entities: unordered / ordering = \"entity\" | {unordered_rate:.0} / {ordered_rate:.0} deliveries/s ({:.2}x) |",
        ordered_rate / unordered_rate
    );
    println!(
        "| lag at {rate} events/s for {seconds} s: p50 / p99 / max | {:.1} / {:.1} / {:.1} ms |",
        pct(0.5),
        pct(0.99),
        lags.last().unwrap().as_secs_f64() * 1000.0
    );
    println!(
        "| delivered / accepted | {} / {} |",
        lags.len(),
        accepted.len()
    );
}

/// Order per entity: the same number of events over ENTITIES entities, drained
/// unordered and then ordered, each from a fresh store.
async fn unordered_then_ordered(
    binary: &str,
    postgres: bool,
    receiver: SocketAddr,
    arrivals: &Arrivals,
    events: usize,
) -> (f64, f64) {
    let entity_bodies: Arc<Vec<Bytes>> = Arc::new(
        (0..events as u64)
            .map(|n| signed_body(n % ENTITIES))
            .collect(),
    );
    let unordered = drain(binary, postgres, receiver, arrivals, &entity_bodies, "").await;
    let ordered = drain(
        binary,
        postgres,
        receiver,
        arrivals,
        &entity_bodies,
        "ordering = \"entity\"\n",
    )
    .await;
    (unordered.rate, ordered.rate)
}

/// BENCH_ORDERED_ONLY=1: only the order-per-entity drains, per round for this build
/// and (when given) the compared binary, alternating which goes first.
async fn ordered_drains(
    this: &str,
    compare: Option<&str>,
    rounds: u64,
    postgres: bool,
    receiver: SocketAddr,
    arrivals: &Arrivals,
    events: usize,
) {
    println!("| round | build | unordered | ordering = \"entity\" | ordered / unordered |");
    println!("|---|---|---:|---:|---:|");
    for round in 0..rounds {
        let mut builds = vec![("this build", this)];
        if let Some(other) = compare {
            builds.push(("compared", other));
            if round % 2 == 1 {
                builds.reverse();
            }
        }
        for (name, binary) in builds {
            let (unordered, ordered) =
                unordered_then_ordered(binary, postgres, receiver, arrivals, events).await;
            println!(
                "| {} | {name} | {unordered:.0}/s | {ordered:.0}/s | {:.2}x |",
                round + 1,
                ordered / unordered
            );
        }
    }
}

/// The gateway's config: one source, one subscription to the receiver (with
/// `extra` lines), delivery on or off.
fn config(
    receiver: SocketAddr,
    data: &std::path::Path,
    database: &Option<TestDatabase>,
    enabled: bool,
    extra: &str,
) -> String {
    let database = database
        .as_ref()
        .map(|d| format!("[database]\nurl = {:?}\n", d.url()))
        .unwrap_or_default();
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\ndata_dir = {:?}\n\n{database}\n[delivery]\nenabled = {enabled}\nallow_private_destinations = true\n\n\
         [[source]]\nname = \"bench\"\nprovider = \"dreamclass\"\nsecret = \"{SECRET}\"\n\n\
         [[subscription]]\nname = \"sink\"\nurl = \"http://{receiver}/sink\"\nevents = [\"*\"]\nsecret = \"sink-secret\"\nmax_in_flight = {IN_FLIGHT}\n{extra}",
        data.display().to_string()
    )
}

/// Per round: the baselines, this build's drain and the compared binary's; the
/// ratios, and their medians.
fn print_rounds(rounds: &[(f64, f64, Drained, Option<Drained>)], postgres: bool) {
    println!();
    println!("store: {}", if postgres { "PostgreSQL" } else { "SQLite" });
    println!(
        "| round | bare hyper | reqwest | this build | ratio to hyper | ratio to reqwest | CPU µs per delivery | compared binary | its ratio to hyper | its CPU µs per delivery | this / compared | CPU this / compared |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let (mut to_hyper, mut to_reqwest, mut compared_to_hyper, mut to_compared, mut cpu_ratio) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (n, (hyper, reqwest, drained, compared)) in rounds.iter().enumerate() {
        let this = drained.rate;
        to_hyper.push(this / hyper);
        to_reqwest.push(this / reqwest);
        let (c, ch, ccpu, tc, tcpu) = match compared {
            Some(c) => {
                compared_to_hyper.push(c.rate / hyper);
                to_compared.push(this / c.rate);
                cpu_ratio.push(drained.cpu_us / c.cpu_us);
                (
                    format!("{:.0}/s", c.rate),
                    format!("{:.2}x", c.rate / hyper),
                    format!("{:.0}", c.cpu_us),
                    format!("{:.2}x", this / c.rate),
                    format!("{:.2}x", drained.cpu_us / c.cpu_us),
                )
            }
            None => Default::default(),
        };
        println!(
            "| {} | {hyper:.0}/s | {reqwest:.0}/s | {this:.0}/s | {:.2}x | {:.2}x | {:.0} | {c} | {ch} | {ccpu} | {tc} | {tcpu} |",
            n + 1,
            this / hyper,
            this / reqwest,
            drained.cpu_us,
        );
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(f64::NAN)
    };
    println!(
        "medians: this build {:.2}x hyper, {:.2}x reqwest; compared binary {:.2}x hyper; this / compared {:.2}x; CPU per delivery this / compared {:.2}x",
        median(&mut to_hyper),
        median(&mut to_reqwest),
        median(&mut compared_to_hyper),
        median(&mut to_compared),
        median(&mut cpu_ratio)
    );
}

/// One drain: deliveries per second, and the draining gateway's CPU time per
/// delivery (µs).
#[derive(Debug, Clone, Copy)]
struct Drained {
    rate: f64,
    cpu_us: f64,
}

/// Stores `bodies` with delivery off in a fresh store, then restarts the gateway
/// (`binary`) with delivery on and returns how fast it drained them and its CPU
/// time per delivery (from when it is listening until the last arrival, over the
/// deliveries that arrived in that time; its start-up is left out).
async fn drain(
    binary: &str,
    postgres: bool,
    receiver: SocketAddr,
    arrivals: &Arrivals,
    bodies: &Arc<Vec<Bytes>>,
    extra: &str,
) -> Drained {
    let database = database(postgres).await;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let file = dir.path().join("bench.toml");
    std::fs::write(&file, config(receiver, &data, &database, false, extra)).unwrap();
    let (mut gateway, addr) = serve(binary, &file).await;
    post_all(addr, bodies, 32).await;
    let _ = gateway.kill().await;
    let _ = gateway.wait().await;
    arrivals.lock().unwrap().clear();
    std::fs::write(&file, config(receiver, &data, &database, true, extra)).unwrap();
    let started = Instant::now();
    let (mut gateway, _) = serve(binary, &file).await;
    let pid = gateway.id().expect("the gateway runs");
    let cpu_before = cpu_seconds(pid);
    let arrived_before = arrivals.lock().unwrap().len();
    while arrivals.lock().unwrap().len() < bodies.len() {
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "drain took too long"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let rate = bodies.len() as f64 / started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid) - cpu_before;
    let _ = gateway.kill().await;
    let _ = gateway.wait().await;
    Drained {
        rate,
        cpu_us: cpu * 1e6 / (bodies.len() - arrived_before).max(1) as f64,
    }
}

/// A fresh PostgreSQL database when asked for one (dropped at the end).
async fn database(postgres: bool) -> Option<TestDatabase> {
    if !postgres {
        return None;
    }
    Some(
        TestDatabase::create("deliver_bench")
            .await
            .expect("BENCH_BACKEND=postgres needs the server at 127.0.0.1:5432"),
    )
}

/// Requests/s of reqwest (the dispatcher's client) posting every body to the
/// receiver, IN_FLIGHT at a time.
async fn direct_reqwest(receiver: SocketAddr, bodies: &Arc<Vec<Bytes>>) -> f64 {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (client, next, bodies) = (client.clone(), next.clone(), bodies.clone());
        workers.push(tokio::spawn(async move {
            while let Some(body) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) {
                let response = client
                    .post(format!("http://{receiver}/direct"))
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert!(response.status().is_success());
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    bodies.len() as f64 / started.elapsed().as_secs_f64()
}

/// Requests/s of a bare hyper HTTP/1 client posting every body to the receiver:
/// IN_FLIGHT workers, each on its own keep-alive connection. What the hardware and
/// the receiver allow, with no client stack above the protocol.
async fn direct_hyper(receiver: SocketAddr, bodies: &Arc<Vec<Bytes>>) -> f64 {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..IN_FLIGHT {
        let (next, bodies) = (next.clone(), bodies.clone());
        workers.push(tokio::spawn(async move {
            let mut sender = http1_connection(receiver).await;
            while let Some(body) = bodies.get(next.fetch_add(1, Ordering::Relaxed)) {
                let request = hyper::Request::post(format!("http://{receiver}/direct"))
                    .header("content-type", "application/json")
                    .header("host", receiver.to_string())
                    .body(Full::new(body.clone()))
                    .unwrap();
                sender.ready().await.unwrap();
                let response = sender.send_request(request).await.unwrap();
                assert!(response.status().is_success());
                response.into_body().collect().await.unwrap();
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
    bodies.len() as f64 / started.elapsed().as_secs_f64()
}

async fn post_all(addr: SocketAddr, bodies: &Arc<Vec<Bytes>>, concurrency: usize) {
    let client = reqwest::Client::new();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, next, bodies) = (client.clone(), next.clone(), bodies.clone());
        workers.push(tokio::spawn(async move {
            while let Some(body) =
                bodies.get(next.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
            {
                let response = client
                    .post(format!("http://{addr}/hooks/bench"))
                    .body(body.clone())
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 200);
            }
        }));
    }
    for w in workers {
        w.await.unwrap();
    }
}

/// Starts a gateway (`binary`, normally this build's release one) on `config`.
async fn serve(binary: &str, config: &std::path::Path) -> (tokio::process::Child, SocketAddr) {
    spawn(binary, &["serve", "--config", config.to_str().unwrap()]).await
}
