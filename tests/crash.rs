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
    let seed = std::env::var("AUDIT_RELAY_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("AUDIT_RELAY_TEST_SEED={seed}");
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
