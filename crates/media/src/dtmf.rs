//! DTMF as RFC 4733 telephone-events: payload codec, a sender that emits the
//! packet train for one digit, and a receiver that reports each digit once.

use std::collections::VecDeque;
use std::time::Duration;

use thiserror::Error;

use crate::{CLOCK_RATE, FRAME_SAMPLES};

/// Times the final packet of an event is sent (RFC 4733 §2.5.1.4).
const END_REPEATS: u8 = 3;

/// Characters for events 0-15 (RFC 4733 §3.2).
const DIGITS: [char; 16] = [
    '0', '1', '2', '3', '4', '5', '6', '7', '8', '9', '*', '#', 'A', 'B', 'C', 'D',
];

/// Invalid telephone-event payloads or sender parameters.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DtmfError {
    /// A telephone-event payload is 4 bytes.
    #[error("telephone-event payload is {0} bytes, need 4")]
    Truncated(usize),
    /// Event codes above 15 (flash hook, tones) are not DTMF digits.
    #[error("event {0} is not a DTMF digit")]
    NotADigit(u8),
    /// Only `0-9`, `*`, `#` and `A-D` can be sent.
    #[error("{0:?} is not a DTMF character")]
    UnknownChar(char),
    /// Duration must be at least one sample and fit the 16-bit field.
    #[error("digit duration {0:?} is outside 1..=65535 samples")]
    Duration(Duration),
    /// Volume is 0-63 (-dBm0).
    #[error("volume {0} exceeds 63")]
    Volume(u8),
}

/// Maps a DTMF character (case-insensitive for `A-D`) to its event code.
pub fn digit_to_event(digit: char) -> Option<u8> {
    let digit = digit.to_ascii_uppercase();
    DIGITS.iter().position(|&d| d == digit).map(|i| i as u8)
}

/// Maps an event code to its DTMF character.
pub fn event_to_digit(event: u8) -> Option<char> {
    DIGITS.get(usize::from(event)).copied()
}

/// The 4-byte telephone-event payload (RFC 4733 §2.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TelephoneEvent {
    /// Event code.
    pub event: u8,
    /// E bit: this is the final packet of the event.
    pub end: bool,
    /// Power level in -dBm0, 0-63.
    pub volume: u8,
    /// Duration so far in timestamp units.
    pub duration: u16,
}

impl TelephoneEvent {
    /// Decodes the first event of a payload (later bytes are redundancy).
    pub fn parse(payload: &[u8]) -> Result<Self, DtmfError> {
        let &[event, flags, hi, lo, ..] = payload else {
            return Err(DtmfError::Truncated(payload.len()));
        };
        Ok(Self {
            event,
            end: flags & 0x80 != 0,
            volume: flags & 0x3F,
            duration: u16::from_be_bytes([hi, lo]),
        })
    }

    /// Encodes the payload; the reserved bit is zero and volume is masked to
    /// its 6 bits.
    pub fn to_bytes(&self) -> [u8; 4] {
        let [hi, lo] = self.duration.to_be_bytes();
        [
            self.event,
            u8::from(self.end) << 7 | (self.volume & 0x3F),
            hi,
            lo,
        ]
    }
}

/// One telephone-event packet to hand to [`crate::sender::RtpSender::packet`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DtmfPacket {
    /// Event start on the media clock, the same for every packet of a digit.
    pub timestamp: u32,
    /// Set on the first packet only.
    pub marker: bool,
    /// Encoded [`TelephoneEvent`].
    pub payload: [u8; 4],
}

/// Emits the packets for one digit, one per 20 ms tick, as an iterator.
#[derive(Debug, Clone)]
pub struct DtmfSender {
    event: u8,
    volume: u8,
    timestamp: u32,
    total: u16,
    sent: u16,
    ends_sent: u8,
}

impl DtmfSender {
    /// A digit starting at media-clock `timestamp` and lasting `duration`.
    pub fn new(
        digit: char,
        timestamp: u32,
        duration: Duration,
        volume: u8,
    ) -> Result<Self, DtmfError> {
        let event = digit_to_event(digit).ok_or(DtmfError::UnknownChar(digit))?;
        if volume > 63 {
            return Err(DtmfError::Volume(volume));
        }
        let samples = duration.as_nanos() * u128::from(CLOCK_RATE) / 1_000_000_000;
        let total = u16::try_from(samples)
            .ok()
            .filter(|&s| s > 0)
            .ok_or(DtmfError::Duration(duration))?;
        Ok(Self {
            event,
            volume,
            timestamp,
            total,
            sent: 0,
            ends_sent: 0,
        })
    }
}

impl Iterator for DtmfSender {
    type Item = DtmfPacket;

    fn next(&mut self) -> Option<DtmfPacket> {
        if self.ends_sent == END_REPEATS {
            return None;
        }
        let marker = self.sent == 0;
        self.sent = self
            .sent
            .saturating_add(FRAME_SAMPLES as u16)
            .min(self.total);
        let end = self.sent == self.total;
        if end {
            self.ends_sent += 1;
        }
        let event = TelephoneEvent {
            event: self.event,
            end,
            volume: self.volume,
            duration: self.sent,
        };
        Some(DtmfPacket {
            timestamp: self.timestamp,
            marker,
            payload: event.to_bytes(),
        })
    }
}

/// A digit the far end pressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Digit {
    /// `0-9`, `*`, `#` or `A-D`.
    pub digit: char,
    /// Event start on the sender's media clock.
    pub timestamp: u32,
    /// Longest duration reported, in timestamp units.
    pub duration: u16,
}

/// Turns received telephone-event packets into digits, each exactly once.
///
/// An event is identified by its RTP timestamp: its digit is reported on the
/// first end packet, or, if every end packet was lost, when a packet for a
/// newer event arrives or on [`flush`](Self::flush).
#[derive(Debug, Clone, Default)]
pub struct DtmfReceiver {
    /// Timestamp of the newest event seen.
    latest: Option<u32>,
    /// The newest event, while it has not ended.
    pending: Option<Digit>,
    ready: VecDeque<Digit>,
}

impl DtmfReceiver {
    /// A receiver that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Feeds the timestamp and payload of one telephone-event packet.
    pub fn push(&mut self, timestamp: u32, payload: &[u8]) -> Result<(), DtmfError> {
        let event = TelephoneEvent::parse(payload)?;
        let digit = event_to_digit(event.event).ok_or(DtmfError::NotADigit(event.event))?;
        match self.latest {
            // Serial-number comparison copes with timestamp wrap.
            Some(latest) if (latest.wrapping_sub(timestamp) as i32) > 0 => return Ok(()),
            Some(latest) if latest == timestamp && self.pending.is_none() => return Ok(()),
            Some(latest) if latest == timestamp => {}
            _ => {
                self.flush();
                self.latest = Some(timestamp);
            }
        }
        let duration = self.pending.map_or(0, |p| p.duration).max(event.duration);
        let current = Digit {
            digit,
            timestamp,
            duration,
        };
        if event.end {
            self.pending = None;
            self.ready.push_back(current);
        } else {
            self.pending = Some(current);
        }
        Ok(())
    }

    /// Reports an event whose end packets never came, e.g. when the stream
    /// stops or an inactivity timer fires.
    pub fn flush(&mut self) {
        self.ready.extend(self.pending.take());
    }

    /// Next digit, oldest first.
    pub fn poll(&mut self) -> Option<Digit> {
        self.ready.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn drain(rx: &mut DtmfReceiver) -> Vec<char> {
        std::iter::from_fn(|| rx.poll()).map(|d| d.digit).collect()
    }

    #[test]
    fn maps_all_sixteen_events() {
        let chars: String = (0..16).map(|e| event_to_digit(e).unwrap()).collect();
        assert_eq!(chars, "0123456789*#ABCD");
        for (e, c) in chars.chars().enumerate() {
            assert_eq!(digit_to_event(c), Some(e as u8));
        }
        assert_eq!(digit_to_event('d'), Some(15));
        assert_eq!(digit_to_event('E'), None);
        assert_eq!(event_to_digit(16), None);
    }

    #[test]
    fn payload_layout_matches_rfc_4733() {
        let ev = TelephoneEvent {
            event: 5,
            end: true,
            volume: 10,
            duration: 800,
        };
        assert_eq!(ev.to_bytes(), [5, 0x8A, 0x03, 0x20]);
        assert_eq!(TelephoneEvent::parse(&[5, 0x8A, 0x03, 0x20, 0xFF]), Ok(ev));
        // The reserved bit is ignored on input.
        assert_eq!(TelephoneEvent::parse(&[5, 0xCA, 0x03, 0x20]), Ok(ev));
        assert_eq!(
            TelephoneEvent::parse(&[5, 0x8A, 0x03]),
            Err(DtmfError::Truncated(3))
        );
    }

    #[test]
    fn sender_emits_growing_durations_then_three_ends() {
        let packets: Vec<_> = DtmfSender::new('#', 1234, ms(100), 10).unwrap().collect();
        let events: Vec<_> = packets
            .iter()
            .map(|p| TelephoneEvent::parse(&p.payload).unwrap())
            .collect();
        let durations: Vec<u16> = events.iter().map(|e| e.duration).collect();
        assert_eq!(durations, [160, 320, 480, 640, 800, 800, 800]);
        let ends: Vec<bool> = events.iter().map(|e| e.end).collect();
        assert_eq!(ends, [false, false, false, false, true, true, true]);
        let markers: Vec<bool> = packets.iter().map(|p| p.marker).collect();
        assert_eq!(markers, [true, false, false, false, false, false, false]);
        assert!(packets.iter().all(|p| p.timestamp == 1234));
        assert!(events.iter().all(|e| e.event == 11 && e.volume == 10));
    }

    #[test]
    fn sender_handles_partial_frames_and_rejects_bad_input() {
        let durations: Vec<u16> = DtmfSender::new('1', 0, ms(50), 10)
            .unwrap()
            .map(|p| TelephoneEvent::parse(&p.payload).unwrap().duration)
            .collect();
        assert_eq!(durations, [160, 320, 400, 400, 400]);
        let short: Vec<_> = DtmfSender::new('1', 0, ms(10), 10).unwrap().collect();
        assert_eq!(short.len(), 3);
        assert!(short[0].marker && !short[1].marker);
        assert!(matches!(
            DtmfSender::new('x', 0, ms(100), 10),
            Err(DtmfError::UnknownChar('x'))
        ));
        assert!(matches!(
            DtmfSender::new('1', 0, ms(0), 10),
            Err(DtmfError::Duration(_))
        ));
        assert!(matches!(
            DtmfSender::new('1', 0, ms(8192), 10),
            Err(DtmfError::Duration(_))
        ));
        assert!(DtmfSender::new('1', 0, ms(8191), 10).is_ok());
        assert!(matches!(
            DtmfSender::new('1', 0, ms(100), 64),
            Err(DtmfError::Volume(64))
        ));
    }

    #[test]
    fn receiver_reports_each_digit_once_despite_triple_ends() {
        let mut rx = DtmfReceiver::new();
        for (i, digit) in "12#".chars().enumerate() {
            for p in DtmfSender::new(digit, 10_000 + 2_000 * i as u32, ms(100), 10).unwrap() {
                rx.push(p.timestamp, &p.payload).unwrap();
            }
        }
        let got: Vec<Digit> = std::iter::from_fn(|| rx.poll()).collect();
        assert_eq!(got.iter().map(|d| d.digit).collect::<String>(), "12#");
        assert_eq!(got[2].timestamp, 14_000);
        assert_eq!(got[2].duration, 800);
        rx.flush();
        assert_eq!(rx.poll(), None);
    }

    #[test]
    fn repeated_digit_with_new_timestamp_counts_twice() {
        let mut rx = DtmfReceiver::new();
        for ts in [0, 1600] {
            for p in DtmfSender::new('7', ts, ms(60), 10).unwrap() {
                rx.push(p.timestamp, &p.payload).unwrap();
            }
        }
        assert_eq!(drain(&mut rx), ['7', '7']);
    }

    #[test]
    fn lost_end_packets_are_recovered_by_the_next_event_or_flush() {
        let mut rx = DtmfReceiver::new();
        let first: Vec<_> = DtmfSender::new('4', u32::MAX - 100, ms(100), 10)
            .unwrap()
            .collect();
        for p in first
            .iter()
            .filter(|p| !TelephoneEvent::parse(&p.payload).unwrap().end)
        {
            rx.push(p.timestamp, &p.payload).unwrap();
        }
        assert_eq!(rx.poll(), None);
        // The next event's timestamp has wrapped past zero.
        let second: Vec<_> = DtmfSender::new('9', 700, ms(60), 10).unwrap().collect();
        rx.push(second[0].timestamp, &second[0].payload).unwrap();
        let d = rx.poll().unwrap();
        assert_eq!((d.digit, d.duration), ('4', 640));
        assert_eq!(rx.poll(), None);
        // A straggler from the finished event must not resurrect it.
        rx.push(first[6].timestamp, &first[6].payload).unwrap();
        assert_eq!(rx.poll(), None);
        rx.flush();
        assert_eq!(drain(&mut rx), ['9']);
    }

    #[test]
    fn digits_survive_the_rtp_wire_with_shared_sequence_space() {
        use crate::rtp::RtpPacket;
        use crate::sender::{RtpSender, SenderConfig};

        let mut tx = RtpSender::new(SenderConfig {
            ssrc: 9,
            initial_sequence: 100,
            initial_timestamp: 5_000,
            payload_type: 0,
        });
        let mut rx = DtmfReceiver::new();
        let mut sequences = Vec::new();
        let mut buf = [0u8; 64];
        tx.audio(0, &[0xFF; 4]).unwrap();
        let start = tx.timestamp_at(1);
        for dp in DtmfSender::new('*', start, ms(80), 10).unwrap() {
            let packet = tx.packet(101, dp.timestamp, dp.marker, &dp.payload);
            let n = packet.write(&mut buf).unwrap();
            let parsed = RtpPacket::parse(&buf[..n]).unwrap();
            sequences.push(parsed.sequence);
            assert_eq!(parsed.payload_type, 101);
            rx.push(parsed.timestamp, parsed.payload).unwrap();
        }
        assert_eq!(sequences, (101..107).collect::<Vec<u16>>());
        let digit = rx.poll().unwrap();
        assert_eq!(
            (digit.digit, digit.timestamp, digit.duration),
            ('*', 5_160, 640)
        );
        assert_eq!(rx.poll(), None);
    }

    #[test]
    fn receiver_rejects_non_digit_events() {
        let mut rx = DtmfReceiver::new();
        let flash = TelephoneEvent {
            event: 16,
            end: true,
            volume: 10,
            duration: 800,
        };
        assert_eq!(rx.push(0, &flash.to_bytes()), Err(DtmfError::NotADigit(16)));
        assert_eq!(rx.push(0, &[1]), Err(DtmfError::Truncated(1)));
    }
}
