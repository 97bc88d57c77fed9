//! The embedded backend: one SQLite file in WAL mode with `synchronous=FULL`, one
//! writer thread doing group commits ([`writer`]), and read-only work on separate
//! connections so readers never block the writer.

mod backend;
mod backup;
mod conditions;
mod dedupe;
mod delivery;
mod entities;
pub(crate) mod export;
mod health;
mod ids;
mod maintenance;
mod migrations;
mod mirror;
mod read;
mod rebuild;

mod timeline;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use rusqlite::config::DbConfig;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Notify, mpsc, oneshot};

use super::{AppendOutcome, MAX_COMMIT_LAG, NewRejection, StoreError, StoreOptions};
use crate::deliver::subscription::Subscription;
use crate::event::NewEvent;
use writer::WriteOp;

/// WAL pages between automatic checkpoints (4 KiB each).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 10_000;

/// Prepared statements the writer keeps (rusqlite's default of 16 is fewer than the
/// writer uses under mixed traffic, which would re-prepare statements per event).
const WRITER_STATEMENT_CACHE: usize = 256;

/// The database file inside the data directory.
pub const DATABASE_FILE: &str = "classhook.db";

/// A handle to the store; cheap to clone.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    options: StoreOptions,
    /// `None` for a read-only handle (the CLI's `events`).
    queue: Option<mpsc::Sender<WriteOp>>,
    /// The writer thread, unparked after queuing an operation that must not wait
    /// for a lingering batch (see `crate::store::RECORD_LINGER`).
    writer: Option<std::thread::Thread>,
    readers: Mutex<Vec<Connection>>,
    /// Rejections waiting for the writer (their own path, see `rejections`).
    rejections: Arc<crate::store::rejection_queue::RejectionQueue>,
    /// The database file the writer opened (`None` for a read-only handle).
    identity: Option<health::FileIdentity>,
    /// The subscriptions the writer matches stored events against (the outbox).
    matchers: Arc<RwLock<Vec<Subscription>>>,
    /// Woken after a commit that queued deliveries.
    deliveries_queued: Arc<Notify>,
}

impl SqliteStore {
    /// Opens (creating if needed) the store in `data_dir`, runs migrations and starts
    /// the writer thread.
    pub fn open(data_dir: &Path, mut options: StoreOptions) -> Result<SqliteStore, StoreError> {
        options.max_commit_lag = options.max_commit_lag.min(MAX_COMMIT_LAG);
        std::fs::create_dir_all(data_dir).map_err(|error| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            error,
        })?;
        let path = data_dir.join(DATABASE_FILE);
        let mut conn = Connection::open(&path)?;
        configure_writer(&conn, &options)?;
        migrations::run(&mut conn)?;
        // Start only on a store that takes a real write.
        health::probe_write(&mut conn, now_ms()).map_err(|error| {
            StoreError::NotReady(format!(
                "the database {} cannot be written: {error}",
                path.display()
            ))
        })?;
        let identity = health::FileIdentity::of(&path).map_err(|error| StoreError::DataDir {
            path: path.clone(),
            error,
        })?;
        let dedupe = dedupe::DedupeIndex::load(
            &conn,
            options.dedupe_settle_after.unwrap_or(dedupe::SETTLE_AFTER),
        )?;
        let matchers = Arc::new(RwLock::new(delivery::load_subscriptions(
            &conn,
            &options.secrets,
        )?));
        let deliveries_queued = Arc::new(Notify::new());
        let (sender, receiver) = mpsc::channel(options.queue_capacity);
        let max_batch = options.max_batch;
        let linger = options.record_linger.unwrap_or(crate::store::RECORD_LINGER);
        let observer = options.observer.clone();
        let rejections = Arc::new(crate::store::rejection_queue::RejectionQueue::default());
        let shared = writer::Shared {
            outbox: writer::Outbox {
                matchers: matchers.clone(),
                notify: deliveries_queued.clone(),
            },
            rejections: rejections.clone(),
            identity: identity.clone(),
        };
        let writer = std::thread::Builder::new()
            .name("classhook-writer".into())
            .spawn(move || writer::run(conn, dedupe, receiver, max_batch, linger, observer, shared))
            .map_err(|error| StoreError::DataDir {
                path: data_dir.to_path_buf(),
                error,
            })?;
        Ok(SqliteStore::with_queue(
            path,
            options,
            Some((sender, writer.thread().clone())),
            matchers,
            deliveries_queued,
            rejections,
            Some(identity),
        ))
    }

    /// Opens an existing store for reading only (no writer, no migrations).
    /// Subscription secrets are not opened: they read as empty (it never sends).
    pub fn open_read_only(data_dir: &Path) -> Result<SqliteStore, StoreError> {
        let path = data_dir.join(DATABASE_FILE);
        if !path.exists() {
            return Err(StoreError::NoDatabase(path));
        }
        let store = SqliteStore::with_queue(
            path,
            StoreOptions {
                secrets: crate::store::sealed::Sealer::withheld(),
                ..StoreOptions::default()
            },
            None,
            Arc::default(),
            Arc::default(),
            Arc::default(),
            None,
        );
        drop(store.reader()?);
        Ok(store)
    }

    fn with_queue(
        path: PathBuf,
        options: StoreOptions,
        writer: Option<(mpsc::Sender<WriteOp>, std::thread::Thread)>,
        matchers: Arc<RwLock<Vec<Subscription>>>,
        deliveries_queued: Arc<Notify>,
        rejections: Arc<crate::store::rejection_queue::RejectionQueue>,
        identity: Option<health::FileIdentity>,
    ) -> Self {
        let (queue, writer) = writer.unzip();
        SqliteStore {
            inner: Arc::new(Inner {
                path,
                options,
                queue,
                writer,
                readers: Mutex::new(Vec::new()),
                rejections,
                identity,
                matchers,
                deliveries_queued,
            }),
        }
    }

    /// Resolves when a commit has queued new deliveries (or soon after).
    pub fn deliveries_queued(&self) -> Arc<Notify> {
        self.inner.deliveries_queued.clone()
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Queues the operation `make` builds around its reply channel and waits for the
    /// writer's answer.
    pub(super) async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp,
    ) -> Result<T, StoreError> {
        let queue = self.inner.queue.as_ref().ok_or(StoreError::WriterGone)?;
        let (reply, answer) = oneshot::channel();
        let op = make(reply);
        let urgent = !op.may_wait();
        queue.send(op).await.map_err(|_| StoreError::WriterGone)?;
        if urgent {
            self.wake_writer();
        }
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Stores `event` durably, or recognises it as a retry. Returns after the commit.
    pub async fn append(&self, event: NewEvent) -> Result<AppendOutcome, StoreError> {
        let timeout = self.inner.options.append_timeout;
        let write_by = std::time::Instant::now() + self.inner.options.max_commit_lag;
        let wait = self.request(|reply| WriteOp::Append(Box::new(event), write_by, reply));
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| StoreError::Timeout(timeout))?
    }

    /// Runs `work` on the write connection, between batches, and returns its result.
    pub(crate) async fn run_job<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.request(|reply| {
            WriteOp::Job(Box::new(move |conn: &mut Connection| {
                let _ = reply.send(work(conn));
            }))
        })
        .await
    }

    /// Whether the store can take a write now: the writer is alive, the database
    /// file is still the one it opened, a real write commits within `timeout`, and the
    /// file system has room.
    pub async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        if let Some(identity) = &self.inner.identity {
            identity.check().map_err(StoreError::NotReady)?;
        }
        let dir = self.inner.path.parent().unwrap_or(Path::new("."));
        if let Ok(free) = health::free_bytes(dir)
            && free < health::MIN_FREE_BYTES
        {
            return Err(StoreError::NotReady(format!(
                "only {} MiB free on the file system of {}",
                free / (1024 * 1024),
                dir.display()
            )));
        }
        let probe = self.run_job(|conn| {
            health::probe_write(conn, now_ms())?;
            Ok(())
        });
        tokio::time::timeout(timeout, probe)
            .await
            .map_err(|_| StoreError::Timeout(timeout))?
    }

    /// Adds to the rejection log without waiting, through its own bounded buffer (see
    /// `rejections`). Under a flood the log drops entries (counted) rather than
    /// slowing ingest down.
    pub fn record_rejection(&self, rejection: NewRejection) {
        let Some(queue) = self.inner.queue.as_ref() else {
            self.inner.rejections.count_dropped(1);
            return;
        };
        if self.inner.rejections.push(rejection) {
            if queue.try_send(WriteOp::RejectionsWaiting).is_err() {
                // The writer is saturated; it takes waiting rejections with every batch.
                self.inner.rejections.wake_failed();
            }
            self.wake_writer();
        }
    }

    /// Ends a lingering batch's wait (see `crate::store::RECORD_LINGER`); costs nothing
    /// more than an atomic swap unless the writer is sleeping there.
    fn wake_writer(&self) {
        if let Some(writer) = &self.inner.writer {
            writer.unpark();
        }
    }

    /// Operations waiting for the writer right now.
    pub fn queued_writes(&self) -> usize {
        self.inner
            .queue
            .as_ref()
            .map_or(0, |q| q.max_capacity() - q.capacity())
    }

    /// Rejections not logged because their buffer was full (or their batch failed).
    pub fn dropped_rejections(&self) -> u64 {
        self.inner.rejections.dropped()
    }

    /// Runs `f` on a pooled read connection.
    pub(crate) fn with_reader<T>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let conn = self.reader()?;
        let result = f(&conn);
        self.inner
            .readers
            .lock()
            .expect("reader pool lock is never poisoned")
            .push(conn);
        result
    }

    fn reader(&self) -> Result<Connection, StoreError> {
        if let Some(conn) = self
            .inner
            .readers
            .lock()
            .expect("reader pool lock is never poisoned")
            .pop()
        {
            return Ok(conn);
        }
        let conn = Connection::open_with_flags(
            &self.inner.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(self.inner.options.busy_timeout)?;
        Ok(conn)
    }
}

fn configure_writer(conn: &Connection, options: &StoreOptions) -> Result<(), StoreError> {
    let mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |row| row.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Commit(format!(
            "the database refused WAL mode (journal_mode is {mode})"
        )));
    }
    // FULL: with NORMAL a committed WAL transaction can vanish on power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Checkpoint every ~40 MiB of WAL instead of SQLite's 4 MiB: fewer, larger
    // checkpoints. Measured: p99 ingest latency 11 ms -> 2.5 ms, +30 % events/s.
    conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
    conn.busy_timeout(options.busy_timeout)?;
    // Every statement the writer runs stays prepared: the event insert, dedupe and
    // delivery statements, and per mirror table a read, inserts and a few updates.
    conn.set_prepared_statement_cache_capacity(WRITER_STATEMENT_CACHE);
    // Plans that never depend on bound values. Without this guarantee SQLite (3.51)
    // re-prepares a statement whenever a parameter its planner looked at is bound
    // again: every `LIMIT ?` is one, so the delivery claim was compiled anew at each
    // claim (a sixth of the writer's time while draining). The writer binds no
    // pattern (`LIKE ?`, `GLOB ?`) and the store keeps no `ANALYZE` samples, the
    // only other uses of bound values in planning, so no plan changes.
    conn.set_db_config(DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true)?;
    // Deleting a subscription deletes its deliveries and their attempts.
    conn.pragma_update(None, "foreign_keys", true)?;
    Ok(())
}

/// Wall-clock time for the readiness row (informational only).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        // A row mapper reports a secret it cannot open inside a conversion error.
        if let rusqlite::Error::FromSqlConversionFailure(column, kind, inner) = error {
            return match inner.downcast::<crate::store::sealed::SealError>() {
                Ok(sealed) => StoreError::Secrets(*sealed),
                Err(inner) => StoreError::Database(
                    rusqlite::Error::FromSqlConversionFailure(column, kind, inner).to_string(),
                ),
            };
        }
        StoreError::Database(error.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use rusqlite::{Connection, StatementStatus};

    use super::{SqliteStore, configure_writer};
    use crate::deliver::schedule::{Next, Outcome};
    use crate::store::test_support::{ATTEMPTED_AT, BatchLog, claim_every_delivery, class_updated};
    use crate::store::{AttemptRecorded, AttemptResult, Claimed, StoreOptions};

    /// How often a cached `LIMIT ?` statement was compiled again over five uses
    /// with different limits.
    fn recompiled(conn: &Connection) -> i32 {
        conn.execute_batch(
            "CREATE TABLE t (x INTEGER PRIMARY KEY); INSERT INTO t VALUES (1), (2), (3);",
        )
        .unwrap();
        for limit in 1..=5 {
            let mut statement = conn.prepare_cached("SELECT x FROM t LIMIT ?1").unwrap();
            let rows: Vec<i64> = statement
                .query_map([limit], |r| r.get(0))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
            assert_eq!(rows.len(), limit.min(3) as usize);
        }
        conn.prepare_cached("SELECT x FROM t LIMIT ?1")
            .unwrap()
            .get_status(StatementStatus::RePrepare)
    }

    /// The writer's statements are compiled once: binding a new `LIMIT` (the
    /// delivery claim's capacity) does not recompile them, as it does by default.
    #[test]
    fn the_writer_compiles_a_statement_once_whatever_its_bound_limit() {
        let dir = tempfile::tempdir().unwrap();
        let writer = Connection::open(dir.path().join("writer.db")).unwrap();
        configure_writer(&writer, &StoreOptions::default()).unwrap();
        assert_eq!(recompiled(&writer), 0);
        let plain = Connection::open(dir.path().join("plain.db")).unwrap();
        assert!(
            recompiled(&plain) > 0,
            "SQLite no longer recompiles for a bound LIMIT: the setting can go"
        );
    }

    /// What one attempt's record says: a success, or a failure retried later.
    fn attempted(claimed: &Claimed, succeeded: bool) -> AttemptResult {
        let (outcome, next) = match succeeded {
            true => (Outcome::Success { status: 200 }, Next::Delivered),
            false => (
                Outcome::Failed {
                    status: Some(500),
                    error: None,
                },
                Next::RetryAt(ATTEMPTED_AT + 60_000),
            ),
        };
        AttemptResult {
            claimed: claimed.clone(),
            at_ms: ATTEMPTED_AT + 1,
            duration: Duration::from_millis(3),
            outcome,
            response: None,
            next,
        }
    }

    /// Records its result from a task of its own, as an attempt does.
    fn record(
        store: &SqliteStore,
        result: AttemptResult,
    ) -> tokio::task::JoinHandle<AttemptRecorded> {
        let store = store.clone();
        tokio::spawn(async move { store.record_attempt(result).await.unwrap() })
    }

    /// The sizes of the batches committed, once they hold `operations` in all (the
    /// writer tells its observer after answering the callers).
    async fn batches(log: &BatchLog, operations: usize) -> Vec<usize> {
        for _ in 0..1000 {
            let sizes: Vec<usize> = log.batches().iter().map(|b| b.0).collect();
            if sizes.iter().sum::<usize>() >= operations {
                return sizes;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the writer did not report {operations} operations within 10 s");
    }

    /// Successes' records wait for more work to share their commit; an append or a
    /// failure's record (someone waits for each) ends the wait at once. The linger
    /// here is ten minutes: a record that committed alone, or urgent work that
    /// waited for the linger, fails the test.
    #[tokio::test]
    async fn successes_records_wait_to_share_a_commit_and_urgent_work_does_not() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(BatchLog::default());
        let store = SqliteStore::open(
            dir.path(),
            StoreOptions {
                record_linger: Some(Duration::from_secs(600)),
                observer: Some(log.clone()),
                ..StoreOptions::default()
            },
        )
        .unwrap();
        let claimed = claim_every_delivery(&store, 4).await;
        let pause = || tokio::time::sleep(Duration::from_millis(50));

        // The appends and the lease are reported after their callers were answered:
        // wait for them before the log starts afresh.
        batches(&log, 5).await;

        // Two successes recorded one after the other, then an event appended.
        log.clear();
        let first = record(&store, attempted(&claimed[0], true));
        pause().await;
        let second = record(&store, attempted(&claimed[1], true));
        pause().await;
        tokio::time::timeout(
            Duration::from_secs(10),
            store.append(class_updated(10, 1_000, "B")),
        )
        .await
        .expect("an append waited for the lingering records")
        .unwrap();
        for recorded in [first.await.unwrap(), second.await.unwrap()] {
            assert!(matches!(recorded, AttemptRecorded::Kept { .. }));
        }
        assert_eq!(
            batches(&log, 3).await,
            [3],
            "the two records and the append in one commit"
        );

        // A success, then a failure, whose record someone waits for.
        log.clear();
        let success = record(&store, attempted(&claimed[2], true));
        pause().await;
        let failure = tokio::time::timeout(
            Duration::from_secs(10),
            record(&store, attempted(&claimed[3], false)),
        )
        .await
        .expect("a failure's record waited for the lingering one")
        .unwrap();
        assert_eq!(
            failure,
            AttemptRecorded::Kept {
                consecutive_failures: 1
            }
        );
        assert!(matches!(
            success.await.unwrap(),
            AttemptRecorded::Kept { .. }
        ));
        assert_eq!(
            batches(&log, 2).await,
            [2],
            "the success's record waited for the failure's"
        );
    }
}
