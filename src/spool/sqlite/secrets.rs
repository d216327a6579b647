//! The secrets kept in `meta` (the page-token key) and the quarantine of bad input.

use super::super::{QuarantineEntry, SpoolError};
use super::Spool;
use crate::event::format_timestamp_ms;
use rusqlite::{params, Connection, OptionalExtension};

impl Spool {
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
}
