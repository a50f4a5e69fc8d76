//! Interoperability with a second, independent UA: baresip as an auto-answering callee that plays
//! a 440 Hz tone and dumps what it decodes (sndfile module), with SRTP (its `srtp` module, SDES)
//! when asked. Needs `/usr/bin/baresip`.

mod common;

use common::*;
use domain::telephony::{CallControl, CallEvent, LiveCall, Telephony};
use domain::CallStatus;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BARESIP: &str = "/usr/bin/baresip";

struct Baresip {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Baresip {
    fn start() -> Self {
        Self::start_with(None)
    }

    /// With `media_enc` (`srtp`, `srtp-mand`): baresip's SDES SRTP, as its account's
    /// `mediaenc`.
    fn start_with(media_enc: Option<&str>) -> Self {
        let port = free_udp_port();
        let rtp = free_media_port();
        let dir = tempfile::tempdir().unwrap();
        // ausine only runs at 48 kHz; aufile plays a WAV at the call's 8 kHz.
        let sine = dir.path().join("sine.wav");
        let samples: Vec<i16> = (0..8_000 * 30)
            .map(|i| {
                let t = f64::from(i) / 8_000.0;
                (6_000.0 * (2.0 * std::f64::consts::PI * 440.0 * t).sin()) as i16
            })
            .collect();
        media::wav::write(std::fs::File::create(&sine).unwrap(), 8_000, &samples).unwrap();
        let config = format!(
            "poll_method\t\tepoll\n\
             sip_listen\t\t127.0.0.1:{port}\n\
             sip_trans_def\t\tudp\n\
             audio_source\t\taufile,{}\n\
             audio_alert\t\taufile,/dev/null\n\
             rtp_ports\t\t{rtp}-{}\n\
             module_path\t\t/usr/lib/baresip/modules\n\
             module\t\t\tg711.so\n\
             module\t\t\taufile.so\n\
             module\t\t\tsndfile.so\n\
             snd_path\t\t{}\n\
             module\t\t\tmenu.so\n\
             {}             module_app\t\taccount.so\n",
            sine.display(),
            rtp + 1,
            dir.path().display(),
            if media_enc.is_some() {
                "module\t\t\tsrtp.so\n"
            } else {
                ""
            },
        );
        std::fs::write(dir.path().join("config"), config).unwrap();
        std::fs::write(
            dir.path().join("accounts"),
            format!(
                "<sip:+14155550199@127.0.0.1>;regint=0;answermode=auto;audio_codecs=PCMU{}\n",
                media_enc
                    .map(|m| format!(";mediaenc={m}"))
                    .unwrap_or_default()
            ),
        )
        .unwrap();
        let child = Command::new(BARESIP)
            .arg("-f")
            .arg(dir.path())
            .args(["-t", "30"])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.path().join("baresip.log")).unwrap())
            .stderr(Stdio::null())
            .spawn()
            .expect("start baresip");
        let deadline = Instant::now() + Duration::from_secs(5);
        while std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            assert!(Instant::now() < deadline, "baresip did not start listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, dir }
    }
}

impl Baresip {
    fn uri(&self) -> String {
        format!("sip:127.0.0.1:{}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("baresip.log")).unwrap_or_default()
    }
}

impl Drop for Baresip {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// Frequency estimate from zero crossings.
fn frequency(x: &[i16], rate: f64) -> f64 {
    let crossings = x.windows(2).filter(|w| (w[0] < 0) != (w[1] < 0)).count();
    crossings as f64 / 2.0 / (x.len() as f64 / rate)
}

fn require_baresip() {
    init_tracing();
    assert!(
        Path::new(BARESIP).exists(),
        "baresip not installed: apt-get install -y baresip"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_answers_and_audio_flows_both_ways() {
    require_baresip();
    let callee = Baresip::start();
    let trunk = callee.uri();
    let tel = adapter(None, Duration::from_secs(5)).await;
    audio_flows_both_ways(&tel, &callee, request(&trunk, SECS(10), SECS(30))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baresip_behind_an_authenticating_proxy_answers_and_audio_flows_both_ways() {
    require_baresip();
    let callee = Baresip::start();
    let proxy = testkit::kamailio::Kamailio::start(&callee.uri(), "s3cret");
    let mut req = request(&proxy.uri(), SECS(10), SECS(30));
    req.trunk.username = Some("outdial".into());
    req.trunk.password = Some("s3cret".into());
    let tel = adapter(None, Duration::from_secs(5)).await;
    audio_flows_both_ways(&tel, &callee, req).await;
    assert_eq!(proxy.invites().len(), 1, "{}", proxy.log());
}

/// An adapter that trusts the test CA of `proxy` for TLS.
async fn tls_adapter(proxy: &testkit::kamailio::Kamailio) -> sip::SipTelephony {
    sip::SipTelephony::bind(sip::SipConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        rtp_ports: 0..=0,
        no_rtp_timeout: SECS(5),
        tls_ca: Some(proxy.ca()),
        ..sip::SipConfig::default()
    })
    .await
    .expect("bind adapter")
}

/// The trunk option `srtp: required` as the API allows it: over TLS (to Kamailio, which
/// authenticates us and forwards to baresip), with SDES keys in the SDP.
fn srtp_request(proxy: &testkit::kamailio::Kamailio) -> domain::telephony::DialRequest {
    let mut req = request(&proxy.sips_uri(), SECS(10), SECS(30));
    req.trunk.username = Some("outdial".into());
    req.trunk.password = Some("s3cret".into());
    req.trunk.transport = domain::telephony::Transport::Tls;
    req.trunk.srtp = domain::telephony::Srtp::Required;
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn srtp_over_tls_through_the_proxy_to_a_baresip_that_requires_it_audio_flows_both_ways() {
    require_baresip();
    let callee = Baresip::start_with(Some("srtp-mand"));
    let proxy = testkit::kamailio::Kamailio::start_tls(&callee.uri(), "s3cret");
    let tel = tls_adapter(&proxy).await;
    audio_flows_both_ways(&tel, &callee, srtp_request(&proxy)).await;
    assert_eq!(proxy.invites().len(), 1, "{}", proxy.log());
    let stats = tel.media_stats();
    // Every packet baresip sent passed authentication: one key each way, agreed in the SDP.
    assert!(stats.packets_received > 50, "{stats:?}");
    assert_eq!(stats.packets_refused, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baresip_that_requires_srtp_does_not_take_a_plain_call() {
    require_baresip();
    let callee = Baresip::start_with(Some("srtp-mand"));
    let tel = adapter(None, Duration::from_secs(5)).await;
    let end = call_until_ended(&tel, request(&callee.uri(), SECS(10), SECS(30))).await;
    assert_eq!(
        (end.status, end.failure_reason.as_deref()),
        (CallStatus::Failed, Some("488 Not Acceptable Here")),
        "{end:?}\n{}",
        callee.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_baresip_without_srtp_refusing_our_srtp_offer_is_telephony_failed() {
    require_baresip();
    let callee = Baresip::start();
    let proxy = testkit::kamailio::Kamailio::start_tls(&callee.uri(), "s3cret");
    let tel = tls_adapter(&proxy).await;
    let end = call_until_ended(&tel, srtp_request(&proxy)).await;
    assert_eq!(
        (end.status, end.failure_reason.as_deref()),
        (
            CallStatus::TelephonyFailed,
            Some("the trunk requires SRTP: the far end refused our RTP/SAVP offer (488 Not Acceptable Here)")
        ),
        "{end:?}\n{}",
        callee.log()
    );
}

/// Dials and waits for the end, whatever came before it.
async fn call_until_ended(
    tel: &sip::SipTelephony,
    req: domain::telephony::DialRequest,
) -> domain::telephony::CallEnd {
    let LiveCall {
        mut events,
        control,
    } = tel.dial(req).await.unwrap();
    let _control = control;
    loop {
        match tokio::time::timeout(SECS(20), events.recv()).await {
            Ok(Some(CallEvent::Ended(end))) => return end,
            Ok(Some(_)) => {}
            Ok(None) => panic!("no Ended"),
            Err(_) => panic!("the call did not end in 20 s"),
        }
    }
}

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// Calls `callee` with `req`, plays it a 1 kHz tone while listening to its 440 Hz sine, and
/// hangs up: both tones must have crossed.
async fn audio_flows_both_ways(
    tel: &sip::SipTelephony,
    callee: &Baresip,
    req: domain::telephony::DialRequest,
) {
    let LiveCall {
        mut events,
        control,
    } = tel.dial(req).await.unwrap();
    let mut media = loop {
        match events.recv().await.expect("events") {
            CallEvent::Answered { media, .. } => break media,
            CallEvent::Ended(end) => panic!(
                "not answered: {end:?}\n{}",
                std::fs::read_to_string(callee.dir.path().join("baresip.log")).unwrap_or_default()
            ),
            _ => {}
        }
    };
    // A 1 kHz tone for baresip to hear while we listen to its 440 Hz sine.
    for f in 0..100 {
        let frame: Vec<i16> = (0..320)
            .map(|i| {
                let t = (f * 320 + i) as f64 / 16_000.0;
                (6_000.0 * (2.0 * std::f64::consts::PI * 1_000.0 * t).sin()) as i16
            })
            .collect();
        media.outbound.send(frame).await.unwrap();
    }
    let mut heard = Vec::new();
    for _ in 0..100 {
        heard.extend(media.inbound.recv().await.expect("inbound audio"));
    }
    control.send(CallControl::Hangup).await.unwrap();
    let end = loop {
        if let CallEvent::Ended(end) = events.recv().await.expect("Ended") {
            break end;
        }
    };
    assert_eq!(end.status, CallStatus::Completed, "{end:?}");

    // The last second, well after any start-up silence.
    let tail = &heard[heard.len() - 16_000..];
    assert!(
        rms(tail) > 500.0,
        "baresip's sine not received: rms {}",
        rms(tail)
    );
    let f = frequency(tail, 16_000.0);
    assert!((400.0..480.0).contains(&f), "received {f} Hz, expected 440");

    // baresip's sndfile module dumped what it decoded from us.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let dump = std::fs::read_dir(callee.dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-dec.wav"));
    let recorded = dump.map(|p| std::fs::read(p).unwrap()).unwrap_or_default();
    let wav = media::wav::read(&recorded).unwrap_or_else(|e| {
        panic!(
            "baresip recording ({} bytes, {:?}): {e}\n{}",
            recorded.len(),
            &recorded[..recorded.len().min(48)],
            std::fs::read_to_string(callee.dir.path().join("baresip.log")).unwrap_or_default()
        )
    });
    let tail = &wav.samples[wav
        .samples
        .len()
        .saturating_sub(wav.sample_rate as usize / 2)..];
    let f = frequency(tail, f64::from(wav.sample_rate));
    assert!(
        (950.0..1050.0).contains(&f),
        "baresip heard {f} Hz, expected 1000"
    );
}
