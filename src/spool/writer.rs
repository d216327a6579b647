//! The one writer task: takes batches from the sources and group-commits them.
//!
//! A commit happens when `max_events` events wait or the oldest has waited `interval`,
//! whichever first, and when the sources are gone (shutdown). The channel it reads is
//! bounded, so a slow disk slows the sources instead of growing memory.

use super::{AppendBatch, Spool, SpoolError};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// How long an idle writer waits before looking at its stop signal again.
const IDLE_POLL: Duration = Duration::from_millis(50);

#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    pub max_events: usize,
    pub interval: Duration,
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
}

impl SpoolWriter {
    pub fn new(spool: Spool, opts: WriterOptions) -> Self {
        SpoolWriter { spool, opts }
    }

    /// Runs until every sender is dropped, or until `stop` is signalled and nothing
    /// more arrives, committing what it got.
    pub fn run(
        mut self,
        rx: Receiver<AppendBatch>,
        stop: CancellationToken,
    ) -> Result<WriterTotals, SpoolError> {
        let mut totals = WriterTotals::default();
        let mut open_since: Option<Instant> = None;
        let mut waiting = 0usize;
        loop {
            let wait = match open_since {
                None => IDLE_POLL,
                Some(t) => self.opts.interval.saturating_sub(t.elapsed()),
            };
            let msg = rx.recv_timeout(wait);
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
                    } else if stop.is_cancelled() {
                        return Ok(totals);
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    if open_since.is_some() {
                        self.commit(&mut open_since, &mut waiting, &mut totals)?;
                    }
                    return Ok(totals);
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
