//! The audit log viewer (`api.ui = true`) over real HTTP against the real binary: its files,
//! headers and session endpoint; and end to end in Debian's headless Chromium, driven by
//! playwright-core from `tests/ui/viewer.test.mjs`, with real tokens against a spool of
//! generated events (the expected answers come from `audit-relay query`). The browser
//! needs `/usr/bin/chromium` and `npm ci` in `tests/ui` (scripts/test does both), and the
//! build check needs `npm ci` in `ui`.

mod api_common;
mod common;

use api_common::*;
use common::*;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

const ORG_C: &str = "cccccccc-0000-4000-8000-00000000000c";
const ACTORS: [&str; 3] = [
    "a0000000-0000-4000-8000-000000000001",
    "a0000000-0000-4000-8000-000000000002",
    "a0000000-0000-4000-8000-000000000003",
];
const ACTIONS: [&str; 4] = [
    "startWorkspace",
    "getTeamProjects",
    "setTeamMemberRole",
    "gitpod.v1.WorkspaceService/startWorkspace",
];
const COOKIE: &str = "platform_jwt";
const CHROMIUM: &str = "/usr/bin/chromium";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn owner_of(org: &str, user: &str, exp: i64) -> String {
    let claims = json!({"sub": user, "iss": ISSUER, "aud": AUDIENCE, "exp": exp,
        "iat": exp - 3600, "orgs": {org: "owner", ORG_C: "member"}});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

fn viewer_harness(extra: &[&str]) -> (Harness, Relay, String) {
    let mut api = vec!["ui = true"];
    api.extend_from_slice(extra);
    let (h, _) = api_harness_with(&[], &api);
    let relay = h.start();
    let addr = api_addr(&relay);
    (h, relay, addr)
}

#[test]
fn without_api_ui_there_is_no_viewer() {
    let (h, _) = api_harness();
    let relay = h.start();
    let addr = api_addr(&relay);
    let token = owner_of(ORG_A, "user-a", now_ms() / 1000 + 3600);
    for path in [
        "/ui",
        "/ui/",
        "/ui/app.js",
        "/ui/style.css",
        "/ui/api/session",
    ] {
        let r = get(&addr, &token, path);
        assert_eq!(r.status, 404, "{path}: {}", r.text());
    }
    relay.terminate();
}

#[test]
fn the_viewer_is_served_under_a_strict_policy() {
    let (_h, relay, addr) = viewer_harness(&[&format!("ui_token_cookie = \"{COOKIE}\"")]);
    let plain =
        |path: &str, headers: &[(&str, &str)]| request(&addr, "GET", path, headers, Send::None);
    let r = plain("/ui", &[]);
    assert_eq!((r.status, r.header("location")), (308, Some("/ui/")));
    for (path, ctype, marker) in [
        (
            "/ui/",
            "text/html; charset=utf-8",
            "<script src=\"app.js\" defer></script>",
        ),
        (
            "/ui/app.js",
            "text/javascript; charset=utf-8",
            "textContent",
        ),
        ("/ui/style.css", "text/css; charset=utf-8", "[hidden]"),
    ] {
        let r = plain(path, &[]);
        assert_eq!(r.status, 200, "{path}");
        assert_eq!(r.header("content-type"), Some(ctype), "{path}");
        assert!(r.text().contains(marker), "{path}");
        let csp = r.header("content-security-policy").expect("a CSP");
        for want in [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "frame-ancestors 'none'",
            "object-src 'none'",
            "base-uri 'none'",
        ] {
            assert!(csp.contains(want), "{path}: {want} in {csp}");
        }
        assert!(!csp.contains("unsafe"), "{path}: {csp}");
        assert_eq!(r.header("x-frame-options"), Some("DENY"), "{path}");
        assert_eq!(
            r.header("x-content-type-options"),
            Some("nosniff"),
            "{path}"
        );
        assert_eq!(r.header("cache-control"), Some("no-cache"), "{path}");
        let tag = r.header("etag").expect("an ETag").to_string();
        let again = plain(path, &[("If-None-Match", &tag)]);
        assert_eq!(again.status, 304, "{path} revalidates");
        assert!(again.body.is_empty());
    }
    // No inline script or style anywhere in the page.
    let html = plain("/ui/", &[]).text();
    for inline in [
        "<script>",
        "<style",
        "style=",
        "onclick",
        "onload",
        "onsubmit",
        "javascript:",
    ] {
        assert!(!html.contains(inline), "{inline} in the page");
    }
    assert_eq!(plain("/ui/nothing.js", &[]).status, 404);

    // The session: who the token is, what it may read, which store answers.
    let owner = owner_of(ORG_A, "user-a", now_ms() / 1000 + 3600);
    assert_eq!(plain("/ui/api/session", &[]).status, 401);
    let r = get(&addr, &owner, "/ui/api/session");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("cache-control"), Some("no-store"));
    let j = r.json();
    assert_eq!(
        j["organizations"],
        json!([ORG_A]),
        "owned organizations only: {j}"
    );
    assert_eq!(
        (j["store"].as_str(), j["actor"].as_str()),
        (Some("spool"), Some("user-a"))
    );
    let j = get(&addr, ADMIN_TOKEN, "/ui/api/session").json();
    assert_eq!(
        (j["allOrganizations"].as_bool(), j["kind"].as_str()),
        (Some(true), Some("operator"))
    );

    // The cookie counts only with the viewer's header, and never over Authorization.
    let cookie = format!("other=1; {COOKIE}={owner}");
    let r = plain(
        "/ui/api/session",
        &[("Cookie", &cookie), ("X-Audit-Relay-UI", "1")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(plain("/ui/api/session", &[("Cookie", &cookie)]).status, 401);
    let bad = "Bearer not-a-token";
    let r = plain(
        "/ui/api/session",
        &[
            ("Cookie", &cookie),
            ("X-Audit-Relay-UI", "1"),
            ("Authorization", bad),
        ],
    );
    assert_eq!(r.status, 401);
    let list = format!("{{\"organizationId\":\"{ORG_A}\"}}");
    let r = request(
        &addr,
        "POST",
        LIST,
        &[
            ("Content-Type", "application/json"),
            ("Cookie", &cookie),
            ("X-Audit-Relay-UI", "1"),
        ],
        Send::Plain(list.as_bytes()),
    );
    assert_eq!(r.status, 200, "the same cookie reads the API: {}", r.text());
    relay.terminate();
}

#[test]
fn the_committed_script_is_what_its_source_builds_to() {
    let ui = repo().join("ui");
    let tsc = ui.join("node_modules/.bin/tsc");
    assert!(
        tsc.exists(),
        "{} is missing: run `npm ci` in ui/ (scripts/test does)",
        tsc.display()
    );
    let out = tempfile::tempdir().unwrap();
    let status = Command::new(&tsc)
        .arg("-p")
        .arg(ui.join("tsconfig.json"))
        .arg("--outDir")
        .arg(out.path())
        .status()
        .expect("run tsc");
    assert!(status.success(), "tsc failed on ui/src");
    let built = std::fs::read_to_string(out.path().join("app.js")).unwrap();
    let committed = std::fs::read_to_string(ui.join("dist/app.js")).unwrap();
    assert!(
        built == committed,
        "ui/dist/app.js is not what ui/src/app.ts builds to: run `npm run build` in ui/ and commit ui/dist/app.js"
    );
}

/// Ids printed by `audit-relay query … --json`, in its order (newest first).
fn query_ids(h: &Harness, args: &[&str]) -> Vec<String> {
    let mut all = vec!["query", "--limit", "100000", "--json"];
    all.extend_from_slice(args);
    h.cli_ok(&all)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Runs `tests/ui/viewer.test.mjs` on `fixture` in headless Chromium; asserts that it
/// passed, and returns what it printed and how long it took.
fn run_browser(h: &Harness, relay: &Relay, fixture: &serde_json::Value) -> (String, Duration) {
    let node_modules = repo().join("tests/ui/node_modules/playwright-core");
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: install Debian's chromium package (scripts/test does)"
    );
    assert!(
        node_modules.exists(),
        "{} is missing: run `npm ci` in tests/ui (scripts/test does)",
        node_modules.display()
    );
    let fixture_path = h.dir.path().join("fixture.json");
    std::fs::write(&fixture_path, fixture.to_string()).unwrap();
    let started = Instant::now();
    let out = Command::new("node")
        .arg(repo().join("tests/ui/viewer.test.mjs"))
        .arg(&fixture_path)
        .current_dir(repo().join("tests/ui"))
        .output()
        .expect("run node");
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "the browser tests failed ({:?}); relay log:\n{}",
        out.status,
        relay.log()
    );
    (stdout, took)
}

fn whole_second(ms: i64) -> i64 {
    ms - ms.rem_euclid(1000)
}

#[test]
fn the_viewer_in_headless_chromium() {
    let (h, mut relay, addr) = viewer_harness(&[&format!("ui_token_cookie = \"{COOKIE}\"")]);
    let now = now_ms();
    // The window ends before now, so the viewer's own reads (audited at now) fall outside.
    let to = whole_second(now - 30 * 60_000);
    let from = whole_second(to - 5 * 86_400_000);
    let mut g = gen::Gen::new(13);
    let mut lines = Vec::new();
    let mut n = 0;
    // 250 events of org A inside the window (some sharing a millisecond), 10 before it,
    // 30 of org B inside it.
    for i in 0..250u64 {
        let ms = to - 60_000 - g.below(5 * 86_400_000 - 120_000) as i64;
        let ms = if i % 9 == 0 { ms - ms % 1000 } else { ms };
        let actor = ACTORS[(i % 3) as usize];
        let action = ACTIONS[g.below(4) as usize];
        lines.push(event_line(&g.uuid(), ms, action, ORG_A, actor, i));
        n += 1;
    }
    for i in 0..10u64 {
        let ms = from - 3_600_000 - i as i64 * 1000;
        lines.push(event_line(
            &g.uuid(),
            ms,
            "startWorkspace",
            ORG_A,
            ACTORS[0],
            i,
        ));
        n += 1;
    }
    for i in 0..30u64 {
        let ms = to - 120_000 - i as i64 * 3_600_000;
        lines.push(event_line(
            &g.uuid(),
            ms,
            "startWorkspace",
            ORG_B,
            ACTORS[1],
            i,
        ));
        n += 1;
    }
    // The newest event of the window is hostile.
    let xss_id = g.uuid();
    let xss_action = "<img src=x onerror=\"window.__xss=1;alert('action')\">";
    lines.push(
        json!({"id": xss_id, "timestamp": rfc3339_ms(to - 1000), "action": xss_action,
            "organizationId": ORG_A, "actorId": ACTORS[0],
            "args": ["<img src=x onerror=\"window.__xss=2;alert('args')\">",
                     "</script><script>window.__xss=3;alert('script')</script>",
                     {"nested": "<svg onload=alert(4)>"}]})
        .to_string(),
    );
    n += 1;
    write_lines(&mut append_to(&h.log("seed.log")), &lines);
    h.wait_events(&mut relay, n);

    let (f, t) = (rfc3339_ms(from), rfc3339_ms(to));
    let window = ["--org", ORG_A, "--from", &f, "--to", &t];
    let all = query_ids(&h, &window);
    assert_eq!(all.len(), 251, "the CLI sees the window");
    let by_actor = query_ids(&h, &[&window[..], &["--actor", ACTORS[1]]].concat());
    let by_action = query_ids(&h, &[&window[..], &["--action", ACTIONS[1]]].concat());
    let both = query_ids(
        &h,
        &[&window[..], &["--actor", ACTORS[0], "--action", ACTIONS[0]]].concat(),
    );
    assert!(!by_actor.is_empty() && !by_action.is_empty() && !both.is_empty());
    let other_ids = query_ids(&h, &["--org", ORG_B, "--from", &f, "--to", &t]);
    assert_eq!(other_ids.len(), 30);

    let screenshot = repo().join("target/ui/main-view.png");
    std::fs::create_dir_all(screenshot.parent().unwrap()).unwrap();
    let exp = now / 1000 + 3600;
    let fixture = json!({
        "base": format!("http://{addr}"),
        "chromium": CHROMIUM,
        "cookie": COOKIE,
        "orgA": ORG_A,
        "orgB": ORG_B,
        "from": f,
        "to": t,
        "ownerA": owner_of(ORG_A, "owner-of-a", exp),
        "ownerB": owner_of(ORG_B, "owner-of-b", exp),
        "expiredA": owner_of(ORG_A, "owner-of-a", now / 1000 - 600),
        "admin": ADMIN_TOKEN,
        "all": all,
        "actor": {"actor": ACTORS[1], "ids": by_actor},
        "action": {"action": ACTIONS[1], "ids": by_action},
        "both": {"actor": ACTORS[0], "action": ACTIONS[0], "ids": both},
        "otherIds": other_ids,
        "xss": {"id": xss_id, "action": xss_action},
        "screenshot": screenshot,
        "userDataDir": h.dir.path().join("chromium-profile"),
        "downloads": h.dir.path().join("downloads"),
    });
    let (stdout, took) = run_browser(&h, &relay, &fixture);
    assert!(stdout.contains("# all passed"), "{stdout}");
    assert!(
        took < Duration::from_secs(120),
        "the browser tests took {took:?}"
    );
    println!("screenshot of the main view: {}", screenshot.display());
    assert!(std::fs::metadata(&screenshot).unwrap().len() > 10_000);

    // Every read the page made is audited like any other (the list pages and exports of
    // owner A; nothing for the refused callers).
    let reads = read_events(&h);
    assert!(reads
        .iter()
        .any(|(o, a, _)| o == ORG_A && a == "owner-of-a"));
    assert!(
        !reads.iter().any(|(_, a, _)| a == "owner-of-b"),
        "a refused caller read nothing"
    );
    relay.terminate();
}

#[test]
fn with_the_installation_store_the_page_says_it_shows_the_whole_installation() {
    let pg = common::postgres::Postgres::start();
    let (h, _) = api_harness_with(&[], &["ui = true", "store = \"postgres\""]);
    let mut text = std::fs::read_to_string(&h.config).unwrap();
    text.push_str(&pg.config_section("pod-ui", &[]));
    h.write_config(&text);
    let relay = h.start();
    let addr = api_addr(&relay);
    let owner = owner_of(ORG_A, "owner-of-a", now_ms() / 1000 + 3600);
    let j = get(&addr, &owner, "/ui/api/session").json();
    assert_eq!(j["store"], "postgres", "{j}");
    let fixture = json!({
        "mode": "banner",
        "base": format!("http://{addr}"),
        "chromium": CHROMIUM,
        "orgA": ORG_A,
        "ownerA": owner,
        "userDataDir": h.dir.path().join("chromium-profile"),
        "downloads": h.dir.path().join("downloads"),
    });
    run_browser(&h, &relay, &fixture);
    relay.terminate();
}

#[test]
fn over_a_long_range_the_histogram_says_it_covers_only_the_newest_100000_events() {
    let (h, mut relay, addr) = viewer_harness(&[]);
    let now = now_ms();
    let mut g = gen::Gen::new(1313);
    let n = 100_500u64;
    let mut f = append_to(&h.log("seed.log"));
    let mut lines = Vec::with_capacity(10_000);
    for i in 0..n {
        // Spread over 89 days, newest first in the file (the order does not matter).
        let ms = now - 3_600_000 - (i as i64 * 89 * 86_400_000) / n as i64;
        lines.push(event_line(
            &g.uuid(),
            ms,
            "startWorkspace",
            ORG_A,
            ACTORS[0],
            i,
        ));
        if lines.len() == 10_000 {
            write_lines(&mut f, &lines);
            lines.clear();
        }
    }
    write_lines(&mut f, &lines);
    h.wait_until(
        Some(&mut relay),
        "the seeded events",
        Duration::from_secs(120),
        || h.count() >= n,
    );
    let fixture = json!({
        "mode": "cap",
        "base": format!("http://{addr}"),
        "chromium": CHROMIUM,
        "orgA": ORG_A,
        "ownerA": owner_of(ORG_A, "owner-of-a", now / 1000 + 3600),
        "userDataDir": h.dir.path().join("chromium-profile"),
        "downloads": h.dir.path().join("downloads"),
    });
    let (stdout, took) = run_browser(&h, &relay, &fixture);
    println!("the 90-day view with {n} events, in the browser: {took:?} in all");
    assert!(stdout.contains("# all passed"), "{stdout}");
    relay.terminate();
}
