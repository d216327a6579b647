//! Several streams (`cloudwatch.streams`) and `audit-relay replay`, against moto.

mod common;

use common::gen::{self, Gen};
use common::moto::{
    assert_checkpoints_forwarded, configure, event_ids, forward_state, now_ms, spool_checkpoints,
    spool_order, start_relay, Moto, HOSTNAME,
};
use common::proxy::{Faults, Mode, Proxy};
use common::{append_to, write_lines, Harness, BIN};
use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

const GROUP: &str = "/gitpod/audit";

/// `forwarded_seq` of `spool stats --json`, or -1 while the spool does not exist yet.
fn forwarded_seq(h: &Harness) -> i64 {
    let out = h.cli(&["spool", "stats", "--json"]);
    if !out.status.success() {
        return -1;
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["forwarded_seq"].as_i64().unwrap()
}

/// Waits until the spool holds `events` events and `spool stats` shows forwarding (every
/// stream's cursor) at `last_seq` (which counts checkpoint rows too); returns that cursor.
fn wait_all_forwarded(h: &Harness, relay: &mut common::Relay, events: u64) -> i64 {
    let mut cursor = -1;
    h.wait_until(
        Some(relay),
        "every stream's cursor at last_seq",
        Duration::from_secs(60),
        || {
            if h.count() < events {
                return false;
            }
            let last = forward_state(h).0;
            cursor = forwarded_seq(h);
            cursor >= last
        },
    );
    cursor
}

/// Writes `n` events a minute old (one per millisecond); returns their ids in order.
fn write_events(h: &Harness, g: &mut Gen, n: usize) -> Vec<String> {
    let t0 = now_ms() - 60_000;
    let (ids, lines): (Vec<String>, Vec<String>) = (0..n)
        .map(|i| {
            let s = gen::server_line(g, t0 + i as i64);
            (s.id, s.line)
        })
        .unzip();
    write_lines(&mut append_to(&h.log("server.log")), &lines);
    ids
}

#[test]
fn organizations_spread_over_streams_and_each_keeps_its_order() {
    let moto = Moto::start();
    let h = Harness::new();
    configure(
        &h,
        &moto.endpoint(),
        GROUP,
        // Checkpoints while running, so that every stream gets some.
        &["streams = 3", "[integrity]", "checkpoint_every = 500"],
    );
    let mut relay = start_relay(&h);
    let written = write_events(&h, &mut Gen::new(21), 3000);
    let cursor = wait_all_forwarded(&h, &mut relay, 3000);
    relay.terminate();
    // Past the cursor, at most the checkpoint written at shutdown.
    let past: Vec<i64> = spool_order(&h)
        .into_iter()
        .map(|(seq, _)| seq)
        .filter(|seq| *seq > cursor)
        .collect();
    assert!(past.is_empty(), "events past the cursor {cursor}: {past:?}");
    assert!(
        forward_state(&h).0 - cursor <= 1,
        "more than the shutdown checkpoint past the cursor {cursor}: {:?}",
        forward_state(&h)
    );
    assert!(
        spool_checkpoints(&h).iter().any(|c| c.seq <= cursor),
        "no checkpoint was forwarded"
    );

    let spool: Vec<String> = spool_order(&h).into_iter().map(|(_, id)| id).collect();
    assert_eq!(spool.len(), 3000);
    let mut seen = HashSet::new();
    let mut org_stream: HashMap<String, usize> = HashMap::new();
    for k in 0..3 {
        let all = moto.events(GROUP, &format!("{HOSTNAME}-{k}"));
        // Every stream has every forwarded checkpoint, once, in order.
        assert_checkpoints_forwarded(&h, &all, cursor, &[], &format!("stream {k}"));
        let events: Vec<_> = all.into_iter().filter(|e| !e.is_checkpoint()).collect();
        assert!(!events.is_empty(), "stream {k} is empty");
        let ids = event_ids(&events);
        // Within a stream, events keep the spool's order.
        let pos: HashMap<&String, usize> =
            spool.iter().enumerate().map(|(i, id)| (id, i)).collect();
        assert!(
            ids.windows(2).all(|w| pos[&w[0]] < pos[&w[1]]),
            "stream {k} out of order"
        );
        for e in &events {
            let org = e.json()["organizationId"].as_str().unwrap().to_string();
            let prev = org_stream.insert(org.clone(), k);
            assert!(
                prev.is_none_or(|p| p == k),
                "organization {org} in two streams"
            );
            assert!(seen.insert(e.id()), "id {} sent twice", e.id());
        }
    }
    let written: HashSet<String> = written.into_iter().collect();
    assert_eq!(seen, written, "every event in exactly one stream");
    assert!(
        org_stream.len() > 100,
        "only {} organizations",
        org_stream.len()
    );
}

#[test]
fn replay_sends_a_time_range_again_without_moving_the_cursor() {
    let moto = Moto::start();
    let h = Harness::new();
    configure(&h, &moto.endpoint(), GROUP, &[]);
    let mut relay = start_relay(&h);
    let t0 = now_ms() - 60_000;
    let mut g = Gen::new(22);
    let (ids, lines): (Vec<String>, Vec<String>) = (0..500)
        .map(|i| {
            let s = gen::server_line(&mut g, t0 + i * 1000);
            (s.id, s.line)
        })
        .unzip();
    write_lines(&mut append_to(&h.log("server.log")), &lines);
    wait_all_forwarded(&h, &mut relay, 500);
    relay.terminate();
    let cursor = forwarded_seq(&h);
    assert_eq!(event_ids(&moto.events(GROUP, HOSTNAME)).len(), 500);

    // Events 100..=199 (one second apart).
    let from = gen::rfc3339(t0 + 100 * 1000);
    let to = gen::rfc3339(t0 + 199 * 1000);
    let out = Command::new(BIN)
        .args([
            "-c",
            h.config.to_str().unwrap(),
            "replay",
            "--from",
            &from,
            "--to",
            &to,
        ])
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("HOSTNAME", HOSTNAME)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "replay failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("replayed 100 event(s)"), "{stdout}");

    let events = event_ids(&moto.events(GROUP, HOSTNAME));
    assert_eq!(events.len(), 600);
    let mut count: HashMap<String, usize> = HashMap::new();
    for id in events {
        *count.entry(id).or_default() += 1;
    }
    for (i, id) in ids.iter().enumerate() {
        let want = if (100..200).contains(&i) { 2 } else { 1 };
        assert_eq!(count[id], want, "event {i}");
    }
    assert_eq!(
        h.stats()["forwarded_seq"],
        cursor,
        "replay must not move the cursor"
    );
    assert!(cursor >= 500, "cursor {cursor} before the 500 events");

    // A bad range is a usage error naming the flags.
    let out = Command::new(BIN)
        .args([
            "-c",
            h.config.to_str().unwrap(),
            "replay",
            "--from",
            "yesterday",
            "--to",
            &to,
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--from"));
}

/// Renames a spool table behind the running relay's back (a real SQLite failure for
/// every reader that needs it).
fn rename_table(h: &Harness, from: &str, to: &str) {
    let c = rusqlite::Connection::open(h.db_path()).unwrap();
    c.busy_timeout(Duration::from_secs(10)).unwrap();
    c.execute_batch(&format!("ALTER TABLE {from} RENAME TO {to}"))
        .unwrap();
}

#[test]
fn a_failed_stream_lookup_is_retried_and_never_skips_or_misroutes_events() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.addr, Faults::default(), 11);
    let h = Harness::new();
    configure(&h, &proxy.endpoint(), GROUP, &["streams = 2"]);
    // CloudWatch unreachable first, so that the events wait in the spool.
    proxy.set_mode(Mode::Down);
    let mut relay = start_relay(&h);
    let written = write_events(&h, &mut Gen::new(23), 1000);
    h.wait_events(&mut relay, 1000);
    // Finding an organization's stream now fails: its id cannot be read.
    rename_table(&h, "orgs", "orgs_away");
    proxy.set_mode(Mode::Normal);
    let log = relay.log_path();
    h.wait_until(
        Some(&mut relay),
        "the failed lookup to be logged and retried",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(&log)
                .unwrap_or_default()
                .matches("spool_read")
                .count()
                >= 4
        },
    );
    std::thread::sleep(Duration::from_millis(500));
    let first_event = spool_order(&h)[0].0;
    let c = h.db().unwrap();
    let cursors: Vec<(String, i64)> = c
        .prepare("SELECT name, seq FROM cursors")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert!(
        cursors.iter().all(|(_, seq)| *seq < first_event),
        "a cursor moved over events whose stream is unknown: {cursors:?}"
    );
    for k in 0..2 {
        let sent = moto.events(GROUP, &format!("{HOSTNAME}-{k}"));
        assert!(
            event_ids(&sent).is_empty(),
            "stream {k} got events while their stream was unknown"
        );
    }

    // The lookup recovers: every event arrives, in its organization's stream.
    rename_table(&h, "orgs_away", "orgs");
    let cursor = wait_all_forwarded(&h, &mut relay, 1000);
    relay.terminate();
    assert!(cursor > 0);
    let mut seen = HashSet::new();
    for k in 0..2u32 {
        for e in moto.events(GROUP, &format!("{HOSTNAME}-{k}")) {
            if e.is_checkpoint() {
                continue;
            }
            let org = e.json()["organizationId"].as_str().unwrap().to_string();
            assert_eq!(
                audit_relay::forward::shard_of(&org, 2),
                k,
                "organization {org} in the wrong stream"
            );
            assert!(seen.insert(e.id()), "id {} sent twice", e.id());
        }
    }
    let written: HashSet<String> = written.into_iter().collect();
    assert_eq!(seen, written, "every event in its stream, none skipped");
}
