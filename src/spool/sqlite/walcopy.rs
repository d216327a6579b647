//! Copying the WAL into the database file (SQLite's checkpoint) on a thread of its own,
//! so that the spool writer's thread, which sets the ingest rate, no longer spends its
//! time on it (about a sixth of its CPU, and the database file's `fsync`).
//!
//! SQLite's WAL restarts from its beginning only when a write transaction begins after
//! every frame has been copied. Under a load that never pauses, a checkpoint on another
//! connection always ends a commit or two behind the writer, so the copier alone would
//! let the WAL grow without bound. The writer therefore finishes each cycle itself:
//!
//! 1. past [`Limits::start`] frames, a commit hands the copying to the copier thread (`PASSIVE`:
//!    it copies what is committed while the writer goes on appending);
//! 2. once the copier has come within the last commit of the WAL's end, the writer
//!    copies that rest itself, right after its commit, and its next transaction restarts
//!    the WAL;
//! 3. at [`Limits::hard`] frames the writer waits for a running pass and copies the rest
//!    whatever its size, so the WAL stays bounded whatever the load.
//!
//! Durability does not depend on any of it: a commit is durable in the WAL (with
//! `synchronous = FULL`, fsynced) before it is copied, and a copy interrupted by a crash
//! is redone from the WAL when the spool is opened again.

use super::SpoolError;
use rusqlite::Connection;
use std::cell::Cell;
use std::path::Path;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// When the copying is handed on and when the writer does it, in WAL frames (pages).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Past this many frames a commit hands the copying to the copier.
    pub start: i32,
    /// Past this many the writer copies the rest itself, waiting for the copier if it
    /// must: the WAL's bound, give or take one commit.
    pub hard: i32,
}

/// 64 MiB and 128 MiB of 4 KiB pages. The larger the cycle, the smaller the writer's
/// share (one commit's frames per cycle), and a hot index page changed by many commits
/// is copied once per cycle: with 32 MiB (SQLite's automatic checkpoint as the relay set
/// it before) the writer gained much less (docs/benchmarks.md, session 12).
pub const LIMITS: Limits = Limits {
    start: 16_384,
    hard: 32_768,
};

thread_local! {
    /// The WAL's frame count after the last commit on this thread's connection (set by
    /// SQLite's WAL hook, which runs in the committing thread).
    static FRAMES: Cell<i32> = const { Cell::new(0) };
}

fn record_frames(_: &rusqlite::hooks::Wal, frames: std::ffi::c_int) -> rusqlite::Result<()> {
    FRAMES.with(|f| f.set(frames));
    Ok(())
}

#[derive(Default)]
struct State {
    /// The WAL generation a pass is asked for or running in.
    pass: Option<u64>,
    /// The generation of the last finished pass, and the frames copied when it ended.
    done: Option<(u64, i32)>,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    /// Passes the copier made (read by the tests).
    passes: std::sync::atomic::AtomicU64,
}

/// The copier thread and the writer's view of the WAL.
pub struct WalCopier {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
    /// Counts the WAL's restarts: a pass's result counts only in its own generation.
    generation: u64,
    /// Frames after the previous commit.
    frames: i32,
    /// Frames known to be copied in this generation.
    copied: i32,
    limits: Limits,
    writer_copies: Trouble,
}

impl WalCopier {
    /// Starts the copier for the spool at `path`, written by `writer`, whose automatic
    /// checkpoints it replaces.
    pub fn start(
        writer: &Connection,
        path: &Path,
        limits: Limits,
    ) -> Result<WalCopier, SpoolError> {
        let conn = Connection::open(path)?;
        // The writer's durability: with FULL, each copy ends with the file's fsync.
        let sync: i64 = writer.pragma_query_value(None, "synchronous", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        let shared = Arc::new(Shared::default());
        let thread = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("spool-wal".into())
                .spawn(move || serve(conn, &shared))
                .map_err(|e| SpoolError::Dir(path.to_path_buf(), e))?
        };
        // Replaces the automatic checkpoint (itself a WAL hook).
        writer.wal_hook(Some(record_frames));
        FRAMES.with(|f| f.set(0));
        Ok(WalCopier {
            shared,
            thread: Some(thread),
            generation: 0,
            frames: 0,
            copied: 0,
            limits,
            writer_copies: Trouble::new(
                "spool: copying the WAL into the database file failed; trying again after each commit (spool.db-wal grows until it succeeds)",
            ),
        })
    }

    /// After each commit of `writer`: hands the copying on, or finishes the cycle. A copy
    /// that fails is logged, not returned: the commit before it stands.
    pub fn committed(&mut self, writer: &Connection) {
        let frames = FRAMES.with(Cell::get);
        let Limits { start, hard } = self.limits;
        let added = frames - self.frames;
        if added < 0 {
            // The WAL restarted at this transaction.
            self.generation += 1;
            self.copied = 0;
        }
        self.frames = frames;
        if frames < start {
            return;
        }
        let mut st = self.shared.state.lock().expect("wal copier");
        if st.pass.is_some() && frames >= hard {
            while st.pass.is_some() {
                st = self.shared.wake.wait(st).expect("wal copier");
            }
        }
        if st.pass.is_some() {
            return;
        }
        if let Some((g, copied)) = st.done.take() {
            if g == self.generation {
                self.copied = self.copied.max(copied);
            }
        }
        if frames - self.copied <= added.max(0) + start / 64 || frames >= hard {
            // The copier is within this commit of the end (or the WAL is too large):
            // the rest is copied here, and the next transaction restarts the WAL.
            drop(st);
            if let Some(copied) = self.writer_copies.outcome(checkpoint(writer)) {
                self.copied = copied;
            }
        } else {
            st.pass = Some(self.generation);
            drop(st);
            self.shared.wake.notify_all();
        }
    }
}

impl Drop for WalCopier {
    fn drop(&mut self) {
        self.shared.state.lock().expect("wal copier").stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The copier thread: one `PASSIVE` checkpoint per pass asked for, until stopped.
fn serve(conn: Connection, shared: &Shared) {
    let mut copier =
        Trouble::new("spool: copying the WAL into the database file failed; the writer will do it");
    loop {
        let generation = {
            let mut st = shared.state.lock().expect("wal copier");
            loop {
                if st.stop {
                    return;
                }
                if let Some(g) = st.pass {
                    break g;
                }
                st = shared.wake.wait(st).expect("wal copier");
            }
        };
        // On failure the writer copies at `Limits::hard` frames.
        let copied = copier.outcome(checkpoint(&conn)).unwrap_or(0);
        shared
            .passes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut st = shared.state.lock().expect("wal copier");
        st.pass = None;
        st.done = Some((generation, copied));
        drop(st);
        shared.wake.notify_all();
    }
}

/// Logs the first of a run of failed copies, and the success that ends it: not every
/// attempt (the writer tries after each commit while, say, the disk is full).
struct Trouble {
    failing: bool,
    warning: &'static str,
}

impl Trouble {
    fn new(warning: &'static str) -> Trouble {
        Trouble {
            failing: false,
            warning,
        }
    }

    /// The frames copied, or `None` if the copy failed.
    fn outcome(&mut self, r: rusqlite::Result<i32>) -> Option<i32> {
        match r {
            Ok(n) => {
                if std::mem::take(&mut self.failing) {
                    tracing::info!("spool: the WAL is copied into the database file again");
                }
                Some(n)
            }
            Err(e) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(error = %e, "{}", self.warning);
                }
                None
            }
        }
    }
}

/// A `PASSIVE` checkpoint: copies the committed frames that no reader still needs;
/// returns how many frames of the WAL are copied.
fn checkpoint(conn: &Connection) -> rusqlite::Result<i32> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| r.get(2))
}

#[cfg(test)]
mod tests {
    use super::super::Spool;
    use super::*;
    use crate::config::{Durability, Envelope};
    use crate::event::{decode, format_timestamp_ms, Decoded, Event};
    use crate::spool::AppendBatch;
    use std::sync::atomic::Ordering;

    fn batch(from: u128, n: u128) -> AppendBatch {
        let events: Vec<Event> = (from..from + n)
            .map(|i| {
                let line = serde_json::json!({
                    "id": uuid::Uuid::from_u128(i).to_string(),
                    "timestamp": format_timestamp_ms(1_700_000_000_000 + i as i64),
                    "action": "startWorkspace",
                    "organizationId": format!("org-{}", i % 7),
                    "actorId": "actor", "args": ["x".repeat(300)],
                })
                .to_string();
                match decode(line.as_bytes(), Envelope::Event) {
                    Decoded::Event(e) => e,
                    other => panic!("{other:?}"),
                }
            })
            .collect();
        AppendBatch {
            events,
            ..Default::default()
        }
    }

    /// The WAL's size in frames (its high-water mark: SQLite reuses the file from its
    /// start) and its checkpoint sequence number (one more at each restart).
    fn wal(dir: &Path) -> (u64, u32) {
        let bytes = std::fs::read(dir.join("spool.db-wal")).unwrap_or_default();
        if bytes.len() < 32 {
            return (0, 0);
        }
        let frames = (bytes.len() as u64 - 32) / (4096 + 24);
        (
            frames,
            u32::from_be_bytes(bytes[12..16].try_into().unwrap()),
        )
    }

    fn count(s: &Spool) -> i64 {
        s.conn
            .query_row("SELECT count(*) FROM events", [], |r| r.get(0))
            .unwrap()
    }

    const LIMITS: Limits = Limits {
        start: 64,
        hard: 160,
    };

    #[test]
    fn the_copier_copies_the_wal_and_the_writer_restarts_it_within_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        s.copy_wal_with(LIMITS).unwrap();
        let reader = Spool::open_read_only(dir.path()).unwrap();
        let (mut restarts, mut last) = (0, wal(dir.path()).1);
        let (mut commit_frames, mut hooked) = (0, 0);
        for c in 0..300u128 {
            s.append(&batch(c * 20, 20)).unwrap();
            // The WAL's frames as SQLite reports them to the writer at each commit.
            let frames = FRAMES.with(Cell::get);
            commit_frames = commit_frames.max(frames - hooked);
            hooked = frames;
            let (_, seq) = wal(dir.path());
            if seq != last {
                restarts += 1;
                last = seq;
            }
            // A reader between its transactions, as the forwarder is.
            assert_eq!(count(&reader), (c as i64 + 1) * 20);
        }
        let (frames, _) = wal(dir.path());
        let passes = s
            .wal
            .as_ref()
            .unwrap()
            .shared
            .passes
            .load(Ordering::Relaxed);
        // 6,000 rows of ~450 bytes: ~700 frames in all, so at least 4 cycles of 160.
        assert!(restarts >= 4, "the WAL restarted {restarts} times");
        assert!(passes >= 4, "the copier made {passes} passes");
        // The bound, give or take one commit.
        assert!(
            frames <= (LIMITS.hard + commit_frames) as u64,
            "the WAL grew to {frames} frames (commits of up to {commit_frames})"
        );
        let ok: String = s
            .conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .unwrap();
        assert_eq!(ok, "ok");
        drop(s);
        // Closed last, the writer's connection folds the WAL back as without the copier.
        let s = Spool::open_read_only(dir.path()).unwrap();
        assert_eq!(count(&s), 6000);
        drop(reader);
    }

    /// What `f` logs, as text.
    fn logs_of(f: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_writer(move || out.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(sub, f);
        let text = buf.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn a_run_of_failed_copies_is_logged_once_and_its_end_once() {
        let full = || {
            Err(rusqlite::Error::SqliteFailure(
                rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_FULL),
                None,
            ))
        };
        let mut t = Trouble::new("copying failed");
        let mut got = Vec::new();
        let logs = logs_of(|| {
            got.push(t.outcome(Ok(7)));
            for _ in 0..5 {
                got.push(t.outcome(full()));
            }
            got.push(t.outcome(Ok(9)));
            got.push(t.outcome(Ok(10)));
            got.push(t.outcome(full()));
        });
        assert_eq!(
            got,
            [
                Some(7),
                None,
                None,
                None,
                None,
                None,
                Some(9),
                Some(10),
                None
            ]
        );
        assert_eq!(logs.matches("copying failed").count(), 2, "{logs}");
        assert_eq!(logs.matches("database is full").count(), 2, "{logs}");
        assert_eq!(
            logs.matches("copied into the database file again").count(),
            1,
            "{logs}"
        );
    }

    #[test]
    fn a_reader_holding_the_wal_does_not_stop_the_writer_and_the_wal_restarts_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        s.copy_wal_with(LIMITS).unwrap();
        s.append(&batch(0, 20)).unwrap();
        let reader = Spool::open_read_only(dir.path()).unwrap();
        reader.conn.execute_batch("BEGIN").unwrap();
        assert_eq!(count(&reader), 20);
        let before = wal(dir.path()).1;
        for c in 1..100u128 {
            s.append(&batch(c * 20, 20)).unwrap();
        }
        let (held, seq) = wal(dir.path());
        assert_eq!(
            seq, before,
            "no restart while the reader holds its snapshot"
        );
        assert!(
            held > LIMITS.hard as u64,
            "the WAL had to grow past the bound: {held} frames"
        );
        assert_eq!(count(&reader), 20, "the reader's snapshot");
        reader.conn.execute_batch("COMMIT").unwrap();
        for c in 100..130u128 {
            s.append(&batch(c * 20, 20)).unwrap();
        }
        assert_ne!(
            wal(dir.path()).1,
            before,
            "the WAL restarted after the reader"
        );
        assert_eq!(count(&reader), 2600);
    }
}
