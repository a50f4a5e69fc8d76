-- A batch upload is written in chunks, each its own short transaction, under the internal
-- status 'loading': its calls are neither listed nor dialled until one final statement makes it
-- 'pending'. While loading, every chunk moves this lease forward; a loading batch whose lease has
-- run out belongs to an upload that died (a killed node) and is removed with its calls.
ALTER TABLE batches ADD COLUMN loading_until BIGINT;
