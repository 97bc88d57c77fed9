//! Applies events to the mirror tables, inside the writer's transaction (and in
//! `mirror rebuild`). The rules come from [`crate::mirror`]; this file only knows
//! the SQL.

use rusqlite::types::{ToSql, ToSqlOutput, Value as SqlValue};
use rusqlite::{Connection, OptionalExtension, params_from_iter};

use crate::event::EntityRef;
use crate::mirror::{self, Current, Effect, FieldValue, KindSpec, MirrorData};

pub const GENERIC_TABLE: &str = "mirror_generic";

impl ToSql for FieldValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            FieldValue::Null => ToSqlOutput::Owned(SqlValue::Null),
            FieldValue::Integer(n) => ToSqlOutput::Owned(SqlValue::Integer(*n)),
            FieldValue::Text(s) => ToSqlOutput::Borrowed(s.as_str().into()),
            FieldValue::Bool(b) => ToSqlOutput::Owned(SqlValue::Integer(i64::from(*b))),
        })
    }
}

/// Where one entity lives: its table and the values of its key columns.
struct Row<'a> {
    spec: Option<&'static KindSpec>,
    key: Vec<SqlValue>,
    entity: &'a EntityRef,
}

impl Row<'_> {
    fn table(&self) -> &'static str {
        self.spec.map_or(GENERIC_TABLE, |s| s.table)
    }

    /// `source = ?1 AND tenant = ?2 AND id = ?3 [AND kind = ?4]`
    fn key_condition(&self) -> &'static str {
        if self.spec.is_some() {
            "source = ?1 AND tenant = ?2 AND id = ?3"
        } else {
            "source = ?1 AND tenant = ?2 AND id = ?3 AND kind = ?4"
        }
    }

    fn key_columns(&self) -> &'static str {
        if self.spec.is_some() {
            "source, tenant, id"
        } else {
            "source, tenant, id, kind"
        }
    }
}

/// The key of an entity: typed DreamClass ids are integers; everything else text.
fn row<'a>(
    source: &str,
    tenant: Option<&str>,
    entity: &'a EntityRef,
    data: &MirrorData,
) -> Option<Row<'a>> {
    let spec = data.spec();
    let id = entity.id.as_deref()?;
    let id = match spec {
        Some(s) if s.integer_id => SqlValue::Integer(id.parse().ok()?),
        _ => SqlValue::Text(id.to_string()),
    };
    let mut key = vec![
        SqlValue::Text(source.to_string()),
        SqlValue::Text(tenant.unwrap_or("").to_string()),
        id,
    ];
    if spec.is_none() {
        key.push(SqlValue::Text(entity.kind.clone()));
    }
    Some(Row { spec, key, entity })
}

/// Applies one stored event to the mirror and returns what it did (`None` when the
/// event cannot be keyed). `seq` must be greater than every event applied before.
pub fn apply(
    conn: &Connection,
    source: &str,
    tenant: Option<&str>,
    entity: &EntityRef,
    version_ms: i64,
    seq: i64,
    data: &MirrorData,
) -> rusqlite::Result<Option<Effect>> {
    let Some(row) = row(source, tenant, entity, data) else {
        return Ok(None);
    };
    let current = conn
        .prepare_cached(&format!(
            "SELECT version_ms, deleted FROM {} WHERE {}",
            row.table(),
            row.key_condition()
        ))?
        .query_row(params_from_iter(&row.key), |r| {
            Ok(Current {
                version_ms: r.get(0)?,
                deleted: r.get(1)?,
            })
        })
        .optional()?;
    let effect = mirror::decide(current, &row.entity.op, version_ms);
    match (effect, data) {
        (Effect::Tombstoned, _) => tombstone(conn, &row, version_ms, seq)?,
        (
            Effect::Applied,
            MirrorData::Typed {
                values, children, ..
            },
        ) => {
            upsert(conn, &row, values, version_ms, seq)?;
            replace_children(conn, &row, children)?;
        }
        (Effect::Applied, MirrorData::Generic { data }) => {
            upsert(
                conn,
                &row,
                &[FieldValue::Text(data.clone())],
                version_ms,
                seq,
            )?;
        }
        // A `created` whose data is a tombstone cannot happen: `prepare` only makes
        // tombstones of `deleted` events.
        (Effect::Applied, MirrorData::Tombstone { .. }) | (Effect::Stale | Effect::Blocked, _) => {}
    }
    Ok(Some(effect))
}

fn data_columns(row: &Row<'_>) -> Vec<&'static str> {
    match row.spec {
        Some(spec) => spec.fields.iter().map(|f| f.column).collect(),
        None => vec!["data"],
    }
}

fn upsert(
    conn: &Connection,
    row: &Row<'_>,
    values: &[FieldValue],
    version_ms: i64,
    seq: i64,
) -> rusqlite::Result<()> {
    let columns = data_columns(row);
    let key_count = row.key.len();
    let placeholders: Vec<String> = (1..=key_count + columns.len() + 2)
        .map(|i| format!("?{i}"))
        .collect();
    let updates: Vec<String> = columns
        .iter()
        .chain(["version_ms", "event_seq"].iter())
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    let sql = format!(
        "INSERT INTO {table} ({keys}, {columns}, version_ms, event_seq, deleted) VALUES ({placeholders}, 0)
         ON CONFLICT ({keys}) DO UPDATE SET {updates}, deleted = 0",
        table = row.table(),
        keys = row.key_columns(),
        columns = columns.join(", "),
        placeholders = placeholders.join(", "),
        updates = updates.join(", "),
    );
    let mut args: Vec<&dyn ToSql> = row.key.iter().map(|v| v as &dyn ToSql).collect();
    args.extend(values.iter().map(|v| v as &dyn ToSql));
    args.push(&version_ms);
    args.push(&seq);
    conn.prepare_cached(&sql)?.execute(args.as_slice())?;
    Ok(())
}

fn tombstone(conn: &Connection, row: &Row<'_>, version_ms: i64, seq: i64) -> rusqlite::Result<()> {
    let key_count = row.key.len();
    let sql = format!(
        "INSERT INTO {table} ({keys}, version_ms, event_seq, deleted) VALUES ({placeholders}, ?{v}, ?{s}, 1)
         ON CONFLICT ({keys}) DO UPDATE SET version_ms = excluded.version_ms,
             event_seq = excluded.event_seq, deleted = 1",
        table = row.table(),
        keys = row.key_columns(),
        placeholders = (1..=key_count).map(|i| format!("?{i}")).collect::<Vec<_>>().join(", "),
        v = key_count + 1,
        s = key_count + 2,
    );
    let mut args: Vec<&dyn ToSql> = row.key.iter().map(|v| v as &dyn ToSql).collect();
    args.push(&version_ms);
    args.push(&seq);
    conn.prepare_cached(&sql)?.execute(args.as_slice())?;
    Ok(())
}

/// A course's plans: the child rows are replaced with the event's array.
fn replace_children(
    conn: &Connection,
    row: &Row<'_>,
    children: &[Vec<FieldValue>],
) -> rusqlite::Result<()> {
    let Some(child) = row.spec.and_then(|s| s.child.as_ref()) else {
        return Ok(());
    };
    conn.prepare_cached(&format!(
        "DELETE FROM {} WHERE source = ?1 AND tenant = ?2 AND {} = ?3",
        child.table, child.parent_column
    ))?
    .execute(params_from_iter(&row.key[..3]))?;
    let columns: Vec<&str> = child.fields.iter().map(|f| f.column).collect();
    let sql = format!(
        "INSERT INTO {} (source, tenant, {}, position, {}) VALUES ({})",
        child.table,
        child.parent_column,
        columns.join(", "),
        (1..=4 + columns.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    for (position, values) in children.iter().enumerate() {
        let position = position as i64;
        let mut args: Vec<&dyn ToSql> = row.key[..3].iter().map(|v| v as &dyn ToSql).collect();
        args.push(&position);
        args.extend(values.iter().map(|v| v as &dyn ToSql));
        stmt.execute(args.as_slice())?;
    }
    Ok(())
}

/// Every mirror table, for rebuilds and counts.
pub fn all_tables() -> Vec<&'static str> {
    let mut tables: Vec<&'static str> = mirror::kinds::TYPED.iter().map(|s| s.table).collect();
    tables.extend(
        mirror::kinds::TYPED
            .iter()
            .filter_map(|s| s.child.as_ref().map(|c| c.table)),
    );
    tables.push(GENERIC_TABLE);
    tables
}
