//! `verify --cloudwatch`: reads the log stream(s) back and checks them against the spool
//! and against the signed checkpoints found there.
//!
//! - The streams read are every stream of the group whose name starts with a prefix
//!   (DescribeLogStreams): by default the part of `log_stream` a replaced pod keeps
//!   (`{namespace}/{pod}` → `<namespace>/`), so the streams of the relay's earlier pods,
//!   which hold the events they forwarded, are read too.
//!
//! - Every checkpoint message must be validly signed (with a key), and the spool's chain
//!   must hash to its head at its sequence number: CloudWatch is the outside anchor, so a
//!   spool rewritten (even re-signed) or cut after it no longer verifies. A checkpoint
//!   covering rows the spool no longer holds is accepted only as retention's doing: older
//!   than `spool.retention_days`; one after the spool's last row names the cut tail.
//! - Every event the spool says was forwarded (cursor) must be in CloudWatch with exactly
//!   the message the forwarder renders for it, unless the chain itself records its
//!   rejection (a forwarding-ledger row; the `rejected` table alone is not trusted): else
//!   *missing* or *altered*.
//! - Every event message in CloudWatch must be an event of the spool, or one retention
//!   deleted (older than the retention window and than the newest deleted event): else
//!   *added*. Re-sends after a lost answer (same message twice) are counted, not failures.
//! - Event ids are compared as UUIDs: `{…}`-braced or uppercase ids (as the producer wrote
//!   them, kept byte for byte in the message) match the 16 bytes the spool keys them by.
//!
//! Memory stays flat however long the streams are: what CloudWatch holds goes into a
//! private temporary SQLite database (on disk, with a bounded page cache), and the spool is
//! walked row by row against it ([`Comparison`]). Only checkpoints are held in memory
//! (one per `checkpoint_every` events or `checkpoint_interval`).

use super::Options;
use crate::config::cloudwatch::{expand_stream, StreamVars};
use crate::config::CloudWatchConfig;
use crate::forward::cloudwatch::CloudWatch;
use crate::forward::message::MessageFormat;
use crate::integrity::{to_hex, ChainCheckpoint};
use crate::spool::{ChainMeta, ChainRow, MessageIndex, Spool, SpoolError};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::ops::ControlFlow;

/// At most this many findings of each kind are listed (all are counted).
const LIST_MAX: usize = 20;
/// Page cache of the comparison's temporary database: what it keeps in memory at most.
const SCRATCH_CACHE_KIB: i64 = 32 * 1024;
/// CloudWatch takes events up to 2 hours in the future: a purged event may be stamped
/// that much later than the checkpoint that retention cut at.
const FUTURE_SLACK_MS: i64 = 2 * 3_600_000;

/// One thing CloudWatch and the spool disagree on.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    /// The spool's sequence number, when known.
    pub seq: Option<i64>,
    /// The event id, when known.
    pub id: Option<String>,
    pub detail: String,
}

/// A list that counts everything but keeps only the first few.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Findings {
    pub count: u64,
    pub first: Vec<Finding>,
}

impl Findings {
    fn push(&mut self, f: Finding) {
        self.count += 1;
        if self.first.len() < LIST_MAX {
            self.first.push(f);
        }
    }
}

/// The outcome of `verify --cloudwatch`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CloudWatchReport {
    pub group: String,
    pub streams: Vec<String>,
    pub messages: u64,
    /// Event messages that match the spool.
    pub matched: u64,
    /// Extra copies of a matched event or checkpoint message (re-sends after a lost answer).
    pub resent: u64,
    pub checkpoints: u64,
    pub signed_checkpoints: u64,
    /// Forwarded events not in CloudWatch whose rejection the chain records.
    pub rejected: u64,
    /// Messages of events the spool no longer holds: not in the spool, older than the
    /// retention window and no newer than the newest event retention deleted. Not checked.
    pub older_than_spool: u64,
    pub missing: Findings,
    pub added: Findings,
    pub altered: Findings,
    /// Checkpoints that are forged, or that the spool's chain does not match.
    pub checkpoint_problems: Findings,
    /// Rows CloudWatch has checkpoints for beyond the spool's last row: its tail was cut.
    pub missing_tail: Findings,
}

impl CloudWatchReport {
    pub fn ok(&self) -> bool {
        self.missing.count == 0
            && self.added.count == 0
            && self.altered.count == 0
            && self.checkpoint_problems.count == 0
            && self.missing_tail.count == 0
    }
}

#[derive(serde::Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: Option<String>,
    id: Option<String>,
}

fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Errors of the comparison.
#[derive(Debug, thiserror::Error)]
pub enum CompareError {
    #[error(transparent)]
    Spool(#[from] SpoolError),
    #[error("verify --cloudwatch: its temporary database: {0}")]
    Scratch(SpoolError),
}

/// Compares what CloudWatch holds with the spool, in bounded memory: feed every message
/// with [`Comparison::add_message`], then [`Comparison::finish`] walks the spool.
pub struct Comparison {
    /// A private temporary database (deleted when closed) holding one row per event
    /// message: `(ts, id, id_text, digest)`.
    scratch: MessageIndex,
    /// Covered sequence → every checkpoint message found for it (re-sends, or forgeries).
    checkpoints: BTreeMap<i64, Vec<ChainCheckpoint>>,
    report: CloudWatchReport,
}

impl Comparison {
    pub fn new(group: &str, streams: &[String]) -> Result<Comparison, CompareError> {
        let scratch = MessageIndex::new(SCRATCH_CACHE_KIB).map_err(CompareError::Scratch)?;
        Ok(Comparison {
            scratch,
            checkpoints: BTreeMap::new(),
            report: CloudWatchReport {
                group: group.to_string(),
                streams: streams.to_vec(),
                ..Default::default()
            },
        })
    }

    /// One message read back from `stream`, stamped `ts`.
    pub fn add_message(
        &mut self,
        stream: &str,
        ts: i64,
        message: &str,
    ) -> Result<(), CompareError> {
        let report = &mut self.report;
        report.messages += 1;
        let head: Option<Head> = serde_json::from_str(message).ok();
        match head {
            Some(Head { kind: Some(k), .. }) if k == "checkpoint" => {
                match ChainCheckpoint::from_json(message, true) {
                    Ok(c) => {
                        report.checkpoints += 1;
                        self.checkpoints.entry(c.sequence).or_default().push(c);
                    }
                    Err(e) => report.checkpoint_problems.push(Finding {
                        seq: None,
                        id: None,
                        detail: format!("an unreadable checkpoint message in {stream}: {e}"),
                    }),
                }
            }
            Some(Head { id: Some(id), .. }) => match uuid::Uuid::parse_str(&id) {
                Ok(uuid) => self
                    .scratch
                    .add(ts, &uuid, &id, &digest(message))
                    .map_err(CompareError::Scratch)?,
                // Every stored id is a UUID: this one was never stored.
                Err(_) => report.added.push(Finding {
                    seq: None,
                    id: Some(id.clone()),
                    detail: format!(
                        "CloudWatch holds a message in {stream} at {} whose id {id:?} is no UUID: the spool never stored it",
                        crate::event::format_timestamp_ms(ts)
                    ),
                }),
            },
            _ => report.added.push(Finding {
                seq: None,
                id: None,
                detail: format!(
                    "a message in {stream} at {} that is no audit event: {:?}",
                    crate::event::format_timestamp_ms(ts),
                    message.chars().take(80).collect::<String>()
                ),
            }),
        }
        Ok(())
    }

    /// Checks everything fed against `spool` (events rendered with `format`; `cursor`:
    /// the lowest forwarding cursor, everything up to it was forwarded).
    pub fn finish(
        mut self,
        spool: &Spool,
        opts: &Options,
        format: &MessageFormat,
        cursor: i64,
    ) -> Result<CloudWatchReport, CompareError> {
        self.scratch.seal().map_err(CompareError::Scratch)?;
        let meta = spool.chain_meta()?;
        let now = opts.now_ms();
        let cutoff = opts.retention.map(|r| now - r.as_millis() as i64);
        self.check_checkpoints(spool, opts, &meta, cutoff)?;
        // Matched messages leave the scratch index as the walk goes.
        self.check_events(spool, opts, &meta, format, cursor)?;
        if opts.from.is_none() && opts.to.is_none() {
            self.added(&meta, cutoff)?;
        }
        Ok(self.report)
    }

    fn check_checkpoints(
        &mut self,
        spool: &Spool,
        opts: &Options,
        meta: &ChainMeta,
        cutoff: Option<i64>,
    ) -> Result<(), SpoolError> {
        let mut beyond: Option<i64> = None;
        for (seq, copies) in &self.checkpoints {
            // Every copy is checked; an identical later copy is a re-send.
            for (i, c) in copies.iter().enumerate() {
                if copies[..i].contains(c) {
                    self.report.resent += 1;
                    continue;
                }
                if let Some(b) =
                    check_checkpoint(spool, opts, meta, cutoff, *seq, c, &mut self.report)?
                {
                    beyond = Some(beyond.map_or(b, |x| x.max(b)));
                }
            }
        }
        if let Some(b) = beyond {
            let last = meta.last_seq;
            self.report.missing_tail.push(Finding {
                seq: Some(last + 1),
                id: None,
                detail: format!(
                    "the spool ends at seq {last}, but CloudWatch holds signed checkpoints up to seq {b}: seq {}..={b} are missing from the spool (its tail was cut)",
                    last + 1
                ),
            });
        }
        Ok(())
    }

    fn check_events(
        &mut self,
        spool: &Spool,
        opts: &Options,
        meta: &ChainMeta,
        format: &MessageFormat,
        cursor: i64,
    ) -> Result<(), CompareError> {
        let from = opts.from.unwrap_or(meta.purged_through + 1);
        let to = opts.to.unwrap_or(i64::MAX);
        let mut failed: Option<CompareError> = None;
        let scratch = &self.scratch;
        let report = &mut self.report;
        let checkpoints = &self.checkpoints;
        spool.chain_each(from, to, |r| {
            let step = if r.is_ledger() {
                Ok(())
            } else if r.is_checkpoint() {
                if r.seq <= cursor && !checkpoints.contains_key(&(r.seq - 1)) {
                    report.missing.push(Finding {
                        seq: Some(r.seq),
                        id: None,
                        detail: format!(
                            "the checkpoint at seq {} (covering seq {}) was forwarded but is not in CloudWatch",
                            r.seq,
                            r.seq - 1
                        ),
                    });
                }
                Ok(())
            } else {
                check_event(scratch, spool, format, cursor, &r, report)
            };
            match step {
                Ok(()) => ControlFlow::Continue(()),
                Err(e) => {
                    failed = Some(e);
                    ControlFlow::Break(())
                }
            }
        })?;
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// What is left in the scratch database is in CloudWatch but not in the spool.
    fn added(&mut self, meta: &ChainMeta, cutoff: Option<i64>) -> Result<(), CompareError> {
        let report = &mut self.report;
        let left = self.scratch.each_left(|ts, id, copies| {
            // Retention deletes events whose next checkpoint is past the window: an event
            // younger than that (give or take CloudWatch's 2 hours) was not its doing.
            let old_enough = cutoff.is_none_or(|c| ts < c + FUTURE_SLACK_MS);
            if meta.purged_through > 0 && ts <= meta.purged_max_ts && old_enough {
                report.older_than_spool += copies;
                return;
            }
            let detail = if meta.purged_through > 0 && ts <= meta.purged_max_ts {
                format!(
                    "CloudWatch holds an event the spool does not (id {id}, time {}): the spool was cut through seq {} as if by retention, but this event is younger than spool.retention_days",
                    crate::event::format_timestamp_ms(ts),
                    meta.purged_through
                )
            } else {
                format!(
                    "CloudWatch holds an event the spool never stored (id {id}, time {})",
                    crate::event::format_timestamp_ms(ts)
                )
            };
            report.added.push(Finding {
                seq: None,
                id: Some(id),
                detail,
            });
        });
        left.map_err(CompareError::Scratch)
    }
}

/// Checks one spool event against the messages CloudWatch holds for its (time, id), and
/// takes them out of the scratch database.
fn check_event(
    scratch: &MessageIndex,
    spool: &Spool,
    format: &MessageFormat,
    cursor: i64,
    r: &ChainRow,
    report: &mut CloudWatchReport,
) -> Result<(), CompareError> {
    let id = uuid::Uuid::from_slice(&r.id)
        .map(|u| u.to_string())
        .unwrap_or_default();
    let expected = digest(&format.render(&r.body, r.ts_ms).0);
    let copies = scratch
        .take(r.ts_ms, &r.id)
        .map_err(CompareError::Scratch)?;
    if !copies.is_empty() {
        if copies.iter().all(|d| d.as_slice() == expected) {
            report.matched += 1;
            report.resent += copies.len() as u64 - 1;
        } else {
            report.altered.push(Finding {
                seq: Some(r.seq),
                id: Some(id),
                detail: format!(
                    "the event at seq {} differs in CloudWatch from the spool",
                    r.seq
                ),
            });
        }
        return Ok(());
    }
    if r.seq > cursor {
        return Ok(());
    }
    if spool.chained_rejection(r.seq)?.is_some() {
        report.rejected += 1;
        return Ok(());
    }
    let detail = if spool.marked_rejected(r.seq)? {
        format!(
            "the event at seq {} was forwarded but is not in CloudWatch; the `rejected` table marks it refused, but no forwarding-ledger row of the chain records that: the mark was added outside the chain",
            r.seq
        )
    } else {
        format!(
            "the event at seq {} was forwarded but is not in CloudWatch",
            r.seq
        )
    };
    report.missing.push(Finding {
        seq: Some(r.seq),
        id: Some(id),
        detail,
    });
    Ok(())
}

/// Checks one checkpoint message; returns the sequence it covers when that is beyond the
/// spool's last row (the tail was cut).
fn check_checkpoint(
    spool: &Spool,
    opts: &Options,
    meta: &ChainMeta,
    cutoff: Option<i64>,
    seq: i64,
    c: &ChainCheckpoint,
    report: &mut CloudWatchReport,
) -> Result<Option<i64>, SpoolError> {
    if let Some(key) = &opts.public_key {
        match key.verify(c) {
            Ok(()) => report.signed_checkpoints += 1,
            Err(e) => {
                report.checkpoint_problems.push(Finding {
                    seq: Some(seq),
                    id: None,
                    detail: format!("the checkpoint in CloudWatch covering seq {seq} is not validly signed: {e}"),
                });
                return Ok(None);
            }
        }
    }
    if seq <= meta.purged_through {
        // Rows the spool says retention deleted: only a checkpoint older than the
        // retention window can cover them.
        if let Some(cutoff) = cutoff.filter(|cut| c.time_ms >= *cut) {
            let days = (c.time_ms - cutoff) as f64 / 86_400_000.0;
            report.checkpoint_problems.push(Finding {
                seq: Some(seq),
                id: None,
                detail: format!(
                    "CloudWatch holds a checkpoint covering seq {seq}, which the spool cut as if by retention, but it was written at {}, {days:.1} day(s) inside spool.retention_days: the spool was cut",
                    crate::event::format_timestamp_ms(c.time_ms)
                ),
            });
        } else if seq == meta.purged_through && meta.purge_anchor != Some(c.chain_head) {
            report.checkpoint_problems.push(Finding {
                seq: Some(seq),
                id: None,
                detail: format!(
                    "the spool's purge anchor at seq {seq} is {}, but the checkpoint in CloudWatch says {}: the spool's bookkeeping was rewritten",
                    meta.purge_anchor.map(|h| to_hex(&h)).unwrap_or_else(|| "missing".into()),
                    to_hex(&c.chain_head)
                ),
            });
        }
        return Ok(None);
    }
    let mut stored = None;
    spool.chain_each(seq, seq, |r| {
        stored = Some(r);
        ControlFlow::Break(())
    })?;
    match stored {
        None if seq > meta.last_seq => {
            report.checkpoint_problems.push(Finding {
                seq: Some(seq),
                id: None,
                detail: format!(
                    "CloudWatch holds a checkpoint covering seq {seq}, after the spool's last row (seq {}): the spool's tail was cut",
                    meta.last_seq
                ),
            });
            return Ok(Some(seq));
        }
        None => report.checkpoint_problems.push(Finding {
            seq: Some(seq),
            id: None,
            detail: format!(
                "CloudWatch holds a checkpoint covering seq {seq}, which the spool does not hold: the spool was cut"
            ),
        }),
        Some(r) if r.hash != Some(c.chain_head) => report.checkpoint_problems.push(Finding {
            seq: Some(seq),
            id: None,
            detail: format!(
                "the spool's chain at seq {seq} is {}, but the checkpoint in CloudWatch says {}: the spool was rewritten",
                r.hash.map(|h| to_hex(&h)).unwrap_or_else(|| "missing".into()),
                to_hex(&c.chain_head)
            ),
        }),
        Some(_) => {}
    }
    Ok(None)
}

/// The part of the stream template that stays when the pod is replaced: everything
/// before the first `{pod}` or `{hostname}` (a new pod has a new name), expanded; the
/// whole name when it has neither (with `streams` above 1 the shards' `-0`, `-1`, ...
/// follow it).
pub fn default_prefix(template: &str, vars: &StreamVars) -> Result<String, String> {
    let cut = ["{pod}", "{hostname}"]
        .iter()
        .filter_map(|p| template.find(p))
        .min();
    match cut {
        Some(0) => Ok(String::new()),
        Some(i) => expand_prefix(&template[..i], vars),
        None => expand_stream(template, vars),
    }
}

/// Expands the placeholders of a template's leading part (which may be empty or end in
/// a separator such as `/`).
fn expand_prefix(part: &str, vars: &StreamVars) -> Result<String, String> {
    // `expand_stream` refuses an empty result: give it one character more.
    let mut s = expand_stream(&format!("{part}x"), vars)?;
    s.pop();
    Ok(s)
}

/// Every stream of the group whose name starts with `prefix` (DescribeLogStreams), by
/// name.
async fn streams_with_prefix(
    client: &aws_sdk_cloudwatchlogs::Client,
    group: &str,
    prefix: &str,
) -> anyhow::Result<Vec<String>> {
    use aws_sdk_cloudwatchlogs::error::DisplayErrorContext;
    let mut names = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = client
            .describe_log_streams()
            .log_group_name(group)
            .set_log_stream_name_prefix((!prefix.is_empty()).then(|| prefix.to_string()))
            .set_next_token(token.clone())
            .send()
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "listing the streams of {group} (DescribeLogStreams, prefix {prefix:?}): {}",
                    DisplayErrorContext(&e)
                )
            })?;
        names.extend(
            page.log_streams()
                .iter()
                .filter_map(|s| s.log_stream_name().map(str::to_string)),
        );
        match page.next_token() {
            Some(t) if Some(t) != token.as_deref() && !page.log_streams().is_empty() => {
                token = Some(t.to_string())
            }
            _ => break,
        }
    }
    names.sort();
    names.dedup();
    Ok(names)
}

/// A client for listing the group's streams, configured as the forwarder's is (region,
/// endpoint, assumed role, timeouts).
async fn list_client(cfg: &CloudWatchConfig) -> anyhow::Result<aws_sdk_cloudwatchlogs::Client> {
    crate::forward::cloudwatch::sdk_client(cfg, "audit-relay-verify", true)
        .await
        .map_err(anyhow::Error::msg)
}

/// Reads every stream of the group whose name starts with `prefix` (default:
/// [`default_prefix`] of `log_stream`, so the streams of earlier pods are read too) and
/// checks them (see the module docs).
pub async fn verify(
    cfg: &CloudWatchConfig,
    spool: &Spool,
    opts: &Options,
    prefix: Option<&str>,
) -> anyhow::Result<CloudWatchReport> {
    let prefix = match prefix {
        Some(p) => p.to_string(),
        None => default_prefix(&cfg.log_stream, &StreamVars::from_env())
            .map_err(|e| anyhow::anyhow!("cloudwatch.log_stream: {e}"))?,
    };
    let client = list_client(cfg).await?;
    let streams = streams_with_prefix(&client, &cfg.log_group, &prefix).await?;
    tracing::debug!(prefix = %prefix, streams = ?streams, "verify --cloudwatch: streams to read");
    let mut cmp = Comparison::new(&cfg.log_group, &streams)?;
    for stream in &streams {
        let cw = CloudWatch::connect(cfg, stream.clone())
            .await
            .map_err(anyhow::Error::msg)?;
        let mut failed = None;
        cw.read_each(|ts, message| {
            if failed.is_none() {
                if let Err(e) = cmp.add_message(stream, ts, message) {
                    failed = Some(e);
                }
            }
        })
        .await
        .map_err(anyhow::Error::msg)?;
        if let Some(e) = failed {
            return Err(e.into());
        }
    }
    let format = MessageFormat::new(&cfg.static_fields, cfg.max_event_bytes.0 as usize);
    let cursor = spool.min_cursor(&crate::forward::cursor_names(Some(cfg)))?;
    Ok(cmp.finish(spool, opts, &format, cursor)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Durability, Envelope};
    use crate::event::{decode, format_timestamp_ms, Decoded};
    use crate::spool::{AppendBatch, ForwardProgress, Rejection};

    fn event(id: &str, ms: i64) -> crate::event::Event {
        let line = serde_json::json!({
            "id": id, "timestamp": format_timestamp_ms(ms), "action": "startWorkspace",
            "organizationId": "0a000000-0000-0000-0a00-000000000001",
            "actorId": "0a000000-0000-0000-0a00-000000000002", "args": [1],
        })
        .to_string();
        match decode(line.as_bytes(), Envelope::Event) {
            Decoded::Event(e) => e,
            other => panic!("{other:?}"),
        }
    }

    /// A spool of four events (ids as the producer wrote them), forwarded through seq 4,
    /// the fourth rejected (recorded in the chain); and CloudWatch's copy of the first three.
    fn setup(dir: &std::path::Path) -> (Spool, Vec<(i64, String)>) {
        let ids = [
            "1ac75456-ae7d-4233-9914-32d124fa35c3".to_string(),
            "1AC75456-AE7D-4233-9914-32D124FA35C4".to_string(),
            "{1ac75456-ae7d-4233-9914-32d124fa35c5}".to_string(),
            "1ac75456-ae7d-4233-9914-32d124fa35c6".to_string(),
        ];
        let mut s = Spool::open(dir, Durability::Os, 1 << 20).unwrap();
        let events = ids
            .iter()
            .enumerate()
            .map(|(i, id)| event(id, 1000 + i as i64));
        s.append(&AppendBatch {
            events: events.collect(),
            ..Default::default()
        })
        .unwrap();
        s.begin().unwrap();
        s.write_progress(&ForwardProgress {
            cursor_name: "cloudwatch".into(),
            cursor: 4,
            forwarded: 3,
            rejected: vec![Rejection {
                seq: 4,
                reason: "too_old".into(),
                detail: String::new(),
            }],
        })
        .unwrap();
        s.commit().unwrap();
        let format = MessageFormat::new(&Default::default(), 1 << 20);
        let cw = s
            .read_after(0, 3)
            .unwrap()
            .iter()
            .map(|r| (r.ts_ms, format.render(&r.body, r.ts_ms).0))
            .collect();
        (s, cw)
    }

    fn compare(spool: &Spool, cw: &[(i64, String)]) -> CloudWatchReport {
        let mut c = Comparison::new("g", &["s".into()]).unwrap();
        for (ts, m) in cw {
            c.add_message("s", *ts, m).unwrap();
        }
        let format = MessageFormat::new(&Default::default(), 1 << 20);
        c.finish(spool, &Options::default(), &format, 4).unwrap()
    }

    #[test]
    fn the_default_prefix_is_what_a_new_pod_keeps() {
        let vars = StreamVars {
            hostname: Some("server-abc".into()),
            pod: Some("server-abc".into()),
            namespace: Some("prod".into()),
        };
        let p = |t: &str| default_prefix(t, &vars).unwrap();
        assert_eq!(p("{namespace}/{pod}"), "prod/");
        assert_eq!(p("{hostname}"), "");
        assert_eq!(p("audit-{pod}"), "audit-");
        assert_eq!(p("{namespace}"), "prod");
        assert_eq!(p("fixed"), "fixed");
    }

    #[test]
    fn ids_match_as_uuids_and_a_chained_rejection_excuses_a_missing_event() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, cw) = setup(dir.path());
        let r = compare(&spool, &cw);
        assert!(r.ok(), "{r:?}");
        assert_eq!((r.matched, r.rejected), (3, 1), "{r:?}");
        // The ledger row follows the rejected event in the chain and is not an event.
        assert!(spool.chained_rejection(4).unwrap().is_some());
        assert_eq!(spool.read_after(4, 10).unwrap().len(), 1);
        assert!(spool.read_after(4, 10).unwrap()[0].is_ledger());
    }

    #[test]
    fn a_rejection_outside_the_chain_excuses_nothing_and_a_re_send_is_counted() {
        let dir = tempfile::tempdir().unwrap();
        let (spool, mut cw) = setup(dir.path());
        // An event CloudWatch lacks, marked rejected only in the table.
        rusqlite::Connection::open(dir.path().join("spool.db"))
            .unwrap()
            .execute(
                "INSERT INTO rejected(seq, reason, detail, at_ms) VALUES (2, 'too_old', '', 0)",
                [],
            )
            .unwrap();
        let second = cw.remove(1);
        cw.push(cw[0].clone());
        let r = compare(&spool, &cw);
        assert_eq!(r.missing.count, 1, "{r:?}");
        assert_eq!(r.missing.first[0].seq, Some(2));
        assert!(
            r.missing.first[0]
                .detail
                .contains("no forwarding-ledger row"),
            "{r:?}"
        );
        assert_eq!(r.resent, 1, "{r:?}");
        // An added message, and one whose id is no UUID.
        cw.push(second);
        cw.push((
            5000,
            r#"{"id":"1ac75456-ae7d-4233-9914-32d124fa3599"}"#.into(),
        ));
        cw.push((5001, r#"{"id":"not-a-uuid"}"#.into()));
        let r = compare(&spool, &cw);
        assert_eq!((r.missing.count, r.added.count), (0, 2), "{r:?}");
    }
}
