-- Times are Unix milliseconds (INTEGER) and JSON is TEXT, so the same queries run on PostgreSQL.
CREATE TABLE tenants (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    max_concurrent_calls INTEGER,
    per_number_calls INTEGER NOT NULL DEFAULT 1,
    per_number_window_seconds INTEGER NOT NULL DEFAULT 60,
    created_at INTEGER NOT NULL
);

CREATE TABLE api_keys (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    lookup TEXT NOT NULL UNIQUE,
    secret_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);

CREATE TABLE trunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    name TEXT NOT NULL,
    uri TEXT NOT NULL,
    username TEXT,
    password TEXT,
    max_concurrent_calls INTEGER,
    created_at INTEGER NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE phone_numbers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    number TEXT NOT NULL,
    trunk_id INTEGER NOT NULL REFERENCES trunks(id),
    created_at INTEGER NOT NULL,
    UNIQUE (tenant_id, number)
);

CREATE TABLE agents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    phone_number TEXT,
    config TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    deleted_at INTEGER
);
CREATE INDEX agents_tenant ON agents (tenant_id, id);

-- One row per attempt (a conversation). `id` is `<chain>_<attempt>`.
CREATE TABLE calls (
    id TEXT PRIMARY KEY,
    chain_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    agent_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    immediate INTEGER NOT NULL,
    customer_phone TEXT NOT NULL,
    from_phone TEXT NOT NULL,
    parameters TEXT NOT NULL,
    metadata TEXT,
    retry_context TEXT,
    scheduled_for INTEGER,
    due_at INTEGER NOT NULL,
    trace_id TEXT NOT NULL,
    batch_id INTEGER,
    failure_reason TEXT,
    results TEXT NOT NULL DEFAULT '{}',
    transcript TEXT NOT NULL DEFAULT '[]',
    recording_path TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    answered_at INTEGER,
    trunk_id INTEGER,
    ended_at INTEGER,
    duration_seconds INTEGER,
    lease_owner TEXT,
    lease_until INTEGER,
    UNIQUE (chain_id, attempt)
);
CREATE INDEX calls_tenant_created ON calls (tenant_id, created_at DESC, id DESC);
CREATE INDEX calls_tenant_agent_created ON calls (tenant_id, agent_id, created_at DESC, id DESC);
CREATE INDEX calls_destination ON calls (tenant_id, customer_phone, created_at) WHERE immediate = 1;
CREATE INDEX calls_live ON calls (tenant_id, status) WHERE immediate = 1;
CREATE INDEX calls_due ON calls (due_at) WHERE status IN ('scheduled', 'queued');
CREATE INDEX calls_dialing ON calls (lease_until) WHERE status IN ('initiated', 'ringing', 'in_progress');
CREATE INDEX calls_started ON calls (tenant_id, customer_phone, started_at);

CREATE TABLE call_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    call_id TEXT NOT NULL REFERENCES calls(id),
    tenant_id INTEGER NOT NULL,
    at INTEGER NOT NULL,
    status TEXT NOT NULL,
    detail TEXT
);
CREATE INDEX call_events_call ON call_events (call_id, id);

-- The claim is the primary key: two racing requests cannot both insert it.
CREATE TABLE idempotency_keys (
    tenant_id INTEGER NOT NULL,
    agent_id INTEGER NOT NULL,
    key TEXT NOT NULL,
    trace_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, agent_id, key)
);
