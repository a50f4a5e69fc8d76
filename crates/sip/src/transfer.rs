//! The decisions of a blind transfer (RFC 3515), sans IO: the REFER's response, the NOTIFYs'
//! sipfrag status lines and the clock go in; whether the far end took the call, whether outdial
//! must dial the target and bridge it itself, and how that ended come out.

use domain::call::{TransferMethod, TransferStatus};
use std::time::{Duration, Instant};

/// The default wait for a final 2xx NOTIFY after the REFER before bridging instead.
pub const DEFAULT_TRANSFER_TIMEOUT: Duration = Duration::from_secs(15);

/// What the call task does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing yet.
    Wait,
    /// Dial the target on the same trunk and bridge it once answered.
    Dial,
    /// The transfer is over.
    Done(TransferMethod, TransferStatus),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// REFER sent; `accepted` once it was answered 2xx.
    Referring {
        accepted: bool,
    },
    /// The far end did not take the call: our own second leg is ringing.
    Dialling,
    Over,
}

/// One transfer, from the REFER to connected or failed.
#[derive(Debug, Clone)]
pub struct TransferMachine {
    phase: Phase,
    deadline: Instant,
}

impl TransferMachine {
    /// The REFER was sent at `now`; a final 2xx NOTIFY must come within `limit`.
    pub fn new(now: Instant, limit: Duration) -> Self {
        Self {
            phase: Phase::Referring { accepted: false },
            deadline: now + limit,
        }
    }

    /// When [`TransferMachine::on_time`] must be called next, while the REFER is pending.
    pub fn deadline(&self) -> Option<Instant> {
        matches!(self.phase, Phase::Referring { .. }).then_some(self.deadline)
    }

    /// The REFER's final response (`None`: it timed out or could not be sent). A trunk that
    /// refuses it (405, 501, 603, or any other failure) leaves the bridge.
    pub fn on_refer_response(&mut self, code: Option<u16>) -> Step {
        match (self.phase, code) {
            (Phase::Referring { .. }, Some(200..=299)) => {
                self.phase = Phase::Referring { accepted: true };
                Step::Wait
            }
            (Phase::Referring { .. }, _) => self.bridge(),
            _ => Step::Wait,
        }
    }

    /// A NOTIFY's sipfrag status (`None`: no readable status line, which says nothing). 1xx is
    /// progress; 2xx is the target answering the far end's call; any other final status means
    /// the far end could not reach the target, so outdial tries itself.
    pub fn on_notify(&mut self, sipfrag: Option<u16>) -> Step {
        match (self.phase, sipfrag) {
            (Phase::Referring { .. }, Some(200..=299)) => {
                self.phase = Phase::Over;
                Step::Done(TransferMethod::Refer, TransferStatus::Connected)
            }
            (Phase::Referring { .. }, Some(300..=699)) => self.bridge(),
            _ => Step::Wait,
        }
    }

    /// The clock: no final 2xx NOTIFY by the deadline means the bridge.
    pub fn on_time(&mut self, now: Instant) -> Step {
        match self.phase {
            Phase::Referring { .. } if now >= self.deadline => self.bridge(),
            _ => Step::Wait,
        }
    }

    /// Our own leg to the target: answered, or ended without an answer (busy, no answer, ...).
    pub fn on_target(&mut self, answered: bool) -> Step {
        if self.phase != Phase::Dialling {
            return Step::Wait;
        }
        self.phase = Phase::Over;
        let status = if answered {
            TransferStatus::Connected
        } else {
            TransferStatus::Failed
        };
        Step::Done(TransferMethod::Bridge, status)
    }

    fn bridge(&mut self) -> Step {
        self.phase = Phase::Dialling;
        Step::Dial
    }
}

/// The status code of a `message/sipfrag` body's status line (`SIP/2.0 200 OK`).
pub fn sipfrag_status(body: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(body).ok()?;
    let line = text.lines().find(|l| !l.trim().is_empty())?;
    let mut parts = line.split_whitespace();
    if !parts.next()?.eq_ignore_ascii_case("SIP/2.0") {
        return None;
    }
    let code: u16 = parts.next()?.parse().ok()?;
    (100..=699).contains(&code).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use TransferMethod::*;
    use TransferStatus::*;

    fn machine() -> (TransferMachine, Instant) {
        let t0 = Instant::now();
        (TransferMachine::new(t0, DEFAULT_TRANSFER_TIMEOUT), t0)
    }

    #[test]
    fn accepted_refer_then_trying_then_ok_is_connected_by_refer() {
        let (mut m, t0) = machine();
        assert_eq!(m.on_refer_response(Some(202)), Step::Wait);
        assert_eq!(m.on_notify(Some(100)), Step::Wait);
        assert_eq!(m.on_time(t0 + Duration::from_secs(3)), Step::Wait);
        assert_eq!(m.on_notify(Some(200)), Step::Done(Refer, Connected));
        // Over: nothing later changes it.
        assert_eq!(m.on_time(t0 + Duration::from_secs(60)), Step::Wait);
        assert_eq!(m.deadline(), None);
    }

    #[test]
    fn a_refused_refer_is_bridged() {
        for code in [405, 501, 603, 403, 481] {
            let (mut m, _) = machine();
            assert_eq!(m.on_refer_response(Some(code)), Step::Dial, "{code}");
        }
        let (mut m, _) = machine();
        assert_eq!(m.on_refer_response(None), Step::Dial);
    }

    #[test]
    fn no_final_notify_within_the_limit_is_bridged() {
        let (mut m, t0) = machine();
        m.on_refer_response(Some(202));
        m.on_notify(Some(100));
        assert_eq!(m.deadline(), Some(t0 + DEFAULT_TRANSFER_TIMEOUT));
        assert_eq!(m.on_time(t0 + Duration::from_millis(14_999)), Step::Wait);
        assert_eq!(m.on_time(t0 + DEFAULT_TRANSFER_TIMEOUT), Step::Dial);
        // A 200 NOTIFY after we went our own way is too late.
        assert_eq!(m.on_notify(Some(200)), Step::Wait);
        assert_eq!(m.on_target(true), Step::Done(Bridge, Connected));
    }

    #[test]
    fn a_failed_notify_is_bridged_and_a_busy_target_fails() {
        let (mut m, _) = machine();
        m.on_refer_response(Some(202));
        assert_eq!(m.on_notify(Some(486)), Step::Dial);
        assert_eq!(m.on_target(false), Step::Done(Bridge, Failed));
        assert_eq!(m.on_target(true), Step::Wait);
    }

    #[test]
    fn sipfrag_status_lines() {
        assert_eq!(sipfrag_status(b"SIP/2.0 100 Trying\r\n"), Some(100));
        assert_eq!(sipfrag_status(b"\r\nSIP/2.0 200 OK"), Some(200));
        assert_eq!(
            sipfrag_status(b"SIP/2.0 486 Busy Here\r\nVia: x"),
            Some(486)
        );
        assert_eq!(sipfrag_status(b"HTTP/1.1 200 OK"), None);
        assert_eq!(sipfrag_status(b"SIP/2.0 abc"), None);
        assert_eq!(sipfrag_status(b""), None);
    }
}
