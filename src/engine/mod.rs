//! The attempt loop: try each planned target in order until one serves the request.
//!
//! Runs inside `request_filter` for `POST /v1/chat/completions` after the body has been read and
//! planned. [`Engine::serve`] is a short loop: it asks the scheduler (`schedule.rs`, pure) what
//! to do, runs attempts (`attempt.rs`, `read.rs`: to the commit point, without touching the
//! client; `hedge.rs`: two at once), lets `classify.rs` (pure) decide about each, and commits the
//! answer (`commit.rs`, then `relay.rs` writes it). Every attempt is logged and counted in
//! `ledger.rs`. Around them: circuit breakers and a retry budget shared by all requests
//! (`health.rs`), tokens for service accounts (`token.rs`), peers and headers (`upstream.rs`).

mod attempt;
pub mod classify;
mod commit;
pub mod health;
mod hedge;
pub mod ledger;
mod read;
mod relay;
pub mod schedule;
mod splice;
mod stream;
mod token;
pub mod upstream;
pub mod urls;
pub mod watch;

pub use ledger::{AttemptLog, RequestLog};

use crate::api::{ChatRequest, GatewayError};
use crate::config::{HedgeAfter, Order};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::plan::{Plan, Target};
use crate::target::limit::{Limiter, MemoryLimiter};
use attempt::{Ask, Ready};
use classify::{classify, Decision, FailClass, Failure, Policy, Seen};
use commit::Committed;
use health::{Admit, Health};
use pingora_core::connectors::http::Connector;
use pingora_core::connectors::ConnectorOptions;
use pingora_proxy::Session;
use schedule::{Cut, Gate, Scheduler, Skip, Step, TargetInfo};
use std::borrow::Cow;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The request header that lowers the request's deadline (`30s`, `2500ms`, or milliseconds).
pub const DEADLINE_HEADER: &str = "x-detour-timeout";

pub struct Engine {
    pub gw: Arc<Gateway>,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// Every credential detour holds, masked out of provider text before a client or a log
    /// sees it.
    pub masker: Arc<crate::secrets::Masker>,
    connector: Connector,
    peers: upstream::Peers,
    fresh_group: AtomicU64,
    /// Per provider: its token endpoint's peer (service-account credentials; each account
    /// caches its own token).
    token_peers: upstream::Peers,
    /// Counts header-mode requests to unapproved hosts, per caller and host.
    pub limiter: Arc<dyn Limiter>,
}

/// Run `fut`, but give up (`None`) as soon as the client closes its connection.
async fn unless_client_gone<F: Future>(s: &mut Session, fut: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        r = fut => Some(r),
        _ = s.read_body_or_idle(true) => None,
    }
}

/// A uniform sample in `[0, 1)`: the jitter of a backoff.
fn jitter() -> f64 {
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    (r >> 11) as f64 / (1u64 << 53) as f64
}

/// What one attempt's result came to.
enum Turn {
    /// A response went to the client (or the client left): the request is over.
    Over(Result<(), GatewayError>),
    /// The schedule goes on.
    Next,
    /// A failure the configuration does not move on after: the schedule stops.
    Stop,
}

/// The breakers, the retry budget and the hedge delay, as the scheduler sees them.
struct HealthGate<'a> {
    engine: &'a Engine,
    targets: &'a [Target],
}

impl Gate for HealthGate<'_> {
    fn open(&mut self, t: usize, now: Instant) -> bool {
        let r = &self.targets[t].route;
        matches!(
            self.engine.health.admit(r.provider, &r.id, now),
            Admit::Open { .. }
        )
    }

    fn withdraw(&mut self, now: Instant) -> bool {
        self.engine.health.withdraw(now)
    }

    fn hedge_after(&self, t: usize) -> Option<Duration> {
        let r = &self.targets[t].route;
        Some(match self.engine.gw.cfg.failover.hedge? {
            HedgeAfter::Fixed(d) => d,
            HedgeAfter::P95(d) => self.engine.health.ttft_p95(r.provider, &r.id).unwrap_or(d),
        })
    }
}

impl Engine {
    pub fn new(
        gw: Arc<Gateway>,
        metrics: Arc<Metrics>,
        options: ConnectorOptions,
        keys: Option<&Arc<crate::auth::Keys>>,
    ) -> Engine {
        let connector = Connector::new(Some(options));
        let peers = upstream::Peers::new(
            gw.providers
                .iter()
                .map(|p| Some(upstream::PeerSpec::of(p)))
                .collect(),
        );
        let token_peers = upstream::Peers::new(
            gw.providers
                .iter()
                .map(|p| {
                    p.token_endpoint.as_ref().map(|t| upstream::PeerSpec {
                        endpoint: t.endpoint.clone(),
                        timeouts: p.timeouts,
                        http2: false,
                    })
                })
                .collect(),
        );
        let health = Arc::new(Health::new(
            gw.cfg.failover.breaker.clone(),
            gw.cfg.failover.budget.clone(),
            gw.providers
                .iter()
                .enumerate()
                .map(|(i, p)| (p.name.clone(), gw.catalog.ids_of(i)))
                .collect(),
        ));
        // Every breaker starts closed: its series exist (at 0) before its first change.
        for (model, m) in &gw.catalog.models {
            for r in &m.routes {
                let provider = gw.providers[r.provider].name.as_str();
                metrics
                    .circuit_state
                    .with_label_values(&[provider, model.as_str()])
                    .set(0);
            }
        }
        let limits = gw.cfg.header_mode.limits;
        let limiter: Arc<dyn Limiter> = match keys {
            // Day counts on the store, so they hold across restarts and instances.
            Some(k) => Arc::new(crate::auth::limits::StoreLimiter::new(
                limits,
                k.store.clone(),
            )),
            None => Arc::new(MemoryLimiter::new(limits)),
        };
        Engine {
            limiter,
            masker: keys.map_or_else(|| Arc::new(gw.masker()), |k| k.masker.clone()),
            gw,
            metrics,
            health,
            connector,
            peers,
            fresh_group: AtomicU64::new(1),
            token_peers,
        }
    }

    /// The request's deadline: the configured one, lowered (never raised) by the
    /// `x-detour-timeout` header.
    pub fn request_deadline(&self, h: &pingora_http::RequestHeader) -> Duration {
        let cfg = self.gw.cfg.failover.deadline;
        h.headers
            .get(DEADLINE_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let v = v.trim();
                v.parse::<u64>()
                    .ok()
                    .map(Duration::from_millis)
                    .or_else(|| crate::config::parse_duration(v))
            })
            .map_or(cfg, |d| d.min(cfg))
    }

    /// The targets in the order the policy asks for (bare models only).
    fn ordered<'a>(&self, plan: &'a Plan) -> Cow<'a, [Target]> {
        let mut v = match self.gw.cfg.failover.order {
            Order::Catalog => return Cow::Borrowed(&plan.targets),
            Order::Latency | Order::Price => plan.targets.clone(),
        };
        if self.gw.cfg.failover.order == Order::Latency {
            crate::plan::order_bare(&mut v, |t| {
                self.health.ttft_ewma(t.route.provider, &t.route.id)
            });
        } else {
            // Blended as a typical chat: three input tokens per output token.
            crate::plan::order_bare(&mut v, |t| {
                t.route.price.map(|p| (3.0 * p.input + p.output) / 4.0)
            });
        }
        Cow::Owned(v)
    }

    fn policy(&self) -> Policy<'_> {
        let f = &self.gw.cfg.failover;
        Policy {
            triggers: &self.gw.cfg.fallback,
            retry: &f.retry,
            on_content_filter: f.on_content_filter,
        }
    }

    /// Serve one planned chat completion. `Ok` means a response was written; `Err` is an error
    /// the caller writes (all attempts failed) or must not write (the client is gone).
    pub async fn serve(
        &self,
        s: &mut Session,
        log: &mut RequestLog,
        req: &ChatRequest,
        plan: &Plan,
        tab: Option<&crate::auth::escrow::Tab>,
    ) -> Result<(), GatewayError> {
        let begun = Instant::now();
        let deadline = crate::durations::later(begun, self.request_deadline(s.req_header()));
        self.health.deposit(begun);
        for sk in &plan.skipped {
            self.skipped(log, sk.provider, sk.source.clone(), sk.reason.clone());
        }
        let client = upstream::forwarded(s.req_header());
        let request_id = log.request_id.clone();
        let targets = self.ordered(plan);
        let ask = Ask {
            client: &client,
            req,
            request_id: &request_id,
            stream: req.stream,
            deadline,
            targets: &targets,
            tab,
        };
        let info = targets
            .iter()
            .map(|t| TargetInfo {
                window: t.route.context_window,
            })
            .collect();
        let mut sched = Scheduler::new(info, deadline, req.stream);
        let mut gate = HealthGate {
            engine: self,
            targets: &targets,
        };
        loop {
            match sched.next(Instant::now(), &mut gate) {
                Step::Skip { target, why } => self.skip(log, &targets, target, why),
                Step::Wait {
                    after,
                    target,
                    reason,
                } => {
                    let p = targets[target].route.provider;
                    let name = self.gw.providers[p].name.as_str();
                    self.metrics
                        .retries
                        .with_label_values(&[name, reason.label()])
                        .inc();
                    log.pending_wait = Some((after, reason.label()));
                    let wait = tokio::time::sleep(after);
                    unless_client_gone(s, wait)
                        .await
                        .ok_or(GatewayError::ClientClosed)?;
                }
                Step::Send { target, hedge } => {
                    self.hold(&ask, target, hedge.map(|h| h.0)).await?;
                    let run = self.run(s, &ask, target, hedge, &mut sched, &mut gate);
                    let results = run.await.ok_or(GatewayError::ClientClosed)?;
                    for (t, started, result) in results {
                        let at = At {
                            targets: &targets,
                            t,
                            started,
                        };
                        match self.settle(s, &ask, log, at, result, &mut sched).await {
                            Turn::Over(r) => return r,
                            // The schedule stopped: the rest of the batch is dropped.
                            Turn::Stop => break,
                            Turn::Next => {}
                        }
                    }
                }
                Step::Done { cut } => {
                    if cut == Some(Cut::Budget) {
                        self.metrics.budget_exhausted.inc();
                    }
                    return Err(self.all_failed(log, cut == Some(Cut::Deadline)));
                }
            }
        }
    }

    /// Hold credits for the PTB attempts about to be sent (a hedge's second too): a refusal
    /// ends the request.
    async fn hold(
        &self,
        ask: &Ask<'_>,
        t: usize,
        second: Option<usize>,
    ) -> Result<(), GatewayError> {
        let Some(tab) = ask.tab else { return Ok(()) };
        for t in std::iter::once(t).chain(second) {
            tab.hold(t, &ask.targets[t]).await?;
        }
        Ok(())
    }

    /// Log a target the schedule skips, with why.
    fn skip(&self, log: &mut RequestLog, targets: &[Target], t: usize, why: Skip) {
        let target = &targets[t];
        let why = match why {
            Skip::Window { window, from } => format!(
                "skipped: its context window is not larger than {}'s ({window} tokens)",
                targets[from].source(&self.gw)
            ),
            Skip::OpenedDuringRetries => {
                "skipped: circuit_open (it opened during this target's retries)".into()
            }
            Skip::CircuitOpen => "skipped: circuit_open".into(),
            Skip::Cut(Cut::Deadline) => "skipped: the request deadline was reached".into(),
            Skip::Cut(Cut::Budget) => "skipped: the retry budget is spent".into(),
        };
        self.skipped(log, target.route.provider, target.source(&self.gw), why);
    }

    /// Decide about one attempt's result and act on it: commit its answer, or log the failure
    /// and tell the schedule.
    async fn settle(
        &self,
        s: &mut Session,
        ask: &Ask<'_>,
        log: &mut RequestLog,
        at: At<'_>,
        result: Result<Box<Ready>, Failure>,
        sched: &mut Scheduler,
    ) -> Turn {
        let (seen, retry_after) = match &result {
            Ok(ready) => (ready.seen(), ready.retry_after()),
            Err(f) => (
                Seen::Failed {
                    class: f.class,
                    status: f.status,
                },
                f.retry_after,
            ),
        };
        let now = Instant::now();
        let decision = classify(
            &seen,
            &sched.facts(at.t, now, retry_after, jitter()),
            &self.policy(),
        );
        let (failure, decision) = match (result, decision) {
            (Ok(ready), Decision::Commit) => {
                let provider = &self.gw.providers[at.target().route.provider];
                match self.client_header(&ready.resp, log, provider, at.target(), at.t) {
                    Ok(header) => {
                        let c = Committed { ready, header };
                        let queued = sched.queued().collect();
                        // Boxed where it is built: a future held in a local (even once
                        // moved into a box) keeps its full size in this one's state, and
                        // this one lives as long as the request.
                        let commit = Box::pin(self.commit(s, ask, log, at, c, queued));
                        return Turn::Over(commit.await);
                    }
                    Err(_) => {
                        // Boxed, as the refusal below: not laid out in this future, which
                        // lives as long as the request.
                        Box::pin(self.release(ready.up, &ready.peer)).await;
                        let f = bad_response("unusable response header");
                        let reason = FailClass::BadResponse;
                        (f, Decision::Next { reason })
                    }
                }
            }
            (Ok(ready), d) => (Box::pin(self.refused(ready, &d)).await, d),
            (Err(f), d) => (f, d),
        };
        let target = at.target();
        if let Some(tab) = ask.tab {
            tab.release(at.t, target).await;
        }
        let health = match (target.pay, failure.class) {
            // The caller's own key was refused: nothing about the provider.
            (crate::plan::Pay::Byok, FailClass::AuthError) => health::Outcome::Neutral,
            (_, class) => class.health(failure.retry_after),
        };
        self.record_health(target, health);
        sched.report(at.t, &decision);
        self.failed(log, target, failure, at.started, sched.goes_on());
        match decision {
            Decision::Bail { .. } => Turn::Stop,
            Decision::Commit | Decision::RetrySame { .. } | Decision::Next { .. } => Turn::Next,
        }
    }

    /// A refusal that is not passed to the client (a context-length or content-policy
    /// refusal another target may take), as the failure it stands for (its connection
    /// released or closed).
    async fn refused(&self, ready: Box<Ready>, d: &Decision) -> Failure {
        let status = ready.resp.status.as_u16();
        let message = match &ready.said {
            Some(said) => said.message().to_string(),
            None => classify::error_message(status, &ready.body_bytes(), &self.masker),
        };
        let class = match d {
            Decision::Next { reason } | Decision::Bail { reason } => *reason,
            Decision::RetrySame { .. } | Decision::Commit => FailClass::of_status(status),
        };
        let retry_after = ready.retry_after();
        self.release(ready.up, &ready.peer).await;
        Failure {
            class,
            status: Some(status),
            message,
            retry_after,
        }
    }
}

/// Which target an attempt was, and when it started.
#[derive(Clone, Copy)]
struct At<'a> {
    targets: &'a [Target],
    t: usize,
    started: Instant,
}

impl<'a> At<'a> {
    fn target(&self) -> &'a Target {
        &self.targets[self.t]
    }
}

fn bad_response(message: &str) -> Failure {
    Failure::new(FailClass::BadResponse, None, message.into())
}

/// An upstream error without the peer details Pingora appends (addresses, fd numbers).
fn short_error(e: &pingora_error::Error) -> String {
    let mut s = e.etype().as_str().to_string();
    if let Some(ctx) = e.context.as_ref() {
        s.push_str(": ");
        s.push_str(crate::api::truncate(ctx.as_str(), 160));
    }
    s
}
