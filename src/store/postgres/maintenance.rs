//! Retention and `mirror rebuild`, on the read pool, in short transactions that let
//! appends interleave.
//!
//! Rebuild = replay: every stored body is described again by this version's provider
//! code and applied in receive order with the same rules as live ingest, into
//! shadow tables (`rebuild_<table>`) while ingest goes on with the live mirror. The
//! last step locks the event log against writers (readers go on), replays the few
//! events stored meanwhile, and puts the shadow rows in place of the live ones and
//! the corrected descriptions on the events, in one transaction proportional to the
//! number of entities, not of events.

use std::sync::Arc;

use super::PostgresStore;
use super::mirror::{self, Item, Tables};
use crate::event::EntityRef;
use crate::mirror::MirrorData;
use crate::provider::{Envelope, ProviderKind};
use crate::store::{Progress, RebuildReport, StoreError};

/// How many events one pruning transaction deletes at most.
const PRUNE_CHUNK: i64 = 5_000;

/// How many events one rebuild transaction replays, by default.
const REBUILD_CHUNK: usize = 5_000;

/// The shadow tables a rebuild fills.
const SHADOW: Tables = Tables { prefix: "rebuild_" };

/// Only one rebuild at a time, across instances ("classhk" + 1).
const REBUILD_LOCK: i64 = 0x0063_6c61_7373_686c;

/// Only one instance prunes at a time ("classhk" + 3).
const PRUNE_LOCK: i64 = 0x0063_6c61_7373_686e;

impl PostgresStore {
    /// Deletes events received before `before_ms`, in chunks. While another instance
    /// prunes, this one leaves it to that one (0).
    pub(super) async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        let mut client = self.client().await?;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&PRUNE_LOCK])
            .await?
            .try_get(0)?;
        if !locked {
            return Ok(0);
        }
        let pruned = prune(&mut client, before_ms).await;
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&PRUNE_LOCK])
            .await?;
        pruned
    }
}

/// Deletes in chunks, each its own short transaction, so that appends interleave.
async fn prune(client: &mut deadpool_postgres::Object, before_ms: i64) -> Result<u64, StoreError> {
    let mut total = 0;
    loop {
        let tx = client.transaction().await?;
        let seqs: Vec<i64> = tx
            .query(
                "SELECT seq FROM events WHERE received_at_ms < $1 ORDER BY seq LIMIT $2",
                &[&before_ms, &PRUNE_CHUNK],
            )
            .await?
            .iter()
            .map(|r| r.try_get(0))
            .collect::<Result<_, _>>()?;
        // Attempts go with their deliveries (ON DELETE CASCADE).
        tx.execute("DELETE FROM deliveries WHERE event_seq = ANY($1)", &[&seqs])
            .await?;
        let deleted = tx
            .execute("DELETE FROM events WHERE seq = ANY($1)", &[&seqs])
            .await?;
        tx.commit().await?;
        total += deleted;
        if (seqs.len() as i64) < PRUNE_CHUNK {
            return Ok(total);
        }
    }
}

impl PostgresStore {
    pub(super) async fn rebuild_mirror(
        &self,
        progress: Arc<dyn Progress>,
    ) -> Result<RebuildReport, StoreError> {
        let client = self.client().await?;
        let locked: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&REBUILD_LOCK])
            .await?
            .try_get(0)?;
        if !locked {
            return Err(StoreError::Conflict(
                "a mirror rebuild is already running".into(),
            ));
        }
        let mut client = client;
        let chunk = self
            .inner
            .options
            .rebuild_chunk
            .unwrap_or(REBUILD_CHUNK)
            .max(1) as i64;
        let result = rebuild(&mut client, chunk, progress.as_ref()).await;
        // The shadow tables' statements must not outlive them in this pooled client.
        client.statement_cache.clear();
        let _ = client.batch_execute(&drop_shadow_sql()).await;
        client
            .execute("SELECT pg_advisory_unlock($1)", &[&REBUILD_LOCK])
            .await?;
        result
    }
}

fn drop_shadow_sql() -> String {
    let mut sql: String = mirror::all_tables()
        .iter()
        .map(|t| format!("DROP TABLE IF EXISTS {};", SHADOW.name(t)))
        .collect();
    sql.push_str("DROP TABLE IF EXISTS rebuild_changes;");
    sql
}

async fn rebuild(
    client: &mut deadpool_postgres::Object,
    chunk: i64,
    progress: &dyn Progress,
) -> Result<RebuildReport, StoreError> {
    let mut setup = drop_shadow_sql();
    for table in mirror::all_tables() {
        // Keys and identity included: the rules' look-ups and upserts need them.
        setup.push_str(&format!(
            "CREATE UNLOGGED TABLE {} (LIKE {table} INCLUDING DEFAULTS INCLUDING IDENTITY
                 INCLUDING CONSTRAINTS INCLUDING INDEXES);",
            SHADOW.name(table)
        ));
    }
    setup.push_str(
        "CREATE UNLOGGED TABLE rebuild_changes (
             seq BIGINT PRIMARY KEY, entity_kind TEXT NOT NULL, entity_op TEXT NOT NULL,
             version_ms BIGINT NOT NULL, status TEXT NOT NULL, status_reason TEXT,
             mirror_effect TEXT
         );",
    );
    client.batch_execute(&setup).await?;
    let total: i64 = client
        .query_one("SELECT count(*) FROM events", &[])
        .await?
        .try_get(0)?;
    progress.total(u64::try_from(total).unwrap_or(0));
    let mut report = RebuildReport::default();
    let mut after = 0i64;
    // The build hands over to the final step once it is this close to the log's end.
    let hand_over_gap = 2 * chunk;
    loop {
        let tx = client.transaction().await?;
        // The shadow tables start empty and grow through the rebuild: a plan cached
        // after the first chunks (PostgreSQL's default after five executions) would
        // be made for them tiny. One plan per statement per chunk of thousands of
        // events costs nothing.
        super::plan_for_the_tables_as_they_are(&tx).await?;
        let moved = replay_chunk(&tx, &mut after, chunk, &mut report).await?;
        progress.advanced(moved as u64);
        let last: Option<i64> = tx
            .query_one("SELECT max(seq) FROM events", &[])
            .await?
            .try_get(0)?;
        tx.commit().await?;
        if moved == 0 || last.unwrap_or(0) - after <= hand_over_gap {
            break;
        }
    }
    let tx = client.transaction().await?;
    super::plan_for_the_tables_as_they_are(&tx).await?;
    // Writers wait from here to the commit; readers go on with the old mirror
    // until the tables are swapped. The batch lock first, as every writer takes it
    // before it touches a table: taken after the table lock, a writer already
    // holding mirror rows and this swap would wait for each other (a deadlock).
    tx.execute(
        "SELECT pg_advisory_xact_lock($1)",
        &[&super::writer::BATCH_LOCK],
    )
    .await?;
    tx.batch_execute("LOCK TABLE events IN EXCLUSIVE MODE")
        .await?;
    loop {
        let moved = replay_chunk(&tx, &mut after, chunk, &mut report).await?;
        progress.advanced(moved as u64);
        if moved == 0 {
            break;
        }
    }
    let mut swap = String::new();
    for table in mirror::all_tables() {
        let shadow = SHADOW.name(table);
        // Rows keep the order in which entities first appeared (API pagination).
        swap.push_str(&format!(
            "TRUNCATE {table}; INSERT INTO {table} SELECT * FROM {shadow}"
        ));
        if !has_position(table) {
            swap.push(';');
        } else {
            swap.push_str(&format!(
                " ORDER BY position;
                 SELECT setval(pg_get_serial_sequence('{table}', 'position'),
                     (SELECT coalesce(max(position), 0) + 1 FROM {table}), false);"
            ));
        }
    }
    swap.push_str(
        "UPDATE events SET entity_kind = c.entity_kind, entity_op = c.entity_op,
             version_ms = c.version_ms, status = c.status, status_reason = c.status_reason,
             mirror_effect = c.mirror_effect
         FROM rebuild_changes c WHERE events.seq = c.seq;",
    );
    tx.batch_execute(&swap).await?;
    tx.commit().await?;
    Ok(report)
}

/// Whether a mirror table has an entity position (child tables do not).
fn has_position(table: &str) -> bool {
    crate::mirror::kinds::TYPED
        .iter()
        .all(|spec| spec.child.as_ref().is_none_or(|c| c.table != table))
}

/// The columns of an event that `describe` decides, and its mirror effect.
#[derive(Clone, PartialEq)]
struct Description {
    entity_kind: String,
    entity_op: String,
    version_ms: i64,
    status: String,
    status_reason: Option<String>,
    effect: Option<String>,
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

/// One event described again: its new description, and what it gives the mirror.
struct Replayed {
    seq: i64,
    source: String,
    tenant: Option<String>,
    stored: Description,
    now: Description,
    entity: EntityRef,
    mirror: Option<MirrorData>,
}

/// Replays the next `chunk` events after `after` into the shadow mirror; returns
/// how many it read.
async fn replay_chunk(
    tx: &deadpool_postgres::Transaction<'_>,
    after: &mut i64,
    chunk: i64,
    report: &mut RebuildReport,
) -> Result<usize, StoreError> {
    let rows = tx
        .query(
            "SELECT seq, source, provider, tenant, received_at_ms, body, entity_kind,
                 entity_op, version_ms, status, status_reason, mirror_effect
             FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
            &[&*after, &chunk],
        )
        .await?;
    let mut replayed = Vec::with_capacity(rows.len());
    for row in &rows {
        let seq: i64 = row.try_get(0)?;
        let provider: String = row.try_get(2)?;
        let stored = Description {
            entity_kind: row.try_get(6)?,
            entity_op: row.try_get(7)?,
            version_ms: row.try_get(8)?,
            status: row.try_get(9)?,
            status_reason: row.try_get(10)?,
            effect: row.try_get(11)?,
        };
        let provider = ProviderKind::parse(&provider).ok_or_else(|| {
            StoreError::Corrupt(format!("event {seq}: unknown provider {provider:?}"))
        })?;
        let body: Vec<u8> = row.try_get(5)?;
        let received_at_ms: i64 = row.try_get(4)?;
        // Stored events were authentic and parsed once; the same code describes them again.
        let (now, entity, mirror) = match Envelope::parse(provider, &body) {
            Ok(envelope) => {
                let described = envelope.describe();
                let now = Description {
                    entity_kind: described.entity.kind.clone(),
                    entity_op: described.entity.op.clone(),
                    version_ms: described.version_ms.unwrap_or(received_at_ms),
                    status: described.status.as_str().to_string(),
                    status_reason: described.status_reason,
                    effect: None,
                };
                (now, described.entity, described.mirror)
            }
            Err(_) => (
                Description {
                    effect: None,
                    ..stored.clone()
                },
                EntityRef {
                    kind: stored.entity_kind.clone(),
                    id: None,
                    op: stored.entity_op.clone(),
                },
                None,
            ),
        };
        replayed.push(Replayed {
            seq,
            source: row.try_get(1)?,
            tenant: row.try_get(3)?,
            stored,
            now,
            entity,
            mirror,
        });
    }
    let mut indexes = Vec::new();
    let items: Vec<Item<'_>> = replayed
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let data = r.mirror.as_ref()?;
            indexes.push(i);
            Some(Item {
                source: &r.source,
                tenant: r.tenant.as_deref(),
                entity: &r.entity,
                version_ms: r.now.version_ms,
                data,
            })
        })
        .collect();
    let seqs: Vec<i64> = indexes.iter().map(|&i| replayed[i].seq).collect();
    let effects = mirror::apply(tx, SHADOW, &items, &seqs).await?;
    drop(items);
    for (i, effect) in indexes.into_iter().zip(effects) {
        if let Some(effect) = effect {
            report.applied += u64::from(effect.changes_state());
            replayed[i].now.effect = Some(effect.as_str().to_string());
        }
    }
    let mut changes = Vec::new();
    for r in &replayed {
        report.events += 1;
        if r.now != r.stored {
            if !r.now.same_event_fields(&r.stored) {
                report.redescribed += 1;
            }
            changes.push(r);
        }
    }
    if !changes.is_empty() {
        let seqs: Vec<i64> = changes.iter().map(|r| r.seq).collect();
        let kinds: Vec<&str> = changes.iter().map(|r| r.now.entity_kind.as_str()).collect();
        let ops: Vec<&str> = changes.iter().map(|r| r.now.entity_op.as_str()).collect();
        let versions: Vec<i64> = changes.iter().map(|r| r.now.version_ms).collect();
        let statuses: Vec<&str> = changes.iter().map(|r| r.now.status.as_str()).collect();
        let reasons: Vec<Option<&str>> = changes
            .iter()
            .map(|r| r.now.status_reason.as_deref())
            .collect();
        let effects: Vec<Option<&str>> = changes.iter().map(|r| r.now.effect.as_deref()).collect();
        tx.execute(
            "INSERT INTO rebuild_changes (seq, entity_kind, entity_op, version_ms, status,
                 status_reason, mirror_effect)
             SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::bigint[],
                 $5::text[], $6::text[], $7::text[])
             ON CONFLICT (seq) DO UPDATE SET entity_kind = excluded.entity_kind,
                 entity_op = excluded.entity_op, version_ms = excluded.version_ms,
                 status = excluded.status, status_reason = excluded.status_reason,
                 mirror_effect = excluded.mirror_effect",
            &[
                &seqs, &kinds, &ops, &versions, &statuses, &reasons, &effects,
            ],
        )
        .await?;
    }
    if let Some(last) = replayed.last() {
        *after = last.seq;
    }
    Ok(replayed.len())
}
