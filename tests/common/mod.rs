//! Harness for the black-box tests: a temporary directory with a config file, the real
//! `audit-relay` binary, and read-only looks into the real SQLite spool.
//!
//! Nothing here waits a fixed time for an outcome: every "eventually" polls every 50 ms
//! up to a generous deadline, and a timeout fails with the relay's own log attached.

#![allow(dead_code)]

pub mod gen;
pub mod ldap;
pub mod moto;
pub mod postgres;
pub mod proxy;

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// Path of the binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_audit-relay");
/// Deadline for anything that should happen "soon".
pub const DEADLINE: Duration = Duration::from_secs(30);
/// Poll period of every wait.
pub const POLL: Duration = Duration::from_millis(50);
/// A fixed instant (2024-06-24T13:29:36.000Z) events are stamped from.
pub const BASE_MS: i64 = 1_719_235_776_000;

/// A temporary installation: `logs/` for sources, `spool/` for the spool, `relay.toml`.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub logs: PathBuf,
    pub spool_dir: PathBuf,
    pub config: PathBuf,
    runs: std::sync::atomic::AtomicU32,
}

impl Harness {
    /// Files `logs/*.log`, plain framing, auto envelope, fast polling and commits.
    pub fn new() -> Harness {
        Harness::with(&[], &[])
    }

    /// Like [`Harness::new`], with extra `key = value` lines in `[source]` and `[spool]`
    /// (a key given here replaces the default one).
    pub fn with(source: &[&str], spool: &[&str]) -> Harness {
        let dir = tempfile::Builder::new()
            .prefix("audit-relay-test")
            .tempdir()
            .expect("temp dir");
        let logs = dir.path().join("logs");
        std::fs::create_dir_all(&logs).unwrap();
        let h = Harness {
            spool_dir: dir.path().join("spool"),
            config: dir.path().join("relay.toml"),
            logs,
            dir,
            runs: std::sync::atomic::AtomicU32::new(0),
        };
        h.write_config(&h.config_text(source, spool));
        h
    }

    /// The config text [`Harness::with`] writes.
    pub fn config_text(&self, source: &[&str], spool: &[&str]) -> String {
        let pattern = format!("{}/*.log", self.logs.display());
        let mut src = vec![
            format!("paths = [{pattern:?}]"),
            "poll_interval = \"50ms\"".to_string(),
            "rotate_wait = \"300ms\"".to_string(),
        ];
        let mut sp = vec![
            format!("dir = {:?}", self.spool_dir.display().to_string()),
            "commit_interval = \"20ms\"".to_string(),
        ];
        merge(&mut src, source);
        merge(&mut sp, spool);
        format!(
            "shutdown_grace = \"20s\"\n\n[source]\n{}\n\n[spool]\n{}\n\n[log]\nlevel = \"info\"\n",
            src.join("\n"),
            sp.join("\n")
        )
    }

    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).unwrap();
    }

    /// A path inside `logs/`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs.join(name)
    }

    /// `audit-relay -c CONFIG ARGS…`, run to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("-c")
            .arg(&self.config)
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("AUDIT_RELAY_CONFIG")
            .output()
            .expect("run audit-relay")
    }

    /// `audit-relay -c CONFIG ARGS…`; asserts exit 0 and returns standard output.
    pub fn cli_ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "audit-relay {args:?} failed: {:?}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("UTF-8 output")
    }

    /// Starts `audit-relay run`; its standard error goes to a file in the temp dir.
    pub fn start(&self) -> Relay {
        self.start_with_stdin(Stdio::null())
    }

    pub fn start_with_stdin(&self, stdin: Stdio) -> Relay {
        let n = self.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let stderr_path = self.dir.path().join(format!("relay-{n}.stderr"));
        let stderr = File::create(&stderr_path).unwrap();
        let child = Command::new(BIN)
            .arg("-c")
            .arg(&self.config)
            .arg("run")
            .env_remove("RUST_LOG")
            .env_remove("AUDIT_RELAY_CONFIG")
            .stdin(stdin)
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("spawn audit-relay run");
        Relay {
            child: Some(child),
            stderr: stderr_path,
        }
    }

    pub fn db_path(&self) -> PathBuf {
        self.spool_dir.join("spool.db")
    }

    /// A read-only connection to the spool, or `None` while it does not exist.
    pub fn db(&self) -> Option<rusqlite::Connection> {
        let path = self.db_path();
        if !path.exists() {
            return None;
        }
        let conn = rusqlite::Connection::open_with_flags(
            &path,
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .ok()?;
        conn.busy_timeout(Duration::from_secs(10)).unwrap();
        Some(conn)
    }

    /// Rows in `events` (0 while the spool or its schema does not exist yet).
    pub fn count(&self) -> u64 {
        self.db()
            .and_then(|c| {
                c.query_row("SELECT count(*) FROM events WHERE org != 0", [], |r| {
                    r.get::<_, i64>(0)
                })
                .ok()
            })
            .unwrap_or(0) as u64
    }

    /// The spool's `events` counter: events stored, read from one row. Unlike
    /// [`Harness::count`], which scans the table, it keeps no read transaction open long
    /// enough to stop the relay's WAL from restarting; for polling while it ingests.
    pub fn stored(&self) -> u64 {
        self.db()
            .and_then(|c| {
                c.query_row(
                    "SELECT value FROM counters WHERE name = 'events'",
                    [],
                    |r| r.get::<_, i64>(0),
                )
                .ok()
            })
            .unwrap_or(0) as u64
    }

    /// Rows in `quarantine` (0 while the spool does not exist yet).
    pub fn quarantined(&self) -> u64 {
        self.db()
            .and_then(|c| {
                c.query_row("SELECT count(*) FROM quarantine", [], |r| {
                    r.get::<_, i64>(0)
                })
                .ok()
            })
            .unwrap_or(0) as u64
    }

    /// `(count(*), count(DISTINCT id))` of `events`.
    pub fn counts(&self) -> (u64, u64) {
        let c = self.db().expect("spool exists");
        c.query_row(
            "SELECT count(*), count(DISTINCT id) FROM events WHERE org != 0",
            [],
            |r| Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64)),
        )
        .unwrap()
    }

    /// Every stored event id, as a UUID string (lowercase, hyphenated).
    pub fn ids(&self) -> Vec<String> {
        let c = self.db().expect("spool exists");
        let mut stmt = c.prepare("SELECT id FROM events WHERE org != 0").unwrap();
        let rows = stmt
            .query_map([], |r| r.get::<_, Vec<u8>>(0))
            .unwrap()
            .map(|b| {
                uuid::Uuid::from_slice(&b.unwrap())
                    .expect("16-byte id")
                    .to_string()
            })
            .collect();
        rows
    }

    /// The stored body (event JSON) of one event.
    pub fn body(&self, id: &str) -> Option<String> {
        let c = self.db().expect("spool exists");
        let id = uuid::Uuid::parse_str(id).unwrap();
        c.query_row(
            "SELECT body FROM events WHERE id = ?1",
            [id.as_bytes().as_slice()],
            |r| r.get(0),
        )
        .ok()
    }

    /// Every quarantine row, oldest first.
    pub fn quarantine_rows(&self) -> Vec<QRow> {
        let Some(c) = self.db() else {
            return Vec::new();
        };
        let mut stmt = c
            .prepare("SELECT reason, source, offset, raw FROM quarantine ORDER BY qid")
            .unwrap();
        let rows = stmt
            .query_map([], |r| {
                Ok(QRow {
                    reason: r.get(0)?,
                    source: r.get(1)?,
                    offset: r.get::<_, i64>(2)? as u64,
                    raw: r.get(3)?,
                })
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows
    }

    /// `audit-relay spool stats --json`, parsed.
    /// The spool's last sequence number (every row: events, checkpoints, ledger rows).
    pub fn spool_last_seq(&self) -> i64 {
        self.db()
            .and_then(|c| {
                c.query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                    r.get(0)
                })
                .ok()
            })
            .unwrap_or(0)
    }

    pub fn stats(&self) -> serde_json::Value {
        let out = self.cli_ok(&["spool", "stats", "--json"]);
        serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("stats JSON {out:?}: {e}"))
    }

    /// One counter of `spool stats --json`.
    pub fn stat(&self, key: &str) -> u64 {
        let s = self.stats();
        s[key]
            .as_u64()
            .unwrap_or_else(|| panic!("stats key {key} missing or not a number: {s}"))
    }

    /// Waits until `cond` holds; the relay (if any) must stay alive meanwhile.
    pub fn wait_until(
        &self,
        relay: Option<&mut Relay>,
        what: &str,
        deadline: Duration,
        mut cond: impl FnMut() -> bool,
    ) {
        let start = Instant::now();
        let mut relay = relay;
        loop {
            if cond() {
                return;
            }
            if let Some(r) = relay.as_deref_mut() {
                if let Some(status) = r.try_wait() {
                    panic!(
                        "audit-relay exited ({status:?}) while waiting for {what}\n--- relay log ---\n{}",
                        r.log()
                    );
                }
            }
            if start.elapsed() > deadline {
                let log = relay.map(|r| r.log()).unwrap_or_default();
                panic!(
                    "timed out after {deadline:?} waiting for {what} (events {}, quarantined {})\n--- relay log ---\n{log}",
                    self.count(),
                    self.quarantined()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Waits until the spool holds at least `n` events.
    pub fn wait_events(&self, relay: &mut Relay, n: u64) {
        self.wait_until(Some(relay), &format!("{n} events"), DEADLINE, || {
            self.count() >= n
        });
    }

    /// Waits until quarantine holds at least `n` rows.
    pub fn wait_quarantined(&self, relay: &mut Relay, n: u64) {
        self.wait_until(
            Some(relay),
            &format!("{n} quarantined records"),
            DEADLINE,
            || self.quarantined() >= n,
        );
    }
}

impl Default for Harness {
    fn default() -> Self {
        Harness::new()
    }
}

/// Replaces or adds `key = value` lines.
fn merge(lines: &mut Vec<String>, extra: &[&str]) {
    for e in extra {
        let key = e.split('=').next().unwrap().trim();
        lines.retain(|l| l.split('=').next().unwrap().trim() != key);
        lines.push(e.to_string());
    }
}

/// A quarantine row as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QRow {
    pub reason: String,
    pub source: String,
    pub offset: u64,
    pub raw: Vec<u8>,
}

/// A running `audit-relay run`. Dropping it kills the process.
pub struct Relay {
    child: Option<Child>,
    stderr: PathBuf,
}

impl Relay {
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Where the relay's standard error goes.
    pub fn log_path(&self) -> PathBuf {
        self.stderr.clone()
    }

    /// The relay's standard error so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The exit status, if it has exited.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        self.child.as_mut()?.try_wait().expect("try_wait")
    }

    /// Waits for the process to exit by itself (within `deadline`).
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.try_wait() {
                self.child = None;
                return s;
            }
            if start.elapsed() > deadline {
                panic!(
                    "audit-relay did not exit within {deadline:?}\n--- relay log ---\n{}",
                    self.log()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Sends SIGTERM and waits for the exit; asserts exit code 0.
    pub fn terminate(mut self) {
        let pid = self.pid().to_string();
        let st = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(st.success(), "kill -TERM {pid} failed");
        let status = self.wait_exit(DEADLINE);
        assert_eq!(
            status.code(),
            Some(0),
            "audit-relay did not exit 0 after SIGTERM: {status:?}\n--- relay log ---\n{}",
            self.log()
        );
    }

    /// SIGKILL: no chance to commit or clean up.
    pub fn kill(mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reap");
        }
    }

    /// Takes the child's standard input (when started with a pipe).
    pub fn take_stdin(&mut self) -> Option<std::process::ChildStdin> {
        self.child.as_mut()?.stdin.take()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Opens (creating) a file for appending.
/// The seed of a test's random choices: `AUDIT_RELAY_TEST_SEED`, or the clock; printed
/// so that a failing run can be repeated.
#[allow(dead_code)]
pub fn test_seed() -> u64 {
    let seed = std::env::var("AUDIT_RELAY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("AUDIT_RELAY_TEST_SEED={seed}");
    seed
}

/// The spool's WAL file size, and its checkpoint sequence number: SQLite adds one each
/// time it restarts the WAL from its beginning (reused, not grown).
#[allow(dead_code)]
pub fn wal_state(spool_dir: &Path) -> (u64, u32) {
    use std::io::Read;
    let wal = spool_dir.join("spool.db-wal");
    let mut head = [0u8; 16];
    let seq = File::open(&wal)
        .and_then(|mut f| f.read_exact(&mut head))
        .map_or(0, |()| u32::from_be_bytes(head[12..16].try_into().unwrap()));
    (std::fs::metadata(wal).map_or(0, |m| m.len()), seq)
}

pub fn append_to(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

/// Writes `lines`, each followed by `\n`, in one write.
pub fn write_lines(f: &mut File, lines: &[String]) {
    let mut buf = Vec::with_capacity(lines.iter().map(|l| l.len() + 1).sum());
    for l in lines {
        buf.extend_from_slice(l.as_bytes());
        buf.push(b'\n');
    }
    f.write_all(&buf).unwrap();
}

/// `n` server-log lines stamped from `BASE_MS + first`; returns (ids, lines).
pub fn server_lines(g: &mut gen::Gen, first: i64, n: usize) -> (Vec<String>, Vec<String>) {
    let mut ids = Vec::with_capacity(n);
    let mut lines = Vec::with_capacity(n);
    for i in 0..n as i64 {
        let s = gen::server_line(g, BASE_MS + first + i);
        ids.push(s.id);
        lines.push(s.line);
    }
    (ids, lines)
}

/// Asserts that the spool holds exactly `expected` ids, each once.
pub fn assert_exactly_once(h: &Harness, expected: &HashSet<String>) {
    let (rows, distinct) = h.counts();
    assert_eq!(rows, distinct, "an id is stored more than once");
    let stored: HashSet<String> = h.ids().into_iter().collect();
    let missing: Vec<&String> = expected.difference(&stored).take(5).collect();
    let extra: Vec<&String> = stored.difference(expected).take(5).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "stored ids differ from written ids: {} missing (e.g. {missing:?}), {} unexpected (e.g. {extra:?})",
        expected.difference(&stored).count(),
        stored.difference(expected).count()
    );
    assert_eq!(rows, expected.len() as u64);
}

/// The address the relay logged on the line holding `message` (`… addr=HOST:PORT`),
/// waiting for it; for listeners bound to port 0.
pub fn logged_addr(relay: &Relay, message: &str) -> String {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let log = relay.log();
        if let Some(i) = log.find(message) {
            let line = &log[i..log[i..].find('\n').map(|e| i + e).unwrap_or(log.len())];
            let addr = line.split("addr=").nth(1).expect("addr field");
            return addr.split_whitespace().next().unwrap().to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {message:?} line in log:\n{log}"
        );
        std::thread::sleep(POLL);
    }
}

/// The admin listener's address.
pub fn admin_addr(relay: &Relay) -> String {
    logged_addr(relay, "admin endpoints listening")
}

/// A plain HTTP/1.1 GET that closes the connection; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().expect("status code");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A PKCS#8 v1 PEM Ed25519 private key from 32 seed bytes (what `openssl genpkey
/// -algorithm ed25519` writes).
pub fn ed25519_pem(seed: [u8; 32]) -> String {
    use base64::Engine;
    let mut der = vec![
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20,
    ];
    der.extend_from_slice(&seed);
    format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(der)
    )
}

/// Recomputes the stored chain hashes of the spool in `dir` from `from` on, as an intruder
/// who knows the encoding could, and `meta.chain_head`; with `resign`, every checkpoint row
/// after `from` is signed again (same time, new chain head). Returns how many were.
pub fn rechain(dir: &Path, from: i64, resign: Option<&audit_relay::integrity::Signer>) -> usize {
    let c = rusqlite::Connection::open(dir.join("spool.db")).unwrap();
    let mut prev: [u8; 32] = c
        .query_row("SELECT hash FROM events WHERE seq = ?1", [from - 1], |r| {
            r.get::<_, Vec<u8>>(0)
        })
        .map(|v| v.try_into().unwrap())
        .unwrap_or(audit_relay::integrity::GENESIS);
    let mut rows = Vec::new();
    audit_relay::spool::Spool::open_read_only(dir)
        .unwrap()
        .chain_each(from, i64::MAX, |r| {
            rows.push(r);
            std::ops::ControlFlow::Continue(())
        })
        .unwrap();
    let mut resigned = 0;
    c.execute_batch("BEGIN").unwrap();
    for mut r in rows {
        if let (Some(signer), true) = (resign, r.is_checkpoint()) {
            let old: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(old["sequence"], r.seq - 1);
            r.body = signer.sign(r.seq - 1, prev, r.ts_ms).to_json();
            assert_ne!(
                old,
                serde_json::from_str::<serde_json::Value>(&r.body).unwrap()
            );
            c.execute(
                "UPDATE events SET body = ?2 WHERE seq = ?1",
                rusqlite::params![r.seq, r.body],
            )
            .unwrap();
            resigned += 1;
        }
        prev = r.hash_at(&prev, r.seq);
        c.execute(
            "UPDATE events SET hash = ?2 WHERE seq = ?1",
            rusqlite::params![r.seq, prev.as_slice()],
        )
        .unwrap();
    }
    c.execute(
        "UPDATE meta SET value = ?1 WHERE key = 'chain_head'",
        [prev.as_slice()],
    )
    .unwrap();
    c.execute_batch("COMMIT").unwrap();
    resigned
}

/// Polls `f` every 100 ms until it holds; past `deadline` fails naming `what`, with the
/// relays' logs attached.
pub fn wait_for(what: &str, deadline: Duration, mut f: impl FnMut() -> bool, logs: &[&Relay]) {
    let start = std::time::Instant::now();
    while !f() {
        if start.elapsed() > deadline {
            let logs: Vec<String> = logs.iter().map(|r| r.log()).collect();
            panic!(
                "timed out waiting for {what}\n--- relay logs ---\n{}",
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// GitHub's anchor for a heading: lower case, punctuation other than `-` and `_` dropped,
/// spaces to `-`.
pub fn github_anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || *c == ' ' || *c == '-' || *c == '_')
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}
