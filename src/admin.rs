//! The admin server, separate from the query API, for probes and scraping:
//!
//! - `GET /healthz`: the process is alive (always 200 while it can answer).
//! - `GET /readyz`: 200 when the spool is open and being written, the sources are
//!   running, and the forwarder is not stuck (CloudWatch has not refused our
//!   credentials or permissions for over a minute, no stream is stopped by the
//!   InvalidParameter breaker, every forwarder runs), and, with `api.store = "postgres"`,
//!   the installation store answers the query API; otherwise 503 naming each reason.
//! - `GET /metrics`: Prometheus text format. Totals come from the spool's own counters
//!   (they survive restarts), so they match `audit-relay spool stats`.
//!
//! It reads the spool through its own read-only connection, so a busy pipeline does
//! not stall a probe.

use crate::api::metrics::{ApiMetrics, BUCKETS};
use crate::forward::forwarder::ForwardHealth;
use crate::forward::retry::ErrorKind;
use crate::installation::ship::ShipHealth;
use crate::spool::Spool;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use std::fmt::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// How long the installation store may be out of reach before readiness says so.
const SHIP_DOWN_GRACE_MS: i64 = 10_000;
/// How long refused credentials may last before readiness fails.
const AUTH_FAILURE_GRACE_MS: i64 = 60_000;

/// What the pipeline reports about itself.
#[derive(Debug, Default)]
pub struct Health {
    /// The spool is being upgraded to this build's format (before anything else starts).
    pub migrating: AtomicBool,
    /// The spool writer is running.
    pub writer_running: AtomicBool,
    /// The sources are running (or finished their input).
    pub sources_running: AtomicBool,
    /// The spool is at `spool.max_bytes`; sources are paused.
    pub spool_full: Arc<AtomicBool>,
    /// One per forwarder (stream), once they exist.
    pub forward: Mutex<Vec<Arc<ForwardHealth>>>,
    /// The installation store's shipper, when `[postgres]` is set.
    pub ship: Mutex<Option<Arc<ShipHealth>>>,
    /// The query API's requests (all zero when it is not served).
    pub api: Arc<ApiMetrics>,
    /// Files matched by `source.paths` that cannot be opened (e.g. permission denied).
    pub source_unreadable_files: Arc<AtomicU64>,
    /// Checkpointed files not found at start (deleted or moved away while the relay was
    /// down): what they held after their checkpoint was not read.
    pub source_files_lost: Arc<AtomicU64>,
}

impl Health {
    /// Why the relay is not ready; empty when it is.
    pub fn not_ready_reasons(&self) -> Vec<String> {
        let mut r: Vec<String> = self
            .static_reasons()
            .into_iter()
            .map(String::from)
            .collect();
        if let Some(ship) = self.ship.lock().expect("health").as_ref() {
            r.extend(ship.not_ready(SHIP_DOWN_GRACE_MS));
        }
        if self.api.store.enabled.load(Ordering::Relaxed) {
            r.extend(self.api.store.not_ready());
        }
        r
    }

    fn static_reasons(&self) -> Vec<&'static str> {
        let mut r = Vec::new();
        if self.migrating.load(Ordering::Relaxed) {
            r.push("migrating");
        }
        if !self.writer_running.load(Ordering::Relaxed) {
            r.push("spool writer not running");
        }
        if !self.sources_running.load(Ordering::Relaxed) {
            r.push("sources not running");
        }
        if self.spool_full.load(Ordering::Relaxed) {
            r.push("spool full (spool.max_bytes): reading paused");
        }
        if self.source_unreadable_files.load(Ordering::Relaxed) > 0 {
            r.push("files matched by source.paths cannot be opened (see audit_relay_source_unreadable_files and the log)");
        }
        let forward = self.forward.lock().expect("health");
        if forward
            .iter()
            .any(|f| f.auth_failing_longer_than(AUTH_FAILURE_GRACE_MS))
        {
            r.push("CloudWatch has refused credentials or permissions for over a minute");
        }
        if forward
            .iter()
            .any(|f| f.stopped_since_ms.load(Ordering::Relaxed) != 0)
        {
            r.push("a CloudWatch stream refuses every event as invalid (cloudwatch.invalid_breaker_after): forwarding to it is stopped, events kept");
        }
        if forward.iter().any(|f| !f.running.load(Ordering::Relaxed)) {
            r.push("a forwarder is not running (restarting after it died)");
        }
        r
    }
}

#[derive(Clone)]
struct AdminState {
    health: Arc<Health>,
    spool_dir: PathBuf,
    cursors: Vec<String>,
    reader: Arc<Mutex<Option<Spool>>>,
}

/// The admin routes. `cursors` names the forwarders' cursors (for the lag).
pub fn router(health: Arc<Health>, spool_dir: PathBuf, cursors: Vec<String>) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState {
            health,
            spool_dir,
            cursors,
            reader: Arc::new(Mutex::new(None)),
        })
}

async fn readyz(State(s): State<AdminState>) -> Response {
    let reasons = s.health.not_ready_reasons();
    if reasons.is_empty() {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        let body = format!("not ready: {}\n", reasons.join("; "));
        (StatusCode::SERVICE_UNAVAILABLE, body).into_response()
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    let state = s.clone();
    let text = tokio::task::spawn_blocking(move || render(&state)).await;
    match text {
        Ok(Ok(t)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            t,
        )
            .into_response(),
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "metrics: cannot read the spool");
            (StatusCode::SERVICE_UNAVAILABLE, "spool not readable\n").into_response()
        }
        Err(_) => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

fn metric(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, v) in samples {
        let _ = writeln!(out, "{name}{labels} {v}");
    }
}

fn one(v: impl Into<f64>) -> Vec<(String, f64)> {
    vec![(String::new(), v.into())]
}

fn render(s: &AdminState) -> Result<String, crate::spool::SpoolError> {
    let mut guard = s.reader.lock().expect("metrics reader");
    if guard.is_none() {
        *guard = Some(Spool::open_read_only(&s.spool_dir)?);
    }
    let spool = guard.as_ref().expect("opened above");
    let st = spool.stats_for(&s.cursors)?;
    let rejected = spool.rejected_by_reason()?;
    let mut o = String::with_capacity(4096);
    let counters: [(&str, &str, u64); 8] = [
        (
            "audit_relay_events_purged_total",
            "Events deleted by retention (spool.retention_days).",
            st.purged,
        ),
        (
            "audit_relay_checkpoints_total",
            "Integrity checkpoints written to the spool.",
            st.checkpoints,
        ),
        (
            "audit_relay_records_read_total",
            "Records read from the sources.",
            st.read,
        ),
        (
            "audit_relay_records_skipped_total",
            "Records that were not audit events (ordinary logging).",
            st.skipped,
        ),
        (
            "audit_relay_events_stored_total",
            "Audit events stored in the spool.",
            st.events,
        ),
        (
            "audit_relay_events_duplicate_total",
            "Events not stored again because their id was already stored.",
            st.duplicates,
        ),
        (
            "audit_relay_records_quarantined_total",
            "Bad records kept in quarantine.",
            st.quarantined,
        ),
        (
            "audit_relay_events_forwarded_total",
            "Events accepted by CloudWatch (re-sends included).",
            st.forwarded,
        ),
    ];
    for (name, help, v) in counters {
        metric(&mut o, name, "counter", help, &one(v as f64));
    }
    let by_reason: Vec<(String, f64)> = rejected
        .iter()
        .map(|(r, n)| (format!("{{reason=\"{r}\"}}"), *n as f64))
        .collect();
    metric(
        &mut o,
        "audit_relay_events_rejected_total",
        "counter",
        "Events CloudWatch will not take, kept in the spool, by reason.",
        &by_reason,
    );
    metric(
        &mut o,
        "audit_relay_spool_events",
        "gauge",
        "Events in the spool.",
        &one(st.events.saturating_sub(st.purged) as f64),
    );
    metric(
        &mut o,
        "audit_relay_spool_bytes",
        "gauge",
        "Bytes of the spool on disk.",
        &one(st.bytes as f64),
    );
    metric(
        &mut o,
        "audit_relay_spool_last_seq",
        "gauge",
        "Sequence number of the newest event.",
        &one(st.last_seq as f64),
    );
    metric(
        &mut o,
        "audit_relay_forward_cursor_seq",
        "gauge",
        "Every event up to this sequence number is in CloudWatch or rejected.",
        &one(st.forwarded_seq as f64),
    );
    metric(
        &mut o,
        "audit_relay_forward_unforwarded_events",
        "gauge",
        "Events waiting to be forwarded.",
        &one(st.unforwarded as f64),
    );
    metric(
        &mut o,
        "audit_relay_forward_lag_seconds",
        "gauge",
        "Age of the oldest event not yet forwarded (0 when none).",
        &one(st.forward_lag_seconds as f64),
    );
    let forward = s.health.forward.lock().expect("health").clone();
    if !forward.is_empty() {
        let calls: u64 = forward
            .iter()
            .map(|f| f.calls.load(Ordering::Relaxed))
            .sum();
        metric(
            &mut o,
            "audit_relay_forward_calls_total",
            "counter",
            "PutLogEvents calls made.",
            &one(calls as f64),
        );
        let failures: Vec<(String, f64)> = ErrorKind::ALL
            .iter()
            .map(|k| {
                let n: u64 = forward
                    .iter()
                    .map(|f| f.failures[*k as usize].load(Ordering::Relaxed))
                    .sum();
                (format!("{{kind=\"{k}\"}}"), n as f64)
            })
            .collect();
        metric(
            &mut o,
            "audit_relay_forward_failures_total",
            "counter",
            "Failed CloudWatch calls and spool reads of the forwarder (each is retried), by error kind.",
            &failures,
        );
        let sum = |f: fn(&ForwardHealth) -> u64| forward.iter().map(|h| f(h)).sum::<u64>() as f64;
        metric(
            &mut o,
            "audit_relay_forward_streams_stopped",
            "gauge",
            "Streams stopped by the InvalidParameter breaker (events kept, probed until accepted).",
            &one(sum(|h| {
                (h.stopped_since_ms.load(Ordering::Relaxed) != 0) as u64
            })),
        );
        metric(
            &mut o,
            "audit_relay_forward_held_events",
            "gauge",
            "Events over 2 h in the future, held until CloudWatch takes them (not rejected).",
            &one(sum(|h| h.held.load(Ordering::Relaxed))),
        );
        metric(
            &mut o,
            "audit_relay_forward_breaker_trips_total",
            "counter",
            "Times the InvalidParameter breaker stopped a stream.",
            &one(sum(|h| h.breaker_trips.load(Ordering::Relaxed))),
        );
        metric(
            &mut o,
            "audit_relay_forward_restarts_total",
            "counter",
            "Times a forwarder that died (panic or error) was restarted.",
            &one(sum(|h| h.restarts.load(Ordering::Relaxed))),
        );
    }
    metric(
        &mut o,
        "audit_relay_source_unreadable_files",
        "gauge",
        "Files matched by source.paths that cannot be opened (e.g. permission denied).",
        &one(s.health.source_unreadable_files.load(Ordering::Relaxed) as f64),
    );
    metric(
        &mut o,
        "audit_relay_source_files_lost_total",
        "counter",
        "Checkpointed files not found at start (deleted, or moved out of source.paths and their directory, while the relay was down): their unread tail is lost.",
        &one(s.health.source_files_lost.load(Ordering::Relaxed) as f64),
    );
    render_api(&mut o, &s.health.api);
    if s.health.api.store.enabled.load(Ordering::Relaxed) {
        metric(
            &mut o,
            "audit_relay_api_store_up",
            "gauge",
            "1 while the installation store answers the query API (api.store = \"postgres\"), 0 while it is unreachable (the API answers 503).",
            &one(if s.health.api.store.up() { 1.0 } else { 0.0 }),
        );
    }
    let ready = s.health.not_ready_reasons().is_empty();
    metric(
        &mut o,
        "audit_relay_ready",
        "gauge",
        "1 when /readyz answers 200.",
        &one(if ready { 1.0 } else { 0.0 }),
    );
    metric(
        &mut o,
        "audit_relay_spool_full",
        "gauge",
        "1 while reading is paused: spool.max_bytes reached, or the disk is full or failing.",
        &one(if s.health.spool_full.load(Ordering::Relaxed) {
            1.0
        } else {
            0.0
        }),
    );
    Ok(o)
}

/// The query API's requests by route and status, and its latency histogram per route.
fn render_api(o: &mut String, m: &ApiMetrics) {
    let snap = m.snapshot();
    let requests: Vec<(String, f64)> = snap
        .iter()
        .flat_map(|r| {
            r.by_status.iter().map(|(status, n)| {
                (
                    format!("{{route=\"{}\",status=\"{status}\"}}", r.route.name()),
                    *n as f64,
                )
            })
        })
        .collect();
    metric(
        o,
        "audit_relay_api_requests_total",
        "counter",
        "Query API requests answered, by route and HTTP status.",
        &requests,
    );
    let name = "audit_relay_api_request_duration_seconds";
    let _ = writeln!(
        o,
        "# HELP {name} Query API request latency by route: until the response head, or for a stream until its end."
    );
    let _ = writeln!(o, "# TYPE {name} histogram");
    for r in &snap {
        let route = r.route.name();
        for (i, n) in r.cumulative.iter().enumerate() {
            let le = match BUCKETS.get(i) {
                Some(b) => b.to_string(),
                None => "+Inf".to_string(),
            };
            let _ = writeln!(o, "{name}_bucket{{route=\"{route}\",le=\"{le}\"}} {n}");
        }
        let _ = writeln!(o, "{name}_sum{{route=\"{route}\"}} {}", r.sum_seconds);
        let _ = writeln!(o, "{name}_count{{route=\"{route}\"}} {}", r.count);
    }
}
