//! The attempt loop: try each planned target in order until one serves the request.
//!
//! Runs inside `request_filter` for `POST /v1/chat/completions` after the body has been read and
//! planned. An attempt runs to its commit point without touching the client (`attempt.rs`):
//! the whole JSON answer, or a stream's first event with content. Every failure before that
//! point falls back invisibly; after it (`relay.rs`) a failure can only be reported in band: an
//! SSE error event and no `[DONE]`.
//!
//! Around the attempts: one deadline for the whole request, same-target retries with backoff
//! and `Retry-After`, circuit breakers and a retry budget shared by all requests
//! (`health.rs`), the ordering policy for bare models, and hedging.

mod attempt;
pub mod classify;
pub mod health;
mod relay;
mod token;
pub mod upstream;
pub mod watch;

use crate::api::{AttemptReport, ChatRequest, GatewayError};
use crate::config::{HedgeAfter, Order, Secret};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::plan::{Plan, Target};
use crate::providers::{Credentials, Provider};
use attempt::{Ask, Ready, Verdict};
use classify::FailClass;
use health::{Admit, Health};
use pingora_core::connectors::http::Connector;
use pingora_core::connectors::ConnectorOptions;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use relay::Delivered;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The request header that lowers the request's deadline (`30s`, `2500ms`, or milliseconds).
pub const DEADLINE_HEADER: &str = "x-detour-timeout";

/// One attempt as logged and counted.
#[derive(Debug, Clone)]
pub struct AttemptLog {
    pub provider: usize,
    pub source: String,
    /// `success`, `skipped`, `hedge_lost`, or a [`FailClass`] label.
    pub outcome: &'static str,
    pub status: Option<u16>,
    pub error: Option<String>,
    pub duration: Duration,
}

/// Everything one request did, for the access log and metrics (`logging()` reads it).
#[derive(Debug, Default)]
pub struct RequestLog {
    pub request_id: String,
    pub started: Option<Instant>,
    pub stream: bool,
    pub is_chat: bool,
    /// Request outcome label; empty until decided.
    pub outcome: &'static str,
    pub status: u16,
    pub attempts: Vec<AttemptLog>,
    /// Set when an answer failed after the client had started receiving it.
    pub post_commit_error: Option<String>,
    /// The served answer's token usage, when it reported one.
    pub usage: Option<watch::Usage>,
}

impl RequestLog {
    /// Attempts actually sent upstream (skipped and lost hedges excluded).
    pub fn attempts_made(&self) -> usize {
        self.attempts
            .iter()
            .filter(|a| a.outcome != "skipped")
            .count()
    }
}

#[derive(Debug)]
pub(crate) struct Failure {
    class: FailClass,
    status: Option<u16>,
    message: String,
    /// The upstream's `Retry-After` / `retry-after-ms`, if it sent one.
    retry_after: Option<Duration>,
}

impl Failure {
    fn new(class: FailClass, status: Option<u16>, message: String) -> Failure {
        Failure {
            class,
            status,
            message,
            retry_after: None,
        }
    }

    /// What this failure says about the target's health.
    fn health(&self) -> health::Outcome {
        match self.class {
            FailClass::RateLimited => health::Outcome::RateLimited {
                retry_after: self.retry_after,
            },
            FailClass::ClientError
            | FailClass::OtherStatus
            | FailClass::Unsupported
            | FailClass::ContextLength
            | FailClass::ContentFilter => health::Outcome::Neutral,
            FailClass::AuthError
            | FailClass::NotFound
            | FailClass::RequestTimeout
            | FailClass::ServerError
            | FailClass::ConnectError
            | FailClass::ConnectTimeout
            | FailClass::FirstByteTimeout
            | FailClass::FirstTokenTimeout
            | FailClass::UpstreamClosed
            | FailClass::BadResponse => health::Outcome::Failure,
        }
    }
}

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
    /// Per provider: the token endpoint's peer (vertex) and the cached access token.
    token_peers: upstream::Peers,
    tokens: Vec<tokio::sync::Mutex<Option<(Secret, Instant)>>>,
}

/// Run `fut`, but give up (`None`) as soon as the client closes its connection.
async fn unless_client_gone<F: Future>(s: &mut Session, fut: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        r = fut => Some(r),
        _ = s.read_body_or_idle(true) => None,
    }
}

/// Why the attempt loop stopped before trying every target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cut {
    Deadline,
    Budget,
}

/// What one target's turn ended with.
enum Turn {
    /// A response went to the client (or the client left): the request is over.
    Over(Result<(), GatewayError>),
    /// Move on to the next target.
    Next,
    /// The prompt did not fit this target: only a larger context window may follow.
    Narrow,
}

/// A random duration in `[0, max)`: full jitter for backoff.
fn jitter(max: Duration) -> Duration {
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    max.mul_f64((r >> 11) as f64 / (1u64 << 53) as f64)
}

impl Engine {
    pub fn new(gw: Arc<Gateway>, metrics: Arc<Metrics>, options: ConnectorOptions) -> Engine {
        let connector = Connector::new(Some(options));
        let peers = upstream::Peers::new(
            gw.providers
                .iter()
                .map(|p| Some(upstream::PeerSpec::of(p)))
                .collect(),
        );
        // Token endpoints, for providers whose credentials are a service account.
        let token_peers = upstream::Peers::new(
            gw.providers
                .iter()
                .map(|p| match &p.credentials {
                    Credentials::ServiceAccount(sa) => Some(upstream::PeerSpec {
                        endpoint: sa.endpoint.clone(),
                        timeouts: sa.timeouts,
                        http2: false,
                    }),
                    _ => None,
                })
                .collect(),
        );
        let tokens = gw
            .providers
            .iter()
            .map(|_| tokio::sync::Mutex::new(None))
            .collect();
        let health = Arc::new(Health::new(
            gw.cfg.failover.breaker.clone(),
            gw.cfg.failover.budget.clone(),
            gw.providers
                .iter()
                .enumerate()
                .map(|(i, p)| (p.name.clone(), gw.catalog.ids_of(i)))
                .collect(),
        ));
        Engine {
            masker: Arc::new(gw.masker()),
            gw,
            metrics,
            health,
            connector,
            peers,
            fresh_group: AtomicU64::new(1),
            token_peers,
            tokens,
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

    /// The label a target's model gets in metrics: its catalog name, else `other`.
    fn model_label<'a>(&self, target: &'a Target) -> &'a str {
        if self.gw.catalog.models.contains_key(&target.model) {
            &target.model
        } else {
            "other"
        }
    }

    /// Count an attempt's outcome in its circuit, and publish a state change.
    fn record_health(&self, target: &Target, outcome: health::Outcome) {
        let provider = &self.gw.providers[target.route.provider];
        if let Some(state) = self.health.record(
            target.route.provider,
            &target.route.id,
            outcome,
            Instant::now(),
        ) {
            let labels = [provider.name.as_str(), self.model_label(target)];
            self.metrics
                .circuit_state
                .with_label_values(&labels)
                .set(state.gauge());
            if state == health::State::Open {
                self.metrics
                    .circuit_opened
                    .with_label_values(&[provider.name.as_str()])
                    .inc();
            }
        }
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

    /// Serve one planned chat completion. `Ok` means a response was written; `Err` is an error
    /// the caller writes (all attempts failed) or must not write (the client is gone).
    pub async fn serve(
        &self,
        s: &mut Session,
        log: &mut RequestLog,
        req: &ChatRequest,
        plan: &Plan,
    ) -> Result<(), GatewayError> {
        let begun = Instant::now();
        let deadline = begun + self.request_deadline(s.req_header());
        self.health.deposit(begun);
        let mut reports = Vec::with_capacity(plan.targets.len() + plan.skipped.len());
        for sk in &plan.skipped {
            self.skipped(
                log,
                &mut reports,
                sk.provider,
                sk.source.clone(),
                sk.reason.clone(),
            );
        }
        let client = upstream::forwarded(s.req_header());
        let request_id = log.request_id.clone();
        let ask = Ask {
            client: &client,
            req,
            request_id: &request_id,
            stream: req.stream,
            deadline,
        };
        let targets = self.ordered(plan);
        let mut queue: VecDeque<usize> = (0..targets.len()).collect();
        let mut deferred: Vec<usize> = Vec::new();
        let mut last_resort = false;
        let mut sent = 0usize;
        // After a context-length refusal: only a larger window may follow.
        let mut need_window: Option<(u32, String)> = None;
        let mut cut: Option<Cut> = None;
        'targets: loop {
            let Some(ti) = queue.pop_front() else {
                // Nothing else is left: the open circuits get their turn, in order.
                if !last_resort && !deferred.is_empty() {
                    last_resort = true;
                    queue.extend(deferred.drain(..));
                    continue;
                }
                break;
            };
            let target = &targets[ti];
            let provider = &self.gw.providers[target.route.provider];
            if let Some((w, from)) = &need_window {
                if target.route.context_window.is_none_or(|c| c <= *w) {
                    let why = format!(
                        "skipped: its context window is not larger than {from}'s ({w} tokens)"
                    );
                    self.skipped(
                        log,
                        &mut reports,
                        target.route.provider,
                        target.source(&self.gw),
                        why,
                    );
                    continue;
                }
            }
            let mut tries = 0u32;
            loop {
                let now = Instant::now();
                // Every try asks the breaker. Open before the first: deferred, tried only when
                // nothing else is left. Opened during the tries (by their failures or other
                // requests'): no more of them.
                if !last_resort {
                    let admit = self
                        .health
                        .admit(target.route.provider, &target.route.id, now);
                    if let Admit::Open { .. } = admit {
                        if tries == 0 {
                            deferred.push(ti);
                        } else {
                            self.skipped(
                                log,
                                &mut reports,
                                target.route.provider,
                                target.source(&self.gw),
                                "skipped: circuit_open (it opened during this target's retries)"
                                    .into(),
                            );
                        }
                        break;
                    }
                }
                if now >= deadline {
                    cut = Some(Cut::Deadline);
                    queue.push_front(ti);
                    break 'targets;
                }
                if sent > 0 && !self.health.withdraw(now) {
                    self.metrics.budget_exhausted.inc();
                    cut = Some(Cut::Budget);
                    queue.push_front(ti);
                    break 'targets;
                }
                sent += 1;
                tries += 1;
                // Hedging: streams, the first try of a target, with another target after it.
                let hedge = match (self.gw.cfg.failover.hedge, queue.front()) {
                    (Some(h), Some(&next)) if req.stream && tries == 1 && !last_resort => {
                        let delay = match h {
                            HedgeAfter::Fixed(d) => d,
                            HedgeAfter::P95(d) => self
                                .health
                                .ttft_p95(target.route.provider, &target.route.id)
                                .unwrap_or(d),
                        };
                        Some((next, delay))
                    }
                    _ => None,
                };
                let results = match hedge {
                    Some((next, delay)) => {
                        let hedged =
                            Box::pin(self.hedged(s, &ask, &targets, ti, next, delay, &mut sent));
                        match hedged.await {
                            Some(r) => r,
                            None => return Err(GatewayError::ClientClosed),
                        }
                    }
                    None => {
                        let started = Instant::now();
                        // Boxed, as are the hedge and the continuation: an attempt's future is
                        // large (the connector's), and is over before the answer is relayed, so
                        // it must not stay inside every in-flight request's own future.
                        let attempt = Box::pin(self.prepare(&ask, target, None));
                        match unless_client_gone(s, attempt).await {
                            Some(r) => vec![(ti, started, r)],
                            None => return Err(GatewayError::ClientClosed),
                        }
                    }
                };
                // A hedge started the next target: it has had its turn.
                if results.iter().any(|r| Some(&r.0) == queue.front()) {
                    queue.pop_front();
                }
                let mut retry_wait: Option<(Duration, &'static str)> = None;
                for (i, started, r) in results {
                    let t = &targets[i];
                    match r {
                        Ok(ready) => {
                            match self
                                .on_ready(
                                    s,
                                    &ask,
                                    log,
                                    &mut reports,
                                    t,
                                    i,
                                    ready,
                                    started,
                                    &queue,
                                    &targets,
                                )
                                .await
                            {
                                Turn::Over(r) => return r,
                                Turn::Next => {}
                                Turn::Narrow => {
                                    let w = t.route.context_window.unwrap_or(u32::MAX);
                                    let w = need_window.as_ref().map_or(w, |(n, _)| w.max(*n));
                                    need_window = Some((w, t.source(&self.gw)));
                                }
                            }
                        }
                        Err(f) => {
                            self.record_health(t, f.health());
                            let wait = if i == ti {
                                self.retry_wait(&f, tries, deadline)
                            } else {
                                None
                            };
                            let falls_back = f.class.falls_back(f.status, &self.gw.cfg.fallback);
                            self.failed(
                                log,
                                &mut reports,
                                t,
                                f,
                                started,
                                !queue.is_empty() || wait.is_some(),
                            );
                            if wait.is_some() {
                                retry_wait = wait;
                            } else if !falls_back {
                                break 'targets;
                            }
                        }
                    }
                }
                let Some((wait, reason)) = retry_wait else {
                    break;
                };
                self.metrics
                    .retries
                    .with_label_values(&[provider.name.as_str(), reason])
                    .inc();
                if !wait.is_zero()
                    && unless_client_gone(s, tokio::time::sleep(wait))
                        .await
                        .is_none()
                {
                    return Err(GatewayError::ClientClosed);
                }
            }
        }
        // Whatever was not tried is reported, with why.
        for i in deferred {
            let t = &targets[i];
            self.skipped(
                log,
                &mut reports,
                t.route.provider,
                t.source(&self.gw),
                "skipped: circuit_open".into(),
            );
        }
        if let Some(c) = cut {
            let why = match c {
                Cut::Deadline => "skipped: the request deadline was reached",
                Cut::Budget => "skipped: the retry budget is spent",
            };
            for i in queue {
                let t = &targets[i];
                self.skipped(
                    log,
                    &mut reports,
                    t.route.provider,
                    t.source(&self.gw),
                    why.into(),
                );
            }
        }
        let tried: Vec<&AttemptReport> = reports.iter().filter(|r| !r.skipped).collect();
        let status = if cut == Some(Cut::Deadline) {
            504
        } else {
            match tried.first().and_then(|r| r.status) {
                Some(s) if tried.iter().all(|x| x.status == Some(s)) => s,
                _ => 502,
            }
        };
        Err(GatewayError::AllFailed {
            status,
            attempts: reports,
        })
    }

    /// After a failure on the target's `tries`-th try: how long to wait before trying it
    /// again, or `None` to move on. Transient 5xx back off exponentially with full jitter; a
    /// 429 waits exactly its `Retry-After` if that fits the maximum and the deadline.
    fn retry_wait(
        &self,
        f: &Failure,
        tries: u32,
        deadline: Instant,
    ) -> Option<(Duration, &'static str)> {
        let r = &self.gw.cfg.failover.retry;
        if tries >= r.attempts_per_target {
            return None;
        }
        let (wait, reason) = match (f.class, f.status) {
            (FailClass::RateLimited, _) => {
                let ra = f.retry_after?;
                if ra > r.max_retry_after {
                    return None;
                }
                (ra, "retry_after")
            }
            (FailClass::ServerError, Some(s)) if r.on_status.contains(&s) => {
                let cap = r
                    .backoff_base
                    .saturating_mul(1u32 << (tries - 1).min(16))
                    .min(r.backoff_max);
                (jitter(cap), "server_error")
            }
            _ => return None,
        };
        // Only if the retry could still get an answer in time: wait plus a little.
        let ready_by = crate::durations::later(Instant::now(), wait + Duration::from_millis(50));
        (ready_by < deadline).then_some((wait, reason))
    }

    /// Run the target at `first` and, if it has no content after `delay`, the one at `second`
    /// too; the first to reach its commit point wins and the other is cancelled. Returns the
    /// results in the order to record them (the winner last), or `None` if the client left.
    #[allow(clippy::too_many_arguments)]
    async fn hedged(
        &self,
        s: &mut Session,
        ask: &Ask<'_>,
        targets: &[Target],
        first: usize,
        second: usize,
        delay: Duration,
        sent: &mut usize,
    ) -> Option<Vec<(usize, Instant, Result<Box<Ready>, Failure>)>> {
        let t0 = Instant::now();
        let a = self.prepare(ask, &targets[first], None);
        tokio::pin!(a);
        let early = unless_client_gone(s, async {
            tokio::select! {
                r = &mut a => Some(r),
                _ = tokio::time::sleep(delay) => None,
            }
        })
        .await?;
        if let Some(r) = early {
            return Some(vec![(first, t0, r)]);
        }
        let t2 = &targets[second];
        let admitted = !matches!(
            self.health
                .admit(t2.route.provider, &t2.route.id, Instant::now()),
            Admit::Open { .. }
        );
        if !admitted || !self.health.withdraw(Instant::now()) {
            let r = unless_client_gone(s, a).await?;
            return Some(vec![(first, t0, r)]);
        }
        *sent += 1;
        let t1 = Instant::now();
        let b = self.prepare(ask, t2, None);
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
        let results = match first_done {
            First::A(Ok(r)) => {
                self.hedge_lost(&targets[second]);
                vec![(first, t0, Ok(r))]
            }
            First::B(Ok(r)) => {
                self.hedge_lost(&targets[first]);
                vec![(second, t1, Ok(r))]
            }
            // It failed: the other may still win.
            First::A(Err(f)) => vec![
                (first, t0, Err(f)),
                (second, t1, unless_client_gone(s, b).await?),
            ],
            First::B(Err(f)) => vec![
                (first, t0, unless_client_gone(s, a).await?),
                (second, t1, Err(f)),
            ],
        };
        Some(results)
    }

    /// The hedge that did not win: cancelled (its future dropped, its connection closed).
    fn hedge_lost(&self, t: &Target) {
        let provider = &self.gw.providers[t.route.provider];
        self.metrics
            .attempts
            .with_label_values(&[provider.name.as_str(), "hedge_lost"])
            .inc();
        self.record_health(t, health::Outcome::Neutral);
    }

    /// An attempt reached its commit point. Decide whether to serve it, and if so write it.
    #[allow(clippy::too_many_arguments)]
    async fn on_ready(
        &self,
        s: &mut Session,
        ask: &Ask<'_>,
        log: &mut RequestLog,
        reports: &mut Vec<AttemptReport>,
        target: &Target,
        index: usize,
        ready: Box<Ready>,
        started: Instant,
        queue: &VecDeque<usize>,
        targets: &[Target],
    ) -> Turn {
        let provider = &self.gw.providers[target.route.provider];
        let status = ready.resp.status.as_u16();
        let more = !queue.is_empty();
        match &ready.verdict {
            Verdict::ContextLength(m) => {
                // Fall back only if a later target has a larger window; else this is the answer.
                let w = target.route.context_window;
                let larger = queue.iter().any(|&i| {
                    matches!((w, targets[i].route.context_window), (Some(a), Some(b)) if b > a)
                });
                if larger {
                    let m = m.clone();
                    self.release(ready.up, &ready.peer).await;
                    let f = Failure::new(FailClass::ContextLength, Some(status), m);
                    self.record_health(target, health::Outcome::Neutral);
                    self.failed(log, reports, target, f, started, true);
                    return Turn::Narrow;
                }
            }
            Verdict::ContentFilter(m) if self.gw.cfg.failover.on_content_filter && more => {
                let m = m.clone();
                self.release(ready.up, &ready.peer).await;
                let f = Failure::new(FailClass::ContentFilter, Some(status), m);
                self.record_health(target, health::Outcome::Neutral);
                self.failed(log, reports, target, f, started, true);
                return Turn::Next;
            }
            _ => {}
        }
        let serving = ready.verdict == Verdict::Serve;
        let ttft = ready.ttft;
        let h = match self.client_header(&ready.resp, log, provider, target, index) {
            Ok(h) => h,
            Err(_) => {
                let f = Failure::new(
                    FailClass::BadResponse,
                    None,
                    "unusable response header".into(),
                );
                self.record_health(target, f.health());
                self.failed(log, reports, target, f, started, more);
                return Turn::Next;
            }
        };
        let stream = matches!(ready.body, attempt::ReadyBody::Stream { .. });
        // Boxed, like the attempt: otherwise rustc lays the relay's future out inline in this
        // one and in serve's, each sized for its largest await.
        let delivered = Box::pin(self.deliver(s, ready, Some(h), provider, None, ask.req));
        match delivered.await {
            Delivered::ClientGone => {
                self.record_health(target, health::Outcome::Neutral);
                // The attempt served: the access log says which, and that the client left.
                self.record_success(log, provider, target, "client_closed", status, started);
                Turn::Over(Err(GatewayError::ClientClosed))
            }
            Delivered::Cut { reason } => {
                let reason = self.masker.string(reason);
                self.record_health(target, health::Outcome::Failure);
                self.broken_attempt(log, target, status, &reason, started);
                Turn::Over(Err(GatewayError::AnswerCut))
            }
            Delivered::Done { usage, finalised } => {
                if serving {
                    self.record_health(
                        target,
                        health::Outcome::Success {
                            ttft: stream.then_some(ttft),
                        },
                    );
                    if stream {
                        self.metrics
                            .stream_ttft
                            .with_label_values(&[provider.name.as_str()])
                            .observe(ttft.as_secs_f64());
                    }
                    self.account(target, usage);
                    log.usage = usage;
                    self.record_success(log, provider, target, "success", status, started);
                    if log.outcome.is_empty() {
                        log.outcome = if finalised {
                            "success_finalised"
                        } else {
                            "success"
                        };
                    }
                } else {
                    self.record_health(target, health::Outcome::Neutral);
                    self.record_success(log, provider, target, "client_error", status, started);
                    log.outcome = "upstream_client_error";
                }
                Turn::Over(Ok(()))
            }
            Delivered::Broken {
                reason,
                watch,
                head,
            } => {
                let reason = self.masker.string(reason);
                self.record_health(target, health::Outcome::Failure);
                self.broken_attempt(log, target, status, &reason, started);
                if self.gw.cfg.failover.continuation {
                    if let (Some(text), Some(head)) = (watch.text(), head) {
                        if !text.is_empty()
                            && Box::pin(
                                self.continue_stream(s, ask, log, text, &head, queue, targets),
                            )
                            .await
                        {
                            log.outcome = "success_continued";
                            return Turn::Over(Ok(()));
                        }
                    }
                }
                self.end_broken(s, &reason).await;
                Turn::Over(Ok(()))
            }
        }
    }

    /// After a stream broke past its commit point: re-issue the request to the next target the
    /// catalog says accepts prefill, with the partial answer as a trailing assistant message,
    /// and splice its answer into the client's stream. `true` if it finished the answer; on
    /// `false` the caller reports the original failure, whatever the continuation's was.
    #[allow(clippy::too_many_arguments)]
    async fn continue_stream(
        &self,
        s: &mut Session,
        ask: &Ask<'_>,
        log: &mut RequestLog,
        text: &str,
        head: &relay::ChunkHead,
        queue: &VecDeque<usize>,
        targets: &[Target],
    ) -> bool {
        let prefill = crate::api::Capabilities::PREFILL;
        let mut scratch = Vec::new();
        for &i in queue {
            let t = &targets[i];
            if !t.route.capabilities.contains(prefill) {
                let why = format!(
                    "continuation skipped: the catalog lists no prefill support for {}",
                    t.route.id
                );
                self.skipped(log, &mut scratch, t.route.provider, t.source(&self.gw), why);
                continue;
            }
            let Ok(prefilled) = ask.req.with_prefill(text) else {
                return false;
            };
            let started = Instant::now();
            let provider = &self.gw.providers[t.route.provider];
            let ready = match unless_client_gone(s, self.prepare(ask, t, Some(&prefilled))).await {
                None => return false,
                Some(Err(mut f)) => {
                    self.record_health(t, f.health());
                    f.message = format!("continuation: {}", f.message);
                    self.failed(log, &mut scratch, t, f, started, false);
                    return false;
                }
                Some(Ok(r)) => r,
            };
            let status = ready.resp.status.as_u16();
            if ready.verdict != Verdict::Serve
                || !matches!(ready.body, attempt::ReadyBody::Stream { .. })
            {
                let f = Failure::new(
                    FailClass::of_status(status),
                    Some(status),
                    format!(
                        "continuation: {} refused the prefill ({status})",
                        provider.name
                    ),
                );
                self.release(ready.up, &ready.peer).await;
                self.record_health(t, f.health());
                self.failed(log, &mut scratch, t, f, started, false);
                return false;
            }
            let ttft = ready.ttft;
            return match self
                .deliver(s, ready, None, provider, Some(head), ask.req)
                .await
            {
                Delivered::Done { usage, .. } => {
                    self.record_health(t, health::Outcome::Success { ttft: Some(ttft) });
                    self.account(t, usage);
                    self.record_success(log, provider, t, "success", status, started);
                    true
                }
                Delivered::ClientGone => {
                    self.record_success(log, provider, t, "client_closed", status, started);
                    false
                }
                Delivered::Cut { reason } | Delivered::Broken { reason, .. } => {
                    self.record_health(t, health::Outcome::Failure);
                    let f = Failure::new(
                        FailClass::UpstreamClosed,
                        Some(status),
                        format!("continuation: {reason}"),
                    );
                    self.failed(log, &mut scratch, t, f, started, false);
                    false
                }
            };
        }
        false
    }

    /// Token and cost metrics for a served answer, at the route's catalog price.
    fn account(&self, target: &Target, usage: Option<watch::Usage>) {
        let Some(u) = usage else { return };
        let provider = &self.gw.providers[target.route.provider];
        let labels = |kind| [provider.name.as_str(), self.model_label(target), kind];
        self.metrics
            .tokens
            .with_label_values(&labels("prompt"))
            .inc_by(u.prompt_tokens);
        self.metrics
            .tokens
            .with_label_values(&labels("completion"))
            .inc_by(u.completion_tokens);
        if let Some(p) = target.route.price {
            let usd = (u.prompt_tokens as f64 * p.input + u.completion_tokens as f64 * p.output)
                / 1_000_000.0;
            self.metrics
                .cost_usd
                .with_label_values(&[provider.name.as_str(), self.model_label(target)])
                .inc_by(usd);
        }
    }

    fn skipped(
        &self,
        log: &mut RequestLog,
        reports: &mut Vec<AttemptReport>,
        provider: usize,
        source: String,
        reason: String,
    ) {
        self.metrics
            .attempts
            .with_label_values(&[self.gw.providers[provider].name.as_str(), "skipped"])
            .inc();
        log.attempts.push(AttemptLog {
            provider,
            source: source.clone(),
            outcome: "skipped",
            status: None,
            error: Some(reason.clone()),
            duration: Duration::ZERO,
        });
        reports.push(AttemptReport {
            source,
            error: reason,
            status: None,
            skipped: true,
        });
    }

    /// Log and count a failed attempt. `moving_on`: something is tried after it.
    fn failed(
        &self,
        log: &mut RequestLog,
        reports: &mut Vec<AttemptReport>,
        target: &Target,
        f: Failure,
        started: Instant,
        moving_on: bool,
    ) {
        let pname = self.gw.providers[target.route.provider].name.as_str();
        let label = f.class.label();
        self.metrics
            .attempts
            .with_label_values(&[pname, label])
            .inc();
        if moving_on {
            self.metrics
                .fallbacks
                .with_label_values(&[pname, label])
                .inc();
        }
        let source = target.source(&self.gw);
        // Provider text (an error body, an in-band error event, a token endpoint's reason):
        // every credential masked before the client or the log sees it.
        let message = self.masker.string(f.message);
        log.attempts.push(AttemptLog {
            provider: target.route.provider,
            source: source.clone(),
            outcome: label,
            status: f.status,
            error: Some(message.clone()),
            duration: started.elapsed(),
        });
        reports.push(AttemptReport {
            source,
            error: message,
            status: f.status,
            skipped: false,
        });
    }

    /// Log and count an attempt that failed after its answer was committed.
    fn broken_attempt(
        &self,
        log: &mut RequestLog,
        target: &Target,
        status: u16,
        reason: &str,
        started: Instant,
    ) {
        let pname = self.gw.providers[target.route.provider].name.as_str();
        self.metrics
            .attempts
            .with_label_values(&[pname, "stream_error"])
            .inc();
        log.attempts.push(AttemptLog {
            provider: target.route.provider,
            source: target.source(&self.gw),
            outcome: "stream_error",
            status: Some(status),
            error: Some(reason.to_string()),
            duration: started.elapsed(),
        });
        log.status = status;
        log.post_commit_error = Some(reason.to_string());
        log.outcome = "stream_error";
    }

    fn record_success(
        &self,
        log: &mut RequestLog,
        provider: &Provider,
        target: &Target,
        outcome: &'static str,
        status: u16,
        started: Instant,
    ) {
        self.metrics
            .attempts
            .with_label_values(&[provider.name.as_str(), outcome])
            .inc();
        log.attempts.push(AttemptLog {
            provider: target.route.provider,
            source: target.source(&self.gw),
            outcome,
            status: Some(status),
            error: None,
            duration: started.elapsed(),
        });
        log.status = status;
    }

    /// The client's response header for an answer from `target`: the upstream status, the
    /// upstream headers a client may want (type, caching, rate-limit info) and detour's own.
    fn client_header(
        &self,
        resp: &ResponseHeader,
        log: &RequestLog,
        provider: &Provider,
        target: &Target,
        index: usize,
    ) -> pingora_core::Result<ResponseHeader> {
        let mut h = ResponseHeader::build(resp.status, Some(12))?;
        for (name, value) in resp.headers.iter() {
            let n = name.as_str();
            let passed = n == "content-type"
                || n == "cache-control"
                || n == "retry-after"
                || n.starts_with("x-ratelimit-")
                || n.starts_with("openai-");
            // A header that quotes a credential is not passed on.
            if passed && !self.masker.finds(value.as_bytes()) {
                h.append_header(name.clone(), value.clone())?;
            }
        }
        h.insert_header("x-detour-provider", provider.name.as_str())?;
        h.insert_header("x-detour-model", target.route.id.as_str())?;
        h.insert_header("x-detour-attempts", log.attempts_made() + 1)?;
        h.insert_header("x-detour-fallback-index", index)?;
        h.insert_header("x-request-id", log.request_id.as_str())?;
        Ok(h)
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
