//! Forwarding the spool to CloudWatch Logs.
//!
//! - [`batch`]: building PutLogEvents calls under CloudWatch's rules (pure).
//! - [`retry`]: classifying failures into retry actions (pure).
//! - [`breaker`]: telling one invalid event from a stream that refuses all (pure).
//! - [`message`]: the message CloudWatch gets for an event (pure).
//! - [`cloudwatch`]: the AWS SDK client (I/O).
//! - [`supervise`]: restarting a forwarder that died.
//! - [`forwarder`]: the loop from the spool cursor to PutLogEvents; `deliver`: one
//!   batch's calls, bisection and the breaker.

pub mod batch;
pub mod breaker;
pub mod cloudwatch;
mod deliver;
pub mod forwarder;
pub mod message;
pub mod retry;
pub mod supervise;

use crate::config::cloudwatch::{expand_stream, StreamVars};
use crate::config::CloudWatchConfig;
use crate::spool::{ProgressInbox, Spool};
use anyhow::Context;
use forwarder::{ForwardHealth, Forwarder, ForwarderOptions};
use std::path::Path;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// CloudWatch's limits for this configuration: retention shorter than 14 days lowers
/// the oldest accepted age.
pub fn limits_for(cfg: &CloudWatchConfig) -> batch::Limits {
    let mut l = batch::Limits {
        max_future_ms: cfg.max_future.0.as_millis() as i64,
        ..Default::default()
    };
    if let Some(days) = cfg.retention_in_days {
        l.max_age_ms = l.max_age_ms.min(days as i64 * 86_400_000);
    }
    l
}

/// The shard (0..shards) of an organization: FNV-1a over its id, stable across
/// versions and machines.
pub fn shard_of(organization_id: &str, shards: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in organization_id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % shards.max(1) as u64) as u32
}

/// The cursor names of the configured forwarders.
pub fn cursor_names(cfg: Option<&CloudWatchConfig>) -> Vec<String> {
    match cfg.filter(|c| c.enabled) {
        Some(c) if c.streams > 1 => (0..c.streams)
            .map(|k| format!("{}/{k}/{}", crate::spool::FORWARD_CURSOR, c.streams))
            .collect(),
        _ => vec![crate::spool::FORWARD_CURSOR.to_string()],
    }
}

/// The log stream names of `cfg`, one per shard, templates expanded.
pub fn stream_names(cfg: &CloudWatchConfig) -> anyhow::Result<Vec<String>> {
    let base = expand_stream(&cfg.log_stream, &StreamVars::from_env())
        .map_err(|e| anyhow::anyhow!("cloudwatch.log_stream: {e}"))?;
    Ok(if cfg.streams > 1 {
        (0..cfg.streams).map(|k| format!("{base}-{k}")).collect()
    } else {
        vec![base]
    })
}

/// Builds the forwarders for `cfg` (one per stream) over the spool in `spool_dir`.
pub async fn build_all(
    cfg: &CloudWatchConfig,
    spool_dir: &Path,
    inbox: ProgressInbox,
    cancel: CancellationToken,
) -> anyhow::Result<Vec<(Forwarder, Arc<ForwardHealth>)>> {
    let mut out = Vec::new();
    for shard in 0..cfg.streams {
        let health = Arc::new(ForwardHealth::default());
        let f = build(
            cfg,
            shard,
            spool_dir,
            inbox.clone(),
            cancel.clone(),
            health.clone(),
        )
        .await?;
        out.push((f, health));
    }
    Ok(out)
}

/// Builds the forwarder of stream `shard` for `cfg` over the spool in `spool_dir`.
pub async fn build(
    cfg: &CloudWatchConfig,
    shard: u32,
    spool_dir: &Path,
    inbox: ProgressInbox,
    cancel: CancellationToken,
    health: Arc<ForwardHealth>,
) -> anyhow::Result<Forwarder> {
    let stream = stream_names(cfg)?.swap_remove(shard as usize);
    let spool = Spool::open_read_only(spool_dir).context("opening the spool for the forwarder")?;
    let cw = cloudwatch::CloudWatch::connect(cfg, stream)
        .await
        .map_err(anyhow::Error::msg)?;
    let format = message::MessageFormat::new(&cfg.static_fields, cfg.max_event_bytes.0 as usize);
    let opts = ForwarderOptions {
        cursor_name: cursor_names(Some(cfg))[shard as usize].clone(),
        shard,
        shards: cfg.streams,
        limits: limits_for(cfg),
        max_batch_wait: cfg.max_batch_wait.0,
        backoff_max: cfg.backoff_max.0,
        auth_retry_interval: cfg.auth_retry_interval.0,
        invalid_breaker_after: cfg.invalid_breaker_after,
        invalid_probe_interval: cfg.invalid_probe_interval.0,
    };
    Ok(Forwarder::new(
        cw, spool, inbox, format, opts, cancel, health,
    ))
}

#[cfg(test)]
mod tests {
    use super::shard_of;

    #[test]
    fn shards_are_stable_and_spread() {
        assert_eq!(shard_of("3d5e4ee2-7e5f-468f-b027-276a65518784", 1), 0);
        let a = shard_of("3d5e4ee2-7e5f-468f-b027-276a65518784", 4);
        assert_eq!(a, shard_of("3d5e4ee2-7e5f-468f-b027-276a65518784", 4));
        let mut seen = [0; 4];
        for i in 0..400 {
            seen[shard_of(&format!("org-{i}"), 4) as usize] += 1;
        }
        assert!(seen.iter().all(|n| *n > 60), "{seen:?}");
    }
}
