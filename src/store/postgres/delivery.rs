//! The delivery outbox and attempts. The outbox rows themselves are written by the
//! writer inside the append transaction (`events::enqueue`); leases and releases
//! run on the lease pool, attempt records on the delivery pool, each one statement
//! or one short transaction whose row locks keep them safe beside the writer and
//! other instances.

use tokio_postgres::Row;

use super::PostgresStore;
use super::events::{NewDelivery, insert_deliveries};
use super::sql::Conditions;
use super::subscriptions::unreadable;
use crate::deliver::subscription::StoredEvent;
use crate::event::EventStatus;
use crate::store::{
    AttemptRecord, AttemptRecorded, AttemptResult, ClaimRequest, Claimed, ClaimedEvent, Delivery,
    DeliveryFilter, DeliveryId, DeliveryState, Lease, QueueDepth, StoreError,
};

/// Puts a delivery back in the queue, due at parameter `now`, with a fresh retry
/// schedule (its attempt log and `attempts` stay).
fn requeue(now: &str) -> String {
    format!(
        "state = 'pending', round_attempts = 0, next_attempt_at_ms = {now},
         lease_until_ms = 0, lease_token = 0, entity_key = {ORDERED_KEY}"
    )
}

/// The entity key (`deliver::ordering::entity_key`) of the delivery row
/// `deliveries` if its subscription is ordered, else NULL.
pub(super) const ORDERED_KEY: &str =
    "(SELECT e.source || chr(31) || e.entity_kind || chr(31) || e.entity_id
     FROM events e JOIN subscriptions s ON s.id = deliveries.subscription_id
     WHERE e.seq = deliveries.event_seq AND s.ordering = 'entity')";

/// Leased to a dispatcher at parameter `now`: it may be on the wire right now.
fn leased(now: &str) -> String {
    format!("(state = 'pending' AND lease_until_ms > {now})")
}

const DELIVERY_COLUMNS: &str = "d.id, s.name, d.event_seq, d.webhook_id, d.state, d.attempts,
    d.next_attempt_at_ms, d.created_at_ms, d.delivered_at_ms, d.last_error";

fn delivery_from_row(r: &Row) -> Result<Delivery, StoreError> {
    let state: String = r.try_get(4)?;
    Ok(Delivery {
        id: r.try_get(0)?,
        subscription: r.try_get(1)?,
        event_seq: r.try_get(2)?,
        webhook_id: r.try_get(3)?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| unreadable(format!("delivery state {state:?}")))?,
        attempts: r.try_get(5)?,
        next_attempt_at_ms: r.try_get(6)?,
        created_at_ms: r.try_get(7)?,
        delivered_at_ms: r.try_get(8)?,
        last_error: r.try_get(9)?,
    })
}

/// How many events one backfill transaction looks at.
const BACKFILL_CHUNK: i64 = 10_000;

impl PostgresStore {
    /// Leases due deliveries in one statement for every request. A delivery of a
    /// paused or held subscription is never leased: the subscription's state is
    /// checked in the statement itself. `SKIP LOCKED` lets several instances claim
    /// side by side; each request's lease gets a fresh token. Each delivery comes
    /// with its event (joined in the same statement), so that an attempt makes no
    /// read of its own. A delivery of an ordered subscription is leased only when no
    /// earlier delivery of its entity is pending: a probe written as `ORDER BY …
    /// LIMIT 1` rather than `NOT EXISTS` (which drops the order), so that the pool's
    /// `enable_sort = off` rules out the due index for it and leaves the entity
    /// index the cheapest ([`super::DELIVERY_PLANS`]).
    pub(super) async fn claim_due(
        &self,
        requests: Vec<ClaimRequest>,
        now_ms: i64,
    ) -> Result<Vec<Claimed>, StoreError> {
        // One request per subscription: a statement must not pick a row twice (its
        // own row locks are not skipped). A repeated subscription adds capacity.
        let mut merged: Vec<ClaimRequest> = Vec::with_capacity(requests.len());
        for request in requests.into_iter().filter(|r| r.capacity > 0) {
            match merged
                .iter_mut()
                .find(|m| m.subscription == request.subscription)
            {
                Some(m) => m.capacity += request.capacity,
                None => merged.push(request),
            }
        }
        let requests = merged;
        if requests.is_empty() {
            return Ok(Vec::new());
        }
        let subscriptions: Vec<i64> = requests.iter().map(|r| r.subscription.get()).collect();
        let capacities: Vec<i64> = requests.iter().map(|r| r.capacity as i64).collect();
        let lease_ends: Vec<i64> = requests.iter().map(|r| r.lease_until_ms).collect();
        let tokens: Vec<i64> = requests
            .iter()
            .map(|_| crate::store::new_lease_token())
            .collect();
        let client = self.lease_client().await?;
        let statement = client
            .prepare_cached(
                "WITH picked AS (
                     SELECT d.id, r.lease_until, r.token
                     FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])
                         AS r(subscription, capacity, lease_until, token)
                     JOIN subscriptions s ON s.id = r.subscription
                         AND NOT s.paused AND s.hold_until_ms <= $5
                     CROSS JOIN LATERAL (
                         SELECT id FROM deliveries q
                         WHERE subscription_id = r.subscription AND state = 'pending'
                           AND next_attempt_at_ms <= $5 AND lease_until_ms <= $5
                           AND (q.entity_key IS NULL OR (
                               SELECT p.event_seq FROM deliveries p
                               WHERE p.subscription_id = r.subscription
                                 AND p.entity_key IS NOT NULL AND p.state = 'pending'
                                 AND p.entity_key = q.entity_key
                                 AND p.event_seq < q.event_seq
                               ORDER BY p.event_seq LIMIT 1) IS NULL)
                         ORDER BY next_attempt_at_ms, id
                         LIMIT r.capacity
                         FOR UPDATE SKIP LOCKED
                     ) d
                 )
                 , leased AS (
                     UPDATE deliveries SET lease_until_ms = p.lease_until, lease_token = p.token
                     FROM picked p WHERE deliveries.id = p.id
                     RETURNING deliveries.id, deliveries.subscription_id, deliveries.event_seq,
                         deliveries.webhook_id, deliveries.round_attempts,
                         deliveries.lease_token, deliveries.next_attempt_at_ms
                 )
                 SELECT l.id, l.subscription_id, l.event_seq, l.webhook_id, l.round_attempts,
                     l.lease_token, l.next_attempt_at_ms, e.seq, e.provider, e.event_type,
                     e.received_at_ms, e.body, e.trace_parent
                 FROM leased l LEFT JOIN events e ON e.seq = l.event_seq",
            )
            .await?;
        let rows = client
            .query(
                &statement,
                &[&subscriptions, &capacities, &lease_ends, &tokens, &now_ms],
            )
            .await?;
        let mut claimed: Vec<(i64, Claimed)> = rows
            .iter()
            .map(|r| {
                Ok((
                    r.try_get(6)?,
                    Claimed {
                        delivery_id: r.try_get(0)?,
                        subscription_id: r.try_get(1)?,
                        event_seq: r.try_get(2)?,
                        webhook_id: r.try_get(3)?,
                        round_attempts: r.try_get(4)?,
                        lease_token: r.try_get(5)?,
                        event: ClaimedEvent::from_columns(
                            match r.try_get::<_, Option<i64>>(7)? {
                                Some(_) => Some((
                                    r.try_get(8)?,
                                    r.try_get(9)?,
                                    r.try_get(10)?,
                                    r.try_get(11)?,
                                    r.try_get(12)?,
                                )),
                                None => None,
                            },
                        ),
                    },
                ))
            })
            .collect::<Result<_, StoreError>>()?;
        // In request order, oldest due first (RETURNING has no order of its own).
        claimed.sort_by_key(|(due, c)| {
            let request = subscriptions
                .iter()
                .position(|s| *s == c.subscription_id.get())
                .unwrap_or(usize::MAX);
            (request, *due, c.delivery_id)
        });
        // Deliveries of the same event to several subscriptions share it (and the
        // body prepared for them).
        let mut shared: std::collections::HashMap<i64, ClaimedEvent> = Default::default();
        Ok(claimed
            .into_iter()
            .map(|(_, mut c)| {
                c.event = shared
                    .entry(c.event_seq.get())
                    .or_insert_with(|| c.event.clone())
                    .clone();
                c
            })
            .collect())
    }

    /// Records an attempt, in the recorder's next commit (see [`super::records`]).
    pub(super) async fn record_attempt(
        &self,
        result: AttemptResult,
    ) -> Result<AttemptRecorded, StoreError> {
        self.inner.records.record(result).await
    }

    /// Gives leases back without an attempt; a lease that has changed hands since is
    /// left alone.
    pub(super) async fn release(&self, leases: Vec<Lease>) -> Result<(), StoreError> {
        if leases.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = leases.iter().map(|l| l.delivery.get()).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.token).collect();
        let client = self.lease_client().await?;
        let statement = client
            .prepare_cached(
                "UPDATE deliveries SET lease_until_ms = 0, lease_token = 0
                 FROM UNNEST($1::bigint[], $2::bigint[]) AS l(id, token)
                 WHERE deliveries.id = l.id AND deliveries.lease_token = l.token
                   AND deliveries.state = 'pending'",
            )
            .await?;
        client.execute(&statement, &[&ids, &tokens]).await?;
        Ok(())
    }

    pub(super) async fn abandon(
        &self,
        claimed: &Claimed,
        reason: String,
    ) -> Result<(), StoreError> {
        let client = self.delivery_client().await?;
        client
            .execute(
                "UPDATE deliveries SET state = 'dead', lease_until_ms = 0, lease_token = 0,
                     last_error = $3
                 WHERE id = $1 AND lease_token = $2 AND state = 'pending'",
                &[&claimed.delivery_id, &claimed.lease_token, &reason],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn replay_delivery(
        &self,
        id: DeliveryId,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        let id = id.get();
        let client = self.client().await?;
        let changed = client
            .execute(
                &format!(
                    "UPDATE deliveries SET {} WHERE id = $1 AND NOT {}",
                    requeue("$2"),
                    leased("$2")
                ),
                &[&id, &now_ms],
            )
            .await?;
        if changed == 1 {
            return Ok(());
        }
        let exists = client
            .query_opt("SELECT 1 FROM deliveries WHERE id = $1", &[&id])
            .await?
            .is_some();
        Err(if exists {
            StoreError::Conflict(format!(
                "delivery {id} is being attempted right now; replay it when that attempt has ended"
            ))
        } else {
            StoreError::NotFound(format!("no delivery with id {id}"))
        })
    }

    pub(super) async fn replay_subscription(
        &self,
        name: &str,
        dead_only: bool,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let id = self.subscription_id(name).await?;
        let client = self.client().await?;
        Ok(client
            .execute(
                &format!(
                    "UPDATE deliveries SET {}
                     WHERE subscription_id = $2 AND NOT {} AND (NOT $3 OR state = 'dead')
                       AND created_at_ms >= coalesce($4, created_at_ms)
                       AND created_at_ms < coalesce($5, created_at_ms + 1)",
                    requeue("$1"),
                    leased("$1")
                ),
                &[&now_ms, &id, &dead_only, &since_ms, &until_ms],
            )
            .await?)
    }

    /// Creates deliveries for stored events received in `[since, until)` that match
    /// the subscription and have none yet, in chunks of events, each its own short
    /// transaction, so that appends interleave with a backfill over a long history.
    pub(super) async fn backfill(
        &self,
        name: &str,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let subscription = self
            .get_subscription(name)
            .await?
            .ok_or_else(|| StoreError::NotFound(format!("no subscription named {name:?}")))?;
        let (mut added, mut after) = (0u64, 0i64);
        let mut client = self.client().await?;
        loop {
            let tx = client.transaction().await?;
            let rows = tx
                .query(
                    "SELECT seq, event_type, source, tenant, status, received_at_ms,
                         entity_kind, entity_id
                     FROM events WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&after, &BACKFILL_CHUNK],
                )
                .await?;
            let Some(last) = rows.last() else {
                return Ok(added);
            };
            after = last.try_get(0)?;
            let mut matched = Vec::new();
            for row in &rows {
                let event = StoredEvent {
                    seq: row.try_get(0)?,
                    event_type: row.try_get(1)?,
                    source: row.try_get(2)?,
                    tenant: row.try_get(3)?,
                    quarantined: row.try_get::<_, &str>(4)? == EventStatus::Quarantined.as_str(),
                    received_at_ms: row.try_get(5)?,
                    entity_kind: row.try_get(6)?,
                    entity_id: row.try_get(7)?,
                };
                if let Some(entity_key) = subscription.backfills(&event, since_ms, until_ms) {
                    matched.push(NewDelivery {
                        subscription: subscription.id.get(),
                        seq: event.seq,
                        at_ms: now_ms,
                        entity_key,
                    });
                }
            }
            added += insert_deliveries(&tx, &matched).await?;
            tx.commit().await?;
        }
    }

    pub(super) async fn list_deliveries(
        &self,
        filter: DeliveryFilter,
    ) -> Result<Vec<Delivery>, StoreError> {
        let mut c = Conditions::default();
        c.add_opt("s.name = $?", filter.subscription.as_ref());
        c.add_opt("d.event_seq = $?", filter.event.as_ref());
        if let Some(state) = filter.state {
            c.add("d.state = $?", state.as_str().to_string());
        }
        c.add_opt("d.id < $?", filter.before_id.as_ref());
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id
             {} ORDER BY d.id DESC LIMIT {limit}",
            c.sql(),
            limit = c.param(filter.limit.max(1) as i64),
        );
        let client = self.client().await?;
        let statement = client.prepare_cached(&sql).await?;
        let rows = client.query(&statement, &c.params()).await?;
        rows.iter().map(delivery_from_row).collect()
    }

    pub(super) async fn get_delivery(
        &self,
        id: DeliveryId,
    ) -> Result<Option<(Delivery, Vec<AttemptRecord>)>, StoreError> {
        let id = id.get();
        let client = self.client().await?;
        let Some(row) = client
            .query_opt(
                &format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id
                     WHERE d.id = $1"
                ),
                &[&id],
            )
            .await?
        else {
            return Ok(None);
        };
        let delivery = delivery_from_row(&row)?;
        let rows = client
            .query(
                "SELECT at_ms, duration_ms, status_code, error, response FROM attempts
                 WHERE delivery_id = $1 ORDER BY id",
                &[&id],
            )
            .await?;
        let attempts = rows
            .iter()
            .map(|r| {
                let status: Option<i32> = r.try_get(2)?;
                Ok(AttemptRecord {
                    at_ms: r.try_get(0)?,
                    duration_ms: r.try_get(1)?,
                    status_code: status
                        .map(|s| {
                            u16::try_from(s).map_err(|_| unreadable(format!("status code {s}")))
                        })
                        .transpose()?,
                    error: r.try_get(3)?,
                    response: r.try_get(4)?,
                })
            })
            .collect::<Result<_, StoreError>>()?;
        Ok(Some((delivery, attempts)))
    }

    /// Every subscription's pending and dead deliveries.
    pub(super) async fn delivery_queue(&self) -> Result<Vec<QueueDepth>, StoreError> {
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT s.name,
                     (SELECT count(*) FROM deliveries d
                      WHERE d.subscription_id = s.id AND d.state = 'pending'),
                     (SELECT count(*) FROM deliveries d
                      WHERE d.state = 'dead' AND d.subscription_id = s.id)
                 FROM subscriptions s ORDER BY s.name",
                &[],
            )
            .await?;
        rows.iter()
            .map(|r| {
                Ok(QueueDepth {
                    subscription: r.try_get(0)?,
                    pending: r.try_get(1)?,
                    dead: r.try_get(2)?,
                })
            })
            .collect()
    }
}
