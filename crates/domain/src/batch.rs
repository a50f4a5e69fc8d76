//! Batch calls: a CSV of recipients becomes a campaign of calls of one agent, with counters kept
//! per recipient by its latest attempt.
//!
//! The CSV is read once, row by row, into [`Recipients`], a compact columnar form (a number as
//! an integer, the other values in one string arena), so a 1,000,000-row file costs tens of
//! megabytes, never the file twice.

use crate::{AgentId, CallStatus, Millis, TenantId, TraceId, E164};
use async_trait::async_trait;
use std::collections::HashSet;
use std::fmt;
use std::io::Read;

/// Limits of `POST /v1/batch-call`; configurable because a small deployment may want less.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Largest accepted `file`, in bytes.
    pub max_bytes: u64,
    /// Most data rows (recipients) in one file.
    pub max_rows: usize,
}

impl Default for BatchLimits {
    fn default() -> Self {
        Self {
            max_bytes: 50 * 1024 * 1024,
            max_rows: 1_000_000,
        }
    }
}

/// The limits `POST /v1/call` puts on parameters, applied to every row so a batch call is no
/// different from a single one.
const MAX_PARAMETERS: usize = 100;
const MAX_PARAMETER_NAME: usize = 128;
const MAX_PARAMETER_VALUE: usize = 4096;

/// Why a file was refused. Rows are data rows counted from 1 (the header is not a row); a quoted
/// field may span lines, so file line numbers would not name a row reliably.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsvError {
    /// The file has no column of the numbers to call (or to list).
    #[error("{0} column is required")]
    MissingColumn(&'static str),
    #[error("invalid header")]
    InvalidHeader,
    #[error("file has no rows")]
    NoRows,
    #[error("file has more than {0} rows")]
    TooManyRows(usize),
    #[error("invalid {0} on row {1}")]
    InvalidNumber(&'static str, usize),
    #[error("duplicate {0} on row {1}")]
    DuplicateNumber(&'static str, usize),
    /// The header itself is not UTF-8: most likely not a text file at all.
    #[error("file must be UTF-8")]
    NotUtf8,
    #[error("invalid UTF-8 on row {0}")]
    InvalidUtf8(usize),
    #[error("wrong number of fields on row {0}")]
    WrongFieldCount(usize),
    #[error("value too long on row {0}")]
    ValueTooLong(usize),
    /// A control character (NUL, escape, ...) in a value; line breaks and tabs are text.
    #[error("invalid character on row {0}")]
    ControlCharacter(usize),
    #[error("file is not valid CSV on row {0}")]
    Malformed(usize),
}

/// Every recipient of a file, checked. Numbers are held as their E.164 digits (at most 15, so
/// they fit a `u64`), which also makes the duplicate check exact and cheap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recipients {
    /// The extra columns' names, in file order; each becomes a call parameter.
    pub columns: Vec<String>,
    phones: Vec<u64>,
    arena: String,
    /// End offset in `arena` of every value, row-major (`columns.len()` per row).
    ends: Vec<u32>,
}

impl Recipients {
    pub fn len(&self) -> usize {
        self.phones.len()
    }

    pub fn is_empty(&self) -> bool {
        self.phones.is_empty()
    }

    /// The `i`th recipient's number in E.164.
    pub fn phone(&self, i: usize) -> String {
        format!("+{}", self.phones[i])
    }

    /// The `i`th recipient's extra values, in column order.
    pub fn values(&self, i: usize) -> impl Iterator<Item = &str> {
        let n = self.columns.len();
        (i * n..(i + 1) * n).map(move |k| {
            let start = if k == 0 { 0 } else { self.ends[k - 1] as usize };
            &self.arena[start..self.ends[k] as usize]
        })
    }

    /// The `i`th recipient's call parameters as stored for a call: `customer_phone` first, as
    /// `POST /v1/call` requires it among the parameters, then the extra columns.
    pub fn parameters_json(&self, i: usize) -> Result<String, serde_json::Error> {
        let mut params = Vec::with_capacity(self.columns.len() + 1);
        let phone = self.phone(i);
        params.push(serde_json::json!({"name": "customer_phone", "value": phone}));
        for (name, value) in self.columns.iter().zip(self.values(i)) {
            params.push(serde_json::json!({"name": name, "value": value}));
        }
        serde_json::to_string(&params)
    }
}

/// The batch file's column of numbers to call.
const PHONE: &str = "customer_phone";

/// A CSV reader past its checked header: UTF-8 with or without a BOM, CRLF or LF, RFC 4180
/// quoting, non-empty, clean and distinct column names.
pub(crate) fn csv_with_header<R: Read>(
    input: R,
) -> Result<(csv::Reader<R>, Vec<String>), CsvError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .flexible(false)
        .from_reader(input);
    let header = reader
        .byte_headers()
        .map_err(|e| csv_error(&e, 0))
        .map_err(|e| match e {
            CsvError::InvalidUtf8(_) => CsvError::NotUtf8,
            other => other,
        })?
        .clone();
    if header.is_empty() {
        return Err(CsvError::NoRows);
    }
    let mut names: Vec<String> = Vec::with_capacity(header.len());
    for raw in header.iter() {
        let name = std::str::from_utf8(raw).map_err(|_| CsvError::NotUtf8)?;
        // A BOM the reader left in place would hide the first column's name.
        let name = name.trim_start_matches('\u{feff}').trim();
        if name.is_empty()
            || name.chars().count() > MAX_PARAMETER_NAME
            || !crate::text::is_clean(name, false)
            || names.iter().any(|n| n == name)
        {
            return Err(CsvError::InvalidHeader);
        }
        names.push(name.to_string());
    }
    Ok((reader, names))
}

/// Reads one data row; `Ok(false)` at the end of the file. `row` counts the rows read so far.
pub(crate) fn next_row<R: Read>(
    reader: &mut csv::Reader<R>,
    record: &mut csv::ByteRecord,
    row: &mut usize,
    max_rows: usize,
) -> Result<bool, CsvError> {
    if !reader
        .read_byte_record(record)
        .map_err(|e| csv_error(&e, *row + 1))?
    {
        return Ok(false);
    }
    *row += 1;
    if *row > max_rows {
        return Err(CsvError::TooManyRows(max_rows));
    }
    Ok(true)
}

/// A row's number in `column` (named `name` in errors), as E.164 digits.
pub(crate) fn row_number(raw: &[u8], name: &'static str, row: usize) -> Result<u64, CsvError> {
    let text = std::str::from_utf8(raw).map_err(|_| CsvError::InvalidUtf8(row))?;
    E164::parse(text)
        .ok()
        .and_then(|p| p.as_str()[1..].parse().ok())
        .ok_or(CsvError::InvalidNumber(name, row))
}

/// Reads and checks a whole CSV file (see [`csv_with_header`]) with exactly one
/// `customer_phone` column. Stops at the first bad row.
pub fn parse_recipients<R: Read>(input: R, max_rows: usize) -> Result<Recipients, CsvError> {
    let (mut reader, names) = csv_with_header(input)?;
    let mut phone_col = None;
    let mut columns = Vec::new();
    for (i, name) in names.into_iter().enumerate() {
        if name == PHONE {
            phone_col = Some(i);
        } else {
            columns.push(name);
        }
    }
    let phone_col = phone_col.ok_or(CsvError::MissingColumn(PHONE))?;
    if columns.len() + 1 > MAX_PARAMETERS {
        return Err(CsvError::InvalidHeader);
    }

    let mut out = Recipients {
        columns,
        ..Default::default()
    };
    let mut numbers = HashSet::new();
    let mut record = csv::ByteRecord::new();
    let mut row = 0usize;
    while next_row(&mut reader, &mut record, &mut row, max_rows)? {
        // The number first: a bad number is the better message for a row that is also bad
        // elsewhere.
        let digits = row_number(&record[phone_col], PHONE, row)?;
        if !numbers.insert(digits) {
            return Err(CsvError::DuplicateNumber(PHONE, row));
        }
        out.phones.push(digits);
        for (i, raw) in record.iter().enumerate() {
            if i == phone_col {
                continue;
            }
            let value = std::str::from_utf8(raw).map_err(|_| CsvError::InvalidUtf8(row))?;
            if value.chars().count() > MAX_PARAMETER_VALUE {
                return Err(CsvError::ValueTooLong(row));
            }
            if !crate::text::is_clean(value, true) {
                return Err(CsvError::ControlCharacter(row));
            }
            out.arena.push_str(value);
            let end = u32::try_from(out.arena.len()).map_err(|_| CsvError::TooManyRows(row))?;
            out.ends.push(end);
        }
    }
    if out.phones.is_empty() {
        return Err(CsvError::NoRows);
    }
    out.phones.shrink_to_fit();
    out.ends.shrink_to_fit();
    out.arena.shrink_to_fit();
    Ok(out)
}

fn csv_error(e: &csv::Error, row: usize) -> CsvError {
    match e.kind() {
        csv::ErrorKind::UnequalLengths { .. } => CsvError::WrongFieldCount(row),
        csv::ErrorKind::Utf8 { .. } => CsvError::InvalidUtf8(row),
        _ => CsvError::Malformed(row),
    }
}

/// `pending` until the first dial, `in_progress` while any recipient is unfinished, `completed`
/// when none is; `paused` and `canceled` are ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchStatus {
    Pending,
    InProgress,
    Completed,
    Paused,
    Canceled,
}

impl BatchStatus {
    pub const ALL: [BatchStatus; 5] = [
        Self::Pending,
        Self::InProgress,
        Self::Completed,
        Self::Paused,
        Self::Canceled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::InProgress => "in_progress",
            Self::Completed => "completed",
            Self::Paused => "paused",
            Self::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

impl fmt::Display for BatchStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A checked upload, ready to be written all or nothing.
#[derive(Debug, Clone)]
pub struct NewBatch {
    pub tenant: TenantId,
    pub agent: AgentId,
    pub name: String,
    pub scheduled_for: Option<Millis>,
    pub recipients: Recipients,
    /// The upload request's trace id; every call of the batch carries it, as a retry carries
    /// the trace id of the request that created its chain.
    pub trace_id: TraceId,
    pub now: Millis,
}

/// Per-recipient counters, by each recipient's latest attempt. They always add up:
/// `pending + in_progress + pending_retry + processed() == total_recipients`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BatchCounts {
    pub pending: i64,
    pub in_progress: i64,
    pub pending_retry: i64,
    pub completed: i64,
    pub busy: i64,
    pub no_answer: i64,
    /// Includes `telephony_failed`.
    pub failed: i64,
    pub socket_failure: i64,
    pub unreachable: i64,
    pub canceled: i64,
    /// Sum of completed calls' durations, for the average.
    pub completed_duration_seconds: i64,
}

impl BatchCounts {
    /// Recipients with a final outcome: no further attempt is coming.
    pub fn processed(&self) -> i64 {
        self.completed
            + self.busy
            + self.no_answer
            + self.failed
            + self.socket_failure
            + self.unreachable
            + self.canceled
    }

    pub fn unfinished(&self) -> i64 {
        self.pending + self.in_progress + self.pending_retry
    }
}

/// One of a batch's per-recipient counters: where a recipient is counted, by its latest
/// attempt. A settlement moves a recipient from one to another ([`BatchCounts::moved`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BatchCounter {
    Pending,
    InProgress,
    PendingRetry,
    Completed,
    Busy,
    NoAnswer,
    Failed,
    SocketFailure,
    Unreachable,
    Canceled,
}

impl BatchCounter {
    pub const ALL: [BatchCounter; 10] = [
        Self::Pending,
        Self::InProgress,
        Self::PendingRetry,
        Self::Completed,
        Self::Busy,
        Self::NoAnswer,
        Self::Failed,
        Self::SocketFailure,
        Self::Unreachable,
        Self::Canceled,
    ];

    /// Where a recipient waiting for this attempt is counted: its first attempt is `pending`,
    /// a later one `pending_retry`.
    pub fn waiting(attempt: u32) -> Self {
        if attempt > 1 {
            Self::PendingRetry
        } else {
            Self::Pending
        }
    }

    /// The counter a settled attempt with no next attempt lands in.
    pub fn outcome(status: CallStatus) -> Self {
        match status {
            CallStatus::Completed => Self::Completed,
            CallStatus::Busy => Self::Busy,
            CallStatus::NoAnswer => Self::NoAnswer,
            CallStatus::Unreachable => Self::Unreachable,
            CallStatus::SocketFailure => Self::SocketFailure,
            CallStatus::Canceled => Self::Canceled,
            // `failed` and `telephony_failed` are one counter in the contract; a non-terminal
            // status cannot be an attempt's end, so it is counted as the failure it would be.
            _ => Self::Failed,
        }
    }

    /// Still to be called (or being called): not a final outcome.
    pub fn unfinished(self) -> bool {
        matches!(self, Self::Pending | Self::InProgress | Self::PendingRetry)
    }
}

impl BatchCounts {
    /// The counter's value.
    pub fn get(&self, counter: BatchCounter) -> i64 {
        *self.slot(counter)
    }

    fn slot(&self, counter: BatchCounter) -> &i64 {
        match counter {
            BatchCounter::Pending => &self.pending,
            BatchCounter::InProgress => &self.in_progress,
            BatchCounter::PendingRetry => &self.pending_retry,
            BatchCounter::Completed => &self.completed,
            BatchCounter::Busy => &self.busy,
            BatchCounter::NoAnswer => &self.no_answer,
            BatchCounter::Failed => &self.failed,
            BatchCounter::SocketFailure => &self.socket_failure,
            BatchCounter::Unreachable => &self.unreachable,
            BatchCounter::Canceled => &self.canceled,
        }
    }

    fn slot_mut(&mut self, counter: BatchCounter) -> &mut i64 {
        match counter {
            BatchCounter::Pending => &mut self.pending,
            BatchCounter::InProgress => &mut self.in_progress,
            BatchCounter::PendingRetry => &mut self.pending_retry,
            BatchCounter::Completed => &mut self.completed,
            BatchCounter::Busy => &mut self.busy,
            BatchCounter::NoAnswer => &mut self.no_answer,
            BatchCounter::Failed => &mut self.failed,
            BatchCounter::SocketFailure => &mut self.socket_failure,
            BatchCounter::Unreachable => &mut self.unreachable,
            BatchCounter::Canceled => &mut self.canceled,
        }
    }

    /// These counts (as deltas) with one recipient moved from `from` to `to`, and `duration`
    /// seconds added to the completed calls' sum. Every move keeps the total unchanged.
    pub fn moved(mut self, from: BatchCounter, to: BatchCounter, duration: i64) -> Self {
        *self.slot_mut(from) -= 1;
        *self.slot_mut(to) += 1;
        self.completed_duration_seconds += duration;
        self
    }

    /// The sum of every counter (the batch's recipients, for counts; 0 for the deltas of moves).
    pub fn total(&self) -> i64 {
        self.unfinished() + self.processed()
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub id: i64,
    pub tenant: TenantId,
    pub agent: AgentId,
    pub name: String,
    pub status: BatchStatus,
    pub total_recipients: i64,
    pub counts: BatchCounts,
    pub scheduled_for: Option<Millis>,
    pub started_at: Option<Millis>,
    pub created_at: Millis,
    pub updated_at: Millis,
}

#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error("agent not found")]
    AgentNotFound,
    #[error("agent has no phone number configured")]
    AgentHasNoNumber,
    #[error("batch not found")]
    NotFound,
    /// The batch is already settled (`completed` or `canceled`) and cannot change.
    #[error("batch already {0}")]
    Finished(BatchStatus),
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

/// What a pause, resume or cancel asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchAction {
    Pause,
    Resume,
    Cancel,
}

#[async_trait]
pub trait BatchStore: Send + Sync + 'static {
    /// Checks the agent and writes the batch and one `scheduled` call per recipient in one
    /// transaction: all of them or none.
    async fn create_batch(&self, batch: NewBatch) -> Result<Batch, BatchError>;
    async fn get_batch(&self, tenant: TenantId, id: i64) -> Result<Option<Batch>, BatchError>;
    async fn list_batches(
        &self,
        tenant: TenantId,
        agent: Option<AgentId>,
        page: crate::store::Page,
    ) -> Result<crate::store::Listed<Batch>, BatchError>;
    /// Pause stops new dials of the batch's calls; resume lets them go again; cancel settles
    /// every recipient not yet dialled as `canceled`. None of them touches a live call.
    async fn change_batch(
        &self,
        tenant: TenantId,
        id: i64,
        action: BatchAction,
        now: Millis,
    ) -> Result<Batch, BatchError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &[u8]) -> Result<Recipients, CsvError> {
        parse_recipients(s, 1_000_000)
    }

    #[test]
    fn good_files() {
        let r = parse(b"\xef\xbb\xbfcustomer_phone,customer_name\r\n+919876543210,\"Rahul, Jr.\"\r\n+14155552671,\"two\nlines\"\r\n").unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r.columns, vec!["customer_name"]);
        assert_eq!(r.phone(0), "+919876543210");
        assert_eq!(r.values(0).collect::<Vec<_>>(), vec!["Rahul, Jr."]);
        assert_eq!(r.values(1).collect::<Vec<_>>(), vec!["two\nlines"]);
        assert_eq!(
            r.parameters_json(0).unwrap(),
            r#"[{"name":"customer_phone","value":"+919876543210"},{"name":"customer_name","value":"Rahul, Jr."}]"#
        );
        let one = parse(b"customer_phone\n+919876543210\n+91 98765 43211\n").unwrap();
        assert_eq!(one.len(), 2);
        assert_eq!(one.phone(1), "+919876543211");
        assert_eq!(one.values(1).count(), 0);
    }

    #[test]
    fn bad_files_name_the_first_bad_row() {
        assert_eq!(parse(b""), Err(CsvError::NoRows));
        assert_eq!(parse(b"customer_phone\n"), Err(CsvError::NoRows));
        assert_eq!(
            parse(b"+919876543210\n"),
            Err(CsvError::MissingColumn(PHONE))
        );
        assert_eq!(
            parse(b"phone,name\n+919876543210,a\n"),
            Err(CsvError::MissingColumn(PHONE))
        );
        assert_eq!(
            parse(b"customer_phone,a,a\n+919876543210,1,2\n"),
            Err(CsvError::InvalidHeader)
        );
        assert_eq!(
            parse(b"customer_phone\n+919876543210\n12345\n+919876543210\n"),
            Err(CsvError::InvalidNumber(PHONE, 2))
        );
        assert_eq!(
            parse(b"customer_phone\n+919876543210\n+91-98765-43210\n"),
            Err(CsvError::DuplicateNumber(PHONE, 2))
        );
        assert_eq!(
            parse(b"customer_phone,name\n+919876543210,\xff\n"),
            Err(CsvError::InvalidUtf8(1))
        );
        assert_eq!(
            parse(b"customer_phone,name\n+919876543210\n"),
            Err(CsvError::WrongFieldCount(1))
        );
        assert_eq!(
            parse_recipients(&b"customer_phone\n+919876543210\n+919876543211\n"[..], 1),
            Err(CsvError::TooManyRows(1))
        );
    }

    /// Deep in a big file, the first bad row is the one named, whichever check finds it.
    #[test]
    fn the_first_bad_row_is_named_deep_in_a_big_file() {
        const DEEP: usize = 16 * 1024;
        let n = DEEP * 2 + 100;
        let file = |edit: &dyn Fn(usize, String) -> String| {
            let mut s = String::from("customer_phone,name\n");
            for i in 0..n {
                s.push_str(&edit(i + 1, format!("+9198{i:08},n{i}\n")));
            }
            s
        };
        let ok = file(&|_, line| line);
        let r = parse(ok.as_bytes()).unwrap();
        assert_eq!(r.len(), n);
        assert_eq!(r.phone(n - 1), format!("+9198{:08}", n - 1));
        assert_eq!(
            r.values(DEEP + 7).collect::<Vec<_>>(),
            vec![format!("n{}", DEEP + 7)]
        );

        let far = DEEP + 5;
        // The good file with row `far` replaced by `text`.
        let with_far = |text: &str| {
            file(&|row, line| {
                if row == far {
                    text.to_owned()
                } else {
                    line
                }
            })
        };
        let bad_number = with_far("12345,x\n");
        assert_eq!(
            parse(bad_number.as_bytes()),
            Err(CsvError::InvalidNumber(PHONE, far))
        );
        // A duplicate of row 3.
        let dup = with_far("+919800000002,again\n");
        assert_eq!(
            parse(dup.as_bytes()),
            Err(CsvError::DuplicateNumber(PHONE, far))
        );
        // A bad number before a bad value: the number is named; a bad value
        // before a bad number: the value is.
        let long = "x".repeat(MAX_PARAMETER_VALUE + 1);
        let both = |num_row: usize, val_row: usize| {
            file(&|row, line| {
                if row == num_row {
                    "12345,x\n".into()
                } else if row == val_row {
                    format!("+919900000000,{long}\n")
                } else {
                    line
                }
            })
        };
        assert_eq!(
            parse(both(far, far + 3).as_bytes()),
            Err(CsvError::InvalidNumber(PHONE, far))
        );
        assert_eq!(
            parse(both(far + 3, far).as_bytes()),
            Err(CsvError::ValueTooLong(far))
        );
        let short = with_far("+919900000000\n");
        assert_eq!(parse(short.as_bytes()), Err(CsvError::WrongFieldCount(far)));
        let with_short_after = file(&|row, line| {
            if row == far {
                "12345,x\n".into()
            } else if row == far + 1 {
                "+919900000000\n".into()
            } else {
                line
            }
        });
        assert_eq!(
            parse(with_short_after.as_bytes()),
            Err(CsvError::InvalidNumber(PHONE, far))
        );
        assert_eq!(
            parse_recipients(ok.as_bytes(), far),
            Err(CsvError::TooManyRows(far))
        );
    }
}
