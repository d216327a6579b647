//! The write transaction: events, quarantine, source offsets, forwarding progress and
//! counters, committed together.

use super::super::{now_ms, AppendBatch, CommitReport, ForwardProgress, SpoolError};
use super::{Counters, Spool};
use crate::event::Event;
use crate::integrity::{chain_hash, link, Canonical, CHECKPOINT_ORG};
use crate::source::checkpoint::OffsetUpdate;
use rusqlite::params;

impl Spool {
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
            let entry = super::super::LedgerEntry {
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
        if let Some(w) = &mut self.wal {
            w.committed(&self.conn);
        }
        Ok(())
    }

    /// From now on the WAL is copied into the database file on a thread of its own
    /// rather than at this connection's commits ([`walcopy`](super::walcopy)).
    pub fn copy_wal_in_background(&mut self) -> Result<(), SpoolError> {
        self.copy_wal_with(super::walcopy::LIMITS)
    }

    pub(super) fn copy_wal_with(
        &mut self,
        limits: super::walcopy::Limits,
    ) -> Result<(), SpoolError> {
        if self.wal.is_none() {
            self.wal = Some(super::walcopy::WalCopier::start(
                &self.conn, &self.path, limits,
            )?);
        }
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
}
