//! Can the store really keep what it acknowledges? Three checks: the database file
//! is still the one opened (a deleted or replaced file would swallow writes into an
//! unlinked inode), a real write reaches the disk (readiness and start-up), and the
//! file system has room.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, TransactionBehavior};

/// Below this much free space the store reports not ready (a batch of events, its
/// WAL frames and a checkpoint need room).
pub const MIN_FREE_BYTES: u64 = 64 * 1024 * 1024;

/// Which file the writer opened: device and inode.
#[derive(Debug, Clone)]
pub struct FileIdentity {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl FileIdentity {
    pub fn of(path: &Path) -> std::io::Result<FileIdentity> {
        let meta = std::fs::metadata(path)?;
        Ok(FileIdentity {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Whether the path still names the opened file (not removed, not replaced).
    pub fn check(&self) -> Result<(), String> {
        match std::fs::metadata(&self.path) {
            Ok(meta) if meta.dev() == self.dev && meta.ino() == self.ino && meta.nlink() > 0 => {
                Ok(())
            }
            Ok(_) => Err(format!(
                "the database file {} was replaced while classhook ran; nothing more is acknowledged (restart classhook)",
                self.path.display()
            )),
            Err(_) => Err(format!(
                "the database file {} was removed while classhook ran; nothing more is acknowledged (restart classhook)",
                self.path.display()
            )),
        }
    }
}

/// Writes and commits one row (with the store's `synchronous=FULL`, an fsync): a
/// write lock alone proves nothing about a read-only file or a broken disk.
pub fn probe_write(conn: &mut Connection, now_ms: i64) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute(
        "INSERT INTO readiness (id, probed_at_ms) VALUES (1, ?1)
         ON CONFLICT (id) DO UPDATE SET probed_at_ms = excluded.probed_at_ms",
        [now_ms],
    )?;
    tx.commit()
}

/// Bytes free for an unprivileged writer on the file system holding `dir`.
pub fn free_bytes(dir: &Path) -> std::io::Result<u64> {
    let stats = rustix::fs::statvfs(dir)?;
    Ok(stats.f_bavail.saturating_mul(stats.f_frsize))
}
