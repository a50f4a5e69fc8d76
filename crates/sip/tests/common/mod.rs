//! Harness for tests against real SIP peers on loopback: SIPp processes killed on drop, free
//! port discovery, and helpers to dial and collect a call's events.
#![allow(dead_code)]

use domain::telephony::{
    CallControl, CallEnd, CallEvent, DialRequest, LiveCall, MediaStream, Telephony, TrunkTarget,
};
use domain::{ConversationId, TraceId, E164};
use sip::{SipConfig, SipTelephony};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SIPP: &str = "/usr/bin/sipp";

pub fn sipp_available() -> bool {
    Path::new(SIPP).exists()
}

/// A UDP port nobody holds right now. The OS hands out ephemeral ports round-robin, so two
/// tests asking at once get different ones.
pub fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").unwrap();
    s.local_addr().unwrap().port()
}

/// A free port whose +2 neighbour is free too: SIPp's RTP echo binds both.
pub fn free_media_port() -> u16 {
    loop {
        let a = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < 65_000 && UdpSocket::bind(("127.0.0.1", port + 2)).is_ok() {
            return port;
        }
    }
}

pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/scenarios")
        .join(name)
}

/// A running SIPp, killed by PID when dropped.
pub struct Sipp {
    child: Child,
    pub port: u16,
    pub media_port: u16,
    pub log_dir: tempfile::TempDir,
}

impl Sipp {
    /// Starts `sipp -sf <scenario>` as a UAS on a free loopback port and waits until it listens.
    /// A port found free can be taken by a test running beside this one before SIPp binds it,
    /// and SIPp then exits at once: it is started again on other ports, three times at most.
    pub fn uas(scenario_file: &str, extra: &[&str]) -> Self {
        let mut tries = 0;
        loop {
            tries += 1;
            let mut sipp = Self::start_uas(scenario_file, extra);
            match sipp.wait_listening() {
                Ok(()) => return sipp,
                Err(why) if tries < 3 => eprintln!("SIPp did not start ({why}); other ports"),
                Err(why) => panic!("sipp did not start listening: {why}"),
            }
        }
    }

    fn start_uas(scenario_file: &str, extra: &[&str]) -> Self {
        let port = free_udp_port();
        let media_port = free_media_port();
        let log_dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new(SIPP);
        cmd.arg("-sf")
            .arg(scenario(scenario_file))
            .args(["-i", "127.0.0.1", "-mi", "127.0.0.1"])
            .args(["-p", &port.to_string(), "-mp", &media_port.to_string()])
            .args(["-m", "1", "-nostdin", "-timeout", "30s"])
            .args(["-trace_msg", "-trace_err"])
            .arg("-message_file")
            .arg(log_dir.path().join("messages.log"))
            .arg("-error_file")
            .arg(log_dir.path().join("errors.log"))
            .args(extra)
            .current_dir(log_dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::File::create(log_dir.path().join("stderr.log"))
                    .expect("SIPp's stderr file"),
            );
        let child = cmd.spawn().expect("start sipp");
        Self {
            child,
            port,
            media_port,
            log_dir,
        }
    }

    /// Once SIPp holds the port our bind fails; until then a call would get ICMP unreachable.
    fn wait_listening(&mut self) -> Result<(), String> {
        testkit::sipp_listening(&mut self.child, self.port, Duration::from_secs(5))
            .map_err(|why| format!("{why}: {}", self.stderr()))
    }

    pub fn uri(&self) -> String {
        format!("sip:127.0.0.1:{}", self.port)
    }

    /// SIPp's exit code once it finished its one call (0: the scenario succeeded).
    pub fn exit_code(&mut self, within: Duration) -> Option<i32> {
        let deadline = Instant::now() + within;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIPp's message trace. Panics when it cannot be read: a test that looks for something in
    /// the trace must not pass because there was no trace.
    pub fn messages(&self) -> String {
        let path = self.log_dir.path().join("messages.log");
        match std::fs::read(&path) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) => panic!("cannot read SIPp's message trace {}: {e}", path.display()),
        }
    }

    /// The SIP messages SIPp received, in order, as they were on the wire.
    pub fn received(&self) -> Vec<String> {
        trace_blocks(&self.messages(), "message received")
    }

    /// The SIP messages SIPp sent, in order.
    pub fn sent(&self) -> Vec<String> {
        trace_blocks(&self.messages(), "message sent")
    }

    /// What SIPp printed (why it would not start, say).
    fn stderr(&self) -> String {
        std::fs::read_to_string(self.log_dir.path().join("stderr.log")).unwrap_or_default()
    }

    pub fn errors(&self) -> String {
        std::fs::read_to_string(self.log_dir.path().join("errors.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Sipp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Splits SIPp's `-trace_msg` log into the messages of one direction. Each entry is a dashed
/// line with a date, "UDP message received [n] bytes :" or "UDP message sent (n bytes):", a
/// blank line, then the message.
fn trace_blocks(log: &str, direction: &str) -> Vec<String> {
    log.split("----------------------------------------------- ")
        .filter_map(|entry| {
            let (head, message) = entry.split_once("\n\n")?;
            head.contains(direction).then(|| message.to_string())
        })
        .collect()
}

/// The first line of `message` that starts with `name:` (case-insensitive), without the name.
pub fn header_line<'a>(message: &'a str, name: &str) -> Option<&'a str> {
    message.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The lines of a traced message's header section, split at CR LF, CR, LF or any other control
/// character but HTAB (VT, FF, NEL...), as the most lenient far-end parser would.
pub fn header_lines(message: &str) -> Vec<&str> {
    let head = message.split("\r\n\r\n").next().unwrap_or(message);
    head.split(|c: char| c.is_control() && c != '\t')
        .filter(|l| !l.is_empty())
        .collect()
}

pub async fn adapter(recordings: Option<&Path>, no_rtp_timeout: Duration) -> SipTelephony {
    SipTelephony::bind(SipConfig {
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        rtp_ports: 0..=0,
        recording_dir: recordings.map(Path::to_path_buf),
        no_rtp_timeout,
        ..SipConfig::default()
    })
    .await
    .expect("bind adapter")
}

pub fn request(uri: &str, ring: Duration, max: Duration) -> DialRequest {
    DialRequest {
        conversation_id: ConversationId::first(domain::Millis::now()),
        trace_id: TraceId::new(),
        from: E164::parse("+14155550100").unwrap(),
        to: E164::parse("+14155550199").unwrap(),
        trunk: TrunkTarget {
            uri: uri.to_string(),
            username: None,
            password: None,
            transport: domain::telephony::Transport::Udp,
            register: false,
            srtp: domain::telephony::Srtp::Off,
        },
        ring_timeout: ring,
        max_duration: max,
    }
}

/// Event kinds seen, in order, without their payloads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Ringing,
    EarlyMedia,
    Answered,
    Dtmf(char),
}

/// Drains a call to its end, hanging up `hangup_after` after the answer (if given), and
/// returns what happened. Inbound audio is consumed and dropped.
pub async fn run_call(
    telephony: &SipTelephony,
    req: DialRequest,
    hangup_after: Option<Duration>,
) -> (Vec<Kind>, CallEnd) {
    let LiveCall {
        mut events,
        control,
    } = telephony.dial(req).await.expect("dial");
    let mut kinds = Vec::new();
    let mut media: Option<MediaStream> = None;
    let mut hangup_at: Option<tokio::time::Instant> = None;
    loop {
        let hang = async {
            match hangup_at {
                Some(t) => tokio::time::sleep_until(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ev = events.recv() => match ev.expect("events end with Ended") {
                CallEvent::Ringing => kinds.push(Kind::Ringing),
                CallEvent::EarlyMedia => kinds.push(Kind::EarlyMedia),
                CallEvent::Dtmf(d) => kinds.push(Kind::Dtmf(d)),
                CallEvent::Transfer(t) => panic!("no transfer was asked for: {t:?}"),
                CallEvent::Answered { media: m, .. } => {
                    kinds.push(Kind::Answered);
                    media = Some(m);
                    hangup_at = hangup_after.map(|d| tokio::time::Instant::now() + d);
                }
                CallEvent::Ended(end) => {
                    assert!(events.recv().await.is_none(), "Ended must be last");
                    return (kinds, end);
                }
            },
            Some(_) = async { match media.as_mut() { Some(m) => m.inbound.recv().await, None => std::future::pending().await } } => {}
            () = hang => {
                hangup_at = None;
                control.send(CallControl::Hangup).await.unwrap();
            }
        }
    }
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "sip=debug,rsipstack=warn".into()),
        )
        .with_test_writer()
        .try_init();
}

/// The call was answered (and nothing else reported), completed, and SIPp's scenario, with the
/// checks it makes of our messages, passed.
pub fn assert_answered_and_completed(kinds: &[Kind], end: &CallEnd, sipp: &mut Sipp) {
    assert_eq!(kinds, [Kind::Answered]);
    assert_eq!(end.status, domain::CallStatus::Completed, "{end:?}");
    assert_eq!(
        sipp.exit_code(Duration::from_secs(5)),
        Some(0),
        "{}",
        sipp.errors()
    );
}
