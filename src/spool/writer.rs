//! The one writer task: takes batches from the sources and group-commits them.
//!
//! A commit happens when `max_events` events wait or the oldest has waited `interval`,
//! whichever first, and when the sources are gone (shutdown). The channel it reads is
//! bounded, so a slow disk slows the sources instead of growing memory.

use super::{AppendBatch, CommitReport, ForwardProgress, Spool, SpoolError};
use crate::integrity::Signer;
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

/// Checkpoints and retention: the writer does them between its group commits, so the
/// spool keeps a single writer.
#[derive(Debug, Clone)]
pub struct Upkeep {
    /// Signs checkpoints; `None`: checkpoints are stored unsigned.
    pub signer: Option<Arc<Signer>>,
    /// A checkpoint after this many stored events...
    pub checkpoint_every: u64,
    /// ...and at least this often (idle or not), and at shutdown when events are uncovered.
    pub checkpoint_interval: Duration,
    /// `spool.retention_days`.
    pub retention: Duration,
    /// The forwarding cursors retention waits for; `None` when nothing forwards
    /// (`cloudwatch` absent or disabled), so age alone decides.
    pub forward_cursors: Option<Vec<String>>,
    /// How often retention looks for something to purge.
    pub purge_check: Duration,
    /// Events deleted per purge transaction.
    pub purge_chunk: i64,
}

impl Upkeep {
    /// Defaults for a spool without forwarding, unsigned (tests and benches).
    pub fn unsigned(retention_days: u64) -> Upkeep {
        Upkeep {
            signer: None,
            checkpoint_every: 10_000,
            checkpoint_interval: Duration::from_secs(300),
            retention: Duration::from_secs(retention_days * 86_400),
            forward_cursors: None,
            purge_check: Duration::from_secs(60),
            purge_chunk: 2_000,
        }
    }
}

/// A purge in progress.
#[derive(Debug)]
struct PurgeRun {
    target: i64,
    run: Option<i64>,
    deleted: u64,
    cutoff_ms: i64,
    started: Instant,
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
    upkeep: Upkeep,
    /// Events stored since the last checkpoint, and when that was.
    uncovered: u64,
    last_checkpoint: Instant,
    last_purge_check: Option<Instant>,
    purge: Option<PurgeRun>,
    progress: ProgressInbox,
    /// Set while the spool's files are at or over `max_bytes`: sources pause.
    full: Arc<AtomicBool>,
}

impl SpoolWriter {
    pub fn new(
        spool: Spool,
        opts: WriterOptions,
        upkeep: Upkeep,
        progress: ProgressInbox,
        full: Arc<AtomicBool>,
    ) -> Self {
        // Events after the newest checkpoint (a crash before the last one) are uncovered.
        let covered = match spool.last_checkpoint() {
            Ok(Some((row, _))) => row,
            _ => 0,
        };
        SpoolWriter {
            uncovered: (spool.last_seq() - covered).max(0) as u64,
            last_checkpoint: Instant::now(),
            last_purge_check: None,
            purge: None,
            spool,
            opts,
            upkeep,
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
                    let n = batch.events.len();
                    let r = self.write_checkpointed(batch)?;
                    totals.stored += r.stored;
                    totals.duplicates += r.duplicates;
                    totals.quarantined += r.quarantined;
                    waiting += n.max(1);
                    if waiting >= self.opts.max_events {
                        self.commit(&mut open_since, &mut waiting, &mut totals)?;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    if open_since.is_some() {
                        self.commit(&mut open_since, &mut waiting, &mut totals)?;
                    } else if stop.is_cancelled() && self.progress.is_empty() {
                        if self.uncovered > 0 {
                            // The shutdown checkpoint.
                            self.spool.begin()?;
                            self.checkpoint()?;
                            self.spool.commit()?;
                        }
                        return Ok(totals);
                    } else if self.last_checkpoint.elapsed() >= self.upkeep.checkpoint_interval {
                        // Idle: a checkpoint still marks the time, so quiet hours are covered.
                        self.spool.begin()?;
                        self.checkpoint()?;
                        self.spool.commit()?;
                        self.progress
                            .1
                            .store(self.spool.last_seq(), Ordering::Release);
                    } else {
                        self.purge_tick()?;
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
        if self.uncovered >= self.upkeep.checkpoint_every
            || self.last_checkpoint.elapsed() >= self.upkeep.checkpoint_interval
        {
            self.checkpoint()?;
        }
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
        self.purge_tick()
    }

    /// Writes a batch into the open transaction with a checkpoint after every
    /// `checkpoint_every` stored events, splitting the batch where one falls (the source
    /// checkpoints and counters go with its last part, in the same transaction).
    fn write_checkpointed(&mut self, mut batch: AppendBatch) -> Result<CommitReport, SpoolError> {
        let mut total = CommitReport::default();
        loop {
            let room = self
                .upkeep
                .checkpoint_every
                .saturating_sub(self.uncovered)
                .max(1) as usize;
            let last = batch.events.len() <= room;
            let part = if last {
                std::mem::take(&mut batch)
            } else {
                let rest = batch.events.split_off(room);
                AppendBatch {
                    events: std::mem::replace(&mut batch.events, rest),
                    ..AppendBatch::default()
                }
            };
            let r = self.spool.write(&part)?;
            self.uncovered += r.stored;
            total.stored += r.stored;
            total.duplicates += r.duplicates;
            total.quarantined += r.quarantined;
            if self.uncovered >= self.upkeep.checkpoint_every {
                self.checkpoint()?;
            }
            if last {
                return Ok(total);
            }
        }
    }

    /// Adds a checkpoint to the open transaction.
    fn checkpoint(&mut self) -> Result<(), SpoolError> {
        let cp = self
            .spool
            .write_checkpoint(self.upkeep.signer.as_deref(), super::sqlite::now_ms())?;
        tracing::debug!(
            sequence = cp.sequence,
            signed = cp.signed.is_some(),
            "integrity checkpoint"
        );
        self.uncovered = 0;
        self.last_checkpoint = Instant::now();
        Ok(())
    }

    /// Retention: looks for a cut now and then, and deletes one chunk per call while a
    /// purge runs (between group commits, so ingest keeps going).
    fn purge_tick(&mut self) -> Result<(), SpoolError> {
        if self.purge.is_none() {
            if self
                .last_purge_check
                .is_some_and(|t| t.elapsed() < self.upkeep.purge_check)
            {
                return Ok(());
            }
            self.last_purge_check = Some(Instant::now());
            let cutoff_ms = super::sqlite::now_ms() - self.upkeep.retention.as_millis() as i64;
            let forwarded = match &self.upkeep.forward_cursors {
                Some(c) => Some(self.spool.min_cursor(c)?),
                None => None,
            };
            let Some(target) = self.spool.purge_target(cutoff_ms, forwarded)? else {
                return Ok(());
            };
            tracing::info!(
                through_seq = target,
                "retention: purging events older than spool.retention_days up to the checkpoint after sequence {target}"
            );
            self.purge = Some(PurgeRun {
                target,
                run: None,
                deleted: 0,
                cutoff_ms,
                started: Instant::now(),
            });
        }
        let p = self.purge.as_mut().expect("a purge runs");
        let step = self
            .spool
            .purge_step(p.target, self.upkeep.purge_chunk, p.cutoff_ms, p.run)?;
        p.run = Some(step.run);
        p.deleted += step.deleted;
        if step.through >= p.target {
            let p = self.purge.take().expect("a purge runs");
            tracing::info!(
                deleted = p.deleted,
                through_seq = p.target,
                purge = step.run,
                secs = p.started.elapsed().as_secs_f64(),
                "retention purge done; verification restarts at the checkpoint after the cut"
            );
        }
        Ok(())
    }
}
