//! The alerting rules (deploy/prometheus/alerts.yaml) against the real tools and the real
//! relay: `promtool check rules` and `promtool test rules` pass; every metric an alert
//! names, with every label value it matches, is one that a running relay's `/metrics`
//! exposes (with `[cloudwatch]` on moto and `[postgres]` on a real PostgreSQL); the
//! verify metrics come from deploy/prometheus/verify-textfile.sh, which the last test runs
//! with the real binary on an intact, a broken and an unreadable spool.
//!
//! promtool comes from Debian's `prometheus` package (`scripts/test` installs it when it
//! is missing); `AUDIT_RELAY_PROMTOOL` names another one.

mod common;

use common::moto::{cloudwatch_section, free_port, start_relay, Moto};
use common::postgres::Postgres;
use common::{gen, http_get, write_lines, Harness, BIN, DEADLINE};
use prometheus_parse::Scrape;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn prometheus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/prometheus")
}

fn promtool() -> PathBuf {
    if let Some(p) = std::env::var_os("AUDIT_RELAY_PROMTOOL").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v promtool"])
        .output()
        .expect("sh");
    let p = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(
        !p.is_empty(),
        "promtool is not installed: install Debian's prometheus package (scripts/test does it) or set AUDIT_RELAY_PROMTOOL"
    );
    PathBuf::from(p)
}

fn run_promtool(args: &[&str]) -> String {
    let out = Command::new(promtool())
        .args(args)
        .current_dir(prometheus_dir())
        .output()
        .expect("run promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// `(alert name, expr)` of every rule, read line by line (alerts.yaml keeps each expr on
/// one line, and says so).
fn alerts() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(prometheus_dir().join("alerts.yaml")).unwrap();
    let mut out = Vec::new();
    let mut name: Option<String> = None;
    for line in text.lines() {
        let t = line.trim();
        if let Some(n) = t.strip_prefix("- alert:") {
            assert!(name.is_none(), "alert {name:?} has no expr");
            name = Some(n.trim().to_string());
        } else if let Some(e) = t.strip_prefix("expr:") {
            let e = e.trim();
            assert!(
                !e.is_empty() && e != "|" && e != ">",
                "keep each expr on one line: {line}"
            );
            out.push((name.take().expect("expr outside an alert"), e.to_string()));
        }
    }
    assert!(name.is_none(), "alert {name:?} has no expr");
    out
}

/// A metric an expr selects, with its label matchers `(label, op, value)`.
#[derive(Debug)]
struct Selector {
    metric: String,
    matchers: Vec<(String, String, String)>,
}

/// The metric selectors of a PromQL expression: identifiers that are not functions,
/// keywords, grouping labels, numbers or durations.
fn selectors(expr: &str) -> Vec<Selector> {
    // Operators, and aggregations (which may be followed by `by (…)` before their `(`).
    const KEYWORDS: [&str; 17] = [
        "and",
        "or",
        "unless",
        "bool",
        "offset",
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "group",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
    ];
    const GROUPING: [&str; 6] = [
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
    ];
    let c: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let skip_ws = |mut j: usize| {
        while j < c.len() && c[j].is_whitespace() {
            j += 1;
        }
        j
    };
    while i < c.len() {
        let ch = c[i];
        if ch == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                i += if c[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if ch == '[' {
            while i < c.len() && c[i] != ']' {
                i += 1;
            }
            i += 1;
        } else if ch.is_ascii_digit() || ch == '.' {
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '.') {
                i += 1;
            }
        } else if ch.is_ascii_alphabetic() || ch == '_' || ch == ':' {
            let start = i;
            while i < c.len() && (c[i].is_ascii_alphanumeric() || c[i] == '_' || c[i] == ':') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let j = skip_ws(i);
            let next = c.get(j).copied();
            if GROUPING.contains(&word.as_str()) {
                if next == Some('(') {
                    while i < c.len() && c[i] != ')' {
                        i += 1;
                    }
                    i += 1;
                }
            } else if next == Some('(') || KEYWORDS.contains(&word.as_str()) {
                // A function or an operator.
            } else {
                let mut matchers = Vec::new();
                if next == Some('{') {
                    let end = (j..c.len()).find(|&k| c[k] == '}').expect("closing brace");
                    let inner: String = c[j + 1..end].iter().collect();
                    for m in inner.split(',').filter(|m| !m.trim().is_empty()) {
                        let op_at = m.find(['=', '!']).expect("matcher op");
                        let label = m[..op_at].trim().to_string();
                        let rest = &m[op_at..];
                        let op_len = if rest.starts_with("=~")
                            || rest.starts_with("!=")
                            || rest.starts_with("!~")
                        {
                            2
                        } else {
                            1
                        };
                        let value = rest[op_len..].trim().trim_matches('"').to_string();
                        matchers.push((label, rest[..op_len].to_string(), value));
                    }
                    i = end + 1;
                }
                out.push(Selector {
                    metric: word,
                    matchers,
                });
            }
        } else {
            i += 1;
        }
    }
    out
}

#[test]
fn the_selector_reader_finds_metrics_and_not_functions() {
    let s = selectors(
        r#"increase(audit_relay_forward_failures_total{kind=~"credentials|permission"}[10m]) > 0 and on (instance) sum by (job) (rate(x_total[5m])) or time() - y_seconds > 2 * 86400"#,
    );
    let names: Vec<&str> = s.iter().map(|x| x.metric.as_str()).collect();
    assert_eq!(
        names,
        ["audit_relay_forward_failures_total", "x_total", "y_seconds"]
    );
    assert_eq!(
        s[0].matchers,
        [(
            "kind".to_string(),
            "=~".to_string(),
            "credentials|permission".to_string()
        )]
    );
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let check = run_promtool(&["check", "rules", "alerts.yaml"]);
    let n = alerts().len();
    assert!(
        check.contains(&format!("SUCCESS: {n} rules found")),
        "promtool did not find the {n} alerts this test reads:\n{check}"
    );
    let test = run_promtool(&["test", "rules", "alerts_test.yaml"]);
    assert!(test.contains("SUCCESS"), "{test}");
    // Every alert has a case that fires in the unit tests.
    let cases = std::fs::read_to_string(prometheus_dir().join("alerts_test.yaml")).unwrap();
    for (name, _) in alerts() {
        let firing = cases
            .split("alertname: ")
            .skip(1)
            .any(|c| c.starts_with(&format!("{name}\n")) && c.contains("exp_labels"));
        assert!(firing, "alerts_test.yaml has no firing case for {name}");
    }
}

/// Metrics alerts.yaml names that the relay's /metrics does not expose, and where they
/// come from.
const FROM_ELSEWHERE: [(&str, &str); 4] = [
    ("up", "Prometheus, for each target"),
    (
        "audit_relay_verify_result",
        "deploy/prometheus/verify-textfile.sh",
    ),
    (
        "audit_relay_verify_last_run_timestamp_seconds",
        "deploy/prometheus/verify-textfile.sh",
    ),
    ("kube_job_status_failed", "kube-state-metrics"),
];

fn scrape(addr: &str) -> Option<Scrape> {
    let (status, body) = http_get(addr, "/metrics");
    if status != 200 {
        return None;
    }
    Some(Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text"))
}

/// Metric name -> label -> values seen, with a histogram's series under its own name.
fn exposed(s: &Scrape) -> BTreeMap<String, BTreeMap<String, BTreeSet<String>>> {
    let mut out: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    for x in &s.samples {
        let labels = out.entry(x.metric.clone()).or_default();
        for (k, v) in x.labels.iter() {
            labels.entry(k.clone()).or_default().insert(v.clone());
        }
    }
    out
}

#[test]
fn every_metric_an_alert_names_is_one_a_running_relay_exposes() {
    let moto = Moto::start();
    let pg = Postgres::start();
    let h = Harness::new();
    let admin = free_port();
    let text = h.config_text(&[], &[])
        + &cloudwatch_section(&moto.endpoint(), "/audit/alerts", &[])
        + &pg.config_section("pod-a", &["retention_days = 36500"])
        + &format!("\n[admin]\nlisten = \"127.0.0.1:{admin}\"\n");
    h.write_config(&text);
    let mut r = start_relay(&h);
    let mut g = gen::Gen::new(12);
    let t0 = common::moto::now_ms() - common::BASE_MS - 60_000;
    let (_, lines) = common::server_lines(&mut g, t0, 20);
    write_lines(&mut common::append_to(&h.log("server.log")), &lines);
    h.wait_events(&mut r, 20);

    let addr = format!("127.0.0.1:{admin}");
    // The forwarders' and the shipper's metrics appear once they run.
    let start = Instant::now();
    let metrics = loop {
        let m = scrape(&addr).map(|s| exposed(&s)).unwrap_or_default();
        if m.contains_key("audit_relay_forward_failures_total")
            && m.contains_key("audit_relay_postgres_errors_total")
        {
            break m;
        }
        assert!(
            start.elapsed() < DEADLINE,
            "no forwarder or shipper metrics; scraped {:?}\n--- relay log ---\n{}",
            m.keys().collect::<Vec<_>>(),
            r.log()
        );
        assert!(r.try_wait().is_none(), "relay exited:\n{}", r.log());
        std::thread::sleep(Duration::from_millis(200));
    };

    let mut named = BTreeSet::new();
    let mut problems = Vec::new();
    for (alert, expr) in alerts() {
        let sel = selectors(&expr);
        assert!(!sel.is_empty(), "{alert}: no metric found in {expr}");
        for s in sel {
            named.insert(s.metric.clone());
            if FROM_ELSEWHERE.iter().any(|(m, _)| *m == s.metric) {
                continue;
            }
            let Some(labels) = metrics.get(&s.metric) else {
                problems.push(format!("{alert}: {} is not on /metrics", s.metric));
                continue;
            };
            for (label, op, value) in &s.matchers {
                if label == "job" || label == "instance" {
                    continue; // Prometheus's own target labels
                }
                let seen = labels.get(label).cloned().unwrap_or_default();
                // Each value an `=` or `=~` (a list of alternatives) matches is exposed.
                let wanted: Vec<&str> = match op.as_str() {
                    "=" => vec![value.as_str()],
                    "=~" => value.split('|').collect(),
                    _ => vec![],
                };
                for w in wanted {
                    if !seen.contains(w) {
                        problems.push(format!(
                            "{alert}: {}{{{label}=\"{w}\"}} is not on /metrics (values: {seen:?})",
                            s.metric
                        ));
                    }
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    // The figures the issue asks alerts for are all among them.
    for m in [
        "audit_relay_forward_lag_seconds",
        "audit_relay_postgres_lag_seconds",
        "audit_relay_records_quarantined_total",
        "audit_relay_events_rejected_total",
        "audit_relay_spool_bytes",
        "audit_relay_spool_max_bytes",
        "audit_relay_ready",
        "audit_relay_forward_failures_total",
        "audit_relay_postgres_errors_total",
        "audit_relay_verify_result",
        "audit_relay_checkpoints_total",
    ] {
        assert!(named.contains(m), "no alert on {m}");
    }
    // Everything listed as coming from elsewhere is really used.
    for (m, from) in FROM_ELSEWHERE {
        assert!(
            named.contains(m),
            "{m} ({from}) is listed but no alert uses it"
        );
    }
    r.terminate();
}

/// Runs verify-textfile.sh with the real binary; returns (exit code, metrics written).
fn verify_textfile(h: &Harness, out: &Path) -> (i32, BTreeMap<String, f64>) {
    let script = prometheus_dir().join("verify-textfile.sh");
    let o = Command::new("sh")
        .arg(&script)
        .arg(out)
        .arg("-c")
        .arg(&h.config)
        .env("AUDIT_RELAY", BIN)
        .env_remove("AUDIT_RELAY_CONFIG")
        .output()
        .expect("run verify-textfile.sh");
    let text = std::fs::read_to_string(out).expect("textfile written");
    let s = Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text");
    let values = s
        .samples
        .iter()
        .map(|x| {
            let v = match x.value {
                prometheus_parse::Value::Gauge(v) => v,
                ref other => panic!("{}: not a gauge: {other:?}", x.metric),
            };
            (x.metric.clone(), v)
        })
        .collect();
    // No temporary file left beside it.
    let left: Vec<_> = std::fs::read_dir(out.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    (o.status.code().expect("exit code"), values)
}

#[test]
fn verify_textfile_reports_intact_broken_and_unreadable() {
    let h = Harness::new();
    let mut g = gen::Gen::new(3);
    let (_, lines) = common::server_lines(&mut g, 0, 50);
    write_lines(&mut common::append_to(&h.log("server.log")), &lines);
    let mut r = h.start();
    h.wait_events(&mut r, 50);
    r.terminate();
    let out_dir = tempfile::tempdir().unwrap();
    let out = out_dir.path().join("audit_relay_verify.prom");

    let before = common::moto::now_ms() as f64 / 1000.0;
    let (code, m) = verify_textfile(&h, &out);
    assert_eq!(code, 0, "{m:?}");
    assert_eq!(m["audit_relay_verify_result"], 0.0);
    let ran = m["audit_relay_verify_last_run_timestamp_seconds"];
    assert!(ran >= before.floor() && ran <= before + 60.0, "{ran}");
    assert!(m.contains_key("audit_relay_verify_duration_seconds"));

    // An event changed in the spool: the chain is broken.
    rusqlite::Connection::open(h.db_path())
        .unwrap()
        .execute(
            "UPDATE events SET actor = 'mallory' WHERE seq = (SELECT min(seq) + 10 FROM events)",
            [],
        )
        .unwrap();
    let (code, m) = verify_textfile(&h, &out);
    assert_eq!(code, 1);
    assert_eq!(m["audit_relay_verify_result"], 1.0);

    // The spool gone: verify cannot check (exit 1 as well, but no report).
    std::fs::remove_dir_all(&h.spool_dir).unwrap();
    let (code, m) = verify_textfile(&h, &out);
    assert_ne!(code, 0);
    assert_eq!(m["audit_relay_verify_result"], 2.0);

    // A config that does not load: exit 2, could not check.
    std::fs::write(&h.config, "[spool]\nno_such_key = 1\n").unwrap();
    let (code, m) = verify_textfile(&h, &out);
    assert_eq!(code, 2);
    assert_eq!(m["audit_relay_verify_result"], 2.0);
}

#[test]
fn every_alert_has_its_runbook_entry_and_the_runbook_links_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let ops = std::fs::read_to_string(root.join("docs/operations.md")).unwrap();
    let mut in_code = false;
    let mut anchors = BTreeSet::new();
    for line in ops.lines() {
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            anchors.insert(common::github_anchor(line.trim_start_matches('#')));
        }
    }
    let rules = std::fs::read_to_string(prometheus_dir().join("alerts.yaml")).unwrap();
    let runbooks: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("runbook: "))
        .map(|r| r.trim_matches('"'))
        .collect();
    assert_eq!(runbooks.len(), alerts().len(), "one runbook link per alert");
    for ((name, _), link) in alerts().iter().zip(&runbooks) {
        assert_eq!(
            *link,
            format!("docs/operations.md#alert-{}", name.to_lowercase()),
            "{name}"
        );
        let a = link.split_once('#').unwrap().1;
        assert!(
            anchors.contains(a),
            "{name}: no heading for #{a} in docs/operations.md"
        );
    }
    // Every in-page link of the runbook leads to a heading.
    let mut dead = Vec::new();
    for part in ops.split("](#").skip(1) {
        let a = &part[..part.find(')').unwrap()];
        if !anchors.contains(a) {
            dead.push(a.to_string());
        }
    }
    assert!(
        dead.is_empty(),
        "dead anchors in docs/operations.md: {dead:?}"
    );
    // And the files it links to exist.
    for part in ops.split("](../").skip(1) {
        let target = &part[..part.find([')', '#']).unwrap()];
        assert!(
            root.join(target).exists(),
            "docs/operations.md links to missing {target}"
        );
    }
}
