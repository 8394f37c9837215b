//! The Pingora hooks of one [`Serving`], called through `live::DetourProxy` with the
//! request's own `Serving`.

use super::{access_log, header_mode, Ctx, Serving, ANSWER_CUT};
use pingora_core::upstreams::peer::HttpPeer;
use pingora_core::Result;
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::time::Instant;

/// The Pingora hooks, called through `live::DetourProxy` on the request's own `Serving`.
impl Serving {
    /// Every route is answered here (`Ok(true)` skips Pingora's proxy path), except a single
    /// header-mode target (`Helicone-Target-Url`), which goes on to `upstream_peer`.
    pub(crate) async fn request_filter(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<bool> {
        ctx.log.started = Some(Instant::now());
        ctx.log.request_id = self.request_id(session);
        if self.gw().cfg.header_mode.enabled {
            let max = self.gw().cfg.limits.max_chain_length;
            match header_mode::mode(session.req_header(), max) {
                Ok(None) => {}
                // Boxed: a fallback list's future (its sends, its relay) must not be laid out
                // in every request's future, chain requests included.
                Ok(Some(mode)) => return Box::pin(self.header_mode(session, ctx, mode)).await,
                Err(e) => {
                    ctx.log.mode = "header";
                    Self::write_error(session, &mut ctx.log, &e).await?;
                    return Ok(true);
                }
            }
        }
        self.route(session, &mut ctx.log).await?;
        Ok(true)
    }

    /// A single header-mode target: the peer `request_filter` vetted (its address pinned).
    pub(crate) async fn upstream_peer(
        &self,
        _s: &mut Session,
        ctx: &mut Ctx,
    ) -> Result<Box<HttpPeer>> {
        match &ctx.direct {
            Some(d) => Ok(Box::new(d.peer.clone())),
            None => pingora_error::Error::e_explain(
                pingora_error::ErrorType::InternalError,
                "no upstream path",
            ),
        }
    }

    /// The single target's request: its path prefix, host, and the client's headers minus
    /// hop-by-hop and steering ones.
    pub(crate) async fn upstream_request_filter(
        &self,
        _s: &mut Session,
        up: &mut pingora_http::RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        match &ctx.direct {
            Some(d) => header_mode::rewrite(up, d, &ctx.log.request_id),
            None => Ok(()),
        }
    }

    /// The single target's response header, before it goes to the client.
    pub(crate) async fn response_filter(
        &self,
        _s: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        // Interim responses (100, 103) are relayed as they are; only the final one is the answer.
        if ctx.direct.is_some() && !resp.status.is_informational() {
            let host = ctx.direct.as_ref().map_or("", |d| d.url.host.as_str());
            header_mode::mark(resp, host, &ctx.log.request_id)?;
            self.log_direct(ctx, Some(resp.status.as_u16()), None);
        }
        Ok(())
    }

    /// Reached through an `Err` from `request_filter` (a cut answer: the connection is dropped
    /// without a clean end; a failed write to the client), or a single header-mode target
    /// that failed (answered with the all-failed error listing it, if nothing was written).
    pub(crate) async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &pingora_error::Error,
        ctx: &mut Ctx,
    ) -> pingora_proxy::FailToProxy {
        use pingora_error::{ErrorSource, ErrorType};
        if ctx.direct.is_some() && e.esource() == &ErrorSource::Upstream {
            return self.direct_failed(session, e, ctx).await;
        }
        let code = match (e.etype(), e.esource()) {
            (t, _) if *t == ANSWER_CUT => 0,
            (ErrorType::HTTPStatus(c), _) => *c,
            (ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed, _) => 0,
            (_, ErrorSource::Downstream) => 400,
            _ => 500,
        };
        if code > 0 && session.response_written().is_none() {
            let _ = session.respond_error(code).await;
        }
        pingora_proxy::FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    /// A cut answer is recorded in the access log; it is not an error of detour's.
    pub(crate) fn suppress_error_log(
        &self,
        _s: &Session,
        _ctx: &Ctx,
        e: &pingora_error::Error,
    ) -> bool {
        *e.etype() == ANSWER_CUT
    }

    /// Runs once per request after the response: metrics and the access log line.
    pub(crate) async fn logging(
        &self,
        _s: &mut Session,
        e: Option<&pingora_error::Error>,
        ctx: &mut Ctx,
    ) {
        if let (Some(e), Some(_)) = (e, &ctx.direct) {
            if ctx.log.attempts.is_empty() {
                self.log_direct(ctx, None, Some(e.etype().as_str().to_string()));
            } else if ctx.log.post_commit_error.is_none() {
                ctx.log.post_commit_error = Some(e.etype().as_str().to_string());
            }
        }
        let ctx = &ctx.log;
        if ctx.mode.is_empty() {
            return;
        }
        let elapsed = ctx.started.map(|t| t.elapsed()).unwrap_or_default();
        // Queued before the request is counted: once /metrics counts it, its record is queued.
        if self.recorder.enabled() {
            self.recorder.submit(self.gw(), ctx, elapsed);
        }
        let m = self.metrics();
        let outcome = if ctx.outcome.is_empty() {
            "unknown"
        } else {
            ctx.outcome
        };
        m.requests.with_label_values(&[outcome]).inc();
        m.duration
            .with_label_values(&[if ctx.stream { "true" } else { "false" }])
            .observe(elapsed.as_secs_f64());
        m.attempts_per_request.observe(ctx.attempts_made() as f64);
        if self.gw().cfg.access_log {
            access_log(self.gw(), ctx, elapsed);
        }
    }
}
