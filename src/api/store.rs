//! Where the API's reads come from (`api.store`): this relay's spool, or the
//! installation store (PostgreSQL) that every relay ships to. Both give the same thing,
//! one organization's events newest first in keyset chunks after a `(ts_ms, tiebreak)`
//! cursor, and the key that signs page tokens. The tiebreak is the spool's `seq` or the
//! store's `gseq`; a token is only ever read back by the store that issued it (their
//! keys differ).
//!
//! With the installation store, any failure to read it is answered `unavailable` (503),
//! never from the local spool: a partial answer would look complete. A probe keeps
//! [`StoreHealth`] current for `/readyz`.

use super::error::{ApiError, Code};
use super::readers::Readers;
use crate::installation::query::StoreReader;
use crate::installation::PgError;
use crate::query::Query;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// How often the probe checks the installation store.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// What the caller reads when the installation store cannot be read.
pub const UNREACHABLE: &str =
    "the installation store (PostgreSQL) is unreachable; retry later (the relay's /readyz says why)";

/// One event as read, from either store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub ts_ms: i64,
    /// `seq` (spool) or `gseq` (installation store): the keyset order's tiebreak.
    pub tiebreak: i64,
    pub body: String,
}

/// The source of the API's reads.
pub enum ReadStore {
    /// This relay's spool, with the page-token key kept in it.
    Spool { readers: Readers, key: Vec<u8> },
    /// The installation store.
    Postgres {
        reader: Arc<StoreReader>,
        health: Arc<StoreHealth>,
    },
}

impl ReadStore {
    /// The installation store or the spool: which one is read, for logs.
    pub fn name(&self) -> &'static str {
        match self {
            ReadStore::Spool { .. } => "spool",
            ReadStore::Postgres { .. } => "postgres",
        }
    }

    /// The key that signs this store's page tokens.
    pub async fn key(&self) -> Result<Vec<u8>, ApiError> {
        match self {
            ReadStore::Spool { key, .. } => Ok(key.clone()),
            ReadStore::Postgres { reader, health } => {
                // Once read, the key is kept: a success here says nothing of the store.
                // Boxed, as every PostgreSQL call of a request: the client's futures are
                // tens of KiB, and inline they would make every request's future (the
                // spool's too) that size, copied each time it moves.
                Box::pin(reader.token_key())
                    .await
                    .map(<[u8]>::to_vec)
                    .map_err(|e| {
                        health.observe(Err(&e));
                        pg_error(e)
                    })
            }
        }
    }

    /// Up to `limit` of `q`'s events, newest first, strictly older than `before`
    /// (`q.limit` is ignored), holding `permit` while it reads. A spool read runs on a
    /// blocking thread, which keeps the permit until it ends.
    pub async fn chunk(
        self: &Arc<Self>,
        permit: tokio::sync::OwnedSemaphorePermit,
        q: &Query,
        before: Option<(i64, i64)>,
        limit: usize,
    ) -> Result<Vec<Row>, ApiError> {
        match &**self {
            ReadStore::Spool { readers, .. } => {
                let q = q.clone();
                readers
                    .read(move |spool| {
                        let _permit = permit;
                        spool.query_chunk(&q, before, limit)
                    })
                    .await
                    .map_err(|e| ApiError::internal("reading the spool", e))
                    .map(|rows| {
                        rows.into_iter()
                            .map(|e| Row {
                                ts_ms: e.ts_ms,
                                tiebreak: e.seq,
                                body: e.body,
                            })
                            .collect()
                    })
            }
            ReadStore::Postgres { reader, health } => {
                let r = Box::pin(reader.page(q, before, limit)).await;
                drop(permit);
                health.observe(r.as_ref().map(|_| ()));
                r.map_err(pg_error).map(|rows| {
                    rows.into_iter()
                        .map(|r| Row {
                            ts_ms: r.ts_ms,
                            tiebreak: r.gseq,
                            body: r.body,
                        })
                        .collect()
                })
            }
        }
    }
}

/// A failed read of the installation store, as the caller sees it: `unavailable` when
/// the store cannot be reached or used as configured, `internal` for anything else.
/// The cause is logged, not answered.
fn pg_error(e: PgError) -> ApiError {
    use crate::forward::retry::PgClass;
    match e.class {
        PgClass::Other => ApiError::internal("reading the installation store", e),
        class => {
            // The probe logs when the store goes away and comes back; each call only here.
            tracing::debug!(error = %e, class = class.label(), "query API: the installation store cannot be read; answering unavailable");
            ApiError::new(Code::Unavailable, UNREACHABLE)
        }
    }
}

/// Whether the installation store answers the API, for `/readyz` and `/metrics`.
#[derive(Debug, Default)]
pub struct StoreHealth {
    /// Set when the API reads the installation store.
    pub enabled: std::sync::atomic::AtomicBool,
    /// Unix ms since when it has not answered (0 while it does).
    pub down_since_ms: AtomicI64,
    /// The last failure, while it lasts.
    problem: Mutex<Option<String>>,
}

impl StoreHealth {
    /// Records the outcome of a call to the store.
    pub fn observe(&self, r: Result<(), &PgError>) {
        match r {
            Ok(()) => {
                self.down_since_ms.store(0, Ordering::Relaxed);
                *self.problem.lock().expect("store health") = None;
            }
            Err(e) => {
                let _ = self.down_since_ms.compare_exchange(
                    0,
                    crate::spool::now_ms(),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                );
                *self.problem.lock().expect("store health") = Some(e.to_string());
            }
        }
    }

    /// Why the API cannot answer, if it cannot.
    pub fn not_ready(&self) -> Option<String> {
        if self.down_since_ms.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let why = self.problem.lock().expect("store health").clone();
        Some(format!(
            "query API (api.store = \"postgres\"): the installation store is unreachable: {}",
            why.unwrap_or_else(|| "no answer".into())
        ))
    }

    /// 1 while the store answers, 0 while it does not.
    pub fn up(&self) -> bool {
        self.down_since_ms.load(Ordering::Relaxed) == 0
    }
}

/// Checks the store every [`PROBE_EVERY`] until `stop`, so that `/readyz` knows before
/// a caller finds out (and reads the page-token key as soon as the store answers).
pub async fn probe(reader: Arc<StoreReader>, health: Arc<StoreHealth>, stop: CancellationToken) {
    let mut was_up = true;
    loop {
        let r = match reader.ping().await {
            Ok(()) => reader.token_key().await.map(|_| ()),
            Err(e) => Err(e),
        };
        match &r {
            Ok(()) if !was_up => {
                tracing::info!("query API: the installation store answers again");
            }
            Err(e) if was_up => {
                tracing::warn!(error = %e, class = e.class.label(), "query API: the installation store is unreachable; ListAuditLogs answers unavailable until it is back");
            }
            _ => {}
        }
        was_up = r.is_ok();
        health.observe(r.as_ref().map(|_| ()));
        tokio::select! {
            _ = tokio::time::sleep(PROBE_EVERY) => {}
            _ = stop.cancelled() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forward::retry::PgClass;

    #[test]
    fn store_failures_are_unavailable_and_readiness_follows_the_last_outcome() {
        for class in PgClass::ALL {
            let e = pg_error(PgError::new(class, "connecting to postgres.url", "refused"));
            let want = if class == PgClass::Other {
                Code::Internal
            } else {
                Code::Unavailable
            };
            assert_eq!(e.code, want, "{class:?}");
            assert!(
                !e.message.contains("refused"),
                "no cause in the answer: {e}"
            );
        }
        let h = StoreHealth::default();
        assert!(h.up() && h.not_ready().is_none());
        let e = PgError::new(PgClass::Connection, "connecting to postgres.url", "refused");
        h.observe(Err(&e));
        let since = h.down_since_ms.load(Ordering::Relaxed);
        assert!(!h.up());
        let why = h.not_ready().unwrap();
        assert!(
            why.contains(
                "the installation store is unreachable: connecting to postgres.url: refused"
            ),
            "{why}"
        );
        h.observe(Err(&e));
        assert_eq!(
            h.down_since_ms.load(Ordering::Relaxed),
            since,
            "down since the first failure"
        );
        h.observe(Ok(()));
        assert!(h.up() && h.not_ready().is_none());
    }
}
