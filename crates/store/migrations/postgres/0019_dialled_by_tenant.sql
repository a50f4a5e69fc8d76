-- A tenant with `max_concurrent_calls` has its dialled calls counted before each of its dials.
-- The same index as SQLite's 0019, where without it the count walked every call the tenant ever
-- had (33 dials a second instead of 1,000 with 200,000 calls waiting): it holds only the calls
-- being dialled, so the count costs what the tenant has live.
CREATE INDEX calls_dialled_tenant ON calls (tenant_id) WHERE status IN ('initiated', 'ringing', 'in_progress');
