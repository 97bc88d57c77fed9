//! The only code that knows SQL. [`Store`] keeps events, the mirror, deliveries and
//! rejections behind one interface, [`Backend`]; each backend lives in a folder of
//! its own (`sqlite/`, the embedded default) and is chosen by [`Location`]. Callers
//! never learn which one runs. Rules (retry schedule, hold policy, subscription
//! defaults and validation, the mirror's version rules) stay in their domain modules:
//! a backend stores their decisions.
//!
//! Invariants every backend keeps:
//! - `append` returns only after the event is committed durably (a 200 means on disk);
//! - one stored event per (source, dedupe key): the first delivery wins, a later copy
//!   only counts (`times_seen`) when it is the same JSON value (spacing and key order
//!   aside), and a different value under the same key is a conflict kept in the
//!   rejection log, never a replacement;
//! - an event is written at most `MAX_COMMIT_LAG` (monotonic time) after `append`
//!   was called, or not at all (its caller got a timeout): so receive time and
//!   commit order never drift further apart than time windows allow for;
//! - the rejection log is bounded.
//!
//! Operations that share a commit (appends, leases, attempt records) are isolated:
//! one that fails is rolled back and answered alone; the others still commit.
//!
//! Deliveries:
//! - a delivery row is created in the transaction that stores its event, with a
//!   `webhook_id` unique across databases and instances, kept for every retry and
//!   replay of that row;
//! - a delivery is leased only while its subscription is neither paused nor held,
//!   checked in the lease itself; each lease has a token;
//! - an attempt is recorded only under the lease it was made under and only while
//!   the delivery is pending: a delivery replayed, deleted or leased again meanwhile
//!   ignores the late record, and a recorded success is never undone;
//! - a replay never runs beside an attempt: a leased delivery is not replayed
//!   (a conflict for one delivery, skipped in bulk);
//! - `attempts` is the length of the attempt log; the retry schedule counts only the
//!   attempts since the delivery was last queued (a 410 does not use up a retry);
//! - deliveries and their attempts go when retention prunes their event;
//! - a stored row this version cannot read is an error, never a default.

mod backend;
pub mod copy;
mod ids;
pub mod postgres;
mod rejection_queue;
pub mod sealed;
mod sqlite;
#[cfg(test)]
mod test_support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::deliver::subscription::{Subscription, SubscriptionSpec};
use crate::event::EventStatus;
use crate::provider::ProviderKind;
use crate::secret::Secret;

pub use backend::{
    Backend, ClaimRequest, Lease, Ownership, OwnershipRequest, RotateChange, SpecChange,
};
pub use ids::{DeliveryId, EventSeq, SubscriptionId};

pub use postgres::PostgresStore;
#[doc(hidden)]
pub use postgres::testing as postgres_testing;
pub use sqlite::DATABASE_FILE;

/// The longest an event may wait between reaching the store and being written.
pub const MAX_COMMIT_LAG: Duration = Duration::from_secs(45);

/// How long, by default, a group of nothing but successes' attempt records may wait
/// for more records (or other work) to share its commit. Nobody waits for such a
/// record (its slot is free, its delivery done), and at a busy dispatcher's pace they
/// otherwise commit a few at a time, each commit paying its flush and copying the
/// same pages again. See [`AttemptResult::may_linger`].
pub const RECORD_LINGER: Duration = Duration::from_millis(2);

/// A handle to the store, whichever backend holds the data; cheap to clone. Every
/// operation is a method of [`Backend`], reached through this handle.
#[derive(Clone)]
pub struct Store {
    backend: Arc<dyn Backend>,
    /// Subscription changes made through this handle and its clones.
    subscription_changes: Arc<ChangeCounter>,
}

impl std::ops::Deref for Store {
    type Target = dyn Backend;

    fn deref(&self) -> &Self::Target {
        self.backend.as_ref()
    }
}

/// Counts the subscription changes made through one store handle and its clones:
/// what [`Store::subscriptions_version`] returns.
#[derive(Debug, Default)]
struct ChangeCounter(std::sync::atomic::AtomicU64);

impl ChangeCounter {
    fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }

    /// After the change has committed (a reader that saw the old count reads again).
    fn bump(&self) {
        self.0.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Where the data lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// The embedded default: one SQLite file in this data directory.
    Sqlite { data_dir: PathBuf },
    /// A PostgreSQL database (`postgres://…`; the URL may hold a password).
    Postgres { url: Secret },
}

impl Location {
    pub fn sqlite(data_dir: impl Into<PathBuf>) -> Location {
        Location::Sqlite {
            data_dir: data_dir.into(),
        }
    }

    /// The backend a database URL names.
    pub fn from_url(url: Secret) -> Location {
        Location::Postgres { url }
    }

    /// Whether a backend takes this database URL; the message never shows it.
    pub fn check_url(url: &str) -> Result<(), String> {
        postgres::check_url(url)
    }

    /// For messages: the data directory, or the URL without its password.
    pub fn shown(&self) -> String {
        match self {
            Location::Sqlite { data_dir } => data_dir.display().to_string(),
            Location::Postgres { url } => postgres::redact_url(url.expose()),
        }
    }
}

impl Store {
    fn new(backend: impl Backend) -> Store {
        Store {
            backend: Arc::new(backend),
            subscription_changes: Arc::default(),
        }
    }

    /// A number that moves whenever a subscription changed through this store
    /// handle (or a clone of it), once the change has committed (or failed: reading
    /// again costs little): created, changed, deleted, synced from the config,
    /// paused or resumed (also by a 410), held, its keys rotated or forgotten, its
    /// secrets resealed or cleared. No I/O, so that the dispatcher can keep the list
    /// it read until the number moves. Changes made elsewhere (the CLI, another
    /// instance on PostgreSQL) do not move it: whoever keeps a list by it reads it
    /// again at least every poll interval anyway. (Counts of failures, which only
    /// the hold policy reads, do not count as a change.) The methods below are the
    /// backend's subscription changes, each counted here, once for every backend.
    pub fn subscriptions_version(&self) -> u64 {
        self.subscription_changes.get()
    }

    /// `result` of a subscription change, counted.
    fn changed<T>(&self, result: T) -> T {
        self.subscription_changes.bump();
        result
    }

    pub async fn sync_config_subscriptions(
        &self,
        specs: Vec<SubscriptionSpec>,
    ) -> Result<(), StoreError> {
        self.changed(self.backend.sync_config_subscriptions(specs).await)
    }

    pub async fn create_subscription(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<Subscription, StoreError> {
        self.changed(self.backend.create_subscription(spec).await)
    }

    pub async fn update_subscription(
        &self,
        name: &str,
        change: SpecChange,
    ) -> Result<Subscription, StoreError> {
        self.changed(self.backend.update_subscription(name, change).await)
    }

    pub async fn delete_subscription(&self, name: &str) -> Result<(), StoreError> {
        self.changed(self.backend.delete_subscription(name).await)
    }

    pub async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        reason: Option<String>,
    ) -> Result<Subscription, StoreError> {
        self.changed(self.backend.set_paused(name, paused, reason).await)
    }

    pub async fn rotate_secret(
        &self,
        name: &str,
        rotate: RotateChange,
    ) -> Result<Subscription, StoreError> {
        self.changed(self.backend.rotate_secret(name, rotate).await)
    }

    pub async fn forget_expired_keys(&self, now_ms: i64) -> Result<u64, StoreError> {
        self.changed(self.backend.forget_expired_keys(now_ms).await)
    }

    pub async fn reseal_subscription_secrets(&self) -> Result<u64, StoreError> {
        self.changed(self.backend.reseal_subscription_secrets().await)
    }

    pub async fn forget_unreadable_secrets(
        &self,
        keys: sealed::Sealer,
        dry_run: bool,
    ) -> Result<Vec<sealed::Unreadable>, StoreError> {
        let forgotten = self.backend.forget_unreadable_secrets(keys, dry_run).await;
        if dry_run {
            forgotten
        } else {
            self.changed(forgotten)
        }
    }

    pub async fn hold_subscription(
        &self,
        id: SubscriptionId,
        until_ms: i64,
    ) -> Result<(), StoreError> {
        self.changed(self.backend.hold_subscription(id, until_ms).await)
    }

    /// Records an attempt; one that pauses its subscription is a change.
    pub async fn record_attempt(
        &self,
        result: AttemptResult,
    ) -> Result<AttemptRecorded, StoreError> {
        let pauses = matches!(result.next, crate::deliver::schedule::Next::Pause);
        let recorded = self.backend.record_attempt(result).await;
        if pauses {
            self.changed(recorded)
        } else {
            recorded
        }
    }

    /// Opens (creating if needed) the store, runs migrations and starts its writer.
    pub async fn open(location: &Location, options: StoreOptions) -> Result<Store, StoreError> {
        Ok(match location {
            Location::Sqlite { data_dir } => {
                Store::new(sqlite::SqliteStore::open(data_dir, options)?)
            }
            Location::Postgres { url } => {
                Store::new(postgres::PostgresStore::open(url.expose(), options).await?)
            }
        })
    }

    /// Opens an existing store to change it (re-queue, rebuild): like [`Store::open`],
    /// but `NoDatabase` when there is none yet instead of creating one.
    pub async fn open_existing(
        location: &Location,
        options: StoreOptions,
    ) -> Result<Store, StoreError> {
        match location {
            Location::Sqlite { data_dir } => {
                let file = Store::sqlite_file(data_dir);
                if !file.exists() {
                    return Err(StoreError::NoDatabase(file));
                }
            }
            Location::Postgres { url } => {
                postgres::PostgresStore::open_read_only(url.expose()).await?;
            }
        }
        Store::open(location, options).await
    }

    /// Opens an existing store for reading only (no writer, no migrations):
    /// `NoDatabase` when there is none. Subscription secrets are not opened (they
    /// read as empty, see [`sealed::Sealer::withheld`]): no key is needed.
    pub async fn open_read_only(location: &Location) -> Result<Store, StoreError> {
        Ok(match location {
            Location::Sqlite { data_dir } => {
                Store::new(sqlite::SqliteStore::open_read_only(data_dir)?)
            }
            Location::Postgres { url } => {
                Store::new(postgres::PostgresStore::open_read_only(url.expose()).await?)
            }
        })
    }

    /// Brings the schema up to date without starting anything (`classhook migrate`);
    /// safe to run again, and beside running instances.
    pub async fn migrate(location: &Location) -> Result<(), StoreError> {
        match location {
            Location::Sqlite { data_dir } => {
                drop(sqlite::SqliteStore::open(
                    data_dir,
                    StoreOptions::default(),
                )?);
                Ok(())
            }
            Location::Postgres { url } => postgres::PostgresStore::migrate(url.expose()).await,
        }
    }

    /// The SQLite database file of a data directory.
    pub fn sqlite_file(data_dir: &Path) -> PathBuf {
        data_dir.join(DATABASE_FILE)
    }
}

/// How a store commits; the defaults suit production, tests shorten some.
#[derive(Clone)]
pub struct StoreOptions {
    /// How long a write waits on a lock held by another process before failing.
    pub busy_timeout: Duration,
    /// How long `append` waits for its commit before reporting a timeout.
    pub append_timeout: Duration,
    /// The most operations committed in one transaction.
    pub max_batch: usize,
    /// How many writes may wait for the writer before callers wait to enqueue.
    pub queue_capacity: usize,
    /// Told about every batch the writer commits.
    pub observer: Option<Arc<dyn CommitObserver>>,
    /// SQLite: how many recent dedupe keys the writer holds in memory before it
    /// settles them into the database in key order; `None`: the backend's default.
    pub dedupe_settle_after: Option<usize>,
    /// An event not written this long after `append` was called is not stored
    /// (at most [`MAX_COMMIT_LAG`]; shorter only in tests).
    pub max_commit_lag: Duration,
    /// How many events `mirror rebuild` reads per chunk; `None`: the backend's default.
    pub rebuild_chunk: Option<usize>,
    /// SQLite: how long a batch of nothing but successes' attempt records may wait for
    /// more work to share its commit; `None`: [`RECORD_LINGER`] (longer only in
    /// tests). PostgreSQL's records do not wait: there it gained nothing
    /// (BENCHMARKS.md).
    pub record_linger: Option<Duration>,
    /// How subscription secrets are stored: every backend writes and reads the
    /// `secret` and Basic Auth password columns only through it. Default: plain text.
    pub secrets: sealed::Sealer,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            busy_timeout: Duration::from_secs(5),
            append_timeout: Duration::from_secs(8),
            max_batch: 1024,
            queue_capacity: 16 * 1024,
            observer: None,
            dedupe_settle_after: None,
            max_commit_lag: MAX_COMMIT_LAG,
            rebuild_chunk: None,
            record_linger: None,
            secrets: sealed::Sealer::plain(),
        }
    }
}

/// Told how far long work has got (for progress bars). Counts are of the work's own
/// unit (events, rows); `total` may come late or never.
pub trait Progress: Send + Sync {
    fn total(&self, _units: u64) {}
    fn advanced(&self, _units: u64) {}
}

/// No one is watching.
pub struct NoProgress;

impl Progress for NoProgress {}

impl NoProgress {
    pub fn shared() -> Arc<dyn Progress> {
        Arc::new(NoProgress)
    }
}

/// Told about every committed (or failed) batch, e.g. by the metrics.
pub trait CommitObserver: Send + Sync {
    fn batch_committed(&self, operations: usize, duration: Duration, ok: bool);
}

/// Live and deleted entities of one kind of one platform.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindCount {
    pub kind: String,
    /// The platform: a typed kind's, or for generic entities that of the source whose
    /// events made them (`None` once retention deleted all of that source's events).
    pub provider: Option<ProviderKind>,
    /// Whether the entities are in the platform's typed table for the kind.
    pub typed: bool,
    pub live: i64,
    pub deleted: i64,
}

/// One subscription's deliveries right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueDepth {
    pub subscription: String,
    /// Waiting for their first attempt or a retry (leased ones included).
    pub pending: i64,
    pub dead: i64,
}

/// What a backup wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackupReport {
    pub events: i64,
    pub bytes: u64,
}

/// What a rebuild did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RebuildReport {
    pub events: u64,
    pub applied: u64,
    /// Stored events whose kind, op, version or status this version describes
    /// differently (corrected on the event).
    pub redescribed: u64,
}

/// What `append` did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendOutcome {
    /// First time seen: stored under this sequence number.
    Stored { seq: EventSeq },
    /// A retry of the event stored as `seq`, with the same body: counted.
    Duplicate { seq: EventSeq },
    /// Same dedupe key as `seq` but a different JSON value: counted, body kept as rejection.
    Conflict { seq: EventSeq },
}

impl AppendOutcome {
    pub fn seq(self) -> EventSeq {
        match self {
            AppendOutcome::Stored { seq }
            | AppendOutcome::Duplicate { seq }
            | AppendOutcome::Conflict { seq } => seq,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            AppendOutcome::Stored { .. } => "stored",
            AppendOutcome::Duplicate { .. } => "duplicate",
            AppendOutcome::Conflict { .. } => "conflict",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // The I/O error is part of the message, not a `source`: printed once.
    #[error("cannot prepare the data directory {path}: {error}")]
    DataDir {
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    /// The backend's own error, as text: callers never see a driver type.
    #[error("database error: {0}")]
    Database(String),
    /// A batch could not be committed (disk full, database locked too long, …).
    #[error("could not commit: {0}")]
    Commit(String),
    /// The transaction lost a lock conflict (a deadlock or a serialization
    /// failure) and was rolled back; the same work may succeed when tried again.
    #[error("the transaction lost a lock conflict: {0}")]
    Contended(String),
    #[error("the store did not commit within {0:?}")]
    Timeout(std::time::Duration),
    #[error("the store's writer has stopped")]
    WriterGone,
    #[error("the database schema is version {found}, newer than this classhook knows ({known})")]
    SchemaTooNew { found: i64, known: i64 },
    #[error("a stored row is unreadable: {0}")]
    Corrupt(String),
    /// A command that reads the store found no database file.
    #[error("there is no classhook database at {}", .0.display())]
    NoDatabase(std::path::PathBuf),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// A change refused because its result would be invalid.
    #[error("{0}")]
    Invalid(String),
    /// A stored subscription secret cannot be opened (or written) with the keys given.
    #[error(transparent)]
    Secrets(#[from] sealed::SealError),
    /// The store cannot safely take writes (its file was removed or replaced, the
    /// disk is full, the database is read-only).
    #[error("{0}")]
    NotReady(String),
}

/// One request refused by ingest, for the rejection log. Never holds a secret or the
/// `Authorization` header.
#[derive(Debug, Clone)]
pub struct NewRejection {
    pub at_ms: i64,
    pub source: Option<String>,
    /// The machine-readable error code the client received.
    pub reason: String,
    pub status: u16,
    pub message: String,
    /// The first bytes of the body (at most [`REJECTION_BODY_PREFIX`] are kept).
    pub body: Vec<u8>,
    /// The length and SHA-256 of the whole body (`None`: no body was read).
    pub body_len: usize,
    pub body_sha256: Option<[u8; 32]>,
    pub remote_addr: Option<String>,
}

/// How many bytes of a rejected body the log keeps.
pub const REJECTION_BODY_PREFIX: usize = 2048;

/// How many rejections the log keeps; older ones are pruned.
pub const REJECTION_LOG_CAPACITY: i64 = 10_000;

impl NewRejection {
    /// The log entry for a copy of stored event `seq` whose JSON value differs: the
    /// first body is kept, this one goes to the log (its prefix and hash).
    pub fn conflict(event: &crate::event::NewEvent, seq: i64) -> NewRejection {
        NewRejection {
            at_ms: event.received_at_ms,
            source: Some(event.source.clone()),
            reason: "id_conflict".into(),
            status: 200,
            message: format!(
                "event {} was already stored (seq {seq}) with different content; the first body is kept",
                event.event_id.as_deref().unwrap_or(&event.dedupe_key)
            ),
            body: event.body[..event.body.len().min(REJECTION_BODY_PREFIX)].to_vec(),
            body_len: event.body.len(),
            body_sha256: Some(event.body_sha256),
            remote_addr: event.remote_addr.clone(),
        }
    }
}

/// A fresh Standard Webhooks id for a new delivery row, kept for every retry and
/// replay of it. Receivers de-duplicate on this id, so it must never repeat across
/// databases, restored backups or instances: a time-ordered UUID (48 bits of
/// milliseconds, 74 random bits), not anything derived from row numbers.
pub(crate) fn new_webhook_id() -> String {
    format!("msg_{}", uuid::Uuid::now_v7().simple())
}

/// A lease token: random, never 0 (0 means "not leased").
pub(crate) fn new_lease_token() -> i64 {
    loop {
        let token = rand::random::<i64>();
        if token != 0 {
            return token;
        }
    }
}

/// A stored rejection.
#[derive(Debug, Clone)]
pub struct Rejection {
    pub id: i64,
    pub at_ms: i64,
    pub source: Option<String>,
    pub reason: String,
    pub status: u16,
    pub message: String,
    pub body: Vec<u8>,
    pub body_len: usize,
    pub body_sha256: Option<Vec<u8>>,
    pub remote_addr: Option<String>,
}

/// A stored event as listed (without body and headers).
#[derive(Debug, Clone, PartialEq)]
pub struct EventSummary {
    pub seq: EventSeq,
    pub source: String,
    pub provider: ProviderKind,
    pub tenant: Option<String>,
    pub event_type: String,
    pub event_id: Option<String>,
    pub dedupe_key: String,
    pub entity_kind: String,
    pub entity_id: Option<String>,
    pub entity_op: String,
    pub version_ms: i64,
    pub received_at_ms: i64,
    pub status: EventStatus,
    pub status_reason: Option<String>,
    pub times_seen: i64,
    pub last_seen_at_ms: i64,
    pub conflicts: i64,
    /// What the event did to the mirror: applied, tombstoned, stale, blocked.
    pub mirror_effect: Option<String>,
}

/// A stored event in full.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub summary: EventSummary,
    pub body: Vec<u8>,
    pub headers: Vec<(String, String)>,
    /// The `traceparent` of the span that received it, when tracing was on.
    pub trace_parent: Option<String>,
}

/// Which events to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub source: Option<String>,
    pub tenant: Option<String>,
    /// An exact type, `PREFIX*` (every type starting with PREFIX) or `*`, as
    /// subscriptions match.
    pub event_type: Option<String>,
    pub status: Option<EventStatus>,
    /// Received at or after (epoch ms).
    pub since_ms: Option<i64>,
    /// Received before (epoch ms).
    pub until_ms: Option<i64>,
    /// Only events with a smaller sequence number (the pagination cursor).
    pub before_seq: Option<EventSeq>,
    pub limit: usize,
}

/// Which rejections to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct RejectionFilter {
    pub source: Option<String>,
    pub reason: Option<String>,
    pub before_id: Option<i64>,
    pub limit: usize,
}

/// Which mirrored entities of one kind to list, in the order they first appeared.
#[derive(Debug, Clone, Default)]
pub struct EntityFilter {
    pub kind: String,
    /// The platform whose table `kind` means (its typed table, or the generic one);
    /// `None`: whichever platform has a typed table for it (see
    /// [`crate::mirror::kinds::platform_for`]).
    pub provider: Option<ProviderKind>,
    pub source: Option<String>,
    pub tenant: Option<String>,
    pub include_deleted: bool,
    /// Typed kinds only: (column, value) pairs that must match.
    pub fields: Vec<(&'static str, crate::mirror::FieldValue)>,
    /// Only entities whose mirrored version is at least this (epoch ms).
    pub since_version_ms: Option<i64>,
    /// Only entities after this position (the pagination cursor).
    pub after: Option<i64>,
    pub limit: usize,
}

/// One mirrored entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Entity {
    /// Position in its table, for pagination.
    pub position: i64,
    pub kind: String,
    pub source: String,
    /// `None` for platforms without tenants.
    pub tenant: Option<String>,
    pub id: String,
    pub deleted: bool,
    pub version_ms: i64,
    /// The event whose data (or tombstone) the entity holds.
    pub event_seq: EventSeq,
    /// The entity as the platform names its fields (`null` for a bare tombstone).
    pub data: serde_json::Value,
}

/// Events counted by source, type and status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatsRow {
    pub source: String,
    pub event_type: String,
    pub status: EventStatus,
    pub events: i64,
    /// Requests received from the platform, retries included (sum of `times_seen`).
    pub received: i64,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryState {
    Pending,
    Delivered,
    Dead,
}

impl DeliveryState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "pending" => Some(DeliveryState::Pending),
            "delivered" => Some(DeliveryState::Delivered),
            "dead" => Some(DeliveryState::Dead),
            _ => None,
        }
    }
}

/// One event on its way to one subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    pub id: DeliveryId,
    pub subscription: String,
    pub event_seq: EventSeq,
    /// Stable across retries and replays: receivers recognise repeats by it.
    pub webhook_id: String,
    pub state: DeliveryState,
    /// Every attempt ever made (the length of its attempt log), replays included.
    pub attempts: i64,
    pub next_attempt_at_ms: i64,
    pub created_at_ms: i64,
    pub delivered_at_ms: Option<i64>,
    pub last_error: Option<String>,
}

/// One recorded attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptRecord {
    pub at_ms: i64,
    pub duration_ms: i64,
    pub status_code: Option<u16>,
    pub error: Option<String>,
    /// The first 1 KiB of the response body.
    pub response: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct DeliveryFilter {
    pub subscription: Option<String>,
    /// Only the deliveries of this event (the dashboard's event page).
    pub event: Option<EventSeq>,
    pub state: Option<DeliveryState>,
    pub before_id: Option<DeliveryId>,
    pub limit: usize,
}

/// What a finished attempt changes, for the store to record.
#[derive(Debug, Clone)]
pub struct AttemptResult {
    pub claimed: Claimed,
    pub at_ms: i64,
    pub duration: std::time::Duration,
    pub outcome: crate::deliver::schedule::Outcome,
    pub response: Option<String>,
    pub next: crate::deliver::schedule::Next,
}

/// The columns an attempt record writes, the same on every backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredAttempt {
    /// The HTTP status the receiver answered, if it answered.
    pub status_code: Option<u16>,
    /// Why there was no usable answer (timeout, refused, guard).
    pub error: Option<String>,
    /// What the delivery shows as its last error (the error, or a non-2xx status).
    pub last_error: Option<String>,
    pub state: DeliveryState,
    pub next_attempt_at_ms: i64,
    /// Added to `round_attempts`: a 410 pauses without using up a retry.
    pub round_step: i64,
    pub delivered_at_ms: Option<i64>,
}

impl AttemptResult {
    /// Whether this record may wait a little to share its commit with others
    /// ([`RECORD_LINGER`]): only a success's, which no attempt waits for. A
    /// failure's holds its subscription's slot until it is committed.
    pub fn may_linger(&self) -> bool {
        self.next == crate::deliver::schedule::Next::Delivered
    }

    /// What recording this attempt writes on its delivery and attempt rows.
    pub fn stored(&self) -> StoredAttempt {
        use crate::deliver::schedule::{Next, Outcome};
        let (status_code, error) = match &self.outcome {
            Outcome::Success { status } | Outcome::Throttled { status, .. } => {
                (Some(*status), None)
            }
            Outcome::Gone => (Some(410), None),
            Outcome::Failed { status, error } => (*status, error.clone()),
        };
        let last_error = error.clone().or_else(|| {
            status_code
                .filter(|s| !(200..300).contains(s))
                .map(|s| format!("HTTP {s}"))
        });
        // Every attempt counts in `attempts` (the attempt log); a 410 pauses without
        // using up a retry of the schedule, so it does not count in `round_attempts`.
        let (state, next_attempt_at_ms, round_step, delivered_at_ms) = match self.next {
            Next::Delivered => (DeliveryState::Delivered, self.at_ms, 1, Some(self.at_ms)),
            Next::Pause => (DeliveryState::Pending, self.at_ms, 0, None),
            Next::RetryAt(at) => (DeliveryState::Pending, at, 1, None),
            Next::Dead => (DeliveryState::Dead, self.at_ms, 1, None),
        };
        StoredAttempt {
            status_code,
            error,
            last_error,
            state,
            next_attempt_at_ms,
            round_step,
            delivered_at_ms,
        }
    }
}

/// What became of an attempt's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptRecorded {
    /// Recorded; the subscription has failed this many times in a row now (0 after
    /// a success), for the hold policy to judge.
    Kept { consecutive_failures: i64 },
    /// The lease it was made under had ended (replayed, deleted, leased again):
    /// nothing was recorded.
    LeaseEnded,
}

/// A delivery leased to a worker.
#[derive(Debug, Clone)]
pub struct Claimed {
    pub delivery_id: DeliveryId,
    pub subscription_id: SubscriptionId,
    pub event_seq: EventSeq,
    pub webhook_id: String,
    /// Attempts since it was last queued (created or replayed): its place in the
    /// retry schedule.
    pub round_attempts: i64,
    /// Identifies this lease: only a record made under it counts.
    pub lease_token: i64,
    /// Its event, read with the lease (so that an attempt reads nothing of its own).
    pub event: ClaimedEvent,
}

/// A leased delivery's event, as the lease found it.
#[derive(Debug, Clone)]
pub enum ClaimedEvent {
    Stored(Arc<EventToSend>),
    /// No longer stored (retention): the delivery is dead-lettered unsent.
    Gone,
    /// Stored, but not readable by this version (the attempt leaves its lease to
    /// expire, as after a failed read).
    Unreadable(String),
}

/// What an attempt needs of its event.
#[derive(Debug)]
pub struct EventToSend {
    pub provider: ProviderKind,
    pub event_type: String,
    pub received_at_ms: i64,
    pub body: Vec<u8>,
    /// The `traceparent` of the span that received it, when tracing was on.
    pub trace_parent: Option<String>,
    /// A DreamClass body as subscribers get it, prepared by the first attempt that
    /// needs it and shared by the others of the same claim (a claim gives the
    /// deliveries of one event to several subscriptions one `EventToSend`).
    pub platform_body: std::sync::OnceLock<crate::deliver::platform_body::PlatformBody>,
}

impl EventToSend {
    /// The body prepared for DreamClass delivery (once per claimed event).
    pub fn platform_body(&self) -> &crate::deliver::platform_body::PlatformBody {
        self.platform_body
            .get_or_init(|| crate::deliver::platform_body::PlatformBody::prepare(&self.body))
    }
}

/// A claimed delivery's event columns as stored: provider, event type, received
/// at (ms), body, `traceparent`.
pub type EventColumns = (String, String, i64, Vec<u8>, Option<String>);

impl ClaimedEvent {
    /// The event from its stored columns (`None`: no row).
    pub fn from_columns(row: Option<EventColumns>) -> ClaimedEvent {
        let Some((provider, event_type, received_at_ms, body, trace_parent)) = row else {
            return ClaimedEvent::Gone;
        };
        match ProviderKind::parse(&provider) {
            Some(provider) => ClaimedEvent::Stored(Arc::new(EventToSend {
                provider,
                event_type,
                received_at_ms,
                body,
                trace_parent,
                platform_body: std::sync::OnceLock::new(),
            })),
            None => ClaimedEvent::Unreadable(format!("unknown provider {provider:?}")),
        }
    }
}
