//! RTP packets (RFC 3550 §5.1): parsing borrows from the datagram, writing
//! fills a caller-provided buffer, so neither allocates.

use thiserror::Error;

/// Fixed header length before CSRCs and extension.
pub const HEADER_LEN: usize = 12;

/// Most CSRCs the 4-bit CC field can announce.
pub const MAX_CSRCS: usize = 15;

/// Why a datagram is not a usable RTP packet, or a packet cannot be written.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RtpError {
    /// The datagram ends before a length-prefixed part it announces.
    #[error("RTP packet truncated: need {needed} bytes, have {len}")]
    Truncated {
        /// Bytes the header says are present.
        needed: usize,
        /// Bytes actually present.
        len: usize,
    },
    /// Version field is not 2.
    #[error("unsupported RTP version {0}")]
    Version(u8),
    /// Padding count is zero or longer than the payload it pads.
    #[error("invalid RTP padding count {0}")]
    Padding(u8),
    /// Payload type does not fit in 7 bits.
    #[error("payload type {0} exceeds 127")]
    PayloadType(u8),
    /// Extension data is not whole 32-bit words or exceeds 65535 words.
    #[error("extension length {0} is not a multiple of 4 up to 262140")]
    ExtensionLength(usize),
    /// The output buffer cannot hold the packet.
    #[error("buffer too small: need {needed} bytes, have {len}")]
    BufferTooSmall {
        /// Bytes the packet needs.
        needed: usize,
        /// Bytes the buffer has.
        len: usize,
    },
}

/// Contributing sources, stored inline because the header caps them at 15.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Csrcs {
    len: u8,
    ids: [u32; MAX_CSRCS],
}

impl Csrcs {
    /// Builds a list; `None` if `ids` holds more than [`MAX_CSRCS`].
    pub fn from_slice(ids: &[u32]) -> Option<Self> {
        let mut list = Self::default();
        list.ids.get_mut(..ids.len())?.copy_from_slice(ids);
        list.len = ids.len() as u8;
        Some(list)
    }

    /// The contributing sources in header order.
    pub fn as_slice(&self) -> &[u32] {
        &self.ids[..usize::from(self.len)]
    }
}

/// A header extension (RFC 3550 §5.3.1); its content is opaque here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extension<'a> {
    /// Profile-defined identifier (e.g. 0xBEDE for RFC 8285 one-byte headers).
    pub profile: u16,
    /// Extension body, a whole number of 32-bit words.
    pub data: &'a [u8],
}

/// One RTP packet, borrowing its payload (and extension) from elsewhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RtpPacket<'a> {
    /// Marker bit; for audio, the first packet of a talkspurt.
    pub marker: bool,
    /// 7-bit payload type.
    pub payload_type: u8,
    /// Sequence number.
    pub sequence: u16,
    /// Media clock timestamp.
    pub timestamp: u32,
    /// Synchronisation source.
    pub ssrc: u32,
    /// Contributing sources.
    pub csrcs: Csrcs,
    /// Header extension, if the X bit is set.
    pub extension: Option<Extension<'a>>,
    /// Payload without padding.
    pub payload: &'a [u8],
    /// Padding bytes after the payload, including the count byte; 0 = none.
    pub padding: u8,
}

impl<'a> RtpPacket<'a> {
    /// A packet with no CSRCs, extension or padding.
    pub fn new(
        payload_type: u8,
        sequence: u16,
        timestamp: u32,
        ssrc: u32,
        marker: bool,
        payload: &'a [u8],
    ) -> Self {
        Self {
            marker,
            payload_type,
            sequence,
            timestamp,
            ssrc,
            csrcs: Csrcs::default(),
            extension: None,
            payload,
            padding: 0,
        }
    }

    /// Parses a datagram; the returned packet borrows from `buf`.
    pub fn parse(buf: &'a [u8]) -> Result<Self, RtpError> {
        let truncated = |needed| RtpError::Truncated {
            needed,
            len: buf.len(),
        };
        if buf.len() < HEADER_LEN {
            return Err(truncated(HEADER_LEN));
        }
        let version = buf[0] >> 6;
        if version != 2 {
            return Err(RtpError::Version(version));
        }
        let has_padding = buf[0] & 0x20 != 0;
        let has_extension = buf[0] & 0x10 != 0;
        let csrc_count = usize::from(buf[0] & 0x0F);

        let mut offset = HEADER_LEN + 4 * csrc_count;
        let csrc_bytes = buf.get(HEADER_LEN..offset).ok_or(truncated(offset))?;
        let mut ids = [0u32; MAX_CSRCS];
        for (id, chunk) in ids.iter_mut().zip(csrc_bytes.chunks_exact(4)) {
            *id = be32(chunk);
        }
        let csrcs = Csrcs {
            len: csrc_count as u8,
            ids,
        };

        let extension = if has_extension {
            let head = buf.get(offset..offset + 4).ok_or(truncated(offset + 4))?;
            let profile = u16::from_be_bytes([head[0], head[1]]);
            let words = usize::from(u16::from_be_bytes([head[2], head[3]]));
            let start = offset + 4;
            offset = start + 4 * words;
            let data = buf.get(start..offset).ok_or(truncated(offset))?;
            Some(Extension { profile, data })
        } else {
            None
        };

        let mut end = buf.len();
        let padding = if has_padding {
            // `offset <= end` holds here because every `get` above succeeded.
            let count = buf[end - 1];
            if count == 0 || usize::from(count) > end - offset {
                return Err(RtpError::Padding(count));
            }
            end -= usize::from(count);
            count
        } else {
            0
        };

        Ok(Self {
            marker: buf[1] & 0x80 != 0,
            payload_type: buf[1] & 0x7F,
            sequence: u16::from_be_bytes([buf[2], buf[3]]),
            timestamp: be32(&buf[4..8]),
            ssrc: be32(&buf[8..12]),
            csrcs,
            extension,
            payload: &buf[offset..end],
            padding,
        })
    }

    /// Bytes [`write`](Self::write) will produce.
    pub fn encoded_len(&self) -> usize {
        HEADER_LEN
            + 4 * self.csrcs.as_slice().len()
            + self.extension.map_or(0, |e| 4 + e.data.len())
            + self.payload.len()
            + usize::from(self.padding)
    }

    /// Serialises into `buf`, returning the number of bytes written.
    pub fn write(&self, buf: &mut [u8]) -> Result<usize, RtpError> {
        if self.payload_type > 0x7F {
            return Err(RtpError::PayloadType(self.payload_type));
        }
        if let Some(ext) = self.extension {
            if ext.data.len() % 4 != 0 || ext.data.len() / 4 > usize::from(u16::MAX) {
                return Err(RtpError::ExtensionLength(ext.data.len()));
            }
        }
        let needed = self.encoded_len();
        let len = buf.len();
        let out = buf
            .get_mut(..needed)
            .ok_or(RtpError::BufferTooSmall { needed, len })?;

        let csrcs = self.csrcs.as_slice();
        out[0] = 0x80
            | u8::from(self.padding > 0) << 5
            | u8::from(self.extension.is_some()) << 4
            | csrcs.len() as u8;
        out[1] = u8::from(self.marker) << 7 | self.payload_type;
        out[2..4].copy_from_slice(&self.sequence.to_be_bytes());
        out[4..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.ssrc.to_be_bytes());

        let mut at = HEADER_LEN;
        for id in csrcs {
            out[at..at + 4].copy_from_slice(&id.to_be_bytes());
            at += 4;
        }
        if let Some(ext) = self.extension {
            out[at..at + 2].copy_from_slice(&ext.profile.to_be_bytes());
            // Checked above: the word count fits in 16 bits.
            out[at + 2..at + 4].copy_from_slice(&((ext.data.len() / 4) as u16).to_be_bytes());
            at += 4;
            out[at..at + ext.data.len()].copy_from_slice(ext.data);
            at += ext.data.len();
        }
        out[at..at + self.payload.len()].copy_from_slice(self.payload);
        at += self.payload.len();
        if self.padding > 0 {
            out[at..needed - 1].fill(0);
            out[needed - 1] = self.padding;
        }
        Ok(needed)
    }
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_a_hand_built_pcmu_packet() {
        let mut bytes = vec![
            0x80, 0x80, 0x12, 0x34, 0, 0, 0x01, 0x40, 0xDE, 0xAD, 0xBE, 0xEF,
        ];
        bytes.extend_from_slice(&[0xFF; 160]);
        let p = RtpPacket::parse(&bytes).unwrap();
        assert!(p.marker);
        assert_eq!(p.payload_type, 0);
        assert_eq!(p.sequence, 0x1234);
        assert_eq!(p.timestamp, 320);
        assert_eq!(p.ssrc, 0xDEAD_BEEF);
        assert_eq!(p.payload.len(), 160);
        assert!(p.csrcs.as_slice().is_empty());
    }

    #[test]
    fn skips_csrcs_and_extension_and_strips_padding() {
        let mut bytes = vec![0xB2, 0x08, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3];
        bytes.extend_from_slice(&[0, 0, 0, 10, 0, 0, 0, 11]); // two CSRCs
        bytes.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, 0xAA, 0, 0]); // one word
        bytes.extend_from_slice(b"abc");
        bytes.extend_from_slice(&[0, 0, 3]);
        let p = RtpPacket::parse(&bytes).unwrap();
        assert_eq!(p.csrcs.as_slice(), &[10, 11]);
        assert_eq!(
            p.extension,
            Some(Extension {
                profile: 0xBEDE,
                data: &[0x10, 0xAA, 0, 0]
            })
        );
        assert_eq!(p.payload, b"abc");
        assert_eq!(p.padding, 3);
        assert_eq!(p.payload_type, 8);

        let mut out = [0u8; 64];
        let n = p.write(&mut out).unwrap();
        assert_eq!(&out[..n], &bytes[..]);
    }

    #[test]
    fn rejects_malformed_headers() {
        let short = [0x80u8; 11];
        assert_eq!(
            RtpPacket::parse(&short),
            Err(RtpError::Truncated {
                needed: 12,
                len: 11
            })
        );
        let mut v1 = [0u8; 12];
        v1[0] = 0x40;
        assert_eq!(RtpPacket::parse(&v1), Err(RtpError::Version(1)));

        let mut csrc = vec![0x83u8; 12];
        csrc.extend_from_slice(&[0; 8]);
        assert_eq!(
            RtpPacket::parse(&csrc),
            Err(RtpError::Truncated {
                needed: 24,
                len: 20
            })
        );

        let mut ext = vec![0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xBE, 0xDE, 0, 2];
        ext.extend_from_slice(&[0; 4]);
        assert_eq!(
            RtpPacket::parse(&ext),
            Err(RtpError::Truncated {
                needed: 24,
                len: 20
            })
        );

        let mut pad = vec![0xA0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 2];
        pad.push(4);
        assert_eq!(RtpPacket::parse(&pad), Err(RtpError::Padding(4)));
        *pad.last_mut().unwrap() = 0;
        assert_eq!(RtpPacket::parse(&pad), Err(RtpError::Padding(0)));
        // Padding may consume the whole payload.
        *pad.last_mut().unwrap() = 3;
        assert_eq!(RtpPacket::parse(&pad).unwrap().payload, b"");
    }

    #[test]
    fn write_validates_fields_and_buffer() {
        let payload = [1u8; 4];
        let mut p = RtpPacket::new(128, 0, 0, 0, false, &payload);
        let mut buf = [0u8; 64];
        assert_eq!(p.write(&mut buf), Err(RtpError::PayloadType(128)));
        p.payload_type = 0;
        assert_eq!(
            p.write(&mut buf[..15]),
            Err(RtpError::BufferTooSmall {
                needed: 16,
                len: 15
            })
        );
        p.extension = Some(Extension {
            profile: 1,
            data: &[1, 2, 3],
        });
        assert_eq!(p.write(&mut buf), Err(RtpError::ExtensionLength(3)));
    }

    #[test]
    fn csrc_list_rejects_more_than_fifteen() {
        assert!(Csrcs::from_slice(&[7; 15]).is_some());
        assert!(Csrcs::from_slice(&[7; 16]).is_none());
    }

    /// Owned inputs for a packet, so proptest can generate them.
    #[derive(Debug, Clone)]
    struct Fields {
        marker: bool,
        payload_type: u8,
        sequence: u16,
        timestamp: u32,
        ssrc: u32,
        csrcs: Vec<u32>,
        extension: Option<(u16, Vec<u8>)>,
        payload: Vec<u8>,
        padding: u8,
    }

    fn fields() -> impl Strategy<Value = Fields> {
        let words = prop::collection::vec(any::<[u8; 4]>(), 0..8).prop_map(|w| w.concat());
        (
            (
                any::<bool>(),
                0u8..128,
                any::<u16>(),
                any::<u32>(),
                any::<u32>(),
            ),
            prop::collection::vec(any::<u32>(), 0..=MAX_CSRCS),
            prop::option::of((any::<u16>(), words)),
            prop::collection::vec(any::<u8>(), 0..400),
            any::<u8>(),
        )
            .prop_map(
                |(
                    (marker, payload_type, sequence, timestamp, ssrc),
                    csrcs,
                    extension,
                    payload,
                    padding,
                )| {
                    Fields {
                        marker,
                        payload_type,
                        sequence,
                        timestamp,
                        ssrc,
                        csrcs,
                        extension,
                        payload,
                        padding,
                    }
                },
            )
    }

    proptest! {
        #[test]
        fn write_then_parse_round_trips(f in fields()) {
            let packet = RtpPacket {
                marker: f.marker,
                payload_type: f.payload_type,
                sequence: f.sequence,
                timestamp: f.timestamp,
                ssrc: f.ssrc,
                csrcs: Csrcs::from_slice(&f.csrcs).unwrap(),
                extension: f.extension.as_ref().map(|(profile, data)| Extension { profile: *profile, data }),
                payload: &f.payload,
                padding: f.padding,
            };
            let mut buf = vec![0u8; packet.encoded_len()];
            let n = packet.write(&mut buf).unwrap();
            prop_assert_eq!(n, buf.len());
            prop_assert_eq!(RtpPacket::parse(&buf).unwrap(), packet);
        }

        #[test]
        fn parse_never_panics_and_accepted_packets_rewrite_identically(
            bytes in prop::collection::vec(any::<u8>(), 0..300)
        ) {
            if let Ok(p) = RtpPacket::parse(&bytes) {
                let mut out = vec![0u8; p.encoded_len()];
                prop_assert_eq!(p.write(&mut out), Ok(bytes.len()));
                prop_assert_eq!(RtpPacket::parse(&out).unwrap(), p);
            }
        }

        #[test]
        fn parse_never_panics_on_valid_looking_headers(
            first in 0x80u8..0xC0,
            rest in prop::collection::vec(any::<u8>(), 0..120)
        ) {
            let mut bytes = vec![first];
            bytes.extend_from_slice(&rest);
            let _ = RtpPacket::parse(&bytes);
        }
    }
}
