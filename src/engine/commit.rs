//! The commit point: an answer the decision chose goes to the client (`relay.rs` writes it),
//! and how that ended is logged: served, the client gone, or broken after commit — then, with
//! `failover.continuation`, the stream is continued on the next target that takes a prefill.

use super::attempt::{Ask, Ready, ReadyBody};
use super::classify::{FailClass, Failure};
use super::ledger::Timing;
use super::relay::Delivered;
use super::splice::Head;
use super::{health, unless_client_gone, At, Engine, RequestLog};
use crate::api::{Capabilities, GatewayError};
use crate::plan::Target;
use crate::providers::Provider;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::time::Instant;

/// An answer at its commit point with the client's header for it.
pub(super) struct Committed {
    pub ready: Box<Ready>,
    pub header: ResponseHeader,
}

/// Bill a committed answer: settled at its reported usage; at its hold when it has none (the
/// client left, the answer broke); released when the provider refused (a 4xx passed back).
async fn bill(tab: &crate::auth::escrow::Tab, at: At<'_>, ok: bool, d: &Delivered) {
    let target = at.target();
    match d {
        Delivered::Done { .. } if !ok => tab.release(at.t, target).await,
        Delivered::Done { usage, .. } => {
            let u = usage.map(|u| (u.prompt_tokens, u.completion_tokens));
            tab.close(at.t, target, u).await;
        }
        Delivered::ClientGone | Delivered::Cut { .. } | Delivered::Broken { .. } => {
            tab.close(at.t, target, None).await
        }
    }
}

/// When an answer at its commit point reached its milestones.
fn timing(ready: &Ready) -> Timing {
    let stream = matches!(ready.body, ReadyBody::Stream { .. });
    Timing {
        connect: Some(ready.connect),
        first_byte: Some(ready.first_byte),
        first_token: stream.then_some(ready.ttft),
    }
}

/// What a delivered answer was, for its bookkeeping.
struct Served {
    /// A 2xx (else a provider's refusal passed back).
    ok: bool,
    status: u16,
    /// Its milestones; a stream's first token is its TTFT.
    timing: Timing,
}

impl Engine {
    /// Write the answer to the client, and log how it ended. `queued`: the targets not tried
    /// yet (a continuation looks for one among them).
    pub(super) async fn commit(
        &self,
        s: &mut Session,
        ask: &Ask<'_>,
        log: &mut RequestLog,
        at: At<'_>,
        c: Committed,
        queued: Vec<usize>,
    ) -> Result<(), GatewayError> {
        let Committed { ready, header: h } = c;
        let target = at.target();
        let provider = &self.gw.providers[target.route.provider];
        let served = Served {
            ok: ready.resp.status.is_success(),
            status: ready.resp.status.as_u16(),
            timing: timing(&ready),
        };
        if let (Some(tab), true, ReadyBody::Json { usage: Some(u), .. }) =
            (ask.tab, served.ok, &ready.body)
        {
            tab.count_tokens_now(u.prompt_tokens + u.completion_tokens)
                .await;
        }
        // The relay's future comes boxed: it is not laid out inline in this one.
        let delivered = self
            .deliver(s, ready, Some(h), provider, None, ask.req)
            .await;
        if let Some(tab) = ask.tab {
            if !matches!(delivered, Delivered::Broken { .. }) {
                tab.answered();
            }
            Box::pin(bill(tab, at, served.ok, &delivered)).await;
        }
        match delivered {
            Delivered::ClientGone => {
                self.record_health(target, health::Outcome::Neutral);
                // The attempt served: the access log says which, and that the client left.
                self.served(
                    log,
                    target,
                    "client_closed",
                    served.status,
                    at.started,
                    served.timing,
                );
                Err(GatewayError::ClientClosed)
            }
            Delivered::Cut { reason } => {
                self.failed_after_commit(log, target, &served, reason, at.started);
                Err(GatewayError::AnswerCut)
            }
            Delivered::Done { usage, finalised } => {
                self.done(log, target, &served, usage, finalised, at.started);
                Ok(())
            }
            Delivered::Broken {
                reason,
                watch,
                head,
            } => {
                let reason = self.failed_after_commit(log, target, &served, reason, at.started);
                let text = watch.text().filter(|t| !t.is_empty());
                if let (true, Some(text), Some(head)) =
                    (self.gw.cfg.failover.continuation, text, head)
                {
                    // Built inside the box: a future held in a local, even a moved-from
                    // one, keeps its full size in this future's state.
                    if Box::pin(self.continue_stream(s, ask, log, text, &head, queued)).await {
                        log.outcome = "success_continued";
                        return Ok(());
                    }
                }
                self.end_broken(s, &reason, watch.dialect()).await;
                Ok(())
            }
        }
    }

    /// An answer that broke after the client began to receive it: the target's health told,
    /// the attempt logged with its milestones; the reason, masked.
    fn failed_after_commit(
        &self,
        log: &mut RequestLog,
        target: &Target,
        served: &Served,
        reason: String,
        started: Instant,
    ) -> String {
        let reason = self.masker.string(reason);
        self.record_health(target, health::Outcome::Failure);
        self.broken(log, target, served.status, &reason, started, served.timing);
        reason
    }

    /// An answer written to its end.
    fn done(
        &self,
        log: &mut RequestLog,
        target: &Target,
        served: &Served,
        usage: Option<super::watch::Usage>,
        finalised: bool,
        started: Instant,
    ) {
        if !served.ok {
            self.record_health(target, health::Outcome::Neutral);
            self.served(
                log,
                target,
                "client_error",
                served.status,
                started,
                served.timing,
            );
            log.outcome = "upstream_client_error";
            return;
        }
        let ttft = served.timing.first_token;
        self.record_health(target, health::Outcome::Success { ttft });
        if let Some(t) = ttft {
            let name = self.gw.providers[target.route.provider].name.as_str();
            self.metrics
                .stream_ttft
                .with_label_values(&[name])
                .observe(t.as_secs_f64());
        }
        self.account(log, target, usage);
        log.usage = usage;
        self.served(
            log,
            target,
            "success",
            served.status,
            started,
            served.timing,
        );
        if log.outcome.is_empty() {
            log.outcome = if finalised {
                "success_finalised"
            } else {
                "success"
            };
        }
    }

    /// After a stream broke past its commit point: re-issue the request to the next queued
    /// target the catalog says accepts prefill, with the partial answer as a trailing assistant
    /// message, and splice its answer into the client's stream. `true` if it finished the
    /// answer; on `false` the caller reports the original failure, whatever this one's was.
    async fn continue_stream(
        &self,
        s: &mut Session,
        ask: &Ask<'_>,
        log: &mut RequestLog,
        text: &str,
        head: &Head,
        queued: Vec<usize>,
    ) -> bool {
        for i in queued {
            let t = &ask.targets[i];
            if !t.route.capabilities.contains(Capabilities::PREFILL) {
                let why = format!(
                    "continuation skipped: the catalog lists no prefill support for {}",
                    t.route.id
                );
                self.skipped(log, t.route.provider, t.source(&self.gw), why);
                continue;
            }
            let native = matches!(head, Head::Events(_));
            let Ok(prefilled) = ask.req.with_prefill(text, native) else {
                return false;
            };
            let at = At {
                targets: ask.targets,
                t: i,
                started: Instant::now(),
            };
            if let Some(tab) = ask.tab {
                if tab.hold(i, t).await.is_err() {
                    return false;
                }
            }
            let attempt = self.prepare(ask, t, Some(&prefilled));
            return match unless_client_gone(s, attempt).await {
                None => false,
                Some(Err(mut f)) => {
                    self.record_health(t, f.class.health(f.retry_after));
                    f.message = format!("continuation: {}", f.message);
                    self.failed(log, t, f, at.started, false);
                    false
                }
                Some(Ok(ready)) => self.continue_with(s, ask, log, at, ready, head).await,
            };
        }
        false
    }

    /// Splice a continuation's answer into the client's stream.
    async fn continue_with(
        &self,
        s: &mut Session,
        ask: &Ask<'_>,
        log: &mut RequestLog,
        at: At<'_>,
        ready: Box<Ready>,
        head: &Head,
    ) -> bool {
        let (t, started) = (at.target(), at.started);
        let provider = &self.gw.providers[t.route.provider];
        let status = ready.resp.status.as_u16();
        if !ready.resp.status.is_success() || !matches!(ready.body, ReadyBody::Stream { .. }) {
            let m = format!(
                "continuation: {} refused the prefill ({status})",
                provider.name
            );
            let f = Failure::new(FailClass::of_status(status), Some(status), m);
            self.release(ready.up, &ready.peer).await;
            self.record_health(t, f.class.health(None));
            self.failed(log, t, f, started, false);
            return false;
        }
        let ttft = ready.ttft;
        let timing = timing(&ready);
        match self
            .deliver(s, ready, None, provider, Some(head), ask.req)
            .await
        {
            Delivered::Done { usage, .. } => {
                if let Some(tab) = ask.tab {
                    tab.close(
                        at.t,
                        t,
                        usage.map(|u| (u.prompt_tokens, u.completion_tokens)),
                    )
                    .await;
                }
                self.record_health(t, health::Outcome::Success { ttft: Some(ttft) });
                self.account(log, t, usage);
                self.served(log, t, "success", status, started, timing);
                true
            }
            Delivered::ClientGone => {
                self.served(log, t, "client_closed", status, started, timing);
                false
            }
            Delivered::Cut { reason } | Delivered::Broken { reason, .. } => {
                self.record_health(t, health::Outcome::Failure);
                let m = format!("continuation: {reason}");
                let f = Failure::new(FailClass::UpstreamClosed, Some(status), m);
                self.failed(log, t, f, started, false);
                false
            }
        }
    }

    /// The client's response header for an answer from `target`: the upstream status, the
    /// upstream headers a client may want (type, caching, rate-limit info) and detour's own.
    pub(super) fn client_header(
        &self,
        resp: &ResponseHeader,
        log: &RequestLog,
        provider: &Provider,
        target: &Target,
        index: usize,
    ) -> pingora_core::Result<ResponseHeader> {
        let mut h = ResponseHeader::build(resp.status, Some(12))?;
        if let Some(d) = resp.extensions.get::<crate::api::Dialect>() {
            h.extensions_mut().insert(*d);
        }
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
