//! One batch of appends, written with set-based statements inside the writer's
//! transaction: the events (`INSERT … SELECT FROM UNNEST … ON CONFLICT DO NOTHING`),
//! the copies of stored events (counted, conflicts logged), the mirror, and the
//! outbox rows of the subscriptions each new event matches.

use std::collections::HashMap;

use deadpool_postgres::Transaction;

use super::mirror::{self, Item, Tables};
use super::sql::{Param, refs};
use crate::canonical;
use crate::deliver::ordering;
use crate::deliver::subscription::Subscription;
use crate::event::{EventStatus, NewEvent};
use crate::store::{AppendOutcome, EventSeq, NewRejection, REJECTION_BODY_PREFIX, StoreError};

/// What a batch of appends did: one outcome per event, and how many deliveries it
/// queued.
pub struct Written {
    pub outcomes: Vec<AppendOutcome>,
    pub queued: u64,
}

/// Where a copy's first body is: stored before this batch (`seq`, and its body when
/// its bytes differ from the batch's first copy), or stored by this batch.
struct Target {
    seq: i64,
    /// The stored body's SHA-256 (`None`: the batch's first copy's).
    hash: Option<Vec<u8>>,
    body: Option<Vec<u8>>,
    /// Index of the first event of the batch with this key.
    first: usize,
    stored_now: bool,
}

/// Writes `events` (in receive order) in `tx`. Within the batch the first event of a
/// (source, dedupe key) wins; the others are copies of it.
pub async fn write(
    tx: &Transaction<'_>,
    events: &[&NewEvent],
    subscriptions: &[Subscription],
) -> Result<Written, StoreError> {
    let mut seen = std::collections::HashSet::new();
    let firsts: Vec<usize> = (0..events.len())
        .filter(|&i| seen.insert(key_of(events[i])))
        .collect();
    // Every key is taken for new, the usual case: the insert's unique constraint
    // says which were stored before (a retry, or another instance's copy at the
    // same moment), so that a batch without copies makes no look-up at all.
    let mut targets: HashMap<(&str, &str), Target> = HashMap::new();
    let mut new = firsts;
    // What each new event does to the mirror, decided before it is inserted, so
    // that its row is written once, with its effect.
    let mut mirror = MirrorPlan::make(tx, events, &new).await?;
    let written_effects = mirror.effects(&new);
    let inserted = insert(tx, events, &new, &written_effects).await?;
    if inserted.len() < new.len() {
        // Some keys were stored before: their events are copies, and the mirror is
        // planned again without them (the effects already written are corrected).
        // The writer's cached plans were made for the tables as they were; between
        // `events`' indexes they choose by the statistics of then (on a new database,
        // `events_source` as well as the unique key): the look-up of stored copies
        // would filter a whole source. This rarer path plans for the tables as they are.
        super::plan_for_the_tables_as_they_are(tx).await?;
        let lost: Vec<usize> = new
            .iter()
            .copied()
            .filter(|&i| !inserted.contains_key(&key_of(events[i])))
            .collect();
        targets.extend(find_stored(tx, events, &lost).await?);
        let before: HashMap<usize, Option<&'static str>> =
            new.iter().copied().zip(written_effects).collect();
        new.retain(|&i| inserted.contains_key(&key_of(events[i])));
        mirror = MirrorPlan::make(tx, events, &new).await?;
        let now = mirror.effects(&new);
        let corrected: Vec<(i64, Option<&str>)> = new
            .iter()
            .zip(now)
            .filter(|(i, effect)| before[*i] != *effect)
            .map(|(i, effect)| (inserted[&key_of(events[*i])], effect))
            .collect();
        correct_effects(tx, &corrected).await?;
    }
    let seqs: Vec<i64> = mirror
        .events
        .iter()
        .map(|&i| inserted[&key_of(events[i])])
        .collect();
    mirror.plan.write(tx, Tables::LIVE, &seqs).await?;
    for &index in &new {
        let key = key_of(events[index]);
        targets.insert(
            key,
            Target {
                seq: inserted[&key],
                hash: None,
                body: None,
                first: index,
                stored_now: true,
            },
        );
    }
    let mut outcomes = Vec::with_capacity(events.len());
    let mut counts: HashMap<i64, Counts> = HashMap::new();
    let mut conflicts = Vec::new();
    for (index, event) in events.iter().enumerate() {
        let key = (event.source.as_str(), event.dedupe_key.as_str());
        let target = targets.get(&key).ok_or_else(|| {
            // Retention deleted it between the insert and the look-up: the batch
            // is written again (and then stores it).
            StoreError::Conflict(format!(
                "event {} vanished while it was stored",
                event.dedupe_key
            ))
        })?;
        if target.stored_now && target.first == index {
            outcomes.push(AppendOutcome::Stored {
                seq: EventSeq(target.seq),
            });
            continue;
        }
        let first = events[target.first];
        // Equal bytes are the same value; a stored body is fetched only when its
        // bytes differ from the batch's first copy.
        let stored_body: &[u8] = target.body.as_deref().unwrap_or(&first.body);
        let stored_hash: &[u8] = target.hash.as_deref().unwrap_or(&first.body_sha256);
        let same =
            stored_hash == event.body_sha256 || canonical::same_value(stored_body, &event.body);
        let entry = counts.entry(target.seq).or_default();
        entry.last_seen = entry.last_seen.max(event.received_at_ms);
        if same {
            entry.duplicates += 1;
            outcomes.push(AppendOutcome::Duplicate {
                seq: EventSeq(target.seq),
            });
        } else {
            entry.conflicts += 1;
            conflicts.push(NewRejection::conflict(event, target.seq));
            outcomes.push(AppendOutcome::Conflict {
                seq: EventSeq(target.seq),
            });
        }
    }
    count_copies(tx, &counts).await?;
    insert_rejections(tx, &conflicts).await?;
    let queued = enqueue(tx, events, &outcomes, subscriptions).await?;
    Ok(Written { outcomes, queued })
}

#[derive(Default)]
struct Counts {
    duplicates: i64,
    conflicts: i64,
    last_seen: i64,
}

/// Inserts the first event of each key; returns the seq of each one stored (the
/// others' keys were stored before).
async fn insert<'e>(
    tx: &Transaction<'_>,
    events: &[&'e NewEvent],
    firsts: &[usize],
    effects: &[Option<&'static str>],
) -> Result<HashMap<(&'e str, &'e str), i64>, StoreError> {
    if firsts.is_empty() {
        return Ok(HashMap::new());
    }
    let pick = |f: &dyn Fn(&NewEvent) -> Option<String>| -> Vec<Option<String>> {
        firsts.iter().map(|&i| f(events[i])).collect()
    };
    let params: Vec<Param> = vec![
        Box::new(pick(&|e| Some(e.source.clone()))),
        Box::new(pick(&|e| Some(e.provider.as_str().to_string()))),
        Box::new(pick(&|e| Some(e.dedupe_key.clone()))),
        Box::new(pick(&|e| e.event_id.clone())),
        Box::new(pick(&|e| e.tenant.clone())),
        Box::new(pick(&|e| Some(e.event_type.clone()))),
        Box::new(pick(&|e| Some(e.entity.kind.clone()))),
        Box::new(pick(&|e| e.entity.id.clone())),
        Box::new(pick(&|e| Some(e.entity.op.clone()))),
        Box::new(
            firsts
                .iter()
                .map(|&i| events[i].version_ms)
                .collect::<Vec<i64>>(),
        ),
        Box::new(
            firsts
                .iter()
                .map(|&i| events[i].received_at_ms)
                .collect::<Vec<i64>>(),
        ),
        Box::new(pick(&|e| Some(e.status.as_str().to_string()))),
        Box::new(pick(&|e| e.status_reason.clone())),
        Box::new(
            firsts
                .iter()
                .map(|&i| events[i].body_sha256.to_vec())
                .collect::<Vec<Vec<u8>>>(),
        ),
        Box::new(
            firsts
                .iter()
                .map(|&i| events[i].body.to_vec())
                .collect::<Vec<Vec<u8>>>(),
        ),
        Box::new(pick(&|e| {
            Some(serde_json::to_string(&e.headers).expect("string pairs always serialize"))
        })),
        Box::new(effects.to_vec()),
        Box::new(pick(&|e| e.trace_parent.clone())),
    ];
    // Rows go in in receive order, so seqs grow with receive order.
    let statement = tx
        .prepare_cached(
            "INSERT INTO events (source, provider, dedupe_key, event_id, tenant, event_type,
                 entity_kind, entity_id, entity_op, version_ms, received_at_ms, status,
                 status_reason, body_sha256, body, headers, mirror_effect, last_seen_at_ms,
                 trace_parent)
             SELECT source, provider, dedupe_key, event_id, tenant, event_type, entity_kind,
                 entity_id, entity_op, version_ms, received_at_ms, status, status_reason,
                 body_sha256, body, headers, mirror_effect, received_at_ms, trace_parent
             FROM UNNEST($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                 $6::text[], $7::text[], $8::text[], $9::text[], $10::bigint[], $11::bigint[],
                 $12::text[], $13::text[], $14::bytea[], $15::bytea[], $16::text[], $17::text[],
                 $18::text[])
                 WITH ORDINALITY AS u(source, provider, dedupe_key, event_id, tenant,
                 event_type, entity_kind, entity_id, entity_op, version_ms, received_at_ms,
                 status, status_reason, body_sha256, body, headers, mirror_effect,
                 trace_parent, ord)
             ORDER BY ord
             ON CONFLICT (source, dedupe_key) DO NOTHING
             RETURNING seq, source, dedupe_key",
        )
        .await?;
    let rows = tx.query(&statement, &refs(&params)).await?;
    // Keyed by the batch's own strings.
    let by_key: HashMap<(&str, &str), usize> = firsts
        .iter()
        .map(|&i| {
            (
                (events[i].source.as_str(), events[i].dedupe_key.as_str()),
                i,
            )
        })
        .collect();
    let mut stored = HashMap::with_capacity(rows.len());
    for row in rows {
        let source: &str = row.try_get(1)?;
        let key: &str = row.try_get(2)?;
        if let Some(&i) = by_key.get(&(source, key)) {
            stored.insert(
                (events[i].source.as_str(), events[i].dedupe_key.as_str()),
                row.try_get(0)?,
            );
        }
    }
    Ok(stored)
}

/// The stored events of the keys whose first copy in the batch was not inserted:
/// their seq, and their body when its bytes differ from that copy's.
async fn find_stored<'e>(
    tx: &Transaction<'_>,
    events: &[&'e NewEvent],
    missing: &[usize],
) -> Result<Vec<((&'e str, &'e str), Target)>, StoreError> {
    if missing.is_empty() {
        return Ok(Vec::new());
    }
    let sources: Vec<&str> = missing.iter().map(|&i| events[i].source.as_str()).collect();
    let keys: Vec<&str> = missing
        .iter()
        .map(|&i| events[i].dedupe_key.as_str())
        .collect();
    let hashes: Vec<&[u8]> = missing
        .iter()
        .map(|&i| &events[i].body_sha256[..])
        .collect();
    let ords: Vec<i64> = (0..missing.len() as i64).collect();
    let statement = tx
        .prepare_cached(
            // One probe of the dedupe key per event, whatever the planner
            // guesses about an array's length.
            "SELECT u.ord, e.seq, e.body_sha256,
                 CASE WHEN e.body_sha256 = u.hash THEN NULL ELSE e.body END
             FROM UNNEST($1::text[], $2::text[], $3::bytea[], $4::bigint[]) AS u(source, key, hash, ord)
             CROSS JOIN LATERAL (
                 SELECT seq, body_sha256, body FROM events
                 WHERE events.source = u.source AND events.dedupe_key = u.key
             ) AS e",
        )
        .await?;
    let rows = tx
        .query(&statement, &[&sources, &keys, &hashes, &ords])
        .await?;
    let mut found = Vec::with_capacity(rows.len());
    for row in rows {
        let ord: i64 = row.try_get(0)?;
        let index = missing[ord as usize];
        let event = events[index];
        found.push((
            (event.source.as_str(), event.dedupe_key.as_str()),
            Target {
                seq: row.try_get(1)?,
                hash: Some(row.try_get(2)?),
                body: row.try_get(3)?,
                first: index,
                stored_now: false,
            },
        ));
    }
    Ok(found)
}

/// Adds the batch's copies to their stored events' counters.
async fn count_copies(
    tx: &Transaction<'_>,
    counts: &HashMap<i64, Counts>,
) -> Result<(), StoreError> {
    if counts.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = counts.keys().copied().collect();
    let duplicates: Vec<i64> = seqs.iter().map(|s| counts[s].duplicates).collect();
    let conflicts: Vec<i64> = seqs.iter().map(|s| counts[s].conflicts).collect();
    let last_seen: Vec<i64> = seqs.iter().map(|s| counts[s].last_seen).collect();
    let statement = tx
        .prepare_cached(
            "UPDATE events SET times_seen = events.times_seen + u.retries,
                 conflicts = events.conflicts + u.different,
                 last_seen_at_ms = GREATEST(events.last_seen_at_ms, u.last_seen)
             FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::bigint[])
                 AS u(copy_of, retries, different, last_seen)
             WHERE events.seq = u.copy_of",
        )
        .await?;
    tx.execute(&statement, &[&seqs, &duplicates, &conflicts, &last_seen])
        .await?;
    Ok(())
}

/// Adds rows to the rejection log and keeps it within its capacity.
pub async fn insert_rejections(
    tx: &Transaction<'_>,
    rejections: &[NewRejection],
) -> Result<(), StoreError> {
    if rejections.is_empty() {
        return Ok(());
    }
    let at: Vec<i64> = rejections.iter().map(|r| r.at_ms).collect();
    let sources: Vec<Option<&str>> = rejections.iter().map(|r| r.source.as_deref()).collect();
    let reasons: Vec<&str> = rejections.iter().map(|r| r.reason.as_str()).collect();
    let statuses: Vec<i32> = rejections.iter().map(|r| i32::from(r.status)).collect();
    let messages: Vec<&str> = rejections.iter().map(|r| r.message.as_str()).collect();
    let bodies: Vec<&[u8]> = rejections
        .iter()
        .map(|r| &r.body[..r.body.len().min(REJECTION_BODY_PREFIX)])
        .collect();
    let lengths: Vec<i64> = rejections.iter().map(|r| r.body_len as i64).collect();
    let addresses: Vec<Option<&str>> = rejections
        .iter()
        .map(|r| r.remote_addr.as_deref())
        .collect();
    let hashes: Vec<Option<&[u8]>> = rejections
        .iter()
        .map(|r| r.body_sha256.as_ref().map(|h| &h[..]))
        .collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO rejections (at_ms, source, reason, status, message, body, body_len,
                 remote_addr, body_sha256)
             SELECT at_ms, source, reason, status, message, body, body_len, remote_addr, body_sha256
             FROM UNNEST($1::bigint[], $2::text[], $3::text[], $4::int[], $5::text[],
                 $6::bytea[], $7::bigint[], $8::text[], $9::bytea[])
                 WITH ORDINALITY AS u(at_ms, source, reason, status, message, body, body_len,
                 remote_addr, body_sha256, ord)
             ORDER BY ord",
        )
        .await?;
    tx.execute(
        &statement,
        &[
            &at, &sources, &reasons, &statuses, &messages, &bodies, &lengths, &addresses, &hashes,
        ],
    )
    .await?;
    let prune = tx
        .prepare_cached("DELETE FROM rejections WHERE id <= (SELECT max(id) FROM rejections) - $1")
        .await?;
    tx.execute(&prune, &[&crate::store::REJECTION_LOG_CAPACITY])
        .await?;
    Ok(())
}

fn key_of(event: &NewEvent) -> (&str, &str) {
    (event.source.as_str(), event.dedupe_key.as_str())
}

/// The mirror plan of a batch's new events, and which event each of its items is.
struct MirrorPlan {
    plan: mirror::Plan,
    events: Vec<usize>,
}

impl MirrorPlan {
    async fn make(
        tx: &Transaction<'_>,
        events: &[&NewEvent],
        new: &[usize],
    ) -> Result<MirrorPlan, StoreError> {
        let mut indexes = Vec::new();
        let items: Vec<Item<'_>> = new
            .iter()
            .filter_map(|&i| {
                let event = events[i];
                let data = event.mirror.as_ref()?;
                indexes.push(i);
                Some(Item {
                    source: &event.source,
                    tenant: event.tenant.as_deref(),
                    entity: &event.entity,
                    version_ms: event.version_ms,
                    data,
                })
            })
            .collect();
        let plan = mirror::plan(tx, Tables::LIVE, &items).await?;
        Ok(MirrorPlan {
            plan,
            events: indexes,
        })
    }

    /// The effect of each of `new` (events by index), in its order.
    fn effects(&self, new: &[usize]) -> Vec<Option<&'static str>> {
        let by_event: HashMap<usize, &'static str> = self
            .events
            .iter()
            .zip(self.plan.effects())
            .filter_map(|(&i, effect)| effect.map(|e| (i, e.as_str())))
            .collect();
        new.iter().map(|i| by_event.get(i).copied()).collect()
    }
}

/// Rewrites the mirror effect of events whose plan changed after they were inserted.
async fn correct_effects(
    tx: &Transaction<'_>,
    corrected: &[(i64, Option<&str>)],
) -> Result<(), StoreError> {
    if corrected.is_empty() {
        return Ok(());
    }
    let seqs: Vec<i64> = corrected.iter().map(|c| c.0).collect();
    let effects: Vec<Option<&str>> = corrected.iter().map(|c| c.1).collect();
    tx.execute(
        "UPDATE events SET mirror_effect = u.effect
         FROM UNNEST($1::bigint[], $2::text[]) AS u(seq, effect) WHERE events.seq = u.seq",
        &[&seqs, &effects],
    )
    .await?;
    Ok(())
}

/// Queues one delivery per (new event, matching subscription); returns how many.
async fn enqueue(
    tx: &Transaction<'_>,
    events: &[&NewEvent],
    outcomes: &[AppendOutcome],
    subscriptions: &[Subscription],
) -> Result<u64, StoreError> {
    if subscriptions.is_empty() {
        return Ok(0);
    }
    let mut rows = Vec::new();
    for (event, outcome) in events.iter().zip(outcomes) {
        let AppendOutcome::Stored { seq } = *outcome else {
            continue;
        };
        if event.status == EventStatus::Quarantined {
            continue;
        }
        for subscription in subscriptions {
            if subscription
                .spec
                .matches(&event.event_type, &event.source, event.tenant.as_deref())
            {
                rows.push(NewDelivery {
                    subscription: subscription.id.get(),
                    seq: seq.get(),
                    at_ms: event.received_at_ms,
                    entity_key: ordering::delivery_key(
                        subscription.spec.ordering,
                        &event.source,
                        &event.entity.kind,
                        event.entity.id.as_deref(),
                    ),
                });
            }
        }
    }
    insert_deliveries(tx, &rows).await
}

/// A delivery to queue.
pub struct NewDelivery {
    pub subscription: i64,
    pub seq: i64,
    /// When it was created (and is first due).
    pub at_ms: i64,
    /// Set for an ordered subscription (`deliver::ordering`).
    pub entity_key: Option<String>,
}

/// Inserts pending deliveries, each with a fresh webhook id; existing pairs and
/// subscriptions deleted meanwhile are skipped.
pub async fn insert_deliveries(
    tx: &Transaction<'_>,
    rows: &[NewDelivery],
) -> Result<u64, StoreError> {
    if rows.is_empty() {
        return Ok(0);
    }
    let subscriptions: Vec<i64> = rows.iter().map(|r| r.subscription).collect();
    let seqs: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    let ids: Vec<String> = rows
        .iter()
        .map(|_| crate::store::new_webhook_id())
        .collect();
    let at: Vec<i64> = rows.iter().map(|r| r.at_ms).collect();
    let keys: Vec<Option<&str>> = rows.iter().map(|r| r.entity_key.as_deref()).collect();
    let statement = tx
        .prepare_cached(
            "INSERT INTO deliveries (subscription_id, event_seq, webhook_id, state,
                 next_attempt_at_ms, created_at_ms, entity_key)
             SELECT u.subscription, u.seq, u.webhook_id, 'pending', u.at, u.at, u.entity_key
             FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::bigint[], $5::text[])
                 WITH ORDINALITY AS u(subscription, seq, webhook_id, at, entity_key, ord)
             WHERE EXISTS (SELECT 1 FROM subscriptions s WHERE s.id = u.subscription)
             ORDER BY u.ord
             ON CONFLICT (subscription_id, event_seq) DO NOTHING",
        )
        .await?;
    Ok(tx
        .execute(&statement, &[&subscriptions, &seqs, &ids, &at, &keys])
        .await?)
}
