//! Totals, forwarding lag and edges, as `spool stats` and `/metrics` show them.

use super::super::{now_ms, SpoolError, Stats, FORWARD_CURSOR};
use super::Spool;
use crate::event::format_timestamp_ms;
use rusqlite::OptionalExtension;

impl Spool {
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

    /// Rejected events counted by reason.
    pub fn rejected_by_reason(&self) -> Result<Vec<(String, u64)>, SpoolError> {
        let mut stmt = self.conn.prepare_cached(
            "SELECT reason, count(*) FROM rejected GROUP BY reason ORDER BY reason",
        )?;
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))?;
        Ok(rows.collect::<Result<_, _>>()?)
    }
}
