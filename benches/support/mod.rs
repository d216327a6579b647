//! Pieces the benchmark binaries share: sample data, a pre-filled spool, process memory.

#![allow(dead_code)]

#[path = "../../tests/common/gen.rs"]
pub mod gen;

use audit_relay::config::{Durability, Envelope};
use audit_relay::event::{decode, Decoded, Event};
use audit_relay::spool::{AppendBatch, Spool};
use std::path::Path;
use std::time::Instant;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

pub fn decode_event(line: &str) -> Event {
    match decode(line.as_bytes(), Envelope::Auto) {
        Decoded::Event(e) => e,
        other => panic!("{other:?}"),
    }
}

/// Fills the spool in `dir` with `m` events spread over the 90 days before `end_ms`,
/// through the library (50k-event transactions, `os` durability).
pub fn fill_spool(dir: &Path, m: u64, end_ms: i64) {
    fill_spool_with(dir, m, end_ms, None)
}

/// Like [`fill_spool`], with an (unsigned) integrity checkpoint after every
/// `checkpoint_every` events, stamped with its last event's time, as the relay writes them.
pub fn fill_spool_with(dir: &Path, m: u64, end_ms: i64, checkpoint_every: Option<u64>) {
    fill_spool_over(dir, m, end_ms, 90 * 86_400_000, checkpoint_every)
}

/// Like [`fill_spool_with`], the events spread over the `span` ms before `end_ms`.
pub fn fill_spool_over(dir: &Path, m: u64, end_ms: i64, span: i64, checkpoint_every: Option<u64>) {
    let mut spool = Spool::open(dir, Durability::Os, 64 << 20).unwrap();
    let mut g = gen::Gen::new(0xfeed);
    let step = (span as f64 / m.max(1) as f64).max(1.0);
    let started = Instant::now();
    let mut i = 0u64;
    while i < m {
        let n = (m - i).min(checkpoint_every.unwrap_or(50_000).min(50_000));
        let events = (0..n)
            .map(|k| {
                let ms = end_ms - span + ((i + k) as f64 * step) as i64;
                decode_event(&gen::event_json(&mut g, ms).line)
            })
            .collect();
        let last_ms = end_ms - span + ((i + n - 1) as f64 * step) as i64;
        spool.begin().unwrap();
        spool
            .write(&AppendBatch {
                events,
                ..Default::default()
            })
            .unwrap();
        if checkpoint_every.is_some() {
            spool.write_checkpoint(None, last_ms).unwrap();
        }
        spool.commit().unwrap();
        i += n;
    }
    eprintln!(
        "filled the spool with {m} events in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// A `/proc/<pid>/status` field in KiB (`VmHWM:`, `VmRSS:`), 0 when unreadable.
pub fn status_kib(pid: u32, field: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The spool's `events` counter, read through its own read-only connection (0 before
/// the spool exists).
pub fn events_stored(db: &Path) -> u64 {
    let Ok(c) =
        rusqlite::Connection::open_with_flags(db, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
    else {
        return 0;
    };
    c.query_row(
        "SELECT value FROM counters WHERE name = 'events'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|v| v as u64)
    .unwrap_or(0)
}

/// What tests/common/postgres.rs needs of its siblings.
pub mod moto {
    pub fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }
}

/// A real PostgreSQL server (the tests' harness).
#[path = "../../tests/common/postgres.rs"]
pub mod postgres;

/// The benches' server settings, production-like: RDS gives shared_buffers a quarter of
/// the instance's memory (2 GB of an 8 GB one) and max_wal_size 2 GB; PostgreSQL's own
/// defaults (128 MB, 1 GB) are for a laptop.
pub const PRODUCTION_PG: &[&str] = &["shared_buffers=2GB", "max_wal_size=2GB"];

/// CPU seconds of every `postgres` process on the machine (the bench's server is the
/// only one running).
pub fn postgres_cpu() -> f64 {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == "postgres")
        })
        .map(process_cpu_secs)
        .sum()
}

/// CPU seconds (utime + stime) of a whole process from `/proc/<pid>/stat`, 0 when
/// unreadable.
pub fn process_cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    cpu_of_stat(&stat)
}

/// utime + stime in seconds of a `/proc/.../stat` line.
fn cpu_of_stat(stat: &str) -> f64 {
    // USER_HZ. Fields after the ")" that ends the command name: utime is the 12th,
    // stime the 13th.
    let tick = 100.0;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    if f.len() > 12 {
        (f[11] + f[12]) / tick
    } else {
        0.0
    }
}

/// CPU seconds (user + system) per thread name of a process.
pub fn thread_cpu_secs(pid: u32) -> Vec<(String, f64)> {
    let mut by_name: std::collections::BTreeMap<String, f64> = Default::default();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
        *by_name.entry(name.trim().to_string()).or_default() += cpu_of_stat(&stat);
    }
    by_name.into_iter().filter(|(_, s)| *s > 0.0).collect()
}

/// The load average line of `/proc/loadavg` (first three fields).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// A fresh Ed25519 key in `dir` (by `openssl genpkey`) and the `[integrity]` section
/// that signs checkpoints with it.
pub fn signing_key_section(dir: &Path) -> String {
    let key = dir.join("signing.pem");
    let ok = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&key)
        .status()
        .expect("openssl")
        .success();
    assert!(ok, "openssl genpkey");
    format!(
        "[integrity]\nsigning_key_file = {:?}\n",
        key.display().to_string()
    )
}
