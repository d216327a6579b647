//! `/metrics` of a running relay (real binary, moto, real HTTP): every labelled counter
//! is there at 0 for its known label values before anything happened, and the figures
//! an operator alerts on (cap, build, process, reading lag, last accepted call, ready,
//! spool full) are there with the values the relay's state gives them.

mod common;

use common::moto::{cloudwatch_section, now_ms, start_relay, wait_all_forwarded, Moto};
use common::*;
use prometheus_parse::{Sample, Scrape, Value};

fn scrape(addr: &str) -> Scrape {
    let (status, body) = http_get(addr, "/metrics");
    assert_eq!(status, 200, "{body}");
    Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("Prometheus text")
}

fn find<'a>(s: &'a Scrape, name: &str, labels: &[(&str, &str)]) -> Option<&'a Sample> {
    s.samples
        .iter()
        .find(|x| x.metric == name && labels.iter().all(|(k, v)| x.labels.get(k) == Some(*v)))
}

fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    let x = find(s, name, labels).unwrap_or_else(|| panic!("no sample {name} {labels:?}"));
    match x.value {
        Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => v,
        ref other => panic!("{name}: unexpected {other:?}"),
    }
}

#[test]
fn every_metric_an_operator_alerts_on_is_there_from_the_start() {
    let moto = Moto::start();
    let h = Harness::with(&[], &["max_bytes = \"64MiB\""]);
    h.write_config(&format!(
        "{}{}\n[integrity]\ncheckpoint_every = 10\n\n[admin]\nlisten = \"127.0.0.1:0\"\n\n[api]\nlisten = \"127.0.0.1:0\"\n",
        h.config_text(&[], &["max_bytes = \"64MiB\""]),
        cloudwatch_section(&moto.endpoint(), "/gitpod/audit", &[]),
    ));
    let mut g = gen::Gen::new(14);
    let t0 = now_ms() - 60_000;
    let lines: Vec<String> = (0..25)
        .map(|i| gen::server_line(&mut g, t0 + i).line)
        .collect();
    let path = h.log("server.log");
    let mut f = append_to(&path);
    write_lines(&mut f, &lines);
    // A line the server has not finished yet: read, not stored.
    let partial = b"{\"component\":\"server\",\"mess";
    std::io::Write::write_all(&mut f, partial).unwrap();
    std::io::Write::flush(&mut f).unwrap();

    let before = now_ms() as f64 / 1000.0;
    let mut relay = start_relay(&h);
    let admin = admin_addr(&relay);
    let api = logged_addr(&relay, "query API listening");

    // Before anything was rejected or answered: the labelled counters are there at 0.
    let s = scrape(&admin);
    for reason in ["too_old", "too_new", "expired", "invalid"] {
        assert_eq!(
            value(
                &s,
                "audit_relay_events_rejected_total",
                &[("reason", reason)]
            ),
            0.0,
            "{reason}"
        );
    }
    for route in ["connect_list", "rest_list", "rest_export", "other"] {
        for class in ["2xx", "3xx", "4xx", "5xx"] {
            assert_eq!(
                value(
                    &s,
                    "audit_relay_api_responses_total",
                    &[("route", route), ("class", class)]
                ),
                0.0,
                "{route} {class}"
            );
        }
    }
    assert_eq!(
        value(&s, "audit_relay_spool_max_bytes", &[]),
        (64 << 20) as f64
    );
    assert_eq!(
        value(
            &s,
            "audit_relay_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );

    wait_all_forwarded(&h, &mut relay, 25, DEADLINE);
    // An unauthenticated call: one 4xx, still no 5xx.
    let (status, _) = http_get(&api, "/v1/organizations/x/audit-logs");
    assert!((400..500).contains(&status), "{status}");
    // The accepted call is noticed within a second.
    let mut s = scrape(&admin);
    let deadline = std::time::Instant::now() + DEADLINE;
    while value(
        &s,
        "audit_relay_forward_last_accepted_timestamp_seconds",
        &[],
    ) == 0.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "no accepted call seen"
        );
        std::thread::sleep(POLL);
        s = scrape(&admin);
    }
    let accepted = value(
        &s,
        "audit_relay_forward_last_accepted_timestamp_seconds",
        &[],
    );
    let now = now_ms() as f64 / 1000.0;
    assert!(
        accepted >= before - 1.0 && accepted <= now + 1.0,
        "{accepted}"
    );
    assert_eq!(
        value(
            &s,
            "audit_relay_api_responses_total",
            &[("route", "other"), ("class", "4xx")]
        ) + value(
            &s,
            "audit_relay_api_responses_total",
            &[("route", "rest_list"), ("class", "4xx")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &s,
            "audit_relay_api_responses_total",
            &[("route", "rest_list"), ("class", "5xx")]
        ),
        0.0
    );

    // The reading lag of the file: exactly the unfinished line.
    let p = path.display().to_string();
    assert_eq!(
        value(&s, "audit_relay_source_lag_bytes", &[("path", &p)]),
        partial.len() as f64
    );
    // The spool's own figures.
    let stored = value(&s, "audit_relay_events_stored_total", &[]);
    let purged = value(&s, "audit_relay_events_purged_total", &[]);
    assert_eq!(stored, 25.0);
    assert_eq!(purged, 0.0);
    assert_eq!(value(&s, "audit_relay_spool_events", &[]), stored - purged);
    assert!(value(&s, "audit_relay_checkpoints_total", &[]) >= 2.0);
    assert_eq!(value(&s, "audit_relay_spool_full", &[]), 0.0);
    assert_eq!(value(&s, "audit_relay_ready", &[]), 1.0);
    assert_eq!(http_get(&admin, "/readyz").0, 200);

    // process_*, from /proc of the relay itself.
    assert!(value(&s, "process_cpu_seconds_total", &[]) > 0.0);
    let rss = value(&s, "process_resident_memory_bytes", &[]);
    assert!(rss > 1e6 && rss < 1e9, "{rss}");
    assert!(value(&s, "process_virtual_memory_bytes", &[]) >= rss);
    let fds = value(&s, "process_open_fds", &[]);
    let real = std::fs::read_dir(format!("/proc/{}/fd", relay.pid()))
        .unwrap()
        .count() as f64;
    assert!((fds - real).abs() <= 5.0, "{fds} vs {real}");
    assert!(value(&s, "process_max_fds", &[]) >= fds);
    let start = value(&s, "process_start_time_seconds", &[]);
    assert!(
        start >= before - 2.0 && start <= now + 1.0,
        "{start} not in [{before}, {now}]"
    );
    relay.terminate();
}

#[test]
fn ready_and_spool_full_follow_readyz() {
    let h = Harness::with(&[], &["max_bytes = \"1MiB\""]);
    let text = h.config_text(&[], &["max_bytes = \"1MiB\""]);
    h.write_config(&format!("{text}\n[admin]\nlisten = \"127.0.0.1:0\"\n"));
    let (_, lines) = server_lines(&mut gen::Gen::new(15), 0, 20_000);
    write_lines(&mut append_to(&h.log("a.log")), &lines);
    let mut relay = h.start();
    let admin = admin_addr(&relay);
    h.wait_until(
        Some(&mut relay),
        "the spool to reach its cap",
        DEADLINE,
        || {
            let (status, body) = http_get(&admin, "/metrics");
            status == 200 && body.contains("\naudit_relay_spool_full 1\n")
        },
    );
    let s = scrape(&admin);
    assert_eq!(value(&s, "audit_relay_spool_full", &[]), 1.0);
    assert_eq!(value(&s, "audit_relay_ready", &[]), 0.0);
    assert_eq!(
        value(&s, "audit_relay_spool_max_bytes", &[]),
        (1 << 20) as f64
    );
    assert_eq!(http_get(&admin, "/readyz").0, 503);
    relay.terminate();
}
