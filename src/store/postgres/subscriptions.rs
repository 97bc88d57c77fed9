//! Subscriptions: rows, changes (each bumps `subscription_version`, which the
//! writers watch), holds, and secrets, sealed and opened through the store's
//! [`Sealer`].

use std::time::Duration;

use tokio_postgres::Row;

use super::PostgresStore;
use super::delivery::ORDERED_KEY;
use crate::config::SecretEncoding;
use crate::deliver::ordering::Ordering;
use crate::deliver::rate::RateLimit;
use crate::deliver::signing::{self, KeySet, PreviousKey, Rotated, Signing};
use crate::deliver::subscription::{ManagedBy, Subscription, SubscriptionSpec};
use crate::store::sealed::{self, Sealer};
use crate::store::{RotateChange, SpecChange, StoreError, SubscriptionId};

const SUBSCRIPTION_COLUMNS: &str = "id, name, url, events, sources, tenants, basic_username,
    basic_password, secret, secret_encoding, timeout_ms, retry_schedule_ms, max_in_flight,
    managed_by, paused, paused_reason, consecutive_failures, hold_until_ms, signing,
    rotated_at_ms, rotated_by, public_key, ordering, rate_limit";

fn json_list(list: Option<&Vec<String>>) -> Option<String> {
    list.map(|l| serde_json::to_string(l).expect("strings serialize"))
}

/// A stored value this classhook cannot read: reading fails instead of guessing.
pub(super) fn unreadable(what: String) -> StoreError {
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
    let signing: String = row.try_get(18)?;
    let rotated_at_ms: Option<i64> = row.try_get(19)?;
    let rotated_by: Option<String> = row.try_get(20)?;
    let ordering: String = row.try_get(22)?;
    let rate_limit: Option<String> = row.try_get(23)?;
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
            signing: Signing::parse(&signing)
                .map_err(|_| unreadable(format!("signing {signing:?}")))?,
            timeout: Duration::from_millis(row.try_get::<_, i64>(10)? as u64),
            retry_schedule: schedule.into_iter().map(Duration::from_millis).collect(),
            max_in_flight: u32::try_from(max_in_flight)
                .map_err(|_| unreadable(format!("max_in_flight {max_in_flight}")))?,
            ordering: Ordering::parse(&ordering)
                .map_err(|_| unreadable(format!("ordering {ordering:?}")))?,
            rate_limit: rate_limit
                .map(|r| RateLimit::parse(&r).map_err(|_| unreadable(format!("rate limit {r:?}"))))
                .transpose()?,
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
        public_key: row.try_get(21)?,
        previous_keys: Vec::new(),
        rotated: rotated_at_ms.map(|at_ms| Rotated {
            at_ms,
            by: rotated_by.unwrap_or_default(),
        }),
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
    let mut subscriptions = rows
        .iter()
        .map(|row| subscription_from_row(row, sealer))
        .collect::<Result<Vec<_>, _>>()?;
    attach_previous_keys(client, &mut subscriptions, sealer).await?;
    Ok(subscriptions)
}

/// One subscription by name with its previous keys (`FOR UPDATE` locks its row).
async fn load_subscription(
    client: &impl tokio_postgres::GenericClient,
    name: &str,
    sealer: &Sealer,
    for_update: bool,
) -> Result<Option<Subscription>, StoreError> {
    let lock = if for_update { " FOR UPDATE" } else { "" };
    let Some(row) = client
        .query_opt(
            &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE name = $1{lock}"),
            &[&name],
        )
        .await?
    else {
        return Ok(None);
    };
    let mut found = vec![subscription_from_row(&row, sealer)?];
    attach_previous_keys(client, &mut found, sealer).await?;
    Ok(found.pop())
}

/// Fills each subscription's `previous_keys` (expired ones included until they are
/// forgotten: signing skips them), in one query.
async fn attach_previous_keys(
    client: &impl tokio_postgres::GenericClient,
    subscriptions: &mut [Subscription],
    sealer: &Sealer,
) -> Result<(), StoreError> {
    if subscriptions.is_empty() {
        return Ok(());
    }
    let ids: Vec<i64> = subscriptions.iter().map(|s| s.id.get()).collect();
    let rows = client
        .query(
            "SELECT subscription_id, secret, expires_at_ms, public_key FROM subscription_keys
             WHERE subscription_id = ANY($1) ORDER BY expires_at_ms DESC",
            &[&ids],
        )
        .await?;
    for row in rows {
        let id: i64 = row.try_get(0)?;
        let key = PreviousKey {
            secret: open_secret(&row, 1, sealed::SUBSCRIPTION_PREVIOUS_KEY, sealer)?
                .unwrap_or_else(|| crate::secret::Secret::new("")),
            expires_at_ms: row.try_get(2)?,
            public_key: row.try_get(3)?,
        };
        if let Some(s) = subscriptions.iter_mut().find(|s| s.id.get() == id) {
            s.previous_keys.push(key);
        }
    }
    Ok(())
}

/// Writes a rotation's keys: the current key on the row, the replaced keys still
/// valid in `subscription_keys` (every other one of the subscription deleted).
async fn write_keys(
    tx: &tokio_postgres::Transaction<'_>,
    id: SubscriptionId,
    keys: &KeySet,
    sealer: &Sealer,
) -> Result<(), StoreError> {
    let secret = sealer.seal(sealed::SUBSCRIPTION_SECRET, &keys.secret)?;
    tx.execute(
        "UPDATE subscriptions SET signing = $2, secret = $3, secret_encoding = $4,
             rotated_at_ms = $5, rotated_by = $6, public_key = $7 WHERE id = $1",
        &[
            &id.get(),
            &keys.signing.as_str(),
            &secret,
            &keys.secret_encoding.as_str(),
            &keys.rotated.at_ms,
            &keys.rotated.by,
            &keys.public_key,
        ],
    )
    .await?;
    tx.execute(
        "DELETE FROM subscription_keys WHERE subscription_id = $1",
        &[&id.get()],
    )
    .await?;
    for previous in &keys.previous {
        let sealed = sealer.seal(sealed::SUBSCRIPTION_PREVIOUS_KEY, &previous.secret)?;
        tx.execute(
            "INSERT INTO subscription_keys (subscription_id, secret, expires_at_ms, public_key)
             VALUES ($1, $2, $3, $4)",
            &[
                &id.get(),
                &sealed,
                &previous.expires_at_ms,
                &previous.public_key,
            ],
        )
        .await?;
    }
    Ok(())
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
             max_in_flight, managed_by, signing, public_key, ordering, rate_limit)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
         ON CONFLICT (name) DO UPDATE SET url = excluded.url, events = excluded.events,
             sources = excluded.sources, tenants = excluded.tenants,
             basic_username = excluded.basic_username, basic_password = excluded.basic_password,
             secret = excluded.secret, secret_encoding = excluded.secret_encoding,
             timeout_ms = excluded.timeout_ms, retry_schedule_ms = excluded.retry_schedule_ms,
             max_in_flight = excluded.max_in_flight, managed_by = excluded.managed_by,
             signing = excluded.signing, public_key = excluded.public_key,
             ordering = excluded.ordering, rate_limit = excluded.rate_limit",
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
            &spec.signing.as_str(),
            &signing::public_key(spec),
            &spec.ordering.as_str(),
            &spec.rate_limit.map(|r| r.to_string()),
        ],
    )
    .await?;
    Ok(())
}

/// Gives the pending deliveries of a subscription whose ordering just changed the
/// keys that ordering asks for.
async fn rekey_pending(tx: &tokio_postgres::Transaction<'_>, name: &str) -> Result<(), StoreError> {
    tx.execute(
        &format!(
            "UPDATE deliveries SET entity_key = {ORDERED_KEY}
             WHERE state = 'pending'
               AND subscription_id = (SELECT id FROM subscriptions WHERE name = $1)"
        ),
        &[&name],
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
        let found = load_subscription(&*tx, &name, &self.inner.options.secrets, false).await?;
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
                let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
                for mut spec in specs {
                    let stored = load_subscription(tx, &spec.name, &sealer, true).await?;
                    if stored.as_ref().is_some_and(|s| s.managed_by == ManagedBy::Api) {
                        return Err(StoreError::Conflict(format!(
                            "subscription {:?} is in the config but was created through the API; rename one of them",
                            spec.name
                        )));
                    }
                    signing::keep_generated_key(stored.as_ref(), &mut spec);
                    upsert(tx, &spec, ManagedBy::Config, &sealer).await?;
                    if stored.is_some_and(|s| s.spec.ordering != spec.ordering) {
                        rekey_pending(tx, &spec.name).await?;
                    }
                }
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
                let current = load_subscription(tx, &name, &sealer, false)
                    .await?
                    .ok_or_else(|| {
                        StoreError::NotFound(format!("no subscription named {name:?}"))
                    })?;
                let was_ordered = current.spec.ordering;
                let spec = change(current.spec).map_err(StoreError::Invalid)?;
                if spec.name != name {
                    return Err(StoreError::Invalid(
                        "a subscription cannot be renamed".into(),
                    ));
                }
                upsert(tx, &spec, ManagedBy::Api, &sealer).await?;
                if spec.ordering != was_ordered {
                    rekey_pending(tx, &spec.name).await?;
                }
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
        load_subscription(&**client, name, &self.inner.options.secrets, false).await
    }

    /// See [`crate::store::Backend::rotate_secret`].
    pub(super) async fn rotate_secret(
        &self,
        name: &str,
        rotate: RotateChange,
    ) -> Result<Subscription, StoreError> {
        let name = name.to_string();
        let sealer = self.inner.options.secrets.clone();
        let rotated = self
            .change_kept(move |tx| {
                Box::pin(async move {
                    let current = load_subscription(tx, &name, &sealer, true)
                        .await?
                        .ok_or_else(|| {
                            StoreError::NotFound(format!("no subscription named {name:?}"))
                        })?;
                    let keys = rotate(&current)?;
                    write_keys(tx, current.id, &keys, &sealer).await?;
                    Ok(name)
                })
            })
            .await?;
        self.vacuum_secrets().await;
        Ok(rotated)
    }

    /// See [`crate::store::Backend::forget_expired_keys`].
    pub(super) async fn forget_expired_keys(&self, now_ms: i64) -> Result<u64, StoreError> {
        let client = self.client().await?;
        let deleted = client
            .execute(
                "DELETE FROM subscription_keys WHERE expires_at_ms <= $1",
                &[&now_ms],
            )
            .await?;
        drop(client);
        if deleted > 0 {
            self.vacuum_secrets().await;
        }
        Ok(deleted)
    }

    /// Rewrites the tables that hold keys, so that replaced and deleted values do not
    /// linger in their files (as reseal does; the WAL keeps them until recycled).
    /// The change it follows is committed: a failure here is logged, not returned.
    async fn vacuum_secrets(&self) {
        let vacuum = async {
            self.client()
                .await?
                .batch_execute("VACUUM FULL subscriptions, subscription_keys")
                .await
                .map_err(StoreError::from)
        };
        if let Err(error) = vacuum.await {
            tracing::warn!(%error, "cannot rewrite the tables of replaced signing keys");
        }
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
    ) -> Result<Option<i64>, StoreError> {
        let client = self.delivery_client().await?;
        let statement = client
            .prepare_cached(
                "SELECT coalesce(rotated_at_ms, 0) FROM subscriptions
                 WHERE id = $1 AND NOT paused AND hold_until_ms <= $2",
            )
            .await?;
        Ok(client
            .query_opt(&statement, &[&id.get(), &now_ms])
            .await?
            .map(|row| row.try_get(0))
            .transpose()?)
    }

    pub(super) async fn subscription_id(&self, name: &str) -> Result<SubscriptionId, StoreError> {
        self.get_subscription(name)
            .await?
            .map(|s| s.id)
            .ok_or_else(|| StoreError::NotFound(format!("no subscription named {name:?}")))
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
        let keys = tx
            .query(
                "SELECT id, secret FROM subscription_keys ORDER BY id FOR UPDATE",
                &[],
            )
            .await?;
        for row in keys {
            let (id, stored): (i64, String) = (row.try_get(0)?, row.try_get(1)?);
            if let Some(sealed) = sealer.reseal(sealed::SUBSCRIPTION_PREVIOUS_KEY, &stored)? {
                tx.execute(
                    "UPDATE subscription_keys SET secret = $2 WHERE id = $1",
                    &[&id, &sealed],
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
            client
                .batch_execute("VACUUM FULL subscriptions, subscription_keys")
                .await?;
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
        // Keys kept after a rotation only widen what verifies: one that no key opens
        // is dropped (its subscription signs with its current key).
        if !dry_run {
            let previous = tx
                .query(
                    "SELECT id, secret FROM subscription_keys ORDER BY id FOR UPDATE",
                    &[],
                )
                .await?;
            for row in previous {
                let (id, stored): (i64, String) = (row.try_get(0)?, row.try_get(1)?);
                if keys
                    .open(sealed::SUBSCRIPTION_PREVIOUS_KEY, &stored)
                    .is_err()
                {
                    tx.execute("DELETE FROM subscription_keys WHERE id = $1", &[&id])
                        .await?;
                }
            }
        }
        tx.commit().await?;
        Ok(forgotten)
    }
}
