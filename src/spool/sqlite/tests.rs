//! Unit tests of the SQLite engine: dedup, keyset pages, upgrades, a model.

use super::*;
use crate::config::Envelope;
use crate::event::{decode, format_timestamp_ms, Decoded, Event};
use crate::query::{plan, QueryRequest};
use crate::spool::AppendBatch;

fn ev(i: u128, org: &str, ms: i64) -> Event {
    let line = serde_json::json!({
        "id": uuid::Uuid::from_u128(i).to_string(),
        "timestamp": format_timestamp_ms(ms),
        "action": if i.is_multiple_of(2) { "startWorkspace" } else { "stopWorkspace" },
        "organizationId": org, "actorId": format!("actor-{}", i % 3), "args": [i as u64],
    })
    .to_string();
    match decode(line.as_bytes(), Envelope::Event) {
        Decoded::Event(e) => e,
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_format_2_spool_is_hashed_on_upgrade_exactly_as_the_writer_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
    let events = (0..50).map(|i| ev(i, ["A", "B", "C"][i as usize % 3], 1000 + i as i64));
    s.append(&AppendBatch {
        events: events.collect(),
        ..Default::default()
    })
    .unwrap();
    let hashes = |c: &Connection| -> Vec<Vec<u8>> {
        let mut stmt = c.prepare("SELECT hash FROM events ORDER BY seq").unwrap();
        let rows = stmt.query_map([], |r| r.get(0)).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    };
    let written = hashes(&s.conn);
    drop(s);
    // Back to format 2: no hash column, no purges, no chain head.
    let c = Connection::open(dir.path().join(DB_FILE)).unwrap();
    c.execute_batch(
        "ALTER TABLE events DROP COLUMN hash; DROP TABLE purges;
         DELETE FROM meta WHERE key = 'chain_head'; DELETE FROM orgs WHERE org = 0;
         PRAGMA user_version = 2;",
    )
    .unwrap();
    drop(c);
    let s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
    assert_eq!(hashes(&s.conn), written);
    assert_eq!(s.head.to_vec(), *written.last().unwrap());
    let wal = std::fs::metadata(dir.path().join("spool.db-wal")).map_or(0, |m| m.len());
    assert!(
        wal < 16 << 10,
        "the upgrade leaves its WAL behind: {wal} bytes"
    );
    let r = crate::verify::verify_spool(&s, &Default::default()).unwrap();
    assert!(r.ok(), "{r}");
    assert_eq!(r.rows, 50);
}

#[test]
fn append_dedups_and_queries_newest_first() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
    let batch = AppendBatch {
        events: (0..10)
            .map(|i| ev(i, if i < 6 { "A" } else { "B" }, 1000 + i as i64))
            .collect(),
        read: 10,
        ..Default::default()
    };
    assert_eq!(s.append(&batch).unwrap().stored, 10);
    let again = s.append(&batch).unwrap();
    assert_eq!((again.stored, again.duplicates), (0, 10));
    let stats = s.stats().unwrap();
    assert_eq!(
        (stats.events, stats.duplicates, stats.read, stats.last_seq),
        (10, 10, 20, 10)
    );
    let mut r = QueryRequest {
        organization_id: "A".into(),
        from: Some(format_timestamp_ms(0)),
        ..Default::default()
    };
    let q = plan(&r, 10_000, 100, 250).unwrap();
    let got: Vec<i64> = s.query(&q).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(got, vec![6, 5, 4, 3, 2, 1]);
    r.action = Some("startWorkspace".into());
    r.actor_id = Some("actor-0".into());
    let q = plan(&r, 10_000, 100, 250).unwrap();
    let got: Vec<i64> = s.query(&q).unwrap().iter().map(|e| e.seq).collect();
    assert_eq!(got, vec![1]);
    // Reopening keeps the sequence going.
    drop(s);
    let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
    s.append(&AppendBatch {
        events: vec![ev(99, "A", 5)],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(s.stats().unwrap().last_seq, 11);
    let ro = Spool::open_read_only(dir.path()).unwrap();
    assert_eq!(ro.ids().unwrap().len(), 11);
}

#[test]
fn only_a_real_duplicate_counts_as_one_another_constraint_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
    s.append(&AppendBatch {
        events: vec![ev(1, "A", 1000)],
        ..Default::default()
    })
    .unwrap();
    // Someone else (a second writer) took the next sequence number behind this
    // handle's back: storing a new event there must fail, not pass as a duplicate.
    let other = Connection::open(dir.path().join(DB_FILE)).unwrap();
    other
        .execute(
            "INSERT INTO events(seq, ts_ms, id, org, actor, action, body, hash)
             SELECT 2, 5000, X'00112233445566778899aabbccddeeff', org, actor, action, body, hash
             FROM events WHERE seq = 1",
            [],
        )
        .unwrap();
    let e = s
        .append(&AppendBatch {
            events: vec![ev(2, "A", 2000)],
            ..Default::default()
        })
        .expect_err("a taken sequence number is an error");
    assert!(
        e.to_string().contains("UNIQUE") || e.to_string().contains("PRIMARY"),
        "{e}"
    );
    s.rollback().unwrap();
    assert_eq!(s.stats().unwrap().duplicates, 0);
    // The same (time, id) again is a duplicate, as before.
    let again = s
        .append(&AppendBatch {
            events: vec![ev(1, "A", 1000)],
            ..Default::default()
        })
        .unwrap();
    assert_eq!((again.stored, again.duplicates), (0, 1));
}

#[test]
fn keyset_pages_cover_ties_exactly_and_the_secret_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
    // Three events per millisecond: pages must split ties by sequence.
    let events = (0..12).map(|i| ev(i, "A", 1000 + (i as i64 / 3))).collect();
    s.append(&AppendBatch {
        events,
        ..Default::default()
    })
    .unwrap();
    let mut q = plan(
        &QueryRequest {
            organization_id: "A".into(),
            from: Some(format_timestamp_ms(0)),
            ..Default::default()
        },
        10_000,
        100,
        250,
    )
    .unwrap();
    q.limit = 5;
    let (mut all, mut before) = (Vec::new(), None);
    loop {
        let mut page = Vec::new();
        s.query_page_each(&q, before, |e| {
            page.push((e.ts_ms, e.seq));
            Ok::<(), SpoolError>(())
        })
        .unwrap();
        before = page.last().copied();
        all.extend(page.iter().map(|p| p.1));
        if page.len() < q.limit {
            break;
        }
    }
    assert_eq!(all, (1..=12).rev().collect::<Vec<i64>>());
    let k1 = s.meta_secret("k", || vec![1, 2, 3]).unwrap();
    let k2 = s.meta_secret("k", || vec![9]).unwrap();
    assert_eq!(
        (k1.as_slice(), k2.as_slice()),
        (&[1u8, 2, 3][..], &[1u8, 2, 3][..])
    );
}

#[test]
fn missing_spool_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let e = Spool::open_read_only(&dir.path().join("nope"))
        .err()
        .unwrap();
    assert!(e.to_string().starts_with("no spool at"), "{e}");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
    /// Against a model (a map from (ts, id) to (seq, org)): batches with repeats
    /// store each event once, sequence numbers grow by one per stored event,
    /// counters match, and a query returns exactly the model's matching events,
    /// newest first.
    #[test]
    fn spool_matches_a_model(
        batches in proptest::collection::vec(proptest::collection::vec(0u128..60, 0..40), 1..8),
        q_org in 0usize..3,
        q_from in 0i64..20,
        q_len in 0i64..20,
    ) {
        let orgs = ["A", "B", "C"];
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        let mut model = std::collections::BTreeMap::new();
        let (mut next_seq, mut dups) = (1i64, 0u64);
        for b in &batches {
            // The same id always comes with the same timestamp and org (a re-read).
            let events: Vec<Event> =
                b.iter().map(|id| ev(*id, orgs[(*id % 3) as usize], 1000 + (*id as i64 * 7) % 20)).collect();
            for e in &events {
                let org = orgs[(e.id.as_u128() % 3) as usize];
                match model.entry((e.ts_ms, e.id.as_u128())) {
                    std::collections::btree_map::Entry::Vacant(v) => {
                        v.insert((next_seq, org));
                        next_seq += 1;
                    }
                    std::collections::btree_map::Entry::Occupied(_) => dups += 1,
                }
            }
            s.append(&AppendBatch { events, read: b.len() as u64, ..Default::default() }).unwrap();
        }
        let st = s.stats().unwrap();
        proptest::prop_assert_eq!(st.events, model.len() as u64);
        proptest::prop_assert_eq!(st.duplicates, dups);
        proptest::prop_assert_eq!(st.last_seq, model.len() as i64);
        let ids = s.ids().unwrap();
        proptest::prop_assert!(ids.windows(2).all(|w| w[1].0 == w[0].0 + 1));
        let from = 1000 + q_from;
        let to = from + q_len;
        let q = plan(&QueryRequest {
            organization_id: orgs[q_org].into(),
            from: Some(format_timestamp_ms(from)),
            to: Some(format_timestamp_ms(to)),
            limit: Some(1000),
            ..Default::default()
        }, 0, 100, 1000).unwrap();
        let got: Vec<i64> = s.query(&q).unwrap().iter().map(|e| e.seq).collect();
        let mut want: Vec<(i64, i64)> = model.iter()
            .filter(|((ts, _), (_, o))| *o == orgs[q_org] && *ts >= from && *ts <= to)
            .map(|((ts, _), (seq, _))| (*ts, *seq)).collect();
        want.sort_by(|a, b| b.cmp(a));
        proptest::prop_assert_eq!(got, want.into_iter().map(|(_, seq)| seq).collect::<Vec<_>>());
    }
}
