-- A cluster on one database (issue 14).

-- What other nodes and `GET /api/nodes` see of a node: where it listens,
-- its per-department load (JSON, renewed with each heartbeat), and the key
-- of the session-level advisory lock it holds while its process lives.
-- PostgreSQL releases that lock the moment the node's connection dies, so
-- a node killed with SIGKILL is seen dead in well under a second instead of
-- after the heartbeat lease.
ALTER TABLE nodes ADD COLUMN address TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN load TEXT NOT NULL DEFAULT '{}';
ALTER TABLE nodes ADD COLUMN lock_key BIGSERIAL;
-- Its outstanding (queued + running) tasks per tenant, renewed every few
-- hundred milliseconds while other nodes are alive, so tenant quotas count
-- the whole cluster.
ALTER TABLE nodes ADD COLUMN tenants TEXT NOT NULL DEFAULT '{}';

-- The nodes that started each attempt, comma-separated, oldest first.
ALTER TABLE tasks ADD COLUMN nodes TEXT NOT NULL DEFAULT '';

-- Indexes that cost less per task (measured in BENCHMARKS.md, issue 14):
-- every start and finish of a task rewrites its row, and each index that
-- covers the new version gets an entry.
-- - Idempotency keys are optional: rows without one need no entry.
DROP INDEX tasks_idempotency;
CREATE UNIQUE INDEX tasks_idempotency ON tasks (tenant, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- - Unfinished work is exactly the rows with an owner (an ending clears
--   it). Predicates that do not name `status` leave a start (which changes
--   only `status` among indexed columns) free to be a HOT update, written
--   in place with no index entry at all, given room on the page.
DROP INDEX tasks_unfinished;
CREATE INDEX tasks_owned ON tasks (owner) WHERE owner IS NOT NULL;
-- - Shared work: an idle node claims another node's queued tasks of one
--   department, most urgent first, newest first within a priority (the
--   owner starts its oldest; see swarm-store/src/cluster.rs). The index is
--   in exactly that order, so a claim reads only the rows it takes (and the
--   running ones it skips, a department's few hundred at most); in any
--   other order PostgreSQL sorted the whole backlog for every claim.
CREATE INDEX tasks_claimable ON tasks (department, priority, id DESC) WHERE owner IS NOT NULL;
-- - Room on each page for those in-place updates.
ALTER TABLE tasks SET (fillfactor = 80);

-- Cluster-wide limits (`[pools.NAME.limit] scope = "cluster"`): the part of
-- a department's limit each node holds. A node renews its row every few
-- hundred milliseconds under a per-department transaction lock, taking only
-- what the others leave free, so the parts never add up to more than the
-- limit; a row not renewed within the permit lease is free again.
CREATE TABLE cluster_permits (
    department TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    held       BIGINT NOT NULL,
    demand     BIGINT NOT NULL,
    renewed_at BIGINT NOT NULL,
    PRIMARY KEY (department, node_id)
);
