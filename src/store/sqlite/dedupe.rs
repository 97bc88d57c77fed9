//! Which events are already stored, by (source, dedupe key): the writer's answer to
//! "is this a retry?", kept in two levels so that storing an event does not dirty a
//! random page of a large B-tree.
//!
//! Dedupe keys are random (DreamClass request UUIDs, SHA-256 of canonical Loopwise bodies), so
//! a unique index on them puts every new event on a different leaf page: measured,
//! 20.8 of the 44 pages a group commit of ~13 events wrote. Here the keys of recent
//! events (those after the `settled_through` watermark) are held in memory, rebuilt
//! at start from the event log itself, and are moved into the `dedupe_keys` table in
//! key order, a slice per group commit. Sorted inserts share leaf pages, so a key
//! costs a fraction of a page instead of one or more.
//!
//! Invariant: every stored event's key is either in `recent` or in `dedupe_keys`
//! (or both, while a settling round is under way). Both levels are consulted.

use std::collections::HashMap;
use std::sync::Arc;

use rusqlite::{Connection, OptionalExtension, Transaction, params};

/// Recent keys held before a settling round moves them all into `dedupe_keys`, by
/// default. More keys per round share more leaf pages; each costs ~170 bytes of
/// memory (measured as peak RSS with a round held and one settling).
pub const SETTLE_AFTER: usize = 50_000;

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DedupeKey {
    pub source: String,
    pub key: String,
}

pub struct DedupeIndex {
    /// Keys of events after `settled_through`, including those of the open batch.
    recent: HashMap<Arc<DedupeKey>, i64>,
    /// Keys the open transaction added; forgotten again if it rolls back.
    uncommitted: Vec<Arc<DedupeKey>>,
    settled_through: i64,
    next_seq: i64,
    settling: Option<Settling>,
    settle_after: usize,
}

/// A round moving a snapshot of `recent` into `dedupe_keys`, in key order.
struct Settling {
    through: i64,
    keys: Vec<(Arc<DedupeKey>, i64)>,
    /// Keys settled by committed transactions.
    done: usize,
    /// Keys settled by the open transaction too.
    written: usize,
}

impl DedupeIndex {
    /// Reads the watermark and loads the keys of every event after it.
    pub fn load(conn: &Connection, settle_after: usize) -> rusqlite::Result<DedupeIndex> {
        let (settled_through, pruned_through): (i64, i64) = conn.query_row(
            "SELECT dedupe_settled_through, pruned_through FROM event_log_state",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let last_seq: i64 =
            conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))?;
        let mut recent = HashMap::new();
        let mut unsettled =
            conn.prepare("SELECT source, dedupe_key, seq FROM events WHERE seq > ?1")?;
        let mut rows = unsettled.query([settled_through])?;
        while let Some(row) = rows.next()? {
            let key = DedupeKey {
                source: row.get(0)?,
                key: row.get(1)?,
            };
            recent.insert(Arc::new(key), row.get::<_, i64>(2)?);
        }
        Ok(DedupeIndex {
            recent,
            uncommitted: Vec::new(),
            settled_through,
            // Sequence numbers never go back, even after retention pruned the newest
            // events: cursors, deliveries and the watermark rely on it.
            next_seq: last_seq.max(settled_through).max(pruned_through) + 1,
            settling: None,
            settle_after: settle_after.max(1),
        })
    }

    /// The sequence number of the stored event with this key, if any. An entry whose
    /// event retention has deleted counts as absent.
    pub fn find(&self, tx: &Transaction<'_>, key: &DedupeKey) -> rusqlite::Result<Option<i64>> {
        match self.recent.get(key) {
            Some(seq) => Ok(Some(*seq)),
            None => settled_seq(tx, &key.source, &key.key),
        }
    }

    /// The sequence number the next stored event gets.
    pub fn next_seq(&self) -> i64 {
        self.next_seq
    }

    /// Notes that the open transaction stored an event under `key` as `seq`.
    pub fn stored(&mut self, key: DedupeKey, seq: i64) {
        let key = Arc::new(key);
        self.recent.insert(key.clone(), seq);
        self.uncommitted.push(key);
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// Moves the next slice of the settling round into `dedupe_keys`, inside the
    /// open transaction; `appended` is how many appends that transaction ran.
    pub fn settle_step(&mut self, tx: &Transaction<'_>, appended: usize) -> rusqlite::Result<()> {
        let Some(round) = &mut self.settling else {
            return Ok(());
        };
        // Twice as many keys as the commit adds: a round finishes before `recent`
        // has grown by half, and each commit's share of the work stays small.
        let end = round.keys.len().min(round.done + 2 * appended);
        // Keys are sorted, so neighbouring inserts land on the same leaf pages.
        let mut insert = tx.prepare_cached(
            "INSERT OR REPLACE INTO dedupe_keys (source, dedupe_key, seq) VALUES (?1, ?2, ?3)",
        )?;
        for (key, seq) in &round.keys[round.done..end] {
            insert.execute(params![key.source, key.key, seq])?;
        }
        if end == round.keys.len() {
            tx.prepare_cached("UPDATE event_log_state SET dedupe_settled_through = ?1")?
                .execute([round.through])?;
        }
        round.written = end;
        Ok(())
    }

    /// The open transaction committed: its keys stay, its settling slice counts, and
    /// a finished round lets its keys go from memory.
    pub fn committed(&mut self) {
        self.uncommitted.clear();
        if let Some(round) = &mut self.settling {
            round.done = round.written;
            if round.done == round.keys.len() {
                let round = self.settling.take().expect("the round is here");
                for (key, seq) in round.keys {
                    // A key stored again since the snapshot (after retention deleted
                    // its first event) stays with its newer sequence number.
                    if self.recent.get(&key) == Some(&seq) {
                        self.recent.remove(&key);
                    }
                }
                self.settled_through = round.through;
            }
        }
        if self.settling.is_none() && self.recent.len() >= self.settle_after {
            self.start_round();
        }
    }

    /// The open transaction rolled back: forget what it added.
    pub fn rolled_back(&mut self) {
        for key in self.uncommitted.drain(..) {
            self.recent.remove(&key);
        }
        if let Some(round) = &mut self.settling {
            round.written = round.done;
        }
    }

    fn start_round(&mut self) {
        let mut keys: Vec<_> = self
            .recent
            .iter()
            .map(|(key, seq)| (key.clone(), *seq))
            .collect();
        keys.sort_unstable();
        let through = keys
            .iter()
            .map(|(_, seq)| *seq)
            .max()
            .unwrap_or(self.settled_through);
        self.settling = Some(Settling {
            through,
            keys,
            done: 0,
            written: 0,
        });
    }
}

/// The seq of the event stored under a key, for readers (which cannot see the
/// writer's memory): `dedupe_keys` first, then the unsettled tail of the event log.
pub fn find_seq(conn: &Connection, source: &str, key: &str) -> rusqlite::Result<Option<i64>> {
    let settled = settled_seq(conn, source, key)?;
    if settled.is_some() {
        return Ok(settled);
    }
    conn.prepare_cached(
        "SELECT seq FROM events
         WHERE seq > (SELECT dedupe_settled_through FROM event_log_state)
           AND source = ?1 AND dedupe_key = ?2
         ORDER BY seq DESC LIMIT 1",
    )?
    .query_row(params![source, key], |r| r.get(0))
    .optional()
}

/// The seq a key was settled with into `dedupe_keys`, if it was.
fn settled_seq(conn: &Connection, source: &str, key: &str) -> rusqlite::Result<Option<i64>> {
    conn.prepare_cached("SELECT seq FROM dedupe_keys WHERE source = ?1 AND dedupe_key = ?2")?
        .query_row(params![source, key], |r| r.get(0))
        .optional()
}

/// Deletes the dedupe keys of the events `condition` selects (retention), before
/// the events themselves go, and keeps new sequence numbers above theirs.
pub fn forget(
    conn: &Connection,
    condition: &str,
    args: &[rusqlite::types::Value],
) -> rusqlite::Result<usize> {
    conn.execute(
        &format!(
            "UPDATE event_log_state SET pruned_through =
             max(pruned_through, coalesce((SELECT max(seq) FROM events {condition}), 0))"
        ),
        rusqlite::params_from_iter(args),
    )?;
    conn.execute(
        &format!(
            "DELETE FROM dedupe_keys WHERE (source, dedupe_key, seq) IN
             (SELECT source, dedupe_key, seq FROM events {condition})"
        ),
        rusqlite::params_from_iter(args),
    )
}
