//! Time windows over the event log without an index on receive time: sequence
//! numbers grow with receive time, so a window of time is first narrowed to a window
//! of sequence numbers by binary search (a few point reads on the primary key), then
//! the exact time condition is applied inside it. This saves one index write per
//! ingested event.
//!
//! Receive time is taken when a request's body has arrived and the sequence number
//! when its batch commits, so they can disagree by the time the event waits for its
//! commit. The writer bounds that wait: an event still queued [`crate::store::MAX_COMMIT_LAG`] after
//! it was handed to the store, measured on the monotonic clock (which cannot run
//! backwards), is not stored (its caller has long been answered 503 and the platform
//! retries). The search widens the window by [`SLACK_MS`], which covers that bound
//! plus the commit itself.

use rusqlite::{Connection, OptionalExtension};

use super::conditions::Conditions;

/// How far receive time may run ahead of sequence order.
pub const SLACK_MS: i64 = 60_000;

/// The first sequence number whose receive time is at least `at_ms` (`None`: none is).
fn first_seq_at_or_after(conn: &Connection, at_ms: i64) -> rusqlite::Result<Option<i64>> {
    // Two queries: SQLite answers a lone min() or max() from the key, not both at once.
    let first: Option<i64> = conn.query_row("SELECT min(seq) FROM events", [], |r| r.get(0))?;
    let last: Option<i64> = conn.query_row("SELECT max(seq) FROM events", [], |r| r.get(0))?;
    let (Some(mut lo), Some(mut hi)) = (first, last) else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(
        "SELECT seq, received_at_ms FROM events WHERE seq >= ?1 ORDER BY seq LIMIT 1",
    )?;
    let mut answer = None;
    // Invariant: every seq below `lo` is too early; `answer` is the best found so far.
    while lo <= hi {
        let mid = lo + (hi - lo) / 2;
        let Some((seq, received)) = stmt
            .query_row([mid], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?)))
            .optional()?
        else {
            break;
        };
        if received >= at_ms {
            answer = Some(seq);
            hi = mid - 1;
        } else {
            lo = seq + 1;
        }
    }
    Ok(answer)
}

/// Adds `received_at_ms` conditions for `[since, until)`, each with a sequence range
/// that lets SQLite walk the primary key instead of scanning every row.
pub fn add_window(
    conn: &Connection,
    c: &mut Conditions,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
) -> rusqlite::Result<()> {
    if let Some(since) = since_ms {
        match first_seq_at_or_after(conn, since.saturating_sub(SLACK_MS))? {
            Some(seq) => c.add("seq >= ?", seq),
            None => c.push_raw("0"),
        }
        c.add("received_at_ms >= ?", since);
    }
    if let Some(until) = until_ms {
        if let Some(seq) = first_seq_at_or_after(conn, until.saturating_add(SLACK_MS))? {
            c.add("seq < ?", seq);
        }
        c.add("received_at_ms < ?", until);
    }
    Ok(())
}
