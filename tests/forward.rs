//! Forwarding to CloudWatch Logs, end to end: the real binary, a real moto server, and a
//! recording proxy between them (no faults here) whose every PutLogEvents request is
//! checked against CloudWatch's rules. Read back with GetLogEvents.
//!
//! moto returns a stream's events sorted by timestamp, keeping the order they arrived in
//! among equal timestamps; so events are stamped in runs of equal timestamps that span
//! several calls, and the order read back shows the order the relay sent them in.

mod common;

use common::gen::{self, Gen};
use common::moto::{
    assert_checkpoints_forwarded, assert_only_shutdown_checkpoint_unforwarded,
    assert_same_sequence, checkpoint_messages, configure, event_ids, forward_state, now_ms,
    rejected_rows, spool_checkpoints, spool_order, start_relay, wait_all_forwarded, Moto, HOSTNAME,
};
use common::proxy::{assert_cloudwatch_rules, call_bytes, is_checkpoint, Faults, Outcome, Proxy};
use common::{append_to, write_lines, Harness};
use serde_json::Value;
use std::collections::HashMap;
use std::time::{Duration, Instant};

const GROUP: &str = "/gitpod/audit";

/// `n` server-log lines, event `i` stamped `t0 + i / tie` ms; returns (ids, lines).
fn lines(g: &mut Gen, t0: i64, first: usize, n: usize, tie: usize) -> (Vec<String>, Vec<String>) {
    (first..first + n)
        .map(|i| {
            let s = gen::server_line(g, t0 + (i / tie) as i64);
            (s.id, s.line)
        })
        .unzip()
}

/// `(seq, ts_ms, body)` of every stored event, in sequence order.
fn spool_rows(h: &Harness) -> Vec<(i64, i64, String)> {
    let c = h.db().expect("spool exists");
    let mut stmt = c
        .prepare("SELECT seq, ts_ms, body FROM events WHERE org != 0 ORDER BY seq")
        .unwrap();
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s:?}"))
}

#[test]
fn hundred_thousand_events_arrive_once_in_spool_order() {
    const TOTAL: usize = 100_000;
    const CHUNK: usize = 10_000;
    let started = Instant::now();
    let moto = Moto::start();
    let proxy = Proxy::start(moto.addr, Faults::default(), 1);
    let h = Harness::new();
    configure(&h, &proxy.endpoint(), GROUP, &[]);
    let mut relay = start_relay(&h);

    // A minute ago, in runs of 2,000 equal timestamps.
    let t0 = now_ms() - 60_000;
    let mut g = Gen::new(11);
    let mut written = Vec::with_capacity(TOTAL);
    let mut f = append_to(&h.log("server.log"));
    for c in 0..TOTAL / CHUNK {
        let (ids, ls) = lines(&mut g, t0, c * CHUNK, CHUNK, 2000);
        write_lines(&mut f, &ls);
        written.extend(ids);
    }
    wait_all_forwarded(&h, &mut relay, TOTAL as u64, Duration::from_secs(300));
    let forwarded_in = started.elapsed();
    relay.terminate();

    // Every event forwarded; past the cursor at most the shutdown checkpoint.
    let (last, cursor) = assert_only_shutdown_checkpoint_unforwarded(&h);
    let checkpoints = spool_checkpoints(&h);
    let stats = h.stats();
    assert_eq!(stats["events"], TOTAL as u64, "{stats}");
    assert_eq!(
        stats["last_seq"],
        (TOTAL + checkpoints.len()) as u64,
        "sequence numbers are the events' and the checkpoints': {stats}"
    );
    assert_eq!(stats["checkpoints"], checkpoints.len() as u64, "{stats}");
    assert_eq!(stats["rejected"], 0, "{stats}");

    let rows = spool_rows(&h);
    let spool_ids: Vec<String> = spool_order(&h).into_iter().map(|(_, id)| id).collect();
    assert_eq!(
        spool_ids, written,
        "the spool holds the lines in file order"
    );

    let cw = moto.events(GROUP, HOSTNAME);
    let cw_ids = event_ids(&cw);
    assert_same_sequence(&cw_ids, &spool_ids, "100,000 events");
    let cw_events: Vec<_> = cw.iter().filter(|e| !e.is_checkpoint()).collect();
    for (e, (seq, ts, body)) in cw_events.iter().zip(&rows) {
        assert_eq!(e.timestamp, *ts, "CloudWatch timestamp of seq {seq}");
        assert_eq!(
            e.json(),
            json(body),
            "message of seq {seq} is the event JSON"
        );
    }
    // The checkpoints: each forwarded one once, in sequence order, as stored; each covers
    // the row before it, and its chain head is that row's hash.
    let cw_checkpoints = assert_checkpoints_forwarded(&h, &cw, cursor, &[], "100,000 events");
    assert_eq!(
        cw_checkpoints,
        checkpoints.len() - (last - cursor) as usize,
        "every checkpoint but the shutdown one is in CloudWatch"
    );
    // checkpoint_every = 10,000 (the default): with 100,000 events some commit wrote one
    // before the last events, so it was forwarded with them.
    assert!(cw_checkpoints >= 1, "no checkpoint was forwarded");
    let hash_of = |seq: i64| -> Vec<u8> {
        h.db()
            .unwrap()
            .query_row("SELECT hash FROM events WHERE seq = ?1", [seq], |r| {
                r.get(0)
            })
            .unwrap_or_else(|e| panic!("row {seq}: {e}"))
    };
    for (m, row) in checkpoint_messages(&cw).iter().zip(&checkpoints) {
        let j = m.json();
        assert_eq!(
            j["sequence"],
            row.seq - 1,
            "checkpoint row {}: {j}",
            row.seq
        );
        let hex: String = hash_of(row.seq - 1)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(
            j["chainHead"].as_str(),
            Some(hex.as_str()),
            "checkpoint row {}: the chain head is the hash of row {}",
            row.seq,
            row.seq - 1
        );
    }

    let calls = proxy.calls();
    assert_cloudwatch_rules(&calls);
    assert!(
        calls.iter().all(|c| c.outcome == Outcome::Passed(200)),
        "every call succeeded: {:?}",
        calls.iter().map(|c| c.outcome).collect::<Vec<_>>()
    );
    assert!(calls
        .iter()
        .all(|c| c.group == GROUP && c.stream == HOSTNAME));
    let (sent_checkpoints, sent): (Vec<usize>, Vec<usize>) = calls
        .iter()
        .map(|c| {
            let k = c.events.iter().filter(|(_, m)| is_checkpoint(m)).count();
            (k, c.events.len() - k)
        })
        .unzip();
    assert_eq!(sent.iter().sum::<usize>(), TOTAL, "no event was sent twice");
    assert_eq!(
        sent_checkpoints.iter().sum::<usize>(),
        cw_checkpoints,
        "no checkpoint was sent twice"
    );
    let mut sizes: Vec<usize> = calls.iter().map(|c| c.events.len()).collect();
    sizes.sort_unstable();
    let median = sizes[sizes.len() / 2];
    let median_bytes = {
        let mut b: Vec<usize> = calls.iter().map(call_bytes).collect();
        b.sort_unstable();
        b[b.len() / 2]
    };
    eprintln!(
        "{} calls, median {median} events / {median_bytes} bytes; forwarded in {forwarded_in:?}, test took {:?}",
        calls.len(),
        started.elapsed()
    );
    assert!(
        median > 1000,
        "calls are not full under a backlog: median {median} events ({median_bytes} bytes), sizes {sizes:?}"
    );
}

#[test]
fn deleted_log_group_is_recreated_and_nothing_is_lost() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.addr, Faults::default(), 2);
    let h = Harness::new();
    configure(&h, &proxy.endpoint(), GROUP, &[]);
    let mut relay = start_relay(&h);
    let t0 = now_ms() - 60_000;
    let mut g = Gen::new(12);
    let mut f = append_to(&h.log("server.log"));

    let (before, ls) = lines(&mut g, t0, 0, 300, 100);
    write_lines(&mut f, &ls);
    wait_all_forwarded(&h, &mut relay, 300, Duration::from_secs(30));
    let cw = event_ids(&moto.events(GROUP, HOSTNAME));
    assert_same_sequence(&cw, &before, "before the deletion");

    moto.delete_group(GROUP);
    assert!(!moto.groups().contains(&GROUP.to_string()), "group deleted");
    let calls_before = proxy.calls().len();

    let (after, ls) = lines(&mut g, t0, 300, 300, 100);
    write_lines(&mut f, &ls);
    wait_all_forwarded(&h, &mut relay, 600, Duration::from_secs(60));
    relay.terminate();

    assert!(
        moto.groups().contains(&GROUP.to_string()),
        "the relay created the group again"
    );
    // The events sent before went with the group; every one written after arrives once,
    // in order.
    let cw = event_ids(&moto.events(GROUP, HOSTNAME));
    assert_same_sequence(&cw, &after, "after the deletion");

    let calls = proxy.calls();
    assert_cloudwatch_rules(&calls);
    common::proxy::assert_retries_identical(&calls);
    assert!(
        calls[calls_before..]
            .iter()
            .any(|c| c.outcome == Outcome::Passed(400)),
        "no call met the missing group (ResourceNotFoundException): the test did not exercise it"
    );
    assert_only_shutdown_checkpoint_unforwarded(&h);
    let stats = h.stats();
    assert_eq!(stats["events"], 600, "{stats}");
    assert_eq!(stats["rejected"], 0, "{stats}");
}

#[test]
fn too_old_too_new_and_oversize_events() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.addr, Faults::default(), 3);
    let h = Harness::new();
    configure(
        &h,
        &proxy.endpoint(),
        GROUP,
        &["max_event_bytes = \"4KiB\""],
    );
    let now = now_ms();
    let mut g = Gen::new(13);
    let mut normal = Vec::new();
    let mut ls = Vec::new();
    let mut add_normal = |g: &mut Gen, ls: &mut Vec<String>, k: i64| {
        for i in 0..10 {
            let s = gen::server_line(g, now - 60_000 + k * 100 + i);
            normal.push(s.id);
            ls.push(s.line);
        }
    };
    add_normal(&mut g, &mut ls, 0);
    let old = gen::server_line(&mut g, now - 15 * 86_400_000);
    ls.push(old.line);
    add_normal(&mut g, &mut ls, 1);
    // Beyond the hold horizon (2 h + 24 h): rejected. One less far ahead is held (see
    // tests/forward_hold.rs).
    let new = gen::server_line(&mut g, now + 27 * 3_600_000);
    ls.push(new.line);
    // An event of about 10 KiB (bare event form), over max_event_bytes.
    let big_id = g.uuid();
    let big_org = gen::org_id(7);
    let big_actor = gen::actor_id(8);
    let big_ts = now - 60_000 + 250;
    ls.push(format!(
        r#"{{"id":"{big_id}","timestamp":"{}","action":"updateOrgSettings","organizationId":"{big_org}","actorId":"{big_actor}","args":["{}"]}}"#,
        gen::rfc3339(big_ts),
        "x".repeat(10 * 1024)
    ));
    add_normal(&mut g, &mut ls, 3);

    let mut relay = start_relay(&h);
    write_lines(&mut append_to(&h.log("server.log")), &ls);
    wait_all_forwarded(&h, &mut relay, 33, Duration::from_secs(30));
    relay.terminate();

    let seq_of: HashMap<String, i64> = spool_order(&h)
        .into_iter()
        .map(|(seq, id)| (id, seq))
        .collect();
    assert_eq!(seq_of.len(), 33, "every event is in the spool");
    let stats = h.stats();
    assert_eq!(stats["events"], 33, "{stats}");
    assert_eq!(stats["rejected"], 2, "{stats}");
    let (_, cursor) = assert_only_shutdown_checkpoint_unforwarded(&h);
    assert_eq!(
        rejected_rows(&h),
        vec![
            (seq_of[&old.id], "too_old".to_string()),
            (seq_of[&new.id], "too_new".to_string())
        ]
    );
    assert!(h.body(&old.id).is_some() && h.body(&new.id).is_some());

    let cw = moto.events(GROUP, HOSTNAME);
    assert_checkpoints_forwarded(&h, &cw, cursor, &[], "too old, too new, oversize");
    let mut by_id: HashMap<String, (i64, Value)> = HashMap::new();
    for e in cw.iter().filter(|e| !e.is_checkpoint()) {
        let prev = by_id.insert(e.id(), (e.timestamp, e.json()));
        assert!(prev.is_none(), "{} arrived twice", e.id());
    }
    assert!(!by_id.contains_key(&old.id), "the too-old event was sent");
    assert!(!by_id.contains_key(&new.id), "the too-new event was sent");
    for id in &normal {
        let (_, msg) = by_id
            .get(id)
            .unwrap_or_else(|| panic!("event {id} (seq {}) is missing", seq_of[id]));
        assert_eq!(*msg, json(&h.body(id).unwrap()), "message of {id}");
    }
    assert_eq!(
        by_id.len(),
        normal.len() + 1,
        "30 normal events and the stub"
    );

    let (ts, stub) = by_id
        .get(&big_id)
        .expect("the oversize event arrives as a stub");
    assert_eq!(*ts, big_ts);
    assert_eq!(stub["id"], big_id.as_str());
    assert_eq!(stub["action"], "updateOrgSettings");
    assert_eq!(stub["organizationId"], big_org.as_str());
    assert_eq!(stub["actorId"], big_actor.as_str());
    assert_eq!(stub["truncated"], true);
    assert_eq!(stub["timestamp"], gen::rfc3339(big_ts).as_str());
    assert!(stub.get("args").is_none(), "the stub has no args: {stub}");
    let kept = json(&h.body(&big_id).unwrap());
    assert_eq!(
        kept["args"][0].as_str().map(str::len),
        Some(10 * 1024),
        "the spool keeps the oversize event whole"
    );

    let calls = proxy.calls();
    assert_cloudwatch_rules(&calls);
    for c in &calls {
        for (_, m) in &c.events {
            assert!(
                m.len() + 26 <= 4096,
                "a message over max_event_bytes was sent"
            );
            assert!(!m.contains(&old.id) && !m.contains(&new.id));
        }
    }
    let last_event = seq_of.values().copied().max().unwrap();
    assert!(
        cursor >= last_event,
        "the cursor ({cursor}) moved past every event, the rejected ones too (last {last_event})"
    );
}

#[test]
fn static_fields_appear_in_every_message() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.addr, Faults::default(), 4);
    let h = Harness::new();
    configure(
        &h,
        &proxy.endpoint(),
        GROUP,
        &[
            "[cloudwatch.static_fields]",
            "cluster = \"eu-1\"",
            // Checkpoints while running (50 events), so that some are forwarded too.
            "[integrity]",
            "checkpoint_every = 10",
        ],
    );
    let mut g = Gen::new(14);
    let (ids, ls) = lines(&mut g, now_ms() - 60_000, 0, 50, 10);
    let mut relay = start_relay(&h);
    write_lines(&mut append_to(&h.log("server.log")), &ls);
    wait_all_forwarded(&h, &mut relay, 50, Duration::from_secs(30));
    relay.terminate();
    let (_, cursor) = assert_only_shutdown_checkpoint_unforwarded(&h);

    let cw = moto.events(GROUP, HOSTNAME);
    assert_same_sequence(&event_ids(&cw), &ids, "static fields");
    // Checkpoints are messages like any other: the static field is in them too.
    let checkpoints = assert_checkpoints_forwarded(&h, &cw, cursor, &["cluster"], "static fields");
    assert!(checkpoints >= 1, "no checkpoint was forwarded");
    for e in cw.iter().filter(|e| !e.is_checkpoint()) {
        let mut m = e.json();
        assert_eq!(
            m["cluster"], "eu-1",
            "message without the static field: {m}"
        );
        m.as_object_mut().unwrap().remove("cluster");
        assert_eq!(m, json(&h.body(&e.id()).unwrap()), "the rest is the event");
    }
    assert_cloudwatch_rules(&proxy.calls());
}

/// The harness's own checks can fail: each rule broken once is reported.
#[test]
fn rule_checks_catch_broken_calls() {
    use common::proxy::{assert_retries_identical, PutCall};
    let call = |n: usize, events: Vec<(i64, String)>, outcome: Outcome| PutCall {
        n,
        epoch: 0,
        group: GROUP.into(),
        stream: HOSTNAME.into(),
        events,
        outcome,
        decided: None,
    };
    let ok = |k: usize| {
        (0..k)
            .map(|i| (i as i64, "m".repeat(10)))
            .collect::<Vec<_>>()
    };
    let fails =
        |calls: Vec<PutCall>| std::panic::catch_unwind(|| assert_cloudwatch_rules(&calls)).is_err();
    assert!(!fails(vec![call(0, ok(10_000), Outcome::Passed(200))]));
    assert!(
        fails(vec![call(0, ok(10_001), Outcome::Passed(200))]),
        "10,001 events"
    );
    let big = vec![(0, "x".repeat(1_048_576 - 26 - 10)), (1, "y".repeat(11))];
    assert!(fails(vec![call(0, big, Outcome::Passed(200))]), "1 MiB + 1");
    let back = vec![(5, "a".into()), (4, "b".into())];
    assert!(
        fails(vec![call(0, back, Outcome::Passed(200))]),
        "time goes back"
    );
    let span = vec![(0, "a".into()), (24 * 3_600_000 + 1, "b".into())];
    assert!(
        fails(vec![call(0, span, Outcome::Passed(200))]),
        "24 h + 1 ms"
    );
    let retried = vec![
        call(0, ok(3), Outcome::Throttled),
        call(1, ok(2), Outcome::Passed(200)),
    ];
    assert!(
        std::panic::catch_unwind(|| assert_retries_identical(&retried)).is_err(),
        "a retry that differs"
    );
}

/// A crash between CloudWatch accepting a call and the cursor's commit: at the next start
/// the forwarder finds those events at the stream's end and does not send them again;
/// what is not there is sent.
#[test]
fn events_accepted_before_a_lost_cursor_commit_are_not_sent_twice() {
    let moto = Moto::start();
    let h = Harness::new();
    configure(&h, &moto.endpoint(), GROUP, &[]);
    let mut relay = start_relay(&h);
    let t0 = now_ms() - 60_000;
    let mut g = Gen::new(21);
    let (first, ls) = lines(&mut g, t0, 0, 800, 1);
    write_lines(&mut append_to(&h.log("server.log")), &ls);
    wait_all_forwarded(&h, &mut relay, 800, Duration::from_secs(30));
    relay.terminate();
    // As if the last commits of the cursor were lost: 500 rows back.
    let (last, cursor) = forward_state(&h);
    assert_eq!(last, cursor);
    rusqlite::Connection::open(h.db_path())
        .unwrap()
        .execute("UPDATE cursors SET seq = seq - 500", [])
        .unwrap();
    // And 200 new events the stream has not seen.
    let (second, ls) = lines(&mut g, t0, 800, 200, 1);
    write_lines(&mut append_to(&h.log("server.log")), &ls);
    let mut relay = start_relay(&h);
    wait_all_forwarded(&h, &mut relay, 1000, Duration::from_secs(30));
    let log = relay.log();
    relay.terminate();
    assert!(
        log.contains("in CloudWatch already"),
        "the forwarder did not look at the stream's end: {log}"
    );
    let cw = event_ids(&moto.events(GROUP, HOSTNAME));
    let all: Vec<String> = first.into_iter().chain(second).collect();
    assert_same_sequence(&cw, &all, "after the lost cursor commit");
}
