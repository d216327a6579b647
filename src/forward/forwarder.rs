//! The forwarder loop: spool cursor → batches → PutLogEvents → progress.
//!
//! One call in flight per stream; a failed call is sent again identically (same events,
//! same order) until it succeeds or the failure is classified as "bisect". The cursor
//! moves (through the spool writer) only after CloudWatch accepted every event up to it
//! or the event was rejected one by one; an event never leaves the spool because
//! forwarding failed. On shutdown a call in flight is let finish; a call waiting to be
//! retried is abandoned and sent again after the restart.

use super::batch::{BatchBuilder, Limits, OutEvent};
use super::breaker::InvalidBreaker;
use super::cloudwatch::CloudWatch;
use super::message::MessageFormat;
use super::retry::{classify, ErrorKind, Failure, RetryAction};
use crate::spool::{ForwardProgress, ProgressInbox, Rejection, Spool, StoredEvent};
use backon::BackoffBuilder;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Rows read from the spool at a time.
const READ_ROWS: usize = 4096;
/// How long shutdown waits for a call in flight.
const SHUTDOWN_CALL_WAIT: Duration = Duration::from_secs(5);
/// How often an idle forwarder looks for new events.
const IDLE_POLL: Duration = Duration::from_millis(50);

/// Settings of one forwarder.
#[derive(Debug, Clone)]
pub struct ForwarderOptions {
    pub cursor_name: String,
    /// This forwarder sends the organizations whose hash falls in shard `shard` of
    /// `shards`; it steps over the others (their own forwarder sends them).
    pub shard: u32,
    pub shards: u32,
    pub limits: Limits,
    pub max_batch_wait: Duration,
    pub backoff_max: Duration,
    pub auth_retry_interval: Duration,
    /// `cloudwatch.invalid_breaker_after`.
    pub invalid_breaker_after: u32,
    /// `cloudwatch.invalid_probe_interval`.
    pub invalid_probe_interval: Duration,
}

/// What the forwarder shares with health checks and metrics (plain atomics: the
/// admin module turns them into Prometheus text).
#[derive(Debug, Default)]
pub struct ForwardHealth {
    /// Unix ms since when CloudWatch has refused our credentials or permissions; 0 when
    /// it has not.
    pub auth_failing_since_ms: AtomicI64,
    /// The last sequence number handed to the spool as forwarded or rejected.
    pub cursor: AtomicI64,
    /// PutLogEvents calls made (accepted or not).
    pub calls: AtomicU64,
    /// Failed calls, by [`ErrorKind`] (index = `ErrorKind as usize`).
    pub failures: [AtomicU64; ErrorKind::COUNT],
    /// Unix ms since when the InvalidParameter breaker has stopped this stream; 0 when
    /// it has not.
    pub stopped_since_ms: AtomicI64,
    /// Times the InvalidParameter breaker stopped this stream.
    pub breaker_trips: AtomicU64,
    /// The forwarder task is running (set by its supervisor).
    pub running: std::sync::atomic::AtomicBool,
    /// Times the supervisor restarted the forwarder after it died.
    pub restarts: AtomicU64,
    /// Events held because they are too far in the future for CloudWatch now.
    pub held: AtomicU64,
}

impl ForwardHealth {
    /// Whether CloudWatch has refused credentials or permissions for longer than `for_ms`.
    pub fn auth_failing_longer_than(&self, for_ms: i64) -> bool {
        let since = self.auth_failing_since_ms.load(Ordering::Relaxed);
        since != 0 && now_ms() - since > for_ms
    }
}

/// Shutdown interrupted a retry wait.
pub(super) struct Cancelled;

/// Why delivering a batch stopped before every event was settled.
pub(super) enum Halt {
    Cancelled,
    /// The InvalidParameter breaker tripped: the stream refuses everything.
    Tripped,
}

impl From<Cancelled> for Halt {
    fn from(_: Cancelled) -> Self {
        Halt::Cancelled
    }
}

/// How far a batch got: its first `done` events (in time order) are accepted or
/// rejected, `rejected` lists the rejected ones.
#[derive(Debug, Default)]
pub(super) struct Settled {
    pub(super) done: usize,
    pub(super) rejected: Vec<Rejection>,
}

pub struct Forwarder {
    pub(super) cw: CloudWatch,
    spool: Arc<Mutex<Spool>>,
    pub(super) inbox: ProgressInbox,
    format: MessageFormat,
    pub(super) opts: ForwarderOptions,
    pub(super) cancel: CancellationToken,
    pub(super) health: Arc<ForwardHealth>,
    last_auth_error_log: Option<Instant>,
    pub(super) breaker: InvalidBreaker,
    /// How the stream refused the last call, while the breaker holds it stopped.
    pub(super) last_refusal: Option<Failure>,
    /// Events too far in the future for CloudWatch now, in sequence order: sent in calls
    /// of their own once it takes them. The cursor stays before the first of them, so a
    /// restart reads them again (the events after them may then be sent twice).
    pub(super) held: Vec<OutEvent>,
    /// The last sequence number sent, rejected or stepped over (the cursor, but for
    /// the held events).
    pub(super) sent_through: i64,
    /// Organization key → belongs to this shard (successful lookups only).
    shard_of: std::collections::HashMap<i64, bool>,
}

pub(super) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Runs one CloudWatch call. On shutdown the call in flight may finish within a bound,
/// so that its progress is committed; past it, it is abandoned (and sent again at the
/// next start).
pub(super) async fn finish_unless_cancelled<T>(
    cancel: &CancellationToken,
    call: impl std::future::Future<Output = T>,
) -> Result<T, Cancelled> {
    tokio::pin!(call);
    tokio::select! {
        r = &mut call => Ok(r),
        _ = cancel.cancelled() => tokio::time::timeout(SHUTDOWN_CALL_WAIT, &mut call)
            .await
            .map_err(|_| Cancelled),
    }
}

/// A random share of `d` ("full jitter"), from the standard library's random hasher keys.
fn full_jitter(d: Duration) -> Duration {
    use std::hash::BuildHasher;
    let r = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    d.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64)
}

impl Forwarder {
    pub fn new(
        cw: CloudWatch,
        spool: Spool,
        inbox: ProgressInbox,
        format: MessageFormat,
        opts: ForwarderOptions,
        cancel: CancellationToken,
        health: Arc<ForwardHealth>,
    ) -> Self {
        let breaker = InvalidBreaker::new(opts.invalid_breaker_after);
        Forwarder {
            cw,
            spool: Arc::new(Mutex::new(spool)),
            inbox,
            format,
            opts,
            cancel,
            health,
            last_auth_error_log: None,
            breaker,
            last_refusal: None,
            held: Vec::new(),
            sent_through: 0,
            shard_of: std::collections::HashMap::new(),
        }
    }

    async fn read_after(&self, after: i64) -> Vec<StoredEvent> {
        let spool = self.spool.clone();
        let r = tokio::task::spawn_blocking(move || {
            spool
                .lock()
                .expect("spool reader")
                .read_after(after, READ_ROWS)
        })
        .await;
        match r {
            Ok(Ok(rows)) => rows,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot read the spool; retrying");
                Vec::new()
            }
            Err(e) => {
                tracing::error!(error = %e, "spool reader panicked; retrying");
                Vec::new()
            }
        }
    }

    /// Sleeps unless shutdown comes first.
    pub(super) async fn pause(&self, d: Duration) -> Result<(), Cancelled> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = self.cancel.cancelled() => Err(Cancelled),
        }
    }

    /// Runs until shutdown.
    pub async fn run(mut self) {
        let Ok(cursor) = self.load_cursor().await else {
            tracing::info!("forwarder stopped before it started");
            return;
        };
        tracing::info!(
            group = %self.cw.group(),
            stream = %self.cw.stream(),
            cursor,
            "forwarding to CloudWatch Logs"
        );
        self.health.cursor.store(cursor, Ordering::Release);
        self.sent_through = cursor;
        if self.ensure_destination().await.is_err() {
            tracing::info!("forwarder stopped before it started");
            return;
        }
        let cursor = self.skip_already_sent(cursor).await;
        let mut read_pos = cursor;
        let mut builder = BatchBuilder::new(self.opts.limits);
        let mut first_offer: Option<Instant> = None;
        while !self.cancel.is_cancelled() {
            if self.release_held().await.is_err() {
                tracing::info!("forwarder stopped; held events are read again at the next start");
                return;
            }
            let rows = self.read_after(read_pos).await;
            if rows.is_empty() {
                let due = first_offer.is_some_and(|t| t.elapsed() >= self.opts.max_batch_wait);
                if due {
                    first_offer = None;
                    if self.send(builder.take()).await.is_err() {
                        tracing::info!("forwarder stopped; the batch waiting for a retry is sent again at the next start");
                        return;
                    }
                } else {
                    if builder.is_empty() && self.opts.shards > 1 {
                        self.step_over(read_pos);
                    }
                    if self.pause(IDLE_POLL).await.is_err() {
                        break;
                    }
                }
                continue;
            }
            read_pos = rows.last().map(|r| r.seq).unwrap_or(read_pos);
            let last_row_seq = read_pos;
            for row in rows {
                // Forwarding-ledger rows are the spool's own record of rejections: not sent.
                if row.is_ledger() {
                    continue;
                }
                match self.is_mine(row.org).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(Cancelled) => {
                        tracing::info!(
                            "forwarder stopped; the events read are sent at the next start"
                        );
                        return;
                    }
                }
                let (message, truncated) = self.format.render_owned(row.body, row.ts_ms);
                if truncated {
                    tracing::warn!(seq = row.seq, "event larger than cloudwatch.max_event_bytes: sent as a truncated stub; the spool keeps it whole");
                }
                let ev = OutEvent {
                    seq: row.seq,
                    ts_ms: row.ts_ms,
                    message,
                };
                if let Err(ev) = builder.offer(ev, now_ms()) {
                    first_offer = None;
                    if self.send(builder.take()).await.is_err() {
                        tracing::info!("forwarder stopped; the batch waiting for a retry is sent again at the next start");
                        return;
                    }
                    builder
                        .offer(ev, now_ms())
                        .expect("an event fits an empty batch");
                }
                first_offer.get_or_insert_with(Instant::now);
                if builder.is_full() {
                    first_offer = None;
                    if self.send(builder.take()).await.is_err() {
                        tracing::info!("forwarder stopped; the batch waiting for a retry is sent again at the next start");
                        return;
                    }
                }
            }
            if first_offer.is_some_and(|t| t.elapsed() >= self.opts.max_batch_wait) {
                first_offer = None;
                if self.send(builder.take()).await.is_err() {
                    return;
                }
            }
            if builder.is_empty() {
                // Nothing of ours is waiting: step the cursor over the others' events (and
                // ledger rows).
                self.step_over(last_row_seq);
            }
        }
        tracing::info!("forwarder stopped");
    }

    /// Sends every event with `from_ms <= ts_ms <= to_ms` again, in sequence order, with
    /// the same batching and retry rules; the cursor is not touched. Returns
    /// (events sent, events rejected). Used after an incident on the CloudWatch side.
    pub async fn replay(mut self, from_ms: i64, to_ms: i64) -> (u64, u64) {
        if self.ensure_destination().await.is_err() {
            return (0, 0);
        }
        let mut after = 0;
        let mut builder = BatchBuilder::new(self.opts.limits);
        loop {
            let spool = self.spool.clone();
            let rows = tokio::task::spawn_blocking(move || {
                spool
                    .lock()
                    .expect("spool reader")
                    .read_range(from_ms, to_ms, after, READ_ROWS)
            })
            .await;
            let rows = match rows {
                Ok(Ok(rows)) => rows,
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "cannot read the spool");
                    break;
                }
                Err(e) => {
                    tracing::error!(error = %e, "spool reader panicked");
                    break;
                }
            };
            let Some(last) = rows.last() else { break };
            after = last.seq;
            for row in rows {
                // Forwarding-ledger rows are the spool's own record of rejections: not sent.
                if row.is_ledger() {
                    continue;
                }
                match self.is_mine(row.org).await {
                    Ok(true) => {}
                    Ok(false) => continue,
                    Err(Cancelled) => return self.replay_totals(),
                }
                let (message, _) = self.format.render(&row.body, row.ts_ms);
                let ev = OutEvent {
                    seq: row.seq,
                    ts_ms: row.ts_ms,
                    message,
                };
                if let Err(ev) = builder.offer(ev, now_ms()) {
                    if self.send(builder.take()).await.is_err() {
                        return self.replay_totals();
                    }
                    builder
                        .offer(ev, now_ms())
                        .expect("an event fits an empty batch");
                }
            }
        }
        if !builder.is_empty() {
            let _ = self.send(builder.take()).await;
        }
        self.replay_totals()
    }

    fn replay_totals(&self) -> (u64, u64) {
        let done = self.inbox.drain();
        (
            done.iter().map(|p| p.forwarded).sum(),
            done.iter().map(|p| p.rejected.len() as u64).sum(),
        )
    }

    /// Where this forwarder starts. A failed read is retried (never taken as 0, which
    /// would send the whole spool again).
    async fn load_cursor(&mut self) -> Result<i64, Cancelled> {
        let mut backoff = self.backoff();
        loop {
            let spool = self.spool.clone();
            let name = self.opts.cursor_name.clone();
            let r = tokio::task::spawn_blocking(move || {
                spool.lock().expect("spool reader").initial_cursor(&name)
            })
            .await;
            let f = match r {
                Ok(Ok(cursor)) => return Ok(cursor),
                Ok(Err(e)) => Failure::SpoolRead(format!("reading the forwarding cursor: {e}")),
                Err(e) => Failure::SpoolRead(format!("the spool reader panicked: {e}")),
            };
            self.retry_after(&f, &mut backoff).await?;
        }
    }

    /// Counts a failure, logs it with its reason and waits as its classification says.
    async fn retry_after(
        &mut self,
        f: &Failure,
        backoff: &mut backon::ExponentialBackoff,
    ) -> Result<(), Cancelled> {
        let (kind, action) = classify(f);
        self.health.failures[kind as usize].fetch_add(1, Ordering::Relaxed);
        let d = self.delay_for(kind, action, backoff, f);
        self.pause(d).await
    }

    /// Whether events of this organization key belong to this forwarder's shard. A
    /// failed lookup is retried until it succeeds (or shutdown): guessing would send an
    /// organization's events to the wrong stream and step this one over them.
    async fn is_mine(&mut self, org: i64) -> Result<bool, Cancelled> {
        // Checkpoints go to every stream: each stream can be verified on its own.
        if self.opts.shards <= 1 || org == crate::integrity::CHECKPOINT_ORG {
            return Ok(true);
        }
        if let Some(m) = self.shard_of.get(&org) {
            return Ok(*m);
        }
        let mut backoff = self.backoff();
        loop {
            match self.organization_id(org).await {
                Ok(id) => {
                    let mine = super::shard_of(&id, self.opts.shards) == self.opts.shard;
                    self.shard_of.insert(org, mine);
                    return Ok(mine);
                }
                Err(f) => self.retry_after(&f, &mut backoff).await?,
            }
        }
    }

    /// The organization id of a key, from the spool.
    async fn organization_id(&self, org: i64) -> Result<String, Failure> {
        let spool = self.spool.clone();
        let r = tokio::task::spawn_blocking(move || {
            spool.lock().expect("spool reader").organization_id(org)
        })
        .await;
        match r {
            Ok(Ok(Some(id))) => Ok(id),
            Ok(Ok(None)) => Err(Failure::SpoolRead(format!(
                "organization key {org} is not in the spool's orgs table"
            ))),
            Ok(Err(e)) => Err(Failure::SpoolRead(format!(
                "looking up the organization of key {org}: {e}"
            ))),
            Err(e) => Err(Failure::SpoolRead(format!(
                "the spool reader panicked: {e}"
            ))),
        }
    }

    /// The cursor once everything through `through` is settled: never past a held event.
    pub(super) fn cursor_through(&mut self, through: i64) -> i64 {
        self.sent_through = self.sent_through.max(through);
        match self.held.first() {
            Some(h) => self.sent_through.min(h.seq - 1),
            None => self.sent_through,
        }
    }

    /// Moves the cursor past events that belong to other shards.
    fn step_over(&mut self, seq: i64) {
        let seq = self.cursor_through(seq);
        if seq > self.health.cursor.load(Ordering::Acquire) {
            self.health.cursor.store(seq, Ordering::Release);
            self.inbox.push(ForwardProgress {
                cursor_name: self.opts.cursor_name.clone(),
                cursor: seq,
                forwarded: 0,
                rejected: Vec::new(),
            });
        }
    }

    /// Creates the group and stream, retrying like a call.
    /// After a crash, the calls CloudWatch accepted in the moment before the cursor was
    /// committed are in the stream already. Moves the cursor over the events right after
    /// it that the stream's newest messages hold, byte for byte, so they are not sent
    /// twice. Stops at the first one it does not find (which is sent as usual), so it
    /// never skips an event that is not in CloudWatch.
    async fn skip_already_sent(&mut self, cursor: i64) -> i64 {
        let newest = match self.cw.newest().await {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!(error = %e, "cannot read the stream's newest messages; events after the cursor are sent again");
                return cursor;
            }
        };
        if newest.is_empty() {
            return cursor;
        }
        let sent: std::collections::HashSet<(i64, &str)> =
            newest.iter().map(|(t, m)| (*t, m.as_str())).collect();
        let mut at = cursor;
        let mut skipped = 0u64;
        // Other streams' events are passed over, but not without end.
        let mut examined = 0usize;
        'rows: while examined < 4 * newest.len() + 1024 {
            let rows = self.read_after(at).await;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                examined += 1;
                let mine = if row.is_ledger() {
                    false
                } else {
                    let Ok(mine) = self.is_mine(row.org).await else {
                        break 'rows;
                    };
                    mine
                };
                if mine {
                    let (message, _) = self.format.render(&row.body, row.ts_ms);
                    if !sent.contains(&(row.ts_ms, message.as_str())) {
                        break 'rows;
                    }
                    skipped += 1;
                }
                at = row.seq;
            }
        }
        if skipped > 0 {
            tracing::info!(
                skipped,
                from_seq = cursor + 1,
                to_seq = at,
                "events after the cursor are in CloudWatch already (accepted just before a crash): not sent again"
            );
            self.health.cursor.store(at, Ordering::Release);
            self.sent_through = at;
            self.inbox.push(ForwardProgress {
                cursor_name: self.opts.cursor_name.clone(),
                cursor: at,
                forwarded: 0,
                rejected: Vec::new(),
            });
        }
        // Another shard's events after the last one found are stepped over as usual.
        if skipped == 0 {
            cursor
        } else {
            at
        }
    }

    pub(super) async fn ensure_destination(&mut self) -> Result<(), Cancelled> {
        let mut backoff = self.backoff();
        loop {
            let cw = self.cw.clone();
            let attempt = finish_unless_cancelled(&self.cancel, cw.ensure()).await?;
            match attempt {
                Ok(()) => {
                    self.health
                        .auth_failing_since_ms
                        .store(0, Ordering::Relaxed);
                    return Ok(());
                }
                Err(f) => {
                    let (kind, action) = classify(&f);
                    self.health.failures[kind as usize].fetch_add(1, Ordering::Relaxed);
                    let delay = self.delay_for(kind, action, &mut backoff, &f);
                    self.pause(delay).await?;
                }
            }
        }
    }

    pub(super) fn backoff(&self) -> backon::ExponentialBackoff {
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(100))
            .with_max_delay(self.opts.backoff_max)
            .without_max_times()
            .build()
    }

    /// Logs a failure and picks the wait before the next try.
    pub(super) fn delay_for(
        &mut self,
        kind: ErrorKind,
        action: RetryAction,
        backoff: &mut backon::ExponentialBackoff,
        f: &Failure,
    ) -> Duration {
        if action == RetryAction::LongDelay {
            let since = now_ms();
            let _ = self.health.auth_failing_since_ms.compare_exchange(
                0,
                since,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if self
                .last_auth_error_log
                .is_none_or(|t| t.elapsed() >= Duration::from_secs(60))
            {
                tracing::error!(kind = %kind, error = ?f, retry_in = ?self.opts.auth_retry_interval, "CloudWatch refused our credentials or permissions; events stay in the spool");
                self.last_auth_error_log = Some(Instant::now());
            }
            return self.opts.auth_retry_interval;
        }
        let d = full_jitter(backoff.next().unwrap_or(self.opts.backoff_max));
        if kind == ErrorKind::SpoolRead {
            tracing::warn!(kind = %kind, error = ?f, retry_in = ?d, "cannot read the spool; nothing is sent or skipped until it can, retrying");
        } else {
            tracing::warn!(kind = %kind, error = ?f, retry_in = ?d, "CloudWatch call failed; retrying");
        }
        d
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{CloudWatchConfig, Durability};
    use crate::forward::message::MessageFormat;

    /// A forwarder over a real spool in `dir` whose cursor `cloudwatch` is at 42; its
    /// CloudWatch endpoint is never called.
    async fn forwarder(dir: &std::path::Path) -> (Forwarder, Arc<ForwardHealth>) {
        let mut spool = Spool::open(dir, Durability::Os, 1 << 20).unwrap();
        spool.begin().unwrap();
        spool
            .write_progress(&ForwardProgress {
                cursor_name: crate::spool::FORWARD_CURSOR.into(),
                cursor: 42,
                forwarded: 42,
                rejected: Vec::new(),
            })
            .unwrap();
        spool.commit().unwrap();
        drop(spool);
        let cfg: CloudWatchConfig = toml::from_str(
            "region = \"us-east-1\"\nendpoint = \"http://127.0.0.1:9\"\nlog_group = \"/g\"",
        )
        .unwrap();
        let cw = CloudWatch::connect(&cfg, "s".into()).await.unwrap();
        let health = Arc::new(ForwardHealth::default());
        let opts = ForwarderOptions {
            cursor_name: crate::spool::FORWARD_CURSOR.into(),
            shard: 0,
            shards: 1,
            limits: Limits::default(),
            max_batch_wait: Duration::from_millis(100),
            backoff_max: Duration::from_millis(100),
            auth_retry_interval: Duration::from_millis(100),
            invalid_breaker_after: 5,
            invalid_probe_interval: Duration::from_millis(100),
        };
        let f = Forwarder::new(
            cw,
            Spool::open_read_only(dir).unwrap(),
            ProgressInbox::default(),
            MessageFormat::new(&Default::default(), 1 << 20),
            opts,
            CancellationToken::new(),
            health.clone(),
        );
        (f, health)
    }

    fn rename_table(dir: &std::path::Path, from: &str, to: &str) {
        let c = rusqlite::Connection::open(dir.join("spool.db")).unwrap();
        c.execute_batch(&format!("ALTER TABLE {from} RENAME TO {to}"))
            .unwrap();
    }

    #[tokio::test]
    async fn a_cursor_that_cannot_be_read_is_retried_not_taken_as_zero() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, health) = forwarder(dir.path()).await;
        assert_eq!(f.load_cursor().await.ok(), Some(42));

        rename_table(dir.path(), "cursors", "cursors_away");
        let task = tokio::spawn(async move { f.load_cursor().await.ok() });
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert!(
            !task.is_finished(),
            "gave up (or started from 0) on a failed read"
        );
        let failed = health.failures[ErrorKind::SpoolRead as usize].load(Ordering::Relaxed);
        assert!(failed >= 2, "retried and counted: {failed}");

        rename_table(dir.path(), "cursors_away", "cursors");
        let cursor = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("reads it once it can")
            .unwrap();
        assert_eq!(cursor, Some(42));
    }

    #[tokio::test]
    async fn a_cursor_read_that_keeps_failing_ends_at_shutdown() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, _) = forwarder(dir.path()).await;
        rename_table(dir.path(), "cursors", "cursors_away");
        let cancel = f.cancel.clone();
        let task = tokio::spawn(async move { f.load_cursor().await.is_err() });
        tokio::time::sleep(Duration::from_millis(300)).await;
        cancel.cancel();
        let cancelled = tokio::time::timeout(Duration::from_secs(2), task)
            .await
            .expect("ends on shutdown")
            .unwrap();
        assert!(cancelled);
    }

    #[tokio::test]
    async fn an_organization_that_cannot_be_looked_up_is_retried_not_guessed() {
        let dir = tempfile::tempdir().unwrap();
        let (mut f, health) = forwarder(dir.path()).await;
        f.opts.shards = 4;
        rename_table(dir.path(), "orgs", "orgs_away");
        let task = tokio::spawn(async move {
            let r = f.is_mine(0x7fff).await.ok();
            (r, f.shard_of.len())
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            !task.is_finished(),
            "a failed lookup was taken as an answer"
        );
        assert!(health.failures[ErrorKind::SpoolRead as usize].load(Ordering::Relaxed) >= 2);
        // With the table back, a key that is not in it is still no answer.
        rename_table(dir.path(), "orgs_away", "orgs");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(!task.is_finished(), "an unknown key was taken as \"\"");
        task.abort();
    }
}
