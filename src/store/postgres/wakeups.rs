//! Waking the dispatchers of every instance when deliveries are queued, through
//! PostgreSQL's `LISTEN/NOTIFY`, so that a delivery whose event arrived at another
//! instance is not left waiting for the next poll.
//!
//! - The writer's commits wake this instance's dispatcher at once, in process.
//! - They also wake the [`notifier`], which sends one `NOTIFY` at a time on its own
//!   statement after the commit, at most one per [`NOTIFY_EVERY`]: `NOTIFY` takes a
//!   cluster-wide lock at commit, so a notify per batch inside the writer's
//!   transaction would serialize every instance's commits on it. The payload is
//!   only this instance's token, a hint that something may be due.
//! - The [`listener`] holds a connection of its own (a pooled one would lose its
//!   `LISTEN`), wakes the dispatcher for every notification from another instance,
//!   and reconnects after a failure, waking the dispatcher once in case it missed
//!   one. Polling stays as the fallback.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_postgres::AsyncMessage;

use super::tls::Target;

/// The channel all instances listen on.
const CHANNEL: &str = "classhook_deliveries";

/// At most one `NOTIFY` per this long from one instance.
pub const NOTIFY_EVERY: Duration = Duration::from_millis(5);

/// How long the listener waits before connecting again after a failure.
const RECONNECT_AFTER: Duration = Duration::from_secs(1);

/// Wakes `local` whenever `committed` is woken, at once, and sends a `NOTIFY` for
/// it, at most one per [`NOTIFY_EVERY`] (the last of a burst is sent when the
/// interval is over, never dropped).
pub async fn notifier(pool: Pool, committed: Arc<Notify>, local: Arc<Notify>, token: String) {
    let mut pending = false;
    let mut next_send = Instant::now();
    loop {
        tokio::select! {
            () = committed.notified() => {
                local.notify_one();
                pending = true;
            }
            () = tokio::time::sleep_until(next_send), if pending => {}
        }
        if !pending || Instant::now() < next_send {
            continue;
        }
        pending = false;
        let sent = async {
            let client = pool.get().await.ok()?;
            // Prepared once per connection: the server parsed and planned the
            // statement text at every notify before.
            let statement = client
                .prepare_cached("SELECT pg_notify($1, $2)")
                .await
                .ok()?;
            client.execute(&statement, &[&CHANNEL, &token]).await.ok()
        };
        if sent.await.is_none() {
            // Other instances fall back on their poll; nothing is lost.
            tracing::debug!("could not notify other instances of queued deliveries");
        }
        next_send = Instant::now() + NOTIFY_EVERY;
    }
}

/// Listens for other instances' notifications and wakes `local` for each; runs
/// until the task is aborted.
pub async fn listener(target: Target, local: Arc<Notify>, token: String) {
    let mut failures = 0u32;
    loop {
        match listen_once(&target, &local, &token).await {
            Ok(()) => failures = 0,
            Err(error) => {
                failures += 1;
                // Said once per outage, not every second of it.
                if failures == 1 {
                    tracing::warn!(%error, "cannot listen for other instances' deliveries; polling meanwhile");
                }
            }
        }
        tokio::time::sleep(RECONNECT_AFTER).await;
        // Something may have been queued while nobody listened.
        local.notify_one();
    }
}

/// One connection's life: `LISTEN`, then wake for every foreign notification until
/// the connection ends.
async fn listen_once(
    target: &Target,
    local: &Notify,
    token: &str,
) -> Result<(), tokio_postgres::Error> {
    match &target.tls {
        Some(tls) => {
            let (client, connection) = target.config.connect(tls.clone()).await?;
            listen_on(client, connection, local, token).await
        }
        None => {
            let (client, connection) = target.config.connect(tokio_postgres::NoTls).await?;
            listen_on(client, connection, local, token).await
        }
    }
}

async fn listen_on<S, T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    local: &Notify,
    token: &str,
) -> Result<(), tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    // The connection is driven by polling its messages; `LISTEN` completes only
    // while that happens.
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let statement = format!("LISTEN {CHANNEL}");
    let listen = client.batch_execute(&statement);
    tokio::pin!(listen);
    let mut listening = false;
    loop {
        tokio::select! {
            done = &mut listen, if !listening => {
                done?;
                listening = true;
                // Anything queued before the LISTEN took effect.
                local.notify_one();
            }
            message = messages.next() => match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if n.payload() != token {
                        local.notify_one();
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(error)) => return Err(error),
                None => return Ok(()),
            },
        }
    }
}
