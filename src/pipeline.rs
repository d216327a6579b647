//! `audit-relay run`: wires the sources to the spool writer and stops them in order.
//!
//! Threads: one file source (tail, frame, decode), one standard-input source, one spool
//! writer; bounded channel between them. Shutdown order: sources stop reading and hand
//! over their last batch, then the writer commits and exits, all within
//! `shutdown_grace`.

use crate::config::Config;
use crate::source::{stdin, tail::FileSource, Collector};
use crate::spool::{Spool, SpoolWriter, WriterOptions};
use anyhow::{anyhow, Context};
use std::sync::mpsc::sync_channel;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Batches in flight between the sources and the writer.
const CHANNEL_BATCHES: usize = 4;

/// How the run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// A shutdown signal arrived and everything was committed in time.
    Signal,
    /// Every source reached its end (standard input only) and everything was committed.
    SourcesDone,
}

/// Runs the relay until `shutdown` fires or every source ends.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<Ended> {
    let spool = Spool::open(
        &config.spool.dir,
        config.spool.durability,
        config.spool.cache_size.0,
    )
    .with_context(|| format!("opening the spool in {}", config.spool.dir.display()))?;
    let saved = spool.checkpoints()?;
    tracing::info!(
        spool = %spool.path().display(),
        checkpoints = saved.len(),
        durability = ?config.spool.durability,
        "spool open"
    );
    let (tx, rx) = sync_channel(CHANNEL_BATCHES);
    let writer_stop = CancellationToken::new();
    let opts = WriterOptions {
        max_events: config.spool.commit_max_events,
        interval: config.spool.commit_interval.0,
    };
    let mut writer: JoinHandle<_> = {
        let stop = writer_stop.clone();
        tokio::task::spawn_blocking(move || SpoolWriter::new(spool, opts).run(rx, stop))
    };

    let src = config.source.clone();
    let has_files = src.paths.iter().any(|p| p != "-");
    let has_stdin = src.paths.iter().any(|p| p == "-");
    let files: Option<JoinHandle<_>> = has_files.then(|| {
        let (src, out, cancel) = (
            src.clone(),
            Collector::new(src.envelope, tx.clone()),
            shutdown.clone(),
        );
        tokio::task::spawn_blocking(move || FileSource::new(&src, saved, out, cancel).run())
    });
    let stdin_src: Option<JoinHandle<_>> = has_stdin.then(|| {
        let (src, out, cancel) = (
            src.clone(),
            Collector::new(src.envelope, tx.clone()),
            shutdown.clone(),
        );
        tokio::task::spawn_blocking(move || stdin::run(&src, out, &cancel))
    });
    drop(tx);

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
            shutdown.cancel();
            return match r {
                Ok(Ok(_)) => Err(anyhow!("the spool writer stopped unexpectedly")),
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("the spool writer failed")),
                Err(e) => Err(anyhow!("the spool writer panicked: {e}")),
            };
        }
    };
    tracing::info!(reason = ?ended, "stopping: sources first, then the spool");
    shutdown.cancel();
    let grace = config.shutdown_grace.0;
    let drained = tokio::time::timeout(grace, async {
        if let Some(h) = files {
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
