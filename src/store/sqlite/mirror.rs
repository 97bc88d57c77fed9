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
            FieldValue::Text(s) => ToSqlOutput::Borrowed(s.as_str().into()),
            other => ToSqlOutput::Owned(field_to_sql(other)),
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

/// An entity's row as it stands: where it is, its rule state and its data columns.
struct Existing {
    rowid: i64,
    current: Current,
    columns: Vec<SqlValue>,
}

/// What an event will do to the mirror, decided before the event is inserted (so
/// the event row is written once, with its effect).
pub struct Planned<'a> {
    row: Row<'a>,
    existing: Option<Existing>,
    data: &'a MirrorData,
    pub effect: Effect,
}

/// Reads the entity's current state and decides the event's effect (`None` when the
/// event cannot be keyed). Writes nothing.
pub fn plan<'a>(
    conn: &Connection,
    source: &str,
    tenant: Option<&str>,
    entity: &'a EntityRef,
    version_ms: i64,
    data: &'a MirrorData,
) -> rusqlite::Result<Option<Planned<'a>>> {
    let Some(row) = row(source, tenant, entity, data) else {
        return Ok(None);
    };
    let existing = read_existing(conn, &row)?;
    let effect = mirror::decide(
        existing.as_ref().map(|e| e.current),
        &row.entity.op,
        version_ms,
    );
    Ok(Some(Planned {
        row,
        existing,
        data,
        effect,
    }))
}

/// Writes a planned effect for the stored event `seq`, which must be greater than
/// every event applied before.
pub fn carry_out(
    conn: &Connection,
    planned: &Planned<'_>,
    version_ms: i64,
    seq: i64,
) -> rusqlite::Result<()> {
    let (row, existing) = (&planned.row, planned.existing.as_ref());
    match (planned.effect, planned.data) {
        (Effect::Tombstoned, _) => write(conn, row, existing, &[], version_ms, seq, true),
        (
            Effect::Applied,
            MirrorData::Typed {
                values, children, ..
            },
        ) => {
            let values: Vec<SqlValue> = values.iter().map(field_to_sql).collect();
            write(conn, row, existing, &values, version_ms, seq, false)?;
            replace_children(conn, row, children)
        }
        (Effect::Applied, MirrorData::Generic { data }) => write(
            conn,
            row,
            existing,
            &[SqlValue::Text(data.clone())],
            version_ms,
            seq,
            false,
        ),
        // `prepare` makes tombstone data only for `deleted` events, which never apply.
        (Effect::Applied, MirrorData::Tombstone { .. }) | (Effect::Stale | Effect::Blocked, _) => {
            Ok(())
        }
    }
}

/// Plans and carries out in one step, for events already stored (`mirror rebuild`).
pub fn apply(
    conn: &Connection,
    source: &str,
    tenant: Option<&str>,
    entity: &EntityRef,
    version_ms: i64,
    seq: i64,
    data: &MirrorData,
) -> rusqlite::Result<Option<Effect>> {
    let Some(planned) = plan(conn, source, tenant, entity, version_ms, data)? else {
        return Ok(None);
    };
    carry_out(conn, &planned, version_ms, seq)?;
    Ok(Some(planned.effect))
}

pub fn field_to_sql(value: &FieldValue) -> SqlValue {
    match value {
        FieldValue::Null => SqlValue::Null,
        FieldValue::Integer(n) => SqlValue::Integer(*n),
        FieldValue::Text(s) => SqlValue::Text(s.clone()),
        FieldValue::Bool(b) => SqlValue::Integer(i64::from(*b)),
    }
}

fn data_columns(row: &Row<'_>) -> Vec<&'static str> {
    match row.spec {
        Some(spec) => spec.fields.iter().map(|f| f.column).collect(),
        None => vec!["data"],
    }
}

fn read_existing(conn: &Connection, row: &Row<'_>) -> rusqlite::Result<Option<Existing>> {
    let columns = data_columns(row);
    let sql = format!(
        "SELECT rowid, version_ms, deleted, {} FROM {} WHERE {}",
        columns.join(", "),
        row.table(),
        row.key_condition()
    );
    conn.prepare_cached(&sql)?
        .query_row(params_from_iter(&row.key), |r| {
            Ok(Existing {
                rowid: r.get(0)?,
                current: Current {
                    version_ms: r.get(1)?,
                    deleted: r.get(2)?,
                },
                columns: (0..columns.len())
                    .map(|i| r.get(3 + i))
                    .collect::<rusqlite::Result<_>>()?,
            })
        })
        .optional()
}

/// Inserts the row, or updates only the columns whose values changed: an update
/// that leaves an indexed column alone leaves its index alone too.
fn write(
    conn: &Connection,
    row: &Row<'_>,
    existing: Option<&Existing>,
    values: &[SqlValue],
    version_ms: i64,
    seq: i64,
    deleted: bool,
) -> rusqlite::Result<()> {
    let columns = data_columns(row);
    let Some(existing) = existing else {
        let written: Vec<&str> = if values.is_empty() {
            Vec::new()
        } else {
            columns
        };
        let mut names: Vec<&str> = row.key_columns().split(", ").collect();
        names.extend(&written);
        names.extend(["version_ms", "event_seq", "deleted"]);
        let sql = format!(
            "INSERT INTO {} ({}) VALUES ({})",
            row.table(),
            names.join(", "),
            (1..=names.len())
                .map(|i| format!("?{i}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        let mut args: Vec<&dyn ToSql> = row.key.iter().map(|v| v as &dyn ToSql).collect();
        args.extend(values.iter().map(|v| v as &dyn ToSql));
        args.push(&version_ms);
        args.push(&seq);
        args.push(&deleted);
        conn.prepare_cached(&sql)?.execute(args.as_slice())?;
        return Ok(());
    };
    let changed: Vec<usize> = (0..values.len())
        .filter(|&i| existing.columns.get(i) != Some(&values[i]))
        .collect();
    let mut sets: Vec<String> = changed
        .iter()
        .enumerate()
        .map(|(n, &i)| format!("{} = ?{}", columns[i], n + 1))
        .collect();
    let n = changed.len();
    sets.push(format!("version_ms = ?{}", n + 1));
    sets.push(format!("event_seq = ?{}", n + 2));
    sets.push(format!("deleted = ?{}", n + 3));
    let sql = format!(
        "UPDATE {} SET {} WHERE rowid = ?{}",
        row.table(),
        sets.join(", "),
        n + 4
    );
    let mut args: Vec<&dyn ToSql> = changed.iter().map(|&i| &values[i] as &dyn ToSql).collect();
    args.push(&version_ms);
    args.push(&seq);
    args.push(&deleted);
    args.push(&existing.rowid);
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
