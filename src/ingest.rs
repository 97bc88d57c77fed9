//! `POST /hooks/{source}`: the checks, in a fixed order, and the one status each
//! failure maps to. 200 `{}` is answered only after the event is committed.
//!
//! | check                                   | answer |
//! |-----------------------------------------|--------|
//! | body larger than `max_body_bytes`       | 413    |
//! | body not received within `read_timeout` | 408    |
//! | no such source                          | 404    |
//! | client address not in `allowed_ips`     | 403    |
//! | Basic Auth configured, missing or wrong | 401 + `WWW-Authenticate: Basic` |
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
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};

use crate::clock::Clock;
use crate::config::{BasicAuth, Source};
use crate::crypto;
use crate::event::NewEvent;
use crate::http::ApiError;
use crate::metrics::Metrics;
use crate::net::{ClientAddr, NetList};
use crate::provider::{Envelope, EnvelopeError, SignatureError};
use crate::store::{AppendOutcome, NewRejection, REJECTION_BODY_PREFIX, Store, StoreError};

/// Headers never stored with an event: they carry credentials.
const UNSTORED_HEADERS: &[&str] = &["authorization", "proxy-authorization", "cookie"];

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
    #[error("no source named {0:?} is configured")]
    UnknownSource(String),
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
            IngestError::Unauthorized(_) | IngestError::Signature(_) => StatusCode::UNAUTHORIZED,
            IngestError::Envelope(_) => StatusCode::BAD_REQUEST,
            IngestError::IpNotAllowed(_) | IngestError::TenantNotAllowed(_) => {
                StatusCode::FORBIDDEN
            }
            IngestError::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The machine-readable code, also the rejection log's reason.
    pub fn code(&self) -> &'static str {
        match self {
            IngestError::TooLarge { .. } => "payload_too_large",
            IngestError::ReadTimeout(_) => "request_timeout",
            IngestError::ReadFailed(_) => "body_unreadable",
            IngestError::UnknownSource(_) => "unknown_source",
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
}

impl IntoResponse for IngestError {
    fn into_response(self) -> Response {
        let error = ApiError::new(self.status(), self.code(), self.to_string());
        let error = match self {
            IngestError::Unauthorized(_) => error.with_header(
                header::WWW_AUTHENTICATE,
                "Basic realm=\"classhook\", charset=\"UTF-8\"",
            ),
            IngestError::Storage(_) => error.with_header(header::RETRY_AFTER, "5"),
            // The unread rest of the body makes the connection unusable.
            IngestError::TooLarge { .. } | IngestError::ReadTimeout(_) => {
                error.with_header(header::CONNECTION, "close")
            }
            _ => error,
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
    let body = ingest.read_body(&headers, body).await;
    // Received = the whole request has arrived (the store bounds the time from here
    // to the commit, which keeps receive time and commit order close).
    let received_at_ms = ingest.clock.now_ms();
    let client = ClientAddr::resolve(remote, &headers, &ingest.trusted_proxies);
    let response = match body {
        Err(error) => ingest.refuse(error, &source, client, &[], received_at_ms),
        Ok(body) => match ingest
            .accept(&source, client, &headers, body.clone(), received_at_ms)
            .await
        {
            Ok(outcome) => {
                // One line per request: a conflict (kept in the rejection log, with
                // the client's address) is worth an operator's attention.
                if let AppendOutcome::Conflict { seq } = outcome {
                    tracing::info!(
                        source,
                        client = %client.ip,
                        peer = %client.peer,
                        seq,
                        code = "id_conflict",
                        "a different event under a stored event's id; the first is kept"
                    );
                } else {
                    tracing::debug!(
                        source,
                        client = %client.ip,
                        peer = %client.peer,
                        seq = outcome.seq(),
                        outcome = outcome.as_str(),
                        "event accepted"
                    );
                }
                (StatusCode::OK, Json(serde_json::json!({}))).into_response()
            }
            Err(error) => ingest.refuse(error, &source, client, &body, received_at_ms),
        },
    };
    ingest.metrics.ingest_finished(started.elapsed());
    response
}

impl Ingest {
    /// Authenticates, describes and stores one event whose body has been read.
    async fn accept(
        &self,
        source_name: &str,
        client: ClientAddr,
        headers: &HeaderMap,
        body: Bytes,
        received_at_ms: i64,
    ) -> Result<AppendOutcome, IngestError> {
        let source = self
            .sources
            .get(source_name)
            .ok_or_else(|| IngestError::UnknownSource(source_name.chars().take(100).collect()))?;
        check_sender(source, client.ip)?;
        let mut event = authenticate(source, headers, body, received_at_ms)?;
        event.remote_addr = Some(client.to_string());
        let (event_type, status) = (event.event_type.clone(), event.status);
        let outcome = self.store.append(event).await?;
        self.metrics
            .event(&source.name, &event_type, status, outcome);
        Ok(outcome)
    }

    /// Logs the refusal, keeps it in the rejection log, and answers it.
    fn refuse(
        &self,
        error: IngestError,
        source: &str,
        client: ClientAddr,
        body: &[u8],
        at_ms: i64,
    ) -> Response {
        tracing::info!(
            source,
            client = %client.ip,
            peer = %client.peer,
            code = error.code(),
            %error,
            "request refused"
        );
        self.metrics.rejection(error.code());
        // When storage is down, the log cannot be written either.
        if !matches!(error, IngestError::Storage(_)) {
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

    async fn read_body(&self, headers: &HeaderMap, body: Body) -> Result<Bytes, IngestError> {
        let limit = self.max_body_bytes;
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(IngestError::TooLarge { limit });
        }
        let collect = Limited::new(body, limit).collect();
        match tokio::time::timeout(self.read_timeout, collect).await {
            Err(_) => Err(IngestError::ReadTimeout(self.read_timeout)),
            Ok(Ok(collected)) => Ok(collected.to_bytes()),
            Ok(Err(error)) if error.is::<LengthLimitError>() => {
                Err(IngestError::TooLarge { limit })
            }
            Ok(Err(error)) => Err(IngestError::ReadFailed(error.to_string())),
        }
    }
}

/// The source's `allowed_ips`, if any, must hold the client address. It looks at
/// nothing but the address, so it can run before the body is read.
fn check_sender(source: &Source, client: IpAddr) -> Result<(), IngestError> {
    match &source.allowed_ips {
        Some(allowed) if !allowed.contains(client) => Err(IngestError::IpNotAllowed(client)),
        _ => Ok(()),
    }
}

/// Checks a request against its source (Basic Auth, envelope, signature, tenant) and
/// turns it into the event to store. The order of the checks is the order of the
/// answers in the table at the top of this file (the sender's address is checked
/// before, by [`check_sender`]).
pub fn authenticate(
    source: &Source,
    headers: &HeaderMap,
    body: Bytes,
    received_at_ms: i64,
) -> Result<NewEvent, IngestError> {
    if let Some(expected) = &source.basic_auth {
        check_basic_auth(headers, expected)?;
    }
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
