//! The PostgreSQL backend: the same behaviour as the embedded SQLite one, in a
//! database that several classhook instances can share.
//!
//! - Appends go through one writer task with its own connection ([`writer`]): it
//!   drains a channel, writes the whole batch with set-based statements (`UNNEST`) in
//!   one transaction (group commit), and commits it without waiting for the WAL
//!   flush; the [`flusher`] answers the callers after one flush of its own has
//!   covered the batch (and every other batch committed meanwhile). Dedupe is the
//!   database's `UNIQUE (source, dedupe_key)`, so it holds across instances; writers
//!   of all instances commit one batch at a time (an advisory lock, held through the
//!   commit but not through a flush), so sequence numbers grow in commit order
//!   everywhere.
//! - The mirror is planned per batch in memory ([`mirror`]) and written with one
//!   upsert per table; outbox rows are inserted in the same transaction, matched
//!   against subscriptions the writer reloads whenever `subscription_version` moved.
//! - Delivery leases, attempt records and releases run directly on a small pool of
//!   their own (row locks and `SKIP LOCKED` keep them safe beside the writer and
//!   other instances); API reads and maintenance use a third pool, so neither can
//!   starve ingest or delivery.
//! - A server that cannot be reached is [`StoreError::NotReady`], never a hang past
//!   the pools' timeouts; the pools reconnect by themselves when it returns. URLs in
//!   messages never carry a password ([`redact_url`]); `sslmode=require` means TLS
//!   with a verified certificate ([`tls`]).

mod delivery;
mod entities;
mod errors;
mod events;
mod flusher;
mod ids;
pub(crate) mod import;
mod maintenance;
mod migrations;
mod mirror;
mod owners;
mod read;
mod records;
mod sql;
mod subscriptions;
#[doc(hidden)]
pub mod testing;
mod tls;
mod wakeups;
mod writer;

#[cfg(test)]
mod tests;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_postgres::NoTls;

use super::{
    AppendOutcome, AttemptRecord, AttemptRecorded, AttemptResult, Backend, BackupReport,
    ClaimRequest, Claimed, Delivery, DeliveryFilter, DeliveryId, Entity, EntityFilter, EventFilter,
    EventSeq, EventSummary, KindCount, Lease, MAX_COMMIT_LAG, NewRejection, Ownership,
    OwnershipRequest, Progress, QueueDepth, RebuildReport, Rejection, RejectionFilter,
    RotateChange, SpecChange, StatsRow, StoreError, StoreOptions, StoredEvent, SubscriptionId,
};
use crate::deliver::subscription::{Subscription, SubscriptionSpec};
use crate::event::NewEvent;
use crate::provider::ProviderKind;
use crate::store::sealed::{Sealer, Unreadable};
pub use errors::redact_url;
use writer::WriteOp;

/// Connections for API reads, subscription changes and maintenance.
const READ_POOL_SIZE: usize = 8;
/// Connections for attempt records, holds and ownership.
const DELIVERY_POOL_SIZE: usize = 4;
/// Connections for leases and their releases.
const LEASE_POOL_SIZE: usize = 2;
/// A lease's commit does not wait for the server's WAL flush. A lease lost with a
/// crash of the server only leaves its delivery due again, to be leased and sent
/// again: what a crash between a send and its record already does (at least once).
/// The dispatcher never starts a delivery while an attempt of it there may still
/// send it, so a forgotten lease does not put a delivery on the wire twice at
/// once. Every record commits durably, and its flush covers the leases committed
/// before it. The lease's wait for the flush was a sixth of the draining server's
/// samples.
const LEASE_COMMITS: &str = "-c synchronous_commit=off";
/// The writer plans each statement once per connection (planning at each execution
/// was a third of a batch's statement time) and tells the planner that it only ever
/// wants a batch's own rows, found by key: never a table scan, a hash join or a
/// merge join. A cached plan is made for the tables as they were then (on a new
/// database, empty; after an ANALYZE, as small as they were) and kept until the
/// next ANALYZE; a plan that scanned a table, cheap while it was small, would cost
/// O(rows) in every batch as the table grows. Without those three choices every
/// plan probes an index, at any size (tested in `tests/plans.rs`). A choice switched
/// off costs 10¹⁰ in the planner's units, which would make every plan that still
/// has one (a one-row table's scan) look worth JIT-compiling: 40–90 ms a batch; the
/// writer's statements never are, so JIT is off too.
const WRITER_PLANS: &str = "-c plan_cache_mode=force_generic_plan -c enable_seqscan=off \
     -c enable_hashjoin=off -c enable_mergejoin=off -c jit=off";
/// The delivery and lease pools' statements (leases, records, releases, holds,
/// ownership) never need a sort on a large table: every ordered read they make
/// walks an index in that order. Switching sorts off keeps the planner on those
/// indexes when it cannot tell them apart: on a table that has grown since its
/// last `ANALYZE` (right after a burst, before autovacuum's first pass) every
/// index's estimate is one row, and the lease's "earlier pending delivery of this
/// entity?" probe walked the subscription's whole due index instead of the
/// entity's few entries (0.2 s per claim at 18,000 pending). With sorts off, the
/// due index is out for that probe's `ORDER BY … LIMIT 1`, and the entity index
/// is the cheapest plan left. JIT is off because a switched-off choice costs 10¹⁰
/// in the planner's units (see [`WRITER_PLANS`]).
const DELIVERY_PLANS: &str = "-c enable_sort=off -c jit=off";
/// Plans the rest of `tx`'s statements at each execution, for the tables as they
/// are now, whatever the connection caches otherwise: for the writer's rarer paths
/// and for tables that grow under one long job (a rebuild's shadow tables). A plan
/// cached while a table was small may scan it, or choose between its indexes by
/// statistics of then, at O(rows) per execution as the table grows.
async fn plan_for_the_tables_as_they_are(
    tx: &deadpool_postgres::Transaction<'_>,
) -> Result<(), StoreError> {
    tx.batch_execute("SET LOCAL plan_cache_mode = force_custom_plan")
        .await?;
    Ok(())
}
/// Committed batches that may wait for a flush before the writer waits too.
const FLUSH_QUEUE: usize = 16;
/// How long a caller waits for a pooled connection, and a new connection for the
/// server, before the store says it is not ready.
const POOL_TIMEOUT: Duration = Duration::from_secs(5);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A handle to the PostgreSQL store; cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The URL without its password, for messages.
    location: String,
    options: StoreOptions,
    queue: mpsc::Sender<WriteOp>,
    /// API reads, subscription changes, maintenance.
    pool: Pool,
    /// Holds, ownership, and attempt records (through `records`).
    delivery: Pool,
    /// Leases and releases (commits that do not wait for a flush).
    leases: Pool,
    /// Attempt records, committed in groups on a connection of the delivery pool.
    records: records::Recorder,
    rejections: Arc<crate::store::rejection_queue::RejectionQueue>,
    deliveries_queued: Arc<Notify>,
    /// Woken after a commit that queued deliveries: the notifier wakes the
    /// dispatchers of this and the other instances.
    committed: Arc<Notify>,
    /// This process among the instances sharing the database (random at start).
    instance: i64,
    /// The tasks that live as long as the store (wakeups across instances).
    _tasks: AbortOnDrop,
}

/// Aborts its tasks when dropped, so that a closed store keeps no connection open.
#[derive(Default)]
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

impl PostgresStore {
    /// Connects to `url`, brings the schema up to date and starts the writer.
    pub async fn open(url: &str, mut options: StoreOptions) -> Result<PostgresStore, StoreError> {
        options.max_commit_lag = options.max_commit_lag.min(MAX_COMMIT_LAG);
        let target = parse_url(url)?;
        let location = redact_url(url);
        migrations::run(&target, &location).await?;
        let pool = build_pool(&target, READ_POOL_SIZE)?;
        if let Some(source) = import::unfinished_copy(&pool).await? {
            return Err(StoreError::NotReady(format!(
                "{location} is half-way through `classhook db copy` from {source}: run it again to finish before starting a gateway on it"
            )));
        }
        let delivery_target = with_settings(&target, DELIVERY_PLANS);
        let delivery = build_pool(&delivery_target, DELIVERY_POOL_SIZE)?;
        let leases = build_pool(
            &with_settings(&delivery_target, LEASE_COMMITS),
            LEASE_POOL_SIZE,
        )?;
        // The writer's own pool of one: it reconnects after the server came back. Its
        // statements are bounded, so that an append never waits past its timeout on
        // a lock another instance holds.
        let writer_target = with_settings(
            &target,
            &format!(
                "-c statement_timeout={} {WRITER_PLANS}",
                options.append_timeout.as_millis().max(1)
            ),
        );
        let writer_pool = build_pool(&writer_target, 1)?;
        // The flusher's connection, for the same reasons.
        let flush_pool = build_pool(&writer_target, 1)?;
        let deliveries_queued = Arc::new(Notify::new());
        // The writer wakes the notifier, which wakes this instance's dispatcher and
        // then the others'.
        let committed = Arc::new(Notify::new());
        let instance = crate::store::new_lease_token();
        let tasks = AbortOnDrop(vec![
            tokio::spawn(wakeups::notifier(
                pool.clone(),
                committed.clone(),
                deliveries_queued.clone(),
                instance.to_string(),
            )),
            tokio::spawn(wakeups::listener(
                target.clone(),
                deliveries_queued.clone(),
                instance.to_string(),
            )),
        ]);
        let rejections = Arc::new(crate::store::rejection_queue::RejectionQueue::default());
        let (queue, receiver) = mpsc::channel(options.queue_capacity.max(1));
        let (to_flush, committed_batches) = mpsc::channel(FLUSH_QUEUE);
        let flusher = flusher::Flusher {
            pool: flush_pool,
            observer: options.observer.clone(),
            notify: committed.clone(),
        };
        tokio::spawn(flusher.run(committed_batches));
        let task = writer::Writer {
            pool: writer_pool,
            max_batch: options.max_batch.max(1),
            observer: options.observer.clone(),
            subscriptions: writer::Subscriptions::default(),
            flusher: to_flush,
            rejections: rejections.clone(),
        };
        tokio::spawn(task.run(receiver));
        let store = PostgresStore {
            inner: Arc::new(Inner {
                location,
                options,
                queue,
                pool,
                records: records::Recorder::start(delivery.clone()),
                delivery,
                leases,
                rejections,
                deliveries_queued,
                committed,
                instance,
                _tasks: tasks,
            }),
        };
        store.probe_write().await?;
        Ok(store)
    }

    /// Opens an existing store for reading only: no migrations, no writer (writes
    /// answer `WriterGone`), subscription secrets withheld. `NoDatabase` when the
    /// database has no classhook schema; a newer schema is refused.
    pub async fn open_read_only(url: &str) -> Result<PostgresStore, StoreError> {
        let target = parse_url(url)?;
        let location = redact_url(url);
        let pool = build_pool(&target, READ_POOL_SIZE)?;
        migrations::check(&**pool.get().await?, &location).await?;
        let (queue, _closed) = mpsc::channel(1);
        Ok(PostgresStore {
            inner: Arc::new(Inner {
                location,
                options: StoreOptions {
                    secrets: crate::store::sealed::Sealer::withheld(),
                    ..StoreOptions::default()
                },
                queue,
                delivery: pool.clone(),
                leases: pool.clone(),
                records: records::Recorder::closed(),
                pool,
                rejections: Arc::default(),
                deliveries_queued: Arc::default(),
                committed: Arc::default(),
                instance: 0,
                _tasks: AbortOnDrop::default(),
            }),
        })
    }

    /// Brings the schema of the database at `url` up to date (`classhook migrate`).
    pub async fn migrate(url: &str) -> Result<(), StoreError> {
        let target = parse_url(url)?;
        migrations::run(&target, &redact_url(url)).await
    }

    /// Deliveries were queued or made due outside the writer (replay, backfill,
    /// resume): wake the dispatchers of every instance, as a commit does.
    fn deliveries_may_be_due(&self) {
        self.inner.committed.notify_one();
    }

    /// A connection for reads and jobs.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.inner.pool.get().await?)
    }

    /// A connection for holds, abandons and ownership.
    async fn delivery_client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.inner.delivery.get().await?)
    }

    /// A connection for leases and releases ([`LEASE_COMMITS`]).
    async fn lease_client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.inner.leases.get().await?)
    }

    /// Queues `make`'s operation for the writer and waits for its answer.
    async fn request<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> WriteOp,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.inner
            .queue
            .send(make(reply))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }

    /// Writes and commits the readiness row: a connection alone proves nothing about
    /// a read-only or full database.
    async fn probe_write(&self) -> Result<(), StoreError> {
        let client = self.client().await?;
        client
            .execute(
                "INSERT INTO readiness (id, probed_at_ms) VALUES (1, $1)
                 ON CONFLICT (id) DO UPDATE SET probed_at_ms = excluded.probed_at_ms",
                &[&now_ms()],
            )
            .await?;
        Ok(())
    }
}

/// Whether `url` is a PostgreSQL URL this backend can use; the message shows the URL
/// only without its password.
pub fn check_url(url: &str) -> Result<(), String> {
    let trimmed = url.trim();
    if !(trimmed.starts_with("postgres://") || trimmed.starts_with("postgresql://")) {
        return Err(
            "must be a postgres:// (or postgresql://) URL; leave it out to keep the data in SQLite under data_dir"
                .into(),
        );
    }
    parse_url(url).map(drop).map_err(|error| error.to_string())
}

/// `target` with `settings` (`-c name=value …`) added to the ones its URL gives.
fn with_settings(target: &tls::Target, settings: &str) -> tls::Target {
    let mut with = target.clone();
    with.config.options(format!(
        "{} {settings}",
        target.config.get_options().unwrap_or("")
    ));
    with
}

fn parse_url(url: &str) -> Result<tls::Target, StoreError> {
    let mut target = tls::Target::parse(url)?;
    if target.config.get_connect_timeout().is_none() {
        target.config.connect_timeout(CONNECT_TIMEOUT);
    }
    target.config.application_name("classhook");
    Ok(target)
}

fn build_pool(target: &tls::Target, size: usize) -> Result<Pool, StoreError> {
    let manager_config = || ManagerConfig {
        recycling_method: RecyclingMethod::Fast,
    };
    let manager = match &target.tls {
        Some(tls) => Manager::from_config(target.config.clone(), tls.clone(), manager_config()),
        None => Manager::from_config(target.config.clone(), NoTls, manager_config()),
    };
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(POOL_TIMEOUT))
        .create_timeout(Some(CONNECT_TIMEOUT))
        .recycle_timeout(Some(POOL_TIMEOUT))
        .runtime(Runtime::Tokio1)
        .build()
        .map_err(|e| StoreError::Database(format!("cannot build the connection pool: {e}")))
}

/// Wall-clock time for the readiness row (informational only).
fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl PostgresStore {
    fn location(&self) -> String {
        self.inner.location.clone()
    }

    async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        if self.inner.queue.is_closed() {
            return Err(StoreError::WriterGone);
        }
        tokio::time::timeout(timeout, self.probe_write())
            .await
            .map_err(|_| StoreError::Timeout(timeout))?
    }

    fn queued_writes(&self) -> usize {
        self.inner.queue.max_capacity() - self.inner.queue.capacity()
    }

    async fn append(&self, event: NewEvent) -> Result<AppendOutcome, StoreError> {
        let timeout = self.inner.options.append_timeout;
        let write_by = std::time::Instant::now() + self.inner.options.max_commit_lag;
        let wait = self.request(|reply| WriteOp::Append(Box::new(event), write_by, reply));
        tokio::time::timeout(timeout, wait)
            .await
            .map_err(|_| StoreError::Timeout(timeout))?
    }

    fn record_rejection(&self, rejection: NewRejection) {
        if self.inner.queue.is_closed() {
            // A read-only handle (or a stopped writer): nothing would write it.
            self.inner.rejections.count_dropped(1);
            return;
        }
        if self.inner.rejections.push(rejection)
            && self
                .inner
                .queue
                .try_send(WriteOp::RejectionsWaiting)
                .is_err()
        {
            // The writer is saturated; it takes waiting rejections with every batch.
            self.inner.rejections.wake_failed();
        }
    }
}

#[async_trait::async_trait]
impl Backend for PostgresStore {
    fn location(&self) -> String {
        PostgresStore::location(self)
    }

    async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        PostgresStore::ping(self, timeout).await
    }

    /// The data lives on the server: it is backed up there (`pg_dump`, or the
    /// server's base backups and WAL archive), not by classhook.
    async fn backup(&self, _destination: &Path) -> Result<BackupReport, StoreError> {
        Err(StoreError::Invalid(format!(
            "the store is the PostgreSQL database {}: back it up on the server (pg_dump, or base backups with a WAL archive)",
            self.inner.location
        )))
    }

    fn queued_writes(&self) -> usize {
        PostgresStore::queued_writes(self)
    }

    fn deliveries_queued(&self) -> Arc<Notify> {
        self.inner.deliveries_queued.clone()
    }

    async fn append(&self, event: NewEvent) -> Result<AppendOutcome, StoreError> {
        PostgresStore::append(self, event).await
    }

    fn record_rejection(&self, rejection: NewRejection) {
        PostgresStore::record_rejection(self, rejection)
    }

    fn dropped_rejections(&self) -> u64 {
        self.inner.rejections.dropped()
    }

    async fn list_events(&self, filter: EventFilter) -> Result<Vec<EventSummary>, StoreError> {
        PostgresStore::list_events(self, filter).await
    }

    async fn get_event(&self, seq: EventSeq) -> Result<Option<StoredEvent>, StoreError> {
        PostgresStore::get_event(self, seq).await
    }

    async fn find_event(
        &self,
        source: &str,
        dedupe_key: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        PostgresStore::find_event(self, source, dedupe_key).await
    }

    async fn find_events_by_key(
        &self,
        dedupe_key: &str,
        source: Option<&str>,
    ) -> Result<Vec<(String, EventSeq)>, StoreError> {
        PostgresStore::find_events_by_key(self, dedupe_key, source).await
    }

    async fn count_events(&self) -> Result<i64, StoreError> {
        PostgresStore::count_events(self).await
    }

    async fn stats(
        &self,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> Result<Vec<StatsRow>, StoreError> {
        PostgresStore::stats(self, since_ms, until_ms).await
    }

    async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        PostgresStore::prune_events(self, before_ms).await
    }

    async fn list_rejections(&self, limit: usize) -> Result<Vec<Rejection>, StoreError> {
        PostgresStore::find_rejections(
            self,
            RejectionFilter {
                limit,
                ..RejectionFilter::default()
            },
        )
        .await
    }

    async fn find_rejections(&self, filter: RejectionFilter) -> Result<Vec<Rejection>, StoreError> {
        PostgresStore::find_rejections(self, filter).await
    }

    async fn list_entities(&self, filter: EntityFilter) -> Result<Vec<Entity>, StoreError> {
        PostgresStore::list_entities(self, filter).await
    }

    async fn find_entities(
        &self,
        provider: Option<ProviderKind>,
        kind: &str,
        id: &str,
        source: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<Entity>, StoreError> {
        PostgresStore::find_entities(self, provider, kind, id, source, tenant).await
    }

    async fn mirror_counts(&self) -> Result<Vec<KindCount>, StoreError> {
        PostgresStore::mirror_counts(self).await
    }

    async fn entity_history(
        &self,
        kind: &str,
        id: &str,
        source: &str,
        tenant: Option<&str>,
        newest: usize,
    ) -> Result<Vec<EventSummary>, StoreError> {
        PostgresStore::entity_history(self, kind, id, source, tenant, newest).await
    }

    async fn rebuild_mirror(
        &self,
        progress: Arc<dyn Progress>,
    ) -> Result<RebuildReport, StoreError> {
        PostgresStore::rebuild_mirror(self, progress).await
    }

    async fn sync_config_subscriptions(
        &self,
        specs: Vec<SubscriptionSpec>,
    ) -> Result<(), StoreError> {
        PostgresStore::sync_config_subscriptions(self, specs).await
    }

    async fn create_subscription(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<Subscription, StoreError> {
        PostgresStore::create_subscription(self, spec).await
    }

    async fn update_subscription(
        &self,
        name: &str,
        change: SpecChange,
    ) -> Result<Subscription, StoreError> {
        PostgresStore::update_subscription(self, name, change).await
    }

    async fn delete_subscription(&self, name: &str) -> Result<(), StoreError> {
        PostgresStore::delete_subscription(self, name).await
    }

    async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        reason: Option<String>,
    ) -> Result<Subscription, StoreError> {
        let changed = PostgresStore::set_paused(self, name, paused, reason).await?;
        if !paused {
            self.deliveries_may_be_due();
        }
        Ok(changed)
    }

    async fn rotate_secret(
        &self,
        name: &str,
        rotate: RotateChange,
    ) -> Result<Subscription, StoreError> {
        PostgresStore::rotate_secret(self, name, rotate).await
    }

    async fn forget_expired_keys(&self, now_ms: i64) -> Result<u64, StoreError> {
        PostgresStore::forget_expired_keys(self, now_ms).await
    }

    async fn list_subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        PostgresStore::list_subscriptions(self).await
    }

    async fn get_subscription(&self, name: &str) -> Result<Option<Subscription>, StoreError> {
        PostgresStore::get_subscription(self, name).await
    }

    async fn reseal_subscription_secrets(&self) -> Result<u64, StoreError> {
        PostgresStore::reseal_subscription_secrets(self).await
    }

    async fn forget_unreadable_secrets(
        &self,
        keys: Sealer,
        dry_run: bool,
    ) -> Result<Vec<Unreadable>, StoreError> {
        PostgresStore::forget_unreadable_secrets(self, keys, dry_run).await
    }

    async fn hold_subscription(&self, id: SubscriptionId, until_ms: i64) -> Result<(), StoreError> {
        PostgresStore::hold_subscription(self, id, until_ms).await
    }

    async fn subscription_open(
        &self,
        id: SubscriptionId,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        PostgresStore::subscription_open(self, id, now_ms).await
    }

    async fn own_subscriptions(&self, request: OwnershipRequest) -> Result<Ownership, StoreError> {
        PostgresStore::own_subscriptions(self, request).await
    }

    async fn resign(&self) -> Result<(), StoreError> {
        PostgresStore::resign(self).await
    }

    async fn claim_due(
        &self,
        requests: Vec<ClaimRequest>,
        now_ms: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        PostgresStore::claim_due(self, requests, now_ms).await
    }

    async fn record_attempt(&self, result: AttemptResult) -> Result<AttemptRecorded, StoreError> {
        PostgresStore::record_attempt(self, result).await
    }

    async fn release(&self, leases: Vec<Lease>) -> Result<(), StoreError> {
        PostgresStore::release(self, leases).await
    }

    async fn abandon(&self, claimed: &Claimed, reason: String) -> Result<(), StoreError> {
        PostgresStore::abandon(self, claimed, reason).await
    }

    async fn replay_delivery(&self, id: DeliveryId, now_ms: i64) -> Result<(), StoreError> {
        PostgresStore::replay_delivery(self, id, now_ms).await?;
        self.deliveries_may_be_due();
        Ok(())
    }

    async fn replay_subscription(
        &self,
        name: &str,
        dead_only: bool,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let replayed =
            PostgresStore::replay_subscription(self, name, dead_only, since_ms, until_ms, now_ms)
                .await?;
        self.deliveries_may_be_due();
        Ok(replayed)
    }

    async fn backfill(
        &self,
        name: &str,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let created = PostgresStore::backfill(self, name, since_ms, until_ms, now_ms).await?;
        self.deliveries_may_be_due();
        Ok(created)
    }

    async fn delivery_queue(&self) -> Result<Vec<QueueDepth>, StoreError> {
        PostgresStore::delivery_queue(self).await
    }

    async fn list_deliveries(&self, filter: DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        PostgresStore::list_deliveries(self, filter).await
    }

    async fn get_delivery(
        &self,
        id: DeliveryId,
    ) -> Result<Option<(Delivery, Vec<AttemptRecord>)>, StoreError> {
        PostgresStore::get_delivery(self, id).await
    }
}
