-- Periodic tasks (issue 17): the last tick each schedule submitted, for
-- `GET /api/schedules` and for catching up after downtime. Exactly-once
-- per tick does not rest on this table: each tick's task carries the
-- idempotency key `schedule:<name>:<tick ms>`, and the unique index of
-- keys lets one node's insert win.
CREATE TABLE schedules (
    name       TEXT PRIMARY KEY,
    last_tick  INTEGER NOT NULL,
    last_task  TEXT,
    updated_at INTEGER NOT NULL
);
