-- Webhook targets, the outbox and the delivery log. Times are Unix ms, JSON is TEXT, booleans are
-- 0/1 integers, so the same queries run on PostgreSQL.
CREATE TABLE webhook_targets (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    agent_id INTEGER NOT NULL REFERENCES agents(id),
    name TEXT NOT NULL,
    url TEXT NOT NULL,
    secret TEXT NOT NULL,
    previous_secret TEXT,
    previous_secret_until INTEGER,
    events TEXT NOT NULL,
    include_transcript INTEGER NOT NULL,
    include_recording_url INTEGER NOT NULL,
    active INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (agent_id, name)
);
CREATE INDEX webhook_targets_tenant_agent ON webhook_targets (tenant_id, agent_id, id);

-- One row per event; `payload` is the whole envelope, sent (minus a target's opt-outs) on every
-- attempt to every target.
CREATE TABLE outbox_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL UNIQUE,
    tenant_id INTEGER NOT NULL,
    agent_id INTEGER NOT NULL,
    conversation_id TEXT,
    chain_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at INTEGER NOT NULL
);

-- One row per (event, target). `chain_id` is copied from the event so the lease can keep a
-- chain's order per target without a join. `target_id` has no foreign key: deleting a target
-- keeps its delivery log.
CREATE TABLE webhook_deliveries (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id INTEGER NOT NULL,
    event_id TEXT NOT NULL REFERENCES outbox_events(event_id),
    target_id INTEGER NOT NULL,
    chain_id TEXT NOT NULL,
    conversation_id TEXT,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER,
    lease_owner TEXT,
    lease_until INTEGER,
    last_status INTEGER,
    last_error TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (event_id, target_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_chain ON webhook_deliveries (target_id, chain_id, id) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_tenant ON webhook_deliveries (tenant_id, id DESC);
CREATE INDEX webhook_deliveries_conversation ON webhook_deliveries (tenant_id, conversation_id, id DESC);

CREATE TABLE webhook_attempts (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id INTEGER NOT NULL REFERENCES webhook_deliveries(id),
    at INTEGER NOT NULL,
    http_status INTEGER,
    error TEXT,
    duration_ms INTEGER NOT NULL
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);
