-- Transcription jobs (POST /v1/transcription/jobs). A job is leased as a call is: the worker
-- holding it writes a fresh `lease` id and moves `lease_until` forward while it works; a job in
-- 'processing' whose lease ran out belongs to a worker that died and is taken up again.
-- `attempts` counts the times it was taken up (a claim is a compare-and-set on it). Booleans
-- are 0/1 integers, utterances JSON text, times Unix ms.
CREATE TABLE transcription_jobs (
    id TEXT PRIMARY KEY,
    tenant_id INTEGER NOT NULL REFERENCES tenants(id),
    engine TEXT NOT NULL,
    status TEXT NOT NULL,
    languages TEXT NOT NULL,
    diarize INTEGER NOT NULL,
    format TEXT NOT NULL,
    audio_format TEXT NOT NULL,
    audio_bytes INTEGER NOT NULL,
    text TEXT,
    language TEXT,
    utterances TEXT,
    note TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    lease TEXT,
    lease_until INTEGER,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    completed_at INTEGER
);
CREATE INDEX transcription_jobs_open ON transcription_jobs (created_at) WHERE status IN ('pending', 'processing');

-- The uploaded file, apart from the job's row so that polling never reads it; dropped when the
-- job ends.
CREATE TABLE transcription_audio (
    job_id TEXT PRIMARY KEY REFERENCES transcription_jobs(id) ON DELETE CASCADE,
    audio BLOB NOT NULL
);
