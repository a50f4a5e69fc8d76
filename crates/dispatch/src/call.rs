//! One dialled call, from the durable `initiated` to its settled outcome.

use crate::Dispatcher;
use domain::call::{CallLatency, TranscriptItem};
use domain::dispatch::{DueCall, FinishAttempt, Progress};
use domain::telephony::{CallControl, CallEnd, CallEvent, DialError, DialRequest};
use domain::transcription::PostCallJob;
use domain::{CallStatus, Millis};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

type Results = serde_json::Map<String, serde_json::Value>;

/// What the conversation of an answered call hands back to be settled.
#[derive(Default)]
struct Talk {
    transcript: Vec<TranscriptItem>,
    results: Results,
    latency: Option<CallLatency>,
    stage_id: Option<String>,
    answered_by: Option<domain::call::AnsweredBy>,
    transfer: Option<domain::call::Transfer>,
}

type Speech = tokio::task::JoinHandle<Result<Vec<i16>, agent::TtsError>>;

/// A line synthesised while the phone rang, once the call is answered; `None` (logged) when
/// it could not be.
async fn spoken(text: Option<String>, speech: Option<Speech>) -> Option<agent::Opening> {
    match (text, speech) {
        (Some(text), Some(task)) => match task.await {
            Ok(Ok(audio)) => Some(agent::Opening { text, audio }),
            Ok(Err(e)) => {
                tracing::error!(error = %e, line = %text, "a line could not be synthesised");
                None
            }
            Err(e) => {
                tracing::error!(error = %e, "speech task failed");
                None
            }
        },
        _ => None,
    }
}

impl Dispatcher {
    pub(crate) async fn run_call(self: Arc<Self>, call: DueCall) {
        let span =
            tracing::info_span!("call", conversation_id = %call.id, trace_id = %call.trace_id);
        async {
            let end = self.dial_and_follow(&call).await;
            if self.abandoned(call.id) {
                // A stop settled it `interrupted` before hanging up: the end we saw is ours.
                tracing::info!("hung up by the node's stop");
            } else {
                self.settle(&call, end).await;
            }
            self.untrack(call.id);
        }
        .instrument(span)
        .await
    }

    /// Dials and follows the call's events to its end; once answered, the agent's conversation
    /// runs beside it and hands back what was played and heard, and the results.
    async fn dial_and_follow(&self, call: &DueCall) -> (CallEnd, Talk) {
        let now = self.clock.now();
        let failed = |status, reason: String| {
            (
                CallEnd {
                    status,
                    failure_reason: Some(reason),
                    answered_at: None,
                    ended_at: self.clock.now(),
                    recording: None,
                    retry_after: None,
                },
                Talk::default(),
            )
        };
        let (Some(agent), Some(trunk)) = (&call.agent_config, &call.trunk) else {
            return failed(CallStatus::Failed, "agent or trunk vanished".into());
        };
        let request = DialRequest {
            conversation_id: call.id,
            trace_id: call.trace_id,
            from: trunk.from.clone(),
            to: call.customer_phone.clone(),
            trunk: trunk.target.clone(),
            ring_timeout: Duration::from_secs(u64::from(agent.ring_timeout_seconds)),
            max_duration: Duration::from_secs(u64::from(agent.max_duration_seconds)),
        };
        // The opening line is synthesised while the phone rings, so the callee hears it as soon
        // as they pick up, and never before.
        let opening = agent::opening_line(agent, &call.parameters, call.retry_context.as_ref());
        // The agent's `voice.engine` and `transcriber.engine` may name other engines; the
        // call's language (a retry's, else the agent's) picks that engine's voice.
        let language = call
            .retry_context
            .as_ref()
            .and_then(|r| r.retry_language.as_deref());
        let voice = domain::language::call_voice(agent, language.unwrap_or(&agent.language));
        let (call_tts, call_stt) =
            agent::engines_for(agent, language, &self.engines.tts, &self.engines.stt);
        // The service's disclosure, then the agent's own: an agent cannot drop the tenant's.
        let disclosure = [self.config.disclosure.as_ref(), agent.disclosure.as_ref()]
            .into_iter()
            .flatten()
            .map(|t| agent::render(t, &call.parameters))
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
            .collect::<Vec<_>>()
            .join(" ");
        let disclosure = Some(disclosure).filter(|t| !t.is_empty());
        let synthesize = |line: Option<String>| {
            let tts = call_tts.clone();
            let voice = voice.clone();
            line.map(|line| {
                tokio::spawn(async move { tts.synthesize(&line, voice.as_deref()).await })
            })
        };
        let speech = synthesize(opening.clone());
        let disclosure_speech = synthesize(disclosure.clone());
        let mut live = match self.telephony.dial(request).await {
            Ok(live) => live,
            Err(DialError::Invalid(reason)) => return failed(CallStatus::Failed, reason),
            Err(e @ DialError::Unavailable(_)) => {
                return failed(CallStatus::TelephonyFailed, e.to_string())
            }
        };
        if !self.attach_control(call.id, live.control.clone()) {
            // A stop settled the call while it was being placed: it must not go on.
            let _ = live.control.send(CallControl::Hangup).await;
        }
        metrics::counter!("outdial_dial_attempts_total").increment(1);
        tracing::info!(started_ms = now.0, "dialling");
        let mut speech = speech;
        let mut disclosure_speech = disclosure_speech;
        let mut conversation = None;
        // The call's transfer outcome: recorded here, and passed on to the agent, which decides
        // what it says next.
        let mut transfer = None;
        let (outcomes_tx, outcomes) = tokio::sync::mpsc::channel(1);
        let mut outcomes = Some(outcomes);
        loop {
            let Some(event) = live.events.recv().await else {
                return failed(
                    CallStatus::Failed,
                    "telephony stopped reporting on the call".into(),
                );
            };
            match event {
                CallEvent::Ringing | CallEvent::EarlyMedia => {
                    let _ = self.mark(call, CallStatus::Ringing, self.clock.now()).await;
                }
                CallEvent::Answered { at, media } => {
                    let _ = self.mark(call, CallStatus::InProgress, at).await;
                    let opening = spoken(opening.clone(), speech.take()).await;
                    let disclosure = spoken(disclosure.clone(), disclosure_speech.take()).await;
                    let session = agent::Session {
                        trace_id: call.trace_id.to_string(),
                        brain: agent::brain_for(
                            agent,
                            &call.parameters,
                            call.retry_context.as_ref(),
                            &self.engines.llm,
                        ),
                        tts: call_tts.clone(),
                        stt: call_stt.clone(),
                        voice: voice.clone(),
                        disclosure,
                        opening,
                        answered_at: tokio::time::Instant::now(),
                        answered_at_ms: at.0,
                        timing: agent::Timing::for_agent(agent),
                        voicemail: agent.voicemail.detect.then(|| agent::VoicemailPlan {
                            message: agent
                                .voicemail
                                .message_to_leave()
                                .map(|m| agent::render(m, &call.parameters)),
                            detector: self.config.amd,
                        }),
                        transfer: agent.transfer.as_ref().and_then(|t| {
                            Some(agent::TransferPlan {
                                targets: t.targets.clone(),
                                say: t
                                    .say
                                    .as_deref()
                                    .map(|s| agent::render(s, &call.parameters))
                                    .filter(|s| !s.trim().is_empty()),
                                outcomes: outcomes.take()?,
                            })
                        }),
                    };
                    conversation = Some(tokio::spawn(agent::converse(
                        session,
                        media,
                        live.control.clone(),
                    )));
                }
                CallEvent::Dtmf(digit) => tracing::info!(%digit, "dtmf"),
                CallEvent::Transfer(outcome) => {
                    transfer = Some(outcome.clone());
                    let _ = outcomes_tx.try_send(outcome);
                }
                CallEvent::Ended(end) => {
                    let Some(task) = conversation else {
                        return (
                            end,
                            Talk {
                                transfer,
                                ..Talk::default()
                            },
                        );
                    };
                    // The inbound stream has closed, so the conversation returns at once.
                    return match tokio::time::timeout(Duration::from_secs(10), task).await {
                        Ok(Ok(outcome)) => {
                            for t in &outcome.turns {
                                metrics::histogram!("outdial_turn_latency_seconds")
                                    .record(t.voice_to_voice_ms as f64 / 1000.0);
                                metrics::histogram!("outdial_pipeline_added_seconds")
                                    .record(t.added_us as f64 / 1e6);
                            }
                            if let Some(ms) = outcome.answer_to_first_word_ms {
                                metrics::histogram!("outdial_answer_to_first_word_seconds")
                                    .record(ms as f64 / 1000.0);
                            }
                            let latency = CallLatency {
                                turns_ms: outcome.turn_latencies_ms(),
                                answer_to_first_word_ms: outcome.answer_to_first_word_ms,
                            };
                            let talk = Talk {
                                transcript: outcome.transcript,
                                results: outcome.results,
                                latency: Some(latency),
                                stage_id: outcome.stage_id,
                                answered_by: Some(outcome.answered_by),
                                transfer,
                            };
                            (end, talk)
                        }
                        _ => {
                            tracing::error!("the conversation did not finish with the call");
                            (
                                end,
                                Talk {
                                    transfer,
                                    ..Talk::default()
                                },
                            )
                        }
                    };
                }
            }
        }
    }

    async fn mark(
        &self,
        call: &DueCall,
        status: CallStatus,
        at: Millis,
    ) -> Result<bool, crate::settler::SettleError> {
        let mark = Progress {
            id: call.id,
            status,
            at,
        };
        Ok(self.marker().submit(mark).await??)
    }

    async fn settle(&self, call: &DueCall, (end, talk): (CallEnd, Talk)) {
        let Talk {
            transcript,
            results,
            latency,
            stage_id,
            answered_by,
            transfer,
        } = talk;
        let now = self.clock.now();
        // Before the settlement frees the call's place under the caps: a call waiting for that
        // place must find the trunk's gate shut already.
        if let (Some(wait), Some(trunk)) = (end.retry_after, &call.trunk) {
            let until = domain::pacing::hold_until(now, wait);
            match self.store.hold_trunk(trunk.id, until).await {
                Ok(()) => {
                    tracing::warn!(trunk_id = trunk.id.0, until = %until.to_rfc3339(), "the trunk asked to wait (503 Retry-After): nothing new goes to it until then")
                }
                Err(e) => tracing::error!(error = %e, "holding the trunk failed"),
            }
        }
        let status = if end.status.is_terminal() {
            end.status
        } else {
            CallStatus::Failed
        };
        // A callee who asked not to be called again: the settlement lists the number, cancels
        // whatever else was waiting for it and retries nothing (`domain::lifecycle::settle`).
        let opted_out = end.answered_at.is_some()
            && results.get(agent::opt_out::RESULT) == Some(&serde_json::Value::Bool(true));
        let duration_seconds = end
            .answered_at
            .map(|a| ((end.ended_at.0 - a.0).max(0) + 500) / 1000);
        // Only what was heard: an unanswered call has no transcript.
        let transcript = if end.answered_at.is_some() {
            transcript
        } else {
            Vec::new()
        };
        // The conversation's results start from the retry context's collected data; a call
        // that was never answered keeps that seed.
        let results = if end.answered_at.is_some() {
            results
        } else {
            call.retry_context
                .as_ref()
                .and_then(|r| r.collected_data.clone())
                .unwrap_or_default()
        };
        // The agent's post-call transcript reads the recording where it lies; its size is
        // only recorded (a file that cannot be looked at now still gets its job, which then
        // says why it failed).
        let recording_bytes = match &end.recording {
            Some(path) => Some(
                tokio::fs::metadata(path)
                    .await
                    .map(|m| m.len())
                    .unwrap_or_default(),
            ),
            None => None,
        };
        let post_call = PostCallJob::for_call(call, recording_bytes, agent::whisper_jobs::ENGINE);
        let transcribe = post_call.is_some();
        let finish = FinishAttempt {
            id: call.id,
            node: self.config.node_id.clone(),
            status,
            failure_reason: if status == CallStatus::Completed {
                None
            } else {
                end.failure_reason.clone()
            },
            ended_at: end.ended_at,
            duration_seconds,
            recording_path: end.recording.clone(),
            transcript,
            results,
            latency: end.answered_at.and(latency),
            stage_id: end.answered_at.and(stage_id),
            // Answered but never talked on (the conversation could not run): nobody listened.
            answered_by: end
                .answered_at
                .map(|_| answered_by.unwrap_or(domain::call::AnsweredBy::Unknown)),
            transfer,
            opted_out,
            public_url: self.config.public_url.clone(),
            post_call,
        };
        metrics::counter!("outdial_calls_ended_total", "status" => status.as_str()).increment(1);
        let settled = self.settler().submit(finish).await;
        match settled.and_then(|s| s.map_err(crate::settler::SettleError::from)) {
            Ok(Some(settled)) => {
                self.events_written();
                if transcribe {
                    if let Some(n) = &self.config.post_call_written {
                        n.notify_one();
                    }
                }
                tracing::info!(%status, reason = end.failure_reason.as_deref().unwrap_or(""), retry = settled.retry_at.is_some(), "call ended")
            }
            Ok(None) => tracing::warn!(%status, "call was settled elsewhere (lease lost)"),
            Err(e) => {
                tracing::error!(error = %e, %status, "settling the call failed; the orphan sweep will settle it")
            }
        }
    }
}
