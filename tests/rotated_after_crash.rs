//! A crash while a rotated file is still being drained: `a.log` is renamed out of the
//! glob (`a.log` → `a.log.1`, paths `*.log`) with lines in it the relay has not committed,
//! and the relay is SIGKILLed before it reads them. At the next start the relay finds
//! the renamed file by its identity (device, inode, fingerprint), reads it from its
//! checkpoint to its end and retires it; when the file is gone, it logs the loss once
//! and counts it in `audit_relay_source_files_lost_total`.

mod common;

use common::{
    admin_addr, assert_exactly_once, gen::Gen, http_get, server_lines, write_lines, Harness, Relay,
    DEADLINE,
};
use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

const N: usize = 200;
const M: usize = 150;
const K: usize = 120;

fn with_admin() -> Harness {
    let h = Harness::new();
    let text = h.config_text(&[], &[]) + "\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    h.write_config(&text);
    h
}

fn signal(relay: &Relay, sig: &str) {
    let st = Command::new("kill")
        .args([sig, &relay.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill {sig} failed");
}

fn lost_files(relay: &Relay) -> f64 {
    let (status, body) = http_get(&admin_addr(relay), "/metrics");
    assert_eq!(status, 200, "{body}");
    let line = body
        .lines()
        .find(|l| l.starts_with("audit_relay_source_files_lost_total "))
        .unwrap_or_else(|| panic!("no audit_relay_source_files_lost_total in:\n{body}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Whether the second run's log holds `text` (the relay is borrowed by the wait).
fn relay_log_has(h: &Harness, text: &str) -> bool {
    std::fs::read_to_string(h.dir.path().join("relay-3.stderr"))
        .unwrap_or_default()
        .contains(text)
}

fn stored_checkpoints(h: &Harness) -> Vec<String> {
    let db = h.db().expect("spool");
    let mut st = db
        .prepare("SELECT path FROM checkpoints ORDER BY path")
        .unwrap();
    st.query_map([], |r| r.get(0))
        .unwrap()
        .map(|r| r.unwrap())
        .collect()
}

/// N events stored; then, while the relay is stopped (SIGSTOP: it commits nothing),
/// M more appended to a.log, a.log renamed to a.log.1, a new a.log with K events;
/// SIGKILL. Returns the relay's first run's ids by group: (N, M, K).
fn crash_while_rotating(h: &Harness) -> (Vec<String>, Vec<String>, Vec<String>) {
    let mut g = Gen::new(0xC4A5);
    let path = h.log("a.log");
    let mut relay = h.start();
    let (n_ids, lines) = server_lines(&mut g, 0, N);
    write_lines(&mut common::append_to(&path), &lines);
    h.wait_events(&mut relay, N as u64);

    signal(&relay, "-STOP");
    let (m_ids, lines) = server_lines(&mut g, 10_000, M);
    write_lines(&mut common::append_to(&path), &lines);
    std::fs::rename(&path, h.log("a.log.1")).unwrap();
    let (k_ids, lines) = server_lines(&mut g, 20_000, K);
    write_lines(&mut common::append_to(&path), &lines);
    relay.kill();
    (n_ids, m_ids, k_ids)
}

#[test]
fn a_file_renamed_out_of_the_glob_before_a_crash_is_read_to_its_end_at_restart() {
    let h = with_admin();
    let (n, m, k) = crash_while_rotating(&h);
    assert_eq!(
        h.count(),
        N as u64,
        "the stopped relay committed nothing more"
    );

    let mut relay = h.start();
    h.wait_events(&mut relay, (N + M + K) as u64);
    h.wait_until(
        Some(&mut relay),
        "the rotated file to be retired",
        DEADLINE,
        || h.db().is_some() && stored_checkpoints(&h).len() == 1,
    );
    assert_eq!(lost_files(&relay), 0.0);
    // Past rotate_wait once more: nothing arrives twice.
    std::thread::sleep(Duration::from_millis(600));
    let log = relay.log();
    relay.terminate();

    let all: HashSet<String> = [n, m, k].into_iter().flatten().collect();
    assert_exactly_once(&h, &all);
    assert_eq!(h.quarantine_rows(), vec![], "nothing is quarantined");
    assert_eq!(h.stat("duplicates"), 0, "nothing was read twice");
    assert_eq!(
        stored_checkpoints(&h),
        vec![h.log("a.log").display().to_string()]
    );
    assert!(log.contains("a.log.1"), "the rotated file is named:\n{log}");
    assert!(!log.contains("not found"), "{log}");
}

#[test]
fn a_rotated_file_deleted_before_the_restart_is_logged_once_and_counted() {
    let h = with_admin();
    let (n, _m, k) = crash_while_rotating(&h);
    std::fs::remove_file(h.log("a.log.1")).unwrap();

    let mut relay = h.start();
    h.wait_events(&mut relay, (N + K) as u64);
    assert_eq!(lost_files(&relay), 1.0);
    let log = relay.log();
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("WARN") && l.contains("checkpointed file not found"))
        .collect();
    assert_eq!(warnings.len(), 1, "logged once:\n{log}");
    let w = warnings[0];
    assert!(w.contains("a.log"), "names the path: {w}");
    assert!(w.contains("offset="), "names the offset: {w}");
    assert!(
        w.contains("cannot be known"),
        "says the count is unknown: {w}"
    );
    std::thread::sleep(Duration::from_millis(300));
    relay.terminate();

    // The checkpoint is forgotten: the next start neither logs nor counts it again.
    let mut relay = h.start();
    h.wait_until(Some(&mut relay), "a.log to be followed", DEADLINE, || {
        relay_log_has(&h, "following file")
    });
    assert_eq!(lost_files(&relay), 0.0);
    let log = relay.log();
    relay.terminate();
    assert!(!log.contains("checkpointed file not found"), "{log}");

    let all: HashSet<String> = [n, k].into_iter().flatten().collect();
    assert_exactly_once(&h, &all);
    assert_eq!(h.quarantine_rows(), vec![], "nothing is quarantined");
    assert_eq!(
        stored_checkpoints(&h),
        vec![h.log("a.log").display().to_string()]
    );
}
