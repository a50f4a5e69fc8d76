-- Post-call transcripts (an agent's `post_call_transcript`): a transcription job on a call's own
-- recording, written in the transaction that settles the call. `conversation_id` names the call
-- (at most one job each: the unique index, which also finds it for GET /v1/conversations/{id});
-- the audio is the call's `recording_path`, read by the worker, never copied into
-- transcription_audio. `call_language` is the language the call spoke (BCP 47), which the answer
-- names when that is what was heard. Both NULL for uploaded jobs.
ALTER TABLE transcription_jobs ADD COLUMN conversation_id TEXT REFERENCES calls(id);
ALTER TABLE transcription_jobs ADD COLUMN call_language TEXT;
CREATE UNIQUE INDEX transcription_jobs_conversation ON transcription_jobs (conversation_id);
