-- Three indexes began with the tenant and the callee's number: `calls_destination` (the API's
-- per-number window), `calls_started` (the dialler's) and `calls_waiting_number` (a listing
-- cancels the number's waiting calls). Callees' numbers come in no order, so each new call took
-- a random page in each of them, and each dial moved its entry in two; with 1,000,000 calls of
-- scattered numbers in the table that was most of what an upload and a call cost SQLite's writer
-- (PostgreSQL keeps the same indexes, so that both stores answer the same queries the same way).
-- One index serves all three: the calls to one number of one tenant are few, and each query
-- reads those few rows for what it needs (immediate, started_at, status). Its key never changes
-- after the insert, so a dial or a settlement no longer touches it.
DROP INDEX calls_destination;
DROP INDEX calls_started;
DROP INDEX calls_waiting_number;
CREATE INDEX calls_number ON calls (tenant_id, customer_phone, created_at);
