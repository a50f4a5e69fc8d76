//! Receive-side jitter buffer for one 20 ms-per-packet audio stream.
//!
//! Playout follows sequence numbers: each [`JitterBuffer::pop`] on the 20 ms
//! tick yields the next packet or reports it missing. Timestamps are carried
//! through but not used for scheduling, which makes timestamp wrap and
//! sender-side silence suppression (timestamp jumps with contiguous sequence
//! numbers) harmless. When the buffer runs dry it re-buffers for the target
//! depth, so latency recovers after a stall instead of staying at zero slack.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::rtp::RtpPacket;
use crate::FRAME_DURATION;

/// Forward sequence jump still treated as loss rather than a new stream
/// (RFC 3550 appendix A.1).
const MAX_DROPOUT: u16 = 3000;
/// Backward sequence distance still treated as reordering (RFC 3550 A.1).
const MAX_MISORDER: u16 = 100;
/// Offset for extended sequence numbers so that reordering right after the
/// first packet cannot underflow.
const SEQ_CYCLE: u64 = 1 << 16;
/// Depth cap (10 s) far past any useful telephony buffer, so that absurd
/// configurations cannot overflow the frame arithmetic.
const DEPTH_LIMIT_FRAMES: u128 = 500;

/// Buffering targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JitterConfig {
    /// Delay added before playout starts (rounded up to whole frames, at
    /// least one, at most `max_depth`).
    pub target_depth: Duration,
    /// Buffered audio beyond which the oldest frames are dropped to get back
    /// to the target depth.
    pub max_depth: Duration,
}

impl Default for JitterConfig {
    fn default() -> Self {
        Self {
            target_depth: Duration::from_millis(40),
            max_depth: Duration::from_millis(200),
        }
    }
}

/// A frame ready for decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// RTP sequence number.
    pub sequence: u16,
    /// RTP timestamp.
    pub timestamp: u32,
    /// RTP marker bit (talkspurt start for audio).
    pub marker: bool,
    /// Encoded payload.
    pub payload: Vec<u8>,
}

/// Why a tick has no frame; both call for concealment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Missing {
    /// The expected packet did not arrive in time but later ones did: repeat
    /// or interpolate.
    Lost,
    /// Nothing to play (not started, silence suppression, or a stall): play
    /// silence or comfort noise.
    Underrun,
}

/// Result of one playout tick.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Playout {
    /// The next frame in sequence.
    Frame(Frame),
    /// No frame for this tick.
    Missing(Missing),
}

/// Counters since creation; they survive stream resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct JitterStats {
    /// Packets pushed.
    pub received: u64,
    /// Sequence numbers skipped at playout because they were not there.
    pub lost: u64,
    /// Packets that arrived after their playout slot (dropped).
    pub late: u64,
    /// Packets received before (dropped).
    pub duplicate: u64,
    /// Packets that arrived after a higher sequence number (includes late).
    pub reordered: u64,
    /// Packets dropped to bound latency, by a reset, or as an unconfirmed
    /// sequence jump.
    pub discarded: u64,
    /// Restarts for a new SSRC or a confirmed sequence jump.
    pub resets: u64,
}

#[derive(Debug)]
struct Entry {
    timestamp: u32,
    marker: bool,
    payload: Vec<u8>,
}

#[derive(Debug)]
struct Stream {
    ssrc: u32,
    /// Highest extended sequence number received.
    highest: u64,
    /// Bit `i` set if `highest - i` was received.
    seen: u128,
    /// Sequence number that would confirm a large jump (RFC 3550 A.1).
    probation: Option<u16>,
    /// Next extended sequence number to play, once playout has begun.
    next: Option<u64>,
    playing: bool,
    /// Arrival of the first packet queued while not playing.
    buffering_since: Option<Instant>,
    queue: BTreeMap<u64, Entry>,
}

/// Sans-IO jitter buffer: feed it packets with [`push`](Self::push) as they
/// arrive and call [`pop`](Self::pop) every 20 ms.
#[derive(Debug)]
pub struct JitterBuffer {
    target_delay: Duration,
    target_frames: u64,
    max_frames: u64,
    stream: Option<Stream>,
    stats: JitterStats,
}

impl JitterBuffer {
    /// An empty buffer.
    pub fn new(config: JitterConfig) -> Self {
        let frames = |d: Duration| {
            d.as_nanos()
                .div_ceil(FRAME_DURATION.as_nanos())
                .clamp(1, DEPTH_LIMIT_FRAMES) as u64
        };
        let max_frames = frames(config.max_depth);
        let target_frames = frames(config.target_depth).min(max_frames);
        Self {
            target_delay: FRAME_DURATION * target_frames as u32,
            target_frames,
            max_frames,
            stream: None,
            stats: JitterStats::default(),
        }
    }

    /// Counters so far.
    pub fn stats(&self) -> JitterStats {
        self.stats
    }

    /// Accepts a received packet; the payload is copied.
    pub fn push(&mut self, packet: &RtpPacket<'_>, arrival: Instant) {
        self.stats.received += 1;
        let stream = match &mut self.stream {
            Some(s) if s.ssrc == packet.ssrc => s,
            _ => return self.restart(packet, arrival),
        };

        let delta = packet.sequence.wrapping_sub(stream.highest as u16);
        let ext = if delta < MAX_DROPOUT {
            stream.highest + u64::from(delta)
        } else if delta > u16::MAX - MAX_MISORDER {
            stream.highest - (SEQ_CYCLE - u64::from(delta))
        } else if stream.probation == Some(packet.sequence) {
            return self.restart(packet, arrival);
        } else {
            stream.probation = Some(packet.sequence.wrapping_add(1));
            self.stats.discarded += 1;
            return;
        };

        if ext > stream.highest {
            let shift = ext - stream.highest;
            stream.seen = if shift >= 128 {
                0
            } else {
                stream.seen << shift
            };
            stream.seen |= 1;
            stream.highest = ext;
        } else {
            // Reachable only within MAX_MISORDER (< 128) of `highest`.
            let bit = 1u128 << (stream.highest - ext);
            if stream.seen & bit != 0 {
                self.stats.duplicate += 1;
                return;
            }
            stream.seen |= bit;
            self.stats.reordered += 1;
        }

        if stream.next.is_some_and(|next| ext < next) {
            self.stats.late += 1;
            return;
        }
        if !stream.playing && stream.buffering_since.is_none() {
            stream.buffering_since = Some(arrival);
        }
        stream.queue.insert(ext, Entry::from(packet));
    }

    /// Produces the audio for the current 20 ms tick.
    pub fn pop(&mut self, now: Instant) -> Playout {
        let Some(stream) = &mut self.stream else {
            return Playout::Missing(Missing::Underrun);
        };

        let next = match (stream.playing, stream.next) {
            (true, Some(next)) => next,
            _ => {
                let ready = stream
                    .buffering_since
                    .is_some_and(|since| now.saturating_duration_since(since) >= self.target_delay);
                let first = stream.queue.first_key_value().map(|(&k, _)| k);
                let (true, Some(first)) = (ready, first) else {
                    return Playout::Missing(Missing::Underrun);
                };
                // Sequence numbers only advance for sent packets, so a gap
                // across a stall is loss, not silence.
                if let Some(next) = stream.next {
                    self.stats.lost += first - next;
                }
                stream.playing = true;
                stream.buffering_since = None;
                first
            }
        };

        let next = match stream.queue.last_key_value() {
            Some((&last, _)) if last + 1 - next > self.max_frames => {
                let resume = last + 1 - self.target_frames;
                let kept = stream.queue.split_off(&resume);
                let dropped = std::mem::replace(&mut stream.queue, kept).len() as u64;
                self.stats.discarded += dropped;
                self.stats.lost += resume - next - dropped;
                resume
            }
            _ => next,
        };

        if let Some(entry) = stream.queue.remove(&next) {
            stream.next = Some(next + 1);
            return Playout::Frame(Frame {
                sequence: next as u16,
                timestamp: entry.timestamp,
                marker: entry.marker,
                payload: entry.payload,
            });
        }
        if stream.queue.is_empty() {
            stream.next = Some(next);
            stream.playing = false;
            return Playout::Missing(Missing::Underrun);
        }
        stream.next = Some(next + 1);
        self.stats.lost += 1;
        Playout::Missing(Missing::Lost)
    }

    fn restart(&mut self, packet: &RtpPacket<'_>, arrival: Instant) {
        if let Some(old) = self.stream.take() {
            self.stats.resets += 1;
            self.stats.discarded += old.queue.len() as u64;
        }
        let ext = SEQ_CYCLE + u64::from(packet.sequence);
        self.stream = Some(Stream {
            ssrc: packet.ssrc,
            highest: ext,
            seen: 1,
            probation: None,
            next: None,
            playing: false,
            buffering_since: Some(arrival),
            queue: BTreeMap::from([(ext, Entry::from(packet))]),
        });
    }
}

impl From<&RtpPacket<'_>> for Entry {
    fn from(packet: &RtpPacket<'_>) -> Self {
        Self {
            timestamp: packet.timestamp,
            marker: packet.marker,
            payload: packet.payload.to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const SSRC: u32 = 0xCAFE;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn packet(seq: u16) -> RtpPacket<'static> {
        packet_from(SSRC, seq)
    }

    fn packet_from(ssrc: u32, seq: u16) -> RtpPacket<'static> {
        // Payload carries the low byte of the sequence so frames are checkable.
        static PAYLOADS: [[u8; 1]; 256] = {
            let mut p = [[0u8; 1]; 256];
            let mut i = 0;
            while i < 256 {
                p[i][0] = i as u8;
                i += 1;
            }
            p
        };
        let ts = u32::from(seq).wrapping_mul(160);
        RtpPacket::new(0, seq, ts, ssrc, false, &PAYLOADS[usize::from(seq as u8)])
    }

    /// Sequence numbers of frames played over `ticks` pops from `start`, with
    /// `None` for missing ticks.
    fn play(jb: &mut JitterBuffer, start: Instant, ticks: u64) -> Vec<Option<u16>> {
        (0..ticks)
            .map(|i| match jb.pop(start + FRAME_DURATION * i as u32) {
                Playout::Frame(f) => {
                    assert_eq!(f.payload, [f.sequence as u8]);
                    Some(f.sequence)
                }
                Playout::Missing(_) => None,
            })
            .collect()
    }

    #[test]
    fn waits_for_target_depth_then_plays_in_order() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        assert_eq!(jb.pop(t0), Playout::Missing(Missing::Underrun));
        for seq in 0..5u16 {
            jb.push(&packet(seq), t0 + ms(20 * u64::from(seq)));
        }
        assert_eq!(jb.pop(t0 + ms(39)), Playout::Missing(Missing::Underrun));
        assert_eq!(
            play(&mut jb, t0 + ms(40), 6),
            [Some(0), Some(1), Some(2), Some(3), Some(4), None]
        );
        let stats = jb.stats();
        assert_eq!((stats.received, stats.lost, stats.reordered), (5, 0, 0));
    }

    #[test]
    fn reordered_packets_play_in_sequence() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for seq in [10, 12, 11, 13] {
            jb.push(&packet(seq), t0);
        }
        assert_eq!(
            play(&mut jb, t0 + ms(40), 4),
            [Some(10), Some(11), Some(12), Some(13)]
        );
        assert_eq!(jb.stats().reordered, 1);
        assert_eq!(jb.stats().lost, 0);
    }

    #[test]
    fn duplicates_are_dropped_before_and_after_playout() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(&packet(1), t0);
        jb.push(&packet(1), t0);
        jb.push(&packet(2), t0);
        assert_eq!(play(&mut jb, t0 + ms(40), 1), [Some(1)]);
        jb.push(&packet(1), t0 + ms(41));
        assert_eq!(play(&mut jb, t0 + ms(60), 2), [Some(2), None]);
        let stats = jb.stats();
        assert_eq!((stats.received, stats.duplicate, stats.late), (4, 2, 0));
    }

    #[test]
    fn gaps_are_reported_lost_and_late_arrivals_dropped() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for seq in [1, 2, 4, 5] {
            jb.push(&packet(seq), t0);
        }
        let start = t0 + ms(40);
        assert_eq!(jb.pop(start), Playout::Frame(frame(1)));
        assert_eq!(jb.pop(start + ms(20)), Playout::Frame(frame(2)));
        assert_eq!(jb.pop(start + ms(40)), Playout::Missing(Missing::Lost));
        jb.push(&packet(3), start + ms(45));
        assert_eq!(play(&mut jb, start + ms(60), 3), [Some(4), Some(5), None]);
        let stats = jb.stats();
        assert_eq!((stats.lost, stats.late, stats.reordered), (1, 1, 1));
    }

    fn frame(seq: u16) -> Frame {
        let p = packet(seq);
        Frame {
            sequence: seq,
            timestamp: p.timestamp,
            marker: false,
            payload: p.payload.to_vec(),
        }
    }

    #[test]
    fn sequence_and_timestamp_wrap_are_seamless() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        let seqs = [65_533u16, 65_534, 65_535, 0, 1, 2];
        // Timestamps cross 2^32 at the same point as the sequence numbers.
        let base = u32::MAX - 2 * 160 - 159;
        let ts = |i: usize| base.wrapping_add(160 * i as u32);
        // 65535 and 0 swap places to exercise reordering across the wrap.
        for i in [0, 1, 3, 2, 4, 5] {
            let mut p = packet(seqs[i]);
            p.timestamp = ts(i);
            jb.push(&p, t0);
        }
        let played: Vec<(u16, u32)> = (0..6u32)
            .map(|i| match jb.pop(t0 + ms(40) + FRAME_DURATION * i) {
                Playout::Frame(f) => (f.sequence, f.timestamp),
                other => panic!("tick {i}: {other:?}"),
            })
            .collect();
        let expected: Vec<(u16, u32)> = (0..6).map(|i| (seqs[i], ts(i))).collect();
        assert_eq!(played, expected);
        assert!(ts(3) < ts(2), "fixture must actually wrap the timestamp");
        let stats = jb.stats();
        assert_eq!((stats.lost, stats.resets, stats.reordered), (0, 0, 1));
    }

    #[test]
    fn new_ssrc_resets_the_stream() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        for seq in 100..104 {
            jb.push(&packet(seq), t0);
        }
        assert_eq!(play(&mut jb, t0 + ms(40), 2), [Some(100), Some(101)]);
        let t1 = t0 + ms(70);
        jb.push(&packet_from(0xBEEF, 7), t1);
        jb.push(&packet_from(0xBEEF, 8), t1);
        assert_eq!(jb.pop(t1 + ms(20)), Playout::Missing(Missing::Underrun));
        assert_eq!(play(&mut jb, t1 + ms(40), 3), [Some(7), Some(8), None]);
        let stats = jb.stats();
        assert_eq!((stats.resets, stats.discarded, stats.lost), (1, 2, 0));
    }

    #[test]
    fn a_single_sequence_jump_is_ignored_but_a_confirmed_one_resets() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(&packet(500), t0);
        jb.push(&packet(20_000), t0);
        jb.push(&packet(501), t0);
        assert_eq!(play(&mut jb, t0 + ms(40), 2), [Some(500), Some(501)]);
        assert_eq!(jb.stats().discarded, 1);
        assert_eq!(jb.stats().resets, 0);

        jb.push(&packet(40_000), t0 + ms(80));
        jb.push(&packet(40_001), t0 + ms(80));
        jb.push(&packet(40_002), t0 + ms(80));
        assert_eq!(play(&mut jb, t0 + ms(120), 2), [Some(40_001), Some(40_002)]);
        let stats = jb.stats();
        assert_eq!((stats.discarded, stats.resets, stats.lost), (2, 1, 0));
    }

    #[test]
    fn underrun_rebuffers_and_counts_only_real_gaps_as_loss() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(&packet(1), t0);
        jb.push(&packet(2), t0 + ms(20));
        assert_eq!(
            play(&mut jb, t0 + ms(40), 4),
            [Some(1), Some(2), None, None]
        );
        // Talk resumes after silence suppression with the next sequence number.
        let t1 = t0 + ms(500);
        jb.push(&packet(3), t1);
        assert_eq!(jb.pop(t1 + ms(20)), Playout::Missing(Missing::Underrun));
        assert_eq!(play(&mut jb, t1 + ms(40), 3), [Some(3), None, None]);
        assert_eq!(jb.stats().lost, 0);
        // After another stall two packets never arrive.
        let t2 = t1 + ms(500);
        jb.push(&packet(6), t2);
        assert_eq!(play(&mut jb, t2 + ms(40), 2), [Some(6), None]);
        assert_eq!(jb.stats().lost, 2);
    }

    #[test]
    fn overflow_drops_oldest_frames_back_to_target_depth() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(&packet(0), t0);
        assert_eq!(play(&mut jb, t0 + ms(40), 1), [Some(0)]);
        // A 300 ms burst (15 frames, one of them lost) after a network hiccup.
        for seq in (1..16).filter(|&s| s != 5) {
            jb.push(&packet(seq), t0 + ms(300));
        }
        assert_eq!(play(&mut jb, t0 + ms(300), 3), [Some(14), Some(15), None]);
        let stats = jb.stats();
        assert_eq!((stats.discarded, stats.lost), (12, 1));
    }

    #[test]
    fn late_packets_are_counted_after_a_stall() {
        let t0 = Instant::now();
        let mut jb = JitterBuffer::new(JitterConfig::default());
        jb.push(&packet(1), t0);
        jb.push(&packet(3), t0);
        assert_eq!(
            play(&mut jb, t0 + ms(40), 4),
            [Some(1), None, Some(3), None]
        );
        jb.push(&packet(2), t0 + ms(200));
        assert_eq!(jb.pop(t0 + ms(260)), Playout::Missing(Missing::Underrun));
        assert_eq!(jb.stats().late, 1);
    }

    #[test]
    fn config_is_clamped_to_whole_frames() {
        let jb = JitterBuffer::new(JitterConfig {
            target_depth: ms(500),
            max_depth: ms(50),
        });
        assert_eq!((jb.target_frames, jb.max_frames), (3, 3));
        let jb = JitterBuffer::new(JitterConfig {
            target_depth: Duration::ZERO,
            max_depth: ms(200),
        });
        assert_eq!((jb.target_frames, jb.max_frames), (1, 10));
        let jb = JitterBuffer::new(JitterConfig {
            target_depth: Duration::MAX,
            max_depth: Duration::MAX,
        });
        assert_eq!((jb.target_frames, jb.max_frames), (500, 500));
    }

    proptest! {
        /// Any mix of order, duplicates and gaps delivered before playout
        /// starts comes out as the distinct packets, in order, once each.
        #[test]
        fn plays_each_distinct_packet_once_in_order(
            start in any::<u16>(),
            offsets in prop::collection::vec(0u16..10, 1..30),
        ) {
            let t0 = Instant::now();
            let mut jb = JitterBuffer::new(JitterConfig::default());
            for &o in &offsets {
                jb.push(&packet(start.wrapping_add(o)), t0);
            }
            let mut distinct = offsets.clone();
            distinct.sort_unstable();
            distinct.dedup();
            // Offsets span far less than MAX_MISORDER, so every packet falls
            // in the reorder window of whichever arrived first.
            let played: Vec<u16> = play(&mut jb, t0 + ms(40), 12).into_iter().flatten().collect();
            let expected: Vec<u16> = distinct.iter().map(|&o| start.wrapping_add(o)).collect();
            prop_assert_eq!(played, expected);
            let stats = jb.stats();
            let span = u64::from(distinct[distinct.len() - 1] - distinct[0]) + 1;
            prop_assert_eq!(stats.lost, span - distinct.len() as u64);
            prop_assert_eq!(stats.duplicate, (offsets.len() - distinct.len()) as u64);
            prop_assert_eq!(stats.received, offsets.len() as u64);
        }
    }
}
