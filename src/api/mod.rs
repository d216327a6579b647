//! The query API, on `api.listen`, separate from the admin endpoints:
//!
//! - `POST /gitpod.v1.AuditLogService/ListAuditLogs` — Connect unary, JSON or protobuf
//!   ([`connect`]);
//! - `GET /v1/organizations/{organizationId}/audit-logs?from&to&actorId&action&pageSize&pageToken`
//!   — the same page as JSON ([`rest`]);
//! - `GET /v1/organizations/{organizationId}/audit-logs/export?from&to&actorId&action` —
//!   NDJSON, streamed in short keyset chunks ([`export`]).
//!
//! Reads come from this relay's spool, or with `api.store = "postgres"` from the
//! installation store that every relay ships to ([`store`]: one seam, the handlers do
//! not know which). Every call shows a bearer token ([`auth`]); only an organization's
//! owners, and operator tokens that list it, may read it. Pages are keyset cursors
//! signed with a key kept in the store that is read ([`token`]). Every successful read
//! appends its own audit event ([`audit`]) through the spool writer's channel (also
//! with the installation store: the shipper ships it) before it is answered. Errors are
//! Connect errors ([`error`]). Every request is counted and timed ([`metrics`], rendered
//! by the admin server); with `api.tls_cert` and `api.tls_key` the API is served over TLS
//! ([`tls`]). Both the API and the admin port are served by [`server`], which caps
//! connections and closes slow heads, idle connections and stalled writes. The JWT
//! keys, operator tokens and certificate are replaced while it runs on SIGHUP
//! ([`reload`]).
//!
//! With `api.ui = true` the same port also serves the read-only viewer at `/ui/`
//! ([`ui`]), which calls these endpoints with the caller's own token.
//!
//! Organization and actor ids are parsed as UUIDs at the edge ([`request`]) and used in
//! their canonical form (lowercase, hyphenated) everywhere after: scopes, roles, the
//! query, page tokens and the read's own audit event.

pub mod audit;
pub mod auth;
pub mod connect;
pub mod error;
pub mod export;
pub mod metrics;
pub mod readers;
pub mod reload;
pub mod request;
pub mod rest;
pub mod server;
pub mod store;
pub mod tls;
pub mod token;
pub mod ui;

/// The messages of `proto/gitpod/v1/`, compiled by `build.rs`.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/gitpod.v1.rs"));
}

use crate::config::api::{ApiConfig, Store};
use crate::config::postgres::PostgresConfig;
use crate::config::SpoolConfig;
use crate::event::{write_api_json, ApiAuditLog};
use crate::query::Query;
use crate::spool::{AppendBatch, EventInbox, InboxRefusal, Spool};
use anyhow::Context;
use auth::{Authenticator, Caller, SharedAuthenticator};
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use error::{ApiError, Code};
use metrics::ApiMetrics;
use request::{FieldNames, ListRequest, PagePlan};
use std::future::Future;
use std::ops::Deref;
use std::sync::mpsc::SyncSender;
use std::sync::Arc;
use std::time::Duration;
use store::ReadStore;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Key in the spool's `meta` table of the page-token HMAC key.
pub const PAGE_TOKEN_KEY: &str = "api_page_token_key";
/// Spool reads running at once (an export holds one only while it reads a chunk).
const CONCURRENT_READS: usize = 16;
/// Threads reading the spool for the API, each with its own connection: enough to keep
/// the cores busy and a few reads waiting on the disk at once.
fn reader_threads() -> usize {
    std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 8)
        * 2
}

/// One page of a ListAuditLogs answer: its events as stored, turned into the API's
/// form by the codec that answers (the JSON one writes it from the stored text).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// Newest first.
    pub rows: Vec<store::Row>,
    /// Empty on the last page.
    pub next_token: String,
    /// The store read (named in the error of a corrupt row).
    pub store: &'static str,
}

impl Page {
    fn corrupt(&self, row: &store::Row, why: String) -> ApiError {
        ApiError::internal(
            &format!("reading the {}", self.store),
            format!("stored event {} is corrupt: {why}", row.tiebreak),
        )
    }

    /// Each event in the API's form.
    pub fn logs(&self) -> Result<Vec<ApiAuditLog>, ApiError> {
        self.rows
            .iter()
            .map(|r| ApiAuditLog::from_body(&r.body, r.ts_ms).map_err(|w| self.corrupt(r, w)))
            .collect()
    }

    /// Appends each event's JSON form to `out`, separated by commas.
    pub fn write_json_logs(&self, out: &mut Vec<u8>) -> Result<(), ApiError> {
        for (i, r) in self.rows.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_api_json(&r.body, r.ts_ms, out).map_err(|w| self.corrupt(r, w))?;
        }
        Ok(())
    }
}

pub struct Inner {
    /// Replaced whole on SIGHUP ([`reload`]).
    auth: SharedAuthenticator,
    /// Where reads come from.
    store: Arc<ReadStore>,
    audit: AuditSink,
    reads: Arc<Semaphore>,
    /// Running exports, in all and per caller.
    exports: Arc<export::ExportSlots>,
    /// How long an export waits for its client to take the next piece.
    export_stall_timeout: Duration,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    /// Requests by route and status, and their latency (rendered on the admin `/metrics`).
    pub metrics: Arc<ApiMetrics>,
    /// `api.ui`: serve the viewer at `/ui/`.
    ui: bool,
    /// `api.ui_token_cookie` (only with `api.ui`).
    ui_token_cookie: Option<String>,
}

/// What every handler shares.
#[derive(Clone)]
pub struct ApiState(Arc<Inner>);

impl Deref for ApiState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl ApiState {
    /// `store` is where reads come from; `audit` is the spool writer's channel;
    /// `metrics` counts the requests.
    pub fn new(
        config: &ApiConfig,
        store: ReadStore,
        audit: AuditSink,
        metrics: Arc<ApiMetrics>,
    ) -> Result<ApiState, String> {
        Ok(ApiState(Arc::new(Inner {
            auth: SharedAuthenticator::new(Authenticator::from_config(config)?),
            store: Arc::new(store),
            audit,
            reads: Arc::new(Semaphore::new(CONCURRENT_READS)),
            exports: export::ExportSlots::new(config.max_exports, config.max_exports_per_caller),
            export_stall_timeout: config.export_stall_timeout.0,
            max_body_bytes: config.max_body_bytes.0 as usize,
            request_timeout: config.request_timeout.0,
            metrics,
            ui: config.ui,
            ui_token_cookie: config.ui_token_cookie.clone().filter(|_| config.ui),
        })))
    }

    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let h = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        // The viewer's cookie, only without `Authorization` and with the viewer's header.
        let from_cookie = match (h, &self.ui_token_cookie) {
            (None, Some(name)) if headers.contains_key(ui::UI_HEADER) => {
                ui::cookie(headers, name).map(|t| format!("Bearer {t}"))
            }
            _ => None,
        };
        let h = h.or(from_cookie.as_deref());
        self.auth
            .current()
            .authenticate(h, (now_ms() / 1000).max(0) as u64)
    }

    /// Runs a handler's work within `api.request_timeout`.
    pub async fn within_timeout(
        &self,
        work: impl Future<Output = Result<Response, ApiError>>,
    ) -> Response {
        match tokio::time::timeout(self.request_timeout, work).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => e.into_response(),
            Err(_) => {
                ApiError::new(Code::DeadlineExceeded, "the request took too long").into_response()
            }
        }
    }

    /// Validates and authorizes a request: 400, then 403 (503 when the installation
    /// store holding the page-token key cannot be read).
    pub async fn authorize(
        &self,
        caller: &Caller,
        req: &ListRequest,
        names: FieldNames,
    ) -> Result<PagePlan, ApiError> {
        let key = self.store.key().await?;
        let plan = request::plan(req, now_ms(), &key, names)?;
        if !caller.may_read(&plan.query.organization_id) {
            return Err(ApiError::permission_denied());
        }
        Ok(plan)
    }

    /// One page for `caller`; the read is audited before it is answered.
    pub async fn list(
        &self,
        caller: &Caller,
        req: &ListRequest,
        names: FieldNames,
    ) -> Result<Page, ApiError> {
        let plan = self.authorize(caller, req, names).await?;
        let page = self.read_page(&plan).await?;
        self.record_read(caller, &plan, false).await?;
        Ok(page)
    }

    /// Up to `limit` events of `q` strictly older than `before`, under a read permit
    /// (a spool read keeps it until its blocking read ends, even if the request is
    /// dropped meanwhile).
    pub async fn read_rows(
        &self,
        q: &Query,
        before: Option<(i64, i64)>,
        limit: usize,
    ) -> Result<Vec<store::Row>, ApiError> {
        let permit = self
            .reads
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ApiError::unavailable("read permits", e))?;
        self.store.chunk(permit, q, before, limit).await
    }

    async fn read_page(&self, plan: &PagePlan) -> Result<Page, ApiError> {
        let size = plan.query.limit;
        // One more than the page tells whether there is a next page.
        let mut rows = self.read_rows(&plan.query, plan.before, size + 1).await?;
        let more = rows.len() > size;
        rows.truncate(size);
        let next_token = match (more, rows.last()) {
            (true, Some(last)) => {
                let key = self.store.key().await?;
                plan.next_token(&key, last.ts_ms, last.tiebreak)
            }
            _ => String::new(),
        };
        Ok(Page {
            rows,
            next_token,
            store: self.store.name(),
        })
    }

    /// Appends the read's own audit event through the spool writer.
    pub async fn record_read(
        &self,
        caller: &Caller,
        plan: &PagePlan,
        export: bool,
    ) -> Result<(), ApiError> {
        let ev = audit::event(caller, plan, export, uuid::Uuid::new_v4(), now_ms())
            .map_err(|e| ApiError::internal("building the read's audit event", e))?;
        let stopped =
            || ApiError::unavailable("recording the read", "the spool writer has stopped");
        // Left for the writer's next group commit; when its inbox is full, through its
        // channel, waiting for room off the runtime's threads.
        let ev = match self.audit.inbox.push(ev) {
            Ok(()) => return Ok(()),
            Err(InboxRefusal::Closed) => return Err(stopped()),
            Err(InboxRefusal::Full(ev)) => *ev,
        };
        let batch = AppendBatch {
            events: vec![ev],
            read: 0,
            ..Default::default()
        };
        let tx = self.audit.channel.clone();
        tokio::task::spawn_blocking(move || tx.send(batch))
            .await
            .map_err(|e| ApiError::internal("audit sender", e))?
            .map_err(|_| stopped())
    }
}

/// Where the API's reads record their own audit events: the spool writer's inbox, and
/// its channel when the inbox is full.
#[derive(Debug, Clone)]
pub struct AuditSink {
    pub inbox: EventInbox,
    pub channel: SyncSender<AppendBatch>,
}

/// The API's routes, each request counted and timed in `state.metrics`.
/// What `check-config` checks beyond the TOML: that the key files of `[api]` can be
/// read and parsed, as `run` will need them. Each problem names its key.
pub fn check_files(c: &ApiConfig) -> Vec<String> {
    let mut problems = Vec::new();
    if let Err(e) = auth::Authenticator::from_config(c) {
        problems.push(e);
    }
    if let (Some(cert), Some(key)) = (&c.tls_cert, &c.tls_key) {
        if let Err(e) = tls::server_config(cert, key) {
            problems.push(format!("{e:#}"));
        }
    }
    problems
}

pub fn router(state: ApiState) -> Router {
    let metrics = state.metrics.clone();
    let ui = if state.ui {
        ui::routes()
    } else {
        Router::new()
    };
    Router::new()
        .merge(ui)
        .route(
            "/gitpod.v1.AuditLogService/ListAuditLogs",
            post(connect::list_audit_logs),
        )
        .route(
            "/v1/organizations/{organization_id}/audit-logs",
            get(rest::list),
        )
        .route(
            "/v1/organizations/{organization_id}/audit-logs/export",
            get(export::export),
        )
        .fallback(|| async { ApiError::new(Code::NotFound, "no such endpoint").into_response() })
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            metrics::track,
        ))
        .with_state(state)
}

/// Binds `api.listen` and serves until `stop` (over TLS with `api.tls_cert` and
/// `api.tls_key`). Reads come from the spool (created if needed, for its page-token
/// key) or, with `api.store = "postgres"`, from the installation store of `postgres`
/// (probed until `stop`, for `/readyz`); `audit` is the spool writer's channel;
/// `metrics` counts the requests. The [`reload::Reloader`] replaces the keys, tokens
/// and certificate while it runs.
pub async fn start(
    config: &ApiConfig,
    spool: &SpoolConfig,
    postgres: Option<&PostgresConfig>,
    audit: AuditSink,
    stop: CancellationToken,
    metrics: Arc<ApiMetrics>,
) -> anyhow::Result<(JoinHandle<()>, reload::Reloader)> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(tls::shared(tls::server_config(cert, key)?)),
        _ => None,
    };
    let store = match (config.store, postgres) {
        (Store::Spool, _) => {
            let s = Spool::open(&spool.dir, spool.durability, 1 << 20)
                .with_context(|| format!("opening the spool in {}", spool.dir.display()))?;
            let key = s.meta_secret(PAGE_TOKEN_KEY, || {
                let mut k = vec![0u8; 32];
                getrandom::getrandom(&mut k).expect("the OS random source");
                k
            })?;
            ReadStore::Spool {
                readers: readers::Readers::start(spool.dir.clone(), reader_threads())
                    .context("starting the API's spool reader threads")?,
                key,
            }
        }
        (Store::Postgres, None) => {
            anyhow::bail!("api.store: \"postgres\" needs a [postgres] section (the installation store to answer from)")
        }
        (Store::Postgres, Some(pg)) => {
            let reader = Arc::new(
                crate::installation::query::StoreReader::new(pg)
                    .map_err(|e| anyhow::anyhow!("api.store = \"postgres\": {e}"))?,
            );
            let health = metrics.store.clone();
            health
                .enabled
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tokio::spawn(store::probe(reader.clone(), health.clone(), stop.clone()));
            ReadStore::Postgres { reader, health }
        }
    };
    let store_name = store.name();
    let state = ApiState::new(config, store, audit, metrics).map_err(anyhow::Error::msg)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("api.listen: cannot listen on {}", config.listen))?;
    tracing::info!(
        addr = %listener.local_addr()?,
        tls = tls.is_some(),
        store = store_name,
        "query API listening"
    );
    let reloader = reload::Reloader::new(state.auth.clone(), tls.clone());
    let app = router(state);
    let limits = server::Limits {
        max_connections: config.max_connections,
        header_read_timeout: config.header_read_timeout.0,
        idle_timeout: config.idle_timeout.0,
        write_stall: config.export_stall_timeout.0,
    };
    let server = tokio::spawn(async move {
        match tls {
            None => server::serve(listener, app, limits, stop, "api").await,
            Some(tls) => match tls::TlsListener::new(listener, tls, stop.clone()) {
                Ok(l) => server::serve(l, app, limits, stop, "api").await,
                Err(e) => tracing::error!(error = %e, "query API server failed"),
            },
        }
    });
    Ok((server, reloader))
}

#[cfg(test)]
mod future_size {
    //! A request's future is moved several times on its way through axum, tower and
    //! hyper, each move a copy. Inline, the PostgreSQL client's futures made every
    //! handler's future ~60 KiB, the spool's requests included (~3 % of the relay's CPU
    //! per page, `docs/benchmarks.md`, session 11); boxed where they are awaited, each
    //! handler's stays small.

    use axum::extract::{Path, Query, State};
    use axum::http::HeaderMap;

    /// Largest future a handler may have.
    const MAX: usize = 8 << 10;

    fn size3<A, B, C, F: Fn(A, B, C) -> Fut, Fut>(_: F) -> usize {
        std::mem::size_of::<Fut>()
    }

    fn size4<A, B, C, D, F: Fn(A, B, C, D) -> Fut, Fut>(_: F) -> usize {
        std::mem::size_of::<Fut>()
    }

    type S = State<super::ApiState>;
    type P = Result<Path<String>, axum::extract::rejection::PathRejection>;
    type Q = Result<Query<Vec<(String, String)>>, axum::extract::rejection::QueryRejection>;

    #[test]
    fn every_handler_future_is_small() {
        let sizes = [
            (
                "ListAuditLogs",
                size3::<S, HeaderMap, axum::body::Body, _, _>(super::connect::list_audit_logs),
            ),
            (
                "REST list",
                size4::<S, P, Q, HeaderMap, _, _>(super::rest::list),
            ),
            (
                "export",
                size4::<S, P, Q, HeaderMap, _, _>(super::export::export),
            ),
        ];
        for (name, size) in sizes {
            assert!(size <= MAX, "{name}: a future of {size} bytes");
        }
    }
}
