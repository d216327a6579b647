//! One writer per spool: a second `audit-relay run` on the same `spool.dir` exits 2 naming
//! the holder's pid, while the read-only commands keep working beside the writer.

mod common;

use common::gen::Gen;
use common::{Harness, DEADLINE};

#[test]
fn a_second_run_on_the_same_spool_exits_2_naming_the_holder_while_readers_still_work() {
    let h = Harness::new();
    let mut g = Gen::new(5);
    let (ids, lines) = common::server_lines(&mut g, 0, 200);
    common::write_lines(&mut common::append_to(&h.log("a.log")), &lines);
    let mut first = h.start();
    h.wait_events(&mut first, 200);

    // Started like the first (a relay that is let in would run until stopped: the wait
    // below fails instead of hanging).
    let mut second = h.start();
    let status = second.wait_exit(DEADLINE);
    let err = second.log();
    assert_eq!(
        status.code(),
        Some(2),
        "a second writer must be refused; stderr: {err}"
    );
    assert!(
        err.contains(&format!("pid {}", first.pid())) && err.contains("spool.lock"),
        "the refusal must name the holder's pid and the lock file: {err}"
    );
    let lock = std::fs::read_to_string(h.spool_dir.join("spool.lock")).unwrap();
    assert_eq!(
        lock.trim(),
        first.pid().to_string(),
        "the loser must not overwrite the pid"
    );

    // Readers do not take the lock.
    let stats: serde_json::Value =
        serde_json::from_str(&h.cli_ok(&["spool", "stats", "--json"])).unwrap();
    assert_eq!(stats["events"], 200);
    h.cli_ok(&["quarantine", "list", "--json"]);
    h.cli_ok(&["verify"]);
    let org = common::gen::org_id(0);
    h.cli_ok(&[
        "query",
        "--org",
        &org,
        "--from",
        "2000-01-01T00:00:00Z",
        "--json",
    ]);

    // The writer is unharmed, and the lock goes with it: a new run may start.
    let (more, lines) = common::server_lines(&mut g, 1_000_000, 50);
    common::write_lines(&mut common::append_to(&h.log("a.log")), &lines);
    h.wait_events(&mut first, 250);
    first.terminate();
    let mut third = h.start();
    let pid = third.pid().to_string();
    h.wait_until(Some(&mut third), "the new writer to run", DEADLINE, || {
        std::fs::read_to_string(h.spool_dir.join("spool.lock")).is_ok_and(|t| t.trim() == pid)
    });
    assert!(third.try_wait().is_none(), "{}", third.log());
    third.terminate();
    common::assert_exactly_once(&h, &ids.into_iter().chain(more).collect());
}

#[test]
fn a_writer_killed_with_sigkill_leaves_no_stale_lock() {
    let h = Harness::new();
    let mut g = Gen::new(6);
    let (_, lines) = common::server_lines(&mut g, 0, 20);
    common::write_lines(&mut common::append_to(&h.log("a.log")), &lines);
    let mut first = h.start();
    h.wait_events(&mut first, 20);
    first.kill();
    // The pid in the file is stale, but the kernel released the lock with the process.
    let mut next = h.start();
    let pid = next.pid().to_string();
    h.wait_until(
        Some(&mut next),
        "the next writer to take the lock",
        DEADLINE,
        || std::fs::read_to_string(h.spool_dir.join("spool.lock")).is_ok_and(|t| t.trim() == pid),
    );
    next.terminate();
}
