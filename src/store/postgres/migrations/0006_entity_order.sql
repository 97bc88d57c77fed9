-- 6: order per entity. A subscription's `ordering`; the deliveries of an ordered one
-- carry their event's entity key (`deliver::ordering::entity_key`), and the pending
-- ones are indexed by it, so that a claim finds whether an earlier delivery of the
-- same entity is still pending. Unordered deliveries carry no key and stay out of
-- the index.
ALTER TABLE subscriptions ADD COLUMN ordering TEXT NOT NULL DEFAULT 'none';
ALTER TABLE deliveries ADD COLUMN entity_key TEXT COLLATE "C";
CREATE INDEX deliveries_entity_order ON deliveries (subscription_id, entity_key, event_seq)
    WHERE state = 'pending' AND entity_key IS NOT NULL;
