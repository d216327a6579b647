//! `audit-relay verify --postgres`, end to end: real relays (the binary) ship signed chains
//! into a real PostgreSQL server; the untouched store verifies; each kind of tampering done
//! with SQL, the way an intruder with database access would, is named by relay, sequence
//! number and kind; retention run by two relays at once drops each old partition once,
//! never a newer row, and the store still verifies after it.

mod common;

use audit_relay::installation::{connect, day_start, retention, schema, DAY_MS};
use common::postgres::Postgres;
use common::{ed25519_pem, gen, server_lines, write_lines, Harness, Relay, BASE_MS};
use serde_json::Value;
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const RELAYS: [&str; 3] = ["pod-a", "pod-b", "pod-c"];
/// Events per relay; half on one UTC day, half on the next.
const PER_RELAY: usize = 2_000;

/// A relay of the installation: its own spool and pod log, checkpoints signed every 250
/// rows (one key for the installation), shipping as `relay_id`.
fn relay(pg: &Postgres, relay_id: &str, extra: &[&str]) -> Harness {
    let h = Harness::new();
    let key = h.dir.path().join("signing.pem");
    std::fs::write(&key, ed25519_pem([7; 32])).unwrap();
    let mut text = h.config_text(&[], &[]);
    let mut extra = extra.to_vec();
    if !extra.iter().any(|l| l.starts_with("retention_days")) {
        // The generated events are from 2024: keep them unless a test says otherwise.
        extra.push("retention_days = 36500");
    }
    extra.push("batch_rows = 500");
    text.push_str(&pg.config_section(relay_id, &extra));
    text.push_str(&format!(
        "\n[integrity]\nsigning_key_file = {:?}\ncheckpoint_every = 250\n",
        key.display().to_string()
    ));
    h.write_config(&text);
    h
}

fn shipped_seq(pg: &Postgres, relay_id: &str) -> Option<i64> {
    pg.client()
        .query_opt(
            "SELECT shipped_seq FROM audit_relays WHERE relay_id = $1",
            &[&relay_id],
        )
        .ok()
        .flatten()
        .map(|r| r.get(0))
}

/// Runs the relays over their lines until every row of each spool is in the store, then
/// stops them (SIGTERM).
fn ship_all(pg: &Postgres, relays: &[(&str, Harness, Vec<String>)]) {
    for (_, h, lines) in relays {
        write_lines(&mut common::append_to(&h.log("server.log")), lines);
    }
    let mut running: Vec<Relay> = relays.iter().map(|(_, h, _)| h.start()).collect();
    for ((_, h, lines), r) in relays.iter().zip(running.iter_mut()) {
        h.wait_events(r, lines.len() as u64);
    }
    let start = Instant::now();
    while !relays
        .iter()
        .all(|(id, h, _)| shipped_seq(pg, id) == Some(h.spool_last_seq()))
    {
        if start.elapsed() > Duration::from_secs(60) {
            let logs: Vec<String> = running.iter().map(|r| r.log()).collect();
            panic!(
                "timed out waiting for the relays to ship\n{}",
                logs.join("\n---\n")
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for r in running {
        r.terminate();
    }
}

/// Three relays, each with `PER_RELAY` events: relay i's first half on day 2i after
/// `BASE_MS`, its second half on day 2i+1 (so a day partition holds one relay's rows).
fn installation() -> (Postgres, Vec<Harness>) {
    let pg = Postgres::start();
    let mut relays = Vec::new();
    for (i, id) in RELAYS.iter().enumerate() {
        let h = relay(&pg, id, &[]);
        let mut g = gen::Gen::new(40 + i as u64);
        let half = PER_RELAY / 2;
        let (_, mut lines) = server_lines(&mut g, 2 * i as i64 * DAY_MS, half);
        let (_, second) = server_lines(&mut g, (2 * i as i64 + 1) * DAY_MS, half);
        lines.extend(second);
        relays.push((*id, h, lines));
    }
    ship_all(&pg, &relays);
    (pg, relays.into_iter().map(|(_, h, _)| h).collect())
}

/// `audit-relay verify --postgres --json` with `h`'s config: (exit code, report).
fn verify(h: &Harness) -> (i32, Value) {
    let out = h.cli(&["verify", "--postgres", "--json"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "verify --postgres printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

/// The breaks of a report as (relay_id, seq, kind).
fn breaks(v: &Value) -> Vec<(String, i64, String)> {
    v["postgres"]["breaks"]
        .as_array()
        .unwrap_or_else(|| panic!("no breaks array: {v:#}"))
        .iter()
        .map(|b| {
            (
                b["relay_id"].as_str().unwrap().to_string(),
                b["seq"].as_i64().unwrap(),
                b["kind"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Verify fails with exactly one break, `(relay_id, seq, kind)`, in JSON and in text; every
/// other relay's chain holds.
fn assert_one_break(h: &Harness, relay_id: &str, seq: i64, kind: &str) {
    let (code, v) = verify(h);
    assert_eq!(code, 1, "verify did not fail: {v:#}");
    assert_eq!(v["ok"], false, "{v:#}");
    assert_eq!(
        breaks(&v),
        vec![(relay_id.to_string(), seq, kind.to_string())],
        "{v:#}"
    );
    for r in v["postgres"]["relays"].as_array().unwrap() {
        if r["relay_id"] != relay_id {
            assert_eq!(r["ok"], true, "another relay's chain broke too: {v:#}");
        }
    }
    let out = h.cli(&["verify", "--postgres"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("BROKEN relay {relay_id} at seq {seq} ({kind})"))
            && text.trim_end().ends_with("BROKEN"),
        "{text}"
    );
}

/// The sequence number of the `n`-th event (not a checkpoint) of `relay_id` whose next
/// row is an event too.
fn event_seq(pg: &Postgres, relay_id: &str, n: i64) -> i64 {
    pg.client()
        .query_one(
            "SELECT a.seq FROM audit_events a JOIN audit_events b ON b.relay_id = a.relay_id AND b.seq = a.seq + 1
             WHERE a.relay_id = $1 AND a.organization_id <> '' AND b.organization_id <> ''
             ORDER BY a.seq OFFSET $2 LIMIT 1",
            &[&relay_id, &n],
        )
        .unwrap()
        .get(0)
}

#[test]
fn an_untouched_store_verifies_every_relay_with_its_signed_checkpoints() {
    let (pg, relays) = installation();
    let (code, v) = verify(&relays[0]);
    assert_eq!(code, 0, "{v:#}");
    assert_eq!(v["ok"], true);
    let reported = v["postgres"]["relays"].as_array().unwrap();
    assert_eq!(reported.len(), 3, "{v:#}");
    for (r, id) in reported.iter().zip(RELAYS) {
        assert_eq!(r["relay_id"], id);
        assert_eq!(r["ok"], true, "{v:#}");
        let shipped = shipped_seq(&pg, id).unwrap();
        assert_eq!(r["to_seq"], shipped, "{v:#}");
        assert_eq!(r["rows"], shipped, "every row of 1..=shipped_seq: {v:#}");
        // A checkpoint every 250 events (the one at shutdown may not be shipped).
        let signed = r["signed_checkpoints"].as_u64().unwrap();
        assert!(signed >= (PER_RELAY / 250) as u64, "{v:#}");
        assert_eq!(r["checkpoints"], signed, "{v:#}");
    }
    let text = relays[1].cli_ok(&["verify", "--postgres"]);
    assert!(text.trim_end().ends_with("OK"), "{text}");
    assert!(
        text.contains("postgres: relay pod-b: checked seq 1..="),
        "{text}"
    );

    // A key that signed none of it: every relay's first checkpoint is named.
    let other = relays[0].dir.path().join("other.pem");
    let other_private = relays[0].dir.path().join("other-private.pem");
    std::fs::write(&other_private, ed25519_pem([9; 32])).unwrap();
    std::fs::write(
        &other,
        audit_relay::integrity::Signer::load(&other_private)
            .unwrap()
            .public_key()
            .to_pem(),
    )
    .unwrap();
    let out = relays[0].cli(&[
        "verify",
        "--postgres",
        "--json",
        "--public-key",
        other.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: BTreeSet<(String, String)> =
        breaks(&v).into_iter().map(|(r, _, k)| (r, k)).collect();
    let expected: BTreeSet<(String, String)> = RELAYS
        .iter()
        .map(|r| (r.to_string(), "forged_checkpoint".to_string()))
        .collect();
    assert_eq!(kinds, expected, "{v:#}");
}

#[test]
fn verify_postgres_without_a_store_or_a_server_exits_2_naming_the_key() {
    // No [postgres] section.
    let h = Harness::new();
    let out = h.cli(&["verify", "--postgres"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("[postgres]"), "{err}");
    // Nobody listens there.
    let port = common::moto::free_port();
    let text = h.config_text(&[], &[]);
    h.write_config(&format!(
        "{text}\n[postgres]\nurl = \"postgres://audit@127.0.0.1:{port}/postgres\"\nsslmode = \"disable\"\nconnect_timeout = \"2s\"\n"
    ));
    let out = h.cli(&["verify", "--postgres"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("postgres.url"), "{err}");
    // A server without the store's schema.
    let pg = Postgres::start();
    let text = h.config_text(&[], &[]);
    h.write_config(&format!("{text}{}", pg.config_section("x", &[])));
    let out = h.cli(&["verify", "--postgres"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("postgres.url") && err.contains("no installation store"),
        "{err}"
    );
    // --postgres checks the store, not a range of the spool.
    let out = h.cli(&["verify", "--postgres", "--from", "5"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn an_event_changed_in_the_store_is_named() {
    let (pg, relays) = installation();
    let seq = event_seq(&pg, "pod-b", 900);
    let n = pg
        .client()
        .execute(
            "UPDATE audit_events SET body = replace(body, 'user request', 'user requested') WHERE relay_id = 'pod-b' AND seq = $1",
            &[&seq],
        )
        .unwrap();
    assert_eq!(n, 1);
    assert_one_break(&relays[0], "pod-b", seq, "changed");
}

#[test]
fn an_event_deleted_from_the_store_is_named() {
    let (pg, relays) = installation();
    let seq = event_seq(&pg, "pod-a", 1_300);
    let n = pg
        .client()
        .execute(
            "DELETE FROM audit_events WHERE relay_id = 'pod-a' AND seq = $1",
            &[&seq],
        )
        .unwrap();
    assert_eq!(n, 1);
    assert_one_break(&relays[0], "pod-a", seq, "removed");
}

#[test]
fn two_events_swapped_in_the_store_are_named() {
    let (pg, relays) = installation();
    let seq = event_seq(&pg, "pod-c", 500);
    // The contents trade places; each position keeps its seq and its hash.
    let n = pg
        .client()
        .execute(
            "UPDATE audit_events e SET seq = o.seq, hash = o.hash
             FROM audit_events o
             WHERE e.relay_id = 'pod-c' AND o.relay_id = 'pod-c' AND e.seq IN ($1::int8, $1::int8 + 1)
               AND o.seq = CASE WHEN e.seq = $1::int8 THEN $1::int8 + 1 ELSE $1::int8 END",
            &[&seq],
        )
        .unwrap();
    assert_eq!(n, 2);
    assert_one_break(&relays[0], "pod-c", seq, "reordered");
}

#[test]
fn a_partition_dropped_outside_retention_is_named() {
    let (pg, relays) = installation();
    // pod-a's second day: seqs from the middle of its chain, no audit_purges row.
    let day = day_start(BASE_MS + DAY_MS);
    let name = schema::partition_name(day);
    let mut c = pg.client();
    let first: i64 = c
        .query_one(
            &format!("SELECT min(seq) FROM {name} WHERE relay_id = 'pod-a'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert!(first > 1, "the partition holds the middle of the chain");
    let others: i64 = c
        .query_one(
            &format!("SELECT count(*) FROM {name} WHERE relay_id <> 'pod-a'"),
            &[],
        )
        .unwrap()
        .get(0);
    assert_eq!(others, 0, "only pod-a's rows are in it");
    c.batch_execute(&format!("DROP TABLE {name}")).unwrap();
    assert_one_break(&relays[1], "pod-a", first, "removed");
}

#[test]
fn a_relay_deleted_with_its_registry_row_is_named_when_the_store_names_it() {
    let (pg, relays) = installation();
    // The relay that created the schema is named by audit_schema_version; the store
    // keeps no other witness of a relay whose rows were never purged (see the report).
    let mut c = pg.client();
    let creator: String = c
        .query_one(
            "SELECT by_relay FROM audit_schema_version WHERE version = 1",
            &[],
        )
        .unwrap()
        .get(0);
    assert!(RELAYS.contains(&creator.as_str()), "{creator}");
    for sql in [
        "DELETE FROM audit_events WHERE relay_id = $1",
        "DELETE FROM audit_duplicates WHERE relay_id = $1",
        "DELETE FROM audit_relays WHERE relay_id = $1",
    ] {
        c.execute(sql, &[&creator]).unwrap();
    }
    let other = relays
        .iter()
        .zip(RELAYS)
        .find(|(_, id)| *id != creator)
        .unwrap()
        .0;
    let (code, v) = verify(other);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(
        breaks(&v),
        vec![(creator.clone(), 0, "vanished_relay".to_string())],
        "{v:#}"
    );
    assert_eq!(v["postgres"]["relays"].as_array().unwrap().len(), 2);
}

#[test]
fn registry_rows_removed_or_rows_left_without_a_registry_row_are_named() {
    let (pg, relays) = installation();
    let mut c = pg.client();
    // pod-b's registry row deleted, its rows left: rows of an unregistered relay.
    c.execute("DELETE FROM audit_relays WHERE relay_id = 'pod-b'", &[])
        .unwrap();
    let (code, v) = verify(&relays[0]);
    assert_eq!(code, 1, "{v:#}");
    assert_eq!(
        breaks(&v),
        vec![("pod-b".to_string(), 1, "unregistered_relay".to_string())],
        "{v:#}"
    );
}

fn wall_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Lines stamped at noon (UTC) `days_ago` days before `now_ms`, one ms apart.
fn lines_days_ago(g: &mut gen::Gen, now_ms: i64, days_ago: i64, n: usize) -> Vec<String> {
    let at = day_start(now_ms) - days_ago * DAY_MS + DAY_MS / 2;
    server_lines(g, at - BASE_MS, n).1
}

#[test]
fn two_relays_running_retention_at_once_drop_each_old_partition_once_and_verify_passes() {
    const RETENTION_DAYS: i64 = 3;
    let now = wall_ms();
    let pg = Postgres::start();
    let retention = format!("retention_days = {RETENTION_DAYS}");
    // pod-a: 6, 4 and 2 days ago; pod-b: 5, 4 and 1 day ago. With 3 days kept, the
    // partitions of 6, 5 and 4 days ago go (4 days ago holds both relays' rows).
    let mut plan = Vec::new();
    for (id, days, seed) in [("pod-a", [6, 4, 2], 1), ("pod-b", [5, 4, 1], 2)] {
        let h = relay(&pg, id, &[&retention]);
        let mut g = gen::Gen::new(seed);
        let lines: Vec<String> = days
            .iter()
            .flat_map(|d| lines_days_ago(&mut g, now, *d, 600))
            .collect();
        plan.push((id, h, lines));
    }
    ship_all(&pg, &plan);
    let (code, v) = verify(&plan[0].1);
    assert_eq!(code, 0, "before retention: {v:#}");

    let cut = day_start(now - RETENTION_DAYS * DAY_MS);
    let count = |sql: &str| pg.query_i64(sql);
    let newer = count(&format!(
        "SELECT count(*) FROM audit_events WHERE ts_ms >= {cut}"
    ));
    let older = count(&format!(
        "SELECT count(*) FROM audit_events WHERE ts_ms < {cut}"
    ));
    assert_eq!(older, 4 * 600, "two old days of 600 events per relay");
    let old_days: BTreeSet<String> = [6, 5, 4]
        .iter()
        .map(|d| schema::partition_name(day_start(now) - d * DAY_MS))
        .collect();

    // Two relays' retention at the same moment, each on its own connection.
    let cfg = |h: &Harness| {
        audit_relay::config::Config::load(&h.config)
            .unwrap()
            .postgres
            .clone()
            .unwrap()
    };
    let (cfg_a, cfg_b) = (cfg(&plan[0].1), cfg(&plan[1].1));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (a, b) = rt.block_on(async {
        let mut ca = connect(&cfg_a).await.unwrap();
        let mut cb = connect(&cfg_b).await.unwrap();
        let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(2));
        let (ba, bb) = (barrier.clone(), barrier);
        let ta = tokio::spawn(async move {
            ba.wait().await;
            retention::run_once(&mut ca, "pod-a", RETENTION_DAYS, now).await
        });
        let tb = tokio::spawn(async move {
            bb.wait().await;
            retention::run_once(&mut cb, "pod-b", RETENTION_DAYS, now).await
        });
        (ta.await.unwrap().unwrap(), tb.await.unwrap().unwrap())
    });
    let mut dropped: Vec<String> = a.dropped.iter().chain(&b.dropped).cloned().collect();
    dropped.sort();
    assert_eq!(
        dropped,
        old_days.iter().cloned().collect::<Vec<_>>(),
        "each old partition dropped once: {a:?} {b:?}"
    );
    assert_eq!(a.rows + b.rows, older as u64);
    let purges: Vec<(String, i64)> = pg
        .client()
        .query(
            "SELECT partition, rows FROM audit_purges ORDER BY partition",
            &[],
        )
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        purges.iter().map(|p| p.0.clone()).collect::<BTreeSet<_>>(),
        old_days,
        "one audit_purges row per partition"
    );
    assert_eq!(purges.len(), 3);
    // Never a row newer than the cut.
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM audit_events WHERE ts_ms >= {cut}"
        )),
        newer
    );
    assert_eq!(
        count(&format!(
            "SELECT count(*) FROM audit_events WHERE ts_ms < {cut}"
        )),
        0
    );
    // Retention once more drops nothing.
    let again = rt.block_on(async {
        let mut c = connect(&cfg_a).await.unwrap();
        retention::run_once(&mut c, "pod-a", RETENTION_DAYS, now)
            .await
            .unwrap()
    });
    assert!(again.dropped.is_empty(), "{again:?}");

    // The chains verify across the purged runs.
    let (code, v) = verify(&plan[1].1);
    assert_eq!(code, 0, "after retention: {v:#}");
    for r in v["postgres"]["relays"].as_array().unwrap() {
        assert_eq!(r["purged_rows"], 1_200, "{v:#}");
        assert_eq!(r["ok"], true, "{v:#}");
    }

    // Retention told to drop a partition younger than postgres.retention_days (a clock
    // two days ahead): verify names the purge.
    let young = rt.block_on(async {
        let mut c = connect(&cfg_a).await.unwrap();
        retention::run_once(&mut c, "pod-a", RETENTION_DAYS, now + 2 * DAY_MS)
            .await
            .unwrap()
    });
    assert_eq!(
        young.dropped,
        vec![schema::partition_name(day_start(now) - 2 * DAY_MS)]
    );
    let (code, v) = verify(&plan[0].1);
    assert_eq!(code, 1, "{v:#}");
    let got = breaks(&v);
    assert_eq!(got.len(), 1, "{v:#}");
    assert_eq!(
        (got[0].0.as_str(), got[0].2.as_str()),
        ("pod-a", "purge_too_young"),
        "{v:#}"
    );

    // A relay whose rows were purged, deleted with its registry row: the purges name it.
    let mut c = pg.client();
    for sql in [
        "DELETE FROM audit_events WHERE relay_id = 'pod-b'",
        "DELETE FROM audit_relays WHERE relay_id = 'pod-b'",
    ] {
        c.execute(sql, &[]).unwrap();
    }
    let (code, v) = verify(&plan[0].1);
    assert_eq!(code, 1, "{v:#}");
    let got = breaks(&v);
    assert!(
        got.iter()
            .any(|(r, s, k)| r == "pod-b" && *s == 1 && k == "vanished_relay"),
        "{v:#}"
    );
}

#[test]
fn a_running_relay_runs_the_stores_retention_itself_and_the_store_still_verifies() {
    // The shipper's own schedule: the first pass a minute after it starts, then hourly.
    const RETENTION_DAYS: i64 = 3;
    let now = wall_ms();
    let pg = Postgres::start();
    let retention = format!("retention_days = {RETENTION_DAYS}");
    let h = relay(&pg, "pod-a", &[&retention]);
    let mut text = std::fs::read_to_string(&h.config).unwrap();
    text.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    h.write_config(&text);
    let mut g = gen::Gen::new(9);
    let old = lines_days_ago(&mut g, now, 6, 500);
    let new = lines_days_ago(&mut g, now, 1, 500);
    write_lines(&mut common::append_to(&h.log("server.log")), &old);
    write_lines(&mut common::append_to(&h.log("server.log")), &new);
    let started = Instant::now();
    let mut r = h.start();
    h.wait_events(&mut r, 1_000);
    let admin = common::admin_addr(&r);
    let dropped_metric = || {
        let (_, body) = common::http_get(&admin, "/metrics");
        body.lines()
            .find_map(|l| l.strip_prefix("audit_relay_postgres_partitions_dropped_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
    };
    assert_eq!(
        dropped_metric(),
        Some(0.0),
        "nothing dropped before the pass"
    );
    let old_day = schema::partition_name(day_start(now) - 6 * DAY_MS);
    while pg
        .try_i64(&format!(
            "SELECT count(*) FROM audit_purges WHERE partition = '{old_day}'"
        ))
        .unwrap_or(0)
        == 0
    {
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "the relay's retention did not drop {old_day}:\n{}",
            r.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // Dropped by this relay, once, with the old day's rows counted; never a newer row.
    let (by, rows): (String, i64) = {
        let row = pg
            .client()
            .query_one(
                "SELECT by_relay, rows FROM audit_purges WHERE partition = $1",
                &[&old_day],
            )
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((by.as_str(), rows), ("pod-a", 500));
    assert_eq!(pg.query_i64("SELECT count(*) FROM audit_purges"), 1);
    let cut = day_start(now - RETENTION_DAYS * DAY_MS);
    assert_eq!(
        pg.query_i64(&format!(
            "SELECT count(*) FROM audit_events WHERE ts_ms < {cut}"
        )),
        0
    );
    assert!(
        pg.query_i64(&format!(
            "SELECT count(*) FROM audit_events WHERE ts_ms >= {cut} AND organization_id <> ''"
        )) >= 500,
        "the newer day stays"
    );
    let wait = Instant::now();
    while dropped_metric() != Some(1.0) {
        assert!(wait.elapsed() < Duration::from_secs(10), "metric not 1");
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = r.log();
    assert!(
        log.contains("day partition dropped") && log.contains(&old_day),
        "the drop is logged with its partition:\n{log}"
    );
    r.terminate();
    let (code, v) = verify(&h);
    assert_eq!(code, 0, "the store verifies across the purge: {v:#}");
}
