//! Applies events to the mirror tables, inside the writer's transaction (and in
//! `mirror rebuild`). The rules come from [`crate::mirror`]; this file only knows
//! the SQL.
//!
//! This runs once per ingested event on the single writer thread, so it avoids work
//! per event: each table's SQL is built once from its spec, keys are borrowed, the
//! stored row is compared with the new values while it is read (no copies), and
//! parameters are bound straight onto the statement.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use rusqlite::types::{ToSql, ToSqlOutput, Value as SqlValue, ValueRef};
use rusqlite::{Connection, Statement};

use crate::event::EntityRef;
use crate::mirror::{self, Current, Effect, FieldValue, KindSpec, MirrorData};

pub const GENERIC_TABLE: &str = "mirror_generic";

impl ToSql for FieldValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            FieldValue::Text(s) | FieldValue::Json(s) => ToSqlOutput::Borrowed(s.as_str().into()),
            other => ToSqlOutput::Owned(field_to_sql(other)),
        })
    }
}

pub fn field_to_sql(value: &FieldValue) -> SqlValue {
    match value {
        FieldValue::Null => SqlValue::Null,
        FieldValue::Integer(n) => SqlValue::Integer(*n),
        FieldValue::Real(f) => SqlValue::Real(*f),
        FieldValue::Text(s) | FieldValue::Json(s) => SqlValue::Text(s.clone()),
        FieldValue::Bool(b) => SqlValue::Integer(i64::from(*b)),
    }
}

/// Whether the stored column already holds `value` (as `field_to_sql` would store it).
fn holds(stored: ValueRef<'_>, value: &FieldValue) -> bool {
    match (stored, value) {
        (ValueRef::Null, FieldValue::Null) => true,
        (ValueRef::Integer(a), FieldValue::Integer(b)) => a == *b,
        (ValueRef::Integer(a), FieldValue::Bool(b)) => a == i64::from(*b),
        (ValueRef::Real(a), FieldValue::Real(b)) => a == *b,
        (ValueRef::Text(a), FieldValue::Text(b) | FieldValue::Json(b)) => a == b.as_bytes(),
        _ => false,
    }
}

/// The SQL of one mirror table, built once from its spec.
struct TableSql {
    table: &'static str,
    key_len: usize,
    data_columns: Vec<&'static str>,
    /// `rowid, version_ms, deleted, <data columns>` of one entity.
    select: String,
    /// A new row with its data; a new tombstone (no data).
    insert: String,
    insert_tombstone: String,
    /// `UPDATE … SET <changed columns>, version_ms, event_seq, deleted WHERE rowid`,
    /// by the bitmask of changed data columns (only a handful occur per table).
    updates: Mutex<HashMap<u64, Arc<str>>>,
    child: Option<ChildSql>,
}

struct ChildSql {
    delete: String,
    insert: String,
}

impl TableSql {
    fn build(table: &'static str, spec: Option<&'static KindSpec>) -> TableSql {
        let key: &[&str] = match spec {
            Some(_) => &["source", "tenant", "id"],
            None => &["source", "tenant", "id", "kind"],
        };
        let data_columns: Vec<&'static str> = match spec {
            Some(spec) => spec.fields.iter().map(|f| f.column).collect(),
            None => vec!["data"],
        };
        assert!(data_columns.len() <= 64, "changed columns are a u64 mask");
        let condition = numbered(key, " AND ", 1);
        let select = format!(
            "SELECT rowid, version_ms, deleted, {} FROM {table} WHERE {condition}",
            data_columns.join(", ")
        );
        let insert_into = |columns: &[&str]| {
            let names: Vec<&str> = key
                .iter()
                .chain(columns)
                .chain(&["version_ms", "event_seq", "deleted"])
                .copied()
                .collect();
            format!(
                "INSERT INTO {table} ({}) VALUES ({})",
                names.join(", "),
                placeholders(1, names.len())
            )
        };
        let child = spec.and_then(|s| s.child.as_ref()).map(|child| {
            let columns: Vec<&str> = child.fields.iter().map(|f| f.column).collect();
            ChildSql {
                delete: format!(
                    "DELETE FROM {} WHERE source = ?1 AND tenant = ?2 AND {} = ?3",
                    child.table, child.parent_column
                ),
                insert: format!(
                    "INSERT INTO {} (source, tenant, {}, position, {}) VALUES ({})",
                    child.table,
                    child.parent_column,
                    columns.join(", "),
                    placeholders(1, 4 + columns.len())
                ),
            }
        });
        TableSql {
            table,
            key_len: key.len(),
            insert: insert_into(&data_columns),
            insert_tombstone: insert_into(&[]),
            data_columns,
            select,
            updates: Mutex::default(),
            child,
        }
    }

    /// The UPDATE for this set of changed columns, built the first time it occurs.
    fn update(&self, changed: u64) -> Arc<str> {
        let mut updates = self.updates.lock().expect("update cache is never poisoned");
        let sql = updates.entry(changed).or_insert_with(|| {
            let mut sets: Vec<&str> = (0..self.data_columns.len())
                .filter(|i| changed & (1 << i) != 0)
                .map(|i| self.data_columns[i])
                .collect();
            sets.extend(["version_ms", "event_seq", "deleted"]);
            format!(
                "UPDATE {} SET {} WHERE rowid = ?{}",
                self.table,
                numbered(&sets, ", ", 1),
                sets.len() + 1
            )
            .into()
        });
        sql.clone()
    }
}

/// `a = ?1<sep>b = ?2…`
fn numbered(columns: &[&str], separator: &str, first: usize) -> String {
    columns
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{c} = ?{}", first + i))
        .collect::<Vec<_>>()
        .join(separator)
}

/// `?1, ?2, …`
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Every table's SQL: the typed kinds in `TYPED` order, then the generic table.
fn table_sql(spec: Option<&'static KindSpec>) -> &'static TableSql {
    static SQL: OnceLock<Vec<TableSql>> = OnceLock::new();
    let all = SQL.get_or_init(|| {
        let typed = mirror::kinds::TYPED.iter();
        typed
            .map(|spec| TableSql::build(spec.table, Some(spec)))
            .chain([TableSql::build(GENERIC_TABLE, None)])
            .collect()
    });
    let index = spec.map_or(mirror::kinds::TYPED.len(), |spec| {
        mirror::kinds::TYPED
            .iter()
            .position(|typed| std::ptr::eq(*typed, spec))
            .expect("every spec is in TYPED")
    });
    &all[index]
}

/// An entity's id as its table stores it: typed DreamClass ids are integers.
enum Id<'a> {
    Integer(i64),
    Text(&'a str),
}

/// Where one entity lives: its table and the values of its key columns.
struct Key<'a> {
    spec: Option<&'static KindSpec>,
    source: &'a str,
    tenant: &'a str,
    id: Id<'a>,
    kind: &'a str,
}

impl Key<'_> {
    /// Binds the key columns as parameters 1..=n (n = 3, or 4 for the generic table).
    fn bind(&self, stmt: &mut Statement<'_>, sql: &TableSql) -> rusqlite::Result<()> {
        stmt.raw_bind_parameter(1, self.source)?;
        stmt.raw_bind_parameter(2, self.tenant)?;
        match self.id {
            Id::Integer(n) => stmt.raw_bind_parameter(3, n)?,
            Id::Text(s) => stmt.raw_bind_parameter(3, s)?,
        }
        if sql.key_len == 4 {
            stmt.raw_bind_parameter(4, self.kind)?;
        }
        Ok(())
    }
}

/// The key of an event's entity, `None` when the event cannot be keyed.
fn key<'a>(
    source: &'a str,
    tenant: Option<&'a str>,
    entity: &'a EntityRef,
    data: &MirrorData,
) -> Option<Key<'a>> {
    let spec = data.spec();
    let id = entity.id.as_deref()?;
    let id = match spec {
        Some(s) if s.integer_id => Id::Integer(id.parse().ok()?),
        _ => Id::Text(id),
    };
    Some(Key {
        spec,
        source,
        tenant: tenant.unwrap_or(""),
        id,
        kind: &entity.kind,
    })
}

/// An entity's row as it stands: where it is, its rule state, and which of its data
/// columns differ from what the event would write.
struct Existing {
    rowid: i64,
    current: Current,
    changed: u64,
}

/// What an event will do to the mirror, decided before the event is inserted (so
/// the event row is written once, with its effect).
pub struct Planned<'a> {
    key: Key<'a>,
    existing: Option<Existing>,
    data: &'a MirrorData,
    pub effect: Effect,
}

/// The values an event writes into its entity's data columns (none for a tombstone).
fn new_values(data: &MirrorData) -> NewValues<'_> {
    match data {
        MirrorData::Typed { values, .. } => NewValues::Typed(values),
        MirrorData::Generic { data } => NewValues::Generic(data),
        MirrorData::Tombstone { .. } => NewValues::None,
    }
}

enum NewValues<'a> {
    Typed(&'a [FieldValue]),
    Generic(&'a str),
    None,
}

impl NewValues<'_> {
    fn len(&self) -> usize {
        match self {
            NewValues::Typed(values) => values.len(),
            NewValues::Generic(_) => 1,
            NewValues::None => 0,
        }
    }

    fn differs(&self, i: usize, stored: ValueRef<'_>) -> bool {
        match self {
            NewValues::Typed(values) => !holds(stored, &values[i]),
            NewValues::Generic(text) => stored != ValueRef::Text(text.as_bytes()),
            NewValues::None => false,
        }
    }

    fn bind(&self, stmt: &mut Statement<'_>, i: usize, at: usize) -> rusqlite::Result<()> {
        match self {
            NewValues::Typed(values) => stmt.raw_bind_parameter(at, &values[i]),
            NewValues::Generic(text) => stmt.raw_bind_parameter(at, *text),
            NewValues::None => Ok(()),
        }
    }
}

/// Reads the entity's current state and decides the event's effect (`None` when the
/// event cannot be keyed). Writes nothing.
pub fn plan<'a>(
    conn: &Connection,
    source: &'a str,
    tenant: Option<&'a str>,
    entity: &'a EntityRef,
    version_ms: i64,
    data: &'a MirrorData,
) -> rusqlite::Result<Option<Planned<'a>>> {
    let Some(key) = key(source, tenant, entity, data) else {
        return Ok(None);
    };
    let existing = read_existing(conn, &key, &new_values(data))?;
    let effect = mirror::decide(existing.as_ref().map(|e| e.current), &entity.op, version_ms);
    Ok(Some(Planned {
        key,
        existing,
        data,
        effect,
    }))
}

fn read_existing(
    conn: &Connection,
    key: &Key<'_>,
    values: &NewValues<'_>,
) -> rusqlite::Result<Option<Existing>> {
    let sql = table_sql(key.spec);
    let mut stmt = conn.prepare_cached(&sql.select)?;
    key.bind(&mut stmt, sql)?;
    let mut rows = stmt.raw_query();
    let Some(row) = rows.next()? else {
        return Ok(None);
    };
    let mut changed = 0u64;
    for i in 0..values.len() {
        if values.differs(i, row.get_ref(3 + i)?) {
            changed |= 1 << i;
        }
    }
    Ok(Some(Existing {
        rowid: row.get(0)?,
        current: Current {
            version_ms: row.get(1)?,
            deleted: row.get(2)?,
        },
        changed,
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
    let values = match (planned.effect, planned.data) {
        (Effect::Tombstoned, _) => NewValues::None,
        (Effect::Applied, data @ (MirrorData::Typed { .. } | MirrorData::Generic { .. })) => {
            new_values(data)
        }
        // `prepare` makes tombstone data only for `deleted` events, which never apply.
        (Effect::Applied, MirrorData::Tombstone { .. }) | (Effect::Stale | Effect::Blocked, _) => {
            return Ok(());
        }
    };
    let deleted = planned.effect == Effect::Tombstoned;
    write(conn, planned, &values, version_ms, seq, deleted)?;
    if let MirrorData::Typed { children, .. } = planned.data
        && !deleted
    {
        replace_children(conn, &planned.key, children)?;
    }
    Ok(())
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

/// Inserts the row, or updates only the columns whose values changed: an update
/// that leaves an indexed column alone leaves its index alone too.
fn write(
    conn: &Connection,
    planned: &Planned<'_>,
    values: &NewValues<'_>,
    version_ms: i64,
    seq: i64,
    deleted: bool,
) -> rusqlite::Result<()> {
    let key = &planned.key;
    let sql = table_sql(key.spec);
    let Some(existing) = &planned.existing else {
        let text = match values {
            NewValues::None => &sql.insert_tombstone,
            _ => &sql.insert,
        };
        let mut stmt = conn.prepare_cached(text)?;
        key.bind(&mut stmt, sql)?;
        let mut at = sql.key_len + 1;
        for i in 0..values.len() {
            values.bind(&mut stmt, i, at)?;
            at += 1;
        }
        bind_meta(&mut stmt, at, version_ms, seq, deleted)?;
        stmt.raw_execute()?;
        return Ok(());
    };
    let changed = match values {
        NewValues::None => 0,
        _ => existing.changed,
    };
    let mut stmt = conn.prepare_cached(&sql.update(changed))?;
    let mut at = 1;
    for i in (0..values.len()).filter(|i| changed & (1 << i) != 0) {
        values.bind(&mut stmt, i, at)?;
        at += 1;
    }
    bind_meta(&mut stmt, at, version_ms, seq, deleted)?;
    stmt.raw_bind_parameter(at + 3, existing.rowid)?;
    stmt.raw_execute()?;
    Ok(())
}

/// `version_ms, event_seq, deleted` as parameters `at..at + 3`.
fn bind_meta(
    stmt: &mut Statement<'_>,
    at: usize,
    version_ms: i64,
    seq: i64,
    deleted: bool,
) -> rusqlite::Result<()> {
    stmt.raw_bind_parameter(at, version_ms)?;
    stmt.raw_bind_parameter(at + 1, seq)?;
    stmt.raw_bind_parameter(at + 2, deleted)
}

/// A course's plans: the child rows are replaced with the event's array.
fn replace_children(
    conn: &Connection,
    key: &Key<'_>,
    children: &[Vec<FieldValue>],
) -> rusqlite::Result<()> {
    let sql = table_sql(key.spec);
    let Some(child) = &sql.child else {
        return Ok(());
    };
    let mut delete = conn.prepare_cached(&child.delete)?;
    key.bind(&mut delete, sql)?;
    delete.raw_execute()?;
    let mut insert = conn.prepare_cached(&child.insert)?;
    for (position, values) in children.iter().enumerate() {
        key.bind(&mut insert, sql)?;
        insert.raw_bind_parameter(4, position as i64)?;
        for (i, value) in values.iter().enumerate() {
            insert.raw_bind_parameter(5 + i, value)?;
        }
        insert.raw_execute()?;
    }
    Ok(())
}

/// Whether `table` holds a typed kind's child rows (a course's plans), keyed by its
/// parent and position rather than a rowid.
pub fn is_child_table(table: &str) -> bool {
    mirror::kinds::TYPED
        .iter()
        .filter_map(|s| s.child.as_ref())
        .any(|c| c.table == table)
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
