-- SwarmDirector schema, SQLite flavour. Times are epoch milliseconds (INTEGER),
-- JSON is TEXT: the same shapes as the PostgreSQL flavour, so one set of
-- queries serves both.

-- Every task ever accepted. A row exists before the task is acknowledged.
CREATE TABLE tasks (
    id               TEXT PRIMARY KEY,          -- UUIDv7: sorts by creation time
    tenant           TEXT NOT NULL,
    type             TEXT NOT NULL,
    status           TEXT NOT NULL,             -- queued|running|succeeded|failed|timed_out|cancelled
    priority         INTEGER NOT NULL,          -- 0 critical .. 3 low
    department       TEXT NOT NULL,
    agent            TEXT NOT NULL,
    instance         TEXT,
    title            TEXT,
    description      TEXT,
    args             TEXT NOT NULL,
    result           TEXT,
    error            TEXT,
    idempotency_key  TEXT,
    request_hash     TEXT,                      -- tells a replay from a conflicting reuse of a key
    timeout_ms       INTEGER NOT NULL,
    deadline_at      INTEGER NOT NULL,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    attempts         INTEGER NOT NULL DEFAULT 0,
    owner            TEXT,                      -- node holding the task while unfinished
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    timings          TEXT NOT NULL DEFAULT '{}'
);

-- Idempotency: one task per (tenant, key); NULL keys never collide.
CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant, idempotency_key);
-- A tenant's newest-first listing.
CREATE INDEX tasks_tenant_id ON tasks (tenant, id);
-- Recovery scans only unfinished work.
CREATE INDEX tasks_unfinished ON tasks (owner, status) WHERE status IN ('queued', 'running');

-- Live nodes and their heartbeats; a node whose heartbeat is older than the
-- lease loses its unfinished tasks to the others.
CREATE TABLE nodes (
    node_id      TEXT PRIMARY KEY,
    started_at   INTEGER NOT NULL,
    heartbeat_at INTEGER NOT NULL,
    pid          INTEGER NOT NULL,
    version      TEXT NOT NULL
);

-- Mail the email agent stored instead of sending (no SMTP configured).
CREATE TABLE outbox (
    id         TEXT PRIMARY KEY,
    task_id    TEXT NOT NULL,
    tenant     TEXT NOT NULL,
    sender     TEXT NOT NULL,
    recipients TEXT NOT NULL,                   -- JSON array
    cc         TEXT NOT NULL DEFAULT '[]',      -- JSON array
    subject    TEXT NOT NULL,
    body       TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX outbox_tenant_id ON outbox (tenant, id);
