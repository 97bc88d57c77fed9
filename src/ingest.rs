//! `POST /hooks/{source}`: the checks, in a fixed order, and the one status each
//! failure maps to. 200 `{}` is answered only after the event is committed.
//!
//! The first checks look at nothing but the request line and headers, so a request
//! that is refused by them costs no body: it is answered at once with
//! `Connection: close` and its body is never read. Only then is the body read, within
//! its size limit, the shared body budget and the read timeout.
//!
//! | check                                   | answer |
//! |-----------------------------------------|--------|
//! | no such source (or any other path under `/hooks`) | 404 |
//! | not POST                                | 405 + `Allow: POST` |
//! | client address not in `allowed_ips`     | 403    |
//! | Basic Auth configured, missing or wrong | 401 + `WWW-Authenticate: Basic` |
//! | `Content-Encoding` other than `identity` | 415 `unsupported_encoding` |
//! | declared body larger than `max_body_bytes` | 413 |
//! | body would not fit in `max_inflight_body_bytes` | 503 `overloaded` + `Retry-After` |
//! | body larger than `max_body_bytes` (as it arrives) | 413 |
//! | body not received within `read_timeout` | 408    |
//! | not JSON, or envelope unusable          | 400    |
//! | signature missing or wrong              | 401    |
//! | tenant not allowed                      | 403    |
//! | storage cannot commit                   | 503 + `Retry-After` |

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::body::Body;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::clock::Clock;
use crate::config::{BasicAuth, Source};
use crate::crypto;
use crate::event::NewEvent;
use crate::http::{ApiError, BodyBudget, LogLimiter, OverBudget, Reservation, shorten};
use crate::metrics::Metrics;
use crate::net::{ClientAddr, NetList};
use crate::provider::{Envelope, EnvelopeError, SignatureError};
use crate::store::{AppendOutcome, NewRejection, REJECTION_BODY_PREFIX, Store, StoreError};
use crate::telemetry::{ReceiveTrace, Telemetry};

/// Headers never stored with an event: they carry credentials.
const UNSTORED_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

/// How much of a source name a log line or an error message shows.
pub const SHOWN_SOURCE_CHARS: usize = 64;

/// What ingest needs, shared by every request.
pub struct Ingest {
    pub sources: HashMap<String, Arc<Source>>,
    pub store: Store,
    pub clock: Arc<dyn Clock>,
    pub max_body_bytes: usize,
    pub read_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// Peers whose `X-Forwarded-For` names the client.
    pub trusted_proxies: NetList,
    /// The bytes of bodies held at once, across all requests.
    pub body_budget: BodyBudget,
    /// How many "request refused" lines reach the log.
    pub refusal_log: LogLimiter,
    /// Where spans go; `None`: tracing is off and no span is made.
    pub telemetry: Option<Telemetry>,
}

/// Why a request was refused. Each variant maps to exactly one status.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("body was not received within {0:?}")]
    ReadTimeout(Duration),
    #[error("could not read the body: {0}")]
    ReadFailed(String),
    #[error(
        "the gateway holds as many request bodies as it may ({0}; the budget is {limit} bytes); retry later",
        limit = .1
    )]
    Overloaded(OverBudget, usize),
    #[error("no source named {0:?} is configured")]
    UnknownSource(String),
    #[error("webhooks are POST; {0} is not accepted here")]
    MethodNotAllowed(Method),
    #[error(
        "the body is sent with Content-Encoding {0:?}; only uncompressed (identity) bodies are accepted"
    )]
    UnsupportedEncoding(String),
    #[error("requests from {0} are not accepted for this source")]
    IpNotAllowed(IpAddr),
    #[error("{0}")]
    Unauthorized(&'static str),
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("tenant {0:?} is not allowed for this source")]
    TenantNotAllowed(String),
    #[error("the event could not be stored ({0}); retry later")]
    Storage(#[from] StoreError),
}

impl IngestError {
    pub fn status(&self) -> StatusCode {
        match self {
            IngestError::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            IngestError::ReadTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            IngestError::ReadFailed(_) => StatusCode::BAD_REQUEST,
            IngestError::UnknownSource(_) => StatusCode::NOT_FOUND,
            IngestError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            IngestError::UnsupportedEncoding(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            IngestError::Unauthorized(_) | IngestError::Signature(_) => StatusCode::UNAUTHORIZED,
            IngestError::Envelope(_) => StatusCode::BAD_REQUEST,
            IngestError::IpNotAllowed(_) | IngestError::TenantNotAllowed(_) => {
                StatusCode::FORBIDDEN
            }
            IngestError::Storage(_) | IngestError::Overloaded(..) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The machine-readable code, also the rejection log's reason.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::TooLarge { .. } => "payload_too_large",
            IngestError::ReadTimeout(_) => "request_timeout",
            IngestError::ReadFailed(_) => "body_unreadable",
            IngestError::Overloaded(..) => "overloaded",
            IngestError::UnknownSource(_) => "unknown_source",
            IngestError::MethodNotAllowed(_) => "method_not_allowed",
            IngestError::UnsupportedEncoding(_) => "unsupported_encoding",
            IngestError::IpNotAllowed(_) => "ip_not_allowed",
            IngestError::Unauthorized(_) => "unauthorized",
            IngestError::Envelope(EnvelopeError::NotJson(_)) => "invalid_json",
            IngestError::Envelope(EnvelopeError::Unusable(_)) => "invalid_envelope",
            IngestError::Signature(SignatureError::Missing(_)) => "signature_missing",
            IngestError::Signature(SignatureError::Invalid(_)) => "signature_invalid",
            IngestError::TenantNotAllowed(_) => "tenant_not_allowed",
            IngestError::Storage(_) => "storage_unavailable",
        }
    }

    /// Answered before the whole body was read (the rest of it is never read).
    fn leaves_body_unread(&self) -> bool {
        matches!(
            self,
            IngestError::UnknownSource(_)
                | IngestError::MethodNotAllowed(_)
                | IngestError::UnsupportedEncoding(_)
                | IngestError::IpNotAllowed(_)
                | IngestError::Unauthorized(_)
                | IngestError::TooLarge { .. }
                | IngestError::ReadTimeout(_)
                | IngestError::ReadFailed(_)
                | IngestError::Overloaded(..)
        )
    }

    /// Kept in the rejection log. Not when storage is down (the log cannot be written
    /// either), nor when shedding load (a flood would push every useful entry out);
    /// both are counted in the metrics.
    fn is_logged(&self) -> bool {
        !matches!(self, IngestError::Storage(_) | IngestError::Overloaded(..))
    }
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let error = ApiError::new(self.status(), self.code(), self.to_string());
        let error = match self {
            IngestError::Unauthorized(_) => error.with_header(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"classhook\", charset=\"UTF-8\"",
            ),
            IngestError::MethodNotAllowed(_) => error.with_header(header::ALLOW, "POST"),
            IngestError::Storage(_) => error.with_header(header::RETRY_AFTER, "5"),
            IngestError::Overloaded(..) => error.with_header(header::RETRY_AFTER, "5"),
            _ => error,
        };
        // The unread rest of the body makes the connection unusable; closing it means
        // the body costs nothing.
        let error = if self.leaves_body_unread() {
            error.with_header(header::CONNECTION, "close")
        } else {
            error
        };
        error.into_response()
    }
}

/// The route handler.
pub async fn receive(
    State(ingest): State<Arc<Ingest>>,
    Path(source): Path<String>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let client = ClientAddr::resolve(remote, &headers, &ingest.trusted_proxies);
    let trace = ReceiveTrace::start(ingest.telemetry.as_ref(), &source, client.ip);
    let response = ingest.handle(&source, client, &headers, body, &trace).await;
    trace.finish(response.status().as_u16());
    ingest.metrics.ingest_finished(started.elapsed());
    response
}

/// Every other request under `/hooks` (another method, `/hooks/`, a path with more
/// segments): refused like an unknown source, so it is logged and kept in the
/// rejection log too. The source shown is the path after `/hooks/`.
pub async fn refuse_other(
    State(ingest): State<Arc<Ingest>>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
) -> Response {
    let client = ClientAddr::resolve(remote, &headers, &ingest.trusted_proxies);
    let path = uri.path();
    let source = path
        .strip_prefix("/hooks/")
        .or_else(|| path.strip_prefix("/hooks"))
        .unwrap_or(path);
    let error = if method == Method::POST {
        IngestError::UnknownSource(shorten(source, SHOWN_SOURCE_CHARS).into_owned())
    } else {
        IngestError::MethodNotAllowed(method)
    };
    ingest.refuse(error, source, client, &[], ingest.clock.now_ms())
}

impl Ingest {
    async fn handle(
        &self,
        source_name: &str,
        client: ClientAddr,
        headers: &HeaderMap,
        body: Body,
        trace: &ReceiveTrace,
    ) -> Response {
        // From the request line and headers alone: nothing of the body is read for a
        // request that is refused here.
        let source = match self.admit(source_name, client.ip, headers) {
            Ok(source) => source,
            Err(error) => {
                trace.refused(error.code());
                return self.refuse(error, source_name, client, &[], self.clock.now_ms());
            }
        };
        // The reservation is held until the answer is made: the body lives as long.
        let (body, _reservation) = match self.read_body(headers, body).await {
            Ok(read) => read,
            Err(error) => {
                trace.refused(error.code());
                return self.refuse(error, source_name, client, &[], self.clock.now_ms());
            }
        };
        trace.body_read(body.len());
        // Received = the whole request has arrived (the store bounds the time from here
        // to the commit, which keeps receive time and commit order close).
        let received_at_ms = self.clock.now_ms();
        match self
            .accept(source, client, headers, body.clone(), received_at_ms, trace)
            .await
        {
            Ok(outcome) => {
                // One line per request: a conflict (kept in the rejection log, with
                // the client's address) is worth an operator's attention.
                if let AppendOutcome::Conflict { seq } = outcome {
                    tracing::info!(
                        source = source_name,
                        client = %client.ip,
                        peer = %client.peer,
                        seq = seq.get(),
                        code = "id_conflict",
                        "a different event under a stored event's id; the first is kept"
                    );
                } else {
                    tracing::debug!(
                        source = source_name,
                        client = %client.ip,
                        peer = %client.peer,
                        seq = outcome.seq().get(),
                        outcome = outcome.as_str(),
                        "event accepted"
                    );
                }
                (StatusCode::OK, Json(serde_json::json!({}))).into_response()
            }
            Err(error) => {
                trace.refused(error.code());
                self.refuse(error, source_name, client, &body, received_at_ms)
            }
        }
    }

    /// The checks that need only the headers: the source, the sender's address,
    /// Basic Auth and the content encoding, in that order.
    fn admit(
        &self,
        source_name: &str,
        client: IpAddr,
        headers: &HeaderMap,
    ) -> Result<&Source, IngestError> {
        let source = self.sources.get(source_name).ok_or_else(|| {
            IngestError::UnknownSource(shorten(source_name, SHOWN_SOURCE_CHARS).into_owned())
        })?;
        check_headers(source, client, headers)?;
        Ok(source)
    }

    /// Authenticates, describes and stores one event whose body has been read.
    async fn accept(
        &self,
        source: &Source,
        client: ClientAddr,
        headers: &HeaderMap,
        body: Bytes,
        received_at_ms: i64,
        trace: &ReceiveTrace,
    ) -> Result<AppendOutcome, IngestError> {
        let step = trace.step("authenticate");
        let mut event = match authenticate(source, headers, body, received_at_ms) {
            Ok(event) => event,
            Err(error) => {
                step.failed(error.code());
                return Err(error);
            }
        };
        drop(step);
        trace.described(&event);
        event.remote_addr = Some(client.to_string());
        event.trace_parent = trace.traceparent();
        let (event_type, status) = (event.event_type.clone(), event.status);
        // From the hand-over to the writer to its commit (WAL fsync, or the
        // PostgreSQL COMMIT) being acknowledged: the 200 follows at once.
        let step = trace.step("store");
        let outcome = match self.store.append(event).await {
            Ok(outcome) => outcome,
            Err(error) => {
                let error = IngestError::from(error);
                step.failed(error.code());
                return Err(error);
            }
        };
        step.committed(&outcome);
        trace.stored(&outcome);
        self.metrics
            .event(&source.name, &event_type, status, outcome);
        Ok(outcome)
    }

    /// Logs the refusal (shortened, and rate-limited: a flood of refusals must not
    /// flood the log), counts it, keeps it in the rejection log, and answers it.
    fn refuse(
        &self,
        error: IngestError,
        source: &str,
        client: ClientAddr,
        body: &[u8],
        at_ms: i64,
    ) -> Response {
        if let Some(suppressed) = self.refusal_log.admit() {
            tracing::info!(
                source = %shorten(source, SHOWN_SOURCE_CHARS),
                client = %client.ip,
                peer = %client.peer,
                code = error.code(),
                %error,
                suppressed,
                "request refused"
            );
        }
        self.metrics.rejection(error.code());
        if error.is_logged() {
            self.store.record_rejection(NewRejection {
                at_ms,
                source: Some(source.chars().take(200).collect()),
                reason: error.code().to_string(),
                status: error.status().as_u16(),
                message: error.to_string(),
                body: body[..body.len().min(REJECTION_BODY_PREFIX)].to_vec(),
                body_len: body.len(),
                body_sha256: (!body.is_empty()).then(|| crypto::sha256(body)),
                remote_addr: Some(client.to_string()),
            });
        }
        error.into_response()
    }

    /// Reads the body within `max_body_bytes`, the body budget and `read_timeout`.
    /// The declared length is reserved before anything is read; a body without one
    /// (chunked) reserves as it arrives.
    async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(Bytes, Reservation), IngestError> {
        let limit = self.max_body_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(IngestError::TooLarge { limit });
        }
        let declared = declared.map_or(0, |len| len as usize);
        let overloaded = |over| IngestError::Overloaded(over, self.body_budget.total());
        let mut reservation = self.body_budget.reserve(declared).map_err(overloaded)?;
        let read = async {
            let mut body = Limited::new(body, limit);
            let mut collected = BytesMut::with_capacity(declared);
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|error| {
                    if error.is::<LengthLimitError>() {
                        IngestError::TooLarge { limit }
                    } else {
                        IngestError::ReadFailed(error.to_string())
                    }
                })?;
                if let Ok(data) = frame.into_data() {
                    let needed = collected.len() + data.len();
                    if needed > reservation.bytes() {
                        let more = needed - reservation.bytes();
                        self.body_budget
                            .grow(&mut reservation, more)
                            .map_err(overloaded)?;
                    }
                    collected.extend_from_slice(&data);
                }
            }
            Ok(collected.freeze())
        };
        match tokio::time::timeout(self.read_timeout, read).await {
            Err(_) => Err(IngestError::ReadTimeout(self.read_timeout)),
            Ok(Err(error)) => Err(error),
            Ok(Ok(body)) => Ok((body, reservation)),
        }
    }
}

/// The checks of a request against its source that need only the headers, before
/// its body is read: the sender's address (`allowed_ips`), Basic Auth, then the
/// body's `Content-Encoding`.
pub fn check_headers(
    source: &Source,
    client: IpAddr,
    headers: &HeaderMap,
) -> Result<(), IngestError> {
    if let Some(allowed) = &source.allowed_ips
        && !allowed.contains(client)
    {
        return Err(IngestError::IpNotAllowed(client));
    }
    if let Some(expected) = &source.basic_auth {
        check_basic_auth(headers, expected)?;
    }
    check_content_encoding(headers)
}

/// A compressed body would be refused as "not JSON" once read: say why from the
/// headers instead, before reading it. `identity` (or no header) is accepted.
fn check_content_encoding(headers: &HeaderMap) -> Result<(), IngestError> {
    for value in headers.get_all(header::CONTENT_ENCODING) {
        let text = String::from_utf8_lossy(value.as_bytes());
        let unsupported = text
            .split(',')
            .map(str::trim)
            .any(|coding| !coding.is_empty() && !coding.eq_ignore_ascii_case("identity"));
        if unsupported {
            return Err(IngestError::UnsupportedEncoding(
                shorten(text.trim(), SHOWN_SOURCE_CHARS).into_owned(),
            ));
        }
    }
    Ok(())
}

/// Checks a request's body against its source (envelope, signature, tenant) and
/// turns it into the event to store. The order of the checks is the order of the
/// answers in the table at the top of this file; the header checks
/// ([`check_headers`]) come before and are not repeated here.
pub fn authenticate(
    source: &Source,
    headers: &HeaderMap,
    body: Bytes,
    received_at_ms: i64,
) -> Result<NewEvent, IngestError> {
    let envelope = Envelope::parse(source.provider, &body)?;
    if let Some(key) = &source.signing_key {
        envelope.verify(key, headers, &body)?;
    }
    if let (Some(allowed), Some(tenant)) = (&source.tenants, envelope.tenant())
        && !allowed.iter().any(|t| t == tenant)
    {
        return Err(IngestError::TenantNotAllowed(
            tenant.chars().take(100).collect(),
        ));
    }
    let body_sha256 = crypto::sha256(&body);
    let described = envelope.describe();
    Ok(NewEvent {
        source: source.name.clone(),
        provider: source.provider,
        tenant: described.tenant,
        event_type: described.event_type,
        event_id: described.event_id,
        dedupe_key: described.dedupe_key,
        entity: described.entity,
        version_ms: described.version_ms.unwrap_or(received_at_ms),
        body,
        body_sha256,
        headers: stored_headers(headers),
        remote_addr: None,
        received_at_ms,
        status: described.status,
        status_reason: described.status_reason,
        mirror: described.mirror,
        trace_parent: None,
    })
}

fn check_basic_auth(headers: &HeaderMap, expected: &BasicAuth) -> Result<(), IngestError> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or(IngestError::Unauthorized(
            "Basic Auth credentials are required",
        ))?;
    let credentials = value
        .to_str()
        .ok()
        .and_then(|v| {
            let (scheme, encoded) = v.trim().split_once(' ')?;
            scheme
                .eq_ignore_ascii_case("basic")
                .then_some(encoded.trim())
        })
        .and_then(|encoded| {
            base64::engine::general_purpose::STANDARD
                .decode(encoded)
                .ok()
        })
        .ok_or(IngestError::Unauthorized(
            "the Authorization header is not Basic credentials",
        ))?;
    let (username, password) = match credentials.iter().position(|&b| b == b':') {
        Some(i) => (&credentials[..i], &credentials[i + 1..]),
        None => (&credentials[..], &[][..]),
    };
    // Both comparisons always run, so timing does not tell which one failed.
    let user_ok = crypto::secrets_equal(username, expected.username.as_bytes());
    let password_ok = crypto::secrets_equal(password, expected.password.expose().as_bytes());
    if user_ok & password_ok {
        Ok(())
    } else {
        Err(IngestError::Unauthorized(
            "Basic Auth credentials are wrong",
        ))
    }
}

fn stored_headers(headers: &HeaderMap) -> Vec<(String, String)> {
    headers
        .iter()
        .filter(|(name, _)| !UNSTORED_HEADERS.contains(&name.as_str()))
        .map(|(name, value)| {
            (
                name.as_str().to_string(),
                String::from_utf8_lossy(value.as_bytes()).into_owned(),
            )
        })
        .collect()
}
