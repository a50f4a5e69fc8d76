//! Outgoing RTP stream state for one SSRC: sequence numbers, media-clock
//! timestamps, talkspurt markers, and drift-free 20 ms pacing.

use std::time::{Duration, Instant};

use thiserror::Error;

use crate::rtp::RtpPacket;
use crate::{FRAME_DURATION, FRAME_SAMPLES};

/// Identity and random starting points of a stream (RFC 3550 §5.1 wants the
/// initial sequence number and timestamp random; the caller supplies them so
/// that tests stay deterministic).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SenderConfig {
    /// Synchronisation source of the stream.
    pub ssrc: u32,
    /// Sequence number of the first packet.
    pub initial_sequence: u16,
    /// Timestamp of frame 0.
    pub initial_timestamp: u32,
    /// Payload type of audio frames (0 = PCMU, 8 = PCMA).
    pub payload_type: u8,
}

/// Rejected calls to [`RtpSender::audio`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SenderError {
    /// The media clock cannot go backwards or repeat a frame.
    #[error("frame {frame} is not after the last sent frame {last}")]
    FrameNotAfterLast {
        /// Frame index passed in.
        frame: u64,
        /// Last frame index sent.
        last: u64,
    },
}

/// Stamps packets for one outgoing stream.
#[derive(Debug, Clone)]
pub struct RtpSender {
    config: SenderConfig,
    next_sequence: u16,
    last_audio_frame: Option<u64>,
}

impl RtpSender {
    /// A stream that has sent nothing yet.
    pub fn new(config: SenderConfig) -> Self {
        Self {
            config,
            next_sequence: config.initial_sequence,
            last_audio_frame: None,
        }
    }

    /// The stream's SSRC.
    pub fn ssrc(&self) -> u32 {
        self.config.ssrc
    }

    /// Switches the audio payload type (a codec change renegotiated mid-call). Sequence numbers
    /// and timestamps carry on: RTP allows a payload type change within one stream (RFC 3550
    /// §5.1), and the clock rate of the G.711 codecs is the same.
    pub fn set_payload_type(&mut self, payload_type: u8) {
        self.config.payload_type = payload_type;
    }

    /// Media-clock timestamp of the start of frame `frame`.
    pub fn timestamp_at(&self, frame: u64) -> u32 {
        // Timestamps are modulo 2^32, so truncating the index first is exact.
        self.config
            .initial_timestamp
            .wrapping_add((frame as u32).wrapping_mul(FRAME_SAMPLES as u32))
    }

    /// Packetises the audio of frame `frame` (counted from the stream start on
    /// the 20 ms media clock). Frames the caller skipped (silence suppression,
    /// DTMF) advance the timestamp but not the sequence number, and the first
    /// packet after such a gap carries the marker bit as a talkspurt start.
    pub fn audio<'p>(
        &mut self,
        frame: u64,
        payload: &'p [u8],
    ) -> Result<RtpPacket<'p>, SenderError> {
        let marker = match self.last_audio_frame {
            None => true,
            Some(last) if frame <= last => {
                return Err(SenderError::FrameNotAfterLast { frame, last });
            }
            Some(last) => frame - last > 1,
        };
        self.last_audio_frame = Some(frame);
        let timestamp = self.timestamp_at(frame);
        Ok(self.packet(self.config.payload_type, timestamp, marker, payload))
    }

    /// Stamps a non-audio packet (e.g. RFC 4733 telephone-event) that shares
    /// this stream's SSRC and sequence space.
    pub fn packet<'p>(
        &mut self,
        payload_type: u8,
        timestamp: u32,
        marker: bool,
        payload: &'p [u8],
    ) -> RtpPacket<'p> {
        let sequence = self.next_sequence;
        self.next_sequence = sequence.wrapping_add(1);
        RtpPacket::new(
            payload_type,
            sequence,
            timestamp,
            self.config.ssrc,
            marker,
            payload,
        )
    }
}

const FRAME_NANOS: u64 = FRAME_DURATION.as_nanos() as u64;

/// Maps wall-clock time to frame indices from a fixed start, so a driver that
/// sleeps until [`deadline`](Self::deadline) never accumulates drift from
/// timer slop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pacer {
    start: Instant,
}

impl Pacer {
    /// Frame 0 is due at `start`.
    pub fn new(start: Instant) -> Self {
        Self { start }
    }

    /// Index of the latest frame whose deadline has passed at `now`; a driver
    /// that wakes late sees it jump and can skip or catch up deliberately.
    pub fn due_frame(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        // u128 -> u64 cannot truncate before ~11.7 billion years.
        (elapsed / u128::from(FRAME_NANOS)) as u64
    }

    /// When frame `frame` is due.
    pub fn deadline(&self, frame: u64) -> Instant {
        // Saturation caps the offset at ~584 years, which any Instant can add.
        self.start + Duration::from_nanos(frame.saturating_mul(FRAME_NANOS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender() -> RtpSender {
        RtpSender::new(SenderConfig {
            ssrc: 0x1234_5678,
            initial_sequence: 65_534,
            initial_timestamp: u32::MAX - 200,
            payload_type: 0,
        })
    }

    #[test]
    fn consecutive_frames_advance_sequence_and_timestamp() {
        let mut s = sender();
        let payload = [0xFFu8; 160];
        let p0 = s.audio(0, &payload).unwrap();
        assert_eq!(
            (p0.sequence, p0.timestamp, p0.marker),
            (65_534, u32::MAX - 200, true)
        );
        assert_eq!(
            (p0.ssrc, p0.payload_type, p0.payload.len()),
            (0x1234_5678, 0, 160)
        );
        let p1 = s.audio(1, &payload).unwrap();
        assert_eq!(
            (p1.sequence, p1.timestamp, p1.marker),
            (65_535, u32::MAX - 40, false)
        );
        // Both counters wrap.
        let p2 = s.audio(2, &payload).unwrap();
        assert_eq!((p2.sequence, p2.timestamp, p2.marker), (0, 119, false));
    }

    #[test]
    fn silence_gap_jumps_timestamp_but_not_sequence_and_marks_talkspurt() {
        let mut s = sender();
        s.audio(0, &[]).unwrap();
        s.audio(1, &[]).unwrap();
        let p = s.audio(7, &[]).unwrap();
        assert_eq!(p.sequence, 0);
        assert_eq!(p.timestamp, (u32::MAX - 200).wrapping_add(7 * 160));
        assert!(p.marker);
        assert!(!s.audio(8, &[]).unwrap().marker);
    }

    #[test]
    fn payload_type_switch_keeps_the_stream_going() {
        let mut s = sender();
        s.audio(0, &[]).unwrap();
        s.set_payload_type(8);
        let p = s.audio(1, &[]).unwrap();
        assert_eq!((p.payload_type, p.sequence, p.marker), (8, 65_535, false));
        assert_eq!(p.timestamp, u32::MAX - 40);
    }

    #[test]
    fn stale_frames_are_rejected_without_consuming_a_sequence_number() {
        let mut s = sender();
        s.audio(3, &[]).unwrap();
        assert_eq!(
            s.audio(3, &[]),
            Err(SenderError::FrameNotAfterLast { frame: 3, last: 3 })
        );
        assert!(s.audio(2, &[]).is_err());
        assert_eq!(s.audio(4, &[]).unwrap().sequence, 65_535);
    }

    #[test]
    fn other_payloads_share_the_sequence_space() {
        let mut s = sender();
        s.audio(0, &[]).unwrap();
        let ts = s.timestamp_at(1);
        let event = s.packet(101, ts, true, &[1, 0, 0, 160]);
        assert_eq!(
            (event.sequence, event.timestamp, event.payload_type),
            (65_535, ts, 101)
        );
        let audio = s.audio(5, &[]).unwrap();
        assert_eq!(audio.sequence, 0);
        assert!(audio.marker);
    }

    #[test]
    fn pacer_maps_time_to_frames_without_drift() {
        let start = Instant::now();
        let pacer = Pacer::new(start);
        assert_eq!(pacer.due_frame(start), 0);
        assert_eq!(pacer.due_frame(start + Duration::from_micros(19_999)), 0);
        assert_eq!(pacer.due_frame(start + Duration::from_millis(20)), 1);
        assert_eq!(pacer.due_frame(start + Duration::from_millis(1_010)), 50);
        // An hour of frames lands exactly on the hour, not an accumulated sum.
        assert_eq!(pacer.deadline(180_000), start + Duration::from_secs(3_600));
        for frame in [0, 1, 49, 12_345] {
            let at = pacer.deadline(frame);
            assert_eq!(pacer.due_frame(at), frame);
            assert_eq!(
                pacer.due_frame(at + Duration::from_millis(20) - Duration::from_nanos(1)),
                frame
            );
        }
    }

    #[test]
    fn pacer_treats_times_before_start_as_frame_zero() {
        let start = Instant::now() + Duration::from_secs(1);
        assert_eq!(Pacer::new(start).due_frame(Instant::now()), 0);
    }
}
