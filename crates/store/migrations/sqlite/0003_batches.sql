-- Batch calls. The counters live in the row, moved in the same transaction as the call whose
-- state changes, so reading a batch's metrics is one primary-key lookup however many
-- recipients it has. Times are Unix ms, so the same queries run on PostgreSQL.
CREATE TABLE batches (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    agent_id INTEGER NOT NULL,
    name TEXT NOT NULL,
    status TEXT NOT NULL,
    total_recipients INTEGER NOT NULL,
    pending_count INTEGER NOT NULL,
    in_progress_count INTEGER NOT NULL DEFAULT 0,
    pending_retry_count INTEGER NOT NULL DEFAULT 0,
    completed_count INTEGER NOT NULL DEFAULT 0,
    busy_count INTEGER NOT NULL DEFAULT 0,
    no_answer_count INTEGER NOT NULL DEFAULT 0,
    failed_count INTEGER NOT NULL DEFAULT 0,
    socket_failure_count INTEGER NOT NULL DEFAULT 0,
    unreachable_count INTEGER NOT NULL DEFAULT 0,
    canceled_count INTEGER NOT NULL DEFAULT 0,
    completed_duration_seconds INTEGER NOT NULL DEFAULT 0,
    scheduled_for INTEGER,
    started_at INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE INDEX batches_tenant_created ON batches (tenant_id, created_at DESC, id DESC);
CREATE INDEX batches_tenant_agent_created ON batches (tenant_id, agent_id, created_at DESC, id DESC);
-- Cancelling a batch settles its waiting calls in one statement.
CREATE INDEX calls_batch ON calls (batch_id, status) WHERE batch_id IS NOT NULL;
