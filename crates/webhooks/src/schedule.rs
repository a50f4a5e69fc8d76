//! When failed deliveries are tried again.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use rand::Rng;

/// Environment variable holding a schedule such as `1,2,4`.
pub const RETRY_SCHEDULE_ENV: &str = "OUTDIAL_WEBHOOK_RETRY_SCHEDULE";

/// Longest gap accepted between two attempts. Bounds the jitter arithmetic and catches a
/// value typed in milliseconds by mistake.
pub const MAX_GAP: Duration = Duration::from_secs(30 * 24 * 60 * 60);

/// Gaps of the contract's schedule: immediately, then 30 s, 300 s, 30 min, 2 h, 5 h, 10 h.
const DEFAULT_GAPS_SECS: [u64; 6] = [30, 300, 1_800, 7_200, 18_000, 36_000];

/// Why a schedule was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// No gaps at all.
    #[error("retry schedule is empty; expected seconds between attempts such as 1,2,4")]
    Empty,
    /// An item is not a whole number of seconds.
    #[error("retry schedule item {position} ({item:?}) is not a whole number of seconds")]
    NotSeconds {
        /// 1-based position in the list.
        position: usize,
        /// The offending text.
        item: String,
    },
    /// An item exceeds [`MAX_GAP`].
    #[error("retry schedule item {position} exceeds the 30-day maximum gap")]
    TooLong {
        /// 1-based position in the list.
        position: usize,
    },
}

/// Gaps between consecutive delivery attempts; the first attempt is always immediate, so a
/// schedule of n gaps allows n + 1 attempts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetrySchedule {
    gaps: Vec<Duration>,
}

impl Default for RetrySchedule {
    fn default() -> Self {
        Self {
            gaps: DEFAULT_GAPS_SECS
                .iter()
                .map(|secs| Duration::from_secs(*secs))
                .collect(),
        }
    }
}

impl RetrySchedule {
    /// A schedule from explicit gaps; at least one, none over [`MAX_GAP`].
    pub fn new(gaps: Vec<Duration>) -> Result<Self, ScheduleError> {
        if gaps.is_empty() {
            return Err(ScheduleError::Empty);
        }
        if let Some(index) = gaps.iter().position(|gap| *gap > MAX_GAP) {
            return Err(ScheduleError::TooLong {
                position: index + 1,
            });
        }
        Ok(Self { gaps })
    }

    /// Interprets a value of [`RETRY_SCHEDULE_ENV`]: `None` gives the default; a set but empty
    /// or malformed value is an error rather than a silent fallback.
    pub fn from_env_value(value: Option<&str>) -> Result<Self, ScheduleError> {
        value.map_or_else(|| Ok(Self::default()), str::parse)
    }

    /// Attempts allowed in total, the first included.
    pub fn max_attempts(&self) -> usize {
        self.gaps.len() + 1
    }

    /// The configured gaps, before jitter.
    pub fn gaps(&self) -> &[Duration] {
        &self.gaps
    }

    /// Delay before the next attempt after `attempts_made` attempts, with up to 10% added
    /// jitter so that targets failing together do not retry in lockstep; `None` once all
    /// attempts are used. Zero attempts made means the first, immediate, attempt.
    pub fn next_delay<R: Rng + ?Sized>(
        &self,
        attempts_made: usize,
        rng: &mut R,
    ) -> Option<Duration> {
        let Some(index) = attempts_made.checked_sub(1) else {
            return Some(Duration::ZERO);
        };
        let gap = *self.gaps.get(index)?;
        Some(gap + rng.gen_range(Duration::ZERO..=gap / 10))
    }
}

impl FromStr for RetrySchedule {
    type Err = ScheduleError;

    /// Parses `1,2,4`: seconds between attempts, spaces around items tolerated.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.trim().is_empty() {
            return Err(ScheduleError::Empty);
        }
        let gaps = s
            .split(',')
            .enumerate()
            .map(|(index, item)| {
                let item = item.trim();
                // `u64::from_str` takes a leading `+`; only plain digits are meant here.
                if item.is_empty() || !item.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(ScheduleError::NotSeconds {
                        position: index + 1,
                        item: item.to_owned(),
                    });
                }
                item.parse::<u64>()
                    .map(Duration::from_secs)
                    .map_err(|_| ScheduleError::TooLong {
                        position: index + 1,
                    })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Self::new(gaps)
    }
}

impl fmt::Display for RetrySchedule {
    /// The env format, with sub-second parts dropped.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let items: Vec<String> = self
            .gaps
            .iter()
            .map(|gap| gap.as_secs().to_string())
            .collect();
        f.write_str(&items.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn secs(list: &[u64]) -> Vec<Duration> {
        list.iter().map(|s| Duration::from_secs(*s)).collect()
    }

    #[test]
    fn default_is_the_contract_schedule() {
        let schedule = RetrySchedule::default();
        assert_eq!(
            schedule.gaps(),
            secs(&[30, 300, 1800, 7200, 18000, 36000]).as_slice()
        );
        assert_eq!(schedule.max_attempts(), 7);
        assert_eq!(RetrySchedule::from_env_value(None), Ok(schedule.clone()));
        assert_eq!(schedule.to_string(), "30,300,1800,7200,18000,36000");
    }

    #[test]
    fn env_format_is_seconds_between_attempts() {
        let schedule: RetrySchedule = "1,2,4".parse().unwrap();
        assert_eq!(schedule.gaps(), secs(&[1, 2, 4]).as_slice());
        assert_eq!(schedule.max_attempts(), 4);
        assert_eq!(
            RetrySchedule::from_env_value(Some(" 0 , 5,10 "))
                .unwrap()
                .gaps(),
            secs(&[0, 5, 10]).as_slice()
        );
    }

    #[test]
    fn garbage_schedules_are_rejected_with_the_position() {
        assert_eq!(
            RetrySchedule::from_env_value(Some("")),
            Err(ScheduleError::Empty)
        );
        assert_eq!("  ".parse::<RetrySchedule>(), Err(ScheduleError::Empty));
        for (input, position, item) in [
            ("1,,2", 2, ""),
            ("1,2,", 3, ""),
            ("abc", 1, "abc"),
            ("1,-2", 2, "-2"),
            ("1,+2", 2, "+2"),
            ("1.5", 1, "1.5"),
            ("1;2", 1, "1;2"),
            ("30s,60s", 1, "30s"),
        ] {
            assert_eq!(
                input.parse::<RetrySchedule>(),
                Err(ScheduleError::NotSeconds {
                    position,
                    item: item.into()
                }),
                "{input:?}"
            );
        }
        assert_eq!(
            "1,2592001".parse::<RetrySchedule>(),
            Err(ScheduleError::TooLong { position: 2 })
        );
        assert_eq!(
            "99999999999999999999999".parse::<RetrySchedule>(),
            Err(ScheduleError::TooLong { position: 1 })
        );
        assert!("2592000".parse::<RetrySchedule>().is_ok());
        assert_eq!(RetrySchedule::new(Vec::new()), Err(ScheduleError::Empty));
        let message = "1,x".parse::<RetrySchedule>().unwrap_err().to_string();
        assert!(
            message.contains("item 2") && message.contains("\"x\""),
            "{message}"
        );
    }

    #[test]
    fn next_delay_walks_the_schedule_then_stops() {
        let schedule: RetrySchedule = "10,20,40".parse().unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        assert_eq!(schedule.next_delay(0, &mut rng), Some(Duration::ZERO));
        for (made, base) in [(1, 10), (2, 20), (3, 40)] {
            let delay = schedule.next_delay(made, &mut rng).unwrap();
            let base = Duration::from_secs(base);
            assert!(
                delay >= base && delay <= base + base / 10,
                "{made}: {delay:?}"
            );
        }
        assert_eq!(schedule.next_delay(4, &mut rng), None);
        assert_eq!(schedule.next_delay(usize::MAX, &mut rng), None);
    }

    #[test]
    fn jitter_actually_varies() {
        let schedule = RetrySchedule::default();
        let mut rng = StdRng::seed_from_u64(42);
        let delays: std::collections::HashSet<Duration> = (0..50)
            .map(|_| schedule.next_delay(6, &mut rng).unwrap())
            .collect();
        assert!(delays.len() > 40);
        assert!(delays
            .iter()
            .any(|d| *d > Duration::from_secs(36_000 + 1_800)));
    }

    proptest! {
        #[test]
        fn jitter_stays_within_ten_percent(
            gap_nanos in 0u64..=MAX_GAP.as_nanos() as u64,
            seed in any::<u64>(),
        ) {
            let gap = Duration::from_nanos(gap_nanos);
            let schedule = RetrySchedule::new(vec![gap]).unwrap();
            let mut rng = StdRng::seed_from_u64(seed);
            let delay = schedule.next_delay(1, &mut rng).unwrap();
            prop_assert!(delay >= gap);
            prop_assert!(delay.as_nanos() * 10 <= gap.as_nanos() * 11);
            prop_assert_eq!(schedule.next_delay(2, &mut rng), None);
        }
    }
}
