-- 3: signing keys. A subscription signs with HMAC (`v1`) or ed25519 (`v1a`, its
-- `secret` then the `whsk_` key); a rotation keeps the replaced key in
-- `subscription_keys` (sealed like `secret`, canonical `whsec_`/`whsk_` form) until
-- it expires, and records when and by whom. An ed25519 key's public key is kept
-- in plain text beside it, for commands that do not open secrets.
ALTER TABLE subscriptions ADD COLUMN signing TEXT NOT NULL DEFAULT 'hmac';
ALTER TABLE subscriptions ADD COLUMN rotated_at_ms BIGINT;
ALTER TABLE subscriptions ADD COLUMN rotated_by TEXT;
ALTER TABLE subscriptions ADD COLUMN public_key TEXT;
CREATE TABLE subscription_keys (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id BIGINT NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
    secret          TEXT   NOT NULL,
    expires_at_ms   BIGINT NOT NULL,
    public_key      TEXT
);
CREATE INDEX subscription_keys_by_subscription ON subscription_keys (subscription_id);
CREATE INDEX subscription_keys_by_expiry ON subscription_keys (expires_at_ms);
