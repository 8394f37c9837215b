//! Per-attempt bookkeeping, written in one place: every attempt (sent, skipped, failed, served,
//! broken after commit) becomes one [`AttemptLog`] and its metrics here. The response headers
//! (`x-detour-attempts`), the all-failed error's list, the access log and the metrics all read
//! the same [`RequestLog`], and so do request records (`crate::records`).

use super::classify::Failure;
use super::{health, watch, Engine};
use crate::api::{AttemptReport, GatewayError};
use crate::plan::Target;
use std::time::{Duration, Instant};

/// Where an attempt went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A configured provider, by index.
    Provider(usize),
    /// A header-mode URL: the approved-host label, or `unapproved` (a bounded set).
    Url(String),
}

impl Default for Via {
    /// An empty label: every attempt names its own.
    fn default() -> Via {
        Via::Url(String::new())
    }
}

/// One attempt as logged and counted.
#[derive(Debug, Clone, Default)]
pub struct AttemptLog {
    pub via: Via,
    pub source: String,
    /// `success`, `skipped`, `client_error`, `client_closed`, `stream_error`, or a
    /// [`super::classify::FailClass`] label.
    pub outcome: &'static str,
    pub status: Option<u16>,
    /// What went wrong, credentials masked; `None` when nothing did.
    pub error: Option<String>,
    pub duration: Duration,
    /// Whose credentials it was sent with (`operator`, `byok`, `ptb`); `None` for a target
    /// not tried and in the header mode.
    pub pay: Option<&'static str>,
    /// Connect, first byte and first token, from the attempt's start; known for an attempt
    /// that reached its commit point.
    pub timing: Timing,
    /// The backoff or `Retry-After` wait before it, and why.
    pub waited: Option<(Duration, &'static str)>,
    /// What its answer cost at the catalog's price (the served attempt).
    pub cost_usd: Option<f64>,
}

/// When an attempt reached its milestones, from its start.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub connect: Option<Duration>,
    pub first_byte: Option<Duration>,
    /// A stream's first content event.
    pub first_token: Option<Duration>,
}

/// Everything one request did, for the access log and metrics (`logging()` reads it).
#[derive(Debug, Default)]
pub struct RequestLog {
    pub request_id: String,
    /// The caller's gateway key id (never its secret); empty without keys.
    pub key: String,
    pub started: Option<Instant>,
    pub stream: bool,
    /// The `model` field as the client sent it (the chain mode), cut to 512 bytes.
    pub model: String,
    /// How the request named its targets: `chain`, `target-url` or `fallbacks`; empty for a
    /// route that is neither logged nor counted (`/health`, `/v1/models`).
    pub mode: &'static str,
    /// Request outcome label; empty until decided.
    pub outcome: &'static str,
    pub status: u16,
    pub attempts: Vec<AttemptLog>,
    /// Set when an answer failed after the client had started receiving it.
    pub post_commit_error: Option<String>,
    /// The served answer's token usage, when it reported one.
    pub usage: Option<watch::Usage>,
    /// What the request cost at the catalog's prices (every served attempt together).
    pub cost_usd: Option<f64>,
    /// A wait not yet followed by its attempt.
    pub pending_wait: Option<(Duration, &'static str)>,
    /// A cost counted, not yet on its attempt.
    pub pending_cost: Option<f64>,
}

impl RequestLog {
    /// Attempts actually sent upstream (skipped ones excluded).
    pub fn attempts_made(&self) -> usize {
        self.attempts
            .iter()
            .filter(|a| a.outcome != "skipped")
            .count()
    }

    /// The `attempts` list of an all-failed error: every attempt, in order.
    pub fn reports(&self) -> Vec<AttemptReport> {
        self.attempts
            .iter()
            .map(|a| AttemptReport {
                source: a.source.clone(),
                error: a.error.clone().unwrap_or_default(),
                status: a.status,
                skipped: a.outcome == "skipped",
            })
            .collect()
    }
}

impl Engine {
    /// The name an attempt's target has in metrics and the access log.
    pub fn via_name<'a>(&'a self, via: &'a Via) -> &'a str {
        match via {
            Via::Provider(p) => self.gw.providers[*p].name.as_str(),
            Via::Url(label) => label,
        }
    }

    /// Log and count one attempt.
    pub fn log(&self, log: &mut RequestLog, mut a: AttemptLog) {
        if a.outcome != "skipped" {
            a.waited = log.pending_wait.take();
        }
        let name = self.via_name(&a.via);
        self.metrics
            .attempts
            .with_label_values(&[name, a.outcome])
            .inc();
        log.attempts.push(a);
    }

    /// A target not tried, and why.
    pub(super) fn skipped(
        &self,
        log: &mut RequestLog,
        provider: usize,
        source: String,
        why: String,
    ) {
        let a = AttemptLog {
            via: Via::Provider(provider),
            source,
            outcome: "skipped",
            status: None,
            error: Some(why),
            duration: Duration::ZERO,
            pay: None,
            ..AttemptLog::default()
        };
        self.log(log, a);
    }

    /// An attempt that failed before its commit point. `moving_on`: the request goes on after
    /// it (a retry or another target): it counts as a fallback.
    pub(super) fn failed(
        &self,
        log: &mut RequestLog,
        target: &Target,
        f: Failure,
        started: Instant,
        moving_on: bool,
    ) {
        let via = Via::Provider(target.route.provider);
        self.failed_at(log, via, target.source(&self.gw), f, started, moving_on);
        if let Some(a) = log.attempts.last_mut() {
            a.pay = Some(target.pay.label());
        }
    }

    /// An attempt at `via` (a provider or a header-mode URL) that failed before its commit
    /// point, logged as `source`.
    pub(super) fn failed_at(
        &self,
        log: &mut RequestLog,
        via: Via,
        source: String,
        f: Failure,
        started: Instant,
        moving_on: bool,
    ) {
        let label = f.class.label();
        if moving_on {
            self.metrics
                .fallbacks
                .with_label_values(&[self.via_name(&via), label])
                .inc();
        }
        // Provider text (an error body, an in-band error event, a token endpoint's reason):
        // every credential masked before the client or the log sees it.
        let a = AttemptLog {
            via,
            source,
            outcome: label,
            status: f.status,
            error: Some(self.masker.string(f.message)),
            duration: started.elapsed(),
            pay: None,
            ..AttemptLog::default()
        };
        self.log(log, a);
    }

    /// An attempt whose answer went to the client (`outcome`: `success`, `client_error` for a
    /// provider's refusal passed back, `client_closed` when the client left while it was sent).
    pub(super) fn served(
        &self,
        log: &mut RequestLog,
        target: &Target,
        outcome: &'static str,
        status: u16,
        started: Instant,
        timing: Timing,
    ) {
        let p = target.route.provider;
        let a = AttemptLog {
            via: Via::Provider(p),
            source: target.source(&self.gw),
            outcome,
            status: Some(status),
            error: None,
            duration: started.elapsed(),
            pay: Some(target.pay.label()),
            timing,
            cost_usd: log.pending_cost.take(),
            ..AttemptLog::default()
        };
        self.log(log, a);
        log.status = status;
    }

    /// An attempt that failed after its answer was committed.
    pub(super) fn broken(
        &self,
        log: &mut RequestLog,
        target: &Target,
        status: u16,
        reason: &str,
        started: Instant,
        timing: Timing,
    ) {
        let p = target.route.provider;
        let a = AttemptLog {
            via: Via::Provider(p),
            source: target.source(&self.gw),
            outcome: "stream_error",
            status: Some(status),
            error: Some(reason.to_string()),
            duration: started.elapsed(),
            pay: Some(target.pay.label()),
            timing,
            ..AttemptLog::default()
        };
        self.log(log, a);
        log.status = status;
        log.post_commit_error = Some(reason.to_string());
        log.outcome = "stream_error";
    }

    /// A hedge that did not win: cancelled (its future dropped, its connection closed). Counted,
    /// not logged as an attempt, and not held against the target.
    pub(super) fn hedge_lost(&self, t: &Target) {
        let name = self.gw.providers[t.route.provider].name.as_str();
        self.metrics
            .attempts
            .with_label_values(&[name, "hedge_lost"])
            .inc();
        self.record_health(t, health::Outcome::Neutral);
    }

    /// The error that ends a request none of whose targets served it: every attempt listed;
    /// the status is 504 at the deadline, the upstream's if every attempt had the same one,
    /// else 502.
    pub(super) fn all_failed(&self, log: &RequestLog, deadline: bool) -> GatewayError {
        let attempts = log.reports();
        let tried: Vec<&AttemptReport> = attempts.iter().filter(|r| !r.skipped).collect();
        let status = if deadline {
            504
        } else {
            match tried.first().and_then(|r| r.status) {
                Some(s) if tried.iter().all(|x| x.status == Some(s)) => s,
                _ => 502,
            }
        };
        GatewayError::AllFailed { status, attempts }
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
    pub(super) fn record_health(&self, target: &Target, outcome: health::Outcome) {
        let p = target.route.provider;
        let Some(state) = self
            .health
            .record(p, &target.route.id, outcome, Instant::now())
        else {
            return;
        };
        let name = self.gw.providers[p].name.as_str();
        let labels = [name, self.model_label(target)];
        self.metrics
            .circuit_state
            .with_label_values(&labels)
            .set(state.gauge());
        if state == health::State::Open {
            self.metrics.circuit_opened.with_label_values(&[name]).inc();
        }
    }

    /// Count a served answer's tokens and cost at the route's catalog price; the cost goes on
    /// the request's log and on the attempt logged next.
    pub(super) fn account(
        &self,
        log: &mut RequestLog,
        target: &Target,
        usage: Option<watch::Usage>,
    ) {
        let Some(u) = usage else { return };
        let name = self.gw.providers[target.route.provider].name.as_str();
        let model = self.model_label(target);
        let tokens = &self.metrics.tokens;
        tokens
            .with_label_values(&[name, model, "prompt"])
            .inc_by(u.prompt_tokens);
        tokens
            .with_label_values(&[name, model, "completion"])
            .inc_by(u.completion_tokens);
        if let Some(p) = target.route.price {
            let usd = (u.prompt_tokens as f64 * p.input + u.completion_tokens as f64 * p.output)
                / 1_000_000.0;
            self.metrics
                .cost_usd
                .with_label_values(&[name, model])
                .inc_by(usd);
            log.cost_usd = Some(log.cost_usd.unwrap_or(0.0) + usd);
            log.pending_cost = Some(usd);
        }
    }
}
