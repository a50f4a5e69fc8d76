//! The one SDP offer outdial makes and the parts of an answer it needs (RFC 3264, RFC 4566),
//! with SDES keys (RFC 4568) when the trunk requires SRTP. Only what a G.711 trunk call uses is
//! understood; everything else in an answer is ignored.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
pub use media::srtp::{MasterKey, Suite};
use rand::RngCore as _;
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
    /// The m= line's profile is a secure one (`RTP/SAVP`, `RTP/SAVPF`).
    pub secure: bool,
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

/// One `a=crypto` line (RFC 4568 §9.1) of a suite we implement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Crypto {
    pub tag: u32,
    pub suite: Suite,
    pub key: MasterKey,
    /// The MKI the sender's packets carry, as its bytes on the wire (RFC 4568 §6.1).
    pub mki: Option<Vec<u8>>,
}

/// Longest MKI RFC 4568 allows, in bytes.
const MAX_MKI_LEN: usize = 128;

impl Crypto {
    /// A fresh master key and salt from the operating system's CSPRNG.
    pub fn generate(tag: u32, suite: Suite) -> Self {
        let mut bytes = [0u8; media::srtp::MASTER_KEY_LEN + media::srtp::MASTER_SALT_LEN];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let key = MasterKey::from_concatenated(&bytes)
            .unwrap_or_else(|| unreachable!("the buffer is exactly key and salt"));
        Self {
            tag,
            suite,
            key,
            mki: None,
        }
    }

    /// The line as we write it: no lifetime (the default, 2^48 packets), no MKI.
    fn attribute(&self) -> String {
        format!(
            "a=crypto:{} {} inline:{}\r\n",
            self.tag,
            self.suite.name(),
            BASE64.encode(self.key.concatenated())
        )
    }

    /// Reads the value after `crypto:`. `None` for a line we cannot use: a suite we do not
    /// implement, a malformed key, or a session parameter that changes the transform
    /// (`UNENCRYPTED_*`, `UNAUTHENTICATED_SRTP`, `KDR`); RFC 4568 §7.1.2 has such lines ignored.
    pub fn parse(value: &str) -> Option<Self> {
        let mut fields = value.split_whitespace();
        let tag = fields.next()?.parse::<u32>().ok()?;
        let suite = Suite::from_name(fields.next()?)?;
        let key_params = fields.next()?;
        for param in fields {
            let name = param.split('=').next().unwrap_or_default();
            if name.starts_with("UNENCRYPTED_") || name == "UNAUTHENTICATED_SRTP" || name == "KDR" {
                return None;
            }
        }
        // Several keys come only with MKIs; the first is the one in use.
        let info = key_params.split(';').next()?.strip_prefix("inline:")?;
        let mut parts = info.split('|');
        let key = BASE64.decode(parts.next()?).ok()?;
        let key = MasterKey::from_concatenated(&key)?;
        let mut mki = None;
        for part in parts {
            if let Some((value, len)) = part.split_once(':') {
                let len = len
                    .parse::<usize>()
                    .ok()
                    .filter(|l| (1..=MAX_MKI_LEN).contains(l))?;
                let value = value.parse::<u64>().ok()?;
                let mut bytes = vec![0u8; len];
                let be = value.to_be_bytes();
                let n = len.min(be.len());
                if be[..be.len() - n].iter().any(|&b| b != 0) {
                    return None;
                }
                bytes[len - n..].copy_from_slice(&be[be.len() - n..]);
                mki = Some(bytes);
            } else {
                // A lifetime: `2^20` or a number of packets; a call outlives neither that
                // matters, so it is read only to be well-formed.
                let ok = match part.strip_prefix("2^") {
                    Some(exp) => exp.parse::<u8>().is_ok(),
                    None => part.parse::<u64>().is_ok(),
                };
                if !ok {
                    return None;
                }
            }
        }
        Some(Self {
            tag,
            suite,
            key,
            mki,
        })
    }
}

/// The keys of one SRTP session: ours protect what we send, the far end's check and decrypt
/// what it sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrtpKeys {
    pub ours: Crypto,
    pub theirs: Crypto,
}

/// Why the far end's description cannot carry an SRTP call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SrtpRefusal {
    #[error("the far end answered plain RTP (RTP/AVP), not RTP/SAVP")]
    Plain,
    #[error("the far end's SDP has no acceptable a=crypto line (AES_CM_128_HMAC_SHA1_80 or _32 with a key we offered a tag for)")]
    NoCrypto,
}

/// The offer for one call: PCMU, PCMA and telephone-event at 20 ms on `rtp_port`. `version` is
/// the o= version, which must grow each time the same session is re-sent with changes.
pub fn offer(ip: IpAddr, rtp_port: u16, session_id: u64, version: u64) -> String {
    offer_with(ip, rtp_port, session_id, version, &[])
}

/// The offer, as `RTP/SAVP` with these `a=crypto` lines when there are any.
fn offer_with(
    ip: IpAddr,
    rtp_port: u16,
    session_id: u64,
    version: u64,
    crypto: &[Crypto],
) -> String {
    let te = OFFERED_TELEPHONE_EVENT_PT;
    let mut sdp = session_lines(ip, session_id, version);
    let profile = profile(!crypto.is_empty());
    // Writing to a String cannot fail.
    let _ = write!(
        sdp,
        "m=audio {rtp_port} {profile} 0 8 {te}\r\n\
         a=rtpmap:0 PCMU/8000\r\n\
         a=rtpmap:8 PCMA/8000\r\n\
         a=rtpmap:{te} telephone-event/8000\r\n\
         a=fmtp:{te} 0-15\r\n\
         a=ptime:20\r\n"
    );
    for c in crypto {
        sdp.push_str(&c.attribute());
    }
    sdp.push_str("a=sendrecv\r\n");
    sdp
}

fn profile(secure: bool) -> &'static str {
    if secure {
        "RTP/SAVP"
    } else {
        "RTP/AVP"
    }
}

/// Reads the first audio stream of an answer (or of an early-media 183, or of a re-INVITE offer
/// from the far end, which we answer with the same media).
pub fn parse(sdp: &str) -> Result<RemoteMedia, SdpError> {
    parse_with_crypto(sdp).map(|(media, _)| media)
}

/// [`parse`], with the usable `a=crypto` lines of that stream in the order written.
pub fn parse_with_crypto(sdp: &str) -> Result<(RemoteMedia, Vec<Crypto>), SdpError> {
    let mut crypto = Vec::new();
    let mut secure = false;
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
                secure = fields.next().is_some_and(|p| p.contains("SAVP"));
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
                if let Some(c) = value.strip_prefix("crypto:").and_then(Crypto::parse) {
                    crypto.push(c);
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
    Ok((
        RemoteMedia {
            addr: SocketAddr::new(ip, port),
            codec,
            payload_type,
            telephone_event,
            direction,
            secure,
        },
        crypto,
    ))
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
    /// SRTP's state, when the trunk requires it.
    srtp: Option<LocalSrtp>,
}

/// Our side of SDES: the lines offered, then the keys agreed.
#[derive(Debug, Clone)]
struct LocalSrtp {
    offered: Vec<Crypto>,
    agreed: Option<SrtpKeys>,
}

impl LocalSdp {
    /// The offer of a call; with `srtp`, `RTP/SAVP` with a fresh key for each suite (one key per
    /// line: the far end picks one, and no key serves two transforms).
    pub fn offer(ip: IpAddr, port: u16, session_id: u64, srtp: bool) -> Self {
        let srtp = srtp.then(|| LocalSrtp {
            offered: vec![
                Crypto::generate(1, Suite::AesCm128HmacSha1_80),
                Crypto::generate(2, Suite::AesCm128HmacSha1_32),
            ],
            agreed: None,
        });
        let crypto = srtp.as_ref().map_or(&[][..], |s| &s.offered[..]);
        Self {
            ip,
            port,
            session_id,
            version: 1,
            current: offer_with(ip, port, session_id, 1, crypto),
            srtp,
        }
    }

    /// Whether this session is SRTP.
    pub fn secure(&self) -> bool {
        self.srtp.is_some()
    }

    /// Reads the keys of the far end's answer (a 183's or the 200's) to our offer: the answer
    /// must be `RTP/SAVP` with one line that names the tag and suite of an offered one. Our
    /// description then keeps only that line, so that a refresh re-offers the keys in use. A
    /// plain session has no keys (`Ok(None)`).
    pub fn accept_answer(
        &mut self,
        remote: &RemoteMedia,
        crypto: &[Crypto],
    ) -> Result<Option<SrtpKeys>, SrtpRefusal> {
        let Some(srtp) = self.srtp.as_mut() else {
            return Ok(None);
        };
        if !remote.secure {
            return Err(SrtpRefusal::Plain);
        }
        let (ours, theirs) = crypto
            .iter()
            .find_map(|c| {
                let ours = srtp
                    .offered
                    .iter()
                    .find(|o| o.tag == c.tag && o.suite == c.suite)?;
                Some((ours.clone(), c.clone()))
            })
            .ok_or(SrtpRefusal::NoCrypto)?;
        let keys = SrtpKeys { ours, theirs };
        srtp.agreed = Some(keys.clone());
        // Our description changes (and its version grows) only when lines are dropped.
        if srtp.offered != [keys.ours.clone()] {
            srtp.offered = vec![keys.ours.clone()];
            self.version += 1;
            self.current = offer_with(
                self.ip,
                self.port,
                self.session_id,
                self.version,
                &srtp.offered,
            );
        }
        Ok(Some(keys))
    }

    /// What we last sent: re-sent as is when a far end asks for an offer (a re-INVITE without
    /// SDP) or refreshes without SDP.
    pub fn current(&self) -> &str {
        &self.current
    }

    /// Answers the far end's offer: its chosen codec with the payload type it gave it, its
    /// telephone-event if any, and the direction that mirrors its own (RFC 3264 §6.1). An SRTP
    /// session answers one of the offer's `a=crypto` lines (the tag in use if offered again)
    /// with our key, kept while the suite stays the same (RFC 4568 §7.1.4), and returns the keys
    /// from then on; an offer we cannot take changes nothing and is to be refused (488).
    pub fn answer(
        &mut self,
        remote: &RemoteMedia,
        crypto: &[Crypto],
    ) -> Result<(&str, Option<SrtpKeys>), SrtpRefusal> {
        let keys = match self.srtp.as_ref() {
            None => None,
            Some(_) if !remote.secure => return Err(SrtpRefusal::Plain),
            Some(srtp) => {
                let current = srtp.agreed.as_ref();
                let theirs = crypto
                    .iter()
                    .find(|c| current.is_some_and(|k| k.theirs.tag == c.tag))
                    .or_else(|| crypto.first())
                    .ok_or(SrtpRefusal::NoCrypto)?;
                let ours = match current.map(|k| &k.ours) {
                    Some(ours) if ours.suite == theirs.suite => Crypto {
                        tag: theirs.tag,
                        ..ours.clone()
                    },
                    _ => Crypto::generate(theirs.tag, theirs.suite),
                };
                Some(SrtpKeys {
                    ours,
                    theirs: theirs.clone(),
                })
            }
        };
        let ours = keys.as_ref().map(|k| &k.ours);
        let unchanged = answer(
            self.ip,
            self.port,
            self.session_id,
            self.version,
            remote,
            ours,
        );
        if unchanged != self.current {
            self.version += 1;
            self.current = answer(
                self.ip,
                self.port,
                self.session_id,
                self.version,
                remote,
                ours,
            );
        }
        if let (Some(srtp), Some(keys)) = (self.srtp.as_mut(), keys.as_ref()) {
            srtp.offered = vec![keys.ours.clone()];
            srtp.agreed = Some(keys.clone());
        }
        Ok((&self.current, keys))
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

fn answer(
    ip: IpAddr,
    port: u16,
    session_id: u64,
    version: u64,
    remote: &RemoteMedia,
    crypto: Option<&Crypto>,
) -> String {
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
        "m=audio {port} {} {formats}\r\n\
         a=rtpmap:{pt} {encoding}\r\n",
        profile(crypto.is_some())
    );
    if let Some(te) = remote.telephone_event {
        let _ = write!(
            sdp,
            "a=rtpmap:{te} telephone-event/8000\r\na=fmtp:{te} 0-15\r\n"
        );
    }
    sdp.push_str("a=ptime:20\r\n");
    if let Some(c) = crypto {
        sdp.push_str(&c.attribute());
    }
    let _ = write!(sdp, "a={}\r\n", remote.direction.answer().attribute());
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
        let mut local = LocalSdp::offer("127.0.0.1".parse().unwrap(), 10_002, 7, false);
        let held = parse(&format!("{HOLD}a=sendonly\r\n")).unwrap();
        let answer = local.answer(&held, &[]).unwrap().0.to_string();
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
        assert_eq!(local.answer(&held, &[]).unwrap().0, answer);
        let inactive = parse(&format!("{HOLD}a=inactive\r\n")).unwrap();
        let answer = local.answer(&inactive, &[]).unwrap().0.to_string();
        assert!(answer.contains("o=outdial 7 3 "), "{answer}");
        assert!(answer.ends_with("a=inactive\r\n"), "{answer}");
        let resumed = parse(HOLD).unwrap();
        assert!(local
            .answer(&resumed, &[])
            .unwrap()
            .0
            .ends_with("a=sendrecv\r\n"));
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

    fn local() -> IpAddr {
        "127.0.0.1".parse().unwrap()
    }

    /// The far end's answer to `offer` taking the line `tag` with a key of its own.
    fn srtp_answer(profile: &str, lines: &[(u32, Suite)]) -> String {
        let mut sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 10.0.0.1\r\ns=-\r\nc=IN IP4 10.0.0.1\r\nt=0 0\r\n\
             m=audio 30000 {profile} 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
        );
        for (tag, suite) in lines {
            let c = Crypto::generate(*tag, *suite);
            sdp.push_str(&c.attribute());
        }
        sdp
    }

    #[test]
    fn srtp_offer_is_savp_with_a_fresh_key_per_suite() {
        let a = LocalSdp::offer(local(), 10_002, 1, true);
        let b = LocalSdp::offer(local(), 10_002, 1, true);
        let sdp = a.current();
        assert!(sdp.contains("m=audio 10002 RTP/SAVP 0 8 101\r\n"), "{sdp}");
        let (media, crypto) = parse_with_crypto(sdp).unwrap();
        assert!(media.secure);
        assert_eq!(
            crypto.iter().map(|c| (c.tag, c.suite)).collect::<Vec<_>>(),
            [
                (1, Suite::AesCm128HmacSha1_80),
                (2, Suite::AesCm128HmacSha1_32)
            ]
        );
        assert_ne!(crypto[0].key, crypto[1].key, "one key per line");
        let (_, other) = parse_with_crypto(b.current()).unwrap();
        assert_ne!(crypto[0].key, other[0].key, "a new key per call");
        // 30 bytes of key and salt: 40 base64 characters.
        let line = sdp.lines().find(|l| l.starts_with("a=crypto:1 ")).unwrap();
        assert_eq!(line.split("inline:").nth(1).unwrap().len(), 40);
        assert!(!LocalSdp::offer(local(), 10_002, 1, false).secure());
        assert!(!offer(local(), 4000, 1, 1).contains("crypto"));
    }

    #[test]
    fn an_answer_must_be_savp_with_a_line_we_offered() {
        let mut local = LocalSdp::offer(local(), 10_002, 1, true);
        let read = |sdp: &str| parse_with_crypto(sdp).unwrap();
        let (plain, _) = read(&srtp_answer("RTP/AVP", &[]));
        assert!(!plain.secure);
        assert_eq!(local.accept_answer(&plain, &[]), Err(SrtpRefusal::Plain));
        let (m, c) = read(&srtp_answer("RTP/SAVP", &[]));
        assert_eq!(local.accept_answer(&m, &c), Err(SrtpRefusal::NoCrypto));
        // A tag we never offered, and a tag of ours with the other suite.
        let (m, c) = read(&srtp_answer("RTP/SAVP", &[(7, Suite::AesCm128HmacSha1_80)]));
        assert_eq!(local.accept_answer(&m, &c), Err(SrtpRefusal::NoCrypto));
        let (m, c) = read(&srtp_answer("RTP/SAVP", &[(1, Suite::AesCm128HmacSha1_32)]));
        assert_eq!(local.accept_answer(&m, &c), Err(SrtpRefusal::NoCrypto));
        assert!(
            local.current().contains("o=outdial 1 1 "),
            "refusals change nothing"
        );

        let (m, c) = read(&srtp_answer("RTP/SAVP", &[(2, Suite::AesCm128HmacSha1_32)]));
        let keys = local.accept_answer(&m, &c).unwrap().unwrap();
        assert_eq!(
            (keys.ours.tag, keys.ours.suite),
            (2, Suite::AesCm128HmacSha1_32)
        );
        assert_eq!(keys.theirs, c[0]);
        // What a refresh re-offers: the one line in use, under a new version.
        let (_, ours) = parse_with_crypto(local.current()).unwrap();
        assert_eq!(ours, vec![keys.ours.clone()]);
        assert!(local.current().contains("o=outdial 1 2 "));
        // The 200 repeating the 183's answer changes nothing.
        assert_eq!(local.accept_answer(&m, &c).unwrap().unwrap(), keys);
        assert!(local.current().contains("o=outdial 1 2 "));
        // An answer to a later re-offer (a refresh) with a new key under the same tag re-keys
        // the far end's side only.
        let rekeyed = srtp_answer("RTP/SAVP", &[(2, Suite::AesCm128HmacSha1_32)]);
        let (m, c) = read(&rekeyed);
        let new = local.accept_answer(&m, &c).unwrap().unwrap();
        assert_eq!(new.ours, keys.ours);
        assert_ne!(new.theirs.key, keys.theirs.key);
        assert!(
            local.current().contains("o=outdial 1 2 "),
            "ours did not change"
        );
        // A plain session takes no keys at all.
        let mut plain_local = LocalSdp::offer(local_ip(), 10_002, 1, false);
        assert_eq!(plain_local.accept_answer(&m, &c), Ok(None));
    }

    fn local_ip() -> IpAddr {
        local()
    }

    #[test]
    fn a_re_offer_keeps_our_key_for_the_same_suite_and_re_keys_otherwise() {
        let mut local = LocalSdp::offer(local(), 10_002, 1, true);
        let answer = srtp_answer("RTP/SAVP", &[(1, Suite::AesCm128HmacSha1_80)]);
        let (m, c) = parse_with_crypto(&answer).unwrap();
        let agreed = local.accept_answer(&m, &c).unwrap().unwrap();

        // A hold from the far end with the same key line.
        let hold = format!("{answer}a=sendonly\r\n");
        let (m, c) = parse_with_crypto(&hold).unwrap();
        let (body, keys) = local.answer(&m, &c).unwrap();
        assert!(body.contains("RTP/SAVP"), "{body}");
        assert!(body.ends_with("a=recvonly\r\n"), "{body}");
        assert_eq!(keys.unwrap(), agreed, "same keys: nothing re-keyed");

        // The far end re-keys with the other suite: we answer its tag with a new key.
        let rekey = srtp_answer("RTP/SAVP", &[(5, Suite::AesCm128HmacSha1_32)]);
        let (m, c) = parse_with_crypto(&rekey).unwrap();
        let (body, keys) = local.answer(&m, &c).unwrap();
        let body = body.to_string();
        let keys = keys.unwrap();
        assert_eq!(
            (keys.ours.tag, keys.ours.suite),
            (5, Suite::AesCm128HmacSha1_32)
        );
        assert_ne!(keys.ours.key, agreed.ours.key);
        assert_eq!(keys.theirs, c[0]);
        assert_eq!(parse_with_crypto(&body).unwrap().1, vec![keys.ours]);

        // Offers we cannot take: plain, or no usable line.
        let (m, c) = parse_with_crypto(&srtp_answer("RTP/AVP", &[])).unwrap();
        assert_eq!(local.answer(&m, &c).unwrap_err(), SrtpRefusal::Plain);
        let (m, c) = parse_with_crypto(&srtp_answer("RTP/SAVP", &[])).unwrap();
        assert_eq!(local.answer(&m, &c).unwrap_err(), SrtpRefusal::NoCrypto);
        assert_eq!(local.current(), body, "a refused offer changes nothing");
    }

    #[test]
    fn crypto_lines_rfc4568() {
        let key = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
        let c = Crypto::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|2^20|1:4")).unwrap();
        assert_eq!(c.tag, 1);
        assert_eq!(c.mki, Some(vec![0, 0, 0, 1]));
        assert_eq!(BASE64.encode(c.key.concatenated()), key);
        let c = Crypto::parse(&format!("3 AES_CM_128_HMAC_SHA1_32 inline:{key}|1048576")).unwrap();
        assert_eq!(
            (c.tag, c.suite, c.mki),
            (3, Suite::AesCm128HmacSha1_32, None)
        );
        assert!(Crypto::parse(&format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key} WSH=64")).is_some());
        for unusable in [
            format!("1 AES_256_CM_HMAC_SHA1_80 inline:{key}"),
            format!("1 F8_128_HMAC_SHA1_80 inline:{key}"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key} UNENCRYPTED_SRTP"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key} KDR=10"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|x"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{key}|1:0"),
            format!("x AES_CM_128_HMAC_SHA1_80 inline:{key}"),
            "1 AES_CM_128_HMAC_SHA1_80 inline:c2hvcnQ=".to_string(),
            "1 AES_CM_128_HMAC_SHA1_80 inline:!!!!".to_string(),
            format!("1 AES_CM_128_HMAC_SHA1_80 {key}"),
        ] {
            assert_eq!(Crypto::parse(&unusable), None, "{unusable}");
        }
        // Unusable lines are skipped, usable ones kept, in order.
        let sdp = format!(
            "v=0\r\nc=IN IP4 1.2.3.4\r\nm=audio 5004 RTP/SAVP 0\r\n\
             a=crypto:1 AES_256_CM_HMAC_SHA1_80 inline:{key}\r\n\
             a=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n"
        );
        let (media, crypto) = parse_with_crypto(&sdp).unwrap();
        assert!(media.secure);
        assert_eq!(crypto.iter().map(|c| c.tag).collect::<Vec<_>>(), [2]);
    }
}
