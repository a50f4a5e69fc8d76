//! Transcription jobs on SQL. A claim is a compare-and-set on `attempts`, so two nodes that
//! find the same job cannot both take it, on either backend, without row locks; a renewal or
//! a finish names the lease it holds, so a worker whose lease was taken over writes nothing.
//! A post-call transcript's job is written by the call's settlement (`dispatch::finish_attempt`,
//! [`insert_post_call_in`]) and reads its audio from the call's recording, not from
//! `transcription_audio`.

use crate::exec::{query, Exec};
use crate::gate::Work;
use crate::rows::{corrupt, get, json};
use crate::{db_err, encode_err, SqlStore};
use domain::store::StoreError;
use domain::transcription::{
    claim_decision, AudioFormat, CallSource, ClaimDecision, ClaimedJob, Job, JobAudio, JobFormat,
    JobId, JobLanguages, JobOutcome, JobStatus, NewJob, PostCallJob, TranscriptionStore,
};
use domain::{ConversationId, Millis, TenantId};
use std::time::Duration;

const COLUMNS: &str = "id, tenant_id, engine, status, languages, diarize, format, text, \
    language, utterances, note, error, attempts, created_at, completed_at, conversation_id, \
    call_language";

/// Writes the post-call transcript job of the call `conversation` (of `tenant`), `pending`, in
/// the caller's transaction (the call's settlement). A second one for the same call is not
/// written (the unique index), so a settlement can only ever make one.
pub(crate) async fn insert_post_call_in<E: Exec>(
    conn: &mut E,
    tenant: i64,
    conversation: &str,
    job: &PostCallJob,
    now: Millis,
) -> Result<(), StoreError> {
    query(
        "INSERT INTO transcription_jobs (id, tenant_id, engine, status, languages, diarize, \
         format, audio_format, audio_bytes, created_at, conversation_id, call_language) \
         VALUES ($1, $2, $3, $4, $5, 1, $6, $7, $8, $9, $10, $11) \
         ON CONFLICT (conversation_id) DO NOTHING",
    )
    .bind(job.id.as_str())
    .bind(tenant)
    .bind(job.engine.as_str())
    .bind(JobStatus::Pending.as_str())
    .bind(job.languages.to_text())
    .bind(JobFormat::Standard.as_str())
    // outdial's recordings are WAV (`sip::recording`).
    .bind(AudioFormat::Wav.as_str())
    .bind(i64::try_from(job.audio_bytes).unwrap_or(i64::MAX))
    .bind(now.0)
    .bind(conversation)
    .bind(job.call_language.as_str())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn job(row: &sqlx::any::AnyRow) -> Result<Job, StoreError> {
    let id: String = get(row, "id")?;
    let status: String = get(row, "status")?;
    let languages: String = get(row, "languages")?;
    let format: String = get(row, "format")?;
    let diarize: i64 = get(row, "diarize")?;
    let attempts: i64 = get(row, "attempts")?;
    let utterances: Option<String> = get(row, "utterances")?;
    let conversation: Option<String> = get(row, "conversation_id")?;
    let call_language: Option<String> = get(row, "call_language")?;
    let call = match conversation {
        Some(c) => Some(CallSource {
            conversation: c
                .parse()
                .map_err(|_| corrupt("transcription_jobs.conversation_id"))?,
            language: call_language.ok_or_else(|| corrupt("transcription_jobs.call_language"))?,
        }),
        None => None,
    };
    Ok(Job {
        id: JobId::parse(&id).ok_or_else(|| corrupt("transcription_jobs.id"))?,
        tenant: TenantId(get(row, "tenant_id")?),
        engine: get(row, "engine")?,
        status: JobStatus::parse(&status).ok_or_else(|| corrupt("transcription_jobs.status"))?,
        languages: JobLanguages::parse(&languages)
            .ok_or_else(|| corrupt("transcription_jobs.languages"))?,
        diarize: diarize != 0,
        format: JobFormat::parse(&format).ok_or_else(|| corrupt("transcription_jobs.format"))?,
        text: get(row, "text")?,
        language: get(row, "language")?,
        utterances: match utterances {
            Some(u) => json(&u, "transcription_jobs.utterances")?,
            None => Vec::new(),
        },
        note: get(row, "note")?,
        error: get(row, "error")?,
        attempts: u32::try_from(attempts).map_err(|_| corrupt("transcription_jobs.attempts"))?,
        created_at: Millis(get(row, "created_at")?),
        completed_at: get::<Option<i64>>(row, "completed_at")?.map(Millis),
        call,
    })
}

impl SqlStore {
    /// Ends a job held by `lease` and drops its file, in one transaction; `false` (nothing
    /// written) when the job is not held by that lease.
    async fn end_job(
        &self,
        id: &str,
        lease: &str,
        outcome: &JobOutcome,
        now: Millis,
    ) -> Result<bool, StoreError> {
        let mut tx = self.background_tx(Work::Transcription).await?;
        let (text, language, utterances, note, error) = match outcome {
            JobOutcome::Completed {
                text,
                language,
                utterances,
                note,
            } => (
                Some(text.as_str()),
                Some(language.as_str()),
                Some(serde_json::to_string(utterances).map_err(encode_err)?),
                note.as_deref(),
                None,
            ),
            JobOutcome::Failed { error } => (None, None, None, None, Some(error.as_str())),
        };
        let done = sqlx::query(
            "UPDATE transcription_jobs SET status = $1, text = $2, language = $3, \
             utterances = $4, note = $5, error = $6, completed_at = $7, lease = NULL, \
             lease_until = NULL WHERE id = $8 AND status = $9 AND lease = $10",
        )
        .bind(outcome.status().as_str())
        .bind(text)
        .bind(language)
        .bind(utterances)
        .bind(note)
        .bind(error)
        .bind(now.0)
        .bind(id)
        .bind(JobStatus::Processing.as_str())
        .bind(lease)
        .execute(&mut *tx)
        .await
        .map_err(db_err)?
        .rows_affected()
            == 1;
        if done {
            sqlx::query("DELETE FROM transcription_audio WHERE job_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await
                .map_err(db_err)?;
        }
        tx.commit().await?;
        Ok(done)
    }
}

#[async_trait::async_trait]
impl TranscriptionStore for SqlStore {
    async fn create_job(&self, new: NewJob) -> Result<Job, StoreError> {
        let mut tx = self.write.begin().await.map_err(db_err)?;
        let row = sqlx::query(&format!(
            "INSERT INTO transcription_jobs (id, tenant_id, engine, status, languages, diarize, \
             format, audio_format, audio_bytes, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {COLUMNS}"
        ))
        .bind(new.id.as_str())
        .bind(new.tenant.0)
        .bind(new.engine.as_str())
        .bind(JobStatus::Pending.as_str())
        .bind(new.languages.to_text())
        .bind(i64::from(new.diarize))
        .bind(new.format.as_str())
        .bind(new.audio_format.as_str())
        .bind(i64::try_from(new.audio.len()).unwrap_or(i64::MAX))
        .bind(new.now.0)
        .fetch_one(&mut *tx)
        .await
        .map_err(db_err)?;
        let created = job(&row)?;
        sqlx::query("INSERT INTO transcription_audio (job_id, audio) VALUES ($1, $2)")
            .bind(new.id.as_str())
            .bind(new.audio)
            .execute(&mut *tx)
            .await
            .map_err(db_err)?;
        tx.commit().await.map_err(db_err)?;
        Ok(created)
    }

    async fn get_job(&self, tenant: TenantId, id: &JobId) -> Result<Option<Job>, StoreError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM transcription_jobs WHERE tenant_id = $1 AND id = $2"
        ))
        .bind(tenant.0)
        .bind(id.as_str())
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?
        .as_ref()
        .map(job)
        .transpose()
    }

    async fn claim_job(
        &self,
        now: Millis,
        lease: Duration,
    ) -> Result<Option<ClaimedJob>, StoreError> {
        let open = JobStatus::open_sql();
        // A job another worker just took is skipped: the next candidate is looked at, a few
        // times, before this worker waits for its next turn.
        for _ in 0..4 {
            let candidate = sqlx::query(&format!(
                "SELECT id, attempts, audio_format FROM transcription_jobs \
                 WHERE status IN ({open}) AND (lease_until IS NULL OR lease_until <= $1) \
                 ORDER BY created_at, id LIMIT 1"
            ))
            .bind(now.0)
            .fetch_optional(&self.read)
            .await
            .map_err(db_err)?;
            let Some(candidate) = candidate else {
                return Ok(None);
            };
            let id: String = get(&candidate, "id")?;
            let attempts: i64 = get(&candidate, "attempts")?;
            let audio_format: String = get(&candidate, "audio_format")?;
            let seen =
                u32::try_from(attempts).map_err(|_| corrupt("transcription_jobs.attempts"))?;
            let token = uuid::Uuid::new_v4().to_string();
            let mut tx = self.background_tx(Work::Transcription).await?;
            let taken = sqlx::query(&format!(
                "UPDATE transcription_jobs SET status = $1, lease = $2, lease_until = $3, \
                 attempts = attempts + 1, started_at = COALESCE(started_at, $4) \
                 WHERE id = $5 AND attempts = $6 AND status IN ({open}) \
                 AND (lease_until IS NULL OR lease_until <= $4) RETURNING {COLUMNS}"
            ))
            .bind(JobStatus::Processing.as_str())
            .bind(token.as_str())
            .bind(now.after(lease).0)
            .bind(now.0)
            .bind(id.as_str())
            .bind(attempts)
            .fetch_optional(&mut *tx)
            .await
            .map_err(db_err)?;
            let Some(taken) = taken else {
                continue;
            };
            let taken = job(&taken)?;
            let audio = match &taken.call {
                // The call's recording, where the call says it is.
                Some(call) => JobAudio::Recording {
                    path: sqlx::query_scalar::<_, Option<String>>(
                        "SELECT recording_path FROM calls WHERE id = $1",
                    )
                    .bind(call.conversation.to_string())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?
                    .flatten(),
                },
                None => JobAudio::Stored {
                    format: AudioFormat::parse(&audio_format)
                        .ok_or_else(|| corrupt("transcription_jobs.audio_format"))?,
                    bytes: sqlx::query_scalar(
                        "SELECT audio FROM transcription_audio WHERE job_id = $1",
                    )
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db_err)?
                    .unwrap_or_default(),
                },
            };
            tx.commit().await?;
            let claimed = ClaimedJob {
                job: taken,
                audio,
                lease: token,
            };
            match claim_decision(seen) {
                ClaimDecision::Take => return Ok(Some(claimed)),
                ClaimDecision::GiveUp(outcome) => {
                    tracing::warn!(job_id = %id, attempts = seen, "transcription job given up");
                    self.end_job(&id, &claimed.lease, &outcome, now).await?;
                }
            }
        }
        Ok(None)
    }

    async fn renew_job(&self, id: &JobId, lease: &str, until: Millis) -> Result<bool, StoreError> {
        let mut conn = self.background_conn(Work::Transcription).await?;
        let renewed = sqlx::query(
            "UPDATE transcription_jobs SET lease_until = $1 \
             WHERE id = $2 AND status = $3 AND lease = $4",
        )
        .bind(until.0)
        .bind(id.as_str())
        .bind(JobStatus::Processing.as_str())
        .bind(lease)
        .execute(&mut *conn)
        .await
        .map_err(db_err)?
        .rows_affected();
        Ok(renewed == 1)
    }

    async fn finish_job(
        &self,
        id: &JobId,
        lease: &str,
        outcome: &JobOutcome,
        now: Millis,
    ) -> Result<bool, StoreError> {
        self.end_job(id.as_str(), lease, outcome, now).await
    }

    async fn post_call_transcript(
        &self,
        tenant: TenantId,
        conversation: ConversationId,
    ) -> Result<Option<Job>, StoreError> {
        sqlx::query(&format!(
            "SELECT {COLUMNS} FROM transcription_jobs WHERE conversation_id = $1 AND tenant_id = $2"
        ))
        .bind(conversation.to_string())
        .bind(tenant.0)
        .fetch_optional(&self.read)
        .await
        .map_err(db_err)?
        .as_ref()
        .map(job)
        .transpose()
    }
}

#[cfg(test)]
mod tests {
    use domain::transcription::JobStatus;

    /// SQLite uses the partial index only for a condition written as the index's own.
    #[test]
    fn the_open_jobs_index_names_the_list_the_claim_uses() {
        let index = format!(
            "transcription_jobs_open ON transcription_jobs (created_at) WHERE status IN ({});",
            JobStatus::open_sql()
        );
        for migration in [
            include_str!("../migrations/sqlite/0013_transcription_jobs.sql"),
            include_str!("../migrations/postgres/0013_transcription_jobs.sql"),
        ] {
            assert!(migration.contains(&index), "{index}");
        }
    }
}
