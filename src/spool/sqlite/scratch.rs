//! A spilling index of the messages `verify --cloudwatch` reads back: SQLite's private
//! temporary database (deleted when closed), spilled to a temporary file beyond its page
//! cache, so memory stays bounded however many messages there are.

use super::super::SpoolError;
use rusqlite::{params, Connection};

/// Rows per transaction while messages are added.
const TXN_ROWS: u64 = 50_000;

/// Messages keyed by `(timestamp, id)`, each with its digest; matched ones are taken out.
pub struct MessageIndex {
    conn: Connection,
    pending: u64,
}

impl MessageIndex {
    /// A new, empty index with a page cache of `cache_kib` KiB.
    pub fn new(cache_kib: i64) -> Result<MessageIndex, SpoolError> {
        // An empty name: a private temporary database.
        let conn = Connection::open("")?;
        conn.pragma_update(None, "cache_size", -cache_kib)?;
        conn.pragma_update(None, "journal_mode", "OFF")?;
        conn.pragma_update(None, "synchronous", "OFF")?;
        conn.pragma_update(None, "temp_store", "FILE")?;
        conn.execute_batch(
            "CREATE TABLE cw(ts INTEGER NOT NULL, id BLOB NOT NULL, id_text TEXT NOT NULL, digest BLOB NOT NULL);
             BEGIN;",
        )?;
        Ok(MessageIndex { conn, pending: 0 })
    }

    /// Adds one message (before [`MessageIndex::seal`]).
    pub fn add(
        &mut self,
        ts: i64,
        id: &uuid::Uuid,
        id_text: &str,
        digest: &[u8; 32],
    ) -> Result<(), SpoolError> {
        self.conn
            .prepare_cached("INSERT INTO cw(ts, id, id_text, digest) VALUES (?1, ?2, ?3, ?4)")?
            .execute(params![
                ts,
                id.as_bytes().as_slice(),
                id_text,
                digest.as_slice()
            ])?;
        self.pending += 1;
        if self.pending >= TXN_ROWS {
            self.conn.execute_batch("COMMIT; BEGIN;")?;
            self.pending = 0;
        }
        Ok(())
    }

    /// Ends adding: indexes the messages and opens the transaction that
    /// [`MessageIndex::take`] deletes in.
    pub fn seal(&mut self) -> Result<(), SpoolError> {
        self.conn
            .execute_batch("COMMIT; CREATE INDEX cw_key ON cw(ts, id); BEGIN;")?;
        Ok(())
    }

    /// Takes out every message stored for `(ts, id)` and returns their digests.
    pub fn take(&self, ts: i64, id: &[u8]) -> Result<Vec<Vec<u8>>, SpoolError> {
        let copies: Vec<Vec<u8>> = {
            let mut stmt = self
                .conn
                .prepare_cached("SELECT digest FROM cw WHERE ts = ?1 AND id = ?2")?;
            let rows = stmt.query_map(params![ts, id], |x| x.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        if !copies.is_empty() {
            self.conn
                .prepare_cached("DELETE FROM cw WHERE ts = ?1 AND id = ?2")?
                .execute(params![ts, id])?;
        }
        Ok(copies)
    }

    /// Calls `f(ts, id_text, copies)` for each `(ts, id)` still in the index, in order.
    pub fn each_left(&mut self, mut f: impl FnMut(i64, String, u64)) -> Result<(), SpoolError> {
        self.conn.execute_batch("COMMIT")?;
        let mut stmt = self
            .conn
            .prepare("SELECT ts, min(id_text), count(*) FROM cw GROUP BY ts, id ORDER BY ts, id")?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            f(r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as u64);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn take_removes_every_copy_and_the_rest_is_left_in_order() {
        let mut ix = MessageIndex::new(1024).unwrap();
        let (a, b) = (uuid::Uuid::from_u128(1), uuid::Uuid::from_u128(2));
        ix.add(20, &b, "b", &[2; 32]).unwrap();
        ix.add(10, &a, "a", &[1; 32]).unwrap();
        ix.add(10, &a, "a", &[9; 32]).unwrap();
        ix.seal().unwrap();
        let got = ix.take(10, a.as_bytes()).unwrap();
        assert_eq!(got, vec![vec![1u8; 32], vec![9u8; 32]]);
        assert!(ix.take(10, a.as_bytes()).unwrap().is_empty(), "taken once");
        assert!(ix.take(20, a.as_bytes()).unwrap().is_empty(), "other time");
        let mut left = Vec::new();
        ix.each_left(|ts, id, n| left.push((ts, id, n))).unwrap();
        assert_eq!(left, vec![(20, "b".to_string(), 1)]);
    }
}
