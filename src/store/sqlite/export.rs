//! The SQLite side of `classhook db copy`: every table another backend needs, read
//! in key order in chunks, each value as text (integers and reals in decimal, blobs
//! in hex) so that the target casts it to its own column types.

use std::path::Path;

use rusqlite::types::ValueRef;
use rusqlite::{Connection, OpenFlags};

use super::{DATABASE_FILE, migrations, mirror};
use crate::store::StoreError;
use crate::store::copy::{Chunk, CopiedTable};

/// A read-only view of an SQLite store being copied.
pub struct Export {
    conn: Connection,
}

impl Export {
    /// Opens the store in `data_dir` for reading; it must have this version's schema
    /// (an older one is brought up to date by starting `serve` on it once).
    pub fn open(data_dir: &Path) -> Result<Export, StoreError> {
        let path = data_dir.join(DATABASE_FILE);
        if !path.exists() {
            return Err(StoreError::NoDatabase(path));
        }
        let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
        if version != migrations::known_version() {
            return Err(StoreError::Invalid(format!(
                "{} has schema version {version}, this classhook copies version {}: start `classhook serve` on it once (with its SQLite config) to bring it up to date",
                path.display(),
                migrations::known_version()
            )));
        }
        Ok(Export { conn })
    }

    /// What to copy, parents before children (subscriptions before their
    /// deliveries, deliveries before their attempts).
    pub fn tables() -> Vec<CopiedTable> {
        let mut tables = vec![
            CopiedTable::keyed("subscriptions", "id"),
            CopiedTable::keyed("subscription_keys", "id"),
            CopiedTable::keyed("events", "seq"),
            CopiedTable::keyed("deliveries", "id"),
            CopiedTable::keyed("attempts", "id"),
            CopiedTable::keyed("rejections", "id"),
        ];
        for table in mirror::all_tables() {
            tables.push(if mirror::is_child_table(table) {
                CopiedTable::unkeyed(table)
            } else {
                // A mirror row's position is its rowid.
                CopiedTable::keyed(table, "position")
            });
        }
        tables
    }

    pub fn count(&self, table: &CopiedTable) -> Result<i64, StoreError> {
        Ok(self
            .conn
            .query_row(&format!("SELECT count(*) FROM {}", table.name), [], |r| {
                r.get(0)
            })?)
    }

    /// The lowest sequence number a new event may take (retention keeps numbers of
    /// pruned events from being used again).
    pub fn next_seq_floor(&self) -> Result<i64, StoreError> {
        Ok(self.conn.query_row(
            "SELECT max(coalesce((SELECT max(seq) FROM events), 0), pruned_through)
             FROM event_log_state",
            [],
            |r| r.get(0),
        )?)
    }

    /// Up to `limit` rows of `table` after key `after` (keyed tables), or the rows
    /// after the first `after` (others), in key order.
    pub fn chunk(
        &self,
        table: &CopiedTable,
        after: i64,
        limit: usize,
    ) -> Result<Chunk, StoreError> {
        let sql = match table.key {
            Some("position") => format!(
                "SELECT rowid AS position, * FROM {0} WHERE rowid > ?1 ORDER BY rowid LIMIT ?2",
                table.name
            ),
            Some(key) => format!(
                "SELECT * FROM {0} WHERE {key} > ?1 ORDER BY {key} LIMIT ?2",
                table.name
            ),
            None => format!(
                "SELECT * FROM {0} ORDER BY 1, 2, 3, 4 LIMIT ?2 OFFSET ?1",
                table.name
            ),
        };
        let mut stmt = self.conn.prepare(&sql)?;
        let columns: Vec<String> = stmt.column_names().iter().map(|c| c.to_string()).collect();
        let mut rows = stmt.query(rusqlite::params![after, limit as i64])?;
        let mut chunk = Chunk {
            columns,
            rows: Vec::new(),
        };
        while let Some(row) = rows.next()? {
            let values = (0..chunk.columns.len())
                .map(|i| Ok(as_text(row.get_ref(i)?)))
                .collect::<Result<Vec<_>, rusqlite::Error>>()?;
            chunk.rows.push(values);
        }
        Ok(chunk)
    }
}

fn as_text(value: ValueRef<'_>) -> Option<String> {
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(n) => Some(n.to_string()),
        // Rust prints the shortest text that reads back as the same double.
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) => Some(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(b) => Some(hex::encode(b)),
    }
}
