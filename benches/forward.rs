//! Forwarding benchmark: file → spool → a fast CloudWatch-compatible endpoint.
//!
//! ```text
//! cargo bench --bench forward -- [--events N] [--runs R] [--drain N]
//! ```
//!
//! The endpoint is minimal and in-process: it answers CreateLogGroup, CreateLogStream,
//! PutRetentionPolicy and PutLogEvents, and for each PutLogEvents call checks
//! CloudWatch's rules (≤ 10,000 events, ≤ 1,048,576 bytes counting 26 per event,
//! chronological order, ≤ 24 h span) and counts events. moto is far too slow to measure
//! against. Each run writes N ~600-byte server-log lines, starts `audit-relay run`
//! (fsync durability) and measures the time until the endpoint has received all N
//! events, the calls' fill, and the relay's peak RSS. `--drain N` also measures the
//! drain of an N-event backlog: ingest with the endpoint down, then start it.

mod support;

use support::gen;
#[allow(unused_imports)]
use support::{decode_event, fill_spool, now_ms, status_kib};

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Default)]
struct Counts {
    events: AtomicU64,
    calls: AtomicU64,
    bytes: AtomicU64,
    violations: AtomicU64,
}

/// Serves one connection: HTTP/1.1 keep-alive, Content-Length bodies.
fn serve(stream: TcpStream, counts: Arc<Counts>) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut writer = stream;
    loop {
        let mut target = String::new();
        let mut len = 0usize;
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        loop {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            let lower = l.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            } else if let Some(v) = lower.strip_prefix("x-amz-target:") {
                target = v.trim().to_string();
            }
        }
        let mut body = vec![0u8; len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let answer = if target.ends_with("putlogevents") {
            check_put(&body, &counts);
            "{\"nextSequenceToken\":\"1\"}"
        } else {
            "{}"
        };
        let resp = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/x-amz-json-1.1\r\nContent-Length: {}\r\n\r\n{answer}",
            answer.len()
        );
        if writer.write_all(resp.as_bytes()).is_err() {
            return;
        }
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Put<'a> {
    #[serde(borrow)]
    log_events: Vec<PutEvent<'a>>,
}

#[derive(serde::Deserialize)]
struct PutEvent<'a> {
    timestamp: i64,
    #[serde(borrow)]
    message: std::borrow::Cow<'a, str>,
}

fn check_put(body: &[u8], counts: &Counts) {
    let put: Put = serde_json::from_slice(body).expect("PutLogEvents JSON");
    let events = put.log_events;
    let bytes: usize = events.iter().map(|e| e.message.len() + 26).sum();
    let ts: Vec<i64> = events.iter().map(|e| e.timestamp).collect();
    let ordered = ts.windows(2).all(|w| w[0] <= w[1]);
    let span_ok = ts.last().unwrap_or(&0) - ts.first().unwrap_or(&0) <= 86_400_000;
    if events.len() > 10_000 || bytes > 1_048_576 || !ordered || !span_ok {
        counts.violations.fetch_add(1, Ordering::Relaxed);
    }
    counts
        .events
        .fetch_add(events.len() as u64, Ordering::Relaxed);
    counts.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    counts.calls.fetch_add(1, Ordering::Relaxed);
}

/// Starts the endpoint on `port` (0: any); returns the port.
fn endpoint(port: u16, counts: Arc<Counts>) -> u16 {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming().flatten() {
            let c = counts.clone();
            std::thread::spawn(move || serve(s, c));
        }
    });
    port
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn write_lines(path: &Path, n: u64, seed: u64) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut g = gen::Gen::new(seed);
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    for i in 0..n {
        let ms = now - 3_600_000 + (i as i64 * 3_600_000 / n.max(1) as i64);
        writeln!(w, "{}", gen::server_line(&mut g, ms).line).unwrap();
    }
    w.flush().unwrap();
}

fn start_relay(dir: &Path, port: u16) -> Child {
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[source]\npaths = [\"{d}/logs/*.log\"]\n[spool]\ndir = \"{d}/spool\"\n[log]\nlevel = \"error\"\n\
             [cloudwatch]\nregion = \"us-east-1\"\nendpoint = \"http://127.0.0.1:{port}\"\nlog_group = \"/bench\"\n\
             log_stream = \"bench\"\nbackoff_max = \"200ms\"\n",
            d = dir.display()
        ),
    )
    .unwrap();
    Command::new(env!("CARGO_BIN_EXE_audit-relay"))
        .args(["-c", cfg.to_str().unwrap(), "run"])
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .spawn()
        .expect("start audit-relay")
}

fn stop(mut child: Child) {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
}

fn fresh_dir(name: &str) -> std::path::PathBuf {
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "target/bench-forward".into());
    let dir = Path::new(&base).join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    dir
}

/// End to end: (events/s, average events per call, average bytes per call, peak RSS KiB).
fn end_to_end(n: u64, run: usize) -> (f64, f64, f64, u64) {
    let dir = fresh_dir(&format!("e2e{run}"));
    write_lines(&dir.join("logs/a.log"), n, run as u64 + 11);
    let counts = Arc::new(Counts::default());
    let port = endpoint(0, counts.clone());
    let started = Instant::now();
    let child = start_relay(&dir, port);
    let mut hwm = 0;
    while counts.events.load(Ordering::Relaxed) < n {
        hwm = hwm.max(status_kib(child.id(), "VmHWM:"));
        assert!(started.elapsed() < Duration::from_secs(900), "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    hwm = hwm.max(status_kib(child.id(), "VmHWM:"));
    stop(child);
    let calls = counts.calls.load(Ordering::Relaxed) as f64;
    assert_eq!(
        counts.violations.load(Ordering::Relaxed),
        0,
        "a call broke CloudWatch's rules"
    );
    let r = (
        n as f64 / secs,
        n as f64 / calls,
        counts.bytes.load(Ordering::Relaxed) as f64 / calls,
        hwm,
    );
    println!(
        "run {run}: {n} events in {secs:.2}s = {:.0} events/s end to end; {:.0} events and {:.0} bytes per call; peak RSS {:.1} MiB",
        r.0,
        r.1,
        r.2,
        hwm as f64 / 1024.0
    );
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// Backlog drain: events/s once the endpoint comes up with `n` events waiting.
fn drain(n: u64) -> f64 {
    let dir = fresh_dir("drain");
    write_lines(&dir.join("logs/a.log"), n, 99);
    let port = free_port();
    let child = start_relay(&dir, port);
    let db = dir.join("spool/spool.db");
    loop {
        let stored =
            rusqlite::Connection::open_with_flags(&db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
                .and_then(|c| {
                    c.query_row(
                        "SELECT value FROM counters WHERE name = 'events'",
                        [],
                        |r| r.get::<_, i64>(0),
                    )
                })
                .unwrap_or(0);
        if stored as u64 >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let counts = Arc::new(Counts::default());
    let started = Instant::now();
    endpoint(port, counts.clone());
    while counts.events.load(Ordering::Relaxed) < n {
        assert!(started.elapsed() < Duration::from_secs(900), "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    stop(child);
    let _ = std::fs::remove_dir_all(&dir);
    let rate = n as f64 / secs;
    println!("drain: {n}-event backlog sent in {secs:.2}s = {rate:.0} events/s (includes up to one backoff_max of 200ms)");
    rate
}

fn main() {
    let mut events = 1_000_000u64;
    let mut runs = 3usize;
    let mut drain_n = 0u64;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--events" => events = it.next().unwrap().parse().unwrap(),
            "--runs" => runs = it.next().unwrap().parse().unwrap(),
            "--drain" => drain_n = it.next().unwrap().parse().unwrap(),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    let mut rates: Vec<f64> = (0..runs).map(|r| end_to_end(events, r).0).collect();
    if !rates.is_empty() {
        rates.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "median of {runs}: {:.0} events/s end to end ({events} events, fsync, {} cores)",
            rates[rates.len() / 2],
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0)
        );
    }
    if drain_n > 0 {
        drain(drain_n);
    }
}
