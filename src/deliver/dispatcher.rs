//! The dispatcher: leases due deliveries in bulk, each with its event (up to
//! `PREFETCH` × `max_in_flight` not yet sent per subscription, so that leasing
//! costs one commit per many deliveries and never waits for records), sends at
//! most `max_in_flight` per subscription at a time (a semaphore each, so a slow or
//! failing subscriber never holds up the others), and records every attempt. A lease
//! that is never recorded (the process died) expires and the delivery is taken
//! again: at-least-once, and nothing that was recorded as delivered is sent again.
//!
//! A subscription with a rate limit (or slowed down by a 429, see [`super::rate`])
//! makes each attempt, once it has its slot, wait for its turn before it sends:
//! waiting is not an attempt (nothing is recorded). Only as many deliveries are
//! leased as can start before their lease ends, and one whose turn would come too
//! late gives its lease back unsent.
//!
//! A paused or held subscription is never leased (the store checks its state in the
//! lease itself). Deliveries leased before a pause or hold took hold check the
//! subscription again once they have a slot (a read at most [`OPEN_READ_REUSE`]
//! old, and none older than a change made through this store), and give their
//! lease back unsent. An
//! attempt that may stop its subscription (anything but a success) keeps its slot
//! until its record is committed, so the next one in line already sees the stop.
//!
//! The subscriptions are read again only when they changed through this store
//! handle ([`crate::store::Store::subscriptions_version`]) and otherwise at least
//! every `poll_interval`, so that a change made elsewhere (the CLI, another
//! instance) is seen within it; each reading parses and checks every URL once. A
//! pause or hold made elsewhere takes effect all the same: the lease checks the
//! store, not the list, and the "still open" read sees it within
//! [`OPEN_READ_REUSE`] (10 ms).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use super::ownership::{Owned, Owners};
use super::rate::Gate;
use super::schedule::{self, Next, Outcome};
use super::send::{self, Sender};
use super::subscription::Subscription;
use crate::clock::Clock;
use crate::provider::ProviderKind;
use crate::store::{
    AttemptRecorded, AttemptResult, ClaimRequest, Claimed, ClaimedEvent, DeliveryId, Lease, Store,
    SubscriptionId,
};
use crate::telemetry::{AttemptAbout, AttemptTrace, Telemetry};
use std::sync::atomic::AtomicBool;

#[derive(Debug, Clone)]
pub struct DispatchOptions {
    pub allow_private_destinations: bool,
    pub hold_after_failures: u32,
    /// How often due retries are looked for (new deliveries wake the dispatcher at once).
    pub poll_interval: Duration,
    /// A lease lasts the subscription's timeout plus this; a worker that dies leaves
    /// its deliveries leased that long.
    pub lease_margin: Duration,
}

/// Told about every recorded attempt, e.g. by the metrics.
pub trait DeliveryObserver: Send + Sync {
    /// An attempt ended with `outcome` after `took`, and was recorded.
    fn attempted(&self, subscription: &str, outcome: &Outcome, took: Duration);
    /// A delivery used up its retries.
    fn dead_lettered(&self, subscription: &str);
    /// A delivery succeeded `lag` after its event was received.
    fn delivered(&self, lag: Duration);
    /// How many deliveries of `subscription` wait for its rate limit now (told
    /// when it changed, at the next round).
    fn waiting_for_rate(&self, _subscription: &str, _waiting: usize) {}
    /// A 429 halved the subscription's rate.
    fn slowed_down(&self, _subscription: &str) {}
}

/// How many deliveries per allowed in-flight request one subscription may hold leased.
const PREFETCH: usize = 8;

/// A subscription as a reading of the subscriptions found it, with what its
/// attempts need and that changes only with it: its URL, parsed and checked.
pub struct Ready {
    pub subscription: Subscription,
    /// Where its attempts go, or why they cannot (recorded as their failure).
    pub target: Result<send::Target, String>,
}

impl std::ops::Deref for Ready {
    type Target = Subscription;

    fn deref(&self) -> &Subscription {
        &self.subscription
    }
}

/// The subscriptions as last read, kept until they change.
struct Reading {
    /// [`crate::store::Store::subscriptions_version`] before the read.
    version: u64,
    /// When the read started.
    at: Instant,
    subscriptions: Arc<HashMap<SubscriptionId, Arc<Ready>>>,
}

/// What became of one leased delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finished {
    /// Sent, and the attempt recorded.
    Attempted,
    /// Sent, but the lease had ended meanwhile (replayed, deleted): not recorded.
    LeaseLost,
    /// Not sent: the subscription was paused or held after the lease was taken, this
    /// instance no longer dispatches it, or its turn under the rate limit would have
    /// come too late for its lease.
    Released,
    /// Not sent: its event is no longer stored (retention); dead-lettered.
    Abandoned,
    /// Not sent or not recorded because the store failed; the lease will expire.
    StoreFailed,
}

/// Leases and sends deliveries. [`Dispatcher::run`] does so forever in the
/// background; tests drive it one [`Dispatcher::step`] at a time.
pub struct Dispatcher {
    store: Store,
    clock: Arc<dyn Clock>,
    sender: Sender,
    options: DispatchOptions,
    /// Leased and not yet finished, per subscription.
    in_flight: HashMap<SubscriptionId, usize>,
    /// Per subscription: leased and not yet sent (waiting for a slot or a turn, or
    /// on the wire). What is leased ahead is bounded by this, not by `in_flight`:
    /// an attempt that only waits for its record to commit takes no slot time.
    unsent: HashMap<SubscriptionId, Arc<AtomicUsize>>,
    /// Told whenever an attempt leaves the unsent ones, so that the next lease
    /// does not wait for its record.
    sent: Arc<Notify>,
    /// Per subscription: its `max_in_flight` and the semaphore enforcing it.
    slots: HashMap<SubscriptionId, (u32, Arc<Semaphore>)>,
    /// Per subscription: its pace (rate limit, slow-down after a 429).
    gates: HashMap<SubscriptionId, Arc<Gate>>,
    /// Per subscription: its "is it still open" reads, shared by attempts.
    open_checks: HashMap<SubscriptionId, Arc<OpenCheck>>,
    /// Running attempts; each ends with its subscription id and what became of it.
    attempts: JoinSet<(SubscriptionId, Finished)>,
    /// Deliveries whose attempt here may still send them ([`OnTheWire`]).
    on_the_wire: Arc<Mutex<HashSet<DeliveryId>>>,
    observer: Option<Arc<dyn DeliveryObserver>>,
    /// Which subscriptions this instance dispatches (all of them, alone on a store).
    owners: Owners,
    /// Spans of attempts and `traceparent` (tracing on).
    telemetry: Option<Telemetry>,
    /// The subscriptions as last read.
    reading: Option<Reading>,
    /// Set when the last reading is known to be out of date although the version
    /// did not move (an attempt's success cleared a hold it showed).
    stale: Arc<AtomicBool>,
}

impl Dispatcher {
    /// A dispatcher sending directly (no proxy).
    pub fn new(store: Store, clock: Arc<dyn Clock>, options: DispatchOptions) -> Dispatcher {
        let sender = Sender::new(options.allow_private_destinations);
        Dispatcher::with_sender(store, clock, options, sender)
    }

    /// A dispatcher sending through `sender` (e.g. one with a proxy).
    pub fn with_sender(
        store: Store,
        clock: Arc<dyn Clock>,
        options: DispatchOptions,
        sender: Sender,
    ) -> Dispatcher {
        Dispatcher {
            sender,
            store,
            clock,
            options,
            in_flight: HashMap::new(),
            unsent: HashMap::new(),
            sent: Arc::new(Notify::new()),
            slots: HashMap::new(),
            gates: HashMap::new(),
            open_checks: HashMap::new(),
            attempts: JoinSet::new(),
            on_the_wire: Arc::default(),
            observer: None,
            owners: Owners::default(),
            telemetry: None,
            reading: None,
            stale: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Names this instance among several on one store (shown beside the
    /// subscriptions it dispatches).
    pub fn named(mut self, instance: &str) -> Dispatcher {
        self.owners = Owners::named(instance);
        self
    }

    /// Makes a span of every attempt and sends `traceparent` with it.
    pub fn with_telemetry(mut self, telemetry: Option<Telemetry>) -> Dispatcher {
        self.telemetry = telemetry;
        self
    }

    /// Tells `observer` about every recorded attempt.
    pub fn with_observer(mut self, observer: Arc<dyn DeliveryObserver>) -> Dispatcher {
        self.observer = Some(observer);
        self
    }

    /// Runs until `stop` completes, then stops cleanly: leases nothing more, gives
    /// back the leases of deliveries not yet sent, lets the attempts on the wire
    /// finish and be recorded, and gives its subscriptions back to the other
    /// instances.
    pub async fn run(mut self, stop: impl std::future::Future<Output = ()>) {
        let queued = self.store.deliveries_queued();
        tokio::pin!(stop);
        loop {
            while let Some(ended) = self.attempts.try_join_next() {
                self.finished(ended);
            }
            self.lease_and_start().await;
            tokio::select! {
                () = &mut stop => break,
                () = queued.notified() => {}
                () = self.sent.notified() => {}
                Some(ended) = self.attempts.join_next() => self.finished(ended),
                () = tokio::time::sleep(self.options.poll_interval) => {}
            }
        }
        self.owners.stop_sending();
        self.settle().await;
        self.owners.resign(&self.store).await;
    }

    /// One round, to the end: leases what is due now and waits until every attempt
    /// started has finished. Returns what became of each leased delivery. (Turns
    /// under a rate limit are waited for by the gateway's clock: with a clock that a
    /// test moves by hand, a round with a waiting turn ends when the clock moves.)
    pub async fn step(&mut self) -> Vec<Finished> {
        self.lease_and_start().await;
        self.settle().await
    }

    /// Waits until every attempt started so far has finished; returns what became of
    /// each.
    pub async fn settle(&mut self) -> Vec<Finished> {
        let mut ended = Vec::new();
        while let Some(result) = self.attempts.join_next().await {
            if let Ok((_, finished)) = &result {
                ended.push(*finished);
            }
            self.finished(result);
        }
        ended
    }

    fn finished(&mut self, ended: Result<(SubscriptionId, Finished), tokio::task::JoinError>) {
        // A panicked attempt (a bug) keeps its place in the count; its lease expires.
        if let Ok((subscription, _)) = ended
            && let Some(count) = self.in_flight.get_mut(&subscription)
        {
            *count = count.saturating_sub(1);
        }
    }

    /// Deletes replaced keys whose grace period is over, when the subscriptions just
    /// read hold one (signing already skips them; this takes them out of the store).
    async fn forget_expired_keys(
        &self,
        subscriptions: &HashMap<SubscriptionId, Arc<Ready>>,
        now_ms: i64,
    ) {
        let expired = subscriptions
            .values()
            .flat_map(|s| &s.previous_keys)
            .any(|k| k.expires_at_ms <= now_ms);
        if !expired {
            return;
        }
        match self.store.forget_expired_keys(now_ms).await {
            Ok(n) => tracing::info!(keys = n, "expired signing keys forgotten"),
            Err(error) => tracing::warn!(%error, "cannot forget expired signing keys"),
        }
    }

    /// The subscriptions: as last read, unless they changed through this store
    /// handle since, or the reading is a poll interval old (changes made elsewhere),
    /// or an attempt found it out of date. `None` when they cannot be read.
    async fn subscriptions(&mut self) -> Option<Arc<HashMap<SubscriptionId, Arc<Ready>>>> {
        let version = self.store.subscriptions_version();
        let stale = self.stale.swap(false, AtomicOrdering::AcqRel);
        if let Some(reading) = &self.reading
            && !stale
            && reading.version == version
            && reading.at.elapsed() < self.options.poll_interval
        {
            return Some(reading.subscriptions.clone());
        }
        let at = Instant::now();
        match self.store.list_subscriptions().await {
            Ok(list) => {
                let subscriptions: HashMap<SubscriptionId, Arc<Ready>> = list
                    .into_iter()
                    .map(|subscription| {
                        let target = self.sender.target(&subscription.spec.url);
                        let ready = Ready {
                            subscription,
                            target,
                        };
                        (ready.id, Arc::new(ready))
                    })
                    .collect();
                let subscriptions = Arc::new(subscriptions);
                self.reading = Some(Reading {
                    version,
                    at,
                    subscriptions: subscriptions.clone(),
                });
                Some(subscriptions)
            }
            Err(error) => {
                tracing::warn!(%error, "dispatcher cannot read subscriptions");
                self.reading = None;
                None
            }
        }
    }

    /// Reads the subscriptions (or keeps the last reading, see
    /// [`Dispatcher::subscriptions`]), leases what is due for those with room, and
    /// starts an attempt for each leased delivery. Returns how many were leased.
    pub async fn lease_and_start(&mut self) -> usize {
        let now_ms = self.clock.now_ms();
        let Some(subscriptions) = self.subscriptions().await else {
            return 0;
        };
        let margin = self.options.lease_margin;
        let listed: Vec<&Subscription> = subscriptions.values().map(|s| &s.subscription).collect();
        self.owners
            .round(&self.store, &listed, &self.in_flight, now_ms, margin)
            .await;
        self.forget_expired_keys(&subscriptions, now_ms).await;
        self.gates.retain(|id, _| subscriptions.contains_key(id));
        self.open_checks
            .retain(|id, _| subscriptions.contains_key(id));
        for s in subscriptions.values() {
            let gate = self.gate_for(s);
            if let (Some(observer), Some(waiting)) = (&self.observer, gate.waiting_changed()) {
                observer.waiting_for_rate(&s.spec.name, waiting);
            }
        }
        let requests: Vec<ClaimRequest> = subscriptions
            .values()
            .filter(|s| !s.paused && s.hold_until_ms <= now_ms)
            .filter(|s| self.owners.may_lease(s, now_ms, margin))
            .filter_map(|s| {
                let width = s.spec.max_in_flight as usize;
                // Long enough for every prefetched delivery to wait its turn and run.
                let lease = s.spec.timeout * (PREFETCH as u32 + 1) + self.options.lease_margin;
                let lease_until_ms = now_ms + lease.as_millis() as i64;
                let limit = (width * PREFETCH).min(self.turns_before(s, lease_until_ms, now_ms)?);
                let unsent = self
                    .unsent
                    .get(&s.id)
                    .map_or(0, |n| n.load(AtomicOrdering::Acquire));
                let free = limit.saturating_sub(unsent);
                // Lease in chunks, not one delivery per freed slot.
                (free > 0 && (free >= width || free == limit)).then_some(ClaimRequest {
                    subscription: s.id,
                    capacity: free,
                    lease_until_ms,
                })
            })
            .collect();
        if requests.is_empty() {
            return 0;
        }
        let leases: HashMap<SubscriptionId, i64> = requests
            .iter()
            .map(|r| (r.subscription, r.lease_until_ms))
            .collect();
        let claimed = match self.store.claim_due(requests, now_ms).await {
            Ok(claimed) => claimed,
            Err(error) => {
                tracing::warn!(%error, "dispatcher cannot lease deliveries");
                return 0;
            }
        };
        let leased = claimed.len();
        let mut given_back = Vec::new();
        for delivery in claimed {
            let Some(subscription) = subscriptions.get(&delivery.subscription_id).cloned() else {
                continue;
            };
            // Leased again while an attempt here may still send it: the store forgot
            // that attempt's lease (on PostgreSQL a lease's commit does not wait for
            // the flush, and a crash of the server loses the last ones). Starting it
            // now could put it on the wire twice at once, and let an ordered
            // subscription's next delivery overtake the running attempt. The lease
            // goes back, to be taken once that attempt's request is over.
            let Some(on_the_wire) = OnTheWire::enter(&self.on_the_wire, delivery.delivery_id)
            else {
                given_back.push(Lease {
                    delivery: delivery.delivery_id,
                    token: delivery.lease_token,
                });
                continue;
            };
            *self.in_flight.entry(subscription.id).or_default() += 1;
            let unsent = self.unsent.entry(subscription.id).or_default().clone();
            unsent.fetch_add(1, AtomicOrdering::AcqRel);
            let attempt = Attempt {
                store: self.store.clone(),
                sender: self.sender.clone(),
                clock: self.clock.clone(),
                slots: self.slots_for(&subscription),
                gate: self.gate_for(&subscription),
                open_check: self.open_checks.entry(subscription.id).or_default().clone(),
                lease_until_ms: leases.get(&subscription.id).copied().unwrap_or(now_ms),
                owned: self.owners.of(subscription.id),
                lease_margin: self.options.lease_margin,
                hold_after_failures: self.options.hold_after_failures,
                observer: self.observer.clone(),
                telemetry: self.telemetry.clone(),
                stale: self.stale.clone(),
                unsent: Some(Unsent {
                    count: unsent,
                    sent: self.sent.clone(),
                }),
                on_the_wire: Some(on_the_wire),
                subscription,
                claimed: delivery,
            };
            self.attempts.spawn(async move {
                let id = attempt.subscription.id;
                (id, attempt.run().await)
            });
        }
        if !given_back.is_empty()
            && let Err(error) = self.store.release(given_back).await
        {
            tracing::warn!(%error, "cannot give back a lease of a delivery still on the wire");
        }
        leased
    }

    /// How many requests of `s` its pace lets start from now until a lease ending at
    /// `lease_until_ms` would leave too little time for the last one to finish
    /// (`usize::MAX`: no limit); `None` when its next turn is later than that.
    fn turns_before(&self, s: &Subscription, lease_until_ms: i64, now_ms: i64) -> Option<usize> {
        let last_start_ms =
            lease_until_ms - (s.spec.timeout + self.options.lease_margin).as_millis() as i64;
        let turns = self
            .gates
            .get(&s.id)?
            .pace()
            .turns_until(now_ms, last_start_ms);
        match turns {
            None => Some(usize::MAX),
            Some(0) => None,
            Some(n) => Some(n),
        }
    }

    /// The pace of a subscription's requests (its limit updated when it changed).
    fn gate_for(&mut self, subscription: &Subscription) -> Arc<Gate> {
        let limit = subscription.spec.rate_limit;
        let gate = self
            .gates
            .entry(subscription.id)
            .or_insert_with(|| Arc::new(Gate::new(limit)));
        gate.pace().set_limit(limit);
        gate.clone()
    }

    /// The semaphore bounding a subscription's concurrent requests (renewed when its
    /// `max_in_flight` changes).
    fn slots_for(&mut self, subscription: &Subscription) -> Arc<Semaphore> {
        let width = subscription.spec.max_in_flight;
        let entry = self
            .slots
            .entry(subscription.id)
            .or_insert_with(|| (width, Arc::new(Semaphore::new(width as usize))));
        if entry.0 != width {
            *entry = (width, Arc::new(Semaphore::new(width as usize)));
        }
        entry.1.clone()
    }
}

/// How old a "still open" read may be and still serve an attempt that just got its
/// slot, when no subscription change was made through this store handle since the
/// read started. A pause, hold or rotation made here moves the store's
/// subscriptions version, so the next attempt reads again: it takes effect at once.
/// One made elsewhere (the CLI, another instance) stops the sending within this
/// (the lease already refuses a stopped subscription; this bounds the deliveries
/// leased before it). One read per subscription per this at most, instead of one
/// per attempt: the read was a tenth of a delivery's cost (BENCHMARKS.md).
pub const OPEN_READ_REUSE: Duration = Duration::from_millis(10);

/// The "is it still open" reads of one subscription, shared by its attempts. An
/// attempt needs a read that started at most [`OPEN_READ_REUSE`] before it got its
/// slot (and its turn), with no subscription change made through this store handle
/// since; while a read is under way the others wait for it, and then use its answer
/// if it qualifies, else make the next read.
#[derive(Default)]
struct OpenCheck {
    /// The last read that found the subscription open.
    last: tokio::sync::Mutex<Option<OpenRead>>,
}

/// A read that found a subscription open.
#[derive(Debug, Clone, Copy)]
struct OpenRead {
    /// When it started.
    started: Instant,
    /// The store's subscriptions version just before.
    version: u64,
    /// When its signing keys were last rotated (0: never).
    rotated_at_ms: i64,
}

/// One leased delivery on its way.
struct Attempt {
    store: Store,
    sender: Sender,
    clock: Arc<dyn Clock>,
    slots: Arc<Semaphore>,
    /// The subscription's pace: each attempt waits for its turn.
    gate: Arc<Gate>,
    /// The subscription's "is it still open" reads, shared with its other attempts.
    open_check: Arc<OpenCheck>,
    /// When this delivery's lease ends: it must have started and finished by then.
    lease_until_ms: i64,
    /// This instance's ownership of the subscription: no attempt starts unless it
    /// outlasts the attempt.
    owned: Owned,
    lease_margin: Duration,
    hold_after_failures: u32,
    observer: Option<Arc<dyn DeliveryObserver>>,
    telemetry: Option<Telemetry>,
    /// The dispatcher's "read the subscriptions again" flag.
    stale: Arc<AtomicBool>,
    /// The subscription as the dispatcher's reading holds it (shared).
    subscription: Arc<Ready>,
    claimed: Claimed,
    /// Counts this attempt among its subscription's unsent ones until dropped.
    unsent: Option<Unsent>,
    /// Held until its request is over (see [`OnTheWire`]).
    on_the_wire: Option<OnTheWire>,
}

/// One leased delivery not yet sent: dropped when it was sent (or will not be),
/// whichever way the attempt ends.
struct Unsent {
    count: Arc<AtomicUsize>,
    sent: Arc<Notify>,
}

/// A delivery that an attempt here may still send: from its start until its request
/// is over (or it gives its lease back without sending). A delivery is in the set
/// once at most, so it is never on the wire twice at once from this dispatcher.
struct OnTheWire {
    set: Arc<Mutex<HashSet<DeliveryId>>>,
    delivery: DeliveryId,
}

impl OnTheWire {
    /// `None`: an attempt here may still send `delivery`.
    fn enter(set: &Arc<Mutex<HashSet<DeliveryId>>>, delivery: DeliveryId) -> Option<OnTheWire> {
        let entered = set
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .insert(delivery);
        entered.then(|| OnTheWire {
            set: set.clone(),
            delivery,
        })
    }
}

impl Drop for OnTheWire {
    fn drop(&mut self) {
        self.set
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.delivery);
    }
}

impl Drop for Unsent {
    fn drop(&mut self) {
        self.count.fetch_sub(1, AtomicOrdering::AcqRel);
        self.sent.notify_one();
    }
}

impl Attempt {
    /// Sends the delivery (holding one of the subscription's slots) and records what
    /// happened.
    async fn run(mut self) -> Finished {
        let store = &self.store;
        let claimed = &self.claimed;
        let spec = &self.subscription.spec;
        // The event came with the lease.
        let event = match &claimed.event {
            ClaimedEvent::Stored(event) => event.clone(),
            ClaimedEvent::Gone => {
                let reason = format!(
                    "event {} is no longer stored (retention)",
                    claimed.event_seq
                );
                return match store.abandon(claimed, reason).await {
                    Ok(()) => Finished::Abandoned,
                    Err(error) => {
                        tracing::warn!(%error, "cannot record an abandoned delivery");
                        Finished::StoreFailed
                    }
                };
            }
            // Unreadable: leave the lease to expire and try again later.
            ClaimedEvent::Unreadable(error) => {
                tracing::warn!(%error, event = claimed.event_seq.get(), "cannot read a leased delivery's event");
                return Finished::StoreFailed;
            }
        };
        // Only the HTTP exchange (and, for what may stop the subscription, its
        // record) holds one of the subscription's slots.
        let Ok(slot) = self.slots.acquire().await else {
            return Finished::StoreFailed;
        };
        let longest = spec.timeout + self.lease_margin;
        let open = match self.wait_for_turn(longest).await
            && self.owned.outlasts(self.clock.now_ms(), longest)
            && self.lease_outlasts(longest)
        {
            true => self.still_open().await,
            false => None,
        };
        let Some(rotated_at_ms) = open else {
            drop(self.on_the_wire.take());
            let lease = vec![Lease {
                delivery: claimed.delivery_id,
                token: claimed.lease_token,
            }];
            return match store.release(lease).await {
                Ok(()) => Finished::Released,
                Err(_) => Finished::StoreFailed,
            };
        };
        let keys = self.current_keys(rotated_at_ms).await;
        let started_ms = self.clock.now_ms();
        let trace = AttemptTrace::start(
            self.telemetry.as_ref(),
            event.trace_parent.as_deref(),
            AttemptAbout {
                subscription: &spec.name,
                delivery_id: claimed.delivery_id.get(),
                webhook_id: &claimed.webhook_id,
                event_seq: claimed.event_seq.get(),
                event_type: &event.event_type,
                attempt: claimed.round_attempts + 1,
                url: &spec.url,
            },
        );
        // A DreamClass body is prepared once per claimed event (see PlatformBody).
        let platform_body =
            (event.provider == ProviderKind::DreamClass).then(|| event.platform_body());
        let attempted = match send::build(
            event.provider,
            &event.body,
            platform_body,
            &keys.spec,
            &keys.previous_keys,
            &claimed.webhook_id,
            started_ms / 1000,
        ) {
            Ok(mut request) => {
                if let Some(traceparent) = trace.traceparent() {
                    request.headers.push(("traceparent".into(), traceparent));
                }
                let basic_auth = spec
                    .basic_auth
                    .as_ref()
                    .map(|(u, p)| (u.as_str(), p.expose()));
                self.sender
                    .send_to(
                        self.subscription.target.as_ref(),
                        request,
                        basic_auth,
                        spec.timeout,
                    )
                    .await
            }
            Err(error) => send::Attempted {
                outcome: Outcome::Failed {
                    status: None,
                    error: Some(error),
                },
                duration: Duration::ZERO,
                response_excerpt: None,
            },
        };
        if let Outcome::Throttled { status: 429, .. } = attempted.outcome {
            let slowed = self.gate.pace().throttled(started_ms, self.clock.now_ms());
            if let Some(rate) = slowed {
                if let Some(observer) = &self.observer {
                    observer.slowed_down(&spec.name);
                }
                tracing::info!(
                    subscription = spec.name,
                    per_minute = (rate * 60.0).round(),
                    "the receiver answered 429: slowing down"
                );
            }
        }
        let slot = match attempted.outcome {
            Outcome::Success { .. } => {
                drop(slot);
                None
            }
            _ => Some(slot),
        };
        // Sent: the next lease need not wait for this record (a failure still
        // holds its slot until the record, so the next in line sees a stop).
        drop(self.unsent.take());
        // Its request is over: a lease of it made from now on may send it again.
        drop(self.on_the_wire.take());
        let number = u32::try_from(claimed.round_attempts + 1).unwrap_or(u32::MAX);
        let jitter = rand::random::<f64>() * 2.0 - 1.0;
        let next = schedule::next(
            &attempted.outcome,
            number,
            &spec.retry_schedule,
            self.clock.now_ms(),
            jitter,
        );
        trace.finish(&attempted.outcome, &next, attempted.duration);
        self.log(&next, &attempted.outcome);
        let observed = self.observer.clone().map(|observer| {
            let lag_ms = self.clock.now_ms() - event.received_at_ms;
            let lag = Duration::from_millis(u64::try_from(lag_ms).unwrap_or(0));
            (observer, attempted.outcome.clone(), attempted.duration, lag)
        });
        let result = AttemptResult {
            claimed: self.claimed.clone(),
            at_ms: started_ms,
            duration: attempted.duration,
            outcome: attempted.outcome,
            response: attempted.response_excerpt,
            next,
        };
        let finished = match store.record_attempt(result).await {
            Ok(AttemptRecorded::Kept {
                consecutive_failures,
            }) => {
                if let Some((observer, outcome, took, lag)) = observed {
                    let name = &self.subscription.spec.name;
                    observer.attempted(name, &outcome, took);
                    match next {
                        Next::Delivered => observer.delivered(lag),
                        Next::Dead => observer.dead_lettered(name),
                        Next::RetryAt(_) | Next::Pause => {}
                    }
                }
                if next == Next::Delivered && self.subscription.hold_until_ms != 0 {
                    // The success cleared the hold the dispatcher's reading shows.
                    self.stale.store(true, AtomicOrdering::Release);
                }
                self.hold_if_failing(consecutive_failures, started_ms).await;
                Finished::Attempted
            }
            Ok(AttemptRecorded::LeaseEnded) => {
                tracing::info!(
                    subscription = spec.name,
                    delivery = self.claimed.delivery_id.get(),
                    "attempt not recorded: the delivery was replayed or removed while it ran"
                );
                Finished::LeaseLost
            }
            Err(error) => {
                // The lease expires and the delivery is tried again: at-least-once.
                tracing::error!(%error, "cannot record a delivery attempt");
                Finished::StoreFailed
            }
        };
        drop(slot);
        finished
    }

    /// Whether the lease still holds when an attempt started now and lasting up to
    /// `longest` is over. A lease that ran out while its attempt waited for a slot
    /// (very slow records, a clock that jumped) may already be another claim's: the
    /// attempt gives it back instead of sending.
    fn lease_outlasts(&self, longest: Duration) -> bool {
        self.lease_until_ms - self.clock.now_ms() >= longest.as_millis() as i64
    }

    /// Waits until the subscription's pace lets this attempt start, and takes that
    /// turn. False when it cannot start in time: its lease or this instance's
    /// ownership would end before it could finish (the caller gives the lease back).
    /// Waiting is not an attempt: nothing is recorded.
    async fn wait_for_turn(&self, longest: Duration) -> bool {
        let longest_ms = longest.as_millis() as i64;
        {
            let mut pace = self.gate.pace();
            let now_ms = self.clock.now_ms();
            if pace.rate(now_ms).is_none() {
                return pace.take(now_ms).is_ok();
            }
        }
        let _first = self.gate.line_up().await;
        loop {
            let now_ms = self.clock.now_ms();
            if !self.owned.outlasts(now_ms, longest) {
                return false;
            }
            let turn = self.gate.pace().take(now_ms);
            let Err(at_ms) = turn else {
                return true;
            };
            if at_ms + longest_ms > self.lease_until_ms {
                return false;
            }
            // In steps of at most a second, so that a lost ownership or a stop is
            // noticed while waiting.
            let wait = (at_ms - now_ms).clamp(1, 1000) as u64;
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
    }

    /// The hold policy: a subscription that keeps failing is held for a while
    /// (`schedule::hold_for`), so that its endpoint is not hammered.
    async fn hold_if_failing(&self, consecutive_failures: i64, at_ms: i64) {
        let Some(hold) = schedule::hold_for(consecutive_failures, self.hold_after_failures) else {
            return;
        };
        let until_ms = at_ms + hold.as_millis() as i64;
        if let Err(error) = self
            .store
            .hold_subscription(self.subscription.id, until_ms)
            .await
        {
            tracing::warn!(%error, subscription = self.subscription.spec.name, "cannot hold a failing subscription");
        }
    }

    /// Whether the subscription may still be sent to: `Some` with when its signing
    /// keys were last rotated (0: never). Read fresh enough that it sees every pause,
    /// hold and rotation made through this store handle before this attempt got its
    /// slot and its turn, and every one made elsewhere [`OPEN_READ_REUSE`] before
    /// that; one read serves the subscription's attempts that need no fresher one
    /// (see [`OpenCheck`]).
    async fn still_open(&self) -> Option<i64> {
        // Every change counted by now committed before now: a read made with this
        // version started after them. One counted later makes the next attempt read
        // again, even if this read already saw it.
        let version = self.store.subscriptions_version();
        let needed = Instant::now();
        let mut last = self.open_check.last.lock().await;
        if let Some(read) = *last
            && read.version == version
            && read.started + OPEN_READ_REUSE >= needed
        {
            return Some(read.rotated_at_ms);
        }
        let started = Instant::now();
        let read = self
            .store
            .subscription_open(self.subscription.id, self.clock.now_ms())
            .await;
        // Only "open" is kept: time alone never closes a subscription, but it ends a
        // hold. A failed read is this attempt's alone (it gives its lease back).
        let open = read.ok().flatten();
        *last = open.map(|rotated_at_ms| OpenRead {
            started,
            version,
            rotated_at_ms,
        });
        open
    }

    /// The subscription to sign with: the one leased with, unless its keys were
    /// rotated since (a delivery leased before a rotation waits for a slot and must
    /// not go out under a key the rotation ended). Read again only then.
    async fn current_keys(&self, rotated_at_ms: i64) -> std::borrow::Cow<'_, Subscription> {
        let held = self.subscription.rotated.as_ref().map_or(0, |r| r.at_ms);
        if held == rotated_at_ms {
            return std::borrow::Cow::Borrowed(&self.subscription);
        }
        match self
            .store
            .get_subscription(&self.subscription.spec.name)
            .await
        {
            Ok(Some(fresh)) if fresh.id == self.subscription.id => std::borrow::Cow::Owned(fresh),
            _ => std::borrow::Cow::Borrowed(&self.subscription),
        }
    }

    fn log(&self, next: &Next, outcome: &Outcome) {
        let name = &self.subscription.spec.name;
        let delivery = self.claimed.delivery_id.get();
        match next {
            Next::Delivered => tracing::debug!(subscription = name, delivery, "delivered"),
            Next::Dead => tracing::warn!(
                subscription = name,
                delivery,
                %outcome,
                "dead-lettered after its last retry"
            ),
            Next::Pause => tracing::warn!(
                subscription = name,
                "paused: the endpoint answered 410 Gone"
            ),
            Next::RetryAt(at) => tracing::info!(
                subscription = name,
                delivery,
                %outcome,
                retry_in_ms = at - self.clock.now_ms(),
                "attempt failed"
            ),
        }
    }
}
