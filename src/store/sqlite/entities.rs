//! Reading the mirror: entities as the platform names their fields, built from the
//! typed tables through their [`KindSpec`], or from the generic table's JSON.

use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, Row, params_from_iter};
use serde_json::{Map, Value};

use super::SqliteStore;
use super::conditions::Conditions;
use super::mirror::{GENERIC_TABLE, field_to_sql};
use crate::mirror::kinds::{self, insert_path, to_json};
use crate::mirror::{Field, FieldType, FieldValue, KindSpec};
use crate::provider::ProviderKind;
use crate::store::{Entity, EntityFilter, KindCount, StoreError};

impl SqliteStore {
    /// Entities of one kind, in the order they first appeared.
    pub fn list_entities(&self, filter: &EntityFilter) -> Result<Vec<Entity>, StoreError> {
        let spec = kinds::resolve(filter.provider, &filter.kind);
        let mut c = Conditions::default();
        if spec.is_none() {
            c.add("kind = ?", filter.kind.clone());
        }
        c.add_opt("source = ?", filter.source.as_ref());
        c.add_opt("tenant = ?", filter.tenant.as_ref());
        if !filter.include_deleted {
            c.push_raw("deleted = 0");
        }
        for (column, value) in &filter.fields {
            c.add(format!("{column} = ?"), field_to_sql(value));
        }
        c.add_opt("version_ms >= ?", filter.since_version_ms.as_ref());
        c.add_opt("rowid > ?", filter.after.as_ref());
        let limit = filter.limit.max(1);
        self.with_reader(|conn| {
            query_entities(
                conn,
                &filter.kind,
                spec,
                &c,
                &format!("ORDER BY rowid LIMIT {limit}"),
            )
        })
    }

    /// Every mirrored entity of `kind` with this id, optionally narrowed to one
    /// source and tenant (the same id can exist in several sources).
    /// `provider` chooses the platform's table as in [`EntityFilter::provider`].
    pub fn find_entities(
        &self,
        provider: Option<ProviderKind>,
        kind: &str,
        id: &str,
        source: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<Entity>, StoreError> {
        let spec = kinds::resolve(provider, kind);
        let mut c = Conditions::default();
        match spec {
            Some(spec) if spec.integer_id => match id.parse::<i64>() {
                Ok(n) => c.add("id = ?", n),
                Err(_) => return Ok(Vec::new()),
            },
            _ => c.add("id = ?", id.to_string()),
        }
        if spec.is_none() {
            c.add("kind = ?", kind.to_string());
        }
        c.add_opt("source = ?", source.map(str::to_string).as_ref());
        c.add_opt("tenant = ?", tenant.map(str::to_string).as_ref());
        self.with_reader(|conn| query_entities(conn, kind, spec, &c, "ORDER BY rowid LIMIT 100"))
    }

    /// How many entities each kind has, live and deleted, per platform.
    pub fn mirror_counts(&self) -> Result<Vec<KindCount>, StoreError> {
        self.with_reader(|conn| {
            let mut counts = Vec::new();
            for spec in kinds::TYPED.iter() {
                let (live, deleted) = conn.query_row(
                    &format!(
                        "SELECT count(*) - coalesce(sum(deleted), 0), coalesce(sum(deleted), 0) FROM {}",
                        spec.table
                    ),
                    [],
                    |r| Ok((r.get(0)?, r.get(1)?)),
                )?;
                counts.push(KindCount {
                    kind: spec.kind.to_string(),
                    provider: Some(spec.provider),
                    typed: true,
                    live,
                    deleted,
                });
            }
            // The generic table does not say which platform a row came from; its
            // source's latest event does (one index lookup per kind and source).
            let mut stmt = conn.prepare_cached(&format!(
                "SELECT kind,
                     (SELECT provider FROM events WHERE events.source = g.source
                      ORDER BY seq DESC LIMIT 1) AS provider,
                     sum(n) - sum(d), sum(d)
                 FROM (SELECT kind, source, count(*) AS n, sum(deleted) AS d
                       FROM {GENERIC_TABLE} GROUP BY kind, source) AS g
                 GROUP BY kind, provider ORDER BY kind, provider"
            ))?;
            let rows = stmt.query_map([], |r| {
                let provider: Option<String> = r.get(1)?;
                Ok(KindCount {
                    kind: r.get(0)?,
                    provider: provider.as_deref().and_then(ProviderKind::parse),
                    typed: false,
                    live: r.get(2)?,
                    deleted: r.get(3)?,
                })
            })?;
            for row in rows {
                counts.push(row?);
            }
            Ok(counts)
        })
    }
}

const META_COLUMNS: &str = "rowid, source, tenant, id, deleted, version_ms, event_seq";

fn query_entities(
    conn: &Connection,
    kind: &str,
    spec: Option<&'static KindSpec>,
    conditions: &Conditions,
    tail: &str,
) -> Result<Vec<Entity>, StoreError> {
    let (table, data_columns) = match spec {
        Some(spec) => (
            spec.table,
            spec.fields
                .iter()
                .map(|f| f.column)
                .collect::<Vec<_>>()
                .join(", "),
        ),
        None => (GENERIC_TABLE, "data".to_string()),
    };
    let sql = format!(
        "SELECT {META_COLUMNS}, {data_columns} FROM {table} {} {tail}",
        conditions.sql()
    );
    let mut stmt = conn.prepare_cached(&sql)?;
    let rows = stmt.query_map(params_from_iter(conditions.args.iter()), |row| {
        entity_from_row(row, kind, spec)
    })?;
    let mut entities = Vec::new();
    for row in rows {
        let mut entity = row?;
        if let Some(child) = spec.and_then(|s| s.child.as_ref())
            && entity.data.is_object()
        {
            let children = read_children(conn, child, &entity)?;
            entity.data[child.array] = children;
        }
        entities.push(entity);
    }
    Ok(entities)
}

fn entity_from_row(
    row: &Row<'_>,
    kind: &str,
    spec: Option<&'static KindSpec>,
) -> rusqlite::Result<Entity> {
    let tenant: String = row.get(2)?;
    let id: SqlValue = row.get(3)?;
    let deleted: bool = row.get(4)?;
    let (id_text, id_json) = match id {
        SqlValue::Integer(n) => (n.to_string(), Value::from(n)),
        SqlValue::Text(s) => (s.clone(), Value::String(s)),
        other => (format!("{other:?}"), Value::Null),
    };
    let data = match spec {
        Some(spec) => {
            let values = read_fields(row, 7, spec.fields)?;
            if deleted && values.iter().all(|v| *v == FieldValue::Null) {
                Value::Null
            } else {
                let mut object = Map::new();
                object.insert("id".into(), id_json);
                for (field, value) in spec.fields.iter().zip(values) {
                    insert_path(&mut object, field.path, to_json(value));
                }
                Value::Object(object)
            }
        }
        None => {
            // NULL is a bare tombstone; text that is not JSON is a corrupt row.
            let text: Option<String> = row.get(7)?;
            match text {
                None => Value::Null,
                Some(t) => serde_json::from_str(&t).map_err(|e| {
                    rusqlite::Error::FromSqlConversionFailure(
                        7,
                        rusqlite::types::Type::Text,
                        format!("unreadable stored entity data: {e}").into(),
                    )
                })?,
            }
        }
    };
    Ok(Entity {
        position: row.get(0)?,
        kind: kind.to_string(),
        source: row.get(1)?,
        tenant: (!tenant.is_empty()).then_some(tenant),
        id: id_text,
        deleted,
        version_ms: row.get(5)?,
        event_seq: row.get(6)?,
        data,
    })
}

fn read_fields(row: &Row<'_>, first: usize, fields: &[Field]) -> rusqlite::Result<Vec<FieldValue>> {
    fields
        .iter()
        .enumerate()
        .map(|(i, field)| {
            let value: SqlValue = row.get(first + i)?;
            Ok(match (value, field.ty) {
                (SqlValue::Null, _) => FieldValue::Null,
                (SqlValue::Integer(n), FieldType::Bool) => FieldValue::Bool(n != 0),
                (SqlValue::Integer(n), _) => FieldValue::Integer(n),
                (SqlValue::Real(f), _) => FieldValue::Real(f),
                (SqlValue::Text(s), FieldType::Json) => FieldValue::Json(s),
                (SqlValue::Text(s), _) => FieldValue::Text(s),
                (other, _) => FieldValue::Text(format!("{other:?}")),
            })
        })
        .collect()
}

fn read_children(
    conn: &Connection,
    child: &kinds::ChildSpec,
    entity: &Entity,
) -> rusqlite::Result<Value> {
    let columns: Vec<&str> = child.fields.iter().map(|f| f.column).collect();
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {} FROM {} WHERE source = ?1 AND tenant = ?2 AND {} = ?3 ORDER BY position",
        columns.join(", "),
        child.table,
        child.parent_column
    ))?;
    let tenant = entity.tenant.clone().unwrap_or_default();
    let rows = stmt.query_map([&entity.source, &tenant, &entity.id], |row| {
        let mut object = Map::new();
        for (field, value) in child.fields.iter().zip(read_fields(row, 0, child.fields)?) {
            insert_path(&mut object, field.path, to_json(value));
        }
        Ok(Value::Object(object))
    })?;
    Ok(Value::Array(rows.collect::<Result<_, _>>()?))
}
