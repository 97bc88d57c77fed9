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
    url: reqwest::Url,
}

/// The outgoing HTTP client: no redirects, guarded destinations, bounded reads.
#[derive(Clone)]
pub struct Sender {
    client: reqwest::Client,
    allow_private: bool,
    /// Requests go through an explicitly configured proxy, so the client resolves only
    /// the proxy's name and the target is checked by [`guard::check_host`] first.
    proxied: bool,
}

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
        let builder = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(USER_AGENT);
        let builder = match proxy {
            Some(proxy) => builder.proxy(parse_proxy(proxy)?),
            None => builder
                .no_proxy()
                .dns_resolver(Arc::new(GuardedResolver { allow_private })),
        };
        let client = builder
            .build()
            .map_err(|_| "the HTTP client cannot be built".to_string())?;
        Ok(Sender {
            client,
            allow_private,
            proxied: proxy.is_some(),
        })
    }

    /// The target a URL names, parsed and checked (literal private addresses are
    /// refused here; names are checked when they resolve). The error is what an
    /// attempt to it records.
    pub fn target(&self, url: &str) -> Result<Target, String> {
        let url = reqwest::Url::parse(url).map_err(|e| format!("bad url: {e}"))?;
        guard::check_literal(&url, self.allow_private)?;
        Ok(Target { url })
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
        let (outcome, response_excerpt) = self.exchange(target, request, basic_auth, timeout).await;
        Attempted {
            outcome,
            duration: started.elapsed(),
            response_excerpt,
        }
    }

    async fn exchange(
        &self,
        target: Result<&Target, &String>,
        request: Outgoing,
        basic_auth: Option<(&str, &str)>,
        timeout: Duration,
    ) -> (Outcome, Option<String>) {
        let failed = |error: String| {
            (
                Outcome::Failed {
                    status: None,
                    error: Some(error),
                },
                None,
            )
        };
        let url = match target {
            Ok(target) => target.url.clone(),
            Err(refused) => return failed(refused.clone()),
        };
        if self.proxied
            && let Err(refused) = guard::check_host(&url, self.allow_private).await
        {
            return failed(refused);
        }
        let mut builder = self.client.post(url).timeout(timeout).body(request.body);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        if let Some((user, password)) = basic_auth {
            builder = builder.basic_auth(user, Some(password));
        }
        let mut response = match builder.send().await {
            Ok(response) => response,
            Err(e) => return failed(describe(&e)),
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| schedule::parse_retry_after(v, std::time::SystemTime::now()));
        let mut excerpt = Vec::new();
        while excerpt.len() < RESPONSE_EXCERPT_BYTES {
            match response.chunk().await {
                Ok(Some(chunk)) => excerpt.extend_from_slice(&chunk),
                Ok(None) => break,
                Err(e) if e.is_timeout() => return failed("timed out reading the response".into()),
                Err(_) => break,
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
        (outcome, excerpt)
    }
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

/// A short, useful description of a transport error (its source chain).
fn describe(error: &reqwest::Error) -> String {
    if error.is_timeout() {
        return "timed out".into();
    }
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(inner) = source {
        text = format!("{text}: {inner}");
        source = inner.source();
    }
    text
}
