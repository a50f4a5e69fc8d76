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

/// How far ahead a dispatch round books a paced trunk's tokens. Taking only the token that is
/// there meant one call per paced line per round, and under API load a round comes every
/// 20-45 ms: a trunk paced at 50 calls a second dialled 15-17, one at 500 dialled 23. A round
/// takes every token that comes back before `now + BOOK_AHEAD`, and each call's INVITE leaves
/// at its token's time, so the trunk dials at its pace as long as rounds come more often than
/// this. 100 ms was not enough under `outdial-bench mixed` (a 50/s trunk dialled 40-47/s:
/// some rounds waited longer at the writer); at 250 ms it dials 50/s. A booked call is
/// `initiated` (durable) up to this long before its INVITE.
pub const BOOK_AHEAD: Duration = Duration::from_millis(BOOK_AHEAD_MS as u64);
const BOOK_AHEAD_MS: i64 = 250;

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

/// A token taken: the call's INVITE leaves at `invite_at` (now, or a booked instant before
/// `now + BOOK_AHEAD`), and the bucket's token is back at `back_at`, one interval later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Token {
    pub invite_at: Millis,
    pub back_at: Millis,
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

    /// Takes the token for a call asked for at `now`, booked ahead if it is back before
    /// `now + BOOK_AHEAD`: `Ok` with the call's INVITE time and the bucket's new state, or
    /// `Err` with when the token will be there.
    pub fn take(&self, token_back_at: Option<Millis>, now: Millis) -> Result<Token, Millis> {
        let invite_at = next_token(token_back_at, now);
        if invite_at >= booking_ends(now) {
            return Err(invite_at);
        }
        Ok(Token {
            invite_at,
            back_at: Millis(invite_at.0.saturating_add(self.interval_ms)),
        })
    }

    /// How many tokens a round at `now` can book: those back before `now + BOOK_AHEAD`.
    pub fn bookable(&self, token_back_at: Option<Millis>, now: Millis) -> u32 {
        let span = booking_ends(now).0 - next_token(token_back_at, now).0;
        if span <= 0 {
            return 0;
        }
        u32::try_from((span + self.interval_ms - 1) / self.interval_ms).unwrap_or(u32::MAX)
    }
}

/// When the next call may go: when the token is back, or now if it is.
fn next_token(token_back_at: Option<Millis>, now: Millis) -> Millis {
    token_back_at.map_or(now, |at| at.max(now))
}

fn booking_ends(now: Millis) -> Millis {
    Millis(now.0.saturating_add(BOOK_AHEAD_MS))
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

/// How many calls of a trunk's line may be taken at `now`: as many as a paced trunk's bucket
/// can book ahead ([`TokenBucket::bookable`]), `up_to` when an unpaced trunk's hold is over, none
/// while the gate is shut; never more than `up_to`.
pub fn lane_room(
    pace: Option<CallsPerSecond>,
    dial_after: Option<Millis>,
    now: Millis,
    up_to: u32,
) -> u32 {
    match pace {
        Some(rate) => TokenBucket::new(rate).bookable(dial_after, now).min(up_to),
        None if gate_open(dial_after, now) => up_to,
        None => 0,
    }
}

/// When a round can next take calls from a trunk's line whose gate is `dial_after`: an
/// unpaced trunk's when its hold ends (now without one); a paced trunk's half a booking before
/// its next token, so the round that wakes then books on from where the last one ended.
/// Woken at the token itself, every round would start its booking late by its own wake-up
/// delay, and the pace would lose that much each time.
pub fn line_due(pace: Option<CallsPerSecond>, dial_after: Option<Millis>, now: Millis) -> Millis {
    match (pace, dial_after) {
        (_, None) => now,
        (Some(_), Some(at)) => Millis(at.0 - BOOK_AHEAD_MS / 2),
        (None, Some(at)) => at,
    }
}

/// Whether the node's API is serving requests now. Dispatch is background work: while the
/// API is busy, the node dials at its busy rate ([`BusyBudget`]).
pub trait Foreground: Send + Sync + std::fmt::Debug {
    fn busy(&self) -> bool;
}

/// The node's own pace while its API is busy (`dispatch_busy_dial_rate`). On a node whose
/// API is saturated, every dial (its rounds, SIP transaction and settlement) takes CPU that
/// the API needs: `outdial-bench mixed` on 2 cores accepted 1.21-1.52x the commit rate while
/// the node dialled 1,900-2,650 calls/s, 1.49-1.55x at 1,100/s and 0.37-0.54x at 4,300-6,000/s.
/// While the API is idle a round takes all it may.
///
/// A bucket of `burst` calls refilled `per_second` times a second; 0 calls a second is no
/// limit. The bucket is spent while the API is idle too, so when it turns busy after a run at
/// full speed the node slows at once instead of after a last burst.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyBudget {
    per_second: u32,
    burst: u32,
    /// What the bucket holds, in thousandths of a call (`per_second` of them accrue each ms).
    milli_calls: u64,
    at: Millis,
}

impl BusyBudget {
    /// Full at `now`.
    pub fn new(per_second: u32, burst: u32, now: Millis) -> Self {
        let burst = burst.max(1);
        Self {
            per_second,
            burst,
            milli_calls: u64::from(burst) * 1000,
            at: now,
        }
    }

    fn refill(&mut self, now: Millis) {
        let ms = u64::try_from(now.0 - self.at.0).unwrap_or(0);
        let full = u64::from(self.burst) * 1000;
        self.milli_calls = self
            .milli_calls
            .saturating_add(ms.saturating_mul(u64::from(self.per_second)))
            .min(full);
        // Set back too: a wall clock stepped back must not leave the next round in its future.
        self.at = now;
    }

    /// How many calls a round at `now` may take: `up_to` while the API is idle or without a
    /// limit, else what the bucket holds (at most `up_to`).
    pub fn room(&mut self, busy: bool, now: Millis, up_to: u32) -> u32 {
        self.refill(now);
        if !busy || self.per_second == 0 {
            return up_to;
        }
        u32::try_from(self.milli_calls / 1000)
            .unwrap_or(u32::MAX)
            .min(up_to)
    }

    /// A round at `now` took `calls`.
    pub fn spend(&mut self, calls: u32, now: Millis) {
        self.refill(now);
        self.milli_calls = self.milli_calls.saturating_sub(u64::from(calls) * 1000);
    }

    /// When a busy node's next round is worth making: once the bucket holds a fiftieth of a
    /// second's calls (at least one, at most `burst`), so a slowed node makes about 50 rounds
    /// a second, not one per call. `None` without a limit.
    pub fn next_round(&self) -> Option<Millis> {
        if self.per_second == 0 {
            return None;
        }
        let want = u64::from((self.per_second / 50).clamp(1, self.burst)) * 1000;
        let short = want.saturating_sub(self.milli_calls);
        let ms = short.div_ceil(u64::from(self.per_second));
        Some(Millis(
            self.at
                .0
                .saturating_add(i64::try_from(ms).unwrap_or(i64::MAX)),
        ))
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

    fn token(invite_at: i64, back_at: i64) -> Result<Token, Millis> {
        Ok(Token {
            invite_at: Millis(invite_at),
            back_at: Millis(back_at),
        })
    }

    #[test]
    fn the_first_call_goes_at_once_and_the_next_waits_for_the_token() {
        assert_eq!(BOOK_AHEAD, Duration::from_millis(250));
        let b = TokenBucket::new(rate(2.0));
        let t0 = 1_000_000;
        assert_eq!(b.take(None, Millis(t0)), token(t0, t0 + 500));
        let back = Some(Millis(t0 + 500));
        // Not back within the booking: the call waits in its line.
        assert_eq!(b.take(back, Millis(t0 + 250)), Err(Millis(t0 + 500)));
        // Back within it: booked, its INVITE at the token's time, not before.
        assert_eq!(b.take(back, Millis(t0 + 251)), token(t0 + 500, t0 + 1000));
        // Late is not made up for: the next token is an interval after the late call.
        assert_eq!(b.take(back, Millis(t0 + 600)), token(t0 + 600, t0 + 1100));
    }

    #[test]
    fn a_round_books_every_token_back_within_the_booking() {
        let now = Millis(50_000);
        // 5 ms apart: 50 INVITEs over the next 250 ms, then the trunk's line waits.
        let b = TokenBucket::new(rate(200.0));
        assert_eq!(b.bookable(None, now), 50);
        let mut state = None;
        let mut times = Vec::new();
        while let Ok(t) = b.take(state, now) {
            times.push(t.invite_at.0 - now.0);
            state = Some(t.back_at);
        }
        assert_eq!(times, (0..50).map(|i| i * 5).collect::<Vec<_>>());
        assert_eq!(b.bookable(state, now), 0);
        // 25 ms on, the 5 tokens back by 275 ms can be booked.
        assert_eq!(b.bookable(state, Millis(now.0 + 25)), 5);
        // A slow trunk's next token, 2 s away, is not booked.
        let slow = TokenBucket::new(rate(0.5));
        assert_eq!(slow.bookable(Some(Millis(now.0 + 2_000)), now), 0);
        assert_eq!(slow.bookable(None, now), 1);
    }

    /// Whatever the times calls are asked for, the INVITEs the bucket lets through never number
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
                // A round takes a few of what it may book.
                for _ in 0..next(4) {
                    if let Ok(t) = b.take(state, Millis(now)) {
                        state = Some(t.back_at);
                        started.push(t.invite_at.0);
                    }
                }
            }
            assert!(started.len() > 10, "{r}: {}", started.len());
            assert!(started.windows(2).all(|w| w[0] < w[1]), "{r}: in order");
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
    fn a_line_takes_what_its_bucket_books_or_all_once_a_hold_is_over() {
        let now = Millis(10_000);
        let paced = Some(rate(2.0));
        assert_eq!(lane_room(paced, None, now, 64), 1);
        assert_eq!(lane_room(paced, Some(Millis(10_001)), now, 64), 1);
        assert_eq!(lane_room(paced, Some(Millis(10_250)), now, 64), 0);
        // A fast trunk: its booking, capped by the round's claim.
        assert_eq!(lane_room(Some(rate(40.0)), None, now, 64), 10);
        assert_eq!(lane_room(Some(rate(1000.0)), None, now, 64), 64);
        assert_eq!(lane_room(None, Some(Millis(10_000)), now, 64), 64);
        assert_eq!(lane_room(None, Some(Millis(12_000)), now, 64), 0);
    }

    #[test]
    fn a_paced_line_is_due_half_a_booking_before_its_token() {
        let now = Millis(10_000);
        let paced = Some(rate(5.0));
        assert_eq!(line_due(paced, None, now), now);
        let token = Some(Millis(10_200));
        assert_eq!(line_due(paced, token, now), Millis(10_075));
        // Due then, the line has a call to give: the round never wakes for nothing.
        assert_eq!(lane_room(paced, token, Millis(10_075), 64), 1);
        assert_eq!(line_due(None, token, now), Millis(10_200));
        assert_eq!(line_due(None, None, now), now);
    }

    #[test]
    fn a_busy_node_dials_at_its_busy_rate_and_an_idle_one_at_full_speed() {
        let t0 = 1_000_000;
        let mut b = BusyBudget::new(1000, 32, Millis(t0));
        // Idle: every round takes all it may, and spends the bucket.
        assert_eq!(b.room(false, Millis(t0), 32), 32);
        b.spend(32, Millis(t0));
        assert_eq!(b.room(false, Millis(t0), 32), 32);
        // Busy at once after: the bucket is empty, and refills at a call a millisecond.
        assert_eq!(b.room(true, Millis(t0), 32), 0);
        assert_eq!(b.next_round(), Some(Millis(t0 + 20)));
        assert_eq!(b.room(true, Millis(t0 + 20), 32), 20);
        b.spend(20, Millis(t0 + 20));
        // Never more than the burst, however long the wait.
        assert_eq!(b.room(true, Millis(t0 + 10_000), 32), 32);
        assert_eq!(b.room(true, Millis(t0 + 10_000), 8), 8);
        // Over a busy second of rounds every 20 ms, the node takes its rate, not more.
        let mut b = BusyBudget::new(1000, 32, Millis(t0));
        let mut taken = 0;
        let mut now = t0;
        while now < t0 + 1000 {
            let n = b.room(true, Millis(now), 32);
            b.spend(n, Millis(now));
            taken += n;
            now = b.next_round().unwrap().0.max(now + 1);
        }
        assert!((1000..=1032).contains(&taken), "{taken}");
    }

    #[test]
    fn a_slow_busy_rate_waits_for_whole_calls_and_no_limit_never_waits() {
        let t0 = 5_000;
        let mut b = BusyBudget::new(10, 4, Millis(t0));
        b.spend(4, Millis(t0));
        assert_eq!(b.room(true, Millis(t0 + 99), 4), 0);
        assert_eq!(b.next_round(), Some(Millis(t0 + 100)));
        assert_eq!(b.room(true, Millis(t0 + 100), 4), 1);
        // A clock stepped back an hour neither refills nor empties the bucket, and the next
        // round is counted from the new time, not an hour on.
        let back = t0 - 3_600_000;
        assert_eq!(b.room(true, Millis(back), 4), 1);
        assert_eq!(b.next_round(), Some(Millis(back)));
        b.spend(1, Millis(back));
        assert_eq!(b.next_round(), Some(Millis(back + 100)));
        let mut none = BusyBudget::new(0, 32, Millis(t0));
        none.spend(1_000, Millis(t0));
        assert_eq!(none.room(true, Millis(t0), 32), 32);
        assert_eq!(none.next_round(), None);
    }
}
