//! Assembles the gateway: opens the store, builds the routes, starts the background
//! jobs (retention) and runs the HTTP loop until asked to stop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::{self, ApiState};
use crate::clock::Clock;
use crate::config::Config;
use crate::deliver::dispatcher::{DispatchOptions, Dispatcher};
use crate::deliver::send::Sender;
use crate::http::{self, ApiError, BodyBudget, LogLimiter, ServeOptions};
use crate::ingest::{self, Ingest};
use crate::metrics::Metrics;
use crate::secret::Secret;
use crate::store::{Store, StoreError, StoreOptions};
use crate::telemetry::{Telemetry, TelemetryError};

/// At most this many "request refused" lines per second reach the log; the next
/// line let through says how many were left out. Metrics count every refusal.
const REFUSAL_LINES_PER_SECOND: u32 = 20;

/// How long `/readyz` waits for the store to take a write lock.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    // The store's error is part of the message, not a `source`: printed once.
    #[error("cannot open the store at {location}: {error}")]
    Open { location: String, error: StoreError },
    #[error("the store failed at start: {0}")]
    Store(StoreError),
    // The I/O error is part of the message, not a `source`: printed once.
    #[error("cannot listen on {addr}: {error}")]
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    #[error(
        "refusing to serve the API on {0} without a token: set [api] tokens (or tokens_env), or listen on a loopback address"
    )]
    OpenApiOnPublicAddress(SocketAddr),
    /// The dispatcher builds its own `Sender::new(allow_private)` and cannot be handed
    /// the proxy yet (`DispatchOptions` lives in the dispatcher, which is being
    /// rewritten): rather than send directly when a proxy was asked for, refuse.
    /// The proxy is never shown: it may carry credentials.
    #[error("cannot use [delivery] proxy: {0}")]
    Proxy(String),
    /// The configuration was loaded without its secrets (for read-only commands):
    /// serving it would accept unsigned requests on sources that have a secret.
    #[error("this configuration was loaded without its secrets and cannot serve")]
    SecretsNotLoaded,
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
}

impl From<StoreError> for StartError {
    fn from(error: StoreError) -> Self {
        StartError::Store(error)
    }
}

/// A gateway serving in the background.
pub struct Running {
    pub addr: SocketAddr,
    /// This instance's name among several on one database.
    pub instance: String,
    pub store: Store,
    pub metrics: Arc<Metrics>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
    background: Vec<JoinHandle<()>>,
    /// The dispatcher's stop trigger and task.
    dispatcher: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
    shutdown_grace: Duration,
    telemetry: Option<Telemetry>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, lets the deliveries on the
    /// wire finish and be recorded (both within the shutdown grace) and gives this
    /// instance's share of the delivery work to the others; returns when done.
    pub async fn stop(self) {
        for job in &self.background {
            job.abort();
        }
        let _ = self.stop.send(());
        let dispatcher = async {
            if let Some((stop, mut task)) = self.dispatcher {
                let _ = stop.send(());
                if tokio::time::timeout(self.shutdown_grace, &mut task)
                    .await
                    .is_err()
                {
                    tracing::warn!(
                        "deliveries still on the wire at the end of the shutdown grace; their leases expire and they are sent again"
                    );
                    task.abort();
                }
            }
        };
        let _ = tokio::join!(self.task, dispatcher);
        // The last spans (of the requests and deliveries shutdown let finish) are
        // sent once both have ended.
        if let Some(telemetry) = self.telemetry {
            telemetry.shutdown().await;
        }
    }
}

/// What the operational routes share.
struct Ops {
    store: Store,
    metrics: Arc<Metrics>,
    tokens: Vec<Secret>,
    body_budget: BodyBudget,
    connections: Arc<tokio::sync::Semaphore>,
    max_connections: usize,
}

/// Binds `config.server.listen`, opens the store and serves in the background.
pub async fn start(config: &Config, clock: Arc<dyn Clock>) -> Result<Running, StartError> {
    let server = &config.server;
    if config.secrets != crate::config::Secrets::Resolve {
        return Err(StartError::SecretsNotLoaded);
    }
    if config.api.tokens.is_empty() && !server.listen.ip().is_loopback() {
        return Err(StartError::OpenApiOnPublicAddress(server.listen));
    }
    // Bind first: a port in use must not leave a data directory behind.
    let listener = http::serve::listen(server.listen).map_err(|error| StartError::Bind {
        addr: server.listen,
        error,
    })?;
    let addr = listener.local_addr().map_err(|error| StartError::Bind {
        addr: server.listen,
        error,
    })?;
    let instance = server
        .instance
        .clone()
        .unwrap_or_else(|| default_instance_name(addr.port()));
    let metrics = Metrics::for_instance(&instance);
    if server.secret_keys.writes_plain_text() {
        tracing::warn!(
            "subscription secrets are stored in plain text: set {} to a key (`classhook secret-key` makes one) to encrypt them",
            server.secret_keys.key_var()
        );
    }
    let store = Store::open(
        &config.store_location(),
        StoreOptions {
            append_timeout: server.append_timeout,
            observer: Some(metrics.clone()),
            secrets: server.secret_keys.clone(),
            ..StoreOptions::default()
        },
    )
    .await
    .map_err(|error| StartError::Open {
        location: config.store_location().shown(),
        error,
    })?;
    // Plain text and values under the previous key move to the current key.
    let resealed = store.reseal_subscription_secrets().await?;
    if let (true, Some(key)) = (resealed > 0, server.secret_keys.current_key()) {
        tracing::info!(
            subscriptions = resealed,
            "subscription secrets sealed under key {key}"
        );
    }
    let telemetry = Telemetry::start(&config.telemetry, metrics.clone())?;
    if let (Some(url), Some(_)) = (&config.telemetry.traces_url, &telemetry) {
        tracing::info!(
            "exporting traces to {url} (OTLP/HTTP) as service {}",
            config.telemetry.service_name
        );
    }
    let body_budget = BodyBudget::new(server.max_inflight_body_bytes);
    let ingest = Arc::new(Ingest {
        sources: config
            .sources
            .iter()
            .map(|s| (s.name.clone(), Arc::new(s.clone())))
            .collect::<HashMap<_, _>>(),
        store: store.clone(),
        clock: clock.clone(),
        max_body_bytes: server.max_body_bytes,
        read_timeout: server.read_timeout,
        metrics: metrics.clone(),
        trusted_proxies: server.trusted_proxies.clone(),
        body_budget: body_budget.clone(),
        refusal_log: LogLimiter::new(REFUSAL_LINES_PER_SECOND, Duration::from_secs(1)),
        telemetry: telemetry.clone(),
    });
    let api = Arc::new(ApiState {
        store: store.clone(),
        clock: clock.clone(),
        tokens: config.api.tokens.clone(),
        sources: config
            .sources
            .iter()
            .map(|s| (s.name.clone(), s.provider))
            .collect(),
        allow_private_destinations: config.delivery.allow_private_destinations,
    });
    // Tells the dashboard's live tails to end when shutdown begins, so an open page
    // does not hold the shutdown for its whole grace.
    let (dashboard_stop, dashboard_stopping) = tokio::sync::watch::channel(false);
    // One client for deliveries and the dashboard's test sends.
    let sender = Sender::with_proxy(
        config.delivery.allow_private_destinations,
        config.delivery.proxy.as_ref(),
    );
    let dashboard = Arc::new(crate::ui::UiState {
        stopping: dashboard_stopping,
        store: store.clone(),
        clock: clock.clone(),
        tokens: config.api.tokens.clone(),
        secure_cookies: server.https,
        sessions: crate::ui::session::Sessions::default(),
        sources: config.sources.clone(),
        // With delivery off a bad proxy does not stop the start; the test button says why.
        sender: sender.clone(),
    });
    let options = ServeOptions::new(
        server.read_timeout,
        server.shutdown_grace,
        server.max_connections,
    );
    let ops = Arc::new(Ops {
        store: store.clone(),
        metrics: metrics.clone(),
        tokens: config.api.tokens.clone(),
        body_budget,
        connections: options.connections.clone(),
        max_connections: server.max_connections,
    });
    crate::deliver::config_sync::sync_config_subscriptions(&store, config.subscriptions.clone())
        .await?;
    let mut background = vec![tokio::spawn(summarize(metrics.clone()))];
    if let Some(telemetry) = &telemetry {
        background.push(tokio::spawn(telemetry.clone().report_drops()));
    }
    let mut dispatcher_task = None;
    if config.delivery.enabled {
        let sender = sender.map_err(StartError::Proxy)?;
        let options = DispatchOptions {
            allow_private_destinations: config.delivery.allow_private_destinations,
            hold_after_failures: config.delivery.hold_after_failures,
            poll_interval: config.delivery.poll_interval,
            lease_margin: config.delivery.lease_margin,
        };
        let dispatcher = Dispatcher::with_sender(store.clone(), clock.clone(), options, sender)
            .with_observer(metrics.clone())
            .named(&instance)
            .with_telemetry(telemetry.clone());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(dispatcher.run(async move {
            let _ = stopped.await;
        }));
        dispatcher_task = Some((stop, task));
    } else {
        // No dispatcher reads the keys (it forgets expired ones as it goes): expired
        // replaced keys still leave the store.
        background.push(tokio::spawn(forget_expired_keys(
            store.clone(),
            clock.clone(),
        )));
    }
    if let Some(days) = config.retention.events_days {
        background.push(tokio::spawn(retention(
            store.clone(),
            clock,
            days,
            config.retention.interval,
        )));
    }
    let (stop, stopped) = oneshot::channel::<()>();
    let serving = http::serve(
        listener,
        router(ingest, api, ops, dashboard),
        options,
        async move {
            let _ = stopped.await;
            let _ = dashboard_stop.send(true);
        },
    );
    let task = tokio::spawn(serving);
    Ok(Running {
        telemetry,
        addr,
        instance,
        store,
        metrics,
        stop,
        task,
        background,
        dispatcher: dispatcher_task,
        shutdown_grace: server.shutdown_grace,
    })
}

/// Every route of the gateway.
fn router(
    ingest: Arc<Ingest>,
    api: Arc<ApiState>,
    ops: Arc<Ops>,
    dashboard: Arc<crate::ui::UiState>,
) -> Router {
    let hooks = Router::new()
        // A URL pasted with a trailing slash is the same source.
        .route(
            "/hooks/{source}",
            post(ingest::receive).fallback(ingest::refuse_other),
        )
        .route(
            "/hooks/{source}/",
            post(ingest::receive).fallback(ingest::refuse_other),
        )
        .with_state(ingest.clone());
    let operations = Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(ops);
    Router::new()
        .merge(hooks)
        .merge(operations)
        .nest("/api/v1", api::router(api))
        .merge(crate::ui::router(dashboard))
        // Everything else under /hooks is refused through ingest, so it is logged and
        // kept in the rejection log like an unknown source.
        .fallback(
            move |remote: ConnectInfo<SocketAddr>, method: Method, uri: Uri, headers: HeaderMap| {
                let ingest = ingest.clone();
                async move {
                    let path = uri.path();
                    if path == "/hooks" || path.starts_with("/hooks/") {
                        ingest::refuse_other(State(ingest), remote, method, uri, headers).await
                    } else {
                        ApiError::not_found("no such route").into_response()
                    }
                }
            },
        )
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method (webhooks are POST, the API is GET)",
            )
        })
}

/// 200 while the store can take a write; 503 otherwise.
async fn readyz(State(ops): State<Arc<Ops>>) -> Response {
    match ops.store.ping(READY_TIMEOUT).await {
        Ok(()) => Json(json!({ "status": "ready" })).into_response(),
        Err(error) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not_ready",
            format!("the store cannot take writes: {error}"),
        )
        .into_response(),
    }
}

/// Prometheus text format. Asks for the API token when one is configured.
async fn metrics(State(ops): State<Arc<Ops>>, headers: HeaderMap) -> Result<Response, ApiError> {
    if !ops.tokens.is_empty() && !api::bearer_matches(&ops.tokens, &headers) {
        return Err(api::unauthorized());
    }
    let counts = ops.store.mirror_counts().await.unwrap_or_default();
    let queue = ops.store.delivery_queue().await.unwrap_or_default();
    ops.metrics.set_load(
        ops.body_budget.in_use(),
        ops.max_connections
            .saturating_sub(ops.connections.available_permits()),
    );
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        ops.metrics
            .render(&counts, &queue, ops.store.dropped_rejections()),
    )
        .into_response())
}

/// `<host name>:<port>`: unique among instances on different hosts, and among
/// instances of one host on different ports.
fn default_instance_name(port: u16) -> String {
    let host: String = gethostname::gethostname()
        .to_string_lossy()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(58)
        .collect();
    let host = if host.is_empty() {
        "classhook".into()
    } else {
        host
    };
    format!("{host}:{port}")
}

/// How often the log gets its line of what arrived.
const SUMMARY_INTERVAL: Duration = Duration::from_secs(60);

/// One INFO line a minute saying what arrived per source (nothing when nothing did),
/// instead of a line per event.
async fn summarize(metrics: Arc<Metrics>) {
    let mut ticker = tokio::time::interval(SUMMARY_INTERVAL);
    ticker.tick().await;
    loop {
        ticker.tick().await;
        if let Some(summary) = metrics.take_summary() {
            tracing::info!("events in the last minute: {summary}");
        }
    }
}

/// With delivery off: deletes signing keys whose grace period is over, now and then
/// every minute.
async fn forget_expired_keys(store: Store, clock: Arc<dyn Clock>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(60));
    loop {
        ticker.tick().await;
        match store.forget_expired_keys(clock.now_ms()).await {
            Ok(0) => {}
            Ok(keys) => tracing::info!(keys, "expired signing keys forgotten"),
            Err(error) => tracing::warn!(%error, "cannot forget expired signing keys"),
        }
    }
}

/// Prunes events older than `days`, now and then every `interval`.
async fn retention(store: Store, clock: Arc<dyn Clock>, days: u64, interval: Duration) {
    let keep_ms = i64::try_from(days.saturating_mul(86_400_000)).unwrap_or(i64::MAX);
    let mut ticker = tokio::time::interval(interval);
    loop {
        ticker.tick().await;
        let before = clock.now_ms().saturating_sub(keep_ms);
        match store.prune_events(before).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(pruned, days, "retention pruned old events"),
            Err(error) => tracing::warn!(%error, "retention could not prune events"),
        }
    }
}

/// The benchmark's ceiling: the same HTTP stack with a handler that only reads the
/// body and answers `{}`.
pub fn null_router() -> Router {
    Router::new().route(
        "/hooks/{source}",
        post(|_body: axum::body::Bytes| async { Json(json!({})) }),
    )
}
