-- The trunk options of issue 18. `max_calls_per_second`: new INVITEs per second (NULL =
-- unpaced). `transport`: 'udp', 'tcp' or 'tls'; a `sips:` trunk was never dialled (the SIP side
-- refused the scheme), so existing ones take 'tls', the transport their URI names. `register`:
-- 0/1, keep a REGISTER binding with the trunk's credentials.
ALTER TABLE trunks ADD COLUMN max_calls_per_second REAL;
ALTER TABLE trunks ADD COLUMN transport TEXT NOT NULL DEFAULT 'udp';
ALTER TABLE trunks ADD COLUMN register INTEGER NOT NULL DEFAULT 0;
UPDATE trunks SET transport = 'tls' WHERE uri LIKE 'sips:%';
-- The trunk's gate: no new INVITE on it before this instant (Unix ms). Its pace moves it an
-- interval past each dial (a token bucket of one token, `domain::pacing`); a 503 with
-- Retry-After moves it to the end of the wait. NULL: never paced nor held. Shared by every node.
ALTER TABLE trunks ADD COLUMN dial_after INTEGER;
-- A due call of a paced or held trunk waits in that trunk's line (`trunk_lane`: the trunk's id),
-- taken from there in due order as the gate opens. The claim of due calls walks only calls in
-- no line (`calls_due` is redefined so), so a long line never slows other trunks' calls.
ALTER TABLE calls ADD COLUMN trunk_lane INTEGER;
DROP INDEX calls_due;
CREATE INDEX calls_due ON calls (due_at) WHERE status IN ('scheduled', 'queued') AND trunk_lane IS NULL;
CREATE INDEX calls_trunk_lane ON calls (trunk_lane, due_at) WHERE status IN ('scheduled', 'queued') AND trunk_lane IS NOT NULL;
-- Putting a trunk's due calls in its line finds them by the number they are called from.
CREATE INDEX calls_waiting_from ON calls (tenant_id, from_phone, due_at) WHERE status IN ('scheduled', 'queued') AND trunk_lane IS NULL;
