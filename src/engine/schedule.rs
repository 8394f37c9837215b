//! The order of a request's attempts, as a pure state machine: which target next, when to skip
//! one (an open circuit, a context window known to be too small), when to wait before a retry,
//! when to start a hedge, and when to stop (nothing left, the deadline, the retry budget).
//!
//! No I/O and no clock: the current time is an argument, and the shared state it consults
//! (circuit breakers, the retry budget, the hedge delay) comes through a [`Gate`]. The engine
//! asks [`Scheduler::next`] what to do, runs attempts, and reports each decision back with
//! [`Scheduler::report`].

use super::classify::{Decision, Facts, FailClass, RetryReason};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// What the scheduler needs to know of a target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TargetInfo {
    /// Its catalog context window, if known.
    pub window: Option<u32>,
}

/// The shared state a schedule consults.
pub trait Gate: Send {
    /// Whether target `t`'s circuit keeps requests away now (asking may let this request
    /// through as a half-open probe).
    fn open(&mut self, t: usize, now: Instant) -> bool;
    /// Take one extra attempt (a retry or a fallback) from the retry budget; `false`: spent.
    fn withdraw(&mut self, now: Instant) -> bool;
    /// After how long without content a hedge starts beside target `t`; `None`: no hedging.
    fn hedge_after(&self, t: usize) -> Option<Duration>;
}

/// Why the attempts stopped before every target was tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cut {
    Deadline,
    Budget,
}

/// Why a target is not tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its window is known to be no larger than `window`, which target `from` refused.
    Window { window: u32, from: usize },
    /// Its circuit opened during its own retries.
    OpenedDuringRetries,
    /// Its circuit is open (and nothing else was left to try first, or it was never reached).
    CircuitOpen,
    /// The attempts stopped before it.
    Cut(Cut),
}

/// What to do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Report target `target` as skipped.
    Skip { target: usize, why: Skip },
    /// Send to `target`; with a hedge, also start `second` if there is no content after the
    /// given delay (ask [`Scheduler::start_hedge`] when it passes).
    Send {
        target: usize,
        hedge: Option<(usize, Duration)>,
    },
    /// Wait, then ask again: a retry of `target`, for `reason`.
    Wait {
        after: Duration,
        target: usize,
        reason: RetryReason,
    },
    /// Nothing more to try.
    Done { cut: Option<Cut> },
}

#[derive(Debug)]
pub struct Scheduler {
    info: Vec<TargetInfo>,
    queue: VecDeque<usize>,
    /// Targets whose circuit was open at their turn: tried when nothing else is left.
    deferred: Vec<usize>,
    last_resort: bool,
    /// The target whose turn it is, and its tries so far.
    current: Option<usize>,
    tries: u32,
    /// A retry's wait (its length, target and reason), owed before the next step.
    wait: Option<(Duration, usize, RetryReason)>,
    /// Attempts sent (every one after the first is an extra one, paid from the budget).
    sent: usize,
    deadline: Instant,
    stream: bool,
    /// After context-length refusals: the largest refused window, and who refused it.
    refused_window: Option<(u32, usize)>,
    /// Skips to report before the end.
    skips: VecDeque<(usize, Skip)>,
    ended: Option<Option<Cut>>,
}

impl Scheduler {
    /// A schedule over targets in their order (already ordered by the policy).
    pub fn new(info: Vec<TargetInfo>, deadline: Instant, stream: bool) -> Scheduler {
        Scheduler {
            queue: (0..info.len()).collect(),
            info,
            deferred: Vec::new(),
            last_resort: false,
            current: None,
            tries: 0,
            wait: None,
            sent: 0,
            deadline,
            stream,
            refused_window: None,
            skips: VecDeque::new(),
            ended: None,
        }
    }

    /// The next step at `now`.
    pub fn next(&mut self, now: Instant, gate: &mut dyn Gate) -> Step {
        loop {
            if let Some((target, why)) = self.skips.pop_front() {
                return Step::Skip { target, why };
            }
            if let Some(cut) = self.ended {
                return Step::Done { cut };
            }
            if let Some((after, target, reason)) = self.wait.take() {
                return Step::Wait {
                    after,
                    target,
                    reason,
                };
            }
            let t = match self.current {
                Some(t) => t,
                None => match self.next_target() {
                    Some(t) => t,
                    None => {
                        self.finish(None);
                        continue;
                    }
                },
            };
            if let Some(step) = self.check(t, now, gate) {
                return step;
            }
            if self.ended.is_some() || self.current.is_none() {
                continue;
            }
            return self.send(t, gate);
        }
    }

    /// The next target's turn begins, if any is left: the queue, then the open circuits.
    fn next_target(&mut self) -> Option<usize> {
        if self.queue.is_empty() && !self.last_resort && !self.deferred.is_empty() {
            self.last_resort = true;
            self.queue.extend(self.deferred.drain(..));
        }
        let t = self.queue.pop_front()?;
        self.current = Some(t);
        self.tries = 0;
        Some(t)
    }

    /// Whether `t` may be sent to now: its window, its circuit (asked before every try: open
    /// before the first defers it; opened during its tries ends them), the deadline and the
    /// budget. `Some` is a step to take instead; a cut or a deferral ends `t`'s turn.
    fn check(&mut self, t: usize, now: Instant, gate: &mut dyn Gate) -> Option<Step> {
        if self.tries == 0 {
            if let Some(why) = self.window_skip(t) {
                self.current = None;
                return Some(Step::Skip { target: t, why });
            }
        }
        if !self.last_resort && gate.open(t, now) {
            self.current = None;
            if self.tries == 0 {
                self.deferred.push(t);
                return None;
            }
            let why = Skip::OpenedDuringRetries;
            return Some(Step::Skip { target: t, why });
        }
        let cut = if now >= self.deadline {
            Some(Cut::Deadline)
        } else if self.sent > 0 && !gate.withdraw(now) {
            Some(Cut::Budget)
        } else {
            None
        };
        if let Some(cut) = cut {
            self.current = None;
            self.queue.push_front(t);
            self.finish(Some(cut));
        }
        None
    }

    fn send(&mut self, t: usize, gate: &mut dyn Gate) -> Step {
        self.sent += 1;
        self.tries += 1;
        // Hedging: streams, a target's first try, with another target after it.
        let hedge = match self.queue.front() {
            Some(&second) if self.stream && self.tries == 1 && !self.last_resort => {
                gate.hedge_after(t).map(|d| (second, d))
            }
            _ => None,
        };
        Step::Send { target: t, hedge }
    }

    /// The attempts are over: what was never tried is reported, with why.
    fn finish(&mut self, cut: Option<Cut>) {
        for t in self.deferred.drain(..) {
            self.skips.push_back((t, Skip::CircuitOpen));
        }
        if let Some(c) = cut {
            for t in self.queue.drain(..) {
                self.skips.push_back((t, Skip::Cut(c)));
            }
        }
        self.ended = Some(cut);
    }

    /// After context-length refusals, a target whose window is known to be no larger than the
    /// largest refused one is skipped; one whose window is unknown is tried.
    fn window_skip(&self, t: usize) -> Option<Skip> {
        let (window, from) = self.refused_window?;
        let c = self.info.get(t)?.window?;
        (c <= window).then_some(Skip::Window { window, from })
    }

    /// The largest window refused so far, with `t`'s own.
    fn refused_with(&self, t: usize) -> Option<u32> {
        let own = self.info.get(t).and_then(|i| i.window);
        match (own, self.refused_window) {
            (Some(a), Some((b, _))) => Some(a.max(b)),
            (a, b) => a.or(b.map(|(w, _)| w)),
        }
    }

    /// What the decision about an attempt on `t` needs to know of the schedule.
    pub fn facts(
        &self,
        t: usize,
        now: Instant,
        retry_after: Option<Duration>,
        jitter: f64,
    ) -> Facts {
        let refused = self.refused_with(t);
        let larger_may_follow = self.queue.iter().any(|&i| {
            match (refused, self.info.get(i).and_then(|x| x.window)) {
                (Some(w), Some(c)) => c > w,
                // An unknown window on either side: it may be larger.
                _ => true,
            }
        });
        Facts {
            tries: (self.current == Some(t)).then_some(self.tries),
            retry_after,
            time_left: self.deadline.saturating_duration_since(now),
            more: !self.queue.is_empty(),
            larger_may_follow,
            jitter,
        }
    }

    /// The decision taken about an attempt on `t`. A commit ends the request (the schedule is
    /// not asked again); anything else shapes what comes next.
    pub fn report(&mut self, t: usize, d: &Decision) {
        let own_turn = self.current == Some(t);
        match d {
            Decision::Commit => self.ended = Some(None),
            Decision::RetrySame { after, reason } if own_turn => {
                self.wait = Some((*after, t, *reason))
            }
            Decision::RetrySame { .. } => {}
            Decision::Next { reason } => {
                if own_turn {
                    self.current = None;
                }
                // A refused window that is known and the largest so far narrows what follows.
                let own = self.info.get(t).and_then(|i| i.window);
                if let (FailClass::ContextLength, Some(w)) = (*reason, own) {
                    if self.refused_window.is_none_or(|(max, _)| w > max) {
                        self.refused_window = Some((w, t));
                    }
                }
            }
            Decision::Bail { .. } => {
                self.current = None;
                self.finish(None);
            }
        }
    }

    /// Whether anything is still to be tried after the decisions so far (a failure then
    /// counts as a fallback).
    pub fn goes_on(&self) -> bool {
        self.ended.is_none()
            && (self.wait.is_some()
                || self.current.is_some()
                || !self.queue.is_empty()
                || (!self.last_resort && !self.deferred.is_empty()))
    }

    /// Start the hedge `second` now (its delay passed without content), if it is still the
    /// next target, its circuit lets it through and the budget pays for it. It then has had
    /// its turn.
    pub fn start_hedge(&mut self, second: usize, now: Instant, gate: &mut dyn Gate) -> bool {
        if self.queue.front() != Some(&second) || gate.open(second, now) || !gate.withdraw(now) {
            return false;
        }
        self.queue.pop_front();
        self.sent += 1;
        true
    }

    /// A started hedge lost the race (the first target reached its commit point first): it
    /// was cancelled before it could answer, so its turn is yet to come.
    pub fn hedge_cancelled(&mut self, second: usize) {
        self.queue.push_front(second);
    }

    /// The hedge won the race: the first target was cancelled, and its turn is over.
    pub fn first_cancelled(&mut self) {
        self.current = None;
    }

    /// The targets still queued, in order (a continuation looks for one among them).
    pub fn queued(&self) -> impl Iterator<Item = usize> + '_ {
        self.queue.iter().copied()
    }
}

#[cfg(test)]
mod tests;
