//! SQLite behind the [`Backend`] interface. Writes go to the writer thread (the
//! inherent async methods); reads run on a pooled read connection on a blocking
//! thread, so an API query never stalls the async workers.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::SqliteStore;
use crate::deliver::subscription::{Subscription, SubscriptionSpec};
use crate::event::NewEvent;
use crate::provider::ProviderKind;
use crate::store::{
    AppendOutcome, AttemptRecord, AttemptRecorded, AttemptResult, Backend, BackupReport,
    ClaimRequest, Claimed, Delivery, DeliveryFilter, DeliveryId, Entity, EntityFilter, EventFilter,
    EventSeq, EventSummary, KindCount, Lease, NewRejection, Progress, QueueDepth, RebuildReport,
    Rejection, RejectionFilter, RotateChange, SpecChange, StatsRow, StoreError, StoredEvent,
    SubscriptionId,
};

impl SqliteStore {
    /// Runs a read on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        read: impl FnOnce(&SqliteStore) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let store = self.clone();
        tokio::task::spawn_blocking(move || read(&store))
            .await
            .map_err(|error| StoreError::Database(format!("a read task failed: {error}")))?
    }
}

#[async_trait::async_trait]
impl Backend for SqliteStore {
    fn location(&self) -> String {
        self.path().display().to_string()
    }

    async fn ping(&self, timeout: Duration) -> Result<(), StoreError> {
        SqliteStore::ping(self, timeout).await
    }

    async fn backup(&self, destination: &Path) -> Result<BackupReport, StoreError> {
        let destination = destination.to_path_buf();
        self.blocking(move |s| s.backup(&destination)).await
    }

    fn queued_writes(&self) -> usize {
        SqliteStore::queued_writes(self)
    }

    fn deliveries_queued(&self) -> Arc<Notify> {
        SqliteStore::deliveries_queued(self)
    }

    async fn append(&self, event: NewEvent) -> Result<AppendOutcome, StoreError> {
        SqliteStore::append(self, event).await
    }

    fn record_rejection(&self, rejection: NewRejection) {
        SqliteStore::record_rejection(self, rejection)
    }

    fn dropped_rejections(&self) -> u64 {
        SqliteStore::dropped_rejections(self)
    }

    async fn list_events(&self, filter: EventFilter) -> Result<Vec<EventSummary>, StoreError> {
        self.blocking(move |s| s.list_events(&filter)).await
    }

    async fn get_event(&self, seq: EventSeq) -> Result<Option<StoredEvent>, StoreError> {
        self.blocking(move |s| s.get_event(seq)).await
    }

    async fn find_event(
        &self,
        source: &str,
        dedupe_key: &str,
    ) -> Result<Option<StoredEvent>, StoreError> {
        let (source, key) = (source.to_string(), dedupe_key.to_string());
        self.blocking(move |s| s.find_event(&source, &key)).await
    }

    async fn find_events_by_key(
        &self,
        dedupe_key: &str,
        source: Option<&str>,
    ) -> Result<Vec<(String, EventSeq)>, StoreError> {
        let (key, source) = (dedupe_key.to_string(), source.map(str::to_string));
        self.blocking(move |s| s.find_events_by_key(&key, source.as_deref()))
            .await
    }

    async fn count_events(&self) -> Result<i64, StoreError> {
        self.blocking(|s| s.count_events()).await
    }

    async fn stats(
        &self,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> Result<Vec<StatsRow>, StoreError> {
        self.blocking(move |s| s.stats(since_ms, until_ms)).await
    }

    async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError> {
        SqliteStore::prune_events(self, before_ms).await
    }

    async fn list_rejections(&self, limit: usize) -> Result<Vec<Rejection>, StoreError> {
        self.blocking(move |s| s.list_rejections(limit)).await
    }

    async fn find_rejections(&self, filter: RejectionFilter) -> Result<Vec<Rejection>, StoreError> {
        self.blocking(move |s| s.find_rejections(&filter)).await
    }

    async fn list_entities(&self, filter: EntityFilter) -> Result<Vec<Entity>, StoreError> {
        self.blocking(move |s| s.list_entities(&filter)).await
    }

    async fn find_entities(
        &self,
        provider: Option<ProviderKind>,
        kind: &str,
        id: &str,
        source: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<Entity>, StoreError> {
        let (kind, id) = (kind.to_string(), id.to_string());
        let (source, tenant) = (source.map(str::to_string), tenant.map(str::to_string));
        self.blocking(move |s| {
            s.find_entities(provider, &kind, &id, source.as_deref(), tenant.as_deref())
        })
        .await
    }

    async fn mirror_counts(&self) -> Result<Vec<KindCount>, StoreError> {
        self.blocking(|s| s.mirror_counts()).await
    }

    async fn entity_history(
        &self,
        kind: &str,
        id: &str,
        source: &str,
        tenant: Option<&str>,
        newest: usize,
    ) -> Result<Vec<EventSummary>, StoreError> {
        let (kind, id, source) = (kind.to_string(), id.to_string(), source.to_string());
        let tenant = tenant.map(str::to_string);
        self.blocking(move |s| s.entity_history(&kind, &id, &source, tenant.as_deref(), newest))
            .await
    }

    async fn rebuild_mirror(
        &self,
        progress: Arc<dyn Progress>,
    ) -> Result<RebuildReport, StoreError> {
        SqliteStore::rebuild_mirror(self, progress).await
    }

    async fn sync_config_subscriptions(
        &self,
        specs: Vec<SubscriptionSpec>,
    ) -> Result<(), StoreError> {
        SqliteStore::sync_config_subscriptions(self, specs).await
    }

    async fn create_subscription(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<Subscription, StoreError> {
        SqliteStore::create_subscription(self, spec).await
    }

    async fn update_subscription(
        &self,
        name: &str,
        change: SpecChange,
    ) -> Result<Subscription, StoreError> {
        SqliteStore::update_subscription(self, name, change).await
    }

    async fn delete_subscription(&self, name: &str) -> Result<(), StoreError> {
        SqliteStore::delete_subscription(self, name).await
    }

    async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        reason: Option<String>,
    ) -> Result<Subscription, StoreError> {
        SqliteStore::set_paused(self, name, paused, reason).await
    }

    async fn rotate_secret(
        &self,
        name: &str,
        rotate: RotateChange,
    ) -> Result<Subscription, StoreError> {
        SqliteStore::rotate_secret(self, name, rotate).await
    }

    async fn forget_expired_keys(&self, now_ms: i64) -> Result<u64, StoreError> {
        SqliteStore::forget_expired_keys(self, now_ms).await
    }

    async fn list_subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        self.blocking(|s| s.list_subscriptions()).await
    }

    async fn get_subscription(&self, name: &str) -> Result<Option<Subscription>, StoreError> {
        let name = name.to_string();
        self.blocking(move |s| s.get_subscription(&name)).await
    }

    async fn reseal_subscription_secrets(&self) -> Result<u64, StoreError> {
        SqliteStore::reseal_subscription_secrets(self).await
    }

    async fn forget_unreadable_secrets(
        &self,
        keys: crate::store::sealed::Sealer,
        dry_run: bool,
    ) -> Result<Vec<crate::store::sealed::Unreadable>, StoreError> {
        SqliteStore::forget_unreadable_secrets(self, keys, dry_run).await
    }

    async fn hold_subscription(&self, id: SubscriptionId, until_ms: i64) -> Result<(), StoreError> {
        SqliteStore::hold_subscription(self, id, until_ms).await
    }

    async fn subscription_open(
        &self,
        id: SubscriptionId,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        // A point read of a small table that stays in the page cache, on the calling
        // thread: the hop to a blocking thread and back (two wake-ups, once per
        // attempt while draining) cost more than the read, and a WAL reader never
        // waits for the writer.
        SqliteStore::subscription_open(self, id, now_ms)
    }

    async fn claim_due(
        &self,
        requests: Vec<ClaimRequest>,
        now_ms: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        SqliteStore::claim_due(self, requests, now_ms).await
    }

    async fn record_attempt(&self, result: AttemptResult) -> Result<AttemptRecorded, StoreError> {
        SqliteStore::record_attempt(self, result).await
    }

    async fn release(&self, leases: Vec<Lease>) -> Result<(), StoreError> {
        SqliteStore::release(self, leases).await
    }

    async fn abandon(&self, claimed: &Claimed, reason: String) -> Result<(), StoreError> {
        SqliteStore::abandon(self, claimed, reason).await
    }

    async fn replay_delivery(&self, id: DeliveryId, now_ms: i64) -> Result<(), StoreError> {
        SqliteStore::replay_delivery(self, id, now_ms).await
    }

    async fn replay_subscription(
        &self,
        name: &str,
        dead_only: bool,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        SqliteStore::replay_subscription(self, name, dead_only, since_ms, until_ms, now_ms).await
    }

    async fn backfill(
        &self,
        name: &str,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        SqliteStore::backfill(self, name, since_ms, until_ms, now_ms).await
    }

    async fn delivery_queue(&self) -> Result<Vec<QueueDepth>, StoreError> {
        self.blocking(|s| s.delivery_queue()).await
    }

    async fn list_deliveries(&self, filter: DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        self.blocking(move |s| s.list_deliveries(&filter)).await
    }

    async fn get_delivery(
        &self,
        id: DeliveryId,
    ) -> Result<Option<(Delivery, Vec<AttemptRecord>)>, StoreError> {
        self.blocking(move |s| s.get_delivery(id)).await
    }
}
