-- The agent's latency on an answered call, as JSON: each turn's voice-to-voice time (caller
-- stopped speaking -> first packet of the reply) and the time from answer to the agent's first
-- word. NULL for calls nobody talked on. A JSON text column like transcript and results, so
-- both backends read it the same way.
ALTER TABLE calls ADD COLUMN latency TEXT;
