-- A tenant's do-not-call list. Numbers are E.164, so every spelling of a number is one row, and
-- the primary key makes adding a listed number again a no-op.
CREATE TABLE do_not_call (
    tenant_id BIGINT NOT NULL REFERENCES tenants(id),
    number TEXT NOT NULL,
    reason TEXT,
    source TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, number)
);
CREATE INDEX do_not_call_tenant_created ON do_not_call (tenant_id, created_at DESC, number);
-- Listing a number cancels the calls still waiting for it.
CREATE INDEX calls_waiting_number ON calls (tenant_id, customer_phone)
    WHERE status IN ('scheduled', 'queued');
