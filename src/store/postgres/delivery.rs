//! Subscriptions, the delivery outbox and attempts. The outbox rows themselves are
//! written by the writer inside the append transaction (`events::enqueue`); leases,
//! attempt records and releases run on the delivery pool, each one statement or one
//! short transaction whose row locks keep them safe beside the writer and other
//! instances.

use std::time::Duration;

use tokio_postgres::Row;

use super::PostgresStore;
use super::events::insert_deliveries;
use super::sql::Conditions;
use crate::config::SecretEncoding;
use crate::deliver::schedule::{Next, Outcome};
use crate::deliver::subscription::{ManagedBy, Subscription, SubscriptionSpec};
use crate::store::sealed::{self, Sealer};
use crate::store::{
    AttemptRecord, AttemptRecorded, AttemptResult, ClaimRequest, Claimed, Delivery, DeliveryFilter,
    DeliveryId, DeliveryState, Lease, QueueDepth, SpecChange, StoreError, SubscriptionId,
};

const SUBSCRIPTION_COLUMNS: &str = "id, name, url, events, sources, tenants, basic_username,
    basic_password, secret, secret_encoding, timeout_ms, retry_schedule_ms, max_in_flight,
    managed_by, paused, paused_reason, consecutive_failures, hold_until_ms";

fn json_list(list: Option<&Vec<String>>) -> Option<String> {
    list.map(|l| serde_json::to_string(l).expect("strings serialize"))
}

/// A stored value this classhook cannot read: reading fails instead of guessing.
fn unreadable(what: String) -> StoreError {
    StoreError::Corrupt(format!("unreadable stored {what}"))
}

/// A stored secret column opened with `sealer`.
fn open_secret(
    row: &Row,
    index: usize,
    column: &str,
    sealer: &Sealer,
) -> Result<Option<crate::secret::Secret>, StoreError> {
    Ok(row
        .try_get::<_, Option<String>>(index)?
        .map(|stored| sealer.open(column, &stored))
        .transpose()?)
}

fn subscription_from_row(row: &Row, sealer: &Sealer) -> Result<Subscription, StoreError> {
    let list = |i: usize| -> Result<Option<Vec<String>>, StoreError> {
        let text: Option<String> = row.try_get(i)?;
        text.map(|t| serde_json::from_str(&t).map_err(|_| unreadable(format!("list {t:?}"))))
            .transpose()
    };
    let username: Option<String> = row.try_get(6)?;
    let password = open_secret(row, 7, sealed::SUBSCRIPTION_BASIC_PASSWORD, sealer)?;
    let schedule: String = row.try_get(11)?;
    let schedule: Vec<u64> = serde_json::from_str(&schedule)
        .map_err(|_| unreadable(format!("retry schedule {schedule:?}")))?;
    let encoding: String = row.try_get(9)?;
    let managed_by: String = row.try_get(13)?;
    let max_in_flight: i64 = row.try_get(12)?;
    Ok(Subscription {
        id: row.try_get(0)?,
        spec: SubscriptionSpec {
            name: row.try_get(1)?,
            url: row.try_get(2)?,
            events: list(3)?.ok_or_else(|| unreadable("event list NULL".into()))?,
            sources: list(4)?,
            tenants: list(5)?,
            basic_auth: match (username, password) {
                (Some(u), Some(p)) => Some((u, p)),
                (None, None) => None,
                _ => return Err(unreadable("Basic Auth without both parts".into())),
            },
            secret: open_secret(row, 8, sealed::SUBSCRIPTION_SECRET, sealer)?,
            secret_encoding: match encoding.as_str() {
                "utf8" => SecretEncoding::Utf8,
                "base64" => SecretEncoding::Base64,
                _ => return Err(unreadable(format!("secret encoding {encoding:?}"))),
            },
            timeout: Duration::from_millis(row.try_get::<_, i64>(10)? as u64),
            retry_schedule: schedule.into_iter().map(Duration::from_millis).collect(),
            max_in_flight: u32::try_from(max_in_flight)
                .map_err(|_| unreadable(format!("max_in_flight {max_in_flight}")))?,
        },
        managed_by: match managed_by.as_str() {
            "config" => ManagedBy::Config,
            "api" => ManagedBy::Api,
            _ => return Err(unreadable(format!("managed_by {managed_by:?}"))),
        },
        paused: row.try_get(14)?,
        paused_reason: row.try_get(15)?,
        consecutive_failures: row.try_get(16)?,
        hold_until_ms: row.try_get(17)?,
    })
}

pub(super) async fn load_subscriptions(
    client: &impl tokio_postgres::GenericClient,
    sealer: &Sealer,
) -> Result<Vec<Subscription>, StoreError> {
    let rows = client
        .query(
            &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions ORDER BY id"),
            &[],
        )
        .await?;
    rows.iter()
        .map(|row| subscription_from_row(row, sealer))
        .collect()
}

/// Inserts or, by name, replaces a subscription's declared fields (state is kept).
async fn upsert(
    tx: &tokio_postgres::Transaction<'_>,
    spec: &SubscriptionSpec,
    managed_by: ManagedBy,
    sealer: &Sealer,
) -> Result<(), StoreError> {
    let password = spec
        .basic_auth
        .as_ref()
        .map(|(_, p)| sealer.seal(sealed::SUBSCRIPTION_BASIC_PASSWORD, p))
        .transpose()?;
    let secret = spec
        .secret
        .as_ref()
        .map(|s| sealer.seal(sealed::SUBSCRIPTION_SECRET, s))
        .transpose()?;
    let schedule: Vec<u64> = spec
        .retry_schedule
        .iter()
        .map(|d| d.as_millis() as u64)
        .collect();
    tx.execute(
        "INSERT INTO subscriptions (name, url, events, sources, tenants, basic_username,
             basic_password, secret, secret_encoding, timeout_ms, retry_schedule_ms,
             max_in_flight, managed_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)
         ON CONFLICT (name) DO UPDATE SET url = excluded.url, events = excluded.events,
             sources = excluded.sources, tenants = excluded.tenants,
             basic_username = excluded.basic_username, basic_password = excluded.basic_password,
             secret = excluded.secret, secret_encoding = excluded.secret_encoding,
             timeout_ms = excluded.timeout_ms, retry_schedule_ms = excluded.retry_schedule_ms,
             max_in_flight = excluded.max_in_flight, managed_by = excluded.managed_by",
        &[
            &spec.name,
            &spec.url,
            &serde_json::to_string(&spec.events).expect("strings serialize"),
            &json_list(spec.sources.as_ref()),
            &json_list(spec.tenants.as_ref()),
            &spec.basic_auth.as_ref().map(|(u, _)| u.clone()),
            &password,
            &secret,
            &spec.secret_encoding.as_str(),
            &(spec.timeout.as_millis() as i64),
            &serde_json::to_string(&schedule).expect("numbers serialize"),
            &i64::from(spec.max_in_flight),
            &managed_by.as_str(),
        ],
    )
    .await?;
    Ok(())
}

async fn owner(
    tx: &tokio_postgres::Transaction<'_>,
    name: &str,
) -> Result<Option<String>, StoreError> {
    // Locks the row: concurrent changes of one subscription wait for each other.
    Ok(tx
        .query_opt(
            "SELECT managed_by FROM subscriptions WHERE name = $1 FOR UPDATE",
            &[&name],
        )
        .await?
        .map(|r| r.try_get(0))
        .transpose()?)
}

async fn api_owned(tx: &tokio_postgres::Transaction<'_>, name: &str) -> Result<(), StoreError> {
    match owner(tx, name).await?.as_deref() {
        None => Err(StoreError::NotFound(format!(
            "no subscription named {name:?}"
        ))),
        Some("config") => Err(StoreError::Conflict(format!(
            "subscription {name:?} is declared in the config file; change it there (pause and resume work here)"
        ))),
        Some(_) => Ok(()),
    }
}

/// A lease token: random, never 0 (0 means "not leased").
fn new_lease_token() -> i64 {
    loop {
        let token = rand::random::<i64>();
        if token != 0 {
            return token;
        }
    }
}

/// Puts a delivery back in the queue, due at parameter `now`, with a fresh retry
/// schedule (its attempt log and `attempts` stay).
fn requeue(now: &str) -> String {
    format!(
        "state = 'pending', round_attempts = 0, next_attempt_at_ms = {now},
         lease_until_ms = 0, lease_token = 0"
    )
}

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
    /// Runs a subscription change in one transaction and returns the named
    /// subscription as it now stands (`None` once deleted). Every change first bumps
    /// `subscription_version`: changes run one at a time (in any instance), never
    /// beside a batch that matches events, and writers reload what they match.
    async fn change_subscriptions<F>(&self, change: F) -> Result<Option<Subscription>, StoreError>
    where
        F: for<'t> FnOnce(
            &'t tokio_postgres::Transaction<'t>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<String, StoreError>> + Send + 't>,
        >,
    {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("UPDATE subscription_version SET version = version + 1", &[])
            .await?;
        let name = change(&tx).await?;
        let found = tx
            .query_opt(
                &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE name = $1"),
                &[&name],
            )
            .await?
            .as_ref()
            .map(|row| subscription_from_row(row, &self.inner.options.secrets))
            .transpose()?;
        tx.commit().await?;
        Ok(found)
    }

    /// A change that leaves the subscription in place: it is there afterwards.
    async fn change_kept<F>(&self, change: F) -> Result<Subscription, StoreError>
    where
        F: for<'t> FnOnce(
            &'t tokio_postgres::Transaction<'t>,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<String, StoreError>> + Send + 't>,
        >,
    {
        self.change_subscriptions(change).await?.ok_or_else(|| {
            StoreError::NotFound("the subscription vanished while it changed".into())
        })
    }

    pub(super) async fn sync_config_subscriptions(
        &self,
        specs: Vec<SubscriptionSpec>,
    ) -> Result<(), StoreError> {
        let sealer = self.inner.options.secrets.clone();
        self.change_subscriptions(move |tx| {
            Box::pin(async move {
                for spec in &specs {
                    if owner(tx, &spec.name).await?.as_deref() == Some("api") {
                        return Err(StoreError::Conflict(format!(
                            "subscription {:?} is in the config but was created through the API; rename one of them",
                            spec.name
                        )));
                    }
                    upsert(tx, spec, ManagedBy::Config, &sealer).await?;
                }
                let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
                tx.execute(
                    "DELETE FROM subscriptions WHERE managed_by = 'config' AND NOT (name = ANY($1))",
                    &[&names],
                )
                .await?;
                Ok(String::new())
            })
        })
        .await
        .map(|_| ())
    }

    pub(super) async fn create_subscription(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<Subscription, StoreError> {
        let sealer = self.inner.options.secrets.clone();
        self.change_kept(move |tx| {
            Box::pin(async move {
                if owner(tx, &spec.name).await?.is_some() {
                    return Err(StoreError::Conflict(format!(
                        "a subscription named {:?} exists",
                        spec.name
                    )));
                }
                upsert(tx, &spec, ManagedBy::Api, &sealer).await?;
                Ok(spec.name)
            })
        })
        .await
    }

    pub(super) async fn update_subscription(
        &self,
        name: &str,
        change: SpecChange,
    ) -> Result<Subscription, StoreError> {
        let name = name.to_string();
        let sealer = self.inner.options.secrets.clone();
        self.change_kept(move |tx| {
            Box::pin(async move {
                api_owned(tx, &name).await?;
                let row = tx
                    .query_one(
                        &format!(
                            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE name = $1"
                        ),
                        &[&name],
                    )
                    .await?;
                let current = subscription_from_row(&row, &sealer)?;
                let spec = change(current.spec).map_err(StoreError::Invalid)?;
                if spec.name != name {
                    return Err(StoreError::Invalid(
                        "a subscription cannot be renamed".into(),
                    ));
                }
                upsert(tx, &spec, ManagedBy::Api, &sealer).await?;
                Ok(spec.name)
            })
        })
        .await
    }

    pub(super) async fn delete_subscription(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.change_subscriptions(move |tx| {
            Box::pin(async move {
                api_owned(tx, &name).await?;
                tx.execute("DELETE FROM subscriptions WHERE name = $1", &[&name])
                    .await?;
                Ok(name)
            })
        })
        .await
        .map(|_gone| ())
    }

    pub(super) async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        reason: Option<String>,
    ) -> Result<Subscription, StoreError> {
        let name = name.to_string();
        self.change_kept(move |tx| {
            Box::pin(async move {
                let changed = tx
                    .execute(
                        "UPDATE subscriptions SET paused = $2, paused_reason = $3,
                             hold_until_ms = CASE WHEN $2 THEN hold_until_ms ELSE 0 END,
                             consecutive_failures = CASE WHEN $2 THEN consecutive_failures ELSE 0 END
                         WHERE name = $1",
                        &[&name, &paused, &reason],
                    )
                    .await?;
                if changed == 0 {
                    return Err(StoreError::NotFound(format!(
                        "no subscription named {name:?}"
                    )));
                }
                Ok(name)
            })
        })
        .await
    }

    pub(super) async fn list_subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        let client = self.client().await?;
        load_subscriptions(&**client, &self.inner.options.secrets).await
    }

    pub(super) async fn get_subscription(
        &self,
        name: &str,
    ) -> Result<Option<Subscription>, StoreError> {
        let client = self.client().await?;
        client
            .query_opt(
                &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE name = $1"),
                &[&name],
            )
            .await?
            .as_ref()
            .map(|row| subscription_from_row(row, &self.inner.options.secrets))
            .transpose()
    }

    pub(super) async fn hold_subscription(
        &self,
        id: SubscriptionId,
        until_ms: i64,
    ) -> Result<(), StoreError> {
        let client = self.delivery_client().await?;
        client
            .execute(
                "UPDATE subscriptions SET hold_until_ms = GREATEST(hold_until_ms, $2) WHERE id = $1",
                &[&id.get(), &until_ms],
            )
            .await?;
        Ok(())
    }

    pub(super) async fn subscription_open(
        &self,
        id: SubscriptionId,
        now_ms: i64,
    ) -> Result<bool, StoreError> {
        let client = self.delivery_client().await?;
        let statement = client
            .prepare_cached(
                "SELECT 1 FROM subscriptions WHERE id = $1 AND NOT paused AND hold_until_ms <= $2",
            )
            .await?;
        Ok(client
            .query_opt(&statement, &[&id.get(), &now_ms])
            .await?
            .is_some())
    }

    /// Leases due deliveries in one statement for every request. A delivery of a
    /// paused or held subscription is never leased: the subscription's state is
    /// checked in the statement itself. `SKIP LOCKED` lets several instances claim
    /// side by side; each request's lease gets a fresh token.
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
        let tokens: Vec<i64> = requests.iter().map(|_| new_lease_token()).collect();
        let client = self.delivery_client().await?;
        let statement = client
            .prepare_cached(
                "WITH picked AS (
                     SELECT d.id, r.lease_until, r.token
                     FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])
                         AS r(subscription, capacity, lease_until, token)
                     JOIN subscriptions s ON s.id = r.subscription
                         AND NOT s.paused AND s.hold_until_ms <= $5
                     CROSS JOIN LATERAL (
                         SELECT id FROM deliveries
                         WHERE subscription_id = r.subscription AND state = 'pending'
                           AND next_attempt_at_ms <= $5 AND lease_until_ms <= $5
                         ORDER BY next_attempt_at_ms, id
                         LIMIT r.capacity
                         FOR UPDATE SKIP LOCKED
                     ) d
                 )
                 UPDATE deliveries SET lease_until_ms = p.lease_until, lease_token = p.token
                 FROM picked p WHERE deliveries.id = p.id
                 RETURNING deliveries.id, deliveries.subscription_id, deliveries.event_seq,
                     deliveries.webhook_id, deliveries.round_attempts, deliveries.lease_token,
                     deliveries.next_attempt_at_ms",
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
        Ok(claimed.into_iter().map(|(_, c)| c).collect())
    }

    /// Records an attempt and moves the delivery (and its subscription) on, if the
    /// lease it was made under still holds and the delivery is pending: a delivery
    /// replayed, deleted or leased again meanwhile, or already delivered, is left as
    /// it is and nothing is recorded. A recorded success is therefore never undone.
    pub(super) async fn record_attempt(
        &self,
        result: AttemptResult,
    ) -> Result<AttemptRecorded, StoreError> {
        let (status, error) = match &result.outcome {
            Outcome::Success { status } | Outcome::Throttled { status, .. } => {
                (Some(*status), None)
            }
            Outcome::Gone => (Some(410), None),
            Outcome::Failed { status, error } => (*status, error.clone()),
        };
        let last_error = error.clone().or_else(|| {
            status
                .filter(|s| !(200..300).contains(s))
                .map(|s| format!("HTTP {s}"))
        });
        let id = result.claimed.delivery_id;
        let subscription = result.claimed.subscription_id;
        // Every attempt counts in `attempts` (the attempt log); a 410 pauses without
        // using up a retry of the schedule, so it does not count in `round_attempts`.
        let (state, next_at, round_step, delivered_at) = match result.next {
            Next::Delivered => ("delivered", result.at_ms, 1i64, Some(result.at_ms)),
            Next::Pause => ("pending", result.at_ms, 0, None),
            Next::RetryAt(at) => ("pending", at, 1, None),
            Next::Dead => ("dead", result.at_ms, 1, None),
        };
        let status = status.map(i32::from);
        let mut client = self.delivery_client().await?;
        let tx = client.transaction().await?;
        let moved = tx
            .prepare_cached(
                "UPDATE deliveries SET state = $3, attempts = attempts + 1,
                     round_attempts = round_attempts + $4, next_attempt_at_ms = $5,
                     lease_until_ms = 0, lease_token = 0,
                     delivered_at_ms = coalesce($6, delivered_at_ms), last_error = $7
                 WHERE id = $1 AND lease_token = $2 AND state = 'pending'",
            )
            .await?;
        let moved = tx
            .execute(
                &moved,
                &[
                    &id,
                    &result.claimed.lease_token,
                    &state,
                    &round_step,
                    &next_at,
                    &delivered_at,
                    &last_error,
                ],
            )
            .await?;
        if moved == 0 {
            tx.rollback().await?;
            return Ok(AttemptRecorded::LeaseEnded);
        }
        let insert = tx
            .prepare_cached(
                "INSERT INTO attempts (delivery_id, at_ms, duration_ms, status_code, error, response)
                 VALUES ($1, $2, $3, $4, $5, $6)",
            )
            .await?;
        tx.execute(
            &insert,
            &[
                &id,
                &result.at_ms,
                &(result.duration.as_millis() as i64),
                &status,
                &error,
                &result.response,
            ],
        )
        .await?;
        let recorded = match result.next {
            Next::Delivered => {
                let reset = tx
                    .prepare_cached(
                        "UPDATE subscriptions SET consecutive_failures = 0, hold_until_ms = 0
                         WHERE id = $1 AND (consecutive_failures <> 0 OR hold_until_ms <> 0)",
                    )
                    .await?;
                tx.execute(&reset, &[&subscription]).await?;
                AttemptRecorded::Kept {
                    consecutive_failures: 0,
                }
            }
            Next::Pause => {
                let pause = tx
                    .prepare_cached(
                        "UPDATE subscriptions SET paused = TRUE,
                             paused_reason = 'the endpoint answered 410 Gone' WHERE id = $1",
                    )
                    .await?;
                tx.execute(&pause, &[&subscription]).await?;
                AttemptRecorded::Kept {
                    consecutive_failures: 0,
                }
            }
            Next::RetryAt(_) | Next::Dead => {
                let count = tx
                    .prepare_cached(
                        "UPDATE subscriptions SET consecutive_failures = consecutive_failures + 1
                         WHERE id = $1 RETURNING consecutive_failures",
                    )
                    .await?;
                let failures: i64 = tx.query_one(&count, &[&subscription]).await?.try_get(0)?;
                AttemptRecorded::Kept {
                    consecutive_failures: failures,
                }
            }
        };
        tx.commit().await?;
        Ok(recorded)
    }

    /// Gives leases back without an attempt; a lease that has changed hands since is
    /// left alone.
    pub(super) async fn release(&self, leases: Vec<Lease>) -> Result<(), StoreError> {
        if leases.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = leases.iter().map(|l| l.delivery.get()).collect();
        let tokens: Vec<i64> = leases.iter().map(|l| l.token).collect();
        let client = self.delivery_client().await?;
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
                    "SELECT seq, event_type, source, tenant, status, received_at_ms FROM events
                     WHERE seq > $1 ORDER BY seq LIMIT $2",
                    &[&after, &BACKFILL_CHUNK],
                )
                .await?;
            let Some(last) = rows.last() else {
                return Ok(added);
            };
            after = last.try_get(0)?;
            let mut matched = Vec::new();
            for row in &rows {
                let received_at_ms: i64 = row.try_get(5)?;
                let status: String = row.try_get(4)?;
                let event_type: String = row.try_get(1)?;
                let source: String = row.try_get(2)?;
                let tenant: Option<String> = row.try_get(3)?;
                let in_window = since_ms.is_none_or(|since| received_at_ms >= since)
                    && until_ms.is_none_or(|until| received_at_ms < until);
                if in_window
                    && status != "quarantined"
                    && subscription
                        .spec
                        .matches(&event_type, &source, tenant.as_deref())
                {
                    matched.push((subscription.id.get(), row.try_get::<_, i64>(0)?, now_ms));
                }
            }
            added += insert_deliveries(&tx, &matched).await?;
            tx.commit().await?;
        }
    }

    async fn subscription_id(&self, name: &str) -> Result<SubscriptionId, StoreError> {
        self.get_subscription(name)
            .await?
            .map(|s| s.id)
            .ok_or_else(|| StoreError::NotFound(format!("no subscription named {name:?}")))
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
             {} ORDER BY d.id DESC LIMIT {}",
            c.sql(),
            filter.limit.max(1)
        );
        let client = self.client().await?;
        let rows = client.query(&sql, &c.params()).await?;
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
}

/// A subscription's `basic_password` and `secret` as stored.
type StoredSecrets = (Option<String>, Option<String>);

impl PostgresStore {
    /// See [`crate::store::Backend::reseal_subscription_secrets`].
    pub(super) async fn reseal_subscription_secrets(&self) -> Result<u64, StoreError> {
        let sealer = self.inner.options.secrets.clone();
        if sealer.current_key().is_none() {
            return Ok(0);
        }
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("UPDATE subscription_version SET version = version + 1", &[])
            .await?;
        let rows = tx
            .query(
                "SELECT id, basic_password, secret FROM subscriptions ORDER BY id FOR UPDATE",
                &[],
            )
            .await?;
        let mut changed = 0;
        for row in rows {
            let id: i64 = row.try_get(0)?;
            let (password, secret): StoredSecrets = (row.try_get(1)?, row.try_get(2)?);
            let (password, secret) =
                sealer.reseal_subscription(password.as_deref(), secret.as_deref())?;
            if password.is_some() || secret.is_some() {
                tx.execute(
                    "UPDATE subscriptions SET basic_password = coalesce($2, basic_password),
                         secret = coalesce($3, secret) WHERE id = $1",
                    &[&id, &password, &secret],
                )
                .await?;
                changed += 1;
            }
        }
        tx.commit().await?;
        if changed > 0 {
            // The replaced values must not linger in the table's file: rewrite it
            // (the old row versions go with the old file). The WAL and any archive
            // of it still hold them until they are recycled.
            client.batch_execute("VACUUM FULL subscriptions").await?;
        }
        Ok(changed)
    }

    /// See [`crate::store::Backend::forget_unreadable_secrets`].
    pub(super) async fn forget_unreadable_secrets(
        &self,
        keys: Sealer,
        dry_run: bool,
    ) -> Result<Vec<sealed::Unreadable>, StoreError> {
        let mut client = self.client().await?;
        let tx = client.transaction().await?;
        tx.execute("UPDATE subscription_version SET version = version + 1", &[])
            .await?;
        let rows = tx
            .query(
                "SELECT id, name, managed_by, basic_password, secret FROM subscriptions
                 ORDER BY id FOR UPDATE",
                &[],
            )
            .await?;
        let mut forgotten = Vec::new();
        for row in rows {
            let id: i64 = row.try_get(0)?;
            let name: String = row.try_get(1)?;
            let managed_by: String = row.try_get(2)?;
            let (password, secret): StoredSecrets = (row.try_get(3)?, row.try_get(4)?);
            let Some(forget) = keys.unreadable_subscription(password.as_deref(), secret.as_deref())
            else {
                continue;
            };
            if !dry_run {
                tx.execute(
                    "UPDATE subscriptions SET
                         secret = CASE WHEN $2 THEN NULL ELSE secret END,
                         basic_username = CASE WHEN $3 THEN NULL ELSE basic_username END,
                         basic_password = CASE WHEN $3 THEN NULL ELSE basic_password END,
                         paused = CASE WHEN managed_by = 'api' THEN TRUE ELSE paused END,
                         paused_reason = CASE WHEN managed_by = 'api' THEN $4 ELSE paused_reason END
                     WHERE id = $1",
                    &[
                        &id,
                        &forget.secret,
                        &forget.basic_auth,
                        &sealed::FORGOTTEN_REASON,
                    ],
                )
                .await?;
            }
            forgotten.push(sealed::Unreadable {
                subscription: name,
                from_config: managed_by == "config",
                reason: forget.reason,
            });
        }
        tx.commit().await?;
        Ok(forgotten)
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
