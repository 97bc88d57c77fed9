//! Schema migrations, run at open. Each entry moves `PRAGMA user_version` up by one;
//! existing entries never change once released.

use rusqlite::Connection;

use crate::store::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: the event log, its dedupe key, and the rejection log.
    "
    CREATE TABLE events (
        seq             INTEGER PRIMARY KEY,
        source          TEXT    NOT NULL,
        provider        TEXT    NOT NULL,
        dedupe_key      TEXT    NOT NULL,
        event_id        TEXT,
        tenant          TEXT,
        event_type      TEXT    NOT NULL,
        entity_kind     TEXT    NOT NULL,
        entity_id       TEXT,
        entity_op       TEXT    NOT NULL,
        version_ms      INTEGER NOT NULL,
        received_at_ms  INTEGER NOT NULL,
        status          TEXT    NOT NULL,
        status_reason   TEXT,
        body_sha256     BLOB    NOT NULL,
        body            BLOB    NOT NULL,
        headers         TEXT    NOT NULL,
        times_seen      INTEGER NOT NULL DEFAULT 1,
        last_seen_at_ms INTEGER NOT NULL,
        conflicts       INTEGER NOT NULL DEFAULT 0
    );
    CREATE UNIQUE INDEX events_dedupe ON events (source, dedupe_key);

    CREATE TABLE rejections (
        id          INTEGER PRIMARY KEY,
        at_ms       INTEGER NOT NULL,
        source      TEXT,
        reason      TEXT    NOT NULL,
        status      INTEGER NOT NULL,
        message     TEXT    NOT NULL,
        body        BLOB    NOT NULL,
        body_len    INTEGER NOT NULL,
        remote_addr TEXT
    );
    ",
    // 2: the mirror (typed tables per documented kind, a generic one for the rest),
    // what each event did to it, and the indexes the API's filters use. Filter
    // indexes are single-column so that rows of one value come in rowid order and a
    // page (ORDER BY rowid LIMIT n) stops early.
    "
    ALTER TABLE events ADD COLUMN mirror_effect TEXT;
    CREATE INDEX events_entity ON events (entity_kind, entity_id);
    CREATE INDEX events_type ON events (event_type, seq);
    CREATE INDEX events_source ON events (source, seq);
    -- Most events are ok: only the others are indexed (see `list_events`).
    CREATE INDEX events_status ON events (status, seq) WHERE status <> 'ok';

    CREATE TABLE mirror_class (
        source TEXT NOT NULL, tenant TEXT NOT NULL, id INTEGER NOT NULL,
        code TEXT, name TEXT, start_date TEXT, end_date TEXT, capacity INTEGER,
        description TEXT,
        deleted INTEGER NOT NULL, version_ms INTEGER NOT NULL, event_seq INTEGER NOT NULL,
        UNIQUE (id, source, tenant)
    );
    CREATE TABLE mirror_student_period (
        source TEXT NOT NULL, tenant TEXT NOT NULL, id INTEGER NOT NULL,
        active INTEGER, added_at TEXT, student_id INTEGER,
        deleted INTEGER NOT NULL, version_ms INTEGER NOT NULL, event_seq INTEGER NOT NULL,
        UNIQUE (id, source, tenant)
    );
    CREATE INDEX mirror_class_code ON mirror_class (code);
    CREATE INDEX mirror_student_period_student ON mirror_student_period (student_id);
    CREATE TABLE mirror_attendance (
        source TEXT NOT NULL, tenant TEXT NOT NULL, id INTEGER NOT NULL,
        date TEXT, attendance_type TEXT, class_id INTEGER, course_id INTEGER,
        status_id INTEGER, student_period_id INTEGER, comment TEXT,
        deleted INTEGER NOT NULL, version_ms INTEGER NOT NULL, event_seq INTEGER NOT NULL,
        UNIQUE (id, source, tenant)
    );
    CREATE INDEX mirror_attendance_class ON mirror_attendance (class_id);
    CREATE INDEX mirror_attendance_date ON mirror_attendance (date);
    CREATE INDEX mirror_attendance_student_period ON mirror_attendance (student_period_id);
    CREATE TABLE mirror_course (
        source TEXT NOT NULL, tenant TEXT NOT NULL, id TEXT NOT NULL,
        name TEXT, description TEXT, state TEXT, course_type TEXT, slug TEXT,
        created_at TEXT, updated_at TEXT,
        deleted INTEGER NOT NULL, version_ms INTEGER NOT NULL, event_seq INTEGER NOT NULL,
        UNIQUE (id, source, tenant)
    );
    CREATE TABLE mirror_course_plan (
        source TEXT NOT NULL, tenant TEXT NOT NULL, course_id TEXT NOT NULL,
        position INTEGER NOT NULL,
        plan_id TEXT, name TEXT, description TEXT, currency TEXT, amount INTEGER,
        created_at TEXT, updated_at TEXT,
        PRIMARY KEY (source, tenant, course_id, position)
    ) WITHOUT ROWID;
    CREATE TABLE mirror_enrollment (
        source TEXT NOT NULL, tenant TEXT NOT NULL, id TEXT NOT NULL,
        course_id TEXT, course_name TEXT, course_slug TEXT, course_subtitle TEXT,
        user_id TEXT, user_name TEXT, user_email TEXT, user_phone_number TEXT,
        state TEXT, created_at TEXT, updated_at TEXT,
        deleted INTEGER NOT NULL, version_ms INTEGER NOT NULL, event_seq INTEGER NOT NULL,
        UNIQUE (id, source, tenant)
    );
    CREATE INDEX mirror_course_slug ON mirror_course (slug);
    CREATE INDEX mirror_enrollment_course ON mirror_enrollment (course_id);
    CREATE INDEX mirror_enrollment_user ON mirror_enrollment (user_id);
    CREATE INDEX mirror_enrollment_user_email ON mirror_enrollment (user_email);
    CREATE TABLE mirror_generic (
        source TEXT NOT NULL, tenant TEXT NOT NULL, kind TEXT NOT NULL, id TEXT NOT NULL,
        data TEXT,
        deleted INTEGER NOT NULL, version_ms INTEGER NOT NULL, event_seq INTEGER NOT NULL,
        UNIQUE (kind, id, source, tenant)
    );
    ",
    // 3: delivery: subscriptions, the outbox of deliveries, and every attempt.
    "
    CREATE TABLE subscriptions (
        id                   INTEGER PRIMARY KEY,
        name                 TEXT    NOT NULL UNIQUE,
        url                  TEXT    NOT NULL,
        events               TEXT    NOT NULL,
        sources              TEXT,
        tenants              TEXT,
        basic_username       TEXT,
        basic_password       TEXT,
        secret               TEXT,
        secret_encoding      TEXT    NOT NULL,
        timeout_ms           INTEGER NOT NULL,
        retry_schedule_ms    TEXT    NOT NULL,
        max_in_flight        INTEGER NOT NULL,
        managed_by           TEXT    NOT NULL,
        paused               INTEGER NOT NULL DEFAULT 0,
        paused_reason        TEXT,
        consecutive_failures INTEGER NOT NULL DEFAULT 0,
        hold_until_ms        INTEGER NOT NULL DEFAULT 0
    );
    CREATE TABLE deliveries (
        id                 INTEGER PRIMARY KEY,
        subscription_id    INTEGER NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
        event_seq          INTEGER NOT NULL,
        webhook_id         TEXT    NOT NULL,
        state              TEXT    NOT NULL,
        attempts           INTEGER NOT NULL DEFAULT 0,
        next_attempt_at_ms INTEGER NOT NULL,
        lease_until_ms     INTEGER NOT NULL DEFAULT 0,
        created_at_ms      INTEGER NOT NULL,
        delivered_at_ms    INTEGER,
        last_error         TEXT,
        UNIQUE (subscription_id, event_seq)
    );
    CREATE INDEX deliveries_due ON deliveries (subscription_id, next_attempt_at_ms)
        WHERE state = 'pending';
    CREATE INDEX deliveries_state ON deliveries (state, id);
    CREATE TABLE attempts (
        id            INTEGER PRIMARY KEY,
        delivery_id   INTEGER NOT NULL REFERENCES deliveries (id) ON DELETE CASCADE,
        at_ms         INTEGER NOT NULL,
        duration_ms   INTEGER NOT NULL,
        status_code   INTEGER,
        error         TEXT,
        response      TEXT
    );
    CREATE INDEX attempts_delivery ON attempts (delivery_id);
    ",
    // 4: dedupe keys leave the event log's unique index for a table that the writer
    // fills in key order (see `dedupe`); keys after `settled_through` live in the
    // writer's memory, rebuilt from the event log at start.
    "
    CREATE TABLE dedupe_keys (
        source     TEXT    NOT NULL,
        dedupe_key TEXT    NOT NULL,
        seq        INTEGER NOT NULL,
        PRIMARY KEY (source, dedupe_key)
    ) WITHOUT ROWID;
    INSERT INTO dedupe_keys (source, dedupe_key, seq)
        SELECT source, dedupe_key, seq FROM events ORDER BY source, dedupe_key;
    -- One row: keys of events up to `dedupe_settled_through` are in `dedupe_keys`;
    -- retention has deleted events up to `pruned_through` (new seqs stay above it).
    CREATE TABLE event_log_state (
        dedupe_settled_through INTEGER NOT NULL,
        pruned_through         INTEGER NOT NULL
    );
    INSERT INTO event_log_state (dedupe_settled_through, pruned_through)
        SELECT coalesce(max(seq), 0), 0 FROM events;
    DROP INDEX events_dedupe;
    ",
    // 5: `attempts` counts every attempt (the attempt log's length, also across
    // replays); the retry schedule's place moves to `round_attempts`, which a replay
    // resets. Leases get a token so that only the holder's record counts.
    "
    ALTER TABLE deliveries ADD COLUMN round_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN lease_token INTEGER NOT NULL DEFAULT 0;
    UPDATE deliveries SET round_attempts = attempts,
        attempts = (SELECT count(*) FROM attempts a WHERE a.delivery_id = deliveries.id);
    ",
    // 6: typed tables for Loopwise payments (payment.paid, payment.refund) and users
    // (user.created). Amount columns have no declared type, so that SQLite keeps each
    // number as given (an INTEGER stays integer, a REAL stays real; a NUMERIC or REAL
    // column would convert). `lineitems` is JSON text. Loopwise payments and users
    // already in `mirror_generic` move here with `classhook mirror rebuild`.
    "
    CREATE TABLE mirror_payment (
        source TEXT NOT NULL, tenant TEXT NOT NULL, id TEXT NOT NULL,
        trade_no TEXT, currency TEXT, amount, original_amount, refunded_amount,
        paid_at TEXT, created_at TEXT, refunded_at TEXT, payment_state TEXT,
        payment_type TEXT, affiliate_code TEXT, remark TEXT,
        user_id TEXT, user_email TEXT, user_name TEXT, user_phone_number TEXT,
        user_third_party_id TEXT, payment_method_last_four TEXT, payment_method_brand TEXT,
        lineitems TEXT,
        deleted INTEGER NOT NULL, version_ms INTEGER NOT NULL, event_seq INTEGER NOT NULL,
        UNIQUE (id, source, tenant)
    );
    CREATE INDEX mirror_payment_trade_no ON mirror_payment (trade_no);
    CREATE INDEX mirror_payment_state ON mirror_payment (payment_state);
    CREATE INDEX mirror_payment_user ON mirror_payment (user_id);
    CREATE INDEX mirror_payment_user_email ON mirror_payment (user_email);
    CREATE TABLE mirror_user (
        source TEXT NOT NULL, tenant TEXT NOT NULL, id TEXT NOT NULL,
        email TEXT, name TEXT, phone_number TEXT, third_party_id TEXT,
        created_at TEXT, updated_at TEXT,
        deleted INTEGER NOT NULL, version_ms INTEGER NOT NULL, event_seq INTEGER NOT NULL,
        UNIQUE (id, source, tenant)
    );
    CREATE INDEX mirror_user_email ON mirror_user (email);
    ",
    // 7: the rejection log keeps a bounded prefix of every body plus the SHA-256 of the
    // whole body (conflicts used to keep whole bodies: cut them to the prefix).
    "
    ALTER TABLE rejections ADD COLUMN body_sha256 BLOB;
    UPDATE rejections SET body = substr(body, 1, 2048) WHERE length(body) > 2048;
    ",
    // 8: one row that readiness probes write, so that ready means a write reached
    // the disk.
    "
    CREATE TABLE readiness (
        id           INTEGER PRIMARY KEY CHECK (id = 1),
        probed_at_ms INTEGER NOT NULL
    );
    ",
    // 9: a subscription's event patterns are kept sorted (by bytes) without repeats,
    // which matching relies on to search them instead of scanning them all.
    "
    UPDATE subscriptions SET events = (
        SELECT json_group_array(value ORDER BY value)
        FROM (SELECT DISTINCT value FROM json_each(subscriptions.events))
    );
    ",
    // 10: signing keys. A subscription signs with HMAC (`v1`) or ed25519 (`v1a`, its
    // `secret` then the `whsk_` key); a rotation keeps the replaced key in
    // `subscription_keys` (sealed like `secret`, canonical `whsec_`/`whsk_` form)
    // until it expires, and records when and by whom. An ed25519 key's public key
    // is kept in plain text beside it, for commands that do not open secrets.
    "
    ALTER TABLE subscriptions ADD COLUMN signing TEXT NOT NULL DEFAULT 'hmac';
    ALTER TABLE subscriptions ADD COLUMN rotated_at_ms INTEGER;
    ALTER TABLE subscriptions ADD COLUMN rotated_by TEXT;
    ALTER TABLE subscriptions ADD COLUMN public_key TEXT;
    CREATE TABLE subscription_keys (
        id              INTEGER PRIMARY KEY,
        subscription_id INTEGER NOT NULL REFERENCES subscriptions (id) ON DELETE CASCADE,
        secret          TEXT    NOT NULL,
        expires_at_ms   INTEGER NOT NULL,
        public_key      TEXT
    );
    CREATE INDEX subscription_keys_by_subscription ON subscription_keys (subscription_id);
    CREATE INDEX subscription_keys_by_expiry ON subscription_keys (expires_at_ms);
    ",
    // 11: the W3C traceparent of the span that received the event (tracing on), so
    // that its delivery attempts continue that trace, later or on another instance.
    "
    ALTER TABLE events ADD COLUMN trace_parent TEXT;
    ",
    // 12: order per entity. A subscription's `ordering`; the deliveries of an
    // ordered one carry their event's entity key (`deliver::ordering::entity_key`),
    // and the pending ones are indexed by it, so that a claim finds whether an
    // earlier delivery of the same entity is still pending. Unordered deliveries
    // carry no key and stay out of the index.
    "
    ALTER TABLE subscriptions ADD COLUMN ordering TEXT NOT NULL DEFAULT 'none';
    ALTER TABLE deliveries ADD COLUMN entity_key TEXT;
    CREATE INDEX deliveries_entity_order ON deliveries (subscription_id, entity_key, event_seq)
        WHERE state = 'pending' AND entity_key IS NOT NULL;
    ",
    // 13: a subscription's rate limit in its canonical form (`20/s`, `600/min`,
    // `5/h`); NULL: none.
    "
    ALTER TABLE subscriptions ADD COLUMN rate_limit TEXT;
    ",
];

/// The schema version this binary brings a database to.
pub fn known_version() -> i64 {
    MIGRATIONS.len() as i64
}

/// Brings the database up to the newest schema, in one transaction per step.
pub fn run(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.query_row("PRAGMA user_version", [], |row| row.get(0))?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", index as i64 + 1)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_4_moves_existing_dedupe_keys_out_of_the_event_log_index() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        for (seq, key) in [(1, "id:a"), (7, "id:b")] {
            conn.execute(
                "INSERT INTO events (seq, source, provider, dedupe_key, event_type, entity_kind,
                     entity_op, version_ms, received_at_ms, status, body_sha256, body, headers,
                     last_seen_at_ms)
                 VALUES (?1, 's', 'dreamclass', ?2, 'X', 'x', 'updated', 0, 0, 'ok', x'', x'',
                     '[]', 0)",
                rusqlite::params![seq, key],
            )
            .unwrap();
        }
        run(&mut conn).unwrap();
        let keys: Vec<(String, i64)> = conn
            .prepare("SELECT dedupe_key, seq FROM dedupe_keys ORDER BY seq")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(keys, [("id:a".to_string(), 1), ("id:b".to_string(), 7)]);
        let watermark: i64 = conn
            .query_row(
                "SELECT dedupe_settled_through FROM event_log_state",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(watermark, 7, "every migrated key is settled");
    }

    #[test]
    fn step_9_sorts_event_patterns() {
        let mut conn = Connection::open_in_memory().unwrap();
        for sql in &MIGRATIONS[..6] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 6).unwrap();
        conn.execute(
            "INSERT INTO subscriptions (name, url, events, secret_encoding, timeout_ms,
                 retry_schedule_ms, max_in_flight, managed_by)
             VALUES ('s', 'https://x.example', ?1, 'utf8', 1000, '[]', 1, 'api')",
            [r#"["payment.*","CLASS_*","course.updated","CLASS_*","Ä*","*"]"#],
        )
        .unwrap();
        run(&mut conn).unwrap();
        let events: String = conn
            .query_row("SELECT events FROM subscriptions", [], |r| r.get(0))
            .unwrap();
        let events: Vec<String> = serde_json::from_str(&events).unwrap();
        let mut expected: Vec<String> = ["payment.*", "CLASS_*", "course.updated", "Ä*", "*"]
            .map(String::from)
            .to_vec();
        expected.sort();
        assert_eq!(events, expected);
    }
}
