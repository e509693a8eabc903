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

-- Shared work: an idle node claims another node's queued tasks of one
-- department, most urgent first, oldest first within a priority.
CREATE INDEX tasks_claimable ON tasks (department, priority, id) WHERE status = 'queued';

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
