//! `mirror rebuild` without stalling ingest. The new mirror is built in a scratch
//! database beside the store (`classhook-rebuild.db`), off the writer, in chunks of
//! events read from the live log; readers and appends go on meanwhile with the old
//! mirror. Only the end runs on the writer, as one job: the few events stored during
//! the build are applied to the scratch mirror too, then the live mirror tables are
//! replaced by the scratch ones and the events whose effect or description changed
//! are corrected, in one transaction. Appends wait only for that last step, which is
//! proportional to the number of entities, not of events.
//!
//! Rebuild = replay: every stored body is described again by the same provider code
//! and applied in receive order with the same rules, so the result equals what live
//! ingestion produced (tested on shuffled streams with duplicates).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rusqlite::{Connection, params};

use super::{SqliteStore, mirror};
use crate::provider::{Envelope, ProviderKind};
use crate::store::{Progress, RebuildReport, StoreError};

/// The scratch database, next to the store's.
pub const SCRATCH_FILE: &str = "classhook-rebuild.db";

/// How many events one chunk of the build reads, by default.
pub const CHUNK: usize = 5_000;

impl SqliteStore {
    /// Recomputes every mirror table from the event log, in receive order. Readers
    /// see the old mirror until the new one replaces it in one transaction.
    pub async fn rebuild_mirror(
        &self,
        progress: Arc<dyn Progress>,
    ) -> Result<RebuildReport, StoreError> {
        let live = self.path().to_path_buf();
        let scratch = live.with_file_name(SCRATCH_FILE);
        let chunk = self.inner.options.rebuild_chunk.unwrap_or(CHUNK).max(1) as i64;
        // The build hands over to the writer once it is this close to the log's end.
        let hand_over_gap = 2 * chunk;
        let mut build = run_blocking(move || Build::start(&live, scratch, chunk)).await?;
        let total = {
            let count = self.clone();
            run_blocking(move || count.count_events()).await?
        };
        progress.total(u64::try_from(total).unwrap_or(0));
        loop {
            let (returned, moved, behind) = run_blocking(move || {
                let moved = build.chunk()?;
                let behind = build.behind()?;
                Ok((build, moved, behind))
            })
            .await?;
            build = returned;
            progress.advanced(moved as u64);
            if moved == 0 || behind <= hand_over_gap {
                break;
            }
        }
        self.run_job(move |conn| build.finish(conn)).await
    }
}

async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Commit(format!("the rebuild stopped: {e}")))?
}

/// A build in progress: the scratch database (with the live one attached read-only
/// as `live`) and how far it has read.
struct Build {
    scratch: Connection,
    path: PathBuf,
    chunk: i64,
    after: i64,
    report: RebuildReport,
}

/// The columns of an event that `describe` decides, and its mirror effect.
#[derive(Clone, PartialEq)]
struct Description {
    entity_kind: String,
    entity_op: String,
    version_ms: i64,
    status: String,
    status_reason: Option<String>,
    effect: Option<&'static str>,
}

impl Build {
    /// Creates the scratch database with empty mirror tables shaped like the live
    /// ones (their keys included, which the rules' lookups use).
    fn start(live: &Path, path: PathBuf, chunk: i64) -> Result<Build, StoreError> {
        let _ = std::fs::remove_file(&path);
        let scratch = Connection::open(&path)?;
        // A scratch file: if classhook dies, the rebuild starts again from scratch.
        scratch.execute_batch("PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;")?;
        scratch.execute(
            "ATTACH DATABASE ?1 AS live",
            [format!("file:{}?mode=ro", live.display())],
        )?;
        let tables: Vec<String> = scratch
            .prepare(
                "SELECT sql FROM live.sqlite_master WHERE type = 'table' AND name IN
                 (SELECT value FROM json_each(?1))",
            )?
            .query_map(
                [serde_json::to_string(&mirror::all_tables()).expect("names")],
                |r| r.get(0),
            )?
            .collect::<Result<_, _>>()?;
        for sql in tables {
            scratch.execute_batch(&sql)?;
        }
        scratch.execute_batch(
            "CREATE TABLE changes (
                 seq INTEGER PRIMARY KEY, entity_kind TEXT NOT NULL, entity_op TEXT NOT NULL,
                 version_ms INTEGER NOT NULL, status TEXT NOT NULL, status_reason TEXT,
                 mirror_effect TEXT
             );",
        )?;
        Ok(Build {
            scratch,
            path,
            chunk,
            after: 0,
            report: RebuildReport::default(),
        })
    }

    /// How many events the build still has to read.
    fn behind(&self) -> Result<i64, StoreError> {
        let last: Option<i64> =
            self.scratch
                .query_row("SELECT max(seq) FROM live.events", [], |r| r.get(0))?;
        Ok(last.unwrap_or(0) - self.after)
    }

    /// Applies the next chunk of events to the scratch mirror; returns how many.
    fn chunk(&mut self) -> Result<usize, StoreError> {
        let tx = self.scratch.transaction()?;
        let rows: Vec<Row> = tx
            .prepare_cached(
                "SELECT seq, source, provider, tenant, received_at_ms, body, entity_kind,
                     entity_op, version_ms, status, status_reason, mirror_effect
                 FROM live.events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
            )?
            .query_map(params![self.after, self.chunk], Row::read)?
            .collect::<Result<_, _>>()?;
        for row in &rows {
            self.report.events += 1;
            let now = describe_again(&tx, row, &mut self.report)?;
            if now != row.stored {
                if !now.same_event_fields(&row.stored) {
                    self.report.redescribed += 1;
                }
                tx.prepare_cached(
                    "INSERT OR REPLACE INTO changes (seq, entity_kind, entity_op, version_ms,
                         status, status_reason, mirror_effect)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )?
                .execute(params![
                    row.seq,
                    now.entity_kind,
                    now.entity_op,
                    now.version_ms,
                    now.status,
                    now.status_reason,
                    now.effect
                ])?;
            }
        }
        tx.commit()?;
        if let Some(last) = rows.last() {
            self.after = last.seq;
        }
        Ok(rows.len())
    }

    /// On the writer, with appends paused: reads the rest of the log, then puts the
    /// scratch mirror and the corrected events in place in one transaction.
    fn finish(mut self, conn: &mut Connection) -> Result<RebuildReport, StoreError> {
        while self.chunk()? > 0 {}
        let Build {
            scratch,
            path,
            report,
            ..
        } = self;
        drop(scratch);
        conn.execute(
            "ATTACH DATABASE ?1 AS scratch",
            [path.display().to_string()],
        )?;
        let replaced = replace(conn);
        conn.execute_batch("DETACH DATABASE scratch")?;
        replaced?;
        let _ = std::fs::remove_file(&path);
        Ok(report)
    }
}

/// The live mirror becomes the scratch one; changed events are corrected.
fn replace(conn: &mut Connection) -> Result<(), StoreError> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    for table in mirror::all_tables() {
        let rowid = !tx
            .query_row(
                "SELECT sql FROM main.sqlite_master WHERE type = 'table' AND name = ?1",
                [table],
                |r| r.get::<_, String>(0),
            )?
            .to_ascii_uppercase()
            .contains("WITHOUT ROWID");
        tx.execute(&format!("DELETE FROM main.{table}"), [])?;
        // Rows keep the order in which entities first appeared (API pagination).
        let order = if rowid { " ORDER BY rowid" } else { "" };
        tx.execute(
            &format!("INSERT INTO main.{table} SELECT * FROM scratch.{table}{order}"),
            [],
        )?;
    }
    tx.execute(
        "UPDATE main.events SET entity_kind = c.entity_kind, entity_op = c.entity_op,
             version_ms = c.version_ms, status = c.status, status_reason = c.status_reason,
             mirror_effect = c.mirror_effect
         FROM scratch.changes AS c WHERE main.events.seq = c.seq",
        [],
    )?;
    tx.commit()?;
    Ok(())
}

/// One event as the log holds it.
struct Row {
    seq: i64,
    source: String,
    provider: String,
    tenant: Option<String>,
    received_at_ms: i64,
    body: Vec<u8>,
    stored: Description,
}

impl Row {
    fn read(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
        let effect: Option<String> = r.get(11)?;
        Ok(Row {
            seq: r.get(0)?,
            source: r.get(1)?,
            provider: r.get(2)?,
            tenant: r.get(3)?,
            received_at_ms: r.get(4)?,
            body: r.get(5)?,
            stored: Description {
                entity_kind: r.get(6)?,
                entity_op: r.get(7)?,
                version_ms: r.get(8)?,
                status: r.get(9)?,
                status_reason: r.get(10)?,
                effect: effect.as_deref().and_then(effect_name),
            },
        })
    }
}

fn effect_name(text: &str) -> Option<&'static str> {
    ["applied", "tombstoned", "stale", "blocked"]
        .into_iter()
        .find(|name| *name == text)
}

/// Describes a stored event again with this version's provider code and applies it
/// to the scratch mirror.
fn describe_again(
    scratch: &Connection,
    row: &Row,
    report: &mut RebuildReport,
) -> Result<Description, StoreError> {
    let seq = row.seq;
    let provider = ProviderKind::parse(&row.provider).ok_or_else(|| {
        StoreError::Corrupt(format!("event {seq}: unknown provider {:?}", row.provider))
    })?;
    // Stored events were authentic and parsed once; the same code describes them again.
    let Ok(envelope) = Envelope::parse(provider, &row.body) else {
        return Ok(Description {
            effect: None,
            ..row.stored.clone()
        });
    };
    let described = envelope.describe();
    let version_ms = described.version_ms.unwrap_or(row.received_at_ms);
    let effect = match &described.mirror {
        Some(data) => mirror::apply(
            scratch,
            &row.source,
            row.tenant.as_deref(),
            &described.entity,
            version_ms,
            seq,
            data,
        )?,
        None => None,
    };
    if let Some(effect) = effect {
        report.applied += u64::from(effect.changes_state());
    }
    Ok(Description {
        entity_kind: described.entity.kind,
        entity_op: described.entity.op,
        version_ms,
        status: described.status.as_str().to_string(),
        status_reason: described.status_reason,
        effect: effect.map(|e| e.as_str()),
    })
}

impl Description {
    /// Equal apart from the mirror effect.
    fn same_event_fields(&self, other: &Description) -> bool {
        (
            &self.entity_kind,
            &self.entity_op,
            self.version_ms,
            &self.status,
            &self.status_reason,
        ) == (
            &other.entity_kind,
            &other.entity_op,
            other.version_ms,
            &other.status,
            &other.status_reason,
        )
    }
}
