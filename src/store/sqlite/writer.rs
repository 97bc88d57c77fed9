//! The single writer: one thread owns the only write connection, drains the queue,
//! commits everything it drained in one transaction (group commit) and only then
//! answers each caller. Durability costs one fsync per batch, not per request.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};
use tokio::sync::{Notify, mpsc, oneshot};

use super::dedupe::{DedupeIndex, DedupeKey};
use super::delivery::AttemptResult;
use super::{delivery, mirror};
use crate::canonical;
use crate::deliver::subscription::Subscription;
use crate::event::{EventStatus, NewEvent};
use crate::mirror::Effect;
use crate::store::{AppendOutcome, Claimed, NewRejection, StoreError};

/// How many rejections the log keeps; older ones are pruned.
pub const REJECTION_LOG_CAPACITY: i64 = 10_000;

/// What the writer receives.
pub enum WriteOp {
    Append(
        Box<NewEvent>,
        oneshot::Sender<Result<AppendOutcome, StoreError>>,
    ),
    Reject(Box<NewRejection>),
    /// Leases due deliveries (subscription, capacity, lease end) at a time, in the
    /// same group commit as ingest and attempt records.
    Claim(
        Vec<(i64, usize, i64)>,
        i64,
        oneshot::Sender<Result<Vec<Claimed>, StoreError>>,
    ),
    /// A finished delivery attempt: recorded in the same group commit as ingest.
    Record(Box<AttemptResult>, oneshot::Sender<Result<(), StoreError>>),
    /// Exclusive work on the write connection (mirror rebuild, retention, readiness
    /// probe), run between batches in its own transaction.
    Job(Box<dyn FnOnce(&mut Connection) + Send>),
}

/// Told about every committed (or failed) batch, e.g. by the metrics.
pub trait CommitObserver: Send + Sync {
    fn batch_committed(&self, operations: usize, duration: Duration, ok: bool);
}

/// The subscriptions stored events are matched against, and whom to wake when a
/// commit queued deliveries.
pub struct Outbox {
    pub matchers: Arc<RwLock<Vec<Subscription>>>,
    pub notify: Arc<Notify>,
}

/// Runs until every sender is dropped.
pub fn run(
    mut conn: Connection,
    mut dedupe: DedupeIndex,
    mut queue: mpsc::Receiver<WriteOp>,
    max_batch: usize,
    observer: Option<Arc<dyn CommitObserver>>,
    outbox: Outbox,
) {
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = queue.blocking_recv() {
        let mut job = None;
        let mut next = Some(first);
        while let Some(op) = next.take() {
            if let WriteOp::Job(work) = op {
                job = Some(work);
                break;
            }
            batch.push(op);
            if batch.len() < max_batch {
                next = queue.try_recv().ok();
            }
        }
        if !batch.is_empty() {
            let started = Instant::now();
            let operations = batch.len();
            let ok = commit_batch(&mut conn, &mut dedupe, &mut batch, &outbox);
            if let Some(observer) = &observer {
                observer.batch_committed(operations, started.elapsed(), ok);
            }
        }
        if let Some(work) = job {
            work(&mut conn);
        }
    }
}

/// What one operation of a batch produced, for its caller.
enum Done {
    Nothing,
    Appended(AppendOutcome),
    Claimed(Vec<Claimed>),
}

/// Commits the batch and answers its callers; returns whether it committed.
fn commit_batch(
    conn: &mut Connection,
    dedupe: &mut DedupeIndex,
    batch: &mut Vec<WriteOp>,
    outbox: &Outbox,
) -> bool {
    // Subscription changes run as jobs on this same thread, so this read lock is
    // never contended.
    let subscriptions = outbox
        .matchers
        .read()
        .expect("matcher lock is never poisoned");
    match write_batch(conn, dedupe, batch, &subscriptions) {
        Ok((outcomes, queued)) => {
            dedupe.committed();
            if queued > 0 {
                outbox.notify.notify_one();
            }
            for (op, done) in batch.drain(..).zip(outcomes) {
                // A caller may have given up (timeout); what it asked for is done anyway.
                match (op, done) {
                    (WriteOp::Append(_, reply), Done::Appended(outcome)) => {
                        let _ = reply.send(Ok(outcome));
                    }
                    (WriteOp::Claim(_, _, reply), Done::Claimed(claimed)) => {
                        let _ = reply.send(Ok(claimed));
                    }
                    (WriteOp::Record(_, reply), _) => {
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
            tracing::error!(error = %message, events = batch.len(), "store commit failed");
            for op in batch.drain(..) {
                match op {
                    WriteOp::Append(_, reply) => {
                        let _ = reply.send(Err(StoreError::Commit(message.clone())));
                    }
                    WriteOp::Record(_, reply) => {
                        let _ = reply.send(Err(StoreError::Commit(message.clone())));
                    }
                    WriteOp::Claim(_, _, reply) => {
                        let _ = reply.send(Err(StoreError::Commit(message.clone())));
                    }
                    _ => {}
                }
            }
            false
        }
    }
}

/// Writes the whole batch in one transaction; `None` for ops that need no answer.
/// Also returns how many deliveries the batch queued.
fn write_batch(
    conn: &mut Connection,
    dedupe: &mut DedupeIndex,
    batch: &[WriteOp],
    subscriptions: &[Subscription],
) -> rusqlite::Result<(Vec<Done>, usize)> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut outcomes = Vec::with_capacity(batch.len());
    let mut rejected = false;
    let mut queued = 0;
    let mut appended = 0;
    for op in batch {
        match op {
            WriteOp::Append(event, _) => {
                let outcome = append_one(&tx, dedupe, event)?;
                appended += 1;
                if let AppendOutcome::Stored { seq } = outcome
                    && event.status != EventStatus::Quarantined
                    && !subscriptions.is_empty()
                {
                    queued += delivery::enqueue(&tx, subscriptions, event, seq)?;
                }
                rejected |= matches!(outcome, AppendOutcome::Conflict { .. });
                outcomes.push(Done::Appended(outcome));
            }
            WriteOp::Reject(rejection) => {
                insert_rejection(&tx, rejection)?;
                rejected = true;
                outcomes.push(Done::Nothing);
            }
            WriteOp::Claim(capacities, now_ms, _) => {
                outcomes.push(Done::Claimed(delivery::claim(&tx, capacities, *now_ms)?));
            }
            WriteOp::Record(result, _) => {
                delivery::apply_attempt(&tx, result)?;
                outcomes.push(Done::Nothing);
            }
            WriteOp::Job(_) => unreachable!("jobs never enter a batch"),
        }
    }
    if rejected {
        tx.execute(
            "DELETE FROM rejections WHERE id <= (SELECT max(id) FROM rejections) - ?1",
            [REJECTION_LOG_CAPACITY],
        )?;
    }
    dedupe.settle_step(&tx, appended)?;
    tx.commit()?;
    Ok((outcomes, queued))
}

fn append_one(
    tx: &rusqlite::Transaction<'_>,
    dedupe: &mut DedupeIndex,
    event: &NewEvent,
) -> rusqlite::Result<AppendOutcome> {
    let key = DedupeKey {
        source: event.source.clone(),
        key: event.dedupe_key.clone(),
    };
    if let Some(seq) = dedupe.find(tx, &key)?
        && let Some(stored_hash) = stored_body_hash(tx, seq)?
    {
        return record_copy(tx, event, seq, &stored_hash);
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
             status_reason, body_sha256, body, headers, last_seen_at_ms, mirror_effect)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
             ?12, ?18)",
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
    ])?;
    dedupe.stored(key, seq);
    if let Some(planned) = &planned {
        mirror::carry_out(tx, planned, event.version_ms, seq)?;
    }
    Ok(AppendOutcome::Stored { seq })
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
            "UPDATE events SET times_seen = times_seen + 1, last_seen_at_ms = ?2 WHERE seq = ?1",
        )?
        .execute(params![seq, event.received_at_ms])?;
        return Ok(AppendOutcome::Duplicate { seq });
    }
    tx.prepare_cached(
        "UPDATE events SET conflicts = conflicts + 1, last_seen_at_ms = ?2 WHERE seq = ?1",
    )?
    .execute(params![seq, event.received_at_ms])?;
    insert_rejection(
        tx,
        &NewRejection {
            at_ms: event.received_at_ms,
            source: Some(event.source.clone()),
            reason: "id_conflict".into(),
            status: 200,
            message: format!(
                "event {} was already stored (seq {seq}) with different content; the first body is kept",
                event.event_id.as_deref().unwrap_or(&event.dedupe_key)
            ),
            body: event.body.to_vec(),
            body_len: event.body.len(),
            remote_addr: event.remote_addr.clone(),
        },
    )?;
    Ok(AppendOutcome::Conflict { seq })
}

/// Notes on the event what it did to the mirror (shown in entity histories).
pub fn record_effect(
    conn: &rusqlite::Connection,
    seq: i64,
    effect: Effect,
) -> rusqlite::Result<()> {
    conn.prepare_cached("UPDATE events SET mirror_effect = ?2 WHERE seq = ?1")?
        .execute(params![seq, effect.as_str()])?;
    Ok(())
}

fn insert_rejection(tx: &rusqlite::Transaction<'_>, r: &NewRejection) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO rejections (at_ms, source, reason, status, message, body, body_len, remote_addr)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        r.at_ms,
        r.source,
        r.reason,
        r.status,
        r.message,
        r.body,
        r.body_len as i64,
        r.remote_addr,
    ])?;
    Ok(())
}
