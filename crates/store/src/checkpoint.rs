//! SQLite's write-ahead log copied back into the database beside the writers. The connection
//! whose commit takes the log past 1,000 pages copies it back then and there (an automatic
//! checkpoint): under `POST /v1/call` load that is the group-commit writer, and a quarter of
//! its time went to copying pages and syncing the database file while the calls of the next
//! batch waited. A checkpoint in WAL mode runs beside writers, so a thread of its own copies
//! what has been committed every few milliseconds, and the writer's checkpoint finds little
//! left to copy.
//!
//! The writers keep their automatic checkpoints: the log restarts from its beginning only
//! when a checkpoint has copied all of it before the next write, and under constant writes
//! only the writer's own checkpoint, run between its commit and its next transaction, can
//! (this thread alone let the log grow to 1.7 GB in a 10 s run). When this thread's
//! checkpoint holds the locks at that moment, the restart waits for the writer's next
//! checkpoint: the log stayed at 5 MB under `outdial-bench mixed`. Passive checkpoints only:
//! they never wait for a writer or a reader, so nothing waits for them.

use domain::store::StoreError;
use rusqlite::Connection;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

/// Ends the checkpointer's thread when dropped (with the store), after the checkpoint it may
/// be running.
pub(crate) struct Checkpointer {
    stop: Option<mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            // A checkpoint that panicked has nothing left to clean up.
            let _ = thread.join();
        }
    }
}

/// Opens a connection on `path` and checkpoints every `every` until the returned handle drops.
pub(crate) fn spawn(path: &Path, every: Duration) -> Result<Checkpointer, StoreError> {
    let conn = Connection::open(path).map_err(|e| StoreError::Database(e.into()))?;
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("outdial-checkpoint".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                // A failed checkpoint (a full disk, say) leaves the log as it was; the writers
                // still commit to it and the next round tries again.
                if let Err(e) = passive(&conn) {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
            }
        })
        .map_err(|e| StoreError::Database(format!("starting the checkpointer: {e}").into()))?;
    Ok(Checkpointer {
        stop: Some(stop),
        thread: Some(thread),
    })
}

/// One passive checkpoint; how many of the log's frames it left uncopied.
fn passive(conn: &Connection) -> rusqlite::Result<i64> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| {
        let log: i64 = r.get(1)?;
        let copied: i64 = r.get(2)?;
        Ok(log - copied)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(path: &Path) -> u64 {
        std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
    }

    #[test]
    fn the_log_is_copied_back_and_restarts_without_the_writer_checkpointing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let db = dir.path().join("db.sqlite");
        let wal = dir.path().join("db.sqlite-wal");
        let writer = Connection::open(&db).expect("open");
        writer
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get::<_, String>(0))
            .expect("wal");
        writer
            .execute_batch("PRAGMA wal_autocheckpoint = 0; CREATE TABLE t (v BLOB)")
            .expect("schema");
        let row = vec![7u8; 4096];
        let write = || {
            for _ in 0..2_000 {
                writer
                    .execute("INSERT INTO t (v) VALUES (?1)", [&row])
                    .expect("insert");
            }
        };
        write();
        let log = size(&wal);
        assert!(log > 8 << 20, "the log holds {log} bytes");
        assert!(size(&db) < 1 << 20, "nothing was copied back yet");

        let pages: u64 = writer
            .query_row(
                "SELECT page_count * page_size FROM pragma_page_count(), pragma_page_size()",
                [],
                |r| r.get(0),
            )
            .expect("pages");
        let running = spawn(&db, Duration::from_millis(10)).expect("spawn");
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        // Every page in the database file: only the checkpointer can have put them there.
        let probe = Connection::open(&db).expect("probe");
        while size(&db) < pages || passive(&probe).ok() != Some(0) {
            assert!(
                std::time::Instant::now() < deadline,
                "the log was never copied back"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        // Copied back, the log is written again from its start instead of growing. (Stopped
        // first: the writer restarts the log only when no checkpoint holds its locks, and
        // this is its one chance in the test.)
        drop(running);
        write();
        assert_eq!(size(&wal), log);
        let rows: i64 = writer
            .query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0))
            .expect("count");
        assert_eq!(rows, 4_000);
    }
}
