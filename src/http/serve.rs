//! The accept loop. HTTP/1.1 and HTTP/2 with prior knowledge (h2c) share the port:
//! the first bytes tell them apart (HTTP/2 opens with its preface), read within the
//! header read timeout and handed back to the protocol chosen.
//!
//! axum's own `serve` cannot bound how long a client may take to send its headers,
//! so connections are driven by hyper directly: a client that
//! stalls is cut off after `header_read_timeout` instead of holding a task forever
//! (bodies are bounded by the handlers that read them). On shutdown the listener
//! closes, in-flight requests finish, and idle keep-alive connections are closed.
//!
//! At most `max_connections` connections are served at once: the loop takes a slot
//! before it accepts, so further connections wait in the kernel's accept queue, where
//! nothing of theirs is read and they cost the process nothing, until a connection
//! ends. A request head (request line and headers) may take at most
//! [`MAX_HEAD_BYTES`] of buffer (checked between reads, so about twice that at
//! worst), which bounds what a connection not yet authenticated can make us hold.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt;

use super::{ApiError, LogLimiter};

/// The longest request target (path and query) served; a longer one is answered 414
/// with the JSON error body before routing. (hyper answers a target over 65,534 bytes,
/// or a head over [`MAX_HEAD_BYTES`], itself, with an empty body: see README.)
pub const MAX_TARGET_BYTES: usize = 8 * 1024;

/// hyper's read buffer per connection, which bounds a request head: a larger head is
/// answered 431 by hyper itself (hyper's default is ~400 KiB). hyper checks it between
/// reads, so a head buffer can reach about twice this.
pub const MAX_HEAD_BYTES: usize = 64 * 1024;

/// HTTP/2 (cleartext, prior knowledge): the streams one connection may have open at
/// once. Each stream's request is bounded like an HTTP/1 request (body budget,
/// `max_body_bytes`, read timeout), so this bounds a connection's share.
pub const H2_MAX_CONCURRENT_STREAMS: u32 = 100;

/// HTTP/2: how often an idle connection is pinged, and how long the answer may take
/// before the connection is closed (a peer that went away frees its slot).
const H2_KEEP_ALIVE: Duration = Duration::from_secs(20);

/// What an HTTP/2 client with prior knowledge sends first (RFC 9113, section 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The kernel's accept queue: connections over `max_connections` wait there, and a
/// health probe's connection must still find room in it under a flood. The standard
/// library's (and tokio's) 128 overflowed with 256 attacking connections: dropped
/// SYNs, retried after 1 s. Linux caps it at `net.core.somaxconn` (4096 by default).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as tokio's own bind).
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub header_read_timeout: Duration,
    pub shutdown_grace: Duration,
    /// The connection slots; more connections wait in the accept queue.
    pub connections: Arc<Semaphore>,
}

impl ServeOptions {
    pub fn new(
        header_read_timeout: Duration,
        shutdown_grace: Duration,
        max_connections: usize,
    ) -> Self {
        ServeOptions {
            header_read_timeout,
            shutdown_grace,
            connections: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
        }
    }
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let mut http1 = hyper::server::conn::http1::Builder::new();
    http1
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .max_buf_size(MAX_HEAD_BYTES)
        .keep_alive(true);
    let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
    http2
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(MAX_HEAD_BYTES as u32)
        .keep_alive_interval(H2_KEEP_ALIVE)
        .keep_alive_timeout(H2_KEEP_ALIVE);
    let router = router.layer(axum::middleware::from_fn(limit_target));
    let graceful = GracefulShutdown::new();
    let saturated_log = LogLimiter::new(1, Duration::from_secs(10));
    tokio::pin!(shutdown);
    loop {
        let slots = options.connections.clone();
        let slot = match slots.clone().try_acquire_owned() {
            Ok(slot) => slot,
            Err(_) => {
                if let Some(suppressed) = saturated_log.admit() {
                    tracing::warn!(
                        suppressed,
                        "max_connections reached: new connections wait in the accept queue"
                    );
                }
                tokio::select! {
                    slot = slots.acquire_owned() => slot.expect("the slots are never closed"),
                    () = &mut shutdown => break,
                }
            }
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(error) => {
                    // Out of file descriptors and the like: wait a moment, keep serving.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(remote));
            router.clone().oneshot(request)
        });
        let (http1, http2) = (http1.clone(), http2.clone());
        let watcher = graceful.watcher();
        let header_read_timeout = options.header_read_timeout;
        tokio::spawn(async move {
            // Which protocol: HTTP/2 with prior knowledge opens with its preface,
            // anything else is HTTP/1. The bytes read to decide are given back.
            let sniffed = tokio::time::timeout(header_read_timeout, sniff(stream)).await;
            let result = match sniffed {
                Err(_) => {
                    tracing::debug!(%remote, "no request within the header read timeout");
                    Ok(())
                }
                Ok(Err(error)) => Err(error.to_string()),
                Ok(Ok((true, io))) => watcher
                    .watch(http2.serve_connection(TokioIo::new(io), service))
                    .await
                    .map_err(|error| error.to_string()),
                Ok(Ok((false, io))) => watcher
                    .watch(http1.serve_connection(TokioIo::new(io), service))
                    .await
                    .map_err(|error| error.to_string()),
            };
            if let Err(error) = result {
                tracing::debug!(%error, %remote, "connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(options.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(
            "shutdown grace of {:?} elapsed with requests still in flight",
            options.shutdown_grace
        );
    }
}

/// Reads until the first bytes tell HTTP/2's preface from an HTTP/1 request line
/// (for HTTP/1, usually at the first byte; at most the preface's 24 bytes), and
/// returns whether it is HTTP/2 with the stream that replays what was read.
async fn sniff(mut stream: TcpStream) -> std::io::Result<(bool, Prefixed)> {
    let mut read = Vec::with_capacity(H2_PREFACE.len());
    while read.len() < H2_PREFACE.len() && H2_PREFACE.starts_with(&read) {
        let mut buf = [0u8; 24];
        let wanted = H2_PREFACE.len() - read.len();
        let n = stream.read(&mut buf[..wanted]).await?;
        if n == 0 {
            break;
        }
        read.extend_from_slice(&buf[..n]);
    }
    let is_h2 = read.as_slice() == H2_PREFACE;
    Ok((
        is_h2,
        Prefixed {
            prefix: read,
            at: 0,
            inner: stream,
        },
    ))
}

/// A stream that first yields the bytes [`sniff`] read from it.
struct Prefixed {
    prefix: Vec<u8>,
    at: usize,
    inner: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.at < this.prefix.len() {
            let n = buf.remaining().min(this.prefix.len() - this.at);
            buf.put_slice(&this.prefix[this.at..this.at + n]);
            this.at += n;
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Answers 414 with the JSON error body for a request target over
/// [`MAX_TARGET_BYTES`], before any route (or log line) sees it.
async fn limit_target(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let uri = request.uri();
    let len = uri
        .path_and_query()
        .map_or(0, |target| target.as_str().len())
        + uri
            .authority()
            .map_or(0, |authority| authority.as_str().len());
    if len > MAX_TARGET_BYTES {
        return ApiError::new(
            StatusCode::URI_TOO_LONG,
            "uri_too_long",
            format!(
                "the request target is {len} bytes long; at most {MAX_TARGET_BYTES} are served"
            ),
        )
        .with_header(header::CONNECTION, "close")
        .into_response();
    }
    next.run(request).await
}
