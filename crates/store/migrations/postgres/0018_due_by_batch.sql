-- The dispatcher walked `calls_due` in due order and skipped, call by call, those of batches
-- still uploading or paused: a 1,000,000-row upload made every claim and every look for the
-- next due time walk up to a million entries while it held the writer (40 ms a claim on
-- average during the upload). Waiting calls are now indexed apart by whether they belong to a
-- batch, and a batch's calls by batch first, so the claim walks the calls of no batch and each
-- running batch's calls in due order, and never looks at a batch that is not running.
DROP INDEX calls_due;
CREATE INDEX calls_due_direct ON calls (due_at) WHERE status IN ('scheduled', 'queued') AND trunk_lane IS NULL AND batch_id IS NULL;
CREATE INDEX calls_due_batch ON calls (batch_id, due_at) WHERE status IN ('scheduled', 'queued') AND trunk_lane IS NULL AND batch_id IS NOT NULL;
