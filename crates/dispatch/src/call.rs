//! One dialled call, from the durable `initiated` to its settled outcome.

use crate::Dispatcher;
use domain::call::TranscriptItem;
use domain::dispatch::{retry_delay, DueCall, FinishAttempt};
use domain::telephony::{CallEnd, CallEvent, DialError, DialRequest};
use domain::{CallStatus, Millis};
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument;

/// `{{name}}` replaced by the call parameter of that name; a missing one renders empty (and is
/// logged). Parameters are text, never evaluated.
pub fn render(template: &str, parameters: &[domain::call::Parameter]) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find("{{") {
        out.push_str(&rest[..open]);
        let after = &rest[open + 2..];
        let Some(close) = after.find("}}") else {
            out.push_str(&rest[open..]);
            return out;
        };
        let name = after[..close].trim();
        match parameters.iter().find(|p| p.name == name) {
            Some(p) => out.push_str(&p.value),
            None => tracing::warn!(
                parameter = name,
                "template names a parameter the call does not have"
            ),
        }
        rest = &after[close + 2..];
    }
    out.push_str(rest);
    out
}

impl Dispatcher {
    pub(crate) async fn run_call(self: Arc<Self>, call: DueCall) {
        let span =
            tracing::info_span!("call", conversation_id = %call.id, trace_id = %call.trace_id);
        async {
            let end = self.dial_and_follow(&call).await;
            self.settle(&call, end).await;
            self.track(call.id, false);
        }
        .instrument(span)
        .await
    }

    /// Dials and follows the call's events to its end. The transcript holds only what was
    /// played; until the agent runtime drives the conversation, that is the opening line.
    async fn dial_and_follow(&self, call: &DueCall) -> (CallEnd, Vec<TranscriptItem>) {
        let now = self.clock.now();
        let failed = |status, reason: String| {
            (
                CallEnd {
                    status,
                    failure_reason: Some(reason),
                    answered_at: None,
                    ended_at: self.clock.now(),
                    recording: None,
                },
                Vec::new(),
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
        let opening = call
            .retry_context
            .as_ref()
            .and_then(|r| r.retry_initial_message.clone())
            .or_else(|| agent.first_message.clone())
            .map(|t| render(&t, &call.parameters))
            .filter(|t| !t.trim().is_empty());
        let voice = agent.voice.voice.clone();
        let tts = self.tts.clone();
        let speech = opening.clone().map(|line| {
            tokio::spawn(async move { tts.synthesize(&line, voice.as_deref()).await })
        });
        let mut live = match self.telephony.dial(request).await {
            Ok(live) => live,
            Err(DialError::Invalid(reason)) => return failed(CallStatus::Failed, reason),
            Err(e @ DialError::Unavailable(_)) => {
                return failed(CallStatus::TelephonyFailed, e.to_string())
            }
        };
        metrics::counter!("outdial_dial_attempts_total").increment(1);
        tracing::info!(started_ms = now.0, "dialling");
        let mut transcript = Vec::new();
        let mut speech = speech;
        // Held until the call ends: dropping it would tell the adapter nobody is talking.
        let mut _media = None;
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
                    if let (Some(line), Some(task)) = (opening.clone(), speech.take()) {
                        match task.await {
                            Ok(Ok(audio)) => {
                                // Only what was played goes in the transcript.
                                if agent::play(&audio, &media.outbound).await {
                                    transcript.push(TranscriptItem {
                                        role: "agent".into(),
                                        message: line,
                                        at_ms: Some(at.0),
                                    });
                                }
                            }
                            Ok(Err(e)) => tracing::error!(error = %e, "the opening line could not be synthesised"),
                            Err(e) => tracing::error!(error = %e, "speech task failed"),
                        }
                    }
                    _media = Some(media);
                }
                CallEvent::Dtmf(digit) => tracing::info!(%digit, "dtmf"),
                CallEvent::Ended(end) => return (end, transcript),
            }
        }
    }

    async fn mark(
        &self,
        call: &DueCall,
        status: CallStatus,
        at: Millis,
    ) -> Result<bool, domain::store::StoreError> {
        self.store
            .mark_progress(call.id, &self.config.node_id, status, at)
            .await
    }

    async fn settle(&self, call: &DueCall, (end, transcript): (CallEnd, Vec<TranscriptItem>)) {
        let now = self.clock.now();
        let status = if end.status.is_terminal() {
            end.status
        } else {
            CallStatus::Failed
        };
        let policy = call
            .agent_config
            .as_ref()
            .and_then(|a| a.retry_policy.as_ref());
        let retry_at = retry_delay(policy, status, call.id.attempt)
            .map(|d| Millis(now.0 + d.as_millis() as i64));
        let duration_seconds = end
            .answered_at
            .map(|a| ((end.ended_at.0 - a.0).max(0) + 500) / 1000);
        // Only what was heard: an unanswered call has no transcript.
        let transcript = if end.answered_at.is_some() {
            transcript
        } else {
            Vec::new()
        };
        let mut results = serde_json::Map::new();
        if let Some(seed) = call
            .retry_context
            .as_ref()
            .and_then(|r| r.collected_data.clone())
        {
            results.extend(seed);
        }
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
            retry_at,
            public_url: self.config.public_url.clone(),
        };
        metrics::counter!("outdial_calls_ended_total", "status" => status.as_str()).increment(1);
        match self.store.finish_attempt(finish, now).await {
            Ok(true) => {
                tracing::info!(%status, reason = end.failure_reason.as_deref().unwrap_or(""), retry = retry_at.is_some(), "call ended")
            }
            Ok(false) => tracing::warn!(%status, "call was settled elsewhere (lease lost)"),
            Err(e) => {
                tracing::error!(error = %e, %status, "settling the call failed; the orphan sweep will settle it")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::render;
    use domain::call::Parameter;

    #[test]
    fn templates_render_parameters_as_text() {
        let p = vec![
            Parameter {
                name: "customer_name".into(),
                value: "Rahul {{x}}".into(),
            },
            Parameter {
                name: "invoice_id".into(),
                value: "INV-7".into(),
            },
        ];
        assert_eq!(
            render("Hello {{customer_name}}, about {{ invoice_id }}.", &p),
            "Hello Rahul {{x}}, about INV-7."
        );
        assert_eq!(render("Hi {{missing}}!", &p), "Hi !");
        assert_eq!(
            render("broken {{customer_name", &p),
            "broken {{customer_name"
        );
        assert_eq!(render("", &p), "");
    }
}
