//! `audit-relay verify --postgres`: checks every relay's chain where the installation's
//! rows live, against the registry, the signed checkpoints and the records of retention.
//!
//! For every relay of the registry (`audit_relays`) its rows (`audit_events` ∪
//! `audit_duplicates`) are streamed by `seq` from `first_seq`, with `anchor` as the hash
//! before it, and each row's hash is recomputed ([`ChainRow::hash_at`]). A checkpoint row
//! must cover the row before it with the hash found there, and carry a valid signature
//! when keys are given. A gap in the sequence is retention's only when runs recorded in
//! `audit_purges` cover exactly that gap; the chain then goes on from the hash recorded at
//! the gap's end. The last row must be the registry's `shipped_seq` with its `chain_head`.
//! Rows of a relay_id that is not in the registry, and relay_ids that the store names
//! elsewhere (purges, the schema's creator) without a registry row, are reported too.
//!
//! Everything is read in one read-only, repeatable-read transaction (relays may go on
//! shipping meanwhile: each shipping transaction moves rows and cursor together), rows
//! through a portal a batch at a time, so memory does not grow with the store.
//!
//! The pure parts (the walk of one chain, the cover of a gap, the diagnosis of a break)
//! are functions of rows; the I/O is [`verify`].

use super::retention::Run;
use super::{day_start, schema, PgError, DAY_MS};
use crate::forward::retry::PgClass;
use crate::integrity::{hash_from_hex, to_hex, ChainCheckpoint, KeyRing, CHECKPOINT_ORG};
use crate::spool::{ChainRow, LedgerEntry};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::ops::ControlFlow;

/// Rows fetched per round trip of a relay's portal.
const BATCH: i32 = 5_000;
/// How far past a break the diagnosis looks for a moved event.
const LOOKAHEAD: i64 = 10_000;

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Keys checkpoints must be signed with; `None`: signatures are not checked (but a
    /// checkpoint signed by another key id than the registry's is reported).
    pub public_key: Option<KeyRing>,
    /// `postgres.retention_days`: a purge of a partition younger than this when it was
    /// recorded is reported.
    pub retention_days: i64,
}

/// A break, named by relay and sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PgBreak {
    pub relay_id: String,
    pub seq: i64,
    /// `changed`, `removed`, `inserted`, `reordered`, `tail_cut`, `forged_checkpoint`,
    /// `checkpoint_mismatch`, `foreign_key`, `unsigned`, `forged_ledger`,
    /// `unexplained_gap` (a gap that purges cover only in part), `forged_purge` (a purge
    /// record that does not fit the store), `purge_too_young`, `vanished_relay`,
    /// `unregistered_relay`, `registry_mismatch`.
    pub kind: &'static str,
    pub detail: String,
}

/// One relay's chain as checked.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RelayReport {
    pub relay_id: String,
    /// From the registry.
    pub first_seq: i64,
    pub shipped_seq: i64,
    pub key_id: Option<String>,
    /// The last sequence number the walk reached (rows or purged runs).
    pub to_seq: i64,
    /// Rows checked (events, checkpoints, ledger rows).
    pub rows: u64,
    pub checkpoints: u64,
    pub signed_checkpoints: u64,
    pub ledger_rows: u64,
    /// Rows of the chain dropped by retention (per `audit_purges`).
    pub purged_rows: u64,
    /// The newest sequence number covered by a valid checkpoint.
    pub covered_through: i64,
    /// The chain hash at `to_seq`.
    pub chain_head: String,
    pub ok: bool,
}

/// The outcome of `verify --postgres`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PgReport {
    pub schema_version: i32,
    pub relays: Vec<RelayReport>,
    /// Partitions dropped by retention, as recorded.
    pub purges: u64,
    pub notes: Vec<String>,
    /// Every break found: the first of each relay, and the store's own.
    pub breaks: Vec<PgBreak>,
}

impl PgReport {
    pub fn ok(&self) -> bool {
        self.breaks.is_empty()
    }
}

impl fmt::Display for PgReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "postgres: schema version {}, {} relay(s) in the registry, {} partition(s) dropped by retention",
            self.schema_version,
            self.relays.len(),
            self.purges
        )?;
        for r in &self.relays {
            writeln!(
                f,
                "postgres: relay {}: checked seq {}..={} ({} rows, {} purged by retention), {} checkpoint(s), {} with a valid signature; covered through seq {}; chain head {}{}",
                r.relay_id,
                r.first_seq,
                r.to_seq,
                r.rows,
                r.purged_rows,
                r.checkpoints,
                r.signed_checkpoints,
                r.covered_through,
                r.chain_head,
                if r.ok { "" } else { " — BROKEN" }
            )?;
        }
        for n in &self.notes {
            writeln!(f, "postgres: note: {n}")?;
        }
        for b in &self.breaks {
            writeln!(
                f,
                "postgres: BROKEN relay {} at seq {} ({}): {}",
                b.relay_id, b.seq, b.kind, b.detail
            )?;
        }
        Ok(())
    }
}

/// A run of a purge, as the walk of one relay uses it.
#[derive(Debug, Clone)]
pub struct PurgedRun {
    pub to_seq: i64,
    pub head: Option<[u8; 32]>,
    pub pid: i64,
    /// Why this purge is not to be trusted (kind, detail), if it is not.
    pub problem: Option<(&'static str, String)>,
}

/// One relay's purged runs by their first sequence number.
pub type Runs = BTreeMap<i64, PurgedRun>;

/// The registry row of a relay.
#[derive(Debug, Clone)]
pub struct Registered {
    pub relay_id: String,
    pub first_seq: i64,
    pub anchor: Vec<u8>,
    pub shipped_seq: i64,
    pub chain_head: Vec<u8>,
    pub key_id: Option<String>,
}

/// The walk of one relay's chain: fed its rows in `seq` order.
pub struct Walk<'a> {
    reg: &'a Registered,
    key: Option<&'a KeyRing>,
    runs: &'a Runs,
    prev: [u8; 32],
    expected: i64,
    pub report: RelayReport,
    pub broken: Option<PgBreak>,
    /// The row whose stored hash does not follow `prev`, for the diagnosis.
    pub failed: Option<ChainRow>,
    /// Other relays this relay's checkpoints witnessed (`peers`): relay_id → the highest
    /// witnessed seq, and where it was witnessed.
    pub peers: BTreeMap<String, (i64, String)>,
}

impl<'a> Walk<'a> {
    pub fn new(reg: &'a Registered, key: Option<&'a KeyRing>, runs: &'a Runs) -> Walk<'a> {
        let mut w = Walk {
            reg,
            key,
            runs,
            prev: [0; 32],
            expected: reg.first_seq,
            report: RelayReport {
                relay_id: reg.relay_id.clone(),
                first_seq: reg.first_seq,
                shipped_seq: reg.shipped_seq,
                key_id: reg.key_id.clone(),
                to_seq: reg.first_seq - 1,
                covered_through: reg.first_seq - 1,
                ..Default::default()
            },
            broken: None,
            failed: None,
            peers: BTreeMap::new(),
        };
        match <[u8; 32]>::try_from(reg.anchor.as_slice()) {
            Ok(a) => w.prev = a,
            Err(_) => {
                let _ = w.brk(
                    reg.first_seq,
                    "registry_mismatch",
                    format!(
                        "the registry's anchor of relay {} is {} bytes, not a 32-byte chain hash",
                        reg.relay_id,
                        reg.anchor.len()
                    ),
                );
            }
        }
        w
    }

    fn brk(&mut self, seq: i64, kind: &'static str, detail: String) -> ControlFlow<()> {
        self.broken = Some(PgBreak {
            relay_id: self.reg.relay_id.clone(),
            seq,
            kind,
            detail,
        });
        ControlFlow::Break(())
    }

    /// The hash before the next row.
    pub fn prev(&self) -> [u8; 32] {
        self.prev
    }

    /// Seqs `from..=to` are missing: retention's when purged runs cover exactly them
    /// (the chain goes on from the hash at the last run's end).
    fn gap(&mut self, from: i64, to: i64) -> ControlFlow<()> {
        let mut at = from;
        let mut head = None;
        let mut used = Vec::new();
        while at <= to {
            match self.runs.get(&at) {
                Some(run) if run.to_seq <= to => {
                    used.push(run);
                    head = Some(run.head);
                    at = run.to_seq + 1;
                }
                _ => break,
            }
        }
        let what = if from == to {
            format!("seq {from} is")
        } else {
            format!("seqs {from}..={to} are")
        };
        if at > to {
            if let Some(run) = used.iter().find(|r| r.problem.is_some()) {
                let (kind, why) = run.problem.clone().expect("found");
                return self.brk(
                    from,
                    kind,
                    format!("{what} missing, recorded as dropped by retention in audit_purges pid {}, but {why}", run.pid),
                );
            }
            let Some(Some(h)) = head else {
                let pid = used.last().map(|r| r.pid).unwrap_or(0);
                return self.brk(
                    from,
                    "forged_purge",
                    format!("{what} missing; audit_purges pid {pid} covers them but records no valid chain hash at the end of its run"),
                );
            };
            self.prev = h;
            self.expected = to + 1;
            self.report.purged_rows += (to - from + 1) as u64;
            self.report.to_seq = to;
            return ControlFlow::Continue(());
        }
        let overlaps = self
            .runs
            .range(..=to)
            .next_back()
            .is_some_and(|(_, r)| r.to_seq >= from);
        if overlaps {
            self.brk(
                from,
                "unexplained_gap",
                format!("{what} missing, and the runs of audit_purges that touch them do not cover exactly that gap: rows were deleted besides retention's drops"),
            )
        } else {
            let kind = "removed";
            self.brk(
                from,
                kind,
                format!("{what} missing and no audit_purges run covers them: deleted (a row deleted, or a partition dropped outside retention)"),
            )
        }
    }

    /// The next row (rows come in `seq` order).
    pub fn row(&mut self, r: ChainRow) -> ControlFlow<()> {
        if r.seq < self.expected {
            return if r.seq < self.reg.first_seq {
                self.brk(
                    r.seq,
                    "inserted",
                    format!(
                        "a row with seq {} was inserted before the start of the chain (the registry's first_seq {})",
                        r.seq, self.reg.first_seq
                    ),
                )
            } else {
                self.brk(
                    r.seq,
                    "inserted",
                    format!("a second row with seq {} was inserted", r.seq),
                )
            };
        }
        if r.seq > self.expected {
            self.gap(self.expected, r.seq - 1)?;
        }
        if r.seq > self.reg.shipped_seq {
            return self.brk(
                r.seq,
                "inserted",
                format!(
                    "a row with seq {} is beyond the registry's shipped_seq {}: inserted (or the registry was rolled back)",
                    r.seq, self.reg.shipped_seq
                ),
            );
        }
        if r.is_checkpoint() {
            self.checkpoint(&r)?;
        }
        if r.is_ledger() {
            match LedgerEntry::from_json(&r.body) {
                Ok(e) if e.seq < r.seq => self.report.ledger_rows += 1,
                Ok(e) => {
                    return self.brk(
                        r.seq,
                        "forged_ledger",
                        format!(
                            "the forwarding-ledger row at seq {} records a rejection of seq {}, which comes after it",
                            r.seq, e.seq
                        ),
                    )
                }
                Err(e) => {
                    return self.brk(
                        r.seq,
                        "forged_ledger",
                        format!(
                            "the forwarding-ledger row at seq {} is unreadable: {e}",
                            r.seq
                        ),
                    )
                }
            }
        }
        let h = r.hash_at(&self.prev, r.seq);
        if r.hash != Some(h) {
            self.failed = Some(r);
            return ControlFlow::Break(());
        }
        self.prev = h;
        self.expected = r.seq + 1;
        self.report.rows += 1;
        self.report.to_seq = r.seq;
        ControlFlow::Continue(())
    }

    fn checkpoint(&mut self, r: &ChainRow) -> ControlFlow<()> {
        let cp = match ChainCheckpoint::from_json(&r.body, false) {
            Ok(c) => c,
            Err(e) => {
                return self.brk(
                    r.seq,
                    "forged_checkpoint",
                    format!("the checkpoint at seq {} is unreadable: {e}", r.seq),
                )
            }
        };
        if cp.sequence != r.seq - 1 {
            return self.brk(
                r.seq,
                "forged_checkpoint",
                format!(
                    "the checkpoint at seq {} claims to cover seq {}, not the row before it",
                    r.seq, cp.sequence
                ),
            );
        }
        let mut signed = false;
        match self.key {
            Some(key) => match (&cp.signed, key.verify(&cp)) {
                (_, Ok(())) => signed = true,
                (None, Err(_)) if self.report.signed_checkpoints == 0 => {
                    // Written before a signing key was configured.
                }
                (_, Err(e)) => {
                    return self.brk(
                        r.seq,
                        "forged_checkpoint",
                        format!(
                            "the checkpoint at seq {} (covering seq {}) is not validly signed: {e}",
                            r.seq, cp.sequence
                        ),
                    )
                }
            },
            None => {
                // Without keys the signature is not checked, but the key must be the one
                // the registry names for this relay.
                if let (Some((kid, _)), Some(reg)) = (&cp.signed, &self.reg.key_id) {
                    if kid != reg {
                        return self.brk(
                            r.seq,
                            "foreign_key",
                            format!(
                                "the checkpoint at seq {} is signed by key {kid}, but the registry names key {reg} for this relay (after a key rotation, give every key with --public-key)",
                                r.seq
                            ),
                        );
                    }
                }
            }
        }
        if cp.chain_head != self.prev {
            return self.brk(
                cp.sequence,
                "checkpoint_mismatch",
                format!(
                    "the checkpoint at seq {} records chain head {} for seq {}, but the stored rows hash to {}: rows up to seq {} were rewritten",
                    r.seq,
                    to_hex(&cp.chain_head),
                    cp.sequence,
                    to_hex(&self.prev),
                    cp.sequence
                ),
            );
        }
        for p in &cp.peers {
            let seen = self
                .peers
                .get(&p.relay_id)
                .map(|(s, _)| *s)
                .unwrap_or(i64::MIN);
            if p.seq > seen {
                self.peers.insert(
                    p.relay_id.clone(),
                    (
                        p.seq,
                        format!(
                            "relay {:?}'s checkpoint at seq {} witnessed its chain at seq {}",
                            self.reg.relay_id, r.seq, p.seq
                        ),
                    ),
                );
            }
        }
        self.report.checkpoints += 1;
        self.report.signed_checkpoints += signed as u64;
        self.report.covered_through = cp.sequence;
        ControlFlow::Continue(())
    }

    /// After the last row: the chain must reach the registry's cursor with its head.
    pub fn end(&mut self) {
        if self.broken.is_some() || self.failed.is_some() {
            return;
        }
        let shipped = self.reg.shipped_seq;
        let last = self.expected - 1;
        if last < shipped {
            let had_rows = self.report.rows > 0 || self.report.purged_rows > 0;
            if let ControlFlow::Break(()) = self.gap(last + 1, shipped) {
                if let Some(b) = self.broken.as_mut() {
                    if !had_rows && b.kind == "removed" {
                        b.kind = "vanished_relay";
                        b.detail = format!(
                            "the registry says relay {} shipped seq {}..={}, but the store holds none of its rows and no purge covers them: its chain was deleted",
                            self.reg.relay_id, self.reg.first_seq, shipped
                        );
                    } else if b.kind == "removed" {
                        b.kind = "tail_cut";
                        b.detail = format!(
                            "the chain ends at seq {last} but the registry says seq {shipped} was shipped: the tail was cut"
                        );
                    }
                }
                return;
            }
        }
        if self.reg.chain_head != self.prev {
            let _ = self.brk(
                shipped,
                "registry_mismatch",
                format!(
                    "the chain hashes to {} at seq {shipped}, but the registry records chain_head {}: the newest rows or the registry were rewritten",
                    to_hex(&self.prev),
                    to_hex(&self.reg.chain_head)
                ),
            );
            return;
        }
        if self.key.is_some() && self.report.rows > 0 && self.report.signed_checkpoints == 0 {
            let detail = if self.report.checkpoints > 0 {
                "a public key was given but none of this relay's checkpoints is signed".to_string()
            } else {
                format!(
                    "a public key was given but no checkpoint covers the {} row(s) of this relay: nothing signed vouches for them",
                    self.report.rows
                )
            };
            let _ = self.brk(self.reg.first_seq, "unsigned", detail);
        }
    }
}

/// Names what broke at row `r` (stored at seq `s`, its hash not following `prev`), from
/// the rows after it (in `seq` order).
pub fn diagnose(relay_id: &str, r: &ChainRow, prev: &[u8; 32], after: &[ChainRow]) -> PgBreak {
    let s = r.seq;
    let b = |kind, detail| PgBreak {
        relay_id: relay_id.to_string(),
        seq: s,
        kind,
        detail,
    };
    if let Some(n) = after.first().filter(|n| n.seq == s + 1) {
        if n.hash == Some(n.hash_at(prev, s)) {
            let swapped = r
                .hash
                .is_some_and(|rh| Some(r.hash_at(&rh, s + 1)) == n.hash)
                || n.hash
                    .is_some_and(|nh| r.hash == Some(r.hash_at(&nh, s + 1)));
            return if swapped {
                b(
                    "reordered",
                    format!("the rows at seq {s} and {} were swapped", s + 1),
                )
            } else {
                b(
                    "inserted",
                    format!("a row was inserted at seq {s} (the rows after it are shifted by one)"),
                )
            };
        }
    }
    if let Some(k) = after
        .iter()
        .find(|k| k.hash == Some(k.hash_at(prev, s)) || r.hash == Some(k.hash_at(prev, s)))
    {
        return b(
            "reordered",
            format!(
                "the row that belongs at seq {s} is stored at seq {} (contents exchanged)",
                k.seq
            ),
        );
    }
    if r.hash.is_none() {
        return b("changed", format!("the row at seq {s} has no chain hash"));
    }
    let what = if r.is_checkpoint() {
        "checkpoint row"
    } else {
        "event"
    };
    b(
        "changed",
        format!("the {what} at seq {s} was changed: its content no longer matches its hash"),
    )
}

/// A purge row as recorded.
#[derive(Debug, Clone)]
pub struct PurgeRow {
    pub pid: i64,
    pub at_ms: i64,
    pub partition: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub rows: i64,
    pub runs: serde_json::Value,
}

/// What is wrong with a purge record, if anything: its partition must be a day that
/// exists no more, old enough for `retention_days` when it was dropped, and its runs
/// must count its rows.
pub fn purge_problem(
    p: &PurgeRow,
    runs: &[Run],
    existing: &BTreeSet<i64>,
    retention_days: i64,
) -> Option<(&'static str, String)> {
    if p.partition != schema::partition_name(p.from_ms) || p.to_ms != p.from_ms + DAY_MS {
        return Some((
            "forged_purge",
            format!(
                "its partition {} and range {}..{} are not one UTC day's partition",
                p.partition, p.from_ms, p.to_ms
            ),
        ));
    }
    if existing.contains(&p.from_ms) {
        return Some((
            "forged_purge",
            format!(
                "its partition {} still exists: retention never recorded it (rows were deleted and a purge written to cover them)",
                p.partition
            ),
        ));
    }
    let counted: i64 = runs.iter().map(|r| r.to_seq - r.from_seq + 1).sum();
    if counted != p.rows {
        return Some((
            "forged_purge",
            format!("it records {} rows but its runs hold {counted}", p.rows),
        ));
    }
    let cut = day_start(p.at_ms - retention_days * DAY_MS);
    if p.to_ms > cut {
        let days = (p.to_ms - cut) as f64 / DAY_MS as f64;
        return Some((
            "purge_too_young",
            format!(
                "its partition {} was dropped at {}, {days:.1} day(s) before it was old enough for postgres.retention_days = {retention_days}: retention never drops it then",
                p.partition,
                crate::event::format_timestamp_ms(p.at_ms)
            ),
        ));
    }
    None
}

fn pg(what: &'static str) -> impl Fn(tokio_postgres::Error) -> PgError {
    move |e| PgError::from_pg(what, &e)
}

fn chain_row(r: &tokio_postgres::Row) -> ChainRow {
    let organization_id: String = r.get(3);
    let id: uuid::Uuid = r.get(2);
    let hash: Vec<u8> = r.get(7);
    ChainRow {
        seq: r.get(0),
        ts_ms: r.get(1),
        id: id.as_bytes().to_vec(),
        org: if organization_id.is_empty() {
            CHECKPOINT_ORG
        } else {
            1
        },
        organization_id: Some(organization_id),
        actor: r.get(4),
        action: r.get(5),
        body: r.get(6),
        hash: hash.try_into().ok(),
    }
}

const ROWS_OF: &str = "SELECT seq, ts_ms, id, organization_id, actor, action, body, hash FROM (
    SELECT seq, ts_ms, id, organization_id, actor, action, body, hash FROM audit_events WHERE relay_id = $1 AND seq > $2
    UNION ALL
    SELECT seq, ts_ms, id, organization_id, actor, action, body, hash FROM audit_duplicates WHERE relay_id = $1 AND seq > $2
) r ORDER BY seq";

/// The distinct relay_ids of a table with an index led by `relay_id` (a loose index scan).
async fn relay_ids_in(
    tx: &tokio_postgres::Transaction<'_>,
    table: &str,
) -> Result<BTreeSet<String>, PgError> {
    let rows = tx
        .query(
            &format!(
                "WITH RECURSIVE r(id) AS (
                    SELECT min(relay_id) FROM {table}
                    UNION ALL
                    SELECT (SELECT min(relay_id) FROM {table} WHERE relay_id > r.id) FROM r WHERE r.id IS NOT NULL)
                 SELECT id FROM r WHERE id IS NOT NULL"
            ),
            &[],
        )
        .await
        .map_err(pg("listing the relays that have rows"))?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// Verifies the whole store.
pub async fn verify(
    client: &mut tokio_postgres::Client,
    opts: &Options,
) -> Result<PgReport, PgError> {
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg("starting a read-only transaction"))?;
    let mut report = PgReport::default();
    let has_schema: bool = tx
        .query_one(
            "SELECT to_regclass('audit_schema_version') IS NOT NULL AND to_regclass('audit_relays') IS NOT NULL",
            &[],
        )
        .await
        .map_err(pg("reading the schema"))?
        .get(0);
    if !has_schema {
        return Err(PgError::new(
            PgClass::Schema,
            "postgres.url",
            "the database holds no installation store (no audit_schema_version table): no relay has shipped to it yet, or this is the wrong database",
        ));
    }
    let version: i32 = tx
        .query_one(
            "SELECT coalesce(max(version), 0) FROM audit_schema_version",
            &[],
        )
        .await
        .map_err(pg("reading audit_schema_version"))?
        .get(0);
    if version > schema::SCHEMA_VERSION {
        return Err(PgError::new(
            PgClass::Schema,
            "postgres.url",
            format!(
                "the database's schema is version {version}, newer than this build's {}: verify with a newer audit-relay",
                schema::SCHEMA_VERSION
            ),
        ));
    }
    report.schema_version = version;

    let registry: Vec<Registered> = tx
        .query(
            "SELECT relay_id, first_seq, anchor, shipped_seq, chain_head, key_id FROM audit_relays ORDER BY relay_id",
            &[],
        )
        .await
        .map_err(pg("reading audit_relays"))?
        .iter()
        .map(|r| Registered {
            relay_id: r.get(0),
            first_seq: r.get(1),
            anchor: r.get(2),
            shipped_seq: r.get(3),
            chain_head: r.get(4),
            key_id: r.get(5),
        })
        .collect();
    let registered: BTreeSet<&str> = registry.iter().map(|r| r.relay_id.as_str()).collect();

    // The purges: each checked as a whole, its runs filed by relay.
    let existing = schema::partitions(&tx).await?;
    let purges: Vec<PurgeRow> = tx
        .query(
            "SELECT pid, (extract(epoch FROM at) * 1000)::int8, partition, from_ms, to_ms, rows, by_relay, runs
             FROM audit_purges ORDER BY pid",
            &[],
        )
        .await
        .map_err(pg("reading audit_purges"))?
        .iter()
        .map(|r| PurgeRow {
            pid: r.get(0),
            at_ms: r.get(1),
            partition: r.get(2),
            from_ms: r.get(3),
            to_ms: r.get(4),
            rows: r.get(5),
            runs: r.get(7),
        })
        .collect();
    report.purges = purges.len() as u64;
    let mut runs_by_relay: HashMap<String, Runs> = HashMap::new();
    // Relays named by the store besides the registry: their registry row must exist.
    let mut witnesses: BTreeMap<String, (i64, String)> = BTreeMap::new();
    for p in &purges {
        let runs: Vec<Run> = match serde_json::from_value(p.runs.clone()) {
            Ok(r) => r,
            Err(e) => {
                report.breaks.push(PgBreak {
                    relay_id: String::new(),
                    seq: 0,
                    kind: "forged_purge",
                    detail: format!(
                        "audit_purges pid {} ({}): its runs are unreadable: {e}",
                        p.pid, p.partition
                    ),
                });
                continue;
            }
        };
        let problem = purge_problem(p, &runs, &existing, opts.retention_days);
        for run in runs {
            witnesses.entry(run.relay_id.clone()).or_insert((
                run.from_seq,
                format!(
                    "audit_purges pid {} records its seqs {}..={} as dropped with partition {}",
                    p.pid, run.from_seq, run.to_seq, p.partition
                ),
            ));
            let relay = runs_by_relay.entry(run.relay_id.clone()).or_default();
            if relay.contains_key(&run.from_seq) {
                report.breaks.push(PgBreak {
                    relay_id: run.relay_id.clone(),
                    seq: run.from_seq,
                    kind: "forged_purge",
                    detail: format!(
                        "audit_purges pid {} records seq {} as dropped a second time",
                        p.pid, run.from_seq
                    ),
                });
                continue;
            }
            relay.insert(
                run.from_seq,
                PurgedRun {
                    to_seq: run.to_seq,
                    head: hash_from_hex(&run.head),
                    pid: p.pid,
                    problem: problem.clone(),
                },
            );
        }
    }
    for r in tx
        .query(
            "SELECT by_relay, min(version) FROM audit_schema_version GROUP BY by_relay",
            &[],
        )
        .await
        .map_err(pg("reading audit_schema_version"))?
    {
        let (id, v): (String, i32) = (r.get(0), r.get(1));
        witnesses.entry(id).or_insert((
            0,
            format!("audit_schema_version records it as the relay that created schema version {v}"),
        ));
    }

    let mut peers_witnessed: BTreeMap<String, (i64, String)> = BTreeMap::new();
    // Every registered relay's chain.
    let stmt = tx
        .prepare(ROWS_OF)
        .await
        .map_err(pg("reading a relay's rows"))?;
    let empty = Runs::new();
    for reg in &registry {
        let runs = runs_by_relay.get(&reg.relay_id).unwrap_or(&empty);
        let mut walk = Walk::new(reg, opts.public_key.as_ref(), runs);
        if walk.broken.is_none() {
            let portal = tx
                .bind(&stmt, &[&reg.relay_id, &i64::MIN])
                .await
                .map_err(pg("reading a relay's rows"))?;
            'rows: loop {
                let rows = tx
                    .query_portal(&portal, BATCH)
                    .await
                    .map_err(pg("reading a relay's rows"))?;
                if rows.is_empty() {
                    break;
                }
                for r in &rows {
                    if walk.row(chain_row(r)).is_break() {
                        break 'rows;
                    }
                }
            }
        }
        if let Some(r) = walk.failed.take() {
            let after: Vec<ChainRow> = tx
                .query(
                    &format!("{ROWS_OF} LIMIT {LOOKAHEAD}"),
                    &[&reg.relay_id, &r.seq],
                )
                .await
                .map_err(pg("reading a relay's rows"))?
                .iter()
                .map(chain_row)
                .collect();
            let b = if r.seq > reg.shipped_seq {
                PgBreak {
                    relay_id: reg.relay_id.clone(),
                    seq: r.seq,
                    kind: "inserted",
                    detail: format!(
                        "a row was inserted at seq {}, after the registry's shipped_seq {}",
                        r.seq, reg.shipped_seq
                    ),
                }
            } else {
                diagnose(&reg.relay_id, &r, &walk.prev(), &after)
            };
            walk.broken = Some(b);
        }
        walk.end();
        for (id, (seq, why)) in std::mem::take(&mut walk.peers) {
            let seen = peers_witnessed
                .get(&id)
                .map(|(s, _)| *s)
                .unwrap_or(i64::MIN);
            if seq > seen {
                peers_witnessed.insert(id, (seq, why));
            }
        }
        let mut rr = walk.report;
        rr.chain_head = to_hex(&walk.prev);
        rr.ok = walk.broken.is_none();
        if let Some(b) = walk.broken {
            report.breaks.push(b);
        }
        report.relays.push(rr);
    }

    // Rows of relays that are not in the registry.
    let mut with_rows = relay_ids_in(&tx, "audit_events").await?;
    with_rows.extend(relay_ids_in(&tx, "audit_duplicates").await?);
    for id in with_rows
        .iter()
        .filter(|id| !registered.contains(id.as_str()))
    {
        let row = tx
            .query_one(
                "SELECT min(seq), count(*) FROM (
                    SELECT seq FROM audit_events WHERE relay_id = $1
                    UNION ALL SELECT seq FROM audit_duplicates WHERE relay_id = $1) r",
                &[id],
            )
            .await
            .map_err(pg("reading an unregistered relay's rows"))?;
        let (min, n): (Option<i64>, i64) = (row.get(0), row.get(1));
        report.breaks.push(PgBreak {
            relay_id: id.clone(),
            seq: min.unwrap_or(0),
            kind: "unregistered_relay",
            detail: format!(
                "the store holds {n} row(s) of relay {id:?} (from seq {}), which is not in the registry (audit_relays): its registry row was deleted, or the rows were inserted",
                min.unwrap_or(0)
            ),
        });
    }
    // Relays other relays' checkpoints witnessed: still registered, and not behind what
    // was witnessed.
    for (id, (seq, why)) in &peers_witnessed {
        if let Some(reg) = registry.iter().find(|r| &r.relay_id == id) {
            if reg.shipped_seq < *seq {
                report.breaks.push(PgBreak {
                    relay_id: id.clone(),
                    seq: reg.shipped_seq + 1,
                    kind: "tail_cut",
                    detail: format!(
                        "the registry says relay {id:?} shipped up to seq {}, but {why}: its newest rows were cut and its registry row rewound",
                        reg.shipped_seq
                    ),
                });
            }
        }
        witnesses.entry(id.clone()).or_insert((*seq, why.clone()));
    }
    // Relays the store names elsewhere whose registry row and rows are gone.
    for (id, (seq, why)) in &witnesses {
        if registered.contains(id.as_str()) || with_rows.contains(id) {
            continue;
        }
        report.breaks.push(PgBreak {
            relay_id: id.clone(),
            seq: *seq,
            kind: "vanished_relay",
            detail: format!(
                "relay {id:?} is not in the registry and the store holds none of its rows, yet {why}: its chain was deleted together with its registry row"
            ),
        });
    }
    if opts.public_key.is_none() {
        report.notes.push(
            "no public key: checkpoint signatures were not checked, only their key ids against the registry (set integrity.signing_key_file or --public-key)".into(),
        );
    }
    report.notes.push(
        "a relay deleted together with its registry row is found when the store names it elsewhere: another relay's checkpoint witnessed it (peers), a purge of its rows, or the schema's creator".into(),
    );
    tx.commit()
        .await
        .map_err(pg("ending the read-only transaction"))?;
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::integrity::GENESIS;

    fn chain(n: i64) -> Vec<ChainRow> {
        let mut prev = GENESIS;
        (1..=n)
            .map(|seq| {
                let mut r = ChainRow {
                    seq,
                    ts_ms: 1_000 + seq,
                    id: uuid::Uuid::from_u128(seq as u128).as_bytes().to_vec(),
                    org: 1,
                    organization_id: Some("o".into()),
                    actor: "a".into(),
                    action: "x".into(),
                    body: format!("{{\"n\":{seq}}}"),
                    hash: None,
                };
                let h = r.hash_at(&prev, seq);
                r.hash = Some(h);
                prev = h;
                r
            })
            .collect()
    }

    fn reg(rows: &[ChainRow]) -> Registered {
        let last = rows.last().unwrap();
        Registered {
            relay_id: "a".into(),
            first_seq: 1,
            anchor: GENESIS.to_vec(),
            shipped_seq: last.seq,
            chain_head: last.hash.unwrap().to_vec(),
            key_id: None,
        }
    }

    fn walk(reg: &Registered, runs: &Runs, rows: Vec<ChainRow>) -> Option<PgBreak> {
        let mut w = Walk::new(reg, None, runs);
        let mut after = rows.clone();
        for r in rows {
            after.remove(0);
            if w.row(r).is_break() {
                break;
            }
        }
        if let Some(r) = w.failed.take() {
            let rest: Vec<ChainRow> = after.into_iter().filter(|k| k.seq > r.seq).collect();
            return Some(diagnose("a", &r, &w.prev(), &rest));
        }
        w.end();
        w.broken
    }

    fn run(rows: &[ChainRow], from: i64, to: i64, pid: i64) -> (i64, PurgedRun) {
        (
            from,
            PurgedRun {
                to_seq: to,
                head: rows[to as usize - 1].hash,
                pid,
                problem: None,
            },
        )
    }

    #[test]
    fn an_intact_chain_and_one_with_exactly_purged_gaps_verify() {
        let rows = chain(20);
        let r = reg(&rows);
        assert_eq!(walk(&r, &Runs::new(), rows.clone()), None);
        // Two purges, adjacent runs, and one at the start.
        let runs: Runs = [
            run(&rows, 1, 3, 1),
            run(&rows, 8, 9, 1),
            run(&rows, 10, 12, 2),
        ]
        .into_iter()
        .collect();
        let kept: Vec<ChainRow> = rows
            .iter()
            .filter(|x| !(1..=3).contains(&x.seq) && !(8..=12).contains(&x.seq))
            .cloned()
            .collect();
        assert_eq!(walk(&r, &runs, kept.clone()), None);
        // The whole tail purged: the registry's head is the last run's.
        let runs: Runs = [run(&rows, 15, 20, 3)].into_iter().collect();
        let kept: Vec<ChainRow> = rows.iter().filter(|x| x.seq < 15).cloned().collect();
        assert_eq!(walk(&r, &runs, kept), None);
    }

    #[test]
    fn gaps_changes_swaps_and_the_registry_are_named() {
        let rows = chain(20);
        let r = reg(&rows);
        let kind_seq = |b: Option<PgBreak>| b.map(|b| (b.kind, b.seq));
        let without =
            |s: i64| -> Vec<ChainRow> { rows.iter().filter(|x| x.seq != s).cloned().collect() };
        assert_eq!(
            kind_seq(walk(&r, &Runs::new(), without(7))),
            Some(("removed", 7))
        );
        // A purge that covers only part of the gap.
        let runs: Runs = [run(&rows, 6, 6, 1)].into_iter().collect();
        let gap: Vec<ChainRow> = rows
            .iter()
            .filter(|x| !(6..=7).contains(&x.seq))
            .cloned()
            .collect();
        assert_eq!(kind_seq(walk(&r, &runs, gap)), Some(("unexplained_gap", 6)));
        // A purge that is not to be trusted.
        let mut bad = run(&rows, 7, 7, 1);
        bad.1.problem = Some(("purge_too_young", "too young".into()));
        let runs: Runs = [bad].into_iter().collect();
        assert_eq!(
            kind_seq(walk(&r, &runs, without(7))),
            Some(("purge_too_young", 7))
        );
        let mut changed = rows.clone();
        changed[4].body = "{\"n\":0}".into();
        assert_eq!(
            kind_seq(walk(&r, &Runs::new(), changed)),
            Some(("changed", 5))
        );
        // Contents exchanged, hashes left in place.
        let mut swapped = rows.clone();
        let (a, b) = (swapped[9].clone(), swapped[10].clone());
        swapped[9] = ChainRow {
            seq: 10,
            hash: a.hash,
            ..b.clone()
        };
        swapped[10] = ChainRow {
            seq: 11,
            hash: b.hash,
            ..a
        };
        assert_eq!(
            kind_seq(walk(&r, &Runs::new(), swapped)),
            Some(("reordered", 10))
        );
        let cut: Vec<ChainRow> = rows.iter().filter(|x| x.seq <= 17).cloned().collect();
        assert_eq!(
            kind_seq(walk(&r, &Runs::new(), cut)),
            Some(("tail_cut", 18))
        );
        assert_eq!(
            kind_seq(walk(&r, &Runs::new(), Vec::new())),
            Some(("vanished_relay", 1))
        );
        let behind = Registered {
            shipped_seq: 19,
            ..r.clone()
        };
        assert_eq!(
            kind_seq(walk(&behind, &Runs::new(), rows.clone())),
            Some(("inserted", 20))
        );
        let other_head = Registered {
            chain_head: vec![1; 32],
            ..r.clone()
        };
        assert_eq!(
            kind_seq(walk(&other_head, &Runs::new(), rows.clone())),
            Some(("registry_mismatch", 20))
        );
    }

    /// `rows` with a checkpoint by `signer` appended (covering the last row), chained.
    fn with_checkpoint(
        mut rows: Vec<ChainRow>,
        signer: &crate::integrity::Signer,
        head: Option<[u8; 32]>,
    ) -> Vec<ChainRow> {
        let last = rows.last().unwrap().clone();
        let cp = signer.sign(last.seq, head.unwrap_or(last.hash.unwrap()), 5_000);
        let mut r = ChainRow {
            seq: last.seq + 1,
            ts_ms: 5_000,
            id: uuid::Uuid::from_u128(999).as_bytes().to_vec(),
            org: CHECKPOINT_ORG,
            organization_id: Some(String::new()),
            actor: "audit-relay".into(),
            action: "checkpoint".into(),
            body: cp.to_json(),
            hash: None,
        };
        r.hash = Some(r.hash_at(&last.hash.unwrap(), r.seq));
        rows.push(r);
        rows
    }

    #[test]
    fn checkpoints_are_checked_against_the_key_the_registry_and_the_chain() {
        use crate::integrity::Signer;
        use ed25519_dalek::SigningKey;
        let signer = Signer::from_key(SigningKey::from_bytes(&[7; 32]));
        let other = Signer::from_key(SigningKey::from_bytes(&[8; 32]));
        let rows = with_checkpoint(chain(5), &signer, None);
        let r = Registered {
            key_id: Some(signer.key_id().to_string()),
            ..reg(&rows)
        };
        let ring: KeyRing = signer.public_key().into();
        let run = |reg: &Registered, key: Option<&KeyRing>, rows: &[ChainRow]| {
            let runs = Runs::new();
            let mut w = Walk::new(reg, key, &runs);
            for x in rows {
                if w.row(x.clone()).is_break() {
                    break;
                }
            }
            w.end();
            (w.broken.map(|b| (b.kind, b.seq)), w.report)
        };
        let (b, rep) = run(&r, Some(&ring), &rows);
        assert_eq!(b, None);
        assert_eq!(
            (rep.checkpoints, rep.signed_checkpoints, rep.covered_through),
            (1, 1, 5)
        );
        // Without a key: the key id must be the registry's.
        assert_eq!(run(&r, None, &rows).0, None);
        let foreign = with_checkpoint(chain(5), &other, None);
        let rf = Registered {
            key_id: r.key_id.clone(),
            ..reg(&foreign)
        };
        assert_eq!(run(&rf, None, &foreign).0, Some(("foreign_key", 6)));
        assert_eq!(
            run(&rf, Some(&ring), &foreign).0,
            Some(("forged_checkpoint", 6))
        );
        // A signed head that is not the chain's: rows before it were rewritten.
        let wrong = with_checkpoint(chain(5), &signer, Some([3; 32]));
        let rw = Registered {
            key_id: r.key_id.clone(),
            ..reg(&wrong)
        };
        assert_eq!(
            run(&rw, Some(&ring), &wrong).0,
            Some(("checkpoint_mismatch", 5))
        );
        // A key given, but nothing signed vouches for the rows.
        let plain = chain(5);
        assert_eq!(
            run(&reg(&plain), Some(&ring), &plain).0,
            Some(("unsigned", 1))
        );
    }

    #[test]
    fn a_purge_must_be_a_dropped_day_old_enough_whose_runs_count_its_rows() {
        let day = 20_000 * DAY_MS;
        let p = PurgeRow {
            pid: 1,
            at_ms: day + 10 * DAY_MS,
            partition: schema::partition_name(day),
            from_ms: day,
            to_ms: day + DAY_MS,
            rows: 3,
            runs: serde_json::Value::Null,
        };
        let runs = vec![Run {
            relay_id: "a".into(),
            from_seq: 1,
            to_seq: 3,
            head: String::new(),
        }];
        let none = BTreeSet::new();
        assert_eq!(purge_problem(&p, &runs, &none, 9), None);
        assert_eq!(
            purge_problem(&p, &runs, &none, 10).map(|x| x.0),
            Some("purge_too_young")
        );
        assert_eq!(
            purge_problem(&p, &runs, &[day].into_iter().collect(), 9).map(|x| x.0),
            Some("forged_purge")
        );
        let more = PurgeRow {
            rows: 4,
            ..p.clone()
        };
        assert_eq!(
            purge_problem(&more, &runs, &none, 9).map(|x| x.0),
            Some("forged_purge")
        );
        let renamed = PurgeRow {
            partition: "audit_events_p20990101".into(),
            ..p
        };
        assert_eq!(
            purge_problem(&renamed, &runs, &none, 9).map(|x| x.0),
            Some("forged_purge")
        );
    }
}
