//! How a SIP call attempt ended, reduced to outdial's terminal statuses. Kept pure so the table
//! below is the single place that decides what a SIP code means to the rest of outdial.

use domain::CallStatus;
use std::time::Duration;

/// Everything that can end a call, as the call task observed it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Termination {
    /// A final non-2xx response to our INVITE (not one provoked by our own CANCEL), with its
    /// `Retry-After` if it had one.
    Rejected {
        code: u16,
        reason: String,
        retry_after: Option<Duration>,
    },
    /// The trunk challenged (401/407) and did not accept what we answered, or we had no
    /// credentials to answer with.
    AuthFailed {
        code: u16,
        reason: String,
        had_credentials: bool,
    },
    /// We sent CANCEL because `ring_timeout` passed.
    RingTimeout { after: Duration },
    /// Our owner asked to hang up before the callee answered.
    HungUpBeforeAnswer,
    /// The INVITE transaction timed out (Timer B): nothing ever answered.
    NoResponse,
    /// The trunk could not be reached at all: DNS failure, ICMP unreachable, socket error.
    Transport(String),
    /// Answered, but no RTP arrived within the configured time.
    NoRtp { after: Duration },
    /// Answered, then ended by either side's BYE or by `max_duration`.
    Completed,
    /// A header value would have broken the message (a control character in it): the request
    /// carrying it was not sent, or the far end's challenge could not be answered.
    UnsafeHeader(crate::header::HeaderError),
    /// The trunk requires SRTP and the far end's answer offered none we can use: the call
    /// was hung up at once (no plain-RTP fallback).
    Srtp(String),
    /// Anything else (a malformed answer, a local failure); the text says what.
    Other(String),
}

/// Maps a termination to the status and `failure_reason` of [`domain::telephony::CallEnd`].
pub fn classify(t: &Termination) -> (CallStatus, Option<String>) {
    match t {
        Termination::Completed => (CallStatus::Completed, None),
        Termination::Rejected { code, reason, .. } => {
            let status = match code {
                // 603 Decline is the callee refusing the call, like a busy line.
                486 | 600 | 603 => CallStatus::Busy,
                408 | 480 => CallStatus::NoAnswer,
                404 | 410 | 484 | 604 => CallStatus::Unreachable,
                403 | 500..=599 => CallStatus::TelephonyFailed,
                _ => CallStatus::Failed,
            };
            (status, Some(format!("{code} {reason}")))
        }
        Termination::AuthFailed {
            code,
            reason,
            had_credentials: true,
        } => (
            CallStatus::TelephonyFailed,
            Some(format!(
                "authentication with the trunk failed: {code} {reason} (check the trunk's username and password)"
            )),
        ),
        Termination::AuthFailed {
            code,
            reason,
            had_credentials: false,
        } => (
            CallStatus::TelephonyFailed,
            Some(format!(
                "the trunk requires authentication and has no username: {code} {reason}"
            )),
        ),
        Termination::RingTimeout { after } => (
            CallStatus::NoAnswer,
            Some(format!(
                "no answer within {} s (CANCEL, 487 Request Terminated)",
                after.as_secs()
            )),
        ),
        Termination::HungUpBeforeAnswer => (
            CallStatus::Failed,
            Some("hung up before answer (CANCEL)".to_string()),
        ),
        Termination::NoResponse => (
            CallStatus::TelephonyFailed,
            Some("trunk unreachable: no response to INVITE (408 Request Timeout)".to_string()),
        ),
        Termination::Transport(e) => (
            CallStatus::TelephonyFailed,
            Some(format!("trunk unreachable: {e}")),
        ),
        Termination::NoRtp { after } => (
            CallStatus::SocketFailure,
            Some(format!(
                "no RTP received within {} s of answer",
                after.as_secs()
            )),
        ),
        Termination::UnsafeHeader(e) => (CallStatus::Failed, Some(format!("not sent: {e}"))),
        Termination::Srtp(e) => (
            CallStatus::TelephonyFailed,
            Some(format!("the trunk requires SRTP: {e}")),
        ),
        Termination::Other(e) => (CallStatus::Failed, Some(e.clone())),
    }
}

/// How long the trunk asked to be sent nothing new ([`domain::telephony::CallEnd::retry_after`]):
/// a 503's `Retry-After` only. On a 503 it speaks of the server that answered, the trunk; on
/// the callee's answers (486, 480, 600, 603) it speaks of the callee, whose next try is the
/// retry policy's business.
pub fn trunk_hold(t: &Termination) -> Option<Duration> {
    match t {
        Termination::Rejected {
            code: 503,
            retry_after,
            ..
        } => retry_after.filter(|d| !d.is_zero()),
        _ => None,
    }
}

/// A `Retry-After` header value in seconds (RFC 3261 §20.33: `delta-seconds [comment]
/// *(;params)`), e.g. `120`, `18000;duration=3600`, `120 (I'm in a meeting)`.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let digits: &str = value
        .trim_start()
        .split(|c: char| !c.is_ascii_digit())
        .next()?;
    digits
        .parse::<u64>()
        .ok()
        .map(|s| Duration::from_secs(s.min(u64::from(u32::MAX))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rejected(code: u16, reason: &str) -> (CallStatus, Option<String>) {
        classify(&Termination::Rejected {
            code,
            reason: reason.to_string(),
            retry_after: None,
        })
    }

    #[test]
    fn only_a_503s_retry_after_holds_the_trunk() {
        let with = |code: u16, after: Option<u64>| Termination::Rejected {
            code,
            reason: "x".into(),
            retry_after: after.map(Duration::from_secs),
        };
        assert_eq!(
            trunk_hold(&with(503, Some(3))),
            Some(Duration::from_secs(3))
        );
        assert_eq!(trunk_hold(&with(503, Some(0))), None);
        assert_eq!(trunk_hold(&with(503, None)), None);
        assert_eq!(trunk_hold(&with(486, Some(60))), None);
        assert_eq!(trunk_hold(&with(480, Some(60))), None);
        assert_eq!(trunk_hold(&Termination::NoResponse), None);
        // The call itself is settled as any 503 is.
        assert_eq!(
            classify(&with(503, Some(3))),
            (CallStatus::TelephonyFailed, Some("503 x".to_string()))
        );
    }

    #[test]
    fn retry_after_values() {
        let secs = |v: &str| parse_retry_after(v).map(|d| d.as_secs());
        assert_eq!(secs("3"), Some(3));
        assert_eq!(secs(" 120 (I'm in a meeting)"), Some(120));
        assert_eq!(secs("18000;duration=3600"), Some(18000));
        assert_eq!(secs(""), None);
        assert_eq!(secs("soon"), None);
        assert_eq!(secs("-5"), None);
        assert_eq!(secs("99999999999999999999999"), None);
    }

    #[test]
    fn sip_codes_map_to_statuses_with_code_and_phrase() {
        let table = [
            (486, "Busy Here", CallStatus::Busy),
            (600, "Busy Everywhere", CallStatus::Busy),
            (408, "Request Timeout", CallStatus::NoAnswer),
            (480, "Temporarily Unavailable", CallStatus::NoAnswer),
            (404, "Not Found", CallStatus::Unreachable),
            (410, "Gone", CallStatus::Unreachable),
            (484, "Address Incomplete", CallStatus::Unreachable),
            (604, "Does Not Exist Anywhere", CallStatus::Unreachable),
            (403, "Forbidden", CallStatus::TelephonyFailed),
            (500, "Server Internal Error", CallStatus::TelephonyFailed),
            (503, "Service Unavailable", CallStatus::TelephonyFailed),
            (599, "Whatever", CallStatus::TelephonyFailed),
            (401, "Unauthorized", CallStatus::Failed),
            (488, "Not Acceptable Here", CallStatus::Failed),
            (603, "Decline", CallStatus::Busy),
            (486, "Busy here", CallStatus::Busy),
            (302, "Moved Temporarily", CallStatus::Failed),
        ];
        for (code, reason, status) in table {
            let (got, why) = rejected(code, reason);
            assert_eq!(got, status, "{code}");
            assert_eq!(why.as_deref(), Some(format!("{code} {reason}").as_str()));
        }
    }

    #[test]
    fn refused_credentials_are_telephony_failed_and_say_so() {
        let (status, why) = classify(&Termination::AuthFailed {
            code: 407,
            reason: "Proxy Authentication Required".into(),
            had_credentials: true,
        });
        assert_eq!(status, CallStatus::TelephonyFailed);
        assert_eq!(
            why.as_deref(),
            Some("authentication with the trunk failed: 407 Proxy Authentication Required (check the trunk's username and password)")
        );
        let (status, why) = classify(&Termination::AuthFailed {
            code: 401,
            reason: "Unauthorized".into(),
            had_credentials: false,
        });
        assert_eq!(status, CallStatus::TelephonyFailed);
        assert_eq!(
            why.as_deref(),
            Some("the trunk requires authentication and has no username: 401 Unauthorized")
        );
    }

    #[test]
    fn our_cancel_at_ring_timeout_is_no_answer() {
        let (status, why) = classify(&Termination::RingTimeout {
            after: Duration::from_secs(30),
        });
        assert_eq!(status, CallStatus::NoAnswer);
        assert!(why.unwrap().contains("30 s"));
    }

    #[test]
    fn unreachable_trunk_and_timeouts_are_telephony_failed() {
        let (status, why) = classify(&Termination::NoResponse);
        assert_eq!(status, CallStatus::TelephonyFailed);
        assert!(why.unwrap().contains("no response to INVITE"));
        let (status, why) = classify(&Termination::Transport("connection refused".into()));
        assert_eq!(status, CallStatus::TelephonyFailed);
        assert_eq!(why.unwrap(), "trunk unreachable: connection refused");
    }

    #[test]
    fn an_answer_without_srtp_on_an_srtp_trunk_is_telephony_failed_and_says_so() {
        let (status, why) = classify(&Termination::Srtp(
            "the far end answered plain RTP (RTP/AVP), not RTP/SAVP".into(),
        ));
        assert_eq!(status, CallStatus::TelephonyFailed);
        assert_eq!(
            why.as_deref(),
            Some("the trunk requires SRTP: the far end answered plain RTP (RTP/AVP), not RTP/SAVP")
        );
    }

    #[test]
    fn silent_media_is_socket_failure() {
        let (status, why) = classify(&Termination::NoRtp {
            after: Duration::from_secs(5),
        });
        assert_eq!(status, CallStatus::SocketFailure);
        assert!(why.unwrap().contains("5 s"));
    }

    #[test]
    fn completed_has_no_reason_and_everything_else_has_one() {
        assert_eq!(
            classify(&Termination::Completed),
            (CallStatus::Completed, None)
        );
        for t in [
            Termination::HungUpBeforeAnswer,
            Termination::Other("bad SDP".into()),
        ] {
            let (status, why) = classify(&t);
            assert_eq!(status, CallStatus::Failed);
            assert!(why.is_some());
        }
    }
}
