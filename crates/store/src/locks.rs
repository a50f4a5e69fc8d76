//! PostgreSQL advisory locks, with one key scheme for every caller: they serialise a
//! check-then-write (a cap, a rate limit, a chain, the do-not-call list) across nodes without
//! locking whole tables. SQLite has one writer, which serialises the same sections already.

use crate::exec::{query, Exec};
use crate::Backend;
use domain::store::StoreError;

/// A lock's key: a stable 64-bit FNV-1a hash of its parts, each ended by a NUL so that
/// `["ab", "c"]` and `["a", "bc"]` differ. Stable across nodes and versions of Rust.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LockKey(i64);

impl LockKey {
    pub(crate) fn new(parts: &[&str]) -> Self {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for p in parts {
            for b in p.bytes().chain(std::iter::once(0)) {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
        }
        Self(h as i64)
    }

    /// The lock between a tenant's do-not-call list and the starts of its dials. One per
    /// tenant, not per number, so an import of any size takes one lock.
    pub(crate) fn do_not_call(tenant: i64) -> Self {
        Self::new(&["do-not-call", &tenant.to_string()])
    }

    /// The lock between a tenant's conversation marks being written and a batch's rows
    /// becoming listed (which drops the marks after them).
    pub(crate) fn conversation_marks(tenant: i64) -> Self {
        Self::new(&["conversation-marks", &tenant.to_string()])
    }
}

/// Held until the transaction ends.
pub(crate) async fn lock<E: Exec>(
    conn: &mut E,
    backend: Backend,
    key: LockKey,
) -> Result<(), StoreError> {
    take(conn, backend, "SELECT pg_advisory_xact_lock($1)", key).await
}

/// Shared with other shared holders, exclusive of `lock`; until the transaction ends.
pub(crate) async fn lock_shared<E: Exec>(
    conn: &mut E,
    backend: Backend,
    key: LockKey,
) -> Result<(), StoreError> {
    take(
        conn,
        backend,
        "SELECT pg_advisory_xact_lock_shared($1)",
        key,
    )
    .await
}

async fn take<E: Exec>(
    conn: &mut E,
    backend: Backend,
    sql: &str,
    key: LockKey,
) -> Result<(), StoreError> {
    if backend == Backend::Postgres {
        query(sql).bind(key.0).execute(&mut *conn).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_separate_their_parts_and_are_stable() {
        assert_ne!(LockKey::new(&["ab", "c"]), LockKey::new(&["a", "bc"]));
        assert_eq!(
            LockKey::new(&["number", "1", "+91"]),
            LockKey::new(&["number", "1", "+91"])
        );
        // FNV-1a of "a\0": the scheme must not drift between nodes of different builds.
        assert_eq!(LockKey::new(&["a"]).0, 0x089b_e207_b544_f1e4_u64 as i64);
    }
}
