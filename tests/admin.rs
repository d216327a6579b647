//! The admin endpoints over real HTTP: health, readiness, and Prometheus metrics whose
//! counters match what happened.

mod common;

use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// A plain HTTP/1.1 GET; returns (status, body).
fn get(addr: &str, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to admin");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let status = resp[9..12].parse().expect("status code");
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The address the relay logged for its admin listener.
fn admin_addr(relay: &Relay) -> String {
    let deadline = std::time::Instant::now() + DEADLINE;
    loop {
        let log = relay.log();
        if let Some(i) = log.find("admin endpoints listening") {
            let line = &log[i..log[i..].find('\n').map(|e| i + e).unwrap_or(log.len())];
            let addr = line.split("addr=").nth(1).expect("addr field");
            return addr.split_whitespace().next().unwrap().to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no admin address in log:\n{log}"
        );
        std::thread::sleep(POLL);
    }
}

fn value(scrape: &prometheus_parse::Scrape, name: &str, label: Option<(&str, &str)>) -> f64 {
    let s = scrape
        .samples
        .iter()
        .find(|s| s.metric == name && label.is_none_or(|(k, v)| s.labels.get(k) == Some(v)))
        .unwrap_or_else(|| panic!("no sample {name} {label:?}"));
    match s.value {
        prometheus_parse::Value::Counter(v)
        | prometheus_parse::Value::Gauge(v)
        | prometheus_parse::Value::Untyped(v) => v,
        ref other => panic!("{name}: unexpected {other:?}"),
    }
}

#[test]
fn health_readiness_and_metrics_match_what_happened() {
    let h = Harness::new();
    let mut text = std::fs::read_to_string(&h.config).unwrap();
    text.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    h.write_config(&text);
    let mut g = gen::Gen::new(5);
    let (_ids, lines) = server_lines(&mut g, 0, 250);
    let mut f = append_to(&h.log("a.log"));
    write_lines(&mut f, &lines);
    let noise: Vec<String> = (0..7)
        .map(|i| gen::noise_line(&mut g, BASE_MS + i))
        .collect();
    write_lines(&mut f, &noise);
    write_lines(&mut f, &["{broken".to_string()]);

    let mut relay = h.start();
    let addr = admin_addr(&relay);
    h.wait_events(&mut relay, 250);
    h.wait_quarantined(&mut relay, 1);

    assert_eq!(get(&addr, "/healthz").0, 200);
    let (status, body) = get(&addr, "/readyz");
    assert_eq!((status, body.trim()), (200, "ready"));
    let (status, body) = get(&addr, "/metrics");
    assert_eq!(status, 200);
    let scrape = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text");
    assert_eq!(
        value(&scrape, "audit_relay_events_stored_total", None),
        250.0
    );
    assert_eq!(
        value(&scrape, "audit_relay_records_skipped_total", None),
        7.0
    );
    assert_eq!(
        value(&scrape, "audit_relay_records_quarantined_total", None),
        1.0
    );
    assert_eq!(
        value(&scrape, "audit_relay_records_read_total", None),
        258.0
    );
    assert_eq!(
        value(&scrape, "audit_relay_events_duplicate_total", None),
        0.0
    );
    assert_eq!(value(&scrape, "audit_relay_spool_events", None), 250.0);
    assert!(value(&scrape, "audit_relay_spool_bytes", None) > 0.0);
    // No forwarder configured: everything is waiting, and the lag is the oldest's age.
    assert_eq!(
        value(&scrape, "audit_relay_forward_unforwarded_events", None),
        250.0
    );
    assert!(value(&scrape, "audit_relay_forward_lag_seconds", None) > 0.0);
    assert_eq!(value(&scrape, "audit_relay_ready", None), 1.0);
    relay.terminate();
}
