//! Bad input never stops the pipeline and is never dropped silently: one file mixes
//! valid events with every kind of bad record; each bad one lands in quarantine with a
//! reason naming the field, its source path and byte offset, and its raw bytes capped.

mod common;

use common::gen::{self, Gen};
use common::{Harness, BASE_MS};
use serde_json::{json, Value};
use std::collections::HashSet;
use std::io::Write;

/// A bare event as a JSON object, for tests to break.
fn event(g: &mut Gen, i: i64) -> (String, serde_json::Map<String, Value>) {
    let id = g.uuid();
    let v = json!({
        "id": id,
        "timestamp": gen::rfc3339(BASE_MS + i),
        "action": "setTeamMemberRole",
        "organizationId": gen::org_id(g.below(500)),
        "actorId": gen::actor_id(g.below(5000)),
        "args": [gen::org_id(1), {"role": "owner"}],
    });
    let Value::Object(m) = v else { unreachable!() };
    (id, m)
}

fn line(m: &serde_json::Map<String, Value>) -> Vec<u8> {
    serde_json::to_vec(m).unwrap()
}

struct Bad {
    /// What the reason must start with.
    reason: &'static str,
    bytes: Vec<u8>,
    /// How many raw bytes quarantine keeps of it.
    kept: usize,
}

fn bad(reason: &'static str, bytes: Vec<u8>) -> Bad {
    let kept = bytes.len();
    Bad {
        reason,
        bytes,
        kept,
    }
}

#[test]
fn every_bad_kind_is_quarantined_and_the_relay_keeps_going() {
    let h = Harness::new();
    let mut g = Gen::new(42);
    let mut t = 0i64;
    let mut next = |g: &mut Gen| {
        t += 1;
        event(g, t)
    };

    let mut bads = Vec::new();
    // Broken JSON: the line ends mid-object.
    let (_, m) = next(&mut g);
    let whole = line(&m);
    bads.push(bad("not valid JSON", whole[..whole.len() / 2].to_vec()));
    // Invalid UTF-8 inside a string value: quarantined, never replaced.
    let (_, mut m) = next(&mut g);
    m.insert("args".into(), json!(["@@INVALID@@"]));
    let mut b = line(&m);
    let at = b.windows(11).position(|w| w == b"@@INVALID@@").unwrap();
    b.splice(at..at + 11, [b'x', 0xFF, 0xFE, b'y']);
    bads.push(bad("not valid UTF-8", b));
    // A missing field.
    let (_, mut m) = next(&mut g);
    m.remove("actorId");
    bads.push(bad("actorId: missing", line(&m)));
    // A mistyped field.
    let (_, mut m) = next(&mut g);
    m.insert("id".into(), json!(42));
    bads.push(bad("id: expected a string", line(&m)));
    // An id that is not a UUID.
    let (_, mut m) = next(&mut g);
    m.insert("id".into(), json!("not-a-uuid"));
    bads.push(bad("id: not a UUID", line(&m)));
    // A timestamp that is not RFC 3339.
    let (_, mut m) = next(&mut g);
    m.insert("timestamp".into(), json!("yesterday"));
    bads.push(bad(r#"timestamp: not RFC 3339: "yesterday""#, line(&m)));
    // args that is an object.
    let (_, mut m) = next(&mut g);
    m.insert("args".into(), json!({"workspaceId": "w"}));
    bads.push(bad("args: expected a JSON array", line(&m)));
    // A 5 MiB line (over the default max_line_bytes of 1 MiB): its first KiB is kept.
    let (_, mut m) = next(&mut g);
    m.insert("padding".into(), json!("A".repeat(5 << 20)));
    let mut huge = bad("line: longer than source.max_line_bytes", line(&m));
    huge.kept = 1024;
    bads.push(huge);
    // A server-log line whose payload the emitter replaced by payloadStub.
    let stub = json!({
        "component": "server", "severity": "INFO", "time": gen::rfc3339(BASE_MS),
        "context": {"requestId": "r", "requestKind": "jsonrpc", "requestMethod": "getTeamProjects"},
        "message": "audit",
        "payloadStub": "Payload stripped as the log line was longer than 32768 characters",
    });
    bads.push(bad(
        "payload: replaced by payloadStub",
        serde_json::to_vec(&stub).unwrap(),
    ));
    // A long (8 KiB) broken line under the line limit: its raw bytes are capped too.
    let (_, mut m) = next(&mut g);
    m.insert("padding".into(), json!("B".repeat(8 << 10)));
    let whole = line(&m);
    let mut long = bad("not valid JSON", whole[..whole.len() - 2].to_vec());
    long.kept = 4096;
    bads.push(long);

    // valid, bad, valid, bad, …, valid: alternately bare events and server-log lines.
    let mut file = Vec::new();
    let mut valid = HashSet::new();
    let mut expected_q = Vec::new();
    let mut push_valid = |g: &mut Gen, file: &mut Vec<u8>, k: usize| {
        let s = if k & 1 == 0 {
            gen::event_json(g, BASE_MS + 10_000 + k as i64)
        } else {
            gen::server_line(g, BASE_MS + 10_000 + k as i64)
        };
        file.extend_from_slice(s.line.as_bytes());
        file.push(b'\n');
        valid.insert(s.id);
    };
    for (k, b) in bads.iter().enumerate() {
        push_valid(&mut g, &mut file, k);
        expected_q.push((b.reason, file.len() as u64, &b.bytes[..b.kept]));
        file.extend_from_slice(&b.bytes);
        file.push(b'\n');
    }
    push_valid(&mut g, &mut file, bads.len());
    let path = h.log("mixed.log");
    std::fs::write(&path, &file).unwrap();

    let mut relay = h.start();
    h.wait_events(&mut relay, valid.len() as u64);
    h.wait_quarantined(&mut relay, bads.len() as u64);

    // Still running, still ingesting.
    let after = gen::server_line(&mut g, BASE_MS + 99_000);
    let mut f = common::append_to(&path);
    writeln!(f, "{}", after.line).unwrap();
    valid.insert(after.id);
    h.wait_events(&mut relay, valid.len() as u64);
    relay.terminate();

    common::assert_exactly_once(&h, &valid);
    let rows = h.quarantine_rows();
    assert_eq!(rows.len(), bads.len(), "{rows:#?}");
    let source = path.display().to_string();
    for (row, (reason, offset, raw)) in rows.iter().zip(&expected_q) {
        assert!(
            row.reason.starts_with(reason),
            "at offset {offset}: reason {:?} should start with {reason:?}",
            row.reason
        );
        assert_eq!(row.source, source, "source of {reason}");
        assert_eq!(row.offset, *offset, "offset of {reason}");
        assert_eq!(
            row.raw.len(),
            raw.len(),
            "raw bytes kept of {reason} (line of {} bytes)",
            bads.iter()
                .find(|b| b.reason == *reason)
                .unwrap()
                .bytes
                .len()
        );
        assert!(
            row.raw == *raw,
            "raw bytes of {reason} are the line's first bytes"
        );
    }

    let stats = h.stats();
    assert_eq!(stats["quarantined"], bads.len() as u64, "{stats}");
    assert_eq!(stats["events"], valid.len() as u64, "{stats}");
    assert_eq!(stats["skipped"], 0, "{stats}");

    // `quarantine list --json`: one object a line, with reason, source and offset.
    let out = h.cli_ok(&["quarantine", "list", "--json"]);
    let listed: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(listed.len(), bads.len(), "{out}");
    let mut got: Vec<(String, String, u64)> = listed
        .iter()
        .map(|v| {
            assert!(v["raw"].is_string(), "raw shown: {v}");
            (
                v["reason"].as_str().expect("reason").to_string(),
                v["source"].as_str().expect("source").to_string(),
                v["offset"].as_u64().expect("offset"),
            )
        })
        .collect();
    got.sort_by_key(|r| r.2);
    let want: Vec<(String, String, u64)> = rows
        .iter()
        .map(|r| (r.reason.clone(), r.source.clone(), r.offset))
        .collect();
    assert_eq!(got, want);
    let huge_listed = listed
        .iter()
        .find(|v| v["reason"].as_str().unwrap().starts_with("line:"))
        .unwrap();
    assert_eq!(huge_listed["raw"].as_str().unwrap().len(), 1024);
}

/// Under `envelope = "server-log"`, a bare event is not an audit log line: skipped and
/// counted. Under `envelope = "event"`, a server-log line is not an event: quarantined.
#[test]
fn envelope_setting_decides_what_a_line_is() {
    let mut g = Gen::new(3);
    let bare = gen::event_json(&mut g, BASE_MS);
    let wrapped = gen::server_line(&mut g, BASE_MS + 1);

    let h = Harness::with(&["envelope = \"server-log\""], &[]);
    std::fs::write(h.log("a.log"), format!("{}\n{}\n", bare.line, wrapped.line)).unwrap();
    let mut relay = h.start();
    h.wait_events(&mut relay, 1);
    h.wait_until(Some(&mut relay), "1 skipped", common::DEADLINE, || {
        h.stat("skipped") == 1
    });
    relay.terminate();
    assert_eq!(h.ids(), vec![wrapped.id.clone()]);
    assert_eq!(h.quarantine_rows(), vec![]);

    let h = Harness::with(&["envelope = \"event\""], &[]);
    std::fs::write(h.log("a.log"), format!("{}\n{}\n", wrapped.line, bare.line)).unwrap();
    let mut relay = h.start();
    h.wait_events(&mut relay, 1);
    h.wait_quarantined(&mut relay, 1);
    relay.terminate();
    assert_eq!(h.ids(), vec![bare.id]);
    let q = h.quarantine_rows();
    assert_eq!(q.len(), 1);
    assert!(q[0].reason.starts_with("id: missing"), "{q:?}");
    assert_eq!(q[0].offset, 0);
    assert_eq!(h.stat("skipped"), 0);
}

/// An oversize line still being written is reported once, as soon as it passes the
/// limit; the rest of it is skipped, across a restart in the middle of it, and the next
/// line is read normally.
#[test]
fn oversize_line_is_reported_once_across_a_restart_in_its_middle() {
    let h = Harness::new();
    let mut g = Gen::new(8);
    let path = h.log("a.log");
    let first = gen::server_line(&mut g, BASE_MS);
    let mut f = common::append_to(&path);
    writeln!(f, "{}", first.line).unwrap();
    let start = first.line.len() as u64 + 1;
    let head = format!(r#"{{"id":"{}","padding":""#, g.uuid());
    f.write_all(head.as_bytes()).unwrap();
    f.write_all(&vec![b'C'; 3 << 20]).unwrap();

    let mut relay = h.start();
    h.wait_events(&mut relay, 1);
    h.wait_quarantined(&mut relay, 1);
    relay.terminate();

    let mut relay = h.start();
    f.write_all(&vec![b'C'; 2 << 20]).unwrap();
    f.write_all(b"\"}\n").unwrap();
    let second = gen::server_line(&mut g, BASE_MS + 1);
    writeln!(f, "{}", second.line).unwrap();
    h.wait_events(&mut relay, 2);
    std::thread::sleep(std::time::Duration::from_millis(300));
    relay.terminate();

    common::assert_exactly_once(&h, &[first.id, second.id].into_iter().collect());
    let q = h.quarantine_rows();
    assert_eq!(q.len(), 1, "reported once: {q:?}");
    assert!(q[0]
        .reason
        .starts_with("line: longer than source.max_line_bytes"));
    assert_eq!(q[0].offset, start);
    assert_eq!(q[0].raw.len(), 1024);
    assert!(q[0].raw.starts_with(head.as_bytes()));
    assert_eq!(h.stat("duplicates"), 0);
}

/// Peak memory of the relay (VmHWM), in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .expect("VmHWM");
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

/// Memory stays bounded whatever the input: a 192 MiB line is never held whole.
#[test]
fn a_huge_line_does_not_grow_memory() {
    const HUGE: usize = 192 << 20;
    let h = Harness::new();
    let mut g = Gen::new(9);
    let path = h.log("a.log");
    let mut f = common::append_to(&path);
    f.write_all(b"{\"padding\":\"").unwrap();
    let block = vec![b'D'; 1 << 20];
    for _ in 0..HUGE >> 20 {
        f.write_all(&block).unwrap();
    }
    f.write_all(b"\"}\n").unwrap();
    let after = gen::server_line(&mut g, BASE_MS);
    writeln!(f, "{}", after.line).unwrap();
    drop(f);

    let mut relay = h.start();
    h.wait_events(&mut relay, 1);
    h.wait_quarantined(&mut relay, 1);
    let peak = peak_rss(relay.pid());
    relay.terminate();
    assert!(
        peak < (HUGE / 2) as u64,
        "peak RSS {} MiB while reading a {} MiB line",
        peak >> 20,
        HUGE >> 20
    );
    assert_eq!(h.ids(), vec![after.id]);
}
