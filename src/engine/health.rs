//! Shared, cross-request state of the targets: one circuit breaker and latency record per
//! (provider, model id), and the retry budget. Every request reads it when it plans its
//! attempts and writes one outcome per attempt; the lock is held for a few map operations,
//! never across I/O. Time is passed in, so the state machine is tested without sleeping.

use crate::config::failover::{Breaker, Budget};
use crate::durations::{earlier, later};
use serde::Serialize;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Tracked model ids per provider that are not in the catalog. They come from clients (pinned
/// `model/provider` entries), so they are bounded in number here and in size by the planner
/// (at most 256 bytes): past this, quiet entries are evicted, then the least recently used.
/// Catalog ids are always tracked: their number is fixed by the config, and no client can push
/// them out.
const MAX_PINNED: usize = 256;
/// Time-to-first-token samples kept per target (for the p95 hedge delay).
const TTFT_SAMPLES: usize = 64;
/// Weight of the newest sample in the TTFT moving average.
const EWMA_ALPHA: f64 = 0.3;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

/// What an attempt did, as the breaker counts it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Outcome {
    /// Served: closes a half-open circuit. `ttft` feeds the latency record.
    Success { ttft: Option<Duration> },
    /// A provider fault: a 5xx, a timeout, a reset, a broken stream, a rejected key.
    Failure,
    /// A rate limit: cools the target for `Retry-After` when given, else counts as a failure.
    RateLimited { retry_after: Option<Duration> },
    /// Says nothing about the target's health (the client's own error, not sent, cancelled).
    Neutral,
}

/// Whether a request may send to a target now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Half-open: this request is the one probe.
    Probe,
    /// Open (or cooling after a rate limit) until `until`.
    Open {
        until: Instant,
    },
}

#[derive(Debug, Clone)]
struct Entry {
    state: State,
    /// Open: when the cool-down ends. Half-open: when the probe was let through.
    since: Instant,
    until: Instant,
    consecutive: u32,
    /// Outcomes in the current window: (window start, requests, failures).
    window_start: Instant,
    requests: u32,
    failures: u32,
    ttft_ewma: Option<f64>,
    ttft: VecDeque<f32>,
    opened: u64,
    /// When an outcome was last recorded (eviction of pinned ids).
    touched: Instant,
}

impl Entry {
    fn new(now: Instant) -> Entry {
        Entry {
            touched: now,
            state: State::Closed,
            since: now,
            until: now,
            consecutive: 0,
            window_start: now,
            requests: 0,
            failures: 0,
            ttft_ewma: None,
            ttft: VecDeque::new(),
            opened: 0,
        }
    }

    fn quiet(&self) -> bool {
        self.state == State::Closed && self.consecutive == 0 && self.failures == 0
    }

    /// Count one outcome at `now`.
    fn apply(&mut self, outcome: Outcome, now: Instant, b: &Breaker) {
        self.touched = now;
        if now.saturating_duration_since(self.window_start) >= b.window {
            self.window_start = now;
            self.requests = 0;
            self.failures = 0;
        }
        match outcome {
            Outcome::Neutral => {
                if self.state == State::HalfOpen {
                    // The probe proved nothing: let the next request probe.
                    self.since = earlier(now, b.cool_down);
                }
            }
            Outcome::Success { ttft } => self.success(ttft, now),
            Outcome::RateLimited {
                retry_after: Some(ra),
            } if b.enabled => {
                self.count_failure();
                // An upstream's word, so capped: a circuit is cooled for `max-cool-down` at most.
                let until = later(now, ra.min(b.max_cool_down));
                let until = until.max(if self.state == State::Open {
                    self.until
                } else {
                    now
                });
                self.open(now, until);
            }
            Outcome::Failure | Outcome::RateLimited { .. } => {
                self.count_failure();
                if b.enabled {
                    let ratio_hit = self.requests >= b.min_requests
                        && f64::from(self.failures) >= b.failure_ratio * f64::from(self.requests);
                    match self.state {
                        State::HalfOpen => self.open(now, later(now, b.cool_down)),
                        State::Closed
                            if self.consecutive >= b.consecutive_failures || ratio_hit =>
                        {
                            self.open(now, later(now, b.cool_down))
                        }
                        State::Closed | State::Open => {}
                    }
                }
            }
        }
    }

    fn count_failure(&mut self) {
        self.requests += 1;
        self.failures += 1;
        self.consecutive += 1;
    }

    /// A served attempt: closes the circuit; `ttft` feeds the latency record.
    fn success(&mut self, ttft: Option<Duration>, now: Instant) {
        self.consecutive = 0;
        self.requests += 1;
        if self.state != State::Closed {
            self.state = State::Closed;
            self.requests = 1;
            self.failures = 0;
            self.window_start = now;
        }
        if let Some(t) = ttft {
            let ms = t.as_secs_f64() * 1000.0;
            self.ttft_ewma = Some(match self.ttft_ewma {
                Some(x) => x + EWMA_ALPHA * (ms - x),
                None => ms,
            });
            if self.ttft.len() == TTFT_SAMPLES {
                self.ttft.pop_front();
            }
            self.ttft.push_back(ms as f32);
        }
    }

    fn open(&mut self, now: Instant, until: Instant) {
        if self.state != State::Open {
            self.opened += 1;
        }
        self.state = State::Open;
        self.since = now;
        self.until = until;
        self.requests = 0;
        self.failures = 0;
        self.window_start = now;
    }
}

/// One target's state, for `GET /admin/health`.
#[derive(Debug, Clone, Serialize)]
pub struct TargetHealth {
    pub provider: String,
    pub model: String,
    pub state: State,
    pub consecutive_failures: u32,
    pub window_requests: u32,
    pub window_failures: u32,
    /// Open: milliseconds until a probe is let through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub open_for_ms: Option<u64>,
    pub times_opened: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_ewma_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttft_p95_ms: Option<f64>,
}

/// The retry budget: extra attempts (retries and fallbacks) allowed as a share of recent
/// requests, with a floor per second so that light traffic can always fail over.
#[derive(Debug, Clone)]
struct BudgetState {
    /// Per one-tenth of the window: (slot start, requests, extra attempts).
    slots: VecDeque<(Instant, u64, u64)>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct BudgetHealth {
    pub requests: u64,
    pub extra_attempts: u64,
    pub allowed: u64,
}

/// One provider's tracked targets.
#[derive(Debug, Default)]
struct Tracked {
    /// The provider's catalog ids: always tracked.
    catalog: HashSet<String>,
    entries: HashMap<String, Entry>,
    /// Entries whose id is not in the catalog.
    pinned: usize,
}

impl Tracked {
    /// Make room for one more pinned id: evict quiet ones, else the least recently used.
    fn make_room(&mut self) {
        if self.pinned < MAX_PINNED {
            return;
        }
        let catalog = &self.catalog;
        self.entries
            .retain(|id, e| catalog.contains(id) || !e.quiet());
        self.pinned = self.entries.len() - self.catalog_entries();
        if self.pinned < MAX_PINNED {
            return;
        }
        let oldest = self
            .entries
            .iter()
            .filter(|(id, _)| !catalog.contains(*id))
            .min_by_key(|(_, e)| e.touched)
            .map(|(id, _)| id.clone());
        if let Some(id) = oldest {
            self.entries.remove(&id);
            self.pinned -= 1;
        }
    }

    fn catalog_entries(&self) -> usize {
        self.entries
            .keys()
            .filter(|id| self.catalog.contains(*id))
            .count()
    }
}

pub struct Health {
    breaker: Breaker,
    budget: Budget,
    providers: Vec<String>,
    targets: Vec<Mutex<Tracked>>,
    budget_state: Mutex<BudgetState>,
}

/// A lock that a panic elsewhere cannot take out of service: the state it guards is a set of
/// counters, valid after any partial update.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Health {
    /// `providers`: each provider's name and its catalog model ids.
    pub fn new(breaker: Breaker, budget: Budget, providers: Vec<(String, Vec<String>)>) -> Health {
        let targets = providers
            .iter()
            .map(|(_, ids)| {
                Mutex::new(Tracked {
                    catalog: ids.iter().cloned().collect(),
                    ..Tracked::default()
                })
            })
            .collect();
        Health {
            breaker,
            budget,
            providers: providers.into_iter().map(|(name, _)| name).collect(),
            targets,
            budget_state: Mutex::new(BudgetState {
                slots: VecDeque::new(),
            }),
        }
    }

    /// After a reload: take over `old`'s breaker and latency state for every provider that
    /// `unchanged` says kept its name and settings, and the retry budget's count.
    pub fn inherit(&self, old: &Health, unchanged: &dyn Fn(&str) -> bool) {
        for (i, name) in self.providers.iter().enumerate() {
            let Some(j) = old.providers.iter().position(|n| n == name) else {
                continue;
            };
            if !unchanged(name) {
                continue;
            }
            let (Some(new), Some(before)) = (self.targets.get(i), old.targets.get(j)) else {
                continue;
            };
            let before = lock(before).entries.clone();
            let mut t = lock(new);
            for (id, e) in before {
                t.entries.entry(id).or_insert(e);
            }
            t.pinned = t.entries.len() - t.catalog_entries();
        }
        let slots = lock(&old.budget_state).clone();
        *lock(&self.budget_state) = slots;
    }

    /// Whether `model` on `provider` may be sent to now. An open circuit whose cool-down has
    /// passed lets exactly one request through as its probe.
    pub fn admit(&self, provider: usize, model: &str, now: Instant) -> Admit {
        if !self.breaker.enabled {
            return Admit::Yes;
        }
        let Some(mut t) = self.targets.get(provider).map(lock) else {
            return Admit::Yes;
        };
        let Some(e) = t.entries.get_mut(model) else {
            return Admit::Yes;
        };
        match e.state {
            State::Closed => Admit::Yes,
            State::Open if now >= e.until => {
                e.state = State::HalfOpen;
                e.since = now;
                Admit::Probe
            }
            State::Open => Admit::Open { until: e.until },
            // A probe that never reported back (its request was cancelled) frees the slot
            // after one more cool-down.
            State::HalfOpen if now >= later(e.since, self.breaker.cool_down) => {
                e.since = now;
                Admit::Probe
            }
            State::HalfOpen => Admit::Open {
                until: later(e.since, self.breaker.cool_down),
            },
        }
    }

    /// Count one attempt's outcome. Returns the state after it, if it changed.
    pub fn record(
        &self,
        provider: usize,
        model: &str,
        outcome: Outcome,
        now: Instant,
    ) -> Option<State> {
        let mut t = lock(self.targets.get(provider)?);
        if !t.entries.contains_key(model) {
            if matches!(outcome, Outcome::Neutral) {
                return None;
            }
            if matches!(outcome, Outcome::Success { ttft: None }) {
                return None; // nothing to remember about a healthy target
            }
            if model.len() > crate::text::MAX_MODEL_ID {
                return None; // the planner refuses such ids; never keep one
            }
            if !t.catalog.contains(model) {
                t.make_room();
                t.pinned += 1;
            }
            t.entries.insert(model.to_string(), Entry::new(now));
        }
        let e = t.entries.get_mut(model)?;
        let before = e.state;
        e.apply(outcome, now, &self.breaker);
        (e.state != before).then_some(e.state)
    }

    /// The moving average of time to first token, in ms, if measured.
    pub fn ttft_ewma(&self, provider: usize, model: &str) -> Option<f64> {
        lock(self.targets.get(provider)?)
            .entries
            .get(model)?
            .ttft_ewma
    }

    /// The p95 of the recent times to first token, once there are 20 samples.
    pub fn ttft_p95(&self, provider: usize, model: &str) -> Option<Duration> {
        let t = lock(self.targets.get(provider)?);
        p95(&t.entries.get(model)?.ttft).and_then(|ms| crate::durations::secs_f64(ms / 1000.0))
    }

    /// Take one extra attempt (a retry or a fallback) from the budget. `false`: spent.
    pub fn withdraw(&self, now: Instant) -> bool {
        if !self.budget.enabled {
            return true;
        }
        let mut g = lock(&self.budget_state);
        let (requests, extra) = self.rotate(&mut g, now);
        let allowed = self.allowed(requests);
        if extra >= allowed {
            return false;
        }
        if let Some(last) = g.slots.back_mut() {
            last.2 += 1;
        }
        true
    }

    /// Count one request toward the budget's base.
    pub fn deposit(&self, now: Instant) {
        if !self.budget.enabled {
            return;
        }
        let mut g = lock(&self.budget_state);
        self.rotate(&mut g, now);
        if let Some(last) = g.slots.back_mut() {
            last.1 += 1;
        }
    }

    fn allowed(&self, requests: u64) -> u64 {
        let floor = self.budget.min_per_second * self.budget.window.as_secs_f64();
        (self.budget.ratio * requests as f64).max(floor).floor() as u64
    }

    /// Drop slots older than the window, open the current one; the window's totals.
    fn rotate(&self, g: &mut BudgetState, now: Instant) -> (u64, u64) {
        let slot = self.budget.window / 10;
        while g
            .slots
            .front()
            .is_some_and(|s| now.saturating_duration_since(s.0) >= self.budget.window)
        {
            g.slots.pop_front();
        }
        if g.slots
            .back()
            .is_none_or(|s| now.saturating_duration_since(s.0) >= slot)
        {
            g.slots.push_back((now, 0, 0));
        }
        g.slots.iter().fold((0, 0), |(r, x), s| (r + s.1, x + s.2))
    }

    /// Every tracked target and the budget, for `GET /admin/health`.
    pub fn snapshot(&self, now: Instant) -> (Vec<TargetHealth>, BudgetHealth) {
        let mut out = Vec::new();
        for (i, m) in self.targets.iter().enumerate() {
            let t = lock(m);
            for (model, e) in t.entries.iter() {
                out.push(TargetHealth {
                    provider: self.providers.get(i).cloned().unwrap_or_default(),
                    model: model.clone(),
                    state: e.state,
                    consecutive_failures: e.consecutive,
                    window_requests: e.requests,
                    window_failures: e.failures,
                    open_for_ms: (e.state == State::Open)
                        .then(|| e.until.saturating_duration_since(now).as_millis() as u64),
                    times_opened: e.opened,
                    ttft_ewma_ms: e.ttft_ewma.map(|x| (x * 10.0).round() / 10.0),
                    ttft_p95_ms: p95(&e.ttft),
                });
            }
        }
        out.sort_by(|a, b| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)));
        let budget = {
            let mut g = lock(&self.budget_state);
            let (requests, extra) = self.rotate(&mut g, now);
            BudgetHealth {
                requests,
                extra_attempts: extra,
                allowed: self.allowed(requests),
            }
        };
        (out, budget)
    }
}

fn p95(samples: &VecDeque<f32>) -> Option<f64> {
    if samples.len() < 20 {
        return None;
    }
    let mut v: Vec<f32> = samples.iter().copied().collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let i = ((v.len() as f64) * 0.95).ceil() as usize - 1;
    v.get(i.min(v.len() - 1)).map(|x| f64::from(*x))
}

#[cfg(test)]
mod tests;
