//! Deep pages of a newest-first list at the cost of the first page.
//!
//! The contract pages conversations by `limit`/`offset`, newest first. An `OFFSET` of a million
//! makes the database walk a million index entries. Rows are only ever added at the new end of
//! the list (a batch upload's rows, written earlier, are the exception the store handles), so a
//! row's place counted from the OLDEST end never changes. A background pass writes a mark every
//! so many rows: "the row with this key is the n-th, oldest first". A page is then found from the
//! nearest mark below it, with a walk of at most one mark's spacing.
//!
//! Everything here is arithmetic on positions; the store reads the marks and the rows.

use crate::store::Page;

/// A page as a range of 0-based positions counted from the oldest row: `from..to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub from: u64,
    pub to: u64,
}

impl Span {
    pub fn len(&self) -> u64 {
        self.to - self.from
    }

    pub fn is_empty(&self) -> bool {
        self.to == self.from
    }
}

/// Where the newest-first `page` of a list of `total` rows lies, oldest first. `None` past the
/// end (the page is empty).
pub fn span(total: u64, page: Page) -> Option<Span> {
    let to = total.checked_sub(page.offset).filter(|&to| to > 0)?;
    let from = to.saturating_sub(u64::from(page.limit));
    Some(Span { from, to })
}

/// A mark: the row with this key holds `position` (1-based, oldest first), so `position` rows
/// come before the first row after it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mark<K> {
    pub position: u64,
    pub key: K,
}

/// How to read a span from the mark at or below its start: skip `skip` rows after the mark's
/// key (or from the oldest row, with no mark) and take `take`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    pub skip: u64,
    pub take: u64,
}

/// The walk from `mark` (the highest mark whose position is at most `span.from`, if any).
pub fn walk<K>(span: Span, mark: Option<&Mark<K>>) -> Walk {
    let base = mark.map_or(0, |m| m.position.min(span.from));
    Walk {
        skip: span.from - base,
        take: span.len(),
    }
}

/// Whether a page is better read newest-first with a plain offset: near the new end, the walk
/// is short already, and no mark is needed.
pub fn near_the_new_end(page: Page, every: u64) -> bool {
    page.offset.saturating_add(u64::from(page.limit)) <= every
}

/// Where the next mark after `last` goes.
pub fn next_position(last: Option<u64>, every: u64) -> u64 {
    last.unwrap_or(0) + every.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(limit: u32, offset: u64) -> Page {
        Page { limit, offset }
    }

    #[test]
    fn the_first_page_is_the_newest_rows() {
        assert_eq!(span(100, page(10, 0)), Some(Span { from: 90, to: 100 }));
        assert_eq!(span(5, page(10, 0)), Some(Span { from: 0, to: 5 }));
    }

    #[test]
    fn a_deep_page_and_the_last_partial_page() {
        assert_eq!(
            span(1_000_000, page(20, 999_990)),
            Some(Span { from: 0, to: 10 })
        );
        assert_eq!(
            span(1_000_000, page(20, 500_000)),
            Some(Span {
                from: 499_980,
                to: 500_000
            })
        );
    }

    #[test]
    fn past_the_end_is_empty() {
        assert_eq!(span(100, page(10, 100)), None);
        assert_eq!(span(100, page(10, u64::MAX)), None);
        assert_eq!(span(0, page(10, 0)), None);
    }

    #[test]
    fn the_walk_starts_after_the_mark_below_the_span() {
        let s = Span {
            from: 499_980,
            to: 500_000,
        };
        let mark = Mark {
            position: 499_000,
            key: (),
        };
        assert_eq!(
            walk(s, Some(&mark)),
            Walk {
                skip: 980,
                take: 20
            }
        );
        assert_eq!(
            walk::<()>(s, None),
            Walk {
                skip: 499_980,
                take: 20
            }
        );
        // A mark exactly at the span's start: the first row after it is the span's first.
        let at = Mark {
            position: 499_980,
            key: (),
        };
        assert_eq!(walk(s, Some(&at)), Walk { skip: 0, take: 20 });
    }

    #[test]
    fn pages_near_the_new_end_need_no_mark() {
        assert!(near_the_new_end(page(20, 0), 1000));
        assert!(near_the_new_end(page(20, 980), 1000));
        assert!(!near_the_new_end(page(20, 981), 1000));
        assert!(!near_the_new_end(page(20, u64::MAX), 1000));
    }

    #[test]
    fn marks_are_evenly_spaced() {
        assert_eq!(next_position(None, 1000), 1000);
        assert_eq!(next_position(Some(3000), 1000), 4000);
        assert_eq!(next_position(None, 0), 1);
    }
}
