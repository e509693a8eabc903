-- A cluster on one database (issue 14). SQLite has one node per file; the
-- columns exist so both schemas have the same shape.
ALTER TABLE nodes ADD COLUMN address TEXT NOT NULL DEFAULT '';
ALTER TABLE nodes ADD COLUMN load TEXT NOT NULL DEFAULT '{}';
ALTER TABLE nodes ADD COLUMN lock_key INTEGER NOT NULL DEFAULT 0;
ALTER TABLE nodes ADD COLUMN tenants TEXT NOT NULL DEFAULT '{}';

-- The nodes that started each attempt, comma-separated, oldest first.
ALTER TABLE tasks ADD COLUMN nodes TEXT NOT NULL DEFAULT '';

-- Cluster-wide limits are leased on PostgreSQL only; the table keeps the
-- schemas alike.
CREATE TABLE cluster_permits (
    department TEXT NOT NULL,
    node_id    TEXT NOT NULL,
    held       INTEGER NOT NULL,
    demand     INTEGER NOT NULL,
    renewed_at INTEGER NOT NULL,
    PRIMARY KEY (department, node_id)
);
