//! The spool's side of integrity and retention: checkpoint rows, reading the chain back,
//! and purging a prefix of the spool at a checkpoint.

use super::ledger::LEDGER_ACTION;
use super::sqlite::{now_ms, Spool, SpoolError};
use crate::integrity::{chain_hash, Canonical, ChainCheckpoint, Signer, CHECKPOINT_ORG, GENESIS};
use rusqlite::{params, Connection, OptionalExtension};
use std::collections::HashMap;

/// One stored row as the chain sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainRow {
    pub seq: i64,
    pub ts_ms: i64,
    pub id: Vec<u8>,
    /// The organization key; [`CHECKPOINT_ORG`] for checkpoints.
    pub org: i64,
    /// The organization id behind `org` (empty for checkpoints, `None` when the key is
    /// not in the `orgs` table).
    pub organization_id: Option<String>,
    pub actor: String,
    pub action: String,
    pub body: String,
    /// The stored chain hash (`None` when missing or not 32 bytes).
    pub hash: Option<[u8; 32]>,
}

impl ChainRow {
    /// The hash this row should carry after `prev`, if it sat at sequence `seq`.
    pub fn hash_at(&self, prev: &[u8; 32], seq: i64) -> [u8; 32] {
        chain_hash(
            prev,
            &Canonical {
                seq,
                ts_ms: self.ts_ms,
                id: &self.id,
                organization_id: self.organization_id.as_deref().unwrap_or(""),
                actor: &self.actor,
                action: &self.action,
                body: &self.body,
            },
        )
    }

    /// A checkpoint row: the spool's own (`org` 0), and not a forwarding-ledger row.
    pub fn is_checkpoint(&self) -> bool {
        self.org == CHECKPOINT_ORG && !self.is_ledger()
    }

    /// A forwarding-ledger row: a rejection recorded in the chain (see
    /// [`super::LedgerEntry`]).
    pub fn is_ledger(&self) -> bool {
        self.org == CHECKPOINT_ORG && self.action == LEDGER_ACTION
    }
}

/// What the spool recorded about its own chain, to check the rows against.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ChainMeta {
    /// `meta.last_seq`: the newest sequence number the writer committed.
    pub last_seq: i64,
    /// `meta.chain_head`: the chain hash at `last_seq`.
    pub head: Option<[u8; 32]>,
    /// Everything up to this sequence number was purged by retention (0: nothing).
    pub purged_through: i64,
    /// The chain hash at `purged_through`, recorded by the purge.
    pub purge_anchor: Option<[u8; 32]>,
    /// The newest event time (`ts_ms`) retention has deleted (0: nothing).
    pub purged_max_ts: i64,
    /// The highest forwarding cursor.
    pub max_cursor: i64,
    /// When the writer last committed (ms since the epoch; 0: not recorded).
    pub last_commit_ms: i64,
    /// When the current (or last) writer opened the spool (ms; 0: not recorded).
    pub opened_ms: i64,
}

/// One retention purge, as recorded in the spool.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PurgeRecord {
    pub id: i64,
    /// RFC 3339.
    pub at: String,
    pub deleted: u64,
    /// Events up to this sequence number are gone.
    pub through_seq: i64,
    /// The chain hash at `through_seq`, where verification restarts.
    pub anchor_head: String,
}

/// What one purge step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PurgeStep {
    /// The `purges` row of this run.
    pub run: i64,
    pub deleted: u64,
    /// Everything up to here is gone now.
    pub through: i64,
}

fn to_hash(v: Option<Vec<u8>>) -> Option<[u8; 32]> {
    v.and_then(|b| b.try_into().ok())
}

/// The chain head recorded at the last commit (the genesis value for a new spool).
pub(super) fn stored_head(conn: &Connection) -> Result<[u8; 32], SpoolError> {
    let v: Option<Vec<u8>> = conn
        .query_row("SELECT value FROM meta WHERE key = 'chain_head'", [], |r| {
            r.get(0)
        })
        .optional()?;
    Ok(to_hash(v).unwrap_or(GENESIS))
}

/// How often a long upgrade logs how far it is.
const UPGRADE_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Computes the chain over every stored event (upgrade from a format without it), in one
/// transaction. It reads and rewrites every row (minutes on a 90-day spool), so it logs
/// its progress; the admin endpoints answer meanwhile (`/readyz`: "migrating").
pub(super) fn hash_existing(conn: &Connection) -> Result<(), SpoolError> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let orgs = org_names(conn)?;
    let mut head = GENESIS;
    let mut last = 0i64;
    let total: i64 = conn.query_row("SELECT count(*) FROM events", [], |r| r.get(0))?;
    tracing::info!(
        rows = total,
        "spool upgrade: computing the hash chain over every stored event"
    );
    let started = std::time::Instant::now();
    let mut logged = started;
    let mut done = 0i64;
    {
        let mut read = conn
            .prepare("SELECT seq, ts_ms, id, org, actor, action, body FROM events ORDER BY seq")?;
        let mut update = conn.prepare("UPDATE events SET hash = ?2 WHERE seq = ?1")?;
        let mut rows = read.query([])?;
        while let Some(r) = rows.next()? {
            let seq: i64 = r.get(0)?;
            let org: i64 = r.get(3)?;
            head = chain_hash(
                &head,
                &Canonical {
                    seq,
                    ts_ms: r.get(1)?,
                    id: r.get_ref(2)?.as_blob().map_err(rusqlite::Error::from)?,
                    organization_id: orgs.get(&org).map(String::as_str).unwrap_or(""),
                    actor: r.get_ref(4)?.as_str().map_err(rusqlite::Error::from)?,
                    action: r.get_ref(5)?.as_str().map_err(rusqlite::Error::from)?,
                    body: r.get_ref(6)?.as_str().map_err(rusqlite::Error::from)?,
                },
            );
            update.execute(params![seq, head.as_slice()])?;
            last = seq;
            done += 1;
            if done % 4096 == 0 && logged.elapsed() >= UPGRADE_PROGRESS_EVERY {
                logged = std::time::Instant::now();
                tracing::info!(
                    done,
                    total,
                    elapsed_s = started.elapsed().as_secs(),
                    "spool upgrade: hashing stored events"
                );
            }
        }
    }
    if last > 0 {
        conn.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('chain_head', ?1)",
            [head.as_slice()],
        )?;
    }
    conn.execute_batch("COMMIT")?;
    Ok(())
}

fn org_names(conn: &Connection) -> Result<HashMap<i64, String>, SpoolError> {
    let mut stmt = conn.prepare("SELECT org, organization_id FROM orgs")?;
    let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<_, _>>()?)
}

impl Spool {
    /// Adds a checkpoint over everything stored so far to the open transaction, as a row
    /// of its own (chained like any event; forwarded as a `"type":"checkpoint"` message).
    pub fn write_checkpoint(
        &mut self,
        signer: Option<&Signer>,
        time_ms: i64,
    ) -> Result<ChainCheckpoint, SpoolError> {
        let cp = match signer {
            Some(s) => s.sign(self.last_seq, self.head, time_ms),
            None => ChainCheckpoint {
                sequence: self.last_seq,
                chain_head: self.head,
                time_ms,
                signed: None,
            },
        };
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
