//! Sources: where records come from, and the shared step that turns framed records into
//! what the spool stores.
//!
//! - [`framing`]: bytes → records (pure state machine per file).
//! - [`checkpoint`]: file identity and resume points.
//! - [`tail`]: follows files by glob, across rotation and restarts.
//! - [`rotated`]: at start, finds checkpointed files renamed out of the patterns.
//! - [`watch`]: which file system events wake the file source.
//! - [`stdin`]: reads standard input.

pub mod checkpoint;
pub mod framing;
pub mod rotated;
pub mod stdin;
pub mod tail;
pub mod watch;

use crate::config::Envelope;
use crate::event::{decode, Decoded, Invalid};
use crate::spool::{AppendBatch, Quarantined};
use framing::Frame;
use std::sync::mpsc::SyncSender;
use std::time::{Duration, Instant};

/// How many raw bytes of a bad record are kept in quarantine.
pub const QUARANTINE_RAW_BYTES: usize = 4096;
/// Events per batch handed to the spool writer.
pub const BATCH_EVENTS: usize = 1024;

/// The spool writer is gone (it failed or shut down).
#[derive(Debug, thiserror::Error)]
#[error("the spool writer has stopped")]
pub struct WriterGone;

/// Decodes framed records into a batch and hands full batches to the spool writer.
pub struct Collector {
    envelope: Envelope,
    batch: AppendBatch,
    tx: SyncSender<AppendBatch>,
    /// Quarantine warnings are limited to one a second; the rest are counted.
    last_warning: Option<Instant>,
    unlogged: u64,
}

impl Collector {
    pub fn new(envelope: Envelope, tx: SyncSender<AppendBatch>) -> Self {
        Collector {
            envelope,
            batch: AppendBatch::default(),
            tx,
            last_warning: None,
            unlogged: 0,
        }
    }

    /// Takes one framed record from `source`.
    pub fn frame(&mut self, frame: Frame<'_>, source: &str) {
        self.batch.read += 1;
        match frame {
            Frame::Record { bytes, offset } => match decode(bytes, self.envelope) {
                Decoded::Event(ev) => self.batch.events.push(ev),
                Decoded::Skipped => self.batch.skipped += 1,
                Decoded::Invalid(why) => self.quarantine(why, source, offset, bytes),
            },
            Frame::Bad {
                reason,
                raw,
                offset,
            } => self.quarantine(reason.into(), source, offset, raw),
        }
    }

    fn quarantine(&mut self, why: Invalid, source: &str, offset: u64, raw: &[u8]) {
        // Never the raw bytes, nor the offending value, in the log: they are input and may
        // hold an event's args. The log names the field and the problem; the stored
        // reason adds the value, next to the raw bytes.
        if self
            .last_warning
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(
                source,
                offset,
                reason = %why.reason,
                also_quarantined_since_last_warning = self.unlogged,
                "record quarantined (see `audit-relay quarantine list`)"
            );
            self.last_warning = Some(Instant::now());
            self.unlogged = 0;
        } else {
            self.unlogged += 1;
        }
        self.batch.quarantined.push(Quarantined {
            reason: why.to_string(),
            source: source.to_string(),
            offset,
            raw: raw[..raw.len().min(QUARANTINE_RAW_BYTES)].to_vec(),
        });
    }

    pub fn is_full(&self) -> bool {
        self.batch.events.len() >= BATCH_EVENTS
    }

    /// The batch being filled, e.g. to add checkpoints before [`Collector::send`].
    pub fn batch_mut(&mut self) -> &mut AppendBatch {
        &mut self.batch
    }

    /// Hands the batch to the writer, waiting while the writer is behind.
    pub fn send(&mut self) -> Result<(), WriterGone> {
        if self.batch.is_empty() {
            return Ok(());
        }
        let batch = std::mem::take(&mut self.batch);
        self.tx.send(batch).map_err(|_| WriterGone)
    }
}
