//! A call's life as data: every way its status may change, with the statuses it may change from.
//! `CallStatus::can_become` is read off this table, and the store builds the conditions of its
//! conditional updates (`WHERE status IN (...)`) from it, so the drawn machine and the enforced
//! one are the same list. What a settlement writes besides the status (history, webhook, retry,
//! batch counters) is decided by [`settle::settle`], from the same table.

pub mod settle;

use crate::call::CallStatus;
use std::fmt::Write as _;

/// What happens to a call, as far as its status is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transition {
    /// A due call waits again: a cap was full, its calling window closed, or its trunk's pace
    /// or hold keeps it in the trunk's line.
    Defer,
    /// Dialling begins. Durable before any INVITE leaves, so a crash after it never redials.
    Dial,
    /// The far end rings (180/183).
    Ring,
    /// The far end answered (200).
    Answer,
    /// Taken back before dialling (the API, a batch's cancel, a do-not-call entry).
    Cancel,
    /// A claimed call that could not be dialled at all (agent deleted, no trunk, window past).
    Refuse,
    /// A dialled attempt ended with this terminal outcome (busy, completed, failed, ...).
    End(CallStatus),
    /// The node dialling the call stopped holding it (died, or its stop's grace ran out).
    Interrupt,
}

use CallStatus::*;

// The order of these two lists is the order of the store's partial indexes (`calls_due`,
// `calls_dialing`): SQLite uses such an index only for a condition written exactly as its own.

/// Waiting to be dialled: the only statuses a call may be cancelled or claimed in.
pub const WAITING: &[CallStatus] = &[Scheduled, Queued];
/// Dialling has begun and the attempt has not ended: a node holds the call under a lease.
pub const DIALLED: &[CallStatus] = &[Initiated, Ringing, InProgress];

impl Transition {
    /// Every transition, with each dialled outcome once.
    pub fn all() -> impl Iterator<Item = Transition> {
        [
            Self::Defer,
            Self::Dial,
            Self::Ring,
            Self::Answer,
            Self::Cancel,
            Self::Refuse,
            Self::Interrupt,
        ]
        .into_iter()
        .chain(DIALLED_OUTCOMES.iter().map(|&s| Self::End(s)))
    }

    /// The statuses the call may be in for this transition to apply. Anything else is a race
    /// lost (cancelled while being claimed, settled by the sweep first) and changes nothing.
    pub fn from(self) -> &'static [CallStatus] {
        match self {
            Self::Defer | Self::Dial | Self::Cancel | Self::Refuse => WAITING,
            Self::Ring => &[Initiated],
            Self::Answer => &[Initiated, Ringing],
            // Any outcome from any dialled status: the ringing and answer marks are written on
            // their own, and one lost (or a 200 with no 180) must not keep the outcome out.
            Self::End(_) | Self::Interrupt => DIALLED,
        }
    }

    /// The status the call has afterwards. `None` for an `End` with a status that is no
    /// dialled outcome (a caller's bug the store refuses).
    pub fn to(self) -> Option<CallStatus> {
        match self {
            Self::Defer => Some(Queued),
            Self::Dial => Some(Initiated),
            Self::Ring => Some(Ringing),
            Self::Answer => Some(InProgress),
            Self::Cancel => Some(Canceled),
            Self::Refuse | Self::Interrupt => Some(Failed),
            Self::End(s) => DIALLED_OUTCOMES.contains(&s).then_some(s),
        }
    }

    /// `self.from()` as an SQL list (`'scheduled', 'queued'`), for `status IN (...)`.
    pub fn from_sql(self) -> String {
        sql_list(self.from())
    }
}

/// The terminal statuses a dialled attempt can end in. `canceled` is not one: once dialling
/// began a person may already hear the phone ring.
const DIALLED_OUTCOMES: &[CallStatus] = &[
    Completed,
    Failed,
    Busy,
    NoAnswer,
    Unreachable,
    TelephonyFailed,
    SocketFailure,
];

/// Statuses as an SQL list of string literals. Status spellings are fixed identifiers (no
/// quotes), so the list is safe to put in a statement.
pub fn sql_list(statuses: &[CallStatus]) -> String {
    let mut out = String::new();
    for (i, s) in statuses.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(out, "{sep}'{}'", s.as_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_statuses_are_left_by_no_transition() {
        for t in Transition::all() {
            assert!(t.from().iter().all(|s| !s.is_terminal()), "{t:?}");
            assert!(t.to().is_some(), "{t:?}");
        }
        assert_eq!(Transition::End(Canceled).to(), None);
        assert_eq!(Transition::End(Queued).to(), None);
    }

    #[test]
    fn every_status_but_scheduled_is_reached_and_every_live_one_left() {
        for s in CallStatus::ALL {
            let reached = Transition::all().any(|t| t.to() == Some(s));
            let left = Transition::all().any(|t| t.from().contains(&s));
            assert_eq!(reached, s != Scheduled, "{s}");
            assert_eq!(left, !s.is_terminal(), "{s}");
        }
    }

    #[test]
    fn the_sql_list_names_each_status_quoted() {
        assert_eq!(Transition::Cancel.from_sql(), "'scheduled', 'queued'");
        assert_eq!(sql_list(DIALLED), "'initiated', 'ringing', 'in_progress'");
    }
}
