//! Delivering one batch: PutLogEvents until CloudWatch accepts it, bisection of calls it
//! refuses as invalid, and the InvalidParameter breaker (see [`super::breaker`]).
//!
//! Bisection works left to right over the batch (in time order), so what is settled
//! (accepted, or rejected one by one) is always a prefix of it. When the breaker trips,
//! that prefix is cut back to where the streak began: those events were not bad, the
//! stream was. The stream then waits, probes with the first unsettled event every
//! `invalid_probe_interval`, and goes on from there once CloudWatch accepts it; the
//! cursor never moves over an event that was neither accepted nor rejected.

use super::batch::{Batch, OutEvent, RejectReason};
use super::breaker::Verdict;
use super::cloudwatch::PutOutcome;
use super::forwarder::{finish_unless_cancelled, now_ms, Cancelled, Forwarder, Halt, Settled};
use super::retry::{classify, Failure, RetryAction};
use crate::spool::{ForwardProgress, Rejection};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// How often a stopped stream is logged.
const STOPPED_LOG_EVERY: Duration = Duration::from_secs(60);
/// Most events held in memory because they are too far in the future for CloudWatch
/// (about 7 MiB of messages at ~700 bytes each).
const MAX_HELD: usize = 10_000;

/// The rejections CloudWatch reported for an accepted call.
fn refused_in(events: &[OutEvent], outcome: PutOutcome) -> Vec<Rejection> {
    outcome
        .rejected
        .into_iter()
        .map(|(i, why)| Rejection {
            seq: events[i].seq,
            reason: why.as_str().to_string(),
            detail: "refused by CloudWatch (rejectedLogEventsInfo)".into(),
        })
        .collect()
}

/// What identifies how a call was refused, for the breaker.
fn refusal_key(f: &Failure) -> String {
    match f {
        Failure::Service {
            code,
            status,
            message,
        } => format!("{code:?} {status:?} {message}"),
        other => format!("{other:?}"),
    }
}

impl Forwarder {
    /// Sends one batch (or records its rejections) and reports progress.
    pub(super) async fn send(&mut self, batch: Batch) -> Result<(), Cancelled> {
        let mut rejected: Vec<Rejection> = batch
            .rejected
            .iter()
            .map(|(seq, why)| Rejection {
                seq: *seq,
                reason: why.as_str().to_string(),
                detail: match why {
                    RejectReason::TooOld => {
                        "older than CloudWatch accepts (14 days or the group's retention)".into()
                    }
                    RejectReason::TooNew => "more than 2 hours in the future".into(),
                    _ => String::new(),
                },
            })
            .collect();
        let mut forwarded = 0;
        if !batch.events.is_empty() {
            let refused = self.deliver_all(&batch.events).await?;
            forwarded = (batch.events.len() - refused.len()) as u64;
            rejected.extend(refused);
        }
        if !rejected.is_empty() {
            tracing::warn!(
                count = rejected.len(),
                first_seq = rejected[0].seq,
                reason = %rejected[0].reason,
                "events rejected: kept in the spool, not in CloudWatch (see `spool stats`)"
            );
        }
        tracing::debug!(
            events = batch.events.len(),
            bytes = batch.bytes,
            last_seq = batch.last_seq,
            "batch forwarded"
        );
        if !batch.held.is_empty() {
            tracing::info!(
                count = batch.held.len(),
                first_seq = batch.held[0].seq,
                "events more than 2 h in the future: held (not rejected), sent once CloudWatch takes them"
            );
            let mut held = batch.held;
            let room = MAX_HELD.saturating_sub(self.held.len());
            if held.len() > room {
                // Held events wait in memory: past the cap they are refused as before
                // (kept in the spool, recorded in the ledger), so one writer of future
                // timestamps cannot grow the relay without bound.
                let over: Vec<Rejection> = held
                    .drain(room..)
                    .map(|e| Rejection {
                        seq: e.seq,
                        reason: RejectReason::TooNew.as_str().to_string(),
                        detail: format!(
                            "more than 2 hours in the future, and {MAX_HELD} events are held already"
                        ),
                    })
                    .collect();
                tracing::warn!(
                    count = over.len(),
                    first_seq = over[0].seq,
                    held = MAX_HELD,
                    "too many events in the future to hold: rejected as too_new (kept in the spool)"
                );
                rejected.extend(over);
            }
            self.held.extend(held);
            self.health
                .held
                .store(self.held.len() as u64, Ordering::Relaxed);
        }
        let cursor = self.cursor_through(batch.last_seq);
        self.report(cursor, forwarded, rejected);
        Ok(())
    }

    fn report(&mut self, cursor: i64, forwarded: u64, rejected: Vec<Rejection>) {
        if cursor > self.health.cursor.load(Ordering::Acquire) {
            self.health.cursor.store(cursor, Ordering::Release);
        }
        self.inbox.push(ForwardProgress {
            cursor_name: self.opts.cursor_name.clone(),
            cursor,
            forwarded,
            rejected,
        });
    }

    /// Sends the held events CloudWatch takes now, in calls of their own (in time order
    /// within each), and moves the cursor up to the next one still held.
    pub(super) async fn release_held(&mut self) -> Result<(), Cancelled> {
        let l = self.opts.limits;
        // A margin, so that a clock a little behind CloudWatch's does not make it refuse.
        let horizon = now_ms() + l.max_future_ms - l.max_future_ms / 24;
        if !self.held.iter().any(|e| e.ts_ms <= horizon) {
            return Ok(());
        }
        let (due, keep): (Vec<OutEvent>, Vec<OutEvent>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|e| e.ts_ms <= horizon);
        self.held = keep;
        let mut builder = super::batch::BatchBuilder::new(l);
        let mut calls = Vec::new();
        for ev in due {
            if let Err(ev) = builder.offer(ev, now_ms()) {
                calls.push(builder.take());
                builder
                    .offer(ev, now_ms())
                    .expect("an event fits an empty batch");
            }
        }
        calls.push(builder.take());
        for call in calls {
            // Each went through the builder already: only `events` are left.
            let mut rejected: Vec<Rejection> = call
                .rejected
                .iter()
                .map(|(seq, why)| Rejection {
                    seq: *seq,
                    reason: why.as_str().to_string(),
                    detail: "held, then refused by the relay's rules".into(),
                })
                .collect();
            self.held.extend(call.held);
            let refused = self.deliver_all(&call.events).await?;
            let forwarded = (call.events.len() - refused.len()) as u64;
            tracing::info!(
                sent = forwarded,
                still_held = self.held.len(),
                "held events sent: CloudWatch takes them now"
            );
            rejected.extend(refused);
            self.held.sort_by_key(|e| e.seq);
            self.health
                .held
                .store(self.held.len() as u64, Ordering::Relaxed);
            let cursor = self.cursor_through(self.sent_through);
            self.report(cursor, forwarded, rejected);
        }
        Ok(())
    }

    /// Delivers every event of a batch; returns the ones refused one by one. While the
    /// breaker holds the stream stopped, this waits (probing) rather than rejecting.
    async fn deliver_all(&mut self, events: &[OutEvent]) -> Result<Vec<Rejection>, Cancelled> {
        let mut settled = Settled::default();
        self.breaker.new_batch();
        while settled.done < events.len() {
            match self.deliver(&events[settled.done..], &mut settled).await {
                Ok(()) => {}
                Err(Halt::Cancelled) => return Err(Cancelled),
                Err(Halt::Tripped) => self.probe(events, &mut settled).await?,
            }
        }
        Ok(settled.rejected)
    }

    /// Puts `events` (the batch from `settled.done` on) until CloudWatch accepts them,
    /// bisecting a call it refuses as invalid; settles them in order.
    async fn deliver(&mut self, events: &[OutEvent], settled: &mut Settled) -> Result<(), Halt> {
        let mut backoff = self.backoff();
        loop {
            let cw = self.cw.clone();
            let result = finish_unless_cancelled(&self.cancel, cw.put(events)).await?;
            self.health.calls.fetch_add(1, Ordering::Relaxed);
            if let Err(f) = &result {
                self.health.failures[classify(f).0 as usize].fetch_add(1, Ordering::Relaxed);
            }
            match result {
                Ok(outcome) => {
                    self.health
                        .auth_failing_since_ms
                        .store(0, Ordering::Relaxed);
                    self.breaker.accepted();
                    settled.rejected.extend(refused_in(events, outcome));
                    settled.done += events.len();
                    return Ok(());
                }
                Err(f) => {
                    let (kind, action) = classify(&f);
                    match action {
                        RetryAction::Recreate => {
                            tracing::warn!(group = %self.cw.group(), stream = %self.cw.stream(), "log group or stream is gone; creating it again");
                            self.ensure_destination().await?;
                        }
                        RetryAction::Bisect if events.len() == 1 => {
                            let verdict = self.breaker.single_refused(
                                &refusal_key(&f),
                                settled.done,
                                settled.rejected.len(),
                            );
                            match verdict {
                                Verdict::Reject => {
                                    let detail = match &f {
                                        Failure::Service { message, .. } => message.clone(),
                                        other => format!("{other:?}"),
                                    };
                                    settled.rejected.push(Rejection {
                                        seq: events[0].seq,
                                        reason: RejectReason::Invalid.as_str().to_string(),
                                        detail,
                                    });
                                    settled.done += 1;
                                    return Ok(());
                                }
                                Verdict::Trip {
                                    done,
                                    keep_rejected,
                                } => {
                                    settled.done = done;
                                    settled.rejected.truncate(keep_rejected);
                                    self.last_refusal = Some(f);
                                    return Err(Halt::Tripped);
                                }
                            }
                        }
                        RetryAction::Bisect => {
                            tracing::warn!(events = events.len(), error = ?f, "CloudWatch refused a call as invalid; splitting it to find the event");
                            let (a, b) = events.split_at(events.len() / 2);
                            Box::pin(self.deliver(a, settled)).await?;
                            Box::pin(self.deliver(b, settled)).await?;
                            return Ok(());
                        }
                        RetryAction::Backoff | RetryAction::LongDelay => {
                            let d = self.delay_for(kind, action, &mut backoff, &f);
                            self.pause(d).await?;
                        }
                    }
                }
            }
        }
    }

    /// The breaker tripped: the stream is stopped (readiness fails) until CloudWatch
    /// accepts the first unsettled event, sent alone every `invalid_probe_interval`.
    async fn probe(&mut self, events: &[OutEvent], settled: &mut Settled) -> Result<(), Cancelled> {
        let one = &events[settled.done..settled.done + 1];
        let since = now_ms();
        self.health.stopped_since_ms.store(since, Ordering::Relaxed);
        self.health.breaker_trips.fetch_add(1, Ordering::Relaxed);
        let mut logged: Option<Instant> = None;
        let r = loop {
            if logged.is_none_or(|t| t.elapsed() >= STOPPED_LOG_EVERY) {
                tracing::error!(
                    group = %self.cw.group(),
                    stream = %self.cw.stream(),
                    refused_in_a_row = self.breaker.streak(),
                    error = ?self.last_refusal,
                    first_unsent_seq = one[0].seq,
                    probe_every = ?self.opts.invalid_probe_interval,
                    "CloudWatch refuses every event of this stream as invalid (a problem of the stream, not of one event): forwarding to it is stopped, events stay in the spool unforwarded and are not marked rejected, /readyz fails; probing with one event"
                );
                logged = Some(Instant::now());
            }
            self.pause(self.opts.invalid_probe_interval).await?;
            let cw = self.cw.clone();
            let result = finish_unless_cancelled(&self.cancel, cw.put(one)).await?;
            self.health.calls.fetch_add(1, Ordering::Relaxed);
            match result {
                Ok(outcome) => break outcome,
                Err(f) => {
                    let (kind, action) = classify(&f);
                    self.health.failures[kind as usize].fetch_add(1, Ordering::Relaxed);
                    if action == RetryAction::Recreate {
                        self.ensure_destination().await?;
                    }
                    tracing::debug!(kind = %kind, error = ?f, "probe refused; the stream stays stopped");
                    self.last_refusal = Some(f);
                }
            }
        };
        self.breaker.accepted();
        self.health.stopped_since_ms.store(0, Ordering::Relaxed);
        tracing::info!(
            stream = %self.cw.stream(),
            stopped_secs = (now_ms() - since) / 1000,
            "CloudWatch accepts this stream's events again: forwarding resumes where it stopped"
        );
        settled.rejected.extend(refused_in(one, r));
        settled.done += 1;
        Ok(())
    }
}
