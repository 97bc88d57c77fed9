-- 7: a subscription's rate limit in its canonical form (`20/s`, `600/min`, `5/h`);
-- NULL: none.
ALTER TABLE subscriptions ADD COLUMN rate_limit TEXT;
