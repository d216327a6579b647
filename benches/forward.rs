//! Forwarding benchmark: file → spool → a CloudWatch-compatible endpoint.
//!
//! ```text
//! cargo bench --bench forward -- [--events N] [--runs R] [--drain N] [--in-process-endpoint]
//!     [--bin PATH] [--wrap "valgrind --tool=callgrind ..."] [--sign] [--spool "KEY = VALUE"]...
//! ```
//!
//! By default the endpoint is `examples/cw_endpoint.rs` in its own process (what an
//! operator's relay talks to): it verifies each call's SigV4 signature, parses the JSON,
//! checks CloudWatch's rules and records every event's id; at the end the bench asks it
//! whether every expected id arrived, once, in order. `--in-process-endpoint` uses the
//! older minimal endpoint in the bench's own process (it checks the rules and counts).
//! moto is far too slow to measure against.
//!
//! Each run writes N ~660-byte server-log lines (before the clock starts), starts
//! `audit-relay run` (fsync durability) and measures the time until the endpoint has
//! received all N events; also the time until the spool held all N (the ingest part of
//! the same run), the calls' fill, the relay's CPU seconds (utime + stime of the process
//! and per thread, from /proc) and its peak RSS (VmHWM). `--drain N` also measures the
//! drain of an N-event backlog: ingest with the endpoint down, then start it.
//! `--bin` runs another build of the relay; `--wrap` runs the relay under a command
//! (e.g. callgrind, for the profile in docs/benchmarks.md). `--sign` signs the integrity
//! checkpoints (a fresh Ed25519 key); without it they are chained but unsigned. `--spool`
//! adds a line to the relay's `[spool]` section (e.g. `"cache_size = \"8MiB\""`).
//!
//! `--peer fluent-bit=PATH` runs the same workload through a Fluent Bit binary instead of
//! the relay, as the forwarder audit-relay replaces: `tail` (offsets in its SQLite DB,
//! filesystem buffering) with the JSON parser, a `grep` filter keeping the audit lines,
//! `nest` and `record_modifier` filters making each record the line's `payload` (the
//! audit event, the message the relay sends; `log_key payload` would send an object's
//! members without braces or escapes in 5.1.1), and `cloudwatch_logs` sending them to
//! the same endpoint, which checks its calls as it checks the relay's (order is only
//! reported: Fluent Bit does not promise it). `storage.sync` is Fluent Bit's default,
//! `normal` (no fsync); `,sync=full` after the path makes it `full`. `,parsed` parses
//! each line but sends it whole (no filter), `,raw` sends each line as it is (no parser
//! either): less work than the relay does; the endpoint finds the event's id in the
//! line's `payload`. Fluent Bit is not part of the project: build it beside it
//! (docs/benchmarks.md says how).

mod support;

use support::gen;
#[allow(unused_imports)]
use support::{decode_event, fill_spool, now_ms, status_kib};
use support::{events_stored, loadavg, process_cpu_secs, thread_cpu_secs};

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

struct Args {
    events: u64,
    runs: usize,
    drain: u64,
    in_process: bool,
    bin: String,
    wrap: Vec<String>,
    /// Sign the integrity checkpoints (a fresh Ed25519 key per run).
    sign: bool,
    /// Extra `[spool]` lines (`--spool "commit_max_events = 10000"`, repeatable).
    spool: Vec<String>,
    /// `--peer fluent-bit=PATH[,sync=full][,raw|,parsed]`: Fluent Bit instead of the relay.
    fluent_bit: Option<FluentBit>,
}

/// How the Fluent Bit peer runs.
struct FluentBit {
    path: String,
    /// `storage.sync full` (fsync), instead of its default `normal`.
    sync_full: bool,
    /// What it sends: each line's event, the parsed line, or the line as it is.
    mode: FluentBitMode,
}

#[derive(Clone, Copy, PartialEq)]
enum FluentBitMode {
    /// Parsed, the audit lines kept, each one's `payload` lifted and the rest dropped:
    /// the message the relay sends.
    Event,
    /// Parsed (JSON parser), no filter: the whole line re-serialised.
    Parsed,
    /// No parser, no filter: the line as it is.
    Raw,
}

/// Writes `n` server-log lines spread over the last hour; returns their ids in order.
fn write_lines(path: &Path, n: u64, seed: u64) -> Vec<String> {
    let now = now_ms();
    let mut g = gen::Gen::new(seed);
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut ids = Vec::with_capacity(n as usize);
    for i in 0..n {
        let ms = now - 3_600_000 + (i as i64 * 3_600_000 / n.max(1) as i64);
        let s = gen::server_line(&mut g, ms);
        writeln!(w, "{}", s.line).unwrap();
        ids.push(s.id);
    }
    w.flush().unwrap();
    ids
}

fn start_relay(a: &Args, dir: &Path, port: u16) -> Child {
    if let Some(fb) = &a.fluent_bit {
        return start_fluent_bit(fb, dir, port);
    }
    let integrity = if a.sign {
        support::signing_key_section(dir)
    } else {
        String::new()
    };
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[source]\npaths = [\"{d}/logs/*.log\"]\n[spool]\ndir = \"{d}/spool\"\n{spool}[log]\nlevel = \"error\"\n\
             [cloudwatch]\nregion = \"us-east-1\"\nendpoint = \"http://127.0.0.1:{port}\"\nlog_group = \"/bench\"\n\
             log_stream = \"bench\"\nbackoff_max = \"200ms\"\n{integrity}",
            d = dir.display(),
            spool = a.spool.iter().map(|l| format!("{l}\n")).collect::<String>(),
        ),
    )
    .unwrap();
    let mut cmd = match a.wrap.split_first() {
        Some((w, rest)) => {
            let mut c = Command::new(w);
            c.args(rest).arg(&a.bin);
            c
        }
        None => Command::new(&a.bin),
    };
    cmd.args(["-c", cfg.to_str().unwrap(), "run"])
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .spawn()
        .expect("start audit-relay")
}

/// Fluent Bit doing the relay's job: tail the pod's log (offsets in its DB, chunks
/// buffered on disk), keep the audit lines, send each one's event to CloudWatch.
fn start_fluent_bit(fb: &FluentBit, dir: &Path, port: u16) -> Child {
    // Fluent Bit reads relative paths from where its configuration is.
    let dir = std::fs::canonicalize(dir).unwrap();
    let d = dir.display();
    std::fs::write(
        dir.join("parsers.conf"),
        "[PARSER]\n    Name   json\n    Format json\n",
    )
    .unwrap();
    let keep: String = audit_relay::event::EVENT_FIELDS
        .map(|k| format!("    Allowlist_key {k}\n"))
        .concat();
    let parse = match fb.mode {
        FluentBitMode::Raw => String::new(),
        FluentBitMode::Parsed => "    Parser json\n".to_string(),
        FluentBitMode::Event => format!(
            "    Parser json\n\
             [FILTER]\n    Name grep\n    Match *\n    Regex message ^audit$\n\
             [FILTER]\n    Name nest\n    Match *\n    Operation lift\n    Nested_under payload\n\
             [FILTER]\n    Name record_modifier\n    Match *\n{keep}"
        ),
    };
    let out = match fb.mode {
        FluentBitMode::Raw => "    log_key log\n",
        _ => "",
    };
    let sync = if fb.sync_full { "full" } else { "normal" };
    let cfg = dir.join("fluent-bit.conf");
    std::fs::write(
        &cfg,
        format!(
            "[SERVICE]\n    Flush 1\n    Log_Level error\n    Parsers_File {d}/parsers.conf\n\
             \x20   storage.path {d}/flb-storage\n    storage.sync {sync}\n\
             [INPUT]\n    Name tail\n    Path {d}/logs/*.log\n    Read_from_Head true\n\
             \x20   DB {d}/flb-tail.db\n    storage.type filesystem\n{parse}\
             [OUTPUT]\n    Name cloudwatch_logs\n    Match *\n    region us-east-1\n\
             \x20   log_group_name /bench\n    log_stream_name bench\n    auto_create_group true\n\
             \x20   endpoint 127.0.0.1\n    port {port}\n    tls off\n{out}"
        ),
    )
    .unwrap();
    // Its log (errors only) and the storage report it prints at exit, beside the run.
    let log = std::fs::File::create(dir.join("fluent-bit.log")).unwrap();
    Command::new(&fb.path)
        .args(["-q", "-c", cfg.to_str().unwrap()])
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .env("AWS_ACCESS_KEY_ID", "bench")
        .env("AWS_SECRET_ACCESS_KEY", "bench")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .spawn()
        .expect("start fluent-bit")
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

/// The endpoint process (`examples/cw_endpoint`), with the expected ids.
struct EndpointProcess {
    child: Child,
    port: u16,
}

impl EndpointProcess {
    fn start(port: u16, ids_file: &Path) -> EndpointProcess {
        let exe = std::env::current_exe().unwrap();
        let bin = exe
            .parent()
            .and_then(|d| d.parent())
            .unwrap()
            .join("examples/cw_endpoint");
        let mut child = Command::new(&bin)
            .args(["--port", &port.to_string(), "--expect"])
            .arg(ids_file)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e} (build it: cargo build --release --examples)",
                    bin.display()
                )
            });
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("listening on ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("endpoint said {line:?}"));
        EndpointProcess { child, port }
    }

    fn stats(&self) -> serde_json::Value {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).expect("endpoint");
        s.write_all(b"GET /_stats HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut r = BufReader::new(s);
        let mut len = 0;
        let mut line = String::new();
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            if let Some(v) = l.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap();
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        serde_json::from_slice(&body).unwrap()
    }
}

impl Drop for EndpointProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Where a run's endpoint counts: in this process or in its own.
enum Endpoint {
    InProcess(Arc<Counts>, u16),
    Process(EndpointProcess),
}

impl Endpoint {
    fn start(a: &Args, port: u16, ids: &[String], dir: &Path) -> Endpoint {
        if a.in_process {
            let counts = Arc::new(Counts::default());
            let port = endpoint(port, counts.clone());
            Endpoint::InProcess(counts, port)
        } else {
            let f = dir.join("ids.txt");
            std::fs::write(&f, ids.join("\n") + "\n").unwrap();
            Endpoint::Process(EndpointProcess::start(port, &f))
        }
    }

    fn port(&self) -> u16 {
        match self {
            Endpoint::InProcess(_, port) => *port,
            Endpoint::Process(p) => p.port,
        }
    }

    /// CPU seconds of the endpoint process so far (0 in-process: not separable).
    fn cpu_secs(&self) -> f64 {
        match self {
            Endpoint::InProcess(..) => 0.0,
            Endpoint::Process(p) => process_cpu_secs(p.child.id()),
        }
    }

    /// (events, calls, bytes)
    fn counts(&self) -> (u64, u64, u64) {
        match self {
            Endpoint::InProcess(c, _) => (
                c.events.load(Ordering::Relaxed),
                c.calls.load(Ordering::Relaxed),
                c.bytes.load(Ordering::Relaxed),
            ),
            Endpoint::Process(p) => {
                let s = p.stats();
                let g = |k: &str| s[k].as_u64().unwrap_or(0);
                (g("events"), g("calls"), g("bytes"))
            }
        }
    }

    /// Panics unless every call kept CloudWatch's rules (and, in its own process, every
    /// expected event arrived, and in order where `order` is promised: the relay's, not
    /// Fluent Bit's, whose order is only reported).
    fn check(&self, order: bool) {
        match self {
            Endpoint::InProcess(c, _) => assert_eq!(
                c.violations.load(Ordering::Relaxed),
                0,
                "a call broke CloudWatch's rules"
            ),
            Endpoint::Process(p) => {
                let s = p.stats();
                assert_eq!(s["violations"], 0, "endpoint refused calls: {s}");
                assert_eq!(s["missing"], 0, "events lost: {s}");
                assert_eq!(s["unexpected"], 0, "events never written arrived: {s}");
                if order {
                    assert_eq!(s["in_order"], true, "events out of order: {s}");
                } else if s["in_order"] != true {
                    println!(
                        "  note: {} events arrived before one written earlier (order not kept)",
                        s["out_of_order"]
                    );
                }
                if s["duplicates"] != 0 {
                    println!("  note: {} duplicates (at-least-once)", s["duplicates"]);
                }
            }
        }
    }
}

/// One end-to-end run's figures.
struct Run {
    rate: f64,
    ingest_rate: f64,
    cpu_per_million: f64,
    hwm_kib: u64,
}

fn end_to_end(a: &Args, run: usize) -> Run {
    let n = a.events;
    let dir = fresh_dir(&format!("e2e{run}"));
    let ids = write_lines(&dir.join("logs/a.log"), n, run as u64 + 11);
    let ep = Endpoint::start(a, 0, &ids, &dir);
    drop(ids);
    let port = ep.port();
    let load = loadavg();
    let db = dir.join("spool/spool.db");
    let started = Instant::now();
    let child = start_relay(a, &dir, port);
    let mut hwm = 0;
    let mut ingest_secs = None;
    loop {
        hwm = hwm.max(status_kib(child.id(), "VmHWM:"));
        if ingest_secs.is_none() && events_stored(&db) >= n {
            ingest_secs = Some(started.elapsed().as_secs_f64());
        }
        if ep.counts().0 >= n {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3600), "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    hwm = hwm.max(status_kib(child.id(), "VmHWM:"));
    let cpu = process_cpu_secs(child.id());
    let endpoint_cpu = ep.cpu_secs();
    let threads: Vec<String> = thread_cpu_secs(child.id())
        .into_iter()
        .map(|(t, s)| format!("{t} {:.2}", s * 1e6 / n as f64))
        .collect();
    let ingest_secs = ingest_secs.unwrap_or(secs);
    let who = who(a);
    stop(child);
    ep.check(a.fluent_bit.is_none());
    let (_, calls, bytes) = ep.counts();
    let r = Run {
        rate: n as f64 / secs,
        ingest_rate: n as f64 / ingest_secs,
        cpu_per_million: cpu * 1e6 / n as f64,
        hwm_kib: hwm,
    };
    println!(
        "run {run} (load {load}): {n} events in {secs:.2}s = {:.0} events/s end to end (spool had them all after {ingest_secs:.2}s = {:.0}/s); \
         {who} CPU {cpu:.2}s = {:.2} CPU-s per million events; {:.0} events and {:.0} bytes per call; peak RSS {:.1} MiB",
        r.rate,
        r.ingest_rate,
        r.cpu_per_million,
        n as f64 / calls as f64,
        bytes as f64 / calls as f64,
        hwm as f64 / 1024.0
    );
    println!(
        "  {who} CPU µs/event by thread: {}; endpoint process {:.2} CPU-s per million events",
        threads.join(", "),
        endpoint_cpu * 1e6 / n as f64
    );
    let _ = std::fs::remove_dir_all(&dir);
    r
}

/// The forwarder measured: the relay, or the peer.
fn who(a: &Args) -> &'static str {
    if a.fluent_bit.is_some() {
        "fluent-bit"
    } else {
        "relay"
    }
}

/// Backlog drain: events/s once the endpoint comes up with `n` events waiting.
fn drain(a: &Args, n: u64) -> f64 {
    let dir = fresh_dir("drain");
    let ids = write_lines(&dir.join("logs/a.log"), n, 99);
    let port = free_port();
    let child = start_relay(a, &dir, port);
    let db = dir.join("spool/spool.db");
    while events_stored(&db) < n {
        std::thread::sleep(Duration::from_millis(50));
    }
    let hwm_ingest = status_kib(child.id(), "VmHWM:");
    let cpu0 = process_cpu_secs(child.id());
    let load = loadavg();
    let started = Instant::now();
    let ep = Endpoint::start(a, port, &ids, &dir);
    drop(ids);
    let mut hwm = 0;
    while ep.counts().0 < n {
        hwm = hwm.max(status_kib(child.id(), "VmHWM:"));
        assert!(started.elapsed() < Duration::from_secs(3600), "timed out");
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    hwm = hwm.max(status_kib(child.id(), "VmHWM:"));
    let cpu = process_cpu_secs(child.id()) - cpu0;
    stop(child);
    ep.check(true);
    let _ = std::fs::remove_dir_all(&dir);
    let rate = n as f64 / secs;
    println!(
        "drain (load {load}): {n}-event backlog sent in {secs:.2}s = {rate:.0} events/s (includes up to one backoff_max of 200ms); \
         relay CPU {:.2} CPU-s per million while draining; peak RSS {:.1} MiB after ingest, {:.1} MiB after the drain",
        cpu * 1e6 / n as f64,
        hwm_ingest as f64 / 1024.0,
        hwm as f64 / 1024.0
    );
    rate
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let mut a = Args {
        events: 1_000_000,
        runs: 3,
        drain: 0,
        in_process: false,
        bin: env!("CARGO_BIN_EXE_audit-relay").into(),
        wrap: Vec::new(),
        sign: false,
        spool: Vec::new(),
        fluent_bit: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        match k.as_str() {
            "--events" => a.events = it.next().unwrap().parse().unwrap(),
            "--runs" => a.runs = it.next().unwrap().parse().unwrap(),
            "--drain" => a.drain = it.next().unwrap().parse().unwrap(),
            "--in-process-endpoint" => a.in_process = true,
            "--sign" => a.sign = true,
            "--spool" => a.spool.push(it.next().unwrap()),
            "--bin" => a.bin = it.next().unwrap(),
            "--peer" => {
                let p = it.next().unwrap();
                let Some(spec) = p.strip_prefix("fluent-bit=") else {
                    panic!("--peer fluent-bit=PATH[,sync=full][,raw|,parsed], not {p:?}")
                };
                let mut parts = spec.split(',');
                let mut fb = FluentBit {
                    path: parts.next().unwrap().into(),
                    sync_full: false,
                    mode: FluentBitMode::Event,
                };
                for o in parts {
                    match o {
                        "sync=full" => fb.sync_full = true,
                        "raw" => fb.mode = FluentBitMode::Raw,
                        "parsed" => fb.mode = FluentBitMode::Parsed,
                        other => panic!("--peer fluent-bit: unknown option {other:?}"),
                    }
                }
                a.fluent_bit = Some(fb);
            }
            "--wrap" => {
                a.wrap = it
                    .next()
                    .unwrap()
                    .split_whitespace()
                    .map(String::from)
                    .collect()
            }
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    assert!(
        a.drain == 0 || a.fluent_bit.is_none(),
        "--drain measures the relay's backlog; not with --peer"
    );
    let runs: Vec<Run> = (0..a.runs).map(|r| end_to_end(&a, r)).collect();
    if !runs.is_empty() {
        println!(
            "median of {}: {:.0} events/s end to end, ingest part {:.0} events/s, {:.2} {} CPU-s per million events, peak RSS {:.1} MiB \
             ({} events, fsync, {} cores, endpoint {})",
            a.runs,
            median(runs.iter().map(|r| r.rate).collect()),
            median(runs.iter().map(|r| r.ingest_rate).collect()),
            median(runs.iter().map(|r| r.cpu_per_million).collect()),
            who(&a),
            median(runs.iter().map(|r| r.hwm_kib as f64).collect()) / 1024.0,
            a.events,
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            if a.in_process { "in-process" } else { "own process" }
        );
    }
    if a.drain > 0 {
        drain(&a, a.drain);
    }
}
