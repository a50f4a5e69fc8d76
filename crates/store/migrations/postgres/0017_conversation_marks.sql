-- Deep pages of GET /v1/conversations (crates/store/src/pages.rs): every so many listed
-- conversations of a tenant (agent_id 0) or of one agent, counted from the oldest, the key
-- (created_at, call_id) of the one at `position`. Written by a background pass, never by
-- POST /v1/call; a batch becoming listed drops the marks from its start on.
CREATE TABLE conversation_marks (
    tenant_id BIGINT NOT NULL,
    agent_id BIGINT NOT NULL,
    position BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    call_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, agent_id, position)
);
CREATE INDEX conversation_marks_created ON conversation_marks (tenant_id, created_at);
