//! What a subscriber receives, and the HTTP client that sends it.
//!
//! A receiver written for the platform works unchanged: a DreamClass event arrives as
//! the same envelope with `signature` recomputed under the subscription's secret; a
//! Loopwise event arrives byte for byte with `Loopwise-Webhook-Signature` recomputed.
//! Every delivery also carries Standard Webhooks headers (`webhook-id`,
//! `webhook-timestamp`, `webhook-signature`: `v1,<base64 HMAC of "id.timestamp.body">`
//! or `v1a,<base64 ed25519 signature>`, one entry per valid key; see [`super::signing`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::guard::{self, GuardedResolver};
use super::platform_body::PlatformBody;
use super::schedule::{self, Outcome};
use super::signing::{self, PreviousKey, SigningKey};
use super::subscription::SubscriptionSpec;
use crate::provider::{ProviderKind, dreamclass, loopwise};
use crate::secret::Secret;

/// How much of a response body an attempt keeps.
pub const RESPONSE_EXCERPT_BYTES: usize = 1024;
pub const USER_AGENT: &str = concat!("classhook/", env!("CARGO_PKG_VERSION"));

/// A request ready to send.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Builds the request for a stored event, as its platform would send it. The
/// platform-faithful signature (DreamClass body field, Loopwise header) holds one
/// signature only: the current HMAC key's (none with ed25519 signing).
/// `webhook-signature` carries one entry per key valid at `now_secs`: the current
/// one, then the replaced keys still in their grace period. `platform_body` is the
/// DreamClass body already prepared (see [`PlatformBody`]); without it, it is
/// prepared here.
pub fn build(
    provider: ProviderKind,
    stored_body: &[u8],
    platform_body: Option<&PlatformBody>,
    spec: &SubscriptionSpec,
    previous: &[PreviousKey],
    webhook_id: &str,
    now_secs: i64,
) -> Result<Outgoing, String> {
    let keys = signing::valid_keys(spec, previous, now_secs.saturating_mul(1000))?;
    let platform_key = keys.first().and_then(SigningKey::hmac_bytes);
    let mut headers = vec![
        ("content-type".to_string(), "application/json".to_string()),
        ("user-agent".to_string(), USER_AGENT.to_string()),
    ];
    let body = match provider {
        ProviderKind::DreamClass => {
            let prepared;
            let platform_body = match platform_body {
                Some(prepared) => prepared,
                None => {
                    prepared = PlatformBody::prepare(stored_body);
                    &prepared
                }
            };
            let signature =
                platform_key.map_or_else(String::new, |k| dreamclass::sign(k, platform_body.id()));
            platform_body.with_signature(&signature)?
        }
        ProviderKind::Loopwise => {
            if let Some(k) = platform_key {
                headers.push((
                    loopwise::SIGNATURE_HEADER.to_string(),
                    loopwise::sign(k, stored_body),
                ));
            }
            stored_body.to_vec()
        }
    };
    headers.push(("webhook-id".to_string(), webhook_id.to_string()));
    headers.push(("webhook-timestamp".to_string(), now_secs.to_string()));
    if !keys.is_empty() {
        let entries: Vec<String> = keys
            .iter()
            .map(|k| k.sign(webhook_id, now_secs, &body))
            .collect();
        headers.push(("webhook-signature".to_string(), entries.join(" ")));
    }
    Ok(Outgoing { headers, body })
}

/// A subscription's URL, parsed and checked against the literal-address guard
/// once (per reading of the subscriptions), not once per attempt.
#[derive(Debug, Clone)]
pub struct Target {
    url: url::Url,
    /// The same, as the request line takes it (without a fragment).
    uri: Uri,
}

/// The outgoing HTTP client: no redirects, guarded destinations, bounded reads.
#[derive(Clone)]
pub struct Sender {
    /// Shared: a sender is cloned for every attempt.
    transport: Arc<Transport>,
    allow_private: bool,
}

/// How requests leave. Directly: hyper's pooled HTTP/1 client over a connector that
/// resolves through the guard (about 15 µs of CPU less per request than reqwest on
/// the same connections: BENCHMARKS.md). Through an explicitly configured proxy:
/// reqwest, which tunnels https with CONNECT and authenticates to the proxy; the
/// client then resolves only the proxy's name, so the target is checked by
/// [`guard::check_host`] first.
enum Transport {
    Direct(Box<HyperClient<Connector, Full<Bytes>>>),
    Proxied(reqwest::Client),
}

type Connector = HttpsConnector<HttpConnector<GuardedResolver>>;

/// An attempt's result, as recorded.
#[derive(Debug, Clone)]
pub struct Attempted {
    pub outcome: Outcome,
    pub duration: Duration,
    pub response_excerpt: Option<String>,
}

impl Sender {
    /// A client that connects directly. Proxy environment variables (`HTTP_PROXY`,
    /// `HTTPS_PROXY`, `ALL_PROXY`, …) are ignored: through a proxy, the guard would
    /// only see the proxy's address, never the destination's.
    pub fn new(allow_private: bool) -> Sender {
        Sender::with_proxy(allow_private, None).expect("the HTTP client builds")
    }

    /// A client that sends through `proxy` (`http://[user:password@]host:port`, the
    /// operator's explicit `[delivery] proxy`) when given, else directly. Through a
    /// proxy every target is still resolved and checked before the request is made;
    /// the proxy itself may be on a private address. The error never repeats the
    /// proxy URL, which may hold credentials.
    pub fn with_proxy(allow_private: bool, proxy: Option<&Secret>) -> Result<Sender, String> {
        let transport = match proxy {
            Some(proxy) => Transport::Proxied(
                reqwest::Client::builder()
                    .redirect(reqwest::redirect::Policy::none())
                    .user_agent(USER_AGENT)
                    .proxy(parse_proxy(proxy)?)
                    .build()
                    .map_err(|_| "the HTTP client cannot be built".to_string())?,
            ),
            None => Transport::Direct(Box::new(direct_client(allow_private)?)),
        };
        Ok(Sender {
            transport: Arc::new(transport),
            allow_private,
        })
    }

    /// The target a URL names, parsed and checked (literal private addresses are
    /// refused here; names are checked when they resolve). The error is what an
    /// attempt to it records.
    pub fn target(&self, url: &str) -> Result<Target, String> {
        let mut url = url::Url::parse(url).map_err(|e| format!("bad url: {e}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("bad url: {} is not http or https", url.scheme()));
        }
        guard::check_literal(&url, self.allow_private)?;
        url.set_fragment(None);
        let uri = url
            .as_str()
            .parse::<Uri>()
            .map_err(|e| format!("bad url: {e}"))?;
        Ok(Target { url, uri })
    }

    /// Sends `request` to `url` (parsed and checked first; see [`Sender::target`]).
    pub async fn send(
        &self,
        url: &str,
        request: Outgoing,
        basic_auth: Option<(&str, &str)>,
        timeout: Duration,
    ) -> Attempted {
        let target = self.target(url);
        self.send_to(target.as_ref(), request, basic_auth, timeout)
            .await
    }

    /// Sends `request` to a target already parsed and checked (or records why it
    /// cannot be sent to).
    pub async fn send_to(
        &self,
        target: Result<&Target, &String>,
        request: Outgoing,
        basic_auth: Option<(&str, &str)>,
        timeout: Duration,
    ) -> Attempted {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started + timeout);
        let (outcome, response_excerpt) =
            match self.exchange(target, request, basic_auth, deadline).await {
                Ok(answered) => answered,
                Err(error) => (
                    Outcome::Failed {
                        status: None,
                        error: Some(error),
                    },
                    None,
                ),
            };
        Attempted {
            outcome,
            duration: started.elapsed(),
            response_excerpt,
        }
    }

    /// Sends and reads the answer, all by `deadline`. `Err`: why no answer came.
    async fn exchange(
        &self,
        target: Result<&Target, &String>,
        request: Outgoing,
        basic_auth: Option<(&str, &str)>,
        deadline: tokio::time::Instant,
    ) -> Result<(Outcome, Option<String>), String> {
        let target = target.map_err(Clone::clone)?;
        let request = http_request(target, request, basic_auth)?;
        let timed_out = |_| "timed out".to_string();
        match self.transport.as_ref() {
            Transport::Direct(client) => {
                let response =
                    tokio::time::timeout_at(deadline, client.request(request.map(Full::new)))
                        .await
                        .map_err(timed_out)?
                        .map_err(|e| match std::error::Error::source(&e) {
                            Some(cause) if e.is_connect() => {
                                format!("cannot connect: {}", describe(cause))
                            }
                            _ => describe(&e),
                        })?;
                answer(response, deadline).await
            }
            Transport::Proxied(client) => {
                guard::check_host(&target.url, self.allow_private).await?;
                let request = reqwest::Request::try_from(request.map(reqwest::Body::from))
                    .map_err(|e| describe(&e))?;
                // Without the URL, as the direct transport's errors: the attempt log
                // names the subscription already.
                let response = tokio::time::timeout_at(deadline, client.execute(request))
                    .await
                    .map_err(timed_out)?
                    .map_err(|e| describe(&e.without_url()))?;
                answer(http::Response::from(response), deadline).await
            }
        }
    }
}

/// The direct transport: HTTP/1 (what the platforms speak), connections kept alive
/// and reused, no redirects followed (hyper's client follows none), every name
/// resolved through the guard, https with rustls and the web's roots.
fn direct_client(allow_private: bool) -> Result<HyperClient<Connector, Full<Bytes>>, String> {
    let mut http = HttpConnector::new_with_resolver(GuardedResolver { allow_private });
    http.enforce_http(false);
    http.set_nodelay(true);
    let tls = crate::tls::client_config(crate::tls::web_roots())
        .map_err(|e| format!("the HTTP client cannot be built: {e}"))?;
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    // The timer closes connections idle for 90 s (reqwest's default too) instead of
    // keeping them until their next use.
    Ok(HyperClient::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(Duration::from_secs(90))
        .build(connector))
}

/// The request for `target`: POST with the outgoing headers and body, and the
/// subscription's basic auth (marked sensitive).
fn http_request(
    target: &Target,
    outgoing: Outgoing,
    basic_auth: Option<(&str, &str)>,
) -> Result<http::Request<Bytes>, String> {
    let mut request = http::Request::new(Bytes::from(outgoing.body));
    *request.method_mut() = http::Method::POST;
    *request.uri_mut() = target.uri.clone();
    let headers = request.headers_mut();
    for (name, value) in &outgoing.headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("header name {name:?} cannot be sent"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("the value of header {name} cannot be sent"))?;
        headers.append(name, value);
    }
    if let Some((user, password)) = basic_auth {
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        let mut value = HeaderValue::from_str(&format!("Basic {encoded}"))
            .map_err(|_| "basic_auth cannot be sent".to_string())?;
        value.set_sensitive(true);
        headers.insert(http::header::AUTHORIZATION, value);
    }
    Ok(request)
}

/// What an answer means for the delivery, with the first
/// [`RESPONSE_EXCERPT_BYTES`] of its body, read by `deadline`.
async fn answer<B>(
    response: http::Response<B>,
    deadline: tokio::time::Instant,
) -> Result<(Outcome, Option<String>), String>
where
    B: Body<Data = Bytes> + Unpin,
{
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| schedule::parse_retry_after(v, std::time::SystemTime::now()));
    let mut body = response.into_body();
    let mut excerpt = Vec::new();
    while excerpt.len() < RESPONSE_EXCERPT_BYTES {
        let frame = tokio::time::timeout_at(deadline, body.frame())
            .await
            .map_err(|_| "timed out reading the response".to_string())?;
        match frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    excerpt.extend_from_slice(data);
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    excerpt.truncate(RESPONSE_EXCERPT_BYTES);
    let excerpt = Some(String::from_utf8_lossy(&excerpt).into_owned());
    let outcome = match status {
        200..=299 => Outcome::Success { status },
        410 => Outcome::Gone,
        429 | 503 => Outcome::Throttled {
            status,
            retry_after,
        },
        _ => Outcome::Failed {
            status: Some(status),
            error: None,
        },
    };
    Ok((outcome, excerpt))
}

/// The proxy of `[delivery] proxy`: an `http://` or `https://` URL with a host.
/// Errors describe the problem without repeating the value.
pub fn parse_proxy(proxy: &Secret) -> Result<reqwest::Proxy, String> {
    let url = reqwest::Url::parse(proxy.expose())
        .map_err(|e| format!("is not a URL ({e}); expected http://[user:password@]host:port"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err("must be an http:// or https:// URL with a host".into());
    }
    reqwest::Proxy::all(url).map_err(|_| "is not a usable proxy URL".to_string())
}

/// A short, useful description of a transport error: it and its sources, each said
/// once (hyper and reqwest repeat a source's text in their own).
fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let said = inner.to_string();
        if !text.contains(&said) {
            text = format!("{text}: {said}");
        }
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn outgoing() -> Outgoing {
        Outgoing {
            headers: vec![("content-type".into(), "application/json".into())],
            body: b"{}".to_vec(),
        }
    }

    /// What an attempt that got no answer says of its failure.
    fn failure(attempted: Attempted) -> String {
        let Outcome::Failed {
            status: None,
            error: Some(error),
        } = attempted.outcome
        else {
            panic!("{attempted:?}");
        };
        error
    }

    /// A failure through a proxy says what failed without the target's URL (which
    /// may carry a token in its query), as a direct one does.
    #[tokio::test]
    async fn a_failure_through_a_proxy_does_not_repeat_the_url() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let proxy = Secret::new(format!("http://{closed}"));
        let sender = Sender::with_proxy(true, Some(&proxy)).unwrap();
        let attempted = sender
            .send(
                "http://127.0.0.1:9/hook?token=query-token-1",
                outgoing(),
                None,
                Duration::from_secs(5),
            )
            .await;
        let error = failure(attempted);
        assert!(!error.contains("query-token-1"), "{error}");
        assert!(!error.is_empty());
    }

    /// An https target is spoken to in TLS (a ClientHello, never plaintext), and a
    /// server that is not a trusted TLS server is a failed attempt that says why.
    #[tokio::test]
    async fn https_targets_get_tls_and_an_untrusted_server_is_a_failure() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut first = [0u8; 3];
            stream.read_exact(&mut first).await.unwrap();
            // Answer with plaintext HTTP, which no TLS client accepts.
            tokio::io::AsyncWriteExt::write_all(&mut stream, b"HTTP/1.1 200 OK\r\n\r\n")
                .await
                .unwrap();
            first
        });
        let sender = Sender::new(true);
        let attempted = sender
            .send(
                &format!("https://127.0.0.1:{port}/hook"),
                outgoing(),
                None,
                Duration::from_secs(5),
            )
            .await;
        // A TLS handshake record (content type 22), protocol major version 3.
        assert_eq!(server.await.unwrap()[..2], [0x16, 0x03]);
        let error = failure(attempted);
        assert!(error.starts_with("cannot connect: "), "{error}");
    }

    /// The request carries the outgoing headers, the body and basic auth; the
    /// answer's status and the start of its body are what the attempt keeps.
    #[tokio::test]
    async fn a_request_carries_its_headers_body_and_basic_auth() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut seen = Vec::new();
            let mut buf = [0u8; 4096];
            while !seen.ends_with(b"\r\n\r\n{}") {
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "the request ended early: {seen:?}");
                seen.extend_from_slice(&buf[..n]);
            }
            let answer = "HTTP/1.1 201 Created\r\ncontent-length: 2\r\n\r\nok";
            tokio::io::AsyncWriteExt::write_all(&mut stream, answer.as_bytes())
                .await
                .unwrap();
            String::from_utf8(seen).unwrap()
        });
        let attempted = Sender::new(true)
            .send(
                &format!("http://127.0.0.1:{port}/hook#fragment"),
                outgoing(),
                Some(("classhook", "s3cret")),
                Duration::from_secs(5),
            )
            .await;
        let raw = server.await.unwrap();
        let request = raw.to_ascii_lowercase();
        assert!(request.starts_with("post /hook http/1.1\r\n"), "{request}");
        assert!(request.contains("content-type: application/json\r\n"));
        assert!(request.contains(&format!("host: 127.0.0.1:{port}\r\n")));
        // base64("classhook:s3cret")
        assert!(raw.contains("Basic Y2xhc3Nob29rOnMzY3JldA==\r\n"), "{raw}");
        assert!(matches!(
            attempted.outcome,
            Outcome::Success { status: 201 }
        ));
        assert_eq!(attempted.response_excerpt.as_deref(), Some("ok"));
    }
}
