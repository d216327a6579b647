//! The spool: the durable local store of every event, and the pipeline's write-ahead log.
//!
//! # Invariants
//!
//! - An event is stored at most once: its `(timestamp, id)` pair is unique. A re-read
//!   line carries the same timestamp as the first read, so this catches every re-read
//!   while its index stays near its right edge (see `docs/benchmarks.md`).
//! - Each stored event gets the next sequence number; sequence numbers only grow, and
//!   are never reused, even after the newest events are purged.
//! - Source checkpoints are written in the same transaction as the events read up to
//!   them, so after a crash reading resumes exactly after the last stored event.
//! - Counters (`read`, `skipped`, `duplicates`, `quarantined`, `events`, `forwarded`,
//!   `rejected`, `checkpoints`, `purged`) move in the same transaction as the rows they
//!   count.
//! - Every row carries `hash`, chained from the row before it (see [`crate::integrity`]);
//!   `meta.last_seq` and `meta.chain_head` move in the same commit.
//! - Retention deletes only a prefix of the sequence, up to just before a checkpoint row,
//!   which stays as the anchor; `meta.purged_through` and `meta.purge_anchor` record the
//!   cut, and each purge has a row in `purges`.
//! - Every rejection (an event CloudWatch will not take) is a row of the chain too: a
//!   forwarding-ledger row (`org` 0, `action` `rejected`, body a [`LedgerEntry`]), written
//!   in the commit that applies it. The `rejected` table is its index for stats;
//!   `verify --cloudwatch` trusts only the ledger rows.
//! - A forwarder's cursor only moves forward, and only after CloudWatch accepted (or the
//!   forwarder rejected, one by one) every event up to it. The single writer applies
//!   forwarding progress in its next commit; a crash before that re-sends, never skips.
//!
//! # Format (SQLite, WAL mode, `PRAGMA user_version = 4`)
//!
//! | table | key | holds |
//! |---|---|---|
//! | `events` | `seq` (rowid) | `ts_ms`, `id` (16-byte UUID), `org` → `orgs`, `actor`, `action`, `body` (the event JSON, `args` as an array), `hash` (32-byte chain hash); checkpoint rows (`action` `checkpoint`) and forwarding-ledger rows (`action` `rejected`) have `org` 0 |
//! | `orgs` | `org` (rowid) | `organization_id`: a compact integer key per organization (0: `""`, checkpoints) |
//! | `purges` | `pid` | `at_ms`, `deleted`, `through_seq`, `anchor_seq`, `anchor_head`: one row per retention purge |
//! | `quarantine` | `qid` | `at_ms`, `reason`, `source`, `offset`, `raw` (capped) |
//! | `checkpoints` | `(dev, ino)` | `fp_len`, `fp_hash`, `path`, `offset`, `mode`, `replay_until` |
//! | `counters` | `name` | `value` |
//! | `cursors` | `name` | `seq`: the last sequence number a forwarder has finished with |
//! | `rejected` | `seq` | `reason`, `detail`, `at_ms`: events CloudWatch will not take |
//! | `meta` | `key` | `value`: `last_seq`, `chain_head`, `last_commit_ms`, `opened_ms`, `purged_through`, `purge_anchor`, `purged_max_ts`, the page-token key |
//!
//! Indexes: `events(ts_ms, id)` unique (dedup, and time bounds), `events(org, ts_ms)`
//! (one organization, newest first, within a time range), `events_ledger` (partial: the
//! rejected event's `seq` of each ledger row).
//!
//! Upgrades: 1 → 2 adds the re-read bound of checkpoints; 2 → 3 computes the hash chain
//! over every stored row; 3 → 4 records every row of `rejected` in the ledger.
//!
//! A writer holds `spool.lock` in `spool.dir` (an exclusive `flock`, see [`SpoolLock`]):
//! two writers on one spool would hand out the same sequence numbers and overwrite each
//! other's chain head and source offsets.
//!
//! The rest of the program reaches SQLite only through [`Spool`] and [`SpoolWriter`].

mod chain;
mod ledger;
mod lock;
mod sqlite;
mod writer;

pub use chain::{ChainMeta, ChainRow, PurgeRecord, PurgeStep};
pub use ledger::{LedgerEntry, LEDGER_ACTION};
pub use lock::{LockError, SpoolLock, LOCK_FILE};
pub use sqlite::{Spool, SpoolError, FORWARD_CURSOR};
pub use writer::{ProgressInbox, SpoolWriter, Upkeep, WriterOptions};

use crate::event::Event;
use crate::source::checkpoint::OffsetUpdate;
use serde::Serialize;

/// What one source hands to the spool in one piece: events and the checkpoints that
/// cover them, committed together.
#[derive(Debug, Default)]
pub struct AppendBatch {
    pub events: Vec<Event>,
    pub quarantined: Vec<Quarantined>,
    /// Records read (events, skipped and quarantined alike).
    pub read: u64,
    /// Records that were not audit events.
    pub skipped: u64,
    pub checkpoints: Vec<OffsetUpdate>,
}

impl AppendBatch {
    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
            && self.quarantined.is_empty()
            && self.read == 0
            && self.skipped == 0
            && self.checkpoints.is_empty()
    }
}

/// Bad input kept for inspection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quarantined {
    pub reason: String,
    /// File path, or `stdin`.
    pub source: String,
    /// Byte offset of the record in its source.
    pub offset: u64,
    /// The raw bytes, capped.
    pub raw: Vec<u8>,
}

/// A quarantine entry as stored.
#[derive(Debug, Clone, Serialize)]
pub struct QuarantineEntry {
    pub qid: i64,
    /// When it was quarantined, RFC 3339.
    pub at: String,
    pub reason: String,
    pub source: String,
    pub offset: u64,
    /// The raw bytes, lossily shown as text (invalid UTF-8 as U+FFFD).
    pub raw: String,
    /// The raw bytes, hex-encoded exactly.
    pub raw_hex: String,
}

/// An event read back from the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredEvent {
    pub seq: i64,
    pub ts_ms: i64,
    /// The organization's compact key (see [`Spool::organization_id`]).
    pub org: i64,
    pub body: String,
}

impl StoredEvent {
    /// A forwarding-ledger row (a rejection recorded in the chain): the spool's own
    /// bookkeeping, which forwarders step over instead of sending.
    pub fn is_ledger(&self) -> bool {
        self.org == crate::integrity::CHECKPOINT_ORG
            && self.body.starts_with(ledger::LEDGER_BODY_PREFIX)
    }
}

/// Forwarding progress: everything up to `cursor` is done; `rejected` lists the events
/// in that range that were refused (not sent), with the reason.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ForwardProgress {
    /// The forwarder's cursor name (stable across restarts and stream renames).
    pub cursor_name: String,
    pub cursor: i64,
    /// Events accepted by CloudWatch in this step.
    pub forwarded: u64,
    pub rejected: Vec<Rejection>,
}

/// An event that will not be (or was not) accepted by CloudWatch. It stays in the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub seq: i64,
    /// `too_old`, `too_new`, `expired`, `invalid`.
    pub reason: String,
    /// CloudWatch's message, or how the relay decided.
    pub detail: String,
}

/// Totals kept by the spool.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct Stats {
    pub events: u64,
    pub quarantined: u64,
    pub skipped: u64,
    pub duplicates: u64,
    pub read: u64,
    pub last_seq: i64,
    /// The forwarder's cursor: every event up to it is in CloudWatch or rejected.
    pub forwarded_seq: i64,
    /// Events after the cursor.
    pub unforwarded: u64,
    /// Seconds since the timestamp of the oldest unforwarded event (0 when none).
    pub forward_lag_seconds: u64,
    /// Events accepted by CloudWatch (counting re-sends after a lost answer).
    pub forwarded: u64,
    /// Events CloudWatch will not take (too old, too new, invalid); kept in the spool.
    pub rejected: u64,
    /// Unforwarded events more than 2 hours in the future (CloudWatch refuses them for
    /// now): the forwarder holds them and sends them once CloudWatch takes them.
    pub held: u64,
    /// Events deleted by retention (`events - purged` are in the spool).
    pub purged: u64,
    /// Integrity checkpoints written (rows of their own, counted in `last_seq`).
    pub checkpoints: u64,
    /// RFC 3339 of the oldest / newest event, if any.
    pub oldest: Option<String>,
    pub newest: Option<String>,
    /// Bytes of the database and its WAL on disk.
    pub bytes: u64,
}

/// What a commit stored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CommitReport {
    pub stored: u64,
    pub duplicates: u64,
    pub quarantined: u64,
}
