//! Tamper evidence: a real spool written by the real relay, changed with SQL from outside
//! the way an intruder would, must fail `audit-relay verify` at the right sequence number
//! with the right name; the untouched spool verifies.

mod common;

use audit_relay::integrity::Signer;
use common::*;
use serde_json::Value;

/// A harness whose relay signs checkpoints every 100 events with a key in its directory.
fn signed_harness() -> Harness {
    let h = Harness::new();
    let key = h.dir.path().join("signing.pem");
    std::fs::write(&key, ed25519_pem([7; 32])).unwrap();
    let text = h.config_text(&[], &[]);
    h.write_config(&format!(
        "{text}\n[integrity]\nsigning_key_file = {:?}\ncheckpoint_every = 100\n",
        key.display().to_string()
    ));
    h
}

/// Runs the relay over `n` events and stops it (SIGTERM: the shutdown checkpoint).
fn fill(h: &Harness, n: usize) {
    let mut g = gen::Gen::new(5);
    let (_, lines) = server_lines(&mut g, 0, n);
    write_lines(&mut append_to(&h.log("a.log")), &lines);
    let mut relay = h.start();
    h.wait_events(&mut relay, n as u64);
    relay.terminate();
}

/// `audit-relay verify --json` on `h`: (exit code, report).
fn verify(h: &Harness, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["verify", "--json"];
    args.extend_from_slice(extra);
    let out = h.cli(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "verify printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

/// A copy of `src`'s spool in a new harness with the same key.
fn copy_of(src: &Harness) -> Harness {
    let h = signed_harness();
    std::fs::create_dir_all(&h.spool_dir).unwrap();
    for f in ["spool.db", "spool.db-wal", "spool.db-shm"] {
        let from = src.spool_dir.join(f);
        if from.exists() {
            std::fs::copy(&from, h.spool_dir.join(f)).unwrap();
        }
    }
    h
}

fn db(h: &Harness) -> rusqlite::Connection {
    rusqlite::Connection::open(h.spool_dir.join("spool.db")).unwrap()
}

/// Sequence numbers of event rows (`org != 0`) or of checkpoint rows (`org = 0`), in order.
fn seqs(c: &rusqlite::Connection, org_test: &str) -> Vec<i64> {
    let mut stmt = c
        .prepare(&format!(
            "SELECT seq FROM events WHERE org {org_test} ORDER BY seq"
        ))
        .unwrap();
    let rows = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    rows
}

/// Applies `tamper` to a copy of `base`, runs verify, and asserts it names `kind` at `seq`.
fn assert_detected(
    base: &Harness,
    what: &str,
    tamper: impl FnOnce(&rusqlite::Connection, &std::path::Path) -> i64,
    kind: &str,
) {
    let h = copy_of(base);
    let seq = {
        let c = db(&h);
        tamper(&c, &h.spool_dir)
    };
    let (code, report) = verify(&h, &[]);
    assert_eq!(code, 1, "{what}: verify did not fail: {report:#}");
    assert_eq!(report["ok"], false, "{what}: {report:#}");
    let broken = &report["spool"]["broken"];
    assert_eq!(broken["kind"], kind, "{what}: wrong kind: {report:#}");
    assert_eq!(broken["seq"], seq, "{what}: wrong sequence: {report:#}");
    // The human form names it too.
    let out = h.cli(&["verify"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("BROKEN at seq {seq} ({kind})")),
        "{what}: {text}"
    );
}

#[test]
fn an_untouched_spool_verifies_and_every_kind_of_tampering_is_named() {
    let base = signed_harness();
    fill(&base, 1000);
    let (code, report) = verify(&base, &[]);
    assert_eq!(code, 0, "{report:#}");
    let spool = &report["spool"];
    // 1000 events and a checkpoint per 100 (the last one at shutdown).
    assert_eq!(spool["rows"], 1010, "{report:#}");
    assert_eq!(spool["checkpoints"], 10, "{report:#}");
    assert_eq!(spool["signed_checkpoints"], 10, "{report:#}");
    assert_eq!(spool["covered_through"], 1009, "{report:#}");
    assert!(base.cli_ok(&["verify"]).trim_end().ends_with("OK"));

    let c = db(&base);
    let events = seqs(&c, "!= 0");
    let cps = seqs(&c, "= 0");
    assert_eq!(events.len(), 1000);
    assert_eq!(cps.len(), 10);
    drop(c);
    let (e300, e301, e600) = (events[290], events[291], events[590]);

    assert_detected(
        &base,
        "update a field",
        |c, _| {
            c.execute("UPDATE events SET actor = 'mallory' WHERE seq = ?1", [e300])
                .unwrap();
            e300
        },
        "changed",
    );
    assert_detected(
        &base,
        "update the body",
        |c, _| {
            c.execute(
                "UPDATE events SET body = replace(body, 'user request', 'nothing to see') WHERE seq = ?1",
                [e600],
            )
            .unwrap();
            e600
        },
        "changed",
    );
    assert_detected(
        &base,
        "delete a row",
        |c, _| {
            c.execute("DELETE FROM events WHERE seq = ?1", [e300])
                .unwrap();
            e300
        },
        "removed",
    );
    assert_detected(
        &base,
        "insert a row, shifting the rest",
        |c, _| {
            c.execute_batch(&format!(
                "UPDATE events SET seq = -(seq + 1) WHERE seq >= {e300};
                 UPDATE events SET seq = -seq WHERE seq < 0;
                 INSERT INTO events(seq, ts_ms, id, org, actor, action, body, hash)
                   SELECT {e300}, ts_ms, randomblob(16), org, actor, action, body, hash
                   FROM events WHERE seq = {e600};"
            ))
            .unwrap();
            e300
        },
        "inserted",
    );
    assert_detected(
        &base,
        "append a row after the end",
        |c, _| {
            let last: i64 = c
                .query_row("SELECT max(seq) FROM events", [], |r| r.get(0))
                .unwrap();
            c.execute(
                "INSERT INTO events(seq, ts_ms, id, org, actor, action, body, hash)
                   SELECT ?1, ts_ms, randomblob(16), org, actor, action, body, hash
                   FROM events WHERE seq = ?2",
                [last + 1, e300],
            )
            .unwrap();
            last + 1
        },
        "inserted",
    );
    assert_detected(
        &base,
        "insert a row before the start",
        |c, _| {
            c.execute(
                "INSERT INTO events(seq, ts_ms, id, org, actor, action, body, hash)
                   SELECT 0, ts_ms, randomblob(16), org, actor, action, body, hash
                   FROM events WHERE seq = ?1",
                [e300],
            )
            .unwrap();
            0
        },
        "inserted",
    );
    for (what, a, b) in [
        ("swap two rows", e300, e600),
        ("swap two neighbours", e300, e301),
    ] {
        assert_detected(
            &base,
            what,
            |c, _| {
                c.execute_batch(&format!(
                    "UPDATE events SET seq = -1 WHERE seq = {a};
                     UPDATE events SET seq = {a} WHERE seq = {b};
                     UPDATE events SET seq = {b} WHERE seq = -1;"
                ))
                .unwrap();
                a
            },
            "reordered",
        );
    }
    assert_detected(
        &base,
        "truncate the tail",
        |c, _| {
            c.execute("DELETE FROM events WHERE seq > ?1", [e600])
                .unwrap();
            e600 + 1
        },
        "tail_cut",
    );
    assert_detected(
        &base,
        "replace a checkpoint's signature with another one's",
        |c, _| {
            let sig = |seq: i64| -> String {
                let body: String = c
                    .query_row("SELECT body FROM events WHERE seq = ?1", [seq], |r| {
                        r.get(0)
                    })
                    .unwrap();
                let v: Value = serde_json::from_str(&body).unwrap();
                v["signature"].as_str().unwrap().to_string()
            };
            let (victim, donor) = (cps[4], cps[5]);
            c.execute(
                "UPDATE events SET body = replace(body, ?2, ?3) WHERE seq = ?1",
                rusqlite::params![victim, sig(victim), sig(donor)],
            )
            .unwrap();
            victim
        },
        "forged_checkpoint",
    );
    // An intruder who knows the chain's encoding changes an event and re-hashes every
    // row after it: the chain is whole again, but the next signed checkpoint disagrees.
    assert_detected(
        &base,
        "change an event and recompute the chain",
        |c, dir| {
            c.execute("UPDATE events SET actor = 'mallory' WHERE seq = ?1", [e300])
                .unwrap();
            rechain(dir, e300, None);
            // Named at the sequence the first checkpoint after the change covers.
            cps.iter().find(|s| **s > e300).unwrap() - 1
        },
        "checkpoint_mismatch",
    );
}

#[test]
fn the_public_key_verifies_and_a_wrong_key_does_not() {
    let h = signed_harness();
    fill(&h, 250);
    let pem = h.cli_ok(&["integrity", "public-key"]);
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    let expected = Signer::load(&h.dir.path().join("signing.pem"))
        .unwrap()
        .public_key()
        .to_pem();
    assert_eq!(pem, expected);
    let public = h.dir.path().join("public.pem");
    std::fs::write(&public, &pem).unwrap();
    let (code, report) = verify(&h, &["--public-key", public.to_str().unwrap()]);
    assert_eq!(code, 0, "{report:#}");

    // Another key: the first checkpoint is named as forged.
    let other = h.dir.path().join("other.pem");
    let other_key = h.dir.path().join("other-private.pem");
    std::fs::write(&other_key, ed25519_pem([9; 32])).unwrap();
    std::fs::write(
        &other,
        Signer::load(&other_key).unwrap().public_key().to_pem(),
    )
    .unwrap();
    let (code, report) = verify(&h, &["--public-key", other.to_str().unwrap()]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["spool"]["broken"]["kind"], "forged_checkpoint");
    assert_eq!(report["spool"]["broken"]["seq"], 101);

    // A range starts at the checkpoint before it.
    let (code, report) = verify(&h, &["--from", "150", "--to", "220"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["spool"]["from_seq"], 101);
    assert_eq!(report["spool"]["to_seq"], 220);
}

#[test]
fn a_bad_signing_key_is_a_config_error_that_says_how_to_make_one() {
    let h = signed_harness();
    std::fs::write(h.dir.path().join("signing.pem"), "not a key").unwrap();
    let out = h.cli(&["check-config"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("integrity.signing_key_file"), "{err}");
    assert!(err.contains("openssl genpkey -algorithm ed25519"), "{err}");
    // The relay refuses to start with it, naming it.
    let out = h.cli(&["run"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("integrity.signing_key_file"), "{err}");
}

#[test]
fn after_a_key_rotation_both_public_keys_verify_the_spool() {
    let h = signed_harness();
    fill(&h, 150);
    let old_public = h.dir.path().join("old-public.pem");
    std::fs::write(&old_public, h.cli_ok(&["integrity", "public-key"])).unwrap();
    // Rotate: a new key in the same file, and more events.
    let key = h.dir.path().join("signing.pem");
    std::fs::write(&key, ed25519_pem([8; 32])).unwrap();
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let new_public = h.dir.path().join("new-public.pem");
    std::fs::write(&new_public, h.cli_ok(&["integrity", "public-key"])).unwrap();
    let mut g = gen::Gen::new(6);
    let (_, lines) = server_lines(&mut g, 10_000, 150);
    write_lines(&mut append_to(&h.log("a.log")), &lines);
    let mut relay = h.start();
    h.wait_events(&mut relay, 300);
    let log = relay.log_path();
    relay.terminate();
    // The first key was readable by all (as written by the test), the second is 0600.
    let warning = "integrity.signing_key_file is readable by every user";
    let first = std::fs::read_to_string(h.dir.path().join("relay-1.stderr")).unwrap();
    assert!(first.contains(warning), "{first}");
    let second = std::fs::read_to_string(log).unwrap();
    assert!(!second.contains(warning), "{second}");

    // The current key alone: the checkpoints of the old key are not its own.
    let (code, report) = verify(&h, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["spool"]["broken"]["kind"], "forged_checkpoint");
    assert_eq!(report["spool"]["broken"]["seq"], 101);
    // Both keys: everything holds, every checkpoint signed by one of them.
    let (code, report) = verify(
        &h,
        &[
            "--public-key",
            old_public.to_str().unwrap(),
            "--public-key",
            new_public.to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{report:#}");
    let spool = &report["spool"];
    assert_eq!(spool["checkpoints"], spool["signed_checkpoints"]);
    assert!(spool["checkpoints"].as_u64().unwrap() >= 4, "{report:#}");
}

/// The chain hash stored at `seq`.
fn hash_at(c: &rusqlite::Connection, seq: i64) -> Vec<u8> {
    c.query_row("SELECT hash FROM events WHERE seq = ?1", [seq], |r| {
        r.get(0)
    })
    .unwrap()
}

/// Deletes every row up to `through` and records the cut the way retention does
/// (`purged_through`, `purge_anchor`, `purged_max_ts`), as an intruder who knows it could.
fn cut_oldest(c: &rusqlite::Connection, through: i64) {
    let anchor = hash_at(c, through);
    let max_ts: i64 = c
        .query_row(
            "SELECT max(ts_ms) FROM events WHERE seq <= ?1 AND org != 0",
            [through],
            |r| r.get(0),
        )
        .unwrap();
    c.execute("DELETE FROM events WHERE seq <= ?1", [through])
        .unwrap();
    c.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('purged_through', ?1), ('purge_anchor', ?2), ('purged_max_ts', ?3)",
        rusqlite::params![through, anchor, max_ts],
    )
    .unwrap();
}

#[test]
fn a_cut_of_the_oldest_rows_that_retention_did_not_make_fails_verify() {
    let base = signed_harness();
    fill(&base, 500);
    let cps = seqs(&db(&base), "= 0");
    // Cut right before a checkpoint, exactly where retention would: but that checkpoint
    // was written seconds ago, and retention keeps 90 days.
    assert_detected(
        &base,
        "cut the oldest rows up to a checkpoint",
        |c, _| {
            cut_oldest(c, cps[1] - 1);
            cps[1]
        },
        "purge_unconfirmed",
    );
    // Cut anywhere: the first checkpoint after the cut is named.
    assert_detected(
        &base,
        "cut the oldest rows between checkpoints",
        |c, _| {
            cut_oldest(c, cps[1] + 50);
            cps[2]
        },
        "purge_unconfirmed",
    );
    // Cut after the newest checkpoint: nothing confirms the cut at all.
    assert_detected(
        &base,
        "cut everything but the newest events",
        |c, _| {
            let last = *cps.last().unwrap();
            c.execute_batch(&format!(
                "DELETE FROM events WHERE seq = {last};
                 UPDATE meta SET value = {last} - 1 WHERE key = 'last_seq';"
            ))
            .unwrap();
            c.execute(
                "UPDATE meta SET value = ?1 WHERE key = 'chain_head'",
                [hash_at(c, last - 1)],
            )
            .unwrap();
            cut_oldest(c, last - 10);
            last - 9
        },
        "purge_unconfirmed",
    );
}

/// A harness of an auditor: the operator's spool copied, a config whose signing key file
/// is not there (an auditor never has the private key), and the public key beside it.
fn auditor_copy_of(src: &Harness) -> (Harness, std::path::PathBuf) {
    let h = Harness::new();
    let text = h.config_text(&[], &[]);
    h.write_config(&format!(
        "{text}\n[integrity]\nsigning_key_file = \"/nonexistent/signing.pem\"\ncheckpoint_every = 100\n"
    ));
    std::fs::create_dir_all(&h.spool_dir).unwrap();
    for f in ["spool.db", "spool.db-wal", "spool.db-shm"] {
        let from = src.spool_dir.join(f);
        if from.exists() {
            std::fs::copy(&from, h.spool_dir.join(f)).unwrap();
        }
    }
    let public = h.dir.path().join("public.pem");
    std::fs::write(&public, src.cli_ok(&["integrity", "public-key"])).unwrap();
    (h, public)
}

#[test]
fn an_auditor_verifies_with_the_public_key_alone_and_a_spool_rewritten_without_checkpoints_fails() {
    let base = signed_harness();
    fill(&base, 300);
    let (h, public) = auditor_copy_of(&base);
    let key = ["--public-key", public.to_str().unwrap()];
    let (code, report) = verify(&h, &key);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["spool"]["signed_checkpoints"], 3, "{report:#}");
    // Without --public-key it needs the private key file, and says which one is missing.
    let out = h.cli(&["verify"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/signing.pem"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The whole spool rewritten: checkpoints dropped, rows renumbered, chain recomputed.
    let (h, public) = auditor_copy_of(&base);
    {
        let c = db(&h);
        c.execute_batch(
            "DELETE FROM events WHERE org = 0;
             CREATE TEMP TABLE t AS SELECT row_number() OVER (ORDER BY seq) AS n, * FROM events;
             DELETE FROM events;
             INSERT INTO events(seq, ts_ms, id, org, actor, action, body, hash)
               SELECT n, ts_ms, id, org, actor, action, body, hash FROM t;
             UPDATE meta SET value = (SELECT max(seq) FROM events) WHERE key = 'last_seq';",
        )
        .unwrap();
    }
    rechain(&h.spool_dir, 1, None);
    let key = ["--public-key", public.to_str().unwrap()];
    let (code, report) = verify(&h, &key);
    assert_eq!(
        code, 1,
        "a spool with no signed checkpoint must fail: {report:#}"
    );
    assert_eq!(report["spool"]["broken"]["kind"], "unsigned", "{report:#}");
    assert!(
        report["spool"]["broken"]["detail"]
            .as_str()
            .unwrap()
            .contains("no checkpoint covers the 300 row(s)"),
        "{report:#}"
    );
}

#[test]
fn a_cut_tail_with_rewritten_bookkeeping_is_named_by_the_age_of_the_newest_checkpoint() {
    let h = Harness::new();
    let key = h.dir.path().join("signing.pem");
    std::fs::write(&key, ed25519_pem([7; 32])).unwrap();
    let text = h.config_text(&[], &[]);
    h.write_config(&format!(
        "{text}\n[integrity]\nsigning_key_file = {:?}\ncheckpoint_every = 100\ncheckpoint_interval = \"1s\"\n",
        key.display().to_string()
    ));
    let mut g = gen::Gen::new(5);
    let (_, first) = server_lines(&mut g, 0, 100);
    let (_, second) = server_lines(&mut g, 1000, 100);
    let mut relay = h.start();
    write_lines(&mut append_to(&h.log("a.log")), &first);
    h.wait_events(&mut relay, 100);
    // Idle for a while (idle checkpoints every second), then more events.
    std::thread::sleep(std::time::Duration::from_millis(4500));
    write_lines(&mut append_to(&h.log("a.log")), &second);
    h.wait_events(&mut relay, 200);
    relay.terminate();
    let (code, report) = verify(&h, &[]);
    assert_eq!(code, 0, "the untouched spool: {report:#}");

    // Cut everything after the first checkpoint and make the writer's bookkeeping match.
    let first_cp = seqs(&db(&h), "= 0")[0];
    {
        let c = db(&h);
        c.execute("DELETE FROM events WHERE seq > ?1", [first_cp])
            .unwrap();
        c.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'last_seq'",
            [first_cp],
        )
        .unwrap();
        c.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'chain_head'",
            [hash_at(&c, first_cp)],
        )
        .unwrap();
    }
    let (code, report) = verify(&h, &[]);
    assert_eq!(code, 1, "a cut tail must fail: {report:#}");
    let broken = &report["spool"]["broken"];
    assert_eq!(broken["kind"], "stale_checkpoint", "{report:#}");
    assert_eq!(broken["seq"], first_cp + 1, "{report:#}");
    assert!(
        broken["detail"]
            .as_str()
            .unwrap()
            .contains("integrity.checkpoint_interval"),
        "{report:#}"
    );
}
