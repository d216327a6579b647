//! The admin endpoints over real HTTP: health, readiness, and Prometheus metrics whose
//! counters match what happened.

mod api_common;
mod common;

use common::*;

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

    assert_eq!(http_get(&addr, "/healthz").0, 200);
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!((status, body.trim()), (200, "ready"));
    let (status, body) = http_get(&addr, "/metrics");
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
    assert_eq!(value(&scrape, "audit_relay_events_purged_total", None), 0.0);
    assert_eq!(value(&scrape, "audit_relay_spool_full", None), 0.0);
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

/// The samples of `name` with label `route`, as (status, value).
fn by_status(scrape: &prometheus_parse::Scrape, name: &str, route: &str) -> Vec<(String, f64)> {
    let mut v: Vec<(String, f64)> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == name && s.labels.get("route") == Some(route))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(n) => (s.labels.get("status").unwrap().to_string(), n),
            ref other => panic!("{name}: unexpected {other:?}"),
        })
        .collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

#[test]
fn api_requests_are_counted_by_route_and_status_and_timed() {
    use api_common::{list_json, request, Send, ADMIN_TOKEN, OPS_A_TOKEN, ORG_A, ORG_B};
    let (h, _ec) = api_common::api_harness();
    let mut text = std::fs::read_to_string(&h.config).unwrap();
    text.push_str("\n[admin]\nlisten = \"127.0.0.1:0\"\n");
    h.write_config(&text);
    let relay = h.start();
    let admin = admin_addr(&relay);
    let api = api_common::api_addr(&relay);

    // Before any request: no request counted, every route's histogram empty.
    let scrape = scrape_metrics(&admin);
    assert!(by_status(&scrape, "audit_relay_api_requests_total", "connect_list").is_empty());

    let org_a = serde_json::json!({ "organizationId": ORG_A });
    for _ in 0..3 {
        assert_eq!(list_json(&api, Some(ADMIN_TOKEN), &org_a).status, 200);
    }
    for _ in 0..2 {
        assert_eq!(list_json(&api, None, &org_a).status, 401);
    }
    let org_b = serde_json::json!({ "organizationId": ORG_B });
    assert_eq!(list_json(&api, Some(OPS_A_TOKEN), &org_b).status, 403);
    let bad = serde_json::json!({ "organizationId": "not-a-uuid" });
    assert_eq!(list_json(&api, Some(ADMIN_TOKEN), &bad).status, 400);
    let rest = format!("/v1/organizations/{ORG_A}/audit-logs");
    for _ in 0..2 {
        assert_eq!(api_common::get(&api, ADMIN_TOKEN, &rest).status, 200);
    }
    let zero = format!("{rest}?pageSize=0");
    assert_eq!(api_common::get(&api, ADMIN_TOKEN, &zero).status, 400);
    assert_eq!(api_common::get(&api, "wrong", &rest).status, 401);
    let export = format!("{rest}/export");
    let r = api_common::get(&api, ADMIN_TOKEN, &export);
    assert_eq!(r.status, 200);
    assert_eq!(
        api_common::get(
            &api,
            OPS_A_TOKEN,
            &format!("/v1/organizations/{ORG_B}/audit-logs/export")
        )
        .status,
        403
    );
    assert_eq!(
        api_common::get(&api, ADMIN_TOKEN, "/nothing/here").status,
        404
    );
    let r = request(&api, "GET", api_common::LIST, &[], Send::None);
    assert_eq!(r.status, 405);

    let scrape = scrape_metrics(&admin);
    let s = |v: &[(&str, f64)]| -> Vec<(String, f64)> {
        v.iter().map(|(k, n)| (k.to_string(), *n)).collect()
    };
    let total = "audit_relay_api_requests_total";
    assert_eq!(
        by_status(&scrape, total, "connect_list"),
        s(&[("200", 3.0), ("400", 1.0), ("401", 2.0), ("403", 1.0)])
    );
    assert_eq!(
        by_status(&scrape, total, "rest_list"),
        s(&[("200", 2.0), ("400", 1.0), ("401", 1.0)])
    );
    assert_eq!(
        by_status(&scrape, total, "rest_export"),
        s(&[("200", 1.0), ("403", 1.0)])
    );
    assert_eq!(
        by_status(&scrape, total, "other"),
        s(&[("404", 1.0), ("405", 1.0)])
    );
    let hist = "audit_relay_api_request_duration_seconds";
    for (route, count) in [
        ("connect_list", 7.0),
        ("rest_list", 4.0),
        ("rest_export", 2.0),
        ("other", 2.0),
    ] {
        let h = scrape
            .samples
            .iter()
            .find(|x| x.metric == hist && x.labels.get("route") == Some(route))
            .unwrap_or_else(|| panic!("no histogram for {route}"));
        let prometheus_parse::Value::Histogram(buckets) = &h.value else {
            panic!("{route}: not a histogram: {:?}", h.value)
        };
        let les: Vec<f64> = buckets.iter().map(|b| b.less_than).collect();
        assert_eq!(
            les,
            vec![
                0.001,
                0.0025,
                0.005,
                0.01,
                0.025,
                0.05,
                0.1,
                0.25,
                0.5,
                1.0,
                2.5,
                f64::INFINITY
            ],
            "{route}"
        );
        assert!(
            buckets.windows(2).all(|w| w[0].count <= w[1].count),
            "{route}: buckets are cumulative: {buckets:?}"
        );
        assert_eq!(buckets.last().unwrap().count, count, "{route}: +Inf");
        let count_name = format!("{hist}_count");
        let sum_name = format!("{hist}_sum");
        let one = |name: &str| {
            let x = scrape
                .samples
                .iter()
                .find(|x| x.metric == name && x.labels.get("route") == Some(route))
                .unwrap_or_else(|| panic!("no {name} for {route}"));
            match x.value {
                prometheus_parse::Value::Untyped(v)
                | prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v) => v,
                ref other => panic!("{name}: {other:?}"),
            }
        };
        assert_eq!(one(&count_name), count, "{route}: _count");
        let sum = one(&sum_name);
        assert!(sum > 0.0 && sum < 30.0, "{route}: _sum {sum}");
    }
    relay.terminate();
}

fn scrape_metrics(admin: &str) -> prometheus_parse::Scrape {
    let (status, body) = http_get(admin, "/metrics");
    assert_eq!(status, 200);
    prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string())))
        .expect("Prometheus text")
}
