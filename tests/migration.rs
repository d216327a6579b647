//! Upgrading a spool of an older format: the admin endpoints answer while every row is
//! re-hashed (`/healthz` 200, `/readyz` 503 "migrating"), and the upgrade logs progress.

mod common;

use audit_relay::config::Durability;
use audit_relay::spool::Spool;
use common::{admin_addr, http_get, Harness, BASE_MS, DEADLINE, POLL};
use std::time::Instant;

/// Rows of the old spool: enough that re-hashing them takes well over a second here.
const ROWS: i64 = 600_000;

/// Writes a format-2 spool (no hash chain) of `rows` events into the harness's spool dir.
fn format_2_spool(h: &Harness, rows: i64) {
    drop(Spool::open(&h.spool_dir, Durability::Os, 1 << 20).unwrap());
    let c = rusqlite::Connection::open(h.db_path()).unwrap();
    c.execute_batch(
        "ALTER TABLE events DROP COLUMN hash; DROP TABLE purges;
         DELETE FROM meta WHERE key = 'chain_head'; DELETE FROM orgs WHERE org = 0;
         INSERT INTO orgs(org, organization_id) VALUES (1, '0a000000-0000-0000-0a00-000000000000');",
    )
    .unwrap();
    c.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?1)
         INSERT INTO events(seq, ts_ms, id, org, actor, action, body)
         SELECT i, ?2 + i, randomblob(16), 1, 'actor', 'startWorkspace', '{\"n\":' || i || '}' FROM n",
        rusqlite::params![rows, BASE_MS],
    )
    .unwrap();
    c.execute_batch(&format!(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('last_seq', {rows});
         INSERT OR REPLACE INTO counters(name, value) VALUES ('events', {rows});
         PRAGMA user_version = 2;"
    ))
    .unwrap();
}

#[test]
fn admin_answers_while_an_old_spool_is_rehashed_and_readiness_says_migrating() {
    let h = Harness::new();
    let mut text = std::fs::read_to_string(&h.config).unwrap();
    text.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    h.write_config(&text);
    format_2_spool(&h, ROWS);

    let mut relay = h.start();
    let addr = admin_addr(&relay);
    let started = Instant::now();
    let (mut migrating_seen, mut ready_after) = (0u32, None);
    while started.elapsed() < DEADLINE * 4 {
        assert!(relay.try_wait().is_none(), "relay exited:\n{}", relay.log());
        let (health, _) = http_get(&addr, "/healthz");
        assert_eq!(health, 200, "/healthz must answer during the upgrade");
        let (status, body) = http_get(&addr, "/readyz");
        if status == 200 {
            ready_after = Some(started.elapsed());
            break;
        }
        assert_eq!(status, 503);
        if body.contains("migrating") {
            migrating_seen += 1;
        }
        std::thread::sleep(POLL);
    }
    let ready_after = ready_after.unwrap_or_else(|| panic!("never ready:\n{}", relay.log()));
    assert!(
        migrating_seen >= 5,
        "/readyz said \"migrating\" {migrating_seen} time(s) in {ready_after:?}:\n{}",
        relay.log()
    );
    let log = relay.log();
    assert!(
        log.contains("computing the hash chain over every stored event")
            && log.contains(&format!("rows={ROWS}")),
        "the upgrade must log how many rows it hashes:\n{log}"
    );
    assert!(log.contains("spool upgraded to format"), "{log}");
    relay.terminate();
    let report = h.cli_ok(&["verify"]);
    assert!(report.contains("OK"), "{report}");
    eprintln!("upgrade of {ROWS} rows: ready after {ready_after:?}, {migrating_seen} probes saw \"migrating\"");
}
