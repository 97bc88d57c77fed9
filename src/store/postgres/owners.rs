//! Sharing the delivery work between instances, by subscription: each instance
//! says it is alive in `instances` at every round, and owns some subscriptions in
//! `dispatch_owners` until a moment it renews at every round. An ownership passes
//! to another instance only once it has ended (or been given back), and the
//! dispatcher starts an attempt only while its ownership outlasts that attempt, so
//! no two instances send for one subscription at once.

use super::PostgresStore;
use crate::store::{Ownership, OwnershipRequest, StoreError, SubscriptionId};

/// An instance unseen this long is not counted when the work is spread.
const ALIVE_FOR_MS: i64 = 5_000;

/// An instance unseen this long is forgotten.
const FORGET_AFTER_MS: i64 = 24 * 3_600_000;

impl PostgresStore {
    pub(super) async fn own_subscriptions(
        &self,
        request: OwnershipRequest,
    ) -> Result<Ownership, StoreError> {
        let me = self.inner.instance;
        let now = request.now_ms;
        let ids: Vec<i64> = request.candidates.iter().map(|(id, _)| id.get()).collect();
        let ends: Vec<i64> = request.candidates.iter().map(|(_, end)| *end).collect();
        let give_up: Vec<i64> = request.give_up.iter().map(|id| id.get()).collect();
        let mut client = self.delivery_client().await?;
        let tx = client.transaction().await?;
        tx.execute(
            "INSERT INTO instances (id, name, seen_at_ms) VALUES ($1, $3, $2)
             ON CONFLICT (id) DO UPDATE SET seen_at_ms = excluded.seen_at_ms",
            &[&me, &now, &request.instance_name],
        )
        .await?;
        let alive: i64 = tx
            .query_one(
                "SELECT count(*) FROM instances WHERE seen_at_ms > $1",
                &[&(now - ALIVE_FOR_MS)],
            )
            .await?
            .try_get(0)?;
        tx.execute(
            "DELETE FROM dispatch_owners WHERE instance_id = $1 AND subscription_id = ANY($2)",
            &[&me, &give_up],
        )
        .await?;
        // Renewed whether or not it had ended: nobody else took it meanwhile.
        let mut owned = pairs(
            tx.query(
                "UPDATE dispatch_owners o SET until_ms = r.until_ms
                 FROM UNNEST($2::bigint[], $3::bigint[]) AS r(id, until_ms)
                 WHERE o.subscription_id = r.id AND o.instance_id = $1
                 RETURNING o.subscription_id, o.until_ms",
                &[&me, &ids, &ends],
            )
            .await?,
        )?;
        let fair_share = (ids.len() as i64 + alive.max(1) - 1) / alive.max(1);
        let wanted = fair_share - owned.len() as i64;
        if wanted > 0 {
            // In id order, so that two instances taking at once lock rows in the
            // same order and cannot deadlock; a row another instance holds (or took
            // a moment ago) is left to it.
            let taken = tx
                .query(
                    "INSERT INTO dispatch_owners (subscription_id, instance_id, until_ms)
                     SELECT r.id, $1, r.until_ms
                     FROM UNNEST($2::bigint[], $3::bigint[]) AS r(id, until_ms)
                     JOIN subscriptions s ON s.id = r.id
                     WHERE NOT EXISTS (SELECT 1 FROM dispatch_owners o
                                       WHERE o.subscription_id = r.id
                                         AND (o.until_ms > $4 OR o.instance_id = $1))
                     ORDER BY r.id
                     LIMIT $5
                     ON CONFLICT (subscription_id) DO UPDATE
                         SET instance_id = excluded.instance_id, until_ms = excluded.until_ms
                         WHERE dispatch_owners.until_ms <= $4
                     RETURNING subscription_id, until_ms",
                    &[&me, &ids, &ends, &now, &wanted],
                )
                .await?;
            owned.extend(pairs(taken)?);
        }
        tx.execute(
            "DELETE FROM instances WHERE seen_at_ms < $1",
            &[&(now - FORGET_AFTER_MS)],
        )
        .await?;
        tx.commit().await?;
        owned.sort_unstable();
        Ok(Ownership {
            owned,
            fair_share: fair_share as usize,
        })
    }
}

impl PostgresStore {
    /// Gives back every ownership at once and leaves the count of live instances
    /// (a clean stop, once nothing is in flight), so that the others take over
    /// without waiting for the ownerships to end.
    pub(super) async fn resign(&self) -> Result<(), StoreError> {
        let me = self.inner.instance;
        let client = self.delivery_client().await?;
        client
            .batch_execute(&format!(
                "DELETE FROM dispatch_owners WHERE instance_id = {me};
                 DELETE FROM instances WHERE id = {me};"
            ))
            .await?;
        Ok(())
    }
}

fn pairs(rows: Vec<tokio_postgres::Row>) -> Result<Vec<(SubscriptionId, i64)>, StoreError> {
    rows.iter()
        .map(|r| Ok((r.try_get(0)?, r.try_get(1)?)))
        .collect()
}
