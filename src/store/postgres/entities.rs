//! Reading the mirror: entities as the platform names their fields, built from the
//! typed tables through their [`KindSpec`], or from the generic table's JSON.

use serde_json::{Map, Value};
use tokio_postgres::Row;

use super::PostgresStore;
use super::mirror::{GENERIC_TABLE, read_field, select_column};
use super::sql::Conditions;
use crate::mirror::kinds::{self, insert_path, to_json};
use crate::mirror::{FieldType, FieldValue, KindSpec};
use crate::provider::ProviderKind;
use crate::store::{Entity, EntityFilter, KindCount, StoreError};

const META_COLUMNS: &str = "position, source, tenant, id, deleted, version_ms, event_seq";

impl PostgresStore {
    pub(super) async fn list_entities(
        &self,
        filter: EntityFilter,
    ) -> Result<Vec<Entity>, StoreError> {
        let spec = kinds::resolve(filter.provider, &filter.kind);
        let mut c = Conditions::default();
        if spec.is_none() {
            c.add("kind = $?", filter.kind.clone());
        }
        c.add_opt("source = $?", filter.source.as_ref());
        c.add_opt("tenant = $?", filter.tenant.as_ref());
        if !filter.include_deleted {
            c.push_raw("NOT deleted");
        }
        for (column, value) in &filter.fields {
            let ty = spec
                .and_then(|s| s.fields.iter().find(|f| f.column == *column))
                .map(|f| f.ty);
            add_field_condition(&mut c, column, ty, value);
        }
        c.add_opt("version_ms >= $?", filter.since_version_ms.as_ref());
        c.add_opt("position > $?", filter.after.as_ref());
        let limit = c.param(filter.limit.max(1) as i64);
        self.query_entities(
            &filter.kind,
            spec,
            &c,
            &format!("ORDER BY position LIMIT {limit}"),
        )
        .await
    }

    pub(super) async fn find_entities(
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
                Ok(n) => c.add("id = $?", n),
                Err(_) => return Ok(Vec::new()),
            },
            _ => c.add("id = $?", id.to_string()),
        }
        if spec.is_none() {
            c.add("kind = $?", kind.to_string());
        }
        c.add_opt("source = $?", source.map(str::to_string).as_ref());
        c.add_opt("tenant = $?", tenant.map(str::to_string).as_ref());
        // In the unique key's order (id, source, tenant): the planner reads the few rows
        // of one id from that index instead of walking every position for them.
        self.query_entities(kind, spec, &c, "ORDER BY source, tenant LIMIT 100")
            .await
    }

    pub(super) async fn mirror_counts(&self) -> Result<Vec<KindCount>, StoreError> {
        let client = self.client().await?;
        let mut counts = Vec::new();
        for spec in kinds::TYPED.iter() {
            let row = client
                .query_one(
                    &format!(
                        "SELECT count(*) FILTER (WHERE NOT deleted), count(*) FILTER (WHERE deleted)
                         FROM {}",
                        spec.table
                    ),
                    &[],
                )
                .await?;
            counts.push(KindCount {
                kind: spec.kind.to_string(),
                provider: Some(spec.provider),
                typed: true,
                live: row.try_get(0)?,
                deleted: row.try_get(1)?,
            });
        }
        // The generic table does not say which platform a row came from; its
        // source's latest event does (one index probe per kind and source).
        let rows = client
            .query(
                &format!(
                    "SELECT kind, provider, sum(n - d)::bigint, sum(d)::bigint
                     FROM (SELECT g.kind, g.n, g.d,
                               (SELECT provider FROM events e WHERE e.source = g.source
                                ORDER BY seq DESC LIMIT 1) AS provider
                           FROM (SELECT kind, source, count(*) AS n,
                                     count(*) FILTER (WHERE deleted) AS d
                                 FROM {GENERIC_TABLE} GROUP BY kind, source) AS g) AS p
                     GROUP BY kind, provider ORDER BY kind, provider NULLS FIRST"
                ),
                &[],
            )
            .await?;
        for row in rows {
            let provider: Option<String> = row.try_get(1)?;
            counts.push(KindCount {
                kind: row.try_get(0)?,
                provider: provider.as_deref().and_then(ProviderKind::parse),
                typed: false,
                live: row.try_get(2)?,
                deleted: row.try_get(3)?,
            });
        }
        Ok(counts)
    }

    async fn query_entities(
        &self,
        kind: &str,
        spec: Option<&'static KindSpec>,
        c: &Conditions,
        tail: &str,
    ) -> Result<Vec<Entity>, StoreError> {
        let (table, data_columns) = match spec {
            Some(spec) => (
                spec.table,
                spec.fields
                    .iter()
                    .map(|f| select_column(f.column, f.ty))
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            None => (GENERIC_TABLE, "data".to_string()),
        };
        let sql = format!(
            "SELECT {META_COLUMNS}, {data_columns} FROM {table} {} {tail}",
            c.sql()
        );
        let client = self.client().await?;
        let statement = client.prepare_cached(&sql).await?;
        let rows = client.query(&statement, &c.params()).await?;
        let mut entities = rows
            .iter()
            .map(|row| entity_from_row(row, kind, spec))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(child) = spec.and_then(|s| s.child.as_ref()) {
            add_children(&client, child, &mut entities).await?;
        }
        Ok(entities)
    }
}

/// `column = value`, with the value as the column's type. NULL, or a value of
/// another type, matches nothing (as `column = NULL` in SQL).
fn add_field_condition(
    c: &mut Conditions,
    column: &str,
    ty: Option<FieldType>,
    value: &FieldValue,
) {
    let clause = format!("{column} = $?");
    match (ty, value) {
        (Some(FieldType::Integer), FieldValue::Integer(n)) => c.add(&clause, *n),
        (Some(FieldType::Bool), FieldValue::Bool(b)) => c.add(&clause, *b),
        (Some(FieldType::Number), FieldValue::Integer(n)) => {
            c.add(&format!("{column} = $?::numeric"), n.to_string())
        }
        (Some(FieldType::Number), FieldValue::Real(f)) => {
            c.add(&format!("{column} = $?::numeric"), f.to_string())
        }
        (
            Some(FieldType::Text | FieldType::Date | FieldType::DateTime | FieldType::Json),
            FieldValue::Text(s) | FieldValue::Json(s),
        ) => c.add(&clause, s.clone()),
        _ => c.push_raw("FALSE"),
    }
}

fn entity_from_row(
    row: &Row,
    kind: &str,
    spec: Option<&'static KindSpec>,
) -> Result<Entity, StoreError> {
    let tenant: String = row.try_get(2)?;
    let deleted: bool = row.try_get(4)?;
    let (id_text, id_json) = match spec {
        Some(spec) if spec.integer_id => {
            let n: i64 = row.try_get(3)?;
            (n.to_string(), Value::from(n))
        }
        _ => {
            let s: String = row.try_get(3)?;
            (s.clone(), Value::String(s))
        }
    };
    let data = match spec {
        Some(spec) => {
            let values = spec
                .fields
                .iter()
                .enumerate()
                .map(|(i, f)| read_field(row, 7 + i, f.ty))
                .collect::<Result<Vec<_>, _>>()?;
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
            let text: Option<String> = row.try_get(7)?;
            match text {
                None => Value::Null,
                Some(t) => serde_json::from_str(&t).map_err(|e| {
                    StoreError::Corrupt(format!("unreadable stored entity data: {e}"))
                })?,
            }
        }
    };
    Ok(Entity {
        position: row.try_get(0)?,
        kind: kind.to_string(),
        source: row.try_get(1)?,
        tenant: (!tenant.is_empty()).then_some(tenant),
        id: id_text,
        deleted,
        version_ms: row.try_get(5)?,
        event_seq: row.try_get(6)?,
        data,
    })
}

/// Puts each entity's child rows (a course's plans) into its data, read for the
/// whole page in one query. Bare tombstones (no data) get none.
async fn add_children(
    client: &deadpool_postgres::Client,
    child: &kinds::ChildSpec,
    entities: &mut [Entity],
) -> Result<(), StoreError> {
    let with_data: Vec<usize> = (0..entities.len())
        .filter(|&i| entities[i].data.is_object())
        .collect();
    if with_data.is_empty() {
        return Ok(());
    }
    let sources: Vec<&str> = with_data
        .iter()
        .map(|&i| entities[i].source.as_str())
        .collect();
    let tenants: Vec<&str> = with_data
        .iter()
        .map(|&i| entities[i].tenant.as_deref().unwrap_or(""))
        .collect();
    let ids: Vec<&str> = with_data.iter().map(|&i| entities[i].id.as_str()).collect();
    let ords: Vec<i64> = (0..with_data.len() as i64).collect();
    let columns: Vec<String> = child
        .fields
        .iter()
        .map(|f| select_column(f.column, f.ty))
        .collect();
    let statement = client
        .prepare_cached(&format!(
            "SELECT u.ord, {columns} FROM UNNEST($1::text[], $2::text[], $3::text[], $4::bigint[])
                 AS u(source, tenant, parent, ord)
             JOIN {table} c ON c.source = u.source AND c.tenant = u.tenant
                 AND c.{parent} = u.parent
             ORDER BY u.ord, c.position",
            columns = columns
                .iter()
                .map(|c| format!("c.{c}"))
                .collect::<Vec<_>>()
                .join(", "),
            table = child.table,
            parent = child.parent_column,
        ))
        .await?;
    let rows = client
        .query(&statement, &[&sources, &tenants, &ids, &ords])
        .await?;
    let mut items: Vec<Vec<Value>> = vec![Vec::new(); with_data.len()];
    for row in rows {
        let ord: i64 = row.try_get(0)?;
        let mut object = Map::new();
        for (i, field) in child.fields.iter().enumerate() {
            insert_path(
                &mut object,
                field.path,
                to_json(read_field(&row, 1 + i, field.ty)?),
            );
        }
        items[ord as usize].push(Value::Object(object));
    }
    for (index, children) in with_data.into_iter().zip(items) {
        entities[index].data[child.array] = Value::Array(children);
    }
    Ok(())
}
