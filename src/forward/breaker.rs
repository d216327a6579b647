//! The InvalidParameter breaker: tells one bad event from a stream that refuses
//! everything (a pure state machine).
//!
//! Bisection isolates an event CloudWatch refuses as invalid, and that event alone is
//! marked rejected. But when the fault is the stream's (a policy, a broken group), every
//! call fails the same way and bisection would mark every event invalid, one by one. So:
//! when `after` single events in a row are refused the same way, with nothing accepted
//! in between, the breaker trips. The events of the streak that are still in the
//! current batch are taken back (not marked rejected) and the stream stops until a
//! probe is accepted.

/// What to do with a single event CloudWatch refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Mark it rejected and go on: one bad event.
    Reject,
    /// The stream refuses everything: stop. The batch is settled up to `done` events
    /// (the streak's first event in this batch), and only its first `keep_rejected`
    /// rejections stand; the rest are taken back.
    Trip { done: usize, keep_rejected: usize },
}

/// Consecutive single events refused the same way.
#[derive(Debug, Clone)]
pub struct InvalidBreaker {
    after: u32,
    count: u32,
    /// How they were refused (error code and message).
    key: String,
    /// Where the streak starts in the current batch: (events settled, rejections).
    start: (usize, usize),
}

impl InvalidBreaker {
    /// A breaker that trips at the `after`-th refusal in a row (at least 2, so that one
    /// bad event is still rejected on its own).
    pub fn new(after: u32) -> Self {
        InvalidBreaker {
            after: after.max(2),
            count: 0,
            key: String::new(),
            start: (0, 0),
        }
    }

    /// A new batch begins: a streak that goes on continues from its first event (the
    /// earlier batches' rejections are committed already).
    pub fn new_batch(&mut self) {
        self.start = (0, 0);
    }

    /// CloudWatch accepted a call: the streak is broken.
    pub fn accepted(&mut self) {
        self.count = 0;
    }

    /// A single event was refused as `key`, with `done` events of the batch settled
    /// before it and `rejected` rejections recorded.
    pub fn single_refused(&mut self, key: &str, done: usize, rejected: usize) -> Verdict {
        if self.count == 0 || self.key != key {
            self.count = 0;
            self.key = key.to_string();
            self.start = (done, rejected);
        }
        self.count += 1;
        if self.count >= self.after {
            Verdict::Trip {
                done: self.start.0,
                keep_rejected: self.start.1,
            }
        } else {
            Verdict::Reject
        }
    }

    /// Refusals in a row so far.
    pub fn streak(&self) -> u32 {
        self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_bad_event_is_rejected_and_a_success_resets() {
        let mut b = InvalidBreaker::new(3);
        assert_eq!(b.single_refused("bad", 10, 0), Verdict::Reject);
        b.accepted();
        assert_eq!(b.single_refused("bad", 20, 1), Verdict::Reject);
        assert_eq!(b.single_refused("bad", 21, 2), Verdict::Reject);
        b.accepted();
        assert_eq!(b.single_refused("bad", 30, 3), Verdict::Reject);
        assert_eq!(b.streak(), 1);
    }

    #[test]
    fn the_same_refusal_n_times_trips_and_takes_the_streak_back() {
        let mut b = InvalidBreaker::new(3);
        assert_eq!(b.single_refused("bad", 4, 1), Verdict::Reject);
        assert_eq!(b.single_refused("bad", 5, 2), Verdict::Reject);
        assert_eq!(
            b.single_refused("bad", 6, 3),
            Verdict::Trip {
                done: 4,
                keep_rejected: 1
            }
        );
    }

    #[test]
    fn a_different_refusal_starts_a_new_streak() {
        let mut b = InvalidBreaker::new(2);
        assert_eq!(b.single_refused("too large", 0, 0), Verdict::Reject);
        assert_eq!(b.single_refused("bad json", 1, 1), Verdict::Reject);
        assert_eq!(
            b.single_refused("bad json", 2, 2),
            Verdict::Trip {
                done: 1,
                keep_rejected: 1
            }
        );
    }

    #[test]
    fn a_streak_across_batches_trips_from_the_new_batch_start() {
        let mut b = InvalidBreaker::new(3);
        assert_eq!(b.single_refused("bad", 0, 0), Verdict::Reject);
        assert_eq!(b.single_refused("bad", 1, 1), Verdict::Reject);
        b.new_batch();
        assert_eq!(
            b.single_refused("bad", 0, 0),
            Verdict::Trip {
                done: 0,
                keep_rejected: 0
            }
        );
    }

    #[test]
    fn at_least_two_so_one_bad_event_is_still_rejected() {
        let mut b = InvalidBreaker::new(1);
        assert_eq!(b.single_refused("bad", 0, 0), Verdict::Reject);
    }
}
