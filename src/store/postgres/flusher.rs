//! Makes the writer's batches durable, and only then answers their callers.
//!
//! The writer commits each batch without waiting for its WAL flush
//! (`synchronous_commit = off` for that transaction alone), so that the batch lock,
//! which every instance's batches take one at a time, is not held through a flush
//! and the next batch can be written while this one's WAL reaches the disk. This
//! task then commits a tiny transaction of its own with the server's own
//! `synchronous_commit` (on by default): the WAL is one sequence, so that flush covers
//! every batch committed before it, and one flush answers all the batches that
//! committed meanwhile (group commit across batches).
//!
//! What other sessions may see of a batch before its flush cannot reach anyone
//! outside the database: a delivery is sent only after its lease has committed, and
//! that lease's own flush covers the batch it read.

use std::sync::Arc;
use std::time::Instant;

use deadpool_postgres::Pool;
use tokio::sync::{Notify, mpsc, oneshot};

use crate::store::{AppendOutcome, CommitObserver, StoreError};

/// The smallest WAL-logged transaction: a logical message that nothing decodes
/// (`transactional`, so that it gets a transaction id, a commit record, and with it
/// a flush; a non-transactional message is never flushed by itself).
const FLUSH: &str = "SELECT pg_logical_emit_message(true, 'classhook', 'flush')";

pub type Reply = oneshot::Sender<Result<AppendOutcome, StoreError>>;

/// A batch the writer committed, waiting for a flush to be answered.
pub struct Committed {
    /// Each caller, with what the batch did for it.
    pub replies: Vec<(Reply, Result<AppendOutcome, StoreError>)>,
    /// Deliveries the batch queued.
    pub queued: u64,
    /// Appends and rejections written (for the observer).
    pub operations: usize,
    /// When the batch was taken from the queue.
    pub started: Instant,
}

pub struct Flusher {
    pub pool: Pool,
    pub observer: Option<Arc<dyn CommitObserver>>,
    /// Woken once deliveries are durable (the dispatchers of every instance).
    pub notify: Arc<Notify>,
}

impl Flusher {
    /// Runs until the writer is gone and every batch it sent is answered.
    pub async fn run(self, mut committed: mpsc::Receiver<Committed>) {
        let mut group = Vec::new();
        while let Some(first) = committed.recv().await {
            group.push(first);
            while let Ok(more) = committed.try_recv() {
                group.push(more);
            }
            let flushed = self.flush().await;
            if group.iter().any(|c| c.queued > 0) && flushed.is_ok() {
                self.notify.notify_one();
            }
            for batch in group.drain(..) {
                self.answer(batch, &flushed);
            }
        }
    }

    async fn flush(&self) -> Result<(), StoreError> {
        let client = self.pool.get().await?;
        let statement = client.prepare_cached(FLUSH).await?;
        client.query_one(&statement, &[]).await?;
        Ok(())
    }

    fn answer(&self, batch: Committed, flushed: &Result<(), StoreError>) {
        if let Some(observer) = &self.observer {
            observer.batch_committed(batch.operations, batch.started.elapsed(), flushed.is_ok());
        }
        match flushed {
            Ok(()) => {
                for (reply, result) in batch.replies {
                    // A caller may have given up (timeout); what it asked for is done anyway.
                    let _ = reply.send(result);
                }
            }
            Err(error) => {
                // Committed, but whether it reached the disk is unknown: the callers
                // get an error, the platforms retry, and dedupe counts a copy of
                // whatever did survive.
                tracing::error!(%error, operations = batch.operations, "store flush failed");
                fail_all(batch.replies.into_iter().map(|(reply, _)| reply), error);
            }
        }
    }
}

/// Answers every caller of a batch that failed whole: "not ready" stays itself (the
/// gateway answers 503 with `Retry-After`), anything else is a failed commit.
pub fn fail_all(replies: impl IntoIterator<Item = Reply>, error: &StoreError) {
    let message = error.to_string();
    for reply in replies {
        let _ = reply.send(Err(match error {
            StoreError::NotReady(m) => StoreError::NotReady(m.clone()),
            _ => StoreError::Commit(message.clone()),
        }));
    }
}
