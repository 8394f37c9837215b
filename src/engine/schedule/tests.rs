use super::*;
use crate::engine::classify::{Decision, FailClass, RetryReason};
use std::collections::HashSet;

/// A gate whose circuits and budget the test sets.
#[derive(Default)]
struct FakeGate {
    open: HashSet<usize>,
    /// Open a circuit once it has been asked about this many times (circuit, asks).
    opens_after: Option<(usize, usize)>,
    asked: Vec<usize>,
    budget: Option<usize>,
    hedge: Option<Duration>,
}

impl Gate for FakeGate {
    fn open(&mut self, t: usize, _now: Instant) -> bool {
        self.asked.push(t);
        if let Some((c, n)) = self.opens_after {
            if c == t && self.asked.iter().filter(|&&x| x == c).count() > n {
                return true;
            }
        }
        self.open.contains(&t)
    }
    fn withdraw(&mut self, _now: Instant) -> bool {
        match &mut self.budget {
            None => true,
            Some(0) => false,
            Some(n) => {
                *n -= 1;
                true
            }
        }
    }
    fn hedge_after(&self, _t: usize) -> Option<Duration> {
        self.hedge
    }
}

fn windows(w: &[Option<u32>]) -> Vec<TargetInfo> {
    w.iter().map(|&window| TargetInfo { window }).collect()
}

fn sched(n: usize) -> (Scheduler, Instant) {
    let now = Instant::now();
    let s = Scheduler::new(
        windows(&vec![None; n]),
        now + Duration::from_secs(60),
        false,
    );
    (s, now)
}

fn send(target: usize) -> Step {
    Step::Send {
        target,
        hedge: None,
    }
}

const NEXT: Decision = Decision::Next {
    reason: FailClass::ServerError,
};

#[test]
fn targets_in_order_until_one_commits() {
    let (mut s, now) = sched(3);
    let mut g = FakeGate::default();
    assert_eq!(s.next(now, &mut g), send(0));
    s.report(0, &NEXT);
    assert!(s.goes_on());
    assert_eq!(s.next(now, &mut g), send(1));
    s.report(1, &Decision::Commit);
    assert!(!s.goes_on());
}

#[test]
fn a_retry_waits_then_tries_the_same_target_with_its_count() {
    let (mut s, now) = sched(2);
    let mut g = FakeGate::default();
    assert_eq!(s.next(now, &mut g), send(0));
    assert_eq!(s.facts(0, now, None, 0.5).tries, Some(1));
    let retry = Decision::RetrySame {
        after: Duration::from_secs(1),
        reason: RetryReason::RetryAfter,
    };
    s.report(0, &retry);
    let wait = Step::Wait {
        after: Duration::from_secs(1),
        target: 0,
        reason: RetryReason::RetryAfter,
    };
    assert_eq!(s.next(now, &mut g), wait);
    assert_eq!(s.next(now, &mut g), send(0));
    assert_eq!(s.facts(0, now, None, 0.5).tries, Some(2));
    assert_eq!(s.facts(1, now, None, 0.5).tries, None, "not its turn");
}

#[test]
fn open_circuits_are_deferred_and_tried_last_without_asking_again() {
    let (mut s, now) = sched(3);
    let mut g = FakeGate {
        open: [0].into(),
        ..FakeGate::default()
    };
    assert_eq!(s.next(now, &mut g), send(1));
    s.report(1, &NEXT);
    assert_eq!(s.next(now, &mut g), send(2));
    s.report(2, &NEXT);
    assert!(s.goes_on(), "the open circuit is still to come");
    let asked = g.asked.len();
    assert_eq!(s.next(now, &mut g), send(0), "the last resort");
    assert_eq!(g.asked.len(), asked, "its breaker is not asked again");
    s.report(0, &NEXT);
    assert_eq!(s.next(now, &mut g), Step::Done { cut: None });
}

#[test]
fn a_circuit_that_opens_during_retries_ends_them() {
    let (mut s, now) = sched(2);
    let mut g = FakeGate {
        opens_after: Some((0, 1)),
        ..FakeGate::default()
    };
    assert_eq!(s.next(now, &mut g), send(0));
    let retry = Decision::RetrySame {
        after: Duration::ZERO,
        reason: RetryReason::ServerError,
    };
    s.report(0, &retry);
    let wait = Step::Wait {
        after: Duration::ZERO,
        target: 0,
        reason: RetryReason::ServerError,
    };
    assert_eq!(s.next(now, &mut g), wait);
    assert_eq!(
        s.next(now, &mut g),
        Step::Skip {
            target: 0,
            why: Skip::OpenedDuringRetries
        }
    );
    assert_eq!(s.next(now, &mut g), send(1));
}

#[test]
fn the_deadline_cuts_and_reports_what_was_not_tried() {
    let now = Instant::now();
    let mut s = Scheduler::new(windows(&[None; 3]), now + Duration::from_secs(1), false);
    let mut g = FakeGate {
        open: [1].into(),
        ..FakeGate::default()
    };
    assert_eq!(s.next(now, &mut g), send(0));
    s.report(0, &NEXT);
    let late = now + Duration::from_secs(2);
    let skip = |target, why| Step::Skip { target, why };
    assert_eq!(s.next(late, &mut g), skip(1, Skip::CircuitOpen));
    assert_eq!(s.next(late, &mut g), skip(2, Skip::Cut(Cut::Deadline)));
    assert_eq!(
        s.next(late, &mut g),
        Step::Done {
            cut: Some(Cut::Deadline)
        }
    );
    assert_eq!(s.facts(0, late, None, 0.0).time_left, Duration::ZERO);
}

#[test]
fn the_budget_pays_for_every_attempt_after_the_first() {
    let (mut s, now) = sched(3);
    let mut g = FakeGate {
        budget: Some(1),
        ..FakeGate::default()
    };
    assert_eq!(s.next(now, &mut g), send(0), "the first is free");
    s.report(0, &NEXT);
    assert_eq!(s.next(now, &mut g), send(1), "one extra paid");
    s.report(1, &NEXT);
    assert_eq!(
        s.next(now, &mut g),
        Step::Skip {
            target: 2,
            why: Skip::Cut(Cut::Budget)
        }
    );
    assert_eq!(
        s.next(now, &mut g),
        Step::Done {
            cut: Some(Cut::Budget)
        }
    );
}

#[test]
fn after_a_context_refusal_only_targets_not_known_to_be_smaller_are_tried() {
    let now = Instant::now();
    let info = windows(&[
        Some(128_000),
        Some(128_000),
        Some(200_000),
        None,
        Some(100_000),
    ]);
    let mut s = Scheduler::new(info, now + Duration::from_secs(60), false);
    let mut g = FakeGate::default();
    let ctx = Decision::Next {
        reason: FailClass::ContextLength,
    };
    assert_eq!(s.next(now, &mut g), send(0));
    assert!(s.facts(0, now, None, 0.0).larger_may_follow);
    s.report(0, &ctx);
    let window = Skip::Window {
        window: 128_000,
        from: 0,
    };
    assert_eq!(
        s.next(now, &mut g),
        Step::Skip {
            target: 1,
            why: window
        }
    );
    assert_eq!(s.next(now, &mut g), send(2), "larger");
    s.report(2, &ctx);
    assert_eq!(s.next(now, &mut g), send(3), "unknown: tried");
    s.report(3, &ctx);
    let window = Skip::Window {
        window: 200_000,
        from: 2,
    };
    assert_eq!(
        s.next(now, &mut g),
        Step::Skip {
            target: 4,
            why: window
        }
    );
    assert_eq!(s.next(now, &mut g), Step::Done { cut: None });
}

#[test]
fn whether_a_larger_window_may_follow() {
    let now = Instant::now();
    let d = now + Duration::from_secs(60);
    let mut g = FakeGate::default();
    let mut s = Scheduler::new(windows(&[Some(200_000), Some(128_000)]), d, false);
    s.next(now, &mut g);
    assert!(
        !s.facts(0, now, None, 0.0).larger_may_follow,
        "only a smaller one"
    );
    // The refusing target's window is unknown: nothing is known to be no larger.
    let mut s = Scheduler::new(windows(&[None, Some(8_000)]), d, false);
    s.next(now, &mut g);
    assert!(s.facts(0, now, None, 0.0).larger_may_follow);
    s.report(
        0,
        &Decision::Next {
            reason: FailClass::ContextLength,
        },
    );
    assert_eq!(s.next(now, &mut g), send(1), "tried");
}

#[test]
fn a_hedge_starts_the_next_target_which_then_has_had_its_turn() {
    let now = Instant::now();
    let mut s = Scheduler::new(windows(&[None; 3]), now + Duration::from_secs(60), true);
    let mut g = FakeGate {
        hedge: Some(Duration::from_millis(500)),
        ..FakeGate::default()
    };
    let hedged = Step::Send {
        target: 0,
        hedge: Some((1, Duration::from_millis(500))),
    };
    assert_eq!(s.next(now, &mut g), hedged);
    assert!(s.start_hedge(1, now, &mut g));
    assert!(!s.start_hedge(1, now, &mut g), "once");
    s.report(0, &NEXT);
    // The hedge failed too, with a retryable status: not its turn, so no retry.
    assert_eq!(s.facts(1, now, None, 0.0).tries, None);
    s.report(1, &NEXT);
    let last = Step::Send {
        target: 2,
        hedge: None,
    };
    assert_eq!(s.next(now, &mut g), last, "no target follows to hedge with");
    // An open circuit or a spent budget starts no hedge.
    let mut s = Scheduler::new(windows(&[None; 2]), now + Duration::from_secs(60), true);
    let mut closed = FakeGate {
        hedge: Some(Duration::ZERO),
        open: [1].into(),
        ..FakeGate::default()
    };
    s.next(now, &mut closed);
    assert!(!s.start_hedge(1, now, &mut closed));
    assert_eq!(s.queued().collect::<Vec<_>>(), [1]);
}

#[test]
fn a_cancelled_hedge_keeps_its_turn_and_a_winning_one_ends_the_first() {
    let now = Instant::now();
    let d = now + Duration::from_secs(60);
    let mut g = FakeGate {
        hedge: Some(Duration::ZERO),
        ..FakeGate::default()
    };
    // The first target won, then was refused (context length): the cancelled hedge is next.
    let mut s = Scheduler::new(windows(&[None; 3]), d, true);
    s.next(now, &mut g);
    assert!(s.start_hedge(1, now, &mut g));
    s.hedge_cancelled(1);
    assert!(s.facts(0, now, None, 0.0).more);
    s.report(
        0,
        &Decision::Next {
            reason: FailClass::ContextLength,
        },
    );
    assert!(matches!(s.next(now, &mut g), Step::Send { target: 1, .. }));
    // The hedge won, then was refused: the first target is not tried again.
    let mut s = Scheduler::new(windows(&[None; 3]), d, true);
    s.next(now, &mut g);
    assert!(s.start_hedge(1, now, &mut g));
    s.first_cancelled();
    s.report(1, &NEXT);
    assert!(matches!(s.next(now, &mut g), Step::Send { target: 2, .. }));
}

#[test]
fn a_bail_stops_and_reports_the_deferred() {
    let (mut s, now) = sched(3);
    let mut g = FakeGate {
        open: [0].into(),
        ..FakeGate::default()
    };
    assert_eq!(s.next(now, &mut g), send(1));
    s.report(
        1,
        &Decision::Bail {
            reason: FailClass::ConnectError,
        },
    );
    assert!(!s.goes_on());
    assert_eq!(
        s.next(now, &mut g),
        Step::Skip {
            target: 0,
            why: Skip::CircuitOpen
        }
    );
    assert_eq!(s.next(now, &mut g), Step::Done { cut: None });
}
