//! Whole-store jobs that run on the writer's connection between batches: rebuilding
//! the mirror from the event log, and pruning old events (retention).

use rusqlite::{Connection, TransactionBehavior, params};

use super::read::Conditions;
use super::{SqliteStore, dedupe, mirror, timeline, writer};
use crate::crypto;
use crate::provider::{Envelope, ProviderKind};
use crate::store::StoreError;

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub events: u64,
    pub applied: u64,
}

/// What a rebuild reads of each event: seq, source, provider, tenant, version, body.
type StoredRow = (i64, String, String, Option<String>, i64, Vec<u8>);

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
    pub async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        self.run_job(move |conn| {
            let mut c = Conditions::default();
            timeline::add_window(conn, &mut c, None, Some(before_ms))?;
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
                let args = std::iter::once(rusqlite::types::Value::Integer(id))
                    .chain(c.args.iter().cloned());
                delete_deliveries.execute(rusqlite::params_from_iter(args))?;
            }
            drop(delete_deliveries);
            let deleted = tx.execute(
                &format!("DELETE FROM events {}", c.sql()),
                rusqlite::params_from_iter(&c.args),
            )?;
            tx.commit()?;
            Ok(deleted as u64)
        })
        .await
    }
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
                "SELECT seq, source, provider, tenant, version_ms, body FROM events
                 WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?
            .query_map(params![after, REBUILD_CHUNK], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })?
            .collect::<Result<_, _>>()?;
        let Some(last) = chunk.last() else { break };
        after = last.0;
        for (seq, source, provider, tenant, version_ms, body) in chunk {
            report.events += 1;
            let provider = ProviderKind::parse(&provider).ok_or_else(|| {
                StoreError::Corrupt(format!("event {seq}: unknown provider {provider:?}"))
            })?;
            // Stored events were authentic and parsed once; the same code describes them again.
            let Ok(envelope) = Envelope::parse(provider, &body) else {
                continue;
            };
            let described = envelope.describe(&crypto::sha256(&body));
            let Some(data) = &described.mirror else {
                continue;
            };
            let effect = mirror::apply(
                &tx,
                &source,
                tenant.as_deref(),
                &described.entity,
                version_ms,
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
