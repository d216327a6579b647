//! Retention with a controllable clock: a real spool on disk is filled with events of known
//! ages and checkpoints at known times; the purge (the cut the relay would make at "now")
//! removes old forwarded events, keeps unforwarded ones, records itself, and the chain still
//! verifies — with the library and with the real `audit-relay verify`.

mod common;

use audit_relay::config::{Durability, Envelope};
use audit_relay::event::{decode, Decoded, Event};
use audit_relay::integrity::Signer;
use audit_relay::spool::{
    AppendBatch, ForwardProgress, ProgressInbox, Spool, SpoolWriter, Upkeep, WriterOptions,
};
use audit_relay::verify::{verify_spool, Options};
use common::*;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

const DAY: i64 = 86_400_000;
const PER_DAY: usize = 100;

fn signer() -> Signer {
    Signer::from_key(ed25519_dalek::SigningKey::from_bytes(&[3; 32]))
}

fn events(g: &mut gen::Gen, ts_ms: i64, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            match decode(
                gen::event_json(g, ts_ms + i as i64).line.as_bytes(),
                Envelope::Auto,
            ) {
                Decoded::Event(e) => e,
                other => panic!("not an event: {other:?}"),
            }
        })
        .collect()
}

/// Ten "days" of events, 100 a day, each day closed by a signed checkpoint stamped at the
/// end of that day; the oldest day is `first_age_days` old at `now`.
/// Returns the sequence number of each day's checkpoint row.
fn fill(spool: &mut Spool, now: i64, first_age_days: i64) -> Vec<i64> {
    let mut g = gen::Gen::new(11);
    let s = signer();
    let mut cps = Vec::new();
    for d in 0..10 {
        let day = now - (first_age_days - d) * DAY;
        spool.begin().unwrap();
        spool
            .write(&AppendBatch {
                events: events(&mut g, day, PER_DAY),
                ..Default::default()
            })
            .unwrap();
        spool.write_checkpoint(Some(&s), day + 60_000).unwrap();
        spool.commit().unwrap();
        cps.push(spool.last_seq());
    }
    cps
}

fn forwarded_to(spool: &mut Spool, seq: i64) {
    spool.begin().unwrap();
    spool
        .write_progress(&ForwardProgress {
            cursor_name: "cloudwatch".into(),
            cursor: seq,
            forwarded: 0,
            rejected: vec![],
        })
        .unwrap();
    spool.commit().unwrap();
}

/// Runs the purge the writer would run at `now` to its end, in small steps.
fn purge(spool: &mut Spool, now: i64, retention_days: i64, forwarded: Option<i64>) -> u64 {
    let cutoff = now - retention_days * DAY;
    let Some(target) = spool.purge_target(cutoff, forwarded).unwrap() else {
        return 0;
    };
    let (mut run, mut deleted) = (None, 0);
    loop {
        let step = spool.purge_step(target, 37, cutoff, run).unwrap();
        run = Some(step.run);
        deleted += step.deleted;
        if step.through >= target {
            return deleted;
        }
    }
}

fn verified(spool: &Spool) -> audit_relay::verify::Report {
    let r = verify_spool(
        spool,
        &Options {
            public_key: Some(signer().public_key().into()),
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.ok(), "{r}");
    r
}

fn first_seq(h: &Harness) -> i64 {
    h.db()
        .unwrap()
        .query_row("SELECT min(seq) FROM events", [], |r| r.get(0))
        .unwrap()
}

#[test]
fn old_forwarded_events_go_unforwarded_ones_stay_and_the_chain_still_verifies() {
    let h = Harness::new();
    let now = 1_790_000_000_000;
    let mut spool = Spool::open(&h.spool_dir, Durability::Os, 16 << 20).unwrap();
    // Days 100..=91 old: all past a 90-day retention.
    let cps = fill(&mut spool, now, 100);
    // CloudWatch has everything through day 5 (its checkpoint row included).
    forwarded_to(&mut spool, cps[5]);

    // Not a day older than 100: nothing to purge yet.
    assert_eq!(purge(&mut spool, now - 20 * DAY, 90, Some(cps[5])), 0);

    let deleted = purge(&mut spool, now, 90, Some(cps[5]));
    // Days 0..=5 go, except day 5's checkpoint row: the anchor of the cut.
    assert_eq!(deleted, 6 * (PER_DAY as u64 + 1) - 1);
    assert_eq!(first_seq(&h), cps[5]);
    assert_eq!(
        h.count(),
        4 * PER_DAY as u64,
        "unforwarded events must stay, however old"
    );
    let r = verified(&spool);
    assert_eq!(r.from_seq, cps[5]);
    assert!(r.anchor.contains("purge"), "{r}");
    let rec = spool.purges().unwrap();
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0].deleted, deleted);
    assert_eq!(rec[0].through_seq, cps[5] - 1);
    // The newest deleted event's time is kept (verify --cloudwatch tells purged from added).
    assert_eq!(
        spool.chain_meta().unwrap().purged_max_ts,
        now - 95 * DAY + PER_DAY as i64 - 1
    );

    // Space is reused: the purged pages are free, and new events fill them before the
    // file grows.
    let pages = |what: &str| -> i64 {
        h.db()
            .unwrap()
            .query_row(&format!("PRAGMA {what}"), [], |r| r.get(0))
            .unwrap()
    };
    let (size, free) = (pages("page_count"), pages("freelist_count"));
    assert!(
        free > size / 4,
        "purged pages are not free: {free} of {size}"
    );
    let mut g = gen::Gen::new(12);
    spool
        .append(&AppendBatch {
            events: events(&mut g, now, 4 * PER_DAY),
            ..Default::default()
        })
        .unwrap();
    assert_eq!(
        pages("page_count"),
        size,
        "the file grew although pages were free"
    );
    assert!(pages("freelist_count") < free);
    spool.begin().unwrap();
    spool.write_checkpoint(Some(&signer()), now).unwrap();
    spool.commit().unwrap();

    // Forwarding catches up: the next purge takes the rest but the newest checkpoint.
    forwarded_to(&mut spool, cps[9]);
    purge(&mut spool, now, 90, Some(cps[9]));
    assert_eq!(first_seq(&h), cps[9]);
    // The 400 new events (stamped now) are not forwarded and stay.
    assert_eq!(h.count(), 4 * PER_DAY as u64);
    verified(&spool);
    assert_eq!(spool.purges().unwrap().len(), 2);
    drop(spool);

    // The real binary agrees, with the key from the config.
    let key = h.dir.path().join("signing.pem");
    std::fs::write(&key, ed25519_pem([3; 32])).unwrap();
    let text = std::fs::read_to_string(&h.config).unwrap();
    h.write_config(&format!(
        "{text}\n[integrity]\nsigning_key_file = {:?}\n",
        key.display().to_string()
    ));
    let out = h.cli_ok(&["verify"]);
    assert!(out.trim_end().ends_with("OK"), "{out}");
}

#[test]
fn without_forwarding_age_alone_decides_and_young_events_stay() {
    let h = Harness::new();
    let now = 1_790_000_000_000;
    let mut spool = Spool::open(&h.spool_dir, Durability::Os, 16 << 20).unwrap();
    // Days 14..=5 old, retention 10 days: days 14..=11 old go (4 days).
    let cps = fill(&mut spool, now, 14);
    purge(&mut spool, now, 10, None);
    assert_eq!(first_seq(&h), cps[3]);
    assert_eq!(h.count(), 6 * PER_DAY as u64);
    verified(&spool);

    // Tampering after a purge is still caught: the recorded anchor rewritten.
    drop(spool);
    rusqlite::Connection::open(h.spool_dir.join("spool.db"))
        .unwrap()
        .execute(
            "UPDATE meta SET value = zeroblob(32) WHERE key = 'purge_anchor'",
            [],
        )
        .unwrap();
    let spool = Spool::open_read_only(&h.spool_dir).unwrap();
    let r = verify_spool(
        &spool,
        &Options {
            public_key: Some(signer().public_key().into()),
            ..Default::default()
        },
    )
    .unwrap();
    let b = r.broken.expect("a rewritten purge anchor must not verify");
    assert_eq!(b.kind, "checkpoint_mismatch", "{b:?}");
    assert_eq!(b.seq, cps[3] - 1);
}

#[test]
fn the_writer_purges_between_commits_and_writes_checkpoints() {
    // Retention 0 at the real clock: everything forwarded and checkpointed may go.
    let h = Harness::new();
    let spool = Spool::open(&h.spool_dir, Durability::Os, 16 << 20).unwrap();
    let progress = ProgressInbox::default();
    let upkeep = Upkeep {
        signer: Some(Arc::new(signer())),
        checkpoint_every: 50,
        retention: Duration::ZERO,
        forward_cursors: Some(vec!["cloudwatch".into()]),
        purge_check: Duration::ZERO,
        ..Upkeep::unsigned(90)
    };
    let writer = SpoolWriter::new(
        spool,
        WriterOptions {
            max_events: 1000,
            interval: Duration::from_millis(10),
            max_bytes: u64::MAX,
        },
        upkeep,
        progress.clone(),
        Arc::new(AtomicBool::new(false)),
    );
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    let stop = tokio_util::sync::CancellationToken::new();
    let thread = {
        let stop = stop.clone();
        std::thread::spawn(move || writer.run(rx, stop))
    };
    let mut g = gen::Gen::new(3);
    let now = audit_relay::event::parse_timestamp_ms("2026-01-01T00:00:00Z").unwrap();
    tx.send(AppendBatch {
        events: events(&mut g, now, 120),
        ..Default::default()
    })
    .unwrap();
    // 120 events, a checkpoint after each 50: rows 1..=50, cp 51, 52..=101, cp 102, ...
    h.wait_until(None, "the first commit", DEADLINE, || h.count() == 120);
    progress.push(ForwardProgress {
        cursor_name: "cloudwatch".into(),
        cursor: 102,
        forwarded: 102,
        rejected: vec![],
    });
    h.wait_until(None, "the purge", DEADLINE, || first_seq(&h) == 102);
    // More events keep coming while it purges; none is lost.
    tx.send(AppendBatch {
        events: events(&mut g, now + 1000, 30),
        ..Default::default()
    })
    .unwrap();
    drop(tx);
    stop.cancel();
    thread.join().unwrap().unwrap();
    // Kept: cp 102, events 103..=152 (20 + 30: the 50th since the last checkpoint), cp 153;
    // nothing after it, so no shutdown checkpoint.
    assert_eq!(h.count(), 120 - 100 + 30);
    let spool = Spool::open_read_only(&h.spool_dir).unwrap();
    let r = verified(&spool);
    assert_eq!(r.from_seq, 102);
    assert_eq!(r.checkpoints, 2, "{r}");
    assert_eq!(r.to_seq, 153);
    assert_eq!(r.covered_through, spool.chain_meta().unwrap().last_seq - 1);
    assert_eq!(spool.purges().unwrap()[0].deleted, 101);
}
