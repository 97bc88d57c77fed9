//! The dispatcher: leases due deliveries in bulk (up to `PREFETCH` × `max_in_flight`
//! per subscription, so that leasing costs one commit per many deliveries), sends at
//! most `max_in_flight` per subscription at a time (a semaphore each, so a slow or
//! failing subscriber never holds up the others), and records every attempt. A lease that is never recorded (the process died) expires and the
//! delivery is taken again: at-least-once, and nothing that was recorded as
//! delivered is sent again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use super::schedule::{self, Next, Outcome};
use super::send::{self, Sender};
use super::subscription::Subscription;
use crate::clock::Clock;
use crate::store::{AttemptResult, Claimed, Store};

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

/// How many deliveries per allowed in-flight request one subscription may hold leased.
const PREFETCH: usize = 8;

/// Runs until the task is aborted.
pub async fn run(store: Store, clock: Arc<dyn Clock>, options: DispatchOptions) {
    let sender = Sender::new(options.allow_private_destinations);
    let queued = store.deliveries_queued();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<i64>();
    // Leased and not yet recorded, per subscription.
    let mut in_flight: HashMap<i64, usize> = HashMap::new();
    let mut permits: HashMap<i64, (u32, Arc<Semaphore>)> = HashMap::new();
    loop {
        while let Ok(subscription) = done_rx.try_recv() {
            finished(&mut in_flight, subscription);
        }
        let now_ms = clock.now_ms();
        let subscriptions = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.list_subscriptions()).await
        };
        let subscriptions: HashMap<i64, Subscription> = match subscriptions {
            Ok(Ok(list)) => list.into_iter().map(|s| (s.id, s)).collect(),
            Ok(Err(error)) => {
                tracing::warn!(%error, "dispatcher cannot read subscriptions");
                HashMap::new()
            }
            Err(_) => HashMap::new(),
        };
        let capacities: Vec<(i64, usize, i64)> = subscriptions
            .values()
            .filter(|s| !s.paused && s.hold_until_ms <= now_ms)
            .filter_map(|s| {
                let width = s.spec.max_in_flight as usize;
                let limit = width * PREFETCH;
                let free = limit.saturating_sub(*in_flight.get(&s.id).unwrap_or(&0));
                // Long enough for every prefetched delivery to wait its turn and run.
                let lease = s.spec.timeout * (PREFETCH as u32 + 1) + options.lease_margin;
                // Lease in chunks, not one delivery per freed slot.
                (free >= width || free == limit).then_some((
                    s.id,
                    free,
                    now_ms + lease.as_millis() as i64,
                ))
            })
            .collect();
        if !capacities.is_empty() {
            match store.claim_due(capacities, now_ms).await {
                Ok(claimed) => {
                    for delivery in claimed {
                        let Some(subscription) =
                            subscriptions.get(&delivery.subscription_id).cloned()
                        else {
                            continue;
                        };
                        *in_flight.entry(subscription.id).or_default() += 1;
                        let slots = slots_for(&mut permits, &subscription);
                        let (store, sender, clock, done) = (
                            store.clone(),
                            sender.clone(),
                            clock.clone(),
                            done_tx.clone(),
                        );
                        let hold_after = options.hold_after_failures;
                        tokio::spawn(async move {
                            attempt(
                                &store,
                                &sender,
                                clock.as_ref(),
                                &subscription,
                                delivery,
                                hold_after,
                                &slots,
                            )
                            .await;
                            let _ = done.send(subscription.id);
                        });
                    }
                }
                Err(error) => tracing::warn!(%error, "dispatcher cannot lease deliveries"),
            }
        }
        tokio::select! {
            () = queued.notified() => {}
            Some(subscription) = done_rx.recv() => finished(&mut in_flight, subscription),
            () = tokio::time::sleep(options.poll_interval) => {}
        }
    }
}

/// The semaphore bounding a subscription's concurrent requests (renewed when its
/// `max_in_flight` changes).
fn slots_for(
    permits: &mut HashMap<i64, (u32, Arc<Semaphore>)>,
    subscription: &Subscription,
) -> Arc<Semaphore> {
    let width = subscription.spec.max_in_flight;
    let entry = permits
        .entry(subscription.id)
        .or_insert_with(|| (width, Arc::new(Semaphore::new(width as usize))));
    if entry.0 != width {
        *entry = (width, Arc::new(Semaphore::new(width as usize)));
    }
    entry.1.clone()
}

fn finished(in_flight: &mut HashMap<i64, usize>, subscription: i64) {
    if let Some(count) = in_flight.get_mut(&subscription) {
        *count = count.saturating_sub(1);
    }
}

/// Sends one delivery (holding one of the subscription's slots) and records what
/// happened.
async fn attempt(
    store: &Store,
    sender: &Sender,
    clock: &dyn Clock,
    subscription: &Subscription,
    claimed: Claimed,
    hold_after: u32,
    slots: &Semaphore,
) {
    let spec = &subscription.spec;
    let event = {
        let store = store.clone();
        let seq = claimed.event_seq;
        tokio::task::spawn_blocking(move || store.get_event(seq)).await
    };
    let event = match event {
        Ok(Ok(Some(event))) => event,
        Ok(Ok(None)) => {
            let reason = format!(
                "event {} is no longer stored (retention)",
                claimed.event_seq
            );
            if let Err(error) = store.abandon(claimed.delivery_id, reason).await {
                tracing::warn!(%error, "cannot record an abandoned delivery");
            }
            return;
        }
        // A read failure: leave the lease to expire and try again later.
        _ => return,
    };
    // Only the HTTP exchange holds one of the subscription's slots; recording does not.
    let Ok(slot) = slots.acquire().await else {
        return;
    };
    let started_ms = clock.now_ms();
    let attempted = match send::build(
        event.summary.provider,
        &event.body,
        spec,
        &claimed.webhook_id,
        started_ms / 1000,
    ) {
        Ok(request) => {
            let basic_auth = spec
                .basic_auth
                .as_ref()
                .map(|(u, p)| (u.as_str(), p.expose()));
            sender
                .send(&spec.url, request, basic_auth, spec.timeout)
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
    drop(slot);
    let number = u32::try_from(claimed.attempts + 1).unwrap_or(u32::MAX);
    let jitter = rand::random::<f64>() * 2.0 - 1.0;
    let next = schedule::next(
        &attempted.outcome,
        number,
        &spec.retry_schedule,
        clock.now_ms(),
        jitter,
    );
    match (&next, &attempted.outcome) {
        (Next::Delivered, _) => tracing::debug!(
            subscription = spec.name,
            delivery = claimed.delivery_id,
            "delivered"
        ),
        (Next::Dead, outcome) => tracing::warn!(
            subscription = spec.name,
            delivery = claimed.delivery_id,
            ?outcome,
            "dead-lettered after its last retry"
        ),
        (Next::Pause, _) => tracing::warn!(
            subscription = spec.name,
            "paused: the endpoint answered 410 Gone"
        ),
        (Next::RetryAt(at), outcome) => tracing::info!(
            subscription = spec.name,
            delivery = claimed.delivery_id,
            ?outcome,
            retry_in_ms = at - clock.now_ms(),
            "attempt failed"
        ),
    }
    let result = AttemptResult {
        claimed,
        at_ms: started_ms,
        duration: attempted.duration,
        outcome: attempted.outcome,
        response: attempted.response_excerpt,
        next,
        hold_after_failures: hold_after,
    };
    if let Err(error) = store.record_attempt(result).await {
        // The lease expires and the delivery is tried again: at-least-once.
        tracing::error!(%error, "cannot record a delivery attempt");
    }
}
