//! The telephony port: how dispatch asks for a call and learns what became of it. Adapters (the
//! SIP trunk UAC, later a provider's REST API) implement [`Telephony`]; each reports the same
//! events, so nothing above this line knows what a SIP response code is.

use crate::{CallStatus, ConversationId, Millis, TraceId, E164};
use async_trait::async_trait;
use std::path::PathBuf;
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// Audio inside outdial: 16 kHz mono signed 16-bit, 20 ms (320 samples) per frame. Adapters
/// convert to and from what the wire carries (8 kHz G.711 for a SIP trunk).
pub type AudioFrame = Vec<i16>;
pub const SAMPLE_RATE: u32 = 16_000;
pub const FRAME_SAMPLES: usize = 320;

/// Where and how to reach the trunk for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkTarget {
    /// `sip:host:port` (`sips:` with [`Transport::Tls`]).
    pub uri: String,
    pub username: Option<String>,
    pub password: Option<String>,
    /// How SIP messages travel to the trunk.
    pub transport: Transport,
    /// Keep a REGISTER binding with the trunk's credentials (trunks that require one).
    pub register: bool,
    /// Whether the call's media must be SRTP (SDES keys in the SDP).
    pub srtp: Srtp,
}

/// A trunk's media protection (the trunk option `srtp`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Srtp {
    /// Plain RTP (`RTP/AVP`).
    #[default]
    Off,
    /// Offer `RTP/SAVP` with SDES keys (RFC 4568) and refuse an answer without SRTP. Only over
    /// TLS, so the keys in the SDP are not sent in the clear.
    Required,
}

impl Srtp {
    pub const ALL: [Srtp; 2] = [Srtp::Off, Srtp::Required];

    /// The API's and the store's name: `off`, `required`.
    pub fn as_str(self) -> &'static str {
        match self {
            Srtp::Off => "off",
            Srtp::Required => "required",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for Srtp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A trunk's SIP transport (the trunk option `transport`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Transport {
    #[default]
    Udp,
    Tcp,
    /// TLS with certificate verification; the trunk's URI is `sips:`.
    Tls,
}

impl Transport {
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    /// The API's and the store's name: `udp`, `tcp`, `tls`.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

impl std::fmt::Display for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone)]
pub struct DialRequest {
    pub conversation_id: ConversationId,
    pub trace_id: TraceId,
    /// The agent's number (caller id).
    pub from: E164,
    pub to: E164,
    pub trunk: TrunkTarget,
    /// CANCEL after this long without an answer (`no_answer`).
    pub ring_timeout: Duration,
    /// Hang up after this long once answered.
    pub max_duration: Duration,
}

/// Both directions of an answered call's audio.
#[derive(Debug)]
pub struct MediaStream {
    /// What the callee says, in order, with gaps filled (silence) so frame N is always 20 ms
    /// after frame N-1.
    pub inbound: mpsc::Receiver<AudioFrame>,
    /// What the callee should hear. Frames are played at 20 ms each in order; when nothing is
    /// queued, silence is sent.
    pub outbound: mpsc::Sender<AudioFrame>,
    /// Whether the callee has put the call on hold (RFC 3264: their last offer wants none of our
    /// audio). Inbound frames keep coming while held: they are the call's clock, and hold music.
    pub held: watch::Receiver<bool>,
}

impl MediaStream {
    /// Streams that are not on hold, and the sender that puts them on hold and takes them off.
    pub fn new(
        inbound: mpsc::Receiver<AudioFrame>,
        outbound: mpsc::Sender<AudioFrame>,
    ) -> (Self, watch::Sender<bool>) {
        let (hold, held) = watch::channel(false);
        (
            Self {
                inbound,
                outbound,
                held,
            },
            hold,
        )
    }
}

#[derive(Debug)]
pub enum CallEvent {
    /// 180, or 183 without media.
    Ringing,
    /// 183 with SDP: early media (announcements, ringback) is being received.
    EarlyMedia,
    /// 200 OK and ACK: the callee picked up.
    Answered { at: Millis, media: MediaStream },
    /// An RFC 4733 digit from the callee.
    Dtmf(char),
    /// What became of a [`CallControl::Transfer`]. A connected REFER is followed by `Ended`; a
    /// connected bridge keeps the call going (the owner's audio streams are closed, the callee
    /// now talks to the target) until either side hangs up; a failed one leaves the callee with
    /// the owner, streams unchanged.
    Transfer(crate::call::Transfer),
    /// Always the last event of a call.
    Ended(CallEnd),
}

/// How a call ended, normalised.
#[derive(Debug, Clone, PartialEq)]
pub struct CallEnd {
    /// A terminal status: `completed` for an answered call that ended normally, else `busy`,
    /// `no_answer`, `unreachable`, `telephony_failed`, `socket_failure` or `failed`.
    pub status: CallStatus,
    /// For every status but `completed`: the SIP code and reason phrase, or what went wrong
    /// (e.g. `486 Busy Here`, `trunk unreachable: no response to INVITE`).
    pub failure_reason: Option<String>,
    pub answered_at: Option<Millis>,
    pub ended_at: Millis,
    /// Both legs mixed, if the adapter recorded the call.
    pub recording: Option<PathBuf>,
    /// The trunk itself asked for no new calls for this long (a SIP 503 with `Retry-After`):
    /// dispatch sends it nothing new until then. `None` for every other end.
    pub retry_after: Option<Duration>,
}

/// What the owner of a live call can ask of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallControl {
    /// CANCEL before answer, BYE after.
    Hangup,
    SendDtmf(char),
    /// Drop queued outbound audio at once (barge-in).
    FlushAudio,
    /// Hand the answered call to a person: REFER, else dial `number` and bridge. Answered by one
    /// [`CallEvent::Transfer`].
    Transfer(TransferRequest),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransferRequest {
    /// The target's name in the agent's `transfer.targets`, reported back in the outcome.
    pub target: String,
    pub number: E164,
}

/// A call in progress: its events and a way to steer it.
#[derive(Debug)]
pub struct LiveCall {
    pub events: mpsc::Receiver<CallEvent>,
    pub control: mpsc::Sender<CallControl>,
}

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The request cannot be turned into a call (bad trunk URI, ...). Nothing was sent.
    #[error("invalid dial request: {0}")]
    Invalid(String),
    /// The adapter cannot place calls at all right now (socket not bound, shutting down).
    #[error("telephony unavailable: {0}")]
    Unavailable(String),
}

#[async_trait]
pub trait Telephony: Send + Sync + 'static {
    /// Starts a call and returns at once; everything after that arrives as [`CallEvent`]s, the
    /// last one always `Ended`. Once this returns `Ok`, a dial attempt may have reached the
    /// network: the caller must treat the attempt as spent.
    async fn dial(&self, request: DialRequest) -> Result<LiveCall, DialError>;
}

/// What this node knows of a trunk's health, for whoever shows the trunk: its REGISTER binding
/// (trunks with `register`) and its last OPTIONS probe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrunkHealth {
    pub registration: Option<RegistrationView>,
    pub probe: Option<ProbeView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistrationView {
    /// `registering`, `registered` or `failed`.
    pub status: &'static str,
    /// The registrar's last answer (`200 OK`) or why none came.
    pub detail: Option<String>,
    pub expires_at: Option<Millis>,
    pub updated_at: Option<Millis>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeView {
    /// The trunk's answer (`200 OK`, or `401 Unauthorized`: alive all the same), or `None` when
    /// none came (`error` says why).
    pub response: Option<String>,
    pub error: Option<String>,
    pub round_trip_ms: Option<u64>,
    pub at: Millis,
}

/// Where the node's view of its trunks' health is read.
pub trait TrunkHealthSource: Send + Sync + 'static {
    fn health(&self, trunk: crate::TrunkId) -> Option<TrunkHealth>;
}
