-- 2: `classhook db copy` remembers the SQLite store it is copying in (and when it
-- finished), so that an interrupted copy can go on and no gateway starts on a
-- half-copied database.
CREATE TABLE db_copy (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    source         TEXT    NOT NULL,
    started_at_ms  BIGINT  NOT NULL,
    finished_at_ms BIGINT
);
