//! A tenant's do-not-call list (`spec/api-v1.md`, "Do-not-call list"): numbers that must never
//! be dialled again, whoever asked for it (the API, an import, the person called).

use crate::batch::{csv_with_header, next_row, row_number, CsvError};
use crate::store::{Listed, Page, StoreError};
use crate::{Millis, TenantId, E164};
use async_trait::async_trait;
use std::collections::HashSet;
use std::io::Read;

/// The `failure_reason` of a call settled because its number is listed.
pub const FAILURE_REASON: &str = "do-not-call";

/// Longest `reason`, in characters.
pub const MAX_REASON_CHARS: usize = 500;

/// The import file's column of numbers.
const NUMBER: &str = "number";
/// The import file's optional column of reasons.
const REASON: &str = "reason";

/// Who put a number on the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Api,
    /// The person called asked not to be called again.
    Call,
    Import,
}

impl Source {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Call => "call",
            Self::Import => "import",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Self::Api, Self::Call, Self::Import]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub number: E164,
    pub reason: Option<String>,
    pub source: Source,
    pub created_at: Millis,
}

/// A listing to write: the number, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listing {
    pub number: E164,
    pub reason: Option<String>,
}

/// What an import wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Imported {
    /// Rows in the file.
    pub total: u64,
    /// Numbers that were not on the list before.
    pub added: u64,
}

/// Reads an import file: a header with a `number` column and optionally a `reason` column
/// (other columns, such as a CRM export's, are ignored); one number per row, in any spelling
/// `POST /v1/call` accepts. A number twice in the file is refused as in a batch file, since it
/// usually means the wrong column or a broken export. Stops at the first bad row.
pub fn parse_listings<R: Read>(input: R, max_rows: usize) -> Result<Vec<Listing>, CsvError> {
    let (mut reader, names) = csv_with_header(input)?;
    let number_col = names
        .iter()
        .position(|n| n == NUMBER)
        .ok_or(CsvError::MissingColumn(NUMBER))?;
    let reason_col = names.iter().position(|n| n == REASON);
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut record = csv::ByteRecord::new();
    let mut row = 0usize;
    while next_row(&mut reader, &mut record, &mut row, max_rows)? {
        let digits = row_number(&record[number_col], NUMBER, row)?;
        if !seen.insert(digits) {
            return Err(CsvError::DuplicateNumber(NUMBER, row));
        }
        let reason = match reason_col {
            Some(i) => {
                let text =
                    std::str::from_utf8(&record[i]).map_err(|_| CsvError::InvalidUtf8(row))?;
                if text.chars().count() > MAX_REASON_CHARS {
                    return Err(CsvError::ValueTooLong(row));
                }
                if !crate::text::is_clean(text, false) {
                    return Err(CsvError::ControlCharacter(row));
                }
                Some(text.trim().to_string()).filter(|t| !t.is_empty())
            }
            None => None,
        };
        out.push(Listing {
            number: E164::from_trusted(format!("+{digits}")),
            reason,
        });
    }
    if out.is_empty() {
        return Err(CsvError::NoRows);
    }
    Ok(out)
}

#[async_trait]
pub trait DoNotCallStore: Send + Sync + 'static {
    /// Lists the number (a listed number keeps its first entry, which is returned) and, in the
    /// same transaction, cancels the tenant's calls to it that are still waiting to be dialled.
    async fn add_do_not_call(
        &self,
        tenant: TenantId,
        listing: Listing,
        source: Source,
        now: Millis,
    ) -> Result<Entry, StoreError>;
    /// Lists every number of a checked file in one transaction: all of them or none.
    async fn import_do_not_call(
        &self,
        tenant: TenantId,
        listings: Vec<Listing>,
        now: Millis,
    ) -> Result<Imported, StoreError>;
    async fn get_do_not_call(
        &self,
        tenant: TenantId,
        number: &E164,
    ) -> Result<Option<Entry>, StoreError>;
    /// Newest first.
    async fn list_do_not_call(
        &self,
        tenant: TenantId,
        page: Page,
    ) -> Result<Listed<Entry>, StoreError>;
    /// `false` when the number was not listed.
    async fn delete_do_not_call(&self, tenant: TenantId, number: &E164)
        -> Result<bool, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Vec<Listing>, CsvError> {
        parse_listings(s.as_bytes(), 1000)
    }

    #[test]
    fn numbers_are_normalised_and_reasons_kept() {
        let got =
            parse("name,number,reason\nA,+91 98765 43210,asked\nB,+1 (415) 555-2671,\n").unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].number.as_str(), "+919876543210");
        assert_eq!(got[0].reason.as_deref(), Some("asked"));
        assert_eq!(got[1].number.as_str(), "+14155552671");
        assert_eq!(got[1].reason, None);
    }

    #[test]
    fn bad_files_are_named_as_batch_files_are() {
        assert_eq!(
            parse("phone\n+919876543210\n").unwrap_err().to_string(),
            "number column is required"
        );
        assert_eq!(
            parse("number\n+919876543210\n12\n")
                .unwrap_err()
                .to_string(),
            "invalid number on row 2"
        );
        assert_eq!(
            parse("number\n+919876543210\n+91 98765 43210\n")
                .unwrap_err()
                .to_string(),
            "duplicate number on row 2"
        );
        assert_eq!(
            parse("number\n").unwrap_err().to_string(),
            "file has no rows"
        );
        assert_eq!(
            parse_listings("number\n+919876543210\n+919876543211\n".as_bytes(), 1)
                .unwrap_err()
                .to_string(),
            "file has more than 1 rows"
        );
    }
}
