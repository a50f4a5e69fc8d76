//! The adapter through Kamailio, an authenticating, record-routing proxy, to the callee: what a
//! carrier's edge does that SIPp alone does not (digest with qop from a proxy, Record-Route,
//! in-dialog requests both ways through the proxy). Needs Debian's `kamailio` and `sip-tester`.

mod common;

use common::*;
use domain::CallStatus;
use sip::registration::RegistrationState;
use std::time::Duration;
use testkit::kamailio::Kamailio;

const SECS: fn(u64) -> Duration = Duration::from_secs;

/// A trunk at the proxy, with its credentials.
fn through(proxy: &Kamailio, password: &str) -> domain::telephony::DialRequest {
    let mut req = request(&proxy.uri(), SECS(10), SECS(30));
    req.trunk.username = Some("outdial".into());
    req.trunk.password = Some(password.into());
    req
}

fn start() {
    init_tracing();
    assert!(
        sipp_available(),
        "sipp not installed: apt-get install -y sip-tester"
    );
}

#[tokio::test]
async fn a_call_is_authenticated_by_the_proxy_and_its_bye_follows_the_record_route() {
    start();
    let mut sipp = Sipp::uas("answer.xml", &["-rtp_echo"]);
    let proxy = Kamailio::start(&sipp.uri(), "s3cret");
    let tel = adapter(None, SECS(5)).await;
    let (kinds, end) = run_call(
        &tel,
        through(&proxy, "s3cret"),
        Some(Duration::from_millis(500)),
    )
    .await;
    assert_eq!(kinds, [Kind::Ringing, Kind::Answered]);
    assert_eq!(end.status, CallStatus::Completed, "{end:?}");
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
    // One INVITE was let through, and our BYE reached the callee by the proxy's route.
    assert_eq!(proxy.invites().len(), 1, "{}", proxy.log());
    let bye = sipp
        .received()
        .into_iter()
        .find(|m| m.starts_with("BYE "))
        .expect("the BYE reached the callee");
    assert!(
        header_line(&bye, "Via").is_some_and(|v| v.contains(&format!(":{}", proxy.port))),
        "{bye}"
    );
}

#[tokio::test]
async fn hold_and_resume_from_the_callee_cross_the_proxy() {
    start();
    let observer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rtp_port = observer.local_addr().unwrap().port().to_string();
    let mut sipp = Sipp::uas("hold.xml", &["-set", "rtpport", &rtp_port]);
    let proxy = Kamailio::start(&sipp.uri(), "s3cret");
    let tel = adapter(None, SECS(30)).await;
    let (kinds, end) = run_call(&tel, through(&proxy, "s3cret"), None).await;
    // SIPp's re-INVITEs and UPDATE took the proxy's route to us, and it checked our answers:
    // recvonly to the hold, inactive to inactive, PCMA sendrecv to the resume.
    assert_answered_and_completed(&kinds, &end, &mut sipp);
}

#[tokio::test]
async fn a_decline_through_the_proxy_is_busy_with_its_phrase() {
    start();
    let mut sipp = Sipp::uas("decline_via_proxy.xml", &[]);
    let proxy = Kamailio::start(&sipp.uri(), "s3cret");
    let tel = adapter(None, SECS(5)).await;
    let (_, end) = run_call(&tel, through(&proxy, "s3cret"), None).await;
    assert_eq!(end.status, CallStatus::Busy, "{end:?}");
    assert_eq!(end.failure_reason.as_deref(), Some("603 Decline"));
    assert_eq!(sipp.exit_code(SECS(5)), Some(0), "{}", sipp.errors());
}

#[tokio::test]
async fn a_wrong_trunk_password_is_a_telephony_failure_that_says_so() {
    start();
    let sipp = Sipp::uas("answer.xml", &["-rtp_echo"]);
    let proxy = Kamailio::start(&sipp.uri(), "s3cret");
    let tel = adapter(None, SECS(5)).await;
    let (kinds, end) = run_call(&tel, through(&proxy, "not-the-password"), None).await;
    assert!(kinds.is_empty(), "{kinds:?}");
    assert_eq!(end.status, CallStatus::TelephonyFailed, "{end:?}");
    let reason = end.failure_reason.unwrap_or_default();
    assert!(
        reason.starts_with("authentication with the trunk failed: 407"),
        "{reason}"
    );
    // The proxy let nothing through to the callee.
    assert!(proxy.invites().is_empty(), "{}", proxy.log());
    assert!(sipp.received().is_empty());
}

#[tokio::test]
async fn a_session_timer_is_refreshed_through_the_proxy() {
    start();
    let mut sipp = Sipp::uas("session_refresh_update.xml", &["-rtp_echo"]);
    let proxy = Kamailio::start(&sipp.uri(), "s3cret");
    let tel = adapter(None, SECS(5)).await;
    let (kinds, end) = run_call(&tel, through(&proxy, "s3cret"), None).await;
    assert_answered_and_completed(&kinds, &end, &mut sipp);
    // Both refreshes took the route set the proxy recorded.
    let updates: Vec<String> = sipp
        .received()
        .into_iter()
        .filter(|m| m.starts_with("UPDATE "))
        .collect();
    assert_eq!(updates.len(), 2, "{}", sipp.messages());
    for update in &updates {
        assert!(
            header_line(update, "Via").is_some_and(|v| v.contains(&format!(":{}", proxy.port))),
            "{update}"
        );
    }
}

/// The INVITE as the callee got it: the proxy's Via on top, ours below.
fn our_via(sipp: &Sipp) -> String {
    let invite = sipp
        .received()
        .into_iter()
        .find(|m| m.starts_with("INVITE "))
        .expect("the INVITE reached the callee");
    invite
        .lines()
        .filter(|l| l.starts_with("Via:"))
        .nth(1)
        .unwrap_or_else(|| panic!("no Via of ours: {invite}"))
        .to_string()
}

async fn adapter_trusting(ca: Option<std::path::PathBuf>) -> sip::SipTelephony {
    sip::SipTelephony::bind(sip::SipConfig {
        listen: std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        rtp_ports: 0..=0,
        no_rtp_timeout: SECS(30),
        tls_ca: ca,
        ..sip::SipConfig::default()
    })
    .await
    .expect("bind adapter")
}

#[tokio::test]
async fn over_tcp_the_call_and_the_callees_hold_travel_on_our_connection() {
    start();
    let observer = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rtp_port = observer.local_addr().unwrap().port().to_string();
    let mut sipp = Sipp::uas("hold.xml", &["-set", "rtpport", &rtp_port]);
    let proxy = Kamailio::start(&sipp.uri(), "s3cret");
    let tel = adapter(None, SECS(30)).await;
    let mut req = through(&proxy, "s3cret");
    req.trunk.transport = domain::telephony::Transport::Tcp;
    let (kinds, end) = run_call(&tel, req, None).await;
    assert_answered_and_completed(&kinds, &end, &mut sipp);
    let via = our_via(&sipp);
    assert!(via.contains("SIP/2.0/TCP"), "{via}");
}

#[tokio::test]
async fn over_tls_the_proxys_certificate_is_checked_against_the_configured_ca() {
    start();
    let mut sipp = Sipp::uas("session_refresh_update.xml", &["-rtp_echo"]);
    let proxy = Kamailio::start_tls(&sipp.uri(), "s3cret");
    let tel = adapter_trusting(Some(proxy.ca())).await;
    let mut req = through(&proxy, "s3cret");
    req.trunk.uri = proxy.sips_uri();
    req.trunk.transport = domain::telephony::Transport::Tls;
    let (kinds, end) = run_call(&tel, req, None).await;
    // The session was refreshed twice over the TLS connection, and the callee hung up.
    assert_answered_and_completed(&kinds, &end, &mut sipp);
    let via = our_via(&sipp);
    assert!(via.contains("SIP/2.0/TLS"), "{via}");
}

#[tokio::test]
async fn over_tls_a_proxy_certificate_from_an_untrusted_ca_is_refused() {
    start();
    let sipp = Sipp::uas("answer.xml", &["-rtp_echo"]);
    let proxy = Kamailio::start_tls(&sipp.uri(), "s3cret");
    // The system's authorities only: the test CA is not among them.
    let tel = adapter_trusting(None).await;
    let mut req = through(&proxy, "s3cret");
    req.trunk.uri = proxy.sips_uri();
    req.trunk.transport = domain::telephony::Transport::Tls;
    let (kinds, end) = run_call(&tel, req, None).await;
    assert!(kinds.is_empty(), "{kinds:?}");
    // A trunk we may not talk to is the trunk's failure, said at once and as it is.
    assert_eq!(end.status, CallStatus::TelephonyFailed, "{end:?}");
    let reason = end.failure_reason.unwrap_or_default();
    assert!(
        reason.starts_with("trunk unreachable: ")
            && reason.ends_with("over tls: I/O error: invalid peer certificate: UnknownIssuer"),
        "{reason}"
    );
    assert!(proxy.invites().is_empty(), "{}", proxy.log());
    assert!(sipp.received().is_empty());
}

#[tokio::test]
async fn a_registration_is_challenged_answered_and_renewed_before_it_expires() {
    start();
    let proxy = Kamailio::start("sip:127.0.0.1:9", "s3cret");
    let tel = adapter(None, SECS(5)).await;
    let trunk = through(&proxy, "s3cret").trunk;
    let mut registrar = tel.keep_registered(&trunk, SECS(4)).expect("registering");
    let first = tokio::time::timeout(SECS(10), registrar.changed())
        .await
        .expect("the registrar answered");
    assert_eq!(first.state, RegistrationState::Registered, "{first:?}");
    assert_eq!(first.detail.as_deref(), Some("200 OK"));
    let (at, until) = (first.updated_at.unwrap().0, first.expires_at.unwrap().0);
    assert!((3_900..=4_100).contains(&(until - at)), "{first:?}");
    // Renewed at three quarters of the 4 s granted: three REGISTERs within ~7 s, each before
    // the binding before it ran out.
    tokio::time::sleep(Duration::from_millis(7_000)).await;
    let seen = proxy.registrations();
    assert!(seen.len() >= 3, "{seen:?}\n{}", proxy.log());
    for pair in seen.windows(2) {
        assert!(pair[1].2 - pair[0].2 < 4.0, "{seen:?}");
    }
    let local = tel.local_addr().to_string();
    assert!(
        seen.iter()
            .all(|(contact, expires, _)| contact.contains(&local) && expires == "4"),
        "{seen:?}"
    );
    assert_eq!(registrar.status().state, RegistrationState::Registered);
    // Dropped: no more renewals.
    drop(registrar);
    let before = proxy.registrations().len();
    tokio::time::sleep(Duration::from_millis(4_000)).await;
    assert_eq!(proxy.registrations().len(), before);
}

#[tokio::test]
async fn a_registration_with_the_wrong_password_shows_the_refusal() {
    start();
    let proxy = Kamailio::start("sip:127.0.0.1:9", "s3cret");
    let tel = adapter(None, SECS(5)).await;
    let trunk = through(&proxy, "not-the-password").trunk;
    let mut registrar = tel.keep_registered(&trunk, SECS(60)).expect("registering");
    let status = tokio::time::timeout(SECS(10), registrar.changed())
        .await
        .expect("the registrar answered");
    assert_eq!(status.state, RegistrationState::Failed, "{status:?}");
    assert_eq!(status.detail.as_deref(), Some("401 Unauthorized"));
    assert_eq!(status.expires_at, None);
    assert!(proxy.registrations().is_empty());
}
