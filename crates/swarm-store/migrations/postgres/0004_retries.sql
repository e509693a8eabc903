-- Task retries (issue 17): the policy resolved at admission (JSON, NULL for
-- one attempt), the earliest time a queued retry may start (epoch ms, its
-- backoff), and every attempt that ended before the current one (JSON
-- array, oldest first).
ALTER TABLE tasks ADD COLUMN retry TEXT;
ALTER TABLE tasks ADD COLUMN run_after BIGINT;
ALTER TABLE tasks ADD COLUMN history TEXT NOT NULL DEFAULT '[]';
