//! `audit-relay run`: wires the sources to the spool writer and stops them in order.
//!
//! Threads: one file source (tail, frame, decode), one standard-input source, one spool
//! writer; bounded channel between them. One async task forwards to CloudWatch.
//! Shutdown order: sources stop reading and hand over their last batch, the forwarder
//! finishes its call in flight, then the writer commits (events and forwarding
//! progress) and exits, all within `shutdown_grace`. The admin endpoints bind first,
//! then the spool is opened (and upgraded from an older format, `/readyz` saying
//! "migrating" meanwhile); the query API starts before the pipeline and stops after it.
//! One cancellation tree ([`Stages`]) reaches every task; the forwarders run under
//! supervision (restarted if they die).

use crate::admin::{self, Health};
use crate::api;
use crate::config::Config;
use crate::forward::{self, forwarder::ForwardHealth};
use crate::installation::ship::{ShipHealth, Shipper, PG_CURSOR};
use crate::integrity::Signer;
use crate::source::{stdin, tail::FileSource, Collector};
use crate::spool::{
    AppendBatch, EventInbox, ProgressInbox, Spool, SpoolWriter, Upkeep, WriterOptions,
};
use anyhow::{anyhow, Context};
use std::sync::atomic::Ordering;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Batches in flight between the sources and the writer.
const CHANNEL_BATCHES: usize = 4;
/// How long the query API's open connections may take to finish after the pipeline stopped.
const API_DRAIN: Duration = Duration::from_secs(5);

/// Runs `f` on a named OS thread (names show in `top -H` and profiles); the receiver
/// answers with its result, or an error if it panicked.
fn spawn_thread<T: Send + 'static>(
    name: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> tokio::sync::oneshot::Receiver<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.to_string())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .expect("spawning a thread");
    rx
}

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A shutdown signal arrived and everything was committed in time.
    Signal,
    /// Every source reached its end (standard input only) and everything was committed.
    SourcesDone,
}

/// The run's one cancellation tree. Each stage's token is a child of the stage that
/// stops after it, so the stages are stopped one at a time, in order (sources →
/// forwarders → writer → API and admin), and cancelling the root stops every one of
/// them: it is cancelled last, and on any early return by its drop guard, so that no
/// task outlives the run.
struct Stages {
    /// The query API and the admin endpoints (they stop last).
    root: CancellationToken,
    writer: CancellationToken,
    forward: CancellationToken,
    sources: CancellationToken,
}

impl Stages {
    fn new() -> Stages {
        let root = CancellationToken::new();
        let writer = root.child_token();
        let forward = writer.child_token();
        let sources = forward.child_token();
        Stages {
            root,
            writer,
            forward,
            sources,
        }
    }
}

/// Runs the relay until `shutdown` fires (then it drains in order) or every source ends.
/// Each config received on `reloads` (SIGHUP) puts its query API keys, tokens and TLS
/// files in use ([`api::reload`]); the rest of it is not applied.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    reloads: Option<tokio::sync::mpsc::Receiver<Config>>,
) -> anyhow::Result<Ended> {
    let stages = Stages::new();
    let _stop_all = stages.root.clone().drop_guard();
    let health = Arc::new(Health::default());
    let (tx, rx) = sync_channel(CHANNEL_BATCHES);
    let events = EventInbox::default();
    let admin_stop = stages.root.clone();
    let admin = match &config.admin {
        Some(a) => {
            let listener = tokio::net::TcpListener::bind(a.listen)
                .await
                .with_context(|| format!("admin.listen: cannot listen on {}", a.listen))?;
            tracing::info!(addr = %listener.local_addr()?, "admin endpoints listening (/healthz /readyz /metrics)");
            let cursors = forward::cursor_names(config.cloudwatch.as_ref());
            let app = admin::router(health.clone(), &config.spool, cursors);
            let stop = admin_stop.clone();
            // Its own connection cap and timeouts: probes answer when the API is flooded.
            let limits = api::server::Limits {
                max_connections: a.max_connections,
                header_read_timeout: a.header_read_timeout.0,
                idle_timeout: a.idle_timeout.0,
                write_stall: a.idle_timeout.0,
            };
            Some(tokio::spawn(api::server::serve(
                listener, app, limits, stop, "admin",
            )))
        }
        None => None,
    };
    // Probes answer during an upgrade of the spool (which rewrites every row of an older
    // format): a liveness kill mid-upgrade would only start it over.
    health.migrating.store(true, Ordering::Relaxed);
    let upgraded = {
        let spool = config.spool.clone();
        tokio::task::spawn_blocking(move || {
            Spool::open(&spool.dir, spool.durability, spool.cache_size.0).map(drop)
        })
        .await
    };
    health.migrating.store(false, Ordering::Relaxed);
    match upgraded {
        Ok(r) => {
            r.with_context(|| format!("opening the spool in {}", config.spool.dir.display()))?
        }
        Err(e) => return Err(anyhow!("the spool upgrade panicked: {e}")),
    }
    // The query API starts first and stops last; its reads are audited through the writer.
    let api_stop = stages.root.clone();
    let (api_server, reloader) = match &config.api {
        Some(a) => {
            let (server, reloader) = api::start(
                a,
                &config.spool,
                config.postgres.as_ref(),
                api::AuditSink {
                    inbox: events.clone(),
                    channel: tx.clone(),
                },
                api_stop.clone(),
                health.api.clone(),
            )
            .await?;
            (Some(server), Some(reloader))
        }
        None => (None, None),
    };
    if let Some(reloads) = reloads {
        tokio::spawn(apply_reloads(reloads, reloader));
    }
    let r = run_pipeline(config, shutdown, &stages, health, (tx, rx), events).await;
    stages.root.cancel();
    if let Some(h) = admin {
        let _ = h.await;
    }
    if let Some(mut h) = api_server {
        // Connections drain gracefully; a long export is cut after a short wait.
        if tokio::time::timeout(API_DRAIN, &mut h).await.is_err() {
            h.abort();
        }
    }
    r
}

/// Puts the query API keys of each reloaded config in use, logging what was reloaded.
async fn apply_reloads(
    mut reloads: tokio::sync::mpsc::Receiver<Config>,
    reloader: Option<api::reload::Reloader>,
) {
    while let Some(new) = reloads.recv().await {
        match &reloader {
            Some(r) => match r.reload(new.api.as_ref()) {
                Ok(what) => tracing::info!(
                    reloaded = %what,
                    "reload: query API keys, tokens and TLS files in use; every other key takes a restart"
                ),
                Err(e) => tracing::error!(
                    error = %e,
                    "reload: nothing reloaded, the running keys stay in use"
                ),
            },
            None => tracing::info!(
                "reload: no query API runs ([api] was absent at startup), nothing to reload; every other key takes a restart"
            ),
        }
    }
}

/// Runs the forwarder of stream `shard` (`first`, already built) under supervision: if
/// it dies it is built again and restarted (see [`forward::supervise`]).
async fn supervised(
    cw: crate::config::CloudWatchConfig,
    shard: u32,
    dir: std::path::PathBuf,
    inbox: ProgressInbox,
    cancel: CancellationToken,
    health: Arc<ForwardHealth>,
    first: forward::forwarder::Forwarder,
) {
    let mut first = Some(first);
    let what = forward::cursor_names(Some(&cw))[shard as usize].clone();
    let delays = forward::supervise::RestartDelays {
        max: cw.backoff_max.0,
        ..Default::default()
    };
    forward::supervise::supervise(what, health.clone(), cancel.clone(), delays, || {
        let first = first.take();
        let (cw, dir, inbox, cancel, health) = (
            cw.clone(),
            dir.clone(),
            inbox.clone(),
            cancel.clone(),
            health.clone(),
        );
        async move {
            let f = match first {
                Some(f) => f,
                None => forward::build(&cw, shard, &dir, inbox, cancel, health)
                    .await
                    .map_err(|e| format!("{e:#}"))?,
            };
            Ok(f.run())
        }
    })
    .await
}

/// At shutdown, how long the forwarders may go on sending (the last checkpoint, and what
/// little is left when they are caught up) before they are stopped.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(3);

async fn run_pipeline(
    config: Config,
    shutdown: CancellationToken,
    stages: &Stages,
    health: Arc<Health>,
    (tx, rx): (SyncSender<AppendBatch>, Receiver<AppendBatch>),
    events: EventInbox,
) -> anyhow::Result<Ended> {
    let mut spool = Spool::open(
        &config.spool.dir,
        config.spool.durability,
        config.spool.cache_size.0,
    )
    .with_context(|| format!("opening the spool in {}", config.spool.dir.display()))?;
    spool
        .copy_wal_in_background()
        .with_context(|| format!("opening the spool in {}", config.spool.dir.display()))?;
    let saved = spool.checkpoints()?;
    tracing::info!(
        spool = %spool.path().display(),
        checkpoints = saved.len(),
        durability = ?config.spool.durability,
        "spool open"
    );
    let writer_stop = stages.writer.clone();
    let progress = ProgressInbox::default();
    let opts = WriterOptions {
        max_events: config.spool.commit_max_events,
        interval: config.spool.commit_interval.0,
        max_bytes: config.spool.max_bytes.0,
    };
    let signer: Option<Arc<Signer>> = match &config.integrity.signing_key_file {
        Some(path) => {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            if mode & 0o007 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{:o}", mode & 0o777),
                    "integrity.signing_key_file is readable by every user; anyone who can read it can re-sign a rewritten spool (chmod 600 it, or 0440 with a group)"
                );
            }
            Some(Arc::new(Signer::load(path)?))
        }
        None => {
            tracing::warn!("integrity.signing_key_file is not set: checkpoints are not signed, so a deliberate rewrite of the spool would not be detected");
            None
        }
    };
    let key_id = signer.as_ref().map(|s| s.key_id().to_string());
    let upkeep = Upkeep {
        signer,
        checkpoint_every: config.integrity.checkpoint_every,
        checkpoint_interval: config.integrity.checkpoint_interval.0,
        retention: std::time::Duration::from_secs(config.spool.retention_days as u64 * 86_400),
        // Retention never purges what a forwarder (CloudWatch, the installation store)
        // has not finished with.
        forward_cursors: {
            let mut c: Vec<String> = config
                .cloudwatch
                .as_ref()
                .filter(|c| c.enabled)
                .map(|c| forward::cursor_names(Some(c)))
                .unwrap_or_default();
            if config.postgres.is_some() {
                c.push(PG_CURSOR.to_string());
            }
            (!c.is_empty()).then_some(c)
        },
        purge_check: std::time::Duration::from_secs(60),
        purge_chunk: 10_000,
    };
    let mut writer = {
        let stop = writer_stop.clone();
        let inbox = progress.clone();
        let health = health.clone();
        health.writer_running.store(true, Ordering::Relaxed);
        spawn_thread("spool-writer", move || {
            let r = SpoolWriter::new(spool, opts, upkeep, inbox, health.spool_full.clone())
                .with_events(events)
                .run(rx, stop);
            health.writer_running.store(false, Ordering::Relaxed);
            r
        })
    };

    let src = config.source.clone();
    let has_files = src.paths.iter().any(|p| p != "-");
    let has_stdin = src.paths.iter().any(|p| p == "-");
    let files = has_files.then(|| {
        let (src, out, cancel) = (
            src.clone(),
            Collector::new(src.envelope, tx.clone()),
            stages.sources.clone(),
        );
        let health = health.clone();
        spawn_thread("file-source", move || {
            let paused = health.spool_full.clone();
            let r = FileSource::new(&src, saved, out, cancel, paused)
                .report_unreadable_to(health.source_unreadable_files.clone())
                .report_lost_to(health.source_files_lost.clone())
                .run();
            health.sources_running.store(false, Ordering::Relaxed);
            r
        })
    });
    let stdin_src = has_stdin.then(|| {
        let (src, out, cancel) = (
            src.clone(),
            Collector::new(src.envelope, tx.clone()),
            stages.sources.clone(),
        );
        let paused = health.spool_full.clone();
        spawn_thread("stdin-source", move || {
            stdin::run(&src, out, &cancel, &paused)
        })
    });
    drop(tx);
    health.sources_running.store(true, Ordering::Relaxed);

    let forward_cancel = stages.forward.clone();
    let mut forwarders: Vec<JoinHandle<()>> = Vec::new();
    let mut fwd_health: Vec<Arc<ForwardHealth>> = Vec::new();
    match config.cloudwatch.as_ref().filter(|c| c.enabled) {
        Some(cw) => {
            let built = forward::build_all(
                cw,
                &config.spool.dir,
                progress.clone(),
                forward_cancel.clone(),
            )
            .await;
            match built {
                Ok(all) => {
                    for (shard, (f, h)) in all.into_iter().enumerate() {
                        fwd_health.push(h.clone());
                        forwarders.push(tokio::spawn(supervised(
                            cw.clone(),
                            shard as u32,
                            config.spool.dir.clone(),
                            progress.clone(),
                            forward_cancel.clone(),
                            h,
                            f,
                        )));
                    }
                }
                Err(e) => {
                    stages.root.cancel();
                    return Err(e);
                }
            }
        }
        None => {
            tracing::info!(
                "no [cloudwatch] section (or enabled = false): events stay in the spool only"
            );
        }
    }
    *health.forward.lock().expect("health") = fwd_health.clone();

    let mut ship_health: Option<Arc<ShipHealth>> = None;
    if let Some(pg) = &config.postgres {
        let relay_id = match crate::installation::relay_id(pg) {
            Ok(id) => id,
            Err(e) => {
                stages.root.cancel();
                return Err(anyhow!(e));
            }
        };
        let h = Arc::new(ShipHealth::default());
        *health.ship.lock().expect("health") = Some(h.clone());
        ship_health = Some(h.clone());
        let shipper = Shipper::new(
            pg.clone(),
            relay_id,
            config.spool.dir.clone(),
            progress.clone(),
            forward_cancel.clone(),
            h,
            key_id,
        );
        forwarders.push(tokio::spawn(shipper.supervised()));
    }
    let caught_up = |target: i64| {
        fwd_health
            .iter()
            .all(|h| h.cursor.load(Ordering::Acquire) >= target)
            && ship_health
                .as_ref()
                .is_none_or(|h| h.cursor.load(Ordering::Acquire) >= target)
    };

    let sources_done = async {
        if let Some(h) = stdin_src {
            let _ = h.await;
        }
        if has_files {
            std::future::pending::<()>().await;
        }
    };
    let ended = tokio::select! {
        _ = shutdown.cancelled() => Ended::Signal,
        _ = sources_done => Ended::SourcesDone,
        r = &mut writer => {
            stages.root.cancel();
            return match r {
                Ok(Ok(_)) => Err(anyhow!("the spool writer stopped unexpectedly")),
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("the spool writer failed")),
                Err(e) => Err(anyhow!("the spool writer panicked: {e}")),
            };
        }
    };
    if ended == Ended::SourcesDone && !forwarders.is_empty() {
        // Input ended (standard input): let the forwarder send what was read first.
        tokio::time::sleep(config.spool.commit_interval.0 + Duration::from_millis(50)).await;
        let target = progress.committed_seq();
        tracing::info!(
            up_to_seq = target,
            "input ended; waiting for the forwarder to send everything (SIGTERM to stop now)"
        );
        while !caught_up(target) && !shutdown.is_cancelled() {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = shutdown.cancelled() => {}
            }
        }
    }
    tracing::info!(reason = ?ended, "stopping: sources first, then the forwarder, then the spool");
    stages.sources.cancel();
    let grace = config.shutdown_grace.0;
    let drained = tokio::time::timeout(grace, async {
        if let Some(h) = files {
            let _ = h.await;
        }
        if !forwarders.is_empty() {
            // A last checkpoint over everything read, and a short chance for the forwarders
            // to send it with what is left (a backlog stays in the spool for the next start).
            progress.request_checkpoint();
            let flush = async {
                while progress.checkpoint_pending() {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let target = progress.committed_seq();
                while !caught_up(target) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            let _ = tokio::time::timeout(SHUTDOWN_FLUSH.min(grace / 2), flush).await;
        }
        // The forwarder finishes a call in flight; its progress goes into the last commit.
        forward_cancel.cancel();
        for h in forwarders {
            let _ = h.await;
        }
        writer_stop.cancel();
        writer.await
    })
    .await;
    match drained {
        Err(_) => Err(anyhow!(
            "shutdown took longer than shutdown_grace ({}); uncommitted reads will be read again at the next start",
            config.shutdown_grace
        )),
        Ok(Err(e)) => Err(anyhow!("the spool writer panicked: {e}")),
        Ok(Ok(Err(e))) => Err(anyhow::Error::new(e).context("the spool writer failed")),
        Ok(Ok(Ok(totals))) => {
            tracing::info!(
                stored = totals.stored,
                duplicates = totals.duplicates,
                quarantined = totals.quarantined,
                commits = totals.commits,
                "stopped; everything read is committed"
            );
            Ok(ended)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::Stages;

    #[test]
    fn stages_stop_one_at_a_time_in_order_and_the_root_stops_all() {
        let s = Stages::new();
        s.sources.cancel();
        assert!(!s.forward.is_cancelled() && !s.writer.is_cancelled());
        s.forward.cancel();
        assert!(!s.writer.is_cancelled() && !s.root.is_cancelled());
        s.writer.cancel();
        assert!(!s.root.is_cancelled(), "the API outlives the writer");

        // An early return drops the guard: every stage stops.
        let s = Stages::new();
        drop(s.root.clone().drop_guard());
        assert!(s.sources.is_cancelled() && s.forward.is_cancelled() && s.writer.is_cancelled());
    }
}
