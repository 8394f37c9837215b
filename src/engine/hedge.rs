//! Running a scheduled send: one attempt, or a hedged pair — the target, and the next one too
//! if the first has no content after the hedge delay. The first of the two to reach its commit
//! point wins; the other is cancelled (its future dropped, its connection closed).

use super::attempt::{Ask, Ready};
use super::classify::Failure;
use super::schedule::{Gate, Scheduler};
use super::{unless_client_gone, Engine};
use pingora_proxy::Session;
use std::time::{Duration, Instant};

/// The results of a send, each with its target and start, in the order to settle them: a
/// failure first, the winner last.
pub(super) type Results = Vec<(usize, Instant, Result<Box<Ready>, Failure>)>;

impl Engine {
    /// Run the send the schedule asked for. `None`: the client left.
    pub(super) async fn run(
        &self,
        s: &mut Session,
        ask: &Ask<'_>,
        target: usize,
        hedge: Option<(usize, Duration)>,
        sched: &mut Scheduler,
        gate: &mut dyn Gate,
    ) -> Option<Results> {
        let targets = ask.targets;
        match hedge {
            Some((second, delay)) => {
                let h = Hedge {
                    first: target,
                    second,
                    delay,
                };
                Box::pin(self.hedged(s, ask, h, sched, gate)).await
            }
            None => {
                let started = Instant::now();
                // Boxed, as are the hedge and the continuation: an attempt's future is large
                // (the connector's), and is over before the answer is relayed, so it must not
                // stay inside every in-flight request's own future.
                let attempt = Box::pin(self.prepare(ask, &targets[target], None));
                let r = unless_client_gone(s, attempt).await?;
                Some(vec![(target, started, r)])
            }
        }
    }

    /// Run `first` and, if it has no content after `delay`, `second` too.
    async fn hedged(
        &self,
        s: &mut Session,
        ask: &Ask<'_>,
        h: Hedge,
        sched: &mut Scheduler,
        gate: &mut dyn Gate,
    ) -> Option<Results> {
        let targets = ask.targets;
        let t0 = Instant::now();
        let a = self.prepare(ask, &targets[h.first], None);
        tokio::pin!(a);
        let early = unless_client_gone(s, async {
            tokio::select! {
                r = &mut a => Some(r),
                _ = tokio::time::sleep(h.delay) => None,
            }
        })
        .await?;
        if let Some(r) = early {
            return Some(vec![(h.first, t0, r)]);
        }
        if !sched.start_hedge(h.second, Instant::now(), gate) {
            let r = unless_client_gone(s, a).await?;
            return Some(vec![(h.first, t0, r)]);
        }
        let t1 = Instant::now();
        let b = self.prepare(ask, &targets[h.second], None);
        tokio::pin!(b);
        // Whichever reaches its commit point (or fails) first.
        enum First<T> {
            A(T),
            B(T),
        }
        let first_done = unless_client_gone(s, async {
            tokio::select! {
                ra = &mut a => First::A(ra),
                rb = &mut b => First::B(rb),
            }
        })
        .await?;
        Some(match first_done {
            First::A(Ok(r)) => {
                self.hedge_lost(&targets[h.second]);
                sched.hedge_cancelled(h.second);
                vec![(h.first, t0, Ok(r))]
            }
            First::B(Ok(r)) => {
                self.hedge_lost(&targets[h.first]);
                sched.first_cancelled();
                vec![(h.second, t1, Ok(r))]
            }
            // It failed: the other may still win.
            First::A(Err(f)) => vec![
                (h.first, t0, Err(f)),
                (h.second, t1, unless_client_gone(s, b).await?),
            ],
            First::B(Err(f)) => vec![
                (h.second, t1, Err(f)),
                (h.first, t0, unless_client_gone(s, a).await?),
            ],
        })
    }
}

/// A hedged send: `first` now, `second` after `delay` without content.
#[derive(Debug, Clone, Copy)]
struct Hedge {
    first: usize,
    second: usize,
    delay: Duration,
}
