//! `GET /v1/organizations/{organizationId}/audit-logs/export`: one API-form event a
//! line, newest first, streamed.
//!
//! Invariants, each against a failure seen in the field:
//! - The store is read in keyset chunks of [`EXPORT_ROWS`] rows, each its own short read
//!   transaction, resuming strictly after the last `(ts_ms, tiebreak)` sent: a client
//!   that reads slowly never holds a snapshot, so the WAL can restart while ingest goes
//!   on. `(ts_ms, seq)` (spool) and `(ts_ms, gseq)` (installation store) are unique, so
//!   no row is sent twice or skipped at a chunk boundary.
//! - From the installation store the first chunk is read before the answer starts: a
//!   store that cannot be read is answered 503 `unavailable`, not with a cut stream.
//! - A read permit is held only while a chunk is read, never while the client is waited
//!   for; exports have their own slots ([`ExportSlots`]: `api.max_exports` in all, and
//!   `api.max_exports_per_caller` each), so no caller can starve the page reads.
//! - A client that takes nothing for `api.export_stall_timeout` has its export cut; a
//!   cut or failed export ends the body with an error (no final chunk), so the client
//!   never mistakes it for a complete one.

use super::error::{ApiError, Code};
use super::store::{ReadStore, Row};
use super::{rest, ApiState};
use crate::event::write_api_json;
use crate::query::Query;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query as QueryString, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::mpsc;

/// Rows read from the spool in one short read transaction.
pub const EXPORT_ROWS: usize = 1000;
/// Bytes of NDJSON gathered before they are handed to the connection.
const EXPORT_CHUNK_BYTES: usize = 16 << 10;
/// Pieces in flight between the spool reader and the connection.
const EXPORT_CHUNKS: usize = 4;

/// Export slots: at most `total` exports at once, at most `per_caller` for one caller.
pub struct ExportSlots {
    total: usize,
    per_caller: usize,
    running: Mutex<HashMap<String, usize>>,
}

/// A running export's slot, given back when it is dropped.
pub struct ExportSlot {
    slots: Arc<ExportSlots>,
    caller: String,
}

impl ExportSlots {
    pub fn new(total: usize, per_caller: usize) -> Arc<ExportSlots> {
        Arc::new(ExportSlots {
            total,
            per_caller,
            running: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for `caller` (its actor id), or 429 `resource_exhausted` saying which limit.
    pub fn try_start(self: &Arc<Self>, caller: &str) -> Result<ExportSlot, ApiError> {
        let mut running = self.running.lock().expect("export slots");
        let mine = running.get(caller).copied().unwrap_or(0);
        if mine >= self.per_caller {
            return Err(ApiError::new(
                Code::ResourceExhausted,
                format!(
                    "this caller already runs {mine} exports (api.max_exports_per_caller); retry when one ends"
                ),
            ));
        }
        if running.values().sum::<usize>() >= self.total {
            return Err(ApiError::new(
                Code::ResourceExhausted,
                format!(
                    "{} exports are running (api.max_exports); retry later",
                    self.total
                ),
            ));
        }
        running.insert(caller.to_string(), mine + 1);
        Ok(ExportSlot {
            slots: self.clone(),
            caller: caller.to_string(),
        })
    }

    /// Exports running now.
    pub fn running(&self) -> usize {
        self.running.lock().expect("export slots").values().sum()
    }
}

impl Drop for ExportSlot {
    fn drop(&mut self) {
        let mut running = self.slots.running.lock().expect("export slots");
        if let Some(n) = running.get_mut(&self.caller) {
            *n -= 1;
            if *n == 0 {
                running.remove(&self.caller);
            }
        }
    }
}

/// A response body fed by the export task through a bounded channel. When the channel
/// closes before the task marked the export `complete`, the body ends with an error,
/// which cuts the response (no final chunk).
struct ChannelBody {
    rx: mpsc::Receiver<Bytes>,
    complete: Arc<AtomicBool>,
}

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        match self.rx.poll_recv(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(b)) => Poll::Ready(Some(Ok(Frame::data(b)))),
            Poll::Ready(None) if self.complete.load(Ordering::Acquire) => Poll::Ready(None),
            Poll::Ready(None) => {
                Poll::Ready(Some(Err(std::io::Error::other("export stopped early"))))
            }
        }
    }
}

/// Why an export stopped early (each logged where it happens).
#[derive(Debug)]
enum Stop {
    /// The client went away.
    Closed,
    /// The client took nothing for the stall timeout.
    Stalled,
    /// The spool could not be read, or held an event that does not decode.
    Failed,
}

/// `GET /v1/organizations/{organizationId}/audit-logs/export` (the request timeout covers
/// everything before the first byte).
pub async fn export(
    State(s): State<ApiState>,
    org: Result<Path<String>, PathRejection>,
    params: Result<QueryString<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let work = async {
        let caller = s.authenticate(&headers)?;
        let (org, params) = rest::path_and_query(org, params)?;
        let req = rest::rest_request(org, &params, &["from", "to", "actorId", "action"])?;
        let plan = s.authorize(&caller, &req, super::request::REST).await?;
        let slot = s.exports.try_start(&caller.actor_id())?;
        let first = match &*s.store {
            ReadStore::Postgres { .. } => Some(s.read_rows(&plan.query, None, EXPORT_ROWS).await?),
            ReadStore::Spool { .. } => None,
        };
        s.record_read(&caller, &plan, true).await?;
        let (tx, rx) = mpsc::channel(EXPORT_CHUNKS);
        let complete = Arc::new(AtomicBool::new(false));
        let done = complete.clone();
        let state = s.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if stream(&state, plan.query, first, &tx).await.is_ok() {
                done.store(true, Ordering::Release);
            }
        });
        Ok((
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::new(ChannelBody { rx, complete }),
        )
            .into_response())
    };
    s.within_timeout(work).await
}

/// Reads `q` chunk by chunk (the first one already read, if `first`) and sends it as
/// NDJSON pieces through `tx`.
async fn stream(
    s: &ApiState,
    q: Query,
    mut first: Option<Vec<Row>>,
    tx: &mpsc::Sender<Bytes>,
) -> Result<(), Stop> {
    let stall = s.export_stall_timeout;
    let mut before = None;
    let mut buf = Vec::with_capacity(EXPORT_CHUNK_BYTES + 4096);
    loop {
        let rows = match first.take() {
            Some(rows) => rows,
            None => read_chunk(s, &q, before).await?,
        };
        let last_chunk = rows.len() < EXPORT_ROWS;
        for e in rows {
            before = Some((e.ts_ms, e.tiebreak));
            // Written from the stored JSON, as a page's events are.
            write_api_json(&e.body, e.ts_ms, &mut buf).map_err(|r| {
                tracing::error!(seq = e.tiebreak, reason = %r, "query API: export met a corrupt event");
                Stop::Failed
            })?;
            buf.push(b'\n');
            if buf.len() >= EXPORT_CHUNK_BYTES {
                let next = Vec::with_capacity(EXPORT_CHUNK_BYTES + 4096);
                send(tx, Bytes::from(std::mem::replace(&mut buf, next)), stall).await?;
            }
        }
        if last_chunk {
            break;
        }
    }
    if !buf.is_empty() {
        send(tx, Bytes::from(buf), stall).await?;
    }
    Ok(())
}

/// One keyset chunk, read under a read permit that is given back before it returns
/// (the cause of a failure is logged where it happens).
async fn read_chunk(s: &ApiState, q: &Query, before: Option<(i64, i64)>) -> Result<Vec<Row>, Stop> {
    s.read_rows(q, before, EXPORT_ROWS).await.map_err(|e| {
        tracing::error!(error = %e, "query API: export failed");
        Stop::Failed
    })
}

async fn send(tx: &mpsc::Sender<Bytes>, piece: Bytes, stall: Duration) -> Result<(), Stop> {
    match tokio::time::timeout(stall, tx.send(piece)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Stop::Closed),
        Err(_) => {
            tracing::warn!(
                stall_s = stall.as_secs_f64(),
                "query API: export cut, its client took no data for api.export_stall_timeout"
            );
            Err(Stop::Stalled)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_per_caller_and_in_all() {
        let slots = ExportSlots::new(3, 2);
        let a1 = slots.try_start("a").unwrap();
        let _a2 = slots.try_start("a").unwrap();
        let e = slots.try_start("a").err().unwrap();
        assert_eq!(e.code, Code::ResourceExhausted);
        assert!(e.message.contains("api.max_exports_per_caller"), "{e}");
        let _b1 = slots.try_start("b").unwrap();
        let e = slots.try_start("c").err().unwrap();
        assert!(e.message.contains("api.max_exports)"), "{e}");
        assert_eq!(slots.running(), 3);
        drop(a1);
        assert_eq!(slots.running(), 2);
        let _c1 = slots.try_start("c").unwrap();
        let _ = slots.try_start("a").err().unwrap();
    }
}
