//! An event further in the future than CloudWatch takes is held, not rejected: the
//! events after it are still sent, and it is sent later, in a call of its own.

mod common;

use common::gen::{self, Gen};
use common::moto::{configure, event_ids, now_ms, rejected_rows, start_relay, Moto, HOSTNAME};
use common::proxy::{Faults, Proxy};
use common::{admin_addr, append_to, http_get, write_lines, Harness};
use std::time::Duration;

const GROUP: &str = "/gitpod/audit";

/// 200 events a minute old with one at `ahead_ms` in the future as the 100th; returns
/// every id in spool order and the one ahead.
fn write_with_one_ahead(h: &Harness, seed: u64, ahead_ms: i64) -> (Vec<String>, String) {
    let t0 = now_ms() - 60_000;
    let mut g = Gen::new(seed);
    let (ids, lines): (Vec<String>, Vec<String>) = (0..200)
        .map(|i| {
            let ms = if i == 99 { now_ms() + ahead_ms } else { t0 + i };
            let s = gen::server_line(&mut g, ms);
            (s.id, s.line)
        })
        .unzip();
    write_lines(&mut append_to(&h.log("server.log")), &lines);
    let ahead = ids[99].clone();
    (ids, ahead)
}

#[test]
fn an_event_2h05m_ahead_is_held_counted_and_does_not_block_the_stream() {
    let moto = Moto::start();
    let h = Harness::new();
    configure(
        &h,
        &moto.endpoint(),
        GROUP,
        &["[admin]", "listen = \"127.0.0.1:0\""],
    );
    let (ids, ahead) = write_with_one_ahead(&h, 51, 2 * 3_600_000 + 5 * 60_000);
    let mut relay = start_relay(&h);
    let addr = admin_addr(&relay);
    h.wait_until(
        Some(&mut relay),
        "the 199 others in CloudWatch",
        Duration::from_secs(60),
        || {
            h.count() >= 200
                && h.stat("forwarded") >= 199
                && event_ids(&moto.events(GROUP, HOSTNAME)).len() >= 199
        },
    );
    let want: Vec<String> = ids.iter().filter(|id| **id != ahead).cloned().collect();
    assert_eq!(event_ids(&moto.events(GROUP, HOSTNAME)), want);
    assert!(rejected_rows(&h).is_empty(), "{:?}", rejected_rows(&h));
    let stats = h.stats();
    assert_eq!(stats["held"], 1, "{stats}");
    assert_eq!(stats["rejected"], 0, "{stats}");
    assert!(
        stats["forwarded_seq"].as_i64().unwrap() < 100,
        "the cursor waits before the held event: {stats}"
    );
    let metrics = http_get(&addr, "/metrics").1;
    assert!(
        metrics.contains("audit_relay_forward_held_events 1"),
        "{metrics}"
    );
    assert_eq!(
        http_get(&addr, "/readyz").0,
        200,
        "holding is not a failure"
    );
    let out = h.cli_ok(&["spool", "stats"]);
    assert!(out.contains("held         1"), "{out}");
    relay.terminate();
}

#[test]
fn a_held_event_is_sent_in_a_call_of_its_own_once_cloudwatch_takes_it() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.addr, Faults::default(), 13);
    let h = Harness::new();
    // A short window (as if CloudWatch took 2 s ahead): the event 4 s ahead is held,
    // then sent about 2 s later.
    configure(&h, &proxy.endpoint(), GROUP, &["max_future = \"2s\""]);
    let (ids, ahead) = write_with_one_ahead(&h, 52, 4_000);
    let mut relay = start_relay(&h);
    h.wait_until(
        Some(&mut relay),
        "all 200 in CloudWatch",
        Duration::from_secs(60),
        || {
            h.count() >= 200
                && h.stat("forwarded") >= 200
                && event_ids(&moto.events(GROUP, HOSTNAME)).len() >= 200
        },
    );
    relay.terminate();
    assert!(rejected_rows(&h).is_empty(), "{:?}", rejected_rows(&h));
    assert_eq!(h.stats()["rejected"], 0);
    let got = event_ids(&moto.events(GROUP, HOSTNAME));
    let mut sorted = got.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 200, "each event once");
    let mut all = ids.clone();
    all.sort();
    assert_eq!(sorted, all);
    // The held one travelled alone, after the others.
    let calls = proxy.calls();
    let own: Vec<_> = calls
        .iter()
        .filter(|c| c.events.iter().any(|(_, m)| m.contains(&ahead)))
        .collect();
    assert!(!own.is_empty());
    assert!(
        own.iter().all(|c| c.events.len() == 1),
        "sent in a call of its own"
    );
    let first_other = calls
        .iter()
        .position(|c| c.events.iter().any(|(_, m)| m.contains(&ids[150])))
        .unwrap();
    assert!(
        own[0].n > first_other,
        "the events after it were not blocked"
    );
    common::proxy::assert_cloudwatch_rules(&calls);
}

#[test]
fn events_held_in_memory_are_capped_and_the_rest_rejected_as_before() {
    // 10,000 are held (the cap); the 40 beyond it are refused as too_new, recorded, and
    // kept in the spool, so a writer of future timestamps cannot grow the relay.
    const HELD_CAP: usize = 10_000;
    let moto = Moto::start();
    let h = Harness::new();
    configure(
        &h,
        &moto.endpoint(),
        GROUP,
        &["[admin]", "listen = \"127.0.0.1:0\""],
    );
    let ahead = now_ms() + 3 * 3_600_000;
    let mut g = Gen::new(77);
    let lines: Vec<String> = (0..HELD_CAP as i64 + 40)
        .map(|i| gen::server_line(&mut g, ahead + i).line)
        .collect();
    write_lines(&mut append_to(&h.log("server.log")), &lines);
    let mut relay = start_relay(&h);
    let addr = admin_addr(&relay);
    h.wait_until(
        Some(&mut relay),
        "40 rejected beyond the cap",
        Duration::from_secs(60),
        // Once every event is stored, the spool's schema exists to be read.
        || h.count() >= HELD_CAP as u64 + 40 && rejected_rows(&h).len() >= 40,
    );
    let metrics = http_get(&addr, "/metrics").1;
    assert!(
        metrics.contains(&format!("audit_relay_forward_held_events {HELD_CAP}")),
        "{metrics}"
    );
    let rows = rejected_rows(&h);
    assert_eq!(rows.len(), 40, "{rows:?}");
    assert!(rows.iter().all(|(_, r)| r == "too_new"), "{rows:?}");
    assert!(event_ids(&moto.events(GROUP, HOSTNAME)).is_empty());
    assert_eq!(
        h.count(),
        HELD_CAP as u64 + 40,
        "every event stays in the spool"
    );
    relay.terminate();
}
