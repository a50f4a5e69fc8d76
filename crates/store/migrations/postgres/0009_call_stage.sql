-- The stage a conversation was in when it ended, for the next attempt's `retry_context`.
ALTER TABLE calls ADD COLUMN stage_id TEXT;
