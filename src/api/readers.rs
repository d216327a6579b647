//! The threads that read the spool for the API: a few threads, each with its own
//! read-only connection, taking reads from one queue.
//!
//! A read of the spool blocks (SQLite, and the disk under it), so it must not run on the
//! runtime's threads. Tokio's blocking pool would do, but it hands every read to a
//! thread woken for it, under one lock shared by every blocking task: with 50 clients
//! the wake-ups and that lock cost about a quarter of the relay's CPU per page
//! (`docs/benchmarks.md`, session 11). These threads keep taking reads while some are
//! queued and sleep on the queue only when there are none, so an idle API costs nothing.

use crate::spool::{Spool, SpoolError};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};

/// A read, given the thread's connection (or why it could not be opened); says whether
/// the connection is still good (one that failed is opened again for the next read).
type Job = Box<dyn FnOnce(Result<&Spool, SpoolError>) -> bool + Send>;

/// The spool's readers. Dropping it ends the threads once they finish what they hold.
pub struct Readers {
    queue: Arc<Queue>,
}

/// Reads waiting for a thread. A plain queue and one condition variable: a read wakes
/// one sleeping thread, and only when none is awake to take it.
#[derive(Default)]
struct Queue {
    state: Mutex<QueueState>,
    ready: Condvar,
}

#[derive(Default)]
struct QueueState {
    jobs: VecDeque<Job>,
    /// Threads waiting for a read.
    sleeping: usize,
    /// The threads that are still serving.
    threads: usize,
    closed: bool,
}

impl Queue {
    fn push(&self, job: Job) -> Result<(), ReadError> {
        let mut st = self.state.lock().expect("reader queue");
        if st.closed || st.threads == 0 {
            return Err(ReadError::Stopped);
        }
        st.jobs.push_back(job);
        let wake = st.sleeping > 0;
        drop(st);
        if wake {
            self.ready.notify_one();
        }
        Ok(())
    }

    /// The next read; `None` once the queue is closed and empty.
    fn pop(&self) -> Option<Job> {
        let mut st = self.state.lock().expect("reader queue");
        loop {
            if let Some(job) = st.jobs.pop_front() {
                return Some(job);
            }
            if st.closed {
                return None;
            }
            st.sleeping += 1;
            st = self.ready.wait(st).expect("reader queue");
            st.sleeping -= 1;
        }
    }

    fn close(&self) {
        self.state.lock().expect("reader queue").closed = true;
        self.ready.notify_all();
    }
}

impl Drop for Readers {
    fn drop(&mut self) {
        self.queue.close();
    }
}

/// Why a read gave no answer.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("the spool's reader threads have stopped")]
    Stopped,
    #[error("the read ended without an answer (it panicked)")]
    Lost,
}

impl Readers {
    /// Starts `threads` reader threads over the spool in `dir`; each opens its
    /// connection at its first read.
    pub fn start(dir: PathBuf, threads: usize) -> std::io::Result<Readers> {
        let queue = Arc::new(Queue::default());
        let readers = Readers {
            queue: queue.clone(),
        };
        for i in 0..threads.max(1) {
            let (queue, dir) = (queue.clone(), dir.clone());
            // Counted before it starts, so that it is never seen ending before it began;
            // on failure `readers` is dropped, and the threads already started end.
            queue.state.lock().expect("reader queue").threads += 1;
            std::thread::Builder::new()
                .name(format!("api-reader-{i}"))
                .spawn(move || serve(&queue, &dir))?;
        }
        Ok(readers)
    }

    /// Runs `f` on a reader thread and returns its result. `f` runs to its end even if
    /// the caller stops waiting, so what it owns (a read permit) is held until then.
    pub async fn read<T, F>(&self, f: F) -> Result<T, ReadError>
    where
        T: Send + 'static,
        F: FnOnce(&Spool) -> Result<T, SpoolError> + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |spool| {
            let r = spool.and_then(f);
            let ok = r.is_ok();
            let _ = tx.send(r);
            ok
        });
        self.queue.push(job)?;
        Ok(rx.await.map_err(|_| ReadError::Lost)??)
    }
}

/// A reader thread: takes reads until the queue closes.
fn serve(queue: &Queue, dir: &Path) {
    let mut conn: Option<Spool> = None;
    while let Some(job) = queue.pop() {
        let spool = match conn.take() {
            Some(s) => Ok(s),
            None => Spool::open_read_only(dir),
        };
        // A read that panics loses its answer (the caller is told) and its connection,
        // not the thread.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match spool {
            Ok(s) => {
                if job(Ok(&s)) {
                    conn = Some(s);
                }
            }
            Err(e) => {
                job(Err(e));
            }
        }));
    }
    queue.state.lock().expect("reader queue").threads -= 1;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Durability;

    #[tokio::test]
    async fn reads_run_on_the_threads_and_a_missing_spool_is_an_error_each_time() {
        let dir = tempfile::tempdir().unwrap();
        let missing = Readers::start(dir.path().join("none"), 2).unwrap();
        for _ in 0..3 {
            let r = missing.read(|s| Ok(s.last_seq())).await;
            assert!(
                matches!(r, Err(ReadError::Spool(SpoolError::Missing(_)))),
                "{r:?}"
            );
        }

        Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        let readers = Readers::start(dir.path().to_path_buf(), 2).unwrap();
        let mut names = Vec::new();
        for _ in 0..8 {
            let name = readers
                .read(|_| Ok(std::thread::current().name().unwrap_or("").to_string()))
                .await
                .unwrap();
            names.push(name);
        }
        assert!(
            names.iter().all(|n| n.starts_with("api-reader-")),
            "{names:?}"
        );
        // A failed read gives its error and the next read still works.
        let failed = readers
            .read(|_| -> Result<(), SpoolError> {
                Err(SpoolError::Corrupt {
                    seq: 7,
                    reason: "test".into(),
                })
            })
            .await;
        assert!(matches!(
            failed,
            Err(ReadError::Spool(SpoolError::Corrupt { seq: 7, .. }))
        ));
        assert!(readers.read(|s| Ok(s.last_seq())).await.is_ok());
    }

    #[tokio::test]
    async fn a_read_that_panics_is_answered_and_the_thread_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        let readers = Readers::start(dir.path().to_path_buf(), 1).unwrap();
        let r = readers
            .read(|_| -> Result<(), SpoolError> { panic!("a reader that fails") })
            .await;
        assert!(matches!(r, Err(ReadError::Lost)), "{r:?}");
        // The one thread is still there.
        assert_eq!(readers.read(|s| Ok(s.last_seq())).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn reads_after_the_threads_ended_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let readers = Readers::start(dir.path().to_path_buf(), 1).unwrap();
        // Once the queue is closed the threads end, and reads are refused instead of
        // waiting for a thread that will never come.
        readers.queue.close();
        for _ in 0..200 {
            if readers.queue.state.lock().unwrap().threads == 0 {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(readers.queue.state.lock().unwrap().threads, 0);
        let r = readers.read(|s| Ok(s.last_seq())).await;
        assert!(matches!(r, Err(ReadError::Stopped)), "{r:?}");
    }
}
