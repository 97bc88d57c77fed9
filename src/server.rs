//! Assembles the gateway: opens the store, builds the routes and runs the HTTP loop
//! until asked to stop.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::clock::Clock;
use crate::config::Config;
use crate::http::{self, ApiError, ServeOptions};
use crate::ingest::{self, Ingest};
use crate::store::{Store, StoreError, StoreOptions};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot open the store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A gateway serving in the background.
pub struct Running {
    pub addr: SocketAddr,
    pub store: Store,
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting, lets in-flight requests finish, and returns when done.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }

    /// Waits until the server stops by itself (it does not, unless it fails).
    pub async fn wait(self) {
        let _ = self.task.await;
    }

    /// Hands out the stop trigger, e.g. to a signal handler.
    pub fn into_parts(self) -> (oneshot::Sender<()>, JoinHandle<()>) {
        (self.stop, self.task)
    }
}

/// Opens the store, binds `config.server.listen` and serves in the background.
pub async fn start(config: &Config, clock: Arc<dyn Clock>) -> Result<Running, StartError> {
    let server = &config.server;
    let store = Store::open(
        &server.data_dir,
        StoreOptions {
            append_timeout: server.append_timeout,
            ..StoreOptions::default()
        },
    )?;
    let ingest = Arc::new(Ingest {
        sources: config
            .sources
            .iter()
            .map(|s| (s.name.clone(), Arc::new(s.clone())))
            .collect::<HashMap<_, _>>(),
        store: store.clone(),
        clock,
        max_body_bytes: server.max_body_bytes,
        read_timeout: server.read_timeout,
    });
    let listener = TcpListener::bind(server.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: server.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: server.listen,
        source,
    })?;
    let options = ServeOptions {
        header_read_timeout: server.read_timeout,
        shutdown_grace: server.shutdown_grace,
    };
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(http::serve(listener, router(ingest), options, async {
        let _ = stopped.await;
    }));
    Ok(Running {
        addr,
        store,
        stop,
        task,
    })
}

/// Every route of the gateway.
pub fn router(ingest: Arc<Ingest>) -> Router {
    Router::new()
        .route("/hooks/{source}", post(ingest::receive))
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .fallback(|| async { ApiError::not_found("no such route") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this route does not accept that method (webhooks are POST)",
            )
        })
        .with_state(ingest)
}

/// The benchmark's ceiling: the same HTTP stack with a handler that only reads the
/// body and answers `{}`.
pub fn null_router() -> Router {
    Router::new().route(
        "/hooks/{source}",
        post(|_body: axum::body::Bytes| async { Json(json!({})) }),
    )
}
