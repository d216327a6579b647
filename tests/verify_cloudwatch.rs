//! `audit-relay verify --cloudwatch` against moto: the real relay forwards a signed spool,
//! then CloudWatch (or the spool) is changed from outside the way an intruder would, and
//! the report must name what changed by sequence number and id; the untouched pair
//! verifies.
//!
//! CloudWatch has no call to delete or change one event, so a deletion or a change is
//! made by reading the stream back, deleting it, creating it again and putting back
//! everything but (or all with one change to) the victim.

mod common;

use audit_relay::integrity::Signer;
use common::gen::{self, Gen};
use common::moto::{
    cloudwatch_section, forward_state, now_ms, relay_command, spool_checkpoints, spool_order,
    start_relay, wait_all_forwarded, CwEvent, Moto, HOSTNAME,
};
use common::{append_to, ed25519_pem, rechain, write_lines, Harness, DEADLINE};
use serde_json::{json, Value};

const GROUP: &str = "/gitpod/audit";
/// Events forwarded; no multiple of `checkpoint_every`, so there is a shutdown checkpoint.
const N: usize = 2050;
/// `checkpoint_every`.
const EVERY: usize = 100;
/// Checkpoints: one per 100 events, and the shutdown one for the last 50.
const CHECKPOINTS: usize = N / EVERY + 1;
/// CloudWatch's limits on one PutLogEvents call.
const MAX_BATCH_EVENTS: usize = 10_000;
const MAX_BATCH_BYTES: usize = 1_048_576;
const EVENT_OVERHEAD: usize = 26;

/// A relay installation that forwarded everything to its own moto.
struct Forwarded {
    moto: Moto,
    h: Harness,
    key: std::path::PathBuf,
    /// `meta.last_seq`, which the cursor reached.
    last: i64,
}

/// The config: a signing key, checkpoints every 100 events, a static field (spliced into
/// every message, so the rendering is checked too), and `extra` lines in `[cloudwatch]`.
fn write_config(h: &Harness, moto: &Moto, key: &std::path::Path, extra: &[&str]) {
    let mut cw = vec!["[cloudwatch.static_fields]", "cluster = \"eu-1\""];
    cw.splice(0..0, extra.iter().copied());
    h.write_config(&format!(
        "{}{}\n[integrity]\nsigning_key_file = {:?}\ncheckpoint_every = {EVERY}\n",
        h.config_text(&[], &[]),
        cloudwatch_section(&moto.endpoint(), GROUP, &cw),
        key.display().to_string()
    ));
}

/// Forwards `N` events (a minute ago, 1 ms apart) and every checkpoint: the relay runs
/// until the cursor is at `last_seq` and stops (SIGTERM writes the shutdown checkpoint and
/// forwards it before the relay exits).
fn forwarded(seed: u64) -> Forwarded {
    let moto = Moto::start();
    let h = Harness::new();
    let key = h.dir.path().join("signing.pem");
    std::fs::write(&key, ed25519_pem([7; 32])).unwrap();
    write_config(&h, &moto, &key, &[]);
    let mut g = Gen::new(seed);
    let t0 = now_ms() - 60_000;
    let lines: Vec<String> = (0..N as i64)
        .map(|i| gen::server_line(&mut g, t0 + i).line)
        .collect();
    let mut relay = start_relay(&h);
    write_lines(&mut append_to(&h.log("server.log")), &lines);
    wait_all_forwarded(&h, &mut relay, N as u64, DEADLINE);
    relay.terminate();
    // SIGTERM writes a last checkpoint and lets the caught-up forwarder send it.
    let (last, cursor) = forward_state(&h);
    assert_eq!(
        last, cursor,
        "everything, the shutdown checkpoint too, is forwarded"
    );
    assert_eq!(last, (N + CHECKPOINTS) as i64);
    assert_eq!(spool_checkpoints(&h).len(), CHECKPOINTS);
    Forwarded { moto, h, key, last }
}

/// `audit-relay -c CONFIG ARGS` with the test's AWS settings (as the relay gets them).
fn cli_aws(h: &Harness, args: &[&str]) -> std::process::Output {
    relay_command(h)
        .args(args)
        .output()
        .expect("run audit-relay")
}

/// `audit-relay verify --json ARGS`: (exit code, report).
fn verify(h: &Harness, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["verify", "--json"];
    all.extend_from_slice(args);
    let out = cli_aws(h, &all);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "verify {args:?} printed no JSON ({e}): {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), v)
}

/// `verify --cloudwatch --json`, which must find the spool itself whole.
fn verify_cloudwatch(h: &Harness) -> (i32, Value) {
    let (code, report) = verify(h, &["--cloudwatch"]);
    assert!(
        report["spool"]["broken"].is_null(),
        "the spool itself verifies: {report:#}"
    );
    assert_eq!(
        report["cloudwatch"]["streams"],
        json!([HOSTNAME]),
        "{report:#}"
    );
    (code, report)
}

/// `(seq, id)` of every entry listed under `cloudwatch.<kind>`, after checking that the
/// list holds all `count` of them.
fn listed(report: &Value, kind: &str) -> Vec<(Option<i64>, Option<String>)> {
    let f = &report["cloudwatch"][kind];
    let first = f["first"]
        .as_array()
        .unwrap_or_else(|| panic!("no cloudwatch.{kind}.first: {report:#}"));
    assert_eq!(
        f["count"].as_u64(),
        Some(first.len() as u64),
        "cloudwatch.{kind}: {report:#}"
    );
    first
        .iter()
        .map(|x| (x["seq"].as_i64(), x["id"].as_str().map(str::to_string)))
        .collect()
}

/// Asserts the counters of `verify --cloudwatch` other than the findings.
fn assert_counts(report: &Value, messages: usize, matched: usize) {
    let cw = &report["cloudwatch"];
    assert_eq!(cw["messages"], messages as u64, "{report:#}");
    assert_eq!(cw["matched"], matched as u64, "{report:#}");
    assert_eq!(cw["resent"], 0, "{report:#}");
    assert_eq!(cw["checkpoints"], CHECKPOINTS as u64, "{report:#}");
    assert_eq!(cw["signed_checkpoints"], CHECKPOINTS as u64, "{report:#}");
    assert_eq!(cw["older_than_spool"], 0, "{report:#}");
}

/// The stream read back, after checking it holds every event and checkpoint once.
fn stream(f: &Forwarded) -> Vec<CwEvent> {
    let cw = f.moto.events(GROUP, HOSTNAME);
    assert_eq!(
        cw.len(),
        f.last as usize,
        "every row of the spool is in CloudWatch"
    );
    cw
}

/// The `sequence` of a checkpoint message.
fn sequence(e: &CwEvent) -> i64 {
    e.json()["sequence"].as_i64().expect("checkpoint sequence")
}

/// PutLogEvents `events` (in chronological order) into the stream, in calls within
/// CloudWatch's limits.
fn put_events(moto: &Moto, events: &[CwEvent]) {
    assert!(
        events.windows(2).all(|w| w[0].timestamp <= w[1].timestamp),
        "events to put are not in chronological order"
    );
    let send = |batch: &[CwEvent]| {
        let list: Vec<Value> = batch
            .iter()
            .map(|e| json!({"timestamp": e.timestamp, "message": e.message}))
            .collect();
        let r = moto
            .logs(
                "PutLogEvents",
                &json!({"logGroupName": GROUP, "logStreamName": HOSTNAME, "logEvents": list}),
            )
            .unwrap_or_else(|e| panic!("PutLogEvents: {e:?}"));
        assert!(
            r.get("rejectedLogEventsInfo").is_none_or(Value::is_null),
            "PutLogEvents rejected events: {r}"
        );
    };
    let (mut start, mut bytes) = (0, 0);
    for (i, e) in events.iter().enumerate() {
        let size = e.message.len() + EVENT_OVERHEAD;
        if i > start && (i - start == MAX_BATCH_EVENTS || bytes + size > MAX_BATCH_BYTES) {
            send(&events[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < events.len() {
        send(&events[start..]);
    }
}

/// Replaces the stream's content with `events`: deletes the stream, creates it again and
/// puts them.
fn rewrite_stream(moto: &Moto, events: &[CwEvent]) {
    let stream = json!({"logGroupName": GROUP, "logStreamName": HOSTNAME});
    moto.logs("DeleteLogStream", &stream)
        .unwrap_or_else(|e| panic!("DeleteLogStream: {e:?}"));
    moto.logs("CreateLogStream", &stream)
        .unwrap_or_else(|e| panic!("CreateLogStream: {e:?}"));
    put_events(moto, events);
    assert_eq!(
        moto.events(GROUP, HOSTNAME),
        events,
        "the stream holds what was put back"
    );
}

/// `message` with its `actorId` replaced by `actor` (a plain text edit, so everything
/// else stays byte for byte).
fn with_actor(message: &str, actor: &str) -> String {
    let v: Value = serde_json::from_str(message).expect("event JSON");
    let old = format!(
        "\"actorId\":{}",
        serde_json::to_string(v["actorId"].as_str().expect("actorId")).unwrap()
    );
    assert_eq!(message.matches(&old).count(), 1, "{message}");
    let changed = message.replace(&old, &format!("\"actorId\":{actor:?}"));
    assert_ne!(changed, message);
    changed
}

/// The event at index `k` (0-based, in spool order): `(seq, id)`.
fn event_at(h: &Harness, k: usize) -> (i64, String) {
    let order = spool_order(h);
    assert_eq!(order.len(), N);
    let (seq, id) = order[k].clone();
    // One checkpoint row after every 100 events.
    assert_eq!(seq, (k + k / EVERY + 1) as i64);
    (seq, id)
}

#[test]
fn an_untouched_stream_matches_the_spool() {
    let f = forwarded(31);
    stream(&f);
    let (code, report) = verify_cloudwatch(&f.h);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(
        report["spool"]["signed_checkpoints"], CHECKPOINTS as u64,
        "{report:#}"
    );
    assert_counts(&report, N + CHECKPOINTS, N);
    for kind in ["missing", "added", "altered", "checkpoint_problems"] {
        assert_eq!(listed(&report, kind), vec![], "{kind}: {report:#}");
    }

    // The human form says so too.
    let out = cli_aws(&f.h, &["verify", "--cloudwatch"]);
    let (code, text) = (out.status.code(), String::from_utf8_lossy(&out.stdout));
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains(&format!("{N} events match the spool")),
        "{text}"
    );
    assert!(text.trim_end().ends_with("OK"), "{text}");

    // Without an enabled [cloudwatch] section, --cloudwatch is a usage error.
    write_config(&f.h, &f.moto, &f.key, &["enabled = false"]);
    let out = cli_aws(&f.h, &["verify", "--cloudwatch", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[cloudwatch]"),
        "{out:?}"
    );
}

#[test]
fn an_event_and_a_checkpoint_deleted_in_cloudwatch_are_missing() {
    let f = forwarded(32);
    let cw = stream(&f);
    let (victim_seq, victim_id) = event_at(&f.h, 1234);
    // The 8th checkpoint row (after 800 events: seq 808, covering 807).
    let cp_row = spool_checkpoints(&f.h)[7].seq;
    assert_eq!(cp_row, 808);
    let kept: Vec<CwEvent> = cw
        .iter()
        .filter(|e| {
            if e.is_checkpoint() {
                sequence(e) != cp_row - 1
            } else {
                e.id() != victim_id
            }
        })
        .cloned()
        .collect();
    assert_eq!(kept.len(), cw.len() - 2);
    rewrite_stream(&f.moto, &kept);

    let (code, report) = verify_cloudwatch(&f.h);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["ok"], false, "{report:#}");
    assert_eq!(
        listed(&report, "missing"),
        vec![(Some(cp_row), None), (Some(victim_seq), Some(victim_id))],
        "{report:#}"
    );
    for kind in ["added", "altered", "checkpoint_problems"] {
        assert_eq!(listed(&report, kind), vec![], "{kind}: {report:#}");
    }
    let cwr = &report["cloudwatch"];
    assert_eq!(cwr["messages"], (N + CHECKPOINTS - 2) as u64, "{report:#}");
    assert_eq!(cwr["matched"], (N - 1) as u64, "{report:#}");
    assert_eq!(cwr["checkpoints"], (CHECKPOINTS - 1) as u64, "{report:#}");
    assert_eq!(
        cwr["signed_checkpoints"],
        (CHECKPOINTS - 1) as u64,
        "{report:#}"
    );
}

#[test]
fn an_event_altered_in_cloudwatch_is_named() {
    let f = forwarded(33);
    let mut cw = stream(&f);
    let (victim_seq, victim_id) = event_at(&f.h, 777);
    let e = cw
        .iter_mut()
        .find(|e| !e.is_checkpoint() && e.id() == victim_id)
        .expect("the victim is in CloudWatch");
    e.message = with_actor(&e.message, "mallory");
    rewrite_stream(&f.moto, &cw);

    let (code, report) = verify_cloudwatch(&f.h);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["ok"], false, "{report:#}");
    assert_eq!(
        listed(&report, "altered"),
        vec![(Some(victim_seq), Some(victim_id))],
        "{report:#}"
    );
    for kind in ["missing", "added", "checkpoint_problems"] {
        assert_eq!(listed(&report, kind), vec![], "{kind}: {report:#}");
    }
    assert_counts(&report, N + CHECKPOINTS, N - 1);
}

#[test]
fn an_event_added_to_cloudwatch_is_named() {
    let f = forwarded(34);
    let cw = stream(&f);
    // A well-formed audit event the relay never saw, amid the others' times, and a
    // message that is no audit event at all.
    let ts = cw[1000].timestamp;
    let foreign = gen::event_json(&mut Gen::new(9_999), ts);
    assert!(f.h.body(&foreign.id).is_none());
    put_events(
        &f.moto,
        &[
            CwEvent {
                timestamp: ts,
                message: foreign.line.clone(),
            },
            CwEvent {
                timestamp: ts + 1,
                message: "nothing to see here".into(),
            },
        ],
    );

    let (code, report) = verify_cloudwatch(&f.h);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["ok"], false, "{report:#}");
    // The non-event message first (found while reading), then the foreign event.
    assert_eq!(
        listed(&report, "added"),
        vec![(None, None), (None, Some(foreign.id.clone()))],
        "{report:#}"
    );
    for kind in ["missing", "altered", "checkpoint_problems"] {
        assert_eq!(listed(&report, kind), vec![], "{kind}: {report:#}");
    }
    assert_counts(&report, N + CHECKPOINTS + 2, N);
}

/// A second message for a checkpoint's sequence: an exact re-send is counted, a forged
/// copy (another chain head, put before the real one) is named, whatever the order.
#[test]
fn a_forged_copy_of_a_checkpoint_is_named_and_a_re_send_is_counted() {
    let f = forwarded(35);
    let cw = stream(&f);
    let cps: Vec<&CwEvent> = cw.iter().filter(|e| e.json().get("id").is_none()).collect();
    let (real, resent) = (cps[3], cps[7]);
    let mut forged: Value = real.json();
    forged["chainHead"] = json!("0".repeat(64));
    put_events(
        &f.moto,
        &[
            CwEvent {
                timestamp: real.timestamp - 1,
                message: forged.to_string(),
            },
            CwEvent {
                timestamp: resent.timestamp,
                message: resent.message.clone(),
            },
        ],
    );
    let (code, report) = verify_cloudwatch(&f.h);
    assert_eq!(code, 1, "{report:#}");
    let problems = listed(&report, "checkpoint_problems");
    assert_eq!(problems, vec![(Some(sequence(real)), None)], "{report:#}");
    assert_eq!(report["cloudwatch"]["resent"], 1, "{report:#}");
    for kind in ["missing", "altered", "added"] {
        assert_eq!(listed(&report, kind), vec![], "{kind}: {report:#}");
    }
}

/// The intruder holds the signing key: rewrites one event in the spool, recomputes the
/// chain after it and signs every later checkpoint again. The spool verifies on its own;
/// the checkpoints already in CloudWatch do not match it.
#[test]
fn cloudwatch_anchors_a_spool_rewritten_and_re_signed() {
    let f = forwarded(35);
    stream(&f);
    let (victim_seq, victim_id) = event_at(&f.h, 1500);
    let db = rusqlite::Connection::open(f.h.db_path()).unwrap();
    let body: String = db
        .query_row(
            "SELECT body FROM events WHERE seq = ?1",
            [victim_seq],
            |r| r.get(0),
        )
        .unwrap();
    db.execute(
        "UPDATE events SET actor = 'mallory', body = ?2 WHERE seq = ?1",
        rusqlite::params![victim_seq, with_actor(&body, "mallory")],
    )
    .unwrap();
    // Plain verify sees the change...
    let (code, report) = verify(&f.h, &[]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["spool"]["broken"]["seq"], victim_seq, "{report:#}");
    // ...until the chain is recomputed and the later checkpoints are signed again.
    let resigned = rechain(
        &f.h.spool_dir,
        victim_seq,
        Some(&Signer::load(&f.key).unwrap()),
    );
    drop(db);
    let expected_problems: Vec<i64> = spool_checkpoints(&f.h)
        .iter()
        .filter(|c| c.seq > victim_seq)
        .map(|c| c.seq - 1)
        .collect();
    assert_eq!(
        expected_problems,
        vec![1615, 1716, 1817, 1918, 2019, 2070],
        "the checkpoints after seq {victim_seq} cover these"
    );
    assert_eq!(resigned, expected_problems.len());

    let (code, report) = verify(&f.h, &[]);
    assert_eq!(
        code, 0,
        "the rewritten spool verifies on its own: {report:#}"
    );
    assert_eq!(
        report["spool"]["signed_checkpoints"], CHECKPOINTS as u64,
        "{report:#}"
    );

    let (code, report) = verify_cloudwatch(&f.h);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["ok"], false, "{report:#}");
    assert_eq!(
        listed(&report, "altered"),
        vec![(Some(victim_seq), Some(victim_id))],
        "{report:#}"
    );
    let problems = listed(&report, "checkpoint_problems");
    assert_eq!(
        problems,
        expected_problems
            .iter()
            .map(|s| (Some(*s), None))
            .collect::<Vec<_>>(),
        "{report:#}"
    );
    for p in report["cloudwatch"]["checkpoint_problems"]["first"]
        .as_array()
        .unwrap()
    {
        let d = p["detail"].as_str().unwrap();
        assert!(d.contains("the spool was rewritten"), "{d}");
    }
    for kind in ["missing", "added"] {
        assert_eq!(listed(&report, kind), vec![], "{kind}: {report:#}");
    }
    assert_counts(&report, N + CHECKPOINTS, N - 1);
}

/// The chain hash stored at `seq`.
fn hash_at(db: &rusqlite::Connection, seq: i64) -> Vec<u8> {
    db.query_row("SELECT hash FROM events WHERE seq = ?1", [seq], |r| {
        r.get(0)
    })
    .unwrap()
}

/// Events refused for good used to be excused by a row in `rejected`, which is not part
/// of the chain: an intruder who removes an event from CloudWatch (or whose relay never
/// sent it) adds such a row, and verify --cloudwatch looked away.
#[test]
fn a_rejection_added_outside_the_chain_does_not_excuse_an_event_missing_from_cloudwatch() {
    let f = forwarded(36);
    let cw = stream(&f);
    let (victim_seq, victim_id) = event_at(&f.h, 1001);
    let kept: Vec<CwEvent> = cw
        .iter()
        .filter(|e| e.is_checkpoint() || e.id() != victim_id)
        .cloned()
        .collect();
    rewrite_stream(&f.moto, &kept);
    rusqlite::Connection::open(f.h.db_path())
        .unwrap()
        .execute(
            "INSERT INTO rejected(seq, reason, detail, at_ms) VALUES (?1, 'too_old', 'older than CloudWatch accepts', 0)",
            [victim_seq],
        )
        .unwrap();
    let (code, report) = verify_cloudwatch(&f.h);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        listed(&report, "missing"),
        vec![(Some(victim_seq), Some(victim_id))],
        "{report:#}"
    );
    let detail = report["cloudwatch"]["missing"]["first"][0]["detail"]
        .as_str()
        .unwrap();
    assert!(detail.contains("no forwarding-ledger row"), "{detail}");
    assert_eq!(report["cloudwatch"]["rejected"], 0, "{report:#}");
}

/// An event CloudWatch refuses (too old) is recorded in the chain as a forwarding-ledger
/// row of its own, which the forwarder steps over and verify --cloudwatch trusts.
#[test]
fn a_rejection_recorded_in_the_chain_is_trusted() {
    let moto = Moto::start();
    let h = Harness::new();
    let key = h.dir.path().join("signing.pem");
    std::fs::write(&key, ed25519_pem([7; 32])).unwrap();
    write_config(&h, &moto, &key, &[]);
    let mut g = Gen::new(40);
    let t0 = now_ms() - 60_000;
    let mut lines: Vec<String> = (0..50)
        .map(|i| gen::server_line(&mut g, t0 + i).line)
        .collect();
    let old = gen::server_line(&mut g, now_ms() - 15 * 86_400_000);
    lines.insert(20, old.line);
    let mut relay = start_relay(&h);
    write_lines(&mut append_to(&h.log("server.log")), &lines);
    wait_all_forwarded(&h, &mut relay, 51, DEADLINE);
    relay.terminate();
    let db = h.db().unwrap();
    let (ledger_seq, body): (i64, String) = db
        .query_row(
            "SELECT seq, body FROM events WHERE org = 0 AND action = 'rejected'",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let entry: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(entry["type"], "rejection", "{body}");
    assert_eq!(entry["seq"], 21, "{body}");
    assert_eq!(entry["reason"], "too_old", "{body}");
    let (last, cursor) = forward_state(&h);
    assert!(
        cursor >= ledger_seq,
        "the cursor steps over the ledger row: {cursor} < {ledger_seq}"
    );
    assert_eq!(last, cursor, "everything forwarded or stepped over");
    let cw = moto.events(GROUP, HOSTNAME);
    assert!(
        cw.iter().all(|e| !e.message.contains("\"rejection\"")),
        "ledger rows are not sent"
    );
    let (code, report) = verify_cloudwatch(&h);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["cloudwatch"]["rejected"], 1, "{report:#}");
    assert_eq!(report["cloudwatch"]["matched"], 50, "{report:#}");
    assert_eq!(report["spool"]["ledger_rows"], 1, "{report:#}");
}

/// The oldest rows cut with the bookkeeping set the way retention sets it: the spool's own
/// check names the cut, and CloudWatch (which still holds those events and checkpoints,
/// written minutes ago) does not take them for purged ones either.
#[test]
fn a_cut_of_the_oldest_rows_is_not_taken_for_retention_by_cloudwatch() {
    let f = forwarded(37);
    stream(&f);
    let cps = spool_checkpoints(&f.h);
    let through = cps[3].seq - 1;
    {
        let db = rusqlite::Connection::open(f.h.db_path()).unwrap();
        let anchor = hash_at(&db, through);
        let max_ts: i64 = db
            .query_row(
                "SELECT max(ts_ms) FROM events WHERE seq <= ?1 AND org != 0",
                [through],
                |r| r.get(0),
            )
            .unwrap();
        db.execute("DELETE FROM events WHERE seq <= ?1", [through])
            .unwrap();
        db.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES ('purged_through', ?1), ('purge_anchor', ?2), ('purged_max_ts', ?3)",
            rusqlite::params![through, anchor, max_ts],
        )
        .unwrap();
    }
    let (code, report) = verify(&f.h, &["--cloudwatch"]);
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(
        report["spool"]["broken"]["kind"], "purge_unconfirmed",
        "{report:#}"
    );
    let cwr = &report["cloudwatch"];
    assert_eq!(cwr["older_than_spool"], 0, "{report:#}");
    assert_eq!(cwr["added"]["count"], 400, "the cut events: {report:#}");
    assert!(
        cwr["added"]["first"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("younger than spool.retention_days"),
        "{report:#}"
    );
    // The checkpoints CloudWatch holds for the cut rows (three cut, and the one after the
    // cut, covering its last row) are named too.
    assert_eq!(cwr["checkpoint_problems"]["count"], 4, "{report:#}");
}

/// The newest rows cut, and `meta.last_seq`, `chain_head` and the cursor rewritten to match:
/// the spool alone cannot tell (its newest checkpoint is recent), CloudWatch names the tail.
#[test]
fn a_cut_tail_with_rewritten_bookkeeping_is_named_by_cloudwatch() {
    let f = forwarded(38);
    stream(&f);
    let keep = 1500;
    {
        let db = rusqlite::Connection::open(f.h.db_path()).unwrap();
        db.execute("DELETE FROM events WHERE seq > ?1", [keep])
            .unwrap();
        db.execute("UPDATE meta SET value = ?1 WHERE key = 'last_seq'", [keep])
            .unwrap();
        db.execute(
            "UPDATE meta SET value = ?1 WHERE key = 'chain_head'",
            [hash_at(&db, keep)],
        )
        .unwrap();
        db.execute("UPDATE cursors SET seq = ?1", [keep]).unwrap();
    }
    let (code, report) = verify(&f.h, &["--cloudwatch"]);
    assert_eq!(code, 1, "{report:#}");
    let tail = listed(&report, "missing_tail");
    assert_eq!(tail, vec![(Some(keep + 1), None)], "{report:#}");
    let detail = report["cloudwatch"]["missing_tail"]["first"][0]["detail"]
        .as_str()
        .unwrap();
    assert!(
        detail.contains(&format!("seq {}..={}", keep + 1, f.last - 1)),
        "{detail}"
    );
}

/// An id the producer wrote in uppercase or in braces is stored as its UUID and sent as
/// written: verify --cloudwatch compares ids as UUIDs, so it is neither missing nor added.
#[test]
fn non_canonical_uuids_match_as_uuids() {
    let moto = Moto::start();
    let h = Harness::new();
    let key = h.dir.path().join("signing.pem");
    std::fs::write(&key, ed25519_pem([7; 32])).unwrap();
    write_config(&h, &moto, &key, &[]);
    let mut g = Gen::new(41);
    let t0 = now_ms() - 60_000;
    let lines: Vec<String> = (0..30)
        .map(|i| {
            let s = gen::server_line(&mut g, t0 + i);
            let quoted = format!("\"{}\"", s.id);
            assert_eq!(s.line.matches(&quoted).count(), 1, "{}", s.line);
            match i % 3 {
                0 => s
                    .line
                    .replace(&quoted, &format!("\"{}\"", s.id.to_uppercase())),
                1 => s.line.replace(&quoted, &format!("\"{{{}}}\"", s.id)),
                _ => s.line,
            }
        })
        .collect();
    let mut relay = start_relay(&h);
    write_lines(&mut append_to(&h.log("server.log")), &lines);
    wait_all_forwarded(&h, &mut relay, 30, DEADLINE);
    relay.terminate();
    let (code, report) = verify_cloudwatch(&h);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["cloudwatch"]["matched"], 30, "{report:#}");
    for kind in ["missing", "added", "altered"] {
        assert_eq!(listed(&report, kind), vec![], "{kind}: {report:#}");
    }
}
