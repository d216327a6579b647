//! `verify --cloudwatch`: reads the log stream(s) back and checks them against the spool
//! and against the signed checkpoints found there.
//!
//! - Every checkpoint message must be validly signed (with a key), and the spool's chain
//!   must hash to its head at its sequence number: CloudWatch is the outside anchor, so a
//!   spool rewritten (even re-signed) or cut after it no longer verifies.
//! - Every event the spool says was forwarded (cursor, not rejected) must be in CloudWatch
//!   with exactly the message the forwarder renders for it: else *missing* or *altered*.
//! - Every event message in CloudWatch must be an event of the spool: else *added*.
//!   Re-sends after a lost answer (same message twice) are counted, not failures.

use super::Options;
use crate::config::CloudWatchConfig;
use crate::forward::cloudwatch::CloudWatch;
use crate::forward::message::MessageFormat;
use crate::integrity::{to_hex, Checkpoint};
use crate::spool::{ChainMeta, Spool, SpoolError};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::ops::ControlFlow;

/// At most this many findings of each kind are listed (all are counted).
const LIST_MAX: usize = 20;

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
    /// Messages of events the spool no longer holds: not in the spool, and no newer than
    /// the newest event retention deleted. Not checked.
    pub older_than_spool: u64,
    pub missing: Findings,
    pub added: Findings,
    pub altered: Findings,
    /// Checkpoints that are forged, or that the spool's chain does not match.
    pub checkpoint_problems: Findings,
}

impl CloudWatchReport {
    pub fn ok(&self) -> bool {
        self.missing.count == 0
            && self.added.count == 0
            && self.altered.count == 0
            && self.checkpoint_problems.count == 0
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

/// Reads the configured stream(s) and checks them (see the module docs).
pub async fn verify(
    cfg: &CloudWatchConfig,
    spool: &Spool,
    opts: &Options,
) -> anyhow::Result<CloudWatchReport> {
    let streams = crate::forward::stream_names(cfg)?;
    let mut report = CloudWatchReport {
        group: cfg.log_group.clone(),
        streams: streams.clone(),
        ..Default::default()
    };
    // (timestamp, id) → digests of the messages found, one per copy.
    let mut events: HashMap<(i64, String), Vec<[u8; 32]>> = HashMap::new();
    // Covered sequence → every checkpoint message found for it (re-sends, or forgeries).
    let mut checkpoints: BTreeMap<i64, Vec<Checkpoint>> = BTreeMap::new();
    for stream in &streams {
        let cw = CloudWatch::connect(cfg, stream.clone())
            .await
            .map_err(anyhow::Error::msg)?;
        cw.read_each(|ts, message| {
            report.messages += 1;
            let head: Option<Head> = serde_json::from_str(message).ok();
            match head {
                Some(Head { kind: Some(k), .. }) if k == "checkpoint" => {
                    match Checkpoint::from_json(message, true) {
                        Ok(c) => {
                            report.checkpoints += 1;
                            checkpoints.entry(c.sequence).or_default().push(c);
                        }
                        Err(e) => report.checkpoint_problems.push(Finding {
                            seq: None,
                            id: None,
                            detail: format!("an unreadable checkpoint message in {stream}: {e}"),
                        }),
                    }
                }
                Some(Head { id: Some(id), .. }) => {
                    events.entry((ts, id)).or_default().push(digest(message))
                }
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
        })
        .await
        .map_err(anyhow::Error::msg)?;
    }
    let meta = spool.chain_meta()?;
    check_checkpoints(spool, opts, &meta, &checkpoints, &mut report)?;
    check_events(
        cfg,
        spool,
        opts,
        &meta,
        &mut events,
        &checkpoints,
        &mut report,
    )?;
    Ok(report)
}

fn check_checkpoints(
    spool: &Spool,
    opts: &Options,
    meta: &ChainMeta,
    found: &BTreeMap<i64, Vec<Checkpoint>>,
    report: &mut CloudWatchReport,
) -> Result<(), SpoolError> {
    for (seq, copies) in found {
        // Every copy is checked; an identical later copy is a re-send.
        for (i, c) in copies.iter().enumerate() {
            if copies[..i].contains(c) {
                report.resent += 1;
                continue;
            }
            check_checkpoint(spool, opts, meta, *seq, c, report)?;
        }
    }
    Ok(())
}

fn check_checkpoint(
    spool: &Spool,
    opts: &Options,
    meta: &ChainMeta,
    seq: i64,
    c: &Checkpoint,
    report: &mut CloudWatchReport,
) -> Result<(), SpoolError> {
    let seq = &seq;
    {
        if let Some(key) = &opts.public_key {
            match key.verify(c) {
                Ok(()) => report.signed_checkpoints += 1,
                Err(e) => {
                    report.checkpoint_problems.push(Finding {
                        seq: Some(*seq),
                        id: None,
                        detail: format!("the checkpoint in CloudWatch covering seq {seq} is not validly signed: {e}"),
                    });
                    return Ok(());
                }
            }
        }
        if *seq <= meta.purged_through {
            return Ok(());
        }
        let mut stored = None;
        spool.chain_each(*seq, *seq, |r| {
            stored = Some(r);
            ControlFlow::Break(())
        })?;
        match stored {
            None => report.checkpoint_problems.push(Finding {
                seq: Some(*seq),
                id: None,
                detail: format!(
                    "CloudWatch holds a checkpoint covering seq {seq}, which the spool does not hold: the spool was cut"
                ),
            }),
            Some(r) if r.hash != Some(c.chain_head) => report.checkpoint_problems.push(Finding {
                seq: Some(*seq),
                id: None,
                detail: format!(
                    "the spool's chain at seq {seq} is {}, but the checkpoint in CloudWatch says {}: the spool was rewritten",
                    r.hash.map(|h| to_hex(&h)).unwrap_or_else(|| "missing".into()),
                    to_hex(&c.chain_head)
                ),
            }),
            Some(_) => {}
        }
    }
    Ok(())
}

fn check_events(
    cfg: &CloudWatchConfig,
    spool: &Spool,
    opts: &Options,
    meta: &ChainMeta,
    events: &mut HashMap<(i64, String), Vec<[u8; 32]>>,
    checkpoints: &BTreeMap<i64, Vec<Checkpoint>>,
    report: &mut CloudWatchReport,
) -> Result<(), SpoolError> {
    let format = MessageFormat::new(&cfg.static_fields, cfg.max_event_bytes.0 as usize);
    let cursor = spool.min_cursor(&crate::forward::cursor_names(Some(cfg)))?;
    let rejected = spool.rejected_seqs()?;
    let from = opts.from.unwrap_or(meta.purged_through + 1);
    let to = opts.to.unwrap_or(i64::MAX);
    spool.chain_each(from, to, |r| {
        if r.is_checkpoint() {
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
            return ControlFlow::Continue(());
        }
        let id = uuid::Uuid::from_slice(&r.id)
            .map(|u| u.to_string())
            .unwrap_or_default();
        let expected = digest(&format.render(&r.body, r.ts_ms).0);
        match events.remove(&(r.ts_ms, id.clone())) {
            Some(copies) => {
                if copies.iter().all(|d| *d == expected) {
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
            }
            None if r.seq <= cursor && !rejected.contains(&r.seq) => {
                report.missing.push(Finding {
                    seq: Some(r.seq),
                    id: Some(id),
                    detail: format!(
                        "the event at seq {} was forwarded but is not in CloudWatch",
                        r.seq
                    ),
                });
            }
            None => {}
        }
        ControlFlow::Continue(())
    })?;
    let ranged = opts.from.is_some() || opts.to.is_some();
    for ((ts, id), copies) in events.drain() {
        if ranged {
            continue;
        }
        if meta.purged_through > 0 && ts <= meta.purged_max_ts {
            report.older_than_spool += copies.len() as u64;
            continue;
        }
        report.added.push(Finding {
            seq: None,
            id: Some(id.clone()),
            detail: format!(
                "CloudWatch holds an event the spool never stored (id {id}, time {})",
                crate::event::format_timestamp_ms(ts)
            ),
        });
    }
    Ok(())
}
