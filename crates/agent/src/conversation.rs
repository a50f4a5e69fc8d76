//! One answered call's conversation: listen (earshot VAD + turn taking), decide (the brain),
//! speak (text-to-speech), until the brain ends the call, the callee hangs up or time runs out.
//!
//! The inbound stream is the clock: the telephony adapter delivers one 20 ms frame per tick,
//! gaps filled with silence, and plays one outbound frame per tick. So the driver queues agent
//! audio only a few frames ahead of playout (`Timing::lead_frames`) and always knows, to within
//! that lead, what the callee has heard: a barge-in stops the agent by flushing at most those
//! frames, and the transcript records only what was played.

use crate::amd::{Amd, AmdConfig, GreetingEnd};
use crate::brain::{Brain, Reply};
use crate::stt::{Listening, SpeechToText, SttStream, Transcript};
use crate::tts::TextToSpeech;
use crate::turn::{TurnConfig, TurnEvent, TurnTaker, FRAME_MS};
use crate::vad::Vad;
use domain::call::TransferStatus;
use domain::call::{AnsweredBy, Speaker, TranscriptItem};
use domain::telephony::{
    AudioFrame, CallControl, MediaStream, TransferRequest, FRAME_SAMPLES, SAMPLE_RATE,
};
use domain::E164;
use media::tone::{ToneConfig, ToneDetector};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::Instrument;

/// The opening line, synthesised while the phone rang.
#[derive(Debug, Clone)]
pub struct Opening {
    pub text: String,
    pub audio: Vec<i16>,
}

#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub turn: TurnConfig,
    /// earshot score at or above which a 16 ms window is speech.
    pub vad_threshold: f32,
    /// Frames queued ahead of playout: enough to ride out scheduling hiccups, few enough that a
    /// barge-in has little to flush and the transcript knows what was heard.
    pub lead_frames: usize,
    pub max_duration: Duration,
}

impl Timing {
    /// The agent's own settings (its `turn_taking`, else the defaults).
    pub fn for_agent(agent: &domain::agent::AgentConfig) -> Self {
        let t = agent.turn_taking.unwrap_or_default();
        Self {
            turn: TurnConfig::from(&t),
            vad_threshold: t.vad_threshold as f32,
            max_duration: Duration::from_secs(u64::from(agent.max_duration_seconds)),
            ..Self::default()
        }
    }
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            turn: TurnConfig::default(),
            vad_threshold: 0.5,
            lead_frames: 3,
            max_duration: Duration::from_secs(u64::from(
                domain::agent::DEFAULT_MAX_DURATION_SECONDS,
            )),
        }
    }
}

/// Everything one conversation needs; built by dispatch when the call is answered.
pub struct Session {
    /// For the tracing span; the call's trace id.
    pub trace_id: String,
    pub brain: Box<dyn Brain>,
    pub tts: Arc<dyn TextToSpeech>,
    pub stt: Arc<dyn SpeechToText>,
    /// The TTS voice (the agent's, or the retry context's language).
    pub voice: Option<String>,
    /// Spoken first and whole (barge-in does not cut it): who is calling, that it is an
    /// automated call, that it is recorded.
    pub disclosure: Option<Opening>,
    pub opening: Option<Opening>,
    /// When the answer arrived (monotonic), for answer-to-first-word.
    pub answered_at: Instant,
    /// The same moment on the wall clock (ms since the epoch), for transcript timestamps.
    pub answered_at_ms: i64,
    pub timing: Timing,
    /// Answering-machine detection; `None`: off (the call is `answered_by: unknown`).
    pub voicemail: Option<VoicemailPlan>,
    /// Where the call may be handed to a person; `None`: the agent has no transfer targets.
    pub transfer: Option<TransferPlan>,
}

/// The agent's transfer block and the way its outcomes come back.
#[derive(Debug)]
pub struct TransferPlan {
    pub targets: BTreeMap<String, E164>,
    /// Said whole before the hand-over (rendered).
    pub say: Option<String>,
    /// The call's [`CallEvent::Transfer`](domain::telephony::CallEvent::Transfer)s, passed on
    /// by whoever follows the call's events.
    pub outcomes: mpsc::Receiver<domain::call::Transfer>,
}

/// What the agent says when a transfer could not be made, before going on.
pub const TRANSFER_FAILED_LINE: &str = "Sorry, I couldn't connect you right now.";

/// A transfer asked for by the brain, from its reply to its outcome.
#[derive(Debug)]
enum HandOver {
    /// The reply's own lines are still being said.
    Finishing(TransferRequest),
    /// The transfer's `say` is being said.
    Announcing(TransferRequest),
    /// The call was asked to transfer; waiting for the outcome.
    Waiting,
}

/// What a machine-answered call does.
#[derive(Debug, Clone, Default)]
pub struct VoicemailPlan {
    /// Said once the greeting is over (rendered); `None`: hang up at once.
    pub message: Option<String>,
    /// The detector's thresholds (the service's configuration).
    pub detector: AmdConfig,
}

/// `results.voicemail` of a machine-answered call.
pub const VOICEMAIL_RESULT: &str = "voicemail";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EndedBy {
    AgentEnded,
    /// The call was handed to a person (the agent's part is over; the call may go on).
    Transferred,
    CalleeHungUp,
    MaxDuration,
}

/// Where the time went in one turn, caller's last speech to the reply's first queued frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TurnTiming {
    /// Caller stopped speaking -> first frame of the reply queued. Includes the end-of-turn
    /// silence wait.
    pub voice_to_voice_ms: u64,
    /// Time after the turn ended spent waiting for speech-to-text: finalisation only, for a
    /// streaming engine fed while the caller spoke.
    pub stt_wait_ms: u64,
    pub stt_ms: u64,
    pub brain_ms: u64,
    /// Synthesis of the reply's first line.
    pub tts_ms: u64,
    /// Our own pipeline's share after the turn ended: everything but waiting on the STT and
    /// TTS models, in microseconds.
    pub added_us: u64,
}

#[derive(Debug, Clone)]
pub struct ConversationOutcome {
    pub transcript: Vec<TranscriptItem>,
    pub results: Map<String, Value>,
    pub ended_by: EndedBy,
    pub turns: Vec<TurnTiming>,
    pub answer_to_first_word_ms: Option<u64>,
    /// The brain's stage when the conversation ended.
    pub stage_id: Option<String>,
    /// Who picked up: the detector's verdict, `unknown` when it had none.
    pub answered_by: AnsweredBy,
}

impl ConversationOutcome {
    pub fn turn_latencies_ms(&self) -> Vec<u64> {
        self.turns.iter().map(|t| t.voice_to_voice_ms).collect()
    }
}

/// Marks the agent's line that a line cut off by barge-in ends with: the transcript keeps the
/// words estimated to have been played (proportional to the audio played) and this marker.
pub const CUT_MARKER: &str = "…";

/// Runs the conversation of an answered call. Returns when the brain ended the call (after its
/// goodbye was played and `Hangup` sent), when the inbound stream closes (the callee hung up),
/// or at `timing.max_duration` (after sending `Hangup`).
pub async fn converse(
    session: Session,
    media: MediaStream,
    control: mpsc::Sender<CallControl>,
) -> ConversationOutcome {
    let span = tracing::info_span!("conversation", trace_id = %session.trace_id);
    run(session, media, control).instrument(span).await
}

/// A turn whose reply is on its way.
#[derive(Debug, Clone, Copy)]
struct TurnMark {
    speech_end_at: Instant,
    ended_at: Instant,
    stt_wait: Duration,
    stt: Duration,
    brain: Duration,
}

struct Line {
    text: String,
    audio: Vec<i16>,
    sent: usize,
    started_ms: i64,
    mark: Option<TurnMark>,
    tts: Duration,
    /// The goodbye or the disclosure: barge-in does not cut it.
    uncut: bool,
}

enum Internal {
    Heard {
        utterance: u64,
        words: Transcript,
        took: Duration,
    },
    Spoken {
        reply: u64,
        text: String,
        audio: Option<Vec<i16>>,
        took: Duration,
        mark: Option<TurnMark>,
        last_words: bool,
    },
    /// Every line of a reply has been synthesised (or the reply was dropped).
    Synthesised { reply: u64 },
    /// The brain is back from a turn, with what it decided.
    Replied {
        brain: Box<dyn Brain>,
        reply: u64,
        end: bool,
        transfer: Option<String>,
    },
}

struct Heard {
    utterance: u64,
    words: Transcript,
    took: Duration,
    at: Instant,
}

/// The caller's current utterance on its way to the recogniser.
enum Recognition {
    /// Fed frame by frame while the caller speaks.
    Streaming(SttStream),
    /// The engine takes whole utterances: the audio so far, and what was expected when the
    /// utterance began.
    Buffered(Vec<i16>, Listening),
}

impl Recognition {
    fn push(&mut self, frame: &[i16]) {
        match self {
            Recognition::Streaming(s) => s.push(frame),
            Recognition::Buffered(audio, _) => audio.extend_from_slice(frame),
        }
    }
}

/// A turn that ended and waits for its words.
#[derive(Debug, Clone, Copy)]
struct Awaiting {
    utterance: u64,
    speech_end_at: Instant,
    ended_at: Instant,
}

struct Driver {
    tts: Arc<dyn TextToSpeech>,
    stt: Arc<dyn SpeechToText>,
    voice: Option<String>,
    answered_at: Instant,
    answered_at_ms: i64,
    timing: Timing,
    /// The brain, or `None` while a turn is with it: its model is asked on a task of its own so
    /// that audio keeps flowing (barge-in, echo, the clock) however slow the model is.
    brain: Option<Box<dyn Brain>>,
    /// What the brain expected when it was last here, for utterances begun while it thinks.
    phrases: Vec<String>,
    /// The agent's last line queued for the caller: what a reply answers.
    asked: String,
    control: mpsc::Sender<CallControl>,
    outbound: mpsc::Sender<AudioFrame>,
    tx: mpsc::Sender<Internal>,
    vad: Vad,
    /// The agent's own voice coming back down the line is not the caller talking.
    echo: media::echo::EchoGate,
    turns: TurnTaker,
    frame_no: u64,
    preroll: VecDeque<AudioFrame>,
    recognition: Option<Recognition>,
    utterance_started_ms: i64,
    /// Bumped whenever the utterance so far changes meaning (new utterance, resumed speech), so
    /// a transcription of an older version is recognised as stale.
    utterance: u64,
    stt_inflight: Option<u64>,
    heard: Option<Heard>,
    /// The turn ended; waiting for its transcription.
    awaiting: Option<Awaiting>,
    last_speech_at: Instant,
    /// Bumped by barge-in so replies still being synthesised are dropped.
    reply: u64,
    /// Replies of the current `reply` still being synthesised.
    synth_pending: usize,
    queue: VecDeque<Line>,
    current: Option<Line>,
    ahead: usize,
    ending: bool,
    tail_ticks: usize,
    transcript: Vec<TranscriptItem>,
    timings: Vec<TurnTiming>,
    first_word: Option<u64>,
    /// Listening for a machine (after another verdict, for a beep that revises it; after a
    /// machine, for the end of its greeting); `None` when detection is off.
    amd: Option<Amd>,
    beeps: ToneDetector,
    answered_by: AnsweredBy,
    /// The message to leave on a machine, until it is queued.
    machine_message: Option<String>,
    /// A machine answered and the detector will not revise it: the call is ending.
    machine_sure: bool,
    /// A machine answered: waiting for its greeting to end before the message plays.
    greeting: Option<GreetingEnd>,
    /// Agent audio is held back (the machine's greeting is still going).
    withhold: bool,
    /// Whether the callee has the call on hold, as the line says.
    held: watch::Receiver<bool>,
    /// The agent waits while the callee has the call on hold: it says nothing and nothing it
    /// hears (hold music) is a turn; only the call's own time limit runs on.
    on_hold: bool,
    /// A machine answered and the message was played to its end.
    message_left: bool,
    transfer_targets: BTreeMap<String, E164>,
    transfer_say: Option<String>,
    hand_over: Option<HandOver>,
    /// Ticks the agent has been silent with nothing queued, during a hand-over.
    quiet_ticks: usize,
}

const PREROLL_FRAMES: usize = 10;
/// Ticks after the goodbye's last frame is played before hanging up, so the adapter sends it.
const TAIL_TICKS: usize = 3;

async fn run(
    session: Session,
    media: MediaStream,
    control: mpsc::Sender<CallControl>,
) -> ConversationOutcome {
    let MediaStream {
        mut inbound,
        outbound,
        held,
    } = media;
    let (tx, mut rx) = mpsc::channel(64);
    let Session {
        trace_id: _,
        mut brain,
        tts,
        stt,
        voice,
        disclosure,
        opening,
        answered_at,
        answered_at_ms,
        timing,
        voicemail,
        transfer,
    } = session;
    let (transfer_targets, transfer_say, mut transfer_outcomes) = match transfer {
        Some(t) => (t.targets, t.say, Some(t.outcomes)),
        None => (BTreeMap::new(), None, None),
    };
    let deadline = answered_at + timing.max_duration;
    let start = brain.start();
    let mut d = Driver {
        phrases: brain.expected_phrases(),
        asked: String::new(),
        brain: Some(brain),
        vad: Vad::new(timing.vad_threshold),
        echo: media::echo::EchoGate::new(media::echo::EchoConfig::default(), FRAME_MS as u32),
        turns: TurnTaker::new(timing.turn),
        last_speech_at: answered_at,
        tts,
        stt,
        voice,
        answered_at,
        answered_at_ms,
        timing,
        control,
        outbound,
        tx,
        frame_no: 0,
        preroll: VecDeque::with_capacity(PREROLL_FRAMES),
        recognition: None,
        utterance_started_ms: 0,
        utterance: 0,
        stt_inflight: None,
        heard: None,
        awaiting: None,
        reply: 0,
        synth_pending: 0,
        queue: VecDeque::new(),
        current: None,
        ahead: 0,
        ending: false,
        tail_ticks: 0,
        transcript: Vec::new(),
        timings: Vec::new(),
        first_word: None,
        amd: voicemail.as_ref().map(|v| Amd::new(v.detector, FRAME_MS)),
        beeps: ToneDetector::new(ToneConfig::default(), SAMPLE_RATE, FRAME_MS as u32),
        answered_by: AnsweredBy::Unknown,
        machine_message: voicemail.and_then(|v| v.message),
        machine_sure: false,
        greeting: None,
        withhold: false,
        held,
        on_hold: false,
        message_left: false,
        transfer_targets,
        transfer_say,
        hand_over: None,
        quiet_ticks: 0,
    };
    let disclosure = disclosure.map(|line| (line, true));
    let opening = opening.map(|line| (line, false));
    for (line, uncut) in disclosure.into_iter().chain(opening) {
        d.queue.push_back(Line {
            text: line.text,
            audio: trim_leading_silence(line.audio),
            sent: 0,
            started_ms: 0,
            mark: None,
            tts: Duration::ZERO,
            uncut,
        });
    }
    d.speak(start, None);
    d.fill();
    let ended_by = loop {
        d.hand_over_step();
        if d.finished() {
            let _ = d.control.send(CallControl::Hangup).await;
            break EndedBy::AgentEnded;
        }
        let waiting = matches!(d.hand_over, Some(HandOver::Waiting));
        tokio::select! {
            biased;
            Some(outcome) = next_outcome(&mut transfer_outcomes), if waiting => {
                tracing::info!(target = %outcome.target, method = outcome.method.as_str(),
                    status = outcome.status.as_str(), "transfer outcome");
                if outcome.status == TransferStatus::Connected {
                    break EndedBy::Transferred;
                }
                d.transfer_failed();
            }
            frame = inbound.recv() => match frame {
                Some(frame) => d.tick(frame),
                // Waiting for a transfer, the streams close when it connects (the outcome may be a
                // moment behind) or when the callee hangs up.
                None if waiting => {
                    let outcome = tokio::time::timeout(OUTCOME_LAG, next_outcome(&mut transfer_outcomes)).await;
                    break match outcome {
                        Ok(Some(o)) if o.status == TransferStatus::Connected => EndedBy::Transferred,
                        _ => EndedBy::CalleeHungUp,
                    };
                }
                None => break EndedBy::CalleeHungUp,
            },
            Some(msg) = rx.recv() => d.internal(msg),
            () = tokio::time::sleep_until(deadline) => {
                let _ = d.control.send(CallControl::Hangup).await;
                break EndedBy::MaxDuration;
            }
        }
    };
    d.stop_talking();
    // A turn still with the brain (the callee hung up while the model was answering) may yet
    // record results: wait for it, within the brain's own time limits.
    while d.brain.is_none() {
        match tokio::time::timeout(BRAIN_RETURN, rx.recv()).await {
            Ok(Some(Internal::Replied { brain, .. })) => d.brain = Some(brain),
            Ok(Some(_)) => {}
            Ok(None) | Err(_) => {
                tracing::error!("the brain did not come back from its turn; its results are lost");
                break;
            }
        }
    }
    tracing::info!(?ended_by, turns = d.timings.len(), "conversation over");
    let (mut results, stage_id) = d
        .brain
        .as_ref()
        .map(|b| (b.results().clone(), b.stage_id()))
        .unwrap_or_default();
    if d.answered_by == AnsweredBy::Machine {
        let left = if d.message_left { "left" } else { "hung_up" };
        results.insert(VOICEMAIL_RESULT.into(), left.into());
    }
    ConversationOutcome {
        transcript: d.transcript,
        results,
        ended_by,
        turns: d.timings,
        answer_to_first_word_ms: d.first_word,
        stage_id,
        answered_by: d.answered_by,
    }
}

fn next_outcome(
    outcomes: &mut Option<mpsc::Receiver<domain::call::Transfer>>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<domain::call::Transfer>> + Send + '_>>
{
    match outcomes {
        Some(rx) => Box::pin(rx.recv()),
        None => Box::pin(std::future::pending()),
    }
}

/// How long closed streams wait for the transfer outcome that closed them.
const OUTCOME_LAG: Duration = Duration::from_secs(2);

/// How long the end of a call waits for a brain still answering (beyond the llm brain's
/// 20 s turn limit).
const BRAIN_RETURN: Duration = Duration::from_secs(25);

impl Driver {
    fn now_ms(&self) -> i64 {
        self.answered_at_ms + Instant::now().duration_since(self.answered_at).as_millis() as i64
    }

    fn agent_talking(&self) -> bool {
        self.current.is_some() || self.ahead > 0
    }

    /// Nothing said, queued or being synthesised.
    fn quiet(&self) -> bool {
        !self.agent_talking() && self.synth_pending == 0 && self.queue.is_empty()
    }

    /// The brain asked to hand the call to `target`: its reply is said whole, then the
    /// transfer's `say`, then the call is asked to transfer.
    fn begin_hand_over(&mut self, target: String) {
        let Some(number) = self.transfer_targets.get(&target).cloned() else {
            // Validation keeps this from happening; the caller is not left waiting for it.
            tracing::error!(%target, "the brain asked for a transfer target the agent does not have");
            return;
        };
        tracing::info!(%target, "handing the call over");
        for line in self.queue.iter_mut().chain(self.current.as_mut()) {
            line.uncut = true;
        }
        self.quiet_ticks = 0;
        self.hand_over = Some(HandOver::Finishing(TransferRequest { target, number }));
    }

    /// Moves a hand-over on once what was to be said has been played.
    fn hand_over_step(&mut self) {
        let ready = self.brain.is_some() && self.quiet() && self.quiet_ticks >= TAIL_TICKS;
        match self.hand_over.take() {
            Some(HandOver::Finishing(request)) if ready => {
                self.quiet_ticks = 0;
                if let Some(say) = self.transfer_say.clone() {
                    self.speak(
                        Reply {
                            say: vec![say],
                            ..Reply::default()
                        },
                        None,
                    );
                }
                self.hand_over = Some(HandOver::Announcing(request));
            }
            Some(HandOver::Announcing(request)) if ready => {
                if let Err(e) = self.control.try_send(CallControl::Transfer(request)) {
                    tracing::error!(error = %e, "the call could not be asked to transfer");
                    self.transfer_failed();
                    return;
                }
                self.hand_over = Some(HandOver::Waiting);
            }
            other => self.hand_over = other,
        }
    }

    /// The caller is still here: they are told, and the brain goes on.
    fn transfer_failed(&mut self) {
        self.hand_over = None;
        let mut reply = self
            .brain
            .as_mut()
            .map(|b| b.transfer_failed())
            .unwrap_or_default();
        if let Some(brain) = self.brain.as_ref() {
            self.phrases = brain.expected_phrases();
        }
        reply.say.insert(0, TRANSFER_FAILED_LINE.to_string());
        self.speak(reply, None);
    }

    fn finished(&self) -> bool {
        self.ending
            && self.brain.is_some()
            && self.synth_pending == 0
            && self.queue.is_empty()
            && self.current.is_none()
            && self.ahead == 0
            && self.tail_ticks >= TAIL_TICKS
    }

    /// One inbound frame: the clock of the conversation.
    fn tick(&mut self, frame: AudioFrame) {
        let held = *self.held.borrow();
        if held != self.on_hold {
            self.hold_changed(held);
        }
        if self.on_hold {
            // The conversation's own clock stops (turns, the machine detector, the tail before
            // hanging up); the call's time limit is kept by `run`.
            return;
        }
        self.frame_no += 1;
        self.ahead = self.ahead.saturating_sub(1);
        if self.ending && self.quiet() {
            self.tail_ticks += 1;
        }
        if self.hand_over.is_some() && self.quiet() {
            self.quiet_ticks += 1;
        }
        self.fill();
        // Both see every frame: the VAD keeps state across frames, and the echo gate's clock is
        // the inbound stream.
        let echo = self.echo.near(&frame);
        let speech = self.vad.is_speech(&frame) && !echo;
        if speech {
            self.last_speech_at = Instant::now();
        }
        self.beeps.frame(&frame);
        self.listen_for_machine(&frame, speech);
        let was_in = self.turns.in_utterance();
        let event = self
            .turns
            .frame(speech, self.frame_no * FRAME_MS, self.agent_talking());
        if !was_in && self.turns.in_utterance() {
            // Start with what came just before: the VAD needs a few frames to be sure.
            self.utterance += 1;
            self.utterance_started_ms =
                self.now_ms() - (self.preroll.len() as i64 * FRAME_MS as i64);
            let mut rec = match self.stt.stream(&self.phrases) {
                Some(stream) => Recognition::Streaming(stream),
                None => Recognition::Buffered(
                    Vec::new(),
                    Listening {
                        asked: self.asked.clone(),
                        phrases: self.phrases.clone(),
                    },
                ),
            };
            for f in &self.preroll {
                rec.push(f);
            }
            self.recognition = Some(rec);
        }
        if was_in || self.turns.in_utterance() {
            if let Some(rec) = self.recognition.as_mut() {
                rec.push(&frame);
            }
        }
        if self.preroll.len() == PREROLL_FRAMES {
            self.preroll.pop_front();
        }
        self.preroll.push_back(frame);
        let Some(event) = event else {
            return;
        };
        // The utterance is over either way: its recognition goes with it (dropping a stream
        // cancels it).
        let recognition = match event {
            TurnEvent::TurnEnded { .. } | TurnEvent::Dropped => self.recognition.take(),
            _ => None,
        };
        if self.ending || self.hand_over.is_some() {
            // The call is ending or being handed over: nothing the caller says now changes that.
            return;
        }
        match event {
            TurnEvent::BargeIn => {
                self.utterance += 1;
                if self.current.as_ref().is_some_and(|l| l.uncut) {
                    return;
                }
                tracing::info!("barge-in: the caller talks over the agent");
                let _ = self.control.try_send(CallControl::FlushAudio);
                self.stop_talking();
            }
            TurnEvent::Pause => {
                // Only an engine that takes whole utterances needs a head start; a stream has
                // been fed all along.
                if let Some(Recognition::Buffered(audio, listening)) = &self.recognition {
                    let (audio, listening) = (audio.clone(), listening.clone());
                    self.transcribe(audio, listening);
                }
            }
            TurnEvent::Resumed => self.utterance += 1,
            TurnEvent::TurnEnded { .. } => {
                self.awaiting = Some(Awaiting {
                    utterance: self.utterance,
                    speech_end_at: self.last_speech_at,
                    ended_at: Instant::now(),
                });
                match recognition {
                    Some(Recognition::Streaming(stream)) => self.finish_stream(stream),
                    Some(Recognition::Buffered(audio, listening)) => {
                        let have = self.stt_inflight == Some(self.utterance)
                            || self
                                .heard
                                .as_ref()
                                .is_some_and(|h| h.utterance == self.utterance);
                        if !have {
                            self.transcribe(audio, listening);
                        }
                    }
                    None => {}
                }
                self.respond_if_ready();
            }
            TurnEvent::Dropped => self.utterance += 1,
        }
    }

    /// The turn is over: the stream's words, finalised off the media path.
    fn finish_stream(&mut self, stream: SttStream) {
        let utterance = self.utterance;
        self.stt_inflight = Some(utterance);
        self.report_heard(utterance, async move { stream.finish().await });
    }

    /// Transcribes a whole utterance (engines that do not stream).
    fn transcribe(&mut self, audio: Vec<i16>, listening: Listening) {
        let stt = self.stt.clone();
        let utterance = self.utterance;
        self.stt_inflight = Some(utterance);
        self.report_heard(utterance, async move {
            stt.transcribe_reply(&audio, &listening).await
        });
    }

    fn report_heard<F>(&self, utterance: u64, words: F)
    where
        F: std::future::Future<Output = Result<Transcript, crate::stt::SttError>> + Send + 'static,
    {
        let tx = self.tx.clone();
        tokio::spawn(
            async move {
                let started = Instant::now();
                let words = match words.await {
                    Ok(t) => t,
                    Err(e) => {
                        tracing::error!(error = %e, "speech-to-text failed; the turn counts as not understood");
                        Transcript::default()
                    }
                };
                let _ = tx
                    .send(Internal::Heard {
                        utterance,
                        words,
                        took: started.elapsed(),
                    })
                    .await;
            }
            .in_current_span(),
        );
    }

    fn internal(&mut self, msg: Internal) {
        match msg {
            Internal::Heard {
                utterance,
                words,
                took,
            } => {
                if self.stt_inflight == Some(utterance) {
                    self.stt_inflight = None;
                }
                // The awaited turn's words, or a speculative transcription of the utterance
                // still going on; anything older is stale.
                let awaited = self.awaiting.is_some_and(|a| a.utterance == utterance);
                if awaited || utterance == self.utterance {
                    self.heard = Some(Heard {
                        utterance,
                        words,
                        took,
                        at: Instant::now(),
                    });
                    self.respond_if_ready();
                }
            }
            Internal::Spoken {
                reply,
                text,
                audio,
                took,
                mark,
                last_words,
            } => {
                if reply != self.reply {
                    return;
                }
                let Some(audio) = audio else {
                    return;
                };
                self.asked.clone_from(&text);
                self.queue.push_back(Line {
                    text,
                    audio,
                    sent: 0,
                    started_ms: 0,
                    mark,
                    tts: took,
                    // A reply that turned out to end the call is its goodbye: not cut either.
                    uncut: last_words || self.ending || self.hand_over.is_some(),
                });
                // At once, not at the next tick: up to 20 ms of latency saved.
                self.fill();
            }
            Internal::Synthesised { reply } => {
                if reply == self.reply {
                    self.synth_pending = self.synth_pending.saturating_sub(1);
                }
            }
            Internal::Replied {
                brain,
                reply,
                end,
                transfer,
            } => {
                self.phrases = brain.expected_phrases();
                self.brain = Some(brain);
                // Even a reply cut by barge-in: the caller asked for a person.
                if let Some(target) = transfer {
                    self.begin_hand_over(target);
                }
                if end {
                    self.ending = true;
                    if reply == self.reply {
                        for line in self.queue.iter_mut().chain(self.current.as_mut()) {
                            line.uncut = true;
                        }
                    }
                }
                // The caller may have finished another turn while the brain was busy.
                self.respond_if_ready();
            }
        }
    }

    /// The turn ended and its transcription is in: hand it to the brain (once the brain is back
    /// from the previous turn) and speak each line of its reply as soon as it is known.
    fn respond_if_ready(&mut self) {
        let Some(Awaiting {
            utterance,
            speech_end_at,
            ended_at,
        }) = self.awaiting
        else {
            return;
        };
        if self.brain.is_none() || self.heard.as_ref().is_none_or(|h| h.utterance != utterance) {
            return;
        }
        if self.answered_by == AnsweredBy::Machine {
            // The greeting's words are not a turn to answer; while the verdict may still be
            // revised (see `listen_for_machine`), the turn waits.
            return;
        }
        let (Some(heard), Some(mut brain)) = (self.heard.take(), self.brain.take()) else {
            return;
        };
        self.awaiting = None;
        let text = heard.words.text.trim().to_string();
        tracing::info!(
            heard = %text,
            confidence = heard.words.confidence,
            stt_ms = heard.took.as_millis() as u64,
            "caller's turn"
        );
        if !text.is_empty() {
            self.transcript.push(TranscriptItem {
                role: Speaker::Human,
                message: text.clone(),
                at_ms: Some(self.utterance_started_ms),
            });
        }
        let mark = TurnMark {
            speech_end_at,
            ended_at,
            stt_wait: heard.at.saturating_duration_since(ended_at),
            stt: heard.took,
            brain: Duration::ZERO,
        };
        let words = Transcript::new(text, heard.words.confidence);
        let (lines_tx, lines) = mpsc::unbounded_channel();
        self.synthesise(lines, Some((mark, Instant::now())));
        let tx = self.tx.clone();
        let reply = self.reply;
        tokio::spawn(
            async move {
                let (end, transfer) = match brain.hear_streaming(&words, &lines_tx).await {
                    Ok(r) => (r.end, r.transfer),
                    Err(e) => {
                        tracing::error!(error = %e, "the brain failed; the agent says what it had");
                        (false, None)
                    }
                };
                drop(lines_tx);
                let msg = Internal::Replied {
                    brain,
                    reply,
                    end,
                    transfer,
                };
                let _ = tx.send(msg).await;
            }
            .in_current_span(),
        );
    }

    /// A reply known whole (the brain's start): its lines, synthesised in order.
    fn speak(&mut self, reply: Reply, mark: Option<TurnMark>) {
        if reply.end {
            self.ending = true;
        }
        let (tx, lines) = mpsc::unbounded_channel();
        for line in reply.say {
            let _ = tx.send(line);
        }
        drop(tx);
        self.synthesise(lines, mark.map(|m| (m, Instant::now())));
    }

    /// Synthesises `lines` in order on a task as they come; each is queued as it is ready. The
    /// first carries the turn's mark, its brain time the wait for that first line.
    fn synthesise(
        &mut self,
        mut lines: mpsc::UnboundedReceiver<String>,
        mark: Option<(TurnMark, Instant)>,
    ) {
        self.synth_pending += 1;
        let tts = self.tts.clone();
        let voice = self.voice.clone();
        let tx = self.tx.clone();
        let id = self.reply;
        let ending = self.ending;
        tokio::spawn(
            async move {
                let mut mark = mark;
                while let Some(text) = lines.recv().await {
                    let mark = mark.take().map(|(mut m, asked)| {
                        m.brain = asked.elapsed();
                        m
                    });
                    let started = Instant::now();
                    let audio = match tts.synthesize(&text, voice.as_deref()).await {
                        Ok(a) => Some(trim_leading_silence(a)),
                        Err(e) => {
                            tracing::error!(error = %e, line = %text, "a line could not be synthesised");
                            None
                        }
                    };
                    let msg = Internal::Spoken {
                        reply: id,
                        text,
                        audio,
                        took: started.elapsed(),
                        mark,
                        last_words: ending,
                    };
                    if tx.send(msg).await.is_err() {
                        return;
                    }
                }
                let _ = tx.send(Internal::Synthesised { reply: id }).await;
            }
            .in_current_span(),
        );
    }

    /// Queues agent audio up to `lead_frames` ahead of playout.
    fn fill(&mut self) {
        if self.on_hold {
            return;
        }
        while self.ahead < self.timing.lead_frames {
            if self.current.is_none() {
                if self.withhold {
                    return;
                }
                let Some(mut line) = self.queue.pop_front() else {
                    return;
                };
                line.started_ms = self.now_ms();
                self.current = Some(line);
            }
            let Some(line) = self.current.as_mut() else {
                return;
            };
            let end = (line.sent + FRAME_SAMPLES).min(line.audio.len());
            let mut frame = line.audio[line.sent..end].to_vec();
            frame.resize(FRAME_SAMPLES, 0);
            let played = frame.clone();
            match self.outbound.try_send(frame) {
                Ok(()) => self.echo.queue_far(&played),
                // The adapter's queue is full or gone: try again next tick / the call is ending.
                Err(_) => return,
            }
            let now = Instant::now();
            if line.sent == 0 {
                if self.first_word.is_none() {
                    self.first_word = Some(now.duration_since(self.answered_at).as_millis() as u64);
                }
                if let Some(m) = line.mark.take() {
                    let after_end = now.duration_since(m.ended_at);
                    let models = m.stt_wait + line.tts;
                    self.timings.push(TurnTiming {
                        voice_to_voice_ms: now.duration_since(m.speech_end_at).as_millis() as u64,
                        stt_wait_ms: m.stt_wait.as_millis() as u64,
                        stt_ms: m.stt.as_millis() as u64,
                        brain_ms: m.brain.as_millis() as u64,
                        tts_ms: line.tts.as_millis() as u64,
                        added_us: after_end.saturating_sub(models).as_micros() as u64,
                    });
                }
            }
            line.sent = end;
            self.ahead += 1;
            if line.sent >= line.audio.len() {
                self.message_left |= self.greeting.is_some();
                if let Some(line) = self.current.take() {
                    self.transcript.push(TranscriptItem {
                        role: Speaker::Agent,
                        message: line.text,
                        at_ms: Some(line.started_ms),
                    });
                }
            }
        }
    }

    /// Answering-machine detection on one inbound frame (`speech`: the VAD's, echo taken out),
    /// then, on a machine, the wait for its greeting to end.
    fn listen_for_machine(&mut self, frame: &[i16], speech: bool) {
        let at_ms = self.frame_no * FRAME_MS;
        let Some(amd) = self.amd.as_mut() else {
            return;
        };
        let verdict = amd.frame(at_ms, frame, speech, self.beeps.in_tone());
        let (sounding, provisional, beep_ended) =
            (amd.sounding(), amd.provisional(), amd.beep_ended());
        if let Some((verdict, cue)) = verdict {
            let was = std::mem::replace(&mut self.answered_by, verdict);
            tracing::info!(
                answered_by = verdict.as_str(),
                ?cue,
                at_ms,
                provisional,
                "who answered"
            );
            match verdict {
                AnsweredBy::Machine => {
                    // Nothing more is said to the machine, and nothing it says is a turn.
                    let _ = self.control.try_send(CallControl::FlushAudio);
                    self.stop_talking();
                }
                _ if was == AnsweredBy::Machine => {
                    // A person's long first sentence after all: their turn, held back while the
                    // verdict was open, is answered as any other.
                    self.respond_if_ready();
                    return;
                }
                // Still listening: a beep later on, or the greeting resuming, is a machine
                // after all.
                _ => return,
            }
        }
        if self.answered_by != AnsweredBy::Machine || provisional {
            return;
        }
        if !self.machine_sure {
            self.machine_sure = true;
            self.leave_message(at_ms, speech || self.beeps.in_tone());
            return;
        }
        if let Some(greeting) = self.greeting.as_mut() {
            if greeting.frame(at_ms, sounding, beep_ended) && self.withhold {
                tracing::info!(
                    at_ms,
                    beep_ended,
                    "the greeting is over: leaving the message"
                );
                self.withhold = false;
                self.fill();
            }
        }
    }

    /// A machine, for sure: the call ends, after the agent's message if it has one, which waits
    /// for the greeting's end (`sounding`: the greeting or the beep that decided it is sounding
    /// at `at_ms`).
    fn leave_message(&mut self, at_ms: u64, sounding: bool) {
        self.ending = true;
        self.awaiting = None;
        self.heard = None;
        let Some(message) = self.machine_message.take() else {
            return;
        };
        let mut greeting = GreetingEnd::new(at_ms, GreetingEnd::QUIET_MS, GreetingEnd::MAX_MS);
        greeting.frame(at_ms, sounding, false);
        self.greeting = Some(greeting);
        self.withhold = true;
        self.speak(
            Reply {
                say: vec![message],
                end: true,
                ..Reply::default()
            },
            None,
        );
    }

    /// The callee put the call on hold or took it off. On hold the line being played is cut
    /// where the callee stopped hearing it and said again whole once they are back; what is
    /// queued waits, and a reply on its way is queued behind it. The caller's utterance in
    /// progress is dropped: what comes down a held line is hold music.
    fn hold_changed(&mut self, held: bool) {
        self.on_hold = held;
        if !held {
            tracing::info!("the callee took the call off hold: the agent goes on");
            return;
        }
        tracing::info!("the callee put the call on hold: the agent waits");
        let _ = self.control.try_send(CallControl::FlushAudio);
        self.echo.flush_far();
        if let Some(mut line) = self.current.take() {
            self.record_cut(&line);
            line.sent = 0;
            self.queue.push_front(line);
        }
        self.ahead = 0;
        self.turns = TurnTaker::new(self.timing.turn);
        self.recognition = None;
        self.utterance += 1;
        self.preroll.clear();
    }

    /// A line cut short goes into the transcript as far as it was heard, with the cut marker.
    fn record_cut(&mut self, line: &Line) {
        let played = line
            .sent
            .saturating_sub(self.ahead * FRAME_SAMPLES)
            .min(line.audio.len());
        if played > 0 {
            self.transcript.push(TranscriptItem {
                role: Speaker::Agent,
                message: cut_text(&line.text, played as f64 / line.audio.len().max(1) as f64),
                at_ms: Some(line.started_ms),
            });
        }
    }

    /// Stops the agent: the line being played is recorded as far as it was heard, everything
    /// queued or still being synthesised is dropped.
    fn stop_talking(&mut self) {
        self.echo.flush_far();
        if let Some(line) = self.current.take() {
            self.record_cut(&line);
        }
        self.ahead = 0;
        self.queue.clear();
        self.reply += 1;
        self.synth_pending = 0;
    }
}

/// The words of `text` estimated to fit in the `fraction` of its audio that was played, with
/// the cut marker.
pub fn cut_text(text: &str, fraction: f64) -> String {
    let words: Vec<&str> = text.split_whitespace().collect();
    let n = ((words.len() as f64) * fraction.clamp(0.0, 1.0)).round() as usize;
    let mut s = words[..n.min(words.len())].join(" ");
    s.push_str(CUT_MARKER);
    s
}

/// Synthesisers start with up to a few hundred ms of silence; dropping it (keeping one frame)
/// brings the first word forward by as much.
pub fn trim_leading_silence(mut audio: Vec<i16>) -> Vec<i16> {
    const LOUD: u16 = 300;
    let first = audio
        .iter()
        .position(|s| s.unsigned_abs() >= LOUD)
        .unwrap_or(audio.len());
    let keep_from = first.saturating_sub(FRAME_SAMPLES);
    audio.drain(..keep_from);
    audio
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cut_line_keeps_the_words_played() {
        assert_eq!(cut_text("Can you pay it by Friday?", 0.5), "Can you pay…");
        assert_eq!(cut_text("Hello there", 0.0), "…");
        assert_eq!(cut_text("Hello there", 1.0), "Hello there…");
    }

    #[test]
    fn leading_silence_is_trimmed_to_one_frame() {
        let mut a = vec![0i16; 5000];
        a.extend([1000i16; 100]);
        let t = trim_leading_silence(a);
        assert_eq!(t.len(), FRAME_SAMPLES + 100);
        // All silence: nothing to find, nothing dropped.
        assert_eq!(trim_leading_silence(vec![0; 10]).len(), 10);
    }
}
