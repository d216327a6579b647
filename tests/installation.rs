//! The installation store, end to end: real relays (the binary), real SQLite spools, a
//! real PostgreSQL server started by the test. Shipping is exactly once: after SIGKILLs
//! of the relays and crashes of the server, every event is in PostgreSQL once, each
//! relay's rows in its spool order.

mod common;

use common::wait_for;

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
                        .all(|(h, id)| rows.get(id).is_some_and(|r| r.3 == h.spool_last_seq()))
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
        let last = h.spool_last_seq();
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
fn events_another_relay_stored_first_are_kept_beside_it_and_both_chains_verify() {
    // Two pods' relays tail copies of the same 1,000 events (same timestamps and ids);
    // pod-b has 500 of its own after them. pod-a ships first: pod-b's first batch then
    // fails the plain copy on the (ts_ms, id) key, and the fallback keeps its copies in
    // audit_duplicates instead of losing its chain or storing an event twice.
    let pg = Postgres::start();
    let a = relay(&pg, "pod-a", &[]);
    let b = relay(&pg, "pod-b", &[]);
    let mut g = gen::Gen::new(11);
    let (shared_ids, shared) = server_lines(&mut g, 0, 1_000);
    let (own_ids, own) = server_lines(&mut g, 1_000, 500);
    write_lines(&mut common::append_to(&a.log("server.log")), &shared);
    let mut fb = common::append_to(&b.log("server.log"));
    write_lines(&mut fb, &shared);
    write_lines(&mut fb, &own);
    let events_in_store =
        || pg.try_i64("SELECT count(*) FROM audit_events WHERE organization_id <> ''");
    let ra = a.start();
    wait_for(
        "pod-a's 1000 events shipped",
        DEADLINE,
        || events_in_store() == Some(1_000),
        &[&ra],
    );
    let rb = b.start();
    wait_for(
        "pod-b's 500 own events shipped",
        DEADLINE,
        || events_in_store() == Some(1_500),
        &[&ra, &rb],
    );
    let shipped = |id: &str| {
        pg.try_i64(&format!(
            "SELECT shipped_seq FROM audit_relays WHERE relay_id = '{id}'"
        ))
    };
    let last: Vec<i64> = [&a, &b].iter().map(|h| h.spool_last_seq()).collect();
    wait_for(
        "both chains shipped",
        DEADLINE,
        || {
            ["pod-a", "pod-b"]
                .iter()
                .zip(&last)
                .all(|(id, l)| shipped(id).is_some_and(|s| s >= *l))
        },
        &[&ra, &rb],
    );
    ra.terminate();
    rb.terminate();
    let mut c = pg.client();
    let mut ids = |sql: &str| -> Vec<String> {
        c.query(sql, &[])
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect()
    };
    let stored = ids("SELECT id::text FROM audit_events WHERE organization_id <> ''");
    let all: HashSet<String> = shared_ids.iter().chain(&own_ids).cloned().collect();
    assert_eq!(stored.len(), 1_500, "each event once");
    assert_eq!(stored.into_iter().collect::<HashSet<_>>(), all);
    let dups = ids("SELECT id::text FROM audit_duplicates WHERE relay_id = 'pod-b'");
    assert_eq!(dups.len(), 1_000, "pod-b's copies of pod-a's events");
    assert_eq!(
        dups.into_iter().collect::<HashSet<_>>(),
        shared_ids.iter().cloned().collect::<HashSet<_>>()
    );
    // Each relay's rows, wherever they went, are its chain once, up to its cursor.
    let rows = store_rows(&pg);
    for (id, l) in ["pod-a", "pod-b"].iter().zip(&last) {
        let shipped = shipped(id).unwrap();
        assert!(shipped >= *l, "{id}: {shipped} < {l}");
        assert_eq!(rows[*id], (shipped, shipped, 1, shipped), "{id}");
    }
    for h in [&a, &b] {
        h.cli_ok(&["verify", "--postgres"]);
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

/// `check-config --connect` against `pg` with `[postgres]` lines replaced by `lines`.
fn check_connect(pg: &Postgres, lines: &str) -> (bool, String) {
    let h = Harness::new();
    let mut text = h.config_text(&[], &[]);
    text.push_str(lines);
    let _ = pg;
    h.write_config(&text);
    let out = h.cli(&["check-config", "--connect"]);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), all)
}

#[test]
fn bad_postgres_settings_fail_check_config_naming_the_key() {
    let pg = Postgres::start();
    let pw = pg.password_file().display().to_string();
    let good = pg.config_section("pod-a", &[]);
    let (ok, out) = check_connect(&pg, &good);
    assert!(ok, "the good config passes: {out}");

    // Nothing listens there.
    let closed = common::moto::free_port();
    let (ok, out) = check_connect(
        &pg,
        &format!("\n[postgres]\nurl = \"postgres://audit@127.0.0.1:{closed}/postgres\"\npassword_file = {pw:?}\nsslmode = \"disable\"\n"),
    );
    assert!(!ok && out.contains("postgres.url"), "{out}");

    // A wrong password.
    let wrong = pg.dir().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").unwrap();
    let (ok, out) = check_connect(
        &pg,
        &format!(
            "\n[postgres]\nurl = {:?}\npassword_file = {:?}\nsslmode = \"disable\"\n",
            pg.url(),
            wrong.display().to_string()
        ),
    );
    assert!(
        !ok && out.contains("password authentication failed")
            && out.contains("postgres.password_file"),
        "{out}"
    );

    // TLS required, but the server has none.
    let ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let ca_file = pg.dir().join("ca.pem");
    std::fs::write(&ca_file, ca.cert.pem()).unwrap();
    let (ok, out) = check_connect(
        &pg,
        &format!("\n[postgres]\nurl = {:?}\npassword_file = {pw:?}\nsslmode = \"verify-full\"\nca_file = {:?}\n", pg.url(), ca_file.display().to_string()),
    );
    assert!(!ok && out.contains("postgres.sslmode"), "{out}");

    // A password in the URL is refused without connecting.
    let (ok, out) = check_connect(
        &pg,
        &format!("\n[postgres]\nurl = \"postgres://audit:{}@127.0.0.1:{}/postgres\"\nsslmode = \"disable\"\n", common::postgres::PASSWORD, pg.port),
    );
    assert!(
        !ok && out.contains("postgres.url") && out.contains("password_file"),
        "{out}"
    );
    assert!(
        !out.contains(common::postgres::PASSWORD),
        "the password is not echoed: {out}"
    );

    // A schema newer than this build's.
    let mut c = pg.client();
    c.batch_execute(
        "CREATE TABLE audit_schema_version(version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now(), by_relay text NOT NULL);
         INSERT INTO audit_schema_version(version, by_relay) VALUES (99, 'from-the-future');",
    )
    .unwrap();
    let (ok, out) = check_connect(&pg, &good);
    assert!(
        !ok && out.contains("version 99") && out.contains("postgres.url"),
        "{out}"
    );
    // And a relay refuses to migrate it: it keeps its spool, fails readiness, says why.
    let h = relay(&pg, "pod-a", &[]);
    let mut text = std::fs::read_to_string(&h.config).unwrap();
    text.push_str(&format!(
        "\n[admin]\nlisten = \"127.0.0.1:{}\"\n",
        common::moto::free_port()
    ));
    h.write_config(&text);
    let (_, lines) = server_lines(&mut gen::Gen::new(5), 0, 5);
    write_lines(&mut common::append_to(&h.log("server.log")), &lines);
    let mut r = h.start();
    h.wait_events(&mut r, 5);
    wait_for(
        "the relay says the schema is newer",
        DEADLINE,
        || r.log().contains("newer than this build's"),
        &[&r],
    );
    let admin = common::admin_addr(&r);
    wait_for(
        "readiness names the store",
        DEADLINE,
        || {
            let (code, body) = common::http_get(&admin, "/readyz");
            code == 503
                && body.contains("not shipping to PostgreSQL")
                && body.contains("version 99")
        },
        &[&r],
    );
    let v: i64 = pg.query_i64("SELECT max(version)::int8 FROM audit_schema_version");
    assert_eq!(v, 99, "the newer schema was not touched");
    r.terminate();
}

#[test]
fn postgres_down_for_30_s_stops_nothing_else_and_the_backlog_drains_after() {
    use common::moto::{cloudwatch_section, start_relay, Moto, HOSTNAME};
    let moto = Moto::start();
    let pg = Postgres::start();
    let h = Harness::new();
    let admin = common::moto::free_port();
    let text = h.config_text(&[], &[])
        + &cloudwatch_section(&moto.endpoint(), "/audit/pg-down", &[])
        + &pg.config_section("pod-a", &["retention_days = 36500"])
        + &format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n");
    h.write_config(&text);
    let mut r = start_relay(&h);
    let mut g = gen::Gen::new(21);
    let mut f = common::append_to(&h.log("server.log"));
    let mut all: HashSet<String> = HashSet::new();
    // Ten minutes ago: CloudWatch takes them.
    let t0 = common::moto::now_ms() - common::BASE_MS - 600_000;
    let (ids, lines) = server_lines(&mut g, t0, 1_000);
    all.extend(ids);
    write_lines(&mut f, &lines);
    let shipped = |pg: &Postgres| {
        pg.try_i64("SELECT count(*) FROM audit_events WHERE organization_id <> ''")
            .unwrap_or(0)
    };
    wait_for(
        "the first 1000 shipped",
        DEADLINE,
        || shipped(&pg) == 1_000,
        &[&r],
    );

    pg.stop_immediate();
    let down = Instant::now();
    // 30 s without PostgreSQL: events keep arriving, are stored and reach CloudWatch.
    let mut written = 1_000;
    while down.elapsed() < Duration::from_secs(30) {
        let (ids, lines) = server_lines(&mut g, t0 + written as i64, 500);
        all.extend(ids);
        write_lines(&mut f, &lines);
        written += 500;
        std::thread::sleep(Duration::from_secs(3));
    }
    h.wait_events(&mut r, written as u64);
    let in_cloudwatch = || {
        moto.events("/audit/pg-down", HOSTNAME)
            .iter()
            .filter(|e| !e.is_checkpoint())
            .count()
    };
    wait_for(
        "CloudWatch got everything while PostgreSQL was down",
        DEADLINE,
        || in_cloudwatch() == written,
        &[&r],
    );
    let (code, body) = common::http_get(&format!("127.0.0.1:{admin}"), "/readyz");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("not shipping to PostgreSQL"), "{body}");
    let stats: serde_json::Value =
        serde_json::from_str(&h.cli_ok(&["spool", "stats", "--json"])).unwrap();
    assert!(
        stats["postgres"]["unshipped"].as_u64().unwrap() >= (written - 1_000) as u64,
        "the backlog is visible: {stats}"
    );

    pg.start_again();
    wait_for(
        "the backlog drains into PostgreSQL",
        Duration::from_secs(60),
        || shipped(&pg) == written as i64,
        &[&r],
    );
    wait_for(
        "ready again",
        DEADLINE,
        || common::http_get(&format!("127.0.0.1:{admin}"), "/readyz").0 == 200,
        &[&r],
    );
    r.terminate();
    let mut c = pg.client();
    let ids: Vec<String> = c
        .query(
            "SELECT id::text FROM audit_events WHERE organization_id <> ''",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids.len(), written, "each once");
    assert_eq!(ids.into_iter().collect::<HashSet<_>>(), all, "nothing lost");
}

#[test]
fn checkpoints_witness_the_other_relays_chains_in_the_store() {
    let pg = Postgres::start();
    let with_interval = |id: &str| {
        let h = relay(&pg, id, &[]);
        let mut text = std::fs::read_to_string(&h.config).unwrap();
        text.push_str("\n[integrity]\ncheckpoint_interval = \"1s\"\n");
        h.write_config(&text);
        h
    };
    let (a, b) = (with_interval("pod-a"), with_interval("pod-b"));
    let mut g = gen::Gen::new(9);
    for (i, h) in [&a, &b].iter().enumerate() {
        let (_, lines) = server_lines(&mut g, i as i64 * 10_000, 50);
        write_lines(&mut common::append_to(&h.log("server.log")), &lines);
    }
    let (mut ra, mut rb) = (a.start(), b.start());
    a.wait_events(&mut ra, 50);
    b.wait_events(&mut rb, 50);
    // A checkpoint of pod-a shipped after pod-b registered names pod-b's chain head.
    let witnessed = || -> Option<(i64, String)> {
        let mut c = pg.client();
        let rows = c
            .query(
                "SELECT body FROM audit_events WHERE relay_id = 'pod-a' AND action = 'checkpoint' AND organization_id = '' ORDER BY seq DESC",
                &[],
            )
            .ok()?;
        rows.iter().find_map(|r| {
            let v: serde_json::Value = serde_json::from_str(r.get::<_, &str>(0)).ok()?;
            let p = v["peers"]
                .as_array()?
                .iter()
                .find(|p| p["relayId"] == "pod-b")?
                .clone();
            Some((p["seq"].as_i64()?, p["chainHead"].as_str()?.to_string()))
        })
    };
    wait_for(
        "pod-a's checkpoints witness pod-b",
        DEADLINE,
        || witnessed().is_some(),
        &[&ra, &rb],
    );
    let (seq, head) = witnessed().unwrap();
    // What was witnessed is pod-b's chain in the store at that seq.
    let mut c = pg.client();
    let stored: Vec<u8> = c
        .query_one(
            "SELECT hash FROM audit_events WHERE relay_id = 'pod-b' AND seq = $1",
            &[&seq],
        )
        .unwrap()
        .get(0);
    let hex: String = stored.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(hex, head);
    ra.terminate();
    rb.terminate();
}

#[test]
fn verify_full_tls_connects_with_the_right_ca_and_refuses_another() {
    let pg = Postgres::start();
    let ca_file = pg.enable_tls_with_new_ca();
    let pw = pg.password_file().display().to_string();
    let tls = |ca: &std::path::Path| {
        format!(
            "\n[postgres]\nurl = {:?}\npassword_file = {pw:?}\nsslmode = \"verify-full\"\nca_file = {:?}\nrelay_id = \"pod-tls\"\nretention_days = 36500\n",
            pg.url(),
            ca.display().to_string()
        )
    };
    let (ok, out) = check_connect(&pg, &tls(&ca_file));
    assert!(
        ok,
        "verify-full with the CA that signed the server's certificate: {out}"
    );

    // A CA that did not sign it is refused, naming the keys.
    let other = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let other_file = pg.dir().join("other-ca.pem");
    std::fs::write(&other_file, other.cert.pem()).unwrap();
    let (ok, out) = check_connect(&pg, &tls(&other_file));
    assert!(!ok && out.contains("postgres.ca_file"), "{out}");

    // And a relay ships over TLS.
    let h = Harness::new();
    let mut text = h.config_text(&[], &[]);
    text.push_str(&tls(&ca_file));
    h.write_config(&text);
    let (_, lines) = server_lines(&mut gen::Gen::new(31), 0, 20);
    write_lines(&mut common::append_to(&h.log("server.log")), &lines);
    let mut r = h.start();
    h.wait_events(&mut r, 20);
    wait_for(
        "20 events shipped over TLS",
        DEADLINE,
        || pg.try_i64("SELECT count(*) FROM audit_events WHERE organization_id <> ''") == Some(20),
        &[&r],
    );
    let ssl = pg.query_i64("SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.application_name = 'audit-relay'");
    assert!(ssl >= 1, "the relay's connection uses TLS");
    r.terminate();
}

/// The shipper keeps two transactions open at once; DDL of another relay (day
/// partitions created, which waits for every open transaction on the table) going on
/// all the while must not stall it.
#[test]
fn partitions_created_elsewhere_while_shipping_never_stall_the_shipper() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    const EVENTS: usize = 20_000;
    let pg = Postgres::start();
    let h = relay(&pg, "pod-a", &["batch_rows = 100"]);
    let mut g = gen::Gen::new(11);
    let (_, lines) = server_lines(&mut g, 0, EVENTS);
    let mut r = h.start();
    // The relay creates the schema when it connects; then DDL never stops until the end.
    wait_for(
        "the schema",
        DEADLINE,
        || pg.try_i64("SELECT count(*) FROM audit_relays") == Some(1),
        &[&r],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let ddl = {
        let (stop, mut c) = (stop.clone(), pg.client());
        std::thread::spawn(move || {
            // Days far ahead of every event: partitions nobody ships into.
            let mut day: i64 = 4_102_444_800_000;
            let mut made = 0u32;
            while !stop.load(Ordering::Relaxed) {
                c.batch_execute(&format!(
                    "CREATE TABLE audit_events_t{made} PARTITION OF audit_events FOR VALUES FROM ({day}) TO ({})",
                    day + 86_400_000
                ))
                .expect("create a partition");
                day += 86_400_000;
                made += 1;
            }
            made
        })
    };
    write_lines(&mut common::append_to(&h.log("server.log")), &lines);
    h.wait_events(&mut r, EVENTS as u64);
    wait_for(
        "every event shipped while partitions are created",
        DEADLINE,
        || {
            pg.try_i64("SELECT count(*) FROM audit_events WHERE organization_id <> ''")
                == Some(EVENTS as i64)
        },
        &[&r],
    );
    stop.store(true, Ordering::Relaxed);
    let made = ddl.join().expect("ddl thread");
    assert!(made > 10, "only {made} partitions were created meanwhile");
    r.terminate();
}

/// `audit_relay_postgres_txn_seconds` observes every shipping transaction: a backlog of
/// 5,000 events in 100-row batches is at least 50 transactions, although the shipper runs
/// two of them at a time.
#[test]
fn every_shipping_transaction_is_one_observation_of_the_txn_histogram() {
    const EVENTS: usize = 5_000;
    let pg = Postgres::start();
    let h = relay(&pg, "pod-a", &["batch_rows = 100"]);
    let mut text = std::fs::read_to_string(&h.config).unwrap();
    text.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    h.write_config(&text);
    let mut g = gen::Gen::new(13);
    let (_, lines) = server_lines(&mut g, 0, EVENTS);
    // The whole backlog is there before the relay starts: full batches, two at a time.
    write_lines(&mut common::append_to(&h.log("server.log")), &lines);
    let mut r = h.start();
    h.wait_events(&mut r, EVENTS as u64);
    let admin = common::admin_addr(&r);
    let metric = |name: &str| {
        let (_, body) = common::http_get(&admin, "/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(-1.0)
    };
    let mut shipped = 0.0;
    wait_for(
        "every event shipped",
        DEADLINE,
        || {
            shipped = metric("audit_relay_postgres_shipped_rows_total");
            pg.try_i64("SELECT count(*) FROM audit_events WHERE organization_id <> ''")
                == Some(EVENTS as i64)
        },
        &[&r],
    );
    // Rows shipped by then (checkpoints too), and the transactions that carried them,
    // read after the cursor stopped moving.
    std::thread::sleep(Duration::from_millis(300));
    shipped = shipped.max(metric("audit_relay_postgres_shipped_rows_total"));
    let count = metric("audit_relay_postgres_txn_seconds_count");
    let inf = metric("audit_relay_postgres_txn_seconds_bucket{le=\"+Inf\"}");
    let sum = metric("audit_relay_postgres_txn_seconds_sum");
    r.terminate();
    let batches = (shipped / 100.0).ceil();
    assert!(shipped >= EVENTS as f64, "{shipped} rows shipped");
    assert!(
        count >= batches && count <= shipped,
        "{count} transactions observed for {shipped} rows in batches of at most 100 (at least {batches})"
    );
    assert_eq!(inf, count, "+Inf bucket is the count");
    assert!(sum > 0.0, "sum {sum}");
}
