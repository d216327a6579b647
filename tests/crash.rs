//! Crash safety: SIGKILL the relay 5 times at random moments while a writer appends
//! 200,000 events to two files, restart it each time, then let it finish. The spool must
//! hold every id exactly once, and no line may even be read twice (checkpoints commit in
//! the same transaction as the events, so `duplicates` stays 0).

mod common;

use common::{assert_exactly_once, gen::Gen, server_lines, write_lines, Harness};
use std::collections::HashSet;
use std::time::{Duration, Instant};

const TOTAL: usize = 200_000;
const FILES: usize = 2;
const CHUNK: usize = 1000;
const KILLS: usize = 5;

#[test]
fn sigkill_five_times_while_ingesting_loses_and_duplicates_nothing() {
    // `durability` is left at its default, "fsync".
    let h = Harness::new();
    // Random moments, reproducible: the seed is printed, and AUDIT_RELAY_TEST_SEED sets it.
    let seed = common::test_seed();
    let mut rng = Gen::new(seed);
    let started = Instant::now();

    let written: HashSet<String> = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut g = Gen::new(seed);
            let mut files: Vec<_> = (0..FILES)
                .map(|i| common::append_to(&h.log(&format!("app-{i}.log"))))
                .collect();
            let mut ids = HashSet::with_capacity(TOTAL);
            for c in 0..TOTAL / CHUNK {
                let (new_ids, lines) = server_lines(&mut g, (c * CHUNK) as i64, CHUNK);
                write_lines(&mut files[c % FILES], &lines);
                ids.extend(new_ids);
                // Half at full speed (the relay has a backlog), the rest spread over
                // a few seconds, so that the kills land mid-stream.
                if c >= TOTAL / CHUNK / 2 {
                    std::thread::sleep(Duration::from_millis(30));
                }
            }
            ids
        });

        let mut mid_stream = 0;
        for k in 0..KILLS {
            let mut relay = h.start();
            let delay = 100 + rng.below(700);
            std::thread::sleep(Duration::from_millis(delay));
            if let Some(status) = relay.try_wait() {
                panic!(
                    "relay run {} exited by itself: {status:?}\n{}",
                    k + 1,
                    relay.log()
                );
            }
            relay.kill();
            let stored = h.count();
            eprintln!("kill {} after {delay} ms: {stored} events stored", k + 1);
            if stored < TOTAL as u64 {
                mid_stream += 1;
            }
        }
        assert!(
            mid_stream >= 3,
            "only {mid_stream} kills landed while events were still coming; the test did not exercise crashes"
        );
        writer.join().expect("writer thread")
    });
    assert_eq!(written.len(), TOTAL);

    let mut relay = h.start();
    h.wait_until(
        Some(&mut relay),
        "all 200,000 events",
        Duration::from_secs(180),
        || h.count() >= TOTAL as u64,
    );
    relay.terminate();
    eprintln!("crash test took {:?}", started.elapsed());

    assert_exactly_once(&h, &written);
    assert_eq!(h.quarantine_rows(), vec![], "nothing is quarantined");
    let stats = h.stats();
    assert_eq!(stats["duplicates"], 0, "no line was read twice: {stats}");
    assert_eq!(stats["events"], TOTAL as u64, "{stats}");
}

/// SIGKILL while the WAL is being copied into `spool.db` (the `spool-wal` thread works
/// past 64 MiB of WAL, the writer finishes each cycle): a backlog of 600,000 events
/// (~450 MB of WAL) ingested at full speed, three kills while the WAL is past 64 MiB,
/// then the rest, during which the WAL must complete a cycle and restart. Every id once,
/// nothing read twice, and `verify` passes.
#[test]
fn sigkill_while_the_wal_is_copied_loses_and_duplicates_nothing() {
    const BACKLOG: usize = 600_000;
    let h = Harness::new();
    let seed = common::test_seed();
    let mut rng = Gen::new(seed);
    let mut g = Gen::new(seed);
    let mut file = common::append_to(&h.log("app.log"));
    let mut written = HashSet::with_capacity(BACKLOG);
    for c in 0..BACKLOG / 10_000 {
        let (ids, lines) = server_lines(&mut g, (c * 10_000) as i64, 10_000);
        write_lines(&mut file, &lines);
        written.extend(ids);
    }
    // Each run is killed 12–250 ms (a random part of the cycle) after both its first
    // commit and the WAL being past 64 MiB, where the copier takes over. A WAL keeps its
    // frames across a crash, so a run that starts with such a WAL is killed while it
    // copies the frames the crash left; one that starts with a restarted WAL is killed
    // once its own ingest took the WAL past 64 MiB. That leaves more than 64 MiB of the
    // backlog for the last run, in which the WAL must complete a cycle. The spool is
    // polled through its `events` counter: a count(*) over the table holds a read
    // transaction long enough, polled every few ms, to keep the WAL from restarting.
    let mut mid_stream = 0;
    for k in 0..3 {
        let before = h.stored();
        let mut relay = h.start();
        let pause = Duration::from_millis(12 + rng.below(238));
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut first_commit, mut past_64) = (None, None);
        loop {
            if let Some(status) = relay.try_wait() {
                panic!(
                    "relay run {} exited by itself: {status:?}\n{}",
                    k + 1,
                    relay.log()
                );
            }
            let now = Instant::now();
            if first_commit.is_none() && h.stored() > before {
                first_commit = Some(now);
            }
            if past_64.is_none() && common::wal_state(&h.spool_dir).0 > 64 << 20 {
                past_64 = Some(now);
            }
            let due = match (first_commit, past_64) {
                (Some(c), Some(w)) => now >= c.max(w) + pause,
                _ => false,
            };
            if due || now >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        relay.kill();
        let (stored, wal) = (h.stored(), common::wal_state(&h.spool_dir).0);
        eprintln!(
            "kill {}: {stored} events stored, WAL file {} MiB",
            k + 1,
            wal >> 20
        );
        if stored < BACKLOG as u64 && past_64.is_some() && first_commit.is_some() {
            mid_stream += 1;
        }
    }
    assert!(
        mid_stream == 3,
        "only {mid_stream} of 3 kills landed mid-backlog with a WAL past 64 MiB: the test did not exercise a crash while the WAL is copied"
    );
    let mut relay = h.start();
    let seq = common::wal_state(&h.spool_dir).1;
    let mut restarted = false;
    h.wait_until(
        Some(&mut relay),
        "the whole backlog",
        Duration::from_secs(180),
        || {
            restarted |= common::wal_state(&h.spool_dir).1 != seq;
            h.stored() >= BACKLOG as u64
        },
    );
    relay.terminate();
    assert!(
        restarted,
        "the WAL left by the crashes was copied and restarted while the rest was stored"
    );
    assert_exactly_once(&h, &written);
    let stats = h.stats();
    assert_eq!(stats["duplicates"], 0, "no line was read twice: {stats}");
    assert_eq!(stats["events"], BACKLOG as u64, "{stats}");
    let report = h.cli_ok(&["verify"]);
    eprintln!("{report}");
}
