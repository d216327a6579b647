//! The chain and retention in SQLite: checkpoint rows, reading the chain back, and
//! purging a prefix of the spool at a checkpoint.

use super::super::{now_ms, ChainMeta, ChainRow, PurgeRecord, PurgeStep, SpoolError};
use super::schema::{org_names, to_hash};
use super::Spool;
use crate::integrity::{ChainCheckpoint, Signer, CHECKPOINT_ORG};
use rusqlite::{params, OptionalExtension};

impl Spool {
    /// Adds a checkpoint over everything stored so far to the open transaction, as a row
    /// of its own (chained like any event; forwarded as a `"type":"checkpoint"` message).
    pub fn write_checkpoint(
        &mut self,
        signer: Option<&Signer>,
        time_ms: i64,
    ) -> Result<ChainCheckpoint, SpoolError> {
        self.write_checkpoint_with_peers(signer, time_ms, Vec::new())
    }

    /// Like [`Spool::write_checkpoint`], witnessing other relays' chains (`peers`).
    pub fn write_checkpoint_with_peers(
        &mut self,
        signer: Option<&Signer>,
        time_ms: i64,
        peers: Vec<crate::integrity::Peer>,
    ) -> Result<ChainCheckpoint, SpoolError> {
        let mut cp = match signer {
            Some(s) => s.sign(self.last_seq, self.head, time_ms),
            None => ChainCheckpoint {
                sequence: self.last_seq,
                chain_head: self.head,
                time_ms,
                signed: None,
                peers: Vec::new(),
            },
        };
        cp.peers = peers;
        self.append_own_row("checkpoint", &cp.to_json(), time_ms)?;
        self.pending.checkpoints += 1;
        Ok(cp)
    }

    /// Runs `f` inside one read transaction: every read sees the same committed state.
    pub fn in_snapshot<T>(
        &self,
        f: impl FnOnce() -> Result<T, SpoolError>,
    ) -> Result<T, SpoolError> {
        self.conn.execute_batch("BEGIN DEFERRED")?;
        let r = f();
        self.conn.execute_batch("COMMIT")?;
        r
    }

    /// The newest checkpoint row: its sequence number and content.
    pub fn last_checkpoint(&self) -> Result<Option<(i64, ChainCheckpoint)>, SpoolError> {
        let row: Option<(i64, String)> = self
            .conn
            .query_row(
                "SELECT seq, body FROM events WHERE org = ?1 AND action = 'checkpoint' ORDER BY seq DESC LIMIT 1",
                [CHECKPOINT_ORG],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match row {
            None => Ok(None),
            Some((seq, body)) => ChainCheckpoint::from_json(&body, false)
                .map(|c| Some((seq, c)))
                .map_err(|reason| SpoolError::Corrupt { seq, reason }),
        }
    }

    /// The chain's bookkeeping in `meta` and the cursors.
    pub fn chain_meta(&self) -> Result<ChainMeta, SpoolError> {
        let get = |key: &str| -> Result<Option<rusqlite::types::Value>, SpoolError> {
            Ok(self
                .conn
                .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
                .optional()?)
        };
        use rusqlite::types::Value;
        let int = |v: Option<Value>| match v {
            Some(Value::Integer(i)) => i,
            _ => 0,
        };
        let blob = |v: Option<Value>| match v {
            Some(Value::Blob(b)) => to_hash(Some(b)),
            _ => None,
        };
        Ok(ChainMeta {
            last_seq: int(get("last_seq")?),
            head: blob(get("chain_head")?),
            purged_through: int(get("purged_through")?),
            purge_anchor: blob(get("purge_anchor")?),
            purged_max_ts: int(get("purged_max_ts")?),
            last_commit_ms: int(get("last_commit_ms")?),
            opened_ms: int(get("opened_ms")?),
            max_cursor: self
                .conn
                .query_row("SELECT max(seq) FROM cursors", [], |r| {
                    r.get::<_, Option<i64>>(0)
                })?
                .unwrap_or(0),
        })
    }

    /// Calls `f` with each row of sequence number in `from..=to`, in order.
    pub fn chain_each(
        &self,
        from: i64,
        to: i64,
        mut f: impl FnMut(ChainRow) -> std::ops::ControlFlow<()>,
    ) -> Result<(), SpoolError> {
        let orgs = org_names(&self.conn)?;
        let mut stmt = self.conn.prepare(
            "SELECT seq, ts_ms, id, org, actor, action, body, hash FROM events WHERE seq >= ?1 AND seq <= ?2 ORDER BY seq",
        )?;
        let mut rows = stmt.query([from, to])?;
        while let Some(r) = rows.next()? {
            let org: i64 = r.get(3)?;
            let row = ChainRow {
                seq: r.get(0)?,
                ts_ms: r.get(1)?,
                id: r.get(2)?,
                org,
                organization_id: orgs.get(&org).cloned(),
                actor: r.get(4)?,
                action: r.get(5)?,
                body: r.get(6)?,
                hash: to_hash(r.get(7)?),
            };
            if f(row).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// The newest checkpoint row at or before `seq` (where a partial verification starts).
    pub fn checkpoint_at_or_before(&self, seq: i64) -> Result<Option<i64>, SpoolError> {
        Ok(self
            .conn
            .query_row(
                "SELECT max(seq) FROM events WHERE org = ?1 AND action = 'checkpoint' AND seq <= ?2",
                params![CHECKPOINT_ORG, seq],
                |r| r.get(0),
            )
            .optional()?
            .flatten())
    }

    /// Where retention may cut now: everything up to the returned sequence number may go.
    /// The cut is always just before a checkpoint row older than `cutoff_ms` (which stays,
    /// as the anchor verification restarts from), and never after `forwarded` (the lowest
    /// forwarding cursor; `None` when nothing forwards).
    pub fn purge_target(
        &self,
        cutoff_ms: i64,
        forwarded: Option<i64>,
    ) -> Result<Option<i64>, SpoolError> {
        let limit = forwarded.map(|f| f + 1).unwrap_or(i64::MAX);
        let anchor: Option<i64> = self
            .conn
            .query_row(
                "SELECT max(seq) FROM events WHERE org = ?1 AND action = 'checkpoint' AND ts_ms < ?2 AND seq <= ?3",
                params![CHECKPOINT_ORG, cutoff_ms, limit],
                |r| r.get(0),
            )
            .optional()?
            .flatten();
        let done = self.chain_meta()?.purged_through;
        Ok(anchor.map(|a| a - 1).filter(|t| *t > done))
    }

    /// Deletes up to `max_rows` events of the purge towards `through` in one transaction,
    /// with the `rejected` rows and quarantine entries older than `cutoff_ms`, and records
    /// it (`run`: the `purges` row of this purge, `None` for its first step).
    pub fn purge_step(
        &mut self,
        through: i64,
        max_rows: i64,
        cutoff_ms: i64,
        run: Option<i64>,
    ) -> Result<PurgeStep, SpoolError> {
        self.begin()?;
        let from = self.chain_meta()?.purged_through;
        let to = through.min(from + max_rows.max(1));
        let anchor: Option<Vec<u8>> = self
            .conn
            .query_row("SELECT hash FROM events WHERE seq = ?1", [to], |r| r.get(0))
            .optional()?
            .flatten();
        let Some(anchor) = anchor else {
            self.conn.execute_batch("ROLLBACK")?;
            self.end_txn();
            return Err(SpoolError::Corrupt {
                seq: to,
                reason: "retention cannot find the event it would cut at".into(),
            });
        };
        let (checkpoint_rows, max_ts): (i64, Option<i64>) = self.conn.query_row(
            "SELECT count(*) FILTER (WHERE org = ?3), max(ts_ms) FILTER (WHERE org != ?3) FROM events WHERE seq > ?1 AND seq <= ?2",
            params![from, to, CHECKPOINT_ORG],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?;
        let deleted = self.conn.execute(
            "DELETE FROM events WHERE seq > ?1 AND seq <= ?2",
            params![from, to],
        )? as u64;
        self.pending.purged += deleted.saturating_sub(checkpoint_rows as u64);
        self.conn
            .execute("DELETE FROM rejected WHERE seq <= ?1", [to])?;
        self.conn.execute(
            "DELETE FROM quarantine WHERE qid IN (SELECT qid FROM quarantine WHERE at_ms < ?1 LIMIT 1000)",
            [cutoff_ms],
        )?;
        self.conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('purged_through', ?1), ('purge_anchor', ?2)",
            params![to, anchor],
        )?;
        // The newest time among deleted events: verify --cloudwatch tells a purged event
        // from one added to CloudWatch by it.
        self.conn.execute(
            "INSERT INTO meta(key, value) VALUES ('purged_max_ts', ?1)
             ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value)",
            [max_ts.unwrap_or(0)],
        )?;
        let run = match run {
            Some(pid) => {
                self.conn.execute(
                    "UPDATE purges SET deleted = deleted + ?2, through_seq = ?3, anchor_seq = ?3, anchor_head = ?4 WHERE pid = ?1",
                    params![pid, deleted as i64, to, anchor],
                )?;
                pid
            }
            None => {
                self.conn.execute(
                    "INSERT INTO purges(at_ms, deleted, through_seq, anchor_seq, anchor_head) VALUES (?1, ?2, ?3, ?3, ?4)",
                    params![now_ms(), deleted as i64, to, anchor],
                )?;
                self.conn.last_insert_rowid()
            }
        };
        self.commit()?;
        Ok(PurgeStep {
            run,
            deleted,
            through: to,
        })
    }

    /// The recorded purges, oldest first.
    pub fn purges(&self) -> Result<Vec<PurgeRecord>, SpoolError> {
        let mut stmt = self.conn.prepare(
            "SELECT pid, at_ms, deleted, through_seq, anchor_head FROM purges ORDER BY pid",
        )?;
        let rows = stmt.query_map([], |r| {
            let head: Vec<u8> = r.get(4)?;
            Ok(PurgeRecord {
                id: r.get(0)?,
                at: crate::event::format_timestamp_ms(r.get(1)?),
                deleted: r.get::<_, i64>(2)? as u64,
                through_seq: r.get(3)?,
                anchor_head: crate::integrity::to_hex(&head),
            })
        })?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Durability, Envelope};
    use crate::event::{decode, format_timestamp_ms, Decoded};
    use crate::integrity::GENESIS;
    use crate::spool::AppendBatch;
    use std::ops::ControlFlow;

    fn stored(s: &mut Spool, i: u128) {
        let line = serde_json::json!({
            "id": uuid::Uuid::from_u128(i).to_string(),
            "timestamp": format_timestamp_ms(1_000 + i as i64), "action": "startWorkspace",
            "organizationId": "o", "actorId": "a", "args": [],
        })
        .to_string();
        let Decoded::Event(e) = decode(line.as_bytes(), Envelope::Event) else {
            panic!("decodes")
        };
        s.append(&AppendBatch {
            events: vec![e],
            ..Default::default()
        })
        .unwrap();
    }

    #[test]
    fn rows_read_back_carry_the_hashes_the_writer_chained() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        stored(&mut s, 1);
        stored(&mut s, 2);
        s.begin().unwrap();
        let cp = s.write_checkpoint(None, 5_000).unwrap();
        s.commit().unwrap();
        stored(&mut s, 3);
        assert_eq!(
            cp.sequence, 2,
            "the checkpoint covers the two rows before it"
        );

        let mut head = GENESIS;
        let mut seqs = Vec::new();
        s.chain_each(1, 10, |r| {
            assert_eq!(r.hash, Some(r.hash_at(&head, r.seq)), "row {}", r.seq);
            head = r.hash.unwrap();
            seqs.push((r.seq, r.is_checkpoint()));
            ControlFlow::Continue(())
        })
        .unwrap();
        assert_eq!(seqs, vec![(1, false), (2, false), (3, true), (4, false)]);
        assert_eq!(
            cp.chain_head,
            s.chain_each_head(2),
            "signed head = hash at seq 2"
        );
        let meta = s.chain_meta().unwrap();
        assert_eq!((meta.last_seq, meta.head), (4, Some(head)));
        assert_eq!(s.last_checkpoint().unwrap().map(|(seq, _)| seq), Some(3));
        assert_eq!(s.checkpoint_at_or_before(2).unwrap(), None);
        assert_eq!(s.checkpoint_at_or_before(9).unwrap(), Some(3));
        // Stopping early stops the walk.
        let mut n = 0;
        s.chain_each(1, 10, |_| {
            n += 1;
            ControlFlow::Break(())
        })
        .unwrap();
        assert_eq!(n, 1);
    }

    impl Spool {
        fn chain_each_head(&self, seq: i64) -> [u8; 32] {
            let mut h = None;
            self.chain_each(seq, seq, |r| {
                h = r.hash;
                ControlFlow::Continue(())
            })
            .unwrap();
            h.unwrap()
        }
    }
}
