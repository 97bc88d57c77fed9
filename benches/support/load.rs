//! Load for the HTTP benchmarks: distinct signed DreamClass events, sent over
//! keep-alive connections as fast as answers come (throughput), or at a fixed rate
//! with the moment each was accepted (lag).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use classhook::provider::{ProviderKind, sample};
use classhook::secret::KeyBytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

/// The key of the benchmarks' `bench` source.
pub const SECRET: &str = "bench-secret";

pub struct Report {
    pub accepted: usize,
    pub failed: usize,
    pub seconds: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// With tracing on: spans exported and dropped, from the gateway's metrics.
    pub spans: Option<(u64, u64)>,
    /// The gateway's CPU time (user + system, all threads) per accepted event.
    pub cpu_us_per_event: f64,
    /// The PostgreSQL server's CPU time per accepted event (the gateway's database's
    /// backends and the server's own processes), on PostgreSQL.
    pub postgres_cpu_us_per_event: Option<f64>,
    /// This process's CPU time per accepted event: the load generator's share.
    pub load_cpu_us_per_event: f64,
    /// The mean number of operations in the gateways' commits, where read.
    pub mean_batch: Option<f64>,
}

impl Report {
    pub fn rate(&self) -> f64 {
        self.accepted as f64 / self.seconds
    }
}

/// A distinct signed DreamClass attendance update, number `n`.
pub fn signed_body(n: u64) -> Bytes {
    let key = KeyBytes::new(SECRET.as_bytes().to_vec());
    let data = sample::sample_data(ProviderKind::DreamClass, "ATTENDANCE_UPDATED", n);
    Bytes::from(
        sample::build_request(
            ProviderKind::DreamClass,
            Some(&key),
            "ATTENDANCE_UPDATED",
            data,
            "bench-school",
        )
        .body,
    )
}

pub fn signed_bodies(count: usize) -> Vec<Bytes> {
    (0..count as u64).map(signed_body).collect()
}

/// The envelope id of a DreamClass body.
pub fn event_id(body: &[u8]) -> String {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap();
    value["id"].as_str().unwrap_or_default().to_string()
}

/// The `p` quantile of sorted values.
pub fn quantile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    sorted
        .get(((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// A keep-alive HTTP/1 connection to `addr` with a bare hyper client (no client
/// stack above the protocol), its connection task running.
pub async fn http1_connection(
    addr: SocketAddr,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    sender
}

/// Sends bodies over `connections` keep-alive connections for `seconds`, the
/// connections spread evenly over `targets` (one gateway, or several instances).
pub async fn drive(
    targets: &[SocketAddr],
    bodies: &Arc<Vec<Bytes>>,
    connections: usize,
    seconds: u64,
) -> Report {
    let next = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let load_cpu_before = cpu_seconds(std::process::id());
    let mut tasks = Vec::new();
    for c in 0..connections {
        let addr = targets[c % targets.len()];
        let (bodies, next) = (bodies.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut sender = http1_connection(addr).await;
            let (mut latencies, mut accepted, mut failed) = (Vec::new(), 0usize, 0usize);
            while Instant::now() < deadline {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(n) else { break };
                let request = hyper::Request::post(format!("http://{addr}/hooks/bench"))
                    .header("content-type", "application/json")
                    .header("host", addr.to_string())
                    .body(Full::new(body.clone()))
                    .unwrap();
                let sent = Instant::now();
                sender.ready().await.unwrap();
                let response = sender.send_request(request).await.unwrap();
                let ok = response.status() == 200;
                response.into_body().collect().await.unwrap();
                latencies.push(sent.elapsed().as_micros() as u32);
                if ok { accepted += 1 } else { failed += 1 }
            }
            (latencies, accepted, failed)
        }));
    }
    let (mut latencies, mut accepted, mut failed) = (Vec::new(), 0, 0);
    for task in tasks {
        let (l, a, f) = task.await.unwrap();
        latencies.extend(l);
        accepted += a;
        failed += f;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let load_cpu = cpu_seconds(std::process::id()) - load_cpu_before;
    latencies.sort_unstable();
    Report {
        accepted,
        failed,
        seconds: elapsed,
        p50_ms: quantile(&latencies, 0.50) as f64 / 1000.0,
        p99_ms: quantile(&latencies, 0.99) as f64 / 1000.0,
        spans: None,
        cpu_us_per_event: 0.0,
        postgres_cpu_us_per_event: None,
        load_cpu_us_per_event: load_cpu * 1e6 / accepted.max(1) as f64,
        mean_batch: None,
    }
}

/// CPU seconds (user + system, all threads) the process `pid` has used.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at the state.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name,
    // in clock ticks.
    // SAFETY: sysconf only reads a constant of the system.
    let per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    (ticks(11) + ticks(12)) / per_second
}

/// The CPU seconds used so far by the PostgreSQL processes that work for the
/// database at `url`: its backends and the server's own (WAL writer,
/// checkpointer, autovacuum, …), by pid. Other databases' backends (other tests
/// and benchmarks on the same server) are left out.
pub async fn postgres_cpu(url: &str) -> std::collections::HashMap<i32, f64> {
    let Ok((client, connection)) = tokio_postgres::connect(url, tokio_postgres::NoTls).await else {
        return Default::default();
    };
    tokio::spawn(connection);
    let rows = client
        .query(
            "SELECT pid FROM pg_stat_activity
             WHERE (datname = current_database() OR backend_type <> 'client backend')
               AND pid <> pg_backend_pid()",
            &[],
        )
        .await
        .unwrap_or_default();
    rows.iter()
        .map(|row| {
            let pid: i32 = row.get(0);
            (pid, cpu_seconds(pid as u32))
        })
        .collect()
}

/// CPU seconds between two [`postgres_cpu`] readings; a process that appeared in
/// between counts from zero.
pub fn postgres_cpu_between(
    before: &std::collections::HashMap<i32, f64>,
    after: &std::collections::HashMap<i32, f64>,
) -> f64 {
    after
        .iter()
        .map(|(pid, cpu)| cpu - before.get(pid).copied().unwrap_or(0.0))
        .sum()
}

/// What a gateway's `/metrics` says of its store's commits so far.
pub struct CommitBatches {
    pub batches: f64,
    pub operations: f64,
    /// Their durations, summed.
    pub seconds: f64,
}

/// Reads [`CommitBatches`] from the gateway at `addr` (zeros when it cannot).
pub async fn commit_batches(addr: SocketAddr) -> CommitBatches {
    let text = match reqwest::get(format!("http://{addr}/metrics")).await {
        Ok(response) => response.text().await.unwrap_or_default(),
        Err(_) => String::new(),
    };
    // A sample's value, whatever labels (such as the instance's) it carries.
    let value = |name: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|rest| rest.starts_with([' ', '{']))
            })
            .find_map(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or(0.0)
    };
    CommitBatches {
        batches: value("classhook_store_commit_batch_size_count"),
        operations: value("classhook_store_commit_batch_size_sum"),
        seconds: value("classhook_store_commit_duration_seconds_sum"),
    }
}

/// Sends fresh events at `rate` per second for `seconds`, in turn to each of
/// `targets`; returns when each was accepted, by envelope id.
pub async fn paced(targets: &[SocketAddr], rate: u64, seconds: u64) -> Vec<(String, Instant)> {
    let client = reqwest::Client::new();
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    let mut tasks = Vec::new();
    for n in 0..rate * seconds {
        ticker.tick().await;
        let body = signed_body(1_000_000 + n);
        let addr = targets[n as usize % targets.len()];
        let (client, accepted) = (client.clone(), accepted.clone());
        tasks.push(tokio::spawn(async move {
            let id = event_id(&body);
            let response = client
                .post(format!("http://{addr}/hooks/bench"))
                .body(body)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            accepted.lock().unwrap().push((id, Instant::now()));
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    accepted.lock().unwrap().clone()
}

/// When each event arrived at the receiver, by envelope id.
pub type Arrivals = Arc<Mutex<std::collections::HashMap<String, Instant>>>;

/// A receiver on loopback that answers 200 at once and notes each arrival.
pub async fn start_receiver(arrivals: Arrivals) -> SocketAddr {
    use axum::extract::State;
    async fn record(State(arrivals): State<Arrivals>, body: Bytes) -> &'static str {
        arrivals
            .lock()
            .unwrap()
            .insert(event_id(&body), Instant::now());
        "{}"
    }
    let app = axum::Router::new()
        .route("/{name}", axum::routing::post(record))
        .with_state(arrivals);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Lag per accepted event (accepted → arrived), sorted; events that never arrived
/// are left out and counted by the caller.
pub fn lags(accepted: &[(String, Instant)], arrivals: &Arrivals) -> Vec<Duration> {
    let arrivals = arrivals.lock().unwrap();
    let mut lags: Vec<Duration> = accepted
        .iter()
        .filter_map(|(id, at)| {
            arrivals
                .get(id)
                .map(|arrived| arrived.saturating_duration_since(*at))
        })
        .collect();
    lags.sort_unstable();
    lags
}
