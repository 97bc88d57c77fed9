//! The writer task: one connection of its own, drains the queue, writes everything
//! it drained in one transaction (group commit) and hands the callers to the
//! [`flusher`](super::flusher), which answers them once the batch is durable.
//! Durability costs one WAL flush per group of batches, not per request, and the
//! batch lock is never held through a flush.
//!
//! A batch that loses a lock conflict (deadlock, serialization failure) is written
//! again whole, a few times, after a short random pause. A batch that fails
//! otherwise is written again with a savepoint around each append, so that the
//! failure is that append's alone; a lost connection fails the whole batch (the
//! platforms retry, and dedupe recognises what did commit).

use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::mpsc;

use super::flusher::{Committed, Reply, fail_all};
use super::{events, subscriptions};
use crate::deliver::subscription::Subscription;
use crate::event::NewEvent;
use crate::store::rejection_queue::RejectionQueue;
use crate::store::sealed::Sealer;
use crate::store::{AppendOutcome, CommitObserver, MAX_COMMIT_LAG, NewRejection, StoreError};

/// The advisory lock a batch holds until it commits ("classhk" + 2).
pub(super) const BATCH_LOCK: i64 = 0x0063_6c61_7373_686d;

/// How many times a batch that lost a lock conflict is written: the first try and
/// the retries (after 1–2, 2–4, 4–8, … ms).
const CONTENDED_TRIES: u32 = 6;

/// What the writer receives.
pub enum WriteOp {
    /// An event to store, and the moment after which it must not be written any more.
    Append(Box<NewEvent>, Instant, Reply),
    /// Rejections are waiting in the [`RejectionQueue`]: write some.
    RejectionsWaiting,
}

pub struct Writer {
    pub pool: Pool,
    pub max_batch: usize,
    /// Told of batches that failed (the flusher reports the others).
    pub observer: Option<Arc<dyn CommitObserver>>,
    pub subscriptions: Subscriptions,
    /// Where committed batches wait for their flush.
    pub flusher: mpsc::Sender<Committed>,
    pub rejections: Arc<RejectionQueue>,
}

impl Writer {
    /// Runs until every sender is dropped.
    pub async fn run(mut self, mut queue: mpsc::Receiver<WriteOp>) {
        let mut batch: Vec<(Box<NewEvent>, Instant, Reply)> = Vec::with_capacity(self.max_batch);
        loop {
            // Waiting rejections are work too: do not sleep while some are left.
            let mut next = if self.rejections.is_empty() {
                match queue.recv().await {
                    Some(op) => Some(op),
                    None => break,
                }
            } else {
                queue.try_recv().ok()
            };
            while let Some(op) = next.take() {
                match op {
                    WriteOp::RejectionsWaiting => self.rejections.woken(),
                    WriteOp::Append(event, write_by, reply) => batch.push((event, write_by, reply)),
                }
                if batch.len() < self.max_batch {
                    next = queue.try_recv().ok();
                }
            }
            let rejections = self.rejections.take();
            if batch.is_empty() && rejections.is_empty() {
                continue;
            }
            let started = Instant::now();
            let operations = batch.len() + rejections.len();
            match self.commit(&mut batch, &rejections).await {
                Some((replies, queued)) => {
                    let committed = Committed {
                        replies,
                        queued,
                        operations,
                        started,
                    };
                    // The flusher ends only after the writer: a failed send means
                    // the store is closing, and the callers hear `WriterGone`.
                    let _ = self.flusher.send(committed).await;
                }
                None => {
                    self.rejections.count_dropped(rejections.len() as u64);
                    if let Some(observer) = &self.observer {
                        observer.batch_committed(operations, started.elapsed(), false);
                    }
                }
            }
        }
    }

    /// Commits the batch; returns its callers with what it did for each and how
    /// many deliveries it queued, or answers them itself when it failed (`None`).
    async fn commit(
        &mut self,
        batch: &mut Vec<(Box<NewEvent>, Instant, Reply)>,
        rejections: &[NewRejection],
    ) -> Option<(Vec<(Reply, Result<AppendOutcome, StoreError>)>, u64)> {
        // An event that waited longer than the store's `max_commit_lag` is not
        // stored, so that receive time and commit order never drift further apart.
        let now = Instant::now();
        let (expired, live): (Vec<_>, Vec<_>) = batch
            .drain(..)
            .partition(|(_, write_by, _)| now > *write_by);
        for (_, _, reply) in expired {
            tracing::warn!(
                "an event waited too long for the store and was not stored; the platform retries it"
            );
            let _ = reply.send(Err(StoreError::Timeout(MAX_COMMIT_LAG)));
        }
        let events: Vec<&NewEvent> = live.iter().map(|(event, _, _)| &**event).collect();
        let mut written = self.write_contended(&events, rejections, false).await;
        if let Err(error) = &written
            && !matches!(error, StoreError::NotReady(_))
        {
            tracing::warn!(%error, operations = events.len(), "a batch failed; writing it again with each append isolated");
            written = self.write_contended(&events, rejections, true).await;
        }
        match written {
            Ok((results, queued)) => {
                let replies = live
                    .into_iter()
                    .zip(results)
                    .map(|((_, _, reply), result)| {
                        if let Err(error) = &result {
                            tracing::error!(%error, "an append failed; the rest of its batch committed");
                        }
                        (reply, result)
                    })
                    .collect();
                Some((replies, queued))
            }
            Err(error) => {
                tracing::error!(%error, operations = events.len(), "store commit failed");
                fail_all(live.into_iter().map(|(_, _, reply)| reply), &error);
                None
            }
        }
    }

    /// [`Writer::write`], tried again whole while it loses lock conflicts, up to
    /// [`CONTENDED_TRIES`] times, each after a random pause that doubles.
    async fn write_contended(
        &mut self,
        events: &[&NewEvent],
        rejections: &[NewRejection],
        isolated: bool,
    ) -> Result<(Vec<Result<AppendOutcome, StoreError>>, u64), StoreError> {
        let mut tries = 1;
        loop {
            match self.write(events, rejections, isolated).await {
                Err(StoreError::Contended(message)) if tries < CONTENDED_TRIES => {
                    let pause_ms = (1u64 << (tries - 1)) * (1_000 + rand::random::<u64>() % 1_000);
                    tracing::info!(
                        error = %message,
                        try_number = tries,
                        "a batch lost a lock conflict; writing it again"
                    );
                    tokio::time::sleep(Duration::from_micros(pause_ms)).await;
                    tries += 1;
                }
                written => return written,
            }
        }
    }

    /// Writes the batch in one transaction: all at once, or (`isolated`) each append
    /// under its own savepoint. Returns one result per event and how many
    /// deliveries were queued.
    async fn write(
        &mut self,
        events: &[&NewEvent],
        rejections: &[NewRejection],
        isolated: bool,
    ) -> Result<(Vec<Result<AppendOutcome, StoreError>>, u64), StoreError> {
        let mut client = self.pool.get().await?;
        let mut tx = client.transaction().await?;
        let subscriptions = self.subscriptions.begin_batch(&tx).await?;
        // The rejection log is best effort: rows it cannot write are dropped
        // (counted), never a reason to fail the events beside them.
        if isolated {
            let savepoint = tx.savepoint("rejections").await?;
            match events::insert_rejections(&savepoint, rejections).await {
                Ok(()) => savepoint.commit().await?,
                Err(_) => {
                    savepoint.rollback().await?;
                    self.rejections.count_dropped(rejections.len() as u64);
                }
            }
        } else {
            events::insert_rejections(&tx, rejections).await?;
        }
        let mut results = Vec::with_capacity(events.len());
        let mut queued = 0;
        if isolated {
            for event in events {
                let savepoint = tx.savepoint("append").await?;
                match events::write(&savepoint, &[event], &subscriptions).await {
                    Ok(written) => {
                        savepoint.commit().await?;
                        queued += written.queued;
                        results.push(Ok(written.outcomes[0]));
                    }
                    // Either fails the transaction, not only this append.
                    Err(error @ (StoreError::NotReady(_) | StoreError::Contended(_))) => {
                        return Err(error);
                    }
                    Err(error) => {
                        savepoint.rollback().await?;
                        results.push(Err(StoreError::Commit(error.to_string())));
                    }
                }
            }
        } else {
            let written = events::write(&tx, events, &subscriptions).await?;
            queued = written.queued;
            results.extend(written.outcomes.into_iter().map(Ok));
        }
        tx.commit().await?;
        Ok((results, queued))
    }
}

/// The subscriptions a writer matches events against, and the version of them it
/// loaded.
#[derive(Default)]
pub struct Subscriptions {
    loaded: Option<(i64, Arc<Vec<Subscription>>)>,
}

impl Subscriptions {
    /// Starts a batch: takes the batch lock (writers of every instance commit one
    /// batch at a time, so sequence numbers grow in commit order, as readers paging
    /// by seq and the rebuild rely on), lets the commit skip its WAL flush (the
    /// flusher's flush covers it before anyone is answered), and returns the
    /// subscriptions as of now, held against changes until `tx` ends (changes take
    /// the version row for update), reloaded when another change committed.
    async fn begin_batch(
        &mut self,
        tx: &deadpool_postgres::Transaction<'_>,
    ) -> Result<Arc<Vec<Subscription>>, StoreError> {
        let statement = tx
            .prepare_cached(
                "SELECT version, pg_advisory_xact_lock($1),
                     set_config('synchronous_commit', 'off', true)
                 FROM subscription_version FOR SHARE",
            )
            .await?;
        let version: i64 = tx.query_one(&statement, &[&BATCH_LOCK]).await?.try_get(0)?;
        match &self.loaded {
            Some((loaded, current)) if *loaded == version => Ok(current.clone()),
            _ => {
                // Matching needs no secret: they stay sealed (and a value no key
                // opens never stops ingest).
                let current =
                    Arc::new(subscriptions::load_subscriptions(&**tx, &Sealer::withheld()).await?);
                self.loaded = Some((version, current.clone()));
                Ok(current)
            }
        }
    }
}
