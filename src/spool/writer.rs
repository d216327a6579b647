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

/// While events arrive, a purge chunk that took `d` is followed by `PURGE_SPACING × d`
/// without purging.
const PURGE_SPACING: u32 = 4;

/// How long an idle writer waits before looking at its stop signal, the forwarders'
/// progress and the reads' events again: each look wakes the thread, which is most of
/// an idle relay's CPU (50 ms gave 0.20 % of a core idle, 250 ms 0.10 %; docs/benchmarks.md,
/// session 13). A read's event is committed within `spool.commit_interval` plus this.
const IDLE_POLL: Duration = Duration::from_millis(250);

/// How often a writer that is not waiting on its channel (its sources are gone, or it is
/// retrying a commit on a full disk) looks at its stop signal and inboxes: not idle, so
/// short, and a stop is seen at once.
const STOP_STEP: Duration = Duration::from_millis(50);

/// After the stop signal, how long a writer whose disk is full or failing still tries to
/// commit what it holds before it gives up (nothing is lost then: the sources' offsets
/// were not moved either, so the events are read again at the next start).
const RECOVER_AFTER_STOP: Duration = Duration::from_secs(2);

/// Where forwarders leave their progress for the writer to commit: the spool has one
/// writer, so cursor moves ride along with the next group commit instead of competing
/// for SQLite's write lock.
#[derive(Debug, Clone, Default)]
pub struct ProgressInbox(
    Arc<Mutex<Vec<ForwardProgress>>>,
    Arc<AtomicI64>,
    Arc<AtomicBool>,
    Arc<Mutex<Vec<crate::integrity::Peer>>>,
);

impl ProgressInbox {
    /// The highest sequence number committed so far.
    pub fn committed_seq(&self) -> i64 {
        self.1.load(Ordering::Acquire)
    }

    /// Sets the other relays' chain heads that the next checkpoints witness (the
    /// installation store's shipper keeps it fresh).
    pub fn set_peers(&self, peers: Vec<crate::integrity::Peer>) {
        *self.3.lock().expect("peers") = peers;
    }

    fn peers(&self) -> Vec<crate::integrity::Peer> {
        self.3.lock().expect("peers").clone()
    }

    /// Asks the writer for a checkpoint over everything stored so far, now (before the
    /// forwarders' last sends at shutdown, so that it reaches CloudWatch too).
    pub fn request_checkpoint(&self) {
        self.2.store(true, Ordering::Release);
    }

    /// Whether a requested checkpoint is not committed yet.
    pub fn checkpoint_pending(&self) -> bool {
        self.2.load(Ordering::Acquire)
    }

    /// Leaves a forwarder's progress for the next commit. Progress of one cursor is
    /// folded into the entry already waiting for it (the cursor only moves forward;
    /// counts add up; rejections keep their order), so the inbox holds one entry per
    /// forwarder however long the writer is held up (a full disk, a slow commit).
    pub fn push(&self, p: ForwardProgress) {
        let mut waiting = self.0.lock().expect("progress inbox");
        match waiting.iter_mut().find(|w| w.cursor_name == p.cursor_name) {
            Some(w) => {
                w.cursor = w.cursor.max(p.cursor);
                w.forwarded += p.forwarded;
                w.rejected.extend(p.rejected);
            }
            None => waiting.push(p),
        }
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

/// Events the API's reads record (their own audit events), left for the writer's next
/// group commit without waking it: the writer takes them at its next turn, at the latest
/// after [`IDLE_POLL`]. Sent through the writer's channel instead, each read woke the
/// writer thread (`docs/benchmarks.md`, session 11). Bounded: when it holds
/// [`EventInbox::MAX`] events the caller uses the writer's channel, which waits for room.
#[derive(Debug, Clone, Default)]
pub struct EventInbox(Arc<Mutex<InboxState>>);

#[derive(Debug, Default)]
struct InboxState {
    events: Vec<crate::event::Event>,
    /// The writer has stopped: nothing left here would be written.
    closed: bool,
}

/// Why an event was not left in the inbox.
#[derive(Debug)]
pub enum InboxRefusal {
    /// The inbox is full: the event is handed back, for the writer's channel.
    Full(Box<crate::event::Event>),
    /// The writer has stopped.
    Closed,
}

impl EventInbox {
    /// Events the inbox holds before callers are sent to the writer's channel.
    pub const MAX: usize = 1024;

    /// Leaves an event for the writer's next group commit.
    pub fn push(&self, ev: crate::event::Event) -> Result<(), InboxRefusal> {
        let mut st = self.0.lock().expect("event inbox");
        if st.closed {
            return Err(InboxRefusal::Closed);
        }
        if st.events.len() >= Self::MAX {
            return Err(InboxRefusal::Full(Box::new(ev)));
        }
        st.events.push(ev);
        Ok(())
    }

    fn take(&self) -> Vec<crate::event::Event> {
        std::mem::take(&mut self.0.lock().expect("event inbox").events)
    }

    /// Closes the inbox if it is empty (the writer is about to stop); says whether it did.
    fn close_if_empty(&self) -> bool {
        let mut st = self.0.lock().expect("event inbox");
        if st.events.is_empty() {
            st.closed = true;
        }
        st.closed
    }

    /// Closes it whatever it holds (the writer stopped on an error).
    fn close(&self) {
        self.0.lock().expect("event inbox").closed = true;
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
            purge_chunk: 10_000,
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

/// The open group commit. What it holds is kept until it commits, so that a commit that
/// fails for want of disk can be written again.
#[derive(Debug)]
struct Txn {
    /// When it began; `None`: no transaction is open.
    since: Option<Instant>,
    /// Events (and progress reports) in it, against `max_events`.
    waiting: usize,
    batches: Vec<AppendBatch>,
    progress: Vec<ForwardProgress>,
    report: CommitReport,
    /// A checkpoint was asked for in it (idle, shutdown, requested): it is written again
    /// if the commit has to be.
    checkpoint: bool,
    /// The checkpoint state when it began.
    uncovered: u64,
    last_checkpoint: Instant,
}

impl Default for Txn {
    fn default() -> Self {
        Txn {
            since: None,
            waiting: 0,
            batches: Vec::new(),
            progress: Vec::new(),
            report: CommitReport::default(),
            checkpoint: false,
            uncovered: 0,
            last_checkpoint: Instant::now(),
        }
    }
}

pub struct SpoolWriter {
    spool: Spool,
    txn: Txn,
    totals: WriterTotals,
    opts: WriterOptions,
    upkeep: Upkeep,
    /// Events stored since the last checkpoint, and when that was.
    uncovered: u64,
    last_checkpoint: Instant,
    last_purge_check: Option<Instant>,
    purge: Option<PurgeRun>,
    /// While events arrive, no purge chunk before this.
    purge_next: Instant,
    /// The last purge chunk failed for want of disk: wait for `purge_next` even when idle.
    purge_failed: bool,
    progress: ProgressInbox,
    /// The API's reads' own events.
    events: EventInbox,
    /// Set while the spool's files are at or over `max_bytes`: sources pause.
    full: Arc<AtomicBool>,
    /// The stop signal [`SpoolWriter::run`] was given (recovery looks at it).
    stop: CancellationToken,
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
            txn: Txn::default(),
            totals: WriterTotals::default(),
            uncovered: (spool.last_seq() - covered).max(0) as u64,
            last_checkpoint: Instant::now(),
            last_purge_check: None,
            purge: None,
            purge_next: Instant::now(),
            purge_failed: false,
            spool,
            opts,
            upkeep,
            progress,
            events: EventInbox::default(),
            full,
            stop: CancellationToken::new(),
        }
    }

    /// Takes the events that `inbox` is given, as well as those of the channel.
    pub fn with_events(mut self, inbox: EventInbox) -> Self {
        self.events = inbox;
        self
    }

    /// Compares the spool's used bytes on disk (free pages left by retention do not count)
    /// with the cap; sets or clears the full flag
    /// (cleared below 95 % of the cap, so reading does not flap).
    fn check_disk_cap(&self) {
        let bytes = self.spool.used_bytes();
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
        self,
        rx: Receiver<AppendBatch>,
        stop: CancellationToken,
    ) -> Result<WriterTotals, SpoolError> {
        let events = self.events.clone();
        let r = self.run_inner(rx, stop);
        // Whatever ended the writer, later events are refused rather than left unwritten.
        events.close();
        r
    }

    fn run_inner(
        mut self,
        rx: Receiver<AppendBatch>,
        stop: CancellationToken,
    ) -> Result<WriterTotals, SpoolError> {
        self.stop = stop.clone();
        let mut sources_open = true;
        self.progress
            .1
            .store(self.spool.last_seq(), Ordering::Release);
        loop {
            let wait = match self.txn.since {
                None => IDLE_POLL,
                Some(t) => self.opts.interval.saturating_sub(t.elapsed()),
            };
            let msg = if sources_open {
                rx.recv_timeout(wait)
            } else {
                // Sources are gone; forwarders may still report progress.
                std::thread::sleep(wait.min(STOP_STEP));
                Err(RecvTimeoutError::Timeout)
            };
            let progress = self.progress.take();
            if !progress.is_empty() {
                self.add(None, progress)?;
            }
            let events = self.events.take();
            if !events.is_empty() {
                self.add_batch(AppendBatch {
                    events,
                    ..Default::default()
                })?;
            }
            if self.progress.checkpoint_pending() {
                if self.uncovered > 0 {
                    self.checkpoint_now()?;
                }
                // Cleared only once committed: the requester then reads committed_seq.
                self.progress.2.store(false, Ordering::Release);
            }
            match msg {
                Ok(batch) => self.add_batch(batch)?,
                Err(RecvTimeoutError::Timeout) => {
                    if self.txn.since.is_none() && self.full.load(Ordering::Relaxed) {
                        // Idle and paused: retention may have freed space. (Idle and not
                        // full, nothing is written, so the used bytes cannot grow: no
                        // need to look 20 times a second.)
                        self.check_disk_cap();
                    }
                    if self.txn.since.is_some() {
                        self.commit()?;
                    } else if stop.is_cancelled()
                        && self.progress.is_empty()
                        && self.events.close_if_empty()
                    {
                        if self.uncovered > 0 {
                            // The shutdown checkpoint.
                            self.checkpoint_now()?;
                        }
                        return Ok(self.totals);
                    } else if self.last_checkpoint.elapsed() >= self.upkeep.checkpoint_interval {
                        // Idle: a checkpoint still marks the time, so quiet hours are covered.
                        self.checkpoint_now()?;
                    } else {
                        self.purge_tick(false)?;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    sources_open = false;
                    if self.txn.since.is_some() {
                        self.commit()?;
                    }
                }
            }
        }
    }

    /// Adds a batch to the open group commit, and commits it once it holds `max_events`.
    fn add_batch(&mut self, batch: AppendBatch) -> Result<(), SpoolError> {
        self.add(Some(batch), Vec::new())?;
        if self.txn.waiting >= self.opts.max_events {
            self.commit()?;
        }
        Ok(())
    }

    /// Begins a group commit if none is open.
    fn begin(&mut self) -> Result<(), SpoolError> {
        if self.txn.since.is_none() {
            self.spool.begin()?;
            self.txn.since = Some(Instant::now());
            self.txn.uncovered = self.uncovered;
            self.txn.last_checkpoint = self.last_checkpoint;
        }
        Ok(())
    }

    /// Adds a batch and/or forwarding progress to the open group commit, keeping them
    /// until it is committed.
    fn add(
        &mut self,
        batch: Option<AppendBatch>,
        progress: Vec<ForwardProgress>,
    ) -> Result<(), SpoolError> {
        let r = self.begin().and_then(|()| {
            if let Some(b) = &batch {
                let r = self.write_checkpointed(b)?;
                self.txn.report.stored += r.stored;
                self.txn.report.duplicates += r.duplicates;
                self.txn.report.quarantined += r.quarantined;
            }
            for p in &progress {
                self.spool.write_progress(p)?;
            }
            Ok(())
        });
        self.txn.waiting += match &batch {
            Some(b) => b.events.len().max(1),
            None => 1,
        };
        self.txn.batches.extend(batch);
        self.txn.progress.extend(progress);
        match r {
            Err(e) if e.is_transient() => self.recover(e),
            r => r,
        }
    }

    /// Commits the open group commit (with a checkpoint when one is due).
    fn commit(&mut self) -> Result<(), SpoolError> {
        let started = Instant::now();
        let r = (|| {
            if self.checkpoint_due() {
                self.checkpoint()?;
            }
            self.spool.commit()
        })();
        match r {
            Ok(()) => {}
            Err(e) if e.is_transient() => return self.recover(e),
            Err(e) => return Err(e),
        }
        tracing::debug!(
            events = self.txn.waiting,
            commit_ms = started.elapsed().as_millis() as u64,
            "spool commit"
        );
        self.committed();
        self.purge_tick(true)
    }

    /// Bookkeeping after a successful commit.
    fn committed(&mut self) {
        // The spool grows at commits: that is when the cap is looked at.
        self.check_disk_cap();
        let txn = std::mem::take(&mut self.txn);
        self.totals.commits += 1;
        self.totals.stored += txn.report.stored;
        self.totals.duplicates += txn.report.duplicates;
        self.totals.quarantined += txn.report.quarantined;
        self.progress
            .1
            .store(self.spool.last_seq(), Ordering::Release);
    }

    /// Whether the open group commit ends with a checkpoint.
    fn checkpoint_due(&self) -> bool {
        self.txn.checkpoint
            || self.uncovered >= self.upkeep.checkpoint_every
            || self.last_checkpoint.elapsed() >= self.upkeep.checkpoint_interval
    }

    /// A checkpoint in a transaction of its own (idle, shutdown, requested). It is
    /// written at the commit, inside the recovery from a full disk: a commit written
    /// again keeps it.
    fn checkpoint_now(&mut self) -> Result<(), SpoolError> {
        self.add(None, Vec::new())?;
        self.txn.checkpoint = true;
        self.commit()
    }

    /// The disk is full or failing (ENOSPC, EFBIG, EIO): sources pause (their offsets
    /// stay where the last commit put them), and the open group commit — kept in memory —
    /// is written again until it commits. Nothing is lost, nothing crashes; readiness
    /// fails meanwhile.
    fn recover(&mut self, first: SpoolError) -> Result<(), SpoolError> {
        tracing::warn!(error = %first, held_events = self.txn.report.stored, "the spool's disk is full or failing: reading is paused (offsets kept, nothing lost) and /readyz fails; retrying until the write succeeds");
        self.full.store(true, Ordering::Relaxed);
        let mut delay = Duration::from_millis(250);
        let mut attempts = 0u64;
        let mut stopped_at: Option<Instant> = None;
        let mut last = first;
        loop {
            self.spool
                .rollback()
                .or_else(|e| if e.is_transient() { Ok(()) } else { Err(e) })?;
            self.uncovered = self.txn.uncovered;
            self.last_checkpoint = self.txn.last_checkpoint;
            if self.stop.is_cancelled() {
                let since = *stopped_at.get_or_insert_with(Instant::now);
                if since.elapsed() >= RECOVER_AFTER_STOP {
                    let held: usize = self.txn.batches.iter().map(|b| b.events.len()).sum();
                    tracing::error!(held_events = held, attempts, "stopping while the spool's disk is still full or failing: the held events are not committed; their offsets were not either, so they are read again at the next start");
                    return Err(last);
                }
                delay = delay.min(Duration::from_millis(250));
            }
            // Slept in steps, so that a stop signal is seen at once.
            let wake = Instant::now() + delay;
            while Instant::now() < wake {
                if self.stop.is_cancelled() && stopped_at.is_none() {
                    break;
                }
                std::thread::sleep(
                    wake.saturating_duration_since(Instant::now())
                        .min(STOP_STEP),
                );
            }
            delay = (delay * 2).min(Duration::from_secs(10));
            attempts += 1;
            match self.rewrite() {
                Ok(()) => {
                    tracing::info!(attempts, "the spool is writable again: the held events are committed and reading resumes");
                    self.full.store(false, Ordering::Relaxed);
                    self.committed();
                    return Ok(());
                }
                Err(e) if e.is_transient() => {
                    tracing::debug!(error = %e, attempts, "spool still not writable");
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Writes everything the open group commit held again, and commits it.
    fn rewrite(&mut self) -> Result<(), SpoolError> {
        self.spool.begin()?;
        let batches = std::mem::take(&mut self.txn.batches);
        let mut report = CommitReport::default();
        let r = (|| {
            for b in &batches {
                let r = self.write_checkpointed(b)?;
                report.stored += r.stored;
                report.duplicates += r.duplicates;
                report.quarantined += r.quarantined;
            }
            for p in &self.txn.progress {
                self.spool.write_progress(p)?;
            }
            if self.checkpoint_due() {
                self.checkpoint()?;
            }
            self.spool.commit()
        })();
        self.txn.batches = batches;
        self.txn.report = report;
        r
    }

    /// Writes a batch into the open transaction with a checkpoint after every
    /// `checkpoint_every` stored events, at the exact event where one falls (the source
    /// checkpoints and counters go with the batch, in the same transaction).
    fn write_checkpointed(&mut self, batch: &AppendBatch) -> Result<CommitReport, SpoolError> {
        let mut total = CommitReport::default();
        let mut events = &batch.events[..];
        while !events.is_empty() {
            let room = self
                .upkeep
                .checkpoint_every
                .saturating_sub(self.uncovered)
                .max(1) as usize;
            let (part, rest) = events.split_at(room.min(events.len()));
            let r = self.spool.write_events(part)?;
            self.uncovered += r.stored;
            total.stored += r.stored;
            total.duplicates += r.duplicates;
            if self.uncovered >= self.upkeep.checkpoint_every {
                self.checkpoint()?;
            }
            events = rest;
        }
        total.quarantined = self.spool.write_rest(batch)?.quarantined;
        Ok(total)
    }

    /// Adds a checkpoint to the open transaction.
    fn checkpoint(&mut self) -> Result<(), SpoolError> {
        let cp = self.spool.write_checkpoint_with_peers(
            self.upkeep.signer.as_deref(),
            super::now_ms(),
            self.progress.peers(),
        )?;
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
    /// purge runs, between group commits. While events arrive (`busy`), a chunk that took
    /// `d` is followed by at least `PURGE_SPACING × d` of ingest, so a purge takes at most
    /// about a fifth of the writer's time; when idle, chunks follow each other.
    fn purge_tick(&mut self, busy: bool) -> Result<(), SpoolError> {
        if self.purge.is_some() && (busy || self.purge_failed) && Instant::now() < self.purge_next {
            return Ok(());
        }
        if self.purge.is_none() {
            if self
                .last_purge_check
                .is_some_and(|t| t.elapsed() < self.upkeep.purge_check)
            {
                return Ok(());
            }
            self.last_purge_check = Some(Instant::now());
            let cutoff_ms = super::now_ms() - self.upkeep.retention.as_millis() as i64;
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
        let started = Instant::now();
        let step = match self.spool.purge_step(
            p.target,
            self.upkeep.purge_chunk,
            p.cutoff_ms,
            p.run,
        ) {
            Ok(step) => step,
            Err(e) if e.is_transient() => {
                // Deleting needs room in the WAL too; try again later, nothing is lost.
                self.spool.rollback()?;
                tracing::warn!(error = %e, "retention could not delete (disk full or failing); trying again in 10 s");
                self.purge_next = Instant::now() + Duration::from_secs(10);
                self.purge_failed = true;
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        self.purge_failed = false;
        self.purge_next = Instant::now() + started.elapsed() * PURGE_SPACING;
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

#[cfg(test)]
mod tests {
    //! The writer against a real SQLite spool on a small tmpfs that is filled up and
    //! freed again (needs root, as in CI; `AUDIT_RELAY_TEST_NO_MOUNT=1` skips knowingly).

    use super::*;
    use crate::config::{Durability, Envelope};
    use crate::event::{decode, Decoded, Event};
    use std::io::Write;
    use std::sync::mpsc::{sync_channel, SyncSender};

    struct Tmpfs(tempfile::TempDir);

    impl Tmpfs {
        fn mount() -> Option<Tmpfs> {
            let dir = tempfile::tempdir().unwrap();
            let ok = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                assert!(
                    std::env::var_os("AUDIT_RELAY_TEST_NO_MOUNT").is_some(),
                    "cannot mount a tmpfs (needs root); set AUDIT_RELAY_TEST_NO_MOUNT=1 to skip this test knowingly"
                );
                return None;
            }
            Some(Tmpfs(dir))
        }

        fn path(&self) -> &std::path::Path {
            self.0.path()
        }

        /// Takes every free byte; returns the filler's path (remove it to free them).
        fn fill(&self) -> std::path::PathBuf {
            let p = self.path().join("filler");
            let mut f = std::fs::File::create(&p).unwrap();
            let chunk = vec![0u8; 4096];
            while f.write_all(&chunk).is_ok() {}
            let _ = f.flush();
            p
        }
    }

    impl Drop for Tmpfs {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(self.0.path())
                .status();
        }
    }

    fn events(first: u64, n: u64) -> AppendBatch {
        let events = (first..first + n)
            .map(|i| {
                let line = serde_json::json!({
                    "id": uuid::Uuid::from_u128(i as u128 + 1).to_string(),
                    "timestamp": format!("2024-06-24T13:{:02}:{:02}.{:03}Z", i / 60_000, i / 1000 % 60, i % 1000),
                    "action": "startWorkspace", "organizationId": "org-1",
                    "actorId": "actor-1", "args": [],
                })
                .to_string();
                match decode(line.as_bytes(), Envelope::Event) {
                    Decoded::Event(e) => e,
                    other => panic!("{other:?}"),
                }
            })
            .collect::<Vec<Event>>();
        AppendBatch {
            read: n,
            events,
            ..Default::default()
        }
    }

    struct Running {
        tx: Option<SyncSender<AppendBatch>>,
        stop: CancellationToken,
        inbox: ProgressInbox,
        full: Arc<AtomicBool>,
        done: std::sync::mpsc::Receiver<Result<WriterTotals, SpoolError>>,
    }

    /// A writer on `dir` with 100 events committed.
    fn start(dir: &std::path::Path) -> Running {
        start_with(dir, EventInbox::default())
    }

    /// The same, taking events from `events` too.
    fn start_with(dir: &std::path::Path, event_inbox: EventInbox) -> Running {
        let spool = Spool::open(dir, Durability::Os, 1 << 20).unwrap();
        let inbox = ProgressInbox::default();
        let full = Arc::new(AtomicBool::new(false));
        let opts = WriterOptions {
            max_events: 10_000,
            interval: Duration::from_millis(20),
            max_bytes: u64::MAX,
        };
        let upkeep = Upkeep {
            checkpoint_interval: Duration::from_secs(3600),
            ..Upkeep::unsigned(90)
        };
        let writer = SpoolWriter::new(spool, opts, upkeep, inbox.clone(), full.clone())
            .with_events(event_inbox);
        let (tx, rx) = sync_channel(4);
        let stop = CancellationToken::new();
        let (done_tx, done) = std::sync::mpsc::channel();
        let s = stop.clone();
        std::thread::spawn(move || {
            let _ = done_tx.send(writer.run(rx, s));
        });
        tx.send(events(0, 100)).unwrap();
        let r = Running {
            tx: Some(tx),
            stop,
            inbox,
            full,
            done,
        };
        wait("100 events committed", || r.inbox.committed_seq() == 100);
        r
    }

    fn wait(what: &str, mut ok: impl FnMut() -> bool) {
        let t = Instant::now();
        while !ok() {
            assert!(t.elapsed() < Duration::from_secs(10), "timed out: {what}");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn events_left_in_the_inbox_are_committed_up_to_the_stop_and_refused_after() {
        let dir = tempfile::tempdir().unwrap();
        let inbox = EventInbox::default();
        let mut w = start_with(dir.path(), inbox.clone());
        // Nothing comes through the channel: the idle writer takes them at its next turn.
        for ev in events(1000, 10).events {
            inbox.push(ev).unwrap();
        }
        wait("the inbox's events committed", || {
            w.inbox.committed_seq() == 110
        });
        // Left just before the stop: still written before the writer ends.
        for ev in events(2000, 5).events {
            inbox.push(ev).unwrap();
        }
        drop(w.tx.take());
        w.stop.cancel();
        let totals = w
            .done
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer stops")
            .expect("and commits");
        assert_eq!(totals.stored, 115);
        let spool = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        assert_eq!(
            spool.last_seq(),
            116,
            "115 events and the shutdown checkpoint"
        );
        let ev = events(3000, 1).events.remove(0);
        assert!(matches!(inbox.push(ev), Err(InboxRefusal::Closed)));
    }

    #[test]
    fn a_full_inbox_hands_the_event_back() {
        let inbox = EventInbox::default();
        let mut evs = events(0, EventInbox::MAX as u64 + 1).events;
        let last = evs.pop().unwrap();
        for ev in evs {
            inbox.push(ev).unwrap();
        }
        match inbox.push(last.clone()) {
            Err(InboxRefusal::Full(back)) => assert_eq!(back.id, last.id),
            other => panic!("{other:?}"),
        }
        assert_eq!(inbox.take().len(), EventInbox::MAX);
        inbox.push(last).unwrap();
    }

    /// `(seq of the newest checkpoint row, the sequence it covers)`.
    fn last_checkpoint(dir: &std::path::Path) -> Option<(i64, i64)> {
        let s = Spool::open_read_only(dir).unwrap();
        s.last_checkpoint()
            .unwrap()
            .map(|(row, cp)| (row, cp.sequence))
    }

    #[test]
    fn the_shutdown_checkpoint_survives_a_commit_written_again_after_a_full_disk() {
        let Some(fs) = Tmpfs::mount() else { return };
        let mut w = start(fs.path());
        assert_eq!(last_checkpoint(fs.path()), None);
        let filler = fs.fill();
        drop(w.tx.take());
        w.stop.cancel();
        wait("the full disk to be seen", || {
            w.full.load(Ordering::Relaxed)
        });
        std::fs::remove_file(filler).unwrap();
        let totals = w
            .done
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer stops")
            .expect("and commits");
        assert_eq!(totals.stored, 100);
        assert_eq!(
            last_checkpoint(fs.path()),
            Some((101, 100)),
            "the shutdown checkpoint was dropped when its commit was written again"
        );
    }

    #[test]
    fn a_requested_checkpoint_is_committed_before_its_pending_flag_clears() {
        let Some(fs) = Tmpfs::mount() else { return };
        let mut w = start(fs.path());
        let filler = fs.fill();
        w.inbox.request_checkpoint();
        wait("the full disk to be seen", || {
            w.full.load(Ordering::Relaxed)
        });
        assert!(w.inbox.checkpoint_pending(), "cleared before it committed");
        std::fs::remove_file(filler).unwrap();
        wait("the checkpoint to commit", || !w.inbox.checkpoint_pending());
        assert_eq!(last_checkpoint(fs.path()), Some((101, 100)));
        assert!(!w.full.load(Ordering::Relaxed));
        drop(w.tx.take());
        w.stop.cancel();
        w.done
            .recv_timeout(Duration::from_secs(10))
            .unwrap()
            .unwrap();
    }

    #[test]
    fn recovery_from_a_full_disk_gives_up_soon_after_the_stop_signal() {
        let Some(fs) = Tmpfs::mount() else { return };
        let mut w = start(fs.path());
        let _filler = fs.fill();
        w.tx.as_ref().unwrap().send(events(100, 100)).unwrap();
        wait("the full disk to be seen", || {
            w.full.load(Ordering::Relaxed)
        });
        drop(w.tx.take());
        let stopped = Instant::now();
        w.stop.cancel();
        let r = w
            .done
            .recv_timeout(Duration::from_secs(10))
            .expect("the writer ignored the stop signal while the disk was full");
        assert!(
            r.expect_err("an error: not everything is committed")
                .is_transient(),
            "the disk error"
        );
        assert!(stopped.elapsed() < Duration::from_secs(5));
        let st = Spool::open_read_only(fs.path()).unwrap().stats().unwrap();
        assert_eq!(st.events, 100, "the held batch is not committed");
    }

    #[test]
    fn the_inbox_holds_one_entry_per_forwarder_however_long_the_writer_waits() {
        let inbox = ProgressInbox::default();
        for i in 1..=10_000i64 {
            for name in ["cloudwatch", "cloudwatch-1"] {
                inbox.push(crate::spool::ForwardProgress {
                    cursor_name: name.into(),
                    cursor: i * 10,
                    forwarded: 9,
                    rejected: if i % 1000 == 0 {
                        vec![crate::spool::Rejection {
                            seq: i * 10,
                            reason: "too_old".into(),
                            detail: String::new(),
                        }]
                    } else {
                        Vec::new()
                    },
                });
            }
        }
        let got = inbox.drain();
        assert_eq!(got.len(), 2);
        for p in &got {
            assert_eq!(p.cursor, 100_000);
            assert_eq!(p.forwarded, 90_000);
            let seqs: Vec<i64> = p.rejected.iter().map(|r| r.seq).collect();
            assert_eq!(seqs, (1..=10).map(|k| k * 10_000).collect::<Vec<_>>());
        }
        assert!(inbox.drain().is_empty());
    }
}
