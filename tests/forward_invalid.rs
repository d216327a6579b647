//! A call CloudWatch refuses as invalid is bisected down to the refused event, which is
//! marked rejected with CloudWatch's message; every other event arrives.

mod common;

use common::gen::{self, Gen};
use common::moto::{
    assert_only_shutdown_checkpoint_unforwarded, configure, event_ids, now_ms, rejected_rows,
    start_relay, wait_all_forwarded, Moto, HOSTNAME,
};
use common::proxy::{Faults, Outcome, Proxy};
use common::{append_to, write_lines, Harness};
use std::time::Duration;

const GROUP: &str = "/gitpod/audit";

#[test]
fn an_invalid_event_is_isolated_by_bisection_and_rejected() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.addr, Faults::default(), 3);
    let h = Harness::new();
    // The events are written before the relay starts, so they travel in one call.
    configure(&h, &proxy.endpoint(), GROUP, &[]);
    let t0 = now_ms() - 60_000;
    let mut g = Gen::new(31);
    let (ids, lines): (Vec<String>, Vec<String>) = (0..400)
        .map(|i| {
            let s = gen::server_line(&mut g, t0 + i);
            (s.id, s.line)
        })
        .unzip();
    let bad = ids[137].clone();
    proxy.set_poison(Some(&bad));
    write_lines(&mut append_to(&h.log("server.log")), &lines);
    let mut relay = start_relay(&h);
    wait_all_forwarded(&h, &mut relay, 400, Duration::from_secs(60));
    relay.terminate();
    assert_only_shutdown_checkpoint_unforwarded(&h);

    let rejected = rejected_rows(&h);
    assert_eq!(
        rejected,
        vec![(138, "invalid".to_string())],
        "the 138th event (seq 138)"
    );
    let detail: String = h
        .db()
        .unwrap()
        .query_row("SELECT detail FROM rejected WHERE seq = 138", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert!(detail.contains("injected by the test proxy"), "{detail}");
    assert_eq!(h.stats()["rejected"], 1);
    assert_eq!(h.count(), 400, "the rejected event stays in the spool");

    let got = event_ids(&moto.events(GROUP, HOSTNAME));
    let want: Vec<String> = ids.iter().filter(|id| **id != bad).cloned().collect();
    assert_eq!(got, want, "every other event once, in order");

    // The refused call was split: some refused calls, the last refused one alone.
    let calls = proxy.calls();
    let refused: Vec<usize> = calls
        .iter()
        .filter(|c| c.outcome == Outcome::Invalid)
        .map(|c| c.events.len())
        .collect();
    assert!(
        refused.len() >= 3,
        "bisection takes several calls: {refused:?}"
    );
    assert_eq!(refused.first(), Some(&400), "{refused:?}");
    assert_eq!(refused.last(), Some(&1), "{refused:?}");
    assert!(
        refused.windows(2).all(|w| w[1] < w[0]),
        "each refused call is smaller: {refused:?}"
    );
}
