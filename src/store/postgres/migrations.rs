//! The schema, as numbered append-only migrations: step N is `migrations/000N_*.sql`
//! and runs once, in its own transaction, recording its number in
//! `classhook_schema`. The whole run holds an advisory lock, so instances starting
//! together migrate one after the other; a database newer than this binary is refused.

use tokio_postgres::NoTls;

use super::tls::Target;

use crate::store::StoreError;

/// Every step, in order. Never edit one that has shipped: add the next.
const MIGRATIONS: &[&str] = &[
    include_str!("migrations/0001_schema.sql"),
    include_str!("migrations/0002_db_copy.sql"),
    include_str!("migrations/0003_signing_keys.sql"),
    include_str!("migrations/0004_dispatch_owners.sql"),
    include_str!("migrations/0005_trace_parent.sql"),
    include_str!("migrations/0006_entity_order.sql"),
    include_str!("migrations/0007_rate_limit.sql"),
];

/// The advisory lock key that serializes migrations ("classhk" in ASCII).
const LOCK_KEY: i64 = 0x0063_6c61_7373_686b;

/// The schema version this binary brings a database to.
pub fn known_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Connects once and brings the database up to [`known_version`].
pub async fn run(target: &Target, location: &str) -> Result<(), StoreError> {
    let say_where = |e: tokio_postgres::Error| match StoreError::from(e) {
        StoreError::NotReady(message) => StoreError::NotReady(format!("{message} (at {location})")),
        other => other,
    };
    let (mut client, connection) = match &target.tls {
        Some(tls) => {
            let (client, connection) = target
                .config
                .connect(tls.clone())
                .await
                .map_err(say_where)?;
            (client, tokio::spawn(async move { drop(connection.await) }))
        }
        None => {
            let (client, connection) = target.config.connect(NoTls).await.map_err(say_where)?;
            (client, tokio::spawn(async move { drop(connection.await) }))
        }
    };
    let result = migrate(&mut client).await;
    drop(client);
    let _ = connection.await;
    result
}

async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    // Held until the session ends too, should this one fail halfway.
    client
        .execute("SELECT pg_advisory_lock($1)", &[&LOCK_KEY])
        .await?;
    let result = steps(client).await;
    client
        .execute("SELECT pg_advisory_unlock($1)", &[&LOCK_KEY])
        .await?;
    result
}

async fn steps(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS classhook_schema (
                 version    BIGINT NOT NULL PRIMARY KEY,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
        )
        .await?;
    let current: i64 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM classhook_schema",
            &[],
        )
        .await?
        .get(0);
    let known = known_version();
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let version = index as i64 + 1;
        let tx = client.transaction().await?;
        tx.batch_execute(sql).await?;
        tx.execute(
            "INSERT INTO classhook_schema (version) VALUES ($1)",
            &[&version],
        )
        .await?;
        tx.commit().await?;
        tracing::info!(version, "database schema migrated");
    }
    Ok(())
}

/// For a read-only open (and `Store::open_existing`'s look before it migrates):
/// the database holds a classhook schema this binary knows. `NoDatabase` without
/// one, `SchemaTooNew` for a newer one; an older one is accepted, as SQLite's
/// read-only open accepts an older file (what it lacks fails when read).
pub async fn check(client: &tokio_postgres::Client, location: &str) -> Result<(), StoreError> {
    let exists: bool = client
        .query_one("SELECT to_regclass('classhook_schema') IS NOT NULL", &[])
        .await?
        .try_get(0)?;
    if !exists {
        return Err(StoreError::NoDatabase(location.into()));
    }
    let found: i64 = client
        .query_one(
            "SELECT coalesce(max(version), 0) FROM classhook_schema",
            &[],
        )
        .await?
        .try_get(0)?;
    let known = known_version();
    if found > known {
        return Err(StoreError::SchemaTooNew { found, known });
    }
    Ok(())
}
