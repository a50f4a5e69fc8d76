//! The adapter against SIPp on loopback: every outcome the trunk can produce, real RTP both ways.
//! Needs `/usr/bin/sipp` (Debian package `sip-tester`).

mod common;

use common::*;
use domain::telephony::{CallControl, CallEvent, DialError, LiveCall, Telephony, TrunkTarget};
use domain::CallStatus;
use std::time::{Duration, Instant};

const SECS: fn(u64) -> Duration = Duration::from_secs;

macro_rules! require_sipp {
    () => {
        init_tracing();
        assert!(
            sipp_available(),
            "sipp not installed: apt-get install -y sip-tester"
        );
    };
}

#[tokio::test]
async fn answered_call_we_hang_up_is_completed() {
    require_sipp!();
    let mut sipp = Sipp::uas("answer.xml", &["-rtp_echo"]);
    let tel = adapter(None, SECS(5)).await;
    let (kinds, end) = run_call(
        &tel,
        request(&sipp.uri(), SECS(10), SECS(30)),
        Some(Duration::from_millis(500)),
    )
    .await;
    assert_eq!(kinds, [Kind::Ringing, Kind::Answered]);
    assert_eq!(end.status, CallStatus::Completed, "{end:?}");
    assert_eq!(end.failure_reason, None);
    assert!(end.answered_at.is_some());
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
}

#[tokio::test]
async fn max_duration_ends_the_call_with_our_bye() {
    require_sipp!();
    let mut sipp = Sipp::uas("answer.xml", &["-rtp_echo"]);
    let tel = adapter(None, SECS(5)).await;
    let started = Instant::now();
    let (kinds, end) = run_call(&tel, request(&sipp.uri(), SECS(10), SECS(1)), None).await;
    assert_eq!(kinds, [Kind::Ringing, Kind::Answered]);
    assert_eq!(end.status, CallStatus::Completed, "{end:?}");
    assert!(started.elapsed() < SECS(4));
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
}

#[tokio::test]
async fn callee_bye_after_session_refresh_is_completed() {
    require_sipp!();
    let mut sipp = Sipp::uas("callee_bye.xml", &["-rtp_echo"]);
    let tel = adapter(None, SECS(5)).await;
    let (kinds, end) = run_call(&tel, request(&sipp.uri(), SECS(10), SECS(30)), None).await;
    // SIPp checked that our 200 to its re-INVITE carried our SDP, and got 200 to its BYE.
    assert_answered_and_completed(&kinds, &end, &mut sipp);
}

#[tokio::test]
async fn invite_carries_our_call_id_allow_and_supported() {
    require_sipp!();
    let mut sipp = Sipp::uas("answer.xml", &["-rtp_echo"]);
    let tel = adapter(None, SECS(5)).await;
    let (_, end) = run_call(
        &tel,
        request(&sipp.uri(), SECS(10), SECS(30)),
        Some(Duration::from_millis(200)),
    )
    .await;
    assert_eq!(end.status, CallStatus::Completed, "{end:?}");
    let invite = invites(&sipp)
        .into_iter()
        .next()
        .expect("SIPp got our INVITE");
    let call_id = header_line(&invite, "Call-ID").expect("Call-ID");
    assert!(call_id.ends_with("@127.0.0.1"), "{call_id}");
    assert_eq!(
        header_line(&invite, "Allow"),
        Some("INVITE, ACK, CANCEL, BYE, OPTIONS, UPDATE, NOTIFY")
    );
    assert_eq!(header_line(&invite, "Supported"), Some("timer"), "{invite}");
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
}

#[tokio::test]
async fn a_session_timer_we_refresh_is_refreshed_by_update_before_it_expires() {
    require_sipp!();
    let mut sipp = Sipp::uas("session_refresh_update.xml", &["-rtp_echo"]);
    let tel = adapter(None, SECS(5)).await;
    let (kinds, end) = run_call(&tel, request(&sipp.uri(), SECS(10), SECS(30)), None).await;
    assert_eq!(kinds, [Kind::Answered]);
    // Two refreshes came within the 4 s interval (else SIPp failed the call on its timeout,
    // or got our BYE at the expiry); its OPTIONS inside the call was answered 200; then it
    // hung up.
    assert_eq!(end.status, CallStatus::Completed, "{end:?}");
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
    let updates = sipp
        .received()
        .into_iter()
        .filter(|m| m.starts_with("UPDATE "))
        .collect::<Vec<_>>();
    assert_eq!(updates.len(), 2, "{}", sipp.messages());
    for update in &updates {
        assert_eq!(
            header_line(update, "Session-Expires"),
            Some("4;refresher=uac")
        );
        assert_eq!(header_line(update, "Supported"), Some("timer"));
    }
}

#[tokio::test]
async fn a_far_end_without_update_gets_a_re_invite_refresh() {
    require_sipp!();
    let mut sipp = Sipp::uas("session_refresh_reinvite.xml", &["-rtp_echo"]);
    let tel = adapter(None, SECS(5)).await;
    let (kinds, end) = run_call(&tel, request(&sipp.uri(), SECS(10), SECS(30)), None).await;
    // SIPp got the re-INVITE with our SDP in time, and our ACK to its 200.
    assert_answered_and_completed(&kinds, &end, &mut sipp);
}

#[tokio::test]
async fn a_session_the_far_end_stops_refreshing_is_ended_at_its_expiry() {
    require_sipp!();
    let mut sipp = Sipp::uas("session_expires_uas.xml", &["-rtp_echo"]);
    let tel = adapter(None, SECS(5)).await;
    let (kinds, end) = run_call(&tel, request(&sipp.uri(), SECS(10), SECS(60)), None).await;
    assert_eq!(kinds, [Kind::Answered]);
    // SIPp checked our answer to its refresh (Session-Expires 6;refresher=uac, Require:
    // timer) and got our BYE.
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
    assert_eq!(end.status, CallStatus::Failed, "{end:?}");
    assert_eq!(
        end.failure_reason.as_deref(),
        Some("session expired: no refresh within its Session-Expires (RFC 4028)")
    );
    // The refresh 2 s in restarted the clock: 2 s + (6 s - 2 s kept back) after the answer,
    // not the 4 s the first interval alone would have given.
    let lasted = end.ended_at.0 - end.answered_at.expect("answered").0;
    assert!((5_500..9_000).contains(&lasted), "{lasted} ms");
}

/// One RTP packet of ours as the far end's socket saw it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    payload_type: u8,
    sequence: u16,
    timestamp: u32,
    marker: bool,
}

/// Collects the RTP we send to `socket` until `stop` fires.
async fn observe_rtp(
    socket: tokio::net::UdpSocket,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) -> Vec<Seen> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 2048];
    loop {
        tokio::select! {
            _ = &mut stop => return seen,
            r = socket.recv_from(&mut buf) => {
                let (len, _) = r.expect("RTP observer socket");
                if let Ok(p) = media::rtp::RtpPacket::parse(&buf[..len]) {
                    seen.push(Seen {
                        payload_type: p.payload_type,
                        sequence: p.sequence,
                        timestamp: p.timestamp,
                        marker: p.marker,
                    });
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hold_is_answered_per_rfc_3264_and_silences_our_stream_until_resume() {
    require_sipp!();
    let observer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rtp_port = observer.local_addr().unwrap().port().to_string();
    let mut sipp = Sipp::uas("hold.xml", &["-set", "rtpport", &rtp_port]);
    let (stop, stopped) = tokio::sync::oneshot::channel();
    let seen = tokio::spawn(observe_rtp(observer, stopped));
    // SIPp sends no RTP at all; the no-RTP watchdog must not end the call first.
    let tel = adapter(None, SECS(30)).await;
    let (kinds, end) = run_call(&tel, request(&sipp.uri(), SECS(10), SECS(30)), None).await;
    let _ = stop.send(());
    let seen = seen.await.unwrap();
    // SIPp checked our three answers: recvonly to sendonly, inactive to inactive (over UPDATE),
    // PCMA and sendrecv to the resume.
    assert_answered_and_completed(&kinds, &end, &mut sipp);

    let mut seen = seen;
    seen.sort_by_key(|p| p.sequence);
    let gaps: Vec<(Seen, Seen)> = seen
        .windows(2)
        .map(|w| (w[0], w[1]))
        .filter(|(a, b)| b.timestamp.wrapping_sub(a.timestamp) > 160)
        .collect();
    // The hold lasted 2.5 s of SIPp's pauses: one gap of at least 1 s (8000 samples) in our
    // stream, where we sent nothing, and only there.
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    let (before, after) = gaps[0];
    assert!(
        after.timestamp.wrapping_sub(before.timestamp) >= 8_000,
        "{before:?} {after:?}"
    );
    assert_eq!(after.sequence, before.sequence.wrapping_add(1));
    assert!(
        after.marker,
        "the first packet after the hold starts a talkspurt"
    );
    // PCMU until the hold, PCMA after the resume that asked for it.
    assert!(seen
        .iter()
        .take_while(|p| p.sequence != after.sequence)
        .all(|p| p.payload_type == 0));
    assert!(seen
        .iter()
        .skip_while(|p| p.sequence != after.sequence)
        .all(|p| p.payload_type == 8));
    assert!(
        seen.iter().filter(|p| p.payload_type == 8).count() > 10,
        "{}",
        seen.len()
    );
}

#[tokio::test]
async fn busy_486_keeps_the_phrase_as_sent() {
    require_sipp!();
    let mut sipp = Sipp::uas("busy.xml", &[]);
    let tel = adapter(None, SECS(5)).await;
    let (kinds, end) = run_call(&tel, request(&sipp.uri(), SECS(10), SECS(30)), None).await;
    assert_eq!(kinds, [Kind::Ringing]);
    assert_eq!(end.status, CallStatus::Busy);
    // Not re-capitalised to the RFC's "Busy Here".
    assert_eq!(end.failure_reason.as_deref(), Some("486 Busy here"));
    assert_eq!(end.answered_at, None);
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
}

#[tokio::test]
async fn decline_603_is_busy_and_its_ack_repeats_our_via() {
    require_sipp!();
    let mut sipp = Sipp::uas("decline_603.xml", &[]);
    let tel = adapter(None, SECS(5)).await;
    let (kinds, end) = run_call(&tel, request(&sipp.uri(), SECS(10), SECS(30)), None).await;
    assert!(!kinds.contains(&Kind::Answered), "{kinds:?}");
    assert_eq!(end.status, CallStatus::Busy, "{end:?}");
    assert_eq!(end.failure_reason.as_deref(), Some("603 Decline"));
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
    let received = sipp.received();
    let via_of = |method: &str| {
        received
            .iter()
            .find(|m| m.starts_with(method))
            .and_then(|m| header_line(m, "Via"))
            .map(str::to_string)
            .unwrap_or_else(|| panic!("no {method} in {}", sipp.messages()))
    };
    let (invite_via, ack_via) = (via_of("INVITE "), via_of("ACK "));
    assert!(!ack_via.contains("received"), "{ack_via}");
    assert_eq!(ack_via, invite_via);
}

async fn rejected(scenario: &str) -> (domain::telephony::CallEnd, Option<i32>) {
    let mut sipp = Sipp::uas(scenario, &[]);
    let tel = adapter(None, SECS(5)).await;
    let (kinds, end) = run_call(&tel, request(&sipp.uri(), SECS(10), SECS(30)), None).await;
    assert!(kinds.is_empty(), "{kinds:?}");
    (end, sipp.exit_code(SECS(5)))
}

#[tokio::test]
async fn service_unavailable_503_is_telephony_failed() {
    require_sipp!();
    let (end, code) = rejected("unavailable_503.xml").await;
    assert_eq!(end.status, CallStatus::TelephonyFailed);
    assert_eq!(
        end.failure_reason.as_deref(),
        Some("503 Service Unavailable")
    );
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn not_found_404_is_unreachable() {
    require_sipp!();
    let (end, code) = rejected("not_found_404.xml").await;
    assert_eq!(end.status, CallStatus::Unreachable);
    assert_eq!(end.failure_reason.as_deref(), Some("404 Not Found"));
    assert_eq!(code, Some(0));
}

#[tokio::test]
async fn ring_timeout_sends_cancel_and_is_no_answer() {
    require_sipp!();
    let mut sipp = Sipp::uas("no_answer.xml", &[]);
    let tel = adapter(None, SECS(5)).await;
    let started = Instant::now();
    let (kinds, end) = run_call(&tel, request(&sipp.uri(), SECS(2), SECS(30)), None).await;
    assert_eq!(kinds, [Kind::Ringing]);
    assert_eq!(end.status, CallStatus::NoAnswer, "{end:?}");
    assert!(end.failure_reason.unwrap().contains("CANCEL"));
    let took = started.elapsed();
    assert!(took >= SECS(2) && took < SECS(5), "{took:?}");
    // SIPp saw our CANCEL, answered it and got the ACK for its 487.
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
}

#[tokio::test]
async fn hangup_before_answer_cancels() {
    require_sipp!();
    let mut sipp = Sipp::uas("no_answer.xml", &[]);
    let tel = adapter(None, SECS(5)).await;
    let LiveCall {
        mut events,
        control,
    } = tel
        .dial(request(&sipp.uri(), SECS(20), SECS(30)))
        .await
        .unwrap();
    assert!(matches!(events.recv().await, Some(CallEvent::Ringing)));
    control.send(CallControl::Hangup).await.unwrap();
    let Some(CallEvent::Ended(end)) = events.recv().await else {
        panic!("expected Ended");
    };
    assert_eq!(end.status, CallStatus::Failed);
    assert!(end.failure_reason.unwrap().contains("CANCEL"));
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
}

#[tokio::test]
async fn unreachable_trunk_fails_fast() {
    init_tracing();
    let tel = adapter(None, SECS(5)).await;
    let port = free_udp_port();
    let started = Instant::now();
    let (kinds, end) = run_call(
        &tel,
        request(&format!("sip:127.0.0.1:{port}"), SECS(30), SECS(30)),
        None,
    )
    .await;
    assert!(kinds.is_empty());
    assert_eq!(end.status, CallStatus::TelephonyFailed);
    let reason = end.failure_reason.unwrap();
    assert!(reason.contains("trunk unreachable"), "{reason}");
    assert!(started.elapsed() < SECS(5), "{:?}", started.elapsed());
}

#[tokio::test]
async fn dns_failure_is_telephony_failed() {
    init_tracing();
    let tel = adapter(None, SECS(5)).await;
    let (_, end) = run_call(
        &tel,
        request("sip:no-such-host.invalid:5060", SECS(30), SECS(30)),
        None,
    )
    .await;
    assert_eq!(end.status, CallStatus::TelephonyFailed);
    assert!(end.failure_reason.unwrap().contains("DNS"));
}

#[tokio::test]
async fn invalid_trunk_uri_is_refused_before_dialling() {
    init_tracing();
    let tel = adapter(None, SECS(5)).await;
    let err = tel
        .dial(request("http://example.com", SECS(30), SECS(30)))
        .await
        .unwrap_err();
    assert!(matches!(err, domain::telephony::DialError::Invalid(_)));
}

async fn with_auth(
    scenario: &str,
    password: &str,
) -> (Vec<Kind>, domain::telephony::CallEnd, Sipp) {
    let sipp = Sipp::uas(scenario, &["-rtp_echo"]);
    let tel = adapter(None, SECS(5)).await;
    let mut req = request(&sipp.uri(), SECS(10), SECS(30));
    req.trunk.username = Some("alice".into());
    req.trunk.password = Some(password.into());
    let (kinds, end) = run_call(&tel, req, Some(Duration::from_millis(300))).await;
    (kinds, end, sipp)
}

#[tokio::test]
async fn digest_401_challenge_then_answer() {
    require_sipp!();
    let (kinds, end, mut sipp) = with_auth("auth_401.xml", "secret").await;
    assert_eq!(kinds, [Kind::Answered]);
    assert_eq!(end.status, CallStatus::Completed, "{end:?}");
    assert!(sipp.messages().contains("Authorization: Digest"));
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
}

#[tokio::test]
async fn digest_407_challenge_then_answer() {
    require_sipp!();
    let (kinds, end, mut sipp) = with_auth("auth_407.xml", "secret").await;
    assert_eq!(kinds, [Kind::Answered], "{}", sipp.messages());
    assert_eq!(end.status, CallStatus::Completed, "{end:?}");
    assert!(
        proxy_digest_is_valid(&sipp.messages(), "alice", "secret"),
        "{}",
        sipp.messages()
    );
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
}

/// Lines of our requests, as SIPp received them, that we never wrote.
fn injected_lines(sipp: &Sipp) -> Vec<String> {
    sipp.received()
        .iter()
        .flat_map(|m| header_lines(m))
        .filter(|l| l.to_ascii_lowercase().starts_with("x-injected"))
        .map(str::to_string)
        .collect()
}

fn invites(sipp: &Sipp) -> Vec<String> {
    sipp.received()
        .into_iter()
        .filter(|m| m.starts_with("INVITE "))
        .collect()
}

#[tokio::test]
async fn crlf_in_trunk_username_is_refused_before_any_invite() {
    require_sipp!();
    let mut sipp = Sipp::uas("auth_407.xml", &["-rtp_echo"]);
    let tel = adapter(None, SECS(5)).await;
    let mut req = request(&sipp.uri(), SECS(10), SECS(30));
    req.trunk.username = Some("alice\r\nX-Injected: 1".into());
    req.trunk.password = Some("secret".into());
    let Err(DialError::Invalid(reason)) = tel.dial(req).await.map(|_| ()) else {
        panic!("a username with CR LF was dialled");
    };
    assert_eq!(
        reason,
        "not dialled: trunk username cannot go into a SIP header: control character U+000D at byte 5"
    );

    // The same trunk with a clean username: the trace holds that call's two INVITEs (the
    // challenged one and the retry) and nothing of the refused call.
    let mut req = request(&sipp.uri(), SECS(10), SECS(30));
    req.trunk.username = Some("alice".into());
    req.trunk.password = Some("secret".into());
    let (_, end) = run_call(&tel, req, Some(Duration::from_millis(300))).await;
    assert_eq!(end.status, CallStatus::Completed, "{end:?}");
    assert_eq!(invites(&sipp).len(), 2, "{}", sipp.messages());
    assert_eq!(injected_lines(&sipp), Vec::<String>::new());
    assert!(!sipp.messages().contains("X-Injected"));
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
}

#[tokio::test]
async fn challenge_realm_with_a_control_character_is_not_echoed_and_fails_the_call() {
    require_sipp!();
    let sipp = Sipp::uas("auth_407_ctl_realm.xml", &[]);
    let tel = adapter(None, SECS(5)).await;
    let mut req = request(&sipp.uri(), SECS(10), SECS(30));
    req.trunk.username = Some("alice".into());
    req.trunk.password = Some("secret".into());
    let (kinds, end) = run_call(&tel, req, None).await;
    // SIPp really sent the control character, else this test would prove nothing. Its trace
    // file is written just after the send, so it is waited for (generously), not caught early.
    let deadline = std::time::Instant::now() + SECS(10);
    let challenge = loop {
        let sent = sipp
            .sent()
            .into_iter()
            .find(|m| m.starts_with("SIP/2.0 407"));
        match sent {
            Some(m) => break m,
            None if std::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            None => panic!("SIPp sent no 407: {}", sipp.messages()),
        }
    };
    assert!(
        challenge.contains("outdial.test\u{b}X-Injected: 1"),
        "{challenge:?}"
    );
    assert!(kinds.is_empty(), "{kinds:?}");
    assert_eq!(end.status, CallStatus::Failed, "{end:?}");
    let reason = end.failure_reason.unwrap_or_default();
    assert!(
        reason.starts_with(
            "not sent: Proxy-Authenticate cannot go into a SIP header: control character U+000B"
        ),
        "{reason}"
    );
    assert_eq!(invites(&sipp).len(), 1, "{}", sipp.messages());
    assert_eq!(injected_lines(&sipp), Vec::<String>::new());
}

#[tokio::test]
async fn second_challenge_after_our_digest_is_an_authentication_failure() {
    require_sipp!();
    let mut sipp = Sipp::uas("auth_407_rechallenge.xml", &[]);
    let tel = adapter(None, SECS(5)).await;
    let mut req = request(&sipp.uri(), SECS(10), SECS(30));
    req.trunk.username = Some("alice".into());
    req.trunk.password = Some("wrong".into());
    let (kinds, end) = run_call(&tel, req, None).await;
    assert!(kinds.is_empty(), "{kinds:?}");
    assert_eq!(end.status, CallStatus::TelephonyFailed, "{end:?}");
    assert_eq!(
        end.failure_reason.as_deref(),
        Some("authentication with the trunk failed: 407 Proxy Authentication Required (check the trunk's username and password)")
    );
    // Both 407s were ACKed and no third INVITE was tried.
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
    assert_eq!(invites(&sipp).len(), 2, "{}", sipp.messages());
}

#[tokio::test]
async fn challenge_without_credentials_says_the_trunk_needs_them() {
    require_sipp!();
    let sipp = Sipp::uas("auth_407.xml", &[]);
    let tel = adapter(None, SECS(5)).await;
    let (_, end) = run_call(&tel, request(&sipp.uri(), SECS(10), SECS(30)), None).await;
    assert_eq!(end.status, CallStatus::TelephonyFailed, "{end:?}");
    assert_eq!(
        end.failure_reason.as_deref(),
        Some("the trunk requires authentication and has no username: 407 Proxy Authentication Required")
    );
}

#[tokio::test]
async fn wrong_password_is_refused_by_the_trunk() {
    require_sipp!();
    let (kinds, end, _sipp) = with_auth("auth_401.xml", "wrong").await;
    assert!(kinds.is_empty());
    assert_eq!(end.status, CallStatus::TelephonyFailed);
    assert_eq!(end.failure_reason.as_deref(), Some("403 Forbidden"));
}

#[tokio::test]
async fn early_media_183_is_received_and_recorded() {
    require_sipp!();
    let mut sipp = Sipp::uas("early_media.xml", &[]);
    let rec = tempfile::tempdir().unwrap();
    let tel = adapter(Some(rec.path()), SECS(5)).await;
    let (kinds, end) = run_call(
        &tel,
        request(&sipp.uri(), SECS(10), SECS(30)),
        Some(Duration::from_millis(200)),
    )
    .await;
    assert_eq!(kinds, [Kind::EarlyMedia, Kind::Answered]);
    assert_eq!(end.status, CallStatus::Completed, "{end:?}");
    let wav = media::wav::read(&std::fs::read(end.recording.unwrap()).unwrap()).unwrap();
    // The announcement played during the 2 s before the answer.
    let early = &wav.samples[..(wav.samples.len().min(16_000))];
    assert!(rms(early) > 300.0, "early media silent: rms {}", rms(early));
    assert!(tel.media_stats().packets_received > 50);
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
}

#[tokio::test]
async fn dtmf_from_the_callee_becomes_events() {
    require_sipp!();
    let mut sipp = Sipp::uas("dtmf.xml", &[]);
    let tel = adapter(None, SECS(5)).await;
    let LiveCall {
        mut events,
        control,
    } = tel
        .dial(request(&sipp.uri(), SECS(10), SECS(30)))
        .await
        .unwrap();
    let mut digits = Vec::new();
    let mut _media = None;
    let deadline = tokio::time::Instant::now() + SECS(8);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await {
        match ev {
            CallEvent::Answered { media, .. } => _media = Some(media),
            CallEvent::Dtmf(d) => {
                digits.push(d);
                break;
            }
            CallEvent::Ended(end) => panic!("ended early: {end:?}"),
            _ => {}
        }
    }
    assert_eq!(digits, ['1']);
    control.send(CallControl::Hangup).await.unwrap();
    while let Some(ev) = events.recv().await {
        if let CallEvent::Ended(end) = ev {
            assert_eq!(end.status, CallStatus::Completed);
        }
    }
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
}

#[tokio::test]
async fn dtmf_we_send_comes_back_through_the_echo() {
    require_sipp!();
    let _sipp = Sipp::uas("answer.xml", &["-rtp_echo"]);
    let tel = adapter(None, SECS(5)).await;
    let LiveCall {
        mut events,
        control,
    } = tel
        .dial(request(&_sipp.uri(), SECS(10), SECS(30)))
        .await
        .unwrap();
    let mut digits = Vec::new();
    let mut _media = None;
    let deadline = tokio::time::Instant::now() + SECS(8);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await {
        match ev {
            CallEvent::Answered { media, .. } => {
                _media = Some(media);
                for d in ['5', '#', 'A'] {
                    control.send(CallControl::SendDtmf(d)).await.unwrap();
                }
            }
            CallEvent::Dtmf(d) => {
                digits.push(d);
                if digits.len() == 3 {
                    break;
                }
            }
            CallEvent::Ended(end) => panic!("ended early: {end:?}"),
            _ => {}
        }
    }
    assert_eq!(digits, ['5', '#', 'A']);
    control.send(CallControl::Hangup).await.unwrap();
}

#[tokio::test]
async fn no_rtp_after_answer_is_socket_failure() {
    require_sipp!();
    // Without -rtp_echo SIPp sends no media at all.
    let _sipp = Sipp::uas("answer.xml", &[]);
    let tel = adapter(None, SECS(1)).await;
    let (kinds, end) = run_call(&tel, request(&_sipp.uri(), SECS(10), SECS(30)), None).await;
    assert_eq!(kinds, [Kind::Ringing, Kind::Answered]);
    assert_eq!(end.status, CallStatus::SocketFailure);
    assert!(end.failure_reason.unwrap().contains("no RTP"));
}

#[tokio::test]
async fn options_probe_reports_the_trunk() {
    require_sipp!();
    let sipp = Sipp::uas("answer.xml", &["-aa"]);
    let tel = adapter(None, SECS(5)).await;
    let trunk = TrunkTarget {
        uri: sipp.uri(),
        username: None,
        password: None,
        transport: domain::telephony::Transport::Udp,
        register: false,
        srtp: domain::telephony::Srtp::Off,
    };
    let reply = tel.options(&trunk).await.expect("OPTIONS answered");
    assert_eq!(reply.code, 200);
    let options = sipp
        .received()
        .into_iter()
        .find(|m| m.starts_with("OPTIONS "))
        .expect("SIPp got our OPTIONS");
    let call_id = header_line(&options, "Call-ID").expect("Call-ID");
    assert!(call_id.ends_with("@127.0.0.1"), "{call_id}");

    let dead = TrunkTarget {
        uri: format!("sip:127.0.0.1:{}", free_udp_port()),
        username: None,
        password: None,
        transport: domain::telephony::Transport::Udp,
        register: false,
        srtp: domain::telephony::Srtp::Off,
    };
    let started = Instant::now();
    assert!(matches!(
        tel.options(&dead).await,
        Err(sip::SipError::Unreachable(_))
    ));
    assert!(started.elapsed() < SECS(2));
}

/// Recomputes the RFC 2617 digest (no qop) of the Proxy-Authorization SIPp logged.
fn proxy_digest_is_valid(log: &str, user: &str, password: &str) -> bool {
    use md5::{Digest, Md5};
    let hex = |s: String| {
        Md5::digest(s.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    };
    let Some(line) = log
        .lines()
        .find(|l| l.starts_with("Proxy-Authorization: Digest"))
    else {
        return false;
    };
    let param = |name: &str| {
        let start = line.find(&format!("{name}=\""))? + name.len() + 2;
        let end = line[start..].find('"')? + start;
        Some(line[start..end].to_string())
    };
    let (Some(realm), Some(nonce), Some(uri), Some(response), Some(username)) = (
        param("realm"),
        param("nonce"),
        param("uri"),
        param("response"),
        param("username"),
    ) else {
        return false;
    };
    let ha1 = hex(format!("{user}:{realm}:{password}"));
    let ha2 = hex(format!("INVITE:{uri}"));
    username == user && hex(format!("{ha1}:{nonce}:{ha2}")) == response
}

fn chirp(seconds: f64) -> Vec<i16> {
    let rate = 16_000.0;
    let (f0, f1) = (300.0, 3_000.0);
    let n = (seconds * rate) as usize;
    (0..n)
        .map(|i| {
            let t = i as f64 / rate;
            let phase = 2.0 * std::f64::consts::PI * (f0 * t + (f1 - f0) * t * t / (2.0 * seconds));
            (8_000.0 * phase.sin()) as i16
        })
        .collect()
}

fn rms(x: &[i16]) -> f64 {
    (x.iter().map(|&s| f64::from(s).powi(2)).sum::<f64>() / x.len().max(1) as f64).sqrt()
}

/// Best normalised cross-correlation of `probe` within `signal`, over `lags`.
fn best_correlation(probe: &[i16], signal: &[i16], lags: std::ops::Range<usize>) -> (usize, f64) {
    let p: Vec<f64> = probe.iter().map(|&s| f64::from(s)).collect();
    let pe = p.iter().map(|v| v * v).sum::<f64>();
    let mut best = (0, 0.0);
    for lag in lags {
        let Some(window) = signal.get(lag..lag + p.len()) else {
            break;
        };
        let (mut dot, mut we) = (0.0, 0.0);
        for (a, &b) in p.iter().zip(window) {
            let b = f64::from(b);
            dot += a * b;
            we += b * b;
        }
        let c = dot / (pe * we).sqrt().max(1.0);
        if c > best.1 {
            best = (lag, c);
        }
    }
    best
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audio_round_trips_through_rtp_echo_and_is_recorded() {
    require_sipp!();
    let mut sipp = Sipp::uas("answer.xml", &["-rtp_echo"]);
    let rec = tempfile::tempdir().unwrap();
    let tel = adapter(Some(rec.path()), SECS(5)).await;
    let req = request(&sipp.uri(), SECS(10), SECS(30));
    let conversation = req.conversation_id;
    let LiveCall {
        mut events,
        control,
    } = tel.dial(req).await.unwrap();
    let mut media = loop {
        match events.recv().await.expect("call events") {
            CallEvent::Answered { media, .. } => break media,
            CallEvent::Ended(end) => panic!("not answered: {end:?}"),
            _ => {}
        }
    };

    let sent = chirp(2.0);
    for frame in sent.chunks(domain::telephony::FRAME_SAMPLES) {
        media.outbound.send(frame.to_vec()).await.unwrap();
    }
    let mut received: Vec<i16> = Vec::new();
    let mut frames = 0;
    // 3 s of inbound audio: the 2 s chirp plus its echo delay.
    while frames < 150 {
        let frame = media.inbound.recv().await.expect("inbound audio");
        assert_eq!(frame.len(), domain::telephony::FRAME_SAMPLES);
        received.extend_from_slice(&frame);
        frames += 1;
    }
    control.send(CallControl::Hangup).await.unwrap();
    let end = loop {
        if let CallEvent::Ended(end) = events.recv().await.expect("Ended") {
            break end;
        }
    };
    assert_eq!(end.status, CallStatus::Completed);

    // Compare the middle half second of the chirp with what came back.
    let probe = &sent[12_000..20_000];
    let (lag, corr) = best_correlation(probe, &received, 12_000..20_000);
    let delay_ms = (lag as f64 - 12_000.0) / 16.0;
    assert!(corr > 0.9, "echo correlation {corr:.3} at {delay_ms} ms");
    assert!((0.0..400.0).contains(&delay_ms), "echo delay {delay_ms} ms");
    let gain = rms(&received[lag..lag + probe.len()]) / rms(probe);
    assert!((0.7..1.3).contains(&gain), "echo gain {gain:.2}");

    let path = end.recording.expect("recording");
    assert_eq!(path, rec.path().join(format!("{conversation}.wav")));
    let wav = media::wav::read(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(wav.sample_rate, 8_000);
    let seconds = wav.samples.len() as f64 / 8_000.0;
    assert!((2.8..4.5).contains(&seconds), "recording lasts {seconds} s");
    assert!(rms(&wav.samples) > 1_000.0, "recording silent");
    let stats = tel.media_stats();
    assert!(
        stats.packets_sent >= 150 && stats.packets_received >= 140,
        "{stats:?}"
    );
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
}

fn srtp_request(uri: &str) -> domain::telephony::DialRequest {
    let mut req = request(uri, SECS(10), SECS(30));
    // The sip crate takes the option as given; the API is what keeps it to TLS trunks.
    req.trunk.srtp = domain::telephony::Srtp::Required;
    req
}

/// `(tag, suite, key)` of each `a=crypto` line of a SIP message.
fn crypto_lines(message: &str) -> Vec<(String, String, String)> {
    message
        .lines()
        .filter_map(|l| l.trim().strip_prefix("a=crypto:"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let key = f[2].trim_start_matches("inline:").to_string();
            (f[0].to_string(), f[1].to_string(), key)
        })
        .collect()
}

#[tokio::test]
async fn an_srtp_trunk_hangs_up_on_a_plain_answer_and_says_why() {
    require_sipp!();
    // answer.xml answers RTP/AVP whatever the offer.
    let mut sipp = Sipp::uas("answer.xml", &[]);
    let tel = adapter(None, SECS(5)).await;
    let (kinds, end) = run_call(&tel, srtp_request(&sipp.uri()), None).await;
    assert_eq!(kinds, [Kind::Ringing], "never reported answered");
    assert_eq!(end.status, CallStatus::TelephonyFailed, "{end:?}");
    assert_eq!(
        end.failure_reason.as_deref(),
        Some("the trunk requires SRTP: the far end answered plain RTP (RTP/AVP), not RTP/SAVP")
    );
    // Hung up at once with a BYE (the scenario waits for it).
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
    let invite = &sipp.received()[0];
    assert!(
        invite.contains("m=audio ") && invite.contains(" RTP/SAVP 0 8 101"),
        "{invite}"
    );
    let offered = crypto_lines(invite);
    assert_eq!(offered.len(), 2, "{invite}");
    assert!(offered.iter().all(|(_, _, key)| key.len() == 40));
}

#[tokio::test]
async fn srtp_re_offers_keep_our_key_re_key_on_a_new_suite_and_plain_is_refused() {
    require_sipp!();
    let mut sipp = Sipp::uas("srtp_reoffer.xml", &[]);
    // SIPp sends no media: the no-RTP watchdog must not end the call first.
    let tel = adapter(None, SECS(30)).await;
    let (kinds, end) = run_call(&tel, srtp_request(&sipp.uri()), None).await;
    // SIPp checked each answer's profile, direction and crypto tag, and got its 488.
    assert_answered_and_completed(&kinds, &end, &mut sipp);
    let received = sipp.received();
    let ours = |i: usize| crypto_lines(&received[i]);
    let offered = ours(0);
    let answers: Vec<&String> = received
        .iter()
        .filter(|m| m.starts_with("SIP/2.0 200") && m.contains("application/sdp"))
        .collect();
    assert_eq!(answers.len(), 2, "{received:#?}");
    let hold = crypto_lines(answers[0]);
    let rekey = crypto_lines(answers[1]);
    // The hold repeated the far end's line: our key and tag stay as agreed.
    assert_eq!(hold, vec![offered[0].clone()]);
    // A new suite under tag 2: a fresh key of ours, for that suite.
    assert_eq!(rekey.len(), 1);
    assert_eq!(
        (rekey[0].0.as_str(), rekey[0].1.as_str()),
        ("2", "AES_CM_128_HMAC_SHA1_32")
    );
    assert!(
        offered.iter().all(|o| o.2 != rekey[0].2),
        "{offered:?} {rekey:?}"
    );
    assert!(received.iter().any(|m| m.starts_with("SIP/2.0 488")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_srtp_refresh_re_offers_the_line_in_use_and_follows_the_answers_new_key() {
    require_sipp!();
    let mut sipp = Sipp::uas("srtp_refresh_rekey.xml", &["-rtp_echo"]);
    // Until the refresh every echoed packet fails authentication: no "no RTP" hang-up meanwhile.
    let tel = adapter(None, SECS(30)).await;
    let (kinds, end) = run_call(&tel, srtp_request(&sipp.uri()), None).await;
    assert_answered_and_completed(&kinds, &end, &mut sipp);
    let received = sipp.received();
    let invites: Vec<&String> = received
        .iter()
        .filter(|m| m.starts_with("INVITE "))
        .collect();
    assert_eq!(invites.len(), 2, "{received:#?}");
    let offered = crypto_lines(invites[0]);
    assert_eq!(crypto_lines(invites[1]), vec![offered[0].clone()]);
    let stats = tel.media_stats();
    // The echo under the old far-end key was refused; under the re-keyed one it was heard.
    assert!(stats.packets_refused > 20, "{stats:?}");
    assert!(stats.packets_received > 10, "{stats:?}");
}
