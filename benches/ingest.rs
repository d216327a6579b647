//! Ingest benchmark: tail → spool throughput and peak RSS of the real binary.
//!
//! ```text
//! cargo bench --bench ingest -- [--events N] [--prefill M] [--runs R] [--parts] [--durability fsync|os]
//!     [--sign] [--old M] [--verify] [--bin PATH] [--postgres on|both]
//! ```
//!
//! `--sign` signs checkpoints (a fresh Ed25519 key); `--old M` pre-fills M events 100–190
//! days old with checkpoints, so that retention (90 days) purges them while the run
//! ingests; `--verify` times `audit-relay verify` over the spool after the run; `--bin`
//! runs another build of the relay (e.g. one from before a change, for comparison).
//!
//! Each run writes N realistic server-log lines (~600 bytes; 500 organizations, 5,000
//! actors, 40 actions) to a file, optionally fills a fresh spool with M older events
//! first, starts `audit-relay run` on it, and measures the time until all N events are
//! committed (polling the spool's `events` counter) and the process's peak RSS (VmHWM).
//! `--parts` also times the pieces in-process: decode alone, and spool insert alone.
//! `--postgres on` runs the relay with `[postgres]` (a real PostgreSQL with
//! production-like settings, started by the bench, `tests/common/postgres.rs`), so that
//! the shipper reads the spool while the writer ingests; `--postgres both` makes each run twice, without and then with it,
//! and prints both medians (interleaved, so that the machine's noise hits both alike).
//! With the store on, each run also prints the shipper's cursor when ingest finished
//! and the time until everything was shipped.
//! Prints one line per run and the median.

mod support;

use support::postgres::Postgres;
#[allow(unused_imports)]
use support::{decode_event, fill_spool, fill_spool_with, now_ms, status_kib};
use support::{events_stored, gen};

use audit_relay::config::Durability;
use audit_relay::spool::{AppendBatch, Spool};
use std::io::{BufWriter, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Args {
    events: u64,
    prefill: u64,
    runs: usize,
    parts: bool,
    durability: String,
    cache: String,
    sign: bool,
    old: u64,
    verify: bool,
    bin: String,
    /// Runs without the installation store, with it, or both (interleaved).
    postgres: (bool, bool),
}

fn args() -> Args {
    let mut a = Args {
        events: 2_000_000,
        prefill: 0,
        runs: 3,
        parts: false,
        durability: "fsync".into(),
        cache: "16MiB".into(),
        sign: false,
        old: 0,
        verify: false,
        bin: env!("CARGO_BIN_EXE_audit-relay").into(),
        postgres: (true, false),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().expect("flag needs a value");
        match k.as_str() {
            "--events" => a.events = val().parse().expect("--events N"),
            "--prefill" => a.prefill = val().parse().expect("--prefill M"),
            "--runs" => a.runs = val().parse().expect("--runs R"),
            "--durability" => a.durability = val(),
            "--cache" => a.cache = val(),
            "--parts" => a.parts = true,
            "--sign" => a.sign = true,
            "--verify" => a.verify = true,
            "--old" => a.old = val().parse().expect("--old M"),
            "--bin" => a.bin = val(),
            "--postgres" => {
                a.postgres = match val().as_str() {
                    "on" => (false, true),
                    "both" => (true, true),
                    other => panic!("--postgres on|both, not {other:?}"),
                }
            }
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

fn write_lines(path: &Path, n: u64, seed: u64, start_ms: i64) -> u64 {
    let mut g = gen::Gen::new(seed);
    let mut w = BufWriter::with_capacity(1 << 20, std::fs::File::create(path).unwrap());
    let mut bytes = 0;
    for i in 0..n {
        let l = gen::server_line(&mut g, start_ms + i as i64 / 10).line;
        bytes += l.len() as u64 + 1;
        writeln!(w, "{l}").unwrap();
    }
    w.flush().unwrap();
    bytes
}

/// Events deleted by retention so far (0 before any purge, or for an older build).
fn purged(db: &Path) -> u64 {
    rusqlite::Connection::open(db)
        .and_then(|c| {
            c.query_row("SELECT coalesce(sum(deleted), 0) FROM purges", [], |r| {
                r.get::<_, i64>(0)
            })
        })
        .unwrap_or(0) as u64
}

fn one_run(a: &Args, run: usize, pg: Option<&Postgres>) -> (f64, u64) {
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "target/bench-ingest".into());
    let dir = Path::new(&base).join(format!("run{run}"));
    let relay_id = format!("ingest-run{run}");
    let store = pg.map_or(String::new(), |pg| pg.config_section(&relay_id, &[]));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let spool_dir = dir.join("spool");
    let start_ms = now_ms() - 86_400_000;
    if a.prefill > 0 {
        fill_spool(&spool_dir, a.prefill, start_ms);
    }
    if a.old > 0 {
        fill_spool_with(&spool_dir, a.old, start_ms - 100 * 86_400_000, Some(10_000));
    }
    let integrity = if a.sign {
        support::signing_key_section(&dir)
    } else {
        String::new()
    };
    let bytes = write_lines(
        &dir.join("logs/server.log"),
        a.events,
        run as u64 + 1,
        start_ms,
    );
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[source]\npaths = [\"{}/logs/*.log\"]\n[spool]\ndir = \"{}\"\ndurability = \"{}\"\ncache_size = \"{}\"\n[log]\nlevel = \"warn\"\n{integrity}{store}",
            dir.display(),
            spool_dir.display(),
            a.durability,
            a.cache
        ),
    )
    .unwrap();
    let db = spool_dir.join("spool.db");
    let target = a.prefill + a.old + a.events;
    let started = Instant::now();
    let mut child = Command::new(&a.bin)
        .args(["-c", cfg.to_str().unwrap(), "run"])
        .stdin(Stdio::null())
        .spawn()
        .expect("start audit-relay");
    let mut hwm = 0;
    loop {
        hwm = hwm.max(status_kib(child.id(), "VmHWM:"));
        if events_stored(&db) >= target {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            panic!("timed out");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = started.elapsed().as_secs_f64();
    hwm = hwm.max(status_kib(child.id(), "VmHWM:"));
    if let Some(pg) = pg {
        let cursor = || {
            pg.try_i64(&format!(
                "SELECT shipped_seq FROM audit_relays WHERE relay_id = '{relay_id}'"
            ))
            .unwrap_or(0)
        };
        let at_end = cursor();
        let last = Spool::open_read_only(&spool_dir)
            .unwrap()
            .chain_meta()
            .unwrap()
            .last_seq;
        while cursor() < last {
            assert!(
                started.elapsed() < Duration::from_secs(1200),
                "shipping stopped"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        println!(
            "  shipping: store cursor at {at_end} of {last} rows when ingest finished, all shipped {:.2}s after the start",
            started.elapsed().as_secs_f64()
        );
    }
    let cpu: Vec<String> = support::thread_cpu_secs(child.id())
        .into_iter()
        .map(|(n, s)| format!("{n} {:.2} µs/event", s * 1e6 / a.events as f64))
        .collect();
    println!("  CPU by thread: {}", cpu.join(", "));
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let status = child.wait().unwrap();
    assert!(status.success(), "relay exited with {status}");
    if a.old > 0 {
        println!(
            "  retention purged {} of the {} old events during the run",
            purged(&db),
            a.old
        );
    }
    if a.verify {
        let t = Instant::now();
        let out = Command::new(&a.bin)
            .args(["-c", cfg.to_str().unwrap(), "verify", "--json"])
            .output()
            .unwrap();
        let dt = t.elapsed().as_secs_f64();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let rows = report["spool"]["rows"].as_u64().unwrap_or(0);
        println!(
            "  verify: {rows} rows in {dt:.2}s = {:.0} rows/s, ok = {}",
            rows as f64 / dt,
            report["ok"]
        );
    }
    let rate = a.events as f64 / secs;
    println!(
        "run {run}{}: {} events ({:.0} MB) in {secs:.2}s = {rate:.0} events/s, peak RSS {:.1} MiB (spool had {} events before)",
        if pg.is_some() { " (shipping to PostgreSQL)" } else { "" },
        a.events,
        bytes as f64 / 1e6,
        hwm as f64 / 1024.0,
        a.prefill
    );
    let _ = std::fs::remove_dir_all(&dir);
    (rate, hwm)
}

fn parts(a: &Args) {
    let mut g = gen::Gen::new(7);
    let start = now_ms();
    let lines: Vec<String> = (0..a.events.min(1_000_000))
        .map(|i| gen::server_line(&mut g, start + i as i64).line)
        .collect();
    let t = Instant::now();
    let events: Vec<_> = lines.iter().map(|l| decode_event(l)).collect();
    let dt = t.elapsed().as_secs_f64();
    println!(
        "decode+validate: {} lines in {dt:.2}s = {:.0} lines/s ({:.2} µs/line)",
        lines.len(),
        lines.len() as f64 / dt,
        dt * 1e6 / lines.len() as f64
    );
    let dir = tempfile::tempdir_in(".").unwrap();
    let dur = if a.durability == "os" {
        Durability::Os
    } else {
        Durability::Fsync
    };
    let mut spool = Spool::open(dir.path(), dur, 16 << 20).unwrap();
    let t = Instant::now();
    for chunk in events.chunks(20_000) {
        spool
            .append(&AppendBatch {
                events: chunk.to_vec(),
                ..Default::default()
            })
            .unwrap();
    }
    let dt = t.elapsed().as_secs_f64();
    println!(
        "spool insert ({}): {} events in 20k-event commits in {dt:.2}s = {:.0} events/s",
        a.durability,
        events.len(),
        events.len() as f64 / dt
    );
}

fn main() {
    let a = args();
    if a.parts {
        parts(&a);
    }
    let pg = a
        .postgres
        .1
        .then(|| Postgres::start_with(support::PRODUCTION_PG));
    let (mut rates, mut rss) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    for run in 0..a.runs {
        for (k, on) in [a.postgres.0, a.postgres.1].into_iter().enumerate() {
            if on {
                let (r, h) = one_run(&a, run * 2 + k, if k == 1 { pg.as_ref() } else { None });
                rates[k].push(r);
                rss[k].push(h);
            }
        }
    }
    for k in 0..2 {
        let (rates, rss) = (&mut rates[k], &mut rss[k]);
        if rates.is_empty() {
            continue;
        }
        rates.sort_by(|x, y| x.partial_cmp(y).unwrap());
        rss.sort();
        println!(
            "median of {}{}: {:.0} events/s, peak RSS {:.1} MiB ({} events, prefill {}, durability {}, {} cores)",
            rates.len(),
            if k == 1 { " with shipping to PostgreSQL" } else { "" },
            rates[rates.len() / 2],
            rss[rss.len() / 2] as f64 / 1024.0,
            a.events,
            a.prefill,
            a.durability,
            std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0)
        );
    }
}
