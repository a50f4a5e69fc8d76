//! Sans-IO media primitives for outdial calls: G.711 codecs, RTP packets, SRTP,
//! pacing, jitter buffering, RFC 4733 DTMF, 8/16 kHz resampling (and a
//! band-limited one for any pair of rates), WAV files, mixing, echo gating and
//! tone (beep) detection.
//!
//! Nothing here touches sockets, clocks or threads: callers feed bytes, sample
//! counts and [`std::time::Instant`]s in and get packets, frames and events
//! back, so every state machine is deterministic under test.

#![warn(missing_docs)]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::time::Duration;

pub mod dtmf;
pub mod echo;
pub mod g711;
pub mod jitter;
pub mod mix;
pub mod resample;
pub mod rtp;
pub mod sender;
pub mod sinc_resample;
pub mod srtp;
pub mod tone;
pub mod wav;

/// RTP clock rate of G.711 and telephone-event at narrowband.
pub const CLOCK_RATE: u32 = 8_000;

/// Samples in one 20 ms narrowband frame (the only ptime outdial offers).
pub const FRAME_SAMPLES: usize = 160;

/// Duration of one frame.
pub const FRAME_DURATION: Duration = Duration::from_millis(20);
