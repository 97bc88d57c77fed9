//! Attack measurements: `cargo bench --bench attack`.
//!
//! Two attacks on the release gateway over loopback, each on a fresh gateway with the
//! default limits and one DreamClass source `bench` (signed, no Basic Auth):
//!
//! - **slow**: ATTACK_SLOW_CONNECTIONS (default 1000) unauthenticated connections to
//!   `/hooks/nope`, each sending a head that declares a 1 MiB body and then all but
//!   the last byte of it, held open for ATTACK_HOLD_SECONDS (default 5) after the last
//!   one was sent;
//! - **flood**: ATTACK_FLOOD_CONNECTIONS (default 256) connections posting 1 MiB bodies
//!   to `/hooks/bench` (a real source, so the body must be read to judge it; the body
//!   is not an event, 400) back to back for ATTACK_SECONDS (default 10), a new
//!   connection per request.
//!
//! During each attack a separate thread probes `/healthz` every 50 ms on a new
//! connection, as a load balancer would, with a 5 s limit; the same probe runs for
//! 3 s before the first attack, on the idle gateway, to show what the machine itself
//! adds (these machines are shared). Reported: the gateway's peak
//! RSS (VmHWM from /proc), `/healthz` p50/p99/max, and what the attackers were answered.
//!
//! ATTACK_BIN: the gateway binary to attack (default: this build's); point it at an
//! older build to measure "before" in the same session. ATTACK_ONLY=slow|flood runs
//! one attack.

mod support;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{bench_config, env_or, spawn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(bench());
}

async fn bench() {
    let binary =
        std::env::var("ATTACK_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_classhook").into());
    let only = std::env::var("ATTACK_ONLY").ok();
    println!("binary: {binary}");
    {
        let gateway = Gateway::start(&binary).await;
        let probe = Probe::start(gateway.addr);
        tokio::time::sleep(Duration::from_secs(3)).await;
        println!("idle: {}", probe.stop().summary());
        gateway.stop().await;
    }
    if only.as_deref().is_none_or(|o| o == "slow") {
        let connections = env_or("ATTACK_SLOW_CONNECTIONS", 1000) as usize;
        let hold = Duration::from_secs(env_or("ATTACK_HOLD_SECONDS", 5));
        let gateway = Gateway::start(&binary).await;
        let idle_mb = gateway.peak_rss_mb();
        let probe = Probe::start(gateway.addr);
        let answers = slow_bodies(gateway.addr, connections, hold).await;
        let latencies = probe.stop();
        println!(
            "slow: {connections} connections to /hooks/nope, 1 MiB declared, all but 1 byte sent; RSS idle {idle_mb:.0} MB, peak {:.0} MB; {}; attackers: {answers}",
            gateway.peak_rss_mb(),
            latencies.summary()
        );
        gateway.stop().await;
    }
    if only.as_deref().is_none_or(|o| o == "flood") {
        let connections = env_or("ATTACK_FLOOD_CONNECTIONS", 256) as usize;
        let seconds = Duration::from_secs(env_or("ATTACK_SECONDS", 10));
        let gateway = Gateway::start(&binary).await;
        let idle_mb = gateway.peak_rss_mb();
        let cpu_before = gateway.cpu_seconds();
        let probe = Probe::start(gateway.addr);
        let answers = flood(gateway.addr, connections, seconds).await;
        let latencies = probe.stop();
        println!(
            "flood: {connections} connections posting 1 MiB bodies to /hooks/bench for {seconds:?}; RSS idle {idle_mb:.0} MB, peak {:.0} MB; gateway CPU {:.1} s; {}; attackers: {answers}",
            gateway.peak_rss_mb(),
            gateway.cpu_seconds() - cpu_before,
            latencies.summary()
        );
        gateway.stop().await;
    }
}

struct Gateway {
    child: tokio::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Gateway {
    async fn start(binary: &str) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let (file, _) = bench_config(dir.path(), "");
        let file = file.display().to_string();
        let (child, addr) = spawn(binary, &["serve", "--config", &file]).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        Gateway {
            child,
            addr,
            _dir: dir,
        }
    }

    /// CPU seconds the gateway has used (user + system).
    fn cpu_seconds(&self) -> f64 {
        support::load::cpu_seconds(self.child.id().unwrap())
    }

    fn peak_rss_mb(&self) -> f64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .map_or(0.0, |kb| kb / 1024.0)
    }

    async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// Counts of what the attackers got back, by status line (or error).
#[derive(Default)]
struct Answers(std::collections::BTreeMap<String, usize>);

impl Answers {
    fn add(&mut self, what: String) {
        *self.0.entry(what).or_default() += 1;
    }
}

impl std::fmt::Display for Answers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self.0.iter().map(|(k, v)| format!("{v} × {k}")).collect();
        write!(f, "{}", parts.join(", "))
    }
}

/// The status code of an answer, or what went wrong.
fn status_of(received: &[u8]) -> String {
    let text = String::from_utf8_lossy(received);
    match text.split_whitespace().nth(1) {
        Some(code) if text.starts_with("HTTP/1.1 ") => code.to_string(),
        _ if received.is_empty() => "no answer".into(),
        _ => "garbled".into(),
    }
}

async fn slow_bodies(addr: SocketAddr, connections: usize, hold: Duration) -> Answers {
    let body = Arc::new(vec![b' '; MIB - 1]);
    let head = format!(
        "POST /hooks/nope HTTP/1.1\r\nhost: attack\r\ncontent-type: application/json\r\ncontent-length: {MIB}\r\n\r\n"
    );
    let sent = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (body, head, sent) = (body.clone(), head.clone(), sent.clone());
        tasks.push(tokio::spawn(async move {
            let mut stream = match TcpStream::connect(addr).await {
                Ok(stream) => stream,
                Err(error) => return (None, format!("connect: {}", error.kind())),
            };
            let written = async {
                stream.write_all(head.as_bytes()).await?;
                stream.write_all(&body).await
            }
            .await;
            sent.fetch_add(1, Ordering::Relaxed);
            (
                Some(stream),
                if written.is_ok() {
                    "all sent".into()
                } else {
                    "write refused".into()
                },
            )
        }));
    }
    let mut streams = Vec::new();
    let mut answers = Answers::default();
    for task in tasks {
        let (stream, outcome) = task.await.unwrap();
        answers.add(outcome);
        streams.extend(stream);
    }
    tokio::time::sleep(hold).await;
    // What each connection has been answered by now (the last byte never comes).
    for mut stream in streams {
        let mut received = vec![0u8; 512];
        let n = match tokio::time::timeout(Duration::from_millis(5), stream.read(&mut received))
            .await
        {
            Ok(Ok(n)) => n,
            _ => 0,
        };
        answers.add(format!("answer {}", status_of(&received[..n])));
    }
    answers
}

async fn flood(addr: SocketAddr, connections: usize, duration: Duration) -> Answers {
    let mut request = format!(
        "POST /hooks/bench HTTP/1.1\r\nhost: attack\r\ncontent-type: application/json\r\ncontent-length: {MIB}\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    request.extend(std::iter::repeat_n(b' ', MIB));
    let request = Arc::new(request);
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut answers = Answers::default();
            let mut took = Vec::new();
            while Instant::now() < deadline {
                let started = Instant::now();
                let Ok(mut stream) = TcpStream::connect(addr).await else {
                    answers.add("connect failed".into());
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                // Write and read at once: a gateway that sheds answers before the body
                // is sent, and may close before it is.
                let (mut reader, mut writer) = stream.split();
                let write = async {
                    let _ = writer.write_all(&request).await;
                };
                let read = async {
                    let mut received = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !received.windows(2).any(|w| w == b"\r\n") {
                        match reader.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => received.extend_from_slice(&buf[..n]),
                        }
                    }
                    received
                };
                let (received, ()) = tokio::join!(read, write);
                took.push(started.elapsed());
                answers.add(status_of(&received));
            }
            (answers, took)
        }));
    }
    let mut answers = Answers::default();
    let mut took = Vec::new();
    for task in tasks {
        let (some, times) = task.await.unwrap();
        for (k, v) in some.0 {
            *answers.0.entry(k).or_default() += v;
        }
        took.extend(times);
    }
    took.sort();
    if !took.is_empty() {
        answers.add(format!(
            "request p50 {:.0} ms",
            took[took.len() / 2].as_secs_f64() * 1000.0
        ));
    }
    answers
}

/// `/healthz` probed from its own thread, so the attackers' work does not delay it.
struct Probe {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Latencies>,
}

struct Latencies {
    ms: Vec<f64>,
    failed: usize,
}

impl Latencies {
    fn summary(&self) -> String {
        let mut ms = self.ms.clone();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms.get(((ms.len() as f64 * q) as usize).min(ms.len().saturating_sub(1)));
        format!(
            "/healthz p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} probes, {} failed or over 5 s",
            at(0.5).copied().unwrap_or(f64::NAN),
            at(0.99).copied().unwrap_or(f64::NAN),
            ms.last().copied().unwrap_or(f64::NAN),
            ms.len(),
            self.failed
        )
    }
}

impl Probe {
    fn start(addr: SocketAddr) -> Probe {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut latencies = Latencies {
                ms: Vec::new(),
                failed: 0,
            };
            while !stopping.load(Ordering::Relaxed) {
                let started = Instant::now();
                match healthz(addr) {
                    Some(true) => latencies.ms.push(started.elapsed().as_secs_f64() * 1000.0),
                    _ => latencies.failed += 1,
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            latencies
        });
        Probe { stop, thread }
    }

    fn stop(self) -> Latencies {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

fn healthz(addr: SocketAddr) -> Option<bool> {
    let limit = Duration::from_secs(5);
    let mut stream = std::net::TcpStream::connect_timeout(&addr, limit).ok()?;
    stream.set_read_timeout(Some(limit)).ok()?;
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nhost: probe\r\nconnection: close\r\n\r\n")
        .ok()?;
    let mut received = Vec::new();
    stream.read_to_end(&mut received).ok()?;
    Some(received.starts_with(b"HTTP/1.1 200"))
}
