//! The one interface every storage backend implements. Ingest, delivery, the API and
//! the CLI hold a [`super::Store`] and never learn which backend is behind it.
//!
//! Every method keeps the invariants stated in [`super`]; rules (the retry schedule,
//! the hold policy, subscription defaults and validation, the mirror's version rules)
//! live in their domain modules and reach a backend as decisions to store.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;

use super::{
    AppendOutcome, AttemptRecord, AttemptRecorded, AttemptResult, BackupReport, Claimed, Delivery,
    DeliveryFilter, DeliveryId, Entity, EntityFilter, EventFilter, EventSeq, EventSummary,
    KindCount, NewRejection, Progress, QueueDepth, RebuildReport, Rejection, RejectionFilter,
    StatsRow, StoreError, StoredEvent, SubscriptionId,
};
use crate::deliver::subscription::{Subscription, SubscriptionSpec};
use crate::event::NewEvent;
use crate::provider::ProviderKind;

/// A change to a subscription's spec, applied to the stored spec under the store's
/// lock; an `Err` is a message saying why the result would be invalid.
pub type SpecChange =
    Box<dyn FnOnce(SubscriptionSpec) -> Result<SubscriptionSpec, String> + Send + 'static>;

/// A rotation of a subscription's key, decided from the stored subscription under
/// the store's lock ([`crate::deliver::signing::rotate`]): the keys to write, or
/// why not (`Invalid`, `Conflict`).
pub type RotateChange = Box<
    dyn FnOnce(&Subscription) -> Result<crate::deliver::signing::KeySet, StoreError>
        + Send
        + 'static,
>;

/// For each subscription: how many deliveries may be leased now, and when the lease
/// ends (epoch ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClaimRequest {
    pub subscription: SubscriptionId,
    pub capacity: usize,
    pub lease_until_ms: i64,
}

/// One round of sharing the delivery work between instances: see
/// [`Backend::own_subscriptions`].
#[derive(Debug, Clone, Default)]
pub struct OwnershipRequest {
    /// This instance's name (for people looking at the store).
    pub instance_name: String,
    pub now_ms: i64,
    /// Every subscription, each with the end of an ownership taken or renewed now.
    pub candidates: Vec<(SubscriptionId, i64)>,
    /// Owned subscriptions this instance gives back; it has nothing of theirs in
    /// flight any more.
    pub give_up: Vec<SubscriptionId>,
}

/// What this instance dispatches after a round.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ownership {
    /// The subscriptions it owns, each with the moment its ownership ends unless
    /// renewed.
    pub owned: Vec<(SubscriptionId, i64)>,
    /// How many subscriptions each live instance should own: above it, an instance
    /// gives some back so that a new instance gets its part.
    pub fair_share: usize,
}

/// A lease given back without an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    pub delivery: DeliveryId,
    pub token: i64,
}

#[async_trait::async_trait]
pub trait Backend: Send + Sync + 'static {
    // ---- the backend itself ----

    /// Where the data lives, for messages (a file path, or a URL without password).
    fn location(&self) -> String;

    /// Whether the store can take a write now: a real write commits within `timeout`
    /// and the backend has room. `Err` says why not, for `/readyz`.
    async fn ping(&self, timeout: Duration) -> Result<(), StoreError>;

    /// Writes a consistent copy of the whole store to a new file while the store is in
    /// use, and checks it. A backend whose data lives elsewhere says how to back it up
    /// instead (`Invalid`).
    async fn backup(&self, destination: &Path) -> Result<BackupReport, StoreError>;

    /// Operations waiting to be committed right now (a gauge).
    fn queued_writes(&self) -> usize;

    /// Resolves when a commit has queued new deliveries (or soon after).
    fn deliveries_queued(&self) -> Arc<Notify>;

    // ---- ingest ----

    /// Stores `event` durably, or recognises it as a retry or a conflict. Returns only
    /// after the commit.
    async fn append(&self, event: NewEvent) -> Result<AppendOutcome, StoreError>;

    /// Adds to the rejection log without waiting; under a flood entries are dropped
    /// (and counted) rather than slowing ingest down.
    fn record_rejection(&self, rejection: NewRejection);

    /// Rejections not logged because their buffer was full (or their write failed).
    fn dropped_rejections(&self) -> u64;

    // ---- events ----

    async fn list_events(&self, filter: EventFilter) -> Result<Vec<EventSummary>, StoreError>;

    /// One event with its raw body and headers.
    async fn get_event(&self, seq: EventSeq) -> Result<Option<StoredEvent>, StoreError>;

    /// The event stored under a source's dedupe key (`id:<uuid>` or `sha256:<hex>`).
    async fn find_event(
        &self,
        source: &str,
        dedupe_key: &str,
    ) -> Result<Option<StoredEvent>, StoreError>;

    /// The events stored under a dedupe key in any source, or only in `source`:
    /// (source, seq) pairs ordered by source name.
    async fn find_events_by_key(
        &self,
        dedupe_key: &str,
        source: Option<&str>,
    ) -> Result<Vec<(String, EventSeq)>, StoreError>;

    async fn count_events(&self) -> Result<i64, StoreError>;

    /// Events counted by source, type and status, received in `[since, until)`.
    async fn stats(
        &self,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
    ) -> Result<Vec<StatsRow>, StoreError>;

    /// Deletes events received before `before_ms` with their deliveries and attempts
    /// (the mirror stays), in chunks that let appends interleave. Returns how many.
    async fn prune_events(&self, before_ms: i64) -> Result<u64, StoreError>;

    // ---- rejections ----

    async fn list_rejections(&self, limit: usize) -> Result<Vec<Rejection>, StoreError>;

    async fn find_rejections(&self, filter: RejectionFilter) -> Result<Vec<Rejection>, StoreError>;

    // ---- the mirror ----

    async fn list_entities(&self, filter: EntityFilter) -> Result<Vec<Entity>, StoreError>;

    /// Every mirrored entity of `kind` with this id, optionally narrowed to one source
    /// and tenant; `provider` chooses the platform's table as in
    /// [`EntityFilter::provider`]. At most 100.
    async fn find_entities(
        &self,
        provider: Option<ProviderKind>,
        kind: &str,
        id: &str,
        source: Option<&str>,
        tenant: Option<&str>,
    ) -> Result<Vec<Entity>, StoreError>;

    /// How many entities each kind has, live and deleted, per platform.
    async fn mirror_counts(&self) -> Result<Vec<KindCount>, StoreError>;

    /// The newest `newest` events about one entity, in version order (then receive
    /// order).
    async fn entity_history(
        &self,
        kind: &str,
        id: &str,
        source: &str,
        tenant: Option<&str>,
        newest: usize,
    ) -> Result<Vec<EventSummary>, StoreError>;

    /// Replays every stored event, in receive order, into an empty mirror (with the
    /// rules of this version), while ingest goes on; corrects stored descriptions.
    async fn rebuild_mirror(
        &self,
        progress: Arc<dyn Progress>,
    ) -> Result<RebuildReport, StoreError>;

    // ---- subscriptions ----

    /// Brings the config's subscriptions into the store by name: created or updated;
    /// config subscriptions no longer in the config are removed. State (paused,
    /// failures, hold) is kept.
    async fn sync_config_subscriptions(
        &self,
        specs: Vec<SubscriptionSpec>,
    ) -> Result<(), StoreError>;

    /// `Conflict` when the name is taken.
    async fn create_subscription(&self, spec: SubscriptionSpec)
    -> Result<Subscription, StoreError>;

    /// Applies `change` to the stored spec atomically. `NotFound`, or `Invalid` with
    /// the change's message.
    async fn update_subscription(
        &self,
        name: &str,
        change: SpecChange,
    ) -> Result<Subscription, StoreError>;

    /// Deletes it with its deliveries and their attempts.
    async fn delete_subscription(&self, name: &str) -> Result<(), StoreError>;

    /// Pauses or resumes (config subscriptions too). Resuming clears any hold and the
    /// failure count.
    async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        reason: Option<String>,
    ) -> Result<Subscription, StoreError>;

    /// Writes the keys `rotate` decides for the named subscription (any owner: the
    /// decision refuses what it must): the current key, the replaced keys still
    /// valid (every other stored one is deleted), and who rotated when.
    /// `NotFound`, or the decision's error.
    async fn rotate_secret(
        &self,
        name: &str,
        rotate: RotateChange,
    ) -> Result<Subscription, StoreError>;

    /// Deletes every replaced key that expired at or before `now_ms` (not just
    /// ignored: their values leave the store). Returns how many.
    async fn forget_expired_keys(&self, now_ms: i64) -> Result<u64, StoreError>;

    async fn list_subscriptions(&self) -> Result<Vec<Subscription>, StoreError>;

    async fn get_subscription(&self, name: &str) -> Result<Option<Subscription>, StoreError>;

    /// Seals, under the current key of [`super::StoreOptions::secrets`], every stored
    /// subscription secret and Basic Auth password that is plain text or sealed under
    /// another key (the previous one, while rotating), in one transaction. Returns how
    /// many subscriptions changed; without a key, changes nothing (0).
    async fn reseal_subscription_secrets(&self) -> Result<u64, StoreError>;

    /// For a lost key: clears every stored subscription secret and Basic Auth
    /// password (with its username) that `keys` cannot open, in one transaction. An
    /// API subscription is also paused, saying why, until its secrets are set again;
    /// a config subscription gets them from the config at the next start. With
    /// `dry_run`, only says which. Open the store with
    /// [`super::sealed::Sealer::withheld`] for this: its own keys cannot read them.
    async fn forget_unreadable_secrets(
        &self,
        keys: super::sealed::Sealer,
        dry_run: bool,
    ) -> Result<Vec<super::sealed::Unreadable>, StoreError>;

    /// Nothing is leased for the subscription before `until_ms`.
    async fn hold_subscription(&self, id: SubscriptionId, until_ms: i64) -> Result<(), StoreError>;

    /// Whether it may be sent to now: it exists, is not paused, not held. Read fresh.
    /// `Some` with when its signing keys were last rotated (0: never), so that an
    /// attempt can tell whether the keys it holds are still the current ones.
    async fn subscription_open(
        &self,
        id: SubscriptionId,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError>;

    // ---- deliveries ----

    /// Which subscriptions this instance dispatches. Each subscription is
    /// dispatched by one instance at a time, so that its limits (`max_in_flight`,
    /// holds, the order of its deliveries) hold for all instances together. A store
    /// that one process uses alone grants every candidate (this default); a shared
    /// store renews this instance's ownerships, takes back those in `give_up`,
    /// spreads the free ones over the live instances, and lets an ownership pass to
    /// another instance only after it has ended.
    async fn own_subscriptions(&self, request: OwnershipRequest) -> Result<Ownership, StoreError> {
        Ok(Ownership {
            fair_share: request.candidates.len(),
            owned: request.candidates,
        })
    }

    /// This instance stops dispatching (nothing of it is in flight any more): its
    /// ownerships pass to the others at once.
    async fn resign(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// Leases up to each request's capacity of its subscription's due deliveries
    /// (oldest due first), only while the subscription is neither paused nor held.
    async fn claim_due(
        &self,
        requests: Vec<ClaimRequest>,
        now_ms: i64,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Records an attempt and moves the delivery and its subscription on, if the lease
    /// it was made under still holds and the delivery is pending.
    async fn record_attempt(&self, result: AttemptResult) -> Result<AttemptRecorded, StoreError>;

    /// Gives leases back without an attempt.
    async fn release(&self, leases: Vec<Lease>) -> Result<(), StoreError>;

    /// Dead-letters a leased delivery without an attempt (its event is gone), if the
    /// lease still holds.
    async fn abandon(&self, claimed: &Claimed, reason: String) -> Result<(), StoreError>;

    /// Queues one delivery again. `NotFound`; `Conflict` while it is leased.
    async fn replay_delivery(&self, id: DeliveryId, now_ms: i64) -> Result<(), StoreError>;

    /// Queues again a subscription's deliveries (only dead ones if `dead_only`) created
    /// in `[since, until)`, except those leased right now. Returns how many.
    async fn replay_subscription(
        &self,
        name: &str,
        dead_only: bool,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Creates deliveries for stored events received in `[since, until)` that match
    /// the subscription and have none yet. Returns how many.
    async fn backfill(
        &self,
        name: &str,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<u64, StoreError>;

    /// Every subscription's pending and dead deliveries, by name.
    async fn delivery_queue(&self) -> Result<Vec<QueueDepth>, StoreError>;

    /// Newest first.
    async fn list_deliveries(&self, filter: DeliveryFilter) -> Result<Vec<Delivery>, StoreError>;

    /// One delivery with its attempt log, newest attempt last.
    async fn get_delivery(
        &self,
        id: DeliveryId,
    ) -> Result<Option<(Delivery, Vec<AttemptRecord>)>, StoreError>;
}
