//! Read queries on the event log and the rejection log, on the read pool.

use tokio_postgres::Row;

use super::PostgresStore;
use super::sql::{Conditions, like_literal};
use crate::event::EventStatus;
use crate::provider::ProviderKind;
use crate::store::{
    EventFilter, EventSeq, EventSummary, Rejection, RejectionFilter, StatsRow, StoreError,
    StoredEvent,
};

pub const SUMMARY_COLUMNS: &str = "seq, source, provider, tenant, event_type, event_id,
    dedupe_key, entity_kind, entity_id, entity_op, version_ms, received_at_ms, status,
    status_reason, times_seen, last_seen_at_ms, conflicts, mirror_effect";

impl PostgresStore {
    pub(super) async fn list_events(
        &self,
        filter: EventFilter,
    ) -> Result<Vec<EventSummary>, StoreError> {
        let mut c = Conditions::default();
        c.add_opt("source = $?", filter.source.as_ref());
        c.add_opt("tenant = $?", filter.tenant.as_ref());
        match filter
            .event_type
            .as_deref()
            .map(|t| (t, t.strip_suffix('*')))
        {
            None | Some(("*", _)) => {}
            // `CLASS_*`: a prefix, as subscriptions match (byte order: the column is
            // in the "C" collation, so the index serves LIKE).
            Some((_, Some(prefix))) => {
                c.add("event_type LIKE $?", format!("{}%", like_literal(prefix)))
            }
            Some((exact, None)) => c.add("event_type = $?", exact.to_string()),
        }
        if let Some(status) = filter.status {
            c.add("status = $?", status.as_str().to_string());
            if status != EventStatus::Ok {
                // The partial index's own term, so the planner can use it.
                c.push_raw("status <> 'ok'");
            }
        }
        c.add_opt("received_at_ms >= $?", filter.since_ms.as_ref());
        c.add_opt("received_at_ms < $?", filter.until_ms.as_ref());
        c.add_opt("seq < $?", filter.before_seq.as_ref());
        let limit = c.param(filter.limit.max(1) as i64);
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS} FROM events {} ORDER BY seq DESC LIMIT {limit}",
            c.sql()
        );
        self.query_summaries(&sql, &c).await
    }

    pub(super) async fn entity_history(
        &self,
        kind: &str,
        id: &str,
        source: &str,
        tenant: Option<&str>,
        newest: usize,
    ) -> Result<Vec<EventSummary>, StoreError> {
        let mut c = Conditions::default();
        c.add("entity_kind = $?", kind.to_string());
        c.add("entity_id = $?", id.to_string());
        c.add("source = $?", source.to_string());
        match tenant {
            Some(tenant) => c.add("tenant = $?", tenant.to_string()),
            None => c.push_raw("tenant IS NULL"),
        }
        // The newest `newest` events, returned in version order.
        let newest = c.param(newest as i64);
        let sql = format!(
            "SELECT * FROM (SELECT {SUMMARY_COLUMNS} FROM events {} ORDER BY version_ms DESC, seq DESC
                 LIMIT {newest}) AS newest ORDER BY version_ms, seq",
            c.sql()
        );
        self.query_summaries(&sql, &c).await
    }

    async fn query_summaries(
        &self,
        sql: &str,
        c: &Conditions,
    ) -> Result<Vec<EventSummary>, StoreError> {
        let client = self.client().await?;
        let statement = client.prepare_cached(sql).await?;
        let rows = client.query(&statement, &c.params()).await?;
        rows.iter().map(summary_from_row).collect()
    }

    pub(super) async fn get_event(&self, seq: EventSeq) -> Result<Option<StoredEvent>, StoreError> {
        self.query_event("seq = $1", &[&seq.get()]).await
    }

    pub(super) async fn find_event(
        &self,
        source: &str,
        dedupe_key: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        self.query_event("source = $1 AND dedupe_key = $2", &[&source, &dedupe_key])
            .await
    }

    pub(super) async fn find_events_by_key(
        &self,
        dedupe_key: &str,
        source: Option<&str>,
    ) -> Result<Vec<(String, EventSeq)>, StoreError> {
        let client = self.client().await?;
        let rows = match source {
            Some(source) => {
                client
                    .query(
                        "SELECT source, seq FROM events WHERE source = $1 AND dedupe_key = $2",
                        &[&source, &dedupe_key],
                    )
                    .await?
            }
            // The sources that have events, one index probe each (few sources, many
            // events: never a scan of the log), then the key in each.
            None => {
                client
                    .query(
                        "WITH RECURSIVE sources (source) AS (
                             SELECT min(source) FROM events
                             UNION ALL
                             SELECT (SELECT min(source) FROM events WHERE source > s.source)
                             FROM sources s WHERE s.source IS NOT NULL
                         )
                         SELECT e.source, e.seq FROM sources s
                         JOIN events e ON e.source = s.source AND e.dedupe_key = $1
                         ORDER BY e.source",
                        &[&dedupe_key],
                    )
                    .await?
            }
        };
        rows.iter()
            .map(|r| Ok((r.try_get(0)?, EventSeq(r.try_get(1)?))))
            .collect()
    }

    async fn query_event(
        &self,
        condition: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Option<StoredEvent>, StoreError> {
        let sql = format!(
            "SELECT {SUMMARY_COLUMNS}, body, headers, trace_parent FROM events WHERE {condition}"
        );
        let client = self.client().await?;
        let statement = client.prepare_cached(&sql).await?;
        let Some(row) = client.query_opt(&statement, params).await? else {
            return Ok(None);
        };
        let headers: String = row.try_get(19)?;
        let headers = serde_json::from_str(&headers)
            .map_err(|e| StoreError::Corrupt(format!("headers of an event: {e}")))?;
        Ok(Some(StoredEvent {
            summary: summary_from_row(&row)?,
            body: row.try_get(18)?,
            headers,
            trace_parent: row.try_get(20)?,
        }))
    }

    pub(super) async fn count_events(&self) -> Result<i64, StoreError> {
        let client = self.client().await?;
        Ok(client
            .query_one("SELECT count(*) FROM events", &[])
            .await?
            .try_get(0)?)
    }

    pub(super) async fn stats(
        &self,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> Result<Vec<StatsRow>, StoreError> {
        let mut c = Conditions::default();
        c.add_opt("received_at_ms >= $?", since_ms.as_ref());
        c.add_opt("received_at_ms < $?", until_ms.as_ref());
        let sql = format!(
            "SELECT source, event_type, status, count(*), sum(times_seen)::bigint FROM events {}
             GROUP BY source, event_type, status ORDER BY source, event_type, status",
            c.sql()
        );
        let client = self.client().await?;
        let rows = client.query(&sql, &c.params()).await?;
        rows.iter()
            .map(|row| {
                let status: String = row.try_get(2)?;
                Ok(StatsRow {
                    source: row.try_get(0)?,
                    event_type: row.try_get(1)?,
                    status: parse_status(&status)?,
                    events: row.try_get(3)?,
                    received: row.try_get(4)?,
                })
            })
            .collect()
    }

    pub(super) async fn find_rejections(
        &self,
        filter: RejectionFilter,
    ) -> Result<Vec<Rejection>, StoreError> {
        let mut c = Conditions::default();
        c.add_opt("source = $?", filter.source.as_ref());
        c.add_opt("reason = $?", filter.reason.as_ref());
        c.add_opt("id < $?", filter.before_id.as_ref());
        let sql = format!(
            "SELECT id, at_ms, source, reason, status, message, body, body_len, remote_addr,
                 body_sha256
             FROM rejections {} ORDER BY id DESC LIMIT {limit}",
            c.sql(),
            limit = c.param(filter.limit.max(1) as i64),
        );
        let client = self.client().await?;
        let statement = client.prepare_cached(&sql).await?;
        let rows = client.query(&statement, &c.params()).await?;
        rows.iter()
            .map(|row| {
                let status: i32 = row.try_get(4)?;
                Ok(Rejection {
                    id: row.try_get(0)?,
                    at_ms: row.try_get(1)?,
                    source: row.try_get(2)?,
                    reason: row.try_get(3)?,
                    status: u16::try_from(status)
                        .map_err(|_| StoreError::Corrupt(format!("rejection status {status}")))?,
                    message: row.try_get(5)?,
                    body: row.try_get(6)?,
                    body_len: row.try_get::<_, i64>(7)? as usize,
                    remote_addr: row.try_get(8)?,
                    body_sha256: row.try_get(9)?,
                })
            })
            .collect()
    }
}

fn parse_status(status: &str) -> Result<EventStatus, StoreError> {
    EventStatus::parse(status)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown status {status:?}")))
}

pub fn summary_from_row(row: &Row) -> Result<EventSummary, StoreError> {
    let provider: String = row.try_get(2)?;
    let status: String = row.try_get(12)?;
    Ok(EventSummary {
        seq: row.try_get(0)?,
        source: row.try_get(1)?,
        provider: ProviderKind::parse(&provider)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown provider {provider:?}")))?,
        tenant: row.try_get(3)?,
        event_type: row.try_get(4)?,
        event_id: row.try_get(5)?,
        dedupe_key: row.try_get(6)?,
        entity_kind: row.try_get(7)?,
        entity_id: row.try_get(8)?,
        entity_op: row.try_get(9)?,
        version_ms: row.try_get(10)?,
        received_at_ms: row.try_get(11)?,
        status: parse_status(&status)?,
        status_reason: row.try_get(13)?,
        times_seen: row.try_get(14)?,
        last_seen_at_ms: row.try_get(15)?,
        conflicts: row.try_get(16)?,
        mirror_effect: row.try_get(17)?,
    })
}
