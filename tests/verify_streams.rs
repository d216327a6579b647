//! `verify --cloudwatch` after a pod replacement, with the shipped
//! `log_stream = "{namespace}/{pod}"`: the relay runs as pod A, then again as pod B on
//! the same spool (a new stream); verify reads both streams (DescribeLogStreams with
//! the prefix the pods share) and finds everything. Real binary, moto.

mod common;

use common::gen::{self, Gen};
use common::moto::{
    cloudwatch_section, now_ms, relay_command, start_relay, wait_all_forwarded, Moto,
};
use common::{append_to, write_lines, Harness, DEADLINE};
use serde_json::{json, Value};

const GROUP: &str = "/gitpod/audit";

fn verify(h: &Harness, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["verify", "--cloudwatch", "--json"];
    args.extend_from_slice(extra);
    let out = relay_command(h).args(&args).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn verify_reads_the_streams_of_earlier_pods() {
    let moto = Moto::start();
    let h = Harness::new();
    h.write_config(&format!(
        "{}{}",
        h.config_text(&[], &[]),
        cloudwatch_section(&moto.endpoint(), GROUP, &[]).replace(
            "log_stream = \"{hostname}\"",
            "log_stream = \"{namespace}/{pod}\""
        )
    ));
    // A stream of another installation in the same group: not under the prefix.
    moto.logs("CreateLogGroup", &json!({"logGroupName": GROUP}))
        .unwrap();
    moto.logs(
        "CreateLogStream",
        &json!({"logGroupName": GROUP, "logStreamName": "staging/server-x"}),
    )
    .unwrap();
    // The test's children inherit these (one test in this binary: nothing else reads them).
    std::env::set_var("POD_NAMESPACE", "prod");
    let mut g = Gen::new(2);
    let t0 = now_ms() - 60_000;
    let mut lines = |from: i64, n: i64| -> Vec<String> {
        (from..from + n)
            .map(|i| gen::server_line(&mut g, t0 + i).line)
            .collect()
    };
    let log = h.log("server.log");

    std::env::set_var("POD_NAME", "server-a");
    let mut relay = start_relay(&h);
    write_lines(&mut append_to(&log), &lines(0, 300));
    wait_all_forwarded(&h, &mut relay, 300, DEADLINE);
    relay.terminate();

    // The pod is replaced: the same spool, a new pod name, a new stream.
    std::env::set_var("POD_NAME", "server-b");
    let mut relay = start_relay(&h);
    write_lines(&mut append_to(&log), &lines(300, 200));
    wait_all_forwarded(&h, &mut relay, 500, DEADLINE);
    relay.terminate();

    let (code, r) = verify(&h, &[]);
    assert_eq!(code, 0, "{r:#}");
    assert_eq!(
        r["cloudwatch"]["streams"],
        json!(["prod/server-a", "prod/server-b"]),
        "{r:#}"
    );
    assert_eq!(r["cloudwatch"]["matched"], 500, "{r:#}");
    assert_eq!(r["cloudwatch"]["missing"]["count"], 0, "{r:#}");

    // Only the new pod's stream (what verify read before): pod A's events are missing.
    let (code, r) = verify(&h, &["--stream-prefix", "prod/server-b"]);
    assert_eq!(code, 1, "{r:#}");
    assert_eq!(
        r["cloudwatch"]["streams"],
        json!(["prod/server-b"]),
        "{r:#}"
    );
    // Pod A's 300 events (and its shutdown checkpoint).
    let missing = r["cloudwatch"]["missing"]["count"].as_u64().unwrap();
    assert!((300..=301).contains(&missing), "{r:#}");
}
