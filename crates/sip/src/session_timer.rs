//! Session timers (RFC 4028), sans IO: the Session-Expires of the 2xx to our INVITE, of the far
//! end's refreshes and of the answers to ours go in with the clock; when to refresh, when the
//! session has expired, and what our answers say come out.
//!
//! Only the far end's choice decides that a session expires: our INVITEs say `Supported: timer`
//! and ask for no interval, so a trunk without timers never has one.

use std::time::{Duration, Instant};

/// Who sends the refreshes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refresher {
    Us,
    Them,
}

/// A parsed Session-Expires value: `delta-seconds [;refresher=uac|uas]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionExpires {
    pub interval: Duration,
    /// `refresher=uac` (true), `uas` (false), absent (`None`).
    pub uac_refreshes: Option<bool>,
}

impl SessionExpires {
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.split(';').map(str::trim);
        let seconds: u64 = parts.next()?.parse().ok()?;
        if seconds == 0 {
            return None;
        }
        let mut uac_refreshes = None;
        for param in parts {
            let Some((name, v)) = param.split_once('=') else {
                continue;
            };
            if name.trim().eq_ignore_ascii_case("refresher") {
                uac_refreshes = match v.trim().to_ascii_lowercase().as_str() {
                    "uac" => Some(true),
                    "uas" => Some(false),
                    _ => None,
                };
            }
        }
        Some(Self {
            interval: Duration::from_secs(seconds),
            uac_refreshes,
        })
    }
}

/// What the call task does when [`SessionTimer::due`] comes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Due {
    /// Send a refresh (re-INVITE or UPDATE) carrying [`SessionTimer::request_value`].
    Refresh,
    /// No refresh came in time: the session is over (BYE, RFC 4028 §10).
    Expired,
}

/// What became of our refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refreshed {
    Yes,
    /// Answered without Session-Expires: the far end keeps no timer, nor do we.
    Off,
    /// 408 or 481: the dialog is gone (RFC 3261 §12.2.1.2).
    Gone,
    /// Not refreshed; tried again at [`SessionTimer::due`].
    Later,
}

/// How soon a refresh that failed without ending the dialog (491, 5xx, no answer) is tried
/// again, within what is left of the interval.
const RETRY: Duration = Duration::from_secs(2);

/// One answered call's session timer.
#[derive(Debug, Clone)]
pub struct SessionTimer {
    interval: Duration,
    refresher: Refresher,
    /// When the session was last refreshed (the 2xx to a refresh, ours or theirs).
    refreshed: Instant,
    /// A refresh of ours is on its way.
    pending: bool,
    /// When our next attempt is due after a failed one.
    retry_at: Option<Instant>,
}

impl SessionTimer {
    /// The 2xx to our INVITE (we are its UAC). No Session-Expires: no timer (§7.4).
    pub fn from_answer(session_expires: Option<&str>, now: Instant) -> Option<Self> {
        let se = SessionExpires::parse(session_expires?)?;
        // The UAS must name the refresher; one that did not leaves it to us, the UAC.
        let refresher = match se.uac_refreshes {
            Some(false) => Refresher::Them,
            _ => Refresher::Us,
        };
        Some(Self {
            interval: se.interval,
            refresher,
            refreshed: now,
            pending: false,
            retry_at: None,
        })
    }

    pub fn refresher(&self) -> Refresher {
        self.refresher
    }

    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// The session's end when nobody refreshes it: the interval less what §10 keeps back for
    /// a refresh in flight (a third of it, at most 32 s).
    fn expires_at(&self) -> Instant {
        let margin = (self.interval / 3).min(Duration::from_secs(32));
        self.refreshed + self.interval - margin
    }

    /// When [`SessionTimer::on_time`] must be called; `None` while our refresh is in flight.
    pub fn due(&self) -> Option<Instant> {
        match self.refresher {
            Refresher::Them => Some(self.expires_at()),
            Refresher::Us if self.pending => None,
            // Half the interval, as §7.4 recommends.
            Refresher::Us => Some(
                self.retry_at
                    .unwrap_or(self.refreshed + self.interval / 2)
                    .min(self.expires_at()),
            ),
        }
    }

    /// The clock reached [`SessionTimer::due`].
    pub fn on_time(&mut self, now: Instant) -> Option<Due> {
        if now >= self.expires_at() {
            return Some(Due::Expired);
        }
        match self.refresher {
            Refresher::Us if !self.pending && self.due().is_some_and(|d| now >= d) => {
                self.pending = true;
                self.retry_at = None;
                Some(Due::Refresh)
            }
            _ => None,
        }
    }

    /// Session-Expires of our refresh request: we stay the refresher.
    pub fn request_value(&self) -> String {
        format!("{};refresher=uac", self.interval.as_secs())
    }

    /// The final answer to our refresh (`None`: none came).
    pub fn on_refresh_answer(
        &mut self,
        code: Option<u16>,
        session_expires: Option<&str>,
        min_se: Option<&str>,
        now: Instant,
    ) -> Refreshed {
        self.pending = false;
        match code {
            Some(200..=299) => {
                // A 2xx without Session-Expires turns the timer off (§7.4).
                let Some(se) = session_expires.and_then(SessionExpires::parse) else {
                    return Refreshed::Off;
                };
                self.interval = se.interval;
                // Answering our request, `uac` is us.
                self.refresher = match se.uac_refreshes {
                    Some(false) => Refresher::Them,
                    _ => Refresher::Us,
                };
                self.refreshed = now;
                Refreshed::Yes
            }
            Some(408 | 481) => Refreshed::Gone,
            // Interval too small: ask again at least at its Min-SE (§7.3), at once.
            Some(422) => {
                if let Some(secs) = min_se
                    .and_then(|v| v.split(';').next())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                {
                    self.interval = self.interval.max(Duration::from_secs(secs));
                }
                self.retry_at = Some(now);
                Refreshed::Later
            }
            _ => {
                self.retry_at = Some(now + RETRY);
                Refreshed::Later
            }
        }
    }

    /// A far end's re-INVITE or UPDATE (they are its UAC), answered 2xx at `now`. Returns the
    /// Session-Expires our 2xx carries (with `Require: timer`), or `None` when their request
    /// asked for no timer (the session no longer expires).
    pub fn on_their_refresh(
        this: &mut Option<Self>,
        session_expires: Option<&str>,
        now: Instant,
    ) -> Option<String> {
        let Some(se) = session_expires.and_then(SessionExpires::parse) else {
            *this = None;
            return None;
        };
        // They asked (uac: they refresh; uas: we do); unsaid, we leave it to them (§9).
        let (refresher, param) = match se.uac_refreshes {
            Some(false) => (Refresher::Us, "uas"),
            _ => (Refresher::Them, "uac"),
        };
        *this = Some(Self {
            interval: se.interval,
            refresher,
            refreshed: now,
            pending: false,
            retry_at: None,
        });
        Some(format!("{};refresher={param}", se.interval.as_secs()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn values_parse_with_or_without_a_refresher() {
        assert_eq!(
            SessionExpires::parse("1800;refresher=uac"),
            Some(SessionExpires {
                interval: secs(1800),
                uac_refreshes: Some(true)
            })
        );
        assert_eq!(
            SessionExpires::parse(" 90 ; Refresher = UAS"),
            Some(SessionExpires {
                interval: secs(90),
                uac_refreshes: Some(false)
            })
        );
        assert_eq!(SessionExpires::parse("90").unwrap().uac_refreshes, None);
        assert_eq!(SessionExpires::parse("0"), None);
        assert_eq!(SessionExpires::parse("soon"), None);
    }

    #[test]
    fn no_session_expires_in_the_answer_is_no_timer() {
        assert!(SessionTimer::from_answer(None, Instant::now()).is_none());
    }

    #[test]
    fn we_refresh_at_half_the_interval_and_start_again_from_the_answer() {
        let t0 = Instant::now();
        let mut t = SessionTimer::from_answer(Some("90;refresher=uac"), t0).unwrap();
        assert_eq!(t.refresher(), Refresher::Us);
        assert_eq!(t.due(), Some(t0 + secs(45)));
        assert_eq!(t.on_time(t0 + secs(44)), None);
        assert_eq!(t.on_time(t0 + secs(45)), Some(Due::Refresh));
        assert_eq!(t.request_value(), "90;refresher=uac");
        // In flight: nothing more is due until it is answered.
        assert_eq!(t.due(), None);
        assert_eq!(t.on_time(t0 + secs(46)), None);
        let answered = t0 + secs(46);
        assert_eq!(
            t.on_refresh_answer(Some(200), Some("120;refresher=uac"), None, answered),
            Refreshed::Yes
        );
        assert_eq!(t.interval(), secs(120));
        assert_eq!(t.due(), Some(answered + secs(60)));
    }

    #[test]
    fn a_refresh_that_is_not_answered_is_tried_again_and_the_session_ends_at_its_expiry() {
        let t0 = Instant::now();
        let mut t = SessionTimer::from_answer(Some("90"), t0).unwrap();
        assert_eq!(t.on_time(t0 + secs(45)), Some(Due::Refresh));
        assert_eq!(
            t.on_refresh_answer(None, None, None, t0 + secs(50)),
            Refreshed::Later
        );
        assert_eq!(t.due(), Some(t0 + secs(52)));
        assert_eq!(t.on_time(t0 + secs(52)), Some(Due::Refresh));
        assert_eq!(
            t.on_refresh_answer(Some(500), None, None, t0 + secs(59)),
            Refreshed::Later
        );
        // A retry never waits past the expiry: 90 - min(32, 30) = 60 s.
        assert_eq!(t.due(), Some(t0 + secs(60)));
        assert_eq!(t.on_time(t0 + secs(60)), Some(Due::Expired));
    }

    #[test]
    fn a_gone_dialog_ends_and_a_422_raises_the_interval_to_min_se() {
        let t0 = Instant::now();
        let mut t = SessionTimer::from_answer(Some("60;refresher=uac"), t0).unwrap();
        t.on_time(t0 + secs(30));
        assert_eq!(
            t.on_refresh_answer(Some(422), None, Some("90"), t0 + secs(30)),
            Refreshed::Later
        );
        assert_eq!(t.interval(), secs(90));
        assert_eq!(t.on_time(t0 + secs(30)), Some(Due::Refresh));
        assert_eq!(t.request_value(), "90;refresher=uac");
        assert_eq!(
            t.on_refresh_answer(Some(481), None, None, t0 + secs(31)),
            Refreshed::Gone
        );
        let mut t = SessionTimer::from_answer(Some("90"), t0).unwrap();
        t.on_time(t0 + secs(45));
        assert_eq!(
            t.on_refresh_answer(Some(200), None, None, t0 + secs(46)),
            Refreshed::Off
        );
    }

    #[test]
    fn when_they_refresh_and_do_not_the_session_expires_a_third_early() {
        let t0 = Instant::now();
        let mut t = SessionTimer::from_answer(Some("90;refresher=uas"), t0).unwrap();
        assert_eq!(t.refresher(), Refresher::Them);
        assert_eq!(t.due(), Some(t0 + secs(60)));
        assert_eq!(t.on_time(t0 + secs(59)), None);
        assert_eq!(t.on_time(t0 + secs(60)), Some(Due::Expired));
        // A long interval keeps back 32 s at most.
        let t = SessionTimer::from_answer(Some("1800;refresher=uas"), t0).unwrap();
        assert_eq!(t.due(), Some(t0 + secs(1768)));
    }

    #[test]
    fn their_refresh_restarts_the_clock_and_our_answer_names_the_refresher() {
        let t0 = Instant::now();
        let mut t = SessionTimer::from_answer(Some("90;refresher=uas"), t0);
        let later = t0 + secs(40);
        let answer = SessionTimer::on_their_refresh(&mut t, Some("90;refresher=uac"), later);
        assert_eq!(answer.as_deref(), Some("90;refresher=uac"));
        let timer = t.as_ref().unwrap();
        assert_eq!(timer.refresher(), Refresher::Them);
        assert_eq!(timer.due(), Some(later + secs(60)));
        // Unsaid, it stays with them; `uas` hands it to us.
        let answer = SessionTimer::on_their_refresh(&mut t, Some("120"), later);
        assert_eq!(answer.as_deref(), Some("120;refresher=uac"));
        let answer = SessionTimer::on_their_refresh(&mut t, Some("120;refresher=uas"), later);
        assert_eq!(answer.as_deref(), Some("120;refresher=uas"));
        assert_eq!(t.as_ref().unwrap().refresher(), Refresher::Us);
        // A refresh without Session-Expires turns the timer off.
        assert_eq!(SessionTimer::on_their_refresh(&mut t, None, later), None);
        assert!(t.is_none());
    }
}
