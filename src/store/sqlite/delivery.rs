//! Subscriptions, the delivery outbox and attempts. Writes run as jobs on the writer's
//! connection (so they serialize with ingest); the outbox rows themselves are written
//! by the writer inside the append transaction ([`enqueue`]).

use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params, params_from_iter};

use super::SqliteStore;
use super::conditions::Conditions;
use crate::config::SecretEncoding;
use crate::deliver::ordering::{self, Ordering};
use crate::deliver::rate::RateLimit;
use crate::deliver::schedule::Next;
use crate::deliver::signing::{self, KeySet, PreviousKey, Rotated, Signing};
use crate::deliver::subscription::{ManagedBy, StoredEvent, Subscription, SubscriptionSpec};
use crate::event::{EventStatus, NewEvent};
use crate::store::sealed::{self, Sealer};
use crate::store::{
    AttemptRecord, AttemptRecorded, AttemptResult, ClaimRequest, Claimed, ClaimedEvent, Delivery,
    DeliveryFilter, DeliveryId, DeliveryState, EventSeq, Lease, QueueDepth, RotateChange,
    StoreError, SubscriptionId,
};

const SUBSCRIPTION_COLUMNS: &str =
    "id, name, url, events, sources, tenants, basic_username, basic_password,
    secret, secret_encoding, timeout_ms, retry_schedule_ms, max_in_flight, managed_by, paused,
    paused_reason, consecutive_failures, hold_until_ms, signing, rotated_at_ms, rotated_by,
    public_key, ordering, rate_limit";

fn json_list(list: Option<&Vec<String>>) -> Option<String> {
    list.map(|l| serde_json::to_string(l).expect("strings serialize"))
}

/// A stored value this classhook cannot read: the row is corrupt or was written by a
/// newer version. Reading it fails instead of guessing a default.
fn unreadable(column: usize, what: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        column,
        rusqlite::types::Type::Text,
        format!("unreadable stored {what}").into(),
    )
}

/// A stored secret column opened with `sealer`; its error rides in a conversion
/// error (the store turns it back into [`StoreError::Secrets`]).
fn open_secret(
    row: &Row<'_>,
    index: usize,
    column: &str,
    sealer: &Sealer,
) -> rusqlite::Result<Option<crate::secret::Secret>> {
    row.get::<_, Option<String>>(index)?
        .map(|stored| sealer.open(column, &stored))
        .transpose()
        .map_err(|error| {
            rusqlite::Error::FromSqlConversionFailure(
                index,
                rusqlite::types::Type::Text,
                Box::new(error),
            )
        })
}

fn subscription_from_row(row: &Row<'_>, sealer: &Sealer) -> rusqlite::Result<Subscription> {
    let list = |i: usize| -> rusqlite::Result<Option<Vec<String>>> {
        let text: Option<String> = row.get(i)?;
        text.map(|t| serde_json::from_str(&t).map_err(|_| unreadable(i, format!("list {t:?}"))))
            .transpose()
    };
    let username: Option<String> = row.get(6)?;
    let password = open_secret(row, 7, sealed::SUBSCRIPTION_BASIC_PASSWORD, sealer)?;
    let schedule: String = row.get(11)?;
    let schedule: Vec<u64> = serde_json::from_str(&schedule)
        .map_err(|_| unreadable(11, format!("retry schedule {schedule:?}")))?;
    let encoding: String = row.get(9)?;
    let managed_by: String = row.get(13)?;
    let signing: String = row.get(18)?;
    let rotated_at_ms: Option<i64> = row.get(19)?;
    let rotated_by: Option<String> = row.get(20)?;
    let ordering: String = row.get(22)?;
    let rate_limit: Option<String> = row.get(23)?;
    Ok(Subscription {
        id: row.get(0)?,
        spec: SubscriptionSpec {
            name: row.get(1)?,
            url: row.get(2)?,
            events: list(3)?.ok_or_else(|| unreadable(3, "event list NULL".into()))?,
            sources: list(4)?,
            tenants: list(5)?,
            basic_auth: match (username, password) {
                (Some(u), Some(p)) => Some((u, p)),
                (None, None) => None,
                _ => return Err(unreadable(7, "Basic Auth without both parts".into())),
            },
            secret: open_secret(row, 8, sealed::SUBSCRIPTION_SECRET, sealer)?,
            secret_encoding: match encoding.as_str() {
                "utf8" => SecretEncoding::Utf8,
                "base64" => SecretEncoding::Base64,
                _ => return Err(unreadable(9, format!("secret encoding {encoding:?}"))),
            },
            signing: Signing::parse(&signing)
                .map_err(|_| unreadable(18, format!("signing {signing:?}")))?,
            timeout: Duration::from_millis(row.get::<_, i64>(10)? as u64),
            retry_schedule: schedule.into_iter().map(Duration::from_millis).collect(),
            max_in_flight: row.get(12)?,
            ordering: Ordering::parse(&ordering)
                .map_err(|_| unreadable(22, format!("ordering {ordering:?}")))?,
            rate_limit: rate_limit
                .map(|r| {
                    RateLimit::parse(&r).map_err(|_| unreadable(23, format!("rate limit {r:?}")))
                })
                .transpose()?,
        },
        managed_by: match managed_by.as_str() {
            "config" => ManagedBy::Config,
            "api" => ManagedBy::Api,
            _ => return Err(unreadable(13, format!("managed_by {managed_by:?}"))),
        },
        paused: row.get(14)?,
        paused_reason: row.get(15)?,
        consecutive_failures: row.get(16)?,
        hold_until_ms: row.get(17)?,
        public_key: row.get(21)?,
        previous_keys: Vec::new(),
        rotated: rotated_at_ms.map(|at_ms| Rotated {
            at_ms,
            by: rotated_by.unwrap_or_default(),
        }),
    })
}

pub(super) fn load_subscriptions(
    conn: &Connection,
    sealer: &Sealer,
) -> rusqlite::Result<Vec<Subscription>> {
    let mut stmt = conn.prepare_cached(&format!(
        "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions ORDER BY id"
    ))?;
    let rows = stmt.query_map([], |row| subscription_from_row(row, sealer))?;
    let mut subscriptions = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    attach_previous_keys(conn, &mut subscriptions, sealer)?;
    Ok(subscriptions)
}

/// One subscription by name, with its previous keys.
fn load_subscription(
    conn: &Connection,
    name: &str,
    sealer: &Sealer,
) -> rusqlite::Result<Option<Subscription>> {
    let found = conn
        .prepare_cached(&format!(
            "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE name = ?1"
        ))?
        .query_row([name], |row| subscription_from_row(row, sealer))
        .optional()?;
    let mut found: Vec<Subscription> = found.into_iter().collect();
    attach_previous_keys(conn, &mut found, sealer)?;
    Ok(found.pop())
}

/// Fills each subscription's `previous_keys` (expired ones included until they are
/// forgotten: signing skips them).
fn attach_previous_keys(
    conn: &Connection,
    subscriptions: &mut [Subscription],
    sealer: &Sealer,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "SELECT secret, expires_at_ms, public_key FROM subscription_keys
         WHERE subscription_id = ?1 ORDER BY expires_at_ms DESC",
    )?;
    for subscription in subscriptions {
        subscription.previous_keys = stmt
            .query_map([subscription.id], |row| {
                Ok(PreviousKey {
                    secret: open_secret(row, 0, sealed::SUBSCRIPTION_PREVIOUS_KEY, sealer)?
                        .unwrap_or_else(|| crate::secret::Secret::new("")),
                    expires_at_ms: row.get(1)?,
                    public_key: row.get(2)?,
                })
            })?
            .collect::<rusqlite::Result<_>>()?;
    }
    Ok(())
}

/// Inserts or, by name, replaces a subscription's declared fields (state is kept).
fn upsert(
    conn: &Connection,
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
    conn.execute(
        "INSERT INTO subscriptions (name, url, events, sources, tenants, basic_username, basic_password,
             secret, secret_encoding, timeout_ms, retry_schedule_ms, max_in_flight, managed_by,
             signing, public_key, ordering, rate_limit)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
         ON CONFLICT (name) DO UPDATE SET url = excluded.url, events = excluded.events,
             sources = excluded.sources, tenants = excluded.tenants,
             basic_username = excluded.basic_username, basic_password = excluded.basic_password,
             secret = excluded.secret, secret_encoding = excluded.secret_encoding,
             timeout_ms = excluded.timeout_ms, retry_schedule_ms = excluded.retry_schedule_ms,
             max_in_flight = excluded.max_in_flight, managed_by = excluded.managed_by,
             signing = excluded.signing, public_key = excluded.public_key,
             ordering = excluded.ordering, rate_limit = excluded.rate_limit",
        params![
            spec.name,
            spec.url,
            serde_json::to_string(&spec.events).expect("strings serialize"),
            json_list(spec.sources.as_ref()),
            json_list(spec.tenants.as_ref()),
            spec.basic_auth.as_ref().map(|(u, _)| u.clone()),
            password,
            secret,
            spec.secret_encoding.as_str(),
            spec.timeout.as_millis() as i64,
            serde_json::to_string(&schedule).expect("numbers serialize"),
            spec.max_in_flight,
            managed_by.as_str(),
            spec.signing.as_str(),
            signing::public_key(spec),
            spec.ordering.as_str(),
            spec.rate_limit.map(|r| r.to_string()),
        ],
    )?;
    Ok(())
}

/// The entity key (`deliver::ordering::entity_key`) of the delivery row
/// `deliveries` if its subscription is ordered, else NULL.
const ORDERED_KEY: &str = "(SELECT e.source || char(31) || e.entity_kind || char(31) || e.entity_id
     FROM events e JOIN subscriptions s ON s.id = deliveries.subscription_id
     WHERE e.seq = deliveries.event_seq AND s.ordering = 'entity')";

/// Gives the pending deliveries of a subscription whose ordering just changed the
/// keys that ordering asks for.
fn rekey_pending(conn: &Connection, name: &str) -> rusqlite::Result<()> {
    conn.execute(
        &format!(
            "UPDATE deliveries SET entity_key = {ORDERED_KEY}
             WHERE state = 'pending'
               AND subscription_id = (SELECT id FROM subscriptions WHERE name = ?1)"
        ),
        [name],
    )?;
    Ok(())
}

/// Writes a rotation's keys: the current key on the row, the replaced keys still
/// valid in `subscription_keys` (every other one of the subscription deleted).
fn write_keys(
    tx: &rusqlite::Transaction<'_>,
    id: SubscriptionId,
    keys: &KeySet,
    sealer: &Sealer,
) -> Result<(), StoreError> {
    let secret = sealer.seal(sealed::SUBSCRIPTION_SECRET, &keys.secret)?;
    tx.execute(
        "UPDATE subscriptions SET signing = ?2, secret = ?3, secret_encoding = ?4,
             rotated_at_ms = ?5, rotated_by = ?6, public_key = ?7 WHERE id = ?1",
        params![
            id,
            keys.signing.as_str(),
            secret,
            keys.secret_encoding.as_str(),
            keys.rotated.at_ms,
            keys.rotated.by,
            keys.public_key
        ],
    )?;
    tx.execute(
        "DELETE FROM subscription_keys WHERE subscription_id = ?1",
        [id],
    )?;
    for previous in &keys.previous {
        tx.execute(
            "INSERT INTO subscription_keys (subscription_id, secret, expires_at_ms, public_key)
             VALUES (?1, ?2, ?3, ?4)",
            params![
                id,
                sealer.seal(sealed::SUBSCRIPTION_PREVIOUS_KEY, &previous.secret)?,
                previous.expires_at_ms,
                previous.public_key
            ],
        )?;
    }
    Ok(())
}

/// Adds one delivery per matching subscription for a just-stored event (inside the
/// append transaction). Returns how many were added.
pub(super) fn enqueue(
    conn: &Connection,
    subscriptions: &[Subscription],
    event: &NewEvent,
    seq: EventSeq,
) -> rusqlite::Result<usize> {
    let mut added = 0;
    for subscription in subscriptions {
        if subscription
            .spec
            .matches(&event.event_type, &event.source, event.tenant.as_deref())
        {
            let key = ordering::delivery_key(
                subscription.spec.ordering,
                &event.source,
                &event.entity.kind,
                event.entity.id.as_deref(),
            );
            added += insert_delivery(conn, subscription.id, seq, key, event.received_at_ms)?;
        }
    }
    Ok(added)
}

fn insert_delivery(
    conn: &Connection,
    subscription_id: SubscriptionId,
    seq: EventSeq,
    entity_key: Option<String>,
    now_ms: i64,
) -> rusqlite::Result<usize> {
    conn.prepare_cached(
        "INSERT INTO deliveries (subscription_id, event_seq, webhook_id, state, next_attempt_at_ms,
             created_at_ms, entity_key)
         VALUES (?1, ?2, ?3, 'pending', ?4, ?4, ?5) ON CONFLICT (subscription_id, event_seq) DO NOTHING",
    )?
    .execute(params![
        subscription_id,
        seq,
        crate::store::new_webhook_id(),
        now_ms,
        entity_key
    ])
}

impl SqliteStore {
    /// Brings the config's subscriptions into the store: created or updated by name;
    /// config subscriptions no longer in the config are removed. Their state (paused,
    /// failures) is kept across restarts.
    pub async fn sync_config_subscriptions(
        &self,
        specs: Vec<SubscriptionSpec>,
    ) -> Result<(), StoreError> {
        let matchers = self.inner.matchers.clone();
        let sealer = self.inner.options.secrets.clone();
        self.run_job(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
            for mut spec in specs {
                let stored = load_subscription(&tx, &spec.name, &sealer)?;
                if stored.as_ref().is_some_and(|s| s.managed_by == ManagedBy::Api) {
                    return Err(StoreError::Conflict(format!(
                        "subscription {:?} is in the config but was created through the API; rename one of them",
                        spec.name
                    )));
                }
                signing::keep_generated_key(stored.as_ref(), &mut spec);
                upsert(&tx, &spec, ManagedBy::Config, &sealer)?;
                if stored.is_some_and(|s| s.spec.ordering != spec.ordering) {
                    rekey_pending(&tx, &spec.name)?;
                }
            }
            for existing in load_subscriptions(&tx, &sealer)? {
                if existing.managed_by == ManagedBy::Config && !names.contains(&existing.spec.name) {
                    tx.execute("DELETE FROM subscriptions WHERE id = ?1", [existing.id])?;
                }
            }
            let loaded = load_subscriptions(&tx, &sealer)?;
            tx.commit()?;
            *matchers.write().expect("matcher lock is never poisoned") = loaded;
            Ok(())
        })
        .await
    }

    pub async fn create_subscription(
        &self,
        spec: SubscriptionSpec,
    ) -> Result<Subscription, StoreError> {
        let sealer = self.inner.options.secrets.clone();
        self.change_kept(move |tx| {
            if tx
                .query_row(
                    "SELECT 1 FROM subscriptions WHERE name = ?1",
                    [&spec.name],
                    |_| Ok(()),
                )
                .optional()?
                .is_some()
            {
                return Err(StoreError::Conflict(format!(
                    "a subscription named {:?} exists",
                    spec.name
                )));
            }
            upsert(tx, &spec, ManagedBy::Api, &sealer)?;
            Ok(spec.name)
        })
        .await
    }

    /// Changes an API subscription's declared fields in one step: `change` gets the
    /// stored spec and returns the new one (or why it refuses, as
    /// [`StoreError::Invalid`]) inside the transaction that writes it, so two
    /// concurrent changes cannot lose one another.
    pub async fn update_subscription(
        &self,
        name: &str,
        change: impl FnOnce(SubscriptionSpec) -> Result<SubscriptionSpec, String> + Send + 'static,
    ) -> Result<Subscription, StoreError> {
        let name = name.to_string();
        let sealer = self.inner.options.secrets.clone();
        self.change_kept(move |tx| {
            api_owned(tx, &name)?;
            let current = load_subscription(tx, &name, &sealer)?
                .ok_or_else(|| StoreError::NotFound(format!("no subscription named {name:?}")))?;
            let was_ordered = current.spec.ordering;
            let spec = change(current.spec).map_err(StoreError::Invalid)?;
            if spec.name != name {
                return Err(StoreError::Invalid(
                    "a subscription cannot be renamed".into(),
                ));
            }
            upsert(tx, &spec, ManagedBy::Api, &sealer)?;
            if spec.ordering != was_ordered {
                rekey_pending(tx, &spec.name)?;
            }
            Ok(spec.name)
        })
        .await
    }

    pub async fn delete_subscription(&self, name: &str) -> Result<(), StoreError> {
        let name = name.to_string();
        self.change_subscriptions(move |tx| {
            api_owned(tx, &name)?;
            tx.execute("DELETE FROM subscriptions WHERE name = ?1", [&name])?;
            Ok(name)
        })
        .await
        .map(|_gone| ())
    }

    /// Pauses or resumes a subscription (config ones too). Resuming clears any hold.
    pub async fn set_paused(
        &self,
        name: &str,
        paused: bool,
        reason: Option<String>,
    ) -> Result<Subscription, StoreError> {
        let name = name.to_string();
        self.change_kept(move |tx| {
            let changed = tx.execute(
                "UPDATE subscriptions SET paused = ?2, paused_reason = ?3,
                     hold_until_ms = CASE WHEN ?2 THEN hold_until_ms ELSE 0 END,
                     consecutive_failures = CASE WHEN ?2 THEN consecutive_failures ELSE 0 END
                 WHERE name = ?1",
                params![name, paused, reason],
            )?;
            if changed == 0 {
                return Err(StoreError::NotFound(format!(
                    "no subscription named {name:?}"
                )));
            }
            Ok(name)
        })
        .await
    }

    /// Runs a subscription change in one transaction, refreshes the writer's
    /// matchers, and returns the named subscription as it now stands (`None` once
    /// deleted).
    async fn change_subscriptions(
        &self,
        change: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<String, StoreError> + Send + 'static,
    ) -> Result<Option<Subscription>, StoreError> {
        let matchers = self.inner.matchers.clone();
        let sealer = self.inner.options.secrets.clone();
        self.run_job(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let name = change(&tx)?;
            let loaded = load_subscriptions(&tx, &sealer)?;
            tx.commit()?;
            let found = loaded.iter().find(|s| s.spec.name == name).cloned();
            *matchers.write().expect("matcher lock is never poisoned") = loaded;
            Ok(found)
        })
        .await
    }

    /// A change that leaves the subscription in place: it is there afterwards.
    async fn change_kept(
        &self,
        change: impl FnOnce(&rusqlite::Transaction<'_>) -> Result<String, StoreError> + Send + 'static,
    ) -> Result<Subscription, StoreError> {
        self.change_subscriptions(change).await?.ok_or_else(|| {
            StoreError::NotFound("the subscription vanished while it changed".into())
        })
    }

    /// See [`crate::store::Backend::reseal_subscription_secrets`].
    pub async fn reseal_subscription_secrets(&self) -> Result<u64, StoreError> {
        let sealer = self.inner.options.secrets.clone();
        if sealer.current_key().is_none() {
            return Ok(0);
        }
        self.run_job(move |conn| {
            // The values replaced must not linger: freed cell space is zeroed
            // (secure_delete) and, below, the WAL holding the old pages is emptied.
            conn.pragma_update(None, "secure_delete", true)?;
            let changed = reseal_rows(conn, &sealer);
            conn.pragma_update(None, "secure_delete", false)?;
            let changed = changed?;
            if changed > 0 {
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            }
            Ok(changed)
        })
        .await
    }

    /// See [`crate::store::Backend::forget_unreadable_secrets`].
    pub async fn forget_unreadable_secrets(
        &self,
        keys: Sealer,
        dry_run: bool,
    ) -> Result<Vec<sealed::Unreadable>, StoreError> {
        let matchers = self.inner.matchers.clone();
        let own = self.inner.options.secrets.clone();
        self.run_job(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let rows: Vec<(i64, String, String, StoredSecrets)> = tx
                .prepare(
                    "SELECT id, name, managed_by, basic_password, secret FROM subscriptions
                     ORDER BY id",
                )?
                .query_map([], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, (r.get(3)?, r.get(4)?)))
                })?
                .collect::<Result<_, _>>()?;
            let mut forgotten = Vec::new();
            for (id, name, managed_by, (password, secret)) in rows {
                let Some(forget) =
                    keys.unreadable_subscription(password.as_deref(), secret.as_deref())
                else {
                    continue;
                };
                if !dry_run {
                    tx.execute(
                        "UPDATE subscriptions SET
                             secret = CASE WHEN ?2 THEN NULL ELSE secret END,
                             basic_username = CASE WHEN ?3 THEN NULL ELSE basic_username END,
                             basic_password = CASE WHEN ?3 THEN NULL ELSE basic_password END,
                             paused = CASE WHEN managed_by = 'api' THEN 1 ELSE paused END,
                             paused_reason = CASE WHEN managed_by = 'api' THEN ?4 ELSE paused_reason END
                         WHERE id = ?1",
                        params![
                            id,
                            forget.secret,
                            forget.basic_auth,
                            sealed::FORGOTTEN_REASON
                        ],
                    )?;
                }
                forgotten.push(sealed::Unreadable {
                    subscription: name,
                    from_config: managed_by == "config",
                    reason: forget.reason,
                });
            }
            // Keys kept after a rotation only widen what verifies: one that no key
            // opens is dropped (its subscription signs with its current key).
            if !dry_run {
                let previous: Vec<(i64, String)> = tx
                    .prepare("SELECT id, secret FROM subscription_keys ORDER BY id")?
                    .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
                    .collect::<Result<_, _>>()?;
                for (id, stored) in previous {
                    if keys.open(sealed::SUBSCRIPTION_PREVIOUS_KEY, &stored).is_err() {
                        tx.execute("DELETE FROM subscription_keys WHERE id = ?1", [id])?;
                    }
                }
            }
            let loaded = load_subscriptions(&tx, &own)?;
            tx.commit()?;
            *matchers.write().expect("matcher lock is never poisoned") = loaded;
            Ok(forgotten)
        })
        .await
    }

    pub fn list_subscriptions(&self) -> Result<Vec<Subscription>, StoreError> {
        self.with_reader(|conn| Ok(load_subscriptions(conn, &self.inner.options.secrets)?))
    }

    pub fn get_subscription(&self, name: &str) -> Result<Option<Subscription>, StoreError> {
        self.with_reader(|conn| Ok(load_subscription(conn, name, &self.inner.options.secrets)?))
    }

    /// See [`crate::store::Backend::rotate_secret`].
    pub async fn rotate_secret(
        &self,
        name: &str,
        rotate: RotateChange,
    ) -> Result<Subscription, StoreError> {
        let name = name.to_string();
        let matchers = self.inner.matchers.clone();
        let sealer = self.inner.options.secrets.clone();
        self.run_job(move |conn| {
            // The replaced values must not linger in freed space (as in reseal).
            conn.pragma_update(None, "secure_delete", true)?;
            let result = (|| {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let current = load_subscription(&tx, &name, &sealer)?.ok_or_else(|| {
                    StoreError::NotFound(format!("no subscription named {name:?}"))
                })?;
                let keys = rotate(&current)?;
                write_keys(&tx, current.id, &keys, &sealer)?;
                let loaded = load_subscriptions(&tx, &sealer)?;
                tx.commit()?;
                let found = loaded.iter().find(|s| s.spec.name == name).cloned();
                *matchers.write().expect("matcher lock is never poisoned") = loaded;
                found.ok_or_else(|| {
                    StoreError::NotFound("the subscription vanished while it changed".into())
                })
            })();
            conn.pragma_update(None, "secure_delete", false)?;
            let rotated = result?;
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            Ok(rotated)
        })
        .await
    }

    /// See [`crate::store::Backend::forget_expired_keys`].
    pub async fn forget_expired_keys(&self, now_ms: i64) -> Result<u64, StoreError> {
        let matchers = self.inner.matchers.clone();
        let sealer = self.inner.options.secrets.clone();
        self.run_job(move |conn| {
            conn.pragma_update(None, "secure_delete", true)?;
            let deleted = (|| -> Result<u64, StoreError> {
                let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let deleted = tx.execute(
                    "DELETE FROM subscription_keys WHERE expires_at_ms <= ?1",
                    [now_ms],
                )?;
                if deleted > 0 {
                    let loaded = load_subscriptions(&tx, &sealer)?;
                    tx.commit()?;
                    *matchers.write().expect("matcher lock is never poisoned") = loaded;
                }
                Ok(deleted as u64)
            })();
            conn.pragma_update(None, "secure_delete", false)?;
            let deleted = deleted?;
            if deleted > 0 {
                conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            }
            Ok(deleted)
        })
        .await
    }

    /// Dead-letters a leased delivery without an attempt (its event is gone), if the
    /// lease still holds.
    pub async fn abandon(&self, claimed: &Claimed, reason: String) -> Result<(), StoreError> {
        let (delivery_id, token) = (claimed.delivery_id, claimed.lease_token);
        self.run_job(move |conn| {
            conn.execute(
                "UPDATE deliveries SET state = 'dead', lease_until_ms = 0, lease_token = 0,
                     last_error = ?3
                 WHERE id = ?1 AND lease_token = ?2 AND state = 'pending'",
                params![delivery_id, token, reason],
            )?;
            Ok(())
        })
        .await
    }

    /// Holds a subscription (nothing is leased for it) until `until_ms`.
    pub async fn hold_subscription(
        &self,
        id: SubscriptionId,
        until_ms: i64,
    ) -> Result<(), StoreError> {
        self.run_job(move |conn| {
            conn.execute(
                "UPDATE subscriptions SET hold_until_ms = max(hold_until_ms, ?2) WHERE id = ?1",
                params![id, until_ms],
            )?;
            Ok(())
        })
        .await
    }

    /// Whether a subscription may be sent to now: it exists, is not paused and not
    /// held. Read fresh from the database, so a pause by another attempt, the API or
    /// another process counts at once. `Some` with when its keys were last rotated.
    pub fn subscription_open(
        &self,
        id: SubscriptionId,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        self.with_reader(|conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT coalesce(rotated_at_ms, 0) FROM subscriptions
                     WHERE id = ?1 AND paused = 0 AND hold_until_ms <= ?2",
                )?
                .query_row(params![id, now_ms], |r| r.get(0))
                .optional()?)
        })
    }

    /// Queues one delivery again (whatever its state) with a fresh retry schedule and
    /// the same `webhook-id`. A delivery leased to a dispatcher right now (being
    /// attempted, or about to be) is a conflict: a replay never runs beside it.
    pub async fn replay_delivery(
        &self,
        delivery_id: DeliveryId,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        self.run_job(move |conn| {
            let changed = conn.execute(
                &format!(
                    "UPDATE deliveries SET {REQUEUE}, entity_key = {ORDERED_KEY}
                     WHERE id = ?1 AND NOT {LEASED}"
                ),
                params![delivery_id, now_ms],
            )?;
            if changed == 1 {
                return Ok(());
            }
            let exists = conn
                .query_row("SELECT 1 FROM deliveries WHERE id = ?1", [delivery_id], |_| Ok(()))
                .optional()?
                .is_some();
            Err(if exists {
                StoreError::Conflict(format!(
                    "delivery {delivery_id} is being attempted right now; replay it when that attempt has ended"
                ))
            } else {
                StoreError::NotFound(format!("no delivery with id {delivery_id}"))
            })
        })
        .await
    }

    /// Queues again a subscription's deliveries (only dead ones if `dead_only`) created
    /// in `[since, until)`, except those leased right now. Returns how many.
    pub async fn replay_subscription(
        &self,
        name: &str,
        dead_only: bool,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let id = self.subscription_id(name)?;
        self.run_job(move |conn| {
            let changed = conn.execute(
                &format!(
                    "UPDATE deliveries SET {REQUEUE}, entity_key = {ORDERED_KEY}
                     WHERE subscription_id = ?3 AND NOT {LEASED} AND (?4 = 0 OR state = 'dead')
                       AND created_at_ms >= coalesce(?5, created_at_ms)
                       AND created_at_ms < coalesce(?6, created_at_ms + 1)"
                ),
                params![None::<i64>, now_ms, id, dead_only, since_ms, until_ms],
            )?;
            Ok(changed as u64)
        })
        .await
    }

    /// Creates deliveries for stored events received in `[since, until)` that match
    /// the subscription and have none yet (a new subscriber gets the history).
    pub async fn backfill(
        &self,
        name: &str,
        since_ms: Option<i64>,
        until_ms: Option<i64>,
        now_ms: i64,
    ) -> Result<u64, StoreError> {
        let subscription = self
            .get_subscription(name)?
            .ok_or_else(|| StoreError::NotFound(format!("no subscription named {name:?}")))?;
        // In chunks of events, each its own short job, so that appends interleave
        // with a backfill over a long history.
        let subscription = Arc::new(subscription);
        let (mut added, mut after) = (0u64, 0i64);
        loop {
            let subscription = subscription.clone();
            let (chunk_added, last) = self
                .run_job(move |conn| {
                    backfill_chunk(conn, &subscription, after, since_ms, until_ms, now_ms)
                })
                .await?;
            added += chunk_added;
            match last {
                Some(last) => after = last,
                None => return Ok(added),
            }
        }
    }

    fn subscription_id(&self, name: &str) -> Result<SubscriptionId, StoreError> {
        self.get_subscription(name)?
            .map(|s| s.id)
            .ok_or_else(|| StoreError::NotFound(format!("no subscription named {name:?}")))
    }

    /// Every subscription's pending and dead deliveries (pending counted from the
    /// due index, dead ones from the state index).
    pub fn delivery_queue(&self) -> Result<Vec<QueueDepth>, StoreError> {
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT s.name,
                     (SELECT count(*) FROM deliveries d
                      WHERE d.subscription_id = s.id AND d.state = 'pending'),
                     (SELECT count(*) FROM deliveries d
                      WHERE d.state = 'dead' AND d.subscription_id = s.id)
                 FROM subscriptions s ORDER BY s.name",
            )?;
            let rows = stmt.query_map([], |r| {
                Ok(QueueDepth {
                    subscription: r.get(0)?,
                    pending: r.get(1)?,
                    dead: r.get(2)?,
                })
            })?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    pub fn list_deliveries(&self, filter: &DeliveryFilter) -> Result<Vec<Delivery>, StoreError> {
        let mut c = Conditions::default();
        c.add_opt("s.name = ?", filter.subscription.as_ref());
        c.add_opt("d.event_seq = ?", filter.event.as_ref());
        if let Some(state) = filter.state {
            c.add("d.state = ?", state.as_str().to_string());
        }
        c.add_opt("d.id < ?", filter.before_id.as_ref());
        let sql = format!(
            "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id
             {} ORDER BY d.id DESC LIMIT {}",
            c.sql(),
            filter.limit.max(1)
        );
        self.with_reader(|conn| {
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(params_from_iter(c.args.iter()), delivery_from_row)?;
            Ok(rows.collect::<Result<_, _>>()?)
        })
    }

    /// One delivery with its attempts, oldest first.
    pub fn get_delivery(
        &self,
        id: DeliveryId,
    ) -> Result<Option<(Delivery, Vec<AttemptRecord>)>, StoreError> {
        self.with_reader(|conn| {
            let Some(delivery) = conn
                .prepare_cached(&format!(
                    "SELECT {DELIVERY_COLUMNS} FROM deliveries d JOIN subscriptions s ON s.id = d.subscription_id
                     WHERE d.id = ?1"
                ))?
                .query_row([id], delivery_from_row)
                .optional()?
            else {
                return Ok(None);
            };
            let mut stmt = conn.prepare_cached(
                "SELECT at_ms, duration_ms, status_code, error, response FROM attempts WHERE delivery_id = ?1 ORDER BY id",
            )?;
            let attempts = stmt
                .query_map([id], |r| {
                    Ok(AttemptRecord {
                        at_ms: r.get(0)?,
                        duration_ms: r.get(1)?,
                        status_code: r.get(2)?,
                        error: r.get(3)?,
                        response: r.get(4)?,
                    })
                })?
                .collect::<Result<_, _>>()?;
            Ok(Some((delivery, attempts)))
        })
    }
}

/// A subscription's `basic_password` and `secret` as stored.
type StoredSecrets = (Option<String>, Option<String>);

/// Re-seals every stored secret that needs it, in one transaction; returns how many
/// subscriptions changed.
fn reseal_rows(conn: &mut Connection, sealer: &Sealer) -> Result<u64, StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let rows: Vec<(i64, StoredSecrets)> = tx
        .prepare("SELECT id, basic_password, secret FROM subscriptions ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, (r.get(1)?, r.get(2)?))))?
        .collect::<Result<_, _>>()?;
    let mut changed = 0;
    for (id, (password, secret)) in rows {
        let (password, secret) =
            sealer.reseal_subscription(password.as_deref(), secret.as_deref())?;
        if password.is_some() || secret.is_some() {
            tx.execute(
                "UPDATE subscriptions SET basic_password = coalesce(?2, basic_password),
                     secret = coalesce(?3, secret) WHERE id = ?1",
                params![id, password, secret],
            )?;
            changed += 1;
        }
    }
    let keys: Vec<(i64, String)> = tx
        .prepare("SELECT id, secret FROM subscription_keys ORDER BY id")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<Result<_, _>>()?;
    for (id, stored) in keys {
        if let Some(sealed) = sealer.reseal(sealed::SUBSCRIPTION_PREVIOUS_KEY, &stored)? {
            tx.execute(
                "UPDATE subscription_keys SET secret = ?2 WHERE id = ?1",
                params![id, sealed],
            )?;
            changed += 1;
        }
    }
    tx.commit()?;
    Ok(changed)
}

/// How many events one backfill job looks at.
const BACKFILL_CHUNK: i64 = 10_000;

/// Queues deliveries for the next [`BACKFILL_CHUNK`] events after `after` that fall
/// in the window and match; returns how many were queued and the last seq looked at
/// (`None`: no events left).
fn backfill_chunk(
    conn: &mut Connection,
    subscription: &Subscription,
    after: i64,
    since_ms: Option<i64>,
    until_ms: Option<i64>,
    now_ms: i64,
) -> Result<(u64, Option<i64>), StoreError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let rows: Vec<StoredEvent> = tx
        .prepare_cached(
            "SELECT seq, event_type, source, tenant, status, received_at_ms, entity_kind, entity_id
             FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?
        .query_map(params![after, BACKFILL_CHUNK], |r| {
            Ok(StoredEvent {
                seq: r.get(0)?,
                event_type: r.get(1)?,
                source: r.get(2)?,
                tenant: r.get(3)?,
                quarantined: r.get::<_, String>(4)? == EventStatus::Quarantined.as_str(),
                received_at_ms: r.get(5)?,
                entity_kind: r.get(6)?,
                entity_id: r.get(7)?,
            })
        })?
        .collect::<Result<_, _>>()?;
    let Some(last) = rows.last().map(|row| row.seq) else {
        return Ok((0, None));
    };
    let mut added = 0u64;
    for event in rows {
        if let Some(key) = subscription.backfills(&event, since_ms, until_ms) {
            added +=
                insert_delivery(&tx, subscription.id, EventSeq(event.seq), key, now_ms)? as u64;
        }
    }
    tx.commit()?;
    Ok((added, Some(last)))
}

/// Leases due deliveries; see [`crate::store::Backend::claim_due`]. A delivery of a paused or
/// held subscription is never leased: the subscription's state is checked here, in
/// the same statement, not from a list read earlier. Every lease carries a fresh
/// token, and only a record made under that token counts ([`apply_attempt`]). Each
/// delivery comes with its event, read in the same transaction, so that an attempt
/// makes no read of its own.
pub(super) fn claim(
    conn: &Connection,
    requests: &[ClaimRequest],
    now_ms: i64,
) -> rusqlite::Result<Vec<Claimed>> {
    let mut stmt = conn.prepare_cached(
        "UPDATE deliveries SET lease_until_ms = ?3, lease_token = ?5 WHERE id IN (
             SELECT id FROM deliveries d WHERE subscription_id = ?1 AND state = 'pending'
               AND next_attempt_at_ms <= ?2 AND lease_until_ms <= ?2
               AND EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = ?1 AND s.paused = 0
                           AND s.hold_until_ms <= ?2)
               AND (d.entity_key IS NULL OR NOT EXISTS (
                   SELECT 1 FROM deliveries p WHERE p.subscription_id = ?1
                     AND p.entity_key IS NOT NULL AND p.state = 'pending'
                     AND p.entity_key = d.entity_key AND p.event_seq < d.event_seq))
             ORDER BY next_attempt_at_ms, id LIMIT ?4)
         RETURNING id, subscription_id, event_seq, webhook_id, round_attempts, lease_token",
    )?;
    let mut claimed = Vec::new();
    for request in requests {
        let rows = stmt.query_map(
            params![
                request.subscription,
                now_ms,
                request.lease_until_ms,
                request.capacity as i64,
                crate::store::new_lease_token()
            ],
            |r| {
                Ok(Claimed {
                    delivery_id: r.get(0)?,
                    subscription_id: r.get(1)?,
                    event_seq: r.get(2)?,
                    webhook_id: r.get(3)?,
                    round_attempts: r.get(4)?,
                    lease_token: r.get(5)?,
                    event: ClaimedEvent::Gone,
                })
            },
        )?;
        for row in rows {
            claimed.push(row?);
        }
    }
    let mut event = conn.prepare_cached(
        "SELECT provider, event_type, received_at_ms, body, trace_parent FROM events
         WHERE seq = ?1",
    )?;
    // One read (and one prepared body) per event: deliveries of the same event to
    // several subscriptions share it.
    let mut read: std::collections::HashMap<i64, ClaimedEvent> = Default::default();
    for delivery in &mut claimed {
        if let Some(shared) = read.get(&delivery.event_seq.get()) {
            delivery.event = shared.clone();
            continue;
        }
        let row = event
            .query_row([delivery.event_seq], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .optional()?;
        delivery.event = ClaimedEvent::from_columns(row);
        read.insert(delivery.event_seq.get(), delivery.event.clone());
    }
    Ok(claimed)
}

/// Gives leases back without an attempt (the subscription was paused or held after
/// they were taken); a lease that has changed hands since is left alone.
pub(super) fn release(conn: &Connection, leases: &[Lease]) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(
        "UPDATE deliveries SET lease_until_ms = 0, lease_token = 0
         WHERE id = ?1 AND lease_token = ?2 AND state = 'pending'",
    )?;
    for lease in leases {
        stmt.execute(params![lease.delivery, lease.token])?;
    }
    Ok(())
}

/// Records an attempt and moves the delivery (and its subscription) on, if the
/// lease it was made under still holds: a delivery replayed, deleted or leased again
/// meanwhile, or already delivered, is left as it is and the attempt is not recorded
/// (returns false). A recorded success is therefore never undone.
pub(super) fn apply_attempt(
    tx: &Connection,
    result: &AttemptResult,
) -> rusqlite::Result<AttemptRecorded> {
    let stored = result.stored();
    let id = result.claimed.delivery_id;
    let subscription = result.claimed.subscription_id;
    let moved = tx
        .prepare_cached(
            "UPDATE deliveries SET state = ?3, attempts = attempts + 1,
                 round_attempts = round_attempts + ?4, next_attempt_at_ms = ?5,
                 lease_until_ms = 0, lease_token = 0,
                 delivered_at_ms = coalesce(?6, delivered_at_ms), last_error = ?7
             WHERE id = ?1 AND lease_token = ?2 AND state = 'pending'",
        )?
        .execute(params![
            id,
            result.claimed.lease_token,
            stored.state.as_str(),
            stored.round_step,
            stored.next_attempt_at_ms,
            stored.delivered_at_ms,
            stored.last_error
        ])?;
    if moved == 0 {
        return Ok(AttemptRecorded::LeaseEnded);
    }
    tx.prepare_cached(
        "INSERT INTO attempts (delivery_id, at_ms, duration_ms, status_code, error, response)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )?
    .execute(params![
        id,
        result.at_ms,
        result.duration.as_millis() as i64,
        stored.status_code,
        stored.error,
        result.response
    ])?;
    match result.next {
        Next::Delivered => {
            tx.prepare_cached(
                "UPDATE subscriptions SET consecutive_failures = 0, hold_until_ms = 0
                 WHERE id = ?1 AND (consecutive_failures <> 0 OR hold_until_ms <> 0)",
            )?
            .execute([subscription])?;
        }
        Next::Pause => {
            tx.prepare_cached(
                "UPDATE subscriptions SET paused = 1,
                     paused_reason = 'the endpoint answered 410 Gone' WHERE id = ?1",
            )?
            .execute([subscription])?;
        }
        Next::RetryAt(_) | Next::Dead => {
            let failures: i64 = tx
                .prepare_cached(
                    "UPDATE subscriptions SET consecutive_failures = consecutive_failures + 1
                     WHERE id = ?1 RETURNING consecutive_failures",
                )?
                .query_row([subscription], |r| r.get(0))?;
            return Ok(AttemptRecorded::Kept {
                consecutive_failures: failures,
            });
        }
    }
    Ok(AttemptRecorded::Kept {
        consecutive_failures: 0,
    })
}

/// Puts a delivery back in the queue, due at `?2`, with a fresh retry schedule (its
/// attempt log and `attempts` stay).
const REQUEUE: &str = "state = 'pending', round_attempts = 0, next_attempt_at_ms = ?2,
    lease_until_ms = 0, lease_token = 0";
/// Leased to a dispatcher at `?2`: it may be on the wire right now.
const LEASED: &str = "(state = 'pending' AND lease_until_ms > ?2)";

const DELIVERY_COLUMNS: &str = "d.id, s.name, d.event_seq, d.webhook_id, d.state, d.attempts,
    d.next_attempt_at_ms, d.created_at_ms, d.delivered_at_ms, d.last_error";

fn delivery_from_row(r: &Row<'_>) -> rusqlite::Result<Delivery> {
    let state: String = r.get(4)?;
    Ok(Delivery {
        id: r.get(0)?,
        subscription: r.get(1)?,
        event_seq: r.get(2)?,
        webhook_id: r.get(3)?,
        state: DeliveryState::parse(&state)
            .ok_or_else(|| unreadable(4, format!("delivery state {state:?}")))?,
        attempts: r.get(5)?,
        next_attempt_at_ms: r.get(6)?,
        created_at_ms: r.get(7)?,
        delivered_at_ms: r.get(8)?,
        last_error: r.get(9)?,
    })
}

fn api_owned(tx: &rusqlite::Transaction<'_>, name: &str) -> Result<(), StoreError> {
    let owner: Option<String> = tx
        .query_row(
            "SELECT managed_by FROM subscriptions WHERE name = ?1",
            [name],
            |r| r.get(0),
        )
        .optional()?;
    match owner.as_deref() {
        None => Err(StoreError::NotFound(format!(
            "no subscription named {name:?}"
        ))),
        Some("config") => Err(StoreError::Conflict(format!(
            "subscription {name:?} is declared in the config file; change it there (pause and resume work here)"
        ))),
        Some(_) => Ok(()),
    }
}
