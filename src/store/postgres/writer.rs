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

/// A caller's event, and where its answer goes.
type Pending = (Box<NewEvent>, Reply);

/// What writing a batch gives: one result per event, and how many deliveries it
/// queued.
type BatchResult = Result<(Vec<Result<AppendOutcome, StoreError>>, u64), StoreError>;

impl Writer {
    /// Runs until every sender is dropped.
    pub async fn run(mut self, mut queue: mpsc::Receiver<WriteOp>) {
        loop {
            // Waiting rejections are work too: do not sleep while some are left.
            let first = if self.rejections.is_empty() {
                match queue.recv().await {
                    Some(op) => Some(op),
                    None => break,
                }
            } else {
                queue.try_recv().ok()
            };
            self.commit_next(&mut queue, first).await;
        }
    }

    /// Writes the next batch and hands its callers to the flusher, or answers them
    /// itself when it failed.
    ///
    /// The batch is taken from the queue only once the batch lock is held: while
    /// another instance's batch holds the lock, what arrives here joins this batch
    /// instead of waiting for the next one. Several instances then write batches
    /// about as big as one instance's, instead of each writing half-size batches
    /// at twice the rate (a batch's statements cost the database more than its rows).
    async fn commit_next(&mut self, queue: &mut mpsc::Receiver<WriteOp>, first: Option<WriteOp>) {
        let started = Instant::now();
        let mut taken = Taken {
            first,
            done: false,
            live: Vec::with_capacity(self.max_batch),
            rejections: Vec::new(),
        };
        let mut written = self.write_queued(queue, &mut taken).await;
        // It failed before it got to the queue (the database is unreachable, say):
        // what waits there is answered now, not left for a later batch.
        self.take(queue, &mut taken);
        if taken.live.is_empty() && taken.rejections.is_empty() {
            return;
        }
        let Taken {
            live, rejections, ..
        } = taken;
        let events: Vec<&NewEvent> = live.iter().map(|(event, _)| &**event).collect();
        if let Err(StoreError::Contended(message)) = &written {
            log_lost_conflict(message, 1);
            written = self.write_contended(&events, &rejections, false, 1).await;
        }
        if let Err(error) = &written
            && !matches!(error, StoreError::NotReady(_))
        {
            tracing::warn!(%error, operations = events.len(), "a batch failed; writing it again with each append isolated");
            written = self.write_contended(&events, &rejections, true, 0).await;
        }
        let operations = live.len() + rejections.len();
        match written {
            Ok((results, queued)) => {
                let replies = live
                    .into_iter()
                    .zip(results)
                    .map(|((_, reply), result)| {
                        if let Err(error) = &result {
                            tracing::error!(%error, "an append failed; the rest of its batch committed");
                        }
                        (reply, result)
                    })
                    .collect();
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
            Err(error) => {
                tracing::error!(%error, operations = events.len(), "store commit failed");
                fail_all(live.into_iter().map(|(_, reply)| reply), &error);
                self.rejections.count_dropped(rejections.len() as u64);
                if let Some(observer) = &self.observer {
                    observer.batch_committed(operations, started.elapsed(), false);
                }
            }
        }
    }

    /// The first try of a batch: opens its transaction, takes the batch lock, then
    /// takes the batch from the queue and writes it.
    async fn write_queued(
        &mut self,
        queue: &mut mpsc::Receiver<WriteOp>,
        taken: &mut Taken,
    ) -> BatchResult {
        let mut client = self.pool.get().await?;
        let mut tx = client.transaction().await?;
        let subscriptions = self.subscriptions.begin_batch(&tx).await?;
        self.take(queue, taken);
        if taken.live.is_empty() && taken.rejections.is_empty() {
            return Ok((Vec::new(), 0));
        }
        let events: Vec<&NewEvent> = taken.live.iter().map(|(event, _)| &**event).collect();
        let written = self
            .write_in(&mut tx, &events, &taken.rejections, false, &subscriptions)
            .await?;
        tx.commit().await?;
        Ok(written)
    }

    /// Takes the batch from the queue, once: the event that woke the writer, what
    /// else is queued (up to `max_batch`), and the waiting rejections. An event that
    /// waited longer than the store's `max_commit_lag` is answered and left out, so
    /// that receive time and commit order never drift further apart.
    fn take(&mut self, queue: &mut mpsc::Receiver<WriteOp>, taken: &mut Taken) {
        if taken.done {
            return;
        }
        taken.done = true;
        let now = Instant::now();
        let mut next = taken.first.take();
        while let Some(op) = next.take() {
            match op {
                WriteOp::RejectionsWaiting => self.rejections.woken(),
                WriteOp::Append(_, write_by, reply) if now > write_by => {
                    tracing::warn!(
                        "an event waited too long for the store and was not stored; the platform retries it"
                    );
                    let _ = reply.send(Err(StoreError::Timeout(MAX_COMMIT_LAG)));
                }
                WriteOp::Append(event, _, reply) => taken.live.push((event, reply)),
            }
            if taken.live.len() < self.max_batch {
                next = queue.try_recv().ok();
            }
        }
        taken.rejections = self.rejections.take();
    }

    /// [`Writer::write`], tried again whole while it loses lock conflicts, each time
    /// after a random pause that doubles, until [`CONTENDED_TRIES`] tries in all
    /// (`lost`: how many tries of this batch lost one already).
    async fn write_contended(
        &mut self,
        events: &[&NewEvent],
        rejections: &[NewRejection],
        isolated: bool,
        mut lost: u32,
    ) -> BatchResult {
        loop {
            if lost > 0 {
                let pause_us = (1u64 << (lost - 1)) * (1_000 + rand::random::<u64>() % 1_000);
                tokio::time::sleep(Duration::from_micros(pause_us)).await;
            }
            match self.write(events, rejections, isolated).await {
                Err(StoreError::Contended(message)) if lost + 1 < CONTENDED_TRIES => {
                    lost += 1;
                    log_lost_conflict(&message, lost);
                }
                written => return written,
            }
        }
    }

    /// Writes a batch already taken in a transaction of its own.
    async fn write(
        &mut self,
        events: &[&NewEvent],
        rejections: &[NewRejection],
        isolated: bool,
    ) -> BatchResult {
        let mut client = self.pool.get().await?;
        let mut tx = client.transaction().await?;
        let subscriptions = self.subscriptions.begin_batch(&tx).await?;
        let written = self
            .write_in(&mut tx, events, rejections, isolated, &subscriptions)
            .await?;
        tx.commit().await?;
        Ok(written)
    }

    /// Writes the batch in `tx`, which holds the batch lock: all at once, or
    /// (`isolated`) each append under its own savepoint. Returns one result per
    /// event and how many deliveries were queued.
    async fn write_in(
        &self,
        tx: &mut deadpool_postgres::Transaction<'_>,
        events: &[&NewEvent],
        rejections: &[NewRejection],
        isolated: bool,
        subscriptions: &[Subscription],
    ) -> Result<(Vec<Result<AppendOutcome, StoreError>>, u64), StoreError> {
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
            events::insert_rejections(tx, rejections).await?;
        }
        let mut results = Vec::with_capacity(events.len());
        let mut queued = 0;
        if isolated {
            for event in events {
                let savepoint = tx.savepoint("append").await?;
                match events::write(&savepoint, &[event], subscriptions).await {
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
            let written = events::write(tx, events, subscriptions).await?;
            queued = written.queued;
            results.extend(written.outcomes.into_iter().map(Ok));
        }
        Ok((results, queued))
    }
}

/// Says that try `try_number` of a batch lost a lock conflict and that it is
/// written again.
fn log_lost_conflict(message: &str, try_number: u32) {
    tracing::info!(
        error = %message,
        try_number,
        "a batch lost a lock conflict; writing it again"
    );
}

/// What a batch took from the queue.
struct Taken {
    /// The operation that woke the writer, until the batch is taken.
    first: Option<WriteOp>,
    /// Whether the batch was taken.
    done: bool,
    live: Vec<Pending>,
    rejections: Vec<NewRejection>,
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
