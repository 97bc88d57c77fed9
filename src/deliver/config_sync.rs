//! Bringing the config file's subscriptions into the store at start. Several
//! instances share one database: when they start with the same file nothing is
//! written; when this instance's file differs from what another instance's file
//! put there, this file applies and the log says which subscription and which
//! fields changed, so that an instance started with an out-of-date file does not
//! undo a newer one's change unnoticed.

use std::collections::HashMap;

use super::signing;
use super::subscription::{ManagedBy, Subscription, SubscriptionSpec};
use crate::store::{Store, StoreError};

/// Syncs `specs` (the config file's subscriptions) into `store`, by name.
pub async fn sync_config_subscriptions(
    store: &Store,
    specs: Vec<SubscriptionSpec>,
) -> Result<(), StoreError> {
    let stored = store.list_subscriptions().await?;
    let stored: HashMap<&str, &Subscription> =
        stored.iter().map(|s| (s.spec.name.as_str(), s)).collect();
    let mut changes = 0;
    for spec in &specs {
        match stored.get(spec.name.as_str()) {
            None => {
                tracing::info!(
                    subscription = spec.name,
                    "subscription created from the config file"
                );
                changes += 1;
            }
            Some(current) if current.managed_by == ManagedBy::Config => {
                // An ed25519 key pair classhook generated is not in the file.
                let mut declared = spec.clone();
                signing::keep_generated_key(Some(current), &mut declared);
                let fields = current.spec.differences(&declared);
                if !fields.is_empty() {
                    tracing::warn!(
                        subscription = spec.name,
                        fields = fields.join(", "),
                        "the database held this config subscription with other values (an instance with another config file set them); this instance's config file now applies: give every instance the same file"
                    );
                    changes += 1;
                }
            }
            // The store refuses it with a message saying so.
            Some(_) => changes += 1,
        }
    }
    for (name, current) in &stored {
        if current.managed_by == ManagedBy::Config && !specs.iter().any(|s| s.name == *name) {
            tracing::warn!(
                subscription = name,
                "subscription removed with its deliveries: it is no longer in this instance's config file (if another instance's file still has it, give every instance the same file)"
            );
            changes += 1;
        }
    }
    if changes == 0 {
        return Ok(());
    }
    store.sync_config_subscriptions(specs).await
}
