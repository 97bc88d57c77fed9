//! `classhook serve`: run the gateway until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;

use crate::clock::SystemClock;
use crate::config::Config;
use crate::http::{self, ServeOptions};
use crate::server;

pub async fn run(config: Config) -> anyhow::Result<ExitCode> {
    for source in config.sources.iter().filter(|s| s.signing_key.is_none()) {
        tracing::warn!(
            source = source.name,
            "source has no secret: it accepts unsigned requests; set `secret` or `secret_env` to authenticate it"
        );
    }
    if config.sources.is_empty() {
        tracing::warn!("no [[source]] is configured: every webhook will be answered 404");
    }
    let running = server::start(&config, Arc::new(SystemClock))
        .await
        .context("classhook could not start")?;
    let sources: Vec<String> = config
        .sources
        .iter()
        .map(|s| format!("{} ({})", s.name, s.provider))
        .collect();
    tracing::info!(
        "classhook {} listening on http://{} with data in {} and sources: {}",
        running.instance,
        running.addr,
        config.store_location().shown(),
        if sources.is_empty() {
            "none".to_string()
        } else {
            sources.join(", ")
        }
    );
    shutdown_signal().await;
    tracing::info!("shutting down: finishing in-flight requests and deliveries");
    running.stop().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// The benchmark's ceiling server (hidden subcommand).
pub async fn run_null(listen: SocketAddr) -> anyhow::Result<ExitCode> {
    let listener = http::serve::listen(listen)?;
    tracing::info!("null server listening on http://{}", listener.local_addr()?);
    let options = ServeOptions::new(Duration::from_secs(10), Duration::from_secs(1), 1024);
    http::serve(listener, server::null_router(), options, shutdown_signal()).await;
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("SIGTERM handler can be installed");
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = interrupt.await;
}
