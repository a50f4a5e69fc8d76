-- Transcription jobs (POST /v1/transcription/jobs). A job is leased as a call is: the worker
-- holding it writes a fresh `lease` id and moves `lease_until` forward while it works; a job in
-- 'processing' whose lease ran out belongs to a worker that died and is taken up again.
-- `attempts` counts the times it was taken up (a claim is a compare-and-set on it). Booleans
-- are 0/1 integers, utterances JSON text, times Unix ms.
CREATE TABLE transcription_jobs (
    id TEXT PRIMARY KEY,
    tenant_id BIGINT NOT NULL REFERENCES tenants(id),
    engine TEXT NOT NULL,
    status TEXT NOT NULL,
    languages TEXT NOT NULL,
    diarize BIGINT NOT NULL,
    format TEXT NOT NULL,
    audio_format TEXT NOT NULL,
    audio_bytes BIGINT NOT NULL,
    text TEXT,
    language TEXT,
    utterances TEXT,
    note TEXT,
    error TEXT,
    attempts BIGINT NOT NULL DEFAULT 0,
    lease TEXT,
    lease_until BIGINT,
    created_at BIGINT NOT NULL,
    started_at BIGINT,
    completed_at BIGINT
);
CREATE INDEX transcription_jobs_open ON transcription_jobs (created_at) WHERE status IN ('pending', 'processing');

-- The uploaded file, apart from the job's row so that polling never reads it; dropped when the
-- job ends.
CREATE TABLE transcription_audio (
    job_id TEXT PRIMARY KEY REFERENCES transcription_jobs(id) ON DELETE CASCADE,
    audio BYTEA NOT NULL
);
