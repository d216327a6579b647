//! A fault-injecting HTTP proxy between the relay and moto (blocking, std::net only).
//!
//! Each request is read whole (headers and `Content-Length` body), forwarded to moto on
//! its own connection, and answered with `Connection: close`. Every PutLogEvents request
//! is recorded with what happened to it, so tests can check each call against
//! CloudWatch's rules (which moto does not enforce) and explain every duplicate.
//!
//! Every request of any kind is also recorded as `(operation, JSON body)` ([`Proxy::ops`];
//! PutLogEvents with a null body, its events being in [`Proxy::calls`]).
//! The query-definition and index-policy calls moto does not implement
//! (DescribeQueryDefinitions, PutQueryDefinition, PutIndexPolicy) are answered by the
//! proxy itself from a small store of its own, as CloudWatch documents them; its
//! DescribeQueryDefinitions pages by 3 whatever maxResults asks, so that paging is seen.
//!
//! Faults are dealt to PutLogEvents requests from a shuffled deck of 50 cards per round,
//! so that the rates hold exactly over every 50 calls and even a short test sees each
//! fault (the first round deals one of each within its first 8 calls).

#![allow(dead_code)]

use super::gen::Gen;
use super::moto::{find, parse_response};
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the proxy does with every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Forward, with the configured fault rates.
    Normal,
    /// The emulator is "stopped": every connection is closed at once, unread.
    Down,
    /// Answer 403 AccessDeniedException without forwarding.
    AccessDenied,
    /// Answer 400 UnrecognizedClientException without forwarding.
    UnrecognizedClient,
}

/// Faults per 50 requests (the rest pass).
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    pub throttle: usize,
    pub server_error: usize,
    /// Forwarded (moto stores the call) but the connection is closed without an answer.
    pub drop_answer: usize,
}

/// What happened to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Not decided yet (the request is being forwarded).
    Pending,
    /// Forwarded; moto answered with this status, passed back.
    Passed(u16),
    /// Answered 400 ThrottlingException, not forwarded.
    Throttled,
    /// Answered 500, not forwarded.
    ServerError,
    /// Forwarded; moto answered with this status; the answer was not passed back.
    Dropped(u16),
    /// Answered with a credentials or permission error, not forwarded.
    Denied,
    /// Answered 400 InvalidParameterException (poisoned), not forwarded.
    Invalid,
    /// Could not reach moto.
    UpstreamFailed,
}

impl Outcome {
    /// moto stored the call's events.
    pub fn stored(&self) -> bool {
        matches!(self, Outcome::Passed(200) | Outcome::Dropped(200))
    }
}

/// One recorded PutLogEvents request.
#[derive(Debug, Clone)]
pub struct PutCall {
    /// Order among all recorded PutLogEvents requests.
    pub n: usize,
    /// [`Proxy::next_epoch`] count when the request arrived (e.g. the relay's run).
    pub epoch: u32,
    pub group: String,
    pub stream: String,
    /// `(timestamp, message)` in request order.
    pub events: Vec<(i64, String)>,
    pub outcome: Outcome,
    /// When the outcome was decided (for forwarded calls: when moto had answered).
    pub decided: Option<std::time::Instant>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Card {
    Pass,
    Throttle,
    ServerError,
    Drop,
}

struct Deck {
    rng: Gen,
    faults: Faults,
    cards: Vec<Card>,
    rounds: u32,
}

impl Deck {
    fn draw(&mut self) -> Card {
        if self.cards.is_empty() {
            let f = self.faults;
            let mut cards = Vec::with_capacity(50);
            cards.extend(std::iter::repeat_n(Card::Throttle, f.throttle));
            cards.extend(std::iter::repeat_n(Card::ServerError, f.server_error));
            cards.extend(std::iter::repeat_n(Card::Drop, f.drop_answer));
            assert!(cards.len() <= 50, "more than 50 faults per 50 requests");
            cards.resize(50, Card::Pass);
            for i in (1..cards.len()).rev() {
                cards.swap(i, self.rng.below(i as u64 + 1) as usize);
            }
            // The first round deals one of each fault within its first 8 cards, so that
            // short runs see every fault too.
            if self.rounds == 0 {
                for kind in [Card::Throttle, Card::ServerError, Card::Drop] {
                    if let Some(p) = cards.iter().position(|c| *c == kind) {
                        let c = cards.remove(p);
                        let early = self.rng.below(8) as usize;
                        cards.insert(early, c);
                    }
                }
            }
            self.rounds += 1;
            cards.reverse(); // drawn from the end
            self.cards = cards;
        }
        self.cards.pop().unwrap()
    }
}

struct State {
    upstream: SocketAddr,
    mode: Mutex<Mode>,
    deck: Mutex<Deck>,
    calls: Mutex<Vec<PutCall>>,
    epoch: AtomicU32,
    refused: AtomicUsize,
    requests: AtomicUsize,
    stop: AtomicBool,
    /// A PutLogEvents call whose body holds this text is refused as invalid.
    poison: Mutex<Option<String>>,
    /// Every request: (operation, JSON body).
    ops: Mutex<Vec<(String, Value)>>,
    /// Query definitions (what moto lacks), in creation order.
    query_defs: Mutex<Vec<QueryDef>>,
}

/// A query definition the proxy keeps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueryDef {
    pub id: String,
    pub name: String,
    pub query: String,
    pub groups: Vec<String>,
}

/// Page size of the proxy's DescribeQueryDefinitions.
const QUERY_PAGE: usize = 3;

/// The running proxy; stops accepting when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Proxy {
    /// A proxy on a free loopback port in front of `upstream`, faults dealt from `seed`.
    pub fn start(upstream: SocketAddr, faults: Faults, seed: u64) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            upstream,
            mode: Mutex::new(Mode::Normal),
            deck: Mutex::new(Deck {
                rng: Gen::new(seed),
                faults,
                cards: Vec::new(),
                rounds: 0,
            }),
            calls: Mutex::new(Vec::new()),
            epoch: AtomicU32::new(0),
            refused: AtomicUsize::new(0),
            requests: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
            poison: Mutex::new(None),
            ops: Mutex::new(Vec::new()),
            query_defs: Mutex::new(Vec::new()),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(conn) = conn else { continue };
                if *st.mode.lock().unwrap() == Mode::Down {
                    st.refused.fetch_add(1, Ordering::SeqCst);
                    let _ = conn.shutdown(Shutdown::Both);
                    continue;
                }
                let st = st.clone();
                std::thread::spawn(move || handle(conn, &st));
            }
        });
        Proxy { addr, state }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Refuse (400 InvalidParameterException) every PutLogEvents call whose body
    /// contains `text`, as CloudWatch does with a call holding an event it rejects.
    pub fn set_poison(&self, text: Option<&str>) {
        *self.state.poison.lock().unwrap() = text.map(str::to_string);
    }

    pub fn set_mode(&self, m: Mode) {
        *self.state.mode.lock().unwrap() = m;
    }

    pub fn set_faults(&self, f: Faults) {
        let mut d = self.state.deck.lock().unwrap();
        d.faults = f;
        d.cards.clear();
    }

    /// Starts a new epoch (call after killing the relay, before starting it again).
    pub fn next_epoch(&self) -> u32 {
        self.state.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Every PutLogEvents request so far.
    pub fn calls(&self) -> Vec<PutCall> {
        self.state.calls.lock().unwrap().clone()
    }

    /// Connections closed unread while down.
    pub fn refused(&self) -> usize {
        self.state.refused.load(Ordering::SeqCst)
    }

    /// Every request so far: (operation, e.g. `CreateLogGroup`, and its JSON body).
    pub fn ops(&self) -> Vec<(String, Value)> {
        self.state.ops.lock().unwrap().clone()
    }

    /// The bodies of the requests of one operation.
    pub fn ops_of(&self, op: &str) -> Vec<Value> {
        self.ops()
            .into_iter()
            .filter(|(o, _)| o == op)
            .map(|(_, b)| b)
            .collect()
    }

    /// The query definitions the proxy keeps.
    pub fn query_defs(&self) -> Vec<QueryDef> {
        self.state.query_defs.lock().unwrap().clone()
    }

    /// Adds or replaces (by id) a query definition, as if made in the console.
    pub fn put_query_def(&self, d: QueryDef) {
        let mut defs = self.state.query_defs.lock().unwrap();
        match defs.iter_mut().find(|x| x.id == d.id) {
            Some(x) => *x = d,
            None => defs.push(d),
        }
    }

    /// Requests of any kind read so far.
    pub fn requests(&self) -> usize {
        self.state.requests.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(self.addr); // wakes the accept loop
    }
}

/// Reads one request: its head (request line and headers) and its body.
fn read_request(s: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::with_capacity(64 * 1024);
    let mut chunk = [0u8; 64 * 1024];
    let end = loop {
        if let Some(e) = find(&buf, b"\r\n\r\n") {
            break e;
        }
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..end].to_vec()).ok()?;
    let len: usize = header(&head, "content-length")
        .map(|v| v.parse().expect("Content-Length"))
        .unwrap_or_else(|| {
            assert!(
                header(&head, "transfer-encoding").is_none(),
                "the proxy expects Content-Length bodies, got:\n{head}"
            );
            0
        });
    let mut body = buf[end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    body.truncate(len);
    Some((head, body))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
}

fn answer(s: &mut TcpStream, status: u16, reason: &str, error_type: &str, body: &str) {
    let error_header = if error_type.is_empty() {
        String::new()
    } else {
        format!("x-amzn-errortype: {error_type}\r\n")
    };
    let text = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/x-amz-json-1.1\r\n\
         {error_header}x-amzn-requestid: proxy-injected\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = s.write_all(text.as_bytes());
    let _ = s.flush();
}

/// Answers what moto does not implement: `(status, error type, JSON body)`.
fn emulate(st: &State, op: &str, b: &Value) -> Option<(u16, &'static str, String)> {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    match op {
        "DescribeQueryDefinitions" => {
            let prefix = s(&b["queryDefinitionNamePrefix"]);
            let start: usize = b["nextToken"]
                .as_str()
                .map(|t| t.parse().expect("the proxy's own token"))
                .unwrap_or(0);
            let defs = st.query_defs.lock().unwrap();
            let matching: Vec<&QueryDef> = defs
                .iter()
                .filter(|d| d.name.starts_with(&prefix))
                .collect();
            let page: Vec<Value> = matching
                .iter()
                .skip(start)
                .take(QUERY_PAGE)
                .map(|d| {
                    serde_json::json!({
                        "queryDefinitionId": d.id, "name": d.name,
                        "queryString": d.query, "logGroupNames": d.groups,
                        "lastModified": 0
                    })
                })
                .collect();
            let mut out = serde_json::json!({ "queryDefinitions": page });
            if start + QUERY_PAGE < matching.len() {
                out["nextToken"] = (start + QUERY_PAGE).to_string().into();
            }
            Some((200, "", out.to_string()))
        }
        "PutQueryDefinition" => {
            let name = s(&b["name"]);
            let query = s(&b["queryString"]);
            if name.is_empty() || query.is_empty() {
                return Some((400, "InvalidParameterException", r#"{"__type":"InvalidParameterException","message":"name and queryString are required"}"#.into()));
            }
            let groups: Vec<String> = b["logGroupNames"]
                .as_array()
                .map(|a| a.iter().map(s).collect())
                .unwrap_or_default();
            let mut defs = st.query_defs.lock().unwrap();
            let id = match b["queryDefinitionId"].as_str() {
                Some(id) => {
                    let Some(d) = defs.iter_mut().find(|d| d.id == id) else {
                        return Some((400, "ResourceNotFoundException", r#"{"__type":"ResourceNotFoundException","message":"query definition not found"}"#.into()));
                    };
                    d.name = name;
                    d.query = query;
                    d.groups = groups;
                    id.to_string()
                }
                None => {
                    let id = format!("qd-{}", defs.len() + 1);
                    defs.push(QueryDef {
                        id: id.clone(),
                        name,
                        query,
                        groups,
                    });
                    id
                }
            };
            Some((
                200,
                "",
                serde_json::json!({ "queryDefinitionId": id }).to_string(),
            ))
        }
        "PutIndexPolicy" => {
            let doc: Value = serde_json::from_str(b["policyDocument"].as_str().unwrap_or(""))
                .expect("policyDocument is JSON");
            Some((
                200,
                "",
                serde_json::json!({ "indexPolicy": {
                    "logGroupIdentifier": b["logGroupIdentifier"],
                    "policyDocument": doc.to_string(), "source": "LOG_GROUP",
                    "policyName": "audit-relay"
                }})
                .to_string(),
            ))
        }
        _ => None,
    }
}

/// Forwards the request to moto; returns the whole raw answer.
fn forward(upstream: SocketAddr, head: &str, body: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut up = TcpStream::connect_timeout(&upstream, Duration::from_secs(5))?;
    up.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut out = String::with_capacity(head.len() + 32);
    for (i, line) in head.split("\r\n").enumerate() {
        if i > 0 && line.to_ascii_lowercase().starts_with("connection:") {
            continue;
        }
        out.push_str(line);
        out.push_str("\r\n");
    }
    out.push_str("Connection: close\r\n\r\n");
    up.write_all(out.as_bytes())?;
    up.write_all(body)?;
    let mut raw = Vec::new();
    up.read_to_end(&mut raw)?;
    Ok(raw)
}

fn handle(mut client: TcpStream, st: &State) {
    let _ = client.set_read_timeout(Some(Duration::from_secs(60)));
    let Some((head, body)) = read_request(&mut client) else {
        return;
    };
    st.requests.fetch_add(1, Ordering::SeqCst);
    let op = header(&head, "x-amz-target")
        .and_then(|t| t.rsplit('.').next())
        .unwrap_or_default()
        .to_string();
    // PutLogEvents bodies are recorded in `calls` (parsed once, below), not again here.
    let json: Value = if op == "PutLogEvents" {
        Value::Null
    } else {
        serde_json::from_slice(&body).unwrap_or(Value::Null)
    };
    st.ops.lock().unwrap().push((op.clone(), json.clone()));
    if let Some((status, kind, text)) = emulate(st, &op, &json) {
        let reason = if status == 200 { "OK" } else { "Bad Request" };
        return answer(&mut client, status, reason, kind, &text);
    }
    let is_put = header(&head, "x-amz-target").is_some_and(|t| t.ends_with(".PutLogEvents"));
    let record = is_put.then(|| {
        let v: Value = serde_json::from_slice(&body).expect("PutLogEvents body is JSON");
        let events = v["logEvents"]
            .as_array()
            .expect("logEvents")
            .iter()
            .map(|e| {
                (
                    e["timestamp"].as_i64().expect("timestamp"),
                    e["message"].as_str().expect("message").to_string(),
                )
            })
            .collect();
        let mut calls = st.calls.lock().unwrap();
        let n = calls.len();
        calls.push(PutCall {
            n,
            epoch: st.epoch.load(Ordering::SeqCst),
            group: v["logGroupName"].as_str().unwrap_or_default().to_string(),
            stream: v["logStreamName"].as_str().unwrap_or_default().to_string(),
            events,
            outcome: Outcome::Pending,
            decided: None,
        });
        n
    });
    let set = |o: Outcome| {
        if let Some(n) = record {
            let mut calls = st.calls.lock().unwrap();
            calls[n].outcome = o;
            calls[n].decided = Some(std::time::Instant::now());
        }
    };
    let poisoned = st
        .poison
        .lock()
        .unwrap()
        .as_ref()
        .is_some_and(|p| is_put && find(&body, p.as_bytes()).is_some());
    if poisoned {
        set(Outcome::Invalid);
        return answer(
            &mut client,
            400,
            "Bad Request",
            "InvalidParameterException",
            r#"{"__type":"InvalidParameterException","message":"Log event is invalid (injected by the test proxy)"}"#,
        );
    }
    let mode = *st.mode.lock().unwrap();
    match mode {
        Mode::Down => {
            let _ = client.shutdown(Shutdown::Both);
            return;
        }
        Mode::AccessDenied => {
            set(Outcome::Denied);
            return answer(
                &mut client,
                403,
                "Forbidden",
                "AccessDeniedException",
                r#"{"__type":"AccessDeniedException","message":"User: arn:aws:iam::123456789012:user/test is not authorized to perform: logs:PutLogEvents"}"#,
            );
        }
        Mode::UnrecognizedClient => {
            set(Outcome::Denied);
            return answer(
                &mut client,
                400,
                "Bad Request",
                "UnrecognizedClientException",
                r#"{"__type":"UnrecognizedClientException","message":"The security token included in the request is invalid."}"#,
            );
        }
        Mode::Normal => {}
    }
    // Faults are dealt to PutLogEvents only, so that the rates are those of the calls.
    let card = if is_put {
        st.deck.lock().unwrap().draw()
    } else {
        Card::Pass
    };
    match card {
        Card::Throttle => {
            set(Outcome::Throttled);
            answer(
                &mut client,
                400,
                "Bad Request",
                "ThrottlingException",
                r#"{"__type":"ThrottlingException","message":"Rate exceeded"}"#,
            );
        }
        Card::ServerError => {
            set(Outcome::ServerError);
            let body = r#"{"message":"injected internal error"}"#;
            let text = format!(
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/x-amz-json-1.1\r\n\
                 Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = client.write_all(text.as_bytes());
        }
        Card::Pass | Card::Drop => match forward(st.upstream, &head, &body) {
            Ok(raw) => {
                let status = parse_response(&raw).map(|r| r.status).unwrap_or(0);
                if card == Card::Drop {
                    set(Outcome::Dropped(status));
                    let _ = client.shutdown(Shutdown::Both);
                } else {
                    set(Outcome::Passed(status));
                    let _ = client.write_all(&raw);
                }
            }
            Err(_) => {
                set(Outcome::UpstreamFailed);
                let _ = client.shutdown(Shutdown::Both);
            }
        },
    }
    let _ = client.flush();
    let _ = client.shutdown(Shutdown::Write);
    // Let the client read the answer before the socket closes.
    let mut sink = [0u8; 1024];
    let _ = client.set_read_timeout(Some(Duration::from_secs(2)));
    while let Ok(n) = client.read(&mut sink) {
        if n == 0 {
            break;
        }
    }
}

/// CloudWatch's per-call limits (as AWS documents them today).
pub const MAX_EVENTS: usize = 10_000;
pub const MAX_BYTES: usize = 1_048_576;
pub const EVENT_OVERHEAD: usize = 26;
pub const MAX_SPAN_MS: i64 = 24 * 3_600_000;

/// Bytes of a call as CloudWatch counts them.
pub fn call_bytes(c: &PutCall) -> usize {
    c.events.iter().map(|(_, m)| m.len() + EVENT_OVERHEAD).sum()
}

/// Checks every recorded call against CloudWatch's PutLogEvents rules; panics naming
/// each violation.
pub fn assert_cloudwatch_rules(calls: &[PutCall]) {
    let mut bad = Vec::new();
    for c in calls {
        let n = c.events.len();
        if n == 0 || n > MAX_EVENTS {
            bad.push(format!("call {}: {n} events (1 to {MAX_EVENTS})", c.n));
        }
        let bytes = call_bytes(c);
        if bytes > MAX_BYTES {
            bad.push(format!("call {}: {bytes} bytes (max {MAX_BYTES})", c.n));
        }
        if let Some(i) = c.events.windows(2).position(|w| w[1].0 < w[0].0) {
            bad.push(format!(
                "call {}: timestamps go back at event {} ({} after {})",
                c.n,
                i + 1,
                c.events[i + 1].0,
                c.events[i].0
            ));
        }
        if let (Some(min), Some(max)) = (
            c.events.iter().map(|e| e.0).min(),
            c.events.iter().map(|e| e.0).max(),
        ) {
            if max - min > MAX_SPAN_MS {
                bad.push(format!("call {}: spans {} ms (max 24 h)", c.n, max - min));
            }
        }
    }
    assert!(
        bad.is_empty(),
        "PutLogEvents calls break CloudWatch's rules:\n{}",
        bad.join("\n")
    );
}

/// Asserts that a call that did not get a success answer was sent again identically:
/// the next PutLogEvents request of the same epoch carries the same events.
pub fn assert_retries_identical(calls: &[PutCall]) {
    for (i, c) in calls.iter().enumerate() {
        if c.outcome == Outcome::Passed(200) || c.outcome == Outcome::Pending {
            continue;
        }
        if let Some(next) = calls[i + 1..].iter().find(|d| d.epoch == c.epoch) {
            assert!(
                next.events == c.events,
                "call {} ({:?}, {} events) was followed by call {} with different events ({}): \
                 a failed call must be sent again identically",
                c.n,
                c.outcome,
                c.events.len(),
                next.n,
                next.events.len()
            );
        }
    }
}

/// Whether a message is an integrity checkpoint (`"type":"checkpoint"`, no `id`).
pub fn is_checkpoint(m: &str) -> bool {
    let v: Value =
        serde_json::from_str(m).unwrap_or_else(|e| panic!("message is not JSON ({e}): {m:?}"));
    super::moto::is_checkpoint_message(&v)
}

/// What identifies a message: an event's `id`, or `checkpoint@<sequence>` for a
/// checkpoint (the sequence number it covers; its own row is the next one).
pub fn message_key(m: &str) -> String {
    let v: Value =
        serde_json::from_str(m).unwrap_or_else(|e| panic!("message is not JSON ({e}): {m:?}"));
    if super::moto::is_checkpoint_message(&v) {
        let seq = v["sequence"]
            .as_i64()
            .unwrap_or_else(|| panic!("checkpoint without a sequence: {m:?}"));
        return checkpoint_key(seq);
    }
    message_id(m)
}

/// The [`message_key`] of the checkpoint that covers sequence number `covered`.
pub fn checkpoint_key(covered: i64) -> String {
    format!("checkpoint@{covered}")
}

/// The `id` of a message.
pub fn message_id(m: &str) -> String {
    let v: Value =
        serde_json::from_str(m).unwrap_or_else(|e| panic!("message is not JSON ({e}): {m:?}"));
    v["id"]
        .as_str()
        .unwrap_or_else(|| panic!("message without an id: {m:?}"))
        .to_string()
}
