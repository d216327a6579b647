//! The CloudWatch Logs emulator (moto server) for the forwarding tests, a small blocking
//! HTTP client to read it back, and the relay started with AWS settings that point at it.
//!
//! moto is found in `MOTO_SERVER` (set by `scripts/test`), else in `<repo>/.venv/bin`.
//! Each test starts its own server on a free loopback port; it is stopped when the
//! [`Moto`] is dropped, and also when the test process dies (it is started under a
//! shell that kills it once its standard input, a pipe from the test, closes).

#![allow(dead_code)]

use super::{Harness, Relay, BIN, POLL};
use serde_json::{json, Value};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Host name the relay gets (`HOSTNAME`), hence its stream name (`{hostname}`).
pub const HOSTNAME: &str = "relay-test-host";

/// The moto server binary, or a panic that says how to install it.
pub fn moto_server_path() -> PathBuf {
    if let Some(p) = std::env::var_os("MOTO_SERVER").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        assert!(
            p.exists(),
            "MOTO_SERVER={} does not exist; run scripts/emulator install",
            p.display()
        );
        return p;
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/moto_server");
    assert!(
        p.exists(),
        "the CloudWatch Logs emulator is not installed: neither MOTO_SERVER is set nor {} exists; \
         run scripts/emulator install (scripts/test does it)",
        p.display()
    );
    p
}

/// A free TCP port on 127.0.0.1 (free when this returns; taken by the caller soon after).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .unwrap()
        .port()
}

/// A running moto server.
pub struct Moto {
    pub addr: SocketAddr,
    child: Option<Child>,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Moto {
    /// Starts moto on a free port and waits until `GET /moto-api/` answers 200.
    pub fn start() -> Moto {
        let bin = moto_server_path();
        let dir = tempfile::Builder::new()
            .prefix("moto")
            .tempdir()
            .expect("temp dir");
        let log = dir.path().join("moto.log");
        for _attempt in 0..3 {
            let port = free_port();
            // `read` returns when the test process closes the pipe (drop, or death).
            let mut child = Command::new("sh")
                .arg("-c")
                .arg(r#""$0" -H 127.0.0.1 -p "$1" </dev/null >>"$2" 2>&1 & pid=$!; read _ignored; kill $pid; wait $pid"#)
                .arg(&bin)
                .arg(port.to_string())
                .arg(&log)
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn moto_server");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(30) {
                if let Ok(r) = http(addr, "GET", "/moto-api/", &[], b"") {
                    if r.status == 200 {
                        return Moto {
                            addr,
                            child: Some(child),
                            log,
                            _dir: dir,
                        };
                    }
                }
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port taken meanwhile, most likely: try another
                }
                std::thread::sleep(POLL);
            }
            drop(child.stdin.take());
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!(
            "moto_server ({}) did not become ready\n--- moto log ---\n{}",
            bin.display(),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
    }

    /// `http://127.0.0.1:PORT`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// One CloudWatch Logs API call (JSON 1.1); `Err((status, body))` on an error answer.
    pub fn logs(&self, op: &str, body: &Value) -> Result<Value, (u16, String)> {
        logs_call(self.addr, op, body)
    }

    /// Every event of a stream, oldest first, paging with `nextForwardToken` until it
    /// repeats.
    pub fn events(&self, group: &str, stream: &str) -> Vec<CwEvent> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut req =
                json!({"logGroupName": group, "logStreamName": stream, "startFromHead": true});
            if let Some(t) = &token {
                req["nextToken"] = json!(t);
            }
            let page = self
                .logs("GetLogEvents", &req)
                .unwrap_or_else(|e| panic!("GetLogEvents {group} {stream}: {e:?}"));
            for e in page["events"].as_array().expect("events array") {
                out.push(CwEvent {
                    timestamp: e["timestamp"].as_i64().expect("timestamp"),
                    message: e["message"].as_str().expect("message").to_string(),
                });
            }
            let next = page["nextForwardToken"]
                .as_str()
                .expect("nextForwardToken")
                .to_string();
            if token.as_deref() == Some(next.as_str()) {
                return out;
            }
            token = Some(next);
        }
    }

    /// Names of the log groups.
    pub fn groups(&self) -> Vec<String> {
        let r = self
            .logs("DescribeLogGroups", &json!({}))
            .expect("DescribeLogGroups");
        r["logGroups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["logGroupName"].as_str().unwrap().to_string())
            .collect()
    }

    pub fn delete_group(&self, group: &str) {
        self.logs("DeleteLogGroup", &json!({ "logGroupName": group }))
            .unwrap_or_else(|e| panic!("DeleteLogGroup {group}: {e:?}"));
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            drop(c.stdin.take()); // the shell kills moto and exits
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(POLL);
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// An event as GetLogEvents returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CwEvent {
    pub timestamp: i64,
    pub message: String,
}

impl CwEvent {
    /// The message parsed as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.message)
            .unwrap_or_else(|e| panic!("message is not JSON ({e}): {:?}", self.message))
    }

    /// Whether the message is one of the spool's integrity checkpoints
    /// (`"type":"checkpoint"`, no `id`) rather than an audit event.
    pub fn is_checkpoint(&self) -> bool {
        is_checkpoint_message(&self.json())
    }

    /// The `id` field of the message.
    pub fn id(&self) -> String {
        self.json()["id"]
            .as_str()
            .unwrap_or_else(|| panic!("message without an id: {:?}", self.message))
            .to_string()
    }
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request on its own connection (`Connection: close`).
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpResponse> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes())?;
    s.write_all(body)?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// Parses a whole response read up to the connection's close.
pub fn parse_response(raw: &[u8]) -> std::io::Result<HttpResponse> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let end = find(raw, b"\r\n\r\n").ok_or_else(|| bad("no end of headers"))?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| bad("headers not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or_else(|| bad("empty answer"))?;
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| bad("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[end + 4..].to_vec();
    let r = HttpResponse {
        status,
        headers,
        body: Vec::new(),
    };
    if r.header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        body = dechunk(&body).ok_or_else(|| bad("bad chunked body"))?;
    } else if let Some(n) = r
        .header("content-length")
        .and_then(|v| v.parse::<usize>().ok())
    {
        if body.len() < n {
            return Err(bad("body shorter than Content-Length"));
        }
        body.truncate(n);
    }
    Ok(HttpResponse { body, ..r })
}

fn dechunk(mut b: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let eol = find(b, b"\r\n")?;
        let size_text = std::str::from_utf8(&b[..eol]).ok()?;
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        b = &b[eol + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(b.get(..size)?);
        b = b.get(size + 2..)?;
    }
}

pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// One CloudWatch Logs call against `addr`. moto routes a request by the service in its
/// `Authorization` header, so a dummy (unchecked) SigV4 header is sent.
pub fn logs_call(addr: SocketAddr, op: &str, body: &Value) -> Result<Value, (u16, String)> {
    let target = format!("Logs_20140328.{op}");
    let body = serde_json::to_vec(body).unwrap();
    let r = http(
        addr,
        "POST",
        "/",
        &[
            ("X-Amz-Target", &target),
            ("Content-Type", "application/x-amz-json-1.1"),
            (
                "Authorization",
                "AWS4-HMAC-SHA256 Credential=test/20240101/us-east-1/logs/aws4_request, SignedHeaders=host, Signature=00",
            ),
        ],
        &body,
    )
    .unwrap_or_else(|e| panic!("{op} to {addr}: {e}"));
    let text = String::from_utf8_lossy(&r.body).to_string();
    if r.status != 200 {
        return Err((r.status, text));
    }
    if text.trim().is_empty() {
        return Ok(Value::Null); // e.g. DeleteLogGroup
    }
    Ok(serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{op}: answer not JSON ({e}): {text}")))
}

/// A `[cloudwatch]` section pointing at `endpoint`, fast retries, plus `extra` lines.
pub fn cloudwatch_section(endpoint: &str, group: &str, extra: &[&str]) -> String {
    let mut s = format!(
        "\n[cloudwatch]\nregion = \"us-east-1\"\nendpoint = {endpoint:?}\nlog_group = {group:?}\n\
         log_stream = \"{{hostname}}\"\nmax_batch_wait = \"100ms\"\nbackoff_max = \"1s\"\n\
         auth_retry_interval = \"1s\"\nconnect_timeout = \"1s\"\nrequest_timeout = \"10s\"\n"
    );
    for e in extra {
        s.push_str(e);
        s.push('\n');
    }
    s
}

/// Writes the harness's default config plus a `[cloudwatch]` section.
pub fn configure(h: &Harness, endpoint: &str, group: &str, extra: &[&str]) {
    h.write_config(&(h.config_text(&[], &[]) + &cloudwatch_section(endpoint, group, extra)));
}

/// `audit-relay -c CONFIG` with static test credentials, no AWS profile and `HOSTNAME`.
pub fn relay_command(h: &Harness) -> Command {
    let mut c = Command::new(BIN);
    c.arg("-c")
        .arg(&h.config)
        .env_remove("RUST_LOG")
        .env_remove("AUDIT_RELAY_CONFIG")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_ROLE_ARN")
        .env_remove("AWS_WEB_IDENTITY_TOKEN_FILE")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", h.dir.path().join("no-aws-config"))
        .env(
            "AWS_SHARED_CREDENTIALS_FILE",
            h.dir.path().join("no-aws-credentials"),
        )
        .env("HOSTNAME", HOSTNAME);
    c
}

/// Starts `audit-relay run` with static test credentials and `HOSTNAME`.
pub fn start_relay(h: &Harness) -> Relay {
    start_relay_with(h, &[])
}

/// [`start_relay`] with more (or other) environment variables.
pub fn start_relay_with(h: &Harness, env: &[(&str, &str)]) -> Relay {
    let n = h.runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let stderr_path = h.dir.path().join(format!("relay-{n}.stderr"));
    let stderr = File::create(&stderr_path).unwrap();
    let child = relay_command(h)
        .envs(env.iter().copied())
        .arg("run")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("spawn audit-relay run");
    Relay {
        child: Some(child),
        stderr: stderr_path,
    }
}

/// `(last_seq, forwarded_seq)` read straight from the spool (`(0, 0)` before it exists).
pub fn forward_state(h: &Harness) -> (i64, i64) {
    let Some(c) = h.db() else {
        return (0, 0);
    };
    let last = c
        .query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
            r.get::<_, i64>(0)
        })
        .unwrap_or(0);
    let fwd = c
        .query_row(
            "SELECT seq FROM cursors WHERE name = 'cloudwatch'",
            [],
            |r| r.get::<_, i64>(0),
        )
        .unwrap_or(0);
    (last, fwd)
}

/// Waits until the forwarder's cursor reaches `seq`.
pub fn wait_forwarded(h: &Harness, relay: &mut Relay, seq: i64, deadline: Duration) {
    h.wait_until(
        Some(relay),
        &format!("forwarded cursor at {seq}"),
        deadline,
        || forward_state(h).1 >= seq,
    );
}

/// Whether a parsed CloudWatch message is an integrity checkpoint: `"type":"checkpoint"`
/// and no `id` (audit events always have an `id` and never a `type`).
pub fn is_checkpoint_message(m: &Value) -> bool {
    m.get("id").is_none() && m["type"] == "checkpoint"
}

/// The ids of the audit events among `cw`, in the order read back; checkpoint messages
/// are left out (and a message that is neither fails the test).
pub fn event_ids(cw: &[CwEvent]) -> Vec<String> {
    cw.iter()
        .filter(|e| !e.is_checkpoint())
        .map(CwEvent::id)
        .collect()
}

/// The checkpoint messages among `cw`, in the order read back.
pub fn checkpoint_messages(cw: &[CwEvent]) -> Vec<CwEvent> {
    cw.iter().filter(|e| e.is_checkpoint()).cloned().collect()
}

/// Waits until the spool holds at least `events` audit events and the forwarder's cursor
/// has reached `meta.last_seq` (checkpoint rows count in both, and one may be added at
/// any commit, so the two are read again on every poll); returns `(last_seq, cursor)`.
pub fn wait_all_forwarded(
    h: &Harness,
    relay: &mut Relay,
    events: u64,
    deadline: Duration,
) -> (i64, i64) {
    let mut state = (0, 0);
    h.wait_until(
        Some(relay),
        &format!("{events} events stored and the forwarded cursor at last_seq"),
        deadline,
        || {
            if h.count() < events {
                return false;
            }
            // last_seq first: the cursor read after it only moves forward.
            state = forward_state(h);
            state.1 >= state.0
        },
    );
    state
}

/// A checkpoint row of the spool (`org = 0`, `action = 'checkpoint'`; forwarding-ledger
/// rows, `action = 'rejected'`, are not sent).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolCheckpoint {
    pub seq: i64,
    pub ts_ms: i64,
    pub body: String,
}

/// Every checkpoint row of the spool, in sequence order.
pub fn spool_checkpoints(h: &Harness) -> Vec<SpoolCheckpoint> {
    let c = h.db().expect("spool exists");
    let mut stmt = c
        .prepare(
            "SELECT seq, ts_ms, body FROM events WHERE org = 0 AND action = 'checkpoint' ORDER BY seq",
        )
        .unwrap();
    let rows = stmt
        .query_map([], |r| {
            Ok(SpoolCheckpoint {
                seq: r.get(0)?,
                ts_ms: r.get(1)?,
                body: r.get(2)?,
            })
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows
}

/// After the relay stopped: every audit event was forwarded, and whatever lies past the
/// cursor is at most one checkpoint row (the one written at shutdown, after the forwarder
/// stopped; the next run sends it). Checks `spool stats` agrees; returns
/// `(last_seq, cursor)`.
pub fn assert_only_shutdown_checkpoint_unforwarded(h: &Harness) -> (i64, i64) {
    let (last, fwd) = forward_state(h);
    let c = h.db().expect("spool exists");
    let past: Vec<(i64, i64)> = {
        let mut stmt = c
            .prepare("SELECT seq, org FROM events WHERE seq > ?1 ORDER BY seq")
            .unwrap();
        let rows = stmt
            .query_map([fwd], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        rows
    };
    assert!(
        past.iter().all(|(_, org)| *org == 0),
        "audit events left unforwarded past the cursor {fwd} (last_seq {last}): {past:?}"
    );
    assert!(
        past.len() <= 1 && last - fwd == past.len() as i64,
        "more than the shutdown checkpoint past the cursor {fwd} (last_seq {last}): {past:?}"
    );
    let stats = h.stats();
    assert_eq!(stats["last_seq"], last, "{stats}");
    assert_eq!(stats["forwarded_seq"], fwd, "{stats}");
    assert_eq!(stats["unforwarded"], past.len() as u64, "{stats}");
    (last, fwd)
}

/// Asserts that the checkpoint messages read back from one stream (`cw`, in the order
/// read) are exactly the spool's checkpoint rows up to `cursor`, each once, in sequence
/// order: same timestamp, `type` "checkpoint", and the stored body (plus `static_keys`,
/// which the forwarder adds to every message). Returns how many there are.
pub fn assert_checkpoints_forwarded(
    h: &Harness,
    cw: &[CwEvent],
    cursor: i64,
    static_keys: &[&str],
    what: &str,
) -> usize {
    let want: Vec<SpoolCheckpoint> = spool_checkpoints(h)
        .into_iter()
        .filter(|c| c.seq <= cursor)
        .collect();
    let got = checkpoint_messages(cw);
    let sequence = |m: &Value| -> i64 {
        m["sequence"]
            .as_i64()
            .unwrap_or_else(|| panic!("{what}: checkpoint without a sequence: {m}"))
    };
    let got_seqs: Vec<i64> = got.iter().map(|m| sequence(&m.json())).collect();
    let want_seqs: Vec<i64> = want
        .iter()
        .map(|c| sequence(&serde_json::from_str(&c.body).expect("checkpoint body is JSON")))
        .collect();
    assert_eq!(
        got_seqs, want_seqs,
        "{what}: checkpoint messages in CloudWatch (by sequence) differ from the spool's checkpoint rows up to the cursor {cursor}"
    );
    for (m, row) in got.iter().zip(&want) {
        assert_eq!(
            m.timestamp, row.ts_ms,
            "{what}: timestamp of the checkpoint at seq {}",
            row.seq
        );
        let mut j = m.json();
        assert_eq!(j["type"], "checkpoint", "{what}: {j}");
        let obj = j.as_object_mut().unwrap();
        for k in static_keys {
            assert!(
                obj.remove(*k).is_some(),
                "{what}: checkpoint at seq {} without the static field {k}",
                row.seq
            );
        }
        let body: Value = serde_json::from_str(&row.body).unwrap();
        assert_eq!(
            j, body,
            "{what}: message of the checkpoint at seq {} is its stored body",
            row.seq
        );
    }
    got.len()
}

/// Every event id of the spool in sequence order, with its sequence number.
pub fn spool_order(h: &Harness) -> Vec<(i64, String)> {
    let c = h.db().expect("spool exists");
    let mut stmt = c
        .prepare("SELECT seq, id FROM events WHERE org != 0 ORDER BY seq")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?)))
        .unwrap()
        .map(|r| {
            let (seq, b) = r.unwrap();
            (seq, uuid::Uuid::from_slice(&b).unwrap().to_string())
        })
        .collect();
    rows
}

/// `(seq, reason)` of every `rejected` row.
pub fn rejected_rows(h: &Harness) -> Vec<(i64, String)> {
    let c = h.db().expect("spool exists");
    let mut stmt = c
        .prepare("SELECT seq, reason FROM rejected ORDER BY seq")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows
}

/// Now, in ms since the epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Asserts that `got` (ids read back from CloudWatch) is exactly `want`, in order.
pub fn assert_same_sequence(got: &[String], want: &[String], what: &str) {
    if got == want {
        return;
    }
    let first_diff = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    let got_set: std::collections::HashSet<&String> = got.iter().collect();
    let want_set: std::collections::HashSet<&String> = want.iter().collect();
    panic!(
        "{what}: CloudWatch holds {} events, expected {}; {} expected ids missing, {} unexpected, \
         {} duplicated; first difference at index {first_diff}: got {:?}, expected {:?}",
        got.len(),
        want.len(),
        want_set.difference(&got_set).count(),
        got_set.difference(&want_set).count(),
        got.len() - got_set.len(),
        got.get(first_diff),
        want.get(first_diff)
    );
}
