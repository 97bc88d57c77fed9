//! Retention and mirror rebuilds.

use super::*;

#[tokio::test]
async fn pruning_deletes_old_events_with_their_deliveries_but_keeps_the_mirror() {
    let Some((_db, store)) = open("prune").await else {
        return;
    };
    store
        .create_subscription(subscription("hooks", &["*"]))
        .await
        .unwrap();
    for n in 0..4u64 {
        let mut e = class_updated(n, 1_000 + n as i64, "A");
        e.received_at_ms = 1_000 * (n as i64 + 1);
        store.append(e).await.unwrap();
    }
    assert_eq!(store.prune_events(3_000).await.unwrap(), 2);
    assert_eq!(store.count_events().await.unwrap(), 2);
    let deliveries = store
        .list_deliveries(DeliveryFilter {
            limit: 10,
            ..DeliveryFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(deliveries.len(), 2);
    assert_eq!(store.list_entities(class_filter()).await.unwrap().len(), 1);
    // A pruned key can be stored again, under a new, larger seq.
    let again = stored(store.append(class_updated(0, 999, "A")).await.unwrap());
    assert!(again > deliveries[0].event_seq);
}

#[tokio::test]
async fn a_rebuild_replays_every_event_into_the_same_mirror() {
    let Some((_db, store)) = open("rebuild").await else {
        return;
    };
    for n in 0..20u64 {
        let e = dreamclass(
            &uuid(n),
            if n % 6 == 5 {
                "CLASS_DELETED"
            } else {
                "CLASS_UPDATED"
            },
            1_000 + (n as i64 * 37) % 11,
            class(n % 4, &format!("v{n}"), "C"),
        );
        store.append(e).await.unwrap();
    }
    let all = EntityFilter {
        include_deleted: true,
        ..class_filter()
    };
    let before = store.list_entities(all.clone()).await.unwrap();
    // Damage the mirror: the rebuild puts it right.
    store
        .client()
        .await
        .unwrap()
        .batch_execute(
            "UPDATE mirror_class SET name = 'wrong'; UPDATE events SET mirror_effect = NULL",
        )
        .await
        .unwrap();
    let report = store
        .rebuild_mirror(crate::store::NoProgress::shared())
        .await
        .unwrap();
    assert_eq!(report.events, 20);
    assert_eq!(report.redescribed, 0);
    let after = store.list_entities(all.clone()).await.unwrap();
    let strip = |v: Vec<crate::store::Entity>| {
        v.into_iter()
            .map(|e| (e.id, e.deleted, e.version_ms, e.event_seq, e.data))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip(after), strip(before));
    assert!(
        store
            .list_events(EventFilter {
                limit: 50,
                ..EventFilter::default()
            })
            .await
            .unwrap()
            .iter()
            .all(|e| e.mirror_effect.is_some())
    );
    // Ingest goes on afterwards (its statements survive the swap).
    store
        .append(class_updated(100, 9_000, "after"))
        .await
        .unwrap();
    let entity = store
        .find_entities(Some(ProviderKind::DreamClass), "class", "7", None, None)
        .await
        .unwrap();
    assert_eq!(entity[0].data["name"], "after");
}

#[tokio::test]
async fn a_rebuild_corrects_descriptions_while_ingest_goes_on() {
    let options = StoreOptions {
        rebuild_chunk: Some(7),
        ..StoreOptions::default()
    };
    let Some((_db, store)) = open_with("rebuild_live", options).await else {
        return;
    };
    for n in 0..40u64 {
        store
            .append(dreamclass(
                &uuid(n),
                "CLASS_UPDATED",
                1_000 + n as i64,
                class(n % 9, &format!("v{n}"), "C"),
            ))
            .await
            .unwrap();
    }
    store
        .client()
        .await
        .unwrap()
        .batch_execute(
            "UPDATE events SET entity_kind = 'wrong' WHERE seq IN (SELECT min(seq) FROM events)",
        )
        .await
        .unwrap();
    let ingest = {
        let store = store.clone();
        tokio::spawn(async move {
            for n in 100..160u64 {
                store
                    .append(dreamclass(
                        &uuid(n),
                        "CLASS_UPDATED",
                        1_000 + n as i64,
                        class(n % 9, &format!("v{n}"), "C"),
                    ))
                    .await
                    .unwrap();
            }
        })
    };
    let report = store
        .rebuild_mirror(crate::store::NoProgress::shared())
        .await
        .unwrap();
    ingest.await.unwrap();
    assert!(report.events >= 40);
    assert_eq!(report.redescribed, 1);
    let first = store
        .list_events(EventFilter {
            limit: 1000,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    assert!(first.iter().all(|e| e.entity_kind == "class"));
    assert_eq!(store.count_events().await.unwrap(), 100);
    // Whatever ran during the rebuild, each entity holds its newest event.
    for entity in store.list_entities(class_filter()).await.unwrap() {
        let history = store
            .entity_history("class", &entity.id, "school", Some("school"), 1)
            .await
            .unwrap();
        assert_eq!(entity.event_seq, history[0].seq, "entity {}", entity.id);
    }
    assert!(matches!(
        tokio::join!(
            store.rebuild_mirror(crate::store::NoProgress::shared()),
            store.rebuild_mirror(crate::store::NoProgress::shared())
        ),
        (Ok(_), Err(StoreError::Conflict(_)))
            | (Err(StoreError::Conflict(_)), Ok(_))
            | (Ok(_), Ok(_))
    ));
}
