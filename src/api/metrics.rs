//! The query API's request counters and latency histogram: plain atomics, written by a
//! layer around every route ([`track`]) and rendered by the admin server's `/metrics`
//! (STYLE: metrics through a narrow interface, no metrics crate in core modules).
//!
//! A request is counted once its response head is ready; its duration runs until then,
//! except for a streamed body (the export), whose duration runs until the stream ends or
//! the client goes away.

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use http_body::{Body as _, Frame, SizeHint};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

/// Upper bounds (seconds) of the latency histogram's buckets; `+Inf` follows.
pub const BUCKETS: [f64; 11] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];

/// The routes, by fixed name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    ConnectList = 0,
    RestList = 1,
    RestExport = 2,
    /// Anything else: unknown paths, wrong methods.
    Other = 3,
}

impl Route {
    pub const ALL: [Route; 4] = [
        Route::ConnectList,
        Route::RestList,
        Route::RestExport,
        Route::Other,
    ];

    /// The `route` label.
    pub fn name(self) -> &'static str {
        match self {
            Route::ConnectList => "connect_list",
            Route::RestList => "rest_list",
            Route::RestExport => "rest_export",
            Route::Other => "other",
        }
    }

    /// The route of a request, from the path pattern the router matched and the method.
    pub fn of(method: &Method, matched: Option<&str>) -> Route {
        match (method, matched) {
            (&Method::POST, Some("/gitpod.v1.AuditLogService/ListAuditLogs")) => Route::ConnectList,
            (&Method::GET, Some("/v1/organizations/{organization_id}/audit-logs")) => {
                Route::RestList
            }
            (&Method::GET, Some("/v1/organizations/{organization_id}/audit-logs/export")) => {
                Route::RestExport
            }
            _ => Route::Other,
        }
    }
}

/// Status codes counted one by one: 100..=599 (hyper sends no others).
const STATUSES: usize = 500;

/// One route's counters.
struct RouteMetrics {
    /// Requests by status code - 100.
    by_status: Box<[AtomicU64]>,
    /// Non-cumulative bucket counts; the last is `+Inf`.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Total duration in nanoseconds.
    sum_ns: AtomicU64,
    count: AtomicU64,
}

impl Default for RouteMetrics {
    fn default() -> Self {
        RouteMetrics {
            by_status: (0..STATUSES).map(|_| AtomicU64::new(0)).collect(),
            buckets: Default::default(),
            sum_ns: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }
}

/// What the API reports about its requests, and about the installation store it reads
/// with `api.store = "postgres"` (for `/readyz`).
#[derive(Default)]
pub struct ApiMetrics {
    routes: [RouteMetrics; 4],
    /// Whether the installation store answers (unused with `api.store = "spool"`).
    pub store: Arc<super::store::StoreHealth>,
}

impl std::fmt::Debug for ApiMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiMetrics").finish_non_exhaustive()
    }
}

/// One route's figures, for rendering.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSnapshot {
    pub route: Route,
    /// (status, requests), only statuses seen, ascending.
    pub by_status: Vec<(u16, u64)>,
    /// Cumulative counts for each of [`BUCKETS`], then `+Inf` (equal to `count`).
    pub cumulative: Vec<u64>,
    pub sum_seconds: f64,
    pub count: u64,
}

impl ApiMetrics {
    /// Counts a request's status.
    pub fn count_status(&self, route: Route, status: u16) {
        let i = (status.clamp(100, 599) - 100) as usize;
        self.routes[route as usize].by_status[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Records a request's duration.
    pub fn observe(&self, route: Route, seconds: f64) {
        let r = &self.routes[route as usize];
        let b = BUCKETS
            .iter()
            .position(|le| seconds <= *le)
            .unwrap_or(BUCKETS.len());
        r.buckets[b].fetch_add(1, Ordering::Relaxed);
        r.sum_ns
            .fetch_add((seconds * 1e9) as u64, Ordering::Relaxed);
        r.count.fetch_add(1, Ordering::Release);
    }

    /// Every route's figures. Under concurrent requests a snapshot may be a request
    /// apart between its parts; the `+Inf` bucket is `count` by construction.
    pub fn snapshot(&self) -> Vec<RouteSnapshot> {
        Route::ALL
            .iter()
            .map(|&route| {
                let r = &self.routes[route as usize];
                let count = r.count.load(Ordering::Acquire);
                let by_status = r
                    .by_status
                    .iter()
                    .enumerate()
                    .filter_map(|(i, n)| {
                        let n = n.load(Ordering::Relaxed);
                        (n > 0).then_some((i as u16 + 100, n))
                    })
                    .collect();
                let mut acc = 0;
                let mut cumulative: Vec<u64> = r.buckets[..BUCKETS.len()]
                    .iter()
                    .map(|b| {
                        acc += b.load(Ordering::Relaxed);
                        acc.min(count)
                    })
                    .collect();
                cumulative.push(count);
                RouteSnapshot {
                    route,
                    by_status,
                    cumulative,
                    sum_seconds: r.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
                    count,
                }
            })
            .collect()
    }
}

/// The layer's function: counts every request by route and status, and times it.
pub async fn track(State(m): State<Arc<ApiMetrics>>, req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = Route::of(
        req.method(),
        req.extensions().get::<MatchedPath>().map(|p| p.as_str()),
    );
    let resp = next.run(req).await;
    m.count_status(route, resp.status().as_u16());
    if resp.body().size_hint().exact().is_some() {
        m.observe(route, start.elapsed().as_secs_f64());
        return resp;
    }
    // A stream: timed until it ends.
    resp.map(|body| {
        Body::new(Timed {
            inner: body,
            done: Some((m, route, start)),
        })
    })
}

/// A streamed body that records its duration when it ends or is dropped.
struct Timed {
    inner: Body,
    done: Option<(Arc<ApiMetrics>, Route, Instant)>,
}

impl Timed {
    fn finish(&mut self) {
        if let Some((m, route, start)) = self.done.take() {
            m.observe(route, start.elapsed().as_secs_f64());
        }
    }
}

impl Drop for Timed {
    fn drop(&mut self) {
        self.finish();
    }
}

impl http_body::Body for Timed {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let r = Pin::new(&mut self.inner).poll_frame(cx);
        if matches!(r, Poll::Ready(None) | Poll::Ready(Some(Err(_)))) {
            self.finish();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_cumulative_and_end_in_the_count() {
        let m = ApiMetrics::default();
        for s in [0.0005, 0.001, 0.003, 0.2, 7.0] {
            m.observe(Route::RestList, s);
        }
        m.count_status(Route::RestList, 200);
        m.count_status(Route::RestList, 200);
        m.count_status(Route::RestList, 403);
        let s = &m.snapshot()[Route::RestList as usize];
        assert_eq!(s.route, Route::RestList);
        assert_eq!(s.by_status, vec![(200, 2), (403, 1)]);
        assert_eq!(s.cumulative, vec![2, 2, 3, 3, 3, 3, 3, 4, 4, 4, 4, 5]);
        assert_eq!(s.count, 5);
        assert!((s.sum_seconds - 7.2045).abs() < 1e-6);
        let o = &m.snapshot()[Route::Other as usize];
        assert_eq!((o.count, o.by_status.len()), (0, 0));
    }

    #[test]
    fn routes_by_pattern_and_method() {
        let c = Some("/gitpod.v1.AuditLogService/ListAuditLogs");
        assert_eq!(Route::of(&Method::POST, c), Route::ConnectList);
        assert_eq!(Route::of(&Method::GET, c), Route::Other);
        assert_eq!(Route::of(&Method::GET, None), Route::Other);
        let e = Some("/v1/organizations/{organization_id}/audit-logs/export");
        assert_eq!(Route::of(&Method::GET, e), Route::RestExport);
    }
}
