//! Forwarding the spool to CloudWatch Logs.
//!
//! - [`batch`]: building PutLogEvents calls under CloudWatch's rules (pure).
//! - [`retry`]: classifying failures into retry actions (pure).
//! - [`message`]: the message CloudWatch gets for an event (pure).
//! - [`cloudwatch`]: the AWS SDK client (I/O).
//! - [`forwarder`]: the loop from the spool cursor to PutLogEvents.

pub mod batch;
pub mod cloudwatch;
pub mod forwarder;
pub mod message;
pub mod retry;

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
    let mut l = batch::Limits::default();
    if let Some(days) = cfg.retention_in_days {
        l.max_age_ms = l.max_age_ms.min(days as i64 * 86_400_000);
    }
    l
}

/// Builds the forwarder for `cfg` over the spool in `spool_dir`.
pub async fn build(
    cfg: &CloudWatchConfig,
    spool_dir: &Path,
    inbox: ProgressInbox,
    cancel: CancellationToken,
    health: Arc<ForwardHealth>,
) -> anyhow::Result<Forwarder> {
    let stream = expand_stream(&cfg.log_stream, &StreamVars::from_env())
        .map_err(|e| anyhow::anyhow!("cloudwatch.log_stream: {e}"))?;
    let spool = Spool::open_read_only(spool_dir).context("opening the spool for the forwarder")?;
    let cw = cloudwatch::CloudWatch::connect(cfg, stream).await;
    let format = message::MessageFormat::new(&cfg.static_fields, cfg.max_event_bytes.0 as usize);
    let opts = ForwarderOptions {
        cursor_name: crate::spool::FORWARD_CURSOR.to_string(),
        limits: limits_for(cfg),
        max_batch_wait: cfg.max_batch_wait.0,
        backoff_max: cfg.backoff_max.0,
        auth_retry_interval: cfg.auth_retry_interval.0,
    };
    Ok(Forwarder::new(
        cw, spool, inbox, format, opts, cancel, health,
    ))
}
