-- Completion webhooks (issue 17). A task with a callback records its
-- delivery on its own row, so the outcome and the duty to deliver it are
-- one write: `callback_state` becomes 'pending' with the finish (in the
-- same statement), then 'delivered' or 'failed'. `callback_next_at` is
-- when the next try is due (epoch ms), and a lease while one is in flight.
ALTER TABLE tasks ADD COLUMN callback_url TEXT;
ALTER TABLE tasks ADD COLUMN callback_state TEXT;
ALTER TABLE tasks ADD COLUMN callback_attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE tasks ADD COLUMN callback_next_at BIGINT;
CREATE INDEX tasks_callbacks_due ON tasks (callback_next_at) WHERE callback_state = 'pending';

-- Every try of a delivery, for GET /api/tasks/{id}/deliveries.
CREATE TABLE deliveries (
    id          TEXT PRIMARY KEY,
    task_id     TEXT NOT NULL,
    message_id  TEXT NOT NULL,          -- webhook-id: the same for every try of one message
    attempt     BIGINT NOT NULL,
    url         TEXT NOT NULL,
    node        TEXT NOT NULL,
    at          BIGINT NOT NULL,
    duration_ms DOUBLE PRECISION NOT NULL,
    status      BIGINT,                 -- the receiver's HTTP status, if it answered
    error       TEXT                    -- why the try failed, if it did
);
CREATE INDEX deliveries_task ON deliveries (task_id, at);
