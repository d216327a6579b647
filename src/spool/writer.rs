//! The one writer task: takes batches from the sources and group-commits them.
//!
//! A commit happens when `max_events` events wait or the oldest has waited `interval`,
//! whichever first, and when the sources are gone (shutdown). The channel it reads is
//! bounded, so a slow disk slows the sources instead of growing memory.

use super::{AppendBatch, ForwardProgress, Spool, SpoolError};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long an idle writer waits before looking at its stop signal again.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// Where forwarders leave their progress for the writer to commit: the spool has one
/// writer, so cursor moves ride along with the next group commit instead of competing
/// for SQLite's write lock.
#[derive(Debug, Clone, Default)]
pub struct ProgressInbox(Arc<Mutex<Vec<ForwardProgress>>>, Arc<AtomicI64>);

impl ProgressInbox {
    /// The highest sequence number committed so far.
    pub fn committed_seq(&self) -> i64 {
        self.1.load(Ordering::Acquire)
    }

    pub fn push(&self, p: ForwardProgress) {
        self.0.lock().expect("progress inbox").push(p);
    }

    fn is_empty(&self) -> bool {
        self.0.lock().expect("progress inbox").is_empty()
    }

    /// Takes everything reported so far (for a one-off run without a writer).
    pub fn drain(&self) -> Vec<ForwardProgress> {
        self.take()
    }

    fn take(&self) -> Vec<ForwardProgress> {
        std::mem::take(&mut *self.0.lock().expect("progress inbox"))
    }
}

#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    pub max_events: usize,
    pub interval: Duration,
    /// `spool.max_bytes`: the disk cap.
    pub max_bytes: u64,
}

/// Totals over the writer's life.
#[derive(Debug, Default, Clone, Copy)]
pub struct WriterTotals {
    pub commits: u64,
    pub stored: u64,
    pub duplicates: u64,
    pub quarantined: u64,
}

pub struct SpoolWriter {
    spool: Spool,
    opts: WriterOptions,
    progress: ProgressInbox,
    /// Set while the spool's files are at or over `max_bytes`: sources pause.
    full: Arc<AtomicBool>,
}

impl SpoolWriter {
    pub fn new(
        spool: Spool,
        opts: WriterOptions,
        progress: ProgressInbox,
        full: Arc<AtomicBool>,
    ) -> Self {
        SpoolWriter {
            spool,
            opts,
            progress,
            full,
        }
    }

    /// Compares the spool's size on disk with the cap; sets or clears the full flag
    /// (cleared below 95 % of the cap, so reading does not flap).
    fn check_disk_cap(&self) {
        let bytes = self.spool.disk_bytes();
        let max = self.opts.max_bytes;
        let full = self.full.load(Ordering::Relaxed);
        if !full && bytes >= max {
            self.full.store(true, Ordering::Relaxed);
            tracing::warn!(bytes, max_bytes = max, "spool reached spool.max_bytes: reading is paused (offsets kept, nothing lost) and /readyz fails until space frees");
        } else if full && bytes < max / 100 * 95 {
            self.full.store(false, Ordering::Relaxed);
            tracing::info!(
                bytes,
                max_bytes = max,
                "spool below spool.max_bytes again: reading resumes"
            );
        }
    }

    /// Runs until `stop` is signalled and nothing more arrives (sources gone or quiet,
    /// no forwarding progress waiting), committing what it got.
    pub fn run(
        mut self,
        rx: Receiver<AppendBatch>,
        stop: CancellationToken,
    ) -> Result<WriterTotals, SpoolError> {
        let mut totals = WriterTotals::default();
        let mut open_since: Option<Instant> = None;
        let mut waiting = 0usize;
        let mut sources_open = true;
        self.progress
            .1
            .store(self.spool.last_seq(), Ordering::Release);
        loop {
            let wait = match open_since {
                None => IDLE_POLL,
                Some(t) => self.opts.interval.saturating_sub(t.elapsed()),
            };
            let msg = if sources_open {
                rx.recv_timeout(wait)
            } else {
                // Sources are gone; forwarders may still report progress.
                std::thread::sleep(wait.min(IDLE_POLL));
                Err(RecvTimeoutError::Timeout)
            };
            self.check_disk_cap();
            let progress = self.progress.take();
            if !progress.is_empty() {
                if open_since.is_none() {
                    self.spool.begin()?;
                    open_since = Some(Instant::now());
                }
                for p in &progress {
                    self.spool.write_progress(p)?;
                }
                waiting += 1;
            }
            match msg {
                Ok(batch) => {
                    if open_since.is_none() {
                        self.spool.begin()?;
                        open_since = Some(Instant::now());
                    }
                    let r = self.spool.write(&batch)?;
                    totals.stored += r.stored;
                    totals.duplicates += r.duplicates;
                    totals.quarantined += r.quarantined;
                    waiting += batch.events.len().max(1);
                    if waiting >= self.opts.max_events {
                        self.commit(&mut open_since, &mut waiting, &mut totals)?;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if open_since.is_some() {
                        self.commit(&mut open_since, &mut waiting, &mut totals)?;
                    } else if stop.is_cancelled() && self.progress.is_empty() {
                        return Ok(totals);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    sources_open = false;
                    if open_since.is_some() {
                        self.commit(&mut open_since, &mut waiting, &mut totals)?;
                    }
                }
            }
        }
    }

    fn commit(
        &mut self,
        open_since: &mut Option<Instant>,
        waiting: &mut usize,
        totals: &mut WriterTotals,
    ) -> Result<(), SpoolError> {
        let started = Instant::now();
        self.spool.commit()?;
        self.progress
            .1
            .store(self.spool.last_seq(), Ordering::Release);
        totals.commits += 1;
        tracing::debug!(
            events = *waiting,
            commit_ms = started.elapsed().as_millis() as u64,
            "spool commit"
        );
        *open_since = None;
        *waiting = 0;
        Ok(())
    }
}
