//! One suite, both backends: the same story runs against SQLite (a fresh file) and PostgreSQL (a
//! fresh database on the server named by OUTDIAL_TEST_POSTGRES_URL, default
//! postgres://postgres@127.0.0.1:5432/postgres). PostgreSQL being down is a failure, not a skip:
//! set OUTDIAL_TEST_SKIP_POSTGRES=1 to leave it out knowingly.

mod common;

use common::{backends, new_call, Backend};
use domain::store::{Conflict, CreateCallError, ManageError, Page, Store};
use domain::tenant::TenantLimits;
use domain::{AgentConfig, ConversationId, Millis, TraceId, E164};
use serde_json::json;
use std::sync::Arc;

const T0: Millis = Millis(1_775_000_000_000);

async fn story_keys_and_agents(store: &dyn Store) {
    let (t, agent) = common::tenant_with_agent(store, "acme", "+918035739222").await;
    let key = store
        .create_api_key(t, "ci", "lookup123456", "hash", T0)
        .await
        .unwrap();
    let cred = store.find_api_key("lookup123456").await.unwrap().unwrap();
    assert_eq!(
        (cred.tenant, cred.secret_hash.as_str(), cred.revoked),
        (t, "hash", false)
    );
    assert!(store.revoke_api_key(t, key.id, T0).await.unwrap());
    assert!(
        store
            .find_api_key("lookup123456")
            .await
            .unwrap()
            .unwrap()
            .revoked
    );
    assert!(
        !store.revoke_api_key(t, key.id, T0).await.unwrap(),
        "revoking twice is a no-op"
    );
    assert!(store.find_api_key("nope").await.unwrap().is_none());

    // An agent may only use the tenant's own numbers.
    let (other, other_agent) = common::tenant_with_agent(store, "globex", "+918035739223").await;
    let cfg = AgentConfig::from_json(
        json!({"name": "b", "phone_number": "+918035739223"})
            .as_object()
            .unwrap(),
    )
    .unwrap();
    assert!(matches!(
        store.create_agent(t, &cfg, T0).await,
        Err(ManageError::NotFound("phone number"))
    ));
    // Isolation: neither sees the other's agent.
    assert!(store.get_agent(t, other_agent).await.unwrap().is_none());
    assert!(store.get_agent(other, agent).await.unwrap().is_none());
    assert!(matches!(
        store.update_agent(other, agent, &cfg, T0).await,
        Err(ManageError::NotFound("agent"))
    ));
    assert!(!store.delete_agent(other, agent, T0).await.unwrap());
    assert_eq!(
        store
            .list_agents(
                t,
                Page {
                    limit: 10,
                    offset: 0
                }
            )
            .await
            .unwrap()
            .total,
        1
    );
    // Numbers are unique per tenant, not globally.
    let trunk = store.list_trunks(t).await.unwrap()[0].id;
    let dup = E164::parse("+918035739222").unwrap();
    assert!(matches!(
        store.create_phone_number(t, &dup, trunk, T0).await,
        Err(ManageError::Conflict(Conflict::NumberExists))
    ));
    let other_trunk = store.list_trunks(other).await.unwrap()[0].id;
    assert!(store
        .create_phone_number(other, &dup, other_trunk, T0)
        .await
        .is_ok());
    assert!(matches!(
        store
            .create_phone_number(other, &E164::parse("+918035739224").unwrap(), trunk, T0)
            .await,
        Err(ManageError::NotFound("trunk"))
    ));
}

async fn story_calls(store: &dyn Store) {
    let (t, agent) = common::tenant_with_agent(store, "acme", "+918035739222").await;
    store
        .update_tenant_limits(
            t,
            &TenantLimits {
                max_concurrent_calls: Some(3),
                per_number_calls: 2,
                per_number_window_seconds: 60,
            },
        )
        .await
        .unwrap();

    // Idempotency: a key is claimed for 24 hours, then reusable.
    let mut keyed = new_call(t, agent, "+919876500001", T0);
    keyed.idempotency_key = Some("k".into());
    let first = store.create_call(keyed.clone()).await.unwrap();
    keyed.trace_id = TraceId::new();
    keyed.now = Millis(T0.0 + 1000);
    match store.create_call(keyed.clone()).await {
        Err(CreateCallError::DuplicateRequest { first_trace_id }) => {
            assert_eq!(first_trace_id, first.trace_id)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.count_calls(t).await.unwrap(), 1);

    // Per number: 2 per 60 s; the third waits for the oldest to leave the window.
    let n = "+919876500002";
    store.create_call(new_call(t, agent, n, T0)).await.unwrap();
    store
        .create_call(new_call(t, agent, n, Millis(T0.0 + 10_000)))
        .await
        .unwrap();
    match store
        .create_call(new_call(t, agent, n, Millis(T0.0 + 20_000)))
        .await
    {
        Err(CreateCallError::NumberRateLimited {
            retry_after_seconds,
        }) => assert_eq!(retry_after_seconds, 40),
        other => panic!("{other:?}"),
    }

    // Concurrency: 3 live immediate calls now; a fourth is refused, scheduled ones are not.
    match store
        .create_call(new_call(t, agent, "+919876500003", Millis(T0.0 + 30_000)))
        .await
    {
        Err(CreateCallError::ConcurrentLimit { current, max }) => {
            assert_eq!((current, max), (3, 3))
        }
        other => panic!("{other:?}"),
    }
    let mut later = new_call(t, agent, "+919876500003", Millis(T0.0 + 30_000));
    later.scheduled_for = Some(Millis(T0.0 + 3_600_000));
    let scheduled = store.create_call(later).await.unwrap();
    assert_eq!(scheduled.status, domain::CallStatus::Scheduled);
    assert_eq!(
        store.count_calls(t).await.unwrap(),
        4,
        "refusals wrote nothing"
    );

    // After 24 h the key is free again (and the concurrency limit lifted to let it through).
    store
        .update_tenant_limits(
            t,
            &TenantLimits {
                max_concurrent_calls: None,
                per_number_calls: 2,
                per_number_window_seconds: 60,
            },
        )
        .await
        .unwrap();
    keyed.now = Millis(T0.0 + 24 * 3600 * 1000 + 1);
    keyed.trace_id = TraceId::new();
    store.create_call(keyed).await.unwrap();

    // Chains.
    let mut next = new_call(t, agent, "+919876500004", Millis(T0.0 + 40_000));
    next.continues = Some(first.conversation_id);
    let second = store.create_call(next.clone()).await.unwrap();
    assert_eq!(
        second.conversation_id,
        ConversationId {
            chain: first.conversation_id.chain,
            attempt: 2
        }
    );
    next.continues = Some(ConversationId {
        chain: uuid_of("e36853de-9cbb-441e-ad75-d3c8ac82abfb"),
        attempt: 1,
    });
    assert!(matches!(
        store.create_call(next).await,
        Err(CreateCallError::ConversationNotFound)
    ));

    // Agent checks come first; another tenant's agent is "not found".
    let (other, _) = common::tenant_with_agent(store, "globex", "+918035739223").await;
    assert!(matches!(
        store
            .create_call(new_call(other, agent, "+919876500005", T0))
            .await,
        Err(CreateCallError::AgentNotFound)
    ));
    let bare = store
        .create_agent(
            t,
            &AgentConfig::from_json(json!({"name": "bare"}).as_object().unwrap()).unwrap(),
            T0,
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .create_call(new_call(t, bare.id, "+919876500005", T0))
            .await,
        Err(CreateCallError::AgentHasNoNumber)
    ));

    // Reads are tenant-scoped, newest first.
    let all = store
        .list_conversations(
            t,
            None,
            Page {
                limit: 100,
                offset: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(all.total, 6);
    assert!(all
        .items
        .windows(2)
        .all(|w| w[0].created_at >= w[1].created_at));
    let page = Page {
        limit: 4,
        offset: 4,
    };
    let tail = store
        .list_conversations(t, Some(agent), page)
        .await
        .unwrap();
    assert_eq!((tail.items.len(), tail.has_more(page)), (2, false));
    assert!(store
        .get_conversation(other, first.conversation_id)
        .await
        .unwrap()
        .is_none());
    let got = store
        .get_conversation(t, first.conversation_id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.contact_number, "+919876500001");
    assert_eq!(got.status, domain::CallStatus::Queued);
    assert_eq!(
        store
            .list_conversations(
                other,
                None,
                Page {
                    limit: 10,
                    offset: 0
                }
            )
            .await
            .unwrap()
            .total,
        0
    );
}

fn uuid_of(s: &str) -> uuid::Uuid {
    s.parse().unwrap()
}

/// Many writers at once: exactly one claim of a key wins.
async fn story_idempotency_race(store: Arc<dyn Store>) {
    let (t, agent) = common::tenant_with_agent(store.as_ref(), "acme", "+918035739222").await;
    let tasks = (0..20).map(|i| {
        let store = store.clone();
        let mut call = new_call(t, agent, &format!("+9198765{:05}", i), Millis::now());
        call.idempotency_key = Some("same".into());
        tokio::spawn(async move { store.create_call(call).await })
    });
    let results = futures::future::join_all(tasks).await;
    let ok = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let dup = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(CreateCallError::DuplicateRequest { .. }))))
        .count();
    assert_eq!((ok, dup), (1, 19));
    assert_eq!(store.count_calls(t).await.unwrap(), 1);
}

/// One `POST /v1/call` per phone, all at once.
async fn race(
    store: &Arc<dyn Store>,
    tenant: domain::TenantId,
    agent: domain::AgentId,
    phones: impl Iterator<Item = String>,
) -> Vec<Result<Result<domain::call::AcceptedCall, CreateCallError>, tokio::task::JoinError>> {
    let tasks = phones.map(|phone| {
        let store = store.clone();
        let call = new_call(tenant, agent, &phone, Millis::now());
        tokio::spawn(async move { store.create_call(call).await })
    });
    futures::future::join_all(tasks).await
}

/// Requests racing for the last places under a cap: the tenant's concurrency cap and the
/// per-number limit each let exactly their number of calls through, whichever driver writes
/// (PostgreSQL's advisory locks, SQLite's single writer, or a group-commit batch counting the
/// calls it accepted before committing them).
async fn story_limits_race(store: Arc<dyn Store>) {
    let (t, agent) = common::tenant_with_agent(store.as_ref(), "acme", "+918035739222").await;
    let limits = |max, per_number| TenantLimits {
        max_concurrent_calls: max,
        per_number_calls: per_number,
        per_number_window_seconds: 60,
    };
    store
        .update_tenant_limits(t, &limits(Some(5), 0))
        .await
        .unwrap();
    let phones = (0..20).map(|i| format!("+9198765{i:05}"));
    let results = race(&store, t, agent, phones).await;
    let accepted = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let capped = results
        .iter()
        .filter(|r| {
            matches!(
                r,
                Ok(Err(CreateCallError::ConcurrentLimit { current: 5, max: 5 }))
            )
        })
        .count();
    assert_eq!((accepted, capped), (5, 15), "{results:?}");

    let (t2, agent2) = common::tenant_with_agent(store.as_ref(), "globex", "+918035739223").await;
    store
        .update_tenant_limits(t2, &limits(None, 3))
        .await
        .unwrap();
    let phones = std::iter::repeat_n("+919876511111".to_string(), 10);
    let results = race(&store, t2, agent2, phones).await;
    let accepted = results.iter().filter(|r| matches!(r, Ok(Ok(_)))).count();
    let limited = results
        .iter()
        .filter(|r| matches!(r, Ok(Err(CreateCallError::NumberRateLimited { .. }))))
        .count();
    assert_eq!((accepted, limited), (3, 7), "{results:?}");
    assert_eq!(store.count_calls(t).await.unwrap(), 5);
    assert_eq!(store.count_calls(t2).await.unwrap(), 3);
}

/// The do-not-call list: a listing answers its first entry, refuses `POST /v1/call`, cancels
/// the calls waiting for the number (`do-not-call`, with their `call.canceled` event), and a
/// call that slipped past it (claimed already) is cancelled instead of started.
async fn story_do_not_call(store: Arc<dyn Store>) {
    use domain::dispatch::{BeginDial, DialLimits};
    use domain::do_not_call::{Listing, Source};
    let (t, agent) = common::tenant_with_agent(store.as_ref(), "acme", "+918035739222").await;
    let phone = "+919876500001";
    let mut waiting = new_call(t, agent, phone, T0);
    waiting.scheduled_for = Some(Millis(T0.0 + 60_000));
    let waiting = store.create_call(waiting).await.unwrap().conversation_id;
    let mut claimed = new_call(t, agent, phone, T0);
    claimed.scheduled_for = Some(Millis(T0.0 + 1_000));
    let claimed = store.create_call(claimed).await.unwrap().conversation_id;
    let due = store
        .claim_due("n1", Millis(T0.0 + 2_000), Millis(T0.0 + 32_000), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    assert_eq!(due[0].id, claimed);

    let listing = |reason: &str| Listing {
        number: E164::parse(phone).unwrap(),
        reason: Some(reason.into()),
    };
    let first = store
        .add_do_not_call(t, listing("first"), Source::Api, Millis(T0.0 + 3_000))
        .await
        .unwrap();
    let again = store
        .add_do_not_call(t, listing("second"), Source::Call, Millis(T0.0 + 4_000))
        .await
        .unwrap();
    assert_eq!(again, first);
    assert_eq!(first.reason.as_deref(), Some("first"));
    // Both waiting calls were cancelled by the listing, the claimed one too: it had not started.
    for id in [waiting, claimed] {
        let c = store.get_conversation(t, id).await.unwrap().unwrap();
        assert_eq!(c.status, domain::CallStatus::Canceled);
        assert_eq!(c.failure_reason.as_deref(), Some("do-not-call"));
    }
    let outcome = store
        .begin_dial(
            claimed,
            "n1",
            Millis(T0.0 + 5_000),
            Millis(T0.0 + 35_000),
            None,
            &DialLimits::default(),
        )
        .await
        .unwrap();
    assert_eq!(outcome, BeginDial::Gone);
    assert!(matches!(
        store.create_call(new_call(t, agent, phone, T0)).await,
        Err(CreateCallError::DoNotCall)
    ));

    // A batch uploaded after an import listed one of its numbers: that row is cancelled when
    // its dial would start, and the batch counts it.
    let other = "+919876500002";
    let imported = store
        .import_do_not_call(
            t,
            vec![Listing {
                number: E164::parse(other).unwrap(),
                reason: None,
            }],
            Millis(T0.0 + 6_000),
        )
        .await
        .unwrap();
    assert_eq!((imported.total, imported.added), (1, 1));
    let batch = store
        .create_batch(domain::batch::NewBatch {
            tenant: t,
            agent,
            name: "march".into(),
            scheduled_for: None,
            recipients: domain::batch::parse_recipients(
                format!("customer_phone\n{other}\n").as_bytes(),
                10,
            )
            .unwrap(),
            trace_id: TraceId::new(),
            now: Millis(T0.0 + 7_000),
        })
        .await
        .unwrap();
    let due = store
        .claim_due("n1", Millis(T0.0 + 8_000), Millis(T0.0 + 38_000), 10)
        .await
        .unwrap();
    assert_eq!(due.len(), 1);
    let outcome = store
        .begin_dial(
            due[0].id,
            "n1",
            Millis(T0.0 + 9_000),
            Millis(T0.0 + 39_000),
            None,
            &DialLimits::default(),
        )
        .await
        .unwrap();
    assert_eq!(outcome, BeginDial::Listed);
    let c = store.get_conversation(t, due[0].id).await.unwrap().unwrap();
    assert_eq!(c.status, domain::CallStatus::Canceled);
    assert_eq!(c.failure_reason.as_deref(), Some("do-not-call"));
    let b = store.get_batch(t, batch.id).await.unwrap().unwrap();
    assert_eq!(b.counts.canceled, 1);

    let listed = store
        .list_do_not_call(
            t,
            Page {
                limit: 10,
                offset: 0,
            },
        )
        .await
        .unwrap();
    assert_eq!(listed.total, 2);
    assert!(store
        .delete_do_not_call(t, &E164::parse(phone).unwrap())
        .await
        .unwrap());
    assert!(store
        .get_do_not_call(t, &E164::parse(phone).unwrap())
        .await
        .unwrap()
        .is_none());
}

/// Transcription jobs: stored with their audio, seen only by their tenant, leased to one worker
/// at a time, taken over when a lease runs out, finished once (a stale worker writes nothing),
/// failed after being abandoned three times.
async fn story_transcription_jobs(store: Arc<dyn Store>) {
    use domain::transcription::{
        AudioFormat, JobAudio, JobFormat, JobId, JobLanguages, JobOutcome, JobStatus, NewJob,
        Utterance,
    };
    use std::time::Duration;
    let (t, _) = common::tenant_with_agent(store.as_ref(), "acme", "+918035739222").await;
    let (other, _) = common::tenant_with_agent(store.as_ref(), "globex", "+918035739223").await;
    let audio: Vec<u8> = (0..=255u8).cycle().take(300_000).collect();
    let new = |id: JobId, at: i64| NewJob {
        id,
        tenant: t,
        engine: "whisper-base".into(),
        languages: JobLanguages::Among(vec!["hi-IN", "en-IN"]),
        diarize: true,
        format: JobFormat::CodeMixed,
        audio_format: AudioFormat::Flac,
        audio: audio.clone(),
        now: Millis(T0.0 + at),
    };
    let first = JobId::new();
    let created = store.create_job(new(first.clone(), 0)).await.unwrap();
    assert_eq!(
        (created.status, created.attempts, created.text.as_deref()),
        (JobStatus::Pending, 0, None)
    );
    let second = JobId::new();
    store.create_job(new(second.clone(), 1)).await.unwrap();
    assert!(store.get_job(other, &first).await.unwrap().is_none());
    assert_eq!(store.get_job(t, &first).await.unwrap().unwrap(), created);

    // Oldest first, audio and options as stored; a held job is not handed out again.
    let lease = Duration::from_secs(60);
    let a = store.claim_job(T0, lease).await.unwrap().unwrap();
    assert_eq!(a.job.id, first);
    assert_eq!(
        a.audio,
        JobAudio::Stored {
            format: AudioFormat::Flac,
            bytes: audio.clone()
        }
    );
    assert_eq!(a.job.call, None);
    assert_eq!(
        (a.job.status, a.job.attempts, a.job.diarize, a.job.format),
        (JobStatus::Processing, 1, true, JobFormat::CodeMixed)
    );
    let b = store.claim_job(T0, lease).await.unwrap().unwrap();
    assert_eq!(b.job.id, second);
    assert!(store.claim_job(T0, lease).await.unwrap().is_none());

    // `a`'s worker stalls: its lease runs out and another worker takes the job over; the
    // stalled worker can neither renew nor finish it.
    let later = Millis(T0.0 + 61_000);
    let a2 = store.claim_job(later, lease).await.unwrap().unwrap();
    assert_eq!((a2.job.id.clone(), a2.job.attempts), (first.clone(), 2));
    assert!(!store.renew_job(&first, &a.lease, later).await.unwrap());
    let done = JobOutcome::Completed {
        text: "haan ji".into(),
        language: "hi-IN".into(),
        utterances: vec![Utterance {
            speaker: "speaker_0".into(),
            text: "haan ji".into(),
            start: 0.25,
            end: 1.5,
        }],
        note: None,
    };
    assert!(!store
        .finish_job(&first, &a.lease, &done, later)
        .await
        .unwrap());
    assert!(store.renew_job(&first, &a2.lease, later).await.unwrap());
    assert!(store
        .finish_job(&first, &a2.lease, &done, later)
        .await
        .unwrap());
    assert!(
        !store
            .finish_job(&first, &a2.lease, &done, later)
            .await
            .unwrap(),
        "finished once"
    );
    let finished = store.get_job(t, &first).await.unwrap().unwrap();
    assert_eq!(
        (
            finished.status,
            finished.text.as_deref(),
            finished.language.as_deref(),
            finished.completed_at
        ),
        (
            JobStatus::Completed,
            Some("haan ji"),
            Some("hi-IN"),
            Some(later)
        )
    );
    assert_eq!(finished.utterances.len(), 1);
    assert_eq!(finished.utterances[0].start, 0.25);

    // `second` is abandoned by three workers in turn: the claim after the third fails it.
    let mut now = later;
    for attempt in 2..=3 {
        now = Millis(now.0 + 61_000);
        let again = store.claim_job(now, lease).await.unwrap().unwrap();
        assert_eq!(
            (again.job.id.clone(), again.job.attempts),
            (second.clone(), attempt)
        );
    }
    now = Millis(now.0 + 61_000);
    assert!(store.claim_job(now, lease).await.unwrap().is_none());
    let given_up = store.get_job(t, &second).await.unwrap().unwrap();
    assert_eq!(given_up.status, JobStatus::Failed);
    assert!(
        given_up.error.as_deref().unwrap_or("").contains("3 times"),
        "{:?}",
        given_up.error
    );
}

/// A post-call transcript: the job is written by the call's settlement (and only by it: a
/// settlement tried again writes nothing), refers to the call's recording instead of holding
/// audio, is found by its conversation for its tenant only, and is leased and finished like
/// any job.
async fn story_post_call_transcripts(store: Arc<dyn Store>) {
    use domain::dispatch::{BeginDial, DialLimits, FinishAttempt};
    use domain::transcription::{
        CallSource, JobAudio, JobId, JobLanguages, JobOutcome, JobStatus, PostCallJob, Utterance,
    };
    use domain::CallStatus;
    use std::time::Duration;
    let (t, agent) = common::tenant_with_agent(store.as_ref(), "acme", "+918035739222").await;
    let (other, _) = common::tenant_with_agent(store.as_ref(), "globex", "+918035739223").await;
    let asked = store
        .create_call(new_call(t, agent, "+919876500001", T0))
        .await
        .unwrap()
        .conversation_id;
    let plain = store
        .create_call(new_call(t, agent, "+919876500002", T0))
        .await
        .unwrap()
        .conversation_id;
    let lease_until = Millis(T0.0 + 30_000);
    let due = store.claim_due("n1", T0, lease_until, 10).await.unwrap();
    assert_eq!(due.len(), 2);
    for call in &due {
        let started = store
            .begin_dial(call.id, "n1", T0, lease_until, None, &DialLimits::default())
            .await
            .unwrap();
        assert_eq!(started, BeginDial::Started);
    }
    let ended = Millis(T0.0 + 20_000);
    let job = common::post_call_job();
    let settle = |id: ConversationId, post_call: Option<PostCallJob>| FinishAttempt {
        recording_path: Some(format!("/srv/outdial/recordings/{id}.wav").into()),
        duration_seconds: Some(10),
        post_call,
        public_url: "http://127.0.0.1:8080".into(),
        ..FinishAttempt::bare(id, "n1", CallStatus::Completed, ended)
    };
    assert!(store
        .finish_attempt(settle(asked, Some(job.clone())), ended)
        .await
        .unwrap()
        .is_some());
    // The settlement tried again (a node that did not see its commit) settles nothing and
    // makes no second job.
    let again = PostCallJob {
        id: JobId::new(),
        ..job.clone()
    };
    assert!(store
        .finish_attempt(settle(asked, Some(again.clone())), ended)
        .await
        .unwrap()
        .is_none());
    assert!(store.get_job(t, &again.id).await.unwrap().is_none());
    assert!(store
        .finish_attempt(settle(plain, None), ended)
        .await
        .unwrap()
        .is_some());

    let pending = store
        .post_call_transcript(t, asked)
        .await
        .unwrap()
        .expect("the settlement wrote the job");
    assert_eq!(
        (
            &pending.id,
            pending.status,
            pending.diarize,
            pending.attempts
        ),
        (&job.id, JobStatus::Pending, true, 0)
    );
    assert_eq!(pending.languages, JobLanguages::Among(vec!["en-IN"]));
    assert_eq!(
        pending.call,
        Some(CallSource {
            conversation: asked,
            language: "en-US".into()
        })
    );
    assert_eq!(store.get_job(t, &job.id).await.unwrap(), Some(pending));
    assert!(store
        .post_call_transcript(t, plain)
        .await
        .unwrap()
        .is_none());
    assert!(store
        .post_call_transcript(other, asked)
        .await
        .unwrap()
        .is_none());

    // Taken up, it names the call's recording; nothing else is waiting.
    let lease = Duration::from_secs(60);
    let claimed = store.claim_job(ended, lease).await.unwrap().unwrap();
    assert_eq!(claimed.job.id, job.id);
    assert_eq!(
        claimed.audio,
        JobAudio::Recording {
            path: Some(format!("/srv/outdial/recordings/{asked}.wav"))
        }
    );
    assert!(store.claim_job(ended, lease).await.unwrap().is_none());
    let heard = JobOutcome::Completed {
        text: "Hello Rahul. Yes.".into(),
        language: "en-US".into(),
        utterances: vec![
            Utterance {
                speaker: "agent".into(),
                text: "Hello Rahul.".into(),
                start: 0.5,
                end: 1.5,
            },
            Utterance {
                speaker: "human".into(),
                text: "Yes.".into(),
                start: 2.0,
                end: 2.5,
            },
        ],
        note: None,
    };
    let done_at = Millis(ended.0 + 5_000);
    assert!(store
        .finish_job(&job.id, &claimed.lease, &heard, done_at)
        .await
        .unwrap());
    let done = store.post_call_transcript(t, asked).await.unwrap().unwrap();
    assert_eq!(
        (done.status, done.language.as_deref(), done.completed_at),
        (JobStatus::Completed, Some("en-US"), Some(done_at))
    );
    let speakers: Vec<&str> = done.utterances.iter().map(|u| u.speaker.as_str()).collect();
    assert_eq!(speakers, ["agent", "human"]);
    // The call itself is as its settlement left it.
    let call = store.get_conversation(t, asked).await.unwrap().unwrap();
    assert_eq!(call.status, CallStatus::Completed);
}

/// The trunk options round-trip; a paced trunk's due calls wait in its line (out of the claim
/// of due calls), are taken from it oldest first, one per token of its bucket, the token shared
/// through the store; a hold (503 Retry-After) shuts the gate and is never shortened by a dial.
async fn story_trunk_lines(store: Arc<dyn Store>) {
    use domain::dispatch::{BeginDial, DialLimits, DialStart, TrunkLane};
    use domain::pacing::{CallsPerSecond, TokenBucket};
    use domain::telephony::{Srtp, Transport};
    use domain::tenant::NewTrunk;
    let rate = CallsPerSecond::new(0.5).unwrap();
    let trunk = NewTrunk {
        username: Some("acct".into()),
        max_calls_per_second: Some(rate),
        transport: Transport::Tcp,
        register: true,
        srtp: Srtp::Required,
        ..NewTrunk::new("carrier", "sip:127.0.0.1:5080")
    };
    let (t, agent) = testkit::dialling_agent_on(
        store.as_ref(),
        "acme",
        "+918035739222",
        &trunk,
        json!({}),
        T0,
    )
    .await;
    let stored = store.list_trunks(t).await.unwrap().remove(0);
    assert_eq!(
        (
            stored.max_calls_per_second,
            stored.transport,
            stored.register,
            stored.srtp
        ),
        (Some(rate), Transport::Tcp, true, Srtp::Required)
    );
    let plain = store
        .create_trunk(t, &NewTrunk::new("plain", "sips:pbx.example:5061"), T0)
        .await
        .unwrap();
    assert_eq!(
        (
            plain.max_calls_per_second,
            plain.transport,
            plain.register,
            plain.srtp
        ),
        (None, Transport::Udp, false, Srtp::Off)
    );

    let mut ids = Vec::new();
    for i in 0..4 {
        let at = Millis(T0.0 + i);
        let call = new_call(t, agent, &format!("+91987650000{i}"), at);
        ids.push(store.create_call(call).await.unwrap().conversation_id);
    }
    let now = Millis(T0.0 + 1_000);
    let lease = Millis(now.0 + 30_000);
    let due = store.claim_due("n1", now, lease, 2).await.unwrap();
    assert_eq!(due.len(), 2);
    let carrier = due[0].trunk.clone().unwrap();
    assert_eq!(carrier.max_calls_per_second, Some(rate));
    assert_eq!(carrier.dial_after, None);
    assert_eq!(
        (
            carrier.target.transport,
            carrier.target.register,
            carrier.target.srtp
        ),
        (Transport::Tcp, true, Srtp::Required)
    );
    // All four join the line: the two claimed and the two nobody holds.
    assert_eq!(
        store
            .park_calls("n1", carrier.id, now, "paced")
            .await
            .unwrap(),
        4
    );
    assert!(store
        .claim_due("n1", now, lease, 10)
        .await
        .unwrap()
        .is_empty());
    let lanes = store.trunk_lanes(now).await.unwrap();
    assert_eq!(
        lanes,
        vec![TrunkLane {
            trunk: carrier.id,
            max_calls_per_second: Some(rate),
            dial_after: None,
        }]
    );
    assert_eq!(store.next_due_at(now).await.unwrap(), Some(now));
    let c = store.get_conversation(t, ids[3]).await.unwrap().unwrap();
    assert_eq!(c.status, domain::CallStatus::Queued);

    let bucket = TokenBucket::new(rate);
    let limits = DialLimits {
        pace: Some((carrier.id, bucket)),
        ..Default::default()
    };
    let start = |id| DialStart {
        id,
        trunk: Some(carrier.id),
        limits: limits.clone(),
    };
    // Oldest first; the second of one round finds the token taken and keeps its place.
    let head = store
        .claim_lane("n1", carrier.id, now, lease, 2)
        .await
        .unwrap();
    assert_eq!(head.iter().map(|c| c.id).collect::<Vec<_>>(), ids[..2]);
    let started = store
        .begin_dials("n1", now, lease, &[start(ids[0]), start(ids[1])])
        .await
        .unwrap();
    assert_eq!(started, vec![BeginDial::Started, BeginDial::Paced]);
    let next = Millis(now.0 + 2_000);
    assert_eq!(
        store.trunk_lanes(now).await.unwrap()[0].dial_after,
        Some(next)
    );
    // Due half a booking before the token, so the round then books it.
    let half = domain::pacing::BOOK_AHEAD.as_millis() as i64 / 2;
    assert_eq!(
        store.next_due_at(now).await.unwrap(),
        Some(Millis(next.0 - half))
    );
    // A node that claims the head anyway (its view was stale) cannot book it while the token
    // is further away than a round books.
    let again = store
        .claim_lane("n2", carrier.id, now, lease, 1)
        .await
        .unwrap();
    assert_eq!(again[0].id, ids[1]);
    let early = store
        .begin_dials("n2", Millis(next.0 - 2 * half), lease, &[start(ids[1])])
        .await;
    assert_eq!(early.unwrap(), vec![BeginDial::Paced]);
    // A hold past the token keeps the gate shut until it ends; a dial never shortens it.
    let held = Millis(now.0 + 10_000);
    store.hold_trunk(carrier.id, held).await.unwrap();
    store.hold_trunk(carrier.id, next).await.unwrap();
    assert_eq!(
        store.next_due_at(now).await.unwrap(),
        Some(Millis(held.0 - half))
    );
    let c = store
        .claim_lane("n1", carrier.id, next, lease, 1)
        .await
        .unwrap();
    let paced = store
        .begin_dials("n1", next, lease, &[start(c[0].id)])
        .await;
    assert_eq!(paced.unwrap(), vec![BeginDial::Paced]);
    let c = store
        .claim_lane("n1", carrier.id, held, lease, 1)
        .await
        .unwrap();
    assert_eq!(c[0].id, ids[1]);
    let go = store.begin_dials("n1", held, lease, &[start(ids[1])]).await;
    assert_eq!(go.unwrap(), vec![BeginDial::Started]);
    // A call put back to wait for its own reason leaves the line.
    let c = store
        .claim_lane("n1", carrier.id, held, lease, 1)
        .await
        .unwrap();
    assert_eq!(c[0].id, ids[2]);
    let later = Millis(held.0 + 60_000);
    store
        .defer_call(ids[2], "n1", later, "outside the calling window")
        .await
        .unwrap();
    let c = store
        .claim_lane("n1", carrier.id, held, lease, 5)
        .await
        .unwrap();
    assert_eq!(c.iter().map(|c| c.id).collect::<Vec<_>>(), vec![ids[3]]);
    let due = store
        .claim_due("n1", later, Millis(later.0 + 30_000), 5)
        .await
        .unwrap();
    assert_eq!(due.iter().map(|c| c.id).collect::<Vec<_>>(), vec![ids[2]]);
}

/// A fast trunk's line: one round books every token back within `BOOK_AHEAD`, each call's
/// INVITE an interval after the one before, and the rest keep their places; the next round
/// books on from where the last one ended.
async fn story_a_round_books_a_fast_trunks_tokens(store: Arc<dyn Store>) {
    use domain::dispatch::{BeginDial, DialLimits, DialStart};
    use domain::pacing::{CallsPerSecond, TokenBucket, BOOK_AHEAD};
    use domain::tenant::NewTrunk;
    // A token every 25 ms: 10 of them within the 250 ms a round books.
    let rate = CallsPerSecond::new(40.0).unwrap();
    assert_eq!(BOOK_AHEAD, std::time::Duration::from_millis(250));
    let trunk = NewTrunk {
        max_calls_per_second: Some(rate),
        ..NewTrunk::new("carrier", "sip:127.0.0.1:5080")
    };
    let (t, agent) = testkit::dialling_agent_on(
        store.as_ref(),
        "acme",
        "+918035739222",
        &trunk,
        json!({}),
        T0,
    )
    .await;
    let mut ids = Vec::new();
    for i in 0..14 {
        let call = new_call(t, agent, &format!("+9198765000{i:02}"), Millis(T0.0 + i));
        ids.push(store.create_call(call).await.unwrap().conversation_id);
    }
    let now = Millis(T0.0 + 1_000);
    let lease = Millis(now.0 + 30_000);
    let carrier = store.list_trunks(t).await.unwrap().remove(0).id;
    assert_eq!(
        store.park_calls("n1", carrier, now, "paced").await.unwrap(),
        14
    );
    let limits = DialLimits {
        pace: Some((carrier, TokenBucket::new(rate))),
        ..Default::default()
    };
    let starts = |calls: Vec<domain::dispatch::DueCall>| -> Vec<DialStart> {
        calls
            .into_iter()
            .map(|c| DialStart {
                id: c.id,
                trunk: Some(carrier),
                limits: limits.clone(),
            })
            .collect()
    };
    let head = store
        .claim_lane("n1", carrier, now, lease, 12)
        .await
        .unwrap();
    let outcomes = store
        .begin_dials("n1", now, lease, &starts(head))
        .await
        .unwrap();
    let mut expected = vec![BeginDial::Started];
    expected.extend((1..10).map(|i| BeginDial::Booked(Millis(now.0 + 25 * i))));
    expected.extend([BeginDial::Paced, BeginDial::Paced]);
    assert_eq!(outcomes, expected);
    // A booked call starts when its INVITE leaves.
    for (n, id) in ids.iter().enumerate() {
        let c = store.get_conversation(t, *id).await.unwrap().unwrap();
        let want = if n < 10 {
            (
                domain::CallStatus::Initiated,
                Some(Millis(now.0 + 25 * n as i64)),
            )
        } else {
            (domain::CallStatus::Queued, None)
        };
        assert_eq!((c.status, c.started_at), want, "call {n}");
    }
    assert_eq!(
        store.trunk_lanes(now).await.unwrap()[0].dial_after,
        Some(Millis(now.0 + 250))
    );
    // 75 ms on, the tokens back by 325 ms: the line's next three, in order.
    let later = Millis(now.0 + 75);
    let next = store
        .claim_lane("n1", carrier, later, lease, 3)
        .await
        .unwrap();
    assert_eq!(next.iter().map(|c| c.id).collect::<Vec<_>>(), ids[10..13]);
    let outcomes = store
        .begin_dials("n1", later, lease, &starts(next))
        .await
        .unwrap();
    assert_eq!(
        outcomes,
        (0..3)
            .map(|i| BeginDial::Booked(Millis(now.0 + 250 + 25 * i)))
            .collect::<Vec<_>>()
    );
}

/// Each story on every backend, and on SQLite without the group-commit writer.
macro_rules! on_both {
    ($name:ident, $story:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
        async fn $name() {
            for backend in backends() {
                let db = backend.open().await;
                $story(db.store()).await;
                db.finish().await;
            }
            // SQLite again with the group-commit writer off: `POST /v1/call` on the sqlx path.
            let db = Backend::Sqlite
                .open_with(store::StoreOptions {
                    group_commit: false,
                    ..Default::default()
                })
                .await;
            $story(db.store()).await;
            db.finish().await;
        }
    };
}

/// The retry is the settlement's: the agent's policy as the settling transaction reads it
/// schedules the chain's next attempt (a node's report carries no retry), and an agent deleted
/// while its call was live gets none.
async fn story_retries_by_the_agents_policy(store: Arc<dyn Store>) {
    use domain::dispatch::{BeginDial, DialLimits, FinishAttempt};
    use domain::CallStatus;
    let policy = json!({"retry_policy": {"on": ["busy"], "max_attempts": 2, "delay_seconds": 60}});
    let mut calls = Vec::new();
    for (name, number) in [("kept", "+918035739222"), ("gone", "+918035739223")] {
        let (t, agent) =
            testkit::dialling_agent(store.as_ref(), name, number, None, policy.clone(), T0).await;
        let id = store
            .create_call(new_call(t, agent, "+919876500001", T0))
            .await
            .unwrap()
            .conversation_id;
        calls.push((t, agent, id));
    }
    let lease_until = Millis(T0.0 + 30_000);
    for call in store.claim_due("n1", T0, lease_until, 10).await.unwrap() {
        let started = store
            .begin_dial(call.id, "n1", T0, lease_until, None, &DialLimits::default())
            .await
            .unwrap();
        assert_eq!(started, BeginDial::Started);
    }
    let (gone_tenant, gone_agent, _) = calls[1];
    assert!(store
        .delete_agent(gone_tenant, gone_agent, T0)
        .await
        .unwrap());
    let now = Millis(T0.0 + 20_000);
    let busy = |id| FinishAttempt {
        failure_reason: Some("486 Busy Here".into()),
        ..FinishAttempt::bare(id, "n1", CallStatus::Busy, now)
    };
    let mut settled = Vec::new();
    for (t, _, id) in &calls {
        let done = store.finish_attempt(busy(*id), now).await.unwrap().unwrap();
        let next = store.get_conversation(*t, id.next_attempt()).await.unwrap();
        settled.push((done.retry_at, next.map(|c| (c.status, c.scheduled_for))));
    }
    let due = Millis(now.0 + 60_000);
    assert_eq!(
        settled,
        vec![
            (Some(due), Some((CallStatus::Scheduled, Some(due)))),
            (None, None),
        ]
    );
    // The last attempt the policy allows is not retried.
    let (t, _, first) = calls[0];
    let second = first.next_attempt();
    let lease_until = Millis(due.0 + 30_000);
    assert_eq!(
        store
            .claim_due("n1", due, lease_until, 10)
            .await
            .unwrap()
            .len(),
        1
    );
    let started = store
        .begin_dial(second, "n1", due, lease_until, None, &DialLimits::default())
        .await
        .unwrap();
    assert_eq!(started, BeginDial::Started);
    let last = FinishAttempt {
        ended_at: due,
        ..busy(second)
    };
    let done = store.finish_attempt(last, due).await.unwrap().unwrap();
    assert_eq!(done.retry_at, None);
    let third = store
        .get_conversation(t, second.next_attempt())
        .await
        .unwrap();
    assert!(third.is_none());
}

async fn keys_and_agents(store: Arc<dyn Store>) {
    story_keys_and_agents(store.as_ref()).await
}
async fn calls(store: Arc<dyn Store>) {
    story_calls(store.as_ref()).await
}

on_both!(keys_and_agents_on_every_backend, keys_and_agents);
on_both!(calls_on_every_backend, calls);
on_both!(idempotency_race_on_every_backend, story_idempotency_race);
on_both!(limits_race_on_every_backend, story_limits_race);
on_both!(do_not_call_on_every_backend, story_do_not_call);
on_both!(trunk_lines_on_every_backend, story_trunk_lines);
on_both!(
    a_round_books_a_fast_trunks_tokens_on_every_backend,
    story_a_round_books_a_fast_trunks_tokens
);
on_both!(
    transcription_jobs_on_every_backend,
    story_transcription_jobs
);
on_both!(
    post_call_transcripts_on_every_backend,
    story_post_call_transcripts
);
on_both!(
    retries_by_the_agents_policy_on_every_backend,
    story_retries_by_the_agents_policy
);

#[test]
fn both_backends_are_covered_unless_postgres_is_skipped_knowingly() {
    let n = backends().len();
    assert_eq!(n, if common::skip_postgres() { 1 } else { 2 });
    assert!(matches!(backends()[0], Backend::Sqlite));
}
