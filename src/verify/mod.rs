//! `audit-relay verify`: checks the spool against its hash chain and its signed checkpoints,
//! and reports the first broken sequence number with what broke.

use crate::integrity::{to_hex, ChainCheckpoint, KeyRing, GENESIS};
use crate::spool::{ChainMeta, ChainRow, LedgerEntry, Spool, SpoolError};
use serde::Serialize;
use std::fmt;
use std::ops::ControlFlow;
use std::time::Duration;

pub mod cloudwatch;

/// How far ahead the diagnosis of a break looks for a moved event.
const REORDER_LOOKAHEAD: i64 = 100_000;

/// What broke, at which sequence number.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Break {
    pub seq: i64,
    /// `changed`, `removed`, `inserted`, `reordered`, `tail_cut`, `forged_checkpoint`,
    /// `checkpoint_mismatch`, `unsigned`, `forged_ledger`, `purge_unconfirmed` (a cut of the oldest rows
    /// that retention did not make), `stale_checkpoint` (the newest checkpoint is much
    /// older than the writer's last commit: the newest rows were cut).
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
    /// Forwarding-ledger rows (rejections recorded in the chain).
    pub ledger_rows: u64,
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
            "cloudwatch: {} stream(s) of {}: {} messages, {} events match the spool ({} re-sent copies), {} checkpoint(s), {} with a valid signature, {} older than the spool, {} refused (recorded in the chain)",
            self.streams.len(),
            self.group,
            self.messages,
            self.matched,
            self.resent,
            self.checkpoints,
            self.signed_checkpoints,
            self.older_than_spool,
            self.rejected
        )?;
        for (what, list) in [
            ("missing from CloudWatch", &self.missing),
            ("added to CloudWatch", &self.added),
            ("altered in CloudWatch", &self.altered),
            ("checkpoint problem(s)", &self.checkpoint_problems),
            ("missing tail", &self.missing_tail),
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
    /// `spool.retention_days`: a cut of the oldest rows must be confirmed by a checkpoint
    /// at least this old (retention never cuts younger rows). `None`: not checked.
    pub retention: Option<Duration>,
    /// `integrity.checkpoint_interval`: the newest checkpoint may be older than the
    /// writer's last commit by at most twice this. `None`: not checked.
    pub checkpoint_interval: Option<Duration>,
    /// The time to judge ages against, ms since the epoch (default: the clock).
    pub now_ms: Option<i64>,
}

impl Options {
    fn now_ms(&self) -> i64 {
        self.now_ms.unwrap_or_else(|| {
            (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
        })
    }
}

/// A cut of the oldest rows, waiting for the checkpoint that confirms it.
struct PendingCut {
    /// Rows up to here are gone.
    through: i64,
    /// The confirming checkpoint must be older than this (ms); `None`: not checked.
    cutoff_ms: Option<i64>,
}

struct Walk<'a> {
    key: Option<&'a KeyRing>,
    prev: [u8; 32],
    expected: i64,
    report: Report,
    /// The row where the chain broke, for the diagnosis.
    failed: Option<ChainRow>,
    /// A retention cut not confirmed yet by the first checkpoint after it.
    cut: Option<PendingCut>,
    /// The newest valid checkpoint (signed, when a key is given): its row and time.
    newest: Option<(i64, i64)>,
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
                        format!("the forwarding-ledger row at seq {} is unreadable: {e}", r.seq),
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
        self.expected += 1;
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
        if let Some(cut) = self.cut.take() {
            // The first checkpoint after a cut vouches for it: its chain head confirms the
            // purge anchor (checked above), its signature that nobody wrote it afterwards,
            // and its time that retention could cut there at all.
            if self.key.is_some() && !signed {
                return self.brk(
                    r.seq,
                    "purge_unconfirmed",
                    format!(
                        "the spool was cut through seq {} as if by retention, but the first checkpoint after the cut (seq {}) is not signed",
                        cut.through, r.seq
                    ),
                );
            }
            if let Some(cutoff) = cut.cutoff_ms.filter(|c| cp.time_ms >= *c) {
                let days = (cp.time_ms - cutoff) as f64 / 86_400_000.0;
                return self.brk(
                    r.seq,
                    "purge_unconfirmed",
                    format!(
                        "the spool was cut through seq {} as if by retention, but the first checkpoint after the cut (seq {}) was written at {}, {days:.1} day(s) too recent for spool.retention_days: retention never cuts there, so rows were deleted",
                        cut.through,
                        r.seq,
                        crate::event::format_timestamp_ms(cp.time_ms)
                    ),
                );
            }
        }
        if signed || self.key.is_none() {
            self.newest = Some((r.seq, cp.time_ms));
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
        cut: None,
        newest: None,
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
    let now = opts.now_ms();
    if meta.purged_through > 0 {
        walk.cut = Some(PendingCut {
            through: meta.purged_through,
            cutoff_ms: opts.retention.map(|r| now - r.as_millis() as i64),
        });
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
                anchor = ChainCheckpoint::from_json(&r.body, false).ok();
                ControlFlow::Break(())
            })?;
            if let Some(cp) = anchor {
                walk.prev = cp.chain_head;
                walk.expected = cp_row;
                start = cp_row;
                walk.report.anchor = format!("checkpoint at seq {cp_row}");
                // The range starts after the cut: whether it was retention's is not asked.
                walk.cut = None;
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
        if let Some(cut) = &walk.cut {
            report.broken = Some(Break {
                seq: cut.through + 1,
                kind: "purge_unconfirmed",
                detail: format!(
                    "the spool was cut through seq {} but no checkpoint after the cut confirms it: rows were deleted",
                    cut.through
                ),
            });
        }
    }
    if report.broken.is_none() && opts.to.is_none() {
        tail(&meta, &walk.prev, &mut report);
    }
    if report.broken.is_none() {
        notes(&mut report, opts);
    }
    if report.broken.is_none() && opts.to.is_none() {
        stale(&meta, opts, walk.newest, &mut report);
    }
    Ok(report)
}

/// The writer checkpoints at least every `checkpoint_interval` while it runs (also when
/// idle), and its first checkpoint comes that long after its start: a newest checkpoint
/// much older than the last commit means the rows after it were cut, with the writer's
/// bookkeeping rewritten to match.
fn stale(meta: &ChainMeta, opts: &Options, newest: Option<(i64, i64)>, report: &mut Report) {
    let (Some(interval), Some((seq, time_ms))) = (opts.checkpoint_interval, newest) else {
        return;
    };
    let since = time_ms.max(meta.opened_ms);
    let late = meta.last_commit_ms - since;
    if late > 2 * interval.as_millis() as i64 {
        let signed = if opts.public_key.is_some() {
            "signed "
        } else {
            ""
        };
        report.broken = Some(Break {
            seq: seq + 1,
            kind: "stale_checkpoint",
            detail: format!(
                "the newest {signed}checkpoint (seq {seq}, written at {}) is {:.1} s older than the writer's last commit (at {}), more than twice integrity.checkpoint_interval ({} s): the writer checkpoints at least that often, so the newest rows were cut",
                crate::event::format_timestamp_ms(time_ms),
                late as f64 / 1000.0,
                crate::event::format_timestamp_ms(meta.last_commit_ms),
                interval.as_secs_f64()
            ),
        });
    }
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
    } else if report.rows > 0 && report.checkpoints == 0 && opts.to.is_none() {
        // A spool rewritten as a whole (chain recomputed, checkpoints left out) looks
        // like this: nothing signed vouches for any of it.
        report.broken = Some(Break {
            seq: report.from_seq,
            kind: "unsigned",
            detail: format!(
                "a public key was given but no checkpoint covers the {} row(s) checked: nothing signed vouches for them",
                report.rows
            ),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Durability, Envelope};
    use crate::event::{decode, format_timestamp_ms, Decoded};
    use crate::spool::AppendBatch;

    fn spool_with(n: u128, checkpoint_every: u128) -> (tempfile::TempDir, Spool) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Spool::open(dir.path(), Durability::Os, 1 << 20).unwrap();
        for i in 1..=n {
            let line = serde_json::json!({
                "id": uuid::Uuid::from_u128(i).to_string(),
                "timestamp": format_timestamp_ms(1_000 + i as i64), "action": "startWorkspace",
                "organizationId": "o", "actorId": "a", "args": [],
            })
            .to_string();
            let Decoded::Event(e) = decode(line.as_bytes(), Envelope::Event) else {
                panic!("decodes")
            };
            s.begin().unwrap();
            s.write(&AppendBatch {
                events: vec![e],
                ..Default::default()
            })
            .unwrap();
            if i % checkpoint_every == 0 {
                s.write_checkpoint(None, 2_000 + i as i64).unwrap();
            }
            s.commit().unwrap();
        }
        (dir, s)
    }

    fn meta(last_seq: i64, head: [u8; 32]) -> ChainMeta {
        ChainMeta {
            last_seq,
            head: Some(head),
            ..Default::default()
        }
    }

    #[test]
    fn an_untouched_spool_verifies_and_counts_its_rows() {
        let (_dir, s) = spool_with(10, 5);
        let r = verify_spool(&s, &Options::default()).unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!((r.rows, r.checkpoints, r.to_seq), (12, 2, 12));
        assert_eq!(
            r.covered_through, 11,
            "the second checkpoint covers seq 1..=11"
        );
        assert_eq!(r.anchor, "genesis");
    }

    #[test]
    fn a_range_starts_at_the_checkpoint_before_it() {
        let (_dir, s) = spool_with(10, 5);
        let opts = Options {
            from: Some(8),
            ..Default::default()
        };
        let r = verify_spool(&s, &opts).unwrap();
        assert!(r.ok(), "{r}");
        assert_eq!(r.anchor, "checkpoint at seq 6");
    }

    #[test]
    fn tail_tells_a_cut_tail_a_forwarded_tail_and_a_rewritten_head() {
        let head = [7u8; 32];
        let mut r = Report {
            to_seq: 10,
            ..Default::default()
        };
        tail(&meta(10, head), &head, &mut r);
        assert!(r.ok(), "the end matches what the writer recorded");

        tail(&meta(12, head), &head, &mut r);
        assert_eq!(
            r.broken.take().map(|b| (b.kind, b.seq)),
            Some(("tail_cut", 11))
        );

        let forwarded = ChainMeta {
            max_cursor: 15,
            ..meta(10, head)
        };
        tail(&forwarded, &head, &mut r);
        let b = r.broken.take().expect("forwarded past the end");
        assert!(
            b.detail.contains("up to seq 15 were forwarded"),
            "{}",
            b.detail
        );

        tail(&meta(10, [8u8; 32]), &head, &mut r);
        assert_eq!(
            r.broken.take().map(|b| (b.kind, b.seq)),
            Some(("changed", 10))
        );
    }

    #[test]
    fn stale_needs_a_checkpoint_older_than_twice_the_interval() {
        let opts = Options {
            checkpoint_interval: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let at = |last_commit_ms| ChainMeta {
            last_commit_ms,
            opened_ms: 1_000,
            ..Default::default()
        };
        let mut r = Report::default();
        stale(&at(1_000 + 120_000), &opts, Some((40, 1_000)), &mut r);
        assert!(r.ok(), "exactly twice the interval is still on time");
        stale(&at(1_000 + 120_001), &opts, Some((40, 1_000)), &mut r);
        assert_eq!(
            r.broken.take().map(|b| (b.kind, b.seq)),
            Some(("stale_checkpoint", 41))
        );
        // A writer that restarted late checkpoints an interval after its start.
        let restarted = ChainMeta {
            opened_ms: 100_000,
            ..at(1_000 + 200_000)
        };
        stale(&restarted, &opts, Some((40, 1_000)), &mut r);
        assert!(r.ok(), "{:?}", r.broken);
        // Without the interval, nothing is judged.
        stale(
            &at(i64::MAX / 2),
            &Options::default(),
            Some((40, 1_000)),
            &mut r,
        );
        assert!(r.ok());
    }
}
