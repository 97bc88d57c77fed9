//! Whole-store jobs that run on the writer's connection between batches: rebuilding
//! the mirror from the event log, and pruning old events (retention).

use rusqlite::{Connection, TransactionBehavior, params};

use super::read::Conditions;
use super::{SqliteStore, dedupe, mirror, timeline, writer};
use crate::provider::{Envelope, ProviderKind};
use crate::store::StoreError;

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub events: u64,
    pub applied: u64,
    /// Stored events whose kind, op, version or status this version describes
    /// differently (corrected on the event).
    pub redescribed: u64,
}

/// What a rebuild reads of each event.
struct StoredRow {
    seq: i64,
    source: String,
    provider: String,
    tenant: Option<String>,
    received_at_ms: i64,
    body: Vec<u8>,
    /// What ingestion said about the event when it was stored.
    described: StoredDescription,
}

/// The columns of an event that `describe` decides.
#[derive(PartialEq)]
struct StoredDescription {
    entity_kind: String,
    entity_op: String,
    version_ms: i64,
    status: String,
    status_reason: Option<String>,
}

/// How many events a rebuild reads at a time.
const REBUILD_CHUNK: i64 = 2_000;

impl SqliteStore {
    /// Recomputes every mirror table from the event log, in receive order, in one
    /// transaction: readers see the old mirror until the new one is complete.
    pub async fn rebuild_mirror(&self) -> Result<RebuildReport, StoreError> {
        self.run_job(rebuild).await
    }

    /// Deletes events received before `before_ms`, with their dedupe keys, their
    /// deliveries and those deliveries' attempts (the mirror stays). Returns how many
    /// events were deleted.
    ///
    /// Works in chunks of [`PRUNE_CHUNK`] events, each its own short job on the
    /// writer, so that appends interleave with a large backlog's pruning instead of
    /// waiting behind it.
    pub async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut total = 0;
        loop {
            let pruned = self
                .run_job(move |conn| prune_chunk(conn, before_ms))
                .await?;
            total += pruned;
            if pruned < PRUNE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }
}

/// How many events one pruning job deletes at most.
const PRUNE_CHUNK: i64 = 5_000;

/// Deletes the oldest [`PRUNE_CHUNK`] events received before `before_ms`, with what
/// hangs on them.
fn prune_chunk(conn: &mut Connection, before_ms: i64) -> Result<u64, StoreError> {
    let mut c = Conditions::default();
    timeline::add_window(conn, &mut c, None, Some(before_ms))?;
    let last: Option<i64> = conn.query_row(
        &format!(
            "SELECT max(seq) FROM (SELECT seq FROM events {} ORDER BY seq LIMIT {PRUNE_CHUNK})",
            c.sql()
        ),
        rusqlite::params_from_iter(&c.args),
        |r| r.get(0),
    )?;
    let Some(last) = last else {
        return Ok(0);
    };
    c.add("seq <= ?", last);
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    dedupe::forget(&tx, &c.sql(), &c.args)?;
    // Per subscription, so that each probe uses the (subscription, event)
    // key; attempts go with their deliveries (ON DELETE CASCADE).
    let subscriptions: Vec<i64> = tx
        .prepare("SELECT id FROM subscriptions")?
        .query_map([], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    let mut delete_deliveries = tx.prepare(&format!(
        "DELETE FROM deliveries WHERE subscription_id = ? AND event_seq IN
             (SELECT seq FROM events {})",
        c.sql()
    ))?;
    for id in subscriptions {
        let args =
            std::iter::once(rusqlite::types::Value::Integer(id)).chain(c.args.iter().cloned());
        delete_deliveries.execute(rusqlite::params_from_iter(args))?;
    }
    drop(delete_deliveries);
    let deleted = tx.execute(
        &format!("DELETE FROM events {}", c.sql()),
        rusqlite::params_from_iter(&c.args),
    )?;
    tx.commit()?;
    Ok(deleted as u64)
}

fn rebuild(conn: &mut Connection) -> Result<RebuildReport, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for table in mirror::all_tables() {
        tx.execute(&format!("DELETE FROM {table}"), [])?;
    }
    tx.execute(
        "UPDATE events SET mirror_effect = NULL WHERE mirror_effect IS NOT NULL",
        [],
    )?;
    let mut report = RebuildReport::default();
    let mut after = 0i64;
    loop {
        let chunk: Vec<StoredRow> = tx
            .prepare_cached(
                "SELECT seq, source, provider, tenant, received_at_ms, body, entity_kind,
                     entity_op, version_ms, status, status_reason
                 FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?
            .query_map(params![after, REBUILD_CHUNK], |r| {
                Ok(StoredRow {
                    seq: r.get(0)?,
                    source: r.get(1)?,
                    provider: r.get(2)?,
                    tenant: r.get(3)?,
                    received_at_ms: r.get(4)?,
                    body: r.get(5)?,
                    described: StoredDescription {
                        entity_kind: r.get(6)?,
                        entity_op: r.get(7)?,
                        version_ms: r.get(8)?,
                        status: r.get(9)?,
                        status_reason: r.get(10)?,
                    },
                })
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = chunk.last() else { break };
        after = last.seq;
        for row in chunk {
            report.events += 1;
            let seq = row.seq;
            let provider = ProviderKind::parse(&row.provider).ok_or_else(|| {
                StoreError::Corrupt(format!("event {seq}: unknown provider {:?}", row.provider))
            })?;
            // Stored events were authentic and parsed once; the same code describes them again.
            let Ok(envelope) = Envelope::parse(provider, &row.body) else {
                continue;
            };
            let described = envelope.describe();
            // The event's kind, op, version and status as this version of classhook
            // sees them (an upgrade may have changed them): histories and the mirror
            // then agree with live ingestion.
            let now = StoredDescription {
                entity_kind: described.entity.kind.clone(),
                entity_op: described.entity.op.clone(),
                version_ms: described.version_ms.unwrap_or(row.received_at_ms),
                status: described.status.as_str().to_string(),
                status_reason: described.status_reason.clone(),
            };
            if now != row.described {
                tx.prepare_cached(
                    "UPDATE events SET entity_kind = ?2, entity_op = ?3, version_ms = ?4,
                         status = ?5, status_reason = ?6
                     WHERE seq = ?1",
                )?
                .execute(params![
                    seq,
                    now.entity_kind,
                    now.entity_op,
                    now.version_ms,
                    now.status,
                    now.status_reason
                ])?;
                report.redescribed += 1;
            }
            let Some(data) = &described.mirror else {
                continue;
            };
            let effect = mirror::apply(
                &tx,
                &row.source,
                row.tenant.as_deref(),
                &described.entity,
                now.version_ms,
                seq,
                data,
            )?;
            if let Some(effect) = effect {
                writer::record_effect(&tx, seq, effect)?;
                report.applied += u64::from(effect.changes_state());
            }
        }
    }
    tx.commit()?;
    Ok(report)
}
