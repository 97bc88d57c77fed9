//! The single writer: one thread owns the only write connection, drains the queue,
//! commits everything it drained in one transaction (group commit) and only then
//! answers each caller. Durability costs one fsync per batch, not per request.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{Notify, mpsc, oneshot};

use super::dedupe::{DedupeIndex, DedupeKey};
use super::health::FileIdentity;
use super::{delivery, mirror};
use crate::canonical;
use crate::deliver::subscription::Subscription;
use crate::event::{EventStatus, NewEvent};
use crate::store::rejection_queue::RejectionQueue;
use crate::store::{
    AppendOutcome, AttemptRecorded, AttemptResult, ClaimRequest, Claimed, CommitObserver, EventSeq,
    Lease, NewRejection, REJECTION_BODY_PREFIX, StoreError,
};

/// What the writer receives.
pub enum WriteOp {
    /// An event to store, and the moment after which it must not be written any more.
    Append(
        Box<NewEvent>,
        Instant,
        oneshot::Sender<Result<AppendOutcome, StoreError>>,
    ),
    /// Rejections are waiting in the [`RejectionQueue`]: write some.
    RejectionsWaiting,
    /// Leases due deliveries (subscription, capacity, lease end) at a time, in the
    /// same group commit as ingest and attempt records.
    Claim(
        Vec<ClaimRequest>,
        i64,
        oneshot::Sender<Result<Vec<Claimed>, StoreError>>,
    ),
    /// A finished delivery attempt: recorded in the same group commit as ingest;
    /// answers whether its lease still held (else nothing was recorded).
    Record(
        Box<AttemptResult>,
        oneshot::Sender<Result<AttemptRecorded, StoreError>>,
    ),
    /// Leases (delivery, token) given back without an attempt.
    Release(Vec<Lease>, oneshot::Sender<Result<(), StoreError>>),
    /// Exclusive work on the write connection (mirror rebuild, retention, readiness
    /// probe), run between batches in its own transaction.
    Job(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// The subscriptions stored events are matched against, and whom to wake when a
/// commit queued deliveries.
pub struct Outbox {
    pub matchers: Arc<RwLock<Vec<Subscription>>>,
    pub notify: Arc<Notify>,
}

/// What the writer shares with the store handles besides its queue.
pub struct Shared {
    pub outbox: Outbox,
    pub rejections: Arc<RejectionQueue>,
    /// The database file opened: a batch is written only while it is still there.
    pub identity: FileIdentity,
}

/// Runs until every sender is dropped.
pub fn run(
    mut conn: Connection,
    mut dedupe: DedupeIndex,
    mut queue: mpsc::Receiver<WriteOp>,
    max_batch: usize,
    linger: Duration,
    observer: Option<Arc<dyn CommitObserver>>,
    shared: Shared,
) {
    let mut batch = Vec::with_capacity(max_batch);
    // Since when the batch has been waiting for more work: a batch of nothing but
    // records that may linger waits up to `linger` (crate::store::RECORD_LINGER);
    // anything else ends the wait, its sender unparking this thread.
    let mut lingering: Option<Instant> = None;
    let mut closed = false;
    loop {
        // Waiting rejections are work too: do not sleep while some are left.
        let first = match lingering {
            Some(since) => match recv_lingering(&mut queue, since + linger) {
                Received::Op(op) => Some(op),
                Received::TimedOut => None,
                Received::Closed => {
                    closed = true;
                    None
                }
            },
            None if shared.rejections.is_empty() => match queue.blocking_recv() {
                Some(op) => Some(op),
                None => break,
            },
            None => queue.try_recv().ok(),
        };
        let mut job = None;
        let mut next = first;
        while let Some(op) = next.take() {
            match op {
                WriteOp::Job(work) => {
                    job = Some(work);
                    break;
                }
                WriteOp::RejectionsWaiting => shared.rejections.woken(),
                op => batch.push(op),
            }
            if batch.len() < max_batch {
                next = queue.try_recv().ok();
            }
        }
        let may_wait = !closed
            && job.is_none()
            && shared.rejections.is_empty()
            && !batch.is_empty()
            && batch.len() < max_batch
            && batch.iter().all(WriteOp::may_wait);
        if may_wait {
            let since = *lingering.get_or_insert_with(Instant::now);
            if since.elapsed() < linger {
                continue;
            }
        }
        lingering = None;
        let rejections = shared.rejections.take();
        if !batch.is_empty() || !rejections.is_empty() {
            let started = Instant::now();
            let operations = batch.len() + rejections.len();
            let ok = commit_batch(&mut conn, &mut dedupe, &mut batch, &rejections, &shared);
            if !ok {
                shared.rejections.count_dropped(rejections.len() as u64);
            }
            if let Some(observer) = &observer {
                observer.batch_committed(operations, started.elapsed(), ok);
            }
        }
        if let Some(work) = job {
            work(&mut conn);
        }
        if closed {
            break;
        }
    }
}

/// What [`recv_lingering`] got.
enum Received {
    Op(WriteOp),
    TimedOut,
    /// Every sender is gone.
    Closed,
}

/// Takes the next operation while a batch lingers: sleeps until `deadline` unless
/// something is queued. Only operations that must not wait wake this thread early
/// (their senders unpark it, see [`WriteOp::may_wait`]); a record that may wait
/// does not, or each would cost a wake-up of its own.
fn recv_lingering(queue: &mut mpsc::Receiver<WriteOp>, deadline: Instant) -> Received {
    loop {
        match queue.try_recv() {
            Ok(op) => return Received::Op(op),
            Err(mpsc::error::TryRecvError::Disconnected) => return Received::Closed,
            Err(mpsc::error::TryRecvError::Empty) => {}
        }
        let now = Instant::now();
        if now >= deadline {
            return Received::TimedOut;
        }
        // Woken early by an urgent sender (or spuriously): look again.
        std::thread::park_timeout(deadline - now);
    }
}

/// What one operation of a batch produced, for its caller.
enum Done {
    Nothing,
    Appended(AppendOutcome),
    Claimed(Vec<Claimed>),
    Recorded(AttemptRecorded),
    /// This operation failed and was rolled back alone; the rest of the batch stands.
    Failed(String),
    /// An event that waited longer than the store's `max_commit_lag`: not stored, so
    /// that receive time and commit order never drift further apart than that.
    Expired,
}

/// Commits the batch and answers its callers; returns whether it committed.
///
/// A batch is first written as one plain transaction. If one of its operations
/// fails (a constraint, a row that changed under it), the transaction is rolled back
/// and the batch written again with a savepoint around each operation, so that the
/// failure is that operation's alone and every other caller still gets its commit.
/// The common case pays nothing for the isolation.
fn commit_batch(
    conn: &mut Connection,
    dedupe: &mut DedupeIndex,
    batch: &mut Vec<WriteOp>,
    rejections: &[NewRejection],
    shared: &Shared,
) -> bool {
    let outbox = &shared.outbox;
    // A removed or replaced file would take writes into an unlinked inode: lost on
    // restart. Refuse to acknowledge anything then.
    if let Err(message) = shared.identity.check() {
        tracing::error!(error = %message, "store writes refused");
        for op in batch.drain(..) {
            op.fail(&message);
        }
        return false;
    }
    // Subscription changes run as jobs on this same thread, so this read lock is
    // never contended.
    let subscriptions = outbox
        .matchers
        .read()
        .expect("matcher lock is never poisoned");
    let mut written = write_batch(
        conn,
        dedupe,
        batch,
        rejections,
        &subscriptions,
        Isolation::None,
    );
    if let Err(error) = &written {
        dedupe.rolled_back();
        tracing::warn!(%error, operations = batch.len(), "a batch failed; writing it again with each operation isolated");
        written = write_batch(
            conn,
            dedupe,
            batch,
            rejections,
            &subscriptions,
            Isolation::PerOperation,
        );
    }
    match written {
        Ok((outcomes, queued)) => {
            dedupe.committed();
            if queued > 0 {
                outbox.notify.notify_one();
            }
            for (op, done) in batch.drain(..).zip(outcomes) {
                // A caller may have given up (timeout); what it asked for is done anyway.
                if let Done::Failed(message) = done {
                    tracing::error!(error = %message, operation = op.name(), "a store operation failed; the rest of its batch committed");
                    op.fail(&message);
                    continue;
                }
                match (op, done) {
                    (WriteOp::Append(_, _, reply), Done::Appended(outcome)) => {
                        let _ = reply.send(Ok(outcome));
                    }
                    (WriteOp::Append(_, _, reply), Done::Expired) => {
                        tracing::warn!(
                            "an event waited too long for the store and was not stored; the platform retries it"
                        );
                        let _ = reply.send(Err(StoreError::Timeout(crate::store::MAX_COMMIT_LAG)));
                    }
                    (WriteOp::Claim(_, _, reply), Done::Claimed(claimed)) => {
                        let _ = reply.send(Ok(claimed));
                    }
                    (WriteOp::Record(_, reply), Done::Recorded(recorded)) => {
                        let _ = reply.send(Ok(recorded));
                    }
                    (WriteOp::Release(_, reply), _) => {
                        let _ = reply.send(Ok(()));
                    }
                    _ => {}
                }
            }
            true
        }
        Err(error) => {
            dedupe.rolled_back();
            let message = error.to_string();
            tracing::error!(error = %message, operations = batch.len(), "store commit failed");
            for op in batch.drain(..) {
                op.fail(&message);
            }
            false
        }
    }
}

impl WriteOp {
    /// Whether this operation may wait a little for others to share its commit
    /// ([`crate::store::RECORD_LINGER`]): only a record that may linger.
    pub fn may_wait(&self) -> bool {
        matches!(self, WriteOp::Record(result, _) if result.may_linger())
    }

    fn name(&self) -> &'static str {
        match self {
            WriteOp::Append(..) => "append",
            WriteOp::RejectionsWaiting => "rejection log",
            WriteOp::Claim(..) => "lease",
            WriteOp::Record(..) => "attempt record",
            WriteOp::Release(..) => "lease release",
            WriteOp::Job(_) => "job",
        }
    }

    /// Answers the caller with a commit failure.
    fn fail(self, message: &str) {
        let error = || StoreError::Commit(message.to_string());
        match self {
            WriteOp::Append(_, _, reply) => {
                let _ = reply.send(Err(error()));
            }
            WriteOp::Record(_, reply) => {
                let _ = reply.send(Err(error()));
            }
            WriteOp::Claim(_, _, reply) => {
                let _ = reply.send(Err(error()));
            }
            WriteOp::Release(_, reply) => {
                let _ = reply.send(Err(error()));
            }
            WriteOp::RejectionsWaiting | WriteOp::Job(_) => {}
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Isolation {
    /// One transaction; the first failing operation fails the whole batch.
    None,
    /// A savepoint around each operation: a failure rolls back only that one.
    PerOperation,
}

/// Writes the whole batch in one transaction, one [`Done`] per operation. Also
/// returns how many deliveries the batch queued.
fn write_batch(
    conn: &mut Connection,
    dedupe: &mut DedupeIndex,
    batch: &[WriteOp],
    rejections: &[NewRejection],
    subscriptions: &[Subscription],
    isolation: Isolation,
) -> rusqlite::Result<(Vec<Done>, usize)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    // The rejection log is best effort: a row it cannot write is dropped (counted),
    // never a reason to fail the events beside it.
    let mut rejected = !rejections.is_empty();
    for rejection in rejections {
        if isolation == Isolation::PerOperation {
            tx.execute_batch("SAVEPOINT rejection")?;
            if insert_rejection(&tx, rejection).is_err() {
                tx.execute_batch("ROLLBACK TO rejection")?;
            }
            tx.execute_batch("RELEASE rejection")?;
        } else {
            insert_rejection(&tx, rejection)?;
        }
    }
    let mut queued = 0;
    let mut appended = 0;
    for op in batch {
        if isolation == Isolation::PerOperation {
            tx.execute_batch("SAVEPOINT operation")?;
        }
        let done = write_one(&tx, dedupe, op, subscriptions);
        let done = match (done, isolation) {
            (Ok(done), Isolation::None) => done,
            (Err(error), Isolation::None) => return Err(error),
            (Ok(done), Isolation::PerOperation) => {
                tx.execute_batch("RELEASE operation")?;
                done
            }
            (Err(error), Isolation::PerOperation) => {
                tx.execute_batch("ROLLBACK TO operation; RELEASE operation")?;
                (Done::Failed(error.to_string()), None, 0)
            }
        };
        let (done, stored, deliveries) = done;
        if let Some((key, seq)) = stored {
            dedupe.stored(key, seq);
        }
        queued += deliveries;
        if let Done::Appended(outcome) = &done {
            appended += 1;
            rejected |= matches!(outcome, AppendOutcome::Conflict { .. });
        }
        outcomes.push(done);
    }
    if rejected {
        tx.execute(
            "DELETE FROM rejections WHERE id <= (SELECT max(id) FROM rejections) - ?1",
            [crate::store::REJECTION_LOG_CAPACITY],
        )?;
    }
    dedupe.settle_step(&tx, appended)?;
    tx.commit()?;
    Ok((outcomes, queued))
}

/// One operation of a batch: what it produced, the dedupe key it stored (noted in
/// memory only once the operation stands), and how many deliveries it queued.
type Written = (Done, Option<(DedupeKey, i64)>, usize);

fn write_one(
    tx: &rusqlite::Transaction<'_>,
    dedupe: &DedupeIndex,
    op: &WriteOp,
    subscriptions: &[Subscription],
) -> rusqlite::Result<Written> {
    Ok(match op {
        WriteOp::Append(_, write_by, _) if Instant::now() > *write_by => (Done::Expired, None, 0),
        WriteOp::Append(event, _, _) => {
            let (outcome, stored) = append_one(tx, dedupe, event)?;
            let mut queued = 0;
            if let AppendOutcome::Stored { seq } = outcome
                && event.status != EventStatus::Quarantined
                && !subscriptions.is_empty()
            {
                queued = delivery::enqueue(tx, subscriptions, event, seq)?;
            }
            (Done::Appended(outcome), stored, queued)
        }
        WriteOp::RejectionsWaiting => (Done::Nothing, None, 0),
        WriteOp::Claim(capacities, now_ms, _) => (
            Done::Claimed(delivery::claim(tx, capacities, *now_ms)?),
            None,
            0,
        ),
        WriteOp::Record(result, _) => (
            Done::Recorded(delivery::apply_attempt(tx, result)?),
            None,
            0,
        ),
        WriteOp::Release(leases, _) => {
            delivery::release(tx, leases)?;
            (Done::Nothing, None, 0)
        }
        WriteOp::Job(_) => unreachable!("jobs never enter a batch"),
    })
}

/// Stores one event (or counts a copy of a stored one); returns what happened and,
/// for a newly stored event, its dedupe key and seq for the caller to note.
fn append_one(
    tx: &rusqlite::Transaction<'_>,
    dedupe: &DedupeIndex,
    event: &NewEvent,
) -> rusqlite::Result<(AppendOutcome, Option<(DedupeKey, i64)>)> {
    let key = DedupeKey {
        source: event.source.clone(),
        key: event.dedupe_key.clone(),
    };
    if let Some(seq) = dedupe.find(tx, &key)?
        && let Some(stored_hash) = stored_body_hash(tx, seq)?
    {
        return Ok((record_copy(tx, event, seq, &stored_hash)?, None));
    }
    let headers = serde_json::to_string(&event.headers).expect("string pairs always serialize");
    let planned = match &event.mirror {
        Some(data) => mirror::plan(
            tx,
            &event.source,
            event.tenant.as_deref(),
            &event.entity,
            event.version_ms,
            data,
        )?,
        None => None,
    };
    let seq = dedupe.next_seq();
    tx.prepare_cached(
        "INSERT INTO events (seq, source, provider, dedupe_key, event_id, tenant, event_type,
             entity_kind, entity_id, entity_op, version_ms, received_at_ms, status,
             status_reason, body_sha256, body, headers, last_seen_at_ms, mirror_effect,
             trace_parent)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
             ?12, ?18, ?19)",
    )?
    .execute(params![
        seq,
        event.source,
        event.provider.as_str(),
        event.dedupe_key,
        event.event_id,
        event.tenant,
        event.event_type,
        event.entity.kind,
        event.entity.id,
        event.entity.op,
        event.version_ms,
        event.received_at_ms,
        event.status.as_str(),
        event.status_reason,
        &event.body_sha256[..],
        &event.body[..],
        headers,
        planned.as_ref().map(|p| p.effect.as_str()),
        event.trace_parent,
    ])?;
    if let Some(planned) = &planned {
        mirror::carry_out(tx, planned, event.version_ms, seq)?;
    }
    Ok((
        AppendOutcome::Stored { seq: EventSeq(seq) },
        Some((key, seq)),
    ))
}

/// The body hash of stored event `seq`; `None` once retention has deleted it.
fn stored_body_hash(tx: &rusqlite::Transaction<'_>, seq: i64) -> rusqlite::Result<Option<Vec<u8>>> {
    tx.prepare_cached("SELECT body_sha256 FROM events WHERE seq = ?1")?
        .query_row([seq], |row| row.get(0))
        .optional()
}

/// Another copy of stored event `seq` arrived: a retry if it is the same JSON value
/// (spacing and key order aside), a conflict (counted, body kept in the rejection
/// log) if not. Bodies are parsed only when their bytes differ, which retries rarely do.
fn record_copy(
    tx: &rusqlite::Transaction<'_>,
    event: &NewEvent,
    seq: i64,
    stored_hash: &[u8],
) -> rusqlite::Result<AppendOutcome> {
    let same = stored_hash == event.body_sha256 || {
        let stored: Vec<u8> = tx
            .prepare_cached("SELECT body FROM events WHERE seq = ?1")?
            .query_row([seq], |row| row.get(0))?;
        canonical::same_value(&stored, &event.body)
    };
    if same {
        tx.prepare_cached(
            "UPDATE events SET times_seen = times_seen + 1,
                 last_seen_at_ms = max(last_seen_at_ms, ?2) WHERE seq = ?1",
        )?
        .execute(params![seq, event.received_at_ms])?;
        return Ok(AppendOutcome::Duplicate { seq: EventSeq(seq) });
    }
    tx.prepare_cached(
        "UPDATE events SET conflicts = conflicts + 1,
             last_seen_at_ms = max(last_seen_at_ms, ?2) WHERE seq = ?1",
    )?
    .execute(params![seq, event.received_at_ms])?;
    insert_rejection(tx, &NewRejection::conflict(event, seq))?;
    Ok(AppendOutcome::Conflict { seq: EventSeq(seq) })
}

fn insert_rejection(tx: &rusqlite::Transaction<'_>, r: &NewRejection) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO rejections (at_ms, source, reason, status, message, body, body_len,
             remote_addr, body_sha256)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
    )?
    .execute(params![
        r.at_ms,
        r.source,
        r.reason,
        r.status,
        r.message,
        &r.body[..r.body.len().min(REJECTION_BODY_PREFIX)],
        r.body_len as i64,
        r.remote_addr,
        r.body_sha256.as_ref().map(|h| &h[..]),
    ])?;
    Ok(())
}

/// What callers ask of the writer for deliveries: leases, attempt records and lease
/// releases ride the same group commit as ingest.
impl super::SqliteStore {
    /// Leases, for each (subscription, capacity, lease end), up to `capacity` of its
    /// due deliveries until the lease end, in the writer's next group commit.
    pub async fn claim_due(
        &self,
        requests: Vec<ClaimRequest>,
        now_ms: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.request(|reply| WriteOp::Claim(requests, now_ms, reply))
            .await
    }

    /// Records an attempt and moves the delivery (and its subscription) on, in the
    /// writer's next group commit, if the lease it was made under still holds.
    pub async fn record_attempt(
        &self,
        result: AttemptResult,
    ) -> Result<AttemptRecorded, StoreError> {
        self.request(|reply| WriteOp::Record(Box::new(result), reply))
            .await
    }

    /// Gives leases back without an attempt, in the writer's next group commit.
    pub async fn release(&self, leases: Vec<Lease>) -> Result<(), StoreError> {
        self.request(|reply| WriteOp::Release(leases, reply)).await
    }
}
