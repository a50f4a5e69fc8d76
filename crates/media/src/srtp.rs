//! SRTP and SRTCP (RFC 3711) with the two SDES suites every SIP peer speaks:
//! `AES_CM_128_HMAC_SHA1_80` and `AES_CM_128_HMAC_SHA1_32` (RFC 4568 §6.2).
//!
//! Sans-IO like the rest of the crate: a [`SrtpContext`] holds the session keys derived from one
//! master key and the per-SSRC state (rollover counter, highest index, replay window); packets go
//! in as bytes and come out protected or unprotected. One context serves one direction: ours
//! protects with the key we offered, the far end's unprotects with the key it answered.
//!
//! The key derivation rate is 0 (keys derived once, the SDES default) and no MKI is sent; an
//! MKI the far end announced is checked and stripped on the way in.

use aes::cipher::{BlockEncrypt, InnerIvInit, KeyInit, StreamCipher};
use aes::Aes128;
use hmac::{Hmac, Mac};
use sha1::Sha1;
use subtle::ConstantTimeEq;
use thiserror::Error;

type Ctr = ctr::Ctr128BE<Aes128>;
type HmacSha1 = Hmac<Sha1>;

/// Master key length of the AES-128 suites.
pub const MASTER_KEY_LEN: usize = 16;
/// Master salt length of the AES-128 suites.
pub const MASTER_SALT_LEN: usize = 14;
/// SRTCP's authentication tag: 80 bits for both suites (RFC 4568 §6.2.1, §6.2.2).
const SRTCP_TAG_LEN: usize = 10;
/// The E flag and the 31-bit SRTCP index after an SRTCP packet's body.
const SRTCP_INDEX_LEN: usize = 4;
const RTP_HEADER_LEN: usize = 12;
/// Packets behind the highest index still accepted once (RFC 3711 §3.3.2 asks for at least 64).
const REPLAY_WINDOW: u64 = 128;
/// SSRCs one context keeps state for; a far end that cycles through more has the oldest forgotten.
const MAX_STREAMS: usize = 8;
/// The largest index either protocol may use with one master key: 2^48 SRTP packets (RFC 3711
/// §9.2), 2^31 SRTCP packets.
const MAX_SRTP_INDEX: u64 = (1 << 48) - 1;
const MAX_SRTCP_INDEX: u32 = (1 << 31) - 1;

/// The crypto suites of RFC 4568 §6.2 that we implement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Suite {
    /// AES-128 counter mode, HMAC-SHA1 truncated to 80 bits.
    AesCm128HmacSha1_80,
    /// The same with a 32-bit SRTP tag (SRTCP keeps 80 bits).
    AesCm128HmacSha1_32,
}

impl Suite {
    /// Every suite, in our order of preference.
    pub const ALL: [Suite; 2] = [Suite::AesCm128HmacSha1_80, Suite::AesCm128HmacSha1_32];

    /// The suite's name in an SDP `a=crypto` line.
    pub fn name(self) -> &'static str {
        match self {
            Suite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            Suite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
        }
    }

    /// The suite an `a=crypto` line names, if it is one of ours.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }

    /// Bytes of the SRTP authentication tag.
    pub fn rtp_tag_len(self) -> usize {
        match self {
            Suite::AesCm128HmacSha1_80 => 10,
            Suite::AesCm128HmacSha1_32 => 4,
        }
    }
}

/// One master key and salt: what an `a=crypto` line's `inline:` carries (key || salt).
#[derive(Clone, PartialEq, Eq)]
pub struct MasterKey {
    /// The master key.
    pub key: [u8; MASTER_KEY_LEN],
    /// The master salt.
    pub salt: [u8; MASTER_SALT_LEN],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys do not belong in logs.
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    /// Splits the 30 bytes of an `inline:` key parameter into key and salt.
    pub fn from_concatenated(bytes: &[u8]) -> Option<Self> {
        if bytes.len() != MASTER_KEY_LEN + MASTER_SALT_LEN {
            return None;
        }
        let mut key = [0; MASTER_KEY_LEN];
        let mut salt = [0; MASTER_SALT_LEN];
        key.copy_from_slice(&bytes[..MASTER_KEY_LEN]);
        salt.copy_from_slice(&bytes[MASTER_KEY_LEN..]);
        Some(Self { key, salt })
    }

    /// Key || salt, as the `inline:` parameter encodes it.
    pub fn concatenated(&self) -> [u8; MASTER_KEY_LEN + MASTER_SALT_LEN] {
        let mut out = [0; MASTER_KEY_LEN + MASTER_SALT_LEN];
        out[..MASTER_KEY_LEN].copy_from_slice(&self.key);
        out[MASTER_KEY_LEN..].copy_from_slice(&self.salt);
        out
    }
}

/// Why a packet was not protected or not accepted.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SrtpError {
    /// Too short to hold the header, the trailer and the tag it must have.
    #[error("packet too short for SRTP: {0} bytes")]
    TooShort(usize),
    /// The RTP header's CSRC count or extension runs past the packet.
    #[error("RTP header runs past the packet")]
    BadHeader,
    /// The authentication tag does not match: tampered, or another key.
    #[error("authentication failed")]
    AuthFailed,
    /// The index was seen before, or is too old to tell.
    #[error("replayed packet (index {0})")]
    Replayed(u64),
    /// The packet carries an MKI other than the one the far end announced.
    #[error("unknown MKI")]
    UnknownMki,
    /// The master key has protected as many packets as it may (RFC 3711 §9.2).
    #[error("master key exhausted: re-key needed")]
    KeyExhausted,
}

/// Session keys for one protocol (SRTP or SRTCP) derived from a master key.
#[derive(Clone)]
struct SessionKeys {
    cipher: Aes128,
    salt: [u8; MASTER_SALT_LEN],
    /// The keyed HMAC, cloned per packet so the key's pads are hashed once.
    auth: HmacSha1,
}

impl SessionKeys {
    fn derive(master: &MasterKey, labels: [u8; 3]) -> Self {
        let [enc, auth, salt_label] = labels;
        let mut key = [0u8; 16];
        derive(master, enc, &mut key);
        let mut auth_key = [0u8; 20];
        derive(master, auth, &mut auth_key);
        let mut salt = [0u8; MASTER_SALT_LEN];
        derive(master, salt_label, &mut salt);
        Self {
            cipher: Aes128::new(&key.into()),
            salt,
            // HMAC takes a key of any length, so this cannot fail.
            auth: <HmacSha1 as Mac>::new_from_slice(&auth_key)
                .unwrap_or_else(|_| unreachable!("HMAC accepts any key length")),
        }
    }

    /// AES-CM over `data` for the packet of `ssrc` with `index` (RFC 3711 §4.1.1):
    /// IV = (salt << 16) XOR (SSRC << 64) XOR (index << 16).
    fn apply_keystream(&self, ssrc: u32, index: u64, data: &mut [u8]) {
        let mut iv = [0u8; 16];
        iv[..MASTER_SALT_LEN].copy_from_slice(&self.salt);
        for (b, s) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *b ^= s;
        }
        for (b, i) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *b ^= i;
        }
        // The 128-bit big-endian counter only ever moves its low 16 bits here: a packet is far
        // below 2^16 blocks, so the whole-counter increment of CTR is the SRTP one.
        let core = ctr::CtrCore::<Aes128, ctr::flavors::Ctr128BE>::inner_iv_init(
            self.cipher.clone(),
            &iv.into(),
        );
        let mut ctr = Ctr::from_core(core);
        ctr.apply_keystream(data);
    }

    fn tag(&self, parts: &[&[u8]]) -> [u8; 20] {
        let mut mac = self.auth.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

/// The key derivation PRF of RFC 3711 §4.3 with a key derivation rate of 0:
/// AES-CM under the master key with IV = (label << 48 XOR master salt) << 16.
fn derive(master: &MasterKey, label: u8, out: &mut [u8]) {
    let cipher = Aes128::new(&master.key.into());
    let mut iv = [0u8; 16];
    iv[..MASTER_SALT_LEN].copy_from_slice(&master.salt);
    iv[7] ^= label;
    for (n, chunk) in out.chunks_mut(16).enumerate() {
        let mut block = iv;
        // Fewer than 2^16 blocks of key material are ever asked for.
        block[14..].copy_from_slice(&(n as u16).to_be_bytes());
        let mut block = block.into();
        cipher.encrypt_block(&mut block);
        chunk.copy_from_slice(&block[..chunk.len()]);
    }
}

/// What one SSRC's stream has seen: the rollover counter and highest sequence number (RFC 3711
/// §3.3.1), the highest SRTCP index, and the replay windows below both.
#[derive(Debug, Clone)]
struct Stream {
    ssrc: u32,
    /// Highest SRTP index seen (ROC << 16 | highest sequence number); `None` before the first.
    highest: Option<u64>,
    /// Bit n set: index `highest - n` was accepted.
    window: u128,
    rtcp_highest: Option<u32>,
    rtcp_window: u128,
    /// Next SRTCP index we send.
    rtcp_next: u32,
}

impl Stream {
    fn new(ssrc: u32) -> Self {
        Self {
            ssrc,
            highest: None,
            window: 0,
            rtcp_highest: None,
            rtcp_window: 0,
            rtcp_next: 0,
        }
    }

    /// The packet index a sequence number stands for (RFC 3711 §3.3.1 and Appendix A): the one
    /// of ROC-1, ROC, ROC+1 closest to the highest index seen.
    fn estimate(&self, seq: u16) -> u64 {
        let Some(highest) = self.highest else {
            return u64::from(seq);
        };
        let roc = highest >> 16;
        let s_l = highest & 0xFFFF;
        let seq = u64::from(seq);
        let v = if s_l < 0x8000 {
            if seq > s_l + 0x8000 && roc > 0 {
                roc - 1
            } else {
                roc
            }
        } else if s_l - 0x8000 > seq {
            roc + 1
        } else {
            roc
        };
        (v << 16) | seq
    }

    fn check_replay(&self, index: u64) -> Result<(), SrtpError> {
        replay_check(self.highest, self.window, index)
    }

    fn accept(&mut self, index: u64) {
        replay_accept(&mut self.highest, &mut self.window, index);
    }
}

fn replay_check(highest: Option<u64>, window: u128, index: u64) -> Result<(), SrtpError> {
    let Some(highest) = highest else {
        return Ok(());
    };
    if index > highest {
        return Ok(());
    }
    let behind = highest - index;
    if behind >= REPLAY_WINDOW || window & (1u128 << behind) != 0 {
        return Err(SrtpError::Replayed(index));
    }
    Ok(())
}

fn replay_accept(highest: &mut Option<u64>, window: &mut u128, index: u64) {
    match *highest {
        Some(h) if index <= h => *window |= 1u128 << (h - index),
        Some(h) => {
            let ahead = index - h;
            *window = if ahead >= REPLAY_WINDOW {
                1
            } else {
                (*window << ahead) | 1
            };
            *highest = Some(index);
        }
        None => {
            *highest = Some(index);
            *window = 1;
        }
    }
}

/// One direction's SRTP/SRTCP crypto context (RFC 3711 §3.2).
#[derive(Clone)]
pub struct SrtpContext {
    suite: Suite,
    rtp: SessionKeys,
    rtcp: SessionKeys,
    /// The MKI the far end puts in its packets, if it announced one.
    mki: Option<Vec<u8>>,
    streams: Vec<Stream>,
}

impl std::fmt::Debug for SrtpContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SrtpContext")
            .field("suite", &self.suite)
            .field("streams", &self.streams.len())
            .finish_non_exhaustive()
    }
}

impl SrtpContext {
    /// A context for `suite` with the session keys derived from `master`.
    pub fn new(suite: Suite, master: &MasterKey) -> Self {
        Self {
            suite,
            rtp: SessionKeys::derive(master, [0, 1, 2]),
            rtcp: SessionKeys::derive(master, [3, 4, 5]),
            mki: None,
            streams: Vec::new(),
        }
    }

    /// Expects (and strips) this MKI in every packet unprotected (RFC 3711 §3.1).
    pub fn with_mki(mut self, mki: Vec<u8>) -> Self {
        self.mki = Some(mki).filter(|m| !m.is_empty());
        self
    }

    /// The suite this context runs.
    pub fn suite(&self) -> Suite {
        self.suite
    }

    fn stream(&mut self, ssrc: u32) -> &mut Stream {
        let at = match self.streams.iter().position(|s| s.ssrc == ssrc) {
            Some(at) => at,
            None => {
                if self.streams.len() == MAX_STREAMS {
                    self.streams.remove(0);
                }
                self.streams.push(Stream::new(ssrc));
                self.streams.len() - 1
            }
        };
        &mut self.streams[at]
    }

    fn mki_len(&self) -> usize {
        self.mki.as_ref().map_or(0, Vec::len)
    }

    /// Encrypts an RTP packet's payload and appends its tag, in place. The sender's sequence
    /// numbers must be consecutive-ish (as any RTP sender's are) for the rollover counter to
    /// follow them.
    pub fn protect_rtp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let header_len = rtp_header_len(packet)?;
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let tag_len = self.suite.rtp_tag_len();
        let stream = self.stream(ssrc);
        let index = stream.estimate(seq);
        if index > MAX_SRTP_INDEX {
            return Err(SrtpError::KeyExhausted);
        }
        if stream.highest.is_none_or(|h| index > h) {
            stream.highest = Some(index);
        }
        let roc = (index >> 16) as u32;
        self.rtp
            .apply_keystream(ssrc, index, &mut packet[header_len..]);
        let tag = self.rtp.tag(&[packet, &roc.to_be_bytes()]);
        packet.extend_from_slice(&tag[..tag_len]);
        Ok(())
    }

    /// Checks an SRTP packet's tag and replay window and decrypts it in place, leaving the
    /// plain RTP packet. A refused packet leaves the context as it was.
    pub fn unprotect_rtp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let tag_len = self.suite.rtp_tag_len();
        let mki_len = self.mki_len();
        let trailer = tag_len + mki_len;
        if packet.len() < RTP_HEADER_LEN + trailer {
            return Err(SrtpError::TooShort(packet.len()));
        }
        let body_len = packet.len() - trailer;
        let header_len = rtp_header_len(&packet[..body_len])?;
        self.check_mki(&packet[body_len..body_len + mki_len])?;
        let seq = u16::from_be_bytes([packet[2], packet[3]]);
        let ssrc = u32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
        let keys = &self.rtp;
        let known = self.streams.iter().find(|s| s.ssrc == ssrc);
        let index = known.map_or(u64::from(seq), |s| s.estimate(seq));
        if let Some(s) = known {
            s.check_replay(index)?;
        }
        let roc = (index >> 16) as u32;
        let expected = keys.tag(&[&packet[..body_len], &roc.to_be_bytes()]);
        let tag = &packet[body_len + mki_len..];
        if !bool::from(expected[..tag_len].ct_eq(tag)) {
            return Err(SrtpError::AuthFailed);
        }
        packet.truncate(body_len);
        keys.apply_keystream(ssrc, index, &mut packet[header_len..]);
        self.stream(ssrc).accept(index);
        Ok(())
    }

    /// Encrypts an RTCP compound packet after its first 8 bytes, appends E || SRTCP index and
    /// the 80-bit tag (RFC 3711 §3.4).
    pub fn protect_rtcp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        if packet.len() < 8 {
            return Err(SrtpError::TooShort(packet.len()));
        }
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let stream = self.stream(ssrc);
        let index = stream.rtcp_next;
        if index > MAX_SRTCP_INDEX {
            return Err(SrtpError::KeyExhausted);
        }
        stream.rtcp_next += 1;
        self.rtcp
            .apply_keystream(ssrc, u64::from(index), &mut packet[8..]);
        packet.extend_from_slice(&(index | 0x8000_0000).to_be_bytes());
        let tag = self.rtcp.tag(&[packet]);
        packet.extend_from_slice(&tag[..SRTCP_TAG_LEN]);
        Ok(())
    }

    /// Checks an SRTCP packet and decrypts it in place to the plain RTCP compound packet.
    pub fn unprotect_rtcp(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let mki_len = self.mki_len();
        let trailer = SRTCP_INDEX_LEN + mki_len + SRTCP_TAG_LEN;
        if packet.len() < 8 + trailer {
            return Err(SrtpError::TooShort(packet.len()));
        }
        let authenticated = packet.len() - mki_len - SRTCP_TAG_LEN;
        self.check_mki(&packet[authenticated..authenticated + mki_len])?;
        let expected = self.rtcp.tag(&[&packet[..authenticated]]);
        let tag = &packet[authenticated + mki_len..];
        if !bool::from(expected[..SRTCP_TAG_LEN].ct_eq(tag)) {
            return Err(SrtpError::AuthFailed);
        }
        let body_len = authenticated - SRTCP_INDEX_LEN;
        let word = u32::from_be_bytes([
            packet[body_len],
            packet[body_len + 1],
            packet[body_len + 2],
            packet[body_len + 3],
        ]);
        let (encrypted, index) = (word & 0x8000_0000 != 0, word & MAX_SRTCP_INDEX);
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        if let Some(s) = self.streams.iter().find(|s| s.ssrc == ssrc) {
            replay_check(
                s.rtcp_highest.map(u64::from),
                s.rtcp_window,
                u64::from(index),
            )?;
        }
        packet.truncate(body_len);
        if encrypted {
            self.rtcp
                .apply_keystream(ssrc, u64::from(index), &mut packet[8..]);
        }
        let stream = self.stream(ssrc);
        let mut highest = stream.rtcp_highest.map(u64::from);
        replay_accept(&mut highest, &mut stream.rtcp_window, u64::from(index));
        // Only SRTCP indices (31 bits) ever reach it.
        stream.rtcp_highest = highest.map(|h| h as u32);
        Ok(())
    }

    fn check_mki(&self, mki: &[u8]) -> Result<(), SrtpError> {
        match &self.mki {
            Some(expected) if expected.as_slice() != mki => Err(SrtpError::UnknownMki),
            _ => Ok(()),
        }
    }
}

/// Whether a datagram on the media port is RTCP rather than RTP (RFC 5761 §4: payload types
/// 64-95 with the marker bit are RTCP's 192-223).
pub fn is_rtcp(datagram: &[u8]) -> bool {
    datagram.len() >= 8 && (192..=223).contains(&datagram[1])
}

/// Length of an RTP packet's header with CSRCs and extension: what SRTP leaves in the clear.
fn rtp_header_len(packet: &[u8]) -> Result<usize, SrtpError> {
    if packet.len() < RTP_HEADER_LEN {
        return Err(SrtpError::TooShort(packet.len()));
    }
    let mut len = RTP_HEADER_LEN + 4 * usize::from(packet[0] & 0x0F);
    if packet[0] & 0x10 != 0 {
        let ext = packet.get(len + 2..len + 4).ok_or(SrtpError::BadHeader)?;
        len += 4 + 4 * usize::from(u16::from_be_bytes([ext[0], ext[1]]));
    }
    if len > packet.len() {
        return Err(SrtpError::BadHeader);
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.split_whitespace().collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 3711 Appendix B.3's master key and salt (also libsrtp's `srtp_validate`).
    fn b3_master() -> MasterKey {
        let mut bytes = hex("E1F97A0D3E018BE0D64FA32C06DE4139");
        bytes.extend(hex("0EC675AD498AFEEBB6960B3AABE6"));
        MasterKey::from_concatenated(&bytes).unwrap()
    }

    #[test]
    fn key_derivation_matches_rfc3711_b3() {
        let master = b3_master();
        let mut key = [0u8; 16];
        derive(&master, 0, &mut key);
        assert_eq!(key.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut salt = [0u8; 14];
        derive(&master, 2, &mut salt);
        assert_eq!(salt.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        let mut auth = [0u8; 94];
        derive(&master, 1, &mut auth);
        assert_eq!(
            auth.to_vec(),
            hex(
                "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA48F0A0ACF3C34E2359E6CDBCE\
                 E049646C43D9327AD175578EF72270986371C10C9A369AC2F94A8C5FBCDDDC25\
                 6D6E919A48B610EF17C2041E474035766B68642C59BBFC2F34DB60DBDFB2"
            )
        );
    }

    #[test]
    fn keystream_matches_rfc3711_b2() {
        // B.2: session key and salt given directly, SSRC 0, index 0 (and the counter's run).
        let keys = SessionKeys {
            cipher: Aes128::new_from_slice(&hex("2B7E151628AED2A6ABF7158809CF4F3C")).unwrap(),
            salt: hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD").try_into().unwrap(),
            auth: <HmacSha1 as Mac>::new_from_slice(b"unused").unwrap(),
        };
        let mut stream = vec![0u8; 48];
        keys.apply_keystream(0, 0, &mut stream);
        assert_eq!(
            stream,
            hex("E03EAD0935C95E80E166B16DD92B4EB4\
                 D23513162B02D0F72A43A2FE4A5F97AB\
                 41E95B3BB0A2E8DD477901E4FCA894C0")
        );
        // Blocks 0xFEFF, 0xFF00, 0xFF01 of the same run: the counter's low 16 bits carry as
        // B.2 lists them.
        let mut long = vec![0u8; 16 * 0xFF02];
        keys.apply_keystream(0, 0, &mut long);
        assert_eq!(
            long[16 * 0xFEFF..].to_vec(),
            hex("EC8CDF7398607CB0F2D21675EA9EA1E4\
                 362B7C3C6773516318A077D7FC5073AE\
                 6A2CC3787889374FBEB4C81B17BA6C44")
        );
    }

    /// libsrtp's `srtp_validate`: PT 15, seq 0x1234, SSRC 0xcafebabe, 16 bytes of 0xab.
    fn libsrtp_rtp() -> Vec<u8> {
        let mut p = hex("800f1234decafbadcafebabe");
        p.extend([0xab; 16]);
        p
    }

    #[test]
    fn protects_libsrtp_reference_packets() {
        let mut ours = SrtpContext::new(Suite::AesCm128HmacSha1_80, &b3_master());
        let mut packet = libsrtp_rtp();
        ours.protect_rtp(&mut packet).unwrap();
        assert_eq!(
            packet,
            hex("800f1234decafbadcafebabe4e55dc4ce79978d88ca4d215949d2402b78d6acc99ea179b8dbb")
        );
        let mut theirs = SrtpContext::new(Suite::AesCm128HmacSha1_80, &b3_master());
        theirs.unprotect_rtp(&mut packet).unwrap();
        assert_eq!(packet, libsrtp_rtp());

        let rtcp = {
            let mut p = hex("81c8000bcafebabe");
            p.extend([0xab; 16]);
            p
        };
        // libsrtp's SRTCP vector is the second packet of its stream (index 1).
        let mut ours = SrtpContext::new(Suite::AesCm128HmacSha1_80, &b3_master());
        let mut first = rtcp.clone();
        ours.protect_rtcp(&mut first).unwrap();
        let mut packet = rtcp.clone();
        ours.protect_rtcp(&mut packet).unwrap();
        let expected =
            hex("81c8000bcafebabe7128035be487b9bdbef89041f977a5a880000001993e08cd54d6c1230798");
        assert_eq!(packet, expected);
        let mut theirs = SrtpContext::new(Suite::AesCm128HmacSha1_80, &b3_master());
        theirs.unprotect_rtcp(&mut packet).unwrap();
        assert_eq!(packet, rtcp);
    }

    fn rtp(seq: u16, payload: &[u8]) -> Vec<u8> {
        let mut p = vec![0x80, 0x00];
        p.extend(seq.to_be_bytes());
        p.extend(u32::from(seq).wrapping_mul(160).to_be_bytes());
        p.extend(0x1234_5678u32.to_be_bytes());
        p.extend_from_slice(payload);
        p
    }

    fn pair(suite: Suite) -> (SrtpContext, SrtpContext) {
        let master = MasterKey {
            key: [7; 16],
            salt: [9; 14],
        };
        (
            SrtpContext::new(suite, &master),
            SrtpContext::new(suite, &master),
        )
    }

    #[test]
    fn round_trip_across_the_sequence_number_rollover() {
        for suite in Suite::ALL {
            let (mut tx, mut rx) = pair(suite);
            let start = 0xFFF0u16;
            for n in 0..40u16 {
                let seq = start.wrapping_add(n);
                let plain = rtp(seq, &[n as u8; 160]);
                let mut p = plain.clone();
                tx.protect_rtp(&mut p).unwrap();
                assert_eq!(p.len(), plain.len() + suite.rtp_tag_len());
                assert_ne!(p[12..172], plain[12..], "payload must be encrypted");
                rx.unprotect_rtp(&mut p).unwrap();
                assert_eq!(p, plain, "seq {seq}");
            }
            // Both sides moved to ROC 1.
            assert_eq!(rx.streams[0].highest, Some((1 << 16) | 0x17));
            assert_eq!(tx.streams[0].highest, Some((1 << 16) | 0x17));
        }
    }

    #[test]
    fn late_packets_from_before_the_rollover_use_the_old_roc() {
        let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_80);
        let mut sent = Vec::new();
        for seq in [0xFFFEu16, 0xFFFF, 0, 1, 2] {
            let mut p = rtp(seq, b"abcd");
            tx.protect_rtp(&mut p).unwrap();
            sent.push(p);
        }
        // 0xFFFF arrives after 0 and 1 have moved the receiver to ROC 1.
        for i in [0, 2, 3, 1, 4] {
            let mut p = sent[i].clone();
            rx.unprotect_rtp(&mut p)
                .unwrap_or_else(|e| panic!("packet {i}: {e}"));
            assert_eq!(&p[12..], b"abcd");
        }
    }

    #[test]
    fn replays_and_tampering_are_refused_without_moving_state() {
        let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_80);
        let mut packets = Vec::new();
        for seq in 100..300u16 {
            let mut p = rtp(seq, &[1; 20]);
            tx.protect_rtp(&mut p).unwrap();
            packets.push(p);
        }
        let mut p = packets[150].clone();
        rx.unprotect_rtp(&mut p).unwrap();
        let mut again = packets[150].clone();
        assert_eq!(rx.unprotect_rtp(&mut again), Err(SrtpError::Replayed(250)));
        // Within the window and unseen: fine; past it: refused.
        let mut p = packets[100].clone();
        rx.unprotect_rtp(&mut p).unwrap();
        let mut p = packets[0].clone();
        assert_eq!(rx.unprotect_rtp(&mut p), Err(SrtpError::Replayed(100)));

        for at in [0usize, 5, 12, 20, 31] {
            let mut p = packets[199].clone();
            p[at] ^= 0x40;
            let before = rx.streams[0].clone();
            assert_eq!(rx.unprotect_rtp(&mut p), Err(SrtpError::AuthFailed), "{at}");
            assert_eq!(rx.streams[0].highest, before.highest);
        }
        // Another key.
        let (mut other, _) = {
            let m = MasterKey {
                key: [8; 16],
                salt: [9; 14],
            };
            (SrtpContext::new(Suite::AesCm128HmacSha1_80, &m), ())
        };
        let mut p = rtp(299, &[1; 20]);
        other.protect_rtp(&mut p).unwrap();
        assert_eq!(rx.unprotect_rtp(&mut p), Err(SrtpError::AuthFailed));
        let mut short = vec![0x80; 15];
        assert_eq!(rx.unprotect_rtp(&mut short), Err(SrtpError::TooShort(15)));
        // The untampered packet still goes through.
        let mut p = packets[199].clone();
        rx.unprotect_rtp(&mut p).unwrap();
    }

    #[test]
    fn rtcp_round_trip_replay_and_tamper() {
        let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_32);
        let mut plain = hex("80c90001cafebabe");
        plain.extend([0x55; 8]);
        let mut p = plain.clone();
        tx.protect_rtcp(&mut p).unwrap();
        assert_eq!(p.len(), plain.len() + 4 + 10);
        let sent = p.clone();
        rx.unprotect_rtcp(&mut p).unwrap();
        assert_eq!(p, plain);
        let mut again = sent.clone();
        assert_eq!(rx.unprotect_rtcp(&mut again), Err(SrtpError::Replayed(0)));
        let mut bad = sent;
        bad[9] ^= 1;
        assert_eq!(rx.unprotect_rtcp(&mut bad), Err(SrtpError::AuthFailed));
        assert!(is_rtcp(&plain));
        assert!(!is_rtcp(&rtp(1, b"x")));
    }

    #[test]
    fn mki_is_checked_and_stripped() {
        let (mut tx, rx) = pair(Suite::AesCm128HmacSha1_80);
        let mut rx = rx.with_mki(vec![0, 1]);
        let plain = rtp(5, b"hello");
        let mut p = plain.clone();
        tx.protect_rtp(&mut p).unwrap();
        let tag = p.split_off(p.len() - 10);
        let mut wrong = p.clone();
        wrong.extend([0, 2]);
        wrong.extend(&tag);
        assert_eq!(rx.unprotect_rtp(&mut wrong), Err(SrtpError::UnknownMki));
        p.extend([0, 1]);
        p.extend(&tag);
        rx.unprotect_rtp(&mut p).unwrap();
        assert_eq!(p, plain);
    }

    #[test]
    fn header_extension_and_csrcs_stay_in_the_clear() {
        let (mut tx, mut rx) = pair(Suite::AesCm128HmacSha1_80);
        // One CSRC and a one-word extension.
        let mut plain = vec![0x91, 0x00, 0x00, 0x07];
        plain.extend([0; 4]);
        plain.extend([0xAA; 4]);
        plain.extend([0xBB; 4]);
        plain.extend([0xBE, 0xDE, 0x00, 0x01, 1, 2, 3, 4]);
        plain.extend(b"payload");
        let mut p = plain.clone();
        tx.protect_rtp(&mut p).unwrap();
        assert_eq!(p[..24], plain[..24]);
        assert_ne!(p[24..31], plain[24..]);
        rx.unprotect_rtp(&mut p).unwrap();
        assert_eq!(p, plain);
    }

    proptest::proptest! {
        /// Any start, any suite, packets reordered within a few places: every one decrypts to
        /// what was sent, once, wherever the rollover falls.
        #[test]
        fn reordered_streams_round_trip(
            start in proptest::prelude::any::<u16>(),
            count in 1usize..300,
            swaps in proptest::collection::vec((0usize..300, 1usize..4), 0..40),
            short in proptest::prelude::any::<bool>(),
            payload_len in 0usize..200,
        ) {
            let suite = if short { Suite::AesCm128HmacSha1_32 } else { Suite::AesCm128HmacSha1_80 };
            let (mut tx, mut rx) = pair(suite);
            let mut sent = Vec::new();
            for n in 0..count {
                let seq = start.wrapping_add(n as u16);
                let plain = rtp(seq, &vec![n as u8; payload_len]);
                let mut p = plain.clone();
                tx.protect_rtp(&mut p).unwrap();
                sent.push((plain, p));
            }
            // The first packet stays first: a receiver takes ROC 0 from it (RFC 3711 §3.3.1), so
            // a stream whose first arrival is already past the sender's rollover loses that one.
            for (at, by) in swaps {
                if at > 0 && at + by < sent.len() {
                    sent.swap(at, at + by);
                }
            }
            for (plain, protected) in &sent {
                let mut p = protected.clone();
                rx.unprotect_rtp(&mut p).unwrap();
                proptest::prop_assert_eq!(&p, plain);
                let mut again = protected.clone();
                proptest::prop_assert!(matches!(rx.unprotect_rtp(&mut again), Err(SrtpError::Replayed(_))));
            }
        }
    }
}
