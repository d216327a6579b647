//! The disk cap (`spool.max_bytes`): at the cap, reading pauses with every offset kept
//! and readiness fails; with room again, reading resumes and every event is stored
//! exactly once.

mod common;

use common::*;
use std::time::Duration;

#[test]
fn reading_pauses_at_the_cap_and_resumes_with_room_without_loss() {
    let small = Harness::with(&[], &["max_bytes = \"1MiB\""]);
    let with_admin = |h: &Harness, cap: &str| {
        let text = h.config_text(&[], &[&format!("max_bytes = \"{cap}\"")]);
        h.write_config(&format!("{text}\n[admin]\nlisten = \"127.0.0.1:0\"\n"));
    };
    with_admin(&small, "1MiB");
    let mut g = gen::Gen::new(41);
    let (ids, lines) = server_lines(&mut g, 0, 60_000);
    write_lines(&mut append_to(&small.log("a.log")), &lines);

    let mut relay = small.start();
    let addr = admin_addr(&relay);
    // Reading stops well short of the file: the count stops growing.
    small.wait_until(
        Some(&mut relay),
        "the spool to reach its cap",
        DEADLINE,
        || relay_log_has(&small, "spool reached spool.max_bytes"),
    );
    // Batches already in flight when the cap was seen are still committed (the cap is
    // soft by about one group commit); then nothing more is read.
    std::thread::sleep(Duration::from_millis(1500));
    let paused_at = small.count();
    std::thread::sleep(Duration::from_millis(1000));
    assert_eq!(small.count(), paused_at, "reading went on past the cap");
    assert!(
        paused_at < 60_000,
        "the cap did not stop reading ({paused_at} stored)"
    );
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("spool full"), "{body}");
    relay.terminate();

    // More room: reading resumes from the kept offsets; nothing lost, nothing twice.
    with_admin(&small, "256MiB");
    let mut relay = small.start();
    small.wait_events(&mut relay, 60_000);
    let addr = admin_addr(&relay);
    assert_eq!(http_get(&addr, "/readyz").0, 200);
    relay.terminate();
    let expected: std::collections::HashSet<String> = ids.into_iter().collect();
    assert_exactly_once(&small, &expected);
    assert_eq!(small.stat("duplicates"), 0);
}

/// Whether any relay run of this harness logged `needle`.
fn relay_log_has(h: &Harness, needle: &str) -> bool {
    std::fs::read_dir(h.dir.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".stderr"))
        .any(|e| {
            std::fs::read_to_string(e.path())
                .unwrap_or_default()
                .contains(needle)
        })
}

/// A small tmpfs mounted on a directory for the test's life (needs root, as in CI).
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, size: &str) {
        let s = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(s.success(), "remount {size}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

#[test]
fn running_out_of_disk_pauses_reading_and_resumes_without_loss_or_crash() {
    let h = Harness::new();
    let text = h.config_text(&[], &[]);
    h.write_config(&format!("{text}\n[admin]\nlisten = \"127.0.0.1:0\"\n"));
    let Some(fs) = Tmpfs::mount(&h.spool_dir, "3m") else {
        // Mounting needs root (as CI has). Elsewhere the skip must be asked for by name,
        // so that it is never silent.
        assert!(
            std::env::var_os("AUDIT_RELAY_TEST_NO_MOUNT").is_some(),
            "cannot mount a tmpfs (needs root); set AUDIT_RELAY_TEST_NO_MOUNT=1 to skip this test knowingly"
        );
        eprintln!("SKIPPED on request (AUDIT_RELAY_TEST_NO_MOUNT): no tmpfs");
        return;
    };
    let mut g = gen::Gen::new(43);
    let (ids, lines) = server_lines(&mut g, 0, 40_000);
    write_lines(&mut append_to(&h.log("a.log")), &lines);

    let mut relay = h.start();
    let addr = admin_addr(&relay);
    h.wait_until(Some(&mut relay), "the disk to fill", DEADLINE, || {
        relay_log_has(&h, "disk is full or failing")
    });
    std::thread::sleep(Duration::from_millis(1500));
    assert!(relay.try_wait().is_none(), "the relay exited on ENOSPC");
    let stuck = h.count();
    assert!(stuck < 40_000, "the disk did not fill ({stuck} stored)");
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("spool full"), "{body}");
    let (_, metrics) = http_get(&addr, "/metrics");
    assert!(
        metrics.contains("\naudit_relay_spool_full 1\n"),
        "{metrics}"
    );

    // Space frees: the held group commit goes in, reading resumes, nothing twice.
    fs.resize("256m");
    h.wait_events(&mut relay, 40_000);
    h.wait_until(Some(&mut relay), "readiness", DEADLINE, || {
        http_get(&addr, "/readyz").0 == 200
    });
    assert!(relay_log_has(&h, "the spool is writable again"));
    relay.terminate();
    let expected: std::collections::HashSet<String> = ids.into_iter().collect();
    assert_exactly_once(&h, &expected);
    assert_eq!(h.stat("duplicates"), 0);
    let out = h.cli_ok(&["verify"]);
    assert!(out.trim_end().ends_with("OK"), "{out}");
    drop(fs);
}
