//! The REST form of ListAuditLogs for people with curl, and the NDJSON export.

use super::error::ApiError;
use super::request::{parse_decimal, ListRequest, MAX_PAGE_SIZE, REST};
use super::{connect, ApiState};
use crate::event::ApiAuditLog;
use crate::spool::SpoolError;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use http_body::Frame;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// Bytes of NDJSON gathered before they are handed to the connection.
const EXPORT_CHUNK_BYTES: usize = 64 << 10;
/// Chunks in flight between the spool reader and the connection.
const EXPORT_CHUNKS: usize = 4;

/// Builds a request from the path and the query string; unknown or repeated
/// parameters are refused by name.
pub fn rest_request(
    organization_id: String,
    params: &[(String, String)],
    allowed: &[&str],
) -> Result<ListRequest, ApiError> {
    let mut r = ListRequest {
        organization_id,
        ..Default::default()
    };
    for (i, (k, v)) in params.iter().enumerate() {
        if !allowed.contains(&k.as_str()) {
            return Err(ApiError::invalid(
                k,
                format!("unknown parameter (known: {})", allowed.join(", ")),
            ));
        }
        if params[..i].iter().any(|(o, _)| o == k) {
            return Err(ApiError::invalid(k, "given more than once"));
        }
        let raw = v;
        let v = Some(v.clone());
        match k.as_str() {
            "from" => r.from = v,
            "to" => r.to = v,
            "actorId" => r.actor_id = v,
            "action" => r.action = v,
            "pageToken" => r.token = v,
            "pageSize" if raw == "0" => {
                return Err(ApiError::invalid(
                    "pageSize",
                    format!("must be between 1 and {MAX_PAGE_SIZE}, got 0"),
                ))
            }
            "pageSize" => {
                r.page_size =
                    Some(parse_decimal(raw).map_err(|m| ApiError::invalid("pageSize", m))?)
            }
            _ => unreachable!("checked against allowed"),
        }
    }
    Ok(r)
}

/// The organization in the path and the query string's pairs, or a Connect error (axum's
/// own rejections are plain text). A percent-escape that does not decode to UTF-8 is
/// the usual cause.
fn path_and_query(
    org: Result<Path<String>, PathRejection>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Result<(String, Vec<(String, String)>), ApiError> {
    let Path(org) = org.map_err(|_| {
        ApiError::invalid(
            "organizationId",
            "the path segment is not valid percent-encoded UTF-8",
        )
    })?;
    let Query(params) = params.map_err(|_| {
        ApiError::invalid(
            "query",
            "the query string is not valid percent-encoded UTF-8",
        )
    })?;
    Ok((org, params))
}

/// `GET /v1/organizations/{organizationId}/audit-logs`.
pub async fn list(
    State(s): State<ApiState>,
    org: Result<Path<String>, PathRejection>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let work = async {
        let caller = s.authenticate(&headers)?;
        let (org, params) = path_and_query(org, params)?;
        let allowed = ["from", "to", "actorId", "action", "pageSize", "pageToken"];
        let req = rest_request(org, &params, &allowed)?;
        let page = s.list(&caller, &req, REST).await?;
        Ok((
            [(header::CONTENT_TYPE, "application/json")],
            connect::encode_json(&page),
        )
            .into_response())
    };
    s.within_timeout(work).await
}

/// Why an export stopped early.
enum ExportStop {
    Spool(SpoolError),
    Corrupt(String),
    /// The client went away.
    Closed,
}

impl From<SpoolError> for ExportStop {
    fn from(e: SpoolError) -> Self {
        ExportStop::Spool(e)
    }
}

/// A response body fed by the spool reader through a bounded channel.
struct ChannelBody(mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        self.0.poll_recv(cx).map(|o| o.map(|r| r.map(Frame::data)))
    }
}

/// `GET /v1/organizations/{organizationId}/audit-logs/export`: one API-form event a
/// line, newest first, streamed (the timeout covers everything before the first byte).
pub async fn export(
    State(s): State<ApiState>,
    org: Result<Path<String>, PathRejection>,
    params: Result<Query<Vec<(String, String)>>, QueryRejection>,
    headers: HeaderMap,
) -> Response {
    let work = async {
        let caller = s.authenticate(&headers)?;
        let (org, params) = path_and_query(org, params)?;
        let req = rest_request(org, &params, &["from", "to", "actorId", "action"])?;
        let mut plan = s.authorize(&caller, &req, REST)?;
        plan.query.limit = usize::MAX;
        let permit = s
            .reads
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ApiError::unavailable("read permits", e))?;
        s.record_read(&caller, &plan, true).await?;
        let (tx, rx) = mpsc::channel(EXPORT_CHUNKS);
        let state = s.clone();
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let mut buf = Vec::with_capacity(EXPORT_CHUNK_BYTES + 4096);
            let r = state.readers.with(|spool| {
                spool.query_page_each(&plan.query, None, |e| {
                    let log = ApiAuditLog::from_body(&e.body, e.ts_ms)
                        .map_err(|r| ExportStop::Corrupt(format!("stored event {}: {r}", e.seq)))?;
                    serde_json::to_writer(&mut buf, &log).expect("a log serializes");
                    buf.push(b'\n');
                    if buf.len() >= EXPORT_CHUNK_BYTES {
                        let chunk = Bytes::from(std::mem::take(&mut buf));
                        tx.blocking_send(Ok(chunk))
                            .map_err(|_| ExportStop::Closed)?;
                    }
                    Ok(())
                })
            });
            let end = match r {
                Ok(()) if buf.is_empty() => return,
                Ok(()) => Ok(Bytes::from(buf)),
                Err(ExportStop::Closed) => return,
                Err(ExportStop::Spool(e)) => {
                    tracing::error!(error = %e, "query API: export failed");
                    Err(std::io::Error::other("export failed"))
                }
                Err(ExportStop::Corrupt(e)) => {
                    tracing::error!(error = %e, "query API: export met a corrupt event");
                    Err(std::io::Error::other("export failed"))
                }
            };
            // An error aborts the response, so the client sees a cut stream, not a short one.
            let _ = tx.blocking_send(end);
        });
        Ok((
            [(header::CONTENT_TYPE, "application/x-ndjson")],
            Body::new(ChannelBody(rx)),
        )
            .into_response())
    };
    s.within_timeout(work).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn query_strings() {
        let all = ["from", "to", "actorId", "action", "pageSize", "pageToken"];
        let r = rest_request("o".into(), &p(&[("pageSize", "5"), ("action", "x")]), &all).unwrap();
        assert_eq!((r.page_size, r.action.as_deref()), (Some(5), Some("x")));
        for (q, field) in [
            (p(&[("pageSize", "five")]), "pageSize"),
            (p(&[("pagesize", "5")]), "pagesize"),
            (p(&[("from", "a"), ("from", "b")]), "from"),
            (p(&[("pageSize", "00")]), "pageSize"),
            (p(&[("pageSize", "-0")]), "pageSize"),
            (p(&[("pageSize", "+5")]), "pageSize"),
            (p(&[("pageSize", "05")]), "pageSize"),
            (p(&[("pageSize", " 5")]), "pageSize"),
            (p(&[("pageSize", "")]), "pageSize"),
        ] {
            let e = rest_request("o".into(), &q, &all).unwrap_err();
            assert!(e.message.starts_with(&format!("{field}:")), "{e}");
        }
    }
}
