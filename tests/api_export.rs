//! The NDJSON export under slow clients, over real HTTP against the real binary: a client
//! reading 1 KiB/s while the relay ingests many events keeps the WAL small (the export
//! reads in keyset chunks, each its own snapshot) and still gets exactly what
//! `audit-relay query` gives; slow exporters cannot starve page reads, are limited per
//! caller and in all, and are cut (never ended cleanly) when they stall.

mod api_common;
mod common;

use api_common::*;
use common::*;
use serde_json::json;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Events of org A in the export's window, many sharing a millisecond.
fn seed(h: &Harness, relay: &mut Relay, n: usize, window_end: i64) {
    let mut g = gen::Gen::new(99);
    let mut f = append_to(&h.log("seed.log"));
    let actors = [
        "dddddddd-0000-4000-8000-000000000004",
        "eeeeeeee-0000-4000-8000-000000000005",
    ];
    let mut lines = Vec::with_capacity(10_000);
    for i in 0..n {
        // Three events per millisecond, so chunk boundaries fall inside a millisecond.
        let ms = window_end - 1 - (i / 3) as i64;
        lines.push(event_line(
            &g.uuid(),
            ms,
            "startWorkspace",
            ORG_A,
            actors[i % 2],
            i as u64,
        ));
        if lines.len() == 10_000 {
            write_lines(&mut f, &lines);
            lines.clear();
        }
    }
    write_lines(&mut f, &lines);
    h.wait_until(
        Some(relay),
        &format!("{n} seeded events"),
        Duration::from_secs(120),
        || h.count() >= n as u64,
    );
}

/// Sends an export request with `bearer` on a new connection, reading nothing back.
fn open_export(addr: &str, bearer: &str, query: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    let req = format!(
        "GET /v1/organizations/{ORG_A}/audit-logs/export{query} HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {bearer}\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    s
}

/// The status of a response whose first bytes are read (and only those).
fn status_of(s: &mut TcpStream) -> u16 {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    std::str::from_utf8(&head[9..12]).unwrap().parse().unwrap()
}

fn owner(user: &str) -> String {
    let exp = now_ms() / 1000 + 3600;
    let claims = json!({"sub": user, "iss": ISSUER, "aud": AUDIENCE, "exp": exp,
        "orgs": {ORG_A: "owner"}});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// Ids in NDJSON order.
fn ndjson_ids(body: &[u8]) -> Vec<String> {
    body.split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            v["id"].as_str().unwrap().to_string()
        })
        .collect()
}

/// Events seeded in the window before the slow read (override with
/// `AUDIT_RELAY_TEST_EXPORT_SEED`).
const SEED: usize = 100_000;
/// Events ingested while the client reads slowly (override with
/// `AUDIT_RELAY_TEST_EXPORT_INGEST`). The issue asks for up to 1,000,000; on the 2 shared
/// cores of the test machine 300,000 keep the run near two minutes.
const INGEST: usize = 300_000;
const SLOW: Duration = Duration::from_secs(60);

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn a_slow_export_keeps_the_wal_small_and_matches_the_cli_query() {
    let (h, _) = api_harness_with(&["durability = \"os\""], &[]);
    let mut relay = h.start();
    let addr = api_addr(&relay);
    let (seed_n, ingest_n) = (
        env_or("AUDIT_RELAY_TEST_EXPORT_SEED", SEED),
        env_or("AUDIT_RELAY_TEST_EXPORT_INGEST", INGEST),
    );
    let window_end = now_ms() - 3_600_000;
    seed(&h, &mut relay, seed_n, window_end);
    let (from, to) = (rfc3339_ms(window_end - 86_400_000), rfc3339_ms(window_end));
    let mut s = open_export(&addr, ADMIN_TOKEN, &format!("?from={from}&to={to}"));

    // Ingest goes on during the slow read: events of A (and B) stamped now, after the
    // export's window, so the export must not show them.
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let writer = {
        let (stop, written, path) = (stop.clone(), written.clone(), h.log("more.log"));
        std::thread::spawn(move || {
            let mut g = gen::Gen::new(7);
            let mut f = append_to(&path);
            let mut n = 0;
            while n < ingest_n && !stop.load(Ordering::Relaxed) {
                let lines: Vec<String> = (0..5_000)
                    .map(|i| {
                        let org = [ORG_A, ORG_B][i % 2];
                        let actor = "cccccccc-0000-4000-8000-000000000003";
                        event_line(&g.uuid(), now_ms(), "stopWorkspace", org, actor, i as u64)
                    })
                    .collect();
                write_lines(&mut f, &lines);
                n += lines.len();
                written.store(n as u64, Ordering::Relaxed);
            }
        })
    };
    let mut raw = Vec::new();
    let mut max_wal = 0;
    let mut seqs = std::collections::BTreeSet::new();
    let started = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while started.elapsed() < SLOW {
        let mut kib = [0u8; 1024];
        let n = s.read(&mut kib).unwrap();
        assert!(
            n > 0,
            "the export ended within the slow phase: seed more events"
        );
        raw.extend_from_slice(&kib[..n]);
        let (bytes, seq) = common::wal_state(&h.spool_dir);
        max_wal = max_wal.max(bytes);
        if bytes >= 32 {
            seqs.insert(seq);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    let stored_during = h.count();
    let slow_bytes = raw.len();
    // The rest, at full speed.
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.read_to_end(&mut raw).unwrap();
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    let total = seed_n as u64 + written.load(Ordering::Relaxed);
    h.wait_until(
        Some(&mut relay),
        "every ingested event",
        Duration::from_secs(120),
        || {
            max_wal = max_wal.max(common::wal_state(&h.spool_dir).0);
            h.count() >= total
        },
    );
    eprintln!(
        "slow export: {slow_bytes} B read in {:?}, {} B in all; {} of {} new events stored \
         during it; largest WAL {} MiB",
        SLOW,
        raw.len(),
        stored_during.saturating_sub(seed_n as u64),
        total - seed_n as u64,
        max_wal >> 20
    );
    assert!(
        stored_during >= seed_n as u64 + (total - seed_n as u64) / 2,
        "ingest kept going during the slow read: {stored_during} stored of {total}"
    );
    // The WAL is reused from its start once copied (past 64 MiB, at the latest at
    // 128 MiB plus a commit): a snapshot held by the export would keep it growing
    // with every event stored (~700 bytes each) and never restart it.
    assert!(
        seqs.len() >= 2,
        "the WAL never restarted while the export was read slowly (checkpoint sequence {seqs:?})"
    );
    assert!(
        max_wal < 160 << 20,
        "the WAL grew to {max_wal} bytes while the export was read slowly"
    );
    let resp = moto::parse_response(&raw).expect("a complete chunked response");
    assert_eq!(resp.status, 200);
    let got = ndjson_ids(&resp.body);
    let cli = h.cli_ok(&[
        "query", "--org", ORG_A, "--from", &from, "--to", &to, "--limit", "1000000", "--json",
    ]);
    let want = ndjson_ids(cli.as_bytes());
    assert_eq!(want.len(), seed_n, "the CLI sees the seeded window");
    moto::assert_same_sequence(&got, &want, "export vs audit-relay query");
    relay.terminate();
}

#[test]
fn slow_exporters_cannot_starve_page_reads_and_are_cut_when_they_stall() {
    let (h, _) = api_harness_with(
        &["durability = \"os\""],
        &[
            "export_stall_timeout = \"3s\"",
            "max_exports = 8",
            "max_exports_per_caller = 2",
        ],
    );
    let mut relay = h.start();
    let addr = api_addr(&relay);
    // Far more than the socket buffers hold, so a client that reads nothing stalls.
    seed(&h, &mut relay, 60_000, now_ms() - 60_000);

    // One user takes its two slots; a third export of theirs is refused by name.
    let mut held = vec![
        open_export(&addr, &owner("user-0"), ""),
        open_export(&addr, &owner("user-0"), ""),
    ];
    for s in held.iter_mut() {
        assert_eq!(status_of(s), 200);
    }
    let r = get(
        &addr,
        &owner("user-0"),
        &format!("/v1/organizations/{ORG_A}/audit-logs/export"),
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.json()["message"]
        .as_str()
        .unwrap()
        .contains("api.max_exports_per_caller"));
    // Fifteen more owners of A, each reading nothing: six get a slot, nine are refused.
    let mut refused = 0;
    for i in 1..16 {
        let mut s = open_export(&addr, &owner(&format!("user-{i}")), "");
        match status_of(&mut s) {
            200 => held.push(s),
            429 => refused += 1,
            other => panic!("export {i}: status {other}"),
        }
    }
    assert_eq!((held.len(), refused), (8, 9));
    // Every other caller's page reads still answer, at once and repeatedly.
    for _ in 0..20 {
        for org in [ORG_A, ORG_B] {
            let r = list_json(&addr, Some(ADMIN_TOKEN), &json!({"organizationId": org}));
            assert_eq!(r.status, 200, "{org}: {}", r.text());
        }
    }
    // The stalled exports are cut after export_stall_timeout, which frees their slots.
    h.wait_until(
        Some(&mut relay),
        "a free export slot after the stall timeout",
        DEADLINE,
        || {
            let r = get(
                &addr,
                &owner("user-1"),
                &format!("/v1/organizations/{ORG_A}/audit-logs/export?action=none"),
            );
            r.status == 200
        },
    );
    assert!(relay.log().contains("export cut"), "the cut is logged");
    // A cut export ends without its final chunk: the client cannot take it for complete.
    let mut raw = Vec::new();
    let mut s = held.pop().unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let _ = s.read_to_end(&mut raw);
    let cut = moto::parse_response(&raw);
    assert!(cut.is_err(), "a cut export looks complete");
    // And an export read at full speed is whole.
    let r = get(
        &addr,
        &owner("user-9"),
        &format!("/v1/organizations/{ORG_A}/audit-logs/export?action=startWorkspace"),
    );
    assert_eq!(r.status, 200);
    assert_eq!(ndjson_ids(&r.body).len(), 60_000);
    relay.terminate();
}
