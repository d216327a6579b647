//! The SQLite engine of the spool. See the module above for invariants and format.

use super::{AppendBatch, CommitReport, ForwardProgress, QuarantineEntry, Stats, StoredEvent};
use crate::config::Durability;
use crate::event::{format_timestamp_ms, Event};
use crate::integrity::{chain_hash, link, Canonical, CHECKPOINT_ORG};
use crate::query::Query;
use crate::source::checkpoint::{FileId, Fingerprint, OffsetUpdate, SourceOffset};
use crate::source::framing::{Resume, ResumeMode};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// The on-disk format version this build reads and writes.
pub const SCHEMA_VERSION: i64 = 4;
/// WAL size (in pages) at which a commit also checkpoints the WAL into the database.
const WAL_AUTOCHECKPOINT_PAGES: i64 = 8192;
/// File name of the database inside `spool.dir`.
pub const DB_FILE: &str = "spool.db";

/// Everything that can go wrong with the spool.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("no spool at {0} (has `audit-relay run` created it? check spool.dir)")]
    Missing(PathBuf),
    #[error("spool {path}: format version {found}, this build reads version {SCHEMA_VERSION}")]
    Version { path: PathBuf, found: i64 },
    #[error("spool {0}: cannot create its directory: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("spool: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("spool: stored event {seq} is corrupt: {reason}")]
    Corrupt { seq: i64, reason: String },
}

/// A handle on the spool: one writer ([`Spool::open`]) or any number of readers
/// ([`Spool::open_read_only`]).
pub struct Spool {
    pub(super) conn: Connection,
    path: PathBuf,
    /// Writer state: organization keys, counters not yet committed, next sequence, and
    /// the chain hash of the last stored row.
    orgs: HashMap<String, i64>,
    pub(super) last_seq: i64,
    pub(super) head: [u8; 32],
    pub(super) pending: Counters,
    in_txn: bool,
}

#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Counters {
    pub(super) checkpoints: u64,
    pub(super) purged: u64,
    forwarded: u64,
    rejected: u64,
    events: u64,
    read: u64,
    skipped: u64,
    duplicates: u64,
    quarantined: u64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS orgs(org INTEGER PRIMARY KEY, organization_id TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS events(
    seq INTEGER PRIMARY KEY,
    ts_ms INTEGER NOT NULL,
    id BLOB NOT NULL,
    org INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    body TEXT NOT NULL,
    hash BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS events_ts_id ON events(ts_ms, id);
CREATE INDEX IF NOT EXISTS events_org_ts ON events(org, ts_ms);
CREATE TABLE IF NOT EXISTS quarantine(
    qid INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    reason TEXT NOT NULL,
    source TEXT NOT NULL,
    offset INTEGER NOT NULL,
    raw BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoints(
    dev INTEGER NOT NULL,
    ino INTEGER NOT NULL,
    fp_len INTEGER NOT NULL,
    fp_hash INTEGER NOT NULL,
    path TEXT NOT NULL,
    offset INTEGER NOT NULL,
    mode INTEGER NOT NULL,
    replay_until INTEGER NOT NULL,
    PRIMARY KEY(dev, ino)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS cursors(name TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS rejected(
    seq INTEGER PRIMARY KEY,
    reason TEXT NOT NULL,
    detail TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS purges(
    pid INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    through_seq INTEGER NOT NULL,
    anchor_seq INTEGER NOT NULL,
    anchor_head BLOB NOT NULL
);
INSERT OR IGNORE INTO orgs(org, organization_id) VALUES (0, '');
CREATE INDEX IF NOT EXISTS events_ledger ON events(json_extract(body, '$.seq'))
    WHERE org = 0 AND action = 'rejected';
";

/// A row of `SELECT seq, ts_ms, body, org ...`.
fn stored_event(r: &rusqlite::Row<'_>) -> rusqlite::Result<StoredEvent> {
    Ok(StoredEvent {
        seq: r.get(0)?,
        ts_ms: r.get(1)?,
        body: r.get(2)?,
        org: r.get(3)?,
    })
}

/// The cursor name of the (single) CloudWatch forwarder.
pub const FORWARD_CURSOR: &str = "cloudwatch";

pub(super) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Spool {
    /// Opens (creating if needed) the spool in `dir` for writing.
    pub fn open(dir: &Path, durability: Durability, cache_bytes: u64) -> Result<Spool, SpoolError> {
        std::fs::create_dir_all(dir).map_err(|e| SpoolError::Dir(dir.to_path_buf(), e))?;
        let path = dir.join(DB_FILE);
        let conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            Durability::Fsync => "FULL",
            Durability::Os => "NORMAL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "cache_size", -((cache_bytes / 1024) as i64))?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // Fewer, larger WAL checkpoints: a hot index page changed by many commits is
        // copied into the database once per checkpoint (docs/benchmarks.md).
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version != 0 && version != SCHEMA_VERSION && !(1..=3).contains(&version) {
            return Err(SpoolError::Version {
                path,
                found: version,
            });
        }
        if version == 1 {
            // Version 2 added the re-read bound of checkpoints and the forwarding tables.
            conn.execute_batch(
                "ALTER TABLE checkpoints ADD COLUMN replay_until INTEGER NOT NULL DEFAULT 0",
            )?;
            tracing::info!(path = %path.display(), "spool upgraded from format 1 to 2");
        }
        if version == 1 || version == 2 {
            // Version 3 added the hash chain.
            conn.execute_batch("ALTER TABLE events ADD COLUMN hash BLOB")?;
        }
        conn.execute_batch(SCHEMA)?;
        if version == 1 || version == 2 {
            super::chain::hash_existing(&conn)?;
            // The upgrade rewrote every row: fold the WAL back so it does not stay the
            // size of the spool (and count against spool.max_bytes).
            conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
            tracing::info!(path = %path.display(), "spool upgraded to format 3: hash chain computed over the stored events");
        }
        // Version 4 added the forwarding ledger (rejections as rows of the chain) and its
        // index; the version is written after the rows below are.
        // verify judges the age of the newest checkpoint from here on (a restarted
        // writer checkpoints `checkpoint_interval` after its start).
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('opened_ms', ?1)",
            [now_ms()],
        )?;
        let mut spool = Spool::wrap(conn, path);
        spool.load_state()?;
        if (1..=3).contains(&version) {
            let n = spool.ledger_existing_rejections()?;
            tracing::info!(path = %spool.path.display(), rejections = n, "spool upgraded to format 4: earlier rejections recorded in the forwarding ledger");
        }
        spool
            .conn
            .pragma_update(None, "user_version", SCHEMA_VERSION)?;
        Ok(spool)
    }

    /// Reads the writer's state (next sequence, chain head, organization keys) from what
    /// is committed.
    fn load_state(&mut self) -> Result<(), SpoolError> {
        self.last_seq = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0);
        self.head = super::chain::stored_head(&self.conn)?;
        let mut stmt = self.conn.prepare("SELECT organization_id, org FROM orgs")?;
        let orgs = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
            .collect::<Result<HashMap<String, i64>, _>>()?;
        drop(stmt);
        self.orgs = orgs;
        Ok(())
    }

    /// Abandons the open transaction (after a failed write or commit) and goes back to the
    /// committed state; what the transaction held must be written again.
    pub fn rollback(&mut self) -> Result<(), SpoolError> {
        if !self.conn.is_autocommit() {
            // SQLite may already have rolled back by itself (disk full).
            let _ = self.conn.execute_batch("ROLLBACK");
        }
        self.end_txn();
        self.load_state()
    }

    /// Whether `e` means the disk is full or failing for now (ENOSPC, EFBIG, EIO): the
    /// writer waits and tries again instead of exiting.
    pub fn is_disk_trouble(e: &SpoolError) -> bool {
        use rusqlite::ErrorCode;
        matches!(
            e,
            SpoolError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
                if matches!(f.code, ErrorCode::DiskFull | ErrorCode::SystemIoFailure)
        )
    }

    /// Opens an existing spool for reading only; it may be written by a running relay.
    pub fn open_read_only(dir: &Path) -> Result<Spool, SpoolError> {
        let path = dir.join(DB_FILE);
        if !path.exists() {
            return Err(SpoolError::Missing(path));
        }
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(std::time::Duration::from_secs(10))?;
        let version: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
        if version == 0 {
            // The file exists but the relay has not finished creating it.
            return Err(SpoolError::Missing(path));
        }
        if version != SCHEMA_VERSION {
            return Err(SpoolError::Version {
                path,
                found: version,
            });
        }
        Ok(Spool::wrap(conn, path))
    }

    fn wrap(conn: Connection, path: PathBuf) -> Spool {
        Spool {
            conn,
            path,
            orgs: HashMap::new(),
            last_seq: 0,
            head: crate::integrity::GENESIS,
            pending: Counters::default(),
            in_txn: false,
        }
    }

    /// Bytes of the database, its WAL and its shared-memory index on disk.
    pub fn disk_bytes(&self) -> u64 {
        ["", "-wal", "-shm"]
            .iter()
            .filter_map(|suffix| {
                let mut p = self.path.clone().into_os_string();
                p.push(suffix);
                std::fs::metadata(p).ok().map(|m| m.len())
            })
            .sum()
    }

    /// Bytes on disk that hold data: [`Spool::disk_bytes`] less the database's free pages
    /// (which retention leaves behind and new events fill first). The disk cap counts this.
    pub fn used_bytes(&self) -> u64 {
        let pragma = |name: &str| -> u64 {
            self.conn
                .pragma_query_value(None, name, |r| r.get::<_, i64>(0))
                .unwrap_or(0)
                .max(0) as u64
        };
        self.disk_bytes()
            .saturating_sub(pragma("freelist_count") * pragma("page_size"))
    }

    /// The sequence number of the newest event this handle wrote or found at open.
    pub fn last_seq(&self) -> i64 {
        self.last_seq
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The stored source checkpoints.
    pub fn checkpoints(&self) -> Result<Vec<SourceOffset>, SpoolError> {
        let mut stmt = self.conn.prepare(
            "SELECT dev, ino, fp_len, fp_hash, path, offset, mode, replay_until FROM checkpoints",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok(SourceOffset {
                file: FileId {
                    dev: r.get::<_, i64>(0)? as u64,
                    ino: r.get::<_, i64>(1)? as u64,
                },
                fingerprint: Fingerprint {
                    len: r.get(2)?,
                    hash: r.get(3)?,
                },
                path: r.get(4)?,
                resume: Resume {
                    offset: r.get::<_, i64>(5)? as u64,
                    mode: ResumeMode::from_i64(r.get(6)?),
                    replay_until: r.get::<_, i64>(7)? as u64,
                },
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Starts a transaction that [`Spool::write`] adds to and [`Spool::commit`] ends.
    pub fn begin(&mut self) -> Result<(), SpoolError> {
        debug_assert!(!self.in_txn);
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        self.in_txn = true;
        Ok(())
    }

    /// Adds a batch to the open transaction.
    pub fn write(&mut self, batch: &AppendBatch) -> Result<CommitReport, SpoolError> {
        let stored = self.write_events(&batch.events)?;
        let mut rest = self.write_rest(batch)?;
        rest.stored = stored.stored;
        rest.duplicates = stored.duplicates;
        Ok(rest)
    }

    /// Adds events to the open transaction (the first part of [`Spool::write`]).
    pub fn write_events(&mut self, events: &[Event]) -> Result<CommitReport, SpoolError> {
        debug_assert!(self.in_txn);
        let mut report = CommitReport::default();
        {
            let mut insert = self.conn.prepare_cached(
                // Only a real duplicate (the same time and id) is skipped; any other
                // constraint (a sequence number already taken) is an error, not a
                // "duplicate" that would silently drop the event.
                "INSERT INTO events(seq, ts_ms, id, org, actor, action, body, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(ts_ms, id) DO NOTHING",
            )?;
            for ev in events {
                let org = match self.orgs.get(&ev.organization_id) {
                    Some(k) => *k,
                    None => {
                        self.conn.execute(
                            "INSERT OR IGNORE INTO orgs(organization_id) VALUES (?1)",
                            [&ev.organization_id],
                        )?;
                        let k: i64 = self.conn.query_row(
                            "SELECT org FROM orgs WHERE organization_id = ?1",
                            [&ev.organization_id],
                            |r| r.get(0),
                        )?;
                        self.orgs.insert(ev.organization_id.clone(), k);
                        k
                    }
                };
                let seq = self.last_seq + 1;
                let hash = link(&self.head, seq, &ev.digest);
                let n = insert.execute(params![
                    seq,
                    ev.ts_ms,
                    ev.id.as_bytes().as_slice(),
                    org,
                    ev.actor_id,
                    ev.action,
                    ev.body,
                    hash.as_slice()
                ])?;
                if n == 1 {
                    self.last_seq = seq;
                    self.head = hash;
                    report.stored += 1;
                } else {
                    report.duplicates += 1;
                }
            }
        }
        self.pending.events += report.stored;
        self.pending.duplicates += report.duplicates;
        Ok(report)
    }

    /// Adds the rest of a batch (quarantine, source checkpoints, counters) to the open
    /// transaction (the second part of [`Spool::write`]).
    pub fn write_rest(&mut self, batch: &AppendBatch) -> Result<CommitReport, SpoolError> {
        debug_assert!(self.in_txn);
        let mut report = CommitReport::default();
        if !batch.quarantined.is_empty() {
            let mut q = self.conn.prepare_cached(
                "INSERT INTO quarantine(at_ms, reason, source, offset, raw) VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            let at = now_ms();
            for bad in &batch.quarantined {
                q.execute(params![
                    at,
                    bad.reason,
                    bad.source,
                    bad.offset as i64,
                    bad.raw
                ])?;
            }
            report.quarantined = batch.quarantined.len() as u64;
        }
        for cp in &batch.checkpoints {
            match cp {
                OffsetUpdate::Save(c) => {
                    self.conn
                        .prepare_cached(
                            "INSERT OR REPLACE INTO checkpoints(dev, ino, fp_len, fp_hash, path, offset, mode, replay_until) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        )?
                        .execute(params![
                            c.file.dev as i64,
                            c.file.ino as i64,
                            c.fingerprint.len,
                            c.fingerprint.hash,
                            c.path,
                            c.resume.offset as i64,
                            c.resume.mode as i64,
                            c.resume.replay_until as i64
                        ])?;
                }
                OffsetUpdate::Forget(id) => {
                    self.conn
                        .prepare_cached("DELETE FROM checkpoints WHERE dev = ?1 AND ino = ?2")?
                        .execute(params![id.dev as i64, id.ino as i64])?;
                }
            }
        }
        let p = &mut self.pending;
        p.quarantined += report.quarantined;
        p.read += batch.read;
        p.skipped += batch.skipped;
        Ok(report)
    }

    /// Adds forwarding progress to the open transaction. The cursor never moves back.
    /// Appends one of the relay's own rows (a checkpoint, a forwarding-ledger entry) to
    /// the open transaction: `org` 0, actor `audit-relay`, chained like any event.
    pub(super) fn append_own_row(
        &mut self,
        action: &str,
        body: &str,
        time_ms: i64,
    ) -> Result<(), SpoolError> {
        let id = uuid::Uuid::new_v4();
        let seq = self.last_seq + 1;
        let actor = "audit-relay";
        let hash = chain_hash(
            &self.head,
            &Canonical {
                seq,
                ts_ms: time_ms,
                id: id.as_bytes(),
                organization_id: "",
                actor,
                action,
                body,
            },
        );
        self.conn
            .prepare_cached(
                "INSERT INTO events(seq, ts_ms, id, org, actor, action, body, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )?
            .execute(params![
                seq,
                time_ms,
                id.as_bytes().as_slice(),
                CHECKPOINT_ORG,
                actor,
                action,
                body,
                hash.as_slice()
            ])?;
        self.last_seq = seq;
        self.head = hash;
        Ok(())
    }

    pub fn write_progress(&mut self, p: &ForwardProgress) -> Result<(), SpoolError> {
        debug_assert!(self.in_txn);
        self.conn
            .prepare_cached(
                "INSERT INTO cursors(name, seq) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET seq = max(seq, excluded.seq)",
            )?
            .execute(params![p.cursor_name, p.cursor])?;
        let at = now_ms();
        let mut ins = self.conn.prepare_cached(
            "INSERT OR IGNORE INTO rejected(seq, reason, detail, at_ms) VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut new_rejections = Vec::new();
        for r in &p.rejected {
            if ins.execute(params![r.seq, r.reason, r.detail, at])? == 1 {
                new_rejections.push(r);
            }
        }
        drop(ins);
        // Each rejection is also a row of the chain: verify --cloudwatch trusts only those.
        for r in &new_rejections {
            let entry = super::ledger::LedgerEntry {
                kind: "rejection".into(),
                seq: r.seq,
                cursor: p.cursor_name.clone(),
                reason: r.reason.clone(),
                detail: r.detail.clone(),
            };
            self.write_ledger(&entry, at)?;
        }
        self.pending.rejected += new_rejections.len() as u64;
        self.pending.forwarded += p.forwarded;
        Ok(())
    }

    /// The named forwarder's cursor (0 before anything was forwarded).
    pub fn cursor(&self, name: &str) -> Result<i64, SpoolError> {
        Ok(self
            .conn
            .query_row("SELECT seq FROM cursors WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0))
    }

    /// Up to `limit` events after sequence number `after`, in sequence order.
    pub fn read_after(&self, after: i64, limit: usize) -> Result<Vec<StoredEvent>, SpoolError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, ts_ms, body, org FROM events WHERE seq > ?1 ORDER BY seq LIMIT ?2",
        )?;
        let rows = stmt.query_map(params![after, limit as i64], stored_event)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Up to `limit` events with `from_ms <= ts_ms <= to_ms` and a sequence number after
    /// `after`, in sequence order (for `replay`).
    pub fn read_range(
        &self,
        from_ms: i64,
        to_ms: i64,
        after: i64,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, SpoolError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT seq, ts_ms, body, org FROM events WHERE ts_ms >= ?1 AND ts_ms <= ?2 AND seq > ?3 ORDER BY seq LIMIT ?4",
        )?;
        let rows = stmt.query_map(params![from_ms, to_ms, after, limit as i64], stored_event)?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Commits the open transaction, with the counters it moved.
    pub fn commit(&mut self) -> Result<(), SpoolError> {
        debug_assert!(self.in_txn);
        let p = std::mem::take(&mut self.pending);
        {
            let mut add = self.conn.prepare_cached(
                "INSERT INTO counters(name, value) VALUES (?1, ?2) ON CONFLICT(name) DO UPDATE SET value = value + excluded.value",
            )?;
            for (name, v) in [
                ("checkpoints", p.checkpoints),
                ("purged", p.purged),
                ("forwarded", p.forwarded),
                ("rejected", p.rejected),
                ("events", p.events),
                ("read", p.read),
                ("skipped", p.skipped),
                ("duplicates", p.duplicates),
                ("quarantined", p.quarantined),
            ] {
                if v > 0 {
                    add.execute(params![name, v as i64])?;
                }
            }
        }
        // The commit time lets verify tell a cut tail: the writer checkpoints at least
        // every `checkpoint_interval`, so the newest checkpoint is never much older.
        self.conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('last_seq', ?1), ('chain_head', ?2), ('last_commit_ms', ?3)",
            params![self.last_seq, self.head.as_slice(), now_ms()],
        )?;
        self.conn.execute_batch("COMMIT")?;
        self.in_txn = false;
        Ok(())
    }

    /// Forgets the open transaction after a rollback.
    pub(super) fn end_txn(&mut self) {
        self.in_txn = false;
        self.pending = Counters::default();
    }

    /// Appends one batch in its own transaction.
    pub fn append(&mut self, batch: &AppendBatch) -> Result<CommitReport, SpoolError> {
        self.begin()?;
        let r = self.write(batch)?;
        self.commit()?;
        Ok(r)
    }

    /// Totals, oldest and newest event, bytes on disk; forwarding as seen by the single
    /// default cursor.
    pub fn stats(&self) -> Result<Stats, SpoolError> {
        self.stats_for(&[FORWARD_CURSOR.to_string()])
    }

    /// Like [`Spool::stats`], with forwarding progress as the lowest of `cursors` (with
    /// several streams, `unforwarded` and the lag are upper bounds).
    pub fn stats_for(&self, cursors: &[String]) -> Result<Stats, SpoolError> {
        let mut s = Stats::default();
        let mut stmt = self.conn.prepare("SELECT name, value FROM counters")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let name: String = r.get(0)?;
            let v = r.get::<_, i64>(1)? as u64;
            match name.as_str() {
                "events" => s.events = v,
                "read" => s.read = v,
                "skipped" => s.skipped = v,
                "duplicates" => s.duplicates = v,
                "quarantined" => s.quarantined = v,
                "forwarded" => s.forwarded = v,
                "rejected" => s.rejected = v,
                "checkpoints" => s.checkpoints = v,
                "purged" => s.purged = v,
                _ => {}
            }
        }
        s.last_seq = self
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                r.get(0)
            })
            .optional()?
            .unwrap_or(0);
        s.forwarded_seq = self.min_cursor(cursors)?;
        s.unforwarded = (s.last_seq - s.forwarded_seq).max(0) as u64;
        let oldest_unforwarded: Option<i64> = self
            .conn
            .query_row(
                "SELECT ts_ms FROM events WHERE seq > ?1 ORDER BY seq LIMIT 1",
                [s.forwarded_seq],
                |r| r.get(0),
            )
            .optional()?;
        s.held = self.conn.query_row(
            "SELECT count(*) FROM events WHERE seq > ?1 AND org != 0 AND ts_ms > ?2",
            [s.forwarded_seq, now_ms() + 2 * 3_600_000],
            |r| r.get::<_, i64>(0),
        )? as u64;
        s.forward_lag_seconds = oldest_unforwarded
            .map(|ts| ((now_ms() - ts).max(0) / 1000) as u64)
            .unwrap_or(0);
        let edge = |order: &str| -> Result<Option<String>, SpoolError> {
            let sql =
                format!("SELECT ts_ms FROM events WHERE org != 0 ORDER BY ts_ms {order} LIMIT 1");
            let v: Option<i64> = self.conn.query_row(&sql, [], |r| r.get(0)).optional()?;
            Ok(v.map(format_timestamp_ms))
        };
        s.oldest = edge("ASC")?;
        s.newest = edge("DESC")?;
        s.bytes = self.disk_bytes();
        Ok(s)
    }

    /// One organization's events in a time range, newest first.
    pub fn query(&self, q: &Query) -> Result<Vec<StoredEvent>, SpoolError> {
        let mut out = Vec::new();
        self.query_each(q, |e| {
            out.push(e);
            Ok::<(), SpoolError>(())
        })?;
        Ok(out)
    }

    /// Like [`Spool::query`], handing each event to `f` as it is read (flat memory).
    pub fn query_each<E: From<SpoolError>>(
        &self,
        q: &Query,
        f: impl FnMut(StoredEvent) -> Result<(), E>,
    ) -> Result<(), E> {
        self.query_page_each(q, None, f)
    }

    /// The organization id behind a compact key.
    pub fn organization_id(&self, org: i64) -> Result<Option<String>, SpoolError> {
        Ok(self
            .conn
            .query_row(
                "SELECT organization_id FROM orgs WHERE org = ?1",
                [org],
                |r| r.get(0),
            )
            .optional()?)
    }

    /// Where a forwarder with a new cursor name starts: the lowest cursor any earlier
    /// CloudWatch forwarder left (after a change of `cloudwatch.streams`), so nothing is
    /// skipped; 0 when there is none.
    pub fn initial_cursor(&self, name: &str) -> Result<i64, SpoolError> {
        let own: Option<i64> = self
            .conn
            .query_row("SELECT seq FROM cursors WHERE name = ?1", [name], |r| {
                r.get(0)
            })
            .optional()?;
        if let Some(c) = own {
            return Ok(c);
        }
        Ok(self
            .conn
            .query_row(
                "SELECT min(seq) FROM cursors WHERE name = ?1 OR name LIKE ?1 || '/%'",
                [FORWARD_CURSOR],
                |r| r.get::<_, Option<i64>>(0),
            )?
            .unwrap_or(0))
    }

    /// The lowest of the named cursors (a cursor not written yet counts where its
    /// forwarder will start, see [`Spool::initial_cursor`]).
    pub fn min_cursor(&self, names: &[String]) -> Result<i64, SpoolError> {
        let mut min = i64::MAX;
        for n in names {
            min = min.min(self.initial_cursor(n)?);
        }
        Ok(if names.is_empty() { 0 } else { min })
    }

    /// Rejected events counted by reason.
    pub fn rejected_by_reason(&self) -> Result<Vec<(String, u64)>, SpoolError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT reason, count(*) FROM rejected GROUP BY reason ORDER BY reason",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Quarantine entries, newest first.
    pub fn quarantine(&self, limit: usize) -> Result<Vec<QuarantineEntry>, SpoolError> {
        let mut stmt = self.conn.prepare(
            "SELECT qid, at_ms, reason, source, offset, raw FROM quarantine ORDER BY qid DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit as i64], |r| {
            let raw: Vec<u8> = r.get(5)?;
            Ok(QuarantineEntry {
                qid: r.get(0)?,
                at: format_timestamp_ms(r.get(1)?),
                reason: r.get(2)?,
                source: r.get(3)?,
                offset: r.get::<_, i64>(4)? as u64,
                raw: String::from_utf8_lossy(&raw).into_owned(),
                raw_hex: raw.iter().map(|b| format!("{b:02x}")).collect(),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }

    /// Every stored event id with its sequence, in sequence order (for tests and audits).
    pub fn ids(&self) -> Result<Vec<(i64, uuid::Uuid)>, SpoolError> {
        let mut stmt = self
            .conn
            .prepare("SELECT seq, id FROM events WHERE org != 0 ORDER BY seq")?;
        let rows = stmt.query_map([], |r| {
            let b: Vec<u8> = r.get(1)?;
            Ok((r.get(0)?, uuid::Uuid::from_slice(&b).unwrap_or_default()))
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

/// Reads for the query API: keyset pages, and its page-token key.
impl Spool {
    /// Like [`Spool::query_each`], but only events strictly older than `before` in the
    /// order `(ts_ms, seq)` (keyset pagination: a page stays exact while new events
    /// arrive, and costs the same however deep it is).
    pub fn query_page_each<E: From<SpoolError>>(
        &self,
        q: &Query,
        before: Option<(i64, i64)>,
        mut f: impl FnMut(StoredEvent) -> Result<(), E>,
    ) -> Result<(), E> {
        let org: Option<i64> = self
            .conn
            .query_row(
                "SELECT org FROM orgs WHERE organization_id = ?1",
                [&q.organization_id],
                |r| r.get(0),
            )
            .optional()
            .map_err(SpoolError::from)?;
        let Some(org) = org else {
            return Ok(());
        };
        // With ts_ms <= last_ts, "(ts_ms, seq) < (last_ts, last_seq)" is
        // "ts_ms < last_ts OR seq < last_seq", and the upper bound stays an index range.
        let (to_ms, last_ts, last_seq) = match before {
            Some((ts, seq)) => (q.to_ms.min(ts), ts, seq),
            None => (q.to_ms, i64::MAX, i64::MAX),
        };
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT seq, ts_ms, body, org FROM events
                 WHERE org = ?1 AND ts_ms >= ?2 AND ts_ms <= ?3
                   AND (ts_ms < ?7 OR seq < ?8)
                   AND (?4 IS NULL OR actor = ?4) AND (?5 IS NULL OR action = ?5)
                 ORDER BY ts_ms DESC, seq DESC LIMIT ?6",
            )
            .map_err(SpoolError::from)?;
        let params = params![
            org,
            q.from_ms,
            to_ms,
            q.actor_id,
            q.action,
            q.limit as i64,
            last_ts,
            last_seq
        ];
        let mut rows = stmt.query(params).map_err(SpoolError::from)?;
        while let Some(r) = rows.next().map_err(SpoolError::from)? {
            f(stored_event(r).map_err(SpoolError::from)?)?;
        }
        Ok(())
    }

    /// Up to `limit` events of `q`, newest first, strictly older than `before`
    /// (`(ts_ms, seq)`, keyset order), collected before returning: the read transaction
    /// ends with this call, so a caller that hands the rows to a slow client between
    /// calls never holds a snapshot (which would keep the WAL from restarting).
    /// `q.limit` is ignored.
    pub fn query_chunk(
        &self,
        q: &Query,
        before: Option<(i64, i64)>,
        limit: usize,
    ) -> Result<Vec<StoredEvent>, SpoolError> {
        let mut chunk = q.clone();
        chunk.limit = limit;
        let mut rows = Vec::with_capacity(limit.min(4096));
        self.query_page_each(&chunk, before, |e| {
            rows.push(e);
            Ok::<(), SpoolError>(())
        })?;
        Ok(rows)
    }

    /// The secret stored under `key` in `meta`; on first use `init` makes it and it is
    /// stored (a writer handle, outside a transaction of [`Spool::begin`]).
    pub fn meta_secret(
        &self,
        key: &str,
        init: impl FnOnce() -> Vec<u8>,
    ) -> Result<Vec<u8>, SpoolError> {
        let get = |conn: &Connection| -> Result<Option<Vec<u8>>, SpoolError> {
            Ok(conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()?)
        };
        if let Some(v) = get(&self.conn)? {
            return Ok(v);
        }
        self.conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES (?1, ?2)",
            params![key, init()],
        )?;
        Ok(get(&self.conn)?.expect("inserted above"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Envelope;
    use crate::event::{decode, Decoded, Event};
    use crate::query::{plan, QueryRequest};

    fn ev(i: u128, org: &str, ms: i64) -> Event {
        let line = serde_json::json!({
            "id": uuid::Uuid::from_u128(i).to_string(),
            "timestamp": format_timestamp_ms(ms),
            "action": if i.is_multiple_of(2) { "startWorkspace" } else { "stopWorkspace" },
            "organizationId": org, "actorId": format!("actor-{}", i % 3), "args": [i as u64],
        })
        .to_string();
        match decode(line.as_bytes(), Envelope::Event) {
            Decoded::Event(e) => e,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_format_2_spool_is_hashed_on_upgrade_exactly_as_the_writer_hashes() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        let events = (0..50).map(|i| ev(i, ["A", "B", "C"][i as usize % 3], 1000 + i as i64));
        s.append(&AppendBatch {
            events: events.collect(),
            ..Default::default()
        })
        .unwrap();
        let hashes = |c: &Connection| -> Vec<Vec<u8>> {
            let mut stmt = c.prepare("SELECT hash FROM events ORDER BY seq").unwrap();
            let rows = stmt.query_map([], |r| r.get(0)).unwrap();
            rows.collect::<Result<_, _>>().unwrap()
        };
        let written = hashes(&s.conn);
        drop(s);
        // Back to format 2: no hash column, no purges, no chain head.
        let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
        c.execute_batch(
            "ALTER TABLE events DROP COLUMN hash; DROP TABLE purges;
             DELETE FROM meta WHERE key = 'chain_head'; DELETE FROM orgs WHERE org = 0;
             PRAGMA user_version = 2;",
        )
        .unwrap();
        drop(c);
        let s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        assert_eq!(hashes(&s.conn), written);
        assert_eq!(s.head.to_vec(), *written.last().unwrap());
        let wal = std::fs::metadata(dir.path().join("spool.db-wal")).map_or(0, |m| m.len());
        assert!(
            wal < 16 << 10,
            "the upgrade leaves its WAL behind: {wal} bytes"
        );
        let r = crate::verify::verify_spool(&s, &Default::default()).unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!(r.rows, 50);
    }

    #[test]
    fn append_dedups_and_queries_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        let batch = AppendBatch {
            events: (0..10)
                .map(|i| ev(i, if i < 6 { "A" } else { "B" }, 1000 + i as i64))
                .collect(),
            read: 10,
            ..Default::default()
        };
        assert_eq!(s.append(&batch).unwrap().stored, 10);
        let again = s.append(&batch).unwrap();
        assert_eq!((again.stored, again.duplicates), (0, 10));
        let stats = s.stats().unwrap();
        assert_eq!(
            (stats.events, stats.duplicates, stats.read, stats.last_seq),
            (10, 10, 20, 10)
        );
        let mut r = QueryRequest {
            organization_id: "A".into(),
            from: Some(format_timestamp_ms(0)),
            ..Default::default()
        };
        let q = plan(&r, 10_000, 100, 250).unwrap();
        let got: Vec<i64> = s.query(&q).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(got, vec![6, 5, 4, 3, 2, 1]);
        r.action = Some("startWorkspace".into());
        r.actor_id = Some("actor-0".into());
        let q = plan(&r, 10_000, 100, 250).unwrap();
        let got: Vec<i64> = s.query(&q).unwrap().iter().map(|e| e.seq).collect();
        assert_eq!(got, vec![1]);
        // Reopening keeps the sequence going.
        drop(s);
        let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        s.append(&AppendBatch {
            events: vec![ev(99, "A", 5)],
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.stats().unwrap().last_seq, 11);
        let ro = Spool::open_read_only(dir.path()).unwrap();
        assert_eq!(ro.ids().unwrap().len(), 11);
    }

    #[test]
    fn only_a_real_duplicate_counts_as_one_another_constraint_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        s.append(&AppendBatch {
            events: vec![ev(1, "A", 1000)],
            ..Default::default()
        })
        .unwrap();
        // Someone else (a second writer) took the next sequence number behind this
        // handle's back: storing a new event there must fail, not pass as a duplicate.
        let other = Connection::open(dir.path().join(DB_FILE)).unwrap();
        other
            .execute(
                "INSERT INTO events(seq, ts_ms, id, org, actor, action, body, hash)
                 SELECT 2, 5000, X'00112233445566778899aabbccddeeff', org, actor, action, body, hash
                 FROM events WHERE seq = 1",
                [],
            )
            .unwrap();
        let e = s
            .append(&AppendBatch {
                events: vec![ev(2, "A", 2000)],
                ..Default::default()
            })
            .expect_err("a taken sequence number is an error");
        assert!(
            e.to_string().contains("UNIQUE") || e.to_string().contains("PRIMARY"),
            "{e}"
        );
        s.rollback().unwrap();
        assert_eq!(s.stats().unwrap().duplicates, 0);
        // The same (time, id) again is a duplicate, as before.
        let again = s
            .append(&AppendBatch {
                events: vec![ev(1, "A", 1000)],
                ..Default::default()
            })
            .unwrap();
        assert_eq!((again.stored, again.duplicates), (0, 1));
    }

    #[test]
    fn keyset_pages_cover_ties_exactly_and_the_secret_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        // Three events per millisecond: pages must split ties by sequence.
        let events = (0..12).map(|i| ev(i, "A", 1000 + (i as i64 / 3))).collect();
        s.append(&AppendBatch {
            events,
            ..Default::default()
        })
        .unwrap();
        let mut q = plan(
            &QueryRequest {
                organization_id: "A".into(),
                from: Some(format_timestamp_ms(0)),
                ..Default::default()
            },
            10_000,
            100,
            250,
        )
        .unwrap();
        q.limit = 5;
        let (mut all, mut before) = (Vec::new(), None);
        loop {
            let mut page = Vec::new();
            s.query_page_each(&q, before, |e| {
                page.push((e.ts_ms, e.seq));
                Ok::<(), SpoolError>(())
            })
            .unwrap();
            before = page.last().copied();
            all.extend(page.iter().map(|p| p.1));
            if page.len() < q.limit {
                break;
            }
        }
        assert_eq!(all, (1..=12).rev().collect::<Vec<i64>>());
        let k1 = s.meta_secret("k", || vec![1, 2, 3]).unwrap();
        let k2 = s.meta_secret("k", || vec![9]).unwrap();
        assert_eq!(
            (k1.as_slice(), k2.as_slice()),
            (&[1u8, 2, 3][..], &[1u8, 2, 3][..])
        );
    }

    #[test]
    fn missing_spool_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = Spool::open_read_only(&dir.path().join("nope"))
            .err()
            .unwrap();
        assert!(e.to_string().starts_with("no spool at"), "{e}");
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        /// Against a model (a map from (ts, id) to (seq, org)): batches with repeats
        /// store each event once, sequence numbers grow by one per stored event,
        /// counters match, and a query returns exactly the model's matching events,
        /// newest first.
        #[test]
        fn spool_matches_a_model(
            batches in proptest::collection::vec(proptest::collection::vec(0u128..60, 0..40), 1..8),
            q_org in 0usize..3,
            q_from in 0i64..20,
            q_len in 0i64..20,
        ) {
            let orgs = ["A", "B", "C"];
            let dir = tempfile::tempdir().unwrap();
            let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
            let mut model = std::collections::BTreeMap::new();
            let (mut next_seq, mut dups) = (1i64, 0u64);
            for b in &batches {
                // The same id always comes with the same timestamp and org (a re-read).
                let events: Vec<Event> =
                    b.iter().map(|id| ev(*id, orgs[(*id % 3) as usize], 1000 + (*id as i64 * 7) % 20)).collect();
                for e in &events {
                    let org = orgs[(e.id.as_u128() % 3) as usize];
                    match model.entry((e.ts_ms, e.id.as_u128())) {
                        std::collections::btree_map::Entry::Vacant(v) => {
                            v.insert((next_seq, org));
                            next_seq += 1;
                        }
                        std::collections::btree_map::Entry::Occupied(_) => dups += 1,
                    }
                }
                s.append(&AppendBatch { events, read: b.len() as u64, ..Default::default() }).unwrap();
            }
            let st = s.stats().unwrap();
            proptest::prop_assert_eq!(st.events, model.len() as u64);
            proptest::prop_assert_eq!(st.duplicates, dups);
            proptest::prop_assert_eq!(st.last_seq, model.len() as i64);
            let ids = s.ids().unwrap();
            proptest::prop_assert!(ids.windows(2).all(|w| w[1].0 == w[0].0 + 1));
            let from = 1000 + q_from;
            let to = from + q_len;
            let q = plan(&QueryRequest {
                organization_id: orgs[q_org].into(),
                from: Some(format_timestamp_ms(from)),
                to: Some(format_timestamp_ms(to)),
                limit: Some(1000),
                ..Default::default()
            }, 0, 100, 1000).unwrap();
            let got: Vec<i64> = s.query(&q).unwrap().iter().map(|e| e.seq).collect();
            let mut want: Vec<(i64, i64)> = model.iter()
                .filter(|((ts, _), (_, o))| *o == orgs[q_org] && *ts >= from && *ts <= to)
                .map(|((ts, _), (seq, _))| (*ts, *seq)).collect();
            want.sort_by(|a, b| b.cmp(a));
            proptest::prop_assert_eq!(got, want.into_iter().map(|(_, seq)| seq).collect::<Vec<_>>());
        }
    }
}
