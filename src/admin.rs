//! The admin server, separate from the query API, for probes and scraping:
//!
//! - `GET /healthz`: the process is alive (always 200 while it can answer).
//! - `GET /readyz`: 200 when the spool is open and being written, the sources are
//!   running, and the forwarder is not stuck (CloudWatch has not refused our
//!   credentials or permissions for over a minute, no stream is stopped by the
//!   InvalidParameter breaker, every forwarder runs), and, with `api.store = "postgres"`,
//!   the installation store answers the query API; otherwise 503 naming each reason.
//! - `GET /metrics`: Prometheus text format. Totals come from the spool's own counters
//!   (they survive restarts), so they match `audit-relay spool stats`. Every labelled
//!   counter is written for each of its known label values from the start, at 0, so
//!   that `increase()` sees its first event. Besides the relay's own figures: the
//!   spool's cap, the build, the reading lag of each file, the time of the last call
//!   CloudWatch accepted, and the standard `process_*` metrics (from `/proc/self`).
//!
//! It reads the spool through its own read-only connection, so a busy pipeline does
//! not stall a probe.

use crate::api::metrics::{ApiMetrics, Route, BUCKETS};
use crate::config::SpoolConfig;
use crate::forward::batch::RejectReason;
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
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

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

/// Rejection reasons, each a label value of `audit_relay_events_rejected_total` from
/// the start.
const REJECT_REASONS: [RejectReason; 4] = [
    RejectReason::TooOld,
    RejectReason::TooNew,
    RejectReason::Expired,
    RejectReason::Invalid,
];
/// How often the forwarders are looked at for an accepted call.
const ACCEPTED_SAMPLE: Duration = Duration::from_secs(1);

#[derive(Clone)]
struct AdminState {
    health: Arc<Health>,
    spool_dir: PathBuf,
    max_bytes: u64,
    cursors: Vec<String>,
    reader: Arc<Mutex<Option<Spool>>>,
    /// Unix ms when a call CloudWatch accepted was last seen; 0 before the first.
    last_accepted_ms: Arc<AtomicI64>,
}

/// The admin routes. `cursors` names the forwarders' cursors (for the lag). Must be
/// called within the runtime: it starts the task that notices accepted calls.
pub fn router(health: Arc<Health>, spool: &SpoolConfig, cursors: Vec<String>) -> Router {
    let last_accepted_ms = Arc::new(AtomicI64::new(0));
    tokio::spawn(watch_accepted(
        Arc::downgrade(&health),
        last_accepted_ms.clone(),
    ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(AdminState {
            health,
            spool_dir: spool.dir.clone(),
            max_bytes: spool.max_bytes.0,
            cursors,
            reader: Arc::new(Mutex::new(None)),
            last_accepted_ms,
        })
}

/// Notes the time when a forwarder's cursor moved after it made a call: CloudWatch
/// accepted one (the cursor moves only then; at startup it jumps to its saved place
/// before any call, which is not counted). Seen within [`ACCEPTED_SAMPLE`].
async fn watch_accepted(health: Weak<Health>, last: Arc<AtomicI64>) {
    let mut seen: Vec<(i64, u64)> = Vec::new();
    let mut tick = tokio::time::interval(ACCEPTED_SAMPLE);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(health) = health.upgrade() else {
            return;
        };
        let forward = health.forward.lock().expect("health").clone();
        seen.resize(forward.len(), (0, 0));
        for (f, (cursor, calls)) in forward.iter().zip(seen.iter_mut()) {
            let (c, n) = (
                f.cursor.load(Ordering::Acquire),
                f.calls.load(Ordering::Relaxed),
            );
            if c > *cursor && n > *calls {
                last.store(now_ms(), Ordering::Relaxed);
            }
            (*cursor, *calls) = (c, n);
        }
    }
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
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
    let mut reasons: std::collections::BTreeMap<String, u64> = REJECT_REASONS
        .iter()
        .map(|r| (r.as_str().to_string(), 0))
        .collect();
    reasons.extend(rejected);
    let by_reason: Vec<(String, f64)> = reasons
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
        "audit_relay_spool_max_bytes",
        "gauge",
        "The spool's cap (spool.max_bytes): at it, reading pauses.",
        &one(s.max_bytes as f64),
    );
    metric(
        &mut o,
        "audit_relay_build_info",
        "gauge",
        "The relay's build: 1, with its version as a label.",
        &[(
            format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
            1.0,
        )],
    );
    let lag: Vec<(String, f64)> = source_lag(spool)?
        .into_iter()
        .map(|(path, behind)| {
            (
                format!("{{path=\"{}\"}}", label_value(&path)),
                behind as f64,
            )
        })
        .collect();
    metric(
        &mut o,
        "audit_relay_source_lag_bytes",
        "gauge",
        "Bytes of each file not yet read and stored (its size less its stored offset), for files with a stored offset still at their path.",
        &lag,
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
        metric(
            &mut o,
            "audit_relay_forward_last_accepted_timestamp_seconds",
            "gauge",
            "Unix time when a PutLogEvents call CloudWatch accepted was last seen (within 1 s); 0 before the first of this run.",
            &one(s.last_accepted_ms.load(Ordering::Relaxed) as f64 / 1000.0),
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
    if let Some(ship) = s.health.ship.lock().expect("health").clone() {
        render_ship(&mut o, &ship);
    }
    process::render(&mut o);
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

/// A label value with `\\`, `"` and newlines escaped.
fn label_value(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// `(path, bytes not yet read)` of each file with a stored offset that is still at its
/// path (same device and inode).
fn source_lag(spool: &Spool) -> Result<Vec<(String, u64)>, crate::spool::SpoolError> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for c in spool.checkpoints()? {
        let Ok(m) = std::fs::metadata(&c.path) else {
            continue;
        };
        if m.dev() != c.file.dev || m.ino() != c.file.ino {
            continue;
        }
        let read = c.resume.offset.max(c.resume.replay_until);
        out.push((c.path, m.len().saturating_sub(read)));
    }
    out.sort();
    Ok(out)
}

/// The query API's requests by route and status, and its latency histogram per route.
fn render_api(o: &mut String, m: &ApiMetrics) {
    let snap = m.snapshot();
    // By status class, every route and class from the start (at 0).
    let classes: Vec<(String, f64)> = snap
        .iter()
        .flat_map(|r| {
            (2..=5u16).map(move |class| {
                let n: u64 = r
                    .by_status
                    .iter()
                    .filter(|(status, _)| status / 100 == class)
                    .map(|(_, n)| n)
                    .sum();
                (
                    format!("{{route=\"{}\",class=\"{class}xx\"}}", r.route.name()),
                    n as f64,
                )
            })
        })
        .collect();
    debug_assert_eq!(classes.len(), Route::ALL.len() * 4);
    metric(
        o,
        "audit_relay_api_responses_total",
        "counter",
        "Query API responses by route and status class (2xx to 5xx), each from 0.",
        &classes,
    );
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

/// The installation store's shipper: rows shipped, lag, transaction times, errors by class.
fn render_ship(o: &mut String, h: &ShipHealth) {
    use crate::forward::retry::PgClass;
    use crate::installation::ship::TXN_BUCKETS_MS;
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed) as f64;
    let cursor = h.cursor.load(Ordering::Relaxed);
    let end = h.spool_seq.load(Ordering::Relaxed).max(cursor);
    let oldest = h.oldest_unshipped_ms.load(Ordering::Relaxed);
    let lag_s = if oldest == 0 {
        0.0
    } else {
        ((crate::spool::now_ms() - oldest).max(0) / 1000) as f64
    };
    let gauges: [(&str, &str, f64); 4] = [
        (
            "audit_relay_postgres_connected",
            "1 while the shipper is connected to the installation store and shipping.",
            if h.connected.load(Ordering::Relaxed) {
                1.0
            } else {
                0.0
            },
        ),
        (
            "audit_relay_postgres_cursor_seq",
            "The installation store's cursor for this relay: every row up to it is in PostgreSQL.",
            cursor as f64,
        ),
        (
            "audit_relay_postgres_lag_rows",
            "Rows of the spool not in the installation store yet.",
            (end - cursor) as f64,
        ),
        (
            "audit_relay_postgres_lag_seconds",
            "Age of the oldest row not in the installation store yet (0 when caught up).",
            lag_s,
        ),
    ];
    for (name, help, v) in gauges {
        metric(o, name, "gauge", help, &one(v));
    }
    metric(
        o,
        "audit_relay_postgres_shipped_rows_total",
        "counter",
        "Rows shipped to the installation store (events, checkpoints, ledger rows).",
        &one(load(&h.shipped_rows)),
    );
    metric(
        o,
        "audit_relay_postgres_duplicate_rows_total",
        "counter",
        "Rows whose (timestamp, id) another relay had already stored (kept in audit_duplicates).",
        &one(load(&h.duplicates)),
    );
    metric(
        o,
        "audit_relay_postgres_partitions_dropped_total",
        "counter",
        "Day partitions this relay's retention dropped (postgres.retention_days).",
        &one(load(&h.partitions_dropped)),
    );
    let by_class: Vec<(String, f64)> = PgClass::ALL
        .iter()
        .enumerate()
        .map(|(i, c)| (format!("{{class=\"{}\"}}", c.label()), load(&h.errors[i])))
        .collect();
    metric(
        o,
        "audit_relay_postgres_errors_total",
        "counter",
        "Failed operations on the installation store, by class (each is retried).",
        &by_class,
    );
    let name = "audit_relay_postgres_txn_seconds";
    let _ = writeln!(o, "# HELP {name} Time of each shipping transaction, BEGIN to COMMIT (one observation per transaction).");
    let _ = writeln!(o, "# TYPE {name} histogram");
    let mut total = 0u64;
    for (i, b) in TXN_BUCKETS_MS.iter().enumerate() {
        total += h.txn_buckets[i].load(Ordering::Relaxed);
        let _ = writeln!(o, "{name}_bucket{{le=\"{}\"}} {total}", b / 1000.0);
    }
    total += h.txn_buckets[TXN_BUCKETS_MS.len()].load(Ordering::Relaxed);
    let _ = writeln!(o, "{name}_bucket{{le=\"+Inf\"}} {total}");
    let _ = writeln!(
        o,
        "{name}_sum {}",
        h.txn_micros_sum.load(Ordering::Relaxed) as f64 / 1e6
    );
    let _ = writeln!(o, "{name}_count {total}");
}

/// The standard `process_*` metrics, read from `/proc/self` (Linux); a figure that
/// cannot be read is left out.
mod process {
    use super::{metric, one};

    /// Clock ticks per second of `/proc/self/stat` (USER_HZ: 100 on every Linux ABI).
    const TICKS: f64 = 100.0;

    pub(super) fn render(o: &mut String) {
        let stat = std::fs::read_to_string("/proc/self/stat").ok();
        // Fields after the command name, which is in parentheses and may hold spaces.
        let fields: Vec<&str> = stat
            .as_deref()
            .and_then(|s| s.rsplit_once(')'))
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        // Field n of proc(5) is fields[n - 3].
        let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<f64>().ok());
        if let (Some(utime), Some(stime)) = (field(14), field(15)) {
            metric(
                o,
                "process_cpu_seconds_total",
                "counter",
                "User and system CPU time spent, in seconds.",
                &one((utime + stime) / TICKS),
            );
        }
        if let Some(rss) = status_kib("VmRSS:") {
            metric(
                o,
                "process_resident_memory_bytes",
                "gauge",
                "Resident memory size in bytes.",
                &one(rss * 1024.0),
            );
        }
        if let Some(vm) = status_kib("VmSize:") {
            metric(
                o,
                "process_virtual_memory_bytes",
                "gauge",
                "Virtual memory size in bytes.",
                &one(vm * 1024.0),
            );
        }
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            metric(
                o,
                "process_open_fds",
                "gauge",
                "Open file descriptors.",
                &one(fds.count().saturating_sub(1) as f64),
            );
        }
        if let Some(max) = max_fds() {
            metric(
                o,
                "process_max_fds",
                "gauge",
                "The most file descriptors the process may open.",
                &one(max),
            );
        }
        if let (Some(start), Some(boot)) = (field(22), boot_time()) {
            metric(
                o,
                "process_start_time_seconds",
                "gauge",
                "Start time of the process since the Unix epoch, in seconds.",
                &one(boot + start / TICKS),
            );
        }
    }

    fn status_kib(key: &str) -> Option<f64> {
        let s = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = s.lines().find(|l| l.starts_with(key))?;
        line[key.len()..].split_whitespace().next()?.parse().ok()
    }

    fn max_fds() -> Option<f64> {
        let s = std::fs::read_to_string("/proc/self/limits").ok()?;
        let line = s.lines().find(|l| l.starts_with("Max open files"))?;
        line["Max open files".len()..]
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    }

    fn boot_time() -> Option<f64> {
        let s = std::fs::read_to_string("/proc/stat").ok()?;
        s.lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()
    }
}
