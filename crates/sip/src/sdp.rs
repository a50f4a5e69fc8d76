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

/// An audio stream's direction attribute, as its writer sees it (RFC 3264 §5.1, §6.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Direction {
    #[default]
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    fn from_attribute(a: &str) -> Option<Self> {
        match a {
            "sendrecv" => Some(Self::SendRecv),
            "sendonly" => Some(Self::SendOnly),
            "recvonly" => Some(Self::RecvOnly),
            "inactive" => Some(Self::Inactive),
            _ => None,
        }
    }

    pub fn attribute(self) -> &'static str {
        match self {
            Self::SendRecv => "sendrecv",
            Self::SendOnly => "sendonly",
            Self::RecvOnly => "recvonly",
            Self::Inactive => "inactive",
        }
    }

    /// The direction an answerer writes for an offer with this one (RFC 3264 §6.1): a
    /// `sendonly` hold is answered `recvonly`, `inactive` with `inactive`.
    pub fn answer(self) -> Self {
        match self {
            Self::SendRecv => Self::SendRecv,
            Self::SendOnly => Self::RecvOnly,
            Self::RecvOnly => Self::SendOnly,
            Self::Inactive => Self::Inactive,
        }
    }

    /// Whether the stream's writer wants our media: if not, we send none (RFC 3264 §5.1).
    pub fn wants_our_media(self) -> bool {
        matches!(self, Self::SendRecv | Self::RecvOnly)
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
    /// The stream's direction as the far end wrote it; `c=0.0.0.0` (RFC 2543 hold) counts as
    /// not wanting our media.
    pub direction: Direction,
}

impl RemoteMedia {
    /// Whether the far end has put the call on hold: it wants none of our audio.
    pub fn held(&self) -> bool {
        !self.direction.wants_our_media()
    }
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
    let te = OFFERED_TELEPHONE_EVENT_PT;
    let mut sdp = session_lines(ip, session_id, version);
    // Writing to a String cannot fail.
    let _ = write!(
        sdp,
        "m=audio {rtp_port} RTP/AVP 0 8 {te}\r\n\
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
    let mut session_direction: Option<Direction> = None;
    let mut media_direction: Option<Direction> = None;

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
            "a" if !audio_seen => {
                if let Some(d) = Direction::from_attribute(value) {
                    session_direction = Some(d);
                }
            }
            "a" if in_audio => {
                if let Some(d) = Direction::from_attribute(value) {
                    media_direction = Some(d);
                }
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
    let mut direction = media_direction.or(session_direction).unwrap_or_default();
    if ip.is_unspecified() {
        // RFC 2543 hold: nowhere to send to (RFC 3264 §8.4 asks answerers to understand it).
        direction = match direction {
            Direction::SendRecv | Direction::SendOnly => Direction::SendOnly,
            Direction::RecvOnly | Direction::Inactive => Direction::Inactive,
        };
    }
    Ok(RemoteMedia {
        addr: SocketAddr::new(ip, port),
        codec,
        payload_type,
        telephone_event,
        direction,
    })
}

/// Our side of one call's session description: the offer first, then the answer to each offer
/// the far end makes (re-INVITE, UPDATE), with the o= version grown whenever it changes.
#[derive(Debug, Clone)]
pub struct LocalSdp {
    ip: IpAddr,
    port: u16,
    session_id: u64,
    version: u64,
    current: String,
}

impl LocalSdp {
    pub fn offer(ip: IpAddr, port: u16, session_id: u64) -> Self {
        Self {
            ip,
            port,
            session_id,
            version: 1,
            current: offer(ip, port, session_id, 1),
        }
    }

    /// What we last sent: re-sent as is when a far end asks for an offer (a re-INVITE without
    /// SDP) or refreshes without SDP.
    pub fn current(&self) -> &str {
        &self.current
    }

    /// Answers the far end's offer: its chosen codec with the payload type it gave it, its
    /// telephone-event if any, and the direction that mirrors its own (RFC 3264 §6.1).
    pub fn answer(&mut self, remote: &RemoteMedia) -> &str {
        let unchanged = answer(self.ip, self.port, self.session_id, self.version, remote);
        if unchanged != self.current {
            self.version += 1;
            self.current = answer(self.ip, self.port, self.session_id, self.version, remote);
        }
        &self.current
    }
}

/// The session part every SDP we send starts with (v=, o=, s=, c=, t=).
fn session_lines(ip: IpAddr, session_id: u64, version: u64) -> String {
    let family = match ip {
        IpAddr::V4(_) => "IP4",
        IpAddr::V6(_) => "IP6",
    };
    format!(
        "v=0\r\n\
         o=outdial {session_id} {version} IN {family} {ip}\r\n\
         s=outdial\r\n\
         c=IN {family} {ip}\r\n\
         t=0 0\r\n"
    )
}

fn answer(ip: IpAddr, port: u16, session_id: u64, version: u64, remote: &RemoteMedia) -> String {
    let pt = remote.payload_type;
    let encoding = match remote.codec {
        Codec::Pcmu => "PCMU/8000",
        Codec::Pcma => "PCMA/8000",
    };
    let formats = match remote.telephone_event {
        Some(te) => format!("{pt} {te}"),
        None => pt.to_string(),
    };
    let mut sdp = session_lines(ip, session_id, version);
    // Writing to a String cannot fail.
    let _ = write!(
        sdp,
        "m=audio {port} RTP/AVP {formats}\r\n\
         a=rtpmap:{pt} {encoding}\r\n"
    );
    if let Some(te) = remote.telephone_event {
        let _ = write!(
            sdp,
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-15\r\n"
        );
    }
    let _ = write!(
        sdp,
        "a=ptime:20\r\na={}\r\n",
        remote.direction.answer().attribute()
    );
    sdp
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

    const HOLD: &str = "v=0\r\no=- 1 2 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
                        m=audio 30000 RTP/AVP 8 101\r\na=rtpmap:8 PCMA/8000\r\n\
                        a=rtpmap:101 telephone-event/8000\r\n";

    #[test]
    fn directions_media_level_over_session_level() {
        let media = |extra: &str, session: &str| {
            let sdp = HOLD.replace("t=0 0\r\n", &format!("t=0 0\r\n{session}"));
            parse(&format!("{sdp}{extra}")).unwrap().direction
        };
        assert_eq!(media("", ""), Direction::SendRecv);
        assert_eq!(media("a=sendonly\r\n", ""), Direction::SendOnly);
        assert_eq!(media("a=inactive\r\n", ""), Direction::Inactive);
        assert_eq!(media("", "a=recvonly\r\n"), Direction::RecvOnly);
        assert_eq!(
            media("a=sendrecv\r\n", "a=inactive\r\n"),
            Direction::SendRecv
        );
        let old_style = HOLD.replace("c=IN IP4 10.0.0.1", "c=IN IP4 0.0.0.0");
        assert!(parse(&old_style).unwrap().held());
        assert!(!parse(HOLD).unwrap().held());
    }

    #[test]
    fn hold_is_answered_with_the_mirrored_direction_and_the_offered_codec() {
        let mut local = LocalSdp::offer("127.0.0.1".parse().unwrap(), 10_002, 7);
        let held = parse(&format!("{HOLD}a=sendonly\r\n")).unwrap();
        let answer = local.answer(&held).to_string();
        assert!(
            answer.contains("o=outdial 7 2 IN IP4 127.0.0.1\r\n"),
            "{answer}"
        );
        assert!(
            answer.contains("m=audio 10002 RTP/AVP 8 101\r\n"),
            "{answer}"
        );
        assert!(answer.contains("a=rtpmap:8 PCMA/8000\r\n"), "{answer}");
        assert!(answer.ends_with("a=recvonly\r\n"), "{answer}");
        // The same offer again changes nothing, so the version stays.
        assert_eq!(local.answer(&held), answer);
        let inactive = parse(&format!("{HOLD}a=inactive\r\n")).unwrap();
        let answer = local.answer(&inactive).to_string();
        assert!(answer.contains("o=outdial 7 3 "), "{answer}");
        assert!(answer.ends_with("a=inactive\r\n"), "{answer}");
        let resumed = parse(HOLD).unwrap();
        assert!(local.answer(&resumed).ends_with("a=sendrecv\r\n"));
        // Our answer is itself a description we can read back.
        assert_eq!(parse(local.current()).unwrap().codec, Codec::Pcma);
    }

    #[test]
    fn dynamic_pcmu_mapping_is_honoured() {
        let answer =
            "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 5004 RTP/AVP 97\r\na=rtpmap:97 pcmu/8000\r\n";
        let media = parse(answer).unwrap();
        assert_eq!((media.codec, media.payload_type), (Codec::Pcmu, 97));
    }
}
