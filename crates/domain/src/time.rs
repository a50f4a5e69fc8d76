//! Time as the store keeps it: Unix milliseconds, the unit FormantAI's list endpoints use. One
//! integer type works the same on SQLite and PostgreSQL and sorts correctly in both.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Millis(pub i64);

impl Millis {
    pub fn now() -> Self {
        Self(Utc::now().timestamp_millis())
    }

    pub fn from_datetime(t: DateTime<Utc>) -> Self {
        Self(t.timestamp_millis())
    }

    pub fn to_datetime(self) -> DateTime<Utc> {
        Utc.timestamp_millis_opt(self.0)
            .single()
            .unwrap_or(DateTime::<Utc>::MIN_UTC)
    }

    /// `2026-04-08T14:00:00Z`: how `scheduled_for` is echoed (whole seconds unless the client
    /// gave a fraction).
    pub fn to_rfc3339(self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(SecondsFormat::AutoSi, true)
    }

    /// `2026-03-18T20:53:41.766Z`: webhook times always carry milliseconds.
    pub fn to_rfc3339_millis(self) -> String {
        self.to_datetime()
            .to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// `d` later (saturating: a lease of "forever" is the end of time, not an overflow).
    pub fn after(self, d: std::time::Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    pub fn plus_seconds(self, s: i64) -> Self {
        Self(self.0.saturating_add(s.saturating_mul(1000)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn after_adds_milliseconds_and_saturates() {
        assert_eq!(
            Millis(1_000).after(Duration::from_millis(1_500)),
            Millis(2_500)
        );
        assert_eq!(Millis(1).after(Duration::MAX), Millis(i64::MAX));
    }
}
