//! The InvalidParameter breaker: a stream that CloudWatch refuses every call to as
//! invalid is stopped (nothing more marked rejected, the cursor stays, /readyz fails,
//! one error a minute), probed, and resumes when CloudWatch accepts again.

mod common;

use common::gen::{self, Gen};
use common::moto::{
    assert_only_shutdown_checkpoint_unforwarded, configure, event_ids, forward_state, now_ms,
    rejected_rows, start_relay, wait_all_forwarded, Moto, HOSTNAME,
};
use common::proxy::{Faults, Outcome, Proxy};
use common::{admin_addr, append_to, http_get, write_lines, Harness};
use std::time::Duration;

const GROUP: &str = "/gitpod/audit";
const BREAKER_AFTER: usize = 3;

#[test]
fn a_stream_refusing_everything_is_stopped_then_resumes_without_rejecting_events() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.addr, Faults::default(), 9);
    let h = Harness::new();
    configure(
        &h,
        &proxy.endpoint(),
        GROUP,
        &[
            &format!("invalid_breaker_after = {BREAKER_AFTER}"),
            "invalid_probe_interval = \"500ms\"",
            "[admin]",
            "listen = \"127.0.0.1:0\"",
        ],
    );
    // Every PutLogEvents body names `logEvents`: every call is refused as invalid.
    proxy.set_poison(Some("\"logEvents\""));
    let t0 = now_ms() - 60_000;
    let mut g = Gen::new(77);
    let (ids, lines): (Vec<String>, Vec<String>) = (0..300)
        .map(|i| {
            let s = gen::server_line(&mut g, t0 + i);
            (s.id, s.line)
        })
        .unzip();
    write_lines(&mut append_to(&h.log("server.log")), &lines);
    let mut relay = start_relay(&h);
    let addr = admin_addr(&relay);

    let mut body = String::new();
    h.wait_until(
        Some(&mut relay),
        "/readyz to name the stopped stream",
        Duration::from_secs(60),
        || {
            let (status, b) = http_get(&addr, "/readyz");
            body = b;
            status == 503 && body.contains("refuses every event as invalid")
        },
    );
    // Several probes while stopped: each one a single-event call, refused.
    let probes_before = proxy.calls().len();
    std::thread::sleep(Duration::from_millis(2500));
    let calls = proxy.calls();
    assert!(
        calls.len() >= probes_before + 3,
        "probed every 500 ms: {} calls, then {}",
        probes_before,
        calls.len()
    );
    assert!(
        calls[probes_before..]
            .iter()
            .all(|c| c.events.len() == 1 && c.outcome == Outcome::Invalid),
        "probes are single events, refused"
    );
    let rejected = rejected_rows(&h);
    assert!(
        rejected.len() < BREAKER_AFTER,
        "rejected beyond the breaker's {BREAKER_AFTER}: {rejected:?}"
    );
    let (last, cursor) = forward_state(&h);
    assert!(
        h.stat("unforwarded") as usize >= 300 - rejected.len(),
        "events stay unforwarded: cursor {cursor}, last_seq {last}, {:?}",
        h.stats()
    );
    let metrics = http_get(&addr, "/metrics").1;
    assert!(
        metrics.contains("audit_relay_forward_streams_stopped 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("audit_relay_forward_breaker_trips_total 1"),
        "{metrics}"
    );
    // Logged once (a minute), not once per probe.
    let log = relay.log();
    assert_eq!(
        log.matches("CloudWatch refuses every event of this stream as invalid")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("\"args\""), "no event content in the log");

    // CloudWatch takes events again: the next probe goes through, forwarding resumes.
    proxy.set_poison(None);
    wait_all_forwarded(&h, &mut relay, 300, Duration::from_secs(60));
    let (status, body) = http_get(&addr, "/readyz");
    assert_eq!(status, 200, "{body}");
    assert!(relay.log().contains("forwarding resumes where it stopped"));
    relay.terminate();
    assert_only_shutdown_checkpoint_unforwarded(&h);

    let rejected = rejected_rows(&h);
    let rejected_seqs: Vec<i64> = rejected.iter().map(|r| r.0).collect();
    let seq_of = |i: usize| (i + 1) as i64; // no checkpoint before the 300 events
    let want: Vec<String> = ids
        .iter()
        .enumerate()
        .filter(|(i, _)| !rejected_seqs.contains(&seq_of(*i)))
        .map(|(_, id)| id.clone())
        .collect();
    assert_eq!(
        event_ids(&moto.events(GROUP, HOSTNAME)),
        want,
        "every event not rejected arrives once, in order"
    );
    assert!(rejected.len() < BREAKER_AFTER, "{rejected:?}");
}
