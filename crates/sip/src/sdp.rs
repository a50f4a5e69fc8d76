//! The one SDP offer outdial makes and the parts of an answer it needs (RFC 3264, RFC 4566).
//! Only what a G.711 trunk call uses is understood; everything else in an answer is ignored.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

/// Payload type we offer for RFC 4733 telephone-events.
pub const OFFERED_TELEPHONE_EVENT_PT: u8 = 101;

/// G.711 variants, by their static payload types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Pcmu,
    Pcma,
}

impl Codec {
    pub fn from_payload_type(pt: u8) -> Option<Self> {
        match pt {
            0 => Some(Codec::Pcmu),
            8 => Some(Codec::Pcma),
            _ => None,
        }
    }

    fn from_encoding(name: &str) -> Option<Self> {
        if name.eq_ignore_ascii_case("PCMU/8000") || name.eq_ignore_ascii_case("PCMU/8000/1") {
            Some(Codec::Pcmu)
        } else if name.eq_ignore_ascii_case("PCMA/8000") || name.eq_ignore_ascii_case("PCMA/8000/1")
        {
            Some(Codec::Pcma)
        } else {
            None
        }
    }
}

/// What the far end told us about its audio stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RemoteMedia {
    /// Where to send RTP until symmetric RTP learns better.
    pub addr: SocketAddr,
    /// First codec of the answer that we support.
    pub codec: Codec,
    /// The payload type the answer gave that codec (static, or dynamic via rtpmap).
    pub payload_type: u8,
    /// Payload type the far end wants telephone-events sent with, if it accepts them.
    pub telephone_event: Option<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SdpError {
    #[error("SDP has no audio m= line")]
    NoAudio,
    #[error("SDP has no connection address")]
    NoConnection,
    #[error("SDP offers no codec we support (PCMU, PCMA)")]
    NoCommonCodec,
    #[error("SDP audio stream is disabled (port 0)")]
    Rejected,
    #[error("malformed SDP line: {0}")]
    Malformed(String),
}

/// The offer for one call: PCMU, PCMA and telephone-event at 20 ms on `rtp_port`. `version` is
/// the o= version, which must grow each time the same session is re-sent with changes.
pub fn offer(ip: IpAddr, rtp_port: u16, session_id: u64, version: u64) -> String {
    let family = match ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    };
    let te = OFFERED_TELEPHONE_EVENT_PT;
    let mut sdp = String::with_capacity(320);
    // Writing to a String cannot fail.
    let _ = write!(
        sdp,
        "v=0\r\n\
         o=outdial {session_id} {version} IN {family} {ip}\r\n\
         s=outdial\r\n\
         c=IN {family} {ip}\r\n\
         t=0 0\r\n\
         m=audio {rtp_port} RTP/AVP 0 8 {te}\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:{te} telephone-event/8000\r\n\
         a=fmtp:{te} 0-15\r\n\
         a=ptime:20\r\n\
         a=sendrecv\r\n"
    );
    sdp
}

/// Reads the first audio stream of an answer (or of an early-media 183, or of a re-INVITE offer
/// from the far end, which we answer with the same media).
pub fn parse(sdp: &str) -> Result<RemoteMedia, SdpError> {
    let mut session_ip: Option<IpAddr> = None;
    let mut media: Option<(u16, Vec<u8>)> = None;
    let mut media_ip: Option<IpAddr> = None;
    let mut rtpmaps: Vec<(u8, String)> = Vec::new();
    let mut in_audio = false;
    let mut audio_seen = false;

    for line in sdp.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let Some((kind, value)) = line.split_once('=') else {
            return Err(SdpError::Malformed(line.to_string()));
        };
        match kind {
            "m" => {
                // Only the first audio stream counts; later m= lines end it.
                in_audio = false;
                if audio_seen {
                    continue;
                }
                let mut fields = value.split_whitespace();
                if fields.next() != Some("audio") {
                    continue;
                }
                let port = fields
                    .next()
                    .and_then(|p| p.split('/').next())
                    .and_then(|p| p.parse::<u16>().ok())
                    .ok_or_else(|| SdpError::Malformed(line.to_string()))?;
                let _proto = fields.next();
                let formats = fields.filter_map(|f| f.parse::<u8>().ok()).collect();
                media = Some((port, formats));
                in_audio = true;
                audio_seen = true;
            }
            "c" => {
                let ip = value
                    .split_whitespace()
                    .nth(2)
                    .and_then(|a| a.split('/').next())
                    .and_then(|a| a.parse::<IpAddr>().ok())
                    .ok_or_else(|| SdpError::Malformed(line.to_string()))?;
                if in_audio {
                    media_ip = Some(ip);
                } else if !audio_seen {
                    session_ip = Some(ip);
                }
            }
            "a" if in_audio => {
                if let Some(map) = value.strip_prefix("rtpmap:") {
                    let mut parts = map.split_whitespace();
                    if let (Some(pt), Some(enc)) = (parts.next(), parts.next()) {
                        if let Ok(pt) = pt.parse::<u8>() {
                            rtpmaps.push((pt, enc.to_string()));
                        }
                    }
                }
            }
            _ => {}
        }
    }

    let (port, formats) = media.ok_or(SdpError::NoAudio)?;
    if port == 0 {
        return Err(SdpError::Rejected);
    }
    let ip = media_ip.or(session_ip).ok_or(SdpError::NoConnection)?;
    let encoding = |pt: u8| {
        rtpmaps
            .iter()
            .find(|(p, _)| *p == pt)
            .map(|(_, e)| e.as_str())
    };
    // Static payload types may come without rtpmap; an rtpmap, if present, wins.
    let (payload_type, codec) = formats
        .iter()
        .find_map(|&pt| {
            let codec = match encoding(pt) {
                Some(enc) => Codec::from_encoding(enc),
                None => Codec::from_payload_type(pt),
            };
            codec.map(|c| (pt, c))
        })
        .ok_or(SdpError::NoCommonCodec)?;
    let telephone_event = formats.iter().copied().find(|&pt| {
        encoding(pt).is_some_and(|e| e.to_ascii_lowercase().starts_with("telephone-event/8000"))
    });
    Ok(RemoteMedia {
        addr: SocketAddr::new(ip, port),
        codec,
        payload_type,
        telephone_event,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offer_lists_g711_and_telephone_event_at_20ms() {
        let sdp = offer("127.0.0.1".parse().unwrap(), 10_002, 42, 1);
        assert!(sdp.contains("o=outdial 42 1 IN IP4 127.0.0.1\r\n"));
        assert!(sdp.contains("c=IN IP4 127.0.0.1\r\n"));
        assert!(sdp.contains("m=audio 10002 RTP/AVP 0 8 101\r\n"));
        assert!(sdp.contains("a=rtpmap:101 telephone-event/8000\r\n"));
        assert!(sdp.contains("a=ptime:20\r\n"));
        assert!(sdp.ends_with("a=sendrecv\r\n"));
    }

    #[test]
    fn offer_parses_as_its_own_answer() {
        let sdp = offer("::1".parse().unwrap(), 4000, 1, 1);
        assert!(sdp.contains("c=IN IP6 ::1\r\n"));
        let media = parse(&sdp).unwrap();
        assert_eq!(media.addr, "[::1]:4000".parse().unwrap());
        assert_eq!(media.codec, Codec::Pcmu);
        assert_eq!(media.telephone_event, Some(101));
    }

    #[test]
    fn first_supported_codec_of_the_answer_wins() {
        let answer = "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
                      m=audio 30000 RTP/AVP 18 8 0 96\r\na=rtpmap:18 G729/8000\r\n\
                      a=rtpmap:8 PCMA/8000\r\na=rtpmap:96 telephone-event/8000\r\n";
        let media = parse(answer).unwrap();
        assert_eq!((media.codec, media.payload_type), (Codec::Pcma, 8));
        assert_eq!(media.addr, "10.0.0.1:30000".parse().unwrap());
        assert_eq!(media.telephone_event, Some(96));
    }

    #[test]
    fn static_payload_without_rtpmap_and_no_dtmf() {
        let answer = "v=0\nc=IN IP4 192.0.2.7\nm=audio 5004 RTP/AVP 0\n";
        let media = parse(answer).unwrap();
        assert_eq!(media.codec, Codec::Pcmu);
        assert_eq!(media.telephone_event, None);
    }

    #[test]
    fn media_level_connection_overrides_session_level() {
        let answer =
            "v=0\r\nc=IN IP4 192.0.2.1\r\nm=audio 5004 RTP/AVP 8\r\nc=IN IP4 192.0.2.2\r\n";
        assert_eq!(
            parse(answer).unwrap().addr,
            "192.0.2.2:5004".parse().unwrap()
        );
    }

    #[test]
    fn only_the_first_audio_stream_counts() {
        let answer = "v=0\r\nc=IN IP4 192.0.2.1\r\nm=video 6000 RTP/AVP 96\r\n\
                      m=audio 5004 RTP/AVP 0\r\nm=audio 7000 RTP/AVP 8\r\nc=IN IP4 192.0.2.9\r\n";
        let media = parse(answer).unwrap();
        assert_eq!(media.addr, "192.0.2.1:5004".parse().unwrap());
        assert_eq!(media.codec, Codec::Pcmu);
    }

    #[test]
    fn refusals() {
        assert_eq!(parse("v=0\r\nc=IN IP4 1.2.3.4\r\n"), Err(SdpError::NoAudio));
        assert_eq!(
            parse("v=0\r\nm=audio 5004 RTP/AVP 0\r\n"),
            Err(SdpError::NoConnection)
        );
        assert_eq!(
            parse(
                "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 5004 RTP/AVP 18\r\na=rtpmap:18 G729/8000\r\n"
            ),
            Err(SdpError::NoCommonCodec)
        );
        assert_eq!(
            parse("v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 0 RTP/AVP 0\r\n"),
            Err(SdpError::Rejected)
        );
        assert!(matches!(parse("garbage"), Err(SdpError::Malformed(_))));
    }

    #[test]
    fn dynamic_pcmu_mapping_is_honoured() {
        let answer =
            "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 5004 RTP/AVP 97\r\na=rtpmap:97 pcmu/8000\r\n";
        let media = parse(answer).unwrap();
        assert_eq!((media.codec, media.payload_type), (Codec::Pcmu, 97));
    }
}
