//! Where reading resumes: the source offsets, the forwarders' cursors, and the reads
//! after a cursor.

use super::super::{SpoolError, StoredEvent, FORWARD_CURSOR};
use super::{stored_event, Spool};
use crate::source::checkpoint::{FileId, Fingerprint, SourceOffset};
use crate::source::framing::{Resume, ResumeMode};
use rusqlite::{params, OptionalExtension};

impl Spool {
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
        // Another kind of forwarder (the installation store's) starts from nothing.
        let cloudwatch = name == FORWARD_CURSOR || name.starts_with(&format!("{FORWARD_CURSOR}/"));
        if !cloudwatch {
            return Ok(0);
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
}
