//! Read queries. They run on read-only connections and never wait for the writer.

use rusqlite::types::Value as SqlValue;
use rusqlite::{OptionalExtension, Row, params, params_from_iter};

use super::SqliteStore;
use crate::event::EventStatus;
use crate::provider::ProviderKind;
use crate::store::{EventFilter, EventSummary, Rejection, StoreError, StoredEvent};

const SUMMARY_COLUMNS: &str = "seq, source, provider, tenant, event_type, event_id, dedupe_key,
    entity_kind, entity_id, entity_op, version_ms, received_at_ms, status, status_reason,
    times_seen, last_seen_at_ms, conflicts";

impl SqliteStore {
    /// The latest events matching `filter`, newest first.
    pub fn list_events(&self, filter: &EventFilter) -> Result<Vec<EventSummary>, StoreError> {
        let mut clauses = Vec::new();
        let mut args: Vec<SqlValue> = Vec::new();
        if let Some(source) = &filter.source {
            clauses.push("source = ?");
            args.push(source.clone().into());
        }
        if let Some(event_type) = &filter.event_type {
            clauses.push("event_type = ?");
            args.push(event_type.clone().into());
        }
        if let Some(status) = filter.status {
            clauses.push("status = ?");
            args.push(status.as_str().to_string().into());
        }
        let where_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        args.push((filter.limit.max(1) as i64).into());
        let sql =
            format!("SELECT {SUMMARY_COLUMNS} FROM events {where_sql} ORDER BY seq DESC LIMIT ?");
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params_from_iter(args), |row| Ok(summary_from_row(row)))?;
            let mut events = Vec::new();
            for row in rows {
                events.push(row??);
            }
            Ok(events)
        })
    }

    /// One event with its raw body and headers.
    pub fn get_event(&self, seq: i64) -> Result<Option<StoredEvent>, StoreError> {
        self.query_event("seq = ?1", params![seq])
    }

    /// The event stored under a source's dedupe key (`id:<uuid>` or `sha256:<hex>`).
    pub fn find_event(
        &self,
        source: &str,
        dedupe_key: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        self.query_event(
            "source = ?1 AND dedupe_key = ?2",
            params![source, dedupe_key],
        )
    }

    fn query_event(
        &self,
        condition: &str,
        args: impl rusqlite::Params,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let sql = format!("SELECT {SUMMARY_COLUMNS}, body, headers FROM events WHERE {condition}");
        self.with_reader(|conn| {
            let found = conn
                .prepare_cached(&sql)?
                .query_row(args, |row| {
                    let body: Vec<u8> = row.get(17)?;
                    let headers: String = row.get(18)?;
                    Ok((summary_from_row(row), body, headers))
                })
                .optional()?;
            let Some((summary, body, headers)) = found else {
                return Ok(None);
            };
            let headers = serde_json::from_str(&headers)
                .map_err(|e| StoreError::Corrupt(format!("headers of an event: {e}")))?;
            Ok(Some(StoredEvent {
                summary: summary?,
                body,
                headers,
            }))
        })
    }

    pub fn count_events(&self) -> Result<i64, StoreError> {
        self.with_reader(
            |conn| Ok(conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?),
        )
    }

    /// The latest rejections, newest first.
    pub fn list_rejections(&self, limit: usize) -> Result<Vec<Rejection>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, at_ms, source, reason, status, message, body, body_len, remote_addr
                 FROM rejections ORDER BY id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit as i64], |row| {
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
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }
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
        status: EventStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))?,
        status_reason: row.get(13)?,
        times_seen: row.get(14)?,
        last_seen_at_ms: row.get(15)?,
        conflicts: row.get(16)?,
    })
}
