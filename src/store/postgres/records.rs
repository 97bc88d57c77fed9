//! Attempt records, committed in groups: a recorder task drains a channel of
//! records, applies each (one statement) in one transaction, sending the group's
//! statements together (one round trip, not one per record), and answers every
//! caller after the commit, so that a busy dispatcher costs one WAL flush per
//! group, not per attempt. A group that fails is applied again record by record,
//! each in its own transaction, so that a failure is that record's alone.

use deadpool_postgres::Pool;
use futures_util::future::try_join_all;
use tokio::sync::{mpsc, oneshot};

use crate::deliver::schedule::Next;
use crate::store::{AttemptRecorded, AttemptResult, StoreError};

/// The most records one commit holds.
const MAX_GROUP: usize = 256;

type Reply = oneshot::Sender<Result<AttemptRecorded, StoreError>>;

/// The recorder's queue; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    queue: mpsc::Sender<(Box<AttemptResult>, Reply)>,
}

impl Recorder {
    /// Starts the recorder task on `pool` (it stops when every handle is gone).
    pub fn start(pool: Pool) -> Recorder {
        let (queue, receiver) = mpsc::channel(4 * MAX_GROUP);
        tokio::spawn(run(pool, receiver));
        Recorder { queue }
    }

    /// A recorder that records nothing (read-only handles): `WriterGone`.
    pub fn closed() -> Recorder {
        let (queue, _receiver) = mpsc::channel(1);
        Recorder { queue }
    }

    pub async fn record(&self, result: AttemptResult) -> Result<AttemptRecorded, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send((Box::new(result), reply))
            .await
            .map_err(|_| StoreError::WriterGone)?;
        answer.await.map_err(|_| StoreError::WriterGone)?
    }
}

async fn run(pool: Pool, mut receiver: mpsc::Receiver<(Box<AttemptResult>, Reply)>) {
    let mut group = Vec::with_capacity(MAX_GROUP);
    while let Some(first) = receiver.recv().await {
        group.push(first);
        while group.len() < MAX_GROUP {
            match receiver.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        let results: Vec<&AttemptResult> = group.iter().map(|(r, _)| &**r).collect();
        let outcomes = match apply(&pool, &results).await {
            Ok(outcomes) => outcomes,
            Err(StoreError::NotReady(message)) => results
                .iter()
                .map(|_| Err(StoreError::NotReady(message.clone())))
                .collect(),
            Err(error) => {
                tracing::warn!(%error, records = results.len(), "a group of attempt records failed; recording them one by one");
                let mut one_by_one = Vec::with_capacity(results.len());
                for result in &results {
                    one_by_one.push(
                        apply(&pool, &[result]).await.and_then(|mut outcomes| {
                            outcomes.pop().expect("one outcome per record")
                        }),
                    );
                }
                one_by_one
            }
        };
        for ((_, reply), outcome) in group.drain(..).zip(outcomes) {
            // A caller may have given up; what it asked for is done anyway.
            let _ = reply.send(outcome);
        }
    }
}

/// Applies `results` in one transaction.
pub(super) async fn apply(
    pool: &Pool,
    results: &[&AttemptResult],
) -> Result<Vec<Result<AttemptRecorded, StoreError>>, StoreError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    // The group's statements (one per shape it holds) are prepared first, so that
    // the records can then be sent together: the connection pipelines them in this
    // order and the server runs them in it, as one after another would (a success
    // and a failure of one subscription must apply in their order), in one round
    // trip for the group instead of one per record.
    let mut prepared: Vec<(SubscriptionChange, tokio_postgres::Statement)> = Vec::new();
    for result in results {
        let change = SubscriptionChange::of(&result.next);
        if !prepared.iter().any(|(shape, _)| *shape == change) {
            prepared.push((change, tx.prepare_cached(&change.record_sql()).await?));
        }
    }
    let statement_of = |result: &AttemptResult| {
        let change = SubscriptionChange::of(&result.next);
        let (_, statement) = prepared
            .iter()
            .find(|(shape, _)| *shape == change)
            .expect("every shape of the group was prepared above");
        statement
    };
    let outcomes = try_join_all(
        results
            .iter()
            .map(|result| record_one(&tx, statement_of(result), result)),
    )
    .await?;
    tx.commit().await?;
    Ok(outcomes.into_iter().map(Ok).collect())
}

/// Records an attempt (with its statement, [`SubscriptionChange::record_sql`]) and moves the delivery
/// (and its subscription) on, if the lease it was made under still holds and the
/// delivery is pending: a delivery replayed, deleted or leased again meanwhile, or
/// already delivered, is left as it is and nothing is recorded. A recorded success
/// is therefore never undone.
async fn record_one(
    tx: &deadpool_postgres::Transaction<'_>,
    statement: &tokio_postgres::Statement,
    result: &AttemptResult,
) -> Result<AttemptRecorded, StoreError> {
    let stored = result.stored();
    let id = result.claimed.delivery_id;
    let subscription = result.claimed.subscription_id;
    let status = stored.status_code.map(i32::from);
    let row = tx
        .query_one(
            statement,
            &[
                &id,
                &result.claimed.lease_token,
                &stored.state.as_str(),
                &stored.round_step,
                &stored.next_attempt_at_ms,
                &stored.delivered_at_ms,
                &stored.last_error,
                &result.at_ms,
                &(result.duration.as_millis() as i64),
                &status,
                &stored.error,
                &result.response,
                &subscription,
            ],
        )
        .await?;
    if !row.try_get::<_, bool>(0)? {
        return Ok(AttemptRecorded::LeaseEnded);
    }
    let failures: Option<i64> = row.try_get(1)?;
    Ok(AttemptRecorded::Kept {
        consecutive_failures: match SubscriptionChange::of(&result.next) {
            SubscriptionChange::CountFailure => failures.unwrap_or(0),
            SubscriptionChange::ClearFailures | SubscriptionChange::Pause => 0,
        },
    })
}

/// What an attempt's outcome does to its subscription, and with it the shape of the
/// statement that records the attempt.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SubscriptionChange {
    /// Delivered: its failures are forgotten and a hold lifted.
    ClearFailures,
    /// 410 Gone: paused.
    Pause,
    /// Failed (to be retried, or dead): one more failure in a row.
    CountFailure,
}

impl SubscriptionChange {
    fn of(next: &Next) -> SubscriptionChange {
        match next {
            Next::Delivered => SubscriptionChange::ClearFailures,
            Next::Pause => SubscriptionChange::Pause,
            Next::RetryAt(_) | Next::Dead => SubscriptionChange::CountFailure,
        }
    }

    /// The statement that records an attempt with this change. One statement, one
    /// round trip: the delivery moves on only under its lease, and the attempt and
    /// the subscription's change follow only if it did.
    fn record_sql(self) -> String {
        // The subscription's side of the outcome (only when the record stands).
        let (subscription_change, only_if) = match self {
            SubscriptionChange::ClearFailures => (
                "consecutive_failures = 0, hold_until_ms = 0",
                "AND (consecutive_failures <> 0 OR hold_until_ms <> 0)",
            ),
            SubscriptionChange::Pause => (
                "paused = TRUE, paused_reason = 'the endpoint answered 410 Gone'",
                "",
            ),
            SubscriptionChange::CountFailure => {
                ("consecutive_failures = consecutive_failures + 1", "")
            }
        };
        format!(
            "WITH moved AS (
                 UPDATE deliveries SET state = $3::text, attempts = attempts + 1,
                     round_attempts = round_attempts + $4::bigint,
                     next_attempt_at_ms = $5::bigint, lease_until_ms = 0, lease_token = 0,
                     delivered_at_ms = coalesce($6::bigint, delivered_at_ms),
                     last_error = $7::text
                 WHERE id = $1 AND lease_token = $2 AND state = 'pending'
                 RETURNING id
             ), logged AS (
                 INSERT INTO attempts (delivery_id, at_ms, duration_ms, status_code, error,
                     response)
                 SELECT id, $8::bigint, $9::bigint, $10::int, $11::text, $12::text FROM moved
             ), subscription AS (
                 UPDATE subscriptions SET {subscription_change}
                 WHERE id = $13 AND EXISTS (SELECT 1 FROM moved) {only_if}
                 RETURNING consecutive_failures
             )
             SELECT EXISTS (SELECT 1 FROM moved),
                 (SELECT consecutive_failures FROM subscription)"
        )
    }
}
