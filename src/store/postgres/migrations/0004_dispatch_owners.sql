-- 4: several instances share the delivery work by subscription. Each instance says
-- it is alive in `instances`; each subscription is dispatched by one instance at a
-- time, its owner in `dispatch_owners` until `until_ms`, so that a subscription's
-- limits (max_in_flight, holds) hold for the cluster as they do for one process.
CREATE TABLE instances (
    id         BIGINT PRIMARY KEY,
    name       TEXT   NOT NULL,
    seen_at_ms BIGINT NOT NULL
);

CREATE TABLE dispatch_owners (
    subscription_id BIGINT PRIMARY KEY REFERENCES subscriptions (id) ON DELETE CASCADE,
    instance_id     BIGINT NOT NULL,
    until_ms        BIGINT NOT NULL
);
