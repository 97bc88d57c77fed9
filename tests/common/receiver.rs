//! A real HTTP receiver on loopback that records what it gets and answers as scripted.
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

/// How the receiver answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    Status(u16),
    StatusWithRetryAfter(u16, u64),
    /// Waits this long, then answers 200.
    Slow(Duration),
    /// This status with this body (and a `Location`, for redirects).
    Body(u16, String),
    /// Holds the request until the test calls [`Receiver::release`], then this status.
    Held(u16),
}

#[derive(Debug, Clone)]
pub struct Received {
    pub headers: HeaderMap,
    pub body: Vec<u8>,
    /// When the request arrived.
    pub at: Instant,
    /// When the request arrived, in milliseconds since the Unix epoch (the
    /// gateway's clock, to compare with what it stores).
    pub at_ms: i64,
}

impl Received {
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

struct Inner {
    script: Mutex<VecDeque<Reply>>,
    received: Mutex<Vec<Received>>,
    /// One permit per held request the test has released.
    released: tokio::sync::Semaphore,
    /// Requests being answered now, and the most there ever were at once.
    concurrent: std::sync::atomic::AtomicUsize,
    most_concurrent: std::sync::atomic::AtomicUsize,
    /// Requests this picks fail (500) the first time their `webhook-id` comes.
    fail_first: Mutex<Option<FailFirst>>,
    /// The `webhook-id`s that failed once.
    failed_once: Mutex<std::collections::HashSet<String>>,
}

type FailFirst = Arc<dyn Fn(&Received) -> bool + Send + Sync>;

impl Default for Inner {
    fn default() -> Self {
        Inner {
            script: Mutex::default(),
            received: Mutex::default(),
            released: tokio::sync::Semaphore::new(0),
            concurrent: Default::default(),
            most_concurrent: Default::default(),
            fail_first: Mutex::default(),
            failed_once: Mutex::default(),
        }
    }
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    inner: Arc<Inner>,
}

impl Receiver {
    /// Starts a receiver that answers 200 unless scripted otherwise.
    pub async fn start() -> Receiver {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/{*path}", post(handle))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}/webhook", self.addr)
    }

    /// The next requests get these replies, in order; after them, 200.
    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.inner.script.lock().unwrap().extend(replies);
    }

    /// The first attempt of every delivery that `pick` chooses is answered 500 (its
    /// retries as scripted, or 200), whatever the order in which requests come.
    pub fn fail_first_attempt_of(&self, pick: impl Fn(&Received) -> bool + Send + Sync + 'static) {
        *self.inner.fail_first.lock().unwrap() = Some(Arc::new(pick));
    }

    pub fn received(&self) -> Vec<Received> {
        self.inner.received.lock().unwrap().clone()
    }

    /// Lets `n` held requests answer.
    pub fn release(&self, n: usize) {
        self.inner.released.add_permits(n);
    }

    /// The most requests this receiver was answering at one moment.
    pub fn most_concurrent(&self) -> usize {
        self.inner
            .most_concurrent
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// How many requests carried this `webhook-id`.
    pub fn count_of(&self, webhook_id: &str) -> usize {
        self.received()
            .iter()
            .filter(|r| r.header("webhook-id") == webhook_id)
            .count()
    }

    /// Waits (bounded, 15 s: a loaded 2-core machine is slow) until at least `n`
    /// requests arrived.
    pub async fn wait_for(&self, n: usize) -> Vec<Received> {
        self.wait_for_within(n, Duration::from_secs(15)).await
    }

    /// Waits until at least `n` requests arrived, at most `limit`.
    pub async fn wait_for_within(&self, n: usize, limit: Duration) -> Vec<Received> {
        for _ in 0..limit.as_millis() / 10 {
            let got = self.received();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("expected {n} requests, got {}", self.received().len());
    }
}

/// The most requests that arrived within any one second (a window starting at
/// each arrival).
pub fn most_in_one_second(received: &[Received]) -> usize {
    let mut at: Vec<i64> = received.iter().map(|r| r.at_ms).collect();
    at.sort_unstable();
    (0..at.len())
        .map(|i| at[i..].partition_point(|&t| t < at[i] + 1000))
        .max()
        .unwrap_or(0)
}

/// Counts a request as being answered while it lives.
struct Answering(Arc<Inner>);

impl Answering {
    fn new(inner: &Arc<Inner>) -> Answering {
        use std::sync::atomic::Ordering::SeqCst;
        let now = inner.concurrent.fetch_add(1, SeqCst) + 1;
        inner.most_concurrent.fetch_max(now, SeqCst);
        Answering(inner.clone())
    }
}

impl Drop for Answering {
    fn drop(&mut self) {
        self.0
            .concurrent
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

async fn handle(State(inner): State<Arc<Inner>>, headers: HeaderMap, body: Bytes) -> Response {
    let _answering = Answering::new(&inner);
    let at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let received = Received {
        headers,
        body: body.to_vec(),
        at: Instant::now(),
        at_ms,
    };
    let pick = inner.fail_first.lock().unwrap().clone();
    let fails_first = pick.is_some_and(|pick| pick(&received))
        && inner
            .failed_once
            .lock()
            .unwrap()
            .insert(received.header("webhook-id").to_string());
    inner.received.lock().unwrap().push(received);
    if fails_first {
        return (StatusCode::INTERNAL_SERVER_ERROR, "first attempt fails").into_response();
    }
    let reply = inner
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Reply::Status(200));
    match reply {
        Reply::Status(code) => {
            (StatusCode::from_u16(code).unwrap(), "{\"ok\":true}").into_response()
        }
        Reply::StatusWithRetryAfter(code, seconds) => (
            StatusCode::from_u16(code).unwrap(),
            [("retry-after", seconds.to_string())],
            "slow down",
        )
            .into_response(),
        Reply::Body(code, body) => (
            StatusCode::from_u16(code).unwrap(),
            [("location", "http://127.0.0.1:9/elsewhere")],
            body,
        )
            .into_response(),
        Reply::Held(code) => {
            inner.released.acquire().await.unwrap().forget();
            (StatusCode::from_u16(code).unwrap(), "{\"ok\":true}").into_response()
        }
        Reply::Slow(wait) => {
            tokio::time::sleep(wait).await;
            (StatusCode::OK, "late").into_response()
        }
    }
}

/// Waits (bounded, 5 s) until `check` holds, polling.
pub async fn eventually(what: &str, check: impl FnMut() -> bool) {
    eventually_within(what, Duration::from_secs(5), check).await
}

/// Waits until the asynchronous `check` (e.g. a store read) holds, at most 5 s.
pub async fn eventually_async(what: &str, check: impl AsyncFnMut() -> bool) {
    eventually_async_within(what, Duration::from_secs(5), check).await
}

/// Waits until the asynchronous `check` holds, at most `limit`.
pub async fn eventually_async_within(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> bool,
) {
    for _ in 0..limit.as_millis() / 10 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Waits until `check` holds, at most `limit`.
pub async fn eventually_within(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    for _ in 0..limit.as_millis() / 10 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}
