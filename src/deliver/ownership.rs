//! Which subscriptions this instance dispatches. Several instances on one store
//! share the delivery work by subscription: each subscription has one owner at a
//! time ([`Store::own_subscriptions`]), so its `max_in_flight`, holds and order hold
//! for the cluster as they do for one process. Alone on a store, an instance owns
//! every subscription.
//!
//! The rule that keeps two instances from sending for one subscription at once: an
//! attempt starts only while this instance's ownership lasts longer than the
//! attempt can (the subscription's timeout plus the lease margin), and an ownership
//! passes to another instance only after it has ended or been given back, which
//! this instance does only once nothing of that subscription is in flight here.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use super::subscription::Subscription;
use crate::store::{OwnershipRequest, Store, SubscriptionId};

/// How often ownerships are renewed (and the work spread again).
pub const ROUND_EVERY: Duration = Duration::from_secs(1);

/// How long an ownership outlasts its renewal, beyond what one attempt may take: a
/// stopped instance's subscriptions pass to the others this long after its last
/// round (plus the longest attempt), a clean stop at once.
pub const OWNED_FOR: Duration = Duration::from_secs(5);

/// Until when this instance owns one subscription (0: not owned); shared with its
/// attempts, which check it before they send.
#[derive(Debug, Clone, Default)]
pub struct Owned(Arc<AtomicI64>);

impl Owned {
    /// Whether an attempt started at `now_ms` and lasting up to `longest` ends while
    /// this instance still owns the subscription.
    pub fn outlasts(&self, now_ms: i64, longest: Duration) -> bool {
        self.0.load(Ordering::Acquire) - now_ms >= longest.as_millis() as i64
    }

    fn set(&self, until_ms: i64) {
        self.0.store(until_ms, Ordering::Release);
    }
}

#[derive(Default)]
pub struct Owners {
    owned: HashMap<SubscriptionId, Owned>,
    /// Owned, but being given back: nothing new starts; given back once nothing is
    /// in flight.
    releasing: HashSet<SubscriptionId>,
    /// The subscriptions of the last round, and when it ran (by the monotonic clock
    /// and by the gateway's, which tests move by hand).
    last: Option<(Vec<SubscriptionId>, Instant, i64)>,
    /// This instance's name, for people looking at the store.
    name: String,
}

impl Owners {
    pub fn named(name: &str) -> Owners {
        Owners {
            name: name.to_string(),
            ..Owners::default()
        }
    }

    /// The ownership of `id` as its attempts see it.
    pub fn of(&mut self, id: SubscriptionId) -> Owned {
        self.owned.entry(id).or_default().clone()
    }

    /// Whether new deliveries of `subscription` may be leased now.
    pub fn may_lease(&self, subscription: &Subscription, now_ms: i64, margin: Duration) -> bool {
        !self.releasing.contains(&subscription.id)
            && self
                .owned
                .get(&subscription.id)
                .is_some_and(|o| o.outlasts(now_ms, subscription.spec.timeout + margin))
    }

    /// Renews, takes and gives back ownerships with the store, once per
    /// [`ROUND_EVERY`] or when the subscriptions changed. `in_flight` says what this
    /// instance has leased per subscription.
    pub async fn round(
        &mut self,
        store: &Store,
        subscriptions: &[&Subscription],
        in_flight: &HashMap<SubscriptionId, usize>,
        now_ms: i64,
        margin: Duration,
    ) {
        let mut ids: Vec<SubscriptionId> = subscriptions.iter().map(|s| s.id).collect();
        ids.sort_unstable();
        let every_ms = ROUND_EVERY.as_millis() as i64;
        if let Some((last_ids, at, at_ms)) = &self.last
            && *last_ids == ids
            && at.elapsed() < ROUND_EVERY
            && now_ms - at_ms < every_ms
        {
            return;
        }
        let idle = |id: &SubscriptionId| in_flight.get(id).copied().unwrap_or(0) == 0;
        let give_up: Vec<SubscriptionId> = self.releasing.iter().copied().filter(idle).collect();
        let candidates = subscriptions
            .iter()
            .map(|s| {
                let lasts = s.spec.timeout + margin + OWNED_FOR;
                (s.id, now_ms + lasts.as_millis() as i64)
            })
            .collect();
        let request = OwnershipRequest {
            instance_name: self.name.clone(),
            now_ms,
            candidates,
            give_up: give_up.clone(),
        };
        let ownership = match store.own_subscriptions(request).await {
            Ok(ownership) => ownership,
            Err(error) => {
                // What is owned stays owned until it ends; attempts check that.
                tracing::warn!(%error, "cannot renew which subscriptions this instance delivers");
                return;
            }
        };
        self.last = Some((ids, Instant::now(), now_ms));
        for id in &give_up {
            self.releasing.remove(id);
        }
        let now_owned: HashMap<SubscriptionId, i64> = ownership.owned.into_iter().collect();
        self.owned.retain(|id, owned| {
            let kept = now_owned.contains_key(id);
            if !kept {
                owned.set(0);
            }
            kept
        });
        for (id, until_ms) in &now_owned {
            if !self.releasing.contains(id) {
                self.owned.entry(*id).or_default().set(*until_ms);
            }
        }
        // Above the fair share: give back the least busy, so that an instance that
        // joined gets its part.
        let excess = now_owned.len().saturating_sub(ownership.fair_share);
        let mut keeping: Vec<SubscriptionId> = now_owned
            .keys()
            .filter(|id| !self.releasing.contains(id))
            .copied()
            .collect();
        let releasing_now = excess.saturating_sub(now_owned.len() - keeping.len());
        keeping.sort_by_key(|id| (in_flight.get(id).copied().unwrap_or(0), *id));
        for id in keeping.into_iter().take(releasing_now) {
            self.releasing.insert(id);
            if let Some(owned) = self.owned.get(&id) {
                // Its waiting attempts give their leases back.
                owned.set(0);
            }
        }
    }

    /// Nothing new starts: attempts waiting for a slot give their leases back.
    pub fn stop_sending(&mut self) {
        for owned in self.owned.values() {
            owned.set(0);
        }
        self.releasing.extend(self.owned.keys().copied());
    }

    /// Gives every ownership back (a clean stop, nothing in flight any more).
    pub async fn resign(&mut self, store: &Store) {
        for owned in self.owned.values() {
            owned.set(0);
        }
        self.owned.clear();
        if let Err(error) = store.resign().await {
            tracing::warn!(%error, "cannot give back this instance's subscriptions; the others take them over once they end");
        }
    }
}
