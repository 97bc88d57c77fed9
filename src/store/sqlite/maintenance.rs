//! Retention: pruning old events in chunks, each a short job on the writer's
//! connection between batches.

use rusqlite::{Connection, TransactionBehavior};

use super::conditions::Conditions;
use super::{SqliteStore, dedupe, timeline};
use crate::store::StoreError;

impl SqliteStore {
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
