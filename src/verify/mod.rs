//! `audit-relay verify`: checks the spool against its hash chain and its signed checkpoints,
//! and reports the first broken sequence number with what broke.

use crate::integrity::{to_hex, Checkpoint, KeyRing, GENESIS};
use crate::spool::{ChainMeta, ChainRow, Spool, SpoolError};
use serde::Serialize;
use std::fmt;
use std::ops::ControlFlow;

pub mod cloudwatch;

/// How far ahead the diagnosis of a break looks for a moved event.
const REORDER_LOOKAHEAD: i64 = 100_000;

/// What broke, at which sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    pub seq: i64,
    /// `changed`, `removed`, `inserted`, `reordered`, `tail_cut`, `forged_checkpoint`,
    /// `checkpoint_mismatch`, `unsigned`.
    pub kind: &'static str,
    pub detail: String,
}

/// The outcome of a verification.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// The sequence range checked.
    pub from_seq: i64,
    pub to_seq: i64,
    /// Rows checked (events and checkpoints).
    pub rows: u64,
    pub checkpoints: u64,
    /// Checkpoints whose signature was checked and holds.
    pub signed_checkpoints: u64,
    /// The newest sequence number covered by a valid checkpoint.
    pub covered_through: i64,
    /// The chain hash at `to_seq`.
    pub chain_head: String,
    /// Where verification started from: `genesis`, `purge anchor at N`, `checkpoint at N`.
    pub anchor: String,
    /// Things an auditor should know that are not breaks.
    pub notes: Vec<String>,
    /// The first break, if any: verification stops there.
    pub broken: Option<Break>,
}

impl Report {
    pub fn ok(&self) -> bool {
        self.broken.is_none()
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "spool: checked seq {}..={} ({} rows) from {}",
            self.from_seq, self.to_seq, self.rows, self.anchor
        )?;
        writeln!(
            f,
            "spool: {} checkpoint(s), {} with a valid signature; covered through seq {}; chain head {}",
            self.checkpoints, self.signed_checkpoints, self.covered_through, self.chain_head
        )?;
        for n in &self.notes {
            writeln!(f, "spool: note: {n}")?;
        }
        if let Some(b) = &self.broken {
            writeln!(
                f,
                "spool: BROKEN at seq {} ({}): {}",
                b.seq, b.kind, b.detail
            )?;
        }
        Ok(())
    }
}

impl fmt::Display for cloudwatch::CloudWatchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "cloudwatch: {} stream(s) of {}: {} messages, {} events match the spool ({} re-sent copies), {} checkpoint(s), {} with a valid signature, {} older than the spool",
            self.streams.len(),
            self.group,
            self.messages,
            self.matched,
            self.resent,
            self.checkpoints,
            self.signed_checkpoints,
            self.older_than_spool
        )?;
        for (what, list) in [
            ("missing from CloudWatch", &self.missing),
            ("added to CloudWatch", &self.added),
            ("altered in CloudWatch", &self.altered),
            ("checkpoint problem(s)", &self.checkpoint_problems),
        ] {
            if list.count > 0 {
                writeln!(f, "cloudwatch: {} {what}:", list.count)?;
                for x in &list.first {
                    writeln!(f, "cloudwatch:   {}", x.detail)?;
                }
            }
        }
        Ok(())
    }
}

/// What to check.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// First and last sequence number to check (default: all).
    pub from: Option<i64>,
    pub to: Option<i64>,
    /// The key checkpoints must be signed with; `None`: signatures are not checked.
    pub public_key: Option<KeyRing>,
}

struct Walk<'a> {
    key: Option<&'a KeyRing>,
    prev: [u8; 32],
    expected: i64,
    report: Report,
    /// The row where the chain broke, for the diagnosis.
    failed: Option<ChainRow>,
}

impl Walk<'_> {
    fn brk(&mut self, seq: i64, kind: &'static str, detail: String) -> ControlFlow<()> {
        self.report.broken = Some(Break { seq, kind, detail });
        ControlFlow::Break(())
    }

    fn row(&mut self, r: ChainRow) -> ControlFlow<()> {
        if r.seq > self.expected {
            let detail = if r.seq == self.expected + 1 {
                format!("the event at seq {} was removed", self.expected)
            } else {
                format!(
                    "events at seq {}..={} were removed",
                    self.expected,
                    r.seq - 1
                )
            };
            return self.brk(self.expected, "removed", detail);
        }
        if r.seq < self.expected {
            return self.brk(
                r.seq,
                "inserted",
                format!(
                    "a row with seq {} was inserted before the start of the chain (seq {})",
                    r.seq, self.expected
                ),
            );
        }
        if r.is_checkpoint() {
            if let ControlFlow::Break(()) = self.checkpoint(&r) {
                return ControlFlow::Break(());
            }
        }
        let h = r.hash_at(&self.prev, r.seq);
        if r.hash != Some(h) {
            self.failed = Some(r);
            return ControlFlow::Break(());
        }
        self.prev = h;
        self.expected += 1;
        self.report.rows += 1;
        self.report.to_seq = r.seq;
        ControlFlow::Continue(())
    }

    fn checkpoint(&mut self, r: &ChainRow) -> ControlFlow<()> {
        let cp = match Checkpoint::from_json(&r.body, false) {
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
        if let Some(key) = self.key {
            match (&cp.signed, key.verify(&cp)) {
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
            }
        }
        if cp.chain_head != self.prev {
            return self.brk(
                cp.sequence,
                "checkpoint_mismatch",
                format!(
                    "the checkpoint at seq {} records chain head {} for seq {}, but the stored events hash to {}: events up to seq {} were rewritten",
                    r.seq,
                    to_hex(&cp.chain_head),
                    cp.sequence,
                    to_hex(&self.prev),
                    cp.sequence
                ),
            );
        }
        self.report.checkpoints += 1;
        self.report.signed_checkpoints += signed as u64;
        self.report.covered_through = cp.sequence;
        ControlFlow::Continue(())
    }
}

/// Verifies the spool (or the range in `opts`), in one read snapshot (a running relay
/// may go on writing meanwhile).
pub fn verify_spool(spool: &Spool, opts: &Options) -> Result<Report, SpoolError> {
    spool.in_snapshot(|| verify_snapshot(spool, opts))
}

fn verify_snapshot(spool: &Spool, opts: &Options) -> Result<Report, SpoolError> {
    let meta = spool.chain_meta()?;
    let mut walk = Walk {
        key: opts.public_key.as_ref(),
        prev: GENESIS,
        expected: meta.purged_through + 1,
        report: Report::default(),
        failed: None,
    };
    walk.report.anchor = "genesis".into();
    if meta.purged_through > 0 {
        match meta.purge_anchor {
            Some(a) => {
                walk.prev = a;
                walk.report.anchor = format!(
                    "retention purge through seq {} (the next checkpoint confirms it)",
                    meta.purged_through
                );
            }
            None => {
                walk.report.broken = Some(Break {
                    seq: meta.purged_through,
                    kind: "removed",
                    detail: "the spool records a purge but not its anchor hash".into(),
                });
                return Ok(walk.report);
            }
        }
    }
    let mut start = walk.expected;
    // A row below the start (seq <= 0, or inside the purged range) is outside the chain,
    // yet a query would serve it.
    if opts.from.is_none() {
        let mut stray = None;
        spool.chain_each(i64::MIN, start - 1, |r| {
            stray = Some(r.seq);
            ControlFlow::Break(())
        })?;
        if let Some(seq) = stray {
            walk.report.broken = Some(Break {
                seq,
                kind: "inserted",
                detail: format!(
                    "a row with seq {seq} was inserted before the start of the chain (seq {start})"
                ),
            });
            return Ok(walk.report);
        }
    }
    if let Some(from) = opts.from.filter(|f| *f > start) {
        // Start at the checkpoint at or before `from`: its signed head is the anchor.
        if let Some(cp_row) = spool.checkpoint_at_or_before(from)?.filter(|c| *c > start) {
            let mut anchor = None;
            spool.chain_each(cp_row, cp_row, |r| {
                anchor = Checkpoint::from_json(&r.body, false).ok();
                ControlFlow::Break(())
            })?;
            if let Some(cp) = anchor {
                walk.prev = cp.chain_head;
                walk.expected = cp_row;
                start = cp_row;
                walk.report.anchor = format!("checkpoint at seq {cp_row}");
            }
        }
    }
    walk.report.from_seq = start;
    walk.report.to_seq = start - 1;
    let to = opts.to.unwrap_or(i64::MAX);
    spool.chain_each(start, to, |r| walk.row(r))?;
    if let Some(r) = walk.failed.take() {
        let b = diagnose(spool, &meta, &r, &walk.prev)?;
        walk.report.broken = Some(b);
    }
    let mut report = walk.report;
    report.chain_head = to_hex(&walk.prev);
    if report.broken.is_none() && opts.to.is_none() {
        tail(&meta, &walk.prev, &mut report);
    }
    if report.broken.is_none() {
        notes(&mut report, opts);
    }
    Ok(report)
}

/// Checks the end of the chain against what the writer recorded.
fn tail(meta: &ChainMeta, head: &[u8; 32], report: &mut Report) {
    let last = report.to_seq;
    if last < meta.last_seq {
        report.broken = Some(Break {
            seq: last + 1,
            kind: "tail_cut",
            detail: format!(
                "the spool ends at seq {last} but its writer recorded events up to seq {}: the tail was cut",
                meta.last_seq
            ),
        });
    } else if meta.max_cursor > last {
        report.broken = Some(Break {
            seq: last + 1,
            kind: "tail_cut",
            detail: format!(
                "the spool ends at seq {last} but events up to seq {} were forwarded: the tail was cut",
                meta.max_cursor
            ),
        });
    } else if meta.last_seq > 0 && meta.head.as_ref() != Some(head) {
        report.broken =
            Some(Break {
                seq: last,
                kind: "changed",
                detail: format!(
                "the chain ends in {} but the writer recorded {}: the newest events were rewritten",
                to_hex(head),
                meta.head.map(|h| to_hex(&h)).unwrap_or_else(|| "nothing".into())
            ),
            });
    }
}

fn notes(report: &mut Report, opts: &Options) {
    if opts.public_key.is_none() {
        report.notes.push(
            "no public key: checkpoint signatures were not checked (set integrity.signing_key_file or --public-key)".into(),
        );
    } else if report.checkpoints > 0 && report.signed_checkpoints == 0 {
        report.broken = Some(Break {
            seq: report.from_seq,
            kind: "unsigned",
            detail: "a public key was given but no checkpoint in the range is signed".into(),
        });
        return;
    }
    if report.checkpoints == 0 {
        report
            .notes
            .push("no checkpoint in the range: only the chain was checked".into());
    }
    // The newest checkpoint's own row follows what it covers.
    let uncovered = report.to_seq - report.covered_through.max(report.from_seq - 1) - 1;
    if uncovered > 0 && report.checkpoints > 0 {
        report.notes.push(format!(
            "{uncovered} row(s) after seq {} are not covered by a checkpoint yet (the next one covers them)",
            report.covered_through
        ));
    }
}

/// Names what broke at row `r`, whose stored hash does not follow `prev`.
fn diagnose(
    spool: &Spool,
    meta: &ChainMeta,
    r: &ChainRow,
    prev: &[u8; 32],
) -> Result<Break, SpoolError> {
    let s = r.seq;
    if s > meta.last_seq {
        return Ok(Break {
            seq: s,
            kind: "inserted",
            detail: format!(
                "a row was inserted at seq {s}, after the last event the writer recorded (seq {})",
                meta.last_seq
            ),
        });
    }
    let mut next = None;
    spool.chain_each(s + 1, s + 1, |n| {
        next = Some(n);
        ControlFlow::Break(())
    })?;
    if let Some(n) = &next {
        if n.hash == Some(n.hash_at(prev, s)) {
            // The next row belongs at `s`: either two rows were swapped, or one was
            // inserted and the rest shifted.
            let swapped = r
                .hash
                .is_some_and(|rh| Some(r.hash_at(&rh, s + 1)) == n.hash)
                || n.hash
                    .is_some_and(|nh| r.hash == Some(r.hash_at(&nh, s + 1)));
            return Ok(if swapped {
                Break {
                    seq: s,
                    kind: "reordered",
                    detail: format!("the events at seq {s} and {} were swapped", s + 1),
                }
            } else {
                Break {
                    seq: s,
                    kind: "inserted",
                    detail: format!(
                        "a row was inserted at seq {s} (the events after it are shifted by one)"
                    ),
                }
            });
        }
    }
    // A moved event: a later row hashes correctly at `s`, or holds the hash of this row.
    let mut moved = None;
    spool.chain_each(s + 1, s + REORDER_LOOKAHEAD, |k| {
        if k.hash == Some(k.hash_at(prev, s)) || r.hash == Some(k.hash_at(prev, s)) {
            moved = Some(k.seq);
            return ControlFlow::Break(());
        }
        ControlFlow::Continue(())
    })?;
    if let Some(k) = moved {
        return Ok(Break {
            seq: s,
            kind: "reordered",
            detail: format!("the event that belongs at seq {s} is stored at seq {k}"),
        });
    }
    if r.hash.is_none() {
        return Ok(Break {
            seq: s,
            kind: "changed",
            detail: format!("the row at seq {s} has no chain hash"),
        });
    }
    let what = if r.is_checkpoint() {
        "checkpoint row"
    } else {
        "event"
    };
    Ok(Break {
        seq: s,
        kind: "changed",
        detail: format!(
            "the {what} at seq {s} was changed: its content no longer matches its hash"
        ),
    })
}
