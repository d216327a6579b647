//! Idle benchmark: CPU of a relay with nothing to do, and how soon it notices new data.
//!
//! ```text
//! cargo bench --bench idle -- [--runs R] [--seconds S] [--settle S] [--appends N] [--bin PATH]
//! ```
//!
//! Each run writes 3 finished server-log files (1,000 events each), starts the real
//! `audit-relay run` on them with `[api]` and `[admin]` on (CloudWatch off, default
//! source and spool settings: `poll_interval = "1s"`, `commit_interval = "200ms"`), waits
//! until every event is stored and `--settle` seconds more, then reads the process's
//! `utime + stime` from `/proc/PID/stat` over `--seconds` seconds and prints it as % of
//! one core (with the busiest threads). Then it appends one line at a time (`--appends`
//! times, one second apart) to one of the files and measures the time until the spool's
//! `events` counter shows it. Prints one line per run and the medians. `--bin` runs
//! another build (e.g. one from before a change).

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::{events_stored, gen};

struct Args {
    runs: usize,
    seconds: u64,
    settle: u64,
    appends: usize,
    bin: String,
}

fn args() -> Args {
    let mut a = Args {
        runs: 3,
        seconds: 20,
        settle: 5,
        appends: 5,
        bin: env!("CARGO_BIN_EXE_audit-relay").into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().expect("flag needs a value");
        match k.as_str() {
            "--runs" => a.runs = val().parse().expect("--runs R"),
            "--seconds" => a.seconds = val().parse().expect("--seconds S"),
            "--settle" => a.settle = val().parse().expect("--settle S"),
            "--appends" => a.appends = val().parse().expect("--appends N"),
            "--bin" => a.bin = val(),
            "--bench" => {}
            other => panic!("unknown flag {other}"),
        }
    }
    a
}

const FILES: [&str; 3] = ["a.log", "b.log", "c.log"];
const PER_FILE: u64 = 1000;
/// USER_HZ: the unit of the times in `/proc/PID/stat`.
const TICKS: f64 = 100.0;

/// utime + stime (ticks) from a `stat` file's text.
fn cpu_ticks(stat: &str) -> u64 {
    // Fields after the ")" that ends the command name: utime is the 12th, stime the 13th.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)
}

fn process_ticks(pid: u32) -> u64 {
    cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("relay's stat"))
}

/// CPU ticks per thread (name, tid).
fn thread_ticks(pid: u32) -> Vec<(String, u64)> {
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        let tid = t.file_name().to_string_lossy().to_string();
        v.push((format!("{}#{tid}", name.trim()), cpu_ticks(&stat)));
    }
    v
}

fn wait_for(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

struct RunResult {
    cpu_pct: f64,
    latencies_ms: Vec<f64>,
}

fn one_run(a: &Args, run: usize) -> RunResult {
    let base = std::env::var("BENCH_DIR").unwrap_or_else(|_| "target/bench-idle".into());
    let dir = Path::new(&base).join(format!("run{run}"));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    let spool_dir = dir.join("spool");
    let start_ms = support::now_ms() - 3_600_000;
    let mut g = gen::Gen::new(run as u64 + 1);
    for (k, f) in FILES.iter().enumerate() {
        let mut w = std::fs::File::create(dir.join("logs").join(f)).unwrap();
        let mut buf = String::new();
        for i in 0..PER_FILE {
            let ms = start_ms + (k as u64 * PER_FILE + i) as i64;
            buf.push_str(&gen::server_line(&mut g, ms).line);
            buf.push('\n');
        }
        w.write_all(buf.as_bytes()).unwrap();
    }
    let cfg = dir.join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "[source]\npaths = [\"{}/logs/*.log\"]\n[spool]\ndir = \"{}\"\n[api]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n[log]\nlevel = \"warn\"\n",
            dir.display(),
            spool_dir.display(),
        ),
    )
    .unwrap();
    let db = spool_dir.join("spool.db");
    let mut child = Command::new(&a.bin)
        .args(["-c", cfg.to_str().unwrap(), "run"])
        .stdin(Stdio::null())
        .spawn()
        .expect("start audit-relay");
    let pid = child.id();
    let total = PER_FILE * FILES.len() as u64;
    wait_for("the files to be stored", Duration::from_secs(60), || {
        events_stored(&db) >= total
    });
    std::thread::sleep(Duration::from_secs(a.settle));

    let threads0 = thread_ticks(pid);
    let t0 = process_ticks(pid);
    let started = Instant::now();
    std::thread::sleep(Duration::from_secs(a.seconds));
    let t1 = process_ticks(pid);
    let secs = started.elapsed().as_secs_f64();
    let threads1 = thread_ticks(pid);
    let cpu_pct = (t1 - t0) as f64 / TICKS / secs * 100.0;
    let mut busy: Vec<(String, f64)> = threads1
        .iter()
        .map(|(name, t)| {
            let before = threads0
                .iter()
                .find(|(n, _)| n == name)
                .map_or(0, |(_, b)| *b);
            (name.clone(), (t - before) as f64 / TICKS / secs * 100.0)
        })
        .filter(|(_, p)| *p > 0.0)
        .collect();
    busy.sort_by(|x, y| y.1.total_cmp(&x.1));
    busy.truncate(4);

    let mut latencies_ms = Vec::new();
    let before = events_stored(&db);
    for i in 0..a.appends {
        let stored = before + i as u64;
        let line = gen::server_line(&mut g, start_ms + 10_000_000 + i as i64).line;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join("logs").join(FILES[i % FILES.len()]))
            .unwrap();
        let at = Instant::now();
        f.write_all(format!("{line}\n").as_bytes()).unwrap();
        drop(f);
        wait_for("an appended line", Duration::from_secs(30), || {
            events_stored(&db) > stored
        });
        latencies_ms.push(at.elapsed().as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_secs(1));
    }
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    let lat: Vec<String> = latencies_ms.iter().map(|l| format!("{l:.0}")).collect();
    let busy: Vec<String> = busy.iter().map(|(n, p)| format!("{n} {p:.2}%")).collect();
    println!(
        "run {run}: idle CPU {cpu_pct:.2} % of a core over {secs:.1} s (3 files, api+admin on); busiest threads: [{}]; append → stored (ms): [{}]",
        busy.join(", "),
        lat.join(", ")
    );
    RunResult {
        cpu_pct,
        latencies_ms,
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let a = args();
    println!(
        "idle: bin {}, {} runs of {} s (after {} s settle), {} appends each",
        a.bin, a.runs, a.seconds, a.settle, a.appends
    );
    let results: Vec<RunResult> = (1..=a.runs).map(|r| one_run(&a, r)).collect();
    let cpu = median(results.iter().map(|r| r.cpu_pct).collect());
    let lats: Vec<f64> = results
        .iter()
        .flat_map(|r| r.latencies_ms.iter().copied())
        .collect();
    let max = lats.iter().copied().fold(0.0, f64::max);
    println!(
        "median idle CPU: {cpu:.2} % of a core; append → stored: median {:.0} ms, max {max:.0} ms ({} appends)",
        median(lats.clone()),
        lats.len()
    );
}
