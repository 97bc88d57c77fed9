//! Applies a batch of events to the mirror tables with a few set-based statements:
//! per table, one query loads (and locks) the current rows of every entity the batch
//! touches, [`crate::mirror::decide`] runs in memory in receive order ([`plan`]), and
//! one upsert writes each changed entity's final row ([`Plan::write`]). Planning
//! needs no sequence numbers, so an event's effect is known before the event is
//! inserted and written with it. The rules are [`crate::mirror`]'s; this file only
//! knows the SQL.

use std::collections::HashMap;

use tokio_postgres::Row;

use super::sql::{Param, refs};
use crate::event::EntityRef;
use crate::mirror::{self, Current, Effect, FieldType, FieldValue, KindSpec, MirrorData};

pub const GENERIC_TABLE: &str = "mirror_generic";

/// One event to apply, in receive order.
pub struct Item<'a> {
    pub source: &'a str,
    pub tenant: Option<&'a str>,
    pub entity: &'a EntityRef,
    pub version_ms: i64,
    pub data: &'a MirrorData,
}

/// Which tables to write: the live ones, or a rebuild's shadow copies (`prefix`).
#[derive(Clone, Copy)]
pub struct Tables {
    pub prefix: &'static str,
}

impl Tables {
    pub const LIVE: Tables = Tables { prefix: "" };

    pub fn name(self, table: &str) -> String {
        format!("{}{table}", self.prefix)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Id {
    Integer(i64),
    Text(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    source: String,
    tenant: String,
    id: Id,
    /// Only in the generic table (empty otherwise).
    kind: String,
}

/// The event an entity's row holds: as loaded, or the batch's item that last
/// changed it (whose seq is known once the event is inserted).
#[derive(Clone, Copy)]
enum Holder {
    Loaded(i64),
    Item(usize),
}

/// An entity's row as the batch leaves it.
struct State {
    current: Option<Current>,
    holder: Holder,
    /// One value per data column (`data` for the generic table).
    values: Vec<FieldValue>,
    changed: bool,
    /// New child rows, when an applied event replaced them.
    children: Option<Vec<Vec<FieldValue>>>,
}

/// The key of an event's entity, `None` when the event cannot be keyed.
fn key(item: &Item<'_>) -> Option<Key> {
    let spec = item.data.spec();
    let id = item.entity.id.as_deref()?;
    let id = match spec {
        Some(s) if s.integer_id => Id::Integer(id.parse().ok()?),
        _ => Id::Text(id.to_string()),
    };
    Some(Key {
        source: item.source.to_string(),
        tenant: item.tenant.unwrap_or("").to_string(),
        id,
        kind: match spec {
            Some(_) => String::new(),
            None => item.entity.kind.clone(),
        },
    })
}

/// The data columns of a table: (name, type); the generic table has `data` (JSON text).
fn data_columns(spec: Option<&'static KindSpec>) -> Vec<(&'static str, FieldType)> {
    match spec {
        Some(spec) => spec.fields.iter().map(|f| (f.column, f.ty)).collect(),
        None => vec![("data", FieldType::Json)],
    }
}

/// A column as selected: NUMERIC as text, so that integers and reals come back as given.
pub fn select_column(column: &str, ty: FieldType) -> String {
    match ty {
        FieldType::Number => format!("{column}::text"),
        _ => column.to_string(),
    }
}

/// Reads a column selected by [`select_column`].
pub fn read_field(
    row: &Row,
    index: usize,
    ty: FieldType,
) -> Result<FieldValue, tokio_postgres::Error> {
    Ok(match ty {
        FieldType::Integer => row
            .try_get::<_, Option<i64>>(index)?
            .map_or(FieldValue::Null, FieldValue::Integer),
        FieldType::Bool => row
            .try_get::<_, Option<bool>>(index)?
            .map_or(FieldValue::Null, FieldValue::Bool),
        FieldType::Number => match row.try_get::<_, Option<String>>(index)? {
            None => FieldValue::Null,
            Some(text) => match (text.parse::<i64>(), text.parse::<f64>()) {
                (Ok(n), _) => FieldValue::Integer(n),
                (Err(_), Ok(f)) => FieldValue::Real(f),
                (Err(_), Err(_)) => FieldValue::Text(text),
            },
        },
        FieldType::Json => row
            .try_get::<_, Option<String>>(index)?
            .map_or(FieldValue::Null, FieldValue::Json),
        FieldType::Text | FieldType::Date | FieldType::DateTime => row
            .try_get::<_, Option<String>>(index)?
            .map_or(FieldValue::Null, FieldValue::Text),
    })
}

/// One column of values as an array parameter of its column's type, and the cast
/// that `UNNEST` needs.
fn column_array(ty: FieldType, values: Vec<&FieldValue>) -> (Param, &'static str) {
    match ty {
        FieldType::Integer => (
            Box::new(
                values
                    .into_iter()
                    .map(|v| match v {
                        FieldValue::Integer(n) => Some(*n),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            "bigint[]",
        ),
        FieldType::Bool => (
            Box::new(
                values
                    .into_iter()
                    .map(|v| match v {
                        FieldValue::Bool(b) => Some(*b),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            "boolean[]",
        ),
        FieldType::Number => (
            Box::new(
                values
                    .into_iter()
                    .map(|v| match v {
                        FieldValue::Integer(n) => Some(n.to_string()),
                        FieldValue::Real(f) => {
                            serde_json::Number::from_f64(*f).map(|n| n.to_string())
                        }
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            "numeric[]",
        ),
        FieldType::Text | FieldType::Date | FieldType::DateTime | FieldType::Json => (
            Box::new(
                values
                    .into_iter()
                    .map(|v| match v {
                        FieldValue::Text(s) | FieldValue::Json(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect::<Vec<_>>(),
            ),
            "text[]",
        ),
    }
}

/// The array parameter for a numeric column is text (cast in SQL).
fn param_cast(cast: &str) -> &str {
    match cast {
        "numeric[]" => "text[]",
        other => other,
    }
}

/// A table's items of a batch: (item index, entity key), in receive order.
type TableItems = (Option<&'static KindSpec>, Vec<(usize, Key)>);

/// What a batch does to the mirror: each item's effect (`None`: it could not be
/// keyed), and the final rows to write.
pub struct Plan {
    effects: Vec<Option<Effect>>,
    tables: Vec<TablePlan>,
}

struct TablePlan {
    spec: Option<&'static KindSpec>,
    columns: Vec<(&'static str, FieldType)>,
    /// Distinct keys in order of first appearance: new entities get positions in
    /// receive order.
    order: Vec<Key>,
    states: HashMap<Key, State>,
}

/// Loads (and locks) the entities `items` touch and decides, in receive order, what
/// each item does. Writes nothing.
pub async fn plan(
    tx: &deadpool_postgres::Transaction<'_>,
    tables: Tables,
    items: &[Item<'_>],
) -> Result<Plan, tokio_postgres::Error> {
    let mut effects = vec![None; items.len()];
    // Items by table, each list in receive order.
    let mut by_table: Vec<TableItems> = Vec::new();
    for (index, item) in items.iter().enumerate() {
        let Some(key) = key(item) else { continue };
        let spec = item.data.spec();
        let slot = match by_table
            .iter()
            .position(|(s, _)| s.map(|s| s.table) == spec.map(|s| s.table))
        {
            Some(slot) => slot,
            None => {
                by_table.push((spec, Vec::new()));
                by_table.len() - 1
            }
        };
        by_table[slot].1.push((index, key));
    }
    let mut planned = Vec::with_capacity(by_table.len());
    for (spec, keyed) in by_table {
        planned.push(plan_table(tx, tables, spec, items, &keyed, &mut effects).await?);
    }
    Ok(Plan {
        effects,
        tables: planned,
    })
}

/// Plans and writes in one step, for events already stored (`mirror rebuild`):
/// `seqs[i]` is item `i`'s event.
pub async fn apply(
    tx: &deadpool_postgres::Transaction<'_>,
    tables: Tables,
    items: &[Item<'_>],
    seqs: &[i64],
) -> Result<Vec<Option<Effect>>, tokio_postgres::Error> {
    let plan = plan(tx, tables, items).await?;
    plan.write(tx, tables, seqs).await?;
    Ok(plan.effects)
}

impl Plan {
    pub fn effects(&self) -> &[Option<Effect>] {
        &self.effects
    }

    /// Writes the final row of every changed entity; `seqs[i]` is the stored event
    /// of item `i` (only items that changed an entity are looked up).
    pub async fn write(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        tables: Tables,
        seqs: &[i64],
    ) -> Result<(), tokio_postgres::Error> {
        for table in &self.tables {
            table.write(tx, tables, seqs).await?;
        }
        Ok(())
    }
}

async fn plan_table(
    tx: &deadpool_postgres::Transaction<'_>,
    tables: Tables,
    spec: Option<&'static KindSpec>,
    items: &[Item<'_>],
    keyed: &[(usize, Key)],
    effects: &mut [Option<Effect>],
) -> Result<TablePlan, tokio_postgres::Error> {
    let columns = data_columns(spec);
    let mut order: Vec<Key> = Vec::new();
    let mut states: HashMap<Key, State> = HashMap::new();
    for (_, key) in keyed {
        if !states.contains_key(key) {
            states.insert(
                key.clone(),
                State {
                    current: None,
                    holder: Holder::Loaded(0),
                    values: vec![FieldValue::Null; columns.len()],
                    changed: false,
                    children: None,
                },
            );
            order.push(key.clone());
        }
    }
    load(tx, tables, spec, &columns, &order, &mut states).await?;
    for (index, key) in keyed {
        let item = &items[*index];
        let state = states.get_mut(key).expect("every key has a state");
        let effect = mirror::decide(state.current, &item.entity.op, item.version_ms);
        effects[*index] = Some(effect);
        match (effect, item.data) {
            (Effect::Tombstoned, _) => {
                // A tombstone keeps the data columns it had (none for a new one).
            }
            (
                Effect::Applied,
                MirrorData::Typed {
                    values, children, ..
                },
            ) => {
                state.values = values.clone();
                if spec.is_some_and(|s| s.child.is_some()) {
                    state.children = Some(children.clone());
                }
            }
            (Effect::Applied, MirrorData::Generic { data }) => {
                state.values = vec![FieldValue::Json(data.clone())];
            }
            // `prepare` makes tombstone data only for `deleted` events, which never apply.
            (Effect::Applied, MirrorData::Tombstone { .. })
            | (Effect::Stale | Effect::Blocked, _) => {
                continue;
            }
        }
        state.current = Some(Current {
            version_ms: item.version_ms,
            deleted: effect == Effect::Tombstoned,
        });
        state.holder = Holder::Item(*index);
        state.changed = true;
    }
    Ok(TablePlan {
        spec,
        columns,
        order,
        states,
    })
}

impl TablePlan {
    async fn write(
        &self,
        tx: &deadpool_postgres::Transaction<'_>,
        tables: Tables,
        seqs: &[i64],
    ) -> Result<(), tokio_postgres::Error> {
        let (spec, columns, order, states) = (self.spec, &self.columns, &self.order, &self.states);
        let changed: Vec<&Key> = order.iter().filter(|k| states[*k].changed).collect();
        if changed.is_empty() {
            return Ok(());
        }
        upsert(tx, tables, spec, columns, &changed, states, seqs).await?;
        if let Some(child) = spec.and_then(|s| s.child.as_ref()) {
            let replaced: Vec<&Key> = changed
                .iter()
                .copied()
                .filter(|k| states[*k].children.is_some())
                .collect();
            if !replaced.is_empty() {
                replace_children(tx, tables, child, &replaced, states).await?;
            }
        }
        Ok(())
    }
}

/// Key columns as array parameters: source, tenant, id (and kind for the generic table).
fn key_arrays(spec: Option<&'static KindSpec>, keys: &[&Key]) -> (Vec<Param>, Vec<&'static str>) {
    let mut params: Vec<Param> = vec![
        Box::new(keys.iter().map(|k| k.source.clone()).collect::<Vec<_>>()),
        Box::new(keys.iter().map(|k| k.tenant.clone()).collect::<Vec<_>>()),
    ];
    let mut casts = vec!["text[]", "text[]"];
    if spec.is_some_and(|s| s.integer_id) {
        params.push(Box::new(
            keys.iter()
                .map(|k| match &k.id {
                    Id::Integer(n) => *n,
                    Id::Text(_) => unreachable!("integer-id tables have integer keys"),
                })
                .collect::<Vec<i64>>(),
        ));
        casts.push("bigint[]");
    } else {
        params.push(Box::new(
            keys.iter()
                .map(|k| match &k.id {
                    Id::Integer(n) => n.to_string(),
                    Id::Text(s) => s.clone(),
                })
                .collect::<Vec<String>>(),
        ));
        casts.push("text[]");
    }
    if spec.is_none() {
        params.push(Box::new(
            keys.iter().map(|k| k.kind.clone()).collect::<Vec<_>>(),
        ));
        casts.push("text[]");
    }
    (params, casts)
}

fn key_names(spec: Option<&'static KindSpec>) -> &'static [&'static str] {
    match spec {
        Some(_) => &["source", "tenant", "id"],
        None => &["source", "tenant", "id", "kind"],
    }
}

fn table_name(spec: Option<&'static KindSpec>) -> &'static str {
    spec.map_or(GENERIC_TABLE, |s| s.table)
}

/// Reads (and locks, against another instance's writer) the current rows of `keys`.
async fn load(
    tx: &deadpool_postgres::Transaction<'_>,
    tables: Tables,
    spec: Option<&'static KindSpec>,
    columns: &[(&'static str, FieldType)],
    keys: &[Key],
    states: &mut HashMap<Key, State>,
) -> Result<(), tokio_postgres::Error> {
    let names = key_names(spec);
    let refs_keys: Vec<&Key> = keys.iter().collect();
    let (params, casts) = key_arrays(spec, &refs_keys);
    let unnest: Vec<String> = casts
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{c}", i + 1))
        .collect();
    let selected: Vec<String> = columns.iter().map(|(c, t)| select_column(c, *t)).collect();
    // One index probe per entity (a LATERAL subquery), whatever the planner guesses
    // about an array's length.
    let matches: Vec<String> = names.iter().map(|n| format!("t.{n} = u.{n}")).collect();
    let sql = format!(
        "SELECT m.* FROM UNNEST({unnest}) AS u({keys})
         CROSS JOIN LATERAL (
             SELECT {keys}, version_ms, deleted, event_seq, {data} FROM {table} AS t
             WHERE {matches} FOR UPDATE
         ) AS m",
        keys = names.join(", "),
        data = selected.join(", "),
        table = tables.name(table_name(spec)),
        unnest = unnest.join(", "),
        matches = matches.join(" AND "),
    );
    let statement = tx.prepare_cached(&sql).await?;
    for row in tx.query(&statement, &refs(&params)).await? {
        let id = if spec.is_some_and(|s| s.integer_id) {
            Id::Integer(row.try_get(2)?)
        } else {
            Id::Text(row.try_get(2)?)
        };
        let key = Key {
            source: row.try_get(0)?,
            tenant: row.try_get(1)?,
            id,
            kind: if spec.is_none() {
                row.try_get(3)?
            } else {
                String::new()
            },
        };
        let at = names.len();
        let Some(state) = states.get_mut(&key) else {
            continue;
        };
        state.current = Some(Current {
            version_ms: row.try_get(at)?,
            deleted: row.try_get(at + 1)?,
        });
        state.holder = Holder::Loaded(row.try_get(at + 2)?);
        for (i, (_, ty)) in columns.iter().enumerate() {
            state.values[i] = read_field(&row, at + 3 + i, *ty)?;
        }
    }
    Ok(())
}

/// Writes the final row of every changed entity: inserted in receive order (new
/// entities get their positions), or updated in place (positions kept).
async fn upsert(
    tx: &deadpool_postgres::Transaction<'_>,
    tables: Tables,
    spec: Option<&'static KindSpec>,
    columns: &[(&'static str, FieldType)],
    keys: &[&Key],
    states: &HashMap<Key, State>,
    seqs: &[i64],
) -> Result<(), tokio_postgres::Error> {
    let names = key_names(spec);
    let (mut params, mut casts) = key_arrays(spec, keys);
    for (i, (_, ty)) in columns.iter().enumerate() {
        let (array, cast) = column_array(*ty, keys.iter().map(|k| &states[*k].values[i]).collect());
        params.push(array);
        casts.push(cast);
    }
    let current = |k: &&Key| states[*k].current.expect("a changed entity has a state");
    params.push(Box::new(
        keys.iter()
            .map(|k| current(k).version_ms)
            .collect::<Vec<i64>>(),
    ));
    params.push(Box::new(
        keys.iter()
            .map(|k| match states[*k].holder {
                Holder::Loaded(seq) => seq,
                Holder::Item(index) => seqs[index],
            })
            .collect::<Vec<i64>>(),
    ));
    params.push(Box::new(
        keys.iter()
            .map(|k| current(k).deleted)
            .collect::<Vec<bool>>(),
    ));
    casts.extend(["bigint[]", "bigint[]", "boolean[]"]);
    let mut all: Vec<&str> = names.to_vec();
    all.extend(columns.iter().map(|(c, _)| *c));
    all.extend(["version_ms", "event_seq", "deleted"]);
    let unnest: Vec<String> = casts
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", i + 1, param_cast(c)))
        .collect();
    let selected: Vec<String> = all
        .iter()
        .zip(&casts)
        .map(|(name, cast)| match *cast {
            "numeric[]" => format!("u.{name}::numeric"),
            _ => format!("u.{name}"),
        })
        .collect();
    let conflict: Vec<&str> = match spec {
        Some(_) => vec!["id", "source", "tenant"],
        None => vec!["kind", "id", "source", "tenant"],
    };
    let updates: Vec<String> = all[names.len()..]
        .iter()
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    let sql = format!(
        "INSERT INTO {table} ({all})
         SELECT {selected} FROM UNNEST({unnest}) WITH ORDINALITY AS u({all}, ord) ORDER BY ord
         ON CONFLICT ({conflict}) DO UPDATE SET {updates}",
        table = tables.name(table_name(spec)),
        all = all.join(", "),
        selected = selected.join(", "),
        unnest = unnest.join(", "),
        conflict = conflict.join(", "),
        updates = updates.join(", "),
    );
    let statement = tx.prepare_cached(&sql).await?;
    tx.execute(&statement, &refs(&params)).await?;
    Ok(())
}

/// A course's plans: the child rows of each entity are replaced with its last
/// applied event's array.
async fn replace_children(
    tx: &deadpool_postgres::Transaction<'_>,
    tables: Tables,
    child: &'static mirror::kinds::ChildSpec,
    keys: &[&Key],
    states: &HashMap<Key, State>,
) -> Result<(), tokio_postgres::Error> {
    let table = tables.name(child.table);
    let text_id = |k: &Key| match &k.id {
        Id::Integer(n) => n.to_string(),
        Id::Text(s) => s.clone(),
    };
    let sources: Vec<String> = keys.iter().map(|k| k.source.clone()).collect();
    let tenants: Vec<String> = keys.iter().map(|k| k.tenant.clone()).collect();
    let ids: Vec<String> = keys.iter().map(|k| text_id(k)).collect();
    // The rows are found by one probe of the key per entity (the fenced LATERAL
    // cannot be turned into a scan of the table joined to the keys, which a plan
    // cached while the table was tiny would otherwise choose), then deleted by row
    // address.
    let delete = tx
        .prepare_cached(&format!(
            "DELETE FROM {table} WHERE ctid = ANY (ARRAY(
                 SELECT c.ctid FROM UNNEST($1::text[], $2::text[], $3::text[])
                     AS u(source, tenant, parent)
                 CROSS JOIN LATERAL (
                     SELECT ctid FROM {table} AS t
                     WHERE t.source = u.source AND t.tenant = u.tenant
                         AND t.{parent} = u.parent
                     OFFSET 0
                 ) AS c))",
            parent = child.parent_column
        ))
        .await?;
    tx.execute(&delete, &[&sources, &tenants, &ids]).await?;
    // One row per (entity, position), flattened into columns.
    let mut rows: Vec<(&Key, i64, &Vec<FieldValue>)> = Vec::new();
    for key in keys {
        for (position, values) in states[*key].children.iter().flatten().enumerate() {
            rows.push((key, position as i64, values));
        }
    }
    if rows.is_empty() {
        return Ok(());
    }
    let mut params: Vec<Param> = vec![
        Box::new(rows.iter().map(|r| r.0.source.clone()).collect::<Vec<_>>()),
        Box::new(rows.iter().map(|r| r.0.tenant.clone()).collect::<Vec<_>>()),
        Box::new(rows.iter().map(|r| text_id(r.0)).collect::<Vec<_>>()),
        Box::new(rows.iter().map(|r| r.1).collect::<Vec<_>>()),
    ];
    let mut casts = vec!["text[]", "text[]", "text[]", "bigint[]"];
    for (i, field) in child.fields.iter().enumerate() {
        let (array, cast) = column_array(field.ty, rows.iter().map(|r| &r.2[i]).collect());
        params.push(array);
        casts.push(cast);
    }
    let mut all = vec!["source", "tenant", child.parent_column, "position"];
    all.extend(child.fields.iter().map(|f| f.column));
    let unnest: Vec<String> = casts
        .iter()
        .enumerate()
        .map(|(i, c)| format!("${}::{}", i + 1, param_cast(c)))
        .collect();
    let selected: Vec<String> = all
        .iter()
        .zip(&casts)
        .map(|(name, cast)| match *cast {
            "numeric[]" => format!("u.{name}::numeric"),
            _ => format!("u.{name}"),
        })
        .collect();
    let insert = tx
        .prepare_cached(&format!(
            "INSERT INTO {table} ({all}) SELECT {selected} FROM UNNEST({unnest}) AS u({all})",
            all = all.join(", "),
            selected = selected.join(", "),
            unnest = unnest.join(", "),
        ))
        .await?;
    tx.execute(&insert, &refs(&params)).await?;
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
