//! One attempt up to its commit point, with no access to the client: build the provider's
//! request through its adapter, put the attempt's credentials on it, send it, and read the
//! answer until there is something to decide about (`read.rs`): a whole JSON answer or error
//! body, or a stream's first event with content. The result is a [`Ready`] answer or a
//! [`Failure`]; `classify.rs` decides what happens to either.
//!
//! Because it never touches the client's session, two attempts can run at once (hedging), and
//! the caller alone watches for the client going away.

use super::classify::{self, BodyError, FailClass, Failure, Seen};
use super::watch::{Usage, Watch};
use super::{short_error, upstream, Engine};
use crate::api::{Capabilities, ChatRequest};
use crate::config::{Secret, Timeouts};
use crate::plan::Target;
use crate::providers::{Auth, Call, Credentials, Prepared, Provider, Relay, Route, Wire};
use bytes::Bytes;
use pingora_core::protocols::http::client::HttpSession;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_http::{RequestHeader, ResponseHeader};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant, SystemTime};
use tokio::time::timeout_at;

/// What the request asks of every attempt.
pub(super) struct Ask<'a> {
    /// The client's headers to forward.
    pub client: &'a [(http::HeaderName, http::HeaderValue)],
    pub req: &'a ChatRequest,
    pub request_id: &'a str,
    pub stream: bool,
    /// The request's overall deadline.
    pub deadline: Instant,
    /// The request's targets, in the order they are tried.
    pub targets: &'a [Target],
    /// The caller's credits and own credentials (gateway keys); `None` without keys.
    pub tab: Option<&'a crate::auth::escrow::Tab>,
}

/// An answer at its commit point.
pub(super) struct Ready {
    pub up: HttpSession,
    pub peer: HttpPeer,
    /// The upstream's response header; the client's is built from it at commit.
    pub resp: ResponseHeader,
    /// What a non-2xx body says beyond its status.
    pub said: Option<BodyError>,
    pub body: ReadyBody,
    pub started: Instant,
    /// When the first content arrived (streams) or the answer was read (JSON).
    pub ttft: Duration,
    /// Connected (a pooled connection: at once) and the response header read, from `started`.
    pub connect: Duration,
    pub first_byte: Duration,
    /// This attempt's own deadline (its `total`, within the request's).
    pub deadline: Instant,
}

pub(super) enum ReadyBody {
    /// Read whole (`complete`) or up to the buffer limit; translated answers are always whole.
    Json {
        chunks: Vec<Bytes>,
        total: usize,
        complete: bool,
        usage: Option<Usage>,
    },
    /// The events up to and including the first with content, not yet sent.
    Stream {
        relay: Relay,
        /// Boxed: it would otherwise make every answer's body this variant's size.
        watch: Box<Watch>,
        held: Bytes,
        /// The upstream already ended (cleanly) before commit.
        ended: bool,
    },
}

impl Ready {
    /// What this answer is, for the decision.
    pub fn seen(&self) -> Seen {
        let status = self.resp.status.as_u16();
        if self.resp.status.is_success() {
            Seen::Answer
        } else {
            Seen::Refusal {
                status,
                said: self.said.clone(),
            }
        }
    }

    /// The upstream's `Retry-After` / `retry-after-ms`.
    pub fn retry_after(&self) -> Option<Duration> {
        crate::durations::retry_after(&self.resp.headers, SystemTime::now())
    }

    /// The body read so far (error bodies: all of it).
    pub fn body_bytes(&self) -> Vec<u8> {
        match &self.body {
            ReadyBody::Json { chunks, .. } => chunks.concat(),
            ReadyBody::Stream { held, .. } => held.to_vec(),
        }
    }
}

/// Most interim (1xx) responses read before the final one.
const MAX_INTERIM: usize = 16;

/// Read the response header, past interim ones (`100 Continue`, `103 Early Hints`): only the
/// final header is an answer. A `101` (a protocol switch nobody asked for) is an error.
async fn final_header(up: &mut HttpSession) -> pingora_core::Result<()> {
    up.read_response_header().await?;
    let mut interim = 0;
    while let Some(status) = up
        .response_header()
        .map(|h| h.status.as_u16())
        .filter(|s| (100..200).contains(s))
    {
        if status == 101 || interim == MAX_INTERIM {
            return pingora_error::Error::e_explain(
                pingora_error::ErrorType::InvalidHTTPHeader,
                "an unexpected 101 or too many interim responses",
            );
        }
        interim += 1;
        up.read_response_header().await?;
    }
    Ok(())
}

fn unsupported(provider: &Provider, why: &str) -> Failure {
    Failure::new(
        FailClass::Unsupported,
        Some(400),
        format!("not sent to {}: {why}", provider.name),
    )
}

impl Engine {
    /// Run one target up to its commit point. No I/O with the client. `rewritten`: a request
    /// detour made (a continuation's prefill) in place of the client's.
    pub(super) async fn prepare(
        &self,
        ask: &Ask<'_>,
        target: &Target,
        rewritten: Option<&ChatRequest>,
    ) -> Result<Box<Ready>, Failure> {
        let started = Instant::now();
        let provider = &self.gw.providers[target.route.provider];
        let req = rewritten.unwrap_or(ask.req);
        let credentials = self.credentials(ask, target);
        let prepared = self.build(ask, target, req, own_project(target, credentials))?;
        let deadline = ask.deadline.min(started + provider.timeouts.total);
        let peer = self
            .peers
            .get(target.route.provider)
            .await
            .map_err(|m| Failure::new(FailClass::ConnectError, None, m))?;
        let token = self.token_for(target.route.provider, credentials).await?;
        let header = self.header(ask, provider, credentials, &prepared, token.as_ref())?;
        let (up, peer, connected) = self
            .send(&peer, &provider.timeouts, &header, &prepared.body, deadline)
            .await?;
        let first_byte = started.elapsed();
        let resp = up
            .response_header()
            .cloned()
            .ok_or_else(|| super::bad_response("no response header"))?;
        self.metrics
            .upstream_ttfb
            .with_label_values(&[provider.name.as_str()])
            .observe(started.elapsed().as_secs_f64());
        let ready = Box::new(Ready {
            up,
            peer,
            resp,
            said: None,
            body: ReadyBody::Json {
                chunks: Vec::new(),
                total: 0,
                complete: false,
                usage: None,
            },
            started,
            ttft: Duration::ZERO,
            connect: connected.saturating_duration_since(started),
            first_byte,
            deadline,
        });
        self.read_answer(ask, provider, ready, prepared.wire).await
    }

    /// The provider's request for this target, unless the catalog says the route cannot
    /// serve it (or the adapter refuses it): then a refusal, not sent.
    fn build(
        &self,
        ask: &Ask<'_>,
        target: &Target,
        req: &ChatRequest,
        project: Option<&str>,
    ) -> Result<Prepared, Failure> {
        let provider = &self.gw.providers[target.route.provider];
        let r = &target.route;
        if r.capabilities != Capabilities::ALL {
            let missing = req.needs.missing_from(r.capabilities);
            if !missing.is_empty() {
                let why = format!(
                    "the catalog lists no {} support for {}",
                    missing.names().join(", "),
                    r.id
                );
                return Err(unsupported(provider, &why));
            }
        }
        let call = Call {
            route: Route {
                id: &r.id,
                deployment: r.deployment.as_deref(),
                api_version: r.api_version.as_deref(),
                max_output_tokens: r.max_output_tokens,
            },
            req,
            stream: ask.stream,
            base_path: &provider.endpoint.base_path,
            project,
        };
        provider
            .adapter
            .prepare(&call)
            .map_err(|m| unsupported(provider, &m))
    }

    /// The credentials of an attempt at `target`: the caller's own (BYOK) or the operator's.
    fn credentials<'a>(&'a self, ask: &Ask<'a>, target: &Target) -> &'a Credentials {
        let own = match (target.pay, ask.tab) {
            (crate::plan::Pay::Byok, Some(tab)) => tab
                .caller()
                .byok
                .get(target.route.provider)
                .and_then(Option::as_ref),
            _ => None,
        };
        own.unwrap_or(&self.gw.providers[target.route.provider].credentials)
    }

    /// Provider `i`'s access token, when the credentials are its service account.
    async fn token_for(
        &self,
        i: usize,
        credentials: &Credentials,
    ) -> Result<Option<Secret>, Failure> {
        match credentials {
            Credentials::ServiceAccount(sa) => Ok(Some(self.access_token(i, sa).await?)),
            Credentials::None
            | Credentials::Key(_)
            | Credentials::Aws(_)
            | Credentials::Missing { .. }
            | Credentials::Unusable { .. } => Ok(None),
        }
    }

    /// The upstream request header, with this attempt's credentials.
    fn header(
        &self,
        ask: &Ask<'_>,
        provider: &Provider,
        credentials: &Credentials,
        prepared: &Prepared,
        token: Option<&Secret>,
    ) -> Result<RequestHeader, Failure> {
        let auth = match (credentials, token) {
            (_, Some(t)) => Auth::Token(t.expose()),
            (Credentials::Key(k), None) => Auth::Key(k.expose()),
            (Credentials::Aws(a), None) => Auth::Aws(a),
            _ => Auth::None,
        };
        upstream::request_header(
            provider,
            &prepared.path,
            ask.client,
            &prepared.body,
            ask.request_id,
            &auth,
        )
        .map_err(|e| {
            let m = format!("could not build the upstream request: {}", short_error(&e));
            Failure::new(FailClass::BadResponse, None, m)
        })
    }

    /// Read the answer as far as the decision needs: a 2xx stream to its first content;
    /// anything else whole. A status the fallback triggers name ends the attempt here as the
    /// failure it is (its error body read for the message): it never competes with a hedge
    /// partner as an answer.
    async fn read_answer(
        &self,
        ask: &Ask<'_>,
        provider: &Provider,
        mut ready: Box<Ready>,
        wire: Wire,
    ) -> Result<Box<Ready>, Failure> {
        let status = ready.resp.status;
        if status.is_success() && wire.dialect() != crate::api::Dialect::OpenAi {
            // Tells the client's side (the Messages module) this answer is in its dialect.
            ready.resp.extensions_mut().insert(wire.dialect());
        }
        let is_stream = ready
            .resp
            .headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|ct| wire.is_stream(ct));
        if !status.is_success() && self.gw.cfg.fallback.on_status(status.as_u16()) {
            self.read_small_body(&mut ready).await;
            return Err(self.trigger_failure(ready).await);
        } else if ask.stream && is_stream && status.is_success() {
            self.first_content(&mut ready, provider, wire).await?;
        } else {
            self.read_json(&mut ready, provider, wire).await?;
        }
        ready.ttft = ready.started.elapsed();
        Ok(ready)
    }

    /// A trigger status as the failure it stands for: the provider's message (credentials
    /// masked; never a 401/403's text), its `Retry-After`. The connection goes back to the pool
    /// if its body was read whole.
    async fn trigger_failure(&self, ready: Box<Ready>) -> Failure {
        let status = ready.resp.status.as_u16();
        let message = classify::error_message(status, &ready.body_bytes(), &self.masker);
        let retry_after = ready.retry_after();
        self.release(ready.up, &ready.peer).await;
        Failure {
            class: FailClass::of_status(status),
            status: Some(status),
            message,
            retry_after,
        }
    }

    /// Open a session to `peer` and send the request; returns it with the response header read,
    /// and when it was connected. A failure on a reused pooled connection is retried once on a
    /// fresh one.
    pub(super) async fn send(
        &self,
        peer: &HttpPeer,
        timeouts: &Timeouts,
        header: &RequestHeader,
        body: &Bytes,
        deadline: Instant,
    ) -> Result<(HttpSession, HttpPeer, Instant), Failure> {
        let mut peer = peer.clone();
        let mut fresh_retry_done = false;
        loop {
            let (mut up, reused) = self.connect(&peer, timeouts, deadline).await?;
            let connected = Instant::now();
            let exchange = async {
                up.write_request_header(Box::new(header.clone())).await?;
                if !body.is_empty() {
                    up.write_request_body(body.clone(), true).await?;
                }
                up.finish_request_body().await?;
                final_header(&mut up).await
            };
            let now = Instant::now();
            let fb_deadline = deadline.min(now + timeouts.first_byte);
            let budget = fb_deadline.saturating_duration_since(now);
            match timeout_at(fb_deadline.into(), exchange).await {
                Err(_) => {
                    let m = format!("no response within {} ms", budget.as_millis());
                    return Err(Failure::new(FailClass::FirstByteTimeout, None, m));
                }
                Ok(Ok(())) => return Ok((up, peer, connected)),
                Ok(Err(_)) if reused && !fresh_retry_done => {
                    // A pooled connection the upstream had closed: one more try on a new one.
                    fresh_retry_done = true;
                    peer.group_key = self.fresh_group.fetch_add(1, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    let m = format!(
                        "upstream closed the connection before responding: {}",
                        short_error(&e)
                    );
                    return Err(Failure::new(FailClass::UpstreamClosed, None, m));
                }
            }
        }
    }

    /// A pooled or new session to `peer`, within the connect timeout.
    async fn connect(
        &self,
        peer: &HttpPeer,
        timeouts: &Timeouts,
        deadline: Instant,
    ) -> Result<(HttpSession, bool), Failure> {
        let connect_deadline = deadline.min(Instant::now() + timeouts.connect);
        let connect = timeout_at(
            connect_deadline.into(),
            self.connector.get_http_session(peer),
        );
        match connect.await {
            Err(_) => {
                let ms = timeouts.connect.as_millis();
                let m = format!("connect timeout after {ms} ms");
                Err(Failure::new(FailClass::ConnectTimeout, None, m))
            }
            Ok(Err(e)) => {
                let class = if matches!(
                    e.etype(),
                    pingora_error::ErrorType::ConnectTimedout
                        | pingora_error::ErrorType::TLSHandshakeTimedout
                ) {
                    FailClass::ConnectTimeout
                } else {
                    FailClass::ConnectError
                };
                let m = format!("connect failed: {}", short_error(&e));
                Err(Failure::new(class, None, m))
            }
            Ok(Ok(x)) => Ok(x),
        }
    }
}

/// The project of a caller's own service account (BYOK), which its requests name in place of
/// the provider's configured one; `None` for the operator's credentials.
fn own_project<'a>(target: &Target, credentials: &'a Credentials) -> Option<&'a str> {
    match (target.pay, credentials) {
        (crate::plan::Pay::Byok, Credentials::ServiceAccount(sa)) => {
            sa.account.project_id.as_deref()
        }
        _ => None,
    }
}
