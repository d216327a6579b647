//! Building PutLogEvents calls from the spool's events: a pure state machine.
//!
//! Events are offered in sequence order. A batch holds a contiguous run of sequence
//! numbers; each event of the run is either sent or rejected (never silently dropped),
//! so after CloudWatch accepts the call the forwarded cursor can move to `last_seq`.
//!
//! CloudWatch's rules, as AWS documents them today, each enforced here:
//! - at most 10,000 events and 1,048,576 bytes per call, counting each message's UTF-8
//!   bytes plus 26;
//! - events in chronological order within a call (a stable sort by timestamp);
//! - a call spans at most 24 hours;
//! - events older than 14 days (or the group's retention) are refused; they are not
//!   sent but rejected with their reason;
//! - events more than 2 hours in the future are refused *for now*: they are held (not
//!   sent, not rejected) and sent later in a call of their own, once CloudWatch takes
//!   them; only one beyond the hold horizon (`max_hold_ms` further) is rejected.

use std::fmt;

/// CloudWatch's per-call limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_events: usize,
    pub max_bytes: usize,
    /// Bytes counted per event on top of its message.
    pub event_overhead: usize,
    pub max_span_ms: i64,
    /// Oldest accepted event, as an age.
    pub max_age_ms: i64,
    /// Furthest accepted event in the future.
    pub max_future_ms: i64,
    /// How much further in the future an event is held (sent when CloudWatch takes it)
    /// rather than rejected as too new.
    pub max_hold_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_events: 10_000,
            max_bytes: 1_048_576,
            event_overhead: 26,
            max_span_ms: 24 * 3_600_000,
            max_age_ms: 14 * 86_400_000,
            max_future_ms: 2 * 3_600_000,
            max_hold_ms: 24 * 3_600_000,
        }
    }
}

/// Why an event is not sent (or was refused by CloudWatch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    TooOld,
    TooNew,
    /// Older than the log group's retention.
    Expired,
    /// CloudWatch refused it as a bad parameter.
    Invalid,
}

impl RejectReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            RejectReason::TooOld => "too_old",
            RejectReason::TooNew => "too_new",
            RejectReason::Expired => "expired",
            RejectReason::Invalid => "invalid",
        }
    }
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutEvent {
    pub seq: i64,
    pub ts_ms: i64,
    pub message: String,
}

impl OutEvent {
    fn cost(&self, limits: &Limits) -> usize {
        self.message.len() + limits.event_overhead
    }
}

/// A PutLogEvents call's worth: events sorted by time, the rejected ones and the held
/// ones, together covering every sequence number from `first_seq` to `last_seq`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Batch {
    pub events: Vec<OutEvent>,
    pub rejected: Vec<(i64, RejectReason)>,
    /// Too far in the future for CloudWatch now, within the hold horizon: sent later.
    pub held: Vec<OutEvent>,
    pub first_seq: i64,
    pub last_seq: i64,
    /// Bytes as CloudWatch counts them.
    pub bytes: usize,
}

/// Accumulates one batch.
#[derive(Debug)]
pub struct BatchBuilder {
    limits: Limits,
    batch: Batch,
    min_ts: i64,
    max_ts: i64,
}

impl BatchBuilder {
    pub fn new(limits: Limits) -> Self {
        BatchBuilder {
            limits,
            batch: Batch::default(),
            min_ts: i64::MAX,
            max_ts: i64::MIN,
        }
    }

    /// True when nothing has been offered since the last [`BatchBuilder::take`].
    pub fn is_empty(&self) -> bool {
        self.batch.events.is_empty() && self.batch.rejected.is_empty() && self.batch.held.is_empty()
    }

    /// Events to send in the current batch.
    pub fn len(&self) -> usize {
        self.batch.events.len()
    }

    /// Offers the next event in sequence order. `Err` gives the event back when it
    /// does not fit: take the batch, then offer it again.
    ///
    /// # Panics
    /// If a message alone is larger than a whole call (callers truncate first).
    pub fn offer(&mut self, ev: OutEvent, now_ms: i64) -> Result<(), OutEvent> {
        let l = &self.limits;
        assert!(
            ev.cost(l) <= l.max_bytes,
            "event {} is larger than a call; truncate it first",
            ev.seq
        );
        if self.is_empty() {
            self.batch.first_seq = ev.seq;
        }
        let reject = if ev.ts_ms < now_ms.saturating_sub(l.max_age_ms) {
            Some(RejectReason::TooOld)
        } else if ev.ts_ms > now_ms.saturating_add(l.max_future_ms + l.max_hold_ms) {
            Some(RejectReason::TooNew)
        } else {
            None
        };
        if reject.is_none() && ev.ts_ms > now_ms.saturating_add(l.max_future_ms) {
            self.batch.last_seq = ev.seq;
            self.batch.held.push(ev);
            return Ok(());
        }
        if let Some(r) = reject {
            self.batch.rejected.push((ev.seq, r));
            self.batch.last_seq = ev.seq;
            return Ok(());
        }
        let cost = ev.cost(l);
        let min = self.min_ts.min(ev.ts_ms);
        let max = self.max_ts.max(ev.ts_ms);
        let fits = self.batch.events.len() < l.max_events
            && self.batch.bytes + cost <= l.max_bytes
            && (self.batch.events.is_empty() || max - min <= l.max_span_ms);
        if !fits {
            return Err(ev);
        }
        self.min_ts = min;
        self.max_ts = max;
        self.batch.bytes += cost;
        self.batch.last_seq = ev.seq;
        self.batch.events.push(ev);
        Ok(())
    }

    /// Whether the batch should be sent now: no event could be added, or it holds many
    /// rejections that should be recorded.
    pub fn is_full(&self) -> bool {
        self.batch.events.len() >= self.limits.max_events
            || self.batch.rejected.len() >= self.limits.max_events
            || self.batch.held.len() >= self.limits.max_events
            || self.batch.bytes + self.limits.event_overhead + 2 > self.limits.max_bytes
    }

    /// Ends the batch: events sorted by time (stable, so sequence order breaks ties).
    pub fn take(&mut self) -> Batch {
        let mut b = std::mem::take(&mut self.batch);
        b.events.sort_by_key(|e| e.ts_ms);
        self.min_ts = i64::MAX;
        self.max_ts = i64::MIN;
        b
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOW: i64 = 1_750_000_000_000;

    fn ev(seq: i64, ts_ms: i64, len: usize) -> OutEvent {
        OutEvent {
            seq,
            ts_ms,
            message: "x".repeat(len),
        }
    }

    /// Offers everything, taking batches as they fill; returns every batch.
    fn build(limits: Limits, events: Vec<OutEvent>, now: i64) -> Vec<Batch> {
        let mut b = BatchBuilder::new(limits);
        let mut out = Vec::new();
        for e in events {
            if let Err(e) = b.offer(e, now) {
                out.push(b.take());
                b.offer(e, now).expect("fits an empty batch");
            }
        }
        if !b.is_empty() {
            out.push(b.take());
        }
        out
    }

    #[test]
    fn count_limit_splits_at_10000() {
        let batches = build(
            Limits::default(),
            (1..=25_000).map(|i| ev(i, NOW, 10)).collect(),
            NOW,
        );
        let sizes: Vec<usize> = batches.iter().map(|b| b.events.len()).collect();
        assert_eq!(sizes, vec![10_000, 10_000, 5_000]);
        assert_eq!(
            (batches[1].first_seq, batches[1].last_seq),
            (10_001, 20_000)
        );
    }

    #[test]
    fn byte_limit_counts_26_per_event() {
        // 1,048,576 / (998 + 26) = 1024 events exactly.
        let batches = build(
            Limits::default(),
            (1..=1025).map(|i| ev(i, NOW, 998)).collect(),
            NOW,
        );
        assert_eq!(batches[0].events.len(), 1024);
        assert_eq!(batches[0].bytes, 1_048_576);
        assert_eq!(batches[1].events.len(), 1);
    }

    #[test]
    fn too_old_and_too_new_are_rejected_not_sent() {
        let day = 86_400_000;
        let events = vec![
            ev(1, NOW - 15 * day, 5),
            ev(2, NOW, 5),
            ev(3, NOW + 27 * 3_600_000, 5),
            ev(4, NOW - 3_600_000, 5),
            ev(5, NOW + 2 * 3_600_000 + 5 * 60_000, 5),
        ];
        let b = &build(Limits::default(), events, NOW)[0];
        assert_eq!(
            b.rejected,
            vec![(1, RejectReason::TooOld), (3, RejectReason::TooNew)],
            "too new only beyond the hold horizon"
        );
        assert_eq!(
            b.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![4, 2]
        );
        assert_eq!(
            b.held.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![5],
            "2h05m ahead: held, not rejected"
        );
        assert_eq!((b.first_seq, b.last_seq), (1, 5));
    }

    proptest! {
        /// Every batch obeys every rule, and the batches together account for every
        /// sequence number exactly once, in contiguous runs.
        #[test]
        fn batches_obey_every_rule(
            specs in proptest::collection::vec((0i64..(20 * 86_400_000), 0usize..3000), 1..3000),
            max_events in 1usize..50,
            max_bytes in 3100usize..20_000,
        ) {
            let limits = Limits { max_events, max_bytes, ..Limits::default() };
            let now = NOW;
            let events: Vec<OutEvent> = specs.iter().enumerate()
                .map(|(i, (back, len))| ev(i as i64 + 1, now + 30 * 3_600_000 - back, *len))
                .collect();
            let n = events.len() as i64;
            let batches = build(limits, events.clone(), now);
            let mut next = 1;
            for b in &batches {
                prop_assert_eq!(b.first_seq, next);
                prop_assert!(b.events.len() <= max_events);
                let bytes: usize = b.events.iter().map(|e| e.message.len() + 26).sum();
                prop_assert_eq!(bytes, b.bytes);
                prop_assert!(bytes <= max_bytes);
                prop_assert!(b.events.windows(2).all(|w| w[0].ts_ms <= w[1].ts_ms));
                if let (Some(f), Some(l)) = (b.events.first(), b.events.last()) {
                    prop_assert!(l.ts_ms - f.ts_ms <= limits.max_span_ms);
                }
                let mut seqs: Vec<i64> = b.events.iter().map(|e| e.seq)
                    .chain(b.rejected.iter().map(|r| r.0))
                    .chain(b.held.iter().map(|e| e.seq)).collect();
                for e in &b.held {
                    prop_assert!(e.ts_ms > now + limits.max_future_ms);
                }
                seqs.sort();
                prop_assert_eq!(seqs, (b.first_seq..=b.last_seq).collect::<Vec<_>>());
                for (seq, why) in &b.rejected {
                    let ts = events[*seq as usize - 1].ts_ms;
                    match why {
                        RejectReason::TooOld => prop_assert!(ts < now - limits.max_age_ms),
                        RejectReason::TooNew => prop_assert!(ts > now + limits.max_future_ms + limits.max_hold_ms),
                        _ => prop_assert!(false),
                    }
                }
                for e in &b.events {
                    prop_assert!(e.ts_ms >= now - limits.max_age_ms && e.ts_ms <= now + limits.max_future_ms);
                }
                next = b.last_seq + 1;
            }
            prop_assert_eq!(next, n + 1);
        }
    }
}
