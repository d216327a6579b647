//! Reads of the installation store, for the query API (`api.store = "postgres"`) and
//! `audit-relay query`: one organization's events from every relay, newest first, in
//! keyset pages by `(ts_ms, gseq)` (index `audit_events_org`).
//!
//! Invariants:
//! - The order `(ts_ms DESC, gseq DESC)` is the store's, not a relay's: `gseq` is one
//!   store-wide sequence, so every relay computes the same page and the same cursor.
//! - The relay's own rows (checkpoints, forwarding-ledger rows: `organization_id = ''`)
//!   are never returned.
//! - Each call is bounded by `postgres.connect_timeout`; a store that does not answer
//!   is an error ([`PgClass::Connection`]), never a partial or local answer.

use super::{pool, pooled, schema, PgError};
use crate::config::postgres::PostgresConfig;
use crate::forward::retry::PgClass;
use crate::query::Query;
use std::future::Future;
use std::time::Duration;

/// One event as the store holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreRow {
    pub ts_ms: i64,
    /// The store-wide tiebreak of the keyset order.
    pub gseq: i64,
    pub body: String,
}

/// Pooled read connections to the store, and the page-token key once read.
pub struct StoreReader {
    pool: deadpool_postgres::Pool,
    cfg: PostgresConfig,
    timeout: Duration,
    key: tokio::sync::OnceCell<Vec<u8>>,
}

const PAGE_SQL: &str = "SELECT ts_ms, gseq, body FROM audit_events
     WHERE organization_id = $1 AND organization_id <> ''
       AND ts_ms >= $2 AND ts_ms <= $3
       AND (ts_ms, gseq) < ($4, $5)
       AND ($6::text IS NULL OR actor = $6) AND ($7::text IS NULL OR action = $7)
     ORDER BY ts_ms DESC, gseq DESC
     LIMIT $8";

impl StoreReader {
    /// A reader of `cfg`'s store; connects only when first used.
    pub fn new(cfg: &PostgresConfig) -> Result<StoreReader, PgError> {
        Ok(StoreReader {
            pool: pool(cfg)?,
            cfg: cfg.clone(),
            timeout: cfg.connect_timeout.0,
            key: tokio::sync::OnceCell::new(),
        })
    }

    /// Runs `work` within `postgres.connect_timeout`.
    async fn bounded<T>(
        &self,
        what: &str,
        work: impl Future<Output = Result<T, PgError>>,
    ) -> Result<T, PgError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(r) => r,
            Err(_) => Err(PgError::new(
                PgClass::Connection,
                what,
                "no answer within postgres.connect_timeout",
            )),
        }
    }

    /// The page-token key kept in the store (the same for every relay), read once.
    pub async fn token_key(&self) -> Result<&[u8], PgError> {
        self.key
            .get_or_try_init(|| {
                self.bounded("reading the page-token key", async {
                    let c = pooled(&self.pool, &self.cfg).await?;
                    schema::token_key(&**c).await
                })
            })
            .await
            .map(|k| k.as_slice())
    }

    /// Up to `limit` of `q`'s events, newest first, strictly older than `before` in the
    /// keyset order `(ts_ms, gseq)`. `q.limit` is ignored.
    pub async fn page(
        &self,
        q: &Query,
        before: Option<(i64, i64)>,
        limit: usize,
    ) -> Result<Vec<StoreRow>, PgError> {
        let (to_ms, last_ts, last_gseq) = match before {
            Some((ts, g)) => (q.to_ms.min(ts), ts, g),
            // A first page's bound is `to` itself (no `gseq` reaches MAX): PostgreSQL's
            // generic plan may start the index scan at this bound rather than at
            // `ts_ms <= to`, and (MAX, MAX) walked every newer row of the organization.
            None => (q.to_ms, q.to_ms, i64::MAX),
        };
        let what = "reading the installation store";
        self.bounded(what, async {
            let c = pooled(&self.pool, &self.cfg).await?;
            let stmt = c
                .prepare_cached(PAGE_SQL)
                .await
                .map_err(|e| PgError::from_pg(what, &e))?;
            let rows = c
                .query(
                    &stmt,
                    &[
                        &q.organization_id,
                        &q.from_ms,
                        &to_ms,
                        &last_ts,
                        &last_gseq,
                        &q.actor_id,
                        &q.action,
                        &(limit as i64),
                    ],
                )
                .await
                .map_err(|e| PgError::from_pg(what, &e))?;
            Ok(rows
                .iter()
                .map(|r| StoreRow {
                    ts_ms: r.get(0),
                    gseq: r.get(1),
                    body: r.get(2),
                })
                .collect())
        })
        .await
    }

    /// Every event of `q` (at most `q.limit`), newest first, handed to `f` one at a time
    /// (read in keyset chunks of `chunk` rows).
    pub async fn each<E: From<PgError>>(
        &self,
        q: &Query,
        chunk: usize,
        mut f: impl FnMut(StoreRow) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut left = q.limit;
        let mut before = None;
        while left > 0 {
            let n = left.min(chunk.max(1));
            let rows = self.page(q, before, n).await?;
            let last = rows.len() < n;
            for r in rows {
                before = Some((r.ts_ms, r.gseq));
                left -= 1;
                f(r)?;
            }
            if last {
                break;
            }
        }
        Ok(())
    }

    /// Whether the store answers (a pooled connection and a round trip).
    pub async fn ping(&self) -> Result<(), PgError> {
        let what = "checking the installation store";
        self.bounded(what, async {
            let c = pooled(&self.pool, &self.cfg).await?;
            c.simple_query("SELECT 1")
                .await
                .map_err(|e| PgError::from_pg(what, &e))?;
            Ok(())
        })
        .await
    }
}
