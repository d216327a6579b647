//! The file source's names and permissions, with the real binary: one file under several
//! names (symlink, hard link) is read once and logged once; a file that cannot be opened
//! is logged at most once a minute, counted in `/metrics` and named by `/readyz`.

mod common;

use common::{assert_exactly_once, gen::Gen, http_get, server_lines, write_lines, Harness, BIN};
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Lines of `log` that contain `needle`.
fn lines_with(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

#[test]
fn a_file_under_three_names_is_read_once_and_logged_once() {
    let h = Harness::new();
    let a = h.log("a.log");
    let mut g = Gen::new(0xA11A5);
    let (mut ids, lines) = server_lines(&mut g, 0, 200);
    write_lines(&mut common::append_to(&a), &lines);
    // `b.log` is a symlink to it, `c.log` a hard link: all three match `*.log`.
    std::os::unix::fs::symlink(&a, h.log("b.log")).unwrap();
    std::fs::hard_link(&a, h.log("c.log")).unwrap();

    let mut relay = h.start();
    h.wait_events(&mut relay, 200);
    // Written through another of its names: still the one file, read once.
    let (more, lines) = server_lines(&mut g, 1000, 100);
    write_lines(&mut common::append_to(&h.log("c.log")), &lines);
    ids.extend(more);
    h.wait_events(&mut relay, 300);
    // Many passes (poll_interval is 50 ms) with the three names in place.
    std::thread::sleep(Duration::from_secs(3));
    let log = relay.log();
    relay.terminate();

    let ids: HashSet<String> = ids.into_iter().collect();
    assert_exactly_once(&h, &ids);
    assert_eq!(h.stat("duplicates"), 0, "no line was read twice");
    assert_eq!(
        lines_with(&log, "file renamed"),
        0,
        "a file that kept its name was not renamed:\n{log}"
    );
    assert_eq!(
        lines_with(&log, "another name"),
        2,
        "each other name is logged once:\n{log}"
    );
    assert_eq!(lines_with(&log, "following file"), 1, "{log}");
    assert!(log.lines().count() < 40, "a bounded log:\n{log}");
}

/// The effective user id of this process (tests usually run as root, in a container).
fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// A relay started by hand; killed when dropped (e.g. by a failed assertion).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `audit-relay run`, as user `nobody` when the test runs as root: root may open a file
/// whatever its mode, so `chmod 000` denies nothing to a relay that runs as root.
fn start_unprivileged(h: &Harness, stderr: &std::path::Path) -> Running {
    let mut cmd = if euid() == 0 {
        for dir in [h.dir.path(), &h.logs] {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::set_permissions(&h.config, std::fs::Permissions::from_mode(0o644)).unwrap();
        std::fs::create_dir_all(&h.spool_dir).unwrap();
        std::os::unix::fs::chown(&h.spool_dir, Some(65534), Some(65534)).unwrap();
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(BIN);
        c
    } else {
        Command::new(BIN)
    };
    cmd.arg("-c")
        .arg(&h.config)
        .arg("run")
        .env_remove("RUST_LOG")
        .env_remove("AUDIT_RELAY_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(stderr).unwrap())
        .spawn()
        .map(Running)
        .expect("spawn audit-relay run")
}

/// The admin address the relay logged.
fn admin_addr(stderr: &std::path::Path) -> String {
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(stderr).unwrap_or_default();
        if let Some(line) = log
            .lines()
            .find(|l| l.contains("admin endpoints listening"))
        {
            let addr = line.split("addr=").nth(1).expect("addr field");
            return addr.split_whitespace().next().unwrap().to_string();
        }
        assert!(
            start.elapsed() < common::DEADLINE,
            "no admin address:\n{log}"
        );
        std::thread::sleep(common::POLL);
    }
}

fn unreadable_gauge(admin: &str) -> f64 {
    let (status, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200, "{body}");
    let line = body
        .lines()
        .find(|l| l.starts_with("audit_relay_source_unreadable_files "))
        .unwrap_or_else(|| panic!("no audit_relay_source_unreadable_files in:\n{body}"));
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn an_unreadable_file_is_logged_once_a_minute_counted_and_fails_readiness() {
    let h = Harness::new();
    let text = h.config_text(&[], &[]) + "\n[admin]\nlisten = \"127.0.0.1:0\"\n";
    h.write_config(&text);
    let mut g = Gen::new(0xDE1);
    let (ids_a, lines) = server_lines(&mut g, 0, 100);
    write_lines(&mut common::append_to(&h.log("a.log")), &lines);
    let secret = h.log("secret.log");
    let (ids_s, lines) = server_lines(&mut g, 1000, 10);
    write_lines(&mut common::append_to(&secret), &lines);
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o000)).unwrap();
    std::fs::set_permissions(h.log("a.log"), std::fs::Permissions::from_mode(0o644)).unwrap();

    let stderr = h.dir.path().join("relay.stderr");
    let mut child = start_unprivileged(&h, &stderr);
    let log = || std::fs::read_to_string(&stderr).unwrap_or_default();
    let admin = admin_addr(&stderr);
    h.wait_until(None, "a.log to be stored", common::DEADLINE, || {
        h.count() >= 100
    });
    // Many passes (poll_interval is 50 ms) over the unreadable file.
    std::thread::sleep(Duration::from_secs(3));
    let text = log();
    assert_eq!(
        lines_with(&text, "cannot open file"),
        1,
        "logged once, not on every pass:\n{text}"
    );
    assert!(
        text.contains("Permission denied") && text.contains("secret.log"),
        "the warning names the file and the error:\n{text}"
    );
    assert_eq!(unreadable_gauge(&admin), 1.0);
    let (status, body) = http_get(&admin, "/readyz");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("cannot be opened"), "{body}");

    // Made readable: read, no longer counted, ready again.
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    h.wait_until(None, "secret.log to be stored", common::DEADLINE, || {
        h.count() >= 110
    });
    h.wait_until(None, "the gauge to fall to 0", common::DEADLINE, || {
        unreadable_gauge(&admin) == 0.0
    });
    let (status, body) = http_get(&admin, "/readyz");
    assert_eq!(status, 200, "{body}");

    let pid = child.0.id().to_string();
    assert!(Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = child.0.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", log());
    let all: HashSet<String> = ids_a.into_iter().chain(ids_s).collect();
    assert_exactly_once(&h, &all);
}

/// A directory loop under `**` (a symlink to a parent directory) gives a file a name at
/// every level the glob walks: it is still read once, and the log stays bounded.
#[test]
fn a_directory_loop_under_double_star_is_read_once_with_a_bounded_log() {
    let h = Harness::new();
    let sub = h.logs.join("sub");
    std::fs::create_dir_all(&sub).unwrap();
    std::os::unix::fs::symlink("..", sub.join("loop")).unwrap();
    let pattern = format!("paths = [{:?}]", h.log("**/*.log").display().to_string());
    h.write_config(&h.config_text(&[&pattern], &[]));
    let mut g = Gen::new(0x100B);
    let (ids, lines) = server_lines(&mut g, 0, 50);
    write_lines(&mut common::append_to(&sub.join("a.log")), &lines);

    let mut relay = h.start();
    h.wait_events(&mut relay, 50);
    std::thread::sleep(Duration::from_secs(3));
    let log = relay.log();
    relay.terminate();
    assert_exactly_once(&h, &ids.into_iter().collect());
    assert_eq!(lines_with(&log, "file renamed"), 0, "{log}");
    assert!(lines_with(&log, "another name") <= 16, "{log}");
    assert!(log.lines().count() < 40, "a bounded log:\n{log}");
}
