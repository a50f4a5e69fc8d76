//! The tokio driver for one call's RTP stream: a socket, a 20 ms clock, and the sans-IO pieces of
//! the `media` crate in between. One task per call owns all of it, so nothing here locks.

use crate::recording::Recorder;
use crate::sdp::{Codec, Crypto, Direction, RemoteMedia, SrtpKeys, OFFERED_TELEPHONE_EVENT_PT};
use domain::telephony::AudioFrame;
use media::dtmf::{DtmfReceiver, DtmfSender};
use media::jitter::{JitterBuffer, JitterConfig, Playout};
use media::resample::{Downsampler, Upsampler};
use media::rtp::RtpPacket;
use media::sender::{Pacer, RtpSender, SenderConfig};
use media::srtp::{is_rtcp, SrtpContext};
use media::{g711, FRAME_SAMPLES};
use std::collections::VecDeque;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn, Instrument, Span};

/// A packet sent this much after its slot on the 20 ms grid counts as late.
const LATE_THRESHOLD: Duration = Duration::from_millis(5);
/// Length of an outgoing DTMF digit; 100 ms is what most IVRs and carriers expect.
const DTMF_DURATION: Duration = Duration::from_millis(100);
/// -10 dBm0, the customary RFC 4733 volume.
const DTMF_VOLUME: u8 = 10;
const WIDE_FRAME: usize = domain::telephony::FRAME_SAMPLES;
/// Largest datagram we read; RTP for 20 ms G.711 is 172 bytes.
const RECV_BUF: usize = 2048;

/// Media counters summed over all calls of an adapter, for metrics and the load bench.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    sent: AtomicU64,
    late: AtomicU64,
    received: AtomicU64,
    lost: AtomicU64,
    refused: AtomicU64,
}

/// A snapshot of [`crate::SipTelephony::media_stats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MediaStats {
    /// RTP packets sent.
    pub packets_sent: u64,
    /// Packets sent more than 5 ms after their slot on the 20 ms schedule.
    pub packets_late: u64,
    /// RTP packets received.
    pub packets_received: u64,
    /// Inbound packets the jitter buffer found missing at playout (finished calls only).
    pub packets_lost: u64,
    /// Inbound SRTP packets refused: failed authentication (tampered, or another key) or
    /// replayed. They count as neither received nor heard.
    pub packets_refused: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> MediaStats {
        MediaStats {
            packets_sent: self.sent.load(Ordering::Relaxed),
            packets_late: self.late.load(Ordering::Relaxed),
            packets_received: self.received.load(Ordering::Relaxed),
            packets_lost: self.lost.load(Ordering::Relaxed),
            packets_refused: self.refused.load(Ordering::Relaxed),
        }
    }
}

/// Hands out RTP ports round-robin over every other port of the configured range, so
/// consecutive calls do not fight over a recently released port and RTCP's customary odd
/// neighbour stays free.
#[derive(Debug)]
pub(crate) struct PortPool {
    first: u16,
    slots: u32,
    cursor: AtomicU32,
}

impl PortPool {
    pub(crate) fn new(range: RangeInclusive<u16>) -> Self {
        let (first, last) = (*range.start(), *range.end());
        Self {
            first,
            slots: u32::from(last.saturating_sub(first)) / 2 + 1,
            cursor: AtomicU32::new(0),
        }
    }

    /// Binds the next free port of the pool on `ip`.
    pub(crate) async fn bind(&self, ip: IpAddr) -> io::Result<UdpSocket> {
        let mut last_err = io::Error::new(io::ErrorKind::AddrInUse, "no free RTP port");
        for _ in 0..self.slots {
            let slot = self.cursor.fetch_add(1, Ordering::Relaxed) % self.slots;
            // slot * 2 stays within the range that `slots` was computed from.
            let port = self.first + (slot * 2) as u16;
            match UdpSocket::bind(SocketAddr::new(ip, port)).await {
                Ok(socket) => return Ok(socket),
                Err(e) => last_err = e,
            }
        }
        Err(last_err)
    }
}

pub(crate) enum MediaCommand {
    /// New remote description (re-INVITE, or the 200 after early media).
    Remote(RemoteMedia),
    /// The call was answered: start feeding and draining the owner's channels.
    Attach {
        inbound: mpsc::Sender<AudioFrame>,
        outbound: mpsc::Receiver<AudioFrame>,
    },
    Dtmf(char),
    Flush,
    /// The SRTP keys agreed anew (a re-INVITE's, or the 200 after early media).
    Keys(SrtpKeys),
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum MediaEvent {
    Dtmf(char),
    /// Answered and `no_rtp_timeout` passed without a single packet.
    NoRtp,
}

pub(crate) struct MediaSetup {
    pub socket: UdpSocket,
    pub remote: RemoteMedia,
    pub recorder: Option<Recorder>,
    pub no_rtp_timeout: Duration,
    pub counters: Arc<Counters>,
    pub ssrc: u32,
    pub initial_sequence: u16,
    pub initial_timestamp: u32,
    /// SRTP's keys; `None` for plain RTP.
    pub srtp: Option<SrtpKeys>,
}

/// The two SRTP contexts of a secure stream: ours protects what we send, the far end's
/// checks and decrypts what it sends.
struct Protection {
    keys: SrtpKeys,
    outbound: SrtpContext,
    inbound: SrtpContext,
}

impl Protection {
    fn new(keys: SrtpKeys) -> Self {
        Self {
            outbound: outbound_context(&keys.ours),
            inbound: inbound_context(&keys.theirs),
            keys,
        }
    }

    /// New contexts only for a side whose key changed: a refresh that repeats the keys keeps
    /// the rollover counters and replay windows.
    fn rekey(&mut self, keys: SrtpKeys) {
        if keys.ours != self.keys.ours {
            info!("our SRTP key changed");
            self.outbound = outbound_context(&keys.ours);
        }
        if keys.theirs != self.keys.theirs {
            info!("the far end's SRTP key changed");
            self.inbound = inbound_context(&keys.theirs);
        }
        self.keys = keys;
    }
}

fn outbound_context(c: &Crypto) -> SrtpContext {
    SrtpContext::new(c.suite, &c.key)
}

fn inbound_context(c: &Crypto) -> SrtpContext {
    SrtpContext::new(c.suite, &c.key).with_mki(c.mki.clone().unwrap_or_default())
}

/// The call task's side of a running media session.
pub(crate) struct MediaHandle {
    pub commands: mpsc::UnboundedSender<MediaCommand>,
    pub events: mpsc::UnboundedReceiver<MediaEvent>,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Option<PathBuf>>,
}

impl MediaHandle {
    pub(crate) fn start(setup: MediaSetup, span: Span) -> Self {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        let (stop, stop_rx) = oneshot::channel();
        let session = Session::new(setup, event_tx);
        let task = tokio::spawn(session.run(command_rx, stop_rx).instrument(span));
        Self {
            commands,
            events,
            stop,
            task,
        }
    }

    /// Stops the stream and returns the finished recording, if any.
    pub(crate) async fn stop(self) -> Option<PathBuf> {
        let _ = self.stop.send(());
        match self.task.await {
            Ok(path) => path,
            Err(e) => {
                warn!(error = %e, "media task failed");
                None
            }
        }
    }
}

struct Session {
    socket: UdpSocket,
    remote: RemoteMedia,
    sender: RtpSender,
    jitter: JitterBuffer,
    dtmf_in: DtmfReceiver,
    dtmf_queue: VecDeque<char>,
    dtmf_out: Option<DtmfSender>,
    up: Upsampler,
    down: Downsampler,
    recorder: Option<Recorder>,
    inbound: Option<mpsc::Sender<AudioFrame>>,
    outbound: Option<mpsc::Receiver<AudioFrame>>,
    events: mpsc::UnboundedSender<MediaEvent>,
    counters: Arc<Counters>,
    no_rtp_timeout: Duration,
    attached_at: Option<Instant>,
    heard_since_attach: bool,
    no_rtp_reported: bool,
    // Per-tick buffers, reused so the steady state does not allocate beyond the frame handed out.
    wide: Vec<i16>,
    narrow_out: Vec<i16>,
    narrow_in: Vec<i16>,
    payload: Vec<u8>,
    packet: Vec<u8>,
    srtp: Option<Protection>,
    /// An inbound SRTP packet being decrypted.
    scratch: Vec<u8>,
}

impl Session {
    fn new(setup: MediaSetup, events: mpsc::UnboundedSender<MediaEvent>) -> Self {
        let sender = RtpSender::new(SenderConfig {
            ssrc: setup.ssrc,
            initial_sequence: setup.initial_sequence,
            initial_timestamp: setup.initial_timestamp,
            payload_type: setup.remote.payload_type,
        });
        Self {
            socket: setup.socket,
            remote: setup.remote,
            sender,
            jitter: JitterBuffer::new(JitterConfig::default()),
            dtmf_in: DtmfReceiver::new(),
            dtmf_queue: VecDeque::new(),
            dtmf_out: None,
            up: Upsampler::new(),
            down: Downsampler::new(),
            recorder: setup.recorder,
            inbound: None,
            outbound: None,
            events,
            counters: setup.counters,
            no_rtp_timeout: setup.no_rtp_timeout,
            attached_at: None,
            heard_since_attach: false,
            no_rtp_reported: false,
            wide: Vec::with_capacity(WIDE_FRAME),
            narrow_out: Vec::with_capacity(FRAME_SAMPLES),
            narrow_in: Vec::with_capacity(FRAME_SAMPLES),
            payload: Vec::with_capacity(FRAME_SAMPLES),
            packet: vec![0; media::rtp::HEADER_LEN + FRAME_SAMPLES],
            srtp: setup.srtp.map(Protection::new),
            scratch: Vec::with_capacity(RECV_BUF),
        }
    }

    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<MediaCommand>,
        mut stop: oneshot::Receiver<()>,
    ) -> Option<PathBuf> {
        let pacer = Pacer::new(Instant::now());
        let mut frame: u64 = 0;
        let mut buf = vec![0u8; RECV_BUF];
        let sleep = tokio::time::sleep_until(pacer.deadline(0).into());
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                biased;
                _ = &mut stop => break,
                command = commands.recv() => match command {
                    Some(command) => self.command(command),
                    None => break,
                },
                () = &mut sleep => {
                    let now = Instant::now();
                    // A task woken late sends every frame that fell due, so the stream keeps its
                    // timing instead of drifting behind the media clock.
                    while pacer.deadline(frame) <= now {
                        self.tick(frame, pacer.deadline(frame), now).await;
                        frame += 1;
                    }
                    sleep.as_mut().reset(pacer.deadline(frame).into());
                }
                received = self.socket.recv_from(&mut buf) => match received {
                    Ok((len, from)) => self.receive(&buf[..len], from, Instant::now()),
                    // ICMP errors from an earlier send surface here; the next send retries.
                    Err(e) => debug!(error = %e, "RTP receive error"),
                },
            }
        }
        self.finish()
    }

    fn command(&mut self, command: MediaCommand) {
        match command {
            MediaCommand::Remote(remote) => {
                if (remote.codec, remote.payload_type)
                    != (self.remote.codec, self.remote.payload_type)
                {
                    info!(from = ?self.remote.codec, to = ?remote.codec, "codec changed by the far end");
                    self.sender.set_payload_type(remote.payload_type);
                }
                if remote.held() != self.remote.held() {
                    info!(
                        direction = remote.direction.attribute(),
                        "far end changed the stream's direction"
                    );
                    // A stream resumed before any packet came gets a whole no-RTP window.
                    if self.attached_at.is_some() {
                        self.attached_at = Some(Instant::now());
                    }
                }
                self.remote = remote;
            }
            MediaCommand::Attach { inbound, outbound } => {
                self.inbound = Some(inbound);
                self.outbound = Some(outbound);
                self.attached_at = Some(Instant::now());
            }
            MediaCommand::Dtmf(digit) => {
                if self.remote.telephone_event.is_some() {
                    self.dtmf_queue.push_back(digit);
                } else {
                    warn!(%digit, "far end did not accept telephone-event; DTMF not sent");
                }
            }
            MediaCommand::Flush => {
                if let Some(outbound) = self.outbound.as_mut() {
                    while outbound.try_recv().is_ok() {}
                }
            }
            MediaCommand::Keys(keys) => match self.srtp.as_mut() {
                Some(p) => p.rekey(keys),
                None => self.srtp = Some(Protection::new(keys)),
            },
        }
    }

    /// A datagram on the media port: an SRTP stream's is authenticated and decrypted first, and
    /// one that fails is dropped before anything (symmetric RTP's address learning included)
    /// sees it.
    fn receive(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) {
        let Some(protection) = self.srtp.as_mut() else {
            return self.receive_rtp(datagram, from, now);
        };
        if is_rtcp(datagram) {
            // We send no RTCP and read none (plain or SRTCP).
            return;
        }
        let mut plain = std::mem::take(&mut self.scratch);
        plain.clear();
        plain.extend_from_slice(datagram);
        match protection.inbound.unprotect_rtp(&mut plain) {
            Ok(()) => self.receive_rtp(&plain, from, now),
            Err(e) => {
                self.counters.refused.fetch_add(1, Ordering::Relaxed);
                debug!(error = %e, %from, "SRTP packet refused");
            }
        }
        self.scratch = plain;
    }

    fn receive_rtp(&mut self, datagram: &[u8], from: SocketAddr, now: Instant) {
        let Ok(packet) = RtpPacket::parse(datagram) else {
            return;
        };
        let pt = packet.payload_type;
        let is_event = pt == OFFERED_TELEPHONE_EVENT_PT || Some(pt) == self.remote.telephone_event;
        if !is_event && pt != self.remote.payload_type && Codec::from_payload_type(pt).is_none() {
            // RTCP sent to the RTP port, comfort noise, or something we never offered.
            return;
        }
        // Symmetric RTP (RFC 4961): answer to where the far end really sends from, which is
        // what gets media through NAT and SBCs that rewrite addresses.
        if from != self.remote.addr {
            debug!(%from, was = %self.remote.addr, "RTP peer address learned");
            self.remote.addr = from;
        }
        self.counters.received.fetch_add(1, Ordering::Relaxed);
        self.heard_since_attach = true;
        if is_event {
            if let Err(e) = self.dtmf_in.push(packet.timestamp, packet.payload) {
                debug!(error = %e, "ignored telephone-event");
            }
            while let Some(digit) = self.dtmf_in.poll() {
                let _ = self.events.send(MediaEvent::Dtmf(digit.digit));
            }
        } else {
            self.jitter.push(&packet, now);
        }
    }

    async fn tick(&mut self, frame: u64, deadline: Instant, now: Instant) {
        // On hold we send nothing (RFC 3264 §5.1); the owner's audio is taken and dropped so its
        // playout clock keeps running, and the recording has silence on our leg.
        let len = if self.remote.held() {
            self.discard_outgoing();
            None
        } else {
            self.outgoing(frame)
        };
        let len = match (len, self.srtp.as_mut()) {
            (Some(len), Some(protection)) => {
                self.packet.truncate(len);
                match protection.outbound.protect_rtp(&mut self.packet) {
                    Ok(()) => Some(self.packet.len()),
                    Err(e) => {
                        warn!(error = %e, "SRTP refused to protect a packet; not sent");
                        None
                    }
                }
            }
            (len, _) => len,
        };
        if let Some(len) = len {
            if now.saturating_duration_since(deadline) > LATE_THRESHOLD {
                self.counters.late.fetch_add(1, Ordering::Relaxed);
            }
            match self
                .socket
                .send_to(&self.packet[..len], self.remote.addr)
                .await
            {
                Ok(_) => {
                    self.counters.sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => debug!(error = %e, "RTP send failed"),
            }
        }
        self.incoming(now);
        if let Some(recorder) = self.recorder.as_mut() {
            if let Err(e) = recorder.write(&self.narrow_out, &self.narrow_in) {
                warn!(error = %e, "recording failed; continuing without it");
                self.recorder = None;
            }
        }
        self.check_silence(now);
    }

    fn discard_outgoing(&mut self) {
        if let Some(outbound) = self.outbound.as_mut() {
            let _ = outbound.try_recv();
        }
        self.narrow_out.clear();
        self.narrow_out.resize(FRAME_SAMPLES, 0);
    }

    /// Builds this tick's packet into `self.packet` and leaves the 8 kHz audio sent (silence
    /// during DTMF) in `narrow_out` for the recording.
    fn outgoing(&mut self, frame: u64) -> Option<usize> {
        if self.dtmf_out.is_none() {
            if let Some(digit) = self.dtmf_queue.pop_front() {
                let start = self.sender.timestamp_at(frame);
                match DtmfSender::new(digit, start, DTMF_DURATION, DTMF_VOLUME) {
                    Ok(sender) => self.dtmf_out = Some(sender),
                    Err(e) => warn!(%digit, error = %e, "cannot send DTMF digit"),
                }
            }
        }
        if let (Some(dtmf), Some(pt)) = (self.dtmf_out.as_mut(), self.remote.telephone_event) {
            if let Some(event) = dtmf.next() {
                self.narrow_out.clear();
                self.narrow_out.resize(FRAME_SAMPLES, 0);
                let packet = self
                    .sender
                    .packet(pt, event.timestamp, event.marker, &event.payload);
                return write_packet(&packet, &mut self.packet);
            }
            // The digit is over; this tick is audio again, which also spaces consecutive digits.
            self.dtmf_out = None;
        }

        self.wide.clear();
        if let Some(frame) = self.outbound.as_mut().and_then(|o| o.try_recv().ok()) {
            self.wide
                .extend_from_slice(&frame[..frame.len().min(WIDE_FRAME)]);
        }
        self.wide.resize(WIDE_FRAME, 0);
        self.narrow_out.clear();
        self.down.process(&self.wide, &mut self.narrow_out);
        self.payload.clear();
        match self.remote.codec {
            Codec::Pcmu => g711::ulaw_encode_slice(&self.narrow_out, &mut self.payload),
            Codec::Pcma => g711::alaw_encode_slice(&self.narrow_out, &mut self.payload),
        }
        match self.sender.audio(frame, &self.payload) {
            Ok(packet) => write_packet(&packet, &mut self.packet),
            Err(e) => {
                warn!(error = %e, "RTP sender refused frame");
                None
            }
        }
    }

    /// Plays out one frame from the jitter buffer into `narrow_in` and hands the owner its
    /// 16 kHz version.
    fn incoming(&mut self, now: Instant) {
        self.narrow_in.clear();
        if let Playout::Frame(frame) = self.jitter.pop(now) {
            match self.remote.codec {
                Codec::Pcmu => g711::ulaw_decode_slice(&frame.payload, &mut self.narrow_in),
                Codec::Pcma => g711::alaw_decode_slice(&frame.payload, &mut self.narrow_in),
            }
        }
        // The owner's clock is ours: a missing or short packet is silence, never a gap.
        self.narrow_in.resize(FRAME_SAMPLES, 0);
        let Some(inbound) = self.inbound.as_ref() else {
            return;
        };
        let mut wide = Vec::with_capacity(WIDE_FRAME);
        self.up.process(&self.narrow_in, &mut wide);
        // A consumer that stops reading loses audio rather than stalling the stream.
        if inbound.try_send(wide).is_err() {
            debug!("inbound audio dropped: consumer is not keeping up");
        }
    }

    fn check_silence(&mut self, now: Instant) {
        let Some(attached) = self.attached_at else {
            return;
        };
        // Silence on hold is no sign of a blocked socket: a far end that holds (sendonly) often
        // sends nothing either, and one that said recvonly or inactive will not.
        if self.remote.direction != Direction::SendRecv {
            return;
        }
        if !self.heard_since_attach
            && !self.no_rtp_reported
            && now.saturating_duration_since(attached) >= self.no_rtp_timeout
        {
            self.no_rtp_reported = true;
            let _ = self.events.send(MediaEvent::NoRtp);
        }
    }

    fn finish(mut self) -> Option<PathBuf> {
        self.dtmf_in.flush();
        while let Some(digit) = self.dtmf_in.poll() {
            let _ = self.events.send(MediaEvent::Dtmf(digit.digit));
        }
        self.counters
            .lost
            .fetch_add(self.jitter.stats().lost, Ordering::Relaxed);
        let recorder = self.recorder.take()?;
        match recorder.finish() {
            Ok(path) => Some(path),
            Err(e) => {
                warn!(error = %e, "could not finish recording");
                None
            }
        }
    }
}

fn write_packet(packet: &RtpPacket<'_>, out: &mut Vec<u8>) -> Option<usize> {
    out.resize(packet.encoded_len(), 0);
    match packet.write(out) {
        Ok(len) => Some(len),
        Err(e) => {
            warn!(error = %e, "RTP packet not written");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sdp::Suite;

    fn tone(frame: usize, hz: f64, rate: f64, len: usize) -> Vec<i16> {
        (0..len)
            .map(|i| {
                let t = (frame * len + i) as f64 / rate;
                (6_000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16
            })
            .collect()
    }

    fn rms(x: &[i16]) -> f64 {
        (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
    }

    /// What leaves an SRTP stream is not the G.711 of the audio, decrypts with our key (the
    /// sequence numbers crossing the rollover) to that audio; what comes in is heard only when
    /// it carries the far end's key and an intact tag.
    #[tokio::test]
    async fn an_srtp_stream_sends_no_plain_rtp_and_hears_only_the_far_ends_key() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let ours = socket.local_addr().unwrap();
        let far = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let suite = Suite::AesCm128HmacSha1_80;
        let keys = SrtpKeys {
            ours: Crypto::generate(1, suite),
            theirs: Crypto::generate(1, suite),
        };
        let counters = Arc::new(Counters::default());
        let handle = MediaHandle::start(
            MediaSetup {
                socket,
                remote: RemoteMedia {
                    addr: far.local_addr().unwrap(),
                    codec: Codec::Pcmu,
                    payload_type: 0,
                    telephone_event: None,
                    direction: Direction::SendRecv,
                    secure: true,
                },
                recorder: None,
                no_rtp_timeout: Duration::from_secs(10),
                counters: counters.clone(),
                ssrc: 0x5eed,
                initial_sequence: 0xFFF8,
                initial_timestamp: 0,
                srtp: Some(keys.clone()),
            },
            Span::none(),
        );
        let (in_tx, mut inbound) = mpsc::channel(200);
        let (out_tx, out_rx) = mpsc::channel(200);
        for f in 0..40 {
            out_tx
                .send(tone(f, 1_000.0, 16_000.0, WIDE_FRAME))
                .await
                .unwrap();
        }
        let _ = handle.commands.send(MediaCommand::Attach {
            inbound: in_tx,
            outbound: out_rx,
        });

        let mut reader = SrtpContext::new(suite, &keys.ours.key);
        let mut buf = [0u8; 2048];
        let mut loud = 0;
        for n in 0..30 {
            let (len, _) = far.recv_from(&mut buf).await.unwrap();
            let wire = buf[..len].to_vec();
            assert_eq!(len, 12 + 160 + 10, "header, payload, 80-bit tag");
            let mut plain = wire.clone();
            reader
                .unprotect_rtp(&mut plain)
                .unwrap_or_else(|e| panic!("packet {n}: {e}"));
            assert_eq!(plain[..12], wire[..12], "the header stays readable");
            assert_ne!(plain[12..], wire[12..172], "the payload is encrypted");
            let mut audio = Vec::new();
            g711::ulaw_decode_slice(&plain[12..], &mut audio);
            let mut on_wire = Vec::new();
            g711::ulaw_decode_slice(&wire[12..172], &mut on_wire);
            if rms(&audio) > 2_000.0 {
                loud += 1;
                // As audio, the ciphertext is noise: no 1 kHz tone in it.
                let crossings = on_wire
                    .windows(2)
                    .filter(|w| (w[0] < 0) != (w[1] < 0))
                    .count();
                let tone_crossings = audio
                    .windows(2)
                    .filter(|w| (w[0] < 0) != (w[1] < 0))
                    .count();
                assert!((35..=45).contains(&tone_crossings), "{tone_crossings}");
                assert!(crossings > 55, "{crossings}");
            }
        }
        assert!(loud > 20, "our tone decrypted in {loud} of 30 packets");

        // The far end's stream, with a tampered copy and a packet under another key mixed in.
        let mut writer = SrtpContext::new(suite, &keys.theirs.key);
        let mut stranger = SrtpContext::new(suite, &Crypto::generate(1, suite).key);
        for seq in 0..40u16 {
            let mut packet = vec![0x80, 0x00];
            packet.extend(seq.to_be_bytes());
            packet.extend((u32::from(seq) * 160).to_be_bytes());
            packet.extend(0xfa5e_u32.to_be_bytes());
            let mut payload = Vec::new();
            g711::ulaw_encode_slice(&tone(seq.into(), 440.0, 8_000.0, 160), &mut payload);
            packet.extend(payload);
            let mut forged = packet.clone();
            writer.protect_rtp(&mut packet).unwrap();
            if seq % 10 == 5 {
                let mut tampered = packet.clone();
                tampered[20] ^= 0x01;
                far.send_to(&tampered, ours).await.unwrap();
                stranger.protect_rtp(&mut forged).unwrap();
                far.send_to(&forged, ours).await.unwrap();
            }
            far.send_to(&packet, ours).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut heard = Vec::new();
        while let Ok(frame) = inbound.try_recv() {
            heard.extend(frame);
        }
        assert!(rms(&heard) > 1_000.0, "the far end's tone was not heard");
        let stats = counters.snapshot();
        assert_eq!(stats.packets_received, 40, "{stats:?}");
        assert_eq!(stats.packets_refused, 8, "{stats:?}");
        handle.stop().await;
    }
}
