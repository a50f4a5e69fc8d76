//! A settlement as data: what ending an attempt, or cancelling a call still waiting, does
//! besides changing its status. [`settle`] takes the call as the settling transaction read it and
//! what happened, and returns a [`Decision`]: the history rows, the `call.<outcome>` webhook
//! event, the chain's next attempt, the batch counter the recipient moves to, the do-not-call
//! listing and the post-call transcript job. The store writes decisions and decides nothing.
//!
//! The retry is decided here, from the agent's retry policy as the settling transaction read
//! it, not by the node that dialled: the webhook's `retry` block (`max_attempts`,
//! `is_final_attempt`, `next_retry_at`), the next attempt's row and the batch's `pending_retry`
//! counter all follow from that one answer, so they cannot disagree, and every settling path
//! (a node's report, the orphan sweep, a stop's leftover calls) gets it the same way.

use super::Transition;
use crate::agent::{AgentConfig, RetryPolicy};
use crate::batch::BatchCounter;
use crate::call::Conversation;
use crate::do_not_call::Listing;
use crate::transcription::PostCallJob;
use crate::webhooks::terminal::{terminal_event, TerminalEventError};
use crate::webhooks::OutboxEvent;
use crate::{CallStatus, ConversationId, Millis, TenantId, E164};

/// The do-not-call reason of a number listed because its callee asked during a call.
pub const OPTED_OUT_REASON: &str = "asked during the call";

/// The call as the settling transaction read it: the row its fenced update (the transition's
/// `WHERE status IN (...)`) has just changed, returned by that same statement, so it shows the
/// call as settled (status, ended_at, duration, ...), and its agent.
#[derive(Debug, Clone, Copy)]
pub struct Settling<'a> {
    pub call: &'a Conversation,
    /// The agent's configuration as stored, deleted or not (`None`: no row, or one that no
    /// longer parses): the webhook's `max_attempts` and the next attempt's `retry_context`.
    pub agent: Option<&'a AgentConfig>,
    /// The agent's retry policy; `None` too once the agent is deleted: nobody is called again
    /// for an agent that is gone.
    pub retry_policy: Option<&'a RetryPolicy>,
    pub now: Millis,
}

/// What happened to the call.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Its node reports the attempt's end: a dialled attempt's outcome, or `failed` for a
    /// claimed call it could not dial. A node that died or stopped is reported the same way,
    /// `failed` with [`crate::dispatch::INTERRUPTED`] (the table's `Interrupt`).
    Ended(Ended),
    /// Taken back while waiting (the API, a batch's cancel, a do-not-call listing); `detail`
    /// is the history row's.
    Canceled { detail: Option<String> },
}

/// The end of an attempt, as its node reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Ended {
    pub outcome: CallStatus,
    /// The callee asked not to be called again: the number is listed and nothing is retried.
    pub opted_out: bool,
    /// Base URL of the API, for the webhook's `recording_url`.
    pub public_url: String,
    /// The post-call transcript the agent asks for, written with the settlement.
    pub post_call: Option<PostCallJob>,
}

/// Everything a settlement writes besides the status, which the fenced update already wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub call: ConversationId,
    pub tenant: TenantId,
    pub status: CallStatus,
    /// History rows, in order: the settled attempt's, then its retry's first.
    pub events: Vec<HistoryRow>,
    /// The `call.<status>` event for the outbox.
    pub webhook: OutboxEvent,
    /// The chain's next attempt: a copy of this one, `scheduled` for `due`.
    pub retry: Option<Retry>,
    pub batch: Option<BatchMove>,
    /// A number to list (`source: call`); its listing cancels the calls still waiting for it.
    pub do_not_call: Option<Listing>,
    pub post_call: Option<PostCallJob>,
}

/// One `call_events` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    pub call: ConversationId,
    pub at: Millis,
    pub status: CallStatus,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retry {
    /// The attempt it repeats (the row it copies).
    pub of: ConversationId,
    pub id: ConversationId,
    pub due: Millis,
}

/// One recipient of a batch moving between counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMove {
    pub batch: i64,
    pub from: BatchCounter,
    pub to: BatchCounter,
    /// Added to the completed calls' duration sum.
    pub duration_seconds: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum SettleError {
    /// The store wrote a status the event does not lead to: a caller's bug.
    #[error("a call settled {found} by {event:?}, which leads to {expected:?}")]
    Mismatch {
        found: CallStatus,
        expected: Option<CallStatus>,
        event: Transition,
    },
    #[error("building the webhook event")]
    Webhook(#[source] TerminalEventError),
}

/// The transition `event` is for a call in this state: an end reported for a call that was
/// never dialled (`started_at` unset) is a refusal.
pub fn transition(call: &Conversation, event: &Event) -> Transition {
    match event {
        Event::Ended(e) if call.started_at.is_some() => Transition::End(e.outcome),
        Event::Ended(_) => Transition::Refuse,
        Event::Canceled { .. } => Transition::Cancel,
    }
}

/// Decides what settling the call does. Pure: the same state and event give the same decision
/// (but for the webhook event's random id).
pub fn settle(state: Settling<'_>, event: Event) -> Result<Decision, SettleError> {
    let c = state.call;
    let transition = transition(c, &event);
    let expected = transition.to();
    let consistent = match &event {
        Event::Ended(e) => expected == Some(c.status) && e.outcome == c.status,
        // Only a call never dialled is cancelled: a person may already hear the phone ring.
        Event::Canceled { .. } => expected == Some(c.status) && c.started_at.is_none(),
    };
    if !consistent {
        return Err(SettleError::Mismatch {
            found: c.status,
            expected,
            event: transition,
        });
    }
    let now = state.now;
    let started = c.started_at.is_some();
    // Only a dialled attempt is tried again: one refused before dialling would be refused again.
    let retry = match &event {
        Event::Ended(e) if started && !e.opted_out => {
            crate::dispatch::retry_delay(state.retry_policy, c.status, c.id.attempt).map(|d| {
                Retry {
                    of: c.id,
                    id: c.id.next_attempt(),
                    due: Millis(now.0.saturating_add(d.as_millis() as i64)),
                }
            })
        }
        _ => None,
    };
    let detail = match &event {
        Event::Ended(_) => c.failure_reason.clone(),
        Event::Canceled { detail } => detail.clone(),
    };
    let mut events = vec![HistoryRow {
        call: c.id,
        at: c.ended_at.unwrap_or(now),
        status: c.status,
        detail,
    }];
    if let Some(r) = &retry {
        events.push(HistoryRow {
            call: r.id,
            at: now,
            status: CallStatus::Scheduled,
            detail: Some(format!("retry of {}", c.id)),
        });
    }
    // A cancelled call never rang, so it has no recording and its event no URL to build.
    let public_url = match &event {
        Event::Ended(e) => e.public_url.as_str(),
        Event::Canceled { .. } => "",
    };
    let webhook = terminal_event(c, state.agent, retry.map(|r| r.due), public_url, now)
        .map_err(SettleError::Webhook)?;
    let batch = c.batch_id.map(|batch| {
        // An attempt settled without being dialled (cancelled, refused) was still waiting.
        let from = if started {
            BatchCounter::InProgress
        } else {
            BatchCounter::waiting(c.id.attempt)
        };
        let (to, duration_seconds) = match retry {
            Some(_) => (BatchCounter::PendingRetry, 0),
            None if c.status == CallStatus::Completed => {
                (BatchCounter::Completed, c.duration_seconds.unwrap_or(0))
            }
            None => (BatchCounter::outcome(c.status), 0),
        };
        BatchMove {
            batch,
            from,
            to,
            duration_seconds,
        }
    });
    let (do_not_call, post_call) = match event {
        Event::Ended(e) => (
            e.opted_out.then(|| Listing {
                number: E164::from_trusted(c.contact_number.clone()),
                reason: Some(OPTED_OUT_REASON.into()),
            }),
            e.post_call,
        ),
        Event::Canceled { .. } => (None, None),
    };
    Ok(Decision {
        call: c.id,
        tenant: c.tenant,
        status: c.status,
        events,
        webhook,
        retry,
        batch,
        do_not_call,
        post_call,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::BatchCounts;
    use crate::dispatch::FinishAttempt;
    use crate::{AgentId, TraceId};
    use CallStatus::*;

    const NOW: Millis = Millis(1_775_000_000_000);
    const ENDED: Millis = Millis(1_774_999_990_000);
    const URL: &str = "http://127.0.0.1:8080";
    const OUTCOMES: &[CallStatus] = super::super::DIALLED_OUTCOMES;

    /// The call as a settling update left it.
    fn call(status: CallStatus, attempt: u32, started: bool, batch: Option<i64>) -> Conversation {
        let mut id = ConversationId::first(Millis(1_700_000_000_000));
        id.attempt = attempt;
        Conversation {
            id,
            tenant: TenantId(7),
            agent: AgentId(3),
            status,
            contact_number: "+919876543210".into(),
            from_number: "+918035739222".into(),
            parameters: Vec::new(),
            metadata: None,
            retry_context: None,
            scheduled_for: None,
            trace_id: TraceId::new(),
            failure_reason: (status != Completed && status != Canceled).then(|| "why".into()),
            results: Default::default(),
            transcript: Vec::new(),
            recording_path: None,
            created_at: Millis(0),
            started_at: started.then_some(Millis(ENDED.0 - 60_000)),
            ended_at: Some(if status == Canceled { NOW } else { ENDED }),
            duration_seconds: (started && status == Completed).then_some(42),
            batch_id: batch,
            latency: None,
            stage_id: None,
            answered_by: None,
            transfer: None,
        }
    }

    /// Retries every outcome, three attempts in all, a minute apart.
    fn policy() -> RetryPolicy {
        RetryPolicy {
            on: OUTCOMES.iter().map(|s| s.as_str().to_string()).collect(),
            max_attempts: 3,
            delay_seconds: 60,
        }
    }

    fn agent() -> AgentConfig {
        let config = serde_json::json!({"name": "a", "retry_policy":
            {"on": ["busy"], "max_attempts": 3, "delay_seconds": 60}});
        AgentConfig::from_json(config.as_object().unwrap()).unwrap()
    }

    fn ended(outcome: CallStatus) -> Event {
        Event::Ended(Ended {
            outcome,
            opted_out: false,
            public_url: URL.into(),
            post_call: None,
        })
    }

    fn decide(c: &Conversation, policy: Option<&RetryPolicy>, event: Event) -> Decision {
        let agent = agent();
        let state = Settling {
            call: c,
            agent: Some(&agent),
            retry_policy: policy,
            now: NOW,
        };
        settle(state, event).unwrap()
    }

    fn retry_block(d: &Decision) -> &serde_json::Value {
        &d.webhook.payload["data"]["retry"]
    }

    #[test]
    fn each_outcome_with_and_without_a_retry_in_and_out_of_a_batch() {
        let policy = policy();
        for &outcome in OUTCOMES {
            for retrying in [false, true] {
                for batch in [None, Some(9)] {
                    let c = call(outcome, 1, true, batch);
                    let d = decide(&c, retrying.then_some(&policy), ended(outcome));
                    let case = format!("{outcome} retry {retrying} batch {batch:?}");
                    assert_eq!(d.status, outcome, "{case}");
                    assert_eq!(d.webhook.event_type, format!("call.{outcome}"), "{case}");
                    assert_eq!(d.events[0].call, c.id, "{case}");
                    assert_eq!(d.events[0].at, ENDED, "{case}");
                    assert_eq!(d.events[0].status, outcome, "{case}");
                    assert_eq!(d.events[0].detail, c.failure_reason, "{case}");
                    assert_eq!((d.do_not_call.as_ref(), d.post_call.as_ref()), (None, None));
                    if retrying {
                        let next = c.id.next_attempt();
                        let due = Millis(NOW.0 + 60_000);
                        assert_eq!(
                            d.retry,
                            Some(Retry {
                                of: c.id,
                                id: next,
                                due
                            }),
                            "{case}"
                        );
                        assert_eq!(
                            d.events[1],
                            HistoryRow {
                                call: next,
                                at: NOW,
                                status: Scheduled,
                                detail: Some(format!("retry of {}", c.id)),
                            }
                        );
                        assert_eq!(retry_block(&d)["is_final_attempt"], false, "{case}");
                        assert_eq!(
                            retry_block(&d)["next_retry_at"],
                            due.to_datetime()
                                .to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        );
                    } else {
                        assert_eq!((d.retry, d.events.len()), (None, 1), "{case}");
                        assert_eq!(retry_block(&d)["is_final_attempt"], true, "{case}");
                    }
                    let want = batch.map(|b| BatchMove {
                        batch: b,
                        from: BatchCounter::InProgress,
                        to: match (retrying, outcome) {
                            (true, _) => BatchCounter::PendingRetry,
                            (false, Completed) => BatchCounter::Completed,
                            (false, Busy) => BatchCounter::Busy,
                            (false, NoAnswer) => BatchCounter::NoAnswer,
                            (false, Unreachable) => BatchCounter::Unreachable,
                            (false, SocketFailure) => BatchCounter::SocketFailure,
                            (false, _) => BatchCounter::Failed,
                        },
                        duration_seconds: if !retrying && outcome == Completed {
                            42
                        } else {
                            0
                        },
                    });
                    assert_eq!(d.batch, want, "{case}");
                }
            }
        }
    }

    #[test]
    fn a_claimed_call_never_dialled_is_refused_failed_and_never_retried() {
        let policy = policy();
        for (attempt, from) in [(1, BatchCounter::Pending), (2, BatchCounter::PendingRetry)] {
            let c = call(Failed, attempt, false, Some(9));
            let d = decide(&c, Some(&policy), ended(Failed));
            assert_eq!(d.retry, None);
            assert_eq!(d.events.len(), 1);
            let to = BatchCounter::Failed;
            let want = BatchMove {
                batch: 9,
                from,
                to,
                duration_seconds: 0,
            };
            assert_eq!(d.batch, Some(want));
        }
        // Only `failed`: any other outcome of a call never dialled is a caller's bug.
        let c = call(Busy, 1, false, None);
        let agent = agent();
        let state = Settling {
            call: &c,
            agent: Some(&agent),
            retry_policy: None,
            now: NOW,
        };
        assert!(matches!(
            settle(state, ended(Busy)),
            Err(SettleError::Mismatch {
                event: Transition::Refuse,
                ..
            })
        ));
    }

    #[test]
    fn the_last_attempt_and_an_opt_out_are_final() {
        let policy = policy();
        let last = call(Busy, 3, true, Some(9));
        let d = decide(&last, Some(&policy), ended(Busy));
        assert_eq!(d.retry, None);
        assert_eq!(d.batch.map(|m| m.to), Some(BatchCounter::Busy));
        assert_eq!(retry_block(&d)["attempt_number"], 3);
        assert_eq!(retry_block(&d)["max_attempts"], 3);

        let c = call(Completed, 1, true, None);
        let opted_out = Event::Ended(Ended {
            outcome: Completed,
            opted_out: true,
            public_url: URL.into(),
            post_call: None,
        });
        let d = decide(&c, Some(&policy), opted_out);
        assert_eq!(d.retry, None, "an opted-out callee is not called again");
        let listing = Listing {
            number: E164::from_trusted("+919876543210".into()),
            reason: Some(OPTED_OUT_REASON.into()),
        };
        assert_eq!(d.do_not_call, Some(listing));
    }

    #[test]
    fn a_deleted_agent_has_no_policy_so_no_retry_but_its_envelope_keeps_the_chain_length() {
        let c = call(Busy, 1, true, None);
        let d = decide(&c, None, ended(Busy));
        assert_eq!(d.retry, None);
        assert_eq!(retry_block(&d)["max_attempts"], 3);
        assert_eq!(retry_block(&d)["is_final_attempt"], true);
    }

    #[test]
    fn cancelling_a_waiting_first_attempt_and_a_waiting_retry() {
        let policy = policy();
        for (attempt, from) in [(1, BatchCounter::Pending), (2, BatchCounter::PendingRetry)] {
            for batch in [None, Some(9)] {
                let c = call(Canceled, attempt, false, batch);
                let detail = Some("batch canceled".to_string());
                let d = decide(
                    &c,
                    Some(&policy),
                    Event::Canceled {
                        detail: detail.clone(),
                    },
                );
                assert_eq!(d.webhook.event_type, "call.canceled");
                assert_eq!(d.retry, None);
                let row = HistoryRow {
                    call: c.id,
                    at: NOW,
                    status: Canceled,
                    detail,
                };
                assert_eq!(d.events, vec![row]);
                let to = BatchCounter::Canceled;
                let want = batch.map(|batch| BatchMove {
                    batch,
                    from,
                    to,
                    duration_seconds: 0,
                });
                assert_eq!(d.batch, want);
                assert_eq!(retry_block(&d)["is_final_attempt"], true);
            }
        }
        // A call that began dialling is never cancelled.
        let c = call(Canceled, 1, true, None);
        let state = Settling {
            call: &c,
            agent: None,
            retry_policy: None,
            now: NOW,
        };
        let canceled = Event::Canceled { detail: None };
        assert!(matches!(
            settle(state, canceled),
            Err(SettleError::Mismatch { .. })
        ));
    }

    #[test]
    fn an_interrupted_call_is_a_failure_the_policy_may_retry() {
        let policy = policy();
        let mut c = call(Failed, 1, true, Some(9));
        c.failure_reason = Some(crate::dispatch::INTERRUPTED.into());
        let report = FinishAttempt::interrupted(c.id, "n1", URL, NOW);
        let d = decide(&c, Some(&policy), report.event());
        assert_eq!(d.events[0].detail.as_deref(), Some("interrupted"));
        assert_eq!(d.retry.map(|r| r.due), Some(Millis(NOW.0 + 60_000)));
        assert_eq!(
            d.batch.map(|m| (m.from, m.to)),
            Some((BatchCounter::InProgress, BatchCounter::PendingRetry))
        );
        let d = decide(&c, None, report.event());
        assert_eq!(d.batch.map(|m| m.to), Some(BatchCounter::Failed));
    }

    #[test]
    fn every_move_leaves_a_batch_of_the_same_size_from_an_unfinished_counter() {
        let policy = policy();
        let mut cases = Vec::new();
        for &outcome in OUTCOMES {
            for p in [None, Some(&policy)] {
                cases.push((call(outcome, 1, true, Some(1)), p, ended(outcome)));
            }
        }
        cases.push((
            call(Failed, 2, false, Some(1)),
            Some(&policy),
            ended(Failed),
        ));
        cases.push((
            call(Canceled, 2, false, Some(1)),
            None,
            Event::Canceled { detail: None },
        ));
        for (c, p, event) in cases {
            let m = decide(&c, p, event).batch.unwrap();
            assert!(m.from.unfinished(), "{m:?}");
            let delta = BatchCounts::default().moved(m.from, m.to, m.duration_seconds);
            assert_eq!(delta.total(), 0, "{m:?}");
            assert_eq!(delta.get(m.to), 1, "{m:?}");
        }
    }

    #[test]
    fn the_recording_url_is_built_from_the_reported_public_url() {
        let mut c = call(Completed, 1, true, None);
        c.recording_path = Some("/var/rec/x.wav".into());
        let d = decide(&c, None, ended(Completed));
        let url = d.webhook.payload["data"]["call"]["recording_url"]
            .as_str()
            .unwrap();
        assert!(
            url.starts_with("http://127.0.0.1:8080/v1/conversations/"),
            "{url}"
        );
    }
}
