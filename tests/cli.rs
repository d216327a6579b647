//! The command line and config contracts: bad configs exit 2 naming their key,
//! `check-config`, `spool stats --json`, `query`, restart without duplicates, SIGTERM.

mod common;

use common::gen::{self, Gen};
use common::{Harness, BASE_MS, BIN};
use serde_json::Value;
use std::collections::HashSet;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Writes `text` as the config and runs `check-config`: must exit 2 with `expect` on
/// standard error. `run` must refuse it the same way.
fn assert_bad_config(h: &Harness, text: &str, expect: &[&str]) {
    h.write_config(text);
    for cmd in ["check-config", "run"] {
        let out = h.cli(&[cmd]);
        let err = stderr(&out);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{cmd} with config:\n{text}\nstderr: {err}"
        );
        for e in expect {
            assert!(
                err.contains(e),
                "{cmd}: stderr should contain {e:?}:\n{err}\nconfig:\n{text}"
            );
        }
    }
}

#[test]
fn each_kind_of_bad_config_exits_2_and_names_its_key() {
    let h = Harness::new();
    let good = h.config_text(&[], &[]);
    let with = |src: &[&str], sp: &[&str]| h.config_text(src, sp);

    // Unknown key.
    assert_bad_config(
        &h,
        &with(&["formt = \"cri\""], &[]),
        &["source.formt", "unknown field"],
    );
    assert_bad_config(
        &h,
        &format!("{good}\n[cloudwatch]\nenabled = true\n"),
        &["cloudwatch"],
    );
    // Wrong type.
    assert_bad_config(
        &h,
        &with(&[], &["retention_days = \"ninety\""]),
        &["spool.retention_days", "invalid type"],
    );
    assert_bad_config(
        &h,
        &with(&["paths = \"/var/log/*.log\""], &[]),
        &["source.paths"],
    );
    // Bad enum value.
    assert_bad_config(
        &h,
        &with(&["format = \"xml\""], &[]),
        &["source.format", "xml"],
    );
    assert_bad_config(
        &h,
        &with(&[], &["durability = \"sometimes\""]),
        &["spool.durability"],
    );
    // Out of range.
    assert_bad_config(
        &h,
        &with(&[], &["retention_days = 0"]),
        &["spool.retention_days: must be between 1 and 3653"],
    );
    // Bad duration, bad size.
    assert_bad_config(
        &h,
        &with(&["poll_interval = \"soon\""], &[]),
        &["source.poll_interval"],
    );
    assert_bad_config(
        &h,
        &with(&[], &["max_bytes = \"lots\""]),
        &["spool.max_bytes"],
    );
    // Empty paths.
    assert_bad_config(&h, &with(&["paths = []"], &[]), &["source.paths"]);
    // Every problem is listed, not just the first.
    assert_bad_config(
        &h,
        &with(&["paths = []"], &["retention_days = 0"]),
        &["source.paths", "spool.retention_days"],
    );
    // Not TOML at all.
    assert_bad_config(&h, "this is = not toml [", &["TOML"]);

    // A missing file.
    let missing = h.dir.path().join("nope.toml");
    let out = Command::new(BIN)
        .arg("-c")
        .arg(&missing)
        .arg("check-config")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&missing.display().to_string()),
        "names the file: {}",
        stderr(&out)
    );
}

#[test]
fn check_config_on_a_good_config_prints_one_line() {
    let h = Harness::new();
    let out = h.cli(&["check-config"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.lines().count(), 1, "{stdout:?}");
    assert!(!stdout.trim().is_empty());
    // The minimal config (defaults for everything else) is good too.
    h.write_config(&format!(
        "[source]\npaths = [{:?}]\n",
        h.log("*.log").display().to_string()
    ));
    let out = h.cli(&["check-config"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// Events for the query test: organization `org` gets events at `BASE_MS + i * 1000`
/// (i in 0..n) from two actors and two actions; other organizations get events too.
struct Seeded {
    org: String,
    /// (ms, id, actor, action, args as a JSON array) of `org`'s events.
    events: Vec<(i64, String, String, String, Value)>,
}

fn seed_events(path: &std::path::Path, n: i64) -> Seeded {
    let org = gen::org_id(7);
    let actors = [gen::actor_id(1), gen::actor_id(2)];
    let actions = ["startWorkspace", "gitpod.v1.OrganizationService/setRole"];
    let mut g = Gen::new(99);
    let mut out = String::new();
    let mut events = Vec::new();
    for i in 0..n {
        let ms = BASE_MS + i * 1000;
        let id = g.uuid();
        let actor = actors[(i % 2) as usize].clone();
        let action = actions[(i % 3 == 0) as usize].to_string();
        let args = serde_json::json!([org, {"n": i, "s": "quote \" and \\ slash"}]);
        let ev = serde_json::json!({
            "id": id, "timestamp": gen::rfc3339(ms), "action": action,
            "organizationId": org, "actorId": actor, "args": args,
        });
        out.push_str(&ev.to_string());
        out.push('\n');
        events.push((ms, id, actor, action, args));
        // Another organization's event at the same time.
        out.push_str(&gen::event_json(&mut g, ms).line);
        out.push('\n');
    }
    std::fs::write(path, out).unwrap();
    Seeded { org, events }
}

fn query_json(h: &Harness, args: &[&str]) -> Vec<Value> {
    let mut all = vec!["query", "--json"];
    all.extend_from_slice(args);
    h.cli_ok(&all)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect()
}

#[test]
fn stats_and_query_contracts() {
    let h = Harness::new();
    let seeded = seed_events(&h.log("a.log"), 40);
    let mut relay = h.start();
    h.wait_events(&mut relay, 80);
    relay.terminate();

    // spool stats --json: one flat object with the documented keys.
    let out = h.cli_ok(&["spool", "stats", "--json"]);
    assert_eq!(out.trim().lines().count(), 1, "{out}");
    let stats: Value = serde_json::from_str(out.trim()).unwrap();
    for key in [
        "events",
        "quarantined",
        "skipped",
        "duplicates",
        "oldest",
        "newest",
        "bytes",
    ] {
        assert!(stats.get(key).is_some(), "stats lacks {key}: {stats}");
    }
    assert_eq!(stats["events"], 80);
    assert_eq!(stats["quarantined"], 0);
    assert_eq!(stats["duplicates"], 0);
    assert_eq!(stats["oldest"], gen::rfc3339(BASE_MS));
    assert_eq!(stats["newest"], gen::rfc3339(BASE_MS + 39_000));
    assert!(stats["bytes"].as_u64().unwrap() > 0);
    // Without --json, something human-readable and non-empty.
    assert!(h.cli_ok(&["spool", "stats"]).contains("80"));

    let from = gen::rfc3339(BASE_MS - 60_000);
    let to = gen::rfc3339(BASE_MS + 3_600_000);
    let range = ["--org", &seeded.org, "--from", &from, "--to", &to];

    // API form, newest first, only this organization.
    let got = query_json(&h, &[&range[..], &["--limit", "1000"]].concat());
    assert_eq!(got.len(), 40);
    for (v, want) in got.iter().zip(seeded.events.iter().rev()) {
        let obj = v.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(|k| k.as_str()).collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "action",
                "actorId",
                "args",
                "id",
                "organizationId",
                "timestamp"
            ]
        );
        assert_eq!(v["id"], want.1);
        assert_eq!(v["timestamp"], gen::rfc3339(want.0));
        assert_eq!(v["actorId"], want.2);
        assert_eq!(v["action"], want.3);
        assert_eq!(v["organizationId"], seeded.org);
        let args = v["args"].as_str().expect("args is a JSON string");
        let args: Value = serde_json::from_str(args).expect("holding JSON");
        assert_eq!(args, want.4);
    }

    // --limit keeps the newest.
    let got = query_json(&h, &[&range[..], &["--limit", "3"]].concat());
    let ids: Vec<&str> = got.iter().map(|v| v["id"].as_str().unwrap()).collect();
    let want: Vec<&str> = seeded
        .events
        .iter()
        .rev()
        .take(3)
        .map(|e| e.1.as_str())
        .collect();
    assert_eq!(ids, want);

    // --actor, --action, and both.
    let actor = &seeded.events[1].2;
    let got = query_json(&h, &[&range[..], &["--actor", actor]].concat());
    assert_eq!(got.len(), 20);
    assert!(got.iter().all(|v| v["actorId"] == *actor));
    let action = "gitpod.v1.OrganizationService/setRole";
    let got = query_json(&h, &[&range[..], &["--action", action]].concat());
    let want = seeded.events.iter().filter(|e| e.3 == action).count();
    assert_eq!(got.len(), want);
    assert!(got.iter().all(|v| v["action"] == action));
    let got = query_json(
        &h,
        &[&range[..], &["--action", action, "--actor", actor]].concat(),
    );
    let want: Vec<&str> = seeded
        .events
        .iter()
        .rev()
        .filter(|e| e.3 == action && e.2 == *actor)
        .map(|e| e.1.as_str())
        .collect();
    let ids: Vec<&str> = got.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(ids, want);

    // --from / --to bound the range (bounds between events).
    let from = gen::rfc3339(BASE_MS + 9_500);
    let to = gen::rfc3339(BASE_MS + 19_500);
    let got = query_json(&h, &["--org", &seeded.org, "--from", &from, "--to", &to]);
    let ids: Vec<&str> = got.iter().map(|v| v["id"].as_str().unwrap()).collect();
    let want: Vec<&str> = seeded.events[10..20]
        .iter()
        .rev()
        .map(|e| e.1.as_str())
        .collect();
    assert_eq!(ids, want);

    // An unknown organization: nothing, exit 0.
    assert_eq!(
        query_json(&h, &["--org", &gen::org_id(100_000), "--from", &from]).len(),
        0
    );

    // A bad --from exits 2 and names it.
    let out = h.cli(&["query", "--org", &seeded.org, "--from", "yesterday"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("from"), "{}", stderr(&out));
    let out = h.cli(&["query", "--org", &seeded.org, "--to", "soon"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("to"), "{}", stderr(&out));
}

#[test]
fn query_defaults_to_the_last_seven_days() {
    let h = Harness::new();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let mut g = Gen::new(5);
    let org = gen::org_id(3);
    let mut lines = String::new();
    let mut ids = Vec::new();
    for (k, age) in [3_600_000i64, 2 * 86_400_000, 8 * 86_400_000]
        .iter()
        .enumerate()
    {
        let id = g.uuid();
        lines.push_str(
            &serde_json::json!({
                "id": id, "timestamp": gen::rfc3339(now - age), "action": "deleteWorkspace",
                "organizationId": org, "actorId": gen::actor_id(k as u64), "args": [],
            })
            .to_string(),
        );
        lines.push('\n');
        ids.push(id);
    }
    std::fs::write(h.log("a.log"), lines).unwrap();
    let mut relay = h.start();
    h.wait_events(&mut relay, 3);
    relay.terminate();

    let got = query_json(&h, &["--org", &org]);
    let got: Vec<&str> = got.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(
        got,
        [ids[0].as_str(), ids[1].as_str()],
        "7 days back from now"
    );
    let got = query_json(&h, &["--org", &org, "--since", "24h"]);
    let got: Vec<&str> = got.iter().map(|v| v["id"].as_str().unwrap()).collect();
    assert_eq!(got, [ids[0].as_str()]);
    // Without --json: one line an event.
    let out = h.cli_ok(&["query", "--org", &org, "--since", "30d"]);
    assert_eq!(out.lines().count(), 3, "{out}");
    assert!(out.contains(&ids[2]));
}

#[test]
fn restart_resumes_without_duplicates() {
    let h = Harness::new();
    let mut g = Gen::new(21);
    let path = h.log("a.log");
    let mut f = common::append_to(&path);
    let (mut ids, lines) = common::server_lines(&mut g, 0, 500);
    common::write_lines(&mut f, &lines);

    let mut relay = h.start();
    h.wait_events(&mut relay, 500);
    relay.terminate();
    let read_before = h.stats();

    // A restart with nothing new reads nothing again.
    let mut relay = h.start();
    std::thread::sleep(Duration::from_millis(500));
    if let Some(s) = relay.try_wait() {
        panic!("relay exited: {s:?}\n{}", relay.log());
    }
    relay.terminate();
    let stats = h.stats();
    assert_eq!(stats["events"], 500);
    assert_eq!(stats["duplicates"], 0, "{stats}");
    if let (Some(a), Some(b)) = (read_before.get("read"), stats.get("read")) {
        assert_eq!(a, b, "no record read again after a restart");
    }

    // Appended while stopped, and a new file: read once the relay is back.
    let (more, lines) = common::server_lines(&mut g, 1000, 500);
    common::write_lines(&mut f, &lines);
    ids.extend(more);
    let (more, lines) = common::server_lines(&mut g, 2000, 100);
    common::write_lines(&mut common::append_to(&h.log("b.log")), &lines);
    ids.extend(more);
    let mut relay = h.start();
    h.wait_events(&mut relay, 1100);
    relay.terminate();
    common::assert_exactly_once(&h, &ids.into_iter().collect());
    assert_eq!(h.stat("duplicates"), 0);
}

#[test]
fn sigterm_commits_everything_read_and_exits_0() {
    // Commits only by the clock, far away: what is stored at exit was committed by the
    // shutdown itself.
    let h = Harness::with(
        &[],
        &["commit_interval = \"10s\"", "commit_max_events = 1000000"],
    );
    let mut g = Gen::new(31);
    let (ids, lines) = common::server_lines(&mut g, 0, 300);
    common::write_lines(&mut common::append_to(&h.log("a.log")), &lines);
    let mut relay = h.start();
    // The relay logs when it opens a file, then reads it at once.
    h.wait_until(
        Some(&mut relay),
        "the file to be opened",
        common::DEADLINE,
        || relay_log(&h, 1).contains("following file"),
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(h.count(), 0, "nothing committed before commit_interval");
    let started = std::time::Instant::now();
    relay.terminate();
    assert!(
        started.elapsed() < Duration::from_secs(9),
        "the shutdown commit did not wait for commit_interval"
    );
    common::assert_exactly_once(&h, &ids.into_iter().collect());
}

#[test]
fn sigterm_mid_ingest_then_restart_stores_everything_once() {
    let h = Harness::new();
    let mut g = Gen::new(41);
    let mut all = Vec::new();
    let mut f = common::append_to(&h.log("big.log"));
    for c in 0..60 {
        let (ids, lines) = common::server_lines(&mut g, c * 1000, 1000);
        common::write_lines(&mut f, &lines);
        all.extend(ids);
    }
    let mut relay = h.start();
    h.wait_events(&mut relay, 1);
    relay.terminate();
    // One file is read in order: what was committed is a prefix of it.
    let stored: HashSet<String> = h.ids().into_iter().collect();
    let k = stored.len();
    assert!(k > 0);
    let prefix: HashSet<String> = all[..k].iter().cloned().collect();
    assert_eq!(
        stored, prefix,
        "the stored events are the first {k} of the file"
    );
    eprintln!("stopped after {k} of {} events", all.len());

    let mut relay = h.start();
    h.wait_events(&mut relay, all.len() as u64);
    relay.terminate();
    common::assert_exactly_once(&h, &all.into_iter().collect());
    assert_eq!(h.stat("duplicates"), 0);
}

fn relay_log(h: &Harness, run: u32) -> String {
    std::fs::read_to_string(h.dir.path().join(format!("relay-{run}.stderr"))).unwrap_or_default()
}

#[test]
fn relay_logs_as_json_when_configured() {
    let h = Harness::new();
    let mut text = h.config_text(&[], &[]);
    text = text.replace("[log]\n", "[log]\nformat = \"json\"\n");
    h.write_config(&text);
    let mut relay = h.start();
    h.wait_until(Some(&mut relay), "a log line", common::DEADLINE, || {
        !relay_log(&h, 1).is_empty()
    });
    let mut f = common::append_to(&h.log("a.log"));
    let s = gen::server_line(&mut Gen::new(1), BASE_MS);
    writeln!(f, "{}", s.line).unwrap();
    h.wait_events(&mut relay, 1);
    relay.terminate();
    let log = relay_log(&h, 1);
    for l in log.lines() {
        serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("log line {l:?}: {e}"));
    }
    // No event args at info level.
    assert!(!log.contains("user request"), "{log}");
}

#[test]
fn check_config_opens_the_api_key_files_like_run_does() {
    let h = Harness::new();
    let base = std::fs::read_to_string(&h.config).unwrap();
    let missing = h.dir.path().join("no-such-secret");
    h.write_config(&format!(
        "{base}\n[api]\nlisten = \"127.0.0.1:0\"\n\n[api.auth]\njwt_hs256_secret_file = {:?}\njwt_issuer = \"https://gitpod.example.com\"\njwt_audience = \"audit-relay\"\n",
        missing.display().to_string()
    ));
    let out = h.cli(&["check-config"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("api.auth.jwt_hs256_secret_file"),
        "{stderr}"
    );

    std::fs::write(&missing, "a-shared-secret-of-enough-length").unwrap();
    let out = h.cli(&["check-config"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
