//! `classhook db copy`: moves an SQLite store into an empty PostgreSQL database, table
//! by table in key order, in chunks that each commit on their own. Interrupted, it is
//! run again and goes on from the last chunk the target holds; the target remembers
//! the copy (`db_copy`), so that it is the only non-empty target accepted, and so that
//! no gateway starts on a half-copied database. At the end the sequences are moved
//! past the copied rows and the row counts of both sides are compared.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::postgres::import::{Import, TargetState};
use super::sqlite::export::Export;
use super::{Progress, StoreError};
use crate::secret::Secret;

/// One table to copy and the integer column it is copied in order of (`None`: a
/// small table copied by offset, its rows made unique by its primary key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopiedTable {
    pub name: &'static str,
    pub key: Option<&'static str>,
}

impl CopiedTable {
    pub fn keyed(name: &'static str, key: &'static str) -> CopiedTable {
        CopiedTable {
            name,
            key: Some(key),
        }
    }

    pub fn unkeyed(name: &'static str) -> CopiedTable {
        CopiedTable { name, key: None }
    }
}

/// Rows as text, by column name (`None`: NULL).
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

/// How the rows of one table compare after a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableCount {
    pub table: &'static str,
    pub source: i64,
    pub target: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOutcome {
    /// Every table copied and counted: equal on both sides.
    Finished(Vec<TableCount>),
    /// Stopped after the chunks asked for; run again to go on.
    Paused { rows: u64 },
}

pub struct CopyOptions {
    /// Rows per chunk (one transaction each).
    pub chunk: usize,
    /// Stop after this many chunks (to copy in several sittings).
    pub max_chunks: Option<usize>,
}

/// Copies the SQLite store in `data_dir` into the PostgreSQL database at `url`.
pub async fn sqlite_to_postgres(
    data_dir: &Path,
    url: &Secret,
    options: CopyOptions,
    progress: Arc<dyn Progress>,
) -> Result<CopyOutcome, StoreError> {
    let source_dir: PathBuf = std::path::absolute(data_dir).unwrap_or(data_dir.to_path_buf());
    let source_name = source_dir.display().to_string();
    let export = {
        let dir = source_dir.clone();
        blocking(move || Export::open(&dir)).await?
    };
    let export = Arc::new(std::sync::Mutex::new(export));
    let target = Import::open(url.expose()).await?;
    match target.state().await? {
        TargetState::Empty => target.begin(&source_name).await?,
        TargetState::Copying { source } if source == source_name => {}
        TargetState::Copying { source } => {
            return Err(StoreError::Conflict(format!(
                "{} holds an unfinished copy of {source}, not of {source_name}: finish that one, or start from an empty database",
                target.location()
            )));
        }
        TargetState::Copied { source } => {
            return Err(StoreError::Conflict(format!(
                "{} already holds a finished copy of {source}",
                target.location()
            )));
        }
        TargetState::NotEmpty => {
            return Err(StoreError::Conflict(format!(
                "{} is not empty: db copy moves a store into an empty database only (create a new one; `classhook migrate` on it is fine)",
                target.location()
            )));
        }
    }
    let tables = Export::tables();
    let mut total = 0u64;
    for table in &tables {
        let count = source_count(&export, table).await?;
        total += count as u64;
    }
    progress.total(total);
    let mut copied = 0u64;
    let mut chunks = 0usize;
    for table in &tables {
        // A resumed copy goes on after what the target holds.
        let mut after = target.resume_point(table).await?;
        progress.advanced(target.count(table).await? as u64);
        loop {
            if options.max_chunks.is_some_and(|max| chunks >= max) {
                return Ok(CopyOutcome::Paused { rows: copied });
            }
            let chunk = read(&export, {
                let table = table.clone();
                let limit = options.chunk.max(1);
                move |e| e.chunk(&table, after, limit)
            })
            .await?;
            if chunk.rows.is_empty() {
                break;
            }
            let rows = chunk.rows.len();
            after = match table.key {
                Some(key) => last_key(&chunk, key)?,
                None => after + rows as i64,
            };
            target.insert(table, &chunk).await?;
            copied += rows as u64;
            chunks += 1;
            progress.advanced(rows as u64);
            if rows < options.chunk.max(1) {
                break;
            }
        }
    }
    let floor = read(&export, |e| e.next_seq_floor()).await?;
    target.finish(floor).await?;
    let mut counts = Vec::new();
    for table in &tables {
        // Counted again: rows added to the source meanwhile show as a difference.
        let source = source_count(&export, table).await?;
        counts.push(TableCount {
            table: table.name,
            source,
            target: target.count(table).await?,
        });
    }
    Ok(CopyOutcome::Finished(counts))
}

fn last_key(chunk: &Chunk, key: &str) -> Result<i64, StoreError> {
    let index = chunk
        .columns
        .iter()
        .position(|c| c == key)
        .ok_or_else(|| StoreError::Corrupt(format!("the copied rows have no {key} column")))?;
    chunk
        .rows
        .last()
        .and_then(|row| row[index].as_deref())
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| StoreError::Corrupt(format!("a copied row has no integer {key}")))
}

async fn source_count(
    export: &Arc<std::sync::Mutex<Export>>,
    table: &CopiedTable,
) -> Result<i64, StoreError> {
    let table = table.clone();
    read(export, move |e| e.count(&table)).await
}

async fn read<T: Send + 'static>(
    export: &Arc<std::sync::Mutex<Export>>,
    work: impl FnOnce(&Export) -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    let export = export.clone();
    blocking(move || work(&export.lock().expect("the export lock is never poisoned"))).await
}

async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| StoreError::Database(format!("the copy stopped: {e}")))?
}
