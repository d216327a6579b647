//! Query API benchmark: ListAuditLogs latency under concurrency, and export throughput,
//! against the real binary.
//!
//! ```text
//! cargo bench --bench api -- [--events N] [--clients C] [--requests R] [--durability fsync|os] [--keep]
//!     [--store spool|postgres]
//! ```
//!
//! Fills a fresh spool through the library with N events (default 10,000,000) over 500
//! organizations spread over the 90 days before now, starts `audit-relay run` with
//! `[api]` (an operator token for `*`), then:
//!
//! - with C (default 50) client threads, each on its own keep-alive HTTP/1.1
//!   connection, times R (default 3,000) Connect JSON ListAuditLogs calls for one
//!   organization, one week, page size 100: the first page, then a deep page (the page
//!   reached by following `nextToken` up to 20 times), and prints p50/p99/max (the
//!   first page also with one client alone, for the service time without queueing);
//! - exports that organization's 90 days as NDJSON (5 times) and prints events/s and
//!   the relay's peak RSS (VmHWM) before and after the exports.
//!
//! `--durability` is the relay's `spool.durability` (default `fsync`, as in production):
//! every read appends its own audit event, committed by the spool writer.
//! `BENCH_DIR` (default `target/bench-api`) holds the spool; `--keep` keeps it and
//! reuses a kept spool of the same size instead of filling again.
//!
//! `--store postgres` answers from the installation store instead: the bench starts a
//! real PostgreSQL (fsync on, shared_buffers and max_wal_size as RDS sets them,
//! `tests/common/postgres.rs`), the relay runs with `[postgres]` and
//! `api.store = "postgres"`, ships the whole spool into the store (timed and printed),
//! and only then are the same calls measured. Each read's own
//! audit event is spooled and shipped as in production.

mod support;

use support::gen;
#[allow(unused_imports)]
use support::{decode_event, fill_spool, now_ms, status_kib};

use audit_relay::spool::Spool;
use support::postgres::Postgres;

use audit_relay::event::format_timestamp_ms;
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

const TOKEN: &str = "bench-operator-token";
const DAY_MS: i64 = 86_400_000;

struct Args {
    events: u64,
    clients: usize,
    requests: usize,
    durability: String,
    keep: bool,
    postgres: bool,
}

fn args() -> Args {
    let mut a = Args {
        events: 10_000_000,
        clients: 50,
        requests: 3_000,
        durability: "fsync".into(),
        keep: false,
        postgres: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().expect("flag needs a value");
        match k.as_str() {
            "--events" => a.events = val().parse().expect("--events N"),
            "--clients" => a.clients = val().parse().expect("--clients C"),
            "--requests" => a.requests = val().parse().expect("--requests R"),
            "--durability" => a.durability = val(),
            "--keep" => a.keep = true,
            "--store" => match val().as_str() {
                "spool" => a.postgres = false,
                "postgres" => a.postgres = true,
                other => panic!("--store spool|postgres, not {other:?}"),
            },
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

/// The relay process; SIGTERM on drop.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let _ = self.0.wait();
    }
}

/// Starts the relay on `spool_dir` with the API on a free port; returns it and the address.
/// `store` is the `api.store` line and `postgres` the `[postgres]` section (both empty
/// for the spool).
fn start_relay(
    dir: &Path,
    spool_dir: &Path,
    durability: &str,
    store: &str,
    postgres: &str,
) -> (Relay, String) {
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let hash: String = Sha256::digest(TOKEN)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[source]
paths = ["{}/logs/*.log"]
[spool]
dir = "{}"
durability = "{durability}"
[log]
level = "info"
[api]
listen = "127.0.0.1:0"
{store}
[[api.tokens]]
name = "bench"
sha256 = "{hash}"
organizations = ["*"]
{postgres}
"#,
            dir.display(),
            spool_dir.display(),
        ),
    )
    .unwrap();
    let log = dir.join("relay.log");
    let child = Command::new(env!("CARGO_BIN_EXE_audit-relay"))
        .args(["-c", cfg.to_str().unwrap(), "run"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .expect("start audit-relay");
    let relay = Relay(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if let Some(i) = text.find("query API listening") {
            let line = &text[i..];
            let addr = line.split("addr=").nth(1).expect("addr field");
            let addr = addr.split_whitespace().next().unwrap().to_string();
            return (relay, addr);
        }
        assert!(Instant::now() < deadline, "no API address in:\n{text}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    addr: String,
    r: BufReader<TcpStream>,
}

impl Conn {
    fn new(addr: &str) -> Conn {
        let s = TcpStream::connect(addr).expect("connect to the API");
        s.set_nodelay(true).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
        Conn {
            addr: addr.to_string(),
            r: BufReader::with_capacity(64 << 10, s),
        }
    }

    /// Sends a request; reads the status and headers; returns (status, content-length,
    /// chunked).
    fn send(&mut self, head: &str, body: &[u8]) -> (u16, Option<usize>, bool) {
        let s = self.r.get_mut();
        let mut req = head.as_bytes().to_vec();
        req.extend_from_slice(body);
        s.write_all(&req).unwrap();
        let mut line = String::new();
        self.r.read_line(&mut line).unwrap();
        let status: u16 = line
            .get(9..12)
            .unwrap_or_else(|| panic!("status line {line:?}"))
            .parse()
            .unwrap();
        let (mut len, mut chunked) = (None, false);
        loop {
            line.clear();
            self.r.read_line(&mut line).unwrap();
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let (k, v) = l.split_once(':').expect("header");
            if k.eq_ignore_ascii_case("content-length") {
                len = Some(v.trim().parse().unwrap());
            } else if k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked") {
                chunked = true;
            }
        }
        (status, len, chunked)
    }

    /// A ListAuditLogs call: (status, body).
    fn list(&mut self, body: &str) -> (u16, Vec<u8>) {
        let head = format!(
            "POST /gitpod.v1.AuditLogService/ListAuditLogs HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let (status, len, chunked) = self.send(&head, body.as_bytes());
        assert!(!chunked, "a page has a length");
        let mut b = vec![0; len.expect("content-length")];
        self.r.read_exact(&mut b).unwrap();
        (status, b)
    }

    /// The export: (status, lines, bytes), the body read chunk by chunk.
    fn export(&mut self, path: &str) -> (u16, u64, u64) {
        let head = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n",
            self.addr
        );
        let (status, _, chunked) = self.send(&head, b"");
        assert!(chunked, "the export streams");
        let (mut lines, mut bytes) = (0u64, 0u64);
        let mut line = String::new();
        let mut buf = Vec::new();
        loop {
            line.clear();
            self.r.read_line(&mut line).unwrap();
            let n = usize::from_str_radix(line.trim(), 16)
                .unwrap_or_else(|_| panic!("chunk size {line:?} (stream cut?)"));
            buf.resize(n + 2, 0);
            self.r.read_exact(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            lines += buf[..n].iter().filter(|&&b| b == b'\n').count() as u64;
            bytes += n as u64;
        }
        (status, lines, bytes)
    }
}

fn request_body(org: &str, from: &str, to: &str, token: &str) -> String {
    serde_json::json!({"organizationId": org, "from": from, "to": to,
        "pagination": {"pageSize": 100, "token": token}})
    .to_string()
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// `requests` calls of `body` spread over `clients` threads; prints p50/p99/max, and the
/// CPU each request cost the relay (`relay` is its pid), PostgreSQL's processes (when
/// `pg`) and this process (the clients).
fn measure(
    what: &str,
    addr: &str,
    (relay, pg): (u32, bool),
    clients: usize,
    requests: usize,
    body: &str,
) {
    let per = requests.div_ceil(clients);
    let barrier = Arc::new(Barrier::new(clients + 1));
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (addr, body, barrier) = (addr.to_string(), body.to_string(), barrier.clone());
            std::thread::spawn(move || {
                let mut c = Conn::new(&addr);
                // One warm-up call on this connection, untimed.
                assert_eq!(c.list(&body).0, 200);
                barrier.wait();
                let mut times = Vec::with_capacity(per);
                for _ in 0..per {
                    let t = Instant::now();
                    let (status, b) = c.list(&body);
                    times.push(t.elapsed());
                    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
                }
                times
            })
        })
        .collect();
    let cpu = || {
        [
            support::process_cpu_secs(relay),
            if pg { support::postgres_cpu() } else { 0.0 },
            support::process_cpu_secs(std::process::id()),
        ]
    };
    barrier.wait();
    let started = Instant::now();
    let cpu_before = cpu();
    let mut all: Vec<Duration> = threads
        .into_iter()
        .flat_map(|t| t.join().unwrap())
        .collect();
    let wall = started.elapsed().as_secs_f64();
    let cpu_after = cpu();
    let n = all.len() as f64;
    let per_request = |i: usize| (cpu_after[i] - cpu_before[i]) / n * 1e6;
    all.sort();
    println!(
        "{what}: {} requests, {clients} clients: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {:.0} requests/s; CPU per request: relay {:.0} µs, PostgreSQL {:.0} µs, clients {:.0} µs",
        all.len(),
        pct(&all, 0.50),
        pct(&all, 0.99),
        all.last().unwrap().as_secs_f64() * 1e3,
        all.len() as f64 / wall,
        per_request(0),
        per_request(1),
        per_request(2),
    );
}

/// Waits until the store's cursor for the bench relay reaches the spool's last row
/// (as it was when the relay started), prints the rate, and vacuums and analyzes the
/// store as a DBA would after a bulk load: otherwise autovacuum's first pass over every
/// freshly filled partition (insert-triggered) runs during the timed calls and takes a
/// core (seen: PostgreSQL at 0.9 of a core for 153 requests/s of one client), where a
/// long-lived store is vacuumed as it grows. Then a checkpoint, as after any bulk load.
fn wait_shipped(pg: &Postgres, spool_dir: &Path) {
    let last = Spool::open_read_only(spool_dir)
        .unwrap()
        .chain_meta()
        .unwrap()
        .last_seq;
    let started = Instant::now();
    loop {
        let shipped = pg
            .try_i64("SELECT shipped_seq FROM audit_relays WHERE relay_id = 'bench-api'")
            .unwrap_or(0);
        if shipped >= last {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(3600),
            "shipping stopped at {shipped} of {last}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "shipped {last} rows into PostgreSQL in {secs:.1}s ({:.0} rows/s)",
        last as f64 / secs
    );
    let started = Instant::now();
    pg.client()
        .batch_execute("VACUUM (ANALYZE) audit_events")
        .unwrap();
    eprintln!(
        "vacuumed and analyzed the store in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    // The load and the vacuum leave GBs of dirty buffers: the checkpoint that writes them
    // out (spread over minutes) would otherwise run under the first timed calls.
    let started = Instant::now();
    pg.client().batch_execute("CHECKPOINT").unwrap();
    eprintln!(
        "checkpointed the store in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

fn main() {
    let a = args();
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "target/bench-api".into());
    let dir = Path::new(&base).to_path_buf();
    let spool_dir = dir.join("spool");
    let marker = dir.join("filled");
    // The kept spool's end of time, if it has this many events.
    let kept = std::fs::read_to_string(&marker).ok().and_then(|s| {
        let (n, end) = s.trim().split_once(' ')?;
        (n.parse::<u64>().ok()? == a.events).then(|| end.parse::<i64>().ok())?
    });
    let end_ms = match kept {
        Some(end) if a.keep => {
            eprintln!("reusing the kept spool of {} events", a.events);
            end
        }
        _ => {
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            let end = now_ms() - 60_000;
            fill_spool(&spool_dir, a.events, end);
            std::fs::write(&marker, format!("{} {end}", a.events)).unwrap();
            end
        }
    };
    let pg = a
        .postgres
        .then(|| Postgres::start_with(support::PRODUCTION_PG));
    let (store, pg_section) = match &pg {
        Some(pg) => (
            "store = \"postgres\"".to_string(),
            pg.config_section("bench-api", &["batch_rows = 5000"]),
        ),
        None => (String::new(), String::new()),
    };
    let (relay, addr) = start_relay(&dir, &spool_dir, &a.durability, &store, &pg_section);
    let pid = relay.0.id();
    if let Some(pg) = &pg {
        wait_shipped(pg, &spool_dir);
    }
    let org = gen::org_id(7);
    let to = format_timestamp_ms(end_ms);
    let week_from = format_timestamp_ms(end_ms - 7 * DAY_MS);

    // The deep page: follow nextToken up to 20 pages into the week.
    let mut c = Conn::new(&addr);
    let (mut token, mut depth, mut in_week) = (String::new(), 0, 0usize);
    loop {
        let (status, b) = c.list(&request_body(&org, &week_from, &to, &token));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&b));
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
        in_week += v["auditLogs"].as_array().map_or(0, |l| l.len());
        let next = v["pagination"]["nextToken"]
            .as_str()
            .unwrap_or("")
            .to_string();
        if next.is_empty() || depth == 20 {
            break;
        }
        token = next;
        depth += 1;
    }
    println!(
        "{}: {} events, 500 organizations, 90 days; organization {org} has {}{in_week} events in the week (page size 100)",
        if a.postgres { "installation store (PostgreSQL)" } else { "spool" },
        a.events,
        if depth == 20 { "more than " } else { "" },
    );
    let first = request_body(&org, &week_from, &to, "");
    // One client alone: the service time, without queueing behind the other clients.
    measure(
        "ListAuditLogs first page, alone",
        &addr,
        (pid, a.postgres),
        1,
        (a.requests / 6).max(1),
        &first,
    );
    measure(
        "ListAuditLogs first page",
        &addr,
        (pid, a.postgres),
        a.clients,
        a.requests,
        &first,
    );
    let deep = request_body(&org, &week_from, &to, &token);
    measure(
        &format!("ListAuditLogs deep page (page {})", depth + 1),
        &addr,
        (pid, a.postgres),
        a.clients,
        a.requests,
        &deep,
    );

    // The export of the organization's 90 days, with the relay's memory watched.
    let hwm_before = status_kib(pid, "VmHWM:");
    let rss_before = status_kib(pid, "VmRSS:");
    let path = format!(
        "/v1/organizations/{org}/audit-logs/export?from={}&to={}",
        format_timestamp_ms(end_ms - 90 * DAY_MS - 1000).replace(':', "%3A"),
        to.replace(':', "%3A")
    );
    let mut rates = Vec::new();
    let mut exported = 0;
    let mut exported_bytes = 0;
    let mut peak_rss = 0;
    for _ in 0..5 {
        let watching = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let watcher = {
            let watching = watching.clone();
            std::thread::spawn(move || {
                let mut peak = 0;
                while watching.load(std::sync::atomic::Ordering::Relaxed) {
                    peak = peak.max(status_kib(pid, "VmRSS:"));
                    std::thread::sleep(Duration::from_millis(2));
                }
                peak
            })
        };
        let t = Instant::now();
        let (status, lines, bytes) = c.export(&path);
        let dt = t.elapsed().as_secs_f64();
        watching.store(false, std::sync::atomic::Ordering::Relaxed);
        peak_rss = peak_rss.max(watcher.join().unwrap());
        assert_eq!(status, 200);
        rates.push(lines as f64 / dt);
        exported = lines;
        exported_bytes = bytes;
    }
    rates.sort_by(|x, y| x.partial_cmp(y).unwrap());
    let hwm_after = status_kib(pid, "VmHWM:");
    println!(
        "export of one organization's 90 days: {exported} events ({:.1} MB NDJSON), median of 5: {:.0} events/s (min {:.0}, max {:.0})",
        exported_bytes as f64 / 1e6,
        rates[rates.len() / 2],
        rates[0],
        rates[rates.len() - 1]
    );
    println!(
        "relay memory: RSS {:.1} MiB before the exports, peak RSS {:.1} MiB during them; VmHWM {:.1} MiB before, {:.1} MiB after",
        rss_before as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        hwm_before as f64 / 1024.0,
        hwm_after as f64 / 1024.0
    );
    println!(
        "conditions: {} cores (shared), relay, {} client threads{} on the same machine, spool durability {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        a.clients,
        if a.postgres { " and PostgreSQL" } else { "" },
        a.durability
    );
    drop(relay);
    if !a.keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
