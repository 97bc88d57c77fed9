//! `classhook backup`: a consistent copy of the live database in one file, taken from
//! a read connection (`VACUUM INTO`), so that a running gateway keeps ingesting.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};

use super::SqliteStore;
use crate::store::{BackupReport, StoreError};

impl SqliteStore {
    /// Writes a copy of the database to `destination` (which must not exist yet),
    /// checks the copy and reports what it holds.
    pub fn backup(&self, destination: &Path) -> Result<BackupReport, StoreError> {
        if destination.exists() {
            return Err(StoreError::Invalid(format!(
                "{} exists already: choose a new file (a backup never overwrites)",
                destination.display()
            )));
        }
        // Written beside the destination under another name, renamed when complete:
        // a backup cut short never looks like a finished one.
        let partial = destination.with_extension("partial");
        let _ = std::fs::remove_file(&partial);
        let target = partial.to_str().ok_or_else(|| {
            StoreError::Invalid(format!("{} is not a UTF-8 path", partial.display()))
        })?;
        self.with_reader(|conn| {
            conn.execute("VACUUM INTO ?1", [target])?;
            Ok(())
        })?;
        let copy = Connection::open_with_flags(&partial, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
        let check: String = copy.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(StoreError::Corrupt(format!(
                "the copy failed its check ({check}); it is left at {}",
                partial.display()
            )));
        }
        let events: i64 = copy.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
        drop(copy);
        std::fs::rename(&partial, destination).map_err(|error| StoreError::DataDir {
            path: destination.to_path_buf(),
            error,
        })?;
        let bytes = std::fs::metadata(destination).map_or(0, |m| m.len());
        Ok(BackupReport { events, bytes })
    }
}
