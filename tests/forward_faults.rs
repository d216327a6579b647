//! Forwarding under faults: the real binary, a real moto server, and a fault-injecting
//! proxy between them (throttling, 500s, answers lost after moto stored the call, an
//! outage, permission errors), with SIGKILLs of the relay. Every PutLogEvents request
//! is recorded and checked against CloudWatch's rules; every duplicate in CloudWatch
//! must be explained by a lost answer or a kill.

mod common;

use common::gen::{self, Gen};
use common::moto::{
    assert_checkpoints_forwarded, assert_only_shutdown_checkpoint_unforwarded,
    assert_same_sequence, configure, event_ids, forward_state, spool_checkpoints, spool_order,
    start_relay, wait_all_forwarded, Moto, HOSTNAME,
};
use common::proxy::{
    assert_cloudwatch_rules, assert_retries_identical, checkpoint_key, message_key, Faults, Mode,
    Outcome, Proxy,
};
use common::{append_to, write_lines, Harness};
use std::collections::HashMap;
use std::time::{Duration, Instant};

const GROUP: &str = "/gitpod/audit";

/// `n` server-log lines, event `i` stamped `t0 + i / tie` ms; returns (ids, lines).
fn lines(g: &mut Gen, t0: i64, first: usize, n: usize, tie: usize) -> (Vec<String>, Vec<String>) {
    (first..first + n)
        .map(|i| {
            let s = gen::server_line(g, t0 + (i / tie) as i64);
            (s.id, s.line)
        })
        .unzip()
}

#[test]
fn throttling_errors_lost_answers_and_sigkills_lose_nothing() {
    const TOTAL: usize = 20_000;
    const CHUNK: usize = 250;
    const KILLS: usize = 3;
    let started = Instant::now();
    let seed = common::test_seed();
    let mut rng = Gen::new(seed);
    let moto = Moto::start();
    // Per 50 requests: 5 throttled (10%), 5 answered 500 (10%), 1 answer lost (2%).
    let faults = Faults {
        throttle: 5,
        server_error: 5,
        drop_answer: 1,
    };
    let proxy = Proxy::start(moto.addr, faults, seed);
    let h = Harness::new();
    configure(&h, &proxy.endpoint(), GROUP, &[]);
    let t0 = common::moto::now_ms() - 120_000;

    // The cursor each killed run left behind, and when it was killed, by epoch.
    let mut cursor_at_kill: Vec<i64> = Vec::new();
    let mut killed_at: Vec<Instant> = Vec::new();
    let written: Vec<String> = std::thread::scope(|s| {
        let writer = s.spawn(|| {
            let mut g = Gen::new(seed ^ 0x5eed);
            let mut f = append_to(&h.log("server.log"));
            let mut ids = Vec::with_capacity(TOTAL);
            for c in 0..TOTAL / CHUNK {
                // Runs of 1,000 equal timestamps: they span several calls.
                let (new_ids, ls) = lines(&mut g, t0, c * CHUNK, CHUNK, 1000);
                write_lines(&mut f, &ls);
                ids.extend(new_ids);
                std::thread::sleep(Duration::from_millis(80));
            }
            ids
        });
        for k in 0..KILLS {
            let mut relay = start_relay(&h);
            let delay = 1000 + rng.below(1500);
            std::thread::sleep(Duration::from_millis(delay));
            if let Some(status) = relay.try_wait() {
                panic!("relay run {} exited: {status:?}\n{}", k + 1, relay.log());
            }
            killed_at.push(Instant::now());
            relay.kill();
            let (last, fwd) = forward_state(&h);
            eprintln!(
                "kill {} after {delay} ms: last_seq {last}, forwarded {fwd}",
                k + 1
            );
            cursor_at_kill.push(fwd);
            proxy.next_epoch();
        }
        writer.join().expect("writer thread")
    });

    let mut relay = start_relay(&h);
    wait_all_forwarded(&h, &mut relay, TOTAL as u64, Duration::from_secs(120));
    relay.terminate();

    // Every event forwarded; past the cursor at most the shutdown checkpoint.
    let (last, final_cursor) = assert_only_shutdown_checkpoint_unforwarded(&h);
    let checkpoints = spool_checkpoints(&h);
    let stats = h.stats();
    assert_eq!(stats["events"], TOTAL as u64, "{stats}");
    assert_eq!(
        last,
        (TOTAL + checkpoints.len()) as i64,
        "sequence numbers are the events' and the checkpoints': {stats}"
    );
    assert_eq!(stats["rejected"], 0, "{stats}");
    let order = spool_order(&h);
    let spool_ids: Vec<String> = order.iter().map(|(_, id)| id.clone()).collect();
    assert_eq!(spool_ids, written);
    // Every message's key (event id, or checkpoint@covered sequence) and its row.
    let mut seq_of: HashMap<String, i64> = order.iter().map(|(s, id)| (id.clone(), *s)).collect();
    for c in &checkpoints {
        seq_of.insert(checkpoint_key(c.seq - 1), c.seq);
    }
    // Events forwarded when each kill landed (the cursor also counts checkpoints).
    let events_at_kill: Vec<usize> = cursor_at_kill
        .iter()
        .map(|c| order.iter().filter(|(s, _)| s <= c).count())
        .collect();
    let mid_stream = events_at_kill.iter().filter(|n| **n < TOTAL).count();
    assert!(
        mid_stream >= 2,
        "only {mid_stream} kills landed while forwarding was behind: events forwarded at each kill {events_at_kill:?}"
    );

    let calls = proxy.calls();
    assert_cloudwatch_rules(&calls);
    assert_retries_identical(&calls);
    let count = |f: &dyn Fn(&Outcome) -> bool| calls.iter().filter(|c| f(&c.outcome)).count();
    let throttled = count(&|o| *o == Outcome::Throttled);
    let errors = count(&|o| *o == Outcome::ServerError);
    let dropped = count(&|o| *o == Outcome::Dropped(200));
    eprintln!(
        "{} PutLogEvents requests: {throttled} throttled, {errors} answered 500, {dropped} answers lost",
        calls.len()
    );
    assert!(
        throttled > 0 && errors > 0 && dropped > 0,
        "the proxy did not inject every fault"
    );

    // Every id present; the first occurrence of each id in spool order.
    let cw_all = moto.events(GROUP, HOSTNAME);
    let cw: Vec<String> = cw_all.iter().map(|e| message_key(&e.message)).collect();
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut first = Vec::with_capacity(TOTAL);
    let mut first_checkpoints = Vec::new();
    for (key, e) in cw.iter().zip(&cw_all) {
        let n = seen.entry(key.as_str()).or_default();
        if *n == 0 {
            if e.is_checkpoint() {
                first_checkpoints.push(e.clone());
            } else {
                first.push(key.clone());
            }
        }
        *n += 1;
    }
    assert_same_sequence(&first, &spool_ids, "first occurrences in CloudWatch");
    // Likewise every forwarded checkpoint, in sequence order, as stored.
    let cw_checkpoints = assert_checkpoints_forwarded(
        &h,
        &first_checkpoints,
        final_cursor,
        &[],
        "first occurrences of checkpoints in CloudWatch",
    );
    eprintln!(
        "{} checkpoints in the spool, {cw_checkpoints} forwarded",
        checkpoints.len()
    );

    // Where each id was stored: (call, epoch, outcome), in order.
    let mut stored: HashMap<String, Vec<(usize, u32, Outcome)>> = HashMap::new();
    for c in calls.iter().filter(|c| c.outcome.stored()) {
        for (_, m) in &c.events {
            stored
                .entry(message_key(m))
                .or_default()
                .push((c.n, c.epoch, c.outcome));
        }
    }
    let answered_before_kill = |n: usize| -> Duration {
        let e = calls[n].epoch as usize;
        killed_at[e].saturating_duration_since(calls[n].decided.expect("decided"))
    };
    // The proxy's record agrees with moto.
    for (id, n) in &seen {
        let s = stored.get(*id).map_or(0, Vec::len);
        assert_eq!(s, *n, "{id}: {n} in CloudWatch, {s} stored calls recorded");
    }
    for (e, cursor) in cursor_at_kill.iter().enumerate() {
        let uncommitted = calls
            .iter()
            .filter(|c| c.epoch as usize == e && c.outcome.stored())
            .flat_map(|c| &c.events)
            .map(|(_, m)| message_key(m))
            .filter(|id| seq_of[id.as_str()] > *cursor)
            .collect::<std::collections::HashSet<_>>()
            .len();
        eprintln!(
            "kill {}: {uncommitted} messages stored past the saved cursor {cursor}",
            e + 1
        );
    }
    let lost: usize = calls
        .iter()
        .filter(|c| matches!(c.outcome, Outcome::Dropped(_)))
        .map(|c| c.events.len())
        .sum();
    eprintln!("{lost} messages in calls whose answer was lost");
    // Each extra copy is explained: its call's answer was lost, or the relay was killed
    // before it saved the cursor past it (and only then re-sent after the restart). The
    // cursor is saved within a group commit (tens of ms) of the answer, so such a call
    // was answered at most a second before the kill.
    let mut unexplained = Vec::new();
    let mut duplicate_ids = 0;
    for (id, occ) in &stored {
        if occ.len() > 1 {
            duplicate_ids += 1;
        }
        for w in occ.windows(2) {
            let (n, epoch, outcome) = w[0];
            let lost_answer = matches!(outcome, Outcome::Dropped(_));
            let in_flight_at_kill = (epoch as usize) < KILLS
                && seq_of[id.as_str()] > cursor_at_kill[epoch as usize]
                && w[1].1 > epoch
                && answered_before_kill(n) < Duration::from_secs(1);
            if !lost_answer && !in_flight_at_kill {
                unexplained.push(format!(
                    "{id} (seq {}): stored by call {n} (epoch {epoch}, {outcome:?}), again by call {} (epoch {})",
                    seq_of[id.as_str()],
                    w[1].0,
                    w[1].1
                ));
            }
        }
    }
    eprintln!(
        "{} messages in CloudWatch, {duplicate_ids} ids more than once; test took {:?}",
        cw.len(),
        started.elapsed()
    );
    assert!(
        unexplained.is_empty(),
        "{} unexplained duplicates, e.g.:\n{}",
        unexplained.len(),
        unexplained[..unexplained.len().min(10)].join("\n")
    );
    // A lost answer is retried, so its events arrive twice, unless the relay was killed
    // before the retry: then the next start finds them in the stream's newest page and
    // rightly does not send them again. So only a call whose answer was lost well before
    // the next kill (or in the last run, which is not killed) must have been re-sent.
    let retried_for_sure = calls.iter().filter(|c| {
        matches!(c.outcome, Outcome::Dropped(_))
            && ((c.epoch as usize) >= KILLS || answered_before_kill(c.n) > Duration::from_secs(5))
    });
    let must_repeat = retried_for_sure.count();
    eprintln!("{must_repeat} lost answers with time to be retried before a kill");
    assert!(
        must_repeat == 0 || duplicate_ids > 0,
        "{must_repeat} answers were lost after moto stored the call, with time to retry before any kill, yet no event arrived twice: the retry did not happen"
    );
}

#[test]
fn emulator_outage_keeps_ingesting_and_drains_the_backlog() {
    // 20 s rather than 60: with backoff_max = 1s the relay reaches its steady retry state
    // after about 2 s of outage, so a longer outage only repeats the same failing call.
    const OUTAGE: Duration = Duration::from_secs(20);
    let moto = Moto::start();
    let proxy = Proxy::start(moto.addr, Faults::default(), 5);
    let h = Harness::new();
    configure(&h, &proxy.endpoint(), GROUP, &[]);
    let mut relay = start_relay(&h);
    let t0 = common::moto::now_ms() - 120_000;
    let mut g = Gen::new(15);
    let mut f = append_to(&h.log("server.log"));

    let (mut written, ls) = lines(&mut g, t0, 0, 1000, 200);
    write_lines(&mut f, &ls);
    // Nothing adds a row until more events come (no checkpoint is due: 1,000 events and
    // far less than checkpoint_interval), so the cursor stays here.
    let (_, before) = wait_all_forwarded(&h, &mut relay, 1000, Duration::from_secs(30));

    proxy.set_mode(Mode::Down);
    let down = Instant::now();
    let mut n = 1000;
    while down.elapsed() < OUTAGE {
        let (ids, ls) = lines(&mut g, t0, n, 250, 200);
        write_lines(&mut f, &ls);
        written.extend(ids);
        n += 250;
        std::thread::sleep(Duration::from_millis(500));
    }
    h.wait_until(
        Some(&mut relay),
        "ingest during the outage",
        Duration::from_secs(30),
        || h.count() >= n as u64,
    );
    let (last, fwd) = forward_state(&h);
    let order = spool_order(&h);
    assert_eq!(order.len(), n, "ingest went on during the outage");
    assert!(
        last >= n as i64,
        "last_seq {last} below the {n} events stored"
    );
    assert_eq!(fwd, before, "nothing can be forwarded during the outage");
    assert_eq!(
        order.iter().filter(|(s, _)| *s > fwd).count(),
        n - 1000,
        "every event written during the outage waits past the cursor"
    );
    let stats = h.stats();
    assert_eq!(stats["unforwarded"], (last - before) as u64, "{stats}");
    assert!(
        proxy.refused() >= 5,
        "the relay kept trying during the outage ({} connections refused)",
        proxy.refused()
    );

    let back = proxy.next_epoch();
    proxy.set_mode(Mode::Normal);
    let up = Instant::now();
    wait_all_forwarded(&h, &mut relay, n as u64, Duration::from_secs(60));
    let drained = up.elapsed();
    relay.terminate();
    eprintln!("{n} events; {} backlog drained in {drained:?}", n - 1000);

    let (_, cursor) = assert_only_shutdown_checkpoint_unforwarded(&h);
    let stats = h.stats();
    assert_eq!(stats["events"], n as u64, "{stats}");
    assert_eq!(stats["rejected"], 0, "{stats}");
    // No answer was lost, so every event arrives exactly once, in order; and so does every
    // checkpoint forwarded.
    let cw = moto.events(GROUP, HOSTNAME);
    assert_same_sequence(&event_ids(&cw), &written, "after the outage");
    assert_checkpoints_forwarded(&h, &cw, cursor, &[], "after the outage");
    let calls = proxy.calls();
    assert_cloudwatch_rules(&calls);
    // The backlog drains in full calls, oldest first.
    let after: Vec<usize> = calls
        .iter()
        .filter(|c| c.epoch == back)
        .map(|c| c.events.len())
        .collect();
    let backlog = n - 1000;
    assert!(
        after.len() <= 2 + backlog / 1000 && after.iter().any(|&k| k > 1000),
        "backlog of {backlog} events drained in small calls: {after:?}"
    );
}

#[test]
fn permission_errors_keep_events_in_the_spool() {
    let moto = Moto::start();
    let proxy = Proxy::start(moto.addr, Faults::default(), 6);
    let h = Harness::new();
    configure(&h, &proxy.endpoint(), GROUP, &[]);
    let mut relay = start_relay(&h);
    let t0 = common::moto::now_ms() - 120_000;
    let mut g = Gen::new(16);
    let mut f = append_to(&h.log("server.log"));

    let (mut written, ls) = lines(&mut g, t0, 0, 200, 50);
    write_lines(&mut f, &ls);
    // No checkpoint is due in this test (500 events, far less than checkpoint_interval)
    // until the shutdown, so the rows are the events and the cursor stays here.
    let (_, before) = wait_all_forwarded(&h, &mut relay, 200, Duration::from_secs(30));

    let denied = |p: &Proxy| {
        p.calls()
            .iter()
            .filter(|c| c.outcome == Outcome::Denied)
            .count()
    };
    proxy.set_mode(Mode::AccessDenied);
    let (ids, ls) = lines(&mut g, t0, 200, 300, 50);
    write_lines(&mut f, &ls);
    written.extend(ids);
    // auth_retry_interval = 1s: three refused tries take about two seconds.
    h.wait_until(
        Some(&mut relay),
        "3 refused PutLogEvents",
        Duration::from_secs(30),
        || denied(&proxy) >= 3,
    );
    h.wait_events(&mut relay, 500);
    let stats = h.stats();
    assert_eq!(stats["events"], 500, "{stats}");
    assert_eq!(stats["forwarded_seq"], before, "{stats}");
    let last = stats["last_seq"].as_i64().unwrap();
    assert_eq!(
        spool_order(&h).iter().filter(|(s, _)| *s > before).count(),
        300,
        "the 300 new events wait past the cursor: {stats}"
    );
    assert_eq!(stats["unforwarded"], (last - before) as u64, "{stats}");
    assert_eq!(stats["rejected"], 0, "{stats}");
    let log = relay.log();
    let errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("ERROR") && l.contains("AccessDenied"))
        .collect();
    assert_eq!(
        errors.len(),
        1,
        "one error logged (at most once a minute) naming AccessDenied\n--- relay log ---\n{log}"
    );

    // Bad credentials: the same.
    proxy.set_mode(Mode::UnrecognizedClient);
    let so_far = denied(&proxy);
    h.wait_until(
        Some(&mut relay),
        "2 more refused PutLogEvents",
        Duration::from_secs(30),
        || denied(&proxy) >= so_far + 2,
    );
    assert_eq!(forward_state(&h), (last, before));
    assert_eq!(h.stat("rejected"), 0);

    proxy.set_mode(Mode::Normal);
    wait_all_forwarded(&h, &mut relay, 500, Duration::from_secs(30));
    relay.terminate();
    let (_, cursor) = assert_only_shutdown_checkpoint_unforwarded(&h);
    let stats = h.stats();
    assert_eq!(stats["rejected"], 0, "{stats}");
    let cw = moto.events(GROUP, HOSTNAME);
    assert_same_sequence(&event_ids(&cw), &written, "after the permission errors");
    assert_checkpoints_forwarded(&h, &cw, cursor, &[], "after the permission errors");
    let calls = proxy.calls();
    assert_cloudwatch_rules(&calls);
    assert_retries_identical(&calls);
}
