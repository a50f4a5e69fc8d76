//! Rules that decide when an accepted call may ring a phone: calling windows in the callee's
//! local time, retry policy, and the records dispatch exchanges with the store.

use crate::agent::{AgentConfig, CallingWindow, RetryPolicy, WEEKDAYS};
use crate::call::{Parameter, RetryContext, TranscriptItem};
use crate::pacing::{CallsPerSecond, TokenBucket};
use crate::telephony::TrunkTarget;
use crate::tenant::TenantLimits;
use crate::{AgentId, CallStatus, ConversationId, Millis, TenantId, TraceId, E164};
use chrono::{DateTime, Datelike, Duration, NaiveTime, TimeZone, Timelike, Utc};
use chrono_tz::Tz;
use std::collections::HashMap;
use std::path::PathBuf;

/// Countries to their IANA zones, from the tz database's `zone.tab` (Debian's `tzdata`
/// installs it at /usr/share/zoneinfo/zone.tab); the zones' rules come from `chrono-tz`.
#[derive(Debug, Clone, Default)]
pub struct CountryZones(HashMap<String, Vec<Tz>>);

impl CountryZones {
    /// Parses `zone.tab`: `CC<TAB>coordinates<TAB>Zone/Name[<TAB>comment]`; `#` starts a comment.
    pub fn parse(zone_tab: &str) -> Self {
        let mut map: HashMap<String, Vec<Tz>> = HashMap::new();
        for line in zone_tab.lines().filter(|l| !l.starts_with('#')) {
            let mut cols = line.split('\t');
            let (Some(countries), Some(_), Some(zone)) = (cols.next(), cols.next(), cols.next())
            else {
                continue;
            };
            let Ok(tz) = zone.parse::<Tz>() else {
                continue;
            };
            for cc in countries.split(',') {
                map.entry(cc.to_string()).or_default().push(tz);
            }
        }
        Self(map)
    }

    /// Every zone of the number's country; empty when unknown.
    pub fn zones_for(&self, number: &E164) -> &[Tz] {
        number
            .region()
            .and_then(|r| self.0.get(&r))
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }
}

fn minutes(t: NaiveTime) -> u32 {
    t.hour() * 60 + t.minute()
}

fn day_allowed(window: &CallingWindow, weekday: chrono::Weekday) -> bool {
    let name = WEEKDAYS[weekday.num_days_from_monday() as usize];
    window.days.iter().any(|d| d == name)
}

/// Whether `at` lies inside the window in zone `tz`. An overnight window (end before start)
/// belongs to the day it starts on.
pub fn is_open(window: &CallingWindow, tz: &Tz, at: DateTime<Utc>) -> bool {
    let local = at.with_timezone(tz);
    let m = minutes(local.time());
    let (start, end) = window.minutes();
    if start < end {
        (start..end).contains(&m) && day_allowed(window, local.weekday())
    } else {
        (m >= start && day_allowed(window, local.weekday()))
            || (m < end && day_allowed(window, local.weekday().pred()))
    }
}

/// The earliest instant at or after `now` when the window is open in every one of `zones` (a
/// country spanning several zones is called only when it is a decent hour in all of them).
/// `None` when no such instant exists in the next 8 days (e.g. unknown zones: nobody is
/// called at an hour we cannot vouch for).
pub fn next_opening(
    window: &CallingWindow,
    zones: &[Tz],
    now: DateTime<Utc>,
) -> Option<DateTime<Utc>> {
    if zones.is_empty() {
        return None;
    }
    let open_everywhere = |t: DateTime<Utc>| zones.iter().all(|z| is_open(window, z, t));
    // The intersection of the zones' windows opens when the last of them opens, so the
    // candidates are now and every local opening time in the coming days.
    let (start, _) = window.minutes();
    let start_time = NaiveTime::from_hms_opt(start / 60, start % 60, 0)?;
    let mut candidates = vec![now];
    for tz in zones {
        let today = now.with_timezone(tz).date_naive();
        for d in 0..=8 {
            let date = today + Duration::days(d);
            if let Some(t) = tz
                .from_local_datetime(&date.and_time(start_time))
                .earliest()
            {
                let t = t.with_timezone(&Utc);
                if t >= now {
                    candidates.push(t);
                }
            }
        }
    }
    candidates.sort();
    candidates.into_iter().find(|t| open_everywhere(*t))
}

/// When the next attempt of a chain starts, if the agent's policy wants one.
pub fn retry_delay(
    policy: Option<&RetryPolicy>,
    outcome: CallStatus,
    attempt: u32,
) -> Option<std::time::Duration> {
    let p = policy?;
    let wanted = p.on.iter().any(|o| o == outcome.as_str());
    (wanted && attempt < p.max_attempts).then(|| std::time::Duration::from_secs(p.delay_seconds))
}

/// A call that has come due, with everything needed to decide on it and dial it.
#[derive(Debug, Clone)]
pub struct DueCall {
    pub id: ConversationId,
    pub tenant: TenantId,
    pub agent: AgentId,
    pub status: CallStatus,
    pub immediate: bool,
    pub customer_phone: E164,
    pub parameters: Vec<Parameter>,
    pub retry_context: Option<RetryContext>,
    pub trace_id: TraceId,
    pub due_at: Millis,
    /// `None` when the agent was deleted after the call was accepted.
    pub agent_config: Option<AgentConfig>,
    /// The trunk of the agent's number; `None` when there is none.
    pub trunk: Option<DueTrunk>,
    pub tenant_limits: TenantLimits,
}

#[derive(Debug, Clone)]
pub struct DueTrunk {
    pub id: crate::TrunkId,
    pub target: TrunkTarget,
    pub from: E164,
    pub max_concurrent_calls: Option<u32>,
    /// The trunk's pace; `None` = unpaced.
    pub max_calls_per_second: Option<CallsPerSecond>,
    /// The trunk's gate: no new INVITE before this (its pace, or a 503's `Retry-After`).
    pub dial_after: Option<Millis>,
}

impl DueTrunk {
    /// Why a call of this trunk waits in the trunk's line rather than being dialled from the
    /// claim of due calls, if it does: a paced trunk's calls always do (so they go in due
    /// order, one per token), an unpaced trunk's while its carrier's hold lasts.
    pub fn line_reason(&self, now: Millis) -> Option<String> {
        if let Some(rate) = self.max_calls_per_second {
            return Some(format!(
                "waiting for the trunk's pace (max_calls_per_second {})",
                rate.get()
            ));
        }
        match self.dial_after {
            Some(until) if !crate::pacing::gate_open(Some(until), now) => Some(format!(
                "the trunk asked to wait (503 Retry-After) until {}",
                until.to_rfc3339()
            )),
            _ => None,
        }
    }
}

/// A trunk with calls waiting in its line, and what its gate needs to know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrunkLane {
    pub trunk: crate::TrunkId,
    pub max_calls_per_second: Option<CallsPerSecond>,
    pub dial_after: Option<Millis>,
}

/// Caps checked, under lock, in the same transaction that marks a call `initiated`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DialLimits {
    pub trunk: Option<(crate::TrunkId, u32)>,
    pub agent: Option<u32>,
    pub tenant: Option<u32>,
    /// For calls that were scheduled: (calls, window seconds) per destination.
    pub per_number: Option<(u32, u32)>,
    /// The trunk's pace: the call takes the trunk's token, or waits in its line.
    pub pace: Option<(crate::TrunkId, TokenBucket)>,
}

/// A dialled call's progress as telephony reports it: `ringing`, or `in_progress` answered at
/// `at`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    pub id: ConversationId,
    pub status: CallStatus,
    pub at: Millis,
}

/// One call of a claim round that may be dialled.
#[derive(Debug, Clone)]
pub struct DialStart {
    pub id: ConversationId,
    pub trunk: Option<crate::TrunkId>,
    pub limits: DialLimits,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BeginDial {
    /// `initiated` is durable: dial now.
    Started,
    /// `initiated` is durable, and the trunk's pace booked the call's INVITE for this instant
    /// (less than [`crate::pacing::BOOK_AHEAD`] on): dial then.
    Booked(Millis),
    /// A cap is full; try again after this time.
    Deferred { until: Millis, reason: String },
    /// Cancelled, or taken by another node, in the meantime: do nothing.
    Gone,
    /// The number is on the tenant's do-not-call list: the store has settled the call
    /// `canceled` (`do-not-call`) with its event, in the transaction that would have started it.
    Listed,
    /// The trunk's token was taken meanwhile (another node dialled through it): the store has
    /// put the call (back) in the trunk's line, where it keeps its place.
    Paced,
}

/// Everything a finished attempt writes, in one transaction.
#[derive(Debug, Clone)]
pub struct FinishAttempt {
    pub id: ConversationId,
    pub node: String,
    pub status: CallStatus,
    pub failure_reason: Option<String>,
    pub ended_at: Millis,
    pub duration_seconds: Option<i64>,
    pub recording_path: Option<PathBuf>,
    pub transcript: Vec<TranscriptItem>,
    pub results: serde_json::Map<String, serde_json::Value>,
    /// The agent's latency, for a call that was talked on.
    pub latency: Option<crate::call::CallLatency>,
    /// The stage the conversation was in when it ended (`None`: never talked on).
    pub stage_id: Option<String>,
    /// Who picked up (`None`: never answered).
    pub answered_by: Option<crate::call::AnsweredBy>,
    /// The hand-over to a person, if one was tried.
    pub transfer: Option<crate::call::Transfer>,
    /// The callee asked not to be called again: the number goes on the tenant's do-not-call
    /// list (`source: call`) in the settling transaction.
    pub opted_out: bool,
    /// Base URL of the API, for the webhook's `recording_url`.
    pub public_url: String,
    /// The post-call transcript its agent asks for, written with the settlement
    /// ([`crate::transcription::PostCallJob::for_call`]).
    pub post_call: Option<crate::transcription::PostCallJob>,
}

impl FinishAttempt {
    /// An attempt ended with `status` and nothing talked: no transcript, results, recording
    /// or webhook base URL. Callers set what they have on top (`..FinishAttempt::bare`).
    pub fn bare(id: ConversationId, node: &str, status: CallStatus, ended_at: Millis) -> Self {
        Self {
            id,
            node: node.to_string(),
            status,
            failure_reason: None,
            ended_at,
            duration_seconds: None,
            recording_path: None,
            transcript: Vec::new(),
            results: Default::default(),
            latency: None,
            stage_id: None,
            answered_by: None,
            transfer: None,
            opted_out: false,
            public_url: String::new(),
            post_call: None,
        }
    }

    /// The settlement of a call its node stopped holding (died, or its stop's grace ran out):
    /// `failed` / [`INTERRUPTED`], nothing talked, settled as of `now`. The table's
    /// `Interrupt` is this end; the retry policy decides what comes next, as for any failure.
    pub fn interrupted(id: ConversationId, node: &str, public_url: &str, now: Millis) -> Self {
        Self {
            failure_reason: Some(INTERRUPTED.into()),
            public_url: public_url.to_string(),
            ..Self::bare(id, node, CallStatus::Failed, now)
        }
    }

    /// The end this report settles, for [`crate::lifecycle::settle::settle`].
    pub fn event(&self) -> crate::lifecycle::settle::Event {
        crate::lifecycle::settle::Event::Ended(crate::lifecycle::settle::Ended {
            outcome: self.status,
            opted_out: self.opted_out,
            public_url: self.public_url.clone(),
            post_call: self.post_call.clone(),
        })
    }
}

/// The `failure_reason` of a call settled because its node stopped holding it.
pub const INTERRUPTED: &str = "interrupted";

/// What a settlement decided that the node that asked for it logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// The chain's next attempt is due then.
    pub retry_at: Option<Millis>,
}

/// A live call whose node stopped renewing its lease.
#[derive(Debug, Clone)]
pub struct OrphanedCall {
    pub id: ConversationId,
}

/// What `POST /v1/conversations/{id}/cancel` found.
#[derive(Debug, Clone)]
pub enum CancelOutcome {
    Canceled(Box<crate::call::Conversation>),
    /// Dialling has begun (or the call already ended): too late to cancel.
    AlreadyStarted,
    NotFound,
}

/// The store's side of dispatch. Every method that changes a call is fenced by the lease: a
/// node acts only on calls it holds, or whose holder's lease has run out.
#[async_trait::async_trait]
pub trait DispatchStore: Send + Sync + 'static {
    /// When the dispatcher next has something to do: the earliest `due_at` of a call waiting to
    /// be dialled that no node holds and no trunk's line keeps, or the earliest time a trunk
    /// with such calls in its line gives some ([`crate::pacing::line_due`]). Must stay index
    /// walks: it runs on every wake-up.
    async fn next_due_at(&self, now: Millis) -> Result<Option<Millis>, crate::store::StoreError>;
    /// Leases up to `limit` due calls (`scheduled`/`queued`, `due_at <= now`, not leased by a
    /// live node, in no trunk's line) to `node` until `lease_until`.
    async fn claim_due(
        &self,
        node: &str,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<DueCall>, crate::store::StoreError>;
    /// Puts the due calls of `trunk` that nobody else holds (those `node` holds included) in
    /// the trunk's line, `queued`, leases released, each with an event saying `reason`: from
    /// there they are taken in due order as the trunk's gate allows, and the claim of due calls
    /// no longer walks past them. Returns how many.
    async fn park_calls(
        &self,
        node: &str,
        trunk: crate::TrunkId,
        now: Millis,
        reason: &str,
    ) -> Result<u64, crate::store::StoreError>;
    /// The trunks with calls in their line that nobody holds.
    async fn trunk_lanes(&self, now: Millis) -> Result<Vec<TrunkLane>, crate::store::StoreError>;
    /// Leases the first `limit` calls of `trunk`'s line (by due time) that nobody holds.
    async fn claim_lane(
        &self,
        node: &str,
        trunk: crate::TrunkId,
        now: Millis,
        lease_until: Millis,
        limit: u32,
    ) -> Result<Vec<DueCall>, crate::store::StoreError>;
    /// Shuts `trunk`'s gate until `until` (its carrier's 503 `Retry-After`); a gate already
    /// shut for longer stays so.
    async fn hold_trunk(
        &self,
        trunk: crate::TrunkId,
        until: Millis,
    ) -> Result<(), crate::store::StoreError>;
    /// Puts a claimed call back to wait (`queued`) until `until`, releasing the lease (and
    /// taking it out of a trunk's line: its own wait decides when it is due again).
    async fn defer_call(
        &self,
        id: ConversationId,
        node: &str,
        until: Millis,
        reason: &str,
    ) -> Result<(), crate::store::StoreError>;
    /// Checks the caps under lock and, if there is room, makes `initiated` durable: after `Ok(Started)`
    /// the call may be dialled, and never again.
    async fn begin_dial(
        &self,
        id: ConversationId,
        node: &str,
        now: Millis,
        lease_until: Millis,
        trunk: Option<crate::TrunkId>,
        limits: &DialLimits,
    ) -> Result<BeginDial, crate::store::StoreError>;
    /// [`DispatchStore::begin_dial`] for a whole claim round in one transaction.
    async fn begin_dials(
        &self,
        node: &str,
        now: Millis,
        lease_until: Millis,
        calls: &[DialStart],
    ) -> Result<Vec<BeginDial>, crate::store::StoreError>;
    /// `ringing` or `in_progress` (with the answer time).
    async fn mark_progress(
        &self,
        id: ConversationId,
        node: &str,
        status: CallStatus,
        at: Millis,
    ) -> Result<bool, crate::store::StoreError>;
    /// [`DispatchStore::mark_progress`] for many calls in one transaction, each answered in the
    /// marks' order. A failed transaction is written again one mark per transaction, so one bad
    /// mark fails alone.
    async fn mark_progresses(
        &self,
        node: &str,
        marks: &[Progress],
    ) -> Vec<Result<bool, crate::store::StoreError>>;
    async fn renew_leases(
        &self,
        node: &str,
        ids: &[ConversationId],
        until: Millis,
    ) -> Result<(), crate::store::StoreError>;
    /// Settles an attempt in one transaction, as [`crate::lifecycle::settle::settle`] decides
    /// (the chain's next attempt included); `None` when the call was not this node's to settle.
    async fn finish_attempt(
        &self,
        finish: FinishAttempt,
        now: Millis,
    ) -> Result<Option<Settled>, crate::store::StoreError>;
    /// [`DispatchStore::finish_attempt`] for many attempts in one transaction: one answer per
    /// attempt, in order, each what settling them one by one in that order would have
    /// answered (a call not this node's to settle answers `None`, alone). If that transaction
    /// fails, each attempt is settled again in a transaction of its own, so one bad attempt
    /// fails alone and the others are settled.
    async fn finish_attempts(
        &self,
        finishes: Vec<FinishAttempt>,
        now: Millis,
    ) -> Vec<Result<Option<Settled>, crate::store::StoreError>>;
    /// Live calls whose lease ran out before `now`: their node died mid-call.
    async fn orphaned_calls(
        &self,
        now: Millis,
        limit: u32,
    ) -> Result<Vec<OrphanedCall>, crate::store::StoreError>;
    async fn cancel_call(
        &self,
        tenant: TenantId,
        id: ConversationId,
        now: Millis,
    ) -> Result<CancelOutcome, crate::store::StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: &str, end: &str, days: &[&str]) -> CallingWindow {
        CallingWindow {
            start: start.into(),
            end: end.into(),
            days: days.iter().map(|d| d.to_string()).collect(),
        }
    }

    fn utc(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    const KOLKATA: Tz = chrono_tz::Asia::Kolkata;

    #[test]
    fn india_window_in_local_time() {
        let w = window(
            "09:00",
            "21:00",
            &["mon", "tue", "wed", "thu", "fri", "sat"],
        );
        // 2026-11-25 is a Wednesday. 02:00 UTC is 07:30 in Kolkata: wait until 09:00 IST.
        let t = next_opening(&w, &[KOLKATA], utc("2026-11-25T02:00:00Z")).unwrap();
        assert_eq!(t, utc("2026-11-25T03:30:00Z"));
        // Inside the window: now.
        let now = utc("2026-11-25T06:00:00Z");
        assert_eq!(next_opening(&w, &[KOLKATA], now), Some(now));
        // Saturday 21:30 IST: Sunday is off, so Monday 09:00 IST.
        let t = next_opening(&w, &[KOLKATA], utc("2026-11-28T16:00:00Z")).unwrap();
        assert_eq!(t, utc("2026-11-30T03:30:00Z"));
        // The end is exclusive.
        assert!(!is_open(&w, &KOLKATA, utc("2026-11-25T15:30:00Z")));
        assert!(is_open(&w, &KOLKATA, utc("2026-11-25T15:29:00Z")));
    }

    #[test]
    fn a_country_with_several_zones_is_called_only_when_all_are_open() {
        let w = window("09:00", "21:00", &WEEKDAYS);
        let us = [
            chrono_tz::America::New_York,
            chrono_tz::America::Los_Angeles,
        ];
        // 14:00 UTC = 09:00 New York, 06:00 Los Angeles: wait for 09:00 in Los Angeles (17:00 UTC).
        assert_eq!(
            next_opening(&w, &us, utc("2026-11-25T14:00:00Z")),
            Some(utc("2026-11-25T17:00:00Z"))
        );
        // After 21:00 New York (02:00 UTC) nobody is called until the next day's 17:00 UTC.
        assert_eq!(
            next_opening(&w, &us, utc("2026-11-26T02:30:00Z")),
            Some(utc("2026-11-26T17:00:00Z"))
        );
        assert_eq!(next_opening(&w, &[], utc("2026-11-26T02:30:00Z")), None);
    }

    #[test]
    fn overnight_windows_and_dst() {
        let w = window("22:00", "02:00", &["fri"]);
        let berlin = chrono_tz::Europe::Berlin;
        // Friday 23:00 and Saturday 01:00 Berlin belong to Friday's window; Saturday 23:00 does not.
        assert!(is_open(&w, &berlin, utc("2026-11-27T22:00:00Z")));
        assert!(is_open(&w, &berlin, utc("2026-11-28T00:00:00Z")));
        assert!(!is_open(&w, &berlin, utc("2026-11-28T22:00:00Z")));
        // Around a DST change the local opening time still holds: 09:00 Berlin is 07:00 UTC in
        // summer (2026-03-30, Monday) and 08:00 UTC in winter (2026-03-27, Friday).
        let day = window("09:00", "17:00", &WEEKDAYS);
        assert_eq!(
            next_opening(&day, &[berlin], utc("2026-03-27T05:00:00Z")),
            Some(utc("2026-03-27T08:00:00Z"))
        );
        assert_eq!(
            next_opening(&day, &[berlin], utc("2026-03-30T05:00:00Z")),
            Some(utc("2026-03-30T07:00:00Z"))
        );
    }

    #[test]
    fn zone_tab_parsing() {
        let tab = "# comment\nIN\t+2232+08822\tAsia/Kolkata\nUS\t+404251-0740023\tAmerica/New_York\tEastern\nUS\t+340308-1181434\tAmerica/Los_Angeles\tPacific\nXX\t+0\tNot/AZone\n";
        let z = CountryZones::parse(tab);
        assert_eq!(
            z.zones_for(&E164::parse("+919876543210").unwrap()),
            &[KOLKATA]
        );
        assert_eq!(z.zones_for(&E164::parse("+14155552671").unwrap()).len(), 2);
        assert!(z
            .zones_for(&E164::parse("+442079460958").unwrap())
            .is_empty());
    }

    #[test]
    fn retry_policy_decides_by_outcome_and_attempt() {
        let p = RetryPolicy {
            on: vec!["busy".into(), "no_answer".into()],
            max_attempts: 3,
            delay_seconds: 60,
        };
        assert_eq!(
            retry_delay(Some(&p), CallStatus::Busy, 1),
            Some(std::time::Duration::from_secs(60))
        );
        assert_eq!(
            retry_delay(Some(&p), CallStatus::NoAnswer, 2),
            Some(std::time::Duration::from_secs(60))
        );
        assert_eq!(
            retry_delay(Some(&p), CallStatus::Busy, 3),
            None,
            "max_attempts counts the first"
        );
        assert_eq!(retry_delay(Some(&p), CallStatus::Completed, 1), None);
        assert_eq!(retry_delay(Some(&p), CallStatus::Failed, 1), None);
        assert_eq!(retry_delay(None, CallStatus::Busy, 1), None);
    }
}
