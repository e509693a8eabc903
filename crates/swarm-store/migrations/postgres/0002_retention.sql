-- Retention deletes finished tasks (and outbox messages) oldest first, in
-- small batches; these indexes find each batch without scanning the table.
CREATE INDEX tasks_finished ON tasks (finished_at) WHERE finished_at IS NOT NULL;
CREATE INDEX outbox_created ON outbox (created_at);

-- Cross-node cancel requests are polled every heartbeat. An index of the
-- flagged rows alone keeps that poll small however many tasks a node holds,
-- even while another session's open transaction keeps vacuum from removing
-- the dead entries of the wider unfinished-task index.
CREATE INDEX tasks_cancel_requested ON tasks (owner) WHERE cancel_requested = TRUE;

-- The writer's probe of a database it found down writes a row here and
-- deletes it again: a real write, so a full disk or a read-only file keeps
-- the database "down" until writes commit again.
CREATE TABLE writer_probe (
    id BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL
);
