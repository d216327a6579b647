//! A CloudWatch Logs-compatible endpoint in its own process, for the end-to-end benchmark.
//!
//! ```text
//! cargo run --release --example cw_endpoint -- [--port P] [--secret KEY] [--expect IDS_FILE]
//! ```
//!
//! Prints `listening on PORT` once bound. Serves HTTP/1.1 keep-alive (Content-Length
//! bodies) and answers CreateLogGroup, CreateLogStream, PutRetentionPolicy, GetLogEvents
//! (always empty: it keeps no messages, and each bench run's stream is new) and
//! PutLogEvents the way CloudWatch does, doing the work a real endpoint does for each
//! call:
//!
//! - verifies the SigV4 signature (`Authorization`, recomputed over the canonical request
//!   with the SHA-256 of the body, with the secret key `--secret`, default `bench`);
//! - parses the JSON body (`logGroupName`, `logStreamName`, `logEvents`), refuses a call
//!   to a stream never created (`ResourceNotFoundException`), and checks CloudWatch's
//!   rules: 1..=10,000 events, ≤ 1,048,576 bytes counting 26 per event, no empty
//!   message, chronological order, a span ≤ 24 h, no event older than 14 days or more
//!   than 2 h in the future; a call that breaks one gets `InvalidParameterException`
//!   and counts as a violation;
//! - parses each message as JSON and records its `id` (an audit event; or `payload.id`,
//!   a whole server log line as a forwarder that does not extract the event sends it)
//!   or counts it as one of the relay's checkpoints (`"type":"checkpoint"`); anything
//!   else is refused.
//!
//! `GET /_stats` answers with the counts as JSON; with `--expect` (one id a line, in the
//! order the events were written) it also says how many expected ids are still missing,
//! how many arrived more than once, and whether they arrived in order (each first arrival
//! after the previous one's in the expected order). These are kept up to date as calls
//! arrive, so polling `/_stats` costs nothing. One stream's order is what the relay
//! promises; the bench runs one stream.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

#[derive(Default)]
struct State {
    streams: HashSet<(String, String)>,
    calls: u64,
    /// Audit events (messages with an `id`).
    events: u64,
    /// The relay's checkpoint messages.
    checkpoints: u64,
    bytes: u64,
    violations: u64,
    last_violation: String,
    /// Every id seen (as a number, UUIDs being 128 bits).
    seen: HashSet<u128>,
    duplicates: u64,
    /// Ids not in `--expect`.
    unexpected: u64,
    /// First arrivals before the previous first arrival in the expected order.
    out_of_order: u64,
    /// The expected position of the last first arrival.
    last_pos: Option<usize>,
    /// Expected ids that arrived (once or more).
    arrived: u64,
}

impl State {
    /// Records one event's id (checked as it arrives, so `/_stats` is cheap).
    fn record(&mut self, id: &str, expect: Option<&HashMap<u128, usize>>) {
        let Some(n) = uuid_number(id) else {
            self.unexpected += 1;
            return;
        };
        if !self.seen.insert(n) {
            self.duplicates += 1;
            return;
        }
        if let Some(expect) = expect {
            match expect.get(&n) {
                None => self.unexpected += 1,
                Some(&pos) => {
                    self.arrived += 1;
                    if self.last_pos.is_some_and(|l| pos < l) {
                        self.out_of_order += 1;
                    }
                    self.last_pos = Some(pos);
                }
            }
        }
    }
}

/// A UUID's 128 bits (hex digits, dashes ignored); `None` for anything else.
fn uuid_number(id: &str) -> Option<u128> {
    let hex: String = id.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 {
        return None;
    }
    u128::from_str_radix(&hex, 16).ok()
}

struct Shared {
    state: Mutex<State>,
    secret: String,
    /// Expected ids, by their position in the expected order.
    expect: Option<HashMap<u128, usize>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut m = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
    m.update(data);
    m.finalize().into_bytes().to_vec()
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Checks the SigV4 signature of `req` against `secret`; `Err` says what is wrong.
fn verify_sigv4(req: &Request, secret: &str) -> Result<(), String> {
    let auth = req.header("authorization").ok_or("no Authorization")?;
    let rest = auth
        .strip_prefix("AWS4-HMAC-SHA256 ")
        .ok_or("not AWS4-HMAC-SHA256")?;
    let mut credential = "";
    let mut signed = "";
    let mut signature = "";
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("Credential=") {
            credential = v;
        } else if let Some(v) = part.strip_prefix("SignedHeaders=") {
            signed = v;
        } else if let Some(v) = part.strip_prefix("Signature=") {
            signature = v;
        }
    }
    let scope = credential.split_once('/').ok_or("bad Credential")?.1;
    let mut sp = scope.split('/');
    let (date, region, service) = (
        sp.next().unwrap_or(""),
        sp.next().unwrap_or(""),
        sp.next().unwrap_or(""),
    );
    let amz_date = req.header("x-amz-date").ok_or("no X-Amz-Date")?;
    let payload_hash = hex(&Sha256::digest(&req.body));
    if let Some(h) = req.header("x-amz-content-sha256") {
        if h != payload_hash && h != "UNSIGNED-PAYLOAD" {
            return Err("x-amz-content-sha256 does not match the body".into());
        }
    }
    let mut canonical = format!("{}\n{}\n\n", req.method, req.path);
    for name in signed.split(';') {
        let values: Vec<String> = req
            .headers
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.split_whitespace().collect::<Vec<_>>().join(" "))
            .collect();
        if values.is_empty() {
            return Err(format!("signed header {name} missing"));
        }
        canonical.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    canonical.push_str(&format!("\n{signed}\n{payload_hash}"));
    let to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical.as_bytes()))
    );
    let k = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k = hmac(&k, region.as_bytes());
    let k = hmac(&k, service.as_bytes());
    let k = hmac(&k, b"aws4_request");
    let expected = hex(&hmac(&k, to_sign.as_bytes()));
    if expected != signature {
        return Err("signature does not match".into());
    }
    Ok(())
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Put<'a> {
    #[serde(borrow)]
    log_group_name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    log_stream_name: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    log_events: Vec<PutEvent<'a>>,
}

#[derive(serde::Deserialize)]
struct PutEvent<'a> {
    timestamp: i64,
    #[serde(borrow)]
    message: std::borrow::Cow<'a, str>,
}

/// A message: an audit event (its `id`), one of the relay's checkpoints (`type`), or a
/// whole server log line carrying its event in `payload` (a forwarder that sends lines
/// as they are, such as the bench's raw Fluent Bit peer).
#[derive(serde::Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    id: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default, rename = "type")]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    payload: Option<Wrapped<'a>>,
}

/// The event inside a server log line.
#[derive(serde::Deserialize)]
struct Wrapped<'a> {
    #[serde(borrow)]
    id: std::borrow::Cow<'a, str>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Names {
    log_group_name: String,
    #[serde(default)]
    log_stream_name: Option<String>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Checks one PutLogEvents body; returns its ids or the CloudWatch error (type, message).
fn check_put(body: &[u8], state: &Mutex<State>) -> Result<Accepted, (String, String)> {
    let invalid = |m: String| ("InvalidParameterException".to_string(), m);
    let put: Put = serde_json::from_slice(body)
        .map_err(|e| ("SerializationException".into(), e.to_string()))?;
    {
        let st = state.lock().unwrap();
        let key = (
            put.log_group_name.to_string(),
            put.log_stream_name.to_string(),
        );
        if !st.streams.contains(&key) {
            return Err((
                "ResourceNotFoundException".into(),
                "The specified log stream does not exist.".into(),
            ));
        }
    }
    let events = &put.log_events;
    if events.is_empty() || events.len() > 10_000 {
        return Err(invalid(format!("{} events in one call", events.len())));
    }
    let bytes: usize = events.iter().map(|e| e.message.len() + 26).sum();
    if bytes > 1_048_576 {
        return Err(invalid(format!("{bytes} bytes in one call")));
    }
    let now = now_ms();
    let mut ids = Vec::with_capacity(events.len());
    let mut checkpoints = 0u64;
    for (i, e) in events.iter().enumerate() {
        if e.message.is_empty() {
            return Err(invalid(format!("event {i}: empty message")));
        }
        if i > 0 && e.timestamp < events[i - 1].timestamp {
            return Err(invalid(
                "Log events in a single PutLogEvents request must be in chronological order."
                    .into(),
            ));
        }
        if e.timestamp < now - 14 * 86_400_000 || e.timestamp > now + 2 * 3_600_000 {
            return Err(invalid(format!(
                "event {i}: timestamp {} out of range",
                e.timestamp
            )));
        }
        let m: Message = serde_json::from_str(&e.message)
            .map_err(|err| invalid(format!("event {i}: message is not JSON: {err}")))?;
        match (m.id, m.kind.as_deref(), m.payload) {
            (Some(id), _, _) => ids.push(id.into_owned()),
            (None, Some("checkpoint"), _) => checkpoints += 1,
            (None, _, Some(line)) => ids.push(line.id.into_owned()),
            _ => {
                return Err(invalid(format!(
                    "event {i}: neither an audit event (id) nor a checkpoint: {:.200}",
                    e.message
                )))
            }
        }
    }
    let span = events.last().unwrap().timestamp - events[0].timestamp;
    if span > 86_400_000 {
        return Err(invalid(format!("a call spans {span} ms")));
    }
    Ok(Accepted {
        ids,
        checkpoints,
        bytes,
    })
}

/// What one accepted call carried.
struct Accepted {
    ids: Vec<String>,
    checkpoints: u64,
    bytes: usize,
}

fn stats(shared: &Shared) -> String {
    let st = shared.state.lock().unwrap();
    let mut extra = String::new();
    if let Some(expect) = &shared.expect {
        extra = format!(
            r#","expected":{},"missing":{},"duplicates":{},"unexpected":{},"in_order":{},"out_of_order":{}"#,
            expect.len(),
            expect.len() as u64 - st.arrived,
            st.duplicates,
            st.unexpected,
            st.out_of_order == 0,
            st.out_of_order
        );
    }
    format!(
        r#"{{"calls":{},"events":{},"checkpoints":{},"bytes":{},"violations":{},"last_violation":{}{extra}}}"#,
        st.calls,
        st.events,
        st.checkpoints,
        st.bytes,
        st.violations,
        serde_json::to_string(&st.last_violation).unwrap()
    )
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Request> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next()?.to_string();
    let path = parts.next()?.to_string();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        let (k, v) = l.split_once(':')?;
        headers.push((k.trim().to_ascii_lowercase(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body).ok()?;
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

fn respond(w: &mut TcpStream, status: &str, body: &str) -> bool {
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/x-amz-json-1.1\r\nx-amzn-RequestId: 00000000-0000-4000-8000-000000000000\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    w.write_all(resp.as_bytes()).is_ok()
}

fn error_body(kind: &str, message: &str) -> String {
    format!(
        r#"{{"__type":"{kind}","message":{}}}"#,
        serde_json::to_string(message).unwrap()
    )
}

fn serve(stream: TcpStream, shared: Arc<Shared>) {
    let mut reader = BufReader::with_capacity(1 << 16, stream.try_clone().expect("clone"));
    let mut writer = stream;
    while let Some(req) = read_request(&mut reader) {
        if req.method == "GET" && req.path == "/_stats" {
            if !respond(&mut writer, "200 OK", &stats(&shared)) {
                return;
            }
            continue;
        }
        let target = req.header("x-amz-target").unwrap_or("").to_string();
        let op = target.rsplit('.').next().unwrap_or("");
        let result: Result<String, (String, String)> = (|| {
            if req
                .header("content-encoding")
                .is_some_and(|e| e != "identity")
            {
                return Err((
                    "SerializationException".into(),
                    "compressed bodies are not supported here".into(),
                ));
            }
            verify_sigv4(&req, &shared.secret)
                .map_err(|m| ("InvalidSignatureException".to_string(), m))?;
            match op {
                "PutLogEvents" => {
                    let a = check_put(&req.body, &shared.state)?;
                    let mut st = shared.state.lock().unwrap();
                    st.calls += 1;
                    st.events += a.ids.len() as u64;
                    st.checkpoints += a.checkpoints;
                    st.bytes += a.bytes as u64;
                    for id in &a.ids {
                        st.record(id, shared.expect.as_ref());
                    }
                    Ok(r#"{"nextSequenceToken":"1"}"#.to_string())
                }
                "CreateLogStream" | "CreateLogGroup" | "PutRetentionPolicy" => {
                    let n: Names = serde_json::from_slice(&req.body)
                        .map_err(|e| ("SerializationException".to_string(), e.to_string()))?;
                    if let (true, Some(s)) = (op == "CreateLogStream", n.log_stream_name) {
                        let mut st = shared.state.lock().unwrap();
                        if !st.streams.insert((n.log_group_name, s)) {
                            return Err((
                                "ResourceAlreadyExistsException".into(),
                                "The specified log stream already exists".into(),
                            ));
                        }
                    }
                    Ok("{}".to_string())
                }
                // The relay asks for the newest messages at start (what it may have sent
                // before a crash). The bench's stream is new at each start: none.
                "GetLogEvents" => Ok(
                    r#"{"events":[],"nextForwardToken":"f/0","nextBackwardToken":"b/0"}"#
                        .to_string(),
                ),
                other => Err((
                    "UnknownOperationException".into(),
                    format!("operation {other:?} is not served here"),
                )),
            }
        })();
        let ok = match result {
            Ok(body) => respond(&mut writer, "200 OK", &body),
            Err((kind, message)) => {
                if kind != "ResourceAlreadyExistsException" {
                    let mut st = shared.state.lock().unwrap();
                    st.violations += 1;
                    st.last_violation = format!("{op}: {kind}: {message}");
                }
                respond(&mut writer, "400 Bad Request", &error_body(&kind, &message))
            }
        };
        if !ok {
            return;
        }
    }
}

fn main() {
    let mut port = 0u16;
    let mut secret = "bench".to_string();
    let mut expect = None;
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut val = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--port" => port = val().parse().expect("--port P"),
            "--secret" => secret = val(),
            "--expect" => {
                let text = std::fs::read_to_string(val()).expect("--expect IDS_FILE");
                expect = Some(
                    text.lines()
                        .enumerate()
                        .map(|(i, l)| {
                            let n = uuid_number(l)
                                .unwrap_or_else(|| panic!("--expect: line {}: not a UUID", i + 1));
                            (n, i)
                        })
                        .collect::<HashMap<_, _>>(),
                );
            }
            other => panic!("unknown flag {other}"),
        }
    }
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind");
    println!("listening on {}", listener.local_addr().unwrap().port());
    std::io::stdout().flush().unwrap();
    let shared = Arc::new(Shared {
        state: Mutex::new(State::default()),
        secret,
        expect,
    });
    for s in listener.incoming().flatten() {
        let sh = shared.clone();
        std::thread::spawn(move || serve(s, sh));
    }
}
