//! The installation store, end to end: real relays (the binary), real SQLite spools, a
//! real PostgreSQL server started by the test. Shipping is exactly once: after SIGKILLs
//! of the relays and crashes of the server, every event is in PostgreSQL once, each
//! relay's rows in its spool order.

mod common;

use common::postgres::Postgres;
use common::{gen, server_lines, write_lines, Harness, Relay, DEADLINE};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

/// A relay of the installation: its own spool and pod log, shipping as `relay_id`.
fn relay(pg: &Postgres, relay_id: &str, extra: &[&str]) -> Harness {
    let h = Harness::new();
    let mut text = h.config_text(&[], &[]);
    // The generated events are from 2024: keep them (retention is tested on its own).
    let mut extra = extra.to_vec();
    if !extra.iter().any(|l| l.starts_with("retention_days")) {
        extra.push("retention_days = 36500");
    }
    text.push_str(&pg.config_section(relay_id, &extra));
    h.write_config(&text);
    h
}

/// Rows in the store per relay: (count, distinct seqs, min seq, max seq).
fn store_rows(pg: &Postgres) -> HashMap<String, (i64, i64, i64, i64)> {
    let mut c = pg.client();
    let rows = c
        .query(
            "SELECT relay_id, count(*), count(DISTINCT seq), min(seq), max(seq)
             FROM (SELECT relay_id, seq FROM audit_events UNION ALL SELECT relay_id, seq FROM audit_duplicates) r
             GROUP BY relay_id",
            &[],
        )
        .unwrap_or_default();
    rows.iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2), r.get(3), r.get(4))))
        .collect()
}

fn wait_for(what: &str, deadline: Duration, mut f: impl FnMut() -> bool, logs: &[&Relay]) {
    let start = Instant::now();
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

/// The spool's last sequence number (every row: events, checkpoints, ledger rows).
fn spool_last_seq(h: &Harness) -> i64 {
    h.db()
        .and_then(|c| {
            c.query_row("SELECT value FROM meta WHERE key = 'last_seq'", [], |r| {
                r.get(0)
            })
            .ok()
        })
        .unwrap_or(0)
}

#[test]
fn one_relay_ships_every_row_once_and_the_cursor_survives_restarts() {
    let pg = Postgres::start();
    let h = relay(&pg, "pod-a", &[]);
    let mut g = gen::Gen::new(7);
    let (ids, lines) = server_lines(&mut g, 0, 2_000);
    let mut f = common::append_to(&h.log("server.log"));
    write_lines(&mut f, &lines);
    let mut r = h.start();
    h.wait_events(&mut r, 2_000);
    wait_for(
        "2000 events shipped",
        DEADLINE,
        || {
            pg.try_i64("SELECT count(*) FROM audit_events WHERE organization_id <> ''")
                == Some(2_000)
        },
        &[&r],
    );
    r.terminate();
    // The store's rows are the spool's: same ids, same seq, same hash.
    let mut c = pg.client();
    let got: HashSet<String> = c
        .query(
            "SELECT id::text FROM audit_events WHERE organization_id <> ''",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(got, ids.iter().cloned().collect::<HashSet<_>>());
    let spool = h.db().unwrap();
    let mut st = spool
        .prepare("SELECT seq, hash FROM events ORDER BY seq")
        .unwrap();
    let local: Vec<(i64, Vec<u8>)> = st
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(|r| r.unwrap())
        .collect();
    let remote: Vec<(i64, Vec<u8>)> = c
        .query(
            "SELECT seq, hash FROM audit_events WHERE relay_id = 'pod-a' ORDER BY seq",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        local, remote,
        "every row of the chain, checkpoints included"
    );
    let (shipped, first): (i64, i64) = {
        let row = c
            .query_one(
                "SELECT shipped_seq, first_seq FROM audit_relays WHERE relay_id = 'pod-a'",
                &[],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((first, shipped), (1, local.last().unwrap().0));
    // The local copy of the cursor lets retention know what the store has.
    let local_cursor: i64 = spool
        .query_row("SELECT seq FROM cursors WHERE name = 'postgres'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(
        local_cursor > 2_000 && local_cursor <= shipped,
        "{local_cursor} vs {shipped}"
    );
    // `spool stats` shows the store's cursor and lag.
    let stats = h.cli_ok(&["spool", "stats", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(
        v["postgres"]["cursor"].as_i64(),
        Some(local_cursor),
        "{stats}"
    );
}

#[test]
#[allow(clippy::needless_range_loop)]
fn three_relays_sigkilled_and_postgres_crashing_ship_every_event_exactly_once() {
    const PER_RELAY: usize = 100_000;
    const ROUNDS: usize = 4;
    let pg = Postgres::start();
    let relays: Vec<Harness> = ["pod-a", "pod-b", "pod-c"]
        .iter()
        .map(|id| relay(&pg, id, &["batch_rows = 2000"]))
        .collect();
    let mut all_ids: HashSet<String> = HashSet::new();
    let mut files = Vec::new();
    let mut batches: Vec<Vec<Vec<String>>> = Vec::new();
    for (i, h) in relays.iter().enumerate() {
        let mut g = gen::Gen::new(100 + i as u64);
        let (ids, lines) = server_lines(&mut g, i as i64 * 1_000_000, PER_RELAY);
        assert_eq!(ids.len(), PER_RELAY);
        all_ids.extend(ids);
        files.push(common::append_to(&h.log("server.log")));
        batches.push(
            lines
                .chunks(PER_RELAY / ROUNDS)
                .map(|c| c.to_vec())
                .collect(),
        );
    }
    assert_eq!(all_ids.len(), 3 * PER_RELAY, "distinct ids across relays");
    // Each round: a quarter of each pod's log arrives; the relays run and are SIGKILLed
    // mid-shipping (3 kills each); PostgreSQL crashes twice while they run.
    for round in 0..ROUNDS {
        for (i, f) in files.iter_mut().enumerate() {
            write_lines(f, &batches[i][round]);
        }
        let mut running: Vec<Relay> = relays.iter().map(|h| h.start()).collect();
        let target = (round + 1) * PER_RELAY / ROUNDS;
        for (h, r) in relays.iter().zip(running.iter_mut()) {
            h.wait_events(r, target as u64);
        }
        if round == 1 || round == 2 {
            // The server crashes while the relays ship, and comes back.
            std::thread::sleep(Duration::from_millis(300));
            pg.stop_immediate();
            std::thread::sleep(Duration::from_millis(1_500));
            pg.start_again();
        }
        if round < ROUNDS - 1 {
            // SIGKILL while some of the quarter is shipped (not all).
            std::thread::sleep(Duration::from_millis(200 * round as u64 + 300));
            for r in running {
                r.kill();
            }
        } else {
            let refs: Vec<&Relay> = running.iter().collect();
            wait_for(
                "every relay caught up",
                Duration::from_secs(120),
                || {
                    let rows = store_rows(&pg);
                    relays
                        .iter()
                        .zip(["pod-a", "pod-b", "pod-c"])
                        .all(|(h, id)| rows.get(id).is_some_and(|r| r.3 == spool_last_seq(h)))
                },
                &refs,
            );
            for r in running {
                r.terminate();
            }
        }
    }
    // Exactly once: no duplicate (ts, id) (the key forbids it), no seq twice, none missing.
    let rows = store_rows(&pg);
    for (h, id) in relays.iter().zip(["pod-a", "pod-b", "pod-c"]) {
        let (n, distinct, min, max) = rows[id];
        let last = spool_last_seq(h);
        assert_eq!(
            (n, distinct, min, max),
            (last, last, 1, last),
            "{id}: rows, distinct seqs, first, last"
        );
    }
    let mut c = pg.client();
    let events: Vec<String> = c
        .query(
            "SELECT id::text FROM audit_events WHERE organization_id <> ''",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(events.len(), 3 * PER_RELAY, "every event once");
    assert_eq!(events.into_iter().collect::<HashSet<_>>(), all_ids);
    let dups = pg.query_i64("SELECT count(*) FROM audit_duplicates");
    assert_eq!(dups, 0, "no relay's row stood in for another's");
    // Each relay's rows are its spool's, in its order, hash for hash.
    for (h, id) in relays.iter().zip(["pod-a", "pod-b", "pod-c"]) {
        let spool = h.db().unwrap();
        let mut st = spool
            .prepare("SELECT seq, hash FROM events ORDER BY seq")
            .unwrap();
        let local: Vec<(i64, Vec<u8>)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        let remote: Vec<(i64, Vec<u8>)> = c
            .query(
                "SELECT seq, hash FROM audit_events WHERE relay_id = $1 ORDER BY seq",
                &[&id],
            )
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        assert_eq!(local.len(), remote.len(), "{id}");
        assert!(
            local == remote,
            "{id}: the store's chain differs from the spool's"
        );
    }
}

#[test]
fn a_second_relay_with_the_same_relay_id_does_not_ship_and_says_why() {
    let pg = Postgres::start();
    let a = relay(&pg, "same-id", &[]);
    let b = relay(&pg, "same-id", &[]);
    let mut g = gen::Gen::new(3);
    let (_, lines) = server_lines(&mut g, 0, 10);
    write_lines(&mut common::append_to(&a.log("server.log")), &lines);
    let mut ra = a.start();
    a.wait_events(&mut ra, 10);
    wait_for(
        "relay a ships",
        DEADLINE,
        || pg.try_i64("SELECT count(*) FROM audit_events WHERE organization_id <> ''") == Some(10),
        &[&ra],
    );
    let (_, lines) = server_lines(&mut g, 1_000, 10);
    write_lines(&mut common::append_to(&b.log("server.log")), &lines);
    let mut rb = b.start();
    b.wait_events(&mut rb, 10);
    wait_for(
        "relay b refuses to ship",
        DEADLINE,
        || {
            rb.log()
                .contains("another running relay ships as relay_id \"same-id\"")
        },
        &[&rb],
    );
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        pg.query_i64("SELECT count(*) FROM audit_events WHERE organization_id <> ''"),
        10,
        "b shipped nothing"
    );
    ra.terminate();
    rb.terminate();
}
