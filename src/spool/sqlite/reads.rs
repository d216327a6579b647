//! The query API's reads: one organization's events, newest first, in keyset pages.

use super::super::{SpoolError, StoredEvent};
use super::{stored_event, Spool};
use crate::query::Query;
use rusqlite::{params, OptionalExtension};

impl Spool {
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
}
