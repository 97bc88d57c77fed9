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
];

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
