//! A trunk's pace (`max_calls_per_second`) and its hold (a carrier's 503 with `Retry-After`),
//! as pure rules over a trunk's one piece of state: the instant before which it takes no new
//! INVITE (`dial_after`). The time is always an argument; the store keeps the state, so every
//! node dialling through a trunk shares it.

use crate::Millis;
use std::time::Duration;

/// A trunk's `max_calls_per_second`: a positive number, fractional allowed (`0.5` is a call
/// every two seconds), within [`CallsPerSecond::MIN`]..=[`CallsPerSecond::MAX`]. Never NaN, so
/// it compares as a whole number would.
#[derive(Debug, Clone, Copy, PartialEq, PartialOrd)]
pub struct CallsPerSecond(f64);

impl Eq for CallsPerSecond {}

impl CallsPerSecond {
    /// One call every ~17 minutes: below that a trunk is better left without calls.
    pub const MIN: f64 = 0.001;
    /// One call a millisecond, the resolution of the pace.
    pub const MAX: f64 = 1000.0;

    pub fn new(rate: f64) -> Option<Self> {
        (rate.is_finite() && (Self::MIN..=Self::MAX).contains(&rate)).then_some(Self(rate))
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

/// A token bucket that holds one token, refilled `rate` times a second. Its state is the instant
/// the token is back (`None`: never taken, the bucket is full).
///
/// One token, so the first call goes at once and each next one at least `1 / rate` after the
/// one before: never more than `rate` calls in any one-second window (⌈`rate` × seconds⌉ in any
/// window, for a fractional rate), which is how carriers count calls per second. A bucket of `n`
/// tokens would let `n` calls go together after a quiet spell, `n + rate - 1` in one window. A
/// call that starts late is not made up for later: the pace is a ceiling, not a promise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenBucket {
    interval_ms: i64,
}

impl TokenBucket {
    pub fn new(rate: CallsPerSecond) -> Self {
        // Rounded up to whole milliseconds: a little under the rate, never over it.
        let interval_ms = (1000.0 / rate.get()).ceil() as i64;
        Self {
            interval_ms: interval_ms.max(1),
        }
    }

    /// The least time between two calls.
    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.unsigned_abs())
    }

    /// Whether a call may start at `now`.
    pub fn has_token(&self, token_back_at: Option<Millis>, now: Millis) -> bool {
        gate_open(token_back_at, now)
    }

    /// Takes the token for a call starting at `now`: `Ok` with the bucket's new state (when the
    /// token is back), or `Err` with when the token will be there.
    pub fn take(&self, token_back_at: Option<Millis>, now: Millis) -> Result<Millis, Millis> {
        match token_back_at {
            Some(at) if at > now => Err(at),
            _ => Ok(Millis(now.0.saturating_add(self.interval_ms))),
        }
    }
}

/// Whether a trunk whose gate is `dial_after` takes a new INVITE at `now`.
pub fn gate_open(dial_after: Option<Millis>, now: Millis) -> bool {
    dial_after.is_none_or(|at| at <= now)
}

/// The longest a carrier's `Retry-After` stops a trunk: a carrier asking for an hour (or a day)
/// gets ten minutes, then one call shows whether it still means it.
pub const MAX_TRUNK_HOLD: Duration = Duration::from_secs(600);

/// When a trunk whose carrier answered 503 with `Retry-After: retry_after` at `now` takes new
/// calls again (at most [`MAX_TRUNK_HOLD`] on).
pub fn hold_until(now: Millis, retry_after: Duration) -> Millis {
    let wait = retry_after.min(MAX_TRUNK_HOLD);
    Millis(
        now.0
            .saturating_add(i64::try_from(wait.as_millis()).unwrap_or(i64::MAX)),
    )
}

/// How many calls of a trunk's line may be taken at `now`: one when a paced trunk's bucket
/// has its token, `up_to` when an unpaced trunk's hold is over, none while the gate is shut.
pub fn lane_room(
    pace: Option<CallsPerSecond>,
    dial_after: Option<Millis>,
    now: Millis,
    up_to: u32,
) -> u32 {
    match (gate_open(dial_after, now), pace) {
        (false, _) => 0,
        (true, Some(_)) => 1,
        (true, None) => up_to,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(r: f64) -> CallsPerSecond {
        CallsPerSecond::new(r).unwrap()
    }

    #[test]
    fn rates_are_positive_finite_and_bounded() {
        for bad in [0.0, -1.0, 0.0009, 1000.5, f64::NAN, f64::INFINITY] {
            assert_eq!(CallsPerSecond::new(bad), None, "{bad}");
        }
        for ok in [0.001, 0.5, 1.0, 5.0, 1000.0] {
            assert_eq!(CallsPerSecond::new(ok).map(CallsPerSecond::get), Some(ok));
        }
    }

    #[test]
    fn the_interval_is_rounded_up_to_whole_milliseconds() {
        let ms = |r: f64| TokenBucket::new(rate(r)).interval().as_millis();
        assert_eq!(ms(5.0), 200);
        assert_eq!(ms(0.5), 2000);
        assert_eq!(ms(3.0), 334);
        assert_eq!(ms(1000.0), 1);
        assert_eq!(ms(0.001), 1_000_000);
    }

    #[test]
    fn the_first_call_goes_at_once_and_the_next_waits_for_the_token() {
        let b = TokenBucket::new(rate(5.0));
        let t0 = Millis(1_000_000);
        assert!(b.has_token(None, t0));
        let back = b.take(None, t0).unwrap();
        assert_eq!(back, Millis(t0.0 + 200));
        assert!(!b.has_token(Some(back), Millis(t0.0 + 199)));
        assert_eq!(b.take(Some(back), Millis(t0.0 + 199)), Err(back));
        // Late is not made up for: the next token is an interval after the late call.
        assert_eq!(
            b.take(Some(back), Millis(t0.0 + 250)),
            Ok(Millis(t0.0 + 450))
        );
    }

    /// Whatever the times calls are asked for, the calls the bucket lets through never number
    /// more than `rate` × the window in any window (rounded up, for fractional rates).
    #[test]
    fn no_one_second_window_holds_more_than_the_rate() {
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for r in [0.5, 1.0, 2.5, 3.0, 5.0, 7.0, 30.0, 333.0] {
            let b = TokenBucket::new(rate(r));
            let mut state = None;
            let mut now = 0i64;
            let mut started = Vec::new();
            for _ in 0..2_000 {
                now += next(150) as i64;
                if let Ok(s) = b.take(state, Millis(now)) {
                    state = Some(s);
                    started.push(now);
                }
            }
            assert!(started.len() > 10, "{r}: {}", started.len());
            for window in [1000, 2000, 5000] {
                let most = (r * window as f64 / 1000.0).ceil() as usize;
                for (i, t) in started.iter().enumerate() {
                    let inside = started[i..].iter().take_while(|s| **s < t + window).count();
                    assert!(
                        inside <= most,
                        "{r}/s: {inside} calls in {window} ms from {t}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_hold_shuts_the_gate_until_it_ends_and_is_capped() {
        let now = Millis(5_000);
        let until = hold_until(now, Duration::from_secs(3));
        assert_eq!(until, Millis(8_000));
        assert!(!gate_open(Some(until), Millis(7_999)));
        assert!(gate_open(Some(until), Millis(8_000)));
        assert_eq!(
            hold_until(now, Duration::from_secs(86_400)),
            Millis(5_000 + 600_000)
        );
    }

    #[test]
    fn a_line_takes_one_call_per_token_or_all_once_a_hold_is_over() {
        let now = Millis(10_000);
        let paced = Some(rate(2.0));
        assert_eq!(lane_room(paced, None, now, 64), 1);
        assert_eq!(lane_room(paced, Some(Millis(10_001)), now, 64), 0);
        assert_eq!(lane_room(None, Some(Millis(10_000)), now, 64), 64);
        assert_eq!(lane_room(None, Some(Millis(12_000)), now, 64), 0);
    }
}
