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
//! # Engines
//!
//! The local spool is SQLite (`spool/sqlite/`, one file per concern). The rest of the
//! program names no SQLite type: it holds a [`Spool`] handle, gets engine-neutral
//! [`SpoolError`]s (with [`SpoolError::is_transient`]), and the operations a store of
//! events must offer are the narrow [`EventLog`] trait, whose contract the tests below
//! check against an engine.

mod chain;
mod ledger;
mod lock;
mod sqlite;
mod writer;

pub use chain::{ChainMeta, ChainRow, PurgeRecord, PurgeStep};
pub use ledger::{LedgerEntry, LEDGER_ACTION};
pub use lock::{LockError, SpoolLock, LOCK_FILE};
pub use sqlite::{MessageIndex, Spool};
pub use writer::{EventInbox, InboxRefusal, ProgressInbox, SpoolWriter, Upkeep, WriterOptions};

use crate::event::Event;
use crate::source::checkpoint::OffsetUpdate;
use serde::Serialize;
use std::path::PathBuf;

/// The cursor name of the (single) CloudWatch forwarder.
pub const FORWARD_CURSOR: &str = "cloudwatch";

/// Everything that can go wrong with the spool, whatever engine holds it.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("no spool at {0} (has `audit-relay run` created it? check spool.dir)")]
    Missing(PathBuf),
    #[error("spool {path}: format version {found}, this build reads version {reads}")]
    Version {
        path: PathBuf,
        found: i64,
        reads: i64,
    },
    #[error("spool {0}: cannot create its directory: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("spool: {0}")]
    Engine(EngineError),
    #[error("spool: stored event {seq} is corrupt: {reason}")]
    Corrupt { seq: i64, reason: String },
}

impl SpoolError {
    /// Whether the failure may pass by itself (the disk is full or failing for now): the
    /// writer waits and tries again instead of exiting. Everything else is permanent.
    pub fn is_transient(&self) -> bool {
        matches!(self, SpoolError::Engine(e) if e.transient)
    }
}

/// A failure of the storage engine, with the engine's own error as its source.
#[derive(Debug)]
pub struct EngineError {
    transient: bool,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl EngineError {
    pub fn new(source: impl std::error::Error + Send + Sync + 'static, transient: bool) -> Self {
        EngineError {
            transient,
            source: Box::new(source),
        }
    }
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.source.fmt(f)
    }
}

impl std::error::Error for EngineError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(self.source.as_ref())
    }
}

/// The narrow interface of a store that keeps the relay's events in order: append with
/// the source offsets that cover them, read after a cursor, save forwarding progress,
/// query a page, purge, stats. [`Spool`] (SQLite) implements it.
pub trait EventLog {
    /// Stores a batch in one commit: its events (each `(timestamp, id)` once, in the next
    /// sequence numbers), its quarantined records and the source offsets that cover them.
    fn append(&mut self, batch: &AppendBatch) -> Result<CommitReport, SpoolError>;
    /// Up to `limit` events after sequence number `after`, in sequence order.
    fn read_after(&self, after: i64, limit: usize) -> Result<Vec<StoredEvent>, SpoolError>;
    /// Records forwarding progress in one commit; a cursor never moves back.
    fn save_progress(&mut self, p: &ForwardProgress) -> Result<(), SpoolError>;
    /// Up to `limit` of `q`'s events, newest first, strictly older than `before` in the
    /// keyset order `(ts_ms, seq)`.
    fn query_page(
        &self,
        q: &crate::query::Query,
        before: Option<(i64, i64)>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, SpoolError>;
    /// Deletes what retention may: events older than `cutoff_ms`, up to a checkpoint,
    /// never past the lowest of `cursors` (`None`: nothing forwards). Returns how many
    /// events it deleted.
    fn purge(&mut self, cutoff_ms: i64, cursors: Option<&[String]>) -> Result<u64, SpoolError>;
    /// Totals, with forwarding as seen by the lowest of `cursors`.
    fn stats(&self, cursors: &[String]) -> Result<Stats, SpoolError>;
}

impl EventLog for Spool {
    fn append(&mut self, batch: &AppendBatch) -> Result<CommitReport, SpoolError> {
        Spool::append(self, batch)
    }

    fn read_after(&self, after: i64, limit: usize) -> Result<Vec<StoredEvent>, SpoolError> {
        Spool::read_after(self, after, limit)
    }

    fn save_progress(&mut self, p: &ForwardProgress) -> Result<(), SpoolError> {
        self.begin()?;
        self.write_progress(p)?;
        self.commit()
    }

    fn query_page(
        &self,
        q: &crate::query::Query,
        before: Option<(i64, i64)>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, SpoolError> {
        self.query_chunk(q, before, limit)
    }

    fn purge(&mut self, cutoff_ms: i64, cursors: Option<&[String]>) -> Result<u64, SpoolError> {
        let forwarded = cursors.map(|c| self.min_cursor(c)).transpose()?;
        let Some(target) = self.purge_target(cutoff_ms, forwarded)? else {
            return Ok(0);
        };
        let (mut run, mut deleted) = (None, 0);
        loop {
            let step = self.purge_step(target, 10_000, cutoff_ms, run)?;
            run = Some(step.run);
            deleted += step.deleted;
            if step.through >= target {
                return Ok(deleted);
            }
        }
    }

    fn stats(&self, cursors: &[String]) -> Result<Stats, SpoolError> {
        self.stats_for(cursors)
    }
}

/// Now, in milliseconds since the epoch.
pub(crate) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

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

#[cfg(test)]
mod tests {
    //! The contract of [`EventLog`], checked against the SQLite engine.
    use super::*;
    use crate::config::{Durability, Envelope};
    use crate::event::{decode, format_timestamp_ms, Decoded};

    fn ev(i: u128, org: &str, ms: i64) -> Event {
        let line = serde_json::json!({
            "id": uuid::Uuid::from_u128(i).to_string(),
            "timestamp": format_timestamp_ms(ms), "action": "startWorkspace",
            "organizationId": org, "actorId": "a", "args": [],
        })
        .to_string();
        match decode(line.as_bytes(), Envelope::Event) {
            Decoded::Event(e) => e,
            other => panic!("{other:?}"),
        }
    }

    fn batch(events: Vec<Event>) -> AppendBatch {
        AppendBatch {
            read: events.len() as u64,
            events,
            ..Default::default()
        }
    }

    /// What every engine must do: store once in order, read after a cursor, keep the
    /// cursor from moving back, page newest first without gaps, purge only what is old
    /// and forwarded, and count it all.
    fn contract(log: &mut impl EventLog, now: i64) {
        let day = 86_400_000;
        let old = now - 10 * day;
        let r = log
            .append(&batch(
                (1..=4).map(|i| ev(i, "o", old + i as i64)).collect(),
            ))
            .unwrap();
        assert_eq!((r.stored, r.duplicates), (4, 0));
        let r = log
            .append(&batch(vec![ev(4, "o", old + 4), ev(5, "p", now)]))
            .unwrap();
        assert_eq!(
            (r.stored, r.duplicates),
            (1, 1),
            "a re-read event is stored once"
        );
        let all = log.read_after(0, 100).unwrap();
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(log.read_after(3, 1).unwrap()[0].seq, 4);

        let cursors = vec![FORWARD_CURSOR.to_string()];
        let progress = |cursor| ForwardProgress {
            cursor_name: FORWARD_CURSOR.into(),
            cursor,
            forwarded: 1,
            rejected: vec![],
        };
        log.save_progress(&progress(3)).unwrap();
        log.save_progress(&progress(2)).unwrap();
        let s = log.stats(&cursors).unwrap();
        assert_eq!(
            (s.events, s.forwarded_seq, s.unforwarded),
            (5, 3, 2),
            "{s:?}"
        );

        let q = crate::query::Query {
            organization_id: "o".into(),
            from_ms: 0,
            to_ms: now,
            actor_id: None,
            action: None,
            limit: 100,
        };
        let first = log.query_page(&q, None, 3).unwrap();
        assert_eq!(
            first.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![4, 3, 2]
        );
        let last = first.last().map(|e| (e.ts_ms, e.seq));
        let next = log.query_page(&q, last, 3).unwrap();
        assert_eq!(next.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![1]);

        // Nothing is old enough behind a checkpoint yet: retention keeps everything.
        assert_eq!(log.purge(now - day, Some(&cursors)).unwrap(), 0);
        assert_eq!(log.stats(&cursors).unwrap().purged, 0);
    }

    #[test]
    fn the_sqlite_spool_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        contract(&mut s, now_ms());
    }

    #[test]
    fn retention_purges_only_old_forwarded_events_behind_a_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        let now = now_ms();
        let old = now - 10 * 86_400_000;
        EventLog::append(
            &mut s,
            &batch((1..=3).map(|i| ev(i, "o", old + i as i64)).collect()),
        )
        .unwrap();
        s.begin().unwrap();
        s.write_checkpoint(None, old + 10).unwrap(); // seq 4
        s.commit().unwrap();
        EventLog::append(&mut s, &batch(vec![ev(9, "o", now)])).unwrap(); // seq 5
        let cursors = vec![FORWARD_CURSOR.to_string()];
        assert_eq!(
            s.purge(now - 86_400_000, Some(&cursors)).unwrap(),
            0,
            "nothing forwarded yet"
        );
        s.save_progress(&ForwardProgress {
            cursor_name: FORWARD_CURSOR.into(),
            cursor: 5,
            forwarded: 4,
            rejected: vec![],
        })
        .unwrap();
        assert_eq!(s.purge(now - 86_400_000, Some(&cursors)).unwrap(), 3);
        let left = EventLog::read_after(&s, 0, 10).unwrap();
        assert_eq!(
            left.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![4, 5],
            "the checkpoint stays as the anchor"
        );
        assert_eq!(EventLog::stats(&s, &cursors).unwrap().purged, 3);
    }

    #[test]
    fn only_engine_failures_that_may_pass_are_transient() {
        let full = std::io::Error::other("disk full");
        assert!(SpoolError::Engine(EngineError::new(full, true)).is_transient());
        let other = std::io::Error::other("syntax");
        assert!(!SpoolError::Engine(EngineError::new(other, false)).is_transient());
        assert!(!SpoolError::Missing("x".into()).is_transient());
        assert!(!SpoolError::Corrupt {
            seq: 1,
            reason: "r".into()
        }
        .is_transient());
    }
}
