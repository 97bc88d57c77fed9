//! Read queries. They run on read-only connections and never wait for the writer.

use rusqlite::types::Value as SqlValue;
use rusqlite::{OptionalExtension, Row, params, params_from_iter};

use super::conditions::Conditions;
use super::{SqliteStore, dedupe, timeline};
use crate::event::EventStatus;
use crate::provider::ProviderKind;
use crate::store::{
    EventFilter, EventSeq, EventSummary, Rejection, RejectionFilter, StatsRow, StoreError,
    StoredEvent,
};

const SUMMARY_COLUMNS: &str = "seq, source, provider, tenant, event_type, event_id, dedupe_key,
    entity_kind, entity_id, entity_op, version_ms, received_at_ms, status, status_reason,
    times_seen, last_seen_at_ms, conflicts, mirror_effect";

impl SqliteStore {
    /// Events matching `filter`, newest first.
    pub fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventSummary>, StoreError> {
        let mut c = Conditions::default();
        c.add_opt("source = ?", filter.source.as_ref());
        c.add_opt("tenant = ?", filter.tenant.as_ref());
        match filter
            .event_type
            .as_deref()
            .map(|t| (t, t.strip_suffix('*')))
        {
            None | Some(("*", _)) => {}
            // `CLASS_*`: a prefix, as subscriptions match (GLOB keeps the index usable).
            Some((_, Some(prefix))) => {
                c.add("event_type GLOB ?", format!("{}*", glob_literal(prefix)))
            }
            Some((exact, None)) => c.add("event_type = ?", exact.to_string()),
        }
        if let Some(status) = filter.status {
            c.add("status = ?", status.as_str().to_string());
            if status != EventStatus::Ok {
                // The exact term of the partial index, so the planner can use it.
                c.push_raw("status <> 'ok'");
            }
        }
        c.add_opt("seq < ?", filter.before_seq.as_ref());
        let (since, until, limit) = (filter.since_ms, filter.until_ms, filter.limit.max(1));
        self.with_reader(|conn| {
            timeline::add_window(conn, &mut c, since, until)?;
            let sql = format!(
                "SELECT {SUMMARY_COLUMNS} FROM events {} ORDER BY seq DESC LIMIT {limit}",
                c.sql()
            );
            query_summaries(conn, &sql, c.args)
        })
    }

    /// Every event about one entity, in version order (then receive order).
    pub fn entity_history(
        &self,
        kind: &str,
        id: &str,
        source: &str,
        tenant: Option<&str>,
        newest: usize,
    ) -> Result<Vec<EventSummary>, StoreError> {
        let mut c = Conditions::default();
        c.add("entity_kind = ?", kind.to_string());
        c.add("entity_id = ?", id.to_string());
        c.add("source = ?", source.to_string());
        match tenant {
            Some(tenant) => c.add("tenant = ?", tenant.to_string()),
            None => c.push_raw("tenant IS NULL"),
        }
        // The newest `newest` events, returned in version order.
        let sql = format!(
            "SELECT * FROM (SELECT {SUMMARY_COLUMNS} FROM events {} ORDER BY version_ms DESC, seq DESC
                 LIMIT {newest}) ORDER BY version_ms, seq",
            c.sql()
        );
        self.query_summaries(&sql, c.args)
    }

    fn query_summaries(
        &self,
        sql: &str,
        args: Vec<SqlValue>,
    ) -> Result<Vec<EventSummary>, StoreError> {
        self.with_reader(|conn| query_summaries(conn, sql, args))
    }

    /// One event with its raw body and headers.
    pub fn get_event(&self, seq: EventSeq) -> Result<Option<StoredEvent>, StoreError> {
        self.query_event("seq = ?1", params![seq])
    }

    /// The event stored under a source's dedupe key (`id:<uuid>` or `sha256:<hex>`).
    pub fn find_event(
        &self,
        source: &str,
        dedupe_key: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let seq = self.with_reader(|conn| Ok(dedupe::find_seq(conn, source, dedupe_key)?))?;
        match seq {
            Some(seq) => self.get_event(EventSeq(seq)),
            None => Ok(None),
        }
    }

    /// The events stored under a dedupe key (`id:<uuid>` or `sha256:<hex>`) in any
    /// source, or only in `source`: (source, seq) pairs, by source name. The same key
    /// can be stored once per source.
    pub fn find_events_by_key(
        &self,
        dedupe_key: &str,
        source: Option<&str>,
    ) -> Result<Vec<(String, EventSeq)>, StoreError> {
        self.with_reader(|conn| {
            let sources = match source {
                Some(source) => vec![source.to_string()],
                None => stored_sources(conn)?,
            };
            let mut found = Vec::new();
            for source in sources {
                if let Some(seq) = dedupe::find_seq(conn, &source, dedupe_key)? {
                    found.push((source, EventSeq(seq)));
                }
            }
            Ok(found)
        })
    }

    fn query_event(
        &self,
        condition: &str,
        args: impl rusqlite::Params,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS}, body, headers, trace_parent FROM events WHERE {condition}"
        );
        self.with_reader(|conn| {
            let found = conn
                .prepare_cached(&sql)?
                .query_row(args, |row| {
                    let body: Vec<u8> = row.get(18)?;
                    let headers: String = row.get(19)?;
                    let trace_parent: Option<String> = row.get(20)?;
                    Ok((summary_from_row(row), body, headers, trace_parent))
                })
                .optional()?;
            let Some((summary, body, headers, trace_parent)) = found else {
                return Ok(None);
            };
            let headers = serde_json::from_str(&headers)
                .map_err(|e| StoreError::Corrupt(format!("headers of an event: {e}")))?;
            Ok(Some(StoredEvent {
                summary: summary?,
                body,
                headers,
                trace_parent,
            }))
        })
    }

    pub fn count_events(&self) -> Result<i64, StoreError> {
        self.with_reader(
            |conn| Ok(conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?),
        )
    }

    /// Events counted per source, type and status, received in `[since, until)`.
    pub fn stats(
        &self,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> Result<Vec<StatsRow>, StoreError> {
        let mut c = Conditions::default();
        self.with_reader(|conn| Ok(timeline::add_window(conn, &mut c, since_ms, until_ms)?))?;
        let sql = format!(
            "SELECT source, event_type, status, count(*), sum(times_seen) FROM events {}
             GROUP BY source, event_type, status ORDER BY source, event_type, status",
            c.sql()
        );
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params_from_iter(c.args), |row| {
                let status: String = row.get(2)?;
                Ok((row.get(0)?, row.get(1)?, status, row.get(3)?, row.get(4)?))
            })?;
            let mut stats = Vec::new();
            for row in rows {
                let (source, event_type, status, events, received) = row?;
                stats.push(StatsRow {
                    source,
                    event_type,
                    status: parse_status(&status)?,
                    events,
                    received,
                });
            }
            Ok(stats)
        })
    }

    /// The latest rejections, newest first.
    pub fn list_rejections(&self, limit: usize) -> Result<Vec<Rejection>, StoreError> {
        self.find_rejections(&RejectionFilter {
            limit,
            ..RejectionFilter::default()
        })
    }

    pub fn find_rejections(&self, filter: &RejectionFilter) -> Result<Vec<Rejection>, StoreError> {
        let mut c = Conditions::default();
        c.add_opt("source = ?", filter.source.as_ref());
        c.add_opt("reason = ?", filter.reason.as_ref());
        c.add_opt("id < ?", filter.before_id.as_ref());
        let sql = format!(
            "SELECT id, at_ms, source, reason, status, message, body, body_len, remote_addr,
                 body_sha256
             FROM rejections {} ORDER BY id DESC LIMIT {}",
            c.sql(),
            filter.limit.max(1)
        );
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params_from_iter(c.args), |row| {
                Ok(Rejection {
                    id: row.get(0)?,
                    at_ms: row.get(1)?,
                    source: row.get(2)?,
                    reason: row.get(3)?,
                    status: row.get(4)?,
                    message: row.get(5)?,
                    body: row.get(6)?,
                    body_len: row.get::<_, i64>(7)? as usize,
                    remote_addr: row.get(8)?,
                    body_sha256: row.get(9)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
}

fn query_summaries(
    conn: &rusqlite::Connection,
    sql: &str,
    args: Vec<SqlValue>,
) -> Result<Vec<EventSummary>, StoreError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let rows = stmt.query_map(params_from_iter(args), |row| Ok(summary_from_row(row)))?;
    let mut events = Vec::new();
    for row in rows {
        events.push(row??);
    }
    Ok(events)
}

/// The sources that have stored events, one index probe each (few sources, many
/// events: never a scan of the log).
fn stored_sources(conn: &rusqlite::Connection) -> Result<Vec<String>, StoreError> {
    let mut next = conn.prepare_cached("SELECT min(source) FROM events WHERE source > ?1")?;
    let mut sources: Vec<String> = Vec::new();
    loop {
        let after = sources.last().map_or("", String::as_str);
        let found: Option<String> = next.query_row([after], |r| r.get(0))?;
        match found {
            Some(source) => sources.push(source),
            None => return Ok(sources),
        }
    }
}

/// `text` as a GLOB pattern matching only itself.
fn glob_literal(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '*' | '?' | '[' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            _ => out.push(c),
        }
    }
    out
}

fn parse_status(status: &str) -> Result<EventStatus, StoreError> {
    EventStatus::parse(status)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))
}

fn summary_from_row(row: &Row<'_>) -> Result<EventSummary, StoreError> {
    let provider: String = row.get(2)?;
    let status: String = row.get(12)?;
    Ok(EventSummary {
        seq: row.get(0)?,
        source: row.get(1)?,
        provider: ProviderKind::parse(&provider)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown provider {provider:?}")))?,
        tenant: row.get(3)?,
        event_type: row.get(4)?,
        event_id: row.get(5)?,
        dedupe_key: row.get(6)?,
        entity_kind: row.get(7)?,
        entity_id: row.get(8)?,
        entity_op: row.get(9)?,
        version_ms: row.get(10)?,
        received_at_ms: row.get(11)?,
        status: parse_status(&status)?,
        status_reason: row.get(13)?,
        times_seen: row.get(14)?,
        last_seen_at_ms: row.get(15)?,
        conflicts: row.get(16)?,
        mirror_effect: row.get(17)?,
    })
}
