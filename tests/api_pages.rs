//! Page walks against a model, over real HTTP: random events over several organizations,
//! random filters and page sizes; walking every page gives exactly the matching events,
//! newest first, without duplicates or gaps, while new events keep arriving.

mod api_common;
mod common;

use api_common::*;
use common::*;
use serde_json::json;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

const ORGS: [&str; 4] = [
    ORG_A,
    ORG_B,
    "cccccccc-0000-4000-8000-00000000000c",
    "dddddddd-0000-4000-8000-00000000000d",
];
const ACTORS: [&str; 3] = [
    "a0000000-0000-4000-8000-000000000001",
    "a0000000-0000-4000-8000-000000000002",
    "a0000000-0000-4000-8000-000000000003",
];
const ACTIONS: [&str; 3] = ["startWorkspace", "stopWorkspace", "getTeamProjects"];

#[derive(Clone)]
struct Ev {
    id: String,
    ms: i64,
    seq_hint: usize,
    org: &'static str,
    actor: &'static str,
    action: &'static str,
}

#[test]
fn walking_all_pages_gives_exactly_the_matching_events_while_ingest_goes_on() {
    let (h, _) = api_harness();
    let mut relay = h.start();
    let addr = api_addr(&relay);
    let mut g = gen::Gen::new(2024);
    let now = now_ms();
    // 900 events over the last 5 days; many share a millisecond, so (ts, seq) order matters.
    let mut evs = Vec::new();
    for i in 0..900 {
        let ms = now
            - 60_000
            - (g.below(5 * 86_400) as i64 * 1000)
            - if i % 5 == 0 { 0 } else { g.below(1000) as i64 };
        evs.push(Ev {
            id: g.uuid(),
            ms: if i % 7 == 0 && i > 0 {
                evs.last().map(|e: &Ev| e.ms).unwrap()
            } else {
                ms
            },
            seq_hint: i,
            org: ORGS[g.below(4) as usize],
            actor: ACTORS[g.below(3) as usize],
            action: ACTIONS[g.below(3) as usize],
        });
    }
    let lines: Vec<String> = evs
        .iter()
        .map(|e| event_line(&e.id, e.ms, e.action, e.org, e.actor, e.seq_hint as u64))
        .collect();
    write_lines(&mut append_to(&h.log("events.log")), &lines);
    h.wait_events(&mut relay, evs.len() as u64);

    // Ingest goes on during the walks: events of the same organizations, actors and
    // actions, stamped after the walks' windows, so none of them may show up.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let path = h.log("more.log");
        std::thread::spawn(move || {
            let mut g = gen::Gen::new(7);
            let mut f = append_to(&path);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let lines: Vec<String> = (0..5)
                    .map(|_| {
                        let o = ORGS[g.below(4) as usize];
                        let a = ACTORS[g.below(3) as usize];
                        let act = ACTIONS[g.below(3) as usize];
                        n += 1;
                        event_line(&g.uuid(), now_ms() + 60_000, act, o, a, n)
                    })
                    .collect();
                write_lines(&mut f, &lines);
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            n
        })
    };

    // The walks start once new events are flowing in.
    h.wait_events(&mut relay, evs.len() as u64 + 20);
    let sizes = [1, 2, 3, 7, 10, 50, 250];
    let (mut total_events, mut total_pages) = (0, 0);
    for case in 0..14 {
        let org = ORGS[g.below(4) as usize];
        let actor = (g.below(2) == 0).then(|| ACTORS[g.below(3) as usize]);
        let action = (g.below(2) == 0).then(|| ACTIONS[g.below(3) as usize]);
        let to = (g.below(3) != 0).then(|| now - g.below(2 * 86_400_000) as i64);
        let from = (g.below(2) == 0)
            .then(|| to.unwrap_or(now) - 86_400_000 - g.below(3 * 86_400_000) as i64);
        // Without `to` the window ends at the first page's "now": earlier reads' own audit
        // events would match; a filter on actor or action keeps them out of the model.
        let action = if to.is_none() && actor.is_none() {
            Some(action.unwrap_or(ACTIONS[0]))
        } else {
            action
        };
        let size = if case < 3 {
            250
        } else {
            sizes[g.below(sizes.len() as u64) as usize]
        };
        let (lo, hi) = match (from, to) {
            (Some(f), Some(t)) => (f, t),
            (Some(f), None) => (f, i64::MAX),
            (None, Some(t)) => (t - 7 * 86_400_000, t),
            (None, None) => (i64::MIN, i64::MAX),
        };
        // The model: matching events, newest first, ties in the order they were stored.
        let mut want: Vec<&Ev> = evs
            .iter()
            .filter(|e| {
                e.org == org
                    && e.ms >= lo
                    && e.ms <= hi
                    && actor.is_none_or(|a| a == e.actor)
                    && action.is_none_or(|a| a == e.action)
            })
            .collect();
        want.sort_by(|a, b| b.ms.cmp(&a.ms).then(b.seq_hint.cmp(&a.seq_hint)));
        let want: Vec<String> = want.iter().map(|e| e.id.clone()).collect();

        let mut req = json!({"organizationId": org, "pagination": {"pageSize": size}});
        if let Some(a) = actor {
            req["actorId"] = json!(a);
        }
        if let Some(a) = action {
            req["action"] = json!(a);
        }
        if let Some(f) = from {
            req["from"] = json!(rfc3339_ms(f));
        }
        if let Some(t) = to {
            req["to"] = json!(rfc3339_ms(t));
        }
        let mut got: Vec<String> = Vec::new();
        let mut pages = 0;
        loop {
            let r = list_json(&addr, Some(ADMIN_TOKEN), &req);
            assert_eq!(r.status, 200, "case {case}: {}", r.text());
            let body = r.json();
            let logs = body["auditLogs"].as_array().unwrap();
            let token = body["pagination"]["nextToken"]
                .as_str()
                .unwrap()
                .to_string();
            assert!(
                logs.len() <= size,
                "case {case}: page of {} > {size}",
                logs.len()
            );
            if !token.is_empty() {
                assert_eq!(
                    logs.len(),
                    size,
                    "case {case}: a short page before the last"
                );
            }
            got.extend(logs.iter().map(|l| l["id"].as_str().unwrap().to_string()));
            pages += 1;
            assert!(
                pages <= want.len() + 2,
                "case {case}: the walk does not end"
            );
            if token.is_empty() {
                break;
            }
            req["pagination"]["token"] = json!(token);
        }
        let distinct: std::collections::HashSet<&String> = got.iter().collect();
        assert_eq!(distinct.len(), got.len(), "case {case}: duplicates");
        assert_eq!(
            got.len(),
            want.len(),
            "case {case} ({org} {actor:?} {action:?} {from:?} {to:?} size {size})"
        );
        assert_eq!(got, want, "case {case}: order or content differs");
        eprintln!(
            "case {case}: {} events in {pages} pages of {size}",
            got.len()
        );
        total_events += got.len();
        total_pages += pages;
    }
    // The walks were not trivial.
    assert!(
        total_events > 300 && total_pages > 40,
        "{total_events} events, {total_pages} pages"
    );
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().unwrap();
    assert!(written >= 20);
    relay.terminate();
}
