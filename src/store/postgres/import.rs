//! The PostgreSQL side of `classhook db copy` (see `store::copy`): rows arrive as
//! text by column name and are cast to this schema's column types in the insert
//! itself, one `UNNEST` statement per chunk; rows already present are left alone, so
//! a chunk copied twice (after an interruption) changes nothing.

use std::collections::HashMap;

use deadpool_postgres::Pool;

use super::{build_pool, parse_url, redact_url};
use crate::store::StoreError;
use crate::store::copy::{Chunk, CopiedTable};

/// Tables whose rows mean the database is in use (anything but a fresh schema).
const DATA_TABLES: &[&str] = &["events", "subscriptions", "rejections", "deliveries"];

pub struct Import {
    pool: Pool,
    location: String,
    /// Per table: column name → its SQL type (`information_schema`).
    columns: HashMap<String, HashMap<String, String>>,
}

/// What the target holds before a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetState {
    Empty,
    Copying { source: String },
    Copied { source: String },
    NotEmpty,
}

impl Import {
    /// Connects, bringing the schema up to date first (an empty database is fine).
    pub async fn open(url: &str) -> Result<Import, StoreError> {
        super::PostgresStore::migrate(url).await?;
        let pool = build_pool(&parse_url(url)?, 1)?;
        let rows = pool
            .get()
            .await?
            .query(
                "SELECT table_name::text, column_name::text, data_type::text
                 FROM information_schema.columns WHERE table_schema = current_schema()",
                &[],
            )
            .await?;
        let mut columns: HashMap<String, HashMap<String, String>> = HashMap::new();
        for row in rows {
            columns
                .entry(row.get(0))
                .or_default()
                .insert(row.get(1), row.get(2));
        }
        Ok(Import {
            pool,
            location: redact_url(url),
            columns,
        })
    }

    pub fn location(&self) -> &str {
        &self.location
    }

    pub async fn state(&self) -> Result<TargetState, StoreError> {
        let client = self.pool.get().await?;
        if let Some(row) = client
            .query_opt("SELECT source, finished_at_ms FROM db_copy", &[])
            .await?
        {
            let source: String = row.get(0);
            return Ok(match row.get::<_, Option<i64>>(1) {
                Some(_) => TargetState::Copied { source },
                None => TargetState::Copying { source },
            });
        }
        for table in DATA_TABLES {
            let any = client
                .query_opt(&format!("SELECT 1 FROM {table} LIMIT 1"), &[])
                .await?;
            if any.is_some() {
                return Ok(TargetState::NotEmpty);
            }
        }
        Ok(TargetState::Empty)
    }

    pub async fn begin(&self, source: &str) -> Result<(), StoreError> {
        self.pool
            .get()
            .await?
            .execute(
                "INSERT INTO db_copy (id, source, started_at_ms) VALUES (1, $1, $2)",
                &[&source, &super::now_ms()],
            )
            .await?;
        Ok(())
    }

    /// Where a table's copy goes on: its highest copied key, or (unkeyed) how many
    /// rows are there.
    pub async fn resume_point(&self, table: &CopiedTable) -> Result<i64, StoreError> {
        let sql = match table.key {
            Some(key) => format!("SELECT coalesce(max({key}), 0)::bigint FROM {}", table.name),
            None => format!("SELECT count(*) FROM {}", table.name),
        };
        Ok(self.pool.get().await?.query_one(&sql, &[]).await?.get(0))
    }

    pub async fn count(&self, table: &CopiedTable) -> Result<i64, StoreError> {
        Ok(self
            .pool
            .get()
            .await?
            .query_one(&format!("SELECT count(*) FROM {}", table.name), &[])
            .await?
            .get(0))
    }

    /// Inserts a chunk's rows, each value cast from text to its column's type;
    /// columns this schema does not have are left out.
    pub async fn insert(&self, table: &CopiedTable, chunk: &Chunk) -> Result<(), StoreError> {
        let types = self.columns.get(table.name).ok_or_else(|| {
            StoreError::Invalid(format!("the target has no table {}", table.name))
        })?;
        let kept: Vec<(usize, &str, &str)> = chunk
            .columns
            .iter()
            .enumerate()
            .filter_map(|(i, name)| types.get(name).map(|t| (i, name.as_str(), t.as_str())))
            .collect();
        let names: Vec<&str> = kept.iter().map(|(_, name, _)| *name).collect();
        let unnest: Vec<String> = (1..=kept.len()).map(|n| format!("${n}::text[]")).collect();
        let casts: Vec<String> = kept
            .iter()
            .enumerate()
            .map(|(n, (_, _, sql_type))| cast(&format!("c{n}"), sql_type))
            .collect();
        let aliases: Vec<String> = (0..kept.len()).map(|n| format!("c{n}")).collect();
        let sql = format!(
            "INSERT INTO {table} ({names}) OVERRIDING SYSTEM VALUE
             SELECT {casts} FROM UNNEST({unnest}) AS u({aliases})
             ON CONFLICT DO NOTHING",
            table = table.name,
            names = names.join(", "),
            casts = casts.join(", "),
            unnest = unnest.join(", "),
            aliases = aliases.join(", "),
        );
        let arrays: Vec<Vec<Option<&str>>> = kept
            .iter()
            .map(|(i, _, _)| chunk.rows.iter().map(|row| row[*i].as_deref()).collect())
            .collect();
        let params: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = arrays
            .iter()
            .map(|a| a as &(dyn tokio_postgres::types::ToSql + Sync))
            .collect();
        self.pool.get().await?.execute(&sql, &params).await?;
        Ok(())
    }

    /// After the last chunk: identity sequences move past the copied rows (new
    /// events above `seq_floor`), every instance reloads the subscriptions, and the
    /// copy is marked finished.
    pub async fn finish(&self, seq_floor: i64) -> Result<(), StoreError> {
        let mut client = self.pool.get().await?;
        let tx = client.transaction().await?;
        let identities = tx
            .query(
                "SELECT table_name::text, column_name::text FROM information_schema.columns
                 WHERE table_schema = current_schema() AND is_identity = 'YES'",
                &[],
            )
            .await?;
        for row in identities {
            let (table, column): (String, String) = (row.get(0), row.get(1));
            let floor = if table == "events" { seq_floor } else { 0 };
            // Nothing copied and no floor: the next value is 1, as in a fresh table.
            tx.execute(
                &format!(
                    "SELECT setval(pg_get_serial_sequence($1, $2),
                         greatest(coalesce((SELECT max({column}) FROM {table}), 0), $3::bigint, 1),
                         coalesce((SELECT max({column}) FROM {table}), 0) >= 1 OR $3::bigint >= 1)"
                ),
                &[&table, &column, &floor],
            )
            .await?;
        }
        tx.execute("UPDATE subscription_version SET version = version + 1", &[])
            .await?;
        tx.execute(
            "UPDATE db_copy SET finished_at_ms = $1",
            &[&super::now_ms()],
        )
        .await?;
        tx.commit().await?;
        // Statistics for the copied tables now, so that the first gateway's plans
        // see them as they are rather than waiting for autovacuum (as after a
        // restore). Only classhook's schema: the database may hold others' tables.
        // The copy is complete without them.
        let analysed = async {
            let tables: Vec<String> = client
                .query(
                    "SELECT quote_ident(table_name::text) FROM information_schema.tables
                     WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'",
                    &[],
                )
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect();
            if !tables.is_empty() {
                client
                    .batch_execute(&format!("ANALYZE {}", tables.join(", ")))
                    .await?;
            }
            Ok::<(), tokio_postgres::Error>(())
        };
        if let Err(error) = analysed.await {
            tracing::warn!(%error, "the copied tables could not be analysed; autovacuum will");
        }
        Ok(())
    }
}

/// A copy that has not finished, for `serve` to refuse to start on.
pub async fn unfinished_copy(pool: &Pool) -> Result<Option<String>, StoreError> {
    let row = pool
        .get()
        .await?
        .query_opt(
            "SELECT source FROM db_copy WHERE finished_at_ms IS NULL",
            &[],
        )
        .await?;
    Ok(row.map(|r| r.get(0)))
}

/// `column` (text) as the SQL type `sql_type`.
fn cast(column: &str, sql_type: &str) -> String {
    match sql_type {
        "bytea" => format!("decode({column}, 'hex')"),
        "text" | "character varying" => column.to_string(),
        other => format!("{column}::{other}"),
    }
}
